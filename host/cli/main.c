/* The host executable: hands the command word (the first operand: options may
 * come before it) to its command (run.c, call.c, shell.c, status.c), answers help and
 * version, or suggests the command meant. Options, messages and exit statuses
 * are options.c's; no message shows a password (see there). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* A process started with standard input, output or error closed would get
 * that descriptor back for the next file it opens: the socket to the broker
 * could be fd 1, and `ready`, a result or a log line would then be written
 * into the AMQP connection. So /dev/null fills any of 0, 1, 2 that is closed,
 * before anything else is opened. Returns -1 when that fails. */
static int open_standard_descriptors(void) {
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; fd++) {
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    int opened = open("/dev/null", O_RDWR); /* the lowest free descriptor: fd */
    if (opened < 0) return -1;
    if (opened != fd) {
      int moved = dup2(opened, fd);
      close(opened);
      if (moved < 0) return -1;
    }
  }
  return 0;
}

static const char *const commands[] = {"run", "call", "shell", "status", "help", "version"};
#define COMMANDS ((int)(sizeof commands / sizeof commands[0]))

/* "unknown command 'rn': did you mean 'run'?", then the usage. */
static int unknown_command(const char *command) {
  const char *guess = closest_word(command, commands, COMMANDS);
  if (guess) fail(EXIT_USAGE, "unknown command '%.40s': did you mean '%s'?", command, guess);
  else fail(EXIT_USAGE, "unknown command '%.40s'", command);
  fputs(top_usage, stderr);
  return EXIT_USAGE;
}

/* help [COMMAND]: the command's usage, or the top-level one. */
static int help(const char *topic) {
  if (strcmp(topic, "run") == 0) run_help();
  else if (strcmp(topic, "call") == 0) call_help();
  else if (strcmp(topic, "shell") == 0) shell_help();
  else if (strcmp(topic, "status") == 0) status_help();
  else if (*topic && strcmp(topic, "help") != 0 && strcmp(topic, "version") != 0)
    return unknown_command(topic);
  else fputs(top_usage, stdout);
  return EXIT_OK;
}

/* No command, but maybe --help or --version alone. */
static int no_command(int argc, char **argv) {
  for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return help("");
    if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
      print_version();
      return EXIT_OK;
    }
  }
  if (argc > 1) fail(EXIT_USAGE, "no COMMAND given");
  fputs(top_usage, stderr);
  return EXIT_USAGE;
}

int main(int argc, char **argv) {
  if (open_standard_descriptors() != 0) /* to a closed standard error, the message is lost */
    return fail(EXIT_FAILED, "cannot open /dev/null onto a closed standard descriptor: %s",
                strerror(errno));
  int at = find_command(argc, argv); /* options may come before the command too */
  if (!at) return no_command(argc, argv);
  const char *command = argv[at];
  if (strcmp(command, "run") == 0) return command_run(argc, argv, at);
  if (strcmp(command, "call") == 0) return command_call(argc, argv, at);
  if (strcmp(command, "shell") == 0) return command_shell(argc, argv, at);
  if (strcmp(command, "status") == 0) return command_status(argc, argv, at);
  if (strcmp(command, "version") == 0) {
    print_version();
    return EXIT_OK;
  }
  if (strcmp(command, "help") == 0) {
    int topic = at + 1 < argc ? at + 1 : 0;
    return help(topic ? argv[topic] : "");
  }
  return unknown_command(command);
}

/* The host executable: hands argv[1] to its command (run.c, call.c, shell.c)
 * or answers help and version. Options, messages and exit statuses are
 * options.c's; no message shows a password (see there). */
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

int main(int argc, char **argv) {
  if (open_standard_descriptors() != 0) /* to a closed standard error, the message is lost */
    return fail(EXIT_FAILED, "cannot open /dev/null onto a closed standard descriptor: %s",
                strerror(errno));
  const char *command = argc >= 2 ? argv[1] : "";
  if (strcmp(command, "run") == 0) return command_run(argc, argv);
  if (strcmp(command, "call") == 0) return command_call(argc, argv);
  if (strcmp(command, "shell") == 0) return command_shell(argc, argv);
  if (strcmp(command, "--version") == 0 || strcmp(command, "version") == 0) {
    print_version();
    return EXIT_OK;
  }
  if (strcmp(command, "--help") == 0 || strcmp(command, "-h") == 0 ||
      strcmp(command, "help") == 0) {
    const char *topic = argc >= 3 ? argv[2] : "";
    if (strcmp(topic, "run") == 0) run_help();
    else if (strcmp(topic, "call") == 0) call_help();
    else if (strcmp(topic, "shell") == 0) shell_help();
    else fputs(top_usage, stdout);
    return EXIT_OK;
  }
  if (*command && command[0] != '-')
    fail(EXIT_USAGE, "unknown command '%.40s'", command);
  else if (*command)
    fail(EXIT_USAGE, "options come after the command, e.g. amqp-delegate run --url URL FILE");
  fputs(top_usage, stderr);
  return EXIT_USAGE;
}

/* What the commands share: the top-level usage and version, the option parser
 * (which copies --url and masks its password in argv, so that ps does not
 * show it), failure messages with URLs redacted, exit statuses, Lua states. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>


#include "cli.h"
#include "connection.h"
#include "errors.h"
#include "help.h"
#include "log.h"
#include "url.h"
#include "version.h"

const char top_usage[] =
    "usage: amqp-delegate COMMAND [options] [ARGUMENTS]\n"
    "\n"
    "Remote workers over AMQP 0-9-1 (RabbitMQ) for Lua 5.4.\n"
    "\n"
    "commands:\n"
    "  run FILE...          serve the workers that each Lua FILE returns\n"
    "  call NAME [ARG...]   call worker NAME once; each ARG is JSON; prints the JSON result\n"
    "  shell                a Lua REPL with a started `delegator`; adder(10, 15) calls adder\n"
    "  help [COMMAND]       this text, or a command's\n"
    "\n"
    "`amqp-delegate COMMAND --help` tells more. Every command takes --url, --log-level,\n"
    "--help and --version; options come before the other arguments. The URL comes from\n"
    "--url, else $AMQP_URL, else amqp://localhost (prefer $AMQP_URL for a password).\n"
    "Log lines go to standard error, one per event, with time and level.\n"
    "\n"
    EXIT_CODES_HELP;

/* ---- messages ---- */

int fail(int status, const char *format, ...) {
  char message[2048], redacted[2048];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof message, format, args);
  va_end(args);
  url_redact_text(message, redacted, sizeof redacted);
  fflush(stdout);
  fprintf(stderr, "amqp-delegate: %s\n", redacted);
  return status;
}

void print_version(void) {
  printf("amqp-delegate %s (%s, rabbitmq-c %s)\n", AMQP_DELEGATE_VERSION, LUA_RELEASE,
         transport_version());
}

void print_usage(const char *usage, const char *default_level) {
  printf(usage, default_level);
}

/* ---- options ---- */

/* --url VALUE: keeps a private copy and overwrites the password in argv, so
 * that ps and /proc/PID/cmdline do not show it. */
static const char *take_url(char *value) {
  static char copy[URL_MAX_LENGTH]; /* one --url per process: no allocation to leak */
  if (strlen(value) >= sizeof copy) return value; /* url_parse refuses it, redacted */
  memcpy(copy, value, strlen(value) + 1);
  url_mask_in_place(value);
  return copy;
}

/* Parses the options of argv[2..] that `allowed` names; the others are
 * errors. Returns -1 when --help or --version answered (exit 0), 0 when the
 * arguments follow at options->rest, else the exit status of a usage error. */
int parse_options(int argc, char **argv, unsigned allowed, const char *usage,
                  const char *default_level, struct options *options) {
  memset(options, 0, sizeof *options);
  options->timeout = -1;
  int i = 2;
  for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
    char *flag = argv[i];
    if (strcmp(flag, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
      print_usage(usage, default_level);
      return -1;
    }
    if (strcmp(flag, "--version") == 0) {
      print_version();
      return -1;
    }
    if (strcmp(flag, "--pretty") == 0 && (allowed & OPTION_PRETTY)) {
      options->pretty = 1;
      continue;
    }
    if (flag[1] != '-') {
      return fail(EXIT_USAGE, "unknown option %.40s (see amqp-delegate %s --help)", flag,
                  argv[1]);
    }
    /* --name VALUE or --name=VALUE */
    char *value = strchr(flag, '=');
    size_t name_length = value ? (size_t)(value - flag) : strlen(flag);
    if (value) {
      value++;
    } else if (i + 1 < argc) {
      value = argv[i + 1];
    }
#define IS(name) (name_length == strlen(name) && strncmp(flag, name, name_length) == 0)
    unsigned which = IS("--url") ? OPTION_URL
                   : IS("--concurrency") ? OPTION_CONCURRENCY
                   : IS("--timeout") ? OPTION_TIMEOUT
                   : IS("--log-level") ? OPTION_LOG_LEVEL
                   : IS("--ca-file") || IS("--cert-file") || IS("--key-file") ? OPTION_TLS : 0;
#undef IS
    if (!(which & allowed))
      return fail(EXIT_USAGE, "unknown option %.*s (see amqp-delegate %s --help)",
                  (int)(name_length > 40 ? 40 : name_length), flag, argv[1]);
    if (!value) return fail(EXIT_USAGE, "%.*s needs a value", (int)name_length, flag);
    if (!strchr(flag, '=')) i++;
    if (which == OPTION_URL) {
      options->url = take_url(value);
    } else if (which == OPTION_TLS) {
      const char **path = flag[2] == 'c' && flag[3] == 'a' ? &options->ca_file
                          : flag[2] == 'c'                 ? &options->cert_file
                                                           : &options->key_file;
      *path = value;
    } else if (which == OPTION_CONCURRENCY) {
      char *end;
      long n = strtol(value, &end, 10);
      if (*end || end == value || n < 1 || n > 65535)
        return fail(EXIT_USAGE, "--concurrency takes 1 to 65535, not '%.40s'", value);
      options->concurrency = (int)n;
    } else if (which == OPTION_TIMEOUT) {
      char *end;
      errno = 0;
      double seconds = strtod(value, &end);
      if (*end || end == value || errno || !isfinite(seconds) || seconds < 0 || seconds > 1e6)
        return fail(EXIT_USAGE, "--timeout takes a number of seconds (0: none), not '%.40s'",
                    value);
      options->timeout = seconds;
    } else {
      int level = log_level_from_name(value);
      if (level < 0)
        return fail(EXIT_USAGE, "--log-level takes debug, info, warn, error or off, not '%.40s'",
                    value);
      log_set_level((enum log_level)level);
    }
  }
  options->rest = argv + i;
  options->rest_count = argc - i;
  return 0;
}

void apply_connection_options(lua_State *L, int table, const struct options *options) {
  table = lua_absindex(L, table);
  if (options->url) {
    lua_pushstring(L, options->url);
    lua_setfield(L, table, "url");
  }
  if (!options->ca_file && !options->cert_file && !options->key_file) return;
  lua_createtable(L, 0, 3);
  const char *const keys[] = {"ca_file", "cert_file", "key_file"};
  const char *const values[] = {options->ca_file, options->cert_file, options->key_file};
  for (int i = 0; i < 3; i++) {
    if (!values[i]) continue;
    lua_pushstring(L, values[i]);
    lua_setfield(L, -2, keys[i]);
  }
  lua_setfield(L, table, "tls");
}

/* ---- Lua states, exit statuses ---- */

/* A Lua state with the standard libraries and the module preloaded (so worker
 * files can require it). */
lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_amqp_delegate);
  lua_setfield(L, -2, "amqp_delegate");
  lua_pop(L, 1);
  return L;
}

/* The exit status that goes with an error code. */
int exit_status_for(const char *code) {
  static const char *const usage[] = {ERR_BAD_URL, ERR_BAD_ARGUMENT, NULL};
  static const char *const connection[] = {ERR_CONNECTION_FAILED, ERR_AUTH_FAILED, ERR_NOT_ALLOWED,
                                           ERR_CONNECTION_LOST, ERR_BROKER_ERROR, ERR_STOPPED,
                                           NULL};
  for (int i = 0; usage[i]; i++)
    if (strcmp(code, usage[i]) == 0) return EXIT_USAGE;
  for (int i = 0; connection[i]; i++)
    if (strcmp(code, connection[i]) == 0) return EXIT_CONNECTION;
  if (strcmp(code, "TIMEOUT") == 0) return EXIT_TIMEOUT;
  if (strcmp(code, "INTERRUPTED") == 0) return EXIT_INTERRUPTED;
  return EXIT_FAILED;
}

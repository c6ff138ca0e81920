/* amqp-delegate call NAME [ARG...]: decodes the JSON arguments (given, or read
 * from files or standard input), calls worker NAME once through a delegator
 * of its own, prints the result as JSON (pretty-printed, or a string bare) on
 * standard output, or `CODE: message` on standard error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "byte_buffer.h"
#include "cli.h"
#include "error_object.h"
#include "errors.h"
#include "help.h"
#include "json.h"
#include "log.h"
#include "pretty.h"
#include "url.h"

/* The default: its standard error is for its own error. */
#define CALL_LOG_LEVEL "warn"

static const char call_usage[] =
    "usage: amqp-delegate call [options] NAME [ARG...]\n"
    "\n"
    "Calls worker NAME once and prints its result as JSON on standard output. Each ARG is\n"
    "one JSON value (quote strings for the shell and for JSON: '\"text\"'), @FILE the JSON\n"
    "value in FILE, and - (or @-) the JSON value on standard input:\n"
    "  amqp-delegate call adder 10 15                  -> 25\n"
    "  amqp-delegate call echo '{\"a\": [1, 2]}'          -> {\"a\":[1,2]}\n"
    "  echo '\"Ada\"' | amqp-delegate call --raw greet -  -> Hello, Ada!\n"
    "On failure it prints `CODE: message` on standard error and exits non-zero.\n"
    "\n"
    "options:\n"
    URL_HELP
    TLS_HELP
    "  -t, --timeout SECONDS  give up waiting for the reply after that long (TIMEOUT,\n"
    "                       exit 4); 0 waits as long as it takes; default: 30\n"
    "  -p, --pretty         print the result indented for people instead of compact JSON\n"
    "  -r, --raw            print a string result as its bare text, without JSON quotes\n"
    LOG_HELP
    HELP_VERSION_HELP
    OPTIONS_ANYWHERE_HELP
    "(An ARG such as -3 is a number, not an option.)\n"
    "\n"
    EXIT_CODES_HELP;

void call_help(void) {
  print_usage(call_usage, CALL_LOG_LEVEL);
}

/* Pushes ARG i decoded: the JSON text itself, or read from @FILE, or from
 * standard input for - and @- (once). Raises BAD_ARGUMENT naming the ARG. */
static void push_argument(lua_State *L, int i, const char *arg, int *stdin_taken) {
  const char *path = strcmp(arg, "-") == 0 ? "-" : arg[0] == '@' ? arg + 1 : NULL;
  char problem[256];
  if (!path) {
    if (json_decode(L, arg, strlen(arg), JSON_DEFAULT_MAX_DEPTH, problem, sizeof problem) != 0)
      error_object_raisef(L, ERR_BAD_ARGUMENT, "ARG %d is not JSON: %s (quote strings: "
                          "'\"text\"')", i, problem);
    return;
  }
  const char *shown = strcmp(path, "-") == 0 ? "standard input" : path;
  if (strcmp(path, "-") == 0 && (*stdin_taken)++)
    error_object_raisef(L, ERR_BAD_ARGUMENT, "ARG %d: standard input can be read only once", i);
  size_t length;
  char *text = read_whole_file(path, &length);
  if (!text)
    error_object_raisef(L, ERR_BAD_ARGUMENT, "ARG %d: cannot read %s: %s", i, shown,
                        strerror(errno));
  int status = json_decode(L, text, length, JSON_DEFAULT_MAX_DEPTH, problem, sizeof problem);
  free(text);
  if (status != 0)
    error_object_raisef(L, ERR_BAD_ARGUMENT, "ARG %d (%s) is not JSON: %s", i, shown, problem);
}

/* Stack: options (light userdata). Decodes the arguments before connecting,
 * so that a typo costs no connection; then starts a delegator, calls, and
 * leaves the result's JSON on the stack. */
static int call(lua_State *L) {
  const struct options *options = lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_requiref(L, "amqp_delegate", luaopen_amqp_delegate, 0); /* 1 */
  const char *name = options->rest[0];
  int count = options->rest_count - 1;
  luaL_checkstack(L, count + 8, "too many arguments");
  push_delegator(L, 1, options); /* 2 */
  lua_getfield(L, 2, "invoke");
  lua_pushvalue(L, 2);
  lua_pushstring(L, name);
  int stdin_taken = 0;
  for (int i = 1; i <= count; i++) push_argument(L, i, options->rest[i], &stdin_taken);
  lua_getfield(L, 2, "start");
  lua_pushvalue(L, 2);
  lua_call(L, 1, 0);
  lua_call(L, count + 2, 1); /* invoke: 3 is the result */
  lua_getfield(L, 2, "stop");
  lua_pushvalue(L, 2);
  lua_call(L, 1, 0);
  if (options->raw && lua_type(L, 3) == LUA_TSTRING) {
    lua_settop(L, 3);
    return 1;
  }
  if (options->pretty) {
    struct pretty_options pretty;
    pretty_default_options(&pretty);
    pretty_push(L, 3, &pretty);
    return 1;
  }
  byte_buffer buffer;
  byte_buffer_init(&buffer);
  char problem[256];
  int status = json_encode(L, 3, &buffer, JSON_DEFAULT_MAX_DEPTH, problem, sizeof problem);
  if (status == 0) lua_pushlstring(L, buffer.data ? buffer.data : "", buffer.length);
  byte_buffer_free(&buffer);
  if (status != 0) return error_object_raisef(L, ERR_BAD_REPLY, "cannot print the result: %s", problem);
  return 1;
}

int command_call(int argc, char **argv, int command) {
  log_set_level(LOG_WARN); /* CALL_LOG_LEVEL, until --log-level says otherwise */
  struct options options;
  int status = parse_options(argc, argv, command,
                             OPTION_URL | OPTION_TIMEOUT | OPTION_LOG_LEVEL | OPTION_PRETTY |
                                 OPTION_RAW | OPTION_TLS,
                             call_usage, CALL_LOG_LEVEL, &options);
  if (status) return status < 0 ? EXIT_OK : status;
  if (options.rest_count == 0)
    return fail(EXIT_USAGE, "call needs a worker NAME (see amqp-delegate call --help)");
  lua_State *L = new_state();
  if (!L) return fail(EXIT_FAILED, "cannot create a Lua state");
  lua_pushcfunction(L, call);
  lua_pushlightuserdata(L, &options);
  status = lua_pcall(L, 1, 1, 0);
  int exit_status = EXIT_OK;
  if (status == LUA_OK) {
    size_t length;
    const char *text = lua_tolstring(L, -1, &length);
    fwrite(text, 1, length, stdout);
    fputc('\n', stdout);
    if (fflush(stdout) != 0 || ferror(stdout))
      exit_status = fail(EXIT_FAILED, "cannot write the result: %s", strerror(errno));
  } else {
    struct ad_error error;
    error_object_read(L, -1, ERR_TASK_FAILED, &error);
    char line[sizeof error.code + sizeof error.message + 4], redacted[sizeof line + 16];
    snprintf(line, sizeof line, "%s: %s", error.code, error.message);
    url_redact_text(line, redacted, sizeof redacted);
    fflush(stdout);
    fprintf(stderr, "%s\n", redacted);
    connection_hint(&options, error.code, error.message);
    exit_status = exit_status_for(error.code);
  }
  lua_close(L);
  return exit_status;
}

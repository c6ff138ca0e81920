/* The host executable, three commands on the core the Lua module uses:
 *
 *   amqp-delegate run FILE...         serves the workers that Lua files return
 *   amqp-delegate call NAME [ARG...]  calls a worker once: JSON arguments in, JSON result out
 *   amqp-delegate shell               a Lua REPL with a started delegator (shell.c)
 *
 * Messages never show a password: URLs in them are redacted, and the
 * password given with --url is overwritten in argv (what ps shows) once it
 * has been copied. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <amqp.h>

#include "byte_buffer.h"
#include "error_object.h"
#include "errors.h"
#include "json.h"
#include "log.h"
#include "cli.h"
#include "pretty.h"
#include "runtime.h"
#include "url.h"
#include "version.h"

int luaopen_amqp_delegate(lua_State *L);

/* ---- help texts ---- */

#define EXIT_CODES_HELP                                                                    \
  "exit status:\n"                                                                         \
  "  0    done\n"                                                                          \
  "  1    failed: a worker file does not load (run); the task raised or nobody serves\n"   \
  "       the worker (call: TASK_FAILED, NO_ROUTE, a task's own code...)\n"                \
  "  2    usage: unknown option, bad value, an ARG that is not JSON, a bad URL\n"          \
  "  3    connection (call, shell): CONNECTION_FAILED, AUTH_FAILED, CONNECTION_LOST,\n"    \
  "       BROKER_ERROR\n"                                                                  \
  "  4    TIMEOUT (call): no reply within --timeout\n"                                     \
  "  130  interrupted (Ctrl-C)\n"

#define URL_HELP "  --url URL            broker URL (default: $AMQP_URL, else amqp://localhost)\n"
#define LOG_HELP "  --log-level LEVEL    debug, info, warn, error or off (default %s)\n"
#define TLS_HELP                                                                         \
  "  --ca-file FILE       for amqps:// URLs: the CA that signed the broker's certificate\n" \
  "                       (default: the system's CAs)\n"                                \
  "  --cert-file FILE, --key-file FILE   a client certificate and its key\n"

static const char top_usage[] =
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

static const char run_usage[] =
    "usage: amqp-delegate run [options] FILE...\n"
    "\n"
    "Serves the workers that each Lua FILE returns ({name = ..., task = function ... end},\n"
    "or a list of such tables) until SIGINT or SIGTERM, then stops gracefully: cancels the\n"
    "consumers, lets the tasks in hand reply, closes (a second signal exits at once). Every\n"
    "file is loaded before any worker starts: one that fails means nothing is served.\n"
    "Prints `ready` on standard output once every worker consumes.\n"
    "\n"
    "options:\n"
    URL_HELP
    TLS_HELP
    "  --concurrency N      tasks each worker runs at once (prefetch), default 1\n"
    LOG_HELP
    "  --help, --version\n"
    "\n"
    "exit status: 0 stopped by a signal, 1 a file failed to load or a worker to start,\n"
    "2 usage (see amqp-delegate --help).\n";

static const char call_usage[] =
    "usage: amqp-delegate call [options] NAME [ARG...]\n"
    "\n"
    "Calls worker NAME once and prints its result as JSON on standard output. Each ARG is\n"
    "one JSON value (quote strings for the shell and for JSON: '\"text\"'):\n"
    "  amqp-delegate call adder 10 15                  -> 25\n"
    "  amqp-delegate call echo '{\"a\": [1, 2]}'          -> {\"a\":[1,2]}\n"
    "On failure it prints `CODE: message` on standard error and exits non-zero.\n"
    "\n"
    "options:\n"
    URL_HELP
    TLS_HELP
    "  --timeout SECONDS    give up waiting for the reply after that long (TIMEOUT, exit 4);\n"
    "                       0 waits as long as it takes; default: the delegator's (30)\n"
    "  --pretty             print the result indented for people instead of compact JSON\n"
    LOG_HELP
    "  --help, --version\n"
    "\n"
    EXIT_CODES_HELP;

static const char shell_usage[] =
    "usage: amqp-delegate shell [options]\n"
    "\n"
    "An interactive Lua 5.4 prompt with a started delegator bound to `delegator` and the\n"
    "module to `delegate`. Any other name that is not defined calls the worker of that\n"
    "name: `adder(10, 15)` is `delegator:invoke(\"adder\", 10, 15)`. Expressions print their\n"
    "value (tables as indented JSON); errors print as one line, `CODE: message`.\n"
    "Ctrl-D, exit() or os.exit() stops the delegator and leaves; Ctrl-C at the prompt\n"
    "drops the line. For line editing and history: rlwrap amqp-delegate shell.\n"
    "\n"
    "options:\n"
    URL_HELP
    TLS_HELP
    LOG_HELP
    "  --help, --version\n"
    "\n"
    "exit status: 0 (or the code given to exit()), 2 usage, 3 the delegator cannot connect.\n";

/* ---- messages ---- */

/* Copies text to out, replacing the password of every URL in it
 * (scheme://user:password@host) with ***. */
void redact_text(const char *text, char *out, size_t size) {
  size_t used = 0;
  if (size == 0) return;
  while (*text && used + 1 < size) {
    const char *scheme_end = strstr(text, "://");
    const char *copy_until = scheme_end ? scheme_end + 3 : text + strlen(text);
    const char *resume = copy_until;
    const char *colon = NULL, *at = NULL;
    if (scheme_end) {
      const char *authority = scheme_end + 3;
      size_t length = strcspn(authority, "/?# \t\r\n'\"<>");
      for (const char *p = authority; p < authority + length; p++)
        if (*p == '@') at = p;
      colon = at ? memchr(authority, ':', (size_t)(at - authority)) : NULL;
      if (colon) {
        copy_until = colon + 1;
        resume = at;
      }
    }
    size_t n = (size_t)(copy_until - text);
    if (n > size - 1 - used) n = size - 1 - used;
    memcpy(out + used, text, n);
    used += n;
    if (colon && used + 3 < size) {
      memcpy(out + used, "***", 3);
      used += 3;
    }
    text = resume;
  }
  out[used] = '\0';
}

int fail(int status, const char *format, ...) {
  char message[2048], redacted[2048];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof message, format, args);
  va_end(args);
  redact_text(message, redacted, sizeof redacted);
  fflush(stdout);
  fprintf(stderr, "amqp-delegate: %s\n", redacted);
  return status;
}

static void print_version(void) {
  printf("amqp-delegate %s (%s, rabbitmq-c %s)\n", AMQP_DELEGATE_VERSION, LUA_RELEASE,
         amqp_version());
}

static void print_usage(const char *usage, const char *default_level) {
  printf(usage, default_level);
}

/* ---- options ---- */

/* --url VALUE: keeps a private copy and overwrites the password in argv, so
 * that ps and /proc/PID/cmdline do not show it. */
static const char *take_url(char *value) {
  static char copy[URL_MAX_LENGTH]; /* one --url per process: no allocation to leak */
  if (strlen(value) >= sizeof copy) return value; /* url_parse refuses it, redacted */
  memcpy(copy, value, strlen(value) + 1);
  char *authority = strstr(value, "://");
  if (authority) {
    authority += 3;
    char *end = authority + strcspn(authority, "/?#");
    char *at = NULL;
    for (char *p = authority; p < end; p++)
      if (*p == '@') at = p;
    char *colon = at ? memchr(authority, ':', (size_t)(at - authority)) : NULL;
    if (colon)
      for (char *p = colon + 1; p < at; p++) *p = '*';
  }
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

/* A Lua state with the standard libraries, the module preloaded (so worker
 * files can require it) and required. Leaves the module on the stack. */
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
  static const char *const connection[] = {ERR_CONNECTION_FAILED, ERR_AUTH_FAILED,
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

/* ---- run ---- */

static int traceback(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE && luaL_getmetafield(L, 1, "__name") != LUA_TNIL) {
    lua_pop(L, 1);
    return 1; /* our error objects print as one line already */
  }
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}

/* Applies the command line to one worker table, then creates the worker.
 * Stack: module at 1; the table on top. Leaves the worker on top. */
static void make_worker(lua_State *L, const struct options *options, const char *file) {
  if (lua_type(L, -1) != LUA_TTABLE)
    luaL_error(L, "%s must return a worker table {name = ..., task = function ... end}", file);
  apply_connection_options(L, -1, options);
  if (options->concurrency) {
    lua_pushinteger(L, options->concurrency);
    lua_setfield(L, -2, "concurrency");
  }
  lua_getfield(L, 1, "worker");
  lua_insert(L, -2);
  lua_call(L, 1, 1);
}

/* Loads one file and pushes the workers it returns; returns their count. */
static int load_file(lua_State *L, const struct options *options, const char *file) {
  if (luaL_loadfile(L, file) != LUA_OK) lua_error(L);
  lua_call(L, 0, 1);
  if (lua_isnil(L, -1)) { /* the file started its own workers */
    lua_pop(L, 1);
    return 0;
  }
  lua_rawgeti(L, -1, 1);
  int is_list = lua_type(L, -1) == LUA_TTABLE;
  lua_pop(L, 1);
  if (!is_list) {
    make_worker(L, options, file);
    return 1;
  }
  int list = lua_gettop(L), count = (int)luaL_len(L, list);
  luaL_checkstack(L, count, "too many workers");
  for (int i = 1; i <= count; i++) {
    lua_rawgeti(L, list, i);
    make_worker(L, options, file);
  }
  lua_remove(L, list);
  return count;
}

/* Every file is loaded and every worker created before any starts: a file
 * with an error means nothing is served. */
static int run(lua_State *L) {
  const struct options *options = lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_requiref(L, "amqp_delegate", luaopen_amqp_delegate, 0);
  int first = lua_gettop(L) + 1;
  for (int i = 0; i < options->rest_count; i++) load_file(L, options, options->rest[i]);
  int last = lua_gettop(L);
  struct runtime *runtime = runtime_get(L);
  if (last < first && !runtime->services)
    luaL_error(L, "no worker to serve: a worker file returns {name = ..., task = ...}");
  for (int i = first; i <= last; i++) {
    lua_getfield(L, i, "start");
    lua_pushvalue(L, i);
    lua_call(L, 1, 0);
  }
  fprintf(stdout, "ready\n");
  fflush(stdout);
  runtime_serve(runtime, L);
  return 0;
}

static int command_run(int argc, char **argv) {
  struct options options;
  int status = parse_options(argc, argv,
                             OPTION_URL | OPTION_CONCURRENCY | OPTION_LOG_LEVEL | OPTION_TLS,
                             run_usage, "info", &options);
  if (status) return status < 0 ? EXIT_OK : status;
  if (options.rest_count == 0)
    return fail(EXIT_USAGE, "run needs at least one worker FILE (see amqp-delegate run --help)");
  /* Delegators and workers the files make themselves use the same broker. */
  if (options.url) setenv("AMQP_URL", options.url, 1);
  lua_State *L = new_state();
  if (!L) return fail(EXIT_FAILED, "cannot create a Lua state");
  lua_pushcfunction(L, traceback);
  lua_pushcfunction(L, run);
  lua_pushlightuserdata(L, &options);
  status = lua_pcall(L, 1, 0, 1);
  if (status != LUA_OK) fail(EXIT_FAILED, "%s", luaL_tolstring(L, -1, NULL));
  lua_close(L);
  return status == LUA_OK ? EXIT_OK : EXIT_FAILED;
}

/* ---- call ---- */

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
  lua_getfield(L, 1, "delegator"); /* 2 */
  lua_createtable(L, 0, 3);        /* 3: its options */
  apply_connection_options(L, 3, options);
  if (options->timeout >= 0) {
    lua_pushnumber(L, options->timeout);
    lua_setfield(L, 3, "timeout");
    if (options->timeout > 0 && options->timeout < 10) { /* connecting counts too */
      lua_pushnumber(L, options->timeout);
      lua_setfield(L, 3, "connect_timeout");
    }
  }
  lua_call(L, 1, 1); /* 2: the delegator */
  lua_getfield(L, 2, "invoke");
  lua_pushvalue(L, 2);
  lua_pushstring(L, name);
  for (int i = 1; i <= count; i++) {
    const char *text = options->rest[i];
    char problem[256];
    if (json_decode(L, text, strlen(text), JSON_DEFAULT_MAX_DEPTH, problem, sizeof problem) != 0)
      return error_object_raisef(L, ERR_BAD_ARGUMENT, "ARG %d is not JSON: %s (%s)", i, problem,
                                 strncmp(text, "--", 2) == 0 ? "options go before NAME"
                                                             : "quote strings: '\"text\"'");
  }
  lua_getfield(L, 2, "start");
  lua_pushvalue(L, 2);
  lua_call(L, 1, 0);
  lua_call(L, count + 2, 1); /* invoke: 3 is the result */
  lua_getfield(L, 2, "stop");
  lua_pushvalue(L, 2);
  lua_call(L, 1, 0);
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

static int command_call(int argc, char **argv) {
  struct options options;
  int status = parse_options(argc, argv,
                             OPTION_URL | OPTION_TIMEOUT | OPTION_LOG_LEVEL | OPTION_PRETTY |
                                 OPTION_TLS,
                             call_usage, "warn", &options);
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
    redact_text(line, redacted, sizeof redacted);
    fflush(stdout);
    fprintf(stderr, "%s\n", redacted);
    exit_status = exit_status_for(error.code);
  }
  lua_close(L);
  return exit_status;
}

/* ---- the commands ---- */

int main(int argc, char **argv) {
  /* the call's default log level: its standard error is for its own error */
  const char *command = argc >= 2 ? argv[1] : "";
  if (strcmp(command, "run") == 0) return command_run(argc, argv);
  if (strcmp(command, "call") == 0) {
    log_set_level(LOG_WARN);
    return command_call(argc, argv);
  }
  if (strcmp(command, "shell") == 0) return command_shell(argc, argv, shell_usage);
  if (strcmp(command, "--version") == 0 || strcmp(command, "version") == 0) {
    print_version();
    return EXIT_OK;
  }
  if (strcmp(command, "--help") == 0 || strcmp(command, "-h") == 0 ||
      strcmp(command, "help") == 0) {
    const char *topic = argc >= 3 ? argv[2] : "";
    if (strcmp(topic, "run") == 0) print_usage(run_usage, "info");
    else if (strcmp(topic, "call") == 0) print_usage(call_usage, "warn");
    else if (strcmp(topic, "shell") == 0) print_usage(shell_usage, "warn");
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

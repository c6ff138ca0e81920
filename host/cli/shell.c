/* amqp-delegate shell: a Lua prompt with a started delegator, or the same
 * environment for -e CODE and a script FILE (run, then exit). Code runs in an
 * environment of its own (shell_env.c) where a called name that no global
 * has calls that worker: `adder(10, 15)`. Values print pretty-printed; errors
 * as one line. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "cli.h"
#include "error_object.h"
#include "errors.h"
#include "help.h"
#include "log.h"
#include "pretty.h"
#include "shell.h"
#include "url.h"
#include "version.h"

#define SHELL_LOG_LEVEL "warn" /* the default --log-level */

static const char shell_usage[] =
    "usage: amqp-delegate shell [options] [FILE [ARG...]]\n"
    "\n"
    "An interactive Lua 5.4 prompt with a started delegator bound to `delegator` and the\n"
    "module to `delegate`. A name that no global has, written as a call, calls the worker\n"
    "of that name: `adder(10, 15)` is `delegator:invoke(\"adder\", 10, 15)`; anywhere else\n"
    "such a name is an error (greet(Ada) needs greet(\"Ada\")). Expressions print their\n"
    "value (tables as indented JSON); errors print as one line, `CODE: message`. help()\n"
    "says more. On a terminal: line editing, history (~/.amqp_delegate_history) and Tab\n"
    "completion of globals, fields and the workers called so far. Ctrl-D, exit() or\n"
    "os.exit() stops the delegator and leaves; Ctrl-C drops the line or interrupts a call.\n"
    "With -e CODE or a FILE (ARGs in `arg` and `...`) it runs them in the same environment\n"
    "instead, then exits; the first error ends it with a non-zero status:\n"
    "  amqp-delegate shell -e 'adder(10, 15)'           -> 25\n"
    "\n"
    "options:\n"
    URL_HELP
    TLS_HELP
    "  -e, --eval CODE      run CODE (an expression prints its value) instead of the\n"
    "                       prompt; may be repeated; runs before FILE\n"
    LOG_HELP
    HELP_VERSION_HELP
    OPTIONS_ANYWHERE_HELP
    "(ARGs of FILE that look like options go after `--`.)\n"
    "\n"
    EXIT_CODES_HELP;

void shell_help(void) {
  print_usage(shell_usage, SHELL_LOG_LEVEL);
}

#define DELEGATOR_KEY "amqp_delegate.shell.delegator" /* registry: the delegator we started */

/* ---- Ctrl-C ---- */

static volatile sig_atomic_t interrupted;
static lua_State *volatile running; /* the state while a line runs */

static void stop_hook(lua_State *L, lua_Debug *debug) {
  (void)debug;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

/* At the prompt: drops the line. While Lua code runs: stops it at the next
 * instruction, as lua.c does, and a second Ctrl-C ends the process. (A call
 * that waits on the loop installs the core's own handler meanwhile.) */
static void on_interrupt(int signal_number) {
  interrupted = 1;
  lua_State *L = running;
  if (L) {
    signal(signal_number, SIG_DFL);
    lua_sethook(L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  }
}

static void catch_interrupts(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0; /* no SA_RESTART: a Ctrl-C ends the read of the line */
  sigaction(SIGINT, &action, NULL);
}

/* ---- setup ---- */

static void stop_delegator(lua_State *L) {
  int top = lua_gettop(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, DELEGATOR_KEY) != LUA_TNIL) {
    lua_getfield(L, -1, "stop");
    lua_pushvalue(L, -2);
    lua_pcall(L, 1, 0, 0); /* NOT_STARTED when the user stopped it: fine */
  }
  lua_settop(L, top);
}

/* exit([status]) and os.exit([status]): save the history, stop the
 * delegator, then os.exit with the state closed. */
static int shell_exit(lua_State *L) {
  int top = lua_gettop(L);
  line_input_close();
  stop_delegator(L);
  lua_settop(L, top);
  fflush(stdout);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushboolean(L, 1);
  lua_call(L, 2, 0);
  return 0;
}

/* The globals and the environment; nothing connects yet. */
static int prepare(lua_State *L) {
  luaL_requiref(L, "amqp_delegate", luaopen_amqp_delegate, 0);
  lua_setglobal(L, "delegate");
  lua_getglobal(L, "os");
  lua_getfield(L, -1, "exit");
  lua_pushcclosure(L, shell_exit, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "exit");
  lua_setglobal(L, "exit");
  lua_pop(L, 1);
  shell_env_open(L);
  return 0;
}

static int connect_delegator(lua_State *L) {
  const struct options *options = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_getglobal(L, "delegate");
  lua_getfield(L, -1, "delegator");
  lua_createtable(L, 0, 2);
  apply_connection_options(L, -1, options);
  lua_call(L, 1, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, DELEGATOR_KEY); /* before start: stopped on any exit */
  lua_getfield(L, -1, "start");
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
  lua_setglobal(L, "delegator");
  return 0;
}

/* ---- running code ---- */

static int output_width(void) {
  struct winsize size;
  if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col >= 20)
    return size.ws_col > 160 ? 160 : size.ws_col;
  return PRETTY_DEFAULT_WIDTH;
}

/* Prints the values on the stack, tab-separated, through the pretty-printer. */
static int print_values(lua_State *L) {
  int count = lua_gettop(L);
  struct pretty_options options;
  pretty_default_options(&options);
  options.width = output_width();
  luaL_checkstack(L, count + 4, "too many results to print");
  luaL_Buffer b;
  for (int i = 1; i <= count; i++) pretty_push(L, i, &options);
  luaL_buffinit(L, &b);
  for (int i = 1; i <= count; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    lua_pushvalue(L, count + i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  size_t length;
  const char *text = lua_tolstring(L, -1, &length);
  fwrite(text, 1, length, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  return 0;
}

/* The exit status that goes with the report (error_report's table) on top. */
static int report_status(lua_State *L) {
  int status = EXIT_FAILED;
  if (lua_type(L, -1) != LUA_TTABLE) return status;
  if (lua_getfield(L, -1, "code") == LUA_TSTRING) status = exit_status_for(lua_tostring(L, -1));
  lua_pop(L, 1);
  return status;
}

/* Prints the report on top as one line (its traceback too at debug level). */
static void print_report(lua_State *L) {
  const char *text = "(an error whose message cannot be printed)";
  if (lua_type(L, -1) == LUA_TTABLE && lua_getfield(L, -1, "text") == LUA_TSTRING)
    text = lua_tostring(L, -1); /* on the stack until the caller clears it */
  fflush(stdout);
  fprintf(stderr, "%s\n", text);
  fflush(stderr);
}

/* Compiles `code` as a prompt line: first as `return <code>` so that an
 * expression prints its value, then as statements. Returns 1 with the
 * function pushed, 0 when the chunk is incomplete and `incomplete_ok` (more
 * lines needed), -1 with the syntax error pushed. */
static int compile(lua_State *L, const char *code, size_t length, const char *name,
                   int as_expression, int incomplete_ok) {
  if (as_expression) {
    lua_pushliteral(L, "return ");
    lua_pushlstring(L, code, length);
    lua_concat(L, 2);
    size_t return_length;
    const char *with_return = lua_tolstring(L, -1, &return_length);
    int status = luaL_loadbuffer(L, with_return, return_length, name);
    lua_remove(L, -2);
    if (status == LUA_OK) return 1;
    lua_pop(L, 1);
  }
  int status = luaL_loadbuffer(L, code, length, name);
  if (status == LUA_OK) return 1;
  size_t message_length;
  const char *message = lua_tolstring(L, -1, &message_length);
  static const char eof_mark[] = "<eof>";
  if (incomplete_ok && status == LUA_ERRSYNTAX && message &&
      message_length >= sizeof eof_mark - 1 &&
      strcmp(message + message_length - (sizeof eof_mark - 1), eof_mark) == 0) {
    lua_pop(L, 1);
    return 0;
  }
  return -1;
}

/* Runs the function on top (with `nargs` arguments above it) in the shell's
 * environment and, when `print`, prints what it returns. Returns 0, or the
 * exit status of its error (printed as one line). */
static int execute(lua_State *L, int nargs, int print, int debug) {
  int base = lua_gettop(L) - nargs; /* the function */
  shell_env_push(L);
  if (!lua_setupvalue(L, base, 1)) lua_pop(L, 1); /* a main chunk's first upvalue is _ENV */
  lua_pushboolean(L, debug);
  lua_pushcclosure(L, error_report, 1);
  lua_insert(L, base);
  interrupted = 0;
  /* the module's keepalive hook (heartbeats while a line computes) comes back after a
   * Ctrl-C replaced it */
  lua_Hook hook = lua_gethook(L);
  int hook_mask = lua_gethookmask(L), hook_count = lua_gethookcount(L);
  running = L;
  int status = lua_pcall(L, nargs, LUA_MULTRET, base);
  running = NULL;
  lua_sethook(L, hook == stop_hook ? NULL : hook, hook_mask, hook_count);
  catch_interrupts(); /* a Ctrl-C while it ran left SIG_DFL */
  lua_remove(L, base);
  int exit_status = EXIT_OK;
  if (status != LUA_OK) {
    /* our hook stopped the code, or the core ended a waiting call */
    exit_status = interrupted ? EXIT_INTERRUPTED : report_status(L);
    if (exit_status == EXIT_INTERRUPTED && isatty(STDIN_FILENO))
      fputc('\n', stdout); /* after the echoed ^C */
    print_report(L);
  } else if (print && lua_gettop(L) >= base) {
    lua_pushcfunction(L, print_values);
    lua_insert(L, base);
    if (lua_pcall(L, lua_gettop(L) - base, 0, 0) != LUA_OK)
      exit_status = fail(EXIT_FAILED, "cannot print the result: %s", lua_tostring(L, -1));
  }
  lua_settop(L, base - 1);
  return exit_status;
}

/* ---- -e CODE and FILE ---- */

/* Compiles every -e CODE and the FILE before anything connects (a typo costs
 * no connection) and pushes the functions in order. Returns 0, or prints the
 * error and returns its exit status. */
static int compile_batch(lua_State *L, const struct options *options) {
  luaL_checkstack(L, options->eval_count + 4, "too many -e");
  for (int i = 0; i < options->eval_count; i++) {
    const char *code = options->eval[i];
    if (compile(L, code, strlen(code), "=-e", 1, 0) < 0)
      return fail(EXIT_FAILED, "%s", lua_tostring(L, -1));
    shell_env_note_calls(L, code, strlen(code));
  }
  if (options->rest_count == 0) return 0;
  const char *file = options->rest[0];
  size_t length;
  char *text = read_whole_file(file, &length);
  if (!text) return fail(EXIT_FAILED, "cannot open %s: %s", file, strerror(errno));
  const char *code = text;
  if (code[0] == '#') code += strcspn(code, "\n"); /* #!/usr/bin/env ... keeps its line */
  lua_pushfstring(L, "@%s", file);
  int status = luaL_loadbuffer(L, code, length - (size_t)(code - text), lua_tostring(L, -1));
  lua_remove(L, -2);
  if (status == LUA_OK) shell_env_note_calls(L, code, length - (size_t)(code - text));
  free(text);
  if (status != LUA_OK) return fail(EXIT_FAILED, "%s", lua_tostring(L, -1));
  return 0;
}

/* Runs what compile_batch pushed: the -e chunks print their values; the
 * FILE gets its ARGs as `arg` and `...`. Stops at the first error. */
static int run_batch(lua_State *L, const struct options *options, int first, int debug) {
  for (int i = 0; i < options->eval_count; i++) {
    lua_pushvalue(L, first + i);
    int status = execute(L, 0, 1, debug);
    if (status) return status;
  }
  if (options->rest_count == 0) return EXIT_OK;
  int args = options->rest_count - 1;
  luaL_checkstack(L, args + 4, "too many arguments");
  lua_createtable(L, args, 1);
  for (int i = 0; i <= args; i++) {
    lua_pushstring(L, options->rest[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
  lua_pushvalue(L, first + options->eval_count);
  for (int i = 1; i <= args; i++) lua_pushstring(L, options->rest[i]);
  return execute(L, args, 0, debug);
}

/* ---- the prompt ---- */

static const char *complete_word(void *data, const char *word, int index) {
  return shell_env_complete(data, word, index);
}

static void banner(const struct options *options) {
  char where[2048];
  url_redact_text(options->url ? options->url : url_default(), where, sizeof where);
  printf("amqp-delegate %s shell (%s): `delegator` is started on %s, `delegate` is "
         "require \"amqp_delegate\", any other name called as a function calls that worker: "
         "adder(10, 15). help() tells more; Ctrl-D or exit() leaves.\n",
         AMQP_DELEGATE_VERSION, LUA_RELEASE, where);
}

/* Appends line and a newline to the chunk being typed; 0, or -1 (memory). */
static int append(char **chunk, size_t *length, size_t *capacity, const char *line) {
  size_t adding = strlen(line) + 1;
  if (*length + adding + 1 > *capacity) {
    size_t grown_capacity = (*length + adding + 1) * 2;
    char *grown = realloc(*chunk, grown_capacity);
    if (!grown) return -1;
    *chunk = grown;
    *capacity = grown_capacity;
  }
  memcpy(*chunk + *length, line, adding - 1);
  (*chunk)[*length + adding - 1] = '\n';
  *length += adding;
  (*chunk)[*length] = '\0';
  return 0;
}

static void repl(lua_State *L, int debug) {
  char *chunk = NULL;
  size_t chunk_length = 0, chunk_capacity = 0;
  int lines = 0;
  for (;;) {
    interrupted = 0;
    char *line = line_input_read(lines ? ">> " : "> ");
    if (!line) {
      if (interrupted) { /* Ctrl-C at the prompt: drop the chunk */
        fputs(line_input_editing() ? "^C\n" : "\n", stdout);
        fflush(stdout);
        lines = 0;
        chunk_length = 0;
        continue;
      }
      if (isatty(STDIN_FILENO)) fputc('\n', stdout);
      break;
    }
    line_input_remember(line);
    int appended = append(&chunk, &chunk_length, &chunk_capacity, line);
    free(line);
    if (appended != 0) {
      fail(EXIT_FAILED, "out of memory");
      break;
    }
    lines++;
    if (lines == 1 && strspn(chunk, " \t\r\n") == chunk_length) { /* an empty line */
      lines = 0;
      chunk_length = 0;
      continue;
    }
    int compiled = compile(L, chunk, chunk_length, "=stdin", lines == 1, 1);
    if (compiled == 0) continue; /* incomplete: read on */
    if (compiled > 0) {
      shell_env_note_calls(L, chunk, chunk_length);
      execute(L, 0, 1, debug);
    } else {
      fflush(stdout);
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    lines = 0;
    chunk_length = 0;
  }
  free(chunk);
}

/* ---- the command ---- */

/* The delegator could not start: one line (and the hint), and the status. */
static int setup_failure(lua_State *L, const struct options *options) {
  struct ad_error error;
  error_object_read(L, -1, ERR_CONNECTION_FAILED, &error);
  fail(0, "%s: %s", error.code, error.message);
  connection_hint(options, error.code, error.message);
  int status = exit_status_for(error.code);
  return status == EXIT_FAILED ? EXIT_CONNECTION : status;
}

static int shell(lua_State *L, const struct options *options) {
  lua_pushcfunction(L, prepare);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK)
    return fail(EXIT_FAILED, "cannot set the shell up: %s", luaL_tolstring(L, -1, NULL));
  int batch = options->eval_count > 0 || options->rest_count > 0;
  int first = lua_gettop(L) + 1;
  int status = compile_batch(L, options);
  if (status) return status;
  lua_pushcfunction(L, connect_delegator);
  lua_pushlightuserdata(L, (void *)options);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) return setup_failure(L, options);
  catch_interrupts();
  int debug = debug_logging(options);
  if (batch) return run_batch(L, options, first, debug);
  int terminal = isatty(STDIN_FILENO);
  line_input_open(terminal && isatty(STDOUT_FILENO), &interrupted, complete_word, L);
  if (terminal) banner(options);
  fflush(stdout);
  repl(L, debug);
  line_input_close();
  return EXIT_OK;
}

int command_shell(int argc, char **argv, int command) {
  log_set_level(LOG_WARN); /* SHELL_LOG_LEVEL, until --log-level says otherwise */
  struct options options;
  int status = parse_options(argc, argv, command,
                             OPTION_URL | OPTION_LOG_LEVEL | OPTION_TLS | OPTION_EVAL,
                             shell_usage, SHELL_LOG_LEVEL, &options);
  if (status) return status < 0 ? EXIT_OK : status;
  lua_State *L = new_state();
  if (!L) return fail(EXIT_FAILED, "cannot create a Lua state");
  status = shell(L, &options);
  signal(SIGINT, SIG_DFL);
  stop_delegator(L);
  lua_close(L);
  return status;
}

/* amqp-delegate shell: a Lua prompt with a started delegator. Lines run in an
 * environment of their own (_G stays untouched) where a missing name calls that
 * worker: `adder(10, 15)`. Values print pretty-printed; errors as one line. */
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
#include "url.h"
#include "version.h"

#define SHELL_LOG_LEVEL "warn" /* the default --log-level */

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
    HELP_VERSION_HELP
    OPTIONS_ANYWHERE_HELP
    "\n"
    "exit status: 0 (or the code given to exit()), 2 usage, 3 the delegator cannot connect.\n";

void shell_help(void) {
  print_usage(shell_usage, SHELL_LOG_LEVEL);
}

#define DELEGATOR_KEY "amqp_delegate.shell.delegator" /* registry: the delegator we started */
#define ENV_KEY "amqp_delegate.shell.env"             /* registry: the prompt's environment */

/* The prompt's environment: reads fall back to _G, then to a helper for any
 * identifier; writes go to _G. A helper calls through the global `delegator`
 * when called, so a delegator the user starts in its place is used. */
static const char environment_code[] =
    "local G = ...\n"
    "local helper = {__name = 'amqp_delegate.shell_helper'}\n"
    "function helper.__call(self, ...)\n"
    "  local d = rawget(G, 'delegator')\n"
    "  if d == nil then error('no `delegator`: set it to a started delegator', 2) end\n"
    "  return d:invoke(self.name, ...)\n"
    "end\n"
    "function helper.__tostring(self)\n"
    "  return string.format('worker %s: %s(...) calls delegator:invoke(%q, ...)',\n"
    "                       self.name, self.name, self.name)\n"
    "end\n"
    "return setmetatable({}, {\n"
    "  __index = function(_, name)\n"
    "    local value = G[name]\n"
    "    if value == nil and type(name) == 'string' and name:match('^[%a_][%w_]*$') then\n"
    "      return setmetatable({name = name}, helper)\n"
    "    end\n"
    "    return value\n"
    "  end,\n"
    "  __newindex = G,\n"
    "})\n";

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

/* exit([status]) and os.exit([status]): stop the delegator, then os.exit
 * with the state closed. */
static int shell_exit(lua_State *L) {
  int top = lua_gettop(L);
  stop_delegator(L);
  lua_settop(L, top);
  fflush(stdout);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushboolean(L, 1);
  lua_call(L, 2, 0);
  return 0;
}

static int setup(lua_State *L) {
  const struct options *options = lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_requiref(L, "amqp_delegate", luaopen_amqp_delegate, 0);
  lua_setglobal(L, "delegate");
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

  lua_getglobal(L, "os");
  lua_getfield(L, -1, "exit");
  lua_pushcclosure(L, shell_exit, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "exit");
  lua_setglobal(L, "exit");
  lua_pop(L, 1);

  if (luaL_loadbuffer(L, environment_code, sizeof environment_code - 1, "=shell") != LUA_OK)
    lua_error(L);
  lua_pushglobaltable(L);
  lua_call(L, 1, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, ENV_KEY);
  return 0;
}

/* ---- the prompt ---- */

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

/* The one line an error prints as: CODE: message for our error objects (and
 * any table with a string code), else what tostring says. */
static int error_text(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE) {
    lua_getfield(L, 1, "code");
    int coded = lua_type(L, -1) == LUA_TSTRING;
    lua_pop(L, 1);
    if (coded) {
      struct ad_error error;
      error_object_read(L, 1, ERR_TASK_FAILED, &error);
      lua_pushfstring(L, "%s: %s", error.code, error.message);
      return 1;
    }
  }
  luaL_tolstring(L, 1, NULL);
  return 1;
}

static void print_error(lua_State *L) {
  lua_pushcfunction(L, error_text);
  lua_insert(L, -2);
  const char *text = lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING
                         ? lua_tostring(L, -1)
                         : "(an error whose message cannot be printed)";
  fflush(stdout);
  fprintf(stderr, "%s\n", text);
  fflush(stderr);
  lua_pop(L, 1);
}

/* Compiles the lines read so far: first as `return <line>` so that an
 * expression prints its value, then as statements. Returns 1 with the
 * function pushed, 0 when the chunk is incomplete (more lines needed), -1
 * with the syntax error printed. */
static int compile(lua_State *L, const char *chunk, size_t length, int single_line) {
  if (single_line) {
    lua_pushliteral(L, "return ");
    lua_pushlstring(L, chunk, length);
    lua_concat(L, 2);
    size_t return_length;
    const char *with_return = lua_tolstring(L, -1, &return_length);
    int status = luaL_loadbuffer(L, with_return, return_length, "=stdin");
    lua_remove(L, -2);
    if (status == LUA_OK) return 1;
    lua_pop(L, 1);
  }
  int status = luaL_loadbuffer(L, chunk, length, "=stdin");
  if (status == LUA_OK) return 1;
  size_t message_length;
  const char *message = lua_tolstring(L, -1, &message_length);
  static const char eof_mark[] = "<eof>";
  if (status == LUA_ERRSYNTAX && message && message_length >= sizeof eof_mark - 1 &&
      strcmp(message + message_length - (sizeof eof_mark - 1), eof_mark) == 0) {
    lua_pop(L, 1);
    return 0;
  }
  print_error(L);
  return -1;
}

static void execute(lua_State *L) {
  int base = lua_gettop(L); /* the function */
  lua_getfield(L, LUA_REGISTRYINDEX, ENV_KEY);
  if (!lua_setupvalue(L, base, 1)) lua_pop(L, 1); /* a main chunk's first upvalue is _ENV */
  interrupted = 0;
  running = L;
  int status = lua_pcall(L, 0, LUA_MULTRET, 0);
  running = NULL;
  lua_sethook(L, NULL, 0, 0);
  catch_interrupts(); /* a Ctrl-C while it ran left SIG_DFL */
  if (status != LUA_OK) {
    int by_ctrl_c = interrupted;
    if (lua_type(L, -1) == LUA_TTABLE) { /* the core ends a waiting call with INTERRUPTED */
      lua_getfield(L, -1, "code");
      by_ctrl_c |= lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "INTERRUPTED") == 0;
      lua_pop(L, 1);
    }
    if (by_ctrl_c && isatty(STDIN_FILENO)) fputc('\n', stdout); /* after the echoed ^C */
    print_error(L);
  } else if (lua_gettop(L) >= base) {
    lua_pushcfunction(L, print_values);
    lua_insert(L, base);
    if (lua_pcall(L, lua_gettop(L) - base, 0, 0) != LUA_OK) print_error(L);
  }
  lua_settop(L, base - 1);
}

static void banner(const struct options *options) {
  char where[2048]; /* --url may be a list: every URL of it redacted */
  url_redact_text(options->url ? options->url : url_default(), where, sizeof where);
  printf("amqp-delegate %s shell (%s): `delegator` is started on %s, `delegate` is "
         "require \"amqp_delegate\", any other name calls that worker: adder(10, 15). "
         "Ctrl-D or exit() leaves.\n",
         AMQP_DELEGATE_VERSION, LUA_RELEASE, where);
}

static void repl(lua_State *L) {
  int interactive = isatty(STDIN_FILENO);
  char *line = NULL, *chunk = NULL;
  size_t line_capacity = 0, chunk_length = 0, chunk_capacity = 0;
  int lines = 0;
  for (;;) {
    if (interactive) {
      fputs(lines ? ">> " : "> ", stdout);
      fflush(stdout);
    }
    interrupted = 0;
    errno = 0;
    ssize_t length = getline(&line, &line_capacity, stdin);
    if (length < 0) {
      if (interrupted || errno == EINTR) { /* Ctrl-C at the prompt: drop the line */
        clearerr(stdin);
        fputc('\n', stdout);
        lines = 0;
        chunk_length = 0;
        continue;
      }
      if (interactive) fputc('\n', stdout);
      break;
    }
    if (chunk_length + (size_t)length + 1 > chunk_capacity) {
      size_t capacity = (chunk_length + (size_t)length + 1) * 2;
      char *grown = realloc(chunk, capacity);
      if (!grown) {
        fail(EXIT_FAILED, "out of memory");
        break;
      }
      chunk = grown;
      chunk_capacity = capacity;
    }
    memcpy(chunk + chunk_length, line, (size_t)length);
    chunk_length += (size_t)length;
    lines++;
    if (lines == 1 && strspn(chunk, " \t\r\n") == chunk_length) { /* an empty line */
      lines = 0;
      chunk_length = 0;
      continue;
    }
    int compiled = compile(L, chunk, chunk_length, lines == 1);
    if (compiled == 0) continue; /* incomplete: read on */
    if (compiled > 0) execute(L);
    lines = 0;
    chunk_length = 0;
  }
  free(line);
  free(chunk);
}

int command_shell(int argc, char **argv, int command) {
  log_set_level(LOG_WARN); /* SHELL_LOG_LEVEL, until --log-level says otherwise */
  struct options options;
  int status = parse_options(argc, argv, command, OPTION_URL | OPTION_LOG_LEVEL | OPTION_TLS,
                             shell_usage, SHELL_LOG_LEVEL, &options);
  if (status) return status < 0 ? EXIT_OK : status;
  if (options.rest_count > 0)
    return fail(EXIT_USAGE, "shell takes no arguments (see amqp-delegate shell --help)");
  lua_State *L = new_state();
  if (!L) return fail(EXIT_FAILED, "cannot create a Lua state");
  lua_pushcfunction(L, setup);
  lua_pushlightuserdata(L, &options);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    struct ad_error error;
    error_object_read(L, -1, ERR_CONNECTION_FAILED, &error);
    fail(0, "%s: %s", error.code, error.message);
    stop_delegator(L);
    lua_close(L);
    return exit_status_for(error.code) == EXIT_FAILED ? EXIT_CONNECTION
                                                      : exit_status_for(error.code);
  }
  catch_interrupts();
  if (isatty(STDIN_FILENO)) banner(&options);
  fflush(stdout);
  repl(L);
  signal(SIGINT, SIG_DFL);
  stop_delegator(L);
  lua_close(L);
  return EXIT_OK;
}

/* amqp-delegate status NAME|FILE...: asks the broker, through one delegator,
 * about each worker NAME (or the workers each worker FILE returns) and prints
 * a table of their consumers and waiting requests; exits 1 when a name has
 * no worker, so a script or a probe can act on it. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cli.h"
#include "error_object.h"
#include "errors.h"
#include "help.h"
#include "log.h"
#include "url.h"

#define STATUS_LOG_LEVEL "warn"

static const char status_usage[] =
    "usage: amqp-delegate status [options] NAME|FILE...\n"
    "\n"
    "Asks the broker about each worker NAME, or about the workers each worker FILE (an\n"
    "operand ending in .lua, loaded as run loads it, nothing started) returns: whether its\n"
    "queue exists, how many workers consume it and how many requests wait in it. A FILE\n"
    "that starts a worker itself is refused: that worker would count; give its NAME.\n"
    "  amqp-delegate status adder scripts/greet.lua\n"
    "  NAME   WORKERS  WAITING  STATE\n"
    "  adder        2        0  served\n"
    "  greet        0        3  NO_WORKER: no worker consumes its queue\n"
    "Exits 0 when every name has a worker, 1 when one has none (NO_WORKER) or no queue\n"
    "(NO_ROUTE: nobody has served it), else as below.\n"
    "\n"
    "options:\n"
    URL_HELP
    TLS_HELP
    "  -t, --timeout SECONDS  give up waiting for the broker after that long; default: 30\n"
    LOG_HELP
    HELP_VERSION_HELP
    OPTIONS_ANYWHERE_HELP
    "\n"
    EXIT_CODES_HELP;

void status_help(void) {
  print_usage(status_usage, STATUS_LOG_LEVEL);
}

static int is_worker_file(const char *operand) {
  size_t length = strlen(operand);
  return length > 4 && strcmp(operand + length - 4, ".lua") == 0;
}

#define NAME_MAX_BYTES 255 /* an AMQP short string: a queue name */

/* 1 to 255 bytes, no NUL: a name delegator:status() takes. */
static int is_worker_name(const char *name, size_t length) {
  return length > 0 && length <= NAME_MAX_BYTES && strlen(name) == length;
}

static void add_name(lua_State *L, int names, const char *file, int table) {
  if (lua_getfield(L, table, "name") != LUA_TSTRING)
    luaL_error(L, "%s returns a worker without a name (a string)", file);
  size_t length = 0;
  const char *name = lua_tolstring(L, -1, &length);
  if (!is_worker_name(name, length))
    luaL_error(L, "%s returns a worker whose name is not 1 to %d bytes without NUL bytes", file,
               NAME_MAX_BYTES);
  lua_rawseti(L, names, (lua_Integer)lua_rawlen(L, names) + 1);
}

/* The names of the workers FILE returns (one worker table, or a list). */
static void add_file_names(lua_State *L, int names, const char *file) {
  int services = count_services(L);
  if (luaL_loadfile(L, file) != LUA_OK) lua_error(L);
  lua_call(L, 0, 1);
  int result = lua_gettop(L);
  /* its own workers would consume the queues asked about: "served", by itself */
  if (count_services(L) > services)
    luaL_error(L, "%s starts workers itself when loaded, which status would count: give the "
               "NAMEs of the workers it starts", file);
  if (lua_type(L, result) != LUA_TTABLE)
    luaL_error(L, "%s returns %s, not a worker table: give the NAMEs of the workers it serves",
               file, luaL_typename(L, result));
  if (!is_worker_list(L, result)) {
    add_name(L, names, file, result);
  } else {
    for (lua_Integer i = 1; i <= (lua_Integer)luaL_len(L, result); i++) {
      if (lua_rawgeti(L, result, i) != LUA_TTABLE)
        luaL_error(L, "%s returns a list whose item %d is not a worker table", file, (int)i);
      add_name(L, names, file, lua_gettop(L));
      lua_pop(L, 1);
    }
  }
  lua_settop(L, result - 1);
}

/* Stack: options (light userdata). Returns the rows: a list of status
 * tables ({name, exists, consumers, waiting}). */
static int status(lua_State *L) {
  const struct options *options = lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_requiref(L, "amqp_delegate", luaopen_amqp_delegate, 0); /* 1 */
  lua_newtable(L);                                               /* 2: the names */
  for (int i = 0; i < options->rest_count; i++) {
    const char *operand = options->rest[i];
    if (is_worker_file(operand)) add_file_names(L, 2, operand);
    else {
      lua_pushstring(L, operand);
      lua_rawseti(L, 2, (lua_Integer)lua_rawlen(L, 2) + 1);
    }
  }
  push_delegator(L, 1, options); /* 3 */
  lua_getfield(L, 3, "start");
  lua_pushvalue(L, 3);
  lua_call(L, 1, 0);
  lua_newtable(L); /* 4: the rows */
  lua_Integer count = (lua_Integer)lua_rawlen(L, 2);
  for (lua_Integer i = 1; i <= count; i++) {
    lua_getfield(L, 3, "status");
    lua_pushvalue(L, 3);
    lua_rawgeti(L, 2, i);
    lua_call(L, 2, 1);
    lua_rawseti(L, 4, i);
  }
  lua_getfield(L, 3, "stop");
  lua_pushvalue(L, 3);
  lua_call(L, 1, 0);
  return 1;
}

static lua_Integer field_integer(lua_State *L, int row, const char *key) {
  lua_getfield(L, row, key);
  lua_Integer value = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return value;
}

/* Prints the table; returns the exit status it means. */
static int print_rows(lua_State *L, int rows) {
  lua_Integer count = (lua_Integer)lua_rawlen(L, rows);
  int width = 4; /* "NAME" */
  for (lua_Integer i = 1; i <= count; i++) {
    lua_rawgeti(L, rows, i);
    lua_getfield(L, -1, "name");
    int length = (int)lua_rawlen(L, -1);
    if (length > width) width = length;
    lua_pop(L, 2);
  }
  printf("%-*s  WORKERS  WAITING  STATE\n", width, "NAME");
  int exit_status = EXIT_OK;
  for (lua_Integer i = 1; i <= count; i++) {
    lua_rawgeti(L, rows, i);
    int row = lua_gettop(L);
    lua_getfield(L, row, "name");
    const char *name = lua_tostring(L, -1);
    lua_getfield(L, row, "exists");
    int exists = lua_toboolean(L, -1);
    lua_Integer consumers = field_integer(L, row, "consumers");
    if (!exists) {
      printf("%-*s  %7s  %7s  NO_ROUTE: no queue (nobody has served it)\n", width, name, "-", "-");
    } else {
      printf("%-*s  %7lld  %7lld  %s\n", width, name, (long long)consumers,
             (long long)field_integer(L, row, "waiting"),
             consumers > 0 ? "served" : "NO_WORKER: no worker consumes its queue");
    }
    if (!exists || consumers == 0) exit_status = EXIT_FAILED;
    lua_settop(L, row - 1);
  }
  return exit_status;
}

int command_status(int argc, char **argv, int command) {
  log_set_level(LOG_WARN); /* STATUS_LOG_LEVEL, until --log-level says otherwise */
  struct options options;
  int status_code = parse_options(argc, argv, command,
                                  OPTION_URL | OPTION_TIMEOUT | OPTION_LOG_LEVEL | OPTION_TLS,
                                  status_usage, STATUS_LOG_LEVEL, &options);
  if (status_code) return status_code < 0 ? EXIT_OK : status_code;
  if (options.rest_count == 0)
    return fail(EXIT_USAGE, "status needs a worker NAME or FILE (see amqp-delegate status --help)");
  for (int i = 0; i < options.rest_count; i++) {
    const char *operand = options.rest[i];
    if (!is_worker_file(operand) && !is_worker_name(operand, strlen(operand)))
      return fail(EXIT_USAGE, "status: '%.64s%s' is not a worker name (1 to %d bytes)", operand,
                  strlen(operand) > 64 ? "..." : "", NAME_MAX_BYTES);
  }
  lua_State *L = new_state();
  if (!L) return fail(EXIT_FAILED, "cannot create a Lua state");
  lua_pushboolean(L, debug_logging(&options));
  lua_pushcclosure(L, error_report, 1);
  lua_pushcfunction(L, status);
  lua_pushlightuserdata(L, &options);
  int exit_status;
  if (lua_pcall(L, 1, 1, 1) == LUA_OK) {
    exit_status = print_rows(L, lua_gettop(L));
    if (fflush(stdout) != 0 || ferror(stdout)) exit_status = fail(EXIT_FAILED, "cannot write the table");
  } else if (lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "code");
    lua_getfield(L, -2, "text");
    const char *code = lua_tostring(L, -2);
    exit_status = fail(code ? exit_status_for(code) : EXIT_FAILED, "%s", lua_tostring(L, -1));
    if (code) connection_hint(&options, code, lua_tostring(L, -1));
  } else {
    exit_status = fail(EXIT_FAILED, "an error whose message cannot be printed");
  }
  lua_close(L);
  return exit_status;
}

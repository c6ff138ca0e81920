/* amqp-delegate run FILE...: loads every file, creates the workers they
 * return, starts them all, prints `ready`, then serves until a signal. Each
 * worker remembers the file it came from, so a failure to start names both. */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>

#include "cli.h"
#include "error_object.h"
#include "errors.h"
#include "help.h"
#include "runtime.h"

#define RUN_LOG_LEVEL "info" /* the default --log-level (the log's own) */

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
    "  -c, --concurrency N  tasks each worker runs at once (prefetch), default 1\n"
    "  --queue-type TYPE    queue type for workers' queues the host declares: classic or\n"
    "                       quorum (default: the Node protocol's transient classic queue)\n"
    LOG_HELP
    HELP_VERSION_HELP
    OPTIONS_ANYWHERE_HELP
    "\n"
    "exit status: 0 stopped by a signal, 1 a file failed to load or a worker to start, or\n"
    "every worker stopped because it could not go on, 2 usage, 128 + signal after a second\n"
    "signal (see amqp-delegate --help).\n";

void run_help(void) {
  print_usage(run_usage, RUN_LOG_LEVEL);
}

/* The stack of run(): the module, where each worker came from (origins[k] =
 * {file = FILE, name = NAME} for the k-th worker created), then the workers. */
enum { MODULE = 1, ORIGINS = 2, FIRST_WORKER = 3 };

static int traceback(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE && luaL_getmetafield(L, 1, "__name") != LUA_TNIL) {
    lua_pop(L, 1);
    return 1; /* our error objects print as one line already */
  }
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}

/* Applies the command line to one worker table, then creates the worker and
 * records its origin. The table on top; leaves the worker in its place. */
static void make_worker(lua_State *L, const struct options *options, const char *file) {
  if (lua_type(L, -1) != LUA_TTABLE)
    luaL_error(L, "%s must return a worker table {name = ..., task = function ... end}", file);
  apply_connection_options(L, -1, options);
  if (options->concurrency) {
    lua_pushinteger(L, options->concurrency);
    lua_setfield(L, -2, "concurrency");
  }
  lua_getfield(L, -1, "name"); /* the name the worker gets: table, name */
  lua_insert(L, -2);           /* name, table */
  lua_getfield(L, MODULE, "worker");
  lua_insert(L, -2);
  lua_call(L, 1, 1);           /* name, worker */
  lua_createtable(L, 0, 2);    /* name, worker, origin */
  lua_pushstring(L, file);
  lua_setfield(L, -2, "file");
  lua_rotate(L, -3, -1);       /* worker, origin, name */
  lua_setfield(L, -2, "name");
  lua_rawseti(L, ORIGINS, (lua_Integer)lua_rawlen(L, ORIGINS) + 1); /* worker */
}

/* Loads one file and pushes the workers it returns; returns their count. */
static int load_file(lua_State *L, const struct options *options, const char *file) {
  if (luaL_loadfile(L, file) != LUA_OK) lua_error(L);
  lua_call(L, 0, 1);
  if (lua_isnil(L, -1)) { /* the file started its own workers */
    lua_pop(L, 1);
    return 0;
  }
  int is_list = 0; /* not a table: make_worker says what a file must return */
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    is_list = lua_type(L, -1) == LUA_TTABLE;
    lua_pop(L, 1);
  }
  if (!is_list) {
    luaL_checkstack(L, 4, "too many workers"); /* what make_worker pushes meanwhile */
    make_worker(L, options, file);
    return 1;
  }
  int list = lua_gettop(L), count = (int)luaL_len(L, list);
  luaL_checkstack(L, count + 4, "too many workers");
  for (int i = 1; i <= count; i++) {
    lua_rawgeti(L, list, i);
    make_worker(L, options, file);
  }
  lua_remove(L, list);
  return count;
}

/* Starting the k-th worker raised the error on top: pushes
 * "FILE: worker 'NAME': CODE: message". */
static void push_start_failure(lua_State *L, int k) {
  struct ad_error error;
  error_object_read(L, -1, ERR_TASK_FAILED, &error);
  lua_rawgeti(L, ORIGINS, k);
  lua_getfield(L, -1, "file");
  lua_getfield(L, -2, "name");
  lua_pushfstring(L, "%s: worker '%s': %s: %s", lua_tostring(L, -2), lua_tostring(L, -1),
                  error.code, error.message);
}

/* Every file is loaded and every worker created before any starts: a file
 * with an error means nothing is served (the error is raised). Returns
 * nothing once served, or the message naming a worker that failed to start. */
static int run(lua_State *L) {
  const struct options *options = lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_requiref(L, "amqp_delegate", luaopen_amqp_delegate, 0); /* MODULE */
  lua_newtable(L);                                               /* ORIGINS */
  for (int i = 0; i < options->rest_count; i++) load_file(L, options, options->rest[i]);
  int last = lua_gettop(L);
  struct runtime *runtime = runtime_get(L);
  if (last < FIRST_WORKER && !runtime->services)
    luaL_error(L, "no worker to serve: a worker file returns {name = ..., task = ...}");
  luaL_checkstack(L, 8, "too many workers");
  for (int i = FIRST_WORKER; i <= last; i++) {
    lua_getfield(L, i, "start");
    lua_pushvalue(L, i);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      push_start_failure(L, i - FIRST_WORKER + 1);
      return 1;
    }
  }
  fprintf(stdout, "ready\n");
  fflush(stdout);
  if (runtime_serve(runtime, L) < 0) { /* a service manager should restart us */
    lua_pushliteral(L, "every worker stopped because it could not go on (see the log above)");
    return 1;
  }
  return 0;
}

int command_run(int argc, char **argv, int command) {
  struct options options;
  int status = parse_options(argc, argv, command,
                             OPTION_URL | OPTION_CONCURRENCY | OPTION_LOG_LEVEL | OPTION_TLS |
                                 OPTION_QUEUE_TYPE,
                             run_usage, RUN_LOG_LEVEL, &options);
  if (status) return status < 0 ? EXIT_OK : status;
  if (options.rest_count == 0)
    return fail(EXIT_USAGE, "run needs at least one worker FILE (see amqp-delegate run --help)");
  /* Delegators and workers the files make themselves use the same broker. */
  if (options.url) setenv("AMQP_URL", options.url, 1);
  if (options.queue_type) setenv("AMQP_DELEGATE_QUEUE_TYPE", options.queue_type, 1);
  lua_State *L = new_state();
  if (!L) return fail(EXIT_FAILED, "cannot create a Lua state");
  lua_pushcfunction(L, traceback);
  lua_pushcfunction(L, run);
  lua_pushlightuserdata(L, &options);
  status = lua_pcall(L, 1, 1, 1);
  int exit_status = EXIT_OK;
  if (status != LUA_OK) { /* a file that does not load, a worker that cannot be made */
    exit_status = fail(EXIT_FAILED, "%s", luaL_tolstring(L, -1, NULL));
  } else if (lua_type(L, -1) == LUA_TSTRING) { /* a worker that does not start */
    exit_status = fail(EXIT_FAILED, "%s", lua_tostring(L, -1));
  }
  lua_close(L);
  return exit_status;
}

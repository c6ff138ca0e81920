/* amqp-delegate run FILE...: loads every file, creates the workers they
 * return, starts them all, prints `ready`, then serves until a signal. Each
 * worker remembers the file it came from, so a failure names both; a failure
 * is one line (the traceback only at --log-level debug). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cli.h"
#include "error_object.h"
#include "errors.h"
#include "help.h"
#include "keepalive.h"
#include "tracked_coroutines.h"
#include "log.h"
#include "metrics_server.h"
#include "runtime.h"

#define RUN_WAIT_FOR_BROKER "60" /* seconds */

#define RUN_LOG_LEVEL "info" /* the default --log-level (the log's own) */

static const char run_usage[] =
    "usage: amqp-delegate run [options] FILE...\n"
    "\n"
    "Serves the workers that each Lua FILE returns ({name = ..., task = function ... end},\n"
    "or a list of such tables) until SIGINT or SIGTERM, then stops gracefully: cancels the\n"
    "consumers, lets the tasks in hand reply, closes (a second signal exits at once). Every\n"
    "file is loaded before any worker starts: one that fails, or that returns no worker\n"
    "and starts none, means nothing is served. Prints `ready` on standard output once\n"
    "every worker consumes.\n"
    "  amqp-delegate run scripts/adder.lua --url amqp://guest:guest@localhost -c 8\n"
    "\n"
    "options:\n"
    URL_HELP
    TLS_HELP
    "  -c, --concurrency N  tasks each worker runs at once (prefetch), default 1\n"
    "  --queue-type TYPE    queue type for workers' queues the host declares: classic or\n"
    "                       quorum (default: the Node protocol's transient classic queue)\n"
    "  -w, --wait-for-broker SECONDS\n"
    "                       keep trying to reach the broker at start this long, logged\n"
    "                       (default " RUN_WAIT_FOR_BROKER " s, or $AMQP_DELEGATE_WAIT_FOR_BROKER; 0: fail at once)\n"
    "  --metrics ADDRESS:PORT\n"
    "                       serve Prometheus metrics at http://ADDRESS:PORT/metrics and a\n"
    "                       health check at /health (200 serving, 503 not connected or\n"
    "                       stopping); ADDRESS is numeric, [IPv6], localhost, or empty for\n"
    "                       every IPv4 interface (:9100); port 0 picks a free one (logged)\n"
    LOG_HELP
    HELP_VERSION_HELP
    OPTIONS_ANYWHERE_HELP
    "\n"
    EXIT_CODES_HELP;

void run_help(void) {
  print_usage(run_usage, RUN_LOG_LEVEL);
}

/* The stack of run(): the module, where each worker came from (origins[k] =
 * {file = FILE, name = NAME} for the k-th worker created), then the workers.
 * load_file() gets the options, its file, the module and the origins. */
enum { MODULE = 1, ORIGINS = 2, FIRST_WORKER = 3 };
enum { LOAD_OPTIONS = 1, LOAD_FILE, LOAD_MODULE, LOAD_ORIGINS, LOAD_FIRST_WORKER };

/* Applies the command line to one worker table, then creates the worker and
 * records its origin. The table on top; leaves the worker in its place. */
static void make_worker(lua_State *L, const struct options *options, const char *file) {
  if (lua_type(L, -1) != LUA_TTABLE)
    luaL_error(L, "%s must return a worker table {name = ..., task = function ... end}, not %s",
               file, luaL_typename(L, -1));
  apply_connection_options(L, -1, options);
  if (options->concurrency) {
    lua_pushinteger(L, options->concurrency);
    lua_setfield(L, -2, "concurrency");
  }
  lua_getfield(L, -1, "name"); /* the name the worker gets: table, name */
  lua_insert(L, -2);           /* name, table */
  lua_getfield(L, LOAD_MODULE, "worker");
  lua_insert(L, -2);
  lua_call(L, 1, 1);           /* name, worker */
  lua_createtable(L, 0, 2);    /* name, worker, origin */
  lua_pushstring(L, file);
  lua_setfield(L, -2, "file");
  lua_rotate(L, -3, -1);       /* worker, origin, name */
  lua_setfield(L, -2, "name");
  lua_rawseti(L, LOAD_ORIGINS, (lua_Integer)lua_rawlen(L, LOAD_ORIGINS) + 1); /* worker */
}

/* Loads one file and returns the workers it returns. A file that returns
 * nothing must have started a worker itself. */
static int load_file(lua_State *L) {
  const struct options *options = lua_touserdata(L, LOAD_OPTIONS);
  const char *file = lua_tostring(L, LOAD_FILE);
  int services = count_services(L);
  if (luaL_loadfile(L, file) != LUA_OK) lua_error(L);
  lua_call(L, 0, 1);
  if (lua_isnil(L, -1)) {
    if (count_services(L) == services)
      luaL_error(L, "%s returns no worker and starts none: it should end with "
                 "return {name = ..., task = function(...) ... end}", file);
    return 0;
  }
  if (!is_worker_list(L, -1)) { /* not a table: make_worker says what a file must return */
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
  return count;
}

/* Pushes run()'s three results for a failure with `code` and `text`: the
 * exit status, "FILE: text" (text alone when it names the file already:
 * FILE:LINE: ..., cannot open FILE), the code (nil: a plain Lua error). */
static int failure(lua_State *L, const char *file, const char *code, const char *text) {
  lua_pushinteger(L, code ? exit_status_for(code) : EXIT_FAILED);
  if (strstr(text, file)) lua_pushstring(L, text);
  else lua_pushfstring(L, "%s: %s", file, text);
  if (code) lua_pushstring(L, code);
  else lua_pushnil(L);
  return 3;
}

/* Starting the k-th worker raised the error on top: its failure, naming the
 * file and the worker. */
static int start_failure(lua_State *L, int k) {
  struct ad_error error;
  error_object_read(L, -1, ERR_TASK_FAILED, &error);
  lua_rawgeti(L, ORIGINS, k);
  lua_getfield(L, -1, "file");
  lua_getfield(L, -2, "name");
  const char *text = lua_pushfstring(L, "worker '%s': %s: %s", lua_tostring(L, -1), error.code,
                                     error.message);
  return failure(L, lua_tostring(L, -3), error.code, text);
}

#define METRICS_SERVER_KEY "amqp_delegate.metrics_server"

/* The server belongs to the Lua state: a finalizer closes it at lua_close,
 * before the runtime's (the first object made, so the last finalized) runs
 * the loop that lets its memory go. */
static int metrics_server_gc(lua_State *L) {
  struct metrics_server **server = lua_touserdata(L, 1);
  metrics_server_close(*server);
  *server = NULL;
  return 0;
}

/* --metrics: listens before any file loads, so that a host waiting for its
 * broker already answers /health (503). Returns 0, or -1 with error set. */
static int serve_metrics(lua_State *L, const char *text, struct ad_error *error) {
  struct metrics_address address;
  if (metrics_address_parse(text, &address, error->message, sizeof error->message) != 0) {
    snprintf(error->code, sizeof error->code, "%s", ERR_BAD_ARGUMENT);
    return -1;
  }
  struct metrics_server **slot = lua_newuserdatauv(L, sizeof *slot, 0);
  *slot = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, metrics_server_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, METRICS_SERVER_KEY);
  *slot = metrics_server_start(runtime_get(L), &address, error);
  return *slot ? 0 : -1;
}

/* Every file is loaded and every worker created before any starts: a file
 * with an error means nothing is served. Returns nothing once served by
 * SIGTERM, else (exit status, message or nil, error code or nil). */
static int run(lua_State *L) {
  const struct options *options = lua_touserdata(L, 1);
  int debug = debug_logging(options);
  lua_settop(L, 0);
  luaL_requiref(L, "amqp_delegate", luaopen_amqp_delegate, 0); /* MODULE */
  lua_newtable(L);                                               /* ORIGINS */
  if (keepalive_lazily_wanted()) tracked_coroutines_install(L); /* before the files see them */
  struct ad_error metrics_error;
  if (options->metrics && serve_metrics(L, options->metrics, &metrics_error) != 0) {
    lua_pushinteger(L, EXIT_FAILED);
    lua_pushfstring(L, "--metrics %s: %s", options->metrics, metrics_error.message);
    return 2;
  }
  for (int i = 0; i < options->rest_count; i++) {
    const char *file = options->rest[i];
    luaL_checkstack(L, 8, "too many workers");
    lua_pushboolean(L, debug);
    lua_pushcclosure(L, error_report, 1);
    int handler = lua_gettop(L);
    lua_pushcfunction(L, load_file);
    lua_pushlightuserdata(L, (void *)options);
    lua_pushstring(L, file);
    lua_pushvalue(L, MODULE);
    lua_pushvalue(L, ORIGINS);
    if (lua_pcall(L, 4, LUA_MULTRET, handler) != LUA_OK) {
      if (lua_type(L, -1) != LUA_TTABLE) /* the handler itself failed */
        return failure(L, file, NULL, "an error whose message cannot be printed");
      lua_getfield(L, -1, "code");
      lua_getfield(L, -2, "text");
      return failure(L, file, lua_tostring(L, -2), lua_tostring(L, -1));
    }
    lua_remove(L, handler); /* the workers the file returned follow */
  }
  int last = lua_gettop(L);
  luaL_checkstack(L, 8, "too many workers");
  for (int i = FIRST_WORKER; i <= last; i++) {
    lua_getfield(L, i, "start");
    lua_pushvalue(L, i);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) return start_failure(L, i - FIRST_WORKER + 1);
  }
  /* from here on only the loop enters Lua: the hook is set when a task runs long */
  if (keepalive_arm_lazily(runtime_get(L), L) != 0)
    log_line(LOG_WARN, "no timer for the keepalive hook: it stays on every Lua thread");
  fprintf(stdout, "ready\n");
  fflush(stdout);
  int stopped_by = runtime_serve(runtime_get(L), L);
  if (stopped_by < 0) { /* a service manager should restart us */
    lua_pushinteger(L, EXIT_FAILED);
    lua_pushliteral(L, "every worker stopped because it could not go on (see the log above)");
    return 2;
  }
  if (stopped_by == SIGINT) { /* Ctrl-C: say so to a calling script, as call and shell do */
    lua_pushinteger(L, EXIT_INTERRUPTED);
    return 1;
  }
  return 0;
}

int command_run(int argc, char **argv, int command) {
  struct options options;
  int status = parse_options(argc, argv, command,
                             OPTION_URL | OPTION_CONCURRENCY | OPTION_LOG_LEVEL | OPTION_TLS |
                                 OPTION_QUEUE_TYPE | OPTION_WAIT_FOR_BROKER | OPTION_METRICS,
                             run_usage, RUN_LOG_LEVEL, &options);
  if (status) return status < 0 ? EXIT_OK : status;
  if (options.rest_count == 0)
    return fail(EXIT_USAGE, "run needs at least one worker FILE (see amqp-delegate run --help)");
  /* Delegators and workers the files make themselves use the same broker. */
  if (options.url) setenv("AMQP_URL", options.url, 1);
  if (options.queue_type) setenv("AMQP_DELEGATE_QUEUE_TYPE", options.queue_type, 1);
  /* A host started before its broker (at boot, by a service manager) keeps trying. */
  if (options.wait_for_broker) setenv("AMQP_DELEGATE_WAIT_FOR_BROKER", options.wait_for_broker, 1);
  else setenv("AMQP_DELEGATE_WAIT_FOR_BROKER", RUN_WAIT_FOR_BROKER, 0);
  lua_State *L = new_state();
  if (!L) return fail(EXIT_FAILED, "cannot create a Lua state");
  lua_pushcfunction(L, run);
  lua_pushlightuserdata(L, &options);
  int exit_status = EXIT_OK;
  if (lua_pcall(L, 1, 3, 0) != LUA_OK) { /* out of memory, or a bug of ours */
    exit_status = fail(EXIT_FAILED, "%s", luaL_tolstring(L, -1, NULL));
  } else if (lua_isinteger(L, -3)) {
    exit_status = (int)lua_tointeger(L, -3);
    if (lua_type(L, -2) == LUA_TSTRING) {
      fail(exit_status, "%s", lua_tostring(L, -2));
      if (lua_type(L, -1) == LUA_TSTRING)
        connection_hint(&options, lua_tostring(L, -1), lua_tostring(L, -2));
    }
  }
  lua_close(L);
  return exit_status;
}

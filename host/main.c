/* The host executable: `amqp-delegate run FILE...` loads worker files into one
 * Lua state, starts their workers on one loop and serves until SIGINT or
 * SIGTERM. It links the same core as the Lua module. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <amqp.h>

#include "error_object.h"
#include "log.h"
#include "runtime.h"
#include "version.h"

int luaopen_amqp_delegate(lua_State *L);

struct run_options {
  const char *url;
  const char *concurrency;
  char **files;
  int file_count;
};

static const char usage[] =
    "usage: amqp-delegate run [options] FILE...\n"
    "\n"
    "Serves the workers that each Lua FILE returns ({name = ..., task = function ... end},\n"
    "or a list of such tables) until SIGINT or SIGTERM.\n"
    "\n"
    "options:\n"
    "  --url URL            broker URL (default: $AMQP_URL, else amqp://localhost)\n"
    "  --concurrency N      tasks each worker runs at once (prefetch), default 1\n"
    "  --log-level LEVEL    debug, info, warn, error or off (default info)\n"
    "  --help, --version\n";

static int fail(const char *format, const char *detail) {
  fprintf(stderr, "amqp-delegate: ");
  fprintf(stderr, format, detail);
  fputc('\n', stderr);
  return 1;
}

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
static void make_worker(lua_State *L, const struct run_options *options, const char *file) {
  if (lua_type(L, -1) != LUA_TTABLE)
    luaL_error(L, "%s must return a worker table {name = ..., task = function ... end}", file);
  if (options->url) {
    lua_pushstring(L, options->url);
    lua_setfield(L, -2, "url");
  }
  if (options->concurrency) {
    lua_pushinteger(L, strtol(options->concurrency, NULL, 10));
    lua_setfield(L, -2, "concurrency");
  }
  lua_getfield(L, 1, "worker");
  lua_insert(L, -2);
  lua_call(L, 1, 1);
}

/* Loads one file and pushes the workers it returns; returns their count. */
static int load_file(lua_State *L, const struct run_options *options, const char *file) {
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
  const struct run_options *options = lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_requiref(L, "amqp_delegate", luaopen_amqp_delegate, 0);
  int first = lua_gettop(L) + 1;
  for (int i = 0; i < options->file_count; i++) load_file(L, options, options->files[i]);
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

static int parse_run_options(int argc, char **argv, struct run_options *options) {
  memset(options, 0, sizeof *options);
  int i = 2;
  for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
    const char *flag = argv[i];
    if (strcmp(flag, "--help") == 0) {
      fputs(usage, stdout);
      exit(0);
    }
    if (strcmp(flag, "--") == 0) {
      i++;
      break;
    }
    if (i + 1 >= argc) return fail("%s needs a value", flag);
    const char *value = argv[++i];
    if (strcmp(flag, "--url") == 0) {
      options->url = value;
    } else if (strcmp(flag, "--concurrency") == 0) {
      char *end;
      long n = strtol(value, &end, 10);
      if (*end || n < 1 || n > 65535) return fail("--concurrency takes 1 to 65535, not '%s'", value);
      options->concurrency = value;
    } else if (strcmp(flag, "--log-level") == 0) {
      int level = log_level_from_name(value);
      if (level < 0) return fail("--log-level takes debug, info, warn, error or off, not '%s'", value);
      log_set_level((enum log_level)level);
    } else {
      return fail("unknown option %s (see amqp-delegate run --help)", flag);
    }
  }
  options->files = argv + i;
  options->file_count = argc - i;
  if (options->file_count == 0) return fail("%s", "run needs at least one worker FILE");
  return 0;
}

static int command_run(int argc, char **argv) {
  struct run_options options;
  if (parse_run_options(argc, argv, &options) != 0) return 2;
  lua_State *L = luaL_newstate();
  if (!L) return fail("%s", "cannot create a Lua state");
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_amqp_delegate);
  lua_setfield(L, -2, "amqp_delegate");
  lua_pop(L, 1);
  lua_pushcfunction(L, traceback);
  lua_pushcfunction(L, run);
  lua_pushlightuserdata(L, &options);
  int status = lua_pcall(L, 1, 0, 1);
  if (status != LUA_OK) fail("%s", luaL_tolstring(L, -1, NULL));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
    printf("amqp-delegate %s (%s, rabbitmq-c %s)\n", AMQP_DELEGATE_VERSION, LUA_RELEASE,
           amqp_version());
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "run") == 0) return command_run(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "--help") == 0) {
    fputs(usage, stdout);
    return 0;
  }
  fputs(usage, stderr);
  return 2;
}

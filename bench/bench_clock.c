/* bench_clock: a monotonic clock for bench/lua_bench.lua (Lua has none built in).
 *   local clock = require "bench_clock"; clock.now() --> seconds (float), CLOCK_MONOTONIC
 *   clock.wall() --> seconds since the epoch (float), CLOCK_REALTIME: the clock that
 *   scripts/bench.sh reads too ($EPOCHREALTIME), for the failover times
 * Built by scripts/bench.sh into build/bench/bench_clock.so; links no liblua (see PLATFORM.md). */
#define _POSIX_C_SOURCE 200809L
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

static int now(lua_State *L) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  lua_pushnumber(L, (lua_Number)t.tv_sec + (lua_Number)t.tv_nsec / 1e9);
  return 1;
}

static int wall(lua_State *L) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  lua_pushnumber(L, (lua_Number)t.tv_sec + (lua_Number)t.tv_nsec / 1e9);
  return 1;
}

int luaopen_bench_clock(lua_State *L) {
  static const luaL_Reg functions[] = {{"now", now}, {"wall", wall}, {NULL, NULL}};
  luaL_newlib(L, functions);
  return 1;
}

/* coroutine.resume, coroutine.wrap and coroutine.close for the host's Lua
 * state: Lua 5.4's own (lcorolib.c), but each tells keepalive.c which thread
 * runs Lua while it is resumed or closed, so that a coroutine a task made
 * gets the keepalive hook while it computes. */
#include "tracked_coroutines.h"

#include <lauxlib.h>

#include "keepalive.h"

/* lcorolib.c's auxresume: the values (or the error) of resuming co with
 * narg values from L's top; -1 for an error, else how many. */
static int resume_tracked(lua_State *L, lua_State *co, int narg) {
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  int results;
  keepalive_push(co);
  int status = lua_resume(co, L, narg, &results); /* never raises */
  keepalive_pop();
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, results + 1)) {
      lua_pop(co, results);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, results);
    return results;
  }
  lua_xmove(co, L, 1); /* the error */
  return -1;
}

static lua_State *coroutine_argument(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD); /* the library's own check and message */
  return lua_tothread(L, 1);
}

static int coroutine_resume(lua_State *L) {
  lua_State *co = coroutine_argument(L);
  int results = resume_tracked(L, co, lua_gettop(L) - 1);
  if (results < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(results + 1));
  return results + 1;
}

/* lcorolib.c's auxwrap: an error goes on (its coroutine closed), a string
 * one with the caller's position */
static int wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int results = resume_tracked(L, co, lua_gettop(L));
  if (results >= 0) return results;
  int status = lua_status(co);
  if (status != LUA_OK && status != LUA_YIELD) { /* an error in the coroutine */
    status = keepalive_resetthread(co);
    lua_xmove(co, L, 1); /* the error after closing it (a __close may raise another) */
  }
  if (status != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

static int coroutine_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, wrapped, 1);
  return 1;
}

/* lcorolib.c's auxstatus, for close */
enum { COROUTINE_RUNNING, COROUTINE_DEAD, COROUTINE_SUSPENDED, COROUTINE_NORMAL };

static int status_of(lua_State *L, lua_State *co) {
  if (L == co) return COROUTINE_RUNNING;
  switch (lua_status(co)) {
  case LUA_YIELD:
    return COROUTINE_SUSPENDED;
  case LUA_OK: {
    lua_Debug frame;
    if (lua_getstack(co, 0, &frame)) return COROUTINE_NORMAL; /* it has frames: it runs */
    return lua_gettop(co) == 0 ? COROUTINE_DEAD : COROUTINE_SUSPENDED;
  }
  default:
    return COROUTINE_DEAD; /* an error ended it */
  }
}

static int coroutine_close(lua_State *L) {
  lua_State *co = coroutine_argument(L);
  int status = status_of(L, co);
  if (status == COROUTINE_RUNNING || status == COROUTINE_NORMAL)
    return luaL_error(L, "cannot close a %s coroutine",
                      status == COROUTINE_RUNNING ? "running" : "normal");
  if (keepalive_resetthread(co) == LUA_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1); /* the error */
  return 2;
}

void tracked_coroutines_install(lua_State *L) {
  static const luaL_Reg functions[] = {{"resume", coroutine_resume},
                                       {"wrap", coroutine_wrap},
                                       {"close", coroutine_close},
                                       {NULL, NULL}};
  if (lua_getglobal(L, "coroutine") == LUA_TTABLE) luaL_setfuncs(L, functions, 0);
  lua_pop(L, 1);
}

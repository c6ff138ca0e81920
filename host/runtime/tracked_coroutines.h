/* The coroutine library's resume, wrap and close, replaced in the host's Lua
 * state by versions that behave as Lua's own and tell keepalive.c which
 * thread runs (see keepalive_push). */
#ifndef AD_TRACKED_COROUTINES_H
#define AD_TRACKED_COROUTINES_H

#include <lua.h>

/* Into the state's `coroutine` table; before any worker file is loaded, so
 * that a `local wrap = coroutine.wrap` there gets the tracked one. */
void tracked_coroutines_install(lua_State *L);

#endif

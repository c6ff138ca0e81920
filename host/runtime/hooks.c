/* Hooks as fibers: started from loop callbacks, so the Lua side of starting
 * one runs under runtime_protected, and the hook itself under lua_resume. */
#include "hooks.h"

#include <lauxlib.h>

#include "error_object.h"
#include "log.h"

struct hook_start {
  struct runtime *runtime;
  int self_ref, slot;
  const struct ad_error *error;
  struct fiber *fiber;
  int nargs;
};

struct hook_context {
  const char *hook_name;
};

struct hook_failure {
  struct fiber *fiber;
  const char *hook_name;
};

/* Reading the error may run its metamethods (__tostring, __index), which may
 * raise in turn: protected, on the loop's thread, never into the loop. */
static int log_hook_failure(lua_State *L) {
  struct hook_failure *failure = lua_touserdata(L, 1);
  lua_State *thread = failure->fiber->thread;
  lua_xmove(thread, L, 1);
  struct ad_error error;
  error_object_read(L, -1, "HOOK_FAILED", &error);
  log_line(LOG_ERROR, "%s hook failed: %s", failure->hook_name, error.message);
  luaL_traceback(L, thread, error.message, 0);
  log_line(LOG_DEBUG, "%s", lua_tostring(L, -1));
  return 0;
}

static void hook_finished(struct fiber *fiber, int status) {
  if (status == LUA_OK) return;
  struct hook_context *context = fiber_context(fiber);
  struct hook_failure failure = {fiber, context->hook_name};
  if (runtime_protected(fiber->runtime, log_hook_failure, &failure, context->hook_name) != 0)
    log_line(LOG_ERROR, "%s hook failed (its error could not be read)", context->hook_name);
}

static int start_hook(lua_State *L) {
  struct hook_start *start = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, start->self_ref);
  lua_getiuservalue(L, -1, start->slot);
  if (lua_isnil(L, -1)) return 0;
  start->fiber = fiber_create(start->runtime, hook_finished, sizeof(struct hook_context));
  lua_State *thread = start->fiber->thread;
  lua_xmove(L, thread, 1);
  start->nargs = 0;
  if (start->error) {
    error_object_push(thread, start->error);
    start->nargs = 1;
  }
  return 0;
}

void hook_run(struct runtime *runtime, int self_ref, int slot, const char *hook_name,
              const struct ad_error *error) {
  if (self_ref == LUA_NOREF) return;
  struct hook_start start = {runtime, self_ref, slot, error, NULL, 0};
  if (runtime_protected(runtime, start_hook, &start, hook_name) != 0 || !start.fiber) return;
  struct hook_context *context = fiber_context(start.fiber);
  context->hook_name = hook_name;
  fiber_resume(start.fiber, start.nargs);
}

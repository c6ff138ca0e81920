/* Error objects for Lua. They are plain tables so that users can pcall and
 * read err.code and err.message; __tostring makes them print as one line. */
#include "error_object.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "code");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "ERROR"), luaL_optstring(L, -1, "?"));
  return 1;
}

void error_object_open(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_OBJECT_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}

void error_object_push(lua_State *L, const struct ad_error *error) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, error->code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, error->message);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, ERROR_OBJECT_MT);
}

int error_object_raise(lua_State *L, const struct ad_error *error) {
  error_object_push(L, error);
  return lua_error(L);
}

int error_object_raisef(lua_State *L, const char *code, const char *format, ...) {
  struct ad_error error;
  snprintf(error.code, sizeof error.code, "%s", code);
  va_list args;
  va_start(args, format);
  vsnprintf(error.message, sizeof error.message, format, args);
  va_end(args);
  return error_object_raise(L, &error);
}

/* Never runs metamethods of a foreign value except through luaL_tolstring,
 * which is what print() would do anyway. */
void error_object_read(lua_State *L, int idx, const char *fallback, struct ad_error *out) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TTABLE) {
    lua_getfield(L, idx, "code");
    lua_getfield(L, idx, "message");
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t length;
      const char *code = lua_tolstring(L, -2, &length);
      error_set_code(out, code, length, fallback);
      const char *message = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
      snprintf(out->message, sizeof out->message, "%s", message);
      lua_pop(L, 2);
      return;
    }
    lua_pop(L, 2);
  }
  const char *text = luaL_tolstring(L, idx, NULL);
  error_set(out, fallback, "%s", text);
  lua_pop(L, 1);
}

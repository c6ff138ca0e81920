/* Errors as Lua values: tables {code=, message=} whose metatable prints them
 * as one line "CODE: message", so pcall users read fields and the REPL prints
 * something readable. */
#ifndef AD_ERROR_OBJECT_H
#define AD_ERROR_OBJECT_H

#include <lua.h>

#include "errors.h"

#define ERROR_OBJECT_MT "amqp_delegate.error"

void error_object_open(lua_State *L);
void error_object_push(lua_State *L, const struct ad_error *error);
/* Raises the error as an object; never returns. */
int error_object_raise(lua_State *L, const struct ad_error *error);
/* Convenience: error_set + raise. */
int error_object_raisef(lua_State *L, const char *code, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
/* Reads any Lua error value at idx: one of our objects (or any table with a
 * string `code`) keeps its code; anything else gets `fallback` and its
 * tostring as message. */
void error_object_read(lua_State *L, int idx, const char *fallback, struct ad_error *out);

#endif

/* JSON codec between JSON text and Lua 5.4 values, exact where lua-cjson is
 * not: integers stay integers, floats round-trip bit for bit, and decoded
 * [] and {} stay distinguishable through marker metatables.
 *
 * Mapping (both directions):
 *   number without '.'/exponent fitting int64 <-> Lua integer ("-0" -> 0);
 *     other numbers <-> Lua float (encoded as the shortest of %.15g/%.16g/%.17g
 *     that reads back exactly, with ".0" appended when it would look integral);
 *     numbers beyond the double range are rejected; NaN/infinity cannot be encoded.
 *   true/false <-> boolean;  null <-> light userdata NULL (== cjson.null);
 *     a nil encodes as null (top level, array holes, json_encode_args).
 *   string <-> Lua string of the same bytes (bytes >= 0x80 are not validated
 *     as UTF-8 in either direction; \uXXXX is decoded to UTF-8, lone
 *     surrogates become U+FFFD).
 *   array <-> table 1..n with metatable JSON_ARRAY_MT;
 *   object <-> table with metatable JSON_OBJECT_MT (duplicate keys: last wins).
 *   Unmarked tables: no keys -> [], positive integer keys -> array (holes are
 *   null; rejected when too sparse), string keys -> object, anything else is an error.
 *   Object key order on output is the order of lua_next (unspecified).
 *
 * Depth: the outermost container is depth 1; max_depth <= 0 means
 * JSON_DEFAULT_MAX_DEPTH, and values above 1000 are treated as 1000 (the
 * codec recurses on the C stack). All functions are reentrant; they use raw
 * table access only (no metamethods run) and may raise Lua memory errors,
 * which leak nothing. err may be NULL; messages are truncated to errlen. */
#ifndef AMQP_DELEGATE_JSON_H
#define AMQP_DELEGATE_JSON_H

#include <stddef.h>
#include <lua.h>
#include "byte_buffer.h"

#define JSON_DEFAULT_MAX_DEPTH 128
#define JSON_ARRAY_MT  "amqp_delegate.array"   /* registry keys of the two marker metatables */
#define JSON_OBJECT_MT "amqp_delegate.object"

/* Creates (if missing) the two marker metatables in the registry (luaL_newmetatable) with __name set; call once per lua_State. */
void json_open(lua_State *L);

/* Decodes text[0..len) (must be exactly one JSON value, surrounding whitespace allowed) and pushes it.
   Returns 0 on success (one value pushed), -1 on failure (nothing pushed; err holds a one-line message
   such as "invalid JSON at byte 12: expected ',' or ']'" or "nesting deeper than 128").
   Byte positions in messages are 0-based offsets into text. */
int json_decode(lua_State *L, const char *text, size_t len, int max_depth, char *err, size_t errlen);

/* Decodes a JSON text that must be an array and pushes its elements as separate values (the positional
   arguments of a call); top-level null elements are pushed as nil. Returns the number of values pushed
   (>= 0) or -1 on failure (nothing pushed; err says why, e.g. "request body is not a JSON array").
   Checks stack space (lua_checkstack) and fails cleanly if there are too many elements.
   The array itself counts as depth 1. */
int json_decode_args(lua_State *L, const char *text, size_t len, int max_depth, char *err, size_t errlen);

/* Appends the JSON of the value at stack index idx to out. top-level nil encodes as null.
   Returns 0, or -1 with err set (nothing sensible appended: caller resets the buffer). Leaves the stack as it found it.
   On failure out->length is restored to its value on entry. Error messages carry the path of the
   offending value when it is nested, e.g. "at [2].b: cannot encode function" (array indices are
   1-based, as in Lua). */
int json_encode(lua_State *L, int idx, byte_buffer *out, int max_depth, char *err, size_t errlen);

/* Appends a JSON array of the stack values first..last inclusive (nil -> null; first > last gives []).
   The array itself counts as depth 1. */
int json_encode_args(lua_State *L, int first, int last, byte_buffer *out, int max_depth, char *err, size_t errlen);

#endif

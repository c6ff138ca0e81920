/* libFuzzer target for the JSON codec: whatever decodes must re-encode, and
 * decoding that output must give a structurally equal value; json_decode_args
 * must agree with json_decode on which inputs are arrays. Build:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I host/common -I host/runtime $(pkg-config --cflags lua5.4) \
 *     spec/fuzz/fuzz_json.c host/runtime/json.c host/common/byte_buffer.c $(pkg-config --libs lua5.4) -lm
 * Run: ./a.out -max_len=4096 spec/fuzz/corpus_json */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "json.h"

static lua_State *L;
static byte_buffer out;

/* Number subtypes and the sign of zero count; tables must carry the same marker. */
static int deep_equal(int a, int b) {
  int t = lua_type(L, a);
  a = lua_absindex(L, a);
  b = lua_absindex(L, b);
  if (t != lua_type(L, b))
    return 0;
  if (t == LUA_TNUMBER) {
    if (lua_isinteger(L, a) != lua_isinteger(L, b))
      return 0;
    if (lua_isinteger(L, a))
      return lua_tointeger(L, a) == lua_tointeger(L, b);
    return lua_tonumber(L, a) == lua_tonumber(L, b) &&
           signbit(lua_tonumber(L, a)) == signbit(lua_tonumber(L, b));
  }
  if (t == LUA_TTABLE) {
    int na = 0, nb = 0, ok, ma, mb;
    if (!lua_checkstack(L, 8))
      abort();
    ma = lua_getmetatable(L, a);
    mb = lua_getmetatable(L, b);
    ok = ma == mb && (!ma || lua_rawequal(L, -1, -2));
    lua_pop(L, ma + mb);
    if (!ok)
      return 0;
    lua_pushnil(L);
    while (lua_next(L, a)) {
      na++;
      lua_pushvalue(L, -2);
      lua_rawget(L, b);
      ok = deep_equal(-1, -2);
      lua_pop(L, 2);
      if (!ok) {
        lua_pop(L, 1);
        return 0;
      }
    }
    lua_pushnil(L);
    while (lua_next(L, b)) {
      nb++;
      lua_pop(L, 1);
    }
    return na == nb;
  }
  return lua_rawequal(L, a, b);
}

static void die(const char *what, const uint8_t *data, size_t size, const char *err) {
  fprintf(stderr, "fuzz_json: %s (%s) for %zu-byte input: %.*s\n", what, err, size,
          (int)(size > 200 ? 200 : size), (const char *)data);
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  char err[256];
  int n, decoded;
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    json_open(L);
    byte_buffer_init(&out);
  }
  lua_settop(L, 0);
  byte_buffer_reset(&out);

  decoded = json_decode(L, text, size, JSON_DEFAULT_MAX_DEPTH, err, sizeof err) == 0;
  if (lua_gettop(L) != decoded)
    die("json_decode left the stack unbalanced", data, size, err);
  if (decoded) {
    if (json_encode(L, 1, &out, JSON_DEFAULT_MAX_DEPTH, err, sizeof err) != 0)
      die("a decoded value did not encode", data, size, err);
    if (lua_gettop(L) != 1)
      die("json_encode changed the stack", data, size, "");
    if (json_decode(L, out.data, out.length, JSON_DEFAULT_MAX_DEPTH, err, sizeof err) != 0)
      die("the encoder's output did not decode", out.length ? (const uint8_t *)out.data : data,
          out.length, err);
    if (!deep_equal(1, 2))
      die("round trip changed the value", data, size, "");
    lua_settop(L, 0);
  }

  n = json_decode_args(L, text, size, JSON_DEFAULT_MAX_DEPTH, err, sizeof err);
  if (n < 0 ? lua_gettop(L) != 0 : lua_gettop(L) != n)
    die("json_decode_args left the stack unbalanced", data, size, err);
  if (n >= 0) {
    /* An accepted argument list is a valid JSON array, and encodes back. */
    if (!decoded)
      die("json_decode_args accepted what json_decode rejected", data, size, "");
    byte_buffer_reset(&out);
    if (json_encode_args(L, 1, n, &out, JSON_DEFAULT_MAX_DEPTH, err, sizeof err) != 0)
      die("decoded arguments did not encode", data, size, err);
    lua_settop(L, 0);
    if (json_decode(L, out.data, out.length, JSON_DEFAULT_MAX_DEPTH, err, sizeof err) != 0 ||
        lua_rawlen(L, 1) != (size_t)n)
      die("encoded arguments did not decode to an array of the same length", data, size, err);
  }
  lua_settop(L, 0);
  return 0;
}

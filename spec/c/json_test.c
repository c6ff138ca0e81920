/* Standalone tests of the JSON codec (host/runtime/json.c): value mapping in both
 * directions, strictness of the decoder, error messages, limits, and
 * behaviour under Lua memory errors. Build and run: spec/c/build_json_test.sh */
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "json.h"

static lua_State *L;
static byte_buffer out;
static int passed, failed;
static char err[256];

static void report(int ok, int line, const char *fmt, ...) {
  va_list ap;
  if (ok) {
    passed++;
    return;
  }
  failed++;
  fprintf(stderr, "FAIL (json_test.c:%d): ", line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

#define CHECK(cond, ...) report((cond) ? 1 : 0, __LINE__, __VA_ARGS__)

/* Shows a byte string with non-printables escaped, for failure messages. */
static const char *show(const char *s, size_t n) {
  static char buf[4][200];
  static int slot;
  char *b = buf[slot++ % 4];
  size_t i, o = 0;
  for (i = 0; i < n && o + 5 < sizeof buf[0]; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f)
      b[o++] = (char)c;
    else
      o += (size_t)snprintf(b + o, sizeof buf[0] - o, "\\x%02x", c);
  }
  if (i < n)
    o += (size_t)snprintf(b + o, sizeof buf[0] - o, "...");
  b[o] = '\0';
  return b;
}

/* Structural equality of two Lua values as the codec sees them: number
 * subtypes and the sign of zero count, and tables must carry the same marker. */
static int deep_equal(lua_State *S, int a, int b, int depth) {
  int ta = lua_type(S, a), ok;
  a = lua_absindex(S, a);
  b = lua_absindex(S, b);
  if (ta != lua_type(S, b) || depth > 2000)
    return 0;
  switch (ta) {
    case LUA_TNUMBER:
      if (lua_isinteger(S, a) != lua_isinteger(S, b))
        return 0;
      if (lua_isinteger(S, a))
        return lua_tointeger(S, a) == lua_tointeger(S, b);
      return lua_tonumber(S, a) == lua_tonumber(S, b) &&
             signbit(lua_tonumber(S, a)) == signbit(lua_tonumber(S, b));
    case LUA_TTABLE: {
      int na = 0, nb = 0, hma = lua_getmetatable(S, a), hmb = lua_getmetatable(S, b);
      if (hma != hmb || (hma && !lua_rawequal(S, -1, -2))) {
        lua_pop(S, hma + hmb);
        return 0;
      }
      lua_pop(S, hma + hmb);
      lua_pushnil(S);
      while (lua_next(S, a)) {
        na++;
        lua_pushvalue(S, -2);
        lua_rawget(S, b);
        ok = deep_equal(S, -1, -2, depth + 1);
        lua_pop(S, 2);
        if (!ok) {
          lua_pop(S, 1);
          return 0;
        }
      }
      lua_pushnil(S);
      while (lua_next(S, b)) {
        nb++;
        lua_pop(S, 1);
      }
      return na == nb;
    }
    default:
      return lua_rawequal(S, a, b);
  }
}

/* Runs a Lua chunk ("return <expr>") leaving one value on the stack. */
static int eval(const char *expr) {
  char code[4096];
  snprintf(code, sizeof code, "return %s", expr);
  if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "Lua error in test expression: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

static int truthy_predicate(const char *pred) {
  int ok;
  if (eval(pred) != 0)
    return 0;
  ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok;
}

/* Decodes json, then encodes the result: the output must equal expect. */
static void roundtrip_n(int line, const char *json, size_t len, const char *expect, size_t elen) {
  int top = lua_gettop(L);
  byte_buffer_reset(&out);
  if (json_decode(L, json, len, 0, err, sizeof err) != 0) {
    report(0, line, "decode %s failed: %s", show(json, len), err);
    return;
  }
  if (json_encode(L, -1, &out, 0, err, sizeof err) != 0) {
    report(0, line, "encode of decoded %s failed: %s", show(json, len), err);
  } else {
    report(out.length == elen && memcmp(out.data, expect, elen) == 0, line,
           "%s -> %s, expected %s", show(json, len), show(out.data, out.length), show(expect, elen));
  }
  lua_pop(L, 1);
  report(lua_gettop(L) == top, line, "stack not balanced after %s", show(json, len));
}
#define ROUNDTRIP(json, expect) roundtrip_n(__LINE__, json, strlen(json), expect, strlen(expect))
#define SAME(json) ROUNDTRIP(json, json)

/* Decodes json into global v and checks a Lua predicate on it. */
static void decode_is(int line, const char *json, size_t len, const char *pred) {
  int top = lua_gettop(L);
  if (json_decode(L, json, len, 0, err, sizeof err) != 0) {
    report(0, line, "decode %s failed: %s", show(json, len), err);
    return;
  }
  report(lua_gettop(L) == top + 1, line, "decode %s pushed %d values", show(json, len), lua_gettop(L) - top);
  lua_setglobal(L, "v");
  report(truthy_predicate(pred), line, "decode %s: expected %s", show(json, len), pred);
  lua_settop(L, top);
}
#define DECODE_IS(json, pred) decode_is(__LINE__, json, strlen(json), pred)

static void decode_fails(int line, const char *json, size_t len, const char *expect_err) {
  int top = lua_gettop(L);
  err[0] = '\0';
  if (json_decode(L, json, len, 0, err, sizeof err) == 0) {
    report(0, line, "decode %s should fail (%s)", show(json, len), expect_err);
    lua_settop(L, top);
    return;
  }
  report(lua_gettop(L) == top, line, "failed decode of %s left the stack changed", show(json, len));
  report(strstr(err, expect_err) != NULL, line, "decode %s: error \"%s\", expected \"%s\"",
         show(json, len), err, expect_err);
}
#define DECODE_FAILS(json, msg) decode_fails(__LINE__, json, strlen(json), msg)

/* Encodes the value of a Lua expression. */
static void encode_is(int line, const char *expr, const char *expect) {
  int top = lua_gettop(L);
  if (eval(expr) != 0) {
    report(0, line, "bad expression %s", expr);
    return;
  }
  byte_buffer_reset(&out);
  if (json_encode(L, -1, &out, 0, err, sizeof err) != 0)
    report(0, line, "encode %s failed: %s", expr, err);
  else
    report(out.length == strlen(expect) && memcmp(out.data, expect, out.length) == 0, line,
           "encode %s -> %s, expected %s", expr, show(out.data, out.length), expect);
  report(lua_gettop(L) == top + 1, line, "encode %s changed the stack", expr);
  lua_settop(L, top);
}
#define ENCODE_IS(expr, expect) encode_is(__LINE__, expr, expect)

static void encode_fails(int line, const char *expr, const char *expect_err) {
  int top = lua_gettop(L);
  if (eval(expr) != 0) {
    report(0, line, "bad expression %s", expr);
    return;
  }
  byte_buffer_reset(&out);
  byte_buffer_append(&out, "xyz", 3);
  err[0] = '\0';
  if (json_encode(L, -1, &out, 0, err, sizeof err) == 0) {
    report(0, line, "encode %s should fail with %s, gave %s", expr, expect_err,
           show(out.data, out.length));
  } else {
    report(strstr(err, expect_err) != NULL, line, "encode %s: error \"%s\", expected \"%s\"",
           expr, err, expect_err);
    report(out.length == 3, line, "failed encode of %s did not restore the buffer", expr);
  }
  report(lua_gettop(L) == top + 1, line, "encode %s changed the stack", expr);
  lua_settop(L, top);
}
#define ENCODE_FAILS(expr, msg) encode_fails(__LINE__, expr, msg)

/* Encodes the value of a Lua expression where the output order is not
 * fixed (objects): decoding the output must equal decoding expect. */
static void encode_as(int line, const char *expr, const char *expect) {
  int top = lua_gettop(L);
  if (eval(expr) != 0) {
    report(0, line, "bad expression %s", expr);
    return;
  }
  byte_buffer_reset(&out);
  if (json_encode(L, -1, &out, 0, err, sizeof err) != 0)
    report(0, line, "encode %s failed: %s", expr, err);
  else if (json_decode(L, out.data, out.length, 0, err, sizeof err) != 0 ||
           json_decode(L, expect, strlen(expect), 0, err, sizeof err) != 0)
    report(0, line, "encode %s gave undecodable %s", expr, show(out.data, out.length));
  else
    report(deep_equal(L, -1, -2, 0), line, "encode %s -> %s, expected the same as %s", expr,
           show(out.data, out.length), expect);
  lua_settop(L, top);
}
#define ENCODE_AS(expr, expect) encode_as(__LINE__, expr, expect)

/* json_decode_args, then a Lua predicate over n (the count) and a (table.pack of the values). */
static void args_are(int line, const char *json, int expect_n, const char *pred) {
  int top = lua_gettop(L), n;
  char code[1024];
  snprintf(code, sizeof code, "local n, a = select('#', ...), table.pack(...) return %s", pred);
  if (luaL_loadstring(L, code) != LUA_OK) {
    report(0, line, "bad predicate %s", pred);
    lua_settop(L, top);
    return;
  }
  n = json_decode_args(L, json, strlen(json), 0, err, sizeof err);
  if (n < 0) {
    report(0, line, "decode_args %s failed: %s", json, err);
    lua_settop(L, top);
    return;
  }
  report(n == expect_n, line, "decode_args %s gave %d values, expected %d", json, n, expect_n);
  report(lua_gettop(L) == top + 1 + n, line, "decode_args %s: stack has %d extra", json, lua_gettop(L) - top - 1);
  if (lua_pcall(L, n, 1, 0) != LUA_OK)
    report(0, line, "predicate error: %s", lua_tostring(L, -1));
  else
    report(lua_toboolean(L, -1), line, "decode_args %s: expected %s", json, pred);
  lua_settop(L, top);
}
#define ARGS_ARE(json, n, pred) args_are(__LINE__, json, n, pred)

static void args_fail(int line, const char *json, const char *expect_err) {
  int top = lua_gettop(L);
  err[0] = '\0';
  if (json_decode_args(L, json, strlen(json), 0, err, sizeof err) >= 0) {
    report(0, line, "decode_args %s should fail", show(json, strlen(json)));
    lua_settop(L, top);
    return;
  }
  report(lua_gettop(L) == top, line, "failed decode_args left the stack changed");
  report(strstr(err, expect_err) != NULL, line, "decode_args %s: error \"%s\", expected \"%s\"",
         show(json, strlen(json)), err, expect_err);
}
#define ARGS_FAIL(json, msg) args_fail(__LINE__, json, msg)

/* decode(encode(decode(x))) must equal decode(x). */
static void property_roundtrip(int line, const char *json) {
  int top = lua_gettop(L);
  byte_buffer_reset(&out);
  if (json_decode(L, json, strlen(json), 0, err, sizeof err) != 0) {
    report(0, line, "sample %s does not decode: %s", json, err);
    return;
  }
  if (json_encode(L, -1, &out, 0, err, sizeof err) != 0) {
    report(0, line, "sample %s does not re-encode: %s", json, err);
  } else if (json_decode(L, out.data, out.length, 0, err, sizeof err) != 0) {
    report(0, line, "re-encoded %s does not decode: %s", show(out.data, out.length), err);
  } else {
    report(deep_equal(L, -1, -2, 0), line, "round trip of %s changed it: %s", json,
           show(out.data, out.length));
  }
  lua_settop(L, top);
}

static char *repeat(const char *prefix, const char *unit, int n, const char *suffix) {
  size_t pl = strlen(prefix), ul = strlen(unit), sl = strlen(suffix);
  char *s = malloc(pl + ul * (size_t)n + sl + 1), *p = s;
  int i;
  memcpy(p, prefix, pl);
  p += pl;
  for (i = 0; i < n; i++, p += ul)
    memcpy(p, unit, ul);
  memcpy(p, suffix, sl + 1);
  return s;
}

static char *nested(int depth) {
  char *s = malloc((size_t)depth * 2 + 1);
  memset(s, '[', (size_t)depth);
  memset(s + depth, ']', (size_t)depth);
  s[depth * 2] = '\0';
  return s;
}

static void test_numbers(void) {
  SAME("0");
  SAME("-1");
  SAME("25");
  SAME("9007199254740992");
  SAME("9007199254740993");
  SAME("9223372036854775807");
  SAME("-9223372036854775808");
  DECODE_IS("25", "math.type(v) == 'integer' and v == 25");
  DECODE_IS("9007199254740993", "math.type(v) == 'integer' and v == (1 << 53) + 1");
  DECODE_IS("9223372036854775807", "v == math.maxinteger");
  DECODE_IS("-9223372036854775808", "v == math.mininteger");
  DECODE_IS("-0", "math.type(v) == 'integer' and v == 0");
  ROUNDTRIP("-0", "0");
  /* outside int64 -> float */
  DECODE_IS("9223372036854775808", "math.type(v) == 'float' and v == 2^63");
  DECODE_IS("-9223372036854775809", "math.type(v) == 'float' and v == -2^63");
  DECODE_IS("123456789012345678901234567890", "math.type(v) == 'float' and v == 1.2345678901234568e29");
  ROUNDTRIP("9223372036854775808", "9.223372036854776e+18");
  /* floats */
  DECODE_IS("0.1", "math.type(v) == 'float' and v == 0.1");
  DECODE_IS("1E2", "math.type(v) == 'float' and v == 100.0");
  DECODE_IS("1e-2", "v == 0.01");
  DECODE_IS("25.0", "math.type(v) == 'float' and v == 25");
  DECODE_IS("-0.0", "math.type(v) == 'float' and 1/v == -math.huge");
  DECODE_IS("1.7976931348623157e308", "v == 1.7976931348623157e308");
  DECODE_IS("5e-324", "v == 5e-324 and v > 0");
  DECODE_IS("1e-400", "v == 0.0 and math.type(v) == 'float'");
  DECODE_IS("0.1000000000000000055511151231257827021181583404541015625", "v == 0.1");
  DECODE_IS("3.14159265358979323846264338327950288", "v == math.pi");
  DECODE_IS("123456789012345678e-10", "v == 12345678.9012345678");
  DECODE_IS("0.000000000000000000000000000001", "v == 1e-30");
  DECODE_IS("2.2250738585072011e-308", "v == 2.2250738585072011e-308");
  DECODE_IS("1e0000000000000000000000000001", "v == 10.0");
  DECODE_IS("0e99999999999999999", "v == 0.0");
  SAME("0.1");
  SAME("0.3333333333333333");
  SAME("1e+300");
  SAME("-1.5e-10");
  SAME("25.0");
  SAME("-0.0");
  SAME("1.7976931348623157e+308");
  ROUNDTRIP("5e-324", "4.94065645841247e-324");
  ROUNDTRIP("100.000", "100.0");
  ROUNDTRIP("1E2", "100.0");
  ENCODE_IS("1/3", "0.3333333333333333");
  ENCODE_IS("0.1", "0.1");
  ENCODE_IS("25.0", "25.0");
  ENCODE_IS("-0.0", "-0.0");
  ENCODE_IS("2^53", "9007199254740992.0");
  ENCODE_IS("1e15", "1e+15");
  ENCODE_IS("123456.789", "123456.789");
  ENCODE_IS("math.maxinteger", "9223372036854775807");
  ENCODE_IS("math.mininteger", "-9223372036854775808");
  ENCODE_IS("2^63", "9.223372036854776e+18");
  ENCODE_IS("999999999999999.0", "999999999999999.0");
  ENCODE_IS("-999999999999999.0", "-999999999999999.0");
  ENCODE_IS("1e15", "1e+15");
  ENCODE_IS("-123.0", "-123.0");
  ENCODE_IS("0.0", "0.0");
  ENCODE_IS("2^51 + 0.5", "2251799813685248.5");
  ENCODE_FAILS("0/0", "cannot encode NaN");
  ENCODE_FAILS("math.huge", "cannot encode infinity");
  ENCODE_FAILS("-math.huge", "cannot encode infinity");
  ENCODE_FAILS("{1, {x = 0/0}}", "at [2].x: cannot encode NaN");
  DECODE_FAILS("1e309", "number out of range");
  DECODE_FAILS("-1e400", "number out of range");
}

static void test_strings(void) {
  static const char nul_json[] = "\"a\\u0000b\"";
  SAME("\"h\xc3\xa9llo \xe2\x82\xac\xf0\x9d\x84\x9e\"");
  DECODE_IS("\"h\xc3\xa9llo \xe2\x82\xac\xf0\x9d\x84\x9e\"", "v == 'h\\u{e9}llo \\u{20ac}\\u{1d11e}'");
  DECODE_IS("\"\\u00e9\\u20AC\"", "v == '\\u{e9}\\u{20ac}'");
  DECODE_IS("\"\\ud834\\udd1e\"", "v == '\\xf0\\x9d\\x84\\x9e'");
  DECODE_IS("\"\\uD83D\\uDE00!\"", "v == '\\u{1f600}!'");
  DECODE_IS("\"\\ud800\"", "v == '\\xef\\xbf\\xbd'");
  DECODE_IS("\"\\udc00x\"", "v == '\\xef\\xbf\\xbdx'");
  DECODE_IS("\"\\ud800\\u0041\"", "v == '\\xef\\xbf\\xbdA'");
  DECODE_IS("\"\\ud800\\ud800\\udc00\"", "v == '\\xef\\xbf\\xbd\\u{10000}'");
  DECODE_IS("\"\\u0000\"", "v == '\\0' and #v == 1");
  DECODE_IS("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "v == '\"\\\\/\\b\\f\\n\\r\\t'");
  DECODE_IS("\"\"", "v == ''");
  DECODE_IS("\"\x7f\xff\xfe\"", "v == '\\x7f\\xff\\xfe'");
  roundtrip_n(__LINE__, nul_json, sizeof nul_json - 1, nul_json, sizeof nul_json - 1);
  ROUNDTRIP("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\\"\\\\/\\b\\f\\n\\r\\t\"");
  ROUNDTRIP("\"\\u0001\\u001F\\u007f\"", "\"\\u0001\\u001f\x7f\"");
  ENCODE_IS("'a\\0b'", "\"a\\u0000b\"");
  ENCODE_IS("'\\1\\31 /'", "\"\\u0001\\u001f /\"");
  ENCODE_IS("'\\xff\\xfe'", "\"\xff\xfe\"");
  {
    /* long strings cross the buffer's growth boundaries */
    char *expect = repeat("\"", "x\\n", 2000, "\"");
    ENCODE_IS("('x\\n'):rep(2000)", expect);
    free(expect);
  }
  DECODE_FAILS("\"a\nb\"", "control character in string");
  DECODE_FAILS("\"a\x01\"", "control character in string");
  DECODE_FAILS("\"\\x\"", "invalid escape");
  DECODE_FAILS("\"\\u12\"", "invalid \\u escape");
  DECODE_FAILS("\"\\uZZZZ\"", "invalid \\u escape");
  DECODE_FAILS("\"\\ud800\\uZZZZ\"", "invalid \\u escape");
  DECODE_FAILS("\"abc", "unexpected end of input");
  DECODE_FAILS("\"abc\\", "unexpected end of input");
  DECODE_FAILS("\"\\u00", "unexpected end of input");
  DECODE_FAILS("\"a\\nb", "unexpected end of input");
}

static void test_literals_and_null(void) {
  SAME("true");
  SAME("false");
  SAME("null");
  DECODE_IS("null", "v == null and type(v) == 'userdata'");
  DECODE_IS("[null, 1]", "v[1] == null and v[2] == 1 and #v == 2");
  DECODE_IS("{\"a\": null}", "v.a == null");
  DECODE_IS("true", "v == true");
  DECODE_IS("false", "v == false");
  ENCODE_IS("nil", "null");
  ENCODE_IS("null", "null");
  ENCODE_IS("{null, null}", "[null,null]");
  ENCODE_IS("{a = null}", "{\"a\":null}");
  ENCODE_IS("true", "true");
  ENCODE_IS("{false}", "[false]");
  SAME("[null,[null],{\"k\":null}]");
  {
    int x, top = lua_gettop(L);
    lua_pushlightuserdata(L, &x);
    byte_buffer_reset(&out);
    CHECK(json_encode(L, -1, &out, 0, err, sizeof err) == -1 && strstr(err, "cannot encode light userdata"),
          "non-NULL light userdata must not encode (%s)", err);
    lua_settop(L, top);
  }
}

static void test_tables(void) {
  SAME("[]");
  SAME("{}");
  SAME("[[],{},[{}],{\"a\":[]}]");
  SAME("[1,2,3]");
  SAME("{\"a\":1}");
  SAME("{\"\":\"\"}");
  SAME("[1,\"two\",3.5,true,null,{\"x\":[1]}]");
  ROUNDTRIP(" [ 1 , 2 ] ", "[1,2]");
  ROUNDTRIP("\t{ \"a\" :\r\n\"b\" }\n", "{\"a\":\"b\"}");
  ROUNDTRIP("{\"a\":1,\"a\":2}", "{\"a\":2}");
  DECODE_IS("[]", "getmetatable(v) == ARRAY and next(v) == nil");
  DECODE_IS("{}", "getmetatable(v) == OBJECT and next(v) == nil");
  DECODE_IS("[1,[2]]", "getmetatable(v[2]) == ARRAY and v[2][1] == 2");
  DECODE_IS("{\"1\": 2}", "v['1'] == 2 and v[1] == nil");
  DECODE_IS("{\"a\\u0000b\": 1}", "v['a\\0b'] == 1");
  DECODE_IS("[1,2,3]", "#v == 3 and v[3] == 3");
  ENCODE_IS("{}", "[]");
  ENCODE_IS("{1, 2, 3}", "[1,2,3]");
  ENCODE_IS("{1, nil, 3}", "[1,null,3]");
  ENCODE_IS("{[1] = 'a', [3] = 'c'}", "[\"a\",null,\"c\"]");
  ENCODE_IS("{[10] = 1}", "[null,null,null,null,null,null,null,null,null,1]");
  ENCODE_IS("{[3] = 1}", "[null,null,1]");
  ENCODE_IS("{a = {b = {}}}", "{\"a\":{\"b\":[]}}");
  ENCODE_IS("setmetatable({}, OBJECT)", "{}");
  ENCODE_IS("setmetatable({}, ARRAY)", "[]");
  ENCODE_AS("setmetatable({[1] = 'x', [-2] = 'y', z = 1}, OBJECT)", "{\"z\":1,\"-2\":\"y\",\"1\":\"x\"}");
  ENCODE_AS("{a = 1, b = {2}, c = 'x'}", "{\"c\":\"x\",\"b\":[2],\"a\":1}");
  ENCODE_IS("setmetatable({[5] = true}, OBJECT)", "{\"5\":true}");
  ENCODE_IS("setmetatable({1, nil, 3}, ARRAY)", "[1,null,3]");
  ENCODE_IS("setmetatable({1, 2}, {__index = function() error('no') end, __pairs = error})", "[1,2]");
  ENCODE_IS("(function() local s = {1} return {s, s} end)()", "[[1],[1]]");
  ENCODE_FAILS("{[1] = 1, [20] = 2}", "excessively sparse array (max index 20, 2 elements)");
  ENCODE_FAILS("{[2^40] = 1}", "excessively sparse array");
  ENCODE_FAILS("setmetatable({[100] = 1}, ARRAY)", "excessively sparse array");
  ENCODE_FAILS("{1, 2, a = 3}", "table mixes array and string keys");
  ENCODE_FAILS("{a = 3, 1}", "table mixes array and string keys");
  ENCODE_FAILS("{[0] = 1}", "cannot encode table key 0");
  ENCODE_FAILS("{[-1] = 1}", "cannot encode table key -1");
  ENCODE_FAILS("{[true] = 1}", "cannot encode table key of type boolean");
  ENCODE_FAILS("{[1.5] = 1}", "cannot encode table key of type float");
  ENCODE_FAILS("{[{}] = 1}", "cannot encode table key of type table");
  ENCODE_FAILS("{[print] = 1}", "cannot encode table key of type function");
  ENCODE_FAILS("setmetatable({a = 1}, ARRAY)", "array table has a key of type string");
  ENCODE_FAILS("setmetatable({[0] = 1}, ARRAY)", "cannot encode table key 0");
  ENCODE_FAILS("setmetatable({[true] = 1}, OBJECT)", "cannot encode table key of type boolean");
  ENCODE_FAILS("setmetatable({[1.5] = 1}, OBJECT)", "cannot encode table key of type float");
  ENCODE_FAILS("{a = {[1] = 1, [50] = 2}}", "at .a: excessively sparse array");
}

static void test_unencodable(void) {
  ENCODE_FAILS("print", "cannot encode function");
  ENCODE_FAILS("io.stdout", "cannot encode userdata");
  ENCODE_FAILS("coroutine.create(print)", "cannot encode thread");
  ENCODE_FAILS("{1, {a = print}}", "at [2].a: cannot encode function");
  ENCODE_FAILS("{x = {['a b'] = {io.stdout}}}", "at .x[\"a b\"][1]: cannot encode userdata");
  ENCODE_FAILS("setmetatable({[7] = print}, OBJECT)", "at [7]: cannot encode function");
  ENCODE_FAILS("{['a\\0\\nb'] = print}", "at [\"a??b\"]: cannot encode function");
  ENCODE_FAILS("{[('k'):rep(50)] = print}", "at .kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk: cannot");
  ENCODE_FAILS("(function() local t = {f = print} for i = 1, 20 do t = {t} end return t end)()",
               "at [1][1][1][1]...[1][1][1].f: cannot encode function");
  ENCODE_FAILS("(function() local t = {} t[1] = t return t end)()", "cyclic table");
  ENCODE_FAILS("(function() local t = {a = {}} t.a.b = t return t end)()", "at .a.b: cyclic table");
  ENCODE_FAILS("(function() local t = {{{}}} t[1][1][1] = t[1] return t end)()", "at [1][1][1]: cyclic table");
}

static void test_depth(void) {
  char *s;
  int top = lua_gettop(L);
  s = nested(128);
  SAME(s);
  free(s);
  s = nested(129);
  DECODE_FAILS(s, "nesting deeper than 128");
  free(s);
  s = repeat("", "{\"a\":", 129, "1");
  DECODE_FAILS(s, "nesting deeper than 128");
  free(s);
  s = repeat("", "[", 1000000, "");
  DECODE_FAILS(s, "nesting deeper than 128");
  CHECK(json_decode(L, s, 1000000, 5000, err, sizeof err) == -1 && strstr(err, "nesting deeper than 1000"),
        "depth limit should be capped at 1000: %s", err);
  free(s);
  s = nested(3);
  CHECK(json_decode(L, s, strlen(s), 2, err, sizeof err) == -1 && strcmp(err, "nesting deeper than 2") == 0,
        "custom max_depth: %s", err);
  CHECK(json_decode(L, s, strlen(s), 3, err, sizeof err) == 0, "depth 3 within max 3: %s", err);
  lua_settop(L, top);
  free(s);
  s = nested(1000);
  CHECK(json_decode(L, s, strlen(s), 1000, err, sizeof err) == 0, "depth 1000 within max 1000: %s", err);
  byte_buffer_reset(&out);
  CHECK(json_encode(L, -1, &out, 1000, err, sizeof err) == 0 && out.length == 2000, "encode depth 1000: %s", err);
  CHECK(json_encode(L, -1, &out, 999, err, sizeof err) == -1 && strstr(err, "nesting deeper than 999"),
        "encode depth 1000 over max 999: %s", err);
  lua_settop(L, top);
  free(s);
  ENCODE_IS("(function() local t = {} for i = 2, 128 do t = {t} end return t end)()",
            (s = nested(128)));
  free(s);
  ENCODE_FAILS("(function() local t = {} for i = 2, 129 do t = {t} end return t end)()",
               "nesting deeper than 128");
  ENCODE_FAILS("(function() local t = {} for i = 2, 129 do t = {a = t} end return t end)()",
               "nesting deeper than 128");
  eval("{{{}}}");
  CHECK(json_encode(L, -1, &out, 2, err, sizeof err) == -1 && strcmp(err, "at [1][1]: nesting deeper than 2") == 0,
        "encode custom max_depth: %s", err);
  lua_settop(L, top);
}

static void test_invalid(void) {
  static const char *const bad[] = {
    "", "   ", "[1,]", "{\"a\":1,}", "01", "-01", "00", "+1", "NaN", "-NaN", "Infinity",
    "-Infinity", "-", "1.", ".5", "1e", "1e+", "1.e5", "0x10", "\"abc", "[1", "[1,2",
    "{\"a\"", "{\"a\":", "{\"a\" 1}", "{1:2}", "{a:1}", "[1] x", "1 2", "tru", "nul", "nulll",
    "True", "[1 2]", "[,1]", "[1,,2]", "//c\n1", "/* */1", "'a'", "\xef\xbb\xbf" "1", "[}",
    "{]", "]", "}", ",", ":", "\"\\u", "[\"a\" \"b\"]", "{\"a\":1 \"b\":2}", "-a", "1e5.5", "[-]", "\v1", "\f1", "\xc2\xa0" "1",
  };
  size_t i;
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
    decode_fails(__LINE__, bad[i], strlen(bad[i]), "");
  decode_fails(__LINE__, "\0", 1, "invalid JSON at byte 0: expected a value");
  decode_fails(__LINE__, "1\0", 2, "unexpected data after the value");
  decode_fails(__LINE__, "[1]\0", 4, "unexpected data after the value");
  DECODE_FAILS("", "invalid JSON at byte 0: unexpected end of input");
  DECODE_FAILS("[1,]", "invalid JSON at byte 3: expected a value");
  DECODE_FAILS("[1,2,3}", "invalid JSON at byte 6: expected ',' or ']'");
  DECODE_FAILS("{\"a\":1]", "invalid JSON at byte 6: expected ',' or '}'");
  DECODE_FAILS("01", "invalid JSON at byte 0: leading zeros are not allowed");
  DECODE_FAILS("+1", "invalid JSON at byte 0: expected a value");
  DECODE_FAILS("[1] x", "invalid JSON at byte 4: unexpected data after the value");
  DECODE_FAILS("[1", "invalid JSON at byte 2: unexpected end of input");
  DECODE_FAILS("{1:2}", "expected string key");
  DECODE_FAILS("{\"a\" 1}", "expected ':'");
  DECODE_FAILS("tru", "unexpected end of input");
  DECODE_FAILS("trUe", "invalid literal");
  DECODE_FAILS("1.", "unexpected end of input");
  DECODE_FAILS("1.x", "expected digit after '.'");
  DECODE_FAILS("1ex", "expected digit in exponent");
  {
    /* the decoder must stop at len even when more text follows in memory */
    int top = lua_gettop(L);
    CHECK(json_decode(L, "[1,2]garbage", 5, 0, err, sizeof err) == 0, "prefix decode: %s", err);
    lua_settop(L, top);
    CHECK(json_decode(L, "123", 2, 0, err, sizeof err) == 0 && lua_tointeger(L, -1) == 12,
          "length-bounded number");
    lua_settop(L, top);
    CHECK(json_decode(L, "\"ab\"", 3, 0, err, sizeof err) == -1, "length-bounded string");
    CHECK(json_decode(L, NULL, 0, 0, err, sizeof err) == -1, "NULL text");
    CHECK(json_decode(L, "1", 1, 0, NULL, 0) == 0, "NULL err buffer");
    CHECK(json_decode(L, "x", 1, 0, NULL, 0) == -1, "NULL err buffer on failure");
    CHECK(json_decode(L, "[1,2,3}", 7, 0, err, 10) == -1 && strlen(err) == 9, "truncated error message");
    lua_settop(L, top);
  }
}

static void test_args(void) {
  int top = lua_gettop(L), i;
  char *s;
  ARGS_ARE("[1,null,\"x\"]", 3, "n == 3 and a[1] == 1 and a[2] == nil and a[3] == 'x'");
  ARGS_ARE("[]", 0, "n == 0");
  ARGS_ARE(" [ ] ", 0, "n == 0");
  ARGS_ARE("[null]", 1, "n == 1 and a[1] == nil");
  ARGS_ARE("[null,null]", 2, "n == 2 and a[1] == nil and a[2] == nil");
  ARGS_ARE("[[null],{\"a\":null}]", 2, "a[1][1] == null and a[2].a == null and getmetatable(a[1]) == ARRAY");
  ARGS_ARE("[25, 25.0, -0]", 3, "math.type(a[1]) == 'integer' and math.type(a[2]) == 'float' and a[3] == 0");
  ARGS_ARE("[{}, []]", 2, "getmetatable(a[1]) == OBJECT and getmetatable(a[2]) == ARRAY");
  ARGS_FAIL("{}", "request body is not a JSON array");
  ARGS_FAIL("1", "request body is not a JSON array");
  ARGS_FAIL("null", "request body is not a JSON array");
  ARGS_FAIL("\"[1]\"", "request body is not a JSON array");
  ARGS_FAIL("", "unexpected end of input");
  ARGS_FAIL("[1,]", "expected a value");
  ARGS_FAIL("[1", "unexpected end of input");
  ARGS_FAIL("[1] 2", "unexpected data after the value");
  ARGS_FAIL("[1 2]", "expected ',' or ']'");
  s = nested(128);
  ARGS_ARE(s, 1, "n == 1");
  free(s);
  s = nested(129);
  ARGS_FAIL(s, "nesting deeper than 128");
  free(s);
  s = repeat("[", "7,", 9999, "7]");
  ARGS_ARE(s, 10000, "n == 10000 and a[10000] == 7");
  free(s);
  s = repeat("[", "0,", 2000000, "0]");
  ARGS_FAIL(s, "too many arguments");
  free(s);
  /* encode_args */
  lua_pushinteger(L, 1);
  lua_pushnil(L);
  lua_pushstring(L, "x");
  lua_pushnumber(L, 2.0);
  byte_buffer_reset(&out);
  CHECK(json_encode_args(L, top + 1, top + 4, &out, 0, err, sizeof err) == 0 &&
            out.length == 16 && memcmp(out.data, "[1,null,\"x\",2.0]", 16) == 0,
        "encode_args: %s", show(out.data, out.length));
  byte_buffer_reset(&out);
  CHECK(json_encode_args(L, -3, -1, &out, 0, err, sizeof err) == 0 &&
            out.length == 14 && memcmp(out.data, "[null,\"x\",2.0]", 14) == 0,
        "encode_args relative: %s", show(out.data, out.length));
  byte_buffer_reset(&out);
  CHECK(json_encode_args(L, top + 2, top + 1, &out, 0, err, sizeof err) == 0 &&
            out.length == 2 && memcmp(out.data, "[]", 2) == 0,
        "encode_args empty range: %s", show(out.data, out.length));
  byte_buffer_reset(&out);
  CHECK(json_encode_args(L, 1, 0, &out, 0, err, sizeof err) == 0 && out.length == 2,
        "encode_args 1..0 -> []");
  CHECK(lua_gettop(L) == top + 4, "encode_args changed the stack");
  lua_pushcfunction(L, luaopen_base);
  byte_buffer_reset(&out);
  CHECK(json_encode_args(L, top + 1, top + 5, &out, 0, err, sizeof err) == -1 &&
            strcmp(err, "at [5]: cannot encode function") == 0 && out.length == 0,
        "encode_args error: %s", err);
  lua_settop(L, top);
  eval("{{}}");
  byte_buffer_reset(&out);
  CHECK(json_encode_args(L, -1, -1, &out, 2, err, sizeof err) == -1 && strstr(err, "nesting deeper than 2"),
        "encode_args counts its own array as depth 1: %s", err);
  CHECK(json_encode_args(L, -1, -1, &out, 3, err, sizeof err) == 0, "encode_args depth 3: %s", err);
  lua_settop(L, top);
  /* args survive a full round trip */
  for (i = 0; i < 1; i++) {
    static const char args[] = "[1,null,{\"a\":[null]},\"s\"]";
    int n = json_decode_args(L, args, sizeof args - 1, 0, err, sizeof err);
    byte_buffer_reset(&out);
    CHECK(n == 4 && json_encode_args(L, top + 1, top + n, &out, 0, err, sizeof err) == 0 &&
              out.length == sizeof args - 1 && memcmp(out.data, args, sizeof args - 1) == 0,
          "args round trip: %s", show(out.data, out.length));
    lua_settop(L, top);
  }
}

static void test_buffer_and_stack(void) {
  int top = lua_gettop(L);
  byte_buffer_reset(&out);
  byte_buffer_append(&out, "prefix:", 7);
  eval("{1}");
  CHECK(json_encode(L, -1, &out, 0, err, sizeof err) == 0 && out.length == 10 &&
            memcmp(out.data, "prefix:[1]", 10) == 0,
        "encode appends to the buffer");
  lua_pushinteger(L, 5);
  CHECK(json_encode(L, -2, &out, 0, err, sizeof err) == 0 && lua_gettop(L) == top + 2 &&
            lua_tointeger(L, -1) == 5,
        "relative index and stack preserved");
  lua_settop(L, top);
  CHECK(json_encode(L, top + 1, &out, 0, err, sizeof err) == 0, "an absent value encodes as null");
  lua_settop(L, top);
}

static void test_property(void) {
  static const char *const samples[] = {
    "0", "-0", "1.5", "-0.0", "1e-300", "123456789.123456789", "9223372036854775807",
    "18446744073709551616", "0.30000000000000004", "\"\"", "\"\\u0000\\ud83d\\ude00\"",
    "[]", "{}", "[[[]]]", "{\"a\":{\"b\":{}}}", "[null,true,false]",
    "{\"k\":[1,2,{\"x\":null,\"y\":[[],{}]}],\"e\":\"\\n\\t\\\"\"}",
    "[1e22,1e23,2.5e-5,-7E+3,4.35,0.1,1.7976931348623157e308,5e-324]",
    "{\"\":{\"\":[\"\"]}}", "[\"\xff\", \"\\u00ff\"]", "{\"a\":1,\"a\":[2]}",
  };
  size_t i;
  for (i = 0; i < sizeof samples / sizeof samples[0]; i++)
    property_roundtrip(__LINE__, samples[i]);
}

static void test_locale(void) {
  static const char *const names[] = { "de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "de_DE", NULL };
  char probe[16];
  int i, top = lua_gettop(L);
  for (i = 0; names[i] != NULL; i++)
    if (setlocale(LC_NUMERIC, names[i]) != NULL)
      break;
  if (names[i] == NULL) {
    printf("json_test: no comma-decimal locale available, locale tests skipped\n");
    return;
  }
  snprintf(probe, sizeof probe, "%.1f", 0.5);
  CHECK(strcmp(probe, "0,5") == 0, "locale %s should use a decimal comma (%s)", names[i], probe);
  ENCODE_IS("0.5", "0.5");
  ENCODE_IS("1/3", "0.3333333333333333");
  ENCODE_IS("25.0", "25.0");
  ENCODE_IS("-1.5e-10", "-1.5e-10");
  DECODE_IS("0.5", "v == 1/2");
  DECODE_IS("0.50000000000000000000000001", "v == 1/2");
  DECODE_IS("3.14159265358979323846264338327950288", "v == math.pi");
  DECODE_FAILS("1e400", "number out of range");
  DECODE_FAILS("1,5", "unexpected data after the value");
  property_roundtrip(__LINE__, "[0.1,2.5,1e-7,123456.789e3]");
  setlocale(LC_NUMERIC, "C");
  lua_settop(L, top);
}

/* ---- memory errors: every allocation failure point must fail cleanly and leak nothing */

/* budget: allocations still allowed; -1 = unlimited. Once it reaches 0 every
 * further allocation fails, including Lua's retry after an emergency GC. */
typedef struct { long budget; } alloc_state;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  alloc_state *st = ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (ptr == NULL || nsize > osize) {
    if (st->budget == 0)
      return NULL;
    if (st->budget > 0)
      st->budget--;
  }
  return realloc(ptr, nsize);
}

static const char oom_sample[] =
  "[1,2.5,\"plain\",\"esc\\n\\u00e9\\ud83d\\ude00 and a longer tail to make the buffer grow ..........."
  "..................................................................................................."
  "...........................................................................................\","
  "{\"a\":[null,true,{\"b\":{}}],\"k2\":0.1000000000000000055511151231257827021181583404541015625},"
  "[[[[[]]]]],123456789012345678901234567890]";

static int oom_body(lua_State *S) {
  byte_buffer *b = lua_touserdata(S, 1);
  char e[128];
  int n;
  if (json_decode(S, oom_sample, sizeof oom_sample - 1, 0, e, sizeof e) != 0)
    return luaL_error(S, "decode failed: %s", e);
  if (json_encode(S, -1, b, 0, e, sizeof e) != 0)
    return luaL_error(S, "encode failed: %s", e);
  n = json_decode_args(S, oom_sample, sizeof oom_sample - 1, 0, e, sizeof e);
  if (n < 0)
    return luaL_error(S, "decode_args failed: %s", e);
  if (json_encode_args(S, -n, -1, b, 0, e, sizeof e) != 0)
    return luaL_error(S, "encode_args failed: %s", e);
  return 0;
}

static void test_memory_errors(void) {
  alloc_state st;
  long k;
  int ok_runs = 0, mem_errors = 0, other = 0;
  for (k = 0; k < 2000; k++) {
    lua_State *S;
    byte_buffer b;
    int rc;
    st.budget = -1;
    S = lua_newstate(limited_alloc, &st);
    if (S == NULL)
      continue;
    byte_buffer_init(&b);
    st.budget = k;
    lua_pushcfunction(S, oom_body);
    lua_pushlightuserdata(S, &b);
    rc = lua_pcall(S, 1, 0, 0);
    st.budget = -1;
    if (rc == LUA_OK)
      ok_runs++;
    else if (rc == LUA_ERRMEM)
      mem_errors++;
    else {
      other++;
      fprintf(stderr, "unexpected error with budget %ld: %s\n", k, lua_tostring(S, -1));
    }
    byte_buffer_free(&b);
    lua_close(S);
    if (rc == LUA_OK && ok_runs > 3)
      break;
  }
  CHECK(mem_errors > 20 && ok_runs > 0 && other == 0,
        "memory error sweep: %d ok, %d memory errors, %d other", ok_runs, mem_errors, other);
}

int main(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  json_open(L);
  json_open(L);  /* idempotent */
  lua_pushlightuserdata(L, NULL);
  lua_setglobal(L, "null");
  luaL_getmetatable(L, JSON_ARRAY_MT);
  CHECK(lua_getfield(L, -1, "__name") == LUA_TSTRING && strcmp(lua_tostring(L, -1), JSON_ARRAY_MT) == 0,
        "array marker has __name");
  lua_pop(L, 1);
  lua_setglobal(L, "ARRAY");
  luaL_getmetatable(L, JSON_OBJECT_MT);
  lua_setglobal(L, "OBJECT");
  byte_buffer_init(&out);

  test_numbers();
  test_strings();
  test_literals_and_null();
  test_tables();
  test_unencodable();
  test_depth();
  test_invalid();
  test_args();
  test_buffer_and_stack();
  test_property();
  test_locale();
  test_memory_errors();

  CHECK(lua_gettop(L) == 0, "stack left with %d values", lua_gettop(L));
  byte_buffer_free(&out);
  lua_close(L);
  printf("json_test: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

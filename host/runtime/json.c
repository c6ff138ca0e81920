/* JSON codec for the RPC path: strict RFC 8259 decoding into Lua values and
 * encoding of Lua values into a caller-owned byte_buffer, keeping integers,
 * floats, null, [] and {} exact across a round trip (see json.h). */
#include "json.h"

#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

/* Both directions recurse on the C stack once per nesting level, so a
 * caller-supplied limit is capped to keep the stack use bounded. */
#define JSON_DEPTH_CAP 1000

/* Lua stack slots a nesting level may need: container, key, value, and the
 * few slots a luaL_Buffer or a temporary userdata takes. */
#define LEVEL_STACK 8

static int effective_depth(int max_depth) {
  if (max_depth <= 0)
    return JSON_DEFAULT_MAX_DEPTH;
  return max_depth > JSON_DEPTH_CAP ? JSON_DEPTH_CAP : max_depth;
}

/* luaL_newmetatable rather than luaL_getmetatable: if the host forgot
 * json_open the markers are created here instead of silently missing. */
static void push_markers(lua_State *L) {
  luaL_newmetatable(L, JSON_ARRAY_MT);
  luaL_newmetatable(L, JSON_OBJECT_MT);
}

void json_open(lua_State *L) {
  push_markers(L);
  lua_pop(L, 2);
}

static void set_error(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  if (err == NULL || errlen == 0)
    return;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}


/* ---------------------------------------------------------------- decoding */

typedef struct decoder {
  lua_State *L;
  const char *start, *p, *end;  /* end is one past the last byte: text is not NUL-terminated */
  int depth, max_depth;
  int array_mt, object_mt;  /* absolute stack indices of the marker metatables */
  char *err;
  size_t errlen;
} decoder;

/* 1 for bytes that are copied verbatim inside a string: everything except
 * '"', '\\' and control characters. Bytes >= 0x80 are not validated as UTF-8:
 * the payload is passed through to Lua exactly as received. */
static const unsigned char plain_char[256] = {
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  1,1,0,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,0,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
};

static int dec_fail(decoder *d, const char *at, const char *what) {
  set_error(d->err, d->errlen, "invalid JSON at byte %lu: %s",
            (unsigned long)(at - d->start), what);
  return -1;
}

static int dec_fail_eof(decoder *d) {
  return dec_fail(d, d->end, "unexpected end of input");
}

static int dec_fail_depth(decoder *d) {
  set_error(d->err, d->errlen, "nesting deeper than %d", d->max_depth);
  return -1;
}

static void skip_ws(decoder *d) {
  const char *p = d->p, *e = d->end;
  while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    p++;
  d->p = p;
}

static int is_digit(char c) {
  return c >= '0' && c <= '9';
}

static int parse_value(decoder *d);

static int parse_literal(decoder *d, const char *word, size_t n) {
  if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0) {
    if ((size_t)(d->end - d->p) < n && memcmp(d->p, word, (size_t)(d->end - d->p)) == 0)
      return dec_fail_eof(d);
    return dec_fail(d, d->p, "invalid literal");
  }
  d->p += n;
  return 0;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The four hex digits at p, or -1; the caller has checked they are in bounds. */
static long hex4(const char *p) {
  long v = 0;
  int i;
  for (i = 0; i < 4; i++) {
    int h = hex_value(p[i]);
    if (h < 0)
      return -1;
    v = (v << 4) | h;
  }
  return v;
}

static size_t utf8_encode(char *buf, unsigned long cp) {
  if (cp < 0x80) {
    buf[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    buf[0] = (char)(0xC0 | (cp >> 6));
    buf[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    buf[0] = (char)(0xE0 | (cp >> 12));
    buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    buf[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  buf[0] = (char)(0xF0 | (cp >> 18));
  buf[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  buf[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  buf[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Decodes the \u escape at p (p[0] == '\\', p[1] == 'u') into b and returns
 * the bytes consumed, or 0 after setting the error. */
static size_t add_unicode_escape(decoder *d, luaL_Buffer *b, const char *p) {
  char utf8[4];
  long cp;
  size_t used = 6;
  if (d->end - p < 6) {
    const char *q = p + 2;
    while (q < d->end && hex_value(*q) >= 0)
      q++;
    return (q == d->end ? dec_fail_eof(d) : dec_fail(d, p, "invalid \\u escape")), 0;
  }
  cp = hex4(p + 2);
  if (cp < 0)
    return dec_fail(d, p, "invalid \\u escape"), 0;
  if (cp >= 0xD800 && cp <= 0xDFFF) {
    long lo = -1;
    if (cp <= 0xDBFF && d->end - p >= 12 && p[6] == '\\' && p[7] == 'u')
      lo = hex4(p + 8);
    if (lo >= 0xDC00 && lo <= 0xDFFF) {
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      used = 12;
    } else {
      /* A lone surrogate has no UTF-8 form; what follows it is decoded on its own. */
      cp = 0xFFFD;
    }
  }
  luaL_addlstring(b, utf8, utf8_encode(utf8, (unsigned long)cp));
  return used;
}

/* Slow path for strings with escapes; p is the first backslash and the
 * bytes from run up to p are plain. */
static int parse_escaped_string(decoder *d, const char *run, const char *p) {
  const char *e = d->end;
  luaL_Buffer b;
  luaL_buffinit(d->L, &b);
  for (;;) {
    char c;
    while (p < e && plain_char[(unsigned char)*p])
      p++;
    if (p > run)
      luaL_addlstring(&b, run, (size_t)(p - run));
    if (p >= e)
      return dec_fail_eof(d);
    if (*p == '"')
      break;
    if ((unsigned char)*p < 0x20)
      return dec_fail(d, p, "control character in string");
    if (p + 1 >= e)
      return dec_fail_eof(d);
    switch (p[1]) {
      case '"': c = '"'; break;
      case '\\': c = '\\'; break;
      case '/': c = '/'; break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case 'n': c = '\n'; break;
      case 'r': c = '\r'; break;
      case 't': c = '\t'; break;
      case 'u': {
        size_t used = add_unicode_escape(d, &b, p);
        if (used == 0)
          return -1;
        run = p += used;
        continue;
      }
      default:
        return dec_fail(d, p, "invalid escape in string");
    }
    luaL_addchar(&b, c);
    run = p += 2;
  }
  luaL_pushresult(&b);
  d->p = p + 1;
  return 0;
}

static int parse_string(decoder *d) {
  const char *run = d->p + 1, *p = run, *e = d->end;
  while (p < e && plain_char[(unsigned char)*p])
    p++;
  if (p < e && *p == '"') {  /* no escapes: push straight from the input */
    lua_pushlstring(d->L, run, (size_t)(p - run));
    d->p = p + 1;
    return 0;
  }
  if (p >= e)
    return dec_fail_eof(d);
  if (*p != '\\')
    return dec_fail(d, p, "control character in string");
  return parse_escaped_string(d, run, p);
}

/* Exact powers of ten representable as doubles (10^22 is the last). */
static const double pow10_exact[] = {
  1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
  1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22
};

/* Converts the validated number text s[0..n) with strtod. strtod honours
 * LC_NUMERIC, so the '.' is swapped for the locale's decimal point (as Lua's
 * own lua_str2number does); the result is then locale independent. */
static int strtod_number(decoder *d, const char *s, size_t n, double *out) {
  char small[64], *buf = small, *endp;
  const char *dot = memchr(s, '.', n), *dp = ".";
  size_t dplen = 1, len;
  int boxed = 0;
  if (dot != NULL) {
    dp = localeconv()->decimal_point;
    dplen = strlen(dp);
    if (dplen == 0) {
      dp = ".";
      dplen = 1;
    }
  }
  len = dot != NULL ? n - 1 + dplen : n;
  if (len + 1 > sizeof small) {  /* rare very long number: GC-owned scratch so a longjmp leaks nothing */
    buf = lua_newuserdatauv(d->L, len + 1, 0);
    boxed = 1;
  }
  if (dot != NULL) {
    size_t before = (size_t)(dot - s);
    memcpy(buf, s, before);
    memcpy(buf + before, dp, dplen);
    memcpy(buf + before + dplen, dot + 1, n - before - 1);
  } else {
    memcpy(buf, s, n);
  }
  buf[len] = '\0';
  *out = strtod(buf, &endp);
  if (boxed)
    lua_pop(d->L, 1);
  if (endp != buf + len)
    return dec_fail(d, s, "invalid number");
  return 0;
}

/* Integers are accumulated digit by digit; floats take Clinger's fast path
 * (exact when mantissa <= 2^53 and |exponent| <= 22, given IEEE doubles
 * evaluated without excess precision) and otherwise strtod. */
static int parse_number(decoder *d) {
  const char *s = d->p, *p = s, *e = d->end;
  uint64_t m = 0;  /* first (up to) 19 significant digits */
  int nd = 0, truncated = 0, is_float = 0, neg = 0;
  long exp10 = 0;
  double v;
  if (*p == '-') {
    neg = 1;
    p++;
  }
  if (p >= e)
    return dec_fail_eof(d);
  if (*p == '0') {
    p++;
    if (p < e && is_digit(*p))
      return dec_fail(d, p - 1, "leading zeros are not allowed");
  } else if (is_digit(*p)) {
    for (; p < e && is_digit(*p); p++) {
      if (nd < 19) {
        m = m * 10 + (uint64_t)(*p - '0');
        nd++;
      } else {
        truncated = 1;
        exp10++;
      }
    }
  } else {
    return dec_fail(d, p, "expected digit");
  }
  if (p < e && *p == '.') {
    is_float = 1;
    p++;
    if (p >= e)
      return dec_fail_eof(d);
    if (!is_digit(*p))
      return dec_fail(d, p, "expected digit after '.'");
    for (; p < e && is_digit(*p); p++) {
      if (nd < 19) {
        m = m * 10 + (uint64_t)(*p - '0');
        if (m != 0)  /* leading zeros of 0.000x are not significant */
          nd++;
        exp10--;
      } else {
        truncated = 1;
      }
    }
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    long x = 0;
    int xneg = 0;
    is_float = 1;
    p++;
    if (p < e && (*p == '+' || *p == '-'))
      xneg = *p++ == '-';
    if (p >= e)
      return dec_fail_eof(d);
    if (!is_digit(*p))
      return dec_fail(d, p, "expected digit in exponent");
    for (; p < e && is_digit(*p); p++)
      if (x < 100000)  /* far beyond the double range either way; avoids overflow */
        x = x * 10 + (*p - '0');
    exp10 += xneg ? -x : x;
  }
  d->p = p;
  if (!is_float && !truncated) {
    if (!neg && m <= (uint64_t)INT64_MAX) {
      lua_pushinteger(d->L, (lua_Integer)m);
      return 0;
    }
    if (neg && m <= (uint64_t)INT64_MAX + 1) {
      lua_pushinteger(d->L, m == (uint64_t)INT64_MAX + 1 ? (lua_Integer)INT64_MIN
                                                          : -(lua_Integer)m);
      return 0;
    }
  }
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0 && FLT_RADIX == 2 && DBL_MANT_DIG == 53
  if (!truncated && m <= ((uint64_t)1 << 53) && exp10 >= -22 && exp10 <= 22) {
    v = (double)m;
    v = exp10 < 0 ? v / pow10_exact[-exp10] : v * pow10_exact[exp10];
    lua_pushnumber(d->L, neg ? -v : v);
    return 0;
  }
#endif
  (void)pow10_exact;
  if (strtod_number(d, s, (size_t)(p - s), &v) != 0)
    return -1;
  if (isinf(v))  /* a decoded value must be encodable again */
    return dec_fail(d, s, "number out of range");
  lua_pushnumber(d->L, v);
  return 0;
}

static int enter_container(decoder *d) {
  if (d->depth >= d->max_depth)
    return dec_fail_depth(d);
  if (!lua_checkstack(d->L, LEVEL_STACK)) {
    set_error(d->err, d->errlen, "JSON too deeply nested for the Lua stack");
    return -1;
  }
  d->depth++;
  return 0;
}

static int parse_array(decoder *d) {
  lua_State *L = d->L;
  lua_Integer i;
  if (enter_container(d) != 0)
    return -1;
  d->p++;  /* '[' */
  lua_createtable(L, 0, 0);
  lua_pushvalue(L, d->array_mt);
  lua_setmetatable(L, -2);
  skip_ws(d);
  if (d->p < d->end && *d->p == ']') {
    d->p++;
    d->depth--;
    return 0;
  }
  for (i = 1;; i++) {
    if (parse_value(d) != 0)
      return -1;
    lua_rawseti(L, -2, i);
    skip_ws(d);
    if (d->p >= d->end)
      return dec_fail_eof(d);
    if (*d->p == ',') {
      d->p++;
      continue;
    }
    if (*d->p == ']')
      break;
    return dec_fail(d, d->p, "expected ',' or ']'");
  }
  d->p++;
  d->depth--;
  return 0;
}

static int parse_object(decoder *d) {
  lua_State *L = d->L;
  if (enter_container(d) != 0)
    return -1;
  d->p++;  /* '{' */
  lua_createtable(L, 0, 0);
  lua_pushvalue(L, d->object_mt);
  lua_setmetatable(L, -2);
  skip_ws(d);
  if (d->p < d->end && *d->p == '}') {
    d->p++;
    d->depth--;
    return 0;
  }
  for (;;) {
    skip_ws(d);
    if (d->p >= d->end)
      return dec_fail_eof(d);
    if (*d->p != '"')
      return dec_fail(d, d->p, "expected string key");
    if (parse_string(d) != 0)
      return -1;
    skip_ws(d);
    if (d->p >= d->end)
      return dec_fail_eof(d);
    if (*d->p != ':')
      return dec_fail(d, d->p, "expected ':'");
    d->p++;
    if (parse_value(d) != 0)
      return -1;
    lua_rawset(L, -3);  /* a duplicate key overwrites: last wins */
    skip_ws(d);
    if (d->p >= d->end)
      return dec_fail_eof(d);
    if (*d->p == ',') {
      d->p++;
      continue;
    }
    if (*d->p == '}')
      break;
    return dec_fail(d, d->p, "expected ',' or '}'");
  }
  d->p++;
  d->depth--;
  return 0;
}

static int parse_value(decoder *d) {
  skip_ws(d);
  if (d->p >= d->end)
    return dec_fail_eof(d);
  switch (*d->p) {
    case '{': return parse_object(d);
    case '[': return parse_array(d);
    case '"': return parse_string(d);
    case 't':
      if (parse_literal(d, "true", 4) != 0) return -1;
      lua_pushboolean(d->L, 1);
      return 0;
    case 'f':
      if (parse_literal(d, "false", 5) != 0) return -1;
      lua_pushboolean(d->L, 0);
      return 0;
    case 'n':
      if (parse_literal(d, "null", 4) != 0) return -1;
      lua_pushlightuserdata(d->L, NULL);
      return 0;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
      return parse_number(d);
    default:
      return dec_fail(d, d->p, "expected a value");
  }
}

/* Sets up d and pushes the marker metatables at top+1 and top+2. */
static int dec_begin(decoder *d, lua_State *L, const char *text, size_t len,
                     int max_depth, char *err, size_t errlen) {
  if (text == NULL)  /* NULL + 0 is not valid pointer arithmetic */
    text = "";
  d->L = L;
  d->start = d->p = text;
  d->end = text + len;
  d->depth = 0;
  d->max_depth = effective_depth(max_depth);
  d->err = err;
  d->errlen = errlen;
  if (!lua_checkstack(L, 2 + LEVEL_STACK)) {
    set_error(err, errlen, "Lua stack exhausted");
    return -1;
  }
  push_markers(L);
  d->array_mt = lua_gettop(L) - 1;
  d->object_mt = lua_gettop(L);
  return 0;
}

int json_decode(lua_State *L, const char *text, size_t len, int max_depth,
                char *err, size_t errlen) {
  decoder d;
  int top = lua_gettop(L);
  if (dec_begin(&d, L, text, len, max_depth, err, errlen) != 0)
    return -1;
  if (parse_value(&d) != 0)
    goto fail;
  skip_ws(&d);
  if (d.p != d.end) {
    dec_fail(&d, d.p, "unexpected data after the value");
    goto fail;
  }
  lua_replace(L, top + 1);  /* value over the first marker, then drop the rest */
  lua_settop(L, top + 1);
  return 0;
fail:
  lua_settop(L, top);
  return -1;
}

int json_decode_args(lua_State *L, const char *text, size_t len, int max_depth,
                     char *err, size_t errlen) {
  decoder d;
  int top = lua_gettop(L), n = 0;
  if (dec_begin(&d, L, text, len, max_depth, err, errlen) != 0)
    return -1;
  skip_ws(&d);
  if (d.p >= d.end) {
    dec_fail_eof(&d);
    goto fail;
  }
  if (*d.p != '[') {
    set_error(err, errlen, "request body is not a JSON array");
    goto fail;
  }
  if (enter_container(&d) != 0)
    goto fail;
  d.p++;
  skip_ws(&d);
  if (d.p < d.end && *d.p == ']') {
    d.p++;
  } else {
    for (;;) {
      if (!lua_checkstack(L, LEVEL_STACK)) {
        set_error(err, errlen, "too many arguments (%d) for the Lua stack", n);
        goto fail;
      }
      if (parse_value(&d) != 0)
        goto fail;
      n++;
      if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL) {
        lua_pop(L, 1);  /* positional null becomes a plain nil argument */
        lua_pushnil(L);
      }
      skip_ws(&d);
      if (d.p >= d.end) {
        dec_fail_eof(&d);
        goto fail;
      }
      if (*d.p == ',') {
        d.p++;
        continue;
      }
      if (*d.p == ']') {
        d.p++;
        break;
      }
      dec_fail(&d, d.p, "expected ',' or ']'");
      goto fail;
    }
  }
  skip_ws(&d);
  if (d.p != d.end) {
    dec_fail(&d, d.p, "unexpected data after the value");
    goto fail;
  }
  lua_rotate(L, top + 1, -2);  /* move the two markers above the arguments and drop them */
  lua_pop(L, 2);
  return n;
fail:
  lua_settop(L, top);
  return -1;
}


/* ---------------------------------------------------------------- encoding */

/* One entry per enclosing container of the value being encoded: the table
 * (for cycle detection) and the element being written (for error paths). */
typedef struct enc_level {
  const void *table;    /* NULL for the implicit array of json_encode_args */
  lua_Integer index;    /* array element, when key == 0 */
  int key;              /* stack index of the object key, or 0 */
} enc_level;

typedef struct encoder {
  lua_State *L;
  byte_buffer *out;
  int max_depth;
  int array_mt, object_mt;
  int depth;            /* entries of level[] in use */
  char *err;
  size_t errlen;
  enc_level level[JSON_DEPTH_CAP];
} encoder;

/* Second character of the escape for each byte, 0 when the byte goes out raw. */
static const char escape_char[256] = {
  'u','u','u','u','u','u','u','u','b','t','n','u','f','r','u','u',
  'u','u','u','u','u','u','u','u','u','u','u','u','u','u','u','u',
  ['"'] = '"', ['\\'] = '\\',
};

/* printf-style append at err[*pos..]; truncates, keeps err NUL-terminated. */
static void err_append(encoder *e, size_t *pos, const char *fmt, ...) {
  va_list ap;
  int n;
  if (*pos >= e->errlen)
    return;
  va_start(ap, fmt);
  n = vsnprintf(e->err + *pos, e->errlen - *pos, fmt, ap);
  va_end(ap);
  if (n > 0)
    *pos += (size_t)n;
}

static int is_identifier(const char *s, size_t len) {
  size_t i;
  if (len == 0 || is_digit(s[0]))
    return 0;
  for (i = 0; i < len; i++) {
    char c = s[i];
    if (!(c == '_' || is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
      return 0;
  }
  return 1;
}

/* Path elements shown in an error message: the first and last half of them. */
#define PATH_SHOWN 8

/* Formats "at <path>: <message>"; the path comes from level[], so it costs
 * nothing unless an error actually happens. */
static int enc_fail(encoder *e, const char *fmt, ...) {
  size_t pos = 0;
  int i;
  va_list ap;
  if (e->err == NULL || e->errlen == 0)
    return -1;
  e->err[0] = '\0';
  if (e->depth > 0) {
    err_append(e, &pos, "at ");
    for (i = 0; i < e->depth; i++) {
      const enc_level *lv = &e->level[i];
      if (e->depth > PATH_SHOWN && i == PATH_SHOWN / 2) {  /* keep the message one readable line */
        err_append(e, &pos, "...");
        i = e->depth - PATH_SHOWN / 2;
        lv = &e->level[i];
      }
      if (lv->key == 0) {
        err_append(e, &pos, "[%lld]", (long long)lv->index);
      } else if (lua_type(e->L, lv->key) == LUA_TSTRING) {
        size_t len, j, shown;
        const char *k = lua_tolstring(e->L, lv->key, &len);
        char safe[41];
        /* Keys are arbitrary bytes: keep the message one printable line. */
        shown = len > 40 ? 40 : len;
        for (j = 0; j < shown; j++)
          safe[j] = (unsigned char)k[j] < 0x20 || k[j] == 0x7f ? '?' : k[j];
        safe[shown] = '\0';
        if (is_identifier(k, len))
          err_append(e, &pos, ".%s", safe);
        else
          err_append(e, &pos, "[\"%s%s\"]", safe, len > 40 ? "..." : "");
      } else {
        err_append(e, &pos, "[%lld]", (long long)lua_tointeger(e->L, lv->key));
      }
    }
    err_append(e, &pos, ": ");
  }
  if (pos < e->errlen) {
    va_start(ap, fmt);
    vsnprintf(e->err + pos, e->errlen - pos, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static int put(encoder *e, const char *s, size_t n) {
  byte_buffer *b = e->out;
  if (b->capacity - b->length < n && byte_buffer_reserve(b, n) != 0)
    return enc_fail(e, "out of memory");
  memcpy(b->data + b->length, s, n);
  b->length += n;
  return 0;
}

#define PUT_LITERAL(e, s) put((e), (s), sizeof(s) - 1)

static int put_char(encoder *e, char c) {
  byte_buffer *b = e->out;
  if (b->capacity == b->length && byte_buffer_reserve(b, 1) != 0)
    return enc_fail(e, "out of memory");
  b->data[b->length++] = c;
  return 0;
}

static int put_string(encoder *e, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  const char *p = s, *run = s, *end = s + len;
  byte_buffer *b = e->out;
  /* Room for the common case (no escapes) in one go; escapes reserve more. */
  if (len > SIZE_MAX - 2 || byte_buffer_reserve(b, len + 2) != 0)
    return enc_fail(e, "out of memory");
  b->data[b->length++] = '"';
  for (; p < end; p++) {
    char esc = escape_char[(unsigned char)*p];
    if (esc == 0)
      continue;
    if (p > run && put(e, run, (size_t)(p - run)) != 0)
      return -1;
    if (esc == 'u') {
      char u[6] = { '\\', 'u', '0', '0', hex[(unsigned char)*p >> 4], hex[*p & 0xF] };
      if (put(e, u, 6) != 0)
        return -1;
    } else {
      char two[2] = { '\\', esc };
      if (put(e, two, 2) != 0)
        return -1;
    }
    run = p + 1;
  }
  if (p > run && put(e, run, (size_t)(p - run)) != 0)
    return -1;
  return put_char(e, '"');
}

static int put_integer(encoder *e, lua_Integer v) {
  char buf[24], *p = buf + sizeof buf;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;  /* unsigned: -LUA_MININTEGER overflows */
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  if (v < 0)
    *--p = '-';
  return put(e, p, (size_t)(buf + sizeof buf - p));
}

/* %.17g always reads back exactly; the shorter forms are tried first so
 * that 0.1 goes out as 0.1. The read-back uses the locale's own format, and
 * only afterwards is its decimal separator turned into '.'. */
static int put_float(encoder *e, double v) {
  char buf[40], out[44];
  size_t i, n = 0;
  int prec, has_mark = 0, has_point = 0;
  if (isnan(v))
    return enc_fail(e, "cannot encode NaN");
  if (isinf(v))
    return enc_fail(e, "cannot encode infinity");
  /* Integral values below 1e15 print under %.15g as their plain digits, so
   * the integer formatter gives the same text without snprintf/strtod. */
  if (v > -1e15 && v < 1e15 && v == (double)(lua_Integer)v) {
    if (v == 0)
      return signbit(v) ? PUT_LITERAL(e, "-0.0") : PUT_LITERAL(e, "0.0");
    if (put_integer(e, (lua_Integer)v) != 0)
      return -1;
    return PUT_LITERAL(e, ".0");
  }
  for (prec = 15; prec < 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v)
      break;
  }
  if (prec == 17)
    snprintf(buf, sizeof buf, "%.17g", v);
  for (i = 0; buf[i] != '\0'; i++) {
    char c = buf[i];
    if (is_digit(c) || c == '-' || c == '+') {
      out[n++] = c;
    } else if (c == 'e') {
      out[n++] = c;
      has_mark = 1;
    } else if (!has_point) {  /* the decimal separator, whatever the locale spells it as */
      out[n++] = '.';
      has_point = has_mark = 1;
    }
  }
  if (!has_mark) {  /* keep the float subtype visible: 25.0, not 25 */
    out[n++] = '.';
    out[n++] = '0';
  }
  return put(e, out, n);
}

static int encode_value(encoder *e, int idx);

static const char *key_type_name(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TNUMBER)
    return "float";  /* integer-valued float keys are normalised to integers by Lua */
  return luaL_typename(L, idx);
}

enum { KIND_PLAIN, KIND_ARRAY, KIND_OBJECT };

/* Scans the keys of an array-marked or unmarked table. Returns 1 for an
 * object (string keys only), 0 for an array with *max_index elements, or -1 on error. */
static int classify_table(encoder *e, int t, int kind, lua_Integer *max_index) {
  lua_State *L = e->L;
  lua_Integer count = 0, max = 0;
  int has_string = 0;
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    int kt = lua_type(L, -2);
    lua_pop(L, 1);
    if (kt == LUA_TNUMBER && lua_isinteger(L, -1)) {
      lua_Integer k = lua_tointeger(L, -1);
      if (k <= 0) {
        lua_pop(L, 1);
        return enc_fail(e, "cannot encode table key %lld (array indices start at 1)", (long long)k);
      }
      if (has_string && kind == KIND_PLAIN) {
        lua_pop(L, 1);
        return enc_fail(e, "table mixes array and string keys");
      }
      if (k > max)
        max = k;
      count++;
    } else if (kt == LUA_TSTRING && kind == KIND_PLAIN) {
      if (count > 0) {
        lua_pop(L, 1);
        return enc_fail(e, "table mixes array and string keys");
      }
      has_string = 1;
    } else {
      const char *tn = key_type_name(L, -1);
      lua_pop(L, 1);
      if (kind == KIND_ARRAY)
        return enc_fail(e, "array table has a key of type %s", tn);
      return enc_fail(e, "cannot encode table key of type %s", tn);
    }
  }
  if (has_string)
    return 1;
  if (max > 10 && max > 2 * count)
    return enc_fail(e, "excessively sparse array (max index %lld, %lld elements)",
                    (long long)max, (long long)count);
  *max_index = max;
  return 0;
}

static int encode_array(encoder *e, int t, lua_Integer n) {
  lua_State *L = e->L;
  enc_level *lv = &e->level[e->depth];
  lua_Integer i;
  if (put_char(e, '[') != 0)
    return -1;
  lv->key = 0;
  e->depth++;
  for (i = 1; i <= n; i++) {
    if (i > 1 && put_char(e, ',') != 0)
      return -1;
    lv->index = i;
    lua_rawgeti(L, t, i);
    if (encode_value(e, lua_gettop(L)) != 0)
      return -1;
    lua_pop(L, 1);
  }
  e->depth--;
  return put_char(e, ']');
}

static int encode_object(encoder *e, int t) {
  lua_State *L = e->L;
  enc_level *lv = &e->level[e->depth];
  int first = 1;
  if (put_char(e, '{') != 0)
    return -1;
  lv->index = 0;
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    int kt = lua_type(L, -2);
    if (!first && put_char(e, ',') != 0)
      return -1;
    first = 0;
    if (kt == LUA_TSTRING) {
      size_t len;
      const char *k = lua_tolstring(L, -2, &len);
      if (put_string(e, k, len) != 0)
        return -1;
    } else if (kt == LUA_TNUMBER && lua_isinteger(L, -2)) {
      if (put_char(e, '"') != 0 || put_integer(e, lua_tointeger(L, -2)) != 0 ||
          put_char(e, '"') != 0)
        return -1;
    } else {
      return enc_fail(e, "cannot encode table key of type %s", key_type_name(L, -2));
    }
    if (put_char(e, ':') != 0)
      return -1;
    lv->key = lua_gettop(L) - 1;
    e->depth++;
    if (encode_value(e, lua_gettop(L)) != 0)
      return -1;
    e->depth--;
    lua_pop(L, 1);
  }
  return put_char(e, '}');
}

static int encode_table(encoder *e, int t) {
  lua_State *L = e->L;
  const void *self = lua_topointer(L, t);
  int i, kind = KIND_PLAIN, shape;
  lua_Integer n = 0;
  /* Only the tables on the current path can form a cycle; a table shared
   * between siblings is fine and is simply written twice. */
  for (i = 0; i < e->depth; i++)
    if (e->level[i].table == self)
      return enc_fail(e, "cyclic table");
  if (e->depth >= e->max_depth)
    return enc_fail(e, "nesting deeper than %d", e->max_depth);
  if (!lua_checkstack(L, LEVEL_STACK))
    return enc_fail(e, "Lua stack exhausted");
  if (lua_getmetatable(L, t)) {
    if (lua_rawequal(L, -1, e->array_mt))
      kind = KIND_ARRAY;
    else if (lua_rawequal(L, -1, e->object_mt))
      kind = KIND_OBJECT;
    lua_pop(L, 1);
  }
  e->level[e->depth].table = self;
  if (kind == KIND_OBJECT)
    return encode_object(e, t);
  shape = classify_table(e, t, kind, &n);
  if (shape < 0)
    return -1;
  return shape == 1 ? encode_object(e, t) : encode_array(e, t, n);
}

static int encode_value(encoder *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNONE:
    case LUA_TNIL:
      return PUT_LITERAL(e, "null");
    case LUA_TBOOLEAN:
      return lua_toboolean(L, idx) ? PUT_LITERAL(e, "true") : PUT_LITERAL(e, "false");
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        return put_integer(e, lua_tointeger(L, idx));
      return put_float(e, (double)lua_tonumber(L, idx));
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      return put_string(e, s, len);
    }
    case LUA_TTABLE:
      return encode_table(e, idx);
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL)
        return PUT_LITERAL(e, "null");
      return enc_fail(e, "cannot encode light userdata");
    default:  /* function, full userdata, thread */
      return enc_fail(e, "cannot encode %s", luaL_typename(L, idx));
  }
}

static int enc_begin(encoder *e, lua_State *L, byte_buffer *out, int max_depth,
                     char *err, size_t errlen) {
  e->L = L;
  e->out = out;
  e->max_depth = effective_depth(max_depth);
  e->depth = 0;
  e->err = err;
  e->errlen = errlen;
  if (!lua_checkstack(L, 2 + LEVEL_STACK)) {
    set_error(err, errlen, "Lua stack exhausted");
    return -1;
  }
  push_markers(L);
  e->array_mt = lua_gettop(L) - 1;
  e->object_mt = lua_gettop(L);
  return 0;
}

int json_encode(lua_State *L, int idx, byte_buffer *out, int max_depth,
                char *err, size_t errlen) {
  encoder e;
  int top = lua_gettop(L), rc;
  size_t start = out->length;
  idx = lua_absindex(L, idx);
  if (enc_begin(&e, L, out, max_depth, err, errlen) != 0)
    return -1;
  rc = encode_value(&e, idx);
  lua_settop(L, top);
  if (rc != 0)
    out->length = start;
  return rc;
}

int json_encode_args(lua_State *L, int first, int last, byte_buffer *out,
                     int max_depth, char *err, size_t errlen) {
  encoder e;
  int top = lua_gettop(L), rc = 0, i;
  size_t start = out->length;
  /* Only relative indices are converted: first = 1, last = 0 must stay an empty range. */
  if (first < 0 && first > LUA_REGISTRYINDEX)
    first = lua_absindex(L, first);
  if (last < 0 && last > LUA_REGISTRYINDEX)
    last = lua_absindex(L, last);
  if (enc_begin(&e, L, out, max_depth, err, errlen) != 0)
    return -1;
  /* The argument list is an array of its own: it takes level 0. */
  e.level[0].table = NULL;
  e.level[0].key = 0;
  e.depth = 1;
  if (put_char(&e, '[') != 0)
    rc = -1;
  for (i = first; rc == 0 && i <= last; i++) {
    e.level[0].index = i - first + 1;
    if ((i > first && put_char(&e, ',') != 0) || encode_value(&e, i) != 0)
      rc = -1;
  }
  if (rc == 0 && put_char(&e, ']') != 0)
    rc = -1;
  lua_settop(L, top);
  if (rc != 0)
    out->length = start;
  return rc;
}

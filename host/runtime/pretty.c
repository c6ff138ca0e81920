/* The pretty-printer (pretty.h). Each value is rendered bottom-up into a Lua
 * string: a container first renders its children, then decides from their
 * lengths whether it fits on one line. Strings are built in Lua (luaL_Buffer,
 * tables of parts), so an error halfway leaks nothing. */
#include "pretty.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "error_object.h"
#include "errors.h"
#include "json.h"

#define DEPTH_CAP 1000 /* the printer recurses on the C stack */

struct printer {
  lua_State *L;
  struct pretty_options options;
  int array_mt, object_mt; /* absolute stack indices of the marker metatables */
  int visiting;            /* table -> true for the tables being rendered (cycles) */
};

/* What render() pushed: a short form that may share a line with others, or a
 * container (which may span lines). */
enum shape { SCALAR, CONTAINER };

void pretty_default_options(struct pretty_options *options) {
  options->width = PRETTY_DEFAULT_WIDTH;
  options->indent = PRETTY_DEFAULT_INDENT;
  options->max_depth = PRETTY_DEFAULT_MAX_DEPTH;
}

/* ---- scalars ---- */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_length(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t length;
  unsigned long code, min;
  if (c >= 0xc2 && c <= 0xdf) length = 2, code = c & 0x1f, min = 0x80;
  else if (c >= 0xe0 && c <= 0xef) length = 3, code = c & 0x0f, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4) length = 4, code = c & 0x07, min = 0x10000;
  else return 0;
  if (length > n) return 0;
  for (size_t i = 1; i < length; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    code = (code << 6) | (s[i] & 0x3f);
  }
  if (code < min || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return 0;
  return length;
}

/* A string between quotes with JSON's escapes; bytes that are not UTF-8 show
 * as \xNN so that the terminal never receives raw garbage. */
static void push_quoted(lua_State *L, const char *text, size_t length) {
  const unsigned char *s = (const unsigned char *)text;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '"');
  for (size_t i = 0; i < length;) {
    unsigned char c = s[i];
    char escape[8];
    if (c == '"' || c == '\\') {
      luaL_addchar(&b, '\\');
      luaL_addchar(&b, (char)c);
      i++;
    } else if (c < 0x20 || c == 0x7f) {
      const char *name = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r"
                       : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
      if (!name) {
        snprintf(escape, sizeof escape, "\\u%04x", c);
        name = escape;
      }
      luaL_addstring(&b, name);
      i++;
    } else if (c < 0x80) {
      luaL_addchar(&b, (char)c);
      i++;
    } else {
      size_t n = utf8_length(s + i, length - i);
      if (n) {
        luaL_addlstring(&b, text + i, n);
        i += n;
      } else {
        snprintf(escape, sizeof escape, "\\x%02x", c);
        luaL_addstring(&b, escape);
        i++;
      }
    }
  }
  luaL_addchar(&b, '"');
  luaL_pushresult(&b);
}

/* The shortest of %.15g, %.16g, %.17g that reads back exactly, with ".0"
 * when it would look like an integer (as the codec writes floats). */
static void push_float(lua_State *L, lua_Number value) {
  if (isnan(value)) {
    lua_pushliteral(L, "nan");
    return;
  }
  if (isinf(value)) {
    lua_pushstring(L, value > 0 ? "inf" : "-inf");
    return;
  }
  char text[48];
  for (int digits = 15; digits <= 17; digits++) {
    snprintf(text, sizeof text, "%.*g", digits, (double)value);
    for (char *c = text; *c; c++)
      if (*c == ',') *c = '.'; /* a decimal comma from the locale */
    if (strtod(text, NULL) == (double)value) break;
  }
  if (strspn(text, "-0123456789") == strlen(text)) strcat(text, ".0");
  lua_pushstring(L, text);
}

/* <what tostring says>, for values JSON cannot carry. Runs __tostring. */
static void push_opaque(lua_State *L, int idx) {
  luaL_tolstring(L, idx, NULL);
  lua_pushfstring(L, "<%s>", lua_tostring(L, -1));
  lua_remove(L, -2);
}

/* ---- tables ---- */

struct key {
  int kind; /* 0 number, 1 string, 2 boolean, 3 anything else */
  int is_integer;
  lua_Integer integer;
  double number;
  const char *text; /* strings: kept alive by the keys table */
  size_t length;
  const void *pointer;
  int position; /* index in the keys table */
};

static int compare_keys(const void *left, const void *right) {
  const struct key *a = left, *b = right;
  if (a->kind != b->kind) return a->kind < b->kind ? -1 : 1;
  switch (a->kind) {
  case 0:
    if (a->is_integer && b->is_integer)
      return a->integer < b->integer ? -1 : a->integer > b->integer;
    return a->number < b->number ? -1 : a->number > b->number;
  case 1: {
    size_t n = a->length < b->length ? a->length : b->length;
    int order = memcmp(a->text, b->text, n);
    if (order) return order;
    return a->length < b->length ? -1 : a->length > b->length;
  }
  case 2:
    return a->integer - b->integer;
  default:
    return a->pointer < b->pointer ? -1 : a->pointer > b->pointer;
  }
}

static enum shape render(struct printer *p, int idx, int level, int column);

/* Pushes how a key reads in an object: "name", or [1], [true], [<table: 0x...>]. */
static void push_key(struct printer *p, int key) {
  lua_State *L = p->L;
  if (lua_type(L, key) == LUA_TSTRING) {
    size_t length;
    const char *text = lua_tolstring(L, key, &length);
    push_quoted(L, text, length);
    return;
  }
  if (lua_type(L, key) == LUA_TNUMBER || lua_type(L, key) == LUA_TBOOLEAN)
    render(p, key, 0, 0);
  else
    lua_pushfstring(L, "<%s: %p>", luaL_typename(L, key), lua_topointer(L, key));
  lua_pushfstring(L, "[%s]", lua_tostring(L, -1));
  lua_remove(L, -2);
}

static void add_spaces(luaL_Buffer *b, int count) {
  for (int i = 0; i < count; i++) luaL_addchar(b, ' ');
}

/* Adds child i of parts: "key: value" for objects, the value for arrays. */
static void add_part(lua_State *L, luaL_Buffer *b, int parts, int i, int is_object) {
  if (is_object) {
    lua_rawgeti(L, parts, 2 * i - 1);
    luaL_addvalue(b);
    luaL_addstring(b, ": ");
    lua_rawgeti(L, parts, 2 * i);
  } else {
    lua_rawgeti(L, parts, i);
  }
  luaL_addvalue(b);
}

/* Joins the rendered children in parts (keys at 2i-1 for objects, children at
 * 2i; arrays: children at i) into one string. */
static void join(struct printer *p, int parts, int count, int is_object, int all_scalars,
                 int level, int column) {
  lua_State *L = p->L;
  const char *open = is_object ? "{" : "[", *close = is_object ? "}" : "]";
  size_t total = 2 + (size_t)(count - 1) * 2;
  int one_line = 1;
  for (int i = 1; i <= count * (is_object ? 2 : 1); i++) {
    size_t length;
    lua_rawgeti(L, parts, i);
    const char *text = lua_tolstring(L, -1, &length);
    if (memchr(text, '\n', length)) one_line = 0;
    total += length + (is_object && i % 2 == 1 ? 2 : 0);
    lua_pop(L, 1);
  }
  int inner = (level + 1) * p->options.indent;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, open);
  if (one_line && (size_t)column + total <= (size_t)p->options.width) {
    for (int i = 1; i <= count; i++) {
      if (i > 1) luaL_addstring(&b, ", ");
      add_part(L, &b, parts, i, is_object);
    }
  } else if (!is_object && all_scalars) {
    /* a long list of short values: filled line by line like text */
    int at = p->options.width; /* forces a new line first */
    for (int i = 1; i <= count; i++) {
      lua_rawgeti(L, parts, i);
      int length = (int)lua_rawlen(L, -1);
      if (i > 1) {
        luaL_addchar(&b, ',');
        at++;
      }
      /* the line with a space, the item and the comma that may follow it */
      if (i > 1 && at + 1 + length + (i < count) <= p->options.width) {
        luaL_addchar(&b, ' ');
        at += 1;
      } else {
        luaL_addchar(&b, '\n');
        add_spaces(&b, inner);
        at = inner;
      }
      at += length;
      luaL_addvalue(&b);
    }
    luaL_addchar(&b, '\n');
    add_spaces(&b, level * p->options.indent);
  } else {
    for (int i = 1; i <= count; i++) {
      luaL_addstring(&b, i > 1 ? ",\n" : "\n");
      add_spaces(&b, inner);
      add_part(L, &b, parts, i, is_object);
    }
    luaL_addchar(&b, '\n');
    add_spaces(&b, level * p->options.indent);
  }
  luaL_addstring(&b, close);
  luaL_pushresult(&b);
}

static enum shape render_table(struct printer *p, int t, int level, int column) {
  lua_State *L = p->L;
  luaL_checkstack(L, 12, "value nested too deep to print");
  int marker = 0; /* 1 array, 2 object */
  if (lua_getmetatable(L, t)) {
    if (lua_rawequal(L, -1, p->array_mt)) marker = 1;
    else if (lua_rawequal(L, -1, p->object_mt)) marker = 2;
    lua_pop(L, 1);
    if (!marker && luaL_getmetafield(L, t, "__tostring") != LUA_TNIL) {
      lua_pop(L, 1);
      push_opaque(L, t);
      return SCALAR;
    }
  }
  lua_pushvalue(L, t);
  if (lua_rawget(L, p->visiting) != LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushliteral(L, "<cycle>");
    return SCALAR;
  }
  lua_pop(L, 1);

  /* the shape: how many keys, whether they are 1..n */
  lua_Integer count = 0, positive = 0, max = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    count++;
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
      positive++;
      if (lua_tointeger(L, -1) > max) max = lua_tointeger(L, -1);
    }
  }
  if (count == 0) {
    lua_pushstring(L, marker == 2 ? "{}" : "[]");
    return SCALAR;
  }
  int is_array = marker != 2 && positive == count && (max <= 10 || max / 2 <= count);
  if (level >= p->options.max_depth) {
    lua_pushstring(L, is_array ? "[...]" : "{...}");
    return SCALAR;
  }
  if (count > INT_MAX / 4 || max > INT_MAX / 4) luaL_error(L, "table too large to print");

  lua_pushvalue(L, t);
  lua_pushboolean(L, 1);
  lua_rawset(L, p->visiting);
  lua_createtable(L, (int)(is_array ? max : 2 * count), 0);
  int parts = lua_gettop(L);
  int all_scalars = 1, items;
  int inner = (level + 1) * p->options.indent;
  if (is_array) {
    items = (int)max;
    for (int i = 1; i <= items; i++) {
      lua_rawgeti(L, t, i);
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "null");
      } else {
        if (render(p, lua_gettop(L), level + 1, inner) != SCALAR) all_scalars = 0;
        lua_remove(L, -2);
      }
      lua_rawseti(L, parts, i);
    }
  } else {
    items = (int)count;
    lua_createtable(L, items, 0);
    int keys = lua_gettop(L);
    struct key *sorted = lua_newuserdatauv(L, sizeof *sorted * (size_t)items, 0);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
      lua_pop(L, 1);
      if (n == items) { /* cannot happen: nothing ran since the count */
        lua_pop(L, 1);
        break;
      }
      struct key *k = &sorted[n];
      memset(k, 0, sizeof *k);
      k->position = ++n;
      lua_pushvalue(L, -1);
      lua_rawseti(L, keys, n);
      switch (lua_type(L, -1)) {
      case LUA_TNUMBER:
        k->kind = 0;
        k->is_integer = lua_isinteger(L, -1);
        k->integer = lua_tointeger(L, -1);
        k->number = (double)lua_tonumber(L, -1);
        break;
      case LUA_TSTRING:
        k->kind = 1;
        k->text = lua_tolstring(L, -1, &k->length);
        break;
      case LUA_TBOOLEAN:
        k->kind = 2;
        k->integer = lua_toboolean(L, -1);
        break;
      default:
        k->kind = 3;
        k->pointer = lua_topointer(L, -1);
      }
    }
    qsort(sorted, (size_t)n, sizeof *sorted, compare_keys);
    items = n;
    for (int i = 0; i < n; i++) {
      lua_rawgeti(L, keys, sorted[i].position);
      int key = lua_gettop(L);
      push_key(p, key);
      size_t key_length = lua_rawlen(L, -1);
      lua_rawseti(L, parts, 2 * i + 1);
      lua_rawget(L, t); /* pops the key */
      if (render(p, lua_gettop(L), level + 1, inner + (int)key_length + 2) != SCALAR)
        all_scalars = 0;
      lua_remove(L, -2);
      lua_rawseti(L, parts, 2 * i + 2);
    }
    lua_pop(L, 2); /* keys, sorted */
  }
  lua_pushvalue(L, t);
  lua_pushnil(L);
  lua_rawset(L, p->visiting);
  join(p, parts, items, !is_array, all_scalars, level, column);
  lua_remove(L, parts);
  return CONTAINER;
}

static enum shape render(struct printer *p, int idx, int level, int column) {
  lua_State *L = p->L;
  luaL_checkstack(L, 4, "value nested too deep to print");
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    lua_pushliteral(L, "nil");
    return SCALAR;
  case LUA_TBOOLEAN:
    lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
    return SCALAR;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx))
      lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
    else
      push_float(L, lua_tonumber(L, idx));
    return SCALAR;
  case LUA_TSTRING: {
    size_t length;
    const char *text = lua_tolstring(L, idx, &length);
    push_quoted(L, text, length);
    return SCALAR;
  }
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) {
      lua_pushliteral(L, "null");
      return SCALAR;
    }
    push_opaque(L, idx);
    return SCALAR;
  case LUA_TTABLE:
    return render_table(p, idx, level, column);
  default:
    push_opaque(L, idx);
    return SCALAR;
  }
}

void pretty_push(lua_State *L, int idx, const struct pretty_options *options) {
  idx = lua_absindex(L, idx);
  struct printer p;
  p.L = L;
  p.options = *options;
  if (p.options.width < 1) p.options.width = PRETTY_DEFAULT_WIDTH;
  if (p.options.indent < 0) p.options.indent = 0;
  if (p.options.max_depth < 1) p.options.max_depth = PRETTY_DEFAULT_MAX_DEPTH;
  if (p.options.max_depth > DEPTH_CAP) p.options.max_depth = DEPTH_CAP;
  luaL_checkstack(L, 8, NULL);
  luaL_newmetatable(L, JSON_ARRAY_MT); /* as json.c does: created if missing */
  p.array_mt = lua_gettop(L);
  luaL_newmetatable(L, JSON_OBJECT_MT);
  p.object_mt = lua_gettop(L);
  lua_newtable(L);
  p.visiting = lua_gettop(L);
  render(&p, idx, 0, 0);
  lua_replace(L, p.array_mt);
  lua_settop(L, p.array_mt);
}

static const char *const option_names[] = {"width", "indent", "max_depth", NULL};

static int integer_option(lua_State *L, int options, const char *name, int fallback, int low,
                          int high) {
  int type = lua_getfield(L, options, name);
  int value = fallback;
  if (type != LUA_TNIL) {
    int is_integer = 0;
    lua_Integer n = lua_tointegerx(L, -1, &is_integer);
    if (!is_integer || n < low || n > high)
      error_object_raisef(L, ERR_BAD_ARGUMENT, "pretty: option '%s' must be an integer from %d to %d",
                          name, low, high);
    value = (int)n;
  }
  lua_pop(L, 1);
  return value;
}

int pretty_lua(lua_State *L) {
  luaL_checkany(L, 1);
  struct pretty_options options;
  pretty_default_options(&options);
  if (!lua_isnoneornil(L, 2)) {
    if (lua_type(L, 2) != LUA_TTABLE)
      error_object_raisef(L, ERR_BAD_ARGUMENT, "pretty expects a table of options, got %s",
                          luaL_typename(L, 2));
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      lua_pop(L, 1);
      int known = 0;
      if (lua_type(L, -1) == LUA_TSTRING)
        for (int i = 0; option_names[i] && !known; i++)
          known = strcmp(option_names[i], lua_tostring(L, -1)) == 0;
      if (!known)
        error_object_raisef(L, ERR_BAD_ARGUMENT, "unknown option '%s' for pretty",
                            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                           : luaL_typename(L, -1));
    }
    options.width = integer_option(L, 2, "width", options.width, 1, 1000000);
    options.indent = integer_option(L, 2, "indent", options.indent, 0, 16);
    options.max_depth = integer_option(L, 2, "max_depth", options.max_depth, 1, DEPTH_CAP);
  }
  pretty_push(L, 1, &options);
  return 1;
}

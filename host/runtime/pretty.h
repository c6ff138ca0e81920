/* A readable, JSON-like rendering of any Lua value, for people (the shell,
 * the REPL), not for the wire: object keys sorted, strings quoted, null for
 * delegate.null, containers on one line when they fit in the width and
 * indented otherwise, <cycle> for a table inside itself, [...]/{...} past the
 * depth limit, and <...> around what JSON cannot carry (functions, userdata,
 * values with their own __tostring).
 *
 * Arrays and objects are told apart by the codec's marker metatables
 * (json.h), else by shape as the encoder does: positive integer keys 1..n
 * (holes shown as null) make an array, anything else an object; an empty
 * table is [] unless marked as an object. Object keys that are not strings
 * show as [1], [true]. Table contents are read raw: the markers' own
 * __tostring (which may be this printer) never runs recursively. */
#ifndef AD_PRETTY_H
#define AD_PRETTY_H

#include <lua.h>

#define PRETTY_DEFAULT_WIDTH 80
#define PRETTY_DEFAULT_INDENT 2
#define PRETTY_DEFAULT_MAX_DEPTH 32

struct pretty_options {
  int width;     /* a container stays on one line when it ends before this column */
  int indent;    /* spaces per nesting level */
  int max_depth; /* containers nested deeper show as [...] or {...} */
};

void pretty_default_options(struct pretty_options *options);

/* Pushes the rendering of the value at idx, as a string. May raise: memory
 * errors, or an error from a value's own __tostring. */
void pretty_push(lua_State *L, int idx, const struct pretty_options *options);

/* delegate.pretty(value [, {width =, indent =, max_depth =}]) -> string.
 * Also usable as the __tostring of the marker metatables. Unknown or
 * out-of-range options raise BAD_ARGUMENT. */
int pretty_lua(lua_State *L);

#endif

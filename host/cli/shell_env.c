/* The environment the shell's code runs in: reads fall back to _G; a name no
 * global has is a worker call only where the code calls it (name(...)), and
 * an error anywhere else, so that greet(Ada) fails instead of sending a
 * stub. Also the shell's Tab completion and help(). */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "shell.h"

#define ENV_KEY "amqp_delegate.shell.env"         /* registry: the environment */
#define TOOLS_KEY "amqp_delegate.shell.tools"     /* registry: note_calls, complete */
#define MATCHES_KEY "amqp_delegate.shell.matches" /* registry: the last completions */

static const char help_text[] =
    "amqp-delegate shell: Lua 5.4 with a started delegator.\n"
    "  adder(10, 15)                  calls worker adder: a name no global has, written as a\n"
    "                                 call, is delegator:invoke(\"adder\", 10, 15)\n"
    "  delegator:invoke(\"adder\", 1, 2) the same by name; delegator:send(...) returns a handle\n"
    "                                 at once (:wait() it; delegate.wait_all{...} for many)\n"
    "  delegate                       require \"amqp_delegate\": delegate.pretty, delegate.null,\n"
    "                                 delegate.array, delegate.sleep...\n"
    "  x = adder(1, 2)                globals you set are found first\n"
    "A name that is neither a global nor called is an error: greet(Ada) needs greet(\"Ada\").\n"
    "Expressions print their value; errors print as one line, CODE: message.\n"
    "Tab completes globals, fields, methods and the workers called so far; Up and Down\n"
    "recall earlier lines (kept in ~/.amqp_delegate_history). Ctrl-C drops the line or\n"
    "interrupts a call that waits; Ctrl-D or exit([status]) stops the delegator and leaves.\n";

/* The stubs are userdata, not tables: passed as an argument, a stub cannot be
 * encoded as JSON (a table would go out as {"name": ...}). */
static int new_stub(lua_State *L) {
  luaL_checkstring(L, 1);
  lua_newuserdatauv(L, 0, 1);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_setmetatable(L, -2);
  return 1;
}

static int stub_name(lua_State *L) {
  luaL_checktype(L, 1, LUA_TUSERDATA);
  lua_getiuservalue(L, 1, 1);
  return 1;
}

static const char environment_code[] =
    "local G, new_stub, stub_name, help_text = ...\n"
    "local called, answered, stubs = {}, {}, {}\n"
    "local keywords = {}\n"
    "for word in ([[and break do else elseif end false for function goto if in local nil not\n"
    "  or repeat return then true until while]]):gmatch('%a+') do keywords[word] = true end\n"
    "\n"
    "local stub_class = {__name = 'amqp_delegate.worker_call'}\n"
    "function stub_class.__call(self, ...)\n"
    "  local name = stub_name(self)\n"
    "  local d = rawget(G, 'delegator')\n"
    "  if d == nil then error('no `delegator`: set it to a started delegator', 2) end\n"
    "  local results = table.pack(pcall(d.invoke, d, name, ...))\n"
    "  local problem = results[2]\n"
    "  if results[1] or type(problem) == 'table' and problem.code ~= 'NO_ROUTE' and problem.code ~= 'NO_WORKER' then\n"
    "    answered[name] = true -- a worker is there: Tab offers it\n"
    "  end\n"
    "  if not results[1] then error(problem, 0) end\n"
    "  return table.unpack(results, 2, results.n)\n"
    "end\n"
    "function stub_class.__tostring(self)\n"
    "  local name = stub_name(self)\n"
    "  return string.format('worker %s: %s(...) calls delegator:invoke(%q, ...)', name, name, name)\n"
    "end\n"
    "\n"
    "local env = setmetatable({}, {\n"
    "  __index = function(_, name)\n"
    "    local value = G[name]\n"
    "    if value ~= nil or type(name) ~= 'string' then return value end\n"
    "    if called[name] then\n"
    "      stubs[name] = stubs[name] or new_stub(name, stub_class)\n"
    "      return stubs[name]\n"
    "    end\n"
    "    error(string.format(\"'%s' is not defined: a worker is called as %s(...), and a string \"\n"
    "      .. 'is written \"%s\"', name, name, name), 2)\n"
    "  end,\n"
    "  __newindex = G,\n"
    "})\n"
    "\n"
    "-- The names in call position: a name (not a field, method, label or keyword)\n"
    "-- followed by ( { or a string. Strings and comments are skipped whole.\n"
    "local function note_calls(text)\n"
    "  local i, n, previous = 1, #text, nil\n"
    "  local function long_bracket_end(at)\n"
    "    local level = text:match('^%[(=*)%[', at)\n"
    "    if not level then return nil end\n"
    "    local _, stop = text:find(']' .. level .. ']', at, true)\n"
    "    return (stop or n) + 1\n"
    "  end\n"
    "  while i <= n do\n"
    "    local c = text:sub(i, i)\n"
    "    if c:find('^%s') then\n"
    "      i = i + 1\n"
    "    elseif text:find('^%-%-', i) then\n"
    "      i = long_bracket_end(i + 2) or ((text:find('\\n', i, true) or n) + 1)\n"
    "    elseif c == '\"' or c == \"'\" then\n"
    "      local j = i + 1\n"
    "      while j <= n do\n"
    "        local d = text:sub(j, j)\n"
    "        if d == '\\\\' then j = j + 2 elseif d == c or d == '\\n' then break else j = j + 1 end\n"
    "      end\n"
    "      i, previous = j + 1, 'string'\n"
    "    elseif long_bracket_end(i) then\n"
    "      i, previous = long_bracket_end(i), 'string'\n"
    "    elseif c:find('^[%a_]') then\n"
    "      local name = text:match('^[%a_][%w_]*', i)\n"
    "      i = i + #name\n"
    "      if not keywords[name] and previous ~= '.' and previous ~= ':' and previous ~= '::'\n"
    "          and previous ~= 'goto' and (text:find('^%s*[({\"\\']', i) or text:find('^%s*%[=*%[', i)) then\n"
    "        called[name] = true\n"
    "      end\n"
    "      previous = keywords[name] and name or 'name'\n"
    "    elseif c:find('^%d') then\n"
    "      i, previous = i + #text:match('^%d[%w_.]*', i), 'number'\n"
    "    else\n"
    "      local token = text:match('^::', i) or text:match('^%.%.?%.?', i) or c\n"
    "      i, previous = i + #token, token\n"
    "    end\n"
    "  end\n"
    "end\n"
    "\n"
    "-- A value's fields without running code: raw reads, and __index tables only.\n"
    "local function index_table(value)\n"
    "  local class = getmetatable(value)\n"
    "  local index = type(class) == 'table' and rawget(class, '__index')\n"
    "  return type(index) == 'table' and index or nil\n"
    "end\n"
    "local function field(value, key)\n"
    "  local found = type(value) == 'table' and rawget(value, key) or nil\n"
    "  local index = found == nil and index_table(value)\n"
    "  if index then found = rawget(index, key) end\n"
    "  return found\n"
    "end\n"
    "local function callable(value)\n"
    "  if type(value) == 'function' then return true end\n"
    "  local class = getmetatable(value)\n"
    "  return type(class) == 'table' and rawget(class, '__call') ~= nil\n"
    "end\n"
    "\n"
    "local function complete(word)\n"
    "  local path, separator, partial = word:match('^(.*)([.:])([%w_]*)$')\n"
    "  local found, seen = {}, {}\n"
    "  local prefix = path and path .. separator or ''\n"
    "  partial = partial or word\n"
    "  local function add(name, is_call)\n"
    "    if type(name) == 'string' and name:find('^[%a_][%w_]*$') and not seen[name]\n"
    "        and name:sub(1, #partial) == partial then\n"
    "      seen[name] = true\n"
    "      found[#found + 1] = prefix .. name .. (is_call and '(' or '')\n"
    "    end\n"
    "  end\n"
    "  local function add_all(t) -- after a colon, only what can be called\n"
    "    for key, v in next, t do\n"
    "      if separator ~= ':' or callable(v) then add(key, callable(v)) end\n"
    "    end\n"
    "  end\n"
    "  local function add_fields(value)\n"
    "    if type(value) == 'table' then add_all(value) end\n"
    "    local index = index_table(value)\n"
    "    if index then add_all(index) end\n"
    "  end\n"
    "  if path then\n"
    "    local value = G\n"
    "    for key in (path .. '.'):gmatch('([^.]*)%.') do value = field(value, key) end\n"
    "    if value ~= nil then add_fields(value) end\n"
    "  else\n"
    "    for key, v in next, G do add(key, callable(v)) end\n"
    "    for name in next, answered do add(name, true) end\n"
    "    for name in next, keywords do add(name, false) end\n"
    "  end\n"
    "  table.sort(found)\n"
    "  return found\n"
    "end\n"
    "\n"
    "rawset(G, 'help', function() io.write(help_text) end)\n"
    "return env, {note_calls = note_calls, complete = complete}\n";

void shell_env_open(lua_State *L) {
  if (luaL_loadbuffer(L, environment_code, sizeof environment_code - 1, "=shell") != LUA_OK)
    lua_error(L);
  lua_pushglobaltable(L);
  lua_pushcfunction(L, new_stub);
  lua_pushcfunction(L, stub_name);
  lua_pushstring(L, help_text);
  lua_call(L, 4, 2);
  lua_setfield(L, LUA_REGISTRYINDEX, TOOLS_KEY);
  lua_setfield(L, LUA_REGISTRYINDEX, ENV_KEY);
}

void shell_env_push(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, ENV_KEY);
}

/* Calls tools[name](argument) protected, leaving one result (nil on error). */
static void call_tool(lua_State *L, const char *name, const char *argument, size_t length) {
  lua_getfield(L, LUA_REGISTRYINDEX, TOOLS_KEY);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_pushlstring(L, argument, length);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

void shell_env_note_calls(lua_State *L, const char *text, size_t length) {
  call_tool(L, "note_calls", text, length);
  lua_pop(L, 1);
}

const char *shell_env_complete(lua_State *L, const char *word, int index) {
  int top = lua_gettop(L);
  if (index == 0) {
    call_tool(L, "complete", word, strlen(word));
    lua_setfield(L, LUA_REGISTRYINDEX, MATCHES_KEY);
  }
  const char *match = NULL;
  if (lua_getfield(L, LUA_REGISTRYINDEX, MATCHES_KEY) == LUA_TTABLE &&
      lua_rawgeti(L, -1, index + 1) == LUA_TSTRING)
    match = lua_tostring(L, -1); /* the table in the registry keeps it alive */
  lua_settop(L, top);
  return match;
}

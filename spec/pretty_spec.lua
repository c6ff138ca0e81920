-- The pretty-printer (host/pretty.c), as `amqp-delegate shell` prints values with it, and as
-- delegate.pretty once the module offers it.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote

-- Each case: a Lua expression typed into the shell, and what it prints.
local cases = {
  { "25", "25" },
  { "2.5", "2.5" },
  { "25.0", "25.0" },
  { "-0.0", "-0.0" },
  { "0.1 + 0.2", "0.30000000000000004" },
  { "math.mininteger", "-9223372036854775808" },
  { "1/0, -1/0, 0/0", "inf\t-inf\tnan" },
  { "true, false, nil", "true\tfalse\tnil" },
  { [["a\"b\\c\n\t\0\127"]], [["a\"b\\c\n\t\u0000\u007f"]] },
  { [["h\u{e9}llo \xff"]], '"h\u{e9}llo \\xff"' },
  { "delegate.null", "null" },
  { "{1, delegate.null, 3}", "[1, null, 3]" },
  { "{1, nil, 3}", "[1, null, 3]" },
  { "{}", "[]" },
  { "delegate.array()", "[]" },
  { "delegate.object()", "{}" },
  { "delegate.decode('[]'), delegate.decode('{}')", "[]\t{}" },
  { "{zeta = 1, alpha = {2}, Beta = true}", '{"Beta": true, "alpha": [2], "zeta": 1}' },
  { "{[2] = 'b', x = 1, [1] = 'a', [-1.5] = 0, [true] = 't'}",
    '{[-1.5]: 0, [1]: "a", [2]: "b", "x": 1, [true]: "t"}' },
  { "{[100] = 1}", "{[100]: 1}" },
  { "setmetatable({x = 1}, getmetatable(delegate.array()))", '{"x": 1}' },
  { "setmetatable({1, 2}, getmetatable(delegate.object()))", "{[1]: 1, [2]: 2}" },
  { "delegate.decode('{\"b\":{\"c\":[1,{\"d\":null}]},\"a\":\"x\"}')", '{"a": "x", "b": {"c": [1, {"d": null}]}}' },
  { "(function() local t = {1} t[2] = t return t end)()", "[1, <cycle>]" },
  { "(function() local s = {1} return {s, s} end)()", "[[1], [1]]" },
  { "setmetatable({}, {__tostring = function() return 'custom' end})", "<custom>" },
  { "{code = 'X', message = 'y'}", '{"code": "X", "message": "y"}' },
  { "(function() local t = {} for i = 1, 30 do t[i] = i * 1111 end return t end)()", [=[
[
  1111, 2222, 3333, 4444, 5555, 6666, 7777, 8888, 9999, 11110, 12221, 13332,
  14443, 15554, 16665, 17776, 18887, 19998, 21109, 22220, 23331, 24442, 25553,
  26664, 27775, 28886, 29997, 31108, 32219, 33330
]]=] },
  { "{name = 'a rather long name to push this object past the width', tags = {'x', 'y'}, n = 1}", [[
{
  "n": 1,
  "name": "a rather long name to push this object past the width",
  "tags": ["x", "y"]
}]] },
  { "(function() local t = {} local c = t for i = 1, 40 do c.n = {} c = c.n end return t end)()", nil },
}

describe("the pretty-printer", function()
  teardown(function() broker.kill_all() end)

  it("renders values as readable JSON-like text in the shell", function()
    local marker = '"--8<--"'
    local lines = {}
    for _, case in ipairs(cases) do
      lines[#lines + 1] = case[1]
      lines[#lines + 1] = marker
    end
    local input = os.tmpname()
    local f = assert(io.open(input, "w"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    local out, status, err = broker.run(q(support.host_binary()) .. " shell --url " .. q(broker.url())
      .. " < " .. q(input))
    os.remove(input)
    assert.are.equal(0, status, err)
    assert.are.equal("", err)
    local outputs = {}
    for block in (out):gmatch("(.-)\n" .. marker:gsub("%p", "%%%0") .. "\n") do outputs[#outputs + 1] = block end
    assert.are.equal(#cases, #outputs, out)
    for i, case in ipairs(cases) do
      if case[2] then assert.are.equal(case[2], outputs[i], case[1]) end
    end
    -- past the depth limit (32), containers show as {...}
    local deep = outputs[#cases]
    assert.matches('"n": {%.%.%.}', deep)
    local _, levels = deep:gsub('"n":', "")
    assert.are.equal(32, levels)
    -- functions and userdata show between <>
    out = broker.run("printf '%s\\n' print delegator io.stdout | " .. q(support.host_binary())
      .. " shell --url " .. q(broker.url()))
    assert.matches("^<function: [^\n>]+>\n<amqp_delegate%.delegator %(started, amqp://[^\n]*%)>\n<file %(0?x?%x+%)>\n$", out)
  end)

  it("is delegate.pretty(value [, options]) in the module", function()
    local delegate = require "amqp_delegate"
    if not delegate.pretty then
      pending("lua/amqp_delegate.c does not register pretty yet")
      return
    end
    assert.are.equal('{"a": [1, 2], "b": null}', delegate.pretty(delegate.decode('{"b":null,"a":[1,2]}')))
    assert.are.equal("[\n  1,\n  2\n]", delegate.pretty({ 1, 2 }, { width = 4 }))
    assert.are.equal("{\n    \"a\": [\n        1\n    ]\n}", delegate.pretty({ a = { 1 } }, { width = 1, indent = 4 }))
    assert.are.equal("[[...]]", delegate.pretty({ { { 1 } } }, { max_depth = 1 }))
    local ok, err = pcall(delegate.pretty, 1, { colour = true })
    assert.is_false(ok)
    assert.are.equal("BAD_ARGUMENT", err.code)
  end)
end)

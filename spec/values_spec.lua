-- The value mapping between JSON and Lua (README "Values"), checked in the codec itself, Lua to
-- Lua over the broker, Node to Lua, and Lua to Node and back.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local delegate = require "amqp_delegate"
local cjson = require "cjson"

local utf8_text = "h\u{e9}llo \u{20ac}\u{1d11e} \u{65e5}\u{672c}"

describe("value mapping in the codec", function()
  it("keeps integers integers, exactly up to 2^63-1", function()
    for _, n in ipairs({ 0, -1, 25, math.tointeger(2 ^ 53), math.tointeger(2 ^ 53) + 1, math.maxinteger, math.mininteger }) do
      local text = delegate.encode(n)
      assert.are.equal(string.format("%d", n), text)
      local back = delegate.decode(text)
      assert.are.equal("integer", math.type(back))
      assert.are.equal(n, back)
    end
  end)

  it("writes floats with the shortest of 15 to 17 digits that reads back exactly", function()
    for _, x in ipairs({ 0.1, 1 / 3, 2.5, 1e300, 5e-324, 123456789.123456789, -0.0 }) do
      local back = delegate.decode(delegate.encode(x))
      assert.are.equal("float", math.type(back))
      assert.are.equal(x, back)
    end
    assert.are.equal("0.1", delegate.encode(0.1))
    assert.are.equal("0.3333333333333333", delegate.encode(1 / 3))
    assert.are.equal("25.0", delegate.encode(25.0))
    assert.are.equal("float", math.type(delegate.decode("25.0")))
    assert.are.equal("float", math.type(delegate.decode("1e2")))
  end)

  it("refuses NaN and infinity", function()
    local ok, err = pcall(delegate.encode, 0 / 0)
    assert.is_false(ok)
    assert.are.equal("BAD_ARGUMENT", err.code)
    assert.matches("NaN", err.message)
    ok, err = pcall(delegate.encode, math.huge)
    assert.is_false(ok)
    assert.matches("infinity", err.message)
  end)

  it("maps null to delegate.null, which is lua-cjson's cjson.null", function()
    assert.are.equal(cjson.null, delegate.null)
    assert.are.equal(delegate.null, delegate.decode("null"))
    assert.are.equal("null", delegate.encode(cjson.null))
    assert.are.equal("[1,null,3]", delegate.encode(delegate.decode("[1,null,3]")))
  end)

  it("keeps empty arrays and empty objects apart", function()
    local array, object = delegate.decode("[]"), delegate.decode("{}")
    assert.are.equal("[]", delegate.encode(array))
    assert.are.equal("{}", delegate.encode(object))
    assert.are.equal('{"a":[],"b":{}}', delegate.encode(delegate.decode('{"a":[],"b":{}}')):gsub('"b":{},"a":%[%]', '"a":[],"b":{}'))
    assert.are.equal("[]", delegate.encode({}))
    assert.are.equal("{}", delegate.encode(delegate.object()))
    assert.are.equal("[]", delegate.encode(delegate.array()))
  end)

  it("writes holes as null", function()
    assert.are.equal("[1,null,3]", delegate.encode({ 1, nil, 3 }))
    assert.are.equal("[null,null,3]", delegate.encode({ [3] = 3 }))
  end)

  it("keeps UTF-8 and any bytes untouched", function()
    assert.are.equal('"' .. utf8_text .. '"', delegate.encode(utf8_text))
    assert.are.equal(utf8_text, delegate.decode('"' .. utf8_text .. '"'))
    assert.are.equal("\u{1d11e}", delegate.decode('"\\ud834\\udd1e"'))
    assert.are.equal("a\0b", delegate.decode(delegate.encode("a\0b")))
  end)

  it("refuses tables JSON cannot carry, naming the problem", function()
    local cyclic = {}
    cyclic.self = cyclic
    for value, problem in pairs({
      [{ 1, 2, x = 3 }] = "mixes",
      [{ [1.5] = true }] = "float",
      [cyclic] = "cyclic",
      [{ f = print }] = "function",
    }) do
      local ok, err = pcall(delegate.encode, value)
      assert.is_false(ok)
      assert.matches(problem, err.message)
    end
  end)
end)

describe("value mapping over the broker", function()
  local delegator
  setup(function()
    support.host({ "spec/workers/values.lua" })
    broker.node_worker("node_echo_values", "echo")
    delegator = support.delegator()
  end)
  teardown(function()
    delegator:stop()
    broker.kill_all()
  end)

  local samples = {
    { "integer", 25 },
    { "2^53", math.tointeger(2 ^ 53) },
    { "float", 0.1 },
    { "third", 1 / 3 },
    { "string", utf8_text },
    { "array", { 1, "two", 3.5, true, false } },
    { "object", { a = 1, b = { c = "d" } } },
    { "nested null", { 1, delegate.null, 3 } },
    { "empty array", delegate.array() },
    { "empty object", delegate.object() },
  }

  for _, sample in ipairs(samples) do
    it("Lua to Lua and back: " .. sample[1], function()
      local back = delegator:invoke("lua_echo", sample[2])
      assert.are.same(sample[2], back)
      assert.are.equal(delegate.encode(sample[2]), delegate.encode(back))
      if type(back) == "number" then assert.are.equal(math.type(sample[2]), math.type(back)) end
    end)

    it("Lua to Node and back: " .. sample[1], function()
      local back = delegator:invoke("node_echo_values", sample[2])
      assert.are.same(sample[2], back)
      assert.are.equal(delegate.encode(sample[2]), delegate.encode(back))
    end)
  end

  it("Lua to Lua: a float with an integral value stays a float; holes come back as null", function()
    local back = delegator:invoke("lua_echo", 25.0)
    assert.are.equal("float", math.type(back))
    assert.are.same({ 1, delegate.null, 3 }, delegator:invoke("lua_echo", { 1, nil, 3 }))
  end)

  it("Lua to Node: JavaScript has one number type, so 25.0 comes back as the integer 25", function()
    local back = delegator:invoke("node_echo_values", 25.0)
    assert.are.equal("integer", math.type(back))
  end)

  it("top-level nil arguments and results: nil in, nil out, counted", function()
    assert.are.equal("nil,integer 2,nil", delegator:invoke("lua_describe", nil, 2, nil))
    assert.is_nil(delegator:invoke("lua_echo", nil))
  end)

  it("Node to Lua: what a Lua task receives", function()
    local out, status, err = broker.node_call("lua_describe",
      '[25, 2.5, 9007199254740992, null, [], {}, [1,null,3], "' .. utf8_text .. '", -0, 1e2]')
    assert.are.equal(0, status, err)
    local hex = utf8_text:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    assert.are.equal('"integer 25,float 2.5,integer 9007199254740992,nil,amqp_delegate.array 0,' ..
      'amqp_delegate.object 0,amqp_delegate.array 3,string ' .. hex .. ',integer 0,integer 100"', out)
  end)

  it("Node to Lua and back: the bytes Node receives", function()
    local cases = {
      { "[25]", "25" },
      { "[0.1]", "0.1" },
      { "[9007199254740992]", "9007199254740992" },
      { "[0.30000000000000004]", "0.30000000000000004" },
      { '[{"a":[]}]', '{"a":[]}' },
      { '[{}]', '{}' },
      { '[[1,null,3]]', '[1,null,3]' },
      { '["' .. utf8_text .. '"]', '"' .. utf8_text .. '"' },
      { '[null]', 'null' },
    }
    for _, case in ipairs(cases) do
      local out, status, err = broker.node_call("lua_echo", case[1], { raw = true })
      assert.are.equal(0, status, err)
      assert.are.equal(case[2], out)
    end
  end)
end)

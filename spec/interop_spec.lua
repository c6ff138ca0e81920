-- Wire compatibility with the Node.js amqp-delegate library (PROTOCOL.md), both ways, on one
-- broker, against independent Node peers written with amqplib (spec/node).
local broker = require "spec.helpers.broker"
local support = require "spec.support"

describe("interoperation with Node.js", function()
  local delegator
  before_each(function() delegator = support.delegator() end)
  after_each(function()
    pcall(delegator.stop, delegator)
    broker.kill_all()
  end)

  it("a Node delegator calls a Lua worker", function()
    support.host({ "scripts/adder.lua" })
    local out, status, err = broker.node_call("adder", "[10,15]")
    assert.are.equal(0, status, err)
    assert.are.equal("25", out)
    out, status = broker.node_call("adder", "[0.5,0.25]", { raw = true, count = 3 })
    assert.are.equal(0, status)
    assert.are.equal("0.75\n0.75\n0.75", out)
  end)

  it("a Lua delegator calls a Node worker", function()
    broker.node_worker("node_adder", "add")
    local result = delegator:invoke("node_adder", 10, 15)
    assert.are.equal(25, result)
    assert.are.equal("integer", math.type(result))
    broker.node_worker("node_echo", "echo")
    assert.are.same({ 1, "two", { three = 3 } }, delegator:invoke("node_echo", { 1, "two", { three = 3 } }))
  end)

  it("a Node worker and a Lua worker of one name share its queue, each taking calls", function()
    broker.node_worker("shared_adder", "tagged", "node")
    support.host({ "spec/workers/tagged.lua" }, { env = { WORKER_NAME = "shared_adder", WORKER_TAG = "lua" } })
    assert.are.equal(2, broker.queues().shared_adder.consumers)
    local seen = { node = 0, lua = 0 }
    for i = 1, 40 do
      local answer = delegator:invoke("shared_adder", i, 1)
      assert.are.equal(i + 1, answer.sum)
      seen[answer.worker] = seen[answer.worker] + 1
    end
    assert.are.equal(40, seen.node + seen.lua)
    assert.is_true(seen.node > 0, "the Node worker took no call")
    assert.is_true(seen.lua > 0, "the Lua worker took no call")
    -- and the other way round: a Node delegator's calls reach both as well
    local out, status = broker.node_call("shared_adder", "[1,2]", { count = 20 })
    assert.are.equal(0, status)
    local node_seen, lua_seen = select(2, out:gsub('"worker":"node"', "")), select(2, out:gsub('"worker":"lua"', ""))
    assert.are.equal(20, node_seen + lua_seen)
    assert.is_true(node_seen > 0 and lua_seen > 0, out)
  end)

  it("a Node delegator calling a failing Lua task gets an error object, not silence", function()
    support.host({ "spec/workers/failing.lua" })
    local out, status, err = broker.node_call("lua_fail", '["out of stock"]', { timeout = 5000 })
    assert.are.equal(0, status, err)
    assert.matches('^{"error":{', out)
    assert.matches('"code":"TASK_FAILED"', out)
    assert.matches('out of stock', out)
    assert.matches('"worker":"lua_fail"', out)
  end)
end)

-- Checks the test infrastructure itself: the private broker, the helpers and the Node peers.
local broker = require "spec.helpers.broker"

describe("test infrastructure", function()
  after_each(function()
    broker.kill_all()
  end)

  it("has a broker URL and a node that answers", function()
    assert.matches("^amqp://", broker.url())
    assert.is_number(broker.port())
    assert.matches("Ping succeeded", broker.diag("ping"))
  end)

  it("runs a Node worker and a Node delegator together: add(10, 15) = 25", function()
    local w = broker.node_worker("infra_adder", "add")
    local out, status, err = broker.node_call("infra_adder", "[10,15]")
    assert.are.equal(0, status, err)
    assert.are.equal("25", out)

    -- the worker's queue: declared by the worker, one consumer, nothing pending
    local q = broker.queues()["infra_adder"]
    assert.is_not_nil(q)
    assert.are.same({ ready = 0, unacked = 0, consumers = 1 }, q)

    -- several calls, raw bytes as the Node worker sends them
    out, status = broker.node_call("infra_adder", "[1.5,2]", { count = 3, raw = true })
    assert.are.equal(0, status)
    assert.are.equal("3.5\n3.5\n3.5", out)

    -- SIGTERM: the worker closes cleanly and its consumer goes away
    assert.is_true(w:signal("TERM"))
    assert.are.equal(0, w:wait_exit(10))
    assert.is_truthy(broker.eventually(function()
      local q2 = broker.queues()["infra_adder"]
      return q2 and q2.consumers == 0
    end, 10))
  end)

  it("reports a timeout when nobody serves the name", function()
    local out, status, err = broker.node_call("infra_nobody", "[1]", { timeout = 300 })
    assert.are.equal(2, status)
    assert.are.equal("", out)
    assert.matches("TIMEOUT", err)
  end)

  it("tells which competing worker answered", function()
    broker.node_worker("infra_tagged", "tagged", "w1")
    broker.node_worker("infra_tagged", "tagged", "w2")
    local seen = {}
    local out, status = broker.node_call("infra_tagged", "[2,3]", { count = 6 })
    assert.are.equal(0, status)
    for line in out:gmatch("[^\n]+") do
      local who, sum = line:match('^{"worker":"(w%d)","sum":(%d+)}$')
      assert.are.equal("5", sum)
      seen[who] = true
    end
    assert.is_true(seen.w1 and seen.w2, "both workers should have answered: " .. out)
    assert.are.equal(2, broker.queues()["infra_tagged"].consumers)
  end)

  it("spawns processes, reads their output and their exit status", function()
    local p = broker.spawn("sh -c 'echo hello; sleep 30'")
    assert.is_true((p:wait_for("hello", 5)))
    assert.is_true(p:alive())
    assert.is_number(p:pid())
    assert.is_true(p:signal("TERM", true)) -- the whole group: sh and its sleep
    assert.are.equal(128 + 15, p:wait_exit(5))
    p:cleanup()

    local e = broker.spawn("sh -c 'echo bye >&2; exit 3'")
    assert.are.equal(3, e:wait_exit(5))
    assert.are.equal("bye\n", e:output())
    e:cleanup()
  end)
end)

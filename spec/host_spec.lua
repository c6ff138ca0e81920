-- The host executable: serves worker files, refuses broken ones, stops cleanly.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

describe("amqp-delegate run", function()
  local delegator
  before_each(function() delegator = support.delegator() end)
  after_each(function()
    if delegator then pcall(delegator.stop, delegator) end
    broker.kill_all()
  end)

  it("serves scripts/adder.lua: invoke('adder', 10, 15) returns the integer 25", function()
    local host = support.host({ "scripts/adder.lua" })
    local result = delegator:invoke("adder", 10, 15)
    assert.are.equal(25, result)
    assert.are.equal("integer", math.type(result))
    assert.are.equal(4.5, delegator:invoke("adder", 2, 2.5))
    assert.truthy(host:output():find("worker 'adder' ready", 1, true))
  end)

  it("declares the queue as the Node library does and acks every request", function()
    local host = support.host({ "scripts/adder.lua" })
    for i = 1, 20 do assert.are.equal(i + 1, delegator:invoke("adder", i, 1)) end
    local queue = broker.queues().adder
    assert.are.same({ ready = 0, unacked = 0, consumers = 1 }, queue)
    local flags = broker.ctl("-q", "list_queues", "--no-table-headers", "name", "durable",
      "auto_delete", "exclusive", "arguments")
    assert.matches("adder\tfalse\tfalse\tfalse\t%[%]", flags)
    host:kill()
  end)

  it("stops on SIGTERM: cancels its consumer, exits 0 and leaves nothing unacked", function()
    local host = support.host({ "scripts/adder.lua" })
    assert.are.equal(3, delegator:invoke("adder", 1, 2))
    assert.is_true(host:signal("TERM"))
    assert.are.equal(0, host:wait_exit(10))
    assert.matches("worker 'adder' stopped %(1 served, 0 failed", host:output())
    local queue = broker.queues().adder
    assert.are.equal(0, queue.consumers)
    assert.are.equal(0, queue.unacked)
  end)

  it("stops on SIGINT too", function()
    local host = support.host({ "scripts/adder.lua" })
    assert.is_true(host:signal("INT"))
    assert.are.equal(130, host:wait_exit(10))
    assert.matches("Interrupt: stopping", host:output())
  end)

  it("serves several workers from one file and several files in one process", function()
    support.host({ "spec/workers/values.lua", "scripts/adder.lua" })
    assert.are.equal("hello", delegator:invoke("lua_echo", "hello"))
    assert.are.equal(7, delegator:invoke("adder", 3, 4))
  end)

  it("refuses a worker file with a syntax error: exit 1 naming file and line", function()
    local host = support.host({ "spec/workers/syntax_error.lua" }, { wait = false })
    assert.are.equal(1, host:wait_exit(10))
    assert.matches("syntax_error%.lua:4:", host:output())
    assert.falsy(host:output():find("ready", 1, true))
  end)

  it("serves nothing when one file fails while loading", function()
    local host = support.host({ "scripts/adder.lua", "spec/workers/load_error.lua" }, { wait = false })
    assert.are.equal(1, host:wait_exit(10))
    assert.matches("load_error%.lua:3:", host:output())
    assert.is_nil(broker.queues().broken_at_load)
    assert.falsy(host:output():find("ready", 1, true))
  end)

  it("exits non-zero with a clear message when the broker cannot be reached", function()
    local host = support.host({ "scripts/adder.lua" },
      { url = "amqp://guest:s3cret@127.0.0.1:1/", wait = false })
    assert.are.equal(3, host:wait_exit(20))
    local output = host:output()
    assert.matches("CONNECTION_FAILED: cannot connect to 127%.0%.0%.1:1", output)
    assert.falsy(output:find("s3cret", 1, true))
  end)

  it("answers --help and --version", function()
    local out, status = broker.run(broker.shell_quote(support.host_binary()) .. " --version")
    assert.are.equal(0, status)
    assert.matches("^amqp%-delegate %d+%.%d+%.%d+", out)
    out, status = broker.run(broker.shell_quote(support.host_binary()) .. " run --help")
    assert.are.equal(0, status)
    assert.matches("usage: amqp%-delegate run", out)
  end)
end)

-- Waiting for the broker at start: a host started before its broker serves once it comes up
-- ($AMQP_DELEGATE_WAIT_FOR_BROKER, what `run` sets, or the wait_for_broker option), logging
-- once that it waits; without patience a start fails after one try of each broker.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local defer = support.deferrer(function(fn) finally(fn) end)
local delegate = require "amqp_delegate"

local unique = support.unique
local slow = support.slow

local free_port, forward = support.free_port, support.forward

describe("waiting for the broker at start", function()
  it("run, started before its broker, waits (logging it once) and serves when it comes up", function()
    local name = unique("wait_host")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    local port = free_port()
    local host = support.host({ "spec/workers/sleeper.lua" }, { url = "amqp://guest:guest@127.0.0.1:" .. port,
      env = { WORKER_NAME = name, AMQP_DELEGATE_WAIT_FOR_BROKER = "60" }, wait = false })
    defer(function() host:kill() end)
    assert(host:wait_for("waiting for the broker", 10 * slow, true), host:output())
    broker.sleep(1.5)
    assert.is_nil(host:status(), "still up, still trying\n" .. host:output())
    local forwarder = forward(port)
    defer(function() forwarder:kill() end)
    assert(forwarder:wait_for("listening", 10 * slow, true), forwarder:output())
    assert(host:wait_for("ready\n", 20 * slow, true), host:output())
    local output = host:output()
    assert.are.equal(1, select(2, output:gsub("waiting for the broker", "")), output)
    local d = support.delegator()
    defer(function() d:stop() end)
    assert.are.equal("x", d:invoke(name, 0, "x"))
  end)

  it("run waits a minute by default, and a refusal ends the start at once", function()
    local port = free_port()
    local host = broker.spawn("env -u AMQP_DELEGATE_WAIT_FOR_BROKER " .. broker.shell_quote(support.host_binary())
      .. " run --url amqp://guest:guest@127.0.0.1:" .. port .. " " .. broker.shell_quote(broker.root() .. "/scripts/adder.lua"))
    defer(function() host:kill() end)
    assert(host:wait_for("waiting for the broker (for 60 s at most)", 10 * slow, true), host:output())
    -- bad credentials are a refusal, not a broker that is not up yet
    local refused = support.host({ "scripts/adder.lua" }, { wait = false,
      url = broker.url():gsub("^(amqp://[^:]+:)([^@]*)@", "%1wrong@"),
      env = { AMQP_DELEGATE_WAIT_FOR_BROKER = "60" } })
    defer(function() refused:kill() end)
    assert.are.equal(3, refused:wait_exit(15 * slow), refused:output())
  end)

  it("wait_for_broker = n gives up after about n seconds with the broker's error", function()
    local port = free_port()
    local d = delegate.delegator({ url = "amqp://guest:secret@127.0.0.1:" .. port, wait_for_broker = 1 })
    local ok, err = pcall(d.start, d)
    assert.is_false(ok)
    assert.are.equal("CONNECTION_FAILED", err.code)
    assert.falsy(tostring(err):find("secret", 1, true))
  end)

  it("refuses a wait that is not a number of seconds", function()
    for _, value in ipairs({ -1, 0 / 0, 1 / 0, {} }) do
      local ok, err = pcall(delegate.delegator, { wait_for_broker = value })
      assert.is_false(ok)
      assert.are.equal("BAD_ARGUMENT", err.code)
    end
  end)

  it("the module says its version", function()
    assert.are.equal("amqp-delegate " .. delegate.version, delegate._VERSION)
  end)
end)

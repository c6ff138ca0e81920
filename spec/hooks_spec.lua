-- on_error and on_close, for workers and delegators.
local broker = require "spec.helpers.broker"
local delegate = require "amqp_delegate"

local function wait_until(condition)
  -- The hooks run on the loop: give it turns with plain sleeps.
  for _ = 1, 100 do
    if condition() then return true end
    delegate.sleep(0.05)
  end
  return condition()
end

describe("hooks", function()
  it("on_close runs when a worker and a delegator stop", function()
    local closed = {}
    local worker = delegate.worker {
      name = "hooks_close", url = broker.url(), task = function() end,
      on_close = function() closed[#closed + 1] = "worker" end,
    }
    local delegator = delegate.delegator {
      url = broker.url(), on_close = function() closed[#closed + 1] = "delegator" end,
    }
    worker:start()
    delegator:start()
    worker:stop()
    delegator:stop()
    assert.are.same({ "worker", "delegator" }, closed)
  end)

  it("on_error and on_close run when the broker closes the connections; both reconnect", function()
    local events = {}
    local worker = delegate.worker {
      name = "hooks_lost", url = broker.url(), task = function(x) return x end,
      on_error = function(err) events[#events + 1] = "worker error " .. err.code end,
      on_close = function() events[#events + 1] = "worker close" end,
    }
    local delegator = delegate.delegator {
      url = broker.url(),
      on_error = function(err) events[#events + 1] = "delegator error " .. err.code end,
      on_close = function() events[#events + 1] = "delegator close" end,
    }
    worker:start()
    delegator:start()
    assert.are.equal(1, delegator:invoke("hooks_lost", 1))
    broker.ctl("close_all_connections", "closed by the hooks spec")
    assert.is_true(wait_until(function() return #events == 4 end), table.concat(events, "; "))
    table.sort(events)
    assert.are.same({ "delegator close", "delegator error CONNECTION_LOST", "worker close",
      "worker error CONNECTION_LOST" }, events)
    -- both come back by themselves, declare again, and serve and call again
    assert.is_true(wait_until(function() return tostring(delegator):find("started") ~= nil end))
    assert.is_true(wait_until(function() return tostring(worker):find("running") ~= nil end))
    assert.are.equal(2, delegator:invoke("hooks_lost", 2))
    worker:stop()
    delegator:stop()
  end)

  it("a failing hook is logged and does not break the loop", function()
    local worker = delegate.worker {
      name = "hooks_failing", url = broker.url(), task = function(x) return x end,
      on_close = function() error("hook broke") end,
    }
    worker:start()
    worker:stop()
    local delegator = delegate.delegator { url = broker.url() }:start()
    worker:start()
    assert.are.equal(5, delegator:invoke("hooks_failing", 5))
    worker:stop()
    delegator:stop()
  end)
end)

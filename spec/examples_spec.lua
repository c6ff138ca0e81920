-- The example workers in scripts/, served by the host as a user would.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local delegate = require "amqp_delegate"

describe("example workers", function()
  local delegator
  before_each(function() delegator = support.delegator() end)
  after_each(function()
    delegator:stop()
    broker.kill_all()
  end)

  it("scripts/slow_adder.lua answers 64 pipelined calls", function()
    support.host({ "scripts/slow_adder.lua" }, { flags = { "--concurrency", "64" } })
    local calls = {}
    for i = 1, 64 do calls[i] = delegator:send("slow_adder", i, 1000) end
    local sums = delegate.wait_all(calls)
    for i = 1, 64 do assert.are.equal(1000 + i, sums[i]) end
  end)

  it("scripts/fan_out.lua fans a call out to `square` and sums the answers", function()
    -- its own delegator finds the broker through the host's --url, not a stale $AMQP_URL
    support.host({ "scripts/fan_out.lua" }, { flags = { "--concurrency", "16" },
      env = { AMQP_URL = "amqp://guest:guest@127.0.0.1:1/" } })
    assert.are.equal(1 + 4 + 9 + 16, delegator:invoke("sum_of_squares", 1, 2, 3, 4))
    assert.are.equal(0, delegator:invoke("sum_of_squares"))
  end)
end)

-- Long tasks: a CPU-bound task that never yields keeps its connection (a count hook sends
-- the heartbeats meanwhile), runs once and answers, and the host says which worker held the
-- loop and for how long.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local unique = support.unique
local slow = support.slow

describe("long tasks", function()
  local delegator
  before_each(function() delegator = support.delegator({ timeout = 90 * slow }) end)
  after_each(function() pcall(delegator.stop, delegator) end)

  it("a 30 s CPU-bound task on a worker with heartbeat 2 runs once and answers", function()
    local name = unique("long_cpu")
    finally(function() pcall(broker.ctl, "delete_queue", name) end)
    local runs = os.tmpname()
    finally(function() os.remove(runs) end)
    local host = support.host({ "spec/workers/cpu_bound.lua" },
      { env = { WORKER_NAME = name, HEARTBEAT = "2", RUNS_FILE = runs } })
    finally(function() host:kill() end)
    assert.are.equal("computed", delegator:invoke(name, 30))
    local count = select(2, (broker.read_file(runs) or ""):gsub("run\n", ""))
    assert.are.equal(1, count, "the task ran once\n" .. host:output())
    local output = host:output()
    assert.falsy(output:find("CONNECTION_LOST", 1, true), output)
    assert.truthy(output:find("a task of worker '" .. name .. "' holds the loop", 1, true), output)
    assert.truthy(output:find("held the loop for 3%d%.%d s"), output)
  end)
end)

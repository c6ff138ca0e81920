-- Fewer writes per call, same guarantees (issue 13): the frames a loop turn sends leave in
-- one write per connection, a publish's three frames in one write even from plain Lua, and
-- nothing waits for more work: a lone call goes at once, and a task that runs long does not
-- hold the replies of the tasks that ran before it in the same turn.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local delegate = require "amqp_delegate"
local defer = support.deferrer(function(fn) finally(fn) end)

local unique = support.unique

local function counts()
  local stats = delegate.transport_stats()
  return stats.frames, stats.writes
end

describe("batched writes", function()
  local delegator, workers
  before_each(function()
    delegator = support.delegator({ timeout = 30 * support.slow })
    workers = support.in_process_workers(broker.url())
  end)
  after_each(function()
    workers.stop_all()
    pcall(delegator.stop, delegator)
  end)

  it("a publish from plain Lua is one write of its three frames", function()
    local name = unique("batch_lone")
    workers.serve({ name = name, task = function(a, b) return a + b end })
    assert.are.equal(3, delegator:invoke(name, 1, 2)) -- warm: nothing else pending
    local frames, writes = counts()
    local call = delegator:send(name, 2, 3)
    local frames_after, writes_after = counts()
    -- method, content header and body: one write, before any wait ran the loop
    assert.are.equal(3, frames_after - frames)
    assert.are.equal(1, writes_after - writes)
    assert.are.equal(5, call:wait())
  end)

  it("64 pipelined calls and their replies and acks take fewer writes than frames", function()
    local name = unique("batch_pipe")
    workers.serve({ name = name, concurrency = 64, task = function(a, b) return a + b end })
    assert.are.equal(3, delegator:invoke(name, 1, 2))
    local frames, writes = counts()
    local calls = {}
    for i = 1, 64 do calls[i] = delegator:send(name, i, 1) end
    for i = 1, 64 do assert.are.equal(i + 1, calls[i]:wait()) end
    local frames_after, writes_after = counts()
    local sent_frames, made_writes = frames_after - frames, writes_after - writes
    -- 64 requests and 64 replies of 3 frames (and the acks, which follow the replies'
    -- confirms: some may still be on their way)
    assert.is_true(sent_frames >= 384, "frames sent: " .. sent_frames)
    -- each publish is one write at most; the replies and acks of a turn share theirs
    assert.is_true(made_writes * 2 <= sent_frames,
      ("%d writes for %d frames"):format(made_writes, sent_frames))
  end)

  it("the acks due together go as one: fewer ack frames than requests", function()
    local name = unique("batch_acks")
    workers.serve({ name = name, concurrency = 64, task = function(a, b) return a + b end })
    assert.are.equal(3, delegator:invoke(name, 1, 2))
    delegate.sleep(0.2) -- that call's ack has gone
    local frames = counts()
    local calls = {}
    for i = 1, 64 do calls[i] = delegator:send(name, i, 1) end
    for i = 1, 64 do assert.are.equal(i + 1, calls[i]:wait()) end
    -- the acks follow the replies' confirms: run the loop until the broker has them all
    local unacked
    for _ = 1, 100 do
      unacked = (broker.queues()[name] or {}).unacked
      if unacked == 0 then break end
      delegate.sleep(0.05)
    end
    assert.are.equal(0, unacked, "every request acked")
    -- 64 requests and 64 replies of 3 frames each; the rest are the acks
    local ack_frames = counts() - frames - 384
    assert.is_true(ack_frames >= 1 and ack_frames < 64, ack_frames .. " ack frames for 64 requests")
  end)

  it("a task that runs long does not hold the reply of the task before it in its turn", function()
    local name = unique("batch_long")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    support.node_declare(name, '{"durable": false}')
    -- both requests wait in the queue, so the host takes them in one read and runs both
    -- tasks in one turn: the quick one first, then the one that spins 3 s without yielding
    -- (the delegator must not ask for a worker first: there is none yet, on purpose)
    local unchecked = support.delegator({ timeout = 30 * support.slow, check_workers = false })
    defer(function() pcall(unchecked.stop, unchecked) end)
    local quick = unchecked:send(name, 0.01)
    local long = unchecked:send(name, 3)
    -- not waiting for its "ready" line: it may reach the output file only after the long task
    local host = support.host({ "spec/workers/cpu_bound.lua" },
      { env = { WORKER_NAME = name, WORKER_CONCURRENCY = "2" }, wait = false })
    defer(function() host:kill() end)
    assert.are.equal("computed", quick:wait())
    assert.is_false(long:done(), "the quick reply came only with the long one\n" .. host:output())
    assert.are.equal("computed", long:wait())
  end)
end)

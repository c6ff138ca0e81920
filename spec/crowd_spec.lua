-- A crowd of calls in flight from one delegator (issue 13): 100 000 calls sent with :send()
-- to a worker that is not there yet all complete once it starts, the pending table is empty
-- afterwards, a call in flight costs what it needs (not a fixed 1.3 KB), and the memory goes
-- back once they are collected. (Memory figures are read only on a plain build: ASan and
-- valgrind keep freed memory on purpose.)
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local delegate = require "amqp_delegate"
local defer = support.deferrer(function(fn) finally(fn) end)

local instrumented = os.getenv("AMQP_DELEGATE_WRAPPER") ~= nil
local crowd = support.under_valgrind and 10000 or 100000

local function rss_kib()
  local text = assert(broker.read_file("/proc/self/status"))
  return tonumber(text:match("VmRSS:%s*(%d+)"))
end

local function collect()
  -- twice: the calls' finalizers run in one cycle, their memory goes in the next
  collectgarbage("collect")
  collectgarbage("collect")
end

describe("a crowd of calls in flight", function()
  it(crowd .. " calls sent before their worker starts all complete, and the memory comes back", function()
    local name = support.unique("crowd")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    support.node_declare(name, '{"durable": false}')
    -- the queue has no consumer yet on purpose: the delegator must not ask for one (NO_WORKER)
    local d = support.delegator({ timeout = 300 * support.slow, check_workers = false })
    defer(function() pcall(d.stop, d) end)
    assert.are.equal(0, d:stats().pending)
    collect()
    local idle = rss_kib()
    local calls = {}
    for i = 1, crowd do calls[i] = d:send(name, i) end
    collect()
    local peak = rss_kib()
    local stats = d:stats()
    assert.are.equal(crowd, stats.in_flight)
    assert.are.equal(crowd, stats.pending, "every call was sent and waits for its reply")
    local workers = support.in_process_workers(broker.url())
    defer(workers.stop_all)
    workers.serve({ name = name, concurrency = 64, task = function(i) return i * 2 end })
    for i = 1, crowd do
      assert(calls[i]:wait() == i * 2, "call " .. i)
      calls[i] = nil
    end
    stats = d:stats()
    assert.are.equal(0, stats.in_flight)
    assert.are.equal(0, stats.pending, "the pending table is empty")
    assert.are.equal(crowd, stats.replied)
    workers.stop_all()
    calls = nil
    collect()
    local after = rss_kib()
    if instrumented then return end
    -- a call in flight held 1.3 KB of fixed buffers before (2 KB with what Lua keeps of it)
    local per_call = (peak - idle) * 1024 / crowd
    assert.is_true(per_call < 1024, ("%.0f bytes per call in flight"):format(per_call))
    -- back near idle: not the crowd's peak (glibc keeps freed memory unless trimmed)
    assert.is_true(after - idle < (peak - idle) / 4,
      ("RSS idle %d KiB, at the peak %d KiB, after %d KiB"):format(idle, peak, after))
  end)
end)

-- The task's context: delegate.context() inside a task (and in a coroutine of the task),
-- headers given to invoke/send, trace headers and the call chain carried two hops deep, the
-- deadline that travels with the request, and a request past its deadline not run.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local defer = support.deferrer(function(fn) finally(fn) end)
local delegate = require "amqp_delegate"

local unique = support.unique
local slow = support.slow

local TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

describe("the task's context", function()
  local delegator, workers
  before_each(function()
    delegator = support.delegator({ timeout = 10 * slow })
    workers = support.in_process_workers(broker.url())
  end)
  after_each(function()
    workers.stop_all()
    pcall(delegator.stop, delegator)
  end)

  it("is nil outside a task", function()
    assert.is_nil(delegate.context())
  end)

  it("two hops deep: correlation ids, workers, deadlines, headers, traceparent and call chain", function()
    local first, second = unique("ctx_first"), unique("ctx_second")
    workers.serve({ name = second, task = function() return delegate.context() end })
    workers.serve({ name = first, task = function()
      local mine = delegate.context()
      local inner = delegator:invoke({ timeout = 5 * slow }, second)
      local in_coroutine = coroutine.wrap(function() return delegate.context().worker end)()
      return { mine = mine, inner = inner, in_coroutine = in_coroutine }
    end })
    local before = os.time()
    local result = delegator:invoke({ timeout = 20 * slow, headers = { traceparent = TRACEPARENT,
      tracestate = "vendor=1", tenant = "acme", attempt = 3, urgent = true } }, first)
    local mine, inner = result.mine, result.inner
    assert.are.equal(first, mine.worker)
    assert.are.equal(second, inner.worker)
    assert.are.equal(first, result.in_coroutine, "a coroutine of the task sees its context")
    assert.are.equal(36, #mine.correlation_id)
    assert.are_not.equal(mine.correlation_id, inner.correlation_id)
    -- the caller's headers reach the first task as they were given
    assert.are.equal("acme", mine.headers.tenant)
    assert.are.equal(3, mine.headers.attempt)
    assert.are.equal(true, mine.headers.urgent)
    assert.are.equal(TRACEPARENT, mine.headers.traceparent)
    assert.is_false(mine.redelivered)
    assert.are.equal(0, mine.previous_deliveries)
    -- the deadline travels: the caller's 20 s, the inner call's sooner 5 s
    assert.is_true(mine.deadline >= before + 20 * slow - 1 and mine.deadline <= os.time() + 20 * slow + 1,
      tostring(mine.deadline))
    assert.is_true(mine.time_left > 0 and mine.time_left <= 20 * slow)
    assert.is_true(inner.deadline < mine.deadline)
    assert.are.equal(math.floor(mine.deadline * 1000 + 0.5), mine.headers["x-deadline"])
    -- the second hop: the same trace with a new parent, the state, the chain; not the
    -- caller's own headers
    local trace_id = TRACEPARENT:sub(4, 35)
    assert.are.equal(trace_id, inner.headers.traceparent:sub(4, 35))
    assert.are_not.equal(TRACEPARENT, inner.headers.traceparent)
    assert.truthy(inner.headers.traceparent:match("^00%-%x+%-%x+%-01$"), inner.headers.traceparent)
    assert.are.equal("vendor=1", inner.headers.tracestate)
    assert.are.equal(first, inner.headers["x-call-chain"])
    assert.is_nil(inner.headers.tenant)
  end)

  it("a Node worker still serves a request with headers (the Node protocol ignores them)", function()
    local name = unique("ctx_node")
    local node = broker.node_worker(name, "echo")
    defer(function() node:kill() end)
    assert.are.equal("x", delegator:invoke({ headers = { traceparent = TRACEPARENT } }, name, "x"))
  end)

  it("refuses headers that are not {name = text, integer or boolean}", function()
    local function send(headers) return delegator:send({ headers = headers }, "x") end
    for _, headers in ipairs({ "x", { 1, 2 }, { a = {} }, { a = 1.5 }, { [("k"):rep(256)] = "v" },
      { ["a\0b"] = "v" }, { a = "v\0w" } }) do
      local ok, err = pcall(send, headers)
      assert.is_false(ok)
      assert.are.equal("BAD_ARGUMENT", err.code, tostring(err))
    end
  end)

  for _, ack in ipairs({ "late", "early" }) do
    it("a request whose deadline passed before its task could start is not run (ack = " .. ack .. ")", function()
      local name = unique("ctx_deadline")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      local runs = os.tmpname()
      defer(function() os.remove(runs) end)
      -- two at a time, but the first holds the loop for 3 s: the second is read after its deadline
      local host = support.host({ "spec/workers/cpu_bound.lua" }, { env = { WORKER_NAME = name,
        HEARTBEAT = "2", RUNS_FILE = runs, WORKER_CONCURRENCY = "2", WORKER_ACK = ack } })
      defer(function() host:kill() end)
      local long = delegator:send({ timeout = 20 * slow }, name, 3)
      delegate.sleep(0.5)
      local late = delegator:send({ timeout = 1 }, name, 0)
      assert.are.equal("computed", long:wait())
      local ok, err = pcall(late.wait, late)
      assert.is_false(ok)
      assert.are.equal("TIMEOUT", err.code)
      local count = select(2, (broker.read_file(runs) or ""):gsub("run\n", ""))
      assert.are.equal(1, count, "the late request did not run\n" .. host:output())
      assert(host:wait_for("its deadline had passed", 5 * slow, true), host:output())
      assert.are.equal(0, broker.queues()[name].unacked, "the late request was acked")
    end)
  end
end)

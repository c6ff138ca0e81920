-- Tasks run as coroutines on the loop: waiting inside a task (sleep, calling another worker)
-- yields to the loop instead of blocking it.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local delegate = require "amqp_delegate"

describe("tasks on the loop", function()
  local url, delegator, workers
  before_each(function()
    url = broker.url()
    workers = support.in_process_workers(url)
    delegator = delegate.delegator { url = url }:start()
  end)
  after_each(function()
    workers.stop_all()
    delegator:stop()
  end)

  local function serve(options) return workers.serve(options) end

  it("a task may sleep", function()
    serve { name = "tasks_sleeper", task = function(seconds)
      local started = os.clock()
      delegate.sleep(seconds)
      return seconds
    end }
    assert.are.equal(0.05, delegator:invoke("tasks_sleeper", 0.05))
  end)

  it("a task may call other workers: its calls yield to the loop that serves them", function()
    local inner = delegate.delegator { url = url }:start()
    serve { name = "tasks_adder", task = function(a, b) return a + b end }
    serve { name = "tasks_fanout", task = function(...)
      local total = 0
      for _, n in ipairs({ ... }) do total = inner:invoke("tasks_adder", total, n) end
      return total
    end }
    assert.are.equal(15, delegator:invoke("tasks_fanout", 1, 2, 3, 4, 5))
    inner:stop()
  end)

  it("a failing inner call surfaces in the outer task as an error it can catch", function()
    local inner = delegate.delegator { url = url }:start()
    serve { name = "tasks_catcher", task = function()
      local ok, err = pcall(inner.invoke, inner, "tasks_nobody_serves")
      return { ok = ok, code = err.code }
    end }
    assert.are.same({ ok = false, code = "NO_ROUTE" }, delegator:invoke("tasks_catcher"))
    inner:stop()
  end)

  it("a bare coroutine.yield in a task is an error the caller hears about", function()
    serve { name = "tasks_yielder", task = function() coroutine.yield() end }
    local ok, err = pcall(delegator.invoke, delegator, "tasks_yielder")
    assert.is_false(ok)
    assert.are.equal("TASK_FAILED", err.code)
    assert.matches("yielded outside amqp_delegate", err.message)
  end)

  it("stop waits for the task in hand, which still replies and acks", function()
    local started = false
    local name = support.unique("tasks_slow")
    local worker = serve { name = name, task = function(x)
      started = true
      delegate.sleep(0.3)
      return x
    end }
    local caller = broker.spawn(table.concat({ "node", broker.shell_quote(broker.root() .. "/spec/node/delegator.js"),
      "--url", broker.shell_quote(url), "--name", name, "'[\"done\"]'" }, " "))
    -- run the loop until the task has started, then stop the worker mid-task
    for _ = 1, 500 do
      delegate.sleep(0.02)
      if started then break end
    end
    assert.is_true(started)
    worker:stop()
    assert.are.equal(0, caller:wait_exit(10), caller:output())
    assert.are.equal('"done"\n', caller:output())
    assert.are.same({ ready = 0, unacked = 0, consumers = 0 }, broker.queues()[name])
  end)
end)

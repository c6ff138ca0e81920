-- Calls always end (issue 3) and many calls at once (issue 4): timeouts, pipelined calls,
-- waiting from plain Lua and from tasks.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local delegate = require "amqp_delegate"

local unique = support.unique

describe("calls", function()
  local url, delegator, workers
  before_each(function()
    url = broker.url()
    workers = support.in_process_workers(url)
    delegator = delegate.delegator { url = url }:start()
  end)
  after_each(function()
    workers.stop_all()
    pcall(delegator.stop, delegator)
  end)

  local function serve(options) return workers.serve(options) end

  local function sleeper(name, concurrency)
    return serve { name = name, concurrency = concurrency, task = function(seconds, value)
      delegate.sleep(seconds)
      return value
    end }
  end

  describe("timeouts", function()
    it("end a call with TIMEOUT naming the worker; the late reply is dropped and counted", function()
      local name = unique("calls_slow")
      sleeper(name)
      local ok, err = pcall(delegator.invoke, delegator, { timeout = 0.1 }, name, 0.4, "late")
      assert.is_false(ok)
      assert.are.equal("TIMEOUT", err.code)
      assert.matches("no reply from '" .. name .. "' after 0.1 s", err.message)
      assert.are.equal(0, delegator:stats().in_flight, "the pending entry is freed")
      delegate.sleep(0.6) -- the worker answers meanwhile
      local stats = delegator:stats()
      assert.are.equal(1, stats.timed_out)
      assert.are.equal(1, stats.unknown_replies)
      assert.are.equal("on time", delegator:invoke(name, 0, "on time"))
    end)

    it("take the delegator's default, and a per-call override wins", function()
      local name = unique("calls_default")
      sleeper(name)
      local impatient = delegate.delegator { url = url, timeout = 0.1 }:start()
      local ok, err = pcall(impatient.invoke, impatient, name, 0.3, "x")
      assert.is_false(ok)
      assert.are.equal("TIMEOUT", err.code)
      assert.are.equal("y", impatient:invoke({ timeout = 5 }, name, 0.3, "y"))
      impatient:stop()
    end)

    it("expire a request nobody took, so no worker serves it late", function()
      local name = unique("calls_expire")
      sleeper(name):stop() -- declares the queue, then nobody serves it
      local unchecked = support.delegator({ check_workers = false }) -- else: NO_WORKER at once
      finally(function() unchecked:stop() end)
      local ok, err = pcall(unchecked.invoke, unchecked, { timeout = 0.2 }, name, 0, "stale")
      assert.are.equal("TIMEOUT", err.code)
      delegate.sleep(0.3)
      assert.are.equal(0, broker.queues()[name].ready, "the broker dropped the expired request")
    end)

    it("refuse a bad timeout option", function()
      local ok, err = pcall(delegator.invoke, delegator, { timeout = -1 }, "x")
      assert.are.equal("BAD_ARGUMENT", err.code)
      ok, err = pcall(delegator.invoke, delegator, { tiemout = 1 }, "x")
      assert.matches("unknown option 'tiemout'", err.message)
    end)
  end)

  describe("pipelined", function()
    it("send returns at once; wait and wait_all collect the results in order", function()
      local name = unique("calls_adder")
      serve { name = name, concurrency = 16, task = function(a, b) return a + b end }
      local calls = {}
      for i = 1, 200 do calls[i] = delegator:send(name, i, 1) end
      assert.is_true(delegator:stats().in_flight > 0)
      assert.are.equal(3, calls[2]:wait())
      assert.are.equal(3, calls[2]:wait(), "a result can be read again")
      local results = delegate.wait_all(calls)
      assert.are.equal(200, results.n)
      for i = 1, 200 do assert.are.equal(i + 1, results[i]) end
      assert.is_true(calls[200]:done())
      assert.are.equal(0, delegator:stats().in_flight)
    end)

    it("wait_all waits for every call, then raises the first error", function()
      local name = unique("calls_mixed")
      serve { name = name, task = function(x) assert(x ~= 2, "two is bad") return x end }
      local calls = { delegator:send(name, 1), delegator:send(name, 2), delegator:send(name, 3) }
      local ok, err = pcall(delegate.wait_all, calls)
      assert.is_false(ok)
      assert.are.equal("TASK_FAILED", err.code)
      assert.matches("two is bad", err.message)
      assert.is_true(calls[3]:done())
      assert.are.equal(3, calls[3]:wait())
    end)

    it("a handle dropped without waiting costs nothing once its reply came", function()
      local name = unique("calls_dropped")
      serve { name = name, task = function(x) return x end }
      for i = 1, 50 do delegator:send(name, i) end
      collectgarbage()
      assert.are.equal(7, delegator:invoke(name, 7))
      delegate.sleep(0.05)
      assert.are.equal(0, delegator:stats().in_flight)
    end)

    it("inside a task, calls sent together run at once", function()
      local name, fan = unique("calls_parallel"), unique("calls_fan")
      local running, most = 0, 0
      serve { name = name, concurrency = 4, task = function(x)
        running = running + 1
        most = math.max(most, running)
        delegate.sleep(0.1)
        running = running - 1
        return x * 10
      end }
      local inner = delegate.delegator { url = url }:start()
      serve { name = fan, task = function(...)
        local calls = {}
        for i, x in ipairs({ ... }) do calls[i] = inner:send(name, x) end
        local results = delegate.wait_all(calls)
        return results[1] + results[2] + results[3] + results[4]
      end }
      assert.are.equal(100, delegator:invoke(fan, 1, 2, 3, 4))
      assert.are.equal(4, most, "the four calls ran at the same time")
      inner:stop()
    end)
  end)

  it("a worker with concurrency N runs N tasks at once in one process", function()
    local name = unique("calls_concurrency")
    local running, most = 0, 0
    serve { name = name, concurrency = 8, task = function()
      running = running + 1
      most = math.max(most, running)
      delegate.sleep(0.05)
      running = running - 1
      return most
    end }
    local calls = {}
    for i = 1, 32 do calls[i] = delegator:send(name) end
    delegate.wait_all(calls)
    assert.are.equal(8, most)
  end)

  it("Ctrl-C (SIGINT) ends a plain wait with INTERRUPTED and leaves the delegator usable", function()
    local script = os.tmpname()
    local file = assert(io.open(script, "w"))
    file:write(string.format([[
      local delegate = require "amqp_delegate"
      local url = %q
      local w = delegate.worker { name = "calls_interrupt", url = url, task = function(s, v)
        delegate.sleep(s)
        return v
      end }:start()
      local d = delegate.delegator { url = url }:start()
      io.stdout:write("waiting\n"); io.stdout:flush()
      local ok, err = pcall(d.invoke, d, "calls_interrupt", 5, "slow")
      print("first", ok, err.code)
      print("second", d:invoke("calls_interrupt", 0, "fast"))
      d:stop()
      w:stop()
    ]], url))
    file:close()
    local process = broker.spawn("lua5.4 " .. broker.shell_quote(script))
    assert.is_true((process:wait_for("waiting\n", 10, true)))
    broker.sleep(0.3)
    process:signal("INT")
    assert.are.equal(0, process:wait_exit(15), process:output())
    assert.matches("first\tfalse\tINTERRUPTED", process:output())
    assert.matches("second\tfast", process:output())
    os.remove(script)
  end)
end)

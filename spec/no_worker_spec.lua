-- Workers you can see: before the first call to a name, and after a call to it timed out, the
-- delegator asks the broker (a passive declare on a channel of its own) whether a worker
-- consumes the name's queue. A call to a queue nobody consumes ends NO_WORKER at once and is
-- never enqueued; names seen served cost nothing more; delegator:status(name) says what the
-- broker knows (exists, consumers, waiting).
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local defer = support.deferrer(function(fn) finally(fn) end)
local delegate = require "amqp_delegate"

local unique = support.unique
local slow = support.slow

local function code_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return type(err) == "table" and err.code or ("raw: " .. tostring(err)), err
end

-- messages ready in queue `name` (nil: no such queue)
local function ready_in(name)
  local facts = broker.queues()[name]
  return facts and facts.ready
end

describe("a delegator that checks for workers", function()
  local delegator, workers
  before_each(function()
    delegator = support.delegator({ timeout = 20 * slow })
    workers = support.in_process_workers(broker.url())
  end)
  after_each(function()
    workers.stop_all()
    pcall(delegator.stop, delegator)
  end)

  -- a queue that outlives its worker: served once, then the worker stops
  local function abandoned_queue(prefix)
    local name = unique(prefix)
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    local worker = workers.serve({ name = name, task = function(x) return x end })
    worker:stop()
    return name
  end

  it("ends a call to a queue nobody consumes with NO_WORKER at once, leaving nothing in the queue", function()
    local name = abandoned_queue("nw_gone")
    local code, err = code_of(delegator.invoke, delegator, name, 1)
    assert.are.equal("NO_WORKER", code, tostring(err))
    assert.truthy(tostring(err):find(name, 1, true), tostring(err))
    assert.truthy(err.message:find("no consumer", 1, true), err.message)
    assert.are.equal(0, ready_in(name), "the request was never enqueued")
    local stats = delegator:stats()
    assert.are.equal(1, stats.no_worker)
    assert.are.equal(0, stats.sent)
    assert.are.equal(0, stats.timed_out)
  end)

  it("asks the broker once per served name: the calls after the first go out at once", function()
    local name = unique("nw_served")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    workers.serve({ name = name, task = function(x) return x * 2 end })
    for i = 1, 50 do assert.are.equal(i * 2, delegator:invoke(name, i)) end
    local pending = {}
    for i = 1, 20 do pending[i] = delegator:send(name, i) end
    for i = 1, 20 do assert.are.equal(i * 2, pending[i]:wait()) end
    assert.are.equal(1, delegator:stats().worker_checks)
  end)

  it("calls sent together from a task before the first answer share one question, all answered", function()
    local name = abandoned_queue("nw_burst")
    local burst = unique("nw_burster")
    defer(function() pcall(broker.ctl, "delete_queue", burst) end)
    workers.serve({ name = burst, task = function()
      local pending, codes = {}, {}
      for i = 1, 10 do pending[i] = delegator:send(name, i) end -- a task's sends do not wait
      for i = 1, 10 do
        local ok, err = pcall(pending[i].wait, pending[i])
        codes[i] = not ok and err.code or "answered"
      end
      return codes
    end })
    local checks = delegator:stats().worker_checks
    local codes = delegator:invoke(burst)
    for i = 1, 10 do assert.are.equal("NO_WORKER", codes[i]) end
    assert.are.equal(checks + 1 + 1, delegator:stats().worker_checks, "one for the burster, one for the burst")
  end)

  it("a send from plain Lua puts the request on its way before it returns, even the first", function()
    local name = unique("nw_plain_send")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    local host = support.host({ "spec/workers/sleeper.lua" }, { env = { WORKER_NAME = name } })
    defer(function() host:kill() end)
    local call = delegator:send(name, 0, "on its way")
    -- the loop does not run while this process only watches the host's output
    assert.is_true((host:wait_for("task on its way started", 10 * slow, true)), host:output())
    assert.are.equal("on its way", call:wait())
  end)

  it("asks again after a call timed out: the next call to a worker that left ends NO_WORKER", function()
    local name = unique("nw_left")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    local worker = workers.serve({ name = name, task = function(x) return x end })
    assert.are.equal(7, delegator:invoke(name, 7))
    worker:stop()
    -- the name was seen served: this call goes out and waits for its timeout
    assert.are.equal("TIMEOUT", code_of(delegator.invoke, delegator, { timeout = 0.5 }, name, 8))
    assert.are.equal("NO_WORKER", code_of(delegator.invoke, delegator, name, 9))
    assert.are.equal(2, delegator:stats().worker_checks)
  end)

  it("still says NO_ROUTE for a name no queue has (and does not leave the call waiting)", function()
    local name = unique("nw_never")
    local code, err = code_of(delegator.invoke, delegator, name)
    assert.are.equal("NO_ROUTE", code, tostring(err))
    assert.are.equal(1, delegator:stats().worker_checks)
  end)

  it("lets a call with retry wait in the queue for a worker that comes back", function()
    local name = abandoned_queue("nw_retry")
    local call = delegator:send({ retry = 1 }, name, 5)
    delegate.sleep(0.3)
    assert.are.equal(1, ready_in(name), "the request waits in the queue")
    workers.serve({ name = name, task = function(x) return x + 1 end })
    assert.are.equal(6, call:wait())
  end)

  it("check_workers = false sends without asking (a work queue whose workers start later)", function()
    local name = abandoned_queue("nw_off")
    local unchecked = support.delegator({ timeout = 20 * slow, check_workers = false })
    defer(function() pcall(unchecked.stop, unchecked) end)
    local call = unchecked:send(name, 5)
    delegate.sleep(0.3)
    workers.serve({ name = name, task = function(x) return x + 1 end })
    assert.are.equal(6, call:wait())
    assert.are.equal(0, unchecked:stats().worker_checks)
  end)

  it("a worker that starts after a NO_WORKER is called by the next call", function()
    local name = abandoned_queue("nw_back")
    assert.are.equal("NO_WORKER", code_of(delegator.invoke, delegator, name, 1))
    workers.serve({ name = name, task = function(x) return x + 1 end })
    assert.are.equal(2, delegator:invoke(name, 1))
  end)

  describe("status(name)", function()
    it("counts a name's consumers", function()
      local name = unique("nw_status")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      workers.serve({ name = name, task = function(x) return x end })
      workers.serve({ name = name, task = function(x) return x end })
      assert.are.same({ name = name, exists = true, consumers = 2, waiting = 0 }, delegator:status(name))
    end)

    it("counts the requests waiting in a queue nobody consumes", function()
      local name = abandoned_queue("nw_waiting")
      local unchecked = support.delegator({ timeout = 20 * slow, check_workers = false })
      defer(function() pcall(unchecked.stop, unchecked) end)
      for i = 1, 3 do unchecked:send(name, i) end
      assert(broker.eventually(function() return ready_in(name) == 3 end, 10 * slow, 0.05))
      assert.are.same({ name = name, exists = true, consumers = 0, waiting = 3 }, delegator:status(name))
    end)

    it("says a queue does not exist, and the next question still gets its answer", function()
      local missing, present = unique("nw_missing"), unique("nw_present")
      defer(function() pcall(broker.ctl, "delete_queue", present) end)
      workers.serve({ name = present, task = function(x) return x end })
      assert.are.same({ name = missing, exists = false, consumers = 0, waiting = 0 }, delegator:status(missing))
      assert.are.equal(1, delegator:status(present).consumers)
      assert.are.equal(false, delegator:status(missing).exists)
      assert.are.equal(1, delegator:invoke(present, 1), "the delegator's own channel is untouched")
    end)

    it("works from a task and a coroutine inside it; CANNOT_WAIT in a gsub callback", function()
      local name = unique("nw_in_task")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      workers.serve({ name = name, task = function(how)
        if how == "task" then return delegator:status(name).consumers end
        if how == "coroutine" then
          return coroutine.wrap(function() return delegator:status(name).consumers end)()
        end
        local ok, err = pcall(string.gsub, "x", ".", function() delegator:status(name) end)
        return { ok = ok, code = type(err) == "table" and err.code or tostring(err) }
      end })
      assert.are.equal(1, delegator:invoke(name, "task"))
      local report = delegator:invoke(name, "gsub")
      assert.are.same({ ok = false, code = "CANNOT_WAIT" }, report)
      assert.are.equal(1, delegator:invoke(name, "task"), "still serving")
    end)

    it("refuses a bad name, and before start and after stop", function()
      for _, bad in ipairs({ {}, "", string.rep("n", 300), "a\0b", 42 }) do
        assert.are.equal("BAD_ARGUMENT", code_of(delegator.status, delegator, bad), tostring(bad))
      end
      assert.are.equal("BAD_ARGUMENT", code_of(delegator.status, delegator))
      local idle = delegate.delegator({ url = broker.url() })
      assert.are.equal("NOT_STARTED", code_of(idle.status, idle, "x"))
      delegator:stop()
      assert.are.equal("NOT_STARTED", code_of(delegator.status, delegator, "x"))
    end)

    it("a broker that stops answering: the question ends after connect_timeout, the delegator goes on", function()
      local port = support.free_port()
      local forwarder = support.forward(port)
      defer(function() forwarder:kill() end)
      assert(forwarder:wait_for("listening", 10 * slow, true), forwarder:output())
      local frozen = delegate.delegator({ url = "amqp://guest:guest@127.0.0.1:" .. port,
        timeout = 60, connect_timeout = 1.5 * slow, heartbeat = 0 }):start()
      defer(function() pcall(frozen.close, frozen) end)
      forwarder:signal("STOP")
      defer(function() pcall(forwarder.signal, forwarder, "CONT") end)
      local code, err = code_of(frozen.status, frozen, "anything")
      assert.are.equal("TIMEOUT", code, tostring(err))
      assert.truthy(err.message:find("did not answer", 1, true), err.message)
      forwarder:signal("CONT")
      assert.are.equal(false, frozen:status(unique("nw_thawed")).exists)
    end)
  end)

  describe("amqp-delegate status", function()
    local q = broker.shell_quote
    local function status(...) return support.command("status", "--url", broker.url(), ...) end
    -- the fields of NAME's row: workers, waiting, state
    local function row(out, name)
      for line in out:gmatch("[^\n]+") do
        local first, workers, waiting, state = line:match("^(%S+)%s+(%S+)%s+(%S+)%s+(.-)%s*$")
        if first == name then return { workers = workers, waiting = waiting, state = state } end
      end
    end

    it("prints each name's workers and waiting requests, and exits 0 when every name is served", function()
      local name = unique("nw_cli")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      workers.serve({ name = name, task = function(x) return x end })
      workers.serve({ name = name, task = function(x) return x end })
      -- the workers are in this process: its loop must run while the command asks
      local command = broker.spawn(table.concat({ q(support.host_binary()), "status", "-u",
        q(broker.url()), q(name) }, " "))
      defer(function() command:kill() end)
      local deadline = broker.now() + 20 * slow
      while command:status() == nil and broker.now() < deadline do delegate.sleep(0.05) end
      local out = command:output()
      assert.are.equal(0, command:status(), out)
      assert.truthy(out:find("^NAME%s+WORKERS%s+WAITING%s+STATE\n"), out)
      assert.are.same({ workers = "2", waiting = "0", state = "served" }, row(out, name), out)
    end)

    it("names the worker files' workers; a name without a worker or a queue exits 1", function()
      local idle = abandoned_queue("nw_cli_idle")
      local missing = unique("nw_cli_missing")
      local file = os.tmpname() .. ".lua"
      defer(function() os.remove(file) end)
      local handle = assert(io.open(file, "w"))
      handle:write(string.format("return { { name = %q, task = print }, { name = %q, task = print } }\n",
        idle, missing))
      handle:close()
      local out, code, err = status(file)
      assert.are.equal(1, code, out .. err)
      assert.are.same({ workers = "0", waiting = "0", state = "NO_WORKER: no worker consumes its queue" },
        row(out, idle), out)
      assert.are.same({ workers = "-", waiting = "-", state = "NO_ROUTE: no queue (nobody has served it)" },
        row(out, missing), out)
    end)

    it("refuses no operand (2), a file that returns no worker table (1), an unreachable broker (3)", function()
      local _, code, err = status()
      assert.are.equal(2, code, err)
      assert.truthy(err:find("NAME or FILE", 1, true), err)
      local file = os.tmpname() .. ".lua"
      defer(function() os.remove(file) end)
      local handle = assert(io.open(file, "w"))
      handle:write("local x = 1\n")
      handle:close()
      _, code, err = status(file)
      assert.are.equal(1, code, err)
      assert.truthy(err:find(file, 1, true) and err:find("not a worker table", 1, true), err)
      assert.is_falsy(err:find("traceback", 1, true), err)
      local out
      out, code, err = support.command("status", "-u", "amqp://guest:guest@127.0.0.1:1", "x")
      assert.are.equal(3, code, out .. err)
      assert.truthy(err:find("CONNECTION_FAILED", 1, true), err)
    end)
  end)
end)

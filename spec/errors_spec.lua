-- Errors a user can pcall and read: task failures, lifecycle mistakes, bad URLs and credentials.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local delegate = require "amqp_delegate"

local function failure(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal("table", type(err), tostring(err))
  return err
end

describe("task errors", function()
  local delegator, host
  setup(function()
    host = support.host({ "spec/workers/failing.lua", "scripts/adder.lua" })
    delegator = support.delegator()
  end)
  teardown(function()
    delegator:stop()
    broker.kill_all()
  end)

  it("raise TASK_FAILED with the Lua error's message in the caller", function()
    local err = failure(delegator.invoke, delegator, "lua_fail", "out of stock")
    assert.are.equal("TASK_FAILED", err.code)
    assert.matches("failing%.lua:3: out of stock", err.message)
    assert.are.equal("TASK_FAILED: " .. err.message, tostring(err))
    assert.falsy(tostring(err):find("\n"), "prints as one line")
  end)

  it("keep a task's own error code when it raises {code=, message=}", function()
    local err = failure(delegator.invoke, delegator, "lua_fail_coded")
    assert.are.equal("NOT_FOUND", err.code)
    assert.are.equal("no such user", err.message)
  end)

  it("raise BAD_RESULT when the result cannot be sent as JSON", function()
    local err = failure(delegator.invoke, delegator, "lua_bad_result")
    assert.are.equal("BAD_RESULT", err.code)
    assert.matches("cannot encode function", err.message)
  end)

  it("leave the host serving, every request acked", function()
    for _ = 1, 5 do failure(delegator.invoke, delegator, "lua_fail") end
    assert.are.equal(3, delegator:invoke("adder", 1, 2))
    assert.is_nil(host:status())
    local queue = broker.queues().lua_fail
    assert.are.same({ ready = 0, unacked = 0, consumers = 1 }, queue)
  end)

  it("raise BAD_ARGUMENT before sending when arguments cannot be JSON", function()
    local err = failure(delegator.invoke, delegator, "adder", print)
    assert.are.equal("BAD_ARGUMENT", err.code)
    assert.matches("arguments for 'adder' cannot be sent as JSON", err.message)
  end)

  it("end at once with NO_ROUTE when no worker serves the name", function()
    local err = failure(delegator.invoke, delegator, "nobody_serves_this")
    assert.are.equal("NO_ROUTE", err.code)
    assert.matches("no worker serves 'nobody_serves_this'", err.message)
  end)
end)

describe("lifecycle errors", function()
  local task = function() end

  it("a worker without a name: MISSING_NAME", function()
    assert.are.equal("MISSING_NAME", failure(delegate.worker, { task = task }).code)
    assert.are.equal("MISSING_NAME", failure(delegate.worker, { name = "", task = task }).code)
  end)

  it("a worker without a task: MISSING_TASK", function()
    assert.are.equal("MISSING_TASK", failure(delegate.worker, { name = "x" }).code)
    assert.are.equal("MISSING_TASK", failure(delegate.worker, { name = "x", task = 42 }).code)
  end)

  it("a misspelt option: BAD_ARGUMENT naming it", function()
    local err = failure(delegate.worker, { name = "x", task = task, ulr = "amqp://" })
    assert.are.equal("BAD_ARGUMENT", err.code)
    assert.matches("unknown option 'ulr'", err.message)
    assert.are.equal("BAD_ARGUMENT", failure(delegate.delegator, "amqp://localhost").code)
  end)

  it("start twice: ALREADY_STARTED", function()
    local worker = delegate.worker { name = "lifecycle", task = task, url = broker.url() }
    worker:start()
    assert.are.equal("ALREADY_STARTED", failure(worker.start, worker).code)
    worker:stop()
    local delegator = support.delegator()
    assert.are.equal("ALREADY_STARTED", failure(delegator.start, delegator).code)
    delegator:stop()
  end)

  it("stop or invoke before start: NOT_STARTED", function()
    local worker = delegate.worker { name = "lifecycle", task = task, url = broker.url() }
    assert.are.equal("NOT_STARTED", failure(worker.stop, worker).code)
    local delegator = delegate.delegator { url = broker.url() }
    assert.are.equal("NOT_STARTED", failure(delegator.stop, delegator).code)
    assert.are.equal("NOT_STARTED", failure(delegator.invoke, delegator, "adder", 1, 2).code)
  end)

  it("stop, then start again, works", function()
    local delegator = support.delegator()
    delegator:stop()
    assert.are.equal("NOT_STARTED", failure(delegator.invoke, delegator, "adder").code)
    delegator:start()
    delegator:stop()
  end)
end)

describe("connection errors", function()
  it("a URL that is not AMQP: BAD_URL", function()
    local err = failure(delegate.delegator, { url = "http://localhost/" })
    assert.are.equal("BAD_URL", err.code)
    assert.matches("cannot parse URL 'http://localhost/'", err.message)
  end)

  it("an unreachable broker: CONNECTION_FAILED naming host and port, never the password", function()
    local delegator = delegate.delegator { url = "amqp://guest:t0p-s3cret@127.0.0.1:1/" }
    local err = failure(delegator.start, delegator)
    assert.are.equal("CONNECTION_FAILED", err.code)
    assert.matches("cannot connect to 127%.0%.0%.1:1", err.message)
    assert.matches("amqp://guest:%*%*%*@127%.0%.0%.1:1/", err.message)
    assert.falsy(tostring(err):find("t0p-s3cret", 1, true))
  end)

  it("an unknown host: CONNECTION_FAILED naming it", function()
    local delegator = delegate.delegator { url = "amqp://no-such-host.invalid:5672" }
    local err = failure(delegator.start, delegator)
    assert.are.equal("CONNECTION_FAILED", err.code)
    assert.matches("no%-such%-host%.invalid:5672", err.message)
  end)

  it("refused credentials: AUTH_FAILED naming host, port and user, never the password", function()
    local url = broker.url():gsub("guest:guest@", "guest:wr0ng-pass@")
    local worker = delegate.worker { name = "auth", task = function() end, url = url }
    local err = failure(worker.start, worker)
    assert.are.equal("AUTH_FAILED", err.code)
    assert.matches("127%.0%.0%.1:" .. broker.port(), err.message)
    assert.matches("as 'guest'", err.message)
    assert.falsy(tostring(err):find("wr0ng-pass", 1, true))
  end)
end)

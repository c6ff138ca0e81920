-- Review of 7a58019..f0d1bbb (URL lists, confirms, retries, headers, context, keepalive,
-- result cache, ack = early). Each `it` is a finding of the review: it FAILS on the code
-- reviewed and should pass once the finding is fixed. Child processes run lua5.4 (from
-- PATH, so the instrumented runs wrap them) against $AMQP_DELEGATE_BUILD.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local defer = support.deferrer(function(fn) finally(fn) end)

local q = broker.shell_quote
local slow = support.slow
local unique = support.unique
local set_memory_alarm, connection_of = support.set_memory_alarm, support.connection_of

local scripts = {}
local function script(code)
  local dir = os.getenv("AMQP_DELEGATE_TMPDIR")
  local path = (dir and dir ~= "" and dir or "/tmp") .. "/review_" .. unique("s") .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write('local delegate = require "amqp_delegate"\nlocal URL = arg[1]\n', code)
  f:close()
  scripts[#scripts + 1] = path
  return path
end

-- Runs code in a child lua5.4 to its end (killed after seconds): output (stdout and stderr),
-- exit status.
local function run_lua(seconds, code, ...)
  local words = { "timeout", "-k", "2", tostring(math.ceil(seconds * slow)), "lua5.4",
    q(script(code)), q(broker.url()) }
  for _, a in ipairs({ ... }) do words[#words + 1] = q(a) end
  local out, status, err = broker.run(table.concat(words, " ") .. " </dev/null")
  return (out or "") .. (err or ""), status
end

local function spawn_lua(code, ...)
  local words = { "lua5.4", q(script(code)), q(broker.url()) }
  for _, a in ipairs({ ... }) do words[#words + 1] = q(a) end
  return broker.spawn(table.concat(words, " "))
end

local function count_lines(path, text)
  return select(2, (broker.read_file(path) or ""):gsub(text, ""))
end

describe("review findings", function()
  after_each(function()
    for _, path in ipairs(scripts) do os.remove(path) end
    scripts = {}
  end)

  -- lua/amqp_delegate.c headers_option: a luaL_Buffer used across lua_next; once the
  -- list outgrows the buffer's first 1 KiB, prepbuffsize takes the value on the top of the
  -- stack for its placeholder, and the lua_pop that follows closes (frees) the new box.
  it("headers of 1.5 KiB (the documented limit is 4096 bytes) reach the task intact", function()
    local name = unique("review_headers")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    local out, status = run_lua(30, [[
local w = delegate.worker{url = URL, name = arg[2], task = function() return delegate.context().headers end}
w:start()
local d = delegate.delegator{url = URL, timeout = 10}
d:start()
local big = string.rep("x", 1500)
local r = d:invoke({headers = {a = big, b = "second", c = "third"}}, arg[2])
print("result", r.a == big, r.b, r.c)
w:stop() d:stop()
]], name)
    assert.are.equal(0, status, "the process died (status " .. tostring(status) .. "):\n" .. out)
    assert.truthy(out:find("result\ttrue\tsecond\tthird", 1, true), out)
  end)

  -- host/transport/url.c url_list_add splits at every comma, also inside the password
  -- (RFC 3986 allows ',' in userinfo): the fragment's parse error shows the password.
  it("a password with a comma is never shown in an error", function()
    local delegate = require "amqp_delegate"
    for _, url in ipairs({ "amqp://user:top,secret@host/", "amqp://user:topsecret,x@host/" }) do
      local ok, e = pcall(delegate.delegator, { url = url })
      local message = type(e) == "table" and e.message or tostring(e)
      assert.falsy(message:find("secret", 1, true), "the password shows: " .. message)
      -- and it was a valid URL before the URL lists came
      assert.is_true(ok, message)
    end
  end)

  it("the CLI does not print part of a password taken from AMQP_URL", function()
    local url = broker.url():gsub("^(amqp://[^:]+:)([^@]*)@", "%1top,secret@")
    local out, _, err = broker.run("AMQP_URL=" .. q(url) .. " timeout 20 " .. q(support.host_binary())
      .. " call nobody_review")
    out = out .. err
    assert.falsy(out:find("top", 1, true), out)
  end)

  -- host/runtime/worker.c drained(): a stop waits for unconfirmed == 0; a reply held during
  -- a memory alarm is never confirmed until the alarm clears: stop() waits without a deadline.
  -- (Before this change the stop completed and the request was redelivered.)
  it("worker:stop() returns within a bound while its last reply is held by a memory alarm", function()
    local name = unique("review_stop_alarm")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    local flag, alarm_on = os.tmpname(), os.tmpname()
    os.remove(flag)
    os.remove(alarm_on)
    local process = spawn_lua([[
local name, flag, alarm_on = arg[2], arg[3], arg[4]
-- the task ends once the alarm is on (a fixed sleep raced with a slow rabbitmqctl)
local w = delegate.worker{url = URL, name = name, task = function()
  while not io.open(alarm_on) do delegate.sleep(0.05) end
  print("finished") io.stdout:flush() return 1 end}
w:start()
local d = delegate.delegator{url = URL, timeout = 120}
d:start()
d:send(name)
print("sent") io.stdout:flush()
while not io.open(flag) do delegate.sleep(0.1) end
local t0 = os.time()
w:stop()
print("stopped after " .. (os.time() - t0)) io.stdout:flush()
d:stop()
]], name, flag, alarm_on)
    defer(function()
      os.remove(flag)
      os.remove(alarm_on)
      process:kill()
      set_memory_alarm(false)
    end)
    assert(process:wait_for("sent\n", 10 * slow, true), process:output())
    set_memory_alarm(true)
    assert(io.open(alarm_on, "w")):close()
    -- the task finishes while the broker blocks publishing: its reply is held
    assert(process:wait_for("finished\n", 10 * slow, true), process:output())
    assert.truthy(process:output():find("blocks publishing", 1, true), process:output())
    assert(io.open(flag, "w")):close()
    local stopped = process:wait_for("stopped after", 15 * slow, true)
    assert.is_truthy(stopped, "stop() still waits after 15 s of alarm\n" .. process:output())
  end)

  -- host/runtime/worker.c on_request / answer_from_cache: the kept result exists only once
  -- the task ended; a request redelivered (connection lost) while its task still runs on this
  -- host starts a second task.
  it("a request redelivered while its task still runs on this host does not run again", function()
    local name = unique("review_rerun")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    local runs = os.tmpname()
    defer(function() os.remove(runs) end)
    local worker = spawn_lua([[
local name, runs = arg[2], arg[3]
local w = delegate.worker{url = URL, name = name, reconnect_max = 0.5, task = function(x)
  local f = io.open(runs, "a") f:write("run\n") f:close()
  delegate.sleep(4)
  return x * 2
end}
w:start()
print("ready") io.stdout:flush()
delegate.sleep(60)
]], name, runs)
    defer(function() worker:kill() end)
    assert(worker:wait_for("ready\n", 10 * slow, true), worker:output())
    local delegate = require "amqp_delegate"
    local d = delegate.delegator({ url = broker.url(), timeout = 30 * slow }):start()
    defer(function() pcall(d.stop, d) end)
    local call = d:send(name, 21)
    assert(broker.eventually(function() return count_lines(runs, "run\n") == 1 end, 10 * slow, 0.05))
    local connection = assert(broker.eventually(function() return connection_of(worker:pid()) end,
      10 * slow, 0.2), "the worker's connection")
    broker.ctl("close_connection", connection, "closed by review_findings_spec")
    assert.are.equal(42, call:wait())
    broker.sleep(5)
    assert.are.equal(1, count_lines(runs, "run\n"), "the task ran twice on one host\n" .. worker:output())
  end)

  -- host/cli/shell.c execute(): lua_sethook(L, NULL, 0, 0) after each line takes the
  -- keepalive count hook off the main thread: from the second line on, Lua that computes
  -- longer than the heartbeat loses the connection.
  it("the shell keeps its connections through a CPU-bound second line", function()
    local input = os.tmpname()
    defer(function() os.remove(input) end)
    local f = assert(io.open(input, "w"))
    f:write('d = require("amqp_delegate").delegator{heartbeat = 2, url = os.getenv("AMQP_URL")}; d:start(); print("started")\n')
    f:write('local t = os.clock(); while os.clock() - t < 12 do end; print("spun")\n')
    f:write('require("amqp_delegate").sleep(1); print("done")\n')
    f:close()
    local out, _, err = broker.run("AMQP_URL=" .. q(broker.url()) .. " timeout 60 "
      .. q(support.host_binary()) .. " shell < " .. q(input))
    out = out .. err
    assert.truthy(out:find("done", 1, true), out)
    assert.falsy(out:find("CONNECTION_LOST", 1, true), out)
  end)
  -- host/runtime/worker.c on_request: a request past its x-deadline was acked and dropped
  -- without a reply, logged at DEBUG only; and x-deadline was an ordinary user header (a
  -- caller whose x-deadline is in seconds lost every request). Now x-deadline comes only from
  -- the call's timeout, a value that is no time in ms since the epoch is no deadline, and a
  -- late request is answered TIMEOUT (context_spec covers the reply).
  it("x-deadline is not a header a caller can set", function()
    local delegate = require "amqp_delegate"
    local d = delegate.delegator({ url = broker.url() }):start()
    defer(function() pcall(d.stop, d) end)
    local ok, err = pcall(d.send, d, { timeout = 0, headers = { ["x-deadline"] = os.time() + 30 } }, "x")
    assert.is_false(ok)
    assert.are.equal("BAD_ARGUMENT", err.code)
  end)

  -- host/runtime/delegator.c confirmed(): a nacked request with retries left goes again at
  -- once (a returned one waits 200 ms): 20 calls with retry = 100 to a full queue made 2020
  -- publishes in well under a second.
  it("a refused (nacked) request waits before it goes again", function()
    local delegate = require "amqp_delegate"
    local name = unique("review_full")
    broker.ctl("set_policy", name, "^" .. name .. "$", '{"max-length":0,"overflow":"reject-publish"}',
      "--apply-to", "queues")
    defer(function()
      pcall(broker.ctl, "clear_policy", name)
      pcall(broker.ctl, "delete_queue", name)
    end)
    local w = delegate.worker({ url = broker.url(), name = name, task = function() return 1 end }):start()
    w:stop() -- the queue stays, full by the policy
    local d = delegate.delegator({ url = broker.url() }):start()
    defer(function() pcall(d.stop, d) end)
    local t0 = os.time()
    local ok, e = pcall(d.invoke, d, { retry = 5 }, name)
    assert.is_false(ok)
    assert.are.equal("NOT_CONFIRMED", e.code)
    assert.are.equal(5, d:stats().retried)
    assert.is_true(os.time() - t0 >= 1, "5 re-sends went out within the same second")
  end)
end)

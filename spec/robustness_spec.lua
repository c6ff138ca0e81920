-- Robustness: broker refusals that raise instead of crashing, waits from places that cannot
-- yield, retries after a lost connection, silent peers, absurd timeouts, lifecycle calls from
-- tasks and hooks, one connection per process, a broker in memory alarm, closed standard
-- streams, exit codes of `run`, oversized results, and signals during a CPU-bound task.
--
-- Whatever could hang or crash runs in a child process (a host, or a plain lua5.4 script
-- under `timeout`) and is asserted with a deadline, so that a hang fails a test instead of
-- stopping the suite. Waits are multiplied by support.slow (valgrind), assertions are not.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote
local unique = support.unique
local slow = support.slow
local ROOT = broker.root()

-- ------------------------------------------------------------------ helpers

-- Small tools every child script starts with. arg[1] is always the broker URL.
local PREAMBLE = [[
local delegate = require "amqp_delegate"
local URL = arg[1]
local function now()
  local f = assert(io.open("/proc/uptime", "r"))
  local t = f:read("n")
  f:close()
  return t
end
local function out(...)
  local words = table.pack(...)
  for i = 1, words.n do words[i] = tostring(words[i]) end
  io.stdout:write(table.concat(words, " "), "\n")
  io.stdout:flush()
end
local function code_of(err)
  if type(err) == "table" then return err.code end
  return "raw:" .. tostring(err)
end
local function message_of(err)
  if type(err) == "table" then return err.message end
  return tostring(err)
end
]]

local scripts = {} -- temp files to remove in after_each

local function lua_file(code)
  local path = os.tmpname()
  local dir = os.getenv("AMQP_DELEGATE_TMPDIR")
  if dir and dir ~= "" then
    local moved = dir .. "/" .. path:match("[^/]+$") .. ".lua"
    if os.rename(path, moved) then path = moved end
  else
    os.remove(path)
    path = path .. ".lua"
  end
  local f = assert(io.open(path, "w"))
  -- a script may begin with a part that must run before the module is loaded
  local before, after = code:match("^%-%- before require\n(.-)\n%-%- after require\n(.*)$")
  if before then f:write(before, "\n", PREAMBLE, after) else f:write(PREAMBLE, code) end
  f:close()
  scripts[#scripts + 1] = path
  return path
end

local function lua_command(code, ...)
  -- lua5.4 from PATH: the instrumented runs put their wrapper (valgrind, ASan) first there
  local words = { "lua5.4", q(lua_file(code)), q(broker.url()) }
  for _, a in ipairs({ ... }) do words[#words + 1] = q(a) end
  return table.concat(words, " ")
end

-- Runs a Lua script to its end, killed after `seconds` (scaled): returns stdout, status
-- (124 or 137 when it had to be killed: a hang), stderr.
local function run_lua(seconds, code, ...)
  local limit = string.format("%d", math.ceil(seconds * slow))
  return broker.run("timeout -k 2 " .. limit .. " " .. lua_command(code, ...) .. " </dev/null")
end

-- Starts a Lua script in the background (a broker.spawn process handle).
local function spawn_lua(code, ...)
  return broker.spawn(lua_command(code, ...))
end

local function has(text, piece)
  return text:find(piece, 1, true) ~= nil
end

local function assert_has(text, piece, context)
  assert(has(text, piece), string.format("expected %q in:\n%s%s", piece, text, context or ""))
end

-- The output line that starts with `word` (the words after it), or nil.
local function line(text, word)
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do
    if l:sub(1, #word + 1) == word .. " " then return l:sub(#word + 2) end
  end
  return nil
end

local function node_env()
  return { NODE_PATH = ROOT .. "/spec/node/node_modules" }
end

local node_declare = support.node_declare

-- A Node process that declares queue `name` exclusive and holds it until killed.
local function node_hold_exclusive(name)
  local js = [[
const amqp = require('amqplib');
(async () => {
  const c = await amqp.connect(process.argv[1]);
  const ch = await c.createChannel();
  await ch.assertQueue(process.argv[2], { exclusive: true, durable: false });
  console.log('held');
  setInterval(() => {}, 1000);
})().catch((e) => { console.error(String(e)); process.exit(1); });
]]
  local process = broker.spawn("node -e " .. q(js) .. " " .. q(broker.url()) .. " " .. q(name),
    { env = node_env() })
  local ok, out = process:wait_for("held\n", 20 * slow, true)
  assert(ok, "node could not hold " .. name .. " exclusive: " .. out)
  return process
end

-- A TCP listener on 127.0.0.1 that accepts connections and never says a word. Returns the
-- process and its port.
local function silent_listener()
  local python = io.open("/usr/bin/python3", "r") and "/usr/bin/python3" or "python3"
  local py = [[
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
]]
  local process = broker.spawn(python .. " -c " .. q(py))
  local ok, out = process:wait_for("%d+\n", 10 * slow)
  assert(ok, "the silent listener did not start: " .. out)
  return process, tonumber(out:match("(%d+)\n"))
end

local function fresh_delegator()
  local delegate = require "amqp_delegate"
  return delegate.delegator { url = broker.url() }:start()
end

-- Calls until one succeeds (the caller may be reconnecting after close_all_connections).
local function invoke_eventually(delegator, seconds, name, ...)
  local args = table.pack(...)
  local last
  local value = broker.eventually(function()
    local ok, result = pcall(delegator.invoke, delegator, { timeout = 2 * slow }, name,
      table.unpack(args, 1, args.n))
    if ok then return { result } end
    last = result
    require("amqp_delegate").sleep(0.1)
    return nil
  end, seconds * slow, 0.05)
  assert(value, "no call to " .. name .. " succeeded; last error: " .. tostring(last))
  return value[1]
end

local function close_all_connections()
  broker.ctl("close_all_connections", "closed by the robustness spec")
end

-- Names of the AMQP connections open right now.
local function connection_set()
  local set = {}
  for _, c in ipairs(broker.connections()) do set[c.name] = c end
  return set
end

local function connections_since(before)
  local list = {}
  for _, c in ipairs(broker.connections()) do
    if not before[c.name] then list[#list + 1] = c end
  end
  return list
end

local function describe_connections(list)
  local words = {}
  for _, c in ipairs(list) do words[#words + 1] = c.name .. " (" .. c.channels .. " channels)" end
  return #list .. " connection(s): " .. table.concat(words, ", ")
end

-- ------------------------------------------------------------------ specs

describe("robustness", function()
  local delegator
  before_each(function() delegator = fresh_delegator() end)
  after_each(function()
    pcall(delegator.stop, delegator)
    broker.kill_all()
    for _, path in ipairs(scripts) do os.remove(path) end
    scripts = {}
  end)

  -- ---------------------------------------------------------------- broker refusals
  describe("a queue the broker refuses raises from start() with the reply code's name", function()
    -- The child starts a worker on `refused` (pcall), then a good worker that must serve.
    local REFUSAL = [[
local refused, good = arg[2], arg[3]
local w = delegate.worker { name = refused, url = URL, task = function() end }
local ok, err = pcall(w.start, w)
out("refused", ok, code_of(err))
out("message", message_of(err))
out("string", tostring(err))
local g = delegate.worker { name = good, url = URL, task = function(x) return x + 1 end }:start()
local d = delegate.delegator { url = URL }:start()
out("served", d:invoke({ timeout = 5 }, good, 41))
g:stop()
d:stop()
out("done")
]]

    local function refusal(name)
      local out, status, err = run_lua(20, REFUSAL, name, unique("robust_after_refusal"))
      local context = "\n(status " .. status .. ")\nstderr:\n" .. err
      return out, status, context
    end

    local function assert_refused(name, code, reply_text)
      local out, status, context = refusal(name)
      assert.are.equal("false " .. code, line(out, "refused"), out .. context)
      assert_has(line(out, "message") or "", reply_text, context)
      assert.are.equal(code .. ": " .. (line(out, "message") or ""), line(out, "string"), out .. context)
      assert.are.equal("42", line(out, "served"), "another worker started afterwards serves" .. context)
      assert.are.equal(0, status, out .. context)
    end

    it("403: a worker named with the reserved prefix amq. -> ACCESS_REFUSED (never AUTH_FAILED)", function()
      assert_refused("amq.robust_" .. math.random(1e9), "ACCESS_REFUSED", "reserved prefix")
    end)

    it("a refusal during a reconnect is logged once, retried with backoff, and serving resumes once it is lifted", function()
      local name = unique("robust_relog")
      local host = support.host({ "spec/workers/sleeper.lua" }, { env = { WORKER_NAME = name } })
      assert.are.equal("a", delegator:invoke({ timeout = 5 * slow }, name, 0, "a"))
      -- guest may configure only server-named queues now, and the queue is gone: the
      -- worker's passive declare finds none and its declare is refused (403)
      broker.ctl("set_permissions", "-p", "/", "guest", "^amq\\.gen.*", ".*", ".*")
      local ok, err = pcall(function()
        broker.ctl("delete_queue", name)
        close_all_connections()
        broker.sleep(3 * slow) -- about 5 attempts at 0.1, 0.2, 0.4, 0.8, 1.6 s
        local output = host:output()
        local _, warned = output:gsub("WARN [^\n]*reconnecting %(attempt", "")
        assert.are.equal(1, warned, "one warning for the refusal, not one per attempt:\n" .. output)
        assert_has(output, "ACCESS_REFUSED")
        assert.is_nil(host:status(), "the host stays up\n" .. output)
      end)
      broker.ctl("set_permissions", "-p", "/", "guest", ".*", ".*", ".*")
      assert(ok, err)
      -- lifted: the worker declares its queue again and serves
      assert.are.equal("b", invoke_eventually(delegator, 15, name, 0, "b"))
      assert_has(host:output(), "reconnected")
    end)

    -- A queue that exists is consumed as it is (passive declare first), whatever its flags:
    -- the seed's redeclare got 406 PRECONDITION_FAILED here.
    local JOIN = [[
local name = arg[2]
local w = delegate.worker { name = name, url = URL, task = function(x) return x * 2 end }
local ok, err = pcall(w.start, w)
out("started", ok and "true" or code_of(err))
local d = delegate.delegator { url = URL }:start()
out("served", d:invoke({ timeout = 5 }, name, 21))
w:stop()
d:stop()
]]

    local function assert_joined(name)
      local out, status, err = run_lua(20, JOIN, name)
      local context = "\n(status " .. status .. ")\nstderr:\n" .. err
      assert.are.equal("true", line(out, "started"), out .. context)
      assert.are.equal("42", line(out, "served"), out .. context)
    end

    it("a queue declared durable by someone else is joined as it is (was 406)", function()
      local name = unique("robust_durable")
      node_declare(name, '{"durable":true}')
      finally(function() pcall(broker.ctl, "delete_queue", name) end)
      assert_joined(name)
    end)

    it("a queue declared with other arguments is joined as it is (was 406)", function()
      local name = unique("robust_args")
      node_declare(name, '{"durable":false,"arguments":{"x-max-length":10}}')
      finally(function() pcall(broker.ctl, "delete_queue", name) end)
      assert_joined(name)
    end)

    it("405: the queue is held exclusive by another connection -> RESOURCE_LOCKED", function()
      local name = unique("robust_locked")
      node_hold_exclusive(name)
      assert_refused(name, "RESOURCE_LOCKED", "exclusive")
    end)

    it("amqp-delegate run exits 1 on a refused worker, naming the file and the worker on stderr", function()
      local out, status, err = broker.run("timeout -k 2 " .. math.ceil(20 * slow) .. " "
        .. q(support.host_binary()) .. " run --url " .. q(broker.url()) .. " "
        .. q(ROOT .. "/spec/workers/robust_reserved.lua") .. " </dev/null")
      local context = "\nstdout:\n" .. out .. "\nstderr:\n" .. err
      assert.are.equal(1, status, context)
      assert_has(err, "robust_reserved.lua", context)
      assert_has(err, "amq.robust_reserved", context)
      assert_has(err, "ACCESS_REFUSED", context)
      assert.is_falsy(has(out, "ready"), context)
    end)
  end)

  -- ---------------------------------------------------------------- waits that cannot yield
  describe("a task that waits where it cannot yield gets CANNOT_WAIT, sends nothing, and the host serves on", function()
    local function attempt(how)
      local name = unique("robust_cw")
      local host = support.host({ "spec/workers/robust_cannot_wait.lua" }, { env = { ROBUST_NAME = name } })
      local report = delegator:invoke({ timeout = 10 * slow }, name, how)
      local context = string.format("\n%s: ok=%s code=%s sent=%s message=%s\nhost output:\n%s", how,
        tostring(report.ok), tostring(report.code), tostring(report.sent), tostring(report.message),
        host:output())
      assert.is_false(report.ok, context)
      assert.are.equal("CANNOT_WAIT", report.code, context)
      assert.are.equal("string", type(report.message), context)
      assert.is_true(#report.message > 0, context)
      assert.is_falsy(report.message:find("C-call boundary", 1, true), "a message people can act on" .. context)
      assert.are.equal(0, report.sent, "nothing was sent" .. context)
      -- the host is up and serves the next request
      assert.are.equal("still here", delegator:invoke({ timeout = 10 * slow }, name .. "_echo", "still here"))
      assert.is_nil(host:status(), "the host stayed up" .. context)
      return report
    end

    it("d:invoke inside a string.gsub callback", function() attempt("invoke_in_gsub") end)
    it("d:invoke inside a table.sort comparator", function() attempt("invoke_in_sort") end)
    it("d:invoke inside an __index metamethod called from C (table.concat)", function()
      attempt("invoke_in_index")
    end)
    it("d:invoke inside a __tostring metamethod called from C (tostring)", function()
      attempt("invoke_in_tostring")
    end)
    it("delegate.sleep inside a string.gsub callback", function() attempt("sleep_in_gsub") end)
    it("call:wait() inside a table.sort comparator (the call itself still ends normally)", function()
      local report = attempt("wait_in_sort")
      assert.are.equal("w", report.late)
    end)
    it("d:invoke inside a coroutine the task created (coroutine.wrap)", function()
      attempt("invoke_in_own_coroutine")
    end)
    it("delegate.sleep inside a coroutine the task created (coroutine.wrap)", function()
      attempt("sleep_in_own_coroutine")
    end)
  end)

  -- ---------------------------------------------------------------- retry after a lost connection
  it("a task that gets CONNECTION_LOST from d:invoke and retries: the retry succeeds once reconnected", function()
    local name = unique("robust_retry")
    local host = support.host({ "spec/workers/robust_retry.lua" },
      { env = { ROBUST_NAME = name }, flags = { "--concurrency", "4" } })
    local outer = delegator:send({ timeout = 60 }, name, "t1", 6)
    assert.is_true((host:wait_for("first call sent t1\n", 10 * slow, true)), host:output())
    broker.sleep(0.5) -- the inner call is in flight: the slow worker sleeps 6 s
    close_all_connections()
    local done, output = host:wait_for("retry t1 [^\n]*\n", 30 * slow)
    assert.is_true(done, "the task's retry ended (host exit status " .. tostring(host:status()) .. ")\n" .. output)
    assert_has(output, "first failed t1 CONNECTION_LOST\n")
    assert_has(output, "retry t1 ok t1-again\n")
    assert.is_nil(host:status(), "the host did not crash\n" .. output)
    pcall(outer.wait, outer) -- its connection was closed too: any ending will do
    -- and the host serves new calls, inner calls included
    local caller = fresh_delegator()
    finally(function() pcall(caller.stop, caller) end)
    assert.are.equal("t2", invoke_eventually(caller, 20, name, "t2", 0))
    assert.is_nil(host:status())
  end)

  -- ---------------------------------------------------------------- a peer that never speaks
  describe("a TCP listener that accepts and never speaks", function()
    local port, silent_url
    before_each(function()
      local _
      _, port = silent_listener()
      silent_url = "amqp://guest:guest@127.0.0.1:" .. port .. "/"
    end)

    it("delegator{connect_timeout = 1}:start() fails with CONNECTION_FAILED within a few seconds", function()
      local out, status, err = run_lua(10, [[
local d = delegate.delegator { url = arg[2], connect_timeout = 1 }
local t0 = now()
local ok, e = pcall(d.start, d)
out("start", ok, code_of(e), string.format("%.1f", now() - t0))
]], silent_url)
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal(0, status, "the script ended by itself" .. context)
      local ok, code, seconds = (line(out, "start") or ""):match("^(%S+) (%S+) ([%d.]+)$")
      assert.are.equal("false", ok, context)
      assert.are.equal("CONNECTION_FAILED", code, context)
      assert.is_true(tonumber(seconds) < 5, "took " .. tostring(seconds) .. " s" .. context)
    end)

    it("amqp-delegate call exits 3 with CONNECTION_FAILED (bounded by the connect timeout)", function()
      local t0 = broker.now()
      local out, status, err = broker.run("timeout -k 2 " .. math.ceil(20 * slow) .. " "
        .. q(support.host_binary()) .. " call --url " .. q(silent_url) .. " adder 1 2 </dev/null")
      local seconds = broker.now() - t0
      local context = string.format("\n(status %d after %.1f s)\nstdout:\n%s\nstderr:\n%s", status, seconds, out, err)
      assert.are.equal(3, status, context)
      assert(err:match("^CONNECTION_FAILED: "), "CONNECTION_FAILED on stderr" .. context)
      assert.is_true(seconds < 15, "the default connect timeout (10 s) bounds it" .. context)
    end)

    it("while one worker connects to it, another worker of the same process keeps answering", function()
      local name = unique("robust_beside")
      local process = spawn_lua([[
local a = delegate.worker { name = arg[2], url = URL, task = function(x) return x * 3 end }:start()
local b = delegate.worker { name = arg[2] .. "_b", url = arg[3], connect_timeout = 4, task = function() end }
out("connecting")
local t0 = now()
local ok, e = pcall(b.start, b)
out("b", ok, code_of(e), string.format("%.1f", now() - t0))
delegate.sleep(60)
]], name, silent_url)
      assert.is_true((process:wait_for("connecting\n", 10 * slow, true)), process:output())
      broker.sleep(0.5) -- b is connecting now, for about 4 s
      for i = 1, 3 do
        if i > 1 then broker.sleep(0.5) end
        local ok, result = pcall(delegator.invoke, delegator, { timeout = 1 }, name, i)
        assert(ok, "call " .. i .. " during the connect: " .. tostring(result) .. "\n" .. process:output())
        assert.are.equal(3 * i, result)
      end
      local ended, out = process:wait_for("\nb [^\n]*\n", 15 * slow)
      assert.is_true(ended, "b:start() ended\n" .. out)
      assert_has(out, "\nb false CONNECTION_FAILED ")
      assert.is_true(process:alive(), "the process is still serving\n" .. out)
      assert.are.equal(30, delegator:invoke({ timeout = 5 * slow }, name, 10))
    end)
  end)

  describe("after the process was idle (plain Lua, the loop's clock is stale)", function()
    it("start() still gets its whole connect_timeout", function()
      local out, status, err = run_lua(20, [[
local d = delegate.delegator { url = URL, connect_timeout = 2 }:start()
d:stop()
os.execute("sleep 3") -- longer than connect_timeout, without running the loop
local ok, e = pcall(d.start, d)
out("again", ok, ok and "" or code_of(e))
d:stop()
]])
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal("true ", line(out, "again"), context)
    end)
  end)

  describe("found by the adversarial review", function()
    it("a hook whose error cannot even be printed is logged; the loop and the process go on", function()
      local name = unique("robust_bad_hook")
      local out, status, err = run_lua(20, [[
local bomb = setmetatable({}, { __tostring = function() error("tostring exploded") end,
  __index = function() error("index exploded") end })
local w = delegate.worker { name = arg[2], url = URL, task = function(x) return x end,
  on_close = function() error(bomb) end }
w:start()
local ok, e = pcall(w.stop, w)
out("stop", ok)
local d = delegate.delegator { url = URL }:start()
w:start()
out("call", d:invoke({ timeout = 5 }, arg[2], 7))
w:stop()
d:stop()
]], name)
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal(0, status, context)
      assert.are.equal("true", line(out, "stop"), context)
      assert.are.equal("7", line(out, "call"), context)
      assert_has(err, "on_close hook failed", context)
    end)

    it("a finalizer that calls a delegator while the Lua state closes gets an error, not a crash", function()
      local out, status, err = run_lua(20, [[
-- before require
local holder = {}
local function out(...) io.stdout:write(table.concat({ ... }, " "), "\n") end
local guard = setmetatable({}, { __gc = function()
  local ok, e = pcall(holder.d.invoke, holder.d, { timeout = 1 }, "nobody")
  out("in gc", tostring(ok), type(e) == "table" and e.code or tostring(e))
  out("stop in gc", tostring(pcall(holder.d.stop, holder.d)))
end })
-- after require
holder.d = delegate.delegator { url = URL }:start()
]])
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal(0, status, context)
      assert.matches("^false ", line(out, "in gc") or "", nil, context)
    end)

    it("serve() returns after the on_close hooks of the workers it stopped ran", function()
      local name = unique("robust_serve_close")
      local process = spawn_lua([[
local w = delegate.worker { name = arg[2], url = URL, task = function(x) return x end,
  on_close = function() out("closed") end }:start()
out("serving")
local how = delegate.serve()
out("served", how)
]], name)
      assert.is_true((process:wait_for("serving\n", 10 * slow, true)), process:output())
      assert.is_true(process:signal("TERM"))
      assert.are.equal(0, process:wait_exit(10 * slow), process:output())
      local output = process:output()
      local closed, served = output:find("\nclosed\n", 1, true), output:find("\nserved SIGTERM", 1, true)
      assert(closed and served and closed < served, "on_close before serve() returned:\n" .. output)
    end)

    it("one Ctrl-C ends delegate.wait_all with INTERRUPTED", function()
      local sleeper = unique("robust_wait_all")
      support.host({ "spec/workers/sleeper.lua" }, { env = { WORKER_NAME = sleeper }, flags = { "--concurrency", "4" } })
      local process = spawn_lua([[
local d = delegate.delegator { url = URL, timeout = 60 }:start()
local calls = {}
for i = 1, 4 do calls[i] = d:send(arg[2], 30, i) end
out("waiting")
local ok, e = pcall(delegate.wait_all, calls)
out("wait_all", ok, code_of(e))
os.exit(0)
]], sleeper)
      assert.is_true((process:wait_for("waiting\n", 10 * slow, true)), process:output())
      broker.sleep(0.5)
      assert.is_true(process:signal("INT"))
      local ended = process:wait_for("wait_all [^\n]*\n", 10 * slow)
      assert.is_true(ended, "one SIGINT ended wait_all\n" .. process:output())
      assert.are.equal("false INTERRUPTED", line(process:output(), "wait_all"))
    end)

    it("a worker name with a NUL byte is refused by invoke and send, not cut short", function()
      for _, method in ipairs({ "invoke", "send" }) do
        local ok, err = pcall(delegator[method], delegator, "adder\0other", 1, 2)
        assert.is_false(ok)
        assert.are.equal("BAD_ARGUMENT", err.code)
      end
      assert.are.equal(0, delegator:stats().sent)
    end)
  end)

  -- ---------------------------------------------------------------- timeouts and sleeps
  describe("timeouts and sleeps", function()
    local function serve_adder_and_sleeper()
      local sleeper = unique("robust_sleeper")
      support.host({ "scripts/adder.lua", "spec/workers/sleeper.lua" }, { env = { WORKER_NAME = sleeper } })
      return sleeper
    end

    local INVOKE = [[
local d = delegate.delegator { url = URL }:start()
local timeout = load("return " .. arg[2])()
local ok, e = pcall(d.invoke, d, { timeout = timeout }, "adder", 1, 2)
out("invoke", ok, ok and e or code_of(e))
d:stop()
]]
    local SLEEP = [[
local seconds = load("return " .. arg[2])()
local ok, e = pcall(delegate.sleep, seconds)
out("sleep", ok, ok and "returned" or code_of(e))
]]

    for _, case in ipairs({ "math.huge", "0/0", "-1", "4294968", "1e300", "-math.huge" }) do
      it("invoke({timeout = " .. case .. "}) raises BAD_ARGUMENT", function()
        local out, status, err = run_lua(10, INVOKE, case)
        local context = "\n(status " .. status .. ")\n" .. out .. err
        assert.are.equal("false BAD_ARGUMENT", line(out, "invoke"), context)
        assert.are.equal(0, status, context)
      end)
    end

    for _, case in ipairs({ "0/0", "-1", "math.huge" }) do
      it("delegate.sleep(" .. case .. ") raises BAD_ARGUMENT", function()
        local out, status, err = run_lua(10, SLEEP, case)
        local context = "\n(status " .. status .. ")\n" .. out .. err
        assert.are.equal("false BAD_ARGUMENT", line(out, "sleep"), context)
        assert.are.equal(0, status, context)
      end)
    end

    it("timeout = 4294967 (the broker's expiration limit) is accepted", function()
      serve_adder_and_sleeper()
      local out, status, err = run_lua(10, INVOKE, "4294967")
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal("true 3", line(out, "invoke"), context)
    end)

    it("timeout = 0 waits as long as it takes, over a delegator default that would expire", function()
      local sleeper = serve_adder_and_sleeper()
      local out, status, err = run_lua(10, [[
local d = delegate.delegator { url = URL, timeout = 0.2 }:start()
local ok, e = pcall(d.invoke, d, { timeout = 0 }, arg[2], 0.6, "late")
out("invoke", ok, ok and e or code_of(e))
d:stop()
]], sleeper)
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal("true late", line(out, "invoke"), context)
    end)
  end)

  -- ---------------------------------------------------------------- lifecycle from tasks and hooks
  describe("lifecycle", function()
    it("start() from an on_close hook: a worker restarts itself after stop", function()
      local name = unique("robust_restart")
      local out, status, err = run_lua(10, [[
local name, w, restarted = arg[2], nil, false
w = delegate.worker { name = name, url = URL, task = function(x) return x end,
  on_close = function()
    if restarted then return end
    restarted = true
    local ok, e = pcall(w.start, w)
    out("restart", ok, ok and "" or tostring(e))
  end }
w:start()
local d = delegate.delegator { url = URL }:start()
out("first", d:invoke({ timeout = 5 }, name, 1))
w:stop()
for _ = 1, 100 do
  if tostring(w):find("running", 1, true) then break end
  delegate.sleep(0.05)
end
out("state", tostring(w))
local ok, v = pcall(d.invoke, d, { timeout = 5 }, name, 2)
out("second", ok, ok and v or tostring(v))
w:stop()
d:stop()
out("done")
]], name)
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal("1", line(out, "first"), context)
      assert.are.equal("true ", line(out, "restart"), context)
      assert.are.equal("true 2", line(out, "second"), context)
      assert_has(out, "done\n", context)
      assert.are.equal(0, status, context)
    end)

    it("stop() from a worker's own task: the call still gets its answer, then the worker is stopped", function()
      local name = unique("robust_self_stop")
      local out, status, err = run_lua(20, [[
local name, w = arg[2], nil
w = delegate.worker { name = name, url = URL, task = function(x)
  local ok, e = pcall(w.stop, w)
  out("stop in task", ok, ok and "" or tostring(e))
  return x * 2
end }
w:start()
local d = delegate.delegator { url = URL }:start()
local ok, v = pcall(d.invoke, d, { timeout = 5 }, name, 21)
out("answer", ok, ok and v or tostring(v))
for _ = 1, 100 do
  if tostring(w):find("stopped", 1, true) then break end
  delegate.sleep(0.05)
end
out("state", tostring(w))
local again, e = pcall(w.stop, w)
out("stop again", again, code_of(e))
w:start()
out("restarted", d:invoke({ timeout = 5 }, name, 5))
d:stop()
out("done")
]], name)
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal("true ", line(out, "stop in task"), context)
      assert.are.equal("true 42", line(out, "answer"), context)
      assert_has(line(out, "state") or "", "stopped", context)
      assert.are.equal("false NOT_STARTED", line(out, "stop again"), context)
      assert.are.equal("10", line(out, "restarted"), context)
      assert.are.equal(0, status, context)
      assert.are.equal(0, (broker.queues()[name] or {}).consumers, "nobody consumes any more")
    end)

    it("stop() from an on_error hook: the worker stops for good instead of reconnecting", function()
      local name = unique("robust_hook_stop")
      local process = spawn_lua([[
local name, w = arg[2], nil
w = delegate.worker { name = name, url = URL, task = function(x) return x end,
  on_error = function(e)
    local ok, why = pcall(w.stop, w)
    out("stop in hook", code_of(e), ok, ok and "" or tostring(why))
  end }
w:start()
out("serving")
delegate.sleep(60)
]], name)
      assert.is_true((process:wait_for("serving\n", 10 * slow, true)), process:output())
      assert.are.equal(7, delegator:invoke({ timeout = 5 * slow }, name, 7))
      close_all_connections()
      local hooked, out = process:wait_for("stop in hook [^\n]*\n", 10 * slow)
      assert.is_true(hooked, out)
      assert.are.equal("CONNECTION_LOST true ", line(out, "stop in hook"), out)
      broker.sleep(1.5 * slow) -- a reconnection would have come by now (backoff 0.1 s)
      assert.is_true(process:alive(), "the process lives on\n" .. process:output())
      assert.are.equal(0, (broker.queues()[name] or {}).consumers, "the worker did not come back\n" .. out)
    end)

    it("start() twice -> ALREADY_STARTED, stop() after stop -> NOT_STARTED (worker and delegator)", function()
      local name = unique("robust_twice")
      local out, status, err = run_lua(20, [[
local w = delegate.worker { name = arg[2], url = URL, task = function() end }
w:start()
out("worker start twice", code_of(select(2, pcall(w.start, w))))
w:stop()
out("worker stop twice", code_of(select(2, pcall(w.stop, w))))
local d = delegate.delegator { url = URL }
d:start()
out("delegator start twice", code_of(select(2, pcall(d.start, d))))
d:stop()
out("delegator stop twice", code_of(select(2, pcall(d.stop, d))))
out("done")
]], name)
      local context = "\n(status " .. status .. ")\n" .. out .. err
      assert.are.equal("ALREADY_STARTED", line(out, "worker start twice"), context)
      assert.are.equal("NOT_STARTED", line(out, "worker stop twice"), context)
      assert.are.equal("ALREADY_STARTED", line(out, "delegator start twice"), context)
      assert.are.equal("NOT_STARTED", line(out, "delegator stop twice"), context)
      assert.are.equal(0, status, context)
    end)
  end)

  -- ---------------------------------------------------------------- one connection per process
  describe("one AMQP connection per process", function()
    it("a host serving 3 workers and a delegator from one file opens ONE connection with 4 channels", function()
      local name = unique("robust_three")
      local before = connection_set()
      local host = support.host({ "spec/workers/robust_three.lua" }, { env = { ROBUST_NAME = name } })
      assert.are.equal(2, delegator:invoke({ timeout = 5 * slow }, name .. "_one", 1))
      assert.are.equal(4, delegator:invoke({ timeout = 5 * slow }, name .. "_two", 2))
      assert.are.equal(40, delegator:invoke({ timeout = 5 * slow }, name .. "_three", 3))
      local list = broker.eventually(function()
        local l = connections_since(before)
        return #l == 1 and l[1].channels == 4 and l
      end, 5 * slow, 0.2) or connections_since(before)
      assert.are.equal(1, #list, describe_connections(list) .. "\n" .. host:output())
      assert.are.equal(4, list[1].channels, describe_connections(list))
    end)

    it("a refused 4th worker (amq.y, from plain Lua) leaves the other three serving on the one connection", function()
      local name = unique("robust_three_lua")
      local before = connection_set()
      local process = spawn_lua([[
local prefix = arg[2]
local d = delegate.delegator { url = URL }:start()
delegate.worker { name = prefix .. "_one", url = URL, task = function(x) return x + 1 end }:start()
delegate.worker { name = prefix .. "_two", url = URL, task = function(x) return x * 2 end }:start()
delegate.worker { name = prefix .. "_three", url = URL,
  task = function(x) return d:invoke(prefix .. "_one", x) * 10 end }:start()
local y = delegate.worker { name = "amq.y", url = URL, task = function() end }
local ok, e = pcall(y.start, y)
out("amq.y", ok, code_of(e))
delegate.sleep(60)
]], name)
      local refused, out = process:wait_for("amq.y [^\n]*\n", 20 * slow)
      assert.is_true(refused, out)
      assert.are.equal("false ACCESS_REFUSED", line(out, "amq.y"), out)
      assert.are.equal(2, delegator:invoke({ timeout = 5 * slow }, name .. "_one", 1))
      assert.are.equal(4, delegator:invoke({ timeout = 5 * slow }, name .. "_two", 2))
      assert.are.equal(40, delegator:invoke({ timeout = 5 * slow }, name .. "_three", 3))
      assert.is_true(process:alive(), process:output())
      local list = broker.eventually(function()
        local l = connections_since(before)
        return #l == 1 and l[1].channels == 4 and l
      end, 5 * slow, 0.2) or connections_since(before)
      assert.are.equal(1, #list, describe_connections(list))
      assert.are.equal(4, list[1].channels, "the refused channel is gone, the four others stay: "
        .. describe_connections(list))
    end)
  end)

  -- ---------------------------------------------------------------- broker in memory alarm
  it("while the broker is in a memory alarm, a call with timeout 1 ends with TIMEOUT and stop() returns", function()
    support.host({ "scripts/adder.lua" })
    local flag = os.tmpname()
    os.remove(flag)
    local process = spawn_lua([[
local flag = arg[2]
local d = delegate.delegator { url = URL }:start()
out("warm", d:invoke({ timeout = 5 }, "adder", 1, 2))
while true do
  local f = io.open(flag, "r")
  if f then f:close() break end
  delegate.sleep(0.05)
end
local t0 = now()
local ok, e = pcall(d.invoke, d, { timeout = 1 }, "adder", 2, 3)
out("call", ok, ok and e or code_of(e), string.format("%.1f", now() - t0))
t0 = now()
local stopped, why = pcall(d.stop, d)
out("stop", stopped, stopped and "" or code_of(why), string.format("%.1f", now() - t0))
]], flag)
    finally(function()
      os.remove(flag)
      broker.ctl("set_vm_memory_high_watermark", "0.4")
      broker.eventually(function()
        return not broker.ctl("eval", "rabbit_alarm:get_alarms()."):find("memory", 1, true)
      end, 20 * slow, 0.2)
    end)
    assert.is_true((process:wait_for("warm 3\n", 10 * slow, true)), process:output())
    broker.ctl("set_vm_memory_high_watermark", "0.0000001")
    assert.is_truthy(broker.eventually(function()
      return broker.ctl("eval", "rabbit_alarm:get_alarms()."):find("memory", 1, true)
    end, 20 * slow, 0.2), "the broker raised its memory alarm")
    assert(io.open(flag, "w")):close()
    local called, out = process:wait_for("\ncall [^\n]*\n", 10 * slow)
    assert.is_true(called, "the call ended\n" .. out)
    local ok, code, seconds = (line(out, "call") or ""):match("^(%S+) (%S+) ([%d.]+)$")
    assert.are.equal("false", ok, out)
    assert.are.equal("TIMEOUT", code, out)
    assert.is_true(tonumber(seconds) < 3, out)
    local stopped
    stopped, out = process:wait_for("\nstop [^\n]*\n", 10 * slow)
    assert.is_true(stopped, "stop() returned\n" .. out)
    local stop_seconds = tonumber((line(out, "stop") or ""):match("([%d.]+)$"))
    assert.is_true(stop_seconds ~= nil and stop_seconds < 5, "stop() took " .. tostring(stop_seconds) .. " s\n" .. out)
  end)

  -- ---------------------------------------------------------------- closed standard streams
  describe("a host started with a standard stream closed serves calls", function()
    for _, case in ipairs({ { "stdin", "<&-" }, { "stdout", ">&-" }, { "stderr", "2>&-" } }) do
      it("closed " .. case[1] .. " (" .. case[2] .. ")", function()
        local name = unique("robust_closed_" .. case[1])
        local host = broker.spawn(q(support.host_binary()) .. " run --url " .. q(broker.url()) .. " "
          .. q(ROOT .. "/spec/workers/sleeper.lua") .. " " .. case[2], { env = { WORKER_NAME = name } })
        -- no "ready" to wait for when stdout is closed: the first answer says it serves
        assert.are.equal("v1", invoke_eventually(delegator, 20, name, 0, "v1"), host:output())
        for i = 2, 5 do
          assert.are.equal("v" .. i, delegator:invoke({ timeout = 5 * slow }, name, 0, "v" .. i))
        end
        assert.is_nil(host:status(), host:output())
        assert.is_true(host:signal("TERM"))
        assert.are.equal(0, host:wait_exit(10 * slow), host:output())
      end)
    end
  end)

  -- ---------------------------------------------------------------- exit status of run
  describe("the exit status of amqp-delegate run", function()
    it("is 1 when its workers stop because they cannot go on (reconnect_max = 0, connection closed)", function()
      local name = unique("robust_no_reconnect")
      local host = support.host({ "spec/workers/robust_no_reconnect.lua" }, { env = { ROBUST_NAME = name } })
      assert.are.equal(5, delegator:invoke({ timeout = 5 * slow }, name, 5))
      close_all_connections()
      local status = host:wait_exit(10 * slow)
      assert.are.equal(1, status, "exit status " .. tostring(status) .. "\n" .. host:output())
    end)

    it("is 0 after SIGTERM (the same worker file)", function()
      local name = unique("robust_no_reconnect")
      local host = support.host({ "spec/workers/robust_no_reconnect.lua" }, { env = { ROBUST_NAME = name } })
      assert.are.equal(5, delegator:invoke({ timeout = 5 * slow }, name, 5))
      assert.is_true(host:signal("TERM"))
      assert.are.equal(0, host:wait_exit(10 * slow), host:output())
    end)
  end)

  -- ---------------------------------------------------------------- oversized result
  it("a result over the worker's max_body is answered with BAD_RESULT, and the task runs once", function()
    local name = unique("robust_big")
    local host = support.host({ "spec/workers/robust_big_result.lua" }, { env = { ROBUST_NAME = name } })
    local ok, err = pcall(delegator.invoke, delegator, { timeout = 10 * slow }, name, 4000)
    assert.is_false(ok, "a 4000-byte result passed a max_body of 1024")
    assert.are.equal("table", type(err), tostring(err))
    assert.are.equal("BAD_RESULT", err.code, tostring(err) .. "\n" .. host:output())
    broker.sleep(1 * slow) -- a retried request would run again meanwhile
    assert.are.equal(1, delegator:invoke({ timeout = 5 * slow }, name .. "_runs"))
    assert.are.equal(string.rep("x", 100), delegator:invoke({ timeout = 5 * slow }, name, 100))
    assert.are.equal(2, delegator:invoke({ timeout = 5 * slow }, name .. "_runs"))
    assert.is_nil(host:status())
  end)

  -- ---------------------------------------------------------------- signals during a CPU-bound task
  describe("a second signal during a CPU-bound task ends the host at once", function()
    for _, case in ipairs({ { "TERM", 143 }, { "INT", 130 } }) do
      it("SIG" .. case[1] .. " twice -> exit status " .. case[2] .. " within 2 s", function()
        local name = unique("robust_spin")
        local host = support.host({ "spec/workers/robust_spin.lua" }, { env = { ROBUST_NAME = name } })
        delegator:send({ timeout = 60 }, name, 30)
        assert.is_true((host:wait_for("spinning\n", 10 * slow, true)), host:output())
        assert.is_true(host:signal(case[1]))
        broker.sleep(0.3)
        assert.is_true(host:signal(case[1]))
        local status = host:wait_exit(2 * slow)
        assert.are.equal(case[2], status, "exit status " .. tostring(status) .. "\n" .. host:output())
      end)
    end
  end)
end)

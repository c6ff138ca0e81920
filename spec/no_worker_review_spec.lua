-- Review of NO_WORKER (issue 12 item 4): the cases that broke it. A plain send that waits for
-- the broker's answer must let Ctrl-C through, as a plain invoke does; `amqp-delegate status
-- FILE` must not count the workers the file starts itself as the workers serving the name.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local defer = support.deferrer(function(fn) finally(fn) end)

local q = broker.shell_quote
local slow = support.slow

describe("NO_WORKER, as a reviewer tried it", function()
  it("Ctrl-C during a first send's question to a frozen broker ends the send with INTERRUPTED", function()
    local port = support.free_port()
    local forwarder = support.forward(port)
    defer(function() forwarder:kill() end)
    assert(forwarder:wait_for("listening", 10 * slow, true), forwarder:output())
    local script = os.tmpname() .. ".lua"
    defer(function() os.remove(script) end)
    local file = assert(io.open(script, "w"))
    -- the question is bounded by connect_timeout (60 s): Ctrl-C must not wait for it
    file:write(string.format([[
      local delegate = require "amqp_delegate"
      local d = delegate.delegator { url = %q, connect_timeout = 60, heartbeat = 0, timeout = 120 }:start()
      os.execute("kill -STOP %d")
      io.stdout:write("sending\n"); io.stdout:flush()
      local ok, err = pcall(d.send, d, "review_frozen_name", 1)
      print("send", ok, type(err) == "table" and err.code or tostring(err))
    ]], "amqp://guest:guest@127.0.0.1:" .. port, forwarder:pid()))
    file:close()
    local process = broker.spawn("lua5.4 " .. q(script))
    defer(function() process:kill() end)
    defer(function() forwarder:signal("CONT") end)
    assert.is_true((process:wait_for("sending\n", 10 * slow, true)), process:output())
    broker.sleep(0.5)
    process:signal("INT")
    assert.are.equal(0, process:wait_exit(20 * slow), process:output())
    assert.matches("send\tfalse\tINTERRUPTED", process:output())
  end)

  it("`amqp-delegate status FILE` refuses a file that starts a worker itself: it would count it", function()
    local name = support.unique("nw_review_self")
    defer(function() pcall(broker.ctl, "delete_queue", name) end)
    local file = os.tmpname() .. ".lua"
    defer(function() os.remove(file) end)
    local handle = assert(io.open(file, "w"))
    handle:write(string.format([[
      local delegate = require "amqp_delegate"
      local worker = { name = %q, task = function(x) return x end }
      delegate.worker({ url = %q, name = worker.name, task = worker.task }):start()
      return worker
    ]], name, broker.url()))
    handle:close()
    local out, code, err = support.command("status", "--url", broker.url(), file)
    assert.are.equal(1, code, out .. err)
    assert.is_falsy(out:find("served", 1, true), out)
    assert.truthy(err:find(file, 1, true) and err:find("starts", 1, true), err)
  end)

  -- the slot a name had in served_names (one name per slot then): FNV-1a 64 of its bytes modulo
  -- 256 (Lua's integers wrap as C's uint64_t does); names sharing it share a set now
  local function slot_of(name)
    local hash = 1469598103934665603
    for i = 1, #name do hash = (hash ~ name:byte(i)) * 1099511628211 end
    return hash & 255
  end

  it("two served names that share a slot are asked about once each, not on every call", function()
    local prefix, seen, first, second = support.unique("nw_review_slot"), {}, nil, nil
    for i = 1, 1000 do
      local name = prefix .. "_" .. i
      local slot = slot_of(name)
      if seen[slot] then first, second = seen[slot], name break end
      seen[slot] = name
    end
    assert(first and second, "no two names share a slot")
    defer(function() pcall(broker.ctl, "delete_queue", first) end)
    defer(function() pcall(broker.ctl, "delete_queue", second) end)
    local workers = support.in_process_workers(broker.url())
    defer(function() workers.stop_all() end)
    workers.serve({ name = first, task = function(x) return x + 1 end })
    workers.serve({ name = second, task = function(x) return x + 2 end })
    local delegator = support.delegator({ timeout = 20 * slow })
    defer(function() pcall(delegator.stop, delegator) end)
    for i = 1, 5 do
      assert.are.equal(i + 1, delegator:invoke(first, i))
      assert.are.equal(i + 2, delegator:invoke(second, i))
    end
    assert.are.equal(2, delegator:stats().worker_checks)
  end)

  it("`amqp-delegate status` names the operand or the file whose worker name is too long", function()
    local long = string.rep("n", 300)
    local function status(...) return support.command("status", "--url", broker.url(), ...) end
    local out, code, err = status("fine_name", long)
    assert.are.equal(2, code, out .. err)
    assert.truthy(err:find(long:sub(1, 32), 1, true) and err:find("255", 1, true), err)
    local file = os.tmpname() .. ".lua"
    defer(function() os.remove(file) end)
    local handle = assert(io.open(file, "w"))
    handle:write(string.format("return { name = %q, task = print }\n", long))
    handle:close()
    out, code, err = status(file)
    assert.are.equal(1, code, out .. err)
    assert.truthy(err:find(file, 1, true) and err:find("255", 1, true), err)
  end)

  it("calls to a name no queue has are asked about once: the broker's return says NO_ROUTE for free", function()
    -- each question about a missing queue costs a channel the broker closes with a 404, and a
    -- line at [error] in the broker's log: a caller retrying a misspelt name must not flood it
    local delegator = support.delegator({ timeout = 20 * slow })
    defer(function() pcall(delegator.stop, delegator) end)
    local name = support.unique("nw_review_nowhere")
    for _ = 1, 5 do
      local ok, err = pcall(delegator.invoke, delegator, name, 1)
      assert.is_false(ok)
      assert.are.equal("NO_ROUTE", err.code, tostring(err))
    end
    assert.are.equal(1, delegator:stats().worker_checks)
  end)
end)

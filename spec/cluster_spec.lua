-- A RabbitMQ cluster of three nodes on loopback (scripts/cluster.sh, started by the test run):
-- workers and delegators given the three URLs; a node killed (kill -9) under 1000 calls in
-- flight, the worker's and its quorum queue leader's, then the delegator's; a rolling restart
-- of all three under load; a queue an operator declared joined as it is; one worker file for
-- one node and for the cluster. Every call must be answered once, with the right result.
--
-- The load runs in its own process (spec/helpers/cluster_load.lua) so that it goes on while
-- this one waits for nodes to stop and start.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local defer = support.deferrer(function(fn) finally(fn) end)

local CLUSTER_ENV = os.getenv("CLUSTER_ENV")
if not (os.getenv("CLUSTER_URLS") and CLUSTER_ENV) then
  describe("a 3-node cluster", function()
    pending("no cluster in this run (CLUSTER_URLS and CLUSTER_ENV unset)")
  end)
  return
end

local delegate = require "amqp_delegate"
local q = broker.shell_quote
local unique = support.unique
local slow = support.slow
local ROOT = broker.root()
local CLUSTER_DIR = CLUSTER_ENV:match("^(.*)/[^/]*$")

local function url(k) return assert(os.getenv("CLUSTER_URL_" .. k)) end
local function urls(list)
  local out = {}
  for i, k in ipairs(list) do out[i] = url(k) end
  return table.concat(out, ",")
end
local ALL = urls({ 1, 2, 3 })

local function cluster_sh(...)
  local words = { "bash", q(ROOT .. "/scripts/cluster.sh") }
  for _, a in ipairs({ ... }) do words[#words + 1] = q(a) end
  local out, status, err = broker.run(table.concat(words, " ") .. " </dev/null")
  assert(status == 0, "cluster.sh " .. table.concat({ ... }, " ") .. " failed:\n" .. out .. err)
  return out
end

local RABBITMQ_SH = ROOT .. "/scripts/rabbitmq.sh"

-- rabbitmqctl on node k; returns its output, or nil and why when the node does not answer
local function ctl_on(k, ...)
  local words = { "bash", q(RABBITMQ_SH), "ctl", q(assert(os.getenv("CLUSTER_DIR_" .. k))) }
  for _, a in ipairs({ ... }) do words[#words + 1] = q(a) end
  local out, status, err = broker.run(table.concat(words, " ") .. " </dev/null 2>&1")
  if status == 0 then return out end
  return nil, out .. err
end

-- rabbitmqctl on a node that is up (any of the three)
local function ctl(...)
  local last
  for k = 1, 3 do
    local out, why = ctl_on(k, ...)
    if out then return out end
    last = why
  end
  error("rabbitmqctl failed on every node: " .. tostring(last))
end

local function node_index(node_name)
  for k = 1, 3 do
    if os.getenv("CLUSTER_NODE_" .. k) == node_name then return k end
  end
  return nil
end

-- The node (1..3) that holds the connection of process `pid` (its client property
-- connection_name is "amqp-delegate pid N"), by the port it connected to.
local function node_of(pid)
  local out = ctl("-q", "list_connections", "--no-table-headers", "port", "client_properties")
  for line in out:gmatch("[^\n]+") do
    local port = line:match("^(%d+)\t")
    if port and line:find("amqp-delegate pid " .. pid .. "\"", 1, true) then
      for k = 1, 3 do
        if os.getenv("CLUSTER_PORT_" .. k) == port then return k end
      end
    end
  end
  return nil
end

local function leader_of(queue)
  local out = ctl("-q", "list_queues", "--no-table-headers", "name", "leader")
  for line in out:gmatch("[^\n]+") do
    local name, node = line:match("^(%S+)\t(%S+)")
    if name == queue then return node_index(node) end
  end
  return nil
end

local function queue_type(queue)
  local out = ctl("-q", "list_queues", "--no-table-headers", "name", "type")
  for line in out:gmatch("[^\n]+") do
    local name, kind = line:match("^(%S+)\t(%S+)")
    if name == queue then return kind end
  end
  return nil
end

local function host(urls_text, name, queue)
  return support.host({ "spec/workers/doubler.lua" }, { url = urls_text,
    env = { WORKER_NAME = name, WORKER_QUEUE = queue, WORKER_CONCURRENCY = "32" } })
end

-- Starts the load process; returns its handle once its delegator is ready.
local function load(urls_text, name, total, extra)
  local words = { "lua5.4", q(ROOT .. "/spec/helpers/cluster_load.lua"), q(urls_text), q(name),
    tostring(total), "64", "2", tostring(math.ceil(90 * slow)) }
  for _, a in ipairs(extra or {}) do words[#words + 1] = q(a) end
  local process = broker.spawn(table.concat(words, " "))
  assert(process:wait_for("ready", 30 * slow, true), "the load did not start:\n" .. process:output())
  return process
end

local function summary_of(process, seconds)
  process:wait_exit(seconds * slow)
  local output = process:output()
  local line = output:match("summary ([^\n]*)")
  assert(line, "no summary from the load:\n" .. output)
  local t = {}
  for key, value in line:gmatch("(%w+)=(%S*)") do t[key] = tonumber(value) or value end
  t.output = output
  return t
end

local function assert_all_answered(summary, total)
  local context = "\n" .. summary.output
  assert.are.equal(0, summary.errors, "no call failed: " .. tostring(summary.codes) .. context)
  assert.are.equal(0, summary.wrong, "every answer is its call's" .. context)
  if total then assert.are.equal(total, summary.answered, context) end
end

-- a killed node comes back before the next test
local function restart_after(k)
  defer(function() cluster_sh("restart", CLUSTER_DIR, tostring(k)) end)
end

describe("a 3-node cluster", function()
  it("a worker and a delegator given the three URLs serve and call", function()
    local name = unique("cluster_urls")
    defer(function() pcall(ctl, "delete_queue", name) end)
    local worker = delegate.worker({ name = name, url = { url(1), url(2), url(3) },
      queue = "quorum", task = function(x) return x * 2 end }):start()
    defer(function() worker:stop() end)
    local d = delegate.delegator({ url = ALL, timeout = 10 * slow }):start()
    defer(function() d:stop() end)
    assert.are.equal(84, d:invoke(name, 42))
    assert.are.equal("quorum", queue_type(name))
  end)

  it("kill -9 of the node holding the worker's connection and its quorum queue's leader, 1000 calls in flight with {retry = 2}: all answered once, rightly", function()
    local name = unique("cluster_kill_worker")
    defer(function() pcall(ctl, "delete_queue", name) end)
    local worker = host(ALL, name, "quorum")
    defer(function() worker:kill() end)
    local k = assert(node_of(worker:pid()), "the worker's node")
    assert.are.equal(k, leader_of(name), "the queue's leader is on the node its worker declared it")
    local others = {}
    for i = 1, 3 do if i ~= k then others[#others + 1] = i end end
    local calls = load(urls(others), name, 1000)
    defer(function() calls:kill() end)
    assert(calls:wait_for("answered 100\n", 60 * slow, true), "calls flow:\n" .. calls:output())
    cluster_sh("kill", CLUSTER_DIR, tostring(k))
    restart_after(k)
    local summary = summary_of(calls, 120)
    assert_all_answered(summary, 1000)
    assert.is_nil(worker:status(), "the worker host stays up:\n" .. worker:output())
    assert.truthy(worker:output():find("reconnected to", 1, true), worker:output())
    assert.are_not.equal(k, node_of(worker:pid()), "the worker went over to another node")
  end)

  it("kill -9 of the delegator's node, 1000 calls in flight with {retry = 2}: all answered once, rightly", function()
    local name = unique("cluster_kill_delegator")
    defer(function() pcall(ctl, "delete_queue", name) end)
    local worker = host(url(1), name, "quorum")
    defer(function() worker:kill() end)
    local go = os.tmpname()
    os.remove(go)
    defer(function() os.remove(go) end)
    local calls = load(urls({ 2, 3 }), name, 1000, { "0", "", go })
    defer(function() calls:kill() end)
    local k = assert(node_of(calls:pid()), "the delegator's node")
    assert(io.open(go, "w")):close() -- the calls begin

    assert(calls:wait_for("answered 100\n", 60 * slow, true), "calls flow:\n" .. calls:output())
    cluster_sh("kill", CLUSTER_DIR, tostring(k))
    restart_after(k)
    local summary = summary_of(calls, 120)
    assert_all_answered(summary, 1000)
    assert.is_true(summary.retried > 0, "calls went again through the other node\n" .. summary.output)
  end)

  it("kill -9 of the node holding the delegator's connection and the queue's leader: all answered once, rightly", function()
    local name = unique("cluster_kill_leader")
    defer(function() pcall(ctl, "delete_queue", name) end)
    -- the queue's leader on node 1 (declared from there), its worker on node 2
    local declarer = delegate.worker({ name = name, url = url(1), queue = "quorum", task = function() end })
    declarer:start()
    declarer:stop()
    assert.are.equal(1, leader_of(name))
    local worker = host(url(2), name, "quorum")
    defer(function() worker:kill() end)
    -- a delegator on node 1 that can fail over to node 3
    local go = os.tmpname()
    os.remove(go)
    defer(function() os.remove(go) end)
    local calls
    for _ = 1, 10 do
      calls = load(urls({ 1, 3 }), name, 1000, { "0", "", go })
      if node_of(calls:pid()) == 1 then break end
      calls:kill()
      calls = nil
    end
    assert(calls, "a delegator on node 1")
    defer(function() calls:kill() end)
    assert(io.open(go, "w")):close()
    assert(calls:wait_for("answered 100\n", 60 * slow, true), "calls flow:\n" .. calls:output())
    cluster_sh("kill", CLUSTER_DIR, "1")
    restart_after(1)
    local summary = summary_of(calls, 120)
    assert_all_answered(summary, 1000)
  end)

  it("a rolling restart of the three nodes under load: every call answered, rightly", function()
    local name = unique("cluster_rolling")
    defer(function() pcall(ctl, "delete_queue", name) end)
    local worker = host(ALL, name, "quorum")
    defer(function() worker:kill() end)
    local stop_file = os.tmpname()
    os.remove(stop_file)
    local calls = load(ALL, name, 0, { tostring(math.ceil(300 * slow)), stop_file })
    defer(function() calls:kill() end)
    assert(calls:wait_for("answered 100\n", 60 * slow, true), "calls flow:\n" .. calls:output())
    for k = 1, 3 do
      cluster_sh("stop-node", CLUSTER_DIR, tostring(k))
      cluster_sh("restart", CLUSTER_DIR, tostring(k))
    end
    local f = assert(io.open(stop_file, "w"))
    f:close()
    defer(function() os.remove(stop_file) end)
    local summary = summary_of(calls, 120)
    assert_all_answered(summary)
    assert.is_true(summary.answered > 100, summary.output)
    assert.is_nil(worker:status(), "the worker host stays up:\n" .. worker:output())
  end)

  it("a quorum queue an operator declared is joined by a worker with the default options", function()
    local name = unique("cluster_predeclared")
    defer(function() pcall(ctl, "delete_queue", name) end)
    local node = delegate.worker({ name = name, url = url(2), queue = "quorum",
      task = function() end })
    node:start() -- declares the quorum queue on node 2, as an operator would
    node:stop()
    local worker = host(ALL, name, nil)
    defer(function() worker:kill() end)
    local d = delegate.delegator({ url = ALL, timeout = 10 * slow }):start()
    defer(function() d:stop() end)
    assert.are.equal(10, d:invoke(name, 5))
    assert.are.equal("quorum", queue_type(name))
  end)

  it("the same worker file serves against one node and against the cluster", function()
    local single = support.host({ "scripts/adder.lua" }, { url = broker.url() })
    defer(function() single:kill() end)
    local clustered = support.host({ "scripts/adder.lua" }, { url = ALL })
    defer(function() clustered:kill() end)
    local on_node = delegate.delegator({ url = broker.url(), timeout = 10 * slow }):start()
    defer(function() on_node:stop() end)
    local on_cluster = delegate.delegator({ url = ALL, timeout = 10 * slow }):start()
    defer(function() on_cluster:stop() end)
    assert.are.equal(25, on_node:invoke("adder", 10, 15))
    assert.are.equal(25, on_cluster:invoke("adder", 10, 15))
  end)
end)

-- Helpers for specs that need the private 3-node RabbitMQ cluster started by scripts/test.sh
-- (scripts/cluster.sh).
--
--   local cluster = require "spec.helpers.cluster"
--   if not cluster.available() then pending("no cluster") return end
--
-- Environment (set by scripts/test.sh, or `set -a; . DIR/env; set +a` after
-- `scripts/cluster.sh start DIR`): CLUSTER_URLS, CLUSTER_URL_1..3, CLUSTER_DIR_1..3 and
-- CLUSTER_ENV (DIR/env, which holds the rest: node names, ports). Nodes are numbered 1..3.
--
-- Broker-side helpers run scripts/cluster.sh and rabbitmqctl; the AMQP ones (declare, delete,
-- publish, get, message_count) use Debian's python3-pika through /usr/bin/python3, a client
-- independent of the code under test. Each helper raises an error when its command fails.
local broker = require "spec.helpers.broker"
local cjson = require "cjson"

local cluster = {}
local q, run = broker.shell_quote, broker.run
local ROOT = broker.root()

-- ------------------------------------------------------------------ configuration

local function nonempty(s) return s ~= nil and s ~= "" end

local file_vars -- the lines of CLUSTER_ENV, read once
local function env_file()
  local f = os.getenv("CLUSTER_ENV")
  if nonempty(f) then return f end
  local d = os.getenv("CLUSTER_DIR")
  if nonempty(d) then return d .. "/env" end
  return nil
end

local function var(name) -- CLUSTER_... from the process environment, else from CLUSTER_ENV
  local v = os.getenv(name)
  if nonempty(v) then return v end
  if not file_vars then
    file_vars = {}
    local path = env_file()
    local text = path and broker.read_file(path) or ""
    for k, val in text:gmatch("([%w_]+)=([^\n]*)") do file_vars[k] = val end
  end
  v = file_vars[name]
  if nonempty(v) then return v end
  return nil
end

local function need(name)
  local v = var(name)
  if not v then
    error(name .. " is not set: run the specs through scripts/test.sh, or export the lines of DIR/env after scripts/cluster.sh start DIR", 3)
  end
  return v
end

-- true when a cluster was given to the specs (CLUSTER_URLS set)
function cluster.available()
  return nonempty(os.getenv("CLUSTER_URLS"))
end

function cluster.urls()
  local t = {}
  for u in need("CLUSTER_URLS"):gmatch("[^,]+") do t[#t + 1] = u end
  return t
end

function cluster.size() return #cluster.urls() end

local function check_k(k)
  local n = cluster.size()
  if math.type(k) ~= "integer" or k < 1 or k > n then
    error("node index must be an integer in 1.." .. n .. ", not " .. tostring(k), 3)
  end
  return k
end

function cluster.url(k) return cluster.urls()[check_k(k)] end

function cluster.port(k) return tonumber(cluster.url(k):match(":(%d+)/?[^:]*$")) end

-- the Erlang node name of node k (adtest-PORT@localhost)
function cluster.node(k) return need("CLUSTER_NODE_" .. check_k(k)) end

-- node k's scripts/rabbitmq.sh dir (for `scripts/rabbitmq.sh ctl|diag|status DIR`)
function cluster.dir(k) return need("CLUSTER_DIR_" .. check_k(k)) end

-- the cluster's own DIR (for scripts/cluster.sh)
local function cluster_dir()
  local d = var("CLUSTER_DIR")
  if d then return d end
  local f = env_file()
  if f then return (f:gsub("/[^/]*$", "")) end
  return (cluster.dir(1):gsub("/[^/]*$", ""))
end

-- the AMQPS port of node k (from its rabbitmq.sh env; all nodes share DIR/node1/tls's CA)
function cluster.tls_port(k)
  local text = broker.read_file(cluster.dir(k) .. "/env") or ""
  return tonumber(text:match("AMQPS_PORT=(%d+)"))
end

-- k of the node listening on `port` (its AMQP or AMQPS port), or nil
function cluster.node_of_port(port)
  port = tonumber(port)
  for k = 1, cluster.size() do
    if cluster.port(k) == port or cluster.tls_port(k) == port then return k end
  end
  return nil
end

-- k of the node named `name` (adtest-PORT@localhost), or nil
function cluster.index_of_node(name)
  for k = 1, cluster.size() do
    if cluster.node(k) == name then return k end
  end
  return nil
end

-- ------------------------------------------------------------------ scripts/cluster.sh

local function sh(words)
  local out, status, err = run(table.concat(words, " ") .. " </dev/null")
  return out, status, err
end

local function cluster_sh(cmd, ...)
  local words = { "bash", q(ROOT .. "/scripts/cluster.sh"), q(cmd), q(cluster_dir()) }
  for _, a in ipairs({ ... }) do words[#words + 1] = q(a) end
  return sh(words)
end

local function cluster_sh_ok(cmd, ...)
  local out, status, err = cluster_sh(cmd, ...)
  if status ~= 0 then
    error(string.format("scripts/cluster.sh %s failed (status %d):\n%s%s", cmd, status, out, err), 3)
  end
  return out
end

-- kill -9 node k's Erlang VM; returns once it is gone
function cluster.kill(k) cluster_sh_ok("kill", check_k(k)) end

-- starts a killed or stopped node k again (same ports and data); returns once the cluster has
-- all its nodes running again (about 6 s)
function cluster.restart(k) cluster_sh_ok("restart", check_k(k)) end

-- stops node k gracefully
function cluster.stop_node(k) cluster_sh_ok("stop-node", check_k(k)) end

-- sorted list of the k of the running nodes (empty when none answers)
function cluster.running()
  local out, status = cluster_sh("status")
  local t = {}
  if status ~= 0 then return t end
  for k in out:gmatch("(%d+) [^\n]*") do t[#t + 1] = tonumber(k) end
  table.sort(t)
  return t
end

-- k of the node that leads quorum queue `queue` (vhost /), or nil when it has no leader on a
-- live node (yet)
function cluster.leader(queue)
  local out, status = cluster_sh("leader", queue)
  if status ~= 0 then return nil end
  return tonumber(out:match("%d+"))
end

-- waits up to `timeout` seconds (default 10) for quorum queue `queue` to have a leader, other
-- than node `except` when given; returns its k, or nil
function cluster.wait_leader(queue, timeout, except)
  return broker.eventually(function()
    local k = cluster.leader(queue)
    if k and k ~= except then return k end
    return nil
  end, timeout or 10, 0.2)
end

-- ------------------------------------------------------------------ rabbitmqctl on node k

-- rabbitmqctl -n NODE_k ARGS...; returns its stdout
function cluster.ctl(k, ...)
  local words = { "bash", q(ROOT .. "/scripts/rabbitmq.sh"), "ctl", q(cluster.dir(k)) }
  for _, a in ipairs({ ... }) do words[#words + 1] = q(a) end
  local out, status, err = sh(words)
  if status ~= 0 then
    error(string.format("rabbitmqctl on node %d failed (status %d):\n%s%s", k, status, out, err), 2)
  end
  return out
end

local function int(v) return math.tointeger(v) or v end

-- the client connections on node k (AMQP and AMQPS), as
-- { name = "127.0.0.1:PEER -> 127.0.0.1:PORT", peer_port = n, port = n, user = s,
--   client_name = the client's connection_name property, or nil }
-- The list is asked of node k itself: a node that is down has none.
function cluster.connections(k)
  check_k(k)
  local words = { "bash", q(ROOT .. "/scripts/rabbitmq.sh"), "ctl", q(cluster.dir(k)), "-q",
    "list_connections", "port", "peer_port", "name", "user", "client_properties", "--formatter", "json" }
  local out, status, err = sh(words)
  if status ~= 0 then
    -- a node that does not run has no connections; any other failure is an error
    local up = false
    for _, r in ipairs(cluster.running()) do up = up or r == k end
    if not up then return {} end
    error(string.format("list_connections on node %d failed (status %d):\n%s%s", k, status, out, err), 2)
  end
  local ok, rows = pcall(cjson.decode, out)
  if not ok or type(rows) ~= "table" then
    error("list_connections on node " .. k .. " gave no JSON: " .. out, 2)
  end
  -- rabbitmqctl lists the connections of the whole cluster: keep node k's
  local mine = { [cluster.port(k)] = true }
  local tls = cluster.tls_port(k)
  if tls then mine[tls] = true end
  local t = {}
  for _, row in ipairs(rows) do
    local port = int(row.port)
    if mine[port] then
      local client_name
      if type(row.client_properties) == "table" then
        for _, p in ipairs(row.client_properties) do
          if p[1] == "connection_name" then client_name = p[3] end
        end
      end
      t[#t + 1] = { name = row.name, peer_port = int(row.peer_port), port = port, user = row.user,
        client_name = client_name }
    end
  end
  return t
end

-- { type = "quorum"|"classic"|..., messages = n, consumers = n, leader = k or nil,
--   leader_node = name, members = { k... } (quorum queues) } of queue `name` (vhost /) as node k
-- lists it, or nil when there is no such queue. RabbitMQ refreshes the message count of a
-- quorum queue every few seconds: cluster.message_count is exact.
function cluster.queue_info(k, name)
  local out = cluster.ctl(k, "-q", "list_queues", "--no-table-headers",
    "name", "type", "messages", "consumers", "leader", "members")
  for line in out:gmatch("[^\n]+") do
    local f = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
    if f[1] == name then
      local members = {}
      for m in (f[6] or ""):gmatch("[^%[%], ]+") do
        members[#members + 1] = cluster.index_of_node(m) or m
      end
      if #members > 0 then table.sort(members, function(a, b) return tostring(a) < tostring(b) end) end
      local leader_node = nonempty(f[5]) and f[5] or nil
      return {
        type = f[2],
        messages = tonumber(f[3]),
        consumers = tonumber(f[4]),
        leader = leader_node and cluster.index_of_node(leader_node) or nil,
        leader_node = leader_node,
        members = members,
      }
    end
  end
  return nil
end

-- ------------------------------------------------------------------ AMQP through pika

local PY = "/usr/bin/python3" -- Debian's, with python3-pika (the first python3 on PATH may lack it)

-- one program for every AMQP helper: prints one JSON value, exits 1 with the error on stderr
local PIKA = [[
import json, sys
import pika
op, url, queue = sys.argv[1], sys.argv[2], sys.argv[3]
params = pika.URLParameters(url)
params.connection_attempts = 1
params.socket_timeout = 5
params.blocked_connection_timeout = 20
params.client_properties = {"connection_name": "spec.helpers.cluster " + op}
conn = pika.BlockingConnection(params)
ch = conn.channel()
if op == "declare_quorum":
    args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    args["x-queue-type"] = "quorum"
    ok = ch.queue_declare(queue, durable=True, arguments=args)
    result = ok.method.message_count
elif op == "delete":
    ok = ch.queue_delete(queue)
    result = ok.method.message_count
elif op == "count":
    ok = ch.queue_declare(queue, passive=True)
    result = {"messages": ok.method.message_count, "consumers": ok.method.consumer_count}
elif op == "publish":
    bodies = json.loads(sys.argv[4])
    ch.confirm_delivery()   # basic_publish now waits for each confirm; raises on nack or return
    for b in bodies:
        ch.basic_publish("", queue, b.encode(), pika.BasicProperties(delivery_mode=2), mandatory=True)
    result = len(bodies)
elif op == "get":
    result = []
    for _ in range(int(sys.argv[4])):
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            break
        result.append(body.decode("utf-8", "replace"))
        ch.basic_ack(method.delivery_tag)
else:
    raise SystemExit("unknown op " + op)
conn.close()
print(json.dumps(result))
]]

local function pika(op, k, queue, arg)
  local words = { PY, "-c", q(PIKA), q(op), q(cluster.url(k)), q(queue) }
  if arg then words[#words + 1] = q(arg) end
  local out, status, err = sh(words)
  if status ~= 0 then
    error(string.format("%s of %s through node %d failed (status %d): %s%s", op, queue, k, status, out, err), 3)
  end
  return cjson.decode(out)
end

-- declares durable quorum queue `name` through node k; `args`: more x-arguments (table)
function cluster.declare_quorum(k, name, args)
  return int(pika("declare_quorum", k, name, args and cjson.encode(args) or nil))
end

-- deletes queue `name` through node k; returns the number of messages it had
function cluster.delete_queue(k, name)
  return int(pika("delete", k, name))
end

-- publishes persistent messages to queue `name` (default exchange) through node k, each one
-- confirmed (mandatory: an unroutable one is an error). `bodies`: a list of strings, or a
-- count n (bodies "1".."n"). Returns the number published.
function cluster.publish(k, name, bodies)
  if type(bodies) == "number" then
    local n = bodies
    bodies = {}
    for i = 1, n do bodies[i] = tostring(i) end
  end
  return int(pika("publish", k, name, cjson.encode(bodies)))
end

-- takes (basic.get + ack) up to `max` messages (default 1000) from queue `name` through node k;
-- returns their bodies in order
function cluster.get(k, name, max)
  local t = pika("get", k, name, tostring(max or 1000))
  if next(t) == nil then return {} end -- cjson decodes [] as an empty table anyway
  return t
end

-- exact number of messages ready in queue `name`, and of its consumers, asked through node k
function cluster.message_count(k, name)
  local t = pika("count", k, name)
  return int(t.messages), int(t.consumers)
end

return cluster

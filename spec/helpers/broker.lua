-- Helpers for specs that need the private RabbitMQ node started by scripts/test.sh
-- (scripts/rabbitmq.sh) and the Node.js peers in spec/node.
--
--   local broker = require "spec.helpers.broker"    -- busted runs from the repo root
--
-- Environment (set by scripts/test.sh): AMQP_URL, AMQP_PORT, RABBITMQ_DIR.
-- Only the Lua 5.4 standard library is used (io.popen / os.execute / temp files).
local broker = {}

-- ------------------------------------------------------------------ small tools

local function q(s) -- quote one shell word
  s = tostring(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
broker.shell_quote = q

local function sleep(seconds)
  os.execute("sleep " .. string.format("%.3f", seconds))
end
broker.sleep = sleep

local function now() -- monotonic wall clock in seconds (1/100 s from /proc/uptime, else os.time)
  local f = io.open("/proc/uptime", "r")
  if f then
    local t = f:read("n")
    f:close()
    if t then return t end
  end
  return os.time()
end
broker.now = now

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
broker.read_file = read_file

-- A new empty temp file. Under scripts/test.sh it goes to $AMQP_DELEGATE_TMPDIR, which the
-- script removes at the end, so interrupted runs leave nothing in /tmp.
local function tmpname()
  local name = os.tmpname() -- creates /tmp/lua_XXXXXX
  local dir = os.getenv("AMQP_DELEGATE_TMPDIR")
  if dir and dir ~= "" then
    local moved = dir .. "/" .. name:match("[^/]+$")
    if os.rename(name, moved) then return moved end
  end
  return name
end

-- Run a shell command; returns stdout, status (exit code, or 128+signal), stderr.
local function run(cmd)
  local errfile = tmpname()
  local p = assert(io.popen(cmd .. " 2>" .. q(errfile), "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  local err = read_file(errfile) or ""
  os.remove(errfile)
  local status
  if ok then
    status = 0
  elseif how == "exit" then
    status = code
  else
    status = 128 + (code or 0)
  end
  return out, status, err
end
broker.run = run

-- Repository root: from this file's location (spec/helpers/broker.lua), made absolute.
local function find_root()
  local env = os.getenv("AMQP_DELEGATE_ROOT")
  if env and env ~= "" then return env end
  local src = debug.getinfo(1, "S").source
  local path = src:sub(1, 1) == "@" and src:sub(2) or "spec/helpers/broker.lua"
  local dir = path:match("^(.*)/spec/helpers/[^/]*$")
  if dir == nil then
    dir = "."
  elseif dir == "" then
    dir = "/"
  end
  local out = run("cd " .. q(dir) .. " && pwd -P")
  return (out:gsub("%s+$", ""))
end

local ROOT = find_root()
function broker.root() return ROOT end

-- ------------------------------------------------------------------ the broker

function broker.url()
  local url = os.getenv("AMQP_URL")
  if not url or url == "" then
    error("AMQP_URL is not set: run the specs through scripts/test.sh (or start a broker with scripts/rabbitmq.sh start DIR and export the lines of DIR/env)", 2)
  end
  return url
end

function broker.port()
  local port = os.getenv("AMQP_PORT")
  if port and port ~= "" then return tonumber(port) end
  return tonumber(broker.url():match(":(%d+)/?[^:]*$"))
end

function broker.dir()
  local dir = os.getenv("RABBITMQ_DIR")
  if not dir or dir == "" then
    error("RABBITMQ_DIR is not set: run the specs through scripts/test.sh", 2)
  end
  return dir
end

-- scripts/rabbitmq.sh CMD RABBITMQ_DIR ARGS... ; returns stdout, errors when it fails
local function rabbitmq_sh(cmd, ...)
  local words = { "bash", q(ROOT .. "/scripts/rabbitmq.sh"), q(cmd), q(broker.dir()) }
  for _, a in ipairs({ ... }) do words[#words + 1] = q(a) end
  local out, status, err = run(table.concat(words, " "))
  if status ~= 0 then
    error(string.format("scripts/rabbitmq.sh %s failed (status %d):\n%s%s", cmd, status, out, err), 3)
  end
  return out
end

-- rabbitmqctl -n NODE ARGS... on the test node; returns its stdout
function broker.ctl(...)
  return rabbitmq_sh("ctl", ...)
end

-- rabbitmq-diagnostics -n NODE ARGS... on the test node; returns its stdout
function broker.diag(...)
  return rabbitmq_sh("diag", ...)
end

-- Full stop + start of the node on the same port and data (clients lose their connections and
-- cannot reconnect while it is down). `down_seconds` keeps it down that long.
function broker.restart(down_seconds)
  if down_seconds and down_seconds > 0 then
    rabbitmq_sh("stop")
    sleep(down_seconds)
    rabbitmq_sh("start")
  else
    rabbitmq_sh("restart")
  end
end

function broker.stop() rabbitmq_sh("stop") end
function broker.start() rabbitmq_sh("start") end

-- stop_app + start_app: the VM stays, every client connection is closed
function broker.restart_app()
  rabbitmq_sh("restart-app")
end

-- name -> { ready = n, unacked = n, consumers = n } for every queue of vhost /
function broker.queues()
  local out = broker.ctl("-q", "list_queues", "--no-table-headers",
    "name", "messages_ready", "messages_unacknowledged", "consumers")
  local t = {}
  for line in out:gmatch("[^\n]+") do
    local name, ready, unacked, consumers = line:match("^(.-)\t(%d+)\t(%d+)\t(%d+)%s*$")
    if name then
      t[name] = { ready = tonumber(ready), unacked = tonumber(unacked), consumers = tonumber(consumers) }
    end
  end
  return t
end

-- list of { name=, user=, ... } for the current AMQP connections (for leak checks)
function broker.connections()
  local out = broker.ctl("-q", "list_connections", "--no-table-headers", "name", "user", "channels")
  local t = {}
  for line in out:gmatch("[^\n]+") do
    local name, user, channels = line:match("^(.-)\t(.-)\t(%d+)%s*$")
    if name then t[#t + 1] = { name = name, user = user, channels = tonumber(channels) } end
  end
  return t
end

-- Polls fn() every `step` seconds until it returns a truthy value or `seconds` pass.
-- Returns that value, or nil.
function broker.eventually(fn, seconds, step)
  seconds = seconds or 10
  step = step or 0.1
  local deadline = now() + seconds
  while true do
    local v = fn()
    if v then return v end
    if now() > deadline then return nil end
    sleep(step)
  end
end

-- ------------------------------------------------------------------ background processes

local Process = {}
Process.__index = Process

local spawned = {} -- every handle not yet cleaned up

-- Starts `cmd` (one shell command; it is exec'ed so that the pid is the command's own) in the
-- background, in its own process group, stdout+stderr to a temp file, stdin from /dev/null.
-- opts.env: table of extra environment variables.
function broker.spawn(cmd, opts)
  opts = opts or {}
  local out, pidf, statusf = tmpname(), tmpname(), tmpname()
  os.remove(statusf)
  local env = ""
  if opts.env then
    local words = {}
    for k, v in pairs(opts.env) do words[#words + 1] = k .. "=" .. q(v) end
    env = "env " .. table.concat(words, " ") .. " "
  end
  -- the inner shell starts the command in its own session, records its pid, waits for it and
  -- writes its exit status (128+N when killed by signal N) to a separate file
  local inner = table.concat({
    "setsid sh -c " .. q("exec " .. env .. cmd) .. " >" .. q(out) .. " 2>&1 </dev/null &",
    "p=$!",
    "echo $p >" .. q(pidf),
    "wait $p",
    "echo $? >" .. q(statusf .. ".tmp"),
    "mv " .. q(statusf .. ".tmp") .. " " .. q(statusf),
  }, "\n")
  local launch = "sh -c " .. q(inner) .. " >/dev/null 2>&1 </dev/null &"
  local ok = os.execute(launch)
  if not ok then error("could not launch: " .. cmd, 2) end
  local pid
  for _ = 1, 200 do
    local s = read_file(pidf)
    if s then pid = tonumber(s:match("%d+")) end
    if pid then break end
    sleep(0.025)
  end
  if not pid then error("spawned process did not report its pid: " .. cmd, 2) end
  -- scripts/test.sh kills what is listed there when a run is interrupted
  local registry = os.getenv("AMQP_DELEGATE_PIDS")
  if registry and registry ~= "" then
    local f = io.open(registry, "a")
    if f then
      f:write(pid, "\n")
      f:close()
    end
  end
  local h = setmetatable({ cmd = cmd, _pid = pid, _out = out, _pidf = pidf, _statusf = statusf }, Process)
  spawned[h] = true
  return h
end

function Process:pid() return self._pid end

-- everything the process wrote so far (stdout and stderr together)
function Process:output() return read_file(self._out) or "" end

-- exit status when it has exited (code, or 128+signal), else nil
function Process:status()
  local s = read_file(self._statusf)
  return s and tonumber(s:match("%d+")) or nil
end

function Process:alive()
  if self:status() then return false end
  return os.execute("kill -0 " .. self._pid .. " 2>/dev/null") == true
end

-- Polls the output for a Lua pattern (plain text when `plain`) until `seconds` (default 10).
-- Returns true, output on a match; false, output on a timeout or when the process exited first.
function Process:wait_for(pattern, seconds, plain)
  local deadline = now() + (seconds or 10)
  while true do
    local o = self:output()
    if o:find(pattern, 1, plain) then return true, o end
    if self:status() then
      o = self:output() -- one last look: it may have written just before exiting
      return o:find(pattern, 1, plain) ~= nil, o
    end
    if now() > deadline then return false, o end
    sleep(0.05)
  end
end

-- kill -NAME pid (name: "TERM", "INT", "KILL", "HUP", ... ); `group` signals its process group
function Process:signal(name, group)
  -- (no "--" before a negative pid: dash's kill refuses it)
  local target = group and ("-" .. self._pid) or tostring(self._pid)
  return os.execute("kill -" .. (name or "TERM") .. " " .. target .. " 2>/dev/null") == true
end

-- waits for the exit; returns the status (code, or 128+signal) or nil, "timeout"
function Process:wait_exit(seconds)
  local deadline = now() + (seconds or 10)
  while true do
    local s = self:status()
    if s then return s end
    if now() > deadline then return nil, "timeout" end
    sleep(0.05)
  end
end

-- TERM to its process group, then KILL after `grace` seconds (default 5); removes temp files
-- unless `keep`. Returns the exit status.
function Process:kill(grace, keep)
  local s = self:status()
  if not s then
    self:signal("TERM", true)
    s = self:wait_exit(grace or 5)
    if not s then
      self:signal("KILL", true)
      s = self:wait_exit(5)
    end
  end
  if not keep then self:cleanup() end
  return s
end

function Process:cleanup()
  os.remove(self._pidf)
  os.remove(self._statusf)
  os.remove(self._out)
  spawned[self] = nil
end

-- kills every process spawned by this module and not cleaned up yet (for after_each/teardown);
-- the grace before KILL grows with AMQP_DELEGATE_SLOW (under valgrind a host needs longer to
-- stop and check its memory, and a KILLed one is not checked)
function broker.kill_all()
  local grace = 2 * (tonumber(os.getenv("AMQP_DELEGATE_SLOW") or "") or 1)
  for h in pairs(spawned) do h:kill(grace) end
end

-- last resort: when this module is collected (busted closes the state on exit; insulation drops
-- the module after each spec file), whatever is still running is killed
broker._reaper = setmetatable({}, { __gc = function() broker.kill_all() end })

-- ------------------------------------------------------------------ Node.js peers

local function node_script(name)
  return ROOT .. "/spec/node/" .. name
end

-- Starts spec/node/worker.js serving `name` with `task` (add, echo, echoargs, tagged, fail, slow)
-- and waits for its "ready" line. opts.url, opts.timeout (seconds to wait, default 20).
function broker.node_worker(name, task, tag, opts)
  opts = opts or {}
  local words = { "node", q(node_script("worker.js")), "--url", q(opts.url or broker.url()),
    "--name", q(name), "--task", q(task) }
  if tag then
    words[#words + 1] = "--tag"
    words[#words + 1] = q(tag)
  end
  local h = broker.spawn(table.concat(words, " "))
  local ok, out = h:wait_for("ready\n", opts.timeout or 20, true)
  if not ok then
    h:kill()
    error("node worker " .. name .. " did not get ready:\n" .. out, 2)
  end
  return h
end

-- Runs spec/node/delegator.js once (synchronously): calls `name` with `args_json` (a JSON array
-- as a string). opts.timeout (ms, default 10000), opts.count, opts.raw, opts.url.
-- Returns stdout without its final newline (one line per call), the exit status (0 ok,
-- 2 timeout, 1 error) and stderr.
function broker.node_call(name, args_json, opts)
  opts = opts or {}
  local words = { "node", q(node_script("delegator.js")), "--url", q(opts.url or broker.url()),
    "--name", q(name) }
  if opts.timeout then
    words[#words + 1] = "--timeout"
    words[#words + 1] = tostring(math.tointeger(opts.timeout) or opts.timeout)
  end
  if opts.count then
    words[#words + 1] = "--count"
    words[#words + 1] = tostring(opts.count)
  end
  if opts.raw then words[#words + 1] = "--raw" end
  words[#words + 1] = q(args_json or "[]")
  local out, status, err = run(table.concat(words, " ") .. " </dev/null")
  return (out:gsub("\n$", "")), status, err
end

return broker

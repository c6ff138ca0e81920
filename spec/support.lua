-- Shared pieces of the specs: the host executable's path and starting it.
local broker = require "spec.helpers.broker"

local support = {}

-- AMQP_DELEGATE_WRAPPER (shell words, e.g. "valgrind --error-exitcode=99 --log-file=DIR/%p.log")
-- runs every host executable under that command: host_binary() then returns the path of a small
-- script that execs the wrapper on the real binary (same pid, same arguments), so specs that run
-- the binary themselves are wrapped as well. scripts/instrumented-specs.sh sets it.
local wrapped_binary

local function write_wrapper(real, wrapper)
  local dir = os.getenv("AMQP_DELEGATE_TMPDIR")
  local path = os.tmpname()
  if dir and dir ~= "" then
    local moved = dir .. "/" .. path:match("[^/]+$") .. ".host"
    if os.rename(path, moved) then path = moved end
  end
  local f = assert(io.open(path, "w"))
  f:write("#!/bin/sh\n", "exec ", wrapper, " ", broker.shell_quote(real), ' "$@"\n')
  f:close()
  assert(os.execute("chmod +x " .. broker.shell_quote(path)))
  -- removed when this module is collected (busted closes the state on exit)
  support._wrapper_reaper = setmetatable({}, { __gc = function() os.remove(path) end })
  return path
end

function support.host_binary()
  local build = os.getenv("AMQP_DELEGATE_BUILD") or (broker.root() .. "/build")
  local real = build .. "/amqp-delegate"
  local wrapper = os.getenv("AMQP_DELEGATE_WRAPPER")
  if not wrapper or wrapper == "" then return real end
  wrapped_binary = wrapped_binary or write_wrapper(real, wrapper)
  return wrapped_binary
end

-- How much slower than usual processes run (AMQP_DELEGATE_SLOW, default 1; about 10 under
-- valgrind): waits for a process to get somewhere are multiplied by it, assertions stay.
support.slow = tonumber(os.getenv("AMQP_DELEGATE_SLOW") or "") or 1

-- Hosts run under valgrind (AMQP_DELEGATE_WRAPPER): what /proc shows of a host process (its
-- command line) is then valgrind's, not the host's.
support.under_valgrind = (os.getenv("AMQP_DELEGATE_WRAPPER") or ""):find("valgrind", 1, true) ~= nil

-- Runs `amqp-delegate WORDS...` to its end (standard input empty, stopped after 60 s, or more
-- under valgrind); returns its standard output, exit status and standard error.
function support.command(...)
  local words = { "timeout", "-k", "2", tostring(math.ceil(60 * support.slow)),
    broker.shell_quote(support.host_binary()) }
  for _, word in ipairs({ ... }) do words[#words + 1] = broker.shell_quote(word) end
  return broker.run(table.concat(words, " ") .. " </dev/null")
end

-- Starts `amqp-delegate run` on the given worker files and waits for "ready".
function support.host(files, options)
  options = options or {}
  local words = { broker.shell_quote(support.host_binary()), "run", "--url",
    broker.shell_quote(options.url or broker.url()) }
  for _, flag in ipairs(options.flags or {}) do words[#words + 1] = broker.shell_quote(flag) end
  for _, file in ipairs(files) do words[#words + 1] = broker.shell_quote(broker.root() .. "/" .. file) end
  local process = broker.spawn(table.concat(words, " "), { env = options.env })
  if options.wait ~= false then
    -- "ready" on a line of its own; it may come first when stderr reaches the output file
    -- later than stdout (under AMQP_DELEGATE_WRAPPER)
    local function ready_line() return ("\n" .. process:output()):find("\nready\n", 1, true) end
    broker.eventually(function() return ready_line() or process:status() end, 20 * support.slow, 0.05)
    local ready, output = ready_line(), process:output()
    if not ready then
      process:kill()
      error("host did not get ready:\n" .. output, 2)
    end
  end
  return process
end

function support.delegator(options)
  local delegate = require "amqp_delegate"
  options = options or {}
  options.url = options.url or broker.url()
  return delegate.delegator(options):start()
end

-- busted keeps only the last function given to finally() in a test: a deferrer keeps them
-- all and runs them in reverse order (each protected; the first error is raised after).
--   local defer = support.deferrer(function(fn) finally(fn) end)   -- in a spec file
--   defer(function() host:kill() end)                               -- in a test, any number
function support.deferrer(register)
  local list = {}
  return function(fn)
    list[#list + 1] = fn
    local mine = list
    register(function()
      if list == mine then list = {} end
      local first_error
      for i = #mine, 1, -1 do
        local ok, err = pcall(mine[i])
        if not ok and not first_error then first_error = err end
      end
      if first_error then error(first_error, 0) end
    end)
  end
end

-- The test broker's memory alarm on or off (publishers are blocked while it is on); returns
-- once the broker says so.
function support.set_memory_alarm(on)
  local broker = require "spec.helpers.broker"
  broker.ctl("set_vm_memory_high_watermark", on and "0.0000001" or "0.4")
  assert(broker.eventually(function()
    local alarmed = broker.ctl("eval", "rabbit_alarm:get_alarms()."):find("memory", 1, true) ~= nil
    return alarmed == on
  end, 20 * support.slow, 0.2), "the memory alarm is " .. (on and "on" or "off"))
end

-- The Erlang pid of the broker connection of process `pid` (its connection_name client
-- property, "amqp-delegate pid N"), for rabbitmqctl close_connection; nil when none.
function support.connection_of(pid)
  local broker = require "spec.helpers.broker"
  local out = broker.ctl("-q", "list_connections", "--no-table-headers", "pid", "client_properties")
  for line in out:gmatch("[^\n]+") do
    local connection = line:match("^(.-)\t")
    if connection and line:find("amqp-delegate pid " .. pid .. "\"", 1, true) then return connection end
  end
  return nil
end

-- Declares queue `name` from an independent client (Node's amqplib) with assertQueue
-- options (a JSON object as text), then disconnects.
function support.node_declare(name, options_json)
  local broker = require "spec.helpers.broker"
  local q = broker.shell_quote
  local js = [[
const amqp = require('amqplib');
(async () => {
  const c = await amqp.connect(process.argv[1]);
  const ch = await c.createChannel();
  await ch.assertQueue(process.argv[2], JSON.parse(process.argv[3]));
  await c.close();
  console.log('declared');
})().catch((e) => { console.error(String(e)); process.exit(1); });
]]
  local out, status, err = broker.run("env NODE_PATH=" .. q(broker.root() .. "/spec/node/node_modules")
    .. " timeout " .. math.ceil(20 * support.slow) .. " node -e " .. q(js) .. " " .. q(broker.url())
    .. " " .. q(name) .. " " .. q(options_json) .. " </dev/null")
  assert(status == 0 and out:find("declared", 1, true), "node could not declare " .. name .. ": " .. out .. err)
end

-- A free port on loopback (nothing listens there until a forwarder does).
function support.free_port()
  for _ = 1, 50 do
    local port = math.random(20000, 60000)
    local _, status = broker.run("bash -c 'exec 3<>/dev/tcp/127.0.0.1/" .. port .. "' 2>/dev/null")
    if status ~= 0 then return port end
  end
  error("no free port")
end

-- Forwards port -> the test broker, from now on (a broker that comes up late); a process:
-- signal("STOP") on it freezes every connection through it (a broker that stops answering).
function support.forward(port)
  return broker.spawn(string.format("/usr/bin/python3 -c %s %d %d", broker.shell_quote([[
import socket, sys, threading
listen, target = int(sys.argv[1]), int(sys.argv[2])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", listen))
server.listen(16)
print("listening", flush=True)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data: break
            b.sendall(data)
    except OSError: pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
while True:
    client, _ = server.accept()
    upstream = socket.create_connection(("127.0.0.1", target))
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
]]), port, broker.port()))
end

-- A queue name no earlier run has used (queues outlive a spec on a reused broker).
function support.unique(prefix)
  return string.format("%s_%d_%d", prefix, os.time(), math.random(1e9))
end

-- Workers started in this process, stopped together by stop_all.
function support.in_process_workers(url)
  local delegate = require "amqp_delegate"
  local started = {}
  return {
    serve = function(options)
      options.url = url
      local worker = delegate.worker(options):start()
      started[#started + 1] = worker
      return worker
    end,
    stop_all = function()
      for _, worker in ipairs(started) do pcall(worker.stop, worker) end
    end,
  }
end

return support

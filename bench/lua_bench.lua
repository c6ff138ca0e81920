-- The Lua delegator side of the benchmark (scripts/bench.sh runs it against a host process).
--
--   lua5.4 bench/lua_bench.lua URL NAME seq|pipe CALLS WARMUP DEPTH [MAX_SECONDS]
--
-- seq:  d:invoke(NAME, i, 2), one call at a time.
-- pipe: DEPTH calls in flight: d:send DEPTH calls, then each time the oldest is waited for,
--       send one more (a window).
-- WARMUP calls first, not measured. After MAX_SECONDS of measured calls no new call is sent
-- (those in flight finish). Every result is checked (i + 2). Prints "RESULT key value" lines:
-- calls, seconds, cps, cpu_us (this process's CPU time per measured call, in microseconds),
-- p50_ms, p99_ms. Needs LUA_CPATH to find amqp_delegate.so and
-- bench_clock.so (a monotonic clock, bench/bench_clock.c).
-- URL may be a comma-separated list (a cluster). BENCH_CONFIRMS=0 turns publisher confirms off
-- (the A/B row). BENCH_SHOW_PEER=1 adds "RESULT peer_port P": the broker port this process's
-- connection went to (read with ss after the measurement), so that scripts/bench.sh can put the
-- other peers on the same cluster node.
local delegate = require "amqp_delegate"
local clock = require "bench_clock"

local url, name, mode = arg[1], arg[2], arg[3]
local calls, warmup, depth = tonumber(arg[4]), tonumber(arg[5] or 0), tonumber(arg[6] or 1)
local max_seconds = tonumber(arg[7] or math.huge)
if not (url and name and (mode == "seq" or mode == "pipe") and calls) then
  io.stderr:write("usage: lua_bench.lua URL NAME seq|pipe CALLS WARMUP DEPTH [MAX_SECONDS]\n")
  os.exit(64)
end

delegate.set_log_level("warn")
local d = delegate.delegator { url = url, confirms = os.getenv("BENCH_CONFIRMS") ~= "0" }:start()
local now = clock.now
local total = warmup + calls
local latencies = {}
local started, stop_at = now(), math.huge
local cpu_started = os.clock() -- os.clock is this process's CPU time

local function check(i, result)
  if result ~= i + 2 then
    error(string.format("call %d returned %s, not %d", i, tostring(result), i + 2))
  end
end

local function measured(i, t0, t1)
  if i > warmup then latencies[#latencies + 1] = t1 - t0 end
  if i == warmup then
    cpu_started = os.clock()
    started = t1
    stop_at = started + max_seconds
  end
end

if warmup == 0 then stop_at = started + max_seconds end

if mode == "seq" then
  local i = 1
  while i <= total do
    local t0 = now()
    local result = d:invoke(name, i, 2)
    local t1 = now()
    check(i, result)
    measured(i, t0, t1)
    if i > warmup and t1 > stop_at then break end
    i = i + 1
  end
else
  if not d.send then
    io.stderr:write("lua_bench.lua: this amqp_delegate has no delegator:send (pipelining)\n")
    d:stop()
    os.exit(3)
  end
  -- a ring of the calls in flight, oldest first
  local ring_call, ring_t0, ring_i = {}, {}, {}
  local head, count, size = 1, 0, depth
  local next_i, limit = 1, total
  local function send_more()
    while next_i <= limit and count < size do
      local slot = (head + count - 1) % size + 1
      ring_t0[slot] = now()
      ring_call[slot] = d:send(name, next_i, 2)
      ring_i[slot] = next_i
      next_i = next_i + 1
      count = count + 1
    end
  end
  send_more()
  while count > 0 do
    local call, t0, i = ring_call[head], ring_t0[head], ring_i[head]
    ring_call[head] = nil
    local result = call:wait()
    local t1 = now()
    head = head % size + 1
    count = count - 1
    check(i, result)
    measured(i, t0, t1)
    if i >= warmup and t1 > stop_at and limit > next_i - 1 then limit = next_i - 1 end
    send_more()
  end
end

local seconds = now() - started
local cpu = os.clock() - cpu_started
table.sort(latencies)
local n = #latencies
print(string.format("RESULT calls %d", n))
print(string.format("RESULT seconds %.3f", seconds))
print(string.format("RESULT cps %.1f", n / seconds))
if n > 0 then print(string.format("RESULT cpu_us %.2f", 1e6 * cpu / n)) end
if n > 0 then
  print(string.format("RESULT p50_ms %.3f", 1000 * latencies[math.floor(0.50 * (n - 1)) + 1]))
  print(string.format("RESULT p99_ms %.3f", 1000 * latencies[math.floor(0.99 * (n - 1)) + 1]))
end

-- the peer port of this process's (one) established TCP connection, from ss
local function peer_port()
  local sh = io.popen("echo $PPID") -- sh's parent: this process
  local pid = sh and sh:read("l")
  if sh then sh:close() end
  local ss = pid and io.popen("ss -tnpH state established 2>/dev/null")
  if not ss then return nil end
  local port
  for line in ss:lines() do
    if not port and line:find("pid=" .. pid .. ",", 1, true) then
      local addresses = {}
      for field in line:gmatch("%S+") do
        local p = field:match(":(%d+)$")
        if p then addresses[#addresses + 1] = p end
      end
      port = addresses[2] -- local address, then peer address
    end
  end
  ss:close()
  return port
end
if os.getenv("BENCH_SHOW_PEER") == "1" then
  local port = peer_port()
  if port then print("RESULT peer_port " .. port) end
end
d:stop()

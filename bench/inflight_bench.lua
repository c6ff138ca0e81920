-- Memory per call in flight (scripts/bench.sh): CALLS calls sent with d:send to a worker that is
-- not there yet, then a worker started in this process answers them all.
--
--   lua5.4 bench/inflight_bench.lua URL NAME CALLS
--
-- The worker's queue is made first (a worker started and stopped), so the requests wait in it.
-- Prints "RESULT key value" lines: rss_idle_kib (after start, nothing in flight), rss_peak_kib
-- (all CALLS sent and confirmed, none answered), rss_after_kib (all answered, handles dropped,
-- garbage collected), bytes_per_call ((peak - idle) / CALLS: the delegator's C state, the Lua
-- handle and its slot in the caller's table), seconds_send, seconds_answer, pending_after,
-- in_flight_after (both 0 when all came back). Every result is checked.
local delegate = require "amqp_delegate"

local url, name, calls = arg[1], arg[2], tonumber(arg[3])
if not (url and name and calls) then
  io.stderr:write("usage: inflight_bench.lua URL NAME CALLS\n")
  os.exit(64)
end
delegate.set_log_level("warn")

local function rss_kib()
  local f = assert(io.open("/proc/self/status"))
  local text = f:read("a")
  f:close()
  return tonumber(text:match("VmRSS:%s*(%d+)"))
end

local function settle_garbage()
  collectgarbage("collect")
  collectgarbage("collect")
end

local function serve(concurrency)
  return delegate.worker {
    url = url, name = name, concurrency = concurrency,
    task = function(a, b) return a + b end,
  }:start()
end

serve(1):stop() -- the queue exists from now on, with no consumer
-- the queue has no consumer yet, on purpose: the delegator must not ask for one (NO_WORKER)
local d = delegate.delegator { url = url, check_workers = false }:start()
settle_garbage()
local idle = rss_kib()

local clock = os.clock
local t0 = clock()
local handles = {}
for i = 1, calls do handles[i] = d:send(name, i, 1) end
-- the confirms of the last ones arrive while the loop runs: one short wait on a call that
-- cannot end yet would do, but a plain sleep keeps this simple
delegate.sleep(0.5)
local t1 = clock()
settle_garbage()
local peak = rss_kib()
local stats = d:stats()
io.stderr:write(("inflight_bench: %d in flight, %d pending, RSS %d KiB\n"):format(stats.in_flight,
  stats.pending or -1, peak))

local worker = serve(64)
for i = 1, calls do
  local result = handles[i]:wait()
  if result ~= i + 1 then error(("call %d returned %s"):format(i, tostring(result))) end
  handles[i] = nil
end
local t2 = clock()
worker:stop()
handles = nil
settle_garbage()
local after = rss_kib()
stats = d:stats()
print(("RESULT rss_idle_kib %d"):format(idle))
print(("RESULT rss_peak_kib %d"):format(peak))
print(("RESULT rss_after_kib %d"):format(after))
print(("RESULT bytes_per_call %.0f"):format((peak - idle) * 1024 / calls))
print(("RESULT seconds_send %.3f"):format(t1 - t0))
print(("RESULT seconds_answer %.3f"):format(t2 - t1))
print(("RESULT pending_after %d"):format(stats.pending or -1))
print(("RESULT in_flight_after %d"):format(stats.in_flight))
d:stop()

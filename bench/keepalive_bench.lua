-- The keepalive hook's A/B row (scripts/bench.sh): calls two hosts serving bench/spin_worker.lua,
-- one with the count hook (the default) and one run with AMQP_DELEGATE_KEEPALIVE=0, in turns
-- (on/off, then off/on, ...), RUNS times each; every call sums 1..N in the task.
--
--   lua5.4 bench/keepalive_bench.lua URL NAME_ON NAME_OFF RUNS N
--
-- Prints "RESULT key value": on_ns, off_ns (median CPU time per loop iteration, nanoseconds),
-- on_wall_ns, off_wall_ns (the same by the wall clock), runs, iterations.
local delegate = require "amqp_delegate"

local url, name_on, name_off = arg[1], arg[2], arg[3]
local runs, n = tonumber(arg[4] or 5), tonumber(arg[5] or 5e7)
if not (url and name_on and name_off) then
  io.stderr:write("usage: keepalive_bench.lua URL NAME_ON NAME_OFF RUNS N\n")
  os.exit(64)
end
n = math.tointeger(n) or error("N must be an integer")

delegate.set_log_level("warn")
local d = delegate.delegator { url = url, timeout = 300 }:start()
local times = { on = { cpu = {}, wall = {} }, off = { cpu = {}, wall = {} } }
local expected = n * (n + 1) // 2

local function run(which)
  local r = d:invoke(which == "on" and name_on or name_off, n)
  if r.sum ~= expected then error(string.format("%s: sum %s, not %d", which, tostring(r.sum), expected)) end
  table.insert(times[which].cpu, r.cpu)
  table.insert(times[which].wall, r.wall)
end

-- one unmeasured call each (the first call pays for the thread, the JIT-less warm caches)
d:invoke(name_on, 1000)
d:invoke(name_off, 1000)
for i = 1, runs do
  if i % 2 == 1 then
    run("on"); run("off")
  else
    run("off"); run("on")
  end
end

local function median(list)
  table.sort(list)
  return list[(#list + 1) // 2]
end
for _, which in ipairs { "on", "off" } do
  print(string.format("RESULT %s_ns %.3f", which, 1e9 * median(times[which].cpu) / n))
  print(string.format("RESULT %s_wall_ns %.3f", which, 1e9 * median(times[which].wall) / n))
end
print(string.format("RESULT runs %d", runs))
print(string.format("RESULT iterations %d", n))
d:stop()

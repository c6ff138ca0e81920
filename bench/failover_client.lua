-- The delegator of the failover measurement (scripts/bench.sh, cluster section):
--
--   lua5.4 bench/failover_client.lua URLS NAME OUT STOP_FILE [RETRY] [TIMEOUT]
--
-- Sequential calls d:invoke({retry = RETRY (2), timeout = TIMEOUT (30)}, NAME, i, 2) through a
-- delegator given the cluster's URLs (comma-separated), until STOP_FILE exists. Each answer
-- appends a line "i WALL ok" to OUT (WALL: CLOCK_REALTIME in seconds, the clock bash's
-- $EPOCHREALTIME reads), each failed call "i WALL error CODE"; OUT is line-buffered, so
-- scripts/bench.sh can wait for the first answer after it killed a node. A wrong sum raises.
-- Prints "ready" after the first answer.
local delegate = require "amqp_delegate"
local clock = require "bench_clock"

local urls, name, out_path, stop_file = arg[1], arg[2], arg[3], arg[4]
local retry, timeout = tonumber(arg[5] or 2), tonumber(arg[6] or 30)
if not (urls and name and out_path and stop_file) then
  io.stderr:write("usage: failover_client.lua URLS NAME OUT STOP_FILE [RETRY] [TIMEOUT]\n")
  os.exit(64)
end

delegate.set_log_level(os.getenv("BENCH_LOG_LEVEL") or "warn")
local d = delegate.delegator { url = urls }:start()
local out = assert(io.open(out_path, "a"))
out:setvbuf("line")
local options = { retry = retry, timeout = timeout }

local function stopped()
  local f = io.open(stop_file)
  if f then f:close() end
  return f ~= nil
end

local i, ready = 0, false
repeat
  for _ = 1, 20 do
    i = i + 1
    local ok, result = pcall(d.invoke, d, options, name, i, 2)
    local t = clock.wall()
    if ok then
      if result ~= i + 2 then error(string.format("call %d returned %s", i, tostring(result))) end
      out:write(string.format("%d %.6f ok\n", i, t))
      if not ready then
        ready = true
        print("ready")
        io.stdout:flush()
      end
    else
      local code = type(result) == "table" and result.code or tostring(result)
      out:write(string.format("%d %.6f error %s\n", i, t, code))
    end
  end
until stopped()
out:close()
local stats = d:stats()
print(string.format("RESULT calls %d", i))
print(string.format("RESULT retried %d", stats.retried))
print(string.format("RESULT unknown_replies %d", stats.unknown_replies))
d:stop()

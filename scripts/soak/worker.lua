-- The worker of the fault soak (scripts/soak.sh): served by
--   amqp-delegate run --url URL scripts/soak/worker.lua
-- "soak_echo"(id) returns {id = id, n = <calls this process served>, by = <tag>}: the driver
-- (scripts/soak/driver.lua) checks that `id` is the one it sent. Some calls first sleep a few
-- milliseconds through delegate.sleep (it yields to the loop, so the other tasks go on), to
-- keep several tasks in hand when the broker closes the connection or the host is killed.
--
-- Environment: SOAK_WORKER_TAG (tag in the results, default "w"), SOAK_SLEEP_MS (longest
-- sleep, default 5; 0: never), SOAK_SLEEP_PERCENT (share of calls that sleep, default 30),
-- SOAK_CONCURRENCY (tasks at once, default 8).
local delegate = require "amqp_delegate"

local tag = os.getenv("SOAK_WORKER_TAG") or "w"
local sleep_ms = tonumber(os.getenv("SOAK_SLEEP_MS") or "") or 5
local sleep_percent = tonumber(os.getenv("SOAK_SLEEP_PERCENT") or "") or 30
local concurrency = math.tointeger(tonumber(os.getenv("SOAK_CONCURRENCY") or "")) or 8

local served = 0

return {
  name = "soak_echo",
  concurrency = concurrency,
  task = function(id)
    served = served + 1
    local n = served
    if sleep_ms > 0 and math.random(100) <= sleep_percent then
      delegate.sleep(math.random(sleep_ms) / 1000)
    end
    return { id = id, n = n, by = tag }
  end,
}

-- A worker whose task sleeps (yielding to the loop) before it answers: for the timeout,
-- concurrency, graceful-stop and kill specs. The name comes from WORKER_NAME.
local delegate = require "amqp_delegate"

return {
  name = os.getenv("WORKER_NAME") or "sleeper",
  task = function(seconds, value)
    -- a line per task taken, so a spec can see what the host has in hand
    io.stdout:write("task ", tostring(value), " started\n")
    io.stdout:flush()
    delegate.sleep(seconds)
    return value
  end,
}

-- Workers for the metrics spec: one that answers, one that fails, one that takes its time,
-- one whose name needs escaping in a label, one that calls another worker (a delegator).
local delegate = require "amqp_delegate"

local caller, started = delegate.delegator({}), false

return {
  { name = "metrics_ok", task = function(value) return value end },
  { name = "metrics_fail", task = function(message) error(message or "it broke") end },
  {
    name = "metrics_slow",
    task = function(seconds)
      io.stdout:write("slow task started\n")
      io.stdout:flush()
      delegate.sleep(seconds)
      return seconds
    end,
  },
  { name = 'metrics_"odd"\\name', task = function() return true end },
  {
    name = "metrics_caller",
    task = function(value)
      if not started then
        caller:start()
        started = true
      end
      return caller:invoke("metrics_ok", value)
    end,
  },
}

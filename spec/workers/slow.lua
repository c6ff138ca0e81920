-- A worker that takes its time, for the call timeout specs.
local delegate = require "amqp_delegate"

return {
  name = "cli_slow",
  task = function(seconds)
    delegate.sleep(seconds)
    return "late"
  end,
}

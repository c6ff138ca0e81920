-- A task with a side effect (a line in RUNS_FILE per run) that takes `seconds`: for the spec
-- of a result lost with the connection and answered again from the kept result.
local delegate = require "amqp_delegate"

local function append(line)
  local f = assert(io.open(assert(os.getenv("RUNS_FILE")), "a"))
  f:write(line, "\n")
  f:close()
end

return {
  name = os.getenv("WORKER_NAME") or "kept_result",
  ack = os.getenv("WORKER_ACK"),
  task = function(seconds, value)
    append("run")
    delegate.sleep(seconds)
    append("finished")
    return value
  end,
}

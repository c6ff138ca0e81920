-- Shows what the host passed on to the core through the environment (the joined --url list,
-- --queue-type), then optionally waits (CLI_ENV_WAIT seconds) so that a spec can read the
-- process's command line while it runs.
local delegate = require "amqp_delegate"

io.stderr:write("AMQP_URL=", os.getenv("AMQP_URL") or "", "\n")
io.stderr:write("AMQP_DELEGATE_QUEUE_TYPE=", os.getenv("AMQP_DELEGATE_QUEUE_TYPE") or "", "\n")
io.stderr:flush()
local wait = tonumber(os.getenv("CLI_ENV_WAIT") or "")
if wait then delegate.sleep(wait) end

return { name = os.getenv("CLI_ENV_NAME") or "cli_env", task = function() return "env" end }

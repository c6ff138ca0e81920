-- A worker for the cluster specs: doubles its argument after a short pause (so calls are
-- in hand when a node dies). Name, queue type and concurrency come from the environment.
local delegate = require "amqp_delegate"

return {
  name = os.getenv("WORKER_NAME") or "doubler",
  queue = os.getenv("WORKER_QUEUE") or nil,
  concurrency = tonumber(os.getenv("WORKER_CONCURRENCY") or "16"),
  task = function(x)
    delegate.sleep(tonumber(os.getenv("WORKER_PAUSE") or "0.005"))
    return x * 2
  end,
}

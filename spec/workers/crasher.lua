-- A worker whose task kills its host before it can answer: a request that no worker can
-- finish, for the delivery-limit specs. Name and queue type come from the environment.
return {
  name = os.getenv("WORKER_NAME") or "crasher",
  queue = os.getenv("WORKER_QUEUE") or nil,
  delivery_limit = tonumber(os.getenv("DELIVERY_LIMIT") or "2"),
  task = function()
    io.stdout:write("task started\n")
    io.stdout:flush()
    os.exit(7)
  end,
}

-- A worker that says who answered, to see two workers share one queue.
return {
  name = os.getenv("WORKER_NAME") or "shared",
  task = function(a, b)
    return { worker = os.getenv("WORKER_TAG") or "lua", sum = a + b }
  end,
}

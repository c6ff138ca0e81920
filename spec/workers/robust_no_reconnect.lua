-- A worker that must not reconnect (reconnect_max = 0): once the broker closes its
-- connection it cannot go on, and `amqp-delegate run` must then exit 1.
return {
  name = os.getenv("ROBUST_NAME") or "robust_no_reconnect",
  reconnect_max = 0,
  task = function(x) return x end,
}

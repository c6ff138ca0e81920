-- A worker the broker refuses: queue names starting with "amq." are reserved (403
-- ACCESS_REFUSED). `amqp-delegate run` must exit 1 naming this file and the worker.
return {
  name = "amq.robust_reserved",
  task = function() return "never" end,
}

-- The worker the benchmark serves with the host: `amqp-delegate run bench/adder_worker.lua`.
-- BENCH_WORKER_NAME names it (default "bench_adder"); with BENCH_DELAY_MS > 0 it is the slow
-- adder: the task sleeps that long (yielding to the loop), then adds. BENCH_CONFIRMS=0 turns
-- publisher confirms off (the A/B row; on by default, as shipped). The queue's type comes from
-- the host (AMQP_DELEGATE_QUEUE_TYPE or --queue-type).
local delegate = require "amqp_delegate"

local name = os.getenv("BENCH_WORKER_NAME") or "bench_adder"
local delay = (tonumber(os.getenv("BENCH_DELAY_MS")) or 0) / 1000
local confirms = os.getenv("BENCH_CONFIRMS") ~= "0"

if delay > 0 then
  return {
    name = name,
    confirms = confirms,
    task = function(a, b)
      delegate.sleep(delay)
      return a + b
    end,
  }
end
return {
  name = name,
  confirms = confirms,
  task = function(a, b)
    return a + b
  end,
}

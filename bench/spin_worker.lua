-- A CPU-bound worker for the keepalive hook's A/B row (scripts/bench.sh): served by a host run
-- with and without AMQP_DELEGATE_KEEPALIVE=0. BENCH_WORKER_NAME names it (default
-- "bench_spin"). task(n) sums 1..n in a plain Lua loop, and returns how long that took:
-- {cpu = seconds of this process's CPU time (os.clock), wall = seconds (bench_clock), sum = ...}.
local clock = require "bench_clock"

return {
  name = os.getenv("BENCH_WORKER_NAME") or "bench_spin",
  task = function(n)
    local wall0, cpu0 = clock.now(), os.clock()
    local sum = 0
    for i = 1, n do
      sum = sum + i
    end
    return { cpu = os.clock() - cpu0, wall = clock.now() - wall0, sum = sum }
  end,
}

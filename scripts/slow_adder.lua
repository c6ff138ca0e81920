-- The Node library's own example: wait 10 ms, then add. delegate.sleep yields to the loop,
-- so with `amqp-delegate run --concurrency 64 scripts/slow_adder.lua` one process runs 64 of
-- these at once.
local delegate = require "amqp_delegate"

return {
  name = "slow_adder",
  task = function(a, b)
    delegate.sleep(0.01)
    return a + b
  end,
}

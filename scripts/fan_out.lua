-- A worker that fans one call out to several others and combines the answers:
-- invoke("sum_of_squares", 1, 2, 3) sends one call per number to `square` at once (send does
-- not wait), then waits for them all. Inside a task every wait yields to the loop, so the
-- worker keeps serving other calls meanwhile. Serve both with:
--   amqp-delegate run --concurrency 16 scripts/fan_out.lua
local delegate = require "amqp_delegate"

-- Started while the file loads: the URL is the host's --url (it sets AMQP_URL for the
-- files it loads), else $AMQP_URL, else amqp://localhost.
local calls_out = delegate.delegator():start()

return {
  {
    name = "square",
    task = function(x)
      return x * x
    end,
  },
  {
    name = "sum_of_squares",
    task = function(...)
      local pending = {}
      for i, x in ipairs({ ... }) do pending[i] = calls_out:send("square", x) end
      local total = 0
      for _, square in ipairs(delegate.wait_all(pending)) do total = total + square end
      return total
    end,
  },
}

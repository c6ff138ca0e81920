-- Three workers and a delegator in one file: one process, so ONE AMQP connection with a
-- channel for each of the four. The third worker calls the first through the delegator.
local delegate = require "amqp_delegate"

local prefix = os.getenv("ROBUST_NAME") or "robust_three"
local d = delegate.delegator():start()

return {
  { name = prefix .. "_one", task = function(x) return x + 1 end },
  { name = prefix .. "_two", task = function(x) return x * 2 end },
  { name = prefix .. "_three", task = function(x) return d:invoke(prefix .. "_one", x) * 10 end },
}

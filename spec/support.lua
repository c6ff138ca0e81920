-- Shared pieces of the specs: the host executable's path and starting it.
local broker = require "spec.helpers.broker"

local support = {}

function support.host_binary()
  local build = os.getenv("AMQP_DELEGATE_BUILD") or (broker.root() .. "/build")
  return build .. "/amqp-delegate"
end

-- Starts `amqp-delegate run` on the given worker files and waits for "ready".
function support.host(files, options)
  options = options or {}
  local words = { broker.shell_quote(support.host_binary()), "run", "--url",
    broker.shell_quote(options.url or broker.url()) }
  for _, flag in ipairs(options.flags or {}) do words[#words + 1] = broker.shell_quote(flag) end
  for _, file in ipairs(files) do words[#words + 1] = broker.shell_quote(broker.root() .. "/" .. file) end
  local process = broker.spawn(table.concat(words, " "), { env = options.env })
  if options.wait ~= false then
    local ready, output = process:wait_for("\nready\n", 20, true)
    if not ready then
      process:kill()
      error("host did not get ready:\n" .. output, 2)
    end
  end
  return process
end

function support.delegator(options)
  local delegate = require "amqp_delegate"
  options = options or {}
  options.url = options.url or broker.url()
  return delegate.delegator(options):start()
end

return support

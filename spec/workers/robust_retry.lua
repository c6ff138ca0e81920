-- A task that calls another worker, gets CONNECTION_LOST when the broker closes the
-- connections under it, and retries once: the retry must succeed once reconnected.
local delegate = require "amqp_delegate"

local prefix = os.getenv("ROBUST_NAME") or "robust_retry"
local slow = prefix .. "_slow"
local d = delegate.delegator():start()

local function say(...)
  local words = table.pack(...)
  for i = 1, words.n do words[i] = tostring(words[i]) end
  io.stdout:write(table.concat(words, " "), "\n")
  io.stdout:flush()
end

return {
  {
    name = slow,
    task = function(seconds, value)
      delegate.sleep(seconds)
      return value
    end,
  },
  {
    name = prefix,
    task = function(tag, seconds)
      say("first call sent", tag)
      local ok, err = pcall(d.invoke, d, { timeout = 20 }, slow, seconds or 0, tag)
      if ok then
        say("first ok", tag)
        return err
      end
      say("first failed", tag, type(err) == "table" and err.code or tostring(err))
      local again, value = pcall(d.invoke, d, { timeout = 20 }, slow, 0, tag .. "-again")
      say("retry", tag, again and "ok" or "failed", tostring(value))
      return value
    end,
  },
}

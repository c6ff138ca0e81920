-- A delegator in a process of its own, for specs that must read what a delegator logs
-- (spec/bad_input_spec.lua). Run: lua5.4 spec/helpers/delegator_loop.lua NAME
-- Logs at debug level (so its reply queue's name shows), prints "ready", then calls NAME(i, i)
-- every 0.2 s, forever, printing "call i: RESULT" or "call i failed: ERROR" per call.
local delegate = require "amqp_delegate"
local name = assert(arg[1], "usage: delegator_loop.lua NAME")
io.stdout:setvbuf("line")
io.stderr:setvbuf("line")
delegate.set_log_level("debug")
local delegator = delegate.delegator {}:start()
print("ready")
local i = 0
while true do
  i = i + 1
  local ok, result = pcall(delegator.invoke, delegator, name, i, i)
  if ok then
    print(("call %d: %s"):format(i, delegate.encode(result)))
  else
    print(("call %d failed: %s"):format(i, tostring(result)))
  end
  delegate.sleep(0.2)
end

-- Tasks that wait (invoke, sleep, call:wait) from places that cannot yield: C callbacks
-- (string.gsub, table.sort), metamethods called from C (__index through table.concat,
-- __tostring through tostring), and a coroutine the task made itself. Each attempt must fail
-- with CANNOT_WAIT and send nothing; the task reports what happened as a table.
local delegate = require "amqp_delegate"

local prefix = os.getenv("ROBUST_NAME") or "robust_cw"
local echo = prefix .. "_echo"
local d = delegate.delegator():start()

local attempts = {
  invoke_in_gsub = function()
    return (string.gsub("x", "x", function() return d:invoke(echo, "y") end))
  end,
  invoke_in_sort = function()
    local t = { 3, 1, 2 }
    table.sort(t, function(a, b)
      d:invoke(echo, 1)
      return a < b
    end)
    return t
  end,
  invoke_in_index = function()
    local proxy = setmetatable({}, {
      __index = function(_, k) return d:invoke(echo, "k" .. k) end,
      __len = function() return 1 end,
    })
    return table.concat(proxy) -- lua_geti from C: the __index call cannot yield
  end,
  invoke_in_tostring = function()
    return tostring(setmetatable({}, { __tostring = function() return d:invoke(echo, "s") end }))
  end,
  sleep_in_gsub = function()
    return (string.gsub("x", "x", function()
      delegate.sleep(0.01)
      return "y"
    end))
  end,
  wait_in_sort = function(call)
    local t = { 3, 1, 2 }
    table.sort(t, function(a, b)
      call:wait()
      return a < b
    end)
    return t
  end,
  invoke_in_own_coroutine = function()
    return coroutine.wrap(function() return d:invoke(echo, "c") end)()
  end,
  sleep_in_own_coroutine = function()
    return coroutine.wrap(function()
      delegate.sleep(0.01)
      return "slept"
    end)()
  end,
}

return {
  { name = echo, task = function(x) return x end },
  {
    name = prefix,
    task = function(how)
      local call
      if how == "wait_in_sort" then call = d:send(echo, "w") end
      local before = d:stats().sent
      local ok, err = pcall(attempts[how], call)
      local sent = d:stats().sent - before
      local late
      if call then
        local done, value = pcall(call.wait, call)
        late = done and value or tostring(value)
      end
      return {
        ok = ok,
        code = type(err) == "table" and err.code or nil,
        message = type(err) == "table" and err.message or tostring(err),
        sent = sent,
        late = late,
      }
    end,
  },
}

-- Coroutines in a task, as Lua's own library runs them: a wrap generator, errors out of
-- wrap (a string, a table), resume and its results, a dead coroutine, a bad argument. The host
-- tracks coroutine.resume and coroutine.wrap (keepalive.c); long_tasks_spec compares what
-- this task returns there with what it returns in plain Lua.
local function task()
  local out = {}
  local gen = coroutine.wrap(function()
    for i = 1, 3 do coroutine.yield(i) end
    return "end"
  end)
  out.yields = { gen(), gen(), gen(), gen() }
  out.dead = select(2, pcall(gen))
  out.wrap_error = select(2, pcall(coroutine.wrap(function() error("boom") end)))
  out.wrap_table = select(2, pcall(coroutine.wrap(function() error({ code = 7 }) end))).code
  local co = coroutine.create(function(a)
    local b = coroutine.yield(a + 1)
    return b * 2
  end)
  out.resume = { coroutine.resume(co, 1) }
  out.resume2 = { coroutine.resume(co, 5) }
  out.resume3 = { coroutine.resume(co) }
  out.bad = select(2, pcall(coroutine.resume, 42))
  out.status = coroutine.status(co)
  -- a __close that raises while the coroutine fails: its error is the one that goes on
  out.close_error = select(2, pcall(coroutine.wrap(function()
    local _ <close> = setmetatable({}, { __close = function() error("in close") end })
    error("first")
  end)))
  local closing = coroutine.create(function()
    local _ <close> = setmetatable({}, { __close = function() error("closing") end })
    coroutine.yield()
  end)
  coroutine.resume(closing)
  out.close = { coroutine.close(closing) }
  out.close_running = select(2, pcall(coroutine.close, coroutine.running()))
  -- 150 wraps deep: the C stack holds that many (Lua's limit is 200 C calls)
  local function deep(n)
    if n == 0 then return 0 end
    return 1 + coroutine.wrap(deep)(n - 1)
  end
  out.deep = select(2, pcall(deep, 150))
  return out
end

return { name = os.getenv("WORKER_NAME") or "coroutines", task = task }

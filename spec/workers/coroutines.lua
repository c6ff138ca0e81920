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
  return out
end

return { name = os.getenv("WORKER_NAME") or "coroutines", task = task }

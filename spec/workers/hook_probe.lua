-- Says whether Lua runs with a hook: the task's own thread and a coroutine it resumes
-- (`debug.gethook()` gives nil where none is set, "external hook" for ours).
return {
  name = os.getenv("WORKER_NAME") or "hook_probe",
  task = function()
    local _, inner = coroutine.resume(coroutine.create(function() return debug.gethook() end))
    return { task = tostring(debug.gethook()), coroutine = tostring(inner) }
  end,
}

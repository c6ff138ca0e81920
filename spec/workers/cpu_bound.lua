-- A CPU-bound task that never yields for `seconds`, on a worker with a short heartbeat
-- (HEARTBEAT, default 2 s): the connection must survive it and the task must run once. Each
-- run appends a line to RUNS_FILE, so a spec can count executions. HOW says where the loop
-- runs: in the task itself (default), in a coroutine.wrap or coroutine.resume the task makes, in
-- a coroutine inside such a coroutine ("nested"), 20 coroutines deep ("deep"), in a wrap taken
-- when the file loaded ("early"), or in a __close handler that coroutine.close runs ("close").
local early_wrap = coroutine.wrap

return {
  name = os.getenv("WORKER_NAME") or "cpu_bound",
  heartbeat = tonumber(os.getenv("HEARTBEAT") or "2"),
  concurrency = tonumber(os.getenv("WORKER_CONCURRENCY") or "1"),
  ack = os.getenv("WORKER_ACK"),
  task = function(seconds)
    local runs = os.getenv("RUNS_FILE")
    if runs then
      local f = assert(io.open(runs, "a"))
      f:write("run\n")
      f:close()
    end
    local function now()
      local f = assert(io.open("/proc/uptime", "r"))
      local t = f:read("n")
      f:close()
      return t
    end
    local function spin()
      local deadline, spins = now() + seconds, 0
      repeat -- at least once: under valgrind a short task's deadline may pass before the first look
        for _ = 1, 100000 do spins = spins + 1 end
      until now() >= deadline
      return spins > 0 and "computed" or "?"
    end
    local how = os.getenv("HOW")
    if how == "wrap" then return coroutine.wrap(spin)() end
    if how == "resume" then return select(2, assert(coroutine.resume(coroutine.create(spin)))) end
    if how == "nested" then
      return coroutine.wrap(function() return select(2, assert(coroutine.resume(coroutine.create(spin)))) end)()
    end
    if how == "deep" then
      local function level(n)
        if n == 0 then return spin() end
        return coroutine.wrap(level)(n - 1)
      end
      return level(20)
    end
    if how == "early" then return early_wrap(spin)() end
    if how == "close" then
      local result
      local co = coroutine.create(function()
        local _ <close> = setmetatable({}, { __close = function() result = spin() end })
        coroutine.yield()
      end)
      coroutine.resume(co)
      assert(coroutine.close(co))
      return result
    end
    return spin()
  end,
}

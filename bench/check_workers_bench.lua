-- What check_workers costs (issue 12, NO_WORKER): sequential invoke rate with it on and off, and
-- the first call to a name (which asks the broker), in alternating rounds. A worker and the
-- delegators in one process, against $AMQP_URL: lua5.4 bench/check_workers_bench.lua [CALLS]
local delegate = require "amqp_delegate"
local url = os.getenv("AMQP_URL")
local name = "nw_bench_" .. os.time()
local worker = delegate.worker({ url = url, name = name, task = function(x) return x end }):start()
local function wall() -- seconds, from date(1): the same cost in both modes
  local f = io.popen("date +%s.%N"); local t = tonumber(f:read("a")); f:close(); return t
end
local N = tonumber(arg[1]) or 3000
local results = { on = {}, off = {}, first_on = {}, first_off = {} }
for round = 1, 5 do
  for _, mode in ipairs({ "on", "off" }) do
    local d = delegate.delegator({ url = url, check_workers = mode == "on" }):start()
    local t0 = wall()
    d:invoke(name, 0)
    local t1 = wall()
    for i = 1, N do d:invoke(name, i) end
    local t2 = wall()
    table.insert(results[mode], N / (t2 - t1))
    table.insert(results["first_" .. mode], (t1 - t0) * 1000)
    d:stop()
  end
end
local function median(t) table.sort(t) return t[math.ceil(#t / 2)] end
print(string.format("sequential calls/s: check_workers on %.0f, off %.0f (on/off %.3f)",
  median(results.on), median(results.off), median(results.on) / median(results.off)))
print(string.format("first call ms: on %.2f, off %.2f", median(results.first_on), median(results.first_off)))
worker:stop()

-- A load for the cluster specs, run as its own process (lua5.4 spec/helpers/cluster_load.lua
-- URLS NAME TOTAL IN_FLIGHT RETRY TIMEOUT [SECONDS [STOP_FILE [GO_FILE]]]): once GO_FILE
-- exists (when given), calls worker NAME with 1..TOTAL (or for SECONDS, when not 0, or until
-- STOP_FILE exists), IN_FLIGHT at a time, each {retry = RETRY, timeout = TIMEOUT},
-- and checks each answer is twice its argument. Prints "answered N" every 50 answers, then
-- one summary line: "summary answered=N wrong=N errors=N codes=CODE:N,... unknown=N retried=N".
local delegate = require "amqp_delegate"

local urls, name = arg[1], arg[2]
local total, in_flight = tonumber(arg[3]), tonumber(arg[4])
local retry, timeout = tonumber(arg[5]), tonumber(arg[6])
local seconds = tonumber(arg[7] or "")
if seconds == 0 then seconds = nil end
local stop_file = arg[8] ~= "" and arg[8] or nil
local go_file = arg[9]

local function now()
  local f = assert(io.open("/proc/uptime", "r"))
  local t = f:read("n")
  f:close()
  return t
end

local d = delegate.delegator({ url = urls, timeout = timeout }):start()
io.stdout:write("ready\n")
io.stdout:flush()
local answered, wrong, errors, codes = 0, 0, 0, {}
local window, first, next_argument = {}, 1, 1
local stop_at

local function exists(path)
  local f = path and io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

while go_file and not exists(go_file) do delegate.sleep(0.02) end
stop_at = seconds and now() + seconds

local function more()
  if stop_at then return now() < stop_at and not exists(stop_file) end
  return next_argument <= total
end

local function settle(entry)
  local ok, result = pcall(entry.call.wait, entry.call)
  if ok then
    answered = answered + 1
    if result ~= entry.argument * 2 then wrong = wrong + 1 end
    if answered % 50 == 0 then
      io.stdout:write("answered ", answered, "\n")
      io.stdout:flush()
    end
  else
    errors = errors + 1
    local code = type(result) == "table" and result.code or tostring(result)
    codes[code] = (codes[code] or 0) + 1
    if errors <= 5 then io.stderr:write("call ", entry.argument, ": ", tostring(result), "\n") end
  end
end

while more() or first < next_argument do
  while more() and next_argument - first < in_flight do
    window[next_argument] = { argument = next_argument,
      call = d:send({ retry = retry }, name, next_argument) }
    next_argument = next_argument + 1
  end
  settle(window[first])
  window[first] = nil
  first = first + 1
end

local listed = {}
for code, count in pairs(codes) do listed[#listed + 1] = code .. ":" .. count end
table.sort(listed)
local stats = d:stats()
io.stdout:write(string.format("summary answered=%d wrong=%d errors=%d codes=%s unknown=%d retried=%d\n",
  answered, wrong, errors, table.concat(listed, ","), stats.unknown_replies, stats.retried))
io.stdout:flush()
d:stop()

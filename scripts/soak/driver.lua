-- One delegator process of the fault soak (scripts/soak.sh starts several):
--   LUA_CPATH='build/?.so;;' lua5.4 scripts/soak/driver.lua
-- Keeps SOAK_INFLIGHT calls to "soak_echo" in flight (d:send, then call:wait on the oldest),
-- each with an id of its own ("<driver>-<n>"), and checks every result: the worker echoes the
-- id (scripts/soak/worker.lua), so a result with another id is a wrong result. Counts
-- every call's end, by error code, and checks that each one ends exactly once:
--   * a call is tracked by id from send to its end; at the end, once the faults stopped and
--     the calls in flight had time to end (the drain), an id still in flight never ended;
--   * an ended handle is looked at again SOAK_RECHECK calls later (and at the end): done()
--     must still be true and wait() must give the same outcome, else it ended twice;
--   * the delegator's own stats() must agree (sent; in_flight 0 at the end).
-- Errors at send time (the delegator is reconnecting) end the call at once: counted apart.
--
-- It writes its counts as one key=value line to SOAK_STATUS every second (written aside and
-- renamed, so a reader never sees half a line), prints it every 10 s and at the end, with
-- final=1. A plain lua5.4 cannot catch SIGTERM: the soak asks it to stop by creating the file
-- SOAK_STOP_FILE (after SOAK_SECONDS it stops by itself too); SIGTERM or SIGKILL leaves the
-- last periodic line. When SOAK_QUIET_FILE appears (the faults stopped), it notes its counts,
-- so the calls after the faults can be told apart (quiet_ok = ok calls since then).
--
-- Environment:
--   SOAK_URL (else AMQP_URL)  broker            SOAK_DRIVER=d1      name, prefix of the ids
--   SOAK_INFLIGHT=16          calls in flight   SOAK_TIMEOUT=5      the delegator's timeout (s)
--   SOAK_SECONDS=0            stop after that (0: only on SOAK_STOP_FILE)
--   SOAK_DRAIN_SECONDS        how long the calls in flight may take to end after the stop
--                             (default 2 x SOAK_TIMEOUT + 10)
--   SOAK_STATUS, SOAK_STOP_FILE, SOAK_QUIET_FILE   paths (none by default)
--   SOAK_LOG_LEVEL=warn       the library's log level (its lines go to standard error)
--   SOAK_RECHECK=256          how many ended handles are kept to be looked at again
local delegate = require "amqp_delegate"

io.stdout:setvbuf("line")
io.stderr:setvbuf("line")

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end
local function env_number(name, default)
  local v = tonumber(env(name, ""))
  if v == nil then return default end
  return v
end

local URL = env("SOAK_URL", env("AMQP_URL", "amqp://localhost"))
local NAME = env("SOAK_DRIVER", "d1")
local INFLIGHT = math.max(1, math.tointeger(env_number("SOAK_INFLIGHT", 16)) or 16)
local TIMEOUT = env_number("SOAK_TIMEOUT", 5)
local SECONDS = env_number("SOAK_SECONDS", 0)
local DRAIN = env_number("SOAK_DRAIN_SECONDS", 2 * TIMEOUT + 10)
local STATUS = env("SOAK_STATUS", nil)
local STOP_FILE = env("SOAK_STOP_FILE", nil)
local QUIET_FILE = env("SOAK_QUIET_FILE", nil)
local RECHECK = math.max(1, math.tointeger(env_number("SOAK_RECHECK", 256)) or 256)
local WORKER = "soak_echo"

delegate.set_log_level(env("SOAK_LOG_LEVEL", "warn"))
math.randomseed(os.time(), #NAME)

local function exists(path)
  if not path then return false end
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local function say(fmt, ...)
  io.stderr:write(("soak driver %s: " .. fmt .. "\n"):format(NAME, ...))
end

-- ------------------------------------------------------------------ counts
local c = {
  sent = 0,        -- accepted by d:send
  ok = 0,          -- ended with the right result
  failed = 0,      -- ended with an error (after send)
  refused = 0,     -- d:send raised (nothing went out)
  wrong = 0,       -- ended with a result that is not the echo of its id
  twice = 0,       -- ended more than once (outcome changed, or done() went back to false)
  never = 0,       -- still in flight after the drain
  rechecked = 0,   -- ended handles looked at again
  quiet_ok = 0, quiet_failed = 0, quiet_refused = 0,
}
local errors = {}      -- code -> count (calls that ended with an error)
local refusals = {}    -- code -> count (errors raised by send)
local quiet = false    -- the faults are over (SOAK_QUIET_FILE seen)
local phase = "run"
local started_at = os.time()
local core = {}        -- d:stats() at the last status line

local function code_of(err)
  if type(err) == "table" and type(err.code) == "string" then return err.code end
  return "LUA_ERROR"
end

local function tally(t, code) t[code] = (t[code] or 0) + 1 end

local function line(final)
  local parts = {
    "driver=" .. NAME, "phase=" .. phase, "t=" .. (os.time() - started_at),
    "final=" .. (final and 1 or 0),
  }
  for _, k in ipairs({ "sent", "ok", "failed", "refused", "wrong", "twice", "never",
    "rechecked", "quiet_ok", "quiet_failed", "quiet_refused" }) do
    parts[#parts + 1] = k .. "=" .. c[k]
  end
  local codes = {}
  for code in pairs(errors) do codes[#codes + 1] = code end
  table.sort(codes)
  for _, code in ipairs(codes) do parts[#parts + 1] = "err_" .. code .. "=" .. errors[code] end
  codes = {}
  for code in pairs(refusals) do codes[#codes + 1] = code end
  table.sort(codes)
  for _, code in ipairs(codes) do parts[#parts + 1] = "refused_" .. code .. "=" .. refusals[code] end
  for _, k in ipairs({ "sent", "replied", "failed", "timed_out", "returned", "unknown_replies",
    "in_flight" }) do
    if core[k] then parts[#parts + 1] = "core_" .. k .. "=" .. core[k] end
  end
  return table.concat(parts, " ")
end

local function write_status(final)
  local text = line(final)
  if STATUS then
    local f = io.open(STATUS .. ".tmp", "w")
    if f then
      f:write(text, "\n")
      f:close()
      os.rename(STATUS .. ".tmp", STATUS)
    end
  end
  return text
end

-- ------------------------------------------------------------------ the delegator
local d = delegate.delegator { url = URL, timeout = TIMEOUT }
do -- the broker may be closing connections right now: try for a while
  local deadline = os.time() + 60
  while true do
    local ok, err = pcall(d.start, d)
    if ok then break end
    if os.time() > deadline then
      say("cannot start the delegator: %s", tostring(err))
      os.exit(3)
    end
    os.execute("sleep 0.2")
  end
end

local function refresh_core()
  local ok, s = pcall(d.stats, d)
  if ok and type(s) == "table" then core = s end
end

-- ------------------------------------------------------------------ calls in flight
-- FIFO of entries {id =, call =}; `live` of them have not ended. Ended entries stay in the
-- FIFO until they reach its head.
local fifo, head, tail = {}, 1, 0
local live = 0
local in_flight = {}   -- id -> entry, from send to its end
local seq = 0

-- ended handles kept to be looked at again: ring of {call =, ok =, value = id or code}
local ring, ring_at = {}, 0
local wrong_shown = 0

local function recheck(r)
  c.rechecked = c.rechecked + 1
  if not r.call:done() then
    c.twice = c.twice + 1
    say("call %s ended (%s) and is in flight again", r.id, tostring(r.value))
    return
  end
  local ok, res = pcall(r.call.wait, r.call)
  local value = ok and (type(res) == "table" and res.id or "?") or code_of(res)
  if ok ~= r.ok or value ~= r.value then
    c.twice = c.twice + 1
    say("call %s ended as %s %s, later as %s %s", r.id, r.ok and "result" or "error",
      tostring(r.value), ok and "result" or "error", tostring(value))
  end
end

local function remember(entry, ok, value)
  ring_at = ring_at % RECHECK + 1
  local old = ring[ring_at]
  if old then recheck(old) end
  ring[ring_at] = { call = entry.call, id = entry.id, ok = ok, value = value }
end

local function finish(entry, ok, res)
  if entry.ended or in_flight[entry.id] ~= entry then
    c.twice = c.twice + 1
    say("call %s ended a second time", entry.id)
    return
  end
  entry.ended = true
  in_flight[entry.id] = nil
  live = live - 1
  if not entry.call:done() then -- wait returned, yet the handle says it is in flight
    c.twice = c.twice + 1
    say("call %s: wait returned but done() is false", entry.id)
  end
  if ok then
    if type(res) == "table" and res.id == entry.id then
      c.ok = c.ok + 1
      if quiet then c.quiet_ok = c.quiet_ok + 1 end
      remember(entry, true, entry.id)
    else
      c.wrong = c.wrong + 1
      if wrong_shown < 10 then
        wrong_shown = wrong_shown + 1
        local encoded, text = pcall(delegate.encode, res)
        say("WRONG result for %s: %s", entry.id, encoded and text or tostring(res))
      end
      remember(entry, true, type(res) == "table" and res.id or "?")
    end
  else
    local code = code_of(res)
    c.failed = c.failed + 1
    if quiet then c.quiet_failed = c.quiet_failed + 1 end
    tally(errors, code)
    remember(entry, false, code)
  end
end

local function send_one()
  seq = seq + 1
  local id = NAME .. "-" .. seq
  local ok, call = pcall(d.send, d, WORKER, id)
  if not ok then
    c.refused = c.refused + 1
    if quiet then c.quiet_refused = c.quiet_refused + 1 end
    tally(refusals, code_of(call))
    return false
  end
  c.sent = c.sent + 1
  local entry = { id = id, call = call }
  tail = tail + 1
  fifo[tail] = entry
  in_flight[id] = entry
  live = live + 1
  return true
end

local function pop_ended()
  while head <= tail and fifo[head].ended do
    fifo[head] = nil
    head = head + 1
  end
end

-- ends every handle that is done (without running the loop)
local function collect_done()
  for i = head, tail do
    local e = fifo[i]
    if not e.ended and e.call:done() then finish(e, pcall(e.call.wait, e.call)) end
  end
  pop_ended()
end

-- ------------------------------------------------------------------ the loop
local last_tick, last_print = os.time(), os.time()
local function tick()
  local now = os.time()
  if now == last_tick then return end
  last_tick = now
  if not quiet and exists(QUIET_FILE) then quiet = true end
  if phase == "run" and (exists(STOP_FILE) or (SECONDS > 0 and now - started_at >= SECONDS)) then
    phase = "drain"
  end
  refresh_core()
  local text = write_status(false)
  if now - last_print >= 10 then
    last_print = now
    print(text)
  end
end

say("started: %d calls in flight to '%s', timeout %g s", INFLIGHT, WORKER, TIMEOUT)
write_status(false)

while phase == "run" do
  local refused = false
  while live < INFLIGHT do
    if not send_one() then
      refused = true
      break
    end
  end
  pop_ended()
  if live == 0 then
    delegate.sleep(0.05) -- reconnecting: let the loop run, then try again
  elseif refused then
    delegate.sleep(0.01) -- no new call goes out for now; collect what ends meanwhile
    collect_done()
  else
    local e = fifo[head]
    finish(e, pcall(e.call.wait, e.call)) -- runs the loop until the oldest call ends
    collect_done()
  end
  tick()
end

-- drain: no new call; every call in flight must end (by its timeout at the latest)
local drain_deadline = os.time() + DRAIN
while live > 0 and os.time() < drain_deadline do
  delegate.sleep(0.02) -- not wait(): a call that never ends must not hang the driver
  collect_done()
  tick()
end
collect_done()
c.never = live
for i = head, tail do
  local e = fifo[i]
  if not e.ended then say("call %s never ended (%s)", e.id, tostring(e.call)) end
end
for i = 1, #ring do recheck(ring[i]) end
refresh_core()
if core.sent and core.sent ~= c.sent then
  say("the delegator's stats count %d sent, we count %d", core.sent, c.sent)
end
if core.in_flight and core.in_flight ~= live then
  say("the delegator's stats count %d in flight, we count %d", core.in_flight, live)
end
phase = "done"
local stopped, err = pcall(d.stop, d)
if not stopped then say("stop: %s", tostring(err)) end
print(write_status(true))
os.exit(0, true) -- closes the Lua state: the delegator's __gc runs too

-- `run --metrics ADDRESS:PORT`: Prometheus text and a health check on the host's own loop,
-- scraped with curl as an operator's tools would; and `--log-format json`.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local cjson = require "cjson"

local q = broker.shell_quote
local WORKERS = "spec/workers/metrics.lua"

-- A host serving the metrics workers with --metrics on a port the system picks; returns the
-- host and the base URL it logged.
local function metrics_host(flags, env, files)
  local all = { "--metrics", "127.0.0.1:0" }
  for _, flag in ipairs(flags or {}) do all[#all + 1] = flag end
  local host = support.host(files or { WORKERS }, { flags = all, env = env })
  local port = host:output():match("metrics: serving http://127%.0%.0%.1:(%d+)/metrics")
  assert(port, "the host logs the port it listens on:\n" .. host:output())
  return host, "http://127.0.0.1:" .. port
end

-- curl: status code, content type, body (curl's own error text when it got no answer).
local function http(url, extra)
  local body_file = os.tmpname()
  local command = "curl -s -S --max-time " .. math.ceil(10 * support.slow) .. " " .. (extra or "")
    .. " -o " .. q(body_file) .. " -w '%{http_code} %{content_type}' " .. q(url) .. " 2>&1"
  local pipe = assert(io.popen(command))
  local out = pipe:read("a")
  pipe:close()
  local f = io.open(body_file, "rb")
  local body = f and f:read("a") or ""
  if f then f:close() end
  os.remove(body_file)
  local code, content_type = out:match("(%d%d%d) ?(.*)$")
  return tonumber(code), content_type, body ~= "" and body or out
end

-- The exposition as { ["name{labels}"] = number }, checking every line's shape, and that each
-- family has one HELP and one TYPE before its samples.
local function parse(text)
  local samples, typed = {}, {}
  for line in text:gmatch("[^\n]+") do
    local kind, family = line:match("^# (%u+) ([%w_]+) ")
    if kind then
      assert(kind == "HELP" or kind == "TYPE", line)
      if kind == "TYPE" then
        assert(not typed[family], "one TYPE line for " .. family)
        typed[family] = true
      end
    else
      local series, value = line:match("^([%w_]+{?.-}?) (%S+)$")
      assert(series, "a sample line: " .. line)
      local base = series:match("^[%w_]+")
      local family = base:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
      assert(typed[base] or typed[family], "TYPE before the samples of " .. base)
      assert(samples[series] == nil, "one sample per series: " .. series)
      samples[series] = assert(tonumber(value), line)
    end
  end
  return samples
end

local function scrape(base)
  local code, content_type, body = http(base .. "/metrics")
  assert.are.equal(200, code, body)
  assert.matches("^text/plain; version=0%.0%.4", content_type)
  return parse(body)
end

local function worker_series(name, worker)
  return ('amqp_delegate_worker_%s{worker="%s"}'):format(name, worker)
end

-- Runs a python3 helper (Debian's, for its plain socket module) and returns its output.
local function python(code, ...)
  local words = { "/usr/bin/python3", "-c", q(code) }
  for _, arg in ipairs({ ... }) do words[#words + 1] = q(tostring(arg)) end
  local pipe = assert(io.popen(table.concat(words, " ") .. " 2>&1"))
  local out = pipe:read("a")
  pipe:close()
  return out
end

describe("amqp-delegate run --metrics", function()
  local delegator
  local defer = support.deferrer(function(fn) finally(fn) end)
  before_each(function() delegator = support.delegator() end)
  after_each(function()
    if delegator then pcall(delegator.stop, delegator) end
    broker.kill_all()
  end)

  it("counts the calls made: served, failed, in hand, the duration histogram", function()
    local _, base = metrics_host()
    local before = scrape(base)
    assert.are.equal(0, before[worker_series("requests_served_total", "metrics_ok")])
    for i = 1, 3 do assert.are.equal(i, delegator:invoke("metrics_ok", i)) end
    assert.has_error(function() delegator:invoke("metrics_fail", "no luck") end)
    assert.are.equal(0.3, delegator:invoke("metrics_slow", 0.3))
    local call = delegator:send("metrics_slow", 1.5)
    assert.truthy(broker.eventually(function()
      return scrape(base)[worker_series("requests_in_hand", "metrics_slow")] == 1
    end, 10 * support.slow, 0.05), "the slow call is in hand")
    assert.are.equal(1.5, call:wait())
    local m = scrape(base)
    assert.are.equal(3, m[worker_series("requests_served_total", "metrics_ok")])
    assert.are.equal(0, m[worker_series("requests_failed_total", "metrics_ok")])
    assert.are.equal(1, m[worker_series("requests_served_total", "metrics_fail")])
    assert.are.equal(1, m[worker_series("requests_failed_total", "metrics_fail")])
    assert.are.equal(0, m[worker_series("requests_in_hand", "metrics_slow")])
    assert.are.equal(1, m[worker_series("connected", "metrics_ok")])
    assert.are.equal(1, m.amqp_delegate_connected)
    -- the histogram: cumulative buckets, the slow tasks above 0.25 s, counted and summed
    local function bucket(worker, le)
      return m[('amqp_delegate_worker_task_duration_seconds_bucket{worker="%s",le="%s"}'):format(worker, le)]
    end
    assert.are.equal(3, bucket("metrics_ok", "+Inf"))
    assert.are.equal(3, m['amqp_delegate_worker_task_duration_seconds_count{worker="metrics_ok"}'])
    assert.are.equal(0, bucket("metrics_slow", "0.25"))
    assert.is_true(bucket("metrics_slow", "1") <= 1) -- the 1.5 s task is above 1 s
    assert.are.equal(2, bucket("metrics_slow", "+Inf"))
    assert.is_true(m['amqp_delegate_worker_task_duration_seconds_sum{worker="metrics_slow"}'] >= 1.8)
    local previous = 0
    for _, le in ipairs({ "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
      "10", "30", "60", "120", "+Inf" }) do
      assert.is_true(bucket("metrics_slow", le) >= previous, "cumulative at " .. le)
      previous = bucket("metrics_slow", le)
    end
  end)

  it("escapes label values and counts a task's own delegator calls", function()
    local _, base = metrics_host()
    assert.is_true(delegator:invoke('metrics_"odd"\\name'))
    assert.are.equal("hi", delegator:invoke("metrics_caller", "hi"))
    local m = scrape(base)
    assert.are.equal(1, m['amqp_delegate_worker_requests_served_total{worker="metrics_\\"odd\\"\\\\name"}'])
    assert.are.equal(1, m.amqp_delegate_delegators)
    assert.are.equal(1, m.amqp_delegate_delegators_connected)
    assert.are.equal(1, m.amqp_delegate_delegator_calls_sent_total)
    assert.are.equal(1, m.amqp_delegate_delegator_calls_replied_total)
    assert.are.equal(1, m[worker_series("requests_served_total", "metrics_ok")])
  end)

  it("sums two workers of one name into one series", function()
    local _, base = metrics_host(nil, nil, { WORKERS, WORKERS })
    for i = 1, 6 do assert.are.equal(i, delegator:invoke("metrics_ok", i)) end
    local m = scrape(base) -- parse() fails on a series given twice
    assert.are.equal(6, m[worker_series("requests_served_total", "metrics_ok")])
    assert.are.equal(6, m['amqp_delegate_worker_task_duration_seconds_count{worker="metrics_ok"}'])
    assert.are.equal(1, m[worker_series("connected", "metrics_ok")])
  end)

  it("answers HEAD, HTTP/1.0, 404 for other paths and 405 for other methods", function()
    local _, base = metrics_host()
    assert.are.equal(200, (http(base .. "/metrics", "-0")))
    assert.are.equal(200, (http(base .. "/health?verbose=1", "-I")))
    local code, _, body = http(base .. "/nothing")
    assert.are.equal(404, code)
    assert.matches("/metrics", body)
    code = http(base .. "/metrics", "-X POST")
    assert.are.equal(405, code)
    code = http(base .. "/metrics", "-X DELETE")
    assert.are.equal(405, code)
  end)

  it("/health is 200 serving, 503 while the broker is away, 200 again once reconnected", function()
    local host, base = metrics_host()
    local code, _, body = http(base .. "/health")
    assert.are.equal(200, code)
    assert.matches("^ok", body)
    broker.ctl("stop_app")
    defer(function() broker.ctl("start_app") end)
    assert.truthy(broker.eventually(function() return http(base .. "/health") == 503 end,
      10 * support.slow, 0.1), "503 while the broker is away")
    code, _, body = http(base .. "/health")
    assert.are.equal(503, code)
    assert.matches("^unavailable: worker '.-' is reconnecting", body)
    assert.are.equal(0, scrape(base).amqp_delegate_connected)
    broker.ctl("start_app")
    assert.truthy(broker.eventually(function() return http(base .. "/health") == 200 end,
      30 * support.slow, 0.2), "200 once reconnected:\n" .. host:output())
    local m = scrape(base)
    assert.are.equal(1, m[worker_series("reconnections_total", "metrics_ok")])
    assert.is_true(m.amqp_delegate_reconnections_total >= 4)
    assert.are.equal(1, m.amqp_delegate_connected)
  end)

  it("counts a redelivery after a lost connection; /health is 503 while draining", function()
    local host, base = metrics_host()
    -- the task must outlast rabbitmqctl (seconds on a busy machine): found before the call
    local connection = assert(support.connection_of(host:pid()), "the host's connection")
    local seconds = 6 * support.slow
    local call = delegator:send({ timeout = 60 * support.slow }, "metrics_slow", seconds)
    assert.truthy(host:wait_for("slow task started", 10 * support.slow, true))
    broker.ctl("close_connection", connection, "closed by the metrics spec")
    assert.truthy(broker.eventually(function()
      return scrape(base)[worker_series("redeliveries_total", "metrics_slow")] == 1
    end, 10 * support.slow, 0.1), "the redelivery is counted:\n" .. host:output())
    assert.are.equal(seconds, call:wait())
    assert.is_true(scrape(base)[worker_series("reconnections_total", "metrics_slow")] >= 1)
    -- a stop with a task in hand: not ready for more
    call = delegator:send("metrics_slow", 1.5)
    assert.truthy(broker.eventually(function()
      return scrape(base)[worker_series("requests_in_hand", "metrics_slow")] == 1
    end, 10 * support.slow, 0.05))
    assert.is_true(host:signal("TERM"))
    local code, body
    broker.eventually(function()
      code, _, body = http(base .. "/health")
      return code == 503
    end, 5 * support.slow, 0.05)
    assert.are.equal(503, code, body)
    assert.matches("stopping", body)
    assert.are.equal(1.5, call:wait())
    assert.are.equal(0, host:wait_exit(10 * support.slow))
  end)

  it("drops a client that never speaks, and keeps serving others meanwhile", function()
    local host, base = metrics_host()
    -- 80 silent connections (more than the 64 at once it keeps); each reports when the host
    -- closed it
    local out = python([[
import socket, sys, time
port = int(sys.argv[1])
silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(80)]
time.sleep(0.5)
import urllib.request
status = urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5).status
print("scrape", status)
for s in silent: s.settimeout(20)
closed = sum(1 for s in silent if s.recv(1) == b"")
print("closed", closed)
]], base:match("%d+$"))
    assert.matches("scrape 200", out)
    assert.matches("closed 80", out)
    assert.are.equal(3, delegator:invoke("metrics_ok", 3))
    assert.is_nil(host:status())
  end)

  it("refuses a 100 KB request with an error and stays up", function()
    local host, base = metrics_host()
    local out = python([[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
try:
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n")
except OSError as e:
    pass
answer = b""
try:
    while True:
        piece = s.recv(65536)
        if not piece: break
        answer += piece
except OSError as e:
    print("error", e)
print(answer.split(b"\r\n")[0].decode())
]], base:match("%d+$"))
    assert.matches("HTTP/1%.1 431", out)
    -- a bad request line, and garbage
    out = python([[
import socket, sys
for request in (b"GET\r\n\r\n", b"\x00\x01\x02\r\n\r\n", b"GET /metrics HTTP/2.0\r\n\r\n"):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.settimeout(10)
    s.sendall(request)
    print(s.recv(100).split(b"\r\n")[0].decode())
]], base:match("%d+$"))
    assert.matches("HTTP/1%.1 400.*HTTP/1%.1 400.*HTTP/1%.1 505", out)
    assert.are.equal(200, (http(base .. "/health")))
    assert.are.equal(4, delegator:invoke("metrics_ok", 4))
    assert.is_nil(host:status())
  end)

  it("refuses bad --metrics values with a usage error (exit 2)", function()
    for _, value in ipairs({ "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "garbage", "host:80",
      "::1:9100", "127.0.0.1:-1", "127.0.0.1:80x", "" }) do
      local host = support.host({ WORKERS }, { flags = { "--metrics=" .. value }, wait = false })
      assert.are.equal(2, host:wait_exit(10 * support.slow), value)
      assert.matches("%-%-metrics", host:output(), 1)
      assert.is_nil(host:output():find("ready", 1, true))
    end
  end)

  it("answers a request that arrives in pieces", function()
    local _, base = metrics_host()
    local out = python([[
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
for piece in (b"GE", b"T /hea", b"lth HTTP/1.1\r\nHost: x\r", b"\n\r\n"):
    s.sendall(piece)
    time.sleep(0.2)
print(s.recv(200).split(b"\r\n")[0].decode())
]], base:match("%d+$"))
    assert.matches("HTTP/1%.1 200 OK", out)
  end)

  it("closes the server with the state when a file does not load (exit 1)", function()
    local host = support.host({ "spec/workers/syntax_error.lua" },
      { flags = { "--metrics", "127.0.0.1:0" }, wait = false })
    assert.are.equal(1, host:wait_exit(10 * support.slow))
    assert.matches("metrics: serving", host:output())
    assert.matches("syntax_error%.lua:4:", host:output())
  end)

  it("exits 1 naming the address when it cannot listen there", function()
    local _, base = metrics_host()
    local port = base:match("%d+$")
    local host = support.host({ WORKERS }, { flags = { "--metrics", "127.0.0.1:" .. port }, wait = false })
    assert.are.equal(1, host:wait_exit(10 * support.slow))
    assert.matches("cannot listen on 127%.0%.0%.1:" .. port, host:output())
  end)
end)

describe("delegate.metrics()", function()
  local delegate = require "amqp_delegate"
  after_each(function() broker.kill_all() end)

  it("gives the same text from Lua, and stats() the new figures", function()
    local name = support.unique("metrics_lua")
    local worker = delegate.worker({ url = broker.url(), name = name, task = function(x) return x end }):start()
    local delegator = support.delegator()
    finally(function()
      pcall(worker.stop, worker)
      pcall(delegator.stop, delegator)
    end)
    assert.are.equal(5, delegator:invoke(name, 5))
    local m = parse(delegate.metrics())
    assert.are.equal(1, m[worker_series("requests_served_total", name)])
    assert.are.equal(1, m[worker_series("connected", name)])
    assert.are.equal(1, m['amqp_delegate_worker_task_duration_seconds_count{worker="' .. name .. '"}'])
    assert.is_true(m.amqp_delegate_delegator_calls_sent_total >= 1)
    assert.is_true(m.amqp_delegate_delegators_connected >= 1)
    local stats = worker:stats()
    assert.are.equal(0, stats.redelivered)
    assert.are.equal(0, stats.reconnections)
    assert.are.equal(0, delegator:stats().reconnections)
    worker:stop()
    assert.are.equal(0, parse(delegate.metrics())[worker_series("connected", name)])
    -- a call to a queue whose worker left ends NO_WORKER, and is counted
    local gone = support.unique("metrics_gone")
    finally(function() pcall(broker.ctl, "delete_queue", gone) end)
    delegate.worker({ url = broker.url(), name = gone, task = print }):start():stop()
    local before = parse(delegate.metrics()).amqp_delegate_delegator_calls_no_worker_total -- other specs' delegators
    local ok, err = pcall(delegator.invoke, delegator, gone)
    assert.are.equal("NO_WORKER", not ok and err.code)
    assert.are.equal(before + 1, parse(delegate.metrics()).amqp_delegate_delegator_calls_no_worker_total)
  end)

  it("set_log_format refuses an unknown format", function()
    local ok, err = pcall(delegate.set_log_format, "xml")
    assert.is_false(ok)
    assert.are.equal("BAD_ARGUMENT", err.code)
  end)
end)

describe("amqp-delegate --log-format json", function()
  local delegator
  before_each(function() delegator = support.delegator() end)
  after_each(function()
    if delegator then pcall(delegator.stop, delegator) end
    broker.kill_all()
  end)

  -- Every line but `ready` (standard output) and the slow task's own: one JSON object.
  local function json_lines(output)
    local lines = {}
    for line in output:gmatch("[^\n]+") do
      if line ~= "ready" and line ~= "slow task started" then
        local ok, object = pcall(cjson.decode, line)
        assert(ok and type(object) == "table", "a JSON object: " .. line)
        assert.is_string(object.level)
        assert.is_string(object.message)
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", object.time)
        lines[#lines + 1] = object
      end
    end
    return lines
  end

  for _, way in ipairs({ "option", "environment" }) do
    it("writes one JSON object a line (" .. way .. "), escaping what the message holds", function()
      local flags = way == "option" and { "--log-format", "json" } or {}
      local env = way == "environment" and { AMQP_DELEGATE_LOG_FORMAT = "json" } or nil
      local host = support.host({ WORKERS }, { flags = flags, env = env })
      local message = 'it "broke"\n\tbadly \\ \1 caf\xc3\xa9 \xff'
      assert.has_error(function() delegator:invoke("metrics_fail", message) end)
      assert.is_true(host:signal("TERM"))
      assert.are.equal(0, host:wait_exit(10 * support.slow))
      local lines = json_lines(host:output())
      local levels, failure = {}, nil
      for _, line in ipairs(lines) do
        levels[line.level] = true
        if line.message:find("broke", 1, true) then failure = line end
      end
      assert.is_true(levels.info and levels.warn, "info and warn lines")
      assert.truthy(failure, "the task's failure is logged")
      assert.are.equal("warn", failure.level)
      assert.truthy(failure.message:find('it "broke"\n\tbadly \\ \1 caf\xc3\xa9 \xef\xbf\xbd', 1, true),
        failure.message)
      assert.truthy(host:output():find("worker 'metrics_ok' ready", 1, true))
    end)
  end

  it("writes run's own failure as a JSON line too", function()
    local host = support.host({ "spec/workers/syntax_error.lua" },
      { flags = { "--log-format", "json" }, wait = false })
    assert.are.equal(1, host:wait_exit(10 * support.slow))
    local lines = json_lines(host:output())
    assert.are.equal("error", lines[#lines].level)
    assert.matches("syntax_error%.lua:4:", lines[#lines].message)
  end)

  it("refuses an unknown format with a usage error", function()
    local host = support.host({ WORKERS }, { flags = { "--log-format=xml" }, wait = false })
    assert.are.equal(2, host:wait_exit(10 * support.slow))
    assert.matches("%-%-log%-format takes text or json", host:output())
  end)
end)

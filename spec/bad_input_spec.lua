-- Bad input never hurts (issue 3, points 6 and 7), against the real broker: requests no
-- delegator of ours would send, published raw by spec/node/publish.js to a Lua worker served by
-- the host; replies no worker of ours would send, at a Lua delegator; results JSON cannot carry.
-- Each case checks what the caller hears, that the broker holds nothing afterwards (the message
-- was settled, and a rejected one did not come back), the one log line, and that the process
-- still serves.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local delegate = require "amqp_delegate"

local q = broker.shell_quote

local function write_temp(bytes)
  local path = os.tmpname()
  local dir = os.getenv("AMQP_DELEGATE_TMPDIR")
  if dir and dir ~= "" then
    local moved = dir .. "/" .. path:match("[^/]+$")
    if os.rename(path, moved) then path = moved end
  end
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

-- One raw message to `queue` through spec/node/publish.js. opts: correlation_id (string, or
-- false for none), reply_to (a queue name, or false for none; absent: publish.js makes a reply
-- queue and waits for the reply), type, timeout (ms). Returns the decoded JSON line publish.js
-- printed (or nil), its exit status and its stderr.
local function publish(queue, body, opts)
  opts = opts or {}
  local file = write_temp(body)
  local words = { "node", q(broker.root() .. "/spec/node/publish.js"), "--url", q(broker.url()),
    "--queue", q(queue), "--body-file", q(file), "--timeout", tostring(opts.timeout or 10000) }
  if opts.correlation_id == false then
    words[#words + 1] = "--no-correlation-id"
  elseif opts.correlation_id then
    words[#words + 1] = "--correlation-id=" .. q(opts.correlation_id)
  end
  if opts.reply_to == false then
    words[#words + 1] = "--no-reply-to"
  elseif opts.reply_to then
    words[#words + 1] = "--reply-to=" .. q(opts.reply_to)
  end
  if opts.type then words[#words + 1] = "--type=" .. q(opts.type) end
  local out, status, err = broker.run(table.concat(words, " ") .. " </dev/null")
  os.remove(file)
  local line = out:match("[^\n]+")
  return line and delegate.decode(line) or nil, status, err
end

-- The error object of an error reply: checks the reply's type and body shape on the way.
local function error_reply(reply)
  assert.is_table(reply, "no reply")
  assert.are.equal("error", reply.type)
  assert.is_true(reply.matches, "the reply carries the request's correlation id")
  local body = delegate.decode(reply.body)
  assert.is_table(body)
  assert.is_table(body.error, "body is {\"error\":{...}}: " .. reply.body)
  return body.error
end

-- The body of a normal reply (no type property).
local function ok_reply(reply)
  assert.is_table(reply, "no reply")
  assert.are.equal(delegate.null, reply.type, "not an error reply: " .. tostring(reply.body))
  assert.is_true(reply.matches)
  return reply.body
end

-- Lines of `text` that contain `plain` (plain text, not a pattern).
local function lines_with(text, plain)
  local found = {}
  for line in text:gmatch("[^\n]+") do
    if line:find(plain, 1, true) then found[#found + 1] = line end
  end
  return found
end

-- Waits until the queue holds nothing (ready 0, unacked 0) with `consumers` consumers; returns
-- the last state seen.
local function settled(queue, consumers)
  local last
  broker.eventually(function()
    last = broker.queues()[queue]
    return last and last.ready == 0 and last.unacked == 0 and last.consumers == (consumers or 1)
  end, 15 * support.slow, 0.5)
  return last
end

local function failure(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal("table", type(err), tostring(err))
  return err
end

-- Empties these queues when they exist: a run that died half way (or an earlier stage of
-- scripts/test.sh on the same broker) must not feed its leftovers to this one.
local function purge(...)
  local queues = broker.queues()
  for _, name in ipairs({ ... }) do
    if queues[name] then broker.ctl("-q", "purge_queue", name) end
  end
end

describe("bad requests at a Lua worker", function()
  local host, delegator

  setup(function()
    purge("bad_input_default", "bad_input_small")
    host = support.host({ "spec/workers/bad_input.lua" })
    delegator = support.delegator()
  end)
  teardown(function()
    if delegator then pcall(delegator.stop, delegator) end
    broker.kill_all()
  end)

  -- Publishes `body` to `worker` and checks, for a caller that can be told: a BAD_REQUEST
  -- error reply whose message contains `problem`, the message settled, exactly one log line
  -- with `problem`, the host still serving.
  local function rejected(worker, body, problem)
    local start = #host:output()
    local function new_output() return host:output():sub(start + 1) end
    local reply, status, err = publish(worker, body)
    assert.are.equal(0, status, "publish.js: " .. err)
    local e = error_reply(reply)
    assert.are.equal("BAD_REQUEST", e.code)
    assert.truthy(e.message:find(problem, 1, true), "message names the problem: " .. e.message)
    assert.truthy(e.message:find(worker, 1, true), "message names the worker: " .. e.message)
    assert.are.equal(worker, e.worker)
    assert.are.same({ ready = 0, unacked = 0, consumers = 1 }, settled(worker))
    local logged = lines_with(new_output(), problem)
    assert.are.equal(1, #logged, "one log line about it:\n" .. new_output())
    assert.truthy(logged[1]:find("BAD_REQUEST", 1, true), logged[1])
    assert.truthy(logged[1]:find(worker, 1, true), logged[1])
    -- still serving, and the bad message did not come back meanwhile
    assert.is_nil(host:status(), host:output())
    assert.are.equal(2, delegator:invoke(worker, "a", "b"))
    assert.are.equal(1, #lines_with(new_output(), problem), "logged once: no redelivery loop")
  end

  it("a body that is not JSON: BAD_REQUEST", function()
    rejected("bad_input_default", "this is { not JSON", "not a JSON array")
  end)

  it("a body that starts as an array but is not JSON: BAD_REQUEST naming the byte", function()
    rejected("bad_input_default", "[1, 2, oops]", "invalid JSON at byte 7")
  end)

  it("an empty body: BAD_REQUEST", function()
    rejected("bad_input_default", "", "unexpected end of input")
  end)

  it("a body that is not UTF-8 text at all: BAD_REQUEST", function()
    rejected("bad_input_small", "\0\255\254[\1", "not a JSON array")
  end)

  it("JSON that is not an array: BAD_REQUEST", function()
    rejected("bad_input_default", '{"args":[1,2]}', "not a JSON array")
  end)

  it("nesting deeper than the default limit of 128: BAD_REQUEST; 128 levels still pass", function()
    -- the argument list itself is the first level
    local deep = string.rep("[", 129) .. string.rep("]", 129)
    rejected("bad_input_default", deep, "nesting deeper than 128")
    local reply = publish("bad_input_default", string.rep("[", 128) .. string.rep("]", 128))
    assert.are.equal("1", ok_reply(reply))
  end)

  it("nesting deeper than the worker's max_depth (8): BAD_REQUEST; 8 levels still pass", function()
    rejected("bad_input_small", '[[[[[[[[["deep"]]]]]]]]]', "nesting deeper than 8")
    local reply = publish("bad_input_small", '[[[[[[[["ok"]]]]]]]]')
    assert.are.equal("1", ok_reply(reply))
  end)

  it("a body over the worker's max_body (1024 bytes): BAD_REQUEST; 1024 bytes still pass", function()
    local big = '["' .. string.rep("x", 2000) .. '"]'
    rejected("bad_input_small", big, "body of 2004 bytes is over the limit of 1024 bytes")
    local fits = '["' .. string.rep("y", 1020) .. '"]'
    assert.are.equal(1024, #fits)
    assert.are.equal("1", ok_reply(publish("bad_input_small", fits)))
  end)

  it("a body over the default max_body (16 MiB) is refused too", function()
    local big = '["' .. string.rep("z", 16 * 1024 * 1024) .. '"]'
    rejected("bad_input_default", big, "over the limit of 16777216 bytes")
  end)

  -- Nobody to answer: rejected without requeue, logged once, nothing left on the broker.
  local function unanswerable(worker, opts, missing)
    local start = #host:output()
    local function new_output() return host:output():sub(start + 1) end
    local reply, status, err = publish(worker, "[1,2]", opts)
    if opts.reply_to == false then
      assert.are.equal(0, status, "publish.js: " .. err)
    else
      -- a reply queue but no correlation id: no reply can be matched, none is sent
      assert.are.equal(2, status, "expected no reply (TIMEOUT), got: " .. tostring(reply and reply.body))
    end
    local problem = "without " .. missing
    assert.truthy(broker.eventually(function() return new_output():find(problem, 1, true) end,
      10 * support.slow), host:output())
    assert.are.same({ ready = 0, unacked = 0, consumers = 1 }, settled(worker))
    local logged = lines_with(new_output(), problem)
    assert.are.equal(1, #logged, "one log line about it:\n" .. new_output())
    assert.truthy(logged[1]:find("BAD_REQUEST", 1, true), logged[1])
    assert.truthy(logged[1]:find(worker, 1, true), logged[1])
    assert.is_nil(host:status(), host:output())
    assert.are.equal(2, delegator:invoke(worker, 1, 2))
    assert.are.equal(1, #lines_with(new_output(), problem), "logged once: no redelivery loop")
  end

  it("no reply_to: rejected without requeue, logged, still serving", function()
    unanswerable("bad_input_default", { reply_to = false }, "reply_to")
  end)

  it("no correlation_id: rejected without requeue, logged, still serving", function()
    unanswerable("bad_input_small", { correlation_id = false, timeout = 3000 }, "correlation_id")
  end)

  it("neither: rejected without requeue, logged, still serving", function()
    unanswerable("bad_input_small", { correlation_id = false, reply_to = false }, "reply_to")
  end)

  it("after all that, the host still answers a normal call", function()
    assert.is_nil(host:status(), host:output())
    assert.are.equal(3, delegator:invoke("bad_input_default", 1, nil, 3))
  end)
end)

describe("bad replies at a Lua delegator", function()
  local delegator

  before_each(function() delegator = support.delegator() end)
  after_each(function()
    if delegator then pcall(delegator.stop, delegator) end
    broker.kill_all()
  end)

  -- names of the server-named (amq.gen-*) queues now on the broker
  local function reply_queues()
    local set = {}
    for name in pairs(broker.queues()) do
      if name:match("^amq%.gen%-") then set[name] = true end
    end
    return set
  end

  it("drops a reply with an unknown correlation id and keeps working (Node worker)", function()
    local worker = broker.node_worker("bad_input_stray", "stray")
    for i = 1, 3 do
      assert.are.equal("call " .. i, delegator:invoke("bad_input_stray", "call " .. i))
    end
    local strays = lines_with(worker:output(), "stray reply sent")
    assert.are.equal(3, #strays, worker:output())
    assert.are.same({ ready = 0, unacked = 0, consumers = 1 }, settled("bad_input_stray"))
  end)

  it("drops a reply published straight to its reply queue, and keeps working", function()
    support.host({ "scripts/adder.lua" })
    local before = reply_queues()
    local mine = support.delegator()
    local new = {}
    for name in pairs(reply_queues()) do
      if not before[name] then new[#new + 1] = name end
    end
    assert.are.equal(1, #new, "one new reply queue")
    local reply_queue = new[1]
    local _, status, err = publish(reply_queue, '"not for you"',
      { correlation_id = "00000000-dead-4bad-8bad-000000000000", reply_to = false })
    assert.are.equal(0, status, err)
    assert.are.equal(5, mine:invoke("adder", 2, 3))
    assert.are.equal(9, mine:invoke("adder", 4, 5))
    local queue = broker.queues()[reply_queue]
    assert.are.equal(0, queue.ready, "the stray reply was taken off the queue")
    mine:stop()
    assert.truthy(broker.eventually(function() return broker.queues()[reply_queue] == nil end,
      10), "the reply queue goes with the delegator")
  end)

  it("logs the dropped reply once, naming its correlation id (delegator in its own process)", function()
    support.host({ "scripts/adder.lua" })
    local loop = broker.spawn("lua5.4 " .. q(broker.root() .. "/spec/helpers/delegator_loop.lua")
      .. " adder")
    local ok, out = loop:wait_for("call 2: 4", 30 * support.slow, true)
    assert.is_true(ok, out)
    local reply_queue = out:match("replies to (amq%.gen%-[%w_%-]+)")
    assert.truthy(reply_queue, "the delegator logs its reply queue at debug level:\n" .. out)
    local id = "11111111-dead-4bad-8bad-111111111111"
    local _, status, err = publish(reply_queue, '"stray"', { correlation_id = id, reply_to = false })
    assert.are.equal(0, status, err)
    ok, out = loop:wait_for("unknown correlation id '" .. id .. "'", 10 * support.slow, true)
    assert.is_true(ok, out)
    -- and it keeps calling: a call that started after the stray arrived still answers
    local after = #out
    ok = broker.eventually(function()
      local o = loop:output()
      return o:sub(after + 1):match("call %d+: %d+\n")
    end, 10 * support.slow)
    assert.truthy(ok, loop:output())
    assert.are.equal(1, #lines_with(loop:output(), id), loop:output())
    assert.falsy(loop:output():find("call %d+ failed"), loop:output())
    assert.is_nil(loop:status())
  end)

  it("a reply that is not JSON: that call raises BAD_REPLY, the next one works", function()
    broker.node_worker("bad_input_raw", "rawbody")
    local err = failure(delegator.invoke, delegator, "bad_input_raw", "this { is not JSON")
    assert.are.equal("BAD_REPLY", err.code)
    assert.matches("reply from 'bad_input_raw' is not JSON", err.message)
    assert.are.equal(42, delegator:invoke("bad_input_raw", "42"))
    assert.are.same({ 1, "a" }, delegator:invoke("bad_input_raw", '[1,"a"]'))
  end)

  it("a reply over the delegator's max_body: BAD_REPLY, the next one works", function()
    broker.node_worker("bad_input_echo", "echo")
    local small = support.delegator({ max_body = 256 })
    local err = failure(small.invoke, small, "bad_input_echo", string.rep("x", 300))
    assert.are.equal("BAD_REPLY", err.code)
    assert.matches("over the limit", err.message)
    assert.are.equal("fits", small:invoke("bad_input_echo", "fits"))
    small:stop()
  end)
end)

describe("results JSON cannot carry", function()
  local host, delegator

  setup(function()
    host = support.host({ "spec/workers/bad_results.lua" })
    delegator = support.delegator()
  end)
  teardown(function()
    if delegator then pcall(delegator.stop, delegator) end
    broker.kill_all()
  end)

  local cases = {
    { "result_function", "cannot encode function" },
    { "result_userdata", "cannot encode userdata" },
    { "result_coroutine", "cannot encode thread" },
    { "result_cycle", "cyclic table" },
    { "result_nested_cycle", "cyclic table" },
    { "result_nan", "cannot encode NaN" },
    { "result_infinity", "cannot encode infinity" },
    { "result_mixed", "table mixes array and string keys" },
  }
  for _, case in ipairs(cases) do
    local name, problem = case[1], case[2]
    it(name .. ": the caller gets BAD_RESULT naming the problem (" .. problem .. ")", function()
      local err = failure(delegator.invoke, delegator, name)
      assert.are.equal("BAD_RESULT", err.code)
      assert.truthy(err.message:find(problem, 1, true), err.message)
      assert.truthy(err.message:find(name, 1, true), "names the task: " .. err.message)
      local line = "task '" .. name .. "' cannot be sent as JSON"
      assert.truthy(broker.eventually(function() return #lines_with(host:output(), line) > 0 end,
        5 * support.slow), "logged:\n" .. host:output())
      -- acked, not given back: it stays answered once and logged once
      assert.are.same({ ready = 0, unacked = 0, consumers = 1 }, settled(name))
      assert.are.same({ "ok", "ok" }, delegator:invoke("result_fine", "ok"))
      assert.are.equal(1, #lines_with(host:output(), line), "logged once:\n" .. host:output())
    end)
  end

  it("after all of them the host still serves", function()
    assert.is_nil(host:status(), host:output())
    assert.are.same({ "ok", "ok" }, delegator:invoke("result_fine", "ok"))
  end)
end)

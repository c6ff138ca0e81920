-- Queues and delivery on RabbitMQ 4 terms, on one node: the worker's queue option (the Node
-- protocol's transient queue by default, quorum or durable classic on request), joining a
-- queue that exists as it is, URL lists, publisher confirms (nack -> NOT_CONFIRMED, or a
-- re-send with {retry = n}), a returned request re-sent while a worker appears, and the
-- delivery limit that answers a request no worker can finish.
local broker = require "spec.helpers.broker"
local support = require "spec.support"
local defer = support.deferrer(function(fn) finally(fn) end)
local delegate = require "amqp_delegate"

local q = broker.shell_quote
local unique = support.unique
local slow = support.slow

-- name -> {durable=, auto_delete=, exclusive=, type=, arguments=} from rabbitmqctl
local function queue_facts(name)
  local out = broker.ctl("-q", "list_queues", "--no-table-headers", "name", "durable",
    "auto_delete", "exclusive", "type", "arguments")
  for line in out:gmatch("[^\n]+") do
    local fields = {}
    for field in (line .. "\t"):gmatch("(.-)\t") do fields[#fields + 1] = field end
    if fields[1] == name then
      return { durable = fields[2], auto_delete = fields[3], exclusive = fields[4],
        type = fields[5], arguments = fields[6] or "" }
    end
  end
  return nil
end

local node_declare = support.node_declare

local function code_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return type(err) == "table" and err.code or ("raw: " .. tostring(err)), err
end

-- A port on loopback where nothing listens.
local function dead_url()
  return "amqp://guest:secret@127.0.0.1:1"
end

describe("queues and delivery", function()
  local delegator, workers
  before_each(function()
    delegator = support.delegator({ timeout = 10 * slow })
    workers = support.in_process_workers(broker.url())
  end)
  after_each(function()
    workers.stop_all()
    pcall(delegator.stop, delegator)
  end)

  describe("the worker's queue", function()
    it("is the Node protocol's by default: classic, not durable, not exclusive, not auto-deleted, no arguments", function()
      local name = unique("queue_default")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      workers.serve({ name = name, task = function(x) return x end })
      local facts = assert(queue_facts(name), "the queue exists")
      assert.are.same({ durable = "false", auto_delete = "false", exclusive = "false",
        type = "classic", arguments = "[]" }, facts)
      assert.are.equal(7, delegator:invoke(name, 7))
    end)

    it("queue = {type = 'quorum'} declares a durable quorum queue that serves", function()
      local name = unique("queue_quorum")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      workers.serve({ name = name, queue = { type = "quorum" }, task = function(x) return x + 1 end })
      local facts = assert(queue_facts(name), "the queue exists")
      assert.are.equal("quorum", facts.type)
      assert.are.equal("true", facts.durable)
      assert.are.equal("false", facts.auto_delete)
      assert.are.equal(2, delegator:invoke(name, 1))
    end)

    it("queue = 'quorum' is the short form", function()
      local name = unique("queue_quorum_short")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      workers.serve({ name = name, queue = "quorum", task = function(x) return x end })
      assert.are.equal("quorum", queue_facts(name).type)
    end)

    it("queue = {durable = true} declares a durable classic queue", function()
      local name = unique("queue_durable")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      workers.serve({ name = name, queue = { durable = true }, task = function(x) return x end })
      local facts = queue_facts(name)
      assert.are.equal("classic", facts.type)
      assert.are.equal("true", facts.durable)
      assert.are.equal(3, delegator:invoke(name, 3))
    end)

    it("$AMQP_DELEGATE_QUEUE_TYPE (what run --queue-type sets) chooses the type for a host's workers", function()
      local name = unique("queue_env")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      local host = support.host({ "spec/workers/sleeper.lua" },
        { env = { WORKER_NAME = name, AMQP_DELEGATE_QUEUE_TYPE = "quorum" } })
      defer(function() host:kill() end)
      assert.are.equal("quorum", queue_facts(name).type)
      assert.are.equal("x", delegator:invoke(name, 0, "x"))
    end)

    it("a quorum queue an operator declared is joined by a worker with the default options", function()
      local name = unique("queue_predeclared")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      node_declare(name, '{"durable":true,"arguments":{"x-queue-type":"quorum"}}')
      workers.serve({ name = name, task = function(x) return x * 10 end })
      assert.are.equal(50, delegator:invoke(name, 5))
      assert.are.equal("quorum", queue_facts(name).type, "joined as it is, not redeclared")
    end)

    it("a queue declared by a quorum worker is joined by a seed-default worker (and both serve)", function()
      local name = unique("queue_mixed")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      workers.serve({ name = name, queue = "quorum", task = function()
        delegate.sleep(0.05)
        return "quorum worker"
      end })
      workers.serve({ name = name, task = function()
        delegate.sleep(0.05)
        return "default worker"
      end })
      local calls, seen = {}, {}
      for i = 1, 8 do calls[i] = delegator:send(name) end
      for i = 1, 8 do seen[calls[i]:wait()] = true end
      assert.are.same({ ["quorum worker"] = true, ["default worker"] = true }, seen)
    end)

    it("refuses what is not a queue option, naming it", function()
      local function make(queue)
        return delegate.worker({ name = "x", task = function() end, queue = queue })
      end
      assert.are.equal("BAD_ARGUMENT", code_of(make, "stream"))
      assert.are.equal("BAD_ARGUMENT", code_of(make, 5))
      assert.are.equal("BAD_ARGUMENT", code_of(make, { type = "quorum", durable = false }))
      assert.are.equal("BAD_ARGUMENT", code_of(make, { kind = "quorum" }))
      assert.are.equal("BAD_ARGUMENT", code_of(delegate.worker,
        { name = "x", task = function() end, delivery_limit = -1 }))
      assert.are.equal("BAD_ARGUMENT", code_of(delegate.worker,
        { name = "x", task = function() end, confirms = "yes" }))
    end)
  end)

  describe("several brokers", function()
    it("url = {dead, good}: the first start tries the next broker at once and serves", function()
      local name = unique("urls_table")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      local worker = delegate.worker({ name = name, url = { dead_url(), broker.url() },
        task = function(x) return x end })
      -- either order: the list is shuffled, and either way the good broker serves
      worker:start()
      defer(function() worker:stop() end)
      assert.truthy(tostring(worker):find(tostring(broker.port()), 1, true), tostring(worker))
      assert.are.equal(4, delegator:invoke(name, 4))
    end)

    it("a comma-separated list works for delegators too, and every URL is redacted", function()
      local d = delegate.delegator({ url = dead_url() .. "," .. broker.url() }):start()
      defer(function() d:stop() end)
      assert.falsy(tostring(d):find("secret", 1, true))
    end)

    it("when every broker fails, start() raises after trying each one", function()
      local d = delegate.delegator({ url = { dead_url(), "amqp://guest:secret@127.0.0.1:2" },
        connect_timeout = 2 })
      local code, err = code_of(d.start, d)
      assert.are.equal("CONNECTION_FAILED", code)
      assert.falsy(tostring(err):find("secret", 1, true), tostring(err))
    end)

    it("refuses bad lists with BAD_URL or BAD_ARGUMENT, never showing a password", function()
      local function make(url) return delegate.delegator({ url = url }) end
      assert.are.equal("BAD_ARGUMENT", code_of(make, {}))
      assert.are.equal("BAD_ARGUMENT", code_of(make, { broker.url(), 5 }))
      assert.are.equal("BAD_URL", code_of(make, broker.url() .. ",,".. broker.url()))
      assert.are.equal("BAD_URL", code_of(make, broker.url() .. ","))
      local many = {}
      for i = 1, 17 do many[i] = broker.url() end
      assert.are.equal("BAD_URL", code_of(make, many))
      local code, err = code_of(make, { broker.url(), "http://user:hunter2@x" })
      assert.are.equal("BAD_URL", code)
      assert.falsy(tostring(err):find("hunter2", 1, true), tostring(err))
    end)
  end)

  describe("publisher confirms", function()
    -- these queues have no consumer on purpose: the delegator must not ask for one first
    before_each(function()
      pcall(delegator.stop, delegator)
      delegator = support.delegator({ timeout = 10 * slow, check_workers = false })
    end)

    -- a queue that holds one message and refuses (nacks) further publishes
    local function full_queue()
      local name = unique("confirm_full")
      node_declare(name, '{"durable":false,"arguments":{"x-max-length":1,"x-overflow":"reject-publish"}}')
      return name
    end

    it("a request the broker refuses (nack) ends at once with NOT_CONFIRMED, not TIMEOUT", function()
      local name = full_queue()
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      local first = delegator:send({ timeout = 30 }, name, 1) -- fills the queue
      local code = code_of(delegator.invoke, delegator, { timeout = 30 }, name, 2)
      assert.are.equal("NOT_CONFIRMED", code)
      assert.are.equal(1, delegator:stats().not_confirmed)
      assert.is_false(first:done())
    end)

    it("{retry = 2} sends a refused request twice more before NOT_CONFIRMED", function()
      local name = full_queue()
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      delegator:send({ timeout = 30 }, name, 1)
      assert.are.equal("NOT_CONFIRMED", (code_of(delegator.invoke, delegator, { retry = 2 }, name, 2)))
      assert.are.equal(2, delegator:stats().retried)
    end)

    it("confirms = false publishes without them (a refused request then waits for its TIMEOUT)", function()
      local name = full_queue()
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      local d = support.delegator({ confirms = false, check_workers = false })
      defer(function() d:stop() end)
      d:send(name, 1)
      assert.are.equal("TIMEOUT", (code_of(d.invoke, d, { timeout = 1 }, name, 2)))
    end)

    it("a returned request with retries left goes again and is served once a worker appears", function()
      local name = unique("retry_route")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      local call = delegator:send({ retry = 10, timeout = 20 }, name, 6)
      workers.serve({ name = name, task = function(x) return x * 7 end })
      assert.are.equal(42, call:wait())
      assert.is_true(delegator:stats().retried >= 1)
      -- without retries, the seed's NO_ROUTE at once
      assert.are.equal("NO_ROUTE", (code_of(delegator.invoke, delegator, unique("retry_none"))))
    end)

    it("{retry = n} refuses what is not a count", function()
      assert.are.equal("BAD_ARGUMENT", (code_of(delegator.send, delegator, { retry = -1 }, "x")))
      assert.are.equal("BAD_ARGUMENT", (code_of(delegator.send, delegator, { retry = 0.5 }, "x")))
      assert.are.equal("BAD_ARGUMENT", (code_of(delegator.send, delegator, { retry = 1 / 0 }, "x")))
    end)
  end)

  describe("the delivery limit", function()
    -- the request waits in the queue for the hosts that start after it
    before_each(function()
      pcall(delegator.stop, delegator)
      delegator = support.delegator({ timeout = 10 * slow, check_workers = false })
    end)

    -- Hosts whose task kills them, one after another, until the caller hears: the request
    -- never loops for ever.
    local function crash_until_answered(name, queue, limit)
      local call = delegator:send({ timeout = 60 * slow }, name)
      local hosts = 0
      while not call:done() and hosts < limit + 3 do
        hosts = hosts + 1
        local host = support.host({ "spec/workers/crasher.lua" }, { env = { WORKER_NAME = name,
          WORKER_QUEUE = queue, DELIVERY_LIMIT = tostring(limit) }, wait = false })
        local deadline = broker.now() + 20 * slow
        while not (host:status() or call:done()) and broker.now() < deadline do
          delegate.sleep(0.05) -- runs the loop: the reply, if one comes, is seen
        end
        host:kill()
      end
      return call, hosts
    end

    it("a quorum queue's x-delivery-count: after delivery_limit crashed deliveries the caller gets DELIVERY_LIMIT", function()
      local name = unique("limit_quorum")
      defer(function() pcall(broker.ctl, "delete_queue", name) end)
      node_declare(name, '{"durable":true,"arguments":{"x-queue-type":"quorum"}}')
      local call, hosts = crash_until_answered(name, "quorum", 2)
      local ok, err = pcall(call.wait, call)
      assert.is_false(ok)
      assert.are.equal("DELIVERY_LIMIT", err.code, tostring(err))
      assert.are.equal(3, hosts, "two hosts ran it and died, the third answered")
      assert.truthy(err.message:find("delivered 2 time", 1, true), err.message)
    end)
  end)
end)

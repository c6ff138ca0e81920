-- Proves the 3-node cluster harness (scripts/cluster.sh, spec/helpers/cluster.lua): three
-- running nodes, a quorum queue with a leader, a new leader within seconds after the leader's
-- node is killed with its confirmed messages kept, and the killed node back in the cluster.
-- Pending when no cluster was given (CLUSTER_URLS unset: CLUSTER=0, or the ASan and valgrind
-- stages of scripts/test.sh).
local broker = require "spec.helpers.broker"
local cluster = require "spec.helpers.cluster"

describe("cluster harness", function()
  if not cluster.available() then
    pending("no cluster: CLUSTER_URLS is not set (scripts/test.sh starts one unless CLUSTER=0)")
    return
  end

  local queue = string.format("cluster-harness-%d-%d", os.time(), math.random(1, 1e6))

  teardown(function()
    -- leave a whole cluster to the specs that come next, and no queue of ours
    local up = {}
    for _, k in ipairs(cluster.running()) do up[k] = true end
    for k = 1, cluster.size() do
      if not up[k] then cluster.restart(k) end
    end
    pcall(cluster.delete_queue, 1, queue)
  end)

  it("has three running nodes, each with its own URL", function()
    assert.are.same({ 1, 2, 3 }, cluster.running())
    assert.are.equal(3, #cluster.urls())
    for k = 1, 3 do
      assert.matches("^amqp://guest:guest@127%.0%.0%.1:%d+$", cluster.url(k))
      assert.are.equal(k, cluster.node_of_port(cluster.port(k)))
      assert.matches("^adtest%-%d+@localhost$", cluster.node(k))
    end
  end)

  it("declares a quorum queue with a leader and three members", function()
    assert.are.equal(0, cluster.declare_quorum(2, queue))
    local k = cluster.wait_leader(queue, 10)
    assert.is_not_nil(k, "the queue has no leader")
    local info = cluster.queue_info(1, queue)
    assert.are.equal("quorum", info.type)
    assert.are.equal(k, info.leader)
    assert.are.same({ 1, 2, 3 }, info.members)
  end)

  it("elects a new leader when the leader's node is killed, keeps the messages, takes the node back", function()
    local bodies = {}
    for i = 1, 10 do bodies[i] = "message " .. i end
    assert.are.equal(10, cluster.publish(1, queue, bodies))

    local old = assert(cluster.wait_leader(queue, 10), "the queue has no leader")
    local t0 = broker.now()
    cluster.kill(old)
    assert.are_not.same(nil, cluster.running()[1], "no node answers after the kill")
    local new = cluster.wait_leader(queue, 10, old)
    local elapsed = broker.now() - t0
    assert.is_not_nil(new, "no new leader 10 s after node " .. old .. " was killed")
    assert.are_not.equal(old, new)
    assert.is_true(elapsed < 10)

    -- the confirmed messages are all there, in order, read through another live node
    local other = new % 3 + 1
    if other == old then other = other % 3 + 1 end
    assert.are.equal(10, (cluster.message_count(other, queue)))
    assert.are.same(bodies, cluster.get(other, queue, 20))

    -- the killed node comes back into the cluster, its queue member with it
    cluster.restart(old)
    assert.are.same({ 1, 2, 3 }, cluster.running())
    assert.are.same({ 1, 2, 3 }, cluster.queue_info(old, queue).members)
    assert.is_truthy(cluster.wait_leader(queue, 10))
  end)
end)

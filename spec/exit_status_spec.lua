-- The one exit status table of run, call and shell (README, --help, the man page): a case
-- for each row and each command it applies to.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote
local ROOT = broker.root()
local NOWHERE = "amqp://guest:guest@127.0.0.1:1/" -- port 1 refuses connections

-- Runs `amqp-delegate WORDS...` to its end; returns its status and stderr.
local function status_of(...)
  local _, status, err = support.command(...)
  return status, err
end

-- Starts `amqp-delegate WORDS...` in the background, with SIGINT's default action (a shell
-- starts background commands with SIGINT ignored; a terminal's Ctrl-C finds it default).
local function start(...)
  local words = { "env --default-signal=INT", q(support.host_binary()) }
  for _, word in ipairs({ ... }) do words[#words + 1] = q(word) end
  return broker.spawn(table.concat(words, " "))
end

describe("exit statuses", function()
  setup(function()
    support.host({ "scripts/adder.lua", "spec/workers/slow.lua" }, { flags = { "--concurrency", "8" } })
  end)
  teardown(function() broker.kill_all() end)

  it("0: call printed the result; shell -e ran; run stopped by SIGTERM", function()
    assert.are.equal(0, (status_of("call", "-u", broker.url(), "adder", "1", "2")))
    assert.are.equal(0, (status_of("shell", "-u", broker.url(), "-e", "adder(1, 2)")))
    assert.are.equal(0, (status_of("status", "-u", broker.url(), "adder")))
    local p = support.host({ "scripts/adder.lua" })
    p:signal("TERM")
    assert.are.equal(0, p:wait_exit(10 * support.slow), p:output())
    p:kill()
  end)

  it("1: the task raised, nobody serves the name, a file does not load or serves nothing, -e raised", function()
    assert.are.equal(1, (status_of("call", "-u", broker.url(), "adder", '"x"', "1")))
    assert.are.equal(1, (status_of("call", "-u", broker.url(), "exit_status_nobody")))
    assert.are.equal(1, (status_of("status", "-u", broker.url(), "adder", "exit_status_nobody")))
    assert.are.equal(1, (status_of("run", "-u", broker.url(), ROOT .. "/spec/workers/load_error.lua")))
    assert.are.equal(1, (status_of("run", "-u", broker.url(), ROOT .. "/spec/workers/cli_returns_nothing.lua")))
    assert.are.equal(1, (status_of("shell", "-u", broker.url(), "-e", "error('x')")))
  end)

  it("2: usage, BAD_URL, BAD_ARGUMENT, for every command", function()
    for _, command in ipairs({ "run", "call", "shell", "status" }) do
      assert.are.equal(2, (status_of(command, "--no-such-option")), command)
      local status, err = status_of(command, "--url", "http://guest:guest@example.invalid/",
        command == "run" and ROOT .. "/scripts/adder.lua" or command ~= "shell" and "adder" or nil)
      assert.are.equal(2, status, command .. ": " .. err)
      assert.matches("BAD_URL", err)
    end
    assert.are.equal(2, (status_of("call", "-u", NOWHERE, "adder", "not-json")))
    assert.are.equal(2, (status_of("frobnicate")))
  end)

  it("3: the broker cannot be reached, for every command", function()
    for _, words in ipairs({ { "run", ROOT .. "/scripts/adder.lua" }, { "call", "adder", "1" }, { "shell" },
        { "shell", "-e", "1" } }) do
      local status, err = status_of(words[1], "--url", NOWHERE, table.unpack(words, 2))
      assert.are.equal(3, status, table.concat(words, " ") .. ": " .. err)
      assert.matches("CONNECTION_FAILED", err)
    end
  end)

  it("4: TIMEOUT, in call and in shell", function()
    assert.are.equal(4, (status_of("call", "-u", broker.url(), "-t", "0.3", "cli_slow", "5")))
    assert.are.equal(4, (status_of("shell", "-u", broker.url(), "-e", 'delegator:invoke({timeout = 0.3}, "cli_slow", 5)')))
  end)

  it("130: Ctrl-C (SIGINT) in call and shell while a call waits, and in run once the tasks in hand are done", function()
    for _, words in ipairs({ { "call", "cli_slow", "30" }, { "shell", "-e", "cli_slow(30)" } }) do
      local p = start(words[1], "-u", broker.url(), table.unpack(words, 2))
      broker.sleep(1 * support.slow) -- connected, the call waits
      assert.is_true(p:signal("INT"))
      assert.are.equal(130, p:wait_exit(10 * support.slow), table.concat(words, " ") .. ": " .. p:output())
      assert.matches("INTERRUPTED", p:output())
      p:kill()
    end
    local p = support.host({ "scripts/adder.lua" })
    assert.is_true(p:signal("INT"))
    assert.are.equal(130, p:wait_exit(10 * support.slow), p:output())
    p:kill()
  end)

  it("143: run, a second SIGTERM while the tasks in hand finish", function()
    local name = support.unique("exit_status_sleeper")
    local p = support.host({ "spec/workers/sleeper.lua" }, { env = { WORKER_NAME = name } })
    local d = support.delegator()
    d:send({ timeout = 60 }, name, 30, "late")
    assert.is_true((p:wait_for("task late started", 10 * support.slow, true)), p:output())
    assert.is_true(p:signal("TERM"))
    broker.sleep(0.3)
    assert.is_nil(p:status(), "exited at the first SIGTERM with a task in hand")
    assert.is_true(p:signal("TERM"))
    assert.are.equal(143, p:wait_exit(5 * support.slow), p:output())
    p:kill()
    d:stop()
  end)
end)

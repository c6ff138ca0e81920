-- `amqp-delegate shell`, driven through a pseudo-terminal (util-linux `script`) one line at
-- a time, the way a person types: the specs read the terminal's output, prompts and echo
-- included.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote

local Terminal = {}
Terminal.__index = Terminal

-- Starts `amqp-delegate shell ARGS...` (or `command`, a list of words) on a pseudo-terminal
-- whose keyboard is a FIFO.
local function terminal(args, command)
  local fifo = os.tmpname()
  os.remove(fifo)
  assert(os.execute("mkfifo " .. q(fifo)))
  local words = { q(support.host_binary()), "shell" }
  for _, arg in ipairs(args or { "--url", broker.url() }) do words[#words + 1] = q(arg) end
  if command then
    words = {}
    for i, word in ipairs(command) do words[i] = q(word) end
  end
  local process = broker.spawn("script -qfec " .. q(table.concat(words, " ")) .. " /dev/null <" .. q(fifo),
    { env = { TERM = "dumb" } })
  -- read-write: opening never blocks, whether or not `script` opened its end yet
  local keyboard = assert(io.open(fifo, "r+"))
  return setmetatable({ process = process, keyboard = keyboard, fifo = fifo }, Terminal)
end

-- What the terminal shows so far (carriage returns dropped).
function Terminal:screen()
  return (self.process:output():gsub("\r", ""))
end

-- Waits until the screen matches the plain text `expected` after position `from`.
function Terminal:wait_for(expected, seconds, from)
  local found = broker.eventually(function()
    return self:screen():find(expected, from or 1, true)
  end, seconds or 10, 0.05)
  assert(found, string.format("the terminal never showed %q; it shows:\n%s", expected, self:screen()))
  return found
end

-- Types a line (or raw keys with `raw`) and returns what the terminal shows after it,
-- once the next prompt appeared.
function Terminal:type(text, raw)
  local before = #self:screen()
  self.keyboard:write(raw and text or (text .. "\n"))
  self.keyboard:flush()
  self:wait_for("\n> ", 15, before + 1)
  return self:screen():sub(before + 1)
end

function Terminal:close()
  if self.process:alive() then -- Ctrl-D, as a person leaves (killing `script` takes seconds)
    self.keyboard:write("\4")
    self.keyboard:flush()
    self.process:wait_exit(5)
  end
  self.keyboard:close()
  os.remove(self.fifo)
  self.process:kill()
end

-- Types a call that waits, then Ctrl-C: the wait ends with INTERRUPTED at the prompt.
local function interrupt_a_waiting_call(shell, line)
  local before = #shell:screen()
  shell.keyboard:write(line .. "\n")
  shell.keyboard:flush()
  shell:wait_for(line, 10, before + 1)
  broker.sleep(0.5) -- the call is now waiting on the loop
  local screen = shell:type("\3", true)
  assert.matches("INTERRUPTED: call to 'shell_sleeper' interrupted\n> $", screen)
end

describe("amqp-delegate shell", function()
  local shell
  setup(function()
    support.host({ "scripts/adder.lua", "spec/workers/values.lua" })
    support.host({ "spec/workers/sleeper.lua" }, { env = { WORKER_NAME = "shell_sleeper" } })
  end)
  after_each(function()
    if shell then shell:close() end
    shell = nil
  end)
  teardown(function() broker.kill_all() end)

  it("prints a one-line banner saying what is bound, without the password", function()
    shell = terminal()
    shell:wait_for("\n> ")
    local screen = shell:screen()
    local banner = screen:match("^([^\n]*)\n> $")
    assert.is_not_nil(banner, screen)
    assert.matches("^amqp%-delegate %d+%.%d+%.%d+ shell", banner)
    assert.matches("`delegator` is started on amqp://guest:%*%*%*@127%.0%.0%.1:" .. broker.port(), banner)
    assert.matches('`delegate` is require "amqp_delegate"', banner)
    assert.matches("adder%(10, 15%)", banner)
    assert.falsy(banner:find(":guest@", 1, true))
  end)

  it("calls a worker by its name: adder(10, 15) prints 25", function()
    shell = terminal()
    shell:wait_for("\n> ")
    assert.are.equal("adder(10, 15)\n25\n> ", shell:type("adder(10, 15)"))
    assert.are.equal('delegator:invoke("adder", 1, 2)\n3\n> ', shell:type('delegator:invoke("adder", 1, 2)'))
    assert.are.equal("x = adder(20, 1)\n> ", shell:type("x = adder(20, 1)"))
    assert.are.equal("x * 2\n42\n> ", shell:type("x * 2"))
  end)

  it("pretty-prints a table result: sorted keys, indented past the width", function()
    shell = terminal()
    shell:wait_for("\n> ")
    local line = 'lua_echo({total = 2, users = {{name = "ada", roles = {"admin", "dev"}, age = 36},'
      .. ' {name = "grace", roles = delegate.array(), age = 85, meta = {k = "v"}}}})'
    assert.are.equal(line .. "\n" .. [[
{
  "total": 2,
  "users": [
    {"age": 36, "name": "ada", "roles": ["admin", "dev"]},
    {"age": 85, "meta": {"k": "v"}, "name": "grace", "roles": []}
  ]
}
> ]], shell:type(line))
    assert.are.equal('lua_echo({a = {1, 2}, b = "x", c = delegate.null})\n{"a": [1, 2], "b": "x", "c": null}\n> ',
      shell:type('lua_echo({a = {1, 2}, b = "x", c = delegate.null})'))
    assert.are.equal("t = {} t.me = t\n> ", shell:type("t = {} t.me = t"))
    assert.are.equal('t\n{"me": <cycle>}\n> ', shell:type("t"))
  end)

  it("prints an error as one line and stays usable", function()
    shell = terminal()
    shell:wait_for("\n> ")
    local shown = shell:type('adder("x", 1)')
    assert.matches("^adder%(\"x\", 1%)\nTASK_FAILED: [^\n]*adder%.lua:6: attempt to add a 'string' with a 'number'\n> $", shown)
    shown = shell:type("nobody_serves_this(1)")
    assert.matches("^nobody_serves_this%(1%)\nNO_ROUTE: no worker serves 'nobody_serves_this'[^\n]*\n> $", shown)
    assert.are.equal('error("plain")\nstdin:1: plain\n> ', shell:type('error("plain")'))
    assert.are.equal("1 +\nstdin:1: unexpected symbol near '1'\n> ", shell:type("1 +"))
    assert.are.equal("adder(1, 1)\n2\n> ", shell:type("adder(1, 1)"))
  end)

  it("reads a statement over several lines, and Ctrl-C drops the line being typed", function()
    shell = terminal()
    shell:wait_for("\n> ")
    local before = #shell:screen()
    for _, line in ipairs({ "for i = 1, 2 do", "  print(adder(i, 10))" }) do
      local at = #shell:screen()
      shell.keyboard:write(line .. "\n")
      shell.keyboard:flush()
      shell:wait_for("\n>> ", 10, at + 1)
    end
    shell:type("end")
    assert.are.equal("for i = 1, 2 do\n>>   print(adder(i, 10))\n>> end\n11\n12\n> ",
      shell:screen():sub(before + 1))
    -- Ctrl-C (the terminal echoes ^C) forgets the unfinished call
    before = #shell:screen()
    shell.keyboard:write("adder(1,")
    shell.keyboard:flush()
    shell:wait_for("adder(1,", 10, before + 1)
    shell:type("\3", true)
    assert.are.equal("adder(1,^C\n> ", shell:screen():sub(before + 1))
    assert.are.equal("adder(2, 3)\n5\n> ", shell:type("adder(2, 3)"))
  end)

  it("Ctrl-C while a call waits interrupts that wait; the delegator stays usable", function()
    shell = terminal()
    shell:wait_for("\n> ")
    interrupt_a_waiting_call(shell, 'shell_sleeper(30, "late")')
    assert.are.equal("adder(2, 3)\n5\n> ", shell:type("adder(2, 3)"))
  end)

  it("the same in the plain lua5.4 REPL", function()
    shell = terminal(nil, { "lua5.4", "-i" })
    shell:wait_for("\n> ")
    shell:type('delegate = require "amqp_delegate"')
    shell:type(string.format("d = delegate.delegator { url = %q }:start()", broker.url()))
    interrupt_a_waiting_call(shell, 'd:invoke("shell_sleeper", 30, "late")')
    assert.are.equal('d:invoke("adder", 2, 3)\n5\n> ', shell:type('d:invoke("adder", 2, 3)'))
  end)

  it("leaves on Ctrl-D, stopping its delegator", function()
    local function connections() return #broker.connections() end
    local idle = connections()
    shell = terminal()
    shell:wait_for("\n> ")
    assert.truthy(broker.eventually(function() return connections() == idle + 1 end, 10))
    shell.keyboard:write("\4")
    shell.keyboard:flush()
    assert.are.equal(0, shell.process:wait_exit(10), shell:screen())
    assert.truthy(broker.eventually(function() return connections() == idle end, 10),
      "the delegator's connection is still open")
  end)

  it("leaves on exit(n) and os.exit(n) with that status", function()
    shell = terminal()
    shell:wait_for("\n> ")
    shell.keyboard:write("exit(3)\n")
    shell.keyboard:flush()
    assert.are.equal(3, shell.process:wait_exit(10), shell:screen())
    shell:close()
    shell = terminal()
    shell:wait_for("\n> ")
    shell.keyboard:write("os.exit(true)\n")
    shell.keyboard:flush()
    assert.are.equal(0, shell.process:wait_exit(10), shell:screen())
  end)

  it("exits 3 with one line when the broker cannot be reached", function()
    shell = terminal({ "--url", "amqp://guest:s3cret@127.0.0.1:1/" })
    assert.are.equal(3, shell.process:wait_exit(20), shell:screen())
    local screen = shell:screen()
    assert.matches("CONNECTION_FAILED: cannot connect to 127%.0%.0%.1:1", screen)
    assert.falsy(screen:find("s3cret", 1, true))
  end)
end)

describe("amqp-delegate shell without a terminal", function()
  teardown(function() broker.kill_all() end)

  it("reads lines from a pipe and prints only the results", function()
    support.host({ "scripts/adder.lua" })
    local out, status, err = broker.run("printf '%s\\n' 'adder(10, 15)' 'adder(\"x\", 1)' '{1, 2}' | "
      .. q(support.host_binary()) .. " shell --url " .. q(broker.url()))
    assert.are.equal(0, status, err)
    assert.are.equal("25\n[1, 2]\n", out)
    assert.matches("^TASK_FAILED: [^\n]*\n$", err)
  end)
end)

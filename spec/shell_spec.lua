-- `amqp-delegate shell`, driven through a pseudo-terminal (util-linux `script`) one line at
-- a time, the way a person types: the specs read the terminal's output, prompts and echo
-- included (line editing, history and Tab completion too); then without a terminal: a
-- pipe, -e CODE and script files.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote

local Terminal = {}
Terminal.__index = Terminal

-- A fresh folder for $HOME, so that no spec reads or writes a real history file.
local function new_home()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. q(dir)))
  return dir
end

-- Starts `amqp-delegate shell ARGS...` (or `command`, a list of words) on a pseudo-terminal
-- whose keyboard is a FIFO; `home` is its $HOME (default: a new empty folder).
local function terminal(args, command, home)
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
    { env = { TERM = "dumb", HOME = home or new_home() } })
  -- read-write: opening never blocks, whether or not `script` opened its end yet
  local keyboard = assert(io.open(fifo, "r+"))
  return setmetatable({ process = process, keyboard = keyboard, fifo = fifo }, Terminal)
end

-- What the terminal shows so far (carriage returns dropped).
function Terminal:screen()
  return (self.process:output():gsub("\r", ""))
end

-- Waits until the screen matches the plain text `expected` after position `from` (longer
-- under valgrind: support.slow).
function Terminal:wait_for(expected, seconds, from)
  local found = broker.eventually(function()
    return self:screen():find(expected, from or 1, true)
  end, (seconds or 10) * support.slow, 0.05)
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
    self.process:wait_exit(5 * support.slow)
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
    support.host({ "scripts/adder.lua", "spec/workers/values.lua", "scripts/greet.lua" })
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
    assert.are.equal(0, shell.process:wait_exit(10 * support.slow), shell:screen())
    assert.truthy(broker.eventually(function() return connections() == idle end, 10),
      "the delegator's connection is still open")
  end)

  it("leaves on exit(n) and os.exit(n) with that status", function()
    shell = terminal()
    shell:wait_for("\n> ")
    shell.keyboard:write("exit(3)\n")
    shell.keyboard:flush()
    assert.are.equal(3, shell.process:wait_exit(10 * support.slow), shell:screen())
    shell:close()
    shell = terminal()
    shell:wait_for("\n> ")
    shell.keyboard:write("os.exit(true)\n")
    shell.keyboard:flush()
    assert.are.equal(0, shell.process:wait_exit(10 * support.slow), shell:screen())
  end)

  it("edits the line being typed: cursor keys, Ctrl-A", function()
    shell = terminal()
    shell:wait_for("\n> ")
    -- "adder(1 2)", three times Left, then the missing comma
    assert.matches("\n3\n> $", shell:type("adder(1 2)\27[D\27[D\27[D,"))
    -- "(10, 15)", Ctrl-A (start of line), then the name
    assert.matches("\n25\n> $", shell:type("(10, 15)\1adder"))
  end)

  it("keeps the history between sessions in $HOME/.amqp_delegate_history, readable by its owner only", function()
    local home = new_home()
    shell = terminal(nil, nil, home)
    shell:wait_for("\n> ")
    shell:type("adder(20, 22)")
    shell:type("x = 1")
    shell:close()
    local path = home .. "/.amqp_delegate_history"
    local saved = broker.read_file(path)
    assert.is_not_nil(saved, "no history file")
    assert.matches("adder%(20,", saved)
    assert.are.equal("-rw-------", (broker.run("stat -c %A " .. q(path)):gsub("%s+$", "")))
    shell = terminal(nil, nil, home)
    shell:wait_for("\n> ")
    -- Up twice: the line before the last one of the earlier session
    assert.matches("adder%(20, 22%)\n42\n> $", shell:type("\27[A\27[A"))
  end)

  it("completes globals, fields, methods and the workers called so far with Tab", function()
    shell = terminal()
    shell:wait_for("\n> ")
    assert.matches("\n5\n> $", shell:type("adder(2, 3)"))
    -- a worker that answered: "add" + Tab is "adder("
    assert.matches("adder%(3, 4%)\n7\n> $", shell:type("add\t3, 4)"))
    assert.matches("delegator:invoke%(\"adder\", 5, 5%)\n10\n> $", shell:type('delegator:inv\t"adder", 5, 5)'))
    assert.matches("string%.upper%(\"ab\"%)\n\"AB\"\n> $", shell:type('string.up\t"ab")'))
    -- two candidates: the second Tab lists them
    local before = #shell:screen()
    shell.keyboard:write("delega\t\t")
    shell.keyboard:flush()
    shell:wait_for("delegate  delegator", 10, before + 1)
    shell:type("\3", true)
  end)

  it("calls a worker only where the name is called: any other undefined name is an error", function()
    shell = terminal()
    shell:wait_for("\n> ")
    assert.matches("^adder%(Ada, 1%)\nstdin:1: 'Ada' is not defined: a worker is called as Ada%(%.%.%.%), and a string is written \"Ada\"\n> $",
      shell:type("adder(Ada, 1)"))
    assert.matches("^y = nobody_defined_this\nstdin:1: 'nobody_defined_this' is not defined", shell:type("y = nobody_defined_this"))
    assert.matches("\n2\n> $", shell:type("adder(1, 1)"))
    -- once called, the name shows what it is bound to
    assert.matches("worker adder: adder%(%.%.%.%) calls delegator:invoke%(\"adder\", %.%.%.%)", shell:type("adder"))
    -- and it cannot be sent as an argument by mistake
    assert.matches("\nBAD_ARGUMENT: [^\n]*\n> $", shell:type("lua_echo(adder)"))
    assert.matches("\n\"Hello, Ada!\"\n> $", shell:type('greet("Ada")'))
  end)

  it("help() says how it works", function()
    shell = terminal()
    shell:wait_for("\n> ")
    local shown = shell:type("help()")
    assert.matches("adder%(10, 15%) +calls worker adder", shown)
    assert.matches("greet%(Ada%) needs greet%(\"Ada\"%)", shown)
    assert.matches("Tab completes", shown)
  end)

  it("exits 3 with one line when the broker cannot be reached", function()
    shell = terminal({ "--url", "amqp://guest:s3cret@127.0.0.1:1/" })
    assert.are.equal(3, shell.process:wait_exit(20 * support.slow), shell:screen())
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

  local function shell_run(...)
    local words = { q(support.host_binary()), "shell", "--url", q(broker.url()) }
    for _, word in ipairs({ ... }) do words[#words + 1] = q(word) end
    return broker.run(table.concat(words, " ") .. " </dev/null")
  end

  it("-e CODE runs in the shell's environment, prints an expression's value and exits", function()
    support.host({ "scripts/adder.lua" })
    local out, status, err = shell_run("-e", "adder(10, 15)", "-e", "x = adder(1, 1)", "-e", "print(x * 10)")
    assert.are.equal(0, status, err)
    assert.are.equal("25\n20\n", out)
    assert.are.equal("", err)
  end)

  it("-e CODE exits non-zero on the first error, with one line and no traceback", function()
    support.host({ "scripts/adder.lua" })
    local out, status, err = shell_run("-e", 'error("boom")', "-e", "print('not reached')")
    assert.are.equal(1, status)
    assert.are.equal("", out)
    assert.are.equal("-e:1: boom\n", err)
    out, status, err = shell_run("-e", 'adder("x", 1)')
    assert.are.equal(1, status)
    assert.matches("^TASK_FAILED: [^\n]*adder%.lua:6: attempt to add[^\n]*\n$", err)
    out, status, err = shell_run("-e", "shell_nobody(1)")
    assert.are.equal(1, status)
    assert.matches("^NO_ROUTE: ", err)
    _, status, err = shell_run("-l", "debug", "-e", 'error("boom")')
    assert.are.equal(1, status)
    assert.matches("%-e:1: boom\nstack traceback:", err)
  end)

  it("runs a script FILE with its ARGs, then exits; an error names the file", function()
    support.host({ "scripts/adder.lua" })
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write("#!/usr/bin/env amqp-delegate shell\n",
      "local a, b = ...\n",
      "print(arg[0] == ... and 'no' or 'ok', adder(tonumber(a), tonumber(b)))\n",
      "if b == '0' then error('b is zero') end\n")
    f:close()
    local out, status, err = shell_run(file, "40", "2")
    assert.are.equal(0, status, err)
    assert.are.equal("ok\t42\n", out)
    out, status, err = shell_run(file, "1", "0")
    assert.are.equal(1, status)
    assert.are.equal("ok\t1\n", out)
    assert.are.equal(file .. ":4: b is zero\n", err)
    os.remove(file)
  end)

  it("compiles -e CODE and FILE before connecting: a syntax error costs no connection", function()
    local nowhere = { q(support.host_binary()), "shell", "--url", "amqp://guest:guest@127.0.0.1:1/" }
    local out, status, err = broker.run(table.concat(nowhere, " ") .. " -e 'x = ' </dev/null")
    assert.are.equal(1, status)
    assert.are.equal("", out)
    assert.are.equal("amqp-delegate: -e:1: unexpected symbol near <eof>\n", err)
    out, status, err = broker.run(table.concat(nowhere, " ") .. " /nonexistent/script.lua </dev/null")
    assert.are.equal(1, status)
    assert.are.equal("amqp-delegate: cannot open /nonexistent/script.lua: No such file or directory\n", err)
  end)
end)

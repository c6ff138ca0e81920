-- The interactive flow of issue 2: lua5.4 -i, require, connect, invoke, see the answer.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local function repl(lines)
  local script = os.tmpname()
  local file = assert(io.open(script, "w"))
  file:write(table.concat(lines, "\n"), "\n")
  file:close()
  local out, status, err = broker.run("lua5.4 -i < " .. broker.shell_quote(script))
  os.remove(script)
  return out, status, err
end

describe("the lua5.4 REPL", function()
  after_each(function() broker.kill_all() end)

  it("requires the module, starts a delegator and prints 25", function()
    support.host({ "scripts/adder.lua" })
    local out, status, err = repl({
      'delegate = require "amqp_delegate"',
      string.format('d = delegate.delegator { url = %q }', broker.url()),
      "d:start()",
      'print(d:invoke("adder", 10, 15))',
      'd:invoke("adder", 100, 1)',
      "d:stop()",
    })
    assert.are.equal(0, status, err)
    assert.matches('print%(d:invoke%("adder", 10, 15%)%)\n25\n', out)
    assert.matches('d:invoke%("adder", 100, 1%)\n101\n', out)
  end)

  it("prints a failed call as one line with its code and stays usable", function()
    support.host({ "scripts/adder.lua" })
    local out, status, err = repl({
      'delegate = require "amqp_delegate"',
      string.format('d = delegate.delegator { url = %q }:start()', broker.url()),
      'd:invoke("nobody_serves_this", 1)',
      'd:invoke("adder", "x", 1)',
      'print("still", d:invoke("adder", 1, 1))',
    })
    assert.are.equal(0, status)
    assert.matches("NO_ROUTE: no worker serves 'nobody_serves_this'", err)
    assert.matches("TASK_FAILED: [^\n]*adder%.lua:6: attempt to add a 'string' with a 'number'", err)
    assert.matches("still\t2", out)
  end)

  it("prints a table result readably", function()
    support.host({ "spec/workers/values.lua" })
    local out, status, err = repl({
      'delegate = require "amqp_delegate"',
      string.format('d = delegate.delegator { url = %q }:start()', broker.url()),
      'd:invoke("lua_echo", { name = "ada", langs = { "lua", "c" }, extra = delegate.null })',
    })
    assert.are.equal(0, status, err)
    assert.matches('\n{"extra": null, "langs": %["lua", "c"%], "name": "ada"}\n', out)
  end)

  it("hosts a worker from plain Lua and serves it while a call waits", function()
    local out, status, err = repl({
      'delegate = require "amqp_delegate"',
      string.format('url = %q', broker.url()),
      'w = delegate.worker { name = "repl_doubler", url = url, task = function(x) return 2 * x end }',
      "w:start()",
      "d = delegate.delegator { url = url }:start()",
      'print("doubled", d:invoke("repl_doubler", 21))',
      "w:stop()",
      "d:stop()",
    })
    assert.are.equal(0, status, err)
    assert.matches("doubled\t42", out)
  end)
end)

-- The systemd unit example, scripts/amqp-delegate@.service: systemd-analyze accepts it (when
-- systemd is installed; it is not started here), and it says what the README promises.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote
local UNIT = broker.root() .. "/scripts/amqp-delegate@.service"

describe("the systemd unit example", function()
  it("runs /etc/amqp-delegate/NAME.lua with the URL from an EnvironmentFile, restarts on failure, stops with SIGTERM", function()
    local text = assert(broker.read_file(UNIT))
    local function setting(key)
      local values = {}
      for value in text:gmatch("\n" .. key .. "=([^\n]*)") do values[#values + 1] = value end
      return table.concat(values, "|")
    end
    assert.matches("^/usr/local/bin/amqp%-delegate run .*/etc/amqp%-delegate/%%i%.lua$", setting("ExecStart"))
    assert.matches("/etc/amqp%-delegate/env", setting("EnvironmentFile"))
    assert.are.equal("on-failure", setting("Restart"))
    assert.are.equal("SIGTERM", setting("KillSignal"))
    assert.matches("^%d+s$", setting("TimeoutStopSec"))
    assert.are.equal("yes", setting("DynamicUser"))
    assert.are.equal("yes", setting("NoNewPrivileges"))
    assert.are.equal("strict", setting("ProtectSystem"))
    assert.falsy(setting("ExecStart"):find("--url", 1, true)) -- the URL stays out of ps
  end)

  it("passes systemd-analyze verify", function()
    local _, found = broker.run("command -v systemd-analyze")
    if found ~= 0 then
      pending("systemd-analyze is not installed")
      return
    end
    -- verify wants the ExecStart binary to exist: point it at the build's
    local dir = assert(broker.run("mktemp -d"):match("^(%S+)"))
    local text = assert(broker.read_file(UNIT))
    text = text:gsub("/usr/local/bin/amqp%-delegate", support.host_binary())
    local f = assert(io.open(dir .. "/amqp-delegate@.service", "w"))
    f:write(text)
    f:close()
    local out, status, err = broker.run("cd " .. q(dir) .. " && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify ./amqp-delegate@adder.service")
    broker.run("rm -rf " .. q(dir))
    assert.are.equal(0, status, out .. err)
    assert.are.equal("", out .. err)
  end)
end)

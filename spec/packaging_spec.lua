-- What a release ships besides the code: the LICENSE the rockspec names, a man page and a
-- bash completion that cover every command and option of --help, all installed by CMake,
-- and a `luarocks make` that needs no --deps-mode and warns of nothing.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote
local ROOT = broker.root()
local ROCKSPEC = "amqp-delegate-0.1.0-1.rockspec"

-- Every option word (-x, --name) in the --help of every command.
local function help_options()
  local options = {}
  for _, command in ipairs({ "run", "call", "shell", "status" }) do
    local out, status = broker.run(q(support.host_binary()) .. " " .. command .. " --help")
    assert.are.equal(0, status)
    for word in out:match("\noptions:\n(.-)\n\n"):gmatch("%f[%w-]%-%-?[%a][%w-]*") do options[word] = command end
  end
  return options
end

describe("packaging", function()
  it("has a LICENSE of the license the rockspec names", function()
    local rockspec = assert(broker.read_file(ROOT .. "/" .. ROCKSPEC))
    assert.are.equal("MIT", rockspec:match('\n%s*license%s*=%s*"([^"]+)"'))
    local license = assert(broker.read_file(ROOT .. "/LICENSE"))
    assert.matches("^MIT License\n\nCopyright %(c%) %d%d%d%d ", license)
    assert.matches("Permission is hereby granted, free of charge", license)
  end)

  it("has a man page that documents every command and every option of every --help", function()
    local page = assert(broker.read_file(ROOT .. "/doc/amqp-delegate.1"))
    local text = page:gsub("\\%-", "-"):gsub("\\f[BIRP]", "")
    for _, command in ipairs({ "run", "call", "shell", "status", "help", "version" }) do
      assert.matches("\n%.[BT]P?%s*[^\n]*" .. command, text, command)
    end
    local count = 0
    for option, command in pairs(help_options()) do
      count = count + 1
      assert.truthy(text:find(option:gsub("%p", "%%%0") .. "%f[^%w-]"), command .. " " .. option .. " is not in the man page")
    end
    assert.is_true(count >= 19, count .. " options")
    assert.matches("%.SH EXIT STATUS", text)
    for _, status in ipairs({ "0", "1", "2", "3", "4", "130", "143" }) do
      assert.matches("\n%.B " .. status .. "\n", text)
    end
    local _, groff = broker.run("command -v groff")
    if groff == 0 then -- it renders without a warning
      local out, status, err = broker.run("groff -man -ww -z -t " .. q(ROOT .. "/doc/amqp-delegate.1"))
      assert.are.equal(0, status, err)
      assert.are.equal("", out .. err)
    end
  end)

  -- What the completion offers for the words typed so far (the last one being completed).
  local function complete(...)
    local words = { "amqp-delegate", ... }
    local quoted = {}
    for i, word in ipairs(words) do quoted[i] = q(word) end
    local out, status, err = broker.run("cd " .. q(ROOT) .. " && bash -c " .. q(
      "source extra/bash-completion/amqp-delegate; COMP_WORDS=(" .. table.concat(quoted, " ") .. "); "
      .. "COMP_CWORD=" .. (#words - 1) .. "; _amqp_delegate; printf '%s\\n' \"${COMPREPLY[@]}\""))
    assert.are.equal(0, status, err)
    local found = {}
    for line in out:gmatch("[^\n]+") do found[#found + 1] = line end
    table.sort(found)
    return table.concat(found, " ")
  end

  it("has a bash completion for commands, every option of --help, option values and worker files", function()
    assert.are.equal("run", complete("ru"))
    assert.are.equal("call", complete("--url", "amqp://x", "ca"))
    for option, command in pairs(help_options()) do
      assert.truthy((" " .. complete(command, option) .. " "):find(" " .. option .. " ", 1, true),
        command .. " " .. option)
    end
    assert.are.equal("--timeout", complete("call", "--tim"))
    assert.are.equal("", complete("run", "--tim"))
    assert.are.equal("classic quorum", complete("run", "--queue-type", ""))
    assert.are.equal("debug", complete("shell", "-l", "d"))
    assert.are.equal("scripts/adder.lua", complete("run", "scripts/add"))
    assert.are.equal("scripts/adder.lua", complete("-u", "amqp://x", "shell", "scripts/add"))
    assert.are.equal("@scripts/adder.lua", complete("call", "adder", "@scripts/add"))
  end)

  it("cmake --install puts the executable, the module, the man page, the completion and the LICENSE under the prefix", function()
    local build = os.getenv("AMQP_DELEGATE_BUILD") or (ROOT .. "/build")
    local prefix = assert(broker.run("mktemp -d"):match("^(%S+)"))
    local out, status, err = broker.run("cmake --install " .. q(build) .. " --prefix " .. q(prefix))
    assert.are.equal(0, status, out .. err)
    for _, path in ipairs({ "bin/amqp-delegate", "lib/lua/5.4/amqp_delegate.so", "share/man/man1/amqp-delegate.1",
        "share/bash-completion/completions/amqp-delegate", "share/doc/amqp-delegate/LICENSE" }) do
      assert.is_not_nil(broker.read_file(prefix .. "/" .. path), path .. " is not installed")
    end
    broker.run("rm -rf " .. q(prefix))
  end)

  it("luarocks make installs without --deps-mode none and warns of nothing", function()
    local base = os.getenv("AMQP_DELEGATE_TMPDIR")
    if not base or base == "" then base = "/tmp" end
    local dir = assert(broker.run("mktemp -d " .. q(base .. "/packaging-spec.XXXXXX")):match("^(%S+)"))
    local out, status, err = broker.run(table.concat({
      "tar -C " .. q(ROOT) .. " --exclude=./.git --exclude='./build*' --exclude=./spec --exclude=./bench -cf - .",
      "| tar -C " .. q(dir) .. " -xf - &&",
      "cd " .. q(dir) .. " && MAKEFLAGS=-j2 luarocks --lua-version 5.4 make --tree " .. q(dir .. "/tree") .. " " .. ROCKSPEC,
    }, " "))
    broker.run("rm -rf " .. q(dir))
    assert.are.equal(0, status, out .. err)
    assert.falsy((out .. err):find("Missing dependencies", 1, true), out .. err)
    assert.falsy((out .. err):find("Warning", 1, true), out .. err)
    assert.matches("amqp%-delegate 0%.1%.0%-1 is now installed", out .. err)
  end)
end)

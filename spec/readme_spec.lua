-- README's examples work as shown: every example worker it names ships in scripts/, the
-- quick start's calls print what their comments say, and every `$ amqp-delegate ...`
-- transcript in a sh block prints what follows it. Run against the test broker, with the
-- example workers served as the quick start serves them.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote
local ROOT = broker.root()
local README = assert(broker.read_file(ROOT .. "/README.md"))

-- The sh code blocks of README, in order.
local function sh_blocks()
  local blocks = {}
  for block in README:gmatch("\n```sh\n(.-)\n```") do blocks[#blocks + 1] = block end
  return blocks
end

-- Runs one command line as README shows it (from the sources' folder, the broker in AMQP_URL
-- and the build's executable first in PATH); returns what it printed, both streams.
local function shell(line)
  local build = os.getenv("AMQP_DELEGATE_BUILD") or (ROOT .. "/build")
  local binary = support.host_binary()
  local dir = assert(broker.run("mktemp -d"):match("^(%S+)"))
  -- `amqp-delegate` is the build's (or the instrumented wrapper around it)
  assert(os.execute("ln -s " .. q(binary) .. " " .. q(dir .. "/amqp-delegate")))
  local out = broker.run("exec 2>&1 </dev/null; cd " .. q(ROOT) .. " && export AMQP_URL=" .. q(broker.url())
    .. " PATH=" .. q(dir .. ":" .. build) .. ":$PATH && " .. line)
  broker.run("rm -rf " .. q(dir))
  return out
end

describe("README", function()
  local quick = assert(README:match("\n## Quick start\n.-\n```sh\n(.-)\n```"), "no quick start")
  local served = assert(quick:match("\namqp%-delegate run ([^&\n]+)&"), "the quick start serves nothing")

  setup(function()
    -- from the sources' folder, as README's commands are, so messages name scripts/adder.lua
    local words = { "cd", q(ROOT), "&&", "exec", q(support.host_binary()), "run", "--url", q(broker.url()), served }
    local p = broker.spawn("sh -c " .. q(table.concat(words, " ")))
    assert(p:wait_for("\nready\n", 20 * support.slow, true), p:output())
  end)
  teardown(function() broker.kill_all() end)

  it("opens with a quick start that starts a broker, builds, serves and calls", function()
    assert.truthy(README:find("^# [^\n]+\n\n[^#]+\n## Quick start\n"), "the quick start is not the first section")
    for _, step in ipairs({ "scripts/rabbitmq.sh start", "cmake %-S", "export PATH=", "amqp%-delegate run ",
        "amqp%-delegate call " }) do
      assert.matches(step, quick)
    end
  end)

  it("ships every example worker it names", function()
    local named = {}
    for file in README:gmatch("scripts/([%w_]+)%.lua") do named[file] = true end
    for _, block in ipairs(sh_blocks()) do
      for words in block:gmatch("amqp%-delegate call ([^\n#]*)") do
        local name = words:gsub("%-%-?%a[%w-]*", " "):match("^%s*([%a_][%w_]*)")
        if name then named[name] = true end
      end
    end
    local count = 0
    for file in pairs(named) do
      count = count + 1
      assert.is_not_nil(broker.read_file(ROOT .. "/scripts/" .. file .. ".lua"), "scripts/" .. file .. ".lua is missing")
    end
    assert.is_true(count >= 3, "README names " .. count .. " worker files")
    -- and every worker it calls from the command line is served by one of them
    for _, block in ipairs(sh_blocks()) do
      for words in block:gmatch("amqp%-delegate call ([^\n#]*)") do
        local name = words:gsub("%-%-?%a[%w-]*", " "):match("^%s*([%a_][%w_]*)")
        if name and name ~= "NAME" then
          assert.truthy(served:find("scripts/" .. name .. ".lua", 1, true), name .. " is not served by the quick start")
        end
      end
    end
  end)

  it("the quick start's calls print what their comments say", function()
    local checked = 0
    for line, expected in quick:gmatch("\n(amqp%-delegate [cs][ah][le][^\n]-)%s+#%s*([^\n]+)") do
      assert.are.equal(expected .. "\n", shell(line), line)
      checked = checked + 1
    end
    assert.is_true(checked >= 3, checked .. " calls checked")
  end)

  it("every `$ amqp-delegate ...` transcript of a sh block prints what it shows", function()
    local checked = 0
    for _, block in ipairs(sh_blocks()) do
      -- "$ command" lines, each followed by what it prints up to the next one
      local command, shown
      local function check()
        if not command then return end
        command = command:gsub("%s+#[^'\"]*$", "") -- a trailing comment
        assert.are.equal(table.concat(shown, "\n") .. "\n", shell(command), command)
        checked = checked + 1
      end
      for line in (block .. "\n"):gmatch("([^\n]*)\n") do
        local typed = line:match("^%$ (amqp%-delegate .*)$") or line:match("^%$ (echo .*| amqp%-delegate .*)$")
        if typed then
          check()
          command, shown = typed, {}
        elseif line:match("^%$ ") then
          check()
          command = nil
        elseif command then
          shown[#shown + 1] = line
        end
      end
      check()
    end
    assert.is_true(checked >= 8, checked .. " transcripts checked")
  end)
end)

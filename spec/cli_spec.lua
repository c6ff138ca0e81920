-- The command line: `amqp-delegate call`, option parsing (anywhere, short forms, =, typos),
-- URL lists, --help/--version of every command, load errors, log lines, and passwords that
-- never show. (Exit statuses: spec/exit_status_spec.lua.)
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote

-- Runs the host executable with the given words (quoted here); returns stdout, status, stderr.
local function host(...)
  local words = { q(support.host_binary()) }
  for _, word in ipairs({ ... }) do words[#words + 1] = q(word) end
  return broker.run(table.concat(words, " "))
end

-- The broker URL with another password (the broker refuses it).
local function url_with_password(password)
  return (broker.url():gsub("^(amqp://[^:/@]+):[^@]*@", "%1:" .. password .. "@"))
end

describe("amqp-delegate call", function()
  setup(function()
    support.host({ "scripts/adder.lua", "spec/workers/values.lua", "spec/workers/failing.lua",
      "spec/workers/slow.lua", "scripts/greet.lua" }, { flags = { "--concurrency", "4" } })
  end)
  teardown(function() broker.kill_all() end)

  it("prints the JSON result on stdout and exits 0: call adder 10 15 -> 25", function()
    local out, status, err = host("call", "--url", broker.url(), "adder", "10", "15")
    assert.are.equal(0, status, err)
    assert.are.equal("25\n", out)
    assert.are.equal("", err)
  end)

  it("takes each ARG as JSON and prints the result as JSON", function()
    local out, status, err = host("call", "--url", broker.url(), "lua_echo", '{"a":[1,2]}')
    assert.are.equal(0, status, err)
    assert.are.equal('{"a":[1,2]}\n', out)
    out, status, err = host("call", "--url", broker.url(), "lua_describe", '"x"', "2.5", "null", "[]", "{}", "-3")
    assert.are.equal(0, status, err)
    assert.are.equal('"string 78,float 2.5,nil,amqp_delegate.array 0,amqp_delegate.object 0,integer -3"\n', out)
  end)

  it("takes the URL from $AMQP_URL when --url is not given", function()
    local out, status, err = broker.run("AMQP_URL=" .. q(broker.url()) .. " "
      .. q(support.host_binary()) .. " call adder 1 2")
    assert.are.equal(0, status, err)
    assert.are.equal("3\n", out)
  end)

  it("prints the result indented with --pretty", function()
    local out, status, err = host("call", "--url", broker.url(), "--pretty", "lua_echo",
      '{"users":[{"name":"ada","roles":["admin","dev"],"age":36},{"name":"grace","roles":[],"age":85,"meta":{"k":"v"}}],"total":2}')
    assert.are.equal(0, status, err)
    assert.are.equal([[
{
  "total": 2,
  "users": [
    {"age": 36, "name": "ada", "roles": ["admin", "dev"]},
    {"age": 85, "meta": {"k": "v"}, "name": "grace", "roles": []}
  ]
}
]], out)
  end)

  it("exits 1 with CODE: message on stderr when the task fails", function()
    local out, status, err = host("call", "--url", broker.url(), "adder", '"x"', "1")
    assert.are.equal(1, status)
    assert.are.equal("", out)
    assert.matches("^TASK_FAILED: [^\n]*adder%.lua:6: attempt to add a 'string' with a 'number'\n$", err)
    out, status, err = host("call", "--url", broker.url(), "lua_fail_coded")
    assert.are.equal(1, status)
    assert.are.equal("NOT_FOUND: no such user\n", err)
  end)

  it("exits 1 with NO_ROUTE when nobody serves the name", function()
    local out, status, err = host("call", "--url", broker.url(), "nobody_serves_this", "1")
    assert.are.equal(1, status)
    assert.are.equal("", out)
    assert.matches("^NO_ROUTE: no worker serves 'nobody_serves_this'", err)
  end)

  it("exits 2 for an ARG that is not JSON, before connecting", function()
    -- port 1 refuses connections: a usage error must come first
    local out, status, err = host("call", "--url", "amqp://guest:guest@127.0.0.1:1/", "adder", "hello", "1")
    assert.are.equal(2, status)
    assert.are.equal("", out)
    assert.matches("BAD_ARGUMENT: ARG 1 is not JSON", err)
  end)

  it("exits 2 for usage errors: no NAME, an unknown option, a bad --timeout, a bad URL", function()
    local _, status, err = host("call")
    assert.are.equal(2, status)
    assert.matches("call needs a worker NAME", err)
    _, status, err = host("call", "--frobnicate", "adder")
    assert.are.equal(2, status)
    assert.matches("unknown option %-%-frobnicate %(see amqp%-delegate call %-%-help%)", err)
    _, status, err = host("call", "--timeout", "soon", "adder")
    assert.are.equal(2, status)
    assert.matches("%-%-timeout takes a number of seconds", err)
    _, status, err = host("call", "--url", "http://guest:s3cret@example.invalid/", "adder")
    assert.are.equal(2, status)
    assert.matches("BAD_URL", err)
    assert.falsy(err:find("s3cret", 1, true))
  end)

  it("exits 3 when it cannot connect, naming host and port but not the password", function()
    local out, status, err = host("call", "--url", "amqp://guest:s3cret@127.0.0.1:1/", "adder", "1", "2")
    assert.are.equal(3, status)
    assert.are.equal("", out)
    assert.matches("^CONNECTION_FAILED: cannot connect to 127%.0%.0%.1:1", err)
    assert.falsy(err:find("s3cret", 1, true))
  end)

  it("exits 3 when the broker refuses the password, and does not print it", function()
    local out, status, err = host("call", "--url", url_with_password("n0t-the-pa55"), "adder", "1", "2")
    assert.are.equal(3, status)
    assert.are.equal("", out)
    assert.matches("^AUTH_FAILED:", err)
    assert.falsy(err:find("n0t-the-pa55", 1, true))
  end)

  it("exits 4 with TIMEOUT when no reply comes within --timeout", function()
    local started = broker.now()
    local out, status, err = host("call", "--url", broker.url(), "--timeout", "0.5", "cli_slow", "5")
    assert.are.equal(4, status)
    assert.are.equal("", out)
    assert.matches("^TIMEOUT: ", err)
    assert.is_true(broker.now() - started < 4, "took " .. (broker.now() - started) .. " s")
    -- and a timeout long enough lets the reply through
    out, status, err = host("call", "--url", broker.url(), "--timeout=5", "cli_slow", "0.2")
    assert.are.equal(0, status, err)
    assert.are.equal('"late"\n', out)
  end)

  it("--raw prints a string result as bare text; other results stay JSON", function()
    local out, status, err = host("call", "--url", broker.url(), "--raw", "greet", '"Ada"')
    assert.are.equal(0, status, err)
    assert.are.equal("Hello, Ada!\n", out)
    out, status, err = host("call", "-r", "--url", broker.url(), "lua_echo", '"a \\"b\\"\\nc"')
    assert.are.equal(0, status, err)
    assert.are.equal('a "b"\nc\n', out)
    out, status, err = host("call", "--raw", "--url", broker.url(), "lua_echo", '{"a":[1]}')
    assert.are.equal(0, status, err)
    assert.are.equal('{"a":[1]}\n', out)
    out = host("call", "--url", broker.url(), "greet", '"Ada"')
    assert.are.equal('"Hello, Ada!"\n', out)
  end)

  it("reads an ARG from @FILE, and from standard input for - or @-", function()
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write('["from file", {"n": [1, 2]}]\n')
    f:close()
    local out, status, err = host("call", "--url", broker.url(), "lua_echo", "@" .. file)
    assert.are.equal(0, status, err)
    assert.are.equal('["from file",{"n":[1,2]}]\n', out)
    out, status, err = broker.run("printf '%s' '\"Bob\"' | " .. q(support.host_binary())
      .. " call --raw --url " .. q(broker.url()) .. " greet -")
    assert.are.equal(0, status, err)
    assert.are.equal("Hello, Bob!\n", out)
    out, status, err = broker.run("echo 40 | " .. q(support.host_binary()) .. " call --url "
      .. q(broker.url()) .. " adder @- 2")
    assert.are.equal(0, status, err)
    assert.are.equal("42\n", out)
    os.remove(file)
  end)

  it("exits 2, before connecting, when an @FILE or standard input cannot be read or is not JSON", function()
    local nowhere = "amqp://guest:guest@127.0.0.1:1/"
    local _, status, err = host("call", "--url", nowhere, "lua_echo", "@/nonexistent/args.json")
    assert.are.equal(2, status)
    assert.are.equal("BAD_ARGUMENT: ARG 1: cannot read /nonexistent/args.json: No such file or directory\n", err)
    _, status, err = broker.run("echo 'not json' | " .. q(support.host_binary()) .. " call --url "
      .. q(nowhere) .. " lua_echo 1 -")
    assert.are.equal(2, status)
    assert.matches("^BAD_ARGUMENT: ARG 2 %(standard input%) is not JSON: ", err)
    _, status, err = broker.run("echo 1 | " .. q(support.host_binary()) .. " call --url "
      .. q(nowhere) .. " adder - @-")
    assert.are.equal(2, status)
    assert.matches("standard input can be read only once", err)
  end)

  -- (valgrind keeps its own copy of the command line, password included, in /proc/PID/cmdline)
  local it_not_under_valgrind = support.under_valgrind and pending or it
  it_not_under_valgrind("hides the password of --url from ps while it runs", function()
    local p = broker.spawn(q(support.host_binary()) .. " call --url " .. q(broker.url())
      .. " cli_slow 1")
    local password = broker.url():match("^amqp://[^:/@]+:([^@]*)@")
    assert.is_not_nil(password)
    local cmdline
    assert.truthy(broker.eventually(function()
      cmdline = (broker.read_file("/proc/" .. p:pid() .. "/cmdline") or ""):gsub("%z", " ")
      return cmdline:find("*@", 1, true)
    end, 5), cmdline)
    assert.falsy(cmdline:find(":" .. password .. "@", 1, true), cmdline)
    assert.are.equal(0, p:wait_exit(10), p:output())
    assert.matches('"late"', p:output())
    p:kill()
  end)
end)

describe("amqp-delegate --help and --version", function()
  it("answers --help and --version at the top and for every command", function()
    local out, status = host("--help")
    assert.are.equal(0, status)
    assert.matches("usage: amqp%-delegate COMMAND", out)
    for _, command in ipairs({ "run", "call", "shell", "status" }) do
      assert.matches("\n  " .. command .. " ", out)
    end
    assert.matches("exit status %(the same for run, call, shell and status%):", out)
    for _, command in ipairs({ "run", "call", "shell", "status" }) do
      out, status = host(command, "--help")
      assert.are.equal(0, status, command)
      assert.matches("^usage: amqp%-delegate " .. command .. " ", out)
      assert.matches("%-%-url URL", out)
      assert.matches("%-%-log%-level LEVEL", out)
      out, status = host("help", command)
      assert.are.equal(0, status, command)
      assert.matches("^usage: amqp%-delegate " .. command .. " ", out)
      out, status = host(command, "--version")
      assert.are.equal(0, status, command)
      assert.matches("^amqp%-delegate %d+%.%d+%.%d+ %(Lua 5%.4", out)
    end
    out, status = host("--version")
    assert.are.equal(0, status)
    assert.matches("^amqp%-delegate %d+%.%d+%.%d+", out)
    out, status = host("call", "--help")
    assert.matches("%-%-timeout SECONDS", out)
    assert.matches("4 +TIMEOUT", out)
  end)

  it("exits 2 with the usage on an unknown command or none", function()
    local out, status, err = host("frobnicate")
    assert.are.equal(2, status)
    assert.are.equal("", out)
    assert.matches("unknown command 'frobnicate'", err)
    assert.matches("usage: amqp%-delegate COMMAND", err)
    _, status, err = host()
    assert.are.equal(2, status)
    assert.matches("usage: amqp%-delegate COMMAND", err)
  end)

  it("never echoes a password from the command line in its errors", function()
    local secret = "amqp://guest:s3cret@127.0.0.1:1/"
    local cases = {
      { "run", "--concurrency", secret, "scripts/adder.lua" },
      { "run", "--url", secret, "--log-level", secret, "scripts/adder.lua" },
      { "run", secret },
      { "call", "--timeout", secret, "adder" },
      { "call", "--url", secret, "--bogus", secret },
      { "shell", "--url", secret, secret },
      { "--url", secret, "call", "adder" },
    }
    for _, words in ipairs(cases) do
      local out, status, err = host(table.unpack(words))
      assert.is_true(status ~= 0, table.concat(words, " "))
      assert.falsy((out .. err):find("s3cret", 1, true), table.concat(words, " ") .. ":\n" .. out .. err)
    end
  end)
end)

describe("amqp-delegate run", function()
  after_each(function() broker.kill_all() end)

  it("logs one line per event with time and level, and the URL without its password", function()
    local p = support.host({ "scripts/adder.lua" }, { flags = { "--log-level", "info" } })
    local out, status, err = host("call", "--url", broker.url(), "adder", "2", "2")
    assert.are.equal(0, status, err)
    assert.are.equal("4\n", out)
    p:signal("TERM")
    assert.are.equal(0, p:wait_exit(10))
    local output = p:output()
    local password = broker.url():match("^amqp://[^:/@]+:([^@]*)@")
    assert.falsy(output:find(":" .. password .. "@", 1, true), output)
    local lines = 0
    for line in output:gmatch("[^\n]+") do
      if line ~= "ready" then
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ [A-Z]+ +%S", line)
        lines = lines + 1
      end
    end
    assert.is_true(lines >= 2, output)
    assert.matches("Z INFO  worker 'adder' ready on 127%.0%.0%.1:" .. broker.port(), output)
  end)

  it("exits 2 for usage errors", function()
    local _, status, err = host("run")
    assert.are.equal(2, status)
    assert.matches("run needs at least one worker FILE", err)
    _, status, err = host("run", "--concurrency", "0", "scripts/adder.lua")
    assert.are.equal(2, status)
    assert.matches("%-%-concurrency takes 1 to 65535", err)
    _, status = host("run", "--timeout", "1", "scripts/adder.lua")
    assert.are.equal(2, status)
  end)
end)

describe("amqp-delegate option parsing", function()
  setup(function() support.host({ "scripts/adder.lua", "spec/workers/values.lua" }) end)
  teardown(function() broker.kill_all() end)

  it("takes options after the operands, and before the command", function()
    local out, status, err = host("call", "adder", "10", "15", "--url", broker.url())
    assert.are.equal(0, status, err)
    assert.are.equal("25\n", out)
    out, status, err = host("--url", broker.url(), "call", "adder", "1", "2")
    assert.are.equal(0, status, err)
    assert.are.equal("3\n", out)
    -- `run greet.lua --url URL` used to say `cannot open --url`
    local name = support.unique("cli_after")
    local p = broker.spawn(q(support.host_binary()) .. " run " .. q(broker.root() .. "/spec/workers/cli_env.lua")
      .. " --url " .. q(broker.url()), { env = { CLI_ENV_NAME = name } })
    assert.is_true((p:wait_for("\nready\n", 20 * support.slow, true)), p:output())
    out, status, err = host("call", name, "--url", broker.url())
    assert.are.equal(0, status, err)
    assert.are.equal('"env"\n', out)
    p:kill()
  end)

  it("takes short forms, --name=value, grouped flags and -VALUE attached", function()
    local out, status, err = host("call", "-u", broker.url(), "-t", "5", "-l", "warn", "adder", "2", "3")
    assert.are.equal(0, status, err)
    assert.are.equal("5\n", out)
    out, status, err = host("call", "--url=" .. broker.url(), "--timeout=5", "--log-level=warn", "adder", "2", "4")
    assert.are.equal(0, status, err)
    assert.are.equal("6\n", out)
    out, status, err = host("call", "-u" .. broker.url(), "-t5", "-pr", "lua_echo", '"bare"')
    assert.are.equal(0, status, err)
    assert.are.equal("bare\n", out)
    for _, command in ipairs({ "run", "call", "shell", "status" }) do
      out, status = host(command, "-h")
      assert.are.equal(0, status, command)
      assert.matches("^usage: amqp%-delegate " .. command .. " ", out)
      out, status = host(command, "-V")
      assert.are.equal(0, status, command)
      assert.matches("^amqp%-delegate %d+%.%d+%.%d+ %(Lua 5%.4", out)
    end
    -- run: -c is --concurrency (the prefetch shows in the log), -l the log level
    local p = broker.spawn(q(support.host_binary()) .. " run -c3 -l info -u " .. q(broker.url()) .. " "
      .. q(broker.root() .. "/spec/workers/cli_env.lua"), { env = { CLI_ENV_NAME = support.unique("cli_short") } })
    assert.is_true((p:wait_for("\nready\n", 20 * support.slow, true)), p:output())
    assert.matches("%(prefetch 3%)", p:output())
    p:kill()
  end)

  it("reads a word starting with a digit after '-' as an ARG, and everything after -- as operands", function()
    local out, status, err = host("call", "--url", broker.url(), "adder", "-3", "-4.5")
    assert.are.equal(0, status, err)
    assert.are.equal("-7.5\n", out)
    out, status, err = host("call", "--url", broker.url(), "--", "-not-an-option")
    assert.are.equal(1, status)
    assert.matches("^NO_ROUTE: no worker serves '%-not%-an%-option'", err)
  end)

  it("suggests the command or option meant", function()
    local _, status, err = host("rn", "scripts/adder.lua")
    assert.are.equal(2, status)
    assert.matches("^amqp%-delegate: unknown command 'rn': did you mean 'run'%?\n", err)
    _, status, err = host("shel")
    assert.are.equal(2, status)
    assert.matches("did you mean 'shell'%?", err)
    _, status, err = host("call", "--tiemout", "5", "adder")
    assert.are.equal(2, status)
    assert.are.equal("amqp-delegate: unknown option --tiemout: did you mean --timeout? (see amqp-delegate call --help)\n", err)
    _, status, err = host("run", "--concurency", "2", "scripts/adder.lua")
    assert.are.equal(2, status)
    assert.matches("did you mean %-%-concurrency%?", err)
    _, status, err = host("run", "--queue", "quorum", "scripts/adder.lua")
    assert.are.equal(2, status)
    assert.matches("did you mean %-%-queue%-type%?", err)
    _, status, err = host("run", "--timeout", "1", "scripts/adder.lua")
    assert.are.equal(2, status)
    assert.matches("%-%-timeout is not an option of run", err)
  end)

  it("says what is wrong with a value: missing, an option instead, or one it does not take", function()
    local _, status, err = host("call", "adder", "--url")
    assert.are.equal(2, status)
    assert.are.equal("amqp-delegate: --url needs a value\n", err)
    _, status, err = host("call", "--url", "--timeout", "5", "adder")
    assert.are.equal(2, status)
    assert.matches("%-%-url needs a value, not the option '%-%-timeout'", err)
    _, status, err = host("call", "--pretty=yes", "adder")
    assert.are.equal(2, status)
    assert.matches("%-%-pretty takes no value", err)
    _, status, err = host("call", "-x", "adder")
    assert.are.equal(2, status)
    assert.matches("unknown option %-x", err)
    -- after the operands, the message still names the command
    _, status, err = host("call", "adder", "1", "--frobnicate")
    assert.are.equal(2, status)
    assert.are.equal("amqp-delegate: unknown option --frobnicate (see amqp-delegate call --help)\n", err)
  end)
end)

describe("amqp-delegate --url lists and --queue-type", function()
  after_each(function() broker.kill_all() end)

  -- (valgrind keeps its own copy of the command line, passwords included, in /proc/PID/cmdline)
  local it_not_under_valgrind = support.under_valgrind and pending or it
  it_not_under_valgrind("joins repeated and comma-separated --url into one list for the core, every password hidden from ps", function()
    local first, second, third = "amqp://a:pw1one@127.0.0.1:1/", "amqp://b:pw2two@127.0.0.1:2", "amqp://c:pw3three@127.0.0.1:3/v"
    local p = broker.spawn(q(support.host_binary()) .. " run --url " .. q(first) .. " -u " .. q(second .. "," .. third)
      .. " " .. q(broker.root() .. "/spec/workers/cli_env.lua"), { env = { CLI_ENV_WAIT = "20" } })
    assert.is_true((p:wait_for("AMQP_DELEGATE_QUEUE_TYPE=", 10 * support.slow, true)), p:output())
    assert.matches("AMQP_URL=" .. (first .. "," .. second .. "," .. third):gsub("%p", "%%%0") .. "\n", p:output())
    local cmdline = (broker.read_file("/proc/" .. p:pid() .. "/cmdline") or ""):gsub("%z", " ")
    assert.matches("amqp://a:%*+@127%.0%.0%.1:1/ %-u amqp://b:%*+@127%.0%.0%.1:2,amqp://c:%*+@127%.0%.0%.1:3/v", cmdline)
    for _, password in ipairs({ "pw1one", "pw2two", "pw3three" }) do
      assert.falsy(cmdline:find(password, 1, true), cmdline)
    end
    p:kill()
  end)

  it("never prints a password of a URL list in its errors", function()
    local out, status, err = host("call", "--url", "amqp://guest:s3cret@127.0.0.1:1/,amqp://guest:s3cr3t2@127.0.0.1:2/",
      "-u", "amqp://guest:s3cr3t3@127.0.0.1:3/", "adder", "1")
    assert.is_true(status == 2 or status == 3, "status " .. status .. ": " .. err)
    for _, password in ipairs({ "s3cret", "s3cr3t2", "s3cr3t3" }) do
      assert.falsy((out .. err):find(password, 1, true), out .. err)
    end
  end)

  it("passes --queue-type to the core and refuses a type it does not know", function()
    local p = broker.spawn(q(support.host_binary()) .. " run --queue-type quorum --url " .. q(broker.url())
      .. " " .. q(broker.root() .. "/spec/workers/cli_env.lua"), { env = { CLI_ENV_NAME = support.unique("cli_qt") } })
    assert.is_true((p:wait_for("AMQP_DELEGATE_QUEUE_TYPE=", 10 * support.slow, true)), p:output())
    assert.matches("AMQP_DELEGATE_QUEUE_TYPE=quorum\n", p:output())
    p:kill()
    local _, status, err = host("run", "--queue-type", "durable", "scripts/adder.lua")
    assert.are.equal(2, status)
    assert.are.equal("amqp-delegate: --queue-type takes classic or quorum, not 'durable'\n", err)
    local out = host("run", "--help")
    assert.matches("%-%-queue%-type TYPE +queue type for workers' queues the host declares: classic or\n +quorum %(default: the Node protocol's transient classic queue%)", out)
  end)
end)

describe("amqp-delegate run: files that do not load", function()
  local root = broker.root()

  it("says so in one line naming the file, without a Lua traceback", function()
    for file, expected in pairs({
      ["spec/workers/syntax_error.lua"] = "syntax_error%.lua:4: unexpected symbol near 'end'",
      ["spec/workers/load_error.lua"] = "load_error%.lua:3: attempt to index a nil value %(local 'missing'%)",
      ["spec/workers/nonexistent.lua"] = "cannot open [^\n]*nonexistent%.lua: No such file or directory",
    }) do
      local out, status, err = host("run", "--url", "amqp://guest:guest@127.0.0.1:1/", root .. "/" .. file)
      assert.are.equal(1, status, file)
      assert.are.equal("", out)
      assert.matches("^amqp%-delegate: [^\n]*" .. expected .. "\n$", err)
    end
  end)

  it("names the file whose worker cannot be made, when several are given", function()
    local _, status, err = host("run", "--url", "amqp://guest:guest@127.0.0.1:1/", root .. "/scripts/adder.lua",
      root .. "/spec/workers/cli_no_name.lua")
    assert.are.equal(1, status)
    assert.matches("^amqp%-delegate: [^\n]*/spec/workers/cli_no_name%.lua: MISSING_NAME: [^\n]*\n$", err)
  end)

  it("refuses a file that returns no worker and starts none", function()
    local _, status, err = host("run", "--url", "amqp://guest:guest@127.0.0.1:1/", root .. "/scripts/adder.lua",
      root .. "/spec/workers/cli_returns_nothing.lua")
    assert.are.equal(1, status)
    assert.matches("^amqp%-delegate: [^\n]*/spec/workers/cli_returns_nothing%.lua returns no worker and starts none", err)
    assert.are.equal(1, select(2, err:gsub("\n", "")))
  end)

  it("adds the traceback at --log-level debug", function()
    local _, status, err = host("run", "--log-level", "debug", root .. "/spec/workers/load_error.lua")
    assert.are.equal(1, status)
    assert.matches("load_error%.lua:3: attempt to index a nil value[^\n]*\nstack traceback:\n[^\n]*load_error%.lua:3: in main chunk", err)
  end)
end)

describe("amqp-delegate and the default URL", function()
  it("says how to point at a broker when nothing answers at amqp://localhost", function()
    local _, open = broker.run("bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null")
    if open == 0 then
      pending("a broker listens on localhost:5672 here")
      return
    end
    local words = "env -u AMQP_URL " .. q(support.host_binary())
    for _, command in ipairs({ "call adder 1 2", "run " .. q(broker.root() .. "/scripts/adder.lua"), "shell" }) do
      local _, status, err = broker.run(words .. " " .. command .. " </dev/null")
      assert.are.equal(3, status, command .. ": " .. err)
      assert.matches("CONNECTION_FAILED: cannot connect to localhost:5672", err)
      assert.matches("\namqp%-delegate: nothing answers at amqp://localhost %(the default URL%): start RabbitMQ there, or point at a broker with %-%-url URL or AMQP_URL=", err)
    end
    -- a URL someone chose gets no hint
    local _, status, err = host("call", "--url", "amqp://localhost:1", "adder")
    assert.are.equal(3, status)
    assert.falsy(err:find("nothing answers", 1, true), err)
  end)
end)

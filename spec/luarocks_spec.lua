-- Installing with LuaRocks: `luarocks make` into a fresh tree, then a lua5.4 that sees only
-- that tree (and the system's paths) requires the module and calls a worker; the tree's
-- executable works; the rockspec lints; `luarocks pack` makes rocks. The sources are copied to
-- a temp dir first, so the build (build.luarocks/) never touches the repository's own.
local broker = require "spec.helpers.broker"
local support = require "spec.support"

local q = broker.shell_quote
local ROCKSPEC = "amqp-delegate-0.1.0-1.rockspec"
local LUAROCKS = "luarocks --lua-version 5.4"

local function sh(command)
  local out, status, err = broker.run(command)
  return out, status, err
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- A lua5.4 that sees the tree and the system's default paths, and nothing of the build:
-- run from the temp dir (the defaults include ./?.so), with no LUA_* from the environment.
local function tree_lua(dir, tree, code)
  local path = tree .. "/share/lua/5.4/?.lua;" .. tree .. "/share/lua/5.4/?/init.lua;;"
  local cpath = tree .. "/lib/lua/5.4/?.so;;"
  return sh(table.concat({
    "cd " .. q(dir) .. " &&",
    "env -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT -u LUA_INIT_5_4",
    "LUA_PATH=" .. q(path), "LUA_CPATH=" .. q(cpath), "AMQP_URL=" .. q(broker.url()),
    "lua5.4 -e " .. q(code),
  }, " "))
end

describe("LuaRocks", function()
  local dir, src, tree, made, make_log

  setup(function()
    local base = os.getenv("AMQP_DELEGATE_TMPDIR")
    if not base or base == "" then base = "/tmp" end
    dir = assert(sh("mktemp -d " .. q(base .. "/luarocks-spec.XXXXXX")):match("^(%S+)"))
    src = dir .. "/amqp-delegate-0.1.0"
    tree = dir .. "/tree"
    -- the sources as a release would ship them: no builds, no specs, no VCS
    local out, status, err = sh(table.concat({
      "mkdir -p " .. q(src) .. " &&",
      "tar -C " .. q(broker.root()),
      "--exclude=./.git --exclude='./build*' --exclude=./spec --exclude=./bench",
      "--exclude=./lua_modules --exclude=./.rabbitmq --exclude='*.rock'",
      "-cf - . | tar -C " .. q(src) .. " -xf -",
    }, " "))
    assert(status == 0, out .. err)
    out, status, err = sh("cd " .. q(src) .. " && MAKEFLAGS=-j4 " .. LUAROCKS .. " make --tree " .. q(tree)
      .. " --deps-mode none " .. ROCKSPEC)
    made = status == 0
    make_log = out .. err
  end)

  after_each(function() broker.kill_all() end)

  teardown(function()
    broker.kill_all()
    if dir then sh("rm -rf " .. q(dir)) end
  end)

  it("luarocks make installs the module and the executable into a fresh tree", function()
    assert(made, make_log)
    assert.is_true(exists(tree .. "/lib/lua/5.4/amqp_delegate.so"))
    assert.is_true(exists(tree .. "/bin/amqp-delegate"))
  end)

  it("a lua5.4 that sees only that tree requires the module and calls a worker: 25", function()
    assert(made, make_log)
    support.host({ "scripts/adder.lua" })
    local out, status, err = tree_lua(dir, tree, [[
      local found = package.searchpath("amqp_delegate", package.cpath)
      local delegate = require "amqp_delegate"
      local d = delegate.delegator():start()
      print(found, delegate.version, d:invoke("adder", 10, 15))
      d:stop()
    ]])
    assert.are.equal(0, status, err)
    assert.are.equal(tree .. "/lib/lua/5.4/amqp_delegate.so\t0.1.0\t25\n", out)
  end)

  it("installs a working amqp-delegate executable in the tree's bin/", function()
    assert(made, make_log)
    local out, status, err = sh(q(tree .. "/bin/amqp-delegate") .. " --version")
    assert.are.equal(0, status, err)
    assert.matches("^amqp%-delegate 0%.1%.0 %(Lua 5%.4", out)
    support.host({ "scripts/adder.lua" })
    out, status, err = sh(q(tree .. "/bin/amqp-delegate") .. " call --url " .. q(broker.url()) .. " adder 10 15")
    assert.are.equal(0, status, err)
    assert.are.equal("25\n", out)
  end)

  it("luarocks lint passes", function()
    local out, status, err = sh("cd " .. q(broker.root()) .. " && " .. LUAROCKS .. " lint " .. ROCKSPEC)
    assert.are.equal(0, status, out .. err)
  end)

  it("luarocks pack makes a binary rock from the tree", function()
    assert(made, make_log)
    local out, status, err = sh("cd " .. q(dir) .. " && " .. LUAROCKS .. " pack amqp-delegate --tree " .. q(tree))
    assert.are.equal(0, status, out .. err)
    local rock = out:match("Packed: (%S+%.rock)")
    assert.is_not_nil(rock, out)
    assert.is_true(exists(rock))
    local listing = sh("unzip -l " .. q(rock))
    assert.matches("lib/amqp_delegate%.so", listing)
    assert.matches("bin/amqp%-delegate", listing)
    assert.matches(ROCKSPEC:gsub("%p", "%%%0"), listing)
  end)

  it("luarocks pack makes a source rock (from a local archive) that builds", function()
    -- the rockspec's own source is a git URL; offline, the same rockspec points at a tarball
    local archive = dir .. "/amqp-delegate-0.1.0.tar.gz"
    local _, status, err = sh("tar -C " .. q(dir) .. " --exclude=build.luarocks -czf " .. q(archive)
    .. " amqp-delegate-0.1.0")
    assert.are.equal(0, status, err)
    local text = assert(broker.read_file(broker.root() .. "/" .. ROCKSPEC))
    local replaced
    text, replaced = text:gsub("\nsource%s*=%s*%b{}", '\nsource = { url = "file://' .. archive .. '" }')
    assert.are.equal(1, replaced)
    local packing = dir .. "/pack"
    sh("mkdir -p " .. q(packing))
    local f = assert(io.open(packing .. "/" .. ROCKSPEC, "w"))
    f:write(text)
    f:close()
    local out
    out, status, err = sh("cd " .. q(packing) .. " && " .. LUAROCKS .. " pack " .. ROCKSPEC)
    assert.are.equal(0, status, out .. err)
    local rock = packing .. "/amqp-delegate-0.1.0-1.src.rock"
    assert.is_true(exists(rock), out)
    out, status, err = sh("cd " .. q(packing) .. " && MAKEFLAGS=-j4 " .. LUAROCKS .. " build " .. q(rock)
      .. " --tree " .. q(dir .. "/tree2") .. " --deps-mode none")
    assert.are.equal(0, status, out .. err)
    assert.is_true(exists(dir .. "/tree2/lib/lua/5.4/amqp_delegate.so"))
    assert.is_true(exists(dir .. "/tree2/bin/amqp-delegate"))
  end)
end)

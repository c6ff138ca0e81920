rockspec_format = "3.0"
package = "amqp-delegate"
version = "0.1.0-1"
source = {
  url = "git+https://example.invalid/amqp-delegate.git",
  tag = "v0.1.0",
}
description = {
  summary = "Remote workers over AMQP 0-9-1 (RabbitMQ) for Lua, wire-compatible with Node's amqp-delegate",
  detailed = [[
Workers are Lua functions served by a C host (or any Lua process); delegators call them by
name and get the result back. One libuv event loop runs tasks as coroutines. Speaks the wire
protocol of the Node.js amqp-delegate library, so Lua and Node peers share one broker.
]],
  license = "MIT",
  labels = { "amqp", "rabbitmq", "rpc" },
}
-- The module has its own JSON codec (host/runtime/json.c) and never requires lua-cjson, so
-- LuaRocks (which cannot see Debian's lua-cjson) has nothing to call missing.
dependencies = {
  "lua >= 5.4",
}
external_dependencies = {
  RABBITMQ = { header = "amqp.h", library = "rabbitmq" },
  LIBUV = { header = "uv.h", library = "uv" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "RelWithDebInfo",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    -- LuaRocks deploys a rock's lib/ to the tree's C module path and bin/ to its bin/.
    LUA_MODULE_DIR = "lib",
  },
}

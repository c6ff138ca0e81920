-- Workers for the value-mapping specs, served by the host executable.
local delegate = require "amqp_delegate"

-- One word per argument, so a spec can see exactly what Lua received.
local function describe(value)
  if value == nil then return "nil" end
  if value == delegate.null then return "null" end
  local kind = type(value)
  if kind == "number" then return math.type(value) .. " " .. string.format("%.17g", value) end
  if kind == "string" then return "string " .. value:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end) end
  if kind == "table" then
    local marker = getmetatable(value)
    local name = marker and marker.__name or "plain"
    local count = 0
    for _ in pairs(value) do count = count + 1 end
    return name .. " " .. count
  end
  return kind
end

return {
  { name = "lua_echo", task = function(value) return value end },
  {
    name = "lua_describe",
    task = function(...)
      local words = {}
      for i = 1, select("#", ...) do words[i] = describe((select(i, ...))) end
      return table.concat(words, ",")
    end,
  },
}

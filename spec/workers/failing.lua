-- Tasks that fail in the ways a caller must hear about.
return {
  { name = "lua_fail", task = function(message) error(message or "it broke") end },
  {
    name = "lua_fail_coded",
    task = function() error({ code = "NOT_FOUND", message = "no such user" }) end,
  },
  { name = "lua_bad_result", task = function() return function() end end },
}

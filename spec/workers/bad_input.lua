-- Workers for spec/bad_input_spec.lua: the same task with the default limits (16 MiB, depth
-- 128) and with small ones, set in the worker table. The task answers how many arguments it got.
local function count(...) return select("#", ...) end

return {
  { name = "bad_input_default", task = count },
  { name = "bad_input_small", max_body = 1024, max_depth = 8, task = count },
}

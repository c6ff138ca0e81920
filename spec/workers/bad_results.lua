-- Results JSON cannot carry, one task each (spec/bad_input_spec.lua): the caller must get
-- BAD_RESULT naming the problem, and the worker must go on serving.
local cycle = {}
cycle.self = cycle

return {
  { name = "result_function", task = function() return print end },
  { name = "result_userdata", task = function() return io.stdout end },
  { name = "result_coroutine", task = function() return coroutine.create(print) end },
  { name = "result_cycle", task = function() return cycle end },
  { name = "result_nested_cycle", task = function()
    local t = { list = { 1, 2 } }
    t.list[3] = t
    return t
  end },
  { name = "result_nan", task = function() return 0 / 0 end },
  { name = "result_infinity", task = function() return { ok = 1, bad = -math.huge } end },
  { name = "result_mixed", task = function() return { 1, 2, name = "x" } end },
  { name = "result_fine", task = function(x) return { x, x } end },
}

-- A worker whose result is larger than its max_body (1024 bytes): the caller must get
-- BAD_RESULT, and the task must run once (not be retried forever). The second worker reports
-- how many times the first one ran.
local prefix = os.getenv("ROBUST_NAME") or "robust_big"
local runs = 0

return {
  {
    name = prefix,
    max_body = 1024,
    task = function(size)
      runs = runs + 1
      return string.rep("x", size)
    end,
  },
  { name = prefix .. "_runs", task = function() return runs end },
}

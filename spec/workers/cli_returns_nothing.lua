-- Returns no worker and starts none (a file that forgot its `return`).
local worker = { name = "forgotten", task = function() return 1 end }
local _ = worker

-- Deliberately fails while loading: the host must refuse to serve anything.
local missing = nil
return { name = "broken_at_load", task = missing.task }

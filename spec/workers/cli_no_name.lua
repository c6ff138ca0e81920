-- A worker table without a name: the host names this file in its error.
return { task = function() return 1 end }

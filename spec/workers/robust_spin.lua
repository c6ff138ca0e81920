-- A CPU-bound task that never returns to the loop for `seconds` (default 30): signals must
-- still reach the host, and a second SIGTERM/SIGINT must end it at once.
return {
  name = os.getenv("ROBUST_NAME") or "robust_spin",
  task = function(seconds)
    io.stdout:write("spinning\n")
    io.stdout:flush()
    local deadline = os.time() + (seconds or 30)
    while os.time() < deadline do end
    return "spun"
  end,
}

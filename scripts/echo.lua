-- Returns what it is given: `amqp-delegate call echo '{"a":[1,2]}'` prints {"a":[1,2]}.
-- Only the first result of a task is sent, so echo(1, 2) answers 1.
return {
  name = "echo",
  task = function(...)
    return ...
  end,
}

-- A string in, a string out: `amqp-delegate call --raw greet '"Ada"'` prints Hello, Ada!
return {
  name = "greet",
  task = function(name)
    return "Hello, " .. tostring(name) .. "!"
  end,
}

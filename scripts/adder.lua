-- The first worker people copy: `amqp-delegate run scripts/adder.lua` serves
-- it; any delegator then calls it with invoke("adder", 10, 15) --> 25.
return {
  name = "adder",
  task = function(a, b)
    return a + b
  end,
}

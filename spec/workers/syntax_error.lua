-- Deliberately broken: the host must refuse to serve it.
return {
  name = "broken",
  task = function(a, b) return a + end,
}

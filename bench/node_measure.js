// What bench/node_bench.js and bench/node_rpc.js share: amqplib (from NODE_PATH, else the specs'
// copy) and the measurement of a call function, printed as "RESULT key value" lines (calls,
// seconds, cps, cpu_us per measured call, p50_ms, p99_ms).
'use strict'

const path = require('path')

function loadAmqplib() {
  try {
    return require('amqplib')
  } catch (err) {
    return require(path.join(__dirname, '..', 'spec', 'node', 'node_modules', 'amqplib'))
  }
}

// call(a, b) resolves to a + b. seq: one call at a time; pipe: `depth` lanes, each running its
// calls one after the other. The first `warmup` calls are not measured; no call starts after
// maxSeconds of measuring.
async function measure(call, { mode, calls, warmup, depth, maxSeconds }) {
  const total = warmup + calls
  const latencies = []
  let started = 0
  let cpuStarted = process.cpuUsage()
  let stopAt = Infinity
  let limit = total
  let issued = 0
  let done = 0

  const one = async () => {
    const n = ++issued
    const t0 = process.hrtime.bigint()
    const result = await call(n, 2)
    const t1 = process.hrtime.bigint()
    if (result !== n + 2) throw new Error(`wrong sum ${result} for call ${n}`)
    done++
    if (n > warmup) latencies.push(Number(t1 - t0) / 1e6)
    if (done === warmup) {
      cpuStarted = process.cpuUsage()
      started = performance.now()
      stopAt = started + maxSeconds * 1000
    }
    if (done >= warmup && performance.now() > stopAt && limit > issued) limit = issued
  }
  if (warmup === 0) {
    started = performance.now()
    stopAt = started + maxSeconds * 1000
  }
  const window = mode === 'pipe' ? Math.max(1, depth) : 1
  const lane = async () => {
    while (issued < limit) await one()
  }
  const lanes = []
  for (let i = 0; i < window; i++) lanes.push(lane())
  await Promise.all(lanes)
  const seconds = (performance.now() - started) / 1000
  const cpu = process.cpuUsage(cpuStarted)
  latencies.sort((a, b) => a - b)
  const measured = latencies.length
  const at = q => latencies[Math.floor(q * (measured - 1))]
  console.log(`RESULT calls ${measured}`)
  console.log(`RESULT seconds ${seconds.toFixed(3)}`)
  console.log(`RESULT cps ${(measured / seconds).toFixed(1)}`)
  if (measured > 0) {
    console.log(`RESULT cpu_us ${((cpu.user + cpu.system) / measured).toFixed(2)}`)
    console.log(`RESULT p50_ms ${at(0.5).toFixed(3)}`)
    console.log(`RESULT p99_ms ${at(0.99).toFixed(3)}`)
  }
}

module.exports = { loadAmqplib, measure }

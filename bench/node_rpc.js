#!/usr/bin/env node
// A well-written amqplib RPC peer for the cluster rows of scripts/bench.sh: what a careful Node
// programmer would write by hand, not what the Node library does (that is bench/node_bench.js).
//
//   worker:  assertQueue(NAME) as our workers declare it (the Node protocol's transient classic
//            queue, or with --quorum durable + x-queue-type quorum; an existing queue with those
//            flags is joined), prefetch PREFETCH (per consumer), consume with manual acks; per
//            request JSON.parse the body, sendToQueue(replyTo, JSON of the sum, {correlationId}),
//            ack.
//   client:  ONE reply queue for the whole run (server-named, exclusive, consumed once with
//            noAck), correlation ids a counter, the calls waiting in a Map; seq: one call at a
//            time; pipe: DEPTH calls in flight (a window: one more per reply). Waits for 'drain'
//            when sendToQueue says the socket buffer is full.
// Both connect with {noDelay: true} (TCP_NODELAY) and use plain channels (no publisher
// confirms, as bench/bare_roundtrip.c).
//
//   node node_rpc.js worker URL NAME [--prefetch N] [--quorum]
//       prints "ready" once consuming; exits on SIGINT/SIGTERM, when the connection closes, or
//       after NODE_BENCH_LIFETIME s (900)
//   node node_rpc.js client URL NAME seq|pipe CALLS WARMUP DEPTH [--max-seconds S]
//       prints "RESULT key value" lines: calls, seconds, cps, cpu_us (CPU per measured call),
//       p50_ms, p99_ms
'use strict'


const { loadAmqplib, measure } = require('./node_measure')

const amqp = loadAmqplib()

function parse(argv) {
  const positional = []
  const flags = { prefetch: 1, quorum: false, maxSeconds: Infinity }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--quorum') flags.quorum = true
    else if (a === '--prefetch') flags.prefetch = Number(argv[++i])
    else if (a === '--max-seconds') flags.maxSeconds = Number(argv[++i])
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`)
    else positional.push(a)
  }
  return { positional, flags }
}

async function worker(url, name, flags) {
  const connection = await amqp.connect(url, { noDelay: true })
  let closing = false
  connection.on('error', err => {
    if (!closing) console.error(`node_rpc worker: ${err.message}`)
  })
  connection.on('close', () => {
    if (!closing) process.exit(1)
  })
  const channel = await connection.createChannel()
  if (flags.quorum) {
    await channel.assertQueue(name, { durable: true, arguments: { 'x-queue-type': 'quorum' } })
  } else {
    await channel.assertQueue(name, { durable: false })
  }
  await channel.prefetch(flags.prefetch)
  await channel.consume(name, message => {
    if (message === null) return
    const { replyTo, correlationId } = message.properties
    let result = null
    try {
      const [a, b] = JSON.parse(message.content.toString())
      result = a + b
    } catch (err) {
      // a request that is not a JSON array: answered null
    }
    channel.sendToQueue(replyTo, Buffer.from(JSON.stringify(result)), { correlationId })
    channel.ack(message)
  })
  process.stdout.write('ready\n')

  const stop = async () => {
    if (closing) return
    closing = true
    try {
      await channel.close()
      await connection.close()
    } catch (err) {
      // the broker may be gone already
    }
    process.exit(0)
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  const lifetime = Number(process.env.NODE_BENCH_LIFETIME || 900)
  setTimeout(stop, lifetime * 1000).unref()
}

async function client(url, name, mode, calls, warmup, depth, flags) {
  const connection = await amqp.connect(url, { noDelay: true })
  connection.on('error', err => console.error(`node_rpc client: ${err.message}`))
  const channel = await connection.createChannel()
  const { queue: replyTo } = await channel.assertQueue('', { exclusive: true, autoDelete: true })
  const waiting = new Map() // correlation id -> resolve
  await channel.consume(
    replyTo,
    message => {
      if (message === null) return
      const id = message.properties.correlationId
      const resolve = waiting.get(id)
      if (!resolve) return // not ours (none expected)
      waiting.delete(id)
      resolve(JSON.parse(message.content.toString()))
    },
    { noAck: true }
  )
  let drainWaiters = [] // calls that found the write buffer full wait for 'drain'
  channel.on('drain', () => {
    const waiters = drainWaiters
    drainWaiters = []
    for (const resolve of waiters) resolve()
  })

  let nextId = 0
  const call = async (a, b) => {
    const correlationId = String(++nextId)
    const reply = new Promise(resolve => waiting.set(correlationId, resolve))
    if (!channel.sendToQueue(name, Buffer.from(JSON.stringify([a, b])), { correlationId, replyTo })) {
      await new Promise(resolve => drainWaiters.push(resolve))
    }
    return reply
  }

  await measure(call, { mode, calls, warmup, depth, maxSeconds: flags.maxSeconds })
  await channel.close()
  await connection.close()
}

async function main() {
  const { positional, flags } = parse(process.argv.slice(2))
  const [role, url, name, mode, calls, warmup, depth] = positional
  if (role === 'worker' && url && name) return worker(url, name, flags)
  if (role === 'client' && url && name && (mode === 'seq' || mode === 'pipe') && calls) {
    return client(url, name, mode, Number(calls), Number(warmup || 0), Number(depth || 1), flags)
  }
  console.error(
    'usage: node_rpc.js worker URL NAME [--prefetch N] [--quorum]\n' +
      '       node_rpc.js client URL NAME seq|pipe CALLS WARMUP DEPTH [--max-seconds S]'
  )
  process.exit(64)
}

main().catch(err => {
  console.error(`node_rpc: ${err.stack || err}`)
  process.exit(1)
})

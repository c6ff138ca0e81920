#!/usr/bin/env node
// The Node peer of the benchmark: a worker and a delegator written with amqplib that do on the
// wire exactly what amqp-delegate 1.4.0 does (../shared/PROTOCOL.md):
//   worker:    assertQueue(NAME, durable false), prefetch 1, consume with manual ack; per request
//              JSON.parse the body, await the task, sendToQueue(replyTo, JSON of the result,
//              {correlationId}), then ack.
//   delegator: one channel; PER CALL assertQueue('', {exclusive: true}) (server-named), consume it
//              with noAck, sendToQueue(NAME, JSON of the arguments, {correlationId: UUID v4,
//              replyTo}); resolves with JSON.parse of the reply whose correlationId matches.
//              Neither the queue nor the consumer is ever removed (as shipped): they live until
//              the connection closes.
//
//   node node_bench.js worker URL NAME [--delay-ms D] [--prefetch N] [--nodelay]
//       prints "ready" once consuming; exits on SIGINT/SIGTERM or after NODE_BENCH_LIFETIME s (900)
//   node node_bench.js delegator URL NAME seq|pipe CALLS WARMUP DEPTH [--max-seconds S] [--nodelay]
//       prints "RESULT key value" lines: calls, seconds, cps, cpu_us (CPU per measured call), p50_ms,
//       p99_ms
//
// --nodelay passes {noDelay: true} to amqplib's connect (TCP_NODELAY on its socket); without it
// the socket keeps Nagle's algorithm, as the Node library ships. --prefetch other than 1 is not
// what the library does; the benchmark always uses 1.
'use strict'

const crypto = require('crypto')

const { loadAmqplib, measure } = require('./node_measure')

const amqp = loadAmqplib()

function parse(argv) {
  const positional = []
  const flags = { delayMs: 0, prefetch: 1, nodelay: false, maxSeconds: Infinity }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--nodelay') flags.nodelay = true
    else if (a === '--delay-ms') flags.delayMs = Number(argv[++i])
    else if (a === '--prefetch') flags.prefetch = Number(argv[++i])
    else if (a === '--max-seconds') flags.maxSeconds = Number(argv[++i])
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`)
    else positional.push(a)
  }
  return { positional, flags }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function worker(url, name, flags) {
  const connection = await amqp.connect(url, { noDelay: flags.nodelay })
  let closing = false
  connection.on('error', err => {
    if (!closing) console.error(`node_bench worker: ${err.message}`)
  })
  connection.on('close', () => {
    if (!closing) process.exit(1)
  })
  const channel = await connection.createChannel()
  await channel.assertQueue(name, { durable: false })
  await channel.prefetch(flags.prefetch)
  const delay = flags.delayMs
  const task = async (a, b) => {
    if (delay > 0) await sleep(delay)
    return a + b
  }
  await channel.consume(name, message => {
    if (message === null) return
    let params
    try {
      params = JSON.parse(message.content.toString())
    } catch (err) {
      channel.ack(message)
      return
    }
    task(...params)
      .then(result => {
        channel.sendToQueue(message.properties.replyTo, Buffer.from(JSON.stringify(result)), {
          correlationId: message.properties.correlationId
        })
        channel.ack(message)
      })
      .catch(() => channel.ack(message))
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

async function delegator(url, name, mode, calls, warmup, depth, flags) {
  const connection = await amqp.connect(url, { noDelay: flags.nodelay })
  connection.on('error', err => console.error(`node_bench delegator: ${err.message}`))
  const channel = await connection.createChannel()

  // the Node library's invoke, step by step
  const invoke = async (worker, ...params) => {
    const queue = await channel.assertQueue('', { exclusive: true })
    const buffer = Buffer.from(JSON.stringify(params))
    const correlationId = crypto.randomUUID()
    const replyTo = queue.queue
    return new Promise((resolve, reject) => {
      channel.consume(
        replyTo,
        message => {
          if (message.properties.correlationId === correlationId) {
            try {
              resolve(JSON.parse(message.content.toString()))
            } catch (err) {
              reject(err)
            }
          } else reject(new Error('wrong correlation id'))
        },
        { noAck: true }
      )
      channel.sendToQueue(worker, buffer, { correlationId, replyTo })
    })
  }

  await measure((a, b) => invoke(name, a, b), { mode, calls, warmup, depth, maxSeconds: flags.maxSeconds })
  await channel.close()
  await connection.close()
}

async function main() {
  const { positional, flags } = parse(process.argv.slice(2))
  const [role, url, name, mode, calls, warmup, depth] = positional
  if (role === 'worker' && url && name) return worker(url, name, flags)
  if (role === 'delegator' && url && name && (mode === 'seq' || mode === 'pipe') && calls) {
    return delegator(url, name, mode, Number(calls), Number(warmup || 0), Number(depth || 1), flags)
  }
  console.error(
    'usage: node_bench.js worker URL NAME [--delay-ms D] [--prefetch N] [--nodelay]\n' +
      '       node_bench.js delegator URL NAME seq|pipe CALLS WARMUP DEPTH [--max-seconds S] [--nodelay]'
  )
  process.exit(64)
}

main().catch(err => {
  console.error(`node_bench: ${err.stack || err}`)
  process.exit(1)
})

#!/usr/bin/env node
// A Node.js worker that behaves on the wire as amqp-delegate 1.4.0's makeWorker does
// (see PROTOCOL.md): queue NAME declared durable:false exclusive:false autoDelete:false,
// prefetch 1, manual ack after the reply is published to reply_to with the request's
// correlationId; body = JSON of the result. A task that throws: ack, send nothing.
//
//   node worker.js --url URL --name NAME --task TASK [--tag TAG]
//
// TASK: add       args[0] + args[1]
//       echo      args[0] unchanged
//       echoargs  the whole args array
//       tagged    {"worker": TAG, "sum": args[0] + args[1]}
//       fail      throws an Error (the caller never gets an answer, as with the Node library)
//       slow      waits args[0] ms, then returns args[0]   (for timeout / competing tests)
//       stray     first sends a reply with a made-up correlation id (body "stray"), then the
//                 real reply: args[0]          (a delegator must drop the stray one)
//       rawbody   replies with the bytes of the string args[0] as the body, not JSON-encoded
//                 (so "not json" arrives as it is)
//
// Prints "ready" on stdout once consuming. SIGTERM / SIGINT: closes channel and connection,
// exits 0. An unexpected connection loss exits 1. Errors go to stderr.
'use strict'

const crypto = require('crypto')
const amqp = require('amqplib')

function parseArgs(argv) {
  const opts = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a)
    if (!m) throw new Error(`unexpected argument: ${a}`)
    if (m[2] !== undefined) opts[m[1]] = m[2]
    else {
      if (i + 1 >= argv.length) throw new Error(`missing value for --${m[1]}`)
      opts[m[1]] = argv[++i]
    }
  }
  return opts
}

// a task result sent as these bytes instead of JSON.stringify(result)
class RawBody {
  constructor(bytes) {
    this.bytes = bytes
  }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function makeTask(task, tag) {
  switch (task) {
    case 'add':
      return (a, b) => a + b
    case 'echo':
      return x => x
    case 'echoargs':
      return (...args) => args
    case 'tagged':
      return (a, b) => ({ worker: tag, sum: a + b })
    case 'fail':
      return () => {
        throw new Error('task failed on purpose')
      }
    case 'stray':
      return x => x
    case 'rawbody':
      return x => new RawBody(Buffer.from(String(x), 'utf8'))
    case 'slow':
      return async ms => {
        await sleep(ms)
        return ms
      }
    default:
      throw new Error(`unknown task: ${task}`)
  }
}

async function main() {
  let opts
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (err) {
    console.error(`worker.js: ${err.message}`)
    console.error('usage: worker.js --url URL --name NAME --task TASK [--tag TAG]')
    process.exit(64)
  }
  const url = opts.url || process.env.AMQP_URL || 'amqp://localhost'
  const name = opts.name
  const tag = opts.tag || `node-${process.pid}`
  if (!name || !opts.task) {
    console.error('usage: worker.js --url URL --name NAME --task TASK [--tag TAG]')
    process.exit(64)
  }
  const task = makeTask(opts.task, tag)

  let closing = false
  const connection = await amqp.connect(url)
  connection.on('error', err => {
    if (!closing) console.error(`worker.js: connection error: ${err.message}`)
  })
  connection.on('close', () => {
    if (!closing) {
      console.error('worker.js: connection closed unexpectedly')
      process.exit(1)
    }
  })
  const channel = await connection.createChannel()
  channel.on('error', err => console.error(`worker.js: channel error: ${err.message}`))

  await channel.assertQueue(name, { exclusive: false, durable: false, autoDelete: false })
  await channel.prefetch(1)

  const handle = async message => {
    if (message === null) {
      // consumer cancelled by the broker (queue deleted)
      console.error('worker.js: consumer cancelled by the broker')
      return
    }
    const { correlationId, replyTo } = message.properties
    try {
      const params = JSON.parse(message.content.toString())
      const result = await task(...params)
      if (opts.task === 'stray') {
        const stray = crypto.randomUUID()
        channel.sendToQueue(replyTo, Buffer.from(JSON.stringify('stray')), { correlationId: stray })
        console.log(`stray reply sent with correlation id ${stray}`)
      }
      const body = result instanceof RawBody ? result.bytes : Buffer.from(JSON.stringify(result))
      channel.sendToQueue(replyTo, body, { correlationId })
    } catch (err) {
      console.error(`worker.js: task error: ${err.message}`)
    }
    channel.ack(message)
  }
  await channel.consume(name, message => {
    handle(message).catch(err => console.error(`worker.js: ${err.stack || err}`))
  }, { noAck: false })

  const shutdown = async signal => {
    if (closing) return
    closing = true
    try {
      await channel.close()
      await connection.close()
    } catch (err) {
      console.error(`worker.js: error while closing on ${signal}: ${err.message}`)
      process.exit(1)
    }
    process.exit(0)
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))

  process.stdout.write('ready\n')
}

main().catch(err => {
  console.error(`worker.js: ${err.stack || err}`)
  process.exit(1)
})

#!/usr/bin/env node
// A Node.js delegator that behaves on the wire as amqp-delegate 1.4.0's makeDelegator does
// (see PROTOCOL.md): for each invoke a server-named exclusive queue ('' name, exclusive:true),
// consumed with noAck; the request (JSON array of the arguments) is published to exchange ''
// with routing key NAME, correlationId = crypto.randomUUID(), replyTo = that queue; the call
// resolves with JSON.parse of the body of the reply whose correlationId matches (others ignored).
//
//   node delegator.js --url URL --name NAME [--timeout MS] [--count N] [--raw] [ARGS_JSON]
//
// ARGS_JSON: JSON array of the positional arguments (default []).
// Prints one line per call: JSON.stringify(result), or with --raw the reply body bytes as sent.
// Exit 0; on a timeout (default 10000 ms per call) "TIMEOUT" on stderr and exit 2; other
// errors exit 1; bad usage 64.
'use strict'

const crypto = require('crypto')
const amqp = require('amqplib')

const USAGE = 'usage: delegator.js --url URL --name NAME [--timeout MS] [--count N] [--raw] [ARGS_JSON]'

function parseArgs(argv) {
  const opts = { timeout: 10000, count: 1, raw: false, args: '[]' }
  let positional = null
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--raw') {
      opts.raw = true
      continue
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a)
    if (m) {
      let v = m[2]
      if (v === undefined) {
        if (i + 1 >= argv.length) throw new Error(`missing value for --${m[1]}`)
        v = argv[++i]
      }
      if (m[1] === 'timeout' || m[1] === 'count') {
        const n = Number(v)
        if (!Number.isInteger(n) || n < 0) throw new Error(`--${m[1]} wants a whole number`)
        opts[m[1]] = n
      } else if (m[1] === 'url' || m[1] === 'name') {
        opts[m[1]] = v
      } else {
        throw new Error(`unknown option --${m[1]}`)
      }
    } else {
      if (positional !== null) throw new Error(`unexpected argument: ${a}`)
      positional = a
    }
  }
  if (positional !== null) opts.args = positional
  return opts
}

class Timeout extends Error {}

async function invoke(channel, name, params, timeoutMs) {
  const { queue } = await channel.assertQueue('', { exclusive: true })
  const correlationId = crypto.randomUUID()
  let timer
  try {
    return await new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Timeout()), timeoutMs)
      channel
        .consume(
          queue,
          message => {
            if (message === null) return reject(new Error('reply consumer cancelled by the broker'))
            if (message.properties.correlationId === correlationId) resolve(message.content)
          },
          { noAck: true }
        )
        .then(() => {
          channel.sendToQueue(name, Buffer.from(JSON.stringify(params)), {
            correlationId,
            replyTo: queue
          })
        })
        .catch(reject)
    })
  } finally {
    // like the Node library: the reply queue and its consumer stay until the connection closes
    clearTimeout(timer)
  }
}

async function main() {
  let opts, params
  try {
    opts = parseArgs(process.argv.slice(2))
    params = JSON.parse(opts.args)
    if (!Array.isArray(params)) throw new Error('ARGS_JSON must be a JSON array')
  } catch (err) {
    console.error(`delegator.js: ${err.message}`)
    console.error(USAGE)
    process.exit(64)
  }
  const url = opts.url || process.env.AMQP_URL || 'amqp://localhost'
  if (!opts.name) {
    console.error(USAGE)
    process.exit(64)
  }

  const connection = await amqp.connect(url)
  let closing = false
  connection.on('error', err => {
    if (!closing) console.error(`delegator.js: connection error: ${err.message}`)
  })
  const channel = await connection.createChannel()

  let code = 0
  try {
    for (let i = 0; i < opts.count; i++) {
      const body = await invoke(channel, opts.name, params, opts.timeout)
      if (opts.raw) {
        process.stdout.write(Buffer.concat([body, Buffer.from('\n')]))
      } else {
        process.stdout.write(JSON.stringify(JSON.parse(body.toString())) + '\n')
      }
    }
  } catch (err) {
    if (err instanceof Timeout) {
      console.error('TIMEOUT')
      code = 2
    } else {
      console.error(`delegator.js: ${err.stack || err}`)
      code = 1
    }
  }
  closing = true
  try {
    await connection.close()
  } catch (err) {
    // already closed
  }
  // let stdout drain before exiting
  process.stdout.write('', () => process.exit(code))
}

main().catch(err => {
  console.error(`delegator.js: ${err.stack || err}`)
  process.exit(1)
})

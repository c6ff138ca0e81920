#!/usr/bin/env node
// Publishes ONE raw message to a queue (exchange "", routing key QUEUE), with exactly the
// properties asked for, and optionally waits for the reply: the tool for bad-input specs,
// which need requests no well-behaved delegator would send.
//
//   node publish.js --url URL --queue QUEUE [BODY OPTION] [PROPERTY OPTIONS] [--timeout MS]
//
// Body (raw bytes, sent as they are; default empty):
//   --body TEXT          the UTF-8 bytes of TEXT
//   --body-file FILE     the bytes of FILE
//   --body-hex HEX       the bytes HEX spells
// Properties:
//   --correlation-id ID  (default: a new UUID v4)     --no-correlation-id   send none
//   --reply-to QUEUE     send this reply_to and do not wait for a reply
//   --no-reply-to        send no reply_to (and so wait for nothing)
//   (neither)            declare an exclusive server-named reply queue, send it as reply_to,
//                        and wait up to --timeout MS (default 10000) for one message there
//   --type TYPE          the message's type property
//
// The message is published mandatory on a confirm channel: the command returns once the
// broker has confirmed it. Output on stdout, one JSON line:
//   {"published":true,"correlation_id":"..."}                      (when not waiting)
//   {"body":"<reply body as text>","type":...,"correlation_id":...,"matches":true|false}
// Exit 0; 2 when no reply came in time ("TIMEOUT" on stderr); 3 when the broker returned the
// message (no such queue; "RETURNED" on stderr); 1 other errors; 64 bad usage.
'use strict'

const crypto = require('crypto')
const fs = require('fs')
const amqp = require('amqplib')

const USAGE =
  'usage: publish.js --url URL --queue QUEUE [--body TEXT | --body-file FILE | --body-hex HEX]\n' +
  '       [--correlation-id ID | --no-correlation-id] [--reply-to QUEUE | --no-reply-to]\n' +
  '       [--type TYPE] [--timeout MS]'

function parseArgs(argv) {
  const opts = { timeout: 10000, body: Buffer.alloc(0) }
  const flags = new Set(['no-correlation-id', 'no-reply-to'])
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/s.exec(argv[i])
    if (!m) throw new Error(`unexpected argument: ${argv[i]}`)
    const key = m[1]
    if (flags.has(key)) {
      if (m[2] !== undefined) throw new Error(`--${key} takes no value`)
      opts[key] = true
      continue
    }
    let v = m[2]
    if (v === undefined) {
      if (i + 1 >= argv.length) throw new Error(`missing value for --${key}`)
      v = argv[++i]
    }
    switch (key) {
      case 'url':
      case 'queue':
      case 'correlation-id':
      case 'reply-to':
      case 'type':
        opts[key] = v
        break
      case 'body':
        opts.body = Buffer.from(v, 'utf8')
        break
      case 'body-file':
        opts.body = fs.readFileSync(v)
        break
      case 'body-hex':
        if (!/^([0-9a-fA-F]{2})*$/.test(v)) throw new Error('--body-hex wants pairs of hex digits')
        opts.body = Buffer.from(v, 'hex')
        break
      case 'timeout': {
        const n = Number(v)
        if (!Number.isInteger(n) || n < 0) throw new Error('--timeout wants a whole number')
        opts.timeout = n
        break
      }
      default:
        throw new Error(`unknown option --${key}`)
    }
  }
  if (!opts.queue) throw new Error('--queue is required')
  if (opts['no-correlation-id'] && opts['correlation-id'] !== undefined)
    throw new Error('--correlation-id and --no-correlation-id exclude each other')
  if (opts['no-reply-to'] && opts['reply-to'] !== undefined)
    throw new Error('--reply-to and --no-reply-to exclude each other')
  return opts
}

async function main() {
  let opts
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (err) {
    console.error(`publish.js: ${err.message}`)
    console.error(USAGE)
    process.exit(64)
  }
  const url = opts.url || process.env.AMQP_URL || 'amqp://localhost'
  const connection = await amqp.connect(url)
  let closing = false
  connection.on('error', err => {
    if (!closing) console.error(`publish.js: connection error: ${err.message}`)
  })
  const channel = await connection.createConfirmChannel()

  const correlationId = opts['no-correlation-id']
    ? undefined
    : opts['correlation-id'] !== undefined
      ? opts['correlation-id']
      : crypto.randomUUID()
  const wait = !opts['no-reply-to'] && opts['reply-to'] === undefined
  let replyTo = opts['no-reply-to'] ? undefined : opts['reply-to']
  let reply = null
  if (wait) {
    const { queue } = await channel.assertQueue('', { exclusive: true })
    replyTo = queue
    reply = new Promise(resolve => {
      channel.consume(queue, message => resolve(message), { noAck: true })
    })
  }

  let returned = false
  channel.on('return', () => {
    returned = true
  })
  const properties = { mandatory: true }
  if (correlationId !== undefined) properties.correlationId = correlationId
  if (replyTo !== undefined) properties.replyTo = replyTo
  if (opts.type !== undefined) properties.type = opts.type
  channel.publish('', opts.queue, opts.body, properties)
  await channel.waitForConfirms()

  let code = 0
  let line = null
  if (returned) {
    console.error('RETURNED')
    code = 3
  } else if (!wait) {
    line = { published: true, correlation_id: correlationId === undefined ? null : correlationId }
  } else {
    let timer
    const timeout = new Promise(resolve => {
      timer = setTimeout(() => resolve(null), opts.timeout)
    })
    const message = await Promise.race([reply, timeout])
    clearTimeout(timer)
    if (message === null) {
      console.error('TIMEOUT')
      code = 2
    } else {
      const p = message.properties
      line = {
        body: message.content.toString('utf8'),
        type: p.type === undefined ? null : p.type,
        correlation_id: p.correlationId === undefined ? null : p.correlationId,
        matches: p.correlationId === correlationId
      }
    }
  }
  closing = true
  try {
    await connection.close()
  } catch (err) {
    // already closed
  }
  const out = line === null ? '' : JSON.stringify(line) + '\n'
  process.stdout.write(out, () => process.exit(code))
}

main().catch(err => {
  console.error(`publish.js: ${err.stack || err}`)
  process.exit(1)
})

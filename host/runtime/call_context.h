/* What a task knows of the call it serves (delegate.context()), and what the
 * calls it makes carry on from it: the deadline, W3C trace context and the
 * chain of workers the request went through. Node peers ignore headers they
 * do not know, so none of this changes the Node protocol. */
#ifndef AD_CALL_CONTEXT_H
#define AD_CALL_CONTEXT_H

#include <stdint.h>

#include "byte_buffer.h"
#include "connection.h"

#define HEADER_DEADLINE "x-deadline"    /* the caller's deadline, ms since the epoch */
#define HEADER_CHAIN "x-call-chain"     /* the workers it went through, comma-separated */
#define HEADER_TRACEPARENT "traceparent"
#define HEADER_TRACESTATE "tracestate"

struct call_context {
  const char *worker;
  const struct short_string *correlation_id;
  int64_t deadline_ms; /* ms since the epoch; 0: none */
  int redelivered;
  long previous_deliveries;
  const char *headers; /* the request's (header_list.h) */
  size_t headers_length;
};

/* The wall clock in ms since the epoch: deadlines cross hosts (NTP). */
int64_t wall_clock_ms(void);

/* The request's deadline from its headers, 0 when it has none. */
int64_t request_deadline(const char *headers, size_t headers_length);

/* Appends to out what a call made while serving `incoming` carries on:
 * tracestate, traceparent with a new span id (from random_bits), and the
 * call chain with this worker added; keys already in out are kept. */
void call_context_carry(const struct call_context *incoming, uint64_t random_bits,
                        byte_buffer *out);

#endif

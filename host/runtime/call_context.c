/* Deadlines and trace headers that travel with calls (call_context.h). */
#include "call_context.h"

#include <string.h>
#include <time.h>

#include "header_list.h"

int64_t wall_clock_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

int64_t request_deadline(const char *headers, size_t headers_length) {
  struct header header;
  int64_t deadline;
  if (!header_list_find(headers, headers_length, HEADER_DEADLINE, &header) ||
      !header_integer(&header, &deadline))
    return 0;
  /* milliseconds since the epoch; anything before 2001 is not one (seconds, say) */
  return deadline < 978307200000LL ? 0 : deadline;
}

static int has_key(const byte_buffer *out, const char *key) {
  struct header header;
  return header_list_find(out->data, out->length, key, &header);
}

static void carry_text(const struct call_context *incoming, const char *key, byte_buffer *out) {
  struct header header;
  if (has_key(out, key) ||
      !header_list_find(incoming->headers, incoming->headers_length, key, &header))
    return;
  header_list_add(out, HEADER_TEXT, header.key, header.key_length, header.value,
                  header.value_length);
}

/* traceparent is 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>:
 * the same trace, this call as the new parent. */
static void carry_traceparent(const struct call_context *incoming, uint64_t random_bits,
                              byte_buffer *out) {
  static const char hex[] = "0123456789abcdef";
  struct header header;
  if (has_key(out, HEADER_TRACEPARENT) ||
      !header_list_find(incoming->headers, incoming->headers_length, HEADER_TRACEPARENT,
                        &header) ||
      header.value_length != 55 || header.value[2] != '-' || header.value[35] != '-' ||
      header.value[52] != '-')
    return;
  char value[56];
  memcpy(value, header.value, 55);
  if (random_bits == 0) random_bits = 1; /* an all-zero parent id is invalid */
  for (int i = 0; i < 16; i++) value[36 + i] = hex[(random_bits >> (60 - 4 * i)) & 0xf];
  value[55] = '\0';
  header_list_add(out, HEADER_TEXT, HEADER_TRACEPARENT, strlen(HEADER_TRACEPARENT), value, 55);
}

/* The chain so far and this worker; the oldest names go when it is long. */
static void carry_chain(const struct call_context *incoming, byte_buffer *out) {
  if (has_key(out, HEADER_CHAIN)) return;
  char chain[512];
  size_t length = 0;
  struct header header;
  if (header_list_find(incoming->headers, incoming->headers_length, HEADER_CHAIN, &header)) {
    const char *kept = header.value;
    size_t kept_length = header.value_length;
    size_t worker_length = strlen(incoming->worker);
    while (kept_length + 1 + worker_length >= sizeof chain) {
      const char *comma = memchr(kept, ',', kept_length);
      if (!comma) {
        kept_length = 0;
        break;
      }
      kept_length -= (size_t)(comma + 1 - kept);
      kept = comma + 1;
    }
    memcpy(chain, kept, kept_length);
    length = kept_length;
    if (length) chain[length++] = ',';
  }
  size_t worker_length = strlen(incoming->worker);
  if (length + worker_length >= sizeof chain) return;
  memcpy(chain + length, incoming->worker, worker_length);
  length += worker_length;
  header_list_add(out, HEADER_TEXT, HEADER_CHAIN, strlen(HEADER_CHAIN), chain, length);
}

void call_context_carry(const struct call_context *incoming, uint64_t random_bits,
                        byte_buffer *out) {
  carry_traceparent(incoming, random_bits, out);
  carry_text(incoming, HEADER_TRACESTATE, out);
  carry_chain(incoming, out);
}

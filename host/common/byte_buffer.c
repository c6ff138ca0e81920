/* Growable byte buffer (see byte_buffer.h). Capacity doubles so that a
 * sequence of appends costs amortised O(1) per byte. */
#include "byte_buffer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Small enough not to waste memory per connection, big enough that a
 * typical RPC message needs no second allocation. */
#define BYTE_BUFFER_MIN_CAPACITY 256

void byte_buffer_init(byte_buffer *b) {
  b->data = NULL;
  b->length = 0;
  b->capacity = 0;
}

int byte_buffer_reserve(byte_buffer *b, size_t extra) {
  size_t need, cap;
  char *p;
  if (extra <= b->capacity - b->length)
    return 0;
  if (extra > SIZE_MAX - b->length)
    return -1;
  need = b->length + extra;
  cap = b->capacity ? b->capacity : BYTE_BUFFER_MIN_CAPACITY;
  while (cap < need) {
    if (cap > SIZE_MAX / 2) {  /* doubling would overflow: take exactly what is needed */
      cap = need;
      break;
    }
    cap *= 2;
  }
  p = realloc(b->data, cap);
  if (p == NULL)
    return -1;
  b->data = p;
  b->capacity = cap;
  return 0;
}

int byte_buffer_append(byte_buffer *b, const void *bytes, size_t n) {
  if (n == 0)  /* avoids memcpy with a NULL data pointer */
    return 0;
  if (byte_buffer_reserve(b, n) != 0)
    return -1;
  memcpy(b->data + b->length, bytes, n);
  b->length += n;
  return 0;
}

void byte_buffer_reset(byte_buffer *b) {
  b->length = 0;
}

void byte_buffer_fit(byte_buffer *b) {
  if (b->capacity == b->length) return;
  if (b->length == 0) {
    byte_buffer_free(b);
    return;
  }
  char *p = realloc(b->data, b->length);
  if (p == NULL) return; /* it stays as it was */
  b->data = p;
  b->capacity = b->length;
}

void byte_buffer_free(byte_buffer *b) {
  free(b->data);
  byte_buffer_init(b);
}

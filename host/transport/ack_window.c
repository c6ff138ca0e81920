/* The ack window of ack_window.h: one flag byte per delivery between the
 * lowest unsettled one and the last, in a ring that doubles. */
#include "ack_window.h"

#include <stdlib.h>
#include <string.h>

#define FIRST_CAPACITY 256

void ack_window_init(struct ack_window *window) {
  memset(window, 0, sizeof *window);
  window->base = 1;
}

void ack_window_free(struct ack_window *window) {
  free(window->flags);
  free(window->due);
  ack_window_init(window);
}

static unsigned char *flag_of(struct ack_window *window, uint64_t tag) {
  return &window->flags[tag & (window->capacity - 1)];
}

static int grow(struct ack_window *window, size_t span) {
  size_t capacity = window->capacity ? window->capacity : FIRST_CAPACITY;
  while (capacity < span) capacity *= 2;
  if (capacity == window->capacity) return 0;
  unsigned char *flags = calloc(capacity, 1);
  if (!flags) return -1;
  for (uint64_t tag = window->base; window->capacity && tag <= window->delivered; tag++)
    flags[tag & (capacity - 1)] = *flag_of(window, tag);
  free(window->flags);
  window->flags = flags;
  window->capacity = capacity;
  return 0;
}

int ack_window_delivered(struct ack_window *window, uint64_t tag) {
  if (tag <= window->delivered) return 0;
  if (grow(window, (size_t)(tag - window->base + 1)) != 0) {
    window->delivered = tag; /* base never passes an unknown tag: no multiple from here */
    return -1;
  }
  /* tags skipped (never seen) stay unsettled: no multiple ack ever covers them */
  for (uint64_t next = window->delivered + 1; next <= tag; next++) *flag_of(window, next) = 0;
  window->delivered = tag;
  return 0;
}

void ack_window_settled(struct ack_window *window, uint64_t tag) {
  if (tag < window->base || tag > window->delivered || !window->capacity) return;
  if ((size_t)(window->delivered - window->base) >= window->capacity) return; /* lost track */
  *flag_of(window, tag) = 1;
  while (window->base <= window->delivered && *flag_of(window, window->base)) window->base++;
}

int ack_window_due(struct ack_window *window, uint64_t tag) {
  if (window->due_count == window->due_capacity) {
    size_t capacity = window->due_capacity ? window->due_capacity * 2 : 64;
    uint64_t *due = realloc(window->due, capacity * sizeof *due);
    if (!due) return -1;
    window->due = due;
    window->due_capacity = capacity;
  }
  window->due[window->due_count++] = tag;
  return 0;
}

void ack_window_take_due(struct ack_window *window, uint64_t *multiple_up_to, uint64_t *singles,
                         size_t *single_count) {
  uint64_t base_before = window->base;
  for (size_t i = 0; i < window->due_count; i++) ack_window_settled(window, window->due[i]);
  /* every tag below the new base is settled or due now: one ack covers the due ones there */
  uint64_t covered = window->base > base_before ? window->base - 1 : 0;
  uint64_t highest = 0;
  *single_count = 0;
  for (size_t i = 0; i < window->due_count; i++) {
    uint64_t tag = window->due[i];
    if (covered && tag <= covered) {
      if (tag > highest) highest = tag;
    } else {
      singles[(*single_count)++] = tag;
    }
  }
  *multiple_up_to = highest;
  window->due_count = 0;
}

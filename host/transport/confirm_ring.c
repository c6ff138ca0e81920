/* A ring buffer of unconfirmed publishes (confirm_ring.h): O(1) per publish
 * and per in-order confirm; an out-of-order confirm marks its entry, which
 * leaves once every entry before it has. */
#include "confirm_ring.h"

#include <stdlib.h>
#include <string.h>

void confirm_ring_init(struct confirm_ring *ring) {
  memset(ring, 0, sizeof *ring);
  ring->next_sequence = 1;
}

void confirm_ring_free(struct confirm_ring *ring) {
  free(ring->entries);
  ring->entries = NULL;
  ring->capacity = ring->head = ring->count = 0;
}

static struct confirm_entry *entry_at(struct confirm_ring *ring, size_t offset) {
  return &ring->entries[(ring->head + offset) % ring->capacity];
}

int confirm_ring_reserve(struct confirm_ring *ring) {
  if (ring->count < ring->capacity) return 0;
  size_t capacity = ring->capacity ? ring->capacity * 2 : 64;
  struct confirm_entry *entries = malloc(capacity * sizeof *entries);
  if (!entries) return -1;
  for (size_t i = 0; i < ring->count; i++) entries[i] = *entry_at(ring, i);
  free(ring->entries);
  ring->entries = entries;
  ring->capacity = capacity;
  ring->head = 0;
  return 0;
}

void confirm_ring_push(struct confirm_ring *ring, uint64_t token) {
  struct confirm_entry *entry = &ring->entries[(ring->head + ring->count) % ring->capacity];
  entry->token = token;
  entry->settled = 0;
  ring->count++;
  ring->next_sequence++;
}

/* After a crowd of publishes: a big empty ring goes (the next reserve makes a small one). */
#define ENTRIES_KEPT_EMPTY 1024

static void pop_settled(struct confirm_ring *ring) {
  while (ring->count && ring->entries[ring->head].settled) {
    ring->head = (ring->head + 1) % ring->capacity;
    ring->count--;
  }
  if (ring->count == 0 && ring->capacity > ENTRIES_KEPT_EMPTY) {
    free(ring->entries);
    ring->entries = NULL;
    ring->capacity = ring->head = 0;
  }
}

void confirm_ring_settle(struct confirm_ring *ring, uint64_t sequence, int multiple,
                         void (*settle)(void *data, uint64_t token), void *data) {
  uint64_t first = ring->next_sequence - ring->count; /* the head's number */
  if (sequence < first || sequence >= ring->next_sequence) return; /* not ours, or settled */
  size_t last = (size_t)(sequence - first);
  for (size_t offset = multiple ? 0 : last; offset <= last; offset++) {
    struct confirm_entry *entry = entry_at(ring, offset);
    if (entry->settled) continue;
    entry->settled = 1;
    settle(data, entry->token);
  }
  pop_settled(ring);
}

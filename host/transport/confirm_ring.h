/* The publishes of a channel in confirm mode that the broker has not
 * confirmed yet, in publish order: the broker numbers them 1, 2, 3... and
 * confirms by number (one, or every one up to a number), mostly in order. */
#ifndef AD_CONFIRM_RING_H
#define AD_CONFIRM_RING_H

#include <stddef.h>
#include <stdint.h>

struct confirm_entry {
  uint64_t token;
  int settled; /* confirmed out of order, still in the ring */
};

struct confirm_ring {
  struct confirm_entry *entries;
  size_t capacity, head, count;
  uint64_t next_sequence; /* the number the next publish gets */
};

void confirm_ring_init(struct confirm_ring *ring); /* numbering starts at 1 */
void confirm_ring_free(struct confirm_ring *ring);
/* Makes room for one more; -1 when out of memory (then do not publish). */
int confirm_ring_reserve(struct confirm_ring *ring);
/* The publish just sent (after a successful reserve). */
void confirm_ring_push(struct confirm_ring *ring, uint64_t token);
/* The broker confirmed sequence (and, with multiple, all before it): calls
 * settle(data, token) for each publish newly confirmed, in order. */
void confirm_ring_settle(struct confirm_ring *ring, uint64_t sequence, int multiple,
                         void (*settle)(void *data, uint64_t token), void *data);

#endif

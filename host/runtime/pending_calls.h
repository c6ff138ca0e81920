/* Calls in flight by correlation id: a small chained hash table in C, so
 * that a reply's frame finds its call without touching Lua (a Lua table
 * access may allocate, and an allocation may run finalizers: Lua code on
 * the stack of a frame callback). */
#ifndef AD_PENDING_CALLS_H
#define AD_PENDING_CALLS_H

#include <stddef.h>
#include <stdint.h>

struct pending_link {
  struct pending_link *next;
  uint64_t hash;
  const char *key; /* owned by the entry (its correlation id) */
  size_t key_length;
};

struct pending_calls {
  struct pending_link **buckets;
  size_t bucket_count, count;
};

void pending_calls_init(struct pending_calls *table);
void pending_calls_free(struct pending_calls *table);
/* Returns 0, or -1 when out of memory (then nothing changed). */
int pending_calls_add(struct pending_calls *table, struct pending_link *link, const char *key,
                      size_t key_length);
/* Finds and removes the entry of key; NULL when there is none. */
struct pending_link *pending_calls_take(struct pending_calls *table, const char *key,
                                        size_t key_length);
void pending_calls_remove(struct pending_calls *table, struct pending_link *link);

#endif

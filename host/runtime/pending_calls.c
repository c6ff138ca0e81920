/* The pending calls' hash table: FNV-1a over the correlation id, chained
 * buckets, doubled when the load passes one entry per bucket. */
#include "pending_calls.h"

#include <stdlib.h>
#include <string.h>

#include "fnv1a.h"

#define FIRST_BUCKETS 64

static uint64_t hash_of(const char *key, size_t length) {
  return fnv1a(FNV1A_START, key, length);
}

void pending_calls_init(struct pending_calls *table) {
  table->buckets = NULL;
  table->bucket_count = table->count = 0;
}

void pending_calls_free(struct pending_calls *table) {
  free(table->buckets);
  pending_calls_init(table);
}

static int grow(struct pending_calls *table) {
  size_t count = table->bucket_count ? table->bucket_count * 2 : FIRST_BUCKETS;
  struct pending_link **buckets = calloc(count, sizeof *buckets);
  if (!buckets) return table->buckets ? 0 : -1; /* a full table still works */
  for (size_t i = 0; i < table->bucket_count; i++) {
    struct pending_link *link = table->buckets[i];
    while (link) {
      struct pending_link *next = link->next;
      size_t at = link->hash & (count - 1);
      link->next = buckets[at];
      buckets[at] = link;
      link = next;
    }
  }
  free(table->buckets);
  table->buckets = buckets;
  table->bucket_count = count;
  return 0;
}

int pending_calls_add(struct pending_calls *table, struct pending_link *link, const char *key,
                      size_t key_length) {
  if (table->count >= table->bucket_count && grow(table) != 0) return -1;
  link->hash = hash_of(key, key_length);
  link->key = key;
  link->key_length = key_length;
  size_t at = link->hash & (table->bucket_count - 1);
  link->next = table->buckets[at];
  table->buckets[at] = link;
  table->count++;
  return 0;
}

static struct pending_link **find(struct pending_calls *table, uint64_t hash, const char *key,
                                  size_t key_length) {
  if (!table->bucket_count) return NULL;
  for (struct pending_link **at = &table->buckets[hash & (table->bucket_count - 1)]; *at;
       at = &(*at)->next)
    if ((*at)->hash == hash && (*at)->key_length == key_length &&
        memcmp((*at)->key, key, key_length) == 0)
      return at;
  return NULL;
}

/* After a crowd of calls: a big empty table goes (the next add makes a small one). */
#define BUCKETS_KEPT_EMPTY 1024

static void shrink_when_empty(struct pending_calls *table) {
  if (table->count == 0 && table->bucket_count > BUCKETS_KEPT_EMPTY) pending_calls_free(table);
}

struct pending_link *pending_calls_take(struct pending_calls *table, const char *key,
                                        size_t key_length) {
  struct pending_link **at = find(table, hash_of(key, key_length), key, key_length);
  if (!at) return NULL;
  struct pending_link *link = *at;
  *at = link->next;
  link->next = NULL;
  table->count--;
  shrink_when_empty(table);
  return link;
}

void pending_calls_remove(struct pending_calls *table, struct pending_link *link) {
  if (!table->bucket_count) return;
  for (struct pending_link **at = &table->buckets[link->hash & (table->bucket_count - 1)]; *at;
       at = &(*at)->next)
    if (*at == link) {
      *at = link->next;
      link->next = NULL;
      table->count--;
      shrink_when_empty(table);
      return;
    }
}

/* A hash table with chaining and a list in insertion order (result_cache.h). */
#include "result_cache.h"

#include <stdlib.h>
#include <string.h>

#include "fnv1a.h"

void result_cache_init(struct result_cache *cache, size_t max_entries) {
  memset(cache, 0, sizeof *cache);
  cache->max_entries = max_entries;
}

uint64_t request_hash(const char *id, size_t id_length, const char *reply_to,
                      size_t reply_to_length) {
  static const char separator = 0;
  uint64_t hash = fnv1a(FNV1A_START, id, id_length);
  hash = fnv1a(hash, &separator, 1);
  return fnv1a(hash, reply_to, reply_to_length);
}

static size_t size_of(const struct kept_result *kept) {
  return sizeof *kept + kept->id_length + kept->reply_to_length + kept->body_length;
}

static void forget(struct result_cache *cache, struct kept_result *kept) {
  struct kept_result **at = &cache->buckets[kept->hash % RESULT_CACHE_BUCKETS];
  while (*at != kept) at = &(*at)->bucket_next;
  *at = kept->bucket_next;
  if (kept->older) kept->older->newer = kept->newer;
  else cache->oldest = kept->newer;
  if (kept->newer) kept->newer->older = kept->older;
  else cache->newest = kept->older;
  cache->entries--;
  cache->bytes -= size_of(kept);
  free(kept);
}

void result_cache_put(struct result_cache *cache, const char *id, size_t id_length,
                      const char *reply_to, size_t reply_to_length, int64_t expires_ms,
                      int failed, const char *body, size_t body_length) {
  size_t size = sizeof(struct kept_result) + id_length + reply_to_length + body_length;
  if (cache->max_entries == 0 || size > RESULT_CACHE_MAX_BYTES / 4) return;
  while (cache->oldest &&
         (cache->entries >= cache->max_entries || cache->bytes + size > RESULT_CACHE_MAX_BYTES))
    forget(cache, cache->oldest);
  struct kept_result *kept = malloc(size);
  if (!kept) return;
  kept->hash = request_hash(id, id_length, reply_to, reply_to_length);
  kept->expires_ms = expires_ms;
  kept->failed = failed;
  kept->id_length = id_length;
  kept->reply_to_length = reply_to_length;
  kept->body_length = body_length;
  memcpy(kept->data, id, id_length);
  memcpy(kept->data + id_length, reply_to, reply_to_length);
  memcpy(kept->data + id_length + reply_to_length, body, body_length);
  struct kept_result **bucket = &cache->buckets[kept->hash % RESULT_CACHE_BUCKETS];
  kept->bucket_next = *bucket;
  *bucket = kept;
  kept->newer = NULL;
  kept->older = cache->newest;
  if (cache->newest) cache->newest->newer = kept;
  else cache->oldest = kept;
  cache->newest = kept;
  cache->entries++;
  cache->bytes += size;
}

const struct kept_result *result_cache_get(struct result_cache *cache, const char *id,
                                           size_t id_length, const char *reply_to,
                                           size_t reply_to_length, int64_t now_ms) {
  uint64_t hash = request_hash(id, id_length, reply_to, reply_to_length);
  for (struct kept_result *kept = cache->buckets[hash % RESULT_CACHE_BUCKETS]; kept;
       kept = kept->bucket_next) {
    if (kept->hash != hash || kept->id_length != id_length ||
        kept->reply_to_length != reply_to_length || memcmp(kept->data, id, id_length) != 0 ||
        memcmp(kept->data + id_length, reply_to, reply_to_length) != 0)
      continue;
    if (kept->expires_ms < now_ms) {
      forget(cache, kept);
      return NULL;
    }
    return kept;
  }
  return NULL;
}

void result_cache_free(struct result_cache *cache) {
  while (cache->oldest) forget(cache, cache->oldest);
}

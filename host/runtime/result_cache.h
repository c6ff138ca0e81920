/* The replies a worker sent lately, kept by correlation id and reply_to, so
 * that a request the broker redelivers to this host after its reply or ack
 * was lost with the connection is answered again, not run again. Bounded by
 * entries and bytes (the oldest go first); an entry expires with its
 * request's deadline. One host only: a redelivery to another host runs. */
#ifndef AD_RESULT_CACHE_H
#define AD_RESULT_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define RESULT_CACHE_BUCKETS 1024
#define RESULT_CACHE_MAX_BYTES (8u * 1024u * 1024u)

struct kept_result {
  struct kept_result *bucket_next, *older, *newer;
  uint64_t hash;
  int64_t expires_ms;  /* wall clock */
  int failed;          /* an error reply */
  size_t id_length, reply_to_length, body_length;
  char data[];         /* correlation id, reply_to, body */
};

struct result_cache {
  struct kept_result *buckets[RESULT_CACHE_BUCKETS];
  struct kept_result *oldest, *newest;
  size_t entries, bytes, max_entries;
};

void result_cache_init(struct result_cache *cache, size_t max_entries); /* 0: keeps nothing */
/* A request's key: its correlation id and reply_to (also the worker's
 * redelivery counts). */
uint64_t request_hash(const char *id, size_t id_length, const char *reply_to,
                      size_t reply_to_length);
/* Keeps a copy (a failure to allocate only means it is not kept). */
void result_cache_put(struct result_cache *cache, const char *id, size_t id_length,
                      const char *reply_to, size_t reply_to_length, int64_t expires_ms,
                      int failed, const char *body, size_t body_length);
/* The reply kept for that request and not expired at now_ms, or NULL. */
const struct kept_result *result_cache_get(struct result_cache *cache, const char *id,
                                           size_t id_length, const char *reply_to,
                                           size_t reply_to_length, int64_t now_ms);
static inline const char *kept_result_body(const struct kept_result *kept) {
  return kept->data + kept->id_length + kept->reply_to_length;
}
void result_cache_free(struct result_cache *cache);

#endif

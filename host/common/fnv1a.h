/* FNV-1a, the one string hash of the project (pending calls by correlation
 * id, kept results and redelivery counts by correlation id and reply_to). */
#ifndef AD_FNV1A_H
#define AD_FNV1A_H

#include <stddef.h>
#include <stdint.h>

#define FNV1A_START 1469598103934665603ULL

static inline uint64_t fnv1a(uint64_t hash, const void *bytes, size_t length) {
  const unsigned char *at = bytes;
  for (size_t i = 0; i < length; i++) hash = (hash ^ at[i]) * 1099511628211ULL;
  return hash;
}

#endif

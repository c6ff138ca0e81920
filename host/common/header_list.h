/* Message headers without rabbitmq-c's types: a flat list of entries, each
 * a kind byte, the key and the value as NUL-ended text ("s" text, "i" an
 * integer in decimal, "b" "1" or "0"). The transport turns it into an AMQP
 * table and back; the runtime reads and builds it. */
#ifndef AD_HEADER_LIST_H
#define AD_HEADER_LIST_H

#include <stddef.h>
#include <stdint.h>

#include "byte_buffer.h"

#define HEADER_TEXT 's'
#define HEADER_INTEGER 'i'
#define HEADER_BOOLEAN 'b'

#define HEADER_KEY_MAX 255          /* an AMQP shortstr */
#define HEADER_LIST_MAX_BYTES 8192  /* what a request carries at most; more is dropped */
#define HEADER_LIST_MAX_ENTRIES 64

struct header {
  char kind;
  const char *key, *value; /* NUL-ended, inside the list */
  size_t key_length, value_length;
};

/* Appends one entry; -1 (list unchanged) when out of memory or over the
 * limits above. */
int header_list_add(byte_buffer *list, char kind, const char *key, size_t key_length,
                    const char *value, size_t value_length);
int header_list_add_integer(byte_buffer *list, const char *key, int64_t value);
/* Walks the list: *cursor starts at 0. Returns 1 with *header set, 0 at the end. */
int header_list_next(const char *list, size_t length, size_t *cursor, struct header *header);
/* The entry named key (the first), or 0. */
int header_list_find(const char *list, size_t length, const char *key, struct header *header);
/* The entry's integer value (an "i", or text that is one); 0 when it is none. */
int header_integer(const struct header *header, int64_t *value);

#endif

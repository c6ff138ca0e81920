/* A growable byte buffer owned by its caller.
 * The JSON encoder appends into one; the owner reuses it across messages
 * (byte_buffer_reset keeps the memory), so steady state does no malloc. */
#ifndef AMQP_DELEGATE_BYTE_BUFFER_H
#define AMQP_DELEGATE_BYTE_BUFFER_H

#include <stddef.h>

typedef struct byte_buffer {
  char *data;       /* NULL until the first reservation; not NUL-terminated */
  size_t length;    /* bytes in use */
  size_t capacity;  /* bytes allocated */
} byte_buffer;

void byte_buffer_init(byte_buffer *b);

/* Makes room for at least `extra` more bytes after `length`.
 * Returns 0, or -1 (buffer unchanged) if memory is exhausted or the size overflows. */
int byte_buffer_reserve(byte_buffer *b, size_t extra);

/* Appends n bytes. Returns 0, or -1 (buffer unchanged) on allocation failure. */
int byte_buffer_append(byte_buffer *b, const void *bytes, size_t n);

/* Forgets the contents (length = 0) but keeps the memory for reuse. */
void byte_buffer_reset(byte_buffer *b);

/* Gives back what is allocated beyond length (a buffer kept a long time). */
void byte_buffer_fit(byte_buffer *b);

/* Releases the memory; the buffer is left empty and may be reused. */
void byte_buffer_free(byte_buffer *b);

#endif

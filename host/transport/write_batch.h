/* Writes collected per connection: rabbitmq-c 0.11 sends every frame with
 * its own send(2) (a publish is three), so a loop turn that answers 64
 * requests made 256 system calls and as many wake-ups of the broker. A
 * batch takes the frames rabbitmq-c sends and writes them together, once,
 * when its owner releases the hold (the end of what the loop does in one
 * go), or at once when nothing holds it. Nothing waits for more work: a
 * batch is never held past the code that filled it. */
#ifndef AD_WRITE_BATCH_H
#define AD_WRITE_BATCH_H

#include <stddef.h>

#include <amqp.h>

struct write_batch_class; /* rabbitmq-c's socket class, with our send */

struct write_batch {
  struct write_batch_class *klass; /* NULL: not attached (TLS, another rabbitmq-c) */
  const int *held;                 /* > 0: collect, the owner writes them later */
  void (*on_full)(void *owner);    /* a write left bytes: the socket is full */
  void *owner;
  int fd;                          /* -1 once rabbitmq-c closed the socket */
  int failed;                      /* a write failed: every later send fails */
  char *data;
  size_t sent, length, capacity;   /* data[sent, length) waits to be written */
  unsigned long writes, frames;    /* counts, for the benchmark's figures */
};

/* Puts the batch between the connection and its plain TCP socket; returns
 * 0, or -1 when it cannot (TLS, a rabbitmq-c whose socket class this does
 * not know, out of memory): then rabbitmq-c writes as it always did. */
int write_batch_attach(struct write_batch *batch, amqp_connection_state_t amqp,
                       const int *held, void (*on_full)(void *owner), void *owner);
/* Writes what waits, without blocking: 0 all written, 1 the socket is full
 * (write again once it is writable), -1 the connection failed. */
int write_batch_flush(struct write_batch *batch);
int write_batch_pending(const struct write_batch *batch);
/* After rabbitmq-c let go of the socket (amqp_destroy_connection). */
void write_batch_free(struct write_batch *batch);

#endif

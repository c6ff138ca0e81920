/* The write batch of write_batch.h. rabbitmq-c hands every frame to its
 * socket object's send; the batch replaces that one function in a copy of
 * the socket's class (the rest stays rabbitmq-c's), appends the frame, and
 * writes when nothing holds it and rabbitmq-c says no more frames follow
 * (AMQP_SF_MORE: a publish's method and header frames). */
#include "write_batch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>

/* rabbitmq-c 0.11's socket class (librabbitmq/amqp_socket.h, not
 * installed): every socket object starts with a pointer to it. */
struct socket_class {
  ssize_t (*send)(void *self, const void *bytes, size_t length, int flags);
  ssize_t (*recv)(void *self, void *bytes, size_t length, int flags);
  int (*open)(void *self, const char *host, int port, const struct timeval *timeout);
  int (*close)(void *self, int force);
  int (*get_sockfd)(void *self);
  void (*delete)(void *self);
};

struct socket_object {
  const struct socket_class *klass;
};

#define SF_MORE 1                /* AMQP_SF_MORE: more frames of one message follow */
#define STATUS_NEED_WRITE -0x1302 /* AMQP_PRIVATE_STATUS_SOCKET_NEEDWRITE: poll, then again */
#define KNOWN_VERSION 0x000B     /* 0.11 (major << 8 | minor) */

#define FIRST_CAPACITY 4096
#define KEPT_CAPACITY 65536        /* more is freed once written */
#define BATCH_LIMIT (1024 * 1024) /* then rabbitmq-c waits for the socket, as without us */

struct write_batch_class {
  struct socket_class methods; /* first: the socket's klass points here */
  const struct socket_class *original;
  struct write_batch *batch;
};

static struct write_batch_class *class_of(void *self) {
  return (struct write_batch_class *)((struct socket_object *)self)->klass;
}

static size_t waiting(const struct write_batch *batch) { return batch->length - batch->sent; }

static int append(struct write_batch *batch, const void *bytes, size_t length) {
  if (batch->length + length > batch->capacity && batch->sent > 0) {
    memmove(batch->data, batch->data + batch->sent, waiting(batch));
    batch->length -= batch->sent;
    batch->sent = 0;
  }
  if (batch->length + length > batch->capacity) {
    size_t capacity = batch->capacity ? batch->capacity : FIRST_CAPACITY;
    while (capacity < batch->length + length) capacity *= 2;
    char *data = realloc(batch->data, capacity);
    if (!data) return -1;
    batch->data = data;
    batch->capacity = capacity;
  }
  memcpy(batch->data + batch->length, bytes, length);
  batch->length += length;
  return 0;
}

int write_batch_flush(struct write_batch *batch) {
  if (!batch->klass) return 0;
  if (batch->failed || batch->fd < 0) return waiting(batch) || batch->failed ? -1 : 0;
  while (batch->sent < batch->length) {
    ssize_t written = send(batch->fd, batch->data + batch->sent, waiting(batch), MSG_NOSIGNAL);
    if (written > 0) {
      batch->sent += (size_t)written;
      batch->writes++;
    } else if (written < 0 && errno == EINTR) {
      continue;
    } else if (written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (batch->on_full) batch->on_full(batch->owner);
      return 1;
    } else {
      batch->failed = 1;
      return -1;
    }
  }
  batch->sent = batch->length = 0;
  if (batch->capacity > KEPT_CAPACITY) { /* a burst is over: idle memory stays small */
    free(batch->data);
    batch->data = NULL;
    batch->capacity = 0;
  }
  return 0;
}

int write_batch_pending(const struct write_batch *batch) { return waiting(batch) > 0; }

/* rabbitmq-c counts what it was given as sent; a failure shows at its next
 * send, or to the owner at its flush. */
static ssize_t batched_send(void *self, const void *bytes, size_t length, int flags) {
  struct write_batch *batch = class_of(self)->batch;
  if (batch->failed || batch->fd < 0) return AMQP_STATUS_SOCKET_ERROR;
  if (waiting(batch) + length > BATCH_LIMIT) {
    if (write_batch_flush(batch) < 0) return AMQP_STATUS_SOCKET_ERROR;
    /* still full: nothing taken, rabbitmq-c polls for writable and sends again */
    if (waiting(batch) + length > BATCH_LIMIT) return STATUS_NEED_WRITE;
  }
  if (append(batch, bytes, length) != 0) return AMQP_STATUS_NO_MEMORY;
  batch->frames++;
  /* a full socket leaves the rest to the owner's writable watch (on_full) */
  if (*batch->held <= 0 && !(flags & SF_MORE) && write_batch_flush(batch) < 0)
    return AMQP_STATUS_SOCKET_ERROR;
  return (ssize_t)length;
}

/* Once rabbitmq-c closed it, the descriptor's number may name another
 * socket: nothing is written to it any more. */
static int batched_close(void *self, int force) {
  struct write_batch_class *klass = class_of(self);
  klass->batch->fd = -1;
  return klass->original->close(self, force);
}

int write_batch_attach(struct write_batch *batch, amqp_connection_state_t amqp,
                       const int *held, void (*on_full)(void *owner), void *owner) {
  memset(batch, 0, sizeof *batch);
  batch->fd = -1;
  if ((amqp_version_number() >> 16) != KNOWN_VERSION) return -1;
  struct socket_object *socket = (struct socket_object *)amqp_get_socket(amqp);
  int fd = amqp_get_sockfd(amqp);
  if (!socket || fd < 0) return -1;
  struct write_batch_class *klass = malloc(sizeof *klass);
  if (!klass) return -1;
  klass->methods = *socket->klass;
  klass->methods.send = batched_send;
  klass->methods.close = batched_close;
  klass->original = socket->klass;
  klass->batch = batch;
  batch->klass = klass;
  batch->held = held;
  batch->on_full = on_full;
  batch->owner = owner;
  batch->fd = fd;
  socket->klass = &klass->methods;
  return 0;
}

void write_batch_free(struct write_batch *batch) {
  free(batch->klass);
  free(batch->data);
  memset(batch, 0, sizeof *batch);
  batch->fd = -1;
}

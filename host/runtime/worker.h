/* A worker: serves one queue named after it. Each request runs the task as a
 * fiber; its result (or its error) is published to the request's reply_to
 * with the request's correlation_id, then the request is acked. Its
 * connection, reconnection and stop are the shared lifecycle's. */
#ifndef AD_WORKER_H
#define AD_WORKER_H

#include <lua.h>

#include "byte_buffer.h"
#include "connection.h"
#include "lifecycle.h"
#include "metrics_text.h"
#include "result_cache.h"
#include "runtime.h"

/* User values of the worker's userdata, set by the Lua binding. */
#define WORKER_TASK_SLOT 1
#define WORKER_ON_ERROR_SLOT 2
#define WORKER_ON_CLOSE_SLOT 3
#define WORKER_SLOTS 3

/* The wire's content type for error replies (property `type`): Node callers
 * read only the body, ours raise the error it carries. */
#define ERROR_REPLY_TYPE "error"

#define WORKER_RESULT_CACHE 1000 /* replies kept by default */

/* The worker's queue. The default is the Node protocol's: a classic queue,
 * not durable, not exclusive, not auto-deleted (which RabbitMQ 4.3 refuses
 * by default). Either way a queue that exists already is used as it is. */
struct worker_queue {
  const char *type; /* NULL (the default), "classic" or "quorum" */
  int durable;      /* quorum queues always are */
};

struct task_context;

struct worker_options {
  int prefetch;
  int max_depth;
  struct worker_queue queue;
  int delivery_limit; /* earlier deliveries after which a request is refused; 0: none */
  int confirms;       /* ack a request only once the broker confirmed its reply */
  int ack_early;      /* ack on receipt: at-most-once, for tasks longer than consumer_timeout */
};

/* Redeliveries this host saw, for queues that do not count them (classic):
 * a small table keyed by a hash of correlation id and reply_to, where a
 * collision only forgets a count. */
#define REDELIVERY_SLOTS 1024

struct redelivery_count {
  uint64_t key;
  uint32_t count;
};

struct worker {
  struct lifecycle lifecycle; /* url, connection options, reconnect_max: set by the binding */
  struct runtime *runtime;
  char name[SHORT_STRING_MAX];
  struct worker_options options;
  unsigned generation; /* counts channels: a task's reply goes only to its own */
  struct short_string consumer_tag;
  int in_flight;       /* requests taken and not yet answered (queued or running) */
  int unconfirmed;     /* replies sent, waiting for the broker's confirm before the ack */
  int probing;         /* setup: the passive declare is under way */
  int declare_queue;   /* setup: the passive declare said there is none: make it */
  struct redelivery_count *redeliveries; /* allocated at the first redelivery */
  struct task_context *running; /* the tasks running now (in their fibers' contexts) */
  byte_buffer reply;
  struct result_cache results; /* replies sent lately: a redelivery is answered again */
  unsigned long served, failed, refused_over_limit, expired, answered_from_cache;
  unsigned long redelivered;            /* deliveries flagged redelivered (metrics) */
  struct duration_histogram durations;  /* the tasks that ran, start to answer */
};

void worker_init(struct worker *worker, struct runtime *runtime);
/* Connects, declares the queue, sets prefetch and consumes; waits until it
 * serves (lua_CFunction style: it may yield). Raises on error. */
int worker_start(struct worker *worker, lua_State *L, int self);
/* Cancels the consumer, lets the tasks in hand finish and reply, closes.
 * Waits when called from plain Lua; from a task it returns at once and the
 * stop completes when the last task has answered. */
void worker_stop(struct worker *worker, lua_State *L);
/* __gc: the state is closing; nothing more will run. */
void worker_release(struct worker *worker);

#endif

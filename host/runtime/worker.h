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
#include "runtime.h"

/* User values of the worker's userdata, set by the Lua binding. */
#define WORKER_TASK_SLOT 1
#define WORKER_ON_ERROR_SLOT 2
#define WORKER_ON_CLOSE_SLOT 3
#define WORKER_SLOTS 3

/* The wire's content type for error replies (property `type`): Node callers
 * read only the body, ours raise the error it carries. */
#define ERROR_REPLY_TYPE "error"

struct worker_options {
  int prefetch;
  int max_depth;
};

struct worker {
  struct lifecycle lifecycle; /* url, connection options, reconnect_max: set by the binding */
  struct runtime *runtime;
  char name[SHORT_STRING_MAX];
  struct worker_options options;
  unsigned generation; /* counts channels: a task's reply goes only to its own */
  struct short_string consumer_tag;
  int in_flight;       /* requests taken and not yet answered (queued or running) */
  byte_buffer reply;
  unsigned long served, failed;
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

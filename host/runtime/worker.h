/* A worker: serves one queue named after it. Each request runs the task as a
 * fiber; its result (or its error) is published to the request's reply_to
 * with the request's correlation_id, then the request is acked. */
#ifndef AD_WORKER_H
#define AD_WORKER_H

#include <lua.h>

#include "byte_buffer.h"
#include "connection.h"
#include "reconnect.h"
#include "runtime.h"
#include "url.h"

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
  double reconnect_max; /* seconds, the backoff cap; 0: no reconnection */
  struct connection_options connection;
};

enum worker_state { WORKER_STOPPED, WORKER_RUNNING, WORKER_STOPPING, WORKER_RECONNECTING };

struct worker {
  struct service service; /* first: serve() hands it back to worker_stop */
  struct runtime *runtime;
  char name[SHORT_STRING_MAX];
  struct amqp_url url;
  struct worker_options options;
  struct connection *connection;
  unsigned generation; /* counts connections: a task's reply goes only to its own */
  struct reconnect reconnect;
  struct short_string consumer_tag;
  enum worker_state state;
  int stopped;    /* set when a stop completes: plain callers wait on it */
  int in_flight;  /* tasks taken and not yet answered */
  int self_ref;   /* anchors the userdata while it runs tasks */
  byte_buffer reply;
  unsigned long served, failed;
};

/* Called by the binding with the userdata at index `self`. */
void worker_init(struct worker *worker, struct runtime *runtime);
/* Connects, declares the queue, sets prefetch and consumes. Raises on error. */
void worker_start(struct worker *worker, lua_State *L, int self);
/* Cancels the consumer, lets the tasks in hand finish and reply, closes.
 * Waits when called from plain Lua; from a task it returns at once and the
 * stop completes when the last task has answered. */
void worker_stop(struct worker *worker, lua_State *L);
/* __gc: the state is closing; nothing more will run. */
void worker_release(struct worker *worker);

#endif

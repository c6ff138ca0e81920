/* A delegator: calls workers by name. One exclusive reply queue per
 * delegator; calls are matched to replies by correlation id (a C table);
 * a call waits by yielding its fiber, or, from plain Lua, by running the
 * loop. A call made while the delegator is not connected (reconnecting) or
 * while the broker blocks publishing is held and sent once it can be,
 * within its timeout. Requests go with publisher confirms: a call the broker
 * did not take ends NOT_CONFIRMED, unless it may be re-sent (retry = n, for
 * idempotent calls): then it goes again, through the next node when its
 * node was lost. Calls end with their reply, NO_ROUTE, TIMEOUT,
 * NOT_CONFIRMED, CONNECTION_LOST (taken, then the connection died) or
 * STOPPED. */
#ifndef AD_DELEGATOR_H
#define AD_DELEGATOR_H

#include <lua.h>

#include "byte_buffer.h"
#include "connection.h"
#include "lifecycle.h"
#include "pending_calls.h"
#include "queue_probe.h"
#include "runtime.h"
#include "served_names.h"

#define CALL_MT "amqp_delegate.call"
#define CORRELATION_ID_LENGTH 36 /* a UUID in text */

/* User values of the delegator's userdata, set by the Lua binding. */
#define DELEGATOR_ON_ERROR_SLOT 1
#define DELEGATOR_ON_CLOSE_SLOT 2
#define DELEGATOR_SLOTS 2

struct delegator_options {
  int max_depth;
  double timeout; /* seconds; 0: calls wait as long as it takes */
  int retry;      /* the calls' default number of re-sends (idempotent calls) */
  int confirms;   /* publish requests with publisher confirms */
  int check_workers; /* ask the broker whether a name has a worker before its first call */
};

struct delegator;

/* One call: a userdata whose user value is its delegator. */
struct call {
  struct delegator *delegator;
  struct call *previous, *next; /* in flight, ordered by deadline */
  struct call *unconfirmed_previous, *unconfirmed_next; /* sent, not yet confirmed */
  struct pending_link link;     /* by correlation id, once sent */
  struct job done_job;          /* wakes its waiter from the loop's one place */
  int in_flight, sent, done;
  int unconfirmed;              /* in the delegator's unconfirmed list */
  int confirmed;                /* the broker took the request */
  int retries_left;             /* re-sends allowed (nack, node lost, no route) */
  int probing;                  /* held until the broker says whether a worker serves it */
  int probed;                   /* asked already: it goes out whatever the answer was */
  int answered;                 /* the question was answered, or the call ended */
  int status_only;              /* delegator:status(): the answer is the result */
  int queue_exists;             /* status_only: what the broker said */
  uint32_t consumers, messages;
  uint64_t serial;              /* the request's confirm token */
  uint64_t resend_at;           /* loop time (ms) a returned request goes again; 0: now */
  int anchor;                   /* registry reference while in flight */
  uint64_t deadline;            /* loop time in ms; UINT64_MAX: none */
  int64_t deadline_ms;          /* the x-deadline header: wall clock ms; 0: none */
  double timeout;
  struct fiber *fiber;          /* waiting fiber, or NULL */
  int failed;                   /* error holds why (NO_ROUTE, TIMEOUT...) */
  struct ad_error *error;       /* allocated when it fails: most calls never do */
  int error_reply;              /* the worker answered with an error */
  /* The request while it may go (again): held, or retry > 0; then the
   * reply. Sized to what it holds: 100 000 calls in flight hold no more. */
  byte_buffer body;
  byte_buffer headers;          /* the request's (header_list.h), kept for a re-send */
  char correlation_id[CORRELATION_ID_LENGTH + 1];
  char worker[];                /* its name, as long as it is */
};

struct delegator_stats {
  unsigned long sent, replied, failed, timed_out, returned, unknown_replies, retried,
      not_confirmed, no_worker, worker_checks;
};

struct delegator {
  struct lifecycle lifecycle; /* url, connection options, reconnect_max: set by the binding */
  struct runtime *runtime;
  struct delegator_options options;
  struct short_string reply_queue;
  struct call *calls; /* in flight: head has the nearest deadline */
  struct call *last_call;
  struct call *unconfirmed_first, *unconfirmed_last; /* in publish order */
  uint64_t next_serial;
  uv_timer_t *resend_timer; /* returned requests wait a moment before they go again */
  unsigned long acks_on_channel; /* confirms this channel gave; 0: it never took one */
  unsigned nack_reopens;         /* channels given up for refusing from the start, in a row */
  int reopening;                 /* that reopen is under way: its refused calls go again free */
  unsigned long in_flight;
  unsigned long crowd;           /* the most calls in flight since memory was last given back */
  unsigned long released;        /* calls collected since then */
  struct pending_calls pending;
  uv_timer_t *deadline_timer;
  uint64_t random_state[2];
  uint64_t last_send; /* loop time of the last send, to notice an idle REPL */
  struct delegator_stats stats;
  struct queue_probe probe;    /* passive declares, on a channel of its own */
  uv_timer_t *probe_timer;     /* the probe's deadline */
  struct served_names served;  /* names seen with a consumer: their calls go out at once */
};

/* Per-call options; timeout < 0 means the delegator's. */
struct call_options {
  double timeout;
  int retry;           /* < 0: the delegator's */
  const char *headers; /* the caller's own (header_list.h), NULL for none */
  size_t headers_length;
};

void delegator_init(struct delegator *delegator, struct runtime *runtime);
/* Connects and declares the reply queue; waits until ready (may yield). */
int delegator_start(struct delegator *delegator, lua_State *L, int self);
/* Ends the calls in flight with STOPPED and closes. Raises NOT_STARTED. */
void delegator_stop(struct delegator *delegator, lua_State *L);
void delegator_release(struct delegator *delegator);

/* Sends (or holds) a call to worker `name` with the values at first..last
 * and pushes its handle (a call userdata). */
struct call *delegator_send(struct delegator *delegator, lua_State *L, int self,
                            const struct call_options *options, const char *name, int first,
                            int last);
/* Pushes the handle of a question to the broker about worker `name`'s queue
 * (delegator:status): its result is {name, exists, consumers, waiting}. */
struct call *delegator_status(struct delegator *delegator, lua_State *L, int self,
                              const char *name);
/* Waits for the call at `index` and returns the number of results pushed
 * (lua_CFunction style; it yields inside a fiber). Raises the call's error. */
int call_wait(lua_State *L, int index);
/* __gc of a call userdata. */
void call_release(struct call *call, lua_State *L);

#endif

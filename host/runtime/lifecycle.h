/* The one lifecycle of workers and delegators, written once:
 *
 *   stopped -> starting (channel, then the owner's setup requests, all
 *   bounded by connect_timeout) -> ready -> lost -> backoff -> starting ...
 *   ready -> stopping (the owner drains) -> stopped
 *
 * With several brokers (a cluster) it connects to one of them, in an order
 * shuffled once per process and list (so owners with the same list share a
 * connection, as different processes spread over the nodes), fails over to
 * the next at once when its node is lost or refuses, and backs off only
 * after a whole round has failed.
 *
 * It anchors the owner's userdata while it is not stopped, runs the hooks
 * (on_error, on_close) from the job queue once the state is consistent, and
 * makes start() and stop() waits that work from plain Lua, a task or a hook.
 * Owners say what is theirs through lifecycle_ops; none of those callbacks
 * may run Lua. */
#ifndef AD_LIFECYCLE_H
#define AD_LIFECYCLE_H

#include <lua.h>

#include "connection.h"
#include "runtime.h"

enum lifecycle_state {
  LIFECYCLE_STOPPED,
  LIFECYCLE_STARTING,
  LIFECYCLE_READY,
  LIFECYCLE_BACKOFF,
  LIFECYCLE_STOPPING
};

struct lifecycle_ops {
  /* Starting: the channel opened (reply->step == STEP_OPEN) or a setup
   * request was answered. Returns 0 after sending the next request, 1 when
   * the owner is ready, -1 with error set. */
  int (*setup)(void *owner, struct channel *channel, const struct channel_reply *reply,
               struct ad_error *error);
  /* May be NULL. Starting: the broker closed the channel (error). Returns 1
   * to open a new channel on the same node at once (the owner asked a
   * question whose "no" closes the channel: a passive declare), else 0; it
   * may add advice to the error. */
  int (*setup_closed)(void *owner, struct ad_error *error);
  void (*ready)(void *owner);
  /* The channel is gone (error) or being given up (stop): what depended on
   * it ends now. */
  void (*lost)(void *owner, const struct ad_error *error);
  void (*message)(void *owner, const struct message *message);
  void (*returned)(void *owner, const struct message *message); /* may be NULL */
  void (*confirmed)(void *owner, uint64_t token, int ack);        /* may be NULL */
  /* Stopping: begin (cancel the consumer, end the calls), then 1 once
   * nothing is left in hand. */
  void (*begin_stop)(void *owner);
  int (*drained)(void *owner);
  void (*stopped)(void *owner); /* may be NULL: logs its figures */
};

struct lifecycle {
  struct runtime *runtime;
  const struct lifecycle_ops *ops;
  void *owner;
  char label[300]; /* "worker 'adder'", "delegator": logs and errors */
  enum lifecycle_state state;
  struct url_list brokers; /* at least one, set by the binding */
  int order[URL_LIST_MAX]; /* the brokers' shuffled order */
  int position;            /* in order: the broker in use or being tried */
  int round_failures;      /* brokers that failed in a row */
  struct connection_options options;
  double reconnect_max; /* seconds, the backoff cap; 0: a loss stops it */
  double start_patience; /* seconds the first start keeps trying (a host started before its
                            broker); 0: it fails after one round of the brokers */
  uint64_t start_began;  /* loop time (ms) of that first start */
  int on_error_slot, on_close_slot; /* user values of the owner holding the hooks */
  struct channel *channel;
  uv_timer_t *timer; /* the setup's deadline, then the backoff */
  double delay;
  unsigned attempts;
  int self_ref;      /* the owner's userdata, anchored while not stopped */
  /* the start() under way: its outcome, and the fiber that waits for it */
  int first_start, start_done, start_failed;
  struct ad_error start_error;
  struct fiber *start_waiter;
  /* plain stop()'s own flag, set once when this stop completes (a flag of
   * the lifecycle would not do: an on_close hook may start() it again in
   * the same loop turn) */
  int *stop_waiter;
  int stop_overdue; /* stopping for longer than connect_timeout: stop waiting on the broker */
  struct ad_error reopen_why; /* lifecycle_reopen: logged and given to ops->lost */
  double reopen_delay;
  int was_open;
  /* hooks due, run from the job queue */
  struct job hooks_job;
  int error_hook_due, close_hook_due, unref_due;
  struct ad_error hook_error;
  struct ad_error last_logged; /* a failing reconnect logs each new error once */
  struct service service;
  int is_service; /* workers: serve() waits for them; delegators are not services */
  unsigned long reconnections; /* channels regained after a loss (metrics) */
  struct lifecycle *registered_previous, *registered_next; /* runtime->lifecycles */
};

void lifecycle_init(struct lifecycle *lifecycle, struct runtime *runtime,
                    const struct lifecycle_ops *ops, void *owner, int is_service);
/* Connects and runs the owner's setup; waits (yields in a fiber) until ready.
 * Raises ALREADY_STARTED, CANNOT_WAIT, or why the start failed. */
int lifecycle_start(struct lifecycle *lifecycle, lua_State *L, int self);
/* Begins a graceful stop; from plain Lua, waits until it is stopped. Raises
 * NOT_STARTED. */
void lifecycle_stop(struct lifecycle *lifecycle, lua_State *L);
/* Ready, the owner finds its channel unfit (RabbitMQ refuses every publish
 * of a channel opened while a quorum queue elects its leader): from the
 * loop, after delay seconds, it gets a new channel on the same broker; what
 * depended on the old one ends as for a loss (ops->lost). */
void lifecycle_reopen(struct lifecycle *lifecycle, const struct ad_error *why, double delay);
/* The owner's in-hand work changed: a stop may complete now. */
void lifecycle_check_drained(struct lifecycle *lifecycle);
/* __gc: the state is closing; nothing more will run. */
void lifecycle_release(struct lifecycle *lifecycle);

static inline struct channel *lifecycle_channel(const struct lifecycle *lifecycle) {
  return lifecycle->state == LIFECYCLE_READY || lifecycle->state == LIFECYCLE_STOPPING
             ? lifecycle->channel
             : NULL;
}

/* The broker in use (or being tried). */
const struct amqp_url *lifecycle_url(const struct lifecycle *lifecycle);

/* "stopped", "starting", `ready`, "reconnecting" or "stopping" */
const char *lifecycle_state_name(const struct lifecycle *lifecycle, const char *ready);

#endif

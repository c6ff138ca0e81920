/* A delegator: calls workers by name. One exclusive reply queue per
 * delegator; calls are matched to replies by correlation id; a call waits by
 * yielding its fiber, or, from plain Lua, by running the loop. Calls end with
 * their reply, NO_ROUTE, TIMEOUT, CONNECTION_LOST or STOPPED; a lost
 * connection is reopened with backoff. */
#ifndef AD_DELEGATOR_H
#define AD_DELEGATOR_H

#include <lua.h>

#include "byte_buffer.h"
#include "connection.h"
#include "reconnect.h"
#include "runtime.h"
#include "url.h"

#define CALL_MT "amqp_delegate.call"

/* User values of the delegator's userdata, set by the Lua binding. */
#define DELEGATOR_PENDING_SLOT 1 /* correlation id -> call, anchors calls in flight */
#define DELEGATOR_ON_ERROR_SLOT 2
#define DELEGATOR_ON_CLOSE_SLOT 3
#define DELEGATOR_SLOTS 3

struct delegator_options {
  int max_depth;
  double timeout;       /* seconds; 0: calls wait as long as it takes */
  double reconnect_max; /* seconds, the backoff cap; 0: no reconnection */
  struct connection_options connection;
};

struct delegator;

/* One call: a userdata whose user value is its delegator. */
struct call {
  struct delegator *delegator;
  struct call *previous, *next; /* in flight, ordered by deadline */
  int in_flight;
  uint64_t deadline; /* loop time in ms; UINT64_MAX: none */
  double timeout;
  struct fiber *fiber; /* waiting fiber, or NULL */
  int done;
  int failed; /* error holds why (NO_ROUTE, TIMEOUT, CONNECTION_LOST...) */
  struct ad_error error;
  int error_reply; /* the worker answered with an error */
  byte_buffer body;
  struct short_string correlation_id;
  char worker[SHORT_STRING_MAX];
};

enum delegator_state { DELEGATOR_STOPPED, DELEGATOR_CONNECTED, DELEGATOR_RECONNECTING };

struct delegator_stats {
  unsigned long sent, replied, failed, timed_out, returned, unknown_replies;
};

struct delegator {
  struct runtime *runtime;
  struct amqp_url url;
  struct delegator_options options;
  struct connection *connection;
  enum delegator_state state;
  int self_ref;
  struct short_string reply_queue;
  struct call *calls;      /* in flight: head has the nearest deadline */
  struct call *last_call;
  unsigned long in_flight;
  uv_timer_t *deadline_timer;
  struct reconnect reconnect;
  byte_buffer request;
  uint64_t random_state[2];
  struct delegator_stats stats;
};

/* Per-call options; timeout < 0 means the delegator's. */
struct call_options {
  double timeout;
};

void delegator_init(struct delegator *delegator, struct runtime *runtime);
/* Connects and declares the reply queue. Raises on error. */
void delegator_start(struct delegator *delegator, lua_State *L, int self);
/* Ends the calls in flight with STOPPED and closes. Raises NOT_STARTED. */
void delegator_stop(struct delegator *delegator, lua_State *L);
void delegator_release(struct delegator *delegator);

/* Publishes a call to worker `name` with the values at first..last and
 * pushes its handle (a call userdata). Raises when it cannot be sent. */
struct call *delegator_send(struct delegator *delegator, lua_State *L, int self,
                            const struct call_options *options, const char *name, int first,
                            int last);
/* Waits for the call at `index` and returns the number of results pushed
 * (lua_CFunction style; it yields inside a fiber). Raises the call's error. */
int call_wait(lua_State *L, int index);
/* __gc of a call userdata. */
void call_release(struct call *call);

#endif

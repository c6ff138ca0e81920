/* A delegator: calls workers by name. One exclusive reply queue per
 * delegator; calls are matched to replies by correlation id; a call waits by
 * yielding its fiber, or, from plain Lua, by running the loop. */
#ifndef AD_DELEGATOR_H
#define AD_DELEGATOR_H

#include <lua.h>

#include "byte_buffer.h"
#include "connection.h"
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
  struct connection_options connection;
};

struct delegator;

/* One call in flight: a userdata whose user value is its delegator. */
struct call {
  struct delegator *delegator;
  struct call *previous, *next; /* the delegator's calls in flight */
  int in_flight;
  struct fiber *fiber; /* waiting fiber, or NULL */
  int done;
  int failed; /* error holds why (NO_ROUTE, CONNECTION_LOST...) */
  struct ad_error error;
  int error_reply; /* the worker answered with an error */
  byte_buffer body;
  struct short_string correlation_id;
  char worker[SHORT_STRING_MAX];
};

struct delegator {
  struct runtime *runtime;
  struct amqp_url url;
  struct delegator_options options;
  struct connection *connection;
  int started;
  int self_ref;
  struct short_string reply_queue;
  struct call *calls;
  byte_buffer request;
  uint64_t random_state[2];
  unsigned long unknown_replies;
};

void delegator_init(struct delegator *delegator, struct runtime *runtime);
/* Connects and declares the reply queue. Raises on error. */
void delegator_start(struct delegator *delegator, lua_State *L, int self);
/* Ends the calls in flight with STOPPED and closes. Raises NOT_STARTED. */
void delegator_stop(struct delegator *delegator, lua_State *L);
void delegator_release(struct delegator *delegator);

/* Calls worker `name` with the values at first..last; returns the number of
 * results pushed (lua_CFunction style; it may yield inside a fiber). */
int delegator_invoke(struct delegator *delegator, lua_State *L, int self, const char *name,
                     int first, int last);

/* __gc of a call userdata. */
void call_release(struct call *call);

#endif

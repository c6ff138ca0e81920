/* The delegator side of the protocol (PROTOCOL.md "A delegator"), with one
 * reply queue per delegator instead of one per call: requests are published
 * mandatory with a UUID v4 correlation id and reply_to = our queue; replies
 * find their call through the pending table; basic.return ends a call with
 * NO_ROUTE at once. */
#include "delegator.h"

#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "error_object.h"
#include "hooks.h"
#include "json.h"
#include "log.h"
#include "worker.h"

void delegator_init(struct delegator *delegator, struct runtime *runtime) {
  memset(delegator, 0, sizeof *delegator);
  delegator->runtime = runtime;
  delegator->self_ref = LUA_NOREF;
  byte_buffer_init(&delegator->request);
}

/* ---- correlation ids ---- */

static uint64_t next_random(struct delegator *delegator) {
  /* xorshift128+: seeded from the OS once per delegator; ids only need to
   * be unique, and a syscall per call would cost more than the call. */
  uint64_t *s = delegator->random_state;
  uint64_t x = s[0];
  const uint64_t y = s[1];
  s[0] = y;
  x ^= x << 23;
  s[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
  return s[1] + y;
}

static void new_correlation_id(struct delegator *delegator, struct short_string *id) {
  uint64_t high = next_random(delegator), low = next_random(delegator);
  high = (high & ~0xf000ULL) | 0x4000ULL;                        /* version 4 */
  low = (low & 0x3fffffffffffffffULL) | 0x8000000000000000ULL; /* variant 1 */
  id->length = (size_t)snprintf(id->bytes, sizeof id->bytes, "%08x-%04x-%04x-%04x-%012llx",
                                (unsigned)(high >> 32), (unsigned)((high >> 16) & 0xffff),
                                (unsigned)(high & 0xffff), (unsigned)(low >> 48),
                                (unsigned long long)(low & 0xffffffffffffULL));
  id->present = 1;
}

/* ---- the calls in flight ---- */

static void link_call(struct delegator *delegator, struct call *call) {
  call->previous = NULL;
  call->next = delegator->calls;
  if (delegator->calls) delegator->calls->previous = call;
  delegator->calls = call;
  call->in_flight = 1;
}

static void unlink_call(struct delegator *delegator, struct call *call) {
  if (!call->in_flight) return;
  if (call->previous) call->previous->next = call->next;
  else delegator->calls = call->next;
  if (call->next) call->next->previous = call->previous;
  call->previous = call->next = NULL;
  call->in_flight = 0;
}

/* Marks the call done and wakes whoever waits for it. */
static void complete(struct call *call) {
  call->done = 1;
  struct fiber *fiber = call->fiber;
  call->fiber = NULL;
  if (fiber) fiber_resume(fiber, 0);
}

static void fail_all(struct delegator *delegator, const char *code, const char *why) {
  struct call *calls = delegator->calls;
  delegator->calls = NULL; /* woken fibers may start new calls meanwhile */
  while (calls) {
    struct call *call = calls;
    calls = call->next;
    call->in_flight = 0;
    call->failed = 1;
    error_set(&call->error, code, "call to '%s' ended: %s", call->worker, why);
    complete(call);
  }
}

struct lookup {
  struct delegator *delegator;
  const struct short_string *correlation_id;
  struct call *call;
};

/* Finds and forgets the call of a correlation id (runs protected). */
static int take_call(lua_State *L) {
  struct lookup *lookup = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lookup->delegator->self_ref);
  lua_getiuservalue(L, -1, DELEGATOR_PENDING_SLOT);
  lua_pushlstring(L, lookup->correlation_id->bytes, lookup->correlation_id->length);
  lua_pushvalue(L, -1);
  lua_rawget(L, -3);
  lookup->call = luaL_testudata(L, -1, CALL_MT);
  if (lookup->call) {
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  return 0;
}

static struct call *find_call(struct delegator *delegator, const struct message *message) {
  if (!message->correlation_id.present || delegator->self_ref == LUA_NOREF) return NULL;
  struct lookup lookup = {delegator, &message->correlation_id, NULL};
  if (runtime_protected(delegator->runtime, take_call, &lookup, "reply") != 0) return NULL;
  if (lookup.call) unlink_call(delegator, lookup.call);
  return lookup.call;
}

static void on_reply(void *handler_context, const struct message *message) {
  struct delegator *delegator = handler_context;
  struct call *call = find_call(delegator, message);
  if (!call) {
    delegator->unknown_replies++;
    log_line(LOG_WARN, "reply with unknown correlation id '%s' dropped (%lu so far)",
             message->correlation_id.present ? message->correlation_id.bytes : "",
             delegator->unknown_replies);
    return;
  }
  if (message->body_too_large) {
    call->failed = 1;
    error_set(&call->error, ERR_BAD_REPLY, "reply from '%s' of %zu bytes is over the limit",
              call->worker, message->body_length);
  } else if (byte_buffer_append(&call->body, message->body, message->body_length) != 0) {
    call->failed = 1;
    error_set(&call->error, ERR_BAD_REPLY, "out of memory for the reply from '%s'",
              call->worker);
  }
  call->error_reply = message->type.present && strcmp(message->type.bytes, ERROR_REPLY_TYPE) == 0;
  complete(call);
}

static void on_return(void *handler_context, const struct message *message) {
  struct delegator *delegator = handler_context;
  struct call *call = find_call(delegator, message);
  if (!call) return;
  call->failed = 1;
  error_set(&call->error, ERR_NO_ROUTE,
            "no worker serves '%s': the broker returned the request (%d %s)", call->worker,
            message->return_code, message->return_text.bytes);
  complete(call);
}

/* ---- start, stop, loss ---- */

static void close_down(struct delegator *delegator, const char *code, const char *why) {
  fail_all(delegator, code, why);
  if (delegator->connection) connection_close(delegator->connection);
  delegator->connection = NULL;
  delegator->started = 0;
  int self_ref = delegator->self_ref;
  hook_run(delegator->runtime, self_ref, DELEGATOR_ON_CLOSE_SLOT, "on_close", NULL);
  delegator->self_ref = LUA_NOREF;
  luaL_unref(delegator->runtime->L, LUA_REGISTRYINDEX, self_ref);
}

static void on_lost(void *handler_context, const struct ad_error *error) {
  struct delegator *delegator = handler_context;
  log_line(LOG_ERROR, "delegator: %s: %s", error->code, error->message);
  hook_run(delegator->runtime, delegator->self_ref, DELEGATOR_ON_ERROR_SLOT, "on_error", error);
  if (delegator->started) close_down(delegator, ERR_CONNECTION_LOST, error->message);
}

static int declare_reply_queue(struct delegator *delegator, struct ad_error *error) {
  struct connection *connection = delegator->connection;
  amqp_connection_state_t amqp = connection_amqp(connection);
  amqp_queue_declare_ok_t *declared =
      amqp_queue_declare(amqp, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
  if (connection_check_rpc(connection, "declaring the reply queue", error) != 0) return -1;
  short_string_set(&delegator->reply_queue, declared->queue.bytes, declared->queue.len);
  amqp_bytes_t queue = {delegator->reply_queue.length, delegator->reply_queue.bytes};
  amqp_basic_consume(amqp, 1, queue, amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
  return connection_check_rpc(connection, "consuming the reply queue", error);
}

void delegator_start(struct delegator *delegator, lua_State *L, int self) {
  if (delegator->started)
    error_object_raisef(L, ERR_ALREADY_STARTED, "delegator is already started");
  static const struct connection_handler handler_template = {on_reply, on_return, on_lost, NULL};
  struct connection_handler handler = handler_template;
  handler.context = delegator;
  struct ad_error error;
  if (uv_random(NULL, NULL, delegator->random_state, sizeof delegator->random_state, 0,
                NULL) != 0)
    error_object_raisef(L, ERR_CONNECTION_FAILED, "no randomness for correlation ids");
  delegator->connection = connection_open(delegator->runtime, &delegator->url,
                                          &delegator->options.connection, &handler, &error);
  if (!delegator->connection) error_object_raise(L, &error);
  if (declare_reply_queue(delegator, &error) != 0) {
    connection_close(delegator->connection);
    delegator->connection = NULL;
    error_object_raise(L, &error);
  }
  lua_pushvalue(L, self);
  delegator->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  delegator->started = 1;
  log_line(LOG_DEBUG, "delegator ready on %s, replies to %s",
           connection_endpoint(delegator->connection), delegator->reply_queue.bytes);
}

void delegator_stop(struct delegator *delegator, lua_State *L) {
  if (!delegator->started)
    error_object_raisef(L, ERR_NOT_STARTED, "delegator is not started");
  close_down(delegator, ERR_STOPPED, "the delegator was stopped");
}

void delegator_release(struct delegator *delegator) {
  struct call *call = delegator->calls;
  while (call) { /* calls are only collected with their delegator */
    call->delegator = NULL;
    call = call->next;
  }
  delegator->calls = NULL;
  if (delegator->connection) connection_close(delegator->connection);
  delegator->connection = NULL;
  byte_buffer_free(&delegator->request);
}

void call_release(struct call *call) {
  if (call->in_flight && call->delegator) unlink_call(call->delegator, call);
  byte_buffer_free(&call->body);
}

/* ---- invoking ---- */

/* Raises the error a worker sent: {"error":{"code":..,"message":..}}. */
static int raise_error_reply(lua_State *L, struct call *call) {
  struct ad_error error;
  char problem[256];
  error_set(&error, ERR_TASK_FAILED, "worker '%s' failed", call->worker);
  if (json_decode(L, call->body.data, call->body.length, 8, problem, sizeof problem) == 0 &&
      lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "error");
    if (lua_type(L, -1) == LUA_TTABLE) error_object_read(L, -1, ERR_TASK_FAILED, &error);
  }
  return error_object_raise(L, &error);
}

static int call_result(lua_State *L, struct call *call) {
  if (call->failed) return error_object_raise(L, &call->error);
  if (call->error_reply) return raise_error_reply(L, call);
  char problem[256];
  int max_depth = call->delegator ? call->delegator->options.max_depth : JSON_DEFAULT_MAX_DEPTH;
  if (json_decode(L, call->body.data, call->body.length, max_depth, problem, sizeof problem) != 0)
    return error_object_raisef(L, ERR_BAD_REPLY, "reply from '%s' is not JSON: %s",
                               call->worker, problem);
  if (lua_touserdata(L, -1) == NULL && lua_type(L, -1) == LUA_TLIGHTUSERDATA) {
    lua_pop(L, 1); /* a top-level null is the task's nil */
    lua_pushnil(L);
  }
  return 1;
}

static int invoke_continue(lua_State *L, int status, lua_KContext k) {
  (void)status;
  return call_result(L, lua_touserdata(L, (int)k));
}

static struct call *new_call(lua_State *L, struct delegator *delegator, int self,
                             const char *name) {
  struct call *call = lua_newuserdatauv(L, sizeof *call, 1);
  memset(call, 0, sizeof *call);
  byte_buffer_init(&call->body);
  luaL_setmetatable(L, CALL_MT);
  lua_pushvalue(L, self);
  lua_setiuservalue(L, -2, 1);
  call->delegator = delegator;
  snprintf(call->worker, sizeof call->worker, "%s", name);
  new_correlation_id(delegator, &call->correlation_id);
  return call;
}

static void set_pending(lua_State *L, int self, const struct call *call, int call_index) {
  lua_getiuservalue(L, self, DELEGATOR_PENDING_SLOT);
  lua_pushlstring(L, call->correlation_id.bytes, call->correlation_id.length);
  if (call_index) lua_pushvalue(L, call_index);
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

int delegator_invoke(struct delegator *delegator, lua_State *L, int self, const char *name,
                     int first, int last) {
  if (!delegator->started)
    error_object_raisef(L, ERR_NOT_STARTED, "delegator is not started (call :start() first)");
  char problem[256];
  byte_buffer_reset(&delegator->request);
  if (json_encode_args(L, first, last, &delegator->request, delegator->options.max_depth,
                       problem, sizeof problem) != 0)
    error_object_raisef(L, ERR_BAD_ARGUMENT, "arguments for '%s' cannot be sent as JSON: %s",
                        name, problem);
  struct call *call = new_call(L, delegator, self, name);
  int call_index = lua_gettop(L);
  set_pending(L, self, call, call_index);
  struct publish request = {name, &call->correlation_id, delegator->reply_queue.bytes, NULL,
                            delegator->request.data, delegator->request.length, 1};
  struct ad_error error;
  if (connection_publish(delegator->connection, &request, &error) != 0) {
    set_pending(L, self, call, 0);
    return error_object_raise(L, &error);
  }
  link_call(delegator, call);
  struct fiber *fiber = fiber_current(L);
  if (fiber) {
    call->fiber = fiber;
    return fiber_yield(L, fiber, call_index, invoke_continue);
  }
  runtime_wait(delegator->runtime, L, &call->done);
  return call_result(L, call);
}

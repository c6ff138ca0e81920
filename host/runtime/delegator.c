/* The delegator side of the protocol (PROTOCOL.md "A delegator"), with one
 * reply queue per delegator instead of one per call: requests are published
 * mandatory with a UUID v4 correlation id and reply_to = our queue; replies
 * find their call through the pending table; basic.return ends a call with
 * NO_ROUTE at once; a deadline timer ends it with TIMEOUT. */
#include "delegator.h"

#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "error_object.h"
#include "hooks.h"
#include "json.h"
#include "log.h"
#include "worker.h"

static int attempt_reconnect(void *owner, struct ad_error *error);

void delegator_init(struct delegator *delegator, struct runtime *runtime) {
  memset(delegator, 0, sizeof *delegator);
  delegator->runtime = runtime;
  delegator->self_ref = LUA_NOREF;
  delegator->state = DELEGATOR_STOPPED;
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

/* A UUID v4 in its text form, 8-4-4-4-12 hex digits, written by hand: it is
 * on the path of every call and snprintf showed in profiles. */
static void new_correlation_id(struct delegator *delegator, struct short_string *id) {
  static const char hex[] = "0123456789abcdef";
  uint64_t high = next_random(delegator), low = next_random(delegator);
  high = (high & ~0xf000ULL) | 0x4000ULL;                        /* version 4 */
  low = (low & 0x3fffffffffffffffULL) | 0x8000000000000000ULL; /* variant 1 */
  char *out = id->bytes;
  for (int nibble = 0; nibble < 32; nibble++) {
    if (nibble == 8 || nibble == 12 || nibble == 16 || nibble == 20) *out++ = '-';
    uint64_t word = nibble < 16 ? high : low;
    *out++ = hex[(word >> (60 - 4 * (nibble % 16))) & 0xf];
  }
  *out = '\0';
  id->length = (size_t)(out - id->bytes);
  id->present = 1;
}

/* ---- the calls in flight, ordered by deadline ---- */

static void on_deadline(uv_timer_t *timer);

static void arm_deadline(struct delegator *delegator) {
  if (!delegator->deadline_timer) return;
  struct call *first = delegator->calls;
  if (!first || first->deadline == UINT64_MAX) {
    uv_timer_stop(delegator->deadline_timer);
    return;
  }
  uint64_t now = uv_now(&delegator->runtime->loop);
  uv_timer_start(delegator->deadline_timer, on_deadline,
                 first->deadline > now ? first->deadline - now : 0, 0);
}

/* Calls mostly share one timeout, so the new one usually goes last: O(1). */
static void link_call(struct delegator *delegator, struct call *call) {
  struct call *after = delegator->last_call;
  while (after && after->deadline > call->deadline) after = after->previous;
  call->previous = after;
  call->next = after ? after->next : delegator->calls;
  if (call->next) call->next->previous = call;
  else delegator->last_call = call;
  if (after) after->next = call;
  else delegator->calls = call;
  call->in_flight = 1;
  delegator->in_flight++;
  if (!after) arm_deadline(delegator);
}

static void unlink_call(struct delegator *delegator, struct call *call) {
  if (!call->in_flight) return;
  int was_first = delegator->calls == call;
  if (call->previous) call->previous->next = call->next;
  else delegator->calls = call->next;
  if (call->next) call->next->previous = call->previous;
  else delegator->last_call = call->previous;
  call->previous = call->next = NULL;
  call->in_flight = 0;
  delegator->in_flight--;
  if (was_first) arm_deadline(delegator);
}

/* Marks the call done and wakes whoever waits for it. */
static void complete(struct call *call) {
  call->done = 1;
  struct fiber *fiber = call->fiber;
  call->fiber = NULL;
  if (fiber) fiber_resume(fiber, 0);
  else if (call->delegator) runtime_wake(call->delegator->runtime);
}

struct pending_entry {
  struct delegator *delegator;
  const struct short_string *correlation_id;
  struct call *call; /* found (take) */
};

/* Finds the call of a correlation id and removes it from the pending table
 * (runs protected, on the loop's thread). */
static int take_pending(lua_State *L) {
  struct pending_entry *entry = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, entry->delegator->self_ref);
  lua_getiuservalue(L, -1, DELEGATOR_PENDING_SLOT);
  lua_pushlstring(L, entry->correlation_id->bytes, entry->correlation_id->length);
  lua_pushvalue(L, -1);
  lua_rawget(L, -3);
  entry->call = luaL_testudata(L, -1, CALL_MT);
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);
  return 0;
}

static struct call *take_call(struct delegator *delegator, const struct short_string *id) {
  if (!id->present || delegator->self_ref == LUA_NOREF) return NULL;
  struct pending_entry entry = {delegator, id, NULL};
  if (runtime_protected(delegator->runtime, take_pending, &entry, "pending calls") != 0)
    return NULL;
  if (entry.call) unlink_call(delegator, entry.call);
  return entry.call;
}

/* Ends a call in flight with an error of ours. */
static void fail_call(struct delegator *delegator, struct call *call, const char *code,
                      const char *format, const char *detail) {
  take_call(delegator, &call->correlation_id);
  unlink_call(delegator, call); /* even when the table could not be reached */
  call->failed = 1;
  error_set(&call->error, code, format, call->worker, detail);
  delegator->stats.failed++;
  complete(call);
}

static void fail_all(struct delegator *delegator, const char *code, const char *why) {
  /* Woken fibers may start new calls meanwhile: those stay. */
  unsigned long count = delegator->in_flight;
  while (delegator->calls && count-- > 0)
    fail_call(delegator, delegator->calls, code, "call to '%s' ended: %s", why);
}

static void on_deadline(uv_timer_t *timer) {
  struct delegator *delegator = timer->data;
  uint64_t now = uv_now(&delegator->runtime->loop);
  while (delegator->calls && delegator->calls->deadline <= now) {
    struct call *call = delegator->calls;
    char after[64];
    snprintf(after, sizeof after, "%g s", call->timeout);
    delegator->stats.timed_out++;
    fail_call(delegator, call, ERR_TIMEOUT, "no reply from '%s' after %s", after);
  }
  arm_deadline(delegator);
}

/* ---- replies ---- */

static void on_reply(void *handler_context, const struct message *message) {
  struct delegator *delegator = handler_context;
  struct call *call = take_call(delegator, &message->correlation_id);
  if (!call) { /* late (after its timeout), a duplicate, or not ours */
    delegator->stats.unknown_replies++;
    log_line(LOG_WARN, "reply with unknown correlation id '%s' dropped (%lu so far)",
             message->correlation_id.present ? message->correlation_id.bytes : "",
             delegator->stats.unknown_replies);
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
  delegator->stats.replied++;
  complete(call);
}

static void on_return(void *handler_context, const struct message *message) {
  struct delegator *delegator = handler_context;
  struct call *call = take_call(delegator, &message->correlation_id);
  if (!call) return;
  call->failed = 1;
  error_set(&call->error, ERR_NO_ROUTE,
            "no worker serves '%s': the broker returned the request (%d %s)", call->worker,
            message->return_code, message->return_text.bytes);
  delegator->stats.returned++;
  complete(call);
}

/* ---- connecting, losing, stopping ---- */

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

static void on_lost(void *handler_context, const struct ad_error *error);

static int open_connection(struct delegator *delegator, struct ad_error *error) {
  static const struct connection_handler handler_template = {on_reply, on_return, on_lost, NULL};
  struct connection_handler handler = handler_template;
  handler.context = delegator;
  delegator->connection = connection_open(delegator->runtime, &delegator->url,
                                          &delegator->options.connection, &handler, error);
  if (!delegator->connection) return -1;
  if (declare_reply_queue(delegator, error) != 0) {
    connection_close(delegator->connection);
    delegator->connection = NULL;
    return -1;
  }
  return 0;
}

static void drop_connection(struct delegator *delegator) {
  if (delegator->connection) connection_close(delegator->connection);
  delegator->connection = NULL;
}

static void on_lost(void *handler_context, const struct ad_error *error) {
  struct delegator *delegator = handler_context;
  log_line(LOG_ERROR, "delegator: %s: %s", error->code, error->message);
  drop_connection(delegator);
  fail_all(delegator, ERR_CONNECTION_LOST, error->message);
  int reconnecting = delegator->options.reconnect_max > 0;
  delegator->state = reconnecting ? DELEGATOR_RECONNECTING : DELEGATOR_STOPPED;
  hook_run(delegator->runtime, delegator->self_ref, DELEGATOR_ON_ERROR_SLOT, "on_error", error);
  hook_run(delegator->runtime, delegator->self_ref, DELEGATOR_ON_CLOSE_SLOT, "on_close", NULL);
  if (reconnecting && delegator->state == DELEGATOR_RECONNECTING) {
    reconnect_schedule(&delegator->reconnect);
  } else if (delegator->state == DELEGATOR_STOPPED && delegator->self_ref != LUA_NOREF) {
    luaL_unref(delegator->runtime->L, LUA_REGISTRYINDEX, delegator->self_ref);
    delegator->self_ref = LUA_NOREF;
  }
}

static int attempt_reconnect(void *owner, struct ad_error *error) {
  struct delegator *delegator = owner;
  if (delegator->state != DELEGATOR_RECONNECTING) return 1;
  if (open_connection(delegator, error) != 0) return -1;
  delegator->state = DELEGATOR_CONNECTED;
  return 0;
}

void delegator_start(struct delegator *delegator, lua_State *L, int self) {
  if (delegator->state != DELEGATOR_STOPPED)
    error_object_raisef(L, ERR_ALREADY_STARTED, "delegator is already started");
  if (uv_random(NULL, NULL, delegator->random_state, sizeof delegator->random_state, 0,
                NULL) != 0)
    error_object_raisef(L, ERR_CONNECTION_FAILED, "no randomness for correlation ids");
  if (!delegator->deadline_timer) {
    delegator->deadline_timer = runtime_timer_new(delegator->runtime, delegator);
    reconnect_init(&delegator->reconnect, delegator->runtime, delegator->options.reconnect_max,
                   attempt_reconnect, delegator, "delegator");
  }
  struct ad_error error;
  if (open_connection(delegator, &error) != 0) error_object_raise(L, &error);
  lua_pushvalue(L, self);
  delegator->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  delegator->state = DELEGATOR_CONNECTED;
  log_line(LOG_DEBUG, "delegator ready on %s, replies to %s",
           connection_endpoint(delegator->connection), delegator->reply_queue.bytes);
}

void delegator_stop(struct delegator *delegator, lua_State *L) {
  if (delegator->state == DELEGATOR_STOPPED)
    error_object_raisef(L, ERR_NOT_STARTED, "delegator is not started");
  delegator->state = DELEGATOR_STOPPED;
  reconnect_cancel(&delegator->reconnect);
  drop_connection(delegator);
  fail_all(delegator, ERR_STOPPED, "the delegator was stopped");
  int self_ref = delegator->self_ref;
  hook_run(delegator->runtime, self_ref, DELEGATOR_ON_CLOSE_SLOT, "on_close", NULL);
  delegator->self_ref = LUA_NOREF;
  luaL_unref(L, LUA_REGISTRYINDEX, self_ref);
}

void delegator_release(struct delegator *delegator) {
  /* Calls in flight anchor their delegator (user value), so none is left
   * here but handles the user kept after their end: detach them. */
  for (struct call *call = delegator->calls; call; call = call->next) call->delegator = NULL;
  delegator->calls = NULL;
  drop_connection(delegator);
  runtime_timer_free(delegator->deadline_timer);
  delegator->deadline_timer = NULL;
  reconnect_release(&delegator->reconnect);
  byte_buffer_free(&delegator->request);
}

void call_release(struct call *call) {
  if (call->in_flight && call->delegator) unlink_call(call->delegator, call);
  byte_buffer_free(&call->body);
}

/* ---- sending ---- */

/* snprintf("%llu") costs more than the rest of a send's bookkeeping. */
static void write_decimal(char *out, size_t size, uint64_t value) {
  char digits[24];
  size_t count = 0;
  do {
    digits[count++] = (char)('0' + value % 10);
    value /= 10;
  } while (value && count < sizeof digits);
  size_t i = 0;
  for (; i < count && i + 1 < size; i++) out[i] = digits[count - 1 - i];
  out[i] = '\0';
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
  size_t length = strlen(name); /* < SHORT_STRING_MAX: checked by the binding */
  memcpy(call->worker, name, length + 1);
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

static void check_connected(struct delegator *delegator, lua_State *L) {
  if (delegator->state == DELEGATOR_STOPPED)
    error_object_raisef(L, ERR_NOT_STARTED, "delegator is not started (call :start() first)");
  if (delegator->state == DELEGATOR_RECONNECTING)
    error_object_raisef(L, ERR_CONNECTION_LOST, "not connected to %s (reconnecting, attempt %u)",
                        delegator->url.redacted, delegator->reconnect.attempts + 1);
}

struct call *delegator_send(struct delegator *delegator, lua_State *L, int self,
                            const struct call_options *options, const char *name, int first,
                            int last) {
  check_connected(delegator, L);
  char problem[256];
  byte_buffer_reset(&delegator->request);
  if (json_encode_args(L, first, last, &delegator->request, delegator->options.max_depth,
                       problem, sizeof problem) != 0)
    error_object_raisef(L, ERR_BAD_ARGUMENT, "arguments for '%s' cannot be sent as JSON: %s",
                        name, problem);
  struct call *call = new_call(L, delegator, self, name);
  int call_index = lua_gettop(L);
  call->timeout = options->timeout >= 0 ? options->timeout : delegator->options.timeout;
  char expiration[32] = "";
  call->deadline = UINT64_MAX;
  if (call->timeout > 0) {
    uint64_t milliseconds = (uint64_t)(call->timeout * 1000 + 0.5);
    uv_update_time(&delegator->runtime->loop); /* stale after an idle REPL */
    call->deadline = uv_now(&delegator->runtime->loop) + milliseconds;
    /* A request nobody took in time is dropped by the broker, not served late. */
    write_decimal(expiration, sizeof expiration, milliseconds);
  }
  set_pending(L, self, call, call_index);
  struct publish request = {name, &call->correlation_id, delegator->reply_queue.bytes, NULL,
                            expiration[0] ? expiration : NULL, delegator->request.data,
                            delegator->request.length, 1};
  struct ad_error error;
  if (connection_publish(delegator->connection, &request, &error) != 0) {
    set_pending(L, self, call, 0);
    error_object_raise(L, &error);
  }
  delegator->stats.sent++;
  link_call(delegator, call);
  return call;
}

/* ---- waiting ---- */

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
  if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL) {
    lua_pop(L, 1); /* a top-level null is the task's nil */
    lua_pushnil(L);
  }
  return 1;
}

static int wait_continue(lua_State *L, int status, lua_KContext k) {
  (void)status;
  return call_result(L, lua_touserdata(L, (int)k));
}

int call_wait(lua_State *L, int index) {
  index = lua_absindex(L, index);
  struct call *call = luaL_checkudata(L, index, CALL_MT);
  if (call->done) return call_result(L, call);
  struct fiber *fiber = fiber_current(L);
  if (fiber) {
    if (call->fiber)
      error_object_raisef(L, ERR_BAD_ARGUMENT, "the call to '%s' is already awaited by a task",
                          call->worker);
    call->fiber = fiber;
    lua_settop(L, index); /* the call must be where the continuation looks */
    return fiber_yield(L, fiber, index, wait_continue);
  }
  struct delegator *delegator = call->delegator;
  int result = runtime_wait(delegator->runtime, &call->done);
  if (result == WAIT_INTERRUPTED) { /* the call is given up: a late reply is dropped */
    fail_call(delegator, call, ERR_INTERRUPTED, "call to '%s' %s", "interrupted");
    return call_result(L, call);
  }
  if (result != WAIT_DONE) return runtime_wait_error(L, result, call->worker);
  return call_result(L, call);
}

/* The worker side of the protocol (PROTOCOL.md "A worker named NAME"): queue
 * declared non-durable, non-exclusive, not auto-deleted; prefetch; manual
 * acks after the reply is published; every request taken gets an answer. */
#include "worker.h"

#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "error_object.h"
#include "hooks.h"
#include "json.h"
#include "log.h"

/* Everything a task needs after its request's frames are gone. */
struct task_context {
  struct worker *worker;
  uint64_t delivery_tag;
  unsigned generation; /* the connection that delivered it: tags are per channel */
  struct short_string correlation_id, reply_to;
  int failed;         /* the reply buffer holds an error reply */
  size_t oversized;   /* the request's size when over the limit (body dropped) */
  size_t body_length;
  char body[];        /* the request, decoded inside the fiber */
};

void worker_init(struct worker *worker, struct runtime *runtime) {
  memset(worker, 0, sizeof *worker);
  worker->runtime = runtime;
  worker->state = WORKER_STOPPED;
  worker->self_ref = LUA_NOREF;
  worker->service.stop = NULL;
  byte_buffer_init(&worker->reply);
}

/* ---- replies ---- */

/* Writes {"error":{"code":..,"message":..,"worker":..}} into the reply
 * buffer from inside the fiber (so a memory error is the fiber's error). */
static void write_error_reply(lua_State *L, struct task_context *context,
                              const struct ad_error *error) {
  struct worker *worker = context->worker;
  lua_createtable(L, 0, 1);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, error->code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, error->message);
  lua_setfield(L, -2, "message");
  lua_pushstring(L, worker->name);
  lua_setfield(L, -2, "worker");
  lua_setfield(L, -2, "error");
  char problem[256];
  byte_buffer_reset(&worker->reply);
  if (json_encode(L, -1, &worker->reply, 4, problem, sizeof problem) != 0)
    luaL_error(L, "cannot encode an error reply: %s", problem);
  lua_pop(L, 1);
  context->failed = 1;
  worker->failed++;
}

static void fail_task(lua_State *L, struct task_context *context, const char *code,
                      const char *format, const char *detail) {
  struct ad_error error;
  error_set(&error, code, format, context->worker->name, detail);
  log_line(LOG_WARN, "%s: %s", error.code, error.message);
  write_error_reply(L, context, &error);
}

/* Message handler: keeps the error value and adds the traceback for the log. */
static int task_message_handler(lua_State *L) {
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  lua_rawseti(L, -3, 2);
  lua_pop(L, 1);
  return 1;
}

static int task_returned(lua_State *L, int status, lua_KContext k) {
  struct task_context *context = (struct task_context *)k;
  struct worker *worker = context->worker;
  if (status == LUA_OK || status == LUA_YIELD) {
    char problem[256];
    byte_buffer_reset(&worker->reply);
    if (json_encode(L, -1, &worker->reply, worker->options.max_depth, problem,
                    sizeof problem) != 0)
      fail_task(L, context, ERR_BAD_RESULT, "the result of task '%s' cannot be sent as JSON: %s",
                problem);
    return 0;
  }
  /* {error value, traceback} from task_message_handler (or a bare value if
   * the handler itself failed). */
  struct ad_error error;
  if (lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1) == 0) {
    lua_rawgeti(L, -1, 2);
    log_line(LOG_DEBUG, "task '%s': %s", worker->name, luaL_optstring(L, -1, "?"));
    lua_pop(L, 1);
    lua_rawgeti(L, -1, 1);
  }
  error_object_read(L, -1, ERR_TASK_FAILED, &error);
  log_line(LOG_WARN, "task '%s' failed: %s: %s", worker->name, error.code, error.message);
  write_error_reply(L, context, &error);
  return 0;
}

/* The fiber's function: [1] task, [2] context. Decoding happens here, inside
 * the coroutine, so every Lua error has a protected place to land. */
static int task_body(lua_State *L) {
  struct task_context *context = lua_touserdata(L, 2);
  struct worker *worker = context->worker;
  lua_settop(L, 1);
  lua_pushcfunction(L, task_message_handler);
  lua_insert(L, 1);
  char problem[256];
  if (context->oversized) {
    snprintf(problem, sizeof problem, "body of %zu bytes is over the limit of %zu bytes",
             context->oversized, worker->options.connection.max_body);
    fail_task(L, context, ERR_BAD_REQUEST, "request for '%s' rejected: %s", problem);
    return 0;
  }
  int nargs = json_decode_args(L, context->body, context->body_length,
                               worker->options.max_depth, problem, sizeof problem);
  if (nargs < 0) {
    fail_task(L, context, ERR_BAD_REQUEST, "request for '%s' rejected: %s", problem);
    return 0;
  }
  int status = lua_pcallk(L, nargs, 1, 1, (lua_KContext)context, task_returned);
  return task_returned(L, status, (lua_KContext)context);
}

/* ---- finishing and stopping ---- */

static void finish_stopping(struct worker *worker) {
  int was_connected = worker->connection != NULL; /* a loss reported on_close already */
  if (worker->connection) connection_close(worker->connection);
  worker->connection = NULL;
  worker->state = WORKER_STOPPED;
  worker->stopped = 1;
  runtime_wake(worker->runtime);
  reconnect_cancel(&worker->reconnect);
  runtime_remove_service(worker->runtime, &worker->service);
  int self_ref = worker->self_ref;
  if (was_connected) hook_run(worker->runtime, self_ref, WORKER_ON_CLOSE_SLOT, "on_close", NULL);
  worker->self_ref = LUA_NOREF;
  luaL_unref(worker->runtime->L, LUA_REGISTRYINDEX, self_ref);
  log_line(LOG_INFO, "worker '%s' stopped (%lu served, %lu failed)", worker->name,
           worker->served, worker->failed);
}

static void settle(struct worker *worker, uint64_t delivery_tag, int requeue) {
  struct ad_error error;
  if (!worker->connection) return;
  int status = requeue < 0 ? connection_ack(worker->connection, delivery_tag, &error)
                           : connection_reject(worker->connection, delivery_tag, requeue, &error);
  if (status != 0)
    log_line(LOG_WARN, "worker '%s': %s: %s (the broker will redeliver it)", worker->name,
             error.code, error.message);
}

struct error_reply {
  struct task_context *context;
  const struct ad_error *error;
};

static int write_error_reply_protected(lua_State *L) {
  struct error_reply *reply = lua_touserdata(L, 1);
  write_error_reply(L, reply->context, reply->error);
  return 0;
}

/* The fiber ended outside task_body's own handling: a stray yield, or a
 * memory error. Its message is read only when it is a string already
 * (reading it then allocates nothing), and the reply is built on the
 * loop's thread, protected. */
static void reply_fiber_failure(struct fiber *fiber, struct task_context *context) {
  struct worker *worker = context->worker;
  struct ad_error error;
  lua_State *thread = fiber->thread;
  if (lua_type(thread, -1) == LUA_TSTRING)
    error_set(&error, ERR_TASK_FAILED, "%s", lua_tostring(thread, -1));
  else
    error_set(&error, ERR_TASK_FAILED, "internal error in the worker");
  log_line(LOG_WARN, "task '%s' failed: %s: %s", worker->name, error.code, error.message);
  struct error_reply reply = {context, &error};
  if (runtime_protected(worker->runtime, write_error_reply_protected, &reply, worker->name) == 0)
    return;
  static const char internal[] =
      "{\"error\":{\"code\":\"TASK_FAILED\",\"message\":\"internal error in the worker\"}}";
  byte_buffer_reset(&worker->reply);
  byte_buffer_append(&worker->reply, internal, sizeof internal - 1);
  context->failed = 1;
}

static void task_finished(struct fiber *fiber, int status) {
  struct task_context *context = fiber_context(fiber);
  struct worker *worker = context->worker;
  if (status != LUA_OK) reply_fiber_failure(fiber, context);
  const char *body = worker->reply.data;
  size_t body_length = worker->reply.length;
  struct publish reply = {context->reply_to.bytes, &context->correlation_id, NULL,
                          context->failed ? ERROR_REPLY_TYPE : NULL, NULL, body, body_length, 0};
  struct ad_error error;
  if (!worker->connection || context->generation != worker->generation)
    log_line(LOG_WARN, "worker '%s': reply dropped, the connection that delivered the request "
             "was lost (the broker redelivers it)", worker->name);
  else if (connection_publish(worker->connection, &reply, &error) != 0)
    log_line(LOG_WARN, "worker '%s': cannot reply: %s", worker->name, error.message);
  else
    settle(worker, context->delivery_tag, -1);
  worker->served++;
  worker->in_flight--;
  if (worker->state == WORKER_STOPPING && worker->in_flight == 0) finish_stopping(worker);
}

/* ---- taking requests ---- */

struct task_start {
  struct worker *worker;
  const struct message *message;
  struct fiber *fiber;
};

static int start_task(lua_State *L) {
  struct task_start *start = lua_touserdata(L, 1);
  const struct message *message = start->message;
  struct worker *worker = start->worker;
  size_t kept = message->body_too_large ? 0 : message->body_length;
  struct fiber *fiber =
      fiber_create(worker->runtime, task_finished, sizeof(struct task_context) + kept);
  struct task_context *context = fiber_context(fiber);
  context->worker = worker;
  context->delivery_tag = message->delivery_tag;
  context->generation = worker->generation;
  context->correlation_id = message->correlation_id;
  context->reply_to = message->reply_to;
  context->oversized = message->body_too_large ? message->body_length : 0;
  context->body_length = message->body_too_large ? 0 : message->body_length;
  if (context->body_length) memcpy(context->body, message->body, context->body_length);
  lua_State *thread = fiber->thread;
  lua_pushcfunction(thread, task_body);
  lua_rawgeti(L, LUA_REGISTRYINDEX, worker->self_ref);
  lua_getiuservalue(L, -1, WORKER_TASK_SLOT);
  lua_xmove(L, thread, 1);
  lua_pushlightuserdata(thread, context);
  start->fiber = fiber;
  return 0;
}

/* Requests we cannot answer are rejected without requeue (no poison loop);
 * those we can answer get an error reply instead of a task run. */
static int unanswerable(struct worker *worker, const struct message *message) {
  const char *missing = !message->reply_to.present         ? "reply_to"
                        : !message->correlation_id.present ? "correlation_id"
                                                           : NULL;
  if (!missing) return 0;
  log_line(LOG_WARN, "worker '%s': BAD_REQUEST: request without %s rejected (nobody to answer)",
           worker->name, missing);
  settle(worker, message->delivery_tag, 0);
  return 1;
}

static void on_request(void *handler_context, const struct message *message) {
  struct worker *worker = handler_context;
  if (worker->state != WORKER_RUNNING) {
    settle(worker, message->delivery_tag, 1); /* stopping: give it back */
    return;
  }
  if (unanswerable(worker, message)) return;
  worker->in_flight++;
  struct task_start start = {worker, message, NULL};
  if (runtime_protected(worker->runtime, start_task, &start, worker->name) != 0) {
    worker->in_flight--;
    settle(worker, message->delivery_tag, 1);
    return;
  }
  fiber_resume(start.fiber, 2);
}

/* The broker redelivers the requests in hand to another consumer; ours
 * finish, and their replies are dropped (see task_finished). */
static void on_lost(void *handler_context, const struct ad_error *error) {
  struct worker *worker = handler_context;
  log_line(LOG_ERROR, "worker '%s': %s: %s", worker->name, error->code, error->message);
  connection_close(worker->connection);
  worker->connection = NULL;
  int reconnecting = worker->state == WORKER_RUNNING && worker->options.reconnect_max > 0;
  worker->state = reconnecting ? WORKER_RECONNECTING : WORKER_STOPPING;
  hook_run(worker->runtime, worker->self_ref, WORKER_ON_ERROR_SLOT, "on_error", error);
  hook_run(worker->runtime, worker->self_ref, WORKER_ON_CLOSE_SLOT, "on_close", NULL);
  if (worker->state == WORKER_RECONNECTING) reconnect_schedule(&worker->reconnect);
  else if (worker->state == WORKER_STOPPING && worker->in_flight == 0) finish_stopping(worker);
}

static int open_connection(struct worker *worker, struct ad_error *error);

static int attempt_reconnect(void *owner, struct ad_error *error) {
  struct worker *worker = owner;
  if (worker->state != WORKER_RECONNECTING) return 1;
  if (open_connection(worker, error) != 0) return -1;
  worker->state = WORKER_RUNNING;
  return 0;
}

/* ---- starting ---- */

static int declare_and_consume(struct worker *worker, struct ad_error *error) {
  struct connection *connection = worker->connection;
  amqp_connection_state_t amqp = connection_amqp(connection);
  amqp_bytes_t queue = amqp_cstring_bytes(worker->name);
  char doing[400];
  snprintf(doing, sizeof doing, "declaring queue '%s'", worker->name);
  amqp_queue_declare(amqp, 1, queue, 0, 0, 0, 0, amqp_empty_table);
  if (connection_check_rpc(connection, doing, error) != 0) return -1;
  amqp_basic_qos(amqp, 1, 0, (uint16_t)worker->options.prefetch, 0);
  if (connection_check_rpc(connection, "setting prefetch", error) != 0) return -1;
  snprintf(doing, sizeof doing, "consuming queue '%s'", worker->name);
  amqp_basic_consume_ok_t *consuming =
      amqp_basic_consume(amqp, 1, queue, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  if (connection_check_rpc(connection, doing, error) != 0) return -1;
  short_string_set(&worker->consumer_tag, consuming->consumer_tag.bytes,
                   consuming->consumer_tag.len);
  return 0;
}

static void serve_stop(struct service *service, lua_State *L);

static int open_connection(struct worker *worker, struct ad_error *error) {
  static const struct connection_handler handler_template = {on_request, NULL, on_lost, NULL};
  struct connection_handler handler = handler_template;
  handler.context = worker;
  worker->connection = connection_open(worker->runtime, &worker->url,
                                       &worker->options.connection, &handler, error);
  if (!worker->connection) return -1;
  if (declare_and_consume(worker, error) != 0) {
    connection_close(worker->connection);
    worker->connection = NULL;
    return -1;
  }
  worker->generation++;
  return 0;
}

void worker_start(struct worker *worker, lua_State *L, int self) {
  if (worker->state != WORKER_STOPPED)
    error_object_raisef(L, ERR_ALREADY_STARTED, "worker '%s' is already started", worker->name);
  if (!worker->reconnect.attempt)
    reconnect_init(&worker->reconnect, worker->runtime, worker->options.reconnect_max,
                   attempt_reconnect, worker, worker->name);
  struct ad_error error;
  if (open_connection(worker, &error) != 0) error_object_raise(L, &error);
  lua_pushvalue(L, self);
  worker->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  worker->state = WORKER_RUNNING;
  worker->stopped = 0;
  worker->service.stop = serve_stop;
  runtime_add_service(worker->runtime, &worker->service);
  log_line(LOG_INFO, "worker '%s' ready on %s (prefetch %d)", worker->name,
           connection_endpoint(worker->connection), worker->options.prefetch);
}

/* ---- stopping ---- */

/* A cancel stops new deliveries while the tasks in hand still answer and
 * ack (closing the channel would requeue them too early). Deliveries already
 * on the way are given back by on_request. */
static void cancel_consumer(struct worker *worker) {
  if (!worker->connection || !connection_is_open(worker->connection)) return;
  amqp_bytes_t tag = {worker->consumer_tag.length, worker->consumer_tag.bytes};
  amqp_basic_cancel(connection_amqp(worker->connection), 1, tag);
  struct ad_error error;
  if (connection_check_rpc(worker->connection, "cancelling the consumer", &error) != 0)
    log_line(LOG_WARN, "worker '%s': %s", worker->name, error.message);
}

static void stop_gracefully(struct worker *worker, int wait) {
  if (worker->state == WORKER_RECONNECTING) {
    reconnect_cancel(&worker->reconnect);
    worker->state = WORKER_STOPPING;
    if (worker->in_flight == 0) finish_stopping(worker);
  }
  if (worker->state == WORKER_RUNNING) {
    worker->state = WORKER_STOPPING;
    log_line(LOG_INFO, "worker '%s' stopping: %d task(s) in hand", worker->name,
             worker->in_flight);
    cancel_consumer(worker);
    if (worker->in_flight == 0) finish_stopping(worker);
  }
  if (wait) runtime_run_until(worker->runtime, &worker->stopped);
}

static void serve_stop(struct service *service, lua_State *L) {
  (void)L;
  stop_gracefully((struct worker *)service, 1);
}

void worker_stop(struct worker *worker, lua_State *L) {
  if (worker->state == WORKER_STOPPED)
    error_object_raisef(L, ERR_NOT_STARTED, "worker '%s' is not started", worker->name);
  stop_gracefully(worker, fiber_current(L) == NULL);
}

void worker_release(struct worker *worker) {
  reconnect_release(&worker->reconnect);
  if (worker->connection) connection_close(worker->connection);
  worker->connection = NULL;
  runtime_remove_service(worker->runtime, &worker->service);
  byte_buffer_free(&worker->reply);
}

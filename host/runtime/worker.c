/* The worker side of the protocol (PROTOCOL.md "A worker named NAME"): queue
 * declared non-durable, non-exclusive, not auto-deleted; prefetch; manual
 * acks after the reply is published; every request taken gets an answer.
 * Deliveries are copied and queued as jobs: tasks start from the loop's one
 * place, never on the stack of the frame that brought them. */
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "call_context.h"
#include "error_object.h"
#include "json.h"
#include "log.h"

/* A request taken from the queue, copied out of the frames; queued as a job,
 * then the task's fiber context until it has answered. */
struct task_context {
  struct job job;
  struct worker *worker;
  uint64_t delivery_tag;
  unsigned generation; /* the channel that delivered it: tags are per channel */
  struct short_string correlation_id, reply_to;
  int failed;         /* the reply buffer holds an error reply */
  int over_limit;     /* delivered more often than delivery_limit: refused, not run */
  int64_t late_ms;    /* read this long after its deadline: answered TIMEOUT, not run */
  long previous_deliveries;
  size_t oversized;   /* the request's size when over the limit (body dropped) */
  uint64_t started_ns; /* uv_hrtime() when its task started */
  struct call_context call; /* its pointers are set once it is in its fiber */
  struct task_context *running_previous, *running_next; /* once running */
  size_t body_length, headers_length;
  char body[];        /* the request, decoded inside the fiber, then its headers */
};

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
  log_line(LOG_WARN, "task '%s' failed (correlation id %s): %s: %s", worker->name,
           context->correlation_id.bytes, error.code, error.message);
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
             context->oversized, worker->lifecycle.options.max_body);
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

/* ---- answering ---- */

/* requeue < 0: ack; 1: give it back (not a failure); 0: refuse it for good. */
static void settle(struct worker *worker, uint64_t delivery_tag, int requeue) {
  struct ad_error error;
  struct channel *channel = lifecycle_channel(&worker->lifecycle);
  if (!channel) return;
  int status = requeue < 0  ? channel_ack(channel, delivery_tag, &error)
               : requeue    ? channel_requeue(channel, delivery_tag, &error)
                            : channel_reject(channel, delivery_tag, 0, &error);
  if (status < 0)
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

/* Builds an error reply on the loop's thread, protected; a last resort when
 * even that fails. */
static void reply_with_error(struct task_context *context, const struct ad_error *error) {
  struct worker *worker = context->worker;
  struct error_reply reply = {context, error};
  if (runtime_protected(worker->runtime, write_error_reply_protected, &reply, worker->name) == 0)
    return;
  static const char internal[] =
      "{\"error\":{\"code\":\"TASK_FAILED\",\"message\":\"internal error in the worker\"}}";
  byte_buffer_reset(&worker->reply);
  byte_buffer_append(&worker->reply, internal, sizeof internal - 1);
  context->failed = 1;
}

/* The fiber ended outside task_body's own handling: a stray yield, or a
 * memory error. Its message is read only when it is a string already
 * (reading it then allocates nothing). */
static void reply_fiber_failure(struct fiber *fiber, struct task_context *context) {
  struct ad_error error;
  lua_State *thread = fiber->thread;
  if (lua_type(thread, -1) == LUA_TSTRING)
    error_set(&error, ERR_TASK_FAILED, "%s", lua_tostring(thread, -1));
  else
    error_set(&error, ERR_TASK_FAILED, "internal error in the worker");
  log_line(LOG_WARN, "task '%s' failed: %s: %s", context->worker->name, error.code,
           error.message);
  reply_with_error(context, &error);
}

/* A result the broker or the caller would refuse is answered BAD_RESULT
 * instead: publishing it would close the channel and the request would come
 * back, again and again. */
static void check_reply_size(struct task_context *context) {
  struct worker *worker = context->worker;
  size_t limit = worker->lifecycle.options.max_body;
  if (worker->reply.length <= limit) return;
  struct ad_error error;
  error_set(&error, ERR_BAD_RESULT,
            "the result of task '%s' is %zu bytes, over the limit of %zu bytes (max_body)",
            worker->name, worker->reply.length, limit);
  log_line(LOG_WARN, "%s: %s", error.code, error.message);
  reply_with_error(context, &error);
}

static void request_done(struct worker *worker) {
  worker->in_flight--;
  lifecycle_check_drained(&worker->lifecycle);
}

/* Publishes the reply buffer to the caller. The request is acked once the
 * broker confirmed the reply (or at once without confirms): a reply lost
 * with a node leaves its request in the queue, to be answered again. */
/* Replies without a deadline are kept this long (a redelivery comes within
 * a reconnection). */
#define KEPT_WITHOUT_DEADLINE_MS 60000

static void send_reply(struct task_context *context) {
  struct worker *worker = context->worker;
  int64_t expires = context->call.deadline_ms ? context->call.deadline_ms
                                              : wall_clock_ms() + KEPT_WITHOUT_DEADLINE_MS;
  result_cache_put(&worker->results, context->correlation_id.bytes,
                   context->correlation_id.length, context->reply_to.bytes,
                   context->reply_to.length, expires, context->failed, worker->reply.data,
                   worker->reply.length);
  int early = worker->options.ack_early; /* acked on receipt: token 0, nothing to settle */
  struct publish reply = {context->reply_to.bytes, &context->correlation_id, NULL,
                          context->failed ? ERROR_REPLY_TYPE : NULL, NULL, worker->reply.data,
                          worker->reply.length, 0, early ? 0 : context->delivery_tag, NULL, 0, NULL, 0};
  struct ad_error error;
  struct channel *channel = lifecycle_channel(&worker->lifecycle);
  if (!channel || (!early && context->generation != worker->generation))
    log_line(LOG_WARN, "worker '%s': reply to %s dropped, the channel that delivered the "
             "request was lost (%s)", worker->name, context->correlation_id.bytes,
             early ? "it was acked on receipt: ack = \"early\"" : "the broker redelivers it");
  else if (channel_publish(channel, &reply, &error) < 0)
    log_line(LOG_WARN, "worker '%s': cannot reply to %s: %s", worker->name,
             context->correlation_id.bytes, error.message);
  else if (early)
    return;
  else if (worker->options.confirms)
    worker->unconfirmed++;
  else
    settle(worker, context->delivery_tag, -1);
}

static void task_finished(struct fiber *fiber, int status) {
  struct task_context *context = fiber_context(fiber);
  struct worker *worker = context->worker;
  if (context->running_previous) context->running_previous->running_next = context->running_next;
  else worker->running = context->running_next;
  if (context->running_next) context->running_next->running_previous = context->running_previous;
  if (status != LUA_OK) reply_fiber_failure(fiber, context);
  if (!context->failed) check_reply_size(context);
  send_reply(context);
  worker->served++;
  duration_histogram_observe(&worker->durations, uv_hrtime() - context->started_ns);
  request_done(worker);
}

/* Its caller's deadline passed before it could start (the loop was held,
 * or it waited in the prefetch): it is answered, not run. A caller still
 * waiting (its clock behind ours) hears why; one that gave up drops it. */
static void refuse_late(struct task_context *request) {
  struct worker *worker = request->worker;
  struct ad_error error;
  error_set(&error, ERR_TIMEOUT,
            "request for '%s' not run: its deadline had passed %lld ms before the worker "
            "could start it", worker->name, (long long)request->late_ms);
  log_line(LOG_INFO, "worker '%s': correlation id %s: %s", worker->name,
           request->correlation_id.bytes, error.message);
  reply_with_error(request, &error);
  send_reply(request);
  worker->expired++;
}

/* The request came too often: its caller hears why instead of a loop. */
static void refuse_over_limit(struct task_context *request) {
  struct worker *worker = request->worker;
  struct ad_error error;
  error_set(&error, ERR_DELIVERY_LIMIT,
            "request for '%s' refused: it was delivered %ld time(s) before without an answer "
            "(delivery_limit %d); a task that cannot finish, or a host that dies running it",
            worker->name, request->previous_deliveries, worker->options.delivery_limit);
  log_line(LOG_WARN, "worker '%s': %s: correlation id %s: %s", worker->name, error.code,
           request->correlation_id.bytes, error.message);
  reply_with_error(request, &error);
  send_reply(request);
  worker->refused_over_limit++;
}

/* ---- taking requests ---- */

struct task_start {
  struct task_context *request;
  struct fiber *fiber;
};

static int start_task(lua_State *L) {
  struct task_start *start = lua_touserdata(L, 1);
  struct task_context *request = start->request;
  struct worker *worker = request->worker;
  size_t size = sizeof(struct task_context) + request->body_length + request->headers_length;
  struct fiber *fiber = fiber_create(worker->runtime, task_finished, size);
  fiber->name = worker->name;
  struct task_context *context = fiber_context(fiber);
  memcpy(context, request, size);
  context->started_ns = uv_hrtime();
  context->call.worker = worker->name;
  context->call.correlation_id = &context->correlation_id;
  context->call.headers = context->body + context->body_length;
  fiber->call_context = &context->call;
  context->running_previous = NULL;
  context->running_next = worker->running;
  if (worker->running) worker->running->running_previous = context;
  worker->running = context;
  lua_State *thread = fiber->thread;
  lua_pushcfunction(thread, task_body);
  lua_rawgeti(L, LUA_REGISTRYINDEX, worker->lifecycle.self_ref);
  lua_getiuservalue(L, -1, WORKER_TASK_SLOT);
  lua_xmove(L, thread, 1);
  lua_pushlightuserdata(thread, fiber_context(fiber));
  start->fiber = fiber;
  return 0;
}

static void start_request(struct task_context *request) {
  struct worker *worker = request->worker;
  struct task_start start = {request, NULL};
  if (runtime_protected(worker->runtime, start_task, &start, worker->name) != 0) {
    if (!worker->options.ack_early) settle(worker, request->delivery_tag, 1);
    free(request);
    request_done(worker);
    return;
  }
  free(request);
  fiber_resume(start.fiber, 2);
}

/* From the job queue: the request's task starts now, unless its channel is
 * gone (the broker redelivers it) or the worker is stopping (give it back). */
static void run_request(struct job *job) {
  struct task_context *request = (struct task_context *)job;
  struct worker *worker = request->worker;
  if (worker->options.ack_early && !request->over_limit && !request->late_ms) {
    start_request(request); /* acked already: it runs, whatever happened since */
    return;
  }
  if (worker->options.ack_early) { /* acked already: its caller hears why it does not run */
    if (request->late_ms) refuse_late(request);
    else refuse_over_limit(request);
    free(request);
    request_done(worker);
    return;
  }
  if (request->generation != worker->generation) {
    free(request);
    request_done(worker);
    return;
  }
  if (worker->lifecycle.state != LIFECYCLE_READY) {
    settle(worker, request->delivery_tag, 1);
    free(request);
    request_done(worker);
    return;
  }
  if (request->over_limit || request->late_ms) {
    if (request->late_ms) refuse_late(request);
    else refuse_over_limit(request);
    free(request);
    request_done(worker);
    return;
  }
  start_request(request);
}

/* Requests we cannot answer are rejected without requeue (no poison loop). */
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

/* How often the request was delivered before: the queue's own count when it
 * keeps one (quorum), else the redeliveries this host has seen (classic
 * queues only flag a redelivery). */
static long previous_deliveries(struct worker *worker, const struct message *message) {
  if (message->delivery_count >= 0) return message->delivery_count;
  if (!message->redelivered) return 0;
  if (!worker->redeliveries) {
    worker->redeliveries = calloc(REDELIVERY_SLOTS, sizeof *worker->redeliveries);
    if (!worker->redeliveries) return 1;
  }
  uint64_t key = request_hash(message->correlation_id.bytes, message->correlation_id.length,
                              message->reply_to.bytes, message->reply_to.length);
  struct redelivery_count *slot = &worker->redeliveries[key % REDELIVERY_SLOTS];
  if (slot->key != key) {
    slot->key = key;
    slot->count = 0;
  }
  return (long)++slot->count;
}

/* A redelivered request whose task still runs here (the connection was
 * lost meanwhile): the running task answers it, with this delivery's tag. */
static int join_running(struct worker *worker, const struct message *message) {
  for (struct task_context *task = worker->running; task; task = task->running_next) {
    if (task->correlation_id.length != message->correlation_id.length ||
        task->reply_to.length != message->reply_to.length ||
        memcmp(task->correlation_id.bytes, message->correlation_id.bytes,
               message->correlation_id.length) != 0 ||
        memcmp(task->reply_to.bytes, message->reply_to.bytes, message->reply_to.length) != 0)
      continue;
    if (task->generation == worker->generation) return 0; /* a duplicate on this channel */
    task->delivery_tag = message->delivery_tag;
    task->generation = worker->generation;
    log_line(LOG_INFO, "worker '%s': request %s redelivered while its task still runs: that "
             "task answers it, it does not run again", worker->name,
             message->correlation_id.bytes);
    return 1;
  }
  return 0;
}

/* A redelivered request this host has answered already: its reply or its
 * ack was lost with the connection. It gets the kept reply again. */
static int answer_from_cache(struct worker *worker, const struct message *message) {
  const struct kept_result *kept = result_cache_get(
      &worker->results, message->correlation_id.bytes, message->correlation_id.length,
      message->reply_to.bytes, message->reply_to.length, wall_clock_ms());
  if (!kept) return 0;
  struct publish reply = {message->reply_to.bytes, &message->correlation_id, NULL,
                          kept->failed ? ERROR_REPLY_TYPE : NULL, NULL, kept_result_body(kept),
                          kept->body_length, 0, message->delivery_tag, NULL, 0, NULL, 0};
  struct ad_error error;
  struct channel *channel = lifecycle_channel(&worker->lifecycle);
  worker->answered_from_cache++;
  log_line(LOG_INFO, "worker '%s': request %s redelivered after its reply or ack was lost: "
           "answered with the kept result, not run again", worker->name,
           message->correlation_id.bytes);
  if (!channel || channel_publish(channel, &reply, &error) < 0)
    log_line(LOG_WARN, "worker '%s': cannot reply: %s", worker->name,
             channel ? error.message : "no channel");
  else if (worker->options.confirms)
    worker->unconfirmed++;
  else
    settle(worker, message->delivery_tag, -1);
  return 1;
}

static void on_request(void *owner, const struct message *message) {
  struct worker *worker = owner;
  if (worker->lifecycle.state != LIFECYCLE_READY) {
    settle(worker, message->delivery_tag, 1); /* stopping: give it back */
    return;
  }
  if (unanswerable(worker, message)) return;
  int64_t deadline = request_deadline(message->headers, message->headers_length);
  int64_t late = deadline ? wall_clock_ms() - deadline : 0;
  int again = message->redelivered || message->delivery_count > 0;
  worker->redelivered += again;
  if (again && (join_running(worker, message) || answer_from_cache(worker, message))) return;
  size_t kept = message->body_too_large || late > 0 ? 0 : message->body_length;
  struct task_context *request = malloc(sizeof *request + kept + message->headers_length);
  if (!request) {
    settle(worker, message->delivery_tag, 1);
    return;
  }
  memset(request, 0, sizeof *request);
  job_init(&request->job, run_request);
  request->worker = worker;
  request->delivery_tag = message->delivery_tag;
  request->generation = worker->generation;
  request->correlation_id = message->correlation_id;
  request->reply_to = message->reply_to;
  request->oversized = message->body_too_large ? message->body_length : 0;
  request->previous_deliveries = previous_deliveries(worker, message);
  request->over_limit = worker->options.delivery_limit > 0 &&
                        request->previous_deliveries >= worker->options.delivery_limit;
  request->body_length = kept;
  if (kept) memcpy(request->body, message->body, kept);
  request->headers_length = message->headers_length;
  if (message->headers_length)
    memcpy(request->body + kept, message->headers, message->headers_length);
  request->call.deadline_ms = deadline;
  request->late_ms = late > 0 ? late : 0;
  request->call.redelivered = message->redelivered;
  request->call.previous_deliveries = request->previous_deliveries;
  request->call.headers_length = message->headers_length;
  if (worker->options.ack_early) settle(worker, message->delivery_tag, -1);
  worker->in_flight++;
  runtime_defer(worker->runtime, &request->job);
}

/* ---- the lifecycle's callbacks ---- */

/* First a passive declare: a queue that exists (made by an operator, a Node
 * worker or another host, whatever its type and flags) is consumed as it
 * is; only when there is none does the worker declare its own. */
static int declare(struct worker *worker, struct channel *channel, struct ad_error *error) {
  const struct worker_queue *queue = &worker->options.queue;
  int quorum = queue->type && strcmp(queue->type, "quorum") == 0;
  struct queue_spec spec = {worker->name, !worker->declare_queue, quorum || queue->durable, 0,
                            0, queue->type};
  worker->probing = spec.passive;
  worker->declare_queue = 0; /* one try: a later attempt asks again */
  return channel_declare(channel, &spec, error);
}

static int setup(void *owner, struct channel *channel, const struct channel_reply *reply,
                 struct ad_error *error) {
  struct worker *worker = owner;
  switch (reply->step) {
    case STEP_OPEN:
      return declare(worker, channel, error);
    case STEP_DECLARE:
      log_line(LOG_DEBUG, "worker '%s': queue %s (%u waiting, %u consumer(s))", worker->name,
               worker->probing ? "exists" : "declared", reply->message_count,
               reply->consumer_count);
      worker->probing = 0;
      return channel_qos(channel, worker->options.prefetch, error);
    case STEP_QOS:
      if (worker->options.confirms) return channel_confirm(channel, error);
      /* fall through */
    case STEP_CONFIRM: {
      struct short_string queue;
      short_string_set(&queue, worker->name, strlen(worker->name));
      return channel_consume(channel, &queue, 0, 0, error);
    }
    case STEP_CONSUME:
      worker->consumer_tag = reply->consumer_tag;
      return 1;
    default:
      return 0;
  }
}

#define TRANSIENT_QUEUE_ADVICE                                                             \
  " (RabbitMQ 4.3 and later refuse the Node protocol's transient queue: give the worker "  \
  "queue = {type = \"quorum\"} or queue = {durable = true}, or run --queue-type quorum)"

/* The passive declare's "no" (404) closes the channel: declare it on a new
 * one. A refused transient queue says what to set. */
static int setup_closed(void *owner, struct ad_error *error) {
  struct worker *worker = owner;
  int was_probing = worker->probing;
  worker->probing = 0;
  if (was_probing && strcmp(error->code, ERR_NOT_FOUND) == 0) {
    worker->declare_queue = 1;
    return 1;
  }
  if (strstr(error->message, "transient_nonexcl_queues")) {
    size_t used = strlen(error->message);
    snprintf(error->message + used, sizeof error->message - used, "%s", TRANSIENT_QUEUE_ADVICE);
  }
  return 0;
}

/* The reply of the request tagged `token` was confirmed (or refused). */
static void confirmed(void *owner, uint64_t token, int ack) {
  struct worker *worker = owner;
  if (token == 0) return; /* ack = "early": settled on receipt */
  worker->unconfirmed--;
  /* A refused reply would be refused again (a full reply queue that rejects
   * publishes): the request is dropped, dead-lettered if its queue says so. */
  if (!ack)
    log_line(LOG_WARN, "worker '%s': the broker refused a reply (nack): its request is "
             "rejected (dead-lettered if the queue has a dead-letter exchange)", worker->name);
  settle(worker, token, ack ? -1 : 0);
  lifecycle_check_drained(&worker->lifecycle);
}

static void ready(void *owner) {
  struct worker *worker = owner;
  worker->generation++;
  log_line(LOG_INFO, "worker '%s' ready on %s (prefetch %d)", worker->name,
           channel_endpoint(worker->lifecycle.channel), worker->options.prefetch);
}

/* The broker redelivers the requests in hand to another consumer; ours
 * finish, and their replies are dropped (see task_finished). */
/* RabbitMQ closes a channel whose delivery stayed unacked longer than its
 * consumer_timeout (30 min by default): the request comes back and runs
 * again. Say so plainly, with the two ways out. */
static void explain_consumer_timeout(const struct worker *worker, const struct ad_error *error) {
  if (strcmp(error->code, ERR_PRECONDITION_FAILED) != 0 ||
      !strstr(error->message, "delivery acknowledgement"))
    return;
  log_line(LOG_ERROR,
           "worker '%s': a task ran longer than the broker's consumer_timeout allows an "
           "unacknowledged request, so the broker closed the channel and will deliver the "
           "request again; raise consumer_timeout (rabbitmq.conf; from RabbitMQ 3.12 also per "
           "queue) above the longest task, or give the worker ack = \"early\" "
           "(acked on receipt: at-most-once)", worker->name);
}

static void lost(void *owner, const struct ad_error *error) {
  struct worker *worker = owner;
  explain_consumer_timeout(worker, error);
  worker->generation++;
  worker->unconfirmed = 0; /* their requests are redelivered */
  worker->probing = 0;
}

/* A cancel stops new deliveries while the tasks in hand still answer and
 * ack (closing the channel would requeue them too early). */
static void begin_stop(void *owner) {
  struct worker *worker = owner;
  struct channel *channel = lifecycle_channel(&worker->lifecycle);
  struct ad_error error;
  log_line(LOG_INFO, "worker '%s' stopping: %d task(s) in hand", worker->name,
           worker->in_flight);
  if (channel && channel_is_open(channel) &&
      channel_cancel(channel, &worker->consumer_tag, &error) != 0)
    log_line(LOG_WARN, "worker '%s': %s", worker->name, error.message);
}

/* A reply held by a memory alarm is never confirmed until it ends: a stop
 * does not wait for it (nor for confirms past the stop's deadline); the
 * request goes back to the queue with the channel. */
static int drained(void *owner) {
  const struct worker *worker = owner;
  struct channel *channel = lifecycle_channel(&worker->lifecycle);
  return worker->in_flight == 0 &&
         (worker->unconfirmed == 0 || worker->lifecycle.stop_overdue || !channel ||
          channel_is_blocked(channel));
}

static void stopped(void *owner) {
  struct worker *worker = owner;
  log_line(LOG_INFO,
           "worker '%s' stopped (%lu served, %lu failed, %lu past their deadline, %lu answered "
           "from kept results)",
           worker->name, worker->served, worker->failed, worker->expired,
           worker->answered_from_cache);
}

static const struct lifecycle_ops worker_lifecycle = {
    setup, setup_closed, ready, lost, on_request, NULL, confirmed, begin_stop, drained, stopped};

void worker_init(struct worker *worker, struct runtime *runtime) {
  memset(worker, 0, sizeof *worker);
  worker->runtime = runtime;
  lifecycle_init(&worker->lifecycle, runtime, &worker_lifecycle, worker, 1);
  worker->lifecycle.on_error_slot = WORKER_ON_ERROR_SLOT;
  worker->lifecycle.on_close_slot = WORKER_ON_CLOSE_SLOT;
  byte_buffer_init(&worker->reply);
  result_cache_init(&worker->results, WORKER_RESULT_CACHE);
}

int worker_start(struct worker *worker, lua_State *L, int self) {
  return lifecycle_start(&worker->lifecycle, L, self);
}

void worker_stop(struct worker *worker, lua_State *L) { lifecycle_stop(&worker->lifecycle, L); }

void worker_release(struct worker *worker) {
  lifecycle_release(&worker->lifecycle);
  byte_buffer_free(&worker->reply);
  free(worker->redeliveries);
  worker->redeliveries = NULL;
  result_cache_free(&worker->results);
}

/* The delegator side of the protocol (PROTOCOL.md "A delegator"), with one
 * reply queue per delegator instead of one per call: requests are published
 * mandatory with a UUID v4 correlation id and reply_to = our queue; replies
 * find their call through the pending table; basic.return ends a call with
 * NO_ROUTE at once; a deadline timer ends it with TIMEOUT. Before the first
 * call to a name, and after a call to it timed out, the broker is asked
 * whether a worker consumes its queue (queue_probe.h): a call to a queue
 * nobody consumes ends NO_WORKER at once, never enqueued. Names seen served,
 * or without a queue (their calls are returned: NO_ROUTE), are kept
 * (served_names.h), so the calls after the first cost nothing more.
 * Transport callbacks only settle C state; waiters wake from the job queue. */
#include "delegator.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <lauxlib.h>

#include "call_context.h"
#include "error_object.h"
#include "header_list.h"
#include "json.h"
#include "log.h"
#include "worker.h"

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
static void new_correlation_id(struct delegator *delegator,
                               char id[CORRELATION_ID_LENGTH + 1]) {
  static const char hex[] = "0123456789abcdef";
  uint64_t high = next_random(delegator), low = next_random(delegator);
  high = (high & ~0xf000ULL) | 0x4000ULL;                        /* version 4 */
  low = (low & 0x3fffffffffffffffULL) | 0x8000000000000000ULL; /* variant 1 */
  char *out = id;
  for (int nibble = 0; nibble < 32; nibble++) {
    if (nibble == 8 || nibble == 12 || nibble == 16 || nibble == 20) *out++ = '-';
    uint64_t word = nibble < 16 ? high : low;
    *out++ = hex[(word >> (60 - 4 * (nibble % 16))) & 0xf];
  }
  *out = '\0';
}

/* ---- a call's error, allocated when it fails ---- */

/* Out of memory for an error: the calls that fail then share this one. */
static struct ad_error shared_error;

static struct ad_error *call_error(struct call *call) {
  if (!call->error) call->error = malloc(sizeof *call->error);
  return call->error ? call->error : &shared_error;
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
  if (delegator->in_flight > delegator->crowd) delegator->crowd = delegator->in_flight;
  if (!after) arm_deadline(delegator);
}

/* ---- the requests not yet confirmed, in publish order ---- */

static void unlink_unconfirmed(struct delegator *delegator, struct call *call) {
  if (!call->unconfirmed) return;
  if (call->unconfirmed_previous) call->unconfirmed_previous->unconfirmed_next =
      call->unconfirmed_next;
  else delegator->unconfirmed_first = call->unconfirmed_next;
  if (call->unconfirmed_next) call->unconfirmed_next->unconfirmed_previous =
      call->unconfirmed_previous;
  else delegator->unconfirmed_last = call->unconfirmed_previous;
  call->unconfirmed_previous = call->unconfirmed_next = NULL;
  call->unconfirmed = 0;
}

static void link_unconfirmed(struct delegator *delegator, struct call *call) {
  call->unconfirmed_previous = delegator->unconfirmed_last;
  call->unconfirmed_next = NULL;
  if (delegator->unconfirmed_last) delegator->unconfirmed_last->unconfirmed_next = call;
  else delegator->unconfirmed_first = call;
  delegator->unconfirmed_last = call;
  call->unconfirmed = 1;
}

/* Confirms come in publish order nearly always: the first one matches. */
static struct call *find_unconfirmed(struct delegator *delegator, uint64_t serial) {
  for (struct call *call = delegator->unconfirmed_first; call; call = call->unconfirmed_next)
    if (call->serial == serial) return call;
  return NULL;
}

/* The request is no longer out there: it may be sent again. */
static void unsend(struct delegator *delegator, struct call *call) {
  if (call->sent) pending_calls_remove(&delegator->pending, &call->link);
  call->sent = 0;
  call->confirmed = 0;
  unlink_unconfirmed(delegator, call);
}

static void unlink_call(struct delegator *delegator, struct call *call) {
  if (!call->in_flight) return;
  unlink_unconfirmed(delegator, call);
  int was_first = delegator->calls == call;
  if (call->previous) call->previous->next = call->next;
  else delegator->calls = call->next;
  if (call->next) call->next->previous = call->previous;
  else delegator->last_call = call->previous;
  call->previous = call->next = NULL;
  call->in_flight = 0;
  delegator->in_flight--;
  if (call->sent) pending_calls_remove(&delegator->pending, &call->link);
  if (was_first) arm_deadline(delegator);
}

/* From the job queue: the waiter resumes, then the call's anchor goes. */
static void call_done_job(struct job *job) {
  struct call *call = (struct call *)((char *)job - offsetof(struct call, done_job));
  struct fiber *fiber = call->fiber;
  call->fiber = NULL;
  int anchor = call->anchor;
  call->anchor = LUA_NOREF;
  lua_State *L = call->delegator ? call->delegator->runtime->L : NULL;
  if (fiber) fiber_resume(fiber, 0);
  if (L) luaL_unref(L, LUA_REGISTRYINDEX, anchor); /* call may be collected from here */
}

/* The call has its outcome: done now (a plain waiter sees it), woken from
 * the job queue. */
static void complete(struct delegator *delegator, struct call *call) {
  unlink_call(delegator, call);
  call->done = 1;
  call->answered = 1;
  runtime_defer(delegator->runtime, &call->done_job);
}

static void fail_call(struct delegator *delegator, struct call *call, const char *code,
                      const char *format, const char *detail) {
  call->failed = 1;
  error_set(call_error(call), code, format, call->worker, detail);
  delegator->stats.failed++;
  complete(delegator, call);
}

static void on_deadline(uv_timer_t *timer) {
  struct delegator *delegator = timer->data;
  uint64_t now = uv_now(&delegator->runtime->loop);
  while (delegator->calls && delegator->calls->deadline <= now) {
    struct call *call = delegator->calls;
    char after[96];
    snprintf(after, sizeof after, "%g s%s", call->timeout,
             call->sent        ? ""
             : call->resend_at ? " (returned or refused by the broker, waiting to go again)"
             : call->probing   ? " (the broker did not say in time whether a worker serves it)"
                               : " (never sent: the delegator was not connected)");
    /* its worker may be gone: the next call asks the broker first */
    if (call->sent) served_names_forget(&delegator->served, call->worker);
    delegator->stats.timed_out++;
    fail_call(delegator, call, ERR_TIMEOUT, "no reply from '%s' after %s", after);
  }
  arm_deadline(delegator);
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

static int publish_call(struct delegator *delegator, struct channel *channel, struct call *call,
                        struct ad_error *error) {
  /* A call held a while goes out with only the time it has left: a request
   * nobody took in time is dropped by the broker, not served late. */
  char expiration[24] = "";
  if (call->deadline != UINT64_MAX) {
    uint64_t now = uv_now(&delegator->runtime->loop);
    if (call->deadline <= now) return 0; /* its TIMEOUT is due */
    write_decimal(expiration, sizeof expiration, call->deadline - now);
  }
  if (pending_calls_add(&delegator->pending, &call->link, call->correlation_id,
                        CORRELATION_ID_LENGTH) != 0) {
    error_set(error, ERR_BAD_ARGUMENT, "out of memory for a call to '%s'", call->worker);
    return -1;
  }
  call->serial = ++delegator->next_serial;
  struct short_string id;
  short_string_set(&id, call->correlation_id, CORRELATION_ID_LENGTH);
  struct publish request = {call->worker, &id, delegator->reply_queue.bytes,
                            NULL, expiration[0] ? expiration : NULL,
                            call->body.data ? call->body.data : "", call->body.length, 1,
                            call->serial, call->headers.data, call->headers.length,
                            call->deadline_ms ? HEADER_DEADLINE : NULL, call->deadline_ms};
  if (channel_publish(channel, &request, error) < 0) {
    pending_calls_remove(&delegator->pending, &call->link);
    return -1;
  }
  call->sent = 1;
  call->resend_at = 0;
  if (delegator->options.confirms) link_unconfirmed(delegator, call);
  /* the body goes again if the call may be re-sent; else it is let go */
  if (call->retries_left == 0) byte_buffer_free(&call->body);
  delegator->stats.sent++;
  return 0;
}

/* The channel calls go out on now; NULL while connecting or reconnecting
 * (calls are held meanwhile). */
static struct channel *ready_channel(const struct delegator *delegator) {
  return delegator->lifecycle.state == LIFECYCLE_READY ? lifecycle_channel(&delegator->lifecycle)
                                                       : NULL;
}

/* Asks the broker about the call's worker unless the name was seen served
 * (or this call asked already); the call is held meanwhile. */
static int needs_question(const struct delegator *delegator, const struct call *call) {
  if (call->probed) return 0;
  return call->status_only ||
         (delegator->options.check_workers && !served_names_has(&delegator->served, call->worker));
}

static int send_call(struct delegator *delegator, struct channel *channel, struct call *call,
                     struct ad_error *error) {
  if (!needs_question(delegator, call)) return publish_call(delegator, channel, call, error);
  if (call->probing) return 0;
  if (queue_probe_ask(&delegator->probe, lifecycle_url(&delegator->lifecycle),
                      &delegator->lifecycle.options, call->worker) != 0) {
    if (call->status_only) {
      error_set(error, ERR_BAD_ARGUMENT, "out of memory for a question about '%s'", call->worker);
      return -1;
    }
    call->probed = 1; /* unasked: it goes out as it would without the question */
    return publish_call(delegator, channel, call, error);
  }
  call->probing = 1; /* the answer comes from the loop, later */
  return 0;
}

static void on_resend(uv_timer_t *timer);

/* Ready again (or unblocked, or a returned request's pause is over): the
 * held calls go out, oldest deadline first. */
static void send_held(struct delegator *delegator) {
  struct channel *channel = ready_channel(delegator);
  if (!channel) return;
  struct ad_error error;
  uint64_t now = uv_now(&delegator->runtime->loop), next_resend = UINT64_MAX;
  for (struct call *call = delegator->calls; call; call = call->next) {
    if (call->sent || call->probing) continue;
    if (call->resend_at > now) {
      if (call->resend_at < next_resend) next_resend = call->resend_at;
      continue;
    }
    if (send_call(delegator, channel, call, &error) != 0) return;
  }
  if (next_resend != UINT64_MAX)
    uv_timer_start(delegator->resend_timer, on_resend, next_resend - now, 0);
}

static void on_resend(uv_timer_t *timer) { send_held(timer->data); }

/* A returned or refused request goes again after a pause (it was not
 * enqueued: a worker may be declaring its queue, a full queue draining). */
#define RESEND_PAUSE_MS 200

static void resend_later(struct delegator *delegator, struct call *call) {
  call->resend_at = uv_now(&delegator->runtime->loop) + RESEND_PAUSE_MS;
  if (!uv_is_active((uv_handle_t *)delegator->resend_timer))
    uv_timer_start(delegator->resend_timer, on_resend, RESEND_PAUSE_MS, 0);
}

/* A call that may go again does, and spends one retry. */
static int spend_retry(struct delegator *delegator, struct call *call) {
  if (call->retries_left <= 0) return 0;
  call->retries_left--;
  delegator->stats.retried++;
  unsend(delegator, call);
  return 1;
}

static struct call *new_call(lua_State *L, struct delegator *delegator, int self,
                             const char *name) {
  size_t length = strlen(name); /* < SHORT_STRING_MAX: checked by the binding */
  struct call *call = lua_newuserdatauv(L, sizeof *call + length + 1, 1);
  memset(call, 0, sizeof *call);
  call->anchor = LUA_NOREF;
  byte_buffer_init(&call->body);
  byte_buffer_init(&call->headers);
  job_init(&call->done_job, call_done_job);
  luaL_setmetatable(L, CALL_MT);
  lua_pushvalue(L, self);
  lua_setiuservalue(L, -2, 1);
  call->delegator = delegator;
  memcpy(call->worker, name, length + 1);
  new_correlation_id(delegator, call->correlation_id);
  return call;
}

static void check_sendable(struct delegator *delegator, lua_State *L) {
  enum lifecycle_state state = delegator->lifecycle.state;
  if (delegator->runtime->closed)
    error_object_raisef(L, ERR_STOPPED, "the Lua state is closing (a finalizer)");
  if (state == LIFECYCLE_STOPPED)
    error_object_raisef(L, ERR_NOT_STARTED, "delegator is not started (call :start() first)");
  if (state == LIFECYCLE_STOPPING)
    error_object_raisef(L, ERR_STOPPED, "the delegator is stopping");
}

/* Plain Lua after an idle spell (a REPL): the loop has not read for a while,
 * so a connection the broker dropped meanwhile is noticed before a request
 * goes into it, and the call is held until the delegator reconnects. */
#define IDLE_MS 1000

static void run_after_idle(struct delegator *delegator) {
  struct runtime *runtime = delegator->runtime;
  uv_update_time(&runtime->loop);
  uint64_t now = uv_now(&runtime->loop);
  int idle = now - delegator->last_send > IDLE_MS;
  delegator->last_send = now;
  if (!idle || runtime->running) return;
  transport_poll(&runtime->loop);
  runtime->running = 1;
  for (int turn = 0; turn < 3; turn++) uv_run(&runtime->loop, UV_RUN_NOWAIT);
  runtime->running = 0;
}

static void notice_idle_loss(struct delegator *delegator, lua_State *L) {
  if (!fiber_current(L)) run_after_idle(delegator);
  check_sendable(delegator, L); /* what the loop ran may have stopped it */
}

/* What the request carries: its deadline (the sooner of its own and that of
 * the call being served, when made inside a task), the caller's headers,
 * then the trace headers and call chain carried on from the task's call. */
static int call_headers(struct delegator *delegator, struct call *call,
                        const struct call_options *options) {
  struct fiber *fiber = delegator->runtime->running_fiber;
  const struct call_context *incoming = fiber ? fiber->call_context : NULL;
  int64_t deadline = 0;
  if (call->timeout > 0) deadline = wall_clock_ms() + (int64_t)runtime_milliseconds(call->timeout);
  if (incoming && incoming->deadline_ms && (!deadline || incoming->deadline_ms < deadline))
    deadline = incoming->deadline_ms;
  call->deadline_ms = deadline; /* the transport writes it: no text, no allocation */
  if (options->headers_length &&
      byte_buffer_append(&call->headers, options->headers, options->headers_length) != 0)
    return -1;
  if (incoming) call_context_carry(incoming, next_random(delegator), &call->headers);
  return 0;
}

/* The call (at call_index) is in flight from now: its deadline runs from
 * its timeout, the registry anchors it until it ends. */
static void begin_call(struct delegator *delegator, lua_State *L, struct call *call,
                       int call_index) {
  call->deadline = UINT64_MAX;
  uv_update_time(&delegator->runtime->loop); /* stale after an idle REPL */
  if (call->timeout > 0)
    call->deadline = uv_now(&delegator->runtime->loop) + runtime_milliseconds(call->timeout);
  lua_pushvalue(L, call_index);
  call->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
  link_call(delegator, call);
}

struct call *delegator_send(struct delegator *delegator, lua_State *L, int self,
                            const struct call_options *options, const char *name, int first,
                            int last) {
  check_sendable(delegator, L);
  struct call *call = new_call(L, delegator, self, name);
  int call_index = lua_gettop(L);
  char problem[256];
  if (json_encode_args(L, first, last, &call->body, delegator->options.max_depth, problem,
                       sizeof problem) != 0)
    error_object_raisef(L, ERR_BAD_ARGUMENT, "arguments for '%s' cannot be sent as JSON: %s",
                        name, problem);
  notice_idle_loss(delegator, L);
  call->timeout = options->timeout >= 0 ? options->timeout : delegator->options.timeout;
  call->retries_left = options->retry >= 0 ? options->retry : delegator->options.retry;
  if (call_headers(delegator, call, options) != 0)
    error_object_raisef(L, ERR_BAD_ARGUMENT, "out of memory for the headers of a call to '%s'",
                        name);
  begin_call(delegator, L, call, call_index);
  struct channel *channel = ready_channel(delegator);
  struct ad_error error;
  if (channel) send_call(delegator, channel, call, &error); /* not sent: held, as while reconnecting */
  /* From plain Lua a send puts the request on its way before it returns, so
   * the first call to a name waits for the broker's answer (bounded by the
   * connect timeout). A task's goes once it yields; so does one made while
   * the loop runs (a hook). */
  if (call->probing && !fiber_current(L) && !delegator->runtime->running &&
      runtime_wait(delegator->runtime, &call->answered) == WAIT_INTERRUPTED && !call->done) {
    /* Ctrl-C ended the wait: the caller wants out, as from an invoke; the
     * signal was ours, so nothing else would tell it */
    fail_call(delegator, call, ERR_INTERRUPTED, "call to '%s' %s", "interrupted");
    runtime_wait_error(L, WAIT_INTERRUPTED, call->worker);
  }
  byte_buffer_fit(&call->body); /* kept (held, or for a re-send): only what it needs */
  lua_settop(L, call_index);
  return call;
}

struct call *delegator_status(struct delegator *delegator, lua_State *L, int self,
                              const char *name) {
  check_sendable(delegator, L);
  struct call *call = new_call(L, delegator, self, name);
  int call_index = lua_gettop(L);
  notice_idle_loss(delegator, L);
  call->status_only = 1;
  call->timeout = delegator->options.timeout;
  begin_call(delegator, L, call, call_index);
  struct channel *channel = ready_channel(delegator);
  struct ad_error error;
  if (channel && send_call(delegator, channel, call, &error) != 0)
    fail_call(delegator, call, error.code, "question about '%s': %s", error.message);
  lua_settop(L, call_index);
  return call;
}

/* ---- the broker's answers about worker queues ---- */

static void answer_status(struct delegator *delegator, struct call *call,
                          const struct probe_answer *answer) {
  if (answer->outcome == PROBE_FAILED) {
    fail_call(delegator, call, answer->error.code, "cannot learn whether '%s' has a worker: %s",
              answer->error.message);
    return;
  }
  call->queue_exists = answer->outcome == PROBE_FOUND;
  call->consumers = answer->consumers;
  call->messages = answer->messages;
  complete(delegator, call);
}

/* A queue nobody consumes: the call ends NO_WORKER, unless it may be re-sent
 * (retry = n: the caller would rather wait for a worker coming back, and the
 * queue keeps the request until its deadline). Any other answer lets it go:
 * a missing queue is told by the broker's return (NO_ROUTE), a question that
 * failed costs nothing but the check. */
static void answer_call(struct delegator *delegator, struct call *call,
                        const struct probe_answer *answer) {
  if (answer->outcome == PROBE_FOUND && answer->consumers == 0 && call->retries_left == 0) {
    delegator->stats.no_worker++;
    char detail[96];
    snprintf(detail, sizeof detail, "%u request%s waiting", answer->messages,
             answer->messages == 1 ? "" : "s");
    fail_call(delegator, call, ERR_NO_WORKER,
              "no worker serves '%s' now: its queue has no consumer (%s)", detail);
    return;
  }
  call->probed = 1;
  struct channel *channel = ready_channel(delegator);
  struct ad_error error;
  if (channel) publish_call(delegator, channel, call, &error); /* not sent: held, as while reconnecting */
}

static void on_probe_answer(void *owner, const struct probe_answer *answer) {
  struct delegator *delegator = owner;
  delegator->stats.worker_checks++;
  /* Served, or no queue at all: the next calls go without a question. A call
   * to a missing queue is returned (NO_ROUTE) at no cost, while each question
   * about it costs a channel the broker closes, and an error in its log. */
  if (answer->outcome == PROBE_NO_QUEUE ||
      (answer->outcome == PROBE_FOUND && answer->consumers > 0))
    served_names_add(&delegator->served, answer->name);
  struct call *call = delegator->calls;
  while (call) {
    struct call *next = call->next; /* the call may end here */
    if (call->probing && strcmp(call->worker, answer->name) == 0) {
      call->probing = 0;
      call->answered = 1;
      if (call->status_only) answer_status(delegator, call, answer);
      else answer_call(delegator, call, answer);
    }
    call = next;
  }
}

/* ---- replies ---- */

static struct call *take_call(struct delegator *delegator, const struct short_string *id) {
  if (!id->present) return NULL;
  struct pending_link *link = pending_calls_take(&delegator->pending, id->bytes, id->length);
  if (!link) return NULL;
  struct call *call = (struct call *)((char *)link - offsetof(struct call, link));
  call->sent = 0; /* out of the table already */
  return call;
}

static void on_reply(void *owner, const struct message *message) {
  struct delegator *delegator = owner;
  struct call *call = take_call(delegator, &message->correlation_id);
  if (!call) { /* late (after its timeout), a duplicate, or not ours */
    delegator->stats.unknown_replies++;
    log_line(LOG_WARN, "reply with unknown correlation id '%s' dropped (%lu so far)",
             message->correlation_id.present ? message->correlation_id.bytes : "",
             delegator->stats.unknown_replies);
    return;
  }
  byte_buffer_free(&call->body); /* it may still hold the request, kept for a re-send */
  if (message->body_too_large) {
    call->failed = 1;
    error_set(call_error(call), ERR_BAD_REPLY, "reply from '%s' of %zu bytes is over the limit",
              call->worker, message->body_length);
  } else if (byte_buffer_append(&call->body, message->body, message->body_length) != 0) {
    call->failed = 1;
    error_set(call_error(call), ERR_BAD_REPLY, "out of memory for the reply from '%s'",
              call->worker);
  }
  byte_buffer_fit(&call->body); /* it may wait a while for its caller */
  call->error_reply = message->type.present && strcmp(message->type.bytes, ERROR_REPLY_TYPE) == 0;
  delegator->stats.replied++;
  complete(delegator, call);
}

/* No queue had the name at that moment. A returned request was never
 * enqueued, so a call that may be re-sent goes again after a pause (a
 * worker failing over to another node declares its queue again); others
 * end NO_ROUTE at once, as in the Node protocol. */
static void on_return(void *owner, const struct message *message) {
  struct delegator *delegator = owner;
  struct call *call = take_call(delegator, &message->correlation_id);
  if (!call) return;
  unlink_unconfirmed(delegator, call); /* its confirm follows: nothing to do then */
  if (spend_retry(delegator, call)) {
    resend_later(delegator, call);
    return;
  }
  call->failed = 1;
  error_set(call_error(call), ERR_NO_ROUTE,
            "no worker serves '%s': the broker returned the request (%d %s)", call->worker,
            message->return_code, message->return_text.bytes);
  delegator->stats.returned++;
  complete(delegator, call);
}

/* ---- the lifecycle's callbacks ---- */

static int setup(void *owner, struct channel *channel, const struct channel_reply *reply,
                 struct ad_error *error) {
  struct delegator *delegator = owner;
  switch (reply->step) {
    case STEP_OPEN: { /* server-named, exclusive, auto-delete: legal on every RabbitMQ */
      static const struct queue_spec reply_queue = {"", 0, 0, 1, 1, NULL};
      return channel_declare(channel, &reply_queue, error);
    }
    case STEP_DECLARE:
      delegator->reply_queue = reply->queue;
      if (delegator->options.confirms) return channel_confirm(channel, error);
      /* fall through */
    case STEP_CONFIRM:
      return channel_consume(channel, &delegator->reply_queue, 1, 1, error);
    case STEP_CONSUME:
      return 1;
    default:
      return 0;
  }
}

static void ready(void *owner) {
  struct delegator *delegator = owner;
  delegator->acks_on_channel = 0;
  log_line(LOG_DEBUG, "delegator ready on %s, replies to %s",
           channel_endpoint(delegator->lifecycle.channel), delegator->reply_queue.bytes);
  send_held(delegator);
}

#define NACK_REOPENS_MAX 3

/* The broker took the request (or refused it: nack). */
static void confirmed(void *owner, uint64_t serial, int ack) {
  struct delegator *delegator = owner;
  struct call *call = find_unconfirmed(delegator, serial);
  if (!call) return; /* answered or returned already */
  unlink_unconfirmed(delegator, call);
  if (ack) {
    call->confirmed = 1;
    delegator->acks_on_channel++;
    delegator->nack_reopens = 0;
    return;
  }
  if (delegator->acks_on_channel == 0 && delegator->nack_reopens < NACK_REOPENS_MAX &&
      call->retries_left > 0) {
    /* A channel that refuses from its first publish was opened while a quorum
     * queue elected its leader: RabbitMQ 3.10 keeps refusing on it until the
     * old leader's node is back, while a new channel works. */
    struct ad_error why;
    error_set(&why, ERR_NOT_CONFIRMED, "the broker refuses every request on this channel "
              "(opened while a quorum queue elected its leader?)");
    delegator->nack_reopens++;
    delegator->reopening = 1;
    unsend(delegator, call); /* refused, never enqueued: it goes again on the new channel */
    lifecycle_reopen(&delegator->lifecycle, &why, 0.5 * delegator->nack_reopens);
    return;
  }
  if (spend_retry(delegator, call)) { /* the broker refused it: give it a moment */
    resend_later(delegator, call);
    return;
  }
  delegator->stats.not_confirmed++;
  fail_call(delegator, call, ERR_NOT_CONFIRMED, "call to '%s' ended: %s",
            "the broker refused the request (nack)");
}

/* The connection died. Calls that may be re-sent wait for the next node;
 * the others end now: NOT_CONFIRMED when the broker never said it had the
 * request, CONNECTION_LOST when it had (it may run; its reply cannot reach
 * us). Calls still held wait for the next connection. */
static void lost(void *owner, const struct ad_error *error) {
  struct delegator *delegator = owner;
  int reopening = delegator->reopening; /* a channel that never confirmed: nothing was taken */
  delegator->reopening = 0;
  struct call *call = delegator->calls;
  while (call) {
    struct call *next = call->next;
    if (reopening && call->sent && !call->confirmed && call->retries_left > 0) {
      unsend(delegator, call); /* goes again on the new channel, its retries kept */
    } else if (call->sent && !spend_retry(delegator, call)) {
      int taken = call->confirmed || !delegator->options.confirms;
      if (!taken) delegator->stats.not_confirmed++;
      fail_call(delegator, call, taken ? ERR_CONNECTION_LOST : ERR_NOT_CONFIRMED,
                taken ? "call to '%s' ended: %s"
                      : "call to '%s' ended before the broker confirmed the request: %s",
                error->message);
    }
    call = next;
  }
}

static void begin_stop(void *owner) {
  struct delegator *delegator = owner;
  queue_probe_reset(&delegator->probe);
  while (delegator->calls)
    fail_call(delegator, delegator->calls, ERR_STOPPED, "call to '%s' ended: %s",
              "the delegator was stopped");
}

static int drained(void *owner) {
  (void)owner;
  return 1;
}

static const struct lifecycle_ops delegator_lifecycle = {
    setup, NULL, ready, lost, on_reply, on_return, confirmed, begin_stop, drained, NULL};

void delegator_init(struct delegator *delegator, struct runtime *runtime) {
  memset(delegator, 0, sizeof *delegator);
  delegator->runtime = runtime;
  lifecycle_init(&delegator->lifecycle, runtime, &delegator_lifecycle, delegator, 0);
  snprintf(delegator->lifecycle.label, sizeof delegator->lifecycle.label, "delegator");
  delegator->lifecycle.on_error_slot = DELEGATOR_ON_ERROR_SLOT;
  delegator->lifecycle.on_close_slot = DELEGATOR_ON_CLOSE_SLOT;
  pending_calls_init(&delegator->pending);
  served_names_init(&delegator->served);
}

int delegator_start(struct delegator *delegator, lua_State *L, int self) {
  if (delegator->lifecycle.state == LIFECYCLE_STOPPED) {
    if (uv_random(NULL, NULL, delegator->random_state, sizeof delegator->random_state, 0,
                  NULL) != 0)
      error_object_raisef(L, ERR_CONNECTION_FAILED, "no randomness for correlation ids");
    if (!delegator->deadline_timer)
      delegator->deadline_timer = runtime_timer_new(delegator->runtime, delegator);
    if (!delegator->resend_timer)
      delegator->resend_timer = runtime_timer_new(delegator->runtime, delegator);
    if (!delegator->probe_timer) {
      delegator->probe_timer = runtime_timer_new(delegator->runtime, NULL);
      queue_probe_init(&delegator->probe, &delegator->runtime->loop, delegator->probe_timer,
                       on_probe_answer, delegator);
    }
    if (!delegator->deadline_timer || !delegator->resend_timer || !delegator->probe_timer)
      return luaL_error(L, "out of memory");
  }
  return lifecycle_start(&delegator->lifecycle, L, self);
}

void delegator_stop(struct delegator *delegator, lua_State *L) {
  lifecycle_stop(&delegator->lifecycle, L);
}

void delegator_release(struct delegator *delegator) {
  /* Calls in flight anchor their delegator (user value), so none is left
   * here but handles the user kept after their end: detach them. */
  for (struct call *call = delegator->calls; call; call = call->next) call->delegator = NULL;
  delegator->calls = NULL;
  lifecycle_release(&delegator->lifecycle);
  runtime_timer_free(delegator->deadline_timer);
  delegator->deadline_timer = NULL;
  runtime_timer_free(delegator->resend_timer);
  delegator->resend_timer = NULL;
  queue_probe_release(&delegator->probe);
  runtime_timer_free(delegator->probe_timer);
  delegator->probe_timer = NULL;
  served_names_free(&delegator->served);
  pending_calls_free(&delegator->pending);
}

/* glibc keeps what a crowd of calls used (the Lua objects between them
 * fragment its heap): once they were all collected and nothing is in
 * flight, the free pages go back to the system. The last call's finalizer
 * runs before the collector frees the calls' memory (in its next cycle), so
 * the trim is left to a finalizer of that next cycle: a small object made
 * garbage now. */
#define CROWD_WORTH_TRIMMING 10000
#define TRIM_MT "amqp_delegate.trim"

static int trim_gc(lua_State *L) {
  (void)L;
#ifdef __GLIBC__
  malloc_trim(0);
#endif
  return 0;
}

static void give_back_memory(struct delegator *delegator, lua_State *L) {
  delegator->released++;
  if (delegator->in_flight || delegator->crowd < CROWD_WORTH_TRIMMING ||
      delegator->released < delegator->crowd)
    return;
  delegator->crowd = delegator->released = 0;
  lua_newuserdatauv(L, 0, 0);
  if (luaL_newmetatable(L, TRIM_MT)) {
    lua_pushcfunction(L, trim_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}

void call_release(struct call *call, lua_State *L) {
  if (call->in_flight && call->delegator) unlink_call(call->delegator, call);
  if (call->delegator) runtime_cancel_job(call->delegator->runtime, &call->done_job);
  byte_buffer_free(&call->body);
  byte_buffer_free(&call->headers);
  free(call->error);
  call->error = NULL;
  if (call->delegator) give_back_memory(call->delegator, L);
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

/* delegator:status()'s result: {name, exists, consumers, waiting}. */
static int push_status(lua_State *L, const struct call *call) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, call->worker);
  lua_setfield(L, -2, "name");
  lua_pushboolean(L, call->queue_exists);
  lua_setfield(L, -2, "exists");
  lua_pushinteger(L, call->consumers);
  lua_setfield(L, -2, "consumers");
  lua_pushinteger(L, call->messages);
  lua_setfield(L, -2, "waiting");
  return 1;
}

static int call_result(lua_State *L, struct call *call) {
  if (call->failed) return error_object_raise(L, call_error(call));
  if (call->status_only) return push_status(L, call);
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

static void cancel_call_wait(struct fiber *fiber, void *data) {
  struct call *call = data;
  if (call->fiber == fiber) call->fiber = NULL;
}

int call_wait(lua_State *L, int index) {
  index = lua_absindex(L, index);
  struct call *call = luaL_checkudata(L, index, CALL_MT);
  if (call->done) return call_result(L, call);
  struct delegator *delegator = call->delegator;
  struct fiber *fiber = runtime_wait_place(L, delegator->runtime, call->worker);
  if (fiber) {
    if (call->fiber)
      error_object_raisef(L, ERR_BAD_ARGUMENT, "the call to '%s' is already awaited by a task",
                          call->worker);
    call->fiber = fiber;
    lua_settop(L, index); /* the call must be where the continuation looks */
    return fiber_wait(L, fiber, cancel_call_wait, call, index, wait_continue);
  }
  int result = runtime_wait(delegator->runtime, &call->done);
  if (result == WAIT_INTERRUPTED && !call->done) /* given up: a late reply is dropped */
    fail_call(delegator, call, ERR_INTERRUPTED, "call to '%s' %s", "interrupted");
  else if (result != WAIT_DONE && !call->done)
    return runtime_wait_error(L, result, call->worker);
  return call_result(L, call);
}

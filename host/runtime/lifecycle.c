/* The lifecycle of workers and delegators (lifecycle.h). Transport callbacks
 * only change C state here and queue the hooks job; Lua runs from that job
 * (hooks) or from the waits of start() and stop(). */
#include "lifecycle.h"

#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "error_object.h"
#include "hooks.h"
#include "log.h"

#define FIRST_DELAY 0.1

static void run_hooks(struct job *job);
static void on_backoff(uv_timer_t *timer);
static void on_reply(void *owner, const struct channel_reply *reply);
static void on_message(void *owner, const struct message *message);
static void on_return(void *owner, const struct message *message);
static void on_closed(void *owner, const struct ad_error *error);
static void on_confirm(void *owner, uint64_t token, int ack);
static void stop_service(struct service *service);

void lifecycle_init(struct lifecycle *lifecycle, struct runtime *runtime,
                    const struct lifecycle_ops *ops, void *owner, int is_service) {
  memset(lifecycle, 0, sizeof *lifecycle);
  lifecycle->runtime = runtime;
  lifecycle->ops = ops;
  lifecycle->owner = owner;
  lifecycle->self_ref = LUA_NOREF;
  lifecycle->is_service = is_service;
  lifecycle->delay = FIRST_DELAY;
  lifecycle->service.stop = stop_service;
  job_init(&lifecycle->hooks_job, run_hooks);
  lifecycle->registered_next = runtime->lifecycles;
  if (runtime->lifecycles) runtime->lifecycles->registered_previous = lifecycle;
  runtime->lifecycles = lifecycle;
}

static void unregister(struct lifecycle *lifecycle) {
  struct runtime *runtime = lifecycle->runtime;
  if (lifecycle->registered_previous)
    lifecycle->registered_previous->registered_next = lifecycle->registered_next;
  else if (runtime->lifecycles == lifecycle)
    runtime->lifecycles = lifecycle->registered_next;
  if (lifecycle->registered_next)
    lifecycle->registered_next->registered_previous = lifecycle->registered_previous;
  lifecycle->registered_previous = lifecycle->registered_next = NULL;
}

const char *lifecycle_state_name(const struct lifecycle *lifecycle, const char *ready) {
  static const char *const names[] = {"stopped", "starting", "ready", "reconnecting",
                                      "stopping"};
  return lifecycle->state == LIFECYCLE_READY ? ready : names[lifecycle->state];
}

/* ---- hooks, from the job queue ---- */

static void queue_hooks(struct lifecycle *lifecycle, const struct ad_error *error, int close) {
  if (error) {
    lifecycle->hook_error = *error;
    lifecycle->error_hook_due = 1;
  }
  if (close) lifecycle->close_hook_due = 1;
  runtime_defer(lifecycle->runtime, &lifecycle->hooks_job);
}

static void run_hooks(struct job *job) {
  struct lifecycle *lifecycle =
      (struct lifecycle *)((char *)job - offsetof(struct lifecycle, hooks_job));
  int self_ref = lifecycle->self_ref;
  if (lifecycle->error_hook_due) {
    lifecycle->error_hook_due = 0;
    struct ad_error error = lifecycle->hook_error;
    hook_run(lifecycle->runtime, self_ref, lifecycle->on_error_slot, "on_error", &error);
  }
  if (lifecycle->close_hook_due) {
    lifecycle->close_hook_due = 0;
    hook_run(lifecycle->runtime, self_ref, lifecycle->on_close_slot, "on_close", NULL);
  }
  /* a hook may have started it again: then it stays anchored */
  if (lifecycle->unref_due && lifecycle->state == LIFECYCLE_STOPPED &&
      lifecycle->self_ref == self_ref && !lifecycle->hooks_job.queued &&
      lifecycle->ops->drained(lifecycle->owner)) {
    lifecycle->unref_due = 0;
    lifecycle->self_ref = LUA_NOREF;
    luaL_unref(lifecycle->runtime->L, LUA_REGISTRYINDEX, self_ref);
  }
}

/* ---- the brokers ---- */

const struct amqp_url *lifecycle_url(const struct lifecycle *lifecycle) {
  return &lifecycle->brokers.urls[lifecycle->order[lifecycle->position]];
}

static uint64_t mix(uint64_t x) { /* splitmix64's finalizer */
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* One random seed per process: every owner with the same list gets the same
 * order (they share a connection), other processes other orders (they
 * spread over the nodes, as the Java client and pika shuffle). */
static uint64_t process_seed(void) {
  static uint64_t seed;
  static int seeded;
  if (!seeded && uv_random(NULL, NULL, &seed, sizeof seed, 0, NULL) != 0)
    seed = (uint64_t)uv_hrtime() ^ (uint64_t)uv_os_getpid();
  seeded = 1;
  return seed;
}

static void shuffle_brokers(struct lifecycle *lifecycle) {
  int count = lifecycle->brokers.count;
  uint64_t state = process_seed();
  for (int i = 0; i < count; i++) {
    for (const char *c = lifecycle->brokers.urls[i].text; *c; c++)
      state = mix(state ^ (unsigned char)*c);
    lifecycle->order[i] = i;
  }
  for (int i = count - 1; i > 0; i--) { /* Fisher-Yates */
    state = mix(state + 0x9e3779b97f4a7c15ULL);
    int j = (int)(state % (uint64_t)(i + 1));
    int kept = lifecycle->order[i];
    lifecycle->order[i] = lifecycle->order[j];
    lifecycle->order[j] = kept;
  }
}

/* A round begins with a broker this process is connected to, if any. */
static void choose_first_broker(struct lifecycle *lifecycle) {
  lifecycle->position = 0;
  lifecycle->round_failures = 0;
  for (int i = 0; i < lifecycle->brokers.count; i++)
    if (transport_has_connection(&lifecycle->runtime->loop,
                                 &lifecycle->brokers.urls[lifecycle->order[i]],
                                 &lifecycle->options)) {
      lifecycle->position = i;
      return;
    }
}

/* The broker in use failed: 1 when another of this round is to be tried
 * now, 0 when the whole round has failed (the next round starts with the
 * next broker). */
static int next_broker(struct lifecycle *lifecycle) {
  lifecycle->position = (lifecycle->position + 1) % lifecycle->brokers.count;
  if (++lifecycle->round_failures < lifecycle->brokers.count) return 1;
  lifecycle->round_failures = 0;
  return 0;
}

/* ---- the channel ---- */

static void drop_channel(struct lifecycle *lifecycle) {
  if (lifecycle->channel) channel_release(lifecycle->channel);
  lifecycle->channel = NULL;
  if (lifecycle->timer) uv_timer_stop(lifecycle->timer);
}

static void on_setup_deadline(uv_timer_t *timer);

static int open_channel(struct lifecycle *lifecycle, struct ad_error *error) {
  static const struct channel_handler template = {on_reply,  on_message, on_return,
                                                  on_closed, NULL,       on_confirm, NULL};
  struct channel_handler handler = template;
  handler.owner = lifecycle;
  lifecycle->state = LIFECYCLE_STARTING;
  lifecycle->channel = channel_open(&lifecycle->runtime->loop, lifecycle_url(lifecycle),
                                    &lifecycle->options, &handler);
  if (!lifecycle->channel) {
    error_set(error, ERR_CONNECTION_FAILED, "%s: out of memory", lifecycle->label);
    return -1;
  }
  /* from plain Lua the loop's clock may be seconds old: the deadline would
   * pass before the first turn */
  uv_update_time(&lifecycle->runtime->loop);
  uv_timer_start(lifecycle->timer, on_setup_deadline,
                 runtime_milliseconds(lifecycle->options.connect_timeout), 0);
  return 0;
}

/* ---- stopped ---- */

static void become_stopped(struct lifecycle *lifecycle, int failed) {
  drop_channel(lifecycle);
  lifecycle->state = LIFECYCLE_STOPPED;
  if (lifecycle->stop_waiter) {
    *lifecycle->stop_waiter = 1;
    lifecycle->stop_waiter = NULL;
  }
  if (lifecycle->is_service) {
    if (failed) lifecycle->runtime->service_failures++;
    runtime_remove_service(lifecycle->runtime, &lifecycle->service);
  }
  lifecycle->unref_due = 1;
  runtime_wake(lifecycle->runtime);
  runtime_defer(lifecycle->runtime, &lifecycle->hooks_job);
}

static void end_start(struct lifecycle *lifecycle, const struct ad_error *error) {
  lifecycle->first_start = 0;
  lifecycle->start_done = 1;
  lifecycle->start_failed = error != NULL;
  if (error) lifecycle->start_error = *error;
  if (lifecycle->start_waiter) {
    struct fiber *fiber = lifecycle->start_waiter;
    lifecycle->start_waiter = NULL;
    fiber_wake(fiber);
  }
  runtime_wake(lifecycle->runtime);
}

/* ---- backoff ---- */

static void on_backoff(uv_timer_t *timer) {
  struct lifecycle *lifecycle = timer->data;
  if (lifecycle->state != LIFECYCLE_BACKOFF) return;
  lifecycle->attempts++;
  struct ad_error error;
  if (open_channel(lifecycle, &error) != 0) {
    lifecycle->state = LIFECYCLE_BACKOFF;
    uv_timer_start(lifecycle->timer, on_backoff, runtime_milliseconds(lifecycle->delay), 0);
  }
}

/* At once, but from the loop: never inside a transport callback. */
static void retry_now(struct lifecycle *lifecycle) {
  lifecycle->state = LIFECYCLE_BACKOFF;
  uv_timer_start(lifecycle->timer, on_backoff, 0, 0);
}

static void schedule_backoff(struct lifecycle *lifecycle) {
  lifecycle->state = LIFECYCLE_BACKOFF;
  uv_timer_start(lifecycle->timer, on_backoff, runtime_milliseconds(lifecycle->delay), 0);
  lifecycle->delay *= 2;
  if (lifecycle->delay > lifecycle->reconnect_max) lifecycle->delay = lifecycle->reconnect_max;
}

/* Failed attempts are logged once per distinct error: a broker that refuses
 * for minutes gives one line, not one per attempt. 1 when error is new. */
static int new_error(struct lifecycle *lifecycle, const struct ad_error *error) {
  if (strcmp(lifecycle->last_logged.code, error->code) == 0 &&
      strcmp(lifecycle->last_logged.message, error->message) == 0)
    return 0;
  lifecycle->last_logged = *error;
  return 1;
}

static void log_attempt_failed(struct lifecycle *lifecycle, const struct ad_error *error) {
  if (!new_error(lifecycle, error)) {
    log_line(LOG_DEBUG, "%s: reconnecting (attempt %u): %s: %s", lifecycle->label,
             lifecycle->attempts, error->code, error->message);
    return;
  }
  log_line(LOG_WARN, "%s: reconnecting (attempt %u, retrying every %g s at most): %s: %s",
           lifecycle->label, lifecycle->attempts, lifecycle->reconnect_max, error->code,
           error->message);
}

/* ---- events ---- */

/* A first start that cannot reach a broker may keep trying for
 * start_patience seconds; a refusal (credentials, a queue) ends it at once. */
static int still_patient(const struct lifecycle *lifecycle, const struct ad_error *error) {
  uint64_t now = uv_now(&lifecycle->runtime->loop);
  return lifecycle->start_patience > 0 && strcmp(error->code, ERR_CONNECTION_FAILED) == 0 &&
         now - lifecycle->start_began < runtime_milliseconds(lifecycle->start_patience);
}

static void log_waiting(struct lifecycle *lifecycle, const struct ad_error *error) {
  if (!new_error(lifecycle, error)) return;
  log_line(LOG_WARN, "%s: waiting for the broker (for %g s at most): %s: %s", lifecycle->label,
           lifecycle->start_patience, error->code, error->message);
}

/* The first start tries each broker once (and again, with backoff, while it
 * is patient); later attempts go round them, backing off after each whole
 * round. */
static void setup_failed(struct lifecycle *lifecycle, const struct ad_error *error) {
  drop_channel(lifecycle);
  int another = next_broker(lifecycle);
  if (lifecycle->first_start && !another && !still_patient(lifecycle, error)) {
    become_stopped(lifecycle, 0);
    end_start(lifecycle, error);
    return;
  }
  if (lifecycle->first_start && !another) {
    log_waiting(lifecycle, error);
    schedule_backoff(lifecycle);
    return;
  }
  if (lifecycle->first_start)
    log_line(LOG_WARN, "%s: %s: %s (trying %s next)", lifecycle->label, error->code,
             error->message, lifecycle_url(lifecycle)->redacted);
  else
    log_attempt_failed(lifecycle, error);
  if (another) retry_now(lifecycle);
  else schedule_backoff(lifecycle);
}

static void become_ready(struct lifecycle *lifecycle) {
  uv_timer_stop(lifecycle->timer);
  lifecycle->state = LIFECYCLE_READY;
  lifecycle->was_open = 1;
  lifecycle->delay = FIRST_DELAY;
  if (lifecycle->first_start) {
    end_start(lifecycle, NULL);
  } else {
    lifecycle->reconnections++;
    log_line(LOG_INFO, "%s: reconnected to %s after %u attempt(s)", lifecycle->label,
             channel_endpoint(lifecycle->channel), lifecycle->attempts);
  }
  lifecycle->attempts = 0;
  lifecycle->round_failures = 0;
  lifecycle->last_logged.code[0] = '\0';
  lifecycle->ops->ready(lifecycle->owner);
}

static void on_setup_deadline(uv_timer_t *timer) {
  struct lifecycle *lifecycle = timer->data;
  if (lifecycle->state != LIFECYCLE_STARTING) return;
  struct ad_error error;
  error_set(&error, ERR_CONNECTION_FAILED,
            "%s: not ready within connect_timeout (%g s) at %s (%s): no end to %s",
            lifecycle->label, lifecycle->options.connect_timeout,
            lifecycle->channel ? channel_endpoint(lifecycle->channel) : "?",
            lifecycle_url(lifecycle)->redacted,
            lifecycle->channel ? channel_waiting_for(lifecycle->channel) : "?");
  setup_failed(lifecycle, &error);
}

static void on_reply(void *owner, const struct channel_reply *reply) {
  struct lifecycle *lifecycle = owner;
  if (lifecycle->state != LIFECYCLE_STARTING) return;
  struct ad_error error;
  int outcome = lifecycle->ops->setup(lifecycle->owner, lifecycle->channel, reply, &error);
  if (outcome < 0) setup_failed(lifecycle, &error);
  else if (outcome > 0) become_ready(lifecycle);
}

static void on_message(void *owner, const struct message *message) {
  struct lifecycle *lifecycle = owner;
  lifecycle->ops->message(lifecycle->owner, message);
}

static void on_return(void *owner, const struct message *message) {
  struct lifecycle *lifecycle = owner;
  if (lifecycle->ops->returned) lifecycle->ops->returned(lifecycle->owner, message);
}

static void on_confirm(void *owner, uint64_t token, int ack) {
  struct lifecycle *lifecycle = owner;
  if (lifecycle->ops->confirmed) lifecycle->ops->confirmed(lifecycle->owner, token, ack);
}

static void on_closed(void *owner, const struct ad_error *error) {
  struct lifecycle *lifecycle = owner;
  struct ad_error labelled = *error;
  switch (lifecycle->state) {
    case LIFECYCLE_STARTING:
      if (lifecycle->ops->setup_closed &&
          lifecycle->ops->setup_closed(lifecycle->owner, &labelled)) {
        drop_channel(lifecycle); /* a new channel on the same node */
        retry_now(lifecycle);
        return;
      }
      setup_failed(lifecycle, &labelled);
      return;
    case LIFECYCLE_READY:
      log_line(LOG_ERROR, "%s: %s: %s", lifecycle->label, labelled.code, labelled.message);
      drop_channel(lifecycle);
      lifecycle->ops->lost(lifecycle->owner, &labelled);
      if (lifecycle->reconnect_max > 0) {
        queue_hooks(lifecycle, &labelled, 1);
        if (next_broker(lifecycle)) retry_now(lifecycle); /* fail over at once */
        else schedule_backoff(lifecycle);
      } else {
        queue_hooks(lifecycle, &labelled, 1);
        lifecycle->was_open = 0; /* on_close is due already */
        become_stopped(lifecycle, 1);
      }
      return;
    case LIFECYCLE_STOPPING:
      drop_channel(lifecycle);
      lifecycle->ops->lost(lifecycle->owner, &labelled);
      lifecycle_check_drained(lifecycle);
      return;
    default:
      return;
  }
}

/* ---- a new channel for a ready owner ---- */

static void on_reopen(uv_timer_t *timer) {
  struct lifecycle *lifecycle = timer->data;
  if (lifecycle->state != LIFECYCLE_READY) return;
  log_line(LOG_WARN, "%s: %s: a new channel in %g s", lifecycle->label,
           lifecycle->reopen_why.message, lifecycle->reopen_delay);
  drop_channel(lifecycle);
  lifecycle->ops->lost(lifecycle->owner, &lifecycle->reopen_why);
  lifecycle->state = LIFECYCLE_BACKOFF; /* on the same broker: on_backoff opens it */
  uv_timer_start(lifecycle->timer, on_backoff, runtime_milliseconds(lifecycle->reopen_delay), 0);
}

void lifecycle_reopen(struct lifecycle *lifecycle, const struct ad_error *why, double delay) {
  if (lifecycle->state != LIFECYCLE_READY || uv_is_active((uv_handle_t *)lifecycle->timer))
    return;
  lifecycle->reopen_why = *why;
  lifecycle->reopen_delay = delay;
  uv_timer_start(lifecycle->timer, on_reopen, 0, 0); /* never inside a transport callback */
}

/* ---- start ---- */

static int start_continue(lua_State *L, int status, lua_KContext k) {
  (void)status;
  struct lifecycle *lifecycle = (struct lifecycle *)k;
  if (lifecycle->start_failed) return error_object_raise(L, &lifecycle->start_error);
  lua_settop(L, 1);
  return 1;
}

static void cancel_start_wait(struct fiber *fiber, void *data) {
  struct lifecycle *lifecycle = data;
  if (lifecycle->start_waiter == fiber) lifecycle->start_waiter = NULL;
}

int lifecycle_start(struct lifecycle *lifecycle, lua_State *L, int self) {
  if (lifecycle->state != LIFECYCLE_STOPPED)
    error_object_raisef(L, ERR_ALREADY_STARTED, "%s is already started", lifecycle->label);
  struct fiber *fiber = runtime_wait_place(L, lifecycle->runtime, "start");
  if (!lifecycle->timer) {
    lifecycle->timer = runtime_timer_new(lifecycle->runtime, lifecycle);
    if (!lifecycle->timer) return luaL_error(L, "out of memory");
  }
  if (lifecycle->self_ref == LUA_NOREF) {
    lua_pushvalue(L, self);
    lifecycle->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lifecycle->unref_due = 0;
  lifecycle->first_start = 1;
  lifecycle->start_done = lifecycle->start_failed = 0;
  lifecycle->was_open = 0;
  lifecycle->attempts = 0;
  lifecycle->delay = FIRST_DELAY;
  lifecycle->last_logged.code[0] = '\0';
  shuffle_brokers(lifecycle);
  choose_first_broker(lifecycle);
  uv_update_time(&lifecycle->runtime->loop);
  lifecycle->start_began = uv_now(&lifecycle->runtime->loop);
  if (lifecycle->is_service) runtime_add_service(lifecycle->runtime, &lifecycle->service);
  struct ad_error error;
  if (open_channel(lifecycle, &error) != 0) {
    become_stopped(lifecycle, 0);
    return error_object_raise(L, &error);
  }
  lua_settop(L, self);
  if (fiber) {
    lifecycle->start_waiter = fiber;
    return fiber_wait(L, fiber, cancel_start_wait, lifecycle, (lua_KContext)lifecycle,
                      start_continue);
  }
  int result = runtime_wait(lifecycle->runtime, &lifecycle->start_done);
  if (result != WAIT_DONE) {
    if (lifecycle->state != LIFECYCLE_STOPPED) become_stopped(lifecycle, 0);
    lifecycle->first_start = 0;
    return runtime_wait_error(L, result, lifecycle->label);
  }
  return start_continue(L, LUA_OK, (lua_KContext)lifecycle);
}

/* ---- stop ---- */

void lifecycle_check_drained(struct lifecycle *lifecycle) {
  /* stopped with work still in hand: the anchor goes once it is done */
  if (lifecycle->state == LIFECYCLE_STOPPED && lifecycle->unref_due &&
      lifecycle->ops->drained(lifecycle->owner))
    runtime_defer(lifecycle->runtime, &lifecycle->hooks_job);
  if (lifecycle->state != LIFECYCLE_STOPPING || !lifecycle->ops->drained(lifecycle->owner))
    return;
  int was_open = lifecycle->was_open;
  become_stopped(lifecycle, 0);
  if (was_open) queue_hooks(lifecycle, NULL, 1);
  if (lifecycle->ops->stopped) lifecycle->ops->stopped(lifecycle->owner);
}

/* What a stop waits for from the broker (confirms) has its deadline too;
 * the tasks in hand are the owner's to wait for. */
static void on_stop_overdue(uv_timer_t *timer) {
  struct lifecycle *lifecycle = timer->data;
  if (lifecycle->state != LIFECYCLE_STOPPING) return;
  lifecycle->stop_overdue = 1;
  lifecycle_check_drained(lifecycle);
}

static void begin_stop(struct lifecycle *lifecycle) {
  if ((lifecycle->state == LIFECYCLE_STARTING || lifecycle->state == LIFECYCLE_BACKOFF) &&
      lifecycle->first_start) {
    struct ad_error error;
    error_set(&error, ERR_STOPPED, "%s was stopped while starting", lifecycle->label);
    become_stopped(lifecycle, 0);
    end_start(lifecycle, &error);
    return;
  }
  if (lifecycle->state == LIFECYCLE_STARTING || lifecycle->state == LIFECYCLE_BACKOFF) {
    drop_channel(lifecycle); /* a reconnect under way is given up */
    lifecycle->was_open = 0; /* its on_close came with the loss */
  } else if (lifecycle->state != LIFECYCLE_READY) {
    return;
  }
  lifecycle->state = LIFECYCLE_STOPPING;
  lifecycle->stop_overdue = 0;
  uv_update_time(&lifecycle->runtime->loop);
  uv_timer_start(lifecycle->timer, on_stop_overdue,
                 runtime_milliseconds(lifecycle->options.connect_timeout), 0);
  lifecycle->ops->begin_stop(lifecycle->owner);
  lifecycle_check_drained(lifecycle);
}

static void stop_service(struct service *service) {
  struct lifecycle *lifecycle =
      (struct lifecycle *)((char *)service - offsetof(struct lifecycle, service));
  begin_stop(lifecycle);
}

void lifecycle_stop(struct lifecycle *lifecycle, lua_State *L) {
  if (lifecycle->state == LIFECYCLE_STOPPED)
    error_object_raisef(L, ERR_NOT_STARTED, "%s is not started", lifecycle->label);
  if (lifecycle->runtime->closed) return; /* a finalizer at lua_close: all is gone */
  begin_stop(lifecycle);
  /* A task or hook does not wait: its own stop may be waiting for it. */
  if (fiber_current(L) || lifecycle->runtime->running) return;
  int done = lifecycle->state == LIFECYCLE_STOPPED;
  if (!done) lifecycle->stop_waiter = &done;
  runtime_run_until(lifecycle->runtime, &done);
  if (lifecycle->stop_waiter == &done) lifecycle->stop_waiter = NULL; /* the loop ran dry */
  /* and its on_close hook has run when stop() returns */
  struct runtime *runtime = lifecycle->runtime;
  runtime->running = 1;
  while (lifecycle->hooks_job.queued) uv_run(&runtime->loop, UV_RUN_ONCE);
  runtime->running = 0;
}

void lifecycle_release(struct lifecycle *lifecycle) {
  unregister(lifecycle);
  url_list_free(&lifecycle->brokers);
  if (lifecycle->channel) channel_release(lifecycle->channel);
  lifecycle->channel = NULL;
  lifecycle->state = LIFECYCLE_STOPPED;
  if (lifecycle->is_service) runtime_remove_service(lifecycle->runtime, &lifecycle->service);
  runtime_cancel_job(lifecycle->runtime, &lifecycle->hooks_job);
  runtime_timer_free(lifecycle->timer);
  lifecycle->timer = NULL;
}

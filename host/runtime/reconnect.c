/* Backoff timers for workers and delegators that lost their connection. The
 * timer lives in its own allocation, closed through libuv, so an owner can
 * be collected while the loop still holds the handle. */
#include "reconnect.h"

#include "log.h"

#define FIRST_DELAY 0.1

static void fire(uv_timer_t *timer) {
  struct reconnect *reconnect = timer->data;
  struct ad_error error;
  reconnect->attempts++;
  int outcome = reconnect->attempt(reconnect->owner, &error);
  if (outcome > 0) return;
  if (outcome < 0) {
    log_line(LOG_WARN, "%s: reconnecting (attempt %u): %s: %s", reconnect->label,
             reconnect->attempts, error.code, error.message);
    reconnect_schedule(reconnect);
    return;
  }
  log_line(LOG_INFO, "%s: reconnected after %u attempt(s)", reconnect->label,
           reconnect->attempts);
  /* the next loss starts again from the shortest delay */
  reconnect->delay = FIRST_DELAY;
  reconnect->attempts = 0;
}

void reconnect_init(struct reconnect *reconnect, struct runtime *runtime, double max_delay,
                    reconnect_attempt_fn attempt, void *owner, const char *label) {
  reconnect->timer = runtime_timer_new(runtime, reconnect);
  reconnect->delay = FIRST_DELAY;
  reconnect->max_delay = max_delay;
  reconnect->attempts = 0;
  reconnect->attempt = attempt;
  reconnect->owner = owner;
  reconnect->label = label;
}

void reconnect_schedule(struct reconnect *reconnect) {
  if (!reconnect->timer || reconnect->max_delay <= 0) return;
  uv_timer_start(reconnect->timer, fire, (uint64_t)(reconnect->delay * 1000), 0);
  reconnect->delay *= 2;
  if (reconnect->delay > reconnect->max_delay) reconnect->delay = reconnect->max_delay;
}

void reconnect_cancel(struct reconnect *reconnect) {
  if (reconnect->timer) uv_timer_stop(reconnect->timer);
}

void reconnect_release(struct reconnect *reconnect) {
  runtime_timer_free(reconnect->timer);
  reconnect->timer = NULL;
}

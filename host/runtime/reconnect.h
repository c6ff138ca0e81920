/* Reconnecting with capped exponential backoff: a timer that calls its
 * owner's attempt function after 0.1 s, 0.2 s, 0.4 s ... up to a cap, logs
 * each outcome, and schedules the next attempt until one succeeds. */
#ifndef AD_RECONNECT_H
#define AD_RECONNECT_H

#include "errors.h"
#include "runtime.h"

/* Returns 0 when connected again, -1 with error set when the attempt failed,
 * 1 when the owner no longer wants a connection (it was stopped). */
typedef int (*reconnect_attempt_fn)(void *owner, struct ad_error *error);

struct reconnect {
  uv_timer_t *timer; /* malloc'd: libuv may touch it after its owner is gone */
  double delay, max_delay;
  unsigned attempts;
  reconnect_attempt_fn attempt;
  void *owner;
  const char *label; /* "delegator", or the worker's name, for the log */
};

void reconnect_init(struct reconnect *reconnect, struct runtime *runtime, double max_delay,
                    reconnect_attempt_fn attempt, void *owner, const char *label);
/* Schedules the next attempt (after a loss, or after a failed attempt). */
void reconnect_schedule(struct reconnect *reconnect);
void reconnect_cancel(struct reconnect *reconnect);
/* Owner's __gc: the timer is closed and freed by the loop. */
void reconnect_release(struct reconnect *reconnect);

#endif

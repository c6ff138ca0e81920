/* Reconnecting with capped exponential backoff: a timer that calls its
 * owner's attempt function after 0.1 s, 0.2 s, 0.4 s ... up to a cap. */
#ifndef AD_RECONNECT_H
#define AD_RECONNECT_H

#include "runtime.h"

struct reconnect {
  uv_timer_t *timer; /* malloc'd: libuv may touch it after its owner is gone */
  double delay, max_delay;
  unsigned attempts;
  void (*attempt)(void *owner);
  void *owner;
};

void reconnect_init(struct reconnect *reconnect, struct runtime *runtime, double max_delay,
                    void (*attempt)(void *owner), void *owner);
/* Schedules the next attempt (after a loss, or after a failed attempt). */
void reconnect_schedule(struct reconnect *reconnect);
/* Connected again: the next loss starts from the shortest delay. */
void reconnect_reset(struct reconnect *reconnect);
void reconnect_cancel(struct reconnect *reconnect);
int reconnect_pending(const struct reconnect *reconnect);
/* Owner's __gc: the timer is closed and freed by the loop. */
void reconnect_release(struct reconnect *reconnect);

#endif

/* The worker names a delegator has seen served: their queue had a consumer
 * when it last asked the broker (queue_probe.h), or there was no queue (the
 * broker returns such a call: NO_ROUTE, without a question). Calls to these
 * names go out without a question; a timeout forgets the name, so the next
 * call asks.
 * Bounded: SERVED_NAMES_SLOTS names in sets of 4 by hash; a newcomer to a
 * full set takes the place of its oldest name (which is then asked about
 * again), so a delegator calling many names keeps at most that many. */
#ifndef AD_SERVED_NAMES_H
#define AD_SERVED_NAMES_H

#define SERVED_NAMES_SLOTS 256

struct served_name;

struct served_names {
  struct served_name *slots[SERVED_NAMES_SLOTS];
};

void served_names_init(struct served_names *names);
int served_names_has(const struct served_names *names, const char *name);
/* Returns -1 when out of memory (the name is then simply asked about again). */
int served_names_add(struct served_names *names, const char *name);
void served_names_forget(struct served_names *names, const char *name);
void served_names_free(struct served_names *names);

#endif

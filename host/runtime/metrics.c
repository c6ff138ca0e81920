/* Gathers the figures of every worker and delegator of a runtime into a
 * snapshot for metrics_text.c, and judges the host's health. Workers of one
 * name (one file served twice) are summed into one series: Prometheus
 * refuses a scrape with a duplicate series. */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delegator.h"
#include "lifecycle.h"
#include "metrics_text.h"
#include "version.h"
#include "worker.h"

/* In the runtime's list, a lifecycle is a worker's when it is a service. */
static int is_worker(const struct lifecycle *lifecycle) { return lifecycle->is_service; }

static int is_connected(const struct lifecycle *lifecycle) {
  return lifecycle->state == LIFECYCLE_READY;
}

static void add_worker(struct worker_metrics *into, const struct worker *worker) {
  into->served += worker->served;
  into->failed += worker->failed;
  into->expired += worker->expired;
  into->refused_over_limit += worker->refused_over_limit;
  into->redelivered += worker->redelivered;
  into->answered_from_cache += worker->answered_from_cache;
  into->reconnections += worker->lifecycle.reconnections;
  into->in_hand += worker->in_flight;
  duration_histogram_add(&into->durations, &worker->durations);
}

/* The entry for the worker's name, made (connected until one of that name
 * is not) when it is new. */
static struct worker_metrics *entry_for(struct worker_metrics *entries, int *count,
                                        const struct worker *worker) {
  for (int i = 0; i < *count; i++)
    if (strcmp(entries[i].name, worker->name) == 0) return &entries[i];
  struct worker_metrics *entry = &entries[(*count)++];
  memset(entry, 0, sizeof *entry);
  entry->name = worker->name;
  entry->connected = 1;
  return entry;
}

static void add_delegator(struct delegator_metrics *into, const struct delegator *delegator) {
  const struct delegator_stats *stats = &delegator->stats;
  into->count++;
  into->connected += is_connected(&delegator->lifecycle);
  into->sent += stats->sent;
  into->replied += stats->replied;
  into->failed += stats->failed;
  into->timed_out += stats->timed_out;
  into->returned += stats->returned;
  into->retried += stats->retried;
  into->not_confirmed += stats->not_confirmed;
  into->no_worker += stats->no_worker;
  into->reconnections += delegator->lifecycle.reconnections;
  into->in_flight += delegator->in_flight;
}

int metrics_write(struct runtime *runtime, byte_buffer *out) {
  int workers = 0;
  for (struct lifecycle *l = runtime->lifecycles; l; l = l->registered_next) workers += is_worker(l);
  struct worker_metrics *entries = calloc(workers ? (size_t)workers : 1, sizeof *entries);
  if (!entries) return -1;
  struct process_metrics metrics = {AMQP_DELEGATE_VERSION, 1, entries, 0, {0}};
  for (struct lifecycle *l = runtime->lifecycles; l; l = l->registered_next) {
    if (l->state != LIFECYCLE_STOPPED && !is_connected(l)) metrics.connected = 0;
    if (!is_worker(l)) {
      add_delegator(&metrics.delegators, l->owner);
      continue;
    }
    struct worker_metrics *entry = entry_for(entries, &metrics.worker_count, l->owner);
    add_worker(entry, l->owner);
    if (!is_connected(l)) entry->connected = 0;
  }
  int status = metrics_render(&metrics, out);
  free(entries);
  return status;
}

int metrics_health(struct runtime *runtime, char *line, size_t size) {
  int serving = 0;
  for (struct lifecycle *l = runtime->lifecycles; l; l = l->registered_next) {
    if (l->state == LIFECYCLE_STOPPED) continue;
    if (!is_connected(l)) {
      snprintf(line, size, "unavailable: %s is %s", l->label, lifecycle_state_name(l, "ready"));
      return 0;
    }
    serving += is_worker(l);
  }
  if (!serving) {
    snprintf(line, size, "unavailable: no worker is serving");
    return 0;
  }
  snprintf(line, size, "ok: %d worker(s) serving", serving);
  return 1;
}

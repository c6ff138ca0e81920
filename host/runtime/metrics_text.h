/* The Prometheus text exposition format (0.0.4) of a host's figures: the
 * task duration histogram workers keep, the snapshot the server fills, and
 * its rendering. No Lua, no loop: the renderer is a pure function of the
 * snapshot (spec/c/metrics_text_test.c). */
#ifndef AD_METRICS_TEXT_H
#define AD_METRICS_TEXT_H

#include "byte_buffer.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Upper bounds in milliseconds; +Inf follows. From a quick task (5 ms) to
 * one past the default call timeout (30 s). Integers, and the sum in
 * nanoseconds, so that the text never depends on the locale's decimal
 * point (a worker file may call os.setlocale). */
#define DURATION_BUCKETS 14
extern const unsigned duration_bucket_ms[DURATION_BUCKETS];

struct duration_histogram {
  unsigned long counts[DURATION_BUCKETS + 1]; /* per bucket, not cumulative; last: +Inf */
  unsigned long count;
  unsigned long long sum_ns;
};

void duration_histogram_observe(struct duration_histogram *histogram, unsigned long long ns);
/* Adds `from` into `into` (two workers of one name are one series). */
void duration_histogram_add(struct duration_histogram *into,
                            const struct duration_histogram *from);

struct worker_metrics {
  const char *name;
  unsigned long served, failed, expired, refused_over_limit, redelivered, answered_from_cache,
      reconnections;
  long in_hand;
  int connected;
  struct duration_histogram durations;
};

/* Every delegator of the process together: they have no names. */
struct delegator_metrics {
  int count, connected;
  unsigned long sent, replied, failed, timed_out, returned, retried, not_confirmed, no_worker,
      reconnections, in_flight;
};

struct process_metrics {
  const char *version;
  int connected; /* every started worker and delegator is connected */
  const struct worker_metrics *workers;
  int worker_count;
  struct delegator_metrics delegators;
};

/* Appends the whole exposition. Returns 0, or -1 when memory ran out. */
int metrics_render(const struct process_metrics *metrics, byte_buffer *out);

/* Appends `value` escaped as a label value (backslash, double quote and
 * newline), without the quotes. Returns 0 or -1. */
int metrics_append_label_value(byte_buffer *out, const char *value);

#endif

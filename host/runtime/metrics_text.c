/* Renders a host's figures in the Prometheus text exposition format 0.0.4:
 * each family once with its HELP and TYPE, then its samples, one per worker
 * (label worker="NAME", escaped). Pure: no Lua, no loop, no locale. */
#include "metrics_text.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

const unsigned duration_bucket_ms[DURATION_BUCKETS] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000};

void duration_histogram_observe(struct duration_histogram *histogram, unsigned long long ns) {
  int bucket = 0;
  while (bucket < DURATION_BUCKETS && ns > (unsigned long long)duration_bucket_ms[bucket] * 1000000ULL)
    bucket++;
  histogram->counts[bucket]++;
  histogram->count++;
  histogram->sum_ns += ns;
}

void duration_histogram_add(struct duration_histogram *into,
                            const struct duration_histogram *from) {
  for (int i = 0; i <= DURATION_BUCKETS; i++) into->counts[i] += from->counts[i];
  into->count += from->count;
  into->sum_ns += from->sum_ns;
}

/* The output and whether an append failed: checked once, at the end. */
struct writer {
  byte_buffer *out;
  int failed;
};

static void put(struct writer *w, const char *text) {
  if (byte_buffer_append(w->out, text, strlen(text)) != 0) w->failed = 1;
}

static void putf(struct writer *w, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct writer *w, const char *format, ...) {
  char line[256];
  va_list args;
  va_start(args, format);
  int length = vsnprintf(line, sizeof line, format, args);
  va_end(args);
  if (length < 0 || (size_t)length >= sizeof line) w->failed = 1; /* our formats are short */
  else put(w, line);
}

int metrics_append_label_value(byte_buffer *out, const char *value) {
  for (const char *c = value; *c; c++) {
    const char *escaped = *c == '\\' ? "\\\\" : *c == '"' ? "\\\"" : *c == '\n' ? "\\n" : NULL;
    int status = escaped ? byte_buffer_append(out, escaped, 2) : byte_buffer_append(out, c, 1);
    if (status != 0) return -1;
  }
  return 0;
}

static void family(struct writer *w, const char *name, const char *type, const char *help) {
  putf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* NAME{worker="..." (then the caller's further labels or nothing) */
static void worker_labels(struct writer *w, const char *name, const struct worker_metrics *worker) {
  putf(w, "%s{worker=\"", name);
  if (metrics_append_label_value(w->out, worker->name) != 0) w->failed = 1;
  put(w, "\"");
}

/* A per-worker counter or gauge: `offset` is where the figure is in the
 * worker's metrics (an unsigned long, or the long in_hand / int connected). */
enum figure_kind { FIGURE_UNSIGNED, FIGURE_LONG, FIGURE_INT };

static void worker_family(struct writer *w, const struct process_metrics *metrics,
                          const char *name, const char *type, const char *help, size_t offset,
                          enum figure_kind kind) {
  family(w, name, type, help);
  for (int i = 0; i < metrics->worker_count; i++) {
    const struct worker_metrics *worker = &metrics->workers[i];
    const char *field = (const char *)worker + offset;
    worker_labels(w, name, worker);
    if (kind == FIGURE_UNSIGNED) putf(w, "} %lu\n", *(const unsigned long *)field);
    else if (kind == FIGURE_LONG) putf(w, "} %ld\n", *(const long *)field);
    else putf(w, "} %d\n", *(const int *)field);
  }
}

/* "0.005", "2.5", "30": milliseconds as seconds, without trailing zeros. */
static void put_seconds_from_ms(struct writer *w, unsigned ms) {
  char fraction[8];
  snprintf(fraction, sizeof fraction, "%03u", ms % 1000);
  for (int i = 2; i >= 0 && fraction[i] == '0'; i--) fraction[i] = '\0';
  if (fraction[0]) putf(w, "%u.%s", ms / 1000, fraction);
  else putf(w, "%u", ms / 1000);
}

static void duration_family(struct writer *w, const struct process_metrics *metrics) {
  static const char name[] = "amqp_delegate_worker_task_duration_seconds";
  family(w, name, "histogram",
         "Time from a task's start to its answer, for the tasks that ran.");
  for (int i = 0; i < metrics->worker_count; i++) {
    const struct worker_metrics *worker = &metrics->workers[i];
    const struct duration_histogram *histogram = &worker->durations;
    unsigned long cumulative = 0;
    for (int b = 0; b <= DURATION_BUCKETS; b++) {
      cumulative += histogram->counts[b];
      worker_labels(w, "amqp_delegate_worker_task_duration_seconds_bucket", worker);
      put(w, ",le=\"");
      if (b < DURATION_BUCKETS) put_seconds_from_ms(w, duration_bucket_ms[b]);
      else put(w, "+Inf");
      putf(w, "\"} %lu\n", cumulative);
    }
    worker_labels(w, "amqp_delegate_worker_task_duration_seconds_sum", worker);
    putf(w, "} %llu.%09llu\n", histogram->sum_ns / 1000000000ULL,
         histogram->sum_ns % 1000000000ULL);
    worker_labels(w, "amqp_delegate_worker_task_duration_seconds_count", worker);
    putf(w, "} %lu\n", histogram->count);
  }
}

static void worker_families(struct writer *w, const struct process_metrics *metrics) {
#define WORKER(name, type, field, kind, help)                                                  \
  worker_family(w, metrics, "amqp_delegate_worker_" name, type, help,                          \
                offsetof(struct worker_metrics, field), kind)
  WORKER("connected", "gauge", connected, FIGURE_INT,
         "1 while the worker consumes its queue, else 0 (starting, reconnecting, stopping).");
  WORKER("requests_served_total", "counter", served, FIGURE_UNSIGNED,
         "Requests whose task ran and was answered (successfully or with its error).");
  WORKER("requests_failed_total", "counter", failed, FIGURE_UNSIGNED,
         "Requests answered with an error (the task's, a bad request or result, late, over "
         "the delivery limit).");
  WORKER("requests_expired_total", "counter", expired, FIGURE_UNSIGNED,
         "Requests answered TIMEOUT without running: their deadline had passed.");
  WORKER("requests_refused_total", "counter", refused_over_limit, FIGURE_UNSIGNED,
         "Requests answered DELIVERY_LIMIT without running: delivered too often.");
  WORKER("requests_in_hand", "gauge", in_hand, FIGURE_LONG,
         "Requests taken and not yet answered (waiting to start or running).");
  WORKER("redeliveries_total", "counter", redelivered, FIGURE_UNSIGNED,
         "Requests the broker delivered again (after a lost connection or a requeue).");
  WORKER("answered_from_cache_total", "counter", answered_from_cache, FIGURE_UNSIGNED,
         "Redelivered requests answered with the kept result, not run again.");
  WORKER("reconnections_total", "counter", reconnections, FIGURE_UNSIGNED,
         "Times the worker got a new channel after losing one.");
#undef WORKER
  duration_family(w, metrics);
}

static void delegator_families(struct writer *w, const struct delegator_metrics *d) {
  static const struct {
    const char *name, *type, *help;
    size_t offset;
  } figures[] = {
#define DELEGATOR(name, type, field, help)                                                     \
  {"amqp_delegate_delegator_" name, type, help, offsetof(struct delegator_metrics, field)}
      DELEGATOR("calls_sent_total", "counter", sent, "Calls published by the delegators."),
      DELEGATOR("calls_replied_total", "counter", replied,
                "Calls answered by a worker (with a result or its error)."),
      DELEGATOR("calls_failed_total", "counter", failed,
                "Calls that ended with an error (a worker's, or TIMEOUT, NO_ROUTE...)."),
      DELEGATOR("calls_timed_out_total", "counter", timed_out, "Calls that ended TIMEOUT."),
      DELEGATOR("calls_returned_total", "counter", returned,
                "Requests the broker returned: no queue for the name (NO_ROUTE)."),
      DELEGATOR("calls_retried_total", "counter", retried, "Requests sent again (retry)."),
      DELEGATOR("calls_not_confirmed_total", "counter", not_confirmed,
                "Requests the broker did not take (NOT_CONFIRMED)."),
      DELEGATOR("calls_no_worker_total", "counter", no_worker,
                "Calls that ended NO_WORKER: the queue had no consumer, nothing was sent."),
      DELEGATOR("calls_in_flight", "gauge", in_flight, "Calls waiting for their reply."),
      DELEGATOR("reconnections_total", "counter", reconnections,
                "Times a delegator got a new channel after losing one."),
#undef DELEGATOR
  };
  family(w, "amqp_delegate_delegators", "gauge", "Delegators in the process (started or not).");
  putf(w, "amqp_delegate_delegators %d\n", d->count);
  family(w, "amqp_delegate_delegators_connected", "gauge",
         "Delegators connected and ready to call.");
  putf(w, "amqp_delegate_delegators_connected %d\n", d->connected);
  for (size_t i = 0; i < sizeof figures / sizeof figures[0]; i++) {
    family(w, figures[i].name, figures[i].type, figures[i].help);
    putf(w, "%s %lu\n", figures[i].name,
         *(const unsigned long *)((const char *)d + figures[i].offset));
  }
}

int metrics_render(const struct process_metrics *metrics, byte_buffer *out) {
  struct writer w = {out, 0};
  family(&w, "amqp_delegate_info", "gauge", "The version of amqp-delegate, as a label.");
  put(&w, "amqp_delegate_info{version=\"");
  if (metrics_append_label_value(out, metrics->version) != 0) w.failed = 1;
  put(&w, "\"} 1\n");
  family(&w, "amqp_delegate_connected", "gauge",
         "1 when every started worker and delegator is connected, else 0.");
  putf(&w, "amqp_delegate_connected %d\n", metrics->connected);
  unsigned long reconnections = metrics->delegators.reconnections;
  for (int i = 0; i < metrics->worker_count; i++)
    reconnections += metrics->workers[i].reconnections;
  family(&w, "amqp_delegate_reconnections_total", "counter",
         "Times a worker or delegator of the process got a new channel after losing one.");
  putf(&w, "amqp_delegate_reconnections_total %lu\n", reconnections);
  worker_families(&w, metrics);
  delegator_families(&w, &metrics->delegators);
  return w.failed ? -1 : 0;
}

/* Standalone tests of the Prometheus text rendering (host/runtime/metrics_text.c):
 * HELP and TYPE once per family, label escaping, cumulative histogram buckets,
 * the sum in seconds whatever the locale, one worker of many. Run by ctest. */
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics_text.h"

static int passed, failed;

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (cond) {                                                   \
      passed++;                                                   \
    } else {                                                      \
      failed++;                                                   \
      fprintf(stderr, "FAIL (metrics_text_test.c:%d): ", __LINE__); \
      fprintf(stderr, __VA_ARGS__);                               \
      fputc('\n', stderr);                                        \
    }                                                             \
  } while (0)

static char *render(const struct process_metrics *metrics) {
  byte_buffer out;
  byte_buffer_init(&out);
  int status = metrics_render(metrics, &out);
  CHECK(status == 0, "metrics_render returned %d", status);
  byte_buffer_append(&out, "", 1);
  return out.data;
}

static int count(const char *text, const char *needle) {
  int n = 0;
  for (const char *at = strstr(text, needle); at; at = strstr(at + 1, needle)) n++;
  return n;
}

static void test_label_escaping(void) {
  byte_buffer out;
  byte_buffer_init(&out);
  metrics_append_label_value(&out, "a\"b\\c\nd");
  byte_buffer_append(&out, "", 1);
  CHECK(strcmp(out.data, "a\\\"b\\\\c\\nd") == 0, "escaped: %s", out.data);
  byte_buffer_free(&out);
}

static void test_histogram(void) {
  struct duration_histogram h;
  memset(&h, 0, sizeof h);
  duration_histogram_observe(&h, 1000000ULL);         /* 1 ms: first bucket */
  duration_histogram_observe(&h, 5000000ULL);         /* 5 ms: on the bound, first bucket */
  duration_histogram_observe(&h, 300000000ULL);       /* 300 ms: le 0.5 */
  duration_histogram_observe(&h, 500000000000ULL);    /* 500 s: +Inf */
  CHECK(h.counts[0] == 2, "first bucket %lu", h.counts[0]);
  CHECK(h.counts[6] == 1, "le 0.5 bucket %lu", h.counts[6]);
  CHECK(h.counts[DURATION_BUCKETS] == 1, "+Inf bucket %lu", h.counts[DURATION_BUCKETS]);
  CHECK(h.count == 4, "count %lu", h.count);

  struct worker_metrics worker = {.name = "slow \"one\"", .served = 4, .connected = 1};
  worker.durations = h;
  struct process_metrics metrics = {"0.1.0", 1, &worker, 1, {0}};
  char *text = render(&metrics);
  CHECK(strstr(text, "amqp_delegate_worker_task_duration_seconds_bucket{worker=\"slow \\\"one\\\"\","
                     "le=\"0.005\"} 2\n") != NULL, "first bucket line in:\n%s", text);
  CHECK(strstr(text, "le=\"0.25\"} 2\n") != NULL, "cumulative 0.25 in:\n%s", text);
  CHECK(strstr(text, "le=\"0.5\"} 3\n") != NULL, "cumulative 0.5 in:\n%s", text);
  CHECK(strstr(text, "le=\"120\"} 3\n") != NULL, "cumulative 120 in:\n%s", text);
  CHECK(strstr(text, "le=\"+Inf\"} 4\n") != NULL, "+Inf in:\n%s", text);
  CHECK(strstr(text, "amqp_delegate_worker_task_duration_seconds_sum{worker=\"slow \\\"one\\\"\"} "
                     "500.306000000\n") != NULL, "sum in:\n%s", text);
  CHECK(strstr(text, "_count{worker=\"slow \\\"one\\\"\"} 4\n") != NULL, "count in:\n%s", text);
  CHECK(count(text, "# TYPE amqp_delegate_worker_task_duration_seconds histogram\n") == 1,
        "one TYPE line");
  free(text);
}

static void test_families(void) {
  struct worker_metrics workers[2] = {
      {.name = "adder", .served = 7, .failed = 2, .in_hand = 1, .redelivered = 3,
       .answered_from_cache = 1, .reconnections = 2, .connected = 1},
      {.name = "greet", .served = 1, .connected = 0}};
  struct process_metrics metrics = {"0.1.0", 0, workers, 2, {0}};
  metrics.delegators.count = 1;
  metrics.delegators.sent = 9;
  metrics.delegators.reconnections = 1;
  char *text = render(&metrics);
  CHECK(strstr(text, "amqp_delegate_worker_requests_served_total{worker=\"adder\"} 7\n"), "served");
  CHECK(strstr(text, "amqp_delegate_worker_requests_served_total{worker=\"greet\"} 1\n"), "served 2");
  CHECK(strstr(text, "amqp_delegate_worker_requests_failed_total{worker=\"adder\"} 2\n"), "failed");
  CHECK(strstr(text, "amqp_delegate_worker_requests_in_hand{worker=\"adder\"} 1\n"), "in hand");
  CHECK(strstr(text, "amqp_delegate_worker_redeliveries_total{worker=\"adder\"} 3\n"), "redelivered");
  CHECK(strstr(text, "amqp_delegate_worker_answered_from_cache_total{worker=\"adder\"} 1\n"), "cache");
  CHECK(strstr(text, "amqp_delegate_worker_connected{worker=\"greet\"} 0\n"), "connected 0");
  CHECK(strstr(text, "amqp_delegate_connected 0\n"), "process connected");
  CHECK(strstr(text, "amqp_delegate_reconnections_total 3\n"), "reconnections summed:\n%s", text);
  CHECK(strstr(text, "amqp_delegate_delegator_calls_sent_total 9\n"), "delegator sent");
  CHECK(strstr(text, "amqp_delegate_info{version=\"0.1.0\"} 1\n"), "info");
  /* every family: one HELP and one TYPE, and every line is a comment or a sample */
  CHECK(count(text, "# HELP ") == count(text, "# TYPE "), "HELP and TYPE paired");
  CHECK(count(text, "# TYPE amqp_delegate_worker_requests_served_total counter\n") == 1,
        "one TYPE for served");
  for (char *line = text; *line;) {
    char *end = strchr(line, '\n');
    CHECK(end != NULL, "last line ends with a newline");
    if (!end) break;
    CHECK(line[0] == '#' || strncmp(line, "amqp_delegate_", 14) == 0, "line: %.*s",
          (int)(end - line), line);
    line = end + 1;
  }
  free(text);
}

/* A comma-decimal locale must not change the text (a worker file may set one). */
static void test_locale(void) {
  if (!setlocale(LC_NUMERIC, "de_DE.UTF-8") && !setlocale(LC_NUMERIC, "fr_FR.UTF-8")) return;
  struct worker_metrics worker = {.name = "w", .connected = 1};
  duration_histogram_observe(&worker.durations, 1500000000ULL);
  struct process_metrics metrics = {"0.1.0", 1, &worker, 1, {0}};
  char *text = render(&metrics);
  CHECK(strstr(text, "_sum{worker=\"w\"} 1.500000000\n") && strstr(text, "le=\"2.5\""),
        "locale independent:\n%s", text);
  free(text);
  setlocale(LC_NUMERIC, "C");
}

int main(void) {
  test_label_escaping();
  test_histogram();
  test_families();
  test_locale();
  printf("metrics_text_test: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

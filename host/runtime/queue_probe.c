/* Passive declares on a channel of their own (queue_probe.h), opened for a
 * run of questions and closed after the last. A 404 is the answer "no such
 * queue" and costs the channel, so the next question opens a new one; any
 * other close, or a broker that does not answer in time, fails every
 * question waiting, since the next would meet the same. */
#include "queue_probe.h"

#include <stdlib.h>
#include <string.h>

#include "runtime.h"

struct probe_question {
  struct probe_question *next;
  char name[SHORT_STRING_MAX];
};

static void on_reply(void *owner, const struct channel_reply *reply);
static void on_closed(void *owner, const struct ad_error *error);

void queue_probe_init(struct queue_probe *probe, uv_loop_t *loop, uv_timer_t *timer,
                      probe_answered_fn answered, void *owner) {
  memset(probe, 0, sizeof *probe);
  probe->loop = loop;
  probe->deadline = timer;
  probe->answered = answered;
  probe->owner = owner;
  if (timer) timer->data = probe;
}

static void drop_channel(struct queue_probe *probe) {
  if (probe->channel) channel_release(probe->channel);
  probe->channel = NULL;
  probe->channel_open = 0;
  probe->asked = 0;
  if (probe->deadline) uv_timer_stop(probe->deadline);
}

/* Takes the first question off before answering: the owner may ask again. */
static void answer_first(struct queue_probe *probe, enum probe_outcome outcome,
                         const struct channel_reply *reply, const struct ad_error *error) {
  struct probe_question *question = probe->first;
  probe->first = question->next;
  if (!probe->first) probe->last = NULL;
  probe->asked = 0;
  struct probe_answer answer;
  memset(&answer, 0, sizeof answer);
  answer.name = question->name;
  answer.outcome = outcome;
  if (reply) {
    answer.consumers = reply->consumer_count;
    answer.messages = reply->message_count;
  }
  if (error) answer.error = *error;
  probe->answered(probe->owner, &answer);
  free(question);
}

static void fail_all(struct queue_probe *probe, const struct ad_error *error) {
  drop_channel(probe);
  while (probe->first) answer_first(probe, PROBE_FAILED, NULL, error);
}

static void on_deadline(uv_timer_t *timer) {
  struct queue_probe *probe = timer->data;
  struct ad_error error;
  error_set(&error, ERR_TIMEOUT, "the broker at %s did not answer about queue '%s' within %g s",
            probe->channel ? channel_endpoint(probe->channel) : probe->url->redacted,
            probe->first ? probe->first->name : "", probe->options.connect_timeout);
  fail_all(probe, &error);
}

static void arm_deadline(struct queue_probe *probe) {
  if (!probe->deadline) return;
  uv_update_time(probe->loop); /* from plain Lua the loop's clock may be old */
  uv_timer_start(probe->deadline, on_deadline,
                 runtime_milliseconds(probe->options.connect_timeout), 0);
}

static void on_failed_soon(uv_timer_t *timer) {
  struct queue_probe *probe = timer->data;
  fail_all(probe, &probe->failure);
}

/* The questions fail from the loop, never inside queue_probe_ask: its
 * caller is in the middle of its own bookkeeping. */
static void fail_soon(struct queue_probe *probe, const struct ad_error *error) {
  drop_channel(probe);
  probe->failure = *error;
  if (probe->deadline) uv_timer_start(probe->deadline, on_failed_soon, 0, 0);
}

static void ask_first(struct queue_probe *probe) {
  struct queue_spec queue = {probe->first->name, 1, 0, 0, 0, NULL};
  struct ad_error error;
  if (channel_declare(probe->channel, &queue, &error) != 0) {
    fail_soon(probe, &error);
    return;
  }
  probe->asked = 1;
  arm_deadline(probe);
}

/* The first question goes out, on a channel opened for it when need be. */
static void begin(struct queue_probe *probe) {
  if (!probe->first || probe->asked) return;
  if (probe->channel && !probe->channel_open) return; /* its open-ok asks */
  if (probe->channel) {
    ask_first(probe);
    return;
  }
  struct channel_handler handler = {on_reply, NULL, NULL, on_closed, NULL, NULL, probe};
  probe->channel = channel_open(probe->loop, probe->url, &probe->options, &handler);
  if (!probe->channel) {
    struct ad_error error;
    error_set(&error, ERR_CONNECTION_FAILED, "out of memory for a channel");
    fail_soon(probe, &error);
    return;
  }
  arm_deadline(probe);
}

static void on_reply(void *owner, const struct channel_reply *reply) {
  struct queue_probe *probe = owner;
  if (reply->step == STEP_OPEN) {
    probe->channel_open = 1;
    begin(probe);
    return;
  }
  if (reply->step != STEP_DECLARE || !probe->asked || !probe->first) return;
  if (probe->deadline) uv_timer_stop(probe->deadline);
  answer_first(probe, PROBE_FOUND, reply, NULL);
  if (probe->first) begin(probe);
  else drop_channel(probe); /* questions are rare: no channel is kept for them */
}

static void on_closed(void *owner, const struct ad_error *error) {
  struct queue_probe *probe = owner;
  int no_queue = probe->asked && probe->first && strcmp(error->code, ERR_NOT_FOUND) == 0;
  if (!no_queue) {
    fail_all(probe, error);
    return;
  }
  drop_channel(probe); /* the broker closed it to say no */
  answer_first(probe, PROBE_NO_QUEUE, NULL, NULL);
  begin(probe);
}

int queue_probe_asking(const struct queue_probe *probe, const char *name) {
  for (const struct probe_question *q = probe->first; q; q = q->next)
    if (strcmp(q->name, name) == 0) return 1;
  return 0;
}

int queue_probe_ask(struct queue_probe *probe, const struct amqp_url *url,
                    const struct connection_options *options, const char *name) {
  if (queue_probe_asking(probe, name)) return 0;
  size_t length = strlen(name);
  if (length == 0 || length >= SHORT_STRING_MAX) return -1;
  struct probe_question *question = calloc(1, sizeof *question);
  if (!question) return -1;
  memcpy(question->name, name, length + 1);
  if (!probe->first && probe->url != url) { /* the owner moved to another broker */
    drop_channel(probe);
    probe->url = url;
  }
  probe->options = *options;
  if (probe->last) probe->last->next = question;
  else probe->first = question;
  probe->last = question;
  begin(probe);
  return 0;
}

void queue_probe_reset(struct queue_probe *probe) {
  drop_channel(probe);
  while (probe->first) {
    struct probe_question *question = probe->first;
    probe->first = question->next;
    free(question);
  }
  probe->last = NULL;
}

void queue_probe_release(struct queue_probe *probe) {
  queue_probe_reset(probe);
  probe->deadline = NULL;
}

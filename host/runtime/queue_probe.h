/* Asks the broker about worker queues. A passive queue.declare says whether
 * a queue exists and how many consumers and waiting messages it has; the
 * broker says "no" (404) by closing the channel that asked, so questions go
 * on a channel of the probe's own beside its owner's, open while they last. One question at a
 * time, in order, each bounded by the connection's connect_timeout; answers
 * come through a callback from the loop, which must not run Lua. */
#ifndef AD_QUEUE_PROBE_H
#define AD_QUEUE_PROBE_H

#include <stdint.h>

#include <uv.h>

#include "connection.h"
#include "errors.h"

enum probe_outcome {
  PROBE_FOUND,    /* consumers and messages are the queue's */
  PROBE_NO_QUEUE, /* no queue by that name (nobody has served it, or it was deleted) */
  PROBE_FAILED    /* the broker could not be asked: error says why */
};

struct probe_answer {
  const char *name;
  enum probe_outcome outcome;
  uint32_t consumers, messages;
  struct ad_error error;
};

typedef void (*probe_answered_fn)(void *owner, const struct probe_answer *answer);

struct probe_question;

struct queue_probe {
  uv_loop_t *loop;
  probe_answered_fn answered;
  void *owner;
  struct channel *channel;
  const struct amqp_url *url; /* the broker the channel is on */
  struct connection_options options;
  int channel_open;           /* its channel.open-ok came */
  int asked;                  /* the first question's declare is sent */
  struct probe_question *first, *last;
  uv_timer_t *deadline;       /* the question's, or the failure's 0 ms turn */
  struct ad_error failure;    /* why every question fails, on that turn */
};

/* timer: the probe's own (runtime_timer_new), freed by the caller after
 * queue_probe_release. */
void queue_probe_init(struct queue_probe *probe, uv_loop_t *loop, uv_timer_t *timer,
                      probe_answered_fn answered, void *owner);
/* Asks about queue `name` (1 to 255 bytes) on the broker at url (a pointer
 * that stays valid: the owner's list). A name already waiting for its answer
 * is not asked twice. The answer never comes from inside this call. Returns
 * -1 when out of memory. */
int queue_probe_ask(struct queue_probe *probe, const struct amqp_url *url,
                    const struct connection_options *options, const char *name);
/* 1 while a question about name waits for its answer. */
int queue_probe_asking(const struct queue_probe *probe, const char *name);
/* Drops every question unanswered and the channel (the owner stops). */
void queue_probe_reset(struct queue_probe *probe);
void queue_probe_release(struct queue_probe *probe);

#endif

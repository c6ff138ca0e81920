/* The AMQP transport: one connection per broker (URL, TLS and heartbeat
 * settings) per loop, shared by channels, one channel per worker or
 * delegator. Everything here is asynchronous: the handshake runs on a thread
 * of libuv's pool, bounded by connect_timeout; channel requests (open,
 * declare, qos, consume, cancel) are sent and their replies arrive later
 * through the channel's handler. Handlers are called from the loop only
 * (frames read, timers, the handshake's end), never from inside a channel_*
 * call, and must not run Lua: owners queue their work (runtime_defer). */
#ifndef AD_CONNECTION_H
#define AD_CONNECTION_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "errors.h"
#include "url.h"

#define SHORT_STRING_MAX 256 /* AMQP shortstr: at most 255 bytes */

struct short_string {
  size_t length;
  int present;
  char bytes[SHORT_STRING_MAX];
};

void short_string_set(struct short_string *target, const void *bytes, size_t length);

struct message {
  uint64_t delivery_tag;
  int redelivered;
  long delivery_count; /* x-delivery-count (quorum queues): earlier deliveries; -1: absent */
  struct short_string correlation_id, reply_to, type;
  const char *body; /* NULL when the body was larger than the limit */
  size_t body_length;
  int body_too_large;
  const char *headers; /* a header list (header_list.h) of the scalar headers */
  size_t headers_length;
  int return_code; /* basic.return only */
  struct short_string return_text;
};

#define TLS_PATH_MAX 1024

/* For amqps:// URLs. Empty paths: not set (the CA then defaults to the
 * system's bundle). */
struct tls_options {
  char ca_file[TLS_PATH_MAX];
  char cert_file[TLS_PATH_MAX];
  char key_file[TLS_PATH_MAX];
  int verify_peer;     /* check the broker's certificate against the CA */
  int verify_hostname; /* and that it names the host of the URL */
};

struct connection_options {
  int heartbeat_seconds;  /* 0: none */
  double connect_timeout; /* seconds: TCP, TLS and login together */
  size_t max_body;        /* bytes; larger bodies arrive with body_too_large */
  struct tls_options tls;
};

/* The requests a channel makes, and the broker's answer to each. */
enum channel_step {
  STEP_OPEN,    /* the channel is open */
  STEP_DECLARE, /* queue.declare-ok: queue, message_count, consumer_count */
  STEP_QOS,
  STEP_CONSUME, /* basic.consume-ok: consumer_tag */
  STEP_CANCEL,
  STEP_CONFIRM /* confirm.select-ok: publishes are confirmed from now on */
};

struct channel_reply {
  enum channel_step step;
  struct short_string queue, consumer_tag;
  uint32_t message_count, consumer_count;
};

struct channel_handler {
  void (*on_reply)(void *owner, const struct channel_reply *reply);
  void (*on_message)(void *owner, const struct message *message);
  void (*on_return)(void *owner, const struct message *message);
  /* The channel is gone: the broker closed it (a refusal), the connection
   * failed or was lost, or the broker cancelled our consumer. Called once;
   * the owner then calls channel_release. */
  void (*on_closed)(void *owner, const struct ad_error *error);
  /* The broker blocks (1) or unblocks (0) publishing (memory or disk alarm). */
  void (*on_blocked)(void *owner, int blocked);
  /* In confirm mode: the broker took (ack 1) or refused (0) the publish
   * that carried token. Publishes lost with the channel are never
   * confirmed: on_closed tells. */
  void (*on_confirm)(void *owner, uint64_t token, int ack);
  void *owner;
};

struct publish {
  const char *routing_key;
  const struct short_string *correlation_id;
  const char *reply_to;   /* NULL for none */
  const char *type;       /* NULL for none */
  const char *expiration; /* milliseconds as text, NULL for none */
  const char *body;
  size_t body_length;
  int mandatory;
  uint64_t token;      /* handed back by on_confirm */
  const char *headers; /* a header list (header_list.h), NULL for none */
  size_t headers_length;
  /* One more header, first, from a number (the deadline): no text on the
   * way. NULL for none; the key must outlive the publish (a literal). */
  const char *number_key;
  int64_t number_value;
};

/* What a queue declare asks for. */
struct queue_spec {
  const char *name; /* "": a server-named queue */
  int passive;      /* only ask whether it exists (and its counts) */
  int durable, exclusive, auto_delete;
  const char *type; /* x-queue-type ("quorum", "classic"), NULL: none */
};

struct channel;

/* A channel on the shared connection for url and options, which is opened
 * when there is none. Returns NULL only when out of memory; anything else
 * (refused, timed out, bad credentials) arrives as on_closed. */
struct channel *channel_open(uv_loop_t *loop, const struct amqp_url *url,
                             const struct connection_options *options,
                             const struct channel_handler *handler);
/* The owner is done with it: no handler is called after this. An open
 * channel is closed politely (the broker requeues what it delivered and was
 * not acked); the last channel of a connection closes the connection. */
void channel_release(struct channel *channel);

/* Requests; each answer arrives as on_reply. One at a time. */
int channel_declare(struct channel *channel, const struct queue_spec *queue,
                    struct ad_error *error);
/* Puts the channel in confirm mode (publisher confirms). */
int channel_confirm(struct channel *channel, struct ad_error *error);
int channel_qos(struct channel *channel, int prefetch, struct ad_error *error);
int channel_consume(struct channel *channel, const struct short_string *queue, int no_ack,
                    int exclusive, struct ad_error *error);
int channel_cancel(struct channel *channel, const struct short_string *consumer_tag,
                   struct ad_error *error);

/* 0 sent; 1 held while the broker blocks publishing (sent, in order, once it
 * unblocks); -1 with error set when the channel cannot send. */
int channel_publish(struct channel *channel, const struct publish *publish,
                    struct ad_error *error);
int channel_ack(struct channel *channel, uint64_t delivery_tag, struct ad_error *error);
int channel_reject(struct channel *channel, uint64_t delivery_tag, int requeue,
                   struct ad_error *error);
/* Gives a delivery back without counting it as failed (basic.nack with
 * requeue: RabbitMQ 4.3 raises x-delivery-count on basic.reject only). */
int channel_requeue(struct channel *channel, uint64_t delivery_tag, struct ad_error *error);

int channel_is_open(const struct channel *channel);
int channel_is_blocked(const struct channel *channel);
/* What the channel waits for, for a timeout's message: "the TCP connect,
 * TLS and login", "the broker's answer to declaring a queue"... */
const char *channel_waiting_for(const struct channel *channel);
/* "host:port" of the broker */
const char *channel_endpoint(const struct channel *channel);

/* While Lua holds the loop (keepalive.c): sends a heartbeat frame on every
 * open connection of the loop whose half interval has passed since the last
 * one this sent (now_ms: a monotonic clock). Reads nothing. Returns the
 * shortest heartbeat interval in seconds (0: none). */
int transport_keepalive(uv_loop_t *loop, uint64_t now_ms);
/* Batches of work (the frames read in one go, the jobs of one loop turn):
 * while held, what the connections send is collected, and written once per
 * connection when the outermost hold is released, with no wait for more
 * work. A send from outside any hold is written at once. Holds nest. */
void transport_hold_writes(void);
void transport_release_writes(void);
/* Writes what the holds collected so far (Lua holds the loop: the keepalive
 * hook), the holds staying. */
void transport_flush_writes(void);
/* Frames sent and write(2) calls made by this process's batched
 * connections so far (TLS ones write as rabbitmq-c does and count in
 * neither). */
void transport_write_counts(unsigned long *frames, unsigned long *writes);
/* 1 when a connection to url with these options is open or opening, so a
 * new owner can share it. */
int transport_has_connection(uv_loop_t *loop, const struct amqp_url *url,
                             const struct connection_options *options);
/* Reads what the connections of this loop have received (used before a
 * plain Lua call after the loop was idle, so a dead connection is noticed
 * before a request is sent into it). */
void transport_poll(uv_loop_t *loop);
/* The loop is closing: every connection of it is closed now; those still in
 * their handshake are freed when their thread ends (run the loop). */
void transport_shutdown(uv_loop_t *loop);
/* 1 while a connection of this loop waits for its close-ok (at most 1 s). */
int transport_closing(uv_loop_t *loop);
/* rabbitmq-c's version, for --version. */
const char *transport_version(void);

#endif

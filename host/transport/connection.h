/* One AMQP connection with one channel, driven by the runtime's loop: it
 * opens and logs in, reads frames when its socket is readable (and when
 * rabbitmq-c already holds buffered frames), assembles messages and hands
 * them to its owner, sends heartbeats, publishes, acks, and closes. */
#ifndef AD_CONNECTION_H
#define AD_CONNECTION_H

#include <stddef.h>
#include <stdint.h>

#include <amqp.h>

#include "byte_buffer.h"
#include "errors.h"
#include "runtime.h"
#include "url.h"

#define SHORT_STRING_MAX 256 /* AMQP shortstr: at most 255 bytes */

struct short_string {
  size_t length;
  int present;
  char bytes[SHORT_STRING_MAX];
};

struct message {
  uint64_t delivery_tag;
  int redelivered;
  struct short_string correlation_id, reply_to, type;
  const char *body; /* NULL when the body was larger than the limit */
  size_t body_length;
  int body_too_large;
  int return_code; /* basic.return only */
  struct short_string return_text;
};

struct connection_handler {
  void (*on_message)(void *context, const struct message *message);
  void (*on_return)(void *context, const struct message *message);
  /* The connection is dead (socket, heartbeat, or the broker closed it or
   * the channel). Called once; the owner then calls connection_close. */
  void (*on_lost)(void *context, const struct ad_error *error);
  void *context;
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
  int heartbeat_seconds;   /* 0: none */
  double connect_timeout;  /* seconds */
  size_t max_body;         /* bytes; larger bodies arrive with body_too_large */
  struct tls_options tls;
};

struct publish {
  const char *routing_key;
  const struct short_string *correlation_id;
  const char *reply_to; /* NULL for none */
  const char *type;     /* NULL for none */
  const char *expiration; /* milliseconds as text, NULL for none */
  const char *body;
  size_t body_length;
  int mandatory;
};

struct connection;

/* Opens and logs in; returns NULL with error set (CONNECTION_FAILED or
 * AUTH_FAILED, naming host and port, never the password). */
struct connection *connection_open(struct runtime *runtime, const struct amqp_url *url,
                                   const struct connection_options *options,
                                   const struct connection_handler *handler,
                                   struct ad_error *error);
/* Closes politely when still alive, then frees (now or once libuv has
 * released its handles). The handler is never called after this. */
void connection_close(struct connection *connection);

int connection_is_open(const struct connection *connection);
const char *connection_endpoint(const struct connection *connection);

/* For the owner's synchronous RPCs (declare, qos, consume, cancel): the
 * rabbitmq-c state, and the check after each one, which also makes sure
 * frames rabbitmq-c queued meanwhile get read. */
amqp_connection_state_t connection_amqp(struct connection *connection);
int connection_check_rpc(struct connection *connection, const char *doing,
                         struct ad_error *error);

int connection_publish(struct connection *connection, const struct publish *publish,
                       struct ad_error *error);
int connection_ack(struct connection *connection, uint64_t delivery_tag, struct ad_error *error);
int connection_reject(struct connection *connection, uint64_t delivery_tag, int requeue,
                      struct ad_error *error);

void short_string_set(struct short_string *target, const void *bytes, size_t length);

#endif

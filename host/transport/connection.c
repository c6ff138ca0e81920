/* An AMQP connection on the runtime's loop. rabbitmq-c does nothing in the
 * background and buffers frames, so this file drains it until it has nothing
 * left before libuv polls the socket again, and a timer lets it send and check
 * heartbeats while the loop is otherwise idle. */
#include "connection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "log.h"
#include "tcp_connect.h"

#define CHANNEL 1
#define HANDLE_COUNT 3

enum stage { STAGE_IDLE, STAGE_HEADER, STAGE_BODY };

struct connection {
  struct runtime *runtime;
  amqp_connection_state_t amqp;
  struct connection_handler handler;
  struct connection_options options;
  uv_poll_t poll;
  uv_timer_t heartbeat_timer;
  uv_timer_t drain_timer; /* reads what rabbitmq-c queued during a sync RPC */
  int handles_to_close;
  int alive;      /* channel usable; cleared once on_lost has been called */
  int draining;   /* inside drain: closing must wait until it unwinds */
  int close_requested;
  enum stage stage;
  int incoming_is_return;
  uint64_t body_expected;
  struct message incoming;
  byte_buffer body;
  char endpoint[300]; /* host:port */
};

void short_string_set(struct short_string *target, const void *bytes, size_t length) {
  if (length >= SHORT_STRING_MAX) length = SHORT_STRING_MAX - 1;
  memcpy(target->bytes, bytes, length);
  target->bytes[length] = '\0';
  target->length = length;
  target->present = 1;
}

static void copy_property(struct short_string *target, amqp_flags_t flags, amqp_flags_t flag,
                          amqp_bytes_t value) {
  target->present = 0;
  target->length = 0;
  if (flags & flag) short_string_set(target, value.bytes, value.len);
}

int connection_is_open(const struct connection *connection) { return connection->alive; }

const char *connection_endpoint(const struct connection *connection) {
  return connection->endpoint;
}

amqp_connection_state_t connection_amqp(struct connection *connection) {
  return connection->amqp;
}

/* ---- losing and closing ---- */

static void connection_lost(struct connection *connection, const struct ad_error *error) {
  if (!connection->alive) return;
  connection->alive = 0;
  uv_poll_stop(&connection->poll);
  uv_timer_stop(&connection->heartbeat_timer);
  uv_timer_stop(&connection->drain_timer);
  if (!connection->close_requested && connection->handler.on_lost)
    connection->handler.on_lost(connection->handler.context, error);
}

static void handle_closed(uv_handle_t *handle) {
  struct connection *connection = handle->data;
  if (--connection->handles_to_close == 0) {
    byte_buffer_free(&connection->body);
    free(connection);
  }
}

static void destroy(struct connection *connection) {
  uv_poll_stop(&connection->poll); /* before rabbitmq-c closes the socket */
  if (connection->alive) {
    connection->alive = 0;
    amqp_channel_close(connection->amqp, CHANNEL, AMQP_REPLY_SUCCESS);
    amqp_connection_close(connection->amqp, AMQP_REPLY_SUCCESS);
  }
  amqp_destroy_connection(connection->amqp);
  connection->amqp = NULL;
  connection->handles_to_close = HANDLE_COUNT;
  uv_close((uv_handle_t *)&connection->poll, handle_closed);
  uv_close((uv_handle_t *)&connection->heartbeat_timer, handle_closed);
  uv_close((uv_handle_t *)&connection->drain_timer, handle_closed);
}

void connection_close(struct connection *connection) {
  if (connection->close_requested) return;
  connection->close_requested = 1;
  if (!connection->draining) destroy(connection);
}

/* ---- reading ---- */

static void message_complete(struct connection *connection) {
  struct message *message = &connection->incoming;
  message->body = message->body_too_large ? NULL : connection->body.data;
  message->body_length = connection->body.length;
  connection->stage = STAGE_IDLE;
  if (connection->incoming_is_return) {
    if (connection->handler.on_return)
      connection->handler.on_return(connection->handler.context, message);
  } else {
    connection->handler.on_message(connection->handler.context, message);
  }
  byte_buffer_reset(&connection->body);
}

static void start_message(struct connection *connection, int is_return) {
  struct message *message = &connection->incoming;
  memset(message, 0, offsetof(struct message, correlation_id));
  message->body_too_large = 0;
  message->return_code = 0;
  message->return_text.present = 0;
  connection->incoming_is_return = is_return;
  connection->stage = STAGE_HEADER;
  byte_buffer_reset(&connection->body);
}

static void on_header(struct connection *connection, const amqp_frame_t *frame) {
  const amqp_basic_properties_t *properties = frame->payload.properties.decoded;
  struct message *message = &connection->incoming;
  copy_property(&message->correlation_id, properties->_flags, AMQP_BASIC_CORRELATION_ID_FLAG,
                properties->correlation_id);
  copy_property(&message->reply_to, properties->_flags, AMQP_BASIC_REPLY_TO_FLAG,
                properties->reply_to);
  copy_property(&message->type, properties->_flags, AMQP_BASIC_TYPE_FLAG, properties->type);
  connection->body_expected = frame->payload.properties.body_size;
  message->body_too_large = connection->body_expected > connection->options.max_body;
  connection->stage = STAGE_BODY;
  if (connection->body_expected == 0) message_complete(connection);
}

/* Bodies over the limit are read and dropped, so the stream stays in step
 * and the owner can still settle the message and answer its caller. */
static int on_body(struct connection *connection, const amqp_frame_t *frame,
                   struct ad_error *error) {
  amqp_bytes_t fragment = frame->payload.body_fragment;
  connection->body_expected -= fragment.len < connection->body_expected
                                   ? fragment.len
                                   : connection->body_expected;
  if (!connection->incoming.body_too_large) {
    if (byte_buffer_append(&connection->body, fragment.bytes, fragment.len) != 0) {
      error_set(error, ERR_CONNECTION_LOST, "out of memory for a %zu byte message",
                connection->body.length + fragment.len);
      return -1;
    }
  } else {
    connection->body.length += fragment.len; /* counts what was dropped */
  }
  if (connection->body_expected == 0) message_complete(connection);
  return 0;
}

static int on_method(struct connection *connection, const amqp_frame_t *frame,
                     struct ad_error *error) {
  const amqp_method_t *method = &frame->payload.method;
  switch (method->id) {
    case AMQP_BASIC_DELIVER_METHOD: {
      const amqp_basic_deliver_t *deliver = method->decoded;
      start_message(connection, 0);
      connection->incoming.delivery_tag = deliver->delivery_tag;
      connection->incoming.redelivered = deliver->redelivered;
      return 0;
    }
    case AMQP_BASIC_RETURN_METHOD: {
      const amqp_basic_return_t *returned = method->decoded;
      start_message(connection, 1);
      connection->incoming.return_code = returned->reply_code;
      short_string_set(&connection->incoming.return_text, returned->reply_text.bytes,
                       returned->reply_text.len);
      return 0;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
      amqp_channel_close_ok_t close_ok = {0};
      error_from_close_method(error, method, connection->endpoint);
      amqp_send_method(connection->amqp, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
      return -1;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
      amqp_connection_close_ok_t close_ok = {0};
      error_from_close_method(error, method, connection->endpoint);
      amqp_send_method(connection->amqp, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &close_ok);
      return -1;
    }
    case AMQP_BASIC_CANCEL_METHOD:
      error_from_close_method(error, method, connection->endpoint);
      return -1;
    default:
      return 0; /* nothing else concerns us (e.g. basic.cancel-ok after stop) */
  }
}

static int on_frame(struct connection *connection, const amqp_frame_t *frame,
                    struct ad_error *error) {
  switch (frame->frame_type) {
    case AMQP_FRAME_METHOD:
      return on_method(connection, frame, error);
    case AMQP_FRAME_HEADER:
      if (connection->stage == STAGE_HEADER) on_header(connection, frame);
      return 0;
    case AMQP_FRAME_BODY:
      if (connection->stage == STAGE_BODY) return on_body(connection, frame, error);
      return 0;
    default:
      return 0;
  }
}

/* Reads every frame rabbitmq-c can give without blocking. The first read
 * always happens (it also sends and checks heartbeats); later ones only while
 * rabbitmq-c holds buffered data: asking the socket again would cost a recv
 * and a poll that find nothing, and epoll (level-triggered) wakes us for
 * whatever the kernel still holds. */
static void drain(struct connection *connection) {
  static const struct timeval immediately = {0, 0};
  struct ad_error error;
  connection->draining = 1;
  int first = 1;
  while (connection->alive && !connection->close_requested &&
         (first || amqp_frames_enqueued(connection->amqp) ||
          amqp_data_in_buffer(connection->amqp))) {
    first = 0;
    amqp_frame_t frame;
    struct timeval timeout = immediately;
    int status = amqp_simple_wait_frame_noblock(connection->amqp, &frame, &timeout);
    if (status == AMQP_STATUS_TIMEOUT) break;
    if (status != AMQP_STATUS_OK) {
      error_from_status(&error, ERR_CONNECTION_LOST, status, connection->endpoint);
      connection_lost(connection, &error);
      break;
    }
    if (on_frame(connection, &frame, &error) != 0) {
      connection_lost(connection, &error);
      break;
    }
    if (connection->stage == STAGE_IDLE) amqp_maybe_release_buffers(connection->amqp);
  }
  connection->draining = 0;
  if (connection->close_requested) destroy(connection);
}

/* libuv reports a socket error (POLLERR, e.g. a reset) as UV_EBADF; reading
 * lets rabbitmq-c say what really happened. */
static void on_readable(uv_poll_t *poll, int status, int events) {
  (void)events;
  struct connection *connection = poll->data;
  drain(connection);
  if (status < 0 && connection->alive && !connection->close_requested) {
    struct ad_error error;
    error_set(&error, ERR_CONNECTION_LOST, "%s: the connection failed (socket error)",
              connection->endpoint);
    connection_lost(connection, &error);
  }
}

static void on_timer(uv_timer_t *timer) { drain(timer->data); }

int connection_check_rpc(struct connection *connection, const char *doing,
                         struct ad_error *error) {
  amqp_rpc_reply_t reply = amqp_get_rpc_reply(connection->amqp);
  if (amqp_frames_enqueued(connection->amqp) || amqp_data_in_buffer(connection->amqp))
    uv_timer_start(&connection->drain_timer, on_timer, 0, 0);
  if (error_from_rpc_reply(error, reply, doing) == 0) return 0;
  if (reply.reply_type != AMQP_RESPONSE_NORMAL) connection_lost(connection, error);
  return -1;
}

/* ---- opening ---- */

static int open_tcp(struct connection *connection, const struct amqp_url *url,
                    struct ad_error *error) {
  amqp_socket_t *socket = amqp_tcp_socket_new(connection->amqp);
  char why[200];
  int fd = socket ? tcp_connect(url->info.host, url->info.port,
                                connection->options.connect_timeout, why, sizeof why)
                  : -1;
  if (!socket) snprintf(why, sizeof why, "cannot create a socket");
  if (fd < 0) {
    error_set(error, ERR_CONNECTION_FAILED, "cannot connect to %s (%s): %s",
              connection->endpoint, url->redacted, why);
    return -1;
  }
  amqp_tcp_socket_set_sockfd(socket, fd); /* rabbitmq-c owns and closes it now */
  return 0;
}

#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

static int configure_tls(amqp_socket_t *socket, const struct tls_options *tls, char *why,
                         size_t why_size) {
  const char *ca_file = tls->ca_file[0] ? tls->ca_file : SYSTEM_CA_BUNDLE;
  amqp_ssl_socket_set_verify_peer(socket, tls->verify_peer);
  amqp_ssl_socket_set_verify_hostname(socket, tls->verify_hostname);
  if (tls->verify_peer && amqp_ssl_socket_set_cacert(socket, ca_file) != AMQP_STATUS_OK) {
    snprintf(why, why_size, "cannot read the CA file '%s'", ca_file);
    return -1;
  }
  if ((tls->cert_file[0] || tls->key_file[0]) &&
      amqp_ssl_socket_set_key(socket, tls->cert_file, tls->key_file) != AMQP_STATUS_OK) {
    snprintf(why, why_size, "cannot use the client certificate '%s' with the key '%s'",
             tls->cert_file, tls->key_file);
    return -1;
  }
  return 0;
}

/* rabbitmq-c connects TLS sockets itself; when that fails below TLS, our own
 * connect says why (refused, timed out, unknown host). */
static int open_tls(struct connection *connection, const struct amqp_url *url,
                    struct ad_error *error) {
  char why[2 * TLS_PATH_MAX + 100];
  amqp_socket_t *socket = amqp_ssl_socket_new(connection->amqp);
  if (!socket) snprintf(why, sizeof why, "cannot create a TLS socket");
  if (!socket || configure_tls(socket, &connection->options.tls, why, sizeof why) != 0) {
    error_set(error, ERR_CONNECTION_FAILED, "cannot connect to %s (%s): %s",
              connection->endpoint, url->redacted, why);
    return -1;
  }
  double timeout = connection->options.connect_timeout;
  struct timeval limit = {(time_t)timeout, (suseconds_t)((timeout - (time_t)timeout) * 1e6)};
  int status = amqp_socket_open_noblock(socket, url->info.host, url->info.port, &limit);
  if (status == AMQP_STATUS_OK) return 0;
  snprintf(why, sizeof why, "%s", amqp_error_string2(status));
  if (status == AMQP_STATUS_SOCKET_ERROR || status == AMQP_STATUS_TIMEOUT ||
      status == AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED) {
    int fd = tcp_connect(url->info.host, url->info.port, timeout, why, sizeof why);
    if (fd >= 0) close(fd);
  }
  error_set(error, ERR_CONNECTION_FAILED, "cannot connect to %s (%s): TLS: %s",
            connection->endpoint, url->redacted, why);
  return -1;
}

static int open_socket(struct connection *connection, const struct amqp_url *url,
                       struct ad_error *error) {
  return url->info.ssl ? open_tls(connection, url, error) : open_tcp(connection, url, error);
}

static int log_in(struct connection *connection, const struct amqp_url *url,
                  struct ad_error *error) {
  struct timeval rpc_timeout = {30, 0};
  amqp_set_rpc_timeout(connection->amqp, &rpc_timeout);
  /* consumer_cancel_notify: without it RabbitMQ stops delivering to a
   * consumer whose queue was deleted and says nothing. */
  amqp_table_entry_t capabilities[2] = {
      {amqp_cstring_bytes("consumer_cancel_notify"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
      {amqp_cstring_bytes("authentication_failure_close"),
       {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}}};
  amqp_table_entry_t properties[2] = {
      {amqp_cstring_bytes("product"),
       {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("amqp-delegate for Lua")}}},
      {amqp_cstring_bytes("capabilities"),
       {AMQP_FIELD_KIND_TABLE, {.table = {2, capabilities}}}}};
  amqp_table_t client_properties = {2, properties};
  amqp_rpc_reply_t reply = amqp_login_with_properties(
      connection->amqp, url->info.vhost, 0, AMQP_DEFAULT_FRAME_SIZE,
      connection->options.heartbeat_seconds, &client_properties, AMQP_SASL_METHOD_PLAIN,
      url->info.user, url->info.password);
  if (reply.reply_type == AMQP_RESPONSE_NORMAL) return 0;
  char doing[sizeof url->redacted + 400];
  snprintf(doing, sizeof doing, "logging in to %s as '%s' (%s)", connection->endpoint,
           url->info.user, url->redacted);
  error_from_login(error, reply, doing, url->info.vhost);
  return -1;
}

static int open_channel(struct connection *connection, struct ad_error *error) {
  amqp_channel_open(connection->amqp, CHANNEL);
  return error_from_rpc_reply(error, amqp_get_rpc_reply(connection->amqp),
                              "opening a channel");
}

static void start_watching(struct connection *connection) {
  uv_loop_t *loop = &connection->runtime->loop;
  uv_poll_init(loop, &connection->poll, amqp_get_sockfd(connection->amqp));
  uv_timer_init(loop, &connection->heartbeat_timer);
  uv_timer_init(loop, &connection->drain_timer);
  connection->poll.data = connection;
  connection->heartbeat_timer.data = connection;
  connection->drain_timer.data = connection;
  uv_poll_start(&connection->poll, UV_READABLE, on_readable);
  int heartbeat = amqp_get_heartbeat(connection->amqp);
  if (heartbeat > 0) {
    uint64_t period = (uint64_t)heartbeat * 1000 / 2;
    uv_timer_start(&connection->heartbeat_timer, on_timer, period, period);
  }
  if (amqp_frames_enqueued(connection->amqp) || amqp_data_in_buffer(connection->amqp))
    uv_timer_start(&connection->drain_timer, on_timer, 0, 0);
}

struct connection *connection_open(struct runtime *runtime, const struct amqp_url *url,
                                   const struct connection_options *options,
                                   const struct connection_handler *handler,
                                   struct ad_error *error) {
  struct connection *connection = calloc(1, sizeof *connection);
  if (!connection) {
    error_set(error, ERR_CONNECTION_FAILED, "out of memory");
    return NULL;
  }
  connection->runtime = runtime;
  connection->handler = *handler;
  connection->options = *options;
  byte_buffer_init(&connection->body);
  snprintf(connection->endpoint, sizeof connection->endpoint, "%s:%d", url->info.host,
           url->info.port);
  connection->amqp = amqp_new_connection();
  if (!connection->amqp) {
    error_set(error, ERR_CONNECTION_FAILED, "out of memory");
    free(connection);
    return NULL;
  }
  if (open_socket(connection, url, error) != 0 || log_in(connection, url, error) != 0 ||
      open_channel(connection, error) != 0) {
    amqp_destroy_connection(connection->amqp);
    free(connection);
    return NULL;
  }
  connection->alive = 1;
  start_watching(connection);
  return connection;
}

/* ---- sending ---- */

static int send_status(struct connection *connection, int status, const char *doing,
                       struct ad_error *error) {
  if (status == AMQP_STATUS_OK) return 0;
  char context[400];
  snprintf(context, sizeof context, "%s: %s", connection->endpoint, doing);
  error_from_status(error, ERR_CONNECTION_LOST, status, context);
  connection_lost(connection, error);
  return -1;
}

static int require_alive(struct connection *connection, struct ad_error *error) {
  if (connection->alive) return 0;
  error_set(error, ERR_CONNECTION_LOST, "%s: the connection is closed", connection->endpoint);
  return -1;
}

int connection_publish(struct connection *connection, const struct publish *publish,
                       struct ad_error *error) {
  if (require_alive(connection, error) != 0) return -1;
  amqp_basic_properties_t properties;
  properties._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
  properties.content_type = amqp_cstring_bytes("application/json");
  properties.correlation_id.bytes = (void *)publish->correlation_id->bytes;
  properties.correlation_id.len = publish->correlation_id->length;
  if (publish->reply_to) {
    properties._flags |= AMQP_BASIC_REPLY_TO_FLAG;
    properties.reply_to = amqp_cstring_bytes(publish->reply_to);
  }
  if (publish->expiration) {
    properties._flags |= AMQP_BASIC_EXPIRATION_FLAG;
    properties.expiration = amqp_cstring_bytes(publish->expiration);
  }
  if (publish->type) {
    properties._flags |= AMQP_BASIC_TYPE_FLAG;
    properties.type = amqp_cstring_bytes(publish->type);
  }
  amqp_bytes_t body = {publish->body_length, (void *)publish->body};
  int status = amqp_basic_publish(connection->amqp, CHANNEL, amqp_empty_bytes,
                                  amqp_cstring_bytes(publish->routing_key),
                                  publish->mandatory, 0, &properties, body);
  return send_status(connection, status, "publishing", error);
}

int connection_ack(struct connection *connection, uint64_t delivery_tag, struct ad_error *error) {
  if (require_alive(connection, error) != 0) return -1;
  return send_status(connection, amqp_basic_ack(connection->amqp, CHANNEL, delivery_tag, 0),
                     "acknowledging", error);
}

int connection_reject(struct connection *connection, uint64_t delivery_tag, int requeue,
                      struct ad_error *error) {
  if (require_alive(connection, error) != 0) return -1;
  return send_status(connection,
                     amqp_basic_reject(connection->amqp, CHANNEL, delivery_tag, requeue),
                     "rejecting", error);
}

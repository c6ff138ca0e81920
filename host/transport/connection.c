/* Shared AMQP connections and their channels on a libuv loop. rabbitmq-c
 * does nothing in the background and buffers frames, so this file drains it
 * until it has nothing left before libuv polls the socket again, and a timer
 * lets it send and check heartbeats while the loop is otherwise idle. The
 * blocking part of a connection's life (resolve, connect, TLS, login) runs on
 * a thread of libuv's pool; the loop never waits on the network. */
#include "connection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/crypto.h>

#include "ack_window.h"
#include "amqp_errors.h"
#include "byte_buffer.h"
#include "confirm_ring.h"
#include "header_list.h"
#include "log.h"
#include "tcp_connect.h"
#include "write_batch.h"

#define CHANNEL_LIMIT 2047   /* RabbitMQ's default channel_max */
#define CLOSE_GRACE_MS 1000  /* how long a polite close waits for close-ok */
#define HANDLE_COUNT 5

enum connection_state { CONNECTION_CONNECTING, CONNECTION_OPEN, CONNECTION_CLOSING, CONNECTION_DEAD };

enum channel_state {
  CHANNEL_WAITING, /* for its connection's handshake */
  CHANNEL_OPENING, /* channel.open sent */
  CHANNEL_OPEN,
  CHANNEL_CLOSING, /* released: channel.close sent, its number still taken */
  CHANNEL_DEAD     /* closed by the broker or with its connection */
};

enum stage { STAGE_IDLE, STAGE_HEADER, STAGE_BODY };

/* A publish made while the broker blocks publishing, sent once it unblocks. */
struct held_publish {
  struct held_publish *next;
  uint64_t ack_tag; /* an ack held behind the publishes before it, when is_ack */
  int is_ack;
  uint64_t expires_at; /* loop time (ms) its expiration ends, when has_expiration */
  uint64_t token;      /* for on_confirm */
  const char *number_key; /* a literal */
  int64_t number_value;
  struct short_string correlation_id;
  int mandatory;
  size_t routing_key_length, reply_to_length, type_length, expiration_length, body_length;
  int has_reply_to, has_type, has_expiration;
  size_t headers_length;
  char data[]; /* routing key, reply_to, type, expiration (each NUL-ended), body, headers */
};

struct connection;

struct channel {
  struct connection *connection;
  struct channel_handler handler;
  enum channel_state state;
  int number;
  int released;  /* the owner let go: no handler is called any more */
  int notified;  /* on_closed was called */
  int failure_due; /* on_closed(failure) is due on the next turn */
  struct ad_error failure;
  uint32_t awaited_method; /* the reply a request waits for, 0: none */
  enum channel_step awaited_step;
  size_t max_body;
  enum stage stage;
  int incoming_is_return;
  uint64_t body_expected;
  struct message incoming;
  byte_buffer body;
  byte_buffer incoming_headers;
  struct held_publish *held_first, *held_last;
  int confirming; /* confirm.select-ok came: publishes go into unconfirmed */
  struct confirm_ring unconfirmed;
  int manual_acks; /* consuming with acks: deliveries are tracked in acks */
  struct ack_window acks;
  struct channel *next;
};

struct handshake {
  uv_work_t work;
  struct connection *connection;
  struct amqp_url url;
  struct connection_options options;
  char endpoint[300];
  amqp_connection_state_t amqp; /* the result, NULL when it failed */
  struct ad_error error;
  double queued, waited; /* when it was queued, how long it waited for a thread */
  volatile int stage;    /* how far the thread got (for a timeout's message only) */
};

struct connection {
  uv_loop_t *loop;
  enum connection_state state;
  amqp_connection_state_t amqp;
  struct amqp_url url;
  struct connection_options options;
  char endpoint[300]; /* host:port */
  struct channel *channels;
  struct channel *by_number[CHANNEL_LIMIT + 1];
  int handles_ready, handles_to_close;
  uv_poll_t poll;
  uv_timer_t heartbeat_timer;
  uv_timer_t drain_timer;  /* a drain on the next turn (data already buffered) */
  uv_timer_t notify_timer; /* tells channels about a loss, outside any channel_* call */
  uv_timer_t close_timer;  /* bounds a polite close */
  int draining, destroy_requested;
  int blocked;
  int abandoned; /* released during its handshake: freed when the thread ends */
  struct ad_error loss;
  struct handshake *handshake; /* while on its thread */
  uint64_t keepalive_sent_ms;  /* the last heartbeat transport_keepalive sent */
  struct write_batch writes;   /* frames written together (plain TCP only) */
  int watching_writable;       /* a flush left bytes: the poll waits for room too */
  struct connection *next; /* in the pool */
};

/* Every connection not yet freed, of every loop (a process normally has
 * one loop); only those connecting or open are shared. */
static struct connection *pool;

/* > 0 while the loop does a batch of work (frames read, jobs run): what the
 * connections send meanwhile is written when it ends (transport.h). */
static int writes_held;
/* frames and writes of the connections already freed (transport_write_counts) */
static unsigned long frames_before, writes_before;

void short_string_set(struct short_string *target, const void *bytes, size_t length) {
  if (length >= SHORT_STRING_MAX) length = SHORT_STRING_MAX - 1;
  memcpy(target->bytes, bytes, length);
  target->bytes[length] = '\0';
  target->length = length;
  target->present = 1;
}

static const char *step_name(enum channel_step step) {
  static const char *const names[] = {"opening a channel",      "declaring a queue",
                                      "setting prefetch",       "consuming",
                                      "cancelling the consumer", "selecting publisher confirms"};
  return names[step];
}

static void copy_property(struct short_string *target, amqp_flags_t flags, amqp_flags_t flag,
                          amqp_bytes_t value) {
  target->present = 0;
  target->length = 0;
  target->bytes[0] = '\0';
  if (flags & flag) short_string_set(target, value.bytes, value.len);
}

static amqp_bytes_t short_bytes(const struct short_string *text) {
  amqp_bytes_t bytes = {text->length, (void *)text->bytes};
  return bytes;
}

/* ---- the pool ---- */

static int same_tls(const struct tls_options *a, const struct tls_options *b) {
  return strcmp(a->ca_file, b->ca_file) == 0 && strcmp(a->cert_file, b->cert_file) == 0 &&
         strcmp(a->key_file, b->key_file) == 0 && a->verify_peer == b->verify_peer &&
         a->verify_hostname == b->verify_hostname;
}

const char *transport_version(void) { return amqp_version(); }

static int same_text(const char *a, const char *b) {
  return (a == NULL) == (b == NULL) && (!a || strcmp(a, b) == 0);
}

/* amqp_parse_url cuts the URL's text in place: compare what it names. */
static int same_broker(const struct amqp_url *a, const struct amqp_url *b) {
  return a->info.port == b->info.port && a->info.ssl == b->info.ssl &&
         same_text(a->info.host, b->info.host) && same_text(a->info.user, b->info.user) &&
         same_text(a->info.password, b->info.password) &&
         same_text(a->info.vhost, b->info.vhost);
}

static struct connection *find_shared(uv_loop_t *loop, const struct amqp_url *url,
                                      const struct connection_options *options) {
  for (struct connection *c = pool; c; c = c->next)
    if (c->loop == loop && !c->abandoned &&
        (c->state == CONNECTION_CONNECTING || c->state == CONNECTION_OPEN) &&
        same_broker(&c->url, url) &&
        c->options.heartbeat_seconds == options->heartbeat_seconds &&
        same_tls(&c->options.tls, &options->tls))
      return c;
  return NULL;
}

static void pool_remove(struct connection *connection) {
  for (struct connection **at = &pool; *at; at = &(*at)->next)
    if (*at == connection) {
      *at = connection->next;
      connection->next = NULL;
      return;
    }
}

/* ---- freeing ---- */

static void free_held(struct channel *channel) {
  while (channel->held_first) {
    struct held_publish *held = channel->held_first;
    channel->held_first = held->next;
    free(held);
  }
  channel->held_last = NULL;
}

static void channel_free(struct channel *channel) {
  struct connection *connection = channel->connection;
  for (struct channel **at = &connection->channels; *at; at = &(*at)->next)
    if (*at == channel) {
      *at = channel->next;
      break;
    }
  if (channel->number && connection->by_number[channel->number] == channel)
    connection->by_number[channel->number] = NULL;
  free_held(channel);
  confirm_ring_free(&channel->unconfirmed);
  ack_window_free(&channel->acks);
  byte_buffer_free(&channel->body);
  byte_buffer_free(&channel->incoming_headers);
  free(channel);
}

static void handle_closed(uv_handle_t *handle) {
  struct connection *connection = handle->data;
  if (--connection->handles_to_close == 0) free(connection);
}

/* Frees the connection and the channels its owners already released. Only
 * once no owner holds a channel of it (or at shutdown). */
static void connection_destroy(struct connection *connection) {
  if (connection->draining) {
    connection->destroy_requested = 1;
    return;
  }
  pool_remove(connection);
  while (connection->channels) channel_free(connection->channels);
  if (connection->handles_ready) uv_poll_stop(&connection->poll); /* before the socket closes */
  write_batch_flush(&connection->writes); /* a polite close still leaves: best effort */
  if (connection->amqp) amqp_destroy_connection(connection->amqp);
  connection->amqp = NULL;
  frames_before += connection->writes.frames;
  writes_before += connection->writes.writes;
  write_batch_free(&connection->writes); /* rabbitmq-c's socket pointed into it */
  connection->state = CONNECTION_DEAD;
  if (!connection->handles_ready) {
    free(connection);
    return;
  }
  connection->handles_to_close = HANDLE_COUNT;
  uv_close((uv_handle_t *)&connection->poll, handle_closed);
  uv_close((uv_handle_t *)&connection->heartbeat_timer, handle_closed);
  uv_close((uv_handle_t *)&connection->drain_timer, handle_closed);
  uv_close((uv_handle_t *)&connection->notify_timer, handle_closed);
  uv_close((uv_handle_t *)&connection->close_timer, handle_closed);
}

static int held_by_owners(const struct connection *connection) {
  for (const struct channel *c = connection->channels; c; c = c->next)
    if (!c->released) return 1;
  return 0;
}

/* ---- losing ---- */

static void stop_watching(struct connection *connection) {
  if (!connection->handles_ready) return;
  uv_poll_stop(&connection->poll);
  uv_timer_stop(&connection->heartbeat_timer);
  uv_timer_stop(&connection->drain_timer);
}

/* Tells the channels still held what is due: a failure found inside a
 * channel_* call (no free channel number), and, once the connection is
 * dead, the loss. The owners release them; the last release frees the
 * connection (deferred while we iterate). */
static int notification_due(const struct connection *connection,
                            const struct channel *channel) {
  if (channel->released) return 0;
  return channel->failure_due ||
         (connection->state == CONNECTION_DEAD && !channel->notified);
}

static void notify_channels(struct connection *connection) {
  connection->draining = 1;
  for (;;) {
    struct channel *channel = connection->channels;
    while (channel && !notification_due(connection, channel)) channel = channel->next;
    if (!channel) break;
    const struct ad_error *error = channel->failure_due ? &channel->failure : &connection->loss;
    channel->failure_due = 0;
    channel->notified = 1;
    channel->state = CHANNEL_DEAD;
    channel->handler.on_closed(channel->handler.owner, error);
  }
  connection->draining = 0;
  if (connection->destroy_requested ||
      (connection->state == CONNECTION_DEAD && !held_by_owners(connection)))
    connection_destroy(connection);
}

static void notify_due(uv_timer_t *timer) { notify_channels(timer->data); }

/* The socket, the heartbeat or the broker ended the connection. The owners
 * hear it on the next turn of the loop, never inside a channel_* call. */
static void connection_lost(struct connection *connection, const struct ad_error *error) {
  if (connection->state == CONNECTION_DEAD) return;
  int was_closing = connection->state == CONNECTION_CLOSING;
  connection->state = CONNECTION_DEAD;
  connection->loss = *error;
  stop_watching(connection);
  uv_timer_stop(&connection->close_timer);
  if (was_closing && !held_by_owners(connection)) {
    connection_destroy(connection);
    return;
  }
  log_line(LOG_DEBUG, "connection to %s lost: %s: %s", connection->endpoint, error->code,
           error->message);
  uv_timer_start(&connection->notify_timer, notify_due, 0, 0);
}

static int send_status(struct connection *connection, int status, const char *doing,
                       struct ad_error *error) {
  if (status == AMQP_STATUS_OK) return 0;
  char context[400];
  snprintf(context, sizeof context, "%s: %s", connection->endpoint, doing);
  error_from_status(error, ERR_CONNECTION_LOST, status, context);
  connection_lost(connection, error);
  return -1;
}

/* ---- closing politely ---- */

static void close_timed_out(uv_timer_t *timer) { connection_destroy(timer->data); }

/* The last owner let go: connection.close, then close-ok or the grace time. */
static void connection_close(struct connection *connection) {
  if (connection->state != CONNECTION_OPEN) return;
  connection->state = CONNECTION_CLOSING;
  amqp_connection_close_t close = {AMQP_REPLY_SUCCESS, amqp_cstring_bytes("bye"), 0, 0};
  if (amqp_send_method(connection->amqp, 0, AMQP_CONNECTION_CLOSE_METHOD, &close) !=
      AMQP_STATUS_OK) {
    connection_destroy(connection);
    return;
  }
  uv_update_time(connection->loop); /* a plain stop() may come after a long idle */
  uv_timer_start(&connection->close_timer, close_timed_out, CLOSE_GRACE_MS, 0);
}

/* ---- requests on a channel ---- */

static int require_open(struct channel *channel, struct ad_error *error) {
  if (channel->state == CHANNEL_OPEN && channel->connection->state == CONNECTION_OPEN) return 0;
  error_set(error, ERR_CONNECTION_LOST, "%s: the channel is closed",
            channel->connection->endpoint);
  return -1;
}

static int send_request(struct channel *channel, amqp_method_number_t method, void *arguments,
                        amqp_method_number_t reply, enum channel_step step, const char *doing,
                        struct ad_error *error) {
  if (require_open(channel, error) != 0) return -1;
  channel->awaited_method = reply;
  channel->awaited_step = step;
  return send_status(channel->connection,
                     amqp_send_method(channel->connection->amqp, (amqp_channel_t)channel->number,
                                      method, arguments),
                     doing, error);
}

int channel_declare(struct channel *channel, const struct queue_spec *queue,
                    struct ad_error *error) {
  amqp_queue_declare_t declare;
  memset(&declare, 0, sizeof declare);
  declare.queue = amqp_cstring_bytes(queue->name);
  declare.passive = (amqp_boolean_t)queue->passive;
  declare.durable = (amqp_boolean_t)queue->durable;
  declare.exclusive = (amqp_boolean_t)queue->exclusive;
  declare.auto_delete = (amqp_boolean_t)queue->auto_delete;
  amqp_table_entry_t type = {amqp_cstring_bytes("x-queue-type"),
                             {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_empty_bytes}}};
  declare.arguments = amqp_empty_table;
  if (queue->type && !queue->passive) {
    type.value.value.bytes = amqp_cstring_bytes(queue->type);
    declare.arguments.num_entries = 1;
    declare.arguments.entries = &type;
  }
  return send_request(channel, AMQP_QUEUE_DECLARE_METHOD, &declare, AMQP_QUEUE_DECLARE_OK_METHOD,
                      STEP_DECLARE, "declaring a queue", error);
}

int channel_qos(struct channel *channel, int prefetch, struct ad_error *error) {
  amqp_basic_qos_t qos = {0, (uint16_t)prefetch, 0};
  return send_request(channel, AMQP_BASIC_QOS_METHOD, &qos, AMQP_BASIC_QOS_OK_METHOD, STEP_QOS,
                      "setting prefetch", error);
}

int channel_consume(struct channel *channel, const struct short_string *queue, int no_ack,
                    int exclusive, struct ad_error *error) {
  amqp_basic_consume_t consume;
  memset(&consume, 0, sizeof consume);
  consume.queue = short_bytes(queue);
  consume.consumer_tag = amqp_empty_bytes;
  consume.no_ack = (amqp_boolean_t)no_ack;
  channel->manual_acks = !no_ack;
  consume.exclusive = (amqp_boolean_t)exclusive;
  consume.arguments = amqp_empty_table;
  return send_request(channel, AMQP_BASIC_CONSUME_METHOD, &consume,
                      AMQP_BASIC_CONSUME_OK_METHOD, STEP_CONSUME, "consuming", error);
}

int channel_confirm(struct channel *channel, struct ad_error *error) {
  amqp_confirm_select_t select = {0};
  return send_request(channel, AMQP_CONFIRM_SELECT_METHOD, &select,
                      AMQP_CONFIRM_SELECT_OK_METHOD, STEP_CONFIRM,
                      "selecting publisher confirms", error);
}

int channel_cancel(struct channel *channel, const struct short_string *consumer_tag,
                   struct ad_error *error) {
  amqp_basic_cancel_t cancel = {short_bytes(consumer_tag), 0};
  return send_request(channel, AMQP_BASIC_CANCEL_METHOD, &cancel, AMQP_BASIC_CANCEL_OK_METHOD,
                      STEP_CANCEL, "cancelling the consumer", error);
}

/* ---- publishing, holding while blocked ---- */

/* ---- headers: our flat list and AMQP tables ---- */

/* The list's entries as an AMQP table; entries point into the list. */
static int table_of_headers(const char *list, size_t length, amqp_table_entry_t *entries) {
  size_t cursor = 0;
  int count = 0;
  struct header header;
  while (count < HEADER_LIST_MAX_ENTRIES && header_list_next(list, length, &cursor, &header)) {
    amqp_table_entry_t *entry = &entries[count++];
    entry->key.bytes = (void *)header.key;
    entry->key.len = header.key_length;
    int64_t number;
    if (header.kind == HEADER_INTEGER && header_integer(&header, &number)) {
      entry->value.kind = AMQP_FIELD_KIND_I64;
      entry->value.value.i64 = number;
    } else if (header.kind == HEADER_BOOLEAN) {
      entry->value.kind = AMQP_FIELD_KIND_BOOLEAN;
      entry->value.value.boolean = header.value[0] == '1';
    } else {
      entry->value.kind = AMQP_FIELD_KIND_UTF8;
      entry->value.value.bytes.bytes = (void *)header.value;
      entry->value.value.bytes.len = header.value_length;
    }
  }
  return count;
}

/* A signed decimal, written by hand: snprintf showed in profiles of a
 * request's headers (its deadline). Returns the length. */
static int decimal_text(char *out, int64_t value) {
  char digits[24];
  int count = 0;
  uint64_t magnitude = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
  do {
    digits[count++] = (char)('0' + magnitude % 10);
    magnitude /= 10;
  } while (magnitude);
  int length = 0;
  if (value < 0) out[length++] = '-';
  while (count) out[length++] = digits[--count];
  out[length] = '\0';
  return length;
}

/* The scalar entries of an AMQP table as our list (nested tables, arrays
 * and entries over the limits are left out). */
static void headers_of_table(const amqp_table_t *table, byte_buffer *list) {
  byte_buffer_reset(list);
  for (int i = 0; i < table->num_entries; i++) {
    const amqp_table_entry_t *entry = &table->entries[i];
    const amqp_field_value_t *value = &entry->value;
    const char *key = entry->key.bytes;
    size_t key_length = entry->key.len;
    char text[40];
    int length = -1;
    switch (value->kind) {
      case AMQP_FIELD_KIND_UTF8:
      case AMQP_FIELD_KIND_BYTES:
        header_list_add(list, HEADER_TEXT, key, key_length, value->value.bytes.bytes,
                        value->value.bytes.len);
        continue;
      case AMQP_FIELD_KIND_BOOLEAN:
        header_list_add(list, HEADER_BOOLEAN, key, key_length, value->value.boolean ? "1" : "0", 1);
        continue;
      case AMQP_FIELD_KIND_I8: length = decimal_text(text, value->value.i8); break;
      case AMQP_FIELD_KIND_U8: length = decimal_text(text, value->value.u8); break;
      case AMQP_FIELD_KIND_I16: length = decimal_text(text, value->value.i16); break;
      case AMQP_FIELD_KIND_U16: length = decimal_text(text, value->value.u16); break;
      case AMQP_FIELD_KIND_I32: length = decimal_text(text, value->value.i32); break;
      case AMQP_FIELD_KIND_U32: length = decimal_text(text, value->value.u32); break;
      case AMQP_FIELD_KIND_I64: length = decimal_text(text, value->value.i64); break;
      case AMQP_FIELD_KIND_U64:
      case AMQP_FIELD_KIND_TIMESTAMP:
        if (value->value.u64 > INT64_MAX) continue;
        length = decimal_text(text, (int64_t)value->value.u64);
        break;
      case AMQP_FIELD_KIND_F32:
        header_list_add(list, HEADER_TEXT, key, key_length, text,
                        (size_t)snprintf(text, sizeof text, "%.9g", value->value.f32));
        continue;
      case AMQP_FIELD_KIND_F64:
        header_list_add(list, HEADER_TEXT, key, key_length, text,
                        (size_t)snprintf(text, sizeof text, "%.17g", value->value.f64));
        continue;
      default:
        continue;
    }
    header_list_add(list, HEADER_INTEGER, key, key_length, text, (size_t)length);
  }
}

static int publish_now(struct channel *channel, const struct publish *publish,
                       struct ad_error *error) {
  amqp_basic_properties_t properties;
  properties._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
  properties.content_type = amqp_cstring_bytes("application/json");
  properties.correlation_id = short_bytes(publish->correlation_id);
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
  amqp_table_entry_t entries[HEADER_LIST_MAX_ENTRIES + 1];
  int count = 0;
  if (publish->number_key) {
    entries[0].key = amqp_cstring_bytes(publish->number_key);
    entries[0].value.kind = AMQP_FIELD_KIND_I64;
    entries[0].value.value.i64 = publish->number_value;
    count = 1;
  }
  if (publish->headers_length)
    count += table_of_headers(publish->headers, publish->headers_length, entries + count);
  if (count) {
    properties._flags |= AMQP_BASIC_HEADERS_FLAG;
    properties.headers.entries = entries;
    properties.headers.num_entries = count;
  }
  amqp_bytes_t body = {publish->body_length, (void *)publish->body};
  if (channel->confirming && confirm_ring_reserve(&channel->unconfirmed) != 0) {
    error_set(error, ERR_CONNECTION_LOST, "out of memory for an unconfirmed publish");
    return -1;
  }
  int status = amqp_basic_publish(channel->connection->amqp, (amqp_channel_t)channel->number,
                                  amqp_empty_bytes, amqp_cstring_bytes(publish->routing_key),
                                  publish->mandatory, 0, &properties, body);
  if (send_status(channel->connection, status, "publishing", error) != 0) return -1;
  if (channel->confirming) confirm_ring_push(&channel->unconfirmed, publish->token);
  return 0;
}

static char *append_text(char *out, const char *text, size_t *length, int *present) {
  *present = text != NULL;
  *length = text ? strlen(text) : 0;
  if (text) memcpy(out, text, *length);
  out[*length] = '\0';
  return out + *length + 1;
}

static void append_held(struct channel *channel, struct held_publish *held) {
  held->next = NULL;
  if (channel->held_last) channel->held_last->next = held;
  else channel->held_first = held;
  channel->held_last = held;
}

/* An ack after a held reply waits for it: a request is acked only once its
 * answer has left. */
static int hold_ack(struct channel *channel, uint64_t delivery_tag, struct ad_error *error) {
  struct held_publish *held = calloc(1, sizeof *held);
  if (!held) {
    error_set(error, ERR_CONNECTION_LOST, "out of memory holding an ack while blocked");
    return -1;
  }
  held->is_ack = 1;
  held->ack_tag = delivery_tag;
  append_held(channel, held);
  return 1;
}

static int hold(struct channel *channel, const struct publish *publish, struct ad_error *error) {
  size_t size = strlen(publish->routing_key) + (publish->reply_to ? strlen(publish->reply_to) : 0) +
                (publish->type ? strlen(publish->type) : 0) +
                (publish->expiration ? strlen(publish->expiration) : 0) + 4 +
                publish->body_length + publish->headers_length;
  struct held_publish *held = malloc(sizeof *held + size);
  if (!held) {
    error_set(error, ERR_CONNECTION_LOST, "out of memory holding a publish while blocked");
    return -1;
  }
  int present;
  char *at = append_text(held->data, publish->routing_key, &held->routing_key_length, &present);
  at = append_text(at, publish->reply_to, &held->reply_to_length, &held->has_reply_to);
  at = append_text(at, publish->type, &held->type_length, &held->has_type);
  at = append_text(at, publish->expiration, &held->expiration_length, &held->has_expiration);
  memcpy(at, publish->body, publish->body_length);
  held->body_length = publish->body_length;
  if (publish->headers_length) memcpy(at + publish->body_length, publish->headers,
                                      publish->headers_length);
  held->headers_length = publish->headers_length;
  held->correlation_id = *publish->correlation_id;
  held->mandatory = publish->mandatory;
  held->token = publish->token;
  held->number_key = publish->number_key;
  held->number_value = publish->number_value;
  held->is_ack = 0;
  if (publish->expiration)
    held->expires_at = uv_now(channel->connection->loop) + strtoull(publish->expiration, NULL, 10);
  append_held(channel, held);
  return 1;
}

static int send_held(struct channel *channel, struct held_publish *held, struct ad_error *error) {
  if (held->is_ack) {
    ack_window_settled(&channel->acks, held->ack_tag);
    return send_status(channel->connection,
                       amqp_basic_ack(channel->connection->amqp, (amqp_channel_t)channel->number,
                                      held->ack_tag, 0),
                       "acknowledging", error);
  }
  const char *routing_key = held->data;
  const char *reply_to = routing_key + held->routing_key_length + 1;
  const char *type = reply_to + held->reply_to_length + 1;
  const char *expiration = type + held->type_length + 1;
  const char *body = expiration + held->expiration_length + 1;
  /* it leaves with the time it has left; one whose time is up is dropped,
   * as the broker would have */
  char left[24];
  if (held->has_expiration) {
    uint64_t now = uv_now(channel->connection->loop);
    if (held->expires_at <= now) return 0;
    snprintf(left, sizeof left, "%llu", (unsigned long long)(held->expires_at - now));
  }
  struct publish publish = {routing_key, &held->correlation_id,
                            held->has_reply_to ? reply_to : NULL, held->has_type ? type : NULL,
                            held->has_expiration ? left : NULL, body, held->body_length,
                            held->mandatory, held->token, body + held->body_length,
                            held->headers_length, held->number_key, held->number_value};
  return publish_now(channel, &publish, error);
}

/* The broker unblocked: what was held goes out in order. */
static void flush_held(struct connection *connection) {
  struct ad_error error;
  for (struct channel *channel = connection->channels; channel; channel = channel->next) {
    while (channel->held_first && connection->state == CONNECTION_OPEN && !connection->blocked &&
           channel->state == CHANNEL_OPEN) {
      struct held_publish *held = channel->held_first;
      channel->held_first = held->next;
      if (!channel->held_first) channel->held_last = NULL;
      int status = send_held(channel, held, &error);
      free(held);
      if (status != 0) return;
    }
  }
}

int channel_publish(struct channel *channel, const struct publish *publish,
                    struct ad_error *error) {
  if (require_open(channel, error) != 0) return -1;
  if (channel->connection->blocked || channel->held_first) return hold(channel, publish, error);
  return publish_now(channel, publish, error);
}

/* Acks made in a batch of work wait for its end (send_due_acks): those due
 * together go as one where they can. */
int channel_ack(struct channel *channel, uint64_t delivery_tag, struct ad_error *error) {
  if (require_open(channel, error) != 0) return -1;
  if (channel->held_first) return hold_ack(channel, delivery_tag, error);
  if (writes_held > 0 && channel->manual_acks && ack_window_due(&channel->acks, delivery_tag) == 0)
    return 0;
  ack_window_settled(&channel->acks, delivery_tag);
  return send_status(channel->connection,
                     amqp_basic_ack(channel->connection->amqp, (amqp_channel_t)channel->number,
                                    delivery_tag, 0),
                     "acknowledging", error);
}

int channel_reject(struct channel *channel, uint64_t delivery_tag, int requeue,
                   struct ad_error *error) {
  if (require_open(channel, error) != 0) return -1;
  ack_window_settled(&channel->acks, delivery_tag);
  return send_status(channel->connection,
                     amqp_basic_reject(channel->connection->amqp, (amqp_channel_t)channel->number,
                                       delivery_tag, requeue),
                     "rejecting", error);
}

int channel_requeue(struct channel *channel, uint64_t delivery_tag, struct ad_error *error) {
  if (require_open(channel, error) != 0) return -1;
  ack_window_settled(&channel->acks, delivery_tag);
  return send_status(channel->connection,
                     amqp_basic_nack(channel->connection->amqp, (amqp_channel_t)channel->number,
                                     delivery_tag, 0, 1),
                     "giving back a delivery", error);
}

int channel_is_open(const struct channel *channel) {
  return channel->state == CHANNEL_OPEN && channel->connection->state == CONNECTION_OPEN;
}

int channel_is_blocked(const struct channel *channel) { return channel->connection->blocked; }

const char *channel_waiting_for(const struct channel *channel) {
  static const char *const steps[] = {
      "the broker's answer to opening a channel", "the broker's answer to declaring a queue",
      "the broker's answer to setting prefetch", "the broker's answer to consuming",
      "the broker's answer to cancelling the consumer",
      "the broker's answer to selecting publisher confirms"};
  static const char *const stages[] = {"a free thread for the TCP connect, TLS and login",
                                       "the TCP connect or TLS", "the login"};
  const struct handshake *handshake = channel->connection->handshake;
  if (channel->connection->state == CONNECTION_CONNECTING)
    return handshake ? stages[handshake->stage] : "the handshake";
  if (channel->connection->state != CONNECTION_OPEN) return "a connection";
  if (channel->awaited_method) return steps[channel->awaited_step];
  return "nothing";
}

const char *channel_endpoint(const struct channel *channel) {
  return channel->connection->endpoint;
}

/* ---- reading ---- */

static void message_complete(struct channel *channel) {
  struct message *message = &channel->incoming;
  message->body = message->body_too_large ? NULL : channel->body.data;
  message->body_length = channel->body.length;
  channel->stage = STAGE_IDLE;
  if (channel->released) return;
  if (channel->incoming_is_return) {
    if (channel->handler.on_return) channel->handler.on_return(channel->handler.owner, message);
  } else if (channel->handler.on_message) {
    channel->handler.on_message(channel->handler.owner, message);
  }
}

static void start_message(struct channel *channel, int is_return) {
  struct message *message = &channel->incoming;
  message->delivery_tag = 0;
  message->redelivered = 0;
  message->delivery_count = -1;
  message->body_too_large = 0;
  message->return_code = 0;
  message->return_text.present = 0;
  message->return_text.bytes[0] = '\0';
  channel->incoming_is_return = is_return;
  channel->stage = STAGE_HEADER;
  byte_buffer_reset(&channel->body);
}

/* x-delivery-count, which quorum queues add on redelivery; -1 when absent. */
static long delivery_count(const amqp_table_t *headers) {
  static const char name[] = "x-delivery-count";
  for (int i = 0; i < headers->num_entries; i++) {
    const amqp_table_entry_t *entry = &headers->entries[i];
    if (entry->key.len != sizeof name - 1 || memcmp(entry->key.bytes, name, sizeof name - 1))
      continue;
    const amqp_field_value_t *value = &entry->value;
    switch (value->kind) {
      case AMQP_FIELD_KIND_I8: return value->value.i8;
      case AMQP_FIELD_KIND_U8: return value->value.u8;
      case AMQP_FIELD_KIND_I16: return value->value.i16;
      case AMQP_FIELD_KIND_U16: return value->value.u16;
      case AMQP_FIELD_KIND_I32: return value->value.i32;
      case AMQP_FIELD_KIND_U32: return (long)value->value.u32;
      case AMQP_FIELD_KIND_I64: return (long)value->value.i64;
      case AMQP_FIELD_KIND_U64: return (long)value->value.u64;
      default: return -1;
    }
  }
  return -1;
}

static void on_header(struct channel *channel, const amqp_frame_t *frame) {
  const amqp_basic_properties_t *properties = frame->payload.properties.decoded;
  struct message *message = &channel->incoming;
  copy_property(&message->correlation_id, properties->_flags, AMQP_BASIC_CORRELATION_ID_FLAG,
                properties->correlation_id);
  copy_property(&message->reply_to, properties->_flags, AMQP_BASIC_REPLY_TO_FLAG,
                properties->reply_to);
  copy_property(&message->type, properties->_flags, AMQP_BASIC_TYPE_FLAG, properties->type);
  message->delivery_count = -1;
  message->headers = NULL;
  message->headers_length = 0;
  if (properties->_flags & AMQP_BASIC_HEADERS_FLAG) {
    message->delivery_count = delivery_count(&properties->headers);
    headers_of_table(&properties->headers, &channel->incoming_headers);
    message->headers = channel->incoming_headers.data;
    message->headers_length = channel->incoming_headers.length;
  }
  channel->body_expected = frame->payload.properties.body_size;
  message->body_too_large = channel->body_expected > channel->max_body;
  channel->stage = STAGE_BODY;
  if (channel->body_expected == 0) message_complete(channel);
}

/* Bodies over the limit are read and dropped, so the stream stays in step
 * and the owner can still settle the message and answer its caller. */
static int on_body(struct channel *channel, const amqp_frame_t *frame, struct ad_error *error) {
  amqp_bytes_t fragment = frame->payload.body_fragment;
  channel->body_expected -=
      fragment.len < channel->body_expected ? fragment.len : channel->body_expected;
  if (!channel->incoming.body_too_large) {
    if (byte_buffer_append(&channel->body, fragment.bytes, fragment.len) != 0) {
      error_set(error, ERR_CONNECTION_LOST, "out of memory for a %zu byte message",
                channel->body.length + fragment.len);
      return -1;
    }
  } else {
    channel->body.length += fragment.len; /* counts what was dropped */
  }
  if (channel->body_expected == 0) message_complete(channel);
  return 0;
}

static void deliver_reply(struct channel *channel, const amqp_method_t *method) {
  struct channel_reply reply;
  reply.step = channel->awaited_step;
  reply.queue.present = reply.consumer_tag.present = 0;
  reply.queue.length = reply.consumer_tag.length = 0;
  reply.queue.bytes[0] = reply.consumer_tag.bytes[0] = '\0';
  reply.message_count = reply.consumer_count = 0;
  if (method->id == AMQP_QUEUE_DECLARE_OK_METHOD) {
    const amqp_queue_declare_ok_t *ok = method->decoded;
    short_string_set(&reply.queue, ok->queue.bytes, ok->queue.len);
    reply.message_count = ok->message_count;
    reply.consumer_count = ok->consumer_count;
  } else if (method->id == AMQP_BASIC_CONSUME_OK_METHOD) {
    const amqp_basic_consume_ok_t *ok = method->decoded;
    short_string_set(&reply.consumer_tag, ok->consumer_tag.bytes, ok->consumer_tag.len);
  }
  channel->awaited_method = 0;
  if (method->id == AMQP_CHANNEL_OPEN_OK_METHOD) channel->state = CHANNEL_OPEN;
  if (method->id == AMQP_CONFIRM_SELECT_OK_METHOD) channel->confirming = 1;
  if (!channel->released && channel->handler.on_reply)
    channel->handler.on_reply(channel->handler.owner, &reply);
}

/* The broker closed this channel (a refusal) or cancelled its consumer. */
static void channel_failed(struct channel *channel, const struct ad_error *error) {
  if (channel->released) return;
  channel->notified = 1;
  channel->handler.on_closed(channel->handler.owner, error);
}

struct confirmation {
  struct channel *channel;
  int ack;
};

static void settle_confirmed(void *data, uint64_t token) {
  struct confirmation *confirmation = data;
  struct channel *channel = confirmation->channel;
  if (!channel->released && channel->handler.on_confirm)
    channel->handler.on_confirm(channel->handler.owner, token, confirmation->ack);
}

static void confirmed(struct channel *channel, uint64_t sequence, int multiple, int ack) {
  if (!channel->confirming || channel->state != CHANNEL_OPEN) return;
  struct confirmation confirmation = {channel, ack};
  confirm_ring_settle(&channel->unconfirmed, sequence, multiple, settle_confirmed,
                      &confirmation);
}

static int on_channel_method(struct channel *channel, const amqp_method_t *method) {
  struct connection *connection = channel->connection;
  struct ad_error error;
  switch (method->id) {
    case AMQP_BASIC_DELIVER_METHOD: {
      const amqp_basic_deliver_t *deliver = method->decoded;
      start_message(channel, 0);
      channel->incoming.delivery_tag = deliver->delivery_tag;
      if (channel->manual_acks) ack_window_delivered(&channel->acks, deliver->delivery_tag);
      channel->incoming.redelivered = deliver->redelivered;
      return 0;
    }
    case AMQP_BASIC_RETURN_METHOD: {
      const amqp_basic_return_t *returned = method->decoded;
      start_message(channel, 1);
      channel->incoming.return_code = returned->reply_code;
      short_string_set(&channel->incoming.return_text, returned->reply_text.bytes,
                       returned->reply_text.len);
      return 0;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
      amqp_channel_close_ok_t close_ok = {0};
      char doing[400];
      snprintf(doing, sizeof doing, "%s%s%s", connection->endpoint,
               channel->awaited_method ? ": " : "",
               channel->awaited_method ? step_name(channel->awaited_step) : "");
      error_from_close_method(&error, method, doing);
      int status = amqp_send_method(connection->amqp, (amqp_channel_t)channel->number,
                                    AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
      connection->by_number[channel->number] = NULL;
      channel->number = 0;
      int was_closing = channel->state == CHANNEL_CLOSING;
      channel->state = CHANNEL_DEAD;
      if (was_closing) channel_free(channel);
      else channel_failed(channel, &error);
      return send_status(connection, status, "closing a channel", &error);
    }
    case AMQP_CHANNEL_CLOSE_OK_METHOD:
      if (channel->state == CHANNEL_CLOSING) channel_free(channel);
      return 0;
    case AMQP_BASIC_ACK_METHOD: {
      const amqp_basic_ack_t *ack = method->decoded;
      confirmed(channel, ack->delivery_tag, ack->multiple, 1);
      return 0;
    }
    case AMQP_BASIC_NACK_METHOD: {
      const amqp_basic_nack_t *nack = method->decoded;
      confirmed(channel, nack->delivery_tag, nack->multiple, 0);
      return 0;
    }
    case AMQP_BASIC_CANCEL_METHOD:
      if (channel->state == CHANNEL_OPEN) {
        error_from_close_method(&error, method, connection->endpoint);
        channel_failed(channel, &error);
      }
      return 0;
    default:
      if (method->id == channel->awaited_method && channel->state != CHANNEL_CLOSING)
        deliver_reply(channel, method);
      return 0; /* nothing else concerns us */
  }
}

static void set_blocked(struct connection *connection, int blocked) {
  connection->blocked = blocked;
  log_line(blocked ? LOG_WARN : LOG_INFO, "%s: the broker %s publishing%s", connection->endpoint,
           blocked ? "blocks" : "unblocked", blocked ? " (memory or disk alarm)" : "");
  for (struct channel *channel = connection->channels; channel; channel = channel->next)
    if (!channel->released && channel->handler.on_blocked)
      channel->handler.on_blocked(channel->handler.owner, blocked);
  if (!blocked) flush_held(connection);
}

static int on_connection_method(struct connection *connection, const amqp_method_t *method,
                                struct ad_error *error) {
  switch (method->id) {
    case AMQP_CONNECTION_CLOSE_METHOD: {
      amqp_connection_close_ok_t close_ok = {0};
      error_from_close_method(error, method, connection->endpoint);
      amqp_send_method(connection->amqp, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &close_ok);
      return -1;
    }
    case AMQP_CONNECTION_CLOSE_OK_METHOD:
      error_set(error, ERR_CONNECTION_LOST, "%s: closed", connection->endpoint);
      return -1;
    case AMQP_CONNECTION_BLOCKED_METHOD:
      set_blocked(connection, 1);
      return 0;
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
      set_blocked(connection, 0);
      return 0;
    default:
      return 0;
  }
}

static struct channel *channel_numbered(struct connection *connection, amqp_channel_t number) {
  return number >= 1 && number <= CHANNEL_LIMIT ? connection->by_number[number] : NULL;
}

static int on_frame(struct connection *connection, const amqp_frame_t *frame,
                    struct ad_error *error) {
  if (frame->channel == 0) {
    if (frame->frame_type == AMQP_FRAME_METHOD)
      return on_connection_method(connection, &frame->payload.method, error);
    return 0;
  }
  struct channel *channel = channel_numbered(connection, frame->channel);
  if (!channel) return 0;
  switch (frame->frame_type) {
    case AMQP_FRAME_METHOD:
      return on_channel_method(channel, &frame->payload.method);
    case AMQP_FRAME_HEADER:
      if (channel->stage == STAGE_HEADER) on_header(channel, frame);
      return 0;
    case AMQP_FRAME_BODY:
      if (channel->stage == STAGE_BODY) return on_body(channel, frame, error);
      return 0;
    default:
      return 0;
  }
}

static int assembling(const struct connection *connection, amqp_channel_t number) {
  const struct channel *channel =
      number >= 1 && number <= CHANNEL_LIMIT ? connection->by_number[number] : NULL;
  return channel && channel->stage != STAGE_IDLE;
}

/* ---- writing: the frames of a batch of work leave together ---- */

static void on_readable(uv_poll_t *poll, int status, int events);

/* A flush left bytes (the broker reads slower than we write): write the
 * rest once the socket is writable. */
static void on_writes_full(void *owner) {
  struct connection *connection = owner;
  if (connection->handles_ready && connection->state != CONNECTION_DEAD &&
      !connection->watching_writable) {
    connection->watching_writable = 1;
    uv_poll_start(&connection->poll, UV_READABLE | UV_WRITABLE, on_readable);
  }
}

/* The acks due on the channel leave now (before anything that would end
 * it, and at the end of each batch): one basic.ack with multiple for those
 * every earlier delivery allows, one each for the others. */
static void send_due_acks(struct channel *channel) {
  struct ack_window *acks = &channel->acks;
  if (!acks->due_count) return;
  struct connection *connection = channel->connection;
  if (channel->state != CHANNEL_OPEN || connection->state != CONNECTION_OPEN) {
    acks->due_count = 0; /* the channel is gone: the broker gives them back */
    return;
  }
  uint64_t up_to, *singles = malloc(acks->due_count * sizeof *singles);
  size_t count = 0;
  if (!singles) { /* one by one, in place */
    for (size_t i = 0; i < acks->due_count; i++) ack_window_settled(acks, acks->due[i]);
    singles = acks->due;
    count = acks->due_count;
    acks->due = NULL;
    acks->due_count = acks->due_capacity = 0;
    up_to = 0;
  } else {
    ack_window_take_due(acks, &up_to, singles, &count);
  }
  struct ad_error error;
  writes_held++; /* they leave together */
  int status = AMQP_STATUS_OK;
  amqp_channel_t number = (amqp_channel_t)channel->number;
  if (up_to) status = amqp_basic_ack(connection->amqp, number, up_to, 1);
  for (size_t i = 0; i < count && status == AMQP_STATUS_OK; i++)
    status = amqp_basic_ack(connection->amqp, number, singles[i], 0);
  writes_held--;
  free(singles);
  send_status(connection, status, "acknowledging", &error);
}

static void flush_writes(struct connection *connection) {
  if (connection->state == CONNECTION_DEAD || connection->state == CONNECTION_CONNECTING)
    return;
  for (struct channel *channel = connection->channels;
       channel && connection->state == CONNECTION_OPEN; channel = channel->next)
    send_due_acks(channel);
  if (connection->state == CONNECTION_DEAD) return;
  if (write_batch_pending(&connection->writes) && write_batch_flush(&connection->writes) < 0) {
    struct ad_error error;
    error_set(&error, ERR_CONNECTION_LOST, "%s: writing: the connection failed",
              connection->endpoint);
    connection_lost(connection, &error);
    return;
  }
  if (connection->watching_writable && !write_batch_pending(&connection->writes)) {
    connection->watching_writable = 0;
    uv_poll_start(&connection->poll, UV_READABLE, on_readable);
  }
}

void transport_hold_writes(void) { writes_held++; }

void transport_flush_writes(void) {
  struct connection *next;
  for (struct connection *c = pool; c; c = next) {
    next = c->next; /* a failed write may end c */
    flush_writes(c);
  }
}

void transport_write_counts(unsigned long *frames, unsigned long *writes) {
  *frames = frames_before;
  *writes = writes_before;
  for (struct connection *c = pool; c; c = c->next) {
    *frames += c->writes.frames;
    *writes += c->writes.writes;
  }
}

void transport_release_writes(void) {
  if (writes_held > 0 && --writes_held == 0) transport_flush_writes();
}

/* Reads every frame rabbitmq-c can give without blocking. The first read
 * always happens (it also sends and checks heartbeats); later ones only while
 * rabbitmq-c holds buffered data: asking the socket again would cost a recv
 * and a poll that find nothing, and epoll (level-triggered) wakes us for
 * whatever the kernel still holds. */
static void drain(struct connection *connection) {
  struct ad_error error;
  connection->draining = 1;
  transport_hold_writes(); /* the acks and replies of every frame read leave together */
  int first = 1;
  while ((connection->state == CONNECTION_OPEN || connection->state == CONNECTION_CLOSING) &&
         !connection->destroy_requested &&
         (first || amqp_frames_enqueued(connection->amqp) ||
          amqp_data_in_buffer(connection->amqp))) {
    first = 0;
    amqp_frame_t frame;
    struct timeval immediately = {0, 0};
    int status = amqp_simple_wait_frame_noblock(connection->amqp, &frame, &immediately);
    if (status == AMQP_STATUS_TIMEOUT) break;
    if (status != AMQP_STATUS_OK) {
      char doing[350];
      snprintf(doing, sizeof doing, "%s: reading", connection->endpoint);
      error_from_status(&error, ERR_CONNECTION_LOST, status, doing);
      connection_lost(connection, &error);
      break;
    }
    if (on_frame(connection, &frame, &error) != 0) {
      connection_lost(connection, &error);
      break;
    }
    if (connection->amqp && !assembling(connection, frame.channel))
      amqp_maybe_release_buffers_on_channel(connection->amqp, frame.channel);
  }
  transport_release_writes();
  connection->draining = 0;
  if (connection->destroy_requested) connection_destroy(connection);
}

/* libuv reports a socket error (POLLERR, e.g. a reset) as a negative status;
 * reading lets rabbitmq-c say what really happened. Writable: the socket
 * has room again for what a flush left. */
static void on_readable(uv_poll_t *poll, int status, int events) {
  struct connection *connection = poll->data;
  if (status == 0 && (events & UV_WRITABLE)) flush_writes(connection);
  if (status < 0 || (events & UV_READABLE)) drain(connection);
  if (status < 0 && connection->state == CONNECTION_OPEN && !connection->destroy_requested) {
    struct ad_error error;
    error_set(&error, ERR_CONNECTION_LOST, "%s: the connection failed (socket error)",
              connection->endpoint);
    connection_lost(connection, &error);
  }
}

static void on_timer(uv_timer_t *timer) { drain(timer->data); }

int transport_closing(uv_loop_t *loop) {
  for (struct connection *c = pool; c; c = c->next)
    if (c->loop == loop && c->state == CONNECTION_CLOSING) return 1;
  return 0;
}

void transport_shutdown(uv_loop_t *loop) {
  int again = 1;
  while (again) {
    again = 0;
    for (struct connection *c = pool; c; c = c->next) {
      if (c->loop != loop) continue;
      if (c->state == CONNECTION_CONNECTING) {
        c->abandoned = 1; /* its thread ends within connect_timeout */
        continue;
      }
      connection_destroy(c); /* leaves the pool */
      again = 1;
      break;
    }
  }
}

int transport_keepalive(uv_loop_t *loop, uint64_t now_ms) {
  int shortest = 0;
  for (struct connection *c = pool; c; c = c->next) {
    if (c->loop != loop || c->state != CONNECTION_OPEN || !c->amqp) continue;
    int heartbeat = amqp_get_heartbeat(c->amqp);
    if (heartbeat <= 0) continue;
    if (!shortest || heartbeat < shortest) shortest = heartbeat;
    if (now_ms - c->keepalive_sent_ms < (uint64_t)heartbeat * 500) continue;
    c->keepalive_sent_ms = now_ms;
    amqp_frame_t frame;
    memset(&frame, 0, sizeof frame);
    frame.frame_type = AMQP_FRAME_HEARTBEAT;
    frame.channel = 0;
    /* a failure shows at the next read, from the loop: nothing is torn down here */
    amqp_send_frame(c->amqp, &frame);
  }
  /* Lua holds the loop, maybe inside a batch of jobs: the heartbeat, and
   * what the jobs before this one sent, leave now */
  transport_flush_writes();
  return shortest;
}

int transport_has_connection(uv_loop_t *loop, const struct amqp_url *url,
                             const struct connection_options *options) {
  return find_shared(loop, url, options) != NULL;
}

void transport_poll(uv_loop_t *loop) {
  for (struct connection *c = pool; c; c = c->next)
    if (c->loop == loop && c->state == CONNECTION_OPEN && c->handles_ready)
      uv_timer_start(&c->drain_timer, on_timer, 0, 0);
}

/* ---- the handshake, on a thread of libuv's pool ---- */

static double seconds_now(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static struct timeval timeval_of(double seconds) {
  if (seconds < 0.001) seconds = 0.001;
  struct timeval value = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
  return value;
}

static int open_tcp(struct handshake *handshake, double deadline) {
  const struct amqp_url *url = &handshake->url;
  amqp_socket_t *socket = amqp_tcp_socket_new(handshake->amqp);
  char why[200];
  int fd = socket ? tcp_connect(url->info.host, url->info.port, deadline - seconds_now(), why,
                                sizeof why)
                  : -1;
  if (!socket) snprintf(why, sizeof why, "cannot create a socket");
  if (fd < 0) {
    error_set(&handshake->error, ERR_CONNECTION_FAILED, "cannot connect to %s (%s): %s",
              handshake->endpoint, url->redacted, why);
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
static int open_tls(struct handshake *handshake, double deadline) {
  const struct amqp_url *url = &handshake->url;
  char why[2 * TLS_PATH_MAX + 100];
  amqp_socket_t *socket = amqp_ssl_socket_new(handshake->amqp);
  if (!socket) snprintf(why, sizeof why, "cannot create a TLS socket");
  if (!socket || configure_tls(socket, &handshake->options.tls, why, sizeof why) != 0) {
    error_set(&handshake->error, ERR_CONNECTION_FAILED, "cannot connect to %s (%s): %s",
              handshake->endpoint, url->redacted, why);
    return -1;
  }
  struct timeval limit = timeval_of(deadline - seconds_now());
  int status = amqp_socket_open_noblock(socket, url->info.host, url->info.port, &limit);
  if (status == AMQP_STATUS_OK) return 0;
  snprintf(why, sizeof why, "%s", amqp_error_string2(status));
  if (status == AMQP_STATUS_SOCKET_ERROR || status == AMQP_STATUS_TIMEOUT ||
      status == AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED) {
    int fd = tcp_connect(url->info.host, url->info.port, deadline - seconds_now(), why,
                         sizeof why);
    if (fd >= 0) close(fd);
  }
  error_set(&handshake->error, ERR_CONNECTION_FAILED, "cannot connect to %s (%s): TLS: %s",
            handshake->endpoint, url->redacted, why);
  return -1;
}

static int log_in(struct handshake *handshake, double deadline) {
  const struct amqp_url *url = &handshake->url;
  struct timeval left = timeval_of(deadline - seconds_now());
  amqp_set_handshake_timeout(handshake->amqp, &left);
  amqp_set_rpc_timeout(handshake->amqp, &left);
  /* Capabilities rabbitmq-c does not announce itself: without them RabbitMQ
   * says nothing when a consumer's queue is deleted or publishing is blocked. */
  amqp_table_entry_t capabilities[3] = {
      {amqp_cstring_bytes("consumer_cancel_notify"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
      {amqp_cstring_bytes("authentication_failure_close"),
       {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
      {amqp_cstring_bytes("connection.blocked"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}}};
  /* the name operators see in the management UI and rabbitmqctl */
  char name[64];
  snprintf(name, sizeof name, "amqp-delegate pid %ld", (long)getpid());
  amqp_table_entry_t properties[3] = {
      {amqp_cstring_bytes("product"),
       {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("amqp-delegate for Lua")}}},
      {amqp_cstring_bytes("connection_name"),
       {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes(name)}}},
      {amqp_cstring_bytes("capabilities"),
       {AMQP_FIELD_KIND_TABLE, {.table = {3, capabilities}}}}};
  amqp_table_t client_properties = {3, properties};
  amqp_rpc_reply_t reply = amqp_login_with_properties(
      handshake->amqp, url->info.vhost, CHANNEL_LIMIT, AMQP_DEFAULT_FRAME_SIZE,
      handshake->options.heartbeat_seconds, &client_properties, AMQP_SASL_METHOD_PLAIN,
      url->info.user, url->info.password);
  if (reply.reply_type == AMQP_RESPONSE_NORMAL) return 0;
  char doing[sizeof url->redacted + 400];
  snprintf(doing, sizeof doing, "logging in to %s as '%s' (%s)", handshake->endpoint,
           url->info.user, url->redacted);
  if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
      reply.library_error == AMQP_STATUS_TIMEOUT)
    error_set(&handshake->error, ERR_CONNECTION_FAILED,
              "%s: the broker did not answer within %g s (connect_timeout)", doing,
              handshake->options.connect_timeout);
  else
    error_from_login(&handshake->error, reply, doing, url->info.vhost);
  return -1;
}

static void handshake_work(uv_work_t *work) {
  struct handshake *handshake = work->data;
  double started = seconds_now();
  double deadline = started + handshake->options.connect_timeout;
  handshake->waited = started - handshake->queued;
  handshake->stage = 1;
  handshake->amqp = amqp_new_connection();
  if (!handshake->amqp) {
    error_set(&handshake->error, ERR_CONNECTION_FAILED, "out of memory");
    return;
  }
  int opened = handshake->url.info.ssl ? open_tls(handshake, deadline)
                                       : open_tcp(handshake, deadline);
  handshake->stage = 2;
  if (opened != 0 || log_in(handshake, deadline) != 0) {
    amqp_destroy_connection(handshake->amqp);
    handshake->amqp = NULL;
  }
  /* OpenSSL keeps per-thread state (error queue, random generators) that
   * only a thread's exit frees, and libuv's pool threads never exit */
  if (handshake->url.info.ssl) OPENSSL_thread_stop();
}

static void open_channels(struct connection *connection);

static void start_watching(struct connection *connection) {
  uv_loop_t *loop = connection->loop;
  uv_poll_init(loop, &connection->poll, amqp_get_sockfd(connection->amqp));
  uv_timer_init(loop, &connection->heartbeat_timer);
  uv_timer_init(loop, &connection->drain_timer);
  uv_timer_init(loop, &connection->notify_timer);
  uv_timer_init(loop, &connection->close_timer);
  connection->poll.data = connection->heartbeat_timer.data = connection->drain_timer.data =
      connection->notify_timer.data = connection->close_timer.data = connection;
  connection->handles_ready = 1;
  if (!connection->url.info.ssl) /* TLS: rabbitmq-c writes through OpenSSL, as it always did */
    write_batch_attach(&connection->writes, connection->amqp, &writes_held, on_writes_full,
                       connection);
  uv_poll_start(&connection->poll, UV_READABLE, on_readable);
  int heartbeat = amqp_get_heartbeat(connection->amqp);
  if (heartbeat > 0) {
    uint64_t period = (uint64_t)heartbeat * 1000 / 2;
    uv_timer_start(&connection->heartbeat_timer, on_timer, period, period);
  }
  if (amqp_frames_enqueued(connection->amqp) || amqp_data_in_buffer(connection->amqp))
    uv_timer_start(&connection->drain_timer, on_timer, 0, 0);
}

/* Back on the loop: the connection is open, or every channel hears why not. */
static void handshake_done(uv_work_t *work, int status) {
  struct handshake *handshake = work->data;
  struct connection *connection = handshake->connection;
  connection->amqp = handshake->amqp;
  if (status != 0 && connection->amqp) { /* cancelled (never happens: we do not cancel) */
    amqp_destroy_connection(connection->amqp);
    connection->amqp = NULL;
  }
  if (!connection->amqp && !handshake->error.code[0])
    error_set(&handshake->error, ERR_CONNECTION_FAILED, "cannot connect to %s",
              connection->endpoint);
  struct ad_error error = handshake->error;
  connection->handshake = NULL;
  log_line(LOG_DEBUG, "handshake with %s: %s after %.3f s (%.3f s waiting for a thread)",
           connection->endpoint, connection->amqp ? "done" : error.code,
           seconds_now() - handshake->queued, handshake->waited);
  free(handshake);
  if (connection->abandoned || !held_by_owners(connection)) {
    connection_destroy(connection);
    return;
  }
  if (!connection->amqp) {
    connection->state = CONNECTION_DEAD;
    connection->loss = error;
    log_line(LOG_DEBUG, "%s: %s", error.code, error.message);
    notify_channels(connection); /* no channel_* call is under way: tell them now */
    return;
  }
  connection->state = CONNECTION_OPEN;
  start_watching(connection);
  log_line(LOG_DEBUG, "connected to %s (%s)", connection->endpoint, connection->url.redacted);
  open_channels(connection);
}

static struct connection *connection_new(uv_loop_t *loop, const struct amqp_url *url,
                                         const struct connection_options *options) {
  struct connection *connection = calloc(1, sizeof *connection);
  struct handshake *handshake = calloc(1, sizeof *handshake);
  if (!connection || !handshake) {
    free(connection);
    free(handshake);
    return NULL;
  }
  connection->loop = loop;
  connection->state = CONNECTION_CONNECTING;
  url_copy(&connection->url, url);
  connection->options = *options;
  snprintf(connection->endpoint, sizeof connection->endpoint, "%s:%d", url->info.host,
           url->info.port);
  handshake->connection = connection;
  url_copy(&handshake->url, url);
  handshake->options = *options;
  memcpy(handshake->endpoint, connection->endpoint, sizeof handshake->endpoint);
  handshake->work.data = handshake;
  handshake->queued = seconds_now();
  connection->handshake = handshake;
  if (uv_queue_work(loop, &handshake->work, handshake_work, handshake_done) != 0) {
    free(connection);
    free(handshake);
    return NULL;
  }
  connection->next = pool;
  pool = connection;
  return connection;
}

/* ---- channels ---- */

static int free_number(struct connection *connection) {
  for (int number = 1; number <= CHANNEL_LIMIT; number++)
    if (!connection->by_number[number]) return number;
  return 0;
}

static void send_channel_open(struct channel *channel) {
  struct connection *connection = channel->connection;
  int number = free_number(connection);
  if (!number) {
    error_set(&channel->failure, ERR_BROKER_ERROR, "%s: no free channel (at most %d)",
              connection->endpoint, CHANNEL_LIMIT);
    channel->state = CHANNEL_DEAD;
    channel->failure_due = 1;
    uv_timer_start(&connection->notify_timer, notify_due, 0, 0);
    return;
  }
  channel->number = number;
  connection->by_number[number] = channel;
  channel->state = CHANNEL_OPENING;
  channel->awaited_method = AMQP_CHANNEL_OPEN_OK_METHOD;
  channel->awaited_step = STEP_OPEN;
  amqp_channel_open_t open = {amqp_empty_bytes};
  struct ad_error error;
  send_status(connection,
              amqp_send_method(connection->amqp, (amqp_channel_t)number,
                               AMQP_CHANNEL_OPEN_METHOD, &open),
              "opening a channel", &error);
}

static void open_channels(struct connection *connection) {
  for (struct channel *channel = connection->channels; channel; channel = channel->next)
    if (channel->state == CHANNEL_WAITING && !channel->released &&
        connection->state == CONNECTION_OPEN)
      send_channel_open(channel);
}

/* A channel opened on a live connection must still not call its owner
 * inside channel_open: its open-ok arrives through the loop anyway. */
struct channel *channel_open(uv_loop_t *loop, const struct amqp_url *url,
                             const struct connection_options *options,
                             const struct channel_handler *handler) {
  struct connection *connection = find_shared(loop, url, options);
  if (!connection) connection = connection_new(loop, url, options);
  if (!connection) return NULL;
  struct channel *channel = calloc(1, sizeof *channel);
  if (!channel) {
    if (!connection->channels && connection->state == CONNECTION_CONNECTING)
      connection->abandoned = 1;
    return NULL;
  }
  channel->connection = connection;
  channel->handler = *handler;
  channel->state = CHANNEL_WAITING;
  channel->max_body = options->max_body;
  confirm_ring_init(&channel->unconfirmed);
  ack_window_init(&channel->acks);
  byte_buffer_init(&channel->body);
  byte_buffer_init(&channel->incoming_headers);
  channel->next = connection->channels;
  connection->channels = channel;
  if (connection->state == CONNECTION_OPEN) send_channel_open(channel);
  return channel;
}

void channel_release(struct channel *channel) {
  struct connection *connection = channel->connection;
  send_due_acks(channel); /* before its channel.close (or the connection's close) */
  channel->released = 1;
  free_held(channel);
  int polite = connection->state == CONNECTION_OPEN &&
               (channel->state == CHANNEL_OPEN || channel->state == CHANNEL_OPENING);
  if (!held_by_owners(connection)) {
    switch (connection->state) {
      case CONNECTION_CONNECTING: /* the thread finishes; handshake_done frees it */
        connection->abandoned = 1;
        return;
      case CONNECTION_OPEN:
        connection_close(connection);
        return;
      case CONNECTION_DEAD: /* unless the owners are still being told */
        if (!connection->handles_ready ||
            !uv_is_active((uv_handle_t *)&connection->notify_timer))
          connection_destroy(connection);
        return;
      default: /* closing: close-ok or its timer frees it */
        return;
    }
  }
  if (!polite) {
    channel_free(channel);
    return;
  }
  channel->state = CHANNEL_CLOSING;
  amqp_channel_close_t close = {AMQP_REPLY_SUCCESS, amqp_cstring_bytes("bye"), 0, 0};
  struct ad_error error;
  send_status(connection,
              amqp_send_method(connection->amqp, (amqp_channel_t)channel->number,
                               AMQP_CHANNEL_CLOSE_METHOD, &close),
              "closing a channel", &error);
}

/* The floor of our overhead: a bare rabbitmq-c request/reply round trip, no Lua, no JSON.
 *
 *   bare_roundtrip worker URL QUEUE PREFETCH [DELAY_MS]
 *       declares QUEUE (as our workers do), basic.qos PREFETCH, consumes with manual acks;
 *       for each request (body: two int64, little endian) publishes their sum (one int64) to
 *       reply_to with the request's correlation_id, then acks. With DELAY_MS > 0 each reply is
 *       sent DELAY_MS after its request arrived, up to PREFETCH requests waiting at once (the
 *       slow adder, single-threaded, as our loop does it). Prints "ready" once consuming; exits
 *       on SIGINT/SIGTERM, when the broker closes, or after BARE_LIFETIME seconds (900).
 *       BARE_QUEUE_TYPE=quorum declares QUEUE durable with x-queue-type = quorum (as our
 *       workers' queue = "quorum" does) instead of the Node protocol's transient classic queue.
 *
 *   bare_roundtrip client URL QUEUE seq|pipe CALLS WARMUP DEPTH [MAX_SECONDS]
 *       one exclusive server-named reply queue consumed with no-ack; correlation ids are a
 *       counter. seq: one call at a time; pipe: DEPTH calls in flight (a window: publish
 *       DEPTH, then one more per reply read with amqp_consume_message). WARMUP calls first,
 *       not measured. Stops early after MAX_SECONDS of measured calls. Prints lines
 *       "RESULT key value": calls, seconds, cps, cpu_us (this process's CPU time per measured
 *       call, in microseconds), p50_ms, p99_ms.
 *
 * Both set TCP_NODELAY on their socket and run heartbeats off (runs are short).
 *
 * BARE_GUARANTEES=1 (both sides) asks the broker for what our delegator and worker ask of it,
 * so that its CPU per call can be compared: the client publishes on a confirm channel, with
 * mandatory, content_type, a 30 s expiration and an x-deadline header (an int64), as ours does;
 * the worker publishes its replies on a confirm channel and acks a request only once its reply
 * is confirmed (one multiple ack up to the newest delivery whose reply the broker confirmed).
 * Without it, nothing of this is sent or read: the plain round trip above.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

static volatile sig_atomic_t stopping = 0;
static int guarantees = 0; /* BARE_GUARANTEES=1 */
static void on_signal(int signal_number) {
  (void)signal_number;
  stopping = 1;
}

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail) {
  fprintf(stderr, "bare_roundtrip: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  exit(1);
}

static void check_reply(amqp_rpc_reply_t reply, const char *what) {
  switch (reply.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    return;
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    die(what, amqp_error_string2(reply.library_error));
    break;
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    die(what, "the broker closed the channel or connection");
    break;
  default:
    die(what, "no reply");
  }
}

static amqp_connection_state_t open_connection(const char *url_text) {
  char *copy = strdup(url_text);
  struct amqp_connection_info info;
  amqp_default_connection_info(&info);
  if (!copy || amqp_parse_url(copy, &info) != AMQP_STATUS_OK) die("bad URL", url_text);
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *socket = amqp_tcp_socket_new(conn);
  if (!socket) die("cannot create a socket", NULL);
  int status = amqp_socket_open(socket, info.host, info.port);
  if (status != AMQP_STATUS_OK) die("cannot connect", amqp_error_string2(status));
  int one = 1;
  if (setsockopt(amqp_get_sockfd(conn), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
    die("setsockopt TCP_NODELAY", strerror(errno));
  check_reply(amqp_login(conn, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user,
                         info.password),
              "login");
  amqp_channel_open(conn, 1);
  check_reply(amqp_get_rpc_reply(conn), "channel.open");
  if (guarantees) {
    amqp_confirm_select(conn, 1);
    check_reply(amqp_get_rpc_reply(conn), "confirm.select");
  }
  free(copy);
  return conn;
}

static void close_connection(amqp_connection_state_t conn) {
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
}

static int serving_replies = 0; /* the worker, with BARE_GUARANTEES: confirms ack requests */
static void replies_confirmed(amqp_connection_state_t conn, const amqp_basic_ack_t *ack);

/* A frame that is not a delivery arrived where amqp_consume_message wanted one: read it.
 * Returns 0 to go on, -1 when the channel or connection is gone. */
static int skip_other_frame(amqp_connection_state_t conn) {
  amqp_frame_t frame;
  if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) return -1;
  if (frame.frame_type != AMQP_FRAME_METHOD) return 0;
  switch (frame.payload.method.id) {
  case AMQP_BASIC_ACK_METHOD:
    if (serving_replies) replies_confirmed(conn, frame.payload.method.decoded);
    return 0;
  case AMQP_BASIC_RETURN_METHOD: {
    /* a returned message carries a header and a body too: read them */
    amqp_message_t message;
    amqp_rpc_reply_t r = amqp_read_message(conn, frame.channel, &message, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) return -1;
    amqp_destroy_message(&message);
    return 0;
  }
  case AMQP_CHANNEL_CLOSE_METHOD:
  case AMQP_CONNECTION_CLOSE_METHOD:
    return -1;
  default:
    return 0;
  }
}

/* ------------------------------------------------------------------ worker */

struct waiting {
  double due;
  uint64_t delivery_tag;
  char reply_to[256];
  char correlation_id[256];
  int64_t sum;
};

static void copy_bytes(char *to, size_t size, amqp_bytes_t from) {
  size_t n = from.len < size - 1 ? from.len : size - 1;
  memcpy(to, from.bytes, n);
  to[n] = 0;
}

/* BARE_GUARANTEES: the replies not yet acked, by publish sequence number (1, 2, ...), oldest
 * first: the delivery tag each answers, and whether the broker confirmed it yet */
struct unacked_reply {
  uint64_t delivery_tag;
  int confirmed;
};
static struct unacked_reply *unacked;
static size_t unacked_capacity, unacked_head, unacked_count;
static uint64_t oldest_seq = 1; /* publish sequence number of unacked[unacked_head] */

static struct unacked_reply *unacked_at(size_t i) {
  return &unacked[(unacked_head + i) % unacked_capacity];
}

static void remember_reply(uint64_t delivery_tag) {
  if (unacked_count == unacked_capacity) {
    size_t capacity = unacked_capacity ? 2 * unacked_capacity : 256;
    struct unacked_reply *grown = malloc(capacity * sizeof *grown);
    if (!grown) die("out of memory", NULL);
    for (size_t i = 0; i < unacked_count; i++) grown[i] = *unacked_at(i);
    free(unacked);
    unacked = grown;
    unacked_capacity = capacity;
    unacked_head = 0;
  }
  unacked_count++;
  *unacked_at(unacked_count - 1) = (struct unacked_reply){delivery_tag, 0};
}

/* a basic.ack from the broker: the requests whose replies are confirmed, oldest first with no
 * gap, are acked with one multiple ack (deliveries come and are answered in order) */
static void replies_confirmed(amqp_connection_state_t conn, const amqp_basic_ack_t *ack) {
  for (size_t i = 0; i < unacked_count; i++) {
    uint64_t seq = oldest_seq + i;
    if (seq > ack->delivery_tag) break;
    if (ack->multiple || seq == ack->delivery_tag) unacked_at(i)->confirmed = 1;
  }
  uint64_t newest_tag = 0;
  while (unacked_count > 0 && unacked_at(0)->confirmed) {
    newest_tag = unacked_at(0)->delivery_tag;
    unacked_head = (unacked_head + 1) % unacked_capacity;
    unacked_count--;
    oldest_seq++;
  }
  if (newest_tag && amqp_basic_ack(conn, 1, newest_tag, 1) != AMQP_STATUS_OK) die("ack", NULL);
}

static void reply_and_ack(amqp_connection_state_t conn, const struct waiting *w) {
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CORRELATION_ID_FLAG;
  props.correlation_id = amqp_cstring_bytes(w->correlation_id);
  amqp_bytes_t body = {sizeof w->sum, (void *)&w->sum};
  if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(w->reply_to), 0, 0,
                         &props, body) != AMQP_STATUS_OK)
    die("publish reply", NULL);
  if (guarantees) {
    remember_reply(w->delivery_tag); /* acked once the broker confirms the reply */
    return;
  }
  if (amqp_basic_ack(conn, 1, w->delivery_tag, 0) != AMQP_STATUS_OK) die("ack", NULL);
}

static int run_worker(const char *url, const char *queue, int prefetch, int delay_ms) {
  amqp_connection_state_t conn = open_connection(url);
  serving_replies = guarantees;
  const char *type = getenv("BARE_QUEUE_TYPE");
  int quorum = type && strcmp(type, "quorum") == 0;
  amqp_table_entry_t type_entry = {amqp_cstring_bytes("x-queue-type"),
                                   {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("quorum")}}};
  amqp_table_t arguments = amqp_empty_table;
  if (quorum) {
    arguments.num_entries = 1;
    arguments.entries = &type_entry;
  }
  amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 0, quorum, 0, 0, arguments);
  check_reply(amqp_get_rpc_reply(conn), "queue.declare");
  amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
  check_reply(amqp_get_rpc_reply(conn), "basic.qos");
  amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                     amqp_empty_table);
  check_reply(amqp_get_rpc_reply(conn), "basic.consume");
  printf("ready\n");
  fflush(stdout);

  const char *lifetime_text = getenv("BARE_LIFETIME");
  double deadline = now_seconds() + (lifetime_text ? atof(lifetime_text) : 900.0);
  /* requests waiting for their delay: a ring, since every delay is the same (FIFO) */
  size_t capacity = (size_t)prefetch + 1, head = 0, count = 0;
  struct waiting *ring = calloc(capacity, sizeof *ring);
  if (!ring) die("out of memory", NULL);

  while (!stopping && now_seconds() < deadline) {
    double now = now_seconds();
    while (count > 0 && ring[head].due <= now) {
      reply_and_ack(conn, &ring[head]);
      head = (head + 1) % capacity;
      count--;
    }
    double wait = 0.2;
    if (count > 0 && ring[head].due - now < wait) wait = ring[head].due - now;
    struct timeval timeout = {(time_t)wait, (suseconds_t)((wait - (time_t)wait) * 1e6)};
    amqp_envelope_t envelope;
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t r = amqp_consume_message(conn, &envelope, &timeout, 0);
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
      continue;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
      if (skip_other_frame(conn) != 0) break;
      continue;
    }
    if (r.reply_type != AMQP_RESPONSE_NORMAL) break;

    struct waiting w;
    w.delivery_tag = envelope.delivery_tag;
    copy_bytes(w.reply_to, sizeof w.reply_to, envelope.message.properties.reply_to);
    copy_bytes(w.correlation_id, sizeof w.correlation_id,
               envelope.message.properties.correlation_id);
    int64_t operands[2] = {0, 0};
    if (envelope.message.body.len >= sizeof operands)
      memcpy(operands, envelope.message.body.bytes, sizeof operands);
    w.sum = operands[0] + operands[1];
    amqp_destroy_envelope(&envelope);
    if (delay_ms <= 0) {
      reply_and_ack(conn, &w);
    } else {
      if (count == capacity) die("more requests than the prefetch count", NULL);
      w.due = now_seconds() + delay_ms / 1000.0;
      ring[(head + count) % capacity] = w;
      count++;
    }
  }
  free(ring);
  free(unacked);
  close_connection(conn);
  return 0;
}

/* ------------------------------------------------------------------ client */

static double cpu_seconds(void) {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
         (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

struct client {
  amqp_connection_state_t conn;
  amqp_bytes_t queue;
  amqp_bytes_t reply_queue;
  uint64_t next_id;
};

/* correlation id of call n: its number in decimal */
static void publish_call(struct client *c, uint64_t id) {
  char correlation[32];
  snprintf(correlation, sizeof correlation, "%llu", (unsigned long long)id);
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG;
  props.correlation_id = amqp_cstring_bytes(correlation);
  props.reply_to = c->reply_queue;
  amqp_table_entry_t deadline = {amqp_cstring_bytes("x-deadline"), {AMQP_FIELD_KIND_I64, {.i64 = 0}}};
  if (guarantees) { /* what ours sends besides: see BARE_GUARANTEES above */
    props._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_EXPIRATION_FLAG | AMQP_BASIC_HEADERS_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.expiration = amqp_cstring_bytes("30000");
    deadline.value.value.i64 = (int64_t)(now_seconds() * 1000) + 30000;
    props.headers.num_entries = 1;
    props.headers.entries = &deadline;
  }
  int64_t operands[2] = {(int64_t)id, 2};
  amqp_bytes_t body = {sizeof operands, operands};
  if (amqp_basic_publish(c->conn, 1, amqp_empty_bytes, c->queue, guarantees, 0, &props, body) !=
      AMQP_STATUS_OK)
    die("publish request", NULL);
}

/* reads one reply; returns its correlation id number */
static uint64_t read_reply(struct client *c) {
  for (;;) {
    amqp_envelope_t envelope;
    amqp_maybe_release_buffers(c->conn);
    amqp_rpc_reply_t r = amqp_consume_message(c->conn, &envelope, NULL, 0);
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
      if (skip_other_frame(c->conn) != 0) die("connection closed", NULL);
      continue;
    }
    check_reply(r, "consume reply");
    char text[64];
    copy_bytes(text, sizeof text, envelope.message.properties.correlation_id);
    int64_t sum = 0;
    if (envelope.message.body.len >= sizeof sum) memcpy(&sum, envelope.message.body.bytes, 8);
    amqp_destroy_envelope(&envelope);
    uint64_t id = strtoull(text, NULL, 10);
    if (sum != (int64_t)id + 2) die("wrong sum in a reply", text);
    return id;
  }
}

static int run_client(const char *url, const char *queue, const char *mode, long calls,
                      long warmup, int depth, double max_seconds) {
  struct client c = {0};
  c.conn = open_connection(url);
  c.queue = amqp_cstring_bytes(queue);
  amqp_queue_declare_ok_t *ok =
      amqp_queue_declare(c.conn, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
  check_reply(amqp_get_rpc_reply(c.conn), "declare reply queue");
  c.reply_queue = amqp_bytes_malloc_dup(ok->queue);
  amqp_basic_consume(c.conn, 1, c.reply_queue, amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
  check_reply(amqp_get_rpc_reply(c.conn), "consume reply queue");

  int pipelined = strcmp(mode, "pipe") == 0;
  if (!pipelined) depth = 1;
  if (depth < 1) depth = 1;
  long total = warmup + calls;
  double *sent_at = calloc((size_t)total + 1, sizeof *sent_at);
  double *latency = calloc((size_t)calls + 1, sizeof *latency);
  if (!sent_at || !latency) die("out of memory", NULL);

  /* ids run 1..total; the first `warmup` are not measured */
  long next = 1, done = 0, measured = 0, limit = total;
  double started = 0, stop_at = 0, cpu_started = 0;
  if (warmup == 0) {
    cpu_started = cpu_seconds();
    started = now_seconds();
    stop_at = started + max_seconds;
  }
  while (next <= limit && next - 1 - done < depth) {
    sent_at[next] = now_seconds();
    publish_call(&c, (uint64_t)next++);
  }
  while (done < next - 1) {
    uint64_t id = read_reply(&c);
    double t = now_seconds();
    done++;
    if ((long)id > warmup && (long)id <= total) latency[measured++] = t - sent_at[id];
    if (done == warmup) {
      cpu_started = cpu_seconds();
      started = t;
      stop_at = started + max_seconds;
    }
    if (done >= warmup && t > stop_at && limit > next - 1) limit = next - 1; /* time is up */
    while (next <= limit && next - 1 - done < depth) {
      sent_at[next] = now_seconds();
      publish_call(&c, (uint64_t)next++);
    }
  }
  double elapsed = now_seconds() - started;
  double cpu = cpu_seconds() - cpu_started;
  qsort(latency, (size_t)measured, sizeof *latency, compare_doubles);
  printf("RESULT calls %ld\n", measured);
  printf("RESULT seconds %.3f\n", elapsed);
  printf("RESULT cps %.1f\n", measured / elapsed);
  if (measured > 0) printf("RESULT cpu_us %.2f\n", 1e6 * cpu / measured);
  if (measured > 0) {
    printf("RESULT p50_ms %.3f\n", 1000 * latency[(size_t)(0.50 * (measured - 1))]);
    printf("RESULT p99_ms %.3f\n", 1000 * latency[(size_t)(0.99 * (measured - 1))]);
  }
  free(sent_at);
  free(latency);
  amqp_bytes_free(c.reply_queue);
  close_connection(c.conn);
  return 0;
}

int main(int argc, char **argv) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = on_signal;
  sigaction(SIGINT, &action, NULL);
  sigaction(SIGTERM, &action, NULL);
  signal(SIGPIPE, SIG_IGN);
  const char *guarantees_text = getenv("BARE_GUARANTEES");
  guarantees = guarantees_text && strcmp(guarantees_text, "1") == 0;

  if (argc >= 5 && strcmp(argv[1], "worker") == 0)
    return run_worker(argv[2], argv[3], atoi(argv[4]), argc >= 6 ? atoi(argv[5]) : 0);
  if (argc >= 8 && strcmp(argv[1], "client") == 0)
    return run_client(argv[2], argv[3], argv[4], atol(argv[5]), atol(argv[6]), atoi(argv[7]),
                      argc >= 9 ? atof(argv[8]) : 1e9);
  fprintf(stderr, "usage: bare_roundtrip worker URL QUEUE PREFETCH [DELAY_MS]\n"
                  "       bare_roundtrip client URL QUEUE seq|pipe CALLS WARMUP DEPTH "
                  "[MAX_SECONDS]\n");
  return 64;
}

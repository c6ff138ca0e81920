/* The metrics HTTP server (metrics_server.h): accepts on the runtime's loop,
 * reads one request per connection into a fixed buffer under a deadline,
 * answers it with Connection: close, then reads and drops whatever the
 * client still sends until it closes (closing on unread data would reset
 * the connection and lose the answer), bounded by a second deadline. */
#include "metrics_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byte_buffer.h"
#include "log.h"
#include "metrics.h"
#include "metrics_text.h"

struct http_connection;

struct metrics_server {
  struct runtime *runtime;
  uv_tcp_t listener;
  int port;
  int closing;
  int open_handles; /* the listener and every connection: the memory goes at 0 */
  int connections;
  struct http_connection *first;
};

struct http_connection {
  struct metrics_server *server;
  struct http_connection *previous, *next;
  uv_tcp_t tcp;
  uv_timer_t deadline;
  uv_write_t write;
  uv_shutdown_t shutdown;
  int handles_open; /* tcp and deadline */
  int answered;     /* the answer is written (or being written): the rest is dropped */
  int writing;      /* the answer is going out */
  int peer_done;    /* the client closed its side (or the socket failed) */
  int closing;
  size_t used;
  char request[METRICS_MAX_REQUEST];
  char head[256];    /* the answer's status line and headers */
  byte_buffer body;
};

/* ---- addresses ---- */

static int parse_port(const char *text, int *port) {
  if (!*text || strlen(text) > 5) return -1;
  int value = 0;
  for (const char *c = text; *c; c++) {
    if (*c < '0' || *c > '9') return -1;
    value = value * 10 + (*c - '0');
  }
  if (value > 65535) return -1;
  *port = value;
  return 0;
}

int metrics_address_parse(const char *text, struct metrics_address *address, char *problem,
                          size_t size) {
  memset(address, 0, sizeof *address);
  const char *colon = strrchr(text, ':');
  if (!colon) {
    snprintf(problem, size, "takes ADDRESS:PORT (such as 127.0.0.1:9100 or :9100), not '%.60s'",
             text);
    return -1;
  }
  if (parse_port(colon + 1, &address->port) != 0) {
    snprintf(problem, size, "takes a port from 0 to 65535 after the last ':', not '%.60s'", text);
    return -1;
  }
  size_t host_length = (size_t)(colon - text);
  char host[64];
  if (host_length >= sizeof host) {
    snprintf(problem, size, "takes a numeric address, not '%.60s'", text);
    return -1;
  }
  memcpy(host, text, host_length);
  host[host_length] = '\0';
  int status;
  if (host[0] == '[' && host_length > 2 && host[host_length - 1] == ']') {
    host[host_length - 1] = '\0';
    status = uv_ip6_addr(host + 1, address->port, (struct sockaddr_in6 *)&address->socket_address);
    snprintf(address->host, sizeof address->host, "[%s]", host + 1);
  } else {
    const char *ip = !*host ? "0.0.0.0" : strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    status = strchr(ip, ':') ? -1
                             : uv_ip4_addr(ip, address->port,
                                           (struct sockaddr_in *)&address->socket_address);
    snprintf(address->host, sizeof address->host, "%s", ip);
  }
  if (status != 0) {
    snprintf(problem, size,
             "takes a numeric IPv4 address, [IPv6] in brackets or localhost before the port, "
             "not '%.60s'", text);
    return -1;
  }
  return 0;
}

/* ---- closing ---- */

static void server_handle_gone(struct metrics_server *server) {
  if (--server->open_handles == 0 && server->closing) free(server);
}

static void connection_handle_closed(uv_handle_t *handle) {
  struct http_connection *connection = handle->data;
  if (--connection->handles_open > 0) return;
  struct metrics_server *server = connection->server;
  if (connection->previous) connection->previous->next = connection->next;
  else server->first = connection->next;
  if (connection->next) connection->next->previous = connection->previous;
  server->connections--;
  byte_buffer_free(&connection->body);
  free(connection);
  server_handle_gone(server);
}

static void connection_close(struct http_connection *connection) {
  if (connection->closing) return;
  connection->closing = 1;
  uv_close((uv_handle_t *)&connection->tcp, connection_handle_closed);
  uv_close((uv_handle_t *)&connection->deadline, connection_handle_closed);
}

static void listener_closed(uv_handle_t *handle) { server_handle_gone(handle->data); }

void metrics_server_close(struct metrics_server *server) {
  if (!server || server->closing) return;
  server->closing = 1;
  for (struct http_connection *c = server->first; c; c = c->next) connection_close(c);
  uv_close((uv_handle_t *)&server->listener, listener_closed);
}

int metrics_server_port(const struct metrics_server *server) { return server->port; }

/* ---- answering ---- */

static void on_deadline(uv_timer_t *timer) { connection_close(timer->data); }

static void on_shutdown(uv_shutdown_t *request, int status) {
  (void)request, (void)status; /* the read side ends it: EOF or the deadline */
}

static void on_written(uv_write_t *request, int status) {
  struct http_connection *connection = request->data;
  connection->writing = 0;
  if (connection->closing) return;
  if (status < 0 || connection->peer_done || uv_shutdown(&connection->shutdown, (uv_stream_t *)&connection->tcp,
                                on_shutdown) != 0)
    connection_close(connection);
}

/* Sends the status line, the headers and (unless HEAD) the body, then waits
 * for the client to close, at most METRICS_LINGER_MS. */
static void answer(struct http_connection *connection, int status, const char *reason,
                   const char *content_type, const char *extra_headers, int with_body) {
  connection->answered = 1;
  int length = snprintf(connection->head, sizeof connection->head,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                        "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                        status, reason, content_type, connection->body.length, extra_headers);
  uv_buf_t buffers[2] = {uv_buf_init(connection->head, (unsigned)length),
                         uv_buf_init(connection->body.data, (unsigned)connection->body.length)};
  connection->shutdown.data = connection->write.data = connection;
  uv_timer_start(&connection->deadline, on_deadline, METRICS_LINGER_MS, 0);
  connection->writing = 1;
  if (uv_write(&connection->write, (uv_stream_t *)&connection->tcp, buffers,
               with_body && connection->body.length ? 2 : 1, on_written) != 0) {
    connection->writing = 0;
    connection_close(connection);
  }
}

static void answer_text(struct http_connection *connection, int status, const char *reason,
                        const char *text, const char *extra_headers, int with_body) {
  byte_buffer_reset(&connection->body);
  if (byte_buffer_append(&connection->body, text, strlen(text)) != 0 ||
      byte_buffer_append(&connection->body, "\n", 1) != 0) {
    connection_close(connection);
    return;
  }
  answer(connection, status, reason, "text/plain; charset=utf-8", extra_headers, with_body);
}

static void answer_metrics(struct http_connection *connection, int with_body) {
  byte_buffer_reset(&connection->body);
  if (metrics_write(connection->server->runtime, &connection->body) != 0) {
    answer_text(connection, 500, "Internal Server Error", "out of memory", "", with_body);
    return;
  }
  answer(connection, 200, "OK", METRICS_CONTENT_TYPE, "", with_body);
}

static void answer_health(struct http_connection *connection, int with_body) {
  char line[400];
  int healthy = metrics_health(connection->server->runtime, line, sizeof line);
  answer_text(connection, healthy ? 200 : 503, healthy ? "OK" : "Service Unavailable", line,
              "", with_body);
}

/* The request line of a whole request: METHOD SP TARGET SP HTTP/1.x. */
static void route(struct http_connection *connection, char *line) {
  char *method = line, *target = strchr(line, ' ');
  char *version = target ? strchr(target + 1, ' ') : NULL;
  if (!target || !version || strchr(version + 1, ' ') || target + 1 == version) {
    answer_text(connection, 400, "Bad Request", "bad request line", "", 1);
    return;
  }
  *target++ = '\0';
  *version++ = '\0';
  if (strcmp(version, "HTTP/1.0") != 0 && strcmp(version, "HTTP/1.1") != 0) {
    answer_text(connection, 505, "HTTP Version Not Supported", "HTTP/1.0 or HTTP/1.1 only", "",
                1);
    return;
  }
  target[strcspn(target, "?#")] = '\0';
  int head = strcmp(method, "HEAD") == 0;
  int known = strcmp(target, "/metrics") == 0 || strcmp(target, "/health") == 0;
  log_line(LOG_DEBUG, "metrics: %s %.100s", method, target);
  if (!known)
    answer_text(connection, 404, "Not Found", "not found: try /metrics or /health", "", !head);
  else if (!head && strcmp(method, "GET") != 0)
    answer_text(connection, 405, "Method Not Allowed", "GET or HEAD only",
                "Allow: GET, HEAD\r\n", 1);
  else if (strcmp(target, "/metrics") == 0)
    answer_metrics(connection, !head);
  else
    answer_health(connection, !head);
}

/* Answers once the headers are complete (a blank line); a request that
 * fills the buffer first is refused. */
static void look_at_request(struct http_connection *connection) {
  char *request = connection->request;
  size_t used = connection->used;
  if (memchr(request, '\0', used)) {
    answer_text(connection, 400, "Bad Request", "NUL byte in the request", "", 1);
    return;
  }
  int complete = 0;
  for (size_t i = 0; i + 1 < used && !complete; i++)
    complete = request[i] == '\n' &&
               (request[i + 1] == '\n' || (request[i + 1] == '\r' && i + 2 < used &&
                                           request[i + 2] == '\n'));
  if (!complete) {
    if (used == sizeof connection->request)
      answer_text(connection, 431, "Request Header Fields Too Large",
                  "request line and headers over the limit", "", 1);
    return;
  }
  char *end = memchr(request, '\n', used);
  *end = '\0';
  if (end > request && end[-1] == '\r') end[-1] = '\0';
  route(connection, request);
}

/* ---- reading ---- */

/* Once answered, what the client still sends lands here and is dropped. */
static char dropped[4096];

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buffer) {
  (void)suggested;
  struct http_connection *connection = handle->data;
  if (connection->answered) *buffer = uv_buf_init(dropped, sizeof dropped);
  else
    *buffer = uv_buf_init(connection->request + connection->used,
                          (unsigned)(sizeof connection->request - connection->used));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buffer) {
  (void)buffer;
  struct http_connection *connection = stream->data;
  if (connection->closing) return;
  /* The client closed its side (EOF: the answer may still go out, then
   * on_written closes), or the connection failed: then it closes at once,
   * since a write after a reset the read has reported raises SIGPIPE, which
   * the host does not ignore (its tasks' child processes would inherit that). */
  if (nread < 0) {
    connection->peer_done = 1;
    uv_read_stop(stream);
    if (!connection->writing || nread != UV_EOF) connection_close(connection);
    return;
  }
  if (nread == 0 || connection->answered) return;
  connection->used += (size_t)nread;
  look_at_request(connection);
}

/* Over the bound, the oldest connection still silent goes: clients that
 * connect and never speak cannot keep a scraper out for long. */
static void make_room(struct metrics_server *server) {
  struct http_connection *oldest = NULL;
  for (struct http_connection *c = server->first; c; c = c->next)
    if (!c->answered && !c->closing) oldest = c; /* newest first: the last one is the oldest */
  log_line(LOG_DEBUG, "metrics: over %d connections at once: the oldest silent one closed",
           METRICS_MAX_CONNECTIONS);
  if (oldest) connection_close(oldest);
}

static void on_connection(uv_stream_t *listener, int status) {
  struct metrics_server *server = listener->data;
  if (status < 0 || server->closing) return;
  struct http_connection *connection = calloc(1, sizeof *connection);
  if (!connection) return; /* out of memory: it waits in the backlog */
  connection->server = server;
  uv_tcp_init(listener->loop, &connection->tcp);
  uv_timer_init(listener->loop, &connection->deadline);
  connection->tcp.data = connection->deadline.data = connection;
  /* the server never keeps a wait alive that has nothing else to wait for */
  uv_unref((uv_handle_t *)&connection->tcp);
  uv_unref((uv_handle_t *)&connection->deadline);
  connection->handles_open = 2;
  byte_buffer_init(&connection->body);
  connection->next = server->first;
  if (server->first) server->first->previous = connection;
  server->first = connection;
  server->connections++;
  server->open_handles++;
  if (uv_accept(listener, (uv_stream_t *)&connection->tcp) != 0) {
    connection_close(connection);
    return;
  }
  if (server->connections > METRICS_MAX_CONNECTIONS) make_room(server);
  uv_timer_start(&connection->deadline, on_deadline, METRICS_REQUEST_DEADLINE_MS, 0);
  if (uv_read_start((uv_stream_t *)&connection->tcp, on_alloc, on_read) != 0)
    connection_close(connection);
}

/* ---- listening ---- */

struct metrics_server *metrics_server_start(struct runtime *runtime,
                                            const struct metrics_address *address,
                                            struct ad_error *error) {
  struct metrics_server *server = calloc(1, sizeof *server);
  if (!server) {
    error_set(error, ERR_BAD_ARGUMENT, "metrics: out of memory");
    return NULL;
  }
  server->runtime = runtime;
  uv_tcp_init(&runtime->loop, &server->listener);
  server->listener.data = server;
  server->open_handles = 1;
  uv_unref((uv_handle_t *)&server->listener);
  int status = uv_tcp_bind(&server->listener, (const struct sockaddr *)&address->socket_address, 0);
  if (status == 0) status = uv_listen((uv_stream_t *)&server->listener, 128, on_connection);
  struct sockaddr_storage bound;
  int bound_length = sizeof bound;
  if (status == 0)
    status = uv_tcp_getsockname(&server->listener, (struct sockaddr *)&bound, &bound_length);
  if (status != 0) {
    error_set(error, ERR_BAD_ARGUMENT, "cannot listen on %s:%d: %s", address->host,
              address->port, uv_strerror(status));
    metrics_server_close(server);
    return NULL;
  }
  server->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                   : ((struct sockaddr_in *)&bound)->sin_port);
  log_line(LOG_INFO, "metrics: serving http://%s:%d/metrics and /health", address->host,
           server->port);
  return server;
}

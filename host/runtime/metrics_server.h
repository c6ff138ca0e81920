/* `run --metrics ADDRESS:PORT`: a small HTTP/1.x server on the runtime's own
 * loop serving GET /metrics (metrics.h) and GET /health. No threads, no Lua:
 * its callbacks read C state only. Every connection is bounded: the request
 * size, the time it may take to arrive (a client that never speaks is
 * dropped), and how many connections are open at once. */
#ifndef AD_METRICS_SERVER_H
#define AD_METRICS_SERVER_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "errors.h"
#include "runtime.h"

#define METRICS_MAX_REQUEST 8192      /* bytes of request line and headers */
#define METRICS_MAX_CONNECTIONS 64    /* more are closed at once */
#define METRICS_REQUEST_DEADLINE_MS 5000 /* from accept to a whole request */
#define METRICS_LINGER_MS 2000        /* after the answer, until the client closes */

struct metrics_address {
  struct sockaddr_storage socket_address;
  char host[72]; /* as printed in URLs: 127.0.0.1, [::1] */
  int port;      /* 0: one the system chooses */
};

/* HOST:PORT, [IPV6]:PORT, localhost:PORT or :PORT (every IPv4 interface);
 * HOST is numeric. Returns 0, or -1 with why in `problem`. */
int metrics_address_parse(const char *text, struct metrics_address *address, char *problem,
                          size_t size);

struct metrics_server;

/* Listens on the runtime's loop. Returns the server, or NULL with error set
 * (the address is in use, not ours...). */
struct metrics_server *metrics_server_start(struct runtime *runtime,
                                            const struct metrics_address *address,
                                            struct ad_error *error);
/* The port it listens on (the one chosen, for port 0). */
int metrics_server_port(const struct metrics_server *server);
/* Closes the listener and every connection; the memory goes once libuv has
 * closed them (the loop must run again: lua_close's does). */
void metrics_server_close(struct metrics_server *server);

#endif

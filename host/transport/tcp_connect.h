/* Opening the TCP connection to the broker ourselves (rabbitmq-c then uses
 * the socket), so that a failure says exactly why: refused, timed out,
 * unknown host. */
#ifndef AD_TCP_CONNECT_H
#define AD_TCP_CONNECT_H

#include <stddef.h>

/* Returns a connected, non-blocking socket with TCP_NODELAY set, or -1 with
 * `why` holding the reason ("connection refused", "timed out after 10 s"). */
int tcp_connect(const char *host, int port, double timeout_seconds, char *why, size_t why_size);

#endif

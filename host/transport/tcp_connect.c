/* Non-blocking connect with a deadline over every address of the host. The
 * socket stays non-blocking: rabbitmq-c 0.11 applies its timeouts (login,
 * heartbeats) only when recv/send can return EAGAIN. Runs on a thread of the
 * handshake, never on the loop. */
#include "tcp_connect.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_seconds(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* Returns 0 or an errno value (ETIMEDOUT when the deadline passes). */
static int connect_one(int fd, const struct addrinfo *address, double deadline) {
  if (connect(fd, address->ai_addr, address->ai_addrlen) == 0) return 0;
  if (errno != EINPROGRESS) return errno;
  for (;;) {
    double left = deadline - now_seconds();
    if (left <= 0) return ETIMEDOUT;
    struct pollfd waiting = {fd, POLLOUT, 0};
    int ready = poll(&waiting, 1, (int)(left * 1000) + 1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return errno;
    if (ready == 0) continue;
    int error = 0;
    socklen_t length = sizeof error;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) return errno;
    return error;
  }
}

static int prepare(int fd) {
  int one = 1;
  /* Small request/reply messages must not wait for Nagle's algorithm. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

int tcp_connect(const char *host, int port, double timeout_seconds, char *why, size_t why_size) {
  struct addrinfo hints, *addresses = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  char service[16];
  snprintf(service, sizeof service, "%d", port);
  int status = getaddrinfo(host, service, &hints, &addresses);
  if (status != 0) {
    snprintf(why, why_size, "cannot resolve host: %s", gai_strerror(status));
    return -1;
  }
  double deadline = now_seconds() + timeout_seconds;
  int error = 0;
  for (struct addrinfo *address = addresses; address; address = address->ai_next) {
    int fd = socket(address->ai_family, address->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    address->ai_protocol);
    if (fd < 0) {
      error = errno;
      continue;
    }
    error = connect_one(fd, address, deadline);
    if (error == 0 && prepare(fd) == 0) {
      freeaddrinfo(addresses);
      return fd;
    }
    if (error == 0) error = errno;
    close(fd);
    if (error == ETIMEDOUT) break;
  }
  freeaddrinfo(addresses);
  if (error == ETIMEDOUT)
    snprintf(why, why_size, "timed out after %g s", timeout_seconds);
  else
    snprintf(why, why_size, "%s", strerror(error));
  return -1;
}

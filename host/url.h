/* AMQP URLs: defaults (--url, else AMQP_URL, else amqp://localhost), parsing
 * with rabbitmq-c, and the redacted form that is safe to print. */
#ifndef AD_URL_H
#define AD_URL_H

#include <amqp.h>

#include "errors.h"

#define URL_MAX_LENGTH 1024

struct amqp_url {
  char text[URL_MAX_LENGTH];     /* parsed in place: info points into it */
  struct amqp_connection_info info;
  char redacted[URL_MAX_LENGTH + 16]; /* password replaced by *** */
};

/* The URL a caller gets when it names none. */
const char *url_default(void);

/* Returns 0, or -1 with error BAD_URL (the message never holds the password). */
int url_parse(struct amqp_url *url, const char *text, struct ad_error *error);

#endif

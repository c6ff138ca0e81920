/* URL handling for connections. rabbitmq-c's amqp_parse_url parses in place
 * and fills defaults (guest/guest, port 5672, vhost "/"); we keep a private
 * copy and build the redacted form once, so no message can leak a password. */
#include "url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *url_default(void) {
  const char *from_environment = getenv("AMQP_URL");
  return from_environment && *from_environment ? from_environment : "amqp://localhost";
}

/* "amqp://user:secret@host" -> "amqp://user:***@host": masks between the
 * first ':' after the scheme and the last '@' of the authority. */
static void redact(char *out, size_t size, const char *text) {
  const char *authority = strstr(text, "://");
  authority = authority ? authority + 3 : text;
  const char *authority_end = authority + strcspn(authority, "/?#");
  const char *at = NULL;
  for (const char *p = authority; p < authority_end; p++)
    if (*p == '@') at = p;
  const char *colon = at ? memchr(authority, ':', (size_t)(at - authority)) : NULL;
  if (!colon) {
    snprintf(out, size, "%s", text);
    return;
  }
  snprintf(out, size, "%.*s:***%s", (int)(colon - text), text, at);
}

int url_parse(struct amqp_url *url, const char *text, struct ad_error *error) {
  size_t length = strlen(text);
  if (length >= URL_MAX_LENGTH) {
    error_set(error, ERR_BAD_URL, "URL is longer than %d bytes", URL_MAX_LENGTH - 1);
    return -1;
  }
  redact(url->redacted, sizeof url->redacted, text);
  memcpy(url->text, text, length + 1);
  amqp_default_connection_info(&url->info);
  if (amqp_parse_url(url->text, &url->info) != AMQP_STATUS_OK) {
    error_set(error, ERR_BAD_URL,
              "cannot parse URL '%s' (expected amqp://user:password@host:port/vhost)",
              url->redacted);
    return -1;
  }
  return 0;
}

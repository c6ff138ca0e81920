/* URL handling for connections. rabbitmq-c's amqp_parse_url parses in place
 * and fills defaults (guest/guest, port 5672, vhost "/"); we keep a private
 * copy and build the redacted form once. The one scanner below finds the
 * password of a URL; redacting and masking both use it. */
#include "url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>

const char *url_default(void) {
  const char *from_environment = getenv("AMQP_URL");
  return from_environment && *from_environment ? from_environment : "amqp://localhost";
}

/* In text, finds the next "scheme://": *resume is where scanning goes on
 * after it; when its authority has user:password@, [*start, *end) is the
 * password. Returns 0 when there is no further URL. */
static int next_password(const char *text, const char *stops, const char **start,
                         const char **end, const char **resume) {
  const char *scheme_end = strstr(text, "://");
  if (!scheme_end) return 0;
  const char *authority = scheme_end + 3;
  size_t length = strcspn(authority, stops);
  const char *at = NULL;
  for (const char *p = authority; p < authority + length; p++)
    if (*p == '@') at = p;
  const char *colon = at ? memchr(authority, ':', (size_t)(at - authority)) : NULL;
  *start = *end = NULL;
  *resume = authority;
  if (colon) {
    *start = colon + 1;
    *end = at;
    *resume = at;
  }
  return 1;
}

/* A URL alone ends its authority at / ? #; in free text, white space and
 * quotes end it too. */
#define URL_STOPS "/?#"
#define TEXT_STOPS "/?#, \t\r\n'\"<>"

/* every: all the URLs in text, else the first one only (a URL alone: one
 * stretch is masked, the one its parser reads as the password) */
static void redact(const char *text, const char *stops, int every, char *out, size_t size) {
  size_t used = 0;
  if (size == 0) return;
  const char *start, *end, *resume;
  while (*text && used + 1 < size) {
    int found = next_password(text, stops, &start, &end, &resume);
    const char *copy_until = !found ? text + strlen(text) : start ? start : resume;
    size_t n = (size_t)(copy_until - text);
    if (n > size - 1 - used) n = size - 1 - used;
    memcpy(out + used, text, n);
    used += n;
    if (found && start && used + 3 < size) {
      memcpy(out + used, "***", 3);
      used += 3;
    }
    if (!found) break;
    text = start ? end : resume;
    if (!every) {
      size_t rest = strlen(text);
      if (rest > size - 1 - used) rest = size - 1 - used;
      memcpy(out + used, text, rest);
      used += rest;
      break;
    }
  }
  out[used] = '\0';
}

void url_redact_text(const char *text, char *out, size_t size) {
  redact(text, TEXT_STOPS, 1, out, size);
}

void url_mask_in_place(char *text) {
  const char *start, *end, *resume;
  while (next_password(text, URL_STOPS, &start, &end, &resume)) {
    if (start) memset(text + (start - text), '*', (size_t)(end - start));
    text += resume - text;
  }
}

int url_parse(struct amqp_url *url, const char *text, struct ad_error *error) {
  size_t length = strlen(text);
  if (length >= URL_MAX_LENGTH) {
    error_set(error, ERR_BAD_URL, "URL is longer than %d bytes", URL_MAX_LENGTH - 1);
    return -1;
  }
  redact(text, URL_STOPS, 0, url->redacted, sizeof url->redacted);
  memcpy(url->text, text, length + 1);
  struct amqp_connection_info info;
  amqp_default_connection_info(&info);
  int status = amqp_parse_url(url->text, &info);
  url->info.user = info.user;
  url->info.password = info.password;
  url->info.host = info.host;
  url->info.vhost = info.vhost;
  url->info.port = info.port;
  url->info.ssl = info.ssl;
  if (status != AMQP_STATUS_OK) {
    error_set(error, ERR_BAD_URL,
              "cannot parse URL '%s' (expected amqp://user:password@host:port/vhost)",
              url->redacted);
    return -1;
  }
  return 0;
}

void url_copy(struct amqp_url *to, const struct amqp_url *from) {
  *to = *from;
  char **parts[] = {&to->info.user, &to->info.password, &to->info.host, &to->info.vhost};
  for (int i = 0; i < 4; i++)
    if (*parts[i] >= from->text && *parts[i] < from->text + sizeof from->text)
      *parts[i] = to->text + (*parts[i] - from->text);
}

/* Where the URL that starts at text ends: at a comma followed (after
 * spaces) by the next amqp:// or amqps:// URL; a comma elsewhere (in a
 * password) is part of it. Trailing spaces are not counted. */
static size_t one_url_length(const char *text, const char **next) {
  const char *comma = text;
  *next = NULL;
  while ((comma = strchr(comma, ',')) != NULL) {
    const char *after = comma + 1;
    while (*after == ' ' || *after == '\t') after++;
    if (strncmp(after, "amqp://", 7) == 0 || strncmp(after, "amqps://", 8) == 0 || !*after ||
        *after == ',') {
      *next = comma;
      break;
    }
    comma++;
  }
  size_t length = *next ? (size_t)(*next - text) : strlen(text);
  while (length && (text[length - 1] == ' ' || text[length - 1] == '\t')) length--;
  return length;
}

int url_list_add(struct url_list *list, const char *text, struct ad_error *error) {
  int before = list->count;
  for (const char *at = text;;) {
    while (*at == ' ' || *at == '\t') at++;
    const char *next;
    size_t length = one_url_length(at, &next);
    char one[URL_MAX_LENGTH];
    if (length >= sizeof one) {
      error_set(error, ERR_BAD_URL, "URL is longer than %d bytes", URL_MAX_LENGTH - 1);
      goto refused;
    }
    memcpy(one, at, length);
    one[length] = '\0';
    if (length == 0) {
      error_set(error, ERR_BAD_URL, "an empty URL in a list of URLs");
      goto refused;
    }
    if (list->count == URL_LIST_MAX) {
      error_set(error, ERR_BAD_URL, "more than %d URLs", URL_LIST_MAX);
      goto refused;
    }
    if (!list->urls) {
      list->urls = malloc(URL_LIST_MAX * sizeof *list->urls);
      if (!list->urls) {
        error_set(error, ERR_BAD_URL, "out of memory for URLs");
        goto refused;
      }
    }
    if (url_parse(&list->urls[list->count], one, error) != 0) goto refused;
    list->count++;
    if (!next) return 0;
    at = next + 1;
  }
refused:
  list->count = before;
  return -1;
}

void url_list_free(struct url_list *list) {
  free(list->urls);
  list->urls = NULL;
  list->count = 0;
}

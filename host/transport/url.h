/* AMQP URLs: defaults (--url, else AMQP_URL, else amqp://localhost), parsing,
 * and the one redactor: every URL printed anywhere goes through it, so no
 * message can show a password. */
#ifndef AD_URL_H
#define AD_URL_H

#include <stddef.h>

#include "errors.h"

#define URL_MAX_LENGTH 1024

/* What a URL names; the strings point into amqp_url.text. */
struct url_parts {
  char *user, *password, *host, *vhost;
  int port;
  int ssl; /* amqps:// */
};

struct amqp_url {
  char text[URL_MAX_LENGTH]; /* parsed in place: info points into it */
  struct url_parts info;
  char redacted[URL_MAX_LENGTH + 16]; /* password replaced by *** */
};

/* The URL a caller gets when it names none. */
const char *url_default(void);

/* Returns 0, or -1 with error BAD_URL (the message never holds the password). */
int url_parse(struct amqp_url *url, const char *text, struct ad_error *error);

/* A copy whose parts point into the copy's own text. */
void url_copy(struct amqp_url *to, const struct amqp_url *from);

/* Several brokers (a cluster): "URL[,URL...]" or one URL at a time. */
#define URL_LIST_MAX 16

struct url_list {
  struct amqp_url *urls;
  int count;
};

/* Adds each comma-separated URL of text. Returns 0, or -1 with error BAD_URL
 * (which URL, redacted) and the list unchanged. */
int url_list_add(struct url_list *list, const char *text, struct ad_error *error);
void url_list_free(struct url_list *list);

/* Copies text to out, the password of every scheme://user:password@host in
 * it replaced by ***. */
void url_redact_text(const char *text, char *out, size_t size);

/* Overwrites, in place, the password of every URL in text with '*' (for argv,
 * which ps shows). */
void url_mask_in_place(char *text);

#endif

/* libFuzzer target for url_parse (host/transport/url.c): any text, any length, must
 * neither crash nor overrun, and whenever rabbitmq-c found a password in it,
 * the redacted form (the only form we ever print) must hide that password,
 * whether the whole URL parsed or not (a BAD_URL message quotes it too).
 *
 * The password check does not look for the password's characters in the
 * redacted text (that would fail on amqp://guest:guest@host, where the user
 * has the same letters); it checks that the redacted form is the original
 * with one stretch replaced by "***" and that this stretch covers the whole
 * password as the parser read it. rabbitmq-c parses in place and decodes
 * %XX in place, so the password starts at the same offset in url->text as in
 * the input, and its raw form ends at the '@' the parser stopped at.
 *
 * rabbitmq-c itself is not instrumented: coverage guidance sees url.c only,
 * while the comparisons rabbitmq-c makes (strncmp with "amqp://") still reach
 * libFuzzer through the sanitizer's interceptors.
 *
 * Built by CMake when the compiler is clang (target fuzz_url; scripts/test.sh
 * builds build-fuzz/ with CC=clang and runs it under ctest); by hand:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I host/common -I host/transport \
 *     spec/fuzz/fuzz_url.c host/transport/url.c host/common/errors.c $(pkg-config --cflags --libs librabbitmq)
 * Run: ./fuzz_url -max_len=4096 spec/fuzz/corpus_url */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "url.h"

static void die(const char *what, const char *text, const struct amqp_url *url) {
  fprintf(stderr, "fuzz_url: %s\n  input:    '%s'\n  redacted: '%s'\n", what, text,
          url->redacted);
  abort();
}

/* 1 when `redacted` is text[0..a) "***" text[b..] with a <= start and b >= end. */
static int hides(const char *text, size_t length, const char *redacted, size_t start,
                 size_t end) {
  size_t redacted_length = strlen(redacted);
  for (size_t a = 0; a <= start && a + 3 <= redacted_length; a++) {
    if (a > 0 && redacted[a - 1] != text[a - 1]) return 0; /* prefix no longer matches */
    if (memcmp(redacted + a, "***", 3) != 0) continue;
    size_t rest = redacted_length - a - 3;
    if (rest > length) continue;
    size_t b = length - rest;
    if (b >= end && memcmp(redacted + a + 3, text + b, rest) == 0) return 1;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* url_parse takes a C string: the input up to its first NUL. */
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = 0;
  size_t length = strlen(text);

  static struct amqp_url url; /* big: keep it off the stack */
  struct ad_error error;
  memset(&url, 0xAB, sizeof url);
  memset(&error, 0, sizeof error);
  int status = url_parse(&url, text, &error);

  if (status != 0) {
    if (strcmp(error.code, ERR_BAD_URL) != 0) die("a failure that is not BAD_URL", text, &url);
    if (memchr(error.message, 0, sizeof error.message) == NULL)
      die("an unterminated error message", text, &url);
  }
  if (length >= URL_MAX_LENGTH) {
    if (status == 0) die("a URL over the length limit was accepted", text, &url);
    free(text);
    return 0;
  }
  if (memchr(url.redacted, 0, sizeof url.redacted) == NULL)
    die("an unterminated redacted form", text, &url);
  if (status == 0) {
    if (url.info.ssl != (strncmp(text, "amqps://", 8) == 0))
      die("TLS on when the scheme is not amqps://, or off when it is", text, &url);
    if (!url.info.host || !url.info.user || !url.info.password || !url.info.vhost)
      die("a parsed URL without host, user, password or vhost", text, &url);
    if (url.info.port < 0 || url.info.port > 65535) die("a port out of range", text, &url);
  }

  /* Did the parser take a password from the text (not the default "guest")?
   * Checked for failed parses too: their error message quotes the redacted form. */
  const char *password = url.info.password;
  if (password >= url.text && password <= url.text + length) {
    size_t start = (size_t)(password - url.text);
    if (start == 0 || text[start - 1] != ':') die("a password not after a ':'", text, &url);
    size_t end = start + strcspn(text + start, "@");
    if (text[end] != '@') die("a password not followed by '@'", text, &url);
    if (!hides(text, length, url.redacted, start, end))
      die("the redacted form shows (part of) the password", text, &url);
    /* and a BAD_URL message quotes the redacted form, never the text itself */
    if (status != 0 && strcmp(url.redacted, text) != 0 && strstr(error.message, text))
      die("the error message quotes the URL with its password", text, &url);
  }
  free(text);
  return 0;
}

/* Log lines: "2026-11-25T14:51:12.345Z INFO message", or the same as one
 * JSON object (strings escaped, invalid UTF-8 replaced: a worker's name or a
 * task's error may be any bytes). Messages never carry credentials: callers
 * log URLs only in their redacted form (url.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static enum log_level current_level = LOG_INFO;
static enum log_format current_format = LOG_TEXT;
static int level_from_environment_read, format_from_environment_read;
static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};

void log_set_level(enum log_level level) {
  level_from_environment_read = 1; /* what the program says wins */
  current_level = level;
}

/* AMQP_DELEGATE_LOG_LEVEL sets the first level, for code that sets none. */
static void read_environment(void) {
  level_from_environment_read = 1;
  const char *name = getenv("AMQP_DELEGATE_LOG_LEVEL");
  int level = name ? log_level_from_name(name) : -1;
  if (level >= 0) current_level = (enum log_level)level;
}

void log_set_format(enum log_format format) {
  format_from_environment_read = 1;
  current_format = format;
}

int log_format_from_name(const char *name) {
  if (strcmp(name, "text") == 0) return LOG_TEXT;
  if (strcmp(name, "json") == 0) return LOG_JSON;
  return -1;
}

static void read_format_from_environment(void) {
  format_from_environment_read = 1;
  const char *name = getenv("AMQP_DELEGATE_LOG_FORMAT");
  int format = name ? log_format_from_name(name) : -1;
  if (format >= 0) current_format = (enum log_format)format;
}

/* The length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_sequence(const unsigned char *s, size_t n) {
  size_t length = s[0] < 0x80 ? 1 : s[0] >= 0xc2 && s[0] <= 0xdf ? 2
                  : s[0] >= 0xe0 && s[0] <= 0xef               ? 3
                  : s[0] >= 0xf0 && s[0] <= 0xf4               ? 4
                                                               : 0;
  if (length == 0 || length > n) return 0;
  for (size_t i = 1; i < length; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  if (length == 3 && ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0)))
    return 0; /* overlong, or a UTF-16 surrogate */
  if (length == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90)))
    return 0; /* overlong, or past U+10FFFF */
  return length;
}

/* `text` as the inside of a JSON string into out (size bytes, NUL-ended);
 * stops before a piece that would not fit. */
static void json_escape(const char *text, char *out, size_t size) {
  const unsigned char *s = (const unsigned char *)text;
  size_t n = strlen(text), used = 0;
  for (size_t i = 0; i < n;) {
    char piece[8];
    size_t length = utf8_sequence(s + i, n - i), advance = length ? length : 1;
    if (!length) memcpy(piece, "\\ufffd", length = 6); /* not UTF-8 */
    else if (s[i] == '"' || s[i] == '\\') piece[0] = '\\', piece[1] = (char)s[i], length = 2;
    else if (s[i] == '\n') memcpy(piece, "\\n", length = 2);
    else if (s[i] < 0x20 || s[i] == 0x7f)
      length = (size_t)snprintf(piece, sizeof piece, "\\u%04x", s[i]);
    else memcpy(piece, s + i, length);
    if (used + length >= size) break;
    memcpy(out + used, piece, length);
    used += length;
    i += advance;
  }
  out[used] = '\0';
}

int log_level_from_name(const char *name) {
  static const char *const lower[] = {"debug", "info", "warn", "error", "off"};
  for (int i = 0; i <= LOG_OFF; i++)
    if (strcmp(name, lower[i]) == 0) return i;
  return -1;
}

int log_is_json(void) {
  if (!format_from_environment_read) read_format_from_environment();
  return current_format == LOG_JSON;
}

void log_line(enum log_level level, const char *format, ...) {
  if (!level_from_environment_read) read_environment();
  if (level < current_level || level >= LOG_OFF) return;
  char message[1024];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof message, format, args);
  va_end(args);
  log_write(level, message);
}

void log_write(enum log_level level, const char *text) {
  if (level >= LOG_OFF) return;
  struct timeval now;
  gettimeofday(&now, NULL);
  struct tm utc;
  gmtime_r(&now.tv_sec, &utc);
  char stamp[32];
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);
  char message[1024];
  snprintf(message, sizeof message, "%s", text);
  /* One fprintf so concurrent processes sharing a log do not interleave halves. */
  if (log_is_json()) {
    static const char *const lower[] = {"debug", "info", "warn", "error"};
    char escaped[6 * sizeof message + 1];
    json_escape(message, escaped, sizeof escaped);
    fprintf(stderr, "{\"time\":\"%s.%03dZ\",\"level\":\"%s\",\"message\":\"%s\"}\n", stamp,
            (int)(now.tv_usec / 1000), lower[level], escaped);
    return;
  }
  for (char *c = message; *c; c++) /* one event, one line: fold multi-line texts */
    if (*c == '\n') *c = '|';
  fprintf(stderr, "%s.%03dZ %-5s %s\n", stamp, (int)(now.tv_usec / 1000),
          level_names[level], message);
}

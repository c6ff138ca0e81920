/* Log lines: "2026-11-25T14:51:12.345Z INFO message". Messages never carry
 * credentials: callers log URLs only in their redacted form (url.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static enum log_level current_level = LOG_INFO;
static int level_from_environment_read;
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

int log_level_from_name(const char *name) {
  static const char *const lower[] = {"debug", "info", "warn", "error", "off"};
  for (int i = 0; i <= LOG_OFF; i++)
    if (strcmp(name, lower[i]) == 0) return i;
  return -1;
}

void log_line(enum log_level level, const char *format, ...) {
  if (!level_from_environment_read) read_environment();
  if (level < current_level || level >= LOG_OFF) return;
  struct timeval now;
  gettimeofday(&now, NULL);
  struct tm utc;
  gmtime_r(&now.tv_sec, &utc);
  char stamp[32];
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);
  char message[1024];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof message, format, args);
  va_end(args);
  for (char *c = message; *c; c++) /* one event, one line: fold multi-line texts */
    if (*c == '\n') *c = '|';
  /* One fprintf so concurrent processes sharing a log do not interleave halves. */
  fprintf(stderr, "%s.%03dZ %-5s %s\n", stamp, (int)(now.tv_usec / 1000),
          level_names[level], message);
}

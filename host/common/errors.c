/* Filling struct ad_error: codes are copied, messages formatted and cut to
 * size, foreign codes checked before they are trusted. */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void error_set(struct ad_error *error, const char *code, const char *format, ...) {
  snprintf(error->code, sizeof error->code, "%s", code);
  va_list args;
  va_start(args, format);
  vsnprintf(error->message, sizeof error->message, format, args);
  va_end(args);
}

/* Codes are short upper-case words; anything else from the outside is not
 * trusted as a code and the fallback is used. */
void error_set_code(struct ad_error *error, const char *code, size_t length,
                    const char *fallback) {
  snprintf(error->code, sizeof error->code, "%s", fallback);
  if (length == 0 || length >= sizeof error->code) return;
  for (size_t i = 0; i < length; i++) {
    char c = code[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return;
  }
  memcpy(error->code, code, length);
  error->code[length] = '\0';
}

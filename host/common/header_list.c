/* The flat header list of header_list.h. */
#include "header_list.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t count_entries(const byte_buffer *list) {
  size_t count = 0, cursor = 0;
  struct header header;
  while (header_list_next(list->data, list->length, &cursor, &header)) count++;
  return count;
}

int header_list_add(byte_buffer *list, char kind, const char *key, size_t key_length,
                    const char *value, size_t value_length) {
  size_t size = 1 + key_length + 1 + value_length + 1;
  if (key_length == 0 || key_length > HEADER_KEY_MAX || memchr(key, 0, key_length) ||
      memchr(value, 0, value_length) || list->length + size > HEADER_LIST_MAX_BYTES ||
      count_entries(list) >= HEADER_LIST_MAX_ENTRIES)
    return -1;
  if (byte_buffer_reserve(list, size) != 0) return -1;
  char *at = list->data + list->length;
  *at++ = kind;
  memcpy(at, key, key_length);
  at += key_length;
  *at++ = '\0';
  memcpy(at, value, value_length);
  at[value_length] = '\0';
  list->length += size;
  return 0;
}

int header_list_add_integer(byte_buffer *list, const char *key, int64_t value) {
  char text[24];
  int length = snprintf(text, sizeof text, "%lld", (long long)value);
  return header_list_add(list, HEADER_INTEGER, key, strlen(key), text, (size_t)length);
}

int header_list_next(const char *list, size_t length, size_t *cursor, struct header *header) {
  if (!list || *cursor >= length) return 0;
  const char *at = list + *cursor, *end = list + length;
  header->kind = *at++;
  const char *key_end = memchr(at, 0, (size_t)(end - at));
  if (!key_end) return 0;
  header->key = at;
  header->key_length = (size_t)(key_end - at);
  at = key_end + 1;
  const char *value_end = at < end ? memchr(at, 0, (size_t)(end - at)) : NULL;
  if (!value_end) return 0;
  header->value = at;
  header->value_length = (size_t)(value_end - at);
  *cursor = (size_t)(value_end + 1 - list);
  return 1;
}

int header_list_find(const char *list, size_t length, const char *key, struct header *header) {
  size_t cursor = 0, key_length = strlen(key);
  while (header_list_next(list, length, &cursor, header))
    if (header->key_length == key_length && memcmp(header->key, key, key_length) == 0) return 1;
  return 0;
}

/* Plain digits with an optional sign, read by hand (every request's
 * deadline); 0 for anything else, which strtoll then reads. */
static int plain_decimal(const char *text, size_t length, int64_t *value) {
  size_t at = text[0] == '-' || text[0] == '+';
  if (at == length || length - at > 18) return 0; /* 18 digits cannot overflow */
  int64_t number = 0;
  for (; at < length; at++) {
    if (text[at] < '0' || text[at] > '9') return 0;
    number = number * 10 + (text[at] - '0');
  }
  *value = text[0] == '-' ? -number : number;
  return 1;
}

int header_integer(const struct header *header, int64_t *value) {
  if (header->kind != HEADER_INTEGER && header->kind != HEADER_TEXT) return 0;
  if (plain_decimal(header->value, header->value_length, value)) return 1;
  char *end;
  errno = 0;
  long long parsed = strtoll(header->value, &end, 10);
  if (errno || end == header->value || *end) return 0;
  *value = parsed;
  return 1;
}

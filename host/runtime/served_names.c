/* A set of worker names with one slot per hash (served_names.h): looking a
 * name up is a hash and a compare on every call, so it must stay that cheap;
 * losing a name to a collision costs one question to the broker, no more. */
#include "served_names.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fnv1a.h"

struct served_name {
  uint64_t hash;
  char name[]; /* NUL-terminated */
};

static uint64_t hash_name(const char *name) { return fnv1a(FNV1A_START, name, strlen(name)); }

void served_names_init(struct served_names *names) { memset(names, 0, sizeof *names); }

int served_names_has(const struct served_names *names, const char *name) {
  uint64_t hash = hash_name(name);
  const struct served_name *entry = names->slots[hash % SERVED_NAMES_SLOTS];
  return entry && entry->hash == hash && strcmp(entry->name, name) == 0;
}

int served_names_add(struct served_names *names, const char *name) {
  uint64_t hash = hash_name(name);
  struct served_name **slot = &names->slots[hash % SERVED_NAMES_SLOTS];
  if (*slot && (*slot)->hash == hash && strcmp((*slot)->name, name) == 0) return 0;
  size_t length = strlen(name);
  struct served_name *entry = malloc(sizeof *entry + length + 1);
  if (!entry) return -1;
  entry->hash = hash;
  memcpy(entry->name, name, length + 1);
  free(*slot);
  *slot = entry;
  return 0;
}

void served_names_forget(struct served_names *names, const char *name) {
  uint64_t hash = hash_name(name);
  struct served_name **slot = &names->slots[hash % SERVED_NAMES_SLOTS];
  if (*slot && (*slot)->hash == hash && strcmp((*slot)->name, name) == 0) {
    free(*slot);
    *slot = NULL;
  }
}

void served_names_free(struct served_names *names) {
  for (int i = 0; i < SERVED_NAMES_SLOTS; i++) {
    free(names->slots[i]);
    names->slots[i] = NULL;
  }
}

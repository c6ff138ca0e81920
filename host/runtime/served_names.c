/* A set of worker names (served_names.h) in sets of a few ways each: looking
 * a name up is a hash and a few compares on every call, so it must stay that
 * cheap; names that share a set live side by side, so two names in one slot
 * do not push each other out on every call. Losing a name to a full set costs
 * one question to the broker, no more. */
#include "served_names.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fnv1a.h"

#define WAYS 4
#define SETS (SERVED_NAMES_SLOTS / WAYS)

struct served_name {
  uint64_t hash;
  char name[]; /* NUL-terminated */
};

static uint64_t hash_name(const char *name) { return fnv1a(FNV1A_START, name, strlen(name)); }

static struct served_name **set_of(struct served_names *names, uint64_t hash) {
  return &names->slots[(hash % SETS) * WAYS];
}

static int is(const struct served_name *entry, uint64_t hash, const char *name) {
  return entry && entry->hash == hash && strcmp(entry->name, name) == 0;
}

void served_names_init(struct served_names *names) { memset(names, 0, sizeof *names); }

int served_names_has(const struct served_names *names, const char *name) {
  uint64_t hash = hash_name(name);
  struct served_name *const *set = &names->slots[(hash % SETS) * WAYS];
  for (int way = 0; way < WAYS; way++)
    if (is(set[way], hash, name)) return 1;
  return 0;
}

/* A newcomer goes first in its set; the last (least recently added) goes
 * when the set is full. */
int served_names_add(struct served_names *names, const char *name) {
  uint64_t hash = hash_name(name);
  struct served_name **set = set_of(names, hash);
  for (int way = 0; way < WAYS; way++)
    if (is(set[way], hash, name)) return 0;
  size_t length = strlen(name);
  struct served_name *entry = malloc(sizeof *entry + length + 1);
  if (!entry) return -1;
  entry->hash = hash;
  memcpy(entry->name, name, length + 1);
  free(set[WAYS - 1]);
  memmove(&set[1], &set[0], (WAYS - 1) * sizeof *set);
  set[0] = entry;
  return 0;
}

void served_names_forget(struct served_names *names, const char *name) {
  uint64_t hash = hash_name(name);
  struct served_name **set = set_of(names, hash);
  for (int way = 0; way < WAYS; way++) {
    if (!is(set[way], hash, name)) continue;
    free(set[way]);
    memmove(&set[way], &set[way + 1], (size_t)(WAYS - 1 - way) * sizeof *set);
    set[WAYS - 1] = NULL;
    return;
  }
}

void served_names_free(struct served_names *names) {
  for (int i = 0; i < SERVED_NAMES_SLOTS; i++) {
    free(names->slots[i]);
    names->slots[i] = NULL;
  }
}

/* Unit test of host/transport/ack_window.c: a multiple ack never covers a
 * delivery that is still in hand, and covers the due ones it can. */
#include <stdio.h>
#include <stdlib.h>

#include "ack_window.h"

static int failures;

#define CHECK(condition)                                                   \
  do {                                                                     \
    if (!(condition)) {                                                    \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #condition);      \
      failures++;                                                          \
    }                                                                      \
  } while (0)

static void deliver(struct ack_window *window, uint64_t from, uint64_t to) {
  for (uint64_t tag = from; tag <= to; tag++) CHECK(ack_window_delivered(window, tag) == 0);
}

static void take(struct ack_window *window, uint64_t *up_to, uint64_t *singles, size_t *count) {
  ack_window_take_due(window, up_to, singles, count);
}

int main(void) {
  struct ack_window window;
  uint64_t up_to, singles[4096];
  size_t count;

  /* in order, all due: one multiple ack */
  ack_window_init(&window);
  deliver(&window, 1, 64);
  for (uint64_t tag = 1; tag <= 64; tag++) CHECK(ack_window_due(&window, tag) == 0);
  take(&window, &up_to, singles, &count);
  CHECK(up_to == 64 && count == 0);
  CHECK(window.base == 65);

  /* 65 still in hand: 66..70 due go one by one, never as a multiple */
  deliver(&window, 65, 70);
  for (uint64_t tag = 66; tag <= 70; tag++) ack_window_due(&window, tag);
  take(&window, &up_to, singles, &count);
  CHECK(up_to == 0 && count == 5);
  /* then 65 ends: alone, but every delivery up to 70 is settled */
  ack_window_due(&window, 65);
  take(&window, &up_to, singles, &count);
  CHECK((up_to == 65 && count == 0) || (up_to == 0 && count == 1 && singles[0] == 65));
  CHECK(window.base == 71);

  /* out of order, with a reject in between: 72 rejected, 71 and 73 due, 74 in hand */
  deliver(&window, 71, 74);
  ack_window_settled(&window, 72);
  ack_window_due(&window, 73);
  ack_window_due(&window, 71);
  take(&window, &up_to, singles, &count);
  CHECK(up_to == 73 && count == 0); /* 72 is no longer outstanding: covering it is harmless */
  CHECK(window.base == 74);

  /* a window wider than its first ring (a long task holds 75 while 2000 end) */
  deliver(&window, 75, 2075);
  for (uint64_t tag = 76; tag <= 2075; tag++) ack_window_due(&window, tag);
  take(&window, &up_to, singles, &count);
  CHECK(up_to == 0 && count == 2000);
  ack_window_due(&window, 74);
  take(&window, &up_to, singles, &count);
  CHECK(count + (up_to ? 1 : 0) == 1);
  CHECK(window.base == 75); /* 75 is still in hand */
  ack_window_due(&window, 75);
  take(&window, &up_to, singles, &count);
  CHECK(window.base == 2076);
  ack_window_free(&window);

  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  else printf("ack_window: all checks passed\n");
  return failures ? 1 : 0;
}

/* What a running host reports over HTTP (metrics_server.h): the figures of
 * its workers and delegators, gathered from the runtime's list and rendered
 * by metrics_text.h, and whether it is healthy. Both read C state only, so
 * any loop callback may call them; neither runs Lua. */
#ifndef AD_METRICS_H
#define AD_METRICS_H

#include <stddef.h>

#include "byte_buffer.h"
#include "runtime.h"

/* Appends the exposition text. Returns 0, or -1 when memory ran out. */
int metrics_write(struct runtime *runtime, byte_buffer *out);

/* 1 when healthy: at least one worker, and every worker and delegator that
 * is not stopped is connected (not starting, reconnecting or stopping).
 * Writes why, one line without newline, into `line`. */
int metrics_health(struct runtime *runtime, char *line, size_t size);

#endif

/* The count hook of keepalive.h. Its fast path is a clock read every
 * KEEPALIVE_INSTRUCTIONS instructions; the heartbeats and the log happen at
 * most every CHECK_INTERVAL_NS. */
#include "keepalive.h"

#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "connection.h"
#include "log.h"
#include "runtime.h"

#define KEEPALIVE_INSTRUCTIONS 10000
#define CHECK_INTERVAL_NS 200000000ULL /* 0.2 s */

static struct runtime **runtime_slot(lua_State *thread) {
  return (struct runtime **)lua_getextraspace(thread);
}

static double held_seconds(const struct runtime *runtime, uint64_t now) {
  return (double)(now - runtime->keepalive.entered_at) / 1e9;
}

static void on_count(lua_State *thread, lua_Debug *debug) {
  (void)debug;
  struct runtime *runtime = *runtime_slot(thread);
  if (!runtime || runtime->closed) return;
  /* a task running this long lets the replies of the jobs before it go */
  transport_flush_writes();
  struct keepalive *keepalive = &runtime->keepalive;
  uint64_t now = uv_hrtime();
  if (now < keepalive->next_check) return;
  keepalive->next_check = now + CHECK_INTERVAL_NS;
  int heartbeat = transport_keepalive(&runtime->loop, now / 1000000);
  if (!keepalive->entered_at || keepalive->logged || heartbeat <= 0) return;
  double held = held_seconds(runtime, now);
  if (held < heartbeat) return;
  keepalive->logged = 1;
  log_line(LOG_WARN,
           "%s%s%s holds the loop (%.1f s so far, over the heartbeat interval of %d s): "
           "heartbeats go out meanwhile, nothing else runs until it yields",
           keepalive->name ? "a task of worker '" : "Lua code", keepalive->name ? keepalive->name : "",
           keepalive->name ? "'" : "", held, heartbeat);
}

/* AMQP_DELEGATE_KEEPALIVE=0 leaves the hook out: for the benchmark's A/B. */
static int wanted(void) {
  const char *setting = getenv("AMQP_DELEGATE_KEEPALIVE");
  return !setting || strcmp(setting, "0") != 0;
}

void keepalive_install(struct runtime *runtime, lua_State *thread) {
  *runtime_slot(thread) = runtime;
  if (!wanted()) return;
  lua_Hook hook = lua_gethook(thread);
  if (hook && hook != on_count) return; /* the program's own (a profiler, the REPL's Ctrl-C) */
  lua_sethook(thread, on_count, LUA_MASKCOUNT, KEEPALIVE_INSTRUCTIONS);
}

void keepalive_enter(struct runtime *runtime, struct fiber *fiber) {
  struct keepalive *keepalive = &runtime->keepalive;
  keepalive->entered_at = uv_hrtime();
  keepalive->name = fiber ? fiber->name : NULL;
  keepalive->logged = 0;
}

void keepalive_leave(struct runtime *runtime) {
  struct keepalive *keepalive = &runtime->keepalive;
  if (keepalive->logged)
    log_line(LOG_WARN, "%s%s%s held the loop for %.1f s", keepalive->name ? "a task of worker '" : "Lua code",
             keepalive->name ? keepalive->name : "", keepalive->name ? "'" : "",
             held_seconds(runtime, uv_hrtime()));
  keepalive->entered_at = 0;
  keepalive->logged = 0;
}

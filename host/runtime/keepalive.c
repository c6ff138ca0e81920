/* The count hook of keepalive.h. Its fast path is a clock read every
 * KEEPALIVE_INSTRUCTIONS instructions; the heartbeats and the log happen at
 * most every CHECK_INTERVAL_NS. Armed lazily (the host's run), a timer signal
 * sets it only on the threads of a Lua entry that outlasted a tick. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* gettid, SIGEV_THREAD_ID */
#endif
#include "keepalive.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* ---- lazy arming: the state the timer signal's handler reads ---- */

#define TICK_NS 20000000L /* 20 ms: how long an entry runs before the hook is set */
#define IDLE_TICKS 10     /* the timer stops after this many ticks with no Lua running */
#define TRACKED_MAX 256   /* nested resumes: Lua's C stack limit (200) comes first */

static struct {
  timer_t timer;
  int timer_made, signal_number;
  volatile sig_atomic_t on;        /* lazy arming in force */
  volatile sig_atomic_t ticking;   /* the timer runs */
  volatile sig_atomic_t idle_ticks;
  volatile sig_atomic_t depth;     /* threads[0..depth) run Lua now, innermost last */
  volatile sig_atomic_t entries;   /* counts entries from the loop */
  volatile sig_atomic_t seen;      /* entries at the last tick */
  lua_State *volatile threads[TRACKED_MAX];
} lazy;

static void on_count(lua_State *thread, lua_Debug *debug);

/* By the mask, not the function: a tick that lands inside a disarm's
 * lua_sethook leaves the function set with no mask, which is no hook. */
static int armed(lua_State *thread) {
  return lua_gethookmask(thread) != 0 && lua_gethook(thread) == on_count;
}

static void arm(lua_State *thread) {
  if (lua_gethookmask(thread) == 0) lua_sethook(thread, on_count, LUA_MASKCOUNT, 1); /* at once */
}

static void disarm(lua_State *thread) {
  if (lua_gethook(thread) == on_count) lua_sethook(thread, NULL, 0, 0);
}

static void set_ticking(int on) {
  struct itimerspec every = {{0, on ? TICK_NS : 0}, {0, on ? TICK_NS : 0}};
  if (timer_settime(lazy.timer, 0, &every, NULL) == 0) lazy.ticking = on;
}

/* The timer signal, on the loop's thread: lua_sethook is safe in a signal
 * handler (ldebug.c says why), timer_settime is async-signal-safe, and the
 * rest are loads and stores. An entry that lasted a whole tick gets the hook
 * on its innermost thread, the one that runs: it fires, does its work and
 * takes itself off. Still set at the next tick, it did not fire: the thread
 * is inside a C function (a sleep, a blocking read), and the ticks stop, so
 * as not to interrupt it again; the hook, once Lua runs, starts them. */
static void on_tick(int signal_number) {
  (void)signal_number;
  if (!lazy.on) return;
  int depth = lazy.depth;
  if (depth == 0) {
    if (++lazy.idle_ticks >= IDLE_TICKS) set_ticking(0);
    return;
  }
  lazy.idle_ticks = 0;
  if (lazy.seen != lazy.entries) { /* entered since the last tick: not long yet */
    lazy.seen = lazy.entries;
    return;
  }
  if (depth > TRACKED_MAX) return;
  lua_State *innermost = lazy.threads[depth - 1];
  if (armed(innermost)) set_ticking(0);
  else arm(innermost);
}

static void on_count(lua_State *thread, lua_Debug *debug) {
  (void)debug;
  if (lazy.on) { /* the next tick sets it again */
    disarm(thread);
    if (!lazy.ticking) set_ticking(1);
  }
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

enum keepalive_mode { KEEPALIVE_OFF, KEEPALIVE_HOOK, KEEPALIVE_LAZY };

/* AMQP_DELEGATE_KEEPALIVE=0 leaves the hook out (the benchmark's A/B); =hook
 * keeps it on every thread in the host too, with no timer signal; else the
 * host's run arms it lazily. Read once: every new thread asks. */
static enum keepalive_mode mode(void) {
  static int known = -1;
  if (known < 0) {
    const char *setting = getenv("AMQP_DELEGATE_KEEPALIVE");
    known = !setting                      ? KEEPALIVE_LAZY
            : strcmp(setting, "0") == 0    ? KEEPALIVE_OFF
            : strcmp(setting, "hook") == 0 ? KEEPALIVE_HOOK
                                           : KEEPALIVE_LAZY;
  }
  return (enum keepalive_mode)known;
}

void keepalive_install(struct runtime *runtime, lua_State *thread) {
  *runtime_slot(thread) = runtime;
  if (mode() == KEEPALIVE_OFF || lazy.on) return;
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

void keepalive_push(lua_State *thread) {
  if (!lazy.on) return;
  int depth = lazy.depth;
  if (depth < TRACKED_MAX) lazy.threads[depth] = thread;
  if (depth == 0) lazy.entries = (lazy.entries + 1) & 0xffff; /* never overflows */
  lazy.depth = depth + 1; /* before the timer's check: a tick now sees Lua running */
  if (!lazy.ticking) set_ticking(1);
}

/* Back from the innermost thread: a hook left on it goes. */
void keepalive_pop(void) {
  int depth = lazy.depth;
  if (depth == 0) return;
  if (depth <= TRACKED_MAX) disarm(lazy.threads[depth - 1]);
  lazy.depth = depth - 1;
}

int keepalive_lazily_wanted(void) { return mode() == KEEPALIVE_LAZY; }

int keepalive_resetthread(lua_State *thread) {
  keepalive_push(thread);
  int status = lua_resetthread(thread);
  keepalive_pop();
  return status;
}

int keepalive_arm_lazily(struct runtime *runtime, lua_State *L) {
  if (!keepalive_lazily_wanted() || lazy.on) return 0;
  int signal_number = SIGRTMIN + 3;
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = on_tick;
  action.sa_flags = SA_RESTART; /* the system calls of the code it interrupts go on */
  sigemptyset(&action.sa_mask);
  struct sigevent event;
  memset(&event, 0, sizeof event);
  event.sigev_notify = SIGEV_THREAD_ID;
  event.sigev_signo = signal_number;
  event._sigev_un._tid = gettid();
  if (sigaction(signal_number, &action, NULL) != 0) return -1;
  if (timer_create(CLOCK_MONOTONIC, &event, &lazy.timer) != 0) {
    signal(signal_number, SIG_IGN);
    return -1;
  }
  lazy.timer_made = 1;
  lazy.signal_number = signal_number;
  /* the hooks set so far go: the main thread's, the loop's, this one's, the
   * fibers' (a spare thread serves request after request) */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  disarm(lua_tothread(L, -1));
  lua_pop(L, 1);
  disarm(L);
  disarm(runtime->L);
  for (int i = 0; i < runtime->spare_count; i++) disarm(runtime->spare_threads[i]);
  for (struct fiber *fiber = runtime->fibers; fiber; fiber = fiber->next) disarm(fiber->thread);
  lazy.on = 1;
  return 0;
}

/* A tick still pending after the timer is gone is ignored: the default
 * action of a real-time signal would end the process. */
void keepalive_stop_lazily(void) {
  lazy.on = 0;
  if (!lazy.timer_made) return;
  timer_delete(lazy.timer);
  signal(lazy.signal_number, SIG_IGN);
  lazy.timer_made = 0;
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

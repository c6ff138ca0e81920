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

#include <lauxlib.h>
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
#define ARMED_MAX 16      /* threads tracked: the fiber's, then coroutines it resumed */

static struct {
  timer_t timer;
  int timer_made, signal_number;
  volatile sig_atomic_t on;        /* lazy arming in force */
  volatile sig_atomic_t ticking;   /* the timer runs */
  volatile sig_atomic_t idle_ticks;
  volatile sig_atomic_t depth;     /* threads[0..depth) run Lua now, innermost last */
  volatile sig_atomic_t entries;   /* counts entries from the loop */
  volatile sig_atomic_t seen;      /* entries at the last tick */
  lua_State *volatile threads[ARMED_MAX];
} lazy;

static void on_count(lua_State *thread, lua_Debug *debug);

static void arm(lua_State *thread) {
  if (!lua_gethook(thread)) lua_sethook(thread, on_count, LUA_MASKCOUNT, 1); /* fires at once */
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
 * rest are stores. An entry that lasted a whole tick gets the hook on its
 * threads, once per tick: it fires, does its work and takes itself off. */
static void on_tick(int signal_number) {
  (void)signal_number;
  if (!lazy.on) return;
  if (lazy.depth == 0) {
    if (++lazy.idle_ticks >= IDLE_TICKS) set_ticking(0);
    return;
  }
  lazy.idle_ticks = 0;
  if (lazy.seen != lazy.entries) { /* entered since the last tick: not long yet */
    lazy.seen = lazy.entries;
    return;
  }
  int depth = lazy.depth < ARMED_MAX ? lazy.depth : ARMED_MAX;
  for (int i = 0; i < depth; i++) arm(lazy.threads[i]);
}

static void on_count(lua_State *thread, lua_Debug *debug) {
  (void)debug;
  struct runtime *runtime = *runtime_slot(thread);
  if (!runtime || runtime->closed) return;
  if (lazy.on) disarm(thread); /* the next tick sets it again */
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
  if (!wanted() || lazy.on) return;
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
  if (lazy.depth < ARMED_MAX) lazy.threads[lazy.depth] = thread;
  if (lazy.depth == 0) lazy.entries++;
  lazy.depth++; /* before the timer's check: a tick now sees Lua running */
  if (!lazy.ticking) set_ticking(1);
}

/* Back from the innermost thread: a hook left on it goes. */
void keepalive_pop(void) {
  if (lazy.depth == 0) return;
  int depth = lazy.depth - 1;
  if (depth < ARMED_MAX) disarm(lazy.threads[depth]);
  lazy.depth = depth;
}

/* coroutine.resume and coroutine.wrap, tracked: a coroutine that a task
 * resumes is where a tick must set the hook while it computes. */
static int tracked_resume(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD); /* the library's own check and message */
  lua_State *coroutine = lua_tothread(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1)); /* the library's own resume */
  lua_insert(L, 1);
  keepalive_push(coroutine);
  int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  keepalive_pop();
  if (status != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

static int tracked_wrapped(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1)); /* resume (tracked) */
  lua_pushvalue(L, lua_upvalueindex(2)); /* the coroutine */
  lua_rotate(L, 1, 2);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  if (!lua_toboolean(L, 1)) { /* as coroutine.wrap: the error goes on, the coroutine is closed */
    lua_State *coroutine = lua_tothread(L, lua_upvalueindex(2));
    if (lua_status(coroutine) != LUA_OK && lua_status(coroutine) != LUA_YIELD)
      lua_resetthread(coroutine);
    if (lua_type(L, 2) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, 2);
      lua_concat(L, 2);
    }
    lua_settop(L, 2);
    return lua_error(L);
  }
  return lua_gettop(L) - 1;
}

static int tracked_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *coroutine = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, coroutine, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, -2);
  lua_pushcclosure(L, tracked_wrapped, 2);
  return 1;
}

static void track_coroutines(lua_State *L) {
  lua_getglobal(L, "coroutine");
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, -1, "resume");
  lua_pushcclosure(L, tracked_resume, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "resume");
  lua_pushcclosure(L, tracked_wrap, 1);
  lua_setfield(L, -2, "wrap");
  lua_pop(L, 1);
}

int keepalive_arm_lazily(struct runtime *runtime, lua_State *L) {
  if (!wanted() || lazy.on) return 0;
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
  track_coroutines(L);
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

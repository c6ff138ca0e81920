/* The runtime: one libuv loop per Lua state, and the fibers (Lua coroutines)
 * that the loop runs. Lua code waits (a call, a sleep) by yielding its fiber to
 * the loop; plain Lua code that is not in a fiber waits by running the loop. */
#ifndef AD_RUNTIME_H
#define AD_RUNTIME_H

#include <signal.h>
#include <stddef.h>

#include <lua.h>
#include <uv.h>

#include "errors.h"

struct fiber;
struct runtime;

/* Called once when a fiber's function returns (status LUA_OK, its results on
 * fiber->thread's stack) or raises (status is the error, the error value on
 * top of fiber->thread's stack, which is not unwound yet). */
typedef void (*fiber_finish_fn)(struct fiber *fiber, int status);

struct fiber {
  struct runtime *runtime;
  lua_State *thread;
  fiber_finish_fn finish;
  int waiting;      /* set by our own yields; any other yield is a mistake */
  uv_timer_t timer; /* delegate.sleep inside the fiber */
  int timer_open;
  struct fiber *previous, *next;
  max_align_t context[]; /* the owner's per-fiber state, freed with the fiber */
};

/* Something that serve() keeps running and stops at a signal: a started worker. */
struct service {
  void (*stop)(struct service *service, lua_State *L);
  struct service *previous, *next;
};

#define RUNTIME_SPARE_THREADS 64

struct runtime {
  uv_loop_t loop;
  lua_State *L;   /* the loop's own thread: callbacks work on its stack */
  int running;    /* inside uv_run: waiting again there would re-enter libuv */
  int signals_seen;
  volatile sig_atomic_t interrupted; /* SIGINT during a plain wait */
  uv_async_t *interrupt;             /* wakes the loop from the SIGINT handler */
  struct fiber *fibers;
  struct service *services;
  lua_State *spare_threads[RUNTIME_SPARE_THREADS]; /* finished fibers' threads, reused */
  int spare_count;
};

/* Creates the runtime of L's state if it does not exist yet (idempotent). */
void runtime_open(lua_State *L);
struct runtime *runtime_get(lua_State *L);

/* Runs the loop until *done becomes non-zero; returns 0, or -1 when it is
 * already running (a hook) or nothing is left that could set *done. */
int runtime_run_until(struct runtime *runtime, const int *done);

enum wait_result { WAIT_DONE = 0, WAIT_NOTHING_LEFT = -1, WAIT_INTERRUPTED = -2, WAIT_NESTED = -3 };

/* Ends the current turn of the loop early: call it when something a plain
 * wait watches (a done flag) has changed, or the loop would first poll,
 * possibly until the next heartbeat. */
void runtime_wake(struct runtime *runtime);

/* A plain Lua caller's wait: runs the loop until *done, and lets SIGINT
 * (Ctrl-C) interrupt it; the previous SIGINT handler is restored after. */
int runtime_wait(struct runtime *runtime, const int *done);
/* Raises the error that goes with a failed wait; never returns. */
int runtime_wait_error(lua_State *L, int result, const char *what);

/* Calls fn(rt->L) with arg as its only argument (light userdata), protected.
 * Returns 0, or -1 after logging the error with `what`. */
int runtime_protected(struct runtime *runtime, lua_CFunction fn, void *arg, const char *what);

/* serve(): runs the loop until SIGINT/SIGTERM or until no service is left,
 * then stops every service. Returns the signal number, or 0. A second signal
 * while stopping ends the process at once. */
int runtime_serve(struct runtime *runtime, lua_State *L);
void runtime_add_service(struct runtime *runtime, struct service *service);
void runtime_remove_service(struct runtime *runtime, struct service *service);

static inline void *fiber_context(struct fiber *fiber) { return fiber->context; }

/* Must run protected (it may raise on memory errors). The caller then pushes
 * the function and its arguments on fiber->thread and calls fiber_resume. */
struct fiber *fiber_create(struct runtime *runtime, fiber_finish_fn finish,
                           size_t context_size);
void fiber_resume(struct fiber *fiber, int nargs);
/* The fiber whose coroutine L is, or NULL for plain Lua code. */
struct fiber *fiber_current(lua_State *L);
/* Yields the running fiber to the loop; k continues it when resumed. */
int fiber_yield(lua_State *L, struct fiber *fiber, lua_KContext context, lua_KFunction k);
/* "message\nstack traceback..." of a failed fiber, pushed on runtime->L. */
void fiber_push_traceback(struct fiber *fiber);

/* A timer in its own allocation, closed and freed through the loop, for
 * owners (userdata) that may be collected while libuv still holds it. */
uv_timer_t *runtime_timer_new(struct runtime *runtime, void *data);
void runtime_timer_free(uv_timer_t *timer);

/* delegate.sleep: yields in a fiber, runs the loop otherwise. */
int runtime_sleep(lua_State *L, double seconds);

#endif

/* The runtime: one libuv loop per Lua state, the fibers (Lua coroutines)
 * that the loop runs, and the one place the loop enters Lua: the job queue.
 * Callbacks from the transport and from timers never run Lua; they queue a
 * job, and jobs run from the loop's check and idle phases, once the state
 * that queued them is consistent. Lua code waits (a call, a sleep, a start)
 * by yielding its fiber to the loop; plain Lua code that is not in a fiber
 * waits by running the loop. */
#ifndef AD_RUNTIME_H
#define AD_RUNTIME_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <uv.h>

#include "errors.h"

struct fiber;
struct call_context;
struct runtime;
struct lifecycle;

/* Work for the loop's one place: queued from anywhere, run in order. */
struct job {
  void (*run)(struct job *job);
  struct job *previous, *next;
  int queued;
};

/* Called once when a fiber's function returns (status LUA_OK, its results on
 * fiber->thread's stack) or raises (status is the error, the error value on
 * top of fiber->thread's stack, which is not unwound yet). */
typedef void (*fiber_finish_fn)(struct fiber *fiber, int status);
/* A pending wait's cleanup: runs when the fiber ends while still waiting. */
typedef void (*fiber_cancel_fn)(struct fiber *fiber, void *wait_data);

struct fiber {
  struct runtime *runtime;
  lua_State *thread;
  fiber_finish_fn finish;
  int waiting;               /* set by our own yields; any other yield is a mistake */
  struct job wake;           /* resumes the fiber from the loop's one place */
  fiber_cancel_fn cancel;    /* the one pending wait's cleanup, or NULL */
  void *wait_data;
  uv_timer_t timer;          /* delegate.sleep inside the fiber */
  int timer_open;
  struct fiber *previous, *next;
  const char *name;          /* the worker whose task it runs (logs), or NULL */
  const struct call_context *call_context; /* the call a task serves, or NULL */
  max_align_t context[];     /* the owner's per-fiber state, freed with the fiber */
};

/* Something that serve() keeps running and stops at a signal: a started worker. */
struct service {
  /* Begins a graceful stop; the service removes itself once stopped. */
  void (*stop)(struct service *service);
  struct service *previous, *next;
  int listed;
};

#define RUNTIME_SPARE_THREADS 64

/* keepalive.c's state: which fiber holds the loop since when. */
struct keepalive {
  uint64_t entered_at, next_check; /* uv_hrtime() ns; entered_at 0: no fiber runs */
  const char *name;
  int logged;
};

struct runtime {
  uv_loop_t loop;
  lua_State *L;   /* the loop's own thread: callbacks work on its stack */
  int running;    /* inside uv_run: waiting again there would re-enter libuv */
  int resuming;   /* inside a fiber's lua_resume */
  int closed;     /* lua_close finalized the runtime: its loop is gone */
  volatile sig_atomic_t interrupted; /* SIGINT during a plain wait */
  uv_async_t *interrupt;             /* wakes the loop from a signal handler */
  uv_check_t *check;                 /* runs the jobs after each poll */
  uv_idle_t *idle;                   /* keeps the poll from sleeping while jobs wait */
  struct job *jobs_first, *jobs_last;
  struct fiber *fibers;
  struct service *services;
  int service_failures; /* services that stopped because they could not go on */
  lua_State *spare_threads[RUNTIME_SPARE_THREADS]; /* finished fibers' threads, reused */
  int spare_count;
  struct keepalive keepalive;
  struct fiber *running_fiber; /* whose Lua code runs now (coroutines of a task too) */
  struct lifecycle *lifecycles; /* every worker and delegator not yet collected (metrics) */
};

/* Creates the runtime of L's state if it does not exist yet (idempotent). */
void runtime_open(lua_State *L);
struct runtime *runtime_get(lua_State *L);

/* ---- jobs ---- */

void job_init(struct job *job, void (*run)(struct job *job));
/* Queues the job (once: queuing a queued job does nothing). */
void runtime_defer(struct runtime *runtime, struct job *job);
void runtime_cancel_job(struct runtime *runtime, struct job *job);

/* ---- waiting ---- */

enum wait_result { WAIT_DONE = 0, WAIT_NOTHING_LEFT = -1, WAIT_INTERRUPTED = -2 };

/* Where may the Lua code running on L wait? Returns its fiber (it yields),
 * NULL for plain Lua code (it runs the loop), or raises CANNOT_WAIT naming
 * the place and the way out (a C call in the way, a coroutine of a task's
 * own, a finalizer inside the loop). Call it before anything is sent. */
struct fiber *runtime_wait_place(lua_State *L, struct runtime *runtime, const char *what);

/* Ends the current turn of the loop early: call it when something a plain
 * wait watches (a done flag) has changed, or the loop would first poll,
 * possibly until the next heartbeat. */
void runtime_wake(struct runtime *runtime);

/* A plain Lua caller's wait: runs the loop until *done, and lets SIGINT
 * (Ctrl-C) interrupt it; the previous SIGINT handler is restored after. */
int runtime_wait(struct runtime *runtime, const int *done);
/* Runs the loop until *done without catching SIGINT (stops that must end). */
void runtime_run_until(struct runtime *runtime, const int *done);
/* Raises the error that goes with a failed wait; never returns. */
int runtime_wait_error(lua_State *L, int result, const char *what);

/* Calls fn(rt->L) with arg as its only argument (light userdata), protected.
 * Returns 0, or -1 after logging the error with `what`. */
int runtime_protected(struct runtime *runtime, lua_CFunction fn, void *arg, const char *what);

/* serve(): runs the loop until SIGINT/SIGTERM or until no service is left,
 * then stops every service at once and waits for them. Returns the signal
 * number; 0 when the services were stopped by the program; -1 when they all
 * stopped because they could not go on. A second signal exits at once, even
 * while a task holds the loop. */
int runtime_serve(struct runtime *runtime, lua_State *L);
void runtime_add_service(struct runtime *runtime, struct service *service);
void runtime_remove_service(struct runtime *runtime, struct service *service);

/* ---- fibers ---- */

static inline void *fiber_context(struct fiber *fiber) { return fiber->context; }

/* Must run protected (it may raise on memory errors). The caller then pushes
 * the function and its arguments on fiber->thread and calls fiber_resume. */
struct fiber *fiber_create(struct runtime *runtime, fiber_finish_fn finish,
                           size_t context_size);
/* Only from a job or a fiber's start (the loop's one place). */
void fiber_resume(struct fiber *fiber, int nargs);
/* The fiber whose coroutine L is, or NULL for plain Lua code. */
struct fiber *fiber_current(lua_State *L);
/* Yields the running fiber to the loop with one pending wait whose cleanup
 * is cancel(fiber, wait_data); k continues it when resumed. */
int fiber_wait(lua_State *L, struct fiber *fiber, fiber_cancel_fn cancel, void *wait_data,
               lua_KContext context, lua_KFunction k);
/* The wait is over: resumes the fiber from the job queue. */
void fiber_wake(struct fiber *fiber);

/* A timer in its own allocation, closed and freed through the loop, for
 * owners (userdata) that may be collected while libuv still holds it. */
uv_timer_t *runtime_timer_new(struct runtime *runtime, void *data);
void runtime_timer_free(uv_timer_t *timer);

/* Milliseconds from a number of seconds the binding already checked. */
uint64_t runtime_milliseconds(double seconds);

/* delegate.sleep: yields in a fiber, runs the loop otherwise. */
int runtime_sleep(lua_State *L, double seconds);

#endif

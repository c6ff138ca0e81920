/* The runtime of one Lua state: its libuv loop, the job queue (the one place
 * the loop enters Lua), the fibers the jobs resume, and serve(). The loop
 * enters Lua only through lua_resume (fibers) and lua_pcall
 * (runtime_protected), never unprotected and never from a transport
 * callback. */
#include "runtime.h"

#include "keepalive.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "connection.h"
#include "error_object.h"
#include "log.h"

#define RUNTIME_KEY "amqp_delegate.runtime"
#define RUNTIME_MT "amqp_delegate.runtime_mt"
#define FIBERS_KEY "amqp_delegate.fibers"   /* thread -> fiber, anchors threads */
#define LOOP_THREAD_KEY "amqp_delegate.loop_thread"

static void free_after_close(uv_handle_t *handle) { free(handle->data); }

static void close_any_handle(uv_handle_t *handle, void *unused) {
  (void)unused;
  if (!uv_is_closing(handle)) uv_close(handle, NULL);
}

static void close_owned(uv_handle_t *handle) {
  handle->data = handle;
  uv_close(handle, free_after_close);
}

/* Runs at lua_close: it is the first object created, so the last finalized,
 * after the workers and delegators that released their channels. */
static int runtime_gc(lua_State *L) {
  struct runtime *runtime = luaL_checkudata(L, 1, RUNTIME_MT);
  /* A polite close lets the broker read what was sent before it (the last
   * replies and acks): closing the socket on unread data would reset it. */
  runtime->running = 1;
  while (transport_closing(&runtime->loop)) uv_run(&runtime->loop, UV_RUN_ONCE);
  runtime->closed = 1; /* finalizers that run after this one must not touch the loop */
  keepalive_stop_lazily();
  transport_shutdown(&runtime->loop);
  while (runtime->fibers) {
    struct fiber *fiber = runtime->fibers;
    runtime->fibers = fiber->next;
    if (fiber->timer_open) {
      fiber->timer.data = fiber;
      uv_close((uv_handle_t *)&fiber->timer, free_after_close);
    } else {
      free(fiber);
    }
  }
  if (runtime->interrupt) close_owned((uv_handle_t *)runtime->interrupt);
  if (runtime->check) close_owned((uv_handle_t *)runtime->check);
  if (runtime->idle) close_owned((uv_handle_t *)runtime->idle);
  uv_run(&runtime->loop, UV_RUN_NOWAIT);
  uv_walk(&runtime->loop, close_any_handle, NULL);
  /* waits for handshakes still on a thread (bounded by connect_timeout) */
  uv_run(&runtime->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&runtime->loop) != 0)
    log_line(LOG_WARN, "event loop closed with handles still open");
  return 0;
}

static void run_jobs(struct runtime *runtime);
static void on_check(uv_check_t *check) { run_jobs(check->data); }
static void on_idle(uv_idle_t *idle) { run_jobs(idle->data); }
static void on_interrupt(uv_async_t *handle) { runtime_wake(handle->data); }

static void open_handles(lua_State *L, struct runtime *runtime) {
  runtime->check = malloc(sizeof *runtime->check);
  runtime->idle = malloc(sizeof *runtime->idle);
  runtime->interrupt = malloc(sizeof *runtime->interrupt);
  if (!runtime->check || !runtime->idle || !runtime->interrupt) {
    free(runtime->check), free(runtime->idle), free(runtime->interrupt);
    runtime->check = NULL, runtime->idle = NULL, runtime->interrupt = NULL;
    luaL_error(L, "out of memory");
  }
  uv_check_init(&runtime->loop, runtime->check);
  uv_idle_init(&runtime->loop, runtime->idle);
  uv_async_init(&runtime->loop, runtime->interrupt, on_interrupt);
  runtime->check->data = runtime->idle->data = runtime->interrupt->data = runtime;
  uv_check_start(runtime->check, on_check);
  /* neither keeps the loop alive on its own */
  /* the check and async handles never keep the loop alive; the idle handle
   * is active only while jobs wait, and then it must */
  uv_unref((uv_handle_t *)runtime->check);
  uv_unref((uv_handle_t *)runtime->interrupt);
}

void runtime_open(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  struct runtime *runtime = lua_newuserdatauv(L, sizeof *runtime, 0);
  memset(runtime, 0, sizeof *runtime);
  int status = uv_loop_init(&runtime->loop);
  if (status != 0) luaL_error(L, "cannot create the event loop: %s", uv_strerror(status));
  luaL_newmetatable(L, RUNTIME_MT);
  lua_pushcfunction(L, runtime_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
  open_handles(L, runtime);
  runtime->L = lua_newthread(L);
  lua_setfield(L, LUA_REGISTRYINDEX, LOOP_THREAD_KEY);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  keepalive_install(runtime, lua_tothread(L, -1)); /* threads made later copy it */
  lua_pop(L, 1);
  keepalive_install(runtime, L);
  keepalive_install(runtime, runtime->L);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, FIBERS_KEY);
}

struct runtime *runtime_get(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
  struct runtime *runtime = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!runtime) luaL_error(L, "amqp_delegate is not initialised in this Lua state");
  return runtime;
}

/* ---- jobs ---- */

void job_init(struct job *job, void (*run)(struct job *job)) {
  job->run = run;
  job->previous = job->next = NULL;
  job->queued = 0;
}

void runtime_defer(struct runtime *runtime, struct job *job) {
  if (job->queued) return;
  job->queued = 1;
  job->next = NULL;
  job->previous = runtime->jobs_last;
  if (runtime->jobs_last) runtime->jobs_last->next = job;
  else runtime->jobs_first = job;
  runtime->jobs_last = job;
  /* an active idle handle makes the next poll return at once */
  if (runtime->idle && !uv_is_active((uv_handle_t *)runtime->idle))
    uv_idle_start(runtime->idle, on_idle);
  uv_stop(&runtime->loop); /* a plain wait looks at its flag again */
}

void runtime_cancel_job(struct runtime *runtime, struct job *job) {
  if (!job->queued) return;
  if (job->previous) job->previous->next = job->next;
  else runtime->jobs_first = job->next;
  if (job->next) job->next->previous = job->previous;
  else runtime->jobs_last = job->previous;
  job->previous = job->next = NULL;
  job->queued = 0;
}

/* The one place: jobs queued meanwhile run in the same pass, in order. */
/* The replies and requests of the jobs of one turn leave together, once
 * the last has run (a task that runs long lets them go from the keepalive
 * hook). */
static void run_jobs(struct runtime *runtime) {
  transport_hold_writes();
  while (runtime->jobs_first) {
    struct job *job = runtime->jobs_first;
    runtime_cancel_job(runtime, job);
    job->run(job);
  }
  transport_release_writes();
  if (runtime->idle) uv_idle_stop(runtime->idle);
}

/* ---- waiting ---- */

struct fiber *runtime_wait_place(lua_State *L, struct runtime *runtime, const char *what) {
  if (runtime->closed)
    error_object_raisef(L, ERR_STOPPED, "%s: the Lua state is closing (a finalizer)", what);
  /* a REPL's Ctrl-C (or a shell line) may have cleared the thread's hooks */
  if (!lua_gethook(L)) keepalive_install(runtime, L);
  struct fiber *fiber = fiber_current(L);
  if (fiber) {
    if (lua_isyieldable(L)) return fiber;
    error_object_raisef(L, ERR_CANNOT_WAIT,
                        "%s: cannot wait here: a C function is in the way (a string.gsub or "
                        "table.sort callback, a metamethod, a require'd file's top level, "
                        "pcall from C); use :send() there and :wait() outside it", what);
  }
  if (!runtime->running) return NULL;
  if (runtime->resuming)
    error_object_raisef(L, ERR_CANNOT_WAIT,
                        "%s: cannot wait inside a coroutine that a task or hook made "
                        "(coroutine.wrap/resume): wait in the task itself, or use :send() "
                        "there and :wait() in the task", what);
  return (struct fiber *)(intptr_t)error_object_raisef(
      L, ERR_CANNOT_WAIT,
      "%s: cannot wait inside the event loop (a finalizer or callback); wait from a task or "
      "from plain Lua code", what);
}

void runtime_wake(struct runtime *runtime) { uv_stop(&runtime->loop); }

/* Ctrl-C must end a wait that blocks in epoll; Lua's own handler (lua.c)
 * only acts when Lua code runs again. During a plain wait our handler
 * replaces it (one sigaction to install, one to restore: this is on the path
 * of every call) and wakes the loop with an async handle, which is safe to
 * send from a signal handler. */
static struct runtime *volatile waiting_runtime;

static void on_sigint(int signal_number) {
  (void)signal_number;
  struct runtime *runtime = waiting_runtime;
  if (!runtime) return;
  runtime->interrupted = 1;
  uv_async_send(runtime->interrupt);
}

static int catch_interrupts(struct runtime *runtime, struct sigaction *previous) {
  struct sigaction ours;
  memset(&ours, 0, sizeof ours);
  ours.sa_handler = on_sigint;
  sigemptyset(&ours.sa_mask);
  runtime->interrupted = 0;
  waiting_runtime = runtime;
  if (sigaction(SIGINT, &ours, previous) != 0) return 0;
  if (previous->sa_handler == SIG_IGN) { /* nohup and friends: leave it ignored */
    sigaction(SIGINT, previous, NULL);
    return 0;
  }
  return 1;
}

static void release_interrupts(const struct sigaction *previous) {
  sigaction(SIGINT, previous, NULL);
  waiting_runtime = NULL;
}

static int has_work(struct runtime *runtime) {
  return runtime->jobs_first != NULL;
}

int runtime_wait(struct runtime *runtime, const int *done) {
  if (*done) return WAIT_DONE;
  if (runtime->closed) return WAIT_NOTHING_LEFT;
  struct sigaction previous;
  int catching = catch_interrupts(runtime, &previous);
  runtime->running = 1;
  int alive = 1;
  while (!*done && (alive || has_work(runtime)) && !runtime->interrupted)
    alive = uv_run(&runtime->loop, UV_RUN_ONCE);
  /* what was queued with the end of the wait (hooks of a loss that ended a
   * call) has run when the wait returns */
  if (*done) run_jobs(runtime);
  runtime->running = 0;
  if (catching) release_interrupts(&previous);
  if (*done) return WAIT_DONE;
  if (runtime->interrupted) {
    runtime->interrupted = 0;
    return WAIT_INTERRUPTED;
  }
  return WAIT_NOTHING_LEFT;
}

void runtime_run_until(struct runtime *runtime, const int *done) {
  if (runtime->running || runtime->closed) return;
  runtime->running = 1;
  int alive = 1;
  while (!*done && (alive || has_work(runtime))) alive = uv_run(&runtime->loop, UV_RUN_ONCE);
  runtime->running = 0;
}

int runtime_wait_error(lua_State *L, int result, const char *what) {
  if (result == WAIT_INTERRUPTED)
    return error_object_raisef(L, ERR_INTERRUPTED, "%s: interrupted", what);
  return error_object_raisef(L, ERR_CONNECTION_LOST,
                             "%s: nothing is left that could end this wait", what);
}

int runtime_protected(struct runtime *runtime, lua_CFunction fn, void *arg, const char *what) {
  lua_State *L = runtime->L;
  int base = lua_gettop(L);
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, arg);
  keepalive_push(L); /* a metamethod or finalizer it runs may compute long */
  int status = lua_pcall(L, 1, 0, 0);
  keepalive_pop();
  if (status != LUA_OK) /* read raw: a metamethod here would raise unprotected */
    log_line(LOG_ERROR, "%s: %s", what,
             lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "an error (not a string)");
  lua_settop(L, base);
  return status == LUA_OK ? 0 : -1;
}

/* ---- fibers ---- */

/* Pushes the thread itself (the key of its FIBERS entry) on L. */
static void push_thread(lua_State *L, lua_State *thread) {
  lua_pushthread(thread);
  lua_xmove(thread, L, 1);
}

/* A thread for a new fiber: a spare one (reset, still anchored in FIBERS)
 * when there is one, since every request runs in a fiber; else a new one,
 * anchored before the memory that will name it exists. */
static lua_State *take_thread(struct runtime *runtime, lua_State *L) {
  if (runtime->spare_count > 0) return runtime->spare_threads[--runtime->spare_count];
  lua_State *thread = lua_newthread(L);
  lua_pushboolean(L, 0);
  lua_rawset(L, -3);
  keepalive_install(runtime, thread);
  return thread;
}

static void wake_job(struct job *job);

struct fiber *fiber_create(struct runtime *runtime, fiber_finish_fn finish,
                           size_t context_size) {
  lua_State *L = runtime->L;
  lua_getfield(L, LUA_REGISTRYINDEX, FIBERS_KEY);
  lua_State *thread = take_thread(runtime, L);
  struct fiber *fiber = calloc(1, sizeof *fiber + context_size);
  if (!fiber) {
    runtime->spare_threads[runtime->spare_count++] = thread; /* it was spare or new */
    luaL_error(L, "out of memory");
  }
  push_thread(L, thread);
  lua_pushlightuserdata(L, fiber);
  lua_rawset(L, -3); /* the key exists: no allocation, cannot raise */
  lua_pop(L, 1);
  fiber->runtime = runtime;
  fiber->thread = thread;
  fiber->finish = finish;
  job_init(&fiber->wake, wake_job);
  fiber->next = runtime->fibers;
  if (runtime->fibers) runtime->fibers->previous = fiber;
  runtime->fibers = fiber;
  return fiber;
}

static void fiber_free(struct fiber *fiber) {
  struct runtime *runtime = fiber->runtime;
  lua_State *L = runtime->L;
  if (fiber->cancel) { /* ended while waiting: the wait lets go of it */
    fiber_cancel_fn cancel = fiber->cancel;
    fiber->cancel = NULL;
    cancel(fiber, fiber->wait_data);
  }
  runtime_cancel_job(runtime, &fiber->wake);
  /* Closes pending to-be-closed variables and leaves the thread fresh. */
  int reusable = keepalive_resetthread(fiber->thread) == LUA_OK &&
                 runtime->spare_count < RUNTIME_SPARE_THREADS;
  lua_getfield(L, LUA_REGISTRYINDEX, FIBERS_KEY);
  push_thread(L, fiber->thread);
  if (reusable) lua_pushboolean(L, 0); /* stays anchored, no fiber */
  else lua_pushnil(L);
  lua_rawset(L, -3); /* the key exists: no allocation, cannot raise */
  lua_pop(L, 1);
  if (reusable) runtime->spare_threads[runtime->spare_count++] = fiber->thread;
  if (fiber->previous) fiber->previous->next = fiber->next;
  else runtime->fibers = fiber->next;
  if (fiber->next) fiber->next->previous = fiber->previous;
  if (fiber->timer_open) {
    fiber->timer.data = fiber;
    uv_close((uv_handle_t *)&fiber->timer, free_after_close);
  } else {
    free(fiber);
  }
}

void fiber_resume(struct fiber *fiber, int nargs) {
  int nresults = 0;
  struct runtime *runtime = fiber->runtime;
  fiber->waiting = 0;
  fiber->cancel = NULL;
  if (!runtime->resuming) keepalive_enter(runtime, fiber);
  struct fiber *outer = runtime->running_fiber;
  runtime->running_fiber = fiber;
  runtime->resuming++;
  keepalive_push(fiber->thread);
  int status = lua_resume(fiber->thread, runtime->L, nargs, &nresults);
  keepalive_pop();
  runtime->resuming--;
  runtime->running_fiber = outer;
  if (!runtime->resuming) keepalive_leave(runtime);
  if (status == LUA_YIELD) {
    if (fiber->waiting) return;
    /* A bare coroutine.yield in a task: nothing would ever resume it. */
    lua_settop(fiber->thread, 0);
    lua_pushliteral(fiber->thread,
                    "task yielded outside amqp_delegate (coroutine.yield in a task "
                    "has nothing to resume it)");
    status = LUA_ERRRUN;
  }
  fiber->finish(fiber, status);
  fiber_free(fiber);
}

static void wake_job(struct job *job) {
  struct fiber *fiber = (struct fiber *)((char *)job - offsetof(struct fiber, wake));
  fiber_resume(fiber, 0);
}

void fiber_wake(struct fiber *fiber) {
  fiber->cancel = NULL;
  runtime_defer(fiber->runtime, &fiber->wake);
}

struct fiber *fiber_current(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, FIBERS_KEY);
  lua_pushthread(L);
  lua_rawget(L, -2);
  struct fiber *fiber = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return fiber;
}

int fiber_wait(lua_State *L, struct fiber *fiber, fiber_cancel_fn cancel, void *wait_data,
               lua_KContext context, lua_KFunction k) {
  fiber->waiting = 1;
  fiber->cancel = cancel;
  fiber->wait_data = wait_data;
  return lua_yieldk(L, 0, context, k);
}

/* ---- timers owned by userdata ---- */

uv_timer_t *runtime_timer_new(struct runtime *runtime, void *data) {
  uv_timer_t *timer = malloc(sizeof *timer);
  if (!timer) return NULL;
  uv_timer_init(&runtime->loop, timer);
  timer->data = data;
  return timer;
}

static void timer_closed(uv_handle_t *handle) { free(handle); }

void runtime_timer_free(uv_timer_t *timer) {
  if (timer) uv_close((uv_handle_t *)timer, timer_closed);
}

uint64_t runtime_milliseconds(double seconds) {
  return seconds > 0 ? (uint64_t)(seconds * 1000.0 + 0.5) : 0;
}

/* ---- sleep ---- */

static void fiber_timer_fired(uv_timer_t *timer) { fiber_wake(timer->data); }

static void cancel_sleep(struct fiber *fiber, void *unused) {
  (void)unused;
  if (fiber->timer_open) uv_timer_stop(&fiber->timer);
}

static int sleep_continue(lua_State *L, int status, lua_KContext context) {
  (void)L, (void)status, (void)context;
  return 0;
}

struct plain_sleep {
  uv_timer_t timer;
  int done;
};

static void plain_timer_fired(uv_timer_t *timer) {
  struct plain_sleep *sleep = timer->data;
  sleep->done = 1;
  uv_stop(timer->loop);
}

static void plain_sleep_closed(uv_handle_t *handle) { free(handle->data); }

int runtime_sleep(lua_State *L, double seconds) {
  struct runtime *runtime = runtime_get(L);
  struct fiber *fiber = runtime_wait_place(L, runtime, "sleep");
  uint64_t milliseconds = runtime_milliseconds(seconds);
  uv_update_time(&runtime->loop); /* the loop may have been idle: its clock is stale */
  if (fiber) {
    if (!fiber->timer_open) {
      uv_timer_init(&runtime->loop, &fiber->timer);
      fiber->timer_open = 1;
    }
    fiber->timer.data = fiber;
    uv_timer_start(&fiber->timer, fiber_timer_fired, milliseconds, 0);
    return fiber_wait(L, fiber, cancel_sleep, NULL, 0, sleep_continue);
  }
  struct plain_sleep *sleep = malloc(sizeof *sleep);
  if (!sleep) return luaL_error(L, "out of memory");
  uv_timer_init(&runtime->loop, &sleep->timer);
  sleep->timer.data = sleep;
  sleep->done = 0;
  uv_timer_start(&sleep->timer, plain_timer_fired, milliseconds, 0);
  int result = runtime_wait(runtime, &sleep->done);
  uv_close((uv_handle_t *)&sleep->timer, plain_sleep_closed); /* before raising */
  if (result != WAIT_DONE) return runtime_wait_error(L, result, "sleep");
  return 0;
}

/* ---- serve ---- */

void runtime_add_service(struct runtime *runtime, struct service *service) {
  if (service->listed) return;
  service->listed = 1;
  service->previous = NULL;
  service->next = runtime->services;
  if (runtime->services) runtime->services->previous = service;
  runtime->services = service;
}

void runtime_remove_service(struct runtime *runtime, struct service *service) {
  if (!service->listed) return;
  service->listed = 0;
  if (service->previous) service->previous->next = service->next;
  else runtime->services = service->next;
  if (service->next) service->next->previous = service->previous;
  service->previous = service->next = NULL;
  runtime_wake(runtime);
}

/* Raw handlers, not libuv's: a task that holds the loop (CPU-bound) must not
 * keep a second signal from ending the process. */
static volatile sig_atomic_t serve_signal, serve_signals_seen;
static uv_async_t *volatile serve_wakeup;

static void on_stop_signal(int signal_number) {
  if (++serve_signals_seen > 1) { /* only async-signal-safe calls here */
    static const char interrupt[] = "amqp-delegate: second Interrupt: exiting at once\n";
    static const char terminated[] = "amqp-delegate: second Terminated: exiting at once\n";
    ssize_t ignored = signal_number == SIGINT
                          ? write(STDERR_FILENO, interrupt, sizeof interrupt - 1)
                          : write(STDERR_FILENO, terminated, sizeof terminated - 1);
    (void)ignored;
    _exit(128 + signal_number);
  }
  serve_signal = signal_number;
  if (serve_wakeup) uv_async_send(serve_wakeup);
}

static int services_running(struct runtime *runtime) { return runtime->services != NULL; }

int runtime_serve(struct runtime *runtime, lua_State *L) {
  if (runtime->running)
    error_object_raisef(L, ERR_CANNOT_WAIT, "serve() cannot run inside the event loop");
  struct sigaction ours, previous[2];
  memset(&ours, 0, sizeof ours);
  ours.sa_handler = on_stop_signal;
  sigemptyset(&ours.sa_mask);
  serve_signal = 0;
  serve_signals_seen = 0;
  serve_wakeup = runtime->interrupt;
  sigaction(SIGINT, &ours, &previous[0]);
  sigaction(SIGTERM, &ours, &previous[1]);
  runtime->service_failures = 0;
  runtime->running = 1;
  while (services_running(runtime) && !serve_signal) uv_run(&runtime->loop, UV_RUN_ONCE);
  runtime->running = 0;
  int signal_number = serve_signal;
  if (signal_number)
    log_line(LOG_INFO, "%s: stopping (finishing the tasks in hand; a second signal exits at "
             "once)", strsignal(signal_number));
  /* Every service begins its stop at once; then we wait for all of them. */
  for (struct service *service = runtime->services; service;) {
    struct service *next = service->next;
    service->stop(service);
    service = next;
  }
  runtime->running = 1;
  while (services_running(runtime)) {
    if (!uv_run(&runtime->loop, UV_RUN_ONCE) && !has_work(runtime)) break;
  }
  /* the on_close hooks of the stopped services run before serve() returns */
  while (has_work(runtime)) uv_run(&runtime->loop, UV_RUN_ONCE);
  runtime->running = 0;
  sigaction(SIGINT, &previous[0], NULL);
  sigaction(SIGTERM, &previous[1], NULL);
  serve_wakeup = NULL;
  if (signal_number) return signal_number;
  return runtime->service_failures > 0 ? -1 : 0;
}

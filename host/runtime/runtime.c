/* The runtime of one Lua state: its libuv loop, the fibers the loop resumes,
 * and serve(). The loop enters Lua only through lua_resume (fibers) and
 * lua_pcall (runtime_protected), never unprotected. */
#include "runtime.h"

#include <signal.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#include <lauxlib.h>

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

/* Runs at lua_close: it is the first object created, so the last finalized,
 * after the workers and delegators that closed their handles. */
static int runtime_gc(lua_State *L) {
  struct runtime *runtime = luaL_checkudata(L, 1, RUNTIME_MT);
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
  if (runtime->interrupt) {
    runtime->interrupt->data = runtime->interrupt;
    uv_close((uv_handle_t *)runtime->interrupt, free_after_close);
  }
  uv_run(&runtime->loop, UV_RUN_NOWAIT);
  uv_walk(&runtime->loop, close_any_handle, NULL);
  uv_run(&runtime->loop, UV_RUN_NOWAIT);
  if (uv_loop_close(&runtime->loop) != 0)
    log_line(LOG_WARN, "event loop closed with handles still open");
  return 0;
}

void runtime_open(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  struct runtime *runtime = lua_newuserdatauv(L, sizeof *runtime, 0);
  int status = uv_loop_init(&runtime->loop);
  if (status != 0) luaL_error(L, "cannot create the event loop: %s", uv_strerror(status));
  runtime->running = 0;
  runtime->signals_seen = 0;
  runtime->fibers = NULL;
  runtime->services = NULL;
  runtime->interrupted = 0;
  runtime->interrupt = NULL;
  runtime->spare_count = 0;
  luaL_newmetatable(L, RUNTIME_MT);
  lua_pushcfunction(L, runtime_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
  runtime->L = lua_newthread(L);
  lua_setfield(L, LUA_REGISTRYINDEX, LOOP_THREAD_KEY);
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

/* ---- waiting ---- */

int runtime_run_until(struct runtime *runtime, const int *done) {
  if (*done) return 0;
  if (runtime->running) return -1;
  runtime->running = 1;
  int alive = 1;
  while (!*done && alive) alive = uv_run(&runtime->loop, UV_RUN_ONCE);
  runtime->running = 0;
  return *done ? 0 : -1;
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

static void on_interrupt(uv_async_t *handle) { runtime_wake(handle->data); }

static int catch_interrupts(struct runtime *runtime, struct sigaction *previous) {
  if (!runtime->interrupt) {
    runtime->interrupt = malloc(sizeof *runtime->interrupt);
    if (!runtime->interrupt) return 0;
    uv_async_init(&runtime->loop, runtime->interrupt, on_interrupt);
    runtime->interrupt->data = runtime;
    uv_unref((uv_handle_t *)runtime->interrupt); /* never keeps the loop alive */
  }
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

int runtime_wait(struct runtime *runtime, const int *done) {
  if (*done) return WAIT_DONE;
  if (runtime->running) return WAIT_NESTED;
  struct sigaction previous;
  int catching = catch_interrupts(runtime, &previous);
  runtime->running = 1;
  int alive = 1;
  while (!*done && alive && !runtime->interrupted) alive = uv_run(&runtime->loop, UV_RUN_ONCE);
  runtime->running = 0;
  if (catching) release_interrupts(&previous);
  if (*done) return WAIT_DONE;
  if (runtime->interrupted) {
    runtime->interrupted = 0;
    return WAIT_INTERRUPTED;
  }
  return WAIT_NOTHING_LEFT;
}

int runtime_wait_error(lua_State *L, int result, const char *what) {
  switch (result) {
    case WAIT_INTERRUPTED:
      return error_object_raisef(L, ERR_INTERRUPTED, "%s: interrupted", what);
    case WAIT_NESTED:
      return error_object_raisef(L, ERR_BAD_ARGUMENT,
                                 "%s: cannot wait here, inside the event loop (a hook or "
                                 "callback); wait from a task or from plain Lua code", what);
    default:
      return error_object_raisef(L, ERR_CONNECTION_LOST,
                                 "%s: nothing is left that could end this wait", what);
  }
}

struct protected_call {
  lua_CFunction fn;
  void *arg;
};

int runtime_protected(struct runtime *runtime, lua_CFunction fn, void *arg, const char *what) {
  lua_State *L = runtime->L;
  int base = lua_gettop(L);
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, arg);
  int status = lua_pcall(L, 1, 0, 0);
  if (status != LUA_OK) {
    struct ad_error error;
    error_object_read(L, -1, ERR_BROKER_ERROR, &error);
    log_line(LOG_ERROR, "%s: %s: %s", what, error.code, error.message);
  }
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
  return thread;
}

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
  fiber->next = runtime->fibers;
  if (runtime->fibers) runtime->fibers->previous = fiber;
  runtime->fibers = fiber;
  return fiber;
}

static void fiber_free(struct fiber *fiber) {
  struct runtime *runtime = fiber->runtime;
  lua_State *L = runtime->L;
  /* Closes pending to-be-closed variables and leaves the thread fresh. */
  int reusable = lua_resetthread(fiber->thread) == LUA_OK &&
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
  fiber->waiting = 0;
  int status = lua_resume(fiber->thread, fiber->runtime->L, nargs, &nresults);
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

struct fiber *fiber_current(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, FIBERS_KEY);
  lua_pushthread(L);
  lua_rawget(L, -2);
  struct fiber *fiber = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return fiber;
}

int fiber_yield(lua_State *L, struct fiber *fiber, lua_KContext context, lua_KFunction k) {
  fiber->waiting = 1;
  return lua_yieldk(L, 0, context, k);
}

void fiber_push_traceback(struct fiber *fiber) {
  lua_State *L = fiber->runtime->L;
  const char *message = luaL_tolstring(fiber->thread, -1, NULL);
  luaL_traceback(L, fiber->thread, message, 0);
  lua_pop(fiber->thread, 1);
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

/* ---- sleep ---- */

static void fiber_timer_fired(uv_timer_t *timer) {
  struct fiber *fiber = timer->data;
  fiber_resume(fiber, 0);
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
  uint64_t milliseconds = seconds > 0 ? (uint64_t)(seconds * 1000.0 + 0.5) : 0;
  struct fiber *fiber = fiber_current(L);
  uv_update_time(&runtime->loop); /* the loop may have been idle: its clock is stale */
  if (fiber) {
    if (!fiber->timer_open) {
      uv_timer_init(&runtime->loop, &fiber->timer);
      fiber->timer_open = 1;
    }
    fiber->timer.data = fiber;
    uv_timer_start(&fiber->timer, fiber_timer_fired, milliseconds, 0);
    return fiber_yield(L, fiber, 0, sleep_continue);
  }
  if (runtime->running) return runtime_wait_error(L, WAIT_NESTED, "sleep");
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
  service->previous = NULL;
  service->next = runtime->services;
  if (runtime->services) runtime->services->previous = service;
  runtime->services = service;
}

void runtime_remove_service(struct runtime *runtime, struct service *service) {
  if (service->previous) service->previous->next = service->next;
  else if (runtime->services == service) runtime->services = service->next;
  else return; /* not listed */
  if (service->next) service->next->previous = service->previous;
  service->previous = service->next = NULL;
}

struct serve_state {
  struct runtime *runtime;
  int signal_number;
  int handles_open;
  uv_signal_t signals[2];
};

static void on_stop_signal(uv_signal_t *handle, int signal_number) {
  struct serve_state *state = handle->data;
  state->runtime->signals_seen++;
  if (state->runtime->signals_seen > 1) {
    log_line(LOG_WARN, "second %s: exiting at once", strsignal(signal_number));
    _exit(128 + signal_number);
  }
  log_line(LOG_INFO, "%s: stopping (finishing the tasks in hand; a second signal exits at once)",
           strsignal(signal_number));
  state->signal_number = signal_number;
  runtime_wake(state->runtime);
}

static void serve_closed(uv_handle_t *handle) {
  struct serve_state *state = handle->data;
  if (--state->handles_open == 0) free(state);
}

int runtime_serve(struct runtime *runtime, lua_State *L) {
  if (runtime->running)
    error_object_raisef(L, ERR_BAD_ARGUMENT, "serve() cannot run inside the event loop");
  struct serve_state *state = calloc(1, sizeof *state);
  if (!state) return luaL_error(L, "out of memory");
  state->runtime = runtime;
  const int signal_numbers[2] = {SIGINT, SIGTERM};
  for (int i = 0; i < 2; i++) {
    uv_signal_init(&runtime->loop, &state->signals[i]);
    state->signals[i].data = state;
    uv_signal_start(&state->signals[i], on_stop_signal, signal_numbers[i]);
  }
  runtime->signals_seen = 0;
  runtime->running = 1;
  while (runtime->services && !state->signal_number) uv_run(&runtime->loop, UV_RUN_ONCE);
  runtime->running = 0;
  /* Stop every service; each stop waits for its tasks in hand (while the
   * signal handlers stay installed, so a second signal still exits). */
  while (runtime->services) {
    struct service *service = runtime->services;
    runtime_remove_service(runtime, service);
    service->stop(service, L);
  }
  int signal_number = state->signal_number;
  state->handles_open = 2;
  for (int i = 0; i < 2; i++) uv_close((uv_handle_t *)&state->signals[i], serve_closed);
  uv_run(&runtime->loop, UV_RUN_NOWAIT);
  return signal_number;
}

/* The Lua face of amqp_delegate: checks arguments, calls the core in host/,
 * pushes results. Workers, delegators and calls are userdata with
 * metatables; errors are objects with `code` and `message`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "delegator.h"
#include "error_object.h"
#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"
#include "pretty.h"
#include "runtime.h"
#include "call_context.h"
#include "header_list.h"
#include "url.h"
#include "version.h"
#include "worker.h"

#define WORKER_MT "amqp_delegate.worker"
#define DELEGATOR_MT "amqp_delegate.delegator"

#define DEFAULT_CONNECT_TIMEOUT 10.0
/* Workers and delegators alike: a frozen broker is noticed within two
 * intervals, and both share one connection in a host. */
#define DEFAULT_HEARTBEAT 30
#define DEFAULT_MAX_BODY (16u * 1024u * 1024u)
#define DEFAULT_CALL_TIMEOUT 30.0
#define DEFAULT_RECONNECT_MAX 5.0
/* below RabbitMQ 4's own limit for quorum queues (20), so callers hear why */
#define DEFAULT_DELIVERY_LIMIT 10
#define MAX_RETRY 100
/* RabbitMQ refuses a per-message expiration over 2^32-1 ms (49.7 days). */
#define MAX_TIMEOUT 4294967.0
#define MAX_SECONDS (86400.0 * 365)

/* ---- argument checking ---- */

static int bad_argument(lua_State *L, const char *format, const char *detail) {
  return error_object_raisef(L, ERR_BAD_ARGUMENT, format, detail);
}

static void check_known_options(lua_State *L, int options, const char *const known[],
                                const char *what) {
  lua_pushnil(L);
  while (lua_next(L, options)) {
    lua_pop(L, 1);
    int found = 0;
    if (lua_type(L, -1) == LUA_TSTRING)
      for (int i = 0; known[i] && !found; i++) found = strcmp(known[i], lua_tostring(L, -1)) == 0;
    if (!found) {
      char message[200];
      snprintf(message, sizeof message, "unknown option '%s' for %s",
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1),
               what);
      bad_argument(L, "%s", message);
    }
  }
}

static void check_options_table(lua_State *L, const char *what) {
  if (lua_type(L, 1) != LUA_TTABLE) {
    char message[160];
    snprintf(message, sizeof message, "%s expects a table of options, got %s", what,
             luaL_typename(L, 1));
    bad_argument(L, "%s", message);
  }
}

static lua_Integer integer_option(lua_State *L, int options, const char *key,
                                  lua_Integer fallback, lua_Integer low, lua_Integer high) {
  lua_getfield(L, options, key);
  lua_Integer value = fallback;
  if (!lua_isnil(L, -1)) {
    int is_integer = 0;
    value = lua_tointegerx(L, -1, &is_integer);
    if (!is_integer || value < low || value > high) {
      char message[200];
      snprintf(message, sizeof message, "option '%s' must be an integer from %lld to %lld", key,
               (long long)low, (long long)high);
      bad_argument(L, "%s", message);
    }
  }
  lua_pop(L, 1);
  return value;
}

/* Seconds from low to high: NaN, infinities and the rest are refused here,
 * so no conversion downstream can overflow. */
static double checked_seconds(lua_State *L, int index, const char *what, double low,
                              double high, const char *hint) {
  int is_number = 0;
  double value = lua_tonumberx(L, index, &is_number);
  if (!is_number || !(value >= low && value <= high)) {
    char message[240];
    snprintf(message, sizeof message, "%s must be a number of seconds from %.10g to %.10g%s", what,
             low, high, hint);
    bad_argument(L, "%s", message);
  }
  return value;
}

static double number_option(lua_State *L, int options, const char *key, double fallback,
                            double low, double high, const char *hint) {
  lua_getfield(L, options, key);
  double value = fallback;
  if (!lua_isnil(L, -1)) {
    char what[80];
    snprintf(what, sizeof what, "option '%s'", key);
    value = checked_seconds(L, -1, what, low, high, hint);
  }
  lua_pop(L, 1);
  return value;
}

#define FOREVER_HINT " (0 waits as long as it takes)"

/* Stores options[key] (a function or nil) in user value `slot` of the
 * userdata at `self`. */
static void hook_option(lua_State *L, int options, int self, const char *key, int slot) {
  int type = lua_getfield(L, options, key);
  if (type != LUA_TNIL && type != LUA_TFUNCTION) {
    char message[160];
    snprintf(message, sizeof message, "option '%s' must be a function", key);
    bad_argument(L, "%s", message);
  }
  lua_setiuservalue(L, self, slot);
}

/* url = "amqp://a" or "amqp://a,amqp://b" or {"amqp://a", "amqp://b"}. */
static void url_option(lua_State *L, int options, struct url_list *brokers) {
  static const char wrong[] = "option 'url' must be a URL, a comma-separated list of URLs "
                              "or a table of URLs";
  int type = lua_getfield(L, options, "url");
  struct ad_error error;
  int status = 0;
  if (type == LUA_TNIL || type == LUA_TSTRING) {
    status = url_list_add(brokers, type == LUA_TSTRING ? lua_tostring(L, -1) : url_default(),
                          &error);
  } else if (type == LUA_TTABLE) {
    lua_Integer count = luaL_len(L, -1);
    if (count < 1) bad_argument(L, "%s", wrong);
    for (lua_Integer i = 1; i <= count && status == 0; i++) {
      if (lua_geti(L, -1, i) != LUA_TSTRING) bad_argument(L, "%s", wrong);
      status = url_list_add(brokers, lua_tostring(L, -1), &error);
      lua_pop(L, 1);
    }
  } else {
    bad_argument(L, "%s", wrong);
  }
  if (status != 0) error_object_raise(L, &error);
  lua_pop(L, 1);
}

static void path_option(lua_State *L, int options, const char *key, char *out, size_t size) {
  int type = lua_getfield(L, options, key);
  size_t length = 0;
  const char *path = type == LUA_TSTRING ? lua_tolstring(L, -1, &length) : NULL;
  if (type != LUA_TNIL && (!path || length == 0 || length >= size)) {
    char message[160];
    snprintf(message, sizeof message, "TLS option '%s' must be a file path", key);
    bad_argument(L, "%s", message);
  }
  snprintf(out, size, "%s", path ? path : "");
  lua_pop(L, 1);
}

static int boolean_option(lua_State *L, int options, const char *key, int fallback) {
  int type = lua_getfield(L, options, key);
  if (type != LUA_TNIL && type != LUA_TBOOLEAN) {
    char message[160];
    snprintf(message, sizeof message, "option '%s' must be a boolean", key);
    bad_argument(L, "%s", message);
  }
  int value = type == LUA_TNIL ? fallback : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return value;
}

/* tls = {ca_file =, cert_file =, key_file =, verify =, verify_hostname =}, for amqps:// URLs. */
static void tls_options(lua_State *L, int options, struct tls_options *out) {
  memset(out, 0, sizeof *out);
  out->verify_peer = out->verify_hostname = 1;
  int type = lua_getfield(L, options, "tls");
  if (type == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  if (type != LUA_TTABLE) bad_argument(L, "%s", "option 'tls' must be a table");
  int tls = lua_gettop(L);
  static const char *const known[] = {"ca_file", "cert_file", "key_file", "verify",
                                      "verify_hostname", NULL};
  check_known_options(L, tls, known, "tls");
  path_option(L, tls, "ca_file", out->ca_file, sizeof out->ca_file);
  path_option(L, tls, "cert_file", out->cert_file, sizeof out->cert_file);
  path_option(L, tls, "key_file", out->key_file, sizeof out->key_file);
  out->verify_peer = boolean_option(L, tls, "verify", 1);
  out->verify_hostname = out->verify_peer && boolean_option(L, tls, "verify_hostname", 1);
  lua_pop(L, 1);
}

/* $AMQP_DELEGATE_WAIT_FOR_BROKER (what `run` sets) is the default of
 * wait_for_broker; plain Lua fails at once. */
static double default_patience(void) {
  const char *setting = getenv("AMQP_DELEGATE_WAIT_FOR_BROKER");
  char *end;
  double seconds = setting ? strtod(setting, &end) : 0;
  return setting && *end == '\0' && seconds >= 0 && seconds <= MAX_SECONDS ? seconds : 0;
}

/* What every worker and delegator takes: url, tls, heartbeat,
 * connect_timeout, max_body, reconnect_max, on_error, on_close. */
static void lifecycle_options(lua_State *L, int options, int self, struct lifecycle *out) {
  url_option(L, options, &out->brokers);
  tls_options(L, options, &out->options.tls);
  out->options.heartbeat_seconds =
      (int)integer_option(L, options, "heartbeat", DEFAULT_HEARTBEAT, 0, 3600);
  out->options.connect_timeout = number_option(L, options, "connect_timeout",
                                               DEFAULT_CONNECT_TIMEOUT, 0.001, 3600, "");
  out->options.max_body = (size_t)integer_option(L, options, "max_body", DEFAULT_MAX_BODY, 1,
                                                 (lua_Integer)1 << 31);
  out->reconnect_max = number_option(L, options, "reconnect_max", DEFAULT_RECONNECT_MAX, 0,
                                     3600, " (0: no reconnection)");
  out->start_patience = number_option(L, options, "wait_for_broker", default_patience(), 0,
                                      MAX_SECONDS, " (0: fail after one try of each broker)");
  hook_option(L, options, self, "on_error", out->on_error_slot);
  hook_option(L, options, self, "on_close", out->on_close_slot);
}

/* ---- workers ---- */

static const char *const worker_options[] = {
    "name", "task", "url", "on_error", "on_close", "concurrency", "heartbeat",
    "connect_timeout", "max_body", "max_depth", "reconnect_max", "tls", "queue",
    "delivery_limit", "confirms", "ack", "result_cache", "wait_for_broker", NULL};

/* ack = "late" (the default: once the reply went out) or "early" (on receipt). */
static int ack_early_option(lua_State *L, int options) {
  int type = lua_getfield(L, options, "ack");
  const char *value = type == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  int early = value && strcmp(value, "early") == 0;
  if (type != LUA_TNIL && !early && !(value && strcmp(value, "late") == 0))
    bad_argument(L, "%s", "option 'ack' is \"late\" (the default) or \"early\"");
  lua_pop(L, 1);
  return early;
}

static const char *queue_type(lua_State *L, const char *type) {
  static const char *const types[] = {"classic", "quorum", NULL};
  for (int i = 0; types[i]; i++)
    if (strcmp(type, types[i]) == 0) return types[i];
  bad_argument(L, "%s", "a queue's type is \"classic\" or \"quorum\"");
  return NULL;
}

/* queue = "quorum" | "classic" | {type = ..., durable = ...}; without it,
 * $AMQP_DELEGATE_QUEUE_TYPE (run --queue-type), else the Node protocol's.
 * Leaves values on the stack: the caller resets it. */
static void queue_option(lua_State *L, int options, struct worker_queue *queue) {
  memset(queue, 0, sizeof *queue);
  int type = lua_getfield(L, options, "queue");
  if (type == LUA_TNIL) {
    const char *from_environment = getenv("AMQP_DELEGATE_QUEUE_TYPE");
    if (from_environment && *from_environment) queue->type = queue_type(L, from_environment);
  } else if (type == LUA_TSTRING) {
    queue->type = queue_type(L, lua_tostring(L, -1));
  } else if (type == LUA_TTABLE) {
    int table = lua_gettop(L);
    static const char *const known[] = {"type", "durable", NULL};
    check_known_options(L, table, known, "queue");
    if (lua_getfield(L, table, "type") == LUA_TSTRING)
      queue->type = queue_type(L, lua_tostring(L, -1));
    else if (!lua_isnil(L, -1))
      bad_argument(L, "%s", "a queue's type is \"classic\" or \"quorum\"");
    lua_pop(L, 1);
    queue->durable = boolean_option(L, table, "durable", 0);
    if (queue->type && strcmp(queue->type, "quorum") == 0 && lua_getfield(L, table, "durable") &&
        lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))
      bad_argument(L, "%s", "a quorum queue is always durable (durable = false)");
  } else {
    bad_argument(L, "%s", "option 'queue' must be \"classic\", \"quorum\" or a table");
  }
}

static void worker_name(lua_State *L, struct worker *worker) {
  lua_getfield(L, 1, "name");
  size_t length = 0;
  const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &length) : NULL;
  if (!name || length == 0)
    error_object_raisef(L, ERR_MISSING_NAME, "a worker needs a name (a non-empty string)");
  if (length >= sizeof worker->name || strlen(name) != length)
    bad_argument(L, "%s", "a worker's name is at most 255 bytes, without NUL bytes");
  memcpy(worker->name, name, length + 1);
  lua_pop(L, 1);
}

static int new_worker(lua_State *L) {
  check_options_table(L, "worker");
  check_known_options(L, 1, worker_options, "a worker");
  struct worker *worker = lua_newuserdatauv(L, sizeof *worker, WORKER_SLOTS);
  worker_init(worker, runtime_get(L));
  luaL_setmetatable(L, WORKER_MT);
  int self = lua_gettop(L);
  worker_name(L, worker);
  if (lua_getfield(L, 1, "task") != LUA_TFUNCTION)
    error_object_raisef(L, ERR_MISSING_TASK, "worker '%s' needs a task (a function)",
                        worker->name);
  lua_setiuservalue(L, self, WORKER_TASK_SLOT);
  snprintf(worker->lifecycle.label, sizeof worker->lifecycle.label, "worker '%s'",
           worker->name);
  lifecycle_options(L, 1, self, &worker->lifecycle);
  worker->options.prefetch = (int)integer_option(L, 1, "concurrency", 1, 1, 65535);
  worker->options.max_depth =
      (int)integer_option(L, 1, "max_depth", JSON_DEFAULT_MAX_DEPTH, 1, 10000);
  int top = lua_gettop(L);
  queue_option(L, 1, &worker->options.queue);
  lua_settop(L, top);
  worker->options.delivery_limit =
      (int)integer_option(L, 1, "delivery_limit", DEFAULT_DELIVERY_LIMIT, 0, 1000000);
  worker->options.confirms = boolean_option(L, 1, "confirms", 1);
  worker->options.ack_early = ack_early_option(L, 1);
  worker->results.max_entries =
      (size_t)integer_option(L, 1, "result_cache", WORKER_RESULT_CACHE, 0, 1000000);
  return 1;
}

static struct worker *check_worker(lua_State *L) {
  return luaL_checkudata(L, 1, WORKER_MT);
}

static int worker_start_method(lua_State *L) {
  lua_settop(L, 1);
  return worker_start(check_worker(L), L, 1);
}

static int worker_stop_method(lua_State *L) {
  worker_stop(check_worker(L), L);
  return 0;
}

static int worker_close_method(lua_State *L) {
  struct worker *worker = check_worker(L);
  if (worker->lifecycle.state != LIFECYCLE_STOPPED && worker->lifecycle.state != LIFECYCLE_STOPPING)
    worker_stop(worker, L);
  return 0;
}

static int worker_gc(lua_State *L) {
  worker_release(check_worker(L));
  return 0;
}

static int worker_tostring(lua_State *L) {
  struct worker *worker = check_worker(L);
  lua_pushfstring(L, "amqp_delegate.worker '%s' (%s, %s)", worker->name,
                  lifecycle_state_name(&worker->lifecycle, "running"),
                  lifecycle_url(&worker->lifecycle)->redacted);
  return 1;
}

static int worker_stats_method(lua_State *L) {
  struct worker *worker = check_worker(L);
  static const char *const names[] = {"served", "failed", "refused_over_limit", "expired",
                                      "answered_from_cache"};
  const unsigned long values[] = {worker->served, worker->failed, worker->refused_over_limit,
                                  worker->expired, worker->answered_from_cache};
  lua_createtable(L, 0, 6);
  for (int i = 0; i < 5; i++) {
    lua_pushinteger(L, (lua_Integer)values[i]);
    lua_setfield(L, -2, names[i]);
  }
  lua_pushinteger(L, worker->in_flight);
  lua_setfield(L, -2, "in_flight");
  lua_pushinteger(L, (lua_Integer)worker->redelivered);
  lua_setfield(L, -2, "redelivered");
  lua_pushinteger(L, (lua_Integer)worker->lifecycle.reconnections);
  lua_setfield(L, -2, "reconnections");
  return 1;
}

static const luaL_Reg worker_methods[] = {{"start", worker_start_method},
                                          {"stop", worker_stop_method},
                                          {"stats", worker_stats_method},
                                          {NULL, NULL}};

static const luaL_Reg worker_metamethods[] = {{"__gc", worker_gc},
                                              {"__close", worker_close_method},
                                              {"__tostring", worker_tostring},
                                              {NULL, NULL}};

/* ---- delegators ---- */

static const char *const delegator_options[] = {
    "url", "on_error", "on_close", "heartbeat", "connect_timeout", "max_body", "max_depth",
    "timeout", "reconnect_max", "tls", "retry", "confirms", "wait_for_broker", "check_workers", NULL};

static int new_delegator(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  check_options_table(L, "delegator");
  check_known_options(L, 1, delegator_options, "a delegator");
  struct delegator *delegator = lua_newuserdatauv(L, sizeof *delegator, DELEGATOR_SLOTS);
  delegator_init(delegator, runtime_get(L));
  luaL_setmetatable(L, DELEGATOR_MT);
  int self = lua_gettop(L);
  lifecycle_options(L, 1, self, &delegator->lifecycle);
  delegator->options.max_depth =
      (int)integer_option(L, 1, "max_depth", JSON_DEFAULT_MAX_DEPTH, 1, 10000);
  delegator->options.timeout =
      number_option(L, 1, "timeout", DEFAULT_CALL_TIMEOUT, 0, MAX_TIMEOUT, FOREVER_HINT);
  delegator->options.retry = (int)integer_option(L, 1, "retry", 0, 0, MAX_RETRY);
  delegator->options.confirms = boolean_option(L, 1, "confirms", 1);
  delegator->options.check_workers = boolean_option(L, 1, "check_workers", 1);
  return 1;
}

static struct delegator *check_delegator(lua_State *L) {
  return luaL_checkudata(L, 1, DELEGATOR_MT);
}

static int delegator_start_method(lua_State *L) {
  lua_settop(L, 1);
  return delegator_start(check_delegator(L), L, 1);
}

static int delegator_stop_method(lua_State *L) {
  delegator_stop(check_delegator(L), L);
  return 0;
}

static int delegator_close_method(lua_State *L) {
  struct delegator *delegator = check_delegator(L);
  if (delegator->lifecycle.state != LIFECYCLE_STOPPED) delegator_stop(delegator, L);
  return 0;
}

/* [options,] name, ...: reads the optional per-call options table and the
 * worker name; returns the index of the first argument of the call. */
/* headers = {name = text | integer | boolean}: written as a header list
 * (header_list.h) into a userdata that stays on the stack for the call (a
 * luaL_Buffer cannot grow while lua_next walks the table above it). */
static void headers_option(lua_State *L, int options, struct call_options *out) {
  static const char wrong[] = "a call's headers are {name = text, integer or boolean}, names "
                              "of 1 to 255 bytes, no NUL bytes";
  out->headers = NULL;
  out->headers_length = 0;
  if (lua_getfield(L, options, "headers") == LUA_TNIL) return;
  if (!lua_istable(L, -1)) bad_argument(L, "%s", wrong);
  int table = lua_gettop(L), count = 0;
  const size_t capacity = HEADER_LIST_MAX_BYTES / 2;
  char *list = lua_newuserdatauv(L, capacity, 0);
  size_t used = 0;
  lua_pushnil(L);
  while (lua_next(L, table)) {
    size_t key_length = 0, value_length = 0;
    const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &key_length) : NULL;
    char kind = lua_isinteger(L, -1)              ? HEADER_INTEGER
                : lua_type(L, -1) == LUA_TBOOLEAN ? HEADER_BOOLEAN
                : lua_type(L, -1) == LUA_TSTRING  ? HEADER_TEXT
                                                  : 0;
    const char *value = kind == HEADER_BOOLEAN ? (lua_toboolean(L, -1) ? "1" : "0")
                        : kind ? lua_tolstring(L, -1, &value_length) : NULL;
    if (kind == HEADER_BOOLEAN) value_length = 1;
    if (!key || !kind || key_length == 0 || key_length > HEADER_KEY_MAX ||
        strlen(key) != key_length || strlen(value) != value_length)
      bad_argument(L, "%s", wrong);
    if (strcmp(key, HEADER_DEADLINE) == 0)
      bad_argument(L, "%s", "the header " HEADER_DEADLINE " comes from the call's timeout");
    if (++count > HEADER_LIST_MAX_ENTRIES / 2 || used + key_length + value_length + 3 > capacity)
      bad_argument(L, "%s", "a call's headers are at most 32 and 4096 bytes");
    list[used++] = kind;
    memcpy(list + used, key, key_length + 1);
    used += key_length + 1;
    memcpy(list + used, value, value_length + 1);
    used += value_length + 1;
    lua_pop(L, 1);
  }
  out->headers = list;
  out->headers_length = used;
}

static int call_arguments(lua_State *L, struct call_options *options, const char **name) {
  int at = 2;
  options->timeout = -1;
  options->retry = -1;
  options->headers = NULL;
  options->headers_length = 0;
  if (lua_type(L, at) == LUA_TTABLE) {
    static const char *const known[] = {"timeout", "retry", "headers", NULL};
    check_known_options(L, at, known, "a call");
    options->timeout = number_option(L, at, "timeout", -1, 0, MAX_TIMEOUT, FOREVER_HINT);
    options->retry = (int)integer_option(L, at, "retry", -1, 0, MAX_RETRY);
    at++;
  }
  size_t length = 0;
  *name = lua_type(L, at) == LUA_TSTRING ? lua_tolstring(L, at, &length) : NULL;
  if (!*name || length == 0 || length >= SHORT_STRING_MAX || strlen(*name) != length)
    bad_argument(L, "%s", "expected a worker name (a non-empty string of at most 255 bytes, without NUL bytes), after an optional table of options");
  return at + 1;
}

static int delegator_send_method(lua_State *L) {
  struct delegator *delegator = check_delegator(L);
  struct call_options options;
  const char *name;
  int first = call_arguments(L, &options, &name);
  int last = lua_gettop(L);
  if (lua_type(L, 2) == LUA_TTABLE) headers_option(L, 2, &options); /* pushed above the arguments */
  delegator_send(delegator, L, 1, &options, name, first, last);
  return 1;
}

/* A call that could not be waited for is refused before it is sent. */
static int delegator_invoke_method(lua_State *L) {
  struct delegator *delegator = check_delegator(L);
  runtime_wait_place(L, delegator->runtime, "invoke");
  delegator_send_method(L);
  return call_wait(L, -1);
}

/* delegator:status(name): what the broker says of the worker's queue. */
static int delegator_status_method(lua_State *L) {
  struct delegator *delegator = check_delegator(L);
  size_t length = 0;
  const char *name = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &length) : NULL;
  if (!name || length == 0 || length >= SHORT_STRING_MAX || strlen(name) != length)
    bad_argument(L, "%s", "expected a worker name (a non-empty string of at most 255 bytes, without NUL bytes)");
  runtime_wait_place(L, delegator->runtime, "status");
  lua_settop(L, 2);
  delegator_status(delegator, L, 1, name);
  return call_wait(L, -1);
}

static int delegator_stats_method(lua_State *L) {
  struct delegator *delegator = check_delegator(L);
  const struct delegator_stats *stats = &delegator->stats;
  lua_createtable(L, 0, 13);
  static const char *const names[] = {"sent",     "replied",       "failed",
                                      "timed_out", "returned",     "unknown_replies",
                                      "retried",   "not_confirmed", "no_worker",
                                      "worker_checks"};
  const unsigned long values[] = {stats->sent,      stats->replied,      stats->failed,
                                  stats->timed_out, stats->returned,     stats->unknown_replies,
                                  stats->retried,   stats->not_confirmed, stats->no_worker,
                                  stats->worker_checks};
  for (int i = 0; i < 10; i++) {
    lua_pushinteger(L, (lua_Integer)values[i]);
    lua_setfield(L, -2, names[i]);
  }
  lua_pushinteger(L, (lua_Integer)delegator->in_flight);
  lua_setfield(L, -2, "in_flight");
  lua_pushinteger(L, (lua_Integer)delegator->lifecycle.reconnections);
  lua_setfield(L, -2, "reconnections");
  lua_pushinteger(L, (lua_Integer)delegator->pending.count); /* sent, awaiting a reply */
  lua_setfield(L, -2, "pending");
  return 1;
}

static int delegator_gc(lua_State *L) {
  delegator_release(check_delegator(L));
  return 0;
}

static int delegator_tostring(lua_State *L) {
  struct delegator *delegator = check_delegator(L);
  lua_pushfstring(L, "amqp_delegate.delegator (%s, %s)", lifecycle_state_name(&delegator->lifecycle, "started"),
                  lifecycle_url(&delegator->lifecycle)->redacted);
  return 1;
}

static int call_gc(lua_State *L) {
  call_release(luaL_checkudata(L, 1, CALL_MT), L);
  return 0;
}

static int call_wait_method(lua_State *L) {
  lua_settop(L, 1);
  return call_wait(L, 1);
}

static int call_done_method(lua_State *L) {
  lua_pushboolean(L, ((struct call *)luaL_checkudata(L, 1, CALL_MT))->done);
  return 1;
}

static int call_tostring(lua_State *L) {
  struct call *call = luaL_checkudata(L, 1, CALL_MT);
  lua_pushfstring(L, "amqp_delegate.call to '%s' (%s)", call->worker,
                  !call->done ? "in flight" : call->failed && call->error ? call->error->code : call->failed ? "failed" : "done");
  return 1;
}

static const luaL_Reg call_methods[] = {
    {"wait", call_wait_method}, {"done", call_done_method}, {NULL, NULL}};

static const luaL_Reg call_metamethods[] = {
    {"__gc", call_gc}, {"__tostring", call_tostring}, {NULL, NULL}};

static const luaL_Reg delegator_methods[] = {{"start", delegator_start_method},
                                             {"stop", delegator_stop_method},
                                             {"invoke", delegator_invoke_method},
                                             {"send", delegator_send_method},
                                             {"status", delegator_status_method},
                                             {"stats", delegator_stats_method},
                                             {NULL, NULL}};

static const luaL_Reg delegator_metamethods[] = {{"__gc", delegator_gc},
                                                 {"__close", delegator_close_method},
                                                 {"__tostring", delegator_tostring},
                                                 {NULL, NULL}};

/* ---- module functions ---- */

/* "SIGINT" or "SIGTERM" after a signal; "failed" when every worker stopped
 * because it could not go on; nothing when the program stopped them. */
static int serve(lua_State *L) {
  int outcome = runtime_serve(runtime_get(L), L);
  if (outcome == 0) return 0;
  lua_pushstring(L, outcome < 0 ? "failed" : outcome == 2 ? "SIGINT" : outcome == 15 ? "SIGTERM" : "signal");
  return 1;
}

/* delegate.context(): inside a task, what it knows of the call it serves
 * (in a coroutine or callback of the task too); nil elsewhere. */
static void push_headers(lua_State *L, const struct call_context *call) {
  lua_newtable(L);
  size_t cursor = 0;
  struct header header;
  while (header_list_next(call->headers, call->headers_length, &cursor, &header)) {
    lua_pushlstring(L, header.key, header.key_length);
    int64_t number;
    if (header.kind == HEADER_INTEGER && header_integer(&header, &number))
      lua_pushinteger(L, (lua_Integer)number);
    else if (header.kind == HEADER_BOOLEAN)
      lua_pushboolean(L, header.value[0] == '1');
    else
      lua_pushlstring(L, header.value, header.value_length);
    lua_rawset(L, -3);
  }
}

static int context_function(lua_State *L) {
  struct fiber *fiber = runtime_get(L)->running_fiber;
  const struct call_context *call = fiber ? fiber->call_context : NULL;
  if (!call) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 0, 8);
  lua_pushstring(L, call->worker);
  lua_setfield(L, -2, "worker");
  lua_pushlstring(L, call->correlation_id->bytes, call->correlation_id->length);
  lua_setfield(L, -2, "correlation_id");
  if (call->deadline_ms) {
    lua_pushnumber(L, (lua_Number)call->deadline_ms / 1000);
    lua_setfield(L, -2, "deadline");
    double left = (double)(call->deadline_ms - wall_clock_ms()) / 1000;
    lua_pushnumber(L, left > 0 ? left : 0);
    lua_setfield(L, -2, "time_left");
  }
  lua_pushboolean(L, call->redelivered);
  lua_setfield(L, -2, "redelivered");
  lua_pushinteger(L, call->previous_deliveries);
  lua_setfield(L, -2, "previous_deliveries");
  push_headers(L, call);
  lua_setfield(L, -2, "headers");
  return 1;
}

static int sleep_function(lua_State *L) {
  return runtime_sleep(L, checked_seconds(L, 1, "sleep's argument", 0, MAX_SECONDS, ""));
}

static int mark(lua_State *L, const char *metatable) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  luaL_setmetatable(L, metatable);
  return 1;
}

static int array(lua_State *L) { return mark(L, JSON_ARRAY_MT); }
static int object(lua_State *L) { return mark(L, JSON_OBJECT_MT); }

static int encode(lua_State *L) {
  luaL_checkany(L, 1);
  byte_buffer buffer;
  byte_buffer_init(&buffer);
  char problem[256];
  int status = json_encode(L, 1, &buffer, JSON_DEFAULT_MAX_DEPTH, problem, sizeof problem);
  if (status == 0) lua_pushlstring(L, buffer.data ? buffer.data : "", buffer.length);
  byte_buffer_free(&buffer); /* before raising: nothing may leak */
  if (status != 0) return bad_argument(L, "cannot encode: %s", problem);
  return 1;
}

static int decode(lua_State *L) {
  size_t length;
  const char *text = luaL_checklstring(L, 1, &length);
  char problem[256];
  if (json_decode(L, text, length, JSON_DEFAULT_MAX_DEPTH, problem, sizeof problem) != 0)
    return bad_argument(L, "cannot decode: %s", problem);
  return 1;
}

static int set_log_level(lua_State *L) {
  int level = log_level_from_name(luaL_checkstring(L, 1));
  if (level < 0) return bad_argument(L, "%s", "log level must be debug, info, warn, error or off");
  log_set_level((enum log_level)level);
  return 0;
}

static int set_log_format(lua_State *L) {
  int format = log_format_from_name(luaL_checkstring(L, 1));
  if (format < 0) return bad_argument(L, "%s", "log format must be text or json");
  log_set_format((enum log_format)format);
  return 0;
}

static int push_buffer(lua_State *L) {
  const byte_buffer *text = lua_touserdata(L, 1);
  lua_pushlstring(L, text->data ? text->data : "", text->length);
  return 1;
}

/* The Prometheus text of this state's workers and delegators (what run
 * --metrics serves), for a program that serves it its own way. The copy
 * into a Lua string is protected, so that the buffer is freed if it fails. */
static int metrics_function(lua_State *L) {
  struct runtime *runtime = runtime_get(L);
  byte_buffer text;
  byte_buffer_init(&text);
  int status = metrics_write(runtime, &text);
  lua_pushcfunction(L, push_buffer);
  lua_pushlightuserdata(L, &text);
  if (status == 0) status = lua_pcall(L, 1, 1, 0);
  byte_buffer_free(&text);
  if (status < 0) return luaL_error(L, "out of memory");
  if (status != LUA_OK) return lua_error(L);
  return 1;
}

/* delegate.transport_stats(): what the batched writes did (frames, writes). */
static int transport_stats(lua_State *L) {
  unsigned long frames, writes;
  transport_write_counts(&frames, &writes);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)frames);
  lua_setfield(L, -2, "frames");
  lua_pushinteger(L, (lua_Integer)writes);
  lua_setfield(L, -2, "writes");
  return 1;
}

static const luaL_Reg module_functions[] = {
    {"worker", new_worker}, {"delegator", new_delegator}, {"serve", serve},
    {"sleep", sleep_function}, {"context", context_function}, {"array", array}, {"object", object},
    {"encode", encode}, {"decode", decode}, {"set_log_level", set_log_level},
    {"pretty", pretty_lua}, {"set_log_format", set_log_format}, {"metrics", metrics_function},
    {"transport_stats", transport_stats},
    {NULL, NULL}};

static void new_class(lua_State *L, const char *name, const luaL_Reg *metamethods,
                      const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, metamethods, 0);
  if (methods) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* Decoded results carry the codec's marker metatables: printing them with
 * the pretty-printer makes a table result readable in the plain REPL. */
static void print_markers_readably(lua_State *L) {
  const char *const markers[] = {JSON_ARRAY_MT, JSON_OBJECT_MT};
  for (int i = 0; i < 2; i++) {
    luaL_getmetatable(L, markers[i]);
    lua_pushcfunction(L, pretty_lua);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
  }
}

/* The pure-Lua part of the module: small helpers built on the C methods.
 * pcall yields in Lua 5.4, so these work inside tasks as well. */
static const char lua_helpers[] =
    "local delegate, error_mt, wait = ...\n"
    "function delegate.wait_all(calls)\n"
    "  local results, first_error = { n = #calls }, nil\n"
    "  if type(calls) ~= 'table' then\n"
    "    error(setmetatable({ code = 'BAD_ARGUMENT', message = 'wait_all expects a list of calls' },\n"
    "      error_mt), 2)\n"
    "  end\n"
    "  for i = 1, #calls do\n"
    "    local ok, value = pcall(wait, calls[i])\n"
    "    if ok then results[i] = value elseif first_error == nil then first_error = value end\n"
    "    -- Ctrl-C ends the whole wait, not one call of it\n"
    "    if not ok and type(value) == 'table' and value.code == 'INTERRUPTED' then error(value, 0) end\n"
    "  end\n"
    "  if first_error ~= nil then error(first_error, 0) end\n"
    "  return results\n"
    "end\n";

/* wait_all's wait: anything but a call is BAD_ARGUMENT, as elsewhere. */
static int wait_one(lua_State *L) {
  if (!luaL_testudata(L, 1, CALL_MT))
    return bad_argument(L, "%s", "wait_all expects a list of calls (from :send)");
  lua_settop(L, 1);
  return call_wait(L, 1);
}

static void add_lua_helpers(lua_State *L) {
  if (luaL_loadbuffer(L, lua_helpers, sizeof lua_helpers - 1, "=amqp_delegate") != LUA_OK)
    lua_error(L);
  lua_pushvalue(L, -2);
  luaL_getmetatable(L, ERROR_OBJECT_MT);
  lua_pushcfunction(L, wait_one);
  lua_call(L, 3, 0);
}

__attribute__((visibility("default"))) int luaopen_amqp_delegate(lua_State *L) {
  runtime_open(L);
  error_object_open(L);
  json_open(L);
  print_markers_readably(L);
  new_class(L, WORKER_MT, worker_metamethods, worker_methods);
  new_class(L, DELEGATOR_MT, delegator_metamethods, delegator_methods);
  new_class(L, CALL_MT, call_metamethods, call_methods);
  luaL_newlib(L, module_functions);
  lua_pushlightuserdata(L, NULL); /* equal to lua-cjson's cjson.null */
  lua_setfield(L, -2, "null");
  lua_pushliteral(L, AMQP_DELEGATE_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushliteral(L, "amqp-delegate " AMQP_DELEGATE_VERSION);
  lua_setfield(L, -2, "_VERSION");
  add_lua_helpers(L);
  return 1;
}

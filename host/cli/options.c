/* What the commands share: the top-level usage and version, the option parser
 * (GNU style: options anywhere before `--`, short forms, --name=value, a
 * suggestion for a typo; it copies --url and masks its passwords in argv, so
 * that ps does not show them), failure messages with URLs redacted, exit
 * statuses, Lua states. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "cli.h"
#include "connection.h"
#include "error_object.h"
#include "errors.h"
#include "help.h"
#include "log.h"
#include "metrics_server.h"
#include "runtime.h"
#include "url.h"
#include "version.h"

const char top_usage[] =
    "usage: amqp-delegate COMMAND [options] [ARGUMENTS]\n"
    "\n"
    "Remote workers over AMQP 0-9-1 (RabbitMQ) for Lua 5.4.\n"
    "\n"
    "commands:\n"
    "  run FILE...          serve the workers that each Lua FILE returns\n"
    "  call NAME [ARG...]   call worker NAME once; each ARG is JSON; prints the JSON result\n"
    "  shell [FILE]         a Lua REPL with a started `delegator`; adder(10, 15) calls adder\n"
    "  status NAME|FILE...  how many workers serve each name, and requests wait for them\n"
    "  help [COMMAND]       this text, or a command's\n"
    "  version              the versions of amqp-delegate, Lua and rabbitmq-c\n"
    "\n"
    "`amqp-delegate COMMAND --help` tells more; man amqp-delegate tells all. Every command\n"
    "takes -u/--url, -l/--log-level, -h/--help and -V/--version, anywhere before `--`.\n"
    "The URL comes from --url, else $AMQP_URL, else amqp://localhost (prefer $AMQP_URL\n"
    "for a password); --url may be repeated, or list URLs with commas.\n"
    "Log lines go to standard error, one per event, with time and level.\n"
    "\n"
    EXIT_CODES_HELP;

/* ---- messages ---- */

/* "amqp-delegate: text" on standard error, or a JSON log line under --log-format json. */
static void say(const char *text) {
  fflush(stdout);
  if (log_is_json()) log_write(LOG_ERROR, text);
  else fprintf(stderr, "amqp-delegate: %s\n", text);
}

int fail(int status, const char *format, ...) {
  char message[2048], redacted[2048];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof message, format, args);
  va_end(args);
  url_redact_text(message, redacted, sizeof redacted);
  say(redacted);
  return status;
}

void print_version(void) {
  printf("amqp-delegate %s (%s, rabbitmq-c %s)\n", AMQP_DELEGATE_VERSION, LUA_RELEASE,
         transport_version());
}

void print_usage(const char *usage, const char *default_level) {
  printf(usage, default_level);
}

/* Only the default URL gets the hint: a URL someone chose names its broker. */
void connection_hint(const struct options *options, const char *code, const char *message) {
  const char *from_environment = getenv("AMQP_URL");
  if (strcmp(code, ERR_CONNECTION_FAILED) != 0 || options->url ||
      (from_environment && *from_environment) || !strstr(message, "localhost"))
    return;
  say("nothing answers at amqp://localhost (the default URL): start RabbitMQ there, or point at "
      "a broker with --url URL or AMQP_URL=amqp://user:password@host:5672/vhost");
}

/* ---- suggestions ---- */

/* Optimal string alignment distance (Levenshtein plus transpositions:
 * "--tiemout" is one step from "--timeout"); words are short options and
 * command names, so a row of 64 is plenty (longer ones are never close). */
static int edit_distance(const char *a, const char *b) {
  size_t n = strlen(a), m = strlen(b);
  if (n > 63 || m > 63) return 64;
  int rows[3][64], *before = rows[0], *previous = rows[1], *current = rows[2];
  for (size_t j = 0; j <= m; j++) previous[j] = (int)j;
  for (size_t i = 1; i <= n; i++) {
    current[0] = (int)i;
    for (size_t j = 1; j <= m; j++) {
      int cost = a[i - 1] != b[j - 1];
      int best = previous[j - 1] + cost;
      if (previous[j] + 1 < best) best = previous[j] + 1;
      if (current[j - 1] + 1 < best) best = current[j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
          before[j - 2] + 1 < best)
        best = before[j - 2] + 1;
      current[j] = best;
    }
    int *spare = before;
    before = previous;
    previous = current;
    current = spare;
  }
  return previous[m];
}

const char *closest_word(const char *word, const char *const *candidates, int count) {
  size_t length = strlen(word);
  /* one typo in a short word, two in a longer one: more would suggest unrelated words */
  int best_distance = length < 5 ? 2 : 3;
  const char *best = NULL, *prefixed = NULL;
  int prefixes = 0;
  for (int i = 0; i < count; i++) {
    if (length >= 3 && strncmp(candidates[i], word, length) == 0) {
      prefixed = candidates[i];
      prefixes++;
    }
    int distance = edit_distance(word, candidates[i]);
    if (distance < best_distance) {
      best_distance = distance;
      best = candidates[i];
    }
  }
  return prefixes == 1 ? prefixed : best; /* an abbreviation, when only one word has it */
}

/* ---- the options ---- */

struct option_spec {
  const char *name; /* the long form, without -- */
  char letter;      /* the short form, or 0 */
  unsigned which;
  int takes_value;
};

static const struct option_spec option_specs[] = {
    {"url", 'u', OPTION_URL, 1},
    {"concurrency", 'c', OPTION_CONCURRENCY, 1},
    {"queue-type", 0, OPTION_QUEUE_TYPE, 1},
    {"wait-for-broker", 'w', OPTION_WAIT_FOR_BROKER, 1},
    {"timeout", 't', OPTION_TIMEOUT, 1},
    {"pretty", 'p', OPTION_PRETTY, 0},
    {"raw", 'r', OPTION_RAW, 0},
    {"eval", 'e', OPTION_EVAL, 1},
    {"log-level", 'l', OPTION_LOG_LEVEL, 1},
    {"log-format", 0, OPTION_LOG_LEVEL, 1}, /* wherever --log-level is */
    {"metrics", 0, OPTION_METRICS, 1},
    {"ca-file", 0, OPTION_TLS, 1},
    {"cert-file", 0, OPTION_TLS, 1},
    {"key-file", 0, OPTION_TLS, 1},
    {"help", 'h', OPTION_HELP, 0},
    {"version", 'V', OPTION_VERSION, 0},
};
#define OPTION_SPECS ((int)(sizeof option_specs / sizeof option_specs[0]))

/* "-" (standard input) and "-3" (a negative JSON number) are operands. */
static int is_operand(const char *word) {
  return word[0] != '-' || word[1] == '\0' || (word[1] >= '0' && word[1] <= '9');
}

static const struct option_spec *spec_named(const char *name, size_t length) {
  for (int i = 0; i < OPTION_SPECS; i++)
    if (strlen(option_specs[i].name) == length && strncmp(option_specs[i].name, name, length) == 0)
      return &option_specs[i];
  return NULL;
}

static const struct option_spec *spec_lettered(char letter) {
  for (int i = 0; i < OPTION_SPECS; i++)
    if (option_specs[i].letter == letter) return &option_specs[i];
  return NULL;
}

/* How many words the option word at argv[i] takes: 1, or 2 with its value. */
static int option_words(char **argv, int i) {
  const char *word = argv[i];
  if (word[1] == '-') {
    size_t length = strcspn(word + 2, "=");
    const struct option_spec *spec = spec_named(word + 2, length);
    return spec && spec->takes_value && word[2 + length] != '=' ? 2 : 1;
  }
  for (const char *c = word + 1; *c; c++) {
    const struct option_spec *spec = spec_lettered(*c);
    if (spec && spec->takes_value) return c[1] ? 1 : 2; /* -uURL or -u URL */
  }
  return 1;
}

int find_command(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) return i + 1 < argc ? i + 1 : 0;
    if (is_operand(argv[i])) return i;
    i += option_words(argv, i) - 1;
  }
  return 0;
}

/* --url VALUE, as often as given: the values joined with commas into one
 * private copy (the core takes a list), then every password of VALUE in argv
 * overwritten, so that ps and /proc/PID/cmdline do not show it. */
static int add_url(struct options *options, char *value) {
  static char joined[8 * URL_MAX_LENGTH]; /* one list per process: nothing to free */
  size_t used = strlen(joined), length = strlen(value);
  if (used + 1 + length >= sizeof joined)
    return fail(EXIT_USAGE, "--url: the URLs together are longer than %zu bytes",
                sizeof joined - 1);
  if (used) joined[used++] = ',';
  memcpy(joined + used, value, length + 1);
  options->url = joined;
  for (char *piece = value;;) { /* each URL of a comma-separated list alone */
    char *comma = strchr(piece, ',');
    if (comma) *comma = '\0';
    url_mask_in_place(piece);
    if (!comma) break;
    *comma = ',';
    piece = comma + 1;
  }
  return 0;
}

static int take_number(const char *name, const char *value, double low, double high,
                       const char *what, double *number) {
  char *end;
  errno = 0;
  double parsed = strtod(value, &end);
  if (*end || end == value || errno || !isfinite(parsed) || parsed < low || parsed > high)
    return fail(EXIT_USAGE, "--%s takes %s, not '%.40s'", name, what, value);
  *number = parsed;
  return 0;
}

/* Takes one option's value into options; returns 0 or a usage error's status. */
static int take_value(const struct option_spec *spec, char *value, struct options *options) {
  double number;
  switch (spec->which) {
  case OPTION_URL:
    return add_url(options, value);
  case OPTION_TLS:
    if (strcmp(spec->name, "ca-file") == 0) options->ca_file = value;
    else if (strcmp(spec->name, "cert-file") == 0) options->cert_file = value;
    else options->key_file = value;
    return 0;
  case OPTION_CONCURRENCY:
    if (take_number(spec->name, value, 1, 65535, "1 to 65535", &number)) return EXIT_USAGE;
    if (number != floor(number))
      return fail(EXIT_USAGE, "--concurrency takes 1 to 65535, not '%.40s'", value);
    options->concurrency = (int)number;
    return 0;
  case OPTION_TIMEOUT:
    if (take_number(spec->name, value, 0, 1e6, "a number of seconds (0: none)", &number))
      return EXIT_USAGE;
    options->timeout = number;
    return 0;
  case OPTION_WAIT_FOR_BROKER:
    if (take_number(spec->name, value, 0, 86400, "a number of seconds (0: no wait)", &number))
      return EXIT_USAGE;
    options->wait_for_broker = value;
    return 0;
  case OPTION_QUEUE_TYPE:
    if (strcmp(value, "classic") != 0 && strcmp(value, "quorum") != 0)
      return fail(EXIT_USAGE, "--queue-type takes classic or quorum, not '%.40s'", value);
    options->queue_type = value;
    return 0;
  case OPTION_METRICS: {
    struct metrics_address address;
    char problem[200];
    if (metrics_address_parse(value, &address, problem, sizeof problem) != 0)
      return fail(EXIT_USAGE, "--metrics %s", problem);
    options->metrics = value;
    return 0;
  }
  case OPTION_EVAL:
    if (options->eval_count == OPTIONS_MAX_EVAL)
      return fail(EXIT_USAGE, "-e: at most %d of them", OPTIONS_MAX_EVAL);
    options->eval[options->eval_count++] = value;
    return 0;
  default: { /* OPTION_LOG_LEVEL: --log-level or --log-format */
    if (strcmp(spec->name, "log-format") == 0) {
      int format = log_format_from_name(value);
      if (format < 0)
        return fail(EXIT_USAGE, "--log-format takes text or json, not '%.40s'", value);
      log_set_format((enum log_format)format);
      return 0;
    }
    int level = log_level_from_name(value);
    if (level < 0)
      return fail(EXIT_USAGE, "--log-level takes debug, info, warn, error or off, not '%.40s'",
                  value);
    log_set_level((enum log_level)level);
    options->log_level = level;
    return 0;
  }
  }
}

/* A word that looks like an option: says what is wrong with it, and what was
 * probably meant. */
static int unknown_option(const char *word, size_t length, const char *command,
                          unsigned allowed) {
  char name[48];
  snprintf(name, sizeof name, "%.*s", (int)(length > 40 ? 40 : length), word);
  const struct option_spec *known = word[1] == '-' ? spec_named(word + 2, length - 2)
                                    : length == 2   ? spec_lettered(word[1])
                                                    : NULL;
  if (known)
    return fail(EXIT_USAGE, "%s is not an option of %s (see amqp-delegate %s --help)", name,
                command, command);
  const char *names[OPTION_SPECS];
  char dashed[OPTION_SPECS][24];
  int count = 0;
  for (int i = 0; i < OPTION_SPECS; i++) {
    if (!(option_specs[i].which & (allowed | OPTION_HELP | OPTION_VERSION))) continue;
    snprintf(dashed[count], sizeof dashed[count], "--%s", option_specs[i].name);
    names[count] = dashed[count];
    count++;
  }
  const char *guess = word[1] == '-' ? closest_word(name, names, count) : NULL;
  if (guess)
    return fail(EXIT_USAGE, "unknown option %s: did you mean %s? (see amqp-delegate %s --help)",
                name, guess, command);
  return fail(EXIT_USAGE, "unknown option %s (see amqp-delegate %s --help)", name, command);
}

/* The option word argv[*i] (and its value, which may be the next word) of
 * command `name`. Returns 0, -1 when --help or --version answered, or a usage
 * error. */
static int take_option(int argc, char **argv, int *i, int command, const char *name,
                       unsigned allowed, const char *usage, const char *default_level,
                       struct options *options) {
  char *word = argv[*i];
  int long_form = word[1] == '-';
  for (char *c = word + 1; *c; c++) { /* a cluster of short options, or one long one */
    size_t length = long_form ? 2 + strcspn(word + 2, "=") : 2;
    const struct option_spec *spec = long_form ? spec_named(word + 2, length - 2)
                                               : spec_lettered(*c);
    unsigned permitted = allowed | OPTION_HELP | OPTION_VERSION;
    if (!spec || !(spec->which & permitted))
      return unknown_option(long_form ? word : (char[]){'-', *c, 0}, length, name, allowed);
    char display[32];
    snprintf(display, sizeof display, "--%s", spec->name);
    if (spec->which == OPTION_HELP) {
      print_usage(usage, default_level);
      return -1;
    }
    if (spec->which == OPTION_VERSION) {
      print_version();
      return -1;
    }
    char *value = NULL;
    if (long_form && word[length] == '=') {
      if (!spec->takes_value) return fail(EXIT_USAGE, "%s takes no value", display);
      value = word + length + 1;
    } else if (!long_form && spec->takes_value && c[1]) {
      value = c + 1; /* -c4 */
    } else if (spec->takes_value) {
      if (*i + 1 < argc && *i + 1 != command) value = argv[++*i];
      if (value && !is_operand(value) && spec->which != OPTION_EVAL)
        return fail(EXIT_USAGE, "%s needs a value, not the option '%.40s'", display, value);
    }
    if (!spec->takes_value) {
      if (spec->which == OPTION_PRETTY) options->pretty = 1;
      else options->raw = 1;
      if (long_form) return 0;
      continue;
    }
    if (!value || !*value) return fail(EXIT_USAGE, "%s needs a value", display);
    return take_value(spec, value, options);
  }
  return 0;
}

int parse_options(int argc, char **argv, int command, unsigned allowed, const char *usage,
                  const char *default_level, struct options *options) {
  memset(options, 0, sizeof *options);
  options->timeout = -1;
  options->log_level = -1;
  /* Operands are gathered, in order, over the words already read (the
   * command's among them): the pointers move, the strings (what ps shows)
   * stay where they are. */
  const char *name = argv[command];
  int operands = 1, only_operands = 0;
  for (int i = 1; i < argc; i++) {
    if (i == command) continue;
    char *word = argv[i];
    if (!only_operands && strcmp(word, "--") == 0) {
      only_operands = 1;
    } else if (only_operands || is_operand(word)) {
      argv[operands++] = word;
    } else {
      int status =
          take_option(argc, argv, &i, command, name, allowed, usage, default_level, options);
      if (status) return status;
    }
  }
  options->rest = argv + 1;
  options->rest_count = operands - 1;
  return 0;
}

int debug_logging(const struct options *options) {
  if (options->log_level >= 0) return options->log_level == LOG_DEBUG;
  const char *name = getenv("AMQP_DELEGATE_LOG_LEVEL");
  return name && strcmp(name, "debug") == 0;
}

void apply_connection_options(lua_State *L, int table, const struct options *options) {
  table = lua_absindex(L, table);
  if (options->url) {
    lua_pushstring(L, options->url);
    lua_setfield(L, table, "url");
  }
  if (!options->ca_file && !options->cert_file && !options->key_file) return;
  lua_createtable(L, 0, 3);
  const char *const keys[] = {"ca_file", "cert_file", "key_file"};
  const char *const values[] = {options->ca_file, options->cert_file, options->key_file};
  for (int i = 0; i < 3; i++) {
    if (!values[i]) continue;
    lua_pushstring(L, values[i]);
    lua_setfield(L, -2, keys[i]);
  }
  lua_setfield(L, table, "tls");
}

void push_delegator(lua_State *L, int module, const struct options *options) {
  lua_getfield(L, module, "delegator");
  lua_createtable(L, 0, 4);
  int table = lua_gettop(L);
  apply_connection_options(L, table, options);
  if (options->timeout >= 0) {
    lua_pushnumber(L, options->timeout);
    lua_setfield(L, table, "timeout");
    if (options->timeout >= 0.001 && options->timeout < 10) { /* connecting counts too */
      lua_pushnumber(L, options->timeout);
      lua_setfield(L, table, "connect_timeout");
    }
  }
  lua_call(L, 1, 1);
}

int count_services(lua_State *L) {
  int count = 0;
  for (struct service *s = runtime_get(L)->services; s; s = s->next) count++;
  return count;
}

int is_worker_list(lua_State *L, int index) {
  if (lua_type(L, index) != LUA_TTABLE) return 0;
  int is_list = lua_rawgeti(L, index, 1) == LUA_TTABLE;
  lua_pop(L, 1);
  return is_list;
}

/* ---- Lua states, errors, exit statuses, files ---- */

/* The handler's result is one table, so that callers read a coded error and
 * a plain Lua error the same way. */
int error_report(lua_State *L) {
  int debug = lua_toboolean(L, lua_upvalueindex(1));
  int coded = 0;
  if (lua_type(L, 1) == LUA_TTABLE) {
    coded = lua_getfield(L, 1, "code") == LUA_TSTRING;
    lua_pop(L, 1);
  }
  lua_createtable(L, 0, 2);
  if (coded) {
    struct ad_error error;
    error_object_read(L, 1, ERR_TASK_FAILED, &error);
    lua_pushstring(L, error.code);
    lua_setfield(L, -2, "code");
    lua_pushfstring(L, "%s: %s", error.code, error.message);
  } else {
    luaL_tolstring(L, 1, NULL);
  }
  if (debug) {
    luaL_traceback(L, L, lua_tostring(L, -1), 1);
    lua_remove(L, -2);
  }
  lua_setfield(L, -2, "text");
  return 1;
}

/* A Lua state with the standard libraries and the module preloaded (so worker
 * files can require it). */
lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_amqp_delegate);
  lua_setfield(L, -2, "amqp_delegate");
  lua_pop(L, 1);
  return L;
}

/* The exit status that goes with an error code. */
int exit_status_for(const char *code) {
  static const char *const usage[] = {ERR_BAD_URL, ERR_BAD_ARGUMENT, NULL};
  static const char *const connection[] = {ERR_CONNECTION_FAILED, ERR_AUTH_FAILED, ERR_NOT_ALLOWED,
                                           ERR_CONNECTION_LOST, ERR_BROKER_ERROR, ERR_STOPPED,
                                           NULL};
  for (int i = 0; usage[i]; i++)
    if (strcmp(code, usage[i]) == 0) return EXIT_USAGE;
  for (int i = 0; connection[i]; i++)
    if (strcmp(code, connection[i]) == 0) return EXIT_CONNECTION;
  if (strcmp(code, "TIMEOUT") == 0) return EXIT_TIMEOUT;
  if (strcmp(code, "INTERRUPTED") == 0) return EXIT_INTERRUPTED;
  return EXIT_FAILED;
}

char *read_whole_file(const char *path, size_t *length) {
  FILE *file = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!file) return NULL;
  size_t used = 0, capacity = 4096;
  char *data = malloc(capacity);
  while (data) {
    used += fread(data + used, 1, capacity - used - 1, file);
    if (used + 1 < capacity) break; /* end of file or an error */
    char *grown = realloc(data, capacity * 2);
    if (!grown) {
      free(data);
      data = NULL;
      errno = ENOMEM;
      break;
    }
    data = grown;
    capacity *= 2;
  }
  int failed = data && ferror(file);
  int saved = errno;
  if (file != stdin) fclose(file);
  if (failed) {
    free(data);
    errno = saved ? saved : EIO;
    return NULL;
  }
  if (!data) return NULL;
  data[used] = '\0';
  *length = used;
  return data;
}

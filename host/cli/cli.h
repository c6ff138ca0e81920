/* What the files of the host executable share: main.c dispatches to the
 * commands (run.c, call.c, shell.c, status.c); options.c parses their options, reports
 * their failures and makes their Lua states. */
#ifndef AD_CLI_H
#define AD_CLI_H

#include <lua.h>

/* Exit statuses, one table for every command (help.h prints it, README has it). */
enum {
  EXIT_OK = 0,
  EXIT_FAILED = 1,     /* a file that does not load; the task's error; NO_ROUTE */
  EXIT_USAGE = 2,      /* options, arguments, a bad URL */
  EXIT_CONNECTION = 3, /* cannot connect, refused credentials, connection lost */
  EXIT_TIMEOUT = 4,    /* no reply in time */
  EXIT_INTERRUPTED = 130
};

/* Options a command takes (--help and --version: every command). */
enum {
  OPTION_URL = 1u,
  OPTION_CONCURRENCY = 2u,
  OPTION_TIMEOUT = 4u,
  OPTION_LOG_LEVEL = 8u,
  OPTION_PRETTY = 16u,
  OPTION_TLS = 32u, /* --ca-file, --cert-file, --key-file */
  OPTION_RAW = 64u,
  OPTION_QUEUE_TYPE = 128u,
  OPTION_EVAL = 256u, /* shell -e CODE */
  OPTION_HELP = 512u,
  OPTION_VERSION = 1024u,
  OPTION_WAIT_FOR_BROKER = 2048u, /* run --wait-for-broker SECONDS */
  OPTION_METRICS = 4096u          /* run --metrics ADDRESS:PORT */
};

#define OPTIONS_MAX_EVAL 16

struct options {
  const char *url; /* every --url joined with commas (argv's copies masked), or NULL */
  int concurrency; /* 0: not given */
  double timeout;  /* < 0: not given */
  int pretty, raw;
  int log_level;          /* enum log_level, or -1: not given */
  const char *queue_type; /* NULL: not given */
  const char *wait_for_broker; /* seconds as given (checked), NULL: not given */
  const char *metrics;         /* ADDRESS:PORT as given (checked), NULL: not given */
  const char *ca_file, *cert_file, *key_file; /* NULL: not given */
  const char *eval[OPTIONS_MAX_EVAL];         /* shell -e CODE, in order */
  int eval_count;
  char **rest;     /* the operands, in order, options taken out */
  int rest_count;
};

/* ---- the commands: each returns the process's exit status ---- */

/* argv[command] is the command's name; options may come before or after it. */
int command_run(int argc, char **argv, int command);   /* run.c */
int command_call(int argc, char **argv, int command);  /* call.c */
int command_shell(int argc, char **argv, int command); /* shell.c */
int command_status(int argc, char **argv, int command); /* status.c */

/* What `amqp-delegate help COMMAND` prints: the same as `COMMAND --help`. */
void run_help(void);
void call_help(void);
void shell_help(void);
void status_help(void);

/* ---- options.c ---- */

/* usage: amqp-delegate COMMAND ...; the commands and the exit statuses. */
extern const char top_usage[];

/* "amqp-delegate VERSION (Lua VERSION, rabbitmq-c VERSION)" on standard output. */
void print_version(void);

/* A command's usage on standard output: `usage` is a printf format taking the
 * default log level. */
void print_usage(const char *usage, const char *default_level);

/* The index of the command word in argv (the first operand, skipping the
 * options before it and their values), or 0 when there is none. */
int find_command(int argc, char **argv);

/* Parses every word of argv but argv[0] and argv[command], wherever the
 * options are (up to `--`). Returns -1 when --help or --version answered
 * (exit 0), 0 when the operands follow at options->rest, else the exit
 * status of a usage error (already reported). `usage` is as for print_usage. */
int parse_options(int argc, char **argv, int command, unsigned allowed, const char *usage,
                  const char *default_level, struct options *options);

/* The candidate closest to `word` by edit distance when it is close enough
 * to be a likely typo (or `word` is a prefix of it), else NULL. */
const char *closest_word(const char *word, const char *const *candidates, int count);

/* "amqp-delegate: message" on standard error, URLs redacted; returns status. */
int fail(int status, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* After an error with `code` and `message`: a line on how to point at a
 * broker when the default URL (amqp://localhost) was refused. */
void connection_hint(const struct options *options, const char *code, const char *message);

/* Whether errors should carry their Lua traceback: --log-level debug (or
 * AMQP_DELEGATE_LOG_LEVEL=debug when no --log-level is given). */
int debug_logging(const struct options *options);

/* Sets `url` and `tls` in the options table at `table` from the command line. */
void apply_connection_options(lua_State *L, int table, const struct options *options);

/* Pushes a delegator (not started) of the module at `module` with the command line's
 * connection options and --timeout (a short one bounds connecting too). */
void push_delegator(lua_State *L, int module, const struct options *options);

/* Workers started so far in the state (a file that starts its own shows here). */
int count_services(lua_State *L);

/* 1 when the value at index is a list of worker tables, not one worker table. */
int is_worker_list(lua_State *L, int index);

/* A state with the standard libraries and amqp_delegate preloaded. */
lua_State *new_state(void);

/* A message handler for lua_pcall, with one upvalue: whether to add the
 * traceback. Turns the error into {code = CODE or nil (a plain Lua error),
 * text = "CODE: message" or the Lua message}. */
int error_report(lua_State *L);

/* The exit status for an error code (TASK_FAILED -> 1, BAD_URL -> 2...). */
int exit_status_for(const char *code);

/* Reads a whole file (standard input for "-") into a new NUL-terminated
 * buffer; returns it (free it) with *length, or NULL with errno set. */
char *read_whole_file(const char *path, size_t *length);

/* The module (lua/amqp_delegate.c, linked into the executable). */
int luaopen_amqp_delegate(lua_State *L);

#endif

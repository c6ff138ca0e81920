/* What the files of the host executable share: main.c dispatches to the
 * commands (run.c, call.c, shell.c); options.c parses their options, reports
 * their failures and makes their Lua states. */
#ifndef AD_CLI_H
#define AD_CLI_H

#include <lua.h>

/* Exit statuses, the same for every command where they apply. */
enum {
  EXIT_OK = 0,
  EXIT_FAILED = 1,     /* a file that does not load; the task's error; NO_ROUTE */
  EXIT_USAGE = 2,      /* options, arguments, a bad URL */
  EXIT_CONNECTION = 3, /* cannot connect, refused credentials, connection lost */
  EXIT_TIMEOUT = 4,    /* no reply in time */
  EXIT_INTERRUPTED = 130
};

/* Options a command takes. */
enum {
  OPTION_URL = 1u,
  OPTION_CONCURRENCY = 2u,
  OPTION_TIMEOUT = 4u,
  OPTION_LOG_LEVEL = 8u,
  OPTION_PRETTY = 16u,
  OPTION_TLS = 32u /* --ca-file, --cert-file, --key-file */
};

struct options {
  const char *url; /* a private copy (argv's is masked), or NULL */
  int concurrency; /* 0: not given */
  double timeout;  /* < 0: not given */
  int pretty;
  const char *ca_file, *cert_file, *key_file; /* NULL: not given */
  char **rest;     /* the arguments after the options */
  int rest_count;
};

/* ---- the commands: each returns the process's exit status ---- */

int command_run(int argc, char **argv);   /* run.c */
int command_call(int argc, char **argv);  /* call.c */
int command_shell(int argc, char **argv); /* shell.c */

/* What `amqp-delegate help COMMAND` prints: the same as `COMMAND --help`. */
void run_help(void);
void call_help(void);
void shell_help(void);

/* ---- options.c ---- */

/* usage: amqp-delegate COMMAND ...; the commands and the exit statuses. */
extern const char top_usage[];

/* "amqp-delegate VERSION (Lua VERSION, rabbitmq-c VERSION)" on standard output. */
void print_version(void);

/* A command's usage on standard output: `usage` is a printf format taking the
 * default log level. */
void print_usage(const char *usage, const char *default_level);

/* Parses argv[2..]. Returns -1 when --help or --version answered (exit 0),
 * 0 when the arguments follow at options->rest, else the exit status of a
 * usage error (already reported). `usage` is as for print_usage. */
int parse_options(int argc, char **argv, unsigned allowed, const char *usage,
                  const char *default_level, struct options *options);

/* "amqp-delegate: message" on standard error, URLs redacted; returns status. */
int fail(int status, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Sets `url` and `tls` in the options table at `table` from the command line. */
void apply_connection_options(lua_State *L, int table, const struct options *options);

/* A state with the standard libraries and amqp_delegate preloaded. */
lua_State *new_state(void);

/* The exit status for an error code (TASK_FAILED -> 1, BAD_URL -> 2...). */
int exit_status_for(const char *code);

/* The module (lua/amqp_delegate.c, linked into the executable). */
int luaopen_amqp_delegate(lua_State *L);

#endif

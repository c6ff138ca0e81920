/* The pieces of help text several commands print: each command keeps its own
 * usage next to it (run.c, call.c, shell.c) and builds it from these; the
 * top-level usage is in options.c. String literals, to be concatenated. The
 * man page (doc/amqp-delegate.1) and README say the same. */
#ifndef AD_CLI_HELP_H
#define AD_CLI_HELP_H

#define EXIT_CODES_HELP                                                                      \
  "exit status (the same for run, call, shell and status):\n"                                \
  "  0    done: call printed the result; run stopped by SIGTERM; shell left by Ctrl-D or\n"   \
  "       exit(), or ran -e CODE and FILE without an error; status: every name is served\n"  \
  "  1    failed: the task raised (TASK_FAILED or its own code), nobody serves the worker\n"  \
  "       (NO_ROUTE, NO_WORKER), a broker refusal; run: a FILE does not load or serves\n"     \
  "       nothing, a worker cannot start, every worker stopped because it could not go on,\n" \
  "       the --metrics address cannot be listened on; shell: -e CODE or FILE raised a Lua\n" \
  "       error; status: a name has no worker\n"                                             \
  "  2    usage: unknown command or option, bad value, an ARG that is not JSON, BAD_URL,\n"    \
  "       BAD_ARGUMENT\n"                                                                     \
  "  3    connection: CONNECTION_FAILED, AUTH_FAILED, NOT_ALLOWED, CONNECTION_LOST,\n"        \
  "       BROKER_ERROR, STOPPED\n"                                                            \
  "  4    TIMEOUT: no reply in time (call --timeout, or a call's timeout in shell)\n"          \
  "  130  interrupted (Ctrl-C, SIGINT); run: once the tasks in hand are finished\n"           \
  "  143  run: a second SIGTERM while stopping (a second SIGINT: 130) exits at once\n"

#define URL_HELP                                                                           \
  "  -u, --url URL        broker URL (default: $AMQP_URL, else amqp://localhost); repeat\n" \
  "                       it or separate URLs with commas for a list of brokers\n"
#define LOG_HELP                                                                       \
  "  -l, --log-level LEVEL\n"                                                          \
  "                       debug, info, warn, error or off (default %s)\n"             \
  "  --log-format FORMAT  text, or json: one JSON object a line (time, level, message)\n" \
  "                       (default text, or $AMQP_DELEGATE_LOG_FORMAT)\n"
#define TLS_HELP                                                                         \
  "  --ca-file FILE       for amqps:// URLs: the CA that signed the broker's certificate\n" \
  "                       (default: the system's CAs)\n"                                \
  "  --cert-file FILE, --key-file FILE   a client certificate and its key\n"
#define HELP_VERSION_HELP "  -h, --help           this text; -V, --version: the versions\n"
#define OPTIONS_ANYWHERE_HELP                                                               \
  "\n"                                                                                        \
  "Options may come anywhere before `--`, as --name VALUE, --name=VALUE, -n VALUE or\n"       \
  "-nVALUE; short options without a value may be grouped.\n"

#endif

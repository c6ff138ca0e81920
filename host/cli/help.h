/* The pieces of help text several commands print: each command keeps its own
 * usage next to it (run.c, call.c, shell.c) and builds it from these; the
 * top-level usage is in options.c. String literals, to be concatenated. */
#ifndef AD_CLI_HELP_H
#define AD_CLI_HELP_H

#define EXIT_CODES_HELP                                                                    \
  "exit status:\n"                                                                         \
  "  0    done; run: stopped by SIGINT or SIGTERM\n"                                       \
  "  1    failed: a worker file does not load or a worker cannot start, or every worker\n"  \
  "       stopped because it could not go on (run); the task raised, nobody serves the\n"   \
  "       worker, or the broker refused (call: TASK_FAILED, NO_ROUTE, a task's own code)\n" \
  "  2    usage: unknown option, bad value, an ARG that is not JSON, a bad URL\n"          \
  "  3    connection (call, shell): CONNECTION_FAILED, AUTH_FAILED, NOT_ALLOWED,\n"        \
  "       CONNECTION_LOST, BROKER_ERROR, STOPPED\n"                                        \
  "  4    TIMEOUT (call): no reply within --timeout\n"                                     \
  "  130  interrupted (Ctrl-C); run: 128 + signal after a second SIGINT or SIGTERM\n"

#define URL_HELP "  --url URL            broker URL (default: $AMQP_URL, else amqp://localhost)\n"
#define LOG_HELP "  --log-level LEVEL    debug, info, warn, error or off (default %s)\n"
#define TLS_HELP                                                                         \
  "  --ca-file FILE       for amqps:// URLs: the CA that signed the broker's certificate\n" \
  "                       (default: the system's CAs)\n"                                \
  "  --cert-file FILE, --key-file FILE   a client certificate and its key\n"

#endif

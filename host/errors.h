/* Our errors: a stable code and a human message. This is the one place that
 * turns rabbitmq-c statuses and broker replies (channel.close,
 * connection.close) into them. */
#ifndef AD_ERRORS_H
#define AD_ERRORS_H

#include <stddef.h>

#include <amqp.h>

/* Stable codes: users match on these strings, so never rename one. */
#define ERR_MISSING_NAME "MISSING_NAME"
#define ERR_MISSING_TASK "MISSING_TASK"
#define ERR_ALREADY_STARTED "ALREADY_STARTED"
#define ERR_NOT_STARTED "NOT_STARTED"
#define ERR_BAD_ARGUMENT "BAD_ARGUMENT"
#define ERR_BAD_URL "BAD_URL"
#define ERR_CONNECTION_FAILED "CONNECTION_FAILED"
#define ERR_AUTH_FAILED "AUTH_FAILED"
#define ERR_CONNECTION_LOST "CONNECTION_LOST"
#define ERR_BROKER_ERROR "BROKER_ERROR"
#define ERR_TASK_FAILED "TASK_FAILED"
#define ERR_BAD_REQUEST "BAD_REQUEST"
#define ERR_BAD_RESULT "BAD_RESULT"
#define ERR_BAD_REPLY "BAD_REPLY"
#define ERR_NO_ROUTE "NO_ROUTE"
#define ERR_TIMEOUT "TIMEOUT"
#define ERR_STOPPED "STOPPED"
#define ERR_INTERRUPTED "INTERRUPTED"

struct ad_error {
  char code[48]; /* one of the ERR_ strings, or a task's own code */
  char message[512];
};

void error_set(struct ad_error *error, const char *code, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* rabbitmq-c status (negative AMQP_STATUS_*) during `doing` ("connecting to
 * localhost:5672"). Socket-level failures become CONNECTION_LOST unless
 * `code_if_socket` says otherwise (CONNECTION_FAILED while connecting). */
void error_from_status(struct ad_error *error, const char *code_if_socket,
                       int status, const char *doing);

/* Takes a code that is not one of ours (a task's own, or one read from a
 * reply) when it looks like a code; falls back to `fallback` when it is unusable. */
void error_set_code(struct ad_error *error, const char *code, size_t length,
                    const char *fallback);

/* Returns 0 when reply is normal, else fills error and returns -1. */
int error_from_rpc_reply(struct ad_error *error, amqp_rpc_reply_t reply,
                         const char *doing);

/* A failed amqp_login: AUTH_FAILED when the broker refused the credentials,
 * else CONNECTION_FAILED. */
void error_from_login(struct ad_error *error, amqp_rpc_reply_t reply, const char *doing,
                      const char *vhost);

/* A method the broker sent on its own that ends our use of the connection:
 * connection.close, channel.close, or basic.cancel of our consumer. */
void error_from_close_method(struct ad_error *error, const amqp_method_t *method,
                             const char *doing);

#endif

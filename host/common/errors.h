/* Our errors: a stable code and a human message. Every layer speaks this;
 * the transport alone turns rabbitmq-c statuses and broker replies into it
 * (transport/amqp_errors.c). */
#ifndef AD_ERRORS_H
#define AD_ERRORS_H

#include <stddef.h>

/* Stable codes: users match on these strings, so never rename one. */
#define ERR_MISSING_NAME "MISSING_NAME"
#define ERR_MISSING_TASK "MISSING_TASK"
#define ERR_ALREADY_STARTED "ALREADY_STARTED"
#define ERR_NOT_STARTED "NOT_STARTED"
#define ERR_BAD_ARGUMENT "BAD_ARGUMENT"
#define ERR_CANNOT_WAIT "CANNOT_WAIT"
#define ERR_BAD_URL "BAD_URL"
#define ERR_CONNECTION_FAILED "CONNECTION_FAILED"
#define ERR_AUTH_FAILED "AUTH_FAILED"
#define ERR_CONNECTION_LOST "CONNECTION_LOST"
#define ERR_BROKER_ERROR "BROKER_ERROR"
/* the broker refused an operation (AMQP 403, 404, 405, 406, 530) */
#define ERR_ACCESS_REFUSED "ACCESS_REFUSED"
#define ERR_NOT_FOUND "NOT_FOUND"
#define ERR_RESOURCE_LOCKED "RESOURCE_LOCKED"
#define ERR_PRECONDITION_FAILED "PRECONDITION_FAILED"
#define ERR_NOT_ALLOWED "NOT_ALLOWED"
#define ERR_TASK_FAILED "TASK_FAILED"
#define ERR_BAD_REQUEST "BAD_REQUEST"
#define ERR_BAD_RESULT "BAD_RESULT"
#define ERR_BAD_REPLY "BAD_REPLY"
#define ERR_NO_ROUTE "NO_ROUTE"
#define ERR_TIMEOUT "TIMEOUT"
#define ERR_STOPPED "STOPPED"
#define ERR_INTERRUPTED "INTERRUPTED"
/* the broker did not take a request (nack, or the connection died first) */
#define ERR_NOT_CONFIRMED "NOT_CONFIRMED"
/* a request delivered more often than the worker's delivery_limit */
#define ERR_DELIVERY_LIMIT "DELIVERY_LIMIT"
/* the worker's queue is there but nothing consumes it: no worker serves the name now */
#define ERR_NO_WORKER "NO_WORKER"

struct ad_error {
  char code[48]; /* one of the ERR_ strings, or a task's own code */
  char message[512];
};

void error_set(struct ad_error *error, const char *code, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* Takes a code that is not one of ours (a task's own, or one read from a
 * reply) when it looks like a code; falls back to `fallback` when it is unusable. */
void error_set_code(struct ad_error *error, const char *code, size_t length,
                    const char *fallback);

#endif

/* Inside the transport only: the one place that turns rabbitmq-c statuses
 * and the broker's close replies into our errors (common/errors.h). */
#ifndef AD_AMQP_ERRORS_H
#define AD_AMQP_ERRORS_H

#include <amqp.h>

#include "errors.h"

/* rabbitmq-c status (negative AMQP_STATUS_*) during `doing`. Socket-level
 * failures get `code_if_socket` (CONNECTION_FAILED while connecting,
 * CONNECTION_LOST after), anything else BROKER_ERROR. */
void error_from_status(struct ad_error *error, const char *code_if_socket, int status,
                       const char *doing);

/* The broker closed the channel or the connection (channel.close or
 * connection.close): the AMQP reply code picks our code (403
 * ACCESS_REFUSED, 404 NOT_FOUND, 405 RESOURCE_LOCKED, 406
 * PRECONDITION_FAILED, 530 NOT_ALLOWED, 320 CONNECTION_LOST), and the
 * message carries the broker's own text. */
void error_from_close_method(struct ad_error *error, const amqp_method_t *method,
                             const char *doing);

/* A failed amqp_login: AUTH_FAILED when the broker refused the credentials,
 * NOT_ALLOWED for a vhost it refuses, else CONNECTION_FAILED. */
void error_from_login(struct ad_error *error, amqp_rpc_reply_t reply, const char *doing,
                      const char *vhost);

#endif

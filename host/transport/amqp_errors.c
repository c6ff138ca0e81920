/* Translation of rabbitmq-c statuses and broker close methods into
 * struct ad_error, so every layer above speaks one error language. */
#include "amqp_errors.h"

#include <stdio.h>
#include <string.h>

#include <amqp_framing.h>

static int is_socket_status(int status) {
  switch (status) {
    case AMQP_STATUS_SOCKET_ERROR:
    case AMQP_STATUS_CONNECTION_CLOSED:
    case AMQP_STATUS_SOCKET_CLOSED:
    case AMQP_STATUS_HEARTBEAT_TIMEOUT:
    case AMQP_STATUS_TCP_ERROR:
    case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED:
    case AMQP_STATUS_TIMEOUT:
    case AMQP_STATUS_SSL_ERROR:
    case AMQP_STATUS_SSL_CONNECTION_FAILED:
      return 1;
    default:
      return 0;
  }
}

void error_from_status(struct ad_error *error, const char *code_if_socket, int status,
                       const char *doing) {
  const char *code = is_socket_status(status) ? code_if_socket : ERR_BROKER_ERROR;
  error_set(error, code, "%s: %s", doing, amqp_error_string2(status));
}

static const char *code_for_reply(int reply_code) {
  switch (reply_code) {
    case AMQP_ACCESS_REFUSED: return ERR_ACCESS_REFUSED;
    case AMQP_NOT_FOUND: return ERR_NOT_FOUND;
    case AMQP_RESOURCE_LOCKED: return ERR_RESOURCE_LOCKED;
    case AMQP_PRECONDITION_FAILED: return ERR_PRECONDITION_FAILED;
    case AMQP_NOT_ALLOWED: return ERR_NOT_ALLOWED;
    case AMQP_CONNECTION_FORCED: return ERR_CONNECTION_LOST;
    default: return ERR_BROKER_ERROR;
  }
}

static void close_reply(struct ad_error *error, const char *doing, int reply_code,
                        amqp_bytes_t text, const char *scope) {
  error_set(error, code_for_reply(reply_code), "%s: the broker closed the %s (%d %.*s)", doing,
            scope, reply_code, (int)text.len, (const char *)text.bytes);
}

void error_from_close_method(struct ad_error *error, const amqp_method_t *method,
                             const char *doing) {
  if (method->id == AMQP_CONNECTION_CLOSE_METHOD) {
    const amqp_connection_close_t *close = method->decoded;
    close_reply(error, doing, close->reply_code, close->reply_text, "connection");
  } else if (method->id == AMQP_CHANNEL_CLOSE_METHOD) {
    const amqp_channel_close_t *close = method->decoded;
    close_reply(error, doing, close->reply_code, close->reply_text, "channel");
  } else if (method->id == AMQP_BASIC_CANCEL_METHOD) {
    error_set(error, ERR_CONNECTION_LOST,
              "%s: the broker cancelled the consumer (queue deleted?)", doing);
  } else {
    error_set(error, ERR_BROKER_ERROR, "%s: unexpected method 0x%08x from the broker", doing,
              (unsigned)method->id);
  }
}

/* RabbitMQ answers bad credentials with ACCESS_REFUSED, or by closing the
 * socket during the handshake; a vhost it refuses with NOT_ALLOWED. */
void error_from_login(struct ad_error *error, amqp_rpc_reply_t reply, const char *doing,
                      const char *vhost) {
  switch (reply.reply_type) {
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      error_from_close_method(error, &reply.reply, doing);
      if (strcmp(error->code, ERR_ACCESS_REFUSED) == 0) {
        snprintf(error->code, sizeof error->code, "%s", ERR_AUTH_FAILED);
      } else if (strcmp(error->code, ERR_NOT_ALLOWED) != 0) {
        snprintf(error->code, sizeof error->code, "%s", ERR_CONNECTION_FAILED);
      }
      return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      if (reply.library_error == AMQP_STATUS_CONNECTION_CLOSED) {
        error_set(error, ERR_AUTH_FAILED,
                  "%s: the broker closed the connection (wrong user or password, or no "
                  "access to vhost '%s')", doing, vhost);
        return;
      }
      error_from_status(error, ERR_CONNECTION_FAILED, reply.library_error, doing);
      snprintf(error->code, sizeof error->code, "%s", ERR_CONNECTION_FAILED);
      return;
    default:
      error_set(error, ERR_CONNECTION_FAILED, "%s: no reply from the broker", doing);
  }
}

/* Translation of rabbitmq-c statuses and broker close methods into
 * struct ad_error, so every layer above speaks one error language. */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <amqp_framing.h>

static void copy_code(struct ad_error *error, const char *code) {
  snprintf(error->code, sizeof error->code, "%s", code);
}

void error_set(struct ad_error *error, const char *code, const char *format, ...) {
  copy_code(error, code);
  va_list args;
  va_start(args, format);
  vsnprintf(error->message, sizeof error->message, format, args);
  va_end(args);
}

static int is_socket_status(int status) {
  switch (status) {
    case AMQP_STATUS_SOCKET_ERROR:
    case AMQP_STATUS_CONNECTION_CLOSED:
    case AMQP_STATUS_SOCKET_CLOSED:
    case AMQP_STATUS_HEARTBEAT_TIMEOUT:
    case AMQP_STATUS_TCP_ERROR:
    case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED:
    case AMQP_STATUS_TIMEOUT:
      return 1;
    default:
      return 0;
  }
}

void error_from_status(struct ad_error *error, const char *code_if_socket,
                       int status, const char *doing) {
  const char *code = is_socket_status(status) ? code_if_socket : ERR_BROKER_ERROR;
  error_set(error, code, "%s: %s", doing, amqp_error_string2(status));
}

static void close_reply(struct ad_error *error, const char *doing, int reply_code,
                        amqp_bytes_t text, const char *scope) {
  const char *code = ERR_BROKER_ERROR;
  if (reply_code == AMQP_ACCESS_REFUSED) code = ERR_AUTH_FAILED;
  else if (reply_code == AMQP_CONNECTION_FORCED) code = ERR_CONNECTION_LOST;
  error_set(error, code, "%s: broker closed the %s (%d %.*s)", doing, scope,
            reply_code, (int)text.len, (const char *)text.bytes);
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
    error_set(error, ERR_BROKER_ERROR, "%s: the broker cancelled the consumer (queue deleted?)",
              doing);
  } else {
    error_set(error, ERR_BROKER_ERROR, "%s: unexpected method 0x%08x from the broker",
              doing, (unsigned)method->id);
  }
}

int error_from_rpc_reply(struct ad_error *error, amqp_rpc_reply_t reply,
                         const char *doing) {
  switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return 0;
    case AMQP_RESPONSE_NONE:
      error_set(error, ERR_BROKER_ERROR, "%s: no reply from the broker", doing);
      return -1;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      error_from_status(error, ERR_CONNECTION_LOST, reply.library_error, doing);
      return -1;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      error_from_close_method(error, &reply.reply, doing);
      return -1;
  }
  error_set(error, ERR_BROKER_ERROR, "%s: unknown reply type", doing);
  return -1;
}

/* Codes are short upper-case words; anything else from the outside is not
 * trusted as a code and the fallback is used. */
void error_set_code(struct ad_error *error, const char *code, size_t length,
                    const char *fallback) {
  copy_code(error, fallback);
  if (length == 0 || length >= sizeof error->code) return;
  for (size_t i = 0; i < length; i++) {
    char c = code[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return;
  }
  memcpy(error->code, code, length);
  error->code[length] = '\0';
}

/* RabbitMQ answers bad credentials with ACCESS_REFUSED, or by closing the
 * socket during the handshake; anything else while logging in means the
 * connection could not be made. */
void error_from_login(struct ad_error *error, amqp_rpc_reply_t reply, const char *doing,
                      const char *vhost) {
  error_from_rpc_reply(error, reply, doing);
  if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
      reply.library_error == AMQP_STATUS_CONNECTION_CLOSED)
    error_set(error, ERR_AUTH_FAILED,
              "%s: the broker closed the connection (wrong user or password, or no access "
              "to vhost '%s')", doing, vhost);
  else if (strcmp(error->code, ERR_AUTH_FAILED) != 0)
    copy_code(error, ERR_CONNECTION_FAILED);
}

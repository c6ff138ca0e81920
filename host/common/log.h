/* One log line per event, with time and level, to standard error: text
 * ("2026-11-25T14:51:12.345Z INFO message") or one JSON object a line
 * ({"time":"...","level":"info","message":"..."}). Level and format are
 * process-wide: the host executable sets them from --log-level and
 * --log-format (else AMQP_DELEGATE_LOG_LEVEL, AMQP_DELEGATE_LOG_FORMAT). */
#ifndef AD_LOG_H
#define AD_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };
enum log_format { LOG_TEXT, LOG_JSON };

void log_set_level(enum log_level level);
/* Returns -1 for an unknown name, else the level. */
int log_level_from_name(const char *name);
void log_set_format(enum log_format format);
/* Returns -1 for an unknown name ("text", "json"), else the format. */
int log_format_from_name(const char *name);
void log_line(enum log_level level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* Whether lines are JSON (--log-format json or AMQP_DELEGATE_LOG_FORMAT). */
int log_is_json(void);
/* One line at `level` whatever the level threshold: a command's own failure,
 * which must reach a log collector as the other lines do. */
void log_write(enum log_level level, const char *message);

#endif

/* One log line per event, with time and level, to standard error.
 * The level is process-wide: the host executable sets it from --log-level. */
#ifndef AD_LOG_H
#define AD_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };

void log_set_level(enum log_level level);
/* Returns -1 for an unknown name, else the level. */
int log_level_from_name(const char *name);
void log_line(enum log_level level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

#endif

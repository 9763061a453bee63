/* log: timestamped log lines on stderr, tagged with the process role
 * ("learner", "actor-3", ...), so that logs from many processes and
 * machines can be merged and read. Thread-safe (one write per line). */
#ifndef CRL_LOG_H
#define CRL_LOG_H

#include <stdarg.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

/* Sets the tag printed on every line (copied); default "crl". */
void log_set_tag(const char *tag);
/* Lines below this level are not printed; default LOG_INFO, or
 * CRL_LOG_LEVEL=debug|info|warn|error from the environment. */
void log_set_level(log_level_t level);
log_level_t log_get_level(void);
void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif

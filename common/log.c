#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static char g_tag[64] = "crl";
static int g_level = -1;

void log_set_tag(const char *tag)
{
    snprintf(g_tag, sizeof g_tag, "%s", tag ? tag : "crl");
}

void log_set_level(log_level_t level)
{
    g_level = (int)level;
}

log_level_t log_get_level(void)
{
    if (g_level < 0) {
        const char *e = getenv("CRL_LOG_LEVEL");
        g_level = LOG_INFO;
        if (e) {
            if (!strcasecmp(e, "debug"))
                g_level = LOG_DEBUG;
            else if (!strcasecmp(e, "warn"))
                g_level = LOG_WARN;
            else if (!strcasecmp(e, "error"))
                g_level = LOG_ERROR;
        }
    }
    return (log_level_t)g_level;
}

void log_msg(log_level_t level, const char *fmt, ...)
{
    if (level < log_get_level())
        return;
    static const char *names[] = {"debug", "info", "WARN", "ERROR"};
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %s %s: ", tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, g_tag, names[level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line - 1)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* One write() per line so concurrent threads and processes do not interleave. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

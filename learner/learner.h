/* learner.h: entry points of crl-learner's subcommands (one file each).
 * Each takes argv with argv[0] = the subcommand name and returns the exit
 * status (0 ok, 1 run failed, 2 usage/config error). */
#ifndef CRL_LEARNER_H
#define CRL_LEARNER_H

#include <stddef.h>

int learner_sft_main(int argc, char **argv);    /* learner/sft.c */
int learner_rl_main(int argc, char **argv);     /* learner/rl.c */
int learner_replay_main(int argc, char **argv); /* learner/replay.c */
int learner_config_main(int argc, char **argv); /* learner/config_cmd.c */

/* Small helpers shared by the learner's subcommands. */
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>

/* Writes a message into a caller's error buffer (NULL/0: nothing). */
static inline void errf(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void errf(char *err, size_t len, const char *fmt, ...)
{
    if (!err || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* snprintf through a va_list: a cut string is acceptable for these log and
 * path texts (their buffers are sized for real paths), so gcc's worst-case
 * truncation warnings are avoided on purpose. */
static inline int textf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline int textf(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    return n;
}

static inline int path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static inline int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

#endif

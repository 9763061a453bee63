/* crl-keygen: makes the CurveZMQ key files of a run (DESIGN.md §9,
 * common/security.h). Either named key pairs in a folder, or a whole run's
 * key folder: the servers' pair, the learner's client pair and one pair per
 * actor machine, with every client public key listed in clients/. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "security.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crl-keygen --dir DIR [--force] NAME...\n"
            "       crl-keygen --run-dir DIR [--actors N] [--force]\n"
            "\n"
            "--dir DIR NAME...   writes DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub\n"
            "                    (public) for each NAME; DIR is created if needed.\n"
            "--run-dir DIR       a run's key folder (network.curve_keys_dir=DIR):\n"
            "                      server.key/.pub   learner and brokers (actors need server.pub)\n"
            "                      client.key/.pub   the learner's own client key (default of\n"
            "                                        network.curve_client_key)\n"
            "                      actor-1..N.key/.pub  one per actor machine (--actors N, default 0)\n"
            "                      clients/*.pub     the client keys servers accept\n"
            "--force             overwrite existing key files (otherwise refused)\n"
            "\n"
            "Admit another machine later: crl-keygen --dir DIR NAME, copy DIR/NAME.pub into the\n"
            "learner machine's clients/ folder and send SIGHUP (or restart) learner and broker.\n");
}

/* mkdir -p with mode for the folders created. */
static int make_dirs(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    if (strlen(path) >= sizeof buf)
        return -ENAMETOOLONG;
    strcpy(buf, path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, mode) != 0 && errno != EEXIST)
                return -errno;
            *p = c;
            if (c == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return -ENOTDIR;
    return 0;
}

static int copy_pub(const char *dir, const char *name, int force)
{
    char src[PATH_MAX], dst[PATH_MAX], err[512], pub[SECURITY_Z85_LEN + 1];
    snprintf(src, sizeof src, "%s/%s.pub", dir, name);
    snprintf(dst, sizeof dst, "%s/clients/%s.pub", dir, name);
    if (security_load_pub(src, pub, err, sizeof err) < 0) {
        fprintf(stderr, "crl-keygen: %s\n", err);
        return -1;
    }
    FILE *in = fopen(src, "r");
    if (!in) {
        fprintf(stderr, "crl-keygen: %s: %s\n", src, strerror(errno));
        return -1;
    }
    FILE *out = fopen(dst, force ? "w" : "wx");
    if (!out) {
        fprintf(stderr, "crl-keygen: %s: %s%s\n", dst, strerror(errno),
                errno == EEXIST ? " (use --force to overwrite)" : "");
        fclose(in);
        return -1;
    }
    char buf[4096];
    size_t n;
    int bad = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        bad |= fwrite(buf, 1, n, out) != n;
    bad |= ferror(in);
    fclose(in);
    if (fclose(out) != 0 || bad) {
        fprintf(stderr, "crl-keygen: writing %s failed\n", dst);
        return -1;
    }
    return 0;
}

static int keygen_one(const char *dir, const char *name, int force)
{
    char err[1024], pub[SECURITY_Z85_LEN + 1];
    if (security_keygen(dir, name, force, pub, err, sizeof err) < 0) {
        fprintf(stderr, "crl-keygen: %s\n", err);
        return -1;
    }
    printf("%s/%s.key  %s/%s.pub  public %s\n", dir, name, dir, name, pub);
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *run_dir = NULL;
    long actors = 0;
    int force = 0, n_names = 0;
    const char **names = calloc((size_t)argc, sizeof *names);
    if (!names)
        return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(names);
            return 0;
        } else if (!strcmp(a, "--dir") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strcmp(a, "--run-dir") && i + 1 < argc) {
            run_dir = argv[++i];
        } else if (!strcmp(a, "--actors") && i + 1 < argc) {
            char *end;
            errno = 0;
            actors = strtol(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || actors < 0 || actors > 100000) {
                fprintf(stderr, "crl-keygen: --actors wants a count in [0, 100000], got \"%s\"\n", argv[i]);
                free(names);
                return 2;
            }
        } else if (!strcmp(a, "--force")) {
            force = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "crl-keygen: unknown or incomplete option \"%s\"\n", a);
            usage(stderr);
            free(names);
            return 2;
        } else {
            names[n_names++] = a;
        }
    }
    int rc = 2;
    if ((dir != NULL) == (run_dir != NULL) || (dir && n_names == 0) || (run_dir && n_names > 0) ||
        (dir && actors)) {
        fprintf(stderr, "crl-keygen: give either --dir DIR NAME... or --run-dir DIR [--actors N]\n");
        usage(stderr);
        goto out;
    }
    rc = 1;
    const char *where = dir ? dir : run_dir;
    int e = make_dirs(where, 0700);
    if (e < 0) {
        fprintf(stderr, "crl-keygen: cannot create %s: %s\n", where, strerror(-e));
        goto out;
    }
    if (dir) {
        for (int i = 0; i < n_names; i++)
            if (keygen_one(dir, names[i], force) < 0)
                goto out;
        rc = 0;
        goto out;
    }
    char clients[PATH_MAX];
    snprintf(clients, sizeof clients, "%s/clients", run_dir);
    if ((e = make_dirs(clients, 0755)) < 0) {
        fprintf(stderr, "crl-keygen: cannot create %s: %s\n", clients, strerror(-e));
        goto out;
    }
    if (keygen_one(run_dir, "server", force) < 0 || keygen_one(run_dir, "client", force) < 0 ||
        copy_pub(run_dir, "client", force) < 0)
        goto out;
    for (long a = 1; a <= actors; a++) {
        char name[32];
        snprintf(name, sizeof name, "actor-%ld", a);
        if (keygen_one(run_dir, name, force) < 0 || copy_pub(run_dir, name, force) < 0)
            goto out;
    }
    printf("\nKeys for network.curve_keys_dir=%s. The learner machine keeps the whole folder.\n"
           "Each actor machine k needs server.pub and actor-k.key, e.g.:\n"
           "  ssh HOST mkdir -p %s && scp -p %s/server.pub %s/actor-1.key HOST:%s/\n"
           "and runs crl-actor with --set network.curve_keys_dir=%s "
           "--set network.curve_client_key=%s/actor-1.key\n",
           run_dir, run_dir, run_dir, run_dir, run_dir, run_dir, run_dir);
    rc = 0;
out:
    free(names);
    return rc;
}

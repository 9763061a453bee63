/* security: CurveZMQ keys, a ZAP handler that admits only listed client
 * keys, and the loopback-only bind rule (see security.h, DESIGN.md §9). */
#include "security.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "log.h"

#define KEY_BIN_LEN 32
#define KEY_FILE_MAX_BYTES 4096 /* a key file is ~200 bytes; anything big is not one */
#define KEY_NAME_LEN 64
#define WHAT_LEN 64
#define MAX_CLIENT_KEYS 65536
#define MAX_REFUSALS_LOGGED 4096 /* distinct refused keys logged; then one notice */
#define ZAP_POLL_MS 100          /* how often the ZAP thread checks for stop */
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

#define SECRET_MAGIC "crl-curve-secret-key"
#define PUBLIC_MAGIC "crl-curve-public-key"
#define KEY_FILE_VERSION 1

static const char z85_chars[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

typedef struct {
    uint8_t key[KEY_BIN_LEN];
    char name[KEY_NAME_LEN]; /* file stem in clients/, shown in logs */
    int accept_logged;
} client_key_t;

struct security {
    int curve;
    int has_keys_dir; /* copies of the config bits the bind rule needs */
    int insecure;
    char dir[CONFIG_PATH_LEN];
    char client_key_path[CONFIG_PATH_LEN + 16];
    void *ctx;

    int have_server_secret;
    uint8_t server_secret[KEY_BIN_LEN];
    int have_server_pub;
    uint8_t server_pub[KEY_BIN_LEN];
    int have_client;
    uint8_t client_pub[KEY_BIN_LEN];
    uint8_t client_secret[KEY_BIN_LEN];

    pthread_mutex_t mu; /* guards clients, refused_logged, zap start */
    client_key_t *clients;
    size_t n_clients;
    uint8_t (*refused_logged)[KEY_BIN_LEN];
    size_t n_refused_logged;
    int refusal_cap_noted;
    int empty_list_warned;

    int zap_started;
    pthread_t zap_thread;
    void *zap_sock; /* owned by the ZAP thread once started */
    atomic_int stop;
    atomic_uint_fast64_t accepted;
    atomic_uint_fast64_t refused;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---------- Z85 and key files ---------- */

int security_z85_valid(const char *s)
{
    if (!s || strlen(s) != SECURITY_Z85_LEN)
        return 0;
    /* Every 5 characters encode one 32-bit word; some 5-character strings
     * (up to 85^5 - 1) overflow it, and libzmq's decoder may not say so. */
    for (int g = 0; g < SECURITY_Z85_LEN; g += 5) {
        uint64_t v = 0;
        for (int i = 0; i < 5; i++) {
            const char *p = strchr(z85_chars, s[g + i]);
            if (!p || s[g + i] == '\0')
                return 0;
            v = v * 85 + (uint64_t)(p - z85_chars);
        }
        if (v > UINT32_MAX)
            return 0;
    }
    return 1;
}

static int z85_to_bin(const char *z85, uint8_t out[KEY_BIN_LEN])
{
    if (!security_z85_valid(z85))
        return -EINVAL;
    return zmq_z85_decode(out, z85) ? 0 : -EINVAL;
}

static int name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= KEY_NAME_LEN || name[0] == '.')
        return 0;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return 0;
    return 1;
}

/* Reads a whole small file into buf (NUL-terminated). */
static int read_small_file(const char *path, char *buf, size_t cap, struct stat *st, char *err,
                           size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        set_err(err, errlen, "%s: %s", path, e == ENOENT ? "missing" : strerror(e));
        return -e;
    }
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -EINVAL;
    }
    size_t used = 0;
    for (;;) {
        if (used + 1 >= cap) {
            set_err(err, errlen, "%s: larger than %zu bytes, not a crl key file", path, cap - 1);
            close(fd);
            return -EINVAL;
        }
        ssize_t r = read(fd, buf + used, cap - 1 - used);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            set_err(err, errlen, "%s: read: %s", path, strerror(e));
            close(fd);
            return -e;
        }
        if (r == 0)
            break;
        used += (size_t)r;
    }
    close(fd);
    buf[used] = '\0';
    if (memchr(buf, '\0', used)) {
        set_err(err, errlen, "%s: contains NUL bytes, not a crl key file", path);
        return -EINVAL;
    }
    return 0;
}

/* Parses "MAGIC 1" then "name X", "public Z85" and (secret files)
 * "secret Z85" lines; '#' comments and blank lines are skipped. */
static int parse_key_text(const char *path, char *text, const char *magic, int want_secret,
                          char pub[SECURITY_Z85_LEN + 1], char secret[SECURITY_Z85_LEN + 1], char *err,
                          size_t errlen)
{
    int line_no = 0, seen_magic = 0, seen_pub = 0, seen_secret = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        size_t n = strlen(line);
        while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
            line[--n] = '\0';
        while (*line == ' ' || *line == '\t')
            line++;
        if (*line == '\0' || *line == '#')
            continue;
        char *sp = strchr(line, ' ');
        const char *val = sp ? sp + 1 : "";
        if (sp)
            *sp = '\0';
        while (*val == ' ')
            val++;
        if (!seen_magic) {
            if (strcmp(line, magic) != 0) {
                const char *other = strcmp(magic, SECRET_MAGIC) == 0 ? PUBLIC_MAGIC : SECRET_MAGIC;
                if (strcmp(line, other) == 0)
                    set_err(err, errlen, "%s: is a %s file, expected a %s file", path,
                            strcmp(other, SECRET_MAGIC) == 0 ? "secret key (.key)" : "public key (.pub)",
                            want_secret ? "secret key (.key)" : "public key (.pub)");
                else
                    set_err(err, errlen, "%s: line %d: not a crl key file (expected \"%s %d\" first; make keys with crl-keygen)",
                            path, line_no, magic, KEY_FILE_VERSION);
                return -EINVAL;
            }
            char *end = NULL;
            long v = strtol(val, &end, 10);
            if (end == val || *end != '\0' || v != KEY_FILE_VERSION) {
                set_err(err, errlen, "%s: line %d: unsupported key file version \"%s\" (this crl reads %d)",
                        path, line_no, val, KEY_FILE_VERSION);
                return -EINVAL;
            }
            seen_magic = 1;
            continue;
        }
        if (strcmp(line, "name") == 0)
            continue; /* informational */
        char *dst = NULL;
        if (strcmp(line, "public") == 0 && !seen_pub) {
            dst = pub;
            seen_pub = 1;
        } else if (strcmp(line, "secret") == 0 && want_secret && !seen_secret) {
            dst = secret;
            seen_secret = 1;
        } else {
            set_err(err, errlen, "%s: line %d: unexpected or repeated field \"%s\"", path, line_no, line);
            return -EINVAL;
        }
        if (!security_z85_valid(val)) {
            set_err(err, errlen, "%s: line %d: %s key is not a valid 40-character Z85 CurveZMQ key (got %zu characters)",
                    path, line_no, line, strlen(val));
            return -EINVAL;
        }
        memcpy(dst, val, SECURITY_Z85_LEN + 1);
    }
    if (!seen_magic) {
        set_err(err, errlen, "%s: empty, not a crl key file", path);
        return -EINVAL;
    }
    if (!seen_pub || (want_secret && !seen_secret)) {
        set_err(err, errlen, "%s: no \"%s\" line", path, !seen_pub ? "public" : "secret");
        return -EINVAL;
    }
    return 0;
}

int security_load_key(const char *path, char pub[SECURITY_Z85_LEN + 1], char secret[SECURITY_Z85_LEN + 1],
                      char *err, size_t errlen)
{
    char buf[KEY_FILE_MAX_BYTES];
    struct stat st;
    int rc = read_small_file(path, buf, sizeof buf, &st, err, errlen);
    if (rc < 0)
        return rc;
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        log_warn("%s: secret key is accessible by group/others (mode %04o): run chmod 600 %s", path,
                 (unsigned)(st.st_mode & 07777), path);
    rc = parse_key_text(path, buf, SECRET_MAGIC, 1, pub, secret, err, errlen);
    explicit_bzero(buf, sizeof buf);
    if (rc < 0)
        return rc;
    char derived[SECURITY_Z85_LEN + 1];
    if (zmq_curve_public(derived, secret) != 0) {
        set_err(err, errlen, "%s: cannot derive the public key from the secret one: %s", path,
                zmq_strerror(errno));
        explicit_bzero(secret, SECURITY_Z85_LEN + 1);
        return -EINVAL;
    }
    if (strcmp(derived, pub) != 0) {
        set_err(err, errlen, "%s: the public key does not belong to the secret key (file edited or mixed up?)",
                path);
        explicit_bzero(secret, SECURITY_Z85_LEN + 1);
        return -EINVAL;
    }
    return 0;
}

int security_load_pub(const char *path, char pub[SECURITY_Z85_LEN + 1], char *err, size_t errlen)
{
    char buf[KEY_FILE_MAX_BYTES];
    struct stat st;
    int rc = read_small_file(path, buf, sizeof buf, &st, err, errlen);
    if (rc < 0)
        return rc;
    return parse_key_text(path, buf, PUBLIC_MAGIC, 0, pub, NULL, err, errlen);
}

/* Writes text to a temporary file in dir with mode, fsyncs it, and puts it
 * at path: link() (fails if path exists) or, with force, rename(). */
static int write_key_file(const char *dir, const char *path, const char *text, mode_t mode, int force,
                          char *err, size_t errlen)
{
    char tmp[CONFIG_PATH_LEN + 64];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.crl-keygen.XXXXXX", dir) >= sizeof tmp) {
        set_err(err, errlen, "%s: path too long", dir);
        return -ENAMETOOLONG;
    }
    int fd = mkstemp(tmp); /* mode 0600 */
    if (fd < 0) {
        int e = errno;
        set_err(err, errlen, "cannot create a file in %s: %s", dir, strerror(e));
        return -e;
    }
    size_t len = strlen(text), off = 0;
    int e = 0;
    if (fchmod(fd, mode) != 0)
        e = errno;
    while (!e && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            e = w < 0 ? errno : EIO;
            break;
        }
        off += (size_t)w;
    }
    if (!e && fsync(fd) != 0)
        e = errno;
    if (close(fd) != 0 && !e)
        e = errno;
    if (!e) {
        if (force) {
            if (rename(tmp, path) != 0)
                e = errno;
        } else if (link(tmp, path) != 0) {
            e = errno;
        }
    }
    unlink(tmp); /* after rename it is gone already: harmless */
    if (e) {
        if (e == EEXIST)
            set_err(err, errlen, "%s exists already (use --force to overwrite)", path);
        else
            set_err(err, errlen, "cannot write %s: %s", path, strerror(e));
        return -e;
    }
    return 0;
}

int security_keygen(const char *dir, const char *name, int force, char pub_out[SECURITY_Z85_LEN + 1],
                    char *err, size_t errlen)
{
    if (!name_ok(name)) {
        set_err(err, errlen,
                "bad key name \"%s\": use letters, digits, '.', '_' or '-' (not first '.'), at most %d characters",
                name, KEY_NAME_LEN - 1);
        return -EINVAL;
    }
    char kpath[CONFIG_PATH_LEN + KEY_NAME_LEN + 8], ppath[CONFIG_PATH_LEN + KEY_NAME_LEN + 8];
    if ((size_t)snprintf(kpath, sizeof kpath, "%s/%s.key", dir, name) >= sizeof kpath ||
        (size_t)snprintf(ppath, sizeof ppath, "%s/%s.pub", dir, name) >= sizeof ppath) {
        set_err(err, errlen, "%s: path too long", dir);
        return -ENAMETOOLONG;
    }
    /* Refuse before writing either, so a refusal never leaves a half pair. */
    if (!force) {
        struct stat st;
        if (stat(kpath, &st) == 0 || stat(ppath, &st) == 0) {
            set_err(err, errlen, "%s exists already (use --force to overwrite)",
                    stat(kpath, &st) == 0 ? kpath : ppath);
            return -EEXIST;
        }
    }
    char pub[SECURITY_Z85_LEN + 1], secret[SECURITY_Z85_LEN + 1];
    if (zmq_curve_keypair(pub, secret) != 0) {
        set_err(err, errlen, "zmq_curve_keypair: %s (libzmq built without CURVE?)", zmq_strerror(errno));
        return -ENOTSUP;
    }
    char text[1024];
    snprintf(text, sizeof text,
             "# crl CurveZMQ SECRET key: keep it private (mode 0600) and on the one machine that\n"
             "# uses it. Its public half is %s.pub.\n"
             "%s %d\nname %s\npublic %s\nsecret %s\n",
             name, SECRET_MAGIC, KEY_FILE_VERSION, name, pub, secret);
    int rc = write_key_file(dir, kpath, text, 0600, force, err, errlen);
    explicit_bzero(text, sizeof text);
    explicit_bzero(secret, sizeof secret);
    if (rc < 0)
        return rc;
    snprintf(text, sizeof text,
             "# crl CurveZMQ public key. Servers: copy client keys into <keys dir>/clients/;\n"
             "# clients: need the server's server.pub.\n"
             "%s %d\nname %s\npublic %s\n",
             PUBLIC_MAGIC, KEY_FILE_VERSION, name, pub);
    rc = write_key_file(dir, ppath, text, 0644, force, err, errlen);
    if (rc < 0)
        return rc;
    if (pub_out)
        memcpy(pub_out, pub, SECURITY_Z85_LEN + 1);
    return 0;
}

/* ---------- allowed client keys ---------- */

static int cmp_client(const void *a, const void *b)
{
    return strcmp(((const client_key_t *)a)->name, ((const client_key_t *)b)->name);
}

/* Reads dir/clients/NAME.pub into a new sorted array. A missing folder is an
 * empty list. */
static int load_clients(const char *dir, client_key_t **out, size_t *n_out, char *err, size_t errlen)
{
    char cdir[CONFIG_PATH_LEN + 16];
    snprintf(cdir, sizeof cdir, "%s/clients", dir);
    *out = NULL;
    *n_out = 0;
    DIR *d = opendir(cdir);
    if (!d) {
        if (errno == ENOENT)
            return 0;
        int e = errno;
        set_err(err, errlen, "%s: %s", cdir, strerror(e));
        return -e;
    }
    client_key_t *list = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len < 5 || strcmp(de->d_name + len - 4, ".pub") != 0)
            continue;
        if (n == MAX_CLIENT_KEYS) {
            set_err(err, errlen, "%s: more than %d client keys", cdir, MAX_CLIENT_KEYS);
            rc = -E2BIG;
            goto fail;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            client_key_t *nl = realloc(list, nc * sizeof *nl);
            if (!nl) {
                set_err(err, errlen, "out of memory");
                rc = -ENOMEM;
                goto fail;
            }
            list = nl;
            cap = nc;
        }
        char path[sizeof cdir + 256 + 2];
        snprintf(path, sizeof path, "%s/%s", cdir, de->d_name);
        char pub[SECURITY_Z85_LEN + 1];
        rc = security_load_pub(path, pub, err, errlen);
        if (rc < 0)
            goto fail;
        client_key_t *c = &list[n++];
        memset(c, 0, sizeof *c);
        if (z85_to_bin(pub, c->key) < 0) {
            set_err(err, errlen, "%s: public key does not decode", path);
            rc = -EINVAL;
            goto fail;
        }
        snprintf(c->name, sizeof c->name, "%.*s", (int)(len - 4 < KEY_NAME_LEN - 1 ? len - 4 : KEY_NAME_LEN - 1),
                 de->d_name);
    }
    closedir(d);
    if (n > 1)
        qsort(list, n, sizeof *list, cmp_client);
    *out = list;
    *n_out = n;
    return 0;
fail:
    closedir(d);
    free(list);
    return rc;
}

/* ---------- lifecycle ---------- */

/* Loads path into the binary secret (and public) key if the file exists.
 * 1 = loaded, 0 = absent, <0 = error. */
static int load_key_if_present(const char *path, uint8_t pub[KEY_BIN_LEN], uint8_t secret[KEY_BIN_LEN],
                               char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT)
        return 0;
    char pz[SECURITY_Z85_LEN + 1], sz[SECURITY_Z85_LEN + 1];
    int rc = security_load_key(path, pz, sz, err, errlen);
    if (rc < 0)
        return rc;
    rc = z85_to_bin(pz, pub) < 0 || z85_to_bin(sz, secret) < 0 ? -EINVAL : 1;
    explicit_bzero(sz, sizeof sz);
    if (rc < 0)
        set_err(err, errlen, "%s: key does not decode", path);
    return rc;
}

security_t *security_new(const crl_config_t *cfg, void *zmq_ctx, char *err, size_t errlen)
{
    security_t *s = calloc(1, sizeof *s);
    if (!s) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        set_err(err, errlen, "pthread_mutex_init failed");
        free(s);
        return NULL;
    }
    s->ctx = zmq_ctx;
    s->insecure = cfg->network.insecure;
    s->has_keys_dir = cfg->network.curve_keys_dir[0] != '\0';
    if (!s->has_keys_dir)
        return s; /* plain mode */

    s->curve = 1;
    if (!zmq_has("curve")) {
        set_err(err, errlen, "network.curve_keys_dir is set but this libzmq has no CURVE support");
        goto fail;
    }
    if (!zmq_ctx) {
        set_err(err, errlen, "security_new: no ZeroMQ context");
        goto fail;
    }
    snprintf(s->dir, sizeof s->dir, "%s", cfg->network.curve_keys_dir);
    struct stat st;
    if (stat(s->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        set_err(err, errlen,
                "network.curve_keys_dir %s: %s (make keys with: crl-keygen --run-dir %s --actors N)", s->dir,
                stat(s->dir, &st) != 0 ? strerror(errno) : "not a directory", s->dir);
        goto fail;
    }
    if (cfg->network.curve_client_key[0])
        snprintf(s->client_key_path, sizeof s->client_key_path, "%s", cfg->network.curve_client_key);
    else
        snprintf(s->client_key_path, sizeof s->client_key_path, "%s/client.key", s->dir);

    char path[CONFIG_PATH_LEN + 32];
    uint8_t derived_pub[KEY_BIN_LEN];
    snprintf(path, sizeof path, "%s/server.key", s->dir);
    int rc = load_key_if_present(path, derived_pub, s->server_secret, err, errlen);
    if (rc < 0)
        goto fail;
    s->have_server_secret = rc;

    snprintf(path, sizeof path, "%s/server.pub", s->dir);
    if (stat(path, &st) == 0) {
        char pz[SECURITY_Z85_LEN + 1];
        if (security_load_pub(path, pz, err, errlen) < 0)
            goto fail;
        if (z85_to_bin(pz, s->server_pub) < 0) {
            set_err(err, errlen, "%s: public key does not decode", path);
            goto fail;
        }
        s->have_server_pub = 1;
        if (s->have_server_secret && memcmp(derived_pub, s->server_pub, KEY_BIN_LEN) != 0) {
            set_err(err, errlen, "%s does not match %s/server.key (keys from two different crl-keygen runs?)",
                    path, s->dir);
            goto fail;
        }
    } else if (s->have_server_secret) {
        memcpy(s->server_pub, derived_pub, KEY_BIN_LEN); /* a server talking to itself */
        s->have_server_pub = 1;
    }

    rc = load_key_if_present(s->client_key_path, s->client_pub, s->client_secret, err, errlen);
    if (rc < 0)
        goto fail;
    s->have_client = rc;
    if (cfg->network.curve_client_key[0] && !s->have_client) {
        set_err(err, errlen, "network.curve_client_key %s: missing (make it with crl-keygen --dir DIR NAME)",
                s->client_key_path);
        goto fail;
    }
    if (!s->have_server_secret && !s->have_server_pub && !s->have_client) {
        set_err(err, errlen,
                "network.curve_keys_dir %s holds no crl keys (server.key, server.pub or client.key): make them "
                "with crl-keygen --run-dir %s --actors N",
                s->dir, s->dir);
        goto fail;
    }
    if (load_clients(s->dir, &s->clients, &s->n_clients, err, errlen) < 0)
        goto fail;
    return s;
fail:
    security_destroy(&s);
    return NULL;
}

void security_destroy(security_t **sp)
{
    if (!sp || !*sp)
        return;
    security_t *s = *sp;
    if (s->zap_started) {
        atomic_store(&s->stop, 1);
        pthread_join(s->zap_thread, NULL);
    }
    free(s->clients);
    free(s->refused_logged);
    pthread_mutex_destroy(&s->mu);
    explicit_bzero(s, sizeof *s); /* secret keys */
    free(s);
    *sp = NULL;
}

int security_is_curve(const security_t *s)
{
    return s && s->curve;
}

void security_get_counters(const security_t *s, security_counters_t *c)
{
    memset(c, 0, sizeof *c);
    if (!s)
        return;
    security_t *m = (security_t *)s; /* the mutex, not the data, changes */
    c->accepted = atomic_load(&m->accepted);
    c->refused = atomic_load(&m->refused);
    pthread_mutex_lock(&m->mu);
    c->allowed_keys = m->n_clients;
    pthread_mutex_unlock(&m->mu);
}

int security_reload_clients(security_t *s)
{
    if (!s || !s->curve)
        return 0;
    char err[512];
    client_key_t *list = NULL;
    size_t n = 0;
    int rc = load_clients(s->dir, &list, &n, err, sizeof err);
    if (rc < 0) {
        log_error("reloading client keys: %s; keeping the previous list", err);
        return -EINVAL;
    }
    pthread_mutex_lock(&s->mu);
    size_t old = s->n_clients;
    free(s->clients);
    s->clients = list;
    s->n_clients = n;
    s->empty_list_warned = 0;
    pthread_mutex_unlock(&s->mu);
    log_info("reloaded client keys from %s/clients: %zu listed (was %zu)", s->dir, n, old);
    return (int)n;
}

/* ---------- ZAP handler (RFC 27) ---------- */

static int frame_is(const zmq_msg_t *m, const char *text)
{
    size_t n = strlen(text);
    return zmq_msg_size((zmq_msg_t *)m) == n && memcmp(zmq_msg_data((zmq_msg_t *)m), text, n) == 0;
}

static void frame_text(zmq_msg_t *m, char *buf, size_t len)
{
    size_t n = zmq_msg_size(m);
    if (n >= len)
        n = len - 1;
    const char *d = zmq_msg_data(m);
    for (size_t i = 0; i < n; i++)
        buf[i] = (d[i] >= ' ' && d[i] < 0x7f) ? d[i] : '?';
    buf[n] = '\0';
}

/* Decides on one key: 1 = listed (name copied), 0 = not. Logs the first
 * acceptance and the first refusal of each key. */
static int zap_decide(security_t *s, const uint8_t key[KEY_BIN_LEN], const char *addr, const char *what,
                      char *user, size_t user_len)
{
    char z85[SECURITY_Z85_LEN + 1];
    if (!zmq_z85_encode(z85, key, KEY_BIN_LEN))
        snprintf(z85, sizeof z85, "?");
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n_clients; i++) {
        client_key_t *c = &s->clients[i];
        if (memcmp(c->key, key, KEY_BIN_LEN) == 0) {
            snprintf(user, user_len, "%s", c->name);
            int first = !c->accept_logged;
            c->accept_logged = 1;
            pthread_mutex_unlock(&s->mu);
            if (first)
                log_info("accepted client key %s (clients/%s.pub) from %s on %s socket", z85, c->name, addr, what);
            return 1;
        }
    }
    int seen = 0;
    for (size_t i = 0; i < s->n_refused_logged && !seen; i++)
        seen = memcmp(s->refused_logged[i], key, KEY_BIN_LEN) == 0;
    int log_it = 0, note_cap = 0;
    if (!seen) {
        if (s->n_refused_logged < MAX_REFUSALS_LOGGED) {
            if (!s->refused_logged)
                s->refused_logged = malloc(MAX_REFUSALS_LOGGED * sizeof *s->refused_logged);
            if (s->refused_logged) {
                memcpy(s->refused_logged[s->n_refused_logged++], key, KEY_BIN_LEN);
                log_it = 1;
            }
        } else if (!s->refusal_cap_noted) {
            s->refusal_cap_noted = note_cap = 1;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (log_it)
        log_warn("refused unlisted client key %s from %s on %s socket (to admit it, copy its .pub into %s/clients/ "
                 "and reload)",
                 z85, addr, what, s->dir);
    if (note_cap)
        log_warn("more than %d distinct client keys refused; further refusals are counted, not logged",
                 MAX_REFUSALS_LOGGED);
    return 0;
}

/* Handles one ZAP request on the REP socket: reads every frame, always
 * replies (the REP state machine needs it). -1 when the context is gone. */
static int zap_handle(security_t *s)
{
    enum { MAX_FRAMES = 8 };
    zmq_msg_t f[MAX_FRAMES];
    int nf = 0, more = 1, extra = 0;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s->zap_sock, 0) < 0) {
            int e = errno;
            zmq_msg_close(&m);
            for (int i = 0; i < nf; i++)
                zmq_msg_close(&f[i]);
            return e == ETERM ? -1 : 0;
        }
        more = zmq_msg_more(&m);
        if (nf < MAX_FRAMES)
            f[nf++] = m;
        else {
            extra++;
            zmq_msg_close(&m);
        }
    }
    const char *status = "400", *text = "unlisted client key";
    char user[KEY_NAME_LEN] = "";
    char what[WHAT_LEN] = "?", addr[128] = "?";
    if (nf >= 6) {
        frame_text(&f[2], what, sizeof what);
        frame_text(&f[3], addr, sizeof addr);
    }
    if (nf < 6 || extra || !frame_is(&f[0], "1.0")) {
        status = "500";
        text = "malformed ZAP request";
        log_error("ZAP: malformed request (%d frames) on %s socket; refusing", nf + extra, what);
    } else if (!frame_is(&f[5], "CURVE") || nf != 7 || zmq_msg_size(&f[6]) != KEY_BIN_LEN) {
        text = "only CurveZMQ clients are admitted";
        log_warn("refused a non-CurveZMQ client from %s on %s socket", addr, what);
    } else if (zap_decide(s, zmq_msg_data(&f[6]), addr, what, user, sizeof user)) {
        status = "200";
        text = "OK";
    }
    if (status[0] == '2')
        atomic_fetch_add(&s->accepted, 1);
    else
        atomic_fetch_add(&s->refused, 1);

    const void *req_id = nf >= 2 ? zmq_msg_data(&f[1]) : "";
    size_t req_len = nf >= 2 ? zmq_msg_size(&f[1]) : 0;
    int rc = 0;
    if (zmq_send(s->zap_sock, "1.0", 3, ZMQ_SNDMORE) < 0 || zmq_send(s->zap_sock, req_id, req_len, ZMQ_SNDMORE) < 0 ||
        zmq_send(s->zap_sock, status, 3, ZMQ_SNDMORE) < 0 ||
        zmq_send(s->zap_sock, text, strlen(text), ZMQ_SNDMORE) < 0 ||
        zmq_send(s->zap_sock, user, strlen(user), ZMQ_SNDMORE) < 0 || zmq_send(s->zap_sock, "", 0, 0) < 0) {
        if (errno == ETERM)
            rc = -1;
        else
            log_error("ZAP: cannot reply: %s", zmq_strerror(errno));
    }
    for (int i = 0; i < nf; i++)
        zmq_msg_close(&f[i]);
    return rc;
}

static void *zap_main(void *arg)
{
    security_t *s = arg;
    zmq_pollitem_t it = {.socket = s->zap_sock, .events = ZMQ_POLLIN};
    /* Runs until security_destroy or zmq_ctx_term. It must not stop on
     * other errors: with no ZAP handler bound, libzmq admits every client. */
    while (!atomic_load(&s->stop)) {
        int rc = zmq_poll(&it, 1, ZAP_POLL_MS);
        if (rc < 0) {
            if (errno == ETERM)
                break;
            if (errno != EINTR)
                log_error("ZAP: zmq_poll: %s", zmq_strerror(errno));
            continue;
        }
        if (rc > 0 && zap_handle(s) < 0)
            break;
    }
    zmq_close(s->zap_sock);
    return NULL;
}

static int zap_start(security_t *s)
{
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if (s->zap_started)
        goto out;
    void *z = zmq_socket(s->ctx, ZMQ_REP);
    if (!z) {
        rc = -errno;
        log_error("ZAP handler: zmq_socket: %s", zmq_strerror(errno));
        goto out;
    }
    int linger = 0;
    if (zmq_setsockopt(z, ZMQ_LINGER, &linger, sizeof linger) != 0 || zmq_bind(z, ZAP_ENDPOINT) != 0) {
        rc = -errno;
        log_error("ZAP handler: cannot bind %s: %s%s", ZAP_ENDPOINT, zmq_strerror(errno),
                  errno == EADDRINUSE ? " (another ZAP handler runs in this ZeroMQ context: one security_t per context)"
                                      : "");
        zmq_close(z);
        goto out;
    }
    s->zap_sock = z;
    if ((rc = pthread_create(&s->zap_thread, NULL, zap_main, s)) != 0) {
        log_error("ZAP handler: pthread_create: %s", strerror(rc));
        rc = -rc;
        zmq_close(z);
        s->zap_sock = NULL;
        goto out;
    }
    s->zap_started = 1;
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---------- sockets ---------- */

int security_server_socket(security_t *s, void *sock, const char *what)
{
    if (!s || !sock)
        return -EINVAL;
    if (!s->curve)
        return 0;
    if (!s->have_server_secret) {
        log_error("%s socket needs the server secret key %s/server.key, which is missing (crl-keygen --run-dir "
                  "%s makes it)",
                  what, s->dir, s->dir);
        return -ENOENT;
    }
    int rc = zap_start(s);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&s->mu);
    int warn_empty = s->n_clients == 0 && !s->empty_list_warned;
    if (warn_empty)
        s->empty_list_warned = 1;
    pthread_mutex_unlock(&s->mu);
    if (warn_empty)
        log_warn("%s/clients/ lists no client keys: every client will be refused until keys are added and reloaded",
                 s->dir);
    int one = 1;
    char domain[WHAT_LEN];
    snprintf(domain, sizeof domain, "%s", what ? what : "crl");
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, s->server_secret, KEY_BIN_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) != 0) {
        rc = -errno;
        log_error("%s socket: setting CurveZMQ server options: %s", domain, zmq_strerror(errno));
        return rc;
    }
    return 0;
}

int security_client_socket(security_t *s, void *sock)
{
    if (!s || !sock)
        return -EINVAL;
    if (!s->curve)
        return 0;
    if (!s->have_server_pub) {
        log_error("connecting needs the server public key %s/server.pub, which is missing (copy it from the learner "
                  "machine)",
                  s->dir);
        return -ENOENT;
    }
    if (!s->have_client) {
        log_error("connecting needs this process's client key %s, which is missing (crl-keygen --dir %s NAME "
                  "makes one; list its .pub in the servers' clients/ and set network.curve_client_key)",
                  s->client_key_path, s->dir);
        return -ENOENT;
    }
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, s->server_pub, KEY_BIN_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, s->client_pub, KEY_BIN_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, s->client_secret, KEY_BIN_LEN) != 0) {
        int rc = -errno;
        log_error("setting CurveZMQ client options: %s", zmq_strerror(errno));
        return rc;
    }
    return 0;
}

static int check_bind_flags(int has_keys, int insecure, const char *endpoint, char *err, size_t errlen)
{
    if (config_endpoint_is_local(endpoint) || has_keys)
        return 0;
    if (insecure) {
        log_warn("!!! INSECURE: binding %s WITHOUT CurveZMQ (network.insecure=true): anyone who can reach this "
                 "port can read the traffic, send trajectories and take the weights. Only do this on a trusted "
                 "network; see launch/README-multi.md for keys. !!!",
                 endpoint);
        return 0;
    }
    set_err(err, errlen,
            "refusing to bind %s: not a loopback address and network.curve_keys_dir is empty. Make keys "
            "(crl-keygen --run-dir DIR --actors N) and set network.curve_keys_dir=DIR, or set "
            "network.insecure=true on a trusted network",
            endpoint);
    return -EPERM;
}

int security_check_bind(const crl_config_t *cfg, const char *endpoint, char *err, size_t errlen)
{
    return check_bind_flags(cfg->network.curve_keys_dir[0] != '\0', cfg->network.insecure, endpoint, err,
                            errlen);
}

int security_bind(security_t *s, void *sock, const char *what, const char *endpoint, char *err, size_t errlen)
{
    if (!s || !sock || !endpoint)
        return -EINVAL;
    int rc = check_bind_flags(s->has_keys_dir, s->insecure, endpoint, err, errlen);
    if (rc < 0)
        return rc;
    rc = security_server_socket(s, sock, what);
    if (rc < 0) {
        set_err(err, errlen, "cannot secure the %s socket (%s): see the log above", what, endpoint);
        return rc;
    }
    if (zmq_bind(sock, endpoint) != 0) {
        rc = -errno;
        set_err(err, errlen, "cannot bind the %s socket to %s: %s", what, endpoint, zmq_strerror(errno));
        return rc;
    }
    return 0;
}

int security_connect(security_t *s, void *sock, const char *endpoint, char *err, size_t errlen)
{
    if (!s || !sock || !endpoint)
        return -EINVAL;
    int rc = security_client_socket(s, sock);
    if (rc < 0) {
        set_err(err, errlen, "cannot secure the connection to %s: see the log above", endpoint);
        return rc;
    }
    if (zmq_connect(sock, endpoint) != 0) {
        rc = -errno;
        set_err(err, errlen, "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
        return rc;
    }
    return 0;
}

/* Tests of common/security (CurveZMQ keys, the ZAP handler, the bind rule)
 * and of crl-keygen. A server ROUTER binds tcp://127.0.0.1:* in its own
 * ZeroMQ context; clients connect from a second context, as another process
 * would. "Nothing gets through" is checked by polling the server for
 * NOTHING_MS (1 s: a listed client's message arrives in a few ms on
 * loopback, so an honest refusal and a slow machine are far apart). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "config.h"
#include "security.h"

#define ARRIVE_MS 5000 /* a message that should arrive: generous, shared machine */
#define NOTHING_MS 1000

/* ------------------------------------------------------------ helpers */

static void make_tmp(char *out, size_t len)
{
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(out, len, "%s/security.XXXXXX", base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(out), "mkdtemp %s: %s", out, strerror(errno));
}

static void keygen(const char *dir, const char *name, char pub[SECURITY_Z85_LEN + 1])
{
    char err[512] = "";
    cr_assert_eq(security_keygen(dir, name, 0, pub, err, sizeof err), 0, "security_keygen %s/%s: %s", dir, name,
                 err);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    cr_assert_eq(fchmod(fd, mode), 0);
    close(fd);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Lists dir/name.pub in dir/clients/. */
static void list_client(const char *dir, const char *name)
{
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/%s.pub", dir, name);
    snprintf(dst, sizeof dst, "%s/clients", dir);
    mkdir(dst, 0755);
    snprintf(dst, sizeof dst, "%s/clients/%s.pub", dir, name);
    char *t = strdup(read_text(src));
    write_file(dst, t, 0644);
    free(t);
}

/* A key folder: server pair, "client" (listed) and "stranger" (not). */
static void make_keys(char *dir, size_t len)
{
    make_tmp(dir, len);
    keygen(dir, "server", NULL);
    keygen(dir, "client", NULL);
    keygen(dir, "stranger", NULL);
    list_client(dir, "client");
}

static void cfg_keys(crl_config_t *cfg, const char *dir, const char *client_name)
{
    cr_assert_eq(config_defaults(cfg), 0);
    if (dir)
        snprintf(cfg->network.curve_keys_dir, sizeof cfg->network.curve_keys_dir, "%s", dir);
    if (dir && client_name)
        snprintf(cfg->network.curve_client_key, sizeof cfg->network.curve_client_key, "%s/%s.key", dir,
                 client_name);
}

/* Redirects stderr (the log) to a file between begin and end. */
typedef struct {
    int saved;
    char path[1100];
} capture_t;

static void capture_begin(capture_t *c, const char *dir)
{
    snprintf(c->path, sizeof c->path, "%s/stderr.txt", dir);
    fflush(stderr);
    c->saved = dup(2);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(fd >= 0 && c->saved >= 0);
    dup2(fd, 2);
    close(fd);
}

static char *capture_end(capture_t *c)
{
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    return read_text(c->path);
}

typedef struct {
    void *ctx;
    security_t *sec;
    void *sock;
    char ep[256];
} server_t;

static void server_start(server_t *s, const crl_config_t *cfg)
{
    char err[512] = "";
    s->ctx = zmq_ctx_new();
    cr_assert_not_null(s->ctx);
    s->sec = security_new(cfg, s->ctx, err, sizeof err);
    cr_assert_not_null(s->sec, "security_new (server): %s", err);
    s->sock = zmq_socket(s->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    cr_assert_eq(security_bind(s->sec, s->sock, "work", "tcp://127.0.0.1:*", err, sizeof err), 0,
                 "security_bind: %s", err);
    size_t n = sizeof s->ep;
    cr_assert_eq(zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->ep, &n), 0);
}

static void server_stop(server_t *s)
{
    zmq_close(s->sock);
    security_destroy(&s->sec);
    cr_assert_null(s->sec);
    zmq_ctx_term(s->ctx);
}

typedef struct {
    void *ctx;
    security_t *sec; /* NULL = a client that does not use crl's security at all */
    void *sock;
} client_t;

static void client_start(client_t *c, const crl_config_t *cfg, const char *ep)
{
    char err[512] = "";
    memset(c, 0, sizeof *c);
    c->ctx = zmq_ctx_new();
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    if (cfg) {
        c->sec = security_new(cfg, c->ctx, err, sizeof err);
        cr_assert_not_null(c->sec, "security_new (client): %s", err);
        cr_assert_eq(security_connect(c->sec, c->sock, ep, err, sizeof err), 0, "security_connect: %s", err);
    } else {
        cr_assert_eq(zmq_connect(c->sock, ep), 0);
    }
    /* Queued until the handshake succeeds; never delivered if it fails. */
    cr_assert_eq(zmq_send(c->sock, "ping", 4, 0), 4, "send: %s", zmq_strerror(errno));
}

static void client_stop(client_t *c)
{
    zmq_close(c->sock);
    security_destroy(&c->sec);
    zmq_ctx_term(c->ctx);
}

/* Waits up to ms for [routing id]["ping"] on the server; 1 if it came. */
static int server_got_ping(server_t *s, int ms, zmq_msg_t *id_out)
{
    zmq_pollitem_t it = {.socket = s->sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, ms) <= 0)
        return 0;
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    cr_assert(zmq_msg_recv(&id, s->sock, 0) >= 0);
    cr_assert(zmq_msg_more(&id));
    cr_assert_eq(zmq_msg_recv(&body, s->sock, 0), 4);
    cr_assert_eq(memcmp(zmq_msg_data(&body), "ping", 4), 0);
    zmq_msg_close(&body);
    if (id_out)
        *id_out = id;
    else
        zmq_msg_close(&id);
    return 1;
}

static uint64_t wait_refused(security_t *sec, uint64_t at_least, int ms)
{
    security_counters_t c;
    for (int t = 0; t < ms; t += 10) {
        security_get_counters(sec, &c);
        if (c.refused >= at_least)
            return c.refused;
        usleep(10000);
    }
    security_get_counters(sec, &c);
    return c.refused;
}

/* ------------------------------------------------------------ sockets */

Test(security, listed_client_exchanges_messages)
{
    char dir[512];
    make_keys(dir, sizeof dir);
    crl_config_t scfg, ccfg;
    cfg_keys(&scfg, dir, NULL);
    cfg_keys(&ccfg, dir, "client");
    server_t s;
    server_start(&s, &scfg);
    cr_assert(security_is_curve(s.sec));
    client_t c;
    client_start(&c, &ccfg, s.ep);

    zmq_msg_t id;
    cr_assert(server_got_ping(&s, ARRIVE_MS, &id), "a listed client's message did not arrive within %d ms",
              ARRIVE_MS);
    cr_assert(zmq_msg_send(&id, s.sock, ZMQ_SNDMORE) >= 0);
    cr_assert_eq(zmq_send(s.sock, "pong", 4, 0), 4);
    zmq_pollitem_t it = {.socket = c.sock, .events = ZMQ_POLLIN};
    cr_assert_eq(zmq_poll(&it, 1, ARRIVE_MS), 1, "the reply did not come back");
    char buf[8];
    cr_assert_eq(zmq_recv(c.sock, buf, sizeof buf, 0), 4);
    cr_assert_eq(memcmp(buf, "pong", 4), 0);

    security_counters_t k;
    security_get_counters(s.sec, &k);
    cr_assert_eq(k.accepted, 1, "accepted: expected 1, got %llu", (unsigned long long)k.accepted);
    cr_assert_eq(k.refused, 0, "refused: expected 0, got %llu", (unsigned long long)k.refused);
    cr_assert_eq(k.allowed_keys, 1);
    client_stop(&c);
    server_stop(&s);
}

Test(security, unlisted_key_gets_nothing_through_and_is_logged_once)
{
    char dir[512];
    make_keys(dir, sizeof dir);
    char stranger_pub[SECURITY_Z85_LEN + 1], secret[SECURITY_Z85_LEN + 1], err[512];
    char path[600];
    snprintf(path, sizeof path, "%s/stranger.key", dir);
    cr_assert_eq(security_load_key(path, stranger_pub, secret, err, sizeof err), 0, "%s", err);

    crl_config_t scfg, ccfg;
    cfg_keys(&scfg, dir, NULL);
    cfg_keys(&ccfg, dir, "stranger");
    capture_t cap;
    capture_begin(&cap, dir);
    server_t s;
    server_start(&s, &scfg);
    client_t c1, c2;
    client_start(&c1, &ccfg, s.ep);
    client_start(&c2, &ccfg, s.ep); /* same key again: counted, not logged again */
    int got = server_got_ping(&s, NOTHING_MS, NULL);
    uint64_t refused = wait_refused(s.sec, 2, ARRIVE_MS);
    client_stop(&c1);
    client_stop(&c2);
    server_stop(&s);
    char *log = capture_end(&cap);

    cr_assert_not(got, "an unlisted client's message arrived");
    cr_assert_geq(refused, 2, "refused counter: expected >= 2, got %llu", (unsigned long long)refused);
    char want[256];
    snprintf(want, sizeof want, "refused unlisted client key %s from 127.0.0.1", stranger_pub);
    const char *hit = strstr(log, want);
    cr_assert_not_null(hit, "log lacks \"%s\":\n%s", want, log);
    cr_assert_not_null(strstr(hit, "on work socket"), "log lacks the socket name:\n%s", log);
    cr_assert_null(strstr(hit + 1, want), "the refusal was logged twice:\n%s", log);
}

Test(security, client_without_curve_gets_nothing_through)
{
    char dir[512];
    make_keys(dir, sizeof dir);
    crl_config_t scfg;
    cfg_keys(&scfg, dir, NULL);
    server_t s;
    server_start(&s, &scfg);
    client_t c;
    client_start(&c, NULL, s.ep);
    cr_assert_not(server_got_ping(&s, NOTHING_MS, NULL), "a client without CurveZMQ got a message through");
    security_counters_t k;
    security_get_counters(s.sec, &k);
    cr_assert_eq(k.accepted, 0);
    client_stop(&c);
    server_stop(&s);
}

Test(security, plain_mode_without_keys)
{
    crl_config_t cfg;
    cfg_keys(&cfg, NULL, NULL);
    server_t s;
    server_start(&s, &cfg);
    cr_assert_not(security_is_curve(s.sec));
    client_t c;
    client_start(&c, &cfg, s.ep);
    cr_assert(server_got_ping(&s, ARRIVE_MS, NULL), "plain mode: message did not arrive");
    cr_assert_eq(security_reload_clients(s.sec), 0);
    client_stop(&c);
    server_stop(&s);
}

Test(security, reload_admits_a_newly_listed_key)
{
    char dir[512];
    make_keys(dir, sizeof dir);
    crl_config_t scfg, ccfg;
    cfg_keys(&scfg, dir, NULL);
    cfg_keys(&ccfg, dir, "stranger");
    server_t s;
    server_start(&s, &scfg);
    client_t c;
    client_start(&c, &ccfg, s.ep);
    cr_assert_not(server_got_ping(&s, NOTHING_MS, NULL), "refused before the reload");
    cr_assert_geq(wait_refused(s.sec, 1, ARRIVE_MS), 1);
    client_stop(&c);

    /* A bad file makes the reload fail and keeps the old list. */
    char bad[700];
    snprintf(bad, sizeof bad, "%s/clients/zz-bad.pub", dir);
    write_file(bad, "crl-curve-public-key 1\npublic tooshort\n", 0644);
    cr_assert_eq(security_reload_clients(s.sec), -EINVAL);
    security_counters_t k;
    security_get_counters(s.sec, &k);
    cr_assert_eq(k.allowed_keys, 1, "after a failed reload: expected 1 key, got %llu",
                 (unsigned long long)k.allowed_keys);
    unlink(bad);

    list_client(dir, "stranger");
    int n = security_reload_clients(s.sec);
    cr_assert_eq(n, 2, "reload: expected 2 keys, got %d", n);
    client_start(&c, &ccfg, s.ep);
    cr_assert(server_got_ping(&s, ARRIVE_MS, NULL), "the newly listed key was not admitted after reload");
    client_stop(&c);
    server_stop(&s);
}

Test(security, destroy_before_or_after_ctx_term)
{
    char dir[512];
    make_keys(dir, sizeof dir);
    crl_config_t cfg;
    cfg_keys(&cfg, dir, NULL);
    server_t s;
    server_start(&s, &cfg);
    /* Context first: the ZAP thread must notice and let zmq_ctx_term finish. */
    zmq_close(s.sock);
    cr_assert_eq(zmq_ctx_term(s.ctx), 0);
    security_destroy(&s.sec);
    cr_assert_null(s.sec);
    security_destroy(&s.sec); /* NULL: no-op */
}

Test(security, one_zap_handler_per_context)
{
    char dir[512];
    make_keys(dir, sizeof dir);
    crl_config_t cfg;
    cfg_keys(&cfg, dir, NULL);
    server_t s;
    server_start(&s, &cfg);
    char err[512] = "";
    security_t *second = security_new(&cfg, s.ctx, err, sizeof err);
    cr_assert_not_null(second, "%s", err);
    void *sock = zmq_socket(s.ctx, ZMQ_ROUTER);
    cr_assert_lt(security_bind(second, sock, "fetch", "tcp://127.0.0.1:*", err, sizeof err), 0,
                 "a second ZAP handler in one context must fail, not silently share");
    zmq_close(sock);
    security_destroy(&second);
    server_stop(&s);
}

Test(security, missing_role_keys_fail_clearly)
{
    char dir[512], err[512] = "";
    make_tmp(dir, sizeof dir);
    keygen(dir, "server", NULL);
    char path[700];
    snprintf(path, sizeof path, "%s/server.key", dir);
    cr_assert_eq(unlink(path), 0); /* an actor machine: server.pub only, and no client key yet */
    crl_config_t cfg;
    cfg_keys(&cfg, dir, NULL);
    void *ctx = zmq_ctx_new();
    security_t *sec = security_new(&cfg, ctx, err, sizeof err);
    cr_assert_not_null(sec, "%s", err);
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    cr_assert_eq(security_connect(sec, sock, "tcp://127.0.0.1:1", err, sizeof err), -ENOENT);
    void *srv = zmq_socket(ctx, ZMQ_ROUTER);
    cr_assert_eq(security_server_socket(sec, srv, "work"), -ENOENT);
    zmq_close(sock);
    zmq_close(srv);
    security_destroy(&sec);
    zmq_ctx_term(ctx);

    /* An explicitly named client key that is not there. */
    cfg_keys(&cfg, dir, "nobody");
    ctx = zmq_ctx_new();
    cr_assert_null(security_new(&cfg, ctx, err, sizeof err));
    cr_assert_not_null(strstr(err, "nobody.key"), "error should name the file: %s", err);
    zmq_ctx_term(ctx);
}

/* ------------------------------------------------------------ key files */

Test(security, keygen_round_trip)
{
    char dir[512], err[512] = "", pub[SECURITY_Z85_LEN + 1], pub2[SECURITY_Z85_LEN + 1];
    make_tmp(dir, sizeof dir);
    mode_t old = umask(0); /* the modes must not depend on the caller's umask */
    keygen(dir, "alpha", pub);
    umask(old);
    cr_assert(security_z85_valid(pub), "returned public key is not Z85: %s", pub);

    char kpath[700], ppath[700];
    snprintf(kpath, sizeof kpath, "%s/alpha.key", dir);
    snprintf(ppath, sizeof ppath, "%s/alpha.pub", dir);
    struct stat st;
    cr_assert_eq(stat(kpath, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "alpha.key mode: expected 0600, got %04o", st.st_mode & 0777);
    cr_assert_eq(stat(ppath, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0644, "alpha.pub mode: expected 0644, got %04o", st.st_mode & 0777);

    char kp[SECURITY_Z85_LEN + 1], ks[SECURITY_Z85_LEN + 1], pp[SECURITY_Z85_LEN + 1];
    cr_assert_eq(security_load_key(kpath, kp, ks, err, sizeof err), 0, "%s", err);
    cr_assert_eq(security_load_pub(ppath, pp, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(kp, pub);
    cr_assert_str_eq(pp, pub);
    cr_assert(security_z85_valid(ks));
    char derived[SECURITY_Z85_LEN + 1];
    cr_assert_eq(zmq_curve_public(derived, ks), 0);
    cr_assert_str_eq(derived, pub, "public key does not match the secret: %s vs %s", derived, pub);

    /* No silent overwrite; --force makes a new pair. */
    cr_assert_eq(security_keygen(dir, "alpha", 0, pub2, err, sizeof err), -EEXIST);
    cr_assert_not_null(strstr(err, "--force"), "%s", err);
    cr_assert_eq(security_load_pub(ppath, pp, err, sizeof err), 0);
    cr_assert_str_eq(pp, pub, "a refused keygen changed the file");
    cr_assert_eq(security_keygen(dir, "alpha", 1, pub2, err, sizeof err), 0, "%s", err);
    cr_assert_str_neq(pub2, pub);
    cr_assert_eq(stat(kpath, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "forced alpha.key mode: got %04o", st.st_mode & 0777);

    cr_assert_eq(security_keygen(dir, "../evil", 0, NULL, err, sizeof err), -EINVAL);
    cr_assert_eq(security_keygen(dir, ".hidden", 0, NULL, err, sizeof err), -EINVAL);
}

Test(security, z85_validity)
{
    char pub[SECURITY_Z85_LEN + 1], sec[SECURITY_Z85_LEN + 1];
    cr_assert_eq(zmq_curve_keypair(pub, sec), 0);
    cr_assert(security_z85_valid(pub));
    cr_assert_not(security_z85_valid("short"));
    char bad[SECURITY_Z85_LEN + 1];
    memcpy(bad, pub, sizeof bad);
    bad[7] = '"'; /* not in the Z85 alphabet */
    cr_assert_not(security_z85_valid(bad));
    memcpy(bad, "#####", 5); /* 85^5 - 1 > 2^32 - 1: overflows its word */
    bad[7] = pub[7];
    cr_assert_not(security_z85_valid(bad));
}

Test(security, bad_key_files_name_the_file)
{
    char dir[512], err[1024], path[700];
    crl_config_t cfg;
    void *ctx = zmq_ctx_new();

    /* Malformed server.pub. */
    make_tmp(dir, sizeof dir);
    keygen(dir, "server", NULL);
    snprintf(path, sizeof path, "%s/server.pub", dir);
    write_file(path, "hello world\n", 0644);
    cfg_keys(&cfg, dir, NULL);
    cr_assert_null(security_new(&cfg, ctx, err, sizeof err));
    cr_assert(strstr(err, path) && strstr(err, "not a crl key file"), "got: %s", err);

    /* Bad Z85 in a listed client key. */
    make_keys(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/clients/broken.pub", dir);
    write_file(path, "crl-curve-public-key 1\nname broken\npublic 0123456789012345678901234567890123456\"89\n",
               0644);
    cfg_keys(&cfg, dir, NULL);
    cr_assert_null(security_new(&cfg, ctx, err, sizeof err));
    cr_assert(strstr(err, "clients/broken.pub") && strstr(err, "Z85"), "got: %s", err);

    /* A .key given where a .pub belongs. */
    make_keys(dir, sizeof dir);
    char src[700];
    snprintf(src, sizeof src, "%s/stranger.key", dir);
    snprintf(path, sizeof path, "%s/clients/stranger.pub", dir);
    cr_assert_eq(rename(src, path), 0);
    cfg_keys(&cfg, dir, NULL);
    cr_assert_null(security_new(&cfg, ctx, err, sizeof err));
    cr_assert(strstr(err, "stranger.pub") && strstr(err, "secret key"), "got: %s", err);

    /* Version from the future. */
    make_tmp(dir, sizeof dir);
    keygen(dir, "server", NULL);
    snprintf(path, sizeof path, "%s/server.pub", dir);
    char *t = strdup(read_text(path));
    char *v = strstr(t, "crl-curve-public-key 1");
    cr_assert_not_null(v);
    v[strlen("crl-curve-public-key ")] = '7';
    write_file(path, t, 0644);
    free(t);
    cfg_keys(&cfg, dir, NULL);
    cr_assert_null(security_new(&cfg, ctx, err, sizeof err));
    cr_assert(strstr(err, "version") && strstr(err, "server.pub"), "got: %s", err);

    /* server.pub from another pair than server.key. */
    make_tmp(dir, sizeof dir);
    keygen(dir, "server", NULL);
    keygen(dir, "other", NULL);
    snprintf(src, sizeof src, "%s/other.pub", dir);
    snprintf(path, sizeof path, "%s/server.pub", dir);
    cr_assert_eq(rename(src, path), 0);
    cfg_keys(&cfg, dir, NULL);
    cr_assert_null(security_new(&cfg, ctx, err, sizeof err));
    cr_assert(strstr(err, "server.pub") && strstr(err, "does not match"), "got: %s", err);

    /* Missing and empty key folders. */
    snprintf(path, sizeof path, "%s/nope", dir);
    cfg_keys(&cfg, path, NULL);
    cr_assert_null(security_new(&cfg, ctx, err, sizeof err));
    cr_assert(strstr(err, path) && strstr(err, "crl-keygen"), "got: %s", err);
    make_tmp(dir, sizeof dir);
    cfg_keys(&cfg, dir, NULL);
    cr_assert_null(security_new(&cfg, ctx, err, sizeof err));
    cr_assert(strstr(err, "holds no crl keys"), "got: %s", err);
    zmq_ctx_term(ctx);
}

Test(security, readable_secret_key_warns_but_loads)
{
    char dir[512], err[512] = "", path[700];
    make_keys(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/server.key", dir);
    cr_assert_eq(chmod(path, 0644), 0);
    crl_config_t cfg;
    cfg_keys(&cfg, dir, NULL);
    void *ctx = zmq_ctx_new();
    capture_t cap;
    capture_begin(&cap, dir);
    security_t *sec = security_new(&cfg, ctx, err, sizeof err);
    char *log = capture_end(&cap);
    cr_assert_not_null(sec, "%s", err);
    cr_assert(strstr(log, "server.key") && strstr(log, "chmod 600"), "no permission warning in:\n%s", log);
    security_destroy(&sec);
    zmq_ctx_term(ctx);
}

/* ------------------------------------------------------------ bind rule */

Test(security, check_bind_loopback_only_without_keys)
{
    char dir[512], err[512];
    make_tmp(dir, sizeof dir);
    crl_config_t cfg;
    cfg_keys(&cfg, NULL, NULL);
    const char *local[] = {"tcp://127.0.0.1:5555", "tcp://localhost:5555", "ipc:///tmp/x", "inproc://x",
                           "tcp://127.0.0.1:*"};
    for (size_t i = 0; i < sizeof local / sizeof *local; i++)
        cr_assert_eq(security_check_bind(&cfg, local[i], err, sizeof err), 0, "%s refused: %s", local[i], err);
    const char *remote[] = {"tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "tcp://eth0:5555"};
    for (size_t i = 0; i < sizeof remote / sizeof *remote; i++) {
        err[0] = '\0';
        cr_assert_eq(security_check_bind(&cfg, remote[i], err, sizeof err), -EPERM, "%s accepted", remote[i]);
        cr_assert(strstr(err, remote[i]) && strstr(err, "network.insecure") && strstr(err, "crl-keygen"),
                  "unhelpful error: %s", err);
    }

    /* security_bind applies the same rule and binds nothing. */
    void *ctx = zmq_ctx_new();
    security_t *sec = security_new(&cfg, ctx, err, sizeof err);
    cr_assert_not_null(sec);
    void *sock = zmq_socket(ctx, ZMQ_ROUTER);
    cr_assert_eq(security_bind(sec, sock, "work", "tcp://0.0.0.0:*", err, sizeof err), -EPERM);
    char ep[256] = "";
    size_t n = sizeof ep;
    zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, ep, &n);
    cr_assert_str_eq(ep, "", "bound %s despite the refusal", ep);
    zmq_close(sock);
    security_destroy(&sec);
    zmq_ctx_term(ctx);

    /* insecure: allowed, with a loud warning. */
    cfg.network.insecure = 1;
    capture_t cap;
    capture_begin(&cap, dir);
    int rc = security_check_bind(&cfg, "tcp://0.0.0.0:5555", err, sizeof err);
    char *log = capture_end(&cap);
    cr_assert_eq(rc, 0, "insecure: %s", err);
    cr_assert(strstr(log, "INSECURE") && strstr(log, "tcp://0.0.0.0:5555"), "no loud warning:\n%s", log);

    /* keys: allowed, silently. */
    cfg.network.insecure = 0;
    snprintf(cfg.network.curve_keys_dir, sizeof cfg.network.curve_keys_dir, "%s", dir);
    cr_assert_eq(security_check_bind(&cfg, "tcp://0.0.0.0:5555", err, sizeof err), 0, "%s", err);
    cr_assert_eq(security_check_bind(&cfg, "tcp://*:5555", err, sizeof err), 0, "%s", err);
}

/* ------------------------------------------------------------ crl-keygen */

Test(security, keygen_binary_makes_a_run_folder)
{
    const char *bindir = getenv("CRL_BIN_DIR");
    if (!bindir || !*bindir)
        cr_skip_test("CRL_BIN_DIR is not set (make test sets it to the build's bin folder)");
    char dir[512], cmd[2048], err[512] = "";
    make_tmp(dir, sizeof dir);
    snprintf(cmd, sizeof cmd, "'%s/crl-keygen' --run-dir '%s/keys' --actors 2 >'%s/out.txt' 2>&1", bindir, dir,
             dir);
    char out[700];
    snprintf(out, sizeof out, "%s/out.txt", dir);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed:\n%s", cmd, read_text(out));
    const char *files[] = {"server.key", "server.pub", "client.key", "client.pub", "actor-1.key", "actor-2.pub",
                           "clients/client.pub", "clients/actor-1.pub", "clients/actor-2.pub"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s/keys/%s", dir, files[i]);
        struct stat sb;
        cr_assert_eq(stat(p, &sb), 0, "crl-keygen did not write %s", p);
        if (strstr(files[i], ".key"))
            cr_assert_eq(sb.st_mode & 077, 0, "%s is group/other accessible (%04o)", p, sb.st_mode & 0777);
    }
    char keys[600];
    snprintf(keys, sizeof keys, "%s/keys", dir);
    crl_config_t cfg;
    cfg_keys(&cfg, keys, NULL);
    void *ctx = zmq_ctx_new();
    security_t *sec = security_new(&cfg, ctx, err, sizeof err);
    cr_assert_not_null(sec, "the folder crl-keygen made does not load: %s", err);
    security_counters_t k;
    security_get_counters(sec, &k);
    cr_assert_eq(k.allowed_keys, 3, "expected 3 listed clients, got %llu", (unsigned long long)k.allowed_keys);
    security_destroy(&sec);
    zmq_ctx_term(ctx);

    /* Again without --force: refused, exit status 1. */
    st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "re-running without --force should fail with 1");
    cr_assert_not_null(strstr(read_text(out), "--force"), "%s", read_text(out));
}

/* The broker's announce socket is a PUB: CURVE and the ZAP check apply to
 * SUB clients the same way. */
Test(security, pub_sub_admits_only_listed_keys)
{
    char dir[512], err[512] = "";
    make_keys(dir, sizeof dir);
    crl_config_t scfg, good, bad;
    cfg_keys(&scfg, dir, NULL);
    cfg_keys(&good, dir, "client");
    cfg_keys(&bad, dir, "stranger");
    void *sctx = zmq_ctx_new(), *cctx = zmq_ctx_new();
    security_t *ssec = security_new(&scfg, sctx, err, sizeof err);
    cr_assert_not_null(ssec, "%s", err);
    void *pub = zmq_socket(sctx, ZMQ_PUB);
    cr_assert_eq(security_bind(ssec, pub, "announce", "tcp://127.0.0.1:*", err, sizeof err), 0, "%s", err);
    char ep[256];
    size_t n = sizeof ep;
    cr_assert_eq(zmq_getsockopt(pub, ZMQ_LAST_ENDPOINT, ep, &n), 0);

    security_t *gsec = security_new(&good, cctx, err, sizeof err), *bsec = security_new(&bad, cctx, err, sizeof err);
    cr_assert(gsec && bsec, "%s", err);
    void *gsub = zmq_socket(cctx, ZMQ_SUB), *bsub = zmq_socket(cctx, ZMQ_SUB);
    cr_assert_eq(zmq_setsockopt(gsub, ZMQ_SUBSCRIBE, "", 0), 0);
    cr_assert_eq(zmq_setsockopt(bsub, ZMQ_SUBSCRIBE, "", 0), 0);
    cr_assert_eq(security_connect(gsec, gsub, ep, err, sizeof err), 0, "%s", err);
    cr_assert_eq(security_connect(bsec, bsub, ep, err, sizeof err), 0, "%s", err);

    /* PUB drops messages until a subscription arrives: publish repeatedly. */
    int got_good = 0, got_bad = 0;
    for (int i = 0; i < ARRIVE_MS / 50 && !got_good; i++) {
        zmq_send(pub, "v1", 2, ZMQ_DONTWAIT);
        zmq_pollitem_t it = {.socket = gsub, .events = ZMQ_POLLIN};
        got_good = zmq_poll(&it, 1, 50) == 1;
    }
    for (int i = 0; i < NOTHING_MS / 50; i++) {
        zmq_send(pub, "v1", 2, ZMQ_DONTWAIT);
        zmq_pollitem_t it = {.socket = bsub, .events = ZMQ_POLLIN};
        got_bad |= zmq_poll(&it, 1, 50) == 1;
    }
    cr_assert(got_good, "a listed SUB received no announce within %d ms", ARRIVE_MS);
    cr_assert_not(got_bad, "an unlisted SUB received an announce");
    cr_assert_geq(wait_refused(ssec, 1, ARRIVE_MS), 1);
    int linger = 0;
    zmq_setsockopt(pub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(gsub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(bsub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(pub);
    zmq_close(gsub);
    zmq_close(bsub);
    security_destroy(&ssec);
    security_destroy(&gsec);
    security_destroy(&bsec);
    zmq_ctx_term(sctx);
    zmq_ctx_term(cctx);
}

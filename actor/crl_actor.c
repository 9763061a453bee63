/* crl-actor: one rollout actor (common/actor.h). Reads the run config (or
 * none: an actor can join a running job with just the endpoints), pins
 * itself, sets its BLAS threads, and runs until SIGINT/SIGTERM or the
 * learner says the run is finished.
 *
 * Exit status: 0 clean stop, 1 failure (e.g. a learner whose model this
 * actor cannot serve), 2 usage or config error. */
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actor.h"
#include "config.h"
#include "kernels.h"
#include "log.h"
#include "topology.h"

static actor_t *g_actor;

static void on_signal(int sig)
{
    (void)sig;
    actor_stop(g_actor); /* an atomic increment: async-signal-safe */
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crl-actor [--config FILE] [--set key=value]... [--learner ADDR]\n"
            "                 [--broker-announce ADDR] [--broker-fetch ADDR] [--id NAME] [--help]\n"
            "Samples trajectory groups for the learner with the newest weights from the broker.\n"
            "  --learner ADDR          = --set network.learner_work=ADDR\n"
            "  --broker-announce ADDR  = --set network.broker_announce=ADDR\n"
            "  --broker-fetch ADDR     = --set network.broker_fetch=ADDR\n"
            "  --id NAME               = --set actor.id=NAME (default <hostname>-<pid>)\n"
            "The model comes from the learner's Welcome (the config file's \"model\" section is not\n"
            "used); an explicit --set model.* that differs from the learner's makes the actor refuse.\n"
            "Keys read: actor.* (credits, cpus, threads, id, max_unacked), network.*,\n"
            "broker.chunk_bytes, learner.heartbeat_ms / heartbeat_timeout_ms (until the Welcome).\n"
            "--help-config lists every key. SIGINT/SIGTERM: finish the group in progress, say\n"
            "Bye, exit 0 (twice: abandon the group).\n");
}

/* Looks at the arguments before config_parse_args consumes them. Only an
 * explicit --set model.* counts: a run config always has a "model" section,
 * but the learner takes its model from the checkpoint (rl.init), so the file's
 * model keys say nothing about the model actually being trained. */
static int model_was_given(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--"))
            break;
        if (!strcmp(a, "--set") && i + 1 < argc)
            v = argv[++i];
        else if (!strncmp(a, "--set=", 6))
            v = a + 6;
        if (v && !strncmp(v, "model.", 6))
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static crl_config_t cfg;
    char err[1024];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            break;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    }
    if (config_defaults(&cfg) != 0) {
        fprintf(stderr, "crl-actor: bad built-in config defaults\n");
        return 2;
    }
    int expect_model = model_was_given(argc, argv);
    int rc = config_parse_args(&cfg, &argc, argv, err, sizeof err);
    if (rc == 1) {
        config_print_help(stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "crl-actor: %s\n", err);
        return 2;
    }
    static const struct {
        const char *flag, *key;
    } shortcuts[] = {
        { "--learner", "network.learner_work" },
        { "--broker-announce", "network.broker_announce" },
        { "--broker-fetch", "network.broker_fetch" },
        { "--id", "actor.id" },
    };
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = NULL, *key = NULL;
        for (size_t k = 0; k < sizeof shortcuts / sizeof shortcuts[0] && !key; k++) {
            size_t n = strlen(shortcuts[k].flag);
            if (!strcmp(arg, shortcuts[k].flag)) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "crl-actor: %s needs a value (see --help)\n", arg);
                    return 2;
                }
                key = shortcuts[k].key;
                val = argv[++i];
            } else if (!strncmp(arg, shortcuts[k].flag, n) && arg[n] == '=') {
                key = shortcuts[k].key;
                val = arg + n + 1;
            }
        }
        if (!key) {
            fprintf(stderr, "crl-actor: unexpected argument '%s' (see --help)\n", arg);
            return 2;
        }
        char assign[2 * CONFIG_ADDR_LEN];
        snprintf(assign, sizeof assign, "%s=%s", key, val);
        if (config_set(&cfg, assign, err, sizeof err) != 0) {
            fprintf(stderr, "crl-actor: %s: %s\n", arg, err);
            return 2;
        }
    }
    if (config_validate(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "crl-actor: %s\n", err);
        return 2;
    }

    if (topology_pin(&cfg.actor.cpus, err, sizeof err) != 0) {
        fprintf(stderr, "crl-actor: actor.cpus: %s\n", err);
        return 2;
    }
    k_set_threads(cfg.actor.threads);

    actor_t *a = actor_new(&cfg, expect_model ? &cfg.model : NULL, err, sizeof err);
    if (!a) {
        fprintf(stderr, "crl-actor: %s\n", err);
        return 1;
    }
    char tag[128];
    snprintf(tag, sizeof tag, "actor-%s", actor_id(a));
    log_set_tag(tag);

    g_actor = a;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: zmq_poll returns EINTR at once */
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) {
        fprintf(stderr, "crl-actor: sigaction failed\n");
        actor_destroy(&a);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    rc = actor_run(a, err, sizeof err);
    if (rc != 0)
        log_error("stopped: %s", err);
    /* Block further signals' effect on a destroyed actor. */
    sa.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    g_actor = NULL;
    actor_destroy(&a);
    return rc == 0 ? 0 : 1;
}

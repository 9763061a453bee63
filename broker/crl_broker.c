/* crl-broker: the weights broker process (DESIGN.md §1, §9). A thin main
 * around common/broker: parses the config, pins itself (broker.cpus),
 * serves until SIGINT/SIGTERM, and prints its counters on the way out.
 *   root:  learner --publish--> broker --announce/fetch--> actors
 *   relay: broker.upstream + broker.upstream_announce set: takes weights
 *          from another broker and serves them to the actors near it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "broker.h"
#include "config.h"
#include "log.h"
#include "topology.h"

static broker_t *g_broker; /* for the signal handler only */

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        broker_request_reload(g_broker); /* atomic store: async-signal-safe */
    else
        broker_stop(g_broker); /* an atomic store: async-signal-safe */
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crl-broker [--config FILE]... [--set section.key=value]... [--help] [--help-config]\n"
            "\n"
            "Keeps the newest broker.keep_versions weights versions and serves them to actors:\n"
            "  network.broker_publish   ROUTER where the learner publishes (not bound by a relay)\n"
            "  network.broker_announce  PUB announcing every version (latest re-announced every %d ms)\n"
            "  network.broker_fetch     ROUTER serving chunks of broker.chunk_bytes\n"
            "Relay mode: set broker.upstream (the upstream broker's fetch endpoint) and\n"
            "broker.upstream_announce (its announce endpoint).\n"
            "Pins itself to broker.cpus. SIGINT/SIGTERM stop it (exit 0).\n"
            "--help-config lists every config key.\n",
            BROKER_REANNOUNCE_MS);
}

int main(int argc, char **argv)
{
    crl_config_t cfg;
    char err[2048];
    log_set_tag("broker");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    }
    if (config_defaults(&cfg) < 0) {
        log_error("built-in config defaults are invalid (a bug)");
        return 1;
    }
    int rc = config_parse_args(&cfg, &argc, argv, err, sizeof err);
    if (rc == 1) {
        config_print_help(stdout);
        return 0;
    }
    if (rc < 0) {
        log_error("%s", err);
        fprintf(stderr, "run crl-broker --help for usage, --help-config for the keys\n");
        return 2;
    }
    if (argc > 1) {
        log_error("unexpected argument \"%s\"", argv[1]);
        usage(stderr);
        return 2;
    }
    /* A relay needs both: announces say what to fetch, fetch moves it.
     * (Checked here, not in config_validate: only the broker cares.) */
    if ((cfg.broker.upstream[0] == '\0') != (cfg.broker.upstream_announce[0] == '\0')) {
        log_error("broker.upstream (\"%s\") and broker.upstream_announce (\"%s\") must be set together",
                  cfg.broker.upstream, cfg.broker.upstream_announce);
        return 2;
    }
        if (topology_pin(&cfg.broker.cpus, err, sizeof err) < 0) {
        log_error("broker.cpus: %s", err);
        return 1;
    }
    g_broker = broker_new(&cfg, err, sizeof err);
    if (!g_broker) {
        log_error("%s", err);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
        sigaction(SIGHUP, &sa, NULL) != 0) {
        log_error("sigaction: %s", strerror(errno));
        broker_destroy(&g_broker);
        return 1;
    }
    rc = broker_run(g_broker);
    broker_t *b = g_broker;
    g_broker = NULL; /* a late signal must not touch a freed broker */
    broker_destroy(&b);
    if (rc < 0) {
        log_error("broker failed: %s", strerror(-rc));
        return 1;
    }
    log_info("bye");
    return 0;
}

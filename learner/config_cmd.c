/* crl-learner config: prints the effective run config (after --config
 * files and --set overrides), or single keys with --get, so that scripts
 * (launch/local.sh, make demo) read values exactly as the binaries do. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "learner.h"

int learner_config_main(int argc, char **argv)
{
    crl_config_t cfg;
    char err[1024];
    if (config_defaults(&cfg) != 0) {
        fprintf(stderr, "crl-learner config: built-in defaults do not validate\n");
        return 1;
    }
    int rc = config_parse_args(&cfg, &argc, argv, err, sizeof err);
    if (rc == 1) {
        config_print_help(stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "crl-learner config: %s\n", err);
        return 2;
    }
    int printed = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: crl-learner config [--config FILE] [--set key=value]... [--get KEY]...\n"
                   "Prints the effective config as JSON, or the value of each --get KEY on its own line.\n"
                   "--help-config lists every key.\n");
            return 0;
        }
        if (!strcmp(argv[i], "--get") && i + 1 < argc) {
            char buf[4096];
            if (config_get(&cfg, argv[++i], buf, sizeof buf) != 0) {
                fprintf(stderr, "crl-learner config: unknown key '%s' (see --help-config)\n", argv[i]);
                return 2;
            }
            printf("%s\n", buf);
            printed = 1;
            continue;
        }
        fprintf(stderr, "crl-learner config: unexpected argument '%s'\n", argv[i]);
        return 2;
    }
    if (!printed) {
        char *json = config_to_json(&cfg);
        if (!json)
            return 1;
        printf("%s\n", json);
        free(json);
    }
    return 0;
}

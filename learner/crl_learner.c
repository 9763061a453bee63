/* crl-learner: the learner process. Subcommands:
 *   sft     supervised warm-up of the base model (tokenizer, captions,
 *           policy answers, critic verdicts)
 *   rl      GRPO training from live actors (the default)
 *   replay  train from a recorded trajectory log
 *   config  print the effective config (for scripts) */
#include <stdio.h>
#include <string.h>

#include "learner.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crl-learner [sft|rl|replay|config] [--config FILE] [--set key=value]... [--help]\n"
            "  sft      supervised warm-up of the base model (see crl-learner sft --help)\n"
            "  rl       GRPO from live actors (default; see crl-learner rl --help)\n"
            "  replay   train from a recorded trajectory log\n"
            "  config   print the effective config (or --get KEY), as every binary reads it\n");
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "sft"))
        return learner_sft_main(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "rl"))
        return learner_rl_main(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "config"))
        return learner_config_main(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "replay"))
        return learner_replay_main(argc - 1, argv + 1);
    if (argc >= 2 && argv[1][0] != '-') {
        fprintf(stderr, "crl-learner: unknown subcommand '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    return learner_rl_main(argc, argv);
}

/* crl-learner sft: the supervised warm-up that makes the base model (the
 * model RL starts from). All the work is in common/sft.c; this file is
 * the command line: config, signals, and the final summary. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "learner.h"
#include "log.h"
#include "sft.h"

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crl-learner sft [--config FILE] [--set key=value]... [--help] [--help-config]\n"
            "\n"
            "Supervised warm-up of the base model that RL later improves:\n"
            "  1. data: loads <data.dir>/<data.train>.{policy,critic,captions}.jsonl (and\n"
            "     <data.train>.jsonl); when data.dir has no training files, first writes the\n"
            "     built-in world there (data.grid, data.image_size_px, data.*_scenes, run.seed)\n"
            "  2. tokenizer: tokenizer.path, else <data.dir>/tokenizer.json, else trains a BPE\n"
            "     tokenizer of tokenizer.vocab_size tokens on the training text and saves it there\n"
            "  3. model: model.* from scratch (seed run.seed), or continues\n"
            "     <run.dir>/<run.name>/ckpt/latest when it exists (same data order, same weights\n"
            "     as an uninterrupted run)\n"
            "  4. trains sft.steps steps on batches of sft.batch_tokens tokens mixing captions /\n"
            "     policy answers / critic verdicts by sft.mix_*, with AdamW (sft.lr, sft.warmup,\n"
            "     cosine); the loss is on the answers only; critic pairs are shown half in each\n"
            "     order (data.critic_variant, verdict labels data.verdict_labels)\n"
            "  5. reports a progress line, <run.dir>/<run.name>/metrics.jsonl (+ sft.png), and a\n"
            "     greedy validation on the validation split every %d steps (policy accuracy,\n"
            "     critic accuracy in both orders, share of verdicts naming the first answer)\n"
            "  6. checkpoints <run.dir>/<run.name>/ckpt/step-N every sft.checkpoint_every steps\n"
            "     and at the end (ctrl-C also saves one); ckpt/latest is the base model\n"
            "\n"
            "  --config FILE     JSON run config (repeatable)\n"
            "  --set key=value   override one key, e.g. --set sft.steps=300 (repeatable)\n"
            "  --help-config     every config key with its default\n"
            "\n"
            "Environment: CRL_SFT_VAL_EVERY (steps between validations, 0 = end only),\n"
            "CRL_SFT_VAL_POLICY / CRL_SFT_VAL_CRITIC / CRL_SFT_VAL_CAPTIONS (validation items /\n"
            "pairs / captions).\n",
            200);
}

/* Integer from the environment (validation knobs not yet in the config). */
static int env_int(const char *name, int def, int lo, int hi, int *out)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        *out = def;
        return 0;
    }
    char *end = NULL;
    long x = strtol(v, &end, 10);
    if (!end || *end || x < lo || x > hi) {
        fprintf(stderr, "crl-learner sft: %s='%s': expected an integer in %d..%d\n", name, v, lo, hi);
        return -1;
    }
    *out = (int)x;
    return 0;
}

int learner_sft_main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    log_set_tag("learner");
    crl_config_t cfg;
    char err[2048];
    if (config_defaults(&cfg) != 0) {
        fprintf(stderr, "crl-learner sft: the built-in config defaults are broken (a bug)\n");
        return 1;
    }
    int rc = config_parse_args(&cfg, &argc, argv, err, sizeof(err));
    if (rc == 1) {
        config_print_help(stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "crl-learner sft: %s\n", err);
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "crl-learner sft: unexpected argument '%s' (see crl-learner sft --help)\n",
                argv[1]);
        return 2;
    }
    sft_run_options_t opt;
    sft_run_options_default(&opt);
    opt.val_every = 200;
    /* Validation answers as long as crl-eval and the actors allow. */
    opt.val.max_new_tokens = cfg.rl.max_new_tokens;
    if (env_int("CRL_SFT_VAL_EVERY", opt.val_every, 0, 1 << 30, &opt.val_every) ||
        env_int("CRL_SFT_VAL_POLICY", opt.val.policy_items, 0, 1 << 20, &opt.val.policy_items) ||
        env_int("CRL_SFT_VAL_CRITIC", opt.val.critic_pairs, 0, 1 << 20, &opt.val.critic_pairs) ||
        env_int("CRL_SFT_VAL_CAPTIONS", opt.val.caption_items, 0, 1 << 20, &opt.val.caption_items))
        return 2;
    opt.stop = &g_stop;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    sft_summary_t sum;
    rc = sft_run(&cfg, &opt, &sum, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "crl-learner sft: %s\n", err);
        return 1;
    }
    if (sum.steps_done >= cfg.sft.steps) {
        printf("base model: %s\n", sum.ckpt_dir);
        if (sum.validated)
            printf("validation: policy accuracy %.3f | critic accuracy %.3f, right in both orders "
                   "%.3f, says-%c %.2f\n",
                   sum.val.policy_acc, sum.val.critic_acc, sum.val.critic_both,
                   cfg.data.verdict_labels[0], sum.val.critic_says_a);
    } else {
        printf("stopped at step %ld of %d; checkpoint %s (run again to continue)\n", sum.steps_done,
               cfg.sft.steps, sum.ckpt_dir);
    }
    return 0;
}

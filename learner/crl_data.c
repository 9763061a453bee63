/* crl-data: writes crl's built-in data world (common/world.h) to a folder:
 * DIR/images/NAME.png, DIR/{train,val,test}.{policy,critic,captions}.jsonl and
 * DIR/world.json (the settings that reproduce it), then prints a summary
 * of what was generated. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "world.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crl-data --out DIR [options]\n"
            "Writes crl's built-in grid world: DIR/images/*.png and, per split,\n"
            "DIR/{train,val,test}.{policy,critic,captions}.jsonl (formats: DESIGN.md section 6)\n"
            "plus DIR/world.json. Scenes never repeat across splits.\n"
            "\n"
            "  --out DIR              output folder (created if missing)\n"
            "  --seed N               generator seed (default 1)\n"
            "  --train N              train scenes (default 4000)\n"
            "  --val N                validation scenes (default 300)\n"
            "  --test N               test scenes (default 600)\n"
            "  --grid R[xC]           grid rows x cols, 1..%d (default 3x3)\n"
            "  --image-size PX        image side in pixels (default 16 per cell)\n"
            "  --empty-prob P         chance a cell is empty, 0..0.95 (default 0.5)\n"
            "  --colors N             colours used, 2..%d (default 4)\n"
            "  --shapes N             shapes used, 2..%d (default 3)\n"
            "  --max-count N          count answers balanced over 0..N (default 3)\n"
            "  --policy-per-scene N   policy questions per scene (default 4)\n"
            "  --critic-per-scene N   critic pairs per scene (default 4)\n"
            "  --wrong-reasoning F    share of critic pairs whose wrong answer has the right\n"
            "                         final answer but false reasoning (default 0.15)\n"
            "  --no-grid-lines        do not draw grid lines\n"
            "  --shuffle-captions     list a caption's cells in a random order per scene\n"
            "                         (default: raster order)\n"
            "  --describe-first       every reasoning opens with the whole scene in raster order\n"
            "                         (default: it names only the cells it needs)\n"
            "  --quiet                no summary\n"
            "  --help                 this text\n",
            WORLD_MAX_SIDE, WORLD_MAX_COLORS, WORLD_MAX_SHAPES);
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "crl-data: %s '%s': expected an integer in %ld..%ld\n", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !end || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "crl-data: %s '%s': expected a number in %g..%g\n", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return -1;
        buf[i] = saved;
    }
    return 0;
}

static int write_world_json(const char *dir, const world_config_t *cfg, const size_t n[3])
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/world.json", dir);
    cJSON *o = cJSON_CreateObject();
    char seed[32];
    snprintf(seed, sizeof(seed), "%llu", (unsigned long long)cfg->seed);
    int ok = o && cJSON_AddStringToObject(o, "format", "crl-builtin-world") &&
             cJSON_AddNumberToObject(o, "version", 1) && cJSON_AddStringToObject(o, "seed", seed) &&
             cJSON_AddNumberToObject(o, "rows", cfg->rows) &&
             cJSON_AddNumberToObject(o, "cols", cfg->cols) &&
             cJSON_AddNumberToObject(o, "image_size", cfg->image_size) &&
             cJSON_AddNumberToObject(o, "n_colors", cfg->n_colors) &&
             cJSON_AddNumberToObject(o, "n_shapes", cfg->n_shapes) &&
             cJSON_AddNumberToObject(o, "empty_prob", cfg->empty_prob) &&
             cJSON_AddNumberToObject(o, "max_count", cfg->max_count) &&
             cJSON_AddNumberToObject(o, "policy_per_scene", cfg->policy_per_scene) &&
             cJSON_AddNumberToObject(o, "critic_per_scene", cfg->critic_per_scene) &&
             cJSON_AddNumberToObject(o, "wrong_reasoning_frac", cfg->wrong_reasoning_frac) &&
             cJSON_AddBoolToObject(o, "grid_lines", cfg->grid_lines) &&
             cJSON_AddBoolToObject(o, "caption_shuffle", cfg->caption_shuffle) &&
             cJSON_AddBoolToObject(o, "describe_first", cfg->describe_first) &&
             cJSON_AddNumberToObject(o, "train_scenes", (double)n[0]) &&
             cJSON_AddNumberToObject(o, "val_scenes", (double)n[1]) &&
             cJSON_AddNumberToObject(o, "test_scenes", (double)n[2]);
    char *text = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!text) {
        fprintf(stderr, "crl-data: %s: out of memory\n", path);
        return -1;
    }
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fputs(text, f) == EOF || fputc('\n', f) == EOF) {
        fprintf(stderr, "crl-data: %s: cannot write: %s\n", path, strerror(errno));
        rc = -1;
    }
    if (f && fclose(f) != 0 && rc == 0) {
        fprintf(stderr, "crl-data: %s: cannot write: %s\n", path, strerror(errno));
        rc = -1;
    }
    cJSON_free(text);
    return rc;
}

static void print_summary(const world_config_t *cfg, const world_stats_t st[3])
{
    size_t pol[3] = {0}, cri[3] = {0};
    for (int s = 0; s < 3; s++)
        for (int t = 0; t < WQ_N_TYPES; t++) {
            pol[s] += st[s].policy_by_type[t];
            cri[s] += st[s].critic_by_type[t];
        }
    printf("%-6s %8s %9s %9s %9s\n", "split", "scenes", "captions", "policy", "critic");
    for (int s = 0; s < 3; s++)
        printf("%-6s %8zu %9zu %9zu %9zu\n", world_split_name((world_split_t)s), st[s].scenes,
               st[s].scenes, pol[s], cri[s]);
    printf("\nquestions by type (train policy / critic; policy answer shares in %%)\n");
    for (int t = 0; t < WQ_N_TYPES; t++) {
        const world_stats_t *a = &st[0];
        printf("  %-15s %6zu / %6zu  ", world_qtype_name((world_qtype_t)t), a->policy_by_type[t],
               a->critic_by_type[t]);
        int space = world_answer_space(cfg, (world_qtype_t)t);
        for (int v = 0; v < space; v++) {
            char word[WORLD_ANSWER_MAX];
            double share = a->policy_by_type[t]
                               ? 100.0 * (double)a->policy_answers[t][v] /
                                     (double)a->policy_by_type[t]
                               : 0.0;
            printf(" %s %.0f", world_answer_text(cfg, (world_qtype_t)t, v, word, sizeof(word)),
                   share);
        }
        printf("\n");
    }
    printf("\ncritic pairs by kind (train / val / test)\n");
    for (int k = 0; k < WK_N_KINDS; k++)
        printf("  %-16s %6zu %6zu %6zu\n", world_kind_name((world_kind_t)k),
               st[0].critic_by_kind[k], st[1].critic_by_kind[k], st[2].critic_by_kind[k]);
    printf("preferred first/second (train): %zu / %zu\n", st[0].preferred[0], st[0].preferred[1]);
    printf("slots off their first-choice answer (train): %zu; critic slots skipped: %zu; "
           "repeated scenes: %zu\n",
           st[0].target_fallbacks, st[0].skipped_slots, st[0].duplicate_scenes);
}

int main(int argc, char **argv)
{
    world_config_t cfg;
    world_config_default(&cfg);
    const char *out = NULL;
    long n_split[3] = {4000, 300, 600};
    int image_size_set = 0, max_count_set = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long v;
        double d;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--no-grid-lines")) {
            cfg.grid_lines = 0;
            continue;
        }
        if (!strcmp(a, "--shuffle-captions")) {
            cfg.caption_shuffle = 1;
            continue;
        }
        if (!strcmp(a, "--describe-first")) {
            cfg.describe_first = 1;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            quiet = 1;
            continue;
        }
        if (a[0] != '-' || a[1] != '-') {
            fprintf(stderr, "crl-data: unexpected argument '%s' (see --help)\n", a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "crl-data: %s needs a value (see --help)\n", a);
            return 2;
        }
        const char *val = argv[++i];
        if (!strcmp(a, "--out")) {
            out = val;
        } else if (!strcmp(a, "--seed")) {
            char *end = NULL;
            errno = 0;
            unsigned long long s = strtoull(val, &end, 10);
            if (errno || !end || end == val || *end || val[0] == '-') {
                fprintf(stderr, "crl-data: --seed '%s': expected a non-negative integer\n", val);
                return 2;
            }
            cfg.seed = (uint64_t)s;
        } else if (!strcmp(a, "--train") || !strcmp(a, "--val") || !strcmp(a, "--test")) {
            int s = !strcmp(a, "--train") ? 0 : !strcmp(a, "--val") ? 1 : 2;
            if (parse_long(a, val, 0, 10000000, &n_split[s]))
                return 2;
        } else if (!strcmp(a, "--grid")) {
            int r = 0, c = 0, used = 0;
            if (sscanf(val, "%d%n", &r, &used) != 1) {
                fprintf(stderr, "crl-data: --grid '%s': expected R or RxC\n", val);
                return 2;
            }
            c = r;
            if (val[used] == 'x' || val[used] == 'X') {
                int used2 = 0;
                if (sscanf(val + used + 1, "%d%n", &c, &used2) != 1 || val[used + 1 + used2]) {
                    fprintf(stderr, "crl-data: --grid '%s': expected R or RxC\n", val);
                    return 2;
                }
            } else if (val[used]) {
                fprintf(stderr, "crl-data: --grid '%s': expected R or RxC\n", val);
                return 2;
            }
            cfg.rows = r;
            cfg.cols = c;
        } else if (!strcmp(a, "--image-size")) {
            if (parse_long(a, val, 1, 4096, &v))
                return 2;
            cfg.image_size = (int)v;
            image_size_set = 1;
        } else if (!strcmp(a, "--empty-prob")) {
            if (parse_double(a, val, 0.0, 0.95, &d))
                return 2;
            cfg.empty_prob = (float)d;
        } else if (!strcmp(a, "--colors")) {
            if (parse_long(a, val, 2, WORLD_MAX_COLORS, &v))
                return 2;
            cfg.n_colors = (int)v;
        } else if (!strcmp(a, "--shapes")) {
            if (parse_long(a, val, 2, WORLD_MAX_SHAPES, &v))
                return 2;
            cfg.n_shapes = (int)v;
        } else if (!strcmp(a, "--max-count")) {
            if (parse_long(a, val, 1, WORLD_MAX_COUNT, &v))
                return 2;
            cfg.max_count = (int)v;
            max_count_set = 1;
        } else if (!strcmp(a, "--policy-per-scene") || !strcmp(a, "--critic-per-scene")) {
            if (parse_long(a, val, 0, WORLD_MAX_PER_SCENE, &v))
                return 2;
            if (!strcmp(a, "--policy-per-scene"))
                cfg.policy_per_scene = (int)v;
            else
                cfg.critic_per_scene = (int)v;
        } else if (!strcmp(a, "--wrong-reasoning")) {
            if (parse_double(a, val, 0.0, 1.0, &d))
                return 2;
            cfg.wrong_reasoning_frac = (float)d;
        } else {
            fprintf(stderr, "crl-data: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!out) {
        fprintf(stderr, "crl-data: --out DIR is required (see --help)\n");
        return 2;
    }
    if (!image_size_set)
        cfg.image_size = 16 * (cfg.rows > cfg.cols ? cfg.rows : cfg.cols);
    if (!max_count_set && cfg.max_count > cfg.rows * cfg.cols)
        cfg.max_count = cfg.rows * cfg.cols; /* tiny grids cannot hold the default */
    char err[512];
    if (world_config_check(&cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "crl-data: %s\n", err);
        return 2;
    }
    if (mkdir_p(out) != 0) {
        fprintf(stderr, "crl-data: %s: cannot create folder: %s\n", out, strerror(errno));
        return 1;
    }
    world_stats_t stats[3];
    size_t counts[3];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int s = 0; s < 3; s++) {
        counts[s] = (size_t)n_split[s];
        int rc = world_write_split(&cfg, (world_split_t)s, counts[s], out, &stats[s], err,
                                   sizeof(err));
        if (rc != 0) {
            fprintf(stderr, "crl-data: %s\n", err);
            return 1;
        }
    }
    if (write_world_json(out, &cfg, counts) != 0)
        return 1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!quiet) {
        printf("crl-data: wrote %s (grid %dx%d, %d px, seed %llu) in %.2f s\n\n", out, cfg.rows,
               cfg.cols, cfg.image_size, (unsigned long long)cfg.seed,
               (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
        print_summary(&cfg, stats);
    }
    return 0;
}

/* config: the run configuration — one JSON file for a whole run (one object
 * per section), from which every process reads its part, overridden on the
 * command line with `--set section.key=value`. A schema table (config.c)
 * drives parsing, range checks, defaults, `--help-config` and the effective
 * config written to runs/NAME/config.json: to add a key, add a field to the
 * struct below and one row to the table. Owns nothing at run time: the
 * config is a plain struct of values (fixed-size strings and lists), so it
 * can be copied, compared and passed to any thread freely. */
#ifndef CRL_CONFIG_H
#define CRL_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "model.h"

#define CONFIG_NAME_LEN 64    /* run names, file stems */
#define CONFIG_PATH_LEN 512   /* file system paths */
#define CONFIG_ADDR_LEN 256   /* ZeroMQ endpoints */
#define CONFIG_MAX_LIST 256   /* entries of an int list (e.g. core ids) */

/* A list of ints. For keys of type "cpus", n == CONFIG_CPUS_AUTO means
 * "auto" (let the topology module choose). Unused entries are kept zero so
 * that two equal configs compare equal with memcmp. */
#define CONFIG_CPUS_AUTO (-1)
typedef struct {
    int n;
    int v[CONFIG_MAX_LIST];
} config_int_list_t;

/* Enum values: the int stored in the struct is the index of the name in the
 * key's list of allowed values (config.c), in this order. */
typedef enum { CONFIG_ON_ERROR_SKIP = 0, CONFIG_ON_ERROR_STOP } config_on_error_t;
typedef enum { CONFIG_CRITIC_FULL = 0, CONFIG_CRITIC_FINAL_ONLY } config_critic_variant_t;
typedef enum { CONFIG_FSYNC_RECORD = 0, CONFIG_FSYNC_INTERVAL, CONFIG_FSYNC_NEVER } config_fsync_t;

typedef struct {
    char name[CONFIG_NAME_LEN];  /* outputs go to <dir>/<name>/ */
    char dir[CONFIG_PATH_LEN];
    int seed;
} config_run_t;

typedef struct {
    char dir[CONFIG_PATH_LEN];   /* dataset folder (JSONL files + images) */
    char train[CONFIG_NAME_LEN]; /* file stems: <dir>/<train>.jsonl, ... */
    char val[CONFIG_NAME_LEN];
    char test[CONFIG_NAME_LEN];
    int on_error;                /* config_on_error_t: bad record -> skip or stop */
    int critic_variant;          /* config_critic_variant_t */
    char verdict_labels[8];      /* two distinct characters, e.g. "AB": \boxed{A} = first answer */
    int grid;                    /* built-in world: grid cells per side */
    int image_size_px;           /* built-in world: rendered image side */
    int train_scenes;
    int val_scenes;
    int test_scenes;
} config_data_t;

typedef struct {
    int vocab_size;
    char path[CONFIG_PATH_LEN];  /* "" = <data.dir>/tokenizer.json */
} config_tokenizer_t;

typedef struct {
    int steps;
    int batch_tokens;
    double lr;
    int warmup;                  /* linear lr warm-up steps */
    double weight_decay;
    double grad_clip;
    double mix_captions;         /* fractions of the batch; sum to 1 */
    double mix_policy;
    double mix_critic;
    int checkpoint_every;        /* steps; 0 = only at the end */
    int threads;                 /* 0 = one per core of learner.cpus */
} config_sft_t;

typedef struct {
    int group_size;              /* G */
    double temperature;
    double top_p;
    int max_new_tokens;
    int max_staleness;
    double is_cap;               /* truncation of pi_prox / pi_behav */
    double clip_low;
    double clip_high;
    double dual_clip;
    double kl_coef;
    double lr;
    double weight_decay;
    double grad_clip;
    int steps;
    int groups_per_step;
    double task_mix_critic;      /* fraction of critic prompts; rest are policy prompts */
    double reward_w_pref;
    double reward_w_format;
    int order_balanced;
    int skip_zero_variance;
    int checkpoint_every;        /* steps; 0 = only at the end */
    int micro_batch_tokens;      /* tokens per forward/backward pass of an update; 0 = all at once */
    char init[CONFIG_PATH_LEN];  /* checkpoint folder of the initial policy / reference */
} config_rl_t;

typedef struct {
    int n_samples;
    int max_items;
    int self_critique;
} config_eval_t;

typedef struct {
    int count;
    int credits;                 /* work grants an actor may hold at once */
    config_int_list_t cpus;
    int threads;
    char id[CONFIG_NAME_LEN];    /* "" = <hostname>-<pid> */
    int max_unacked;             /* completed groups held awaiting Ack */
} config_actor_t;

typedef struct {
    config_int_list_t cpus;
    int threads;
    int heartbeat_ms;
    int heartbeat_timeout_ms;
    int traj_fsync;              /* config_fsync_t */
    int traj_fsync_ms;
    int traj_rotate_mb;
    int publish_timeout_ms;      /* PublishAck wait before re-sending the weights */
} config_learner_t;

typedef struct {
    config_int_list_t cpus;
    int chunk_bytes;
    int keep_versions;
    char upstream[CONFIG_ADDR_LEN]; /* "" = weights come from the learner */
    char upstream_announce[CONFIG_ADDR_LEN]; /* upstream broker's PUB; set with upstream */
} config_broker_t;

typedef struct {
    char learner_work[CONFIG_ADDR_LEN];
    char broker_publish[CONFIG_ADDR_LEN];
    char broker_announce[CONFIG_ADDR_LEN];
    char broker_fetch[CONFIG_ADDR_LEN];
    int max_msg_bytes;
    char curve_keys_dir[CONFIG_PATH_LEN]; /* "" = no CurveZMQ */
    char curve_client_key[CONFIG_PATH_LEN]; /* "" = <curve_keys_dir>/client.key */
    int insecure;                /* allow non-loopback endpoints without keys */
} config_network_t;

typedef struct {
    config_run_t run;
    model_config_t model;        /* passed as is to model_new */
    config_data_t data;
    config_tokenizer_t tokenizer;
    config_sft_t sft;
    config_rl_t rl;
    config_eval_t eval;
    config_actor_t actor;
    config_learner_t learner;
    config_broker_t broker;
    config_network_t network;
} crl_config_t;

/* ---- schema ---- */

typedef enum {
    CONFIG_T_INT,      /* int */
    CONFIG_T_FLOAT,    /* double */
    CONFIG_T_FLOAT32,  /* float (model_config_t fields) */
    CONFIG_T_BOOL,     /* int 0/1; JSON true/false */
    CONFIG_T_STRING,   /* char[size], NUL-terminated, zero-padded */
    CONFIG_T_ENUM,     /* int index into enum_values */
    CONFIG_T_INT_LIST, /* config_int_list_t */
    CONFIG_T_CPUS,     /* config_int_list_t, or "auto" (n = CONFIG_CPUS_AUTO) */
} config_type_t;

/* Range flags of a key (ints, floats, and each element of a list). */
#define CONFIG_HAS_MIN 1u
#define CONFIG_HAS_MAX 2u
#define CONFIG_MIN_EXCL 4u  /* value > min instead of >= min */
#define CONFIG_MAX_EXCL 8u

typedef struct {
    const char *key;           /* dotted path, "section.name" */
    config_type_t type;
    size_t offset;             /* of the field in crl_config_t */
    size_t size;               /* of the field (string capacity incl. NUL) */
    unsigned flags;            /* CONFIG_HAS_MIN | ... */
    double min, max;
    const char *def;           /* default, written as for --set */
    const char *const *enum_values; /* NULL-terminated (CONFIG_T_ENUM) */
    const char *help;          /* one line */
    /* Extra check of a parsed value (NULL = none); 0 = ok, else writes
     * what was expected into why. */
    int (*check)(const void *field, char *why, size_t whylen);
} config_key_t;

/* The schema rows, in section order. */
const config_key_t *config_schema(size_t *n_keys);
/* The row of a dotted key; NULL if unknown. */
const config_key_t *config_find_key(const char *dotted);

/* ---- API ---- */

/* Fills every field with its default (zeroing the struct first, so padding
 * and unused bytes are zero). 0, or -EINVAL if a built-in default is bad (a
 * bug, logged). */
int config_defaults(crl_config_t *cfg);

/* Applies a JSON config (an object of section objects) on top of cfg.
 * Unknown sections or keys, duplicate keys, wrong types and out-of-range
 * values are errors naming the source, the dotted key, the value and what
 * was expected; on error cfg is unchanged. 0 or negative errno. source
 * names the text in messages (e.g. the file name). */
int config_load_json(crl_config_t *cfg, const char *json, const char *source, char *err,
                     size_t errlen);
/* config_load_json on the contents of a file (at most 16 MiB). */
int config_load_file(crl_config_t *cfg, const char *path, char *err, size_t errlen);

/* Applies one "section.key=value" assignment. The value is parsed per the
 * key's type: strings need no quotes (a JSON-quoted string is unquoted),
 * booleans are true/false/1/0, lists are "0,1,2", "0-3,8" or "[0,1,2]",
 * cpus also "auto". On error cfg is unchanged. 0 or -EINVAL. */
int config_set(crl_config_t *cfg, const char *assignment, char *err, size_t errlen);

/* Command-line handling shared by every binary. Consumes `--config FILE`
 * (repeatable; files applied in order), `--set a.b=v` (repeatable; applied
 * after all files, in order), their `--opt=value` spellings and
 * `--help-config`; stops at "--". Other arguments stay in argv, in order
 * (argv[*argc] = NULL). Runs config_validate at the end.
 * Returns 0 on success, 1 when --help-config was given (nothing else is
 * applied; the caller prints config_print_help(stdout) and exits 0), or
 * negative errno with err set. */
int config_parse_args(crl_config_t *cfg, int *argc, char **argv, char *err, size_t errlen);

/* Cross-field checks (heads divide dim, mix fractions sum to 1, ...).
 * Every failed check is reported, "; "-separated, each naming its keys.
 * 0 or -EINVAL. */
int config_validate(const crl_config_t *cfg, char *err, size_t errlen);

/* The whole effective config as pretty-printed JSON that config_load_json
 * reads back to an identical struct. malloc'd, caller frees; NULL if out
 * of memory. */
char *config_to_json(const crl_config_t *cfg);
/* Writes config_to_json to path atomically (temporary file, fsync, rename).
 * 0 or negative errno with err set. */
int config_write_file(const crl_config_t *cfg, const char *path, char *err, size_t errlen);

/* Formats one key's current value as --set would accept it (strings
 * unquoted, lists "0,1,2"). 0, or -EINVAL for an unknown key, -ENOSPC if
 * buf is too small. */
int config_get(const crl_config_t *cfg, const char *dotted, char *buf, size_t len);

/* The --help-config text: every key with its type, range, default and
 * description. */
void config_print_help(FILE *f);

/* 1 when a ZeroMQ endpoint only reaches this machine: ipc://, inproc://,
 * tcp://127.x.x.x, localhost, [::1] or the "lo" interface (for the
 * "iface;peer" connect form, the peer is judged). Used by config_validate
 * and security_check_bind (DESIGN.md §9: no keys = loopback only). */
int config_endpoint_is_local(const char *ep);

#endif

/* checkpoint: saves and loads a model as Hugging-Face-style files —
 * model.safetensors (every tensor of the model's tensor table, by name and
 * shape) and config.json (Llama-style keys plus image_size / patch_size) —
 * and the AdamW moments as optimizer.safetensors with the same layout.
 * Every file is written atomically (tmp, fsync, rename). Assembling a whole
 * step folder (tokenizer.json, trainer.json, the `latest` link) is the
 * trainer's job; this module provides the pieces. */
#ifndef CRL_CHECKPOINT_H
#define CRL_CHECKPOINT_H

#include <stddef.h>

#include "model.h"

#define CKPT_MODEL_TYPE "crl_llava"
#define CKPT_ARCHITECTURE "CrlLlavaForCausalLM"
#define CKPT_FORMAT_VERSION 1     /* config.json "crl_format_version" */
#define CKPT_OPTIM_FORMAT "crl-adamw"
#define CKPT_OPTIM_VERSION 1

/* Writes dir/model.safetensors and dir/config.json, creating dir (and its
 * parents) if needed. 0 or negative errno with a message in err. */
int ckpt_save_model(const model_t *m, const char *dir, char *err, size_t errlen);

/* Reads dir/config.json (every key checked; errors name the key), builds the
 * model (gradients too when with_grads) and loads every tensor from
 * dir/model.safetensors, checking names and shapes: a missing, extra or
 * mis-shaped tensor is an error naming it. Caller destroys the model. NULL on
 * error with a message in err. */
model_t *ckpt_load_model(const char *dir, int with_grads, char *err, size_t errlen);

/* Config alone, from a config.json path (e.g. to size things before loading).
 * 0 or -EINVAL / -ENOENT with a message naming the file and key. */
int ckpt_read_config(const char *path, model_config_t *cfg, char *err, size_t errlen);
/* Writes cfg as config.json at path (atomic). */
int ckpt_write_config(const char *path, const model_config_t *cfg, char *err, size_t errlen);
/* The same config.json reader and writer on in-memory text (the Welcome's
 * model_config_json carries it to actors). from_json: every key checked as
 * in ckpt_read_config, errors name "model_config_json" and the key; 0 or
 * -EINVAL. to_json_text: exactly the text ckpt_write_config writes
 * (newline-terminated); malloc'd, caller frees; NULL if out of memory. */
int ckpt_config_from_json(const char *json, model_config_t *cfg, char *err, size_t errlen);
char *ckpt_config_to_json_text(const model_config_t *cfg);

/* AdamW moments (each m->n_params floats, model layout) as tensors
 * "exp_avg.<name>" and "exp_avg_sq.<name>", with the step count in the
 * metadata. */
int ckpt_save_optimizer(const model_t *m, const float *adam_m, const float *adam_v, long step,
                        const char *path, char *err, size_t errlen);
/* Loads into adam_m / adam_v (m->n_params floats each; padding between
 * tensors is left untouched) and *step; every tensor of m must be present
 * with its shape, and no other. 0 or negative errno with a message. */
int ckpt_load_optimizer(const model_t *m, float *adam_m, float *adam_v, long *step,
                        const char *path, char *err, size_t errlen);

/* Writes len bytes to path atomically (path.tmp, fsync, rename, fsync of the
 * folder): for trainer.json and other small files of a checkpoint. */
int ckpt_write_file_atomic(const char *path, const void *data, size_t len, char *err,
                           size_t errlen);
/* mkdir -p; 0 or negative errno. */
int ckpt_mkdirs(const char *dir, char *err, size_t errlen);

#endif

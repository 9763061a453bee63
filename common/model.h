/* model: the LLaVA-style vision-language model — image patches through a
 * projector MLP into the token stream, then a Llama-style decoder (RMSNorm,
 * multi-head / grouped-query attention with RoPE, SwiGLU), final norm and LM
 * head. Owns one contiguous parameter buffer (and one gradient buffer of the
 * same layout) carved by a tensor table with Hugging Face Llama names plus
 * mm_projector.*; the training forward/backward runs over packed batches of
 * variable-length sequences. */
#ifndef CRL_MODEL_H
#define CRL_MODEL_H

#include <stddef.h>

#include "rng.h"

/* Token slot filled by the next image-patch embedding (never a vocab id). */
#define MODEL_IMAGE_SLOT (-1)

typedef struct {
    int vocab_size;
    int dim;          /* D */
    int n_layers;     /* L */
    int n_heads;      /* H */
    int n_kv_heads;   /* KVH, divides H (== H: plain multi-head) */
    int hidden_dim;   /* F, SwiGLU hidden size */
    int max_seq_len;  /* longest sequence (RoPE table size) */
    int image_size;   /* S: images are S x S RGB; 0 = text-only model, no projector */
    int patch_size;   /* P: divides S; n_patches = (S/P)^2 */
    int tie_embeddings; /* 1: lm_head shares embed_tokens */
    float rope_theta; /* e.g. 10000 */
    float norm_eps;   /* e.g. 1e-5 */
} model_config_t;

/* One named tensor of the parameter buffer. */
typedef struct {
    char name[96];
    int ndim;
    int shape[4];
    size_t offset;  /* in floats from the start of the buffer */
    size_t numel;
    int decay;      /* 1: AdamW weight decay applies (matrices); 0: norms, biases */
} tensor_info_t;

typedef struct {
    float *attn_norm; /* (D)            model.layers.i.input_layernorm.weight */
    float *wq;        /* (H*hd, D)      model.layers.i.self_attn.q_proj.weight */
    float *wk;        /* (KVH*hd, D)    model.layers.i.self_attn.k_proj.weight */
    float *wv;        /* (KVH*hd, D)    model.layers.i.self_attn.v_proj.weight */
    float *wo;        /* (D, H*hd)      model.layers.i.self_attn.o_proj.weight */
    float *mlp_norm;  /* (D)            model.layers.i.post_attention_layernorm.weight */
    float *w_gate;    /* (F, D)         model.layers.i.mlp.gate_proj.weight */
    float *w_up;      /* (F, D)         model.layers.i.mlp.up_proj.weight */
    float *w_down;    /* (D, F)         model.layers.i.mlp.down_proj.weight */
} layer_weights_t;

typedef struct {
    float *proj_w1;    /* (D, 3*P*P)   mm_projector.0.weight  (NULL if text-only) */
    float *proj_b1;    /* (D)          mm_projector.0.bias */
    float *proj_w2;    /* (D, D)       mm_projector.2.weight */
    float *proj_b2;    /* (D)          mm_projector.2.bias */
    float *proj_pos;   /* (NP, D)      mm_projector.pos_embed: learned position of each
                        *              patch, added to its projected embedding */
    float *embed;      /* (V, D)       model.embed_tokens.weight */
    layer_weights_t *layers; /* (L) */
    float *final_norm; /* (D)          model.norm.weight */
    float *lm_head;    /* (V, D)       lm_head.weight; == embed when tied */
} model_weights_t;

typedef struct {
    model_config_t cfg;
    int n_tensors;
    tensor_info_t *tensors; /* (n_tensors) */
    size_t n_params;
    float *params;          /* (n_params) one allocation */
    float *grads;           /* (n_params) same layout; NULL for inference-only models */
    model_weights_t w;      /* views into params */
    model_weights_t g;      /* views into grads (all NULL without grads) */
    float *rope_cos;        /* (max_seq_len, hd/2) */
    float *rope_sin;        /* (max_seq_len, hd/2) */
} model_t;

/* A packed batch: n_seqs sequences laid end to end in tokens[0..n_tokens).
 * Image slots (MODEL_IMAGE_SLOT) come in runs of exactly n_patches; the k-th
 * run in token order takes image k from images. */
typedef struct {
    int n_tokens;          /* T */
    int n_seqs;
    const int *seq_start;  /* (n_seqs+1), seq_start[0] = 0, seq_start[n_seqs] = T */
    const int *tokens;     /* (T) vocab ids or MODEL_IMAGE_SLOT */
    int n_images;
    const float *images;   /* (n_images, 3, S, S) RGB in [0, 1], channel-major */
} model_batch_t;

typedef struct model_acts model_acts_t; /* opaque: activations for one batch */

/* Pixels enter the projector centred and scaled, (x - MEAN) * SCALE, so
 * that colour differences are not drowned by the bright background. */
#define MODEL_PIXEL_MEAN 0.5f
#define MODEL_PIXEL_SCALE 4.0f

/* Cuts an image (3, S, S) in [0, 1] into (S/P)^2 patches in row-major patch
 * order, each flattened channel-major (c, y, x) and normalised as above:
 * out is (n_patches, 3*P*P). The one place this layout is decided (the
 * training forward and the sampler's prefill both use it). */
void model_extract_patches(float *out, const float *img, int S, int P);

/* Checks a configuration; on error writes a message naming the field. 0 = ok. */
int model_config_validate(const model_config_t *cfg, char *err, size_t errlen);
int model_n_patches(const model_config_t *cfg);

/* Allocates a model (parameters zeroed; gradients too when with_grads).
 * NULL on bad config or out of memory. */
model_t *model_new(const model_config_t *cfg, int with_grads);
void model_destroy(model_t **m);
/* Standard init: normal(0, 0.02) matrices, ones for norms, zero biases. */
void model_init_random(model_t *m, rng_t *rng);
void model_zero_grads(model_t *m);
/* Copies parameters (same config required); 0 or -EINVAL. */
int model_copy_params(model_t *dst, const model_t *src);
/* Looks a tensor up by name; NULL if absent. */
const tensor_info_t *model_find_tensor(const model_t *m, const char *name);

/* Activation storage sized once for batches of at most max_tokens tokens
 * and max_seqs sequences (hot loops reuse it; nothing is allocated per step). */
model_acts_t *model_acts_new(const model_t *m, int max_tokens, int max_seqs);
void model_acts_destroy(model_acts_t **a);

/* Training/scoring forward. Returns the logits (T, V), owned by acts and
 * valid until the next forward; NULL (with a log line) on a malformed batch. */
float *model_forward(const model_t *m, model_acts_t *a, const model_batch_t *b);
/* Backward from dlogits (T, V) of the last forward; accumulates into m->grads.
 * dlogits may be the buffer returned by model_forward. 0 or negative errno. */
int model_backward(model_t *m, model_acts_t *a, const float *dlogits);

#endif

/* kernels: the numeric building blocks of the model, each a forward and a
 * backward over packed activations [T x D] (T tokens of possibly many
 * sequences, row-major, no padding). Fast versions go through OpenBLAS;
 * every fast kernel has a plain *_naive oracle used by the tests.
 *
 * Conventions (all kernels):
 *  - Linear weights use the PyTorch / Hugging Face layout W[N x K]
 *    (out_features x in_features, row-major): out = in @ W^T (+ bias).
 *  - Backward functions ACCUMULATE (+=) into every gradient they write
 *    (d-inputs and d-weights); the caller zeroes them. The one exception is
 *    k_logprobs_bwd, which is the root of the graph and overwrites.
 *  - Nothing here allocates, except where a scratch size function is given
 *    and the caller passes the scratch buffer. */
#ifndef CRL_KERNELS_H
#define CRL_KERNELS_H

#include <stddef.h>

/* ---- linear: out[T,N] = in[T,K] @ W[N,K]^T + bias[N] (bias may be NULL) ---- */
void k_matmul_fwd(float *out, const float *in, const float *W, const float *bias, int T, int K, int N);
/* din[T,K] += dout @ W; dW[N,K] += dout^T @ in; dbias[N] += colsum(dout).
 * Any of din, dW, dbias may be NULL (not wanted). */
void k_matmul_bwd(float *din, float *dW, float *dbias, const float *dout, const float *in,
                  const float *W, int T, int K, int N);
void k_matmul_fwd_naive(float *out, const float *in, const float *W, const float *bias, int T,
                        int K, int N);
void k_matmul_bwd_naive(float *din, float *dW, float *dbias, const float *dout, const float *in,
                        const float *W, int T, int K, int N);

/* ---- embedding: out[T,D] = table[tokens[t]]. Rows with tokens[t] < 0
 * (image slots) are skipped: left as the caller filled them, no gradient. ---- */
void k_embed_fwd(float *out, const float *table, const int *tokens, int T, int D);
/* dtable[tokens[t]] += dout[t] (repeated tokens accumulate) */
void k_embed_bwd(float *dtable, const float *dout, const int *tokens, int T, int D);

/* ---- RMSNorm: out = x * rstd * w, rstd[t] = 1/sqrt(mean(x[t]^2) + eps) ---- */
void k_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int T, int D, float eps);
void k_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                   const float *rstd, int T, int D);

/* ---- RoPE (Hugging Face Llama "rotate_half" convention: dims i and i+hd/2
 * form a pair), rotating x[T, H, hd] in place by position pos[t].
 * Tables: cos_t/sin_t [max_pos, hd/2], filled by k_rope_table. ---- */
void k_rope_table(float *cos_t, float *sin_t, int max_pos, int hd, float theta);
void k_rope_fwd(float *x, const int *pos, const float *cos_t, const float *sin_t, int T, int H, int hd);
/* Applies the inverse rotation to the gradient in place (dx = R^T dout). */
void k_rope_bwd(float *dx, const int *pos, const float *cos_t, const float *sin_t, int T, int H, int hd);

/* ---- causal multi-head attention over packed variable-length sequences.
 * q[T, H*hd], k[T, KVH*hd], v[T, KVH*hd] -> out[T, H*hd]. Sequence s covers
 * rows seq_start[s] .. seq_start[s+1]-1 (seq_start has nseq+1 entries,
 * seq_start[0] = 0); a token attends to itself and earlier tokens of its own
 * sequence only. H must be a multiple of KVH (grouped-query attention: head h
 * uses kv head h / (H/KVH)). Scale 1/sqrt(hd).
 * att holds the softmax probabilities for the backward pass; its size in
 * floats is k_attention_att_size(). Layout: for each sequence s (length n),
 * for each head h, an n x n row-major block P[i][j]; only j <= i is defined
 * (the rest may hold anything). Each sequence is computed on its own, so a
 * row's output never depends on the other sequences of the batch. ---- */
size_t k_attention_att_size(const int *seq_start, int nseq, int H);
/* Floats of scratch that k_attention_bwd needs (the square of the longest
 * sequence). */
size_t k_attention_scratch_size(const int *seq_start, int nseq, int H, int hd);
void k_attention_fwd(float *out, float *att, const float *q, const float *k, const float *v,
                     const int *seq_start, int nseq, int H, int KVH, int hd);
void k_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *att,
                     const float *q, const float *k, const float *v, const int *seq_start, int nseq,
                     int H, int KVH, int hd, float *scratch);
void k_attention_fwd_naive(float *out, float *att, const float *q, const float *k, const float *v,
                           const int *seq_start, int nseq, int H, int KVH, int hd);
void k_attention_bwd_naive(float *dq, float *dk, float *dv, const float *dout, const float *att,
                           const float *q, const float *k, const float *v, const int *seq_start,
                           int nseq, int H, int KVH, int hd);

/* ---- SwiGLU: out = silu(gate) * up, elementwise over n values ---- */
void k_swiglu_fwd(float *out, const float *gate, const float *up, size_t n);
void k_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                  size_t n);

/* ---- GELU (exact, erf form — as PyTorch nn.GELU() default; erf evaluated
 * to ~1e-7 relative) ---- */
void k_gelu_fwd(float *out, const float *in, size_t n);
void k_gelu_bwd(float *din, const float *dout, const float *in, size_t n);

/* ---- residual: out[i] = a[i] + b[i] (out may alias a or b) ---- */
void k_add(float *out, const float *a, const float *b, size_t n);

/* ---- per-token log-probabilities with a temperature.
 * For each t with targets[t] >= 0: logp[t] = log softmax(logits[t] / temp)[targets[t]];
 * rows with targets[t] < 0 get logp[t] = 0 and no gradient.
 * entropy (may be NULL): entropy of softmax(logits[t]/temp) for every row.
 * Cross-entropy loss = -mean(logp over targeted rows).
 * A row's result depends on that row only (same bits whatever else is in the
 * batch), so a sampler scoring one row matches the learner's batch. ---- */
void k_logprobs_fwd(float *logp, float *entropy, const float *logits, const int *targets, int T,
                    int V, float temp); /* temp > 0, targets[t] < V */
/* dlogits[t] = dlogp[t] * d logp[t] / d logits[t]  (OVERWRITES dlogits; rows with
 * targets[t] < 0 are set to zero). dlogits may alias logits. */
void k_logprobs_bwd(float *dlogits, const float *dlogp, const float *logits, const int *targets,
                    int T, int V, float temp);

/* The exp used by every softmax, sigmoid and GELU here (~2 ulp of expf,
 * exactly 0 below -87, clamped above 88); the same bits in vector and scalar
 * code. Exported for tests. */
float k_expf(float x);

/* Sets OpenBLAS to n threads (1 = single-threaded); returns the previous count. */
int k_set_threads(int n);

#endif

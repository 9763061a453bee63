/* grpo: rewards, advantages, the decoupled-PPO loss and one GRPO update, and
 * the rollout function shared by actors and tests. See grpo.h for the
 * objective; the gradient is derived by hand below (grpo_token_loss_grad). */
#include "grpo.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image.h"
#include "kernels.h"
#include "log.h"
#include "rng.h"
#include "task.h"

struct grpo {
    model_config_t mc;
    config_rl_t rl;
    reward_config_t rcfg;
    const tokenizer_t *tok;
    int n_patches;
    size_t img_floats;        /* 3*S*S, 0 for a text-only model */
    int mb_tokens;            /* token capacity of one forward/backward pass */
    int mb_seqs;              /* sequence capacity of one pass */
    int G_cap;                /* largest group (rl.group_size) */
    model_acts_t *acts;       /* shared by the reference and policy forwards (same config) */
    int *tokens;              /* (mb_tokens) packed [prompt ; response[0..len-2]] */
    int *targets;             /* (mb_tokens) next token at response positions, else -1 */
    int *seq_start;           /* (mb_seqs + 1) */
    float *images;            /* (mb_seqs, 3, S, S) */
    float *logp_ref;          /* (mb_tokens) */
    float *logp_new;          /* (mb_tokens) */
    float *entropy;           /* (mb_tokens) */
    float *dlogp;             /* (mb_tokens) */
    /* response positions of a pass, compacted (one entry per loss token) */
    int *c_pos;               /* (mb_tokens) row in the packed batch */
    float *c_new, *c_behav, *c_ref, *c_adv, *c_dlogp; /* (mb_tokens) */
    int *c_onpolicy;          /* (mb_tokens) 1: its group's version == learner version */
    /* the samples of the pass being filled */
    int *mb_group, *mb_sample; /* (mb_seqs) */
    /* scoring */
    char *text;               /* decoded response */
    size_t text_cap;
    float *rewards, *pref, *fmt, *adv_tmp; /* (G_cap) */
};

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

adamw_config_t grpo_adamw_config(const crl_config_t *cfg)
{
    adamw_config_t c = adamw_config_default();
    c.lr = (float)cfg->rl.lr;
    c.weight_decay = (float)cfg->rl.weight_decay;
    c.grad_clip = (float)cfg->rl.grad_clip;
    return c;
}

grpo_t *grpo_new(const model_t *policy, const crl_config_t *cfg, const tokenizer_t *tok, char *err,
                 size_t errlen)
{
    if (!policy || !cfg || !tok) {
        errf(err, errlen, "grpo_new: NULL %s", !policy ? "policy" : !cfg ? "config" : "tokenizer");
        return NULL;
    }
    const config_rl_t *rl = &cfg->rl;
    const model_config_t *mc = &policy->cfg;
    if (rl->group_size < 1 || rl->groups_per_step < 1 || rl->micro_batch_tokens < 0) {
        errf(err, errlen, "grpo_new: rl.group_size %d, rl.groups_per_step %d, rl.micro_batch_tokens %d "
                          "out of range", rl->group_size, rl->groups_per_step, rl->micro_batch_tokens);
        return NULL;
    }
    if (!(rl->temperature > 0) || !(rl->clip_low > 0 && rl->clip_low < 1) || !(rl->clip_high > 0) ||
        !(rl->dual_clip > 1) || !(rl->is_cap >= 1) || !(rl->kl_coef >= 0)) {
        errf(err, errlen, "grpo_new: need rl.temperature > 0 (%g), 0 < rl.clip_low < 1 (%g), "
                          "rl.clip_high > 0 (%g), rl.dual_clip > 1 (%g), rl.is_cap >= 1 (%g), "
                          "rl.kl_coef >= 0 (%g)", rl->temperature, rl->clip_low, rl->clip_high,
             rl->dual_clip, rl->is_cap, rl->kl_coef);
        return NULL;
    }
    if (tok_vocab_size(tok) > mc->vocab_size) {
        errf(err, errlen, "grpo_new: tokenizer has %d ids but model.vocab_size is %d",
             tok_vocab_size(tok), mc->vocab_size);
        return NULL;
    }
    grpo_t *g = calloc(1, sizeof *g);
    if (!g) {
        errf(err, errlen, "grpo_new: out of memory");
        return NULL;
    }
    g->mc = *mc;
    g->rl = *rl;
    g->tok = tok;
    g->n_patches = mc->image_size > 0 ? model_n_patches(mc) : 0;
    g->img_floats = mc->image_size > 0 ? (size_t)3 * (size_t)mc->image_size * (size_t)mc->image_size : 0;
    g->G_cap = rl->group_size;

    reward_config_default(&g->rcfg);
    g->rcfg.w_main = (float)rl->reward_w_pref;
    g->rcfg.w_format = (float)rl->reward_w_format;
    const char *labels = cfg->data.verdict_labels;
    if (strlen(labels) != 2) {
        errf(err, errlen, "grpo_new: data.verdict_labels '%s': expected two characters, e.g. \"AB\"",
             labels);
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        g->rcfg.labels[i][0] = labels[i];
        g->rcfg.labels[i][1] = '\0';
    }
    char why[256];
    if (reward_config_check(&g->rcfg, why, sizeof why)) {
        errf(err, errlen, "grpo_new: reward config from rl.reward_w_pref / rl.reward_w_format / "
                          "data.verdict_labels: %s", why);
        goto fail;
    }

    /* One pass holds rl.micro_batch_tokens tokens (at least one longest
     * sequence); 0 means the whole step's worst case at once. */
    size_t all_seqs = (size_t)rl->groups_per_step * (size_t)rl->group_size;
    size_t mbt = rl->micro_batch_tokens > 0 ? (size_t)rl->micro_batch_tokens
                                            : all_seqs * (size_t)mc->max_seq_len;
    if (mbt < (size_t)mc->max_seq_len)
        mbt = (size_t)mc->max_seq_len;
    if (mbt > (size_t)1 << 28) {
        errf(err, errlen, "grpo_new: %zu tokens per pass is too many (set rl.micro_batch_tokens)", mbt);
        goto fail;
    }
    g->mb_tokens = (int)mbt;
    g->mb_seqs = (int)(all_seqs < mbt ? all_seqs : mbt);

    g->acts = model_acts_new(policy, g->mb_tokens, g->mb_seqs);
    if (!g->acts) {
        errf(err, errlen, "grpo_new: cannot allocate activations for %d tokens / %d sequences "
                          "(lower rl.micro_batch_tokens)", g->mb_tokens, g->mb_seqs);
        goto fail;
    }
    size_t T = (size_t)g->mb_tokens, S = (size_t)g->mb_seqs;
    g->tokens = malloc(T * sizeof(int));
    g->targets = malloc(T * sizeof(int));
    g->seq_start = malloc((S + 1) * sizeof(int));
    g->images = g->img_floats ? malloc(S * g->img_floats * sizeof(float)) : NULL;
    g->logp_ref = malloc(T * sizeof(float));
    g->logp_new = malloc(T * sizeof(float));
    g->entropy = malloc(T * sizeof(float));
    g->dlogp = malloc(T * sizeof(float));
    g->c_pos = malloc(T * sizeof(int));
    g->c_new = malloc(T * sizeof(float));
    g->c_behav = malloc(T * sizeof(float));
    g->c_ref = malloc(T * sizeof(float));
    g->c_adv = malloc(T * sizeof(float));
    g->c_dlogp = malloc(T * sizeof(float));
    g->c_onpolicy = malloc(T * sizeof(int));
    g->mb_group = malloc(S * sizeof(int));
    g->mb_sample = malloc(S * sizeof(int));
    /* The longest decoded response: max_seq_len tokens of the longest token. */
    size_t max_tok_bytes = 1;
    for (int id = 0; id < tok_vocab_size(tok); id++) {
        size_t n = 0;
        if (tok_token_bytes(tok, id, &n) && n > max_tok_bytes)
            max_tok_bytes = n;
    }
    g->text_cap = (size_t)mc->max_seq_len * max_tok_bytes + 1;
    g->text = malloc(g->text_cap);
    size_t G = (size_t)g->G_cap;
    g->rewards = malloc(G * sizeof(float));
    g->pref = malloc(G * sizeof(float));
    g->fmt = malloc(G * sizeof(float));
    g->adv_tmp = malloc(G * sizeof(float));
    if (!g->tokens || !g->targets || !g->seq_start || (g->img_floats && !g->images) ||
        !g->logp_ref || !g->logp_new || !g->entropy || !g->dlogp || !g->c_pos || !g->c_new ||
        !g->c_behav || !g->c_ref || !g->c_adv || !g->c_dlogp || !g->c_onpolicy || !g->mb_group ||
        !g->mb_sample || !g->text || !g->rewards || !g->pref || !g->fmt || !g->adv_tmp) {
        errf(err, errlen, "grpo_new: out of memory (%d tokens per pass)", g->mb_tokens);
        goto fail;
    }
    return g;
fail:
    grpo_destroy(&g);
    return NULL;
}

void grpo_destroy(grpo_t **pg)
{
    if (!pg || !*pg)
        return;
    grpo_t *g = *pg;
    model_acts_destroy(&g->acts);
    free(g->tokens);
    free(g->targets);
    free(g->seq_start);
    free(g->images);
    free(g->logp_ref);
    free(g->logp_new);
    free(g->entropy);
    free(g->dlogp);
    free(g->c_pos);
    free(g->c_new);
    free(g->c_behav);
    free(g->c_ref);
    free(g->c_adv);
    free(g->c_dlogp);
    free(g->c_onpolicy);
    free(g->mb_group);
    free(g->mb_sample);
    free(g->text);
    free(g->rewards);
    free(g->pref);
    free(g->fmt);
    free(g->adv_tmp);
    free(g);
    *pg = NULL;
}

const reward_config_t *grpo_reward_config(const grpo_t *g)
{
    return g ? &g->rcfg : NULL;
}

/* ---- validation ---- */

/* Image slots in a prompt: 0, or exactly one run of n_patches (the group
 * carries one image). Returns the slot count, or -1 when malformed. */
static int prompt_slots(const grpo_t *g, const int *p, int n)
{
    int slots = 0, runs = 0;
    for (int t = 0; t < n; t++) {
        if (p[t] == MODEL_IMAGE_SLOT) {
            if (t == 0 || p[t - 1] != MODEL_IMAGE_SLOT)
                runs++;
            slots++;
        } else if (p[t] < 0 || p[t] >= g->mc.vocab_size) {
            return -1;
        }
    }
    if (slots == 0)
        return 0;
    if (runs != 1 || slots != g->n_patches)
        return -1;
    return slots;
}

static int check_group(const grpo_t *g, const grpo_group_t *grp, int gi)
{
    if (!grp || grp->G < 1 || grp->G > g->G_cap || !grp->prompt_index || !grp->tokens || !grp->len ||
        !grp->logp) {
        log_error("grpo: group %d: G = %d (must be in [1, rl.group_size = %d]) or a NULL array", gi,
                  grp ? grp->G : -1, g->G_cap);
        return -EINVAL;
    }
    if (grp->task != REWARD_TASK_POLICY && grp->task != REWARD_TASK_CRITIC) {
        log_error("grpo: group %d: unknown task %d", gi, (int)grp->task);
        return -EINVAL;
    }
    for (int k = 0; k < 2; k++) {
        if (k == 1 && grp->prompt_len[1] == 0)
            continue;
        if (!grp->prompt[k] || grp->prompt_len[k] < 1 || grp->prompt_len[k] > g->mc.max_seq_len) {
            log_error("grpo: group %d: prompt %d missing or of length %d (max_seq_len %d)", gi, k,
                      grp->prompt_len[k], g->mc.max_seq_len);
            return -EINVAL;
        }
        int slots = prompt_slots(g, grp->prompt[k], grp->prompt_len[k]);
        if (slots < 0) {
            log_error("grpo: group %d: prompt %d has a token outside [0, %d) or image slots that are "
                      "not one run of %d", gi, k, g->mc.vocab_size, g->n_patches);
            return -EINVAL;
        }
        if (slots > 0 && !grp->image) {
            log_error("grpo: group %d: prompt %d has image slots but the group has no image", gi, k);
            return -EINVAL;
        }
    }
    for (int i = 0; i < grp->G; i++) {
        int pi = grp->prompt_index[i];
        if (pi < 0 || pi > 1 || grp->prompt_len[pi] == 0 || !grp->expected[pi]) {
            log_error("grpo: group %d sample %d: prompt_index %d has no prompt or expected answer", gi,
                      i, pi);
            return -EINVAL;
        }
        int n = grp->len[i];
        if (n < 0 || (n > 0 && (!grp->tokens[i] || !grp->logp[i])) ||
            grp->prompt_len[pi] + n - 1 > g->mc.max_seq_len) {
            log_error("grpo: group %d sample %d: length %d with prompt %d exceeds model.max_seq_len %d "
                      "or NULL tokens", gi, i, n, grp->prompt_len[pi], g->mc.max_seq_len);
            return -EINVAL;
        }
        for (int t = 0; t < n; t++) {
            if (grp->tokens[i][t] < 0 || grp->tokens[i][t] >= g->mc.vocab_size ||
                !isfinite(grp->logp[i][t])) {
                log_error("grpo: group %d sample %d token %d: id %d (vocab %d) or log-prob %g invalid",
                          gi, i, t, grp->tokens[i][t], g->mc.vocab_size, (double)grp->logp[i][t]);
                return -EINVAL;
            }
        }
    }
    return 0;
}

/* ---- rewards and advantages ---- */

void grpo_advantages(const float *rewards, int G, float *advantages)
{
    int all_equal = 1;
    for (int i = 1; i < G; i++)
        all_equal &= rewards[i] == rewards[0];
    if (all_equal || G < 2) {
        /* Exactly 0 (not ~1e-8 from rounding of the mean): grpo_step tells a
         * zero-variance group by its all-zero advantages. */
        for (int i = 0; i < G; i++)
            advantages[i] = 0.0f;
        return;
    }
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < G; i++)
        mean += rewards[i];
    mean /= G;
    for (int i = 0; i < G; i++)
        var += ((double)rewards[i] - mean) * ((double)rewards[i] - mean);
    double sd = sqrt(var / G); /* population std, as in the GRPO paper's std(r) */
    for (int i = 0; i < G; i++)
        advantages[i] = (float)(((double)rewards[i] - mean) / (sd + 1e-6));
}

/* Scores each sample; verdict_first (may be NULL) gets 1 when a critic
 * verdict names the first shown label, 0 the second, -1 none / not critic. */
static int score_samples(grpo_t *g, const grpo_group_t *grp, float *rewards, float *preference,
                         float *format, int *says_first_count, int *verdict_count)
{
    for (int i = 0; i < grp->G; i++) {
        long n = task_decode_response(g->tok, grp->tokens[i], grp->len[i], g->text, g->text_cap);
        if (n < 0) {
            log_error("grpo: cannot decode sample %d (%d tokens): %s", i, grp->len[i], strerror((int)-n));
            return (int)n;
        }
        reward_parts_t parts;
        int pi = grp->prompt_index[i];
        int rc = reward_score(&g->rcfg, grp->task, g->text, (size_t)n, grp->expected[pi], &parts);
        if (rc) {
            log_error("grpo: reward_score failed for sample %d (expected '%s'): %s", i,
                      grp->expected[pi], strerror(-rc));
            return rc;
        }
        rewards[i] = parts.total;
        if (preference)
            preference[i] = (float)(grp->task == REWARD_TASK_CRITIC ? parts.preference : parts.accuracy);
        if (format)
            format[i] = (float)parts.format;
        if (grp->task == REWARD_TASK_CRITIC && parts.verdict >= 0 && verdict_count) {
            (*verdict_count)++;
            *says_first_count += parts.verdict == 0;
        }
    }
    return 0;
}

int grpo_score_group(grpo_t *g, const grpo_group_t *grp, float *rewards, float *preference,
                     float *format, float *advantages)
{
    if (!g || !grp || !rewards || !advantages)
        return -EINVAL;
    int rc = check_group(g, grp, 0);
    if (rc)
        return rc;
    rc = score_samples(g, grp, rewards, preference, format, NULL, NULL);
    if (rc)
        return rc;
    grpo_advantages(rewards, grp->G, advantages);
    return 0;
}

/* ---- the per-token loss and its gradient ----
 *
 * With d = logp_new - logp_prox, ratio = e^d, A the advantage:
 *   unclipped u = ratio*A, clipped c = clip(ratio, 1-el, 1+eh)*A, surr = min(u, c),
 *   pg = A < 0 ? max(surr, dual*A) : surr            (verl's dual-clip PPO).
 * d u / d logp_new = ratio*A (d ratio / d logp_new = ratio, also at ratio = 1);
 * c is constant in logp_new outside the clip range and equals u inside it, so
 * the PPO gradient flows iff surr takes the u branch (u <= c) and, for A < 0,
 * the dual clip does not bind (surr >= dual*A). The IS weight w is detached.
 * k3 with x = logp_ref - logp_new: e^x - x - 1, d k3 / d logp_new = 1 - e^x. */
double grpo_token_loss_grad(const grpo_loss_params_t *p, int n, const float *logp_new,
                            const float *logp_prox, const float *logp_behav,
                            const float *logp_ref, const float *adv, float scale, float *dlogp,
                            grpo_token_acc_t *acc)
{
    const double lo = 1.0 - (double)p->clip_low, hi = 1.0 + (double)p->clip_high;
    const double dual = p->dual_clip, cap = p->is_cap, kl = p->kl_coef;
    const int with_kl = kl > 0.0 && logp_ref;
    double total = 0.0;
    for (int t = 0; t < n; t++) {
        const double A = adv[t];
        const double lw = (double)logp_prox[t] - (double)logp_behav[t];
        const double w_raw = exp(lw);
        const double w = w_raw < cap ? w_raw : cap;
        const double ratio = exp((double)logp_new[t] - (double)logp_prox[t]);
        const double u = ratio * A;
        const double rc = ratio < lo ? lo : ratio > hi ? hi : ratio;
        const double c = rc * A;
        double pg = u <= c ? u : c;
        int flows = u <= c; /* ties (inside the range) keep the gradient */
        int dual_binds = 0;
        if (A < 0.0 && pg < dual * A) {
            pg = dual * A;
            flows = 0;
            dual_binds = 1;
        }
        double loss = -w * pg;
        double grad = flows ? -w * A * ratio : 0.0;
        double k3 = 0.0;
        if (with_kl) {
            const double x = (double)logp_ref[t] - (double)logp_new[t];
            k3 = expm1(x) - x;
            loss += kl * k3;
            grad += kl * -expm1(x); /* 1 - e^x */
        }
        total += loss;
        if (dlogp)
            dlogp[t] = (float)(scale * grad);
        if (acc) {
            acc->pg_sum += -w * pg;
            acc->kl_sum += k3;
            acc->w_sum += w;
            acc->clipped += !flows && A != 0.0;
            acc->dual_clipped += dual_binds;
            acc->is_capped += w_raw > cap;
            if (ratio > acc->ratio_max)
                acc->ratio_max = ratio;
            if (fabs(lw) > acc->max_abs_prox_behav)
                acc->max_abs_prox_behav = fabs(lw);
        }
    }
    return scale * total;
}

/* ---- the update ---- */

static int sample_seq_len(const grpo_group_t *grp, int i)
{
    return grp->len[i] > 0 ? grp->prompt_len[grp->prompt_index[i]] + grp->len[i] - 1 : 0;
}

typedef struct {
    double loss, entropy_sum, onpolicy_max, all_max;
    long tokens, fwd_tokens;
    int any_onpolicy, passes;
    grpo_token_acc_t acc;
} step_acc_t;

/* Forward/backward of the n_seq samples queued in g->mb_group/mb_sample,
 * occupying T packed tokens. Gradients accumulate into policy->grads. */
static int run_pass(grpo_t *g, model_t *policy, const model_t *ref, const grpo_group_t *groups,
                    const float *const *advantages, int n_seq, int T, uint64_t learner_version,
                    float scale, step_acc_t *sa)
{
    const int V = g->mc.vocab_size;
    const float temp = (float)g->rl.temperature;
    int n_images = 0, pos = 0;
    g->seq_start[0] = 0;
    for (int s = 0; s < n_seq; s++) {
        const grpo_group_t *grp = &groups[g->mb_group[s]];
        const int i = g->mb_sample[s];
        const int pi = grp->prompt_index[i];
        const int pl = grp->prompt_len[pi], n = grp->len[i];
        const int *prompt = grp->prompt[pi];
        int has_slots = 0;
        for (int t = 0; t < pl; t++) {
            g->tokens[pos + t] = prompt[t];
            g->targets[pos + t] = -1;
            has_slots |= prompt[t] == MODEL_IMAGE_SLOT;
        }
        /* The last prompt position predicts response[0]; the last response
         * token is never an input (it predicts nothing). */
        g->targets[pos + pl - 1] = grp->tokens[i][0];
        for (int t = 0; t + 1 < n; t++) {
            g->tokens[pos + pl + t] = grp->tokens[i][t];
            g->targets[pos + pl + t] = grp->tokens[i][t + 1];
        }
        pos += pl + n - 1;
        g->seq_start[s + 1] = pos;
        if (has_slots)
            image_to_float(grp->image, g->mc.image_size, g->images + (size_t)n_images++ * g->img_floats);
    }
    if (pos != T) {
        log_error("grpo: internal error: packed %d tokens, expected %d", pos, T);
        return -EINVAL;
    }
    model_batch_t b = {.n_tokens = T, .n_seqs = n_seq, .seq_start = g->seq_start,
                       .tokens = g->tokens, .n_images = n_images, .images = g->images};
    const int with_kl = g->rl.kl_coef > 0.0;
    if (with_kl) {
        /* Reference first: the policy forward after it leaves its own
         * activations in the shared buffers for the backward. */
        const float *ref_logits = model_forward(ref, g->acts, &b);
        if (!ref_logits)
            return -EINVAL;
        k_logprobs_fwd(g->logp_ref, NULL, ref_logits, g->targets, T, V, temp);
    }
    float *logits = model_forward(policy, g->acts, &b);
    if (!logits)
        return -EINVAL;
    k_logprobs_fwd(g->logp_new, g->entropy, logits, g->targets, T, V, temp);

    /* Gather the loss tokens with their behaviour log-prob and advantage. */
    int nc = 0;
    for (int s = 0; s < n_seq; s++) {
        const grpo_group_t *grp = &groups[g->mb_group[s]];
        const int i = g->mb_sample[s];
        const int pl = grp->prompt_len[grp->prompt_index[i]];
        const int first = g->seq_start[s] + pl - 1;
        const int onp = grp->version == learner_version;
        for (int t = 0; t < grp->len[i]; t++) {
            const int row = first + t;
            g->c_pos[nc] = row;
            g->c_new[nc] = g->logp_new[row];
            g->c_behav[nc] = grp->logp[i][t];
            g->c_ref[nc] = with_kl ? g->logp_ref[row] : 0.0f;
            g->c_adv[nc] = advantages[g->mb_group[s]][i];
            g->c_onpolicy[nc] = onp;
            nc++;
        }
    }
    grpo_loss_params_t lp = {
        .clip_low = (float)g->rl.clip_low, .clip_high = (float)g->rl.clip_high,
        .dual_clip = (float)g->rl.dual_clip, .is_cap = (float)g->rl.is_cap,
        .kl_coef = (float)g->rl.kl_coef,
    };
    /* logp_prox = logp_new, detached: the learner's pre-update policy. */
    sa->loss += grpo_token_loss_grad(&lp, nc, g->c_new, g->c_new, g->c_behav,
                                     with_kl ? g->c_ref : NULL, g->c_adv, scale, g->c_dlogp, &sa->acc);
    for (int t = 0; t < T; t++)
        g->dlogp[t] = 0.0f;
    for (int k = 0; k < nc; k++) {
        g->dlogp[g->c_pos[k]] = g->c_dlogp[k];
        sa->entropy_sum += g->entropy[g->c_pos[k]];
        double d = fabs((double)g->c_new[k] - (double)g->c_behav[k]);
        if (d > sa->all_max)
            sa->all_max = d;
        if (g->c_onpolicy[k]) {
            sa->any_onpolicy = 1;
            if (d > sa->onpolicy_max)
                sa->onpolicy_max = d;
        }
    }
    sa->tokens += nc;
    sa->fwd_tokens += T;
    sa->passes++;
    k_logprobs_bwd(logits, g->dlogp, logits, g->targets, T, V, temp);
    return model_backward(policy, g->acts, logits);
}

static int group_kept(const grpo_t *g, const grpo_group_t *grp, const float *adv)
{
    if (!g->rl.skip_zero_variance)
        return 1;
    for (int i = 0; i < grp->G; i++)
        if (adv[i] != 0.0f)
            return 1;
    return 0;
}

int grpo_step(grpo_t *g, model_t *policy, const model_t *ref, adamw_t *opt,
              const grpo_group_t *groups, const float *const *advantages, int n_groups,
              uint64_t learner_version, grpo_stats_t *stats)
{
    double t0 = now_seconds();
    grpo_stats_t st;
    memset(&st, 0, sizeof st);
    st.max_logp_diff_onpolicy = -1.0;
    st.says_first_rate = -1.0;
    if (!g || !policy || !opt || (n_groups > 0 && (!groups || !advantages)) || n_groups < 0) {
        log_error("grpo_step: NULL argument or n_groups %d < 0", n_groups);
        return -EINVAL;
    }
    if (!policy->grads || memcmp(&policy->cfg, &g->mc, sizeof g->mc) != 0) {
        log_error("grpo_step: the policy has no gradients or a config other than grpo_new saw");
        return -EINVAL;
    }
    if (g->rl.kl_coef > 0.0 && (!ref || memcmp(&ref->cfg, &g->mc, sizeof g->mc) != 0)) {
        log_error("grpo_step: rl.kl_coef = %g needs a reference model with the policy's config",
                  g->rl.kl_coef);
        return -EINVAL;
    }
    /* Validate everything before touching gradients or weights. */
    for (int k = 0; k < n_groups; k++) {
        int rc = check_group(g, &groups[k], k);
        if (rc)
            return rc;
        if (!advantages[k]) {
            log_error("grpo_step: group %d has no advantages", k);
            return -EINVAL;
        }
        for (int i = 0; i < groups[k].G; i++) {
            if (!isfinite(advantages[k][i])) {
                log_error("grpo_step: group %d sample %d: advantage %g is not finite", k, i,
                          (double)advantages[k][i]);
                return -EINVAL;
            }
        }
    }

    /* Rollout statistics over every sample (skipped groups included). */
    int says_first = 0, verdicts = 0;
    double rsum = 0, psum = 0, fsum = 0, lsum = 0, stale_sum = 0, stale_max = 0;
    long n_tokens_total = 0;
    for (int k = 0; k < n_groups; k++) {
        const grpo_group_t *grp = &groups[k];
        int rc = score_samples(g, grp, g->rewards, g->pref, g->fmt, &says_first, &verdicts);
        if (rc)
            return rc;
        for (int i = 0; i < grp->G; i++) {
            rsum += g->rewards[i];
            psum += g->pref[i];
            fsum += g->fmt[i];
            lsum += grp->len[i];
        }
        st.samples += grp->G;
        double stale = (double)learner_version - (double)grp->version;
        stale_sum += stale;
        if (k == 0 || stale > stale_max)
            stale_max = stale;
        if (group_kept(g, grp, advantages[k])) {
            st.groups_used++;
            st.samples_used += grp->G;
            for (int i = 0; i < grp->G; i++)
                n_tokens_total += grp->len[i];
        } else {
            st.groups_skipped++;
        }
    }
    if (st.samples > 0) {
        st.reward_mean = rsum / st.samples;
        st.preference_acc = psum / st.samples;
        st.format_rate = fsum / st.samples;
        st.response_len_mean = lsum / st.samples;
    }
    if (n_groups > 0) {
        st.staleness_mean = stale_sum / n_groups;
        st.staleness_max = stale_max;
    }
    if (verdicts > 0)
        st.says_first_rate = (double)says_first / verdicts;

    const adamw_config_t *oc = adamw_config(opt);
    st.lr = adamw_lr_at(oc, adamw_steps(opt));
    if (n_tokens_total == 0) {
        /* Nothing to learn from: no gradient, no optimizer step (a zero
         * gradient would still move the weights through momentum and decay). */
        st.seconds = now_seconds() - t0;
        if (stats)
            *stats = st;
        return 0;
    }

    model_zero_grads(policy);
    step_acc_t sa;
    memset(&sa, 0, sizeof sa);
    const float scale = (float)(1.0 / (double)n_tokens_total);
    int n_seq = 0, T = 0;
    for (int k = 0; k < n_groups; k++) {
        const grpo_group_t *grp = &groups[k];
        if (!group_kept(g, grp, advantages[k]))
            continue;
        for (int i = 0; i < grp->G; i++) {
            int len = sample_seq_len(grp, i);
            if (len == 0)
                continue; /* an empty response has no loss token */
            if (n_seq == g->mb_seqs || T + len > g->mb_tokens) {
                int rc = run_pass(g, policy, ref, groups, advantages, n_seq, T, learner_version,
                                  scale, &sa);
                if (rc)
                    return rc;
                n_seq = 0;
                T = 0;
            }
            g->mb_group[n_seq] = k;
            g->mb_sample[n_seq] = i;
            n_seq++;
            T += len;
        }
    }
    if (n_seq > 0) {
        int rc = run_pass(g, policy, ref, groups, advantages, n_seq, T, learner_version, scale, &sa);
        if (rc)
            return rc;
    }

    float gn = adamw_step(opt, policy);
    st.grad_norm = gn;
    st.updated = isfinite(gn) ? 1 : 0;
    if (!st.updated)
        log_warn("grpo_step: gradient norm %g is not finite: update skipped", (double)gn);
    double nt = (double)sa.tokens;
    st.loss = sa.loss;
    st.pg_loss = sa.acc.pg_sum / nt;
    st.kl = sa.acc.kl_sum / nt;
    st.entropy = sa.entropy_sum / nt;
    st.clip_fraction = (double)sa.acc.clipped / nt;
    st.dual_clip_fraction = (double)sa.acc.dual_clipped / nt;
    st.is_weight_mean = sa.acc.w_sum / nt;
    st.is_capped_fraction = (double)sa.acc.is_capped / nt;
    st.ratio_max = sa.acc.ratio_max;
    st.max_logp_diff_onpolicy = sa.any_onpolicy ? sa.onpolicy_max : -1.0;
    st.max_logp_diff = sa.all_max;
    st.tokens = sa.tokens;
    st.forward_tokens = sa.fwd_tokens;
    st.micro_batches = sa.passes;
    st.seconds = now_seconds() - t0;
    if (stats)
        *stats = st;
    return 0;
}

/* ---- rollouts ---- */

grpo_rollout_t *grpo_rollout_new(int G_cap, int max_new, int image_size)
{
    if (G_cap < 1 || max_new < 1 || image_size < 0) {
        log_error("grpo_rollout_new: bad sizes (G %d, max_new %d, image_size %d)", G_cap, max_new,
                  image_size);
        return NULL;
    }
    grpo_rollout_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    size_t n = (size_t)G_cap * (size_t)max_new;
    r->G_cap = G_cap;
    r->max_new_cap = max_new;
    r->max_new = max_new;
    r->image_size = image_size;
    r->tokens = malloc(n * sizeof(int));
    r->logp = malloc(n * sizeof(float));
    r->len = calloc((size_t)G_cap, sizeof(int));
    r->prompt_index = calloc((size_t)G_cap, sizeof(int));
    r->finished_by_eos = calloc((size_t)G_cap, sizeof(int));
    r->token_rows = malloc((size_t)G_cap * sizeof *r->token_rows);
    r->logp_rows = malloc((size_t)G_cap * sizeof *r->logp_rows);
    r->image_f = image_size > 0 ? malloc((size_t)3 * image_size * image_size * sizeof(float)) : NULL;
    if (!r->tokens || !r->logp || !r->len || !r->prompt_index || !r->finished_by_eos ||
        !r->token_rows || !r->logp_rows || (image_size > 0 && !r->image_f)) {
        grpo_rollout_destroy(&r);
        return NULL;
    }
    for (int i = 0; i < G_cap; i++) {
        r->token_rows[i] = r->tokens + (size_t)i * max_new;
        r->logp_rows[i] = r->logp + (size_t)i * max_new;
    }
    return r;
}

void grpo_rollout_destroy(grpo_rollout_t **pr)
{
    if (!pr || !*pr)
        return;
    grpo_rollout_t *r = *pr;
    free(r->tokens);
    free(r->logp);
    free(r->len);
    free(r->prompt_index);
    free(r->finished_by_eos);
    free(r->token_rows);
    free(r->logp_rows);
    free(r->image_f);
    free(r);
    *pr = NULL;
}

int grpo_rollout_group(const model_t *policy, sampler_t *s, const grpo_rollout_request_t *req,
                       grpo_rollout_t *out)
{
    if (!policy || !s || !req || !out) {
        log_error("grpo_rollout_group: NULL argument");
        return -EINVAL;
    }
    const int G = req->G, alt = req->alt_count;
    if (G < 1 || G > out->G_cap || alt < 0 || alt > G || req->max_new_tokens < 0 ||
        req->max_new_tokens > out->max_new_cap || !req->prompt[0] || req->prompt_len[0] < 1 ||
        (alt > 0 && (!req->prompt[1] || req->prompt_len[1] < 1))) {
        log_error("grpo_rollout_group: bad request (G %d of at most %d, alt_count %d, max_new %d of "
                  "at most %d, prompt lengths %d / %d)", G, out->G_cap, alt, req->max_new_tokens,
                  out->max_new_cap, req->prompt_len[0], req->prompt_len[1]);
        return -EINVAL;
    }
    if (sampler_max_new(s) != out->max_new) {
        log_error("grpo_rollout_group: rollout buffers have row stride %d but the sampler writes %d "
                  "(create both with the same max_new)", out->max_new, sampler_max_new(s));
        return -EINVAL;
    }
    const float *image = NULL;
    if (req->image) {
        if (out->image_size != policy->cfg.image_size || !out->image_f) {
            log_error("grpo_rollout_group: image given but buffers are for image size %d, model %d",
                      out->image_size, policy->cfg.image_size);
            return -EINVAL;
        }
        image_to_float(req->image, out->image_size, out->image_f);
        image = out->image_f;
    }
    for (int k = 0; k < (alt > 0 ? 2 : 1); k++) {
        for (int t = 0; t < req->prompt_len[k]; t++) {
            if (req->prompt[k][t] == MODEL_IMAGE_SLOT && !image) {
                log_error("grpo_rollout_group: prompt %d has image slots but no image was given", k);
                return -EINVAL;
            }
        }
    }
    static const int banned[] = {TOK_IMG, TOK_IMG_END, TOK_PAD};
    sample_params_t p = {
        .temperature = req->temperature, .top_p = req->top_p, .max_new_tokens = req->max_new_tokens,
        .eos_id = TOK_EOS, .banned = banned, .n_banned = (int)(sizeof banned / sizeof banned[0]),
    };
    const int counts[2] = {G - alt, alt};
    int first = 0;
    for (int k = 0; k < 2; k++) {
        if (counts[k] == 0)
            continue;
        rng_t rng;
        rng_seed_stream(&rng, req->seed, (uint64_t)k);
        /* The sampler writes rows of its own max_new: the rollout buffers
         * must have been made with the same max_new (see grpo.h). */
        int rc = sampler_generate(s, policy, req->prompt[k], req->prompt_len[k], image, counts[k], &p,
                                  &rng, out->tokens + (size_t)first * out->max_new,
                                  out->logp + (size_t)first * out->max_new, out->len + first);
        if (rc) {
            log_error("grpo_rollout_group: sampler_generate failed for prompt %d: %s", k, strerror(-rc));
            return rc;
        }
        for (int i = first; i < first + counts[k]; i++) {
            out->prompt_index[i] = k;
            out->finished_by_eos[i] =
                out->len[i] > 0 && out->tokens[(size_t)i * out->max_new + out->len[i] - 1] == TOK_EOS;
        }
        first += counts[k];
    }
    out->G = G;
    return 0;
}

void grpo_rollout_as_group(const grpo_rollout_request_t *req, const grpo_rollout_t *out,
                           uint64_t version, reward_task_t task, const char *const expected[2],
                           grpo_group_t *grp)
{
    memset(grp, 0, sizeof *grp);
    grp->prompt[0] = req->prompt[0];
    grp->prompt_len[0] = req->prompt_len[0];
    if (req->alt_count > 0) {
        grp->prompt[1] = req->prompt[1];
        grp->prompt_len[1] = req->prompt_len[1];
    }
    grp->image = req->image;
    grp->G = out->G;
    grp->prompt_index = out->prompt_index;
    grp->tokens = out->token_rows;
    grp->len = out->len;
    grp->logp = out->logp_rows;
    grp->version = version;
    grp->task = task;
    grp->expected[0] = expected ? expected[0] : NULL;
    grp->expected[1] = expected ? expected[1] : NULL;
}

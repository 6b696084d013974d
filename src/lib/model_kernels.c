/*
 * model_kernels.c - the numerical steps of the forward pass
 * (model_forward.c): matrix products with LoRA at run time, LayerNorm,
 * RMSNorm, activations, rotate_half RoPE, causal attention with an
 * optional sliding window, PEFT's embedding LoRA.
 *
 * Numerical contract (also in lora.h): weights are the exact F32 values
 * of the stored numbers; activations F32; every matrix product, the
 * attention scores and the attention-weighted sums included, is one
 * OpenBLAS call: cblas_sgemm, or cblas_sgemv for a single token (sgemm
 * packs all of W per call); OpenBLAS picks the summation order.  LayerNorm and
 * RMSNorm statistics and softmax denominators are summed in double in
 * increasing index order and rounded once; elementwise functions are the
 * C library's F32 ones (expf, tanhf, cosf, sinf).  This matches PyTorch's
 * F32 forward to about 1e-6 relative; the tests hold it to 1e-4.
 */
#include "model_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* y[n, out] (row stride ldy) = alpha·x[n, in]·op(W) + beta·y, where W is
 * stored [out, in] (wt: op(W) = Wᵀ, nn.Linear) or [in, out] (op(W) = W,
 * Conv1D).  One token (n = 1) goes through sgemv: OpenBLAS's sgemm packs
 * the whole of W on every call, which costs more than the product when
 * x is a single row (generation with a KV cache). */
void matmul(int wt, size_t n, uint64_t out, uint64_t in, float alpha, const float *x, size_t ldx,
            const float *W, size_t ldw, float beta, float *y, size_t ldy)
{
    if (n == 1) {
        if (wt)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, alpha, W, (int)ldw, x, 1,
                        beta, y, 1);
        else
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)in, (int)out, alpha, W, (int)ldw, x, 1, beta,
                        y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, wt ? CblasTrans : CblasNoTrans, (int)n, (int)out,
                (int)in, alpha, x, (int)ldx, W, (int)ldw, beta, y, (int)ldy);
}

/* y[n, out] (row stride ldy) = x[n, in] (row stride ldx)·W + b, plus
 * scale·(x·Aᵀ)·Bᵀ when the adapter runs unmerged. */
void linop_run(const lora_run *r, const linop *op, const float *x, size_t ldx, size_t n, float *y,
               size_t ldy)
{
    const float *W = (r->mode == LORA_MODE_MERGED && op->wm) ? op->wm : op->w;
    matmul(!op->conv1d, n, op->out, op->in, 1.0f, x, ldx, W, op->conv1d ? op->out : op->in, 0.0f,
           y, ldy);
    if (r->mode == LORA_MODE_UNMERGED && op->A && op->dora) {
        /* DoRA: y = f ⊙ (x·W0ᵀ + scale·(x·Aᵀ)·Bᵀ) + b; the bias is not rescaled */
        matmul(1, n, op->r, op->in, 1.0f, x, ldx, op->A, op->in, 0.0f, r->lt, op->r);
        matmul(1, n, op->out, op->r, op->scale, r->lt, op->r, op->B, op->r, 1.0f, y, ldy);
        for (size_t i = 0; i < n; i++)
            for (uint64_t j = 0; j < op->out; j++)
                y[i * ldy + j] = y[i * ldy + j] * op->dora[j] + (op->b ? op->b[j] : 0.0f);
        return;
    }
    if (op->b)
        for (size_t i = 0; i < n; i++)
            for (uint64_t j = 0; j < op->out; j++)
                y[i * ldy + j] += op->b[j];
    if (r->mode == LORA_MODE_UNMERGED && op->A) {
        /* t = x·Aᵀ [n, r], then y += scale·t·Bᵀ: ΔW is never formed */
        matmul(1, n, op->r, op->in, 1.0f, x, ldx, op->A, op->in, 0.0f, r->lt, op->r);
        matmul(1, n, op->out, op->r, op->scale, r->lt, op->r, op->B, op->r, 1.0f, y, ldy);
    }
}

void layernorm(const float *x, float *y, size_t n, uint64_t E, const float *w, const float *b,
               double eps)
{
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + i * E;
        float *yi = y + i * E;
        double s = 0;
        for (uint64_t j = 0; j < E; j++)
            s += xi[j];
        double mean = s / (double)E, v = 0;
        for (uint64_t j = 0; j < E; j++)
            v += ((double)xi[j] - mean) * ((double)xi[j] - mean);
        float rs = (float)(1.0 / sqrt(v / (double)E + eps)), mf = (float)mean;
        for (uint64_t j = 0; j < E; j++)
            yi[j] = (xi[j] - mf) * rs * w[j] + b[j];
    }
}

/* y = w·(x / rms(x)); y may be x. */
void rmsnorm(const float *x, float *y, size_t n, uint64_t E, const float *w, double eps)
{
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + i * E;
        float *yi = y + i * E;
        double s = 0;
        for (uint64_t j = 0; j < E; j++)
            s += (double)xi[j] * xi[j];
        float rs = (float)(1.0 / sqrt(s / (double)E + eps));
        for (uint64_t j = 0; j < E; j++)
            yi[j] = w[j] * (xi[j] * rs);
    }
}

/* The family's norm over n rows of the hidden size. */
void model_norm(const lora_model *m, const float *x, float *y, size_t n, const float *w,
                const float *b)
{
    if (m->fam->norm == NORM_LAYER)
        layernorm(x, y, n, m->cfg.hidden, w, b, m->cfg.norm_eps);
    else
        rmsnorm(x, y, n, m->cfg.hidden, w, m->cfg.norm_eps);
}

int model_act(const lora_model *m)
{
    return m->cfg.act ? m->cfg.act : m->fam->act;
}

/* x = act(x) elementwise: gelu_new (tanh approximation), SiLU, ReLU,
 * GELU (erf, PyTorch's exact nn.GELU). */
void activate(int act, float *x, size_t n)
{
    const float k0 = 0.7978845608028654f, k1 = 0.044715f; /* √(2/π) */
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (act == ACT_GELU_TANH)
            x[i] = 0.5f * v * (1.0f + tanhf(k0 * (v + k1 * (v * v * v))));
        else if (act == ACT_SILU)
            x[i] = v / (1.0f + expf(-v));
        else if (act == ACT_GELU)
            x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        else
            x[i] = v > 0.0f ? v : 0.0f;
    }
}

/* RMSNorm of every head of n rows (row stride ld) in place: Qwen3's
 * q_norm / k_norm over head_dim. */
void head_rmsnorm(float *v, size_t ld, size_t n, uint64_t nheads, uint64_t hd, const float *w,
                  double eps)
{
    for (size_t i = 0; i < n; i++)
        rmsnorm(v + i * ld, v + i * ld, nheads, hd, w, eps);
}

int layer_windowed(const lora_model_config *c, uint64_t l)
{
    return c->sliding_window && l >= c->window_from &&
           (!c->window_period || (l + 1) % c->window_period != 0);
}

/* Causal attention of n new queries at positions p0.. over the p0 + n
 * cached keys, every head; q rows have stride ldq, out rows qd.  On a
 * windowed layer query p sees keys j with 0 <= p - j < W (transformers'
 * sliding_window_overlay: kv > q - W); the others are masked.  Scores
 * are scaled by attn_scale (default 1/sqrt(head_dim)) and, with Gemma 2's
 * attn_softcap c, replaced by c·tanh(s / c) before the mask. */
void attention(lora_run *r, uint64_t l, const float *q, size_t ldq, size_t n, float *out)
{
    const lora_model_config *c = &r->m->cfg;
    uint64_t hd = c->head_dim, kvd = c->kv_heads * hd, group = c->heads / c->kv_heads;
    uint64_t p0 = r->pos, nk = p0 + n;
    uint64_t W = layer_windowed(c, l) ? c->sliding_window : 0;
    float scale = (float)(c->attn_scale > 0 ? c->attn_scale : 1.0 / sqrt((double)hd));
    float cap = (float)c->attn_softcap;
    for (uint64_t h = 0; h < c->heads; h++) {
        uint64_t kh = h / group;
        matmul(1, n, nk, hd, scale, q + h * hd, ldq, r->kc[l] + kh * hd, kvd, 0.0f, r->sc, nk);
        for (size_t i = 0; i < n; i++) {
            float *s = r->sc + i * nk;
            uint64_t valid = p0 + i + 1, lo = (W && valid > W) ? valid - W : 0;
            if (cap > 0)
                for (uint64_t j = lo; j < valid; j++)
                    s[j] = tanhf(s[j] / cap) * cap;
            float mx = s[lo];
            for (uint64_t j = lo + 1; j < valid; j++)
                if (s[j] > mx)
                    mx = s[j];
            double sum = 0;
            for (uint64_t j = lo; j < valid; j++) {
                s[j] = expf(s[j] - mx);
                sum += s[j];
            }
            float inv = (float)(1.0 / sum);
            for (uint64_t j = lo; j < valid; j++)
                s[j] *= inv;
            for (uint64_t j = 0; j < lo; j++)
                s[j] = 0.0f;
            for (uint64_t j = valid; j < nk; j++)
                s[j] = 0.0f;
        }
        matmul(0, n, hd, nk, 1.0f, r->sc, nk, r->vc[l] + kh * hd, kvd, 0.0f, out + h * hd,
               c->heads * hd);
    }
}

/* rotate_half RoPE on the first rotary_dim of every head (the rest
 * passes through: Phi's and GPT-NeoX's partial rotary). */
void rope(const lora_run *r, uint64_t l, float *v, size_t ld, size_t n, uint64_t nheads)
{
    uint64_t hd = r->m->cfg.head_dim, hd2 = r->m->cfg.rotary_dim / 2;
    int local = r->cosl && layer_windowed(&r->m->cfg, l);
    /* longrope: the long factors when this forward reaches past
     * original_max_position_embeddings (transformers'
     * _longrope_frequency_update on max(position_ids) + 1); keys cached
     * by earlier forwards keep the rotation they got */
    int lng = r->cosg && r->pos + n > r->m->cfg.rope_original_max;
    const float *ct = local ? r->cosl : lng ? r->cosg : r->cosv;
    const float *st = local ? r->sinl : lng ? r->sing : r->sinv;
    for (size_t i = 0; i < n; i++) {
        const float *cs = ct + (r->pos + i) * hd2, *sn = st + (r->pos + i) * hd2;
        for (uint64_t h = 0; h < nheads; h++) {
            float *x = v + i * ld + h * hd;
            for (uint64_t j = 0; j < hd2; j++) {
                float x1 = x[j], x2 = x[j + hd2];
                x[j] = x1 * cs[j] - x2 * sn[j];
                x[j + hd2] = x2 * cs[j] + x1 * sn[j];
            }
        }
    }
}

/* x += scale·B·A[:, tok]: PEFT's Embedding LoRA at run time
 * (F.embedding(x, A.T) @ B.T · scaling), with A [r, V] and B [E, r]. */
void embedding_lora(const linop *op, uint64_t V, int32_t tok, float *x)
{
    uint64_t E = op->out, R = op->r;
    for (uint64_t j = 0; j < E; j++) {
        float s = 0.0f;
        for (uint64_t k = 0; k < R; k++)
            s += op->B[j * R + k] * op->A[k * V + (uint64_t)tok];
        x[j] += s * op->scale;
    }
}

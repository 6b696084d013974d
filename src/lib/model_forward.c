/*
 * model_forward.c - the one decoder forward pass every family runs,
 * with a KV cache: embeddings (plus learned positions or RoPE), then
 * per layer attention and MLP with pre- or post-norm residuals, then
 * the final norm and the head.  What differs between families comes
 * from the description in model_family.c and from config.json; the
 * numerical steps and their contract are in model_kernels.c.
 */
#include "model_internal.h"

#include <math.h>
#include <string.h>

static void *alloc_floats(uint64_t a, uint64_t b, int *bad)
{
    uint64_t n;
    if (!lora_mul_ok(a, b, &n) || !lora_mul_ok(n, sizeof(float), &n) || n > SIZE_MAX) {
        *bad = 1;
        return NULL;
    }
    void *p = malloc(n ? (size_t)n : 1);
    if (!p)
        *bad = 1;
    return p;
}

void lora_run_free(lora_run *r)
{
    if (!r)
        return;
    if (r->kc)
        for (uint64_t i = 0; i < r->m->cfg.layers; i++)
            free(r->kc[i]);
    if (r->vc)
        for (uint64_t i = 0; i < r->m->cfg.layers; i++)
            free(r->vc[i]);
    free(r->kc); free(r->vc);
    free(r->x); free(r->h); free(r->q); free(r->att); free(r->sc); free(r->f1); free(r->f2);
    free(r->lt); free(r->qkv); free(r->e); free(r->y); free(r->z); free(r->cosv); free(r->sinv);
    free(r->cosl); free(r->sinl); free(r->cosg); free(r->sing);
    free(r);
}

/* The largest adapter rank: the size of the run's LoRA scratch. */
static uint64_t max_rank(const lora_model *m)
{
    uint64_t rmax = m->hop.r > 1 ? m->hop.r : 1;
    for (uint64_t i = 0; i < m->cfg.layers; i++) {
        linop *ops[LAYER_OPS];
        layer_ops(&m->L[i], ops);
        for (int j = 0; j < LAYER_OPS; j++)
            if (ops[j]->r > rmax)
                rmax = ops[j]->r;
    }
    return rmax;
}

/* cos and sin of p·inv_freq[i] times attention scaling, in F32 as
 * transformers computes them. */
static void rope_tables(const float *inv, uint64_t T, uint64_t hd2, float scale, float **cosv,
                        float **sinv, int *bad)
{
    *cosv = alloc_floats(T, hd2, bad);
    *sinv = alloc_floats(T, hd2, bad);
    for (uint64_t p = 0; !*bad && p < T; p++)
        for (uint64_t i = 0; i < hd2; i++) {
            float a = (float)p * inv[i];
            (*cosv)[p * hd2 + i] = scale == 1.0f ? cosf(a) : cosf(a) * scale;
            (*sinv)[p * hd2 + i] = scale == 1.0f ? sinf(a) : sinf(a) * scale;
        }
}

static void alloc_buffers(lora_run *r, int *bad)
{
    const lora_model *m = r->m;
    const lora_model_config *c = &m->cfg;
    uint64_t T = r->cap, E = c->hidden, qd = c->heads * c->head_dim,
             kvd = c->kv_heads * c->head_dim, hd2 = c->rotary_dim / 2;
    r->kc = calloc((size_t)c->layers, sizeof *r->kc);
    r->vc = calloc((size_t)c->layers, sizeof *r->vc);
    if (!r->kc || !r->vc)
        *bad = 1;
    for (uint64_t i = 0; !*bad && i < c->layers; i++) {
        r->kc[i] = alloc_floats(T, kvd, bad);
        r->vc[i] = alloc_floats(T, kvd, bad);
    }
    r->x = alloc_floats(T, E, bad);
    r->h = alloc_floats(T, E, bad);
    r->q = alloc_floats(T, qd, bad);
    r->att = alloc_floats(T, qd, bad);
    r->sc = alloc_floats(T, T, bad);
    r->f1 = alloc_floats(T, m->fam->gate_up ? 2 * c->inner : c->inner, bad);
    r->f2 = alloc_floats(T, c->inner, bad);
    r->lt = alloc_floats(T, r->rmax, bad);
    if (m->fam->qkv)
        r->qkv = alloc_floats(T, qd + 2 * kvd, bad);
    if (m->pin.w)
        r->e = alloc_floats(T, c->embed_dim, bad);
    if (c->parallel) {
        r->y = alloc_floats(T, E, bad);
        r->z = alloc_floats(T, E, bad);
    }
    float as = c->rope_type == LORA_ROPE_LONGROPE ? (float)c->rope_attn_factor : 1.0f;
    if (m->fam->pos == POS_ROPE)
        rope_tables(m->inv_freq, T, hd2, as, &r->cosv, &r->sinv, bad);
    if (m->inv_freq_local)
        rope_tables(m->inv_freq_local, T, hd2, 1.0f, &r->cosl, &r->sinl, bad);
    if (m->inv_freq_long)
        rope_tables(m->inv_freq_long, T, hd2, as, &r->cosg, &r->sing, bad);
}

int lora_run_new(lora_model *m, int mode, uint64_t max_tokens, lora_run **out, lora_error *err)
{
    *out = NULL;
    const lora_model_config *c = &m->cfg;
    if (mode != LORA_MODE_BASE && !m->ad)
        return lora_seterr(err, LORA_EUSAGE, "no adapter attached to the model");
    if (mode == LORA_MODE_MERGED && !m->merged)
        return lora_seterr(err, LORA_EUSAGE, "the adapter was attached without merged weights");
    if (mode < LORA_MODE_BASE || mode > LORA_MODE_MERGED)
        return lora_seterr(err, LORA_EUSAGE, "unknown forward mode %d", mode);
    if (max_tokens == 0 || max_tokens > c->max_positions)
        return lora_seterr(err, LORA_EINPUT, "sequences of %llu tokens do not fit the model (at most %llu)",
                           (unsigned long long)max_tokens, (unsigned long long)c->max_positions);
    lora_run *r = calloc(1, sizeof *r);
    if (!r)
        return lora_oom(err);
    r->m = m;
    r->mode = mode;
    r->cap = max_tokens;
    r->rmax = max_rank(m);
    int bad = 0;
    alloc_buffers(r, &bad);
    if (bad) {
        lora_run_free(r);
        return lora_seterr(err, LORA_EIO, "out of memory for a forward pass of %llu tokens",
                           (unsigned long long)max_tokens);
    }
    *out = r;
    return LORA_OK;
}

uint64_t lora_run_pos(const lora_run *r) { return r->pos; }

void lora_run_truncate(lora_run *r, uint64_t pos)
{
    if (pos < r->pos)
        r->pos = pos;
}

/* The fused projection's output [n, qd + 2·kvd] split into q (r->q)
 * and the cache's new k and v: [q; k; v] (GPT-2) or per head
 * [q_h; k_h; v_h] (GPT-NeoX's view(heads, 3·head_dim)). */
static void split_qkv(lora_run *r, uint64_t l, size_t n)
{
    const lora_model_config *c = &r->m->cfg;
    uint64_t hd = c->head_dim, qd = c->heads * hd, kvd = c->kv_heads * hd, ld = qd + 2 * kvd;
    size_t hb = hd * sizeof(float);
    for (size_t i = 0; i < n; i++) {
        const float *s = r->qkv + i * ld;
        float *q = r->q + i * qd, *k = r->kc[l] + (r->pos + i) * kvd,
              *v = r->vc[l] + (r->pos + i) * kvd;
        if (!r->m->fam->qkv_interleaved) {
            memcpy(q, s, qd * sizeof(float));
            memcpy(k, s + qd, kvd * sizeof(float));
            memcpy(v, s + qd + kvd, kvd * sizeof(float));
            continue;
        }
        for (uint64_t h = 0; h < c->heads; h++) {
            memcpy(q + h * hd, s + 3 * h * hd, hb);
            memcpy(k + h * hd, s + 3 * h * hd + hd, hb);
            memcpy(v + h * hd, s + 3 * h * hd + 2 * hd, hb);
        }
    }
}

/* in[n, E] (the normed input) -> out: q, k, v (fused or not) with the
 * new k and v stored in the cache, q/k norms, RoPE, attention, o.  out
 * may be in. */
static void block_attention(lora_run *r, uint64_t l, size_t n, const float *in, float *out)
{
    const lora_model *m = r->m;
    const lora_model_config *c = &m->cfg;
    layer *L = &m->L[l];
    uint64_t E = c->hidden, qd = c->heads * c->head_dim, kvd = c->kv_heads * c->head_dim;
    float *q = r->q, *k = r->kc[l] + r->pos * kvd;
    size_t ldq = qd;
    if (m->fam->qkv) {
        linop_run(r, &L->qkv, in, E, n, r->qkv, qd + 2 * kvd);
        split_qkv(r, l, n);
    } else {
        linop_run(r, &L->q, in, E, n, q, qd);
        linop_run(r, &L->k, in, E, n, k, kvd);
        linop_run(r, &L->v, in, E, n, r->vc[l] + r->pos * kvd, kvd);
    }
    if (L->qnw) {
        head_rmsnorm(q, ldq, n, c->heads, c->head_dim, L->qnw, c->norm_eps);
        head_rmsnorm(k, kvd, n, c->kv_heads, c->head_dim, L->knw, c->norm_eps);
    }
    if (m->fam->pos == POS_ROPE) {
        rope(r, l, q, ldq, n, c->heads);
        rope(r, l, k, kvd, n, c->kv_heads);
    }
    attention(r, l, q, ldq, n, r->att);
    linop_run(r, &L->o, r->att, qd, n, out, E);
}

/* in[n, E] (the normed input) -> out: act(up(in)) or act(gate(in))·up(in),
 * then down.  out may be in. */
static void block_mlp(lora_run *r, uint64_t l, size_t n, const float *in, float *out)
{
    const lora_model *m = r->m;
    layer *L = &m->L[l];
    uint64_t E = m->cfg.hidden, FF = m->cfg.inner;
    if (m->fam->gate_up) {
        /* Phi-3: gate, up = gate_up_proj(x).chunk(2); up · act(gate) */
        linop_run(r, &L->gate_up, in, E, n, r->f1, 2 * FF);
        for (size_t i = 0; i < n; i++) {
            float *g = r->f1 + i * 2 * FF;
            activate(model_act(m), g, FF);
            for (uint64_t j = 0; j < FF; j++)
                r->f2[i * FF + j] = g[FF + j] * g[j];
        }
        linop_run(r, &L->down, r->f2, FF, n, out, E);
        return;
    }
    linop_run(r, &L->up, in, E, n, r->f1, FF);
    if (m->fam->gate) {
        linop_run(r, &L->gate, in, E, n, r->f2, FF);
        activate(model_act(m), r->f2, n * FF);
        for (size_t i = 0; i < n * FF; i++)
            r->f1[i] = r->f2[i] * r->f1[i];
    } else {
        activate(model_act(m), r->f1, n * FF);
    }
    linop_run(r, &L->down, r->f1, FF, n, out, E);
}

static void add(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* Parallel: x = (attn(n1(x)) + mlp(n2(x))) + x, n2 = n1 when the family
 * has one norm (Phi); in that order, as PyTorch adds them. */
static void block_parallel(lora_run *r, uint64_t l, size_t n)
{
    const lora_model *m = r->m;
    const layer *L = &m->L[l];
    size_t nE = n * m->cfg.hidden;
    model_norm(m, r->x, r->h, n, L->n1w, L->n1b);
    if (L->n2w)
        model_norm(m, r->x, r->y, n, L->n2w, L->n2b);
    else
        memcpy(r->y, r->h, nE * sizeof(float));
    block_attention(r, l, n, r->h, r->z);
    block_mlp(r, l, n, r->y, r->y);
    for (size_t i = 0; i < nE; i++)
        r->x[i] = (r->z[i] + r->y[i]) + r->x[i];
}

/* Pre-norm: x += attn(n1(x)); x += mlp(n2(x)), Gemma with a norm of each
 * output too: x += pn1(attn(n1(x))); x += pn2(mlp(n2(x))).  Post-norm (OPT
 * with do_layer_norm_before false): x = n1(x + attn(x)); x = n2(x + mlp(x)). */
static void block(lora_run *r, uint64_t l, size_t n)
{
    const lora_model *m = r->m;
    const layer *L = &m->L[l];
    size_t nE = n * m->cfg.hidden;
    int post = m->cfg.post_norm;
    if (m->cfg.parallel) {
        block_parallel(r, l, n);
        return;
    }
    if (post)
        memcpy(r->h, r->x, nE * sizeof(float));
    else
        model_norm(m, r->x, r->h, n, L->n1w, L->n1b);
    block_attention(r, l, n, r->h, r->h);
    if (L->p1w)
        rmsnorm(r->h, r->h, n, m->cfg.hidden, L->p1w, m->cfg.norm_eps);
    add(r->x, r->h, nE);
    if (post) {
        model_norm(m, r->x, r->x, n, L->n1w, L->n1b);
        memcpy(r->h, r->x, nE * sizeof(float));
    } else {
        model_norm(m, r->x, r->h, n, L->n2w, L->n2b);
    }
    block_mlp(r, l, n, r->h, r->h);
    if (L->p2w)
        rmsnorm(r->h, r->h, n, m->cfg.hidden, L->p2w, m->cfg.norm_eps);
    add(r->x, r->h, nE);
    if (post)
        model_norm(m, r->x, r->x, n, L->n2w, L->n2b);
}

/* x[n, E] = embedding (+ its LoRA) (-> project_in) (+ learned position). */
static void embed(lora_run *r, const int32_t *tokens, size_t n)
{
    const lora_model *m = r->m;
    const lora_model_config *c = &m->cfg;
    uint64_t E = c->hidden, D = c->embed_dim;
    const float *emb = (r->mode == LORA_MODE_MERGED && m->eop.wm) ? m->eop.wm : m->embed;
    float *dst = m->pin.w ? r->e : r->x;
    for (size_t i = 0; i < n; i++) {
        memcpy(dst + i * D, emb + (uint64_t)tokens[i] * D, D * sizeof(float));
        if (r->mode == LORA_MODE_UNMERGED && m->eop.A)
            embedding_lora(&m->eop, c->vocab, tokens[i], dst + i * D);
    }
    if (m->pin.w)
        linop_run(r, &m->pin, r->e, D, n, r->x, E);
    if (m->wpe)
        for (size_t i = 0; i < n; i++)
            add(r->x + i * E, m->wpe + (r->pos + i + m->fam->pos_offset) * E, E);
    if (c->embed_scale > 0) {
        float s = (float)c->embed_scale; /* Gemma: torch.tensor(hidden ** 0.5) in F32 */
        for (size_t i = 0; i < n * E; i++)
            r->x[i] *= s;
    }
}

int lora_run_forward(lora_run *r, const int32_t *tokens, size_t n, float *logits, size_t rows,
                     lora_error *err)
{
    const lora_model *m = r->m;
    const lora_model_config *c = &m->cfg;
    uint64_t E = c->hidden;
    if (n == 0)
        return lora_seterr(err, LORA_EUSAGE, "forward of no tokens");
    if (rows > n)
        return lora_seterr(err, LORA_EUSAGE, "asked for %zu rows of logits from %zu tokens", rows, n);
    if (n > r->cap - r->pos)
        return lora_seterr(err, LORA_EINPUT, "sequence of %llu tokens is longer than %llu",
                           (unsigned long long)(r->pos + n), (unsigned long long)r->cap);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint64_t)tokens[i] >= c->vocab)
            return lora_seterr(err, LORA_EINPUT, "token id %ld is outside the vocabulary (0..%llu)",
                               (long)tokens[i], (unsigned long long)c->vocab - 1);
    embed(r, tokens, n);
    for (uint64_t l = 0; l < c->layers; l++)
        block(r, l, n);
    r->pos += n;
    if (logits && rows) {
        const float *xr = r->x + (n - rows) * E;
        if (m->nfw)
            model_norm(m, xr, r->h, rows, m->nfw, m->nfb);
        else
            memcpy(r->h, xr, rows * E * sizeof(float));
        const float *hin = r->h;
        if (m->pout.w) {
            linop_run(r, &m->pout, r->h, E, rows, r->e, c->embed_dim);
            hin = r->e;
        }
        linop_run(r, &m->hop, hin, c->embed_dim, rows, logits, c->vocab);
        float cap = (float)c->final_softcap;
        if (cap > 0)
            for (size_t i = 0; i < rows * c->vocab; i++)
                logits[i] = tanhf(logits[i] / cap) * cap;
    }
    return LORA_OK;
}

/*
 * model_weights.c - a model's tensors from its checkpoint, located by
 * the family description (model_family.c) and shaped by config.json:
 * every tensor checked for presence, shape and a computable dtype, and
 * decoded to F32 once.  Also the RoPE frequencies and the check that
 * config.json does not declare fewer layers than the checkpoint holds.
 */
#include "model_internal.h"

#include <math.h>
#include <string.h>

static int shape_error(const lora_model *m, const lora_tensor *t, uint64_t d0, uint64_t d1,
                       lora_error *err)
{
    char want[64], got[96] = "";
    if (d1)
        snprintf(want, sizeof want, "[%llu, %llu]", (unsigned long long)d0, (unsigned long long)d1);
    else
        snprintf(want, sizeof want, "[%llu]", (unsigned long long)d0);
    size_t o = 0;
    for (int i = 0; i < t->ndim && o < sizeof got - 24; i++)
        o += (size_t)snprintf(got + o, sizeof got - o, "%s%llu", i ? ", " : "",
                              (unsigned long long)t->shape[i]);
    return lora_seterr(err, LORA_EINPUT, "%s: tensor %s has shape [%s], config.json says %s",
                       lora_ckpt_dir(m->ck), t->name, got, want);
}

/* Find NAME (with the model's prefix) and decode it to a new F32 array
 * after checking its shape is [d0] or [d0, d1]. */
static int load_tensor(lora_model *m, const char *name, int prefixed, uint64_t d0, uint64_t d1,
                       float **dst, char **full, lora_error *err)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s%s", prefixed ? m->prefix : "", name);
    const lora_tensor *t = lora_ckpt_find(m->ck, buf, NULL);
    if (!t)
        return lora_seterr(err, LORA_EINPUT, "%s: tensor %s is missing", lora_ckpt_dir(m->ck), buf);
    int nd = d1 ? 2 : 1;
    if (t->ndim != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1))
        return shape_error(m, t, d0, d1, err);
    if (!lora_dtype_readable(t->dtype))
        return lora_seterr(err, LORA_EINPUT, "%s: tensor %s has dtype %s, which cannot be computed with",
                           lora_ckpt_dir(m->ck), buf, lora_dtype_name(t->dtype));
    float *p = malloc((size_t)t->numel * sizeof *p);
    if (!p)
        return lora_oom(err);
    void *hf = NULL; /* a GGUF base's q/k rows back in Hugging Face order */
    int rc = lora_ckpt_hf_rows(m->ck, t, &hf, err);
    if (rc != LORA_OK) {
        free(p);
        return rc;
    }
    rc = lora_decode_f32(t->dtype, hf ? hf : t->data, p, (size_t)t->numel);
    free(hf);
    if (rc != LORA_OK) {
        free(p);
        return lora_seterr(err, rc, "%s: tensor %s: cannot decode %s", lora_ckpt_dir(m->ck), buf,
                           lora_dtype_name(t->dtype));
    }
    if (full && !(*full = lora_strdup(buf, err))) {
        free(p);
        return LORA_EIO;
    }
    *dst = p;
    m->params += t->numel;
    return LORA_OK;
}

/* "<layers>N.<what>.<suffix>" in buf. */
static const char *layer_name(char *buf, size_t len, const lora_model *m, uint64_t i,
                              const char *what, const char *suffix)
{
    snprintf(buf, len, "%s%llu.%s%s", m->fam->layers, (unsigned long long)i, what, suffix);
    return buf;
}

static int load_linop(lora_model *m, linop *op, const char *name, uint64_t in, uint64_t out,
                      int bias, lora_error *err)
{
    char buf[224];
    op->in = in;
    op->out = out;
    op->conv1d = m->fam->conv1d;
    snprintf(buf, sizeof buf, "%s.weight", name);
    TRY(load_tensor(m, buf, 1, op->conv1d ? in : out, op->conv1d ? out : in, &op->w, &op->tensor,
                    err));
    if (bias) {
        snprintf(buf, sizeof buf, "%s.bias", name);
        TRY(load_tensor(m, buf, 1, out, 0, &op->b, NULL, err));
    }
    return LORA_OK;
}

/* A norm's weight [n] (Gemma: 1 + w, in F32 as Gemma's RMSNorm adds it)
 * and, for a LayerNorm with bias, its bias. */
static int load_norm(lora_model *m, const char *name, uint64_t n, float **w, float **b,
                     lora_error *err)
{
    char buf[224];
    snprintf(buf, sizeof buf, "%s.weight", name);
    TRY(load_tensor(m, buf, 1, n, 0, w, NULL, err));
    if (m->fam->norm_plus_one)
        for (uint64_t j = 0; j < n; j++)
            (*w)[j] = 1.0f + (*w)[j];
    if (!m->fam->norm_bias || !b)
        return LORA_OK;
    snprintf(buf, sizeof buf, "%s.bias", name);
    return load_tensor(m, buf, 1, n, 0, b, NULL, err);
}

/* RoPE inverse frequencies as transformers computes them: in F32,
 * 1 / theta^(2i/d), then the configured scaling when `scaled` is 1 (Gemma
 * 3's sliding layers use rope_local_theta unscaled: 0); longrope's short
 * (-1) and long (2) factors divide it. */
static int make_inv_freq(const lora_model_config *c, double theta, int scaled, float **out,
                         lora_error *err)
{
    uint64_t half = c->rotary_dim / 2;
    float *inv = *out = malloc((size_t)half * sizeof(float));
    if (!inv)
        return lora_oom(err);
    for (uint64_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)c->rotary_dim;
        float f = 1.0f / powf((float)theta, e);
        if (scaled < 0 || scaled > 1) {
            /* longrope: 1 / (ext · theta^e) in F32; scaled 2 long, -1 short */
            double ext = scaled > 1 ? c->rope_long[i] : c->rope_short[i];
            f = 1.0f / ((float)ext * powf((float)theta, e));
        } else if (!scaled) {
        } else if (c->rope_type == LORA_ROPE_LINEAR) {
            f = (float)(f / c->rope_factor);
        } else if (c->rope_type == LORA_ROPE_LLAMA3) {
            double L = (double)c->rope_original_max;
            double wl = 2.0 * M_PI / f;
            double lo_wl = L / c->rope_low_freq, hi_wl = L / c->rope_high_freq;
            if (wl > lo_wl) {
                f = (float)(f / c->rope_factor);
            } else if (wl >= hi_wl) {
                double s = (L / wl - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
                f = (float)((1 - s) * f / c->rope_factor + s * f);
            }
        }
        inv[i] = f;
    }
    return LORA_OK;
}

/* The output head: lm_head.weight (GPT-NeoX: embed_out.weight), or the
 * input embedding when tied (tie_word_embeddings and no head in the
 * checkpoint); Phi's head has a bias. */
static int load_head(lora_model *m, lora_error *err)
{
    const lora_model_config *c = &m->cfg;
    const char *hn = m->fam->head;
    if (c->tied && !lora_ckpt_find(m->ck, hn, NULL)) {
        m->head = m->embed;
        m->head_name[0] = '\0';
    } else {
        int rc = load_tensor(m, hn, 0, c->vocab, c->embed_dim, &m->head, NULL, err);
        if (rc == LORA_EINPUT && !c->tied && !lora_ckpt_find(m->ck, hn, NULL))
            lora_err_prefix(err, "config.json says tie_word_embeddings false, so the head is not "
                            "the embeddings");
        if (rc != LORA_OK)
            return rc;
        snprintf(m->head_name, sizeof m->head_name, "%s", hn);
    }
    if (!m->fam->head_bias)
        return LORA_OK;
    char bn[64];
    snprintf(bn, sizeof bn, "%.*s.bias", (int)(strlen(hn) - strlen(".weight")), hn);
    return load_tensor(m, bn, 0, c->vocab, 0, &m->hop.b, NULL, err);
}

/* The head and the embedding as ops an adapter can attach to. */
static int head_ops(lora_model *m, lora_error *err)
{
    const lora_model_config *c = &m->cfg;
    m->hop.w = m->head;
    m->hop.in = c->embed_dim;
    m->hop.out = c->vocab;
    m->eop.in = c->vocab;
    m->eop.out = c->embed_dim;
    m->hop.tensor = lora_strdup(m->head_name[0] ? m->head_name : m->embed_name, err);
    m->eop.tensor = m->hop.tensor ? lora_strdup(m->embed_name, err) : NULL;
    return m->eop.tensor ? LORA_OK : LORA_EIO;
}

static int load_layer(lora_model *m, uint64_t i, lora_error *err)
{
    const lora_family *f = m->fam;
    const lora_model_config *c = &m->cfg;
    layer *l = &m->L[i];
    uint64_t E = c->hidden, FF = c->inner, hd = c->head_dim;
    uint64_t qd = c->heads * hd, kvd = c->kv_heads * hd;
    char n[160];
#define N(what) layer_name(n, sizeof n, m, i, what, "")
    TRY(load_norm(m, N(f->n1), E, &l->n1w, &l->n1b, err));
    if (f->n2)
        TRY(load_norm(m, N(f->n2), E, &l->n2w, &l->n2b, err));
    if (f->pn1) {
        TRY(load_norm(m, N(f->pn1), E, &l->p1w, NULL, err));
        TRY(load_norm(m, N(f->pn2), E, &l->p2w, NULL, err));
    }
    if (f->qkv) {
        TRY(load_linop(m, &l->qkv, N(f->qkv), E, qd + 2 * kvd, c->qkv_bias, err));
    } else {
        TRY(load_linop(m, &l->q, N(f->q), E, qd, c->qkv_bias, err));
        TRY(load_linop(m, &l->k, N(f->k), E, kvd, c->qkv_bias, err));
        TRY(load_linop(m, &l->v, N(f->v), E, kvd, c->qkv_bias, err));
    }
    TRY(load_linop(m, &l->o, N(f->o), qd, E, c->o_bias, err));
    if (f->q_norm) {
        TRY(load_norm(m, N(f->q_norm), hd, &l->qnw, NULL, err));
        TRY(load_norm(m, N(f->k_norm), hd, &l->knw, NULL, err));
    }
    if (f->gate)
        TRY(load_linop(m, &l->gate, N(f->gate), E, FF, c->mlp_bias, err));
    if (f->gate_up)
        TRY(load_linop(m, &l->gate_up, N(f->gate_up), E, 2 * FF, c->mlp_bias, err));
    else
        TRY(load_linop(m, &l->up, N(f->up), E, FF, c->mlp_bias, err));
    TRY(load_linop(m, &l->down, N(f->down), FF, E, c->mlp_bias, err));
#undef N
    return LORA_OK;
}

/* The model's prefix: the first of the family's that holds the input
 * embedding (GPT-2 hub checkpoints have none, ones saved from
 * GPT2LMHeadModel "transformer."; OPT "model.decoder." or "decoder."). */
static void pick_prefix(lora_model *m)
{
    const lora_family *f = m->fam;
    snprintf(m->prefix, sizeof m->prefix, "%s", f->prefixes[0]);
    for (int i = 0; i < 3 && f->prefixes[i]; i++) {
        char buf[160];
        snprintf(buf, sizeof buf, "%s%s.weight", f->prefixes[i], f->embed);
        if (lora_ckpt_find(m->ck, buf, NULL)) {
            snprintf(m->prefix, sizeof m->prefix, "%s", f->prefixes[i]);
            return;
        }
    }
}

int model_load_weights(lora_model *m, lora_error *err)
{
    const lora_family *f = m->fam;
    const lora_model_config *c = &m->cfg;
    uint64_t E = c->hidden, V = c->vocab, D = c->embed_dim;
    char n[160];
    m->L = calloc((size_t)c->layers, sizeof *m->L);
    if (!m->L)
        return lora_oom(err);
    pick_prefix(m);
    snprintf(n, sizeof n, "%s.weight", f->embed);
    TRY(load_tensor(m, n, 1, V, D, &m->embed, NULL, err));
    snprintf(m->embed_name, sizeof m->embed_name, "%s%s", m->prefix, n);
    if (f->pos_embed) {
        snprintf(n, sizeof n, "%s.weight", f->pos_embed);
        TRY(load_tensor(m, n, 1, c->max_positions + f->pos_offset, E, &m->wpe, NULL, err));
    }
    if (f->proj_in && D != E) {
        TRY(load_linop(m, &m->pin, f->proj_in, D, E, 0, err));
        TRY(load_linop(m, &m->pout, f->proj_out, E, D, 0, err));
    }
    for (uint64_t i = 0; i < c->layers; i++)
        TRY(load_layer(m, i, err));
    if (f->final_norm && !c->post_norm)
        TRY(load_norm(m, f->final_norm, E, &m->nfw, &m->nfb, err));
    TRY(load_head(m, err));
    TRY(head_ops(m, err));
    if (f->pos != POS_ROPE)
        return LORA_OK;
    if (c->rope_type == LORA_ROPE_LONGROPE) {
        TRY(make_inv_freq(c, c->rope_theta, -1, &m->inv_freq, err));
        TRY(make_inv_freq(c, c->rope_theta, 2, &m->inv_freq_long, err));
    } else {
        TRY(make_inv_freq(c, c->rope_theta, 1, &m->inv_freq, err));
    }
    if (c->rope_local_theta > 0)
        TRY(make_inv_freq(c, c->rope_local_theta, 0, &m->inv_freq_local, err));
    return LORA_OK;
}

/* A config that declares fewer layers than the checkpoint holds would
 * run a truncated model without a word: count the layers the tensor
 * names hold ("h.N." / "layers.N." after the model's prefix). */
int model_check_layer_count(const lora_model *m, lora_error *err)
{
    char lead[64];
    snprintf(lead, sizeof lead, "%s%s", m->prefix, m->fam->layers);
    size_t ll = strlen(lead);
    uint64_t held = 0;
    const char *example = NULL;
    for (size_t i = 0; i < lora_ckpt_count(m->ck); i++) {
        const char *name = lora_ckpt_tensor(m->ck, i, NULL)->name;
        if (strncmp(name, lead, ll) != 0 || name[ll] < '0' || name[ll] > '9')
            continue;
        char *end;
        unsigned long long k = strtoull(name + ll, &end, 10);
        if (*end == '.' && k + 1 > held && k < UINT64_MAX) {
            held = k + 1;
            example = name;
        }
    }
    if (held > m->cfg.layers)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: config.json declares %llu layers (%s) but the checkpoint holds %llu "
                           "(it has %s): the model would run truncated",
                           lora_ckpt_dir(m->ck), (unsigned long long)m->cfg.layers,
                           m->cfg.arch == LORA_ARCH_GPT2 ? "n_layer" : "num_hidden_layers",
                           (unsigned long long)held, example);
    return LORA_OK;
}

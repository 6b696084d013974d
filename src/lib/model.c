/*
 * model.c - causal language models from Hugging Face folders, for
 * forward evaluation (config.json is parsed in model_config.c): the
 * weights (decoded to F32 once at load), LoRA adapters applied at run time or merged, and
 * the forward pass with a KV cache.
 *
 * Two families: GPT-2 (Conv1D weights stored [in, out], learned
 * positions, LayerNorm, gelu_new, tied head) and LLaMA (Linear weights
 * [out, in], RMSNorm, rotate_half RoPE, grouped KV heads, SwiGLU;
 * Mistral and Qwen2 differ only by config: Qwen2 has q/k/v biases).
 * formats.md section 4 has the facts this file follows.
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
#include "internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* OpenBLAS's own prototype lives in its cblas.h; declare it in case the
 * header found first is another cblas.h (configure checked the symbol). */
void openblas_set_num_threads(int num_threads);

#define TRY(x)                  \
    do {                        \
        int rc_ = (x);          \
        if (rc_ != LORA_OK)     \
            return rc_;         \
    } while (0)

/* ------------------------------------------------------------------ */
/* weights                                                              */
/* ------------------------------------------------------------------ */

/* One matrix product of the model: y[n, out] = x[n, in]·W (+ b), where W
 * is stored [in, out] (GPT-2 Conv1D) or [out, in] (nn.Linear), with an
 * optional LoRA pair applied unmerged and an optional merged weight. */
typedef struct linop {
    char *tensor;        /* checkpoint name */
    uint64_t in, out;
    int conv1d;
    float *w, *b;
    /* adapter */
    float *A, *B;        /* [r, in], [out, r] */
    uint64_t r;
    float scale;
    float *wm;           /* merged W, same layout as w */
} linop;

typedef struct layer {
    float *n1w, *n1b, *n2w, *n2b;     /* norms (LLaMA: no biases) */
    linop qkv;                        /* GPT-2 c_attn */
    linop q, k, v;                    /* LLaMA */
    linop o;                          /* c_proj / o_proj */
    linop up, down, gate;             /* c_fc, mlp.c_proj / up, down, gate */
} layer;

struct lora_model {
    lora_model_config cfg;
    lora_ckpt *ck;
    char prefix[16];     /* "", "transformer." or "model." */
    float *embed, *wpe, *nfw, *nfb, *head;
    char embed_name[64];  /* checkpoint names of the input embedding and the */
    char head_name[64];   /* head ("" when tied: head == embed) */
    /* Adapters on the embedding and on the head, both never shared with
     * the transformer blocks' ops: eop.A/B are lora_embedding_A [r, V]
     * and B [E, r], eop.wm the merged embedding; hop is the head as a
     * Linear [V, E] (its w is head, not owned), hop.wm the merged head.
     * With tied embeddings an lm_head update changes the head alone, as
     * PEFT applies it: hop.wm is embed + ΔW and embed stays. */
    linop eop, hop;
    layer *L;
    float *inv_freq;     /* [head_dim / 2] */
    uint64_t params;
    lora_adapter *ad;
    size_t n_adapted;
    int merged;
};

const lora_model_config *lora_model_cfg(const lora_model *m) { return &m->cfg; }
const lora_ckpt *lora_model_ckpt(const lora_model *m) { return m->ck; }
uint64_t lora_model_params(const lora_model *m) { return m->params; }
size_t lora_model_adapted(const lora_model *m) { return m->n_adapted; }

void lora_set_threads(int n)
{
    if (n >= 1)
        openblas_set_num_threads(n);
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
    if (t->ndim != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
        char want[64], got[96] = "";
        if (nd == 2)
            snprintf(want, sizeof want, "[%llu, %llu]", (unsigned long long)d0, (unsigned long long)d1);
        else
            snprintf(want, sizeof want, "[%llu]", (unsigned long long)d0);
        size_t o = 0;
        for (int i = 0; i < t->ndim && o < sizeof got - 24; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%llu", i ? ", " : "",
                                  (unsigned long long)t->shape[i]);
        return lora_seterr(err, LORA_EINPUT, "%s: tensor %s has shape [%s], config.json says %s",
                           lora_ckpt_dir(m->ck), buf, got, want);
    }
    if (!lora_dtype_readable(t->dtype))
        return lora_seterr(err, LORA_EINPUT, "%s: tensor %s has dtype %s, which cannot be computed with",
                           lora_ckpt_dir(m->ck), buf, lora_dtype_name(t->dtype));
    float *p = malloc((size_t)t->numel * sizeof *p);
    if (!p)
        return lora_oom(err);
    int rc = lora_decode_f32(t->dtype, t->data, p, (size_t)t->numel);
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

static int load_linop(lora_model *m, linop *op, const char *name, uint64_t in, uint64_t out,
                      int conv1d, int bias, lora_error *err)
{
    char buf[224];
    op->in = in;
    op->out = out;
    op->conv1d = conv1d;
    snprintf(buf, sizeof buf, "%s.weight", name);
    TRY(load_tensor(m, buf, 1, conv1d ? in : out, conv1d ? out : in, &op->w, &op->tensor, err));
    if (bias) {
        snprintf(buf, sizeof buf, "%s.bias", name);
        TRY(load_tensor(m, buf, 1, out, 0, &op->b, NULL, err));
    }
    return LORA_OK;
}

static void linop_free_adapter(linop *op)
{
    free(op->A);
    free(op->B);
    free(op->wm);
    op->A = op->B = op->wm = NULL;
    op->r = 0;
}

static void linop_free(linop *op)
{
    linop_free_adapter(op);
    free(op->tensor);
    free(op->w);
    free(op->b);
}

static void layer_ops(layer *l, linop **ops)
{
    ops[0] = &l->qkv; ops[1] = &l->q; ops[2] = &l->k; ops[3] = &l->v;
    ops[4] = &l->o; ops[5] = &l->up; ops[6] = &l->down; ops[7] = &l->gate;
}

void lora_model_free(lora_model *m)
{
    if (!m)
        return;
    lora_model_detach(m); /* the head's and embedding's adapter parts */
    if (m->L) {
        for (uint64_t i = 0; i < m->cfg.layers; i++) {
            layer *l = &m->L[i];
            linop *ops[8];
            layer_ops(l, ops);
            for (int j = 0; j < 8; j++)
                linop_free(ops[j]);
            free(l->n1w); free(l->n1b); free(l->n2w); free(l->n2b);
        }
        free(m->L);
    }
    free(m->eop.tensor);
    free(m->hop.tensor);
    if (m->head != m->embed)
        free(m->head);
    free(m->embed); free(m->wpe); free(m->nfw); free(m->nfb); free(m->inv_freq);
    lora_ckpt_close(m->ck);
    free(m);
}

/* RoPE inverse frequencies as transformers computes them: in F32,
 * 1 / theta^(2i/d), then the configured scaling. */
static int make_inv_freq(lora_model *m, lora_error *err)
{
    const lora_model_config *c = &m->cfg;
    uint64_t half = c->head_dim / 2;
    m->inv_freq = malloc((size_t)half * sizeof(float));
    if (!m->inv_freq)
        return lora_oom(err);
    for (uint64_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)c->head_dim;
        float f = 1.0f / powf((float)c->rope_theta, e);
        if (c->rope_type == LORA_ROPE_LINEAR) {
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
        m->inv_freq[i] = f;
    }
    return LORA_OK;
}

/* The output head: lm_head.weight, or the input embedding when tied
 * (tie_word_embeddings and no lm_head.weight in the checkpoint). */
static int load_head(lora_model *m, lora_error *err)
{
    const lora_model_config *c = &m->cfg;
    if (c->tied && !lora_ckpt_find(m->ck, "lm_head.weight", NULL)) {
        m->head = m->embed;
        m->head_name[0] = '\0';
        return LORA_OK;
    }
    int rc = load_tensor(m, "lm_head.weight", 0, c->vocab, c->hidden, &m->head, NULL, err);
    if (rc == LORA_EINPUT && !c->tied && !lora_ckpt_find(m->ck, "lm_head.weight", NULL))
        lora_err_prefix(err, "config.json says tie_word_embeddings false, so the head is not "
                        "the embeddings");
    strcpy(m->head_name, "lm_head.weight");
    return rc;
}

/* The head and the embedding as ops an adapter can attach to. */
static int head_ops(lora_model *m, lora_error *err)
{
    const lora_model_config *c = &m->cfg;
    m->hop.w = m->head;
    m->hop.in = c->hidden;
    m->hop.out = c->vocab;
    m->eop.in = c->vocab;
    m->eop.out = c->hidden;
    m->hop.tensor = lora_strdup(m->head_name[0] ? m->head_name : m->embed_name, err);
    m->eop.tensor = m->hop.tensor ? lora_strdup(m->embed_name, err) : NULL;
    return m->eop.tensor ? LORA_OK : LORA_EIO;
}

static int load_weights(lora_model *m, lora_error *err)
{
    const lora_model_config *c = &m->cfg;
    uint64_t E = c->hidden, V = c->vocab, FF = c->inner;
    m->L = calloc((size_t)c->layers, sizeof *m->L);
    if (!m->L)
        return lora_oom(err);
    char n[128];
    if (c->arch == LORA_ARCH_GPT2) {
        /* hub checkpoints have no prefix; ones saved from GPT2LMHeadModel use "transformer." */
        strcpy(m->prefix, lora_ckpt_find(m->ck, "wte.weight", NULL) ? "" : "transformer.");
        TRY(load_tensor(m, "wte.weight", 1, V, E, &m->embed, NULL, err));
        snprintf(m->embed_name, sizeof m->embed_name, "%swte.weight", m->prefix);
        TRY(load_tensor(m, "wpe.weight", 1, c->max_positions, E, &m->wpe, NULL, err));
        for (uint64_t i = 0; i < c->layers; i++) {
            layer *l = &m->L[i];
#define P(s) (snprintf(n, sizeof n, "h.%llu." s, (unsigned long long)i), n)
            TRY(load_tensor(m, P("ln_1.weight"), 1, E, 0, &l->n1w, NULL, err));
            TRY(load_tensor(m, P("ln_1.bias"), 1, E, 0, &l->n1b, NULL, err));
            TRY(load_tensor(m, P("ln_2.weight"), 1, E, 0, &l->n2w, NULL, err));
            TRY(load_tensor(m, P("ln_2.bias"), 1, E, 0, &l->n2b, NULL, err));
            TRY(load_linop(m, &l->qkv, P("attn.c_attn"), E, 3 * E, 1, 1, err));
            TRY(load_linop(m, &l->o, P("attn.c_proj"), E, E, 1, 1, err));
            TRY(load_linop(m, &l->up, P("mlp.c_fc"), E, FF, 1, 1, err));
            TRY(load_linop(m, &l->down, P("mlp.c_proj"), FF, E, 1, 1, err));
#undef P
        }
        TRY(load_tensor(m, "ln_f.weight", 1, E, 0, &m->nfw, NULL, err));
        TRY(load_tensor(m, "ln_f.bias", 1, E, 0, &m->nfb, NULL, err));
        TRY(load_head(m, err));
        return head_ops(m, err);
    }
    strcpy(m->prefix, "model.");
    uint64_t qd = c->heads * c->head_dim, kvd = c->kv_heads * c->head_dim;
    TRY(load_tensor(m, "embed_tokens.weight", 1, V, E, &m->embed, NULL, err));
    snprintf(m->embed_name, sizeof m->embed_name, "%sembed_tokens.weight", m->prefix);
    for (uint64_t i = 0; i < c->layers; i++) {
        layer *l = &m->L[i];
#define P(s) (snprintf(n, sizeof n, "layers.%llu." s, (unsigned long long)i), n)
        TRY(load_tensor(m, P("input_layernorm.weight"), 1, E, 0, &l->n1w, NULL, err));
        TRY(load_tensor(m, P("post_attention_layernorm.weight"), 1, E, 0, &l->n2w, NULL, err));
        TRY(load_linop(m, &l->q, P("self_attn.q_proj"), E, qd, 0, c->qkv_bias, err));
        TRY(load_linop(m, &l->k, P("self_attn.k_proj"), E, kvd, 0, c->qkv_bias, err));
        TRY(load_linop(m, &l->v, P("self_attn.v_proj"), E, kvd, 0, c->qkv_bias, err));
        TRY(load_linop(m, &l->o, P("self_attn.o_proj"), qd, E, 0, c->o_bias, err));
        TRY(load_linop(m, &l->gate, P("mlp.gate_proj"), E, FF, 0, c->mlp_bias, err));
        TRY(load_linop(m, &l->up, P("mlp.up_proj"), E, FF, 0, c->mlp_bias, err));
        TRY(load_linop(m, &l->down, P("mlp.down_proj"), FF, E, 0, c->mlp_bias, err));
#undef P
    }
    TRY(load_tensor(m, "norm.weight", 1, E, 0, &m->nfw, NULL, err));
    TRY(load_head(m, err));
    TRY(head_ops(m, err));
    return make_inv_freq(m, err);
}

/* A config that declares fewer layers than the checkpoint holds would
 * run a truncated model without a word: count the layers the tensor
 * names hold ("h.N." / "layers.N." after the model's prefix). */
static int check_layer_count(const lora_model *m, lora_error *err)
{
    const char *stem = m->cfg.arch == LORA_ARCH_GPT2 ? "h." : "layers.";
    char lead[32];
    snprintf(lead, sizeof lead, "%s%s", m->prefix, stem);
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

int lora_model_open(const char *dir, lora_model **out, lora_error *err)
{
    *out = NULL;
    lora_model *m = calloc(1, sizeof *m);
    if (!m)
        return lora_oom(err);
    char *path = malloc(strlen(dir) + 16);
    if (!path) {
        free(m);
        return lora_oom(err);
    }
    sprintf(path, "%s/config.json", dir);
    char *json = NULL;
    size_t len = 0;
    int rc = lora_read_file(path, LORA_MODEL_MAX_CONFIG, &json, &len, err);
    if (rc == LORA_OK) {
        rc = lora_model_config_parse(json, len, &m->cfg, err);
        if (rc != LORA_OK)
            lora_err_prefix(err, "%s", dir);
    }
    free(json);
    free(path);
    if (rc != LORA_OK) {
        /* no config.json, and maybe no checkpoint either: a folder of
         * GGUF or PyTorch weights is better named as such */
        lora_error e2;
        lora_error_clear(&e2);
        if (lora_ckpt_open(dir, &m->ck, &e2) == LORA_EINPUT && err)
            *err = e2;
        lora_ckpt_close(m->ck);
        m->ck = NULL;
    }
    if (rc == LORA_OK)
        rc = lora_ckpt_open(dir, &m->ck, err);
    if (rc == LORA_OK)
        rc = load_weights(m, err);
    if (rc == LORA_OK)
        rc = check_layer_count(m, err);
    if (rc != LORA_OK) {
        lora_model_free(m);
        return rc;
    }
    *out = m;
    return LORA_OK;
}

/* ------------------------------------------------------------------ */
/* adapters                                                             */
/* ------------------------------------------------------------------ */

static linop *find_op(lora_model *m, const char *tensor)
{
    for (uint64_t i = 0; i < m->cfg.layers; i++) {
        linop *ops[8];
        layer_ops(&m->L[i], ops);
        for (int j = 0; j < 8; j++)
            if (ops[j]->tensor && strcmp(ops[j]->tensor, tensor) == 0)
                return ops[j];
    }
    return NULL;
}

void lora_model_detach(lora_model *m)
{
    if (!m)
        return;
    for (uint64_t i = 0; m->L && i < m->cfg.layers; i++) {
        linop *ops[8];
        layer_ops(&m->L[i], ops);
        for (int j = 0; j < 8; j++)
            linop_free_adapter(ops[j]);
    }
    linop_free_adapter(&m->eop);
    linop_free_adapter(&m->hop);
    m->ad = NULL;
    m->n_adapted = 0;
    m->merged = 0;
}

static int decode_new(const lora_tensor *t, float **dst, lora_error *err)
{
    if (!lora_dtype_readable(t->dtype))
        return lora_seterr(err, LORA_EINPUT, "tensor %s has dtype %s, which cannot be computed with",
                           t->name, lora_dtype_name(t->dtype));
    *dst = malloc((size_t)t->numel * sizeof(float) + 1);
    if (!*dst)
        return lora_oom(err);
    return lora_decode_f32(t->dtype, t->data, *dst, (size_t)t->numel);
}

/* Below, after the forward pass. */
static int merged_weight(lora_model *m, const lora_module *mod, linop *op, lora_error *err);

/* The op a module adapts: a projection of a block, the head (its own
 * lm_head.weight, or with tied embeddings the head alone: tied_head),
 * or the input embedding; NULL and a message for anything else. */
static linop *op_for(lora_model *m, const lora_adapter *ad, const lora_module *mod,
                     lora_error *err)
{
    if (mod->embedding) {
        if (strcmp(mod->target, m->embed_name) != 0) {
            lora_seterr(err, LORA_EINPUT, "%s: module %s: an embedding update of %s, which is not "
                        "the model's input embedding %s", ad->path, mod->name, mod->target,
                        m->embed_name);
            return NULL;
        }
        if (!m->head_name[0]) {
            /* PEFT adds it to the input lookup at run time, but a merge
             * changes the tied head too: the two disagree */
            lora_seterr(err, LORA_EINPUT, "%s: module %s: an embedding update on a model whose "
                        "head is tied to the embeddings (%s, tie_word_embeddings): at run time "
                        "it changes the input only, merged it changes the head too, so lora-eval "
                        "refuses it; evaluate a merged checkpoint instead", ad->path, mod->name,
                        m->embed_name);
            return NULL;
        }
        return &m->eop;
    }
    if (mod->tied_head || (m->head_name[0] && strcmp(mod->target, m->head_name) == 0))
        return &m->hop;
    linop *op = find_op(m, mod->target);
    if (!op)
        lora_seterr(err, LORA_EINPUT,
                    "%s: module %s adapts %s, which is not an attention or MLP projection, the "
                    "input embedding or the head; evaluation supports only those", ad->path,
                    mod->name, mod->target);
    return op;
}

int lora_model_attach(lora_model *m, lora_adapter *ad, int want_merged, lora_error *err)
{
    lora_model_detach(m);
    int rc = lora_adapter_bind_tied(ad, m->ck, err);
    if (rc != LORA_OK)
        return rc;
    if (ad->n_saved > 0)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: modules_to_save tensors (%s) are not supported by evaluation",
                           ad->path, ad->saved[0].target);
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *mod = &ad->modules[i];
        linop *op = op_for(m, ad, mod, err);
        if (!op) {
            rc = LORA_EINPUT;
            goto fail;
        }
        if (op->A) {
            rc = lora_seterr(err, LORA_EINPUT, "%s: two modules adapt %s", ad->path, mod->target);
            goto fail;
        }
        /* an embedding stores ΔWᵀ [V, E]: A is [r, V], B [E, r] */
        int conv = op == &m->eop ? 1 : op->conv1d;
        if (mod->in != op->in || mod->out != op->out || mod->transpose != conv ||
            mod->A->numel != mod->r * op->in || mod->B->numel != op->out * mod->r) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "%s: module %s does not fit %s (in %llu, out %llu, r %llu)",
                             ad->path, mod->name, mod->target, (unsigned long long)op->in,
                             (unsigned long long)op->out, (unsigned long long)mod->r);
            goto fail;
        }
        op->r = mod->r;
        op->scale = (float)mod->scale;
        if ((rc = decode_new(mod->A, &op->A, err)) != LORA_OK ||
            (rc = decode_new(mod->B, &op->B, err)) != LORA_OK)
            goto fail;
        if (want_merged && (rc = merged_weight(m, mod, op, err)) != LORA_OK)
            goto fail;
        m->n_adapted++;
    }
    m->ad = ad;
    m->merged = want_merged;
    return LORA_OK;
fail:
    lora_model_detach(m);
    return rc;
}

/* ------------------------------------------------------------------ */
/* forward                                                              */
/* ------------------------------------------------------------------ */

struct lora_run {
    lora_model *m;
    int mode;
    uint64_t cap, pos;
    float **kc, **vc;       /* per layer [cap, kv_dim] */
    float *x, *h, *q, *att, *sc, *f1, *f2, *lt, *qkv;
    float *cosv, *sinv;     /* [cap, head_dim/2] */
    uint64_t rmax;
};

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
    free(r->lt); free(r->qkv); free(r->cosv); free(r->sinv);
    free(r);
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
    uint64_t T = max_tokens, E = c->hidden, qd = c->heads * c->head_dim,
             kvd = c->kv_heads * c->head_dim, hd2 = c->head_dim / 2;
    r->rmax = m->hop.r > 1 ? m->hop.r : 1;
    for (uint64_t i = 0; i < c->layers; i++) {
        linop *ops[8];
        layer_ops(&m->L[i], ops);
        for (int j = 0; j < 8; j++)
            if (ops[j]->r > r->rmax)
                r->rmax = ops[j]->r;
    }
    int bad = 0;
    r->kc = calloc((size_t)c->layers, sizeof *r->kc);
    r->vc = calloc((size_t)c->layers, sizeof *r->vc);
    if (!r->kc || !r->vc)
        bad = 1;
    for (uint64_t i = 0; !bad && i < c->layers; i++) {
        r->kc[i] = alloc_floats(T, kvd, &bad);
        r->vc[i] = alloc_floats(T, kvd, &bad);
    }
    r->x = alloc_floats(T, E, &bad);
    r->h = alloc_floats(T, E, &bad);
    r->q = alloc_floats(T, qd, &bad);
    r->att = alloc_floats(T, qd, &bad);
    r->sc = alloc_floats(T, T, &bad);
    r->f1 = alloc_floats(T, c->inner, &bad);
    r->f2 = alloc_floats(T, c->inner, &bad);
    r->lt = alloc_floats(T, r->rmax, &bad);
    if (c->arch == LORA_ARCH_GPT2)
        r->qkv = alloc_floats(T, 3 * E, &bad);
    else {
        r->cosv = alloc_floats(T, hd2, &bad);
        r->sinv = alloc_floats(T, hd2, &bad);
        for (uint64_t p = 0; !bad && p < T; p++)
            for (uint64_t i = 0; i < hd2; i++) {
                float a = (float)p * m->inv_freq[i];
                r->cosv[p * hd2 + i] = cosf(a);
                r->sinv[p * hd2 + i] = sinf(a);
            }
    }
    if (bad) {
        lora_run_free(r);
        return lora_seterr(err, LORA_EIO, "out of memory for a forward pass of %llu tokens",
                           (unsigned long long)T);
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

/* y[n, out] (row stride ldy) = alpha·x[n, in]·op(W) + beta·y, where W is
 * stored [out, in] (wt: op(W) = Wᵀ, nn.Linear) or [in, out] (op(W) = W,
 * Conv1D).  One token (n = 1) goes through sgemv: OpenBLAS's sgemm packs
 * the whole of W on every call, which costs more than the product when
 * x is a single row (generation with a KV cache). */
static void matmul(int wt, size_t n, uint64_t out, uint64_t in, float alpha, const float *x,
                   size_t ldx, const float *W, size_t ldw, float beta, float *y, size_t ldy)
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
static void linop_run(const lora_run *r, const linop *op, const float *x, size_t ldx, size_t n,
                      float *y, size_t ldy)
{
    const float *W = (r->mode == LORA_MODE_MERGED && op->wm) ? op->wm : op->w;
    matmul(!op->conv1d, n, op->out, op->in, 1.0f, x, ldx, W, op->conv1d ? op->out : op->in, 0.0f,
           y, ldy);
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

static void layernorm(const float *x, float *y, size_t n, uint64_t E, const float *w,
                      const float *b, double eps)
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

static void rmsnorm(const float *x, float *y, size_t n, uint64_t E, const float *w, double eps)
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

/* Causal attention of n new queries at positions p0.. over the p0 + n
 * cached keys, every head; q rows have stride ldq, out rows qd. */
static void attention(lora_run *r, uint64_t l, const float *q, size_t ldq, size_t n, float *out)
{
    const lora_model_config *c = &r->m->cfg;
    uint64_t hd = c->head_dim, kvd = c->kv_heads * hd, group = c->heads / c->kv_heads;
    uint64_t p0 = r->pos, nk = p0 + n;
    float scale = (float)(1.0 / sqrt((double)hd));
    for (uint64_t h = 0; h < c->heads; h++) {
        uint64_t kh = h / group;
        matmul(1, n, nk, hd, scale, q + h * hd, ldq, r->kc[l] + kh * hd, kvd, 0.0f, r->sc, nk);
        for (size_t i = 0; i < n; i++) {
            float *s = r->sc + i * nk;
            uint64_t valid = p0 + i + 1;
            float mx = s[0];
            for (uint64_t j = 1; j < valid; j++)
                if (s[j] > mx)
                    mx = s[j];
            double sum = 0;
            for (uint64_t j = 0; j < valid; j++) {
                s[j] = expf(s[j] - mx);
                sum += s[j];
            }
            float inv = (float)(1.0 / sum);
            for (uint64_t j = 0; j < valid; j++)
                s[j] *= inv;
            for (uint64_t j = valid; j < nk; j++)
                s[j] = 0.0f;
        }
        matmul(0, n, hd, nk, 1.0f, r->sc, nk, r->vc[l] + kh * hd, kvd, 0.0f, out + h * hd,
               c->heads * hd);
    }
}

static void rope(const lora_run *r, float *v, size_t ld, size_t n, uint64_t nheads)
{
    uint64_t hd = r->m->cfg.head_dim, hd2 = hd / 2;
    for (size_t i = 0; i < n; i++) {
        const float *cs = r->cosv + (r->pos + i) * hd2, *sn = r->sinv + (r->pos + i) * hd2;
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

static void block_gpt2(lora_run *r, uint64_t l, size_t n)
{
    const lora_model_config *c = &r->m->cfg;
    layer *L = &r->m->L[l];
    uint64_t E = c->hidden, FF = c->inner;
    layernorm(r->x, r->h, n, E, L->n1w, L->n1b, c->norm_eps);
    linop_run(r, &L->qkv, r->h, E, n, r->qkv, 3 * E);
    for (size_t i = 0; i < n; i++) {
        memcpy(r->kc[l] + (r->pos + i) * E, r->qkv + i * 3 * E + E, E * sizeof(float));
        memcpy(r->vc[l] + (r->pos + i) * E, r->qkv + i * 3 * E + 2 * E, E * sizeof(float));
    }
    attention(r, l, r->qkv, 3 * E, n, r->att);
    linop_run(r, &L->o, r->att, E, n, r->h, E);
    for (size_t i = 0; i < n * E; i++)
        r->x[i] += r->h[i];
    layernorm(r->x, r->h, n, E, L->n2w, L->n2b, c->norm_eps);
    linop_run(r, &L->up, r->h, E, n, r->f1, FF);
    const float k0 = 0.7978845608028654f, k1 = 0.044715f;  /* √(2/π) */
    for (size_t i = 0; i < n * FF; i++) {
        float x = r->f1[i];
        r->f1[i] = 0.5f * x * (1.0f + tanhf(k0 * (x + k1 * (x * x * x))));
    }
    linop_run(r, &L->down, r->f1, FF, n, r->h, E);
    for (size_t i = 0; i < n * E; i++)
        r->x[i] += r->h[i];
}

static void block_llama(lora_run *r, uint64_t l, size_t n)
{
    const lora_model_config *c = &r->m->cfg;
    layer *L = &r->m->L[l];
    uint64_t E = c->hidden, FF = c->inner, qd = c->heads * c->head_dim,
             kvd = c->kv_heads * c->head_dim;
    rmsnorm(r->x, r->h, n, E, L->n1w, c->norm_eps);
    linop_run(r, &L->q, r->h, E, n, r->q, qd);
    linop_run(r, &L->k, r->h, E, n, r->kc[l] + r->pos * kvd, kvd);
    linop_run(r, &L->v, r->h, E, n, r->vc[l] + r->pos * kvd, kvd);
    rope(r, r->q, qd, n, c->heads);
    rope(r, r->kc[l] + r->pos * kvd, kvd, n, c->kv_heads);
    attention(r, l, r->q, qd, n, r->att);
    linop_run(r, &L->o, r->att, qd, n, r->h, E);
    for (size_t i = 0; i < n * E; i++)
        r->x[i] += r->h[i];
    rmsnorm(r->x, r->h, n, E, L->n2w, c->norm_eps);
    linop_run(r, &L->gate, r->h, E, n, r->f1, FF);
    linop_run(r, &L->up, r->h, E, n, r->f2, FF);
    for (size_t i = 0; i < n * FF; i++) {
        float g = r->f1[i];
        r->f1[i] = g / (1.0f + expf(-g)) * r->f2[i];
    }
    linop_run(r, &L->down, r->f1, FF, n, r->h, E);
    for (size_t i = 0; i < n * E; i++)
        r->x[i] += r->h[i];
}

/* x += scale·B·A[:, tok]: PEFT's Embedding LoRA at run time
 * (F.embedding(x, A.T) @ B.T · scaling), with A [r, V] and B [E, r]. */
static void embedding_lora(const linop *op, uint64_t V, int32_t tok, float *x)
{
    uint64_t E = op->out, R = op->r;
    for (uint64_t j = 0; j < E; j++) {
        float s = 0.0f;
        for (uint64_t k = 0; k < R; k++)
            s += op->B[j * R + k] * op->A[k * V + (uint64_t)tok];
        x[j] += s * op->scale;
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
    const float *emb = (r->mode == LORA_MODE_MERGED && m->eop.wm) ? m->eop.wm : m->embed;
    for (size_t i = 0; i < n; i++) {
        const float *e = emb + (uint64_t)tokens[i] * E;
        float *x = r->x + i * E;
        if (c->arch == LORA_ARCH_GPT2) {
            const float *p = m->wpe + (r->pos + i) * E;
            for (uint64_t j = 0; j < E; j++)
                x[j] = e[j] + p[j];
        } else {
            memcpy(x, e, E * sizeof(float));
        }
        if (r->mode == LORA_MODE_UNMERGED && m->eop.A)
            embedding_lora(&m->eop, c->vocab, tokens[i], x);
    }
    for (uint64_t l = 0; l < c->layers; l++) {
        if (c->arch == LORA_ARCH_GPT2)
            block_gpt2(r, l, n);
        else
            block_llama(r, l, n);
    }
    r->pos += n;
    if (logits && rows) {
        const float *xr = r->x + (n - rows) * E;
        if (c->arch == LORA_ARCH_GPT2)
            layernorm(xr, r->h, rows, E, m->nfw, m->nfb, c->norm_eps);
        else
            rmsnorm(xr, r->h, rows, E, m->nfw, c->norm_eps);
        linop_run(r, &m->hop, r->h, E, rows, logits, c->vocab);
    }
    return LORA_OK;
}

/* ------------------------------------------------------------------ */
/* merged weights                                                       */
/* ------------------------------------------------------------------ */

/* The weight lora-merge would write for W0 + ΔW, in the checkpoint's
 * dtype (same call, same rounding), decoded to F32. */
static int merged_weight(lora_model *m, const lora_module *mod, linop *op, lora_error *err)
{
    const lora_tensor *t = lora_ckpt_find(m->ck, op->tensor, NULL);
    if (!t || t->ndim != 2)
        return lora_seterr(err, LORA_EINPUT, "%s: not a matrix in the checkpoint", op->tensor);
    void *buf = malloc((size_t)t->nbytes);
    op->wm = malloc((size_t)t->numel * sizeof(float));
    if (!buf || !op->wm) {
        free(buf);
        return lora_oom(err);
    }
    lora_term term = {mod, 1.0};
    int rc = lora_tensor_merge(t->dtype, t->dtype, t->shape[0], t->shape[1], t->data, buf, &term, 1,
                               LORA_ROUND_NEAREST, 1, NULL, NULL, err);
    if (rc == LORA_OK)
        rc = lora_decode_f32(t->dtype, buf, op->wm, (size_t)t->numel);
    free(buf);
    if (rc != LORA_OK)
        lora_err_prefix(err, "merging %s", op->tensor);
    return rc;
}

/*
 * model.c - causal language models from Hugging Face folders, for
 * forward evaluation: opening one (config.json parsed in
 * model_config.c, the family's description in model_family.c, its
 * weights loaded by model_weights.c), freeing it, and LoRA adapters
 * attached to its projections, run unmerged or merged.  The forward
 * pass is model_forward.c over the kernels of model_kernels.c.
 * formats.md section 4 has the facts these files follow.
 */
#include "model_internal.h"
#include "dora.h"

#include <cblas.h>
#include <string.h>

/* OpenBLAS's own prototype lives in its cblas.h; declare it in case the
 * header found first is another cblas.h (configure checked the symbol). */
void openblas_set_num_threads(int num_threads);

const lora_model_config *lora_model_cfg(const lora_model *m) { return &m->cfg; }
const lora_ckpt *lora_model_ckpt(const lora_model *m) { return m->ck; }
uint64_t lora_model_params(const lora_model *m) { return m->params; }
size_t lora_model_adapted(const lora_model *m) { return m->n_adapted; }

void lora_set_threads(int n)
{
    if (n >= 1)
        openblas_set_num_threads(n);
}

#ifdef HAVE_BLAS_THREAD_SHUTDOWN_
/* exported by OpenBLAS's pthreads build (its fork handler uses it) */
int blas_thread_shutdown_(void);
#endif

void lora_blas_idle(void)
{
#ifdef HAVE_BLAS_THREAD_SHUTDOWN_
    blas_thread_shutdown_();
#endif
}

void linop_free_adapter(linop *op)
{
    free(op->A);
    free(op->B);
    free(op->wm);
    free(op->dora);
    op->A = op->B = op->wm = op->dora = NULL;
    op->r = 0;
}

void linop_free(linop *op)
{
    linop_free_adapter(op);
    free(op->tensor);
    free(op->w);
    free(op->b);
}

void layer_ops(layer *l, linop **ops)
{
    ops[0] = &l->qkv; ops[1] = &l->q; ops[2] = &l->k; ops[3] = &l->v;
    ops[4] = &l->o; ops[5] = &l->up; ops[6] = &l->down; ops[7] = &l->gate;
    ops[8] = &l->gate_up;
}

void lora_model_free(lora_model *m)
{
    if (!m)
        return;
    lora_model_detach(m); /* the head's and embedding's adapter parts */
    if (m->L) {
        for (uint64_t i = 0; i < m->cfg.layers; i++) {
            layer *l = &m->L[i];
            linop *ops[LAYER_OPS];
            layer_ops(l, ops);
            for (int j = 0; j < LAYER_OPS; j++)
                linop_free(ops[j]);
            free(l->n1w); free(l->n1b); free(l->n2w); free(l->n2b);
            free(l->qnw); free(l->knw); free(l->p1w); free(l->p2w);
        }
        free(m->L);
    }
    linop_free(&m->pin);
    linop_free(&m->pout);
    free(m->eop.tensor);
    free(m->hop.tensor);
    free(m->hop.b);
    if (m->head != m->embed)
        free(m->head);
    free(m->embed); free(m->wpe); free(m->nfw); free(m->nfb); free(m->inv_freq);
    free(m->inv_freq_local);
    free(m->inv_freq_long);
    lora_ckpt_close(m->ck);
    free(m);
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
    int gguf = lora_gguf_is_file(dir), rc;
    if (gguf) { /* a llama.cpp model: the config from its key/values (gguf_checkpoint.c) */
        rc = lora_ckpt_open(dir, &m->ck, err);
        if (rc == LORA_OK)
            rc = lora_gguf_model_config(m->ck, &json, &len, err);
    } else {
        rc = lora_read_file(path, LORA_MODEL_MAX_CONFIG, &json, &len, err);
    }
    if (rc == LORA_OK) {
        rc = lora_model_config_parse(json, len, &m->cfg, err);
        if (rc != LORA_OK)
            lora_err_prefix(err, "%s", dir);
    }
    free(json);
    free(path);
    if (rc != LORA_OK && !gguf) {
        /* no config.json, and maybe no checkpoint either: a folder of
         * GGUF or PyTorch weights is better named as such */
        lora_error e2;
        lora_error_clear(&e2);
        if (lora_ckpt_open(dir, &m->ck, &e2) == LORA_EINPUT && err)
            *err = e2;
        lora_ckpt_close(m->ck);
        m->ck = NULL;
    }
    if (rc == LORA_OK && !gguf)
        rc = lora_ckpt_open(dir, &m->ck, err);
    if (rc == LORA_OK) {
        m->fam = lora_family_of(m->cfg.arch);
        rc = model_load_weights(m, err);
    }
    if (rc == LORA_OK)
        rc = model_check_layer_count(m, err);
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
        linop *ops[LAYER_OPS];
        layer_ops(&m->L[i], ops);
        for (int j = 0; j < LAYER_OPS; j++)
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
        linop *ops[LAYER_OPS];
        layer_ops(&m->L[i], ops);
        for (int j = 0; j < LAYER_OPS; j++)
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

/* Below. */
static int merged_weight(lora_model *m, const lora_module *mod, linop *op, lora_error *err);
static int dora_factors(lora_model *m, const lora_module *mod, linop *op, lora_error *err);

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
        if (m->cfg.embed_scale > 0) {
            /* Gemma 2 scales after PEFT's lookup LoRA, Gemma 3's scaled
             * embedding module before it; merged, both scale ΔW */
            lora_seterr(err, LORA_EINPUT, "%s: module %s: an embedding update on %s, whose "
                        "embeddings are scaled by sqrt(hidden_size): merged and at run time it "
                        "would not agree, so lora-eval refuses it", ad->path, mod->name,
                        m->cfg.architecture);
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
        if (mod->magnitude && (rc = dora_factors(m, mod, op, err)) != LORA_OK)
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
/* merged weights                                                       */
/* ------------------------------------------------------------------ */

/* A DoRA module at run time (PEFT's DoraLinearLayer.forward with the
 * norm taken once, as for inference): y = f ⊙ (W0·x + s·B·(A·x)) + b
 * with f[o] = m[o] / ||W0 + ΔW||[o] computed by dora.c in double from
 * the checkpoint's W0 and the canonical delta, as lora-merge does, then
 * kept as floats. */
static int dora_factors(lora_model *m, const lora_module *mod, linop *op, lora_error *err)
{
    const lora_tensor *t = mod->tied_head ? NULL : lora_ckpt_find(m->ck, op->tensor, NULL);
    if (!t || t->ndim != 2)
        return lora_seterr(err, LORA_EINPUT, "module %s: a DoRA module on %s, which is not a "
                           "matrix of the checkpoint (a head tied to the embeddings?): lora-eval "
                           "does not apply DoRA there", mod->name, mod->target);
    double *n = malloc((size_t)mod->out * sizeof *n), *f = malloc((size_t)mod->out * sizeof *f);
    op->dora = malloc((size_t)mod->out * sizeof *op->dora);
    int rc = !n || !f || !op->dora ? lora_oom(err) : LORA_OK;
    if (!rc)
        rc = lora_dora_norms(mod, t->dtype, t->shape[0], t->shape[1], t->data, n, 1, err);
    if (!rc)
        rc = lora_dora_factors(mod, n, f, err);
    for (uint64_t o = 0; !rc && o < mod->out; o++)
        op->dora[o] = (float)f[o];
    free(n);
    free(f);
    return rc;
}

/* The weight lora-merge would write for W0 + ΔW, in the checkpoint's
 * dtype (same call, same rounding), decoded to F32; for a DoRA module
 * f ⊙ (W0 + ΔW) through dora.c, again as lora-merge writes it. */
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
    void *hf = NULL; /* a GGUF base's q/k in Hugging Face row order, as B */
    int rc = lora_ckpt_hf_rows(m->ck, t, &hf, err);
    const void *w0 = hf ? hf : t->data;
    if (rc == LORA_OK && mod->magnitude) {
        double *norm = malloc((size_t)mod->out * sizeof *norm);
        lora_dora_job j = {.name = t->name, .in_dt = t->dtype, .out_dt = t->dtype,
                           .rows = t->shape[0], .cols = t->shape[1], .src = w0, .dst = buf,
                           .m = mod, .norm = norm, .nthreads = 1};
        rc = norm ? lora_dora_merge(&j, err) : lora_oom(err);
        free(norm);
    } else if (rc == LORA_OK) {
        rc = lora_tensor_merge(t->dtype, t->dtype, t->shape[0], t->shape[1], w0, buf, &term, 1,
                               LORA_ROUND_NEAREST, 1, NULL, NULL, err);
    }
    free(hf);
    if (rc == LORA_OK)
        rc = lora_decode_f32(t->dtype, buf, op->wm, (size_t)t->numel);
    free(buf);
    if (rc != LORA_OK)
        lora_err_prefix(err, "merging %s", op->tensor);
    return rc;
}

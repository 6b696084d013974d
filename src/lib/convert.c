/*
 * convert.c - PEFT LoRA adapters to llama.cpp GGUF LoRA adapters and
 * back, with the scale PEFT applies kept exactly where llama.cpp's own
 * converter loses it.
 *
 * llama.cpp applies alpha / r to every pair (alpha: one f32 for the
 * whole file, r: the pair's rank; alpha 0 means 1), computed in float.
 * PEFT's scale is alpha_m / r_m, or alpha_m / sqrt(r_m) with rsLoRA,
 * with alpha_m and r_m from alpha_pattern / rank_pattern.  So a module
 * keeps its exact bytes when s_m · r_m equals the file's alpha; we pick
 * the alpha most modules share that way, and for the others fold
 * f = s_m / (alpha_f32 / r_m) into B (B·f in double, rounded once to the
 * output dtype).  A fold within 2^-23 of 1 is not applied: llama.cpp's
 * float scale is itself only that close to PEFT's.
 *
 * Orientation (formats.md §5): lora_a = PEFT's A [r, in] and lora_b =
 * B [out, r] unchanged (also for GPT-2's Conv1D, stored in Linear
 * layout in GGUF); token_embd's lora_a is lora_embedding_A transposed;
 * llama's q_proj / k_proj lora_b rows are permuted by head as the
 * weights are (n_head for q, n_head_kv for k).
 */
#include "gguf_int.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void lora_convert_report_free(lora_convert_report *rep)
{
    if (!rep)
        return;
    for (size_t i = 0; i < rep->n_modules; i++) {
        free(rep->modules[i].from);
        free(rep->modules[i].to);
    }
    for (size_t i = 0; i < rep->n_skipped; i++)
        free(rep->skipped[i]);
    free(rep->modules);
    free(rep->skipped);
    memset(rep, 0, sizeof *rep);
}

/* A module that cannot be converted: refused, or listed and left out. */
static int unsupported(lora_convert_report *rep, int skip, lora_error *err, const char *fmt, ...)
    LORA_PRINTF(4, 5);
static int unsupported(lora_convert_report *rep, int skip, lora_error *err, const char *fmt, ...)
{
    char msg[LORA_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!skip)
        return lora_seterr(err, LORA_EINPUT, "%s (--skip-unsupported leaves it out)", msg);
    char **p = realloc(rep->skipped, (rep->n_skipped + 1) * sizeof *p);
    if (!p)
        return lora_oom(err);
    rep->skipped = p;
    if (!(p[rep->n_skipped] = strdup(msg)))
        return lora_oom(err);
    rep->n_skipped++;
    return LORA_OK;
}

static int add_module(lora_convert_report *rep, const lora_convert_module *m, lora_error *err)
{
    lora_convert_module *p = realloc(rep->modules, (rep->n_modules + 1) * sizeof *p);
    if (!p)
        return lora_oom(err);
    rep->modules = p;
    p[rep->n_modules] = *m;
    p[rep->n_modules].from = strdup(m->from);
    p[rep->n_modules].to = strdup(m->to);
    rep->n_modules++;
    if (!p[rep->n_modules - 1].from || !p[rep->n_modules - 1].to)
        return lora_oom(err);
    return LORA_OK;
}

/* The base: a Hugging Face folder (or its config.json), or a GGUF model
 * file, whose architecture, head counts and tensors (output.weight
 * absent: tied embeddings) then come from the file.  *gbase (optional)
 * keeps a GGUF base open for shape checks. */
static int read_base_config(const char *base, lora_gguf_arch *arch, lora_gguf **gbase,
                            lora_error *err)
{
    char path[4096];
    struct stat sb;
    if (gbase)
        *gbase = NULL;
    if (lora_gguf_is_file(base)) {
        lora_gguf *g;
        int rc = lora_gguf_open(base, &g, err);
        if (rc)
            return rc;
        const char *name = lora_gguf_get_str(g, "general.architecture");
        const char *gt = lora_gguf_get_str(g, "general.type");
        if (gt && strcmp(gt, "model") != 0)
            rc = lora_seterr(err, LORA_EINPUT, "%s: general.type is \"%s\", not a model", base,
                             gt);
        else if (!name)
            rc = lora_seterr(err, LORA_EINPUT, "%s: general.architecture is missing", base);
        else if ((rc = lora_gguf_arch_from_name(name, arch, err)))
            lora_err_prefix(err, "%s", base);
        if (!rc) {
            char key[96];
            double h = 0, kv = 0;
            snprintf(key, sizeof key, "%s.attention.head_count", arch->name);
            lora_gguf_get_num(g, key, &h);
            snprintf(key, sizeof key, "%s.attention.head_count_kv", arch->name);
            if (lora_gguf_get_num(g, key, &kv) != 0)
                kv = h;
            if (h >= 1 && h <= 1 << 20 && kv >= 1 && kv <= 1 << 20) {
                arch->heads = (uint64_t)h;
                arch->kv_heads = (uint64_t)kv;
            } else if (arch->permute_qk) {
                rc = lora_seterr(err, LORA_EINPUT, "%s: %s.attention.head_count is missing", base,
                                 arch->name);
            }
            arch->tied = lora_gguf_find_tensor(g, "output.weight") == NULL;
        }
        if (rc || !gbase)
            lora_gguf_close(g);
        else
            *gbase = g;
        return rc;
    }
    if (stat(base, &sb) == 0 && S_ISDIR(sb.st_mode))
        snprintf(path, sizeof path, "%s/config.json", base);
    else
        snprintf(path, sizeof path, "%s", base);
    char *text;
    size_t len;
    int rc = lora_read_file(path, LORA_MODEL_MAX_CONFIG, &text, &len, err);
    if (rc)
        return rc;
    rc = lora_gguf_arch_from_config(text, len, arch, err);
    free(text);
    if (rc)
        lora_err_prefix(err, "%s", path);
    return rc;
}

/* Decode n elements to double (F64 inputs too). */
static int decode(const lora_tensor *t, double **out, lora_error *err)
{
    if (!lora_dtype_readable(t->dtype))
        return lora_seterr(err, LORA_EINPUT, "tensor \"%s\": dtype %s cannot be converted", t->name,
                           lora_dtype_name(t->dtype));
    if (t->numel > SIZE_MAX / sizeof(double))
        return lora_seterr(err, LORA_EINPUT, "tensor \"%s\" too large", t->name);
    *out = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(double));
    if (!*out)
        return lora_oom(err);
    lora_decode_f64(t->dtype, t->data, *out, (size_t)t->numel);
    return LORA_OK;
}

/* Encode to dt, refusing a finite value that the narrower dtype turns
 * into an infinity (never a wrong result in silence). */
static int encode(lora_dtype dt, const double *src, size_t n, void *dst, const char *what,
                  lora_error *err)
{
    lora_encode_f64(dt, src, dst, n);
    if (dt == LORA_DT_F32 || dt == LORA_DT_F16 || dt == LORA_DT_BF16) {
        const unsigned char *p = dst;
        for (size_t i = 0; i < n; i++) {
            float f;
            if (dt == LORA_DT_F32)
                memcpy(&f, p + 4 * i, 4);
            else {
                uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
                f = dt == LORA_DT_F16 ? lora_f16_to_f32(h) : lora_bf16_to_f32(h);
            }
            if (isinf(f) && isfinite(src[i]))
                return lora_seterr(err, LORA_EINPUT, "%s: value %g overflows %s", what, src[i],
                                   lora_dtype_name(dt));
        }
    }
    return LORA_OK;
}

static uint32_t ggml_of(lora_dtype dt)
{
    return dt == LORA_DT_F16 ? LORA_GGML_F16 : dt == LORA_DT_BF16 ? LORA_GGML_BF16 : LORA_GGML_F32;
}

/* ---- PEFT -> GGUF ------------------------------------------------- */

typedef struct plan {
    const lora_module *m;
    char gguf[128];
    double fold;
    uint64_t permute_heads;   /* 0: none */
} plan;

/* The file-wide alpha: the most common s_m·r_m (ties: the first),
 * non-zero when any is (alpha 0 means scale 1 to llama.cpp). */
static double choose_alpha(const plan *p, size_t n)
{
    double best = 0;
    size_t best_n = 0;
    for (size_t i = 0; i < n; i++) {
        double k = p[i].m->scale * (double)p[i].m->r;
        if (k == 0 && best_n)
            continue;
        size_t c = 0;
        for (size_t j = 0; j < n; j++)
            c += p[j].m->scale * (double)p[j].m->r == k;
        if (c > best_n || (best == 0 && k != 0)) {
            best = k;
            best_n = c;
        }
    }
    return best == 0 ? 1.0 : best;
}

static int plan_modules(const lora_adapter *ad, const lora_gguf_arch *arch,
                        const lora_gguf *gbase, const lora_convert_opts *o,
                        lora_convert_report *rep, plan **out, size_t *n_out, lora_error *err)
{
    plan *p = calloc(ad->n_modules ? ad->n_modules : 1, sizeof *p);
    if (!p)
        return lora_oom(err);
    size_t n = 0;
    int rc = LORA_OK, skip = o->skip_unsupported;
    for (size_t i = 0; i < ad->n_saved && !rc; i++)
        rc = unsupported(rep, skip, err,
                         "%s: a full tensor saved by modules_to_save or bias; a llama.cpp LoRA "
                         "adapter carries only lora_a/lora_b pairs", ad->saved[i].target);
    for (size_t i = 0; i < ad->n_modules && !rc; i++) {
        const lora_module *m = &ad->modules[i];
        plan *q = &p[n];
        q->m = m;
        q->fold = 1;
        if (m->config_r != m->r) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "%s: its tensors have rank %llu but the config says %llu", m->name,
                             (unsigned long long)m->r, (unsigned long long)m->config_r);
            break;
        }
        if (lora_gguf_name_from_hf(arch, m->name, q->gguf, sizeof q->gguf) != 0) {
            rc = unsupported(rep, skip, err, "%s: no GGUF tensor for this module in architecture %s",
                             m->name, arch->name);
            continue;
        }
        int is_embd = strcmp(q->gguf, "token_embd.weight") == 0;
        if (strcmp(q->gguf, "output.weight") == 0 && arch->tied) {
            rc = unsupported(rep, skip, err,
                             "%s: the base ties lm_head to the embeddings, so its GGUF has no "
                             "output tensor for llama.cpp to adapt", m->name);
            continue;
        }
        if (m->embedding != is_embd) {
            rc = unsupported(rep, skip, err, "%s: %s LoRA where llama.cpp expects %s", m->name,
                             m->embedding ? "embedding" : "linear",
                             is_embd ? "an embedding" : "a linear layer");
            continue;
        }
        const lora_gguf_tensor *bt = gbase ? lora_gguf_find_tensor(gbase, q->gguf) : NULL;
        if (gbase && !bt) {
            rc = unsupported(rep, skip, err, "%s: the base GGUF has no tensor %s", m->name,
                             q->gguf);
            continue;
        }
        if (bt && (bt->ndim != 2 || bt->ne[0] != (is_embd ? m->out : m->in) ||
                   bt->ne[1] != (is_embd ? m->in : m->out))) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "%s: a %llu x %llu update does not fit the base's %s (ggml ne "
                             "[%llu, %llu]): wrong base?", m->name, (unsigned long long)m->out,
                             (unsigned long long)m->in, q->gguf, (unsigned long long)bt->ne[0],
                             (unsigned long long)bt->ne[1]);
            break;
        }
        if (strcmp(q->gguf, "position_embd.weight") == 0) {
            rc = unsupported(rep, skip, err, "%s: llama.cpp does not apply LoRA to position_embd",
                             m->name);
            continue;
        }
        if (arch->permute_qk) {
            size_t l = strlen(m->name);
            if (l >= 7 && strcmp(m->name + l - 7, ".q_proj") == 0)
                q->permute_heads = arch->heads;
            else if (l >= 7 && strcmp(m->name + l - 7, ".k_proj") == 0)
                q->permute_heads = arch->kv_heads;
            if (q->permute_heads && m->out % (2 * q->permute_heads) != 0) {
                rc = lora_seterr(err, LORA_EINPUT,
                                 "%s: %llu output rows do not split into %llu heads (wrong base "
                                 "config?)", m->name, (unsigned long long)m->out,
                                 (unsigned long long)q->permute_heads);
                break;
            }
        }
        n++;
    }
    if (!rc && n == 0)
        rc = lora_seterr(err, LORA_EINPUT, "%s: no module left to convert", ad->path);
    if (rc) {
        free(p);
        return rc;
    }
    *out = p;
    *n_out = n;
    return LORA_OK;
}

/* Write one module's pair: A (transposed for token_embd), B folded and permuted. */
static int write_pair(lora_ggw *w, const plan *q, lora_dtype dt, lora_error *err)
{
    const lora_module *m = q->m;
    double *A = NULL, *B = NULL, *tmp = NULL;
    void *enc = NULL;
    int rc = decode(m->A, &A, err);
    if (!rc)
        rc = decode(m->B, &B, err);
    size_t na = (size_t)m->A->numel, nb = (size_t)m->B->numel;
    size_t big = na > nb ? na : nb;
    if (!rc && (!(tmp = malloc(big * sizeof *tmp)) ||
                !(enc = malloc(big * (lora_dtype_bits(dt) / 8)))))
        rc = lora_oom(err);
    char name[160], what[320];
    if (!rc && m->embedding) {
        /* [r, vocab] -> [vocab, r] */
        for (uint64_t k = 0; k < m->r; k++)
            for (uint64_t j = 0; j < m->in; j++)
                tmp[j * m->r + k] = A[k * m->in + j];
        memcpy(A, tmp, na * sizeof *A);
    }
    if (!rc) {
        snprintf(name, sizeof name, "%s.lora_a", q->gguf);
        snprintf(what, sizeof what, "%s lora_A", m->name);
        if (!(rc = encode(dt, A, na, enc, what, err)))
            rc = lora_ggw_write(w, name, 0, enc, na * (lora_dtype_bits(dt) / 8), err);
    }
    if (!rc && q->fold != 1)
        for (size_t i = 0; i < nb; i++)
            B[i] *= q->fold;
    if (!rc && q->permute_heads) {
        rc = lora_gguf_permute_rows(tmp, B, m->out, m->r, sizeof(double), q->permute_heads, 0,
                                    err);
        if (!rc)
            memcpy(B, tmp, nb * sizeof *B);
    }
    if (!rc) {
        snprintf(name, sizeof name, "%s.lora_b", q->gguf);
        snprintf(what, sizeof what, "%s lora_B%s", m->name, q->fold != 1 ? " (scale folded in)" : "");
        if (!(rc = encode(dt, B, nb, enc, what, err)))
            rc = lora_ggw_write(w, name, 0, enc, nb * (lora_dtype_bits(dt) / 8), err);
    }
    free(A);
    free(B);
    free(tmp);
    free(enc);
    return rc;
}

static int declare_all(lora_ggw *w, const lora_gguf_arch *arch, float alpha, const plan *p,
                       size_t n, lora_dtype dt, lora_error *err)
{
    int rc;
    if ((rc = lora_ggw_kv_str(w, "general.architecture", arch->name, err)) ||
        (rc = lora_ggw_kv_str(w, "general.type", "adapter", err)) ||
        (rc = lora_ggw_kv_str(w, "adapter.type", "lora", err)) ||
        (rc = lora_ggw_kv_f32(w, "adapter.lora.alpha", alpha, err)))
        return rc;
    if (arch->permute_qk) {
        /* the head counts the q/k permutation used, so that the reverse
         * conversion needs no base (llama.cpp ignores them in adapters) */
        char key[96];
        snprintf(key, sizeof key, "%s.attention.head_count", arch->name);
        if ((rc = lora_ggw_kv_u32(w, key, (uint32_t)arch->heads, err)))
            return rc;
        snprintf(key, sizeof key, "%s.attention.head_count_kv", arch->name);
        if ((rc = lora_ggw_kv_u32(w, key, (uint32_t)arch->kv_heads, err)))
            return rc;
    }
    for (size_t i = 0; i < n; i++) {
        const lora_module *m = p[i].m;
        char name[160];
        uint64_t nea[2], neb[2] = {m->r, m->out};
        if (m->embedding)
            nea[0] = m->r, nea[1] = m->in;     /* torch [vocab, r] */
        else
            nea[0] = m->in, nea[1] = m->r;     /* torch [r, in] */
        snprintf(name, sizeof name, "%s.lora_a", p[i].gguf);
        if ((rc = lora_ggw_declare(w, name, ggml_of(dt), 2, nea, err)))
            return rc;
        snprintf(name, sizeof name, "%s.lora_b", p[i].gguf);
        if ((rc = lora_ggw_declare(w, name, ggml_of(dt), 2, neb, err)))
            return rc;
    }
    return LORA_OK;
}

static int refuse_existing(const char *out, int overwrite, lora_error *err)
{
    struct stat sb;
    if (!overwrite && lstat(out, &sb) == 0)
        return lora_seterr(err, LORA_EUSAGE, "%s exists (--force replaces it)", out);
    return LORA_OK;
}

/* Activated LoRA (PEFT's alora_invocation_tokens, llama.cpp's
 * adapter.alora.invocation_tokens) changes when the adapter applies.
 * lora-convert does not write that key, so it refuses such an adapter
 * with a message: dropping the key would change the adapter's behaviour
 * in silence. */
static int refuse_alora(const lora_adapter *ad, lora_error *err)
{
    if (!ad->config_json)
        return LORA_OK;
    json_t *root = json_loads(ad->config_json, 0, NULL);
    json_t *t = json_object_get(root, "alora_invocation_tokens");
    json_t *s = json_object_get(root, "invocation_string");
    int alora = (t && !json_is_null(t)) || (s && !json_is_null(s));
    json_decref(root);
    if (alora)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: an activated LoRA (alora_invocation_tokens): not supported by "
                           "lora-convert", ad->path);
    return LORA_OK;
}

int lora_convert_to_gguf(const lora_adapter *ad, const char *out, const lora_convert_opts *o,
                         lora_convert_report *rep, lora_error *err)
{
    memset(rep, 0, sizeof *rep);
    if (!o->base)
        return lora_seterr(err, LORA_EUSAGE,
                           "converting to GGUF needs the base model's config.json (--base)");
    lora_gguf_arch arch;
    lora_gguf *gbase = NULL;
    plan *p = NULL;
    size_t n = 0;
    lora_ggw *w = NULL;
    int rc = refuse_existing(out, o->overwrite, err);
    if (!rc)
        rc = read_base_config(o->base, &arch, &gbase, err);
    if (!rc)
        rc = refuse_alora(ad, err);
    if (!rc && ad->use_dora)
        rc = lora_seterr(err, LORA_EINPUT, "%s: a DoRA adapter (use_dora): GGUF LoRA has no "
                         "magnitude vectors, converting it would drop them", ad->path);
    if (!rc)
        rc = plan_modules(ad, &arch, gbase, o, rep, &p, &n, err);
    if (rc)
        goto done;
    lora_dtype dt = o->outtype;
    if (dt == LORA_DT_INVALID)
        dt = lora_dtype_writable(p[0].m->B->dtype) ? p[0].m->B->dtype : LORA_DT_F32;
    if (!lora_dtype_writable(dt)) {
        rc = lora_seterr(err, LORA_EUSAGE, "output type %s: only F32, F16 and BF16",
                         lora_dtype_name(dt));
        goto done;
    }
    double alpha = choose_alpha(p, n);
    float af = (float)alpha;
    for (size_t i = 0; i < n; i++) {
        double llama = (double)(af / (float)p[i].m->r);
        double f = p[i].m->scale / llama;
        p[i].fold = fabs(f - 1) < 0x1p-23 ? 1 : f;
    }
    snprintf(rep->architecture, sizeof rep->architecture, "%s", arch.name);
    rep->alpha = af;
    rep->dtype = dt;
    if ((rc = lora_ggw_new(out, 0, &w, err)) || (rc = declare_all(w, &arch, af, p, n, dt, err)) ||
        (rc = lora_ggw_start(w, err)))
        goto done;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = write_pair(w, &p[i], dt, err);
        lora_convert_module cm = {(char *)p[i].m->name, p[i].gguf, p[i].m->r, p[i].m->scale,
                                  p[i].fold, p[i].permute_heads != 0, p[i].m->embedding};
        if (!rc)
            rc = add_module(rep, &cm, err);
    }
    if (rc)
        goto done;
    rc = lora_ggw_commit(w, err);
    w = NULL;
    struct stat sb;
    if (!rc && stat(out, &sb) == 0)
        rep->bytes = (uint64_t)sb.st_size;
done:
    lora_ggw_abort(w);
    lora_gguf_close(gbase);
    free(p);
    return rc;
}

/* ---- GGUF -> PEFT ------------------------------------------------- */

typedef struct back {
    const lora_gguf_pair *p;
    char hf[256];
    uint64_t permute_heads;
} back;

static uint64_t common_rank(const back *b, size_t n)
{
    uint64_t best = 0;
    size_t best_n = 0;
    for (size_t i = 0; i < n; i++) {
        size_t c = 0;
        for (size_t j = 0; j < n; j++)
            c += b[j].p->r == b[i].p->r;
        if (c > best_n || (c == best_n && b[i].p->r < best)) {
            best = b[i].p->r;
            best_n = c;
        }
    }
    return best;
}

/* PEFT's alpha for a pair so that its scale is llama.cpp's. */
static double peft_alpha(const lora_gguf_adapter *ga, uint64_t r)
{
    return ga->alpha != 0 ? ga->alpha : (double)r;
}

static char *make_config(const lora_gguf_adapter *ga, const lora_gguf_arch *arch, const back *b,
                         size_t n)
{
    uint64_t r = common_rank(b, n);
    json_t *cfg = json_object(), *tm = json_array(), *rp = json_object(), *ap = json_object();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(tm, json_string(b[i].hf));
        if (b[i].p->r != r)
            json_object_set_new(rp, b[i].hf, json_integer((json_int_t)b[i].p->r));
        if (peft_alpha(ga, b[i].p->r) != peft_alpha(ga, r))
            json_object_set_new(ap, b[i].hf, json_real(peft_alpha(ga, b[i].p->r)));
    }
    double alpha = peft_alpha(ga, r);
    json_object_set_new(cfg, "peft_type", json_string("LORA"));
    json_object_set_new(cfg, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(cfg, "base_model_name_or_path", json_null());
    json_object_set_new(cfg, "r", json_integer((json_int_t)r));
    json_object_set_new(cfg, "lora_alpha", alpha == floor(alpha) && alpha < 1e15
                                               ? json_integer((json_int_t)alpha)
                                               : json_real(alpha));
    json_object_set_new(cfg, "target_modules", tm);
    json_object_set_new(cfg, "rank_pattern", rp);
    json_object_set_new(cfg, "alpha_pattern", ap);
    json_object_set_new(cfg, "use_rslora", json_false());
    json_object_set_new(cfg, "use_dora", json_false());
    json_object_set_new(cfg, "fan_in_fan_out", json_boolean(strcmp(arch->name, "gpt2") == 0));
    json_object_set_new(cfg, "bias", json_string("none"));
    json_object_set_new(cfg, "lora_dropout", json_real(0.0));
    json_object_set_new(cfg, "inference_mode", json_true());
    json_object_set_new(cfg, "modules_to_save", json_null());
    char *text = lora_json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(cfg);
    return text;
}

static void peft_key(char *dst, size_t cap, const back *b, int isA)
{
    if (b->p->embedding)
        snprintf(dst, cap, "base_model.model.%s.lora_embedding_%c", b->hf, isA ? 'A' : 'B');
    else
        snprintf(dst, cap, "base_model.model.%s.lora_%c.weight", b->hf, isA ? 'A' : 'B');
}

/* Tensor bytes in PEFT's layout (a fresh buffer in *buf, nbytes bytes). */
static int peft_bytes(const back *b, int isA, void **buf, size_t *nbytes, lora_error *err)
{
    const lora_gguf_tensor *t = isA ? b->p->a : b->p->b;
    size_t es = lora_dtype_bits(t->dtype) / 8;
    *nbytes = (size_t)t->nbytes;
    if (!(*buf = malloc(*nbytes ? *nbytes : 1)))
        return lora_oom(err);
    if (isA && b->p->embedding) {
        /* stored [vocab, r] (ne [r, vocab]); PEFT wants [r, vocab] */
        uint64_t r = b->p->r, v = b->p->in;
        const unsigned char *s = t->data;
        unsigned char *d = *buf;
        for (uint64_t j = 0; j < v; j++)
            for (uint64_t k = 0; k < r; k++)
                memcpy(d + (k * v + j) * es, s + (j * r + k) * es, es);
        return LORA_OK;
    }
    if (!isA && b->permute_heads)
        return lora_gguf_permute_rows(*buf, t->data, b->p->out, b->p->r, es, b->permute_heads, 1,
                                      err);
    memcpy(*buf, t->data, *nbytes);
    return LORA_OK;
}

static void remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL)
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
    }
    rmdir(dir);
}

static int write_safetensors(const char *path, const back *b, size_t n, lora_error *err)
{
    lora_stw *w;
    char key[512];
    int rc = lora_stw_new(path, &w, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n && !rc; i++)
        for (int isA = 1; isA >= 0 && !rc; isA--) {
            const lora_gguf_tensor *t = isA ? b[i].p->a : b[i].p->b;
            uint64_t shape[2] = {t->ne[1], t->ne[0]};
            if (isA && b[i].p->embedding)
                shape[0] = t->ne[0], shape[1] = t->ne[1];
            peft_key(key, sizeof key, &b[i], isA);
            rc = lora_stw_declare(w, key, t->dtype, 2, shape, err);
        }
    if (!rc)
        rc = lora_stw_start(w, err);
    for (size_t i = 0; i < n && !rc; i++)
        for (int isA = 1; isA >= 0 && !rc; isA--) {
            void *buf;
            size_t len;
            peft_key(key, sizeof key, &b[i], isA);
            if ((rc = peft_bytes(&b[i], isA, &buf, &len, err)) == LORA_OK)
                rc = lora_stw_write(w, key, 0, buf, len, err);
            free(buf);
        }
    if (rc) {
        lora_stw_abort(w);
        return rc;
    }
    return lora_stw_commit(w, err);
}

/* The folder is built as OUT.tmp-XXXXXX and renamed onto OUT. */
static int write_folder(const char *out, int overwrite, const char *cfg, const back *b, size_t n,
                        lora_error *err)
{
    size_t len = strlen(out);
    while (len > 1 && out[len - 1] == '/')
        len--;
    char *tmp = malloc(len + 16), path[4096];
    if (!tmp)
        return lora_oom(err);
    memcpy(tmp, out, len);
    strcpy(tmp + len, ".tmp-XXXXXX");
    if (!mkdtemp(tmp)) {
        int e = errno;
        free(tmp);
        return lora_seterr_errno(err, LORA_EIO, e, "%s: cannot create a temporary folder", out);
    }
    chmod(tmp, 0755);
    lora_tmp_track(tmp, 1);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    int rc = lora_write_file_atomic(path, cfg, strlen(cfg), 0644, err);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    if (!rc)
        rc = write_safetensors(path, b, n, err);
    if (!rc && rename(tmp, out) != 0) {
        int e = errno;
        if (overwrite && (e == ENOTEMPTY || e == EEXIST)) {
            if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_EXCHANGE) != 0)
                rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: cannot replace", out);
        } else {
            rc = lora_seterr_errno(err, e == ENOTEMPTY || e == EEXIST ? LORA_EUSAGE : LORA_EIO, e,
                                   "%s: cannot create", out);
        }
    } else if (!rc) {
        lora_tmp_forget(tmp);
        (void)lora_fsync_dir_of(out, NULL);
        free(tmp);
        return LORA_OK;
    }
    /* failure, or the old folder swapped out to tmp */
    remove_flat_dir(tmp);
    lora_tmp_forget(tmp);
    free(tmp);
    if (!rc)
        (void)lora_fsync_dir_of(out, NULL);
    return rc;
}

static int head_counts(const lora_gguf_adapter *ga, const lora_convert_opts *o,
                       lora_gguf_arch *arch, lora_error *err)
{
    if (o->base) {
        lora_gguf_arch b;
        int rc = read_base_config(o->base, &b, NULL, err);
        if (rc)
            return rc;
        if (strcmp(b.name, arch->name) != 0)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: the adapter is for architecture %s, the base (--base) is %s",
                               lora_gguf_path(ga->g), arch->name, b.name);
        *arch = b;
        return LORA_OK;
    }
    char key[96];
    double h = 0, kv = 0;
    snprintf(key, sizeof key, "%s.attention.head_count", arch->name);
    lora_gguf_get_num(ga->g, key, &h);
    snprintf(key, sizeof key, "%s.attention.head_count_kv", arch->name);
    if (lora_gguf_get_num(ga->g, key, &kv) != 0)
        kv = h;
    if (h >= 1 && h <= 1 << 20 && kv >= 1 && kv <= 1 << 20) {
        arch->heads = (uint64_t)h;
        arch->kv_heads = (uint64_t)kv;
    }
    return LORA_OK;
}

static int plan_back(const lora_gguf_adapter *ga, const lora_gguf_arch *arch,
                     const lora_convert_opts *o, lora_convert_report *rep, back *b, size_t *n,
                     lora_error *err)
{
    int rc = LORA_OK, skip = o->skip_unsupported;
    const char *path = lora_gguf_path(ga->g);
    *n = 0;
    for (size_t i = 0; i < ga->n && !rc; i++) {
        const lora_gguf_pair *p = &ga->pairs[i];
        back *q = &b[*n];
        q->p = p;
        q->permute_heads = 0;
        if (p->a->dtype == LORA_DT_INVALID || p->b->dtype == LORA_DT_INVALID ||
            p->a->dtype != p->b->dtype) {
            rc = unsupported(rep, skip, err, "%s: lora_a is %s and lora_b %s; PEFT needs F32, F16 "
                             "or BF16 for both", p->name, lora_ggml_type_name(p->a->type),
                             lora_ggml_type_name(p->b->type));
            continue;
        }
        if (lora_gguf_name_to_hf(arch, p->name, q->hf, sizeof q->hf) != 0) {
            rc = unsupported(rep, skip, err, "%s: no Hugging Face module for it in architecture %s",
                             p->name, arch->name);
            continue;
        }
        if (arch->permute_qk) {
            size_t l = strlen(p->name);
            if (l > 14 && strcmp(p->name + l - 14, ".attn_q.weight") == 0)
                q->permute_heads = arch->heads;
            else if (l > 14 && strcmp(p->name + l - 14, ".attn_k.weight") == 0)
                q->permute_heads = arch->kv_heads;
            else
                q->permute_heads = (uint64_t)-1;
            if (q->permute_heads == 0)
                rc = lora_seterr(err, LORA_EINPUT,
                                 "%s: %s: llama's q/k rows are permuted by head, and the file "
                                 "does not say how many heads: give the base (--base)", path,
                                 p->name);
            if (q->permute_heads == (uint64_t)-1)
                q->permute_heads = 0;
            if (!rc && q->permute_heads && p->out % (2 * q->permute_heads) != 0)
                rc = lora_seterr(err, LORA_EINPUT, "%s: %s: %llu rows do not split into %llu heads",
                                 path, p->name, (unsigned long long)p->out,
                                 (unsigned long long)q->permute_heads);
        }
        if (!rc)
            (*n)++;
    }
    if (!rc && *n == 0)
        rc = lora_seterr(err, LORA_EINPUT, "%s: no LoRA pair to convert", path);
    return rc;
}

int lora_convert_to_peft(const char *gguf, const char *out, const lora_convert_opts *o,
                         lora_convert_report *rep, lora_error *err)
{
    memset(rep, 0, sizeof *rep);
    lora_gguf_adapter *ga = NULL;
    back *b = NULL;
    char *cfg = NULL;
    size_t n = 0;
    lora_gguf_arch arch;
    int rc = refuse_existing(out, o->overwrite, err);
    if (!rc)
        rc = lora_gguf_adapter_open(gguf, &ga, err);
    if (!rc && lora_gguf_find_kv(ga->g, "adapter.alora.invocation_tokens"))
        rc = lora_seterr(err, LORA_EINPUT,
                         "%s: an activated LoRA (adapter.alora.invocation_tokens): not supported "
                         "by lora-convert", gguf);
    if (!rc && !ga->architecture)
        rc = lora_seterr(err, LORA_EINPUT, "%s: general.architecture is missing", gguf);
    if (!rc && (rc = lora_gguf_arch_from_name(ga->architecture, &arch, err)))
        lora_err_prefix(err, "%s", gguf);
    if (!rc)
        rc = head_counts(ga, o, &arch, err);
    if (!rc && !(b = calloc(ga->n ? ga->n : 1, sizeof *b)))
        rc = lora_oom(err);
    if (!rc)
        rc = plan_back(ga, &arch, o, rep, b, &n, err);
    if (!rc && !(cfg = make_config(ga, &arch, b, n)))
        rc = lora_oom(err);
    if (!rc)
        rc = write_folder(out, o->overwrite, cfg, b, n, err);
    if (!rc) {
        snprintf(rep->architecture, sizeof rep->architecture, "%s", arch.name);
        rep->alpha = ga->alpha;
        rep->dtype = b[0].p->b->dtype;
        for (size_t i = 0; i < n && !rc; i++) {
            lora_convert_module cm = {b[i].p->name, b[i].hf, b[i].p->r,
                                      lora_gguf_pair_scale(ga, b[i].p), 1, b[i].permute_heads != 0,
                                      b[i].p->embedding};
            rc = add_module(rep, &cm, err);
            rep->bytes += b[i].p->a->nbytes + b[i].p->b->nbytes;
        }
    }
    free(cfg);
    free(b);
    lora_gguf_adapter_free(ga);
    return rc;
}

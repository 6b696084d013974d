/*
 * adapter.c - a PEFT LoRA adapter as the tools see it: every tensor key
 * of adapter_model.safetensors classified (formats.md section 4, and the
 * forms seen in the wild listed in fixtures/real/INDEX.md), lora_A /
 * lora_B paired into modules with their rank, alpha and scale, full
 * tensors from modules_to_save listed as replacements, and everything we
 * cannot apply exactly refused with a message rather than skipped.
 * Binding to a base checkpoint decides the base tensor's spelling and
 * orientation from the base itself, because configs are not reliable
 * about fan_in_fan_out.
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#define PEFT_PREFIX "base_model.model."
#define PEFT_PREFIX_LEN (sizeof PEFT_PREFIX - 1)
#define CONFIG_MAX (16u << 20)

/* ------------------------------------------------------------------ */
/* Keys                                                                */
/* ------------------------------------------------------------------ */

/* Join segs[a, b) with '.', malloc'd. */
static char *join(char **segs, size_t a, size_t b, lora_error *err)
{
    size_t n = 1;
    for (size_t i = a; i < b; i++)
        n += strlen(segs[i]) + 1;
    char *s = malloc(n), *p = s;
    if (!s) {
        lora_oom(err);
        return NULL;
    }
    *p = '\0';
    for (size_t i = a; i < b; i++) {
        size_t m = strlen(segs[i]);
        if (i > a)
            *p++ = '.';
        memcpy(p, segs[i], m);
        p += m;
        *p = '\0';
    }
    return s;
}

static int is_seg(const char *s, const char *a, const char *b)
{
    return strcmp(s, a) == 0 || (b && strcmp(s, b) == 0);
}

/* SEGS[I] is lora_A, lora_B, lora_embedding_A/B or lora_magnitude_vector. */
static int classify_lora(const char *key, char **segs, size_t n, size_t i, int *kind, char **name,
                         lora_error *err)
{
    int emb = is_seg(segs[i], "lora_embedding_A", "lora_embedding_B");
    int lin = is_seg(segs[i], "lora_A", "lora_B");
    int mag = strcmp(segs[i], "lora_magnitude_vector") == 0;
    int isb = segs[i][strlen(segs[i]) - 1] == 'B';
    size_t t = i + 1;
    if (t < n && strcmp(segs[t], "default") == 0)
        t++; /* the in-memory adapter name, lenient */
    if (mag) {
        if (t < n && strcmp(segs[t], "weight") == 0)
            t++;
        if (t != n)
            return lora_seterr(err, LORA_EINPUT,
                               "key \"%s\": cannot classify (expected "
                               "lora_magnitude_vector[.default][.weight])", key);
    } else if (lin) {
        if (t + 1 == n && strcmp(segs[t], "bias") == 0)
            return lora_seterr(err, LORA_EINPUT,
                               "key \"%s\": a bias on lora_A/lora_B (lora_bias) is not supported",
                               key);
        if (!(t + 1 == n && strcmp(segs[t], "weight") == 0))
            return lora_seterr(err, LORA_EINPUT,
                               "key \"%s\": cannot classify (expected %s.weight)", key, segs[i]);
    } else if (t != n) {
        return lora_seterr(err, LORA_EINPUT,
                           "key \"%s\": cannot classify (%s takes no suffix)", key, segs[i]);
    }
    /* LoRA on the frozen copy that a modules_to_save wrapper keeps
     * (X.original_module.lora_A): PEFT never runs it while the
     * adapter is active, so it changes nothing */
    for (size_t j = 0; j < i; j++)
        if (strcmp(segs[j], "original_module") == 0) {
            if (!(*name = join(segs, 0, n, err)))
                return LORA_EIO;
            *kind = LORA_KEY_COPY;
            return LORA_OK;
        }
    /* the module path, without a .base_layer. wrapper or the
     * .modules_to_save.default. of the trained copy */
    char **mod = malloc((i ? i : 1) * sizeof *mod);
    if (!mod)
        return lora_oom(err);
    size_t m = 0;
    for (size_t j = 0; j < i; j++) {
        if (strcmp(segs[j], "modules_to_save") == 0) {
            if (j + 1 < i && strcmp(segs[j + 1], "default") == 0)
                j++;
            continue;
        }
        if (strcmp(segs[j], "base_layer") != 0)
            mod[m++] = segs[j];
    }
    if (m == 0) {
        free(mod);
        return lora_seterr(err, LORA_EINPUT, "key \"%s\": no module path", key);
    }
    *name = join(mod, 0, m, err);
    free(mod);
    if (!*name)
        return LORA_EIO;
    *kind = mag ? LORA_KEY_MAG
                : emb ? (isb ? LORA_KEY_EMB_B : LORA_KEY_EMB_A) : (isb ? LORA_KEY_B : LORA_KEY_A);
    return LORA_OK;
}

/* X.modules_to_save[.default].P: the trained copy that replaces X.P */
static int classify_saved_copy(const char *key, char **segs, size_t n, size_t i, int *kind,
                               char **name, lora_error *err)
{
    size_t t = i + 1;
    if (t < n && strcmp(segs[t], "default") == 0)
        t++;
    if (i == 0 || t >= n)
        return lora_seterr(err, LORA_EINPUT, "key \"%s\": cannot classify", key);
    char *a = join(segs, 0, i, err), *b = a ? join(segs, t, n, err) : NULL;
    if (!b) {
        free(a);
        return LORA_EIO;
    }
    size_t len = strlen(a) + strlen(b) + 2;
    if ((*name = malloc(len)))
        snprintf(*name, len, "%s.%s", a, b);
    free(a);
    free(b);
    if (!*name)
        return lora_oom(err);
    *kind = LORA_KEY_SAVED;
    return LORA_OK;
}

/* X.original_module.P and X.base_layer.P: frozen copies of the base,
 * except X.base_layer.P of a module in modules_to_save: PEFT saves
 * the wrapper's trained copy of a LoRA layer under that name (its
 * modules_to_save.default part removed), and the whole copy trains */
static int classify_frozen(const lora_acfg *c, const char *key, char **segs, size_t n, size_t i,
                           int *kind, char **name, lora_error *err)
{
    if (i == 0 || i + 1 >= n)
        return lora_seterr(err, LORA_EINPUT, "key \"%s\": cannot classify", key);
    char **v = malloc(n * sizeof *v);
    if (!v)
        return lora_oom(err);
    size_t m = 0;
    for (size_t j = 0; j < n; j++)
        if (j != i)
            v[m++] = segs[j];
    *name = join(v, 0, m, err);
    free(v);
    if (!*name)
        return LORA_EIO;
    *kind = LORA_KEY_COPY;
    if (strcmp(segs[i], "base_layer") == 0) {
        char *mod = join(segs, 0, i, err);
        if (!mod)
            return LORA_EIO;
        if (lora_acfg_saves(c, mod))
            *kind = LORA_KEY_SAVED;
        free(mod);
    }
    return LORA_OK;
}

/* A plain path: a modules_to_save tensor, or a trained bias. */
static int classify_plain(const lora_acfg *c, const char *key, char **segs, size_t n, int *kind,
                          char **name, lora_error *err)
{
    if (n < 2)
        return lora_seterr(err, LORA_EINPUT,
                           "key \"%s\": cannot classify (not a lora_A/lora_B tensor)", key);
    /* PEFT wraps a module whose name ends with a modules_to_save entry
     * and saves every parameter under it (classifier.dense.weight of a
     * RoBERTa head): any ancestor of the parameter may be the module */
    int saved = 0;
    for (size_t k = n - 1; k >= 1 && !saved; k--) {
        char *mod = join(segs, 0, k, err);
        if (!mod)
            return LORA_EIO;
        saved = lora_acfg_saves(c, mod);
        free(mod);
    }
    if (!saved && strcmp(segs[n - 1], "bias") == 0 && c->bias && strcmp(c->bias, "none") != 0)
        saved = 1;
    if (!saved)
        return lora_seterr(err, LORA_EINPUT,
                           "key \"%s\": cannot classify (not a lora_A/lora_B tensor, and not in "
                           "modules_to_save)",
                           key);
    if (!(*name = join(segs, 0, n, err)))
        return LORA_EIO;
    *kind = LORA_KEY_SAVED;
    return LORA_OK;
}

static int classify(const lora_acfg *c, const char *key, char **segs, size_t n, int *kind,
                    char **name, lora_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (segs[i][0] == '\0')
            return lora_seterr(err, LORA_EINPUT, "key \"%s\": empty name part", key);
    /* lora_A / lora_B / lora_embedding_A / lora_embedding_B, and DoRA's
     * lora_magnitude_vector (PEFT saves it bare; in-memory state dicts
     * add .default and/or .weight) */
    for (size_t i = 0; i < n; i++)
        if (is_seg(segs[i], "lora_embedding_A", "lora_embedding_B") ||
            is_seg(segs[i], "lora_A", "lora_B") || strcmp(segs[i], "lora_magnitude_vector") == 0)
            return classify_lora(key, segs, n, i, kind, name, err);
    for (size_t i = 0; i < n; i++)
        if (strncmp(segs[i], "lora_", 5) == 0)
            return lora_seterr(err, LORA_EINPUT,
                               "key \"%s\": \"%s\" is not a LoRA tensor this tool knows", key,
                               segs[i]);
    for (size_t i = 0; i < n; i++)
        if (strcmp(segs[i], "modules_to_save") == 0)
            return classify_saved_copy(key, segs, n, i, kind, name, err);
    for (size_t i = 0; i < n; i++)
        if (is_seg(segs[i], "original_module", "base_layer"))
            return classify_frozen(c, key, segs, n, i, kind, name, err);
    return classify_plain(c, key, segs, n, kind, name, err);
}

int lora_adapter_classify_key(const lora_acfg *c, const char *key, int *kind, char **name,
                              lora_error *err)
{
    *kind = 0;
    *name = NULL;
    const char *p = key;
    if (strncmp(p, PEFT_PREFIX, PEFT_PREFIX_LEN) != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "key \"%s\": not a PEFT adapter key (no \"" PEFT_PREFIX "\" prefix)",
                           key);
    p += PEFT_PREFIX_LEN;
    if (strncmp(p, PEFT_PREFIX, PEFT_PREFIX_LEN) == 0)
        p += PEFT_PREFIX_LEN; /* wrapped twice, seen in the wild */
    char *copy = lora_strdup(p, err);
    if (!copy)
        return LORA_EIO;
    size_t n = 1;
    for (char *q = copy; *q; q++)
        n += *q == '.';
    char **segs = malloc(n * sizeof *segs);
    if (!segs) {
        free(copy);
        return lora_oom(err);
    }
    size_t k = 0;
    segs[k++] = copy;
    for (char *q = copy; *q; q++)
        if (*q == '.') {
            *q = '\0';
            segs[k++] = q + 1;
        }
    int rc = classify(c, key, segs, n, kind, name, err);
    free(segs);
    free(copy);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Opening                                                             */
/* ------------------------------------------------------------------ */

struct entry {
    char *name;
    int kind;
    const lora_tensor *t;
};

static int cmp_entry(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : x->kind - y->kind;
}

static int cmp_module(const void *a, const void *b)
{
    return strcmp(((const lora_module *)a)->name, ((const lora_module *)b)->name);
}

static int cmp_saved(const void *a, const void *b)
{
    return strcmp(((const lora_saved *)a)->target, ((const lora_saved *)b)->target);
}

static void shape_str(const lora_tensor *t, char *buf, size_t n)
{
    size_t o = 0;
    o += snprintf(buf + o, n - o, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += snprintf(buf + o, n - o, "%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/* Fill module m from its A and B tensors, checking shapes and dtypes. */
static int make_module(const lora_acfg *c, lora_module *m, lora_error *err)
{
    const lora_tensor *A = m->A, *B = m->B;
    char sa[96], sb[96];
    const char *an = m->embedding ? "lora_embedding_A" : "lora_A";
    const char *bn = m->embedding ? "lora_embedding_B" : "lora_B";
    if (!lora_dtype_readable(A->dtype) || !lora_dtype_readable(B->dtype))
        return lora_seterr(err, LORA_EINPUT, "module %s: %s is %s and %s is %s; only F32, F16, "
                           "BF16 and F64 are supported",
                           m->name, an, lora_dtype_name(A->dtype), bn, lora_dtype_name(B->dtype));
    shape_str(A, sa, sizeof sa);
    shape_str(B, sb, sizeof sb);
    if (A->ndim != 2 || B->ndim != 2)
        return lora_seterr(err, LORA_EINPUT, "module %s: %s %s and %s %s must both be matrices",
                           m->name, an, sa, bn, sb);
    if (A->shape[0] != B->shape[1])
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: %s %s and %s %s disagree on the rank (%llu vs %llu)",
                           m->name, an, sa, bn, sb, (unsigned long long)A->shape[0],
                           (unsigned long long)B->shape[1]);
    if (A->shape[0] == 0 || A->shape[1] == 0 || B->shape[0] == 0)
        return lora_seterr(err, LORA_EINPUT, "module %s: %s %s and %s %s have an empty dimension",
                           m->name, an, sa, bn, sb);
    m->r = A->shape[0];
    m->in = A->shape[1];
    m->out = B->shape[0];
    int rc = lora_acfg_module_rank(c, m->name, &m->config_r, &m->alpha, err);
    if (rc)
        return rc;
    /* PEFT scales with the configured r; when the tensors disagree the
     * adapter is reported and bind refuses it, so this scale is never used */
    double r = (double)m->config_r;
    m->scale = c->use_rslora ? m->alpha / sqrt(r) : m->alpha / r;
    m->transpose = m->embedding || c->fan_in_fan_out;
    size_t len = strlen(m->name) + sizeof ".weight";
    if (!(m->target = malloc(len)))
        return lora_oom(err);
    snprintf(m->target, len, "%s.weight", m->name);
    return LORA_OK;
}

/* DoRA's magnitude vector: only with use_dora, on every module then,
 * one value per output row ([out]: PEFT takes the row norms after the
 * Conv1D transpose, so fan_in_fan_out does not change it), finite
 * (trained, so not necessarily positive).  PEFT defines DoRA for Linear (and
 * Conv1D), Embedding and ConvNd layers; this library reads it on Linear
 * and Conv1D modules and says so for embeddings. */
static int check_dora(const lora_acfg *c, const lora_module *m, lora_error *err)
{
    const lora_tensor *v = m->magnitude;
    if (!v && !c->use_dora)
        return LORA_OK;
    if (!v)
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: use_dora is true but the module has no DoRA "
                           "lora_magnitude_vector", m->name);
    if (!c->use_dora)
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: a DoRA lora_magnitude_vector (\"%s\") but use_dora is "
                           "not true in adapter_config.json", m->name, v->name);
    if (m->embedding)
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: DoRA on an embedding layer (lora_embedding_A/B) is not "
                           "supported; DoRA is read on Linear and Conv1D modules only", m->name);
    char s[96];
    shape_str(v, s, sizeof s);
    if (!(v->ndim == 1 && v->shape[0] == m->out))
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: lora_magnitude_vector is %s, expected [%llu] (one value "
                           "per output row)", m->name, s, (unsigned long long)m->out);
    if (!lora_dtype_readable(v->dtype))
        return lora_seterr(err, LORA_EINPUT, "module %s: lora_magnitude_vector is %s; only F32, "
                           "F16, BF16 and F64 are supported", m->name, lora_dtype_name(v->dtype));
    double *x = malloc((size_t)v->numel * sizeof *x);
    if (!x)
        return lora_oom(err);
    int rc = lora_decode_f64(v->dtype, v->data, x, (size_t)v->numel) == LORA_OK ? LORA_OK : -1;
    for (uint64_t i = 0; i < v->numel && rc == LORA_OK; i++)
        if (!isfinite(x[i]))
            rc = -1;
    free(x);
    if (rc != LORA_OK)
        return lora_seterr(err, LORA_EINPUT, "module %s: lora_magnitude_vector holds NaN or "
                           "infinity", m->name);
    return LORA_OK;
}

static const char *kind_name(int kind)
{
    switch (kind) {
    case LORA_KEY_A: return "lora_A";
    case LORA_KEY_B: return "lora_B";
    case LORA_KEY_EMB_A: return "lora_embedding_A";
    case LORA_KEY_EMB_B: return "lora_embedding_B";
    default: return "saved tensor";
    }
}

static int same_tensor(const lora_tensor *a, const lora_tensor *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return memcmp(a->data, b->data, (size_t)a->nbytes) == 0;
}

/* Group the classified entries (sorted by name, kind) into modules and
 * saved tensors. */
static int build(lora_adapter *ad, const lora_acfg *c, struct entry *e, size_t n, lora_error *err)
{
    size_t nm = 0, ns = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].kind == LORA_KEY_SAVED)
            ns++;
        else if (e[i].kind != LORA_KEY_COPY)
            nm++;
    }
    ad->modules = calloc(nm ? nm : 1, sizeof *ad->modules);
    ad->saved = calloc(ns ? ns : 1, sizeof *ad->saved);
    if (!ad->modules || !ad->saved)
        return lora_oom(err);

    for (size_t i = 0; i < n; i++) {
        if (e[i].kind == LORA_KEY_COPY)
            continue;
        if (e[i].kind == LORA_KEY_SAVED) {
            lora_saved *s = &ad->saved[ad->n_saved++];
            s->target = e[i].name;
            e[i].name = NULL;
            s->t = e[i].t;
            continue;
        }
        /* entries of one module are adjacent: A, B, EMB_A, EMB_B, MAG */
        lora_module *m = NULL;
        if (ad->n_modules && strcmp(ad->modules[ad->n_modules - 1].name, e[i].name) == 0)
            m = &ad->modules[ad->n_modules - 1];
        if (!m) {
            m = &ad->modules[ad->n_modules++];
            m->name = e[i].name;
            e[i].name = NULL;
            m->embedding = e[i].kind == LORA_KEY_EMB_A || e[i].kind == LORA_KEY_EMB_B;
        }
        if (e[i].kind == LORA_KEY_MAG) {
            if (m->magnitude)
                return lora_seterr(err, LORA_EINPUT,
                                   "module %s: two lora_magnitude_vector tensors (\"%s\" and "
                                   "\"%s\")", m->name, m->magnitude->name, e[i].t->name);
            m->magnitude = e[i].t;
            continue;
        }
        int emb = e[i].kind == LORA_KEY_EMB_A || e[i].kind == LORA_KEY_EMB_B;
        int isa = e[i].kind == LORA_KEY_A || e[i].kind == LORA_KEY_EMB_A;
        if (emb != m->embedding)
            return lora_seterr(err, LORA_EINPUT,
                               "module %s: has both lora_A/lora_B and lora_embedding_A/B tensors",
                               m->name);
        const lora_tensor **slot = isa ? &m->A : &m->B;
        /* PEFT writes the LoRA of a module in modules_to_save twice (as
         * X.lora_A and X.modules_to_save.lora_A): the same bytes */
        if (*slot && same_tensor(*slot, e[i].t) &&
            (strstr((*slot)->name, ".modules_to_save.") || strstr(e[i].t->name, ".modules_to_save.")))
            continue;
        if (*slot)
            return lora_seterr(err, LORA_EINPUT,
                               "module %s: two %s tensors (\"%s\" and \"%s\"), e.g. both with and "
                               "without .default or a second base_model.model. prefix",
                               m->name, kind_name(e[i].kind), (*slot)->name, e[i].t->name);
        *slot = e[i].t;
    }
    for (size_t i = 0; i < ad->n_modules; i++) {
        lora_module *m = &ad->modules[i];
        if (!m->A && !m->B)
            return lora_seterr(err, LORA_EINPUT,
                               "module %s: a lora_magnitude_vector without lora_A and lora_B",
                               m->name);
        if (!m->A || !m->B)
            return lora_seterr(err, LORA_EINPUT, "module %s: has %s but no %s", m->name,
                               m->A ? (m->embedding ? "lora_embedding_A" : "lora_A")
                                    : (m->embedding ? "lora_embedding_B" : "lora_B"),
                               m->A ? (m->embedding ? "lora_embedding_B" : "lora_B")
                                    : (m->embedding ? "lora_embedding_A" : "lora_A"));
        int rc = make_module(c, m, err);
        if (rc || (rc = check_dora(c, m, err)))
            return rc;
    }
    ad->use_dora = c->use_dora;
    qsort(ad->modules, ad->n_modules, sizeof *ad->modules, cmp_module);
    qsort(ad->saved, ad->n_saved, sizeof *ad->saved, cmp_saved);
    for (size_t i = 1; i < ad->n_saved; i++)
        if (strcmp(ad->saved[i - 1].target, ad->saved[i].target) == 0 &&
            !same_tensor(ad->saved[i - 1].t, ad->saved[i].t))
            return lora_seterr(err, LORA_EINPUT, "tensor %s is saved twice (\"%s\" and \"%s\")",
                               ad->saved[i].target, ad->saved[i - 1].t->name, ad->saved[i].t->name);
    for (size_t i = 0; i < ad->n_saved; i++)
        if (!lora_dtype_readable(ad->saved[i].t->dtype))
            return lora_seterr(err, LORA_EINPUT, "saved tensor %s is %s; only F32, F16, BF16 and "
                               "F64 are supported",
                               ad->saved[i].t->name, lora_dtype_name(ad->saved[i].t->dtype));
    return LORA_OK;
}

static int set_str(char **dst, const char *src, lora_error *err)
{
    *dst = NULL;
    if (!src)
        return LORA_OK;
    *dst = lora_strdup(src, err);
    return *dst ? LORA_OK : LORA_EIO;
}

int lora_adapter_open_parts(const char *config_json, size_t config_len, lora_st *st,
                            const char *path, lora_adapter **out, lora_error *err)
{
    *out = NULL;
    lora_acfg *c = NULL;
    lora_adapter *ad = NULL;
    struct entry *e = NULL;
    size_t n = lora_st_count(st);
    int rc = lora_acfg_parse(config_json, config_len, &c, err);
    if (rc)
        goto fail;
    if (!(ad = calloc(1, sizeof *ad)) || !(e = calloc(n ? n : 1, sizeof *e))) {
        rc = lora_oom(err);
        goto fail;
    }
    ad->st = st;
    ad->r = c->r;
    ad->alpha = c->alpha;
    ad->use_rslora = c->use_rslora;
    ad->fan_in_fan_out = c->fan_in_fan_out;
    ad->file_bytes = lora_st_size(st);
    if ((rc = set_str(&ad->path, path ? path : lora_st_path(st), err)) ||
        (rc = set_str(&ad->base_model, c->base_model, err)) ||
        (rc = set_str(&ad->peft_version, c->peft_version, err)) ||
        (rc = set_str(&ad->task_type, c->task_type, err)) ||
        (rc = set_str(&ad->target_modules, c->target_modules_json, err)))
        goto fail;
    if (!(ad->config_json = malloc(config_len + 1))) {
        rc = lora_oom(err);
        goto fail;
    }
    memcpy(ad->config_json, config_json, config_len);
    ad->config_json[config_len] = '\0';
    for (size_t i = 0; i < n; i++) {
        e[i].t = lora_st_tensor(st, i);
        if ((rc = lora_adapter_classify_key(c, e[i].t->name, &e[i].kind, &e[i].name, err)))
            goto fail;
    }
    qsort(e, n, sizeof *e, cmp_entry);
    if ((rc = build(ad, c, e, n, err)))
        goto fail;
    if (ad->n_modules == 0 && ad->n_saved == 0) {
        rc = lora_seterr(err, LORA_EINPUT, "no LoRA tensors in the adapter");
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        free(e[i].name);
    free(e);
    lora_acfg_free(c);
    *out = ad;
    return LORA_OK;

fail:
    if (e)
        for (size_t i = 0; i < n; i++)
            free(e[i].name);
    free(e);
    lora_acfg_free(c);
    if (ad)
        lora_adapter_free(ad);
    else
        lora_st_close(st);
    if (path && rc != LORA_EIO)
        lora_err_prefix(err, "%s", path);
    return rc;
}

static char *join_path(const char *dir, const char *name, lora_error *err)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) {
        lora_oom(err);
        return NULL;
    }
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A folder without adapter_model.safetensors: say what it holds when
 * that is a model checkpoint or a GGUF file rather than an adapter. */
static int not_an_adapter(const char *path, lora_error *err)
{
    static const char *const what[][2] = {
        {"model.safetensors", "a model checkpoint (model.safetensors), not a PEFT adapter"},
        {"model.safetensors.index.json", "a sharded model checkpoint, not a PEFT adapter"},
        {"adapter_model.gguf", "a GGUF adapter (llama.cpp's format); lora-tools read PEFT "
                               "safetensors adapters"},
    };
    for (size_t i = 0; i < sizeof what / sizeof what[0]; i++) {
        char *p = join_path(path, what[i][0], err);
        if (!p)
            return LORA_EIO;
        int there = exists(p);
        free(p);
        if (there)
            return lora_seterr(err, LORA_EINPUT, "%s: no adapter_model.safetensors: the folder "
                               "holds %s", path, what[i][1]);
    }
    return lora_seterr(err, LORA_EINPUT, "%s: no adapter_model.safetensors", path);
}

int lora_adapter_open(const char *path, lora_adapter **out, lora_error *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return lora_seterr_path(err, errno, 0, path);
    if (!S_ISDIR(sb.st_mode))
        return lora_seterr(err, LORA_EINPUT,
                           "%s: not an adapter folder (expected a folder holding "
                           "adapter_config.json and adapter_model.safetensors)",
                           path);
    char *cfg = join_path(path, "adapter_config.json", err);
    char *model = cfg ? join_path(path, "adapter_model.safetensors", err) : NULL;
    char *bin = model ? join_path(path, "adapter_model.bin", err) : NULL;
    char *text = NULL;
    size_t len = 0;
    lora_st *st = NULL;
    int rc = LORA_EIO;
    if (!bin)
        goto done;
    if (!exists(model)) {
        if (exists(bin))
            rc = lora_seterr(err, LORA_EINPUT,
                             "%s: holds adapter_model.bin only, a Python pickle this tool does not "
                             "read: convert it to safetensors (e.g. load it with PEFT and "
                             "save_pretrained(..., safe_serialization=True))",
                             path);
        else
            rc = not_an_adapter(path, err);
        goto done;
    }
    if (!exists(cfg)) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: no adapter_config.json", path);
        goto done;
    }
    if ((rc = lora_read_file(cfg, CONFIG_MAX, &text, &len, err)))
        goto done;
    if ((rc = lora_st_open(model, &st, err)))
        goto done;
    rc = lora_adapter_open_parts(text, len, st, path, out, err);
done:
    free(text);
    free(cfg);
    free(model);
    free(bin);
    return rc;
}

void lora_adapter_free(lora_adapter *ad)
{
    if (!ad)
        return;
    for (size_t i = 0; i < ad->n_modules; i++) {
        free(ad->modules[i].name);
        free(ad->modules[i].target);
    }
    free(ad->modules);
    for (size_t i = 0; i < ad->n_saved; i++)
        free(ad->saved[i].target);
    free(ad->saved);
    lora_st_close(ad->st);
    if (ad->release)
        ad->release(ad->release_arg);
    free(ad->path);
    free(ad->base_model);
    free(ad->peft_version);
    free(ad->task_type);
    free(ad->target_modules);
    free(ad->config_json);
    free(ad);
}

/* ------------------------------------------------------------------ */
/* Binding to a base                                                   */
/* ------------------------------------------------------------------ */

const lora_tensor *lora_ckpt_find_alias(const lora_ckpt *ck, const char *name)
{
    static const char *const pre[] = {"transformer.", "model."};
    const lora_tensor *t = lora_ckpt_find(ck, name, NULL);
    if (t)
        return t;
    for (size_t i = 0; i < 2; i++) {
        size_t n = strlen(pre[i]);
        if (strncmp(name, pre[i], n) == 0 && (t = lora_ckpt_find(ck, name + n, NULL)))
            return t;
    }
    for (size_t i = 0; i < 2; i++) {
        size_t n = strlen(pre[i]) + strlen(name) + 1;
        char *s = malloc(n);
        if (!s)
            return NULL;
        snprintf(s, n, "%s%s", pre[i], name);
        t = lora_ckpt_find(ck, s, NULL);
        free(s);
        if (t)
            return t;
    }
    return NULL;
}

const lora_tensor *lora_tied_embedding(const lora_module *m, const lora_ckpt *base)
{
    static const char *const emb[] = {"wte.weight", "embed_tokens.weight",
                                      "model.embed_tokens.weight", "transformer.wte.weight"};
    const char *last = strrchr(m->name, '.');
    if (strcmp(last ? last + 1 : m->name, "lm_head") != 0 || m->embedding)
        return NULL;
    if (lora_ckpt_find_alias(base, m->target))
        return NULL;
    for (size_t i = 0; i < sizeof emb / sizeof emb[0]; i++) {
        const lora_tensor *t = lora_ckpt_find(base, emb[i], NULL);
        if (t && t->ndim == 2 && t->shape[0] == m->out && t->shape[1] == m->in)
            return t;
    }
    return NULL;
}

/* GPT-2's Conv1D modules (transformers' pytorch_utils.Conv1D users). */
static int conv1d_name(const char *module)
{
    const char *last = strrchr(module, '.');
    last = last ? last + 1 : module;
    return strcmp(last, "c_attn") == 0 || strcmp(last, "c_proj") == 0 ||
           strcmp(last, "c_fc") == 0 || strcmp(last, "q_attn") == 0;
}

int lora_module_resolve(const lora_module *m, const lora_ckpt *base, int fan_in_fan_out, int hint,
                        const lora_tensor **bt, int *transpose, lora_error *err)
{
    *bt = NULL;
    const lora_tensor *t = lora_ckpt_find_alias(base, m->target);
    const lora_tensor *tied = t ? NULL : lora_tied_embedding(m, base);
    if (tied)
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: the base has no tensor %s: its output head is tied to the "
                           "input embeddings (%s, tie_word_embeddings), and the update belongs to "
                           "the head alone, as PEFT applies it (lora-eval does so; lora-merge of "
                           "the model folder unties the head)",
                           m->name, m->target, tied->name);
    if (!t)
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: the base has no tensor %s (with or without a "
                           "\"transformer.\" or \"model.\" prefix)%s",
                           m->name, m->target,
                           lora_ckpt_is_gguf(base)
                               ? "; a GGUF base's tensors are matched through llama.cpp's names "
                                 "for llama, mistral, qwen2, gemma2, gemma3, phi3 and gpt2"
                               : "");
    if (t->dtype == LORA_DT_INVALID) /* a quantized GGUF tensor */
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: base tensor %s is %s: an update can be merged only into "
                           "F32, F16 or BF16 tensors (quantized tensors the adapter does not "
                           "change are copied as they are)",
                           m->name, t->name, lora_ckpt_type_name(base, t));
    char sb[96];
    shape_str(t, sb, sizeof sb);
    unsigned long long out = m->out, in = m->in;
    if (t->ndim == 2) {
        uint64_t a = t->shape[0], b = t->shape[1];
        int lin = a == m->out && b == m->in; /* nn.Linear [out, in] */
        int conv = a == m->in && b == m->out; /* Conv1D [in, out], embeddings */
        if (m->embedding && conv) {
            *transpose = 1;
            *bt = t;
            return LORA_OK;
        }
        if (!m->embedding && (lin || conv)) {
            if (lin && conv && lora_ckpt_is_gguf(base)) /* GGUF: every weight [out, in] */
                *transpose = 0;
            else if (lin && conv) /* square: the shape cannot tell */
                *transpose = conv1d_name(m->name) ? 1 : hint >= 0 ? hint : fan_in_fan_out;
            else
                *transpose = conv;
            *bt = t;
            return LORA_OK;
        }
    }
    if (m->embedding)
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: the adapter's embedding update is [%llu, %llu] "
                           "(num_embeddings, dim) but base tensor %s is %s",
                           m->name, in, out, t->name, sb);
    if (in == out)
        return lora_seterr(err, LORA_EINPUT,
                           "module %s: the adapter's update is [%llu, %llu] but base tensor %s is %s",
                           m->name, out, in, t->name, sb);
    return lora_seterr(err, LORA_EINPUT,
                       "module %s: the adapter's update is [%llu, %llu] (out, in; or [%llu, "
                       "%llu] for a Conv1D) but base tensor %s is %s",
                       m->name, out, in, in, out, t->name, sb);
}

static int bind(lora_adapter *ad, const lora_ckpt *base, int allow_tied, lora_error *err);

int lora_adapter_bind(lora_adapter *ad, const lora_ckpt *base, lora_error *err)
{
    return bind(ad, base, 0, err);
}

int lora_adapter_bind_tied(lora_adapter *ad, const lora_ckpt *base, lora_error *err)
{
    return bind(ad, base, 1, err);
}

static int bind(lora_adapter *ad, const lora_ckpt *base, int allow_tied, lora_error *err)
{
    for (size_t i = 0; i < ad->n_modules; i++) {
        lora_module *m = &ad->modules[i];
        m->tied_head = 0;
        if (m->r != m->config_r)
            return lora_seterr(err, LORA_EINPUT,
                               "module %s: its tensors have rank %llu but the config gives r=%llu",
                               m->name, (unsigned long long)m->r,
                               (unsigned long long)m->config_r);
    }
    /* Non-square modules first: their orientation is certain, and it
     * decides square modules whose names do not. */
    int seen[2] = {0, 0};
    for (int pass = 0; pass < 2; pass++) {
        int hint = seen[0] && !seen[1] ? 0 : seen[1] && !seen[0] ? 1 : -1;
        for (size_t i = 0; i < ad->n_modules; i++) {
            lora_module *m = &ad->modules[i];
            int square = m->in == m->out;
            if (square != pass)
                continue;
            const lora_tensor *t;
            int tr;
            if (allow_tied && lora_tied_embedding(m, base)) {
                m->tied_head = 1; /* Linear [V, E], like the embedding it reads */
                m->transpose = 0;
                continue;
            }
            int rc = lora_module_resolve(m, base, ad->fan_in_fan_out, hint, &t, &tr, err);
            if (rc)
                return rc;
            if (strcmp(m->target, t->name) != 0) {
                char *s = lora_strdup(t->name, err);
                if (!s)
                    return LORA_EIO;
                free(m->target);
                m->target = s;
            }
            m->transpose = tr;
            if (!square && !m->embedding)
                seen[tr] = 1;
        }
    }
    for (size_t i = 0; i < ad->n_saved; i++) {
        lora_saved *s = &ad->saved[i];
        const lora_tensor *t = lora_ckpt_find_alias(base, s->target);
        char sa[96], sb[96];
        shape_str(s->t, sa, sizeof sa);
        if (!t)
            return lora_seterr(err, LORA_EINPUT, LORA_MISSING_HEAD_FMT, s->target, sa, s->target);
        shape_str(t, sb, sizeof sb);
        if (t->dtype == LORA_DT_INVALID)
            return lora_seterr(err, LORA_EINPUT,
                               "saved tensor %s (modules_to_save) would replace base tensor %s, "
                               "which is %s: not supported", s->target, t->name,
                               lora_ckpt_type_name(base, t));
        int same = t->ndim == s->t->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == s->t->shape[d];
        if (!same)
            return lora_seterr(err, LORA_EINPUT,
                               "saved tensor %s (modules_to_save) is %s but base tensor %s is %s",
                               s->target, sa, t->name, sb);
        if (strcmp(s->target, t->name) != 0) {
            char *d = lora_strdup(t->name, err);
            if (!d)
                return LORA_EIO;
            free(s->target);
            s->target = d;
        }
    }
    return LORA_OK;
}

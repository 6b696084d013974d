/*
 * gguf_checkpoint.c - an unquantized GGUF model (llama.cpp) as a base
 * checkpoint for lora-merge and lora-unmerge, behind the interfaces
 * merge.c already uses for safetensors: the file is read as a lora_st
 * "view" and written through a lora_stw whose calls land here.
 *
 * Reading.  Tensors are shown under their Hugging Face names where
 * gguf_names.c knows the architecture (blk.0.attn_q.weight ->
 * model.layers.0.self_attn.q_proj.weight) and in PyTorch's dimension
 * order (GGUF's ne reversed), so adapters bind to them as to a
 * safetensors base.  Tensors of a type the tools cannot compute with
 * (Q8_0, Q4_K, ...) are shown with dtype LORA_DT_INVALID: copied byte
 * for byte when untouched, refused when adapted (adapter.c names the
 * type, lora_ckpt_type_name).  Only the keys lora_merges and lora_base
 * are shown as metadata: every other key is the writer's to copy, typed.
 *
 * llama.cpp's converter permutes the rows of the llama family's q and
 * k projections (LlamaModel.permute: rotate-half order to interleaved
 * pairs, per head).  A merge into such a tensor uses B (and DoRA's
 * magnitudes) with its rows permuted the same way (lora_gguf_merge_prepare),
 * so each element is
 * the very sum a merge into the safetensors base computes for the row
 * it came from: merging and then converting gives the same bytes as
 * converting and then merging.  The base identity (baseid.c) hashes
 * those tensors in Hugging Face row order, so a GGUF base of the same
 * dtype has the identity of the safetensors base it was made from.
 *
 * Writing.  The output keeps the input's version, every key/value in
 * order (lora_merges and lora_base replaced or appended at the end),
 * every tensor's ggml type, order and offset in the data section, and
 * the alignment; it is built as a temporary beside OUT and renamed
 * (gguf_write.c).  A dtype change (--dtype) is refused: GGUF outputs keep
 * each tensor's type, where llama-export-lora writes F16.
 */
#include "gguf_int.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* merge.c's metadata keys (lora-receipt(5)), as GGUF string values */
#define MERGES_KEY "lora_merges"
#define BASE_KEY "lora_base"
#define HEADS_UNKNOWN UINT64_MAX

typedef struct swap {
    lora_module *m;
    const lora_tensor *orig, *orig_mag;
    lora_tensor perm, perm_mag;   /* B and DoRA's magnitudes, rows permuted */
    void *data, *mag_data;
} swap;

typedef struct gview {
    lora_gguf *g;
    size_t n;
    char **names;             /* shown names, file order */
    uint64_t *heads;          /* rows permuted per this many heads (q/k), else 0;
                                 HEADS_UNKNOWN: permuted, head count missing */
    size_t *by_name;          /* tensor indices sorted by shown name */
    const lora_tensor *t;     /* the view's tensors (owned by the lora_st) */
    swap **swaps;             /* each apart: modules point into them */
    size_t nswaps;
} gview;

static void gview_free(void *p)
{
    gview *v = p;
    if (!v)
        return;
    for (size_t i = 0; i < v->nswaps; i++) { /* the adapters outlive the base */
        v->swaps[i]->m->B = v->swaps[i]->orig;
        if (v->swaps[i]->orig_mag)
            v->swaps[i]->m->magnitude = v->swaps[i]->orig_mag;
        free(v->swaps[i]->data);
        free(v->swaps[i]->mag_data);
        free(v->swaps[i]);
    }
    free(v->swaps);
    for (size_t i = 0; i < v->n; i++)
        free(v->names[i]);
    free(v->names);
    free(v->heads);
    free(v->by_name);
    lora_gguf_close(v->g);
    free(v);
}

static const gview *view_of(const lora_st *st)
{
    return lora_st_view_owner(st, gview_free);
}

int lora_st_is_gguf(const lora_st *st)
{
    return view_of(st) != NULL;
}

int lora_ckpt_is_gguf(const lora_ckpt *ck)
{
    return lora_ckpt_shard_count(ck) == 1 && lora_st_is_gguf(lora_ckpt_shard(ck, 0));
}

static gview *ckpt_view(const lora_ckpt *ck, const lora_tensor *t, size_t *idx)
{
    if (!lora_ckpt_is_gguf(ck))
        return NULL;
    gview *v = (gview *)view_of(lora_ckpt_shard(ck, 0));
    if (!t || t < v->t || t >= v->t + v->n)
        return NULL;
    *idx = (size_t)(t - v->t);
    return v;
}

const char *lora_ckpt_type_name(const lora_ckpt *ck, const lora_tensor *t)
{
    size_t i;
    gview *v = ckpt_view(ck, t, &i);
    const char *n = v ? lora_ggml_type_name(lora_gguf_tensor_at(v->g, i)->type)
                      : lora_dtype_name(t->dtype);
    return n ? n : "of an unknown type";
}

uint64_t lora_ckpt_permuted_heads(const lora_ckpt *ck, const lora_tensor *t)
{
    size_t i;
    gview *v = ckpt_view(ck, t, &i);
    return v && v->heads[i] != HEADS_UNKNOWN ? v->heads[i] : 0;
}

/* The llama family's norms, which gguf_names.c (LoRA targets only) does
 * not name: what the forward (model_weights.c) looks for. */
static int llama_norm(const char *g, char *out, size_t cap)
{
    unsigned long b;
    char rest[64];
    if (strcmp(g, "output_norm.weight") == 0)
        return snprintf(out, cap, "model.norm.weight") < (int)cap ? 0 : -1;
    if (sscanf(g, "blk.%lu.%63s", &b, rest) != 2 || b > 100000)
        return -1;
    const char *hf = strcmp(rest, "attn_norm.weight") == 0 ? "input_layernorm"
                   : strcmp(rest, "ffn_norm.weight") == 0  ? "post_attention_layernorm"
                                                            : NULL;
    return hf && snprintf(out, cap, "model.layers.%lu.%s.weight", b, hf) < (int)cap ? 0 : -1;
}

/* The name a tensor is shown under, and the heads its rows are permuted by. */
static int show_name(gview *v, const lora_gguf_arch *arch, int known, size_t i, double h,
                     double kvh, lora_error *err)
{
    const lora_gguf_tensor *gt = lora_gguf_tensor_at(v->g, i);
    char hf[320];
    const char *name = gt->name;
    if (known && lora_gguf_name_to_hf(arch, gt->name, hf, sizeof hf - 8) == 0) {
        strcat(hf, ".weight");
        name = hf;
    } else if (known && arch->permute_qk && llama_norm(gt->name, hf, sizeof hf) == 0) {
        name = hf;
    }
    if (!(v->names[i] = lora_strdup(name, err)))
        return LORA_EIO;
    if (known && arch->permute_qk && strncmp(gt->name, "blk.", 4) == 0) {
        const char *dot = strchr(gt->name + 4, '.');
        int q = dot && strcmp(dot, ".attn_q.weight") == 0;
        int k = dot && strcmp(dot, ".attn_k.weight") == 0;
        if ((q || k) && (h < 1 || kvh < 1 || h > 1 << 20 || kvh > 1 << 20))
            v->heads[i] = HEADS_UNKNOWN;
        else if (q || k)
            v->heads[i] = (uint64_t)(q ? h : kvh);
    }
    return LORA_OK;
}

typedef struct named {
    const char *name;
    size_t i;
} named;

static int cmp_named(const void *a, const void *b)
{
    return strcmp(((const named *)a)->name, ((const named *)b)->name);
}

/* v->by_name: tensor indices in name order (no global state: checkpoints
 * may be opened from several threads). */
static int sort_names(gview *v, lora_error *err)
{
    named *tmp = malloc((v->n ? v->n : 1) * sizeof *tmp);
    if (!tmp)
        return lora_oom(err);
    for (size_t i = 0; i < v->n; i++)
        tmp[i] = (named){v->names[i], i};
    qsort(tmp, v->n, sizeof *tmp, cmp_named);
    for (size_t i = 0; i < v->n; i++)
        v->by_name[i] = tmp[i].i;
    free(tmp);
    return LORA_OK;
}

static int build_view(gview *v, lora_tensor **pt, const char ***mk, const char ***mv,
                      size_t *nmeta, lora_error *err)
{
    lora_gguf *g = v->g;
    lora_gguf_arch arch;
    const char *an = lora_gguf_get_str(g, "general.architecture");
    const char *gt = lora_gguf_get_str(g, "general.type");
    if (gt && strcmp(gt, "model") != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: a GGUF %s (general.type), not a model: a base "
                           "must be a model", lora_gguf_path(g), gt);
    double split = 1;
    if (lora_gguf_get_num(g, "split.count", &split) == 0 && split > 1)
        return lora_seterr(err, LORA_EINPUT, "%s: one file of a split GGUF model (split.count "
                           "%.0f): join it first (llama-gguf-split --merge)", lora_gguf_path(g),
                           split);
    int known = an && lora_gguf_arch_from_name(an, &arch, NULL) == LORA_OK;
    double h = 0, kvh = 0;
    char key[96];
    if (known) {
        snprintf(key, sizeof key, "%s.attention.head_count", arch.name);
        lora_gguf_get_num(g, key, &h);
        snprintf(key, sizeof key, "%s.attention.head_count_kv", arch.name);
        if (lora_gguf_get_num(g, key, &kvh) != 0)
            kvh = h;
    }
    v->n = lora_gguf_tensor_count(g);
    size_t n = v->n ? v->n : 1;
    v->names = calloc(n, sizeof *v->names);
    v->heads = calloc(n, sizeof *v->heads);
    v->by_name = calloc(n, sizeof *v->by_name);
    lora_tensor *t = calloc(n, sizeof *t);
    *mk = calloc(2, sizeof **mk);
    *mv = calloc(2, sizeof **mv);
    *pt = t;
    if (!v->names || !v->heads || !v->by_name || !t || !*mk || !*mv)
        return lora_oom(err);
    for (size_t i = 0; i < v->n; i++) {
        const lora_gguf_tensor *x = lora_gguf_tensor_at(g, i);
        int rc = show_name(v, &arch, known, i, h, kvh, err);
        if (rc)
            return rc;
        t[i].name = v->names[i];
        t[i].dtype = x->dtype;
        t[i].ndim = x->ndim;
        for (int d = 0; d < x->ndim; d++)
            t[i].shape[d] = x->ne[x->ndim - 1 - d];
        t[i].numel = x->numel;
        t[i].nbytes = x->nbytes;
        t[i].offset = x->offset;
        t[i].data = x->data;
    }
    int rc = sort_names(v, err);
    if (rc)
        return rc;
    v->t = t;
    static const char *const keys[2] = {MERGES_KEY, BASE_KEY};
    for (int k = 0; k < 2; k++) {
        const char *s = lora_gguf_get_str(g, keys[k]);
        if (s) {
            (*mk)[*nmeta] = keys[k];
            (*mv)[(*nmeta)++] = s;
        }
    }
    return LORA_OK;
}

int lora_gguf_st_from(lora_gguf *gg, int fd, lora_st **out, lora_error *err)
{
    *out = NULL;
    gview *v = calloc(1, sizeof *v);
    if (!v) {
        lora_gguf_close(gg);
        if (fd >= 0)
            close(fd);
        return lora_oom(err);
    }
    v->g = gg;
    lora_tensor *t = NULL;
    const char **mk = NULL, **mv = NULL;
    size_t nmeta = 0;
    int rc = build_view(v, &t, &mk, &mv, &nmeta, err);
    if (rc) {
        free(t);
        free(mk);
        free(mv);
        gview_free(v);
        if (fd >= 0)
            close(fd);
        return rc;
    }
    /* the "header" merge.c hashes and a receipt keeps: every byte before
     * the tensor data (magic, version, counts, key/values, tensor infos,
     * padding), less the 8 bytes lora_st_header_size leaves out */
    return lora_st_view(lora_gguf_path(gg), fd, NULL, lora_gguf_size(gg),
                        lora_gguf_data_offset(gg) - 8, t, v->n, mk, mv, nmeta, v, gview_free,
                        out, err);
}

int lora_gguf_st_open(const char *path, lora_st **out, lora_error *err)
{
    *out = NULL;
    lora_gguf *g;
    int rc = lora_gguf_open(path, &g, err);
    if (rc)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s", path);
        lora_gguf_close(g);
        return rc;
    }
    return lora_gguf_st_from(g, fd, out, err);
}

static long find_index(const gview *v, const char *name)
{
    size_t lo = 0, hi = v->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(v->names[v->by_name[mid]], name);
        if (c == 0)
            return (long)v->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* ---- before a merge: B of permuted tensors ------------------------------ */

static int permute_b(gview *v, lora_module *m, uint64_t heads, const char *tname,
                     lora_error *err)
{
    for (size_t i = 0; i < v->nswaps; i++)
        if (v->swaps[i]->m == m)
            return LORA_OK; /* the same adapter undone and merged */
    if (m->transpose || m->embedding || m->B->ndim != 2 || m->B->shape[0] != m->out)
        return lora_seterr(err, LORA_EINPUT, "module %s: base tensor %s has its rows permuted "
                           "by llama.cpp's converter, which this update does not fit", m->name,
                           tname);
    swap **sw = realloc(v->swaps, (v->nswaps + 1) * sizeof *sw);
    if (!sw)
        return lora_oom(err);
    v->swaps = sw;
    swap *s = calloc(1, sizeof *s);
    if (!s)
        return lora_oom(err);
    size_t es = lora_dtype_bits(m->B->dtype) / 8;
    if (!es || !(s->data = malloc(m->B->nbytes ? (size_t)m->B->nbytes : 1))) {
        free(s);
        return es ? lora_oom(err) : lora_seterr(err, LORA_EINPUT, "module %s: B of dtype %s",
                                                 m->name, lora_dtype_name(m->B->dtype));
    }
    int rc = lora_gguf_permute_rows(s->data, m->B->data, m->out, m->r, es, heads, 0, err);
    const lora_tensor *mg = m->magnitude; /* DoRA: one magnitude per output row */
    size_t ms = mg ? lora_dtype_bits(mg->dtype) / 8 : 0;
    if (!rc && mg && (mg->numel != m->out || !ms))
        rc = lora_seterr(err, LORA_EINPUT, "module %s: magnitude vector of %llu values for %llu "
                         "rows", m->name, (unsigned long long)mg->numel,
                         (unsigned long long)m->out);
    if (!rc && mg && !(s->mag_data = malloc((size_t)mg->nbytes)))
        rc = lora_oom(err);
    if (!rc && mg)
        rc = lora_gguf_permute_rows(s->mag_data, mg->data, m->out, 1, ms, heads, 0, err);
    if (rc) {
        free(s->data);
        free(s->mag_data);
        free(s);
        return lora_err_prefix(err, "module %s: base tensor %s", m->name, tname);
    }
    if (mg) {
        s->orig_mag = mg;
        s->perm_mag = *mg;
        s->perm_mag.data = s->mag_data;
        m->magnitude = &s->perm_mag;
    }
    s->m = m;
    s->orig = m->B;
    s->perm = *m->B;
    s->perm.data = s->data;
    m->B = &s->perm;
    v->swaps[v->nswaps++] = s;
    return LORA_OK;
}

int lora_gguf_merge_prepare(const lora_ckpt *ck, lora_merge_adapter *undo, size_t nundo,
                            lora_merge_adapter *add, size_t nadd, lora_error *err)
{
    if (!lora_ckpt_is_gguf(ck))
        return LORA_OK;
    gview *v = (gview *)view_of(lora_ckpt_shard(ck, 0));
    lora_merge_adapter *sets[2] = {undo, add};
    size_t ns[2] = {nundo, nadd};
    for (int k = 0; k < 2; k++)
        for (size_t a = 0; a < ns[k]; a++) {
            lora_adapter *ad = sets[k][a].ad;
            for (size_t i = 0; i < ad->n_modules; i++) {
                lora_module *m = &ad->modules[i];
                long ti = find_index(v, m->target);
                if (ti < 0)
                    continue;
                if (v->heads[ti] == HEADS_UNKNOWN)
                    return lora_seterr(err, LORA_EINPUT,
                                       "%s: %s: the GGUF base %s has no usable "
                                       "llama.attention.head_count[_kv], needed to permute the "
                                       "rows as llama.cpp's converter did",
                                       sets[k][a].spec, m->name, lora_gguf_path(v->g));
                int rc = v->heads[ti] ? permute_b(v, m, v->heads[ti], m->target, err) : 0;
                if (rc)
                    return lora_err_prefix(err, "%s", sets[k][a].spec);
            }
            for (size_t i = 0; i < ad->n_saved; i++) {
                long ti = find_index(v, ad->saved[i].target);
                if (ti >= 0 && v->heads[ti])
                    return lora_seterr(err, LORA_EINPUT,
                                       "%s: modules_to_save replaces %s, whose rows llama.cpp's "
                                       "converter permutes: not supported for a GGUF base",
                                       sets[k][a].spec, ad->saved[i].target);
            }
        }
    return LORA_OK;
}

/* ---- writing ----------------------------------------------------------- */

struct lora_gstw {
    lora_ggw *w;
    const gview *v;
    char *mkey[4], *mval[4];
    size_t nmeta;
    unsigned char *layout;    /* a verbatim header to restore (unmerge) */
    size_t layout_len;
    int started;
};

void lora_gstw_free(lora_gstw *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->nmeta; i++) {
        free(g->mkey[i]);
        free(g->mval[i]);
    }
    free(g->layout);
    free(g);
}

void lora_gstw_abort(lora_gstw *g)
{
    if (!g)
        return;
    lora_ggw_abort(g->w);
    g->w = NULL;
    lora_gstw_free(g);
}

int lora_stw_new_for(const char *path, const lora_st *in, lora_stw **out, lora_error *err)
{
    const gview *v = in ? view_of(in) : NULL;
    if (!v)
        return lora_stw_new(path, out, err);
    *out = NULL;
    lora_gstw *g = calloc(1, sizeof *g);
    if (!g)
        return lora_oom(err);
    g->v = v;
    int rc = lora_ggw_new(path, 0, &g->w, err);
    if (rc) {
        free(g);
        return rc;
    }
    lora_ggw_set_version(g->w, lora_gguf_version(v->g));
    uint64_t data = lora_gguf_data_offset(v->g);
    for (size_t i = 0; i < v->n && !rc; i++) {
        const lora_gguf_tensor *t = lora_gguf_tensor_at(v->g, i);
        rc = lora_ggw_declare_at(g->w, t->name, t->type, t->ndim, t->ne, t->offset - data, err);
    }
    if (rc) {
        lora_gstw_abort(g);
        return rc;
    }
    return lora_stw_new_gguf(g, out, err);
}

int lora_gstw_set_metadata(lora_gstw *g, const char *key, const char *value, lora_error *err)
{
    if (g->started)
        return lora_seterr(err, LORA_EUSAGE, "metadata set after the header was written");
    for (size_t i = 0; i < g->nmeta; i++)
        if (strcmp(g->mkey[i], key) == 0) {
            char *s = lora_strdup(value, err);
            if (!s)
                return LORA_EIO;
            free(g->mval[i]);
            g->mval[i] = s;
            return LORA_OK;
        }
    if (g->nmeta == sizeof g->mkey / sizeof g->mkey[0])
        return lora_seterr(err, LORA_EUSAGE, "%s: a GGUF output takes its keys from its input",
                           key);
    if (!(g->mkey[g->nmeta] = lora_strdup(key, err)))
        return LORA_EIO;
    if (!(g->mval[g->nmeta] = lora_strdup(value, err))) {
        free(g->mkey[g->nmeta]);
        return LORA_EIO;
    }
    g->nmeta++;
    return LORA_OK;
}

int lora_gstw_declare(lora_gstw *g, const char *name, lora_dtype dt, int ndim,
                      const uint64_t *shape, lora_error *err)
{
    long i = find_index(g->v, name);
    if (i < 0)
        return lora_seterr(err, LORA_EINPUT, "%s: the GGUF output can hold only the input's "
                           "tensors", name);
    const lora_tensor *t = &g->v->t[i];
    if (dt != t->dtype)
        return lora_seterr(err, LORA_EUSAGE, "%s: is %s in the GGUF base and cannot be written "
                           "as %s: a GGUF output keeps each tensor's type (--dtype is for "
                           "safetensors outputs); nothing written", name,
                           lora_ggml_type_name(lora_gguf_tensor_at(g->v->g, (size_t)i)->type),
                           lora_dtype_name(dt) ? lora_dtype_name(dt) : "?");
    if (ndim != t->ndim || memcmp(shape, t->shape, (size_t)ndim * sizeof *shape))
        return lora_seterr(err, LORA_EUSAGE, "%s: declared with another shape", name);
    return LORA_OK;
}

int lora_gstw_set_layout(lora_gstw *g, const void *hdr, size_t len, int verbatim,
                         lora_error *err)
{
    if (!verbatim) /* the input's layout is always kept */
        return LORA_OK;
    unsigned char *c = malloc(len ? len : 1);
    if (!c)
        return lora_oom(err);
    memcpy(c, hdr, len);
    free(g->layout);
    g->layout = c;
    g->layout_len = len;
    return LORA_OK;
}

static int is_set(const lora_gstw *g, const char *key)
{
    for (size_t i = 0; i < g->nmeta; i++)
        if (strcmp(g->mkey[i], key) == 0)
            return 1;
    return 0;
}

int lora_gstw_start(lora_gstw *g, lora_error *err)
{
    if (g->started)
        return LORA_OK;
    int rc = LORA_OK;
    const lora_gguf *in = g->v->g;
    for (size_t i = 0; i < lora_gguf_kv_count(in) && !rc; i++) {
        const lora_gguf_kv *kv = lora_gguf_kv_at(in, i);
        if (strcmp(kv->key, MERGES_KEY) && strcmp(kv->key, BASE_KEY) && !is_set(g, kv->key))
            rc = lora_ggw_kv_copy(g->w, in, kv, err);
    }
    for (size_t i = 0; i < g->nmeta && !rc; i++)
        rc = lora_ggw_kv_str(g->w, g->mkey[i], g->mval[i], err);
    if (!rc)
        rc = lora_ggw_start(g->w, err);
    if (rc)
        return rc;
    g->started = 1;
    size_t hl;
    const unsigned char *h = lora_ggw_header(g->w, &hl);
    if (g->layout && (hl != g->layout_len + 8 || memcmp(h + 8, g->layout, g->layout_len)))
        return lora_seterr(err, LORA_ECHECK,
                           "the GGUF header written is not the base's header the receipt "
                           "keeps (a base whose layout GGUF writers do not produce?): cannot "
                           "restore it byte for byte; nothing written");
    return LORA_OK;
}

const unsigned char *lora_gstw_header(const lora_gstw *g, size_t *len)
{
    return lora_ggw_header(g->w, len);
}

int lora_gstw_patch_metadata(lora_gstw *g, const char *key, const char *value, lora_error *err)
{
    return lora_ggw_patch_str(g->w, key, value, err);
}

int lora_gstw_write(lora_gstw *g, const char *name, uint64_t off, const void *buf, size_t len,
                    lora_error *err)
{
    long i = find_index(g->v, name);
    if (i < 0)
        return lora_seterr(err, LORA_EUSAGE, "no tensor \"%s\" in the GGUF output", name);
    return lora_ggw_write_at(g->w, (size_t)i, off, buf, len, err);
}

int lora_gstw_copy(lora_gstw *g, const char *name, int src_fd, uint64_t src_off,
                   lora_error *err)
{
    long i = find_index(g->v, name);
    if (i < 0)
        return lora_seterr(err, LORA_EUSAGE, "no tensor \"%s\" in the GGUF output", name);
    return lora_ggw_copy_at(g->w, (size_t)i, src_fd, src_off, err);
}

int lora_gstw_commit(lora_gstw *g, lora_error *err)
{
    int rc = lora_gstw_start(g, err);
    if (rc) {
        lora_gstw_abort(g);
        return rc;
    }
    rc = lora_ggw_commit(g->w, err); /* frees the writer whatever the result */
    g->w = NULL;
    lora_gstw_free(g);
    return rc;
}

/* ---- evaluation (model.c, eval.c) ------------------------------------- */

int lora_ckpt_hf_rows(const lora_ckpt *ck, const lora_tensor *t, void **out, lora_error *err)
{
    *out = NULL;
    uint64_t heads = lora_ckpt_permuted_heads(ck, t);
    if (!heads)
        return LORA_OK;
    size_t es = lora_dtype_bits(t->dtype) / 8;
    void *b = malloc(t->nbytes ? (size_t)t->nbytes : 1);
    if (!b)
        return lora_oom(err);
    int rc = lora_gguf_permute_rows(b, t->data, t->shape[0], t->shape[1], es, heads, 1, err);
    if (rc) {
        free(b);
        return lora_err_prefix(err, "%s", t->name);
    }
    *out = b;
    return LORA_OK;
}

/* A config.json for the llama family from the GGUF key/values
 * (llama.cpp's names, as convert_hf_to_gguf.py writes them). */
int lora_gguf_model_config(const lora_ckpt *ck, char **json, size_t *len, lora_error *err)
{
    *json = NULL;
    const gview *v = lora_ckpt_is_gguf(ck) ? view_of(lora_ckpt_shard(ck, 0)) : NULL;
    const char *path = v ? lora_gguf_path(v->g) : "?";
    const char *an = v ? lora_gguf_get_str(v->g, "general.architecture") : NULL;
    if (!an || strcmp(an, "llama") != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: a GGUF model of architecture %s: lora-eval "
                           "evaluates GGUF models of the llama family only; evaluate the "
                           "checkpoint it was converted from", path, an ? an : "(none)");
    static const char *const need[][2] = {
        {"llama.embedding_length", "hidden_size"},
        {"llama.feed_forward_length", "intermediate_size"},
        {"llama.block_count", "num_hidden_layers"},
        {"llama.attention.head_count", "num_attention_heads"},
    };
    double val[4], kv, eps = 1e-6, theta = 10000, ctx = 2048, rdim = 0, kl = 0;
    for (int i = 0; i < 4; i++)
        if (lora_gguf_get_num(v->g, need[i][0], &val[i]) != 0)
            return lora_seterr(err, LORA_EINPUT, "%s: %s is missing: no config for lora-eval",
                               path, need[i][0]);
    if (lora_gguf_get_num(v->g, "llama.attention.head_count_kv", &kv) != 0)
        kv = val[3];
    lora_gguf_get_num(v->g, "llama.attention.layer_norm_rms_epsilon", &eps);
    lora_gguf_get_num(v->g, "llama.rope.freq_base", &theta);
    lora_gguf_get_num(v->g, "llama.context_length", &ctx);
    const char *scaling = lora_gguf_get_str(v->g, "llama.rope.scaling.type");
    if (scaling && strcmp(scaling, "none") != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: llama.rope.scaling.type %s: lora-eval does "
                           "not read GGUF rope scaling; evaluate the checkpoint it was "
                           "converted from", path, scaling);
    double hd = val[0] / (val[3] ? val[3] : 1);
    if (lora_gguf_get_num(v->g, "llama.attention.key_length", &kl) == 0)
        hd = kl;
    if (lora_gguf_get_num(v->g, "llama.rope.dimension_count", &rdim) == 0 && rdim != hd)
        return lora_seterr(err, LORA_EINPUT, "%s: llama.rope.dimension_count %g is not the head "
                           "size %g: partial rotary is not read from GGUF", path, rdim, hd);
    const lora_gguf_tensor *emb = lora_gguf_find_tensor(v->g, "token_embd.weight");
    if (!emb || emb->ndim != 2)
        return lora_seterr(err, LORA_EINPUT, "%s: no token_embd.weight", path);
    int tied = lora_gguf_find_tensor(v->g, "output.weight") == NULL;
    char *s = NULL;
    int n = asprintf(&s,
                     "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], "
                     "\"vocab_size\": %llu, \"hidden_size\": %.0f, \"intermediate_size\": %.0f, "
                     "\"num_hidden_layers\": %.0f, \"num_attention_heads\": %.0f, "
                     "\"num_key_value_heads\": %.0f, \"head_dim\": %.0f, "
                     "\"max_position_embeddings\": %.0f, \"rms_norm_eps\": %.17g, "
                     "\"rope_theta\": %.17g, \"tie_word_embeddings\": %s}",
                     (unsigned long long)emb->ne[1], val[0], val[1], val[2], val[3], kv, hd, ctx,
                     eps, theta, tied ? "true" : "false");
    if (n < 0)
        return lora_oom(err);
    *json = s;
    *len = (size_t)n;
    return LORA_OK;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

int lora_gguf_check_output(const lora_ckpt *ck, const char *out, lora_error *err)
{
    int gguf = lora_ckpt_is_gguf(ck);
    if (gguf && !ends_with(out, ".gguf"))
        return lora_seterr(err, LORA_EUSAGE, "%s: the input is a GGUF model, and so is the "
                           "output: name it .gguf", out);
    if (!gguf && ends_with(out, ".gguf"))
        return lora_seterr(err, LORA_EUSAGE, "%s: the input is safetensors, and so is the "
                           "output: a .gguf output needs a GGUF base", out);
    return LORA_OK;
}

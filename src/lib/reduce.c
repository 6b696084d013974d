/*
 * reduce.c - lora_reduce: a new PEFT adapter whose modules are the
 * truncated SVDs of one adapter's modules, or of a weighted combination
 * of several adapters, computed from the factors only (svd.c), written
 * as a complete folder that appears under its name all at once.
 *
 * A combination is first the exact concatenation
 *   B = [w_1 s_1 B_1 | w_2 s_2 B_2 | ...],  A = [A_1; A_2; ...]
 * so that B·A = Σ w_i s_i B_i A_i with no cross terms (PEFT's "linear"
 * combination of A and B separately gets this wrong, peers.md §1.6).
 * Inputs that do not adapt a module contribute nothing to it.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void lora_reduce_report_free(lora_reduce_report *rep)
{
    if (!rep)
        return;
    for (size_t i = 0; i < rep->n_modules; i++)
        free(rep->modules[i].name);
    free(rep->modules);
    memset(rep, 0, sizeof *rep);
}

/* One output module, held encoded in the output dtypes until the
 * safetensors writer has all the shapes. */
typedef struct outmod {
    const char *name;          /* points into an input's module */
    int embedding;
    uint64_t out, in, k;
    lora_dtype dtA, dtB;
    void *A, *B;               /* encoded bytes */
} outmod;

static const lora_module *find_module(const lora_adapter *ad, const char *name)
{
    size_t lo = 0, hi = ad->n_modules;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ad->modules[mid].name, name);
        if (c == 0)
            return &ad->modules[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static lora_dtype out_dtype(lora_dtype dt)
{
    return lora_dtype_writable(dt) ? dt : LORA_DT_F32;
}

/* Encode n doubles into a fresh buffer of dtype dt. */
static int encode(lora_dtype dt, const double *src, uint64_t n, void **out, lora_error *err)
{
    uint64_t bytes;
    if (!lora_mul_ok(n, lora_dtype_bits(dt) / 8, &bytes) || bytes > SIZE_MAX)
        return lora_seterr(err, LORA_EINPUT, "tensor too large");
    *out = malloc(bytes ? (size_t)bytes : 1);
    if (!*out)
        return lora_oom(err);
    if (lora_encode_f64(dt, src, *out, (size_t)n) != LORA_OK)
        return lora_seterr(err, LORA_EINPUT, "cannot encode %s", lora_dtype_name(dt));
    return LORA_OK;
}

/* Grow a reusable work buffer to at least n doubles (fresh memory is
 * slow here: keep the largest one for every module). */
static int reserve(double **buf, uint64_t *cap, uint64_t a, uint64_t b, lora_error *err)
{
    uint64_t n, bytes;
    if (!lora_mul_ok(a, b, &n) || !lora_mul_ok(n ? n : 1, sizeof(double), &bytes) ||
        bytes > SIZE_MAX)
        return lora_seterr(err, LORA_EINPUT, "module too large");
    if (n <= *cap && *buf)
        return LORA_OK;
    double *p = realloc(*buf, (size_t)bytes);
    if (!p)
        return lora_oom(err);
    *buf = p;
    *cap = n;
    return LORA_OK;
}

/* PEFT's key for a module's factor. */
static void key_name(char *dst, size_t cap, const outmod *m, int isA)
{
    if (m->embedding)
        snprintf(dst, cap, "base_model.model.%s.lora_embedding_%c", m->name, isA ? 'A' : 'B');
    else
        snprintf(dst, cap, "base_model.model.%s.lora_%c.weight", m->name, isA ? 'A' : 'B');
}

/* The most common rank (ties: the smaller). */
static uint64_t common_rank(const outmod *mods, size_t n)
{
    uint64_t best = 0;
    size_t best_count = 0;
    for (size_t i = 0; i < n; i++) {
        size_t c = 0;
        for (size_t j = 0; j < n; j++)
            c += mods[j].k == mods[i].k;
        if (c > best_count || (c == best_count && mods[i].k < best)) {
            best = mods[i].k;
            best_count = c;
        }
    }
    return best;
}

/* adapter_config.json text.  For a single input whose folder still has
 * its config, that config is the starting point (it keeps
 * layers_to_transform, modules_to_save, exclude_modules, ...);
 * otherwise a fresh one whose target_modules lists every module by its
 * full name, which PEFT matches exactly. */
static int make_config(const lora_weighted *in, size_t n, const outmod *mods, size_t nm,
                       char **text, lora_error *err)
{
    json_t *cfg = NULL;
    if (n == 1 && in[0].ad->path) {
        char p[4096];
        struct stat sb;
        if (snprintf(p, sizeof p, "%s/adapter_config.json", in[0].ad->path) < (int)sizeof p &&
            stat(in[0].ad->path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            json_error_t je;
            cfg = json_load_file(p, JSON_REJECT_DUPLICATES, &je);
            if (cfg && !json_is_object(cfg)) {
                json_decref(cfg);
                cfg = NULL;
            }
        }
    }
    if (!cfg) {
        cfg = json_object();
        if (!cfg)
            return lora_oom(err);
        json_t *tm = json_array();
        for (size_t i = 0; i < nm; i++)
            json_array_append_new(tm, json_string(mods[i].name));
        json_object_set_new(cfg, "target_modules", tm);
        const lora_adapter *a0 = in[0].ad;
        json_object_set_new(cfg, "base_model_name_or_path",
                            a0->base_model ? json_string(a0->base_model) : json_null());
        json_object_set_new(cfg, "task_type", a0->task_type ? json_string(a0->task_type) : json_null());
        json_object_set_new(cfg, "bias", json_string("none"));
        json_object_set_new(cfg, "lora_dropout", json_real(0.0));
        json_object_set_new(cfg, "inference_mode", json_true());
        json_object_set_new(cfg, "modules_to_save", json_null());
    }
    uint64_t r = common_rank(mods, nm);
    json_t *rp = json_object(), *ap = json_object();
    for (size_t i = 0; i < nm; i++)
        if (mods[i].k != r) {
            json_object_set_new(rp, mods[i].name, json_integer((json_int_t)mods[i].k));
            json_object_set_new(ap, mods[i].name, json_integer((json_int_t)mods[i].k));
        }
    json_object_set_new(cfg, "peft_type", json_string("LORA"));
    json_object_set_new(cfg, "r", json_integer((json_int_t)r));
    json_object_set_new(cfg, "lora_alpha", json_integer((json_int_t)r));
    json_object_set_new(cfg, "rank_pattern", rp);
    json_object_set_new(cfg, "alpha_pattern", ap);
    json_object_set_new(cfg, "use_rslora", json_false());
    json_object_set_new(cfg, "use_dora", json_false());
    json_object_set_new(cfg, "fan_in_fan_out", json_boolean(in[0].ad->fan_in_fan_out));
    *text = lora_json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(cfg);
    if (!*text)
        return lora_oom(err);
    return LORA_OK;
}

/* Remove a folder we made (top-level regular files only, then the folder). */
static void remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            unlinkat(dirfd(d), de->d_name, 0);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Build the folder as OUT.tmp-XXXXXX beside OUT, then rename it. */
static int write_folder(const char *out_dir, int overwrite, const lora_weighted *in, size_t n,
                        const outmod *mods, size_t nm, lora_error *err)
{
    size_t len = strlen(out_dir);
    char *tmp = malloc(len + 16);
    if (!tmp)
        return lora_oom(err);
    while (len > 1 && out_dir[len - 1] == '/')
        len--;
    memcpy(tmp, out_dir, len);
    strcpy(tmp + len, ".tmp-XXXXXX");
    if (!mkdtemp(tmp)) {
        int e = errno;
        free(tmp);
        return lora_seterr_errno(err, LORA_EIO, e, "%s: cannot create a temporary folder", out_dir);
    }
    chmod(tmp, 0755); /* mkdtemp makes it 0700; an adapter folder is for sharing */
    lora_tmp_track(tmp, 1);
    int rc = LORA_OK;
    char *cfg = NULL, path[4096], key[4096];
    lora_stw *w = NULL;
    if ((rc = make_config(in, n, mods, nm, &cfg, err)) != LORA_OK)
        goto fail;
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    if ((rc = lora_write_file_atomic(path, cfg, strlen(cfg), 0644, err)) != LORA_OK)
        goto fail;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    if ((rc = lora_stw_new(path, &w, err)) != LORA_OK)
        goto fail;
    for (size_t i = 0; i < nm && rc == LORA_OK; i++) {
        uint64_t sa[2] = {mods[i].k, mods[i].in}, sb[2] = {mods[i].out, mods[i].k};
        key_name(key, sizeof key, &mods[i], 1);
        rc = lora_stw_declare(w, key, mods[i].dtA, 2, sa, err);
        key_name(key, sizeof key, &mods[i], 0);
        if (rc == LORA_OK)
            rc = lora_stw_declare(w, key, mods[i].dtB, 2, sb, err);
    }
    const lora_adapter *a0 = in[0].ad;
    if (n == 1)
        for (size_t i = 0; i < a0->n_saved && rc == LORA_OK; i++) {
            const lora_tensor *t = a0->saved[i].t;
            rc = lora_stw_declare(w, t->name, t->dtype, t->ndim, t->shape, err);
        }
    if (rc == LORA_OK)
        rc = lora_stw_start(w, err);
    for (size_t i = 0; i < nm && rc == LORA_OK; i++) {
        key_name(key, sizeof key, &mods[i], 1);
        rc = lora_stw_write(w, key, 0, mods[i].A,
                            (size_t)(mods[i].k * mods[i].in * lora_dtype_bits(mods[i].dtA) / 8), err);
        key_name(key, sizeof key, &mods[i], 0);
        if (rc == LORA_OK)
            rc = lora_stw_write(w, key, 0, mods[i].B,
                                (size_t)(mods[i].out * mods[i].k * lora_dtype_bits(mods[i].dtB) / 8),
                                err);
    }
    if (n == 1)
        for (size_t i = 0; i < a0->n_saved && rc == LORA_OK; i++) {
            const lora_tensor *t = a0->saved[i].t;
            rc = lora_stw_write(w, t->name, 0, t->data, (size_t)t->nbytes, err);
        }
    if (rc != LORA_OK)
        goto fail;
    rc = lora_stw_commit(w, err);
    w = NULL;
    if (rc != LORA_OK)
        goto fail;

    if (rename(tmp, out_dir) != 0) {
        int e = errno;
        if (overwrite && (e == ENOTEMPTY || e == EEXIST)) {
            /* Swap the new folder in, then remove the old one. */
            if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out_dir, RENAME_EXCHANGE) != 0) {
                rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: cannot replace", out_dir);
                goto fail;
            }
            remove_flat_dir(tmp);
        } else {
            rc = lora_seterr_errno(err, e == ENOTEMPTY || e == EEXIST ? LORA_EUSAGE : LORA_EIO, e,
                                   "%s: cannot create", out_dir);
            goto fail;
        }
    }
    (void)lora_fsync_dir_of(out_dir, NULL);
    lora_tmp_forget(tmp);
    free(cfg);
    free(tmp);
    return LORA_OK;
fail:
    if (w)
        lora_stw_abort(w);
    free(cfg);
    remove_flat_dir(tmp);
    lora_tmp_forget(tmp);
    free(tmp);
    return rc;
}

/* The inputs of one module for the dense methods: each present input's
 * factors decoded (B_j at Bp + off_j·out, out×r_j; A_j at Ac + off_j·in,
 * r_j×in), its scale, weight and stream (its position among the inputs). */
typedef struct dense_src {
    const double *Bp, *Ac;
    uint64_t out, in;
    uint64_t *r, *off, *stream;
    double *scale, *weight;
} dense_src;

static int dense_delta(void *ctx, size_t j, double *dst, lora_error *err)
{
    (void)err;
    const dense_src *d = ctx;
    lora_delta_rows(d->Bp + d->off[j] * d->out, d->Ac + d->off[j] * d->in, d->r[j], d->in,
                    d->scale[j], 0, d->out, dst);
    return LORA_OK;
}

int lora_reduce(const lora_weighted *in, size_t n, const lora_rank_rule *rule,
                const char *out_dir, int overwrite, lora_reduce_report *rep, lora_error *err)
{
    return lora_reduce_combine(in, n, rule, NULL, out_dir, overwrite, rep, err);
}

/* The arguments, checked before any work. */
static int check_inputs(const lora_weighted *in, size_t n, const lora_rank_rule *rule,
                        const lora_combine_opts *copts, const char *out_dir, int overwrite,
                        lora_error *err)
{
    int dense = copts && copts->method != LORA_COMBINE_SUM;
    if (dense && !(copts->density > 0 && isfinite(copts->density)))
        return lora_seterr(err, LORA_EUSAGE, "density must be a number > 0");
    if (n == 0)
        return lora_seterr(err, LORA_EUSAGE, "no adapter to reduce");
    if (rule) {
        if ((rule->kind == LORA_RANK_FIXED && rule->rank < 1) ||
            (rule->kind == LORA_RANK_ENERGY && !(rule->energy > 0 && rule->energy <= 1)) ||
            (rule->kind == LORA_RANK_RATIO && !(rule->ratio >= 1)))
            return lora_seterr(err, LORA_EUSAGE, "invalid rank rule");
    }
    struct stat sb;
    if (!overwrite && lstat(out_dir, &sb) == 0)
        return lora_seterr(err, LORA_EUSAGE, "%s: already exists (remove it or use --force)",
                           out_dir);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(in[i].weight))
            return lora_seterr(err, LORA_EUSAGE, "weight of %s is not finite", in[i].ad->path);
        if (in[i].ad->use_dora)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: a DoRA adapter (use_dora): its magnitude vectors cannot be "
                               "carried through a rank reduction", in[i].ad->path);
        if (in[i].ad->fan_in_fan_out != in[0].ad->fan_in_fan_out)
            return lora_seterr(err, LORA_EINPUT, "%s and %s disagree on fan_in_fan_out",
                               in[0].ad->path, in[i].ad->path);
        if (n > 1 && in[i].ad->n_saved)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: has modules_to_save tensors, which cannot be combined",
                               in[i].ad->path);
    }
    return LORA_OK;
}

/* Every module name any input adapts, sorted, once (*names malloc'd,
 * pointing into the inputs). */
static int module_names(const lora_weighted *in, size_t n, const char ***names, size_t *nu,
                        lora_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += in[i].ad->n_modules;
    const char **v = malloc((total ? total : 1) * sizeof *v);
    if (!v)
        return lora_oom(err);
    size_t nn = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < in[i].ad->n_modules; j++)
            v[nn++] = in[i].ad->modules[j].name;
    qsort(v, nn, sizeof *v, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < nn; i++)
        if (u == 0 || strcmp(v[u - 1], v[i]) != 0)
            v[u++] = v[i];
    *names = v;
    *nu = u;
    return LORA_OK;
}

/* Buffers reused from module to module. */
typedef struct reduce_ws {
    double *Bc, *Ac, *Bt, *Wb, *Wa, *Wd;
    uint64_t capB, capA, capT, capWb, capWa, capWd;
    lora_combine_ws cws;
    dense_src ds;
} reduce_ws;

static int ws_init(reduce_ws *w, size_t n, lora_error *err)
{
    memset(w, 0, sizeof *w);
    w->ds.r = calloc(n, sizeof *w->ds.r);
    w->ds.off = calloc(n, sizeof *w->ds.off);
    w->ds.stream = calloc(n, sizeof *w->ds.stream);
    w->ds.scale = calloc(n, sizeof *w->ds.scale);
    w->ds.weight = calloc(n, sizeof *w->ds.weight);
    if (!w->ds.r || !w->ds.off || !w->ds.stream || !w->ds.scale || !w->ds.weight)
        return lora_oom(err);
    return LORA_OK;
}

static void ws_free(reduce_ws *w)
{
    free(w->Bc);
    free(w->Ac);
    free(w->Bt);
    free(w->Wb);
    free(w->Wa);
    free(w->Wd);
    lora_combine_ws_free(&w->cws);
    free(w->ds.r);
    free(w->ds.off);
    free(w->ds.stream);
    free(w->ds.scale);
    free(w->ds.weight);
}

/* Module NAME in the inputs that adapt it: shapes agree; *first one of
 * them, *R the total rank, *nsrc how many. */
static int module_sources(const lora_weighted *in, size_t n, const char *name,
                          const lora_module **first, uint64_t *R, int *nsrc,
                          lora_reduce_report *rep, lora_error *err)
{
    *first = NULL;
    *R = 0;
    *nsrc = 0;
    for (size_t i = 0; i < n; i++) {
        const lora_module *m = find_module(in[i].ad, name);
        if (!m)
            continue;
        const lora_module *f = *first;
        if (!f)
            *first = m;
        else if (m->in != f->in || m->out != f->out || m->embedding != f->embedding)
            return lora_seterr(err, LORA_EINPUT, "%s: shape %llux%llu in %s but %llux%llu in %s",
                               name, (unsigned long long)f->out, (unsigned long long)f->in,
                               in[0].ad->path, (unsigned long long)m->out,
                               (unsigned long long)m->in, in[i].ad->path);
        if (!lora_add_ok(*R, m->r, R))
            return lora_seterr(err, LORA_EINPUT, "%s: rank overflow", name);
        rep->old_params += m->r * (m->in + m->out);
        (*nsrc)++;
    }
    return LORA_OK;
}

/* The factors of module NAME decoded: the exact concatenation, scales
 * and weights folded into B (w->Bc, out×R; w->Ac, R×in); for the dense
 * methods each B_j decoded as it is, packed in Bc, and w->ds filled
 * (*np sources). */
static int gather_factors(const lora_weighted *in, size_t n, const char *name, uint64_t out,
                          uint64_t inn, uint64_t R, int dense, reduce_ws *w, size_t *np,
                          lora_error *err)
{
    int rc;
    if ((rc = reserve(&w->Bc, &w->capB, out, R, err)) ||
        (rc = reserve(&w->Ac, &w->capA, R, inn, err)))
        return rc;
    uint64_t off = 0;
    *np = 0;
    for (size_t i = 0; i < n; i++) {
        const lora_module *m = find_module(in[i].ad, name);
        if (!m)
            continue;
        if ((rc = reserve(&w->Bt, &w->capT, out, m->r, err)))
            return rc;
        if (dense) {
            w->ds.r[*np] = m->r;
            w->ds.off[*np] = off;
            w->ds.stream[*np] = i;
            w->ds.scale[*np] = m->scale;
            w->ds.weight[*np] = in[i].weight;
            (*np)++;
        }
        if (lora_decode_f64(m->B->dtype, m->B->data, dense ? w->Bc + off * out : w->Bt,
                            (size_t)(out * m->r)) != LORA_OK ||
            lora_decode_f64(m->A->dtype, m->A->data, w->Ac + off * inn, (size_t)(m->r * inn)) !=
                LORA_OK)
            return lora_seterr(err, LORA_EINPUT, "%s: %s: cannot decode the factors",
                               in[i].ad->path, name);
        double f = in[i].weight * m->scale;
        for (uint64_t row = 0; row < out && !dense; row++)
            for (uint64_t c = 0; c < m->r; c++)
                w->Bc[row * R + off + c] = f * w->Bt[row * m->r + c];
        off += m->r;
    }
    return LORA_OK;
}

/* The module's new factors into OM: B' = U_k·sqrt(Σ_k), A' =
 * sqrt(Σ_k)·V_kᵀ (row-major) after a truncation or a dense method,
 * else the exact concatenation as it is. */
static int emit_factors(outmod *om, const lora_svd *sv, uint64_t R, int truncated,
                        reduce_ws *w, lora_error *err)
{
    uint64_t out = om->out, inn = om->in, keep = om->k;
    int rc;
    if (!truncated) {
        rc = encode(om->dtB, w->Bc, out * R, &om->B, err);
        return rc ? rc : encode(om->dtA, w->Ac, R * inn, &om->A, err);
    }
    if ((rc = reserve(&w->Wb, &w->capWb, out, keep, err)) ||
        (rc = reserve(&w->Wa, &w->capWa, keep, inn, err)))
        return rc;
    for (uint64_t j = 0; j < keep; j++) {
        double s = sqrt(sv->S[j]);
        for (uint64_t i = 0; i < out; i++)
            w->Wb[i * keep + j] = sv->U[j * out + i] * s;
        for (uint64_t i = 0; i < inn; i++)
            w->Wa[j * inn + i] = sv->V[j * inn + i] * s;
    }
    rc = encode(om->dtB, w->Wb, out * keep, &om->B, err);
    return rc ? rc : encode(om->dtA, w->Wa, keep * inn, &om->A, err);
}

/* Module MI (NAME): gather, decompose, select the rank, report and
 * emit its new factors into OM. */
static int reduce_module(const lora_weighted *in, size_t n, const char *name, size_t mi,
                         const lora_rank_rule *rule, const lora_combine_opts *copts, int dense,
                         reduce_ws *w, outmod *om, lora_reduce_report *rep, lora_error *err)
{
    const lora_module *first;
    uint64_t R;
    int nsrc;
    size_t np;
    int rc = module_sources(in, n, name, &first, &R, &nsrc, rep, err);
    uint64_t out = first ? first->out : 0, inn = first ? first->in : 0;
    if (!rc)
        rc = gather_factors(in, n, name, out, inn, R, dense, w, &np, err);
    if (rc)
        return rc;
    lora_svd sv;
    if (dense) {
        w->ds.Bp = w->Bc;
        w->ds.Ac = w->Ac;
        w->ds.out = out;
        w->ds.in = inn;
        if ((rc = reserve(&w->Wd, &w->capWd, out, inn, err)) ||
            (rc = lora_combine_module(copts, name, out, inn, np, w->ds.weight, w->ds.stream,
                                      dense_delta, &w->ds, w->Wd, &w->cws, err)) ||
            (rc = lora_svd_dense(w->Wd, out, inn, &sv, err))) {
            lora_err_prefix(err, "%s", name);
            return rc;
        }
    } else if ((rc = lora_svd_factors(w->Bc, w->Ac, out, R, inn, 1.0, &sv, err)) != LORA_OK) {
        lora_err_prefix(err, "%s", name);
        return rc;
    }
    uint64_t keep = rule ? lora_rank_select(sv.S, sv.k, rule) : dense ? sv.k : R;
    double norm = 0;
    for (uint64_t i = 0; i < sv.k; i++)
        norm += sv.S[i] * sv.S[i];
    lora_reduce_module *rm = &rep->modules[mi];
    rm->name = strdup(name);
    if (!rm->name) {
        lora_svd_free(&sv);
        return lora_oom(err);
    }
    rep->n_modules = mi + 1;
    rm->old_rank = R;
    rm->new_rank = keep;
    rm->norm = sqrt(norm);
    rm->rel_error = rule ? lora_rank_rel_error(sv.S, sv.k, keep) : 0.0;
    rm->n_sources = nsrc;
    om->name = name;
    om->embedding = first->embedding;
    om->out = out;
    om->in = inn;
    om->k = keep;
    om->dtA = out_dtype(first->A->dtype);
    om->dtB = out_dtype(first->B->dtype);
    rep->new_params += keep * (inn + out);
    rc = emit_factors(om, &sv, R, rule || dense, w, err);
    lora_svd_free(&sv);
    return rc;
}

int lora_reduce_combine(const lora_weighted *in, size_t n, const lora_rank_rule *rule,
                        const lora_combine_opts *copts, const char *out_dir, int overwrite,
                        lora_reduce_report *rep, lora_error *err)
{
    memset(rep, 0, sizeof *rep);
    int dense = copts && copts->method != LORA_COMBINE_SUM;
    int rc = check_inputs(in, n, rule, copts, out_dir, overwrite, err);
    if (rc)
        return rc;
    const char **names = NULL;
    size_t nu = 0;
    if ((rc = module_names(in, n, &names, &nu, err)))
        return rc;
    outmod *mods = calloc(nu ? nu : 1, sizeof *mods);
    rep->modules = calloc(nu ? nu : 1, sizeof *rep->modules);
    reduce_ws w;
    rc = ws_init(&w, n, err);
    if (!rc && (!mods || !rep->modules))
        rc = lora_oom(err);
    for (size_t mi = 0; mi < nu && !rc; mi++)
        rc = reduce_module(in, n, names[mi], mi, rule, copts, dense, &w, &mods[mi], rep, err);
    if (!rc)
        rc = write_folder(out_dir, overwrite, in, n, mods, nu, err);
    for (size_t i = 0; i < nu && mods; i++) {
        free(mods[i].A);
        free(mods[i].B);
    }
    free(mods);
    free(names);
    ws_free(&w);
    if (rc != LORA_OK)
        lora_reduce_report_free(rep);
    return rc;
}

/*
 * inspect.c - the library side of lora-inspect: everything a person or
 * a CI job wants to know about an adapter (ranks, scales, what the
 * config's target_modules matched, sizes, dtypes) and every problem
 * found in it, alone or against a base checkpoint.  Unlike
 * lora_adapter_bind, which stops at the first problem, this collects
 * all of them, so one run of `lora-inspect --check` tells the whole story.
 */
#include "internal.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

#define SCAN_CHUNK 65536

static int add_problem(lora_report *rep, int sev, const char *where, lora_error *err,
                       const char *fmt, ...) LORA_PRINTF(5, 6);

static int add_problem(lora_report *rep, int sev, const char *where, lora_error *err,
                       const char *fmt, ...)
{
    lora_problem *p = realloc(rep->problems, (rep->n_problems + 1) * sizeof *p);
    if (!p)
        return lora_oom(err);
    rep->problems = p;
    p = &rep->problems[rep->n_problems];
    char buf[LORA_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    p->severity = sev;
    p->where = where ? strdup(where) : NULL;
    p->msg = strdup(buf);
    if (!p->msg || (where && !p->where)) {
        free(p->where);
        free(p->msg);
        return lora_oom(err);
    }
    rep->n_problems++;
    return LORA_OK;
}

void lora_report_free(lora_report *rep)
{
    if (!rep)
        return;
    for (size_t i = 0; i < rep->n_problems; i++) {
        free(rep->problems[i].where);
        free(rep->problems[i].msg);
    }
    free(rep->problems);
    for (size_t i = 0; i < rep->n_targets; i++)
        free(rep->targets[i].entry);
    free(rep->targets);
    free(rep->modules);
    free(rep->groups);
    free(rep->dtypes);
    free(rep->tensors);
    free(rep);
}

/* Count non-finite values of t; *all_zero tells whether every value is 0. */
static int scan(const lora_tensor *t, double *buf, uint64_t *nonfinite, int *all_zero,
                lora_error *err)
{
    unsigned bits = lora_dtype_bits(t->dtype);
    uint64_t bad = 0;
    int zero = 1;
    for (uint64_t i = 0; i < t->numel; i += SCAN_CHUNK) {
        size_t n = t->numel - i < SCAN_CHUNK ? (size_t)(t->numel - i) : SCAN_CHUNK;
        const unsigned char *src = (const unsigned char *)t->data + i * bits / 8;
        if (lora_decode_f64(t->dtype, src, buf, n))
            return lora_seterr(err, LORA_EINPUT, "%s: cannot read %s values", t->name,
                               lora_dtype_name(t->dtype));
        for (size_t k = 0; k < n; k++) {
            if (!isfinite(buf[k]))
                bad++;
            if (buf[k] != 0)
                zero = 0;
        }
    }
    *nonfinite = bad;
    *all_zero = zero;
    return LORA_OK;
}

static const lora_acfg *targets_cfg(const lora_adapter *ad, lora_acfg **own, lora_error *err)
{
    /* the config was valid when the adapter was opened */
    if (ad->config_json && lora_acfg_parse(ad->config_json, strlen(ad->config_json), own, err) == 0)
        return *own;
    if (!ad->config_json)
        lora_seterr(err, LORA_EINPUT, "the adapter carries no config");
    return NULL;
}

/* rank_pattern / alpha_pattern keys that match no module of the
 * adapter do nothing: usually a typo or a pattern for another model.
 * Matching runs under the config's budget; a spent budget is reported
 * as a finding too. */
static int check_pattern_keys(lora_report *rep, const lora_acfg *c, lora_error *err)
{
    for (int alpha = 0; alpha < 2; alpha++) {
        size_t n = alpha ? c->n_alpha : c->n_rank;
        char **keys = alpha ? c->alpha_keys : c->rank_keys;
        const char *what = alpha ? "alpha_pattern" : "rank_pattern";
        for (size_t i = 0; i < n; i++) {
            int hit = 0;
            lora_error e;
            lora_error_clear(&e);
            for (size_t k = 0; k < rep->n_modules && hit == 0; k++)
                hit = lora_acfg_pattern_matches(c, alpha, i, rep->modules[k].m->name, &e);
            if (hit < 0)
                return add_problem(rep, LORA_SEV_WARNING, NULL, err, "%s: %s", what, e.msg);
            if (!hit) {
                int rc = add_problem(rep, LORA_SEV_WARNING, NULL, err,
                                     "%s key \"%.200s\" matches no module of the adapter", what,
                                     keys[i]);
                if (rc)
                    return rc;
            }
        }
    }
    return LORA_OK;
}

static int fill_targets(lora_report *rep, const lora_adapter *ad, lora_error *err)
{
    lora_acfg *own = NULL;
    lora_error e;
    lora_error_clear(&e);
    const lora_acfg *c = targets_cfg(ad, &own, &e);
    if (!c) {
        if (err)
            *err = e;
        return e.code ? e.code : LORA_EIO;
    }
    int rc = LORA_OK;
    size_t n = c->target_regex ? 1 : c->n_targets;
    rep->target_is_regex = c->target_regex != NULL;
    rep->targets = calloc(n ? n : 1, sizeof *rep->targets);
    if (!rep->targets) {
        rc = lora_oom(err);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        rep->targets[i].entry = strdup(c->target_regex ? c->target_regex : c->targets[i]);
        if (!rep->targets[i].entry) {
            rc = lora_oom(err);
            goto done;
        }
        rep->n_targets++;
    }
    /* target_modules null: PEFT filled in its per-architecture defaults
     * when it trained, which the file does not say; nothing to check */
    int unknown = !c->target_regex && !c->targets;
    for (size_t i = 0; i < rep->n_modules; i++) {
        const char *name = rep->modules[i].m->name;
        if (unknown) {
            rep->modules[i].targeted = 1;
            continue;
        }
        lora_error_clear(&e);
        int hit = lora_acfg_targets(c, name, &e);
        if (hit < 0) {
            /* a pattern PCRE2 cannot run is a finding, not a failure */
            rc = add_problem(rep, LORA_SEV_WARNING, NULL, err, "target_modules: %s", e.msg);
            if (rc)
                goto done;
            break;
        }
        rep->modules[i].targeted = hit;
        if (!hit) {
            rep->n_untargeted++;
            continue;
        }
        if (c->target_regex)
            rep->targets[0].modules++;
        else
            for (size_t k = 0; k < c->n_targets; k++)
                rep->targets[k].modules += lora_acfg_entry_matches(c->targets[k], name);
    }
    /* an entry that selects nothing, exclusions aside (an entry whose
     * modules are all excluded does select them) */
    for (size_t k = 0; !unknown && k < rep->n_targets && !rc; k++) {
        size_t any = rep->targets[k].modules;
        for (size_t i = 0; !c->target_regex && !any && i < rep->n_modules; i++)
            any = lora_acfg_entry_matches(c->targets[k], rep->modules[i].m->name);
        if (c->target_regex && (c->exclude_regex || c->n_exclude))
            any = 1; /* cannot tell an excluded match from none */
        if (!any)
            rc = add_problem(rep, LORA_SEV_WARNING, NULL, err,
                                 "target_modules %s \"%.200s\" matches no module of the adapter "
                                 "(a typo, or a module this model does not have?)",
                                 c->target_regex ? "regex" : "entry", rep->targets[k].entry);
    }
    if (!rc)
        rc = check_pattern_keys(rep, c, err);
done:
    lora_acfg_free(own);
    return rc;
}

static int fill_groups(lora_report *rep, lora_error *err)
{
    rep->groups = calloc(rep->n_modules ? rep->n_modules : 1, sizeof *rep->groups);
    if (!rep->groups)
        return lora_oom(err);
    for (size_t i = 0; i < rep->n_modules; i++) {
        const lora_module *m = rep->modules[i].m;
        size_t g = 0;
        while (g < rep->n_groups && !(rep->groups[g].r == m->r && rep->groups[g].alpha == m->alpha &&
                                      rep->groups[g].scale == m->scale))
            g++;
        if (g == rep->n_groups) {
            rep->groups[g].r = m->r;
            rep->groups[g].alpha = m->alpha;
            rep->groups[g].scale = m->scale;
            rep->n_groups++;
        }
        rep->groups[g].modules++;
    }
    return LORA_OK;
}

/* DoRA: the range of one module's magnitude vector (checked finite
 * and [out] by the loader), folded into the report's. */
static int magnitude_range(lora_report *rep, lora_report_module *rm, lora_error *err)
{
    const lora_tensor *v = rm->m->magnitude;
    double *x = malloc((size_t)(v->numel ? v->numel : 1) * sizeof *x);
    if (!x)
        return lora_oom(err);
    if (lora_decode_f64(v->dtype, v->data, x, (size_t)v->numel) != LORA_OK) {
        free(x);
        return lora_seterr(err, LORA_EINPUT, "module %s: cannot decode lora_magnitude_vector",
                           rm->m->name);
    }
    rm->mag_min = rm->mag_max = v->numel ? x[0] : 0;
    for (uint64_t i = 1; i < v->numel; i++) {
        rm->mag_min = fmin(rm->mag_min, x[i]);
        rm->mag_max = fmax(rm->mag_max, x[i]);
    }
    free(x);
    rep->mag_min = rep->n_dora ? fmin(rep->mag_min, rm->mag_min) : rm->mag_min;
    rep->mag_max = rep->n_dora ? fmax(rep->mag_max, rm->mag_max) : rm->mag_max;
    rep->n_dora++;
    rep->dora_params += v->numel;
    return LORA_OK;
}

static int fill_tensors(lora_report *rep, const lora_adapter *ad, lora_error *err)
{
    size_t n = lora_st_count(ad->st);
    rep->tensors = calloc(n ? n : 1, sizeof *rep->tensors);
    rep->dtypes = calloc(LORA_DT_COUNT, sizeof *rep->dtypes);
    if (!rep->tensors || !rep->dtypes)
        return lora_oom(err);
    size_t per[LORA_DT_COUNT] = {0};
    uint64_t bytes[LORA_DT_COUNT] = {0};
    for (size_t i = 0; i < n; i++) {
        const lora_tensor *t = lora_st_tensor(ad->st, i);
        lora_report_tensor *rt = &rep->tensors[rep->n_tensors++];
        rt->t = t;
        rt->role = "copy";
        for (size_t k = 0; k < ad->n_modules && !rt->owner; k++) {
            const lora_module *m = &ad->modules[k];
            if (m->A == t)
                rt->role = m->embedding ? "lora_embedding_A" : "lora_A";
            else if (m->B == t)
                rt->role = m->embedding ? "lora_embedding_B" : "lora_B";
            else if (m->magnitude == t)
                rt->role = "lora_magnitude_vector";
            else
                continue;
            rt->owner = m->name;
        }
        for (size_t k = 0; k < ad->n_saved && !rt->owner; k++)
            if (ad->saved[k].t == t) {
                rt->role = "saved";
                rt->owner = ad->saved[k].target;
            }
        if (!rt->owner)
            rep->n_copies++;
        rep->tensor_bytes += t->nbytes;
        if (t->dtype > LORA_DT_INVALID && t->dtype < LORA_DT_COUNT) {
            per[t->dtype]++;
            bytes[t->dtype] += t->nbytes;
        }
    }
    for (int d = 0; d < LORA_DT_COUNT; d++)
        if (per[d]) {
            rep->dtypes[rep->n_dtypes].dtype = (lora_dtype)d;
            rep->dtypes[rep->n_dtypes].tensors = per[d];
            rep->dtypes[rep->n_dtypes].bytes = bytes[d];
            rep->n_dtypes++;
        }
    return LORA_OK;
}

static int check_values(lora_report *rep, const lora_adapter *ad, lora_error *err)
{
    double *buf = malloc(SCAN_CHUNK * sizeof *buf);
    if (!buf)
        return lora_oom(err);
    int rc = LORA_OK;
    size_t zero = 0;
    for (size_t i = 0; i < rep->n_modules && !rc; i++) {
        lora_report_module *rm = &rep->modules[i];
        int za, zb;
        if ((rc = scan(rm->m->A, buf, &rm->nonfinite_a, &za, err)) ||
            (rc = scan(rm->m->B, buf, &rm->nonfinite_b, &zb, err)))
            break;
        rm->zero_b = zb;
        zero += zb;
        if (rm->nonfinite_a)
            rc = add_problem(rep, LORA_SEV_ERROR, rm->m->name, err,
                             "module %s: %llu NaN/Inf values in %s", rm->m->name,
                             (unsigned long long)rm->nonfinite_a, rm->m->A->name);
        if (!rc && rm->nonfinite_b)
            rc = add_problem(rep, LORA_SEV_ERROR, rm->m->name, err,
                             "module %s: %llu NaN/Inf values in %s", rm->m->name,
                             (unsigned long long)rm->nonfinite_b, rm->m->B->name);
    }
    for (size_t i = 0; i < ad->n_saved && !rc; i++) {
        uint64_t bad;
        int z;
        if ((rc = scan(ad->saved[i].t, buf, &bad, &z, err)))
            break;
        if (bad)
            rc = add_problem(rep, LORA_SEV_ERROR, ad->saved[i].target, err,
                             "saved tensor %s: %llu NaN/Inf values", ad->saved[i].target,
                             (unsigned long long)bad);
    }
    free(buf);
    if (rc || !zero)
        return rc;
    if (zero == rep->n_modules && zero > 1)
        return add_problem(rep, LORA_SEV_WARNING, NULL, err,
                           "every lora_B is all zeros: the adapter looks untrained and changes "
                           "nothing");
    for (size_t i = 0; i < rep->n_modules && !rc; i++)
        if (rep->modules[i].zero_b)
            rc = add_problem(rep, LORA_SEV_WARNING, rep->modules[i].m->name, err,
                             "module %s: lora_B is all zeros (untrained: the module changes "
                             "nothing)",
                             rep->modules[i].m->name);
    return rc;
}

static int same_shape(const lora_tensor *a, const lora_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return 1;
}

static void shape_str(const lora_tensor *t, char *buf, size_t n)
{
    size_t o = snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += snprintf(buf + o, n - o, "%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/* Is BASE the one the adapter was made for (baseid.c)?  An archive's
 * recorded identity that differs is an error (lora-merge refuses it);
 * a plain folder whose base_model_name_or_path disagrees with the
 * base's config.json is a warning.  The identity is computed on a
 * shallow copy whose targets are the base's spellings found above. */
static int check_identity(lora_report *rep, const lora_adapter *ad, const lora_ckpt *base,
                          lora_error *err)
{
    char msg[600];
    if (!ad->has_base_hash) {
        if (lora_base_name_mismatch(ad, base, msg, sizeof msg))
            return add_problem(rep, LORA_SEV_WARNING, NULL, err, "%s", msg);
        return LORA_OK;
    }
    for (size_t i = 0; i < rep->n_modules; i++)
        if (!rep->modules[i].base_name)
            return LORA_OK; /* not bound: reported above */
    lora_adapter cp = *ad;
    lora_module *mods = calloc(ad->n_modules ? ad->n_modules : 1, sizeof *mods);
    lora_saved *sv = calloc(ad->n_saved ? ad->n_saved : 1, sizeof *sv);
    int rc = LORA_OK;
    if (!mods || !sv) {
        rc = lora_oom(err);
        goto done;
    }
    for (size_t i = 0; i < ad->n_modules; i++) {
        mods[i] = ad->modules[i];
        mods[i].target = (char *)rep->modules[i].base_name;
    }
    for (size_t i = 0; i < ad->n_saved; i++) {
        const lora_tensor *t = lora_ckpt_find_alias(base, ad->saved[i].target);
        if (!t)
            goto done; /* reported above */
        sv[i] = ad->saved[i];
        sv[i].target = (char *)t->name;
    }
    cp.modules = mods;
    cp.saved = sv;
    int r = lora_base_identity_mismatch(&cp, base, msg, sizeof msg, err);
    if (r < 0)
        rc = -r;
    else if (r)
        rc = add_problem(rep, LORA_SEV_ERROR, NULL, err, "%s: lora-merge refuses it (exit 1)", msg);
done:
    free(mods);
    free(sv);
    return rc;
}

static int check_base(lora_report *rep, const lora_adapter *ad, const lora_ckpt *base,
                      lora_error *err)
{
    int rc;
    rep->has_base = 1;
    for (size_t i = 0; i < lora_ckpt_count(base); i++)
        rep->base_params += lora_ckpt_tensor(base, i, NULL)->numel;
    for (size_t i = 0; i < lora_ckpt_shard_count(base); i++)
        rep->base_bytes += lora_st_size(lora_ckpt_shard(base, i));

    /* the same two passes as lora_adapter_bind: non-square modules
     * first, their orientation then decides square ones; problems are
     * listed afterwards in module order */
    lora_error *perr = calloc(rep->n_modules ? rep->n_modules : 1, sizeof *perr);
    if (!perr)
        return lora_oom(err);
    int seen[2] = {0, 0};
    for (int pass = 0; pass < 2; pass++) {
        int hint = seen[0] && !seen[1] ? 0 : seen[1] && !seen[0] ? 1 : -1;
        for (size_t i = 0; i < rep->n_modules; i++) {
            lora_report_module *rm = &rep->modules[i];
            int square = rm->m->in == rm->m->out;
            if (square != pass)
                continue;
            const lora_tensor *t;
            int tr;
            int r = lora_module_resolve(rm->m, base, ad->fan_in_fan_out, hint, &t, &tr, &perr[i]);
            if (r == LORA_EINPUT)
                continue;
            if (r) {
                if (err)
                    *err = perr[i];
                free(perr);
                return r;
            }
            rm->base_name = t->name;
            rm->transpose = tr;
            rm->base_params = t->numel;
            rep->adapted_params += t->numel;
            if (!square && !rm->m->embedding)
                seen[tr] = 1;
        }
    }
    for (size_t i = 0; i < rep->n_modules; i++)
        if (perr[i].code &&
            (rc = add_problem(rep, LORA_SEV_ERROR, rep->modules[i].m->name, err, "%s",
                              perr[i].msg))) {
            free(perr);
            return rc;
        }
    free(perr);
    for (size_t i = 0; i < ad->n_saved; i++) {
        const lora_saved *s = &ad->saved[i];
        const lora_tensor *t = lora_ckpt_find_alias(base, s->target);
        char sa[96], sb[96];
        shape_str(s->t, sa, sizeof sa);
        if (!t) {
            rc = add_problem(rep, LORA_SEV_ERROR, s->target, err, LORA_MISSING_HEAD_FMT,
                             s->target, sa, s->target);
        } else if (!same_shape(s->t, t)) {
            shape_str(t, sb, sizeof sb);
            rc = add_problem(rep, LORA_SEV_ERROR, s->target, err,
                             "saved tensor %s (modules_to_save) is %s but base tensor %s is %s",
                             s->target, sa, t->name, sb);
        } else {
            rc = LORA_OK;
        }
        if (rc)
            return rc;
    }
    return check_identity(rep, ad, base, err);
}

/* A scale that is not finite, or a delta that is not finite in the
 * dtype it is merged into (the base tensor's, else lora_B's), is an
 * error: lora-merge refuses it (exit 3), so --check must not pass it. */
static int check_scale(lora_report *rep, const lora_adapter *ad, const lora_ckpt *base,
                       int scan_values, lora_error *err)
{
    int rc = LORA_OK;
    for (size_t i = 0; i < rep->n_modules && !rc; i++) {
        const lora_report_module *rm = &rep->modules[i];
        const lora_module *m = rm->m;
        if (!isfinite(m->scale)) {
            rc = add_problem(rep, LORA_SEV_ERROR, m->name, err,
                             "module %s: scale %g (lora_alpha %g, r %llu%s) is not finite",
                             m->name, m->scale, m->alpha, (unsigned long long)m->r,
                             ad->use_rslora ? ", rsLoRA" : "");
            continue;
        }
        if (!scan_values)
            continue;
        const lora_tensor *bt = base && rm->base_name ? lora_ckpt_find(base, rm->base_name, NULL)
                                                      : NULL;
        lora_dtype dt = bt ? bt->dtype : m->B->dtype;
        uint64_t bad = 0;
        if ((rc = lora_delta_nonfinite(m, dt, &bad, err)))
            break;
        if (bad)
            rc = add_problem(rep, LORA_SEV_ERROR, m->name, err,
                             "module %s: %llu of %llu delta values are not finite in %s "
                             "(scale %g = lora_alpha %g / %s%llu): lora-merge refuses it",
                             m->name, (unsigned long long)bad,
                             (unsigned long long)(m->out * m->in), lora_dtype_name(dt), m->scale,
                             m->alpha, ad->use_rslora ? "sqrt " : "", (unsigned long long)m->r);
    }
    return rc;
}

int lora_inspect(const lora_adapter *ad, const lora_inspect_opts *opts, lora_report **out,
                 lora_error *err)
{
    static const lora_inspect_opts none = {0};
    if (!opts)
        opts = &none;
    *out = NULL;
    lora_report *rep = calloc(1, sizeof *rep);
    if (!rep)
        return lora_oom(err);
    rep->ad = ad;
    rep->file_bytes = ad->file_bytes;
    int rc = LORA_OK;
    rep->modules = calloc(ad->n_modules ? ad->n_modules : 1, sizeof *rep->modules);
    if (!rep->modules) {
        rc = lora_oom(err);
        goto fail;
    }
    rep->n_modules = ad->n_modules;
    for (size_t i = 0; i < ad->n_modules; i++) {
        lora_report_module *rm = &rep->modules[i];
        rm->m = &ad->modules[i];
        rm->transpose = rm->m->transpose;
        rm->params = rm->m->A->numel + rm->m->B->numel;
        rep->lora_params += rm->params;
        if (rm->m->magnitude && (rc = magnitude_range(rep, rm, err)))
            goto fail;
        if (rm->m->r != rm->m->config_r &&
            (rc = add_problem(rep, LORA_SEV_ERROR, rm->m->name, err,
                              "module %s: its tensors have rank %llu but the config gives r=%llu",
                              rm->m->name, (unsigned long long)rm->m->r,
                              (unsigned long long)rm->m->config_r)))
            goto fail;
    }
    for (size_t i = 0; i < ad->n_saved; i++)
        rep->saved_params += ad->saved[i].t->numel;
    rep->trainable_params = rep->lora_params + rep->saved_params + rep->dora_params;
    if ((rc = fill_groups(rep, err)) || (rc = fill_tensors(rep, ad, err)) ||
        (rc = fill_targets(rep, ad, err)))
        goto fail;
    for (size_t i = 0; i < rep->n_modules; i++)
        if (!rep->modules[i].targeted &&
            (rc = add_problem(rep, LORA_SEV_WARNING, rep->modules[i].m->name, err,
                              "module %s is not selected by target_modules: PEFT would not load it",
                              rep->modules[i].m->name)))
            goto fail;
    if (!opts->no_scan && (rc = check_values(rep, ad, err)))
        goto fail;
    if (opts->base && (rc = check_base(rep, ad, opts->base, err)))
        goto fail;
    if ((rc = check_scale(rep, ad, opts->base, !opts->no_scan, err)))
        goto fail;
    for (size_t i = 0; i < rep->n_problems; i++) {
        if (opts->strict)
            rep->problems[i].severity = LORA_SEV_ERROR;
        if (rep->problems[i].severity == LORA_SEV_ERROR)
            rep->n_errors++;
        else
            rep->n_warnings++;
    }
    *out = rep;
    return LORA_OK;
fail:
    lora_report_free(rep);
    return rc;
}

/* ------------------------------------------------------------------ */
/* JSON                                                                */
/* ------------------------------------------------------------------ */

static json_t *jstr(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *jshape(const lora_tensor *t)
{
    json_t *a = json_array();
    for (int d = 0; a && d < t->ndim; d++)
        json_array_append_new(a, json_integer((json_int_t)t->shape[d]));
    return a;
}

/* integral values (the usual lora_alpha) as integers, as configs write them */
static json_t *jnum(double v)
{
    if (v == floor(v) && fabs(v) < 9e15)
        return json_integer((json_int_t)v);
    return json_real(v);
}

static json_t *jratio(uint64_t a, uint64_t b)
{
    return b ? json_real((double)a / (double)b) : json_null();
}

/* What the adapter is: its config, scales and the targets matched. */
static void json_config(json_t *o, const lora_report *rep)
{
    const lora_adapter *ad = rep->ad;
    json_object_set_new(o, "adapter", jstr(ad->path));
    json_object_set_new(o, "base_model", jstr(ad->base_model));
    json_object_set_new(o, "peft_version", jstr(ad->peft_version));
    json_object_set_new(o, "task_type", jstr(ad->task_type));
    json_object_set_new(o, "r", json_integer((json_int_t)ad->r));
    json_object_set_new(o, "lora_alpha", jnum(ad->alpha));
    json_object_set_new(o, "use_rslora", json_boolean(ad->use_rslora));
    json_object_set_new(o, "fan_in_fan_out", json_boolean(ad->fan_in_fan_out));
    json_object_set_new(o, "use_dora", json_boolean(ad->use_dora));
    json_object_set_new(o, "dora_modules", json_integer((json_int_t)rep->n_dora));
    json_object_set_new(o, "magnitude_range",
                        rep->n_dora ? json_pack("[f, f]", rep->mag_min, rep->mag_max)
                                    : json_null());
    json_object_set_new(o, "uniform", json_boolean(rep->n_groups <= 1));
    json_object_set_new(o, "scale",
                        rep->n_groups == 1 ? json_real(rep->groups[0].scale) : json_null());
    json_t *g = json_array();
    for (size_t i = 0; i < rep->n_groups; i++)
        json_array_append_new(g, json_pack("{s:I, s:o, s:f, s:I}", "r",
                                           (json_int_t)rep->groups[i].r, "lora_alpha",
                                           jnum(rep->groups[i].alpha), "scale", rep->groups[i].scale,
                                           "modules", (json_int_t)rep->groups[i].modules));
    json_object_set_new(o, "groups", g);
    json_t *tm = json_loads(ad->target_modules ? ad->target_modules : "null", JSON_DECODE_ANY,
                            NULL);
    json_object_set_new(o, "target_modules", tm ? tm : json_null());
    json_t *tg = json_array();
    for (size_t i = 0; i < rep->n_targets; i++)
        json_array_append_new(tg, json_pack("{s:s, s:I}", "target", rep->targets[i].entry,
                                            "modules", (json_int_t)rep->targets[i].modules));
    json_object_set_new(o, "targets_matched", tg);
}

/* Counts and sizes, dtypes, modules_to_save. */
static void json_sizes(json_t *o, const lora_report *rep)
{
    const lora_adapter *ad = rep->ad;
    json_object_set_new(o, "untargeted_modules", json_integer((json_int_t)rep->n_untargeted));
    json_object_set_new(o, "modules", json_integer((json_int_t)rep->n_modules));
    json_object_set_new(o, "trainable_parameters", json_integer((json_int_t)rep->trainable_params));
    json_object_set_new(o, "lora_parameters", json_integer((json_int_t)rep->lora_params));
    json_object_set_new(o, "saved_parameters", json_integer((json_int_t)rep->saved_params));
    json_object_set_new(o, "bytes", json_integer((json_int_t)rep->file_bytes));
    json_object_set_new(o, "tensor_bytes", json_integer((json_int_t)rep->tensor_bytes));
    json_t *dt = json_array(), *dc = json_object();
    for (size_t i = 0; i < rep->n_dtypes; i++) {
        const char *nm = lora_dtype_name(rep->dtypes[i].dtype);
        json_array_append_new(dt, json_string(nm));
        json_object_set_new(dc, nm, json_integer((json_int_t)rep->dtypes[i].tensors));
    }
    json_object_set_new(o, "dtypes", dt);
    json_object_set_new(o, "dtype_tensors", dc);
    json_t *sv = json_array();
    for (size_t i = 0; i < ad->n_saved; i++)
        json_array_append_new(sv, json_pack("{s:s, s:s, s:o, s:I}", "tensor", ad->saved[i].target,
                                            "dtype", lora_dtype_name(ad->saved[i].t->dtype),
                                            "shape", jshape(ad->saved[i].t), "parameters",
                                            (json_int_t)ad->saved[i].t->numel));
    json_object_set_new(o, "modules_to_save", sv);
    json_object_set_new(o, "copies_ignored", json_integer((json_int_t)rep->n_copies));
}

/* One entry per module. */
static void json_module_list(json_t *o, const lora_report *rep)
{
    json_t *ml = json_array();
    for (size_t i = 0; i < rep->n_modules; i++) {
        const lora_report_module *rm = &rep->modules[i];
        const lora_module *m = rm->m;
        json_t *mo = json_pack("{s:s, s:s, s:I, s:I, s:I, s:o, s:f, s:b, s:b, s:b, s:I, s:s, s:s}",
                          "name", m->name, "target", rm->base_name ? rm->base_name : m->target,
                          "r", (json_int_t)m->r, "in", (json_int_t)m->in, "out",
                          (json_int_t)m->out, "lora_alpha", jnum(m->alpha), "scale", m->scale,
                          "embedding", m->embedding, "transpose", rm->transpose, "targeted",
                          rm->targeted, "parameters", (json_int_t)rm->params, "dtype_A",
                          lora_dtype_name(m->A->dtype), "dtype_B", lora_dtype_name(m->B->dtype));
        if (mo)
            json_object_set_new(mo, "magnitude",
                                m->magnitude ? json_pack("[f, f]", rm->mag_min, rm->mag_max)
                                             : json_null());
        json_array_append_new(ml, mo);
    }
    json_object_set_new(o, "module_list", ml);
}

/* Against the base (--base), or null. */
static void json_base(json_t *o, const lora_report *rep)
{
    if (rep->has_base)
        json_object_set_new(
            o, "base",
            json_pack("{s:I, s:I, s:I, s:o, s:o, s:o}", "parameters",
                      (json_int_t)rep->base_params, "bytes", (json_int_t)rep->base_bytes,
                      "adapted_parameters", (json_int_t)rep->adapted_params, "parameter_ratio",
                      jratio(rep->trainable_params, rep->base_params), "byte_ratio",
                      jratio(rep->file_bytes, rep->base_bytes), "adapted_ratio",
                      jratio(rep->lora_params, rep->adapted_params)));
    else
        json_object_set_new(o, "base", json_null());
}

/* The problems found, with their counts. */
static void json_problems(json_t *o, const lora_report *rep)
{
    json_t *pr = json_array();
    for (size_t i = 0; i < rep->n_problems; i++) {
        const lora_problem *p = &rep->problems[i];
        json_array_append_new(pr, json_pack("{s:s, s:o, s:s}", "severity",
                                            p->severity == LORA_SEV_ERROR ? "error" : "warning",
                                            "module", jstr(p->where), "message", p->msg));
    }
    json_object_set_new(o, "problems", pr);
    json_object_set_new(o, "errors", json_integer((json_int_t)rep->n_errors));
    json_object_set_new(o, "warnings", json_integer((json_int_t)rep->n_warnings));
}

/* Every tensor of the file (--tensors). */
static void json_tensors(json_t *o, const lora_report *rep)
{
    json_t *ts = json_array();
    for (size_t i = 0; i < rep->n_tensors; i++) {
        const lora_report_tensor *rt = &rep->tensors[i];
        json_array_append_new(
            ts, json_pack("{s:s, s:s, s:o, s:I, s:s, s:o}", "name", rt->t->name, "dtype",
                          lora_dtype_name(rt->t->dtype), "shape", jshape(rt->t), "bytes",
                          (json_int_t)rt->t->nbytes, "role", rt->role, "of", jstr(rt->owner)));
    }
    json_object_set_new(o, "tensors", ts);
}

static json_t *build_json(const lora_report *rep, int tensors)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_config(o, rep);
    json_sizes(o, rep);
    json_module_list(o, rep);
    json_base(o, rep);
    json_problems(o, rep);
    if (tensors)
        json_tensors(o, rep);
    return o;
}

char *lora_report_json(const lora_report *rep, int tensors, lora_error *err)
{
    json_t *o = build_json(rep, tensors);
    char *s = o ? json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    if (!s) {
        lora_oom(err);
        return NULL;
    }
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        lora_oom(err);
        return NULL;
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    return t;
}

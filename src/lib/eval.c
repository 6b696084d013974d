/*
 * eval.c - task evaluation of a model (with or without an adapter) on a
 * data set: accuracy, NLL per target token, throughput, and the
 * side-by-side comparison of two forward modes (merged against
 * unmerged) that shows merging changes no prediction.
 *
 * Scoring contract: log-probabilities are log-softmax of the F32 logits
 * computed in double (max subtracted, exp summed in increasing id order);
 * a choice's score is the sum over its tokens in order; the highest
 * score wins, ties to the first choice.  Greedy decoding takes the
 * argmax, ties to the lowest id.
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* log p(tok) under one row of logits. */
static double logprob(const float *row, uint64_t V, int32_t tok)
{
    float mx = row[0];
    for (uint64_t j = 1; j < V; j++)
        if (row[j] > mx)
            mx = row[j];
    double s = 0;
    for (uint64_t j = 0; j < V; j++)
        s += exp((double)row[j] - mx);
    return (double)row[tok] - mx - log(s);
}

static int32_t argmax(const float *row, uint64_t V)
{
    uint64_t b = 0;
    for (uint64_t j = 1; j < V; j++)
        if (row[j] > row[b])
            b = j;
    return (int32_t)b;
}

static double maxdiff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++) {
        double x = fabs((double)a[i] - (double)b[i]);
        if (x > d || isnan(x))
            d = isnan(x) ? INFINITY : x;
    }
    return d;
}

/* One mode's work on one item. */
typedef struct side {
    lora_run *run;
    float *logits;       /* cap × V */
    double secs;
    uint64_t tokens;
} side;

static int fwd(side *s, const int32_t *t, size_t n, size_t rows, lora_error *err)
{
    double t0 = now();
    int rc = lora_run_forward(s->run, t, n, s->logits, rows, err);
    s->secs += now() - t0;
    s->tokens += n;
    return rc;
}

/* Multiple choice: scores[c] for every choice; the logits of every
 * scored row are compared with the other side's when there is one. */
static int do_choice(side *s, side *o, const lora_item *it, uint64_t V, double *scores,
                     double *dmax, lora_error *err)
{
    side *sides[2] = {s, o};
    int rc;
    /* the prompt once, then each choice from the cached prompt */
    for (int k = 0; k < 2 && sides[k]; k++) {
        lora_run_truncate(sides[k]->run, 0);
        if ((rc = fwd(sides[k], it->prompt, it->n_prompt, 1, err)) != LORA_OK)
            return rc;
    }
    if (o)
        *dmax = fmax(*dmax, maxdiff(s->logits, o->logits, V));
    float *last = malloc(V * sizeof(float) * 2);
    if (!last)
        return lora_oom(err);
    memcpy(last, s->logits, V * sizeof(float));
    if (o)
        memcpy(last + V, o->logits, V * sizeof(float));
    for (size_t c = 0; c < it->n_choices; c++) {
        const int32_t *ch = it->choices[c];
        size_t n = it->choice_len[c];
        double sc = logprob(last, V, ch[0]);
        if (n > 1) {
            for (int k = 0; k < 2 && sides[k]; k++) {
                lora_run_truncate(sides[k]->run, it->n_prompt);
                if ((rc = fwd(sides[k], ch, n - 1, n - 1, err)) != LORA_OK) {
                    free(last);
                    return rc;
                }
            }
            for (size_t j = 1; j < n; j++)
                sc += logprob(s->logits + (j - 1) * V, V, ch[j]);
            if (o)
                *dmax = fmax(*dmax, maxdiff(s->logits, o->logits, (n - 1) * V));
        }
        scores[c] = sc;
        if (o) {
            /* the other side's score, for its own prediction */
            double so = logprob(last + V, V, ch[0]);
            for (size_t j = 1; j < n; j++)
                so += logprob(o->logits + (j - 1) * V, V, ch[j]);
            scores[it->n_choices + c] = so;
        }
    }
    free(last);
    return LORA_OK;
}

/* Generation: NLL of the target under teacher forcing, then greedy
 * decoding from the cached prompt; gen receives the decoded tokens, tf
 * (nt × V) the teacher-forced logits rows. */
static int do_generate(side *s, const lora_item *it, uint64_t V, double *nll, int32_t *gen,
                       float *tf, lora_error *err)
{
    int rc;
    size_t np = it->n_prompt, nt = it->n_target;
    lora_run_truncate(s->run, 0);
    if ((rc = fwd(s, it->prompt, np, 1, err)) != LORA_OK)
        return rc;
    memcpy(tf, s->logits, V * sizeof(float));
    if (nt > 1) {
        if ((rc = fwd(s, it->target, nt - 1, nt - 1, err)) != LORA_OK)
            return rc;
        memcpy(tf + V, s->logits, (nt - 1) * V * sizeof(float));
    }
    *nll = 0;
    for (size_t j = 0; j < nt; j++)
        *nll -= logprob(tf + j * V, V, it->target[j]);
    /* greedy, one token at a time through the KV cache of the prompt */
    lora_run_truncate(s->run, np);
    gen[0] = argmax(tf, V);
    for (size_t j = 1; j < nt; j++) {
        if ((rc = fwd(s, &gen[j - 1], 1, 1, err)) != LORA_OK)
            return rc;
        gen[j] = argmax(s->logits, V);
    }
    return LORA_OK;
}

int lora_eval_run(lora_model *m, const lora_dataset *ds, const lora_eval_opts *opts,
                  lora_eval_result *res, lora_error *err)
{
    memset(res, 0, sizeof *res);
    const lora_model_config *c = lora_model_cfg(m);
    uint64_t V = c->vocab;
    size_t n = ds->n;
    if (opts->limit && opts->limit < n)
        n = opts->limit;
    size_t cap = 0, maxc = 1, maxt = 1;
    for (size_t i = 0; i < n; i++) {
        const lora_item *it = &ds->items[i];
        size_t l = it->n_prompt;
        size_t extra = it->kind == LORA_ITEM_GENERATE ? it->n_target : 0;
        for (size_t k = 0; k < it->n_choices; k++)
            if (it->choice_len[k] > extra)
                extra = it->choice_len[k];
        l += extra;
        if (l > c->max_positions)
            return lora_seterr(err, LORA_EINPUT, "line %zu: %zu tokens, more than the model's %llu positions",
                               it->line, l, (unsigned long long)c->max_positions);
        /* every id, also those only scored and never fed (a data set
         * parsed without a vocabulary must not index past the logits) */
        int32_t bad = -1;
        for (size_t k = 0; k < it->n_prompt; k++)
            if (it->prompt[k] < 0 || (uint64_t)it->prompt[k] >= V)
                bad = it->prompt[k];
        for (size_t k = 0; k < it->n_target; k++)
            if (it->target[k] < 0 || (uint64_t)it->target[k] >= V)
                bad = it->target[k];
        for (size_t ch = 0; ch < it->n_choices; ch++)
            for (size_t k = 0; k < it->choice_len[ch]; k++)
                if (it->choices[ch][k] < 0 || (uint64_t)it->choices[ch][k] >= V)
                    bad = it->choices[ch][k];
        if (bad != -1)
            return lora_seterr(err, LORA_EINPUT, "line %zu: token id %ld is outside the vocabulary (0..%llu)",
                               it->line, (long)bad, (unsigned long long)V - 1);
        if (l > cap)
            cap = l;
        if (it->n_choices > maxc)
            maxc = it->n_choices;
        if (it->n_target > maxt)
            maxt = it->n_target;
    }
    uint64_t lbytes;
    if (!lora_mul_ok(cap, V, &lbytes) || !lora_mul_ok(lbytes, sizeof(float), &lbytes) ||
        lbytes > SIZE_MAX / 4)
        return lora_seterr(err, LORA_EINPUT, "logits of %zu tokens × %llu ids do not fit in memory",
                           cap, (unsigned long long)V);
    side a = {0}, b = {0};
    int cmp = opts->compare_mode >= 0;
    double *scores = malloc(2 * maxc * sizeof *scores);
    int32_t *ga = malloc(maxt * sizeof *ga), *gb = malloc(maxt * sizeof *gb);
    float *tfa = malloc((size_t)maxt * V * sizeof(float));
    float *tfb = malloc((size_t)maxt * V * sizeof(float));
    int rc = LORA_OK;
    if (!scores || !ga || !gb || !tfa || !tfb) {
        rc = lora_oom(err);
        goto out;
    }
    if ((rc = lora_run_new(m, opts->mode, cap, &a.run, err)) != LORA_OK)
        goto out;
    if (cmp && (rc = lora_run_new(m, opts->compare_mode, cap, &b.run, err)) != LORA_OK)
        goto out;
    a.logits = malloc((size_t)lbytes);
    if (cmp)
        b.logits = malloc((size_t)lbytes);
    if (!a.logits || (cmp && !b.logits)) {
        rc = lora_oom(err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const lora_item *it = &ds->items[i];
        int agree = 1;
        if (it->kind == LORA_ITEM_CHOICE) {
            if ((rc = do_choice(&a, cmp ? &b : NULL, it, V, scores, &res->max_abs_dlogit, err)) !=
                LORA_OK)
                goto item_fail;
            size_t best = 0, bestb = 0;
            for (size_t k = 1; k < it->n_choices; k++) {
                if (scores[k] > scores[best])
                    best = k;
                if (cmp && scores[it->n_choices + k] > scores[it->n_choices + bestb])
                    bestb = k;
            }
            res->choice_items++;
            if (best == it->label) {
                res->choice_correct++;
                res->correct++;
            }
            res->nll_sum -= scores[it->label];
            res->nll_tokens += it->choice_len[it->label];
            agree = !cmp || best == bestb;
        } else {
            double nll, nllb;
            if ((rc = do_generate(&a, it, V, &nll, ga, tfa, err)) != LORA_OK)
                goto item_fail;
            if (cmp) {
                if ((rc = do_generate(&b, it, V, &nllb, gb, tfb, err)) != LORA_OK)
                    goto item_fail;
                res->max_abs_dlogit =
                    fmax(res->max_abs_dlogit, maxdiff(tfa, tfb, it->n_target * V));
                agree = memcmp(ga, gb, it->n_target * sizeof *ga) == 0;
            }
            res->gen_items++;
            if (memcmp(ga, it->target, it->n_target * sizeof *ga) == 0) {
                res->gen_correct++;
                res->correct++;
            }
            res->nll_sum += nll;
            res->nll_tokens += it->n_target;
        }
        res->items++;
        if (opts->progress)
            opts->progress(opts->progress_arg, i + 1, n);
        if (!agree) {
            if (!res->disagreements)
                res->first_disagreement = it->line;
            res->disagreements++;
        }
        continue;
    item_fail:
        lora_err_prefix(err, "line %zu", it->line);
        goto out;
    }
    res->accuracy = res->items ? (double)res->correct / (double)res->items : 0.0;
    res->mean_nll = res->nll_tokens ? res->nll_sum / (double)res->nll_tokens : 0.0;
    res->tokens = a.tokens;
    res->seconds = a.secs;
    res->tokens_per_second = a.secs > 0 ? (double)a.tokens / a.secs : 0.0;
out:
    lora_run_free(a.run);
    lora_run_free(b.run);
    free(a.logits);
    free(b.logits);
    free(scores);
    free(ga);
    free(gb);
    free(tfa);
    free(tfb);
    return rc;
}

void lora_recovery_free(lora_recovery *r, size_t n)
{
    if (!r)
        return;
    for (size_t i = 0; i < n; i++)
        free(r[i].tensor);
    free(r);
}

int lora_eval_check_recovery(const lora_ckpt *base, lora_adapter *ad, int nthreads,
                             lora_recovery **out, size_t *n, lora_error *err)
{
    *out = NULL;
    *n = 0;
    int rc = lora_adapter_bind(ad, base, err);
    if (rc != LORA_OK)
        return rc;
    lora_recovery *res = calloc(ad->n_modules ? ad->n_modules : 1, sizeof *res);
    if (!res)
        return lora_oom(err);
    size_t k = 0;
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *mod = &ad->modules[i];
        const lora_tensor *t = lora_ckpt_find(base, mod->target, NULL);
        if (!t || t->ndim != 2) {
            rc = lora_seterr(err, LORA_EINPUT, "%s: not a matrix in the base", mod->target);
            break;
        }
        unsigned esz = lora_dtype_bits(t->dtype) / 8;
        void *merged = malloc((size_t)t->nbytes), *back = malloc((size_t)t->nbytes);
        lora_fixes fixes = {0};
        lora_merge_stats st = {0};
        lora_term term = {mod, 1.0};
        res[k].tensor = lora_strdup(mod->target, err);
        if (!merged || !back || !res[k].tensor) {
            free(merged);
            free(back);
            rc = lora_oom(err);
            break;
        }
        rc = lora_tensor_merge(t->dtype, t->dtype, t->shape[0], t->shape[1], t->data, merged, &term,
                               1, LORA_ROUND_NEAREST, nthreads, &fixes, &st, err);
        if (rc == LORA_OK)
            rc = lora_tensor_unmerge(t->dtype, t->dtype, t->shape[0], t->shape[1], merged, back,
                                     &term, 1, &fixes, NULL, nthreads, &st, err);
        if (rc == LORA_OK) {
            /* bytes, not values: -0 against +0 or one NaN payload against
             * another is not recovery */
            const unsigned char *a = t->data, *b = back;
            uint64_t exact = 0;
            for (uint64_t e = 0; e < t->numel; e++)
                exact += memcmp(a + e * esz, b + e * esz, esz) == 0;
            res[k].dtype = t->dtype;
            res[k].total = t->numel;
            res[k].exact = exact;
            res[k].fixes = fixes.n;
        }
        k++;
        lora_fixes_free(&fixes);
        free(merged);
        free(back);
        if (rc != LORA_OK) {
            lora_err_prefix(err, "%s", mod->target);
            break;
        }
    }
    if (rc != LORA_OK) {
        lora_recovery_free(res, k);
        return rc;
    }
    *out = res;
    *n = k;
    return LORA_OK;
}

/* --record: an evaluation counts for a registered adapter only, so the
 * adapter must be found in the registry before anything is run (a
 * PEFT folder or an unregistered archive would waste the run).  The
 * row is found the way lora_adapter_load finds the adapter: task: by
 * lora_registry_resolve (the same choice), reg: by name@version, and
 * an archive file by the BLAKE2b-256 of its bytes (the registry's
 * content address). */
int lora_eval_registered(lora_registry *reg, const char *spec, lora_reg_adapter **out,
                         lora_error *err)
{
    *out = NULL;
    if (!spec || !*spec)
        return lora_seterr(err, LORA_EUSAGE, "empty adapter name");
    int rc;
    if (strncmp(spec, "task:", 5) == 0) {
        if (!spec[5])
            return lora_seterr(err, LORA_EUSAGE, "task: names no task");
        rc = lora_registry_resolve(reg, spec + 5, NULL, NULL, out, err);
    } else if (strncmp(spec, "reg:", 4) == 0) {
        if (!strchr(spec + 4, '@'))
            return lora_seterr(err, LORA_EUSAGE, "reg: needs NAME@VERSION (or task:TASK)");
        rc = lora_registry_get(reg, spec + 4, 0, out, err);
    } else {
        struct stat sb;
        if (stat(spec, &sb) != 0)
            return lora_seterr_errno(err, LORA_EINPUT, errno, "%s", spec);
        if (!S_ISREG(sb.st_mode))
            return lora_seterr(err, LORA_EINPUT,
                               "%s is not in the registry %s (only task:TASK, reg:NAME@VERSION "
                               "or a registered .lora archive can be recorded)",
                               spec, lora_registry_path(reg));
        unsigned char h[LORA_HASH_BYTES];
        char hex[2 * LORA_HASH_BYTES + 1];
        if ((rc = lora_hash_file(spec, sizeof h, h, NULL, err)) != LORA_OK)
            return rc;
        lora_hex(h, sizeof h, hex);
        rc = lora_registry_get(reg, hex, 0, out, err);
        if (rc == LORA_EINPUT)
            return lora_seterr(err, LORA_EINPUT,
                               "%s is not in the registry %s (no archive with BLAKE2b-256 %.16s...; "
                               "lora-registry add it first)",
                               spec, lora_registry_path(reg), hex);
    }
    if (rc != LORA_OK)
        lora_err_prefix(err, "%s (registry %s)", spec, lora_registry_path(reg));
    return rc;
}

int lora_eval_record(lora_registry *reg, const lora_reg_adapter *a, const lora_model *m,
                     const lora_adapter *ad, const char *dataset_hash, const char *dataset,
                     const lora_eval_result *res, size_t *recorded, lora_error *err)
{
    if (recorded)
        *recorded = 0;
    unsigned char bh[LORA_HASH_BYTES];
    char base_hex[2 * LORA_HASH_BYTES + 1];
    int rc = lora_base_hash(ad, lora_model_ckpt(m), bh, err);
    if (rc != LORA_OK)
        return rc;
    lora_hex(bh, sizeof bh, base_hex);
    size_t len = strlen(a->name) + strlen(a->version) + 2;
    char *id = malloc(len);
    if (!id)
        return lora_oom(err);
    snprintf(id, len, "%s@%s", a->name, a->version);
    lora_reg_eval ev = {.adapter = id, .base_hash = base_hex,
                        .dataset_hash = (char *)dataset_hash, .dataset = (char *)dataset,
                        .items = res->items};
    /* both metrics share one timestamp, so a query can pair them */
    ev.time = (int64_t)time(NULL);
    ev.metric = (char *)"accuracy";
    ev.value = res->accuracy;
    rc = lora_registry_record_eval(reg, &ev, err);
    if (rc == LORA_OK && recorded)
        *recorded = 1;
    /* no scored token (cannot happen with a parsed data set): no nll row
     * rather than a NaN the registry would refuse */
    if (rc == LORA_OK && res->nll_tokens > 0) {
        ev.metric = (char *)"nll";
        ev.value = res->mean_nll;
        rc = lora_registry_record_eval(reg, &ev, err);
        if (rc == LORA_OK && recorded)
            *recorded = 2;
    }
    free(id);
    return rc;
}

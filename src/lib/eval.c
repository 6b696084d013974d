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
#include "dora.h"

#include <errno.h>
#include <jansson.h>
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

/* Multiple choice: scores[c] for every choice (the log-probs of its
 * tokens past choice_skip[c]); the logits of every scored row are
 * compared with the other side's when there is one. */
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
        size_t n = it->choice_len[c], skip = it->choice_skip ? it->choice_skip[c] : 0;
        double sc = skip == 0 ? logprob(last, V, ch[0]) : 0;
        double so = o && skip == 0 ? logprob(last + V, V, ch[0]) : 0;
        if (n > 1) {
            for (int k = 0; k < 2 && sides[k]; k++) {
                lora_run_truncate(sides[k]->run, it->n_prompt);
                if ((rc = fwd(sides[k], ch, n - 1, n - 1, err)) != LORA_OK) {
                    free(last);
                    return rc;
                }
            }
            size_t j0 = skip > 1 ? skip : 1;
            for (size_t j = j0; j < n; j++)
                sc += logprob(s->logits + (j - 1) * V, V, ch[j]);
            if (o) {
                /* the other side's score, for its own prediction */
                for (size_t j = j0; j < n; j++)
                    so += logprob(o->logits + (j - 1) * V, V, ch[j]);
                *dmax = fmax(*dmax, maxdiff(s->logits + (j0 - 1) * V, o->logits + (j0 - 1) * V,
                                            (n - j0) * V));
            }
        }
        scores[c] = sc;
        if (o)
            scores[it->n_choices + c] = so;
    }
    free(last);
    return LORA_OK;
}

/* A generation's state and result. */
typedef struct gen_out {
    int32_t *ids;     /* generated, cap entries */
    size_t n;
    double nll;       /* of the scored target tokens, teacher-forced */
} gen_out;

/* Generation: NLL of the target's scored tokens under teacher forcing,
 * then greedy decoding after prompt + the target's context tokens
 * (target_skip) until EOS, the target is complete, MAXGEN tokens or the
 * last position.  tf receives the teacher-forced rows predicting the
 * scored tokens.  done(arg, ids, n) says whether the target is complete
 * in text terms (may be NULL). */
static int do_generate(side *s, const lora_item *it, uint64_t V, size_t maxgen, uint64_t maxpos,
                       int32_t eos, int (*done)(void *, const int32_t *, size_t, lora_error *),
                       void *done_arg, gen_out *g, float *tf, lora_error *err)
{
    int rc;
    size_t np = it->n_prompt, nt = it->n_target, skip = it->target_skip;
    lora_run_truncate(s->run, 0);
    if ((rc = fwd(s, it->prompt, np, 1, err)) != LORA_OK)
        return rc;
    /* rows predicting target[skip..nt): the prompt's last row when skip
     * is 0, then the rows of target[0..nt-1) */
    if (skip == 0)
        memcpy(tf, s->logits, V * sizeof(float));
    if (nt > 1) {
        if ((rc = fwd(s, it->target, nt - 1, nt - 1, err)) != LORA_OK)
            return rc;
        size_t from = skip ? skip - 1 : 0, rows = nt - 1 - from;
        memcpy(tf + (skip ? 0 : V), s->logits + from * V, rows * V * sizeof(float));
    }
    size_t ns = nt - skip;
    g->nll = 0;
    for (size_t j = 0; j < ns; j++)
        g->nll -= logprob(tf + j * V, V, it->target[skip + j]);
    /* greedy, one token at a time through the KV cache of the context */
    size_t ctx = np + skip;
    lora_run_truncate(s->run, ctx);
    g->n = 0;
    int32_t next = argmax(tf, V); /* tf's first row follows the whole context */
    for (;;) {
        if (next == eos)
            break;
        g->ids[g->n++] = next;
        if (g->n == ns && memcmp(g->ids, it->target + skip, ns * sizeof *g->ids) == 0)
            break;
        if (done) {
            int d = done(done_arg, g->ids, g->n, err);
            if (d < 0)
                return err->code;
            if (d)
                break;
        }
        if (g->n >= maxgen || ctx + g->n >= maxpos)
            break;
        if ((rc = fwd(s, &g->ids[g->n - 1], 1, 1, err)) != LORA_OK)
            return rc;
        next = argmax(s->logits, V);
    }
    return LORA_OK;
}

/* Ids as text for the metrics of an ids data set: "12 7 345". */
static char *ids_text(const int32_t *ids, size_t n, lora_error *err)
{
    char *t = malloc(n * 12 + 1);
    if (!t) {
        lora_oom(err);
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(t + o, "%s%ld", i ? " " : "", (long)ids[i]);
    t[o] = 0;
    return t;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when
 * invalid; *bad receives how many bytes one U+FFFD replaces then (the
 * maximal subpart of an ill-formed sequence, as Rust's
 * String::from_utf8_lossy, which Hugging Face decoding uses). */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    *bad = 1;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    for (size_t k = 1; k <= need; k++) {
        if (k >= n || s[k] < (k == 1 ? lo : 0x80) || s[k] > (k == 1 ? hi : 0xBF)) {
            *bad = k;
            return 0;
        }
    }
    return need + 1;
}

/* A malloc'd copy of T with every ill-formed UTF-8 subpart replaced by
 * U+FFFD, so that the text is valid JSON and what a reader sees. */
static char *lossy_utf8(const char *t, lora_error *err)
{
    size_t n = strlen(t);
    char *o = malloc(3 * n + 1);
    if (!o) {
        lora_oom(err);
        return NULL;
    }
    size_t j = 0;
    for (size_t i = 0; i < n;) {
        size_t bad, k = utf8_seq((const unsigned char *)t + i, n - i, &bad);
        if (k) {
            memcpy(o + j, t + i, k);
            j += k;
            i += k;
        } else {
            memcpy(o + j, "\xEF\xBF\xBD", 3);
            j += 3;
            i += bad;
        }
    }
    o[j] = 0;
    return o;
}

/* Text of generated (or target) ids: decoded through the codec for a
 * text item (ill-formed UTF-8 replaced), the ids in decimal otherwise. */
static char *gen_text(const lora_text_codec *tc, const int32_t *ids, size_t n, lora_error *err)
{
    if (!tc)
        return ids_text(ids, n, err);
    char *t = NULL;
    if (tc->decode(tc->arg, ids, n, 1, &t, err) != LORA_OK)
        return NULL;
    char *v = lossy_utf8(t, err);
    free(t);
    return v;
}

/* "Is the target complete" in text terms, for do_generate. */
typedef struct done_ctx {
    const lora_text_codec *tc;
    const char *ref;
} done_ctx;

static int text_done(void *arg, const int32_t *ids, size_t n, lora_error *err)
{
    done_ctx *d = arg;
    char *t = gen_text(d->tc, ids, n, err);
    if (!t)
        return -1;
    int eq = lora_exact_match(t, d->ref);
    free(t);
    return eq;
}

/* The reference a text generation is compared with: the target text as
 * given, or, when a token straddles the prompt boundary, the decoded
 * scored tokens (generation starts after the straddling token). */
static char *reference(const lora_item *it, const lora_text_codec *tc, lora_error *err)
{
    if (it->target_text && tc && it->target_skip == 0)
        return lora_strdup(it->target_text, err);
    return gen_text(it->target_text ? tc : NULL, it->target + it->target_skip,
                    it->n_target - it->target_skip, err);
}

void lora_eval_result_free(lora_eval_result *res)
{
    if (!res || !res->preds)
        return;
    for (size_t i = 0; i < res->items; i++) {
        free(res->preds[i].logprobs);
        free(res->preds[i].ids);
        free(res->preds[i].text);
        free(res->preds[i].reference);
    }
    free(res->preds);
    res->preds = NULL;
}

/* Check the items to evaluate (lengths, ids against the vocabulary, text
 * tokenized) and size the buffers. */
static int plan(const lora_dataset *ds, size_t n, const lora_model_config *c, size_t maxnew,
                const lora_text_codec *tc, size_t *cap, size_t *maxc, size_t *maxt, lora_error *err)
{
    uint64_t V = c->vocab;
    *cap = 0;
    *maxc = *maxt = 1;
    if (ds->text_items && !ds->tokenized)
        return lora_seterr(err, LORA_EINPUT,
                           "line %zu: text needs the model's tokenizer (tokenizer.json in the "
                           "model folder, or --tokenizer PATH), or give token ids",
                           ds->first_text_line);
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
        if (it->kind == LORA_ITEM_GENERATE && it->target_text && (!tc || !tc->decode))
            return lora_seterr(err, LORA_EUSAGE,
                               "line %zu: a text target needs a decoder for the generated ids",
                               it->line);
        if (it->kind == LORA_ITEM_GENERATE) {
            /* room for the generation past the target */
            l = it->n_prompt + it->target_skip + (it->n_target - it->target_skip) + maxnew;
            if (l > c->max_positions)
                l = (size_t)c->max_positions;
        }
        if (l > *cap)
            *cap = l;
        if (it->n_choices > *maxc)
            *maxc = it->n_choices;
        if (it->n_target + maxnew > *maxt)
            *maxt = it->n_target + maxnew;
    }
    return LORA_OK;
}

/* Work of lora_eval_run shared by its steps. */
typedef struct eval_ctx {
    const lora_eval_opts *opts;
    uint64_t V, maxpos;
    size_t maxnew;
    side a, b;
    int cmp;
    double *scores;
    gen_out ga, gb;
    float *tfa, *tfb;
    lora_bleu bleu;
    double r1, r2, rl;
} eval_ctx;

static int eval_choice(eval_ctx *e, const lora_item *it, lora_eval_result *res,
                       lora_prediction *pr, int *agree, lora_error *err)
{
    int rc = do_choice(&e->a, e->cmp ? &e->b : NULL, it, e->V, e->scores, &res->max_abs_dlogit, err);
    if (rc != LORA_OK)
        return rc;
    size_t best = 0, bestb = 0, nc = it->n_choices;
    for (size_t k = 1; k < nc; k++) {
        if (e->scores[k] > e->scores[best])
            best = k;
        if (e->cmp && e->scores[nc + k] > e->scores[nc + bestb])
            bestb = k;
    }
    res->choice_items++;
    int ok = best == it->label;
    if (ok) {
        res->choice_correct++;
        res->correct++;
    }
    uint64_t scored = it->choice_len[it->label] - (it->choice_skip ? it->choice_skip[it->label] : 0);
    res->nll_sum -= e->scores[it->label];
    res->nll_tokens += scored;
    *agree = !e->cmp || best == bestb;
    if (pr) {
        pr->correct = ok;
        pr->predicted = best;
        pr->nll = -e->scores[it->label];
        pr->nll_tokens = scored;
        if (!(pr->logprobs = malloc(nc * sizeof *pr->logprobs)))
            return lora_oom(err);
        memcpy(pr->logprobs, e->scores, nc * sizeof *pr->logprobs);
    }
    return LORA_OK;
}

static int eval_generate(eval_ctx *e, const lora_item *it, lora_eval_result *res,
                         lora_prediction *pr, int *agree, lora_error *err)
{
    const lora_text_codec *tc = it->target_text ? e->opts->codec : NULL;
    int32_t eos = e->opts->codec ? e->opts->codec->eos : -1;
    size_t maxgen = it->n_target - it->target_skip + e->maxnew;
    char *ref = reference(it, tc, err), *text = NULL;
    if (!ref)
        return err->code;
    done_ctx dc = {tc, ref};
    int (*done)(void *, const int32_t *, size_t, lora_error *) = tc ? text_done : NULL;
    int rc = do_generate(&e->a, it, e->V, maxgen, e->maxpos, eos, done, &dc, &e->ga, e->tfa, err);
    if (rc == LORA_OK && e->cmp) {
        rc = do_generate(&e->b, it, e->V, maxgen, e->maxpos, eos, done, &dc, &e->gb, e->tfb, err);
        if (rc == LORA_OK) {
            size_t ns = it->n_target - it->target_skip;
            res->max_abs_dlogit = fmax(res->max_abs_dlogit, maxdiff(e->tfa, e->tfb, ns * e->V));
            *agree = e->ga.n == e->gb.n && memcmp(e->ga.ids, e->gb.ids, e->ga.n * sizeof(int32_t)) == 0;
        }
    }
    if (rc == LORA_OK && !(text = gen_text(tc, e->ga.ids, e->ga.n, err)))
        rc = err->code;
    lora_rouge_f1 rf = {0, 0, 0};
    if (rc == LORA_OK)
        rc = lora_bleu_add(&e->bleu, text, ref, err);
    if (rc == LORA_OK)
        rc = lora_rouge(text, ref, &rf, err);
    if (rc != LORA_OK) {
        free(ref);
        free(text);
        return rc;
    }
    int ok = lora_exact_match(text, ref);
    res->gen_items++;
    if (ok) {
        res->gen_correct++;
        res->correct++;
    }
    e->r1 += rf.rouge1;
    e->r2 += rf.rouge2;
    e->rl += rf.rougeL;
    res->nll_sum += e->ga.nll;
    res->nll_tokens += it->n_target - it->target_skip;
    if (pr) {
        pr->correct = ok;
        pr->nll = e->ga.nll;
        pr->nll_tokens = it->n_target - it->target_skip;
        pr->rouge = rf;
        pr->text = text;
        pr->reference = ref;
        pr->n_ids = e->ga.n;
        if (!(pr->ids = malloc((e->ga.n ? e->ga.n : 1) * sizeof *pr->ids)))
            return lora_oom(err);
        memcpy(pr->ids, e->ga.ids, e->ga.n * sizeof *pr->ids);
        return LORA_OK;
    }
    free(text);
    free(ref);
    return LORA_OK;
}

static void finish(eval_ctx *e, lora_eval_result *res)
{
    res->accuracy = res->items ? (double)res->correct / (double)res->items : 0.0;
    res->mean_nll = res->nll_tokens ? res->nll_sum / (double)res->nll_tokens : NAN;
    res->perplexity = res->nll_tokens ? exp(res->mean_nll) : NAN;
    res->choice_accuracy =
        res->choice_items ? (double)res->choice_correct / (double)res->choice_items : NAN;
    res->exact_match = res->gen_items ? (double)res->gen_correct / (double)res->gen_items : NAN;
    res->bleu = lora_bleu_score(&e->bleu);
    double g = (double)res->gen_items;
    res->rouge1 = res->gen_items ? e->r1 / g : NAN;
    res->rouge2 = res->gen_items ? e->r2 / g : NAN;
    res->rougeL = res->gen_items ? e->rl / g : NAN;
    res->tokens = e->a.tokens;
    res->seconds = e->a.secs;
    res->tokens_per_second = e->a.secs > 0 ? (double)e->a.tokens / e->a.secs : 0.0;
}

int lora_eval_run(lora_model *m, const lora_dataset *ds, const lora_eval_opts *opts,
                  lora_eval_result *res, lora_error *err)
{
    memset(res, 0, sizeof *res);
    const lora_model_config *c = lora_model_cfg(m);
    eval_ctx e = {.opts = opts, .V = c->vocab, .maxpos = c->max_positions,
                  .maxnew = opts->max_new_tokens,
                  .cmp = opts->compare_mode >= 0};
    if (e.maxnew > c->max_positions)
        e.maxnew = (size_t)c->max_positions;
    lora_bleu_init(&e.bleu);
    uint64_t V = e.V;
    size_t n = ds->n;
    if (opts->limit && opts->limit < n)
        n = opts->limit;
    size_t cap, maxc, maxt;
    int rc = plan(ds, n, c, e.maxnew, opts->codec, &cap, &maxc, &maxt, err);
    if (rc != LORA_OK)
        return rc;
    uint64_t lbytes, tbytes;
    if (!lora_mul_ok(cap, V, &lbytes) || !lora_mul_ok(lbytes, sizeof(float), &lbytes) ||
        lbytes > SIZE_MAX / 4 || !lora_mul_ok(maxt, V * sizeof(float), &tbytes) ||
        tbytes > SIZE_MAX / 4)
        return lora_seterr(err, LORA_EINPUT, "logits of %zu tokens × %llu ids do not fit in memory",
                           cap, (unsigned long long)V);
    e.scores = malloc(2 * maxc * sizeof *e.scores);
    e.ga.ids = malloc(maxt * sizeof(int32_t));
    e.gb.ids = malloc(maxt * sizeof(int32_t));
    e.tfa = malloc((size_t)tbytes);
    e.tfb = malloc((size_t)tbytes);
    if (opts->keep_predictions)
        res->preds = calloc(n, sizeof *res->preds);
    if (!e.scores || !e.ga.ids || !e.gb.ids || !e.tfa || !e.tfb ||
        (opts->keep_predictions && !res->preds)) {
        rc = lora_oom(err);
        goto out;
    }
    if ((rc = lora_run_new(m, opts->mode, cap, &e.a.run, err)) != LORA_OK)
        goto out;
    if (e.cmp && (rc = lora_run_new(m, opts->compare_mode, cap, &e.b.run, err)) != LORA_OK)
        goto out;
    e.a.logits = malloc((size_t)lbytes);
    if (e.cmp)
        e.b.logits = malloc((size_t)lbytes);
    if (!e.a.logits || (e.cmp && !e.b.logits)) {
        rc = lora_oom(err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const lora_item *it = &ds->items[i];
        lora_prediction *pr = res->preds ? &res->preds[i] : NULL;
        if (pr)
            pr->item = i;
        int agree = 1;
        rc = it->kind == LORA_ITEM_CHOICE ? eval_choice(&e, it, res, pr, &agree, err)
                                          : eval_generate(&e, it, res, pr, &agree, err);
        res->items++; /* counted before a failure too: its prediction is freed */
        if (rc != LORA_OK) {
            lora_err_prefix(err, "line %zu", it->line);
            goto out;
        }
        if (opts->progress)
            opts->progress(opts->progress_arg, i + 1, n);
        if (!agree) {
            if (!res->disagreements)
                res->first_disagreement = it->line;
            res->disagreements++;
        }
    }
    finish(&e, res);
out:
    if (rc != LORA_OK)
        lora_eval_result_free(res);
    lora_run_free(e.a.run);
    lora_run_free(e.b.run);
    free(e.a.logits);
    free(e.b.logits);
    free(e.scores);
    free(e.ga.ids);
    free(e.gb.ids);
    free(e.tfa);
    free(e.tfb);
    return rc;
}

/* ---- predictions file ---- */

static json_t *id_array(const int32_t *ids, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_integer(ids[i]))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* NaN and infinities have no JSON form: null. */
static json_t *num(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static json_t *prediction_json(const lora_item *it, const lora_prediction *p)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = 0;
    if (it->id) {
        json_t *id = json_loads(it->id, JSON_DECODE_ANY, NULL);
        bad |= !id || json_object_set_new(o, "id", id);
    }
    bad |= json_object_set_new(o, "line", json_integer((json_int_t)it->line));
    if (it->kind == LORA_ITEM_CHOICE) {
        json_t *lp = json_array();
        for (size_t c = 0; lp && c < it->n_choices; c++)
            bad |= json_array_append_new(lp, num(p->logprobs[c]));
        bad |= json_object_set_new(o, "predicted", json_integer((json_int_t)p->predicted));
        bad |= json_object_set_new(o, "label", json_integer((json_int_t)it->label));
        bad |= !lp || json_object_set_new(o, "logprobs", lp);
    } else {
        bad |= json_object_set_new(o, "text", json_string_nocheck(p->text));
        bad |= json_object_set_new(o, "ids", id_array(p->ids, p->n_ids));
        bad |= json_object_set_new(o, "target", json_string_nocheck(p->reference));
        bad |= json_object_set_new(o, "rouge1", num(p->rouge.rouge1));
        bad |= json_object_set_new(o, "rouge2", num(p->rouge.rouge2));
        bad |= json_object_set_new(o, "rougeL", num(p->rouge.rougeL));
    }
    bad |= json_object_set_new(o, "correct", json_boolean(p->correct));
    bad |= json_object_set_new(o, "nll", num(p->nll));
    bad |= json_object_set_new(o, "nll_tokens", json_integer((json_int_t)p->nll_tokens));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int lora_eval_write_predictions(const char *path, const lora_dataset *ds,
                                const lora_eval_result *res, lora_error *err)
{
    if (!res->preds)
        return lora_seterr(err, LORA_EUSAGE, "no predictions were kept");
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return lora_oom(err);
    int rc = LORA_OK;
    for (size_t i = 0; i < res->items && rc == LORA_OK; i++) {
        const lora_prediction *p = &res->preds[i];
        json_t *o = prediction_json(&ds->items[p->item], p);
        /* text decoded from ids may hold invalid UTF-8: JSON escapes
         * what it can, and a line that cannot be written is an error */
        char *line = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17) | JSON_ENSURE_ASCII) : NULL;
        json_decref(o);
        if (!line) {
            rc = lora_seterr(err, LORA_EIO, "line %zu: prediction cannot be written as JSON",
                             ds->items[p->item].line);
            break;
        }
        size_t l = strlen(line);
        if (len + l + 1 > cap) {
            while (len + l + 1 > cap)
                cap *= 2;
            char *q = realloc(buf, cap);
            if (!q) {
                free(line);
                rc = lora_oom(err);
                break;
            }
            buf = q;
        }
        memcpy(buf + len, line, l);
        buf[len + l] = '\n';
        len += l + 1;
        free(line);
    }
    if (rc == LORA_OK) {
        if (strcmp(path, "-") == 0) {
            if (fwrite(buf, 1, len, stdout) != len || fflush(stdout) != 0)
                rc = lora_seterr_errno(err, LORA_EIO, errno, "standard output");
        } else {
            rc = lora_write_file_atomic(path, buf, len, 0644, err);
        }
    }
    free(buf);
    return rc;
}

/* ---- perplexity over a token sequence ---- */

/* Rows fed per forward call while scoring, to bound the logits buffer. */
#define PPL_CHUNK 64

int lora_eval_perplexity(lora_model *m, int mode, const int32_t *ids, size_t n, size_t context,
                         size_t stride, lora_ppl_result *res, lora_error *err)
{
    memset(res, 0, sizeof *res);
    const lora_model_config *c = lora_model_cfg(m);
    uint64_t V = c->vocab;
    if (context < 2 || context > c->max_positions)
        return lora_seterr(err, LORA_EUSAGE, "context %zu is not between 2 and the model's %llu positions",
                           context, (unsigned long long)c->max_positions);
    if (stride < 1 || stride > context)
        return lora_seterr(err, LORA_EUSAGE, "stride %zu is not between 1 and the context %zu",
                           stride, context);
    if (n < 2)
        return lora_seterr(err, LORA_EINPUT, "%zu token%s: nothing to score (at least 2 are needed)",
                           n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint64_t)ids[i] >= V)
            return lora_seterr(err, LORA_EINPUT, "token %zu: id %ld is outside the vocabulary (0..%llu)",
                               i, (long)ids[i], (unsigned long long)V - 1);
    lora_run *run = NULL;
    float *logits = malloc((size_t)PPL_CHUNK * V * sizeof(float));
    if (!logits)
        return lora_oom(err);
    int rc = lora_run_new(m, mode, context, &run, err);
    size_t prev_end = 0;
    for (size_t begin = 0; rc == LORA_OK; begin += stride) {
        size_t end = begin + context < n ? begin + context : n;
        /* score tokens [s0, end): those past the previous window, never
         * the window's first (nothing predicts it) */
        size_t s0 = prev_end > begin + 1 ? prev_end : begin + 1;
        lora_run_truncate(run, 0);
        /* the context before the first scored token, then the tokens
         * whose rows predict [s0, end) in chunks */
        if (s0 - 1 > begin)
            rc = lora_run_forward(run, ids + begin, s0 - 1 - begin, NULL, 0, err);
        for (size_t t = s0; rc == LORA_OK && t < end; t += PPL_CHUNK) {
            size_t k = end - t < PPL_CHUNK ? end - t : PPL_CHUNK;
            rc = lora_run_forward(run, ids + t - 1, k, logits, k, err);
            for (size_t j = 0; rc == LORA_OK && j < k; j++)
                res->nll_sum -= logprob(logits + j * V, V, ids[t + j]);
            res->tokens += k;
        }
        res->windows++;
        prev_end = end;
        if (end == n)
            break;
    }
    lora_run_free(run);
    free(logits);
    if (rc != LORA_OK)
        return rc;
    res->mean_nll = res->nll_sum / (double)res->tokens;
    res->perplexity = exp(res->mean_nll);
    return LORA_OK;
}

void lora_recovery_free(lora_recovery *r, size_t n)
{
    if (!r)
        return;
    for (size_t i = 0; i < n; i++)
        free(r[i].tensor);
    free(r);
}

/* --check-recovery of a DoRA module: merged as lora-merge does it, then
 * unmerged with the norms and corrections a receipt would keep. */
static int dora_roundtrip(const lora_tensor *t, const void *src, const lora_module *mod,
                          void *merged, void *back, lora_fixes *fixes, int nthreads,
                          lora_error *err)
{
    double *norm = malloc((size_t)mod->out * sizeof *norm);
    if (!norm)
        return lora_oom(err);
    lora_dora_job j = {.name = t->name, .in_dt = t->dtype, .out_dt = t->dtype,
                       .rows = t->shape[0], .cols = t->shape[1], .src = src, .dst = merged,
                       .m = mod, .norm = norm, .out_fixes = fixes,
                       .nthreads = nthreads};
    int rc = lora_dora_merge(&j, err);
    if (rc == LORA_OK) {
        j.src = merged;
        j.dst = back;
        j.out_fixes = NULL;
        j.fixes = fixes;
        rc = lora_dora_unmerge(&j, err);
    }
    free(norm);
    return rc;
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
        void *hf = NULL; /* a GGUF base's q/k in Hugging Face row order, as B */
        rc = lora_ckpt_hf_rows(base, t, &hf, err);
        const unsigned char *w0 = hf ? hf : t->data;
        if (rc == LORA_OK && mod->magnitude) {
            rc = dora_roundtrip(t, w0, mod, merged, back, &fixes, nthreads, err);
        } else if (rc == LORA_OK) {
            rc = lora_tensor_merge(t->dtype, t->dtype, t->shape[0], t->shape[1], w0, merged,
                                   &term, 1, LORA_ROUND_NEAREST, nthreads, &fixes, &st, err);
            if (rc == LORA_OK)
                rc = lora_tensor_unmerge(t->dtype, t->dtype, t->shape[0], t->shape[1], merged, back,
                                         &term, 1, &fixes, NULL, nthreads, &st, err);
        }
        if (rc == LORA_OK) {
            /* bytes, not values: -0 against +0 or one NaN payload against
             * another is not recovery */
            const unsigned char *a = w0, *b = back;
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
        free(hf);
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
 * lora_registry_resolve (the same choice), reg: by name[@version], and
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
        /* without @VERSION the newest, as loading takes it (the caller
         * loads the row found here, reg:NAME@VERSION) */
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
                     const char *mode, const char *base_name, const lora_eval_result *res,
                     size_t *recorded, lora_error *err)
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
                        .items = res->items, .mode = (char *)mode, .base_name = (char *)base_name};
    /* every metric shares one timestamp, so a query can pair them; a
     * metric no item has (NaN) gets no row rather than a 0 */
    ev.time = (int64_t)time(NULL);
    const struct {
        const char *name;
        double value;
    } rows[] = {{"accuracy", res->choice_accuracy}, {"exact_match", res->exact_match},
                {"bleu", res->bleu},                {"rouge1", res->rouge1},
                {"rouge2", res->rouge2},            {"rougeL", res->rougeL},
                {"nll", res->mean_nll},             {"perplexity", res->perplexity}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0] && rc == LORA_OK; i++) {
        if (!isfinite(rows[i].value))
            continue;
        ev.metric = (char *)rows[i].name;
        ev.value = rows[i].value;
        rc = lora_registry_record_eval(reg, &ev, err);
        if (rc == LORA_OK && recorded)
            (*recorded)++;
    }
    free(id);
    return rc;
}

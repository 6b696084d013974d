/*
 * metrics.c - the text metrics lora-eval reports for generation items,
 * as the LoRA paper's tables do: exact match, corpus BLEU-4 and ROUGE-1,
 * ROUGE-2 and ROUGE-L F1.
 *
 * Contracts (tests/check_metrics.c compares with values made by NLTK's
 * corpus_bleu and an independent Python script, tests/fixtures/metrics/):
 *  - tokens are the maximal runs of bytes other than ASCII whitespace
 *    (space, \t \n \v \f \r, \x1c-\x1f): Python's str.split() on text
 *    without non-ASCII spaces;
 *  - BLEU is NLTK 3.8 corpus_bleu with one reference per hypothesis,
 *    weights (1/4,1/4,1/4,1/4), no smoothing (SmoothingFunction.method0)
 *    and no auto_reweigh: clipped n-gram matches and hypothesis n-gram
 *    counts are summed over the corpus, where a hypothesis with fewer
 *    than n tokens counts 0 matches out of 1 n-gram (modified_precision's
 *    max(1, ...)); 0 when no unigram matches at all; an order with no
 *    match contributes log(DBL_MIN) (sys.float_info.min) instead of
 *    -inf; brevity penalty 1 when c > r, 0 when c = 0, else exp(1 - r/c);
 *  - ROUGE-N / ROUGE-L: per item, after lower-casing (each code point's
 *    simple lower case, utf8proc_tolower: Python's str.lower() but for
 *    the few characters whose lower case is several; bytes that are not
 *    UTF-8 stay as they are), precision =
 *    overlap / max(1, hypothesis count), recall = overlap / max(1,
 *    reference count), F1 = 2PR / (P + R), 0 when P + R = 0 (the
 *    rouge_score package's conventions); ROUGE-L's overlap is the length
 *    of the longest common subsequence of the token lists;
 *  - exact match: equal bytes after stripping surrounding ASCII whitespace (the same set).
 */
#include "internal.h"

#include <float.h>
#include <math.h>
#include <string.h>
#include <utf8proc.h>

/* Longest hypothesis or reference handled, in tokens (ROUGE-L's LCS is
 * quadratic in time, linear in memory). */
#define MT_MAX_TOKENS 65536u

static int is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

typedef struct toks {
    size_t n;
    const char **s;  /* start of each token (in the caller's string or low) */
    size_t *len;
    char *low;       /* lower-cased copy, when asked */
} toks;

static void toks_free(toks *t)
{
    free(t->s);
    free(t->len);
    free(t->low);
    memset(t, 0, sizeof *t);
}

static int split(const char *text, int lower, const char *what, toks *t, lora_error *err)
{
    memset(t, 0, sizeof *t);
    size_t L = strlen(text);
    const char *src = text;
    if (lower) {
        /* a lower case is at most 3/2 as long in UTF-8 (2 -> 3 bytes) */
        if (L > (SIZE_MAX - 1) / 2 || !(t->low = malloc(2 * L + 1)))
            return lora_oom(err);
        size_t o = 0;
        for (size_t i = 0; i < L;) {
            utf8proc_int32_t cp;
            utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i,
                                                  (utf8proc_ssize_t)(L - i), &cp);
            if (k <= 0) {
                t->low[o++] = text[i++];
                continue;
            }
            o += (size_t)utf8proc_encode_char(utf8proc_tolower(cp), (utf8proc_uint8_t *)t->low + o);
            i += (size_t)k;
        }
        t->low[o] = 0;
        L = o;
        src = t->low;
    }
    size_t n = 0;
    for (size_t i = 0; i < L;) {
        while (i < L && is_space((unsigned char)src[i]))
            i++;
        if (i == L)
            break;
        n++;
        while (i < L && !is_space((unsigned char)src[i]))
            i++;
    }
    if (n > MT_MAX_TOKENS) {
        toks_free(t);
        return lora_seterr(err, LORA_EINPUT, "%s has %zu words, more than the limit %u", what, n,
                           MT_MAX_TOKENS);
    }
    t->s = malloc((n ? n : 1) * sizeof *t->s);
    t->len = malloc((n ? n : 1) * sizeof *t->len);
    if (!t->s || !t->len) {
        toks_free(t);
        return lora_oom(err);
    }
    for (size_t i = 0; i < L;) {
        while (i < L && is_space((unsigned char)src[i]))
            i++;
        if (i == L)
            break;
        size_t b = i;
        while (i < L && !is_space((unsigned char)src[i]))
            i++;
        t->s[t->n] = src + b;
        t->len[t->n++] = i - b;
    }
    return LORA_OK;
}

static int tok_eq(const toks *a, size_t i, const toks *b, size_t j)
{
    return a->len[i] == b->len[j] && memcmp(a->s[i], b->s[j], a->len[i]) == 0;
}

static int gram_eq(const toks *a, size_t i, const toks *b, size_t j, unsigned n)
{
    for (unsigned k = 0; k < n; k++)
        if (!tok_eq(a, i + k, b, j + k))
            return 0;
    return 1;
}

/* Clipped n-gram overlap: Σ over distinct n-grams g of the hypothesis of
 * min(count in hyp, count in ref).  Each hypothesis n-gram occurrence is
 * matched against a not-yet-used reference occurrence; greedy matching
 * of equal items gives exactly the min of the counts.  Quadratic, which
 * is fine for sentences; *hn receives the hypothesis n-gram count. */
static int overlap(const toks *h, const toks *r, unsigned n, uint64_t *ov, uint64_t *hn,
                   uint64_t *rn, lora_error *err)
{
    size_t H = h->n >= n ? h->n - n + 1 : 0, R = r->n >= n ? r->n - n + 1 : 0;
    *hn = H;
    *rn = R;
    *ov = 0;
    if (!H || !R)
        return LORA_OK;
    unsigned char *used = calloc(R, 1);
    if (!used)
        return lora_oom(err);
    for (size_t i = 0; i < H; i++)
        for (size_t j = 0; j < R; j++)
            if (!used[j] && gram_eq(h, i, r, j, n)) {
                used[j] = 1;
                (*ov)++;
                break;
            }
    free(used);
    return LORA_OK;
}

void lora_bleu_init(lora_bleu *b)
{
    memset(b, 0, sizeof *b);
}

int lora_bleu_add(lora_bleu *b, const char *hyp, const char *ref, lora_error *err)
{
    toks h, r;
    int rc = split(hyp, 0, "hypothesis", &h, err);
    if (rc != LORA_OK)
        return rc;
    if ((rc = split(ref, 0, "reference", &r, err)) != LORA_OK) {
        toks_free(&h);
        return rc;
    }
    uint64_t ov[4], hn[4], rn;
    for (unsigned n = 1; n <= 4 && rc == LORA_OK; n++)
        rc = overlap(&h, &r, n, &ov[n - 1], &hn[n - 1], &rn, err);
    if (rc == LORA_OK) {
        for (unsigned n = 0; n < 4; n++) {
            b->match[n] += ov[n];
            b->total[n] += hn[n] ? hn[n] : 1; /* NLTK: max(1, count) */
        }
        b->hyp_len += h.n;
        b->ref_len += r.n;
        b->items++;
    }
    toks_free(&h);
    toks_free(&r);
    return rc;
}

double lora_bleu_score(const lora_bleu *b)
{
    if (!b->items)
        return NAN;
    if (b->match[0] == 0)
        return 0.0;
    double bp;
    if (b->hyp_len > b->ref_len)
        bp = 1.0;
    else if (b->hyp_len == 0)
        bp = 0.0;
    else
        bp = exp(1.0 - (double)b->ref_len / (double)b->hyp_len);
    double s = 0;
    for (unsigned n = 0; n < 4; n++) {
        double p = b->match[n] ? (double)b->match[n] / (double)b->total[n] : DBL_MIN;
        s += 0.25 * log(p);
    }
    return bp * exp(s);
}

static double f1(uint64_t ov, uint64_t hn, uint64_t rn)
{
    double p = (double)ov / (double)(hn ? hn : 1), r = (double)ov / (double)(rn ? rn : 1);
    return p + r > 0 ? 2 * p * r / (p + r) : 0.0;
}

/* Length of the longest common subsequence, one row of the table. */
static int lcs(const toks *a, const toks *b, uint64_t *out, lora_error *err)
{
    size_t *row = calloc(b->n + 1, sizeof *row);
    if (!row)
        return lora_oom(err);
    for (size_t i = 0; i < a->n; i++) {
        size_t diag = 0;
        for (size_t j = 1; j <= b->n; j++) {
            size_t up = row[j];
            row[j] = tok_eq(a, i, b, j - 1) ? diag + 1 : (row[j - 1] > up ? row[j - 1] : up);
            diag = up;
        }
    }
    *out = row[b->n];
    free(row);
    return LORA_OK;
}

int lora_rouge(const char *hyp, const char *ref, lora_rouge_f1 *out, lora_error *err)
{
    toks h, r;
    int rc = split(hyp, 1, "hypothesis", &h, err);
    if (rc != LORA_OK)
        return rc;
    if ((rc = split(ref, 1, "reference", &r, err)) != LORA_OK) {
        toks_free(&h);
        return rc;
    }
    uint64_t ov, hn, rn;
    if ((rc = overlap(&h, &r, 1, &ov, &hn, &rn, err)) == LORA_OK) {
        out->rouge1 = f1(ov, hn, rn);
        if ((rc = overlap(&h, &r, 2, &ov, &hn, &rn, err)) == LORA_OK) {
            out->rouge2 = f1(ov, hn, rn);
            if ((rc = lcs(&h, &r, &ov, err)) == LORA_OK)
                out->rougeL = f1(ov, h.n, r.n);
        }
    }
    toks_free(&h);
    toks_free(&r);
    return rc;
}

int lora_exact_match(const char *hyp, const char *ref)
{
    size_t a = strlen(hyp), b = strlen(ref);
    while (a && is_space((unsigned char)hyp[a - 1]))
        a--;
    while (b && is_space((unsigned char)ref[b - 1]))
        b--;
    size_t i = 0, j = 0;
    while (i < a && is_space((unsigned char)hyp[i]))
        i++;
    while (j < b && is_space((unsigned char)ref[j]))
        j++;
    return a - i == b - j && memcmp(hyp + i, ref + j, a - i) == 0;
}

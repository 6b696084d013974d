/*
 * combine.c - the combination methods of PEFT's utils/merge_utils.py
 * (TIES, DARE, magnitude pruning) on one module, computed on each
 * input's exact dense delta s_i·B_i·A_i (never on A and B separately,
 * which adds cross terms B_i·A_j: peers.md §1.6).
 *
 * Numerical contract (lora.h, section "combination methods"): every
 * operation in double in the order PEFT applies them — prune, then for
 * TIES elect the sign on the unweighted pruned deltas, weight, and
 * divide the agreeing sum by the number of agreeing deltas — sums over
 * the inputs in increasing i.  Equal magnitudes at the pruning
 * threshold keep the lowest row-major index first (torch.topk leaves
 * this unspecified).
 *
 * Memory: the inputs' deltas are asked for again (from their factors)
 * instead of being held, so a module costs four out×in buffers for any
 * number of inputs.
 */
#include "internal.h"

#include <math.h>
#include <string.h>

static const char *const method_names[] = {"sum", "ties", "dare_linear", "dare_ties",
                                           "magnitude_prune"};

const char *lora_combine_method_name(lora_combine_method m)
{
    return (unsigned)m < sizeof method_names / sizeof *method_names ? method_names[m] : "?";
}

int lora_combine_method_parse(const char *s)
{
    for (size_t i = 0; i < sizeof method_names / sizeof *method_names; i++)
        if (strcmp(s, method_names[i]) == 0)
            return (int)i;
    return -1;
}

/* ---- the seeded generator: splitmix64 seeding xoshiro256** ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void lora_combine_stream_init(uint64_t state[4], uint64_t seed, const char *name,
                              uint64_t stream)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    uint64_t x = seed ^ h ^ (0x9E3779B97F4A7C15ULL * (stream + 1));
    for (int i = 0; i < 4; i++)
        state[i] = splitmix64(&x);
}

uint64_t lora_combine_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static double next_uniform(uint64_t s[4])
{
    return (double)(lora_combine_next(s) >> 11) * 0x1.0p-53;
}

/* ---- magnitude pruning ---- */

static void swap(double *x, uint64_t a, uint64_t b)
{
    double t = x[a];
    x[a] = x[b];
    x[b] = t;
}

/* The k-th largest (1-based) of x[0..n), x reordered (quickselect,
 * median of three, Hoare partition: equal values split evenly). */
static double kth_largest(double *x, uint64_t n, uint64_t k)
{
    uint64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        /* Median of three moved to the middle: Hoare's scheme with the
         * pivot at the (floor) middle ends with lo <= j < hi. */
        uint64_t mid = lo + (hi - lo) / 2;
        if (x[mid] > x[lo])
            swap(x, mid, lo);
        if (x[hi] > x[lo])
            swap(x, hi, lo);
        if (x[hi] > x[mid])
            swap(x, hi, mid);
        double piv = x[mid];
        uint64_t i = lo, j = hi;
        for (;;) {
            while (x[i] > piv)
                i++;
            while (x[j] < piv)
                j--;
            if (i >= j)
                break;
            swap(x, i, j);
            i++;
            j--;
        }
        /* [lo, j] >= piv >= [j+1, hi] */
        if (want <= j)
            hi = j;
        else
            lo = j + 1;
    }
    return x[want];
}

/* Which elements prune_mag keeps: |d| > thr, and the first `ties`
 * elements (row-major) with |d| == thr.  keep_all when k >= n. */
typedef struct mag_rule {
    double thr;
    uint64_t ties;
    int keep_all, keep_none;
} mag_rule;

static mag_rule mag_rule_of(const double *d, uint64_t n, double density, double *tmp)
{
    mag_rule r = {0};
    double kd = floor(density * (double)n);
    if (density >= 1 || kd >= (double)n) {
        r.keep_all = 1;
        return r;
    }
    uint64_t k = (uint64_t)kd;
    if (k == 0) {
        r.keep_none = 1;
        return r;
    }
    for (uint64_t i = 0; i < n; i++)
        tmp[i] = fabs(d[i]);
    r.thr = kth_largest(tmp, n, k);
    uint64_t above = 0;
    for (uint64_t i = 0; i < n; i++)
        above += fabs(d[i]) > r.thr;
    r.ties = k - above;
    return r;
}

static void mag_apply(double *d, uint64_t n, const mag_rule *r)
{
    if (r->keep_all)
        return;
    uint64_t ties = r->ties;
    for (uint64_t i = 0; i < n; i++) {
        double a = fabs(d[i]);
        if (r->keep_none || a < r->thr)
            d[i] = 0.0;
        else if (a == r->thr) {
            if (ties)
                ties--;
            else
                d[i] = 0.0;
        }
    }
}

/* ---- random pruning (DARE) ---- */

static void rand_apply(double *d, uint64_t n, double density, const char *name, uint64_t seed,
                       uint64_t stream)
{
    if (density >= 1)
        return;
    uint64_t s[4];
    lora_combine_stream_init(s, seed, name, stream);
    for (uint64_t i = 0; i < n; i++)
        d[i] = next_uniform(s) < density ? d[i] / density : 0.0;
}

void lora_combine_ws_free(lora_combine_ws *ws)
{
    if (!ws)
        return;
    free(ws->d);
    free(ws->acc);
    free(ws->tmp);
    free(ws->cnt);
    memset(ws, 0, sizeof *ws);
}

/* Grow the buffers a method needs to n doubles each: the delta always,
 * the sign sums and counts for TIES, the magnitudes for pruning by
 * magnitude.  Buffers not needed stay as they are (NULL, or a size
 * ws->cap; a buffer exists at size cap or not at all). */
static int ws_reserve(lora_combine_ws *ws, uint64_t n, int ties, int mag, lora_error *err)
{
    int grow = n > ws->cap;
    uint64_t bytes, size = grow ? n : ws->cap; /* every buffer holds cap */
    if (!lora_mul_ok(size ? size : 1, sizeof(double), &bytes) || bytes > SIZE_MAX)
        return lora_seterr(err, LORA_EINPUT, "module too large");
    double **bufs[4] = {&ws->d, &ws->acc, &ws->cnt, &ws->tmp};
    int need[4] = {1, ties, ties, mag};
    for (int i = 0; i < 4; i++) {
        if (!(grow ? need[i] || *bufs[i] : need[i] && !*bufs[i]))
            continue;
        double *p = realloc(*bufs[i], (size_t)bytes);
        if (!p)
            return lora_oom(err);
        *bufs[i] = p;
    }
    if (grow)
        ws->cap = n;
    return LORA_OK;
}

static int sgn(double x)
{
    return (x > 0) - (x < 0);
}

/* One input's pruned delta into ws->d; the magnitude rule is found on
 * the first call (first = 1) and reused after, so both passes prune
 * the same elements. */
static int pruned(const lora_combine_opts *o, const char *name, uint64_t n, size_t i,
                  uint64_t stream, lora_delta_source src, void *ctx, lora_combine_ws *ws,
                  mag_rule *rule, int first, lora_error *err)
{
    int rc = src(ctx, i, ws->d, err);
    if (rc != LORA_OK)
        return rc;
    for (uint64_t e = 0; e < n; e++)
        if (!isfinite(ws->d[e]))
            return lora_seterr(err, LORA_EINPUT, "%s: delta of input %zu is not finite", name,
                               i + 1);
    if (o->method == LORA_COMBINE_DARE_LINEAR || o->method == LORA_COMBINE_DARE_TIES) {
        rand_apply(ws->d, n, o->density, name, o->seed, stream);
    } else if (o->method != LORA_COMBINE_SUM) {
        if (first)
            *rule = mag_rule_of(ws->d, n, o->density, ws->tmp);
        mag_apply(ws->d, n, rule);
    }
    return LORA_OK;
}

int lora_combine_module(const lora_combine_opts *o, const char *name, uint64_t out,
                        uint64_t in, size_t n, const double *weights, const uint64_t *streams,
                        lora_delta_source src, void *ctx, double *dst, lora_combine_ws *ws,
                        lora_error *err)
{
    if ((unsigned)o->method > LORA_COMBINE_MAGNITUDE_PRUNE)
        return lora_seterr(err, LORA_EUSAGE, "unknown combination method");
    if (o->method != LORA_COMBINE_SUM && !(o->density > 0 && isfinite(o->density)))
        return lora_seterr(err, LORA_EUSAGE, "density must be a number > 0");
    if (o->sign != LORA_SIGN_TOTAL && o->sign != LORA_SIGN_FREQUENCY)
        return lora_seterr(err, LORA_EUSAGE, "unknown majority sign method");
    uint64_t N;
    if (!lora_mul_ok(out, in, &N))
        return lora_seterr(err, LORA_EINPUT, "%s: module too large", name);
    int ties = o->method == LORA_COMBINE_TIES || o->method == LORA_COMBINE_DARE_TIES;
    int mag = o->method == LORA_COMBINE_TIES || o->method == LORA_COMBINE_MAGNITUDE_PRUNE;
    int rc = ws_reserve(ws, N, ties, mag, err);
    if (rc != LORA_OK)
        return rc;
    mag_rule *rules = calloc(n ? n : 1, sizeof *rules);
    if (!rules)
        return lora_oom(err);
    memset(dst, 0, (size_t)N * sizeof *dst);
    if (!ties) {
        for (size_t i = 0; i < n && rc == LORA_OK; i++) {
            rc = pruned(o, name, N, i, streams[i], src, ctx, ws, &rules[i], 1, err);
            for (uint64_t e = 0; e < N && rc == LORA_OK; e++)
                dst[e] += ws->d[e] * weights[i];
        }
        free(rules);
        return rc;
    }
    /* Elect the sign on the unweighted pruned deltas. */
    memset(ws->acc, 0, (size_t)N * sizeof *ws->acc);
    for (size_t i = 0; i < n && rc == LORA_OK; i++) {
        rc = pruned(o, name, N, i, streams[i], src, ctx, ws, &rules[i], 1, err);
        for (uint64_t e = 0; e < N && rc == LORA_OK; e++)
            ws->acc[e] += o->sign == LORA_SIGN_TOTAL ? ws->d[e] : (double)sgn(ws->d[e]);
    }
    /* Disjoint merge of the weighted deltas that agree with it. */
    memset(ws->cnt, 0, (size_t)N * sizeof *ws->cnt);
    for (size_t i = 0; i < n && rc == LORA_OK; i++) {
        rc = pruned(o, name, N, i, streams[i], src, ctx, ws, &rules[i], 0, err);
        for (uint64_t e = 0; e < N && rc == LORA_OK; e++) {
            int elected = ws->acc[e] >= 0 ? 1 : -1;
            if (sgn(ws->d[e]) == elected) {
                dst[e] += ws->d[e] * weights[i];
                ws->cnt[e] += 1.0;
            }
        }
    }
    for (uint64_t e = 0; e < N && rc == LORA_OK; e++)
        dst[e] /= ws->cnt[e] > 1.0 ? ws->cnt[e] : 1.0;
    free(rules);
    return rc;
}

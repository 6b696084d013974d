/*
 * check_merge.c - the element-level merge and unmerge (mergecore.c)
 * through the public in-memory calls: rounding against a reference
 * nearest-even, merged values against a plain reference computation
 * W0 + Σ w·s·BA, merge -> unmerge bit-exact for F32, F16 and BF16 with
 * adversarial values, transposed (Conv1D) modules, several adapters,
 * dtype changes, and thread-count independence.
 */
#include "testutil.h"
#include "internal.h"
#include "mergecore.h"
#include "fpbits.h"

#include <math.h>
#include <string.h>

/* ---- reference rounding: nearest even by search over all values ---- */

static double ref_maxval(int k)
{
    return k == FP_BF16 ? 0x1.fep127 : 65504.0;
}

/* 16-bit kinds only: the two neighbours by key, pick by the exact midpoint */
static uint32_t ref_round16(int k, double x)
{
    if (isnan(x))
        return 0xffff; /* caller only checks that it is a NaN */
    uint32_t inf = k == FP_BF16 ? 0x7f80 : 0x7c00;
    double top = k == FP_BF16 ? 0x1p128 : 65536.0; /* max + 1 ulp */
    double ax = fabs(x);
    uint32_t sign = signbit(x) ? 0x8000 : 0;
    if (ax >= top)
        return sign | inf;
    /* binary search largest non-negative finite b with value <= ax */
    uint32_t lo = 0, hi = inf - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi + 1) / 2;
        if (fp_to_d(k, mid) <= ax)
            lo = mid;
        else
            hi = mid - 1;
    }
    double vl = fp_to_d(k, lo);
    double vh = lo == inf - 1 ? top : fp_to_d(k, lo + 1);
    double mid = (vl + vh) / 2; /* exact: few significant bits */
    uint32_t r;
    if (ax < mid)
        r = lo;
    else if (ax > mid)
        r = lo + 1;
    else
        r = (lo & 1) ? lo + 1 : lo;
    (void)ref_maxval;
    return sign | r;
}

START_TEST(test_round16)
{
    uint64_t st = 7;
    for (int k = FP_F16; k <= FP_BF16; k++) {
        /* every value, its neighbours and the midpoints between them */
        for (uint32_t b = 0; b < 0x7fff; b++) {
            if (!fp_finite(k, b))
                continue;
            double v = fp_to_d(k, b);
            uint32_t n = b + 1;
            double vn = fp_finite(k, n) ? fp_to_d(k, n) : (k == FP_BF16 ? 0x1p128 : 65536.0);
            double pts[5] = {v, (v + vn) / 2, nextafter((v + vn) / 2, 0),
                             nextafter((v + vn) / 2, INFINITY), -v};
            for (int p = 0; p < 5; p++)
                ck_assert_msg(fp_round(k, pts[p]) == ref_round16(k, pts[p]),
                              "kind %d value %a: %04x vs %04x", k, pts[p],
                              fp_round(k, pts[p]), ref_round16(k, pts[p]));
            ck_assert(fp_to_d(k, b) == v && fp_round(k, v) == b);
        }
        for (int i = 0; i < 200000; i++) {
            double x = ldexp(tu_randu(&st), (int)(tu_rand(&st) % 80) - 60);
            ck_assert_msg(fp_round(k, x) == ref_round16(k, x), "kind %d %a", k, x);
            /* and the library's own conversions (dtype.c) agree */
            uint32_t lib = k == FP_BF16 ? lora_f64_to_bf16(x) : lora_f64_to_f16(x);
            ck_assert_msg(fp_round(k, x) == lib, "kind %d %a: dtype.c differs", k, x);
            uint32_t b = (uint32_t)(tu_rand(&st) & 0xffff);
            double back = k == FP_BF16 ? (double)lora_bf16_to_f32((uint16_t)b)
                                       : (double)lora_f16_to_f32((uint16_t)b);
            ck_assert(isnan(back) ? isnan(fp_to_d(k, b)) : back == fp_to_d(k, b));
        }
        /* NaN stays NaN, infinities and huge values */
        ck_assert(!fp_finite(k, fp_round(k, NAN)) && isnan(fp_to_d(k, fp_round(k, NAN))));
        ck_assert(fp_to_d(k, fp_round(k, INFINITY)) == INFINITY);
        ck_assert(fp_to_d(k, fp_round(k, -1e300)) == -INFINITY);
        ck_assert(fp_round(k, 1e-300) == 0 && fp_round(k, -1e-300) == 0x8000);
    }
}
END_TEST

START_TEST(test_key)
{
    for (int k = FP_F32; k <= FP_BF16; k++) {
        ck_assert_int_eq(fp_key(k, 0), 0);
        ck_assert_int_eq(fp_key(k, fp_signbit(k)), -1);
        ck_assert_uint_eq(fp_unkey(k, -1), fp_signbit(k));
        ck_assert_uint_eq(fp_unkey(k, fp_key(k, fp_signbit(k) | 5)), fp_signbit(k) | 5);
        ck_assert(fp_to_d(k, fp_unkey(k, fp_key(k, fp_round(k, 1.0)) + 1)) > 1.0);
        ck_assert(fp_to_d(k, fp_unkey(k, fp_key(k, fp_round(k, -1.0)) + 1)) > -1.0);
    }
}
END_TEST

/* ---- adapters built in memory ---- */

typedef struct {
    lora_module m;
    lora_tensor A, B;
    float *a, *b;
} tmod;

static void tmod_make(tmod *t, uint64_t out, uint64_t in, uint64_t r, double scale,
                      double mag, int transpose, uint64_t *st)
{
    memset(t, 0, sizeof *t);
    t->a = malloc(r * in * sizeof(float));
    t->b = malloc(out * r * sizeof(float));
    for (uint64_t i = 0; i < r * in; i++)
        t->a[i] = (float)(tu_randu(st) * mag);
    for (uint64_t i = 0; i < out * r; i++)
        t->b[i] = (float)(tu_randu(st) * mag);
    t->A = (lora_tensor){.name = "A", .dtype = LORA_DT_F32, .ndim = 2, .shape = {r, in},
                         .numel = r * in, .nbytes = r * in * 4, .data = t->a};
    t->B = (lora_tensor){.name = "B", .dtype = LORA_DT_F32, .ndim = 2, .shape = {out, r},
                         .numel = out * r, .nbytes = out * r * 4, .data = t->b};
    t->m.name = "mod";
    t->m.target = "mod.weight";
    t->m.A = &t->A;
    t->m.B = &t->B;
    t->m.r = r;
    t->m.in = in;
    t->m.out = out;
    t->m.alpha = scale * (double)r;
    t->m.scale = scale;
    t->m.transpose = transpose;
}

static void tmod_free(tmod *t)
{
    free(t->a);
    free(t->b);
}

/* d at tensor element (p, q) by the plainest loop */
static double ref_d(const lora_term *terms, size_t n, uint64_t p, uint64_t q)
{
    double d = 0;
    for (size_t t = 0; t < n; t++) {
        const lora_module *m = terms[t].module;
        const float *A = m->A->data, *B = m->B->data;
        uint64_t i = m->transpose ? q : p, j = m->transpose ? p : q;
        double acc = 0;
        for (uint64_t k = 0; k < m->r; k++)
            acc += (double)B[i * m->r + k] * (double)A[k * m->in + j];
        double v = (terms[t].weight * m->scale) * acc;
        d = t == 0 ? v : d + v;
    }
    return d;
}

static size_t kind_size(int k)
{
    return k == FP_F32 ? 4 : 2;
}

static lora_dtype kind_dt(int k)
{
    return k == FP_F32 ? LORA_DT_F32 : k == FP_F16 ? LORA_DT_F16 : LORA_DT_BF16;
}

static uint32_t get(const void *p, size_t i, size_t sz)
{
    if (sz == 2) {
        uint16_t v;
        memcpy(&v, (const char *)p + 2 * i, 2);
        return v;
    }
    uint32_t v;
    memcpy(&v, (const char *)p + 4 * i, 4);
    return v;
}

static void put(void *p, size_t i, size_t sz, uint32_t v)
{
    if (sz == 2) {
        uint16_t h = (uint16_t)v;
        memcpy((char *)p + 2 * i, &h, 2);
    } else
        memcpy((char *)p + 4 * i, &v, 4);
}

/* base values: weights of trained-model scale, then adversarial ones */
static void *make_base(int k, uint64_t n, uint64_t *st)
{
    size_t sz = kind_size(k);
    void *w = malloc(n * sz);
    for (uint64_t i = 0; i < n; i++)
        put(w, i, sz, fp_round(k, tu_randu(st) * 0.05));
    uint32_t sb = fp_signbit(k);
    uint32_t one = fp_round(k, 1.0), two = fp_round(k, 2.0);
    uint32_t special[] = {0, sb, 1, sb | 1, 2, one, one - 1, one + 1, two, two - 1,
                          fp_round(k, 0.5), fp_round(k, -0.25) - 1, fp_round(k, 1e-3),
                          fp_round(k, INFINITY), fp_round(k, -INFINITY), fp_round(k, NAN),
                          fp_round(k, k == FP_F32 ? 1e38 : 60000.0),
                          fp_round(k, 6e-5) /* near the F16 normal limit */};
    for (size_t s = 0; s < sizeof special / sizeof *special; s++)
        for (uint64_t i = s * 7; i < n; i += 97)
            put(w, i, sz, special[s]);
    return w;
}

static void roundtrip(int k, int ok, uint64_t rows, uint64_t cols, const lora_term *terms,
                      size_t nterms, lora_rounding mode, int threads, lora_merge_stats *stats)
{
    uint64_t st = 42 + (uint64_t)k * 3 + (uint64_t)ok;
    uint64_t n = rows * cols;
    size_t isz = kind_size(k), osz = kind_size(ok);
    void *w0 = make_base(k, n, &st);
    void *m = malloc(n * osz), *u = malloc(n * isz), *m1 = malloc(n * osz);
    lora_fixes fx = {0}, fx1 = {0};
    lora_error err;
    ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(ok), rows, cols, w0, m, terms, nterms,
                                       mode, threads, &fx, stats, &err), LORA_OK);
    /* same bytes and corrections with one thread */
    ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(ok), rows, cols, w0, m1, terms,
                                       nterms, mode, 1, &fx1, NULL, &err), LORA_OK);
    ck_assert(memcmp(m, m1, n * osz) == 0);
    ck_assert_uint_eq(fx.n, fx1.n);
    ck_assert(fx.n == 0 || memcmp(fx.index, fx1.index, fx.n * 8) == 0);
    /* merged values against the reference sum */
    for (uint64_t p = 0; p < rows; p++)
        for (uint64_t q = 0; q < cols; q++) {
            uint64_t i = p * cols + q;
            uint32_t wb = get(w0, i, isz), mb = get(m, i, osz);
            double d = ref_d(terms, nterms, p, q);
            if (!fp_finite(k, wb) || d == 0) {
                if (k == ok)
                    ck_assert_uint_eq(mb, wb); /* untouched, bit for bit */
                continue;
            }
            double s = fp_to_d(k, wb) + d;
            uint32_t near = fp_round(ok, s);
            if (mode == LORA_ROUND_NEAREST) {
                ck_assert_msg(mb == near, "element %llu: %x vs nearest %x",
                              (unsigned long long)i, mb, near);
            } else if (mb != near) {
                /* the other neighbour bracketing s: strictly within one ulp */
                int64_t dir = s > fp_to_d(ok, near) ? 1 : -1;
                ck_assert_uint_eq(mb, fp_unkey(ok, fp_key(ok, near) + dir));
            }
        }
    /* unmerge with corrections: exact, and counted */
    lora_merge_stats us = {0};
    ck_assert_int_eq(lora_tensor_unmerge(kind_dt(ok), kind_dt(k), rows, cols, m, u, terms, nterms,
                                         &fx, w0, threads, &us, &err), LORA_OK);
    ck_assert_msg(memcmp(u, w0, n * isz) == 0, "unmerge not exact (%llu inexact)",
                  (unsigned long long)us.inexact);
    ck_assert_uint_eq(us.inexact, 0);
    ck_assert_uint_eq(us.fixes, fx.n);
    /* without them: best effort, and the count says how many differ */
    lora_merge_stats bs = {0};
    ck_assert_int_eq(lora_tensor_unmerge(kind_dt(ok), kind_dt(k), rows, cols, m, u, terms, nterms,
                                         NULL, w0, threads, &bs, &err), LORA_OK);
    uint64_t diff = 0;
    for (uint64_t i = 0; i < n; i++)
        diff += get(u, i, isz) != get(w0, i, isz);
    ck_assert_uint_eq(bs.inexact, diff);
    ck_assert_uint_le(diff, fx.n);
    lora_fixes_free(&fx);
    lora_fixes_free(&fx1);
    free(w0); free(m); free(u); free(m1);
}

START_TEST(test_roundtrip_kinds)
{
    int k = _i; /* F32, F16, BF16 */
    uint64_t st = 5, rows = 37, cols = 45;
    tmod a, b;
    tmod_make(&a, rows, cols, 4, 2.0, 0.1, 0, &st);
    tmod_make(&b, cols, rows, 3, 0.5, 0.2, 1, &st); /* stored [in, out]: transposed */
    lora_term one[1] = {{&a.m, 1.0}};
    lora_term two[2] = {{&a.m, 0.7}, {&b.m, -1.5}};
    for (int mode = 0; mode < 2; mode++) {
        lora_merge_stats s = {0};
        roundtrip(k, k, rows, cols, one, 1, (lora_rounding)mode, 3, &s);
        ck_assert_uint_gt(s.changed, 0);
        roundtrip(k, k, rows, cols, two, 2, (lora_rounding)mode, 2, NULL);
    }
    /* a huge delta against W0: most elements need corrections, still exact */
    tmod h;
    tmod_make(&h, rows, cols, 2, 1e4, 1.0, 0, &st);
    lora_term big[1] = {{&h.m, 1.0}};
    lora_merge_stats s = {0};
    roundtrip(k, k, rows, cols, big, 1, LORA_ROUND_REVERSIBLE, 2, &s);
    ck_assert_uint_gt(s.fixes, s.changed / 4);
    /* a tiny delta: nothing to correct in reversible mode except specials */
    tmod_free(&h);
    tmod_free(&a);
    tmod_free(&b);
}
END_TEST

START_TEST(test_dtype_change)
{
    uint64_t st = 9, rows = 20, cols = 33;
    tmod a;
    tmod_make(&a, rows, cols, 4, 1.0, 0.1, 0, &st);
    lora_term one[1] = {{&a.m, 1.0}};
    roundtrip(FP_BF16, FP_F32, rows, cols, one, 1, LORA_ROUND_REVERSIBLE, 2, NULL);
    roundtrip(FP_F32, FP_BF16, rows, cols, one, 1, LORA_ROUND_REVERSIBLE, 2, NULL);
    roundtrip(FP_F16, FP_BF16, rows, cols, one, 1, LORA_ROUND_NEAREST, 1, NULL);
    tmod_free(&a);
}
END_TEST

/* reversible rounding needs fewer corrections than nearest on a
 * realistic adapter, and none where the delta is zero */
START_TEST(test_reversible_saves)
{
    uint64_t st = 11, rows = 64, cols = 256, n = rows * cols;
    tmod a;
    tmod_make(&a, rows, cols, 16, 2.0, 0.02, 0, &st);
    lora_term one[1] = {{&a.m, 1.0}};
    uint16_t *w = malloc(n * 2), *m = malloc(n * 2);
    for (uint64_t i = 0; i < n; i++)
        w[i] = (uint16_t)fp_round_bf16(tu_randu(&st) * 0.04);
    lora_fixes fr = {0}, fn = {0};
    lora_error err;
    lora_merge_stats sr = {0}, sn = {0};
    ck_assert_int_eq(lora_tensor_merge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, w, m, one, 1,
                                       LORA_ROUND_REVERSIBLE, 2, &fr, &sr, &err), 0);
    ck_assert_int_eq(lora_tensor_merge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, w, m, one, 1,
                                       LORA_ROUND_NEAREST, 2, &fn, &sn, &err), 0);
    /* where the nearest loses bits of W0, no neighbour keeps them
     * (lora-receipt(5)): the other neighbour is (almost) never taken */
    ck_assert_uint_le(fr.n, fn.n);
    ck_assert_uint_le(sr.other, fn.n - fr.n);
    ck_assert_uint_eq(sn.other, 0);
    ck_assert_uint_gt(fn.n, 0);
    size_t small = 0; /* the steps are the few bits rounded away: mostly ±1 */
    for (size_t i = 0; i < fn.n; i++) {
        ck_assert(fn.step[i] != 0);
        small += fn.step[i] >= -2 && fn.step[i] <= 2;
    }
    ck_assert_uint_gt(small * 2, fn.n);
    lora_fixes_free(&fr);
    lora_fixes_free(&fn);
    free(w); free(m);
    tmod_free(&a);
}
END_TEST

START_TEST(test_refusals)
{
    uint64_t st = 3;
    tmod a;
    tmod_make(&a, 4, 5, 2, 1.0, 0.1, 0, &st);
    lora_term one[1] = {{&a.m, 1.0}};
    float w[20] = {0}, o[20];
    lora_error err;
    /* shape mismatch names the module */
    ck_assert_int_eq(lora_tensor_merge(LORA_DT_F32, LORA_DT_F32, 5, 4, w, o, one, 1,
                                       LORA_ROUND_REVERSIBLE, 1, NULL, NULL, &err), LORA_EINPUT);
    ck_assert(strstr(err.msg, "mod") != NULL);
    /* unsupported dtype */
    ck_assert_int_eq(lora_tensor_merge(LORA_DT_I32, LORA_DT_F32, 4, 5, w, o, one, 1,
                                       LORA_ROUND_REVERSIBLE, 1, NULL, NULL, &err), LORA_EINPUT);
    /* a non-finite delta */
    a.a[3] = INFINITY;
    for (int i = 0; i < 20; i++)
        w[i] = 1.0f;
    ck_assert_int_eq(lora_tensor_merge(LORA_DT_F32, LORA_DT_F32, 4, 5, w, o, one, 1,
                                       LORA_ROUND_REVERSIBLE, 2, NULL, NULL, &err), LORA_EINPUT);
    ck_assert(strstr(err.msg, "not finite") != NULL);
    /* corrections out of order or out of range */
    a.a[3] = 0.5f;
    uint64_t idx[2] = {3, 2};
    int64_t steps[2] = {1, 1};
    lora_fixes bad = {.n = 2, .cap = 2, .index = idx, .step = steps};
    ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_F32, LORA_DT_F32, 4, 5, w, o, one, 1, &bad,
                                         NULL, 1, NULL, &err), LORA_EINPUT);
    idx[0] = 1; idx[1] = 20;
    ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_F32, LORA_DT_F32, 4, 5, w, o, one, 1, &bad,
                                         NULL, 1, NULL, &err), LORA_EINPUT);
    /* a step past the last representable value */
    idx[1] = 4;
    steps[1] = INT64_C(1) << 40;
    ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_F32, LORA_DT_F32, 4, 5, w, o, one, 1, &bad,
                                         NULL, 1, NULL, &err), LORA_EINPUT);
    ck_assert(strstr(err.msg, "out of range") != NULL);
    tmod_free(&a);
}
END_TEST


/* Unmerge without corrections or reference: may_differ counts exactly
 * the elements where u is not the only W0 that merges to m (checked by
 * searching the neighbourhood of u), it bounds the true number of wrong
 * elements from above, and inexact bounds it from below. */
START_TEST(test_may_differ)
{
    uint64_t st = 21, rows = 48, cols = 64, n = rows * cols;
    tmod a;
    tmod_make(&a, rows, cols, 8, 2.0, 0.05, 0, &st);
    lora_term one[1] = {{&a.m, 1.0}};
    uint16_t *w = malloc(n * 2), *m = malloc(n * 2), *u = malloc(n * 2);
    for (uint64_t i = 0; i < n; i++)
        w[i] = (uint16_t)fp_round_bf16(tu_randu(&st) * 0.04);
    w[0] = 0; /* +0: -0 merges to the same value */
    lora_error err;
    lora_merge_stats sm = {0}, su = {0};
    ck_assert_int_eq(lora_tensor_merge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, w, m, one, 1,
                                       LORA_ROUND_NEAREST, 2, NULL, &sm, &err), 0);
    ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, m, u, one, 1,
                                         NULL, NULL, 3, &su, &err), 0);
    uint64_t ref = 0, wrong = 0, certain = 0;
    for (uint64_t i = 0; i < n; i++) {
        double d = ref_d(one, 1, i / cols, i % cols);
        wrong += u[i] != w[i];
        size_t same = 0;
        int64_t k = fp_key(FP_BF16, u[i]);
        for (int64_t x = k - 64; x <= k + 64; x++) {
            uint32_t c = fp_unkey(FP_BF16, x);
            if (fp_finite(FP_BF16, c) && fp_round_bf16(fp_bf16_d(c) + (d == 0 ? 0 : d)) == m[i])
                same++;
        }
        int bad = d != 0 && fp_round_bf16(fp_bf16_d(u[i]) + d) != m[i];
        certain += bad;
        ref += bad || (d != 0 && same > 1);
    }
    ck_assert_uint_eq(su.may_differ, ref);
    ck_assert_uint_eq(su.inexact, certain);
    ck_assert_uint_ge(su.may_differ, wrong);
    ck_assert_uint_le(su.inexact, wrong);
    ck_assert_uint_gt(wrong, 0);
    ck_assert_uint_lt(su.may_differ, n / 4); /* a bound, not everything */
    /* with the reference the count is exact and may_differ is not used */
    lora_merge_stats sr = {0};
    ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, m, u, one, 1,
                                         NULL, w, 1, &sr, &err), 0);
    ck_assert_uint_eq(sr.inexact, wrong);
    free(w); free(m); free(u);
    tmod_free(&a);
}
END_TEST

/* A finite W0 + d (or a converted W0) beyond the output dtype: refused
 * naming the tensor, the count and the first element; with
 * allow_nonfinite written as inf and counted.  Unmerge too. */
START_TEST(test_nonfinite)
{
    uint64_t st = 4;
    tmod a;
    tmod_make(&a, 4, 4, 1, 1.0, 0.0, 0, &st);
    a.a[0] = 1; a.a[1] = 1;     /* A = [1 1 0 0] */
    a.b[0] = 1000; a.b[1] = -1000; /* d[0,0] = 1000, d[1,1] = -1000 */
    lora_term one[1] = {{&a.m, 1.0}};
    uint16_t w[16] = {0}, o[16];
    w[0] = (uint16_t)fp_round_f16(65000); w[5] = (uint16_t)fp_round_f16(-65000);
    w[10] = (uint16_t)fp_round_f16(1.0);
    lora_error err;
    ck_assert_int_eq(lora_tensor_merge(LORA_DT_F16, LORA_DT_F16, 4, 4, w, o, one, 1,
                                       LORA_ROUND_NEAREST, 2, NULL, NULL, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "2 value(s) not finite in F16") && strstr(err.msg, "element 0 [0, 0]"),
                  "%s", err.msg);
    /* F32 -> F16: an untouched 1e5 (d = 0) overflows in the conversion */
    float w32[16] = {0};
    w32[15] = 1e5f;
    ck_assert_int_eq(lora_tensor_merge(LORA_DT_F32, LORA_DT_F16, 4, 4, w32, o, one, 1,
                                       LORA_ROUND_NEAREST, 1, NULL, NULL, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "1 value(s)") && strstr(err.msg, "element 15 [3, 3]: 100000 converted"),
                  "%s", err.msg);
    /* allowed: written as ±inf, counted; an inf base element is not counted */
    lora_engine *e;
    ck_assert_int_eq(lora_engine_new(2, &e, &err), 0);
    lora_merge_stats s = {0};
    w[15] = 0x7c00;
    lora_tjob j;
    memset(&j, 0, sizeof j);
    j.name = "t";
    j.in_dt = j.out_dt = LORA_DT_F16;
    j.rows = j.cols = 4;
    j.src = w;
    j.dst = o;
    j.terms = one;
    j.nterms = 1;
    j.allow_nonfinite = 1;
    j.stats = &s;
    ck_assert_int_eq(lora_engine_run(e, &j, &err), 0);
    ck_assert_uint_eq(s.nonfinite, 2);
    ck_assert_uint_eq(o[0], 0x7c00);
    ck_assert_uint_eq(o[5], 0xfc00);
    /* unmerge of a finite merged value that leaves the range: the wrong adapter */
    uint16_t mm[16] = {0};
    mm[0] = (uint16_t)fp_round_f16(-65000);
    ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_F16, LORA_DT_F16, 4, 4, mm, o, one, 1, NULL,
                                         NULL, 1, NULL, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "1 value(s) not finite") != NULL, "%s", err.msg);
    lora_engine_free(e);
    tmod_free(&a);
}
END_TEST


/* lora_delta_nonfinite against a plain loop: the elements of s·B·A that
 * round to ±inf in the dtype; none when the bound shows it cannot. */
START_TEST(test_delta_nonfinite)
{
    uint64_t st = 8, rows = 30, cols = 40;
    tmod a;
    tmod_make(&a, rows, cols, 4, 1.0, 1.0, 0, &st);
    lora_term one[1] = {{&a.m, 1.0}};
    lora_error err;
    uint64_t bad;
    ck_assert_int_eq(lora_delta_nonfinite(&a.m, LORA_DT_F16, &bad, &err), 0);
    ck_assert_uint_eq(bad, 0);
    double scales[] = {2e4, 6e4, 1.25e307};
    for (size_t c = 0; c < 3; c++) {
        a.m.scale = scales[c];
        uint64_t ref16 = 0, ref32 = 0;
        for (uint64_t p = 0; p < rows; p++)
            for (uint64_t q = 0; q < cols; q++) {
                double d = ref_d(one, 1, p, q);
                ref16 += !isfinite(d) || !fp_finite(FP_F16, fp_round_f16(d));
                ref32 += !isfinite(d) || !fp_finite(FP_F32, fp_round_f32(d));
            }
        ck_assert_int_eq(lora_delta_nonfinite(&a.m, LORA_DT_F16, &bad, &err), 0);
        ck_assert_uint_eq(bad, ref16);
        ck_assert_int_eq(lora_delta_nonfinite(&a.m, LORA_DT_F32, &bad, &err), 0);
        ck_assert_uint_eq(bad, ref32);
        if (c == 1)
            ck_assert(ref16 > 0 && ref16 < rows * cols); /* some, not all */
        if (c == 2)
            ck_assert_uint_gt(ref32, rows * cols / 2);
    }
    a.m.scale = INFINITY;
    ck_assert_int_eq(lora_delta_nonfinite(&a.m, LORA_DT_BF16, &bad, &err), 0);
    ck_assert_uint_eq(bad, rows * cols);
    tmod_free(&a);
}
END_TEST

/* digests of test_merged_digest's merges, from the merge as of commit
 * d56d01d (before the fast BF16 pass): the numerical contract pinned */
#define PINNED_F32 UINT64_C(0xc9b6b3b58c95e388)
#define PINNED_F16 UINT64_C(0xb418942111724f4b)
#define PINNED_BF16 UINT64_C(0x4edacd5d4f67883a)
/* ---- coded corrections (receipt version 3) ---- */

/* Elements several base values merge to, by the plainest walk from W0
 * (merge is monotonic): the run of keys x with round(x + d) == m.
 * Returns the run length, 0 when longer than cap. */
static uint64_t ref_run(int k, int ok, uint32_t w, double d, uint32_t m, uint64_t cap)
{
    uint64_t len = 1;
    for (int dir = -1; dir <= 1; dir += 2)
        for (int64_t key = fp_key(k, w) + dir;; key += dir) {
            uint32_t x = fp_unkey(k, key);
            if (!fp_finite(k, x) || fp_round(ok, fp_to_d(k, x) + d) != m)
                break;
            if (++len > cap)
                return 0;
        }
    return len;
}

/* Merge with coded corrections: the merged bytes those of the plain
 * merge; bits and exceptions the same for any thread count; unmerge
 * exact; and, in nearest mode, exactly one rank per ambiguous element
 * of ceil(log2 run) bits, as the reference walk counts them. */
static void coded_roundtrip(int k, uint64_t rows, uint64_t cols, const lora_term *terms,
                            size_t nterms, lora_rounding mode, int threads)
{
    uint64_t st = 7 + (uint64_t)k, n = rows * cols;
    size_t sz = kind_size(k);
    void *w0 = make_base(k, n, &st);
    void *m = malloc(n * sz), *m1 = malloc(n * sz), *mp = malloc(n * sz), *u = malloc(n * sz);
    lora_fixes fx = {.coded = 1}, fx1 = {.coded = 1}, plain = {0};
    lora_error err;
    lora_merge_stats ms = {0};
    ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(k), rows, cols, w0, m, terms, nterms,
                                       mode, threads, &fx, &ms, &err), LORA_OK);
    ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(k), rows, cols, w0, m1, terms, nterms,
                                       mode, 1, &fx1, NULL, &err), LORA_OK);
    ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(k), rows, cols, w0, mp, terms, nterms,
                                       mode, threads, &plain, NULL, &err), LORA_OK);
    ck_assert(memcmp(m, mp, n * sz) == 0);
    ck_assert(memcmp(m, m1, n * sz) == 0);
    ck_assert_uint_eq(fx.nbits, fx1.nbits);
    ck_assert_uint_eq(fx.nblocks, fx1.nblocks);
    ck_assert(memcmp(fx.bstart, fx1.bstart, (fx.nblocks + 1) * 8) == 0);
    for (uint64_t i = 0; i < fx.nbits; i++)
        ck_assert_int_eq((fx.bits[i / 8] >> (i % 8)) & 1, (fx1.bits[i / 8] >> (i % 8)) & 1);
    ck_assert_uint_eq(fx.n, fx1.n);
    ck_assert(fx.n == 0 || memcmp(fx.index, fx1.index, fx.n * 8) == 0);
    ck_assert(fx.n == 0 || memcmp(fx.step, fx1.step, fx.n * 8) == 0);
    ck_assert_uint_le(fx.n, plain.n);
    if (mode == LORA_ROUND_NEAREST) {
        uint64_t amb = 0, bits = 0;
        int counted = 1;
        for (uint64_t p = 0; p < rows && counted; p++)
            for (uint64_t q = 0; q < cols; q++) {
                uint64_t i = p * cols + q;
                uint32_t wb = get(w0, i, sz), mb = get(m, i, sz);
                double d = ref_d(terms, nterms, p, q);
                if (!fp_finite(k, wb) || d == 0 || !fp_finite(k, mb))
                    continue;
                uint64_t len = ref_run(k, k, wb, d, mb, 1 << 12);
                if (!len) {
                    counted = 0;
                    break;
                }
                if (len > 1) {
                    amb++;
                    bits += (uint64_t)(64 - __builtin_clzll(len - 1));
                }
            }
        if (counted) {
            ck_assert_uint_eq(fx.nambig, amb);
            ck_assert_uint_eq(fx.nbits, bits);
        }
    }
    lora_merge_stats us = {0};
    ck_assert_int_eq(lora_tensor_unmerge(kind_dt(k), kind_dt(k), rows, cols, m, u, terms, nterms,
                                         &fx, w0, threads, &us, &err), LORA_OK);
    ck_assert_uint_eq(us.inexact, 0);
    /* without the reference (the streaming unmerge's path) */
    memset(u, 0, n * sz);
    ck_assert_int_eq(lora_tensor_unmerge(kind_dt(k), kind_dt(k), rows, cols, m, u, terms, nterms,
                                         &fx, NULL, threads, &us, &err), LORA_OK);
    ck_assert(memcmp(u, w0, n * sz) == 0);
    /* a bit flipped changes the result or is refused, never passes silently */
    if (fx.nbits) {
        fx.bits[0] ^= 1;
        int rc = lora_tensor_unmerge(kind_dt(k), kind_dt(k), rows, cols, m, u, terms, nterms,
                                     &fx, NULL, threads, NULL, &err);
        ck_assert(rc != LORA_OK || memcmp(u, w0, n * sz) != 0);
        fx.bits[0] ^= 1;
        /* bits of a block cut short, or the wrong block count: refused */
        fx.bstart[fx.nblocks] -= 1;
        ck_assert_int_eq(lora_tensor_unmerge(kind_dt(k), kind_dt(k), rows, cols, m, u, terms,
                                             nterms, &fx, NULL, threads, NULL, &err), LORA_EINPUT);
        fx.bstart[fx.nblocks] += 1;
        fx.nblocks++;
        ck_assert_int_eq(lora_tensor_unmerge(kind_dt(k), kind_dt(k), rows, cols, m, u, terms,
                                             nterms, &fx, NULL, threads, NULL, &err), LORA_EINPUT);
        fx.nblocks--;
    }
    lora_fixes_free(&fx);
    lora_fixes_free(&fx1);
    lora_fixes_free(&plain);
    free(w0); free(m); free(m1); free(mp); free(u);
}

START_TEST(test_coded)
{
    int k = _i;
    uint64_t st = 11, rows = 600, cols = 1000; /* 3 row blocks */
    tmod a, b, h;
    tmod_make(&a, rows, cols, 8, 2.0, 0.1, 0, &st);
    tmod_make(&b, cols, rows, 3, 0.5, 0.3, 1, &st);
    tmod_make(&h, rows, cols, 2, 30.0, 1.0, 0, &st); /* |d| >> |W0|: long runs */
    lora_term one[1] = {{&a.m, 1.0}};
    lora_term two[2] = {{&a.m, 0.7}, {&b.m, -1.5}};
    lora_term big[1] = {{&h.m, 1.0}};
    coded_roundtrip(k, rows, cols, one, 1, LORA_ROUND_NEAREST, 3);
    coded_roundtrip(k, rows, cols, two, 2, LORA_ROUND_NEAREST, 2);
    coded_roundtrip(k, rows, cols, big, 1, LORA_ROUND_NEAREST, 3);
    coded_roundtrip(k, rows, cols, two, 2, LORA_ROUND_REVERSIBLE, 3);
    /* the portable BF16 kernel too (mergefast.c: AVX2 where the CPU has it) */
    setenv("LORA_NO_AVX2", "1", 1);
    coded_roundtrip(k, rows, cols, two, 2, LORA_ROUND_NEAREST, 3);
    coded_roundtrip(k, rows, cols, big, 1, LORA_ROUND_NEAREST, 2);
    unsetenv("LORA_NO_AVX2");
    /* and the AVX2 one where the CPU has AVX-512 */
    setenv("LORA_NO_AVX512", "1", 1);
    coded_roundtrip(k, rows, cols, two, 2, LORA_ROUND_NEAREST, 3);
    coded_roundtrip(k, rows, cols, big, 1, LORA_ROUND_NEAREST, 2);
    unsetenv("LORA_NO_AVX512");
    tmod_free(&a);
    tmod_free(&b);
    tmod_free(&h);
}
END_TEST

/* The merged bytes are pinned: a digest (FNV-1a 64) of a merge of a
 * fixed base and adapter, per dtype, recorded with the merge before the
 * fast BF16 pass and the coded corrections existed.  A change to the
 * arithmetic changes it. */
static uint64_t fnv64(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * UINT64_C(0x100000001b3);
    return h;
}

START_TEST(test_merged_digest)
{
    static const uint64_t want[3] = {PINNED_F32, PINNED_F16, PINNED_BF16};
    int k = _i;
    uint64_t st = 2026, rows = 700, cols = 900;
    tmod a;
    tmod_make(&a, rows, cols, 16, 2.0, 0.08, 0, &st);
    lora_term one[1] = {{&a.m, 1.0}};
    void *w0 = make_base(k, rows * cols, &st), *m = malloc(rows * cols * kind_size(k));
    lora_error err;
    ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(k), rows, cols, w0, m, one, 1,
                                       LORA_ROUND_NEAREST, 2, NULL, NULL, &err), LORA_OK);
    uint64_t h = fnv64(m, rows * cols * kind_size(k));
    /* the portable BF16 kernel gives the same bytes */
    setenv("LORA_NO_AVX2", "1", 1);
    ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(k), rows, cols, w0, m, one, 1,
                                       LORA_ROUND_NEAREST, 2, NULL, NULL, &err), LORA_OK);
    unsetenv("LORA_NO_AVX2");
    ck_assert(fnv64(m, rows * cols * kind_size(k)) == h);
    setenv("LORA_NO_AVX512", "1", 1);
    ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(k), rows, cols, w0, m, one, 1,
                                       LORA_ROUND_NEAREST, 2, NULL, NULL, &err), LORA_OK);
    unsetenv("LORA_NO_AVX512");
    ck_assert(fnv64(m, rows * cols * kind_size(k)) == h);
    ck_assert_msg(h == want[k], "merged bytes of kind %d: digest %016llx, pinned %016llx", k,
                  (unsigned long long)h, (unsigned long long)want[k]);
    tmod_free(&a);
    free(w0);
    free(m);
}
END_TEST

/* Every element in a run of 8 or more members: W0 of magnitude in
 * [2^-10, 2^-9), d = 3 * 2^-8 (three binades up), so each element
 * carries 3 or 4 rank bits, more than a merge once reserved per element
 * (2): the bits must all be there and give W0 back, with and without
 * AVX-512 (a short reserve writes past the buffer: ASan's distcheck). */
START_TEST(test_dense_runs)
{
    uint64_t rows = 64, cols = 4096, n = rows * cols, st = 5;
    tmod t;
    tmod_make(&t, rows, cols, 1, 1.0, 1.0, 0, &st);
    for (uint64_t i = 0; i < cols; i++)
        t.a[i] = 1.0f;
    for (uint64_t i = 0; i < rows; i++)
        t.b[i] = 3.0f / 256.0f;
    lora_term one[1] = {{&t.m, 1.0}};
    uint16_t *w0 = malloc(n * 2), *m = malloc(n * 2), *u = malloc(n * 2);
    for (uint64_t i = 0; i < n; i++) /* 2^-10 (1 + k/128): exponent 117 */
        w0[i] = (uint16_t)((117u << 7) | (tu_rand(&st) >> 57));
    for (int kernel = 0; kernel < 2; kernel++) {
        if (kernel)
            setenv("LORA_NO_AVX512", "1", 1);
        lora_fixes fx = {.coded = 1};
        lora_error err;
        ck_assert_int_eq(lora_tensor_merge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, w0, m, one, 1,
                                           LORA_ROUND_NEAREST, 2, &fx, NULL, &err), LORA_OK);
        ck_assert_uint_eq(fx.nambig, n);
        ck_assert_uint_ge(fx.nbits, 3 * n); /* 3 or 4 bits each (runs of 8 to 12) */
        ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, m, u, one, 1,
                                             &fx, NULL, 2, NULL, &err), LORA_OK);
        ck_assert(memcmp(u, w0, n * 2) == 0);
        lora_fixes_free(&fx);
    }
    unsetenv("LORA_NO_AVX512");
    tmod_free(&t);
    free(w0);
    free(m);
    free(u);
}
END_TEST

/* The BF16 passes (mergefast.c) with every kernel: each lane a pass
 * leaves unflagged must be right by the reference rounding.  The merge:
 * m = round(W0 + d), and with the receipt's proof W0's neighbours do
 * not merge to m.  The unmerge: u + d merges to m and u's neighbours do
 * not (merging is monotonic), so u is the only base value.  Every BF16
 * bit pattern as the pass's input, against deltas of a few ulps,
 * near-ties down to double ulps, cancellations to and across 0 and
 * non-finite deltas.  And a pass must prove most lanes of ordinary data,
 * or it would pass this by flagging everything. */
static double bf16_ulp(uint16_t v)
{
    int e = (v >> 7) & 0xff;
    return ldexp(1.0, (e ? e : 1) - 134);
}

static double pass_delta(int v, uint16_t x, uint64_t *st)
{
    double q = bf16_ulp(x), xv = fp_to_d(FP_BF16, x);
    double g = tu_randu(st) + tu_randu(st) + tu_randu(st); /* about N(0, 1) */
    /* near-ties: at the proofs' margins (2^-20 q, float ulps) and at
     * double ulps */
    static const double tie[] = {0x1p-20, -0x1p-20, 0x1p-19, -0x1p-19, 0x1p-16,  -0x1p-16,
                                 0x1p-12, -0x1p-12, 0x1p-11, -0x1p-11, 0x1p-45,  -0x1p-45,
                                 0x1p-44, -0x1p-44, 0x3p-45, -0x3p-45, 0,        0x1p-18};
    switch (v) {
    case 0: return g * 0.3 * q;
    case 1: return g * q;
    case 2: return g * 3 * q;
    case 3: return g * 40 * q;
    case 4: return ((double)(int)(g * 3) + 0.5 + tie[tu_rand(st) % 18]) * q;
    case 5: return ((double)(int)(g * 3) - 0.5 + tie[tu_rand(st) % 18]) * q * 2;
    case 6: return -xv * (1 + g * 0x1p-6); /* x + d near 0 */
    case 7: return -xv * (2 + g * 0.1);    /* across 0 */
    case 8: return -xv * (0.75 + g * 0.05); /* two binades down */
    case 9: return xv * (3 + g);            /* binades up */
    case 10: /* one binade up, by about its width (runs of two) */
        if (xv == 0 || !isfinite(xv)) /* ilogb has no binade for them */
            return g * q;
        return copysign(ldexp(1.0, ilogb(xv) + 1), xv) * (1 + g * 0x1p-3) - xv;
    default: {
        static const double sp[] = {0, -0.0, NAN, INFINITY, -INFINITY, 1e38, 1e-40, -3e38};
        return sp[tu_rand(st) % 8];
    }
    }
}

/* Does base value x merge to m (reference rounding of the double sum)? */
static int merges_to(uint32_t x, double d, uint32_t m)
{
    return fp_finite(FP_BF16, x) && ref_round16(FP_BF16, fp_to_d(FP_BF16, x) + d) == m;
}

/* The reference run of m around base value c: its members below c and
 * above it in value (keys), at most lim each way */
static void ref_run_sides(uint16_t c, double d, uint16_t m, int64_t lim, int64_t *below,
                          int64_t *above)
{
    int64_t kc = fp_key(FP_BF16, c), kmax = 0x7f7f, kmin = -kmax - 1;
    *below = *above = 0;
    while (kc - *below - 1 >= kmin && *below < lim &&
           merges_to(fp_unkey(FP_BF16, kc - *below - 1), d, m))
        (*below)++;
    while (kc + *above + 1 <= kmax && *above < lim &&
           merges_to(fp_unkey(FP_BF16, kc + *above + 1), d, m))
        (*above)++;
}

/* A rank word lora_fast_ranks_bf16 gave for member c (merge: W0;
 * unmerge: the pass's u) of m's run: c must merge to m, and the run's
 * members by the reference walk are the word's rank below c and span
 * in all. */
static void check_word(uint16_t c, uint16_t m, double d, uint32_t word, int kv)
{
    ck_assert_msg(d != 0 && isfinite(d) && merges_to(c, d, m),
                  "kernel %d: word %x for %04x + %a -> %04x, which it does not give", kv, word, c,
                  d, m);
    int64_t below, above;
    ref_run_sides(c, d, m, 1 << 16, &below, &above);
    uint32_t want = (uint32_t)below | (uint32_t)(below + above) << 16;
    ck_assert_msg(word == want, "kernel %d: %04x + %a -> %04x: word %x, the run has %lld below "
                  "and %lld above (word %x)", kv, c, d, m, word, (long long)below,
                  (long long)above, want);
}

/* The queued pass of mode 0 (unmerge) or 1 (merge) on in: the same
 * values and flags as the flag pass gave (out, flag), the queue exactly
 * its flagged lanes in order, and each rank word right (check_word).
 * Returns the words found (not LORA_RANK_SLOW). */
static uint64_t check_queue(int mode, const uint16_t *in, const uint16_t *out, const double *d,
                            const unsigned char *flag, size_t n, int kv, size_t long_from,
                            uint64_t *long_runs, uint64_t *long_decided)
{
    uint16_t *out2 = malloc(n * 2);
    unsigned char *flag2 = malloc(n);
    uint32_t *qa = malloc(3 * (n + 16) * sizeof *qa);
    ck_assert(out2 && flag2 && qa);
    lora_flagq q = {qa, qa + n + 16, qa + 2 * (n + 16)};
    size_t nl = 0;
    if (mode)
        lora_fast_merge_q_bf16((const unsigned char *)in, (unsigned char *)out2, d, flag2, n, &q,
                               &nl);
    else
        lora_fast_unmerge_q_bf16((const unsigned char *)in, (unsigned char *)out2, d, flag2, n,
                                 &q, &nl);
    ck_assert_msg(memcmp(out, out2, n * 2) == 0, "mode %d kernel %d: queued pass, other values",
                  mode, kv);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (!flag[i])
            continue;
        ck_assert_msg(at < nl && q.idx[at] == i, "mode %d kernel %d: lane %zu flagged, not queued",
                      mode, kv, i);
        /* c | m << 16: the merge's W0 or the unmerge's u, and m */
        uint16_t c = mode ? in[i] : out[i], m = mode ? out[i] : in[i];
        float f = (float)d[i];
        uint32_t fb;
        memcpy(&fb, &f, 4);
        ck_assert_uint_eq(q.cm[at], c | (uint32_t)m << 16);
        ck_assert_uint_eq(q.df[at], fb);
        at++;
    }
    ck_assert_uint_eq(at, nl);
    lora_fast_ranks_bf16(&q, nl, d, q.df);
    uint64_t words = 0;
    for (size_t l = 0; l < nl; l++) {
        size_t i = q.idx[l];
        uint16_t c = mode ? in[i] : out[i], m = mode ? out[i] : in[i];
        /* from long_from on: long runs; those with c and m normal and m
         * right (a flagged lane's m is the float pass's guess) are the
         * ones z8_run_ends is meant to decide */
        int long_run = i >= long_from && (c & 0x7f80) && (c & 0x7f80) != 0x7f80 &&
                       (m & 0x7f80) && (m & 0x7f80) != 0x7f80 && merges_to(c, d[i], m);
        if (long_runs)
            *long_runs += (uint64_t)long_run;
        if (q.df[l] == LORA_RANK_SLOW)
            continue;
        words++;
        if (long_decided)
            *long_decided += (uint64_t)long_run;
        check_word(c, m, d[i], q.df[l], kv);
    }
    free(out2);
    free(flag2);
    free(qa);
    return words;
}

/* mode 0: unmerge; 1: merge with the proof; 2: merge without it */
static void pass_check(int mode)
{
    enum { NV = 12, N = 65536 * NV };
    uint16_t *in = malloc(N * 2), *out = malloc(N * 2);
    double *d = malloc(N * sizeof *d);
    unsigned char *flag = malloc(N);
    uint64_t st = 31 + (uint64_t)mode;
    ck_assert(in && out && d && flag);
    for (size_t i = 0; i < N; i++) {
        in[i] = (uint16_t)(i & 0xffff);
        d[i] = pass_delta((int)(i >> 16), in[i], &st);
    }
    static const char *const kernels[][2] = {{NULL, NULL}, {"1", NULL}, {"1", "1"}};
    for (int kv = 0; kv < 3; kv++) {
        kernels[kv][0] ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
        kernels[kv][1] ? setenv("LORA_NO_AVX2", "1", 1) : unsetenv("LORA_NO_AVX2");
        if (mode)
            lora_fast_merge_bf16((const unsigned char *)in, (unsigned char *)out, d, flag, N,
                                 mode == 1);
        else
            lora_fast_unmerge_bf16((const unsigned char *)in, (unsigned char *)out, d, flag, N);
        uint64_t ordinary = 0, ordinary_proven = 0;
        /* the runs of the flagged lanes (mergefast.c) against the
         * reference walk: base values in in (merge) or out */
        if (mode != 2)
            ck_assert_uint_gt(check_queue(mode, in, out, d, flag, N, kv, N, NULL, NULL), N / 100);
        for (size_t i = 0; i < N; i++) {
            int plain = (i >> 16) < 3 && (in[i] & 0x7f80) && (in[i] & 0x7f80) != 0x7f80;
            ordinary += (uint64_t)plain;
            if (flag[i])
                continue;
            ordinary_proven += (uint64_t)plain;
            ck_assert_msg(isfinite(d[i]) && fp_finite(FP_BF16, in[i]),
                          "mode %d kernel %d: lane %zu proven with a non-finite input", mode, kv,
                          i);
            /* base value and merged value of the lane */
            uint16_t w = mode ? in[i] : out[i], m = mode ? out[i] : in[i];
            ck_assert_msg(merges_to(w, d[i], m), "mode %d kernel %d: %04x + %a does not give %04x",
                          mode, kv, w, d[i], m);
            if (mode == 2)
                continue;
            int64_t key = fp_key(FP_BF16, w);
            for (int dir = -1; dir <= 1; dir += 2) {
                uint32_t x = fp_unkey(FP_BF16, key + dir);
                ck_assert_msg(!merges_to(x, d[i], m),
                              "mode %d kernel %d: %04x + %a proven the only base of %04x, but "
                              "%04x merges to it too", mode, kv, w, d[i], m, x);
            }
        }
        /* deltas of under 3 ulps of normal values: nearly all proven */
        ck_assert_msg(ordinary_proven * 10 > ordinary * 9, "mode %d kernel %d proves %llu of %llu",
                      mode, kv, (unsigned long long)ordinary_proven, (unsigned long long)ordinary);
    }
    unsetenv("LORA_NO_AVX512");
    unsetenv("LORA_NO_AVX2");
    free(in);
    free(out);
    free(d);
    free(flag);
}

START_TEST(test_pass_lanes)
{
    pass_check(_i);
}
END_TEST

/* The merge's rank words (check_queue) on pass_check's families plus
 * cancellations that leave W0 + d 1 to 12 binades below W0 (runs of 2
 * to 4096 members), on every kernel; the AVX-512 kernel must decide
 * nearly all of the long runs itself (z8_run_ends). */
static double rank_delta(int v, uint16_t x, uint64_t *st)
{
    if (v < 12)
        return pass_delta(v, x, st);
    double xv = fp_to_d(FP_BF16, x);
    int k = 1 + (int)(tu_rand(st) % 12);
    return -xv * (1 - ldexp(1.0 + tu_randu(st), -k));
}

START_TEST(test_rank_words)
{
    enum { NV = 13, N = 65536 * NV };
    uint16_t *in = malloc(N * 2), *out = malloc(N * 2);
    double *d = malloc(N * sizeof *d);
    unsigned char *flag = malloc(N);
    uint64_t st = 57;
    ck_assert(in && out && d && flag);
    for (size_t i = 0; i < N; i++) {
        in[i] = (uint16_t)(i & 0xffff);
        d[i] = rank_delta((int)(i >> 16), in[i], &st);
    }
    static const char *const kernels[][2] = {{NULL, NULL}, {"1", NULL}, {"1", "1"}};
    for (int kv = 0; kv < 3; kv++) {
        kernels[kv][0] ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
        kernels[kv][1] ? setenv("LORA_NO_AVX2", "1", 1) : unsetenv("LORA_NO_AVX2");
        lora_fast_merge_bf16((const unsigned char *)in, (unsigned char *)out, d, flag, N, 1);
        uint64_t long_runs = 0, long_decided = 0;
        uint64_t words = check_queue(1, in, out, d, flag, N, kv, 12 * 65536, &long_runs,
                                     &long_decided);
        ck_assert_msg(words > N / 10, "kernel %d decides %llu lanes", kv,
                      (unsigned long long)words);
        /* the portable kernels leave runs of over 15 members to the
         * full logic */
        if (kv == 0)
            ck_assert_msg(long_runs > 10000 && long_decided * 1000 > long_runs * 999,
                          "AVX-512 decides %llu of %llu long runs",
                          (unsigned long long)long_decided, (unsigned long long)long_runs);
    }
    unsetenv("LORA_NO_AVX512");
    unsetenv("LORA_NO_AVX2");
    free(in);
    free(out);
    free(d);
    free(flag);
}
END_TEST

/* The receipt's rank bits are the data's, not the kernel's: the same
 * bits with AVX-512, AVX2 and the portable kernels (whose fast passes
 * and runs decide different lanes), on data with long runs too. */
START_TEST(test_bits_kernels)
{
    uint64_t st = 77, rows = 300, cols = 1000;
    tmod a, h;
    tmod_make(&a, rows, cols, 8, 2.0, 0.1, 0, &st);
    tmod_make(&h, rows, cols, 2, 30.0, 1.0, 0, &st);
    void *w0 = make_base(FP_BF16, rows * cols, &st), *m = malloc(rows * cols * 2);
    for (int t = 0; t < 2; t++) {
        lora_term one[1] = {{t ? &h.m : &a.m, 1.0}};
        lora_fixes fx[3] = {{.coded = 1}, {.coded = 1}, {.coded = 1}};
        lora_merge_stats sts[4];
        memset(sts, 0, sizeof sts);
        static const char *const kernels[][2] = {{NULL, NULL}, {"1", NULL}, {"1", "1"}};
        lora_error err;
        for (int kv = 0; kv < 3; kv++) {
            kernels[kv][0] ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
            kernels[kv][1] ? setenv("LORA_NO_AVX2", "1", 1) : unsetenv("LORA_NO_AVX2");
            ck_assert_int_eq(lora_tensor_merge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, w0, m, one,
                                               1, LORA_ROUND_NEAREST, 2, &fx[kv], &sts[kv], &err),
                             LORA_OK);
        }
        unsetenv("LORA_NO_AVX512");
        unsetenv("LORA_NO_AVX2");
        /* the elements changed (d != 0, W0 finite), counted by the
         * receipt's queued pass as by the pass without a receipt */
        ck_assert_int_eq(lora_tensor_merge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, w0, m, one, 1,
                                           LORA_ROUND_NEAREST, 2, NULL, &sts[3], &err),
                         LORA_OK);
        for (int kv = 0; kv < 3; kv++)
            ck_assert_uint_eq(sts[kv].changed, sts[3].changed);
        ck_assert_uint_gt(sts[3].changed, rows * cols / 2);
        for (int kv = 1; kv < 3; kv++) {
            ck_assert_uint_eq(fx[kv].nbits, fx[0].nbits);
            ck_assert_uint_eq(fx[kv].n, fx[0].n);
            for (uint64_t i = 0; i < fx[0].nbits; i++)
                ck_assert_msg(((fx[kv].bits[i / 8] ^ fx[0].bits[i / 8]) >> (i % 8) & 1) == 0,
                              "adapter %d kernel %d: rank bit %llu differs", t, kv,
                              (unsigned long long)i);
        }
        for (int kv = 0; kv < 3; kv++)
            lora_fixes_free(&fx[kv]);
    }
    tmod_free(&a);
    tmod_free(&h);
    free(w0);
    free(m);
}
END_TEST

/* Long runs with ties at their ends: d = +-2^-8 (and a hair off), every
 * finite BF16 value as W0, so that W0 + d lands exactly on the rounding
 * midpoints of tiny and not so tiny W0 (runs of thousands of members
 * across 0, whose ends run_ends estimates and must verify): the rank
 * bits are one rank of ceil(log2 run) bits per ambiguous element, as the
 * reference walk counts them, and the unmerge gives W0 back. */
START_TEST(test_run_ties)
{
    static const double ds[] = {0x1p-8, -0x1p-8, 0x1.0001p-8, 0x3p-9};
    uint64_t cols = 65536, rows = 1, st = 3;
    uint16_t *w0 = malloc(cols * 2), *m = malloc(cols * 2), *u = malloc(cols * 2);
    for (uint64_t i = 0; i < cols; i++) /* finite ones; NaN and inf patterns as 0 */
        w0[i] = ((i >> 7) & 0xff) == 0xff ? 0 : (uint16_t)i;
    for (size_t v = 0; v < sizeof ds / sizeof *ds; v++) {
        tmod t;
        tmod_make(&t, rows, cols, 1, 1.0, 1.0, 0, &st);
        for (uint64_t i = 0; i < cols; i++)
            t.a[i] = 1.0f;
        t.b[0] = (float)ds[v];
        lora_term one[1] = {{&t.m, 1.0}};
        lora_fixes fx = {.coded = 1};
        lora_error err;
        ck_assert_int_eq(lora_tensor_merge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, w0, m, one, 1,
                                           LORA_ROUND_NEAREST, 2, &fx, NULL, &err), LORA_OK);
        uint64_t amb = 0, bits = 0;
        for (uint64_t i = 0; i < cols; i++) {
            if (!fp_finite(FP_BF16, m[i]))
                continue;
            uint64_t len = ref_run(FP_BF16, FP_BF16, w0[i], ds[v], m[i], 1 << 16);
            ck_assert_uint_gt(len, 0);
            if (len > 1) {
                amb++;
                bits += (uint64_t)(64 - __builtin_clzll(len - 1));
            }
        }
        ck_assert_uint_eq(fx.nambig, amb);
        ck_assert_uint_eq(fx.nbits, bits);
        ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_BF16, LORA_DT_BF16, rows, cols, m, u, one, 1,
                                             &fx, NULL, 2, NULL, &err), LORA_OK);
        for (uint64_t i = 0; i < cols; i++)
            ck_assert_msg(u[i] == w0[i], "d %a: W0 %04x came back as %04x (m %04x)", ds[v], w0[i],
                          u[i], m[i]);
        lora_fixes_free(&fx);
        tmod_free(&t);
    }
    free(w0);
    free(m);
    free(u);
}
END_TEST

/* lora_flag_masks against a plain loop, every byte value, lengths that
 * end inside a word, with AVX-512 and without (the multiply trick once
 * assumed flags below 8; the run codes go to 69). */
START_TEST(test_flag_masks)
{
    static unsigned char flag[1000];
    uint64_t out[16], st = 99;
    for (size_t i = 0; i < sizeof flag; i++) {
        st = st * 6364136223846793005ULL + 1442695040888963407ULL;
        flag[i] = (st >> 60) < 9 ? 0 : (unsigned char)(st >> 33); /* about half zeros */
    }
    for (int i = 0; i < 256; i++)
        flag[3 * i % 1000] = (unsigned char)i;
    static const size_t lens[] = {1000, 999, 960, 64, 63, 1};
    for (int kernel = 0; kernel < 2; kernel++) {
        if (kernel)
            setenv("LORA_NO_AVX512", "1", 1);
        for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
            size_t n = lens[l];
            memset(out, 0xa5, sizeof out);
            lora_flag_masks(flag, n, out);
            for (size_t w = 0; w < (n + 63) / 64; w++) {
                uint64_t want = 0;
                for (size_t i = 64 * w; i < n && i < 64 * w + 64; i++)
                    want |= (uint64_t)(flag[i] != 0) << (i - 64 * w);
                ck_assert_msg(out[w] == want, "n %zu word %zu kernel %d", n, w, kernel);
            }
        }
    }
    unsetenv("LORA_NO_AVX512");
}
END_TEST

/* lora_tensor_merge and lora_tensor_unmerge in place (out == w0, as
 * lora.h allows): the bytes and the receipt of the merge into another
 * buffer, and W0 back, on every kernel, with and without the receipt,
 * and on data with long runs and elements the full logic decides (the
 * fast passes store a part's results before they read its flagged
 * elements' inputs again: run_block reads each part from a copy). */
START_TEST(test_in_place)
{
    int k = _i;
    size_t es = k == FP_F32 ? 4 : 2;
    uint64_t st = 91, rows = 300, cols = 1000, n = rows * cols;
    tmod a, h;
    tmod_make(&a, rows, cols, 8, 2.0, 0.1, 0, &st);
    tmod_make(&h, rows, cols, 2, 30.0, 1.0, 0, &st);
    unsigned char *w0 = make_base(k, n, &st), *m = malloc(n * es), *ip = malloc(n * es);
    ck_assert(m && ip);
    static const char *const kernels[][2] = {{NULL, NULL}, {"1", NULL}, {"1", "1"}};
    lora_error err;
    for (int t = 0; t < 2; t++)
        for (int kv = 0; kv < 3; kv++)
            for (int rec = 0; rec < 2; rec++) {
                kernels[kv][0] ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
                kernels[kv][1] ? setenv("LORA_NO_AVX2", "1", 1) : unsetenv("LORA_NO_AVX2");
                lora_term one[1] = {{t ? &h.m : &a.m, 1.0}};
                lora_fixes fa = {.coded = 1}, fb = {.coded = 1};
                ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(k), rows, cols, w0, m, one,
                                                   1, LORA_ROUND_NEAREST, 2, rec ? &fa : NULL,
                                                   NULL, &err),
                                 LORA_OK);
                memcpy(ip, w0, n * es);
                ck_assert_int_eq(lora_tensor_merge(kind_dt(k), kind_dt(k), rows, cols, ip, ip, one,
                                                   1, LORA_ROUND_NEAREST, 2, rec ? &fb : NULL,
                                                   NULL, &err),
                                 LORA_OK);
                ck_assert_msg(memcmp(ip, m, n * es) == 0,
                              "kind %d adapter %d kernel %d receipt %d: in place, other values", k,
                              t, kv, rec);
                if (rec) {
                    ck_assert_uint_eq(fb.nbits, fa.nbits);
                    ck_assert_uint_eq(fb.n, fa.n);
                    ck_assert(fa.nbits == 0 || memcmp(fa.bits, fb.bits, (fa.nbits + 7) / 8) == 0);
                    /* and back, in place */
                    ck_assert_int_eq(lora_tensor_unmerge(kind_dt(k), kind_dt(k), rows, cols, ip, ip,
                                                         one, 1, &fa, NULL, 2, NULL, &err),
                                     LORA_OK);
                    ck_assert_msg(memcmp(ip, w0, n * es) == 0,
                                  "kind %d adapter %d kernel %d: in-place unmerge, not W0", k, t,
                                  kv);
                }
                lora_fixes_free(&fa);
                lora_fixes_free(&fb);
            }
    unsetenv("LORA_NO_AVX512");
    unsetenv("LORA_NO_AVX2");
    /* in place with another element size would overlap the blocks */
    if (k == FP_BF16) {
        lora_term one[1] = {{&a.m, 1.0}};
        ck_assert_int_eq(lora_tensor_merge(LORA_DT_BF16, LORA_DT_F32, rows, cols, w0, w0, one, 1,
                                           LORA_ROUND_NEAREST, 2, NULL, NULL, &err),
                         LORA_EUSAGE);
    }
    tmod_free(&a);
    tmod_free(&h);
    free(w0);
    free(m);
    free(ip);
}
END_TEST

/* ---- the F16 pass (mergefast_f16.c) ----
 * The same checks as test_pass_lanes for lora_fast_merge_f16: every
 * F16 bit pattern as W0 against families of deltas; each unflagged
 * lane must merge to its m by the reference rounding, with record
 * neither key-neighbour of W0 may merge to m, and a flagged lane keeps
 * W0 in dst.  Where the pass exists it must prove most ordinary lanes
 * (else it could pass by flagging everything); where it does not (no
 * AVX-512, or LORA_NO_AVX512) it flags every lane. */
static double f16_ulp(uint16_t v)
{
    int e = (v >> 10) & 0x1f;
    return ldexp(1.0, (e ? e : 1) - 25);
}

static int f16_merges_to(uint32_t x, double d, uint32_t m)
{
    return fp_finite(FP_F16, x) && ref_round16(FP_F16, fp_to_d(FP_F16, x) + d) == m;
}

/* An offset from a rounding midpoint, in ulps of the sum's binade: the
 * pass's margin 2^(j+4) float ulps (2^-13 ulp) and one float ulp either
 * side of it, a float ulp, single_fast's 2^-20, double ulps (2^-42). */
static double f16_tie(int j, uint64_t *st)
{
    j = j < 0 ? 0 : j > 8 ? 8 : j;
    double mg = ldexp(16.0, j) * 0x1p-13;
    const double tie[] = {mg,       -mg,      mg + 0x1p-13, -mg - 0x1p-13, mg - 0x1p-13,
                          0x1p-13 - mg, 0x1p-13, -0x1p-13, 0x1p-20,      -0x1p-20,
                          0x1p-42,  -0x1p-42, 0x3p-43,      0};
    return tie[tu_rand(st) % (sizeof tie / sizeof *tie)];
}

static double f16_delta(int v, uint16_t x, uint64_t *st)
{
    double q = f16_ulp(x), xv = fp_to_d(FP_F16, x);
    double g = tu_randu(st) + tu_randu(st) + tu_randu(st); /* about N(0, 1) */
    int finite = fp_finite(FP_F16, x);
    switch (v) {
    case 0: return g * 0.3 * q;
    case 1: return g * q;
    case 2: return g * 3 * q;
    case 3: return g * 40 * q;
    case 4: return ((double)(int)(g * 3) + 0.5 + f16_tie((int)(tu_rand(st) % 3) - 1, st)) * q;
    case 5: { /* near-ties k binades below x (cancellation) or up to 3 above */
        int k = (int)(tu_rand(st) % 13) - 3;
        uint32_t y = finite && xv != 0 ? fp_round_f16(ldexp(xv, -k) * (1 + g * 0x1p-4)) : 0;
        if (!fp_finite(FP_F16, y) || !(y & 0x7c00))
            return g * q;
        double yv = fp_to_d(FP_F16, y);
        int j = k + (int)(tu_rand(st) % 3) - 1;
        return copysign(fabs(yv) + f16_ulp((uint16_t)y) * (0.5 + f16_tie(j, st)), yv) - xv;
    }
    case 6: return -xv * (1 + g * 0x1p-6); /* x + d near 0 */
    case 7: return -xv * (2 + g * 0.1);    /* across 0 */
    case 8: return -xv * (0.75 + g * 0.05); /* two binades down */
    case 9: return xv * (3 + g);            /* binades up */
    case 10: /* one binade up, by about its width */
        if (xv == 0 || !finite)
            return g * q;
        return copysign(ldexp(1.0, ilogb(xv) + 1), xv) * (1 + g * 0x1p-3) - xv;
    case 11: /* to 65504, the tie at 65520 and beyond (infinity) */
        return copysign(65520 + (tu_rand(st) % 4 ? g * 12 : 0), finite ? xv : 1.0) -
               (finite ? xv : 0);
    case 12: /* to subnormal results and the normal limit 2^-14 */
        return (tu_rand(st) % 4 ? g * 0x1p-14 : 0x1p-14 - 0x1p-25) - (finite ? xv : 0);
    case 13: { /* sums a few float ulps (2^(k-13) ulps of y) from a midpoint k binades
                * below x (either sign), d's bits below float's at random: float's
                * rounding of d errs by up to half d's float ulp (2^k float ulps of the sum) */
        static const double c[] = {0.5, 0.625, 0.75, 0.875, 1, 1.5, 2, 3, 6};
        int k = (int)(tu_rand(st) % 10);
        uint32_t y = finite && xv != 0 ? fp_round_f16(ldexp(xv, -k) * (1 + g * 0x1p-4)) : 0;
        if (!fp_finite(FP_F16, y) || !(y & 0x7c00))
            return g * q;
        y ^= tu_rand(st) % 2 ? 0x8000u : 0;
        double off = c[tu_rand(st) % 9] * ldexp(1.0, k - 13) * (tu_rand(st) % 2 ? 1 : -1);
        double yv = fp_to_d(FP_F16, y);
        double d0 = copysign(fabs(yv) + f16_ulp((uint16_t)y) * (0.5 + off), yv) - xv;
        return d0 == 0 ? g * q : d0 + tu_randu(st) * ldexp(0.5, ilogb(d0) - 23);
    }
    default: {
        const double sp[] = {0,     -0.0, NAN,    INFINITY, -INFINITY, 1e38,
                             1e-40, -3e38, 1e300, 1e-300,   finite ? -xv : 0, 1e-8};
        return sp[tu_rand(st) % 12];
    }
    }
}

/* lora_fast_merge_q_f16 queues the lanes lora_fast_merge_f16 flagged
 * (out: its results), and the runs lora_fast_runs_f16 finds for them
 * are lora_fast_run_f16's and the reference walk's: m = round(W0 + d),
 * and the members of the run by magnitude within W0's sign, a below W0
 * and b above (the full logic's rank bits are computed from them). */
static void f16_queue_check(const uint16_t *in, const uint16_t *out, const double *d,
                            const unsigned char *flag, size_t n, int record, uint64_t changed,
                            int kv)
{
    uint16_t *o2 = malloc(n * 2), *mv = malloc(n * 2);
    uint32_t *q = malloc((n + 16) * sizeof *q);
    signed char *ab = malloc(n);
    size_t nq = 0, nf = 0, found = 0;
    ck_assert(o2 && q && mv && ab);
    ck_assert_uint_eq(lora_fast_merge_q_f16((const unsigned char *)in, (unsigned char *)o2, d, n,
                                            record, q, &nq), changed);
    ck_assert(memcmp(o2, out, n * 2) == 0);
    for (size_t i = 0; i < n; i++)
        if (flag[i]) {
            ck_assert_msg(nf < nq && q[nf] == i, "kernel %d: flagged lane %zu not queued", kv, i);
            nf++;
        }
    ck_assert_uint_eq(nq, nf);
    lora_fast_runs_f16((const unsigned char *)in, d, q, nq, ab, mv);
    for (size_t k = 0; k < nq; k++) {
        uint16_t c = in[q[k]], m1;
        double dk = d[q[k]];
        int ab1 = lora_fast_run_f16(c, dk, &m1);
        ck_assert_msg(ab1 == ab[k], "kernel %d: %04x + %a: run %d, scalar %d", kv, c, dk, ab[k],
                      ab1);
        if (ab1 < 0)
            continue;
        found++;
        ck_assert_msg(m1 == mv[k] && f16_merges_to(c, dk, m1), "kernel %d: %04x + %a: m %04x",
                      kv, c, dk, mv[k]);
        uint32_t sg = c & 0x8000u, mag = c & 0x7fffu;
        unsigned na = 0, nb = 0;
        while (na < mag && na < 3 && f16_merges_to(sg | (mag - na - 1), dk, m1))
            na++;
        while (mag + nb + 1 < 0x7c00u && nb < 3 && f16_merges_to(sg | (mag + nb + 1), dk, m1))
            nb++;
        ck_assert_msg(na == ((unsigned)ab1 & 1) && nb == (unsigned)ab1 >> 1,
                      "kernel %d: %04x + %a -> %04x: run %d, the reference has %u below and %u "
                      "above", kv, c, dk, m1, ab1, na, nb);
    }
    /* many of these lanes' runs are found (of ordinary data's, most) */
    ck_assert_msg(found * 3 > nq, "kernel %d: runs of %zu of %zu lanes found", kv, found, nq);
    free(o2);
    free(q);
    free(mv);
    free(ab);
}

static void f16_pass_check(int record)
{
    enum { NV = 15, N = 65536 * NV, TAIL = 5 };
    uint16_t *in = malloc(N * 2), *out = malloc(N * 2);
    double *d = malloc(N * sizeof *d);
    unsigned char *flag = malloc(N);
    uint64_t st = 41 + (uint64_t)record;
    ck_assert(in && out && d && flag);
    for (size_t i = 0; i < N; i++) {
        in[i] = (uint16_t)(i & 0xffff);
        d[i] = f16_delta((int)(i >> 16), in[i], &st);
    }
    for (int kv = 0; kv < 2; kv++) {
        kv ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
        int avail = lora_fast_f16_available();
        size_t n = N - TAIL; /* a last step of 11 lanes */
        memset(out, 0xa5, N * 2);
        memset(flag, 0xaa, N);
        uint64_t changed = lora_fast_merge_f16((const unsigned char *)in, (unsigned char *)out,
                                               d, flag, n, record);
        uint64_t ordinary = 0, ordinary_proven = 0, proven_nz = 0;
        for (size_t i = 0; i < n; i++) {
            uint16_t w = in[i], m = out[i];
            uint32_t e = (w >> 10) & 0x1f;
            int plain = (i >> 16) < 3 && e != 0 && e != 31;
            ordinary += (uint64_t)plain;
            ck_assert_msg(flag[i] <= 1, "lane %zu: flag %u", i, flag[i]);
            if (flag[i]) {
                ck_assert_msg(m == w, "kernel %d: flagged lane %zu: dst %04x, W0 %04x", kv, i, m,
                              w);
                continue;
            }
            ordinary_proven += (uint64_t)plain;
            proven_nz += d[i] != 0;
            ck_assert_msg(isfinite(d[i]) && e != 0 && e != 31,
                          "record %d kernel %d: lane %zu (%04x + %a) proven", record, kv, i, w,
                          d[i]);
            ck_assert_msg(f16_merges_to(w, d[i], m), "record %d kernel %d: %04x + %a does not "
                          "give %04x", record, kv, w, d[i], m);
            if (!record)
                continue;
            int64_t key = fp_key(FP_F16, w);
            for (int dir = -1; dir <= 1; dir += 2) {
                uint32_t x = fp_unkey(FP_F16, key + dir);
                ck_assert_msg(!f16_merges_to(x, d[i], m),
                              "kernel %d: %04x + %a proven the only base of %04x, but %04x "
                              "merges to it too", kv, w, d[i], m, x);
            }
        }
        for (size_t i = n; i < N; i++)
            ck_assert_msg(flag[i] == 0xaa && out[i] == 0xa5a5, "lane %zu past n written", i);
        ck_assert_uint_eq(changed, proven_nz);
        f16_queue_check(in, out, d, flag, n, record, changed, kv);
        if (avail) /* deltas of under 3 ulps of normal values: nearly all proven */
            ck_assert_msg(ordinary_proven * 10 > ordinary * 9, "record %d proves %llu of %llu",
                          record, (unsigned long long)ordinary_proven,
                          (unsigned long long)ordinary);
        else
            ck_assert_uint_eq(ordinary_proven, 0);
    }
    unsetenv("LORA_NO_AVX512");
    free(in);
    free(out);
    free(d);
    free(flag);
}

/* The F16 unmerge pass: every F16 bit pattern as m; each unflagged
 * lane's u must be the scalar unmerge's round(m - d), merge back to m,
 * and neither key-neighbour of u may merge to m (so the receipt has no
 * bits for it); a flagged lane keeps m in dst. */
static void f16_unpass_check(void)
{
    enum { NV = 15, N = 65536 * NV, TAIL = 3 };
    uint16_t *in = malloc(N * 2), *out = malloc(N * 2);
    double *d = malloc(N * sizeof *d);
    unsigned char *flag = malloc(N);
    uint64_t st = 57;
    ck_assert(in && out && d && flag);
    for (size_t i = 0; i < N; i++) {
        in[i] = (uint16_t)(i & 0xffff);
        d[i] = f16_delta((int)(i >> 16), in[i], &st);
    }
    for (int kv = 0; kv < 2; kv++) {
        kv ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
        int avail = lora_fast_f16_available();
        size_t n = N - TAIL;
        memset(out, 0xa5, N * 2);
        memset(flag, 0xaa, N);
        uint64_t changed = lora_fast_unmerge_f16((const unsigned char *)in, (unsigned char *)out,
                                                 d, flag, n);
        uint64_t ordinary = 0, ordinary_proven = 0, proven_nz = 0;
        for (size_t i = 0; i < n; i++) {
            uint16_t m = in[i], u = out[i];
            uint32_t e = (m >> 10) & 0x1f;
            int plain = (i >> 16) < 3 && e != 0 && e != 31;
            ordinary += (uint64_t)plain;
            ck_assert_msg(flag[i] <= 1, "lane %zu: flag %u", i, flag[i]);
            if (flag[i]) {
                ck_assert_msg(u == m, "kernel %d: flagged lane %zu: dst %04x, m %04x", kv, i, u, m);
                continue;
            }
            ordinary_proven += (uint64_t)plain;
            proven_nz += d[i] != 0;
            ck_assert_msg(isfinite(d[i]) && e != 0 && e != 31, "kernel %d: lane %zu (%04x - %a) "
                          "proven", kv, i, m, d[i]);
            ck_assert_msg(u == ref_round16(FP_F16, fp_to_d(FP_F16, m) - d[i]),
                          "kernel %d: %04x - %a gave %04x, not round(m - d)", kv, m, d[i], u);
            ck_assert_msg(f16_merges_to(u, d[i], m), "kernel %d: %04x - %a = %04x does not merge "
                          "back", kv, m, d[i], u);
            int64_t key = fp_key(FP_F16, u);
            for (int dir = -1; dir <= 1; dir += 2) {
                uint32_t x = fp_unkey(FP_F16, key + dir);
                ck_assert_msg(!f16_merges_to(x, d[i], m), "kernel %d: %04x proven the only base "
                              "of %04x (d %a), but %04x merges to it too", kv, u, m, d[i], x);
            }
        }
        for (size_t i = n; i < N; i++)
            ck_assert_msg(flag[i] == 0xaa && out[i] == 0xa5a5, "lane %zu past n written", i);
        ck_assert_uint_eq(changed, proven_nz);
        /* the flagged lanes' runs: u in dst merges to m, and the run around
         * it by the reference walk is the code's */
        lora_fast_unruns_f16((const unsigned char *)in, (unsigned char *)out, d, flag, n);
        size_t coded = 0, flagged = 0;
        for (size_t i = 0; i < n; i++) {
            flagged += flag[i] != 0;
            if (flag[i] < 2) {
                ck_assert_msg(!flag[i] || out[i] == in[i], "lane %zu: flag 1, dst not m", i);
                continue;
            }
            coded++;
            ck_assert_msg(flag[i] <= 5, "lane %zu: code %u", i, flag[i]);
            uint16_t c = out[i], m = in[i];
            uint32_t sg = c & 0x8000u, mag = c & 0x7fffu;
            unsigned na = 0, nb = 0, ab = flag[i] - 2u;
            ck_assert_msg(f16_merges_to(c, d[i], m), "kernel %d: run around %04x: not a member "
                          "(m %04x, d %a)", kv, c, m, d[i]);
            while (na < mag && na < 3 && f16_merges_to(sg | (mag - na - 1), d[i], m))
                na++;
            while (mag + nb + 1 < 0x7c00u && nb < 3 && f16_merges_to(sg | (mag + nb + 1), d[i], m))
                nb++;
            ck_assert_msg(na == (ab & 1) && nb == ab >> 1, "kernel %d: m %04x d %a: run around "
                          "%04x coded %u, the reference has %u below, %u above", kv, m, d[i], c,
                          ab, na, nb);
        }
        ck_assert_msg(coded * 10 > flagged, "kernel %d: %zu of %zu flagged lanes' runs found", kv,
                      coded, flagged);
        if (avail)
            ck_assert_msg(ordinary_proven * 10 > ordinary * 9, "unmerge proves %llu of %llu",
                          (unsigned long long)ordinary_proven, (unsigned long long)ordinary);
        else
            ck_assert_uint_eq(ordinary_proven, 0);
    }
    unsetenv("LORA_NO_AVX512");
    free(in);
    free(out);
    free(d);
    free(flag);
}

START_TEST(test_f16_pass_lanes)
{
    if (_i)
        f16_pass_check(_i == 1);
    else
        f16_unpass_check();
}
END_TEST

/* An F16 tensor merged with the pass (AVX-512) and without it (the
 * scalar loop): the same merged bytes, the same receipt (rank bits,
 * exceptions, counts), with and without the receipt and in place; the
 * unmerge gives W0 back.  Base values of every binade below 2^15 and
 * make_base's special ones; deltas small and large (runs, cancellations). */
START_TEST(test_f16_kernels)
{
    uint64_t st = 78, rows = 300, cols = 1000, n = rows * cols;
    tmod mods[3];
    tmod_make(&mods[0], rows, cols, 8, 2.0, 0.1, 0, &st);
    tmod_make(&mods[1], rows, cols, 2, 30.0, 1.0, 0, &st);
    tmod_make(&mods[2], cols, rows, 16, 0.5, 0.003, 1, &st); /* transposed (Conv1D) */
    uint16_t *w0 = make_base(FP_F16, n, &st);
    for (uint64_t i = 0; i < n; i += 5) { /* any binade below 2^15 (no overflow) */
        uint16_t p = (uint16_t)(tu_rand(&st) >> 48);
        w0[i] = ((p >> 10) & 0x1f) > 29 ? (uint16_t)(p - (2u << 10)) : p;
    }
    uint16_t *m[2], *nr = malloc(n * 2), *ip = malloc(n * 2), *u = malloc(n * 2);
    m[0] = malloc(n * 2);
    m[1] = malloc(n * 2);
    for (int t = 0; t < 3; t++) {
        lora_term one[1] = {{&mods[t].m, 1.0}};
        lora_fixes fx[2] = {{.coded = 1}, {.coded = 1}};
        lora_merge_stats ms[2];
        lora_error err;
        for (int kv = 0; kv < 2; kv++) {
            kv ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
            memset(&ms[kv], 0, sizeof ms[kv]);
            ck_assert_int_eq(lora_tensor_merge(LORA_DT_F16, LORA_DT_F16, rows, cols, w0, m[kv],
                                               one, 1, LORA_ROUND_NEAREST, 2, &fx[kv], &ms[kv],
                                               &err), LORA_OK);
            ck_assert_int_eq(lora_tensor_merge(LORA_DT_F16, LORA_DT_F16, rows, cols, w0, nr, one,
                                               1, LORA_ROUND_NEAREST, 2, NULL, NULL, &err),
                             LORA_OK);
            ck_assert_msg(memcmp(nr, m[kv], n * 2) == 0, "adapter %d kernel %d: --no-receipt "
                          "bytes differ", t, kv);
        }
        unsetenv("LORA_NO_AVX512");
        ck_assert_msg(memcmp(m[0], m[1], n * 2) == 0, "adapter %d: merged bytes differ", t);
        ck_assert_uint_eq(ms[0].changed, ms[1].changed);
        ck_assert_uint_eq(ms[0].fixes, ms[1].fixes);
        ck_assert_uint_eq(fx[0].nbits, fx[1].nbits);
        ck_assert_uint_eq(fx[0].nambig, fx[1].nambig);
        ck_assert_uint_eq(fx[0].n, fx[1].n);
        for (size_t i = 0; i < fx[0].n; i++)
            ck_assert(fx[0].index[i] == fx[1].index[i] && fx[0].step[i] == fx[1].step[i]);
        for (uint64_t i = 0; i < fx[0].nbits; i++)
            ck_assert_msg(((fx[1].bits[i / 8] ^ fx[0].bits[i / 8]) >> (i % 8) & 1) == 0,
                          "adapter %d: rank bit %llu differs", t, (unsigned long long)i);
        ck_assert_uint_gt(fx[0].nambig, 0);
        /* in place (out == W0), with the receipt */
        lora_fixes fi = {.coded = 1};
        memcpy(ip, w0, n * 2);
        ck_assert_int_eq(lora_tensor_merge(LORA_DT_F16, LORA_DT_F16, rows, cols, ip, ip, one, 1,
                                           LORA_ROUND_NEAREST, 2, &fi, NULL, &err), LORA_OK);
        ck_assert_msg(memcmp(ip, m[0], n * 2) == 0, "adapter %d: in-place bytes differ", t);
        ck_assert_uint_eq(fi.nbits, fx[0].nbits);
        ck_assert(fi.nbits == 0 || memcmp(fi.bits, fx[0].bits, (size_t)(fi.nbits / 8)) == 0);
        /* the unmerge with the pass and without, the receipt's bits (and
         * a version 1 receipt's corrections) and in place */
        lora_fixes v1 = {0};
        ck_assert_int_eq(lora_tensor_merge(LORA_DT_F16, LORA_DT_F16, rows, cols, w0, nr, one, 1,
                                           LORA_ROUND_NEAREST, 2, &v1, NULL, &err), LORA_OK);
        ck_assert_uint_gt(v1.n, 0);
        lora_merge_stats us[2];
        for (int kv = 0; kv < 2; kv++) {
            kv ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
            memset(&us[kv], 0, sizeof us[kv]);
            ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_F16, LORA_DT_F16, rows, cols, m[0], u,
                                                 one, 1, &fx[0], NULL, 2, &us[kv], &err), LORA_OK);
            ck_assert_msg(memcmp(u, w0, n * 2) == 0, "adapter %d kernel %d: unmerge is not W0", t,
                          kv);
            memset(u, 0, n * 2);
            ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_F16, LORA_DT_F16, rows, cols, nr, u, one,
                                                 1, &v1, NULL, 2, NULL, &err), LORA_OK);
            ck_assert_msg(memcmp(u, w0, n * 2) == 0, "adapter %d kernel %d: unmerge with "
                          "corrections is not W0", t, kv);
            memcpy(ip, m[0], n * 2);
            ck_assert_int_eq(lora_tensor_unmerge(LORA_DT_F16, LORA_DT_F16, rows, cols, ip, ip, one,
                                                 1, &fx[0], NULL, 2, NULL, &err), LORA_OK);
            ck_assert_msg(memcmp(ip, w0, n * 2) == 0, "adapter %d kernel %d: in-place unmerge is "
                          "not W0", t, kv);
        }
        unsetenv("LORA_NO_AVX512");
        ck_assert_uint_eq(us[0].changed, us[1].changed);
        ck_assert_uint_eq(us[0].fixes, us[1].fixes);
        lora_fixes_free(&v1);
        lora_fixes_free(&fi);
        lora_fixes_free(&fx[0]);
        lora_fixes_free(&fx[1]);
    }
    for (int t = 0; t < 3; t++)
        tmod_free(&mods[t]);
    free(w0);
    free(m[0]);
    free(m[1]);
    free(nr);
    free(ip);
    free(u);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("merge");
    TCase *tc = tcase_create("merge");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_round16);
    tcase_add_test(tc, test_key);
    tcase_add_loop_test(tc, test_roundtrip_kinds, FP_F32, FP_BF16 + 1);
    tcase_add_test(tc, test_dtype_change);
    tcase_add_test(tc, test_reversible_saves);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_may_differ);
    tcase_add_test(tc, test_nonfinite);
    tcase_add_test(tc, test_delta_nonfinite);
    tcase_add_loop_test(tc, test_coded, FP_F32, FP_BF16 + 1);
    tcase_add_loop_test(tc, test_merged_digest, FP_F32, FP_BF16 + 1);
    tcase_add_test(tc, test_flag_masks);
    tcase_add_test(tc, test_dense_runs);
    tcase_add_loop_test(tc, test_pass_lanes, 0, 3);
    tcase_add_test(tc, test_rank_words);
    tcase_add_test(tc, test_bits_kernels);
    tcase_add_loop_test(tc, test_in_place, FP_F32, FP_BF16 + 1);
    tcase_add_test(tc, test_run_ties);
    tcase_add_loop_test(tc, test_f16_pass_lanes, 0, 3);
    tcase_add_test(tc, test_f16_kernels);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite(), 0);
}

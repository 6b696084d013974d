/*
 * check_dtype.c - unit tests for dtype.c: names and sizes, and the
 * F16/BF16 conversions checked exhaustively (all 65,536 patterns)
 * and against a plain reference rounding (nearest of the two
 * neighbouring representable values, ties to the even pattern) on
 * midpoints, their neighbours, overflow and underflow thresholds,
 * random values, and the double-rounding traps that f64->f32->16-bit
 * would get wrong.
 */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <string.h>

/* A 16-bit float format: exponent bits, mantissa bits. */
typedef struct {
    int E, M;
    const char *name;
} fmt16;

static const fmt16 F16 = {5, 10, "F16"};
static const fmt16 BF16 = {8, 7, "BF16"};

static int bias(const fmt16 *f)
{
    return (1 << (f->E - 1)) - 1;
}
static unsigned inf_bits(const fmt16 *f)
{
    return ((1u << f->E) - 1) << f->M;
}

/* Reference decoder straight from the definition of the format. */
static double ref_decode(const fmt16 *f, unsigned p)
{
    unsigned s = p >> (f->E + f->M) & 1;
    unsigned e = (p >> f->M) & ((1u << f->E) - 1);
    unsigned m = p & ((1u << f->M) - 1);
    double v;
    if (e == (1u << f->E) - 1)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, 1 - bias(f) - f->M);
    else
        v = ldexp((double)(m + (1u << f->M)), (int)e - bias(f) - f->M);
    return s ? -v : v;
}

/* Value of a non-negative pattern, where the infinity pattern stands
 * for 2^(emax+1), the next value of the exponent ladder: IEEE rounding
 * to infinity is rounding to that value. */
static double ladder(const fmt16 *f, unsigned p)
{
    if (p == inf_bits(f))
        return ldexp(1.0, bias(f) + 1);
    return ref_decode(f, p);
}

/* Reference rounding of a finite or infinite double: find the pattern
 * p with ladder(p) <= |x| < ladder(p+1) by bisection, then compare with
 * the midpoint (exact in double: both neighbours have at most 11
 * significant bits).  Ties go to the even pattern. */
static unsigned ref_round(const fmt16 *f, double x)
{
    unsigned sign = signbit(x) ? 1u << (f->E + f->M) : 0;
    double a = fabs(x);
    unsigned inf = inf_bits(f);
    if (isinf(a) || a >= ladder(f, inf))
        return sign | inf;
    unsigned lo = 0, hi = inf; /* ladder(lo) <= a < ladder(hi) */
    while (hi - lo > 1) {
        unsigned mid = lo + (hi - lo) / 2;
        if (ladder(f, mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    double mid = (ladder(f, lo) + ladder(f, hi)) / 2;
    unsigned p;
    if (a < mid)
        p = lo;
    else if (a > mid)
        p = hi;
    else
        p = (lo & 1) ? hi : lo;
    return sign | p;
}

static uint16_t to16_f32(const fmt16 *f, float x)
{
    return f == &F16 ? lora_f32_to_f16(x) : lora_f32_to_bf16(x);
}
static uint16_t to16_f64(const fmt16 *f, double x)
{
    return f == &F16 ? lora_f64_to_f16(x) : lora_f64_to_bf16(x);
}
static float from16(const fmt16 *f, uint16_t p)
{
    return f == &F16 ? lora_f16_to_f32(p) : lora_bf16_to_f32(p);
}

static uint32_t fbits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* A NaN result must be quiet, keep the sign, and be a NaN pattern. */
static void check_nan16(const fmt16 *f, uint16_t r, int neg)
{
    unsigned inf = inf_bits(f);
    ck_assert_uint_eq(r & inf, inf);
    ck_assert_uint_ne(r & (1u << (f->M - 1)), 0);
    ck_assert_int_eq((r >> (f->E + f->M)) & 1, neg);
}

/* Check one value against the reference, from f64 and (when exact in
 * float) from f32. */
static void check_value(const fmt16 *f, double x)
{
    unsigned want = ref_round(f, x);
    uint16_t got = to16_f64(f, x);
    if (got != want)
        ck_abort_msg("%s: f64 %a -> %04x, want %04x", f->name, x, got, want);
    float xf = (float)x;
    if ((double)xf == x || isinf(x)) {
        got = to16_f32(f, xf);
        if (got != want)
            ck_abort_msg("%s: f32 %a -> %04x, want %04x", f->name, x, got, want);
    }
}

static void exhaustive_decode(const fmt16 *f)
{
    for (unsigned p = 0; p < 65536; p++) {
        float got = from16(f, (uint16_t)p);
        double want = ref_decode(f, p);
        if (isnan(want)) {
            ck_assert(isnan(got));
            ck_assert_int_eq(!!signbit(got), (int)(p >> 15));
            ck_assert_uint_ne(fbits(got) & 0x400000u, 0); /* quiet */
            /* re-encoding a NaN keeps it a quiet NaN with its sign */
            check_nan16(f, to16_f32(f, got), (int)(p >> 15));
            check_nan16(f, to16_f64(f, (double)got), (int)(p >> 15));
            continue;
        }
        if ((double)got != want || !!signbit(got) != !!signbit(want))
            ck_abort_msg("%s: decode %04x -> %a, want %a", f->name, p, (double)got, want);
        /* round trip of every non-NaN pattern, from both widths */
        ck_assert_uint_eq(to16_f32(f, got), p);
        ck_assert_uint_eq(to16_f64(f, (double)got), p);
    }
}

START_TEST(test_names)
{
    ck_assert_int_eq(lora_dtype_from_name("BF16"), LORA_DT_BF16);
    ck_assert_int_eq(lora_dtype_from_name("bf16"), LORA_DT_INVALID);
    ck_assert_int_eq(lora_dtype_from_name("F8_E4M3FNUZ"), LORA_DT_F8_E4M3FNUZ);
    ck_assert_int_eq(lora_dtype_from_name(""), LORA_DT_INVALID);
    ck_assert_ptr_null(lora_dtype_name(LORA_DT_INVALID));
    ck_assert_ptr_null(lora_dtype_name(LORA_DT_COUNT));
    for (int d = 1; d < LORA_DT_COUNT; d++) {
        const char *n = lora_dtype_name((lora_dtype)d);
        ck_assert_ptr_nonnull(n);
        ck_assert_int_eq(lora_dtype_from_name(n), d);
        ck_assert_uint_gt(lora_dtype_bits((lora_dtype)d), 0);
    }
    ck_assert_uint_eq(lora_dtype_bits(LORA_DT_F4), 4);
    ck_assert_uint_eq(lora_dtype_bits(LORA_DT_F6_E2M3), 6);
    ck_assert_uint_eq(lora_dtype_bits(LORA_DT_BOOL), 8);
    ck_assert_uint_eq(lora_dtype_bits(LORA_DT_C64), 64);
    ck_assert_uint_eq(lora_dtype_bits(LORA_DT_BF16), 16);
    ck_assert_uint_eq(lora_dtype_bits(LORA_DT_INVALID), 0);
    ck_assert(lora_dtype_readable(LORA_DT_F64));
    ck_assert(!lora_dtype_writable(LORA_DT_F64));
    ck_assert(lora_dtype_writable(LORA_DT_BF16));
    ck_assert(!lora_dtype_readable(LORA_DT_I32));
}
END_TEST

START_TEST(test_exhaustive_f16)
{
    exhaustive_decode(&F16);
}
END_TEST

START_TEST(test_exhaustive_bf16)
{
    exhaustive_decode(&BF16);
}
END_TEST

/* Every midpoint between consecutive non-negative values (including
 * the one between the largest finite value and infinity), the values
 * just above and below it in double and in float, with both signs. */
static void midpoints(const fmt16 *f)
{
    unsigned inf = inf_bits(f);
    size_t cap = (size_t)inf * 14, n = 0;
    double *all = malloc(cap * sizeof *all);
    uint16_t *enc = malloc(cap * sizeof *enc);
    ck_assert(all && enc);
    for (unsigned p = 0; p < inf; p++) {
        double mid = (ladder(f, p) + ladder(f, p + 1)) / 2;
        double ulp = ladder(f, p + 1) - ladder(f, p);
        double xs[7] = {mid, nextafter(mid, 0), nextafter(mid, INFINITY),
                        (double)nextafterf((float)mid, 0),
                        (double)nextafterf((float)mid, INFINITY), ladder(f, p),
                        mid + ulp * 0x1p-30};
        for (int k = 0; k < 7; k++) {
            check_value(f, xs[k]);
            check_value(f, -xs[k]);
            all[n++] = xs[k];
            all[n++] = -xs[k];
        }
        /* the tie itself goes to the even one of its neighbours */
        unsigned even = (p & 1) ? p + 1 : p;
        ck_assert_uint_eq(to16_f64(f, mid), even);
    }
    /* the array encoder's fast path gives the same bytes on all of them */
    lora_dtype dt = f == &F16 ? LORA_DT_F16 : LORA_DT_BF16;
    ck_assert_int_eq(lora_encode_f64(dt, all, enc, n), LORA_OK);
    for (size_t i = 0; i < n; i++)
        if (enc[i] != to16_f64(f, all[i]))
            ck_abort_msg("%s: array f64 %a -> %04x, scalar %04x", f->name, all[i], enc[i],
                         to16_f64(f, all[i]));
    float *fl = malloc(n * sizeof *fl);
    ck_assert_ptr_nonnull(fl);
    for (size_t i = 0; i < n; i++)
        fl[i] = (float)all[i];
    ck_assert_int_eq(lora_encode_f32(dt, fl, enc, n), LORA_OK);
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq(enc[i], to16_f32(f, fl[i]));
    free(fl);
    free(all);
    free(enc);
}

START_TEST(test_midpoints_f16)
{
    midpoints(&F16);
}
END_TEST

START_TEST(test_midpoints_bf16)
{
    midpoints(&BF16);
}
END_TEST

START_TEST(test_thresholds)
{
    /* F16: largest finite 65504, halfway to 2^16 is 65520 (ties to Inf) */
    ck_assert_uint_eq(lora_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(lora_f64_to_f16(65519.999), 0x7bff);
    ck_assert_uint_eq(lora_f64_to_f16(65520.0), 0x7c00);
    ck_assert_uint_eq(lora_f32_to_f16(-65520.0f), 0xfc00);
    ck_assert_uint_eq(lora_f64_to_f16(1e300), 0x7c00);
    ck_assert_uint_eq(lora_f32_to_f16(INFINITY), 0x7c00);
    ck_assert_uint_eq(lora_f64_to_f16(-INFINITY), 0xfc00);
    /* F16 underflow: 2^-25 is the tie between 0 and the smallest subnormal */
    ck_assert_uint_eq(lora_f64_to_f16(ldexp(1, -25)), 0x0000);
    ck_assert_uint_eq(lora_f64_to_f16(nextafter(ldexp(1, -25), 1)), 0x0001);
    ck_assert_uint_eq(lora_f64_to_f16(-ldexp(1, -25)), 0x8000);
    ck_assert_uint_eq(lora_f64_to_f16(ldexp(3, -25)), 0x0002); /* 1.5 ulp: tie -> 2 */
    ck_assert_uint_eq(lora_f64_to_f16(1e-300), 0x0000);
    ck_assert_uint_eq(lora_f64_to_f16(-1e-300), 0x8000);
    ck_assert_uint_eq(lora_f64_to_f16(ldexp(1, -14)), 0x0400); /* smallest normal */
    ck_assert_uint_eq(lora_f64_to_f16(ldexp(1023.5, -24)), 0x0400); /* rounds up across */
    ck_assert_uint_eq(lora_f32_to_f16(0x1p-149f), 0x0000);
    /* BF16: largest finite (2 - 2^-7)·2^127; FLT_MAX rounds to Inf */
    ck_assert_uint_eq(lora_f32_to_bf16(0x1.fep127f), 0x7f7f);
    ck_assert_uint_eq(lora_f32_to_bf16(0x1.ffp127f), 0x7f80);
    ck_assert_uint_eq(lora_f32_to_bf16(0x1.fefffep127f), 0x7f7f);
    ck_assert_uint_eq(lora_f64_to_bf16(0x1.ffp127), 0x7f80);
    ck_assert_uint_eq(lora_f64_to_bf16(0x1.feffffffffffp127), 0x7f7f);
    ck_assert_uint_eq(lora_f64_to_bf16(1e300), 0x7f80);
    ck_assert_uint_eq(lora_f64_to_bf16(1e-300), 0x0000);
    ck_assert_uint_eq(lora_f64_to_bf16(-1e-300), 0x8000);
    ck_assert_uint_eq(lora_f64_to_bf16(0x1p-134), 0x0000);          /* tie to 0 */
    ck_assert_uint_eq(lora_f64_to_bf16(0x1.0000001p-134), 0x0001);
    ck_assert_uint_eq(lora_f32_to_bf16(0x1p-149f), 0x0000);
    ck_assert_uint_eq(lora_f32_to_bf16(-0.0f), 0x8000);
    ck_assert_uint_eq(lora_f64_to_bf16(-0.0), 0x8000);
    ck_assert_uint_eq(lora_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(lora_f64_to_bf16(1.0), 0x3f80);
    /* NaN: quiet, sign kept, signalling input made quiet */
    check_nan16(&F16, lora_f64_to_f16(NAN), 0);
    check_nan16(&F16, lora_f64_to_f16(-NAN), 1);
    check_nan16(&BF16, lora_f32_to_bf16(-NAN), 1);
    float snan;
    uint32_t sb = 0x7f800001u;
    memcpy(&snan, &sb, 4);
    check_nan16(&BF16, lora_f32_to_bf16(snan), 0);
    check_nan16(&F16, lora_f32_to_f16(snan), 0);
    ck_assert_uint_ne(fbits(lora_bf16_to_f32(0x7f81)) & 0x400000u, 0);
    ck_assert_uint_ne(fbits(lora_f16_to_f32(0xfc01)) & 0x400000u, 0);
}
END_TEST

/* Random doubles over the whole useful exponent range (and beyond, on
 * both sides), random floats, random double bit patterns. */
static void random_values(const fmt16 *f, uint64_t seed, long count)
{
    uint64_t st = seed;
    int lo = -bias(f) - f->M - 8, hi = bias(f) + 4;
    for (long i = 0; i < count; i++) {
        uint64_t r = tu_rand(&st);
        double m = 1.0 + (double)(r >> 12) * 0x1p-52;
        int e = lo + (int)(tu_rand(&st) % (uint64_t)(hi - lo + 1));
        double x = ldexp(m, e);
        if (r & 1)
            x = -x;
        check_value(f, x);
        /* and a float with a random mantissa near the same place */
        check_value(f, (double)(float)x);
    }
    for (long i = 0; i < count / 8; i++) {
        uint64_t r = tu_rand(&st);
        double x;
        memcpy(&x, &r, 8);
        if (isnan(x))
            continue;
        check_value(f, x);
        uint32_t u = (uint32_t)r;
        float y;
        memcpy(&y, &u, 4);
        if (!isnan(y))
            check_value(f, (double)y);
    }
}

START_TEST(test_random_f16)
{
    random_values(&F16, 0x1234567u, 1500000);
}
END_TEST

START_TEST(test_random_bf16)
{
    random_values(&BF16, 0x7654321u, 1500000);
}
END_TEST

/* x just above (or below) a 16-bit midpoint, by less than half an f32
 * ulp: f32 rounding lands exactly on the midpoint, and the tie rule
 * then goes the wrong way; the direct conversion must not. */
static void double_rounding(const fmt16 *f)
{
    uint64_t st = 99;
    int traps = 0;
    unsigned inf = inf_bits(f);
    for (int i = 0; i < 200000; i++) {
        unsigned p = 1 + (unsigned)(tu_rand(&st) % (inf - 2));
        double mid = (ladder(f, p) + ladder(f, p + 1)) / 2;
        float fm = (float)mid;
        if ((double)fm != mid)
            continue;
        double ulp32 = (double)nextafterf(fm, INFINITY) - mid;
        double x = (p & 1) ? mid - ulp32 / 4 : mid + ulp32 / 4;
        if (x == mid)
            continue; /* no room in double either */
        unsigned want = ref_round(f, x);
        ck_assert_uint_eq(want, (p & 1) ? p : p + 1);
        ck_assert_uint_eq(to16_f64(f, x), want);
        /* proof that the trap is real: through f32 the answer differs */
        if (to16_f32(f, (float)x) != want)
            traps++;
        double xs = -x;
        ck_assert_uint_eq(to16_f64(f, xs), want | (1u << (f->E + f->M)));
    }
    ck_assert_int_gt(traps, 1000);
}

START_TEST(test_double_rounding)
{
    double_rounding(&F16);
    double_rounding(&BF16);
}
END_TEST

/* The array loops give the same bytes as the scalar functions, for
 * unaligned buffers and lengths that are not multiples of any block,
 * with special values scattered in blocks and some blocks clean. */
START_TEST(test_arrays)
{
    enum { N = 5000 };
    uint64_t st = 5;
    double *d = malloc(N * sizeof *d);
    float *fl = malloc(N * sizeof *fl);
    unsigned char *raw = malloc(N * 8 + 3);
    float *back = malloc(N * sizeof *back);
    double *backd = malloc(N * sizeof *backd);
    ck_assert(d && fl && raw && back && backd);
    double specials[] = {0.0, -0.0, INFINITY, -INFINITY, NAN, 1e-30, -1e-7, 65520.0, 1e39,
                         0x1.ffp127, 6e-8};
    for (int i = 0; i < N; i++) {
        d[i] = tu_randu(&st) * 4;
        if (i < 3000 && tu_rand(&st) % 97 == 0)
            d[i] = specials[tu_rand(&st) % (sizeof specials / sizeof *specials)];
        fl[i] = (float)d[i];
    }
    const lora_dtype dts[] = {LORA_DT_F16, LORA_DT_BF16, LORA_DT_F32};
    for (int t = 0; t < 3; t++) {
        lora_dtype dt = dts[t];
        unsigned char *dst = raw + 1; /* unaligned on purpose */
        for (size_t n = N - 7; n <= N; n += 7) {
            ck_assert_int_eq(lora_encode_f64(dt, d, dst, n), LORA_OK);
            for (size_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, dst + 2 * i, 2);
                if (dt == LORA_DT_F16)
                    ck_assert_uint_eq(h, lora_f64_to_f16(d[i]));
                else if (dt == LORA_DT_BF16)
                    ck_assert_uint_eq(h, lora_f64_to_bf16(d[i]));
            }
            ck_assert_int_eq(lora_encode_f32(dt, fl, dst, n), LORA_OK);
            ck_assert_int_eq(lora_decode_f32(dt, dst, back, n), LORA_OK);
            ck_assert_int_eq(lora_decode_f64(dt, dst, backd, n), LORA_OK);
            for (size_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, dst + 2 * i, 2);
                float want = fl[i];
                if (dt == LORA_DT_F16) {
                    ck_assert_uint_eq(h, lora_f32_to_f16(fl[i]));
                    want = lora_f16_to_f32(h);
                } else if (dt == LORA_DT_BF16) {
                    ck_assert_uint_eq(h, lora_f32_to_bf16(fl[i]));
                    want = lora_bf16_to_f32(h);
                }
                if (isnan(want)) {
                    ck_assert(isnan(back[i]) && isnan(backd[i]));
                } else {
                    ck_assert_uint_eq(fbits(back[i]), fbits(want));
                    ck_assert(backd[i] == (double)want);
                    ck_assert_int_eq(!!signbit(backd[i]), !!signbit(want));
                }
            }
        }
    }
    /* F64 read: one rounding to float; refused dtypes */
    memcpy(raw + 1, d, N * 8);
    ck_assert_int_eq(lora_decode_f32(LORA_DT_F64, raw + 1, back, N), LORA_OK);
    ck_assert_int_eq(lora_decode_f64(LORA_DT_F64, raw + 1, backd, N), LORA_OK);
    for (int i = 0; i < N; i++) {
        if (isnan(d[i]))
            continue;
        ck_assert_uint_eq(fbits(back[i]), fbits((float)d[i]));
        ck_assert(backd[i] == d[i]);
    }
    ck_assert_int_eq(lora_decode_f32(LORA_DT_I32, raw, back, 1), LORA_EINPUT);
    ck_assert_int_eq(lora_encode_f64(LORA_DT_F64, d, raw, 1), LORA_EINPUT);
    ck_assert_int_eq(lora_encode_f32(LORA_DT_U8, fl, raw, 1), LORA_EINPUT);
    free(d);
    free(fl);
    free(raw);
    free(back);
    free(backd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dtype");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_exhaustive_f16);
    tcase_add_test(tc, test_exhaustive_bf16);
    tcase_add_test(tc, test_midpoints_f16);
    tcase_add_test(tc, test_midpoints_bf16);
    tcase_add_test(tc, test_thresholds);
    tcase_add_test(tc, test_random_f16);
    tcase_add_test(tc, test_random_bf16);
    tcase_add_test(tc, test_double_rounding);
    tcase_add_test(tc, test_arrays);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

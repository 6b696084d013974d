/*
 * check_combine.c - unit tests for combine.c (TIES, DARE, magnitude
 * pruning on one module) and lora_svd_dense: against committed NumPy
 * results of PEFT's formulas (tests/combine_ref.h, made by
 * tests/gen-combine-ref.py), against a plain reference loop written
 * here from the contract in lora.h (sorting instead of selection, the
 * generator re-implemented from lora-rank-reduce(1)), and DARE's kept
 * fraction and rescale.
 */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <string.h>

#include "combine_ref.h"

/* ---- delta sources ---- */

typedef struct fac_src {
    const double *const *B, *const *A;
    const uint64_t *r;
    const double *scale;
    uint64_t out, in;
} fac_src;

static int from_factors(void *ctx, size_t i, double *dst, lora_error *err)
{
    (void)err;
    const fac_src *f = ctx;
    lora_delta_rows(f->B[i], f->A[i], f->r[i], f->in, f->scale[i], 0, f->out, dst);
    return LORA_OK;
}

typedef struct dense_src {
    double **d;
    uint64_t N;
} dense_src;

static int from_dense(void *ctx, size_t i, double *dst, lora_error *err)
{
    (void)err;
    const dense_src *s = ctx;
    memcpy(dst, s->d[i], s->N * sizeof *dst);
    return LORA_OK;
}

/* ---- the plain reference ---- */

static const double *sort_key;
static int by_mag_then_index(const void *a, const void *b)
{
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    double x = fabs(sort_key[i]), y = fabs(sort_key[j]);
    if (x != y)
        return x > y ? -1 : 1;
    return i < j ? -1 : i > j;
}

static void ref_prune_mag(double *d, uint64_t N, double D)
{
    if (D >= 1)
        return;
    uint64_t k = (uint64_t)floor(D * (double)N);
    size_t *idx = malloc(N * sizeof *idx);
    char *keep = calloc(N, 1);
    for (size_t i = 0; i < N; i++)
        idx[i] = i;
    sort_key = d;
    qsort(idx, N, sizeof *idx, by_mag_then_index);
    for (size_t i = 0; i < k && i < N; i++)
        keep[idx[i]] = 1;
    for (size_t i = 0; i < N; i++)
        if (!keep[i])
            d[i] = 0;
    free(idx);
    free(keep);
}

/* xoshiro256** seeded by splitmix64, as lora-rank-reduce(1) describes it. */
static uint64_t sm64(uint64_t *x)
{
    *x += 0x9E3779B97F4A7C15ULL;
    uint64_t z = *x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static uint64_t rl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t xo(uint64_t s[4])
{
    uint64_t res = rl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rl(s[3], 45);
    return res;
}

static void ref_prune_rand(double *d, uint64_t N, double D, uint64_t seed, const char *name,
                           uint64_t stream)
{
    if (D >= 1)
        return;
    uint64_t h = 14695981039346656037ULL;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    uint64_t x = seed ^ h ^ (0x9E3779B97F4A7C15ULL * (stream + 1)), s[4];
    for (int i = 0; i < 4; i++)
        s[i] = sm64(&x);
    for (uint64_t i = 0; i < N; i++) {
        double u = (double)(xo(s) >> 11) / 9007199254740992.0;
        d[i] = u < D ? d[i] / D : 0;
    }
}

static int sgn(double x) { return x > 0 ? 1 : x < 0 ? -1 : 0; }

static void ref_combine(lora_combine_method m, double **deltas, size_t n, uint64_t N,
                        const double *w, const uint64_t *streams, double D,
                        lora_sign_method sm, uint64_t seed, const char *name, double *res)
{
    double **p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) {
        p[i] = malloc(N * sizeof **p);
        memcpy(p[i], deltas[i], N * sizeof **p);
        if (m == LORA_COMBINE_TIES || m == LORA_COMBINE_MAGNITUDE_PRUNE)
            ref_prune_mag(p[i], N, D);
        else if (m == LORA_COMBINE_DARE_LINEAR || m == LORA_COMBINE_DARE_TIES)
            ref_prune_rand(p[i], N, D, seed, name, streams[i]);
    }
    for (uint64_t e = 0; e < N; e++) {
        if (m == LORA_COMBINE_TIES || m == LORA_COMBINE_DARE_TIES) {
            double t = 0;
            for (size_t i = 0; i < n; i++)
                t += sm == LORA_SIGN_TOTAL ? p[i][e] : sgn(p[i][e]);
            int elected = t >= 0 ? 1 : -1;
            double sum = 0;
            int count = 0;
            for (size_t i = 0; i < n; i++)
                if (sgn(p[i][e]) == elected) {
                    sum += p[i][e] * w[i];
                    count++;
                }
            res[e] = sum / (count > 1 ? count : 1);
        } else {
            double sum = 0;
            for (size_t i = 0; i < n; i++)
                sum += p[i][e] * w[i];
            res[e] = sum;
        }
    }
    for (size_t i = 0; i < n; i++)
        free(p[i]);
    free(p);
}

/* ---- tests ---- */

START_TEST(test_numpy_reference)
{
    lora_combine_ws ws = {0};
    for (size_t c = 0; c < sizeof ref_cases / sizeof *ref_cases; c++) {
        const ref_case *rc = &ref_cases[c];
        fac_src f = {rc->B, rc->A, rc->r, rc->scale, rc->out, rc->in};
        uint64_t streams[3] = {0, 1, 2}, N = rc->out * rc->in;
        lora_combine_opts o = {.method = rc->ties ? LORA_COMBINE_TIES
                                                  : LORA_COMBINE_MAGNITUDE_PRUNE,
                               .density = rc->density,
                               .sign = rc->frequency ? LORA_SIGN_FREQUENCY : LORA_SIGN_TOTAL};
        double *dst = malloc(N * sizeof *dst), big = 0;
        lora_error e;
        ck_assert_msg(lora_combine_module(&o, rc->name, rc->out, rc->in, rc->n, rc->weight,
                                          streams, from_factors, &f, dst, &ws, &e) == LORA_OK,
                      "%s", e.msg);
        for (uint64_t i = 0; i < N; i++)
            big = fmax(big, fabs(rc->res[i]));
        ck_assert_msg(big > 0, "%s: reference is all zero", rc->name);
        uint64_t nz = 0;
        for (uint64_t i = 0; i < N; i++) {
            nz += dst[i] != 0;
            ck_assert_msg(fabs(dst[i] - rc->res[i]) <= 1e-12 * big,
                          "%s[%llu]: %.17g, NumPy %.17g", rc->name, (unsigned long long)i,
                          dst[i], rc->res[i]);
            ck_assert_msg((dst[i] == 0) == (rc->res[i] == 0), "%s[%llu]: zero pattern differs",
                          rc->name, (unsigned long long)i);
        }
        ck_assert_msg(nz > 0, "%s: nothing kept", rc->name);
        free(dst);
    }
    lora_combine_ws_free(&ws);
}
END_TEST

/* n deltas of out×in: integer-valued (many equal magnitudes) or not,
 * row 1 all zero in every input when zero_row. */
static double **make_deltas(size_t n, uint64_t N, uint64_t in, int integer, int zero_row,
                            uint64_t *st)
{
    double **d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++) {
        d[i] = malloc(N * sizeof **d);
        for (uint64_t e = 0; e < N; e++) {
            double u = tu_randu(st);
            d[i][e] = integer ? floor(u * 7) - 3 : (u - 0.5) * ldexp(1, (int)(e % 5) - 2);
            if (zero_row && e / in == 1)
                d[i][e] = 0;
        }
    }
    return d;
}

START_TEST(test_reference_loop)
{
    static const lora_combine_method methods[] = {
        LORA_COMBINE_SUM, LORA_COMBINE_TIES, LORA_COMBINE_DARE_LINEAR, LORA_COMBINE_DARE_TIES,
        LORA_COMBINE_MAGNITUDE_PRUNE};
    static const double densities[] = {1.0, 2.5, 0.5, 0.31, 0.999, 1e-3, 1e-9};
    static const struct { uint64_t out, in; size_t n; int integer, zero_row; } shapes[] = {
        {7, 9, 1, 1, 0}, {7, 9, 3, 1, 1}, {16, 5, 2, 0, 1}, {3, 4, 4, 1, 0}, {12, 12, 3, 0, 0}};
    uint64_t st = 42;
    lora_combine_ws ws = {0};
    int compared = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        uint64_t out = shapes[s].out, in = shapes[s].in, N = out * in;
        size_t n = shapes[s].n;
        double **d = make_deltas(n, N, in, shapes[s].integer, shapes[s].zero_row, &st);
        double w[4] = {1.0, -0.75, 0.5, 2.0}, *res = malloc(N * sizeof *res),
               *want = malloc(N * sizeof *want);
        uint64_t streams[4] = {0, 2, 3, 7};
        dense_src src = {d, N};
        for (size_t m = 0; m < sizeof methods / sizeof *methods; m++)
            for (size_t k = 0; k < sizeof densities / sizeof *densities; k++)
                for (int sm = 0; sm < 2; sm++) {
                    lora_combine_opts o = {methods[m], densities[k], (lora_sign_method)sm,
                                           1234 + s};
                    lora_error e;
                    ck_assert_msg(lora_combine_module(&o, "layers.0.q", out, in, n, w, streams,
                                                      from_dense, &src, res, &ws, &e) == LORA_OK,
                                  "%s", e.msg);
                    ref_combine(methods[m], d, n, N, w, streams, densities[k],
                                (lora_sign_method)sm, 1234 + s, "layers.0.q", want);
                    for (uint64_t i = 0; i < N; i++)
                        ck_assert_msg(res[i] == want[i] || (res[i] == 0 && want[i] == 0),
                                      "%s D=%g sign=%d shape %zu [%llu]: %.17g, reference %.17g",
                                      lora_combine_method_name(methods[m]), densities[k], sm, s,
                                      (unsigned long long)i, res[i], want[i]);
                    if (shapes[s].zero_row)
                        for (uint64_t j = 0; j < in; j++)
                            ck_assert(res[in + j] == 0);
                    compared++;
                }
        for (size_t i = 0; i < n; i++)
            free(d[i]);
        free(d);
        free(res);
        free(want);
    }
    ck_assert_int_eq(compared, 5 * 5 * 7 * 2);
    lora_combine_ws_free(&ws);
}
END_TEST

/* Ties at the threshold: equal magnitudes, the lowest index kept first. */
START_TEST(test_threshold_ties)
{
    double d[8] = {1, -2, 2, 0.5, -2, 2, 1, 3}, res[8], w = 1;
    double *dp[1] = {d};
    dense_src src = {dp, 8};
    uint64_t stream = 0;
    lora_combine_ws ws = {0};
    lora_error e;
    /* k = floor(0.375·8) = 3: the 3, then the first two of the four 2s. */
    lora_combine_opts o = {LORA_COMBINE_MAGNITUDE_PRUNE, 0.375, LORA_SIGN_TOTAL, 0};
    ck_assert_int_eq(lora_combine_module(&o, "m", 2, 4, 1, &w, &stream, from_dense, &src, res,
                                         &ws, &e), LORA_OK);
    static const double want[8] = {0, -2, 2, 0, 0, 0, 0, 3};
    for (int i = 0; i < 8; i++)
        ck_assert_msg(res[i] == want[i], "[%d] %g, want %g", i, res[i], want[i]);
    /* D near 0: nothing kept, no division anywhere. */
    o.density = 0.1;
    ck_assert_int_eq(lora_combine_module(&o, "m", 2, 4, 1, &w, &stream, from_dense, &src, res,
                                         &ws, &e), LORA_OK);
    for (int i = 0; i < 8; i++)
        ck_assert(res[i] == 0);
    /* Refusals: density <= 0, NaN, non-finite delta. */
    o.density = 0;
    ck_assert_int_eq(lora_combine_module(&o, "m", 2, 4, 1, &w, &stream, from_dense, &src, res,
                                         &ws, &e), LORA_EUSAGE);
    o.density = NAN;
    ck_assert_int_eq(lora_combine_module(&o, "m", 2, 4, 1, &w, &stream, from_dense, &src, res,
                                         &ws, &e), LORA_EUSAGE);
    o.density = 0.5;
    d[3] = INFINITY;
    ck_assert_int_eq(lora_combine_module(&o, "m", 2, 4, 1, &w, &stream, from_dense, &src, res,
                                         &ws, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "not finite"), "%s", e.msg);
    lora_combine_ws_free(&ws);
}
END_TEST

/* TIES by hand: signs elected unweighted, divided by the agreeing count. */
START_TEST(test_ties_by_hand)
{
    double a[3] = {3, -1, 2}, b[3] = {-1, -4, 2}, c[3] = {-1, 2, 0}, res[3];
    double *dp[3] = {a, b, c}, w[3] = {1, 10, -1};
    dense_src src = {dp, 3};
    uint64_t streams[3] = {0, 1, 2};
    lora_combine_ws ws = {0};
    lora_error e;
    lora_combine_opts o = {LORA_COMBINE_TIES, 1.0, LORA_SIGN_TOTAL, 0};
    ck_assert_int_eq(lora_combine_module(&o, "m", 1, 3, 3, w, streams, from_dense, &src, res, &ws,
                                         &e), LORA_OK);
    /* [0]: sum 1 → +: only a (3·1) agrees → 3.
     * [1]: sum -3 → −: a (−1) and b (−4·10) → (−1 − 40)/2.
     * [2]: sum 4 → +: a and b (c is 0, never counts) → (2 + 20)/2. */
    ck_assert(res[0] == 3 && res[1] == -20.5 && res[2] == 11);
    o.sign = LORA_SIGN_FREQUENCY;
    ck_assert_int_eq(lora_combine_module(&o, "m", 1, 3, 3, w, streams, from_dense, &src, res, &ws,
                                         &e), LORA_OK);
    /* [0]: signs +,−,− → −: b and c → (−10 + 1)/2.  [1]: −,−,+ → −; [2]: +,+,0 → +. */
    ck_assert_msg(res[0] == -4.5 && res[1] == -20.5 && res[2] == 11, "%g %g %g", res[0], res[1],
                  res[2]);
    lora_combine_ws_free(&ws);
}
END_TEST

/* One workspace across methods and sizes: buffers a method needs first
 * on a module smaller than the largest seen must still hold the largest
 * (found by ASan in CI if not); results as with a fresh workspace. */
START_TEST(test_ws_reuse)
{
    static const struct { lora_combine_method m; uint64_t out, in; } seq[] = {
        {LORA_COMBINE_DARE_LINEAR, 20, 30}, {LORA_COMBINE_TIES, 3, 4},
        {LORA_COMBINE_TIES, 19, 31}, {LORA_COMBINE_MAGNITUDE_PRUNE, 25, 24},
        {LORA_COMBINE_DARE_TIES, 40, 20}};
    uint64_t st = 9, streams[2] = {0, 1};
    double w[2] = {1.0, -0.5};
    lora_combine_ws ws = {0};
    for (size_t k = 0; k < sizeof seq / sizeof *seq; k++) {
        uint64_t N = seq[k].out * seq[k].in;
        double **d = make_deltas(2, N, seq[k].in, 1, 0, &st);
        double *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
        dense_src src = {d, N};
        lora_combine_opts o = {seq[k].m, 0.4, LORA_SIGN_TOTAL, 5};
        lora_combine_ws fresh = {0};
        lora_error e;
        ck_assert_int_eq(lora_combine_module(&o, "m", seq[k].out, seq[k].in, 2, w, streams,
                                             from_dense, &src, a, &ws, &e), LORA_OK);
        ck_assert_int_eq(lora_combine_module(&o, "m", seq[k].out, seq[k].in, 2, w, streams,
                                             from_dense, &src, b, &fresh, &e), LORA_OK);
        ck_assert(memcmp(a, b, N * sizeof *a) == 0);
        lora_combine_ws_free(&fresh);
        free(d[0]);
        free(d[1]);
        free(d);
        free(a);
        free(b);
    }
    lora_combine_ws_free(&ws);
}
END_TEST

START_TEST(test_dare_fraction_rescale)
{
    uint64_t out = 300, in = 200, N = out * in, st = 7;
    double *d = malloc(N * sizeof *d), *r1 = malloc(N * sizeof *r1), *r2 = malloc(N * sizeof *r2);
    for (uint64_t i = 0; i < N; i++)
        d[i] = tu_randu(&st) + 0.25;           /* never 0 */
    double *dp[1] = {d}, w = 1;
    dense_src src = {dp, N};
    uint64_t stream = 0;
    lora_combine_ws ws = {0};
    lora_error e;
    static const double Ds[] = {0.3, 0.9, 0.05};
    for (size_t k = 0; k < 3; k++) {
        double D = Ds[k];
        lora_combine_opts o = {LORA_COMBINE_DARE_LINEAR, D, LORA_SIGN_TOTAL, 99};
        ck_assert_int_eq(lora_combine_module(&o, "m", out, in, 1, &w, &stream, from_dense, &src,
                                             r1, &ws, &e), LORA_OK);
        uint64_t kept = 0;
        for (uint64_t i = 0; i < N; i++)
            if (r1[i] != 0) {
                kept++;
                ck_assert_msg(r1[i] == d[i] / D, "kept element not rescaled by 1/D");
            }
        double frac = (double)kept / (double)N, sd = sqrt(D * (1 - D) / (double)N);
        ck_assert_msg(fabs(frac - D) < 5 * sd, "D=%g kept %g", D, frac);
        /* Same seed: same mask; another seed, module or stream: another. */
        ck_assert_int_eq(lora_combine_module(&o, "m", out, in, 1, &w, &stream, from_dense, &src,
                                             r2, &ws, &e), LORA_OK);
        ck_assert(memcmp(r1, r2, N * sizeof *r1) == 0);
        o.seed = 100;
        ck_assert_int_eq(lora_combine_module(&o, "m", out, in, 1, &w, &stream, from_dense, &src,
                                             r2, &ws, &e), LORA_OK);
        ck_assert(memcmp(r1, r2, N * sizeof *r1) != 0);
        o.seed = 99;
        ck_assert_int_eq(lora_combine_module(&o, "m2", out, in, 1, &w, &stream, from_dense, &src,
                                             r2, &ws, &e), LORA_OK);
        ck_assert(memcmp(r1, r2, N * sizeof *r1) != 0);
    }
    free(d);
    free(r1);
    free(r2);
    lora_combine_ws_free(&ws);
}
END_TEST

static void check_dense_svd(uint64_t out, uint64_t in, uint64_t *st)
{
    uint64_t N = out * in;
    double *W = malloc(N * sizeof *W), *W0 = malloc(N * sizeof *W0);
    for (uint64_t i = 0; i < N; i++)
        W0[i] = W[i] = tu_randu(st) - 0.5;
    lora_svd sv;
    lora_error e;
    ck_assert_msg(lora_svd_dense(W, out, in, &sv, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(sv.k, out < in ? out : in);
    for (uint64_t j = 1; j < sv.k; j++)
        ck_assert(sv.S[j] <= sv.S[j - 1]);
    double err = 0, norm = 0;
    for (uint64_t i = 0; i < out; i++)
        for (uint64_t j = 0; j < in; j++) {
            double t = 0;
            for (uint64_t c = 0; c < sv.k; c++)
                t += sv.U[c * out + i] * sv.S[c] * sv.V[c * in + j];
            err += (t - W0[i * in + j]) * (t - W0[i * in + j]);
            norm += W0[i * in + j] * W0[i * in + j];
        }
    ck_assert_msg(sqrt(err / norm) < 1e-13, "reconstruction %g", sqrt(err / norm));
    for (uint64_t a = 0; a < sv.k; a++)
        for (uint64_t b = 0; b < sv.k; b++) {
            double u = 0, v = 0;
            for (uint64_t i = 0; i < out; i++)
                u += sv.U[a * out + i] * sv.U[b * out + i];
            for (uint64_t i = 0; i < in; i++)
                v += sv.V[a * in + i] * sv.V[b * in + i];
            ck_assert(fabs(u - (a == b)) < 1e-13 && fabs(v - (a == b)) < 1e-13);
        }
    lora_svd_free(&sv);
    free(W);
    free(W0);
}

START_TEST(test_svd_dense)
{
    uint64_t st = 3;
    check_dense_svd(6, 9, &st);
    check_dense_svd(9, 6, &st);
    check_dense_svd(1, 5, &st);
    double bad[4] = {1, NAN, 0, 0};
    lora_svd sv;
    lora_error e;
    ck_assert_int_eq(lora_svd_dense(bad, 2, 2, &sv, &e), LORA_EINPUT);
}
END_TEST

START_TEST(test_names)
{
    for (int m = 0; m <= LORA_COMBINE_MAGNITUDE_PRUNE; m++)
        ck_assert_int_eq(lora_combine_method_parse(lora_combine_method_name(m)), m);
    ck_assert_int_eq(lora_combine_method_parse("ties_svd"), -1);
    ck_assert_int_eq(lora_combine_method_parse("linear"), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("combine");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_numpy_reference);
    tcase_add_test(tc, test_reference_loop);
    tcase_add_test(tc, test_threshold_ties);
    tcase_add_test(tc, test_ties_by_hand);
    tcase_add_test(tc, test_dare_fraction_rescale);
    tcase_add_test(tc, test_ws_reuse);
    tcase_add_test(tc, test_svd_dense);
    tcase_add_test(tc, test_names);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

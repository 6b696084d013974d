/*
 * check_analysis.c - unit tests for analysis.c on modules built in
 * memory: spectra with known singular values, φ of an adapter with
 * itself and of random adapters (against the expectation for random
 * subspaces and a plain reference loop), and the Table 7 quantities on
 * a base weight whose answer is known by construction.
 */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <string.h>

typedef struct tmod {
    lora_module m;
    lora_tensor A, B;
    float *a, *b;
} tmod;

static void tmod_init(tmod *t, const char *name, uint64_t out, uint64_t in, uint64_t r,
                      double scale)
{
    memset(t, 0, sizeof *t);
    t->a = calloc(r * in, sizeof(float));
    t->b = calloc(out * r, sizeof(float));
    ck_assert(t->a && t->b);
    t->A = (lora_tensor){.name = "A", .dtype = LORA_DT_F32, .ndim = 2, .shape = {r, in},
                         .numel = r * in, .nbytes = r * in * 4, .data = t->a};
    t->B = (lora_tensor){.name = "B", .dtype = LORA_DT_F32, .ndim = 2, .shape = {out, r},
                         .numel = out * r, .nbytes = out * r * 4, .data = t->b};
    t->m.name = (char *)name;
    t->m.A = &t->A;
    t->m.B = &t->B;
    t->m.r = r;
    t->m.in = in;
    t->m.out = out;
    t->m.scale = scale;
}

static void tmod_random(tmod *t, uint64_t *st)
{
    for (uint64_t i = 0; i < t->m.r * t->m.in; i++)
        t->a[i] = (float)tu_randu(st);
    for (uint64_t i = 0; i < t->m.out * t->m.r; i++)
        t->b[i] = (float)tu_randu(st);
}

static void tmod_free(tmod *t)
{
    free(t->a);
    free(t->b);
}

START_TEST(test_spectrum_known)
{
    /* ΔW = 2·B·A with B = diag(σ)/2 on the first rows, A = identity rows:
     * singular values 8, 4, 2, 1, 0.5 (energies 64, 16, 4, 1, .25 of 85.25) */
    tmod t;
    tmod_init(&t, "m", 20, 30, 5, 2.0);
    double sig[5] = {4, 8, 1, 0.5, 2}; /* out of order on purpose */
    for (int i = 0; i < 5; i++) {
        t.b[(i + 3) * 5 + i] = (float)(sig[i] / 2);
        t.a[i * 30 + 7 + i] = 1.0f;
    }
    lora_spectrum sp;
    lora_error e;
    ck_assert_int_eq(lora_spectrum_module(&t.m, &sp, &e), LORA_OK);
    ck_assert_uint_eq(sp.k, 5);
    double want[5] = {8, 4, 2, 1, 0.5};
    for (int i = 0; i < 5; i++)
        ck_assert_double_eq_tol(sp.S[i], want[i], 1e-12);
    ck_assert_double_eq_tol(sp.norm, sqrt(85.25), 1e-12);
    ck_assert_uint_eq(sp.rank90, 2);   /* 80/85.25 = .938 */
    ck_assert_uint_eq(sp.rank99, 4);   /* 84/85.25 = .985 < .99; 85/85.25 = .997 */
    ck_assert_double_eq_tol(sp.stable_rank, 85.25 / 64, 1e-12);
    lora_spectrum_free(&sp);
    ck_assert_ptr_null(sp.S);
    /* zero module */
    memset(t.b, 0, 20 * 5 * sizeof(float));
    ck_assert_int_eq(lora_spectrum_module(&t.m, &sp, &e), LORA_OK);
    ck_assert(sp.norm == 0 && sp.stable_rank == 0 && sp.rank90 == 1);
    lora_spectrum_free(&sp);
    tmod_free(&t);
}
END_TEST

/* φ by the definition, with plain loops. */
static double phi_ref(const double *V1, const double *V2, uint64_t n, uint64_t i, uint64_t j)
{
    double t = 0;
    for (uint64_t a = 0; a < i; a++)
        for (uint64_t b = 0; b < j; b++) {
            double d = 0;
            for (uint64_t x = 0; x < n; x++)
                d += V1[a * n + x] * V2[b * n + x];
            t += d * d;
        }
    return t / (double)(i < j ? i : j);
}

START_TEST(test_phi_reference_loop)
{
    uint64_t st = 5, n = 40, k1 = 6, k2 = 4;
    lora_svd s1, s2;
    lora_error e;
    double *B = calloc(k1 * k1, sizeof(double)), *A1 = malloc(k1 * n * sizeof(double));
    double *A2 = malloc(k2 * n * sizeof(double));
    for (uint64_t i = 0; i < k1; i++)
        B[i * k1 + i] = 1;
    for (uint64_t i = 0; i < k1 * n; i++)
        A1[i] = tu_randu(&st);
    for (uint64_t i = 0; i < k2 * n; i++)
        A2[i] = A1[i] + 0.3 * tu_randu(&st); /* overlapping subspaces */
    ck_assert_int_eq(lora_svd_factors(B, A1, k1, k1, n, 1, &s1, &e), 0);
    ck_assert_int_eq(lora_svd_factors(B, A2, k2, k2, n, 1, &s2, &e), 0);
    double phi[24];
    lora_subspace_phi(s1.V, k1, s2.V, k2, n, k1, k2, phi);
    for (uint64_t i = 1; i <= k1; i++)
        for (uint64_t j = 1; j <= k2; j++)
            ck_assert_double_eq_tol(phi[(i - 1) * k2 + j - 1], phi_ref(s1.V, s2.V, n, i, j), 1e-12);
    lora_svd_free(&s1);
    lora_svd_free(&s2);
    free(B);
    free(A1);
    free(A2);
}
END_TEST

START_TEST(test_phi_self_and_random)
{
    uint64_t st = 99, n = 512, r = 8;
    tmod a, b;
    lora_error e;
    tmod_init(&a, "q", 64, n, r, 1.0);
    tmod_random(&a, &st);
    double *phi;
    uint64_t ni, nj;
    ck_assert_int_eq(lora_module_phi(&a.m, &a.m, &phi, &ni, &nj, &e), LORA_OK);
    ck_assert_uint_eq(ni, r);
    ck_assert_uint_eq(nj, r);
    for (uint64_t i = 0; i < r; i++) {
        ck_assert_double_eq_tol(phi[i * r + i], 1.0, 1e-10);
        for (uint64_t j = 0; j < r; j++)
            ck_assert(phi[i * r + j] <= 1.0 + 1e-10 && phi[i * r + j] >= 0);
    }
    free(phi);
    /* Random subspaces of dimensions i and j in R^n: E‖U_iᵀU_j‖²_F = i·j/n,
     * so E φ(i, j) = i·j/(min(i, j)·n).  Averaged over 200 pairs: the
     * cells with i, j >= 3 (smaller spread) within 20% of it, and the mean
     * ratio over all cells within 10%. */
    double sum[64] = {0};
    int pairs = 200;
    for (int p = 0; p < pairs; p++) {
        tmod_random(&a, &st);
        tmod_init(&b, "q", 64, n, r, 1.0);
        tmod_random(&b, &st);
        ck_assert_int_eq(lora_module_phi(&a.m, &b.m, &phi, &ni, &nj, &e), LORA_OK);
        for (uint64_t i = 0; i < r * r; i++)
            sum[i] += phi[i] / pairs;
        free(phi);
        tmod_free(&b);
    }
    double ratio_sum = 0;
    for (uint64_t i = 1; i <= r; i++)
        for (uint64_t j = 1; j <= r; j++) {
            double want = (double)(i * j) / ((double)(i < j ? i : j) * (double)n);
            double got = sum[(i - 1) * r + j - 1];
            ratio_sum += got / want;
            if (i >= 3 && j >= 3)
                ck_assert_msg(fabs(got / want - 1) < 0.2, "φ(%llu,%llu) = %g, expected %g",
                              (unsigned long long)i, (unsigned long long)j, got, want);
        }
    ck_assert_msg(fabs(ratio_sum / (double)(r * r) - 1) < 0.1, "mean ratio %g",
                  ratio_sum / (double)(r * r));
    /* mismatched input dimension */
    tmod_init(&b, "q", 64, n + 1, r, 1.0);
    ck_assert_int_eq(lora_module_phi(&a.m, &b.m, &phi, &ni, &nj, &e), LORA_EINPUT);
    tmod_free(&b);
    tmod_free(&a);
}
END_TEST

static void check_amp(int transpose)
{
    /* W (Linear layout out×in) = diag(10, 9, ..., 1) in its top-left
     * corner plus a known block elsewhere; ΔW along coordinates 2 and 5
     * (rows) and 3 and 6 (columns): UᵀWV is W restricted to those. */
    uint64_t out = 12, in = 10, r = 2;
    double Wl[120] = {0};
    for (int i = 0; i < 10; i++)
        Wl[i * in + i] = 10 - i;
    Wl[2 * in + 6] = 0.5;
    Wl[5 * in + 3] = -0.25;
    tmod t;
    tmod_init(&t, "m", out, in, r, 0.5);
    t.m.transpose = transpose;
    t.b[2 * r + 0] = 4;  /* σ 2·... */
    t.b[5 * r + 1] = 2;
    t.a[0 * in + 3] = 1;
    t.a[1 * in + 6] = 1;
    /* ΔW = 0.5·(4 e2 e3ᵀ + 2 e5 e6ᵀ): σ = 2, 1; ‖ΔW‖ = sqrt 5 */
    float ws[120];
    for (uint64_t i = 0; i < out; i++)
        for (uint64_t j = 0; j < in; j++) {
            if (transpose)
                ws[j * out + i] = (float)Wl[i * in + j];
            else
                ws[i * in + j] = (float)Wl[i * in + j];
        }
    lora_tensor w = {.name = "w", .dtype = LORA_DT_F32, .ndim = 2, .numel = 120, .nbytes = 480,
                     .data = ws};
    w.shape[0] = transpose ? in : out;
    w.shape[1] = transpose ? out : in;
    lora_amplification amp;
    lora_error e;
    ck_assert_msg(lora_module_amplification(&t.m, &w, &amp, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(amp.r, 2);
    /* reference by plain loops: rows {2,5} × columns {3,6} of W */
    double ref = 0;
    int rows[2] = {2, 5}, cols[2] = {3, 6};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            ref += Wl[rows[a] * in + cols[b]] * Wl[rows[a] * in + cols[b]];
    ck_assert_double_eq_tol(amp.proj_dw, sqrt(ref), 1e-12);
    ck_assert_double_eq_tol(amp.norm_dw, sqrt(5.0), 1e-12);
    ck_assert_double_eq_tol(amp.factor, sqrt(5.0) / sqrt(ref), 1e-12);
    double nw = 0;
    for (int i = 0; i < 120; i++)
        nw += Wl[i] * Wl[i];
    ck_assert_double_eq_tol(amp.norm_w, sqrt(nw), 1e-12);
    /* W's own top-2 directions capture the most: sqrt(σ1² + σ2²) of W,
     * which is at least 10² + 9²; random directions capture less */
    ck_assert(amp.proj_w >= sqrt(181.0) - 1e-9);
    ck_assert(amp.proj_random <= amp.proj_w + 1e-12);
    ck_assert(amp.proj_dw <= amp.proj_w + 1e-12);
    ck_assert(amp.proj_random > 0);
    /* wrong base shape */
    w.shape[0] = 7;
    ck_assert_int_eq(lora_module_amplification(&t.m, &w, &amp, &e), LORA_EINPUT);
    tmod_free(&t);
}

START_TEST(test_amplification)
{
    check_amp(0);
    check_amp(1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("analysis");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_spectrum_known);
    tcase_add_test(tc, test_phi_reference_loop);
    tcase_add_test(tc, test_phi_self_and_random);
    tcase_add_test(tc, test_amplification);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

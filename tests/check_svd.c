/*
 * check_svd.c - unit tests for svd.c and rank.c: the SVD of ΔW = s·B·A
 * from its factors against LAPACK's SVD of the dense product (formed by
 * a plain loop), on random shapes including r > min(out, in), rank
 * deficient factors, negative scales and empty matrices; and the rank
 * rules on constructed spectra.
 */
#include "testutil.h"
#include "internal.h"

#include <lapacke.h>
#include <math.h>
#include <string.h>

static double *randmat(uint64_t n, uint64_t *st)
{
    double *m = malloc((n ? n : 1) * sizeof(double));
    ck_assert_ptr_nonnull(m);
    for (uint64_t i = 0; i < n; i++)
        m[i] = tu_randu(st);
    return m;
}

/* Dense ΔW (row-major out×in) by the plain triple loop. */
static double *dense(const double *B, const double *A, uint64_t out, uint64_t r, uint64_t in,
                     double s)
{
    double *D = calloc(out * in + 1, sizeof(double));
    ck_assert_ptr_nonnull(D);
    for (uint64_t i = 0; i < out; i++)
        for (uint64_t j = 0; j < in; j++) {
            double t = 0;
            for (uint64_t l = 0; l < r; l++)
                t += B[i * r + l] * A[l * in + j];
            D[i * in + j] = s * t;
        }
    return D;
}

/* ‖XᵀY‖²_F for column-major X (n×k, ldx n) and Y (n×k). */
static double proj2(const double *X, const double *Y, uint64_t n, uint64_t k)
{
    double t = 0;
    for (uint64_t a = 0; a < k; a++)
        for (uint64_t b = 0; b < k; b++) {
            double d = 0;
            for (uint64_t i = 0; i < n; i++)
                d += X[a * n + i] * Y[b * n + i];
            t += d * d;
        }
    return t;
}

/* Check one case: returns nothing, asserts. deficient: how many
 * columns of B are copies of column 0 (making ΔW rank deficient). */
static void check_case(uint64_t out, uint64_t in, uint64_t r, double s, uint64_t deficient,
                       uint64_t seed)
{
    uint64_t st = seed;
    double *B = randmat(out * r, &st), *A = randmat(r * in, &st);
    for (uint64_t c = 1; c <= deficient && c < r; c++)
        for (uint64_t i = 0; i < out; i++)
            B[i * r + c] = B[i * r];
    lora_svd sv;
    lora_error e;
    ck_assert_int_eq(lora_svd_factors(B, A, out, r, in, s, &sv, &e), LORA_OK);
    uint64_t mn = out < in ? out : in, k = r < mn ? r : mn;
    ck_assert_uint_eq(sv.k, k);

    /* Reference: dgesdd of the dense product. */
    double *D = dense(B, A, out, r, in, s);
    double *S = malloc((mn + 1) * sizeof(double));
    double *U = malloc((out * mn + 1) * sizeof(double));
    double *Vt = malloc((mn * in + 1) * sizeof(double));
    /* column-major copy of the row-major dense ΔW */
    double *Dc = malloc((out * in + 1) * sizeof(double));
    for (uint64_t i = 0; i < out; i++)
        for (uint64_t j = 0; j < in; j++)
            Dc[j * out + i] = D[i * in + j];
    if (mn > 0)
        ck_assert_int_eq(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', (int)out, (int)in, Dc, (int)out, S,
                                        U, (int)out, Vt, (int)mn),
                         0);

    double smax = k ? S[0] : 0;
    for (uint64_t i = 0; i < k; i++) {
        /* singular values equal to 1e-5 relative (to σ_1 for values that
         * are zero in exact arithmetic) */
        ck_assert_msg(fabs(sv.S[i] - S[i]) <= 1e-5 * (S[i] > 1e-8 * smax ? S[i] : smax) + 1e-300,
                      "σ_%llu: %.17g vs %.17g (%llux%llu r=%llu)", (unsigned long long)i, sv.S[i],
                      S[i], (unsigned long long)out, (unsigned long long)in,
                      (unsigned long long)r);
        if (i)
            ck_assert(sv.S[i] <= sv.S[i - 1]);
    }
    /* orthonormal columns */
    ck_assert(fabs(proj2(sv.U, sv.U, out, k) - (double)k) < 1e-9 * (k + 1));
    ck_assert(fabs(proj2(sv.V, sv.V, in, k) - (double)k) < 1e-9 * (k + 1));
    /* U Σ Vᵀ reproduces ΔW */
    double dnorm = 0, enorm = 0;
    for (uint64_t i = 0; i < out; i++)
        for (uint64_t j = 0; j < in; j++) {
            double t = 0;
            for (uint64_t l = 0; l < k; l++)
                t += sv.U[l * out + i] * sv.S[l] * sv.V[l * in + j];
            dnorm += D[i * in + j] * D[i * in + j];
            enorm += (t - D[i * in + j]) * (t - D[i * in + j]);
        }
    ck_assert_msg(enorm <= 1e-20 * dnorm + 1e-300, "reconstruction error %g of %g", sqrt(enorm),
                  sqrt(dnorm));
    /* subspaces: the top-m singular subspaces agree wherever σ_m is
     * separated from σ_{m+1} (relative gap 1e-3), i.e. ‖U_mᵀU'_m‖²_F = m */
    for (uint64_t m = 1; m <= k; m++) {
        double next = m < mn ? S[m] : 0;
        if (S[m - 1] - next < 1e-3 * smax)
            continue;
        double *V = malloc(in * m * sizeof(double)); /* reference V column-major */
        for (uint64_t c = 0; c < m; c++)
            for (uint64_t j = 0; j < in; j++)
                V[c * in + j] = Vt[j * mn + c];
        ck_assert_msg(fabs(proj2(sv.U, U, out, m) - (double)m) < 1e-8, "U_%llu subspace",
                      (unsigned long long)m);
        ck_assert_msg(fabs(proj2(sv.V, V, in, m) - (double)m) < 1e-8, "V_%llu subspace",
                      (unsigned long long)m);
        free(V);
    }
    lora_svd_free(&sv);
    ck_assert_ptr_null(sv.S);
    free(B);
    free(A);
    free(D);
    free(Dc);
    free(S);
    free(U);
    free(Vt);
}

START_TEST(test_svd_random_shapes)
{
    uint64_t st = 12345;
    for (int t = 0; t < 40; t++) {
        uint64_t out = 1 + tu_rand(&st) % 60, in = 1 + tu_rand(&st) % 60;
        uint64_t r = 1 + tu_rand(&st) % 24;
        double s = (tu_randu(&st) + 1.5) * (t % 3 == 0 ? -1 : 1);
        check_case(out, in, r, s, 0, 1000 + (uint64_t)t);
    }
}
END_TEST

START_TEST(test_svd_edge_shapes)
{
    check_case(50, 40, 8, 2.0, 0, 1);    /* ordinary */
    check_case(5, 40, 8, 1.0, 0, 2);     /* r > out */
    check_case(40, 5, 8, 1.0, 0, 3);     /* r > in */
    check_case(3, 4, 16, 0.5, 0, 4);     /* r > both */
    check_case(30, 30, 1, -3.0, 0, 5);   /* rank one, negative scale */
    check_case(1, 1, 1, 1.0, 0, 6);
    check_case(1, 20, 4, 1.0, 0, 7);
    check_case(20, 1, 4, 1.0, 0, 8);
}
END_TEST

START_TEST(test_svd_rank_deficient)
{
    check_case(40, 30, 8, 1.0, 5, 11); /* true rank 3 < r = 8 */
    check_case(40, 30, 8, 1.0, 7, 12); /* true rank 1 */
    /* all-zero factors: singular values zero, vectors still orthonormal */
    double B[12] = {0}, A[15] = {0};
    lora_svd sv;
    lora_error e;
    ck_assert_int_eq(lora_svd_factors(B, A, 4, 3, 5, 1.0, &sv, &e), LORA_OK);
    ck_assert_uint_eq(sv.k, 3);
    for (int i = 0; i < 3; i++)
        ck_assert(sv.S[i] == 0.0);
    ck_assert(fabs(proj2(sv.U, sv.U, 4, 3) - 3) < 1e-12);
    lora_svd_free(&sv);
    /* scale 0 */
    uint64_t st = 9;
    double *B2 = randmat(20, &st), *A2 = randmat(20, &st);
    ck_assert_int_eq(lora_svd_factors(B2, A2, 5, 4, 5, 0.0, &sv, &e), LORA_OK);
    ck_assert(sv.S[0] == 0.0);
    lora_svd_free(&sv);
    free(B2);
    free(A2);
}
END_TEST

START_TEST(test_svd_empty_and_bad)
{
    lora_svd sv;
    lora_error e;
    double x[4] = {1, 2, 3, 4};
    ck_assert_int_eq(lora_svd_factors(x, x, 0, 2, 2, 1.0, &sv, &e), LORA_OK);
    ck_assert_uint_eq(sv.k, 0);
    lora_svd_free(&sv);
    ck_assert_int_eq(lora_svd_factors(x, x, 2, 0, 2, 1.0, &sv, &e), LORA_OK);
    ck_assert_uint_eq(sv.k, 0);
    lora_svd_free(&sv);
    double bad[4] = {1, NAN, 3, 4};
    ck_assert_int_eq(lora_svd_factors(bad, x, 2, 2, 2, 1.0, &sv, &e), LORA_EINPUT);
    ck_assert_ptr_null(sv.S);
    ck_assert(strstr(e.msg, "NaN") != NULL);
    ck_assert_int_eq(lora_svd_factors(x, x, 2, 2, 2, INFINITY, &sv, &e), LORA_EINPUT);
}
END_TEST

/* The rank rules on constructed spectra, with the ranks the contract in
 * lora.h documents. */
START_TEST(test_rank_rules)
{
    /* energies 16, 9, 4, 1, 0 of total 30 */
    double S[5] = {4, 3, 2, 1, 0};
    lora_rank_rule r = {.kind = LORA_RANK_ENERGY};
    r.energy = 0.5;   /* 16/30 = 0.533 >= 0.5 */
    ck_assert_uint_eq(lora_rank_select(S, 5, &r), 1);
    r.energy = 0.6;   /* 25/30 = 0.833 */
    ck_assert_uint_eq(lora_rank_select(S, 5, &r), 2);
    r.energy = 25.0 / 30.0; /* exactly at a boundary: that rank */
    ck_assert_uint_eq(lora_rank_select(S, 5, &r), 2);
    r.energy = 0.9;   /* 29/30 */
    ck_assert_uint_eq(lora_rank_select(S, 5, &r), 3);
    r.energy = 0.99;
    ck_assert_uint_eq(lora_rank_select(S, 5, &r), 4);
    r.energy = 1.0;   /* every non-zero value, not the zero one */
    ck_assert_uint_eq(lora_rank_select(S, 5, &r), 4);
    r.max_rank = 2;
    ck_assert_uint_eq(lora_rank_select(S, 5, &r), 2);

    lora_rank_rule q = {.kind = LORA_RANK_RATIO};
    q.ratio = 1.0;    /* only σ_1 (and ties) */
    ck_assert_uint_eq(lora_rank_select(S, 5, &q), 1);
    q.ratio = 2.0;    /* σ >= 2: 4, 3, 2 */
    ck_assert_uint_eq(lora_rank_select(S, 5, &q), 3);
    q.ratio = 3.9;    /* σ >= 1.0256: 4, 3, 2 */
    ck_assert_uint_eq(lora_rank_select(S, 5, &q), 3);
    q.ratio = 4.0;    /* σ >= 1 */
    ck_assert_uint_eq(lora_rank_select(S, 5, &q), 4);
    q.ratio = 1e300;  /* everything but exact zeros */
    ck_assert_uint_eq(lora_rank_select(S, 5, &q), 4);
    double T[3] = {2, 2, 1};
    q.ratio = 1.0;
    ck_assert_uint_eq(lora_rank_select(T, 3, &q), 2);

    lora_rank_rule f = {.kind = LORA_RANK_FIXED, .rank = 3};
    ck_assert_uint_eq(lora_rank_select(S, 5, &f), 3);
    f.rank = 9;       /* capped at the values there are */
    ck_assert_uint_eq(lora_rank_select(S, 5, &f), 5);
    f.max_rank = 4;
    ck_assert_uint_eq(lora_rank_select(S, 5, &f), 4);
    ck_assert_uint_eq(lora_rank_select(S, 0, &f), 0);

    /* a zero matrix keeps rank 1 (PEFT needs r >= 1) */
    double Z[3] = {0, 0, 0};
    ck_assert_uint_eq(lora_rank_select(Z, 3, &r), 1);
    ck_assert_uint_eq(lora_rank_select(Z, 3, &q), 1);
}
END_TEST

START_TEST(test_rank_error)
{
    double S[5] = {4, 3, 2, 1, 0};
    ck_assert_double_eq_tol(lora_rank_rel_error(S, 5, 1), sqrt(14.0 / 30.0), 1e-15);
    ck_assert_double_eq_tol(lora_rank_rel_error(S, 5, 3), sqrt(1.0 / 30.0), 1e-15);
    ck_assert(lora_rank_rel_error(S, 5, 4) == 0.0);
    ck_assert(lora_rank_rel_error(S, 5, 9) == 0.0);
    double Z[2] = {0, 0};
    ck_assert(lora_rank_rel_error(Z, 2, 1) == 0.0);

    /* against the dense truncation error on a random ΔW */
    uint64_t st = 77, out = 30, in = 25, r = 6;
    double *B = randmat(out * r, &st), *A = randmat(r * in, &st);
    lora_svd sv;
    lora_error e;
    ck_assert_int_eq(lora_svd_factors(B, A, out, r, in, 0.7, &sv, &e), LORA_OK);
    double *D = dense(B, A, out, r, in, 0.7);
    for (uint64_t keep = 1; keep <= sv.k; keep++) {
        double num = 0, den = 0;
        for (uint64_t i = 0; i < out; i++)
            for (uint64_t j = 0; j < in; j++) {
                double t = 0;
                for (uint64_t l = 0; l < keep; l++)
                    t += sv.U[l * out + i] * sv.S[l] * sv.V[l * in + j];
                num += (D[i * in + j] - t) * (D[i * in + j] - t);
                den += D[i * in + j] * D[i * in + j];
            }
        ck_assert_double_eq_tol(lora_rank_rel_error(sv.S, sv.k, keep), sqrt(num / den), 1e-9);
    }
    lora_svd_free(&sv);
    free(B);
    free(A);
    free(D);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("svd");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_svd_random_shapes);
    tcase_add_test(tc, test_svd_edge_shapes);
    tcase_add_test(tc, test_svd_rank_deficient);
    tcase_add_test(tc, test_svd_empty_and_bad);
    tcase_add_test(tc, test_rank_rules);
    tcase_add_test(tc, test_rank_error);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

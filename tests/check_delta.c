/*
 * check_delta.c - the canonical delta (delta.c) against a plain
 * reference loop, on shapes that are and are not multiples of the
 * vector width, odd and even row counts, row ranges that start inside
 * the matrix, 1 against N threads (same bytes), and each of the
 * AVX-512, AVX2 and generic kernels (LORA_NO_AVX512, LORA_NO_AVX2).
 */
#include "testutil.h"
#include "internal.h"
#include "mergecore.h"

#include <stdlib.h>
#include <string.h>

/* The contract, written as plainly as possible. */
static void ref_rows(const double *B, const double *A, uint64_t r, uint64_t in, double scale,
                     uint64_t i0, uint64_t i1, double *dst)
{
    for (uint64_t i = i0; i < i1; i++)
        for (uint64_t j = 0; j < in; j++) {
            double acc = 0.0;
            for (uint64_t k = 0; k < r; k++) {
                volatile double p = B[i * r + k] * A[k * in + j]; /* no contraction */
                acc = acc + p;
            }
            dst[(i - i0) * in + j] = scale * acc;
        }
}

/* float-born random values spanning many binades, as real weights */
static double *rand_floats(uint64_t n, uint64_t *st)
{
    double *v = malloc(n * sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (uint64_t i = 0; i < n; i++) {
        double x = tu_randu(st);
        int e = (int)(tu_rand(st) % 24) - 12;
        v[i] = (double)(float)ldexp(x, e);
    }
    return v;
}

/* Kernel z for the calls that follow: 2 the best the CPU has
 * (AVX-512 here), 1 at most AVX2 with FMA, 0 the generic one. */
static void set_kernel(int z)
{
    if (z < 2)
        setenv("LORA_NO_AVX512", "1", 1);
    else
        unsetenv("LORA_NO_AVX512");
    if (z < 1)
        setenv("LORA_NO_AVX2", "1", 1);
    else
        unsetenv("LORA_NO_AVX2");
}

/* Every kernel, packed and not, from row 0 and from row 1, against the
 * reference: the AVX-512 tiles are 4 rows x 2 panels, the AVX2 ones
 * 6 rows x half a panel, so outs and ins cover every row remainder,
 * odd panel counts and column tails. */
START_TEST(test_shapes)
{
    static const uint64_t rs[] = {1, 2, 3, 8, 16, 17};
    static const uint64_t ins[] = {1, 3, 4, 5, 15, 16, 17, 31, 33, 64, 100};
    static const uint64_t outs[] = {1, 2, 3, 5, 6, 7};
    uint64_t st = 12345;
    for (size_t a = 0; a < sizeof rs / sizeof *rs; a++)
        for (size_t b = 0; b < sizeof ins / sizeof *ins; b++)
            for (size_t c = 0; c < sizeof outs / sizeof *outs; c++) {
                uint64_t r = rs[a], in = ins[b], out = outs[c];
                double *A = rand_floats(r * in, &st), *B = rand_floats(out * r, &st);
                double *x = calloc(out * in, sizeof(double)), *y = calloc(out * in, sizeof(double));
                double *P = malloc((lora_delta_packed_size(r, in) + 1) * sizeof *P);
                ck_assert_ptr_nonnull(P);
                double scale = 2.0 / 3.0;
                ref_rows(B, A, r, in, scale, 0, out, x);
                lora_delta_pack(A, r, in, P);
                for (int z = 2; z >= 0; z--) {
                    set_kernel(z);
                    memset(y, 0xff, out * in * sizeof(double));
                    lora_delta_rows(B, A, r, in, scale, 0, out, y);
                    ck_assert_msg(memcmp(x, y, out * in * sizeof(double)) == 0,
                                  "r=%lu in=%lu out=%lu kernel %d differs", (unsigned long)r,
                                  (unsigned long)in, (unsigned long)out, z);
                    /* A packed once (the merge engine's way) */
                    memset(y, 0xff, out * in * sizeof(double));
                    lora_delta_rows_packed(B, A, P, r, in, scale, 0, out, y);
                    ck_assert_msg(memcmp(x, y, out * in * sizeof(double)) == 0,
                                  "packed r=%lu in=%lu out=%lu kernel %d differs",
                                  (unsigned long)r, (unsigned long)in, (unsigned long)out, z);
                    if (out > 1) { /* rows from inside */
                        memset(y, 0xff, out * in * sizeof(double));
                        lora_delta_rows_packed(B, A, P, r, in, scale, 1, out, y);
                        ck_assert(memcmp(x + in, y, (out - 1) * in * sizeof(double)) == 0);
                        memset(y, 0xff, out * in * sizeof(double));
                        lora_delta_rows(B, A, r, in, scale, 1, out, y);
                        ck_assert(memcmp(x + in, y, (out - 1) * in * sizeof(double)) == 0);
                    }
                }
                set_kernel(2);
                free(P); free(A); free(B); free(x); free(y);
            }
}
END_TEST

START_TEST(test_threads)
{
    uint64_t st = 99, r = 16, in = 257, out = 101;
    double *A = rand_floats(r * in, &st), *B = rand_floats(out * r, &st);
    double *x = calloc(out * in, sizeof(double)), *y = calloc(out * in, sizeof(double));
    lora_delta_rows_mt(B, A, r, in, 0.5, 0, out, x, 1);
    for (int t = 2; t <= 7; t++) {
        memset(y, 0xff, out * in * sizeof(double));
        lora_delta_rows_mt(B, A, r, in, 0.5, 0, out, y, t);
        ck_assert_msg(memcmp(x, y, out * in * sizeof(double)) == 0, "%d threads differ", t);
    }
    /* more threads than rows, and a sub-range */
    memset(y, 0, out * in * sizeof(double));
    lora_delta_rows_mt(B, A, r, in, 0.5, 98, 101, y, 8);
    ck_assert(memcmp(x + 98 * in, y, 3 * in * sizeof(double)) == 0);
    double *z = calloc(out * in, sizeof(double));
    ref_rows(B, A, r, in, 0.5, 0, out, z);
    ck_assert(memcmp(x, z, out * in * sizeof(double)) == 0);
    free(A); free(B); free(x); free(y); free(z);
}
END_TEST

/* A rank above the panels' stack buffer (lora_delta_rows packs into the
 * heap), with column pairs, an odd panel and a column tail, and every
 * row remainder of both kernels' tiles; every kernel and the packed form. */
START_TEST(test_large_rank)
{
    uint64_t st = 7, r = 130, in = 16 * 7 + 3; /* 3 pairs (one prefetching), an odd panel */
    for (uint64_t out = 4; out <= 13; out++) {
        double *A = rand_floats(r * in, &st), *B = rand_floats(out * r, &st);
        double *x = calloc(out * in, sizeof(double)), *y = calloc(out * in, sizeof(double));
        double *P = malloc(lora_delta_packed_size(r, in) * sizeof *P);
        ck_assert_ptr_nonnull(x);
        ck_assert_ptr_nonnull(y);
        ck_assert_ptr_nonnull(P);
        lora_delta_pack(A, r, in, P);
        ref_rows(B, A, r, in, -3.0, 0, out, x);
        for (int z = 2; z >= 0; z--) {
            set_kernel(z);
            memset(y, 0xff, out * in * sizeof(double));
            lora_delta_rows(B, A, r, in, -3.0, 0, out, y);
            ck_assert_msg(memcmp(x, y, out * in * sizeof(double)) == 0, "out=%lu kernel %d",
                          (unsigned long)out, z);
            memset(y, 0xff, out * in * sizeof(double));
            lora_delta_rows_packed(B, A, P, r, in, -3.0, 0, out, y);
            ck_assert_msg(memcmp(x, y, out * in * sizeof(double)) == 0, "packed out=%lu kernel %d",
                          (unsigned long)out, z);
        }
        set_kernel(2);
        free(A); free(B); free(x); free(y); free(P);
    }
}
END_TEST

/* Sums where the order over k matters: a different order would give
 * different bytes, so this shows the kernel keeps k increasing. */
START_TEST(test_order)
{
    uint64_t r = 3, in = 20, out = 2;
    double A[60], B[6], x[40], y[40];
    for (int j = 0; j < 20; j++) {
        A[j] = 1.0;
        A[20 + j] = 0x1p-53;
        A[40 + j] = 0x1p-53;
    }
    for (int i = 0; i < 6; i++)
        B[i] = 1.0;
    ref_rows(B, A, r, in, 1.0, 0, out, x);
    lora_delta_rows(B, A, r, in, 1.0, 0, out, y);
    ck_assert(memcmp(x, y, sizeof x) == 0);
    ck_assert(x[0] == 1.0); /* (1 + 2^-53) + 2^-53 = 1 under ties-to-even */
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("delta");
    TCase *tc = tcase_create("delta");
    tcase_add_test(tc, test_shapes);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_large_rank);
    tcase_add_test(tc, test_order);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite(), 0);
}

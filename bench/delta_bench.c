/*
 * delta_bench.c - CPU time of the canonical-delta kernel (delta.c) the
 * way lora-merge calls it, against the kernel it replaced, measured in
 * the same run and printed as ratios (the machine is shared: absolute
 * times move with the load, ratios of interleaved runs much less).
 * Not a test: it prints, and asserts only that every kernel gave the
 * same bytes.
 *
 * The work is one LLaMA-7B layer at r = 16 (202 M elements): q, k, v, o
 * 4096 x 4096, gate and up 11008 x 4096, down 4096 x 11008.  Per tensor,
 * A is packed once, then the rows go in the merge engine's order: blocks
 * of lora_block_rows(in) rows, parts of 2^16 / in rows (mergecore.c's
 * part_rows), each part's delta into the same per-worker buffer.
 *
 * Rows printed (median CPU seconds of the rounds, one thread):
 *   old          the 4-row x 16-column AVX-512 kernel of session 4 (a
 *                frozen copy below), buffers from malloc as the engine
 *                had them (16 bytes past a 64-byte line)
 *   old-aligned  the same kernel, buffers 64-byte aligned
 *   new          lora_delta_rows_packed, buffers aligned (the engine's)
 *   avx2+fma     the same with LORA_NO_AVX512 set (the AVX2 kernel)
 *   generic      the same with LORA_NO_AVX2 also set: the portable
 *                kernel (its AVX2 clone here), the one CPUs without
 *                AVX-512 ran before session 5
 *   ideal        16 FMAs per element at this CPU's measured rate of
 *                independent 512-bit FMAs
 *
 * Usage: delta_bench [ROUNDS] (default 5).  `make bench/delta_bench`.
 */
#include "internal.h"
#include "mergecore.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#include <immintrin.h>
#define HAVE512 1
#define AVX512 __attribute__((target("avx512f")))
#endif

#define JB 16
#define R 16

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef void (*rows_fn)(const double *B, const double *A, const double *P, uint64_t r,
                        uint64_t in, double scale, uint64_t i0, uint64_t i1, double *dst);

#ifdef HAVE512
/* The kernel before session 5 (delta.c at 1e4f2c2), kept here only to
 * be measured against: 4 rows x one 16-column panel, 6 loads per 8
 * FMAs, each sum a chain of r dependent FMAs. */
static AVX512 void old_panel(const double *B, const double *P, uint64_t r, uint64_t in,
                             double scale, uint64_t i0, uint64_t i1, double *dst)
{
    __m512d sc = _mm512_set1_pd(scale);
    uint64_t i = i0;
    for (; i + 4 <= i1; i += 4) {
        const double *b0 = B + i * r, *b1 = b0 + r, *b2 = b1 + r, *b3 = b2 + r;
        __m512d a00 = _mm512_setzero_pd(), a01 = a00, a10 = a00, a11 = a00;
        __m512d a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        for (uint64_t k = 0; k < r; k++) {
            __m512d x0 = _mm512_loadu_pd(P + k * JB), x1 = _mm512_loadu_pd(P + k * JB + 8);
            __m512d s0 = _mm512_set1_pd(b0[k]), s1 = _mm512_set1_pd(b1[k]);
            __m512d s2 = _mm512_set1_pd(b2[k]), s3 = _mm512_set1_pd(b3[k]);
            a00 = _mm512_fmadd_pd(s0, x0, a00); a01 = _mm512_fmadd_pd(s0, x1, a01);
            a10 = _mm512_fmadd_pd(s1, x0, a10); a11 = _mm512_fmadd_pd(s1, x1, a11);
            a20 = _mm512_fmadd_pd(s2, x0, a20); a21 = _mm512_fmadd_pd(s2, x1, a21);
            a30 = _mm512_fmadd_pd(s3, x0, a30); a31 = _mm512_fmadd_pd(s3, x1, a31);
        }
        double *d0 = dst + (i - i0) * in;
        _mm512_storeu_pd(d0, _mm512_mul_pd(a00, sc));
        _mm512_storeu_pd(d0 + 8, _mm512_mul_pd(a01, sc));
        _mm512_storeu_pd(d0 + in, _mm512_mul_pd(a10, sc));
        _mm512_storeu_pd(d0 + in + 8, _mm512_mul_pd(a11, sc));
        _mm512_storeu_pd(d0 + 2 * in, _mm512_mul_pd(a20, sc));
        _mm512_storeu_pd(d0 + 2 * in + 8, _mm512_mul_pd(a21, sc));
        _mm512_storeu_pd(d0 + 3 * in, _mm512_mul_pd(a30, sc));
        _mm512_storeu_pd(d0 + 3 * in + 8, _mm512_mul_pd(a31, sc));
    }
    for (; i < i1; i++) {
        const double *b0 = B + i * r;
        __m512d a0 = _mm512_setzero_pd(), a1 = a0;
        for (uint64_t k = 0; k < r; k++) {
            __m512d s0 = _mm512_set1_pd(b0[k]);
            a0 = _mm512_fmadd_pd(s0, _mm512_loadu_pd(P + k * JB), a0);
            a1 = _mm512_fmadd_pd(s0, _mm512_loadu_pd(P + k * JB + 8), a1);
        }
        double *d0 = dst + (i - i0) * in;
        _mm512_storeu_pd(d0, _mm512_mul_pd(a0, sc));
        _mm512_storeu_pd(d0 + 8, _mm512_mul_pd(a1, sc));
    }
}

/* The shapes here are multiples of 16: no column tail. */
static void old_rows(const double *B, const double *A, const double *P, uint64_t r, uint64_t in,
                     double scale, uint64_t i0, uint64_t i1, double *dst)
{
    (void)A;
    for (uint64_t j = 0; j + JB <= in; j += JB)
        old_panel(B, P + j * r, r, in, scale, i0, i1, dst + j);
}

/* Independent 512-bit FMAs per second (12 chains: more than latency x
 * ports on any AVX-512 core). */
static AVX512 double fma_rate(void)
{
    __m512d a[12], x = _mm512_set1_pd(1.0000001), y = _mm512_set1_pd(1e-9);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_pd(i);
    const long n = 50000000;
    double t0 = cpu_now();
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 12
        for (int c = 0; c < 12; c++)
            a[c] = _mm512_fmadd_pd(a[c], x, y);
    }
    double t = cpu_now() - t0;
    __m512d s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm512_add_pd(s, a[i]);
    volatile double sink = _mm512_reduce_add_pd(s);
    (void)sink;
    return 12.0 * (double)n / t;
}
#endif

static void new_rows(const double *B, const double *A, const double *P, uint64_t r, uint64_t in,
                     double scale, uint64_t i0, uint64_t i1, double *dst)
{
    lora_delta_rows_packed(B, A, P, r, in, scale, i0, i1, dst);
}

static const uint64_t shapes[][3] = {{4096, 4096, 4}, {11008, 4096, 2}, {4096, 11008, 1}};
#define NSHAPES 3

/* One tensor the engine's way; returns CPU seconds (packing included).
 * Leaves the last part's delta in sum. */
static double tensor(rows_fn f, uint64_t out, uint64_t in, const double *B, const double *A,
                     double *P, double *sum)
{
    double t0 = cpu_now();
    lora_delta_pack(A, R, in, P);
    uint64_t br = lora_block_rows(in), pr = (1u << 16) / in ? (1u << 16) / in : 1;
    for (uint64_t b = 0; b < out; b += br) {
        uint64_t be = b + br < out ? b + br : out;
        for (uint64_t a = b; a < be; a += pr)
            f(B, A, P, R, in, 0.5, a, a + pr < be ? a + pr : be, sum);
    }
    return cpu_now() - t0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* float-born values, as decoded factors are */
static void fill(double *v, uint64_t n, uint64_t seed)
{
    for (uint64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = (double)(float)(((double)(seed >> 11) * 0x1p-53 - 0.5) * 0.05);
    }
}

enum { OLD, OLD_AL, NEW, AVX2, GENERIC, NK };
static const char *names[NK] = {"old", "old-aligned", "new", "avx2+fma", "generic"};

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    if (rounds < 1 || rounds > 1000) {
        fprintf(stderr, "usage: delta_bench [ROUNDS]\n");
        return 2;
    }
    uint64_t maxd = 11008, cap = lora_block_rows(4096) * 4096;
    size_t np = lora_delta_packed_size(R, maxd);
    double *B = malloc(maxd * R * sizeof *B), *A = malloc(R * maxd * sizeof *A);
    /* the old engine's buffers (malloc: 16 bytes past a line) and the new (64-aligned) */
    double *Pm = malloc(np * sizeof *Pm), *Sm = malloc(cap * sizeof *Sm);
    void *pa = NULL, *sa = NULL, *ref = malloc(cap * sizeof(double));
    if (!B || !A || !Pm || !Sm || !ref || posix_memalign(&pa, 64, np * sizeof(double)) ||
        posix_memalign(&sa, 64, cap * sizeof(double))) {
        fprintf(stderr, "delta_bench: out of memory\n");
        return 1;
    }
    double *Pa = pa, *Sa = sa;
    fill(B, maxd * R, 1);
    fill(A, R * maxd, 2);
    memset(Sm, 0, cap * sizeof *Sm);
    memset(Sa, 0, cap * sizeof *Sa);

    int have512 = 0;
#ifdef HAVE512
    have512 = __builtin_cpu_supports("avx512f");
#endif
    printf("delta kernel, one LLaMA-7B layer at r = 16 (202.4 M elements), CPU seconds, %d rounds%s\n",
           rounds, have512 ? "" : " (no AVX-512: new = the AVX2 kernel, no old rows)");
    double *t[NK], *ratio = malloc((size_t)rounds * sizeof *ratio);
    double *ratio2 = malloc((size_t)rounds * sizeof *ratio2);
    double shape_t[NK][NSHAPES];
    memset(shape_t, 0, sizeof shape_t);
    for (int k = 0; k < NK; k++)
        t[k] = calloc((size_t)rounds, sizeof(double));
    int bad = 0;
    for (int rd = 0; rd < rounds; rd++) {
        for (int s = 0; s < NSHAPES; s++) {
            uint64_t out = shapes[s][0], in = shapes[s][1], part = (1u << 16) / in * in;
            for (uint64_t n = 0; n < shapes[s][2]; n++)
                for (int k = 0; k < NK; k++) {
                    double dt = 0;
                    if (k == OLD || k == OLD_AL) {
#ifdef HAVE512
                        if (!have512)
                            continue;
                        dt = k == OLD ? tensor(old_rows, out, in, B, A, Pm, Sm)
                                      : tensor(old_rows, out, in, B, A, Pa, Sa);
                        if (k == OLD)
                            memcpy(ref, Sm, part * sizeof(double));
                        else if (memcmp(ref, Sa, part * sizeof(double)))
                            bad = 1;
#else
                        continue;
#endif
                    } else {
                        if (k == AVX2 || k == GENERIC)
                            setenv("LORA_NO_AVX512", "1", 1);
                        if (k == GENERIC)
                            setenv("LORA_NO_AVX2", "1", 1);
                        dt = tensor(new_rows, out, in, B, A, Pa, Sa);
                        unsetenv("LORA_NO_AVX512");
                        unsetenv("LORA_NO_AVX2");
                        if (have512 && memcmp(ref, Sa, part * sizeof(double)))
                            bad = 1;
                    }
                    t[k][rd] += dt;
                    shape_t[k][s] += dt;
                }
        }
        ratio[rd] = have512 ? t[OLD][rd] / t[NEW][rd] : 0;
        ratio2[rd] = t[GENERIC][rd] / t[AVX2][rd];
    }
    for (int k = 0; k < NK; k++) {
        if (!have512 && (k == OLD || k == OLD_AL))
            continue;
        double lo = t[k][0], hi = t[k][0];
        for (int rd = 1; rd < rounds; rd++) {
            lo = t[k][rd] < lo ? t[k][rd] : lo;
            hi = t[k][rd] > hi ? t[k][rd] : hi;
        }
        printf("  %-13s %.3f s  (range %.3f-%.3f)  per tensor class q/k/v/o %.3f, gate/up %.3f, down %.3f\n",
               names[k], median(t[k], rounds), lo, hi, shape_t[k][0] / rounds,
               shape_t[k][1] / rounds, shape_t[k][2] / rounds);
    }
#ifdef HAVE512
    if (have512) {
        double elems = 0;
        for (int s = 0; s < NSHAPES; s++)
            elems += (double)(shapes[s][0] * shapes[s][1] * shapes[s][2]);
        double fmas = elems * R / 8; /* 8 lanes per 512-bit FMA */
        double rate = fma_rate();
        printf("  %-13s %.3f s  (%.2f G 512-bit FMA/s measured)\n", "ideal", fmas / rate,
               rate * 1e-9);
        printf("old / new, median of the rounds' ratios: %.2f\n", median(ratio, rounds));
    }
#endif
    printf("generic / avx2+fma, median of the rounds' ratios: %.2f\n", median(ratio2, rounds));
    printf("same bytes: %s\n", bad ? "NO" : "yes");
    for (int k = 0; k < NK; k++)
        free(t[k]);
    free(ratio);
    free(ratio2);
    free(B); free(A); free(Pm); free(Sm); free(pa); free(sa); free(ref);
    return bad;
}

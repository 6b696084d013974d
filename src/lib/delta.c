/*
 * delta.c - the canonical delta ΔW = scale·B·A of DESIGN.md, row by row.
 *
 * This is where lora-merge spends its arithmetic (LLaMA-7B, 4 layers,
 * r = 16: about 13 G multiply-adds), so there are three kernels, chosen
 * at run time (the binary still runs on any x86-64): AVX-512 (tiles of
 * 4 rows x 32 columns), AVX2 with FMA (6 rows x 8 columns), and a
 * generic one in GCC vector types over j (cloned for AVX2 without FMA).
 * bench/delta_bench measures them.  The contract does not depend on any
 * of that:
 *
 *   dst[i][j] = scale · (((0 + B[i,0]·A[0,j]) + B[i,1]·A[1,j]) + ...)
 *
 * in double, k increasing.  Each product of two float-born values is
 * exact in double, so a fused multiply-add rounds exactly like the
 * separate add; vector lanes are different j, never different k; row
 * blocks handed to threads are different i.  Hence the same bytes for
 * any kernel, any thread count, any block size.
 */
#include "internal.h"
#include "mergecore.h"

#include <pthread.h>
#include <string.h>

typedef double v4d __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define LORA_CLONES __attribute__((target_clones("default", "avx2")))
#else
#define LORA_CLONES
#endif

/* Unaligned vector load and store (macros: a function returning a
 * vector would change the ABI of the default clone). */
#define ld4(p) ({ v4d v_; memcpy(&v_, (p), sizeof v_); v_; })
#define st4(p, v) do { v4d w_ = (v); memcpy((p), &w_, sizeof w_); } while (0)

/* The k-th row of A is `in` doubles away from the (k-1)-th: for the
 * usual power-of-two widths every A[k, j..j+15] maps to the same L1
 * set and the loads thrash.  So a panel of 16 columns of A is first
 * packed contiguously (P[k·16 + c] = A[k, j + c]) and then reused by
 * every row of the block. */
#define JB 16

/* The generic kernel: rows i and i+1 of the panel at once: they share
 * every load of P, and the eight accumulators stay in registers
 * through the k loop. */
LORA_CLONES
static void panel_rows(const double *B, const double *P, uint64_t r, uint64_t in, double scale,
                       uint64_t i0, uint64_t i1, double *dst)
{
    uint64_t i = i0;
    for (; i + 2 <= i1; i += 2) {
        const double *b0 = B + i * r, *b1 = b0 + r;
        v4d a00 = {0, 0, 0, 0}, a01 = a00, a02 = a00, a03 = a00;
        v4d a10 = a00, a11 = a00, a12 = a00, a13 = a00;
        for (uint64_t k = 0; k < r; k++) {
            const double *pk = P + k * JB;
            v4d x0 = ld4(pk), x1 = ld4(pk + 4), x2 = ld4(pk + 8), x3 = ld4(pk + 12);
            double s0 = b0[k], s1 = b1[k];
            a00 += s0 * x0; a01 += s0 * x1; a02 += s0 * x2; a03 += s0 * x3;
            a10 += s1 * x0; a11 += s1 * x1; a12 += s1 * x2; a13 += s1 * x3;
        }
        double *d0 = dst + (i - i0) * in, *d1 = d0 + in;
        st4(d0, a00 * scale); st4(d0 + 4, a01 * scale);
        st4(d0 + 8, a02 * scale); st4(d0 + 12, a03 * scale);
        st4(d1, a10 * scale); st4(d1 + 4, a11 * scale);
        st4(d1 + 8, a12 * scale); st4(d1 + 12, a13 * scale);
    }
    if (i < i1) {
        const double *b0 = B + i * r;
        v4d a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
        for (uint64_t k = 0; k < r; k++) {
            const double *pk = P + k * JB;
            double s = b0[k];
            a0 += s * ld4(pk); a1 += s * ld4(pk + 4);
            a2 += s * ld4(pk + 8); a3 += s * ld4(pk + 12);
        }
        double *d0 = dst + (i - i0) * in;
        st4(d0, a0 * scale); st4(d0 + 4, a1 * scale);
        st4(d0 + 8, a2 * scale); st4(d0 + 12, a3 * scale);
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#include <immintrin.h>
#include <stdlib.h>
#define LORA_DELTA_X86 1
#define AVX512 __attribute__((target("avx512f")))

/* The AVX-512 kernel: tiles of RB rows x NP panels (16·NP columns),
 * RB·2·NP accumulators held in registers through the k loop (the
 * constant loops are unrolled; the callers below pass constants only).
 * Per k, 2·NP loads of P and RB broadcasts of B feed 2·NP·RB fused
 * multiply-adds (the same bytes: the product is exact, see the top).
 * The old 4 x 16 tile needed 6 loads per 8 FMAs and was as long as its
 * FMA latency chain; 4 x 32 needs 8 per 16, with 16 independent sums. */
static inline __attribute__((always_inline)) AVX512 void
tile512(const double *b, uint64_t r, const double *P, uint64_t in, __m512d sc, double *d,
        const int RB, const int NP, const double *pf)
{
    __m512d acc[4][4];
    const uint64_t ps = r * JB; /* the next panel of P */
#pragma GCC unroll 4
    for (int x = 0; x < RB; x++)
#pragma GCC unroll 4
        for (int c = 0; c < 2 * NP; c++)
            acc[x][c] = _mm512_setzero_pd();
    for (uint64_t k = 0; k < r; k++) {
        __m512d v[4];
        if (pf) {
            _mm_prefetch((const char *)(pf + k * JB), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + k * JB + 8), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + ps + k * JB), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + ps + k * JB + 8), _MM_HINT_T0);
        }
#pragma GCC unroll 2
        for (int q = 0; q < NP; q++) {
            v[2 * q] = _mm512_loadu_pd(P + q * ps + k * JB);
            v[2 * q + 1] = _mm512_loadu_pd(P + q * ps + k * JB + 8);
        }
#pragma GCC unroll 4
        for (int x = 0; x < RB; x++) {
            __m512d s = _mm512_set1_pd(b[x * r + k]);
#pragma GCC unroll 4
            for (int c = 0; c < 2 * NP; c++)
                acc[x][c] = _mm512_fmadd_pd(s, v[c], acc[x][c]);
        }
    }
#pragma GCC unroll 4
    for (int x = 0; x < RB; x++)
#pragma GCC unroll 4
        for (int c = 0; c < 2 * NP; c++)
            _mm512_storeu_pd(d + x * in + c * 8, _mm512_mul_pd(acc[x][c], sc));
}

/* Rows [i0, i1) of NP panels from P (columns j .. j + 16·NP of dst):
 * four rows at a time, then the 1-3 left; the first 4-row tile also
 * prefetches the pair at pf (NULL: none). */
static inline __attribute__((always_inline)) AVX512 void
rows512(const double *B, const double *P, uint64_t r, uint64_t in, __m512d sc, uint64_t i0,
        uint64_t i1, double *dst, const int NP, const double *pf)
{
    uint64_t i = i0;
    if (pf && i + 4 <= i1) {
        tile512(B + i * r, r, P, in, sc, dst, 4, NP, pf);
        i += 4;
    }
    for (; i + 4 <= i1; i += 4)
        tile512(B + i * r, r, P, in, sc, dst + (i - i0) * in, 4, NP, NULL);
    switch (i1 - i) {
    case 3:
        tile512(B + i * r, r, P, in, sc, dst + (i - i0) * in, 3, NP, NULL);
        break;
    case 2:
        tile512(B + i * r, r, P, in, sc, dst + (i - i0) * in, 2, NP, NULL);
        break;
    case 1:
        tile512(B + i * r, r, P, in, sc, dst + (i - i0) * in, 1, NP, NULL);
        break;
    default:
        break;
    }
}

/* np consecutive panels of P (panel q at P + q·16·r) into columns
 * [0, 16·np) of dst: two panels at a time, so that a panel pair (4 KB
 * at r = 16) is read from L1 by every row of the range.  The first tile
 * of each pair prefetches the pair PF_PAIRS ahead: with the few rows of
 * a part of a wide tensor (5 rows of down_proj's 11008 columns), P
 * (1.4 MB) comes from L3 at every part and its loads were the kernel's
 * stall (bench/README, session 5). */
#define PF_PAIRS 2

static AVX512 void panels_avx512(const double *B, const double *P, uint64_t np, uint64_t r,
                                 uint64_t in, double scale, uint64_t i0, uint64_t i1, double *dst)
{
    __m512d sc = _mm512_set1_pd(scale);
    uint64_t q = 0, ahead = 2 * PF_PAIRS;
    for (; q + 2 <= np; q += 2) {
        const double *pq = P + q * JB * r;
        if (q + ahead + 2 <= np)
            rows512(B, pq, r, in, sc, i0, i1, dst + q * JB, 2, P + (q + ahead) * JB * r);
        else
            rows512(B, pq, r, in, sc, i0, i1, dst + q * JB, 2, NULL);
    }
    if (q < np)
        rows512(B, P + q * JB * r, r, in, sc, i0, i1, dst + q * JB, 1, NULL);
}

/* The AVX2 kernel (CPUs with AVX2 and FMA but not AVX-512): sixteen
 * 256-bit registers, so tiles of RB <= 6 rows x 8 columns (half a
 * panel), 2·RB independent sums, 2 loads of P and RB broadcasts per
 * 2·RB FMAs.  The generic kernel (panel_rows' AVX2 clone, no FMA: GCC
 * does not contract in ISO C) took 2 rows x 16 columns. */
#define AVX2FMA __attribute__((target("avx2,fma")))

static inline __attribute__((always_inline)) AVX2FMA void
tile256(const double *b, uint64_t r, const double *P, uint64_t in, __m256d sc, double *d,
        const int RB)
{
    __m256d acc[6][2];
#pragma GCC unroll 6
    for (int x = 0; x < RB; x++)
        acc[x][0] = acc[x][1] = _mm256_setzero_pd();
    for (uint64_t k = 0; k < r; k++) {
        __m256d v0 = _mm256_loadu_pd(P + k * JB), v1 = _mm256_loadu_pd(P + k * JB + 4);
#pragma GCC unroll 6
        for (int x = 0; x < RB; x++) {
            __m256d s = _mm256_broadcast_sd(b + x * r + k);
            acc[x][0] = _mm256_fmadd_pd(s, v0, acc[x][0]);
            acc[x][1] = _mm256_fmadd_pd(s, v1, acc[x][1]);
        }
    }
#pragma GCC unroll 6
    for (int x = 0; x < RB; x++) {
        _mm256_storeu_pd(d + x * in, _mm256_mul_pd(acc[x][0], sc));
        _mm256_storeu_pd(d + x * in + 4, _mm256_mul_pd(acc[x][1], sc));
    }
}

/* np panels into columns [0, 16·np) of dst, rows [i0, i1): per panel
 * (2 KB at r = 16, in L1 for every row), each half, six rows at a time. */
static AVX2FMA void panels_avx2(const double *B, const double *P, uint64_t np, uint64_t r,
                                uint64_t in, double scale, uint64_t i0, uint64_t i1, double *dst)
{
    __m256d sc = _mm256_set1_pd(scale);
    for (uint64_t q = 0; q < np * 2; q++) {
        const double *ph = P + q / 2 * JB * r + q % 2 * 8;
        double *dh = dst + q * 8;
        uint64_t i = i0;
        for (; i + 6 <= i1; i += 6)
            tile256(B + i * r, r, ph, in, sc, dh + (i - i0) * in, 6);
        const double *b = B + i * r;
        double *d = dh + (i - i0) * in;
        switch (i1 - i) {
        case 5: tile256(b, r, ph, in, sc, d, 5); break;
        case 4: tile256(b, r, ph, in, sc, d, 4); break;
        case 3: tile256(b, r, ph, in, sc, d, 3); break;
        case 2: tile256(b, r, ph, in, sc, d, 2); break;
        case 1: tile256(b, r, ph, in, sc, d, 1); break;
        default: break;
        }
    }
}

/* The kernel for this CPU: 2 AVX-512, 1 AVX2 with FMA, 0 the generic
 * one.  LORA_NO_AVX512 and LORA_NO_AVX2 (tests, bench) take the next
 * one down, as in mergefast.c. */
static int delta_kernel(void)
{
    if (__builtin_cpu_supports("avx512f") && !getenv("LORA_NO_AVX512"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !getenv("LORA_NO_AVX2"))
        return 1;
    return 0;
}
#endif

/* Columns [j, in) of rows [i0, i1), plainly (the columns after the last
 * full panel, or everything when no panel could be had). */
static void delta_tail(const double *B, const double *A, uint64_t r, uint64_t in, double scale,
                       uint64_t i0, uint64_t i1, uint64_t j, double *dst)
{
    for (uint64_t i = i0; i < i1; i++)
        for (uint64_t jj = j; jj < in; jj++) {
            double x = 0;
            for (uint64_t k = 0; k < r; k++)
                x += B[i * r + k] * A[k * in + jj];
            dst[(i - i0) * in + jj] = x * scale;
        }
}

/* np consecutive panels of P into columns [0, 16·np) of dst for rows
 * [i0, i1), with kernel z (delta_kernel). */
static void panels(const double *B, const double *P, uint64_t np, uint64_t r, uint64_t in,
                   double scale, uint64_t i0, uint64_t i1, double *dst, int z)
{
#ifdef LORA_DELTA_X86
    if (z == 2) {
        panels_avx512(B, P, np, r, in, scale, i0, i1, dst);
        return;
    }
    if (z == 1) {
        panels_avx2(B, P, np, r, in, scale, i0, i1, dst);
        return;
    }
#endif
    (void)z;
    for (uint64_t q = 0; q < np; q++)
        panel_rows(B, P + q * JB * r, r, in, scale, i0, i1, dst + q * JB);
}

static int use_kernel(void)
{
#ifdef LORA_DELTA_X86
    return delta_kernel();
#else
    return 0;
#endif
}

size_t lora_delta_packed_size(uint64_t r, uint64_t in)
{
    return (size_t)(r * (in / JB * JB));
}

/* np panels of A (row stride lda) from its column 0: panel q at
 * P + q·16·r, P[q·16·r + k·16 + c] = A[k, q·16 + c]. */
static void pack_panels(const double *A, uint64_t lda, uint64_t r, uint64_t np, double *P)
{
    for (uint64_t q = 0; q < np; q++)
        for (uint64_t k = 0; k < r; k++)
            memcpy(P + (q * r + k) * JB, A + k * lda + q * JB, JB * sizeof *P);
}

void lora_delta_pack(const double *A, uint64_t r, uint64_t in, double *P)
{
    pack_panels(A, in, r, in / JB, P);
}

void lora_delta_rows_packed(const double *B, const double *A, const double *P, uint64_t r,
                            uint64_t in, double scale, uint64_t i0, uint64_t i1, double *dst)
{
    uint64_t np = in / JB;
    panels(B, P, np, r, in, scale, i0, i1, dst, use_kernel());
    delta_tail(B, A, r, in, scale, i0, i1, np * JB, dst);
}

/* Panels packed on the stack (NPS at a time, the AVX-512 kernel's pair)
 * for r up to RSTACK; a larger r packs into the heap. */
#define NPS 2
#define RSTACK 128

void lora_delta_rows(const double *B, const double *A, uint64_t r, uint64_t in, double scale,
                     uint64_t i0, uint64_t i1, double *dst)
{
    double stackp[RSTACK * NPS * JB] __attribute__((aligned(64)));
    double *P = stackp;
    uint64_t j = 0;
    if (r > RSTACK && in >= JB) {
        P = malloc(r * NPS * JB * sizeof *P);
        if (!P) /* no memory for the panels: the plain loop gives the same bytes */
            P = NULL;
    }
    if (P) {
        int z = use_kernel();
        while (j + JB <= in) {
            uint64_t np = (in - j) / JB < NPS ? (in - j) / JB : NPS;
            pack_panels(A + j, in, r, np, P);
            panels(B, P, np, r, in, scale, i0, i1, dst + j, z);
            j += np * JB;
        }
        if (P != stackp)
            free(P);
    }
    delta_tail(B, A, r, in, scale, i0, i1, j, dst);
}

struct delta_job {
    const double *B, *A;
    uint64_t r, in, i0, i1, base;
    double scale;
    double *dst;
};

static void *delta_thread(void *arg)
{
    struct delta_job *j = arg;
    lora_delta_rows(j->B, j->A, j->r, j->in, j->scale, j->i0, j->i1,
                    j->dst + (j->i0 - j->base) * j->in);
    return NULL;
}

void lora_delta_rows_mt(const double *B, const double *A, uint64_t r, uint64_t in, double scale,
                        uint64_t i0, uint64_t i1, double *dst, int nthreads)
{
    if (nthreads < 1)
        nthreads = 1;
    if (nthreads > 256)
        nthreads = 256;
    uint64_t rows = i1 > i0 ? i1 - i0 : 0;
    if ((uint64_t)nthreads > rows)
        nthreads = rows ? (int)rows : 1;
    if (nthreads == 1) {
        lora_delta_rows(B, A, r, in, scale, i0, i1, dst);
        return;
    }
    struct delta_job jobs[256];
    pthread_t tid[256];
    int created[256];
    uint64_t per = rows / (uint64_t)nthreads, extra = rows % (uint64_t)nthreads, at = i0;
    for (int t = 0; t < nthreads; t++) {
        uint64_t n = per + ((uint64_t)t < extra);
        jobs[t] = (struct delta_job){B, A, r, in, at, at + n, i0, scale, dst};
        at += n;
    }
    /* A thread that cannot be started has its block done here instead:
     * the bytes are the same either way. */
    for (int t = 1; t < nthreads; t++)
        created[t] = pthread_create(&tid[t], NULL, delta_thread, &jobs[t]) == 0;
    delta_thread(&jobs[0]);
    for (int t = 1; t < nthreads; t++) {
        if (created[t])
            pthread_join(tid[t], NULL);
        else
            delta_thread(&jobs[t]);
    }
}

/* ---- overflow of a module's delta ------------------------------------ */

#include "mergecore.h"
#include "fpbits.h"

#include <math.h>

/* Elements of ΔW = scale·B·A (the canonical delta) that are not finite
 * once rounded to dt (F32, F16 or BF16; other dtypes count as F32):
 * a scale like lora_alpha = 1e308 gives such a delta from finite
 * factors.  The bound |scale|·max_i Σ_k |B[i,k]|·max |A| is checked
 * first, so the delta is formed (row by row) only when it could
 * overflow.  Factors with NaN/Inf values are not examined (*bad = 0:
 * lora-inspect reports them on their own). */
int lora_delta_nonfinite(const lora_module *m, lora_dtype dt, uint64_t *bad, lora_error *err)
{
    *bad = 0;
    int kind;
    size_t sz;
    if (lora_fp_kind(dt, &kind, &sz))
        kind = FP_F32;
    uint64_t r = m->r, in = m->in, out = m->out, nA, nB;
    if (!lora_mul_ok(r, in, &nA) || !lora_mul_ok(r, out, &nB) || m->A->numel != nA ||
        m->B->numel != nB)
        return LORA_OK; /* a shape problem, reported elsewhere */
    if (!isfinite(m->scale)) {
        *bad = out * in;
        return LORA_OK;
    }
    double *A = malloc((nA ? nA : 1) * sizeof *A), *B = malloc((nB ? nB : 1) * sizeof *B);
    double *row = malloc((in ? in : 1) * sizeof *row);
    int rc = LORA_OK;
    if (!A || !B || !row) {
        rc = lora_oom(err);
        goto done;
    }
    if (lora_decode_f64(m->A->dtype, m->A->data, A, nA) ||
        lora_decode_f64(m->B->dtype, m->B->data, B, nB)) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: factors of dtype %s cannot be read", m->name,
                         lora_dtype_name(m->A->dtype));
        goto done;
    }
    double amax = 0, bmax = 0;
    for (uint64_t x = 0; x < nA; x++) {
        if (!isfinite(A[x]))
            goto done;
        amax = fmax(amax, fabs(A[x]));
    }
    for (uint64_t i = 0; i < out; i++) {
        double s = 0;
        for (uint64_t k = 0; k < r; k++) {
            if (!isfinite(B[i * r + k]))
                goto done;
            s += fabs(B[i * r + k]);
        }
        bmax = fmax(bmax, s);
    }
    double bound = fabs(m->scale) * bmax * amax;
    if (isfinite(bound) && fp_finite(kind, fp_round(kind, bound)))
        goto done;
    for (uint64_t i = 0; i < out; i++) {
        lora_delta_rows(B, A, r, in, m->scale, i, i + 1, row);
        for (uint64_t j = 0; j < in; j++)
            if (!isfinite(row[j]) || !fp_finite(kind, fp_round(kind, row[j])))
                (*bad)++;
    }
done:
    free(A);
    free(B);
    free(row);
    return rc;
}

/*
 * delta.c - the canonical delta ΔW = scale·B·A of DESIGN.md, row by row.
 *
 * This is where lora-merge spends its arithmetic (LLaMA-7B, 4 layers,
 * r = 16: about 13 G multiply-adds), so the kernel is written with GCC
 * vector types over j and cloned for AVX2 at run time
 * (target_clones: the binary still runs on any x86-64).  The contract
 * does not depend on any of that:
 *
 *   dst[i][j] = scale · (((0 + B[i,0]·A[0,j]) + B[i,1]·A[1,j]) + ...)
 *
 * in double, k increasing.  Each product of two float-born values is
 * exact in double, so a fused multiply-add rounds exactly like the
 * separate add; vector lanes are different j, never different k; row
 * blocks handed to threads are different i.  Hence the same bytes for
 * any clone, any thread count, any block size.
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

/* Rows i and i+1 of the panel at once: they share every load of P,
 * and the eight accumulators stay in registers through the k loop. */
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
#define LORA_DELTA512 1
#define AVX512 __attribute__((target("avx512f")))

/* panel_rows with AVX-512: four rows at a time, the 16 columns of the
 * panel in two registers, eight accumulators.  A fused multiply-add
 * gives the same bytes (the product is exact: see the top). */
static AVX512 void panel_rows_avx512(const double *B, const double *P, uint64_t r, uint64_t in,
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

/* AVX-512 unless the CPU lacks it or LORA_NO_AVX512 is set (tests) */
static int delta_avx512(void)
{
    return __builtin_cpu_supports("avx512f") && !getenv("LORA_NO_AVX512");
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

/* One panel of rows [i0, i1), the best kernel the CPU has. */
static void panel(const double *B, const double *P, uint64_t r, uint64_t in, double scale,
                  uint64_t i0, uint64_t i1, double *dst, int z)
{
#ifdef LORA_DELTA512
    if (z) {
        panel_rows_avx512(B, P, r, in, scale, i0, i1, dst);
        return;
    }
#endif
    (void)z;
    panel_rows(B, P, r, in, scale, i0, i1, dst);
}

static int use_avx512(void)
{
#ifdef LORA_DELTA512
    return delta_avx512();
#else
    return 0;
#endif
}

size_t lora_delta_packed_size(uint64_t r, uint64_t in)
{
    return (size_t)(r * (in / JB * JB));
}

void lora_delta_pack(const double *A, uint64_t r, uint64_t in, double *P)
{
    for (uint64_t j = 0; j + JB <= in; j += JB)
        for (uint64_t k = 0; k < r; k++)
            memcpy(P + j * r + k * JB, A + k * in + j, JB * sizeof *P);
}

void lora_delta_rows_packed(const double *B, const double *A, const double *P, uint64_t r,
                            uint64_t in, double scale, uint64_t i0, uint64_t i1, double *dst)
{
    int z = use_avx512();
    uint64_t j = 0;
    for (; j + JB <= in; j += JB)
        panel(B, P + j * r, r, in, scale, i0, i1, dst + j, z);
    delta_tail(B, A, r, in, scale, i0, i1, j, dst);
}

void lora_delta_rows(const double *B, const double *A, uint64_t r, uint64_t in, double scale,
                     uint64_t i0, uint64_t i1, double *dst)
{
    double stackp[256 * JB];
    double *P = stackp;
    uint64_t j = 0;
    if (r > 256 && in >= JB) {
        P = malloc(r * JB * sizeof *P);
        if (!P) /* no memory for the panel: the plain loop gives the same bytes */
            P = NULL;
    }
    if (P) {
        int z = use_avx512();
        for (; j + JB <= in; j += JB) {
            for (uint64_t k = 0; k < r; k++)
                memcpy(P + k * JB, A + k * in + j, JB * sizeof *P);
            panel(B, P, r, in, scale, i0, i1, dst + j, z);
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

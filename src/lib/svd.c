/*
 * svd.c - the singular value decomposition of a LoRA update
 * ΔW = scale·B·A from its thin factors, without ever forming the
 * out×in matrix.
 *
 * Why it works: with B = Q_B·R_B and Aᵀ = Q_A·R_A (thin QR, Q with
 * orthonormal columns), ΔW = Q_B·(scale·R_B·R_Aᵀ)·Q_Aᵀ.  The core
 * C = scale·R_B·R_Aᵀ is at most r×r; if C = U_c·Σ·V_cᵀ then
 * ΔW = (Q_B·U_c)·Σ·(Q_A·V_c)ᵀ is an SVD of ΔW, because products of
 * matrices with orthonormal columns have orthonormal columns.
 *
 * Cost: two QRs, O((out+in)·r²), one SVD of r×r, two products
 * O((out+in)·r·k), against O(out·in·min(out,in)) for a dense SVD.
 *
 * Shapes: p = min(out, r) and q = min(in, r) are the QR ranks (when
 * r > out the QR of B is "wide": Q_B is out×out and R_B out×r
 * trapezoidal), the core is p×q, and k = min(p, q) = min(out, in, r).
 * No pivoting is needed: Householder QR gives an orthonormal Q even
 * when B or A is rank deficient, and the deficiency shows up as zero
 * singular values of the core.
 *
 * Everything is done in double in LAPACK's column-major layout (no
 * LAPACKE transposition copies); the inputs are copied once into
 * column-major buffers.  Results are deterministic for a given OpenBLAS
 * build and thread count (LAPACK itself is deterministic; OpenBLAS's
 * dgemm may split sums differently with other thread counts, which
 * changes the last bits only).
 */
#include "internal.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

void lora_svd_free(lora_svd *s)
{
    if (!s)
        return;
    free(s->S);
    free(s->U);
    free(s->V);
    memset(s, 0, sizeof *s);
}

/* n doubles, checked for overflow; NULL on failure (n = 0 gives a
 * valid 1-element block so that callers need not special-case it). */
static double *dalloc(uint64_t a, uint64_t b)
{
    uint64_t n, bytes;
    if (!lora_mul_ok(a, b, &n) || !lora_mul_ok(n ? n : 1, sizeof(double), &bytes) ||
        bytes > SIZE_MAX)
        return NULL;
    return malloc((size_t)bytes);
}

static int all_finite(const double *x, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

/* Thin QR of the m×n column-major matrix M (lda m): on return M holds
 * Q (m×min(m,n)) in its first columns and R (min(m,n)×n, upper
 * trapezoidal, zeros below) is written to R (ldr = min(m,n)). */
static int thin_qr(double *M, uint64_t m, uint64_t n, double *R, double *tau,
                   const char *what, lora_error *err)
{
    uint64_t p = m < n ? m : n;
    lapack_int info = LAPACKE_dgeqrf(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)n, M,
                                     (lapack_int)m, tau);
    if (info != 0)
        return info < 0 ? lora_seterr(err, LORA_EIO, "dgeqrf(%s): argument %d invalid", what,
                                      (int)-info)
                        : lora_seterr(err, LORA_EINPUT, "dgeqrf(%s) failed (%d)", what, (int)info);
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < p; i++)
            R[j * p + i] = i <= j ? M[j * m + i] : 0.0;
    info = LAPACKE_dorgqr(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)p, (lapack_int)p, M,
                          (lapack_int)m, tau);
    if (info != 0)
        return lora_seterr(err, info < 0 ? LORA_EIO : LORA_EINPUT, "dorgqr(%s) failed (%d)", what,
                           (int)info);
    return LORA_OK;
}

int lora_svd_factors(const double *B, const double *A, uint64_t out, uint64_t r,
                     uint64_t in, double scale, lora_svd *res, lora_error *err)
{
    memset(res, 0, sizeof *res);
    res->out = out;
    res->in = in;
    /* LAPACK takes int dimensions; a LoRA factor never comes close. */
    if (out > INT32_MAX / 2 || in > INT32_MAX / 2 || r > INT32_MAX / 2)
        return lora_seterr(err, LORA_EINPUT, "matrix too large for LAPACK (%llu×%llu, r=%llu)",
                           (unsigned long long)out, (unsigned long long)in,
                           (unsigned long long)r);
    if (!isfinite(scale))
        return lora_seterr(err, LORA_EINPUT, "scale is not finite");
    uint64_t p = out < r ? out : r, q = in < r ? in : r, k = p < q ? p : q;
    res->k = k;
    res->S = dalloc(k, 1);
    res->U = dalloc(out, k);
    res->V = dalloc(in, k);
    double *Bc = dalloc(out, r), *Ac = dalloc(in, r), *RB = dalloc(p, r), *RA = dalloc(q, r);
    double *tau = dalloc(r, 1), *C = dalloc(p, q), *Uc = dalloc(p, k), *Vct = dalloc(k, q);
    int rc = LORA_OK;
    if (!res->S || !res->U || !res->V || !Bc || !Ac || !RB || !RA || !tau || !C || !Uc || !Vct) {
        rc = lora_oom(err);
        goto done;
    }
    if (k == 0)
        goto done;
    if (!all_finite(B, out * r) || !all_finite(A, r * in)) {
        rc = lora_seterr(err, LORA_EINPUT, "factor holds NaN or infinity");
        goto done;
    }
    /* B row-major out×r → column-major; A row-major r×in is already Aᵀ
     * (in×r) in column-major order. */
    for (uint64_t i = 0; i < out; i++)
        for (uint64_t j = 0; j < r; j++)
            Bc[j * out + i] = B[i * r + j];
    memcpy(Ac, A, (size_t)(in * r) * sizeof(double));

    if ((rc = thin_qr(Bc, out, r, RB, tau, "B", err)) != LORA_OK ||
        (rc = thin_qr(Ac, in, r, RA, tau, "A^T", err)) != LORA_OK)
        goto done;

    /* C = scale · R_B (p×r) · R_Aᵀ (r×q) */
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, (int)p, (int)q, (int)r, scale, RB,
                (int)p, RA, (int)q, 0.0, C, (int)p);
    lapack_int info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int)p, (lapack_int)q, C,
                                     (lapack_int)p, res->S, Uc, (lapack_int)p, Vct,
                                     (lapack_int)k);
    if (info != 0) {
        rc = lora_seterr(err, info < 0 ? LORA_EIO : LORA_EINPUT,
                         "dgesdd of the %llu×%llu core did not converge (%d)",
                         (unsigned long long)p, (unsigned long long)q, (int)info);
        goto done;
    }
    /* U = Q_B (out×p) · U_c (p×k);  V = Q_A (in×q) · V_c (q×k) = Q_A · (V_cᵀ)ᵀ */
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)k, (int)p, 1.0, Bc,
                (int)out, Uc, (int)p, 0.0, res->U, (int)out);
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, (int)in, (int)k, (int)q, 1.0, Ac,
                (int)in, Vct, (int)k, 0.0, res->V, (int)in);
done:
    free(Bc);
    free(Ac);
    free(RB);
    free(RA);
    free(tau);
    free(C);
    free(Uc);
    free(Vct);
    if (rc != LORA_OK)
        lora_svd_free(res);
    return rc;
}

/* The dense path, for combined deltas that are no longer low rank
 * (combine.c).  A row-major out×in W is the column-major in×out Wᵀ, so
 * LAPACK factors Wᵀ = U'·Σ·V'ᵀ in place and the SVD of W is
 * V'·Σ·U'ᵀ: U of W is V' (the rows of V'ᵀ), V of W is U'. */
int lora_svd_dense(double *W, uint64_t out, uint64_t in, lora_svd *res, lora_error *err)
{
    memset(res, 0, sizeof *res);
    res->out = out;
    res->in = in;
    if (out > INT32_MAX / 2 || in > INT32_MAX / 2)
        return lora_seterr(err, LORA_EINPUT, "matrix too large for LAPACK (%llu×%llu)",
                           (unsigned long long)out, (unsigned long long)in);
    uint64_t k = out < in ? out : in;
    res->k = k;
    res->S = dalloc(k, 1);
    res->U = dalloc(out, k);
    res->V = dalloc(in, k);
    double *VTp = dalloc(k, out);
    int rc = LORA_OK;
    if (!res->S || !res->U || !res->V || !VTp) {
        rc = lora_oom(err);
        goto done;
    }
    if (k == 0)
        goto done;
    if (!all_finite(W, out * in)) {
        rc = lora_seterr(err, LORA_EINPUT, "matrix holds NaN or infinity");
        goto done;
    }
    lapack_int info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int)in, (lapack_int)out, W,
                                     (lapack_int)in, res->S, res->V, (lapack_int)in, VTp,
                                     (lapack_int)k);
    if (info != 0) {
        rc = lora_seterr(err, info < 0 ? LORA_EIO : LORA_EINPUT,
                         "dgesdd of the %llu×%llu matrix did not converge (%d)",
                         (unsigned long long)out, (unsigned long long)in, (int)info);
        goto done;
    }
    /* V'ᵀ is k×out column-major: element (j, i) at VTp[i·k + j] = U[i, j]. */
    for (uint64_t j = 0; j < k; j++)
        for (uint64_t i = 0; i < out; i++)
            res->U[j * out + i] = VTp[i * k + j];
done:
    free(VTp);
    if (rc != LORA_OK)
        lora_svd_free(res);
    return rc;
}

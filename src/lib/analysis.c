/*
 * analysis.c - the low-rank analyses of Section 7 of the LoRA paper
 * (Hu et al. 2021) for one module: the spectrum of ΔW and its effective
 * rank, the normalized subspace similarity φ between two adapters'
 * A matrices (Figures 3-4), and how much ΔW amplifies directions of W
 * (Table 7).  Everything goes through the factored SVD of svd.c; only
 * the amplification touches a dense matrix, the base weight W itself.
 */
#include "internal.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

/* A tensor decoded into a fresh double array. */
static int decode(const lora_tensor *t, double **out, lora_error *err)
{
    uint64_t bytes;
    if (!lora_mul_ok(t->numel ? t->numel : 1, sizeof(double), &bytes) || bytes > SIZE_MAX)
        return lora_seterr(err, LORA_EINPUT, "%s: tensor too large", t->name);
    *out = malloc((size_t)bytes);
    if (!*out)
        return lora_oom(err);
    if (lora_decode_f64(t->dtype, t->data, *out, (size_t)t->numel) != LORA_OK) {
        free(*out);
        *out = NULL;
        return lora_seterr(err, LORA_EINPUT, "%s: cannot decode %s values", t->name,
                           lora_dtype_name(t->dtype) ? lora_dtype_name(t->dtype) : "?");
    }
    return LORA_OK;
}

static int module_svd(const lora_module *m, lora_svd *sv, lora_error *err)
{
    double *B = NULL, *A = NULL;
    int rc = decode(m->B, &B, err);
    if (rc == LORA_OK)
        rc = decode(m->A, &A, err);
    if (rc == LORA_OK)
        rc = lora_svd_factors(B, A, m->out, m->r, m->in, m->scale, sv, err);
    free(B);
    free(A);
    if (rc != LORA_OK)
        lora_err_prefix(err, "%s", m->name);
    return rc;
}

void lora_spectrum_free(lora_spectrum *sp)
{
    if (!sp)
        return;
    free(sp->S);
    memset(sp, 0, sizeof *sp);
}

int lora_spectrum_module(const lora_module *m, lora_spectrum *sp, lora_error *err)
{
    memset(sp, 0, sizeof *sp);
    lora_svd sv;
    int rc = module_svd(m, &sv, err);
    if (rc != LORA_OK)
        return rc;
    sp->k = sv.k;
    sp->S = sv.S;
    sv.S = NULL;
    lora_svd_free(&sv);
    double e = 0;
    for (uint64_t i = 0; i < sp->k; i++)
        e += sp->S[i] * sp->S[i];
    sp->norm = sqrt(e);
    lora_rank_rule r90 = {.kind = LORA_RANK_ENERGY, .energy = 0.90};
    lora_rank_rule r99 = {.kind = LORA_RANK_ENERGY, .energy = 0.99};
    sp->rank90 = lora_rank_select(sp->S, sp->k, &r90);
    sp->rank99 = lora_rank_select(sp->S, sp->k, &r99);
    sp->stable_rank = sp->k && sp->S[0] > 0 ? e / (sp->S[0] * sp->S[0]) : 0.0;
    return LORA_OK;
}

void lora_subspace_phi(const double *V1, uint64_t k1, const double *V2, uint64_t k2, uint64_t n,
                       uint64_t ni, uint64_t nj, double *phi)
{
    if (ni == 0 || nj == 0)
        return;
    /* G = V1[:, :ni]ᵀ V2[:, :nj]; then P = prefix sums of G², stored in
     * phi itself before the division. */
    double *G = malloc(ni * nj * sizeof(double));
    if (!G) {
        for (uint64_t i = 0; i < ni * nj; i++)
            phi[i] = NAN;
        return;
    }
    (void)k1;
    (void)k2;
    /* V1, V2 column-major with leading dimension n: G = V1ᵀV2 is
     * column-major ni×nj. */
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, (int)ni, (int)nj, (int)n, 1.0, V1, (int)n,
                V2, (int)n, 0.0, G, (int)ni);
    for (uint64_t a = 0; a < ni; a++)
        for (uint64_t b = 0; b < nj; b++) {
            double g = G[a + b * ni];
            double p = g * g;
            if (a)
                p += phi[(a - 1) * nj + b];
            if (b)
                p += phi[a * nj + b - 1];
            if (a && b)
                p -= phi[(a - 1) * nj + b - 1];
            phi[a * nj + b] = p;
        }
    for (uint64_t a = 0; a < ni; a++)
        for (uint64_t b = 0; b < nj; b++)
            phi[a * nj + b] /= (double)(a < b ? a + 1 : b + 1);
    free(G);
}

/* Right-singular directions of a module's A alone (in×k). */
static int a_directions(const lora_module *m, lora_svd *sv, lora_error *err)
{
    double *A = NULL;
    int rc = decode(m->A, &A, err);
    if (rc != LORA_OK)
        return rc;
    double *Id = calloc(m->r * m->r + 1, sizeof(double));
    if (!Id) {
        free(A);
        return lora_oom(err);
    }
    for (uint64_t i = 0; i < m->r; i++)
        Id[i * m->r + i] = 1.0;
    rc = lora_svd_factors(Id, A, m->r, m->r, m->in, 1.0, sv, err);
    free(Id);
    free(A);
    if (rc != LORA_OK)
        lora_err_prefix(err, "%s", m->name);
    return rc;
}

int lora_module_phi(const lora_module *m1, const lora_module *m2, double **phi, uint64_t *ni,
                    uint64_t *nj, lora_error *err)
{
    *phi = NULL;
    *ni = *nj = 0;
    if (m1->in != m2->in)
        return lora_seterr(err, LORA_EINPUT, "%s: A has %llu columns in one adapter, %llu in the other",
                           m1->name, (unsigned long long)m1->in, (unsigned long long)m2->in);
    lora_svd s1, s2;
    int rc = a_directions(m1, &s1, err);
    if (rc != LORA_OK)
        return rc;
    if ((rc = a_directions(m2, &s2, err)) != LORA_OK) {
        lora_svd_free(&s1);
        return rc;
    }
    *phi = malloc((s1.k * s2.k + 1) * sizeof(double));
    if (!*phi)
        rc = lora_oom(err);
    else {
        lora_subspace_phi(s1.V, s1.k, s2.V, s2.k, m1->in, s1.k, s2.k, *phi);
        *ni = s1.k;
        *nj = s2.k;
    }
    lora_svd_free(&s1);
    lora_svd_free(&s2);
    return rc;
}

/* ‖UᵀWV‖_F for U (out×k) and V (in×k) column-major; W as stored, row-major,
 * transposed into Linear layout when transpose is set. */
static double proj_norm(const double *W, int transpose, uint64_t out, uint64_t in,
                        const double *U, const double *V, uint64_t k, double *WV, double *M)
{
    /* V column-major in×k is row-major k×in: WV = W·V is out×k row-major. */
    if (!transpose)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)out, (int)k, (int)in, 1.0, W,
                    (int)in, V, (int)in, 0.0, WV, (int)k);
    else
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasTrans, (int)out, (int)k, (int)in, 1.0, W,
                    (int)out, V, (int)in, 0.0, WV, (int)k);
    /* U column-major out×k is row-major k×out: M = Uᵀ·WV is k×k. */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)k, (int)k, (int)out, 1.0, U,
                (int)out, WV, (int)k, 0.0, M, (int)k);
    double t = 0;
    for (uint64_t i = 0; i < k * k; i++)
        t += M[i] * M[i];
    return sqrt(t);
}

/* Standard normal numbers from a fixed-seed xorshift64* (Box–Muller), so
 * that the "random" row of Table 7 is the same on every run. */
static double gauss(uint64_t *s)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        u[i] = ((double)((*s * 2685821657736338717ULL) >> 11) + 0.5) * 0x1.0p-53;
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

int lora_module_amplification(const lora_module *m, const lora_tensor *w,
                              lora_amplification *amp, lora_error *err)
{
    memset(amp, 0, sizeof *amp);
    uint64_t out = m->out, in = m->in;
    uint64_t want0 = m->transpose ? in : out, want1 = m->transpose ? out : in;
    if (w->ndim != 2 || w->shape[0] != want0 || w->shape[1] != want1)
        return lora_seterr(err, LORA_EINPUT, "%s: base tensor %s has the wrong shape for ΔW %llux%llu",
                           m->name, w->name, (unsigned long long)out, (unsigned long long)in);
    lora_svd dw = {0}, rnd = {0};
    double *W = NULL, *Wc = NULL, *WV = NULL, *M = NULL, *S = NULL, *G1 = NULL, *G2 = NULL;
    int rc = module_svd(m, &dw, err);
    if (rc != LORA_OK)
        return rc;
    uint64_t k = dw.k, mn = out < in ? out : in;
    if ((rc = decode(w, &W, err)) != LORA_OK)
        goto done;
    Wc = malloc((out * in + 1) * sizeof(double));
    WV = malloc((out * k + 1) * sizeof(double));
    M = malloc((k * k + 1) * sizeof(double));
    S = malloc((mn ? mn : 1) * sizeof(double));
    G1 = malloc((out * k + 1) * sizeof(double));
    G2 = malloc((k * in + 1) * sizeof(double));
    if (!Wc || !WV || !M || !S || !G1 || !G2) {
        rc = lora_oom(err);
        goto done;
    }
    amp->r = k;
    double e = 0;
    for (uint64_t i = 0; i < out * in; i++)
        e += W[i] * W[i];
    amp->norm_w = sqrt(e);
    e = 0;
    for (uint64_t i = 0; i < k; i++)
        e += dw.S[i] * dw.S[i];
    amp->norm_dw = sqrt(e);
    amp->proj_dw = proj_norm(W, m->transpose, out, in, dw.U, dw.V, k, WV, M);
    amp->factor = amp->proj_dw > 0 ? amp->norm_dw / amp->proj_dw : 0.0;

    /* W's own top-k directions give UᵀWV = diag(σ_1..σ_k): only the
     * singular values are needed.  (W as stored has the same ones.) */
    memcpy(Wc, W, out * in * sizeof(double));
    /* Row-major storage read as column-major is Wᵀ: same singular values,
     * and no transposition copy inside LAPACKE. */
    lapack_int info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'N', (lapack_int)w->shape[1],
                                     (lapack_int)w->shape[0], Wc, (lapack_int)w->shape[1], S, NULL,
                                     1, NULL, 1);
    if (info != 0) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: SVD of the base weight did not converge (%d)",
                         m->name, (int)info);
        goto done;
    }
    e = 0;
    for (uint64_t i = 0; i < k; i++)
        e += S[i] * S[i];
    amp->proj_w = sqrt(e);

    /* Random subspaces: orthonormal bases of the column spaces of two
     * Gaussian matrices (the factored SVD of G1·G2 gives them). */
    uint64_t seed = 0x2545F4914F6CDD1DULL;
    for (uint64_t i = 0; i < out * k; i++)
        G1[i] = gauss(&seed);
    for (uint64_t i = 0; i < k * in; i++)
        G2[i] = gauss(&seed);
    if ((rc = lora_svd_factors(G1, G2, out, k, in, 1.0, &rnd, err)) != LORA_OK)
        goto done;
    amp->proj_random = proj_norm(W, m->transpose, out, in, rnd.U, rnd.V, rnd.k, WV, M);
done:
    lora_svd_free(&dw);
    lora_svd_free(&rnd);
    free(W);
    free(Wc);
    free(WV);
    free(M);
    free(S);
    free(G1);
    free(G2);
    return rc;
}

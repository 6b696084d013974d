/*
 * rank_reduce.c - benchmark (not a test): the rank reduction of one
 * random LoRA module through lora_svd_factors against LAPACK's dense
 * SVD (dgesdd) of the same ΔW, in the same process and run.
 *
 * usage: bench/rank_reduce OUT IN R K [DUMP]
 * Prints one line per measurement ("name seconds") and the largest
 * relative difference of the top K singular values; with DUMP, writes
 * B and A (float64, row-major, raw) to DUMP.B and DUMP.A so that
 * bench/rank-reduce can time numpy / torch on the same ΔW.
 */
#include "internal.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static double randu(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ULL) >> 11) * 0x1.0p-53 * 2.0 - 1.0;
}

static int dump(const char *path, const double *x, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(x, sizeof(double), n, f) != n || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s OUT IN R K [DUMP]\n", argv[0]);
        return 2;
    }
    uint64_t out = strtoull(argv[1], NULL, 10), in = strtoull(argv[2], NULL, 10);
    uint64_t r = strtoull(argv[3], NULL, 10), k = strtoull(argv[4], NULL, 10);
    if (!out || !in || !r || !k || k > r) {
        fprintf(stderr, "bad sizes\n");
        return 2;
    }
    double scale = 2.0;
    double *B = malloc(out * r * sizeof(double)), *A = malloc(r * in * sizeof(double));
    if (!B || !A)
        return 4;
    for (uint64_t i = 0; i < out * r; i++)
        B[i] = randu() * 0.01;
    for (uint64_t i = 0; i < r * in; i++)
        A[i] = randu() * 0.01;
    if (argc > 5) {
        char p[4096];
        snprintf(p, sizeof p, "%s.B", argv[5]);
        if (dump(p, B, out * r))
            return 4;
        snprintf(p, sizeof p, "%s.A", argv[5]);
        if (dump(p, A, r * in))
            return 4;
    }

    /* Ours: SVD from the factors, then the reduced factors
     * B' = U_k·sqrt(Σ_k), A' = sqrt(Σ_k)·V_kᵀ (what lora_reduce writes). */
    double best = 1e300;
    lora_svd sv = {0};
    double *Bn = malloc(out * k * sizeof(double)), *An = malloc(k * in * sizeof(double));
    for (int rep = 0; rep < 5; rep++) {
        lora_svd_free(&sv);
        double t0 = now();
        lora_error e;
        if (lora_svd_factors(B, A, out, r, in, scale, &sv, &e) != LORA_OK) {
            fprintf(stderr, "svd: %s\n", e.msg);
            return 1;
        }
        for (uint64_t j = 0; j < k; j++) {
            double s = sqrt(sv.S[j]);
            for (uint64_t i = 0; i < out; i++)
                Bn[i * k + j] = sv.U[j * out + i] * s;
            for (uint64_t i = 0; i < in; i++)
                An[j * in + i] = sv.V[j * in + i] * s;
        }
        double t = now() - t0;
        if (t < best)
            best = t;
    }
    printf("ours_factored_svd %.6f\n", best);

    /* Dense: form ΔW (column-major) and run dgesdd with thin vectors. */
    double *D = malloc(out * in * sizeof(double));
    double *S = malloc((out < in ? out : in) * sizeof(double));
    uint64_t mn = out < in ? out : in;
    double *U = malloc(out * mn * sizeof(double)), *Vt = malloc(mn * in * sizeof(double));
    if (!D || !S || !U || !Vt)
        return 4;
    double t0 = now();
    /* ΔW col-major = (row-major B·A) transposed view: D = scale·(B·A) */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)in, (int)r, scale, B,
                (int)r, A, (int)in, 0.0, D, (int)in);
    int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (int)out, (int)in, D, (int)in, S, U,
                              (int)mn, Vt, (int)in);
    double tdense = now() - t0;
    if (info != 0) {
        fprintf(stderr, "dgesdd failed: %d\n", info);
        return 1;
    }
    printf("lapacke_dense_gesdd %.6f\n", tdense);
    double maxd = 0;
    for (uint64_t i = 0; i < k; i++) {
        double d = fabs(sv.S[i] - S[i]) / S[0];
        if (d > maxd)
            maxd = d;
    }
    printf("top%llu_sv_max_rel_diff %.3e\n", (unsigned long long)k, maxd);
    printf("speedup_vs_lapacke %.1f\n", tdense / best);
    printf("sigma_top %.10e\n", sv.S[0]);
    lora_svd_free(&sv);
    free(B); free(A); free(Bn); free(An); free(D); free(S); free(U); free(Vt);
    return 0;
}

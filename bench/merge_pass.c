/*
 * bench/merge_pass.c - CPU time of the BF16 merge pass (mergefast.c)
 * per element, for each kernel the CPU can run, as ratios against the
 * portable one measured in the same run (not a test: numbers only).
 *
 *   make bench/merge_pass && bench/merge_pass [DELTA_SD [REPS]]
 *
 * The data are bench/merge's in miniature: one part of 2^16 elements
 * (what mergecore.c hands the pass), W0 = BF16 of N(0, 0.02), the delta
 * N(0, DELTA_SD) (default 2e-4: about 3 % of the elements flagged, as
 * the LLaMA-shaped bench gives), all in cache.  "pass" is
 * lora_fast_merge_bf16 with the receipt's proof (flags); "queued" is the
 * merge with the receipt: lora_fast_merge_q_bf16, the flagged lanes
 * queued, and "+ ranks" adds lora_fast_ranks_bf16 over them; "unmerge"
 * is lora_fast_unmerge_q_bf16 and its ranks, taking the merged part
 * back, with the share of elements it flags.
 */
#include "internal.h"
#include "mergecore.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { N = 1 << 16 };
static unsigned char src[2 * N], dst[2 * N], back[2 * N], flag[N];
static uint32_t qbuf[3 * (N + 16)];
static double sum[N];
static uint64_t state = 88172645463325252ULL;

static uint64_t rnd(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static double gauss(void)
{
    double u = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
    double v = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ns per element of the pass alone, of the pass with the runs and of
 * the unmerge pass; the shares of elements each flags */
static void measure(int reps, double *pass, double *flagged, double *queued, double *ranks,
                    double *unmerge, double *uflagged)
{
    lora_flagq q = {qbuf, qbuf + N + 16, qbuf + 2 * (N + 16)};
    size_t nq;
    double t0 = cpu_now();
    for (int r = 0; r < reps; r++)
        lora_fast_merge_bf16(src, dst, sum, flag, N, 1);
    double t1 = cpu_now();
    size_t nf = 0;
    for (size_t i = 0; i < N; i++)
        nf += flag[i] != 0;
    for (int r = 0; r < reps; r++)
        lora_fast_merge_q_bf16(src, dst, sum, flag, N, &q, &nq);
    double t2 = cpu_now();
    for (int r = 0; r < reps; r++) {
        lora_fast_merge_q_bf16(src, dst, sum, flag, N, &q, &nq);
        lora_fast_ranks_bf16(&q, nq, sum, q.df);
    }
    double t3 = cpu_now();
    for (int r = 0; r < reps; r++) {
        lora_fast_unmerge_q_bf16(dst, back, sum, flag, N, &q, &nq);
        lora_fast_ranks_bf16(&q, nq, sum, q.df);
    }
    double t4 = cpu_now();
    *pass = (t1 - t0) / reps / N * 1e9;
    *flagged = 100.0 * (double)nf / N;
    *queued = (t2 - t1) / reps / N * 1e9;
    *ranks = (t3 - t2) / reps / N * 1e9;
    *unmerge = (t4 - t3) / reps / N * 1e9;
    *uflagged = 100.0 * (double)nq / N;
}

int main(int argc, char **argv)
{
    double sd = argc > 1 ? atof(argv[1]) : 2e-4;
    int reps = argc > 2 ? atoi(argv[2]) : 1000;
    for (size_t i = 0; i < N; i++) {
        float f = (float)(gauss() * 0.02);
        uint32_t w;
        memcpy(&w, &f, 4);
        uint16_t b = (uint16_t)((w + 0x7fff + ((w >> 16) & 1)) >> 16);
        memcpy(src + 2 * i, &b, 2);
        sum[i] = gauss() * sd;
    }
    static const struct {
        const char *name, *no512, *no2;
    } k[] = {{"portable", "1", "1"}, {"AVX2", "1", NULL}, {"AVX-512", NULL, NULL}};
    double base = 0;
    printf("BF16 merge pass, 2^16 elements in cache, delta sd %g, %d reps (ns per element)\n",
           sd, reps);
    printf("%-9s %9s %8s %12s %9s %9s %14s %8s\n", "kernel", "pass", "flagged", "portable/it",
           "queued", "+ ranks", "unmerge+ranks", "flagged");
    for (int i = 0; i < 3; i++) {
        k[i].no512 ? setenv("LORA_NO_AVX512", "1", 1) : unsetenv("LORA_NO_AVX512");
        k[i].no2 ? setenv("LORA_NO_AVX2", "1", 1) : unsetenv("LORA_NO_AVX2");
        double p, f, qd, rk, u, uf;
        measure(reps, &p, &f, &qd, &rk, &u, &uf);
        if (i == 0)
            base = p;
        printf("%-9s %9.3f %7.2f%% %12.2f %9.3f %9.3f %14.3f %7.2f%%\n", k[i].name, p, f,
               base / p, qd, rk, u, uf);
    }
    return 0;
}

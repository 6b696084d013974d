/*
 * dtype_bench.c - throughput of the array conversions in dtype.c,
 * as a ratio to memcpy of the same source bytes measured in the same
 * run (the baseline), so the figures mean something on a loaded
 * machine.  Not a test: prints, asserts nothing.
 * Usage: dtype_bench [MILLIONS_OF_ELEMENTS] (default 16).
 */
#include "lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Best of 5, to keep the noise of a shared machine out. */
#define BEST(expr)                                                                     \
    ({                                                                                 \
        double best_ = 1e30;                                                           \
        for (int r_ = 0; r_ < 5; r_++) {                                               \
            double t0_ = now();                                                        \
            expr;                                                                      \
            double t_ = now() - t0_;                                                   \
            if (t_ < best_)                                                            \
                best_ = t_;                                                            \
        }                                                                              \
        best_;                                                                         \
    })

int main(int argc, char **argv)
{
    size_t n = (size_t)(argc > 1 ? atof(argv[1]) : 16) * 1000000;
    double *d = malloc(n * 8), *d2 = malloc(n * 8);
    float *f = malloc(n * 4), *f2 = malloc(n * 4);
    unsigned char *h = malloc(n * 2);
    if (!d || !d2 || !f || !f2 || !h)
        return 4;
    for (size_t i = 0; i < n; i++) {
        d[i] = ((double)(i % 1999) - 999.5) * 1.2345e-3;
        f[i] = (float)d[i];
    }
    memcpy(d2, d, n * 8); /* touch every page before timing */
    memcpy(f2, f, n * 4);
    memset(h, 0, n * 2);
    double m8 = BEST(memcpy(d2, d, n * 8));
    double m4 = BEST(memcpy(f2, f, n * 4));
    double m2 = BEST(memcpy(f2, h, n * 2));
    printf("elements: %zu; baseline memcpy of the source: %.2f (8 B/el), %.2f (4 B/el), "
           "%.2f (2 B/el) ns/el\n", n, m8 / (double)n * 1e9, m4 / (double)n * 1e9,
           m2 / (double)n * 1e9);
    struct {
        const char *what;
        double t, base;
    } r[8];
    int k = 0;
    r[k++] = (typeof(r[0])){"encode f64 -> BF16", BEST(lora_encode_f64(LORA_DT_BF16, d, h, n)), m8};
    r[k++] = (typeof(r[0])){"encode f64 -> F16", BEST(lora_encode_f64(LORA_DT_F16, d, h, n)), m8};
    r[k++] = (typeof(r[0])){"encode f32 -> BF16", BEST(lora_encode_f32(LORA_DT_BF16, f, h, n)), m4};
    r[k++] = (typeof(r[0])){"encode f32 -> F16", BEST(lora_encode_f32(LORA_DT_F16, f, h, n)), m4};
    lora_encode_f32(LORA_DT_BF16, f, h, n);
    r[k++] = (typeof(r[0])){"decode BF16 -> f32", BEST(lora_decode_f32(LORA_DT_BF16, h, f2, n)), m2};
    r[k++] = (typeof(r[0])){"decode BF16 -> f64", BEST(lora_decode_f64(LORA_DT_BF16, h, d2, n)), m2};
    lora_encode_f32(LORA_DT_F16, f, h, n);
    r[k++] = (typeof(r[0])){"decode F16 -> f32", BEST(lora_decode_f32(LORA_DT_F16, h, f2, n)), m2};
    r[k++] = (typeof(r[0])){"decode F16 -> f64", BEST(lora_decode_f64(LORA_DT_F16, h, d2, n)), m2};
    for (int i = 0; i < k; i++)
        printf("%-20s %6.2f ns/el  %5.1fx memcpy of its source\n", r[i].what,
               r[i].t / (double)n * 1e9, r[i].t / r[i].base);
    free(d);
    free(d2);
    free(f);
    free(f2);
    free(h);
    return 0;
}

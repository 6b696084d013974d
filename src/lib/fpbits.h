/*
 * fpbits.h - inline element conversions for the merge loop: F32, F16
 * and BF16 bits <-> double, rounding to nearest even in one step from
 * the double (the same results as lora_f64_to_f16 / lora_f64_to_bf16 /
 * (float) in dtype.c; tests/check_receipt.c checks them against those).
 * They are inline because the merge rounds every element twice (merge
 * and the reversibility check); a call per element would cost more
 * than the arithmetic.  Also the total order on bits used to step to a
 * neighbouring representable value.
 */
#ifndef LORA_FPBITS_H
#define LORA_FPBITS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t fp_dbits(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline double fp_bitsd(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* double -> BF16 bits, round to nearest even; NaN stays a quiet NaN
 * with its sign; overflow gives infinity. */
static inline uint32_t fp_round_bf16(double x)
{
    uint64_t u = fp_dbits(x);
    uint32_t sign = (uint32_t)(u >> 48) & 0x8000u;
    uint64_t a = u & 0x7fffffffffffffffULL;
    if (a >= 0x7ff0000000000000ULL)
        return a > 0x7ff0000000000000ULL ? sign | 0x7fc0u | (uint32_t)((a >> 45) & 0x3f)
                                         : sign | 0x7f80u;
    if (a >= 0x3810000000000000ULL) { /* |x| >= 2^-126: normal or overflow */
        uint64_t r = a + ((1ULL << 44) - 1) + ((a >> 45) & 1);
        int e = (int)(r >> 52) - 1023;
        if (e > 127)
            return sign | 0x7f80u;
        return sign | (uint32_t)((e + 127) << 7) | (uint32_t)((r >> 45) & 0x7f);
    }
    /* subnormal range: |x|·2^133 < 128 is exact; rint rounds to nearest even
     * (default mode), and 128 carries into the smallest normal correctly */
    return sign | (uint32_t)rint(fabs(x) * 0x1p133);
}

/* double -> F16 bits, round to nearest even. */
static inline uint32_t fp_round_f16(double x)
{
    uint64_t u = fp_dbits(x);
    uint32_t sign = (uint32_t)(u >> 48) & 0x8000u;
    uint64_t a = u & 0x7fffffffffffffffULL;
    if (a >= 0x7ff0000000000000ULL)
        return a > 0x7ff0000000000000ULL ? sign | 0x7e00u | (uint32_t)((a >> 42) & 0x1ff)
                                         : sign | 0x7c00u;
    if (a >= 0x3f10000000000000ULL) { /* |x| >= 2^-14 */
        uint64_t r = a + ((1ULL << 41) - 1) + ((a >> 42) & 1);
        int e = (int)(r >> 52) - 1023;
        if (e > 15)
            return sign | 0x7c00u;
        return sign | (uint32_t)((e + 15) << 10) | (uint32_t)((r >> 42) & 0x3ff);
    }
    return sign | (uint32_t)rint(fabs(x) * 0x1p24);
}

static inline uint32_t fp_round_f32(double x)
{
    float f = (float)x; /* C: round to nearest even in the default mode */
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static inline double fp_bf16_d(uint32_t b)
{
    float f;
    uint32_t w = b << 16;
    memcpy(&f, &w, sizeof f);
    return (double)f;
}

static inline double fp_f16_d(uint32_t h)
{
    uint64_t sign = (uint64_t)(h & 0x8000u) << 48;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        double v = (double)m * 0x1p-24;
        return sign ? -v : v;
    }
    if (e == 31)
        return fp_bitsd(sign | 0x7ff0000000000000ULL | ((uint64_t)m << 42) |
                        (m ? 0x0008000000000000ULL : 0));
    return fp_bitsd(sign | ((uint64_t)(e + 1023 - 15) << 52) | ((uint64_t)m << 42));
}

static inline double fp_f32_d(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return (double)f;
}

/* Element kinds the merge handles: 2 (F16, BF16) or 4 (F32) bytes. */
enum fp_kind { FP_F32, FP_F16, FP_BF16 };

static inline double fp_to_d(enum fp_kind k, uint32_t b)
{
    return k == FP_BF16 ? fp_bf16_d(b) : k == FP_F16 ? fp_f16_d(b) : fp_f32_d(b);
}

static inline uint32_t fp_round(enum fp_kind k, double x)
{
    return k == FP_BF16 ? fp_round_bf16(x) : k == FP_F16 ? fp_round_f16(x) : fp_round_f32(x);
}

static inline int fp_finite(enum fp_kind k, uint32_t b)
{
    return k == FP_BF16 ? (b & 0x7f80u) != 0x7f80u
         : k == FP_F16  ? (b & 0x7c00u) != 0x7c00u
                        : (b & 0x7f800000u) != 0x7f800000u;
}

static inline uint32_t fp_signbit(enum fp_kind k)
{
    return k == FP_F32 ? 0x80000000u : 0x8000u;
}

/* A total order on bits where adjacent keys are adjacent representable
 * values (-0 just below +0), so a neighbour is key ± 1. */
static inline int64_t fp_key(enum fp_kind k, uint32_t b)
{
    uint32_t s = fp_signbit(k);
    return (b & s) ? -(int64_t)(b & ~s) - 1 : (int64_t)b;
}

static inline uint32_t fp_unkey(enum fp_kind k, int64_t key)
{
    return key < 0 ? (uint32_t)(-(key + 1)) | fp_signbit(k) : (uint32_t)key;
}

/* Distance in representable steps between two finite values. */
static inline uint64_t fp_ulps(enum fp_kind k, uint32_t a, uint32_t b)
{
    int64_t x = fp_key(k, a), y = fp_key(k, b);
    return x > y ? (uint64_t)(x - y) : (uint64_t)(y - x);
}

#endif

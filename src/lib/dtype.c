/*
 * dtype.c - the safetensors element types: names and sizes, and the
 * numeric conversions between F16 / BF16 / F32 / F64 bytes and
 * float / double.
 *
 * Rounding contract (every narrowing conversion): round to nearest,
 * ties to even, in ONE step from the wider value, done in integer
 * arithmetic on the bit patterns so that it does not depend on the FP
 * environment (except f64->f32, which is the hardware's own
 * conversion, RNE in the default mode).  f64->bf16 and f64->f16 never
 * pass through f32: a merge computes in double and must round once.
 * Subnormals, signed zeros and infinities are exact; values past the
 * largest finite value round to infinity exactly as IEEE 754 says
 * (ties at max + half an ulp go to infinity); NaN stays NaN with its
 * sign and the top payload bits, and always comes out quiet.
 *
 * The array loops are plain loops over bit patterns without calls or
 * per-element dtype dispatch, so the compiler can vectorise them; the
 * narrowing encoders take a constant-shift fast path for the normal
 * range and redo only a block that holds some special value with the
 * general routine.
 */
#include "internal.h"

#include <string.h>

/* The build's -O2 does not vectorise these loops with GCC 12 (its
 * "very cheap" cost model); they are the hot path of a merge. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3")
#endif

/* On x86-64 the array loops are also compiled for AVX2 and picked at
 * load time (wider lanes, 64-bit compares); same results, bit for bit,
 * since the loops use integer operations and exact conversions only. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define ARRAY_LOOP __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef ARRAY_LOOP
#define ARRAY_LOOP
#endif

static const struct {
    const char *name;
    unsigned bits;
} dtypes[LORA_DT_COUNT] = {
    [LORA_DT_INVALID] = {NULL, 0},
    [LORA_DT_BOOL] = {"BOOL", 8},
    [LORA_DT_F4] = {"F4", 4},
    [LORA_DT_F6_E2M3] = {"F6_E2M3", 6},
    [LORA_DT_F6_E3M2] = {"F6_E3M2", 6},
    [LORA_DT_U8] = {"U8", 8},
    [LORA_DT_I8] = {"I8", 8},
    [LORA_DT_F8_E5M2] = {"F8_E5M2", 8},
    [LORA_DT_F8_E4M3] = {"F8_E4M3", 8},
    [LORA_DT_F8_E8M0] = {"F8_E8M0", 8},
    [LORA_DT_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [LORA_DT_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [LORA_DT_I16] = {"I16", 16},
    [LORA_DT_U16] = {"U16", 16},
    [LORA_DT_F16] = {"F16", 16},
    [LORA_DT_BF16] = {"BF16", 16},
    [LORA_DT_I32] = {"I32", 32},
    [LORA_DT_U32] = {"U32", 32},
    [LORA_DT_F32] = {"F32", 32},
    [LORA_DT_C64] = {"C64", 64},
    [LORA_DT_F64] = {"F64", 64},
    [LORA_DT_I64] = {"I64", 64},
    [LORA_DT_U64] = {"U64", 64},
};

const char *lora_dtype_name(lora_dtype dt)
{
    if ((unsigned)dt >= LORA_DT_COUNT)
        return NULL;
    return dtypes[dt].name;
}

lora_dtype lora_dtype_from_name(const char *name)
{
    if (!name)
        return LORA_DT_INVALID;
    for (int i = 1; i < LORA_DT_COUNT; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return (lora_dtype)i;
    return LORA_DT_INVALID;
}

unsigned lora_dtype_bits(lora_dtype dt)
{
    if ((unsigned)dt >= LORA_DT_COUNT)
        return 0;
    return dtypes[dt].bits;
}

int lora_dtype_readable(lora_dtype dt)
{
    return dt == LORA_DT_F32 || dt == LORA_DT_F16 || dt == LORA_DT_BF16 || dt == LORA_DT_F64;
}

int lora_dtype_writable(lora_dtype dt)
{
    return dt == LORA_DT_F32 || dt == LORA_DT_F16 || dt == LORA_DT_BF16;
}

/* ---- bit casts ---- */

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint64_t d2u(double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

/* ---- widening: exact ---- */

/* F16 -> F32 bit pattern, without branches: a normal number is
 * re-biased, Inf/NaN get the all-ones exponent (NaN made quiet), and a
 * subnormal is m·2^-24, exact in float. */
static inline uint32_t f16_bits_to_f32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    uint32_t normal = ((e + (127 - 15)) << 23) | (m << 13);
    uint32_t special = 0x7f800000u | (m << 13) | ((uint32_t)(m != 0) << 22);
    uint32_t sub = f2u((float)(int32_t)m * 0x1p-24f);
    /* masks rather than branches, so that the loops vectorise */
    uint32_t is0 = -(uint32_t)(e == 0), is31 = -(uint32_t)(e == 31);
    return sign | (sub & is0) | (special & is31) | (normal & ~(is0 | is31));
}

/* BF16 is the top half of an F32; a signalling NaN is made quiet. */
static inline uint32_t bf16_bits_to_f32_bits(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    uint32_t isnan = (u & 0x7fffffffu) > 0x7f800000u;
    return u | (isnan ? 0x00400000u : 0);
}

float lora_f16_to_f32(uint16_t h)
{
    return u2f(f16_bits_to_f32_bits(h));
}

float lora_bf16_to_f32(uint16_t b)
{
    return u2f(bf16_bits_to_f32_bits(b));
}

/* ---- narrowing: one RNE step in integer arithmetic ---- */

/*
 * Round a finite or infinite magnitude given as (biased exponent ee,
 * significand m with its implicit bit, mantissa width SM, bias SB) to a
 * target format with TE exponent bits and TM mantissa bits, and return
 * the target's magnitude bits.  The shift is the mantissa difference
 * plus however far the value lies below the target's smallest normal
 * exponent, so subnormal results come out of the same formula; a carry
 * out of the mantissa lands in the exponent field, which is exactly how
 * rounding up across a binade (or to infinity) is encoded.
 */
static inline uint64_t round_mag(int64_t ee, uint64_t m, int SM, int SB, int TE, int TM)
{
    const int64_t TB = (1 << (TE - 1)) - 1;
    const uint64_t inf = (uint64_t)((1 << TE) - 1) << TM;
    int64_t te = ee - SB + TB;           /* target biased exponent */
    int64_t below = te < 1 ? 1 - te : 0; /* extra right shift for subnormals */
    int64_t s = (SM - TM) + below;
    if (s > 63)
        s = 63; /* m < 2^63: everything rounds to 0 then, correctly */
    uint64_t half = (uint64_t)1 << (s - 1);
    uint64_t q = (m + (half - 1) + ((m >> s) & 1)) >> s;
    uint64_t base = te >= 1 ? (uint64_t)(te - 1) << TM : 0;
    if (te > (int64_t)((1 << TE) - 1))
        return inf;
    uint64_t r = base + q;
    return r > inf ? inf : r;
}

static inline uint16_t f32_to_small(uint32_t u, int TE, int TM)
{
    uint16_t sign = (uint16_t)((u >> 31) << (TE + TM));
    uint32_t a = u & 0x7fffffffu;
    uint32_t e = a >> 23, f = a & 0x7fffffu;
    if (a > 0x7f800000u) /* NaN: quiet, sign and top payload bits kept */
        return sign | (uint16_t)(((1u << TE) - 1) << TM) | (uint16_t)(1u << (TM - 1)) |
               (uint16_t)(f >> (23 - TM));
    uint64_t m = e ? (f | 0x800000u) : f;
    int64_t ee = e ? (int64_t)e : 1;
    return sign | (uint16_t)round_mag(ee, m, 23, 127, TE, TM);
}

static inline uint16_t f64_to_small(uint64_t u, int TE, int TM)
{
    uint16_t sign = (uint16_t)((u >> 63) << (TE + TM));
    uint64_t a = u & 0x7fffffffffffffffull;
    uint64_t e = a >> 52, f = a & 0xfffffffffffffull;
    if (a > 0x7ff0000000000000ull)
        return sign | (uint16_t)(((1u << TE) - 1) << TM) | (uint16_t)(1u << (TM - 1)) |
               (uint16_t)(f >> (52 - TM));
    uint64_t m = e ? (f | 0x10000000000000ull) : f;
    int64_t ee = e ? (int64_t)e : 1;
    return sign | (uint16_t)round_mag(ee, m, 52, 1023, TE, TM);
}

uint16_t lora_f32_to_f16(float f)
{
    return f32_to_small(f2u(f), 5, 10);
}
uint16_t lora_f32_to_bf16(float f)
{
    return f32_to_small(f2u(f), 8, 7);
}
uint16_t lora_f64_to_f16(double d)
{
    return f64_to_small(d2u(d), 5, 10);
}
uint16_t lora_f64_to_bf16(double d)
{
    return f64_to_small(d2u(d), 8, 7);
}

/* ---- array loops ---- */

/* Elements per block of the encoders' fast path. */
#define BLOCK 256

/*
 * Fast path of a narrowing encoder for one block: for magnitudes whose
 * result is a normal number of the target (no subnormal, no overflow,
 * no NaN/Inf), RNE is "add half-1 plus the lowest kept bit, shift" on
 * the re-biased pattern with a constant shift.  Returns nonzero when
 * some element of the block is outside that range; the caller then
 * redoes the block element by element.
 */
#define FAST_BLOCK(UT, SRCBITS, SM, SB, TE, TM, LO, HI)                                  \
    do {                                                                                 \
        unsigned any = 0;                                                                \
        for (size_t k = 0; k < cnt; k++) {                                               \
            UT u = SRCBITS(k);                                                           \
            UT sign = u >> (sizeof(UT) * 8 - 1);                                         \
            UT a = u & (((UT)1 << (sizeof(UT) * 8 - 1)) - 1);                            \
            any |= (a < (LO)) | (a >= (HI));                                             \
            UT rb = a - ((UT)((SB) - ((1 << ((TE)-1)) - 1)) << (SM));                    \
            UT r = (rb + (((UT)1 << ((SM) - (TM)-1)) - 1) + ((rb >> ((SM) - (TM))) & 1)) >> \
                   ((SM) - (TM));                                                        \
            out[k] = (uint16_t)((uint16_t)r | (uint16_t)(sign << ((TE) + (TM))));        \
        }                                                                                \
        bad = any;                                                                       \
    } while (0)

/* Thresholds of the fast path, as magnitudes of the source pattern:
 * LO = smallest normal of the target, HI = the first value that does
 * not round to a finite normal (max finite + half an ulp, minus one so
 * that values just below also take the careful path).  Conservative
 * bounds are fine: anything near them goes to the general routine. */
#define F32_LO(TE, TM) ((uint32_t)(127 - ((1 << ((TE)-1)) - 1) + 1) << 23)
#define F32_HI(TE, TM) ((uint32_t)(127 + ((1 << ((TE)-1)) - 1)) << 23 | 0x7f0000u)

ARRAY_LOOP static void enc_f32_small(const float *src, void *dst, size_t n, int bf)
{
    uint16_t out[BLOCK];
    for (size_t i = 0; i < n; i += BLOCK) {
        size_t cnt = n - i < BLOCK ? n - i : BLOCK;
        unsigned bad;
        const float *s = src + i;
#define SRC32(k) f2u(s[k])
        if (bf)
            FAST_BLOCK(uint32_t, SRC32, 23, 127, 8, 7, F32_LO(8, 7), F32_HI(8, 7));
        else
            FAST_BLOCK(uint32_t, SRC32, 23, 127, 5, 10, F32_LO(5, 10), F32_HI(5, 10));
        if (bad)
            for (size_t k = 0; k < cnt; k++)
                out[k] = bf ? f32_to_small(f2u(s[k]), 8, 7) : f32_to_small(f2u(s[k]), 5, 10);
        memcpy((unsigned char *)dst + 2 * i, out, 2 * cnt);
#undef SRC32
    }
}

/*
 * Fast path of f64 -> 16-bit in 32-bit lanes (SSE2 has no 64-bit
 * compares): the high word carries sign, exponent and the top 20
 * mantissa bits, which include the rounding position (bit 13 for
 * BF16, bit 10 for F16) and the half bit; all that the low word can
 * change is whether the rest is exactly zero, so it is folded into
 * bit 0 as a sticky bit.  Then RNE is the same add-and-shift as above.
 * LO/HI bound the magnitudes (high words) whose result is a finite
 * normal number; anything else goes to f64_to_small.
 */
#define FAST64(TE, TM)                                                                  \
    do {                                                                                \
        const uint32_t rebias = (uint32_t)(1023 - ((1 << ((TE)-1)) - 1)) << 20;        \
        const uint32_t lo_ = (uint32_t)(1023 - ((1 << ((TE)-1)) - 1) + 1) << 20;        \
        const uint32_t hi_ = (uint32_t)(1023 + ((1 << ((TE)-1)) - 1)) << 20 |           \
                             (0xfffffu & ~((1u << (20 - (TM))) - 1));                   \
        unsigned any = 0;                                                               \
        for (size_t k = 0; k < cnt; k++) {                                              \
            uint64_t u = d2u(s[k]);                                                     \
            uint32_t hw = (uint32_t)(u >> 32), lw = (uint32_t)u;                        \
            uint32_t a = (hw & 0x7fffffffu) | (uint32_t)(lw != 0);                      \
            any |= (a < lo_) | (a >= hi_);                                              \
            uint32_t rb = a - rebias;                                                   \
            uint32_t r = (rb + ((1u << (19 - (TM))) - 1) + ((rb >> (20 - (TM))) & 1)) >> \
                         (20 - (TM));                                                   \
            out[k] = (uint16_t)(r | ((hw >> 16) & 0x8000u));                            \
        }                                                                               \
        bad = any;                                                                      \
    } while (0)

ARRAY_LOOP static void enc_f64_small(const double *src, void *dst, size_t n, int bf)
{
    uint16_t out[BLOCK];
    for (size_t i = 0; i < n; i += BLOCK) {
        size_t cnt = n - i < BLOCK ? n - i : BLOCK;
        unsigned bad;
        const double *s = src + i;
        if (bf)
            FAST64(8, 7);
        else
            FAST64(5, 10);
        if (bad)
            for (size_t k = 0; k < cnt; k++)
                out[k] = bf ? f64_to_small(d2u(s[k]), 8, 7) : f64_to_small(d2u(s[k]), 5, 10);
        memcpy((unsigned char *)dst + 2 * i, out, 2 * cnt);
    }
}

ARRAY_LOOP static void dec_bf16(const unsigned char *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t b;
        memcpy(&b, src + 2 * i, 2);
        dst[i] = u2f(bf16_bits_to_f32_bits(b));
    }
}

ARRAY_LOOP static void dec_f16(const unsigned char *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = u2f(f16_bits_to_f32_bits(h));
    }
}

ARRAY_LOOP static void dec_bf16_f64(const unsigned char *src, double *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t b;
        memcpy(&b, src + 2 * i, 2);
        dst[i] = u2f(bf16_bits_to_f32_bits(b));
    }
}

ARRAY_LOOP static void dec_f16_f64(const unsigned char *src, double *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = u2f(f16_bits_to_f32_bits(h));
    }
}

int lora_decode_f32(lora_dtype dt, const void *src, float *dst, size_t n)
{
    const unsigned char *s = src;
    switch (dt) {
    case LORA_DT_F32:
        memcpy(dst, s, n * 4);
        return LORA_OK;
    case LORA_DT_BF16:
        dec_bf16(s, dst, n);
        return LORA_OK;
    case LORA_DT_F16:
        dec_f16(s, dst, n);
        return LORA_OK;
    case LORA_DT_F64:
        /* the hardware conversion: one RNE rounding in the default mode */
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, s + 8 * i, 8);
            dst[i] = (float)d;
        }
        return LORA_OK;
    default:
        return LORA_EINPUT;
    }
}

/* Decode through a small float block: every F16/BF16/F32 value is exact
 * in float and in double, so nothing is rounded here. */
int lora_decode_f64(lora_dtype dt, const void *src, double *dst, size_t n)
{
    const unsigned char *s = src;
    switch (dt) {
    case LORA_DT_F64:
        memcpy(dst, s, n * 8);
        return LORA_OK;
    case LORA_DT_F32:
        for (size_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, s + 4 * i, 4);
            dst[i] = f;
        }
        return LORA_OK;
    case LORA_DT_BF16:
        dec_bf16_f64(s, dst, n);
        return LORA_OK;
    case LORA_DT_F16:
        dec_f16_f64(s, dst, n);
        return LORA_OK;
    default:
        return LORA_EINPUT;
    }
}

int lora_encode_f32(lora_dtype dt, const float *src, void *dst, size_t n)
{
    switch (dt) {
    case LORA_DT_F32:
        memcpy(dst, src, n * 4);
        return LORA_OK;
    case LORA_DT_BF16:
        enc_f32_small(src, dst, n, 1);
        return LORA_OK;
    case LORA_DT_F16:
        enc_f32_small(src, dst, n, 0);
        return LORA_OK;
    default:
        return LORA_EINPUT;
    }
}

int lora_encode_f64(lora_dtype dt, const double *src, void *dst, size_t n)
{
    unsigned char *d = dst;
    switch (dt) {
    case LORA_DT_F32:
        for (size_t i = 0; i < n; i++) {
            float f = (float)src[i]; /* hardware RNE, one step */
            memcpy(d + 4 * i, &f, 4);
        }
        return LORA_OK;
    case LORA_DT_BF16:
        enc_f64_small(src, dst, n, 1);
        return LORA_OK;
    case LORA_DT_F16:
        enc_f64_small(src, dst, n, 0);
        return LORA_OK;
    default:
        return LORA_EINPUT;
    }
}

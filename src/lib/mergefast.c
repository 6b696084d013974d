/*
 * mergefast.c - the common case of the merge and the unmerge of BF16
 * tensors (the dtype of most checkpoints), branch-free so that the
 * compiler vectorises it: one pass computes every element as if it were
 * a normal number whose merge is not ambiguous, and flags the elements
 * where that is not proven (zeros, subnormals, results out of the normal
 * range, non-finite inputs, binade changes, near-ties).  mergecore.c then
 * redoes the flagged elements (a few percent) with the full element
 * logic, so every element's result is the one the scalar code gives:
 * the fast pass only decides which elements need no more work.
 *
 * Proof used for "not ambiguous" (mergecore.c, single_fast): x and
 * m = round(x + d) normal, x's binade not below m's and x's mantissa not
 * 0 (both neighbours at least an ulp of m away), |x + d - m| below half
 * an ulp of m by 2^-20 ulp; then x ± ulp(x) + d rounds away from m.
 */
#include "internal.h"
#include "mergecore.h"
#include "fpbits.h"

#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LORA_AVX2 1
#include <immintrin.h>
#endif
/* the portable kernels (GCC vector types, which SSE2 runs) */
#define LORA_CLONES static

static inline __attribute__((always_inline)) double bf16_d(uint16_t b)
{
    uint32_t w = (uint32_t)b << 16;
    float f;
    memcpy(&f, &w, sizeof f);
    return (double)f;
}

/* Round to BF16 where the result is surely normal (else *bad): the
 * rounding of fp_round_bf16's normal branch, without branches. */
static inline __attribute__((always_inline)) uint16_t bf16_round_normal(double x, int *bad)
{
    uint64_t u = fp_dbits(x);
    uint64_t a = u & 0x7fffffffffffffffULL;
    uint64_t r = a + ((1ULL << 44) - 1) + ((a >> 45) & 1);
    *bad = (a >> 52) < 897 || (r >> 52) > 1150;
    return (uint16_t)((((r >> 45) - (896u << 7)) & 0x7fff) | ((u >> 48) & 0x8000));
}

/* single_fast (mergecore.c) for BF16, without branches. */
static inline __attribute__((always_inline)) int bf16_single(uint16_t x, uint16_t m, double s)
{
    uint32_t ex = (x >> 7) & 0xff, em = (m >> 7) & 0xff;
    double lim = fp_bitsd((uint64_t)(em + 888) << 52) * (1 - 0x1p-19);
    return (ex >= em) & (em != 0) & (ex != 0xff) & ((x & 0x7f) != 0) &
           (fabs(s - bf16_d(m)) < lim);
}

/* The conditions of wide_run_scalar that do not need the neighbours'
 * sums: c and its 16 neighbours normal (one sign), d finite and not 0,
 * c merging to m. */
static inline int wide_run_may(uint16_t c, uint16_t m, double d)
{
    uint32_t mag = c & 0x7fffu;
    int bad;
    return mag >= 0x0080u + LORA_RUN_WIDE && mag <= 0x7f7fu - LORA_RUN_WIDE && d != 0 &&
           isfinite(d) && bf16_round_normal(bf16_d(c) + d, &bad) == m && !bad;
}

/* Four lanes at a time with GCC's vector types (the loops in scalar
 * form do not vectorise: mixed widths).  Element bits and masks in
 * 32-bit lanes, the double arithmetic and rounding in 64-bit lanes. */
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));
typedef uint64_t v4u __attribute__((vector_size(32))); /* shifts: AVX2 has no 64-bit arithmetic one */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef uint32_t v4w __attribute__((vector_size(16)));
typedef uint16_t v4h __attribute__((vector_size(8)));
typedef unsigned char v4c __attribute__((vector_size(4)));

#define V_LD_D(p) ({ v4d v_; memcpy(&v_, (p), sizeof v_); v_; })
#define V_LD_H(p) ({ v4h v_; memcpy(&v_, (p), sizeof v_); __builtin_convertvector(v_, v4w); })
#define V_ST_H(p, v) do { v4h v_ = __builtin_convertvector((v), v4h); memcpy((p), &v_, sizeof v_); } while (0)
#define V_ST_FLAG(p, f) do { v4c c_ = __builtin_convertvector((f) & 1, v4c); memcpy((p), &c_, 4); } while (0)

/* BF16 bits (32-bit lanes) -> double */
#define V_BF16_D(w) __builtin_convertvector((v4f)((w) << 16), v4d)

/* bf16_round_normal over four lanes: bits in m, all-ones lanes in bad */
#define V_ROUND(x, m, bad) do {                                                   \
        v4u u_ = (v4u)(x), a_ = u_ & UINT64_C(0x7fffffffffffffff);                 \
        v4u r_ = a_ + (UINT64_C(1) << 44) - 1 + ((a_ >> 45) & 1);                  \
        /* r_ >> 52 <= 2048: the compares below are of small signed values */     \
        (bad) = __builtin_convertvector(((v4l)(a_ >> 52) < 897) | ((v4l)(r_ >> 52) > 1150), v4i); \
        (m) = __builtin_convertvector((((r_ >> 45) - (896 << 7)) & 0x7fff) | ((u_ >> 48) & 0x8000), v4w); \
    } while (0)

/* bf16_single over four lanes: all-ones where proven */
#define V_SINGLE(x, m, s, res) do {                                               \
        v4w ex_ = ((x) >> 7) & 0xff, em_ = ((m) >> 7) & 0xff;                      \
        v4d lim_ = (v4d)(__builtin_convertvector(em_ + 888, v4u) << 52) * (1 - 0x1p-19); \
        v4d df_ = (s) - V_BF16_D(m);                                               \
        v4d ad_ = (v4d)((v4u)df_ & UINT64_C(0x7fffffffffffffff));                   \
        (res) = (v4i)((ex_ >= em_) & (em_ != 0) & (ex_ != 0xff) & (((x) & 0x7f) != 0)) & \
                __builtin_convertvector(ad_ < lim_, v4i);                          \
    } while (0)

LORA_CLONES
uint64_t fast_merge_vec(const unsigned char *src, unsigned char *dst, const double *sum,
                              unsigned char *flag, size_t n, int record)
{
    uint64_t changed = 0;
    size_t x = 0;
    v4i rec = (v4i){0, 0, 0, 0} - (record != 0);
    v4i nch = {0, 0, 0, 0};
    for (; x + 4 <= n; x += 4) {
        v4w w = V_LD_H(src + 2 * x), m;
        v4i bad, one;
        v4d d = V_LD_D(sum + x), s = V_BF16_D(w) + d;
        V_ROUND(s, m, bad);
        V_SINGLE(w, m, s, one);
        v4i f = bad | (rec & ~one);
        V_ST_H(dst + 2 * x, m);
        V_ST_FLAG(flag + x, f);
        nch -= ~f & __builtin_convertvector(d != 0, v4i);
    }
    changed = (uint64_t)nch[0] + (uint64_t)nch[1] + (uint64_t)nch[2] + (uint64_t)nch[3];
    for (; x < n; x++) {
        uint16_t w, m;
        memcpy(&w, src + 2 * x, 2);
        double d = sum[x], s = bf16_d(w) + d;
        int bad;
        m = bf16_round_normal(s, &bad);
        int f = bad | (record & !bf16_single(w, m, s));
        memcpy(dst + 2 * x, &m, 2);
        flag[x] = (unsigned char)f;
        changed += (uint64_t)(!f & (d != 0));
    }
    return changed;
}

LORA_CLONES
uint64_t fast_unmerge_vec(const unsigned char *src, unsigned char *dst, const double *sum,
                                unsigned char *flag, size_t n)
{
    uint64_t changed = 0;
    size_t x = 0;
    v4i nch = {0, 0, 0, 0};
    for (; x + 4 <= n; x += 4) {
        v4w m = V_LD_H(src + 2 * x), u, m2;
        v4i bad1, bad2, one;
        v4d d = V_LD_D(sum + x);
        V_ROUND(V_BF16_D(m) - d, u, bad1);
        v4d s = V_BF16_D(u) + d;
        V_ROUND(s, m2, bad2);
        V_SINGLE(u, m, s, one);
        v4i f = bad1 | bad2 | (v4i)(m2 != m) | ~one;
        V_ST_H(dst + 2 * x, u);
        V_ST_FLAG(flag + x, f);
        nch -= ~f & __builtin_convertvector(d != 0, v4i);
    }
    changed = (uint64_t)nch[0] + (uint64_t)nch[1] + (uint64_t)nch[2] + (uint64_t)nch[3];
    for (; x < n; x++) {
        uint16_t m, u, m2;
        memcpy(&m, src + 2 * x, 2);
        double d = sum[x];
        int bad1, bad2;
        u = bf16_round_normal(bf16_d(m) - d, &bad1);
        double s = bf16_d(u) + d;
        m2 = bf16_round_normal(s, &bad2);
        int f = bad1 | bad2 | (m2 != m) | !bf16_single(u, m, s);
        memcpy(dst + 2 * x, &u, 2);
        flag[x] = (unsigned char)f;
        changed += (uint64_t)(!f & (d != 0));
    }
    return changed;
}

/* The flagged lanes (flag[x] != 0) of [from, n) appended to q at nf,
 * as the AVX-512 pass queues its own (the portable and AVX2 passes, and
 * the AVX-512 pass's tail, flag them); returns the new count. */
static size_t queue_flags(lora_flagq *q, size_t nf, const unsigned char *src,
                          const unsigned char *dst, const double *sum, const unsigned char *flag,
                          size_t from, size_t n)
{
    for (size_t x = from; x < n; x++) {
        if (!flag[x])
            continue;
        uint16_t c, m;
        memcpy(&c, src + 2 * x, 2);
        memcpy(&m, dst + 2 * x, 2);
        q->idx[nf] = (uint32_t)x;
        q->cm[nf] = c | (uint32_t)m << 16;
        float f = (float)sum[x]; /* as _mm512_cvtpd_ps: nearest */
        memcpy(&q->df[nf], &f, 4);
        nf++;
    }
    return nf;
}

/* A run's flag code (lora_run_decode) as the rank word of its member c
 * (lora_fast_ranks_bf16); code 1 (the full logic) as LORA_RANK_SLOW. */
static inline uint32_t code_rank(unsigned code, uint32_t c)
{
    if (code < 2)
        return LORA_RANK_SLOW;
    unsigned a, b;
    lora_run_decode(code, &a, &b);
    return (c & 0x8000u ? b : a) | (a + b) << 16;
}

#ifdef LORA_AVX2
/* AVX2 (4 elements per step): the same computation as the vector-type
 * kernels and bf16_round_normal / bf16_single, lane for lane; the
 * portable form above is what the tests compare with the scalar code,
 * and run_block's tests compare both with the reference. */
#define AVX2 __attribute__((target("avx2")))


/* 4 BF16 values (32-bit lanes) -> 4 doubles */
static inline AVX2 __m256d a_bf16_d(__m128i w32)
{
    return _mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(w32, 16)));
}

/* 64-bit lanes' low 32 bits -> 4 x 32 bits */
static inline AVX2 __m128i a_lo32(__m256i v)
{
    return _mm256_castsi256_si128(
        _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
}

/* bf16_round_normal: bits (64-bit lanes), all-ones lanes in *bad */
static inline AVX2 __m256i a_round(__m256d x, __m256i *bad)
{
    __m256i u = _mm256_castpd_si256(x);
    __m256i a = _mm256_and_si256(u, _mm256_set1_epi64x(INT64_C(0x7fffffffffffffff)));
    __m256i r = _mm256_add_epi64(_mm256_add_epi64(a, _mm256_set1_epi64x((INT64_C(1) << 44) - 1)),
                                 _mm256_and_si256(_mm256_srli_epi64(a, 45), _mm256_set1_epi64x(1)));
    *bad = _mm256_or_si256(_mm256_cmpgt_epi64(_mm256_set1_epi64x(897), _mm256_srli_epi64(a, 52)),
                           _mm256_cmpgt_epi64(_mm256_srli_epi64(r, 52), _mm256_set1_epi64x(1150)));
    __m256i m = _mm256_and_si256(_mm256_sub_epi64(_mm256_srli_epi64(r, 45),
                                                  _mm256_set1_epi64x(896 << 7)),
                                 _mm256_set1_epi64x(0x7fff));
    return _mm256_or_si256(m, _mm256_and_si256(_mm256_srli_epi64(u, 48),
                                               _mm256_set1_epi64x(0x8000)));
}

/* bf16_single: all-ones lanes where proven; x, m in 64-bit lanes, mv = m as double */
static inline AVX2 __m256i a_single(__m256i x, __m256i m, __m256d s, __m256d mv)
{
    __m256i ff = _mm256_set1_epi64x(0xff), zero = _mm256_setzero_si256();
    __m256i ex = _mm256_and_si256(_mm256_srli_epi64(x, 7), ff);
    __m256i em = _mm256_and_si256(_mm256_srli_epi64(m, 7), ff);
    __m256d lim = _mm256_mul_pd(
        _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(em, _mm256_set1_epi64x(888)), 52)),
        _mm256_set1_pd(1 - 0x1p-19));
    __m256d ad = _mm256_and_pd(_mm256_sub_pd(s, mv),
                               _mm256_castsi256_pd(_mm256_set1_epi64x(INT64_C(0x7fffffffffffffff))));
    __m256i no = _mm256_or_si256(
        _mm256_or_si256(_mm256_cmpgt_epi64(em, ex), _mm256_cmpeq_epi64(em, zero)),
        _mm256_or_si256(_mm256_cmpeq_epi64(ex, ff),
                        _mm256_cmpeq_epi64(_mm256_and_si256(x, _mm256_set1_epi64x(0x7f)), zero)));
    return _mm256_andnot_si256(no, _mm256_castpd_si256(_mm256_cmp_pd(ad, lim, _CMP_LT_OQ)));
}

static inline AVX2 void a_flags(unsigned char *flag, int bits)
{
    for (int k = 0; k < 4; k++)
        flag[k] = (unsigned char)((bits >> k) & 1);
}

static AVX2 uint64_t fast_merge_avx2(const unsigned char *src, unsigned char *dst,
                                     const double *sum, unsigned char *flag, size_t n, int record)
{
    uint64_t changed = 0;
    size_t x = 0;
    for (; x + 4 <= n; x += 4) {
        __m128i w32 = _mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)(src + 2 * x)));
        __m256d d = _mm256_loadu_pd(sum + x);
        __m256d s = _mm256_add_pd(a_bf16_d(w32), d);
        __m256i bad;
        __m256i m = a_round(s, &bad);
        __m128i m32 = a_lo32(m);
        __m256i one = a_single(_mm256_cvtepu32_epi64(w32), m, s, a_bf16_d(m32));
        int fb = _mm256_movemask_pd(_mm256_castsi256_pd(bad)) |
                 (record ? ~_mm256_movemask_pd(_mm256_castsi256_pd(one)) & 15 : 0);
        _mm_storel_epi64((__m128i *)(dst + 2 * x), _mm_packus_epi32(m32, m32));
        a_flags(flag + x, fb);
        int nz = _mm256_movemask_pd(_mm256_cmp_pd(d, _mm256_setzero_pd(), _CMP_NEQ_UQ));
        changed += (uint64_t)__builtin_popcount((unsigned)(nz & ~fb & 15));
    }
    return changed + fast_merge_vec(src + 2 * x, dst + 2 * x, sum + x, flag + x, n - x, record);
}

static AVX2 uint64_t fast_unmerge_avx2(const unsigned char *src, unsigned char *dst,
                                       const double *sum, unsigned char *flag, size_t n)
{
    uint64_t changed = 0;
    size_t x = 0;
    for (; x + 4 <= n; x += 4) {
        __m128i m32 = _mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)(src + 2 * x)));
        __m256d d = _mm256_loadu_pd(sum + x), mv = a_bf16_d(m32);
        __m256i bad1, bad2;
        __m256i u = a_round(_mm256_sub_pd(mv, d), &bad1);
        __m128i u32 = a_lo32(u);
        __m256d s = _mm256_add_pd(a_bf16_d(u32), d);
        __m256i m64 = _mm256_cvtepu32_epi64(m32);
        __m256i m2 = a_round(s, &bad2);
        __m256i one = a_single(u, m64, s, mv);
        __m256i f = _mm256_or_si256(_mm256_or_si256(bad1, bad2),
                                    _mm256_or_si256(_mm256_xor_si256(_mm256_cmpeq_epi64(m2, m64),
                                                                     _mm256_set1_epi64x(-1)),
                                                    _mm256_xor_si256(one, _mm256_set1_epi64x(-1))));
        int fb = _mm256_movemask_pd(_mm256_castsi256_pd(f));
        _mm_storel_epi64((__m128i *)(dst + 2 * x), _mm_packus_epi32(u32, u32));
        a_flags(flag + x, fb);
        int nz = _mm256_movemask_pd(_mm256_cmp_pd(d, _mm256_setzero_pd(), _CMP_NEQ_UQ));
        changed += (uint64_t)__builtin_popcount((unsigned)(nz & ~fb & 15));
    }
    return changed + fast_unmerge_vec(src + 2 * x, dst + 2 * x, sum + x, flag + x, n - x);
}

/* AVX-512 (Zen 4/5, Intel since Skylake-SP): the passes and the short
 * runs in float lanes, 16 elements a step, under an error bound that
 * sends every lane it cannot decide to the double logic
 * (fast_merge_avx512); the other runs' ends in double lanes, 8 at a time,
 * verified by the rounding the merge does (z8_run_ends). */
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,bmi2")))

/* 8 BF16 values (16 bytes) -> 8 doubles, and their bits in 64-bit lanes */
static inline AVX512 __m512d z_bf16_d(__m128i h, __m512i *bits)
{
    __m256i w32 = _mm256_cvtepu16_epi32(h);
    *bits = _mm512_cvtepu16_epi64(h);
    return _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(w32, 16)));
}

/* bf16_round_normal in 64-bit lanes: the bits, lanes out of the normal
 * range in *bad */
static inline AVX512 __m512i z_round(__m512d x, __mmask8 *bad)
{
    __m512i u = _mm512_castpd_si512(x);
    __m512i a = _mm512_and_si512(u, _mm512_set1_epi64(INT64_C(0x7fffffffffffffff)));
    __m512i r = _mm512_add_epi64(_mm512_add_epi64(a, _mm512_set1_epi64((INT64_C(1) << 44) - 1)),
                                 _mm512_and_si512(_mm512_srli_epi64(a, 45), _mm512_set1_epi64(1)));
    *bad = _mm512_cmplt_epu64_mask(_mm512_srli_epi64(a, 52), _mm512_set1_epi64(897)) |
           _mm512_cmpgt_epu64_mask(_mm512_srli_epi64(r, 52), _mm512_set1_epi64(1150));
    __m512i m = _mm512_and_si512(_mm512_sub_epi64(_mm512_srli_epi64(r, 45),
                                                  _mm512_set1_epi64(896 << 7)),
                                 _mm512_set1_epi64(0x7fff));
    return _mm512_or_si512(m, _mm512_and_si512(_mm512_srli_epi64(u, 48),
                                               _mm512_set1_epi64(0x8000)));
}

/* Float-lane steps of the two passes below.  16 BF16 values at p (as
 * 32-bit lanes into *v) plus, or minus (sub, a constant once inlined),
 * their 16 deltas rounded to float (z16_delta): the float bits of the
 * sum; the deltas in *d0, *d1. */
static inline AVX512 __m512 z16_delta(const double *sum, __m512d *d0, __m512d *d1)
{
    *d0 = _mm512_loadu_pd(sum);
    *d1 = _mm512_loadu_pd(sum + 8);
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(*d0)),
                              _mm512_cvtpd_ps(*d1), 1);
}

static inline AVX512 __m512i z16_sum(const unsigned char *p, const double *sum, int sub,
                                     __m512i *v, __m512d *d0, __m512d *d1, __m512 *dfo)
{
    *v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    __m512 df = z16_delta(sum, d0, d1);
    *dfo = df;
    __m512 vf = _mm512_castsi512_ps(_mm512_slli_epi32(*v, 16));
    return _mm512_castps_si512(sub ? _mm512_sub_ps(vf, df) : _mm512_add_ps(vf, df));
}

/* Float bits sb rounded to BF16 (nearest even), in 32-bit lanes: |sb|
 * in *a, its rounding sum in *r, lanes not normal BF16 in *bad */
static inline AVX512 __m512i z16_round(__m512i sb, __m512i *a, __m512i *r, __mmask16 *bad)
{
    *a = _mm512_and_si512(sb, _mm512_set1_epi32(0x7fffffff));
    *r = _mm512_add_epi32(_mm512_add_epi32(*a, _mm512_set1_epi32(0x7fff)),
                          _mm512_and_si512(_mm512_srli_epi32(*a, 16), _mm512_set1_epi32(1)));
    *bad = _mm512_cmplt_epu32_mask(*a, _mm512_set1_epi32(0x00800000)) |
           _mm512_cmpge_epu32_mask(*r, _mm512_set1_epi32(0x7f800000));
    return _mm512_or_si512(_mm512_srli_epi32(*r, 16),
                           _mm512_and_si512(_mm512_srli_epi32(sb, 16), _mm512_set1_epi32(0x8000)));
}

/* A step's changed elements: not flagged (fb), d != 0 */
static inline AVX512 unsigned z16_changed(__mmask16 fb, __m512d d0, __m512d d1)
{
    unsigned nz = (unsigned)_mm512_cmp_pd_mask(d0, _mm512_setzero_pd(), _CMP_NEQ_UQ) |
                  (unsigned)_mm512_cmp_pd_mask(d1, _mm512_setzero_pd(), _CMP_NEQ_UQ) << 8;
    return (unsigned)__builtin_popcount(nz & ~(unsigned)fb & 0xffffu);
}

/* The step's 16 results and flags stored; its changed elements */
static inline AVX512 unsigned z16_store(unsigned char *dst, unsigned char *flag, __m512i v,
                                        __mmask16 fb, __m512d d0, __m512d d1)
{
    _mm256_storeu_si256((__m256i *)dst, _mm512_cvtepi32_epi16(v));
    _mm_storeu_si128((__m128i *)flag, _mm_maskz_set1_epi8(fb, 1));
    return z16_changed(fb, d0, d1);
}

/* The step's flagged lanes (fb) appended to q at nf, in lane order,
 * without a branch: each of the three stores writes 16 entries (q has
 * that slack), the count moves by the lanes kept.  Returns the new
 * count. */
static inline AVX512 size_t z16_queue(lora_flagq *q, size_t nf, size_t x, __mmask16 fb,
                                      __m512i w, __m512i m, __m512 df)
{
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i idx = _mm512_add_epi32(lane, _mm512_set1_epi32((int)x));
    _mm512_storeu_si512((void *)(q->idx + nf), _mm512_maskz_compress_epi32(fb, idx));
    _mm512_storeu_si512((void *)(q->cm + nf),
                        _mm512_maskz_compress_epi32(fb, _mm512_or_si512(w, _mm512_slli_epi32(m, 16))));
    _mm512_storeu_ps((void *)(q->df + nf), _mm512_maskz_compress_ps(fb, df));
    return nf + (size_t)__builtin_popcount(fb);
}

/* The merge's proof for W0 = +-2^k (mantissa 0, a fifth of the flagged
 * elements, four in five of them not ambiguous): its neighbour toward 0
 * is q / 2 away, q its ulp above, so single_fast's argument does not
 * hold as it stands.  Lanes (already "far": m is right) where W0 is
 * still the only base value that merges to m:
 *   m below W0's binade: both neighbours at least an ulp of m away;
 *   m in W0's binade, one sign, m's mantissa not 0: the neighbour
 *     lands q / 2 inside of s, and m's rounding boundary below is
 *     q / 2 inside of m, so |s| < |m| with the error E (<= T / 4) to
 *     spare: 2^15 + T < rem < 2^16 - T (sf rounded outward to m);
 *   m = W0, one sign: below m the spacing is q / 2, so s may be at
 *     most q / 4 outside of m: rem < 2^14 - T in W0's binade (s rounded
 *     inward), or sf in the binade below (es < ew: s inside m).
 * The other lanes of W0 = 2^k go to the full logic, as before.  (The
 * caller keeps only W0 = 2^k lanes, and asks only for the steps that
 * have one: in the pass's every step, this cost more than it saves.) */
static inline AVX512 __mmask16 z16_pow2_single(__m512i w, __m512i m, __m512i ew, __m512i em,
                                               __m512i a, __m512i thr)
{
    __m512i rem = _mm512_and_si512(a, _mm512_set1_epi32(0xffff));
    __mmask16 same = _mm512_testn_epi32_mask(_mm512_xor_si512(w, m), _mm512_set1_epi32(0x8000)) &
                     _mm512_cmpeq_epi32_mask(ew, em);
    __mmask16 out = _mm512_cmpgt_epu32_mask(rem, _mm512_add_epi32(_mm512_set1_epi32(0x8000), thr)) &
                    _mm512_cmplt_epu32_mask(rem, _mm512_sub_epi32(_mm512_set1_epi32(0x10000), thr));
    __mmask16 in = _mm512_cmplt_epu32_mask(_mm512_srli_epi32(a, 23), ew) |
                   _mm512_cmplt_epu32_mask(rem, _mm512_sub_epi32(_mm512_set1_epi32(0x4000), thr));
    __mmask16 mnz = _mm512_test_epi32_mask(m, _mm512_set1_epi32(0x7f));
    return _mm512_cmpgt_epu32_mask(ew, em) | (same & ((mnz & out) | ((__mmask16)~mnz & in)));
}

/* The merge in float lanes, 16 elements a step (twice the double
 * form's width, and under half its instructions per element).  The
 * contract is m = round_bf16(fl64(W0 + d)); here sf = fl32(W0 + fl32(d))
 * stands in for fl64(W0 + d), and a lane is kept only where that cannot
 * change m or the proof.  Error bound, in float ulps u of sf's binade
 * (exponent field es), with j = W0's exponent field - es:
 *   fl32(d) is within 2^-24 |d| of d, and |d| <= |W0| + |W0 + d| <
 *   2^(ew+1) + 2^(es+1) (plus the bound itself), so within 2^j + 1 u
 *   (j >= 0; 2 u for j < 0); the float add rounds by u / 2 at most, and
 *   fl64 is within 2^-29 u of the exact sum: E <= 2^max(j,0) + 2 u.
 * rem = the 16 bits the rounding to BF16 drops; |rem - 2^15| > T =
 * 2^(max(j,0) + 4) u puts sf farther than 4 E from every rounding
 * boundary of its binade (the boundaries next to it at a binade change
 * are farther still), so fl64(W0 + d) rounds to the same m, and lanes
 * with |rem - 2^15| <= T are flagged for the full logic (j is clamped
 * at 12, where T = 2^16 is above every |rem - 2^15|: W0 + d that
 * cancels down 12 binades or more is always flagged).  The proof of
 * single_fast (mergecore.c) then follows as the double form's did on
 * the bits of s: with m in sf's binade, |fl64(W0 + d) - m| <= (2^15 -
 * T + E) u < q / 2 (1 - 2^-19), q = 2^16 u m's ulp; where the rounding
 * carried into the next binade the test only says no (conservative).
 * W0's binade not below m's, W0's mantissa not 0 (but z16_pow2_single),
 * s normal and finite as before.  Lanes this flags and the double form
 * proved (about 2^-11 of them) cost time, never a different value:
 * every flagged lane is redone in double (merge_span) or its run found
 * under the same bound (z16_run_masks) or verified in double
 * (z8_run_ends).
 * tests/check_merge test_pass_lanes checks every unflagged lane against
 * the reference rounding. */
/* One step of the merge pass: the 16 results m of src + 16 x, and the
 * lanes to flag (rec: all those not proven the only base value of m);
 * W0's bits, the deltas and fl32(d) in *w, *d0, *d1, *df. */
static inline AVX512 __m512i z16_merge_step(const unsigned char *src, const double *sum,
                                            __mmask16 rec, __m512i *w, __m512d *d0, __m512d *d1,
                                            __m512 *df, __mmask16 *fb)
{
    const __m512i cff = _mm512_set1_epi32(0xff), c7f = _mm512_set1_epi32(0x7f);
    __m512i a, r;
    __mmask16 bad;
    __m512i m = z16_round(z16_sum(src, sum, 0, w, d0, d1, df), &a, &r, &bad);
    __m512i ew = _mm512_and_si512(_mm512_srli_epi32(*w, 7), cff);
    __m512i j = _mm512_min_epi32(_mm512_max_epi32(_mm512_sub_epi32(ew, _mm512_srli_epi32(a, 23)),
                                                  _mm512_setzero_si512()),
                                 _mm512_set1_epi32(12));
    __m512i thr = _mm512_sllv_epi32(_mm512_set1_epi32(16), j);
    __m512i t = _mm512_abs_epi32(_mm512_sub_epi32(_mm512_and_si512(a, _mm512_set1_epi32(0xffff)),
                                                  _mm512_set1_epi32(0x8000)));
    __mmask16 far = _mm512_cmpgt_epu32_mask(t, thr);
    __m512i em = _mm512_srli_epi32(r, 23);
    __mmask16 xnz = _mm512_test_epi32_mask(*w, c7f);
    __mmask16 one = far & xnz & _mm512_cmpge_epu32_mask(ew, em);
    if (__builtin_expect(xnz != 0xffff, 0)) /* in one step of 8 */
        one |= far & (__mmask16)~xnz & z16_pow2_single(*w, m, ew, em, a, thr);
    *fb = bad | (__mmask16)~far | (rec & (__mmask16)~one);
    return m;
}

static AVX512 uint64_t fast_merge_avx512(const unsigned char *src, unsigned char *dst,
                                         const double *sum, unsigned char *flag, size_t n,
                                         int record)
{
    uint64_t changed = 0;
    size_t x = 0;
    __mmask16 rec = record ? 0xffff : 0;
    for (; x + 16 <= n; x += 16) {
        __m512i w;
        __m512d d0, d1;
        __m512 df;
        __mmask16 fb;
        __m512i m = z16_merge_step(src + 2 * x, sum + x, rec, &w, &d0, &d1, &df, &fb);
        changed += z16_store(dst + 2 * x, flag + x, m, fb, d0, d1);
    }
    return changed + fast_merge_vec(src + 2 * x, dst + 2 * x, sum + x, flag + x, n - x, record);
}

/* The step at x's flagged lanes (fb) queued from the part's data,
 * reloaded (it is in the cache still): c from cb (the merge's W0, the
 * unmerge's u), m from mb (the result or the input), and the delta. */
static inline AVX512 size_t z16_requeue(lora_flagq *q, size_t nf, size_t x, __mmask16 fb,
                                        const unsigned char *cb, const unsigned char *mb,
                                        const double *sum)
{
    __m512d d0, d1;
    __m512 df = z16_delta(sum + x, &d0, &d1);
    __m512i c = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(cb + 2 * x)));
    __m512i m = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(mb + 2 * x)));
    return z16_queue(q, nf, x, fb, c, m, df);
}

/* A step's 16 flags (bytes 0 or 1) as a mask */
static inline AVX512 unsigned z16_flag_mask(const unsigned char *flag)
{
    return (unsigned)_mm_test_epi8_mask(_mm_loadu_si128((const __m128i *)flag), _mm_set1_epi8(-1));
}

/* The flagged lanes of the part's first x elements (x a multiple of 16)
 * queued in q, from the steps' 16-bit masks fm the merge pass left, or
 * from the unmerge pass's flags (fm NULL); c read from cb, m from mb.
 * The steps with a flag are listed first, without a branch (a branch on
 * each step's mask was mispredicted about every other time), then
 * queued.  The list is in q->idx from 15 x / 16 + 16 on: the entries of
 * listed step k, stored 16 at a time, end by 16 k + 32, before its
 * entry k + 1 (k < x / 16).  Returns the count. */
static AVX512 size_t queue_steps(lora_flagq *q, const unsigned char *cb, const unsigned char *mb,
                                 const double *sum, const uint16_t *fm, const unsigned char *flag,
                                 size_t x)
{
    size_t nsteps = x / 16;
    uint32_t *steps = q->idx + 15 * nsteps + 16, ns = 0;
    for (size_t s = 0; s < nsteps; s++) {
        unsigned mk = fm ? fm[s] : z16_flag_mask(flag + 16 * s);
        steps[ns] = (uint32_t)s;
        ns += mk != 0;
    }
    lora_flagq lq = *q;
    size_t nf = 0;
    for (uint32_t k = 0; k < ns; k++) {
        size_t s = steps[k];
        __mmask16 mk = (__mmask16)(fm ? fm[s] : z16_flag_mask(flag + 16 * s));
        nf = z16_requeue(&lq, nf, 16 * s, mk, cb, mb, sum);
    }
    return nf;
}

/* The pass with the receipt, its flagged lanes queued (z16_queue).  The
 * pass keeps each step's flags as a 16-bit mask, and queue_steps queues
 * the steps that have one afterwards: queued in the pass, every store's
 * address waited on the count of the lanes flagged before, hence on the
 * data, and the pass lost the overlap of its loads (0.72 -> 0.95 ns per
 * element streaming from memory, equal in cache).  Returns the elements with d != 0, flagged or not, counted in
 * vector lanes (the popcount of each step's unflagged lanes was a chain
 * of mask moves on the pass's critical path). */
static AVX512 uint64_t fast_merge_q_avx512(const unsigned char *src, unsigned char *dst,
                                           const double *sum, unsigned char *flag, size_t n,
                                           lora_flagq *q, size_t *nq)
{
    size_t x = 0;
    uint16_t *fm = (uint16_t *)(void *)flag; /* step x / 16's mask, below the tail's flags */
    __m512i nz = _mm512_setzero_si512();
    const __m512i minus = _mm512_set1_epi64(-1);
    for (; x + 16 <= n; x += 16) {
        __m512i w;
        __m512d d0, d1;
        __m512 df;
        __mmask16 fb;
        __m512i m = z16_merge_step(src + 2 * x, sum + x, 0xffff, &w, &d0, &d1, &df, &fb);
        _mm256_storeu_si256((__m256i *)(dst + 2 * x), _mm512_cvtepi32_epi16(m));
        nz = _mm512_mask_sub_epi64(nz, _mm512_cmp_pd_mask(d0, _mm512_setzero_pd(), _CMP_NEQ_UQ),
                                   nz, minus);
        nz = _mm512_mask_sub_epi64(nz, _mm512_cmp_pd_mask(d1, _mm512_setzero_pd(), _CMP_NEQ_UQ),
                                   nz, minus);
        fm[x / 16] = fb;
    }
    uint64_t changed = (uint64_t)_mm512_reduce_add_epi64(nz);
    /* the tail's flags at flag + x, after the masks (x / 8 bytes) */
    (void)fast_merge_vec(src + 2 * x, dst + 2 * x, sum + x, flag + x, n - x, 1);
    for (size_t y = x; y < n; y++)
        changed += sum[y] != 0;
    *nq = queue_flags(q, queue_steps(q, src, dst, sum, fm, NULL, x), src, dst, sum, flag, x, n);
    return changed;
}

/* The unmerge's proof for u = +-2^k (mantissa 0, a fifth of the
 * flagged elements, most of them not ambiguous): its neighbour toward 0
 * is q / 2 away (q its ulp above), so u + d = m + e must round to m
 * while that neighbour's m + e - q / 2 must not.  In the terms of
 * fast_unmerge_avx512 (E <= 4 float ulps f of tf's binade, 16 spare):
 *   tf in u's binade (rounded inward to u: e < 0 by rem f), and
 *     m below u's binade (j >= 1): the neighbour is q_m away at least;
 *       |e| < q_m / 2 as for other u;
 *     m in it, one sign, m's mantissa not 0: e < 0 and |e| < q / 2,
 *       so 16 < rem < 2^15 - 16;
 *     m = u: |e| < q / 4, rem < 2^14 - 16;
 *   tf in the binade below (rounded outward to u), m = u, one sign:
 *     0 < e < q / 4, rem > 2^15 + 16 (in units f / 2).
 * m is normal (the caller checks); other lanes go to the full logic. */
static inline AVX512 __mmask16 z16_pow2_unmerge(__m512i u, __m512i m, __m512i a, __m512i j,
                                                __m512i t, __m512i thr)
{
    __m512i rem = _mm512_and_si512(a, _mm512_set1_epi32(0xffff));
    __m512i es = _mm512_srli_epi32(a, 23);
    __m512i eu = _mm512_and_si512(_mm512_srli_epi32(u, 7), _mm512_set1_epi32(0xff));
    __mmask16 in = _mm512_cmpeq_epi32_mask(es, eu);
    __mmask16 below = _mm512_cmpeq_epi32_mask(_mm512_add_epi32(es, _mm512_set1_epi32(1)), eu);
    __mmask16 same = _mm512_testn_epi32_mask(_mm512_xor_si512(u, m), _mm512_set1_epi32(0x8000)) &
                     _mm512_cmpeq_epi32_mask(j, _mm512_setzero_si512());
    __mmask16 mnz = _mm512_test_epi32_mask(m, _mm512_set1_epi32(0x7f));
    __mmask16 up = in & mnz & _mm512_cmpgt_epi32_mask(j, _mm512_setzero_si512()) &
                   _mm512_cmpgt_epu32_mask(t, thr);
    __mmask16 inside = in & same & mnz & _mm512_cmpgt_epu32_mask(rem, _mm512_set1_epi32(16)) &
                       _mm512_cmplt_epu32_mask(rem, _mm512_set1_epi32(0x8000 - 16));
    __mmask16 equal = same & (__mmask16)~mnz &
                      ((in & _mm512_cmplt_epu32_mask(rem, _mm512_set1_epi32(0x4000 - 16))) |
                       (below & _mm512_cmpgt_epu32_mask(rem, _mm512_set1_epi32(0x8000 + 16))));
    return up | inside | equal;
}

/* The unmerge in float lanes, 16 elements a step, in one rounding:
 * u = round_bf16(tf), tf = fl32(m - fl32(d)), without the second
 * rounding (of s = u + d) that fast_unmerge_vec checks; a lane is kept
 * only where u is proven the only base value that merges to m.  u's
 * mantissa is not 0 (a rounding of tf that carried into the next binade
 * leaves it 0), so tf and u share a binade; m is normal.  In float ulps
 * f of that binade (q_u = 2^16 f, u's ulp) rem, the 16 bits of |tf| the
 * rounding drops, puts u within 2^15 - |rem - 2^15| f of tf, and tf is
 * within E <= 3 f of T = m - d, the exact value (fast_merge_avx512's
 * bound, with m's binade not above u's): u + d - m = u - T.  With j =
 * u's binade above m's (q_m = 2^-j q_u, m's ulp), single_fast(u, m, s)
 * (mergecore.c) needs |s - m| < q_m / 2 (1 - 2^-19), and s must round
 * to m (m's sign does not enter: d may carry the value across 0):
 *   m's mantissa not 0: s stays in m's binade, and |rem - 2^15| >
 *     2^15 - 2^(15-j) + 16 suffices (never true for j < 0 or j >= 16,
 *     where the shift leaves 0);
 *   m = 2^k, j = 0, u of m's sign: below m the spacing is q_m / 2, so
 *     |u - T| < q_m / 4 on that side: rem < 2^14 - 16 (|u| under |tf|,
 *     by less than a quarter ulp either way), or rem > 2^15 + 16 (|u|
 *     above |tf|: s above m but by 3 f at most below it).
 * Any other lane is flagged for the full logic, so the results are the
 * two-rounding double pass's; a lane that pass proves and this one
 * flags costs time, never a different value (tests/check_merge:
 * test_pass_lanes checks every unflagged lane against a plain loop). */
static AVX512 uint64_t fast_unmerge_avx512(const unsigned char *src, unsigned char *dst,
                                           const double *sum, unsigned char *flag, size_t n,
                                           lora_flagq *q, size_t *nq)
{
    uint64_t changed = 0;
    size_t x = 0;
    const __m512i c7f = _mm512_set1_epi32(0x7f), cff = _mm512_set1_epi32(0xff);
    const __m512i h15 = _mm512_set1_epi32(0x8000);
    for (; x + 16 <= n; x += 16) {
        __m512i m, a, r;
        __m512d d0, d1;
        __mmask16 bad;
        __m512 df;
        __m512i u = z16_round(z16_sum(src + 2 * x, sum + x, 1, &m, &d0, &d1, &df), &a, &r, &bad);
        __m512i rem = _mm512_and_si512(a, _mm512_set1_epi32(0xffff));
        __m512i t = _mm512_abs_epi32(_mm512_sub_epi32(rem, h15));
        __m512i j = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 7), cff),
                                     _mm512_and_si512(_mm512_srli_epi32(m, 7), cff));
        __m512i thr = _mm512_add_epi32(_mm512_sub_epi32(h15, _mm512_srlv_epi32(h15, j)),
                                       _mm512_set1_epi32(16));
        __mmask16 base = _mm512_test_epi32_mask(u, c7f) &
                         _mm512_test_epi32_mask(m, _mm512_set1_epi32(0x7f80));
        __mmask16 mnz = _mm512_test_epi32_mask(m, c7f);
        __mmask16 pow2 = _mm512_cmpeq_epi32_mask(j, _mm512_setzero_si512()) &
                         _mm512_testn_epi32_mask(_mm512_xor_si512(u, m), h15) &
                         (_mm512_cmpgt_epu32_mask(rem, _mm512_set1_epi32(0x8000 + 16)) |
                          _mm512_cmplt_epu32_mask(rem, _mm512_set1_epi32(0x4000 - 16)));
        __mmask16 one = base & ((mnz & _mm512_cmpgt_epu32_mask(t, thr)) | ((__mmask16)~mnz & pow2));
        __mmask16 unz = _mm512_test_epi32_mask(u, c7f);
        if (__builtin_expect(unz != 0xffff, 0)) /* in one step of 8 */
            one |= (__mmask16)~unz & _mm512_test_epi32_mask(m, _mm512_set1_epi32(0x7f80)) &
                   z16_pow2_unmerge(u, m, a, j, t, thr);
        changed += z16_store(dst + 2 * x, flag + x, u, bad | (__mmask16)~one, d0, d1);
    }
    changed += fast_unmerge_vec(src + 2 * x, dst + 2 * x, sum + x, flag + x, n - x);
    if (q)
        *nq = queue_flags(q, queue_steps(q, dst, src, sum, NULL, flag, x), dst, src, sum, flag, x,
                          n);
    return changed;
}

/* lora_fast_run_bf16 for 16 queued elements at once (members c,
 * merged values m, fl32(d) df), in float lanes: the five sums (c and
 * its neighbours -+1, -+2 by magnitude, plus d) as fl32(x + fl32(d)),
 * each kept only where its rounding is "far" in fast_merge_avx512's
 * sense (more than 2^(j+4) ulps from a rounding boundary, j its x's
 * binade above the sum's), so that it rounds as the double sum does.
 * Returns the lanes this does not decide (a sum not far, or a run that
 * is not one of lora_fast_run_bf16's): they go to z8_run_ends (double).
 * Elsewhere the run is lora_fast_run_bf16's: *a, *b its a and b.  Twice
 * the lanes of the double form per step (whose 8-lane steps were a third
 * of the flagged elements' cost). */
static AVX512 __mmask16 z16_run_masks(__m512i c, __m512i m, __m512 df, __mmask16 *a,
                                       __mmask16 *b)
{
    const __m512i cff = _mm512_set1_epi32(0xff);
    __m512i mag = _mm512_and_si512(c, _mm512_set1_epi32(0x7fff));
    __m512i sg = _mm512_and_si512(c, _mm512_set1_epi32(0x8000));
    /* the neighbours stay normal, d is finite and not 0 (in float too) */
    __m512i dfa = _mm512_and_si512(_mm512_castps_si512(df), _mm512_set1_epi32(0x7fffffff));
    __mmask16 bad = _mm512_cmplt_epu32_mask(mag, _mm512_set1_epi32(0x0082)) |
                    _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f7d)) |
                    _mm512_cmpeq_epi32_mask(dfa, _mm512_setzero_si512()) |
                    _mm512_cmpge_epu32_mask(dfa, _mm512_set1_epi32(0x7f800000));
    __mmask16 eq[5];
    static const int step[5] = {0, -1, 1, -2, 2};
    for (int q = 0; q < 5; q++) {
        __m512i x = _mm512_or_si512(sg, _mm512_and_si512(
                                            _mm512_add_epi32(mag, _mm512_set1_epi32(step[q])),
                                            _mm512_set1_epi32(0x7fff)));
        __m512i ax, r;
        __mmask16 bx;
        __m512i rx = z16_round(_mm512_castps_si512(_mm512_add_ps(
                                   _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), df)),
                               &ax, &r, &bx);
        __m512i j = _mm512_min_epi32(
            _mm512_max_epi32(_mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(x, 7), cff),
                                              _mm512_srli_epi32(ax, 23)),
                             _mm512_setzero_si512()),
            _mm512_set1_epi32(12));
        __m512i t = _mm512_abs_epi32(_mm512_sub_epi32(_mm512_and_si512(ax, _mm512_set1_epi32(0xffff)),
                                                      _mm512_set1_epi32(0x8000)));
        bad |= bx | _mm512_cmple_epu32_mask(t, _mm512_sllv_epi32(_mm512_set1_epi32(16), j));
        eq[q] = _mm512_cmpeq_epi32_mask(rx, m);
    }
    *a = eq[1];
    *b = eq[2];
    return bad | (__mmask16)~eq[0] | eq[3] | eq[4];
}


/* BF16 bits in 64-bit lanes -> doubles (exact) */
static inline AVX512 __m512d z8_val(__m512i b)
{
    __m256i w = _mm512_cvtepi64_epi32(b);
    return _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
}

/* Lanes where BF16 x + d (double) rounds to m, a normal result; the
 * lanes whose sum is out of the normal range in *bad (their result is
 * then at most 0x0080 or at least 0x7f7f in magnitude: not an m of
 * z8_run_ends, whose magnitudes are in [0x0081, 0x7f7e]) */
static inline AVX512 __mmask8 z8_merges_to(__m512i x, __m512d d, __m512i m, __mmask8 *bad)
{
    __m512i r = z_round(_mm512_add_pd(z8_val(x), d), bad);
    return _mm512_cmpeq_epi64_mask(r, m) & (__mmask8)~*bad;
}

/* The runs of 8 queued lanes of any length, as rank words, without a
 * search: run_ends (mergecore.c) in double lanes.  The base values that
 * merge to m lie where x + d is inside m's rounding interval, between the
 * midpoints to m's neighbours (exact in double: few bits); the nearest
 * BF16 values inside those midpoints less d are the candidate ends a and
 * b.  Merging is monotonic, so the run is exactly [a, b] where a and b
 * merge to m and the values just outside them do not: four roundings of
 * x + d as the merge computes it (fl64, then to BF16), whatever the
 * error of the candidates.  A lane is kept only where m, a and b are
 * normal with normal neighbours, a and b have c's sign, c lies in [a, b]
 * and d is finite and not 0 (the others go to the full logic): then
 * c's rank is its members below it in value, and the run's span is
 * b - a (in bits, one sign).
 * Lanes past k are not looked at.  Returns the lanes kept; words in
 * out[0 .. 7]. */
static AVX512 __mmask8 z8_run_ends(const uint32_t *cm, const double *dd, uint32_t *out)
{
    __m512i cmv = _mm512_cvtepu32_epi64(_mm256_loadu_si256((const __m256i *)cm));
    __m512d d = _mm512_loadu_pd(dd);
    const __m512i s15 = _mm512_set1_epi64(0x8000), mag = _mm512_set1_epi64(0x7fff);
    const __m512i lo_ok = _mm512_set1_epi64(0x0081), hi_ok = _mm512_set1_epi64(0x7f7e);
    const __m512i one = _mm512_set1_epi64(1), minus = _mm512_set1_epi64(-1);
    __m512i c = _mm512_and_si512(cmv, _mm512_set1_epi64(0xffff)), m = _mm512_srli_epi64(cmv, 16);
    __m512i mm = _mm512_and_si512(m, mag);
    __mmask8 ok = _mm512_cmpge_epu64_mask(mm, lo_ok) & _mm512_cmple_epu64_mask(mm, hi_ok) &
                  _mm512_cmp_pd_mask(d, _mm512_setzero_pd(), _CMP_NEQ_OQ) &
                  _mm512_cmp_pd_mask(_mm512_abs_pd(d), _mm512_set1_pd(INFINITY), _CMP_LT_OQ);
    /* one step up in value, in bits: +1 for a positive value, -1 else */
    __m512i mup = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(m, s15), one, minus);
    __m512i cup = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(c, s15), one, minus);
    __m512d mv = z8_val(m), half = _mm512_set1_pd(0.5);
    __m512d L = _mm512_sub_pd(_mm512_mul_pd(_mm512_add_pd(z8_val(_mm512_sub_epi64(m, mup)), mv), half), d);
    __m512d U = _mm512_sub_pd(_mm512_mul_pd(_mm512_add_pd(z8_val(_mm512_add_epi64(m, mup)), mv), half), d);
    __mmask8 bl, bu, b0, b1, b2, b3;
    __m512i rl = z_round(L, &bl), ru = z_round(U, &bu);
    /* a: the first value at or above L, b: the last at or below U */
    __m512i a = _mm512_mask_add_epi64(rl, _mm512_cmp_pd_mask(z8_val(rl), L, _CMP_LT_OQ), rl, cup);
    __m512i b = _mm512_mask_sub_epi64(ru, _mm512_cmp_pd_mask(z8_val(ru), U, _CMP_GT_OQ), ru, cup);
    __m512i ma = _mm512_and_si512(a, mag), mb = _mm512_and_si512(b, mag);
    ok &= _mm512_testn_epi64_mask(_mm512_xor_si512(a, c), s15) &
          _mm512_testn_epi64_mask(_mm512_xor_si512(b, c), s15) &
          _mm512_cmpge_epu64_mask(ma, lo_ok) & _mm512_cmple_epu64_mask(ma, hi_ok) &
          _mm512_cmpge_epu64_mask(mb, lo_ok) & _mm512_cmple_epu64_mask(mb, hi_ok);
    /* a sum out of the normal range: not m (z8_merges_to) */
    ok &= (__mmask8)~(bl | bu) & z8_merges_to(a, d, m, &b0) & z8_merges_to(b, d, m, &b1) &
          (__mmask8)~z8_merges_to(_mm512_sub_epi64(a, cup), d, m, &b2) &
          (__mmask8)~z8_merges_to(_mm512_add_epi64(b, cup), d, m, &b3);
    __m512d cv = z8_val(c);
    ok &= _mm512_cmp_pd_mask(z8_val(a), cv, _CMP_LE_OQ) & _mm512_cmp_pd_mask(cv, z8_val(b), _CMP_LE_OQ);
    /* one sign: rank and span from the magnitudes */
    __m512i rank = _mm512_abs_epi64(_mm512_sub_epi64(_mm512_and_si512(c, mag), ma));
    __m512i span = _mm512_abs_epi64(_mm512_sub_epi64(mb, ma));
    __m512i w = _mm512_or_si512(rank, _mm512_slli_epi64(span, 16));
    _mm256_storeu_si256((__m256i *)out, _mm512_cvtepi64_epi32(w));
    return ok;
}

/* Queued lanes the masks did not decide, gathered 8 at a time for
 * z8_run_ends: their c | m << 16, d and place in the rank words. */
struct wide8 {
    uint32_t cm[8], pos[8];
    double d[8];
    int n;
};

static AVX512 void wide8_flush(struct wide8 *w, uint32_t *rank)
{
    uint32_t word[8];
    for (int i = w->n; i < 8; i++) { /* a lane that fails: d = 0 */
        w->cm[i] = 0;
        w->d[i] = 0;
    }
    __mmask8 ok = z8_run_ends(w->cm, w->d, word);
    for (int i = 0; i < w->n; i++)
        rank[w->pos[i]] = (ok >> i) & 1 ? word[i] : LORA_RANK_SLOW;
    w->n = 0;
}

/* The merge's queued lanes i0 .. i0 + k - 1 (k <= 16) as rank words
 * (lora_fast_ranks_bf16), from z16_run_masks on the queue's contiguous
 * c | m << 16 and fl32(d): no gather, no flag codes.  The lanes it does
 * not decide go to z8_run_ends through w.  rank is q->df: the lanes are
 * read before the words are stored. */
static AVX512 void z_ranks16(const lora_flagq *q, size_t i0, int k, const double *sum,
                             uint32_t *rank, struct wide8 *w)
{
    __m512i cm = _mm512_loadu_si512((const void *)(q->cm + i0));
    __m512i c = _mm512_and_si512(cm, _mm512_set1_epi32(0xffff));
    __mmask16 a, b;
    __mmask16 bad = z16_run_masks(c, _mm512_srli_epi32(cm, 16),
                                  _mm512_loadu_ps((const void *)(q->df + i0)), &a, &b);
    /* a run of 1 + a + b members (a, b <= 1) */
    const __m512i one = _mm512_set1_epi32(1);
    __m512i va = _mm512_maskz_mov_epi32(a, one), vb = _mm512_maskz_mov_epi32(b, one);
    __mmask16 neg = _mm512_test_epi32_mask(c, _mm512_set1_epi32(0x8000));
    __m512i r = _mm512_or_si512(_mm512_mask_blend_epi32(neg, va, vb),
                                _mm512_slli_epi32(_mm512_add_epi32(va, vb), 16));
    _mm512_storeu_si512((void *)(rank + i0), r);
    bad &= (__mmask16)(k >= 16 ? 0xffffu : (1u << k) - 1);
    for (unsigned bb = bad; bb; bb &= bb - 1) {
        size_t i = i0 + (size_t)__builtin_ctz(bb);
        w->cm[w->n] = q->cm[i];
        w->d[w->n] = sum[q->idx[i]];
        w->pos[w->n] = (uint32_t)i;
        if (++w->n == 8)
            wide8_flush(w, rank);
    }
}


static AVX512 void fast_ranks_avx512(const lora_flagq *q, size_t nl, const double *sum,
                                     uint32_t *rank)
{
    struct wide8 w;
    w.n = 0;
    for (size_t i = 0; i < nl; i += 16)
        z_ranks16(q, i, nl - i < 16 ? (int)(nl - i) : 16, sum, rank, &w);
    if (w.n)
        wide8_flush(&w, rank);
}

/* lora_flag_masks' 64 flags at a time: one byte test each */
static AVX512 void flag_masks_avx512(const unsigned char *flag, size_t nfull, uint64_t *out)
{
    for (size_t w = 0; w < nfull; w++) {
        __m512i v = _mm512_loadu_si512((const void *)(flag + 64 * w));
        out[w] = _mm512_test_epi8_mask(v, v);
    }
}

/* The kernel to use: 2 AVX-512, 1 AVX2, 0 the portable one.
 * LORA_NO_AVX2 forces the portable kernel and LORA_NO_AVX512 the AVX2
 * one (the tests run all three and compare). */
static int fast_level(void)
{
    if (!__builtin_cpu_supports("avx2") || getenv("LORA_NO_AVX2"))
        return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("bmi2") && !getenv("LORA_NO_AVX512"))
        return 2;
    return 1;
}
#endif

uint64_t lora_fast_merge_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
                              unsigned char *flag, size_t n, int record)
{
#ifdef LORA_AVX2
    int lv = fast_level();
    if (lv == 2)
        return fast_merge_avx512(src, dst, sum, flag, n, record);
    if (lv == 1)
        return fast_merge_avx2(src, dst, sum, flag, n, record);
#endif
    return fast_merge_vec(src, dst, sum, flag, n, record);
}

/* Eight bytes at a time without AVX-512: each byte's "not zero"
 * gathered into one byte by a multiply. */
void lora_flag_masks(const unsigned char *flag, size_t n, uint64_t *out)
{
    size_t nfull = n / 64, w = 0;
#ifdef LORA_AVX2
    if (fast_level() == 2) {
        flag_masks_avx512(flag, nfull, out);
        w = nfull;
    }
#endif
    for (; w < nfull; w++) {
        uint64_t mk = 0;
        for (int k = 0; k < 8; k++) {
            uint64_t v;
            memcpy(&v, flag + 64 * w + 8 * k, 8);
            /* bit 7 of a byte set where the byte is not 0 (no carry
             * between bytes: at most 0x7f + 0x7f), then bit 0 */
            v = ((((v & UINT64_C(0x7f7f7f7f7f7f7f7f)) + UINT64_C(0x7f7f7f7f7f7f7f7f)) | v) >> 7) &
                UINT64_C(0x0101010101010101);
            mk |= ((v * UINT64_C(0x0102040810204080)) >> 56) << (8 * k);
        }
        out[w] = mk;
    }
    if (n % 64) {
        uint64_t mk = 0;
        for (size_t i = 0; i < n % 64; i++)
            mk |= (uint64_t)(flag[64 * nfull + i] != 0) << i;
        out[nfull] = mk;
    }
}

uint64_t lora_fast_unmerge_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
                                unsigned char *flag, size_t n)
{
#ifdef LORA_AVX2
    int lv = fast_level();
    if (lv == 2)
        return fast_unmerge_avx512(src, dst, sum, flag, n, NULL, NULL);
    if (lv == 1)
        return fast_unmerge_avx2(src, dst, sum, flag, n);
#endif
    return fast_unmerge_vec(src, dst, sum, flag, n);
}

/* Runs of up to 15 members: the run around a member c from its eight
 * nearest neighbours on each side, for the flagged elements
 * lora_fast_run_bf16 leaves to the full logic (mostly runs of 4 and 8
 * members, where W0 + d lands two or three binades above W0: a tenth of
 * the ambiguous elements, and coded_fix's search cost them about 150 ns
 * each).  The same conditions as lora_fast_run_bf16, eight steps wide:
 * c merges to m, c and its 16 neighbours and every sum are normal BF16
 * of one sign, d finite and not 0, and the run stops within the window
 * on both sides (so it is exact: merging is monotonic).  Returns the
 * flag code LORA_RUN_CODE(below, above) (members of smaller and of larger
 * magnitude than c), or 1 for the full logic. */
static int wide_run_scalar(uint16_t c, uint16_t m, double d)
{
    uint32_t mag = c & 0x7fffu, sg = c & 0x8000u;
    if (!wide_run_may(c, m, d))
        return 1;
    unsigned below = 0, above = 0, inb = 1, ina = 1;
    for (uint32_t j = 1; j <= LORA_RUN_WIDE; j++) {
        int b1, b2;
        uint16_t rl = bf16_round_normal(bf16_d((uint16_t)(sg | (mag - j))) + d, &b1);
        uint16_t rh = bf16_round_normal(bf16_d((uint16_t)(sg | (mag + j))) + d, &b2);
        if (b1 | b2)
            return 1;
        inb &= rl == m;
        ina &= rh == m;
        below += inb;
        above += ina;
    }
    if (below == LORA_RUN_WIDE || above == LORA_RUN_WIDE)
        return 1;
    return LORA_RUN_CODE(below, above);
}

/* The run S of base values that merge to m, for flagged elements of
 * BF16 merges and unmerges, without mergecore.c's search: found from
 * the four nearest neighbours of a member c at once, branch-free (most
 * flagged elements are binade changes whose S has one or two members,
 * and the search's branches were mispredicted about every other time).
 * Where c merges to m, c, its neighbours within two steps and every sum
 * are normal BF16 of one sign, d is finite and not 0, and neither
 * neighbour two steps away merges to m (so |S| <= 3), S is exact:
 * merging is monotonic, and within one sign a neighbour's bits are its
 * magnitude's.  Returns a | b << 1 (a: the neighbour of smaller
 * magnitude is in S, b: the larger one), or -1 for the full logic. */
int lora_fast_run_bf16(uint16_t c, uint16_t m, double d)
{
    uint32_t mag = c & 0x7fffu, sg = c & 0x8000u;
    int b0, bm1, bp1, bm2, bp2;
    uint16_t mc = bf16_round_normal(bf16_d(c) + d, &b0);
    /* neighbours' magnitudes stay normal: [0x0080, 0x7f7f] */
    int far = mag < 0x0082u || mag > 0x7f7du;
    uint32_t lo1 = sg | ((mag - 1) & 0x7fffu), hi1 = sg | ((mag + 1) & 0x7fffu);
    uint32_t lo2 = sg | ((mag - 2) & 0x7fffu), hi2 = sg | ((mag + 2) & 0x7fffu);
    uint16_t rm1 = bf16_round_normal(bf16_d((uint16_t)lo1) + d, &bm1);
    uint16_t rp1 = bf16_round_normal(bf16_d((uint16_t)hi1) + d, &bp1);
    uint16_t rm2 = bf16_round_normal(bf16_d((uint16_t)lo2) + d, &bm2);
    uint16_t rp2 = bf16_round_normal(bf16_d((uint16_t)hi2) + d, &bp2);
    int bad = far | b0 | bm1 | bp1 | bm2 | bp2 | (d == 0) | !isfinite(d) | (mc != m) |
              (rm2 == m) | (rp2 == m);
    if (bad)
        return -1;
    return (rm1 == m) | (rp1 == m) << 1;
}



uint64_t lora_fast_merge_q_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
                                unsigned char *flag, size_t n, lora_flagq *q, size_t *nq)
{
#ifdef LORA_AVX2
    if (fast_level() == 2)
        return fast_merge_q_avx512(src, dst, sum, flag, n, q, nq);
#endif
    uint64_t changed = lora_fast_merge_bf16(src, dst, sum, flag, n, 1);
    *nq = queue_flags(q, 0, src, dst, sum, flag, 0, n);
    for (size_t i = 0; i < *nq; i++) /* the flagged ones with d != 0 too */
        changed += sum[q->idx[i]] != 0;
    return changed;
}

void lora_fast_ranks_bf16(const lora_flagq *q, size_t nl, const double *sum, uint32_t *rank)
{
#ifdef LORA_AVX2
    if (fast_level() == 2) {
        fast_ranks_avx512(q, nl, sum, rank);
        return;
    }
#endif
    for (size_t i = 0; i < nl; i++) {
        uint32_t cm = q->cm[i];
        uint16_t c = (uint16_t)cm, m = (uint16_t)(cm >> 16);
        double d = sum[q->idx[i]];
        int ab = lora_fast_run_bf16(c, m, d);
        rank[i] = code_rank(ab < 0 ? (unsigned)wide_run_scalar(c, m, d) : 2u + (unsigned)ab, c);
    }
}

uint64_t lora_fast_unmerge_q_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
                                  unsigned char *flag, size_t n, lora_flagq *q, size_t *nq)
{
#ifdef LORA_AVX2
    if (fast_level() == 2)
        return fast_unmerge_avx512(src, dst, sum, flag, n, q, nq);
#endif
    uint64_t changed = lora_fast_unmerge_bf16(src, dst, sum, flag, n);
    *nq = queue_flags(q, 0, dst, src, sum, flag, 0, n);
    return changed;
}

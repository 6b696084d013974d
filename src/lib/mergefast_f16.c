/*
 * mergefast_f16.c - the common case of the merge of F16 tensors, the
 * counterpart of mergefast.c's BF16 pass: one branch-free AVX-512 pass
 * in float lanes computes every element as if it were a normal number
 * whose merge is not ambiguous, and flags the elements where that is
 * not proven; mergecore.c (merge_f16_fast) redoes the flagged ones with
 * the full element logic (merge_span), so every element's result and
 * rank bits are the ones the scalar code gives.  The same for the
 * unmerge (u = round(m - d)); and the runs of base values merging to m
 * around the flagged elements, found from their nearest neighbours (8
 * at a time, in double) so that most need no search.  Without AVX-512
 * there is no pass (lora_fast_f16_available says so) and mergecore.c
 * keeps the scalar loop.
 */
#include "internal.h"
#include "mergecore.h"
#include "fpbits.h"

#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LORA_AVX2 1
#include <immintrin.h>
#endif

#ifdef LORA_AVX2
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/* The float-lane steps' shared parts (the merge's h16_step, the
 * unmerge's h16_unstep).  The lanes' 16 F16 values at p (raw in *h)
 * and their deltas (in *d0, *d1); returns the deltas rounded to float. */
static inline AVX512 __attribute__((always_inline)) __m512
h16_load(const unsigned char *p, const double *sum, __mmask16 lanes, __m256i *h, __m512d *d0,
         __m512d *d1)
{
    int all = lanes == 0xffff;
    *h = all ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskz_loadu_epi16(lanes, p);
    *d0 = all ? _mm512_loadu_pd(sum) : _mm512_maskz_loadu_pd((__mmask8)lanes, sum);
    *d1 = all ? _mm512_loadu_pd(sum + 8) : _mm512_maskz_loadu_pd((__mmask8)(lanes >> 8), sum + 8);
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(*d0)), _mm512_cvtpd_ps(*d1),
                              1);
}

/* Float bits sb rounded to F16 (13 bits dropped, nearest even): |sb| in
 * *a, its rounding sum in *r, lanes whose result is not a normal F16
 * (2^-14 <= |sb|, rounded below 2^16: float exponents 113, 143) in *bad */
static inline AVX512 __attribute__((always_inline)) __m512i
h16_round(__m512i sb, __m512i *a, __m512i *r, __mmask16 *bad)
{
    *a = _mm512_and_si512(sb, _mm512_set1_epi32(0x7fffffff));
    *r = _mm512_add_epi32(_mm512_add_epi32(*a, _mm512_set1_epi32(0xfff)),
                          _mm512_and_si512(_mm512_srli_epi32(*a, 13), _mm512_set1_epi32(1)));
    *bad = _mm512_cmplt_epu32_mask(*a, _mm512_set1_epi32(113 << 23)) |
           _mm512_cmpge_epu32_mask(*r, _mm512_set1_epi32(143 << 23));
    return _mm512_or_si512(
        _mm512_and_si512(_mm512_sub_epi32(_mm512_srli_epi32(*r, 13), _mm512_set1_epi32(112 << 10)),
                         _mm512_set1_epi32(0x7fff)),
        _mm512_and_si512(_mm512_srli_epi32(sb, 16), _mm512_set1_epi32(0x8000)));
}

/* A step's changed elements: lanes not flagged (fb) with d != 0 */
static inline AVX512 __attribute__((always_inline)) unsigned
h16_changed(__m512d d0, __m512d d1, __mmask16 fb, __mmask16 lanes)
{
    unsigned nz = (unsigned)_mm512_cmp_pd_mask(d0, _mm512_setzero_pd(), _CMP_NEQ_UQ) |
                  (unsigned)_mm512_cmp_pd_mask(d1, _mm512_setzero_pd(), _CMP_NEQ_UQ) << 8;
    return (unsigned)__builtin_popcount(nz & ~(unsigned)fb & (unsigned)lanes);
}

/* One step of 16 elements (lanes: the ones that exist), in float lanes.
 *
 * Contract (mergecore.h): m = round_f16(fl64(W0 + d)), nearest even;
 * a lane is left unflagged only where that m is certain, and with
 * record only where W0 is also proven the only base value that merges
 * to m (single_fast, mergecore.c: W0 and m normal, W0's binade not
 * below m's, W0's mantissa not 0, |fl64(W0 + d) - m| below half an ulp
 * of m by 2^-19 of it).
 *
 * sf = fl32(W0 + fl32(d)) stands in for fl64(W0 + d) (W0 -> float is
 * exact).  Error bound, in float ulps u of sf's binade (exponent field
 * es), with j = W0's float exponent field - es:
 *   fl32(d) is within 2^-24 |d| of d, and |d| <= |W0| + |W0 + d| <
 *   2^(j+24) u + 2^24 u (plus the bound itself), so within 2^j + 1 u
 *   (j >= 0; 1.5 u for j < 0); the float add rounds by u / 2 at most,
 *   and fl64 is within 2^-28 u of the exact sum: E <= 2^max(j,0) + 2 u.
 *   (The bound does not depend on the target dtype: as for BF16.)
 * F16 keeps 10 of float's 23 mantissa bits, so the rounding drops 13:
 * rem = those 13 bits of |sf|, q = 2^13 u the F16 ulp of sf's binade.
 * The rounding boundaries of sf's binade are at rem = 2^12; the one
 * below the binade (where the spacing halves) is at least q / 4 = 2^11 u
 * from sf, the one to infinity (65520) is the binade's last midpoint,
 * and below 2^-14 the subnormals keep the spacing of the lowest binade.
 * So sf is at least min(t, 2^11) u from every boundary, t = |rem - 2^12|.
 * A lane is "far" when t > T = 2^(max(j,0) + 4): then t > 4 E, and
 * 2^11 > E because j is clamped at 8, where T = 2^12 is not below any t
 * (a sum that cancels down 8 binades or more is always flagged), so
 * fl64(W0 + d) lies on sf's side of every boundary and rounds to the
 * same m.  Lanes with t <= T go to the full logic.
 * The proof of single_fast on fl64(W0 + d): |sf - m| = (2^12 - t) u,
 * also where the rounding carried into the next binade (m = 2^k, whose
 * half ulp is then larger still), so |fl64(W0 + d) - m| <= (2^12 - t +
 * E) u < q / 2 (1 - 2^-19), as t > E + 2^-7; W0's binade not below m's
 * (m's after the carry), W0's mantissa not 0, m normal as the flags
 * already require.  W0 = +-2^k (mantissa 0, 1 in 1024 of the values)
 * is not proven here: those lanes go to the full logic with record.
 * Flagged besides: W0 not a normal F16 (zero, subnormal, inf, NaN), m
 * not a normal F16 (below 2^-14, beyond 65504), sums that are not
 * finite (d non-finite, or beyond float's range).  d == 0 gives sf =
 * W0, rem = 0: m = W0, as merge_span's copy.
 * Flagged lanes get W0 in dst (so that an in-place merge, dst == src,
 * still has it for the full logic); the others m. */
/* (lanes all 16: plain loads and stores; q: the flagged lanes' indices,
 * from base, appended to q at *nq instead of the flags) */
static inline AVX512 __attribute__((always_inline)) unsigned
h16_step(const unsigned char *src, unsigned char *dst, const double *sum, unsigned char *flag,
         __mmask16 lanes, __mmask16 rec, uint32_t *q, size_t *nq, uint32_t base)
{
    int all = lanes == 0xffff;
    __m256i h;
    __m512d d0, d1;
    __m512 df = h16_load(src, sum, lanes, &h, &d0, &d1);
    __m512 wf = _mm512_cvtph_ps(h);
    __m512i sb = _mm512_castps_si512(_mm512_add_ps(wf, df));
    __m512i wb = _mm512_castps_si512(wf);
    __m512i a, r;
    __mmask16 bad;
    __m512i m = h16_round(sb, &a, &r, &bad);
    /* W0 normal F16: float exponent field in [113, 142] */
    __m512i ew = _mm512_srli_epi32(_mm512_and_si512(wb, _mm512_set1_epi32(0x7fffffff)), 23);
    __mmask16 wn = _mm512_cmple_epu32_mask(_mm512_sub_epi32(ew, _mm512_set1_epi32(113)),
                                           _mm512_set1_epi32(29));
    __m512i j = _mm512_min_epi32(_mm512_max_epi32(_mm512_sub_epi32(ew, _mm512_srli_epi32(a, 23)),
                                                  _mm512_setzero_si512()),
                                 _mm512_set1_epi32(8));
    __m512i thr = _mm512_sllv_epi32(_mm512_set1_epi32(16), j);
    __m512i t = _mm512_abs_epi32(_mm512_sub_epi32(_mm512_and_si512(a, _mm512_set1_epi32(0x1fff)),
                                                  _mm512_set1_epi32(0x1000)));
    __mmask16 far = _mm512_cmpgt_epu32_mask(t, thr);
    /* single_fast: W0's mantissa not 0, W0's binade not below m's */
    __mmask16 one = _mm512_test_epi32_mask(wb, _mm512_set1_epi32(0x7fe000)) &
                    _mm512_cmpge_epu32_mask(ew, _mm512_srli_epi32(r, 23));
    __mmask16 fb = (bad | (__mmask16)~wn | (__mmask16)~far | (rec & (__mmask16)~one)) & lanes;
    __m256i out = _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(fb, m, _mm512_cvtepu16_epi32(h)));
    if (all)
        _mm256_storeu_si256((__m256i *)dst, out);
    else
        _mm256_mask_storeu_epi16(dst, lanes, out);
    if (q) {
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        _mm512_storeu_si512((void *)(q + *nq),
                            _mm512_maskz_compress_epi32(fb, _mm512_add_epi32(iota, _mm512_set1_epi32((int)base))));
        *nq += (size_t)__builtin_popcount(fb);
    } else if (all) {
        _mm_storeu_si128((__m128i *)flag, _mm_maskz_set1_epi8(fb, 1));
    } else {
        _mm_mask_storeu_epi8(flag, lanes, _mm_maskz_set1_epi8(fb, 1));
    }
    return h16_changed(d0, d1, fb, lanes);
}

static inline AVX512 __attribute__((always_inline)) uint64_t
fast_merge_f16_steps(const unsigned char *src, unsigned char *dst, const double *sum,
                     unsigned char *flag, size_t n, int record, uint32_t *q, size_t *nq)
{
    uint64_t changed = 0;
    __mmask16 rec = record ? 0xffff : 0;
    size_t x = 0;
    for (; x + 16 <= n; x += 16)
        changed += h16_step(src + 2 * x, dst + 2 * x, sum + x, flag + x, 0xffff, rec, q, nq,
                            (uint32_t)x);
    if (x < n)
        changed += h16_step(src + 2 * x, dst + 2 * x, sum + x, flag + x,
                            (__mmask16)((1u << (n - x)) - 1), rec, q, nq, (uint32_t)x);
    return changed;
}

static AVX512 uint64_t fast_merge_f16_avx512(const unsigned char *src, unsigned char *dst,
                                             const double *sum, unsigned char *flag, size_t n,
                                             int record)
{
    return fast_merge_f16_steps(src, dst, sum, flag, n, record, NULL, NULL);
}

static AVX512 uint64_t fast_merge_q_f16_avx512(const unsigned char *src, unsigned char *dst,
                                               const double *sum, size_t n, int record,
                                               uint32_t *q, size_t *nq)
{
    *nq = 0;
    return fast_merge_f16_steps(src, dst, sum, NULL, n, record, q, nq);
}

/* The unmerge in float lanes, 16 elements a step: u = round_f16(tf),
 * tf = fl32(m - fl32(d)), kept only where u is proven the only base
 * value that merges to m (so that the receipt has no bits for it) and
 * u = round_f16(fl64(m - d)), the scalar unmerge's value (to which a
 * version 1-2 receipt's corrections apply).  mergefast.c's
 * fast_unmerge_avx512 for 13 dropped bits.  u's mantissa is not 0 (a
 * rounding of tf that carried into the next binade leaves it 0), so tf
 * and u share a binade, f its float ulp (q_u = 2^13 f, u's ulp), and tf
 * is at least q_u / 2 from the rounding boundaries of the binades
 * around; rem, the 13 bits of |tf| the rounding drops, puts u within
 * 2^12 - t f of tf, t = |rem - 2^12|, and tf is within E <= 3 f of T =
 * m - d, the exact value (the merge pass's bound, with m's binade not
 * above u's).  So t > 16 makes u the rounding of fl64(m - d) too.  With
 * j = u's binade above m's (q_m = 2^-j q_u, m's ulp), single_fast(u, m,
 * s = u + d) (mergecore.c) needs |s - m| = |u - T| (+ fl64's 2^-28 f) <
 * q_m / 2 (1 - 2^-19), and s must round to m, which holds when m's
 * mantissa is not 0 (m's rounding interval is then +-q_m / 2; m = 2^k
 * lanes, 1 in 1024, are flagged): t > 2^12 - 2^(12-j) + 16 suffices
 * (never true for j < 0 or j >= 13, where the shift leaves 0).  m and u
 * normal F16, d finite (else tf is not).  Flagged lanes keep m in dst
 * (for an in-place unmerge). */
static inline AVX512 __attribute__((always_inline)) unsigned
h16_unstep(const unsigned char *src, unsigned char *dst, const double *sum, unsigned char *flag,
           __mmask16 lanes)
{
    int all = lanes == 0xffff;
    __m256i h;
    __m512d d0, d1;
    __m512 df = h16_load(src, sum, lanes, &h, &d0, &d1);
    __m512 mf = _mm512_cvtph_ps(h);
    __m512i tb = _mm512_castps_si512(_mm512_sub_ps(mf, df));
    __m512i mb = _mm512_castps_si512(mf);
    __m512i a, r;
    __mmask16 bad;
    __m512i u = h16_round(tb, &a, &r, &bad);
    /* m normal F16 (float exponent field in [113, 142]), mantissa not 0 */
    __m512i em = _mm512_srli_epi32(_mm512_and_si512(mb, _mm512_set1_epi32(0x7fffffff)), 23);
    __mmask16 ok = _mm512_cmple_epu32_mask(_mm512_sub_epi32(em, _mm512_set1_epi32(113)),
                                           _mm512_set1_epi32(29)) &
                   _mm512_test_epi32_mask(mb, _mm512_set1_epi32(0x7fe000)) &
                   _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x3ff));
    __m512i j = _mm512_sub_epi32(_mm512_srli_epi32(r, 23), em);
    __m512i thr = _mm512_add_epi32(_mm512_sub_epi32(_mm512_set1_epi32(0x1000),
                                                    _mm512_srlv_epi32(_mm512_set1_epi32(0x1000), j)),
                                   _mm512_set1_epi32(16));
    __m512i t = _mm512_abs_epi32(_mm512_sub_epi32(_mm512_and_si512(a, _mm512_set1_epi32(0x1fff)),
                                                  _mm512_set1_epi32(0x1000)));
    ok &= _mm512_cmpgt_epu32_mask(t, thr);
    __mmask16 fb = (bad | (__mmask16)~ok) & lanes;
    __m256i out = _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(fb, u, _mm512_cvtepu16_epi32(h)));
    if (all) {
        _mm256_storeu_si256((__m256i *)dst, out);
        _mm_storeu_si128((__m128i *)flag, _mm_maskz_set1_epi8(fb, 1));
    } else {
        _mm256_mask_storeu_epi16(dst, lanes, out);
        _mm_mask_storeu_epi8(flag, lanes, _mm_maskz_set1_epi8(fb, 1));
    }
    return h16_changed(d0, d1, fb, lanes);
}

static AVX512 uint64_t fast_unmerge_f16_avx512(const unsigned char *src, unsigned char *dst,
                                               const double *sum, unsigned char *flag, size_t n)
{
    uint64_t changed = 0;
    size_t x = 0;
    for (; x + 16 <= n; x += 16)
        changed += h16_unstep(src + 2 * x, dst + 2 * x, sum + x, flag + x, 0xffff);
    if (x < n)
        changed += h16_unstep(src + 2 * x, dst + 2 * x, sum + x, flag + x,
                              (__mmask16)((1u << (n - x)) - 1));
    return changed;
}

/* f16_round_normal (below) in 64-bit lanes: the bits, lanes out of the
 * normal range in *bad */
static inline AVX512 __m512i h8_round(__m512d x, __mmask8 *bad)
{
    __m512i u = _mm512_castpd_si512(x);
    __m512i a = _mm512_and_si512(u, _mm512_set1_epi64(INT64_C(0x7fffffffffffffff)));
    __m512i r = _mm512_add_epi64(_mm512_add_epi64(a, _mm512_set1_epi64((INT64_C(1) << 41) - 1)),
                                 _mm512_and_si512(_mm512_srli_epi64(a, 42), _mm512_set1_epi64(1)));
    *bad = _mm512_cmplt_epu64_mask(_mm512_srli_epi64(a, 52), _mm512_set1_epi64(1009)) |
           _mm512_cmpgt_epu64_mask(_mm512_srli_epi64(r, 52), _mm512_set1_epi64(1038));
    __m512i m = _mm512_and_si512(_mm512_sub_epi64(_mm512_srli_epi64(r, 42),
                                                  _mm512_set1_epi64(1008 << 10)),
                                 _mm512_set1_epi64(0x7fff));
    return _mm512_or_si512(m, _mm512_and_si512(_mm512_srli_epi64(u, 48),
                                               _mm512_set1_epi64(0x8000)));
}

/* F16 bits in 64-bit lanes -> double (exact) */
static inline AVX512 __m512d h8_d(__m512i bits)
{
    __m512 f = _mm512_cvtph_ps(_mm256_castsi128_si256(_mm512_cvtepi64_epi16(bits)));
    return _mm512_cvtps_pd(_mm512_castps512_ps256(f));
}

/* lora_fast_run_f16 for k (<= 8) queued elements at once, lane for lane
 * the same computation in double (the F16 values and their sums are the
 * scalar ones: no error bound needed). */
static inline AVX512 __attribute__((always_inline)) void
runs8_k(const unsigned char *src, const double *sum, const uint32_t *idx, int k, signed char *ab,
        uint16_t *mo, int un)
{
    uint16_t c16[8], m16[8];
    double dd[8];
    for (int i = 0; i < 8; i++) {
        uint32_t x = idx[i < k ? i : 0];
        memcpy(&c16[i], src + 2 * (size_t)x, 2);
        dd[i] = sum[x];
    }
    __m512i c = _mm512_cvtepu16_epi64(_mm_loadu_si128((const __m128i *)c16));
    __m512d d = _mm512_loadu_pd(dd);
    __mmask8 ubad = 0;
    __m512i mu = c;
    if (un) /* src holds m: the run around u = round(m - d) */
        c = h8_round(_mm512_sub_pd(h8_d(mu), d), &ubad);
    __m512i mag = _mm512_and_si512(c, _mm512_set1_epi64(0x7fff));
    __m512i sg = _mm512_and_si512(c, _mm512_set1_epi64(0x8000));
    __m512d ad = _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(d),
                                                      _mm512_set1_epi64(INT64_C(0x7fffffffffffffff))));
    __mmask8 bad = _mm512_cmplt_epu64_mask(mag, _mm512_set1_epi64(0x0402)) |
                   _mm512_cmpgt_epu64_mask(mag, _mm512_set1_epi64(0x7bfd)) |
                   _mm512_cmp_pd_mask(d, _mm512_setzero_pd(), _CMP_EQ_OQ) |
                   (__mmask8)~_mm512_cmp_pd_mask(ad, _mm512_set1_pd(INFINITY), _CMP_LT_OQ);
    static const int step[5] = {0, -1, 1, -2, 2};
    __m512i r[5];
    for (int q = 0; q < 5; q++) {
        __m512i x = _mm512_or_si512(sg, _mm512_and_si512(_mm512_add_epi64(mag, _mm512_set1_epi64(step[q])),
                                                         _mm512_set1_epi64(0x7fff)));
        __mmask8 b;
        r[q] = h8_round(_mm512_add_pd(h8_d(x), d), &b);
        bad |= b;
    }
    __mmask8 e1 = _mm512_cmpeq_epi64_mask(r[1], r[0]), e2 = _mm512_cmpeq_epi64_mask(r[2], r[0]);
    bad |= _mm512_cmpeq_epi64_mask(r[3], r[0]) | _mm512_cmpeq_epi64_mask(r[4], r[0]);
    if (un)
        bad |= ubad | _mm512_cmpneq_epi64_mask(r[0], mu);
    _mm_storeu_si128((__m128i *)m16, _mm512_cvtepi64_epi16(un ? c : r[0]));
    for (int i = 0; i < k; i++) {
        ab[i] = (signed char)((bad >> i) & 1 ? -1 : ((e1 >> i) & 1) | ((e2 >> i) & 1) << 1);
        mo[i] = m16[i];
    }
}

static AVX512 void runs8_f16(const unsigned char *src, const double *sum, const uint32_t *idx,
                             int k, signed char *ab, uint16_t *mo)
{
    runs8_k(src, sum, idx, k, ab, mo, 0);
}

/* runs8_f16 around u = round(m - d) for m in src: u in mo */
static AVX512 void unruns8_f16(const unsigned char *src, const double *sum, const uint32_t *idx,
                               int k, signed char *ab, uint16_t *mo)
{
    runs8_k(src, sum, idx, k, ab, mo, 1);
}
#endif

/* Round to F16 where the result is surely normal (else *bad): the
 * rounding of fp_round_f16's normal branch, without branches (the
 * F16 form of mergefast.c's bf16_round_normal). */
static inline __attribute__((always_inline)) uint16_t f16_round_normal(double x, int *bad)
{
    uint64_t u = fp_dbits(x);
    uint64_t a = u & 0x7fffffffffffffffULL;
    uint64_t r = a + ((1ULL << 41) - 1) + ((a >> 42) & 1);
    *bad = (a >> 52) < 1009 || (r >> 52) > 1038;
    return (uint16_t)((((r >> 42) - (1008u << 10)) & 0x7fff) | ((u >> 48) & 0x8000));
}

/* W0 = c's merged value m and the run of base values that merge to it,
 * from c's four nearest neighbours (lora_fast_run_bf16's argument for
 * F16): where c, its neighbours within two steps and every sum are
 * normal F16 of one sign, d is finite and not 0, and neither neighbour
 * two steps away merges to m, the run is c and those of its two
 * nearest neighbours that merge to m (merging is monotonic, and within
 * one sign a neighbour's bits are its magnitude's).  Returns a | b << 1
 * (a: the neighbour of smaller magnitude is in the run, b: the larger
 * one) and m in *m, or -1 for the full logic. */
int lora_fast_run_f16(uint16_t c, double d, uint16_t *m)
{
    uint32_t mag = c & 0x7fffu, sg = c & 0x8000u;
    int b0, bm1, bp1, bm2, bp2;
    uint16_t mc = f16_round_normal(fp_f16_d(c) + d, &b0);
    /* neighbours' magnitudes stay normal: [0x0400, 0x7bff] */
    int far = mag < 0x0402u || mag > 0x7bfdu;
    uint32_t lo1 = sg | ((mag - 1) & 0x7fffu), hi1 = sg | ((mag + 1) & 0x7fffu);
    uint32_t lo2 = sg | ((mag - 2) & 0x7fffu), hi2 = sg | ((mag + 2) & 0x7fffu);
    uint16_t rm1 = f16_round_normal(fp_f16_d(lo1) + d, &bm1);
    uint16_t rp1 = f16_round_normal(fp_f16_d(hi1) + d, &bp1);
    uint16_t rm2 = f16_round_normal(fp_f16_d(lo2) + d, &bm2);
    uint16_t rp2 = f16_round_normal(fp_f16_d(hi2) + d, &bp2);
    *m = mc;
    if (far | b0 | bm1 | bp1 | bm2 | bp2 | (d == 0) | !isfinite(d) | (rm2 == mc) | (rp2 == mc))
        return -1;
    return (rm1 == mc) | (rp1 == mc) << 1;
}

void lora_fast_runs_f16(const unsigned char *src, const double *sum, const uint32_t *idx,
                        size_t nl, signed char *ab, uint16_t *m)
{
    size_t i = 0;
#ifdef LORA_AVX2
    if (lora_fast_f16_available())
        for (; i < nl; i += 8)
            runs8_f16(src, sum, idx + i, nl - i < 8 ? (int)(nl - i) : 8, ab + i, m + i);
#endif
    for (; i < nl; i++) {
        uint16_t c;
        memcpy(&c, src + 2 * (size_t)idx[i], 2);
        ab[i] = (signed char)lora_fast_run_f16(c, sum[idx[i]], &m[i]);
    }
}

/* Flagged elements of a coded F16 unmerge (flag[x] == 1, m in src):
 * where u = round_f16(m - d), the scalar unmerge's value, merges to m
 * and its run is one lora_fast_run_f16 finds, the flag becomes the run's
 * code 2 + (a | b << 1) and dst[x] u, a member of the run that
 * mergecore.c decodes W0 from (run_word, rank_member: the rank bits);
 * elsewhere the flag stays 1 and dst[x] m. */
void lora_fast_unruns_f16(const unsigned char *src, unsigned char *dst, const double *sum,
                          unsigned char *flag, size_t n)
{
    enum { NB = 512 };
    uint32_t idx[NB];
    signed char ab[NB];
    uint16_t uv[NB];
    int vec = lora_fast_f16_available();
    uint64_t mk[64];
    size_t k = 0;
    for (size_t x0 = 0; x0 < n; x0 += 64) {
        if (x0 % 4096 == 0) /* the flags' masks, 4096 at a time */
            lora_flag_masks(flag + x0, n - x0 < 4096 ? n - x0 : 4096, mk);
        for (uint64_t v = mk[x0 % 4096 / 64]; v; v &= v - 1)
            idx[k++] = (uint32_t)(x0 + (size_t)__builtin_ctzll(v));
        if (k + 64 <= NB && x0 + 64 < n)
            continue;
        size_t i = 0;
#ifdef LORA_AVX2
        if (vec)
            for (; i < k; i += 8)
                unruns8_f16(src, sum, idx + i, k - i < 8 ? (int)(k - i) : 8, ab + i, uv + i);
#endif
        for (; i < k; i++) {
            uint16_t m, m2;
            memcpy(&m, src + 2 * (size_t)idx[i], 2);
            double d = sum[idx[i]];
            int bad;
            uv[i] = f16_round_normal(fp_f16_d(m) - d, &bad);
            ab[i] = (signed char)lora_fast_run_f16(uv[i], d, &m2);
            if (bad || m2 != m)
                ab[i] = -1;
        }
        for (i = 0; i < k; i++)
            if (ab[i] >= 0) {
                flag[idx[i]] = (unsigned char)(2 + ab[i]);
                memcpy(dst + 2 * (size_t)idx[i], &uv[i], 2);
            }
        k = 0;
    }
}

/* The F16 pass runs where the CPU has AVX-512 (F, BW, VL, DQ) and
 * neither LORA_NO_AVX512 nor LORA_NO_AVX2 is set (mergefast.c's
 * fast_level). */
int lora_fast_f16_available(void)
{
#ifdef LORA_AVX2
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           !getenv("LORA_NO_AVX512") && !getenv("LORA_NO_AVX2");
#else
    return 0;
#endif
}

uint64_t lora_fast_merge_f16(const unsigned char *src, unsigned char *dst, const double *sum,
                             unsigned char *flag, size_t n, int record)
{
#ifdef LORA_AVX2
    if (lora_fast_f16_available())
        return fast_merge_f16_avx512(src, dst, sum, flag, n, record);
#endif
    /* no pass: every element to the full logic, W0 in place */
    (void)sum;
    (void)record;
    if (dst != src)
        memcpy(dst, src, 2 * n);
    memset(flag, 1, n);
    return 0;
}

uint64_t lora_fast_unmerge_f16(const unsigned char *src, unsigned char *dst, const double *sum,
                               unsigned char *flag, size_t n)
{
#ifdef LORA_AVX2
    if (lora_fast_f16_available())
        return fast_unmerge_f16_avx512(src, dst, sum, flag, n);
#endif
    (void)sum;
    if (dst != src)
        memcpy(dst, src, 2 * n);
    memset(flag, 1, n);
    return 0;
}

uint64_t lora_fast_merge_q_f16(const unsigned char *src, unsigned char *dst, const double *sum,
                               size_t n, int record, uint32_t *q, size_t *nq)
{
#ifdef LORA_AVX2
    if (lora_fast_f16_available())
        return fast_merge_q_f16_avx512(src, dst, sum, n, record, q, nq);
#endif
    (void)sum;
    (void)record;
    if (dst != src)
        memcpy(dst, src, 2 * n);
    for (size_t x = 0; x < n; x++)
        q[x] = (uint32_t)x;
    *nq = n;
    return 0;
}

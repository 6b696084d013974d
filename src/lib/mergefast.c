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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define LORA_CLONES __attribute__((target_clones("default", "avx2"), optimize("tree-vectorize")))
#else
#define LORA_CLONES
#endif

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
uint64_t lora_fast_merge_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
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
uint64_t lora_fast_unmerge_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
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

/*
 * mergecore.h - internal interface of the tensor merge engine
 * (mergecore.c), used by merge.c (streaming checkpoints), receipt.c and
 * the unit tests.
 */
#ifndef LORA_MERGECORE_H
#define LORA_MERGECORE_H

#include "internal.h"

typedef struct lora_engine lora_engine;

/* Worker buffers for nthreads threads, grown to the widest tensor seen
 * and then reused for every tensor. */
int lora_engine_new(int nthreads, lora_engine **out, lora_error *err);
void lora_engine_free(lora_engine *e);
int lora_engine_threads(const lora_engine *e);

/* Output of a block: bytes [off, off+len) of the tensor's data. */
typedef int (*lora_sink_fn)(void *arg, uint64_t off, const void *buf, size_t len,
                            lora_error *err);

/* One tensor to merge or unmerge. */
typedef struct lora_tjob {
    const char *name;            /* for messages */
    lora_dtype in_dt, out_dt;
    uint64_t rows, cols;
    const void *src;             /* rows×cols elements of in_dt */
    void *dst;                   /* rows×cols of out_dt, or NULL to use sink */
    lora_sink_fn sink;
    void *sink_arg;
    const lora_term *terms;
    size_t nterms;
    lora_rounding mode;
    int unmerge;
    int record_fixes;            /* merge: fill out_fixes */
    lora_fixes *out_fixes;       /* merge: appended to */
    const lora_fixes *fixes;     /* unmerge: corrections to apply, or NULL */
    const void *ref;             /* unmerge: compare with (out_dt), or NULL; with
                                    neither ref nor fixes, stats->inexact counts the
                                    elements that certainly differ from W0 (merging
                                    them again does not give the input back) and
                                    stats->may_differ those that may (an upper bound) */
    int allow_nonfinite;         /* a finite input whose result is not finite in the
                                    output dtype: counted in stats->nonfinite; 0: the
                                    run fails (LORA_EINPUT) naming the first one */
    int hash;                    /* compute the tree hashes of input and output */
    int in_hk, out_hk;           /* their kinds (LORA_TH_*; 0: BLAKE2b) */
    unsigned char *in_hash, *out_hash; /* 32 bytes each, when hash */
    lora_merge_stats *stats;     /* added to, may be NULL */
    void (*progress)(void *arg, uint64_t bytes);
    void *progress_arg;
    /* optional, with sink: a buffer for a block's LEN output bytes that
     * the sink then writes without a copy (NULL: the engine's own); the
     * sink call takes it back, sink_unlend one the sink never got */
    void *(*sink_lend)(void *arg, size_t len);
    void (*sink_unlend)(void *arg, void *buf);
} lora_tjob;

int lora_engine_run(lora_engine *e, const lora_tjob *job, lora_error *err);

/* Rows per block (and per hash chunk) for a tensor of cols columns. */
uint64_t lora_block_rows(uint64_t cols);

/* The receipt's tensor hash of bytes laid out as rows of rowbytes:
 * BLAKE2b-256 over the BLAKE2b-256 of each chunk of lora_block_rows(cols)
 * rows (lora-receipt(5)). */
void lora_tree_hash(const void *data, uint64_t rows, uint64_t cols, size_t elsize,
                    unsigned char out[32]);

/* tensorhash.c: digest kinds of the tree hash (lora-receipt(5)). */
enum { LORA_TH_BLAKE2B = 0, LORA_TH_XXH3 = 1, LORA_TH_SKIP = 2, LORA_TH_SHA256 = 3,
       LORA_TH_BLAKE3 = 4 };
/* The digest of one chunk (32 bytes; XXH3-128 fills the first 16).
 * 0, or -1 when the hash is not available (libcrypto). */
int lora_th_chunk(int kind, const void *data, size_t len, unsigned char out[32]);
/* The tensor's digest from its n chunk digests, stride bytes apart. */
int lora_th_combine(int kind, const unsigned char *chunks, size_t stride, size_t n,
                    unsigned char out[32]);
/* lora_tree_hash of another kind (0, or -1: memory, libcrypto). */
int lora_tree_hash_kind(int kind, const void *data, uint64_t rows, uint64_t cols,
                        size_t elsize, unsigned char out[32]);

/* The kinds of a receipt's digests of merged and of base tensors, and
 * of the base tensors' digests lora-merge writes (version 6). */
static inline int lora_receipt_merged_kind(const lora_receipt *r)
{
    return lora_receipt_version(r) >= 5 ? LORA_TH_XXH3 : LORA_TH_BLAKE2B;
}
static inline int lora_receipt_base_kind(const lora_receipt *r)
{
    int v = lora_receipt_version(r);
    return v >= 6 ? LORA_TH_BLAKE3 : v == 5 ? LORA_TH_SHA256 : LORA_TH_BLAKE2B;
}
#define LORA_TH_NEW_BASE LORA_TH_BLAKE3

/* delta.c: lora_delta_rows with A's panels packed once (per tensor)
 * instead of at every call: P holds lora_delta_packed_size(r, in)
 * doubles from lora_delta_pack.  The same bytes as lora_delta_rows. */
size_t lora_delta_packed_size(uint64_t r, uint64_t in);
void lora_delta_pack(const double *A, uint64_t r, uint64_t in, double *P);
void lora_delta_rows_packed(const double *B, const double *A, const double *P, uint64_t r,
                            uint64_t in, double scale, uint64_t i0, uint64_t i1, double *dst);

int lora_fixes_push(lora_fixes *f, uint64_t index, int64_t step);
/* Rank bits (receipt version 3 and later, lora-receipt(5)): the bits of
 * a rank in a run of SPAN + 1 values (SPAN >= 1), and the NB low bits
 * of V appended to F's bit buffer, set and cleared since the buffer is
 * reused from tensor to tensor.  -1 when out of memory. */
static inline int lora_nbits_for(uint64_t span)
{
    return 64 - __builtin_clzll(span);
}
int lora_bits_put(lora_fixes *f, uint64_t v, int nb);
/* 0 and the element kind/size for F32, F16, BF16; -1 otherwise. */
int lora_fp_kind(lora_dtype dt, int *kind, size_t *size);
/* Decode F32/F16/BF16/F64 values to double (F64 through float). */
int lora_decode_any(lora_dtype dt, const void *src, double *dst, uint64_t n);

/* mergefast.c: the BF16 merge (record: also prove "not ambiguous") and
 * coded unmerge of n elements into dst, flag[x] = 1 where mergecore.c
 * must redo the element; returns the unflagged elements with d != 0. */
uint64_t lora_fast_merge_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
                              unsigned char *flag, size_t n, int record);
/* The run of BF16 base values merging to m around a member c (delta d)
 * where it needs no search: a | b << 1 (the neighbour of smaller / larger
 * magnitude is in it too), or -1. */
int lora_fast_run_bf16(uint16_t c, uint16_t m, double d);
/* Flag codes of runs found without a search: 2 + (a | b << 1) (runs of
 * at most 3 members, lora_fast_run_bf16) and LORA_RUN_CODE(below,
 * above) for runs of up to 2 * LORA_RUN_WIDE - 1 members: the members of
 * smaller and of larger magnitude than the value the run was found
 * around.  W0's rank is below for a positive sign, above for a negative
 * one (ranks go in value order), in lora_nbits_for(below + above) bits. */
#define LORA_RUN_WIDE 8
#define LORA_RUN_CODE(below, above) (6 + (below) * LORA_RUN_WIDE + (above))
static inline void lora_run_decode(unsigned code, unsigned *below, unsigned *above)
{
    unsigned c = code - 6, ab = code - 2;
    *below = code < 6 ? ab & 1 : c / LORA_RUN_WIDE;
    *above = code < 6 ? ab >> 1 : c % LORA_RUN_WIDE;
}
/* out[w] bit i set where flag[64 w + i] != 0, for the ceil(n / 64)
 * words of n flags (bits past n clear). */
void lora_flag_masks(const unsigned char *flag, size_t n, uint64_t *out);
uint64_t lora_fast_unmerge_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
                                unsigned char *flag, size_t n);
/* The merge with the receipt keeps its flagged lanes in a queue, in
 * element order, rather than as flags: their index in the part, c | m << 16
 * (W0's and the merged value's bits) and fl32(d)'s bits (then their rank
 * words, lora_fast_ranks_bf16).  Each array has room for n + 16 entries
 * (the AVX-512 pass stores 16 at a time). */
typedef struct lora_flagq {
    uint32_t *idx, *cm, *df;
} lora_flagq;
/* lora_fast_merge_bf16 with record, its flagged lanes queued in q (their
 * count in *nq); flag: scratch for n flags.  Returns the elements with
 * d != 0, flagged or not. */
uint64_t lora_fast_merge_q_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
                                unsigned char *flag, size_t n, lora_flagq *q, size_t *nq);
/* lora_fast_unmerge_bf16 (flags too), its flagged lanes queued in q
 * with c = u, the pass's value (the member of m's run it decodes from). */
uint64_t lora_fast_unmerge_q_bf16(const unsigned char *src, unsigned char *dst, const double *sum,
                                  unsigned char *flag, size_t n, lora_flagq *q, size_t *nq);
/* The queued lanes' runs as rank words: the rank of c (W0, or the
 * unmerge's u) in its run, its members below c in value, | the run's
 * span (members - 1, at most 2^15 - 1) << 16; the receipt stores W0's
 * rank in lora_nbits_for(span) bits (lora_word_bits).  LORA_RANK_SLOW
 * where the full logic must decide.  rank may be q->df. */
#define LORA_RANK_SLOW UINT32_C(0xffffffff)
static inline unsigned lora_word_bits(uint32_t word)
{
    uint32_t span = word >> 16;
    return span ? 32u - (unsigned)__builtin_clz(span) : 0;
}
void lora_fast_ranks_bf16(const lora_flagq *q, size_t nl, const double *sum, uint32_t *rank);
/* mergefast_f16.c: the F16 merge pass, lora_fast_merge_bf16's contract
 * for F16 (flagged elements keep W0 in dst).  Only where
 * lora_fast_f16_available() (AVX-512): elsewhere it flags every element. */
int lora_fast_f16_available(void);
uint64_t lora_fast_merge_f16(const unsigned char *src, unsigned char *dst, const double *sum,
                             unsigned char *flag, size_t n, int record);
/* The same, the flagged elements' indices (< 2^32) in q (room for n +
 * 16) in element order instead of flags, their count in *nq. */
uint64_t lora_fast_merge_q_f16(const unsigned char *src, unsigned char *dst, const double *sum,
                               size_t n, int record, uint32_t *q, size_t *nq);
/* The F16 unmerge pass: lora_fast_unmerge_bf16's contract for F16
 * (flagged elements keep m in dst); flags everything where
 * lora_fast_f16_available() is 0. */
uint64_t lora_fast_unmerge_f16(const unsigned char *src, unsigned char *dst, const double *sum,
                               unsigned char *flag, size_t n);
/* The runs of a coded F16 unmerge's flagged elements (after
 * lora_fast_unmerge_f16) as flag codes 2 + (a | b << 1) around u =
 * round(m - d), stored in flag (lora_run_decode's codes of runs of up
 * to 3 members). */
void lora_fast_unruns_f16(const unsigned char *src, unsigned char *dst, const double *sum,
                          unsigned char *flag, size_t n);
/* W0 = c merged with d (m in *m) and its run where that needs no search
 * (lora_fast_run_bf16 for F16): a | b << 1, or -1. */
int lora_fast_run_f16(uint16_t c, double d, uint16_t *m);
/* lora_fast_run_f16 for the nl elements idx[] of src and sum (W0, d),
 * in ab[] and m[] (AVX-512: 8 at a time, the same results). */
void lora_fast_runs_f16(const unsigned char *src, const double *sum, const uint32_t *idx,
                        size_t nl, signed char *ab, uint16_t *m);

#endif

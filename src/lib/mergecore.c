/*
 * mergecore.c - the element-level merge and unmerge of one tensor, row
 * block by row block over threads, shared by the in-memory calls
 * (lora_tensor_merge / lora_tensor_unmerge, used by lora-eval) and the
 * streaming checkpoint merge (merge.c), so that both are one code path.
 *
 * Numerical contract (lora-receipt(5)):
 *   d     = Σ_t (w_t·s_t) · Σ_k B_t[i,k]·A_t[k,j]     canonical delta, t in order
 *   merge   m = round_out(W0 + d)       (reversible: the bracketing neighbour
 *                                        from which unmerge gives W0 back)
 *   unmerge u = round_base(m − d)       both in double, one rounding each
 * Elements with d == 0 or a non-finite base value are copied (converted
 * when the output dtype differs).  A correction records W0 wherever
 * unmerge(merge(W0)) != W0, so that unmerge plus corrections is exact.
 * A finite input whose result (merged, unmerged or converted) is not
 * finite in the output dtype fails the tensor naming the count and the
 * first element, unless the job allows it (then it is counted): never
 * an infinity in silence (PEFT's safe_merge refuses the same way).
 * Unmerge without a receipt or a reference cannot know W0; it counts
 * the elements that may differ: u = round(m − d) is certainly wrong
 * when merging it again does not give m, and possibly wrong when a
 * neighbour of u merges to m as well (round is monotonic, so the W0
 * that merge to m are a run of consecutive values: more than one
 * exactly when u and a neighbour both do).
 * Work buffers live in a lora_engine allocated once and reused for every
 * tensor: first touch of fresh memory is slow on the target machines.
 */
#include "internal.h"
#include "mergecore.h"
#include "fpbits.h"

#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>

void lora_fixes_free(lora_fixes *f)
{
    if (!f)
        return;
    free(f->index);
    free(f->step);
    free(f->bstart);
    free(f->bits);
    memset(f, 0, sizeof *f);
}

int lora_fixes_push(lora_fixes *f, uint64_t index, int64_t step)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 256;
        uint64_t *ni = realloc(f->index, cap * sizeof *ni);
        if (!ni)
            return -1;
        f->index = ni;
        int64_t *nb = realloc(f->step, cap * sizeof *nb);
        if (!nb)
            return -1;
        f->step = nb;
        f->cap = cap;
    }
    f->index[f->n] = index;
    f->step[f->n] = step;
    f->n++;
    return 0;
}

int lora_fp_kind(lora_dtype dt, int *kind, size_t *size)
{
    switch (dt) {
    case LORA_DT_F32: *kind = FP_F32; *size = 4; return 0;
    case LORA_DT_F16: *kind = FP_F16; *size = 2; return 0;
    case LORA_DT_BF16: *kind = FP_BF16; *size = 2; return 0;
    default: return -1;
    }
}

static inline __attribute__((always_inline)) uint32_t ld_elem(const unsigned char *p, size_t sz)
{
    if (sz == 2)
        return (uint32_t)p[0] | (uint32_t)p[1] << 8;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline __attribute__((always_inline)) void st_elem(unsigned char *p, size_t sz, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    if (sz == 4) {
        p[2] = (unsigned char)(v >> 16);
        p[3] = (unsigned char)(v >> 24);
    }
}

/* Decode n elements of a readable dtype to double (factors A and B). */
int lora_decode_any(lora_dtype dt, const void *src, double *dst, uint64_t n)
{
    const unsigned char *p = src;
    switch (dt) {
    case LORA_DT_F32:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = fp_f32_d(ld_elem(p + 4 * i, 4));
        return 0;
    case LORA_DT_F16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = fp_f16_d(ld_elem(p + 2 * i, 2));
        return 0;
    case LORA_DT_BF16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = fp_bf16_d(ld_elem(p + 2 * i, 2));
        return 0;
    case LORA_DT_F64:
        for (uint64_t i = 0; i < n; i++) {
            uint64_t lo = ld_elem(p + 8 * i, 4), hi = ld_elem(p + 8 * i + 4, 4);
            double v = fp_bitsd(lo | hi << 32);
            /* the canonical delta needs float-born factors: a product of two
             * doubles is not exact; round through float, as PEFT computes */
            dst[i] = (double)(float)v;
        }
        return 0;
    default:
        return -1;
    }
}

/* ---- engine ---------------------------------------------------------- */

struct lora_engine {
    int nthreads;
    size_t cap;                 /* elements per worker buffer */
    size_t tcap;                /* doubles per tmp buffer */
    double **sum, **tmp;        /* per worker */
    unsigned char **ibuf;       /* per worker: converted input when the output differs */
    lora_fixes *bfix;           /* per block */
    size_t nbfix;
    unsigned char (*bhash)[2][32]; /* per block: input and output chunk hashes */
    size_t nbhash;
    /* decoded factors per term, grown as needed */
    size_t nfac;
    double **fB, **fA;
    size_t *fBcap, *fAcap;
    double **fP;                /* fA's column panels, packed (lora_delta_pack) */
    size_t *fPcap;
};

int lora_engine_new(int nthreads, lora_engine **out, lora_error *err)
{
    *out = NULL;
    if (nthreads < 1)
        nthreads = 1;
    if (nthreads > 64)
        nthreads = 64;
    lora_engine *e = calloc(1, sizeof *e);
    if (!e)
        return lora_oom(err);
    e->nthreads = nthreads;
    e->sum = calloc((size_t)nthreads, sizeof *e->sum);
    e->tmp = calloc((size_t)nthreads, sizeof *e->tmp);
    e->ibuf = calloc((size_t)nthreads, sizeof *e->ibuf);
    if (!e->sum || !e->tmp || !e->ibuf) {
        lora_engine_free(e);
        return lora_oom(err);
    }
    *out = e;
    return LORA_OK;
}

void lora_engine_free(lora_engine *e)
{
    if (!e)
        return;
    for (int t = 0; t < e->nthreads; t++) {
        if (e->sum) free(e->sum[t]);
        if (e->tmp) free(e->tmp[t]);
        if (e->ibuf) free(e->ibuf[t]);
    }
    free(e->sum);
    free(e->tmp);
    free(e->ibuf);
    for (size_t i = 0; i < e->nbfix; i++)
        lora_fixes_free(&e->bfix[i]);
    free(e->bfix);
    free(e->bhash);
    for (size_t i = 0; i < e->nfac; i++) {
        free(e->fB[i]);
        free(e->fA[i]);
    }
    for (size_t i = 0; i < e->nfac; i++)
        free(e->fP[i]);
    free(e->fB);
    free(e->fA);
    free(e->fBcap);
    free(e->fAcap);
    free(e->fP);
    free(e->fPcap);
    free(e);
}

int lora_engine_threads(const lora_engine *e)
{
    return e->nthreads;
}

/* Rows per block: about 2^18 elements, so that a block's doubles stay in
 * the L2 cache and the A panel packing is amortised.  Also the chunking
 * of the tree hash (lora-receipt(5)), hence a function of cols only. */
uint64_t lora_block_rows(uint64_t cols)
{
    uint64_t r = cols ? (1u << 18) / cols : 1;
    return r ? r : 1;
}

/* Rows of a part of a block: the delta of about 2^16 elements (512 KB)
 * is still in the L2 cache when the merge reads it (a whole block's,
 * 2 MB, was not).  The block stays the unit of hashes, rank bits and
 * writes; parts only change the order of the work, not its results. */
static uint64_t part_rows(uint64_t cols)
{
    uint64_t r = cols ? (1u << 16) / cols : 1;
    return r ? r : 1;
}

static int grow(void **p, size_t *cap, size_t need, size_t elsz)
{
    if (*cap >= need)
        return 0;
    void *n = realloc(*p, need * elsz);
    if (!n)
        return -1;
    *p = n;
    *cap = need;
    return 0;
}

/* grow for the scratch of the delta kernel (the delta, A's packed
 * panels): 64-byte aligned, so that its AVX-512 loads and stores each
 * touch one cache line (malloc's large blocks start 16 bytes past a
 * page: every store of the delta straddled two lines).  The old
 * contents are not kept; on failure *p is NULL and *cap 0. */
static int grow_aligned(double **p, size_t *cap, size_t need)
{
    if (*cap >= need)
        return 0;
    void *n = NULL;
    free(*p);
    *p = NULL;
    *cap = 0;
    if (posix_memalign(&n, 64, need * sizeof(double)))
        return -1;
    *p = n;
    *cap = need;
    return 0;
}

static int engine_reserve(lora_engine *e, uint64_t cols, uint64_t nblocks, size_t nterms,
                          lora_error *err)
{
    uint64_t need = lora_block_rows(cols) * cols;
    /* tmp: the delta kernel's scratch (need), then a part's flags and
     * flagged-lane queue (flag_queue: 13 bytes an element, and slack) */
    uint64_t tneed = need + 2 * part_rows(cols) * cols + 64;
    if (need > e->cap || tneed > e->tcap) {
        /* never smaller than before: e->cap and e->tcap describe them all */
        if (need < e->cap)
            need = e->cap;
        if (tneed < e->tcap)
            tneed = e->tcap;
        for (int t = 0; t < e->nthreads; t++) {
            size_t scap = e->cap, mcap = e->tcap;
            int bad = grow_aligned(&e->sum[t], &scap, need) |
                      grow_aligned(&e->tmp[t], &mcap, tneed);
            unsigned char *b = realloc(e->ibuf[t], need * 4);
            if (b) e->ibuf[t] = b;
            if (bad || !b) {
                e->cap = e->tcap = 0; /* every worker's buffers are grown again next time */
                return lora_oom(err);
            }
        }
        e->cap = need;
        e->tcap = tneed;
    }
    if (nblocks > e->nbfix) {
        lora_fixes *n = realloc(e->bfix, nblocks * sizeof *n);
        if (!n)
            return lora_oom(err);
        memset(n + e->nbfix, 0, (nblocks - e->nbfix) * sizeof *n);
        e->bfix = n;
        e->nbfix = nblocks;
    }
    if (nblocks > e->nbhash) {
        void *n = realloc(e->bhash, nblocks * sizeof *e->bhash);
        if (!n)
            return lora_oom(err);
        e->bhash = n;
        e->nbhash = nblocks;
    }
    if (nterms > e->nfac) {
        double **b = realloc(e->fB, nterms * sizeof *b);
        if (b) e->fB = b;
        double **a = realloc(e->fA, nterms * sizeof *a);
        if (a) e->fA = a;
        size_t *bc = realloc(e->fBcap, nterms * sizeof *bc);
        if (bc) e->fBcap = bc;
        size_t *ac = realloc(e->fAcap, nterms * sizeof *ac);
        if (ac) e->fAcap = ac;
        double **p = realloc(e->fP, nterms * sizeof *p);
        if (p) e->fP = p;
        size_t *pc = realloc(e->fPcap, nterms * sizeof *pc);
        if (pc) e->fPcap = pc;
        if (!b || !a || !bc || !ac || !p || !pc)
            return lora_oom(err);
        for (size_t i = e->nfac; i < nterms; i++) {
            e->fB[i] = e->fA[i] = e->fP[i] = NULL;
            e->fBcap[i] = e->fAcap[i] = e->fPcap[i] = 0;
        }
        e->nfac = nterms;
    }
    return LORA_OK;
}

/* Decode term t's factors in the orientation of the base tensor: the
 * delta's rows are the tensor's rows.  Transposed (Conv1D, embeddings):
 * ΔWᵀ[p][q] = Σ_k A[k,p]·B[q,k], i.e. the canonical delta with Aᵀ in the
 * role of B and Bᵀ in the role of A — the same products in the same k
 * order, hence the same bytes as transposing ΔW. */
static int decode_factors(lora_engine *e, size_t t, const lora_module *m, lora_error *err)
{
    uint64_t r = m->r, in = m->in, out = m->out, nA, nB;
    if (!lora_mul_ok(r, in, &nA) || !lora_mul_ok(r, out, &nB))
        return lora_seterr(err, LORA_EINPUT, "%s: factor sizes overflow", m->name);
    if (m->A->numel != nA || m->B->numel != nB)
        return lora_seterr(err, LORA_EINPUT, "%s: lora_A/lora_B hold %llu/%llu values, expected %llu/%llu",
                           m->name, (unsigned long long)m->A->numel,
                           (unsigned long long)m->B->numel, (unsigned long long)nA,
                           (unsigned long long)nB);
    if (grow((void **)&e->fB[t], &e->fBcap[t], nB > nA ? nB : nA, sizeof(double)) ||
        grow((void **)&e->fA[t], &e->fAcap[t], nB > nA ? nB : nA, sizeof(double)))
        return lora_oom(err);
    double *fb = e->fB[t], *fa = e->fA[t];
    if (!m->transpose) {
        if (lora_decode_any(m->B->dtype, m->B->data, fb, nB) ||
            lora_decode_any(m->A->dtype, m->A->data, fa, nA))
            return lora_seterr(err, LORA_EINPUT, "%s: factors of dtype %s cannot be read",
                               m->name, lora_dtype_name(m->A->dtype));
        return LORA_OK;
    }
    /* fB = Aᵀ (in×r), fA = Bᵀ (r×out); decode into the other buffer then transpose */
    if (lora_decode_any(m->A->dtype, m->A->data, fa, nA))
        return lora_seterr(err, LORA_EINPUT, "%s: factors of dtype %s cannot be read", m->name,
                           lora_dtype_name(m->A->dtype));
    for (uint64_t k = 0; k < r; k++)
        for (uint64_t p = 0; p < in; p++)
            fb[p * r + k] = fa[k * in + p];
    if (lora_decode_any(m->B->dtype, m->B->data, fa, nB))
        return lora_seterr(err, LORA_EINPUT, "%s: factors of dtype %s cannot be read", m->name,
                           lora_dtype_name(m->B->dtype));
    /* transpose fa (out×r) in place through fb's spare room is not possible;
     * use sum buffer 0 as scratch when big enough, else a temporary */
    double *scratch = malloc(nB * sizeof *scratch);
    if (!scratch)
        return lora_oom(err);
    memcpy(scratch, fa, nB * sizeof *scratch);
    for (uint64_t q = 0; q < out; q++)
        for (uint64_t k = 0; k < r; k++)
            fa[k * out + q] = scratch[q * r + k];
    free(scratch);
    return LORA_OK;
}

/* ---- one tensor ------------------------------------------------------- */

struct tjob {
    lora_engine *e;
    const lora_tjob *spec;
    int ik, ok;
    size_t isz, osz;
    uint64_t rows, cols, br, nblocks;
    double *scale;              /* per term: w·s */
    const double **B, **A;
    const double **P;           /* per term: A's panels, packed */
    uint64_t *r;
    size_t nterms;
    atomic_ullong next;
    atomic_int failed;
    lora_error err;             /* first failure */
    pthread_mutex_t lock;
    /* unmerge: corrections to apply, and per-block start positions in them */
    size_t *fixstart;
    /* values not finite in the output dtype from finite inputs (under lock) */
    uint64_t nf, nf_first;
    double nf_in, nf_d;
};

/* The first non-finite result of a block: index, input value, delta. */
typedef struct nonfin {
    uint64_t n, first;
    double in, d;
} nonfin;

static inline __attribute__((always_inline)) void nf_note(nonfin *nf, uint64_t i, double in, double d)
{
    if (!nf->n++) {
        nf->first = i;
        nf->in = in;
        nf->d = d;
    }
}

static void tj_fail(struct tjob *j, int code, const char *msg)
{
    pthread_mutex_lock(&j->lock);
    if (!atomic_load(&j->failed)) {
        j->err.code = code;
        snprintf(j->err.msg, sizeof j->err.msg, "%s", msg);
        atomic_store(&j->failed, 1);
    }
    pthread_mutex_unlock(&j->lock);
}

/* d for rows [i0, i1) into sum (tmp as scratch) */
static void block_delta(struct tjob *j, uint64_t i0, uint64_t i1, double *sum, double *tmp)
{
    size_t n = (size_t)((i1 - i0) * j->cols);
    if (j->nterms == 0) {
        memset(sum, 0, n * sizeof *sum);
        return;
    }
    lora_delta_rows_packed(j->B[0], j->A[0], j->P[0], j->r[0], j->cols, j->scale[0], i0, i1,
                           sum);
    for (size_t t = 1; t < j->nterms; t++) {
        lora_delta_rows_packed(j->B[t], j->A[t], j->P[t], j->r[t], j->cols, j->scale[t], i0, i1,
                               tmp);
        for (size_t x = 0; x < n; x++)
            sum[x] += tmp[x];
    }
}

static inline __attribute__((always_inline)) uint32_t unmerge_elem(int mk, int bk, uint32_t m, double d)
{
    if (d == 0 || !fp_finite(mk, m))
        return mk == bk ? m : fp_round(bk, fp_to_d(mk, m));
    return fp_round(bk, fp_to_d(mk, m) - d);
}

/* ---- coded corrections (receipt version 3) ---------------------------
 * The base values that merge to m form a run of consecutive keys S (the
 * merge is monotonic); unmerge knows m and d, hence S.  Where S has one
 * member it is W0; where it has several, the receipt holds W0's rank in
 * S in ceil(log2 |S|) bits.  Merge and unmerge decide "how many members"
 * with the same functions below, so they agree on which elements carry
 * bits; anything else (reversible rounding's other neighbour, values not
 * finite) is an exception stored as before, relative to the decoded value. */

/* What merging x (a candidate W0, dtype bk) gives in the merged dtype
 * mk: the merge's rule, copies for d == 0. */
static inline __attribute__((always_inline)) uint32_t remerge(int mk, int bk, uint32_t x, double d)
{
    if (d == 0)
        return mk == bk ? x : fp_round(mk, fp_to_d(bk, x));
    return fp_round(mk, fp_to_d(bk, x) + d);
}

/* Exponent field, mantissa width and bias of a kind. */
static inline __attribute__((always_inline)) void fp_layout(int k, int *mb, int *bias)
{
    *mb = k == FP_F32 ? 23 : k == FP_F16 ? 10 : 7;
    *bias = k == FP_F32 ? 127 : k == FP_F16 ? 15 : 127;
}

/* Cheap proof that x is the only base value merging to m (same dtype,
 * s = x + d as the merge computed it, m = round(s) finite): x and m are
 * normal, x's binade is m's or a higher one and x's mantissa is not 0
 * (so both neighbours of x are at least an ulp of m away: ulp(x) >=
 * ulp(m)), and s is less than half an ulp of m from m by a margin
 * (2^-20 ulp) far above the double rounding of x±ulp + d.  Then
 * x±ulp(x) + d lies more than half an ulp of m from m and rounds
 * elsewhere.  False means "look" (slow path), never "ambiguous". */
static inline __attribute__((always_inline)) int single_fast(int k, uint32_t x, uint32_t m, double s)
{
    int mb, bias;
    fp_layout(k, &mb, &bias);
    uint32_t sh = k == FP_F32 ? 31 : 15;
    uint32_t mmask = (1u << mb) - 1, emask = (1u << (sh - mb)) - 1;
    uint32_t ex = (x >> mb) & emask, em = (m >> mb) & emask;
    if (ex < em || em == 0 || ex == emask || (x & mmask) == 0)
        return 0;
    /* half an ulp of m, less 2^-20 ulp */
    double half = fp_bitsd((uint64_t)((int)em - bias - mb - 1 + 1023) << 52);
    double lim = half - half * 0x1p-19;
    return fabs(s - fp_to_d(k, m)) < lim;
}

/* Keys of the finite values of a kind: [-kmax - 1, kmax]. */
static inline __attribute__((always_inline)) int64_t fp_kmax(int k)
{
    return k == FP_F32 ? 0x7f7fffff : k == FP_F16 ? 0x7bff : 0x7f7f;
}

/* Order of merged values: <0, 0, >0 as remerge(key) is below, at, above m. */
static inline __attribute__((always_inline)) int cmp_at(int mk, int bk, int64_t key, uint32_t m,
                                                       double d)
{
    uint32_t r = remerge(mk, bk, fp_unkey(bk, key), d);
    if (!fp_finite(mk, r) && (r & (mk == FP_F32 ? 0x007fffffu : mk == FP_F16 ? 0x3ffu : 0x7fu)))
        return 1; /* NaN from a finite value cannot happen; be total anyway */
    int64_t a = fp_key(mk, r), b = fp_key(mk, m);
    return a < b ? -1 : a > b;
}

/* First key in (from, lim] (dir +1) or [lim, from) (dir -1), walking
 * from `from`, where cmp_at changes from `was` to something else:
 * galloping then bisection.  Returns lim + dir when none. */
static inline __attribute__((always_inline)) int64_t gallop(int mk, int bk, int64_t from, int dir,
                                                           int64_t lim, int was, uint32_t m,
                                                           double d)
{
    int64_t good = from, step = 1; /* good: last key known to be `was` */
    int64_t bad;
    for (;;) {
        int64_t k = good + dir * step;
        if ((dir > 0 && k > lim) || (dir < 0 && k < lim)) {
            k = lim;
            if (k == good)
                return lim + dir;
            if (cmp_at(mk, bk, k, m, d) == was)
                return lim + dir;
            bad = k;
            break;
        }
        if (cmp_at(mk, bk, k, m, d) != was) {
            bad = k;
            break;
        }
        good = k;
        step *= 2;
    }
    while ((bad - good) * dir > 1) {
        int64_t mid = good + (bad - good) / 2;
        if (cmp_at(mk, bk, mid, m, d) == was)
            good = mid;
        else
            bad = mid;
    }
    return bad;
}

/* The key of the finite base value (kind bk) nearest to v on the side
 * dir (+1: the first at or above v, -1: the last at or below); 0 when
 * v is out of the finite range. */
static inline __attribute__((always_inline)) int key_toward(int bk, double v, int dir,
                                                           int64_t *key)
{
    uint32_t r = fp_round(bk, v);
    if (!fp_finite(bk, r))
        return 0;
    int64_t k = fp_key(bk, r);
    double rv = fp_to_d(bk, r);
    *key = k + (dir > 0 ? rv < v : -(rv > v));
    return *key >= -fp_kmax(bk) - 1 && *key <= fp_kmax(bk);
}

/* A long run's ends without a search: the base values merging to m lie
 * where x + d is inside m's rounding interval, between the midpoints to
 * its neighbours; in double those ends are only near (d's and the
 * midpoints' rounding, ties), so a candidate [*lo, *hi] is kept only when
 * the four keys around its ends say so exactly (merging is monotonic).
 * 0: no verified ends, the caller searches.  Six roundings instead of
 * about 4 log2(run) (runs of 2^15 members: tiny W0 under a large
 * update, 3.6 % of the ambiguous elements of a strong fine-tune). */
static inline __attribute__((always_inline)) int run_ends(int mk, int bk, uint32_t m, double d,
                                                         int64_t *lo, int64_t *hi)
{
    int64_t km = fp_key(mk, m), kmax = fp_kmax(bk), kmin = -kmax - 1;
    if (km <= -fp_kmax(mk) - 1 || km >= fp_kmax(mk) || !isfinite(d))
        return 0;
    double mv = fp_to_d(mk, m);
    double below = (fp_to_d(mk, fp_unkey(mk, km - 1)) + mv) / 2; /* exact: few bits */
    double above = (fp_to_d(mk, fp_unkey(mk, km + 1)) + mv) / 2;
    int64_t a, b;
    if (!key_toward(bk, below - d, 1, &a) || !key_toward(bk, above - d, -1, &b) || a > b)
        return 0;
    if (cmp_at(mk, bk, a, m, d) != 0 || cmp_at(mk, bk, b, m, d) != 0 ||
        (a > kmin && cmp_at(mk, bk, a - 1, m, d) == 0) ||
        (b < kmax && cmp_at(mk, bk, b + 1, m, d) == 0))
        return 0;
    *lo = a;
    *hi = b;
    return 1;
}

/* S = [*lo, *hi] (keys of bk), the finite base values merging to m
 * (finite), searched from u (unmerge's value).  0 when S is empty. */
static inline __attribute__((always_inline)) int amb_set(int mk, int bk, uint32_t m, double d,
                                                        uint32_t u, int64_t *lo, int64_t *hi)
{
    if (run_ends(mk, bk, m, d, lo, hi))
        return 1;
    int64_t kmax = fp_kmax(bk), kmin = -kmax - 1;
    int64_t ku = fp_finite(bk, u) ? fp_key(bk, u) : (fp_key(bk, u) < 0 ? kmin : kmax);
    int c = cmp_at(mk, bk, ku, m, d);
    if (c < 0) { /* S lies above */
        int64_t k = gallop(mk, bk, ku, 1, kmax, -1, m, d);
        if (k > kmax || cmp_at(mk, bk, k, m, d) != 0)
            return 0;
        ku = k;
    } else if (c > 0) {
        int64_t k = gallop(mk, bk, ku, -1, kmin, 1, m, d);
        if (k < kmin || cmp_at(mk, bk, k, m, d) != 0)
            return 0;
        ku = k;
    }
    *lo = gallop(mk, bk, ku, -1, kmin, 0, m, d) + 1;
    *hi = gallop(mk, bk, ku, 1, kmax, 0, m, d) - 1;
    return 1;
}

/* Room in F's bit buffer for NB more bits; -1 when out of memory. */
static int bits_reserve(lora_fixes *f, uint64_t nb)
{
    if (f->nbits + nb <= f->bitcap * 8)
        return 0;
    uint64_t cap = f->bitcap ? f->bitcap * 2 : 4096;
    while (cap * 8 < f->nbits + nb)
        cap *= 2;
    unsigned char *b = realloc(f->bits, (size_t)cap);
    if (!b)
        return -1;
    memset(b + f->bitcap, 0, (size_t)(cap - f->bitcap));
    f->bits = b;
    f->bitcap = cap;
    return 0;
}

int lora_bits_put(lora_fixes *f, uint64_t v, int nb)
{
    if (bits_reserve(f, (uint64_t)nb))
        return -1;
    /* set and clear: the buffer is reused from tensor to tensor */
    for (int i = 0; i < nb; i++, f->nbits++) {
        unsigned char *c = &f->bits[f->nbits >> 3], bit = (unsigned char)(1u << (f->nbits & 7));
        *c = (unsigned char)((v >> i) & 1 ? *c | bit : *c & ~bit);
    }
    return 0;
}

/* Bits of one block being decoded. */
typedef struct bitrd {
    const unsigned char *bits;
    uint64_t at, end;
} bitrd;

/* The value unmerge decodes for m (before exceptions): where the merge
 * has ambiguous results, read (rd) or write (wr, W0 = w) the rank.
 * Returns -1 for bits that run out or a rank beyond S (rd), -2 for
 * memory (wr). */
static inline __attribute__((always_inline)) int coded_elem(int mk, int bk, uint32_t m, double d,
                                                           uint32_t w, lora_fixes *wr, bitrd *rd,
                                                           uint32_t *out)
{
    uint32_t u = unmerge_elem(mk, bk, m, d);
    *out = u;
    if (!fp_finite(mk, m) || (d == 0 && mk == bk))
        return 0;
    if (mk == bk && remerge(mk, bk, u, d) == m && single_fast(mk, u, m, fp_to_d(bk, u) + d))
        return 0;
    int64_t lo, hi;
    if (!amb_set(mk, bk, m, d, u, &lo, &hi))
        return 0;
    if (lo == hi) {
        *out = fp_unkey(bk, lo);
        return 0;
    }
    uint64_t span = (uint64_t)(hi - lo);
    int nb = lora_nbits_for(span);
    uint64_t r = 0;
    if (wr) {
        int64_t kw = fp_key(bk, w);
        if (fp_finite(bk, w) && kw >= lo && kw <= hi)
            r = (uint64_t)(kw - lo);
        if (lora_bits_put(wr, r, nb))
            return -2;
        wr->nambig++;
    } else {
        if (rd->end - rd->at < (uint64_t)nb)
            return -1;
        for (int i = 0; i < nb; i++, rd->at++)
            r |= (uint64_t)((rd->bits[rd->at >> 3] >> (rd->at & 7)) & 1) << i;
        if (r > span)
            return -1;
    }
    *out = fp_unkey(bk, lo + (int64_t)r);
    return 0;
}

/* Merge side of a coded element: write its rank when ambiguous, and an
 * exception when unmerge would still decode something else than w. */
static inline __attribute__((always_inline)) int
coded_fix_k(int mk, int bk, uint32_t m, double d, uint32_t w, uint64_t index, lora_fixes *fx,
            lora_merge_stats *st)
{
    uint32_t got;
    /* the usual case: W0 merges to m (nearest), so S is the run around W0 */
    if (mk == bk && d != 0 && fp_finite(mk, m) && remerge(mk, bk, w, d) == m) {
        int64_t kw = fp_key(bk, w), kmax = fp_kmax(bk), lo, hi;
        if (!run_ends(mk, bk, m, d, &lo, &hi)) {
            lo = gallop(mk, bk, kw, -1, -kmax - 1, 0, m, d) + 1;
            hi = gallop(mk, bk, kw, 1, kmax, 0, m, d) - 1;
        }
        if (lo == hi)
            return 0;
        if (lora_bits_put(fx, (uint64_t)(kw - lo), lora_nbits_for((uint64_t)(hi - lo))))
            return -2;
        fx->nambig++;
        return 0;
    }
    if (coded_elem(mk, bk, m, d, w, fx, NULL, &got))
        return -2;
    if (got != w) {
        if (lora_fixes_push(fx, index, fp_key(bk, w) - fp_key(bk, got)))
            return -2;
        st->fixes++;
    }
    return 0;
}

/* coded_fix_k with constant kinds for the common dtypes */
static __attribute__((noinline)) int coded_fix(int mk, int bk, uint32_t m, double d, uint32_t w,
                                               uint64_t index, lora_fixes *fx, lora_merge_stats *st)
{
    if (mk == FP_BF16 && bk == FP_BF16)
        return coded_fix_k(FP_BF16, FP_BF16, m, d, w, index, fx, st);
    if (mk == FP_F16 && bk == FP_F16)
        return coded_fix_k(FP_F16, FP_F16, m, d, w, index, fx, st);
    if (mk == FP_F32 && bk == FP_F32)
        return coded_fix_k(FP_F32, FP_F32, m, d, w, index, fx, st);
    return coded_fix_k(mk, bk, m, d, w, index, fx, st);
}

/* The merge of n elements.  Returns 0, -1 for a non-finite delta (its
 * element in *bad), -2 when a correction cannot be stored.  Results that
 * are not finite in the output dtype from a finite W0 go to *nf. */
static inline __attribute__((always_inline)) int
merge_span(int ik, int ok, size_t isz, size_t osz, int record, int rev, int coded,
           const unsigned char *src, unsigned char *dst, const double *sum, size_t n,
           uint64_t first, lora_fixes *fx, lora_merge_stats *st, size_t *bad, nonfin *nf)
{
    int r;
    for (size_t x = 0; x < n; x++) {
        uint32_t w = ld_elem(src + x * isz, isz);
        double d = sum[x];
        uint32_t m;
        if (d == 0 || !fp_finite(ik, w)) {
            if (ik == ok) {
                m = w;
            } else {
                m = fp_round(ok, fp_to_d(ik, w));
                if (!fp_finite(ok, m) && fp_finite(ik, w))
                    nf_note(nf, first + x, fp_to_d(ik, w), 0);
                if (record && coded && (r = coded_fix(ok, ik, m, d, w, first + x, fx, st)))
                    return r;
            }
        } else {
            if (!isfinite(d)) {
                *bad = x;
                return -1;
            }
            st->changed++;
            double sx = fp_to_d(ik, w) + d;
            m = fp_round(ok, sx);
            if (record && coded && !rev) {
                /* most elements: the cheap proof that nothing is ambiguous */
                if (!(ik == ok && fp_finite(ok, m) && single_fast(ok, w, m, sx)) &&
                    (r = coded_fix(ok, ik, m, d, w, first + x, fx, st)))
                    return r;
            } else if (record || rev) {
                uint32_t u = unmerge_elem(ok, ik, m, d);
                if (u != w && rev) {
                    double mv = fp_to_d(ok, m);
                    uint32_t o = fp_unkey(ok, fp_key(ok, m) + (sx > mv ? 1 : -1));
                    uint32_t uo;
                    if (fp_finite(ok, o) && (uo = unmerge_elem(ok, ik, o, d)) == w) {
                        m = o;
                        u = uo;
                        st->other++;
                    }
                }
                if (record && coded) {
                    if ((r = coded_fix(ok, ik, m, d, w, first + x, fx, st)))
                        return r;
                } else if (record && u != w) {
                    if (lora_fixes_push(fx, first + x, fp_key(ik, w) - fp_key(ik, u)))
                        return -2;
                    st->fixes++;
                }
            }
            if (!fp_finite(ok, m))
                nf_note(nf, first + x, fp_to_d(ik, w), d);
        }
        st_elem(dst + x * osz, osz, m);
    }
    return 0;
}

static __attribute__((noinline)) int
merge_span_any(int ik, int ok, size_t isz, size_t osz, int record, int rev, int coded,
               const unsigned char *src, unsigned char *dst, const double *sum, size_t n,
               uint64_t first, lora_fixes *fx, lora_merge_stats *st, size_t *bad, nonfin *nf)
{
    return merge_span(ik, ok, isz, osz, record, rev, coded, src, dst, sum, n, first, fx, st, bad, nf);
}


/* Unmerge with neither corrections nor a reference: u = unmerge(m) is
 * certainly not W0 when merging it again does not give m (inexact, a
 * lower bound), and may not be W0 when a neighbour of u merges to m too
 * (may_differ, an upper bound: elsewhere u is the only W0 possible).  A
 * non-finite m with d != 0 or a dtype change may hide a finite W0. */
static void count_unknown(int mk, int bk, uint32_t m, uint32_t u, double d, lora_merge_stats *st)
{
    if (!fp_finite(mk, m)) {
        if (d != 0 || mk != bk)
            st->may_differ++;
        return;
    }
    if (!fp_finite(bk, u)) {
        st->inexact++;
        st->may_differ++;
        return;
    }
    if (d == 0 && mk == bk)
        return; /* copied: u is m */
    if (remerge(mk, bk, u, d) != m) {
        st->inexact++;
        st->may_differ++;
        return;
    }
    int64_t k = fp_key(bk, u);
    uint32_t lo = fp_unkey(bk, k - 1), hi = fp_unkey(bk, k + 1);
    if ((fp_finite(bk, lo) && remerge(mk, bk, lo, d) == m) ||
        (fp_finite(bk, hi) && remerge(mk, bk, hi, d) == m))
        st->may_differ++;
}

static void *tj_worker(void *arg);

/* Appending rank bits to a lora_fixes in a register: the bits of the
 * buffer's last, partial byte, then whole bytes stored as they fill, in
 * the order lora_bits_put lays them (LSB first).  The caller reserves
 * the room first; bw_end gives the buffer back (lora_bits_put may then
 * append more, and bw_start takes it again). */
typedef struct bitw {
    uint64_t acc;      /* bits not yet stored, from bit 0 of byte at */
    unsigned nacc;
    uint64_t at;       /* byte index */
    uint64_t nbits;    /* bits in the buffer, these included */
} bitw;

static inline void bw_start(bitw *w, const lora_fixes *f)
{
    w->at = f->nbits >> 3;
    w->nacc = (unsigned)(f->nbits & 7);
    w->acc = w->nacc ? f->bits[w->at] & ((1u << w->nacc) - 1) : 0;
    w->nbits = f->nbits;
}

/* V's low NB bits (NB <= 32, V < 2^NB); no branch on the bits */
static inline void bw_put(bitw *w, unsigned char *bits, uint64_t v, unsigned nb)
{
    w->acc |= v << w->nacc;
    w->nacc += nb;
    w->nbits += nb;
    if (w->nacc >= 32) {
        uint32_t lo = (uint32_t)w->acc;
        memcpy(bits + w->at, &lo, 4);
        w->at += 4;
        w->acc >>= 32;
        w->nacc -= 32;
    }
}

static inline void bw_end(bitw *w, lora_fixes *f)
{
    for (unsigned k = 0; k < w->nacc; k += 8)
        f->bits[w->at + k / 8] = (unsigned char)(w->acc >> k);
    f->nbits = w->nbits;
}

/* lora_flag_masks of a part's flags, into the scratch right after them
 * (flags are the engine's tmp buffer, a block's worth of doubles: far
 * more than a part's bytes and masks). */
static uint64_t *flag_masks(unsigned char *flag, size_t n)
{
    uint64_t *masks = (uint64_t *)(void *)(flag + ((n + 63) & ~(size_t)63));
    lora_flag_masks(flag, n, masks);
    return masks;
}

/* One flagged element of merge_bf16_fast without the receipt (flag 1):
 * the full element logic.  0, or merge_span's error (*bad the element). */
static inline __attribute__((always_inline)) int
flagged_elem(const unsigned char *src, unsigned char *dst, const double *sum, size_t x,
             uint64_t first, lora_merge_stats *st, size_t *bad, nonfin *nf)
{
    int r = merge_span(FP_BF16, FP_BF16, 2, 2, 0, 0, 1, src + 2 * x, dst + 2 * x, sum + x, 1,
                       first + x, NULL, st, bad, nf);
    if (r)
        *bad += x;
    return r;
}

/* The flagged-lane queue of a part (lora_flagq), in the scratch after
 * its n flags: three arrays of n + 16 entries rounded up to 16, 64-byte
 * aligned (engine_reserve's room: 13 n bytes and a little). */
static lora_flagq flag_queue(unsigned char *flag, size_t n)
{
    size_t cap = ((n + 15) & ~(size_t)15) + 16;
    uint32_t *at = (uint32_t *)(void *)(flag + ((n + 63) & ~(size_t)63));
    lora_flagq q = {at, at + cap, at + 2 * cap};
    return q;
}

/* The merge's queued lanes in element order: the rank words' bits
 * through a bitw (nearly all), the full logic (merge_span, which appends
 * its own bits or correction to fx) for LORA_RANK_SLOW.  The pass counted
 * every d != 0 as changed: a rank word's lane is (d != 0), merge_span
 * counts its own.  0, or merge_span's error (*bad the element). */
static int queued_ranks(const unsigned char *src, unsigned char *dst, const double *sum,
                        const lora_flagq *q, size_t nl, uint64_t first, lora_fixes *fx,
                        lora_merge_stats *st, size_t *bad, nonfin *nf)
{
    uint64_t namb = 0;
    bitw w;
    /* at most 15 bits a lane (rank words) */
    if (bits_reserve(fx, 16 * (uint64_t)nl + 64))
        return -2;
    bw_start(&w, fx);
    for (size_t i = 0; i < nl; i++) {
        uint32_t rk = q->df[i];
        if (__builtin_expect(rk != LORA_RANK_SLOW, 1)) {
            bw_put(&w, fx->bits, rk & 0xffffu, lora_word_bits(rk));
            namb += rk > 0xffffu;
            continue;
        }
        size_t x = q->idx[i];
        st->changed -= sum[x] != 0;
        bw_end(&w, fx);
        int r = merge_span(FP_BF16, FP_BF16, 2, 2, 1, 0, 1, src + 2 * x, dst + 2 * x, sum + x, 1,
                           first + x, fx, st, bad, nf);
        if (r) {
            *bad += x;
            return r;
        }
        if (bits_reserve(fx, 16 * (uint64_t)(nl - i) + 64))
            return -2;
        bw_start(&w, fx);
    }
    bw_end(&w, fx);
    fx->nambig += namb;
    return 0;
}

/* BF16 merge: the branch-free pass (mergefast.c), then the full element
 * logic (merge_span) on the elements it flagged.  With the receipt, the
 * pass queues the flagged elements (nearly all of them runs the fast
 * passes find without a search) and their rank words say the bits to
 * append: the rank is the run's members below W0 (for a negative W0,
 * those of larger magnitude).  Without it, the flagged elements come
 * from masks of the flags. */
static int merge_bf16_fast(const unsigned char *src, unsigned char *dst, const double *sum,
                           unsigned char *flag, size_t n, uint64_t first, int record,
                           lora_fixes *fx, lora_merge_stats *st, size_t *bad, nonfin *nf)
{
    if (record) {
        lora_flagq q = flag_queue(flag, n);
        size_t nl;
        st->changed += lora_fast_merge_q_bf16(src, dst, sum, flag, n, &q, &nl);
        lora_fast_ranks_bf16(&q, nl, sum, q.df);
        return queued_ranks(src, dst, sum, &q, nl, first, fx, st, bad, nf);
    }
    st->changed += lora_fast_merge_bf16(src, dst, sum, flag, n, 0);
    /* the flagged elements, 64 at a time from a mask: a branch per
     * element found, not per 8 bytes scanned */
    uint64_t *masks = flag_masks(flag, n);
    int r = 0;
    for (size_t g = 0; g < n && !r; g += 64)
        for (uint64_t mk = masks[g / 64]; mk && !r; mk &= mk - 1)
            r = flagged_elem(src, dst, sum, g + (size_t)__builtin_ctzll(mk), first, st, bad, nf);
    return r;
}

/* merge_f16_fast's flagged elements idx[0 .. k), in element order: the
 * runs' rank bits through the bitw, merge_span for the others. */
static int f16_flagged(const unsigned char *src, unsigned char *dst, const double *sum, size_t n,
                       uint64_t first, int record, const uint32_t *idx, size_t k,
                       const signed char *ab, const uint16_t *mv, lora_fixes *fx,
                       lora_merge_stats *st, size_t *bad, nonfin *nf, bitw *w, uint64_t *namb)
{
    for (size_t i = 0; i < k; i++) {
        size_t x = idx[i];
        if (record && ab[i] >= 0) { /* what coded_fix_k stores for it */
            unsigned a = (unsigned)ab[i] & 1, b = (unsigned)ab[i] >> 1;
            bw_put(w, fx->bits, src[2 * x + 1] >> 7 ? b : a,
                   a + b ? (unsigned)lora_nbits_for(a + b) : 0);
            *namb += a + b != 0;
            st->changed++;
            st_elem(dst + 2 * x, 2, mv[i]);
            continue;
        }
        if (record)
            bw_end(w, fx);
        int r = merge_span(FP_F16, FP_F16, 2, 2, record, 0, record, src + 2 * x, dst + 2 * x,
                           sum + x, 1, first + x, fx, st, bad, nf);
        if (r) {
            *bad += x;
            return r;
        }
        if (record) {
            if (bits_reserve(fx, 2 * (uint64_t)(n - x) + 64))
                return -2;
            bw_start(w, fx);
        }
    }
    return 0;
}

/* F16 merge: the branch-free pass (mergefast_f16.c), then the flagged
 * elements in element order, so that their rank bits go to fx in the
 * order coded_fix appends them in the scalar loop (the receipt is the
 * same), as the pass queues them.  With the receipt, runs of up to 3
 * members are found from the neighbours (lora_fast_runs_f16, 8 at a
 * time) and their rank bits appended through a bitw; the
 * others go through merge_span (its search).  The pass leaves W0 in a
 * flagged element's dst, so an in-place merge reads it back. */
static int merge_f16_fast(const unsigned char *src, unsigned char *dst, const double *sum,
                          unsigned char *flag, size_t n, uint64_t first, int record,
                          lora_fixes *fx, lora_merge_stats *st, size_t *bad, nonfin *nf)
{
    /* the queue in the flags' scratch (room for n + 16 indices: the
     * scratch holds a block's doubles and two parts' more) */
    uint32_t *q = (uint32_t *)(void *)flag;
    size_t nq;
    st->changed += lora_fast_merge_q_f16(src, dst, sum, n, record, q, &nq);
    /* at most 2 bits per element from the runs found (3 members) */
    if (record && bits_reserve(fx, 2 * (uint64_t)n + 64))
        return -2;
    bitw w = {0};
    if (record)
        bw_start(&w, fx);
    uint64_t namb = 0;
    enum { NB = 512 };
    signed char ab[NB];
    uint16_t mv[NB];
    for (size_t i = 0; i < nq; i += NB) {
        size_t k = nq - i < NB ? nq - i : NB;
        if (record)
            lora_fast_runs_f16(src, sum, q + i, k, ab, mv);
        int r = f16_flagged(src, dst, sum, n, first, record, q + i, k, ab, mv, fx, st, bad, nf,
                            &w, &namb);
        if (r)
            return r;
    }
    if (record)
        bw_end(&w, fx);
    fx->nambig += namb;
    return 0;
}

struct wargs {
    struct tjob *j;
    int t;
};

/* One block of rows of a tensor job, as run_block's steps see it. */
struct block {
    uint64_t b, i0, i1, first; /* block index, rows [i0, i1), first element */
    size_t n;                  /* elements */
    const double *sum;         /* the delta of each element */
    const unsigned char *src;
    unsigned char *dst;
    unsigned char *flag;       /* scratch for the fast passes' flags */
    lora_merge_stats st;
    nonfin nf;
    size_t fi;                 /* unmerge: next correction */
    bitrd rd;                  /* unmerge: the block's rank bits */
};

/* tj_fail(LORA_EINPUT) with the tensor's name before the message. */
static void block_fail(struct tjob *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void block_fail(struct tjob *j, const char *fmt, ...)
{
    char what[160], msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "%s: %s", j->spec->name, what);
    tj_fail(j, LORA_EINPUT, msg);
}

/* Merge: the block's W0 + d rounded into dst, corrections recorded in
 * the block's own list (gathered in order by lora_engine_run).  0, or -1
 * after tj_fail. */
static int merge_block(struct tjob *j, struct block *k)
{
    const lora_tjob *s = j->spec;
    lora_fixes *fx = &j->e->bfix[k->b]; /* emptied by run_block */
    int ik = j->ik, ok = j->ok;
    int record = s->record_fixes;
    int coded = record && s->out_fixes && s->out_fixes->coded;
    int rev = s->mode == LORA_ROUND_REVERSIBLE;
    size_t bad = 0, n = k->n;
    uint64_t first = k->first;
    const double *sum = k->sum;
    int r;
    /* constant kinds let the compiler fold every dtype branch */
    if (ik == FP_BF16 && ok == FP_BF16 && !rev && (!record || coded))
        r = merge_bf16_fast(k->src, k->dst, sum, k->flag, n, first, record, fx, &k->st, &bad,
                            &k->nf);
    else if (ik == FP_BF16 && ok == FP_BF16)
        r = merge_span(FP_BF16, FP_BF16, 2, 2, record, rev, coded, k->src, k->dst, sum, n, first,
                       fx, &k->st, &bad, &k->nf);
    else if (ik == FP_F16 && ok == FP_F16 && !rev && (!record || coded) &&
             lora_fast_f16_available())
        r = merge_f16_fast(k->src, k->dst, sum, k->flag, n, first, record, fx, &k->st, &bad,
                           &k->nf);
    else if (ik == FP_F16 && ok == FP_F16)
        r = merge_span(FP_F16, FP_F16, 2, 2, record, rev, coded, k->src, k->dst, sum, n, first,
                       fx, &k->st, &bad, &k->nf);
    else if (ik == FP_F32 && ok == FP_F32)
        r = merge_span(FP_F32, FP_F32, 4, 4, record, rev, coded, k->src, k->dst, sum, n, first,
                       fx, &k->st, &bad, &k->nf);
    else
        r = merge_span_any(ik, ok, j->isz, j->osz, record, rev, coded, k->src, k->dst, sum, n,
                           first, fx, &k->st, &bad, &k->nf);
    if (r == -1) {
        block_fail(j, "the adapter's delta is not finite at element %llu",
                   (unsigned long long)(first + bad));
        return -1;
    }
    if (r == -2) {
        tj_fail(j, LORA_EIO, "out of memory");
        return -1;
    }
    return 0;
}

/* Unmerge of element x of the block: W0 from m - d, by the receipt's
 * bits when coded, then the correction at *fi when it is this
 * element's.  0, or -1 after tj_fail. */
static inline __attribute__((always_inline)) int
unmerge_one(struct tjob *j, struct block *k, size_t x, const lora_fixes *fx,
            size_t *fi, size_t fe, int coded, bitrd *rd, int fast)
{
    int ik = j->ik, ok = j->ok;
    uint64_t first = k->first;
    uint32_t m = ld_elem(k->src + x * j->isz, j->isz);
    double d = k->sum[x];
    if (d != 0 && fp_finite(ik, m) && (!fast || k->flag[x])) {
        if (!isfinite(d)) {
            block_fail(j, "the adapter's delta is not finite at element %llu",
                       (unsigned long long)(first + x));
            return -1;
        }
        k->st.changed++;
    }
    uint32_t u;
    if (!coded) {
        u = unmerge_elem(ik, ok, m, d);
    } else if (coded_elem(ik, ok, m, d, 0, NULL, rd, &u)) {
        block_fail(j, "the receipt's bits do not match the merged tensor and adapter "
                   "(element %llu)", (unsigned long long)(first + x));
        return -1;
    }
    if (*fi < fe && fx->index[*fi] == first + x) {
        int64_t key = fp_key(ok, u), step = fx->step[(*fi)++];
        int64_t lim = ok == FP_F32 ? INT64_C(0x80000000) : INT64_C(0x8000);
        if (step < -2 * lim || step > 2 * lim || key + step < -lim || key + step >= lim) {
            block_fail(j, "correction at element %llu is out of range",
                       (unsigned long long)(first + x));
            return -1;
        }
        u = fp_unkey(ok, key + step);
        k->st.fixes++;
    }
    st_elem(k->dst + x * j->osz, j->osz, u);
    if (!fp_finite(ok, u) && fp_finite(ik, m))
        nf_note(&k->nf, first + x, fp_to_d(ik, m), -d);
    if (!j->spec->ref && !fx)
        count_unknown(ik, ok, m, u, d, &k->st);
    if (j->spec->ref) {
        const unsigned char *ref = (const unsigned char *)j->spec->ref + first * j->osz;
        uint32_t want = ld_elem(ref + x * j->osz, j->osz);
        if (want != u) {
            k->st.inexact++;
            uint64_t du = fp_finite(ok, want) && fp_finite(ok, u) ? fp_ulps(ok, want, u)
                                                                  : UINT64_MAX;
            if (du > k->st.max_ulps)
                k->st.max_ulps = du;
        }
    }
    return 0;
}

/* A queued element of a coded BF16 unmerge whose run was found (rank
 * word, lora_fast_ranks_bf16, of u, the pass's value): W0 is the member
 * of the rank the receipt's bits give.  What coded_elem decodes, without
 * its search; rd is the caller's local copy, so that the loop keeps it
 * in registers.  0, or -1 when the bits run out or name no member. */
static inline __attribute__((always_inline)) int rank_member(bitrd *rd, uint32_t word, uint16_t u,
                                                             uint16_t *w0)
{
    unsigned nb = lora_word_bits(word), below = word & 0xffffu, span = word >> 16;
    if (rd->end - rd->at < (uint64_t)nb)
        return -1;
    /* the nb (<= 15) bits at rd->at, without a branch on nb: the three
     * bytes they can span, read as one word where four bytes are inside
     * the block's bits, else each only inside them (with nb = 0, at may
     * be the end of the buffer) */
    uint64_t byte = rd->at >> 3, lim = (rd->end + 7) >> 3;
    uint32_t v = 0;
    const unsigned char *b = rd->bits + byte;
    if (__builtin_expect(byte + 4 <= lim, 1))
        v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    else
        for (unsigned i = 0; i < 3; i++)
            v |= byte + i < lim ? (uint32_t)b[i] << (8 * i) : 0;
    uint32_t r = (v >> (rd->at & 7)) & ((1u << nb) - 1);
    rd->at += (uint64_t)nb;
    if (r > span) /* ranks 0 .. |S| - 1 */
        return -1;
    /* the member of rank r, in value order: magnitudes fall as values
     * rise for a negative sign */
    uint32_t mag = u & 0x7fffu, sg = u & 0x8000u;
    *w0 = (uint16_t)(sg | (sg ? mag + below - r : mag - below + r));
    return 0;
}

/* Unmerge: the corrections of this block are the slice of spec->fixes
 * starting at fixstart[b] (and its bits, bstart[b] .. bstart[b+1]). */
static void unmerge_start(struct tjob *j, struct block *k)
{
    const lora_fixes *fx = j->spec->fixes;
    k->fi = fx && j->fixstart ? j->fixstart[k->b] : 0;
    if (fx && fx->coded)
        k->rd = (bitrd){fx->bits, fx->bstart[k->b], fx->bstart[k->b + 1]};
}

/* unmerge_part's loop state: the bit reader and the next correction's
 * element in locals (not reloaded from the block per element), the
 * runs' members decoded */
struct uloop {
    bitrd rd;
    size_t next;
    uint64_t nrun;
};

/* One flagged element (or correction's element) x of unmerge_part: the
 * member of its run the receipt's bits name when its rank word says the
 * run (rank_member), else unmerge_one (LORA_RANK_SLOW, or the element of
 * a correction).  0, or -1 after tj_fail. */
static inline __attribute__((always_inline)) int
unmerge_flagged(struct tjob *j, struct block *k, size_t x, uint32_t word, struct uloop *L,
                const lora_fixes *fx, size_t fe, int coded)
{
    if (word != LORA_RANK_SLOW && x != L->next) {
        uint16_t w0;
        if (rank_member(&L->rd, word, (uint16_t)ld_elem(k->dst + 2 * x, 2), &w0)) {
            block_fail(j, "the receipt's bits do not match the merged tensor and adapter "
                       "(element %llu)", (unsigned long long)(k->first + x));
            return -1;
        }
        st_elem(k->dst + 2 * x, 2, w0);
        L->nrun++;
        return 0;
    }
    k->rd = L->rd;
    int r = unmerge_one(j, k, x, fx, &k->fi, fe, coded, &k->rd, 1);
    L->rd = k->rd;
    L->next = k->fi < fe ? (size_t)(fx->index[k->fi] - k->first) : SIZE_MAX;
    return r;
}

/* The rank word (lora_fast_ranks_bf16's form) of a flag code c >= 2, the
 * run 2 + (a | b << 1) lora_fast_unruns_f16 found around u of sign neg:
 * its members below u in value, its span; LORA_RANK_SLOW for a flag 0
 * or 1 (the full logic). */
static inline __attribute__((always_inline)) uint32_t run_word(unsigned c, unsigned neg)
{
    unsigned a = (c - 2) & 1, b = ((c - 2) >> 1) & 1;
    return c < 2 ? LORA_RANK_SLOW : (neg ? b : a) | (a + b) << 16;
}

/* A coded F16 unmerge's flagged elements: their runs as flag codes
 * (lora_fast_unruns_f16: u in dst, a member of the run).  A
 * correction's element goes to unmerge_one, which reads m from src: m
 * back in dst and the flag 1 for it (in place, u took m's place). */
static void f16_unruns(struct block *k, const lora_fixes *fx, size_t fe)
{
    lora_fast_unruns_f16(k->src, k->dst, k->sum, k->flag, k->n);
    for (size_t f = k->fi; f < fe && fx->index[f] - k->first < k->n; f++) {
        size_t x = (size_t)(fx->index[f] - k->first);
        if (k->flag[x] >= 2) {
            k->flag[x] = 1;
            st_elem(k->dst + 2 * x, 2,
                    fp_round_f16(fp_f16_d(ld_elem(k->dst + 2 * x, 2)) + k->sum[x]));
        }
    }
}

/* Unmerge of a part of the block (k: its elements, the block's fi and
 * rd).  0, or -1 after tj_fail. */
static int unmerge_part(struct tjob *j, struct block *k)
{
    const lora_tjob *s = j->spec;
    const lora_fixes *fx = s->fixes;
    size_t fe = fx ? fx->n : 0;
    int coded = fx && fx->coded;
    /* BF16 with corrections: the branch-free pass does the elements it
     * proves, rank_member most flagged ones (their queue's rank words),
     * unmerge_one the others and the corrections; F16 (AVX-512): its
     * pass, the runs found by
     * lora_fast_unruns_f16 (with the receipt's bits), unmerge_one the
     * others */
    int f16 = fx && !s->ref && j->ik == FP_F16 && j->ok == FP_F16 && lora_fast_f16_available();
    int fast = (fx && !s->ref && j->ik == FP_BF16 && j->ok == FP_BF16) || f16;
    size_t n = k->n;
    if (!fast) {
        for (size_t x = 0; x < n; x++)
            if (unmerge_one(j, k, x, fx, &k->fi, fe, coded, &k->rd, 0))
                return -1;
        return 0;
    }
    /* the flagged elements and the corrections' elements in element
     * order (the rank bits are read in it) */
    struct uloop L = {k->rd, k->fi < fe ? (size_t)(fx->index[k->fi] - k->first) : SIZE_MAX, 0};
    int r = 0;
    if (coded && !f16) {
        /* the flagged ones queued by the pass, with their rank words,
         * merged with the corrections' */
        lora_flagq q = flag_queue(k->flag, n);
        size_t nl;
        k->st.changed += lora_fast_unmerge_q_bf16(k->src, k->dst, k->sum, k->flag, n, &q, &nl);
        lora_fast_ranks_bf16(&q, nl, k->sum, q.df);
        for (size_t li = 0; !r;) {
            size_t x = li < nl ? q.idx[li] : SIZE_MAX;
            if (L.next < x)
                x = L.next;
            if (x >= n)
                break;
            uint32_t word = LORA_RANK_SLOW;
            if (li < nl && q.idx[li] == x)
                word = q.df[li++];
            r = unmerge_flagged(j, k, x, word, &L, fx, fe, coded);
        }
    } else {
        k->st.changed += f16 ? lora_fast_unmerge_f16(k->src, k->dst, k->sum, k->flag, n)
                             : lora_fast_unmerge_bf16(k->src, k->dst, k->sum, k->flag, n);
        if (f16 && coded)
            f16_unruns(k, fx, fe);
        /* 64 at a time from a mask, with the corrections' bits */
        uint64_t *masks = flag_masks(k->flag, n);
        for (size_t g = 0; g < n && !r; g += 64) {
            uint64_t mk = masks[g / 64];
            size_t ge = g + 64 < n ? g + 64 : n;
            for (size_t f = k->fi; f < fe && fx->index[f] - k->first < ge; f++)
                mk |= UINT64_C(1) << (fx->index[f] - k->first - g);
            for (; mk && !r; mk &= mk - 1) {
                size_t x = g + (size_t)__builtin_ctzll(mk);
                r = unmerge_flagged(j, k, x, run_word(k->flag[x], k->dst[2 * x + 1] >> 7), &L, fx,
                                    fe, coded);
            }
        }
    }
    k->rd = L.rd;
    k->st.changed += L.nrun;
    return r;
}

/* The end of an unmerged block: every rank bit used.  0, or -1. */
static int unmerge_end(struct tjob *j, struct block *k)
{
    const lora_fixes *fx = j->spec->fixes;
    if (fx && fx->coded && k->rd.at != k->rd.end) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s: the receipt holds %llu bits more than the merged "
                 "tensor and adapter use (rows from %llu)", j->spec->name,
                 (unsigned long long)(k->rd.end - k->rd.at), (unsigned long long)k->i0);
        tj_fail(j, LORA_EINPUT, msg);
        return -1;
    }
    return 0;
}

/* The counts of a part into its block's. */
static void stats_add(lora_merge_stats *to, const lora_merge_stats *st)
{
    to->elements += st->elements;
    to->changed += st->changed;
    to->other += st->other;
    to->fixes += st->fixes;
    to->inexact += st->inexact;
    to->may_differ += st->may_differ;
    if (st->max_ulps > to->max_ulps)
        to->max_ulps = st->max_ulps;
}

/* The block's hashes, its bytes to the sink, its counts into the job's;
 * 0 when it failed before the sink had the bytes. */
static int finish_block(struct tjob *j, struct block *k)
{
    const lora_tjob *s = j->spec;
    lora_engine *e = j->e;
    if (s->hash) {
        if (lora_th_chunk(s->in_hk, k->src, k->n * j->isz, e->bhash[k->b][0]) ||
            lora_th_chunk(s->out_hk, k->dst, k->n * j->osz, e->bhash[k->b][1])) {
            tj_fail(j, LORA_EIO, "SHA-256 is not available (libcrypto)");
            return 0;
        }
    }
    if (s->sink) {
        lora_error werr;
        lora_error_clear(&werr);
        if (s->sink(s->sink_arg, k->first * j->osz, k->dst, k->n * j->osz, &werr) != LORA_OK) {
            tj_fail(j, werr.code ? werr.code : LORA_EIO, werr.msg);
            return 1;
        }
    }
    pthread_mutex_lock(&j->lock);
    if (k->nf.n) {
        if (!j->nf || k->nf.first < j->nf_first) {
            j->nf_first = k->nf.first;
            j->nf_in = k->nf.in;
            j->nf_d = k->nf.d;
        }
        j->nf += k->nf.n;
    }
    if (s->stats)
        stats_add(s->stats, &k->st);
    pthread_mutex_unlock(&j->lock);
    if (s->progress)
        s->progress(s->progress_arg, k->n * j->isz);
    return 1;
}


/* Block b of the job on worker t: part by part, the delta then the
 * merge or unmerge; then its hashes and its write. */
static void run_block(struct tjob *j, int t, uint64_t b)
{
    lora_engine *e = j->e;
    const lora_tjob *s = j->spec;
    struct block k;
    memset(&k, 0, sizeof k);
    k.b = b;
    k.i0 = b * j->br;
    k.i1 = k.i0 + j->br < j->rows ? k.i0 + j->br : j->rows;
    k.n = (size_t)((k.i1 - k.i0) * j->cols);
    k.first = k.i0 * j->cols;
    k.sum = e->sum[t];
    k.flag = (unsigned char *)e->tmp[t];
    k.src = (const unsigned char *)s->src + k.first * j->isz;
    k.dst = s->dst ? (unsigned char *)s->dst + k.first * j->osz : e->ibuf[t];
    /* the writer's own buffer, where it has one: no copy on the way out */
    void *lent = !s->dst && s->sink && s->sink_lend ? s->sink_lend(s->sink_arg, k.n * j->osz)
                                                    : NULL;
    if (lent)
        k.dst = lent;
    k.st.elements = k.n;
    if (s->unmerge) {
        unmerge_start(j, &k);
    } else {
        lora_fixes *fx = &e->bfix[b];
        fx->n = 0;
        fx->nbits = fx->nambig = 0;
    }
    uint64_t pr = part_rows(j->cols);
    int rc = 0;
    for (uint64_t a = k.i0; a < k.i1; a += pr) {
        uint64_t c = a + pr < k.i1 ? a + pr : k.i1;
        size_t off = (size_t)((a - k.i0) * j->cols);
        block_delta(j, a, c, e->sum[t], e->tmp[t]);
        struct block v = k;
        v.first = k.first + off;
        v.n = (size_t)((c - a) * j->cols);
        v.src = k.src + off * j->isz;
        v.dst = k.dst + off * j->osz;
        if (s->dst && s->src == s->dst) {
            /* in place: the fast passes store a part's results before
             * they read its flagged elements' inputs again */
            memcpy(e->ibuf[t], v.src, v.n * j->isz);
            v.src = e->ibuf[t];
        }
        memset(&v.st, 0, sizeof v.st);
        memset(&v.nf, 0, sizeof v.nf);
        rc = s->unmerge ? unmerge_part(j, &v) : merge_block(j, &v);
        k.fi = v.fi;
        k.rd = v.rd;
        stats_add(&k.st, &v.st);
        if (v.nf.n) { /* the first in element order: parts go in order */
            if (!k.nf.n)
                k.nf = v.nf;
            else
                k.nf.n += v.nf.n;
        }
        if (rc)
            break;
    }
    if (!rc && !(s->unmerge && unmerge_end(j, &k)) && finish_block(j, &k))
        return;
    if (lent)
        s->sink_unlend(s->sink_arg, lent);
}

static void *tj_worker(void *arg)
{
    struct wargs *w = arg;
    struct tjob *j = w->j;
    for (;;) {
        if (atomic_load(&j->failed))
            break;
        uint64_t b = atomic_fetch_add(&j->next, 1);
        if (b >= j->nblocks)
            break;
        run_block(j, w->t, b);
    }
    return NULL;
}

/* The refusal of a tensor with results beyond the output dtype: the
 * tensor, the count and the first element, as a user can find it. */
static int nonfinite_error(const struct tjob *j, lora_error *err)
{
    const lora_tjob *s = j->spec;
    uint64_t row = j->cols ? j->nf_first / j->cols : 0, col = j->cols ? j->nf_first % j->cols : 0;
    char what[160];
    if (j->nf_d == 0)
        snprintf(what, sizeof what, "%.9g converted", j->nf_in);
    else
        snprintf(what, sizeof what, "%.9g %s %.9g = %.9g", j->nf_in, j->nf_d < 0 ? "-" : "+",
                 fabs(j->nf_d), j->nf_in + j->nf_d);
    if (j->nf_d != 0 && !fp_finite(j->ok, fp_round(j->ok, fabs(j->nf_d))))
        snprintf(what + strlen(what), sizeof what - strlen(what),
                 "; the delta alone overflows: check the adapter's scale (lora_alpha)");
    return lora_seterr(err, LORA_EINPUT,
                       "%s: %llu value(s) not finite in %s although the inputs are finite "
                       "(first: element %llu [%llu, %llu]: %s)%s", s->name,
                       (unsigned long long)j->nf, lora_dtype_name(s->out_dt),
                       (unsigned long long)j->nf_first, (unsigned long long)row,
                       (unsigned long long)col, what,
                       s->unmerge ? "" : "; nothing written (--allow-nonfinite writes them)");
}

/* The bits of the blocks, in order, into out (reset: a coded tensor's
 * bits and corrections are one tensor's). */
static int gather_bits(lora_fixes *out, const lora_fixes *bf, uint64_t nblocks, lora_error *err)
{
    out->n = 0;
    out->nbits = out->nambig = 0;
    uint64_t *bs = realloc(out->bstart, (size_t)(nblocks + 1) * sizeof *bs);
    if (!bs)
        return lora_oom(err);
    out->bstart = bs;
    out->nblocks = nblocks;
    uint64_t total = 0;
    for (uint64_t b = 0; b < nblocks; b++)
        total += bf[b].nbits;
    if (bits_reserve(out, total + 64))
        return lora_oom(err);
    bitw w;
    bw_start(&w, out);
    for (uint64_t b = 0; b < nblocks; b++) {
        bs[b] = w.nbits;
        out->nambig += bf[b].nambig;
        uint64_t i = 0;
        for (; i + 8 <= bf[b].nbits; i += 8)
            bw_put(&w, out->bits, bf[b].bits[i / 8], 8);
        for (; i < bf[b].nbits; i++)
            bw_put(&w, out->bits, (bf[b].bits[i / 8] >> (i % 8)) & 1, 1);
    }
    bw_end(&w, out);
    bs[nblocks] = out->nbits;
    return LORA_OK;
}

/* The job's terms: shapes checked, factors decoded, w·s, A's panels
 * packed once for the tensor (not at every block part). */
struct terms {
    double scale[64];
    const double *B[64], *A[64], *P[64];
    uint64_t r[64];
};

static int prepare_terms(lora_engine *e, const lora_tjob *s, struct terms *T, lora_error *err)
{
    if (s->nterms > 64)
        return lora_seterr(err, LORA_EUSAGE, "%s: more than 64 adapters on one tensor", s->name);
    for (size_t t = 0; t < s->nterms; t++) {
        const lora_module *m = s->terms[t].module;
        uint64_t rows = m->transpose ? m->in : m->out, cols = m->transpose ? m->out : m->in;
        int rc;
        if (m->magnitude) /* never ΔW alone: dora.c merges DoRA modules */
            return lora_seterr(err, LORA_EUSAGE, "%s: DoRA module %s: not a plain LoRA term",
                               s->name, m->name);
        if (rows != s->rows || cols != s->cols)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: adapter module %s is %llux%llu, the tensor is %llux%llu",
                               s->name, m->name, (unsigned long long)rows,
                               (unsigned long long)cols, (unsigned long long)s->rows,
                               (unsigned long long)s->cols);
        if ((rc = decode_factors(e, t, m, err)) != LORA_OK)
            return rc;
        T->scale[t] = s->terms[t].weight * m->scale;
        if (!isfinite(T->scale[t]))
            return lora_seterr(err, LORA_EINPUT, "%s: scale of %s is not finite", s->name, m->name);
        size_t np = lora_delta_packed_size(m->r, s->cols);
        if (grow_aligned(&e->fP[t], &e->fPcap[t], np ? np : 1))
            return lora_oom(err);
        lora_delta_pack(e->fA[t], m->r, s->cols, e->fP[t]);
        T->B[t] = e->fB[t];
        T->A[t] = e->fA[t];
        T->P[t] = e->fP[t];
        T->r[t] = m->r;
    }
    return LORA_OK;
}

/* Unmerge: the receipt's bits must be cut in this tensor's blocks, and
 * each block's corrections start where fixstart says. */
static int prepare_fixes(const lora_tjob *s, struct tjob *j, lora_error *err)
{
    const lora_fixes *f = s->fixes;
    if (!s->unmerge || !f)
        return LORA_OK;
    if (f->coded) {
        if (f->nblocks != j->nblocks || !f->bstart || f->bstart[0] != 0 ||
            f->bstart[j->nblocks] > f->nbits || (f->nbits && !f->bits))
            return lora_seterr(err, LORA_EINPUT, "%s: the receipt's bits are for %llu row "
                               "blocks, the tensor has %llu", s->name,
                               (unsigned long long)f->nblocks, (unsigned long long)j->nblocks);
        for (uint64_t b = 0; b < j->nblocks; b++)
            if (f->bstart[b + 1] < f->bstart[b])
                return lora_seterr(err, LORA_EINPUT, "%s: the receipt's bit offsets decrease",
                                   s->name);
    }
    if (!f->n)
        return LORA_OK;
    j->fixstart = malloc((j->nblocks + 1) * sizeof *j->fixstart);
    if (!j->fixstart)
        return lora_oom(err);
    size_t fi = 0;
    for (uint64_t b = 0; b <= j->nblocks; b++) {
        uint64_t lim = b * j->br * j->cols;
        while (fi < f->n && f->index[fi] < lim)
            fi++;
        j->fixstart[b] = fi;
    }
    return LORA_OK;
}

/* The blocks on the engine's threads (this one included). */
static void run_workers(lora_engine *e, struct tjob *j)
{
    atomic_init(&j->next, 0);
    atomic_init(&j->failed, 0);
    pthread_mutex_init(&j->lock, NULL);
    int nt = e->nthreads;
    if ((uint64_t)nt > j->nblocks)
        nt = j->nblocks ? (int)j->nblocks : 1;
    pthread_t tid[64];
    struct wargs wa[64];
    int created[64] = {0};
    for (int t = 0; t < nt; t++)
        wa[t] = (struct wargs){j, t};
    for (int t = 1; t < nt; t++)
        created[t] = pthread_create(&tid[t], NULL, tj_worker, &wa[t]) == 0;
    tj_worker(&wa[0]);
    for (int t = 1; t < nt; t++)
        if (created[t])
            pthread_join(tid[t], NULL);
    pthread_mutex_destroy(&j->lock);
}

/* After the blocks: the first failure, values beyond the dtype, the
 * blocks' corrections and bits in order, the tensor's digests. */
static int collect(lora_engine *e, const lora_tjob *s, struct tjob *j, lora_error *err)
{
    if (atomic_load(&j->failed)) {
        if (err)
            *err = j->err;
        return j->err.code;
    }
    if (j->nf) {
        if (!s->allow_nonfinite)
            return nonfinite_error(j, err);
        if (s->stats)
            s->stats->nonfinite += j->nf;
    }
    int rc;
    if (!s->unmerge && s->out_fixes && s->record_fixes && s->out_fixes->coded &&
        (rc = gather_bits(s->out_fixes, e->bfix, j->nblocks, err)))
        return rc;
    if (!s->unmerge && s->out_fixes) {
        for (uint64_t b = 0; b < j->nblocks; b++)
            for (size_t x = 0; x < e->bfix[b].n; x++)
                if (lora_fixes_push(s->out_fixes, e->bfix[b].index[x], e->bfix[b].step[x]))
                    return lora_oom(err);
    }
    if (s->hash &&
        ((s->in_hash && lora_th_combine(s->in_hk, e->bhash[0][0], sizeof *e->bhash,
                                        (size_t)j->nblocks, s->in_hash)) ||
         (s->out_hash && lora_th_combine(s->out_hk, e->bhash[0][1], sizeof *e->bhash,
                                         (size_t)j->nblocks, s->out_hash))))
        return lora_seterr(err, LORA_EIO, "%s: SHA-256 is not available (libcrypto)", s->name);
    return LORA_OK;
}

int lora_engine_run(lora_engine *e, const lora_tjob *s, lora_error *err)
{
    struct tjob j;
    memset(&j, 0, sizeof j);
    j.e = e;
    j.spec = s;
    if (lora_fp_kind(s->in_dt, &j.ik, &j.isz) || lora_fp_kind(s->out_dt, &j.ok, &j.osz))
        return lora_seterr(err, LORA_EINPUT, "%s: dtype %s -> %s cannot be merged (F32, F16, BF16 only)",
                           s->name, lora_dtype_name(s->in_dt) ? lora_dtype_name(s->in_dt) : "?",
                           lora_dtype_name(s->out_dt) ? lora_dtype_name(s->out_dt) : "?");
    j.rows = s->rows;
    j.cols = s->cols;
    j.br = lora_block_rows(s->cols);
    j.nblocks = s->rows ? (s->rows + j.br - 1) / j.br : 0;
    j.nterms = s->nterms;
    if (!s->dst && !s->sink)
        return lora_seterr(err, LORA_EIO, "%s: no output", s->name);
    int rc = engine_reserve(e, s->cols, j.nblocks ? j.nblocks : 1, s->nterms, err);
    struct terms T;
    if (!rc)
        rc = prepare_terms(e, s, &T, err);
    if (rc)
        return rc;
    j.scale = T.scale;
    j.B = T.B;
    j.A = T.A;
    j.P = T.P;
    j.r = T.r;
    if ((rc = prepare_fixes(s, &j, err)))
        return rc;
    run_workers(e, &j);
    free(j.fixstart);
    return collect(e, s, &j, err);
}

/* ---- the public in-memory calls --------------------------------------- */

static int mem_call(int unmerge, lora_dtype dt, lora_dtype out_dt, uint64_t rows, uint64_t cols,
                    const void *src, void *out, const lora_term *terms, size_t nterms,
                    lora_rounding mode, const lora_fixes *apply, lora_fixes *fixes,
                    const void *ref, int nthreads, lora_merge_stats *stats, lora_error *err)
{
    lora_engine *e;
    int rc = lora_engine_new(nthreads, &e, err);
    if (rc)
        return rc;
    lora_tjob s;
    memset(&s, 0, sizeof s);
    s.name = "tensor";
    s.in_dt = dt;
    s.out_dt = out_dt;
    s.rows = rows;
    s.cols = cols;
    s.src = src;
    s.dst = out;
    s.terms = terms;
    s.nterms = nterms;
    s.mode = mode;
    s.unmerge = unmerge;
    s.fixes = apply;
    s.out_fixes = fixes;
    s.record_fixes = fixes != NULL;
    s.ref = ref;
    s.stats = stats;
    /* out may be src (in place): run_block reads each part from a copy,
     * and blocks never overlap; with elements of another size they
     * would, and a block would read what another one wrote */
    if (src == out && lora_dtype_bits(dt) != lora_dtype_bits(out_dt)) {
        lora_engine_free(e);
        return lora_seterr(err, LORA_EUSAGE, "an in-place merge or unmerge keeps the element "
                           "size (%s to %s)", lora_dtype_name(dt), lora_dtype_name(out_dt));
    }
    rc = lora_engine_run(e, &s, err);
    lora_engine_free(e);
    return rc;
}

int lora_tensor_merge(lora_dtype dt, lora_dtype out_dt, uint64_t rows, uint64_t cols,
                      const void *w0, void *out, const lora_term *terms, size_t nterms,
                      lora_rounding mode, int nthreads, lora_fixes *fixes,
                      lora_merge_stats *stats, lora_error *err)
{
    if (fixes)
        fixes->n = 0;
    return mem_call(0, dt, out_dt, rows, cols, w0, out, terms, nterms, mode, NULL, fixes, NULL,
                    nthreads, stats, err);
}

int lora_tensor_unmerge(lora_dtype dt, lora_dtype out_dt, uint64_t rows, uint64_t cols,
                        const void *merged, void *out, const lora_term *terms, size_t nterms,
                        const lora_fixes *fixes, const void *ref, int nthreads,
                        lora_merge_stats *stats, lora_error *err)
{
    if (fixes)
        for (size_t i = 1; i < fixes->n; i++)
            if (fixes->index[i] <= fixes->index[i - 1])
                return lora_seterr(err, LORA_EINPUT, "corrections are not in increasing order");
    if (fixes && fixes->n && fixes->index[fixes->n - 1] >= rows * cols)
        return lora_seterr(err, LORA_EINPUT, "a correction lies outside the tensor");
    return mem_call(1, dt, out_dt, rows, cols, merged, out, terms, nterms, LORA_ROUND_NEAREST,
                    fixes, NULL, ref, nthreads, stats, err);
}

void lora_tree_hash(const void *data, uint64_t rows, uint64_t cols, size_t elsize,
                    unsigned char out[32])
{
    uint64_t br = lora_block_rows(cols);
    size_t chunk = (size_t)(br * cols) * elsize;
    const unsigned char *p = data;
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    for (uint64_t i = 0; i < rows; i += br) {
        uint64_t n = rows - i < br ? rows - i : br;
        unsigned char c[32];
        crypto_generichash(c, 32, p, (size_t)(n * cols) * elsize, NULL, 0);
        crypto_generichash_update(&h, c, 32);
        p += chunk;
    }
    crypto_generichash_final(&h, out, 32);
}

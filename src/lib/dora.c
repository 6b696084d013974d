/*
 * dora.c - DoRA (weight-decomposed LoRA, PEFT's use_dora) merged into a
 * tensor and taken out again exactly.
 *
 * Contract (PEFT's merge, lora/variants.py and get_weight_norm in
 * lora/dora.py, with the arithmetic of DESIGN.md's canonical delta):
 *
 *   d[i][j] = the canonical delta s·B·A in the tensor's orientation
 *             (Conv1D [in, out]: its transpose), in double;
 *   n[o]    = sqrt(Σ (W0 + d)²) over output row o, in double: for a
 *             Linear [out, in] the stored row o summed over j in
 *             increasing order, for a Conv1D [in, out] the stored
 *             column o summed over i in increasing order;
 *   f[o]    = m[o] / n[o] in double (m = lora_magnitude_vector);
 *   W'[i][j]= round_out(f[o]·((double)W0[i][j] + d[i][j])): the only
 *             rounding into the output dtype (nearest, ties to even).
 *
 * A row whose norm is 0 or not finite, or whose factor is 0 or not
 * finite, is refused (no W' can be given for it, and W0 could not come
 * back).  Unmerge is u = round_base(W'/f[o] − d) with the same n (kept
 * in the receipt: W' alone does not tell n, since ||W'[o]|| ≈ |m[o]| for
 * every W0), then the receipt's corrections, coded as receipt version 3
 * codes them for LoRA (ranks of ambiguous elements, below), which the
 * merge computes exactly as unmerge will: unmerge with the receipt is
 * bit-exact by construction.  DoRA tensors always round to nearest
 * (reversible rounding never helped LoRA, lora-receipt(5), and would
 * break the runs the ranks count in).
 *
 * Work goes block by block of lora_block_rows(cols) rows (the receipt's
 * hash chunks), twice for a merge (norms, then values): memory is a few
 * blocks of doubles plus one double per output row; the delta of a
 * block is recomputed rather than kept for the whole tensor.
 */
#include "internal.h"
#include "dora.h"
#include "fpbits.h"

#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

/* The module's factors in the tensor's orientation: rows of the delta
 * are rows of the stored tensor.  Transposed, ΔWᵀ = (Aᵀ)(Bᵀ) with the
 * same products in the same k order as ΔW, hence the same doubles. */
struct dctx {
    const lora_module *m;
    uint64_t rows, cols, r;
    int tr;
    double scale;
    double *fb, *fa;
    double *d, *w;          /* one block of delta and of decoded input */
    uint64_t br;
};

static void ctx_free(struct dctx *c)
{
    free(c->fb);
    free(c->fa);
    free(c->d);
    free(c->w);
}

static int decode_factor(const lora_tensor *t, double *dst, const char *name, lora_error *err)
{
    if (lora_decode_any(t->dtype, t->data, dst, t->numel))
        return lora_seterr(err, LORA_EINPUT, "%s: factors of dtype %s cannot be read", name,
                           lora_dtype_name(t->dtype) ? lora_dtype_name(t->dtype) : "?");
    return LORA_OK;
}

static int ctx_open(struct dctx *c, const lora_module *m, uint64_t rows, uint64_t cols,
                    lora_error *err)
{
    memset(c, 0, sizeof *c);
    c->m = m;
    c->rows = rows;
    c->cols = cols;
    c->r = m->r;
    c->tr = m->transpose;
    c->scale = m->scale;
    uint64_t nA, nB, er = c->tr ? m->in : m->out, ec = c->tr ? m->out : m->in;
    if (rows != er || cols != ec)
        return lora_seterr(err, LORA_EINPUT, "%s: DoRA module is %llux%llu, the tensor is %llux%llu",
                           m->name, (unsigned long long)er, (unsigned long long)ec,
                           (unsigned long long)rows, (unsigned long long)cols);
    if (!m->magnitude || m->magnitude->numel != m->out)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: the DoRA magnitude vector has %llu values, the module %llu output rows",
                           m->name, m->magnitude ? (unsigned long long)m->magnitude->numel : 0ULL,
                           (unsigned long long)m->out);
    if (!isfinite(c->scale))
        return lora_seterr(err, LORA_EINPUT, "%s: scale is not finite", m->name);
    if (!lora_mul_ok(m->r, m->in, &nA) || !lora_mul_ok(m->r, m->out, &nB) || m->A->numel != nA ||
        m->B->numel != nB)
        return lora_seterr(err, LORA_EINPUT, "%s: lora_A/lora_B do not hold r·in/out·r values",
                           m->name);
    c->br = lora_block_rows(cols);
    uint64_t blk = c->br * cols;
    c->fb = malloc((nA > nB ? nA : nB) * sizeof(double) + 8);
    c->fa = malloc((nA > nB ? nA : nB) * sizeof(double) + 8);
    c->d = malloc(blk * sizeof(double));
    c->w = malloc(blk * sizeof(double));
    if (!c->fb || !c->fa || !c->d || !c->w)
        return lora_oom(err);
    if (!c->tr) {
        int rc = decode_factor(m->B, c->fb, m->name, err);
        return rc ? rc : decode_factor(m->A, c->fa, m->name, err);
    }
    /* fb = Aᵀ (in×r), fa = Bᵀ (r×out), through the d/w block buffers
     * when they are big enough, else a temporary */
    double *tmp = malloc((nA > nB ? nA : nB) * sizeof(double) + 8);
    if (!tmp)
        return lora_oom(err);
    int rc = decode_factor(m->A, tmp, m->name, err);
    for (uint64_t k = 0; !rc && k < m->r; k++)
        for (uint64_t p = 0; p < m->in; p++)
            c->fb[p * m->r + k] = tmp[k * m->in + p];
    if (!rc)
        rc = decode_factor(m->B, tmp, m->name, err);
    for (uint64_t q = 0; !rc && q < m->out; q++)
        for (uint64_t k = 0; k < m->r; k++)
            c->fa[k * m->out + q] = tmp[q * m->r + k];
    free(tmp);
    return rc;
}

/* rows [i0, i1): the delta into c->d and the input decoded into c->w */
static int ctx_block(struct dctx *c, lora_dtype dt, const void *src, uint64_t i0, uint64_t i1,
                     int nthreads)
{
    size_t sz = lora_dtype_bits(dt) / 8;
    lora_delta_rows_mt(c->fb, c->fa, c->r, c->cols, c->scale, i0, i1, c->d,
                       nthreads > 0 ? nthreads : 1);
    return lora_decode_any(dt, (const unsigned char *)src + i0 * c->cols * sz, c->w,
                           (i1 - i0) * c->cols);
}

static int norms_of(struct dctx *c, lora_dtype dt, const void *w0, double *norm, int nthreads,
                    lora_error *err)
{
    const lora_module *m = c->m;
    memset(norm, 0, m->out * sizeof *norm);
    for (uint64_t i0 = 0; i0 < c->rows; i0 += c->br) {
        uint64_t i1 = c->rows - i0 < c->br ? c->rows : i0 + c->br;
        if (ctx_block(c, dt, w0, i0, i1, nthreads))
            return lora_seterr(err, LORA_EINPUT, "%s: dtype %s cannot be merged", m->name,
                               lora_dtype_name(dt) ? lora_dtype_name(dt) : "?");
        for (uint64_t i = i0; i < i1; i++) {
            const double *d = c->d + (i - i0) * c->cols, *w = c->w + (i - i0) * c->cols;
            if (c->tr) {
                for (uint64_t j = 0; j < c->cols; j++) {
                    double v = w[j] + d[j];
                    norm[j] += v * v;
                }
            } else {
                double s = 0;
                for (uint64_t j = 0; j < c->cols; j++) {
                    double v = w[j] + d[j];
                    s += v * v;
                }
                norm[i] = s;
            }
        }
    }
    for (uint64_t o = 0; o < m->out; o++) {
        norm[o] = sqrt(norm[o]);
        if (!isfinite(norm[o]) || norm[o] == 0)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: output row %llu: the norm of W0 + dW is %s: DoRA's factor "
                               "m / norm is not defined there", m->name, (unsigned long long)o,
                               norm[o] == 0 ? "0" : "not finite (a non-finite weight)");
    }
    return LORA_OK;
}

int lora_dora_norms(const lora_module *m, lora_dtype dt, uint64_t rows, uint64_t cols,
                    const void *w0, double *norm, int nthreads, lora_error *err)
{
    struct dctx c;
    int rc = ctx_open(&c, m, rows, cols, err);
    if (!rc)
        rc = norms_of(&c, dt, w0, norm, nthreads, err);
    ctx_free(&c);
    return rc;
}

int lora_dora_factors(const lora_module *m, const double *norm, double *f, lora_error *err)
{
    if (!m->magnitude || m->magnitude->numel != m->out)
        return lora_seterr(err, LORA_EINPUT, "%s: the DoRA magnitude vector has %llu values, the "
                           "module %llu output rows", m->name,
                           m->magnitude ? (unsigned long long)m->magnitude->numel : 0ULL,
                           (unsigned long long)m->out);
    if (lora_decode_f64(m->magnitude->dtype, m->magnitude->data, f, (size_t)m->out))
        return lora_seterr(err, LORA_EINPUT, "%s: the DoRA magnitude vector (%s) cannot be read",
                           m->name, lora_dtype_name(m->magnitude->dtype) ?
                           lora_dtype_name(m->magnitude->dtype) : "?");
    for (uint64_t o = 0; o < m->out; o++) {
        double mg = f[o];
        f[o] = mg / norm[o];
        if (!isfinite(mg) || !isfinite(norm[o]) || norm[o] <= 0 || !isfinite(f[o]) || f[o] == 0)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: output row %llu: DoRA's factor m / norm = %.9g / %.9g is %s",
                               m->name, (unsigned long long)o, mg, norm[o],
                               f[o] == 0 ? "0 (the merge would erase the row)" : "not finite");
    }
    return LORA_OK;
}

static inline uint32_t ld_el(const unsigned char *p, size_t sz)
{
    if (sz == 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

static inline void st_el(unsigned char *p, size_t sz, uint32_t v)
{
    if (sz == 4) {
        memcpy(p, &v, 4);
        return;
    }
    uint16_t h = (uint16_t)v;
    memcpy(p, &h, 2);
}

/* What unmerge computes for a merged element u: round_base(u/f − d). */
static inline uint32_t unmerge_el(int ok, int bk, uint32_t u, double f, double d)
{
    return fp_round(bk, fp_to_d(ok, u) / f - d);
}

/* ---- corrections: ranks of ambiguous elements --------------------------
 *
 * As receipt version 3 does for LoRA (lora-receipt(5)): the merge
 * g(v) = round_out(f·(v + d)) is monotonic in the base value v (either
 * direction, by the sign of f), so the base values that merge to a
 * given u form a run S of consecutive representable values, which
 * unmerge can find from (u, f, d) alone, starting from U = unmerge(u).
 * Where S has one member it is W0; where it has several the receipt
 * holds W0's rank in S in ceil(log2 |S|) bits; where U is not in S (or
 * not finite) an exception (index, step) gives W0 = U + step. */
struct elem {
    int ok, bk;
    double f, d;
    uint32_t u;
    int64_t kmax;            /* largest key of a finite base value */
};

static inline int64_t kmax_of(int k)
{
    return k == FP_F32 ? 0x7f7fffff : k == FP_F16 ? 0x7bff : 0x7f7f;
}

/* Does the base value of key k merge to u? */
static inline int in_run(const struct elem *e, int64_t k)
{
    if (k > e->kmax || k < -e->kmax - 1)
        return 0;
    return fp_round(e->ok, e->f * (fp_to_d(e->bk, fp_unkey(e->bk, k)) + e->d)) == e->u;
}

/* The last key of the run through k0 (which is in it) in direction dir:
 * galloping out, then bisecting. */
static int64_t run_end(const struct elem *e, int64_t k0, int dir)
{
    int64_t in = k0, out, step = 1;
    for (;;) {
        int64_t k = k0 + dir * step;
        if (!in_run(e, k)) {
            out = k;
            break;
        }
        in = k;
        step *= 2;
    }
    while ((out - in) * dir > 1) {
        int64_t mid = in + (out - in) / 2;
        if (in_run(e, mid))
            in = mid;
        else
            out = mid;
    }
    return in;
}

/* A sufficient test for S = {v}, v in S, y = f·(v + d) as merged: v
 * normal with a mantissa that is not 0, so its neighbours lie ulp(v)
 * below and above; u normal with a mantissa that is not 0, so it
 * rounds from [u − ulp(u)/2, u + ulp(u)/2].  A neighbour moves y by
 * |f|·ulp(v), one each way; when both land outside that interval by a
 * margin (2^-20 ulp(u), far above the double rounding of y), neither
 * merges to u.  Sound, so it only shortcuts the search: merge and
 * unmerge decide the same either way. */
static inline int single_fast(const struct elem *e, uint32_t v, double y)
{
    static const int prec[3] = {24, 11, 8};      /* FP_F32, FP_F16, FP_BF16 */
    static const double minn[3] = {0x1p-126, 0x1p-14, 0x1p-126};
    static const uint32_t mant[3] = {0x7fffffu, 0x3ffu, 0x7fu};
    if (!(v & mant[e->bk]) || !(e->u & mant[e->ok]))
        return 0;
    double x = fabs(fp_to_d(e->bk, v)), uv = fp_to_d(e->ok, e->u), au = fabs(uv);
    if (!(x >= minn[e->bk]) || !(au >= minn[e->ok]) || !isfinite(x) || !isfinite(au))
        return 0;
    int ex, eu;
    frexp(x, &ex);
    frexp(au, &eu);
    double step = fabs(e->f) * ldexp(1.0, ex - prec[e->bk]);
    double half = ldexp(1.0, eu - prec[e->ok] - 1), margin = half * 0x1p-19;
    return y + step > uv + half + margin && y - step < uv - half - margin;
}

/* What a merge records for base value w merged to e->u: nothing, a rank
 * (appended to fx's bits) or an exception (appended to its list).
 * Returns -1 when out of memory, else 1 for an exception, 0 otherwise. */
static int record_el(const struct elem *e, uint32_t w, uint64_t index, lora_fixes *fx)
{
    uint32_t U = unmerge_el(e->ok, e->bk, e->u, e->f, e->d);
    if (U == w && single_fast(e, w, e->f * (fp_to_d(e->bk, w) + e->d)))
        return 0;
    int64_t kU = fp_key(e->bk, U), kw = fp_key(e->bk, w);
    if (!in_run(e, kU))
        return lora_fixes_push(fx, index, kw - kU) ? -1 : 1;
    int64_t lo = run_end(e, kU, -1), hi = run_end(e, kU, 1);
    if (hi == lo)
        return 0;
    if (lora_bits_put(fx, (uint64_t)(kw - lo), lora_nbits_for((uint64_t)(hi - lo))))
        return -1;
    fx->nambig++;
    return 0;
}

/* Shared by merge and unmerge: the job checked and its context made,
 * the factors f (job->norm given or computed), the chunk hashes. */
struct drun {
    struct dctx c;
    int ik, ok;
    size_t isz, osz;
    double *f;
    uint64_t nblocks;
    unsigned char (*bh)[2][32];   /* per row block: input and output chunk hashes */
};

static void drun_free(struct drun *R)
{
    ctx_free(&R->c);
    free(R->f);
    free(R->bh);
}

static int drun_open(struct drun *R, const lora_dora_job *j, int merge, lora_error *err)
{
    memset(R, 0, sizeof *R);
    if (lora_fp_kind(j->in_dt, &R->ik, &R->isz) || lora_fp_kind(j->out_dt, &R->ok, &R->osz))
        return lora_seterr(err, LORA_EINPUT, "%s: dtype %s -> %s cannot be merged (F32, F16, BF16 "
                           "only)", j->name, lora_dtype_name(j->in_dt) ? lora_dtype_name(j->in_dt)
                           : "?", lora_dtype_name(j->out_dt) ? lora_dtype_name(j->out_dt) : "?");
    if (!j->dst && !j->sink)
        return lora_seterr(err, LORA_EIO, "%s: no output", j->name);
    int rc = ctx_open(&R->c, j->m, j->rows, j->cols, err);
    if (rc)
        return rc;
    R->nblocks = (j->rows + R->c.br - 1) / R->c.br;
    R->f = malloc((j->m->out + 1) * sizeof *R->f);
    R->bh = malloc((R->nblocks + 1) * sizeof *R->bh);
    if (!R->f || !R->bh)
        return lora_oom(err);
    if (merge && (rc = norms_of(&R->c, j->in_dt, j->src, j->norm, j->nthreads, err)))
        return rc;
    if ((rc = lora_dora_factors(j->m, j->norm, R->f, err))) {
        lora_err_prefix(err, "%s", j->name);
        return rc;
    }
    return LORA_OK;
}

/* A finished block: its chunk hashes, then its bytes to dst or the sink
 * (the sink writes at an offset and may be called from any thread). */
static int drun_emit(struct drun *R, const lora_dora_job *j, uint64_t b, uint64_t i0, uint64_t i1,
                     const unsigned char *ob, lora_error *err)
{
    size_t n = (size_t)((i1 - i0) * j->cols);
    const unsigned char *in = (const unsigned char *)j->src + i0 * j->cols * R->isz;
    if (j->hash && (lora_th_chunk(j->in_hk, in, n * R->isz, R->bh[b][0]) ||
                    lora_th_chunk(j->out_hk, ob, n * R->osz, R->bh[b][1])))
        return lora_seterr(err, LORA_EIO, "%s: SHA-256 is not available (libcrypto)", j->name);
    uint64_t off = i0 * j->cols * R->osz;
    if (j->dst) {
        memcpy((unsigned char *)j->dst + off, ob, n * R->osz);
        return LORA_OK;
    }
    return j->sink(j->sink_arg, off, ob, n * R->osz, err);
}

/* The tree hashes from the chunk hashes, in block order. */
static int drun_finish(struct drun *R, const lora_dora_job *j, lora_error *err)
{
    if (!j->hash)
        return LORA_OK;
    if (lora_th_combine(j->in_hk, R->bh[0][0], sizeof *R->bh, (size_t)R->nblocks, j->in_hash) ||
        lora_th_combine(j->out_hk, R->bh[0][1], sizeof *R->bh, (size_t)R->nblocks, j->out_hash))
        return lora_seterr(err, LORA_EIO, "%s: SHA-256 is not available (libcrypto)", j->name);
    return LORA_OK;
}

/* Corrections of a merge: coded (ranks) in row blocks of the hash. */
static int fixes_start(lora_fixes *fx, uint64_t nblocks, lora_error *err)
{
    fx->coded = 1;
    fx->nblocks = nblocks;
    fx->nbits = fx->nambig = 0;
    uint64_t *bs = realloc(fx->bstart, (size_t)(nblocks + 1) * sizeof *bs);
    if (!bs)
        return lora_oom(err);
    fx->bstart = bs;
    bs[0] = 0;
    return LORA_OK;
}

/* One row block of a merge: values into ob, corrections into fx. */
static int merge_block(const struct drun *R, const lora_dora_job *j, uint64_t i0, uint64_t i1,
                       const double *d, unsigned char *ob, lora_fixes *fx, lora_merge_stats *st,
                       lora_error *err)
{
    const unsigned char *in = (const unsigned char *)j->src + i0 * j->cols * R->isz;
    struct elem e = {R->ok, R->ik, 0, 0, 0, kmax_of(R->ik)};
    for (uint64_t i = i0; i < i1; i++)
        for (uint64_t c = 0; c < j->cols; c++) {
            uint64_t x = (i - i0) * j->cols + c;
            uint32_t w = ld_el(in + x * R->isz, R->isz);
            e.f = R->f[R->c.tr ? c : i];
            e.d = d[x];
            e.u = fp_round(R->ok, e.f * (fp_to_d(R->ik, w) + e.d));
            if (!fp_finite(R->ok, e.u))
                return lora_seterr(err, LORA_EINPUT, "%s: element %llu: the DoRA merge gives a "
                                   "value not finite in %s (factor %.9g); nothing written",
                                   j->name, (unsigned long long)(i * j->cols + c),
                                   lora_dtype_name(j->out_dt), e.f);
            st_el(ob + x * R->osz, R->osz, e.u);
            if (fx) {
                int r = record_el(&e, w, i * j->cols + c, fx);
                if (r < 0)
                    return lora_oom(err);
                st->fixes += (uint64_t)r;
            }
        }
    return LORA_OK;
}

/* The coded corrections fit the tensor's row blocks. */
static int fixes_fit(const lora_fixes *f, uint64_t nblocks, const char *name, lora_error *err)
{
    if (!f->coded)
        return LORA_OK; /* no bits: an ambiguous element is then an error */
    if (f->nblocks != nblocks || !f->bstart || f->bstart[0] != 0 ||
        f->bstart[nblocks] > f->nbits || (f->nbits && !f->bits))
        return lora_seterr(err, LORA_EINPUT, "%s: the receipt's bits are for %llu row blocks, "
                           "the tensor has %llu", name, (unsigned long long)f->nblocks,
                           (unsigned long long)nblocks);
    for (uint64_t b = 0; b < nblocks; b++)
        if (f->bstart[b + 1] < f->bstart[b])
            return lora_seterr(err, LORA_EINPUT, "%s: the receipt's bit offsets decrease", name);
    return LORA_OK;
}

/* One unmerged element from merged u: W0 through the run, the rank bits
 * (*at, up to end) and the exceptions (*fi); without corrections (fx
 * NULL), U.  Returns 0, or -1 for corrections that do not fit. */
static int unmerge_elem(const struct elem *e, uint64_t index, const lora_fixes *fx, size_t *fi,
                        uint64_t *at, uint64_t end, uint32_t *out, uint64_t *used)
{
    uint32_t U = unmerge_el(e->ok, e->bk, e->u, e->f, e->d);
    int64_t kU = fp_key(e->bk, U);
    *out = U;
    if (!fx)
        return 0;
    int in = in_run(e, kU);
    if (in && single_fast(e, U, e->f * (fp_to_d(e->bk, U) + e->d)))
        return 0;
    if (!in) {
        if (*fi < fx->n && fx->index[*fi] == index) {
            *out = fp_unkey(e->bk, kU + fx->step[(*fi)++]);
            (*used)++;
        }
        return 0;
    }
    int64_t lo = run_end(e, kU, -1), hi = run_end(e, kU, 1);
    if (hi == lo)
        return 0;
    int nb = lora_nbits_for((uint64_t)(hi - lo));
    if (!fx->coded || *at + (uint64_t)nb > end)
        return -1;
    uint64_t rank = 0;
    for (int k = 0; k < nb; k++, (*at)++)
        rank |= (uint64_t)((fx->bits[*at >> 3] >> (*at & 7)) & 1) << k;
    if (rank > (uint64_t)(hi - lo))
        return -1;
    *out = fp_unkey(e->bk, lo + (int64_t)rank);
    return 0;
}

/* One row block of an unmerge: values into ob; *fi walks the exceptions. */
static int unmerge_block(const struct drun *R, const lora_dora_job *j, uint64_t b, uint64_t i0,
                         uint64_t i1, const double *d, unsigned char *ob, size_t *fi,
                         lora_merge_stats *st, lora_error *err)
{
    const lora_fixes *fx = j->fixes;
    const unsigned char *in = (const unsigned char *)j->src + i0 * j->cols * R->isz;
    const unsigned char *ref = j->ref ? (const unsigned char *)j->ref + i0 * j->cols * R->osz : NULL;
    uint64_t n = (i1 - i0) * j->cols;
    uint64_t at = fx && fx->coded ? fx->bstart[b] : 0, end = fx && fx->coded ? fx->bstart[b + 1] : 0;
    struct elem e = {R->ik, R->ok, 0, 0, 0, kmax_of(R->ok)};
    for (uint64_t x = 0; x < n; x++) {
        uint64_t i = i0 + x / j->cols, c = x % j->cols;
        uint32_t w;
        e.f = R->f[R->c.tr ? c : i];
        e.d = d[x];
        e.u = ld_el(in + x * R->isz, R->isz);
        if (unmerge_elem(&e, i0 * j->cols + x, fx, fi, &at, end, &w, &st->fixes))
            return lora_seterr(err, LORA_EINPUT, "%s: element %llu: the receipt's rank bits do "
                               "not fit this merged tensor and adapter", j->name,
                               (unsigned long long)(i0 * j->cols + x));
        st_el(ob + x * R->osz, R->osz, w);
        if (ref) {
            uint32_t r0 = ld_el(ref + x * R->osz, R->osz);
            if (r0 != w) {
                st->inexact++;
                uint64_t u = fp_finite(R->ok, r0) && fp_finite(R->ok, w) ? fp_ulps(R->ok, r0, w)
                                                                         : UINT64_MAX;
                if (u > st->max_ulps)
                    st->max_ulps = u;
            }
        }
    }
    if (at != end)
        return lora_seterr(err, LORA_EINPUT, "%s: row block %llu: the receipt holds rank bits "
                           "this merged tensor does not use", j->name, (unsigned long long)b);
    return LORA_OK;
}

/* ---- threads: contiguous ranges of row blocks ---------------------------
 * Each thread takes blocks [b0, b1) with its own buffers; a merge's
 * corrections are kept per thread and joined in block order, so the
 * results are the same bytes for any number of threads. */
struct dpart {
    struct drun *R;
    const lora_dora_job *j;
    int unmerge;
    uint64_t b0, b1;
    double *d;
    unsigned char *ob;
    lora_fixes fx;            /* merge: this range's corrections */
    size_t fi, fend;          /* unmerge: this range's exceptions */
    lora_merge_stats st;
    int rc;
    lora_error err;
};

static void *part_run(void *arg)
{
    struct dpart *P = arg;
    struct drun *R = P->R;
    const lora_dora_job *j = P->j;
    lora_fixes *fx = !P->unmerge && j->out_fixes ? &P->fx : NULL;
    if (fx && (P->rc = fixes_start(fx, P->b1 - P->b0, &P->err)))
        return NULL;
    for (uint64_t b = P->b0; b < P->b1 && !P->rc; b++) {
        uint64_t i0 = b * R->c.br, i1 = j->rows - i0 < R->c.br ? j->rows : i0 + R->c.br;
        lora_delta_rows(R->c.fb, R->c.fa, R->c.r, j->cols, R->c.scale, i0, i1, P->d);
        if (P->unmerge)
            P->rc = unmerge_block(R, j, b, i0, i1, P->d, P->ob, &P->fi, &P->st, &P->err);
        else
            P->rc = merge_block(R, j, i0, i1, P->d, P->ob, fx, &P->st, &P->err);
        if (!P->rc && fx)
            fx->bstart[b - P->b0 + 1] = fx->nbits;
        if (!P->rc)
            P->rc = drun_emit(R, j, b, i0, i1, P->ob, &P->err);
    }
    if (!P->rc && P->unmerge && j->fixes && P->fi != P->fend)
        P->rc = lora_seterr(&P->err, LORA_EINPUT, "%s: a correction at an element that needs "
                            "none (element %llu)", j->name,
                            (unsigned long long)j->fixes->index[P->fi]);
    return NULL;
}

/* Append NB bits of SRC (from bit 0) to DST. */
static int bits_append(lora_fixes *dst, const unsigned char *src, uint64_t nb)
{
    for (uint64_t at = 0; at < nb; at += 56) {
        int k = nb - at < 56 ? (int)(nb - at) : 56;
        uint64_t v = 0;
        for (int i = 0; i < k; i++)
            v |= (uint64_t)((src[(at + (uint64_t)i) >> 3] >> ((at + (uint64_t)i) & 7)) & 1) << i;
        if (lora_bits_put(dst, v, k))
            return -1;
    }
    return 0;
}

/* The merge's corrections: each range's, in block order. */
static int join_fixes(struct drun *R, struct dpart *P, int np, lora_fixes *out, lora_error *err)
{
    int rc = fixes_start(out, R->nblocks, err);
    for (int t = 0; !rc && t < np; t++) {
        uint64_t base = out->nbits;
        for (size_t x = 0; x < P[t].fx.n; x++)
            if (lora_fixes_push(out, P[t].fx.index[x], P[t].fx.step[x]))
                return lora_oom(err);
        if (bits_append(out, P[t].fx.bits, P[t].fx.nbits))
            return lora_oom(err);
        for (uint64_t b = P[t].b0; b < P[t].b1; b++)
            out->bstart[b + 1] = base + P[t].fx.bstart[b - P[t].b0 + 1];
        out->nambig += P[t].fx.nambig;
    }
    return rc;
}

/* Run every row block over j->nthreads threads; stats added to *st. */
static int run_parts(struct drun *R, const lora_dora_job *j, int unmerge, lora_merge_stats *st,
                     lora_error *err)
{
    int np = j->nthreads > 0 ? j->nthreads : 1;
    if (np > 64)
        np = 64;
    if ((uint64_t)np > R->nblocks)
        np = R->nblocks ? (int)R->nblocks : 1;
    struct dpart P[64];
    pthread_t tid[64];
    int created[64] = {0};
    int rc = LORA_OK;
    memset(P, 0, sizeof P);
    size_t blk = (size_t)(R->c.br * j->cols);
    for (int t = 0; t < np && !rc; t++) {
        P[t] = (struct dpart){.R = R, .j = j, .unmerge = unmerge,
                              .b0 = R->nblocks * (uint64_t)t / (uint64_t)np,
                              .b1 = R->nblocks * (uint64_t)(t + 1) / (uint64_t)np};
        P[t].d = malloc(blk * sizeof *P[t].d + 8);
        P[t].ob = malloc(blk * R->osz + 4);
        if (!P[t].d || !P[t].ob)
            rc = lora_oom(err);
        const lora_fixes *fx = j->fixes;
        if (unmerge && fx) { /* the exceptions of blocks [b0, b1) */
            uint64_t lo = P[t].b0 * blk, hi = P[t].b1 * blk;
            while (P[t].fi < fx->n && fx->index[P[t].fi] < lo)
                P[t].fi++;
            for (P[t].fend = P[t].fi; P[t].fend < fx->n && fx->index[P[t].fend] < hi;)
                P[t].fend++;
            if (t == np - 1 && P[t].fend != fx->n)
                rc = lora_seterr(err, LORA_EINPUT, "%s: a correction lies outside the tensor",
                                 j->name);
        }
    }
    for (int t = 1; t < np && !rc; t++)
        created[t] = pthread_create(&tid[t], NULL, part_run, &P[t]) == 0;
    if (!rc)
        part_run(&P[0]);
    for (int t = 1; t < np && !rc; t++) {
        if (created[t])
            pthread_join(tid[t], NULL);
        else
            part_run(&P[t]);
    }
    for (int t = 0; t < np && !rc; t++)
        if (P[t].rc) {
            rc = P[t].rc;
            if (err)
                *err = P[t].err;
        }
    if (!rc && !unmerge && j->out_fixes)
        rc = join_fixes(R, P, np, j->out_fixes, err);
    for (int t = 0; t < np; t++) {
        st->fixes += P[t].st.fixes;
        st->inexact += P[t].st.inexact;
        if (P[t].st.max_ulps > st->max_ulps)
            st->max_ulps = P[t].st.max_ulps;
        free(P[t].d);
        free(P[t].ob);
        lora_fixes_free(&P[t].fx);
    }
    return rc;
}

int lora_dora_merge(const lora_dora_job *j, lora_error *err)
{
    struct drun R;
    lora_merge_stats st = {0};
    int rc = drun_open(&R, j, 1, err);
    if (!rc)
        rc = run_parts(&R, j, 0, &st, err);
    if (!rc)
        rc = drun_finish(&R, j, err);
    if (!rc) {
        if (j->stats) {
            j->stats->elements += j->rows * j->cols;
            j->stats->changed += j->rows * j->cols;
            j->stats->fixes += st.fixes;
        }
    }
    drun_free(&R);
    return rc;
}

int lora_dora_unmerge(const lora_dora_job *j, lora_error *err)
{
    struct drun R;
    lora_merge_stats st = {0};
    int rc = drun_open(&R, j, 0, err);
    if (!rc && j->fixes)
        rc = fixes_fit(j->fixes, R.nblocks, j->name, err);
    if (!rc)
        rc = run_parts(&R, j, 1, &st, err);
    if (!rc)
        rc = drun_finish(&R, j, err);
    if (!rc) {
        if (j->stats) {
            j->stats->elements += j->rows * j->cols;
            j->stats->fixes += st.fixes;
            j->stats->inexact += st.inexact;
            if (st.max_ulps > j->stats->max_ulps)
                j->stats->max_ulps = st.max_ulps;
        }
    }
    drun_free(&R);
    return rc;
}

int lora_terms_dora(const lora_term *terms, size_t n, const char *tensor, lora_error *err)
{
    size_t k = n;
    for (size_t i = 0; i < n; i++)
        if (terms[i].module->magnitude) {
            if (k < n)
                return -lora_seterr(err, LORA_EINPUT,
                                    "%s: two DoRA modules on one tensor (%s and %s): each "
                                    "rescales the rows by its own norm of W0 + its dW, and "
                                    "their combination is not defined; merge one, or merge "
                                    "them one after the other", tensor,
                                    terms[k].module->name, terms[i].module->name);
            k = i;
        }
    if (k == n)
        return 0;
    if (n > 1)
        return -lora_seterr(err, LORA_EINPUT,
                            "%s: DoRA module %s and another adapter's module on one tensor: "
                            "the order would matter (DoRA rescales whatever it is merged "
                            "into), so it is refused; merge them one after the other",
                            tensor, terms[k].module->name);
    if (terms[k].weight != 1.0)
        return -lora_seterr(err, LORA_EINPUT,
                            "%s: DoRA module %s with weight %g: a DoRA adapter is merged whole "
                            "(weight 1); its magnitudes are not a delta that a weight could scale",
                            tensor, terms[k].module->name, terms[k].weight);
    return 1;
}

int lora_dora_run(const lora_tjob *s, double *norm, int nthreads, lora_error *err)
{
    lora_dora_job j;
    memset(&j, 0, sizeof j);
    if (s->nterms != 1 || !s->terms[0].module->magnitude)
        return lora_seterr(err, LORA_EUSAGE, "%s: not one DoRA term", s->name);
    j.name = s->name;
    j.in_dt = s->in_dt;
    j.out_dt = s->out_dt;
    j.rows = s->rows;
    j.cols = s->cols;
    j.src = s->src;
    j.dst = s->dst;
    j.sink = s->sink;
    j.sink_arg = s->sink_arg;
    j.m = s->terms[0].module;
    j.norm = norm;
    j.out_fixes = s->record_fixes ? s->out_fixes : NULL;
    j.fixes = s->fixes;
    j.ref = s->ref;
    j.hash = s->hash;
    j.in_hk = s->in_hk;
    j.out_hk = s->out_hk;
    j.in_hash = s->in_hash;
    j.out_hash = s->out_hash;
    j.stats = s->stats;
    j.nthreads = nthreads;
    return s->unmerge ? lora_dora_unmerge(&j, err) : lora_dora_merge(&j, err);
}

/*
 * merge.c - streaming merge, unmerge and task switch of whole
 * checkpoints (lora-merge, lora-unmerge): shard by shard, tensor by
 * tensor, row block by row block through mergecore.c, untouched
 * tensors copied without decoding, outputs made atomic (a temporary
 * file or folder beside OUT, renamed at the very end), receipts
 * written as tensors finish.  Outputs keep the input's layout, and a
 * receipt keeps what a byte-identical restore needs and names its
 * output; the merged file records its base (lora_base), which an unmerge
 * checks (lora-receipt(5)).  Memory stays flat in model size: the
 * inputs are mapped, the engine's buffers are sized by the widest
 * tensor and reused, receipt corrections go to the file per tensor.
 */
#include "internal.h"

#include <stdint.h>
#include "mergecore.h"
#include "dora.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#define MERGES_KEY "lora_merges"
/* The base a merged file restores to (lora-receipt(5)): BLAKE2b-256 over
 * the base's header, its index (sharded folders) and the base hashes of
 * the tensors the merge changed, so that a receipt alone cannot vouch
 * for what it restores. */
#define BASE_KEY "lora_base"
#define BASE_PLACEHOLDER "0000000000000000000000000000000000000000000000000000000000000000"

/* Test hook (tests/faults.sh): LORA_FAULT_POINT=NAME kills the process
 * with SIGKILL when the run reaches point NAME, so that a crash lands
 * exactly between two steps of a commit. */
static void fault_point(const char *name)
{
    const char *p = getenv("LORA_FAULT_POINT");
    if (p && strcmp(p, name) == 0)
        raise(SIGKILL);
}

int lora_parse_adapter_arg(const char *arg, char **spec, double *weight, int *given,
                           lora_error *err)
{
    *spec = NULL;
    *weight = 1.0;
    *given = 0;
    const char *c = strrchr(arg, ':');
    if (c && c[1]) {
        char *end;
        errno = 0;
        double w = strtod(c + 1, &end);
        if (*end == 0 && errno == 0 && isfinite(w)) {
            *weight = w;
            *given = 1;
            *spec = strndup(arg, (size_t)(c - arg));
            if (!*spec)
                return lora_oom(err);
            if (!**spec)
                return lora_seterr(err, LORA_EUSAGE, "%s: no adapter before the weight", arg);
            return LORA_OK;
        }
        /* a suffix that reads as a number but is not a finite one is a
         * mistyped weight, not part of a path */
        if (*end == 0 && end != c + 1 && c != arg && (errno == ERANGE ? fabs(w) > 1 : 1))
            return lora_seterr(err, LORA_EUSAGE, "%s: weight '%s' is not a finite number", arg,
                               c + 1);
    }
    if (!(*spec = lora_strdup(arg, err)))
        return LORA_EIO;
    return LORA_OK;
}

void lora_adapter_digest(const lora_adapter *ad, unsigned char out[32])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *m = &ad->modules[i];
        unsigned char sc[8];
        uint64_t u;
        memcpy(&u, &m->scale, 8);
        for (int b = 0; b < 8; b++)
            sc[b] = (unsigned char)(u >> (8 * b));
        crypto_generichash_update(&h, (const unsigned char *)m->name, strlen(m->name) + 1);
        crypto_generichash_update(&h, sc, 8);
        crypto_generichash_update(&h, m->A->data, (size_t)m->A->nbytes);
        crypto_generichash_update(&h, m->B->data, (size_t)m->B->nbytes);
        if (m->magnitude) /* DoRA: the magnitudes are part of what was merged */
            crypto_generichash_update(&h, m->magnitude->data, (size_t)m->magnitude->nbytes);
    }
    crypto_generichash_final(&h, out, 32);
}

/* ---- run state -------------------------------------------------------- */

struct run {
    const lora_merge_opts *o;
    lora_merge_result *res;
    lora_ckpt *ck, *ref;
    lora_receipt *rin, *rout;
    lora_engine *eng;
    lora_merge_adapter *undo, *add;
    size_t nundo, nadd;
    unsigned char (*undo_hash)[32], (*add_hash)[32];
    size_t *rin_map;           /* receipt adapter i -> index in undo */
    unsigned char *tmp;        /* one tensor, when undoing and adding */
    size_t tmpcap;
    unsigned char *cbuf;       /* dtype conversion of copied tensors */
    lora_fixes fixes;
    uint64_t done, total;
    lora_stw *w;
    const char *cur;           /* tensor being written */
    /* layout and provenance (lora-receipt(5)) */
    /* base hashes of a shard's tensors: those the input's merge changed
     * (checked), those this merge changes (recorded) */
    struct basepairs { struct basepair { const char *name; unsigned char h[32]; } *p;
                       size_t n, cap; } chk, rec;
    int kept_all;              /* every shard written in its input's layout */
    int has_idx;               /* the base index is part of lora_base */
    unsigned char idx_hash[32];
    char *in_index;            /* the input's index file, sharded folders */
    size_t in_index_len;
    int folder;                /* OUT is a folder (config.json beside the weights) */
    const lora_tensor *untie;  /* the embedding a tied lm_head update unties (untie.c) */
    size_t only;               /* the one shard --shard names, SIZE_MAX for all */
    char *tmpdir;              /* staged folder output (stage_output) */
    char *stage;               /* staged file output */
    /* --convert-all: the input's config.json, recorded in lora_merges;
     * and the one an undone converting merge recorded, put back */
    char *config_orig, *config_was;
};

static int push_base(struct basepairs *B, const char *name, const unsigned char h[32],
                     lora_error *err)
{
    if (B->n == B->cap) {
        size_t cap = B->cap ? 2 * B->cap : 64;
        struct basepair *n = realloc(B->p, cap * sizeof *n);
        if (!n)
            return lora_oom(err);
        B->p = n;
        B->cap = cap;
    }
    B->p[B->n].name = name;
    memcpy(B->p[B->n].h, h, 32);
    B->n++;
    return LORA_OK;
}

static int cmp_basepair(const void *a, const void *b)
{
    return strcmp(((const struct basepair *)a)->name, ((const struct basepair *)b)->name);
}

/* lora_base of one shard, in hex: the base's header JSON (HDR), the
 * index when there is one, then (name, base hash) by name, so that the
 * order tensors were processed in does not matter. */
static void base_digest(struct run *R, struct basepairs *B, int kind, const unsigned char *hdr,
                        size_t hlen, char hex[65])
{
    crypto_generichash_state st;
    unsigned char h[32];
    /* the kind of the tensors' digests: "3" BLAKE3 trees (receipt
     * version 6), "2" SHA-256 trees (version 5), "1" BLAKE2b trees */
    const char *tag = kind == LORA_TH_BLAKE3   ? "lora-base 3"
                      : kind == LORA_TH_SHA256 ? "lora-base 2"
                                               : "lora-base 1";
    if (B->n)
        qsort(B->p, B->n, sizeof *B->p, cmp_basepair);
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const unsigned char *)tag, strlen(tag) + 1);
    crypto_generichash(h, 32, hdr, hlen, NULL, 0);
    crypto_generichash_update(&st, h, 32);
    if (R->has_idx)
        crypto_generichash_update(&st, R->idx_hash, 32);
    for (size_t i = 0; i < B->n; i++) {
        crypto_generichash_update(&st, (const unsigned char *)B->p[i].name,
                                  strlen(B->p[i].name) + 1);
        crypto_generichash_update(&st, B->p[i].h, 32);
    }
    crypto_generichash_final(&st, h, 32);
    sodium_bin2hex(hex, 65, h, 32);
}

/* The first 8+N bytes of a shard (its length and header JSON), read
 * through its descriptor. */
static int read_header(lora_st *st, unsigned char **out, size_t *len, lora_error *err)
{
    size_t n = (size_t)(8 + lora_st_header_size(st)), got = 0;
    unsigned char *b = malloc(n);
    if (!b)
        return lora_oom(err);
    while (got < n) {
        ssize_t r = pread(lora_st_fd(st), b + got, n - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            free(b);
            return lora_seterr_errno(err, LORA_EIO, r ? errno : EIO, "%s: reading its header",
                                     lora_st_path(st));
        }
        got += (size_t)r;
    }
    *out = b;
    *len = n;
    return LORA_OK;
}

/* Blocks of the tensor being processed (R->cur, set before the engine
 * runs and read-only while it does) go to the writer; lora_stw_write is
 * safe from several threads for different ranges. */
static int sink_stw(void *arg, uint64_t off, const void *buf, size_t len, lora_error *err)
{
    struct run *R = arg;
    return lora_stw_write(R->w, R->cur, off, buf, len, err);
}

static void *sink_stw_lend(void *arg, size_t len)
{
    struct run *R = arg;
    return lora_stw_lend(R->w, len);
}

static void sink_stw_unlend(void *arg, void *buf)
{
    struct run *R = arg;
    lora_stw_unlend(R->w, buf);
}

static int sink_null(void *arg, uint64_t off, const void *buf, size_t len, lora_error *err)
{
    (void)arg; (void)off; (void)buf; (void)len; (void)err;
    return LORA_OK;
}

/* terms of `set` whose module targets tensor NAME */
static size_t terms_for(const lora_merge_adapter *set, size_t n, const char *name,
                        lora_term *terms, size_t max)
{
    size_t k = 0;
    for (size_t a = 0; a < n; a++)
        for (size_t i = 0; i < set[a].ad->n_modules; i++)
            if (strcmp(set[a].ad->modules[i].target, name) == 0 && k < max)
                terms[k++] = (lora_term){&set[a].ad->modules[i], set[a].weight};
    return k;
}

static const lora_saved *saved_for(const lora_merge_adapter *set, size_t n, const char *name)
{
    const lora_saved *s = NULL;
    for (size_t a = 0; a < n; a++)
        for (size_t i = 0; i < set[a].ad->n_saved; i++)
            if (strcmp(set[a].ad->saved[i].target, name) == 0)
                s = &set[a].ad->saved[i]; /* the last adapter wins */
    return s;
}

static const lora_module *module_named(const lora_adapter *ad, const char *name)
{
    for (size_t i = 0; i < ad->n_modules; i++)
        if (strcmp(ad->modules[i].name, name) == 0)
            return &ad->modules[i];
    return NULL;
}

static int is2d(const lora_tensor *t, uint64_t *rows, uint64_t *cols)
{
    if (t->ndim != 2)
        return 0;
    *rows = t->shape[0];
    *cols = t->shape[1];
    return 1;
}

/* Finite values of a conversion chunk that became infinite in DDT:
 * refused naming the first (as mergecore.c does for merged values), or
 * counted with allow_nonfinite. */
static int count_overflow(struct run *R, const double *d, const unsigned char *o, lora_dtype ddt,
                          size_t n, uint64_t first, const char *name, lora_error *err)
{
    double back[256];
    for (size_t x = 0; x < n; x += 256) {
        size_t k = n - x < 256 ? n - x : 256;
        if (lora_decode_f64(ddt, o + x * (lora_dtype_bits(ddt) / 8), back, k))
            return lora_seterr(err, LORA_EINPUT, "%s: cannot read back %s", name,
                               lora_dtype_name(ddt));
        for (size_t y = 0; y < k; y++) {
            if (isfinite(back[y]) || !isfinite(d[x + y]))
                continue;
            if (!R->o->allow_nonfinite)
                return lora_seterr(err, LORA_EINPUT,
                                   "%s: value(s) not finite in %s although the inputs are finite "
                                   "(first: element %llu: %.9g converted); nothing written "
                                   "(--allow-nonfinite writes them)", name, lora_dtype_name(ddt),
                                   (unsigned long long)(first + x + y), d[x + y]);
            R->res->nonfinite++;
        }
    }
    return LORA_OK;
}

/* Convert a whole tensor's elements between readable/writable dtypes in
 * chunks through a reused buffer, writing at offset 0.. of NAME. */
static int convert_copy(struct run *R, const lora_tensor *t, const void *src, lora_dtype sdt,
                        lora_dtype ddt, const char *name, lora_error *err)
{
    const size_t CH = 1 << 16;
    if (!R->cbuf) {
        R->cbuf = malloc(CH * (8 + 4));
        if (!R->cbuf)
            return lora_oom(err);
    }
    double *d = (double *)R->cbuf;
    unsigned char *o = R->cbuf + CH * 8;
    size_t ssz = lora_dtype_bits(sdt) / 8, dsz = lora_dtype_bits(ddt) / 8;
    for (uint64_t i = 0; i < t->numel; i += CH) {
        size_t n = t->numel - i < CH ? (size_t)(t->numel - i) : CH;
        if (lora_decode_f64(sdt, (const unsigned char *)src + i * ssz, d, n) ||
            lora_encode_f64(ddt, d, o, n))
            return lora_seterr(err, LORA_EINPUT, "%s: cannot convert %s to %s", name,
                               lora_dtype_name(sdt), lora_dtype_name(ddt));
        int rc = count_overflow(R, d, o, ddt, n, i, name, err);
        if (rc)
            return rc;
        rc = lora_stw_write(R->w, name, i * dsz, o, n * dsz, err);
        if (rc)
            return rc;
    }
    return LORA_OK;
}

static void report(struct run *R, const lora_tensor_report *tr)
{
    if (R->o->on_tensor)
        R->o->on_tensor(R->o->on_tensor_arg, tr);
}

static void progress(struct run *R, uint64_t bytes)
{
    R->done += bytes;
    if (R->o->progress)
        R->o->progress(R->o->progress_arg, R->done, R->total);
}

/* Output dtype of a changed tensor. */
static lora_dtype out_dtype(struct run *R, lora_dtype in)
{
    return R->o->dtype != LORA_DT_INVALID ? R->o->dtype : in;
}

/* Give back the pages of a mapped tensor once it is done: they stay in
 * the page cache, but no longer count in this process's resident set,
 * which then stays flat in model size. */
static void release(const void *data, uint64_t nbytes)
{
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0 || !data || !nbytes)
        return;
    uintptr_t a = (uintptr_t)data, e = a + (uintptr_t)nbytes;
    a = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    e &= ~((uintptr_t)pg - 1);
    if (e > a)
        madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Start reading a mapped tensor ahead of its use: an input that is not
 * in the page cache (an unmerge's merged file, which the merge wrote
 * around the cache) is otherwise read a readahead window at a time, on
 * the workers' faults, with the computation waiting: the cold unmerge
 * of a 1.62 GB checkpoint took 3.55 s, 2.8-3.0 s with the file read
 * ahead (bench/README, session 6).  A hint: nothing to do when cached. */
static void prefetch(const void *data, uint64_t nbytes)
{
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0 || !data || !nbytes)
        return;
    uintptr_t a = (uintptr_t)data & ~((uintptr_t)pg - 1), e = (uintptr_t)data + (uintptr_t)nbytes;
    (void)madvise((void *)a, e - a, MADV_WILLNEED);
}

/* One tensor of the input. */
/* The terms to take out of tensor T (unmerge, task switch): from the
 * receipt when there is one (its entry in *rt, index *rti), else the
 * undo adapters' modules; *base_dt the dtype of W0. */
static int old_terms(struct run *R, const lora_tensor *t, lora_term *oldt, size_t *pnold,
                     const lora_receipt_tensor **prt, size_t *prti, lora_dtype *pbase,
                     lora_error *err)
{
    const lora_merge_opts *o = R->o;
    size_t nold = 0;
    const lora_receipt_tensor *rt = NULL;
    size_t rti = 0;
    lora_dtype base_dt = t->dtype; /* dtype of W0 */
    *pnold = 0;
    *prt = NULL;
    *prti = 0;
    *pbase = base_dt;
    if (R->rin) {
        for (rti = 0; rti < lora_receipt_tensor_count(R->rin); rti++)
            if (strcmp(lora_receipt_tensor_at(R->rin, rti)->name, t->name) == 0) {
                rt = lora_receipt_tensor_at(R->rin, rti);
                break;
            }
        if (rt) {
            if (rt->nterms > 64)
                return lora_seterr(err, LORA_EINPUT, "%s: too many terms", t->name);
            for (size_t k = 0; k < rt->nterms; k++) {
                const lora_receipt_term *q = &rt->terms[k];
                lora_merge_adapter *ua = &R->undo[R->rin_map[q->adapter]];
                const lora_module *m = module_named(ua->ad, q->module);
                if (!m)
                    return lora_seterr(err, LORA_EINPUT,
                                       "%s: the receipt names module %s, which adapter %s lacks",
                                       t->name, q->module, ua->spec);
                if (m->scale != q->scale || m->transpose != q->transpose)
                    return lora_seterr(err, LORA_EINPUT,
                                       "%s: module %s has scale %.17g%s, the receipt %.17g%s",
                                       t->name, q->module, m->scale,
                                       m->transpose ? " (transposed)" : "", q->scale,
                                       q->transpose ? " (transposed)" : "");
                oldt[nold++] = (lora_term){m, ua->weight};
            }
            base_dt = rt->base_dtype;
            if (rt->dtype != t->dtype)
                return lora_seterr(err, LORA_EINPUT, "%s: is %s, the receipt says it was merged as %s",
                                   t->name, lora_dtype_name(t->dtype), lora_dtype_name(rt->dtype));
        } else if (terms_for(R->undo, R->nundo, t->name, oldt, 64) > 0) {
            /* The adapter changes this tensor but the receipt never saw
             * it: the receipt of another merge (or of another shard).
             * Copying it would leave the adapter in silently. */
            return lora_seterr(err, LORA_ECHECK,
                               "%s: the adapter changes this tensor but the receipt does not "
                               "record it (a receipt of another merge or shard?)", t->name);
        }
    } else {
        nold = terms_for(R->undo, R->nundo, t->name, oldt, 64);
        if (nold && o->dtype != LORA_DT_INVALID)
            base_dt = o->dtype; /* unmerge without receipt: --dtype names W0's dtype */
    }
    *pnold = nold;
    *prt = rt;
    *prti = rti;
    *pbase = base_dt;
    return LORA_OK;
}

/* A tensor modules_to_save replaces (SV), or replaced in the merge being
 * undone (KS, the receipt's copy of the base's bytes): the merge keeps
 * the base's bytes in its receipt, an unmerge writes them back, a task
 * switch does both (lora-receipt(5)). */
static int do_replaced(struct run *R, const lora_tensor *t, const lora_saved *sv,
                       const lora_receipt_saved *ks, lora_error *err)
{
    const void *base = t->data;
    lora_dtype bdt = t->dtype;
    uint64_t blen = t->nbytes;
    unsigned char h[32];
    int rc = LORA_OK;
    R->res->tensors++;
    R->res->changed_tensors++;
    if (ks) {
        if (ks->ndim != t->ndim || memcmp(ks->shape, t->shape, sizeof(uint64_t) * (size_t)t->ndim))
            return lora_seterr(err, LORA_EINPUT, "%s: the receipt keeps a tensor of another shape",
                               t->name);
        if ((rc = lora_receipt_saved_data(R->rin, ks, &base, err)) ||
            (rc = push_base(&R->chk, t->name, ks->hash, err)))
            return rc;
        bdt = ks->dtype;
        blen = ks->length;
    }
    lora_tensor_report tr = {t->name, t->numel, ks ? t->numel : 0, 0, 0, ks ? 1 : -1, ks != NULL,
                             0};
    if (sv && R->rout && ((rc = lora_receipt_add_saved(R->rout, t->name, bdt, t->ndim, t->shape,
                                                       base, blen, h, err)) ||
                          (rc = push_base(&R->rec, t->name, h, err))))
        return rc;
    if (R->w && sv) {
        lora_dtype od = out_dtype(R, bdt);
        if (sv->t->dtype == od)
            rc = lora_stw_write(R->w, t->name, 0, sv->t->data, (size_t)sv->t->nbytes, err);
        else
            rc = convert_copy(R, sv->t, sv->t->data, sv->t->dtype, od, t->name, err);
    } else if (R->w) {
        rc = lora_stw_write(R->w, t->name, 0, base, (size_t)blen, err);
    }
    if (rc)
        return rc;
    report(R, &tr);
    progress(R, t->nbytes);
    return LORA_OK;
}

/* One adapted tensor on its way through the steps below: the old
 * adapters taken out (unmerge_step), the new ones put in (merge_step). */
struct tstate {
    const lora_tensor *t;
    uint64_t rows, cols;
    lora_term oldt[64], newt[64];
    size_t nold, nnew;
    const lora_receipt_tensor *rt; /* the receipt's entry for t, when undoing with one */
    size_t rti;
    lora_dtype base_dt;            /* dtype of W0 */
    const void *src;               /* what merge_step starts from: t, or W0 in R->tmp */
    lora_dtype src_dt;
    lora_tensor_report tr;
    unsigned char base_hash[32];   /* of W0, in the kind of the receipt undone */
    unsigned char rec_hash[32];    /* of W0, in the kind of the receipt written */
    int odora, ndora;              /* the step takes a DoRA module out / puts one in (dora.c) */
};

/* A tensor no adapter changes: its bytes copied (--dtype applies to
 * changed tensors only). */
/* Does --convert-all change untouched tensor T (a floating one in
 * another dtype)? */
static int converts(const struct run *R, const lora_tensor *t)
{
    return R->o->convert_all && R->o->dtype != LORA_DT_INVALID && t->dtype != R->o->dtype &&
           (lora_dtype_writable(t->dtype) || t->dtype == LORA_DT_F64);
}

/* An untouched tensor --convert-all changes: converted (a value beyond
 * the dtype refused as a merged one is), its original bytes kept in the
 * receipt as a replaced tensor's are, so that an unmerge writes them
 * back (a narrowing loses bits no arithmetic recovers; lora-receipt(5)). */
static int convert_untouched(struct run *R, const lora_tensor *t, lora_error *err)
{
    unsigned char h[32];
    int rc = LORA_OK;
    R->res->converted_tensors++;
    if (R->rout && ((rc = lora_receipt_add_saved(R->rout, t->name, t->dtype, t->ndim, t->shape,
                                                 t->data, t->nbytes, h, err)) ||
                    (rc = push_base(&R->rec, t->name, h, err))))
        return rc;
    if (R->w && (rc = convert_copy(R, t, t->data, t->dtype, R->o->dtype, t->name, err)))
        return rc;
    progress(R, t->nbytes);
    return LORA_OK;
}

static int copy_untouched(struct run *R, const lora_tensor *t, int fd, lora_error *err)
{
    R->res->copied_tensors++;
    if (converts(R, t))
        return convert_untouched(R, t, err);
    if (R->w) {
        int rc = lora_stw_copy(R->w, t->name, fd, t->offset, err);
        if (rc)
            return rc;
    }
    progress(R, t->nbytes);
    return LORA_OK;
}

/* What the unmerge of S says about W0: exact per element against a
 * reference, all-or-nothing from the receipt's hashes, or only a bound
 * without either. */
static void judge_unmerge(struct run *R, struct tstate *S, const lora_merge_stats *ust,
                          const unsigned char in_hash[32], const unsigned char out_hash[32],
                          int have_ref)
{
    lora_tensor_report *tr = &S->tr;
    uint64_t numel = S->t->numel;
    tr->fixes = ust->fixes;
    R->res->fixes += S->nnew ? 0 : ust->fixes;
    if (S->rt) {
        int ok_in = sodium_memcmp(in_hash, S->rt->merged_hash, 32) == 0;
        int ok_out = sodium_memcmp(out_hash, S->rt->base_hash, 32) == 0;
        tr->hash_ok = ok_in && ok_out;
        if (!tr->hash_ok)
            R->res->hash_mismatches++;
    }
    if (have_ref) {
        tr->exact = numel - ust->inexact;
        tr->max_ulps = ust->max_ulps;
        tr->known = 1;
        tr->may_differ = ust->inexact;
    } else if (S->rt) {
        /* the hashes decide; unknown per element when they differ */
        tr->exact = tr->hash_ok ? numel : 0;
        tr->known = tr->hash_ok;
        tr->may_differ = tr->hash_ok ? 0 : numel;
    } else {
        /* no receipt, no reference: W0 is unknown; exact counts only
         * what is certainly wrong, may_differ bounds it from above */
        tr->exact = numel - ust->inexact;
        tr->known = 0;
        tr->may_differ = ust->may_differ;
    }
    R->res->inexact += numel - tr->exact;
    R->res->may_differ += tr->may_differ;
    R->res->nonfinite += ust->nonfinite;
    if (ust->max_ulps > R->res->max_ulps)
        R->res->max_ulps = ust->max_ulps;
}

/* DoRA (dora.c): which steps take a DoRA module out or put one in,
 * checked before any work.  A DoRA merge is undone only with the row
 * norms its receipt keeps. */
static int dora_steps(const struct run *R, struct tstate *S, lora_error *err)
{
    if ((S->odora = lora_terms_dora(S->oldt, S->nold, S->t->name, err)) < 0)
        return -S->odora;
    if ((S->ndora = lora_terms_dora(S->newt, S->nnew, S->t->name, err)) < 0)
        return -S->ndora;
    if (S->rt && S->odora != S->rt->dora)
        return lora_seterr(err, LORA_EINPUT, "%s: the receipt says it was merged %s DoRA, but "
                           "module %s is %sa DoRA module", S->t->name,
                           S->rt->dora ? "with" : "without", S->oldt[0].module->name,
                           S->odora ? "" : "not ");
    if (S->odora && !S->rt)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: merged with DoRA module %s: without the merge receipt W0 cannot "
                           "be known (the merge rescaled each output row by m / ||W0 + dW||, "
                           "which the merged weights do not record); give the receipt%s",
                           S->t->name, S->oldt[0].module->name,
                           R->rin ? "" : " (--receipt)");
    return LORA_OK;
}

static int dora_unmerge(struct run *R, const struct tstate *S, const lora_tjob *j,
                        lora_error *err)
{
    uint64_t out = S->oldt[0].module->out;
    double *norm = malloc((size_t)out * sizeof *norm);
    if (!norm)
        return lora_oom(err);
    int rc = lora_receipt_dora_norms(R->rin, S->rti, norm, out, err);
    if (!rc)
        rc = lora_dora_run(j, norm, lora_engine_threads(R->eng), err);
    free(norm);
    return rc;
}

/* Take the old adapters out of S->t: W0 goes to the output, or to
 * R->tmp when new adapters go in next. */
static int unmerge_step(struct run *R, struct tstate *S, lora_error *err)
{
    const lora_tensor *t = S->t;
    lora_merge_stats ust = {0};
    unsigned char in_hash[32] = {0}, out_hash[32] = {0};
    lora_tjob j;
    memset(&j, 0, sizeof j);
    j.name = t->name;
    j.in_dt = t->dtype;
    j.out_dt = S->base_dt;
    j.rows = S->rows;
    j.cols = S->cols;
    j.src = t->data;
    j.terms = S->oldt;
    j.nterms = S->nold;
    j.unmerge = 1;
    j.allow_nonfinite = R->o->allow_nonfinite;
    j.stats = &ust;
    /* the restored base's digest is checked against the receipt or goes
     * into the new one; the merged one only against the receipt, in its
     * kind (lora-receipt(5)) */
    j.hash = S->rt || (S->nnew && R->rout);
    j.in_hk = S->rt ? lora_receipt_merged_kind(R->rin) : LORA_TH_SKIP;
    j.out_hk = S->rt ? lora_receipt_base_kind(R->rin) : LORA_TH_NEW_BASE;
    j.in_hash = in_hash;
    j.out_hash = out_hash;
    R->fixes.n = 0;
    if (S->rt) {
        int rc = lora_receipt_fixes(R->rin, S->rti, &R->fixes, err);
        if (rc)
            return rc;
        j.fixes = &R->fixes;
    }
    if (R->ref) {
        const lora_tensor *reft = lora_ckpt_find(R->ref, t->name, NULL);
        if (!reft || reft->dtype != S->base_dt || reft->numel != t->numel)
            return lora_seterr(err, LORA_EINPUT, "%s: the reference has no %s tensor of this shape",
                               t->name, lora_dtype_name(S->base_dt));
        j.ref = reft->data;
    }
    if (S->nnew) {
        uint64_t need = t->numel * (lora_dtype_bits(S->base_dt) / 8);
        if (need > R->tmpcap) {
            unsigned char *n = realloc(R->tmp, need);
            if (!n)
                return lora_oom(err);
            R->tmp = n;
            R->tmpcap = need;
        }
        j.dst = R->tmp;
    } else {
        j.sink = R->w ? sink_stw : sink_null;
        j.sink_arg = R->w ? R : NULL;
        j.sink_lend = R->w ? sink_stw_lend : NULL;
        j.sink_unlend = R->w ? sink_stw_unlend : NULL;
    }
    int rc = S->odora ? dora_unmerge(R, S, &j, err) : lora_engine_run(R->eng, &j, err);
    if (rc)
        return rc;
    judge_unmerge(R, S, &ust, in_hash, out_hash, j.ref != NULL);
    memcpy(S->base_hash, out_hash, 32);
    if (S->nnew) {
        S->src = R->tmp;
        S->src_dt = S->base_dt;
    }
    return LORA_OK;
}

/* The receipt's entry for a tensor merge_step wrote: its terms, both
 * hashes and the corrections in R->fixes. */
static int record_tensor(struct run *R, const struct tstate *S, lora_dtype out_dt,
                         const unsigned char merged_hash[32], const double *norm,
                         lora_error *err)
{
    lora_receipt_term rterms[64];
    for (size_t k = 0; k < S->nnew; k++) {
        const lora_module *m = S->newt[k].module;
        size_t ai = 0;
        for (size_t a = 0; a < R->nadd; a++)
            if (m >= R->add[a].ad->modules && m < R->add[a].ad->modules + R->add[a].ad->n_modules)
                ai = a;
        rterms[k] = (lora_receipt_term){ai, m->name, m->scale, m->transpose};
    }
    lora_receipt_tensor rt2;
    memset(&rt2, 0, sizeof rt2);
    rt2.name = (char *)S->t->name;
    rt2.base_dtype = S->src_dt;
    rt2.dtype = out_dt;
    rt2.rows = S->rows;
    rt2.cols = S->cols;
    memcpy(rt2.base_hash, S->rec_hash, 32);
    memcpy(rt2.merged_hash, merged_hash, 32);
    rt2.terms = rterms;
    rt2.nterms = S->nnew;
    if (norm) { /* a DoRA merge: its row norms (receipt version 4) */
        rt2.dora = 1;
        rt2.dora_norm = norm;
        rt2.dora_length = 8 * S->newt[0].module->out;
    }
    return lora_receipt_add_tensor(R->rout, &rt2, &R->fixes, err);
}

/* Put the new adapters into S->src and write the result. */
static int merge_step(struct run *R, struct tstate *S, lora_error *err)
{
    lora_merge_stats st = {0};
    unsigned char in_hash[32], merged_hash[32];
    lora_tjob j;
    memset(&j, 0, sizeof j);
    j.name = S->t->name;
    j.in_dt = S->src_dt;
    j.out_dt = out_dtype(R, S->src_dt);
    j.rows = S->rows;
    j.cols = S->cols;
    j.src = S->src;
    j.terms = S->newt;
    j.nterms = S->nnew;
    j.mode = R->o->rounding;
    j.allow_nonfinite = R->o->allow_nonfinite;
    j.stats = &st;
    j.hash = R->rout != NULL;
    /* base digest: SHA-256 (lora_base), already taken by unmerge_step in
     * a task switch unless the receipt undone is of another kind; merged
     * digest: XXH3-128 (receipt version 5) */
    int hashed = S->nold && (!S->rt || lora_receipt_base_kind(R->rin) == LORA_TH_NEW_BASE);
    j.in_hk = hashed ? LORA_TH_SKIP : LORA_TH_NEW_BASE;
    j.out_hk = LORA_TH_XXH3;
    j.in_hash = in_hash;
    j.out_hash = merged_hash;
    R->fixes.n = 0;
    R->fixes.coded = 1; /* receipt version 3 and 4: ranks of ambiguous elements */
    j.record_fixes = R->rout != NULL;
    j.out_fixes = &R->fixes;
    j.sink = R->w ? sink_stw : sink_null;
    j.sink_arg = R->w ? R : NULL;
    j.sink_lend = R->w ? sink_stw_lend : NULL;
    j.sink_unlend = R->w ? sink_stw_unlend : NULL;
    double *norm = NULL;
    int rc;
    if (S->ndora)
        rc = !(norm = malloc((size_t)S->newt[0].module->out * sizeof *norm))
                 ? lora_oom(err)
                 : lora_dora_run(&j, norm, lora_engine_threads(R->eng), err);
    else
        rc = lora_engine_run(R->eng, &j, err);
    if (!rc)
        memcpy(S->rec_hash, hashed ? S->base_hash : in_hash, 32);
    S->tr.fixes = st.fixes;
    R->res->fixes += st.fixes;
    R->res->nonfinite += st.nonfinite;
    if (!rc && R->rout)
        rc = record_tensor(R, S, j.out_dt, merged_hash, norm, err);
    free(norm);
    return rc;
}

/* The rules between modules_to_save and adapters on one tensor: a
 * tensor is replaced or adapted, never both, and a receipt that does not
 * keep what it replaced is not this merge's. */
static int check_saved(struct run *R, const lora_tensor *t, const struct tstate *S,
                       const lora_saved *sv, const lora_receipt_saved *ks, lora_error *err)
{
    if (ks && (S->nnew || S->nold))
        return lora_seterr(err, LORA_EUSAGE, "%s: replaced by modules_to_save in the merge undone "
                           "and adapted now: unmerge first, then merge", t->name);
    if (!ks && R->rin && lora_receipt_version(R->rin) >= 2 && saved_for(R->undo, R->nundo, t->name))
        return lora_seterr(err, LORA_ECHECK, "%s: the adapter replaces this tensor "
                           "(modules_to_save) but the receipt does not keep its base values (a "
                           "receipt of another merge?)", t->name);
    if (sv && !ks && (S->nnew || S->nold))
        return lora_seterr(err, LORA_EUSAGE, "%s: replaced by modules_to_save and adapted at once",
                           t->name);
    return LORA_OK;
}

static int do_tensor(struct run *R, const lora_tensor *t, int fd, lora_error *err)
{
    struct tstate S;
    memset(&S, 0, sizeof S);
    S.t = t;
    S.nnew = terms_for(R->add, R->nadd, t->name, S.newt, 64);
    const lora_saved *sv = saved_for(R->add, R->nadd, t->name);
    int rc = old_terms(R, t, S.oldt, &S.nold, &S.rt, &S.rti, &S.base_dt, err);
    if (rc)
        return rc;
    const lora_receipt_saved *ks = R->rin ? lora_receipt_saved_find(R->rin, t->name) : NULL;
    if ((rc = check_saved(R, t, &S, sv, ks, err)))
        return rc;
    if (ks || sv)
        return do_replaced(R, t, sv, ks, err);
    R->res->tensors++;
    if (!S.nold && !S.nnew)
        return copy_untouched(R, t, fd, err);
    if (!is2d(t, &S.rows, &S.cols))
        return lora_seterr(err, LORA_EINPUT, "%s: an adapted tensor must have two dimensions",
                           t->name);
    R->res->changed_tensors++;
    R->res->elements += t->numel;
    S.tr = (lora_tensor_report){t->name, t->numel, 0, 0, 0, -1, 1, 0};
    S.src = t->data;
    S.src_dt = t->dtype;
    R->cur = t->name;
    if ((rc = dora_steps(R, &S, err)))
        return rc;
    if (S.nold && (rc = unmerge_step(R, &S, err)))
        return rc;
    if (S.nnew && (rc = merge_step(R, &S, err)))
        return rc;
    if (S.rt && (rc = push_base(&R->chk, t->name, S.base_hash, err)))
        return rc;
    if (S.nnew && R->rout && (rc = push_base(&R->rec, t->name, S.rec_hash, err)))
        return rc;
    report(R, &S.tr);
    progress(R, t->nbytes);
    return LORA_OK;
}

/* ---- metadata: the merges a checkpoint records ------------------------ */

static json_t *merges_of(lora_st *st)
{
    const char *v = lora_st_metadata(st, MERGES_KEY);
    json_t *j = v ? json_loads(v, 0, NULL) : NULL;
    if (!json_is_array(j)) {
        json_decref(j);
        j = json_array();
    }
    return j;
}

static int records(json_t *merges, const unsigned char h[32])
{
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, h, 32);
    size_t i;
    json_t *e;
    json_array_foreach(merges, i, e) {
        const char *s = json_string_value(json_object_get(e, "blake2b"));
        if (s && strcmp(s, hex) == 0)
            return 1;
    }
    return 0;
}

static char *new_merges(struct run *R, lora_st *st)
{
    json_t *m = merges_of(st);
    for (size_t u = 0; u < R->nundo; u++) {
        char hex[65];
        sodium_bin2hex(hex, sizeof hex, R->undo_hash[u], 32);
        for (size_t i = 0; i < json_array_size(m);) {
            const char *s = json_string_value(json_object_get(json_array_get(m, i), "blake2b"));
            if (s && strcmp(s, hex) == 0)
                json_array_remove(m, i);
            else
                i++;
        }
    }
    for (size_t a = 0; a < R->nadd; a++) {
        char hex[65];
        sodium_bin2hex(hex, sizeof hex, R->add_hash[a], 32);
        json_t *e = json_pack("{sssfss}", "blake2b", hex, "weight", R->add[a].weight, "adapter",
                              R->add[a].spec);
        if (e && R->o->allow_nonfinite) /* values beyond the dtype may be written as ±inf */
            json_object_set_new(e, "allow_nonfinite", json_true());
        if (e && R->o->convert_all) /* what only the receipt undoes, and the config it changed */
            json_object_set_new(e, "convert_all", json_string(lora_dtype_name(R->o->dtype)));
        if (e && R->config_orig && a == 0)
            json_object_set_new(e, "config_json", json_string(R->config_orig));
        json_array_append_new(m, e);
    }
    char *s = json_array_size(m) ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    return s;
}

/* ---- one shard --------------------------------------------------------- */

/* The dtype do_tensor will write tensor T in. */
static lora_dtype planned_dtype(struct run *R, const lora_tensor *t)
{
    lora_term tt[1];
    const lora_receipt_tensor *rt = R->rin ? lora_receipt_find(R->rin, t->name) : NULL;
    int has_old = R->rin ? rt != NULL : terms_for(R->undo, R->nundo, t->name, tt, 1) > 0;
    int has_new = terms_for(R->add, R->nadd, t->name, tt, 1) > 0;
    const lora_receipt_saved *ks = R->rin ? lora_receipt_saved_find(R->rin, t->name) : NULL;
    lora_dtype base = rt ? rt->base_dtype
                    : has_old && R->o->dtype != LORA_DT_INVALID ? R->o->dtype : t->dtype;
    if (has_new)
        return out_dtype(R, base);
    if (has_old)
        return base;
    if (saved_for(R->add, R->nadd, t->name))
        return out_dtype(R, ks ? ks->dtype : t->dtype);
    if (!ks && converts(R, t))
        return R->o->dtype;
    return ks ? ks->dtype : t->dtype;
}

/* The receipt's record of shard SI (NULL: none, or a version 1 receipt). */
static const lora_receipt_file *rin_file(struct run *R, size_t si)
{
    if (!R->rin)
        return NULL;
    const lora_receipt_file *f = lora_receipt_file_find(R->rin, lora_ckpt_shard_name(R->ck, si));
    if (!f && !lora_ckpt_is_sharded(R->ck) && lora_receipt_file_count(R->rin) == 1)
        f = lora_receipt_file_at(R->rin, 0); /* a single file merged under another name */
    return f;
}

/* Which layout the output of shard SI keeps: the base's as the receipt
 * kept it (an unmerge writes it verbatim: the base's bytes come back),
 * else the input's, else (dtypes changed) the writer's own. */
static int choose_layout(struct run *R, size_t si, const unsigned char *in_hdr, size_t in_len,
                         lora_error *err)
{
    lora_st *st = lora_ckpt_shard(R->ck, si);
    const lora_receipt_file *rf = rin_file(R, si);
    int rin_ok = rf != NULL, in_ok = 1;
    for (size_t i = 0; i < lora_st_count(st); i++) {
        const lora_tensor *t = lora_st_tensor(st, i);
        const lora_receipt_tensor *rt = R->rin ? lora_receipt_find(R->rin, t->name) : NULL;
        const lora_receipt_saved *ks = R->rin ? lora_receipt_saved_find(R->rin, t->name) : NULL;
        lora_dtype dt = planned_dtype(R, t);
        rin_ok &= dt == (rt ? rt->base_dtype : ks ? ks->dtype : t->dtype);
        in_ok &= dt == t->dtype;
    }
    if (rin_ok)
        return lora_stw_set_layout(R->w, rf->header, (size_t)rf->header_len, R->nadd == 0, err);
    if (in_ok)
        return lora_stw_set_layout(R->w, in_hdr + 8, in_len - 8, 0, err);
    R->kept_all = 0;
    return LORA_OK;
}

static int start_writer(struct run *R, size_t si, const char *outpath,
                        const unsigned char *in_hdr, size_t in_len, lora_error *err)
{
    lora_st *st = lora_ckpt_shard(R->ck, si);
    int rc = lora_stw_new_for(outpath, st, &R->w, err); /* GGUF in, GGUF out */
    if (rc)
        return rc;
    for (size_t i = 0; i < lora_st_metadata_count(st) && !rc; i++) {
        const char *k, *v;
        lora_st_metadata_at(st, i, &k, &v);
        if (strcmp(k, MERGES_KEY) != 0 && strcmp(k, BASE_KEY) != 0)
            rc = lora_stw_set_metadata(R->w, k, v, err);
    }
    char *m = rc ? NULL : new_merges(R, st);
    if (m) {
        rc = lora_stw_set_metadata(R->w, MERGES_KEY, m, err);
        free(m);
    }
    if (!rc && R->rout) /* the value is known at the end: patched in */
        rc = lora_stw_set_metadata(R->w, BASE_KEY, BASE_PLACEHOLDER, err);
    for (size_t i = 0; i < lora_st_count(st) && !rc; i++) {
        const lora_tensor *t = lora_st_tensor(st, i);
        rc = lora_stw_declare(R->w, t->name, planned_dtype(R, t), t->ndim, t->shape, err);
    }
    int untie = R->untie && lora_st_find(st, R->untie->name) == R->untie;
    if (!rc && untie) /* a new tensor: the input's layout cannot be kept */
        rc = lora_stw_declare(R->w, LORA_UNTIED_HEAD, out_dtype(R, R->untie->dtype),
                              R->untie->ndim, R->untie->shape, err);
    if (untie)
        R->kept_all = 0;
    else if (!rc)
        rc = choose_layout(R, si, in_hdr, in_len, err);
    /* tensor data page-aligned in the file: the engine's blocks, from
     * page-aligned buffers, then go to the disk directly (direct_io.c);
     * an unmerge's verbatim layout keeps the base's header instead */
    if (!rc)
        rc = lora_stw_set_align(R->w, 4096, err);
    if (!rc)
        rc = lora_stw_start(R->w, err);
    if (rc) {
        lora_stw_abort(R->w);
        R->w = NULL;
    }
    return rc;
}

/* After the tensors of shard SI: the restored tensors must be the base
 * the merged file itself records (not only the receipt), and a merge
 * records that base in its output and the output in its receipt. */
static int finish_provenance(struct run *R, size_t si, const unsigned char *in_hdr,
                             size_t in_len, lora_error *err)
{
    lora_st *st = lora_ckpt_shard(R->ck, si);
    const lora_receipt_file *rf = rin_file(R, si);
    const unsigned char *bh = rf ? rf->header : in_hdr + 8;
    size_t bl = rf ? (size_t)rf->header_len : in_len - 8;
    char hex[65];
    base_digest(R, &R->chk, R->rin ? lora_receipt_base_kind(R->rin) : LORA_TH_BLAKE2B, bh, bl,
                hex);
    const char *rec = lora_st_metadata(st, BASE_KEY);
    if (R->rin && rec && strcmp(rec, hex) != 0)
        return lora_seterr(err, LORA_ECHECK,
                           "%s: the restored tensors are not the base this merged file records "
                           "(%s %.16s..., restored %.16s...): the receipt was altered or is not "
                           "this file's; nothing written",
                           lora_ckpt_shard_name(R->ck, si), BASE_KEY, rec, hex);
    if (!R->rout || !R->w)
        return LORA_OK;
    base_digest(R, &R->rec, LORA_TH_NEW_BASE, bh, bl, hex);
    int rc = lora_stw_patch_metadata(R->w, BASE_KEY, hex, err);
    size_t hl;
    const unsigned char *h = lora_stw_header(R->w, &hl);
    unsigned char mh[32];
    crypto_generichash(mh, 32, h, hl, NULL, 0);
    if (!rc)
        rc = lora_receipt_add_file(R->rout, lora_ckpt_shard_name(R->ck, si), bh, bl, mh, err);
    return rc;
}

static int do_shard(struct run *R, size_t si, const char *outpath, lora_error *err)
{
    lora_st *st = lora_ckpt_shard(R->ck, si);
    unsigned char *in_hdr = NULL;
    size_t in_len = 0;
    int rc = read_header(st, &in_hdr, &in_len, err);
    R->w = NULL;
    R->chk.n = R->rec.n = 0;
    if (!rc && outpath)
        rc = start_writer(R, si, outpath, in_hdr, in_len, err);
    if (lora_st_count(st))
        prefetch(lora_st_tensor(st, 0)->data, lora_st_tensor(st, 0)->nbytes);
    for (size_t i = 0; i < lora_st_count(st) && !rc; i++) {
        const lora_tensor *t = lora_st_tensor(st, i);
        if (i + 1 < lora_st_count(st)) /* the next one while this one is done */
            prefetch(lora_st_tensor(st, i + 1)->data, lora_st_tensor(st, i + 1)->nbytes);
        rc = do_tensor(R, t, lora_st_fd(st), err);
        release(t->data, t->nbytes);
        const lora_tensor *rt = R->ref ? lora_ckpt_find(R->ref, t->name, NULL) : NULL;
        if (rt)
            release(rt->data, rt->nbytes);
    }
    if (!rc && R->untie && lora_st_find(st, R->untie->name) == R->untie) {
        /* the untied head: the embedding's values plus the update */
        lora_tensor head = *R->untie;
        head.name = LORA_UNTIED_HEAD;
        rc = do_tensor(R, &head, lora_st_fd(st), err);
        R->res->untied = 1;
    }
    if (!rc && !R->res->hash_mismatches)
        rc = finish_provenance(R, si, in_hdr, in_len, err);
    if (R->w) {
        if (rc || R->res->hash_mismatches)
            lora_stw_abort(R->w);
        else
            rc = lora_stw_commit(R->w, err);
        R->w = NULL;
    }
    free(in_hdr);
    return rc;
}

/* ---- folders ----------------------------------------------------------- */

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static char *join(const char *a, const char *b)
{
    char *s;
    if (asprintf(&s, "%s/%s", a, b) < 0)
        return NULL;
    return s;
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char *p = join(dir, e->d_name);
            if (p) {
                unlink(p);
                free(p);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Files that travel with a checkpoint folder: configs and tokenizers. */
static int aux_file(const char *name)
{
    if (name[0] == '.' || has_suffix(name, ".safetensors") || has_suffix(name, ".index.json") ||
        has_suffix(name, ".receipt") || has_suffix(name, ".bin") || has_suffix(name, ".pt") ||
        has_suffix(name, ".pth") || has_suffix(name, ".gguf") || has_suffix(name, ".h5") ||
        has_suffix(name, ".msgpack") || strstr(name, ".tmp-"))
        return 0;
    return has_suffix(name, ".json") || has_suffix(name, ".model") || has_suffix(name, ".txt") ||
           has_suffix(name, ".tiktoken") || has_suffix(name, ".md") || has_suffix(name, ".py");
}

static int copy_aux(const char *from, const char *to, lora_error *err)
{
    DIR *d = opendir(from);
    if (!d)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s", from);
    struct dirent *e;
    int rc = LORA_OK;
    while (!rc && (e = readdir(d))) {
        if (!aux_file(e->d_name))
            continue;
        char *s = join(from, e->d_name), *t = join(to, e->d_name);
        struct stat sb;
        if (!s || !t)
            rc = lora_oom(err);
        else if (stat(s, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size < (64 << 20)) {
            char *buf;
            size_t len;
            rc = lora_read_file(s, 64 << 20, &buf, &len, err);
            if (!rc) {
                rc = lora_write_file_atomic(t, buf, len, 0644, err);
                free(buf);
            }
        }
        free(s);
        free(t);
    }
    closedir(d);
    return rc;
}

static int write_index(struct run *R, const char *dir, lora_error *err)
{
    /* the base's index as the receipt kept it, or the input's when every
     * shard kept its layout (the index then says the same) */
    uint64_t klen = 0;
    const unsigned char *kept = R->rin && !R->nadd ? lora_receipt_index(R->rin, &klen) : NULL;
    if (!kept && R->kept_all && R->in_index) {
        kept = (const unsigned char *)R->in_index;
        klen = R->in_index_len;
    }
    if (kept) {
        char *p = join(dir, "model.safetensors.index.json");
        int rc = p ? lora_write_file_atomic(p, kept, (size_t)klen, 0644, err) : lora_oom(err);
        free(p);
        return rc;
    }
    json_t *root = json_object(), *map = json_object(), *meta = json_object();
    uint64_t total = 0;
    for (size_t s = 0; s < lora_ckpt_shard_count(R->ck); s++) {
        lora_st *st = lora_ckpt_shard(R->ck, s);
        for (size_t i = 0; i < lora_st_count(st); i++) {
            const lora_tensor *t = lora_st_tensor(st, i);
            json_object_set_new(map, t->name, json_string(lora_ckpt_shard_name(R->ck, s)));
            total += t->nbytes; /* adjusted below for converted tensors */
            if (R->untie == t)
                json_object_set_new(map, LORA_UNTIED_HEAD,
                                    json_string(lora_ckpt_shard_name(R->ck, s)));
        }
    }
    (void)total;
    /* total_size: the bytes of tensor data in the new shards */
    uint64_t sum = 0;
    for (size_t s = 0; s < lora_ckpt_shard_count(R->ck); s++) {
        char *p = join(dir, lora_ckpt_shard_name(R->ck, s));
        lora_st *st;
        if (!p)
            return lora_oom(err);
        if (lora_st_open(p, &st, err) == LORA_OK) {
            for (size_t i = 0; i < lora_st_count(st); i++)
                sum += lora_st_tensor(st, i)->nbytes;
            lora_st_close(st);
        }
        free(p);
    }
    json_object_set_new(meta, "total_size", json_integer((json_int_t)sum));
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "weight_map", map);
    char *text = lora_json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (!text)
        return lora_oom(err);
    char *p = join(dir, "model.safetensors.index.json");
    int rc = p ? lora_write_file_atomic(p, text, strlen(text), 0644, err) : lora_oom(err);
    free(p);
    free(text);
    return rc;
}

/* ---- checks before any work ------------------------------------------- */

static int same_file(const char *a, const char *b)
{
    struct stat x, y;
    return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

static int out_collides(struct run *R, const char *input, const char *out, lora_error *err)
{
    const char *dir = lora_ckpt_dir(R->ck);
    if (same_file(out, input) || same_file(out, dir))
        return lora_seterr(err, LORA_EUSAGE, "%s: the output is the input", out);
    for (size_t s = 0; s < lora_ckpt_shard_count(R->ck); s++) {
        char *p = join(dir, lora_ckpt_shard_name(R->ck, s));
        int c = p && same_file(out, p);
        free(p);
        if (c)
            return lora_seterr(err, LORA_EUSAGE, "%s: the output is a shard of the input", out);
    }
    lora_merge_adapter *sets[2] = {R->undo, R->add};
    size_t ns[2] = {R->nundo, R->nadd};
    for (int k = 0; k < 2; k++)
        for (size_t a = 0; a < ns[k]; a++)
            if (sets[k][a].ad->path && same_file(out, sets[k][a].ad->path))
                return lora_seterr(err, LORA_EUSAGE, "%s: the output is an adapter", out);
    if (R->o->receipt_in && (same_file(out, R->o->receipt_in) ||
                             (R->o->receipt_out && same_file(R->o->receipt_out, R->o->receipt_in))))
        return lora_seterr(err, LORA_EUSAGE, "%s: the output would overwrite the receipt being read",
                           out);
    if (R->o->receipt_out && (same_file(R->o->receipt_out, input) ||
                              same_file(R->o->receipt_out, dir)))
        return lora_seterr(err, LORA_EUSAGE, "%s: the receipt would overwrite the input",
                           R->o->receipt_out);
    return LORA_OK;
}

static const char *who(const struct run *R)
{
    return R->nadd ? "lora-merge" : "lora-unmerge";
}

/* Is the input (merge) or the reference (unmerge --check --base) the
 * base each adapter was made for (baseid.c)?  In a task switch the base
 * exists only tensor by tensor in memory: the receipt's hashes check
 * it against the first merge's base, the new adapter's recorded
 * identity cannot be checked (said so). */
static int rc_bases(struct run *R, lora_error *err)
{
    const lora_adapter *ads[128];
    size_t n = 0;
    for (size_t a = 0; a < R->nadd; a++) {
        if (!R->nundo) { /* a task switch: switch_bases, once the base can be restored */
            int rc = lora_base_check(R->add[a].ad, R->ck, R->o->any_base, who(R), R->o->warn, err);
            if (rc)
                return rc;
        }
        if (n < 128)
            ads[n++] = R->add[a].ad;
    }
    for (size_t u = 0; u < R->nundo && R->ref; u++) {
        int rc = lora_base_check(R->undo[u].ad, R->ref, R->o->any_base, who(R), R->o->warn, err);
        if (rc)
            return rc;
    }
    lora_base_check_several(ads, n, who(R), R->o->warn);
    return LORA_OK;
}

/* lora_base_hash of the base a task switch restores, for the tensors AD
 * changes: each unmerged (with the receipt's corrections) into R->tmp,
 * in the order of the hash.  A pass of its own before the work: the
 * streaming pass meets the tensors in file order, the hash needs them
 * sorted. */
static int switch_identity(struct run *R, const lora_adapter *ad, unsigned char out[32],
                           lora_error *err)
{
    const char **names;
    size_t n;
    int rc = lora_base_targets(ad, &names, &n, err);
    if (rc)
        return rc;
    lora_hasher *h = NULL;
    if ((rc = lora_hasher_new(32, &h, err)))
        goto done;
    for (size_t i = 0; i < n && !rc; i++) {
        const lora_tensor *t = lora_ckpt_find(R->ck, names[i], NULL);
        if (!t) {
            rc = lora_seterr(err, LORA_EINPUT, "base has no tensor %s", names[i]);
            break;
        }
        lora_term oldt[64];
        size_t nold, rti;
        const lora_receipt_tensor *rt;
        lora_dtype bdt;
        if ((rc = old_terms(R, t, oldt, &nold, &rt, &rti, &bdt, err)))
            break;
        if (!nold || t->ndim != 2) {
            lora_base_hash_tensor_heads(h, t->name, t->dtype, t->ndim, t->shape, t->data,
                                        t->nbytes, lora_ckpt_permuted_heads(R->ck, t));
            continue;
        }
        uint64_t need = t->numel * (lora_dtype_bits(bdt) / 8);
        if (need > R->tmpcap) {
            unsigned char *b = realloc(R->tmp, need);
            if (!b) {
                rc = lora_oom(err);
                break;
            }
            R->tmp = b;
            R->tmpcap = need;
        }
        lora_tjob j;
        memset(&j, 0, sizeof j);
        j.name = t->name;
        j.in_dt = t->dtype;
        j.out_dt = bdt;
        j.rows = t->shape[0];
        j.cols = t->shape[1];
        j.src = t->data;
        j.dst = R->tmp;
        j.terms = oldt;
        j.nterms = nold;
        j.unmerge = 1;
        R->fixes.n = 0;
        if (rt && (rc = lora_receipt_fixes(R->rin, rti, &R->fixes, err)))
            break;
        j.fixes = rt ? &R->fixes : NULL;
        unsigned char ih[32], oh[32];
        j.hash = rt != NULL;
        j.in_hk = rt ? lora_receipt_merged_kind(R->rin) : LORA_TH_BLAKE2B;
        j.out_hk = rt ? lora_receipt_base_kind(R->rin) : LORA_TH_BLAKE2B;
        j.in_hash = ih;
        j.out_hash = oh;
        if ((rc = lora_engine_run(R->eng, &j, err)))
            break;
        if (rt && (sodium_memcmp(ih, rt->merged_hash, 32) || sodium_memcmp(oh, rt->base_hash, 32))) {
            rc = -1; /* not the receipt's merge: the main pass refuses it */
            break;
        }
        lora_base_hash_tensor_heads(h, t->name, bdt, t->ndim, t->shape, R->tmp, need,
                                    lora_ckpt_permuted_heads(R->ck, t));
    }
    if (!rc) {
        lora_hasher_final(h, out); /* frees h */
        h = NULL;
    }
done:
    lora_hasher_free(h);
    free(names);
    return rc;
}

/* A task switch: each new adapter's recorded identity against the base
 * the switch restores.  With the receipt that base is exact, so a
 * mismatch is refused (any_base: warned); without one it is a note. */
static int switch_bases(struct run *R, lora_error *err)
{
    for (size_t a = 0; a < R->nadd && R->nundo && !R->o->shard; a++) {
        const lora_adapter *ad = R->add[a].ad;
        if (!ad->has_base_hash)
            continue;
        unsigned char h[32];
        int rc = switch_identity(R, ad, h, err);
        if (rc == -1)
            return LORA_OK; /* the receipt does not fit: said by the main pass */
        if (rc)
            return lora_err_prefix(err, "%s: base identity", R->add[a].spec);
        if (!memcmp(h, ad->base_hash, 32))
            continue;
        char want[LORA_HASH_HEX], got[LORA_HASH_HEX];
        lora_hex(ad->base_hash, 32, want);
        lora_hex(h, 32, got);
        const char *name = ad->recorded_base ? ad->recorded_base
                         : ad->base_model   ? ad->base_model
                                            : "(unnamed)";
        if (!R->rin || R->o->any_base) {
            if (R->o->warn)
                fprintf(R->o->warn, "%s: %s: %s: the restored base's identity %s is not the one "
                                    "the adapter was made for (base %s, identity %s)%s\n",
                        who(R), R->rin ? "WARNING: --any-base" : "note", R->add[a].spec, got,
                        name, want,
                        R->rin ? "" : "; without a receipt the restore is not exact, so this "
                                      "proves nothing");
            continue;
        }
        return lora_seterr(err, LORA_ECHECK,
                           "%s: wrong base: the adapter was made for base %s (identity %s), the "
                           "base this task switch restores has identity %s; nothing written "
                           "(--any-base to use it anyway)", R->add[a].spec, name, want, got);
    }
    return LORA_OK;
}

/* After an unmerge, the restored checkpoint at PATH (complete, not yet
 * renamed) against the identity each adapter's archive records: with a
 * receipt the restore is exact, so a mismatch means the merge was made
 * into another base (refused unless any_base); without one a mismatch
 * may be rounding, so it is a note, and a match proves the base. */
static int check_restored(struct run *R, const char *path, lora_error *err)
{
    int any = 0;
    for (size_t u = 0; u < R->nundo; u++)
        any |= R->undo[u].ad->has_base_hash;
    if (!any || R->nadd || !path)
        return LORA_OK;
    lora_ckpt *ck;
    int rc = lora_ckpt_open(path, &ck, err);
    if (rc)
        return rc;
    for (size_t u = 0; u < R->nundo && !rc; u++) {
        char msg[600];
        int r = lora_base_identity_mismatch(R->undo[u].ad, ck, msg, sizeof msg, err);
        if (r < 0) {
            rc = -r;
        } else if (r && !R->rin) {
            if (R->o->warn)
                fprintf(R->o->warn, "%s: note: %s: the restored base cannot be matched with the "
                                    "base identity the archive records (unmerge without a receipt "
                                    "is not exact)\n", who(R), R->undo[u].spec);
        } else if (r && R->o->any_base) {
            if (R->o->warn)
                fprintf(R->o->warn, "%s: WARNING: --any-base: %s: the restored checkpoint is not "
                                    "the adapter's base: %s\n", who(R), R->undo[u].spec, msg);
        } else if (r) {
            rc = lora_seterr(err, LORA_ECHECK, "%s: the restored checkpoint is not the adapter's "
                                               "base: %s; nothing written (--any-base to keep it)",
                             R->undo[u].spec, msg);
        } else if (!R->rin) {
            R->res->base_confirmed = 1;
        }
    }
    lora_ckpt_close(ck);
    return rc;
}

static int bind_all(struct run *R, lora_error *err)
{
    lora_merge_adapter *sets[2] = {R->undo, R->add};
    size_t ns[2] = {R->nundo, R->nadd};
    for (size_t a = 0; a < ns[0]; a++) {
        int rc = lora_adapter_bind(sets[0][a].ad, R->ck, err);
        if (rc)
            return lora_err_prefix(err, "%s", sets[0][a].spec);
    }
    /* an lm_head update on a tied head: merged, it unties (untie.c) */
    int urc = lora_untie_bind(sets[1], ns[1], R->ck, R->folder, err);
    if (urc)
        return urc;
    R->untie = lora_untie_source(sets[1], ns[1], R->ck);
    int brc = rc_bases(R, err);
    if (brc)
        return brc;
    R->undo_hash = calloc(R->nundo + 1, 32);
    R->add_hash = calloc(R->nadd + 1, 32);
    if (!R->undo_hash || !R->add_hash)
        return lora_oom(err);
    for (size_t a = 0; a < R->nundo; a++)
        lora_adapter_digest(R->undo[a].ad, R->undo_hash[a]);
    for (size_t a = 0; a < R->nadd; a++)
        lora_adapter_digest(R->add[a].ad, R->add_hash[a]);
    for (size_t a = 0; a < R->nadd; a++)
        for (size_t b = 0; b < a; b++)
            if (!memcmp(R->add_hash[a], R->add_hash[b], 32) && !R->o->force)
                return lora_seterr(err, LORA_EUSAGE,
                                   "%s and %s are the same adapter (--force to merge it twice)",
                                   R->add[b].spec, R->add[a].spec);
    if (!R->o->force) {
        lora_st *st0 = lora_ckpt_shard(R->ck, 0);
        json_t *m = merges_of(st0);
        for (size_t a = 0; a < R->nadd; a++) {
            int undone = 0;
            for (size_t u = 0; u < R->nundo; u++)
                undone |= !memcmp(R->undo_hash[u], R->add_hash[a], 32);
            if (!undone && records(m, R->add_hash[a])) {
                json_decref(m);
                return lora_seterr(err, LORA_EINPUT,
                                   "%s: the input already records a merge of this adapter "
                                   "(--force to merge it again)", R->add[a].spec);
            }
        }
        json_decref(m);
    }
    if (R->rin) {
        size_t n = lora_receipt_adapter_count(R->rin);
        R->rin_map = calloc(n, sizeof *R->rin_map);
        if (!R->rin_map)
            return lora_oom(err);
        for (size_t i = 0; i < n; i++) {
            const lora_receipt_adapter *ra = lora_receipt_adapter_at(R->rin, i);
            size_t u = 0;
            while (u < R->nundo && memcmp(R->undo_hash[u], ra->hash, 32) != 0)
                u++;
            if (u == R->nundo)
                return lora_seterr(err, LORA_EINPUT,
                                   "the receipt's adapter %s (merged with weight %g) is not among "
                                   "the adapters given", ra->path, ra->weight);
            if (R->undo[u].weight_given && R->undo[u].weight != ra->weight)
                return lora_seterr(err, LORA_EUSAGE, "%s: weight %g, but the receipt records %g",
                                   R->undo[u].spec, R->undo[u].weight, ra->weight);
            R->undo[u].weight = ra->weight;
            R->rin_map[i] = u;
        }
        for (size_t u = 0; u < R->nundo; u++) {
            int found = 0;
            for (size_t i = 0; i < n; i++)
                found |= R->rin_map[i] == u;
            if (!found)
                return lora_seterr(err, LORA_EINPUT, "%s: the receipt does not record this adapter",
                                   R->undo[u].spec);
        }
        for (size_t i = 0; i < lora_receipt_tensor_count(R->rin); i++) {
            const lora_receipt_tensor *t = lora_receipt_tensor_at(R->rin, i);
            const lora_tensor *bt = lora_ckpt_find(R->ck, t->name, NULL);
            if (!bt || bt->ndim != 2 || bt->shape[0] != t->rows || bt->shape[1] != t->cols)
                return lora_seterr(err, LORA_EINPUT,
                                   "%s: the receipt's tensor is missing from the input or has "
                                   "another shape", t->name);
        }
    }
    return LORA_OK;
}

/* The receipt must be this output's (a version 2 receipt names the
 * header of every file it merged): a crash between the renames of a
 * re-merge leaves the new output beside the old receipt, and its
 * receipt as RECEIPT.new, which is then named. */
static int check_pair(struct run *R, size_t only, lora_error *err)
{
    const char *rp = R->o->receipt_in;
    if (!R->rin || lora_receipt_version(R->rin) < 2)
        return LORA_OK;
    for (size_t s = 0; s < lora_ckpt_shard_count(R->ck); s++) {
        if (only != SIZE_MAX && s != only)
            continue;
        const lora_receipt_file *f = rin_file(R, s);
        unsigned char *h;
        size_t hl;
        unsigned char mh[32];
        int rc = read_header(lora_ckpt_shard(R->ck, s), &h, &hl, err);
        if (rc)
            return rc;
        crypto_generichash(mh, 32, h, hl, NULL, 0);
        free(h);
        if (f && sodium_memcmp(mh, f->merged_header, 32) == 0)
            continue;
        char *nw = NULL;
        lora_receipt *n = NULL;
        const lora_receipt_file *nf = NULL;
        if (asprintf(&nw, "%s.new", rp) < 0)
            nw = NULL;
        if (nw && lora_receipt_open(nw, &n, NULL) == LORA_OK) {
            for (size_t i = 0; i < lora_receipt_file_count(n) && !nf; i++)
                if (!sodium_memcmp(mh, lora_receipt_file_at(n, i)->merged_header, 32))
                    nf = lora_receipt_file_at(n, i);
        }
        rc = lora_seterr(err, LORA_ECHECK,
                         "%s: %s; %s is the receipt of another merge%s%s%s",
                         lora_ckpt_shard_name(R->ck, s),
                         f ? "not the file this receipt's merge wrote (its header differs)"
                           : "the receipt records no file of this name",
                         rp, nf ? " -- the receipt of this file is " : "", nf ? nw : "",
                         nf ? " (a re-merge was interrupted before renaming it): rename it"
                            : "");
        lora_receipt_close(n);
        free(nw);
        return rc;
    }
    return LORA_OK;
}

/* The base index of a sharded folder: the receipt's when it kept one,
 * else the input's (read for a verbatim copy and for lora_base). */
static int load_index(struct run *R, const char *input, lora_error *err)
{
    uint64_t kl = 0;
    const unsigned char *k = R->rin ? lora_receipt_index(R->rin, &kl) : NULL;
    if (k) {
        R->has_idx = 1;
        crypto_generichash(R->idx_hash, 32, k, (size_t)kl, NULL, 0);
    }
    /* a --shard run reads the index too: its shard's lora_base (and so
     * its bytes) must be the whole merge's */
    if (!lora_ckpt_is_sharded(R->ck) || (!is_dir(input) && !has_suffix(input, ".index.json")))
        return LORA_OK;
    char *p = has_suffix(input, ".index.json") ? strdup(input)
                                                : join(input, "model.safetensors.index.json");
    if (!p)
        return lora_oom(err);
    int rc = lora_read_file(p, 64 << 20, &R->in_index, &R->in_index_len, err);
    free(p);
    if (rc)
        return rc;
    if (!k && R->rout) {
        R->has_idx = 1;
        crypto_generichash(R->idx_hash, 32, (const unsigned char *)R->in_index,
                           R->in_index_len, NULL, 0);
    }
    if (R->rout) {
        const void *b = k ? (const void *)k : (const void *)R->in_index;
        size_t bl = k ? (size_t)kl : R->in_index_len;
        rc = lora_receipt_set_index(R->rout, b, bl, err);
    }
    return rc;
}

/* Commit the output (a staged file or a folder) and its receipt so that
 * every crash leaves a matching pair: a first merge puts the receipt in
 * place first (at worst a receipt without OUT); a re-merge onto an
 * existing receipt moves the new one to RECEIPT.new, then renames OUT,
 * then RECEIPT.new onto RECEIPT (a crash between is caught by
 * check_pair, which names RECEIPT.new). */
static int commit_pair(struct run *R, const char *stage, const char *tmpdir, const char *out,
                       lora_error *err)
{
    const char *rp = R->o->receipt_out;
    int rc = LORA_OK, remerge = 0;
    struct stat sb;
    if (R->rout) {
        rc = lora_receipt_finish(R->rout, err);
        R->res->receipt_bytes = lora_receipt_bytes(R->rout);
        if (!rc && R->o->receipt_key)
            rc = lora_receipt_sign(R->rout, R->o->receipt_key, err);
        remerge = !rc && lstat(rp, &sb) == 0;
        if (!rc && remerge)
            rc = lora_receipt_stage_new(R->rout, err);
        if (!rc && !remerge) {
            rc = lora_receipt_install(R->rout, err);
            R->rout = NULL;
        }
        if (rc)
            return rc;
    }
    fault_point("merge-before-output");
    const char *from = stage ? stage : tmpdir;
    if (tmpdir && stat(out, &sb) == 0)
        rmdir(out); /* checked empty before */
    if (rename(from, out) != 0) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "rename %s to %s", from, out);
        if (R->rout) {
            lora_receipt_abort(R->rout); /* the old pair stays */
            R->rout = NULL;
        } else if (rp) {
            unlink(rp); /* it describes an OUT that is not there */
        }
        return rc;
    }
    lora_tmp_forget(from);
    (void)lora_fsync_dir_of(out, NULL); /* best effort, as before */
    fault_point("merge-between-renames");
    if (R->rout) {
        rc = lora_receipt_install(R->rout, err);
        R->rout = NULL;
        if (rc)
            lora_err_prefix(err, "%s is written but its receipt is not (%s.new holds it)", out,
                            rp);
    }
    return rc;
}

/* The checkpoint, the receipt to undo (signed or not) and the reference. */
static int open_inputs(struct run *R, const char *input, lora_error *err)
{
    const lora_merge_opts *opts = R->o;
    int rc = lora_ckpt_open(input, &R->ck, err);
    if (rc)
        return rc;
    if (opts->receipt_in && opts->n_receipt_pubkeys) {
        rc = lora_receipt_open_signed(opts->receipt_in, opts->receipt_pubkeys,
                                      opts->n_receipt_pubkeys, &R->rin, err);
        struct stat sb;
        char *nw = NULL;
        if (rc == LORA_ECHECK && asprintf(&nw, "%s.new", opts->receipt_in) < 0)
            nw = NULL;
        if (nw && stat(nw, &sb) == 0) /* the signature is installed just before the receipt */
            snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
                     " (%s exists: a re-merge was interrupted before renaming it?)", nw);
        free(nw);
    } else if (opts->receipt_in) {
        rc = lora_receipt_open(opts->receipt_in, &R->rin, err);
    }
    if (rc)
        return rc;
    if (opts->reference)
        return lora_ckpt_open(opts->reference, &R->ref, err);
    return LORA_OK;
}

/* R->only: the one shard --shard names, or SIZE_MAX for all. */
static int find_shard(struct run *R, const char *input, lora_error *err)
{
    const char *shard = R->o->shard;
    R->only = SIZE_MAX;
    if (!shard)
        return LORA_OK;
    const char *want = strrchr(shard, '/') ? strrchr(shard, '/') + 1 : shard;
    for (size_t s = 0; s < lora_ckpt_shard_count(R->ck); s++)
        if (strcmp(lora_ckpt_shard_name(R->ck, s), want) == 0)
            R->only = s;
    if (!lora_ckpt_is_sharded(R->ck) || R->only == SIZE_MAX)
        return lora_seterr(err, LORA_EUSAGE, "%s: no shard named %s in this checkpoint", input, want);
    return LORA_OK;
}

static int empty_or_absent_dir(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return 1;
    DIR *d = S_ISDIR(sb.st_mode) ? opendir(path) : NULL;
    int empty = d != NULL;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            empty = 0;
    if (d)
        closedir(d);
    return empty;
}

/* Where the output is written until it is complete: a temporary folder
 * beside a folder OUT (R->tmpdir), or a reserved temporary name beside a
 * file OUT (R->stage) that is renamed only when its receipt is finished
 * (commit_pair): a disk that fills while the receipt is finished must
 * not leave OUT behind, and an interrupted run never leaves OUT beside a
 * receipt that is not its. */
static int stage_output(struct run *R, const char *out, lora_error *err)
{
    if (!R->folder) {
        int sfd = -1;
        int rc = lora_tmpfile_beside(out, 0644, &sfd, &R->stage, err);
        if (rc)
            return rc;
        close(sfd); /* reserves the name; the writer renames the finished file onto it */
        return LORA_OK;
    }
    if (!empty_or_absent_dir(out))
        return lora_seterr(err, LORA_EUSAGE, "%s: exists and is not an empty folder", out);
    if (asprintf(&R->tmpdir, "%s.tmp-XXXXXX", out) < 0) {
        R->tmpdir = NULL;
        return lora_oom(err);
    }
    if (!mkdtemp(R->tmpdir)) {
        int rc = lora_seterr_errno(err, LORA_EIO, errno, "%s", R->tmpdir);
        free(R->tmpdir);
        R->tmpdir = NULL;
        return rc;
    }
    chmod(R->tmpdir, 0755); /* mkdtemp makes it 0700; a checkpoint folder is shared */
    lora_tmp_track(R->tmpdir, 1);
    return LORA_OK;
}

static int start_receipt(struct run *R, lora_error *err)
{
    const lora_merge_opts *opts = R->o;
    if (!opts->receipt_out || opts->check_only || !R->nadd)
        return LORA_OK;
    int rc = lora_receipt_create(opts->receipt_out, opts->rounding, &R->rout, err);
    for (size_t a = 0; !rc && a < R->nadd; a++)
        rc = lora_receipt_add_adapter(R->rout, R->add[a].spec, R->add_hash[a], R->add[a].weight,
                                      err);
    return rc;
}

/* Every shard (or the one --shard names) through do_shard, into the
 * staged output when there is one. */
static int process_shards(struct run *R, int writing, lora_error *err)
{
    int rc = LORA_OK;
    for (size_t s = 0; s < lora_ckpt_shard_count(R->ck) && !rc; s++) {
        if (R->only != SIZE_MAX && s != R->only)
            continue;
        char *path = NULL;
        if (writing) {
            path = R->folder ? join(R->tmpdir, lora_ckpt_shard_name(R->ck, s)) : strdup(R->stage);
            if (!path)
                return lora_oom(err);
        }
        rc = do_shard(R, s, path, err);
        free(path);
    }
    return rc;
}

/* After the tensors: refuse what the checks found, complete a folder
 * (aux files, index, untied config), check the restore, then commit the
 * output and its receipt together. */
static int finish_output(struct run *R, const char *out, lora_error *err)
{
    const lora_merge_opts *opts = R->o;
    lora_merge_result *res = R->res;
    int rc = LORA_OK;
    if (res->hash_mismatches)
        return lora_seterr(err, LORA_ECHECK,
                           "%llu tensor(s) do not match the receipt's hashes: not restored, nothing written",
                           (unsigned long long)res->hash_mismatches);
    if (opts->check_only && res->inexact)
        return lora_seterr(err, LORA_ECHECK, "%llu element(s) not restored exactly",
                           (unsigned long long)res->inexact);
    if (R->tmpdir) {
        rc = copy_aux(lora_ckpt_dir(R->ck), R->tmpdir, err);
        if (!rc && lora_ckpt_is_sharded(R->ck))
            rc = write_index(R, R->tmpdir, err);
        if (!rc && R->untie)
            rc = lora_untie_config(R->tmpdir, err);
        if (!rc && R->config_was)
            rc = lora_config_write(R->tmpdir, R->config_was, err);
        if (!rc && opts->convert_all)
            rc = lora_config_set_dtype(R->tmpdir, opts->dtype, err);
    }
    if (!rc && R->only == SIZE_MAX && !opts->check_only)
        rc = check_restored(R, R->tmpdir ? R->tmpdir : R->stage, err);
    if (rc || (!R->stage && !R->tmpdir))
        return rc;
    if ((rc = commit_pair(R, R->stage, R->tmpdir, out, err)))
        return rc;
    /* committed: nothing left to remove */
    free(R->stage);
    free(R->tmpdir);
    R->stage = R->tmpdir = NULL;
    return LORA_OK;
}

/* --convert-all: the config.json to record (a folder written).  An
 * undone merge that converted: its recorded config.json to put back, and
 * without its receipt a refusal (the original bytes of the converted
 * tensors are only there). */
static int conversions(struct run *R, int writing, lora_error *err)
{
    if (R->o->convert_all && R->folder && writing)
        return lora_config_read(lora_ckpt_dir(R->ck), &R->config_orig, err);
    if (!R->nundo)
        return LORA_OK;
    json_t *m = merges_of(lora_ckpt_shard(R->ck, 0)), *e;
    size_t i;
    int rc = LORA_OK;
    json_array_foreach(m, i, e) {
        const char *h = json_string_value(json_object_get(e, "blake2b"));
        const char *to = json_string_value(json_object_get(e, "convert_all"));
        const char *cfg = json_string_value(json_object_get(e, "config_json"));
        int undone = 0;
        for (size_t u = 0; h && u < R->nundo && !undone; u++) {
            char hex[65];
            sodium_bin2hex(hex, sizeof hex, R->undo_hash[u], 32);
            undone = strcmp(hex, h) == 0;
        }
        if (!undone || !to)
            continue;
        if (!R->rin) {
            rc = lora_seterr(err, LORA_EINPUT, "%s was merged with --convert-all (every tensor "
                             "converted to %s): only its receipt restores the tensors no adapter "
                             "changed; give --receipt", lora_ckpt_dir(R->ck), to);
            break;
        }
        if (cfg && !R->config_was && !(R->config_was = lora_strdup(cfg, err))) {
            rc = LORA_EIO;
            break;
        }
    }
    json_decref(m);
    return rc;
}

/* Release R; after a failure, remove what was staged. */
static void run_free(struct run *R, int failed)
{
    if (R->rout)
        lora_receipt_abort(R->rout);
    if (R->tmpdir && failed) {
        rm_tree(R->tmpdir);
        lora_tmp_forget(R->tmpdir);
    }
    free(R->tmpdir);
    if (R->stage && failed)
        lora_tmp_unlink(R->stage);
    free(R->stage);
    if (R->rin)
        lora_receipt_close(R->rin);
    if (R->ref)
        lora_ckpt_close(R->ref);
    if (R->ck)
        lora_ckpt_close(R->ck);
    lora_engine_free(R->eng);
    lora_fixes_free(&R->fixes);
    free(R->tmp);
    free(R->cbuf);
    free(R->undo_hash);
    free(R->add_hash);
    free(R->rin_map);
    free(R->chk.p);
    free(R->rec.p);
    free(R->in_index);
    free(R->config_orig);
    free(R->config_was);
}

int lora_merge_run(const char *input, lora_merge_adapter *undo, size_t nundo,
                   lora_merge_adapter *add, size_t nadd, const char *out,
                   const lora_merge_opts *opts, lora_merge_result *res, lora_error *err)
{
    struct run R;
    memset(&R, 0, sizeof R);
    memset(res, 0, sizeof *res);
    res->known = opts->reference != NULL || opts->receipt_in != NULL;
    R.o = opts;
    R.res = res;
    R.undo = undo;
    R.nundo = nundo;
    R.add = add;
    R.nadd = nadd;
    R.kept_all = 1;
    if (!nundo && !nadd)
        return lora_seterr(err, LORA_EUSAGE, "no adapter given");
    if (opts->dtype != LORA_DT_INVALID && !lora_dtype_writable(opts->dtype))
        return lora_seterr(err, LORA_EUSAGE, "--dtype must be F32, F16 or BF16");
    if (opts->convert_all && (opts->dtype == LORA_DT_INVALID || nundo))
        return lora_seterr(err, LORA_EUSAGE, "--convert-all needs --dtype, and no --unmerge");
    if (!out && !opts->check_only)
        return lora_seterr(err, LORA_EUSAGE, "no output given");
    int writing = out && !opts->check_only;
    int rc = open_inputs(&R, input, err);
    if (!rc && out)
        rc = out_collides(&R, input, out, err);
    if (!rc && out) /* GGUF in, GGUF out */
        rc = lora_gguf_check_output(R.ck, out, err);
    if (!rc)
        rc = find_shard(&R, input, err);
    /* before the adapters are matched: "not this output's receipt" is
     * the cause when they are not the receipt's either */
    if (!rc)
        rc = check_pair(&R, R.only, err);
    R.folder = R.only == SIZE_MAX && (is_dir(input) || has_suffix(input, ".index.json"));
    if (!rc)
        rc = bind_all(&R, err);
    if (!rc) /* a GGUF base's permuted q/k rows: B permuted alike (gguf_checkpoint.c) */
        rc = lora_gguf_merge_prepare(R.ck, undo, nundo, add, nadd, err);
    if (!rc)
        rc = conversions(&R, writing, err);
    if (!rc)
        rc = lora_engine_new(opts->nthreads, &R.eng, err);
    if (!rc)
        rc = switch_bases(&R, err);
    for (size_t s = 0; !rc && s < lora_ckpt_shard_count(R.ck); s++)
        if (R.only == SIZE_MAX || s == R.only)
            R.total += lora_st_size(lora_ckpt_shard(R.ck, s));
    if (!rc && writing)
        rc = stage_output(&R, out, err);
    if (!rc)
        rc = start_receipt(&R, err);
    if (!rc)
        rc = load_index(&R, input, err);
    if (!rc)
        rc = process_shards(&R, writing, err);
    if (!rc)
        rc = finish_output(&R, out, err);
    run_free(&R, rc != LORA_OK);
    return rc;
}

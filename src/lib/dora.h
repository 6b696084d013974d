/*
 * dora.h - internal interface of DoRA merging and unmerging (dora.c),
 * used by merge.c (lora-merge, lora-unmerge, task switch), model.c
 * (lora-eval) and the unit tests.
 */
#ifndef LORA_DORA_H
#define LORA_DORA_H

#include "mergecore.h"

/* One tensor merged with (or unmerged from) one DoRA module. */
typedef struct lora_dora_job {
    const char *name;            /* for messages */
    lora_dtype in_dt, out_dt;    /* merge: W0 -> W'; unmerge: W' -> W0 */
    uint64_t rows, cols;         /* the tensor as stored (Conv1D: [in, out]) */
    const void *src;
    void *dst;                   /* rows×cols of out_dt, or NULL to use sink */
    lora_sink_fn sink;
    void *sink_arg;
    const lora_module *m;        /* has a magnitude vector */
    double *norm;                /* [m->out]: merge fills it, unmerge reads it */
    lora_fixes *out_fixes;       /* merge: the corrections (coded, reset first), or NULL */
    const lora_fixes *fixes;     /* unmerge: the corrections to apply, or NULL (U as is) */
    const void *ref;             /* unmerge: compare with (out_dt), or NULL */
    int hash;                    /* compute the tree hashes of input and output */
    unsigned char *in_hash, *out_hash;
    lora_merge_stats *stats;     /* added to, may be NULL */
    int nthreads;                /* for the delta (>= 1) */
} lora_dora_job;

/* n[o] = the L2 norm of output row o of W0 + ΔW (after the Conv1D
 * transpose), in double; refused (LORA_EINPUT, naming the module and
 * the row) when a norm is 0 or not finite.  W0 is rows×cols of dt. */
int lora_dora_norms(const lora_module *m, lora_dtype dt, uint64_t rows, uint64_t cols,
                    const void *w0, double *norm, int nthreads, lora_error *err);
/* The magnitude vector over those norms, f[o] = m[o] / n[o], in double:
 * the factor DoRA puts on output row o. */
int lora_dora_factors(const lora_module *m, const double *norm, double *f, lora_error *err);

int lora_dora_merge(const lora_dora_job *j, lora_error *err);
int lora_dora_unmerge(const lora_dora_job *j, lora_error *err);

/* Among the terms of one tensor: 0 when none is DoRA, 1 when the only
 * term is one DoRA module of weight 1, else -LORA_EINPUT with the
 * message (two DoRA modules, DoRA beside other terms, a weight). */
int lora_terms_dora(const lora_term *terms, size_t n, const char *tensor, lora_error *err);
/* lora_engine_run for a job whose one term is a DoRA module (merge.c):
 * the same fields and outputs (hashes, stats, coded corrections; the
 * rounding is always nearest), and NORM ([out]) filled by a merge, read by an unmerge. */
int lora_dora_run(const lora_tjob *s, double *norm, int nthreads, lora_error *err);

#endif

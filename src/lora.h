/*
 * lora.h - the one public header of liblora, the library under the
 * lora-tools suite (lora-inspect, lora-merge, lora-unmerge,
 * lora-rank-reduce, lora-pack, lora-registry, lora-eval).
 *
 * Conventions, for every function here:
 *  - a function that can fail returns an int error code (LORA_OK = 0 on
 *    success, otherwise one of the LORA_E* codes, which are also the
 *    tools' exit codes) and fills the caller's lora_error, when one is
 *    given, with a message that can be printed as it is;
 *  - objects are opaque or plain structs owned by the library, freed by
 *    the matching *_free / *_close function, which accepts NULL;
 *  - the library keeps no global state except libsodium's one-time
 *    initialisation (lora_init) and OpenBLAS's thread setting.
 */
#ifndef LORA_H
#define LORA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/* Error codes double as the tools' exit codes (DESIGN.md). */
enum {
    LORA_OK = 0,
    LORA_ECHECK = 1,  /* a check found a problem (verification failed, ...) */
    LORA_EUSAGE = 2,  /* bad arguments */
    LORA_EINPUT = 3,  /* bad, corrupted, hostile or unreadable input */
    LORA_EIO = 4      /* I/O or system error, out of memory */
};

#define LORA_ERROR_MAX 1024

typedef struct lora_error {
    int code;                  /* LORA_OK or LORA_E* */
    char msg[LORA_ERROR_MAX];  /* "what went wrong: why", no trailing newline */
} lora_error;

/* Clear an error to LORA_OK and an empty message. */
void lora_error_clear(lora_error *err);

/* Initialise libsodium and anything else that needs it once per
 * process; safe to call more than once and from any tool. */
int lora_init(lora_error *err);

/* Library version string ("0.1.0"). */
const char *lora_version(void);

/* ------------------------------------------------------------------ */
/* Data types (dtype.c)                                                */
/* ------------------------------------------------------------------ */

/* Every dtype name the safetensors format defines, so that headers
 * naming any of them validate; only F32, F16, BF16 (read/write) and
 * F64 (read) carry numbers through the tools. */
typedef enum lora_dtype {
    LORA_DT_INVALID = 0,
    LORA_DT_BOOL, LORA_DT_F4, LORA_DT_F6_E2M3, LORA_DT_F6_E3M2,
    LORA_DT_U8, LORA_DT_I8, LORA_DT_F8_E5M2, LORA_DT_F8_E4M3,
    LORA_DT_F8_E8M0, LORA_DT_F8_E4M3FNUZ, LORA_DT_F8_E5M2FNUZ,
    LORA_DT_I16, LORA_DT_U16, LORA_DT_F16, LORA_DT_BF16,
    LORA_DT_I32, LORA_DT_U32, LORA_DT_F32, LORA_DT_C64,
    LORA_DT_F64, LORA_DT_I64, LORA_DT_U64,
    LORA_DT_COUNT
} lora_dtype;

/* Name as written in safetensors ("BF16"); NULL for an invalid value. */
const char *lora_dtype_name(lora_dtype dt);
/* Parse an exact, upper-case safetensors dtype name; LORA_DT_INVALID if unknown. */
lora_dtype lora_dtype_from_name(const char *name);
/* Bits per element (4, 6, 8, 16, 32, 64); 0 for invalid. */
unsigned lora_dtype_bits(lora_dtype dt);
/* 1 if the tools can read numbers of this dtype (F32, F16, BF16, F64). */
int lora_dtype_readable(lora_dtype dt);
/* 1 if the tools can write numbers of this dtype (F32, F16, BF16). */
int lora_dtype_writable(lora_dtype dt);

/* Scalar conversions.  Every narrowing conversion rounds to nearest,
 * ties to even, in one step from the wider value (never through an
 * intermediate format); subnormals, signed zeros and infinities are
 * exact where representable; NaN stays NaN (quiet, sign kept). */
float lora_f16_to_f32(uint16_t h);
float lora_bf16_to_f32(uint16_t b);
uint16_t lora_f32_to_f16(float f);
uint16_t lora_f32_to_bf16(float f);
uint16_t lora_f64_to_f16(double d);
uint16_t lora_f64_to_bf16(double d);

/* Array conversions between a readable dtype's bytes (little-endian,
 * possibly unaligned) and float/double.  decode: src holds n elements
 * of dt; encode: dst receives n elements of dt (writable dtypes only).
 * They return LORA_EINPUT for a dtype they cannot handle. */
int lora_decode_f32(lora_dtype dt, const void *src, float *dst, size_t n);
int lora_decode_f64(lora_dtype dt, const void *src, double *dst, size_t n);
int lora_encode_f32(lora_dtype dt, const float *src, void *dst, size_t n);
int lora_encode_f64(lora_dtype dt, const double *src, void *dst, size_t n);

/* ------------------------------------------------------------------ */
/* safetensors files (safetensors.c)                                   */
/* ------------------------------------------------------------------ */

#define LORA_MAX_DIMS 8
/* Largest header accepted, as the reference reader (100,000,000 bytes). */
#define LORA_ST_MAX_HEADER 100000000ULL

typedef struct lora_tensor {
    const char *name;
    lora_dtype dtype;
    int ndim;                        /* 0 for a scalar */
    uint64_t shape[LORA_MAX_DIMS];
    uint64_t numel;                  /* product of shape (1 for a scalar) */
    uint64_t nbytes;                 /* numel * bits / 8 */
    uint64_t offset;                 /* absolute offset of the data in the file */
    const void *data;                /* points into the read-only mapping */
} lora_tensor;

typedef struct lora_st lora_st;      /* an opened, fully validated file */

/* Open and validate a safetensors file through mmap.  The whole header
 * is checked before any tensor data is touched: the ten rules of the
 * reference reader (formats.md) plus duplicate keys and data running
 * past the end of the file.  Errors: LORA_EINPUT (bad file, message
 * names the rule and the tensor; also a missing file or one that is not
 * a regular file), LORA_EIO (cannot map, other system errors). */
int lora_st_open(const char *path, lora_st **out, lora_error *err);
/* The same over bytes already in memory (an archive member mapped in
 * place, a fuzz input); buf must outlive the object.  name is used in
 * messages. */
int lora_st_open_memory(const void *buf, size_t len, const char *name,
                        lora_st **out, lora_error *err);
void lora_st_close(lora_st *st);

const char *lora_st_path(const lora_st *st);
uint64_t lora_st_size(const lora_st *st);           /* whole file, bytes */
uint64_t lora_st_header_size(const lora_st *st);    /* N, the JSON header length */
size_t lora_st_count(const lora_st *st);
/* Tensors in data-offset order, 0 <= i < count. */
const lora_tensor *lora_st_tensor(const lora_st *st, size_t i);
/* Tensor by exact name, or NULL. */
const lora_tensor *lora_st_find(const lora_st *st, const char *name);
/* __metadata__ entries (string -> string), in header order. */
size_t lora_st_metadata_count(const lora_st *st);
int lora_st_metadata_at(const lora_st *st, size_t i, const char **key, const char **value);
/* Value of a __metadata__ key, or NULL. */
const char *lora_st_metadata(const lora_st *st, const char *key);
/* File descriptor of the mapped file (-1 for memory), for copy_file_range. */
int lora_st_fd(const lora_st *st);

/* Writer.  Tensors are declared first (the header comes first in the
 * file), then their bytes are written in any order and in parts; the
 * file is built as a temporary in the destination folder and only
 * fsync'ed and renamed onto PATH by commit.  Until then nothing exists
 * under PATH; abort (or free without commit) removes the temporary.
 * Layout is deterministic: tensors ordered by dtype size descending,
 * then by name, as the reference writer; header padded with spaces to
 * a multiple of 8; __metadata__ always carries "format":"pt". */
typedef struct lora_stw lora_stw;

int lora_stw_new(const char *path, lora_stw **out, lora_error *err);
/* Set (or replace) a __metadata__ entry; "format" starts as "pt".
 * Keys are written sorted.  Before lora_stw_start only. */
int lora_stw_set_metadata(lora_stw *w, const char *key, const char *value, lora_error *err);
/* Before lora_stw_start only; a duplicate name makes start fail. */
int lora_stw_declare(lora_stw *w, const char *name, lora_dtype dt, int ndim,
                     const uint64_t *shape, lora_error *err);
/* Lay out the declared tensors and write the header to the temporary. */
int lora_stw_start(lora_stw *w, lora_error *err);
/* Write len bytes at byte offset off inside tensor NAME's data.  Safe to
 * call from several threads at once (on different ranges); bytes are
 * counted per tensor for the check in commit. */
int lora_stw_write(lora_stw *w, const char *name, uint64_t off,
                   const void *buf, size_t len, lora_error *err);
/* Copy a whole tensor's bytes from another file descriptor without
 * decoding (copy_file_range where the kernel allows, else read/write). */
int lora_stw_copy(lora_stw *w, const char *name, int src_fd, uint64_t src_off,
                  lora_error *err);
/* Check every tensor was fully written (by byte count; LORA_EIO naming
 * the tensor otherwise, and nothing is left behind), fsync, rename onto
 * the final path, fsync the folder.  The writer is freed whatever the
 * result. */
int lora_stw_commit(lora_stw *w, lora_error *err);
/* Remove the temporary and free. */
void lora_stw_abort(lora_stw *w);

/* ------------------------------------------------------------------ */
/* Checkpoints: one file, a folder, or a sharded index (checkpoint.c)  */
/* ------------------------------------------------------------------ */

typedef struct lora_ckpt lora_ckpt;

/* PATH may be a .safetensors file, a folder holding model.safetensors
 * or model.safetensors.index.json, or the index file itself.  Every
 * shard named by an index is opened and validated; a missing shard or
 * a tensor the index puts in a shard that lacks it is LORA_EINPUT. */
int lora_ckpt_open(const char *path, lora_ckpt **out, lora_error *err);
void lora_ckpt_close(lora_ckpt *ck);

/* Folder the checkpoint lives in (for config.json, tokenizer files). */
const char *lora_ckpt_dir(const lora_ckpt *ck);
int lora_ckpt_is_sharded(const lora_ckpt *ck);
size_t lora_ckpt_shard_count(const lora_ckpt *ck);
lora_st *lora_ckpt_shard(const lora_ckpt *ck, size_t i);
/* File name of shard i relative to lora_ckpt_dir (e.g. model-00001-of-00002.safetensors). */
const char *lora_ckpt_shard_name(const lora_ckpt *ck, size_t i);
/* All tensors across shards, shard by shard in file order. */
size_t lora_ckpt_count(const lora_ckpt *ck);
const lora_tensor *lora_ckpt_tensor(const lora_ckpt *ck, size_t i, size_t *shard);
/* A tensor by name across shards, or NULL; *shard (optional) receives its shard. */
const lora_tensor *lora_ckpt_find(const lora_ckpt *ck, const char *name, size_t *shard);

/* ------------------------------------------------------------------ */
/* PEFT LoRA adapters (adapter.c)                                      */
/* ------------------------------------------------------------------ */

/* One adapted weight: ΔW = scale · B·A (Linear layout [out, in]). */
typedef struct lora_module {
    char *name;               /* module path, PEFT prefixes removed:
                                 "model.layers.0.self_attn.q_proj" */
    char *target;             /* base tensor it changes: name + ".weight";
                                 set to the base's own spelling by lora_adapter_bind */
    const lora_tensor *A;     /* [r, in]  (lora_embedding_A: [r, num_embeddings]) */
    const lora_tensor *B;     /* [out, r] (lora_embedding_B: [embedding_dim, r]) */
    uint64_t r, in, out;
    double alpha;             /* after alpha_pattern */
    double scale;             /* alpha / r, or alpha / sqrt(r) with rsLoRA */
    int embedding;            /* lora_embedding_A/B: base stores ΔWᵀ */
    int transpose;            /* base tensor stores W as [in, out] (GPT-2 Conv1D,
                                 embeddings): ΔW is added transposed.  Guessed
                                 from fan_in_fan_out until bound to a base. */
    uint64_t config_r;        /* r the config gives this module (r or rank_pattern);
                                 when it differs from r the adapter loads (so that
                                 lora-inspect can report it) but lora_adapter_bind
                                 refuses it */
} lora_module;

/* A full tensor saved through modules_to_save: it replaces the base's. */
typedef struct lora_saved {
    char *target;             /* base tensor name */
    const lora_tensor *t;
} lora_saved;

typedef struct lora_adapter {
    char *path;               /* folder (or archive) it came from */
    char *base_model;         /* base_model_name_or_path, or NULL */
    char *peft_version;       /* or NULL when not recorded */
    char *task_type;          /* or NULL */
    uint64_t r;               /* config r */
    double alpha;             /* config lora_alpha */
    int use_rslora;
    int fan_in_fan_out;
    char *target_modules;     /* as written in the config: JSON text */
    char *config_json;        /* adapter_config.json as read (NUL-terminated), for
                                 tools that rewrite or re-examine it */
    size_t n_modules;
    lora_module *modules;     /* sorted by name */
    size_t n_saved;
    lora_saved *saved;
    lora_st *st;              /* adapter_model.safetensors */
    uint64_t file_bytes;      /* bytes on disk of the safetensors file */
    /* Called by lora_adapter_free after st is closed: frees whatever
     * holds st's bytes (an archive's mapping).  NULL when st owns them. */
    void (*release)(void *arg);
    void *release_arg;
} lora_adapter;

/* Load a PEFT adapter folder (adapter_config.json +
 * adapter_model.safetensors).  Refused, LORA_EINPUT with a message:
 * adapter_model.bin only, peft_type other than LORA, use_dora,
 * lora_bias, DoRA or unknown keys, keys that pair up wrongly, A and B
 * that disagree on r.  A rank that differs from the config's is kept in
 * config_r (see lora_module) and refused by lora_adapter_bind. */
int lora_adapter_open(const char *path, lora_adapter **out, lora_error *err);
/* The same from an adapter_config.json text and an already-open
 * safetensors file (an archive member mapped in place); takes ownership
 * of st on success and on failure. */
int lora_adapter_open_parts(const char *config_json, size_t config_len, lora_st *st,
                            const char *path, lora_adapter **out, lora_error *err);
void lora_adapter_free(lora_adapter *ad);

/* Resolve every module against a base checkpoint: the base tensor's
 * spelling (with or without "transformer."/"model." prefixes), the
 * orientation from the base tensor's shape, shapes checked.  Fails with
 * LORA_EINPUT naming the first module missing or mismatched. */
int lora_adapter_bind(lora_adapter *ad, const lora_ckpt *base, lora_error *err);

/* ---- section: adapter sources (source.c) ---- */

/* Options for opening an adapter named on a command line. */
typedef struct lora_source_opts {
    const char *const *pubkeys;  /* minisign public key files for .lora archives,
                                    NULL-terminated; NULL for none */
    int no_verify;               /* open archives without checking signatures (warns) */
    const char *registry;        /* registry database path; NULL: default location */
    FILE *warn;                  /* where warnings go; NULL: nowhere */
} lora_source_opts;

/* Open an adapter from SPEC: a PEFT folder, a .lora archive (verified,
 * safetensors member mapped in place), "task:TASK" or
 * "reg:NAME@VERSION" (resolved through the registry).  opts may be NULL. */
int lora_adapter_load(const char *spec, const lora_source_opts *opts,
                      lora_adapter **out, lora_error *err);

/* ---- section: inspect (inspect.c) ---- */

/* What lora-inspect reports about an adapter: figures, how the config's
 * patterns matched, and problems.  Problems are findings, not failures:
 * lora_inspect succeeds on any adapter lora_adapter_open accepted and
 * lists what is wrong; a tool's --check turns errors into exit 1. */
enum { LORA_SEV_WARNING = 1, LORA_SEV_ERROR = 2 };

typedef struct lora_problem {
    int severity;             /* LORA_SEV_*, after strict promotion */
    char *where;              /* module or tensor concerned, or NULL */
    char *msg;                /* one line, complete in itself */
} lora_problem;

typedef struct lora_inspect_opts {
    const lora_ckpt *base;    /* NULL: no checks against a base */
    int strict;               /* warnings count as errors */
    int no_scan;              /* do not read tensor values (NaN/Inf, zero B) */
} lora_inspect_opts;

typedef struct lora_report_module {
    const lora_module *m;     /* ad->modules[i], same order */
    const char *base_name;    /* base tensor it changes, NULL without base or when missing */
    int transpose;            /* from the base when bound, else the config's guess */
    int targeted;             /* selected by target_modules (minus exclude_modules);
                                 1 for all when target_modules is null */
    uint64_t params;          /* elements of A and B */
    uint64_t base_params;     /* elements of the base tensor (0 when not bound) */
    uint64_t nonfinite_a, nonfinite_b;  /* NaN/Inf counts (when scanned) */
    int zero_b;               /* B scanned and all zeros */
} lora_report_module;

typedef struct lora_report_group {  /* modules sharing r, alpha and scale */
    uint64_t r;
    double alpha, scale;
    size_t modules;
} lora_report_group;

typedef struct lora_report_target { /* one target_modules entry (or the regex) */
    char *entry;
    size_t modules;           /* adapted modules it selects */
} lora_report_target;

typedef struct lora_report_dtype {
    lora_dtype dtype;
    size_t tensors;
    uint64_t bytes;
} lora_report_dtype;

typedef struct lora_report_tensor { /* every tensor of the file, in file order */
    const lora_tensor *t;
    const char *role;         /* "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B",
                                 "saved" (modules_to_save / bias), "copy" (a frozen base copy,
                                 unused) */
    const char *owner;        /* module name or saved target */
} lora_report_tensor;

typedef struct lora_report {
    const lora_adapter *ad;
    size_t n_modules;
    lora_report_module *modules;
    size_t n_groups;          /* 1: r, alpha and scale are uniform */
    lora_report_group *groups;    /* in order of first module */
    int target_is_regex;
    size_t n_targets;
    lora_report_target *targets;
    size_t n_untargeted;      /* adapted modules target_modules does not select */
    uint64_t lora_params;     /* elements of every A and B */
    uint64_t saved_params;    /* elements of modules_to_save tensors */
    uint64_t trainable_params;    /* lora_params + saved_params */
    uint64_t tensor_bytes;    /* data bytes of every tensor in the file */
    uint64_t file_bytes;      /* the safetensors file on disk */
    size_t n_dtypes;
    lora_report_dtype *dtypes;    /* in dtype enum order */
    size_t n_tensors;
    lora_report_tensor *tensors;
    size_t n_copies;          /* tensors with role "copy" */
    int has_base;
    uint64_t base_params;     /* every tensor of the base */
    uint64_t base_bytes;      /* the base's files on disk */
    uint64_t adapted_params;  /* elements of the base tensors the modules change */
    size_t n_problems;
    lora_problem *problems;
    size_t n_errors, n_warnings;
} lora_report;

int lora_inspect(const lora_adapter *ad, const lora_inspect_opts *opts, lora_report **out,
                 lora_error *err);
void lora_report_free(lora_report *rep);
/* The report as one JSON object (text, malloc'd, keys in a fixed order,
 * indented, ending in a newline); tensors: include the per-tensor list.
 * Fields: lora-inspect(1). */
char *lora_report_json(const lora_report *rep, int tensors, lora_error *err);


/* ---- section: hashes (hash.c) ---- */


/* ---- section: canonical delta (delta.c) ---- */

/* The canonical delta of DESIGN.md, rows [i0, i1) of ΔW = scale·B·A in
 * Linear layout:
 *   dst[(i - i0)·in + j] = scale · Σ_{k=0}^{r-1} (double)B[i·r + k] · (double)A[k·in + j]
 * with the sum taken over k in increasing order in double, then one
 * multiplication by scale in double.  B is out×r and A is r×in, row-major,
 * already decoded (every F32/F16/BF16 value is exact in double).  A
 * product of two values that came from floats is exact in double, so the
 * result is the same bytes with or without FMA, on any machine; callers
 * parallelise over rows (i), never over k. */
void lora_delta_rows(const double *B, const double *A, uint64_t r, uint64_t in,
                     double scale, uint64_t i0, uint64_t i1, double *dst);


/* ---- section: merge, unmerge, receipts (merge.c, receipt.c) ---- */


/* ---- section: SVD and rank reduction (svd.c, rank.c) ---- */


/* ---- section: signatures (sign.c) ---- */


/* ---- section: archives (archive.c) ---- */


/* ---- section: registry (registry.c) ---- */


/* ---- section: models and evaluation (model.c, dataset.c, eval.c) ---- */


#ifdef __cplusplus
}
#endif
#endif /* LORA_H */

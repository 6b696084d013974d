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

/* Stop BLAS's idle worker threads.  OpenBLAS starts a pool at load
 * time whose threads spin (sched_yield) for about 0.1 s of CPU before
 * they sleep: on a 2-core machine that is CPU a merge's workers lose.
 * For tools that make no BLAS call (lora-merge, lora-unmerge), before
 * their work and while no other thread is in BLAS; OpenBLAS starts the
 * pool again when a later call needs it.  Nothing where the BLAS has
 * no such pool. */
void lora_blas_idle(void);

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
 * a multiple of 8; __metadata__ always carries "format":"pt" (unless
 * lora_stw_set_layout keeps another file's layout). */
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
/* Keep an existing file's layout (lora-receipt(5): a merge keeps the
 * base's, an unmerge restores it byte for byte).  HDR is that file's
 * header JSON (LEN bytes after the 8-byte length, padding included):
 * tensor order and data offsets come from it; every declared tensor
 * must be in it with the same dtype and shape, it may hold no other,
 * and its data must be contiguous from 0, else start fails (LORA_EINPUT).
 * VERBATIM: HDR is written as it is, __metadata__ included (what was set
 * is ignored); otherwise HDR's keys keep their order and formatting is
 * compact, __metadata__ (kept where it was, first when HDR had none)
 * holds what was set, in the order set, "format" only if set
 * explicitly or where HDR had no __metadata__.  Before lora_stw_start. */
int lora_stw_set_layout(lora_stw *w, const void *hdr, size_t len, int verbatim,
                        lora_error *err);
/* After start, before commit: overwrite the value of metadata KEY in
 * the written header with VALUE of exactly the same length (lower-case
 * hex or ASCII letters and digits): how a value known only at the end
 * (a hash of the data) gets into a header written at the start. */
int lora_stw_patch_metadata(lora_stw *w, const char *key, const char *value,
                            lora_error *err);
/* The header as written (8-byte length + JSON + padding), after start;
 * NULL before.  Patches are reflected. */
const unsigned char *lora_stw_header(const lora_stw *w, size_t *len);

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
    int tied_head;            /* an lm_head update on a base whose head is tied to
                                 the input embeddings (no lm_head.weight): set only
                                 by the binding lora-eval uses, which applies it to
                                 the head alone, as PEFT does */
    const lora_tensor *magnitude; /* DoRA (use_dora): lora_magnitude_vector, [out],
                                 the norm of each output row of W0 + ΔW that PEFT
                                 rescales to (after the Conv1D transpose); NULL
                                 for plain LoRA.  Merged and unmerged by dora.c,
                                 applied at run time by lora-eval */
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
    int use_dora;             /* every module has a magnitude vector */
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
    /* The base identity an archive's manifest records (lora_base_hash)
     * and its base name (points into the archive, lives as long as the
     * adapter); 0 / NULL for a plain folder.  See lora_base_check. */
    int has_base_hash;
    unsigned char base_hash[32];
    const char *recorded_base;
    /* NAME and VERSION from an archive's manifest (same lifetime), NULL
     * for a folder: what provenance records instead of a local path. */
    const char *recorded_name, *recorded_version;
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
    const char *base;            /* base checkpoint the adapter is for (merge input,
                                    eval model), or NULL: task:TASK then prefers the
                                    newest adapter registered for this base */
    const char *prog;            /* tool name prefixed to warnings, or NULL */
} lora_source_opts;

/* Open an adapter from SPEC: a PEFT folder, a .lora archive (verified,
 * safetensors member mapped in place), "task:TASK" or
 * "reg:NAME[@VERSION]" (resolved through the registry, opened read-only:
 * the newest trusted adapter of the task -- of those registered for
 * opts->base when there are any -- or NAME's newest version; loaded by
 * lora_registry_open_adapter, ad->path "reg:NAME@VERSION").  opts may
 * be NULL. */
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
    double mag_min, mag_max;  /* DoRA: range of lora_magnitude_vector (0 without) */
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
    uint64_t trainable_params;    /* lora_params + saved_params + dora_params */
    size_t n_dora;            /* DoRA modules (with a lora_magnitude_vector) */
    uint64_t dora_params;     /* elements of the magnitude vectors */
    double mag_min, mag_max;  /* their range over every DoRA module */
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

/* BLAKE2b (libsodium crypto_generichash, no key).  256-bit digests
 * (LORA_HASH_BYTES) name archive members, whole archives, tensors and
 * registry blobs; 512-bit digests are minisign's prehash.  Hex is
 * lower case. */
#define LORA_HASH_BYTES 32
#define LORA_HASH512_BYTES 64
#define LORA_HASH_HEX (2 * LORA_HASH_BYTES + 1)   /* hex buffer for a 256-bit digest */

typedef struct lora_hasher lora_hasher;

/* A streaming hasher with an outlen-byte digest (16..64). */
int lora_hasher_new(size_t outlen, lora_hasher **out, lora_error *err);
void lora_hasher_update(lora_hasher *h, const void *buf, size_t len);
/* Write the digest (outlen bytes) to out and free the hasher. */
void lora_hasher_final(lora_hasher *h, unsigned char *out);
/* Free without a digest (error paths). */
void lora_hasher_free(lora_hasher *h);
/* One buffer (or an mmapped region) at once. */
void lora_hash(const void *buf, size_t len, unsigned char *out, size_t outlen);
/* A whole file read in 1 MiB chunks from its current offset; *size
 * (optional) receives the byte count.  LORA_EINPUT/LORA_EIO. */
int lora_hash_fd(int fd, size_t outlen, unsigned char *out, uint64_t *size, lora_error *err);
int lora_hash_file(const char *path, size_t outlen, unsigned char *out, uint64_t *size,
                   lora_error *err);
/* hex must hold 2*len+1 bytes. */
void lora_hex(const unsigned char *bin, size_t len, char *hex);
/* Exactly 2*len lower-case hex digits -> bin; 0 or -1. */
int lora_unhex(const char *hex, unsigned char *bin, size_t len);


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
/* The same rows split into nthreads contiguous blocks of rows, one per
 * thread (the caller's thread does the first); identical bytes for any
 * nthreads >= 1.  dst[(i - i0)·in + j] as above. */
void lora_delta_rows_mt(const double *B, const double *A, uint64_t r, uint64_t in,
                        double scale, uint64_t i0, uint64_t i1, double *dst, int nthreads);


/* ---- section: merge, unmerge, receipts (merge.c, receipt.c) ---- */

/* How a merged element is rounded (lora-receipt(5)).
 * NEAREST (default): W = round_dt(W0 + d), d = Σ w_i·ΔW_i, ties to even.
 * REVERSIBLE: of the two representable values that bracket W0 + d, the
 * nearest first, then the other one, the first from which unmerge
 * gives W0 back; where neither does, the nearest and a correction.
 * Measured and argued in lora-receipt(5): the other neighbour almost
 * never helps (where the nearest fails, the merge has rounded bits of
 * W0 away and no neighbour keeps them), so the two give nearly the
 * same merged bytes and the same corrections. */
typedef enum lora_rounding {
    LORA_ROUND_NEAREST = 0,
    LORA_ROUND_REVERSIBLE = 1
} lora_rounding;

/* One adapter's share of a tensor: d += weight · module->scale · B·A,
 * transposed when module->transpose.  Terms are summed in array order
 * into one double per element:
 *   d = (w_0 s_0)·Σ_k B0 A0  +  (w_1 s_1)·Σ_k B1 A1  + ...
 * each product (w_i s_i) in double, each Σ_k the canonical delta. */
typedef struct lora_term {
    const lora_module *module;
    double weight;
} lora_term;

/* Corrections of one tensor: flat element indices (increasing) and, at
 * each, how many representable steps the base value lies from what
 * unmerge computes there (base = the value `step` places above it in
 * the order of values, -0 just below +0).  Steps are small (the bits
 * the merge rounded away), which keeps receipts small. */
typedef struct lora_fixes {
    size_t n, cap;
    uint64_t *index;
    int64_t *step;
    /* Coded corrections (receipt version 3; set coded before a merge to
     * get them): the merged value and the delta tell which elements are
     * ambiguous (several base values merge to the same value); bits
     * holds, for each in element order, its base value's rank among
     * them in ceil(log2 count) bits, LSB first, row block b's bits
     * starting at bit bstart[b] (nblocks + 1 offsets).  index/step
     * are then the rare exceptions, relative to the decoded value. */
    int coded;
    uint64_t nblocks, *bstart;
    unsigned char *bits;
    uint64_t nbits, bitcap, nambig;
} lora_fixes;

void lora_fixes_free(lora_fixes *f);

/* Counts over one merge or unmerge (added to, never reset). */
typedef struct lora_merge_stats {
    uint64_t elements;     /* elements visited */
    uint64_t changed;      /* d != 0 and the base element finite */
    uint64_t other;        /* reversible: took the farther neighbour */
    uint64_t fixes;        /* corrections recorded (merge) or applied (unmerge) */
    uint64_t inexact;      /* unmerge: elements differing from the reference */
    uint64_t max_ulps;     /* unmerge: largest distance to the reference, ulps */
    uint64_t nonfinite;    /* finite inputs whose result is not finite in the output
                              dtype (only with allow_nonfinite: otherwise refused) */
    uint64_t may_differ;   /* unmerge without reference or corrections: elements that
                              may differ from W0 (u certainly wrong, or another W0
                              merges to the same value): an upper bound */
} lora_merge_stats;

/* Merge one tensor held in memory: out = round(w0 + d), elementwise,
 * exactly as lora-merge does it (same code path).  w0 and out hold
 * rows×cols elements of dt (F32, F16 or BF16; out may equal w0 for an
 * in-place merge; out_dt is the output dtype, usually dt).  Non-finite
 * base elements and elements with d == 0 are copied unchanged.
 * fixes (may be NULL with LORA_ROUND_NEAREST) receives the corrections
 * for an exact unmerge.  A non-finite d is LORA_EINPUT.  nthreads >= 1. */
int lora_tensor_merge(lora_dtype dt, lora_dtype out_dt, uint64_t rows, uint64_t cols,
                      const void *w0, void *out, const lora_term *terms, size_t nterms,
                      lora_rounding mode, int nthreads, lora_fixes *fixes,
                      lora_merge_stats *stats, lora_error *err);

/* Unmerge one tensor: out = round_dt(merged − d) in double, then the
 * corrections (fixes may be NULL: best effort).  out_dt as above.  When
 * ref is not NULL (rows×cols elements of out_dt, e.g. the original
 * base), stats->inexact and stats->max_ulps compare out with it. */
int lora_tensor_unmerge(lora_dtype dt, lora_dtype out_dt, uint64_t rows, uint64_t cols,
                        const void *merged, void *out, const lora_term *terms, size_t nterms,
                        const lora_fixes *fixes, const void *ref, int nthreads,
                        lora_merge_stats *stats, lora_error *err);

/* Merge receipts (receipt.c, lora-receipt(5)).  A receipt is written
 * tensor by tensor (corrections go to the file as each tensor is done,
 * the JSON index last), and read through mmap, corrections of one
 * tensor at a time, so memory stays flat for any model size. */
#define LORA_RECEIPT_MAX_JSON (64u << 20)

typedef struct lora_receipt_term {
    size_t adapter;            /* index into adapters */
    char *module;              /* module name in that adapter */
    double scale;              /* the module's scale (alpha/r or alpha/sqrt r) */
    int transpose;
} lora_receipt_term;

typedef struct lora_receipt_tensor {
    char *name;
    lora_dtype base_dtype, dtype;      /* before and after the merge */
    uint64_t rows, cols;
    unsigned char base_hash[32], merged_hash[32];
    size_t nterms;
    lora_receipt_term *terms;
    uint64_t nfixes;
    uint64_t offset, length;           /* the corrections block in the file */
    unsigned char fixes_hash[32];      /* BLAKE2b-256 of that block */
    uint64_t ambiguous;                /* version 3: elements whose rank the block holds */
    /* version 4: a DoRA merge (one term with a magnitude vector) keeps
     * the row norms n = ||W0 + dW|| it divided by, one little-endian
     * double per output row, in a block after the corrections */
    int dora;
    uint64_t dora_offset, dora_length;
    unsigned char dora_hash[32];
    const double *dora_norm;           /* writer: the norms to keep (dora_length / 8) */
} lora_receipt_tensor;

typedef struct lora_receipt_adapter {
    char *path;                /* as given when merging */
    unsigned char hash[32];    /* BLAKE2b-256 of adapter_model.safetensors */
    double weight;
} lora_receipt_adapter;

typedef struct lora_receipt lora_receipt;

/* One file of the merge (receipt version 2): the base's header as it
 * was, for a byte-identical restore, and the hash of the merged file's
 * header, which binds the receipt to its output (lora-receipt(5)). */
typedef struct lora_receipt_file {
    char *name;                        /* shard file name; the only file: any name */
    const unsigned char *header;       /* reader: the base's header JSON */
    uint64_t header_len;
    uint64_t offset;                   /* of those bytes in the receipt */
    unsigned char header_hash[32];     /* BLAKE2b-256 of them */
    unsigned char merged_header[32];   /* BLAKE2b-256 of the merged file's first 8+N bytes */
} lora_receipt_file;

/* Writer: create (a temporary beside path), add tensors as they are
 * merged, commit (JSON index, fsync, rename).  abort removes it. */
int lora_receipt_create(const char *path, lora_rounding mode, lora_receipt **out,
                        lora_error *err);
int lora_receipt_add_adapter(lora_receipt *r, const char *path, const unsigned char hash[32],
                             double weight, lora_error *err);
/* Copies t (terms, name); writes fixes (indices increasing) to the file. */
int lora_receipt_add_tensor(lora_receipt *r, const lora_receipt_tensor *t,
                            const lora_fixes *fixes, lora_error *err);
int lora_receipt_commit(lora_receipt *r, lora_error *err);   /* frees r */
void lora_receipt_abort(lora_receipt *r);                     /* frees r */
/* Version 2: each file of the merge (HDR: the base's header JSON, N
 * bytes after the 8-byte length), and the base's sharded index as it was. */
int lora_receipt_add_file(lora_receipt *r, const char *name, const void *hdr, size_t len,
                          const unsigned char merged_header[32], lora_error *err);
int lora_receipt_set_index(lora_receipt *r, const void *buf, size_t len, lora_error *err);
/* A tensor that modules_to_save replaced: its base bytes kept as they
 * were (LEN bytes of DT, shape), *hash (optional) their BLAKE2b-256. */
typedef struct lora_receipt_saved {
    char *name;
    lora_dtype dtype;
    int ndim;
    uint64_t shape[LORA_MAX_DIMS];
    uint64_t offset, length;
    unsigned char hash[32];
} lora_receipt_saved;
int lora_receipt_add_saved(lora_receipt *r, const char *name, lora_dtype dt, int ndim,
                           const uint64_t *shape, const void *data, uint64_t len,
                           unsigned char hash[32], lora_error *err);
/* Commit in two steps, so that a merge commits its output between
 * them: finish writes the index and fsyncs the temporary; install
 * renames it onto the path (and the signature lora_receipt_sign made
 * onto PATH.minisig just before) and frees r (also on failure). */
int lora_receipt_finish(lora_receipt *r, lora_error *err);
int lora_receipt_install(lora_receipt *r, lora_error *err);
/* Between the two, for a re-merge onto an existing receipt: the
 * finished receipt becomes PATH.new (a name a crash leaves for the user
 * to find; install then renames it and keeps it on failure). */
int lora_receipt_stage_new(lora_receipt *r, lora_error *err);

/* Reader: everything in the JSON index validated (types, dtypes,
 * shapes, hashes, block offsets inside the file, adapter indices);
 * LORA_EINPUT with a message for anything wrong. */
int lora_receipt_open(const char *path, lora_receipt **out, lora_error *err);
/* The same over bytes in memory (fuzzing); buf must outlive r. */
int lora_receipt_open_memory(const void *buf, size_t len, const char *name,
                             lora_receipt **out, lora_error *err);
void lora_receipt_close(lora_receipt *r);
lora_rounding lora_receipt_rounding(const lora_receipt *r);
int lora_receipt_version(const lora_receipt *r);
size_t lora_receipt_file_count(const lora_receipt *r);
const lora_receipt_file *lora_receipt_file_at(const lora_receipt *r, size_t i);
/* By shard name (NULL: none of that name). */
const lora_receipt_file *lora_receipt_file_find(const lora_receipt *r, const char *name);
/* The base's sharded index as it was (NULL when the receipt has none). */
const unsigned char *lora_receipt_index(const lora_receipt *r, uint64_t *len);
size_t lora_receipt_saved_count(const lora_receipt *r);
const lora_receipt_saved *lora_receipt_saved_at(const lora_receipt *r, size_t i);
const lora_receipt_saved *lora_receipt_saved_find(const lora_receipt *r, const char *name);
/* The kept bytes of S, their hash checked first (LORA_EINPUT). */
int lora_receipt_saved_data(const lora_receipt *r, const lora_receipt_saved *s,
                            const void **data, lora_error *err);
const char *lora_receipt_tool(const lora_receipt *r);
size_t lora_receipt_adapter_count(const lora_receipt *r);
const lora_receipt_adapter *lora_receipt_adapter_at(const lora_receipt *r, size_t i);
size_t lora_receipt_tensor_count(const lora_receipt *r);
const lora_receipt_tensor *lora_receipt_tensor_at(const lora_receipt *r, size_t i);
const lora_receipt_tensor *lora_receipt_find(const lora_receipt *r, const char *name);
/* Decode tensor i's corrections (block hash checked, indices increasing
 * and inside the tensor, steps in range) into fixes (reset first). */
int lora_receipt_fixes(const lora_receipt *r, size_t i, lora_fixes *fixes, lora_error *err);
/* Decode tensor i's DoRA row norms (version 4; block hash checked, each
 * finite and > 0) into norm, which holds n values: LORA_EINPUT when the
 * tensor has none or another count. */
int lora_receipt_dora_norms(const lora_receipt *r, size_t i, double *norm, uint64_t n,
                            lora_error *err);
/* Total bytes of the receipt file (after commit or open). */
uint64_t lora_receipt_bytes(const lora_receipt *r);

/* Streaming merge of checkpoints (merge.c): lora-merge, lora-unmerge and
 * the task switch are one call.  Each tensor of INPUT is read through
 * the mapping, row block by row block over nthreads threads: the terms
 * of `undo` are unmerged (with the corrections of receipt_in when
 * given), those of `add` merged, and the result written to OUT; tensors
 * no adapter touches are copied without decoding.  OUT has INPUT's form
 * (file -> file; folder or index -> folder with the same shard layout, a
 * new index and the config/tokenizer files copied) and appears only when
 * everything succeeded (temporary + rename); a receipt (receipt_out)
 * records the merge.  Memory: a few row blocks per thread, plus one
 * tensor when undoing and adding at once. */
typedef struct lora_merge_adapter {
    lora_adapter *ad;          /* opened by the caller; bound here */
    double weight;
    int weight_given;          /* the user wrote ADAPTER:WEIGHT */
    const char *spec;          /* as given, recorded in metadata and receipt */
} lora_merge_adapter;

typedef struct lora_tensor_report {
    const char *name;
    uint64_t elements;
    uint64_t exact;            /* -check with a reference or a receipt */
    uint64_t fixes;            /* corrections recorded or applied */
    uint64_t max_ulps;         /* largest distance to the reference */
    int hash_ok;               /* 1 matches the receipt, 0 differs, -1 not checked */
    int known;                 /* exact is known (receipt or reference); 0: exactness
                                  unknown, may_differ is an upper bound */
    uint64_t may_differ;       /* elements that may differ from W0 (known: = elements - exact) */
} lora_tensor_report;

typedef struct lora_merge_opts {
    lora_dtype dtype;          /* output dtype of changed tensors; INVALID: keep */
    int nthreads;              /* >= 1 */
    lora_rounding rounding;
    const char *receipt_out;   /* write a receipt here; NULL: none */
    const char *receipt_in;    /* receipt of the merge that undo reverses */
    const char *reference;     /* unmerge check: compare with this checkpoint */
    int force;                 /* merge an adapter the input already records */
    int check_only;            /* write nothing (lora-unmerge --check) */
    void (*progress)(void *arg, uint64_t done, uint64_t total);
    void *progress_arg;
    void (*on_tensor)(void *arg, const lora_tensor_report *r);
    void *on_tensor_arg;
    /* Process only this shard of a sharded input (its file name, e.g.
     * "model-00002-of-00004.safetensors"); OUT is then that one file and
     * no index is written, so that shards can be merged on different
     * machines and the index copied at the end.  NULL: every shard. */
    const char *shard;
    int allow_nonfinite;       /* write values that overflow the output dtype (counted);
                                  0: such a value is LORA_EINPUT, nothing written */
    int any_base;              /* merge into a base other than the one an adapter's
                                  archive records (warns on opts->warn) */
    FILE *warn;                /* warnings (base identity); NULL: none */
    /* Sign the receipt written (RECEIPT.minisig); NULL: unsigned. */
    const struct lora_seckey *receipt_key;
    /* receipt_in must be signed by one of these (RECEIPT.minisig). */
    const struct lora_pubkey *receipt_pubkeys;
    size_t n_receipt_pubkeys;
    /* With dtype: convert the untouched tensors too (floating ones), and
     * an output folder's config.json dtype with them.  Values beyond the
     * dtype are refused as merged ones are (allow_nonfinite); the receipt
     * keeps each converted tensor's original bytes, so that an unmerge
     * restores them exactly (lora-receipt(5)). */
    int convert_all;
} lora_merge_opts;

typedef struct lora_merge_result {
    uint64_t tensors, changed_tensors, copied_tensors;
    uint64_t elements;         /* elements of changed tensors */
    uint64_t fixes;            /* corrections written (merge) or applied (unmerge) */
    uint64_t inexact;          /* unmerge: elements not restored exactly (known) */
    uint64_t max_ulps;
    uint64_t hash_mismatches;  /* unmerge with receipt: tensors whose hash differs */
    uint64_t receipt_bytes;
    uint64_t nonfinite;        /* values written non-finite (allow_nonfinite) */
    uint64_t may_differ;       /* unmerge: upper bound of elements not restored exactly
                                  (= inexact when exactness is known) */
    int known;                 /* unmerge: exactness known (receipt or reference) */
    int base_confirmed;        /* unmerge without a receipt: the restored tensors an
                                  archive adapter changes equal its recorded base */
    int untied;                /* an lm_head update on a tied head was merged: OUT has
                                  its own lm_head.weight, config.json says
                                  tie_word_embeddings false (untie.c) */
    uint64_t converted_tensors; /* untouched tensors converted (convert_all) */
} lora_merge_result;

/* Returns LORA_ECHECK (nothing written) when an unmerge with a receipt
 * does not reproduce the recorded base hashes, or, with check_only,
 * when any element is not exact. */
int lora_merge_run(const char *input, lora_merge_adapter *undo, size_t nundo,
                   lora_merge_adapter *add, size_t nadd, const char *out,
                   const lora_merge_opts *opts, lora_merge_result *res, lora_error *err);

/* Parse "SPEC[:WEIGHT]": the weight is what follows the last ':' when
 * it parses completely as a finite number; otherwise the whole string
 * is the spec.  *spec is malloc'd. */
int lora_parse_adapter_arg(const char *arg, char **spec, double *weight, int *given,
                           lora_error *err);

/* BLAKE2b-256 identity of an adapter's content as merged: for each
 * module in name order, its name, NUL, scale (IEEE double, LE), and the
 * bytes of lora_A and lora_B, and a DoRA module's magnitude vector
 * (lora-receipt(5)). */
void lora_adapter_digest(const lora_adapter *ad, unsigned char out[32]);



/* ---- section: SVD and rank reduction (svd.c, rank.c) ---- */

/* Thin SVD of ΔW = scale·B·A computed from the factors, never forming
 * ΔW: QR of B (out×r) and of Aᵀ (in×r), SVD of the small core
 * scale·R_B·R_Aᵀ, then U = Q_B·U_c and V = Q_A·V_c.  O((out+in)·r²) time,
 * O((out+in)·r) memory.  k = min(out, in, r) triplets; singular values
 * descending; U and V have orthonormal columns (also when ΔW is rank
 * deficient: the directions of zero singular values are then some
 * orthonormal completion).  Everything in double. */
typedef struct lora_svd {
    uint64_t out, in, k;
    double *S;                /* k values, descending, >= 0 */
    double *U;                /* out×k, column-major: column j at U + j·out */
    double *V;                /* in×k, column-major: column j at V + j·in */
} lora_svd;

/* B: out×r row-major, A: r×in row-major (as lora_delta_rows).  On
 * success *res is filled (free with lora_svd_free); errors: LORA_EIO
 * (out of memory), LORA_EINPUT (LAPACK did not converge, non-finite
 * input). */
int lora_svd_factors(const double *B, const double *A, uint64_t out, uint64_t r,
                     uint64_t in, double scale, lora_svd *res, lora_error *err);
/* Frees the arrays and zeroes the struct; accepts a zeroed struct. */
void lora_svd_free(lora_svd *s);

/* How to choose the rank kept per module. */
typedef enum lora_rank_kind {
    LORA_RANK_FIXED = 1,      /* keep `rank` (capped at the singular values there are) */
    LORA_RANK_ENERGY,         /* smallest k with Σ_{i<k} σ_i² >= energy·Σ σ_i² */
    LORA_RANK_RATIO           /* every non-zero σ_i >= σ_1 / ratio */
} lora_rank_kind;

typedef struct lora_rank_rule {
    lora_rank_kind kind;
    uint64_t rank;            /* FIXED: >= 1 */
    double energy;            /* ENERGY: in (0, 1] */
    double ratio;             /* RATIO: >= 1 */
    uint64_t max_rank;        /* 0: no cap; else the result is at most this */
} lora_rank_rule;

/* The rank the rule keeps for singular values S[0..k) (descending).
 * Contract: sums are of σ_i² in double in increasing i; the energy test
 * is partial >= energy·total·(1 − 1e-12), so that F = 1 keeps every
 * non-zero value despite rounding; the ratio test is σ_i > 0 and
 * σ_i·ratio >= σ_1.
 * The result is clamped to [1, k] (a PEFT module needs r >= 1) and to
 * max_rank; 0 only when k = 0. */
uint64_t lora_rank_select(const double *S, uint64_t k, const lora_rank_rule *rule);
/* ‖ΔW − ΔW_keep‖_F / ‖ΔW‖_F from the singular values: sqrt of the tail
 * energy over the total (each summed in increasing i); 0 when ΔW = 0. */
double lora_rank_rel_error(const double *S, uint64_t k, uint64_t keep);

/* One input of a reduction: an adapter and the weight its ΔW gets. */
typedef struct lora_weighted {
    const lora_adapter *ad;
    double weight;
} lora_weighted;

/* What happened to one module. */
typedef struct lora_reduce_module {
    char *name;
    uint64_t old_rank;        /* r of the input (sum of the inputs' r when combining) */
    uint64_t new_rank;
    double rel_error;         /* ‖ΔW − ΔW_new‖_F / ‖ΔW‖_F, from the singular values */
    double norm;              /* ‖ΔW‖_F of the (combined) input */
    int n_sources;            /* how many inputs adapt this module */
} lora_reduce_module;

typedef struct lora_reduce_report {
    size_t n_modules;
    lora_reduce_module *modules;   /* sorted by name */
    uint64_t old_params, new_params;  /* LoRA parameters (A and B elements) */
} lora_reduce_report;

void lora_reduce_report_free(lora_reduce_report *rep);

/* Reduce one adapter, or combine several (n > 1, or n = 1 with a
 * weight ≠ 1), into a new PEFT adapter folder OUT.
 *
 * ΔW of each module is Σ_i w_i·s_i·B_i·A_i over the inputs that adapt
 * it, held as the exact concatenation B = [w_1 s_1 B_1 | w_2 s_2 B_2 ...],
 * A = [A_1; A_2; ...].  rule == NULL keeps that concatenation as it is
 * (exact, rank = Σ r_i; the "--rank 0" of lora-rank-reduce); otherwise
 * the thin SVD of the concatenation is truncated to the rule's rank.
 *
 * Output factors: B' = U_k·diag(sqrt σ), A' = diag(sqrt σ)·V_kᵀ (the
 * split PEFT's own SVD conversions do not balance, this one does, so
 * both factors have the same norm), lora_alpha = rank, use_rslora
 * false: every scale is exactly 1.  When ranks differ per module the
 * config's r and lora_alpha are the most common rank (ties: smaller)
 * and the others go in rank_pattern / alpha_pattern, keyed by the full
 * module name.  Tensors are written in the dtype of the first input's
 * tensors (F64 inputs as F32), with PEFT key names.  OUT is built as a
 * temporary folder beside it and renamed into place; an existing OUT
 * is an error (LORA_EUSAGE) unless overwrite is set.
 *
 * Inputs must agree on fan_in_fan_out and on each common module's
 * shape (LORA_EINPUT otherwise); modules_to_save tensors are copied
 * for a single input and refused when combining. */
int lora_reduce(const lora_weighted *in, size_t n, const lora_rank_rule *rule,
                const char *out_dir, int overwrite, lora_reduce_report *rep,
                lora_error *err);


/* ---- section: combination methods (combine.c) ---- */

/* How several adapters' deltas are combined on one module, as PEFT's
 * utils/merge_utils.py defines it, but on each input's exact dense delta
 * d_i = s_i·B_i·A_i (out×in, row-major, the canonical delta):
 *   SUM            Σ w_i·d_i (lora_reduce keeps this one low rank, exact)
 *   MAGNITUDE_PRUNE Σ w_i·prune_mag(d_i)
 *   TIES           disjoint_merge(w_i·prune_mag(d_i)) with the sign
 *                  elected on the unweighted prune_mag(d_i)
 *   DARE_LINEAR    Σ w_i·prune_rand(d_i)
 *   DARE_TIES      disjoint_merge as TIES on prune_rand(d_i)
 * prune_mag keeps the k = floor(D·numel) largest |d| of the module (equal
 * magnitudes at the threshold: the lowest row-major index first), zeroes
 * the rest; prune_rand keeps each element when u < D, u the next uniform
 * double of the input's stream (lora_combine_stream_init), and divides
 * the kept ones by D.  D >= 1 prunes nothing (and rescales nothing).
 * Sign election: TOTAL, the sign of Σ_i p_i (>= 0 is +); FREQUENCY, the
 * sign of Σ_i sign(p_i) (>= 0 is +).  disjoint_merge: Σ over the i whose
 * p_i has the elected sign (zeros never agree) of w_i·p_i, divided by
 * max(1, how many agree).  All in double, sums in increasing i. */
typedef enum lora_combine_method {
    LORA_COMBINE_SUM = 0,
    LORA_COMBINE_TIES,
    LORA_COMBINE_DARE_LINEAR,
    LORA_COMBINE_DARE_TIES,
    LORA_COMBINE_MAGNITUDE_PRUNE
} lora_combine_method;

typedef enum lora_sign_method {
    LORA_SIGN_TOTAL = 0,
    LORA_SIGN_FREQUENCY
} lora_sign_method;

typedef struct lora_combine_opts {
    lora_combine_method method;
    double density;           /* D > 0 (methods other than SUM) */
    lora_sign_method sign;
    uint64_t seed;            /* DARE */
} lora_combine_opts;

/* The method's name ("sum", "ties", "dare_linear", "dare_ties",
 * "magnitude_prune") and back; -1 for an unknown name. */
const char *lora_combine_method_name(lora_combine_method m);
int lora_combine_method_parse(const char *s);

/* The DARE stream of input STREAM (its 0-based position among the
 * inputs) on module NAME: x = seed ^ FNV-1a-64(NAME) ^
 * (0x9E3779B97F4A7C15·(STREAM+1)) mod 2^64; the four words of the
 * xoshiro256** state are four successive splitmix64(x) outputs.  Each
 * element, in row-major order, takes one draw v; u = (v >> 11)·2^-53. */
void lora_combine_stream_init(uint64_t state[4], uint64_t seed, const char *name,
                              uint64_t stream);
uint64_t lora_combine_next(uint64_t state[4]);

/* Fills dst (out×in) with input i's delta d_i; LORA_OK or an error. */
typedef int (*lora_delta_source)(void *ctx, size_t i, double *dst, lora_error *err);

/* Work buffers reused across modules (zero-initialise; free with
 * lora_combine_ws_free). */
typedef struct lora_combine_ws {
    double *d, *acc, *tmp, *cnt;
    uint64_t cap;
} lora_combine_ws;
void lora_combine_ws_free(lora_combine_ws *ws);

/* Combine n inputs of one out×in module into dst (out×in).  The deltas
 * come from src (called up to twice per input: memory stays a few
 * out×in buffers for any n); weights[i] and streams[i] (DARE stream
 * number) per input.  Errors: LORA_EUSAGE (D not > 0, unknown method),
 * LORA_EINPUT (a delta not finite), LORA_EIO (memory). */
int lora_combine_module(const lora_combine_opts *o, const char *name, uint64_t out,
                        uint64_t in, size_t n, const double *weights, const uint64_t *streams,
                        lora_delta_source src, void *ctx, double *dst, lora_combine_ws *ws,
                        lora_error *err);

/* lora_reduce with a combination method (NULL or SUM: lora_reduce).
 * Other methods build each module's combined ΔW densely (one module at
 * a time) and take its dense SVD (lora_svd_dense); rule == NULL then
 * keeps every singular value (rank min(out, in)). */
int lora_reduce_combine(const lora_weighted *in, size_t n, const lora_rank_rule *rule,
                        const lora_combine_opts *copts, const char *out_dir, int overwrite,
                        lora_reduce_report *rep, lora_error *err);

/* Thin SVD of a dense out×in row-major matrix W (overwritten) by LAPACK
 * dgesdd; k = min(out, in); the result as lora_svd_factors gives it.
 * Errors: LORA_EINPUT (non-finite, no convergence), LORA_EIO (memory). */
int lora_svd_dense(double *W, uint64_t out, uint64_t in, lora_svd *res, lora_error *err);


/* ---- section: analyses (analysis.c) ---- */

/* The paper's Section 7 analyses of one module (Hu et al. 2021). */

/* Spectrum of ΔW = scale·B·A (from the factors, svd.c). */
typedef struct lora_spectrum {
    uint64_t k;               /* min(out, in, r) */
    double *S;                /* k singular values, descending */
    double norm;              /* ‖ΔW‖_F = sqrt(Σ σ_i²) */
    uint64_t rank90, rank99;  /* smallest k keeping 90% / 99% of ‖ΔW‖²_F
                                 (lora_rank_select's energy rule, so 0 only
                                 when k = 0 and 1 for ΔW = 0) */
    double stable_rank;       /* ‖ΔW‖²_F / σ_1², 0 when ΔW = 0 */
} lora_spectrum;

int lora_spectrum_module(const lora_module *m, lora_spectrum *sp, lora_error *err);
void lora_spectrum_free(lora_spectrum *sp);

/* Normalized subspace similarity from orthonormal bases:
 * V1 is n×k1, V2 is n×k2 (column-major, columns ordered by decreasing
 * singular value); phi receives ni×nj values (ni <= k1, nj <= k2),
 * phi[(i-1)·nj + (j-1)] = ‖V1[:, :i]ᵀ V2[:, :j]‖²_F / min(i, j).
 * G = V1ᵀV2 is computed once (dgemm); the double sums over a < i, b < j
 * are 2-D prefix sums of G², in increasing a then b, in double. */
void lora_subspace_phi(const double *V1, uint64_t k1, const double *V2, uint64_t k2, uint64_t n,
                       uint64_t ni, uint64_t nj, double *phi);

/* φ between the right-singular directions of two modules' A matrices
 * (A: r×in; the SVD of A alone, scale irrelevant), for i <= r1,
 * j <= r2: phi is r1×r2 as above.  The modules must have the same in
 * (LORA_EINPUT otherwise).  *phi is malloc'd. */
int lora_module_phi(const lora_module *m1, const lora_module *m2, double **phi, uint64_t *ni,
                    uint64_t *nj, lora_error *err);

/* Table 7 of the paper for one module bound to its base tensor W
 * (Linear layout out×in, decoded to double; the module's transpose
 * flag is honoured).  r = the module's rank (at most min(out, in)). */
typedef struct lora_amplification {
    uint64_t r;
    double norm_w;            /* ‖W‖_F */
    double norm_dw;           /* ‖ΔW‖_F */
    double proj_dw;           /* ‖UᵀWV‖_F, U, V top-r singular directions of ΔW */
    double proj_w;            /* the same for W's own top-r directions:
                                 sqrt(Σ_{i<r} σ_i(W)²), singular values of W by
                                 LAPACK dgesdd (values only) on the dense W */
    double proj_random;       /* the same for random orthonormal U, V (QR of
                                 uniform random matrices, fixed seed) */
    double factor;            /* norm_dw / proj_dw (0 when proj_dw = 0) */
} lora_amplification;

int lora_module_amplification(const lora_module *m, const lora_tensor *w,
                              lora_amplification *amp, lora_error *err);

/* The analyses lora-inspect runs (--spectrum, --compare, --amplification),
 * as one report. */
typedef struct lora_analysis_opts {
    int spectrum;
    const lora_adapter *other;     /* --compare: φ per common module; NULL: none */
    const lora_ckpt *base;         /* --amplification: base to bind to; NULL: none */
    const char *const *modules;    /* NULL-terminated names (full, or the part
                                      after a '.'); NULL: every module */
    const char *svg_path;          /* with other: φ heat maps written there (atomically) */
} lora_analysis_opts;

/* Run the analyses asked for and render them: JSON (json != 0; fields in
 * lora-inspect(1)) or human text, malloc'd in *text.  Binds ad to the
 * base for the amplification.  LORA_EUSAGE for a --module name no module
 * has; LORA_EINPUT when two compared adapters share no module. */
int lora_analyze(lora_adapter *ad, const lora_analysis_opts *o, int json, char **text,
                 lora_error *err);

/* ---- section: signatures (sign.c) ---- */

/* Ed25519 keys and signatures byte-compatible with minisign 0.11
 * (formats.md section 2).  Keys made by `minisign -G` (encrypted or -W)
 * load; `minisign -V` verifies our signatures.  Secret key bytes live in
 * sodium_malloc'd (guarded, mlocked) memory and are wiped on free. */
#define LORA_KEYID_BYTES 8
#define LORA_KEYID_STR 17          /* buffer for a displayed key id */
#define LORA_SIG_COMMENT_MAX 1024   /* minisign COMMENTMAXBYTES, line incl. "\n" */
#define LORA_SIG_TRUSTED_MAX 8192   /* minisign TRUSTEDCOMMENTMAXBYTES, line incl. "\n" */
/* minisign -G's scrypt parameters (OPSLIMIT/MEMLIMIT_SENSITIVE); also
 * the largest a secret key may ask for, so a hostile key file cannot
 * make us allocate more than minisign ever does. */
#define LORA_SCRYPT_OPSLIMIT 33554432ULL
#define LORA_SCRYPT_MEMLIMIT 1073741824ULL

typedef struct lora_pubkey {
    unsigned char key_id[LORA_KEYID_BYTES];
    unsigned char pk[32];
} lora_pubkey;

typedef struct lora_seckey lora_seckey;

/* Key id as minisign 0.11 prints it: the 8 bytes read as a
 * little-endian u64, upper-case hex, no zero padding. */
void lora_keyid_str(const unsigned char key_id[LORA_KEYID_BYTES], char buf[LORA_KEYID_STR]);

/* A new random key pair (random key id, as minisign -G). */
int lora_keygen(lora_seckey **sk, lora_error *err);
/* The public half of a secret key. */
void lora_seckey_pubkey(const lora_seckey *sk, lora_pubkey *pk);
void lora_seckey_free(lora_seckey *sk);

/* Write KEY.pub ("untrusted comment: minisign public key ID" + base64)
 * atomically, mode 0644. */
int lora_pubkey_write(const char *path, const lora_pubkey *pk, lora_error *err);
/* The 56-character base64 string (buf >= 57 bytes). */
void lora_pubkey_b64(const lora_pubkey *pk, char buf[57]);
/* Write the secret key file atomically, mode 0600.  password NULL:
 * unencrypted (kdf 00 00, zero salt and limits, as minisign -W, but
 * with a valid chk).  Otherwise scrypt "Sc" with opslimit/memlimit
 * (0: minisign's LORA_SCRYPT_*). */
int lora_seckey_write(const char *path, const lora_seckey *sk, const char *password,
                      uint64_t opslimit, uint64_t memlimit, lora_error *err);

/* Public keys: the base64 string (minisign -P), the text of a key file
 * (first line read and ignored, second line the key, as minisign), or
 * a file.  Malformed: LORA_EINPUT with the reason. */
int lora_pubkey_from_string(const char *b64, lora_pubkey *pk, lora_error *err);
int lora_pubkey_parse(const char *text, size_t len, lora_pubkey *pk, lora_error *err);
int lora_pubkey_load(const char *path, lora_pubkey *pk, lora_error *err);

/* Secret keys from a file's text or a file.  *encrypted (optional)
 * tells whether a password is needed, without one: */
int lora_seckey_encrypted(const char *text, size_t len, int *encrypted, lora_error *err);
/* password is used only for "Sc" keys (NULL there: LORA_EUSAGE).  A
 * wrong password is LORA_ECHECK "wrong password for that key".  kdf
 * 00 00 keys load with an all-zero chk (minisign 0.11 -G -W) or a
 * valid one. */
int lora_seckey_parse(const char *text, size_t len, const char *password, lora_seckey **out,
                      lora_error *err);
int lora_seckey_load(const char *path, const char *password, lora_seckey **out,
                     lora_error *err);

/* A parsed .minisig file. */
typedef struct lora_sig {
    int prehashed;                            /* "ED" (1) or legacy "Ed" (0) */
    unsigned char key_id[LORA_KEYID_BYTES];
    unsigned char sig[64];
    unsigned char global_sig[64];
    char untrusted[LORA_SIG_COMMENT_MAX];     /* without the prefix and newline */
    char trusted[LORA_SIG_TRUSTED_MAX];       /* without the prefix and newline */
} lora_sig;

/* Parse with minisign 0.11's exact line rules: "untrusted comment: "
 * line of at most 1023 bytes + LF; the signature line; "trusted
 * comment: " line of at most 8191 bytes + LF; the global signature
 * line; CR and LF stripped, lines read as fgets with minisign's buffer
 * sizes, anything after the fourth line ignored.  LORA_EINPUT. */
int lora_sig_parse(const char *text, size_t len, lora_sig *sig, lora_error *err);
/* Sign msg prehashed ("ED": Ed25519 over BLAKE2b-512(msg)) with a
 * trusted comment (printable ASCII and tab, < 8174 bytes) and an
 * untrusted one (NULL: minisign's default); *text is the .minisig file
 * (malloc'd, *len bytes, no NUL counted). */
int lora_sign(const lora_seckey *sk, const void *msg, size_t msglen, const char *trusted,
              const char *untrusted, char **text, size_t *len, lora_error *err);
/* Verify sig over msg against one public key: key ids must match, then
 * the signature (ED or legacy Ed), then the global signature over
 * sig || trusted comment.  LORA_ECHECK on any mismatch. */
int lora_sig_verify(const lora_sig *sig, const lora_pubkey *pk, const void *msg,
                    size_t msglen, lora_error *err);
/* The same against the key among keys[0..n) with sig's key id; *which
 * (optional) receives its index.  No such key: LORA_ECHECK "signed by
 * unknown key ID". */
int lora_sig_verify_any(const lora_sig *sig, const lora_pubkey *keys, size_t n,
                        const void *msg, size_t msglen, size_t *which, lora_error *err);

/* Signed receipts (receipt.c): after lora_receipt_finish, sign the
 * receipt's bytes into PATH.minisig (written by lora_receipt_install,
 * before the receipt).  open_signed reads the receipt into private
 * memory, verifies PATH.minisig over exactly those bytes with one of
 * keys[0..n) (LORA_ECHECK on a mismatch, LORA_EINPUT when the signature
 * is missing or malformed), then parses them. */
int lora_receipt_sign(lora_receipt *r, const lora_seckey *sk, lora_error *err);
int lora_receipt_open_signed(const char *path, const lora_pubkey *keys, size_t n,
                             lora_receipt **out, lora_error *err);


/* ---- section: archives (archive.c) ---- */

/* Signed adapter archives (.lora, lora-archive(5)): a POSIX pax tar
 * (pax_restricted; uncompressed, or zstd with --compress) whose members
 * are, in this order: lora.json (the manifest), lora.json.minisig (its
 * minisign signature), adapter_config.json, adapter_model.safetensors,
 * README.md (optional), receipts/NAME (optional).  Every member after
 * the signature is named in the manifest with its size and BLAKE2b-256;
 * nothing else may be in the archive. */
#define LORA_ARCHIVE_FORMAT_VERSION 1
#define LORA_MANIFEST_MAX (1024 * 1024)             /* lora.json */
#define LORA_MINISIG_MAX (16 * 1024)                /* lora.json.minisig */
#define LORA_ARCHIVE_TEXT_MAX (1024 * 1024)         /* adapter_config.json, README.md */
#define LORA_ARCHIVE_RECEIPT_MAX (1ULL << 30)       /* each receipts/NAME */
#define LORA_ARCHIVE_PAYLOAD_MAX (64ULL << 30)      /* adapter_model.safetensors */
#define LORA_ARCHIVE_MAX_MEMBERS 64
#define LORA_ARCHIVE_MAX_TARGETS 4096

typedef struct lora_manifest_member {
    char *name;
    uint64_t size;
    unsigned char hash[LORA_HASH_BYTES];   /* BLAKE2b-256 of the member's bytes */
} lora_manifest_member;

typedef struct lora_manifest {
    int format_version;
    char *name, *task, *version;           /* 1..128 bytes of printable ASCII, no spaces */
    char *base_model;                      /* base model name, or NULL */
    int has_base_hash;
    unsigned char base_hash[LORA_HASH_BYTES]; /* lora_base_hash, when recorded */
    uint64_t r;
    double alpha;
    size_t n_targets;
    char **targets;                        /* target_modules of the config */
    size_t n_members;
    lora_manifest_member *members;         /* payload members, archive order */
} lora_manifest;

/* Parse and validate a manifest: JSON object (duplicate keys refused)
 * with exactly the fields of lora-archive(5), right types, names and
 * sizes within the limits above, no duplicate member, both adapter
 * files present.  len <= LORA_MANIFEST_MAX.  LORA_EINPUT. */
int lora_manifest_parse(const char *json, size_t len, lora_manifest **out, lora_error *err);
/* Canonical text: fixed key order, 2-space indent, final LF. */
int lora_manifest_format(const lora_manifest *m, char **json, size_t *len, lora_error *err);
void lora_manifest_free(lora_manifest *m);
const lora_manifest_member *lora_manifest_find(const lora_manifest *m, const char *name);
/* The trusted comment that signs a manifest:
 * "lora-archive\tname:NAME\tversion:VERSION\tmanifest:HEX" (malloc'd). */
char *lora_manifest_trusted_comment(const lora_manifest *m, const unsigned char hash[LORA_HASH_BYTES]);

typedef struct lora_pack_opts {
    const char *adapter_dir;       /* PEFT folder */
    const char *name, *task, *version;
    const char *base;              /* base checkpoint for --base, or NULL */
    const char *readme;            /* or NULL */
    const char *const *receipts;   /* NULL-terminated, or NULL */
    int compress;                  /* zstd instead of no compression */
} lora_pack_opts;

/* Build, sign and write an archive (temporary beside out_path, fsync,
 * rename).  Same inputs and key: same bytes (Ed25519 is deterministic
 * and nothing time-dependent is recorded). */
int lora_archive_create(const char *out_path, const lora_pack_opts *opts, const lora_seckey *sk,
                        lora_error *err);

/* An opened, verified archive.  The file is read into private memory
 * (never used through a shared mapping: rewriting the file after the
 * check changes nothing), a zstd stream decompressed there within a
 * ratio bound; members point into those verified bytes. */
typedef struct lora_archive_priv lora_archive_priv;
typedef struct lora_archive {
    char *path;
    lora_manifest *manifest;
    uint64_t file_size;
    int compressed;                /* zstd */
    int signature_checked;         /* 0 when opened with LORA_ARCHIVE_NO_VERIFY */
    size_t signer;                 /* index of the key that verified it */
    unsigned char key_id[LORA_KEYID_BYTES]; /* the signature's key id */
    char *trusted_comment;
    lora_archive_priv *priv;
} lora_archive;

/* Skip the signature check (structure, sizes and hashes still checked). */
#define LORA_ARCHIVE_NO_VERIFY 1

/* Open and verify: the signature of lora.json by one of keys[0..n)
 * (its trusted comment must be the manifest's), the manifest, every
 * member's size and hash, nothing missing, nothing extra.  Refused:
 * names absolute or with "..", links, devices, directories, sparse
 * entries, duplicate names, sizes past the limits, truncation.
 * LORA_ECHECK: bad signature, unknown key, a size or hash that differs
 * from the manifest, a member not in it or missing; LORA_EINPUT:
 * malformed or hostile archive; LORA_EIO. */
int lora_archive_open(const char *path, const lora_pubkey *keys, size_t n, int flags,
                      lora_archive **out, lora_error *err);
/* The same on an open file (read from offset 0; label names it in
 * messages) or on bytes in memory (copied): for a caller that opened
 * the file once and must verify exactly what it opened. */
int lora_archive_open_fd(int fd, const char *label, const lora_pubkey *keys, size_t n, int flags,
                         lora_archive **out, lora_error *err);
int lora_archive_open_memory(const void *buf, size_t len, const char *label,
                             const lora_pubkey *keys, size_t n, int flags, lora_archive **out,
                             lora_error *err);
/* BLAKE2b-256 of the whole archive file (the registry's blob name),
 * computed from the bytes that were verified, on request: verification does not need it
 * and it costs a pass over the file. */
void lora_archive_file_hash(const lora_archive *ar, unsigned char out[LORA_HASH_BYTES]);
/* A member's verified bytes (valid until close); NULL if absent. */
const void *lora_archive_member(const lora_archive *ar, const char *name, uint64_t *size);
/* Data offset of a member in the file (uncompressed archives), or -1. */
int64_t lora_archive_member_offset(const lora_archive *ar, const char *name);
/* Write every payload member into a new folder beside dir, then put it
 * in dir's place in one rename (an exchange when dir exists): dir holds
 * one archive's members or another's, never a mix, whatever fails.
 * dir may be absent or empty; with force a folder holding only what an
 * extraction writes is replaced; anything else: LORA_EUSAGE. */
int lora_archive_extract(const lora_archive *ar, const char *dir, int force, lora_error *err);
void lora_archive_close(lora_archive *ar);
/* Open (and verify, as lora_archive_open) an archive and load its
 * adapter without extracting: adapter_model.safetensors is used from
 * the archive's private, verified bytes; the adapter's release frees
 * the archive. */
int lora_archive_open_adapter(const char *path, const lora_pubkey *keys, size_t n, int flags,
                              lora_adapter **out, lora_error *err);
/* The adapter of an opened archive; takes ar (closed on failure, else
 * by the adapter's release). */
int lora_archive_adapter(lora_archive *ar, lora_adapter **out, lora_error *err);

/* BLAKE2b-256 over the base tensors an adapter changes (its modules'
 * targets and its modules_to_save targets, after lora_adapter_bind):
 * for each tensor in strcmp order of its base name, u64le(len) name,
 * u64le(len) dtype name, u64le(ndim), u64le(dim) each, u64le(nbytes),
 * then its bytes.  Tells whether a base is the one the adapter was
 * made for without hashing the whole checkpoint (lora-archive(5)). */
int lora_base_hash(const lora_adapter *ad, const lora_ckpt *base,
                   unsigned char out[LORA_HASH_BYTES], lora_error *err);

/* Is BASE the base AD was made for (baseid.c)?  With a recorded
 * identity (ad->has_base_hash, from an archive manifest): lora_base_hash
 * of BASE (AD bound to it) must equal it, else LORA_ECHECK naming both
 * identities and the adapter's base name; any_base turns that into a
 * loud warning on WARN.  Without one: base_model_name_or_path is
 * compared with BASE's config.json (_name_or_path; architectures, vocab
 * and hidden sizes when the name is a local folder) and a mismatch is a
 * warning.  WHO prefixes warnings (the tool's name). */
int lora_base_check(const lora_adapter *ad, const lora_ckpt *base, int any_base, const char *who,
                    FILE *warn, lora_error *err);
/* Warn on WARN when adapters combined in one merge name different bases. */
void lora_base_check_several(const lora_adapter *const *ads, size_t n, const char *who, FILE *warn);


/* ---- section: registry (registry.c) ---- */

/* The adapter registry: one SQLite database (WAL, foreign keys, busy
 * timeout; schema from registry/NNNN-*.sql applied in order under
 * PRAGMA user_version) and a content-addressed blob folder "blobs/"
 * beside it, where every registered archive is stored as
 * blobs/<BLAKE2b-256 hex>.lora.  Every change is one transaction; a
 * blob is written to a temporary in the blob folder, fsync'ed and
 * renamed under its final name before its row is committed, so a crash
 * leaves at worst an unreferenced blob (removed by gc), never a row
 * without its blob nor a partial blob under a final name.  One folder
 * holds one registry (gc removes every blob its database does not name). */
typedef struct lora_registry lora_registry;

#define LORA_REG_HASH_HEX 65        /* 64 hex digits + NUL */

/* Semantic versions (semver.org 2.0.0): MAJOR.MINOR.PATCH, optional
 * -PRE-RELEASE and +BUILD; no leading zeros in numbers.  cmp orders by
 * precedence (1.10.0 > 1.9.0 > 1.9.0-rc.2 > 1.9.0-rc.1 > 1.9.0-beta;
 * build metadata ignored), then, so that the order is total, by the
 * plain text; an invalid version sorts below every valid one. */
int lora_semver_valid(const char *v);
int lora_semver_cmp(const char *a, const char *b);

/* The registry path: $LORA_REGISTRY if set and not empty, else
 * $XDG_DATA_HOME/lora/registry.db (absolute XDG_DATA_HOME only), else
 * ~/.local/share/lora/registry.db.  *path is malloc'd. */
int lora_registry_default_path(char **path, lora_error *err);

#define LORA_REG_CREATE 1   /* create the database and its folders if missing */
/* Read only: for commands that only read (ls, show, resolve, verify,
 * evals, loading task:/reg: adapters), so that a registry the user
 * cannot write (a shared /srv/lora) and a full disk still serve them.
 * No migration is applied (an older schema is read as it is); every
 * write function fails.  A WAL database whose -shm cannot be created
 * (folder not writable) and which has no pending -wal is opened
 * immutable. */
#define LORA_REG_READONLY 2

/* Open (path NULL: the default path).  Without LORA_REG_CREATE a
 * missing database is LORA_EINPUT ("no registry at PATH").  An older
 * schema is migrated; a newer one (made by a later lora-tools) is
 * refused with LORA_EINPUT, as is a file that is not a registry. */
int lora_registry_open(const char *path, int flags, lora_registry **out, lora_error *err);
void lora_registry_close(lora_registry *reg);
const char *lora_registry_path(const lora_registry *reg);
const char *lora_registry_blob_dir(const lora_registry *reg);
/* Schema version of the open database (PRAGMA user_version) and the
 * newest this library knows. */
int lora_registry_schema_version(const lora_registry *reg);
int lora_registry_schema_latest(void);

/* Trusted public keys. */
typedef struct lora_reg_key {
    char *key_id;       /* as minisign 0.11 prints it */
    char *pubkey;       /* base64, 56 characters */
    char *name;         /* or NULL */
    int64_t added;      /* unix seconds */
} lora_reg_key;

/* Trust a key (id and base64 as lora_keyid_str / lora_pubkey_b64 give
 * them).  Trusting a key already trusted updates its name when one is
 * given; *added (optional) tells whether it was new.  A different key
 * under the same id is LORA_EINPUT. */
int lora_registry_trust(lora_registry *reg, const char *key_id, const char *pubkey_b64,
                        const char *name, int *added, lora_error *err);
/* Remove a key; every adapter it signed becomes untrusted (no longer
 * resolved) in the same transaction.  *demoted (optional) counts them.
 * Unknown key: LORA_EINPUT. */
int lora_registry_untrust(lora_registry *reg, const char *key_id, size_t *demoted,
                          lora_error *err);
/* All trusted keys, by key id. */
int lora_registry_keys(lora_registry *reg, lora_reg_key **keys, size_t *n, lora_error *err);
void lora_reg_keys_free(lora_reg_key *keys, size_t n);

/* One registered adapter. */
typedef struct lora_reg_adapter {
    int64_t id;
    char *name, *version, *task;
    char *base_model;           /* or NULL when the manifest names none */
    char *base_hash;            /* hex, or NULL */
    uint64_t r;
    double alpha;
    char hash[LORA_REG_HASH_HEX];  /* BLAKE2b-256 of the archive */
    uint64_t size;              /* archive bytes */
    char *signer;               /* key id, or NULL */
    int trusted;                /* 0: added with allow_untrusted, or its key untrusted since */
    int64_t added;              /* unix seconds */
    char *path;                 /* the blob: BLOBDIR/<hash>.lora */
} lora_reg_adapter;

void lora_reg_adapter_free(lora_reg_adapter *a);          /* one, from show/get/resolve */
void lora_reg_adapters_free(lora_reg_adapter *a, size_t n); /* an array, from ls */

/* Register a .lora archive: copy it into the blob folder, verify the
 * copy (signature by a trusted key, manifest, every member's size and
 * hash; lora_archive_open), then commit blob and row in one
 * transaction.  An archive no trusted key signed is refused
 * (LORA_ECHECK) unless allow_untrusted, which registers it marked
 * untrusted (never resolved) and puts the signature problem in why
 * (optional, LORA_ERROR_MAX bytes) for the caller's warning.  The same
 * archive again is a no-op (*added = 0; a trusted add upgrades an
 * untrusted row); the same NAME@VERSION with other bytes, or a version
 * that is not semantic, is LORA_EINPUT.  out, added optional. */
int lora_registry_add(lora_registry *reg, const char *archive, int allow_untrusted,
                      lora_reg_adapter **out, int *added, char *why, lora_error *err);
/* Every adapter, or those of one task and/or one base model name (NULL:
 * any), ordered by name then semantic version. */
int lora_registry_ls(lora_registry *reg, const char *task, const char *base,
                     lora_reg_adapter **list, size_t *n, lora_error *err);
/* One adapter by "NAME@VERSION", "NAME" (its newest version), or the
 * archive hash (64 hex digits, or a unique prefix of at least 8).
 * check_blob: re-hash the blob and refuse (LORA_ECHECK) a missing or
 * corrupted one.  Not found: LORA_EINPUT. */
int lora_registry_get(lora_registry *reg, const char *spec, int check_blob,
                      lora_reg_adapter **out, lora_error *err);
/* The adapter serving TASK: among trusted adapters of that task (and of
 * base model BASE when not NULL; of version VERSION when not NULL), the
 * newest by semantic version, ties broken by the latest added then by
 * name.  The blob is re-hashed: a missing or corrupted blob is refused
 * (LORA_ECHECK), never replaced by another version.  None: LORA_EINPUT. */
int lora_registry_resolve(lora_registry *reg, const char *task, const char *base,
                          const char *version, lora_reg_adapter **out, lora_error *err);
/* Load a registered adapter from the bytes that are checked: the blob
 * is read once into private memory (lora_archive_open_fd); its size and BLAKE2b-256
 * must be the row's (a swapped blob is refused naming what it holds),
 * its signature must verify with the registry's trusted keys (by the
 * row's signer), and its manifest's name, version, task and base must
 * be the row's; the adapter is then loaded from those same bytes and
 * named "reg:NAME@VERSION" (ad->path).  An untrusted row is refused
 * (LORA_ECHECK) unless allow_untrusted, which skips the signature
 * only. */
int lora_registry_open_adapter(lora_registry *reg, const lora_reg_adapter *a,
                               int allow_untrusted, lora_adapter **out, lora_error *err);
/* Remove NAME@VERSION's row (and its eval results).  Its blob stays
 * until gc.  Unknown: LORA_EINPUT. */
int lora_registry_rm(lora_registry *reg, const char *name, const char *version,
                     lora_error *err);
/* Remove blobs no row names and temporaries older than an hour (left by
 * an interrupted add), under the write lock.  Counts are optional. */
int lora_registry_gc(lora_registry *reg, size_t *blobs, uint64_t *bytes, lora_error *err);
/* Re-hash every blob.  Each problem (missing blob, size or hash
 * mismatch) becomes one line "NAME@VERSION: what" in *problems
 * (malloc'd array of malloc'd strings; free with lora_reg_problems_free).
 * Returns LORA_ECHECK when there is any, LORA_OK when every blob is
 * intact; other codes for errors that stopped the check. */
int lora_registry_verify(lora_registry *reg, char ***problems, size_t *n, lora_error *err);
void lora_reg_problems_free(char **problems, size_t n);

/* Evaluation results, for `lora-eval --record` and `lora-registry evals`. */
typedef struct lora_reg_eval {
    char *adapter;        /* record: "NAME@VERSION", "reg:NAME@VERSION" or the
                             archive's BLAKE2b-256 hex; lists: "NAME@VERSION" */
    char *base_hash;      /* hash of the base checkpoint (required) */
    char *dataset_hash;   /* BLAKE2b-256 hex of the data set file (required) */
    char *dataset;        /* data set name for people, or NULL */
    char *metric;         /* "accuracy", "nll", ... (required) */
    double value;
    uint64_t items;       /* items evaluated */
    int64_t time;         /* unix seconds; 0 when recording: now */
    char *tool_version;   /* NULL when recording: this library's version */
    char *mode;           /* "base", "unmerged", "merged", or NULL (unknown) */
    char *base_name;      /* base model name for people, or NULL */
} lora_reg_eval;

/* Record one result for a registered adapter, in one transaction.
 * Unknown adapter, empty required field or a non-finite value:
 * LORA_EINPUT. */
int lora_registry_record_eval(lora_registry *reg, const lora_reg_eval *ev, lora_error *err);
/* Results of one adapter ("NAME" for all its versions, "NAME@VERSION")
 * or of all (NULL), oldest first. */
int lora_registry_evals(lora_registry *reg, const char *adapter, lora_reg_eval **list,
                        size_t *n, lora_error *err);
void lora_reg_evals_free(lora_reg_eval *list, size_t n);


/* ---- section: text metrics (metrics.c) ---- */

/* Corpus BLEU-4 exactly as NLTK 3.8's corpus_bleu (one reference per
 * hypothesis, uniform weights, no smoothing), tokens split on ASCII
 * whitespace.  Accumulate with lora_bleu_add, read with lora_bleu_score
 * (NaN when no item was added, a value in [0, 1] otherwise). */
typedef struct lora_bleu {
    uint64_t match[4];         /* clipped n-gram matches, n = 1..4 */
    uint64_t total[4];         /* hypothesis n-grams (at least 1 per item) */
    uint64_t hyp_len, ref_len; /* tokens */
    size_t items;
} lora_bleu;

void lora_bleu_init(lora_bleu *b);
int lora_bleu_add(lora_bleu *b, const char *hyp, const char *ref, lora_error *err);
double lora_bleu_score(const lora_bleu *b);

/* ROUGE-1, ROUGE-2 and ROUGE-L (longest common subsequence) F1 of one
 * hypothesis against one reference, whitespace tokens, lower-cased. */
typedef struct lora_rouge_f1 {
    double rouge1, rouge2, rougeL;
} lora_rouge_f1;

int lora_rouge(const char *hyp, const char *ref, lora_rouge_f1 *out, lora_error *err);
/* 1 when equal after stripping surrounding whitespace, else 0. */
int lora_exact_match(const char *hyp, const char *ref);


/* ---- section: models and evaluation (model.c, dataset.c, eval.c) ---- */

/* Models: a Hugging Face causal-LM folder (config.json + safetensors,
 * one file or sharded) of one of the architectures below, weights
 * decoded to F32 at load, forward pass in F32 with every matrix product
 * through OpenBLAS (cblas_sgemm; cblas_sgemv for a single token).
 *
 * Numerical contract of the forward pass: every weight is the exact F32
 * value of the stored F16/BF16/F32 number; activations are F32; matrix
 * products are cblas_sgemm, or cblas_sgemv for one token (F32
 * accumulation, summation order is
 * OpenBLAS's and may change with the thread count and the CPU kernel);
 * the reductions of LayerNorm/RMSNorm, softmax and log-softmax are
 * summed in double in increasing index order and rounded once to F32.
 * Logits agree with PyTorch's F32 computation of the same model to
 * within 1e-4 of the largest |logit| of the sequence (tests/check_model.c
 * checks it against committed reference logits). */

enum {
    LORA_ARCH_GPT2 = 1,    /* GPT2LMHeadModel */
    LORA_ARCH_LLAMA = 2,   /* LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM */
    LORA_ARCH_QWEN3 = 3,   /* Qwen3ForCausalLM */
    LORA_ARCH_OPT = 4,     /* OPTForCausalLM */
    LORA_ARCH_PHI = 5,     /* PhiForCausalLM */
    LORA_ARCH_NEOX = 6,    /* GPTNeoXForCausalLM */
    LORA_ARCH_GEMMA2 = 7,  /* Gemma2ForCausalLM */
    LORA_ARCH_GEMMA3 = 8,  /* Gemma3ForCausalLM */
    LORA_ARCH_PHI3 = 9     /* Phi3ForCausalLM */
};

enum { LORA_ROPE_NONE = 0, LORA_ROPE_LINEAR = 1, LORA_ROPE_LLAMA3 = 2, LORA_ROPE_LONGROPE = 3 };
#define LORA_ROPE_MAX_FACTORS 512   /* longrope long/short factors (rotary_dim / 2) */

/* Limits on what a config may ask for (hostile configs must not make
 * us allocate without bound). */
#define LORA_MODEL_MAX_VOCAB 4194304ULL
#define LORA_MODEL_MAX_HIDDEN 65536ULL
#define LORA_MODEL_MAX_LAYERS 1024ULL
#define LORA_MODEL_MAX_POSITIONS 1048576ULL
#define LORA_MODEL_MAX_CONFIG (1u << 20)   /* config.json bytes */

typedef struct lora_model_config {
    int arch;                  /* LORA_ARCH_* */
    char architecture[64];     /* architectures[0] as written */
    uint64_t vocab;            /* vocab_size */
    uint64_t hidden;           /* n_embd / hidden_size */
    uint64_t layers;           /* n_layer / num_hidden_layers */
    uint64_t heads;            /* n_head / num_attention_heads */
    uint64_t kv_heads;         /* num_key_value_heads (GPT-2: heads) */
    uint64_t head_dim;         /* head_dim, or hidden / heads */
    uint64_t inner;            /* n_inner (null: 4·hidden) / intermediate_size */
    uint64_t max_positions;    /* n_positions / max_position_embeddings */
    double norm_eps;           /* layer_norm_epsilon / rms_norm_eps */
    int tied;                  /* tie_word_embeddings */
    int qkv_bias;              /* LLaMA family: q/k/v carry biases (Qwen2, attention_bias) */
    int o_bias;                /* o_proj bias (attention_bias) */
    int mlp_bias;              /* mlp_bias */
    double rope_theta;
    int rope_type;             /* LORA_ROPE_* */
    double rope_factor, rope_low_freq, rope_high_freq;
    uint64_t rope_original_max;
    /* Sliding-window attention: query i sees keys j with 0 <= i - j <
     * sliding_window on layers l >= window_from, except, with a
     * window_period P, those with (l + 1) % P == 0 (Gemma's pattern). */
    uint64_t sliding_window, window_from, window_period;
    int post_norm;             /* OPT do_layer_norm_before false: norms after the residual add */
    uint64_t embed_dim;        /* OPT word_embed_proj_dim (others: hidden) */
    uint64_t rotary_dim;       /* RoPE on the first rotary_dim of each head (partial rotary) */
    int parallel;              /* x += attn(n1(x)) + mlp(n2 or n1(x)) (Phi, GPT-NeoX) */
    int act;                   /* activation when the family has a choice (0: its default) */
    /* Gemma: embeddings times embed_scale, attention scores times
     * attn_scale (0: 1/sqrt(head_dim)), tanh soft-capping of the scores and
     * of the logits (0: none), RoPE theta of the sliding layers (0: rope_theta) */
    double embed_scale, attn_scale, attn_softcap, final_softcap, rope_local_theta;
    /* Phi-3 longrope: per-frequency divisors, the short ones for a forward
     * whose last position is below rope_original_max, the long ones past
     * it; cos and sin times rope_attn_factor */
    double rope_long[LORA_ROPE_MAX_FACTORS], rope_short[LORA_ROPE_MAX_FACTORS];
    uint64_t rope_nfactors;
    double rope_attn_factor;
} lora_model_config;

/* Parse and validate a config.json text: architecture known (anything
 * else refused, naming it), sizes within the limits above and
 * consistent (heads divide, even head_dim for RoPE), the family's
 * activations, rope_scaling linear, llama3 or (Phi-3) longrope, sliding
 * windows in the layer patterns the forward computes (others refused).
 * LORA_EINPUT with a message naming the key. */
int lora_model_config_parse(const char *json, size_t len, lora_model_config *cfg,
                            lora_error *err);

typedef struct lora_model lora_model;

/* Open DIR (config.json + model.safetensors or the sharded index),
 * check every tensor the architecture needs is there with the right
 * shape and a readable dtype, decode them to F32. */
int lora_model_open(const char *dir, lora_model **out, lora_error *err);
void lora_model_free(lora_model *m);
const lora_model_config *lora_model_cfg(const lora_model *m);
const lora_ckpt *lora_model_ckpt(const lora_model *m);
/* Parameters held (F32 elements, adapters excluded). */
uint64_t lora_model_params(const lora_model *m);

/* OpenBLAS threads for every later forward (process-wide, as OpenBLAS is). */
void lora_set_threads(int n);

/* Adapters on a model.  attach binds AD to the model's checkpoint
 * (lora_adapter_bind) and prepares:
 *  - unmerged: A and B in F32 per adapted weight; the forward adds
 *    scale·B·(A·x) to W0·x, never forming ΔW;
 *  - merged (when want_merged): the weight the merge engine writes for
 *    W0 + ΔW in the checkpoint's dtype (lora_merge_tensor), decoded to F32.
 * The attention and MLP projections, the input embedding
 * (lora_embedding_A/B: x += scale·B·A[:, token]) and the head may be
 * adapted; an lm_head update on a model whose head is tied to the
 * embeddings changes the head alone (as PEFT applies it), an embedding
 * update on such a model is refused (a merge would change the head too);
 * modules_to_save are refused with a message.
 * The adapter must outlive the model or the next detach. */
int lora_model_attach(lora_model *m, lora_adapter *ad, int want_merged, lora_error *err);
void lora_model_detach(lora_model *m);
/* Number of weights the attached adapter changes (0 when none). */
size_t lora_model_adapted(const lora_model *m);

enum {
    LORA_MODE_BASE = 0,       /* W0 only */
    LORA_MODE_UNMERGED = 1,   /* W0·x + s·B·(A·x) */
    LORA_MODE_MERGED = 2      /* merged weights */
};

/* A forward session: KV cache and work buffers for up to max_tokens
 * positions (at most the model's max_positions), in one mode. */
typedef struct lora_run lora_run;

int lora_run_new(lora_model *m, int mode, uint64_t max_tokens, lora_run **out,
                 lora_error *err);
void lora_run_free(lora_run *r);
/* Tokens in the cache. */
uint64_t lora_run_pos(const lora_run *r);
/* Forget the cache past position pos (pos <= lora_run_pos). */
void lora_run_truncate(lora_run *r, uint64_t pos);
/* Feed n tokens at the next positions.  logits (may be NULL) receives
 * the logits of the last `rows` of those positions, rows × vocab,
 * row-major (rows <= n).  Token ids are checked against the vocabulary. */
int lora_run_forward(lora_run *r, const int32_t *tokens, size_t n, float *logits,
                     size_t rows, lora_error *err);

/* Data sets: JSONL, one item a line (blank lines skipped):
 *   multiple choice {"prompt":P, "choices":[C,...], "label":i}
 *   generation      {"prompt":P, "target":T}
 * where P, C and T are each text or a list of token ids.  Other keys are
 * kept: "id" (any JSON value) is echoed into the predictions, the rest
 * kept as a JSON object.  Text needs lora_dataset_tokenize before
 * evaluation. */
#define LORA_DS_MAX_LINE (1u << 20)       /* bytes per line */
#define LORA_DS_MAX_TOKENS 65536u         /* ids per prompt, choice or target */
#define LORA_DS_MAX_CHOICES 1024u
#define LORA_DS_MAX_ITEMS 10000000u

enum { LORA_ITEM_CHOICE = 1, LORA_ITEM_GENERATE = 2 };

typedef struct lora_item {
    int kind;                  /* LORA_ITEM_* */
    size_t line;               /* 1-based line in the file */
    int32_t *prompt;
    size_t n_prompt;
    int32_t *target;           /* generation */
    size_t n_target;
    size_t n_choices;          /* multiple choice */
    int32_t **choices;
    size_t *choice_len;
    size_t label;
    /* text as given (NULL where ids were given); tokenized in place */
    char *prompt_text;
    char *target_text;
    char **choice_text;        /* n_choices entries */
    /* leading continuation tokens that are context, fed but not scored:
     * the tokens from where prompt+continuation's encoding departs from
     * the prompt's own to the end of the prompt's own tokens (0 unless a
     * token straddles the boundary) */
    size_t target_skip;
    size_t *choice_skip;       /* n_choices entries */
    char *id;                  /* the "id" value as compact JSON, or NULL */
    char *extra;               /* other keys as a compact JSON object, or NULL */
} lora_item;

typedef struct lora_dataset {
    size_t n;
    lora_item *items;
    size_t max_len;            /* longest prompt + choice/target */
    size_t text_items;         /* items with a text field */
    size_t first_text_line;    /* line of the first, 0 when none */
    int tokenized;             /* lora_dataset_tokenize ran */
    unsigned char hash[LORA_HASH_BYTES]; /* BLAKE2b-256 of the bytes parsed */
} lora_dataset;

/* How text becomes token ids and back (a lora_tokenizer's functions, or
 * a test's own): encode as lora_tokenizer_encode, decode as
 * lora_tokenizer_decode, with ARG first. */
typedef struct lora_text_codec {
    void *arg;
    int (*encode)(void *arg, const char *text, size_t len, int add_special, int32_t **ids,
                  size_t *n, lora_error *err);
    int (*decode)(void *arg, const int32_t *ids, size_t n, int skip_special, char **text,
                  lora_error *err);
    int32_t bos, eos;          /* -1: none */
} lora_text_codec;

/* Tokenize every text field, the lm-evaluation-harness way: a text
 * prompt is encoded with the special tokens its post-processor adds
 * (BOS as the tokenizer config says; a trailing EOS is dropped), its
 * trailing whitespace moved to the front of text continuations; a text
 * choice or target is scored as the tokens of encode(prompt +
 * continuation) after the first len(encode(prompt)) tokens.  When a
 * token straddles the boundary, the prompt fed is the prefix both
 * encodings share and the tokens between it and len(encode(prompt))
 * are fed as context (choice_skip, target_skip) but not scored.  A text
 * continuation of an ids prompt is encoded alone without special
 * tokens.  Errors are LORA_EINPUT "line N: problem". */
int lora_dataset_tokenize(lora_dataset *ds, const lora_text_codec *tc, lora_error *err);

/* Parse JSONL bytes.  vocab > 0: every id must be < vocab.  A bad line
 * is LORA_EINPUT "NAME:LINE: problem". */
int lora_dataset_parse(const char *buf, size_t len, const char *name, uint64_t vocab,
                       lora_dataset **out, lora_error *err);
/* Read a file ("-" for stdin) and parse it. */
int lora_dataset_load(const char *path, uint64_t vocab, lora_dataset **out, lora_error *err);
void lora_dataset_free(lora_dataset *ds);

/* Evaluation.  Multiple choice: the choice with the highest summed
 * log-probability of its scored tokens (past choice_skip) given the
 * prompt wins (ties: the first).  Generation: greedy decoding (KV cache,
 * argmax, ties to the lowest id) after the prompt and target_skip
 * tokens; correct when its text equals the target's up to surrounding
 * whitespace (text: decoded through opts->codec, required for a text
 * target; ids: the ids in decimal), which for ids means the same ids;
 * its NLL is that of the scored target tokens under teacher forcing.
 * The text metrics are metrics.c's.  NLL and log-probabilities are
 * computed in double from the F32 logits.  A data set with text must
 * have been through lora_dataset_tokenize. */
typedef struct lora_eval_opts {
    int mode;                  /* LORA_MODE_* */
    int compare_mode;          /* -1: none; else a second mode run on each item
                                  and compared with the first */
    size_t limit;              /* 0: all items */
    /* called after each item (may be NULL): items done, items in all */
    void (*progress)(void *arg, size_t done, size_t total);
    void *progress_arg;
    /* generation: greedy decoding stops at EOS (codec->eos), when the
     * target is complete (the ids, or for text the text up to
     * surrounding whitespace), or after target tokens + max_new_tokens
     * tokens (lora-eval's default: 32), or at the model's last position */
    size_t max_new_tokens;
    const lora_text_codec *codec; /* decodes generations of text items (may be NULL) */
    int keep_predictions;      /* fill res->preds */
} lora_eval_opts;

/* One item's outcome (lora_eval_opts.keep_predictions). */
typedef struct lora_prediction {
    size_t item;               /* index in the data set */
    int correct;
    double nll;                /* summed over the scored target tokens */
    uint64_t nll_tokens;
    size_t predicted;          /* multiple choice: the winning choice */
    double *logprobs;          /* multiple choice: each choice's summed log-prob */
    int32_t *ids;              /* generation: generated ids (EOS excluded) */
    size_t n_ids;
    char *text;                /* generation: generated text (ids data: the ids
                                  in decimal, space-separated) */
    char *reference;           /* generation: what text was compared with */
    lora_rouge_f1 rouge;
} lora_prediction;

typedef struct lora_eval_result {
    size_t items, correct;
    size_t choice_items, choice_correct;
    size_t gen_items, gen_correct;
    double accuracy;           /* correct / items */
    double nll_sum;            /* over every scored token (choices' tokens of the
                                  labelled choice, generation targets) */
    uint64_t nll_tokens;
    double mean_nll;           /* nll_sum / nll_tokens */
    uint64_t tokens;           /* positions run through the forward pass (first mode) */
    double seconds;            /* wall time of the first mode */
    double tokens_per_second;
    /* compare_mode only */
    double max_abs_dlogit;     /* largest |Δlogit| at every scored position */
    size_t disagreements;      /* items whose prediction differs */
    size_t first_disagreement; /* line of the first, 0 when none */
    /* the paper's metrics: NaN when no item has them */
    double choice_accuracy;    /* choice_correct / choice_items */
    double exact_match;        /* gen_correct / gen_items */
    double bleu;               /* corpus BLEU-4 over the generations */
    double rouge1, rouge2, rougeL; /* mean per-item F1 */
    double perplexity;         /* exp(mean_nll) */
    lora_prediction *preds;    /* keep_predictions: one per item evaluated */
} lora_eval_result;

void lora_eval_result_free(lora_eval_result *res);

/* Write res's predictions as JSONL to PATH (atomically; "-": standard
 * output): one line per item, {"id" (when the item had one), "line",
 * multiple choice: "predicted", "label", "logprobs"; generation: "text",
 * "ids", "target", "rouge1/2/L"; "correct", "nll", "nll_tokens"}. */
int lora_eval_write_predictions(const char *path, const lora_dataset *ds,
                                const lora_eval_result *res, lora_error *err);

/* Perplexity of a token sequence (lora-eval --text), the Hugging Face
 * sliding-window recipe: windows of CONTEXT tokens starting every STRIDE
 * tokens (stride <= context); each window scores the tokens past the
 * previous window's end, so every token but the first is scored once,
 * with up to context - stride tokens of context before it. */
typedef struct lora_ppl_result {
    double nll_sum;
    uint64_t tokens;           /* scored */
    double mean_nll, perplexity;
    size_t windows;
} lora_ppl_result;

int lora_eval_perplexity(lora_model *m, int mode, const int32_t *ids, size_t n, size_t context,
                         size_t stride, lora_ppl_result *res, lora_error *err);

int lora_eval_run(lora_model *m, const lora_dataset *ds, const lora_eval_opts *opts,
                  lora_eval_result *res, lora_error *err);

/* lora-eval --record.  The registry row of an adapter SPEC as
 * lora_adapter_load names it: "task:TASK" (lora_registry_resolve, the
 * adapter task: loads), "reg:NAME@VERSION", or a .lora archive file
 * whose BLAKE2b-256 is registered.  A PEFT folder or an unregistered
 * archive: LORA_EINPUT saying so. */
int lora_eval_registered(lora_registry *reg, const char *spec, lora_reg_adapter **out,
                         lora_error *err);
/* Record a finished evaluation of A's adapter AD (attached to M): one
 * eval row per metric that has items, all with the same time:
 * "accuracy" (multiple choice), "exact_match", "bleu", "rouge1",
 * "rouge2", "rougeL" (generation), "nll" (mean per scored token) and
 * "perplexity"; items = res->items, base hash = lora_base_hash(AD, M's
 * checkpoint) in hex, data set hash DATASET_HASH (hex BLAKE2b-256 of
 * the data bytes) and name DATASET, MODE ("unmerged", "merged") and
 * BASE_NAME (may be NULL).  *recorded (optional): rows written (each row
 * is its own transaction). */
int lora_eval_record(lora_registry *reg, const lora_reg_adapter *a, const lora_model *m,
                     const lora_adapter *ad, const char *dataset_hash, const char *dataset,
                     const char *mode, const char *base_name,
                     const lora_eval_result *res, size_t *recorded, lora_error *err);

/* Exact recovery of W0: for every weight the adapter changes, merge in
 * memory (lora_tensor_merge, the code lora-merge runs, with its
 * receipt corrections), unmerge with those corrections
 * (lora_tensor_unmerge, the code lora-unmerge runs) and compare with
 * the stored base bytes element by element.  AD is bound to BASE here. */
typedef struct lora_recovery {
    char *tensor;              /* base tensor name */
    lora_dtype dtype;
    uint64_t total;            /* elements */
    uint64_t exact;            /* elements whose bytes came back identical */
    uint64_t fixes;            /* corrections the merge recorded */
} lora_recovery;

int lora_eval_check_recovery(const lora_ckpt *base, lora_adapter *ad, int nthreads,
                             lora_recovery **out, size_t *n, lora_error *err);
void lora_recovery_free(lora_recovery *r, size_t n);


/* ---- section: tokenizer (tokenizer*.c) ---- */

/* Hugging Face tokenizer.json (model BPE: byte-level as GPT-2, Llama 3
 * and Qwen2, or SentencePiece-style with byte fallback), ids identical
 * to Hugging Face tokenizers.  Anything else (WordPiece, Unigram, an
 * unknown normalizer, pre-tokenizer, post-processor or decoder) is
 * refused, LORA_EINPUT naming the component.  A tokenizer is read-only
 * after open; encode and decode may run from several threads.
 * Special tokens (add_special): the post_processor's template, with
 * tokenizer_config.json's add_bos_token / add_eos_token overriding it
 * and Llama 3's <|begin_of_text|> added when it is the bos_token (the
 * first Llama 3 tokenizer.json lacks the template).  bos/eos: the
 * config's bos_token / eos_token, else the template's.  vocab_size: the
 * highest id + 1 (the number of tokens, added ones included, when the
 * ids are dense as in every real tokenizer).  Invalid UTF-8 text and
 * ids outside the vocabulary are refused (LORA_EINPUT). */
typedef struct lora_tokenizer lora_tokenizer;
/* PATH: a tokenizer.json file or a folder holding tokenizer.json (and optionally tokenizer_config.json). */
int lora_tokenizer_open(const char *path, lora_tokenizer **out, lora_error *err);
void lora_tokenizer_free(lora_tokenizer *tok);
/* Encode LEN bytes of UTF-8 TEXT. add_special: apply the post_processor (BOS/EOS as tokenizer.json / tokenizer_config.json say). *ids is malloc'd, caller frees. */
int lora_tokenizer_encode(const lora_tokenizer *tok, const char *text, size_t len, int add_special, int32_t **ids, size_t *n, lora_error *err);
/* Decode ids to malloc'd NUL-terminated UTF-8. skip_special: drop special added tokens. */
int lora_tokenizer_decode(const lora_tokenizer *tok, const int32_t *ids, size_t n, int skip_special, char **text, lora_error *err);
int32_t lora_tokenizer_bos(const lora_tokenizer *tok);   /* -1 when none */
int32_t lora_tokenizer_eos(const lora_tokenizer *tok);   /* -1 when none */
size_t lora_tokenizer_vocab_size(const lora_tokenizer *tok);  /* including added tokens */
/* lora-eval --tokenize / --detokenize: JSONL from IN (NAME in messages)
 * to OUT, one line per non-blank input line.  detokenize 0: the "text"
 * string becomes "ids" (the post-processor's special tokens added when
 * SPECIAL); 1: "ids" becomes "text" (special tokens dropped unless
 * SPECIAL).  Every other key is echoed in its order.  Nothing is written
 * unless every line succeeds; *lines (optional): lines written. */
int lora_tokenize_jsonl(const lora_tokenizer *tok, FILE *in, const char *name, FILE *out,
                        int detokenize, int special, size_t *lines, lora_error *err);

/* ---- section: reliability (error.c) ---- */

/* Remove every temporary file and folder liblora's writers have open
 * right now (files named OUT.tmp-XXXXXX beside their outputs, folders
 * OUT.tmp-XXXXXX; never a final name).  Async-signal-safe: for a tool's
 * handler of a fatal signal such as SIGBUS, which then calls _exit.
 * Temporary folders are emptied and removed on Linux only. */
void lora_tmp_remove_all(void);

/* ---- section: GGUF files and llama.cpp LoRA adapters (gguf.c, gguf_write.c,
 *      gguf_names.c, convert.c) ---- */

/* GGUF (llama.cpp, formats.md §5): versions 2 and 3, little-endian
 * only.  The reader maps the file and checks every count, string
 * length, array length, tensor dimension, type, offset and the
 * alignment against the file size before anything is allocated for
 * them or read through them; a big-endian file, an unknown value type
 * or ggml type, duplicate keys or tensor names, overlapping or
 * misaligned tensors are refused (LORA_EINPUT, naming the problem). */
enum {
    LORA_GGUF_U8 = 0, LORA_GGUF_I8 = 1, LORA_GGUF_U16 = 2, LORA_GGUF_I16 = 3,
    LORA_GGUF_U32 = 4, LORA_GGUF_I32 = 5, LORA_GGUF_F32 = 6, LORA_GGUF_BOOL = 7,
    LORA_GGUF_STRING = 8, LORA_GGUF_ARRAY = 9, LORA_GGUF_U64 = 10, LORA_GGUF_I64 = 11,
    LORA_GGUF_F64 = 12
};
/* ggml tensor types the tools compute with (others are carried as bytes). */
enum { LORA_GGML_F32 = 0, LORA_GGML_F16 = 1, LORA_GGML_BF16 = 30 };

#define LORA_GGUF_MAX_DIMS 4
#define LORA_GGUF_MAX_NAME 63          /* ggml's GGML_MAX_NAME - 1 */
#define LORA_GGUF_DEFAULT_ALIGNMENT 32
#define LORA_GGUF_MAX_STRING (1ULL << 30)  /* one key or string value */

/* 1 when buf (len bytes, the start of a file) begins with GGUF's magic. */
int lora_gguf_magic(const void *buf, size_t len);
/* 1 when the file at PATH begins with GGUF's magic (0 when not, or unreadable). */
int lora_gguf_is_file(const char *path);

typedef struct lora_gguf_kv {
    const char *key;
    int type;                 /* LORA_GGUF_* */
    int arr_type;             /* element type of an array, else -1 */
    uint64_t n;               /* array elements (1 for a scalar) */
    const void *data;         /* numbers (scalar or array): little-endian bytes
                                 inside the file; NULL for strings */
    const char *str;          /* STRING: NUL-terminated copy (len bytes, may hold NUL) */
    uint64_t len;
    uint64_t raw_off, raw_len;/* the value's bytes in the file (after the type) */
} lora_gguf_kv;

typedef struct lora_gguf_tensor {
    const char *name;
    uint32_t type;            /* ggml type */
    int ndim;                 /* 1..4 */
    uint64_t ne[LORA_GGUF_MAX_DIMS];   /* ne[0] innermost: reverse of the torch shape */
    uint64_t numel, nbytes;
    uint64_t offset;          /* absolute offset in the file */
    const void *data;
    lora_dtype dtype;         /* F32, F16, BF16; LORA_DT_INVALID for other types */
} lora_gguf_tensor;

typedef struct lora_gguf lora_gguf;

int lora_gguf_open(const char *path, lora_gguf **out, lora_error *err);
/* buf must outlive the object; name is used in messages. */
int lora_gguf_open_memory(const void *buf, size_t len, const char *name, lora_gguf **out,
                          lora_error *err);
void lora_gguf_close(lora_gguf *g);
const char *lora_gguf_path(const lora_gguf *g);
uint32_t lora_gguf_version(const lora_gguf *g);
uint64_t lora_gguf_size(const lora_gguf *g);
uint64_t lora_gguf_alignment(const lora_gguf *g);
uint64_t lora_gguf_data_offset(const lora_gguf *g);   /* start of the tensor data */
size_t lora_gguf_kv_count(const lora_gguf *g);
const lora_gguf_kv *lora_gguf_kv_at(const lora_gguf *g, size_t i);   /* file order */
const lora_gguf_kv *lora_gguf_find_kv(const lora_gguf *g, const char *key);
/* Element i of a string array: *s points into the file (not NUL-terminated). */
int lora_gguf_kv_arr_str(const lora_gguf *g, const lora_gguf_kv *kv, uint64_t i, const char **s,
                         uint64_t *len);
/* A STRING value by key, or NULL when absent or of another type. */
const char *lora_gguf_get_str(const lora_gguf *g, const char *key);
/* A number by key, converted to double from any numeric or bool type;
 * 0 when found, -1 when absent or not a number. */
int lora_gguf_get_num(const lora_gguf *g, const char *key, double *out);
size_t lora_gguf_tensor_count(const lora_gguf *g);
const lora_gguf_tensor *lora_gguf_tensor_at(const lora_gguf *g, size_t i);  /* file order */
const lora_gguf_tensor *lora_gguf_find_tensor(const lora_gguf *g, const char *name);
/* "F32", "Q4_K", ...; NULL for a type ggml does not define. */
const char *lora_ggml_type_name(uint32_t type);
/* Value type name ("u32", "string", ...); NULL when unknown. */
const char *lora_gguf_type_name(int type);

/* Writer: key/values and tensor declarations first, then start (the
 * header and its padding are written), then tensor bytes in any order,
 * then commit (each tensor padded to the alignment, fsync, rename of
 * the temporary beside PATH).  Tensors are laid out in declaration
 * order.  alignment 0: 32; otherwise a power of two, written as
 * general.alignment (u32) when it is not 32. */
typedef struct lora_ggw lora_ggw;

int lora_ggw_new(const char *path, uint32_t alignment, lora_ggw **out, lora_error *err);
int lora_ggw_kv_str(lora_ggw *w, const char *key, const char *value, lora_error *err);
/* A number, or an array of n numbers when arr is non-zero (type is
 * then the element type); data holds little-endian values. */
int lora_ggw_kv_num(lora_ggw *w, const char *key, int type, int arr, uint64_t n,
                    const void *data, lora_error *err);
int lora_ggw_kv_u32(lora_ggw *w, const char *key, uint32_t v, lora_error *err);
int lora_ggw_kv_f32(lora_ggw *w, const char *key, float v, lora_error *err);
/* Copy a key/value of an opened file as it is (any type). */
int lora_ggw_kv_copy(lora_ggw *w, const lora_gguf *g, const lora_gguf_kv *kv, lora_error *err);
/* ne in ggml order; type any ggml type (its byte size from ggml's table). */
int lora_ggw_declare(lora_ggw *w, const char *name, uint32_t type, int ndim, const uint64_t *ne,
                     lora_error *err);
int lora_ggw_start(lora_ggw *w, lora_error *err);
int lora_ggw_write(lora_ggw *w, const char *name, uint64_t off, const void *buf, size_t len,
                   lora_error *err);
/* Every tensor must have been written in full (LORA_EIO otherwise,
 * nothing left behind).  Frees w whatever the result. */
int lora_ggw_commit(lora_ggw *w, lora_error *err);
void lora_ggw_abort(lora_ggw *w);

/* Names, HF module path <-> GGUF tensor name (gguf_names.c), after
 * llama.cpp's gguf-py tensor_mapping.py, for the architectures
 * lora-convert supports: llama (and mistral), qwen2, gemma2, gemma3,
 * phi3, gpt2. */
typedef struct lora_gguf_arch {
    char name[32];            /* general.architecture: "llama", "qwen2", ... */
    char model_type[64];      /* config.json model_type */
    uint64_t heads, kv_heads; /* for llama's q/k row permutation */
    int permute_qk;           /* llama.cpp's converter permutes q/k rows */
    int tied;                 /* tie_word_embeddings (no output tensor in GGUF) */
} lora_gguf_arch;

/* From a config.json text; an architecture not in the list above is
 * LORA_EINPUT naming it. */
int lora_gguf_arch_from_config(const char *json, size_t len, lora_gguf_arch *arch,
                               lora_error *err);
/* From general.architecture (heads unknown: 0). */
int lora_gguf_arch_from_name(const char *name, lora_gguf_arch *arch, lora_error *err);
/* HF module path (PEFT prefixes removed, e.g. "model.layers.3.self_attn.q_proj")
 * -> GGUF tensor base name ("blk.3.attn_q.weight") in out; 0, or -1 when
 * the module has no GGUF tensor. */
int lora_gguf_name_from_hf(const lora_gguf_arch *arch, const char *module, char *out, size_t cap);
/* The reverse: GGUF base name -> HF module path; 0 or -1. */
int lora_gguf_name_to_hf(const lora_gguf_arch *arch, const char *gguf, char *out, size_t cap);
/* llama.cpp's q/k row permutation of a matrix with rows = n_head·hd
 * rows of `cols` elements of `esize` bytes: new row h·hd + 2j + t =
 * old row h·hd + t·hd/2 + j.  inverse: the other way.  rows must be a
 * multiple of 2·n_head (LORA_EINPUT otherwise). */
int lora_gguf_permute_rows(void *dst, const void *src, uint64_t rows, uint64_t cols,
                           size_t esize, uint64_t n_head, int inverse, lora_error *err);

/* A GGUF LoRA adapter as llama.cpp reads it (general.type "adapter",
 * adapter.type "lora"): lora_a / lora_b pairs, shapes checked as
 * llama.cpp's loader checks them; "_norm.weight" tensors counted and
 * skipped as llama.cpp skips them. */
typedef struct lora_gguf_pair {
    char *name;               /* base tensor name: "blk.0.attn_q.weight" */
    const lora_gguf_tensor *a, *b;
    uint64_t r, in, out;      /* token_embd: in = vocab, out = embedding */
    int embedding;            /* token_embd: lora_a stored transposed */
} lora_gguf_pair;

typedef struct lora_gguf_adapter {
    lora_gguf *g;
    const char *architecture; /* general.architecture, or NULL */
    double alpha;             /* adapter.lora.alpha (0 when absent, as llama.cpp) */
    int has_alpha;
    size_t n;
    lora_gguf_pair *pairs;    /* sorted by name */
    size_t n_norms;           /* *_norm.weight tensors llama.cpp ignores */
    uint64_t tensor_bytes;
} lora_gguf_adapter;

int lora_gguf_adapter_open(const char *path, lora_gguf_adapter **out, lora_error *err);
void lora_gguf_adapter_free(lora_gguf_adapter *ga);
/* The scale llama.cpp applies to a pair at user scale 1: alpha / r, or
 * 1 when alpha is 0 (llama_adapter_lora_weight::get_scale, in float). */
double lora_gguf_pair_scale(const lora_gguf_adapter *ga, const lora_gguf_pair *p);
/* lora-inspect's report on a GGUF adapter: architecture, alpha, ranks
 * and their scales, modules, parameters, bytes; human text or one JSON
 * object (fields: lora-convert(1), INSPECTING), malloc'd, ending in a newline. */
char *lora_gguf_adapter_report(const lora_gguf_adapter *ga, int json, lora_error *err);

/* Conversions (convert.c). */
typedef struct lora_convert_opts {
    const char *base;         /* folder with config.json, that file, or a GGUF
                                 model whose tensors modules are checked against
                                 (to GGUF: required; to PEFT: optional, for
                                 llama's head counts) */
    lora_dtype outtype;       /* F32, F16, BF16; INVALID: the input's dtype */
    int skip_unsupported;     /* leave out modules_to_save/bias/untranslatable
                                 modules (listed in the report) instead of refusing */
    int overwrite;            /* replace an existing output */
} lora_convert_opts;

typedef struct lora_convert_module {
    char *from, *to;          /* names on both sides */
    uint64_t r;
    double scale;             /* the scale PEFT applies (= what llama.cpp applies after folding) */
    double fold;              /* factor folded into B (1 when none) */
    int permuted;             /* lora_b rows permuted (llama q/k) */
    int transposed;           /* lora_a transposed (token_embd) */
} lora_convert_module;

typedef struct lora_convert_report {
    char architecture[32];
    double alpha;             /* adapter.lora.alpha written or read */
    lora_dtype dtype;         /* of the tensors written */
    size_t n_modules;
    lora_convert_module *modules;
    size_t n_skipped;
    char **skipped;           /* "NAME: why" */
    uint64_t bytes;           /* of the output file(s) */
} lora_convert_report;

void lora_convert_report_free(lora_convert_report *rep);

/* PEFT adapter -> llama.cpp GGUF LoRA adapter at OUT (one file, atomic).
 * Per-module scales one adapter.lora.alpha cannot express (rsLoRA,
 * rank_pattern, alpha_pattern) are folded into B: alpha is chosen as
 * the most common alpha_m·r_m/… so that most modules keep their bytes,
 * and B of the others is multiplied by fold = s_m / (alpha_f32 / r_m)
 * in double before the one rounding to the output dtype.  llama's q/k
 * lora_b rows are permuted; token_embd's lora_a is transposed. */
int lora_convert_to_gguf(const lora_adapter *ad, const char *out, const lora_convert_opts *o,
                         lora_convert_report *rep, lora_error *err);
/* GGUF LoRA adapter -> PEFT folder OUT (adapter_config.json +
 * adapter_model.safetensors, built as a temporary folder and renamed).
 * lora_alpha is the file's alpha and r the most common rank; other
 * ranks go to rank_pattern (and alpha_pattern keeps alpha), so PEFT's
 * scale equals llama.cpp's.  llama's q/k permutation is undone (head
 * counts from o->base's config.json, or llama.attention.head_count[_kv]
 * in the file). */
int lora_convert_to_peft(const char *gguf, const char *out, const lora_convert_opts *o,
                         lora_convert_report *rep, lora_error *err);

#ifdef __cplusplus
}
#endif
#endif /* LORA_H */

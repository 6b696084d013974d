/*
 * internal.h - helpers shared inside liblora and by its unit tests;
 * not installed.  Keep it small: a helper belongs here only when two
 * library files need it.
 */
#ifndef LORA_INTERNAL_H
#define LORA_INTERNAL_H

#include "config.h"
#include "lora.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__GNUC__)
#define LORA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LORA_PRINTF(a, b)
#endif

/* Fill err (may be NULL) with code and a formatted message; returns code
 * so that callers can write `return lora_seterr(err, LORA_EINPUT, ...)`. */
int lora_seterr(lora_error *err, int code, const char *fmt, ...) LORA_PRINTF(3, 4);
/* Same, appending ": strerror(errno_value)". */
int lora_seterr_errno(lora_error *err, int code, int errno_value, const char *fmt, ...)
    LORA_PRINTF(4, 5);
/* "PATH: strerror(errno_value)" for a path that could not be opened or
 * stat'ed: a missing path or a file where a folder should be is bad input
 * (LORA_EINPUT), and so is EACCES when LORA_PATH_EACCES_INPUT is in
 * flags; anything else is an I/O failure (LORA_EIO).  Returns the code. */
#define LORA_PATH_EACCES_INPUT 0x1
int lora_seterr_path(lora_error *err, int errno_value, int flags, const char *path);
/* Prefix the existing message with "context: " (keeps the code). */
int lora_err_prefix(lora_error *err, const char *fmt, ...) LORA_PRINTF(2, 3);
/* LORA_EIO "out of memory" */
int lora_oom(lora_error *err);

/* Checked arithmetic for lengths taken from files: 0 on overflow. */
static inline int lora_mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline int lora_add_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

/* strdup that reports out of memory through err. */
char *lora_strdup(const char *s, lora_error *err);

/* Read a whole (small) file into a NUL-terminated buffer, refusing
 * files larger than max bytes.  *len excludes the NUL. */
int lora_read_file(const char *path, size_t max, char **buf, size_t *len, lora_error *err);

/* Write a whole buffer to PATH atomically: a temporary in the same
 * folder, fsync, rename, fsync of the folder.  mode as for open(2). */
int lora_write_file_atomic(const char *path, const void *buf, size_t len, int mode,
                           lora_error *err);

/* Create a temporary file beside PATH ("PATH.tmp-XXXXXX"), returning its
 * fd and name (malloc'd).  Used by every writer before its rename. */
int lora_tmpfile_beside(const char *path, int mode, int *fd, char **tmpname, lora_error *err);
/* fsync fd, rename tmp onto path, fsync the folder.  On failure the
 * temporary is unlinked.  Does not close fd. */
int lora_commit_tmpfile(int fd, const char *tmpname, const char *path, lora_error *err);
/* fsync the folder that holds PATH, so that a rename into it is durable.
 * A folder that cannot be opened is not an error (the rename happened). */
int lora_fsync_dir_of(const char *path, lora_error *err);

/* The temporaries that exist now, for lora_tmp_remove_all() (lora.h):
 * lora_tmpfile_beside tracks its file and lora_commit_tmpfile forgets
 * it; a writer that makes a temporary folder (mkdtemp) tracks it with
 * is_dir 1 and forgets it once renamed or removed; a writer that gives
 * up on a temporary removes it with lora_tmp_unlink. */
void lora_tmp_track(const char *path, int is_dir);
void lora_tmp_forget(const char *path);
void lora_tmp_unlink(const char *path);

/* The whole of an archive file read once into private memory (archive.c):
 * a regular file, not empty, within the archive size limit, not growing
 * or shrinking while read.  *buf is malloc'd. */
int lora_archive_read_fd(int fd, const char *label, unsigned char **buf, size_t *len,
                         lora_error *err);
/* lora_archive_open_memory without the copy: on success the archive owns
 * *buf (set to NULL); on failure *buf stays the caller's, so that it can
 * still tell what those bytes are (registry_serve.c). */
int lora_archive_open_owned(unsigned char **buf, size_t len, const char *label,
                            const lora_pubkey *keys, size_t nkeys, int flags, lora_archive **out,
                            lora_error *err);

/* The strict tar layout of a .lora archive (archive_tar.c): regular
 * files only (each with at most one pax header of known keywords),
 * two zero blocks, nothing after.  At most max entries; names malloc'd. */
typedef struct lora_tar_ent {
    char *name;
    uint64_t header_off, data_off, size;
} lora_tar_ent;
int lora_tar_walk(const unsigned char *tar, size_t len, size_t max, lora_tar_ent **ents, size_t *n,
                  lora_error *err);
void lora_tar_ents_free(lora_tar_ent *ents, size_t n);

/* A parsed model.safetensors.index.json (checkpoint.c): only
 * weight_map is used.  Tensor names sorted; shard names unique,
 * sorted, plain file names (no "/", no ".."). */
typedef struct lora_index {
    size_t n;
    char **tensor;      /* weight_map keys, sorted */
    size_t *shard_of;   /* index into shard[] for each tensor */
    size_t nshards;
    char **shard;
} lora_index;

/* Parse and validate an index held in memory; name is used in messages. */
int lora_index_parse(const char *json, size_t len, const char *name, lora_index **out,
                     lora_error *err);
void lora_index_free(lora_index *ix);

/* What a file that is not safetensors is (filekind.c), from its first
 * bytes: "a GGUF file (...); ...", a PyTorch zip or pickle, NumPy, an
 * HTML page, a Git LFS pointer, ...; NULL when none is recognised. */
const char *lora_foreign_kind(const void *buf, size_t len);

/* ---- adapters (adapter_config.c, adapter.c, inspect.c) ---- */

/* json_dumps with every real in its shortest round-trip form (0.05,
 * not 0.050000000000000003); FLAGS as json_dumps, precision ignored.
 * jsonfmt.c. */
struct json_t;
char *lora_json_dumps(const struct json_t *j, size_t flags);

/* adapter_config.json, parsed and checked (refusals done). */
typedef struct lora_acfg {
    char *peft_type;            /* "LORA" */
    uint64_t r;
    double alpha;
    int use_rslora, use_dora, fan_in_fan_out, lora_bias;
    char *bias;                 /* "none", "all", "lora_only", or NULL */
    char *base_model, *peft_version, *task_type;  /* or NULL */
    char *target_modules_json;  /* compact JSON text of target_modules */
    char *target_regex;         /* target_modules given as one string, or NULL */
    char **targets;             /* target_modules given as a list */
    size_t n_targets;
    char *exclude_regex;
    char **exclude;
    size_t n_exclude;
    char **rank_keys;           /* rank_pattern, in file order */
    uint64_t *rank_vals;
    size_t n_rank;
    char **alpha_keys;          /* alpha_pattern, in file order */
    double *alpha_vals;
    size_t n_alpha;
    char **modules_to_save;     /* as configured, then the heads PEFT adds
                                   for the task_type (classifier, score;
                                   qa_outputs) */
    size_t n_save;
    struct lora_rx *rx;         /* compiled patterns and the work budget for
                                   all matches (adapter_config.c) */
} lora_acfg;

/* Parse adapter_config.json from a buffer (need not be NUL-terminated). */
int lora_acfg_parse(const char *text, size_t len, lora_acfg **out, lora_error *err);
void lora_acfg_free(lora_acfg *c);
/* r and alpha of MODULE after rank_pattern / alpha_pattern. */
int lora_acfg_module_rank(const lora_acfg *c, const char *module, uint64_t *r, double *alpha,
                          lora_error *err);
/* 1 when target_modules (minus exclude_modules) selects MODULE, 0 when
 * not, -code on a pattern error. */
int lora_acfg_targets(const lora_acfg *c, const char *module, lora_error *err);
/* 1 when one target_modules list entry selects MODULE (PEFT's rule:
 * equal, or ends with "." + entry; "all-linear" selects everything). */
int lora_acfg_entry_matches(const char *entry, const char *module);
/* 1 when key I of rank_pattern (alpha 0) or alpha_pattern (alpha 1)
 * matches MODULE, 0 when not, -code on a pattern error or when the
 * config's matching budget is spent. */
int lora_acfg_pattern_matches(const lora_acfg *c, int alpha, size_t i, const char *module,
                              lora_error *err);
/* 1 when MODULE is one of modules_to_save (PEFT: name ends with entry;
 * the task's heads included, see adapter_config.c). */
int lora_acfg_saves(const lora_acfg *c, const char *module);
/* Python-style regex through PCRE2: mode 0 is re.match of
 * "(.*\.)?(PAT)$", mode 1 is re.fullmatch(PAT).  1, 0, or -code. */
int lora_regex_match(const char *pat, const char *subject, int mode, lora_error *err);

/* What one adapter tensor key is (PEFT key forms, formats.md section 4). */
enum {
    LORA_KEY_A = 1,        /* lora_A.weight */
    LORA_KEY_B,            /* lora_B.weight */
    LORA_KEY_EMB_A,        /* lora_embedding_A */
    LORA_KEY_EMB_B,        /* lora_embedding_B */
    LORA_KEY_SAVED,        /* a full tensor that replaces the base's */
    LORA_KEY_COPY,         /* a copy of a base tensor (.original_module., .base_layer.): unused */
    LORA_KEY_MAG           /* DoRA lora_magnitude_vector[.default][.weight] */
};
/* Classify KEY: *kind, and *name (malloc'd): the module path for A/B
 * keys, the base tensor name for saved and copied tensors.  LORA_EINPUT
 * with a message for a key that cannot be classified or is refused. */
int lora_adapter_classify_key(const lora_acfg *c, const char *key, int *kind, char **name,
                              lora_error *err);

/* Resolve one module against a base: the base tensor and whether ΔW is
 * added transposed.  hint: -1 none, else the orientation the adapter's
 * other (non-square) modules showed, used for a square module that is
 * not a GPT-2 Conv1D name. */
int lora_module_resolve(const lora_module *m, const lora_ckpt *base, int fan_in_fan_out, int hint,
                        const lora_tensor **bt, int *transpose, lora_error *err);
/* lora_adapter_bind, except that an lm_head module on a base whose head
 * is tied to the input embeddings (lora_tied_embedding) is accepted and
 * marked tied_head, its target left as "lm_head.weight" (which the base
 * lacks): for lora-eval, which applies it to the head alone, and for a
 * merge that unties the head. */
int lora_adapter_bind_tied(lora_adapter *ad, const lora_ckpt *base, lora_error *err);
/* Untying a tied head in a merge (untie.c): the tensor name written,
 * the embedding it starts from (NULL: nothing to untie), binding the
 * adapters to add (refused unless OUT is a folder, whose config.json
 * must change), and the config.json edit (tie_word_embeddings false). */
#define LORA_UNTIED_HEAD "lm_head.weight"
const lora_tensor *lora_untie_source(const lora_merge_adapter *add, size_t nadd,
                                     const lora_ckpt *ck);
int lora_untie_bind(lora_merge_adapter *add, size_t nadd, const lora_ckpt *ck, int folder,
                    lora_error *err);
int lora_untie_config(const char *dir, lora_error *err);
/* The output folder's config.json (config_edit.c), keys changed in place
 * (every other key kept, in order): tie_word_embeddings false; the dtype
 * keys (torch_dtype, and dtype where present) set to DT's torch name
 * ("bfloat16"), nothing done without a config.json.  read gives its
 * text (NULL without one); write puts TEXT back verbatim. */
int lora_config_set_untied(const char *dir, lora_error *err);
int lora_config_set_dtype(const char *dir, lora_dtype dt, lora_error *err);
const char *lora_torch_dtype_name(lora_dtype dt);
int lora_config_read(const char *dir, char **text, lora_error *err);
int lora_config_write(const char *dir, const char *text, lora_error *err);
/* For an lm_head module whose base has no lm_head.weight: the input
 * embedding of the head's shape it is tied to (tie_word_embeddings), or
 * NULL when the head is not tied that way. */
const lora_tensor *lora_tied_embedding(const lora_module *m, const lora_ckpt *base);
/* A modules_to_save tensor the base lacks (a SEQ_CLS adapter's head on a
 * causal-LM base): never dropped.  Arguments: name, shape, name. */
#define LORA_MISSING_HEAD_FMT                                                                   \
    "saved tensor %s %s (modules_to_save): the base has no such tensor, and merging without " \
    "it would drop what the adapter trained (a classification head on a base without one?); " \
    "use a base that has %s, e.g. the checkpoint of the task's model class"
/* Elements of a module's canonical delta that are not finite rounded to
 * dt (delta.c): a huge scale (lora_alpha 1e308) from finite factors. */
int lora_delta_nonfinite(const lora_module *m, lora_dtype dt, uint64_t *bad, lora_error *err);
/* Base identity pieces (baseid.c), for lora_base_check and lora-inspect:
 * 1 and a message when AD's recorded identity (lora_base_hash, AD bound
 * or its targets set) differs from BASE's, 0 when equal or none is
 * recorded, -code on error; and 1 with a message when the plain folder's
 * base_model_name_or_path does not match BASE's config.json. */
int lora_base_identity_mismatch(const lora_adapter *ad, const lora_ckpt *base, char *msg,
                                size_t n, lora_error *err);
int lora_base_name_mismatch(const lora_adapter *ad, const lora_ckpt *base, char *msg, size_t n);
/* lora_base_hash for a base that exists only tensor by tensor (the
 * restored base of a task switch): the adapter's targets in the order
 * hashed (sorted, unique; *out malloc'd, the strings are AD's), and one
 * tensor's part of the hash, fed in that order. */
int lora_base_targets(const lora_adapter *ad, const char ***out, size_t *n, lora_error *err);
void lora_base_hash_tensor(lora_hasher *h, const char *name, lora_dtype dt, int ndim,
                           const uint64_t *shape, const void *data, uint64_t nbytes);
/* The base tensor for NAME, trying the spellings with and without a
 * leading "transformer." / "model."; NULL when none exists. */
const lora_tensor *lora_ckpt_find_alias(const lora_ckpt *ck, const char *name);

/* ---- GGUF bases (gguf_checkpoint.c; lora_st_view and the dispatch of
 *      lora_stw_* to a GGUF output in safetensors.c) ---- */

/* A lora_st over tensors another reader parsed: T (N tensors, freed by
 * close), metadata arrays MKEY/MVAL (freed; their strings OWNER's), FD
 * (closed), HLEN what lora_st_header_size answers; OWNER_FREE(OWNER) at
 * close.  On failure everything given is freed. */
int lora_st_view(const char *name, int fd, const void *buf, uint64_t len, uint64_t hlen,
                 lora_tensor *t, size_t n, const char **mkey, const char **mval, size_t nmeta,
                 void *owner, void (*owner_free)(void *), lora_st **out, lora_error *err);
/* OWNER of a view made with OWNER_FREE, else NULL. */
void *lora_st_view_owner(const lora_st *st, void (*owner_free)(void *));
typedef struct lora_gstw lora_gstw;
/* Copy LEN bytes between files at the given offsets (copy_file_range
 * where the kernel allows, else read and write); PATH and NAME (the
 * destination and the tensor) for messages. */
int lora_copy_range(int src_fd, uint64_t src_off, int dst_fd, uint64_t dst_off, uint64_t len,
                    const char *path, const char *name, lora_error *err);
/* ---- O_DIRECT writes (direct_io.c) ---- */
/* safetensors.c: all LEN bytes of BUF written at OFF, through EINTR and
 * short writes; 0, or -1 with errno set (EIO for a write of 0 bytes). */
int lora_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

typedef struct lora_dio lora_dio;
/* Direct writes to the file open as FD at PATH (just created by this
 * process); NULL when LORA_NO_DIRECT is set or they are refused. */
lora_dio *lora_dio_open(int fd, const char *path);
/* How a write of LEN bytes at file offset OFF splits: *HEAD bytes
 * through the cache, then *MID (0: none) for lora_dio_write, the rest
 * through the cache again.  D may be NULL (all through the cache). */
void lora_dio_split(const lora_dio *d, size_t len, uint64_t off, size_t *head, size_t *mid);
/* Queue a *MID part: copied (BUF may be reused on return), or, when
 * LENT is a buffer lora_dio_lend gave and BUF lies in it, LENT itself
 * (given back: the caller must not touch it again); 0 or the errno of a
 * direct write that failed. */
int lora_dio_write(lora_dio *d, const void *buf, size_t len, uint64_t off, void *lent);
/* A page-aligned buffer of LEN bytes to fill and give to lora_dio_write
 * (no copy), or NULL (none free, LEN too long, D NULL); one not given
 * to lora_dio_write goes back with lora_dio_unlend. */
void *lora_dio_lend(lora_dio *d, size_t len);
void lora_dio_unlend(lora_dio *d, void *buf);
/* BUF is a buffer lora_dio_lend gave (to this caller). */
int lora_dio_lent(const lora_dio *d, const void *buf);
/* Wait for every queued write and free D (NULL: nothing); 0 or the
 * errno of the first that failed. */
int lora_dio_finish(lora_dio *d);
/* Before lora_stw_start: the tensor data starts at a multiple of ALIGN
 * (a power of two, at most 64 KiB) from the file's start, the header
 * padded with spaces to get there; not for a verbatim layout, whose
 * header is kept as it is. */
int lora_stw_set_align(lora_stw *w, uint32_t align, lora_error *err);
/* A buffer for LEN bytes of output that lora_stw_write then writes
 * without a copy (lora_dio_lend), or NULL; lora_stw_write takes it back
 * in any case; one not written goes back with lora_stw_unlend. */
void *lora_stw_lend(lora_stw *w, size_t len);
void lora_stw_unlend(lora_stw *w, void *buf);
/* A lora_stw whose every call goes to GG (taken over, freed on failure). */
int lora_stw_new_gguf(lora_gstw *gg, lora_stw **out, lora_error *err);

/* An unquantized GGUF model file as a one-file checkpoint (checkpoint.c
 * opens it): tensors under their Hugging Face names, PyTorch dimension
 * order; metadata: lora_merges and lora_base only. */
int lora_gguf_st_open(const char *path, lora_st **out, lora_error *err);
/* The same over an opened file (taken over, as FD, -1 for none: closed
 * with the view or on failure); for the fuzz target. */
int lora_gguf_st_from(lora_gguf *g, int fd, lora_st **out, lora_error *err);
int lora_st_is_gguf(const lora_st *st);
int lora_ckpt_is_gguf(const lora_ckpt *ck);
/* "Q8_0" for a GGUF tensor, else the dtype's name. */
const char *lora_ckpt_type_name(const lora_ckpt *ck, const lora_tensor *t);
/* The head count llama.cpp's q/k row permutation used on T, 0 when its
 * rows are in Hugging Face order. */
uint64_t lora_ckpt_permuted_heads(const lora_ckpt *ck, const lora_tensor *t);
/* After binding, before any tensor is merged: B of every module whose
 * base tensor has permuted rows is replaced by a permuted copy (put
 * back when CK is closed). */
int lora_gguf_merge_prepare(const lora_ckpt *ck, lora_merge_adapter *undo, size_t nundo,
                            lora_merge_adapter *add, size_t nadd, lora_error *err);
/* LORA_EUSAGE when OUT's name says another kind than the input's: a
 * GGUF base merges into a .gguf file, safetensors into anything else. */
int lora_gguf_check_output(const lora_ckpt *ck, const char *out, lora_error *err);
/* A writer for the output of shard IN: GGUF in the input's layout when
 * IN is a GGUF view, else lora_stw_new. */
int lora_stw_new_for(const char *path, const lora_st *in, lora_stw **out, lora_error *err);
void lora_gstw_free(lora_gstw *g);
void lora_gstw_abort(lora_gstw *g);
int lora_gstw_set_metadata(lora_gstw *g, const char *key, const char *value, lora_error *err);
int lora_gstw_declare(lora_gstw *g, const char *name, lora_dtype dt, int ndim,
                      const uint64_t *shape, lora_error *err);
int lora_gstw_set_layout(lora_gstw *g, const void *hdr, size_t len, int verbatim,
                         lora_error *err);
int lora_gstw_start(lora_gstw *g, lora_error *err);
const unsigned char *lora_gstw_header(const lora_gstw *g, size_t *len);
int lora_gstw_patch_metadata(lora_gstw *g, const char *key, const char *value, lora_error *err);
int lora_gstw_write(lora_gstw *g, const char *name, uint64_t off, const void *buf, size_t len,
                    lora_error *err);
int lora_gstw_copy(lora_gstw *g, const char *name, int src_fd, uint64_t src_off,
                   lora_error *err);
int lora_gstw_commit(lora_gstw *g, lora_error *err);
/* T's bytes in Hugging Face row order in *OUT (malloc'd) when CK holds
 * it with llama.cpp's q/k permutation; *OUT NULL when T is in that order. */
int lora_ckpt_hf_rows(const lora_ckpt *ck, const lora_tensor *t, void **out, lora_error *err);
/* A Hugging Face config.json (malloc'd text) for a GGUF model of the llama
 * family, from its key/values; LORA_EINPUT naming what is missing or not
 * supported. */
int lora_gguf_model_config(const lora_ckpt *ck, char **json, size_t *len, lora_error *err);
/* lora_base_hash_tensor of a tensor whose rows are permuted per HEADS
 * heads (0: none), fed in Hugging Face row order. */
void lora_base_hash_tensor_heads(lora_hasher *h, const char *name, lora_dtype dt, int ndim,
                                 const uint64_t *shape, const void *data, uint64_t nbytes,
                                 uint64_t heads);

#endif

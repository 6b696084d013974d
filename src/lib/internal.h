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

#endif

/* Fill err (may be NULL) with code and a formatted message; returns code
 * so that callers can write `return lora_seterr(err, LORA_EINPUT, ...)`. */
int lora_seterr(lora_error *err, int code, const char *fmt, ...) LORA_PRINTF(3, 4);
/* Same, appending ": strerror(errno_value)". */
int lora_seterr_errno(lora_error *err, int code, int errno_value, const char *fmt, ...)
    LORA_PRINTF(4, 5);
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

#endif

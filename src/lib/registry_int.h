/*
 * registry_int.h - registry internals shared by registry.c, semver.c
 * and the registry unit tests: version parts for the ordering columns,
 * and the add path below archive verification (store the blob, commit
 * the row), so tests can fill a registry with rows of their choosing.
 */
#ifndef LORA_REGISTRY_INT_H
#define LORA_REGISTRY_INT_H

#include "lora.h"

typedef struct lora_semver_parts {
    int64_t major, minor, patch;
    const char *pre;   /* pre-release identifiers (not NUL-terminated), or NULL */
    size_t pre_len;
} lora_semver_parts;

/* 0, or -1 when V is not a semantic version. */
int lora_semver_split(const char *v, lora_semver_parts *out);
/* Precedence only (build metadata ignored): <0, 0, >0. */
int lora_semver_precedence(const lora_semver_parts *a, const lora_semver_parts *b);

/* What the registry records about an archive, from its verified manifest. */
typedef struct lora_reg_meta {
    const char *name, *version, *task, *base_model, *base_hash;
    uint64_t r;
    double alpha;
    const char *signer;   /* key id, or NULL */
    int trusted;
} lora_reg_meta;

/* Copy SRC into a temporary in the blob folder, hashing the bytes as
 * they are copied, and fsync it.  The caller verifies the copy (never
 * the original, which could change meanwhile) and then commits or
 * discards it. */
int lora_reg_stage(lora_registry *reg, const char *src, int *fd, char **tmpname,
                   char hex[LORA_REG_HASH_HEX], uint64_t *size, lora_error *err);
/* Discard a staged copy. */
void lora_reg_unstage(int fd, char *tmpname);
/* Under the write lock: rename the staged copy to blobs/<hex>.lora and
 * insert its row, in one transaction.  The same archive already present
 * is a no-op (*added = 0), except that a trusted add upgrades an
 * untrusted row.  Consumes fd and tmpname. */
int lora_reg_commit(lora_registry *reg, int fd, char *tmpname,
                    const char hex[LORA_REG_HASH_HEX], uint64_t size, const lora_reg_meta *m,
                    lora_reg_adapter **out, int *added, lora_error *err);
/* stage + commit without archive verification: for tests only. */
int lora_reg_add_meta(lora_registry *reg, const char *src, const lora_reg_meta *m,
                      lora_reg_adapter **out, int *added, lora_error *err);

/* Every trusted adapter of TASK, best first (the order resolve picks
 * by: newest version, then latest added, then name).  Blobs are not
 * checked here. */
int lora_reg_task_candidates(lora_registry *reg, const char *task, lora_reg_adapter **list,
                             size_t *n, lora_error *err);

/* What a blob whose bytes are not its row's holds, for messages:
 * "holds NAME@VERSION (task T), not ...: swapped or corrupted" when it
 * is an archive, else "is corrupted" (registry_serve.c). */
void lora_reg_describe_blob(const char *path, const lora_reg_adapter *a, char *what, size_t n);
/* Re-hash a row's blob by path against its size and hash: LORA_ECHECK
 * naming the problem (missing, corrupted, swapped), LORA_EIO (registry.c). */
int lora_reg_check_blob(const lora_reg_adapter *a, lora_error *err);
/* The LORA_ECHECK message of a blob of SIZE bytes and BLAKE2b-256 HEX
 * that is not its row's; WHAT as lora_reg_describe_blob words it. */
int lora_reg_blob_mismatch(const lora_reg_adapter *a, const char *what, uint64_t size,
                           const char *hex, lora_error *err);

#endif

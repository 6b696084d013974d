/*
 * registry_serve.c - serving a registered adapter: the registry checks
 * exactly the bytes it hands over.  The blob is opened once and read
 * into private memory (lora_archive_open_fd), and those bytes are what
 * is checked -- the signature against the registry's trusted keys (the
 * row's signer), the size and BLAKE2b-256 against the row, the
 * manifest's name, version, task and base against the row -- and what
 * the adapter is loaded from.  Opening the blob by path again after a
 * check would let anyone who can write the blob folder swap in another
 * archive between check and use -- even another trusted one, which a
 * signature check alone would pass.
 */
#include "internal.h"
#include "registry_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* OTHER (NULL: not an archive) as lora_reg_describe_blob words it. */
static void describe(const lora_archive *other, const lora_reg_adapter *a, char *what, size_t n)
{
    if (other)
        snprintf(what, n, "holds %s@%s (task %s), not %s@%s: swapped or corrupted",
                 other->manifest->name, other->manifest->version, other->manifest->task, a->name,
                 a->version);
    else
        snprintf(what, n, "is corrupted");
}

void lora_reg_describe_blob(const char *path, const lora_reg_adapter *a, char *what, size_t n)
{
    lora_archive *other = NULL;
    lora_error ignored;
    lora_archive_open(path, NULL, 0, LORA_ARCHIVE_NO_VERIFY, &other, &ignored);
    describe(other, a, what, n);
    lora_archive_close(other);
}

/* The bytes read, refused by the archive reader: when they are not the
 * row's archive at all, the LORA_ECHECK lora_reg_check_blob would give,
 * worded from these same bytes (no second read by path, which could
 * meet other bytes); LORA_OK when they are the row's. */
static int check_refused_bytes(unsigned char **buf, size_t len, const lora_reg_adapter *a,
                               lora_error *err)
{
    unsigned char h[LORA_HASH_BYTES];
    char hex[LORA_REG_HASH_HEX], what[600];
    lora_hash(*buf, len, h, LORA_HASH_BYTES);
    lora_hex(h, sizeof h, hex);
    if (len == a->size && strcmp(hex, a->hash) == 0)
        return LORA_OK;
    lora_archive *other = NULL;
    lora_error ignored;
    lora_archive_open_owned(buf, len, a->path, NULL, 0, LORA_ARCHIVE_NO_VERIFY, &other, &ignored);
    describe(other, a, what, sizeof what);
    lora_archive_close(other);
    return lora_reg_blob_mismatch(a, what, len, hex, err);
}

/* The bytes read against the row's size and BLAKE2b-256. */
static int check_bytes(const lora_archive *ar, const lora_reg_adapter *a, lora_error *err)
{
    unsigned char h[LORA_HASH_BYTES];
    char hex[LORA_REG_HASH_HEX];
    lora_archive_file_hash(ar, h);
    lora_hex(h, sizeof h, hex);
    if (ar->file_size == a->size && strcmp(hex, a->hash) == 0)
        return LORA_OK;
    const lora_manifest *m = ar->manifest;
    return lora_seterr(err, LORA_ECHECK,
                       "%s@%s: blob %s holds %s@%s (task %s), not %s@%s: swapped or corrupted "
                       "(%llu bytes, BLAKE2b-256 %.16s..., registered as %llu bytes, %.16s...); "
                       "refusing it",
                       a->name, a->version, a->path, m->name, m->version, m->task, a->name,
                       a->version, (unsigned long long)ar->file_size, hex,
                       (unsigned long long)a->size, a->hash);
}

static int same_str(const char *x, const char *y)
{
    return (!x && !y) || (x && y && strcmp(x, y) == 0);
}

/* The verified manifest against the row, field by field. */
static int check_identity(const lora_archive *ar, const lora_reg_adapter *a, lora_error *err)
{
    const lora_manifest *m = ar->manifest;
    char bh[2 * LORA_HASH_BYTES + 1], signer[LORA_KEYID_STR];
    if (m->has_base_hash)
        lora_hex(m->base_hash, LORA_HASH_BYTES, bh);
    lora_keyid_str(ar->key_id, signer);
    const char *field = !same_str(m->name, a->name)             ? "name"
                        : !same_str(m->version, a->version)     ? "version"
                        : !same_str(m->task, a->task)           ? "task"
                        : !same_str(m->base_model, a->base_model) ? "base model"
                        : !same_str(m->has_base_hash ? bh : NULL, a->base_hash) ? "base hash"
                        : ar->signature_checked && !same_str(signer, a->signer) ? "signer"
                                                                                : NULL;
    if (!field)
        return LORA_OK;
    return lora_seterr(err, LORA_ECHECK,
                       "%s@%s: blob %s holds %s@%s (task %s, signer %s), whose %s is not the "
                       "registry row's; refusing it",
                       a->name, a->version, a->path, m->name, m->version, m->task, signer, field);
}

int lora_registry_open_adapter(lora_registry *reg, const lora_reg_adapter *a,
                               int allow_untrusted, lora_adapter **out, lora_error *err)
{
    *out = NULL;
    if (!a->trusted && !allow_untrusted)
        return lora_seterr(err, LORA_ECHECK,
                           "%s@%s is untrusted in the registry (its signer %s is not trusted)",
                           a->name, a->version, a->signer ? a->signer : "(none)");
    lora_reg_key *k = NULL;
    size_t nk = 0;
    lora_pubkey *keys = NULL;
    int rc = a->trusted ? lora_registry_keys(reg, &k, &nk, err) : LORA_OK;
    if (!rc && !(keys = calloc(nk ? nk : 1, sizeof *keys)))
        rc = lora_oom(err);
    for (size_t i = 0; !rc && i < nk; i++)
        rc = lora_pubkey_from_string(k[i].pubkey, &keys[i], err);
    lora_reg_keys_free(k, nk);
    char *label = NULL;
    if (!rc && asprintf(&label, "reg:%s@%s", a->name, a->version) < 0) {
        label = NULL;
        rc = lora_oom(err);
    }
    int fd = -1;
    if (!rc && (fd = open(a->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
        rc = errno == ENOENT ? lora_seterr(err, LORA_ECHECK, "%s@%s: blob %s is missing",
                                           a->name, a->version, a->path)
                             : lora_seterr_errno(err, LORA_EIO, errno, "%s@%s: %s", a->name,
                                                 a->version, a->path);
    lora_archive *ar = NULL;
    unsigned char *bytes = NULL;
    size_t len = 0;
    if (!rc) {
        /* one read into private memory: everything below checks, and the
         * adapter uses, these bytes */
        rc = lora_archive_read_fd(fd, label, &bytes, &len, err);
        close(fd);
        if (!rc)
            rc = lora_archive_open_owned(&bytes, len, label, keys, nk,
                                         a->trusted ? 0 : LORA_ARCHIVE_NO_VERIFY, &ar, err);
        /* Refused: when the blob is not the row's archive at all, say
         * that (naming what it holds) rather than how it fails. */
        lora_error why;
        lora_error_clear(&why);
        if (rc && bytes && check_refused_bytes(&bytes, len, a, &why) == LORA_ECHECK) {
            if (err)
                *err = why;
            rc = LORA_ECHECK;
        } else if (rc) {
            /* A registered blob that does not even parse was damaged or
             * swapped after it was checked in: that is a failed check of
             * the registry (exit 1), whatever the parser called it. */
            if (rc == LORA_EINPUT)
                rc = LORA_ECHECK;
            if (err) {
                err->code = rc;
                lora_err_prefix(err, "blob %s", a->path);
            }
        }
    }
    free(bytes);
    free(keys);
    free(label);
    if (!rc)
        rc = check_bytes(ar, a, err);
    if (!rc)
        rc = check_identity(ar, a, err);
    if (rc) {
        lora_archive_close(ar);
        return rc;
    }
    return lora_archive_adapter(ar, out, err); /* named "reg:NAME@VERSION" */
}

/*
 * registry_serve.c - serving a registered adapter: the registry checks
 * exactly the bytes it hands over.  The blob is read once, hashed as it
 * is read, into sealed private memory (a memfd nobody else holds and
 * nobody can change); the size and BLAKE2b-256 are compared with the
 * row, the signature is checked against the registry's trusted keys
 * (the row's signer), the manifest's name, version, task and base are
 * compared with the row, and the adapter is loaded from those same
 * bytes.  Opening the blob by path again after a check would let anyone
 * who can write the blob folder swap in another archive between check
 * and use -- even another trusted one, which a signature check alone
 * would pass.
 */
#include "internal.h"
#include "registry_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define COPY_CHUNK (1 << 20)

/* Copy at most LIMIT bytes of IN into a new sealed memfd, hashing them.
 * *size > limit means the file is longer than the row says. */
static int copy_sealed(int in, const char *path, uint64_t limit, int *mfd,
                       unsigned char hash[LORA_HASH_BYTES], uint64_t *size, lora_error *err)
{
    *mfd = memfd_create("lora-registry-blob", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (*mfd < 0)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s: cannot make private memory", path);
    lora_hasher *hs = NULL;
    unsigned char *buf = malloc(COPY_CHUNK);
    uint64_t total = 0;
    int rc = buf ? lora_hasher_new(LORA_HASH_BYTES, &hs, err) : lora_oom(err);
    while (!rc && total <= limit) {
        ssize_t r = read(in, buf, COPY_CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: read", path);
            break;
        }
        if (r == 0)
            break;
        lora_hasher_update(hs, buf, (size_t)r);
        for (ssize_t done = 0; done < r && !rc;) {
            ssize_t w = write(*mfd, buf + done, (size_t)(r - done));
            if (w < 0 && errno != EINTR)
                rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: copy to memory", path);
            done += w > 0 ? w : 0;
        }
        total += (uint64_t)r;
    }
    free(buf);
    if (!rc) {
        lora_hasher_final(hs, hash);
        hs = NULL;
        if (fcntl(*mfd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
            rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: sealing its private copy", path);
    }
    lora_hasher_free(hs);
    if (rc) {
        close(*mfd);
        *mfd = -1;
        return rc;
    }
    *size = total;
    return LORA_OK;
}

/* Put the blob's path where a message names the private copy. */
static int name_blob(lora_error *err, const char *proc, const lora_reg_adapter *a, int rc)
{
    if (!err)
        return rc;
    char *p = strstr(err->msg, proc);
    char out[LORA_ERROR_MAX];
    if (p)
        snprintf(out, sizeof out, "%.*s%s%s", (int)(p - err->msg), err->msg, a->path,
                 p + strlen(proc));
    else
        snprintf(out, sizeof out, "%s", err->msg);
    snprintf(err->msg, sizeof err->msg, "%s@%s: %s", a->name, a->version, out);
    return rc;
}

void lora_reg_describe_blob(const char *path, const lora_reg_adapter *a, char *what, size_t n)
{
    lora_archive *other = NULL;
    lora_error ignored;
    if (lora_archive_open(path, NULL, 0, LORA_ARCHIVE_NO_VERIFY, &other, &ignored) == LORA_OK) {
        snprintf(what, n, "holds %s@%s (task %s), not %s@%s: swapped or corrupted",
                 other->manifest->name, other->manifest->version, other->manifest->task, a->name,
                 a->version);
        lora_archive_close(other);
    } else {
        snprintf(what, n, "is corrupted");
    }
}

/* Size and hash differ from the row: say what the blob holds instead,
 * when it is an archive at all (a swap), so that both are named. */
static int refuse_mismatch(const char *proc, const lora_reg_adapter *a, uint64_t size,
                           const char *hex, lora_error *err)
{
    char what[600];
    lora_reg_describe_blob(proc, a, what, sizeof what);
    return lora_seterr(err, LORA_ECHECK,
                       "%s@%s: blob %s %s (%llu bytes, BLAKE2b-256 %.16s..., registered as "
                       "%llu bytes, %.16s...); refusing it",
                       a->name, a->version, a->path, what, (unsigned long long)size, hex,
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

static void release_archive(void *arg)
{
    lora_archive_close(arg);
}

/* The adapter from an opened archive (which it then owns), named
 * "reg:NAME@VERSION" rather than by any file path. */
static int adapter_of(lora_archive *ar, const lora_reg_adapter *a, lora_adapter **out,
                      lora_error *err)
{
    uint64_t clen, slen;
    const char *cfg = lora_archive_member(ar, "adapter_config.json", &clen);
    const void *tensors = lora_archive_member(ar, "adapter_model.safetensors", &slen);
    char *name = NULL, *label = NULL;
    if (asprintf(&name, "reg:%s@%s", a->name, a->version) < 0)
        name = NULL;
    if (!name || asprintf(&label, "%s:adapter_model.safetensors", name) < 0) {
        free(name);
        lora_archive_close(ar);
        return lora_oom(err);
    }
    lora_st *st;
    int rc = lora_st_open_memory(tensors, (size_t)slen, label, &st, err);
    free(label);
    lora_adapter *ad = NULL;
    if (!rc)
        rc = lora_adapter_open_parts(cfg, (size_t)clen, st, name, &ad, err); /* owns st */
    free(name);
    if (rc) {
        lora_archive_close(ar);
        return rc;
    }
    ad->release = release_archive;
    ad->release_arg = ar;
    *out = ad;
    return LORA_OK;
}

int lora_registry_open_adapter(lora_registry *reg, const lora_reg_adapter *a,
                               int allow_untrusted, lora_adapter **out, lora_error *err)
{
    *out = NULL;
    if (!a->trusted && !allow_untrusted)
        return lora_seterr(err, LORA_ECHECK,
                           "%s@%s is untrusted in the registry (its signer %s is not trusted)",
                           a->name, a->version, a->signer ? a->signer : "(none)");
    int in = open(a->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in < 0)
        return errno == ENOENT
                   ? lora_seterr(err, LORA_ECHECK, "%s@%s: blob %s is missing", a->name,
                                 a->version, a->path)
                   : lora_seterr_errno(err, LORA_EIO, errno, "%s@%s: %s", a->name, a->version,
                                       a->path);
    int mfd;
    unsigned char h[LORA_HASH_BYTES];
    uint64_t size = 0;
    int rc = copy_sealed(in, a->path, a->size, &mfd, h, &size, err);
    close(in);
    if (rc)
        return rc;
    char proc[64], hex[LORA_REG_HASH_HEX];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", mfd);
    lora_hex(h, sizeof h, hex);
    if (access(proc, R_OK) != 0) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s@%s: cannot reopen the private copy of "
                               "its blob through %s (is /proc mounted?)",
                               a->name, a->version, proc);
        close(mfd);
        return rc;
    }
    if (size != a->size || strcmp(hex, a->hash) != 0) {
        rc = refuse_mismatch(proc, a, size, hex, err);
        close(mfd);
        return rc;
    }
    lora_reg_key *k = NULL;
    size_t nk = 0;
    lora_pubkey *keys = NULL;
    rc = a->trusted ? lora_registry_keys(reg, &k, &nk, err) : LORA_OK;
    if (!rc && !(keys = calloc(nk ? nk : 1, sizeof *keys)))
        rc = lora_oom(err);
    for (size_t i = 0; !rc && i < nk; i++)
        rc = lora_pubkey_from_string(k[i].pubkey, &keys[i], err);
    lora_reg_keys_free(k, nk);
    lora_archive *ar = NULL;
    if (!rc) {
        rc = lora_archive_open(proc, keys, nk, a->trusted ? 0 : LORA_ARCHIVE_NO_VERIFY, &ar, err);
        if (rc)
            name_blob(err, proc, a, rc);
    }
    free(keys);
    close(mfd); /* the archive's mapping keeps the sealed copy */
    if (!rc && (rc = check_identity(ar, a, err)))
        lora_archive_close(ar);
    if (rc)
        return rc;
    return adapter_of(ar, a, out, err);
}

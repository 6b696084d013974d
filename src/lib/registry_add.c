/*
 * registry_add.c - admitting an archive into the registry: copy it into
 * the blob folder, verify the copy (signature against the registry's
 * trusted keys, manifest, every member's size and hash: archive.c),
 * then commit blob and row (registry.c).  Verifying the copy rather
 * than the original means the bytes registered are the bytes checked,
 * even if the original changes meanwhile.
 */
#include "internal.h"
#include "registry_int.h"

#include <string.h>

/* The trusted keys as lora_pubkey values. */
static int trusted_keys(lora_registry *reg, lora_pubkey **out, size_t *n, lora_error *err)
{
    lora_reg_key *k;
    size_t nk;
    *out = NULL;
    *n = 0;
    int rc = lora_registry_keys(reg, &k, &nk, err);
    if (rc)
        return rc;
    lora_pubkey *pk = calloc(nk ? nk : 1, sizeof *pk);
    if (!pk) {
        lora_reg_keys_free(k, nk);
        return lora_oom(err);
    }
    for (size_t i = 0; i < nk; i++)
        if ((rc = lora_pubkey_from_string(k[i].pubkey, &pk[i], err))) {
            lora_err_prefix(err, "%s: trusted key %s", lora_registry_path(reg), k[i].key_id);
            lora_reg_keys_free(k, nk);
            free(pk);
            return rc;
        }
    lora_reg_keys_free(k, nk);
    *out = pk;
    *n = nk;
    return LORA_OK;
}

/* Messages from the staged copy name the temporary
 * (blobs/incoming.tmp-...), which means nothing to the user: put the
 * archive's own name in its place, or in front. */
static void name_archive(char *msg, const char *tmp, const char *archive)
{
    char *p = tmp ? strstr(msg, tmp) : NULL;
    char out[LORA_ERROR_MAX];
    if (p)
        snprintf(out, sizeof out, "%.*s%s%s", (int)(p - msg), msg, archive, p + strlen(tmp));
    else if (strncmp(msg, archive, strlen(archive)) != 0)
        snprintf(out, sizeof out, "%s: %s", archive, msg);
    else
        return;
    memcpy(msg, out, sizeof out);
}

static int key_among(const unsigned char id[LORA_KEYID_BYTES], const lora_pubkey *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(keys[i].key_id, id, LORA_KEYID_BYTES) == 0)
            return 1;
    return 0;
}

/* The signature was refused: open the staged copy without it (its
 * structure, sizes and hashes still checked against the unsigned
 * manifest) and say why in the registry's terms.  *ar is the archive
 * opened that way, or NULL when even that fails (err says why). */
static int explain_untrusted(const char *tmp, const char *archive, const lora_pubkey *keys,
                             size_t nkeys, lora_error *sig_err, lora_archive **ar,
                             lora_error *err)
{
    int rc = lora_archive_open(tmp, NULL, 0, LORA_ARCHIVE_NO_VERIFY, ar, err);
    if (rc)
        return rc;
    if (key_among((*ar)->key_id, keys, nkeys)) {
        /* signed by a trusted key, but the signature is wrong */
        name_archive(sig_err->msg, tmp, archive);
        return LORA_OK;
    }
    char id[LORA_KEYID_STR];
    lora_keyid_str((*ar)->key_id, id);
    lora_seterr(sig_err, LORA_ECHECK,
                "%s: not signed by any of the registry's %zu trusted keys (signed by key %s%s)",
                archive, nkeys, id,
                nkeys ? "" : "; lora-registry trust KEY.pub adds one");
    return LORA_OK;
}

int lora_registry_add(lora_registry *reg, const char *archive, int allow_untrusted,
                      lora_reg_adapter **out, int *added, char *why,
                      lora_error *err)
{
    if (out)
        *out = NULL;
    if (added)
        *added = 0;
    if (why)
        why[0] = '\0';
    int fd;
    char *tmp;
    char hex[LORA_REG_HASH_HEX];
    uint64_t size;
    int rc = lora_reg_stage(reg, archive, &fd, &tmp, hex, &size, err);
    if (rc)
        return rc;
    lora_pubkey *keys;
    size_t nkeys;
    if ((rc = trusted_keys(reg, &keys, &nkeys, err))) {
        lora_reg_unstage(fd, tmp);
        return rc;
    }
    lora_archive *ar = NULL;
    int trusted = 1;
    rc = lora_archive_open(tmp, keys, nkeys, 0, &ar, err);
    if (rc == LORA_ECHECK || (rc == LORA_EUSAGE && nkeys == 0)) {
        lora_error sig_err = *err;
        lora_error_clear(err);
        rc = explain_untrusted(tmp, archive, keys, nkeys, &sig_err, &ar, err);
        if (rc == LORA_OK && !allow_untrusted) {
            lora_archive_close(ar);
            ar = NULL;
            *err = sig_err;
            err->code = LORA_ECHECK;
            rc = LORA_ECHECK;
        } else if (rc == LORA_OK) {
            /* with the user's say-so: registered, marked untrusted */
            trusted = 0;
            if (why)
                snprintf(why, LORA_ERROR_MAX, "%s", sig_err.msg);
        }
    }
    free(keys);
    if (rc) {
        if (err)
            name_archive(err->msg, tmp, archive);
        lora_reg_unstage(fd, tmp);
        return rc;
    }
    const lora_manifest *m = ar->manifest;
    char signer[LORA_KEYID_STR], base_hash[2 * LORA_HASH_BYTES + 1];
    lora_keyid_str(ar->key_id, signer);
    if (m->has_base_hash)
        lora_hex(m->base_hash, LORA_HASH_BYTES, base_hash);
    lora_reg_meta meta = {
        .name = m->name,
        .version = m->version,
        .task = m->task,
        .base_model = m->base_model,
        .base_hash = m->has_base_hash ? base_hash : NULL,
        .r = m->r,
        .alpha = m->alpha,
        .signer = signer,
        .trusted = trusted,
    };
    rc = lora_reg_commit(reg, fd, tmp, hex, size, &meta, out, added, err);
    if (rc)
        lora_err_prefix(err, "%s", archive);
    lora_archive_close(ar);
    return rc;
}

/*
 * source.c - where an adapter named on a command line comes from.
 * Every tool takes the same adapter arguments: a PEFT folder, a .lora
 * archive, "task:TASK" or "reg:NAME@VERSION"; this file turns such a
 * string into an opened lora_adapter, so that the tools never decide it
 * themselves and all of them accept the same things.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* A .lora archive: verified against the public key files in
 * opts->pubkeys, or opened unverified (with a warning) on request. */
static int load_archive(const char *spec, const lora_source_opts *opts, lora_adapter **out,
                        lora_error *err)
{
    size_t n = 0;
    while (opts && opts->pubkeys && opts->pubkeys[n])
        n++;
    int no_verify = opts && opts->no_verify;
    if (!no_verify && n == 0)
        return lora_seterr(err, LORA_EUSAGE,
                           "%s: a signed archive needs a public key to verify it (-p KEY.pub), "
                           "or --no-verify",
                           spec);
    lora_pubkey *keys = calloc(n ? n : 1, sizeof *keys);
    if (!keys)
        return lora_oom(err);
    int rc = LORA_OK;
    for (size_t i = 0; i < n && !rc; i++)
        rc = lora_pubkey_load(opts->pubkeys[i], &keys[i], err);
    if (!rc) {
        if (no_verify && opts->warn)
            fprintf(opts->warn, "warning: %s: signature NOT verified (--no-verify); member hashes "
                                "are still checked against the unsigned manifest\n",
                    spec);
        rc = lora_archive_open_adapter(spec, keys, n, no_verify ? LORA_ARCHIVE_NO_VERIFY : 0, out,
                                       err);
    }
    free(keys);
    return rc;
}

/* task:TASK and reg:NAME@VERSION: the registry picks the archive
 * (resolve: newest trusted version for the task) and re-hashes its blob
 * against the hash recorded when the archive was added; the archive is
 * then opened and its signature checked again against the registry's
 * trusted keys (not opts->pubkeys).  An untrusted row named by reg: is
 * refused unless opts->no_verify, and then opened unverified. */
static int load_from_registry(const char *spec, const lora_source_opts *opts,
                              lora_adapter **out, lora_error *err)
{
    lora_registry *reg;
    int rc = lora_registry_open(opts ? opts->registry : NULL, 0, &reg, err);
    if (rc)
        return err ? lora_err_prefix(err, "%s", spec) : rc;
    lora_reg_adapter *a = NULL;
    if (spec[0] == 't') {
        rc = spec[5] ? lora_registry_resolve(reg, spec + 5, NULL, NULL, &a, err)
                     : lora_seterr(err, LORA_EUSAGE, "task: names no task");
    } else {
        rc = strchr(spec + 4, '@') ? lora_registry_get(reg, spec + 4, 1, &a, err)
                                   : lora_seterr(err, LORA_EUSAGE,
                                                 "reg: needs NAME@VERSION (or task:TASK)");
        if (!rc && !a->trusted) {
            if (opts && opts->no_verify) {
                if (opts->warn)
                    fprintf(opts->warn, "warning: %s is untrusted in the registry; loading it "
                            "anyway (--no-verify)\n", spec);
            } else {
                rc = lora_seterr(err, LORA_ECHECK,
                                 "%s is untrusted in the registry (its signer is not trusted)",
                                 spec + 4);
            }
        }
    }
    lora_registry_close(reg);
    if (rc) {
        lora_reg_adapter_free(a);
        return err ? lora_err_prefix(err, "%s", spec) : rc;
    }
    /* The signature again, against the registry's trusted keys (the
     * row's signer among them), unless the row is untrusted and the
     * user said --no-verify. */
    lora_reg_key *k = NULL;
    size_t nk = 0;
    lora_pubkey *keys = NULL;
    if ((rc = lora_registry_open(opts ? opts->registry : NULL, 0, &reg, err)) == LORA_OK) {
        rc = lora_registry_keys(reg, &k, &nk, err);
        lora_registry_close(reg);
    }
    if (!rc && !(keys = calloc(nk ? nk : 1, sizeof *keys)))
        rc = lora_oom(err);
    for (size_t i = 0; !rc && i < nk; i++)
        rc = lora_pubkey_from_string(k[i].pubkey, &keys[i], err);
    lora_reg_keys_free(k, nk);
    if (!rc)
        rc = lora_archive_open_adapter(a->path, keys, nk,
                                       a->trusted ? 0 : LORA_ARCHIVE_NO_VERIFY, out, err);
    free(keys);
    if (rc && err)
        lora_err_prefix(err, "%s (%s@%s)", spec, a->name, a->version);
    lora_reg_adapter_free(a);
    return rc;
}

int lora_adapter_load(const char *spec, const lora_source_opts *opts, lora_adapter **out,
                      lora_error *err)
{
    *out = NULL;
    if (!spec || !*spec)
        return lora_seterr(err, LORA_EUSAGE, "empty adapter name");
    (void)opts;
    if (strncmp(spec, "task:", 5) == 0 || strncmp(spec, "reg:", 4) == 0)
        return load_from_registry(spec, opts, out, err);
    if (has_suffix(spec, ".lora"))
        return load_archive(spec, opts, out, err);
    return lora_adapter_open(spec, out, err);
}

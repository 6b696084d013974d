/*
 * source.c - where an adapter named on a command line comes from.
 * Every tool takes the same adapter arguments: a PEFT folder, a .lora
 * archive, "task:TASK" or "reg:NAME@VERSION"; this file turns such a
 * string into an opened lora_adapter, so that the tools never decide it
 * themselves and all of them accept the same things.
 */
#include "internal.h"

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

int lora_adapter_load(const char *spec, const lora_source_opts *opts, lora_adapter **out,
                      lora_error *err)
{
    *out = NULL;
    if (!spec || !*spec)
        return lora_seterr(err, LORA_EUSAGE, "empty adapter name");
    (void)opts;
    if (strncmp(spec, "task:", 5) == 0 || strncmp(spec, "reg:", 4) == 0)
        return lora_seterr(err, LORA_EUSAGE, "%s: registry adapters are not available in this build",
                           spec);
    if (has_suffix(spec, ".lora"))
        return load_archive(spec, opts, out, err);
    return lora_adapter_open(spec, out, err);
}

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

/* task:TASK and reg:NAME@VERSION: the registry picks the archive
 * (resolve: newest trusted version for the task) and re-hashes its blob
 * against the hash recorded when the archive was added, after its
 * signature had been verified against the registry's trusted keys; so
 * the blob is opened as a .lora without a second signature check.  An
 * untrusted row named by reg: is refused unless opts->no_verify. */
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
    lora_source_opts sub = {0};
    sub.no_verify = 1;
    sub.warn = NULL;
    rc = lora_adapter_load(a->path, &sub, out, err);
    if (rc)
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
        return lora_seterr(err, LORA_EUSAGE, "%s: .lora archives are not available in this build",
                           spec);
    return lora_adapter_open(spec, out, err);
}

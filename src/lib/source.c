/*
 * source.c - where an adapter named on a command line comes from.
 * Every tool takes the same adapter arguments: a PEFT folder, a .lora
 * archive, "task:TASK" or "reg:NAME[@VERSION]"; this file turns such a
 * string into an opened lora_adapter, so that the tools never decide it
 * themselves and all of them accept the same things.
 */
#include "internal.h"
#include "registry_int.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* "lora-TOOL: " before a warning when the tool said who it is. */
#define PFX(o) ((o)->prog ? (o)->prog : ""), ((o)->prog ? ": " : "")

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* The keys a registry trusts, for archives given without -p: a user
 * who ran `lora-registry trust` should not have to repeat the key on
 * every command.  Only when a registry exists (opts->registry, or the
 * default location); *n stays 0 otherwise, and when the default one
 * cannot be read (only a registry named with --registry must be). */
static int registry_keys(const lora_source_opts *opts, lora_pubkey **keys, size_t *n,
                         lora_error *err)
{
    *keys = NULL;
    *n = 0;
    char *path = NULL;
    if (opts && opts->registry) {
        if (!(path = lora_strdup(opts->registry, err)))
            return LORA_EIO;
    } else {
        lora_error ignored;
        if (lora_registry_default_path(&path, &ignored))
            return LORA_OK;
    }
    int rc = LORA_OK;
    if (access(path, F_OK) == 0) {
        lora_registry *reg;
        lora_reg_key *rk = NULL;
        size_t nk = 0;
        if (!(rc = lora_registry_open(path, LORA_REG_READONLY, &reg, err))) {
            rc = lora_registry_keys(reg, &rk, &nk, err);
            lora_registry_close(reg);
        }
        if (!rc && nk && !(*keys = calloc(nk, sizeof **keys)))
            rc = lora_oom(err);
        for (size_t i = 0; i < nk && !rc; i++)
            rc = lora_pubkey_from_string(rk[i].pubkey, &(*keys)[*n], err);
        if (!rc)
            *n = nk;
        lora_reg_keys_free(rk, nk);
        if (rc && !(opts && opts->registry)) { /* the default one was not asked for: no keys */
            free(*keys);
            *keys = NULL;
            *n = 0;
            rc = LORA_OK;
        } else if (rc && err) {
            lora_err_prefix(err, "trusted keys of %s", path);
        }
    }
    free(path);
    return rc;
}

/* A .lora archive: verified against the public key files in
 * opts->pubkeys, else against the keys the registry trusts, or opened
 * unverified (with a warning) on request. */
static int load_archive(const char *spec, const lora_source_opts *opts, lora_adapter **out,
                        lora_error *err)
{
    size_t n = 0;
    while (opts && opts->pubkeys && opts->pubkeys[n])
        n++;
    int no_verify = opts && opts->no_verify;
    lora_pubkey *keys = NULL;
    int rc = LORA_OK;
    if (!no_verify && n == 0) {
        if ((rc = registry_keys(opts, &keys, &n, err)))
            return rc;
        if (n == 0)
            return lora_seterr(err, LORA_EUSAGE,
                               "%s: a signed archive needs a public key to verify it (-p KEY.pub, "
                               "or a key trusted by the registry), or --no-verify",
                               spec);
    } else {
        if (!(keys = calloc(n ? n : 1, sizeof *keys)))
            return lora_oom(err);
        for (size_t i = 0; i < n && !rc; i++)
            rc = lora_pubkey_load(opts->pubkeys[i], &keys[i], err);
    }
    if (!rc) {
        if (no_verify && opts->warn)
            fprintf(opts->warn, "%s%swarning: %s: signature NOT verified (--no-verify); member "
                                "hashes are still checked against the unsigned manifest\n",
                    PFX(opts), spec);
        rc = lora_archive_open_adapter(spec, keys, n, no_verify ? LORA_ARCHIVE_NO_VERIFY : 0, out,
                                       err);
    }
    free(keys);
    return rc;
}

/* Does AD (a candidate for task:) belong to the base checkpoint CK?
 * Its row's recorded base hash against lora_base_hash of CK. */
static int made_for(lora_adapter *ad, const lora_reg_adapter *row, const lora_ckpt *ck,
                    int *match, lora_error *err)
{
    *match = 0;
    lora_error ignored;
    if (lora_adapter_bind(ad, ck, &ignored) != LORA_OK)
        return LORA_OK; /* shapes or names differ: not this base */
    unsigned char h[LORA_HASH_BYTES];
    char hex[2 * LORA_HASH_BYTES + 1];
    int rc = lora_base_hash(ad, ck, h, err);
    if (rc)
        return rc;
    lora_hex(h, sizeof h, hex);
    *match = strcmp(hex, row->base_hash) == 0;
    return LORA_OK;
}

#define MAX_BASE_PROBES 32

/* task:TASK with a known base: the best candidate registered for that
 * base (its recorded base hash is the base's), else the best of all,
 * with a warning when candidates were made for another base.  Every
 * candidate probed is loaded through lora_registry_open_adapter, so the
 * one kept is already verified. */
static int choose_for_base(lora_registry *reg, const char *spec, const lora_source_opts *opts,
                           lora_reg_adapter *v, size_t n, size_t *chosen, lora_adapter **out,
                           lora_error *err)
{
    *chosen = 0;
    *out = NULL;
    lora_ckpt *ck = NULL;
    lora_error ignored;
    if (!opts || !opts->base || lora_ckpt_open(opts->base, &ck, &ignored) != LORA_OK)
        return LORA_OK; /* the tool reports an unreadable base itself */
    int rc = LORA_OK;
    size_t probes = 0, other_base = 0;
    for (size_t i = 0; i < n && probes < MAX_BASE_PROBES && !*out; i++) {
        if (!v[i].base_hash)
            continue;
        probes++;
        lora_adapter *ad;
        if ((rc = lora_registry_open_adapter(reg, &v[i], 0, &ad, err)))
            break;
        int match;
        if ((rc = made_for(ad, &v[i], ck, &match, err))) {
            lora_adapter_free(ad);
            break;
        }
        if (match) {
            *out = ad;
            *chosen = i;
        } else {
            other_base++;
            lora_adapter_free(ad);
        }
    }
    lora_ckpt_close(ck);
    if (rc)
        return rc;
    if (!opts->warn)
        return LORA_OK;
    if (*out && *chosen > 0)
        fprintf(opts->warn, "%s%snote: %s: %s@%s, the newest registered for base %s (newer %s@%s "
                            "was made for another base)\n", PFX(opts),
                spec, v[*chosen].name, v[*chosen].version, opts->base, v[0].name, v[0].version);
    else if (!*out && other_base)
        fprintf(opts->warn, "%s%swarning: %s: no adapter registered for base %s; using %s@%s, made "
                            "for %s (base hash %.16s...)\n", PFX(opts),
                spec, opts->base, v[0].name, v[0].version,
                v[0].base_model ? v[0].base_model : "an unnamed base",
                v[0].base_hash ? v[0].base_hash : "-");
    return LORA_OK;
}

/* task:TASK: the newest trusted adapter of the task (lora-registry
 * resolve's choice), or with opts->base the newest registered for that
 * base.  *row is the row chosen, *out its adapter when already loaded. */
static int pick_task(lora_registry *reg, const char *spec, const lora_source_opts *opts,
                     lora_reg_adapter **row, lora_adapter **out, lora_error *err)
{
    *row = NULL;
    *out = NULL;
    const char *task = spec + 5;
    if (!*task)
        return lora_seterr(err, LORA_EUSAGE, "task: names no task");
    lora_reg_adapter *v;
    size_t n;
    int rc = lora_reg_task_candidates(reg, task, &v, &n, err);
    if (rc)
        return rc;
    if (n == 0) {
        lora_reg_adapter *none = NULL;
        rc = lora_registry_resolve(reg, task, NULL, NULL, &none, err); /* words the error */
        lora_reg_adapter_free(none);
        return rc ? rc : lora_seterr(err, LORA_EINPUT, "no trusted adapter for task %s", task);
    }
    size_t chosen = 0;
    if ((rc = choose_for_base(reg, spec, opts, v, n, &chosen, out, err)) == LORA_OK) {
        if (!(*row = malloc(sizeof **row))) {
            lora_adapter_free(*out);
            *out = NULL;
            rc = lora_oom(err);
        } else {
            **row = v[chosen];
            memset(&v[chosen], 0, sizeof v[chosen]);
        }
    }
    lora_reg_adapters_free(v, n);
    return rc;
}

/* reg:NAME[@VERSION]: that row (the newest version without @VERSION,
 * as lora-registry show takes it).  An untrusted row is refused unless
 * opts->no_verify, which loads it unverified with a warning. */
static int pick_name(lora_registry *reg, const char *spec, const lora_source_opts *opts,
                     lora_reg_adapter **row, lora_error *err)
{
    int rc = lora_registry_get(reg, spec + 4, 0, row, err);
    if (rc || (*row)->trusted)
        return rc;
    if (opts && opts->no_verify) {
        if (opts->warn)
            fprintf(opts->warn, "%s%swarning: %s (%s@%s) is untrusted in the registry; loading it "
                                "anyway, signature NOT verified (--no-verify)\n", PFX(opts),
                    spec, (*row)->name, (*row)->version);
        return LORA_OK;
    }
    return lora_seterr(err, LORA_ECHECK, "%s@%s is untrusted in the registry (its signer %s is "
                                         "not trusted; --no-verify loads it anyway)",
                       (*row)->name, (*row)->version, (*row)->signer ? (*row)->signer : "-");
}

/* task:TASK and reg:NAME[@VERSION]: the registry (opened read-only, so
 * that a shared registry serves users who cannot write it) picks the
 * row, and the adapter is loaded from the bytes checked against it
 * (lora_registry_open_adapter).  Every message names the
 * NAME@VERSION chosen. */
static int load_from_registry(const char *spec, const lora_source_opts *opts,
                              lora_adapter **out, lora_error *err)
{
    lora_registry *reg;
    int rc = lora_registry_open(opts ? opts->registry : NULL, LORA_REG_READONLY, &reg, err);
    if (rc)
        return err ? lora_err_prefix(err, "%s", spec) : rc;
    lora_reg_adapter *a = NULL;
    lora_adapter *ad = NULL;
    rc = spec[0] == 't' ? pick_task(reg, spec, opts, &a, &ad, err)
                        : pick_name(reg, spec, opts, &a, err);
    if (!rc && !ad)
        rc = lora_registry_open_adapter(reg, a, !a->trusted && opts && opts->no_verify, &ad,
                                        err);
    lora_registry_close(reg);
    if (rc && err) {
        char chosen[300] = "";
        if (a && !strstr(err->msg, a->name))
            snprintf(chosen, sizeof chosen, " (%s@%s)", a->name, a->version);
        lora_err_prefix(err, "%s%s", spec, chosen);
    }
    lora_reg_adapter_free(a);
    if (rc)
        return rc;
    *out = ad;
    return LORA_OK;
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

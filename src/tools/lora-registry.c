/*
 * lora-registry - the command-line front end of the adapter registry:
 * parse arguments, call liblora's lora_registry_* functions, print
 * (human text or --json).  Everything it does is in src/lib/registry.c.
 */
#include "config.h"
#include "lora.h"
#include "jsonerr.h"
#include "sigbus.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROG "lora-registry"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " PROG " [--registry PATH] COMMAND [ARG]... [OPTION]...\n"
            "Keep the LoRA adapters that serve each task: verified archives from\n"
            "trusted keys, resolved by task name, with their eval results.\n"
            "\n"
            "Commands:\n"
            "  init                       create the registry (and its blob folder)\n"
            "  trust KEY.pub [--name WHO] trust a minisign public key\n"
            "  untrust KEYID              stop trusting a key (its adapters become untrusted)\n"
            "  keys                       list trusted keys\n"
            "  add ARCHIVE [--allow-untrusted]\n"
            "                             verify a .lora archive and register it\n"
            "  ls [--task T] [--base NAME]\n"
            "                             list adapters\n"
            "  tasks [--base NAME]        list task names (-q: names only, one a line)\n"
            "  show NAME[@VERSION] | HASH show one adapter\n"
            "  resolve TASK [--base NAME] [--version V]\n"
            "                             print the archive serving TASK (newest trusted)\n"
            "  rm NAME@VERSION            remove an adapter (its blob stays until gc)\n"
            "  gc                         remove blobs no adapter refers to\n"
            "  verify                     check the database, re-hash every blob (exit 1\n"
            "                             on damage)\n"
            "  evals [NAME[@VERSION]]     list recorded eval results\n"
            "\n"
            "Options:\n"
            "  -r, --registry PATH        registry database (default: $LORA_REGISTRY, else\n"
            "                             $XDG_DATA_HOME/lora/registry.db, else\n"
            "                             ~/.local/share/lora/registry.db)\n"
            "  -n, --name WHO             trust: who the key belongs to\n"
            "  -u, --allow-untrusted      add: accept an archive no trusted key signed\n"
            "                             (marked untrusted; resolve never picks it)\n"
            "  -t, --task T               ls: only this task\n"
            "  -b, --base NAME            ls, tasks, resolve: only this base model\n"
            "      --version V            resolve: this version; before a command: show\n"
            "                             the program version and exit\n"
            "  -j, --json                 machine-readable output on stdout\n"
            "  -q, --quiet                no progress or confirmation text\n"
            "  -h, --help                 show this help and exit\n"
            "\n"
            "Exit status: 0 success, 1 a check failed (corrupted blob, verification),\n"
            "2 usage error, 3 bad input or not found, 4 I/O or system error.\n");
}

enum { O_VERSION = 1000 };

struct args {
    const char *registry, *name, *task, *base, *version;
    int allow_untrusted, json, quiet;
};

static int fail(const lora_error *e, int rc)
{
    fprintf(stderr, PROG ": %s\n", e->msg[0] ? e->msg : "failed");
    return rc ? rc : LORA_EIO;
}

static int usage_err(const char *fmt, const char *a)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\nTry '" PROG " --help'.\n");
    return LORA_EUSAGE;
}

static void fmt_time(int64_t t, char buf[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (gmtime_r(&tt, &tm))
        strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
    else
        snprintf(buf, 32, "%lld", (long long)t);
}

static int print_json(json_t *j)
{
    if (!j) {
        fprintf(stderr, PROG ": out of memory\n");
        return LORA_EIO;
    }
    int rc = json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    fputc('\n', stdout);
    return rc == 0 ? LORA_OK : LORA_EIO;
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *adapter_json(const lora_reg_adapter *a)
{
    char t[32];
    fmt_time(a->added, t);
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(a->name));
    json_object_set_new(o, "version", json_string(a->version));
    json_object_set_new(o, "task", json_string(a->task));
    json_object_set_new(o, "base_model", str_or_null(a->base_model));
    json_object_set_new(o, "base_hash", str_or_null(a->base_hash));
    json_object_set_new(o, "r", json_integer((json_int_t)a->r));
    json_object_set_new(o, "alpha", json_real(a->alpha));
    json_object_set_new(o, "hash", json_string(a->hash));
    json_object_set_new(o, "size", json_integer((json_int_t)a->size));
    json_object_set_new(o, "signer", str_or_null(a->signer));
    json_object_set_new(o, "trusted", json_boolean(a->trusted));
    json_object_set_new(o, "added", json_string(t));
    json_object_set_new(o, "path", json_string(a->path));
    return o;
}

static void print_adapter(const lora_reg_adapter *a)
{
    char t[32];
    fmt_time(a->added, t);
    printf("name:       %s\n", a->name);
    printf("version:    %s\n", a->version);
    printf("task:       %s\n", a->task);
    printf("base model: %s\n", a->base_model ? a->base_model : "-");
    printf("base hash:  %s\n", a->base_hash ? a->base_hash : "-");
    printf("r:          %llu\n", (unsigned long long)a->r);
    printf("alpha:      %g\n", a->alpha);
    printf("hash:       %s\n", a->hash);
    printf("size:       %llu\n", (unsigned long long)a->size);
    printf("signer:     %s\n", a->signer ? a->signer : "-");
    printf("trusted:    %s\n", a->trusted ? "yes" : "NO");
    printf("added:      %s\n", t);
    printf("path:       %s\n", a->path);
}

/* flags: LORA_REG_CREATE for init, trust, add; LORA_REG_READONLY for
 * the commands that only read, so that they work on a registry the
 * user cannot write and on a full disk. */
static int open_reg(const struct args *a, int flags, lora_registry **reg)
{
    lora_error e;
    lora_error_clear(&e);
    int rc = lora_registry_open(a->registry, flags, reg, &e);
    return rc ? fail(&e, rc) : LORA_OK;
}

static int cmd_init(const struct args *a)
{
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_CREATE, &reg);
    if (rc)
        return rc;
    if (a->json) {
        json_t *o = json_object();
        json_object_set_new(o, "path", json_string(lora_registry_path(reg)));
        json_object_set_new(o, "blobs", json_string(lora_registry_blob_dir(reg)));
        json_object_set_new(o, "schema_version", json_integer(lora_registry_schema_version(reg)));
        rc = print_json(o);
    } else if (!a->quiet) {
        printf("registry %s (schema version %d, blobs in %s)\n", lora_registry_path(reg),
               lora_registry_schema_version(reg), lora_registry_blob_dir(reg));
    }
    lora_registry_close(reg);
    return rc;
}

static int cmd_trust(const struct args *a, const char *keyfile)
{
    lora_error e;
    lora_error_clear(&e);
    lora_pubkey pk;
    int rc = lora_pubkey_load(keyfile, &pk, &e);
    if (rc)
        return fail(&e, rc);
    char id[LORA_KEYID_STR], b64[57];
    lora_keyid_str(pk.key_id, id);
    lora_pubkey_b64(&pk, b64);
    lora_registry *reg;
    if ((rc = open_reg(a, LORA_REG_CREATE, &reg)))
        return rc;
    int added = 0;
    rc = lora_registry_trust(reg, id, b64, a->name, &added, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    if (a->json) {
        json_t *o = json_object();
        json_object_set_new(o, "key_id", json_string(id));
        json_object_set_new(o, "pubkey", json_string(b64));
        json_object_set_new(o, "name", str_or_null(a->name));
        json_object_set_new(o, "added", json_boolean(added));
        return print_json(o);
    }
    if (!a->quiet)
        printf("%s key %s%s%s\n", added ? "trusted" : "already trusted:", id,
               a->name ? " " : "", a->name ? a->name : "");
    return LORA_OK;
}

static int cmd_untrust(const struct args *a, const char *id)
{
    lora_registry *reg;
    int rc = open_reg(a, 0, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    size_t demoted = 0;
    rc = lora_registry_untrust(reg, id, &demoted, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    if (a->json) {
        json_t *o = json_object();
        json_object_set_new(o, "key_id", json_string(id));
        json_object_set_new(o, "untrusted_adapters", json_integer((json_int_t)demoted));
        return print_json(o);
    }
    if (!a->quiet)
        printf("untrusted key %s (%zu adapter%s no longer trusted)\n", id, demoted,
               demoted == 1 ? "" : "s");
    return LORA_OK;
}

static int cmd_keys(const struct args *a)
{
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_READONLY, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    lora_reg_key *k;
    size_t n;
    rc = lora_registry_keys(reg, &k, &n, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            char t[32];
            fmt_time(k[i].added, t);
            json_t *o = json_object();
            json_object_set_new(o, "key_id", json_string(k[i].key_id));
            json_object_set_new(o, "pubkey", json_string(k[i].pubkey));
            json_object_set_new(o, "name", str_or_null(k[i].name));
            json_object_set_new(o, "added", json_string(t));
            json_array_append_new(arr, o);
        }
        rc = print_json(arr);
    } else {
        for (size_t i = 0; i < n; i++) {
            char t[32];
            fmt_time(k[i].added, t);
            printf("%-16s  %s  %s  %s\n", k[i].key_id, k[i].pubkey, t,
                   k[i].name ? k[i].name : "-");
        }
    }
    lora_reg_keys_free(k, n);
    return rc;
}

static int cmd_add(const struct args *a, const char *archive)
{
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_CREATE, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    lora_reg_adapter *ad = NULL;
    int added = 0;
    char why[LORA_ERROR_MAX];
    why[0] = '\0';
    rc = lora_registry_add(reg, archive, a->allow_untrusted, &ad, &added, why, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    if (!ad->trusted)
        fprintf(stderr,
                PROG ": warning: %s@%s registered as UNTRUSTED (resolve will not pick it): %s\n",
                ad->name, ad->version, why[0] ? why : "its signer is not trusted");
    if (a->json) {
        json_t *o = adapter_json(ad);
        json_object_set_new(o, "new", json_boolean(added));
        rc = print_json(o);
    } else if (!a->quiet) {
        printf("%s %s@%s (task %s) %s\n", added ? "added" : "already present:", ad->name,
               ad->version, ad->task, ad->hash);
    }
    lora_reg_adapter_free(ad);
    return rc;
}

static int cmd_ls(const struct args *a)
{
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_READONLY, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    lora_reg_adapter *v;
    size_t n;
    rc = lora_registry_ls(reg, a->task, a->base, &v, &n, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, adapter_json(&v[i]));
        rc = print_json(arr);
    } else {
        int wn = 4, wv = 7, wt = 4, wb = 4;
        for (size_t i = 0; i < n; i++) {
            int l;
            if ((l = (int)strlen(v[i].name)) > wn)
                wn = l;
            if ((l = (int)strlen(v[i].version)) > wv)
                wv = l;
            if ((l = (int)strlen(v[i].task)) > wt)
                wt = l;
            if (v[i].base_model && (l = (int)strlen(v[i].base_model)) > wb)
                wb = l;
        }
        if (n && !a->quiet)
            printf("%-*s  %-*s  %-*s  %-*s  %5s  %7s  %-9s  %s\n", wn, "NAME", wv, "VERSION", wt,
                   "TASK", wb, "BASE", "R", "ALPHA", "TRUST", "HASH");
        for (size_t i = 0; i < n; i++)
            printf("%-*s  %-*s  %-*s  %-*s  %5llu  %7g  %-9s  %.16s\n", wn, v[i].name, wv,
                   v[i].version, wt, v[i].task, wb, v[i].base_model ? v[i].base_model : "-",
                   (unsigned long long)v[i].r, v[i].alpha, v[i].trusted ? "trusted" : "UNTRUSTED",
                   v[i].hash);
    }
    lora_reg_adapters_free(v, n);
    return rc;
}

/* Task names, sorted, with how many adapters serve each (and how many of
 * them are trusted, the only ones task:TASK resolves to).  -q prints the
 * bare names, one a line: what the shell completions read. */
static int cmp_task(const void *x, const void *y)
{
    const lora_reg_adapter *const *p = x, *const *q = y;
    return strcmp((*p)->task, (*q)->task);
}

static int cmd_tasks(const struct args *a)
{
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_READONLY, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    lora_reg_adapter *v;
    size_t n;
    rc = lora_registry_ls(reg, NULL, a->base, &v, &n, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    const lora_reg_adapter **s = n ? malloc(n * sizeof *s) : NULL;
    if (n && !s) {
        lora_reg_adapters_free(v, n);
        fprintf(stderr, PROG ": out of memory\n");
        return LORA_EIO;
    }
    for (size_t i = 0; i < n; i++)
        s[i] = &v[i];
    if (n)
        qsort(s, n, sizeof *s, cmp_task);
    json_t *arr = a->json ? json_array() : NULL;
    int w = 4;
    for (size_t i = 0; i < n; i++)
        if ((int)strlen(s[i]->task) > w)
            w = (int)strlen(s[i]->task);
    if (!a->json && !a->quiet && n)
        printf("%-*s  %8s  %7s\n", w, "TASK", "ADAPTERS", "TRUSTED");
    for (size_t i = 0, j; i < n; i = j) {
        size_t trusted = 0;
        for (j = i; j < n && strcmp(s[j]->task, s[i]->task) == 0; j++)
            trusted += s[j]->trusted != 0;
        if (a->json) {
            json_t *o = json_object();
            json_object_set_new(o, "task", json_string(s[i]->task));
            json_object_set_new(o, "adapters", json_integer((json_int_t)(j - i)));
            json_object_set_new(o, "trusted", json_integer((json_int_t)trusted));
            json_array_append_new(arr, o);
        } else if (a->quiet) {
            printf("%s\n", s[i]->task);
        } else {
            printf("%-*s  %8zu  %7zu\n", w, s[i]->task, j - i, trusted);
        }
    }
    if (a->json)
        rc = print_json(arr);
    free(s);
    lora_reg_adapters_free(v, n);
    return rc;
}

static int cmd_show(const struct args *a, const char *spec)
{
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_READONLY, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    lora_reg_adapter *ad;
    rc = lora_registry_get(reg, spec, 0, &ad, &e);
    if (rc) {
        lora_registry_close(reg);
        return fail(&e, rc);
    }
    lora_reg_eval *ev = NULL;
    size_t nev = 0;
    char full[1024];
    snprintf(full, sizeof full, "%s@%s", ad->name, ad->version);
    rc = lora_registry_evals(reg, full, &ev, &nev, &e);
    lora_registry_close(reg);
    if (rc) {
        lora_reg_adapter_free(ad);
        return fail(&e, rc);
    }
    if (a->json) {
        rc = print_json(adapter_json(ad));
    } else {
        print_adapter(ad);
        if (nev)
            printf("evals:      %zu (lora-registry evals %s)\n", nev, full);
    }
    lora_reg_evals_free(ev, nev);
    lora_reg_adapter_free(ad);
    return rc;
}

static int cmd_resolve(const struct args *a, const char *task)
{
    if (strncmp(task, "task:", 5) == 0)
        task += 5;
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_READONLY, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    lora_reg_adapter *ad;
    rc = lora_registry_resolve(reg, task, a->base, a->version, &ad, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    if (a->json)
        rc = print_json(adapter_json(ad));
    else
        printf("%s\n", ad->path);
    lora_reg_adapter_free(ad);
    return rc;
}

static int cmd_rm(const struct args *a, const char *spec)
{
    const char *at = strrchr(spec, '@');
    if (strncmp(spec, "reg:", 4) == 0)
        spec += 4;
    if (!at || at == spec || !at[1])
        return usage_err("rm: give NAME@VERSION, not '%s'", spec);
    char *name = strndup(spec, (size_t)(at - spec));
    if (!name)
        return LORA_EIO;
    lora_registry *reg;
    int rc = open_reg(a, 0, &reg);
    if (rc) {
        free(name);
        return rc;
    }
    lora_error e;
    lora_error_clear(&e);
    rc = lora_registry_rm(reg, name, at + 1, &e);
    lora_registry_close(reg);
    if (rc) {
        free(name);
        return fail(&e, rc);
    }
    if (a->json) {
        json_t *o = json_object();
        json_object_set_new(o, "removed", json_string(spec));
        rc = print_json(o);
    } else if (!a->quiet) {
        printf("removed %s (its blob stays until lora-registry gc)\n", spec);
    }
    free(name);
    return rc;
}

static int cmd_gc(const struct args *a)
{
    lora_registry *reg;
    int rc = open_reg(a, 0, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    size_t nb = 0;
    uint64_t by = 0;
    rc = lora_registry_gc(reg, &nb, &by, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    if (a->json) {
        json_t *o = json_object();
        json_object_set_new(o, "removed_files", json_integer((json_int_t)nb));
        json_object_set_new(o, "removed_bytes", json_integer((json_int_t)by));
        return print_json(o);
    }
    if (!a->quiet)
        printf("removed %zu file%s (%llu bytes)\n", nb, nb == 1 ? "" : "s",
               (unsigned long long)by);
    return LORA_OK;
}

static int cmd_verify(const struct args *a)
{
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_READONLY, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    char **p;
    size_t n;
    rc = lora_registry_verify(reg, &p, &n, &e);
    lora_registry_close(reg);
    if (rc && rc != LORA_ECHECK)
        return fail(&e, rc);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, PROG ": %s\n", p[i]);
    if (a->json) {
        json_t *o = json_object(), *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, json_string(p[i]));
        json_object_set_new(o, "ok", json_boolean(n == 0));
        json_object_set_new(o, "problems", arr);
        int jr = print_json(o);
        if (jr)
            rc = jr;
    } else if (!a->quiet) {
        printf(n ? "%zu problem%s found\n" : "database and every blob intact\n", n,
               n == 1 ? "" : "s");
    }
    lora_reg_problems_free(p, n);
    return rc;
}

static int cmd_evals(const struct args *a, const char *name)
{
    lora_registry *reg;
    int rc = open_reg(a, LORA_REG_READONLY, &reg);
    if (rc)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    /* An adapter that is not registered is an error, not an empty list. */
    lora_reg_adapter *known = NULL;
    if (name && (rc = lora_registry_get(reg, name, 0, &known, &e))) {
        lora_registry_close(reg);
        return fail(&e, rc);
    }
    lora_reg_adapter_free(known);
    lora_reg_eval *v;
    size_t n;
    rc = lora_registry_evals(reg, name, &v, &n, &e);
    lora_registry_close(reg);
    if (rc)
        return fail(&e, rc);
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            char t[32];
            fmt_time(v[i].time, t);
            json_t *o = json_object();
            json_object_set_new(o, "adapter", json_string(v[i].adapter));
            json_object_set_new(o, "metric", json_string(v[i].metric));
            json_object_set_new(o, "value", json_real(v[i].value));
            json_object_set_new(o, "items", json_integer((json_int_t)v[i].items));
            json_object_set_new(o, "dataset", str_or_null(v[i].dataset));
            json_object_set_new(o, "dataset_hash", json_string(v[i].dataset_hash));
            json_object_set_new(o, "base_hash", json_string(v[i].base_hash));
            json_object_set_new(o, "time", json_string(t));
            json_object_set_new(o, "tool_version", json_string(v[i].tool_version));
            json_object_set_new(o, "mode", v[i].mode ? json_string(v[i].mode) : json_null());
            json_object_set_new(o, "base_name",
                                v[i].base_name ? json_string(v[i].base_name) : json_null());
            json_array_append_new(arr, o);
        }
        rc = print_json(arr);
    } else {
        if (n && !a->quiet)
            printf("%-20s  %-24s  %-10s  %12s  %7s  %-16s  %s\n", "TIME", "ADAPTER", "METRIC",
                   "VALUE", "ITEMS", "DATASET", "BASE");
        for (size_t i = 0; i < n; i++) {
            char t[32];
            fmt_time(v[i].time, t);
            printf("%-20s  %-24s  %-10s  %12.6g  %7llu  %-16.16s  %.16s\n", t, v[i].adapter,
                   v[i].metric, v[i].value, (unsigned long long)v[i].items,
                   v[i].dataset ? v[i].dataset : v[i].dataset_hash, v[i].base_hash);
        }
    }
    lora_reg_evals_free(v, n);
    return rc;
}

enum { GO_ON = -1 }; /* a step's "no exit status yet" */

/* Options and operands, in any order: *cmd the command, pos[] its
 * operands.  "--version" before any command shows the program version,
 * after one it is resolve's version filter.  '-' in optstring returns
 * operands in order.  GO_ON, or the exit status. */
static int parse_cli(int argc, char **argv, struct args *a, const char **cmd, char *pos[4],
                     int *npos)
{
    static const struct option opts[] = {
        {"registry", required_argument, 0, 'r'}, {"name", required_argument, 0, 'n'},
        {"allow-untrusted", no_argument, 0, 'u'}, {"task", required_argument, 0, 't'},
        {"base", required_argument, 0, 'b'},     {"version", optional_argument, 0, O_VERSION},
        {"json", no_argument, 0, 'j'},           {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "-:r:n:ut:b:jqh", opts, NULL)) != -1) {
        switch (c) {
        case 1:
            if (!*cmd)
                *cmd = optarg;
            else if (*npos < 4)
                pos[(*npos)++] = optarg;
            else
                return usage_err("too many arguments (at '%s')", optarg);
            break;
        case 'r': a->registry = optarg; break;
        case 'n': a->name = optarg; break;
        case 'u': a->allow_untrusted = 1; break;
        case 't': a->task = optarg; break;
        case 'b': a->base = optarg; break;
        case 'j': a->json = 1; break;
        case 'q': a->quiet = 1; break;
        case 'h': usage(stdout); return 0;
        case O_VERSION:
            if (!*cmd) {
                printf(PROG " (lora-tools) %s\n", lora_version());
                return 0;
            }
            if (!optarg) {
                if (optind < argc && argv[optind][0] != '-')
                    optarg = argv[optind++];
                else
                    return usage_err("%s: --version needs a value here", *cmd);
            }
            a->version = optarg;
            break;
        case ':':
            return usage_err("option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_err("unknown option '%s'", argv[optind - 1]);
        }
    }
    return *cmd ? GO_ON : usage_err("%s", "no command given");
}

static const struct {
    const char *name;
    int nargs_min, nargs_max;
} commands[] = {{"init", 0, 0}, {"trust", 1, 1}, {"untrust", 1, 1}, {"keys", 0, 0},
                {"add", 1, 1},  {"ls", 0, 0},    {"show", 1, 1},    {"resolve", 1, 1},
                {"rm", 1, 1},   {"gc", 0, 0},    {"verify", 0, 0},  {"evals", 0, 1},
                {"tasks", 0, 0}};

/* *k the command's index in commands[], its operand count and its
 * options checked: options that mean nothing to a command are refused,
 * not ignored.  GO_ON, or the exit status. */
static int check_command(const char *cmd, int npos, const struct args *a, size_t *k)
{
    for (*k = 0; *k < sizeof commands / sizeof commands[0]; (*k)++)
        if (strcmp(commands[*k].name, cmd) == 0)
            break;
    if (*k == sizeof commands / sizeof commands[0])
        return usage_err("unknown command '%s'", cmd);
    if (npos < commands[*k].nargs_min)
        return usage_err("%s: missing argument", cmd);
    if (npos > commands[*k].nargs_max)
        return usage_err("%s: too many arguments", cmd);
    if ((a->name && strcmp(cmd, "trust")) || (a->allow_untrusted && strcmp(cmd, "add")) ||
        (a->task && strcmp(cmd, "ls")) ||
        (a->base && strcmp(cmd, "ls") && strcmp(cmd, "resolve") && strcmp(cmd, "tasks")) ||
        (a->version && strcmp(cmd, "resolve")))
        return usage_err("%s: option not valid for this command", cmd);
    return GO_ON;
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, PROG, 'j');
    lora_tool_sigbus(PROG);
    struct args a = {0};
    const char *cmd = NULL;
    char *pos[4];
    int npos = 0;
    int rc = parse_cli(argc, argv, &a, &cmd, pos, &npos);
    if (rc != GO_ON)
        return rc;
    lora_error e;
    lora_error_clear(&e);
    if (lora_init(&e))
        return fail(&e, LORA_EIO);
    size_t k;
    if ((rc = check_command(cmd, npos, &a, &k)) != GO_ON)
        return rc;
    switch (k) {
    case 0: return cmd_init(&a);
    case 1: return cmd_trust(&a, pos[0]);
    case 2: return cmd_untrust(&a, pos[0]);
    case 3: return cmd_keys(&a);
    case 4: return cmd_add(&a, pos[0]);
    case 5: return cmd_ls(&a);
    case 6: return cmd_show(&a, pos[0]);
    case 7: return cmd_resolve(&a, pos[0]);
    case 8: return cmd_rm(&a, pos[0]);
    case 9: return cmd_gc(&a);
    case 10: return cmd_verify(&a);
    case 11: return cmd_evals(&a, npos ? pos[0] : NULL);
    default: return cmd_tasks(&a);
    }
}

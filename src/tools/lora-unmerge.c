/*
 * lora-unmerge - take merged adapters back out of a checkpoint: bit for
 * bit with the merge receipt (checked against its hashes), best effort
 * without; --check reports how exactly W0 comes back and writes
 * nothing.  Argument parsing and printing only: the work is
 * lora_merge_run in liblora.
 */
#include "config.h"
#include "lora.h"
#include "progress.h"
#include "adapteropts.h"
#include "jsonerr.h"
#include "outpath.h"
#include "sigbus.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROG "lora-unmerge"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " PROG " MERGED -a ADAPTER[:WEIGHT] [-a ...] [--receipt R] -o OUT [options]\n"
            "       " PROG " --check MERGED -a ADAPTER ... [--receipt R] [--base BASE] [--json]\n"
            "Subtract merged LoRA adapters from a checkpoint.  With the merge receipt the\n"
            "result is the original base bit for bit, checked against the receipt's hashes.\n"
            "\n"
            "  -a, --adapter ADAPTER[:WEIGHT]  adapter to take out (weight from the receipt)\n"
            "  -o, --output OUT                output file or folder (same form as MERGED)\n"
            "  -r, --receipt R                 the merge receipt (exact unmerge)\n"
            "      --receipt-key KEY.pub       R must be signed by this key (R.minisig;\n"
            "                                  repeatable: any of them)\n"
            "      --check                     write nothing; report exact elements per tensor\n"
            "      --base BASE                 with --check: compare with this checkpoint\n"
            "      --dtype F32|F16|BF16        without a receipt: dtype of the base\n"
            "      --any-base                  keep a restored base other than the one the\n"
            "                                  adapter's archive records (warns)\n"
            "  -j, --threads N                 worker threads (default: CPUs online)\n"
            "      --shard NAME                only this shard of a sharded checkpoint;\n"
            "                                  OUT is that one file (no index written)\n"
            ADAPTER_HELP
            "      --json                      print the report as JSON on stdout\n"
            "  -q, --quiet                     no progress bar, no summary\n"
            "  -h, --help                      this help\n"
            "  -V, --version                   print the version\n");
}

static tool_progress progress;

static void on_progress(void *arg, uint64_t done, uint64_t total)
{
    (void)arg;
    if (!total || !tool_progress_due(&progress, done >= total))
        return;
    fprintf(stderr, "\r" PROG ": %3d%% (%llu / %llu MB)", (int)(100 * done / total),
            (unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
    if (done >= total)
        tool_progress_end(&progress);
}

struct rep {
    int json, human;
    json_t *arr;
};

static void on_tensor(void *arg, const lora_tensor_report *r)
{
    struct rep *p = arg;
    if (p->json) {
        json_t *o = json_pack("{sssIsIsIsI}", "name", r->name, "elements", (json_int_t)r->elements,
                              "corrections", (json_int_t)r->fixes, "max_ulps",
                              (json_int_t)r->max_ulps, "may_differ", (json_int_t)r->may_differ);
        if (o) {
            /* exactness is a fact only with a receipt or a reference */
            json_object_set_new(o, "exact", r->known ? json_boolean(r->may_differ == 0)
                                                     : json_null());
            json_object_set_new(o, "exact_elements", r->known ? json_integer((json_int_t)r->exact)
                                                              : json_null());
            json_object_set_new(o, "hash_ok", r->hash_ok < 0 ? json_null()
                                                              : json_boolean(r->hash_ok));
            json_array_append_new(p->arr, o);
        }
    } else if (p->human) {
        if (r->known)
            printf("%-60s %12llu / %-12llu max %llu ulp  %llu corrections%s\n", r->name,
                   (unsigned long long)r->exact, (unsigned long long)r->elements,
                   (unsigned long long)r->max_ulps, (unsigned long long)r->fixes,
                   r->hash_ok < 0 ? "" : r->hash_ok ? "  hash ok" : "  HASH MISMATCH");
        else
            printf("%-60s exactness unknown: at most %llu of %llu may differ\n", r->name,
                   (unsigned long long)r->may_differ, (unsigned long long)r->elements);
    }
}

enum { O_CHECK = 256, O_BASE, O_DTYPE, O_JSON, O_SHARD, O_ANYBASE, O_RECEIPTKEY };

/* The command line, parsed. */
typedef struct unmerge_args {
    tool_opts t;
    char *args[64];
    size_t n;
    const char *rkeys[8];
    size_t nrkeys;
    int out_slash, check;
    const char *out;
    lora_merge_opts o;
} unmerge_args;

/* One option: TOOL_OPT_NEXT, or the exit status. */
static int parse_option(unmerge_args *a, int c, char *arg, char **argv)
{
    lora_merge_opts *o = &a->o;
    switch (c) {
    case 'a':
        if (a->n == 64) {
            fprintf(stderr, PROG ": too many adapters: at most 64\n");
            return LORA_EUSAGE;
        }
        a->args[a->n++] = arg;
        break;
    case 'o':
        a->out_slash = *arg && arg[strlen(arg) - 1] == '/';
        a->out = outpath_trim_slashes(arg);
        break;
    case 'r': o->receipt_in = arg; break;
    case O_RECEIPTKEY:
        if (a->nrkeys == 8) {
            fprintf(stderr, PROG ": too many receipt keys: at most 8\n");
            return LORA_EUSAGE;
        }
        a->rkeys[a->nrkeys++] = arg;
        break;
    case O_CHECK: a->check = 1; break;
    case O_SHARD: o->shard = arg; break;
    case O_BASE: o->reference = arg; break;
    case O_ANYBASE: o->any_base = 1; break;
    case O_DTYPE:
        o->dtype = lora_dtype_from_name(arg);
        if (!lora_dtype_writable(o->dtype)) {
            fprintf(stderr, PROG ": --dtype %s: must be F32, F16 or BF16\n", arg);
            return LORA_EUSAGE;
        }
        break;
    default: return tool_opt(&a->t, c, arg, argv);
    }
    return TOOL_OPT_NEXT;
}

/* What the options say together: 0, or the usage status. */
static int check_args(const unmerge_args *a, int argc)
{
    const lora_merge_opts *o = &a->o;
    /* '-' is no stream here: the output is committed by rename */
    if (a->out && strcmp(a->out, "-") == 0) {
        fprintf(stderr, PROG ": -o -: the checkpoint is written to a temporary file and renamed, "
                        "not streamed; give a path (./- for one named -)\n");
        return LORA_EUSAGE;
    }
    if (optind != argc - 1 || !a->n || (!a->out && !a->check) || (a->out && a->check)) {
        fprintf(stderr, PROG ": needs MERGED, at least one -a ADAPTER, and -o OUT or "
                        "--check, not both (see --help)\n");
        return LORA_EUSAGE;
    }
    if (a->check && !o->reference && !o->receipt_in) {
        fprintf(stderr, PROG ": --check needs --receipt or --base: without either, W0 is unknown\n");
        return LORA_EUSAGE;
    }
    if (o->reference && !a->check) {
        fprintf(stderr, PROG ": --base goes with --check\n");
        return LORA_EUSAGE;
    }
    if (a->nrkeys && !o->receipt_in) {
        fprintf(stderr, PROG ": --receipt-key checks the receipt: give --receipt\n");
        return LORA_EUSAGE;
    }
    return 0;
}

/* TOOL_OPT_NEXT when the command line makes an unmerge, else the exit status. */
static int parse_args(unmerge_args *a, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"adapter", required_argument, NULL, 'a'},
        {"output", required_argument, NULL, 'o'},
        {"receipt", required_argument, NULL, 'r'},
        {"receipt-key", required_argument, NULL, O_RECEIPTKEY},
        {"check", no_argument, NULL, O_CHECK},
        {"shard", required_argument, NULL, O_SHARD},
        {"base", required_argument, NULL, O_BASE},
        {"any-base", no_argument, NULL, O_ANYBASE},
        {"dtype", required_argument, NULL, O_DTYPE},
        {"threads", required_argument, NULL, 'j'},
        ADAPTER_LONGOPTS,
        TOOL_LONGOPTS,
        {NULL, 0, NULL, 0}};
    int c, r;
    opterr = 0; /* our own messages, prefixed with the tool's name */
    while ((c = getopt_long(argc, argv, "a:o:r:j:p:qhV", longopts, NULL)) != -1)
        if ((r = parse_option(a, c, optarg, argv)) != TOOL_OPT_NEXT)
            return r;
    a->o.nthreads = a->t.threads;
    return (r = check_args(a, argc)) != 0 ? r : TOOL_OPT_NEXT;
}

/* Load the adapters and unmerge: the library's status; *ran when there
 * is a summary to print (a refusal before any work, a wrong base, has
 * none).  Messages printed. */
static int run(unmerge_args *a, const char *merged, lora_merge_result *res, int *ran,
               lora_error *err)
{
    lora_source_opts so = adapter_source(&a->t.ao, PROG, NULL);
    lora_merge_adapter ad[64];
    char *specs[64] = {0};
    memset(ad, 0, sizeof ad);
    int rc = LORA_OK;
    for (size_t i = 0; i < a->n && !rc; i++) {
        rc = lora_parse_adapter_arg(a->args[i], &specs[i], &ad[i].weight, &ad[i].weight_given,
                                    err);
        ad[i].spec = specs[i];
        if (!rc)
            rc = lora_adapter_load(specs[i], &so, &ad[i].ad, err);
    }
    if (!rc)
        rc = lora_merge_run(merged, ad, a->n, NULL, 0, a->out, &a->o, res, err);
    *ran = rc == LORA_OK || (rc == LORA_ECHECK && res->elements);
    if (rc && !(*ran && a->check)) {
        tool_progress_end(&progress);
        fprintf(stderr, PROG ": %s\n", err->msg);
        if (a->o.receipt_in && strstr(err->msg, "is not among the adapters given"))
            fprintf(stderr, PROG ": to take out only some of the adapters merged: lora-merge MERGED "
                            "--receipt R --unmerge EACH-MERGED-ADAPTER... -a EACH-ONE-TO-KEEP... "
                            "-o OUT (see lora-unmerge(1))\n");
    }
    for (size_t i = 0; i < a->n; i++) {
        lora_adapter_free(ad[i].ad);
        free(specs[i]);
    }
    return rc;
}

/* "exact": true/false when a receipt or --base tells, null when W0 is
 * unknown; "may_differ" is then an upper bound of the wrong elements. */
static void print_json(lora_merge_result *res, json_t *tensors, const char *out, int rc)
{
    json_t *j = json_pack("{sosIsIsIsIsI}", "tensors", tensors, "elements",
                          (json_int_t)res->elements, "may_differ", (json_int_t)res->may_differ,
                          "max_ulps", (json_int_t)res->max_ulps, "corrections",
                          (json_int_t)res->fixes, "hash_mismatches",
                          (json_int_t)res->hash_mismatches);
    if (j) {
        int known = res->known || res->base_confirmed;
        if (res->base_confirmed)
            res->may_differ = res->inexact = 0; /* the recorded base identity matches */
        json_t *ex = known ? json_boolean(rc == LORA_OK && !res->inexact) : json_null();
        json_object_set_new(j, "exact", ex);
        json_object_set(j, "all_exact", ex);
        json_object_set_new(j, "exact_elements",
                            known ? json_integer((json_int_t)(res->elements - res->inexact))
                                  : json_null());
        json_object_set_new(j, "differ",
                            known ? json_integer((json_int_t)res->inexact) : json_null());
        json_object_set_new(j, "certainly_differ", json_integer((json_int_t)res->inexact));
    }
    if (j && out)
        json_object_set_new(j, "output", json_string(out));
    char *s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    if (s)
        puts(s);
    free(s);
    json_decref(j);
}

/* --check's total line on stdout. */
static void print_check(const lora_merge_result *res, const lora_merge_opts *o, int rc)
{
    if (res->hash_mismatches && !o->reference) {
        /* a hash says that a tensor differs, not how many elements do */
        printf("total: %llu tensor(s) do not match the receipt's hashes: exactness unknown, "
               "at most %llu of %llu elements may differ\n",
               (unsigned long long)res->hash_mismatches, (unsigned long long)res->may_differ,
               (unsigned long long)res->elements);
        return;
    }
    printf("total: %llu / %llu elements exact, max %llu ulp, %llu corrections%s\n",
           (unsigned long long)(res->elements - res->inexact), (unsigned long long)res->elements,
           (unsigned long long)res->max_ulps, (unsigned long long)res->fixes,
           rc == LORA_OK ? "" : " (NOT all exact)");
}

/* The one-line summary of a restore on stderr. */
static void print_restored(const lora_merge_result *res, const lora_merge_opts *o, const char *out)
{
    if (o->receipt_in)
        fprintf(stderr, PROG ": %s: %llu tensors restored bit for bit (hashes match), "
                        "%llu corrections applied\n", out,
                (unsigned long long)res->changed_tensors, (unsigned long long)res->fixes);
    else if (res->base_confirmed)
        fprintf(stderr, PROG ": %s: %llu tensors unmerged without a receipt, restored "
                        "exactly: they match the base identity the archive records\n", out,
                (unsigned long long)res->changed_tensors);
    else
        fprintf(stderr, PROG ": %s: %llu tensors unmerged without a receipt (best effort): "
                        "exactness unknown; at most %llu of %llu elements may differ from "
                        "the original (%llu certainly do); the receipt makes it exact\n", out,
                (unsigned long long)res->changed_tensors, (unsigned long long)res->may_differ,
                (unsigned long long)res->elements, (unsigned long long)res->inexact);
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, PROG, 0);
    lora_tool_sigbus(PROG);
    unmerge_args a;
    memset(&a, 0, sizeof a);
    a.t = (tool_opts){.prog = PROG, .usage = usage, .threads_max = 64};
    a.t.threads = tool_cpus();
    a.o.dtype = LORA_DT_INVALID;
    a.o.warn = stderr;
    int rc = parse_args(&a, argc, argv);
    if (rc != TOOL_OPT_NEXT)
        return rc;
    if ((rc = tool_init_no_blas(PROG)))
        return rc;
    lora_error err;
    lora_error_clear(&err);
    lora_pubkey rpk[8];
    for (size_t i = 0; i < a.nrkeys; i++)
        if (lora_pubkey_load(a.rkeys[i], &rpk[i], &err)) {
            fprintf(stderr, PROG ": --receipt-key %s: %s\n", a.rkeys[i], err.msg);
            return err.code;
        }
    a.o.receipt_pubkeys = a.nrkeys ? rpk : NULL;
    a.o.n_receipt_pubkeys = a.nrkeys;
    /* what -o means, and whether it can be committed, before any work */
    char *out_owned = NULL;
    if (a.out && (rc = outpath_checkpoint(&a.out, &out_owned, a.out_slash, argv[optind],
                                          a.o.shard, PROG)))
        return rc;
    int json = a.t.json, quiet = a.t.quiet, check = a.check;
    a.o.check_only = check;
    tool_progress_init(&progress, quiet || check);
    a.o.progress = on_progress;
    struct rep rp = {json, check && !quiet, json ? json_array() : NULL};
    a.o.on_tensor = on_tensor;
    a.o.on_tensor_arg = &rp;
    lora_merge_result res;
    memset(&res, 0, sizeof res);
    int ran;
    rc = run(&a, argv[optind], &res, &ran, &err);
    if (ran && json) {
        print_json(&res, rp.arr, a.out, rc);
        rp.arr = NULL;
    } else if (ran && check && !quiet) {
        print_check(&res, &a.o, rc);
    } else if (rc == LORA_OK && !quiet) {
        print_restored(&res, &a.o, a.out);
    }
    json_decref(rp.arr);
    free(out_owned);
    return rc;
}

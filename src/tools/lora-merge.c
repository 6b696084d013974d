/*
 * lora-merge - merge LoRA adapters into a checkpoint, streamed, with a
 * merge receipt for an exact unmerge; also the task switch (unmerge one
 * adapter and merge another in one pass).  Argument parsing and
 * printing only: the work is lora_merge_run in liblora.
 */
#include "config.h"
#include "lora.h"
#include "progress.h"
#include "seckey.h"
#include "adapteropts.h"
#include "jsonerr.h"
#include "outpath.h"
#include "sigbus.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROG "lora-merge"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " PROG " BASE -a ADAPTER[:WEIGHT] [-a ...] -o OUT [options]\n"
            "       " PROG " MERGED --unmerge OLD --receipt R -a NEW -o OUT [options]\n"
            "Merge LoRA adapters into a safetensors checkpoint (file, folder or sharded\n"
            "index), streamed, and write a merge receipt (OUT.receipt) for an exact unmerge.\n"
            "\n"
            "  -a, --adapter ADAPTER[:WEIGHT]  adapter to merge (folder, .lora, task:T, reg:N@V)\n"
            "  -o, --output OUT                output file or folder (same form as BASE)\n"
            "      --unmerge ADAPTER[:WEIGHT]  first unmerge this adapter (task switch)\n"
            "      --receipt PATH              receipt to write (default OUT.receipt); with\n"
            "                                  --unmerge, the receipt of the merge to undo\n"
            "      --no-receipt                write no receipt (no hashes, no corrections)\n"
            "      --sign-receipt KEY.sec      sign the receipt written (RECEIPT.minisig)\n"
            "      --receipt-key KEY.pub       with --unmerge: the receipt read must be signed\n"
            "                                  by this key (repeatable)\n"
            "      --dtype F32|F16|BF16        dtype of the changed tensors (default: keep)\n"
            "      --convert-all               with --dtype: every floating tensor, and\n"
            "                                  config.json's torch_dtype\n"
            "      --rounding nearest|reversible  rounding of merged values (default nearest)\n"
            "  -j, --threads N                 worker threads (default: CPUs online)\n"
            "      --shard NAME                only this shard of a sharded checkpoint;\n"
            "                                  OUT is that one file (no index written)\n"
            "      --force                     merge an adapter the base already records\n"
            "      --allow-nonfinite           write values beyond the output dtype as +-inf\n"
            "                                  (counted) instead of refusing the merge\n"
            "      --any-base                  merge into a base other than the one the\n"
            "                                  adapter's archive records (warns)\n"
            ADAPTER_HELP
            "      --json                      print the summary as JSON on stdout\n"
            "  -q, --quiet                     no progress bar\n"
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

static int load_adapters(char **args, size_t n, lora_merge_adapter *out, char **specs,
                         const lora_source_opts *so, lora_error *err)
{
    for (size_t i = 0; i < n; i++) {
        int rc = lora_parse_adapter_arg(args[i], &specs[i], &out[i].weight, &out[i].weight_given,
                                        err);
        if (rc)
            return rc;
        out[i].spec = specs[i];
        if ((rc = lora_adapter_load(specs[i], so, &out[i].ad, err)))
            return rc;
        char *prov = adapter_provenance(out[i].ad, specs[i]);
        if (!prov) {
            snprintf(err->msg, sizeof err->msg, "out of memory");
            return err->code = LORA_EIO;
        }
        free(specs[i]);
        out[i].spec = specs[i] = prov;
    }
    return LORA_OK;
}

enum { O_UNMERGE = 256, O_RECEIPT, O_NORECEIPT, O_DTYPE, O_ROUNDING, O_FORCE,
       O_JSON, O_SHARD, O_ALLOWNF, O_ANYBASE, O_SIGNRECEIPT, O_RECEIPTKEY };
enum { O_CONVERTALL = 0x2000 };

/* The command line, parsed. */
typedef struct merge_args {
    tool_opts t;
    char *adds[64], *undos[64];
    size_t nadd, nundo;
    int out_slash;
    const char *out, *receipt, *sign_key, *rkeys[8];
    size_t nrkeys;
    int no_receipt;
    lora_merge_opts o;
} merge_args;

/* Append ARG to LIST (at most MAX): TOOL_OPT_NEXT, or the usage status. */
static int push_arg(const char **list, size_t *n, size_t max, const char *arg, const char *what)
{
    if (*n == max) {
        fprintf(stderr, PROG ": too many %s: at most %zu\n", what, max);
        return LORA_EUSAGE;
    }
    list[(*n)++] = arg;
    return TOOL_OPT_NEXT;
}

/* One option: TOOL_OPT_NEXT, or the exit status. */
static int parse_option(merge_args *a, int c, char *arg, char **argv)
{
    lora_merge_opts *o = &a->o;
    switch (c) {
    case 'a':
        return push_arg((const char **)a->adds, &a->nadd, 64, arg, "adapters");
    case O_UNMERGE:
        return push_arg((const char **)a->undos, &a->nundo, 64, arg, "adapters");
    case 'o':
        a->out_slash = *arg && arg[strlen(arg) - 1] == '/';
        a->out = outpath_trim_slashes(arg);
        break;
    case O_RECEIPT: a->receipt = arg; break;
    case O_NORECEIPT: a->no_receipt = 1; break;
    case O_SIGNRECEIPT: a->sign_key = arg; break;
    case O_RECEIPTKEY:
        return push_arg(a->rkeys, &a->nrkeys, 8, arg, "receipt keys");
    case O_DTYPE:
        o->dtype = lora_dtype_from_name(arg);
        if (!lora_dtype_writable(o->dtype)) {
            fprintf(stderr, PROG ": --dtype %s: must be F32, F16 or BF16\n", arg);
            return LORA_EUSAGE;
        }
        break;
    case O_CONVERTALL: o->convert_all = 1; break;
    case O_ROUNDING:
        if (!strcmp(arg, "nearest"))
            o->rounding = LORA_ROUND_NEAREST;
        else if (!strcmp(arg, "reversible"))
            o->rounding = LORA_ROUND_REVERSIBLE;
        else {
            fprintf(stderr, PROG ": --rounding %s: must be nearest or reversible\n", arg);
            return LORA_EUSAGE;
        }
        break;
    case O_FORCE: o->force = 1; break;
    case O_ALLOWNF: o->allow_nonfinite = 1; break;
    case O_ANYBASE: o->any_base = 1; break;
    case O_SHARD: o->shard = arg; break;
    default: return tool_opt(&a->t, c, arg, argv);
    }
    return TOOL_OPT_NEXT;
}

/* What the options say together: 0, or the usage status. */
static int check_args(const merge_args *a, int argc)
{
    /* '-' is no stream here: outputs are committed by rename */
    if ((a->out && strcmp(a->out, "-") == 0) ||
        (a->receipt && strcmp(a->receipt, "-") == 0 && !a->nundo)) {
        fprintf(stderr, PROG ": %s -: the checkpoint and its receipt are written to a temporary "
                        "file and renamed, not streamed; give a path (./- for one named -)\n",
                a->out && strcmp(a->out, "-") == 0 ? "-o" : "--receipt");
        return LORA_EUSAGE;
    }
    if (optind != argc - 1 || !a->nadd || !a->out) {
        fprintf(stderr, PROG ": needs BASE, at least one -a ADAPTER and -o OUT (see --help)\n");
        return LORA_EUSAGE;
    }
    if (a->nundo && !a->receipt && !a->no_receipt) {
        /* the task switch is exact only with the old merge's receipt */
        fprintf(stderr, PROG ": --unmerge needs --receipt (the receipt of the merge to undo)\n");
        return LORA_EUSAGE;
    }
    if (a->o.convert_all && (a->o.dtype == LORA_DT_INVALID || a->nundo)) {
        fprintf(stderr, PROG ": --convert-all %s\n", a->nundo ? "and --unmerge: convert in a merge "
                        "of its own" : "needs --dtype (the dtype to convert to)");
        return LORA_EUSAGE;
    }
    if (a->sign_key && a->no_receipt) {
        fprintf(stderr, PROG ": --sign-receipt and --no-receipt: there is no receipt to sign\n");
        return LORA_EUSAGE;
    }
    if (a->nrkeys && !a->nundo) {
        fprintf(stderr, PROG ": --receipt-key checks the receipt read with --unmerge\n");
        return LORA_EUSAGE;
    }
    return 0;
}

/* TOOL_OPT_NEXT when the command line makes a merge, else the exit status. */
static int parse_args(merge_args *a, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"adapter", required_argument, NULL, 'a'},
        {"output", required_argument, NULL, 'o'},
        {"unmerge", required_argument, NULL, O_UNMERGE},
        {"receipt", required_argument, NULL, O_RECEIPT},
        {"no-receipt", no_argument, NULL, O_NORECEIPT},
        {"sign-receipt", required_argument, NULL, O_SIGNRECEIPT},
        {"receipt-key", required_argument, NULL, O_RECEIPTKEY},
        {"dtype", required_argument, NULL, O_DTYPE},
        {"convert-all", no_argument, NULL, O_CONVERTALL},
        {"rounding", required_argument, NULL, O_ROUNDING},
        {"threads", required_argument, NULL, 'j'},
        {"force", no_argument, NULL, O_FORCE},
        {"allow-nonfinite", no_argument, NULL, O_ALLOWNF},
        {"any-base", no_argument, NULL, O_ANYBASE},
        {"shard", required_argument, NULL, O_SHARD},
        ADAPTER_LONGOPTS,
        TOOL_LONGOPTS,
        {NULL, 0, NULL, 0}};
    int c, r;
    opterr = 0; /* our own messages, prefixed with the tool's name */
    while ((c = getopt_long(argc, argv, "a:o:j:p:qhV", longopts, NULL)) != -1)
        if ((r = parse_option(a, c, optarg, argv)) != TOOL_OPT_NEXT)
            return r;
    a->o.nthreads = a->t.threads;
    return (r = check_args(a, argc)) != 0 ? r : TOOL_OPT_NEXT;
}

/* The receipt keys and the signing key, loaded into O: 0, or the exit
 * status (message printed). */
static int load_keys(merge_args *a, lora_pubkey rpk[8], lora_seckey **sk, lora_error *err)
{
    for (size_t i = 0; i < a->nrkeys; i++)
        if (lora_pubkey_load(a->rkeys[i], &rpk[i], err)) {
            fprintf(stderr, PROG ": --receipt-key %s: %s\n", a->rkeys[i], err->msg);
            return err->code;
        }
    if (a->sign_key && tool_load_seckey(a->sign_key, sk, err)) {
        fprintf(stderr, PROG ": --sign-receipt %s: %s\n", a->sign_key, err->msg);
        return err->code ? err->code : LORA_EINPUT;
    }
    a->o.receipt_key = *sk;
    a->o.receipt_pubkeys = a->nrkeys ? rpk : NULL;
    a->o.n_receipt_pubkeys = a->nrkeys;
    return 0;
}

/* Where the receipt goes: --receipt (when not undoing), else OUT.receipt;
 * NULL with --no-receipt.  0, or the exit status. */
static int receipt_path(const merge_args *a, char **receipt_out)
{
    *receipt_out = NULL;
    if (a->no_receipt)
        return 0;
    if (a->receipt && !a->nundo)
        *receipt_out = strdup(a->receipt);
    else if (asprintf(receipt_out, "%s.receipt", a->out) < 0)
        *receipt_out = NULL;
    if (!*receipt_out) {
        fprintf(stderr, PROG ": out of memory\n");
        return LORA_EIO;
    }
    return 0;
}

static void print_json(const lora_merge_result *res, const char *out, const char *receipt_out)
{
    json_t *j = json_pack("{sssosIsIsIsIsIsI}", "output", out, "receipt",
                          receipt_out ? json_string(receipt_out) : json_null(), "tensors",
                          (json_int_t)res->tensors, "changed_tensors",
                          (json_int_t)res->changed_tensors, "copied_tensors",
                          (json_int_t)res->copied_tensors, "elements",
                          (json_int_t)res->elements, "corrections", (json_int_t)res->fixes,
                          "receipt_bytes", (json_int_t)res->receipt_bytes);
    if (j && res->elements)
        json_object_set_new(j, "receipt_bytes_per_parameter",
                            json_real((double)res->receipt_bytes / (double)res->elements));
    if (j)
        json_object_set_new(j, "nonfinite", json_integer((json_int_t)res->nonfinite));
    if (j)
        json_object_set_new(j, "converted_tensors",
                            json_integer((json_int_t)res->converted_tensors));
    char *s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    if (s)
        puts(s);
    free(s);
    json_decref(j);
}

static void print_human(const lora_merge_result *res, const lora_merge_opts *o, const char *out,
                        const char *receipt_out)
{
    fprintf(stderr, PROG ": %s: %llu tensors merged, %llu copied", out,
            (unsigned long long)res->changed_tensors, (unsigned long long)res->copied_tensors);
    if (res->converted_tensors)
        fprintf(stderr, " (%llu converted to %s)", (unsigned long long)res->converted_tensors,
                lora_dtype_name(o->dtype));
    if (receipt_out && res->elements)
        fprintf(stderr, "; receipt %s: %llu corrections, %llu bytes (%.4f bytes/parameter)",
                receipt_out, (unsigned long long)res->fixes,
                (unsigned long long)res->receipt_bytes,
                (double)res->receipt_bytes / (double)res->elements);
    else if (!receipt_out && res->elements)
        fputs("; no receipt: lora-unmerge cannot restore the base exactly", stderr);
    fputc('\n', stderr);
    if (res->nonfinite)
        fprintf(stderr, PROG ": %s: WARNING: %llu value(s) written as +-inf or NaN "
                        "(--allow-nonfinite): they overflow %s\n", out,
                (unsigned long long)res->nonfinite,
                o->dtype != LORA_DT_INVALID ? lora_dtype_name(o->dtype) : "the output dtype");
}

/* Load the adapters and merge: the library's status (message printed). */
static int run(merge_args *a, const char *base, lora_merge_result *res, lora_error *err)
{
    lora_source_opts so = adapter_source(&a->t.ao, PROG, NULL);
    lora_merge_adapter ua[64], aa[64];
    char *us[64] = {0}, *as[64] = {0};
    memset(ua, 0, sizeof ua);
    memset(aa, 0, sizeof aa);
    int rc = load_adapters(a->undos, a->nundo, ua, us, &so, err);
    so.base = a->nundo ? NULL : base; /* task:T prefers an adapter registered for this base */
    if (!rc)
        rc = load_adapters(a->adds, a->nadd, aa, as, &so, err);
    if (!rc)
        rc = lora_merge_run(base, ua, a->nundo, aa, a->nadd, a->out, &a->o, res, err);
    if (!rc && res->untied)
        fprintf(stderr, PROG ": note: the base's head was tied to its input embeddings; the "
                "lm_head update is merged into a new lm_head.weight and %s/config.json says "
                "tie_word_embeddings false\n", a->out);
    if (rc) {
        tool_progress_end(&progress);
        fprintf(stderr, PROG ": %s\n", err->msg);
    }
    for (size_t i = 0; i < a->nundo; i++) {
        lora_adapter_free(ua[i].ad);
        free(us[i]);
    }
    for (size_t i = 0; i < a->nadd; i++) {
        lora_adapter_free(aa[i].ad);
        free(as[i]);
    }
    return rc;
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, PROG, 0);
    lora_tool_sigbus(PROG);
    merge_args a;
    memset(&a, 0, sizeof a);
    a.t = (tool_opts){.prog = PROG, .usage = usage, .threads_max = 64};
    a.t.threads = tool_cpus();
    a.o.dtype = LORA_DT_INVALID;
    a.o.rounding = LORA_ROUND_NEAREST;
    a.o.warn = stderr;
    int rc = parse_args(&a, argc, argv);
    if (rc != TOOL_OPT_NEXT)
        return rc;
    if ((rc = tool_init_no_blas(PROG)))
        return rc;
    lora_error err;
    lora_error_clear(&err);
    lora_seckey *sk = NULL;
    lora_pubkey rpk[8];
    char *out_owned = NULL, *receipt_out = NULL;
    const char *base = argv[optind];
    rc = load_keys(&a, rpk, &sk, &err);
    if (!rc)
        rc = outpath_checkpoint(&a.out, &out_owned, a.out_slash, base, a.o.shard, PROG);
    if (!rc)
        rc = receipt_path(&a, &receipt_out);
    if (rc) {
        free(out_owned);
        lora_seckey_free(sk);
        return rc;
    }
    a.o.receipt_out = receipt_out;
    a.o.receipt_in = a.nundo ? a.receipt : NULL;
    tool_progress_init(&progress, a.t.quiet);
    a.o.progress = on_progress;
    lora_merge_result res;
    memset(&res, 0, sizeof res);
    rc = run(&a, base, &res, &err);
    if (!rc && a.t.json)
        print_json(&res, a.out, receipt_out);
    else if (!rc && !a.t.quiet)
        print_human(&res, &a.o, a.out, receipt_out);
    free(receipt_out);
    free(out_owned);
    lora_seckey_free(sk);
    return rc;
}

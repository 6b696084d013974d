/*
 * lora-inspect - what an adapter is: modules, rank, alpha, scale,
 * parameter and byte counts, dtypes, and problems (--check for CI).
 * Argument parsing and printing only; the figures come from
 * lora_inspect() in the library.
 */
#include "lora.h"
#include "adapteropts.h"
#include "jsonerr.h"
#include "sigbus.h"

#include <ctype.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "lora-inspect"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " PROG " [OPTION]... ADAPTER\n"
            "Show what a LoRA adapter is: modules, rank, alpha, scale, sizes, dtypes, problems.\n"
            "ADAPTER is a PEFT folder, a .lora archive, task:TASK, reg:NAME@VERSION or a\n"
            "llama.cpp GGUF LoRA adapter file.\n"
            "\n"
            "  -b, --base=CHECKPOINT  check every module against a base checkpoint\n"
            "                         (.safetensors file, folder, or index) and compare sizes\n"
            "  -c, --check            exit 1 when an error is found\n"
            "  -s, --strict           with --check, warnings count as errors\n"
            "  -j, --json             one JSON object on stdout\n"
            "  -t, --tensors          list every tensor of the adapter file\n"
            ADAPTER_HELP
            "Analyses (Section 7 of the LoRA paper; replace the report above):\n"
            "      --spectrum         singular values of each dW, effective and stable rank\n"
            "      --compare=OTHER    subspace similarity phi of the A matrices, per module\n"
            "                         both adapters adapt\n"
            "      --svg=FILE         with --compare: heat maps as SVG\n"
            "      --amplification    with --base: how much dW amplifies directions of W\n"
            "      --module=NAME      only these modules (repeatable; full name or suffix)\n"
            "  -q, --quiet            no report: the exit status only (with --check)\n"
            "  -h, --help             show this help and exit\n"
            "  -V, --version          show the version and exit\n"
            "\n"
            "Exit status: 0 ok, 1 --check found an error, 2 usage, 3 bad input, 4 I/O error.\n");
}

/* 1234567 -> "1,234,567" */
static const char *num(uint64_t v, char *buf, size_t n)
{
    char tmp[32];
    int len = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    size_t o = 0;
    for (int i = 0; i < len && o + 2 < n; i++) {
        if (i && (len - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = '\0';
    return buf;
}

static void shape(const lora_tensor *t, char *buf, size_t n)
{
    size_t o = snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += snprintf(buf + o, n - o, "%s%" PRIu64, i ? ", " : "", t->shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

static void pct(double num_, double den, char *buf, size_t n)
{
    if (den <= 0)
        snprintf(buf, n, "-");
    else if (num_ / den >= 0.001)
        snprintf(buf, n, "%.2f%%", 100.0 * num_ / den);
    else
        snprintf(buf, n, "%.4f%%", 100.0 * num_ / den);
}

/* Names with numbers compared as people read them: layers.2 before
 * layers.10 (strcmp puts 10 first).  Runs of digits compare by value
 * (length after leading zeros, then digits), the rest byte by byte. */
static int natcmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0')
                a++;
            while (*b == '0')
                b++;
            size_t la = 0, lb = 0;
            while (isdigit((unsigned char)a[la]))
                la++;
            while (isdigit((unsigned char)b[lb]))
                lb++;
            if (la != lb)
                return la < lb ? -1 : 1;
            int c = strncmp(a, b, la);
            if (c)
                return c;
            a += la;
            b += lb;
        } else {
            if (*a != *b)
                return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    return *a ? 1 : *b ? -1 : 0;
}

static int cmp_module(const void *x, const void *y)
{
    return natcmp((*(const lora_report_module *const *)x)->m->name,
                  (*(const lora_report_module *const *)y)->m->name);
}

static int cmp_tensor(const void *x, const void *y)
{
    return natcmp((*(const lora_report_tensor *const *)x)->t->name,
                  (*(const lora_report_tensor *const *)y)->t->name);
}

/* r, alpha and scale: one line, or one per group and module. */
static void print_rank(const lora_report *rep)
{
    const lora_adapter *ad = rep->ad;
    const char *how = ad->use_rslora ? "alpha/sqrt(r), rsLoRA" : "alpha/r";
    if (rep->n_groups == 1)
        printf("r / alpha        %" PRIu64 " / %g, scale %g (%s), all modules\n",
               rep->groups[0].r, rep->groups[0].alpha, rep->groups[0].scale, how);
    else if (rep->n_groups > 1) {
        printf("r / alpha        config %" PRIu64 " / %g; per module (scale %s):\n", ad->r,
               ad->alpha, how);
        for (size_t i = 0; i < rep->n_groups; i++)
            printf("                   r %" PRIu64 ", alpha %g, scale %g: %zu module%s\n",
                   rep->groups[i].r, rep->groups[i].alpha, rep->groups[i].scale,
                   rep->groups[i].modules, rep->groups[i].modules == 1 ? "" : "s");
        const lora_report_module **ms = malloc((rep->n_modules ? rep->n_modules : 1) * sizeof *ms);
        for (size_t i = 0; ms && i < rep->n_modules; i++)
            ms[i] = &rep->modules[i];
        if (ms)
            qsort(ms, rep->n_modules, sizeof *ms, cmp_module);
        for (size_t i = 0; i < rep->n_modules; i++) {
            const lora_module *m = ms ? ms[i]->m : rep->modules[i].m;
            printf("                   %s: r %" PRIu64 ", alpha %g, scale %g\n", m->name, m->r,
                   m->alpha, m->scale);
        }
        free(ms);
    } else {
        printf("r / alpha        %" PRIu64 " / %g (no LoRA modules)\n", ad->r, ad->alpha);
    }
}

/* --tensors: every tensor, layers in numeric order. */
static void print_tensors(const lora_report *rep)
{
    char a[32];
    printf("tensors          %zu\n", rep->n_tensors);
    const lora_report_tensor **ts = malloc((rep->n_tensors ? rep->n_tensors : 1) * sizeof *ts);
    for (size_t i = 0; ts && i < rep->n_tensors; i++)
        ts[i] = &rep->tensors[i];
    if (ts)
        qsort(ts, rep->n_tensors, sizeof *ts, cmp_tensor);
    for (size_t i = 0; i < rep->n_tensors; i++) {
        const lora_report_tensor *t = ts ? ts[i] : &rep->tensors[i];
        char s[96];
        shape(t->t, s, sizeof s);
        printf("  %s %s %s %s bytes %s\n", t->t->name, lora_dtype_name(t->t->dtype), s,
               num(t->t->nbytes, a, sizeof a), t->role);
    }
    free(ts);
}

static void print_human(const lora_report *rep, const char *base_path, int tensors)
{
    const lora_adapter *ad = rep->ad;
    char a[32], b[32], c[32];
    printf("adapter          %s\n", ad->path);
    printf("base model       %s\n", ad->base_model ? ad->base_model : "(not named)");
    printf("PEFT version     %s\n", ad->peft_version ? ad->peft_version : "(not recorded)");
    if (ad->task_type)
        printf("task type        %s\n", ad->task_type);
    print_rank(rep);
    if (rep->n_dora) {
        printf("DoRA             %zu of %zu modules, lora_magnitude_vector in [%g, %g]\n",
               rep->n_dora, rep->n_modules, rep->mag_min, rep->mag_max);
        for (size_t i = 0; i < rep->n_modules; i++)
            if (rep->modules[i].m->magnitude)
                printf("                   %s: [%g, %g]\n", rep->modules[i].m->name,
                       rep->modules[i].mag_min, rep->modules[i].mag_max);
    }
    printf("target modules   %s\n", ad->target_modules ? ad->target_modules : "null");
    for (size_t i = 0; i < rep->n_targets; i++)
        printf("  matched        %s%s: %zu module%s\n", rep->target_is_regex ? "(regex) " : "",
               rep->targets[i].entry, rep->targets[i].modules,
               rep->targets[i].modules == 1 ? "" : "s");
    if (rep->n_untargeted)
        printf("  not matched    %zu adapted module%s\n", rep->n_untargeted,
               rep->n_untargeted == 1 ? "" : "s");
    printf("modules          %zu adapted\n", rep->n_modules);
    printf("parameters       %s trainable (LoRA %s, ", num(rep->trainable_params, a, sizeof a),
           num(rep->lora_params, b, sizeof b));
    if (rep->n_dora)
        printf("DoRA magnitudes %s, ", num(rep->dora_params, a, sizeof a));
    printf("saved %s)\n", num(rep->saved_params, c, sizeof c));
    printf("bytes            %s on disk\n", num(rep->file_bytes, a, sizeof a));
    printf("dtypes          ");
    for (size_t i = 0; i < rep->n_dtypes; i++)
        printf(" %s (%zu tensor%s)%s", lora_dtype_name(rep->dtypes[i].dtype),
               rep->dtypes[i].tensors, rep->dtypes[i].tensors == 1 ? "" : "s",
               i + 1 < rep->n_dtypes ? "," : "");
    printf("\n");
    if (ad->n_saved) {
        printf("modules_to_save  %zu tensor%s\n", ad->n_saved, ad->n_saved == 1 ? "" : "s");
        for (size_t i = 0; i < ad->n_saved; i++) {
            char s[96];
            shape(ad->saved[i].t, s, sizeof s);
            printf("                   %s %s %s\n", ad->saved[i].target, s,
                   lora_dtype_name(ad->saved[i].t->dtype));
        }
    }
    if (rep->n_copies)
        printf("ignored          %zu frozen base cop%s (.original_module. / .base_layer.)\n",
               rep->n_copies, rep->n_copies == 1 ? "y" : "ies");
    if (rep->has_base) {
        printf("base             %s: %s parameters, %s bytes\n", base_path,
               num(rep->base_params, a, sizeof a), num(rep->base_bytes, b, sizeof b));
        pct((double)rep->trainable_params, (double)rep->base_params, a, sizeof a);
        pct((double)rep->file_bytes, (double)rep->base_bytes, b, sizeof b);
        printf("  adapter/base   %s of the parameters, %s of the bytes\n", a, b);
        pct((double)rep->lora_params, (double)rep->adapted_params, a, sizeof a);
        if (rep->adapted_params)
            printf("  adapted        %s base parameters stored as %s LoRA parameters (%s)\n",
               num(rep->adapted_params, b, sizeof b), num(rep->lora_params, c, sizeof c), a);
    }
    if (tensors)
        print_tensors(rep);
    if (!rep->n_problems)
        /* without a base, "none" cannot see a wrong base or a bad shape */
        printf("problems         none%s\n",
               rep->has_base ? "" : " (no --base: shapes and base identity not checked)");
    else
        printf("problems         %zu error%s, %zu warning%s\n", rep->n_errors,
               rep->n_errors == 1 ? "" : "s", rep->n_warnings, rep->n_warnings == 1 ? "" : "s");
    for (size_t i = 0; i < rep->n_problems; i++)
        printf("  %-7s        %s\n",
               rep->problems[i].severity == LORA_SEV_ERROR ? "error" : "warning",
               rep->problems[i].msg);
}

/* ---- GGUF LoRA adapters (llama.cpp), issue 17 ----
 * A file that starts with GGUF's magic is reported by the library's
 * GGUF reader; the PEFT-only options (--base, --check against a base,
 * the analyses) do not apply to it yet. */
static int inspect_gguf(const char *path, int json, int quiet)
{
    lora_error err;
    lora_error_clear(&err);
    lora_gguf_adapter *ga = NULL;
    char *text = NULL;
    int rc = lora_gguf_adapter_open(path, &ga, &err);
    if (!rc && !(text = lora_gguf_adapter_report(ga, json, &err)))
        rc = err.code ? err.code : LORA_EIO;
    if (rc)
        fprintf(stderr, PROG ": %s\n", err.msg[0] ? err.msg : "failed");
    else if ((!quiet && fputs(text, stdout) == EOF) || fflush(stdout) != 0) {
        fprintf(stderr, PROG ": writing the report failed\n");
        rc = LORA_EIO;
    }
    free(text);
    lora_gguf_adapter_free(ga);
    return rc;
}

/* The paper's analyses (--spectrum, --compare, --amplification). */
static int analyses(lora_adapter *ad, lora_ckpt *base, lora_analysis_opts *ao,
                    const char *compare_path, int amplification, const lora_source_opts *so,
                    int json, int quiet, lora_error *err)
{
    lora_adapter *other = NULL;
    char *text = NULL;
    int rc = compare_path ? lora_adapter_load(compare_path, so, &other, err) : LORA_OK;
    if (!rc) {
        ao->other = other;
        ao->base = amplification ? base : NULL;
        rc = lora_analyze(ad, ao, json, &text, err);
        lora_adapter_free(other);
    }
    if (rc) {
        fprintf(stderr, PROG ": %s\n", err->msg[0] ? err->msg : "failed");
        return rc;
    }
    if ((!quiet && fputs(text, stdout) == EOF) || fflush(stdout) != 0)
        rc = LORA_EIO;
    free(text);
    if (rc)
        fprintf(stderr, PROG ": writing the report failed\n");
    return rc;
}

/* The report (human or JSON), and with --check its verdict. */
static int report(lora_adapter *ad, lora_ckpt *base, const char *base_path, const char *path,
                  int check, int strict, int tensors, int json, int quiet, lora_error *err)
{
    lora_report *rep = NULL;
    lora_inspect_opts io = {.base = base, .strict = strict};
    int rc = lora_inspect(ad, &io, &rep, err);
    char *s = NULL;
    if (!rc && !quiet && json && !(s = lora_report_json(rep, tensors, err)))
        rc = err->code ? err->code : LORA_EIO;
    if (rc) {
        fprintf(stderr, PROG ": %s\n", err->msg[0] ? err->msg : "failed");
        lora_report_free(rep);
        return rc;
    }
    if (s)
        fputs(s, stdout);
    else if (!quiet && !json)
        print_human(rep, base_path, tensors);
    free(s);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, PROG ": writing the report failed\n");
        rc = LORA_EIO;
    } else if (check && rep->n_errors) {
        fprintf(stderr, PROG ": check failed: %zu error%s in %s\n", rep->n_errors,
                rep->n_errors == 1 ? "" : "s", path);
        rc = LORA_ECHECK;
    }
    lora_report_free(rep);
    return rc;
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, PROG, 'j');
    lora_tool_sigbus(PROG);
    static const struct option longopts[] = {
        {"base", required_argument, NULL, 'b'}, {"check", no_argument, NULL, 'c'},
        {"strict", no_argument, NULL, 's'},     {"json", no_argument, NULL, 'j'},
        {"tensors", no_argument, NULL, 't'},    {"quiet", no_argument, NULL, 'q'},
        ADAPTER_LONGOPTS,
        {"help", no_argument, NULL, 'h'},       {"version", no_argument, NULL, 'V'},
        {"spectrum", no_argument, NULL, 1001},  {"compare", required_argument, NULL, 1002},
        {"svg", required_argument, NULL, 1003}, {"amplification", no_argument, NULL, 1004},
        {"module", required_argument, NULL, 1005},
        {NULL, 0, NULL, 0}};
    /* the analyses (analysis_report.c) */
    lora_analysis_opts ao = {0};
    const char *compare_path = NULL;
    int amplification = 0;
    const char **mods = calloc((size_t)argc + 1, sizeof *mods);
    size_t n_mods = 0;
    const char *base_path = NULL;
    int check = 0, strict = 0, tensors = 0;
    tool_opts t = {.prog = PROG, .usage = usage, .json_short = 'j'};
    int ch;
    opterr = 0; /* our own messages, prefixed with the tool's name */
    while ((ch = getopt_long(argc, argv, ":b:csjtp:qhV", longopts, NULL)) != -1) {
        switch (ch) {
        case 'b': base_path = optarg; break;
        case 'c': check = 1; break;
        case 's': strict = 1; break;
        case 't': tensors = 1; break;
        case 1001: ao.spectrum = 1; break;
        case 1002: compare_path = optarg; break;
        case 1003: ao.svg_path = optarg; break;
        case 1004: amplification = 1; break;
        case 1005: if (mods) mods[n_mods++] = optarg; break;
        default:
            if ((ch = tool_opt(&t, ch, optarg, argv)) != TOOL_OPT_NEXT) {
                free(mods);
                return ch;
            }
            break;
        }
    }
    int json = t.json, quiet = t.quiet;
    if (optind != argc - 1) {
        fprintf(stderr, PROG ": %s\nTry '" PROG " --help' for more information.\n",
                optind >= argc ? "missing ADAPTER" : "only one ADAPTER, please");
        free(mods);
        return LORA_EUSAGE;
    }
    if (strict)
        check = 1;
    if (!mods || (ao.svg_path && !compare_path) || (amplification && !base_path)) {
        fprintf(stderr, PROG ": %s\nTry '" PROG " --help' for more information.\n",
                !mods ? "out of memory" : ao.svg_path && !compare_path
                    ? "--svg needs --compare" : "--amplification needs --base");
        free(mods);
        return mods ? LORA_EUSAGE : LORA_EIO;
    }
    ao.modules = n_mods ? mods : NULL;
    if (lora_gguf_is_file(argv[optind])) { /* issue 17: a llama.cpp GGUF LoRA adapter */
        int grc = base_path || ao.spectrum || compare_path || amplification || tensors
                      ? (fprintf(stderr, PROG ": %s: a GGUF adapter; --base, --tensors and the "
                                         "analyses need PEFT (lora-convert --to peft)\n",
                                 argv[optind]), LORA_EUSAGE)
                      : inspect_gguf(argv[optind], json, quiet);
        free(mods);
        return grc;
    }

    lora_error err;
    lora_error_clear(&err);
    lora_adapter *ad = NULL;
    lora_ckpt *base = NULL;
    int rc = lora_init(&err);
    if (rc)
        goto fail;
    lora_source_opts so = adapter_source(&t.ao, PROG, base_path);
    if ((rc = lora_adapter_load(argv[optind], &so, &ad, &err)))
        goto fail;
    if (base_path && (rc = lora_ckpt_open(base_path, &base, &err)))
        goto fail;
    if (ao.spectrum || compare_path || amplification)
        rc = analyses(ad, base, &ao, compare_path, amplification, &so, json, quiet, &err);
    else
        rc = report(ad, base, base_path, argv[optind], check, strict, tensors, json, quiet,
                    &err);
    lora_ckpt_close(base);
    lora_adapter_free(ad);
    free(mods);
    return rc;
fail:
    fprintf(stderr, PROG ": %s\n", err.msg[0] ? err.msg : "failed");
    lora_ckpt_close(base);
    lora_adapter_free(ad);
    free(mods);
    return rc;
}

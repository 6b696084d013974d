/*
 * lora-rank-reduce - an adapter of lower rank by truncated SVD of each
 * module's B·A (computed from the factors), or several adapters
 * combined into one.  Parses arguments, calls lora_reduce, prints the
 * per-module report.
 */
#include "lora.h"
#include "adapteropts.h"
#include "jsonerr.h"
#include "outpath.h"
#include "sigbus.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "lora-rank-reduce"
#define MAX_INPUTS 256

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " PROG " ADAPTER -o OUT (--rank K | --energy F | --sv-ratio R) [options]\n"
            "       " PROG " -a ADAPTER[:WEIGHT] -a ADAPTER[:WEIGHT] ... (--rank K | --energy F |\n"
            "                        --sv-ratio R) -o OUT [options]\n"
            "Reduce the rank of a LoRA adapter by truncated SVD of every module's\n"
            "scale*B*A (never formed densely), or combine several adapters into one.\n"
            "\n"
            "  -a, --adapter SPEC[:W]  an input adapter with weight W (default 1); repeat\n"
            "  -o, --output OUT        the new PEFT adapter folder (must not exist)\n"
            "  -r, --rank K            keep K singular values per module; 0: no truncation\n"
            "                          (sum: the exact weighted concatenation; other\n"
            "                          methods: every singular value)\n"
            "  -e, --energy F          per module the smallest rank keeping fraction F\n"
            "                          (0 < F <= 1) of ||dW||_F^2\n"
            "  -R, --sv-ratio R        keep the singular values >= sigma_1 / R (R >= 1)\n"
            "  -m, --max-rank M        never more than M per module\n"
            "  -M, --method M          how the inputs combine: sum (default, exact and low\n"
            "                          rank), ties, dare_linear, dare_ties, magnitude_prune\n"
            "                          (on each dense delta, then a dense SVD per module)\n"
            "  -d, --density D         fraction of each delta kept (D > 0; D >= 1 keeps all)\n"
            "      --majority-sign S   TIES sign election: total (default) or frequency\n"
            "      --seed N            seed of the DARE generator (default 0)\n"
            "  -f, --force             replace OUT if it exists\n"
            ADAPTER_HELP
            "      --json              the report as JSON on stdout\n"
            "  -q, --quiet             no report on stdout (errors still on stderr)\n"
            "  -h, --help              this help\n"
            "  -V, --version           the version\n"
            "\n"
            "Exit status: 0 done, 2 usage error, 3 bad input, 4 I/O error.\n");
}

static int die(int code, const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    if (code == 2 && !strstr(fmt, "--help"))
        fprintf(stderr, "Try '" PROG " --help'.\n");
    return code;
}

static int parse_u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-')
        return 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end)
        return 0;
    *v = x;
    return 1;
}

static int parse_double(const char *s, double *v)
{
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(x))
        return 0;
    *v = x;
    return 1;
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, PROG, 0);
    lora_tool_sigbus(PROG);
    static const struct option opts[] = {
        {"adapter", required_argument, NULL, 'a'}, {"output", required_argument, NULL, 'o'},
        {"rank", required_argument, NULL, 'r'},    {"energy", required_argument, NULL, 'e'},
        {"sv-ratio", required_argument, NULL, 'R'}, {"max-rank", required_argument, NULL, 'm'},
        {"force", no_argument, NULL, 'f'},         {"method", required_argument, NULL, 'M'},
        {"density", required_argument, NULL, 'd'}, {"majority-sign", required_argument, NULL, 'S'},
        {"seed", required_argument, NULL, 's'},    ADAPTER_LONGOPTS,
        TOOL_LONGOPTS,                             {NULL, 0, NULL, 0}};
    tool_opts t = {.prog = PROG, .usage = usage};
    char *specs[MAX_INPUTS];
    double weights[MAX_INPUTS];
    size_t n = 0;
    const char *out = NULL;
    lora_rank_rule rule = {0};
    int nrules = 0, exact = 0, force = 0, c;
    lora_combine_opts copts = {.method = LORA_COMBINE_SUM, .sign = LORA_SIGN_TOTAL};
    int have_density = 0, have_sign = 0, have_seed = 0;
    uint64_t u;
    double d;
    opterr = 0; /* our own messages, prefixed with the tool's name */
    while ((c = getopt_long(argc, argv, "a:o:r:e:R:m:M:d:p:fqhV", opts, NULL)) != -1) {
        switch (c) {
        case 'a':
            if (n == MAX_INPUTS)
                return die(2, "too many adapters (at most %s)%s", "256", "");
            specs[n] = optarg;
            if (adapter_split_weight(optarg, &weights[n], PROG))
                return 2;
            n++;
            break;
        case 'o':
            out = optarg;
            break;
        case 'r':
            if (!parse_u64(optarg, &u))
                return die(2, "--rank %s: not a non-negative integer%s", optarg, "");
            nrules++;
            if (u == 0)
                exact = 1;
            rule.kind = LORA_RANK_FIXED;
            rule.rank = u;
            break;
        case 'e':
            if (!parse_double(optarg, &d) || !(d > 0 && d <= 1))
                return die(2, "--energy %s: must be a number in (0, 1]%s", optarg, "");
            nrules++;
            rule.kind = LORA_RANK_ENERGY;
            rule.energy = d;
            break;
        case 'R':
            if (!parse_double(optarg, &d) || !(d >= 1))
                return die(2, "--sv-ratio %s: must be a number >= 1%s", optarg, "");
            nrules++;
            rule.kind = LORA_RANK_RATIO;
            rule.ratio = d;
            break;
        case 'm':
            if (!parse_u64(optarg, &u) || u == 0)
                return die(2, "--max-rank %s: must be a positive integer%s", optarg, "");
            rule.max_rank = u;
            break;
        case 'M': {
            int m = lora_combine_method_parse(optarg);
            if (m < 0)
                return die(2, "--method %s: not one of sum, ties, dare_linear, dare_ties, "
                              "magnitude_prune%s", optarg, "");
            copts.method = (lora_combine_method)m;
            break;
        }
        case 'd':
            if (!parse_double(optarg, &d) || !(d > 0))
                return die(2, "--density %s: must be a number > 0%s", optarg, "");
            copts.density = d;
            have_density = 1;
            break;
        case 'S':
            if (strcmp(optarg, "total") == 0)
                copts.sign = LORA_SIGN_TOTAL;
            else if (strcmp(optarg, "frequency") == 0)
                copts.sign = LORA_SIGN_FREQUENCY;
            else
                return die(2, "--majority-sign %s: not total or frequency%s", optarg, "");
            have_sign = 1;
            break;
        case 's':
            if (!parse_u64(optarg, &u))
                return die(2, "--seed %s: not a non-negative integer%s", optarg, "");
            copts.seed = u;
            have_seed = 1;
            break;
        case 'f':
            force = 1;
            break;
        default:
            if ((c = tool_opt(&t, c, optarg, argv)) != TOOL_OPT_NEXT)
                return c;
            break;
        }
    }
    for (; optind < argc; optind++) {
        if (n == MAX_INPUTS)
            return die(2, "too many adapters (at most %s)%s", "256", "");
        specs[n] = argv[optind];
        if (adapter_split_weight(argv[optind], &weights[n], PROG))
            return 2;
        n++;
    }
    if (n == 0)
        return die(2, "no adapter given (see --help)%s%s", "", "");
    if (!out)
        return die(2, "no output folder given (-o OUT)%s%s", "", "");
    if (strcmp(out, "-") == 0)
        return die(2, "-o -: the output is an adapter folder, not a stream; give a path%s%s", "",
                   "");
    if (nrules != 1)
        return die(2, "give exactly one of --rank, --energy, --sv-ratio%s%s", "", "");
    if (exact && rule.max_rank)
        return die(2, "--max-rank does not apply to --rank 0 (no truncation)%s%s", "", "");
    int is_ties = copts.method == LORA_COMBINE_TIES || copts.method == LORA_COMBINE_DARE_TIES;
    int is_dare = copts.method == LORA_COMBINE_DARE_LINEAR || copts.method == LORA_COMBINE_DARE_TIES;
    if (copts.method == LORA_COMBINE_SUM && have_density)
        return die(2, "--density needs --method ties, dare_linear, dare_ties or magnitude_prune%s%s",
                   "", "");
    if (copts.method != LORA_COMBINE_SUM && !have_density)
        return die(2, "--method %s needs --density D%s", lora_combine_method_name(copts.method), "");
    if (have_sign && !is_ties)
        return die(2, "--majority-sign applies to --method ties and dare_ties only%s%s", "", "");
    if (have_seed && !is_dare)
        return die(2, "--seed applies to --method dare_linear and dare_ties only%s%s", "", "");

    if ((c = outpath_folder(out, PROG)) != 0)
        return c;
    lora_error err;
    lora_error_clear(&err);
    int rc = lora_init(&err);
    if (rc != LORA_OK)
        return die(rc, "%s%s", err.msg, "");
    lora_adapter *ads[MAX_INPUTS] = {0};
    lora_weighted in[MAX_INPUTS];
    lora_source_opts so = adapter_source(&t.ao, PROG, NULL);
    for (size_t i = 0; i < n && rc == LORA_OK; i++) {
        rc = lora_adapter_load(specs[i], &so, &ads[i], &err);
        in[i].ad = ads[i];
        in[i].weight = weights[i];
    }
    lora_reduce_report rep = {0};
    if (rc == LORA_OK)
        rc = lora_reduce_combine(in, n, exact ? NULL : &rule, &copts, out, force, &rep, &err);
    if (rc != LORA_OK) {
        fprintf(stderr, PROG ": %s\n", err.msg);
    } else if (t.json) {
        json_t *root = json_object(), *mods = json_array(), *inputs = json_array();
        for (size_t i = 0; i < n; i++) {
            json_t *o = json_object();
            json_object_set_new(o, "adapter", json_string(specs[i]));
            json_object_set_new(o, "weight", json_real(weights[i]));
            json_array_append_new(inputs, o);
        }
        double worst = 0;
        for (size_t i = 0; i < rep.n_modules; i++) {
            const lora_reduce_module *m = &rep.modules[i];
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(m->name));
            json_object_set_new(o, "old_rank", json_integer((json_int_t)m->old_rank));
            json_object_set_new(o, "new_rank", json_integer((json_int_t)m->new_rank));
            json_object_set_new(o, "rel_error", json_real(m->rel_error));
            json_object_set_new(o, "norm", json_real(m->norm));
            json_object_set_new(o, "sources", json_integer(m->n_sources));
            json_array_append_new(mods, o);
            if (m->rel_error > worst)
                worst = m->rel_error;
        }
        json_object_set_new(root, "output", json_string(out));
        json_object_set_new(root, "inputs", inputs);
        const char *rn = exact                            ? "exact"
                         : rule.kind == LORA_RANK_FIXED  ? "rank"
                         : rule.kind == LORA_RANK_ENERGY ? "energy"
                                                         : "sv-ratio";
        json_object_set_new(root, "rule", json_string(rn));
        json_object_set_new(root, "method", json_string(lora_combine_method_name(copts.method)));
        if (copts.method != LORA_COMBINE_SUM)
            json_object_set_new(root, "density", json_real(copts.density));
        if (is_ties)
            json_object_set_new(root, "majority_sign",
                                json_string(copts.sign == LORA_SIGN_TOTAL ? "total" : "frequency"));
        if (is_dare)
            json_object_set_new(root, "seed", json_integer((json_int_t)copts.seed));
        json_object_set_new(root, "modules", mods);
        json_object_set_new(root, "old_params", json_integer((json_int_t)rep.old_params));
        json_object_set_new(root, "new_params", json_integer((json_int_t)rep.new_params));
        json_object_set_new(root, "max_rel_error", json_real(worst));
        char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(root);
        if (!s || fputs(s, stdout) == EOF || fputc('\n', stdout) == EOF) {
            fprintf(stderr, PROG ": cannot write the report\n");
            rc = LORA_EIO;
        }
        free(s);
    } else if (!t.quiet) {
        size_t w = 6;
        for (size_t i = 0; i < rep.n_modules; i++)
            if (strlen(rep.modules[i].name) > w)
                w = strlen(rep.modules[i].name);
        printf("%-*s  %8s  %8s  %10s\n", (int)w, "module", "old rank", "new rank", "rel error");
        double worst = 0;
        for (size_t i = 0; i < rep.n_modules; i++) {
            const lora_reduce_module *m = &rep.modules[i];
            printf("%-*s  %8llu  %8llu  %10.3e\n", (int)w, m->name,
                   (unsigned long long)m->old_rank, (unsigned long long)m->new_rank,
                   m->rel_error);
            if (m->rel_error > worst)
                worst = m->rel_error;
        }
        printf("%zu modules, parameters %llu -> %llu, largest relative error %.3e\n",
               rep.n_modules, (unsigned long long)rep.old_params,
               (unsigned long long)rep.new_params, worst);
        printf("wrote %s\n", out);
    }
    if (fflush(stdout) != 0 && rc == LORA_OK) {
        fprintf(stderr, PROG ": cannot write to stdout\n");
        rc = LORA_EIO;
    }
    lora_reduce_report_free(&rep);
    for (size_t i = 0; i < n; i++)
        lora_adapter_free(ads[i]);
    return rc;
}

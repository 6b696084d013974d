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

/* The command line, parsed. */
typedef struct args {
    tool_opts t;
    char *specs[MAX_INPUTS];
    double weights[MAX_INPUTS];
    size_t n;
    const char *out;
    lora_rank_rule rule;
    int nrules, exact, force;
    lora_combine_opts copts;
    int have_density, have_sign, have_seed;
} args;

/* An input adapter, SPEC[:WEIGHT] (-a or an operand). */
static int add_input(args *a, char *spec)
{
    if (a->n == MAX_INPUTS)
        return die(2, "too many adapters (at most %s)%s", "256", "");
    a->specs[a->n] = spec;
    if (adapter_split_weight(spec, &a->weights[a->n], PROG))
        return 2;
    a->n++;
    return TOOL_OPT_NEXT;
}

/* One option: TOOL_OPT_NEXT, or the exit status. */
static int parse_option(args *a, int c, char *arg, char **argv)
{
    uint64_t u;
    double d;
    switch (c) {
    case 'a':
        return add_input(a, arg);
    case 'o':
        a->out = arg;
        return TOOL_OPT_NEXT;
    case 'r':
        if (!parse_u64(arg, &u))
            return die(2, "--rank %s: not a non-negative integer%s", arg, "");
        a->nrules++;
        if (u == 0)
            a->exact = 1;
        a->rule.kind = LORA_RANK_FIXED;
        a->rule.rank = u;
        return TOOL_OPT_NEXT;
    case 'e':
        if (!parse_double(arg, &d) || !(d > 0 && d <= 1))
            return die(2, "--energy %s: must be a number in (0, 1]%s", arg, "");
        a->nrules++;
        a->rule.kind = LORA_RANK_ENERGY;
        a->rule.energy = d;
        return TOOL_OPT_NEXT;
    case 'R':
        if (!parse_double(arg, &d) || !(d >= 1))
            return die(2, "--sv-ratio %s: must be a number >= 1%s", arg, "");
        a->nrules++;
        a->rule.kind = LORA_RANK_RATIO;
        a->rule.ratio = d;
        return TOOL_OPT_NEXT;
    case 'm':
        if (!parse_u64(arg, &u) || u == 0)
            return die(2, "--max-rank %s: must be a positive integer%s", arg, "");
        a->rule.max_rank = u;
        return TOOL_OPT_NEXT;
    case 'M': {
        int m = lora_combine_method_parse(arg);
        if (m < 0)
            return die(2, "--method %s: not one of sum, ties, dare_linear, dare_ties, "
                          "magnitude_prune%s", arg, "");
        a->copts.method = (lora_combine_method)m;
        return TOOL_OPT_NEXT;
    }
    case 'd':
        if (!parse_double(arg, &d) || !(d > 0))
            return die(2, "--density %s: must be a number > 0%s", arg, "");
        a->copts.density = d;
        a->have_density = 1;
        return TOOL_OPT_NEXT;
    case 'S':
        if (strcmp(arg, "total") == 0)
            a->copts.sign = LORA_SIGN_TOTAL;
        else if (strcmp(arg, "frequency") == 0)
            a->copts.sign = LORA_SIGN_FREQUENCY;
        else
            return die(2, "--majority-sign %s: not total or frequency%s", arg, "");
        a->have_sign = 1;
        return TOOL_OPT_NEXT;
    case 's':
        if (!parse_u64(arg, &u))
            return die(2, "--seed %s: not a non-negative integer%s", arg, "");
        a->copts.seed = u;
        a->have_seed = 1;
        return TOOL_OPT_NEXT;
    case 'f':
        a->force = 1;
        return TOOL_OPT_NEXT;
    default:
        return tool_opt(&a->t, c, arg, argv);
    }
}

static int is_ties(const args *a)
{
    return a->copts.method == LORA_COMBINE_TIES || a->copts.method == LORA_COMBINE_DARE_TIES;
}

static int is_dare(const args *a)
{
    return a->copts.method == LORA_COMBINE_DARE_LINEAR ||
           a->copts.method == LORA_COMBINE_DARE_TIES;
}

/* Options and operands into A: TOOL_OPT_NEXT when they make a run, else
 * the exit status. */
static int parse_args(args *a, int argc, char **argv)
{
    static const struct option opts[] = {
        {"adapter", required_argument, NULL, 'a'}, {"output", required_argument, NULL, 'o'},
        {"rank", required_argument, NULL, 'r'},    {"energy", required_argument, NULL, 'e'},
        {"sv-ratio", required_argument, NULL, 'R'}, {"max-rank", required_argument, NULL, 'm'},
        {"force", no_argument, NULL, 'f'},         {"method", required_argument, NULL, 'M'},
        {"density", required_argument, NULL, 'd'}, {"majority-sign", required_argument, NULL, 'S'},
        {"seed", required_argument, NULL, 's'},    ADAPTER_LONGOPTS,
        TOOL_LONGOPTS,                             {NULL, 0, NULL, 0}};
    int c, r;
    opterr = 0; /* our own messages, prefixed with the tool's name */
    while ((c = getopt_long(argc, argv, "a:o:r:e:R:m:M:d:p:fqhV", opts, NULL)) != -1)
        if ((r = parse_option(a, c, optarg, argv)) != TOOL_OPT_NEXT)
            return r;
    for (; optind < argc; optind++)
        if ((r = add_input(a, argv[optind])) != TOOL_OPT_NEXT)
            return r;
    if (a->n == 0)
        return die(2, "no adapter given (see --help)%s%s", "", "");
    if (!a->out)
        return die(2, "no output folder given (-o OUT)%s%s", "", "");
    if (strcmp(a->out, "-") == 0)
        return die(2, "-o -: the output is an adapter folder, not a stream; give a path%s%s", "",
                   "");
    if (a->nrules != 1)
        return die(2, "give exactly one of --rank, --energy, --sv-ratio%s%s", "", "");
    if (a->exact && a->rule.max_rank)
        return die(2, "--max-rank does not apply to --rank 0 (no truncation)%s%s", "", "");
    if (a->copts.method == LORA_COMBINE_SUM && a->have_density)
        return die(2, "--density needs --method ties, dare_linear, dare_ties or magnitude_prune%s%s",
                   "", "");
    if (a->copts.method != LORA_COMBINE_SUM && !a->have_density)
        return die(2, "--method %s needs --density D%s", lora_combine_method_name(a->copts.method),
                   "");
    if (a->have_sign && !is_ties(a))
        return die(2, "--majority-sign applies to --method ties and dare_ties only%s%s", "", "");
    if (a->have_seed && !is_dare(a))
        return die(2, "--seed applies to --method dare_linear and dare_ties only%s%s", "", "");
    return TOOL_OPT_NEXT;
}

static int print_json(const args *a, const lora_reduce_report *rep)
{
    json_t *root = json_object(), *mods = json_array(), *inputs = json_array();
    for (size_t i = 0; i < a->n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "adapter", json_string(a->specs[i]));
        json_object_set_new(o, "weight", json_real(a->weights[i]));
        json_array_append_new(inputs, o);
    }
    double worst = 0;
    for (size_t i = 0; i < rep->n_modules; i++) {
        const lora_reduce_module *m = &rep->modules[i];
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
    json_object_set_new(root, "output", json_string(a->out));
    json_object_set_new(root, "inputs", inputs);
    const char *rn = a->exact                            ? "exact"
                     : a->rule.kind == LORA_RANK_FIXED  ? "rank"
                     : a->rule.kind == LORA_RANK_ENERGY ? "energy"
                                                        : "sv-ratio";
    json_object_set_new(root, "rule", json_string(rn));
    json_object_set_new(root, "method", json_string(lora_combine_method_name(a->copts.method)));
    if (a->copts.method != LORA_COMBINE_SUM)
        json_object_set_new(root, "density", json_real(a->copts.density));
    if (is_ties(a))
        json_object_set_new(root, "majority_sign",
                            json_string(a->copts.sign == LORA_SIGN_TOTAL ? "total" : "frequency"));
    if (is_dare(a))
        json_object_set_new(root, "seed", json_integer((json_int_t)a->copts.seed));
    json_object_set_new(root, "modules", mods);
    json_object_set_new(root, "old_params", json_integer((json_int_t)rep->old_params));
    json_object_set_new(root, "new_params", json_integer((json_int_t)rep->new_params));
    json_object_set_new(root, "max_rel_error", json_real(worst));
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    int rc = LORA_OK;
    if (!s || fputs(s, stdout) == EOF || fputc('\n', stdout) == EOF) {
        fprintf(stderr, PROG ": cannot write the report\n");
        rc = LORA_EIO;
    }
    free(s);
    return rc;
}

static void print_human(const args *a, const lora_reduce_report *rep)
{
    size_t w = 6;
    for (size_t i = 0; i < rep->n_modules; i++)
        if (strlen(rep->modules[i].name) > w)
            w = strlen(rep->modules[i].name);
    printf("%-*s  %8s  %8s  %10s\n", (int)w, "module", "old rank", "new rank", "rel error");
    double worst = 0;
    for (size_t i = 0; i < rep->n_modules; i++) {
        const lora_reduce_module *m = &rep->modules[i];
        printf("%-*s  %8llu  %8llu  %10.3e\n", (int)w, m->name, (unsigned long long)m->old_rank,
               (unsigned long long)m->new_rank, m->rel_error);
        if (m->rel_error > worst)
            worst = m->rel_error;
    }
    printf("%zu modules, parameters %llu -> %llu, largest relative error %.3e\n", rep->n_modules,
           (unsigned long long)rep->old_params, (unsigned long long)rep->new_params, worst);
    printf("wrote %s\n", a->out);
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, PROG, 0);
    lora_tool_sigbus(PROG);
    args a = {.t = {.prog = PROG, .usage = usage},
              .copts = {.method = LORA_COMBINE_SUM, .sign = LORA_SIGN_TOTAL}};
    int c = parse_args(&a, argc, argv);
    if (c != TOOL_OPT_NEXT)
        return c;
    if ((c = outpath_folder(a.out, PROG)) != 0)
        return c;
    lora_error err;
    lora_error_clear(&err);
    int rc = lora_init(&err);
    if (rc != LORA_OK)
        return die(rc, "%s%s", err.msg, "");
    lora_adapter *ads[MAX_INPUTS] = {0};
    lora_weighted in[MAX_INPUTS];
    lora_source_opts so = adapter_source(&a.t.ao, PROG, NULL);
    for (size_t i = 0; i < a.n && rc == LORA_OK; i++) {
        rc = lora_adapter_load(a.specs[i], &so, &ads[i], &err);
        in[i].ad = ads[i];
        in[i].weight = a.weights[i];
    }
    lora_reduce_report rep = {0};
    if (rc == LORA_OK)
        rc = lora_reduce_combine(in, a.n, a.exact ? NULL : &a.rule, &a.copts, a.out, a.force, &rep,
                                 &err);
    if (rc != LORA_OK)
        fprintf(stderr, PROG ": %s\n", err.msg);
    else if (a.t.json)
        rc = print_json(&a, &rep);
    else if (!a.t.quiet)
        print_human(&a, &rep);
    if (fflush(stdout) != 0 && rc == LORA_OK) {
        fprintf(stderr, PROG ": cannot write to stdout\n");
        rc = LORA_EIO;
    }
    lora_reduce_report_free(&rep);
    for (size_t i = 0; i < a.n; i++)
        lora_adapter_free(ads[i]);
    return rc;
}

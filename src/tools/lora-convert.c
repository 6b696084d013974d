/*
 * lora-convert - LoRA adapters between PEFT (adapter_config.json +
 * adapter_model.safetensors) and llama.cpp's GGUF LoRA, with the scale
 * PEFT applies kept exactly.  Argument parsing and printing only; the
 * conversions are lora_convert_to_gguf / lora_convert_to_peft.
 */
#include "lora.h"
#include "adapteropts.h"
#include "jsonerr.h"
#include "outpath.h"
#include "sigbus.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "lora-convert"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " PROG " ADAPTER --to gguf --base BASE -o OUT.gguf [options]\n"
            "       " PROG " ADAPTER.gguf --to peft -o DIR [options]\n"
            "Convert a LoRA adapter between PEFT and llama.cpp's GGUF LoRA format, keeping\n"
            "the scale PEFT applies (rsLoRA, rank_pattern, alpha_pattern) exact.\n"
            "ADAPTER is a PEFT folder, a .lora archive, task:TASK or reg:NAME@VERSION\n"
            "(to gguf), or a GGUF LoRA adapter file (to peft).\n"
            "\n"
            "  -t, --to=FORMAT          gguf or peft (default: peft for a GGUF input,\n"
            "                           gguf otherwise)\n"
            "  -b, --base=BASE          the base model folder (its config.json), that\n"
            "                           file, or a GGUF model; needed for --to gguf\n"
            "  -o, --output=OUT         the GGUF file or PEFT folder to write\n"
            "      --outtype=TYPE       f32, f16 or bf16 (default: the input's dtype)\n"
            "      --skip-unsupported   leave out (and list) what the target format cannot\n"
            "                           hold instead of refusing\n"
            ADAPTER_HELP
            "  -f, --force              replace OUT if it exists\n"
            "  -j, --json               the report as JSON on stdout\n"
            "  -q, --quiet              no report on stdout\n"
            "  -h, --help               show this help and exit\n"
            "  -V, --version            show the version and exit\n"
            "\n"
            "Exit status: 0 done, 2 usage error, 3 bad input, 4 I/O error.\n");
}

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, PROG ": %s%s\nTry '" PROG " --help' for more information.\n", msg,
            arg ? arg : "");
    return LORA_EUSAGE;
}

static const char *dt_lower(lora_dtype dt)
{
    return dt == LORA_DT_F16 ? "f16" : dt == LORA_DT_BF16 ? "bf16" : "f32";
}

static int print_json(const lora_convert_report *rep, const char *in, const char *out,
                      int to_gguf)
{
    json_t *root = json_object(), *mods = json_array(), *skipped = json_array();
    json_object_set_new(root, "input", json_string(in));
    json_object_set_new(root, "output", json_string(out));
    json_object_set_new(root, "to", json_string(to_gguf ? "gguf" : "peft"));
    json_object_set_new(root, "architecture", json_string(rep->architecture));
    json_object_set_new(root, "alpha", json_real(rep->alpha));
    json_object_set_new(root, "dtype", json_string(dt_lower(rep->dtype)));
    size_t folded = 0;
    for (size_t i = 0; i < rep->n_modules; i++) {
        const lora_convert_module *m = &rep->modules[i];
        json_t *o = json_object();
        json_object_set_new(o, "from", json_string(m->from));
        json_object_set_new(o, "to", json_string(m->to));
        json_object_set_new(o, "r", json_integer((json_int_t)m->r));
        json_object_set_new(o, "scale", json_real(m->scale));
        json_object_set_new(o, "fold", json_real(m->fold));
        json_object_set_new(o, "permuted", json_boolean(m->permuted));
        json_object_set_new(o, "transposed", json_boolean(m->transposed));
        json_array_append_new(mods, o);
        folded += m->fold != 1;
    }
    for (size_t i = 0; i < rep->n_skipped; i++)
        json_array_append_new(skipped, json_string(rep->skipped[i]));
    json_object_set_new(root, "modules", mods);
    json_object_set_new(root, "folded", json_integer((json_int_t)folded));
    json_object_set_new(root, "skipped", skipped);
    json_object_set_new(root, "bytes", json_integer((json_int_t)rep->bytes));
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    int ok = s && fputs(s, stdout) != EOF && fputc('\n', stdout) != EOF;
    free(s);
    return ok ? LORA_OK : LORA_EIO;
}

static void print_human(const lora_convert_report *rep, const char *out)
{
    size_t w = 4, folded = 0;
    for (size_t i = 0; i < rep->n_modules; i++)
        if (strlen(rep->modules[i].from) > w)
            w = strlen(rep->modules[i].from);
    printf("%-*s  %-28s  %4s  %12s  %s\n", (int)w, "from", "to", "r", "scale", "notes");
    for (size_t i = 0; i < rep->n_modules; i++) {
        const lora_convert_module *m = &rep->modules[i];
        char notes[96] = "";
        if (m->fold != 1)
            snprintf(notes, sizeof notes, "B x %.9g", m->fold);
        if (m->permuted)
            snprintf(notes + strlen(notes), sizeof notes - strlen(notes), "%srows permuted",
                     notes[0] ? ", " : "");
        if (m->transposed)
            snprintf(notes + strlen(notes), sizeof notes - strlen(notes), "%sA transposed",
                     notes[0] ? ", " : "");
        printf("%-*s  %-28s  %4llu  %12.9g  %s\n", (int)w, m->from, m->to,
               (unsigned long long)m->r, m->scale, notes);
        folded += m->fold != 1;
    }
    for (size_t i = 0; i < rep->n_skipped; i++)
        printf("skipped: %s\n", rep->skipped[i]);
    printf("%zu modules, architecture %s, alpha %.9g, %s, %zu with the scale folded into B, "
           "%zu skipped\n", rep->n_modules, rep->architecture, rep->alpha, dt_lower(rep->dtype),
           folded, rep->n_skipped);
    printf("wrote %s (%llu bytes)\n", out, (unsigned long long)rep->bytes);
}

enum { OPT_OUTTYPE = 256, OPT_SKIP };

/* The GGUF file's name in an output folder: the adapter's, without a
 * trailing slash or .lora. */
static void gguf_name_of(const char *in, char *name, size_t n)
{
    size_t l = strlen(in);
    while (l > 1 && in[l - 1] == '/')
        l--;
    size_t b = l;
    while (b > 0 && in[b - 1] != '/')
        b--;
    size_t stem = l - b;
    if (stem > 5 && !strncmp(in + l - 5, ".lora", 5))
        stem -= 5;
    snprintf(name, n, "%.*s.gguf", (int)(stem > 200 ? 200 : stem), in + b);
}

/* One option: TOOL_OPT_NEXT, or the exit status. */
static int parse_option(int c, const char *arg, char **argv, tool_opts *t, lora_convert_opts *co,
                        const char **to, const char **out)
{
    switch (c) {
    case 't':
        if (strcmp(arg, "gguf") && strcmp(arg, "peft"))
            return usage_error("--to must be gguf or peft, not ", arg);
        *to = arg;
        return TOOL_OPT_NEXT;
    case 'b':
        co->base = arg;
        return TOOL_OPT_NEXT;
    case 'o':
        *out = arg;
        return TOOL_OPT_NEXT;
    case OPT_OUTTYPE:
        if (!strcmp(arg, "f32"))
            co->outtype = LORA_DT_F32;
        else if (!strcmp(arg, "f16"))
            co->outtype = LORA_DT_F16;
        else if (!strcmp(arg, "bf16"))
            co->outtype = LORA_DT_BF16;
        else
            return usage_error("--outtype must be f32, f16 or bf16, not ", arg);
        return TOOL_OPT_NEXT;
    case OPT_SKIP:
        co->skip_unsupported = 1;
        return TOOL_OPT_NEXT;
    case 'f':
        co->overwrite = 1;
        return TOOL_OPT_NEXT;
    default:
        return tool_opt(t, c, arg, argv);
    }
}

/* Convert and report: the exit status. */
static int run(const tool_opts *t, const lora_convert_opts *co, const char *in, const char *out,
               int to_gguf, lora_adapter **ad, lora_convert_report *rep)
{
    lora_error err;
    lora_error_clear(&err);
    int rc = lora_init(&err);
    if (!rc && to_gguf) {
        lora_source_opts so = adapter_source(&t->ao, PROG, NULL);
        rc = lora_adapter_load(in, &so, ad, &err);
        if (!rc)
            rc = lora_convert_to_gguf(*ad, out, co, rep, &err);
    } else if (!rc) {
        rc = lora_convert_to_peft(in, out, co, rep, &err);
    }
    if (rc) {
        fprintf(stderr, PROG ": %s\n", err.msg[0] ? err.msg : "failed");
    } else if (t->json) {
        rc = print_json(rep, in, out, to_gguf);
    } else {
        if (!t->quiet)
            print_human(rep, out);
        else
            for (size_t i = 0; i < rep->n_skipped; i++)
                fprintf(stderr, PROG ": skipped %s\n", rep->skipped[i]);
    }
    return rc;
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, PROG, 'j');
    lora_tool_sigbus(PROG);
    static const struct option opts[] = {
        {"to", required_argument, NULL, 't'},         {"base", required_argument, NULL, 'b'},
        {"output", required_argument, NULL, 'o'},     {"outtype", required_argument, NULL, OPT_OUTTYPE},
        {"skip-unsupported", no_argument, NULL, OPT_SKIP},
        ADAPTER_LONGOPTS,
        {"force", no_argument, NULL, 'f'},            {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},            {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},          {NULL, 0, NULL, 0}};
    const char *to = NULL, *out = NULL;
    tool_opts t = {.prog = PROG, .usage = usage, .json_short = 'j'};
    lora_convert_opts co = {0};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "t:b:o:p:fjqhV", opts, NULL)) != -1)
        if ((c = parse_option(c, optarg, argv, &t, &co, &to, &out)) != TOOL_OPT_NEXT)
            return c;
    if (optind != argc - 1)
        return usage_error(optind >= argc ? "missing ADAPTER" : "only one ADAPTER, please", NULL);
    const char *in = argv[optind];
    if (!out)
        return usage_error("no output given (-o OUT)", NULL);
    if (strcmp(out, "-") == 0)
        return usage_error("-o -: the output is a file or folder, not a stream; give a path",
                           NULL);
    int input_gguf = lora_gguf_is_file(in);
    int to_gguf = to ? strcmp(to, "gguf") == 0 : !input_gguf;
    if (to_gguf && input_gguf)
        return usage_error(in, ": already a GGUF file (--to peft converts it back)");
    if (!to_gguf && !input_gguf)
        return usage_error(in, ": --to peft reads a GGUF LoRA adapter file");
    if (to_gguf && !co.base)
        return usage_error("--to gguf needs the base model's config.json (--base BASE)", NULL);

    /* -o DIR/ or an existing folder: the GGUF file goes inside, named
     * after the adapter; checked before any work */
    char *out_owned = NULL, gguf_name[256];
    gguf_name_of(in, gguf_name, sizeof gguf_name);
    int orc = to_gguf ? outpath_file(&out, &out_owned, 0, gguf_name, PROG)
                      : outpath_folder(out, PROG);
    if (orc)
        return orc;
    lora_convert_report rep = {0};
    lora_adapter *ad = NULL;
    int rc = run(&t, &co, in, out, to_gguf, &ad, &rep);
    if (fflush(stdout) != 0 && rc == LORA_OK) {
        fprintf(stderr, PROG ": cannot write to stdout\n");
        rc = LORA_EIO;
    }
    lora_convert_report_free(&rep);
    lora_adapter_free(ad);
    free(out_owned);
    return rc;
}

/*
 * lora-eval - forward evaluation of a base model with or without a LoRA
 * adapter on a JSONL task data set: accuracy, NLL per target token,
 * tokens per second; merged-against-unmerged agreement.  Arguments and
 * printing only: the work is in liblora (model.c, dataset.c, eval.c).
 */
#include "config.h"
#include "lora.h"
#include "progress.h"
#include "adapteropts.h"
#include "jsonerr.h"
#include "sigbus.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "lora-eval";

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: %s --model DIR [-a ADAPTER] --data FILE [options]\n"
            "       %s --model DIR [-a ADAPTER] --text FILE [--context N] [--stride S]\n"
            "       %s --check-recovery --model DIR -a ADAPTER [--json]\n"
            "       %s --tokenize|--detokenize (--tokenizer PATH | --model DIR) [--data FILE]\n"
            "\n"
            "Evaluate a Hugging Face causal LM (GPT-2, LLaMA, Mistral, Qwen2), with or\n"
            "without a LoRA adapter, on a JSONL data set of text or token ids, or its\n"
            "perplexity over a plain text file.\n"
            "\n"
            "  -m, --model DIR        base model folder (config.json + safetensors)\n"
            "  -a, --adapter SPEC     PEFT folder, .lora archive, task:TASK or reg:NAME@VERSION\n"
            "  -d, --data FILE        JSONL data set (- for stdin)\n"
            "      --mode MODE        unmerged (default), merged, or both (compare them)\n"
            "      --min-accuracy X   exit 1 when the share of correct items is below X (0..1)\n"
            "      --check-recovery   merge in memory, unmerge with the receipt corrections,\n"
            "                         compare with the base bit for bit (exit 1 unless exact)\n"
            "      --limit N          evaluate the first N items only\n"
            "      --predictions FILE one JSON line per item: prediction, log-probs, correct,\n"
            "                         NLL (- for stdout)\n"
            "      --max-new-tokens N generate up to the target's length + N tokens (default 32)\n"
            "      --text FILE        perplexity of a plain text file (- for stdin), base and\n"
            "                         adapted\n"
            "      --context N        --text window in tokens (default: the model's positions)\n"
            "      --stride S         --text window step (default: half the context)\n"
            "      --tokenize         JSONL \"text\" lines to \"ids\" (other keys echoed)\n"
            "      --detokenize       JSONL \"ids\" lines to \"text\" (other keys echoed)\n"
            "      --tokenizer PATH   tokenizer.json or its folder, for text (default: the --model\n"
            "                         folder)\n"
            "      --no-special       no BOS/EOS when tokenizing; special tokens dropped when\n"
            "                         detokenizing\n"
            "  -p, --pubkey FILE      minisign public key for .lora archives (repeatable)\n"
            "      --no-verify        open .lora archives without checking signatures\n"
            "      --any-base         evaluate on a base other than the one the adapter's\n"
            "                         archive records (warns; refused otherwise)\n"
            "      --record           write the metrics to the registry's evals table\n"
            "                         (the adapter must be registered)\n"
            "      --registry PATH    registry database (default: $LORA_REGISTRY, else\n"
            "                         $XDG_DATA_HOME/lora/registry.db, else\n"
            "                         ~/.local/share/lora/registry.db)\n"
            "  -j, --threads N        OpenBLAS threads (default 1)\n"
            "      --json             machine-readable result on stdout\n"
            "  -q, --quiet            no progress messages\n"
            "  -h, --help             this help\n"
            "  -V, --version          version\n"
            "\n"
            "Exit status: 0 ok, 1 share of correct items below --min-accuracy or merged and\n"
            "unmerged disagree or recovery is not exact, 2 usage error, 3 bad input, 4 I/O error.\n",
            prog, prog, prog, prog);
}

static int die(int code, const lora_error *err)
{
    fprintf(stderr, "%s: %s\n", prog, err->msg);
    return code;
}

static int usage_err(const char *msg)
{
    fprintf(stderr, "%s: %s\nTry '%s --help'.\n", prog, msg, prog);
    return LORA_EUSAGE;
}

/* Progress on a terminal only (progress.h). */
static void progress(void *arg, size_t done, size_t total)
{
    tool_progress *p = arg;
    if (!tool_progress_due(p, done >= total))
        return;
    fprintf(stderr, "\r%s: %zu/%zu items", prog, done, total);
    if (done >= total)
        tool_progress_end(p);
}

static const char *mode_name(int m)
{
    return m == LORA_MODE_MERGED ? "merged" : m == LORA_MODE_UNMERGED ? "unmerged" : "base";
}

/* --check-recovery: the base's checkpoint only (no F32 model needed). */
static int check_recovery(const char *model_dir, const char *adapter, const lora_source_opts *so,
                          int threads, int json)
{
    lora_error err;
    lora_error_clear(&err);
    if (lora_init(&err) != LORA_OK)
        return die(err.code, &err);
    lora_ckpt *ck = NULL;
    lora_adapter *ad = NULL;
    lora_recovery *rec = NULL;
    size_t n = 0;
    int rc = lora_ckpt_open(model_dir, &ck, &err);
    if (rc == LORA_OK)
        rc = lora_adapter_load(adapter, so, &ad, &err);
    if (rc == LORA_OK)
        rc = lora_eval_check_recovery(ck, ad, threads, &rec, &n, &err);
    if (rc != LORA_OK) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        goto out;
    }
    uint64_t exact = 0, total = 0, fixes = 0;
    for (size_t i = 0; i < n; i++) {
        exact += rec[i].exact;
        total += rec[i].total;
        fixes += rec[i].fixes;
    }
    if (json) {
        json_t *o = json_object(), *arr = json_array();
        json_object_set_new(o, "model", json_string(model_dir));
        json_object_set_new(o, "adapter", json_string(adapter));
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_object();
            json_object_set_new(t, "tensor", json_string(rec[i].tensor));
            json_object_set_new(t, "dtype", json_string(lora_dtype_name(rec[i].dtype)));
            json_object_set_new(t, "exact", json_integer((json_int_t)rec[i].exact));
            json_object_set_new(t, "total", json_integer((json_int_t)rec[i].total));
            json_object_set_new(t, "fixes", json_integer((json_int_t)rec[i].fixes));
            json_array_append_new(arr, t);
        }
        json_object_set_new(o, "tensors", arr);
        json_object_set_new(o, "exact", json_integer((json_int_t)exact));
        json_object_set_new(o, "total", json_integer((json_int_t)total));
        json_object_set_new(o, "fixes", json_integer((json_int_t)fixes));
        json_object_set_new(o, "all_exact", json_boolean(exact == total));
        char *s = json_dumps(o, JSON_INDENT(2));
        json_decref(o);
        if (s)
            puts(s);
        free(s);
    } else {
        for (size_t i = 0; i < n; i++)
            printf("%-48s %-4s %llu/%llu exact, %llu corrections\n", rec[i].tensor,
                   lora_dtype_name(rec[i].dtype), (unsigned long long)rec[i].exact,
                   (unsigned long long)rec[i].total, (unsigned long long)rec[i].fixes);
        printf("total %llu/%llu elements exact over %zu tensors%s\n", (unsigned long long)exact,
               (unsigned long long)total, n, exact == total ? "" : ": RECOVERY NOT EXACT");
    }
    if (exact != total) {
        fprintf(stderr, "%s: %llu of %llu elements did not come back bit for bit\n", prog,
                (unsigned long long)(total - exact), (unsigned long long)total);
        rc = LORA_ECHECK;
    }
out:
    lora_recovery_free(rec, n);
    lora_adapter_free(ad);
    lora_ckpt_close(ck);
    return rc;
}

/* lora_tokenizer as the library's text codec. */
static int codec_encode(void *arg, const char *text, size_t len, int add_special, int32_t **ids,
                        size_t *n, lora_error *err)
{
    return lora_tokenizer_encode(arg, text, len, add_special, ids, n, err);
}

static int codec_decode(void *arg, const int32_t *ids, size_t n, int skip_special, char **text,
                        lora_error *err)
{
    return lora_tokenizer_decode(arg, ids, n, skip_special, text, err);
}

static lora_text_codec codec_of(lora_tokenizer *tok)
{
    lora_text_codec tc = {.arg = tok, .encode = codec_encode, .decode = codec_decode,
                          .bos = lora_tokenizer_bos(tok), .eos = lora_tokenizer_eos(tok)};
    return tc;
}

/* The model's own tokenizer (PATH, else the model folder), with a
 * message that says where it looked. */
static int open_tokenizer(const char *path, const char *model_dir, lora_tokenizer **tok,
                          lora_error *err)
{
    int rc = lora_tokenizer_open(path ? path : model_dir, tok, err);
    if (rc != LORA_OK && !path) {
        char m[sizeof err->msg];
        snprintf(m, sizeof m, "text needs the model's tokenizer (tokenizer.json in %s, or "
                              "--tokenizer PATH): %s", model_dir, err->msg);
        memcpy(err->msg, m, sizeof m);
    }
    return rc;
}

/* A tokenizer with more ids than the model has rows of logits is not
 * this model's (a Llama 3 tokenizer on a GPT-2, say): say so once
 * rather than "id outside the vocabulary" on some line. */
static int tokenizer_fits(const lora_tokenizer *tok, const lora_model_config *cfg, lora_error *err)
{
    size_t tv = lora_tokenizer_vocab_size(tok);
    if (tv <= cfg->vocab)
        return LORA_OK;
    snprintf(err->msg, sizeof err->msg,
             "the tokenizer has %zu ids, the model only %llu: it is not this model's tokenizer "
             "(--tokenizer PATH names another)", tv, (unsigned long long)cfg->vocab);
    return err->code = LORA_EINPUT;
}

/* Read all of a text file ("-": stdin) for --text. */
static int slurp(const char *path, char **buf, size_t *len, lora_error *err)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        int e = errno;
        snprintf(err->msg, sizeof err->msg, "%s: %s", path, strerror(e));
        return err->code = e == ENOENT || e == EACCES || e == EISDIR ? LORA_EINPUT : LORA_EIO;
    }
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    while (p) {
        if (n == cap) {
            char *q = cap < (1u << 30) ? realloc(p, cap * 2) : NULL;
            if (!q) {
                free(p);
                p = NULL;
                break;
            }
            p = q;
            cap *= 2;
        }
        size_t k = fread(p + n, 1, cap - n, f);
        n += k;
        if (k == 0)
            break;
    }
    int bad = ferror(f);
    if (f != stdin)
        fclose(f);
    if (!p || bad) {
        free(p);
        snprintf(err->msg, sizeof err->msg, "%s: %s", path,
                 bad ? "read error" : "more than 1 GiB or out of memory");
        return err->code = bad ? LORA_EIO : LORA_EINPUT;
    }
    *buf = p;
    *len = n;
    return LORA_OK;
}

/* --text: perplexity of a plain text file, base and (with -a) adapted. */
static int text_main(const char *model_dir, const char *tok_path, const char *adapter,
                     const lora_source_opts *so, int any_base, const char *path, size_t context,
                     size_t stride, int json)
{
    lora_error err;
    lora_error_clear(&err);
    if (lora_init(&err) != LORA_OK)
        return die(err.code, &err);
    lora_model *m = NULL;
    lora_adapter *ad = NULL;
    lora_tokenizer *tok = NULL;
    char *buf = NULL;
    int32_t *ids = NULL;
    size_t len = 0, n = 0;
    lora_ppl_result pb, pa;
    int rc = lora_model_open(model_dir, &m, &err);
    if (rc == LORA_OK)
        rc = open_tokenizer(tok_path, model_dir, &tok, &err);
    if (rc == LORA_OK)
        rc = tokenizer_fits(tok, lora_model_cfg(m), &err);
    if (rc == LORA_OK)
        rc = slurp(path, &buf, &len, &err);
    if (rc == LORA_OK && adapter && (rc = lora_adapter_load(adapter, so, &ad, &err)) == LORA_OK &&
        (rc = lora_model_attach(m, ad, 0, &err)) == LORA_OK)
        rc = lora_base_check(ad, lora_model_ckpt(m), any_base, prog, stderr, &err);
    /* the text as one sequence; a BOS the tokenizer adds starts it */
    if (rc == LORA_OK)
        rc = lora_tokenizer_encode(tok, buf, len, 1, &ids, &n, &err);
    const lora_model_config *cfg = m ? lora_model_cfg(m) : NULL;
    if (rc == LORA_OK) {
        if (!context)
            context = (size_t)cfg->max_positions;
        if (!stride)
            stride = context > 1 ? context / 2 : 1;
        rc = lora_eval_perplexity(m, LORA_MODE_BASE, ids, n, context, stride, &pb, &err);
    }
    if (rc == LORA_OK && ad)
        rc = lora_eval_perplexity(m, LORA_MODE_UNMERGED, ids, n, context, stride, &pa, &err);
    if (rc != LORA_OK) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        goto out;
    }
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "model", json_string(model_dir));
        json_object_set_new(o, "adapter", adapter ? json_string(adapter) : json_null());
        json_object_set_new(o, "text", json_string(path));
        json_object_set_new(o, "tokens", json_integer((json_int_t)n));
        json_object_set_new(o, "scored_tokens", json_integer((json_int_t)pb.tokens));
        json_object_set_new(o, "context", json_integer((json_int_t)context));
        json_object_set_new(o, "stride", json_integer((json_int_t)stride));
        json_object_set_new(o, "windows", json_integer((json_int_t)pb.windows));
        json_t *b = json_object();
        json_object_set_new(b, "nll", json_real(pb.mean_nll));
        json_object_set_new(b, "perplexity", json_real(pb.perplexity));
        json_object_set_new(o, "base", b);
        if (ad) {
            json_t *a = json_object();
            json_object_set_new(a, "nll", json_real(pa.mean_nll));
            json_object_set_new(a, "perplexity", json_real(pa.perplexity));
            json_object_set_new(o, "adapted", a);
        } else {
            json_object_set_new(o, "adapted", json_null());
        }
        char *js = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
        json_decref(o);
        if (js)
            puts(js);
        free(js);
    } else {
        printf("model       %s (%s)\n", model_dir, cfg->architecture);
        printf("text        %s: %zu tokens, %llu scored in %zu windows of %zu (stride %zu)\n",
               path, n, (unsigned long long)pb.tokens, pb.windows, context, stride);
        printf("base        NLL %.6f per token, perplexity %.4f\n", pb.mean_nll, pb.perplexity);
        if (ad)
            printf("adapted     NLL %.6f per token, perplexity %.4f (%s)\n", pa.mean_nll,
                   pa.perplexity, adapter);
    }
out:
    free(ids);
    free(buf);
    lora_tokenizer_free(tok);
    lora_adapter_free(ad);
    lora_model_free(m);
    return rc;
}

/* A metric for --json: null when no item has it (never 0 in its place). */
static json_t *metric(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

/* A metric for people: "-" when no item has it. */
static void print_metric(const char *name, double x, const char *extra)
{
    if (isfinite(x))
        printf("%-11s %.4f%s\n", name, x, extra ? extra : "");
    else
        printf("%-11s -\n", name);
}

static void json_metrics(json_t *o, const lora_eval_result *r)
{
    json_object_set_new(o, "accuracy", metric(r->choice_accuracy));
    json_object_set_new(o, "exact_match", metric(r->exact_match));
    json_object_set_new(o, "bleu", metric(r->bleu));
    json_object_set_new(o, "rouge1", metric(r->rouge1));
    json_object_set_new(o, "rouge2", metric(r->rouge2));
    json_object_set_new(o, "rougeL", metric(r->rougeL));
    json_object_set_new(o, "nll", metric(r->mean_nll));
    json_object_set_new(o, "perplexity", metric(r->perplexity));
}

static void text_metrics(const lora_eval_result *r)
{
    char b[64];
    snprintf(b, sizeof b, " (%zu/%zu)", r->choice_correct, r->choice_items);
    print_metric("accuracy", r->choice_accuracy, b);
    snprintf(b, sizeof b, " (%zu/%zu)", r->gen_correct, r->gen_items);
    print_metric("exact match", r->exact_match, b);
    print_metric("BLEU", r->bleu, NULL);
    print_metric("ROUGE-1", r->rouge1, NULL);
    print_metric("ROUGE-2", r->rouge2, NULL);
    print_metric("ROUGE-L", r->rougeL, NULL);
    if (r->nll_tokens)
        printf("mean NLL    %.6f per target token (%llu tokens), perplexity %.4f\n", r->mean_nll,
               (unsigned long long)r->nll_tokens, r->perplexity);
}

/* --tokenize / --detokenize: the work is lora_tokenize_jsonl. */
static int tokenize_main(const char *tok_path, const char *data, int detok, int special)
{
    lora_error err;
    lora_error_clear(&err);
    lora_tokenizer *tok = NULL;
    int rc = lora_tokenizer_open(tok_path, &tok, &err);
    if (rc != LORA_OK)
        return die(rc, &err);
    FILE *in = stdin;
    const char *name = "(stdin)";
    if (data && strcmp(data, "-") != 0) {
        if (!(in = fopen(data, "r"))) {
            fprintf(stderr, "%s: %s: %s\n", prog, data, strerror(errno));
            lora_tokenizer_free(tok);
            return errno == ENOENT ? LORA_EINPUT : LORA_EIO;
        }
        name = data;
    }
    rc = lora_tokenize_jsonl(tok, in, name, stdout, detok, special, NULL, &err);
    if (in != stdin)
        fclose(in);
    lora_tokenizer_free(tok);
    return rc == LORA_OK ? LORA_OK : die(rc, &err);
}

enum { OPT_MODE = 256, OPT_MIN, OPT_LIMIT, OPT_JSON, OPT_RECOVERY, OPT_RECORD,
       OPT_PRED, OPT_TEXT, OPT_CONTEXT, OPT_STRIDE, OPT_MAXNEW, OPT_TOKENIZER,
       OPT_TOKENIZE, OPT_DETOKENIZE, OPT_NOSPECIAL, OPT_ANYBASE };

/* The command line, parsed. */
typedef struct eval_args {
    tool_opts t;
    const char *model_dir, *adapter, *data, *mode_s, *tok_path, *pred_path, *text_path;
    int record, tokenize, detokenize, no_special, recovery, any_base;
    double min_acc;
    size_t limit, context, stride, maxnew;
    int mode, cmp; /* from --mode (cmp: the mode compared against, -1: none) */
} eval_args;

/* One evaluation: what it opened and what it found. */
typedef struct eval_run {
    lora_model *m;
    lora_adapter *ad;
    lora_dataset *ds;
    lora_registry *reg;
    lora_reg_adapter *ra;
    lora_eval_result r;
    lora_tokenizer *tok;
    lora_text_codec codec;
    char ds_hex[2 * LORA_HASH_BYTES + 1], ra_id[512];
    size_t recorded;
    int below, disagree;
} eval_run;

/* --context, --stride, --max-new-tokens */
static int parse_count(eval_args *a, int c, const char *arg)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || *end || end == arg || arg[0] == '-' || v > 1000000 ||
        (v == 0 && c != OPT_MAXNEW))
        return usage_err(c == OPT_MAXNEW ? "--max-new-tokens needs an integer from 0 to 1000000"
                                         : "--context and --stride need an integer from 1 to 1000000");
    if (c == OPT_CONTEXT)
        a->context = (size_t)v;
    else if (c == OPT_STRIDE)
        a->stride = (size_t)v;
    else
        a->maxnew = (size_t)v;
    return TOOL_OPT_NEXT;
}

/* One option: TOOL_OPT_NEXT, or the exit status. */
static int parse_option(eval_args *a, int c, const char *arg, char **argv)
{
    char *end;
    switch (c) {
    case 'm': a->model_dir = arg; break;
    case 'a': a->adapter = arg; break;
    case 'd': a->data = arg; break;
    case OPT_MODE: a->mode_s = arg; break;
    case OPT_MIN:
        errno = 0;
        a->min_acc = strtod(arg, &end);
        if (errno || *end || end == arg || !(a->min_acc >= 0 && a->min_acc <= 1))
            return usage_err("--min-accuracy needs a number between 0 and 1");
        break;
    case OPT_LIMIT: {
        errno = 0;
        unsigned long long v = strtoull(arg, &end, 10);
        if (errno || *end || end == arg || v == 0 || arg[0] == '-')
            return usage_err("--limit needs a positive integer");
        a->limit = (size_t)v;
        break;
    }
    case OPT_ANYBASE: a->any_base = 1; break;
    case OPT_RECOVERY: a->recovery = 1; break;
    case OPT_RECORD: a->record = 1; break;
    case OPT_PRED: a->pred_path = arg; break;
    case OPT_TEXT: a->text_path = arg; break;
    case OPT_CONTEXT:
    case OPT_STRIDE:
    case OPT_MAXNEW: return parse_count(a, c, arg);
    case OPT_TOKENIZE: a->tokenize = 1; break;
    case OPT_DETOKENIZE: a->detokenize = 1; break;
    case OPT_TOKENIZER: a->tok_path = arg; break;
    case OPT_NOSPECIAL: a->no_special = 1; break;
    default: return tool_opt(&a->t, c, arg, argv);
    }
    return TOOL_OPT_NEXT;
}

static int parse_args(eval_args *a, int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"adapter", required_argument, NULL, 'a'},
        {"data", required_argument, NULL, 'd'},
        {"mode", required_argument, NULL, OPT_MODE},
        {"min-accuracy", required_argument, NULL, OPT_MIN},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"any-base", no_argument, NULL, OPT_ANYBASE},
        {"check-recovery", no_argument, NULL, OPT_RECOVERY},
        {"record", no_argument, NULL, OPT_RECORD},
        ADAPTER_LONGOPTS, /* --pubkey, --no-verify, --registry */
        {"predictions", required_argument, NULL, OPT_PRED},
        {"text", required_argument, NULL, OPT_TEXT},
        {"context", required_argument, NULL, OPT_CONTEXT},
        {"stride", required_argument, NULL, OPT_STRIDE},
        {"max-new-tokens", required_argument, NULL, OPT_MAXNEW},
        {"tokenize", no_argument, NULL, OPT_TOKENIZE},
        {"detokenize", no_argument, NULL, OPT_DETOKENIZE},
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
        {"no-special", no_argument, NULL, OPT_NOSPECIAL},
        {"threads", required_argument, NULL, 'j'},
        TOOL_LONGOPTS,
        {NULL, 0, NULL, 0}};
    int c, r;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:a:d:p:j:qhV", opts, NULL)) != -1)
        if ((r = parse_option(a, c, optarg, argv)) != TOOL_OPT_NEXT)
            return r;
    if (optind < argc)
        return usage_err("unexpected argument (every input is named by an option)");
    return TOOL_OPT_NEXT;
}

/* --tokenize / --detokenize, --check-recovery and --text: the exit
 * status of the one that applies; TOOL_OPT_NEXT when none does. */
static int other_modes(const eval_args *a)
{
    if (a->tokenize || a->detokenize) {
        if (a->tokenize && a->detokenize)
            return usage_err("--tokenize and --detokenize exclude each other");
        if (!a->tok_path && !a->model_dir)
            return usage_err("--tokenize and --detokenize need --tokenizer PATH or --model DIR");
        if (a->adapter || a->mode_s || a->min_acc >= 0 || a->limit || a->record || a->recovery ||
            a->t.json || a->pred_path || a->text_path || a->context || a->stride)
            return usage_err("--tokenize and --detokenize take only --tokenizer, --model, --data and --no-special");
        return tokenize_main(a->tok_path ? a->tok_path : a->model_dir, a->data, a->detokenize,
                             !a->no_special);
    }
    if (a->no_special)
        return usage_err("--no-special goes with --tokenize or --detokenize");
    if (!a->model_dir)
        return usage_err("--model DIR is required");
    lora_source_opts so = adapter_source(&a->t.ao, "lora-eval", a->model_dir);
    if (a->recovery) {
        if (!a->adapter)
            return usage_err("--check-recovery needs an adapter (-a)");
        if (a->data || a->mode_s || a->min_acc >= 0 || a->limit || a->record || a->pred_path ||
            a->text_path)
            return usage_err("--check-recovery takes only --model, -a, --json, -j and key options");
        return check_recovery(a->model_dir, a->adapter, &so, a->t.threads, a->t.json);
    }
    if (a->text_path) {
        if (a->data || a->mode_s || a->min_acc >= 0 || a->limit || a->record || a->pred_path)
            return usage_err("--text takes only --model, -a, --context, --stride, --json, -j and key options");
        if (a->context && a->stride > a->context)
            return usage_err("--stride must not exceed --context");
        return text_main(a->model_dir, a->tok_path, a->adapter, &so, a->any_base, a->text_path,
                         a->context, a->stride, a->t.json);
    }
    return TOOL_OPT_NEXT;
}

/* What a data-set evaluation needs besides --model: 0 or the status. */
static int check_eval_args(eval_args *a)
{
    if (a->context || a->stride)
        return usage_err("--context and --stride go with --text");
    if (a->pred_path && a->t.json && strcmp(a->pred_path, "-") == 0)
        return usage_err("--predictions - and --json would both write standard output");
    if (!a->data)
        return usage_err("--data FILE (or --text FILE) is required");
    if (a->record && !a->adapter)
        return usage_err("--record needs an adapter (-a): results are recorded per adapter");
    if (a->record && strcmp(a->data, "-") == 0)
        return usage_err("--record needs a data file, not stdin (its hash is recorded)");
    a->mode = a->adapter ? LORA_MODE_UNMERGED : LORA_MODE_BASE;
    a->cmp = -1;
    if (a->mode_s) {
        if (!a->adapter)
            return usage_err("--mode needs an adapter (-a)");
        if (strcmp(a->mode_s, "unmerged") == 0)
            a->mode = LORA_MODE_UNMERGED;
        else if (strcmp(a->mode_s, "merged") == 0)
            a->mode = LORA_MODE_MERGED;
        else if (strcmp(a->mode_s, "both") == 0)
            a->mode = LORA_MODE_MERGED, a->cmp = LORA_MODE_UNMERGED;
        else
            return usage_err("--mode is merged, unmerged or both");
    }
    return 0;
}

/* --record: the adapter's row found before the (long) evaluation, so a
 * run that cannot be recorded fails at once.  Messages printed. */
static int open_record(const eval_args *a, eval_run *R, lora_error *err)
{
    int rc = lora_registry_open(a->t.ao.registry, 0, &R->reg, err);
    if (!rc)
        rc = lora_eval_registered(R->reg, a->adapter, &R->ra, err);
    if (rc) {
        fprintf(stderr, "%s: --record: %s\n", prog, err->msg);
        return rc;
    }
    snprintf(R->ra_id, sizeof R->ra_id, "%s@%s", R->ra->name, R->ra->version);
    return LORA_OK;
}

/* The data set, tokenized when it holds text.  Messages printed. */
static int open_data(const eval_args *a, eval_run *R, lora_error *err)
{
    const lora_model_config *cfg = lora_model_cfg(R->m);
    int rc = lora_dataset_load(a->data, cfg->vocab, &R->ds, err);
    if (rc)
        return die(rc, err);
    /* the hash of the bytes read: a pipe cannot be read twice */
    lora_hex(R->ds->hash, sizeof R->ds->hash, R->ds_hex);
    if (!R->ds->text_items)
        return LORA_OK;
    if ((rc = open_tokenizer(a->tok_path, a->model_dir, &R->tok, err)) != LORA_OK) {
        fprintf(stderr, "%s: %s:%zu: %s\n", prog, a->data, R->ds->first_text_line, err->msg);
        return rc;
    }
    if ((rc = tokenizer_fits(R->tok, cfg, err)) != LORA_OK)
        return die(rc, err);
    R->codec = codec_of(R->tok);
    if ((rc = lora_dataset_tokenize(R->ds, &R->codec, err)) != LORA_OK)
        fprintf(stderr, "%s: %s: %s\n", prog, strcmp(a->data, "-") == 0 ? "stdin" : a->data,
                err->msg);
    return rc;
}

/* The adapter, attached merged or at run time.  Messages printed. */
static int open_adapter(const eval_args *a, eval_run *R, lora_error *err)
{
    lora_source_opts so = adapter_source(&a->t.ao, "lora-eval", a->model_dir);
    /* task: and reg: resolve again at load (a version may be added
     * meanwhile); load the row --record found instead, so that what is
     * recorded is what was evaluated */
    char spec[sizeof R->ra_id + 4];
    const char *load = a->adapter;
    if (R->ra && (strncmp(a->adapter, "task:", 5) == 0 || strncmp(a->adapter, "reg:", 4) == 0)) {
        snprintf(spec, sizeof spec, "reg:%s", R->ra_id);
        load = spec;
    }
    int rc = lora_adapter_load(load, &so, &R->ad, err);
    if (!rc)
        rc = lora_model_attach(R->m, R->ad, a->mode == LORA_MODE_MERGED, err);
    if (!rc)
        rc = lora_base_check(R->ad, lora_model_ckpt(R->m), a->any_base, prog, stderr, err);
    if (rc)
        return die(rc, err);
    for (size_t i = 0; i < R->ad->n_modules; i++)
        if (R->ad->modules[i].tied_head && !a->t.quiet)
            fprintf(stderr, "lora-eval: note: module %s: the model's head is tied to its input "
                    "embeddings; the update is applied to the head alone, as PEFT does\n",
                    R->ad->modules[i].name);
    return LORA_OK;
}

/* Evaluate, then write the predictions and record (in that order: a run
 * whose predictions cannot be written records nothing).  Messages printed. */
static int evaluate(const eval_args *a, eval_run *R, lora_error *err)
{
    tool_progress pg;
    tool_progress_init(&pg, a->t.quiet);
    lora_eval_opts eo = {.mode = a->mode, .compare_mode = a->cmp, .limit = a->limit,
                         .max_new_tokens = a->maxnew, .keep_predictions = a->pred_path != NULL,
                         .codec = R->tok ? &R->codec : NULL};
    if (pg.on) {
        eo.progress = progress;
        eo.progress_arg = &pg;
    }
    int rc = lora_eval_run(R->m, R->ds, &eo, &R->r, err);
    tool_progress_end(&pg);
    if (rc != LORA_OK)
        return die(rc, err);
    if (a->pred_path &&
        (rc = lora_eval_write_predictions(a->pred_path, R->ds, &R->r, err)) != LORA_OK) {
        fprintf(stderr, "%s: --predictions %s: %s\n", prog, a->pred_path, err->msg);
        return rc;
    }
    R->below = a->min_acc >= 0 && R->r.accuracy < a->min_acc;
    R->disagree = a->cmp >= 0 && R->r.disagreements > 0;
    /* recorded even when below --min-accuracy: CI must see the drop */
    if (a->record) {
        char name[4096];
        snprintf(name, sizeof name, "%s", a->data);
        char base[4096];
        snprintf(base, sizeof base, "%s", a->model_dir);
        if ((rc = lora_eval_record(R->reg, R->ra, R->m, R->ad, R->ds_hex, basename(name),
                                   mode_name(a->mode), basename(base), &R->r, &R->recorded,
                                   err)) != LORA_OK) {
            fprintf(stderr, "%s: --record: %s\n", prog, err->msg);
            return rc;
        }
    }
    return LORA_OK;
}

static int print_json(const eval_args *a, const eval_run *R)
{
    const lora_eval_result *r = &R->r;
    json_t *o = json_object();
    json_object_set_new(o, "model", json_string(a->model_dir));
    json_object_set_new(o, "architecture", json_string(lora_model_cfg(R->m)->architecture));
    json_object_set_new(o, "adapter", a->adapter ? json_string(a->adapter) : json_null());
    json_object_set_new(o, "data", json_string(a->data));
    json_object_set_new(o, "mode", json_string(mode_name(a->mode)));
    json_object_set_new(o, "items", json_integer((json_int_t)r->items));
    json_object_set_new(o, "correct", json_integer((json_int_t)r->correct));
    json_metrics(o, r);
    json_object_set_new(o, "choice_items", json_integer((json_int_t)r->choice_items));
    json_object_set_new(o, "choice_correct", json_integer((json_int_t)r->choice_correct));
    json_object_set_new(o, "generation_items", json_integer((json_int_t)r->gen_items));
    json_object_set_new(o, "generation_correct", json_integer((json_int_t)r->gen_correct));
    json_object_set_new(o, "mean_nll", metric(r->mean_nll));
    json_object_set_new(o, "nll_tokens", json_integer((json_int_t)r->nll_tokens));
    json_object_set_new(o, "tokens", json_integer((json_int_t)r->tokens));
    json_object_set_new(o, "seconds", json_real(r->seconds));
    json_object_set_new(o, "tokens_per_second", json_real(r->tokens_per_second));
    json_object_set_new(o, "threads", json_integer(a->t.threads));
    if (a->cmp >= 0) {
        json_t *cm = json_object();
        json_object_set_new(cm, "against", json_string(mode_name(a->cmp)));
        json_object_set_new(cm, "max_abs_dlogit", json_real(r->max_abs_dlogit));
        json_object_set_new(cm, "disagreements", json_integer((json_int_t)r->disagreements));
        json_object_set_new(cm, "first_disagreement_line",
                            r->first_disagreement ? json_integer((json_int_t)r->first_disagreement)
                                                  : json_null());
        json_object_set_new(cm, "agree", json_boolean(!R->disagree));
        json_object_set_new(o, "compare", cm);
    }
    json_object_set_new(o, "min_accuracy", a->min_acc >= 0 ? json_real(a->min_acc) : json_null());
    json_object_set_new(o, "passed", json_boolean(!R->below && !R->disagree));
    if (a->record) {
        json_t *rj = json_object();
        json_object_set_new(rj, "registry", json_string(lora_registry_path(R->reg)));
        json_object_set_new(rj, "adapter", json_string(R->ra_id));
        json_object_set_new(rj, "dataset_hash", json_string(R->ds_hex));
        json_object_set_new(rj, "rows", json_integer((json_int_t)R->recorded));
        json_object_set_new(o, "recorded", rj);
    } else {
        json_object_set_new(o, "recorded", json_null());
    }
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    json_decref(o);
    if (!s) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return LORA_EIO;
    }
    puts(s);
    free(s);
    return LORA_OK;
}

static void print_text(const eval_args *a, const eval_run *R)
{
    const lora_eval_result *r = &R->r;
    int threads = a->t.threads;
    printf("model       %s (%s, %llu parameters)\n", a->model_dir,
           lora_model_cfg(R->m)->architecture, (unsigned long long)lora_model_params(R->m));
    if (a->adapter)
        printf("adapter     %s (%zu weights adapted, %s)\n", a->adapter, lora_model_adapted(R->m),
               mode_name(a->mode));
    printf("items       %zu (%zu multiple choice, %zu generation)\n", r->items, r->choice_items,
           r->gen_items);
    printf("correct     %.4f (%zu/%zu)\n", r->accuracy, r->correct, r->items);
    text_metrics(r);
    printf("speed       %.0f tokens/s (%llu tokens, %.3f s, %d thread%s)\n", r->tokens_per_second,
           (unsigned long long)r->tokens, r->seconds, threads, threads == 1 ? "" : "s");
    if (a->record)
        printf("recorded    %zu results for %s in %s\n", R->recorded, R->ra_id,
               lora_registry_path(R->reg));
    if (a->cmp >= 0) {
        printf("merged vs unmerged: max |Δlogit| %.3g, %s\n", r->max_abs_dlogit,
               R->disagree ? "predictions DIFFER" : "every prediction agrees");
    }
}

/* The data-set evaluation: open, evaluate, report.  The exit status. */
static int eval_main(const eval_args *a)
{
    lora_error err;
    lora_error_clear(&err);
    if (lora_init(&err) != LORA_OK)
        return die(err.code, &err);
    lora_set_threads(a->t.threads);
    eval_run R = {0};
    int rc = a->record ? open_record(a, &R, &err) : LORA_OK;
    if (!rc && (rc = lora_model_open(a->model_dir, &R.m, &err)) != LORA_OK)
        die(rc, &err);
    if (!rc)
        rc = open_data(a, &R, &err);
    if (!rc && a->adapter)
        rc = open_adapter(a, &R, &err);
    if (!rc)
        rc = evaluate(a, &R, &err);
    if (!rc && a->t.json)
        rc = print_json(a, &R);
    else if (!rc)
        print_text(a, &R);
    if (!rc && R.disagree)
        fprintf(stderr, "%s: merged and unmerged predictions differ on %zu item%s (first at line %zu)\n",
                prog, R.r.disagreements, R.r.disagreements == 1 ? "" : "s", R.r.first_disagreement);
    if (!rc && R.below)
        fprintf(stderr, "%s: accuracy %.4f is below --min-accuracy %.4f\n", prog, R.r.accuracy,
                a->min_acc);
    if (!rc)
        rc = (R.below || R.disagree) ? LORA_ECHECK : LORA_OK;
    lora_eval_result_free(&R.r);
    lora_dataset_free(R.ds);
    lora_tokenizer_free(R.tok);
    lora_model_free(R.m);
    lora_adapter_free(R.ad);
    lora_reg_adapter_free(R.ra);
    lora_registry_close(R.reg);
    return rc;
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, "lora-eval", 0);
    lora_tool_sigbus("lora-eval");
    eval_args a = {.t = {.prog = "lora-eval", .usage = usage, .threads_max = 256, .threads = 1},
                   .min_acc = -1,
                   .maxnew = 32};
    int rc = parse_args(&a, argc, argv);
    if (rc != TOOL_OPT_NEXT)
        return rc;
    if ((rc = other_modes(&a)) != TOOL_OPT_NEXT)
        return rc;
    if ((rc = check_eval_args(&a)) != 0)
        return rc;
    return eval_main(&a);
}

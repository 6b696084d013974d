/*
 * gguf_adapter.c - a GGUF file read as a llama.cpp LoRA adapter, with
 * the rules of llama.cpp's loader (llama_adapter_lora_init_impl):
 * general.type "adapter", adapter.type "lora", adapter.lora.alpha an
 * f32 (absent: 0), tensors named BASE.lora_a / BASE.lora_b in pairs,
 * "_norm.weight" tensors skipped, any other name refused, and the
 * shape rule (ggml order): a.ne[1] == b.ne[0] == r, except token_embd
 * whose lora_a is stored transposed (a.ne[0] == b.ne[0] == r).
 */
#include "gguf_int.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

void lora_gguf_adapter_free(lora_gguf_adapter *ga)
{
    if (!ga)
        return;
    for (size_t i = 0; i < ga->n; i++)
        free(ga->pairs[i].name);
    free(ga->pairs);
    lora_gguf_close(ga->g);
    free(ga);
}

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static int cmp_pair(const void *a, const void *b)
{
    return strcmp(((const lora_gguf_pair *)a)->name, ((const lora_gguf_pair *)b)->name);
}

static int check_meta(lora_gguf_adapter *ga, const char *path, lora_error *err)
{
    const char *gt = lora_gguf_get_str(ga->g, "general.type");
    if (!gt || strcmp(gt, "adapter") != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: a GGUF file, but not a LoRA adapter (general.type is %s%s%s; "
                           "llama.cpp needs \"adapter\")",
                           path, gt ? "\"" : "", gt ? gt : "missing", gt ? "\"" : "");
    const char *at = lora_gguf_get_str(ga->g, "adapter.type");
    if (!at || strcmp(at, "lora") != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: adapter.type is %s%s%s, not \"lora\"", path,
                           at ? "\"" : "", at ? at : "missing", at ? "\"" : "");
    ga->architecture = lora_gguf_get_str(ga->g, "general.architecture");
    const lora_gguf_kv *al = lora_gguf_find_kv(ga->g, "adapter.lora.alpha");
    if (al) {
        if (al->type != LORA_GGUF_F32)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: adapter.lora.alpha is of type %s; llama.cpp reads an f32",
                               path, lora_gguf_type_name(al->type));
        double a;
        lora_gguf_get_num(ga->g, "adapter.lora.alpha", &a);
        if (!(a == a) || a < 0 || a > 1e30)
            return lora_seterr(err, LORA_EINPUT, "%s: adapter.lora.alpha %g is not a usable alpha",
                               path, a);
        ga->alpha = a;
        ga->has_alpha = 1;
    }
    return LORA_OK;
}

/* Pair every .lora_a with its .lora_b: tensor names are unique, so
 * in name order the two halves of a pair are neighbours. */
static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp((*(const lora_gguf_tensor *const *)a)->name,
                  (*(const lora_gguf_tensor *const *)b)->name);
}

static int collect_pairs(lora_gguf_adapter *ga, const char *path, lora_error *err)
{
    size_t nt = lora_gguf_tensor_count(ga->g), m = 0;
    const lora_gguf_tensor **v = malloc((nt ? nt : 1) * sizeof *v);
    ga->pairs = calloc(nt ? nt : 1, sizeof *ga->pairs);
    if (!v || !ga->pairs) {
        free(v);
        return lora_oom(err);
    }
    int rc = LORA_OK;
    for (size_t i = 0; i < nt && !rc; i++) {
        const lora_gguf_tensor *t = lora_gguf_tensor_at(ga->g, i);
        ga->tensor_bytes += t->nbytes;
        if (ends_with(t->name, ".lora_a") || ends_with(t->name, ".lora_b"))
            v[m++] = t;
        else if (ends_with(t->name, "_norm.weight"))
            ga->n_norms++;
        else
            rc = lora_seterr(err, LORA_EINPUT,
                             "%s: tensor \"%s\" is neither a .lora_a nor a .lora_b tensor", path,
                             t->name);
    }
    qsort(v, m, sizeof *v, cmp_tensor_name);
    for (size_t i = 0; i < m && !rc; i++) {
        const lora_gguf_tensor *t = v[i];
        size_t len = strlen(t->name) - 7;
        lora_gguf_pair *p = ga->n ? &ga->pairs[ga->n - 1] : NULL;
        if (!p || strlen(p->name) != len || strncmp(p->name, t->name, len) != 0) {
            p = &ga->pairs[ga->n];
            if (!(p->name = strndup(t->name, len))) {
                rc = lora_oom(err);
                break;
            }
            ga->n++;
        }
        if (ends_with(t->name, ".lora_a"))
            p->a = t;
        else
            p->b = t;
    }
    free(v);
    return rc;
}

static int check_pair(lora_gguf_pair *p, const char *path, lora_error *err)
{
    if (!p->a || !p->b)
        return lora_seterr(err, LORA_EINPUT, "%s: \"%s\" has a .lora_%c but no .lora_%c", path,
                           p->name, p->a ? 'a' : 'b', p->a ? 'b' : 'a');
    if (p->a->ndim != 2 || p->b->ndim != 2)
        return lora_seterr(err, LORA_EINPUT, "%s: \"%s\": lora_a and lora_b must be 2-D", path,
                           p->name);
    p->embedding = ends_with(p->name, "token_embd.weight");
    p->r = p->b->ne[0];
    if (p->embedding) {
        /* lora_a is [vocab, r] in torch order: ne = [r, vocab] */
        if (p->a->ne[0] != p->r)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: \"%s\": lora_a has %llu columns, lora_b rank %llu", path,
                               p->name, (unsigned long long)p->a->ne[0], (unsigned long long)p->r);
        p->in = p->a->ne[1];
    } else {
        if (p->a->ne[1] != p->r)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: \"%s\": lora_a has rank %llu, lora_b %llu (lora_a must be "
                               "stored [r, in])", path, p->name, (unsigned long long)p->a->ne[1],
                               (unsigned long long)p->r);
        p->in = p->a->ne[0];
    }
    p->out = p->b->ne[1];
    if (p->r == 0)
        return lora_seterr(err, LORA_EINPUT, "%s: \"%s\": rank 0", path, p->name);
    return LORA_OK;
}

int lora_gguf_adapter_open(const char *path, lora_gguf_adapter **out, lora_error *err)
{
    *out = NULL;
    lora_gguf_adapter *ga = calloc(1, sizeof *ga);
    if (!ga)
        return lora_oom(err);
    int rc = lora_gguf_open(path, &ga->g, err);
    if (!rc)
        rc = check_meta(ga, path, err);
    if (!rc)
        rc = collect_pairs(ga, path, err);
    for (size_t i = 0; !rc && i < ga->n; i++)
        rc = check_pair(&ga->pairs[i], path, err);
    if (rc) {
        lora_gguf_adapter_free(ga);
        return rc;
    }
    qsort(ga->pairs, ga->n, sizeof *ga->pairs, cmp_pair);
    *out = ga;
    return LORA_OK;
}

double lora_gguf_pair_scale(const lora_gguf_adapter *ga, const lora_gguf_pair *p)
{
    /* llama_adapter_lora_weight::get_scale, in float as llama.cpp does it */
    float alpha = (float)ga->alpha, rank = (float)p->r;
    return alpha != 0.0f ? (double)(1.0f * alpha / rank) : 1.0;
}

/* ---- lora-inspect's report on a GGUF adapter ----------------------- */

static const char *type_of(const lora_gguf_tensor *t)
{
    const char *n = lora_ggml_type_name(t->type);
    return n ? n : "?";
}

/* The ranks of an adapter as groups of modules sharing r (and so the
 * scale), and its LoRA parameters. */
struct rank_groups {
    uint64_t *r;
    size_t *n;
    size_t count;
    uint64_t params;
};

static int rank_groups(const lora_gguf_adapter *ga, struct rank_groups *G)
{
    memset(G, 0, sizeof *G);
    G->r = calloc(ga->n ? ga->n : 1, sizeof *G->r);
    G->n = calloc(ga->n ? ga->n : 1, sizeof *G->n);
    if (!G->r || !G->n)
        return -1;
    for (size_t i = 0; i < ga->n; i++) {
        const lora_gguf_pair *p = &ga->pairs[i];
        G->params += p->a->numel + p->b->numel;
        size_t g = 0;
        while (g < G->count && G->r[g] != p->r)
            g++;
        if (g == G->count)
            G->r[G->count++] = p->r;
        G->n[g]++;
    }
    return 0;
}

static json_t *module_json(const lora_gguf_adapter *ga, const lora_gguf_pair *p)
{
    json_t *m = json_object();
    json_object_set_new(m, "name", json_string(p->name));
    json_object_set_new(m, "r", json_integer((json_int_t)p->r));
    json_object_set_new(m, "in", json_integer((json_int_t)p->in));
    json_object_set_new(m, "out", json_integer((json_int_t)p->out));
    json_object_set_new(m, "scale", json_real(lora_gguf_pair_scale(ga, p)));
    json_object_set_new(m, "type_a", json_string(type_of(p->a)));
    json_object_set_new(m, "type_b", json_string(type_of(p->b)));
    json_object_set_new(m, "embedding", json_boolean(p->embedding));
    json_object_set_new(m, "bytes", json_integer((json_int_t)(p->a->nbytes + p->b->nbytes)));
    return m;
}

static char *report_json(const lora_gguf_adapter *ga, const struct rank_groups *G)
{
    const lora_gguf *g = ga->g;
    json_t *o = json_object(), *mods = json_array(), *ranks = json_array();
    json_object_set_new(o, "adapter", json_string(lora_gguf_path(g)));
    json_object_set_new(o, "format", json_string("gguf"));
    json_object_set_new(o, "gguf_version", json_integer(lora_gguf_version(g)));
    json_object_set_new(o, "alignment", json_integer((json_int_t)lora_gguf_alignment(g)));
    json_object_set_new(o, "architecture",
                        ga->architecture ? json_string(ga->architecture) : json_null());
    json_object_set_new(o, "alpha", ga->has_alpha ? json_real(ga->alpha) : json_null());
    for (size_t i = 0; i < G->count; i++) {
        json_t *r = json_object();
        json_object_set_new(r, "r", json_integer((json_int_t)G->r[i]));
        lora_gguf_pair tmp = {.r = G->r[i]};
        json_object_set_new(r, "scale", json_real(lora_gguf_pair_scale(ga, &tmp)));
        json_object_set_new(r, "modules", json_integer((json_int_t)G->n[i]));
        json_array_append_new(ranks, r);
    }
    json_object_set_new(o, "ranks", ranks);
    for (size_t i = 0; i < ga->n; i++)
        json_array_append_new(mods, module_json(ga, &ga->pairs[i]));
    json_object_set_new(o, "modules", mods);
    json_object_set_new(o, "n_modules", json_integer((json_int_t)ga->n));
    json_object_set_new(o, "lora_params", json_integer((json_int_t)G->params));
    json_object_set_new(o, "ignored_norms", json_integer((json_int_t)ga->n_norms));
    json_object_set_new(o, "tensor_bytes", json_integer((json_int_t)ga->tensor_bytes));
    json_object_set_new(o, "file_bytes", json_integer((json_int_t)lora_gguf_size(g)));
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER), *text = NULL;
    json_decref(o);
    if (s && (text = malloc(strlen(s) + 2)))
        sprintf(text, "%s\n", s);
    free(s);
    return text;
}

static char *report_text(const lora_gguf_adapter *ga, const struct rank_groups *G)
{
    const lora_gguf *g = ga->g;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    fprintf(f, "adapter          %s\n", lora_gguf_path(g));
    fprintf(f, "format           GGUF v%u llama.cpp LoRA adapter (alignment %llu)\n",
            lora_gguf_version(g), (unsigned long long)lora_gguf_alignment(g));
    fprintf(f, "architecture     %s\n", ga->architecture ? ga->architecture : "(missing)");
    if (ga->has_alpha)
        fprintf(f, "alpha            %.9g (scale alpha/r per module)\n", ga->alpha);
    else
        fprintf(f, "alpha            absent (llama.cpp: scale 1)\n");
    for (size_t i = 0; i < G->count; i++) {
        lora_gguf_pair tmp = {.r = G->r[i]};
        fprintf(f, "rank             r %llu, scale %.9g: %zu module%s\n",
                (unsigned long long)G->r[i], lora_gguf_pair_scale(ga, &tmp), G->n[i],
                G->n[i] == 1 ? "" : "s");
    }
    fprintf(f, "modules          %zu adapted\n", ga->n);
    for (size_t i = 0; i < ga->n; i++) {
        const lora_gguf_pair *p = &ga->pairs[i];
        fprintf(f, "  %s r %llu [%llu -> %llu] %s/%s%s\n", p->name, (unsigned long long)p->r,
                (unsigned long long)p->in, (unsigned long long)p->out, type_of(p->a),
                type_of(p->b), p->embedding ? " (embedding)" : "");
    }
    fprintf(f, "parameters       %llu LoRA\n", (unsigned long long)G->params);
    fprintf(f, "bytes            %llu on disk, %llu of tensors\n",
            (unsigned long long)lora_gguf_size(g), (unsigned long long)ga->tensor_bytes);
    if (ga->n_norms)
        fprintf(f, "ignored          %zu *_norm.weight tensor%s (llama.cpp skips them)\n",
                ga->n_norms, ga->n_norms == 1 ? "" : "s");
    if (fclose(f) == 0)
        return buf;
    free(buf);
    return NULL;
}

char *lora_gguf_adapter_report(const lora_gguf_adapter *ga, int json, lora_error *err)
{
    struct rank_groups G;
    char *text = NULL;
    if (rank_groups(ga, &G) == 0)
        text = json ? report_json(ga, &G) : report_text(ga, &G);
    free(G.r);
    free(G.n);
    if (!text)
        lora_oom(err);
    return text;
}

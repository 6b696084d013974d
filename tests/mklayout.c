/*
 * mklayout - test generator for byte-identical restores and receipt
 * forgeries (tests/restore.sh).  It writes safetensors files laid out
 * the way other writers lay them out, prints a file's layout, and forges
 * a receipt the way an attacker with write access to it would.
 *
 *   mklayout relayout IN OUT [--keys sorted|reverse|data] [--data keys|reverse]
 *                            [--meta keep|none|first|last] [--style compact|python|pretty]
 *                            [--align N] [--pad N]
 *       IN's tensors and metadata in another layout: header key order
 *       (sorted by name, reverse, or data order), data order (the key
 *       order or its reverse), __metadata__ kept where it is, dropped,
 *       first or last; JSON spacing as serde (compact), Python's
 *       json.dumps, or indented; the header padded with spaces to a
 *       multiple of 8, of N (--align), plus N more spaces (--pad).
 *   mklayout shard IN OUTDIR K [--style ...]
 *       IN split into K shards with model.safetensors.index.json written
 *       as transformers writes it (indent 2, sorted weight_map).
 *   mklayout order FILE [TENSOR]
 *       one line per header entry in header order: the name (metadata
 *       keys as "meta:KEY", lora_merges and lora_base left out) and the
 *       data offsets; with TENSOR, only the BLAKE2b-256 of its bytes.
 *   mklayout addsaved ADAPTER BASEFILE TENSOR
 *       adds to ADAPTER/adapter_model.safetensors a modules_to_save copy
 *       of BASEFILE's TENSOR with its elements in reverse order (PEFT's
 *       key base_model.model.X.modules_to_save.default.weight).
 *   mklayout forge RECEIPT MERGED ADAPTER OUT
 *       RECEIPT with the first correction of its first tensor changed
 *       (one added when it has none), every hash the receipt holds
 *       recomputed to match, that tensor's base hash included: a receipt
 *       that is consistent in itself and restores a wrong element.
 * Exit 0, or 1 with a message.
 */
#include "lora.h"
#include "mergecore.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int die(const char *msg, const lora_error *err)
{
    fprintf(stderr, "mklayout: %s%s%s\n", msg, err ? ": " : "", err ? err->msg : "");
    return 1;
}

/* ---- header text in a chosen style ------------------------------------ */

enum style { COMPACT, PYTHON, PRETTY };

typedef struct {
    char *s;
    size_t n, cap;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        if (!b->s)
            exit(1);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_str(buf *b, const char *s)
{
    json_t *j = json_string(s);
    char *t = json_dumps(j, JSON_ENCODE_ANY);
    puts_(b, t);
    free(t);
    json_decref(j);
}

static const char *SEP_KV[] = {":", ": ", ": "};
static const char *SEP_EL[] = {",", ", ", ","};

static void newline(buf *b, enum style st, int depth)
{
    if (st != PRETTY)
        return;
    puts_(b, "\n");
    for (int i = 0; i < depth; i++)
        puts_(b, "  ");
}

typedef struct {
    const char *name;
    const lora_tensor *t;
    uint64_t begin;
} entry;

static void put_meta(buf *b, const lora_st *st, enum style sty)
{
    put_str(b, "__metadata__");
    puts_(b, SEP_KV[sty]);
    puts_(b, "{");
    for (size_t i = 0; i < lora_st_metadata_count(st); i++) {
        const char *k, *v;
        lora_st_metadata_at(st, i, &k, &v);
        if (i)
            puts_(b, SEP_EL[sty]);
        newline(b, sty, 2);
        put_str(b, k);
        puts_(b, SEP_KV[sty]);
        put_str(b, v);
    }
    newline(b, sty, 1);
    puts_(b, "}");
}

static void put_entry(buf *b, const entry *e, enum style sty)
{
    char num[64];
    put_str(b, e->name);
    puts_(b, SEP_KV[sty]);
    puts_(b, "{");
    newline(b, sty, 2);
    put_str(b, "dtype");
    puts_(b, SEP_KV[sty]);
    put_str(b, lora_dtype_name(e->t->dtype));
    puts_(b, SEP_EL[sty]);
    newline(b, sty, 2);
    put_str(b, "shape");
    puts_(b, SEP_KV[sty]);
    puts_(b, "[");
    for (int d = 0; d < e->t->ndim; d++) {
        snprintf(num, sizeof num, "%s%llu", d ? SEP_EL[sty] : "",
                 (unsigned long long)e->t->shape[d]);
        puts_(b, num);
    }
    puts_(b, "]");
    puts_(b, SEP_EL[sty]);
    newline(b, sty, 2);
    put_str(b, "data_offsets");
    puts_(b, SEP_KV[sty]);
    snprintf(num, sizeof num, "[%llu%s%llu]", (unsigned long long)e->begin, SEP_EL[sty],
             (unsigned long long)(e->begin + e->t->nbytes));
    puts_(b, num);
    newline(b, sty, 1);
    puts_(b, "}");
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static enum style parse_style(const char *s)
{
    return !strcmp(s, "python") ? PYTHON : !strcmp(s, "pretty") ? PRETTY : COMPACT;
}

/* Write the tensors E[0..n) of ST (header in E's order, data in DORDER's)
 * with metadata at META (0 none, 1 first, 2 last). */
static int write_file(const char *out, const lora_st *st, entry *e, size_t n,
                      const size_t *dorder, int meta, enum style sty, uint64_t align,
                      uint64_t pad)
{
    uint64_t off = 0;
    for (size_t k = 0; k < n; k++) {
        e[dorder[k]].begin = off;
        off += e[dorder[k]].t->nbytes;
    }
    buf b = {0};
    puts_(&b, "{");
    int first = 1;
    if (meta == 1) {
        newline(&b, sty, 1);
        put_meta(&b, st, sty);
        first = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!first)
            puts_(&b, SEP_EL[sty]);
        first = 0;
        newline(&b, sty, 1);
        put_entry(&b, &e[i], sty);
    }
    if (meta == 2) {
        puts_(&b, SEP_EL[sty]);
        newline(&b, sty, 1);
        put_meta(&b, st, sty);
    }
    newline(&b, sty, 0);
    puts_(&b, "}");
    uint64_t hl = b.n;
    uint64_t a = align ? align : 8;
    while ((8 + hl) % a || hl % 8)
        hl++;
    hl += pad;
    FILE *f = fopen(out, "wb");
    if (!f)
        return die(out, NULL);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(hl >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(b.s, 1, b.n, f);
    for (uint64_t i = b.n; i < hl; i++)
        fputc(' ', f);
    for (size_t k = 0; k < n; k++)
        fwrite(e[dorder[k]].t->data, 1, (size_t)e[dorder[k]].t->nbytes, f);
    free(b.s);
    return fclose(f) ? die(out, NULL) : 0;
}

static int relayout(int argc, char **argv)
{
    const char *keys = "sorted", *data = "keys", *meta = "keep", *style = "compact";
    uint64_t align = 0, pad = 0;
    for (int i = 4; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--keys")) keys = argv[i + 1];
        else if (!strcmp(argv[i], "--data")) data = argv[i + 1];
        else if (!strcmp(argv[i], "--meta")) meta = argv[i + 1];
        else if (!strcmp(argv[i], "--style")) style = argv[i + 1];
        else if (!strcmp(argv[i], "--align")) align = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--pad")) pad = strtoull(argv[i + 1], NULL, 10);
        else return die("unknown option", NULL);
    }
    lora_error err;
    lora_st *st;
    if (lora_st_open(argv[2], &st, &err))
        return die("open", &err);
    size_t n = lora_st_count(st);
    entry *e = calloc(n + 1, sizeof *e);
    size_t *dord = calloc(n + 1, sizeof *dord);
    for (size_t i = 0; i < n; i++) {
        e[i].t = lora_st_tensor(st, i); /* data order */
        e[i].name = e[i].t->name;
    }
    if (!strcmp(keys, "sorted") || !strcmp(keys, "reverse"))
        qsort(e, n, sizeof *e, cmp_name);
    if (!strcmp(keys, "reverse"))
        for (size_t i = 0; i < n / 2; i++) {
            entry x = e[i];
            e[i] = e[n - 1 - i];
            e[n - 1 - i] = x;
        }
    for (size_t i = 0; i < n; i++)
        dord[i] = !strcmp(data, "reverse") ? n - 1 - i : i;
    int m = !strcmp(meta, "none") ? 0 : !strcmp(meta, "last") ? 2 : 1;
    if (!strcmp(meta, "keep"))
        m = lora_st_metadata_count(st) ? 1 : 0;
    int rc = write_file(argv[3], st, e, n, dord, m, parse_style(style), align, pad);
    free(e);
    free(dord);
    lora_st_close(st);
    return rc;
}

static int shard(int argc, char **argv)
{
    if (argc < 5)
        return die("usage: shard IN OUTDIR K", NULL);
    enum style sty = argc >= 7 && !strcmp(argv[5], "--style") ? parse_style(argv[6]) : COMPACT;
    size_t k = (size_t)strtoul(argv[4], NULL, 10);
    lora_error err;
    lora_st *st;
    if (k < 1 || lora_st_open(argv[2], &st, &err))
        return die("open", k < 1 ? NULL : &err);
    mkdir(argv[3], 0755);
    size_t n = lora_st_count(st), per = (n + k - 1) / k;
    entry *e = calloc(n + 1, sizeof *e);
    size_t *dord = calloc(n + 1, sizeof *dord);
    for (size_t i = 0; i < n; i++) {
        e[i].t = lora_st_tensor(st, i);
        e[i].name = e[i].t->name;
    }
    json_t *map = json_object();
    uint64_t total = 0;
    int rc = 0;
    for (size_t s = 0; s < k && !rc; s++) {
        size_t lo = s * per, hi = lo + per > n ? n : lo + per;
        char name[128], path[4096];
        snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, k);
        snprintf(path, sizeof path, "%s/%s", argv[3], name);
        for (size_t i = lo; i < hi; i++) {
            dord[i - lo] = i - lo;
            json_object_set_new(map, e[i].name, json_string(name));
            total += e[i].t->nbytes;
        }
        rc = write_file(path, st, e + lo, hi > lo ? hi - lo : 0, dord, 1, sty, 0, 0);
    }
    json_t *root = json_pack("{s{sI}so}", "metadata", "total_size", (json_int_t)total,
                             "weight_map", map);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", argv[3]);
    if (!rc && json_dump_file(root, path, JSON_INDENT(2) | JSON_SORT_KEYS))
        rc = die(path, NULL);
    json_decref(root);
    free(e);
    free(dord);
    lora_st_close(st);
    return rc;
}

/* ---- a file's layout --------------------------------------------------- */

static int tensor_hash(const char *path, const char *name)
{
    lora_error err;
    lora_st *st;
    if (lora_st_open(path, &st, &err))
        return die("open", &err);
    const lora_tensor *t = lora_st_find(st, name);
    if (!t)
        return die("no such tensor", NULL);
    unsigned char h[32];
    char hex[65];
    crypto_generichash(h, 32, t->data, (size_t)t->nbytes, NULL, 0);
    sodium_bin2hex(hex, sizeof hex, h, 32);
    puts(hex);
    lora_st_close(st);
    return 0;
}

static int order(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char l8[8];
    if (!f || fread(l8, 1, 8, f) != 8)
        return die(path, NULL);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | l8[i];
    char *h = malloc(n + 1);
    if (!h || fread(h, 1, n, f) != n)
        return die(path, NULL);
    fclose(f);
    json_t *root = json_loadb(h, n, 0, NULL);
    free(h);
    if (!root)
        return die("header", NULL);
    const char *k, *mk;
    json_t *v, *mv;
    json_object_foreach(root, k, v) {
        if (!strcmp(k, "__metadata__")) {
            json_object_foreach(v, mk, mv)
                if (strcmp(mk, "lora_merges") && strcmp(mk, "lora_base"))
                    printf("meta:%s\n", mk);
            continue;
        }
        json_t *o = json_object_get(v, "data_offsets");
        printf("%s %lld %lld\n", k, (long long)json_integer_value(json_array_get(o, 0)),
               (long long)json_integer_value(json_array_get(o, 1)));
    }
    json_decref(root);
    return 0;
}

/* ---- an adapter with a modules_to_save tensor ----------------------------- */

static int addsaved(char **argv)
{
    char in[4096], out[4096], key[1024];
    lora_error err;
    lora_st *ad, *base;
    snprintf(in, sizeof in, "%s/adapter_model.safetensors", argv[2]);
    snprintf(out, sizeof out, "%s/adapter_model.safetensors.new", argv[2]);
    if (lora_st_open(in, &ad, &err) || lora_st_open(argv[3], &base, &err))
        return die("open", &err);
    const lora_tensor *bt = lora_st_find(base, argv[4]);
    size_t tl = strlen(argv[4]);
    if (!bt || tl < 8 || strcmp(argv[4] + tl - 7, ".weight"))
        return die("no such base tensor X.weight", NULL);
    snprintf(key, sizeof key, "base_model.model.%.*s.modules_to_save.default.weight",
             (int)(tl - 7), argv[4]);
    lora_stw *w;
    if (lora_stw_new(out, &w, &err))
        return die("write", &err);
    for (size_t i = 0; i < lora_st_metadata_count(ad); i++) {
        const char *k, *v;
        lora_st_metadata_at(ad, i, &k, &v);
        lora_stw_set_metadata(w, k, v, &err);
    }
    for (size_t i = 0; i < lora_st_count(ad); i++) {
        const lora_tensor *t = lora_st_tensor(ad, i);
        lora_stw_declare(w, t->name, t->dtype, t->ndim, t->shape, &err);
    }
    lora_stw_declare(w, key, bt->dtype, bt->ndim, bt->shape, &err);
    if (lora_stw_start(w, &err))
        return die("write", &err);
    for (size_t i = 0; i < lora_st_count(ad); i++) {
        const lora_tensor *t = lora_st_tensor(ad, i);
        lora_stw_write(w, t->name, 0, t->data, (size_t)t->nbytes, &err);
    }
    size_t es = lora_dtype_bits(bt->dtype) / 8;
    unsigned char *rev = malloc((size_t)bt->nbytes + 1);
    for (uint64_t i = 0; i < bt->numel; i++)
        memcpy(rev + i * es, (const unsigned char *)bt->data + (bt->numel - 1 - i) * es, es);
    lora_stw_write(w, key, 0, rev, (size_t)bt->nbytes, &err);
    free(rev);
    int rc = lora_stw_commit(w, &err);
    lora_st_close(ad);
    lora_st_close(base);
    if (rc || rename(out, in))
        return die("commit", &err);
    return 0;
}

/* ---- a forged receipt --------------------------------------------------- */

static int copy_receipt(lora_receipt *in, lora_receipt *out, size_t victim,
                        const lora_fixes *vf, const unsigned char vhash[32], lora_error *err)
{
    for (size_t a = 0; a < lora_receipt_adapter_count(in); a++) {
        const lora_receipt_adapter *ra = lora_receipt_adapter_at(in, a);
        if (lora_receipt_add_adapter(out, ra->path, ra->hash, ra->weight, err))
            return 1;
    }
    lora_fixes fx = {0};
    for (size_t i = 0; i < lora_receipt_tensor_count(in); i++) {
        lora_receipt_tensor t = *lora_receipt_tensor_at(in, i);
        if (i == victim)
            memcpy(t.base_hash, vhash, 32);
        if (lora_receipt_fixes(in, i, &fx, err) ||
            lora_receipt_add_tensor(out, &t, i == victim ? vf : &fx, err)) {
            lora_fixes_free(&fx);
            return 1;
        }
    }
    lora_fixes_free(&fx);
    for (size_t i = 0; i < lora_receipt_file_count(in); i++) {
        const lora_receipt_file *f = lora_receipt_file_at(in, i);
        if (lora_receipt_add_file(out, f->name, f->header, (size_t)f->header_len,
                                  f->merged_header, err))
            return 1;
    }
    uint64_t il;
    const unsigned char *ix = lora_receipt_index(in, &il);
    if (ix && lora_receipt_set_index(out, ix, (size_t)il, err))
        return 1;
    return 0;
}

static int forge(char **argv)
{
    lora_error err;
    lora_receipt *in = NULL, *out = NULL;
    lora_ckpt *ck = NULL;
    lora_adapter *ad = NULL;
    lora_source_opts so;
    memset(&so, 0, sizeof so);
    so.no_verify = 1;
    if (lora_receipt_open(argv[2], &in, &err) || lora_ckpt_open(argv[3], &ck, &err) ||
        lora_adapter_load(argv[4], &so, &ad, &err) || lora_adapter_bind(ad, ck, &err))
        return die("open", &err);
    const lora_receipt_tensor *rt = lora_receipt_tensor_at(in, 0);
    const lora_tensor *mt = rt ? lora_ckpt_find(ck, rt->name, NULL) : NULL;
    if (!mt || lora_receipt_adapter_count(in) != 1)
        return die("a receipt of one adapter with a tensor in MERGED is needed", NULL);
    lora_fixes fx = {0};
    if (lora_receipt_fixes(in, 0, &fx, &err))
        return die("fixes", &err);
    if (fx.n)
        fx.step[0] += fx.step[0] == -1 ? 2 : 1; /* never 0: that is no correction */
    else if (lora_fixes_push(&fx, 0, 1))
        return die("oom", NULL);
    lora_term terms[64];
    size_t nt = 0;
    for (size_t k = 0; k < rt->nterms && nt < 64; k++)
        for (size_t i = 0; i < ad->n_modules; i++)
            if (!strcmp(ad->modules[i].name, rt->terms[k].module))
                terms[nt++] = (lora_term){&ad->modules[i],
                                          lora_receipt_adapter_at(in, 0)->weight};
    size_t es = lora_dtype_bits(rt->base_dtype) / 8;
    unsigned char *w0 = malloc((size_t)(rt->rows * rt->cols * es)), h[32];
    lora_merge_stats stt;
    memset(&stt, 0, sizeof stt);
    if (!w0 || lora_tensor_unmerge(mt->dtype, rt->base_dtype, rt->rows, rt->cols, mt->data, w0,
                                   terms, nt, &fx, NULL, 1, &stt, &err))
        return die("unmerge", &err);
    /* the base digest of the receipt written (lora_receipt_create: the
     * current version) */
    if (lora_tree_hash_kind(LORA_TH_NEW_BASE, w0, rt->rows, rt->cols, es, h))
        return die("hash", NULL);
    int rc = lora_receipt_create(argv[5], lora_receipt_rounding(in), &out, &err) ||
             copy_receipt(in, out, 0, &fx, h, &err) || lora_receipt_commit(out, &err);
    if (rc)
        return die("write", &err);
    free(w0);
    lora_fixes_free(&fx);
    lora_receipt_close(in);
    lora_adapter_free(ad);
    lora_ckpt_close(ck);
    return 0;
}

int main(int argc, char **argv)
{
    lora_error err;
    if (lora_init(&err))
        return die("init", &err);
    if (argc >= 4 && !strcmp(argv[1], "relayout"))
        return relayout(argc, argv);
    if (argc >= 5 && !strcmp(argv[1], "shard"))
        return shard(argc, argv);
    if (argc == 3 && !strcmp(argv[1], "order"))
        return order(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "order"))
        return tensor_hash(argv[2], argv[3]);
    if (argc == 6 && !strcmp(argv[1], "forge"))
        return forge(argv);
    if (argc == 5 && !strcmp(argv[1], "addsaved"))
        return addsaved(argv);
    return die("usage: relayout IN OUT [...] | shard IN OUTDIR K | order FILE | "
               "forge RECEIPT MERGED ADAPTER OUT (see the top of tests/mklayout.c)", NULL);
}

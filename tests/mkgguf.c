/*
 * mkgguf.c - GGUF model files for the tests of merging into a GGUF base
 * (tests/merge-gguf.sh), made as llama.cpp's convert_hf_to_gguf.py
 * makes them, through liblora's GGUF writer.  Not installed.
 *
 *   mkgguf from-st MODEL.safetensors CONFIG.json OUT.gguf [options]
 *       a llama or gpt2 checkpoint (tests/mkfixture) as a GGUF model:
 *       llama.cpp's tensor names (gguf_names.c, and the norms), llama's
 *       q/k rows permuted per head as LlamaModel.permute does (k with the
 *       key/value heads), dtypes kept, 1-D tensors F32 with --f32-norms
 *       (as llama.cpp stores norms), gpt2's Conv1D weights transposed to
 *       [out, in]; general.*, <arch>.* hyperparameters (from the
 *       config: context, embedding and feed-forward lengths, heads, RMS
 *       epsilon, rope base) and an array as key/values.
 *         --q8 NAME         store tensor NAME (Hugging Face name) as Q8_0
 *         --alignment N     general.alignment
 *         --f32-norms       1-D tensors as F32
 *   mkgguf to-st MODEL.gguf OUTDIR
 *       the reverse for a llama GGUF model of F32/F16/BF16 tensors:
 *       OUTDIR/model.safetensors (Hugging Face names, q/k rows back in
 *       Hugging Face order) and a config.json; how a real llama.cpp file
 *       gets the safetensors twin the reference merge needs.
 *   mkgguf same A.gguf B.gguf [NAME...]
 *       exit 0 when the named tensors (default: all, and the same list)
 *       have the same type, shape and bytes in both files; 1 otherwise,
 *       naming the first difference.  Key/values are not compared.
 *   mkgguf types MODEL.gguf
 *       one line per tensor: name, ggml type (file order).
 *   mkgguf dataoff MODEL.gguf
 *       where the tensor data starts (the header's length).
 */
#include "../src/lib/gguf_int.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static int die(const char *what, lora_error *err)
{
    fprintf(stderr, "mkgguf: %s: %s\n", what, err ? err->msg : "failed");
    return 2;
}

/* llama.cpp's names for what gguf_names.c does not map (norms) */
static int norm_name(const char *arch, const char *hf, char *out, size_t cap)
{
    unsigned n;
    char rest[128];
    int llama = strcmp(arch, "gpt2") != 0;
    if (llama && sscanf(hf, "model.layers.%u.%127s", &n, rest) == 2) {
        if (!strcmp(rest, "input_layernorm.weight"))
            return snprintf(out, cap, "blk.%u.attn_norm.weight", n), 0;
        if (!strcmp(rest, "post_attention_layernorm.weight"))
            return snprintf(out, cap, "blk.%u.ffn_norm.weight", n), 0;
    }
    if (!llama && sscanf(hf, "h.%u.%127s", &n, rest) == 2) {
        const char *s = !strncmp(rest, "ln_1.", 5) ? "attn_norm" : !strncmp(rest, "ln_2.", 5) ? "ffn_norm"
                      : !strcmp(rest, "attn.c_attn.bias")                                    ? "attn_qkv"
                      : !strcmp(rest, "attn.c_proj.bias")                                    ? "attn_output"
                      : !strcmp(rest, "mlp.c_fc.bias")                                       ? "ffn_up"
                      : !strcmp(rest, "mlp.c_proj.bias")                                     ? "ffn_down"
                                                                                             : NULL;
        if (!s)
            return -1;
        return snprintf(out, cap, "blk.%u.%s.%s", n, s, strstr(rest, "bias") ? "bias" : "weight"), 0;
    }
    if (!strcmp(hf, "model.norm.weight") || !strcmp(hf, "ln_f.weight"))
        return snprintf(out, cap, "output_norm.weight"), 0;
    if (!strcmp(hf, "ln_f.bias"))
        return snprintf(out, cap, "output_norm.bias"), 0;
    return -1;
}

static uint16_t f2h(float f)
{
    return lora_f32_to_f16(f);
}

/* Q8_0: blocks of 32 values, an F16 scale d = max|x| / 127, then 32 int8 round(x / d) */
static int quantize_q8(const float *x, uint64_t n, unsigned char *out)
{
    if (n % 32)
        return -1;
    for (uint64_t b = 0; b < n / 32; b++) {
        float amax = 0;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[b * 32 + i]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0;
        uint16_t h = f2h(d);
        unsigned char *o = out + b * 34;
        o[0] = (unsigned char)h;
        o[1] = (unsigned char)(h >> 8);
        for (int i = 0; i < 32; i++)
            o[2 + i] = (unsigned char)(signed char)lroundf(x[b * 32 + i] * id);
    }
    return 0;
}

typedef struct plan {
    const lora_tensor *t;
    char name[128];
    uint32_t type;
    lora_dtype dt;
    int transpose, permute_heads;
} plan;

static uint32_t ggml_of(lora_dtype dt)
{
    return dt == LORA_DT_F32 ? 0 : dt == LORA_DT_F16 ? 1 : 30;
}

/* The key/values: general.*, the hyperparameters, an array. */
static int write_kvs(lora_ggw *w, const lora_gguf_arch *arch, json_t *cj, const lora_st *st,
                     lora_error *err)
{
    int gpt2 = !strcmp(arch->name, "gpt2");
    uint32_t nl = 0;
    for (size_t i = 0; i < lora_st_count(st); i++) {
        unsigned l;
        if (sscanf(lora_st_tensor(st, i)->name, gpt2 ? "h.%u." : "model.layers.%u.", &l) == 1 &&
            l + 1 > nl)
            nl = l + 1;
    }
    int rc = lora_ggw_kv_str(w, "general.architecture", arch->name, err) ||
             lora_ggw_kv_str(w, "general.type", "model", err) ||
             lora_ggw_kv_str(w, "general.name", "mkgguf test model", err);
    char key[96];
    snprintf(key, sizeof key, "%s.block_count", arch->name);
    rc = rc || lora_ggw_kv_u32(w, key, nl, err);
    snprintf(key, sizeof key, "%s.attention.head_count", arch->name);
    rc = rc || lora_ggw_kv_u32(w, key, (uint32_t)arch->heads, err);
    snprintf(key, sizeof key, "%s.attention.head_count_kv", arch->name);
    rc = rc || lora_ggw_kv_u32(w, key, (uint32_t)arch->kv_heads, err);
    /* an array and a float: key/values of every kind travel */
    int32_t tt[5] = {1, 3, 3, 1, 6};
    rc = rc || lora_ggw_kv_num(w, "tokenizer.ggml.token_type", LORA_GGUF_I32, 1, 5, tt, err);
    if (gpt2)
        return rc;
    /* llama's hyperparameters, as convert_hf_to_gguf.py writes them */
    static const char *const hp[][2] = {
        {"max_position_embeddings", "llama.context_length"},
        {"hidden_size", "llama.embedding_length"},
        {"intermediate_size", "llama.feed_forward_length"},
    };
    for (size_t k = 0; k < 3; k++) {
        json_t *x = json_object_get(cj, hp[k][0]);
        if (json_is_integer(x))
            rc = rc || lora_ggw_kv_u32(w, hp[k][1], (uint32_t)json_integer_value(x), err);
    }
    json_t *eps = json_object_get(cj, "rms_norm_eps"), *th = json_object_get(cj, "rope_theta");
    if (json_is_number(eps))
        rc = rc || lora_ggw_kv_f32(w, "llama.attention.layer_norm_rms_epsilon",
                                   (float)json_number_value(eps), err);
    rc = rc || lora_ggw_kv_f32(w, "llama.rope.freq_base",
                               json_is_number(th) ? (float)json_number_value(th) : 10000.0f, err);
    return rc;
}

/* Name, type, layout of each tensor, declared. */
static int declare_all(lora_ggw *w, const lora_gguf_arch *arch, const lora_st *st, plan *p,
                       const char *q8, int f32norms, lora_error *err)
{
    int gpt2 = !strcmp(arch->name, "gpt2");
    for (size_t i = 0; i < lora_st_count(st); i++) {
        const lora_tensor *t = lora_st_tensor(st, i);
        plan *q = &p[i];
        q->t = t;
        char mod[128];
        snprintf(mod, sizeof mod, "%s", t->name);
        char *dot = strrchr(mod, '.');
        int is_w = dot && !strcmp(dot, ".weight");
        if (is_w)
            *dot = 0;
        if (!(is_w && lora_gguf_name_from_hf(arch, mod, q->name, sizeof q->name) == 0) &&
            norm_name(arch->name, t->name, q->name, sizeof q->name) != 0) {
            if (strncmp(t->name, "blk.", 4) && strncmp(t->name, "output_norm.", 12))
                return fprintf(stderr, "mkgguf: no GGUF name for %s\n", t->name), 2;
            snprintf(q->name, sizeof q->name, "%s", t->name); /* already one (to-st) */
        }
        q->dt = f32norms && t->ndim == 1 ? LORA_DT_F32 : t->dtype;
        q->type = q8 && !strcmp(q8, t->name) ? 8 : ggml_of(q->dt);
        q->transpose = gpt2 && t->ndim == 2 && strstr(t->name, ".c_");
        if (arch->permute_qk && strstr(q->name, ".attn_q.weight"))
            q->permute_heads = (int)arch->heads;
        if (arch->permute_qk && strstr(q->name, ".attn_k.weight"))
            q->permute_heads = (int)arch->kv_heads;
        uint64_t ne[4];
        for (int d = 0; d < t->ndim; d++)
            ne[d] = t->shape[t->ndim - 1 - d];
        if (q->transpose) {
            uint64_t x = ne[0];
            ne[0] = ne[1];
            ne[1] = x;
        }
        if (lora_ggw_declare(w, q->name, q->type, t->ndim, ne, err))
            return die(q->name, err);
    }
    return 0;
}

/* One tensor's bytes: transposed, permuted, quantized or converted. */
static int write_one(lora_ggw *w, const plan *q, lora_error *err)
{
    const lora_tensor *t = q->t;
    uint64_t rows = t->ndim == 2 ? t->shape[0] : 1, cols = t->numel / rows;
    float *f = malloc(t->numel * sizeof *f), *g = malloc(t->numel * sizeof *g);
    unsigned char *out = malloc(t->numel * 4 + 64);
    if (!f || !g || !out || lora_decode_f32(t->dtype, t->data, f, t->numel))
        return die(t->name, NULL);
    if (q->transpose) {
        for (uint64_t r = 0; r < rows; r++)
            for (uint64_t c = 0; c < cols; c++)
                g[c * rows + r] = f[r * cols + c];
        memcpy(f, g, t->numel * sizeof *f);
    }
    if (q->permute_heads &&
        lora_gguf_permute_rows(g, f, rows, cols, 4, (uint64_t)q->permute_heads, 0, err))
        return die(t->name, err);
    if (q->permute_heads)
        memcpy(f, g, t->numel * sizeof *f);
    size_t nb;
    if (q->type == 8) {
        if (quantize_q8(f, t->numel, out))
            return fprintf(stderr, "mkgguf: %s: not whole Q8_0 blocks\n", t->name), 2;
        nb = (size_t)(t->numel / 32 * 34);
    } else if (q->dt == t->dtype && !q->transpose && !q->permute_heads) {
        memcpy(out, t->data, (size_t)t->nbytes); /* the bytes, not a round trip */
        nb = (size_t)t->nbytes;
    } else {
        lora_encode_f32(q->dt, f, out, t->numel);
        nb = (size_t)(t->numel * (lora_dtype_bits(q->dt) / 8));
        if (q->permute_heads && q->dt == t->dtype) /* the bytes, permuted */
            lora_gguf_permute_rows(out, t->data, rows, cols, lora_dtype_bits(q->dt) / 8,
                                   (uint64_t)q->permute_heads, 0, err);
    }
    int rc = lora_ggw_write(w, q->name, 0, out, nb, err) ? die(q->name, err) : 0;
    free(f);
    free(g);
    free(out);
    return rc;
}

static int from_st(int argc, char **argv)
{
    const char *q8 = NULL;
    uint32_t align = 0;
    int f32norms = 0;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "--q8") && i + 1 < argc)
            q8 = argv[++i];
        else if (!strcmp(argv[i], "--alignment") && i + 1 < argc)
            align = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--f32-norms"))
            f32norms = 1;
        else
            return fprintf(stderr, "mkgguf: unknown option %s\n", argv[i]), 2;
    }
    lora_error err = {0};
    lora_st *st;
    char *cfg;
    size_t cl;
    lora_gguf_arch arch;
    if (lora_st_open(argv[2], &st, &err))
        return die(argv[2], &err);
    if (lora_read_file(argv[3], 1 << 20, &cfg, &cl, &err) ||
        lora_gguf_arch_from_config(cfg, cl, &arch, &err))
        return die(argv[3], &err);
    json_t *cj = json_loadb(cfg, cl, 0, NULL);
    free(cfg);
    size_t n = lora_st_count(st);
    plan *p = calloc(n ? n : 1, sizeof *p);
    lora_ggw *w;
    if (!p || lora_ggw_new(argv[4], align, &w, &err))
        return die(argv[4], &err);
    if (write_kvs(w, &arch, cj, st, &err))
        return die("key/values", &err);
    json_decref(cj);
    int rc = declare_all(w, &arch, st, p, q8, f32norms, &err);
    if (rc)
        return rc;
    if (lora_ggw_start(w, &err))
        return die("start", &err);
    for (size_t i = 0; i < n; i++)
        if ((rc = write_one(w, &p[i], &err)))
            return rc;
    if (lora_ggw_commit(w, &err))
        return die(argv[4], &err);
    lora_st_close(st);
    free(p);
    return 0;
}

static int to_st(const char *in, const char *dir)
{
    lora_error err = {0};
    lora_gguf *g;
    if (lora_gguf_open(in, &g, &err))
        return die(in, &err);
    lora_gguf_arch arch;
    const char *an = lora_gguf_get_str(g, "general.architecture");
    if (!an || lora_gguf_arch_from_name(an, &arch, &err) || !arch.permute_qk)
        return die("a llama GGUF model is needed", &err);
    double h = 0, kvh = 0;
    lora_gguf_get_num(g, "llama.attention.head_count", &h);
    if (lora_gguf_get_num(g, "llama.attention.head_count_kv", &kvh))
        kvh = h;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    lora_stw *w;
    if (lora_stw_new(path, &w, &err))
        return die(path, &err);
    size_t n = lora_gguf_tensor_count(g);
    char (*names)[160] = calloc(n, sizeof *names);
    for (size_t i = 0; i < n; i++) {
        const lora_gguf_tensor *t = lora_gguf_tensor_at(g, i);
        if (t->dtype == LORA_DT_INVALID)
            return fprintf(stderr, "mkgguf: %s is quantized\n", t->name), 2;
        if (lora_gguf_name_to_hf(&arch, t->name, names[i], sizeof names[i] - 8) == 0)
            strcat(names[i], ".weight");
        else
            snprintf(names[i], sizeof names[i], "%s", t->name);
        uint64_t shape[4];
        for (int d = 0; d < t->ndim; d++)
            shape[d] = t->ne[t->ndim - 1 - d];
        if (lora_stw_declare(w, names[i], t->dtype, t->ndim, shape, &err))
            return die(names[i], &err);
    }
    if (lora_stw_start(w, &err))
        return die(path, &err);
    for (size_t i = 0; i < n; i++) {
        const lora_gguf_tensor *t = lora_gguf_tensor_at(g, i);
        const char *dot = strchr(t->name, '.');
        dot = dot ? strchr(dot + 1, '.') : NULL;
        int q = dot && !strcmp(dot, ".attn_q.weight"), k = dot && !strcmp(dot, ".attn_k.weight");
        const void *src = t->data;
        void *buf = NULL;
        if (q || k) {
            buf = malloc((size_t)t->nbytes);
            if (!buf || lora_gguf_permute_rows(buf, t->data, t->ne[1], t->ne[0],
                                               lora_dtype_bits(t->dtype) / 8,
                                               (uint64_t)(q ? h : kvh), 1, &err))
                return die(t->name, &err);
            src = buf;
        }
        if (lora_stw_write(w, names[i], 0, src, (size_t)t->nbytes, &err))
            return die(names[i], &err);
        free(buf);
    }
    if (lora_stw_commit(w, &err))
        return die(path, &err);
    const lora_gguf_tensor *emb = lora_gguf_find_tensor(g, "token_embd.weight");
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f || !emb)
        return die(path, NULL);
    fprintf(f, "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], "
               "\"num_attention_heads\": %.0f, \"num_key_value_heads\": %.0f, "
               "\"hidden_size\": %llu, \"vocab_size\": %llu}\n",
            h, kvh, (unsigned long long)emb->ne[0], (unsigned long long)emb->ne[1]);
    fclose(f);
    free(names);
    lora_gguf_close(g);
    return 0;
}

/* The first difference between the two files' tensors (all, or those
 * named), printed; 1 when there is one. */
static int first_difference(lora_gguf *a, lora_gguf *b, int argc, char **argv)
{
    size_t n = argc > 4 ? (size_t)(argc - 4) : lora_gguf_tensor_count(a);
    if (argc <= 4 && n != lora_gguf_tensor_count(b)) {
        printf("tensor counts differ: %zu and %zu\n", n, lora_gguf_tensor_count(b));
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        const lora_gguf_tensor *x = argc > 4 ? lora_gguf_find_tensor(a, argv[4 + i])
                                             : lora_gguf_tensor_at(a, i);
        const lora_gguf_tensor *y = x ? lora_gguf_find_tensor(b, x->name) : NULL;
        if (!x || !y) {
            printf("%s: missing\n", x ? x->name : argv[4 + i]);
            return 1;
        }
        if (x->type != y->type || x->ndim != y->ndim || memcmp(x->ne, y->ne, sizeof x->ne)) {
            printf("%s: type or shape differ (%s, %s)\n", x->name, lora_ggml_type_name(x->type),
                   lora_ggml_type_name(y->type));
            return 1;
        }
        if (memcmp(x->data, y->data, (size_t)x->nbytes)) {
            printf("%s: bytes differ\n", x->name);
            return 1;
        }
    }
    printf("%zu tensors the same\n", n);
    return 0;
}

static int same(int argc, char **argv)
{
    lora_error err = {0};
    lora_gguf *a, *b;
    if (lora_gguf_open(argv[2], &a, &err))
        return die(argv[2], &err);
    if (lora_gguf_open(argv[3], &b, &err)) {
        lora_gguf_close(a);
        return die(argv[3], &err);
    }
    int rc = first_difference(a, b, argc, argv);
    lora_gguf_close(a);
    lora_gguf_close(b);
    return rc;
}

static int types(const char *in)
{
    lora_error err = {0};
    lora_gguf *g;
    if (lora_gguf_open(in, &g, &err))
        return die(in, &err);
    for (size_t i = 0; i < lora_gguf_tensor_count(g); i++)
        printf("%s %s\n", lora_gguf_tensor_at(g, i)->name,
               lora_ggml_type_name(lora_gguf_tensor_at(g, i)->type));
    lora_gguf_close(g);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && !strcmp(argv[1], "from-st"))
        return from_st(argc, argv);
    if (argc == 4 && !strcmp(argv[1], "to-st"))
        return to_st(argv[2], argv[3]);
    if (argc >= 4 && !strcmp(argv[1], "same"))
        return same(argc, argv);
    if (argc == 3 && !strcmp(argv[1], "types"))
        return types(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "dataoff")) {
        lora_error err = {0};
        lora_gguf *g;
        if (lora_gguf_open(argv[2], &g, &err))
            return die(argv[2], &err);
        printf("%llu\n", (unsigned long long)lora_gguf_data_offset(g));
        lora_gguf_close(g);
        return 0;
    }
    fprintf(stderr, "usage: mkgguf from-st|to-st|same|types|dataoff ... (see tests/mkgguf.c)\n");
    return 2;
}

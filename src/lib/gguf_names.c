/*
 * gguf_names.c - how Hugging Face modules are named in GGUF, for the
 * architectures lora-convert supports, after llama.cpp's gguf-py
 * (tensor_mapping.py) and convert_hf_to_gguf.py:
 *
 *   llama (LlamaForCausalLM, MistralForCausalLM), qwen2, gemma2, gemma3:
 *     model.embed_tokens -> token_embd, lm_head -> output,
 *     model.layers.N.self_attn.{q,k,v,o}_proj -> blk.N.attn_{q,k,v,output},
 *     model.layers.N.mlp.{gate,up,down}_proj -> blk.N.ffn_{gate,up,down}
 *   phi3: self_attn.qkv_proj -> attn_qkv, o_proj -> attn_output,
 *     mlp.gate_up_proj -> ffn_up, mlp.down_proj -> ffn_down
 *   gpt2: wte -> token_embd, wpe -> position_embd, h.N.attn.c_attn ->
 *     blk.N.attn_qkv, h.N.attn.c_proj -> attn_output, h.N.mlp.c_fc ->
 *     ffn_up, h.N.mlp.c_proj -> ffn_down
 *
 * and llama.cpp's q/k row permutation for the llama architecture
 * (LlamaModel.permute: HF's rotate-half row order back to interleaved
 * pairs), which applies to lora_b exactly as to the weight.
 */
#include "gguf_int.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

typedef struct name_rule {
    const char *hf;       /* module path after the layer number ("self_attn.q_proj"),
                             or a whole path for layer-less names */
    const char *gguf;     /* "attn_q" (per layer) or "token_embd" */
    int layered;
} name_rule;

static const name_rule llama_rules[] = {
    {"embed_tokens", "token_embd", 0},    {"lm_head", "output", 0},
    {"self_attn.q_proj", "attn_q", 1},    {"self_attn.k_proj", "attn_k", 1},
    {"self_attn.v_proj", "attn_v", 1},    {"self_attn.o_proj", "attn_output", 1},
    {"mlp.gate_proj", "ffn_gate", 1},     {"mlp.up_proj", "ffn_up", 1},
    {"mlp.down_proj", "ffn_down", 1},     {NULL, NULL, 0},
};

static const name_rule phi3_rules[] = {
    {"embed_tokens", "token_embd", 0},    {"lm_head", "output", 0},
    {"self_attn.qkv_proj", "attn_qkv", 1}, {"self_attn.o_proj", "attn_output", 1},
    {"mlp.gate_up_proj", "ffn_up", 1},    {"mlp.down_proj", "ffn_down", 1},
    {NULL, NULL, 0},
};

static const name_rule gpt2_rules[] = {
    {"wte", "token_embd", 0},             {"wpe", "position_embd", 0},
    {"lm_head", "output", 0},             {"attn.c_attn", "attn_qkv", 1},
    {"attn.c_proj", "attn_output", 1},    {"mlp.c_fc", "ffn_up", 1},
    {"mlp.c_proj", "ffn_down", 1},        {NULL, NULL, 0},
};

static const struct {
    const char *model_type, *arch;
    int permute, tied_default;
    const name_rule *rules;
} archs[] = {
    {"llama", "llama", 1, 0, llama_rules},     {"mistral", "llama", 1, 0, llama_rules},
    {"qwen2", "qwen2", 0, 0, llama_rules},     {"gemma2", "gemma2", 0, 1, llama_rules},
    {"gemma3", "gemma3", 0, 1, llama_rules},   {"gemma3_text", "gemma3", 0, 1, llama_rules},
    {"phi3", "phi3", 0, 0, phi3_rules},        {"gpt2", "gpt2", 0, 1, gpt2_rules},
};
#define N_ARCHS (sizeof archs / sizeof archs[0])

static const name_rule *rules_of(const lora_gguf_arch *a)
{
    for (size_t i = 0; i < N_ARCHS; i++)
        if (strcmp(archs[i].arch, a->name) == 0)
            return archs[i].rules;
    return NULL;
}

static const char *known_list(void)
{
    return "llama, mistral, qwen2, gemma2, gemma3, phi3, gpt2";
}

int lora_gguf_arch_from_name(const char *name, lora_gguf_arch *arch, lora_error *err)
{
    memset(arch, 0, sizeof *arch);
    for (size_t i = 0; i < N_ARCHS; i++)
        if (strcmp(archs[i].arch, name) == 0) {
            snprintf(arch->name, sizeof arch->name, "%s", archs[i].arch);
            snprintf(arch->model_type, sizeof arch->model_type, "%s", archs[i].model_type);
            arch->permute_qk = archs[i].permute;
            arch->tied = archs[i].tied_default;
            return LORA_OK;
        }
    return lora_seterr(err, LORA_EINPUT,
                       "architecture \"%s\" is not one lora-convert knows (%s)", name,
                       known_list());
}

static int get_u64(json_t *o, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > 1 << 20)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int lora_gguf_arch_from_config(const char *text, size_t len, lora_gguf_arch *arch,
                               lora_error *err)
{
    memset(arch, 0, sizeof *arch);
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return lora_seterr(err, LORA_EINPUT, "config.json: not a JSON object (%s)", je.text);
    }
    int rc = LORA_OK;
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    json_t *tc = json_object_get(root, "text_config");
    json_t *hp = json_is_object(tc) ? tc : root;  /* multimodal gemma3: text hyperparameters */
    size_t i;
    for (i = 0; mt && i < N_ARCHS; i++)
        if (strcmp(archs[i].model_type, mt) == 0)
            break;
    if (!mt || i == N_ARCHS) {
        rc = lora_seterr(err, LORA_EINPUT,
                         "config.json: model_type \"%s\" is not one lora-convert knows (%s)",
                         mt ? mt : "(none)", known_list());
        goto done;
    }
    snprintf(arch->name, sizeof arch->name, "%s", archs[i].arch);
    snprintf(arch->model_type, sizeof arch->model_type, "%s", mt);
    arch->permute_qk = archs[i].permute;
    arch->tied = archs[i].tied_default;
    json_t *tied = json_object_get(root, "tie_word_embeddings");
    if (!json_is_boolean(tied))
        tied = json_object_get(hp, "tie_word_embeddings");
    if (json_is_boolean(tied))
        arch->tied = json_is_true(tied);
    if (get_u64(hp, "num_attention_heads", &arch->heads) && get_u64(hp, "n_head", &arch->heads))
        arch->heads = 0;
    if (get_u64(hp, "num_key_value_heads", &arch->kv_heads))
        arch->kv_heads = arch->heads;
    if (arch->permute_qk && (!arch->heads || !arch->kv_heads))
        rc = lora_seterr(err, LORA_EINPUT,
                         "config.json: num_attention_heads is missing or not a positive integer "
                         "(llama's q/k rows are permuted by head)");
done:
    json_decref(root);
    return rc;
}

/* "a.b" after dropping the wrappers a base model may add. */
static const char *strip_prefixes(const char *m, char *buf, size_t cap)
{
    if (strncmp(m, "model.language_model.", 21) == 0) {
        snprintf(buf, cap, "model.%s", m + 21);
        m = buf;
    } else if (strncmp(m, "language_model.", 15) == 0) {
        m += 15;
    }
    if (strncmp(m, "model.", 6) == 0)
        m += 6;
    else if (strncmp(m, "transformer.", 12) == 0)
        m += 12;
    return m;
}

int lora_gguf_name_from_hf(const lora_gguf_arch *arch, const char *module, char *out, size_t cap)
{
    const name_rule *rules = rules_of(arch);
    char buf[512];
    if (!rules || strlen(module) >= sizeof buf)
        return -1;
    const char *m = strip_prefixes(module, buf, sizeof buf);
    /* lm_head sits outside model. / transformer. */
    int gpt2 = strcmp(arch->name, "gpt2") == 0;
    const char *lay = gpt2 ? "h." : "layers.";
    size_t ll = strlen(lay);
    for (const name_rule *r = rules; r->hf; r++) {
        if (!r->layered) {
            if (strcmp(m, r->hf) == 0)
                return snprintf(out, cap, "%s.weight", r->gguf) < (int)cap ? 0 : -1;
            continue;
        }
        if (strncmp(m, lay, ll) != 0)
            continue;
        const char *p = m + ll;
        char *end;
        if (*p < '0' || *p > '9')
            continue;
        unsigned long n = strtoul(p, &end, 10);
        if (*end != '.' || n > 100000 || (p[0] == '0' && end != p + 1))
            continue;
        if (strcmp(end + 1, r->hf) == 0)
            return snprintf(out, cap, "blk.%lu.%s.weight", n, r->gguf) < (int)cap ? 0 : -1;
    }
    return -1;
}

int lora_gguf_name_to_hf(const lora_gguf_arch *arch, const char *gguf, char *out, size_t cap)
{
    const name_rule *rules = rules_of(arch);
    if (!rules)
        return -1;
    size_t n = strlen(gguf);
    if (n < 8 || strcmp(gguf + n - 7, ".weight") != 0 || n >= 256)
        return -1;
    char base[256];
    memcpy(base, gguf, n - 7);
    base[n - 7] = '\0';
    int gpt2 = strcmp(arch->name, "gpt2") == 0;
    const char *pre = gpt2 ? "transformer." : "model.";
    for (const name_rule *r = rules; r->hf; r++) {
        if (!r->layered) {
            if (strcmp(base, r->gguf) != 0)
                continue;
            if (strcmp(r->hf, "lm_head") == 0)
                return snprintf(out, cap, "lm_head") < (int)cap ? 0 : -1;
            return snprintf(out, cap, "%s%s", pre, r->hf) < (int)cap ? 0 : -1;
        }
        if (strncmp(base, "blk.", 4) != 0 || base[4] < '0' || base[4] > '9')
            continue;
        char *end;
        unsigned long b = strtoul(base + 4, &end, 10);
        if (*end != '.' || b > 100000 || (base[4] == '0' && end != base + 5))
            continue;
        if (strcmp(end + 1, r->gguf) == 0)
            return snprintf(out, cap, "%s%s%lu.%s", pre, gpt2 ? "h." : "layers.", b, r->hf) <
                           (int)cap
                       ? 0
                       : -1;
    }
    return -1;
}

int lora_gguf_permute_rows(void *dst, const void *src, uint64_t rows, uint64_t cols,
                           size_t esize, uint64_t n_head, int inverse, lora_error *err)
{
    if (n_head == 0 || rows % (2 * n_head) != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "%llu rows cannot be split into %llu heads of an even size",
                           (unsigned long long)rows, (unsigned long long)n_head);
    uint64_t hd = rows / n_head, half = hd / 2;
    size_t row = (size_t)cols * esize;
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (uint64_t h = 0; h < n_head; h++)
        for (uint64_t j = 0; j < half; j++)
            for (uint64_t t = 0; t < 2; t++) {
                uint64_t inter = h * hd + 2 * j + t, halves = h * hd + t * half + j;
                uint64_t to = inverse ? halves : inter, from = inverse ? inter : halves;
                memcpy(d + to * row, s + from * row, row);
            }
    return LORA_OK;
}

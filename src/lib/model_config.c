/*
 * model_config.c - Hugging Face config.json for the causal language
 * models of model.c: the architecture (GPT-2 or the LLaMA family), sizes
 * within the limits of lora.h and consistent with each other, and every
 * option that would change the forward pass in a way model.c does not
 * compute (activations, attention scaling, RoPE scaling types, sliding
 * windows) refused by name rather than ignored.
 */
#include "internal.h"

#include <jansson.h>
#include <math.h>
#include <string.h>
/* ------------------------------------------------------------------ */
/* config.json                                                          */
/* ------------------------------------------------------------------ */

/* An unsigned integer key: absent or null gives dflt (a negative dflt
 * means the key is required); anything but an integer in [lo, hi] is an
 * error naming the key. */
static int cfg_uint(json_t *o, const char *key, int64_t dflt, uint64_t lo, uint64_t hi,
                    uint64_t *out, lora_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (dflt < 0)
            return lora_seterr(err, LORA_EINPUT, "config.json: \"%s\" is missing", key);
        *out = (uint64_t)dflt;
        return LORA_OK;
    }
    if (!json_is_integer(v))
        return lora_seterr(err, LORA_EINPUT, "config.json: \"%s\" is not an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x < lo || (uint64_t)x > hi)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: \"%s\" = %lld is out of range [%llu, %llu]", key,
                           (long long)x, (unsigned long long)lo, (unsigned long long)hi);
    *out = (uint64_t)x;
    return LORA_OK;
}

static int cfg_num(json_t *o, const char *key, double dflt, double lo, double hi, double *out,
                   lora_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return LORA_OK;
    }
    if (!json_is_number(v))
        return lora_seterr(err, LORA_EINPUT, "config.json: \"%s\" is not a number", key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return lora_seterr(err, LORA_EINPUT, "config.json: \"%s\" = %g is out of range [%g, %g]",
                           key, x, lo, hi);
    *out = x;
    return LORA_OK;
}

static int cfg_bool(json_t *o, const char *key, int dflt, int *out, lora_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return LORA_OK;
    }
    if (!json_is_boolean(v))
        return lora_seterr(err, LORA_EINPUT, "config.json: \"%s\" is not true or false", key);
    *out = json_is_true(v);
    return LORA_OK;
}

static int cfg_str(json_t *o, const char *key, const char *dflt, const char **out,
                   lora_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return LORA_OK;
    }
    if (!json_is_string(v))
        return lora_seterr(err, LORA_EINPUT, "config.json: \"%s\" is not a string", key);
    *out = json_string_value(v);
    return LORA_OK;
}

#define TRY(x)                  \
    do {                        \
        int rc_ = (x);          \
        if (rc_ != LORA_OK)     \
            return rc_;         \
    } while (0)

static int parse_gpt2(json_t *o, lora_model_config *c, lora_error *err)
{
    TRY(cfg_uint(o, "vocab_size", 50257, 1, LORA_MODEL_MAX_VOCAB, &c->vocab, err));
    TRY(cfg_uint(o, "n_embd", 768, 1, LORA_MODEL_MAX_HIDDEN, &c->hidden, err));
    TRY(cfg_uint(o, "n_layer", 12, 1, LORA_MODEL_MAX_LAYERS, &c->layers, err));
    TRY(cfg_uint(o, "n_head", 12, 1, LORA_MODEL_MAX_HIDDEN, &c->heads, err));
    TRY(cfg_uint(o, "n_inner", 0, 1, 16 * LORA_MODEL_MAX_HIDDEN, &c->inner, err));
    if (c->inner == 0)
        c->inner = 4 * c->hidden;
    uint64_t ctx;
    TRY(cfg_uint(o, "n_ctx", 1024, 1, LORA_MODEL_MAX_POSITIONS, &ctx, err));
    TRY(cfg_uint(o, "n_positions", (int64_t)ctx, 1, LORA_MODEL_MAX_POSITIONS, &c->max_positions,
                 err));
    TRY(cfg_num(o, "layer_norm_epsilon", 1e-5, 0.0, 1.0, &c->norm_eps, err));
    TRY(cfg_bool(o, "tie_word_embeddings", 1, &c->tied, err));
    const char *act = NULL;
    TRY(cfg_str(o, "activation_function", "gelu_new", &act, err));
    if (strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: activation_function \"%s\" is not supported "
                           "(gelu_new only)", act);
    int b;
    TRY(cfg_bool(o, "scale_attn_weights", 1, &b, err));
    if (!b)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: scale_attn_weights false is not supported");
    TRY(cfg_bool(o, "scale_attn_by_inverse_layer_idx", 0, &b, err));
    if (b)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: scale_attn_by_inverse_layer_idx is not supported");
    if (c->hidden % c->heads != 0)
        return lora_seterr(err, LORA_EINPUT, "config.json: n_embd %llu is not a multiple of n_head %llu",
                           (unsigned long long)c->hidden, (unsigned long long)c->heads);
    c->kv_heads = c->heads;
    c->head_dim = c->hidden / c->heads;
    return LORA_OK;
}

static int parse_rope(json_t *o, lora_model_config *c, lora_error *err)
{
    json_t *params = json_object_get(o, "rope_parameters");  /* transformers v5 */
    json_t *scaling = json_object_get(o, "rope_scaling");
    if (params && !json_is_null(params)) {
        if (!json_is_object(params))
            return lora_seterr(err, LORA_EINPUT, "config.json: \"rope_parameters\" is not an object");
        scaling = params;
        TRY(cfg_num(params, "rope_theta", c->rope_theta, 1e-6, 1e30, &c->rope_theta, err));
    }
    c->rope_type = LORA_ROPE_NONE;
    if (!scaling || json_is_null(scaling))
        return LORA_OK;
    if (!json_is_object(scaling))
        return lora_seterr(err, LORA_EINPUT, "config.json: \"rope_scaling\" is not an object");
    const char *type = NULL;
    TRY(cfg_str(scaling, "rope_type", NULL, &type, err));
    if (!type)
        TRY(cfg_str(scaling, "type", NULL, &type, err));
    if (!type || strcmp(type, "default") == 0)
        return LORA_OK;
    if (strcmp(type, "linear") == 0) {
        c->rope_type = LORA_ROPE_LINEAR;
        TRY(cfg_num(scaling, "factor", NAN, 1e-6, 1e6, &c->rope_factor, err));
        if (isnan(c->rope_factor))
            return lora_seterr(err, LORA_EINPUT, "config.json: rope_scaling linear lacks \"factor\"");
        return LORA_OK;
    }
    if (strcmp(type, "llama3") == 0) {
        c->rope_type = LORA_ROPE_LLAMA3;
        TRY(cfg_num(scaling, "factor", NAN, 1e-6, 1e6, &c->rope_factor, err));
        TRY(cfg_num(scaling, "low_freq_factor", NAN, 1e-6, 1e6, &c->rope_low_freq, err));
        TRY(cfg_num(scaling, "high_freq_factor", NAN, 1e-6, 1e6, &c->rope_high_freq, err));
        TRY(cfg_uint(scaling, "original_max_position_embeddings", -1, 1, LORA_MODEL_MAX_POSITIONS,
                     &c->rope_original_max, err));
        if (isnan(c->rope_factor) || isnan(c->rope_low_freq) || isnan(c->rope_high_freq))
            return lora_seterr(err, LORA_EINPUT,
                               "config.json: rope_scaling llama3 needs factor, low_freq_factor "
                               "and high_freq_factor");
        if (!(c->rope_high_freq > c->rope_low_freq))
            return lora_seterr(err, LORA_EINPUT,
                               "config.json: rope_scaling llama3: high_freq_factor must exceed "
                               "low_freq_factor");
        return LORA_OK;
    }
    return lora_seterr(err, LORA_EINPUT, "config.json: rope_scaling type \"%s\" is not supported "
                       "(linear and llama3 are)", type);
}

static int parse_llama(json_t *o, lora_model_config *c, lora_error *err)
{
    TRY(cfg_uint(o, "vocab_size", 32000, 1, LORA_MODEL_MAX_VOCAB, &c->vocab, err));
    TRY(cfg_uint(o, "hidden_size", 4096, 1, LORA_MODEL_MAX_HIDDEN, &c->hidden, err));
    TRY(cfg_uint(o, "intermediate_size", 11008, 1, 16 * LORA_MODEL_MAX_HIDDEN, &c->inner, err));
    TRY(cfg_uint(o, "num_hidden_layers", 32, 1, LORA_MODEL_MAX_LAYERS, &c->layers, err));
    TRY(cfg_uint(o, "num_attention_heads", 32, 1, LORA_MODEL_MAX_HIDDEN, &c->heads, err));
    TRY(cfg_uint(o, "num_key_value_heads", (int64_t)c->heads, 1, c->heads, &c->kv_heads, err));
    if (c->heads % c->kv_heads != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: num_attention_heads %llu is not a multiple of "
                           "num_key_value_heads %llu",
                           (unsigned long long)c->heads, (unsigned long long)c->kv_heads);
    TRY(cfg_uint(o, "head_dim", 0, 2, LORA_MODEL_MAX_HIDDEN, &c->head_dim, err));
    if (c->head_dim == 0) {
        if (c->hidden % c->heads != 0)
            return lora_seterr(err, LORA_EINPUT,
                               "config.json: hidden_size %llu is not a multiple of "
                               "num_attention_heads %llu",
                               (unsigned long long)c->hidden, (unsigned long long)c->heads);
        c->head_dim = c->hidden / c->heads;
    }
    if (c->head_dim % 2 != 0)
        return lora_seterr(err, LORA_EINPUT, "config.json: head_dim %llu is odd (RoPE needs pairs)",
                           (unsigned long long)c->head_dim);
    if (c->heads * c->head_dim > LORA_MODEL_MAX_HIDDEN * 4)
        return lora_seterr(err, LORA_EINPUT, "config.json: num_attention_heads × head_dim is too large");
    TRY(cfg_uint(o, "max_position_embeddings", 2048, 1, LORA_MODEL_MAX_POSITIONS,
                 &c->max_positions, err));
    TRY(cfg_num(o, "rms_norm_eps", 1e-6, 0.0, 1.0, &c->norm_eps, err));
    TRY(cfg_num(o, "rope_theta", 10000.0, 1e-6, 1e30, &c->rope_theta, err));
    TRY(cfg_bool(o, "tie_word_embeddings", 0, &c->tied, err));
    int ab, mb;
    TRY(cfg_bool(o, "attention_bias", 0, &ab, err));
    TRY(cfg_bool(o, "mlp_bias", 0, &mb, err));
    c->qkv_bias = ab || strcmp(c->architecture, "Qwen2ForCausalLM") == 0;
    c->o_bias = ab;
    c->mlp_bias = mb;
    const char *act = NULL;
    TRY(cfg_str(o, "hidden_act", "silu", &act, err));
    if (strcmp(act, "silu") != 0)
        return lora_seterr(err, LORA_EINPUT, "config.json: hidden_act \"%s\" is not supported (silu only)",
                           act);
    /* A sliding window changes attention only past its length: refuse
     * sequences that long instead of computing them wrongly. */
    json_t *sw = json_object_get(o, "sliding_window");
    int use_sw = 1;
    TRY(cfg_bool(o, "use_sliding_window", 1, &use_sw, err));
    if (use_sw && sw && !json_is_null(sw)) {
        uint64_t w;
        TRY(cfg_uint(o, "sliding_window", 0, 1, LORA_MODEL_MAX_POSITIONS, &w, err));
        if (w < c->max_positions)
            c->max_positions = w;
    }
    return parse_rope(o, c, err);
}

int lora_model_config_parse(const char *json, size_t len, lora_model_config *cfg,
                            lora_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    if (len > LORA_MODEL_MAX_CONFIG)
        return lora_seterr(err, LORA_EINPUT, "config.json: larger than %u bytes",
                           LORA_MODEL_MAX_CONFIG);
    json_error_t je;
    json_t *o = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        return lora_seterr(err, LORA_EINPUT, "config.json: line %d: %s", je.line, je.text);
    int rc = LORA_OK;
    if (!json_is_object(o)) {
        rc = lora_seterr(err, LORA_EINPUT, "config.json: not a JSON object");
        goto out;
    }
    const char *arch = NULL;
    json_t *archs = json_object_get(o, "architectures");
    if (archs && !json_is_null(archs)) {
        if (!json_is_array(archs) || json_array_size(archs) < 1 ||
            !json_is_string(json_array_get(archs, 0))) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "config.json: \"architectures\" is not a list of names");
            goto out;
        }
        arch = json_string_value(json_array_get(archs, 0));
    } else {
        const char *mt = NULL;
        if ((rc = cfg_str(o, "model_type", NULL, &mt, err)) != LORA_OK)
            goto out;
        if (!mt) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "config.json: neither \"architectures\" nor \"model_type\" is given");
            goto out;
        }
        static const char *const map[][2] = {{"gpt2", "GPT2LMHeadModel"},
                                             {"llama", "LlamaForCausalLM"},
                                             {"mistral", "MistralForCausalLM"},
                                             {"qwen2", "Qwen2ForCausalLM"}};
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (strcmp(mt, map[i][0]) == 0)
                arch = map[i][1];
        if (!arch) {
            rc = lora_seterr(err, LORA_EINPUT, "config.json: model_type \"%.64s\" is not supported "
                             "(gpt2, llama, mistral, qwen2 are)", mt);
            goto out;
        }
    }
    if (strlen(arch) >= sizeof cfg->architecture) {
        rc = lora_seterr(err, LORA_EINPUT, "config.json: architecture name too long");
        goto out;
    }
    strcpy(cfg->architecture, arch);
    if (strcmp(arch, "GPT2LMHeadModel") == 0) {
        cfg->arch = LORA_ARCH_GPT2;
        rc = parse_gpt2(o, cfg, err);
    } else if (strcmp(arch, "LlamaForCausalLM") == 0 || strcmp(arch, "MistralForCausalLM") == 0 ||
               strcmp(arch, "Qwen2ForCausalLM") == 0) {
        cfg->arch = LORA_ARCH_LLAMA;
        rc = parse_llama(o, cfg, err);
    } else {
        rc = lora_seterr(err, LORA_EINPUT,
                         "config.json: architecture %s is not supported (GPT2LMHeadModel, "
                         "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM are)", arch);
    }
out:
    json_decref(o);
    return rc;
}

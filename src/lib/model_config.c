/*
 * model_config.c - Hugging Face config.json for the causal language
 * models of model.c: the architecture (GPT-2, the LLaMA family, Qwen3, OPT,
 * Phi, GPT-NeoX), sizes
 * within the limits of lora.h and consistent with each other, and every
 * option that would change the forward pass in a way model.c does not
 * compute (activations, attention scaling, RoPE scaling types, sliding
 * windows) refused by name rather than ignored.
 */
#include "model_internal.h"

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
    c->qkv_bias = c->o_bias = c->mlp_bias = 1;
    c->embed_dim = c->hidden;
    return LORA_OK;
}

/* A list of n positive numbers. */
static int cfg_factors(json_t *s, const char *key, uint64_t n, double *out, lora_error *err)
{
    json_t *a = json_object_get(s, key);
    if (!json_is_array(a) || json_array_size(a) != n)
        return lora_seterr(err, LORA_EINPUT, "config.json: rope_scaling longrope: \"%s\" is not a "
                           "list of %llu numbers (rotary dimensions / 2)", key, (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        out[i] = json_is_number(v) ? json_number_value(v) : -1;
        if (!(out[i] > 0 && out[i] < 1e12))
            return lora_seterr(err, LORA_EINPUT, "config.json: rope_scaling longrope: %s[%llu] is "
                               "not a positive number", key, (unsigned long long)i);
    }
    return LORA_OK;
}

/* transformers' _compute_longrope_parameters: factors per frequency,
 * attention_factor (default sqrt(1 + ln(max / original_max) /
 * ln(original_max)) when max_position_embeddings exceeds
 * original_max_position_embeddings, else 1).  rotary_dim must be known. */
static int parse_longrope(json_t *o, json_t *s, lora_model_config *c, lora_error *err)
{
    uint64_t n = (c->rotary_dim ? c->rotary_dim : c->head_dim) / 2;
    if (n > LORA_ROPE_MAX_FACTORS)
        return lora_seterr(err, LORA_EINPUT, "config.json: longrope over %llu frequencies is more "
                           "than %d", (unsigned long long)n, LORA_ROPE_MAX_FACTORS);
    c->rope_nfactors = n;
    TRY(cfg_factors(s, "long_factor", n, c->rope_long, err));
    TRY(cfg_factors(s, "short_factor", n, c->rope_short, err));
    TRY(cfg_uint(o, "original_max_position_embeddings", (int64_t)c->max_positions, 1,
                 LORA_MODEL_MAX_POSITIONS, &c->rope_original_max, err));
    double factor = (double)c->max_positions / (double)c->rope_original_max;
    double dflt = factor <= 1.0 || c->rope_original_max < 2
                      ? 1.0
                      : sqrt(1 + log(factor) / log((double)c->rope_original_max));
    TRY(cfg_num(s, "attention_factor", dflt, 1e-6, 1e6, &c->rope_attn_factor, err));
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
    if (strcmp(type, "longrope") == 0 || strcmp(type, "su") == 0) {
        c->rope_type = LORA_ROPE_LONGROPE;
        return parse_longrope(o, scaling, c, err);
    }
    return lora_seterr(err, LORA_EINPUT, "config.json: rope_scaling type \"%s\" is not supported "
                       "(linear, llama3 and longrope are)", type);
}

/* layer_types as written by current transformers, in one of the two
 * patterns the forward expresses: the last layers sliding (Qwen2/3:
 * i >= max_window_layers; Mistral: all), or every layer but each P-th
 * (Gemma: sliding iff (i + 1) % P != 0).  Anything else is refused. */
static int parse_layer_types(json_t *o, lora_model_config *c, lora_error *err)
{
    json_t *lt = json_object_get(o, "layer_types");
    if (!lt || json_is_null(lt))
        return LORA_OK;
    if (!json_is_array(lt) || json_array_size(lt) != c->layers)
        return lora_seterr(err, LORA_EINPUT, "config.json: \"layer_types\" is not a list of "
                           "num_hidden_layers names");
    uint64_t first_sliding = c->layers, first_full = c->layers;
    char kind[LORA_MODEL_MAX_LAYERS];
    for (uint64_t i = 0; i < c->layers; i++) {
        const char *s = json_string_value(json_array_get(lt, i));
        int sliding = s && strcmp(s, "sliding_attention") == 0;
        if (!s || (!sliding && strcmp(s, "full_attention") != 0))
            return lora_seterr(err, LORA_EINPUT, "config.json: layer_types[%llu] is not "
                               "\"full_attention\" or \"sliding_attention\"",
                               (unsigned long long)i);
        kind[i] = (char)sliding;
        if (sliding && first_sliding == c->layers)
            first_sliding = i;
        if (!sliding && first_full == c->layers)
            first_full = i;
    }
    c->window_from = first_sliding;
    c->window_period = first_sliding == 0 && first_full < c->layers ? first_full + 1 : 0;
    if (first_sliding == c->layers)
        c->sliding_window = 0;
    else if (!c->sliding_window)
        return lora_seterr(err, LORA_EINPUT, "config.json: layer_types has sliding layers but "
                           "sliding_window is null");
    for (uint64_t i = 0; i < c->layers; i++)
        if ((char)layer_windowed(c, i) != kind[i])
            return lora_seterr(err, LORA_EINPUT, "config.json: layer_types: this pattern of "
                               "sliding and full-attention layers is not supported");
    return LORA_OK;
}

/* Sliding-window attention, as transformers' configs define it: Mistral
 * windows every layer (sliding_window absent: 4096, null: none); Qwen2
 * and Qwen3 only with use_sliding_window, on layers >= max_window_layers;
 * LLaMA has none.  The window limits attention, not the sequence. */
static int parse_window(json_t *o, lora_model_config *c, lora_error *err)
{
    const char *a = c->architecture;
    int mistral = strcmp(a, "MistralForCausalLM") == 0;
    int phi3 = strcmp(a, "Phi3ForCausalLM") == 0;
    int qwen = strcmp(a, "Qwen2ForCausalLM") == 0 || strcmp(a, "Qwen3ForCausalLM") == 0;
    c->sliding_window = 0;
    c->window_from = 0;
    if (!mistral && !qwen && !phi3)
        return LORA_OK;
    int use = 1;
    if (qwen)
        TRY(cfg_bool(o, "use_sliding_window", 0, &use, err));
    json_t *sw = json_object_get(o, "sliding_window");
    /* Phi3Config's sliding_window defaults to None, Mistral's to 4096 */
    if (use && !(sw && json_is_null(sw)))
        TRY(cfg_uint(o, "sliding_window", phi3 ? 0 : 4096, 0, LORA_MODEL_MAX_POSITIONS,
                     &c->sliding_window, err));
    if (qwen && c->sliding_window)
        TRY(cfg_uint(o, "max_window_layers", 28, 0, LORA_MODEL_MAX_LAYERS, &c->window_from, err));
    return parse_layer_types(o, c, err);
}

static int set_rotary(lora_model_config *c, double frac, lora_error *err);

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
    /* Qwen3Config's head_dim defaults to 128, not hidden / heads */
    TRY(cfg_uint(o, "head_dim", c->arch == LORA_ARCH_QWEN3 ? 128 : 0, 2, LORA_MODEL_MAX_HIDDEN,
                 &c->head_dim, err));
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
    c->embed_dim = c->hidden;
    const char *act = NULL;
    TRY(cfg_str(o, "hidden_act", "silu", &act, err));
    if (strcmp(act, "silu") != 0)
        return lora_seterr(err, LORA_EINPUT, "config.json: hidden_act \"%s\" is not supported (silu only)",
                           act);
    TRY(parse_window(o, c, err));
    if (c->arch == LORA_ARCH_PHI3) {
        /* partial_rotary_factor (Phi-3.5/4 mini), before the longrope factors */
        double frac = 1.0;
        TRY(cfg_num(o, "partial_rotary_factor", 1.0, 0.0, 1.0, &frac, err));
        if (frac < 1.0)
            TRY(set_rotary(c, frac, err));
    } else if (json_is_object(json_object_get(o, "rope_scaling"))) {
        const char *ty = NULL;
        json_t *rs = json_object_get(o, "rope_scaling");
        TRY(cfg_str(rs, "rope_type", NULL, &ty, err));
        if (!ty)
            TRY(cfg_str(rs, "type", "", &ty, err));
        if (strcmp(ty, "longrope") == 0 || strcmp(ty, "su") == 0)
            return lora_seterr(err, LORA_EINPUT, "config.json: rope_scaling longrope is supported "
                               "for Phi3ForCausalLM only");
    }
    return parse_rope(o, c, err);
}

/* OPTConfig: LayerNorm (eps 1e-5, nn.LayerNorm's default), ReLU,
 * learned positions offset by 2, biases unless enable_bias false,
 * project_in/out when word_embed_proj_dim differs from hidden_size. */
static int parse_opt(json_t *o, lora_model_config *c, lora_error *err)
{
    TRY(cfg_uint(o, "vocab_size", 50272, 1, LORA_MODEL_MAX_VOCAB, &c->vocab, err));
    TRY(cfg_uint(o, "hidden_size", 768, 1, LORA_MODEL_MAX_HIDDEN, &c->hidden, err));
    TRY(cfg_uint(o, "ffn_dim", 3072, 1, 16 * LORA_MODEL_MAX_HIDDEN, &c->inner, err));
    TRY(cfg_uint(o, "num_hidden_layers", 12, 1, LORA_MODEL_MAX_LAYERS, &c->layers, err));
    TRY(cfg_uint(o, "num_attention_heads", 12, 1, LORA_MODEL_MAX_HIDDEN, &c->heads, err));
    TRY(cfg_uint(o, "max_position_embeddings", 2048, 1, LORA_MODEL_MAX_POSITIONS, &c->max_positions,
                 err));
    TRY(cfg_uint(o, "word_embed_proj_dim", (int64_t)c->hidden, 1, LORA_MODEL_MAX_HIDDEN,
                 &c->embed_dim, err));
    TRY(cfg_bool(o, "tie_word_embeddings", 1, &c->tied, err));
    int pre = 1, bias = 1, affine = 1, remove_final = 0;
    TRY(cfg_bool(o, "do_layer_norm_before", 1, &pre, err));
    TRY(cfg_bool(o, "enable_bias", 1, &bias, err));
    TRY(cfg_bool(o, "layer_norm_elementwise_affine", 1, &affine, err));
    TRY(cfg_bool(o, "_remove_final_layer_norm", 0, &remove_final, err));
    if (!affine)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: layer_norm_elementwise_affine false is not supported");
    if (remove_final && pre)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: _remove_final_layer_norm is not supported");
    c->post_norm = !pre;
    c->qkv_bias = c->o_bias = c->mlp_bias = bias;
    c->norm_eps = 1e-5;
    const char *act = NULL;
    TRY(cfg_str(o, "activation_function", "relu", &act, err));
    if (strcmp(act, "relu") != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: activation_function \"%s\" is not supported (relu only)",
                           act);
    if (c->hidden % c->heads != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: hidden_size %llu is not a multiple of num_attention_heads %llu",
                           (unsigned long long)c->hidden, (unsigned long long)c->heads);
    c->kv_heads = c->heads;
    c->head_dim = c->hidden / c->heads;
    return LORA_OK;
}

/* The gelu variants of config.json's hidden_act. */
static int parse_gelu(json_t *o, const char *key, const char *dflt, lora_model_config *c,
                      lora_error *err)
{
    const char *act = NULL;
    TRY(cfg_str(o, key, dflt, &act, err));
    if (strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0)
        c->act = ACT_GELU_TANH;
    else if (strcmp(act, "gelu") == 0)
        c->act = ACT_GELU;
    else
        return lora_seterr(err, LORA_EINPUT, "config.json: %s \"%s\" is not supported "
                           "(gelu, gelu_new, gelu_pytorch_tanh are)", key, act);
    return LORA_OK;
}

/* Partial rotary: RoPE on int(head_dim · fraction) dimensions, as
 * transformers truncates it; refused when that is odd or zero. */
static int set_rotary(lora_model_config *c, double frac, lora_error *err)
{
    c->rotary_dim = (uint64_t)((double)c->head_dim * frac);
    if (c->rotary_dim < 2 || c->rotary_dim % 2 != 0)
        return lora_seterr(err, LORA_EINPUT, "config.json: a rotary fraction of %g of head_dim %llu "
                           "gives %llu dimensions (RoPE needs an even, non-zero number)", frac,
                           (unsigned long long)c->head_dim, (unsigned long long)c->rotary_dim);
    return LORA_OK;
}

/* Sizes shared by Phi and GPT-NeoX: hidden_size / num_attention_heads heads. */
static int parse_heads(json_t *o, lora_model_config *c, lora_error *err)
{
    TRY(cfg_uint(o, "num_attention_heads", 32, 1, LORA_MODEL_MAX_HIDDEN, &c->heads, err));
    if (c->hidden % c->heads != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "config.json: hidden_size %llu is not a multiple of num_attention_heads %llu",
                           (unsigned long long)c->hidden, (unsigned long long)c->heads);
    c->head_dim = c->hidden / c->heads;
    c->embed_dim = c->hidden;
    return LORA_OK;
}

/* PhiConfig (phi-1, 1.5, 2): LayerNorm, parallel attention and MLP from
 * one norm, partial_rotary_factor, biases, gelu_new; qk_layernorm refused. */
static int parse_phi(json_t *o, lora_model_config *c, lora_error *err)
{
    TRY(cfg_uint(o, "vocab_size", 51200, 1, LORA_MODEL_MAX_VOCAB, &c->vocab, err));
    TRY(cfg_uint(o, "hidden_size", 2048, 1, LORA_MODEL_MAX_HIDDEN, &c->hidden, err));
    TRY(cfg_uint(o, "intermediate_size", 8192, 1, 16 * LORA_MODEL_MAX_HIDDEN, &c->inner, err));
    TRY(cfg_uint(o, "num_hidden_layers", 24, 1, LORA_MODEL_MAX_LAYERS, &c->layers, err));
    TRY(parse_heads(o, c, err));
    TRY(cfg_uint(o, "num_key_value_heads", (int64_t)c->heads, 1, c->heads, &c->kv_heads, err));
    if (c->heads % c->kv_heads != 0)
        return lora_seterr(err, LORA_EINPUT, "config.json: num_attention_heads is not a multiple "
                           "of num_key_value_heads");
    TRY(cfg_uint(o, "max_position_embeddings", 2048, 1, LORA_MODEL_MAX_POSITIONS,
                 &c->max_positions, err));
    TRY(cfg_num(o, "layer_norm_eps", 1e-5, 0.0, 1.0, &c->norm_eps, err));
    TRY(cfg_num(o, "rope_theta", 10000.0, 1e-6, 1e30, &c->rope_theta, err));
    TRY(cfg_bool(o, "tie_word_embeddings", 0, &c->tied, err));
    int qkln = 0;
    TRY(cfg_bool(o, "qk_layernorm", 0, &qkln, err));
    if (qkln)
        return lora_seterr(err, LORA_EINPUT, "config.json: qk_layernorm true is not supported");
    TRY(parse_gelu(o, "hidden_act", "gelu_new", c, err));
    double frac;
    TRY(cfg_num(o, "partial_rotary_factor", 0.5, 0.0, 1.0, &frac, err));
    TRY(set_rotary(c, frac, err));
    c->qkv_bias = c->o_bias = c->mlp_bias = 1;
    c->parallel = 1;
    return parse_rope(o, c, err);
}

/* GPTNeoXConfig: rotary_pct / rotary_emb_base (or the newer
 * partial_rotary_factor / rope_theta), use_parallel_residual,
 * attention_bias, hidden_act gelu by default. */
static int parse_neox(json_t *o, lora_model_config *c, lora_error *err)
{
    TRY(cfg_uint(o, "vocab_size", 50432, 1, LORA_MODEL_MAX_VOCAB, &c->vocab, err));
    TRY(cfg_uint(o, "hidden_size", 6144, 1, LORA_MODEL_MAX_HIDDEN, &c->hidden, err));
    TRY(cfg_uint(o, "intermediate_size", 24576, 1, 16 * LORA_MODEL_MAX_HIDDEN, &c->inner, err));
    TRY(cfg_uint(o, "num_hidden_layers", 44, 1, LORA_MODEL_MAX_LAYERS, &c->layers, err));
    TRY(parse_heads(o, c, err));
    c->kv_heads = c->heads;
    TRY(cfg_uint(o, "max_position_embeddings", 2048, 1, LORA_MODEL_MAX_POSITIONS,
                 &c->max_positions, err));
    TRY(cfg_num(o, "layer_norm_eps", 1e-5, 0.0, 1.0, &c->norm_eps, err));
    double base, frac;
    TRY(cfg_num(o, "rotary_emb_base", 10000.0, 1e-6, 1e30, &base, err));
    TRY(cfg_num(o, "rope_theta", base, 1e-6, 1e30, &c->rope_theta, err));
    TRY(cfg_num(o, "rotary_pct", 0.25, 0.0, 1.0, &frac, err));
    TRY(cfg_num(o, "partial_rotary_factor", frac, 0.0, 1.0, &frac, err));
    json_t *rp = json_object_get(o, "rope_parameters");
    if (json_is_object(rp))
        TRY(cfg_num(rp, "partial_rotary_factor", frac, 0.0, 1.0, &frac, err));
    TRY(set_rotary(c, frac, err));
    TRY(cfg_bool(o, "tie_word_embeddings", 0, &c->tied, err));
    TRY(cfg_bool(o, "use_parallel_residual", 1, &c->parallel, err));
    int bias = 1;
    TRY(cfg_bool(o, "attention_bias", 1, &bias, err));
    c->qkv_bias = c->o_bias = bias;
    c->mlp_bias = 1;
    TRY(parse_gelu(o, "hidden_act", "gelu", c, err));
    return parse_rope(o, c, err);
}

/* Gemma 3's RoPE: rope_theta (scaled by rope_scaling) on the global
 * layers, rope_local_base_freq unscaled on the sliding ones; or, in
 * transformers v5, rope_parameters per layer type. */
static int parse_gemma3_rope(json_t *o, lora_model_config *c, lora_error *err)
{
    TRY(cfg_num(o, "rope_theta", 1000000.0, 1e-6, 1e30, &c->rope_theta, err));
    TRY(cfg_num(o, "rope_local_base_freq", 10000.0, 1e-6, 1e30, &c->rope_local_theta, err));
    json_t *rp = json_object_get(o, "rope_parameters");
    json_t *full = json_is_object(rp) ? json_object_get(rp, "full_attention") : NULL;
    if (!full)
        return parse_rope(o, c, err);
    json_t *slide = json_object_get(rp, "sliding_attention");
    if (json_is_object(slide)) {
        const char *type = NULL;
        TRY(cfg_str(slide, "rope_type", "default", &type, err));
        if (strcmp(type, "default") != 0)
            return lora_seterr(err, LORA_EINPUT, "config.json: rope_parameters.sliding_attention "
                               "type \"%s\" is not supported", type);
        TRY(cfg_num(slide, "rope_theta", c->rope_local_theta, 1e-6, 1e30, &c->rope_local_theta,
                    err));
    }
    json_t *wrap = json_pack("{sO}", "rope_parameters", full);
    if (!wrap)
        return lora_oom(err);
    int rc = parse_rope(wrap, c, err);
    json_decref(wrap);
    return rc;
}

/* Gemma2Config / Gemma3TextConfig: embeddings scaled by sqrt(hidden_size),
 * scores by query_pre_attn_scalar^-0.5, GeGLU, soft caps (Gemma 3 ignores
 * attn_logit_softcapping, as transformers does), sliding layers every
 * layer but each 2nd (Gemma 2) or sliding_window_pattern-th (Gemma 3). */
static int parse_gemma(json_t *o, lora_model_config *c, lora_error *err)
{
    int g3 = c->arch == LORA_ARCH_GEMMA3;
    TRY(cfg_uint(o, "vocab_size", g3 ? 262208 : 256000, 1, LORA_MODEL_MAX_VOCAB, &c->vocab, err));
    TRY(cfg_uint(o, "hidden_size", 2304, 1, LORA_MODEL_MAX_HIDDEN, &c->hidden, err));
    TRY(cfg_uint(o, "intermediate_size", 9216, 1, 16 * LORA_MODEL_MAX_HIDDEN, &c->inner, err));
    TRY(cfg_uint(o, "num_hidden_layers", 26, 1, LORA_MODEL_MAX_LAYERS, &c->layers, err));
    TRY(cfg_uint(o, "num_attention_heads", 8, 1, LORA_MODEL_MAX_HIDDEN, &c->heads, err));
    TRY(cfg_uint(o, "num_key_value_heads", 4, 1, c->heads, &c->kv_heads, err));
    if (c->heads % c->kv_heads != 0)
        return lora_seterr(err, LORA_EINPUT, "config.json: num_attention_heads is not a multiple "
                           "of num_key_value_heads");
    TRY(cfg_uint(o, "head_dim", 256, 2, LORA_MODEL_MAX_HIDDEN, &c->head_dim, err));
    if (c->head_dim % 2 != 0 || c->heads * c->head_dim > LORA_MODEL_MAX_HIDDEN * 4)
        return lora_seterr(err, LORA_EINPUT, "config.json: head_dim %llu is odd or too large",
                           (unsigned long long)c->head_dim);
    TRY(cfg_uint(o, "max_position_embeddings", g3 ? 131072 : 8192, 1, LORA_MODEL_MAX_POSITIONS,
                 &c->max_positions, err));
    TRY(cfg_num(o, "rms_norm_eps", 1e-6, 0.0, 1.0, &c->norm_eps, err));
    TRY(cfg_bool(o, "tie_word_embeddings", 1, &c->tied, err));
    int ab = 0;
    TRY(cfg_bool(o, "attention_bias", 0, &ab, err));
    c->qkv_bias = c->o_bias = ab;
    const char *hidden_act = NULL;
    TRY(cfg_str(o, "hidden_act", "gelu_pytorch_tanh", &hidden_act, err));
    TRY(parse_gelu(o, "hidden_activation", hidden_act, c, err));
    double qpas;
    TRY(cfg_num(o, "query_pre_attn_scalar", 256.0, 1e-6, 1e12, &qpas, err));
    c->attn_scale = pow(qpas, -0.5);
    c->embed_scale = (double)(float)sqrt((double)c->hidden);
    TRY(cfg_num(o, "final_logit_softcapping", g3 ? 0.0 : 30.0, 0.0, 1e12, &c->final_softcap, err));
    if (!g3)
        TRY(cfg_num(o, "attn_logit_softcapping", 50.0, 0.0, 1e12, &c->attn_softcap, err));
    c->embed_dim = c->hidden;
    json_t *sw = json_object_get(o, "sliding_window");
    if (!(sw && json_is_null(sw)))
        TRY(cfg_uint(o, "sliding_window", 4096, 1, LORA_MODEL_MAX_POSITIONS, &c->sliding_window,
                     err));
    c->window_period = 2;
    if (g3)
        TRY(cfg_uint(o, "sliding_window_pattern", 6, 1, LORA_MODEL_MAX_LAYERS, &c->window_period,
                     err));
    TRY(parse_layer_types(o, c, err));
    if (g3)
        return parse_gemma3_rope(o, c, err);
    TRY(cfg_num(o, "rope_theta", 10000.0, 1e-6, 1e30, &c->rope_theta, err));
    return parse_rope(o, c, err);
}

#define SUPPORTED "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, " \
                  "Qwen3ForCausalLM, OPTForCausalLM, PhiForCausalLM, GPTNeoXForCausalLM, " \
                  "Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration (its " \
                  "language model), Phi3ForCausalLM"

/* The architecture: "architectures"[0], or the one model_type names. */
static int architecture_of(json_t *o, const char **parch, lora_error *err)
{
    const char *arch = NULL;
    int rc;
    json_t *archs = json_object_get(o, "architectures");
    if (archs && !json_is_null(archs)) {
        if (!json_is_array(archs) || json_array_size(archs) < 1 ||
            !json_is_string(json_array_get(archs, 0)))
            return lora_seterr(err, LORA_EINPUT,
                               "config.json: \"architectures\" is not a list of names");
        arch = json_string_value(json_array_get(archs, 0));
    } else {
        const char *mt = NULL;
        if ((rc = cfg_str(o, "model_type", NULL, &mt, err)) != LORA_OK)
            return rc;
        if (!mt)
            return lora_seterr(err, LORA_EINPUT,
                               "config.json: neither \"architectures\" nor \"model_type\" is given");
        static const char *const map[][2] = {{"gpt2", "GPT2LMHeadModel"},
                                             {"llama", "LlamaForCausalLM"},
                                             {"mistral", "MistralForCausalLM"},
                                             {"qwen2", "Qwen2ForCausalLM"},
                                             {"qwen3", "Qwen3ForCausalLM"},
                                             {"opt", "OPTForCausalLM"},
                                             {"phi", "PhiForCausalLM"},
                                             {"gpt_neox", "GPTNeoXForCausalLM"},
                                             {"gemma2", "Gemma2ForCausalLM"},
                                             {"gemma3_text", "Gemma3ForCausalLM"},
                                             {"phi3", "Phi3ForCausalLM"}};
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (strcmp(mt, map[i][0]) == 0)
                arch = map[i][1];
        if (!arch)
            return lora_seterr(err, LORA_EINPUT,
                               "config.json: model_type \"%.64s\" is not supported (gpt2, llama, "
                               "mistral, qwen2, qwen3, opt, phi, gpt_neox, gemma2, gemma3_text, "
                               "phi3 are)", mt);
    }
    *parch = arch;
    return LORA_OK;
}

/* The family's own keys, by architecture name. */
static int parse_family(json_t *o, const char *arch, lora_model_config *cfg, lora_error *err)
{
    int rc;
    if (strcmp(arch, "GPT2LMHeadModel") == 0) {
        cfg->arch = LORA_ARCH_GPT2;
        rc = parse_gpt2(o, cfg, err);
    } else if (strcmp(arch, "LlamaForCausalLM") == 0 || strcmp(arch, "MistralForCausalLM") == 0 ||
               strcmp(arch, "Qwen2ForCausalLM") == 0) {
        cfg->arch = LORA_ARCH_LLAMA;
        rc = parse_llama(o, cfg, err);
    } else if (strcmp(arch, "Qwen3ForCausalLM") == 0) {
        cfg->arch = LORA_ARCH_QWEN3;
        rc = parse_llama(o, cfg, err);
    } else if (strcmp(arch, "Phi3ForCausalLM") == 0) {
        /* LLaMA's sizes and RoPE; partial_rotary_factor (Phi-3.5/4 mini);
         * longrope scaling is refused by parse_rope, naming it */
        cfg->arch = LORA_ARCH_PHI3;
        rc = parse_llama(o, cfg, err);
    } else if (strcmp(arch, "OPTForCausalLM") == 0) {
        cfg->arch = LORA_ARCH_OPT;
        rc = parse_opt(o, cfg, err);
    } else if (strcmp(arch, "PhiForCausalLM") == 0) {
        cfg->arch = LORA_ARCH_PHI;
        rc = parse_phi(o, cfg, err);
    } else if (strcmp(arch, "GPTNeoXForCausalLM") == 0) {
        cfg->arch = LORA_ARCH_NEOX;
        rc = parse_neox(o, cfg, err);
    } else if (strcmp(arch, "Gemma2ForCausalLM") == 0 || strcmp(arch, "Gemma3ForCausalLM") == 0) {
        cfg->arch = arch[5] == '2' ? LORA_ARCH_GEMMA2 : LORA_ARCH_GEMMA3;
        rc = parse_gemma(o, cfg, err);
    } else if (strcmp(arch, "Gemma3ForConditionalGeneration") == 0) {
        /* the language model alone: text_config, tensors under
         * model.language_model. or language_model.model. */
        json_t *text = json_object_get(o, "text_config");
        cfg->arch = LORA_ARCH_GEMMA3;
        if (!json_is_object(text))
            rc = lora_seterr(err, LORA_EINPUT, "config.json: %s without a \"text_config\" object",
                             arch);
        else
            rc = parse_gemma(text, cfg, err);
    } else {
        rc = lora_seterr(err, LORA_EINPUT,
                         "config.json: architecture %s is not supported (" SUPPORTED " are)", arch);
    }
    return rc;
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
    const char *arch = NULL;
    int rc = json_is_object(o) ? architecture_of(o, &arch, err)
                               : lora_seterr(err, LORA_EINPUT, "config.json: not a JSON object");
    if (rc == LORA_OK && strlen(arch) >= sizeof cfg->architecture)
        rc = lora_seterr(err, LORA_EINPUT, "config.json: architecture name too long");
    if (rc == LORA_OK) {
        strcpy(cfg->architecture, arch);
        rc = parse_family(o, arch, cfg, err);
    }
    if (rc == LORA_OK && cfg->rotary_dim == 0)
        cfg->rotary_dim = cfg->head_dim;
    json_decref(o);
    return rc;
}

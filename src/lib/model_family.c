/*
 * model_family.c - the decoder-only families lora-eval computes, each
 * as one description (model_internal.h) the weight loader and the
 * single forward pass read: where the tensors are, which norm,
 * activation and position scheme, and the family's extras (q/k norms,
 * learned-position offset, project_in/out).  Config-dependent choices
 * (biases, sliding windows, post-norm) live in lora_model_config.
 * Facts follow transformers' modeling_<family>.py.
 */
#include "model_internal.h"

static const lora_family FAMILIES[] = {
    {.arch = LORA_ARCH_GPT2, .prefixes = {"", "transformer."}, .embed = "wte", .pos_embed = "wpe",
     .final_norm = "ln_f", .head = "lm_head.weight", .layers = "h.", .n1 = "ln_1", .n2 = "ln_2", .qkv = "attn.c_attn",
     .o = "attn.c_proj", .up = "mlp.c_fc", .down = "mlp.c_proj", .conv1d = 1, .norm = NORM_LAYER,
     .norm_bias = 1, .act = ACT_GELU_TANH, .pos = POS_LEARNED},
    {.arch = LORA_ARCH_LLAMA, .prefixes = {"model."}, .embed = "embed_tokens", .final_norm = "norm",
     .head = "lm_head.weight",
     .layers = "layers.", .n1 = "input_layernorm", .n2 = "post_attention_layernorm",
     .q = "self_attn.q_proj", .k = "self_attn.k_proj", .v = "self_attn.v_proj",
     .o = "self_attn.o_proj", .gate = "mlp.gate_proj", .up = "mlp.up_proj",
     .down = "mlp.down_proj", .norm = NORM_RMS, .act = ACT_SILU, .pos = POS_ROPE},
    /* Qwen3: LLaMA plus an RMSNorm over each head of q and of k, before RoPE */
    {.arch = LORA_ARCH_QWEN3, .prefixes = {"model."}, .embed = "embed_tokens", .final_norm = "norm",
     .head = "lm_head.weight",
     .layers = "layers.", .n1 = "input_layernorm", .n2 = "post_attention_layernorm",
     .q = "self_attn.q_proj", .k = "self_attn.k_proj", .v = "self_attn.v_proj",
     .o = "self_attn.o_proj", .q_norm = "self_attn.q_norm", .k_norm = "self_attn.k_norm",
     .gate = "mlp.gate_proj", .up = "mlp.up_proj", .down = "mlp.down_proj", .norm = NORM_RMS,
     .act = ACT_SILU, .pos = POS_ROPE},
    /* OPT: OPTLearnedPositionalEmbedding adds 2 to the position; the
     * block's norms are self_attn_layer_norm and final_layer_norm */
    {.arch = LORA_ARCH_OPT, .prefixes = {"model.decoder.", "decoder."}, .embed = "embed_tokens",
     .pos_embed = "embed_positions", .pos_offset = 2, .final_norm = "final_layer_norm",
     .head = "lm_head.weight",
     .proj_in = "project_in", .proj_out = "project_out", .layers = "layers.",
     .n1 = "self_attn_layer_norm", .n2 = "final_layer_norm", .q = "self_attn.q_proj",
     .k = "self_attn.k_proj", .v = "self_attn.v_proj", .o = "self_attn.out_proj", .up = "fc1",
     .down = "fc2", .norm = NORM_LAYER, .norm_bias = 1, .act = ACT_RELU, .pos = POS_LEARNED},
    /* Phi (1, 1.5, 2): attention and MLP in parallel from input_layernorm,
     * partial rotary, dense / fc1 / fc2, biases everywhere, the head too */
    {.arch = LORA_ARCH_PHI, .prefixes = {"model."}, .embed = "embed_tokens",
     .final_norm = "final_layernorm", .head = "lm_head.weight", .head_bias = 1,
     .layers = "layers.", .n1 = "input_layernorm", .q = "self_attn.q_proj",
     .k = "self_attn.k_proj", .v = "self_attn.v_proj", .o = "self_attn.dense", .up = "mlp.fc1",
     .down = "mlp.fc2", .norm = NORM_LAYER, .norm_bias = 1, .act = ACT_GELU_TANH,
     .pos = POS_ROPE},
    /* GPT-NeoX: query_key_value fused per head, partial rotary, embed_out */
    {.arch = LORA_ARCH_NEOX, .prefixes = {"gpt_neox."}, .embed = "embed_in",
     .final_norm = "final_layer_norm", .head = "embed_out.weight", .layers = "layers.",
     .n1 = "input_layernorm", .n2 = "post_attention_layernorm",
     .qkv = "attention.query_key_value", .qkv_interleaved = 1, .o = "attention.dense",
     .up = "mlp.dense_h_to_4h", .down = "mlp.dense_4h_to_h", .norm = NORM_LAYER, .norm_bias = 1,
     .act = ACT_GELU, .pos = POS_ROPE},
    /* Gemma 2: RMSNorm scaling by (1 + w), a norm before and after both
     * attention and the MLP, GeGLU (gelu tanh); the embedding scale, soft
     * caps, query_pre_attn_scalar and windows come from config.json */
    {.arch = LORA_ARCH_GEMMA2, .prefixes = {"model."}, .embed = "embed_tokens",
     .final_norm = "norm", .head = "lm_head.weight", .layers = "layers.",
     .n1 = "input_layernorm", .pn1 = "post_attention_layernorm",
     .n2 = "pre_feedforward_layernorm", .pn2 = "post_feedforward_layernorm", .norm_plus_one = 1,
     .q = "self_attn.q_proj", .k = "self_attn.k_proj", .v = "self_attn.v_proj",
     .o = "self_attn.o_proj", .gate = "mlp.gate_proj", .up = "mlp.up_proj",
     .down = "mlp.down_proj", .norm = NORM_RMS, .act = ACT_GELU_TANH, .pos = POS_ROPE},
    /* Gemma 3 (text, or Gemma3ForConditionalGeneration's language model):
     * Gemma 2 plus (1 + w) RMSNorms of q and k per head */
    {.arch = LORA_ARCH_GEMMA3,
     .prefixes = {"model.", "model.language_model.", "language_model.model."},
     .embed = "embed_tokens",
     .final_norm = "norm", .head = "lm_head.weight", .layers = "layers.",
     .n1 = "input_layernorm", .pn1 = "post_attention_layernorm",
     .n2 = "pre_feedforward_layernorm", .pn2 = "post_feedforward_layernorm", .norm_plus_one = 1,
     .q = "self_attn.q_proj", .k = "self_attn.k_proj", .v = "self_attn.v_proj",
     .o = "self_attn.o_proj", .q_norm = "self_attn.q_norm", .k_norm = "self_attn.k_norm",
     .gate = "mlp.gate_proj", .up = "mlp.up_proj", .down = "mlp.down_proj", .norm = NORM_RMS,
     .act = ACT_GELU_TANH, .pos = POS_ROPE},
    /* Phi-3: LLaMA with qkv_proj fused as [q; k; v] and gate_up_proj as
     * [gate; up]; an adapter on a fused weight covers all its slices */
    {.arch = LORA_ARCH_PHI3, .prefixes = {"model."}, .embed = "embed_tokens", .final_norm = "norm",
     .head = "lm_head.weight", .layers = "layers.", .n1 = "input_layernorm",
     .n2 = "post_attention_layernorm", .qkv = "self_attn.qkv_proj", .o = "self_attn.o_proj",
     .gate_up = "mlp.gate_up_proj", .down = "mlp.down_proj", .norm = NORM_RMS, .act = ACT_SILU,
     .pos = POS_ROPE},
};

const lora_family *lora_family_of(int arch)
{
    for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++)
        if (FAMILIES[i].arch == arch)
            return &FAMILIES[i];
    return NULL;
}

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
     .final_norm = "ln_f", .layers = "h.", .n1 = "ln_1", .n2 = "ln_2", .qkv = "attn.c_attn",
     .o = "attn.c_proj", .up = "mlp.c_fc", .down = "mlp.c_proj", .conv1d = 1, .norm = NORM_LAYER,
     .norm_bias = 1, .act = ACT_GELU_TANH, .pos = POS_LEARNED},
    {.arch = LORA_ARCH_LLAMA, .prefixes = {"model."}, .embed = "embed_tokens", .final_norm = "norm",
     .layers = "layers.", .n1 = "input_layernorm", .n2 = "post_attention_layernorm",
     .q = "self_attn.q_proj", .k = "self_attn.k_proj", .v = "self_attn.v_proj",
     .o = "self_attn.o_proj", .gate = "mlp.gate_proj", .up = "mlp.up_proj",
     .down = "mlp.down_proj", .norm = NORM_RMS, .act = ACT_SILU, .pos = POS_ROPE},
    /* Qwen3: LLaMA plus an RMSNorm over each head of q and of k, before RoPE */
    {.arch = LORA_ARCH_QWEN3, .prefixes = {"model."}, .embed = "embed_tokens", .final_norm = "norm",
     .layers = "layers.", .n1 = "input_layernorm", .n2 = "post_attention_layernorm",
     .q = "self_attn.q_proj", .k = "self_attn.k_proj", .v = "self_attn.v_proj",
     .o = "self_attn.o_proj", .q_norm = "self_attn.q_norm", .k_norm = "self_attn.k_norm",
     .gate = "mlp.gate_proj", .up = "mlp.up_proj", .down = "mlp.down_proj", .norm = NORM_RMS,
     .act = ACT_SILU, .pos = POS_ROPE},
    /* OPT: OPTLearnedPositionalEmbedding adds 2 to the position; the
     * block's norms are self_attn_layer_norm and final_layer_norm */
    {.arch = LORA_ARCH_OPT, .prefixes = {"model.decoder.", "decoder."}, .embed = "embed_tokens",
     .pos_embed = "embed_positions", .pos_offset = 2, .final_norm = "final_layer_norm",
     .proj_in = "project_in", .proj_out = "project_out", .layers = "layers.",
     .n1 = "self_attn_layer_norm", .n2 = "final_layer_norm", .q = "self_attn.q_proj",
     .k = "self_attn.k_proj", .v = "self_attn.v_proj", .o = "self_attn.out_proj", .up = "fc1",
     .down = "fc2", .norm = NORM_LAYER, .norm_bias = 1, .act = ACT_RELU, .pos = POS_LEARNED},
};

const lora_family *lora_family_of(int arch)
{
    for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++)
        if (FAMILIES[i].arch == arch)
            return &FAMILIES[i];
    return NULL;
}

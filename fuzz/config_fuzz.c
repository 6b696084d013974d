/*
 * config_fuzz.c - libFuzzer target for the Hugging Face config.json
 * parser (lora_model_config_parse): any bytes must give a validated
 * config or a clean error.
 */
#include "lora.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lora_model_config c;
    lora_error err;
    lora_error_clear(&err);
    if (lora_model_config_parse((const char *)data, size, &c, &err) == LORA_OK) {
        /* what the loader relies on */
        if (c.heads == 0 || c.kv_heads == 0 || c.heads % c.kv_heads || c.head_dim == 0 ||
            c.vocab == 0 || c.vocab > LORA_MODEL_MAX_VOCAB || c.layers == 0 ||
            c.max_positions == 0 || (c.arch == LORA_ARCH_LLAMA && c.head_dim % 2) ||
            c.embed_dim == 0 ||
            (c.arch != LORA_ARCH_GPT2 && c.arch != LORA_ARCH_OPT &&
             (c.rotary_dim < 2 || c.rotary_dim % 2 || c.rotary_dim > c.head_dim)))
            __builtin_trap();
    } else if (!err.msg[0]) {
        __builtin_trap();
    }
    return 0;
}

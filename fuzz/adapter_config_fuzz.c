/*
 * adapter_config_fuzz.c - libFuzzer entry point for adapter_config.json:
 * any bytes given to lora_acfg_parse must be refused cleanly or give a
 * config whose patterns (target_modules, exclude_modules, rank_pattern,
 * alpha_pattern: Python regexes run through PCRE2 with match limits) can
 * be applied to module names and keys without crashing or hanging.
 */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const modules[] = {
    "model.layers.0.self_attn.q_proj", "model.language_model.layers.27.mlp.down_proj",
    "transformer.h.11.attn.c_proj", "h.0.mlp.c_proj", "score", "lm_head", "",
};

static const char *const keys[] = {
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.base_model.model.h.0.attn.c_attn.lora_B.default.weight",
    "base_model.model.score.weight", "base_model.model.score.modules_to_save.default.weight",
    "base_model.model.model.embed_tokens.lora_embedding_A",
    "base_model.model.x.q_proj.bias", "base_model.model.x.original_module.weight",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy of exactly size bytes, so reads past it are caught */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    lora_acfg *c;
    lora_error err;
    if (lora_acfg_parse(buf, size, &c, &err) == LORA_OK) {
        if (!c->target_modules_json || c->r == 0)
            abort();
        for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
            uint64_t r;
            double a;
            if (lora_acfg_module_rank(c, modules[i], &r, &a, &err) == LORA_OK && r == 0)
                abort();
            (void)lora_acfg_targets(c, modules[i], &err);
            (void)lora_acfg_saves(c, modules[i]);
        }
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            int kind;
            char *name;
            if (lora_adapter_classify_key(c, keys[i], &kind, &name, &err) == LORA_OK) {
                if (!name || !kind)
                    abort();
                free(name);
            }
        }
        lora_acfg_free(c);
    }
    free(buf);
    return 0;
}

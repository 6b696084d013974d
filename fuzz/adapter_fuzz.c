/*
 * adapter_fuzz.c - libFuzzer entry point for the adapter model: any
 * bytes taken as adapter_model.safetensors, under a fixed config with
 * every pattern kind (regex targets, rank_pattern, alpha_pattern,
 * modules_to_save, bias "all"), and again with use_dora (DoRA magnitude
 * vectors), must be refused cleanly or give modules whose tensors agree
 * with their shapes; lora_inspect then reads every
 * value (NaN/Inf and zero scans) and builds the JSON report.
 */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config[] =
    "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,\"use_rslora\":false,"
    "\"target_modules\":\"(?:.*\\\\.)?(q_proj|c_attn|c_proj)\","
    "\"rank_pattern\":{\"q_proj\":4},\"alpha_pattern\":{\"layers\\\\.0\\\\..*\":8},"
    "\"modules_to_save\":[\"score\"],\"bias\":\"all\"}";
static const char config_dora[] =
    "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":16,\"use_dora\":true,"
    "\"fan_in_fan_out\":true,\"target_modules\":[\"c_attn\",\"q_proj\",\"v_proj\"]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    lora_st *st;
    lora_error err;
    const char *cfgs[2] = {config, config_dora};
    for (int c = 0; c < 2; c++) {
    if (lora_st_open_memory(buf, size, "fuzz", &st, &err) == LORA_OK) {
        lora_adapter *ad;
        if (lora_adapter_open_parts(cfgs[c], strlen(cfgs[c]), st, NULL, &ad, &err) == LORA_OK) {
            for (size_t i = 0; i < ad->n_modules; i++) {
                const lora_module *m = &ad->modules[i];
                if (m->A->shape[0] != m->r || m->B->shape[1] != m->r || m->A->shape[1] != m->in ||
                    m->B->shape[0] != m->out || m->r == 0)
                    abort();
                if (c == 1 && (!m->magnitude || m->magnitude->ndim != 1 ||
                               m->magnitude->shape[0] != m->out))
                    abort();
            }
            lora_report *rep;
            if (lora_inspect(ad, NULL, &rep, &err) == LORA_OK) {
                char *js = lora_report_json(rep, 1, &err);
                free(js);
                lora_report_free(rep);
            }
            lora_adapter_free(ad);
        }
    }
    }
    free(buf);
    return 0;
}

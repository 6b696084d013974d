/*
 * dataset_fuzz.c - libFuzzer target for the JSONL data-set parser
 * (lora_dataset_parse): any bytes must give a data set or a clean error.
 */
#include "lora.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lora_dataset *ds = NULL;
    lora_error err;
    lora_error_clear(&err);
    if (lora_dataset_parse((const char *)data, size, "fuzz", 64, &ds, &err) == LORA_OK) {
        for (size_t i = 0; i < ds->n; i++) {
            const lora_item *it = &ds->items[i];
            if (it->n_prompt == 0 || (it->kind == LORA_ITEM_CHOICE && it->label >= it->n_choices))
                __builtin_trap();
        }
        lora_dataset_free(ds);
    } else if (ds || !err.msg[0]) {
        __builtin_trap();
    }
    return 0;
}

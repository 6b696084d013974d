/*
 * receipt_fuzz.c - libFuzzer target for the merge receipt reader
 * (receipt.c): open the bytes as a receipt, then decode every tensor's
 * corrections.  Any input must give LORA_OK or a clean error.
 */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lora_receipt *r;
    lora_error err;
    if (lora_receipt_open_memory(data, size, "fuzz", &r, &err) != LORA_OK)
        return 0;
    lora_fixes f = {0};
    for (size_t i = 0; i < lora_receipt_tensor_count(r); i++)
        if (lora_receipt_fixes(r, i, &f, &err) != LORA_OK)
            break;
    lora_fixes_free(&f);
    lora_receipt_close(r);
    return 0;
}

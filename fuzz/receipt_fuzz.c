/*
 * receipt_fuzz.c - libFuzzer target for the merge receipt reader
 * (receipt.c): open the bytes as a receipt, then decode every tensor's
 * corrections and read every kept header, the kept index and every kept
 * tensor (version 2), and every DoRA tensor's row norms (version 4).
 * Any input must give LORA_OK or a clean error.
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
    for (size_t i = 0; i < lora_receipt_tensor_count(r); i++) {
        const lora_receipt_tensor *t = lora_receipt_tensor_at(r, i);
        double *n = t->dora ? malloc((size_t)t->dora_length + 8) : NULL;
        if (n)
            (void)lora_receipt_dora_norms(r, i, n, t->dora_length / 8, &err);
        free(n);
    }
    volatile unsigned sum = 0; /* touch every kept byte: they must lie inside the input */
    for (size_t i = 0; i < lora_receipt_file_count(r); i++) {
        const lora_receipt_file *rf = lora_receipt_file_at(r, i);
        for (uint64_t k = 0; k < rf->header_len; k++)
            sum += rf->header[k];
    }
    uint64_t il;
    const unsigned char *ix = lora_receipt_index(r, &il);
    for (uint64_t k = 0; ix && k < il; k++)
        sum += ix[k];
    for (size_t i = 0; i < lora_receipt_saved_count(r); i++) {
        const void *d;
        const lora_receipt_saved *s = lora_receipt_saved_at(r, i);
        if (lora_receipt_saved_data(r, s, &d, &err) == LORA_OK && s->length)
            sum += ((const unsigned char *)d)[s->length - 1];
    }
    (void)sum;
    lora_receipt_close(r);
    return 0;
}

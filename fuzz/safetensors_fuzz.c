/*
 * safetensors_fuzz.c - libFuzzer entry point for the safetensors
 * reader: any bytes given to lora_st_open_memory must be refused
 * cleanly or yield tensors whose every byte is inside the input.
 * Every tensor's bytes and every metadata entry are read, so the
 * sanitizers see any pointer the validation let through wrongly.
 */
#include "lora.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy of exactly size bytes, so reads past it are caught */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    lora_st *st;
    lora_error err;
    if (lora_st_open_memory(buf, size, "fuzz", &st, &err) == LORA_OK) {
        volatile unsigned sum = 0;
        uint64_t total = 0;
        for (size_t i = 0; i < lora_st_count(st); i++) {
            const lora_tensor *t = lora_st_tensor(st, i);
            const uint8_t *p = t->data;
            for (uint64_t k = 0; k < t->nbytes; k++)
                sum += p[k];
            if (lora_st_find(st, t->name) != t)
                abort();
            if ((const uint8_t *)t->data < buf || t->offset + t->nbytes > size)
                abort();
            total += t->nbytes;
            if (lora_dtype_readable(t->dtype) && t->numel <= 4096) {
                float f[4096];
                lora_decode_f32(t->dtype, t->data, f, (size_t)t->numel);
                sum += (unsigned)(f[0] == f[0]);
            }
        }
        if (8 + lora_st_header_size(st) + total != size)
            abort();
        for (size_t i = 0; i < lora_st_metadata_count(st); i++) {
            const char *k, *v;
            lora_st_metadata_at(st, i, &k, &v);
            sum += (unsigned)strlen(k) + (unsigned)strlen(v);
            if (lora_st_metadata(st, k) == NULL)
                abort();
        }
        lora_st_close(st);
    } else if (err.code != LORA_EINPUT || !err.msg[0]) {
        abort();
    }
    free(buf);
    return 0;
}

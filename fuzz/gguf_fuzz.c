/*
 * gguf_fuzz.c - libFuzzer entry point for the GGUF reader: any bytes
 * given to lora_gguf_open_memory must be refused cleanly (LORA_EINPUT
 * with a message) or yield keys, strings, arrays and tensors whose
 * every byte lies inside the input.  Everything the reader hands out is
 * read, so the sanitizers see any pointer the validation let through.
 * A file the reader takes is then opened as a base checkpoint would be
 * (gguf_checkpoint.c: Hugging Face names, reversed dimensions), and
 * every tensor of that view is checked against the bytes.
 */
#include "../src/lib/internal.h"

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
    lora_gguf *g;
    lora_error err;
    if (lora_gguf_open_memory(buf, size, "fuzz", &g, &err) == LORA_OK) {
        volatile unsigned sum = 0;
        uint64_t a = lora_gguf_alignment(g);
        if (a == 0 || (a & (a - 1)) != 0)
            abort();
        for (size_t i = 0; i < lora_gguf_kv_count(g); i++) {
            const lora_gguf_kv *kv = lora_gguf_kv_at(g, i);
            if (lora_gguf_find_kv(g, kv->key) != kv || kv->raw_off + kv->raw_len > size)
                abort();
            sum += (unsigned)strlen(kv->key);
            if (kv->str)
                for (uint64_t k = 0; k < kv->len; k++)
                    sum += (unsigned char)kv->str[k];
            if (kv->data)
                for (uint64_t k = 0; k < kv->raw_len && (const uint8_t *)kv->data + k < buf + size;
                     k++)
                    sum += ((const uint8_t *)kv->data)[k];
            for (uint64_t k = 0; kv->type == LORA_GGUF_ARRAY && kv->arr_type == LORA_GGUF_STRING &&
                                 k < kv->n;
                 k++) {
                const char *s;
                uint64_t len;
                if (lora_gguf_kv_arr_str(g, kv, k, &s, &len) != 0 ||
                    (const uint8_t *)s + len > buf + size)
                    abort();
                for (uint64_t j = 0; j < len; j++)
                    sum += (unsigned char)s[j];
            }
            double d;
            lora_gguf_get_num(g, kv->key, &d);
        }
        for (size_t i = 0; i < lora_gguf_tensor_count(g); i++) {
            const lora_gguf_tensor *t = lora_gguf_tensor_at(g, i);
            if (lora_gguf_find_tensor(g, t->name) != t || t->offset % a ||
                t->offset + t->nbytes > size || t->offset < lora_gguf_data_offset(g))
                abort();
            const uint8_t *p = t->data;
            for (uint64_t k = 0; k < t->nbytes; k++)
                sum += p[k];
            if (t->dtype != LORA_DT_INVALID && t->numel <= 4096) {
                float f[4096];
                lora_decode_f32(t->dtype, t->data, f, (size_t)t->numel);
                sum += (unsigned)(f[0] == f[0]);
            }
        }
        lora_gguf_close(g);
        lora_st *st;
        if (lora_gguf_open_memory(buf, size, "fuzz", &g, &err) != LORA_OK)
            abort();
        if (lora_gguf_st_from(g, -1, &st, &err) == LORA_OK) {
            for (size_t i = 0; i < lora_st_count(st); i++) {
                const lora_tensor *t = lora_st_tensor(st, i);
                uint64_t n = 1;
                for (int d = 0; d < t->ndim; d++)
                    n *= t->shape[d];
                if (lora_st_find(st, t->name) != t || n != t->numel ||
                    (const uint8_t *)t->data + t->nbytes > buf + size)
                    abort();
                sum += (unsigned)strlen(t->name);
            }
            for (size_t i = 0; i < lora_st_metadata_count(st); i++) {
                const char *k, *v;
                lora_st_metadata_at(st, i, &k, &v);
                sum += (unsigned)strlen(v);
            }
            lora_st_close(st);
        } else if (err.code != LORA_EINPUT || !err.msg[0]) {
            abort();
        }
    } else if (err.code != LORA_EINPUT || !err.msg[0]) {
        abort();
    }
    free(buf);
    return 0;
}

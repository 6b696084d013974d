/*
 * tokenizer_fuzz.c - libFuzzer target for the Hugging Face tokenizer.json
 * reader and the encoder: the input is a tokenizer.json, optionally
 * followed by a line "\n--text--\n" and a text to encode.  Any bytes
 * must give a tokenizer or a clean error; a text gives ids inside the
 * vocabulary (which decode without a crash) or a clean error.
 */
#include "tokenizer_int.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data, *text = "Hello, world! 123 \xc3\xbc \xf0\x9f\x98\x80";
    size_t jlen = size, tlen = strlen(text);
    const char *sep = memmem(s, size, "\n--text--\n", 10);
    if (sep) {
        jlen = (size_t)(sep - s);
        text = sep + 10;
        tlen = size - jlen - 10;
    }
    lora_tokenizer *tok = NULL;
    lora_error err;
    lora_error_clear(&err);
    if (tk_open_buffers(s, jlen, NULL, 0, "fuzz", &tok, &err) != LORA_OK) {
        if (!err.msg[0] || tok)
            __builtin_trap();
        return 0;
    }
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        size_t n = 0;
        lora_error_clear(&err);
        if (lora_tokenizer_encode(tok, text, tlen, special, &ids, &n, &err) == LORA_OK) {
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || (size_t)ids[i] >= lora_tokenizer_vocab_size(tok))
                    __builtin_trap();
            char *back = NULL;
            if (lora_tokenizer_decode(tok, ids, n, special, &back, &err) != LORA_OK && !err.msg[0])
                __builtin_trap();
            free(back);
        } else if (!err.msg[0]) {
            __builtin_trap();
        }
        free(ids);
    }
    lora_tokenizer_free(tok);
    return 0;
}

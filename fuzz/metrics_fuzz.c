/*
 * metrics_fuzz.c - libFuzzer target for the text metrics (metrics.c):
 * the input, split at its first NUL into hypothesis and reference, must
 * give BLEU, ROUGE and exact match in [0, 1] or a clean refusal.
 */
#include "lora.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 2);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = s[size + 1] = 0;
    const char *hyp = s, *ref = s + strlen(s) + 1;
    if (ref > s + size)
        ref = s + size;
    lora_error err;
    lora_error_clear(&err);
    lora_bleu b;
    lora_bleu_init(&b);
    if (lora_bleu_add(&b, hyp, ref, &err) == LORA_OK) {
        double x = lora_bleu_score(&b);
        if (!(x >= 0 && x <= 1))
            __builtin_trap();
    } else if (!err.msg[0]) {
        __builtin_trap();
    }
    lora_rouge_f1 f;
    if (lora_rouge(hyp, ref, &f, &err) == LORA_OK) {
        if (!(f.rouge1 >= 0 && f.rouge1 <= 1 && f.rouge2 >= 0 && f.rouge2 <= 1 && f.rougeL >= 0 &&
              f.rougeL <= 1))
            __builtin_trap();
    }
    if (lora_exact_match(hyp, ref) != lora_exact_match(ref, hyp))
        __builtin_trap();
    free(s);
    return 0;
}

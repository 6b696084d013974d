/*
 * dataset_fuzz.c - libFuzzer target for the JSONL data-set parser
 * (lora_dataset_parse) and the tokenization of its text fields
 * (lora_dataset_tokenize, through a toy byte codec that merges "ab"):
 * any bytes must give a data set or a clean error, and a tokenized item
 * a non-empty prompt and continuations with a scored token.
 */
#include "lora.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* one token per byte, "ab" one token 300; BOS 256 in front with specials */
static int toy_encode(void *arg, const char *text, size_t len, int special, int32_t **ids,
                      size_t *n, lora_error *err)
{
    (void)arg;
    int32_t *p = malloc((len + 1) * sizeof *p);
    if (!p) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return err->code = LORA_EIO;
    }
    size_t k = 0;
    if (special)
        p[k++] = 256;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == 'a' && i + 1 < len && text[i + 1] == 'b') {
            p[k++] = 300;
            i++;
        } else {
            p[k++] = (unsigned char)text[i];
        }
    }
    *ids = p;
    *n = k;
    return LORA_OK;
}

static void check_tokenized(const lora_dataset *ds)
{
    for (size_t i = 0; i < ds->n; i++) {
        const lora_item *it = &ds->items[i];
        if (it->n_prompt == 0 || !it->prompt)
            __builtin_trap();
        if (it->kind == LORA_ITEM_GENERATE && it->n_target <= it->target_skip)
            __builtin_trap();
        for (size_t c = 0; c < it->n_choices; c++)
            if (it->choice_len[c] <= it->choice_skip[c])
                __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lora_dataset *ds = NULL;
    lora_error err;
    lora_error_clear(&err);
    if (lora_dataset_parse((const char *)data, size, "fuzz", 512, &ds, &err) == LORA_OK) {
        for (size_t i = 0; i < ds->n; i++) {
            const lora_item *it = &ds->items[i];
            if ((it->n_prompt == 0 && !it->prompt_text) ||
                (it->kind == LORA_ITEM_CHOICE && it->label >= it->n_choices))
                __builtin_trap();
        }
        lora_text_codec tc = {NULL, toy_encode, NULL, 256, -1};
        lora_error_clear(&err);
        if (lora_dataset_tokenize(ds, &tc, &err) == LORA_OK)
            check_tokenized(ds);
        else if (!err.msg[0])
            __builtin_trap();
        lora_dataset_free(ds);
    } else if (ds || !err.msg[0]) {
        __builtin_trap();
    }
    return 0;
}

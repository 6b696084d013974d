/*
 * index_fuzz.c - libFuzzer entry point for the sharded-checkpoint
 * index parser (model.safetensors.index.json, checkpoint.c): any bytes
 * are refused cleanly or give sorted tensors mapped to plain shard
 * file names.
 */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    lora_index *ix;
    lora_error err;
    if (lora_index_parse(buf, size, "fuzz", &ix, &err) == LORA_OK) {
        for (size_t i = 0; i < ix->n; i++) {
            if (ix->shard_of[i] >= ix->nshards)
                abort();
            if (i && strcmp(ix->tensor[i - 1], ix->tensor[i]) >= 0)
                abort();
        }
        for (size_t i = 0; i < ix->nshards; i++)
            if (strchr(ix->shard[i], '/') || strstr(ix->shard[i], "..") || !ix->shard[i][0])
                abort();
        lora_index_free(ix);
    } else if (err.code != LORA_EINPUT || !err.msg[0]) {
        abort();
    }
    free(buf);
    return 0;
}

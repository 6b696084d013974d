/*
 * manifest_fuzz.c - libFuzzer target for the lora.json manifest parser:
 * parse, and for accepted manifests format again and parse the result,
 * which must succeed and give the same text (canonical form).
 */
#include "lora.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lora_error err;
    lora_manifest *m;
    if (lora_manifest_parse((const char *)data, size, &m, &err) != 0)
        return 0;
    char *t, *t2;
    size_t n, n2;
    if (lora_manifest_format(m, &t, &n, &err) == 0) {
        lora_manifest *m2;
        if (lora_manifest_parse(t, n, &m2, &err) != 0)
            abort(); /* we must read what we write */
        if (lora_manifest_format(m2, &t2, &n2, &err) == 0) {
            if (n2 != n || memcmp(t, t2, n) != 0)
                abort();
            free(t2);
        }
        lora_manifest_free(m2);
        free(t);
    }
    lora_manifest_free(m);
    return 0;
}

/*
 * jsonfmt_fuzz.c - libFuzzer target for lora_json_dumps (jsonfmt.c),
 * which rewrites the reals of jansson's text in place: whatever JSON
 * jansson accepts, the rewritten text must parse again to an equal
 * value (every real read back to the same double, strings and integers
 * untouched).  Aborts otherwise.
 */
#include "internal.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t je;
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!j)
        return 0;
    for (int pass = 0; pass < 2; pass++) {
        char *s = lora_json_dumps(j, (pass ? JSON_INDENT(2) : JSON_COMPACT) | JSON_ENCODE_ANY);
        if (!s)
            break;
        json_t *k = json_loads(s, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!k || !json_equal(j, k))
            abort();
        json_decref(k);
        free(s);
    }
    json_decref(j);
    return 0;
}

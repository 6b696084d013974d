/*
 * archive_fuzz.c - libFuzzer target for the .lora archive reader
 * (lora_archive_open_memory, and the strict tar walker on its own):
 * the input is the archive file.  Opened without signature checking so
 * that the fuzzer reaches the tar layout, manifest and member checks,
 * and once more against a fixed key for the signature path.
 */
#include "internal.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        lora_init(NULL);
        init = 1;
    }
    lora_error err;
    lora_tar_ent *ents;
    size_t n;
    if (lora_tar_walk(data, size, LORA_ARCHIVE_MAX_MEMBERS + 2, &ents, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++)
            if (ents[i].data_off + ents[i].size > size)
                __builtin_trap(); /* the walker promised the bytes are there */
        lora_tar_ents_free(ents, n);
    }
    lora_archive *ar = NULL;
    if (lora_archive_open_memory(data, size, "fuzz", NULL, 0, LORA_ARCHIVE_NO_VERIFY, &ar, &err) ==
        0) {
        for (size_t i = 0; i < ar->manifest->n_members; i++) {
            uint64_t len;
            const unsigned char *p = lora_archive_member(ar, ar->manifest->members[i].name, &len);
            volatile unsigned char sink = len ? p[len - 1] : 0;
            (void)sink;
        }
        lora_archive_close(ar);
    }
    lora_pubkey pk;
    if (lora_pubkey_from_string("RWSp5KgwErBjTlLzy44YMtJVJpGxsJQrMQJCgdfCZ5cLJA9MkEBCGn5+", &pk,
                                &err) == 0 &&
        lora_archive_open_memory(data, size, "fuzz", &pk, 1, 0, &ar, &err) == 0)
        lora_archive_close(ar);
    return 0;
}

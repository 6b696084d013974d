/*
 * archive_fuzz.c - libFuzzer target for the .lora archive reader
 * (lora_archive_open): the input is the archive file.  Opened without
 * signature checking so that the fuzzer reaches the manifest and member
 * checks, and once more against a fixed key for the signature path.
 */
#include "lora.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        lora_init(NULL);
        init = 1;
    }
    int fd = memfd_create("lora", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    lora_error err;
    lora_archive *ar = NULL;
    if (lora_archive_open(path, NULL, 0, LORA_ARCHIVE_NO_VERIFY, &ar, &err) == 0) {
        for (size_t i = 0; i < ar->manifest->n_members; i++) {
            uint64_t n;
            const unsigned char *p = lora_archive_member(ar, ar->manifest->members[i].name, &n);
            volatile unsigned char sink = n ? p[n - 1] : 0;
            (void)sink;
        }
        lora_archive_close(ar);
    }
    lora_pubkey pk;
    if (lora_pubkey_from_string("RWSp5KgwErBjTlLzy44YMtJVJpGxsJQrMQJCgdfCZ5cLJA9MkEBCGn5+", &pk,
                                &err) == 0 &&
        lora_archive_open(path, &pk, 1, 0, &ar, &err) == 0)
        lora_archive_close(ar);
    close(fd);
    return 0;
}

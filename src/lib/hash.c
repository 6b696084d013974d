/*
 * hash.c - BLAKE2b hashing for the whole library, over libsodium's
 * crypto_generichash: 256-bit digests name archive members, archives,
 * tensors and registry blobs; 512-bit digests are minisign's prehash.
 * One small API so that every area hashes the same way.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct lora_hasher {
    crypto_generichash_state st;
    size_t outlen;
};

int lora_hasher_new(size_t outlen, lora_hasher **out, lora_error *err)
{
    *out = NULL;
    if (outlen < crypto_generichash_BYTES_MIN || outlen > crypto_generichash_BYTES_MAX)
        return lora_seterr(err, LORA_EUSAGE, "BLAKE2b output length %zu out of range", outlen);
    /* crypto_generichash_state wants 64-byte alignment */
    lora_hasher *h = NULL;
    if (posix_memalign((void **)&h, 64, sizeof *h) != 0 || !h)
        return lora_oom(err);
    h->outlen = outlen;
    crypto_generichash_init(&h->st, NULL, 0, outlen);
    *out = h;
    return LORA_OK;
}

void lora_hasher_update(lora_hasher *h, const void *buf, size_t len)
{
    if (len)
        crypto_generichash_update(&h->st, buf, len);
}

void lora_hasher_final(lora_hasher *h, unsigned char *out)
{
    crypto_generichash_final(&h->st, out, h->outlen);
    lora_hasher_free(h);
}

void lora_hasher_free(lora_hasher *h)
{
    if (!h)
        return;
    sodium_memzero(h, sizeof *h);
    free(h);
}

void lora_hash(const void *buf, size_t len, unsigned char *out, size_t outlen)
{
    crypto_generichash(out, outlen, buf, len, NULL, 0);
}

int lora_hash_fd(int fd, size_t outlen, unsigned char *out, uint64_t *size, lora_error *err)
{
    enum { CHUNK = 1 << 20 };
    lora_hasher *h;
    int rc = lora_hasher_new(outlen, &h, err);
    if (rc)
        return rc;
    unsigned char *buf = malloc(CHUNK);
    if (!buf) {
        lora_hasher_free(h);
        return lora_oom(err);
    }
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            lora_hasher_free(h);
            return lora_seterr_errno(err, LORA_EIO, e, "read");
        }
        if (n == 0)
            break;
        lora_hasher_update(h, buf, (size_t)n);
        total += (uint64_t)n;
    }
    free(buf);
    lora_hasher_final(h, out);
    if (size)
        *size = total;
    return LORA_OK;
}

int lora_hash_file(const char *path, size_t outlen, unsigned char *out, uint64_t *size,
                   lora_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lora_seterr_path(err, errno, 0, path);
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return lora_seterr(err, LORA_EINPUT, "%s: not a regular file", path);
    }
    int rc = lora_hash_fd(fd, outlen, out, size, err);
    close(fd);
    if (rc)
        lora_err_prefix(err, "%s", path);
    return rc;
}

void lora_hex(const unsigned char *bin, size_t len, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        hex[2 * i] = digits[bin[i] >> 4];
        hex[2 * i + 1] = digits[bin[i] & 15];
    }
    hex[2 * len] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int lora_unhex(const char *hex, unsigned char *bin, size_t len)
{
    if (strlen(hex) != 2 * len)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        bin[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

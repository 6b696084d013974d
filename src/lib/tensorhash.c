/*
 * tensorhash.c - the per-tensor tree digests of merge receipts
 * (lora-receipt(5)): a digest of each chunk of lora_block_rows(cols)
 * rows, computed by the worker that just produced the chunk while it is
 * in cache, then a digest of the chunk digests in order.
 *
 * The kinds, chosen by what the digest has to prove:
 *   LORA_TH_BLAKE3   BLAKE3 (its official C code, from Debian's
 *                    librust-blake3-dev).  The base tensors from receipt
 *                    version 6, for the reason SHA-256 had them in
 *                    version 5 (below): a cryptographic hash, and the
 *                    fastest one on hand: 2.0-3.4 GB/s per core here
 *                    (AVX-512, shared machine) against 1.17 for SHA-256
 *                    with SHA-NI, which was a fifth of a merge's CPU.
 *   LORA_TH_SHA256   SHA-256 (OpenSSL's libcrypto).  The base tensors
 *                    (receipt version 5): their digests make lora_base,
 *                    which must resist a forged receipt (lora(7), THREAT
 *                    MODEL), so a cryptographic hash; SHA-256 because
 *                    CPUs run it in hardware (SHA-NI, ARMv8 SHA2): 1.2
 *                    GB/s per core here against 0.7 for BLAKE2b.
 *   LORA_TH_BLAKE2B  BLAKE2b-256 (libsodium): every digest of receipts
 *                    up to version 3.
 *   LORA_TH_XXH3     XXH3-128 (libxxhash), in the first 16 of the 32
 *                    bytes, the rest zero.  The merged tensors (receipt
 *                    version 5): that digest only tells an unmerge early
 *                    that the merged file is not the one the receipt was
 *                    written for.  It guards nothing by itself: whatever
 *                    the merged bytes, the restored tensors are checked
 *                    against the BLAKE2b base digests (the receipt's and
 *                    lora_base), so a crafted collision gains nothing.
 *                    XXH3 runs at about 10 GB/s here against 0.7 GB/s
 *                    for BLAKE2b, which was a third of a merge's time.
 *   LORA_TH_SKIP     no digest (the bytes were hashed already).
 */
#include "internal.h"
#include "mergecore.h"

#include <blake3.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation */
#include <xxhash.h>

int lora_th_chunk(int kind, const void *data, size_t len, unsigned char out[32])
{
    if (kind == LORA_TH_XXH3) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
        memcpy(out, c.digest, 16);
        memset(out + 16, 0, 16);
        return 0;
    }
    if (kind == LORA_TH_SKIP) {
        memset(out, 0, 32);
        return 0;
    }
    if (kind == LORA_TH_BLAKE3) {
        blake3_hasher h;
        blake3_hasher_init(&h);
        blake3_hasher_update(&h, data, len);
        blake3_hasher_finalize(&h, out, 32);
        return 0;
    }
    if (kind == LORA_TH_SHA256) {
        unsigned int n = 0;
        return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -1;
    }
    crypto_generichash(out, 32, data, len, NULL, 0);
    return 0;
}

int lora_th_combine(int kind, const unsigned char *chunks, size_t stride, size_t n,
                    unsigned char out[32])
{
    if (kind == LORA_TH_SKIP) {
        memset(out, 0, 32);
        return 0;
    }
    if (kind == LORA_TH_XXH3) {
        XXH3_state_t st;
        XXH3_INITSTATE(&st);
        XXH3_128bits_reset(&st);
        for (size_t i = 0; i < n; i++)
            XXH3_128bits_update(&st, chunks + i * stride, 16);
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&st));
        memcpy(out, c.digest, 16);
        memset(out + 16, 0, 16);
        return 0;
    }
    if (kind == LORA_TH_BLAKE3) {
        blake3_hasher h;
        blake3_hasher_init(&h);
        for (size_t i = 0; i < n; i++)
            blake3_hasher_update(&h, chunks + i * stride, 32);
        blake3_hasher_finalize(&h, out, 32);
        return 0;
    }
    if (kind == LORA_TH_SHA256) {
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        unsigned int len = 0;
        int ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;
        for (size_t i = 0; ok && i < n; i++)
            ok = EVP_DigestUpdate(c, chunks + i * stride, 32) == 1;
        ok = ok && EVP_DigestFinal_ex(c, out, &len) == 1 && len == 32;
        EVP_MD_CTX_free(c);
        return ok ? 0 : -1;
    }
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    for (size_t i = 0; i < n; i++)
        crypto_generichash_update(&h, chunks + i * stride, 32);
    crypto_generichash_final(&h, out, 32);
    return 0;
}

int lora_tree_hash_kind(int kind, const void *data, uint64_t rows, uint64_t cols,
                        size_t elsize, unsigned char out[32])
{
    uint64_t br = lora_block_rows(cols);
    size_t chunk = (size_t)(br * cols) * elsize;
    const unsigned char *p = data;
    uint64_t nb = rows ? (rows + br - 1) / br : 0;
    unsigned char *c = malloc(nb ? nb * 32 : 32);
    if (!c)
        return -1;
    int rc = 0;
    for (uint64_t b = 0; b < nb && !rc; b++, p += chunk) {
        uint64_t n = rows - b * br < br ? rows - b * br : br;
        rc = lora_th_chunk(kind, p, (size_t)(n * cols) * elsize, c + b * 32);
    }
    if (!rc)
        rc = lora_th_combine(kind, c, 32, (size_t)nb, out);
    free(c);
    return rc;
}

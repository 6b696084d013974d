/*
 * filekind.c - what a file is when it is not the safetensors file we
 * were given it as.  Users hand us what they downloaded: a GGUF model or
 * LoRA (llama.cpp), a PyTorch checkpoint (a zip holding data.pkl since
 * torch 1.6, a bare pickle before), a NumPy .npy/.npz, a Git LFS pointer
 * left by a clone without git-lfs, or the HTML error page a failed
 * download saved under the expected name.  Read as safetensors, each
 * gives a meaningless "header length 14064895815" message; naming the
 * kind tells the user what to do.  Only the first bytes are looked at.
 */
#include "internal.h"

#include <ctype.h>
#include <string.h>

/* 1 when the zip's first local file header (at offset 0) names a file
 * whose name ends with SUFFIX; or when SUFFIX occurs anywhere in the
 * first 64 KiB (central directory entries of small archives). */
static int zip_names(const unsigned char *b, size_t len, const char *suffix)
{
    size_t sl = strlen(suffix);
    if (len >= 30) {
        size_t fl = (size_t)b[26] | (size_t)b[27] << 8;
        if (30 + fl <= len && fl >= sl && memcmp(b + 30 + fl - sl, suffix, sl) == 0)
            return 1;
    }
    size_t lim = len < 65536 ? len : 65536;
    for (size_t i = 0; i + sl <= lim; i++)
        if (memcmp(b + i, suffix, sl) == 0)
            return 1;
    return 0;
}

/* 1 when b (after a UTF-8 BOM and white space) starts with WORD,
 * ignoring ASCII case. */
static int starts_ci(const unsigned char *b, size_t len, const char *word)
{
    size_t i = 0;
    if (len >= 3 && b[0] == 0xef && b[1] == 0xbb && b[2] == 0xbf)
        i = 3;
    while (i < len && i < 4096 && isspace(b[i]))
        i++;
    size_t wl = strlen(word);
    if (len - i < wl)
        return 0;
    for (size_t k = 0; k < wl; k++)
        if (tolower(b[i + k]) != word[k])
            return 0;
    return 1;
}

const char *lora_foreign_kind(const void *buf, size_t len)
{
    const unsigned char *b = buf;
    if (!b || len < 2)
        return NULL;
    if (len >= 4 && memcmp(b, "GGUF", 4) == 0)
        return "a GGUF file (llama.cpp's format); lora-tools read safetensors";
    if (len >= 4 && memcmp(b, "PK\3\4", 4) == 0) {
        if (zip_names(b, len, "data.pkl"))
            return "a PyTorch checkpoint (a zip holding a pickle, as torch.save writes .bin/.pt); "
                   "convert it to safetensors first";
        if (zip_names(b, len, ".npy"))
            return "a NumPy .npz archive; lora-tools read safetensors";
        return "a zip archive; lora-tools read safetensors";
    }
    if (b[0] == 0x80 && b[1] >= 2 && b[1] <= 5)
        return "a Python pickle (a PyTorch .bin/.pt checkpoint); convert it to safetensors first";
    if (len >= 6 && memcmp(b, "\x93NUMPY", 6) == 0)
        return "a NumPy .npy array; lora-tools read safetensors";
    if (len >= 2 && b[0] == 0x1f && b[1] == 0x8b)
        return "a gzip-compressed file; decompress it first";
    if (len >= 4 && memcmp(b, "\x28\xb5\x2f\xfd", 4) == 0)
        return "a zstd-compressed file; decompress it first";
    if (starts_ci(b, len, "version https://git-lfs"))
        return "a Git LFS pointer, not the file itself; fetch it with `git lfs pull`";
    if (starts_ci(b, len, "<!doctype html") || starts_ci(b, len, "<html") ||
        starts_ci(b, len, "<head") || starts_ci(b, len, "<?xml"))
        return "an HTML or XML page (a failed download saves the server's error page under "
               "the file's name); download the file again";
    return NULL;
}

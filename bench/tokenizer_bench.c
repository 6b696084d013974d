/*
 * tokenizer_bench.c - time liblora's tokenizer on one text, for
 * bench/tokenizer (not a test).  Prints one line:
 *   open_s encode_s bytes ids checksum
 * encode_s is the best of REPS encodes (the word cache is emptied by a
 * fresh open before each, so every run starts cold) of the whole text,
 * or with MODE "lines" of each line on its own (newline excluded), as
 * a JSONL data set is tokenized.
 * checksum (FNV-1a over the ids) lets the script check that the ids are
 * the reference's.
 */
#include "lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: tokenizer_bench TOKENIZER TEXTFILE [REPS [whole|lines]]\n");
        return 2;
    }
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    int lines = argc > 4 && strcmp(argv[4], "lines") == 0;
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 4;
    }
    char *text = NULL;
    size_t len = 0, cap = 0, got;
    char chunk[1 << 16];
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + got > cap) {
            cap = 2 * (len + got);
            char *p = realloc(text, cap);
            if (!p)
                return 4;
            text = p;
        }
        for (size_t i = 0; i < got; i++)
            text[len + i] = chunk[i];
        len += got;
    }
    fclose(f);
    lora_error err;
    lora_error_clear(&err);
    double open_s = 0, best = 1e30;
    int32_t *ids = NULL;
    size_t n = 0;
    for (int r = 0; r < reps; r++) {
        lora_tokenizer *tok;
        double t0 = now();
        if (lora_tokenizer_open(argv[1], &tok, &err) != LORA_OK) {
            fprintf(stderr, "tokenizer_bench: %s\n", err.msg);
            return 3;
        }
        double t1 = now();
        free(ids);
        ids = NULL;
        n = 0;
        for (size_t a = 0; a < len || (!lines && a == 0);) {
            size_t b = len;
            if (lines) {
                const char *nl = memchr(text + a, '\n', len - a);
                b = nl ? (size_t)(nl - text) : len;
            }
            int32_t *part;
            size_t np;
            if (lora_tokenizer_encode(tok, text + a, b - a, 0, &part, &np, &err) != LORA_OK) {
                fprintf(stderr, "tokenizer_bench: %s\n", err.msg);
                return 3;
            }
            int32_t *all = realloc(ids, (n + np + 1) * sizeof *all);
            if (!all)
                return 4;
            memcpy(all + n, part, np * sizeof *part);
            ids = all;
            n += np;
            free(part);
            a = b + 1;
            if (!lines)
                break;
        }
        double t2 = now();
        if (r == 0 || t1 - t0 < open_s)
            open_s = t1 - t0;
        if (t2 - t1 < best)
            best = t2 - t1;
        lora_tokenizer_free(tok);
    }
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint32_t)ids[i]) * 16777619u;
    }
    printf("%.3f %.3f %zu %zu %08x\n", open_s, best, len, n, h);
    free(ids);
    free(text);
    return 0;
}

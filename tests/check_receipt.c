/*
 * check_receipt.c - merge receipts (receipt.c): write and read back,
 * corrections round trip (varints, zigzag steps, gaps), and hostile
 * files: every truncation, corrupted bytes, and hand-made indexes that
 * lie about offsets, counts, types, dtypes and shapes.  Each must give
 * LORA_EINPUT with a message, never a crash.  Version 2: the kept
 * headers and index (round trip, hostile blocks), the two-step commit
 * with RECEIPT.new, signed receipts (a changed byte, another key, no
 * signature).
 */
#include "testutil.h"
#include "internal.h"
#include "mergecore.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Coded corrections (version 3) of a 300x1000 tensor: 2 row blocks of
 * 13 and 7 bits, 9 ambiguous elements, 2 exceptions. */
static void make_coded(lora_fixes *c)
{
    memset(c, 0, sizeof *c);
    c->coded = 1;
    c->nblocks = 2;
    c->bstart = malloc(3 * sizeof *c->bstart);
    c->bstart[0] = 0;
    c->bstart[1] = 13;
    c->bstart[2] = 20;
    c->nbits = 20;
    c->bitcap = 3;
    c->bits = malloc(3);
    c->bits[0] = 0xa5;
    c->bits[1] = 0x3c;
    c->bits[2] = 0xf7; /* the high 4 bits are not the tensor's: written as 0 */
    c->nambig = 9;
    ck_assert_int_eq(lora_fixes_push(c, 17, 1), 0);
    ck_assert_int_eq(lora_fixes_push(c, 299999, -2), 0);
}

static char *make_receipt(const char *dir, size_t *len, lora_fixes *fx)
{
    char *p = tu_path(dir, "r.receipt");
    lora_receipt *r;
    lora_error err;
    ck_assert_int_eq(lora_receipt_create(p, LORA_ROUND_NEAREST, &r, &err), LORA_OK);
    unsigned char h[32];
    memset(h, 0xab, 32);
    ck_assert_int_eq(lora_receipt_add_adapter(r, "ad/one", h, 0.75, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_add_adapter(r, "ad/two", h, -1.0, &err), LORA_OK);
    lora_receipt_term terms[2] = {{0, "model.layers.0.q_proj", 2.0, 0},
                                  {1, "model.layers.0.q_proj", 0.125, 1}};
    lora_receipt_tensor t = {0};
    t.name = "model.layers.0.q_proj.weight";
    t.base_dtype = LORA_DT_BF16;
    t.dtype = LORA_DT_BF16;
    t.rows = 300;
    t.cols = 1000;
    memset(t.base_hash, 1, 32);
    memset(t.merged_hash, 2, 32);
    t.terms = terms;
    t.nterms = 2;
    uint64_t st = 1, idx = 0;
    memset(fx, 0, sizeof *fx);
    for (int i = 0; i < 5000; i++) {
        idx += 1 + tu_rand(&st) % 50;
        int64_t step = (int64_t)(tu_rand(&st) % 7) - 3;
        if (step == 0)
            step = i % 3 == 0 ? 70000 : -1;
        ck_assert_int_eq(lora_fixes_push(fx, idx, step), 0);
    }
    ck_assert_int_eq(lora_receipt_add_tensor(r, &t, fx, &err), LORA_OK);
    t.name = "model.layers.0.v_proj.weight";
    t.nterms = 1;
    t.dtype = LORA_DT_F32;
    ck_assert_int_eq(lora_receipt_add_tensor(r, &t, NULL, &err), LORA_OK);
    lora_fixes coded;
    make_coded(&coded);
    t.name = "model.layers.0.k_proj.weight";
    t.dtype = LORA_DT_BF16;
    ck_assert_int_eq(lora_receipt_add_tensor(r, &t, &coded, &err), LORA_OK);
    lora_fixes_free(&coded);
    static const char hdr1[] = "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{}}   ";
    static const char ixj[] = "{\"weight_map\": {\"w\": \"a.safetensors\"}}\n";
    unsigned char mh[32];
    memset(mh, 0x5c, 32);
    ck_assert_int_eq(lora_receipt_add_file(r, "a.safetensors", hdr1, sizeof hdr1 - 1, mh, &err),
                     LORA_OK);
    mh[0] = 1;
    ck_assert_int_eq(lora_receipt_add_file(r, "b.safetensors", "{}", 2, mh, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_set_index(r, ixj, sizeof ixj - 1, &err), LORA_OK);
    const uint64_t ssh[2] = {2, 3};
    const unsigned char sdata[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    ck_assert_int_eq(lora_receipt_add_saved(r, "score.weight", LORA_DT_F16, 2, ssh, sdata, 12,
                                            NULL, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_commit(r, &err), LORA_OK);
    char *buf = tu_read(p, len);
    free(p);
    return buf;
}

/* The digest kinds against published answers ("abc": FIPS 180-2 for
 * SHA-256, the BLAKE3 reference implementation's for BLAKE3), and a
 * tree as lora-receipt(5) defines it: the digest of the chunks'
 * digests in order. */
START_TEST(test_digest_kinds)
{
    static const struct {
        int kind;
        const char *hex;
    } kat[] = {
        {LORA_TH_SHA256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {LORA_TH_BLAKE3, "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"},
    };
    for (size_t i = 0; i < sizeof kat / sizeof *kat; i++) {
        unsigned char h[32];
        char hex[65];
        ck_assert_int_eq(lora_th_chunk(kat[i].kind, "abc", 3, h), 0);
        sodium_bin2hex(hex, sizeof hex, h, 32);
        ck_assert_str_eq(hex, kat[i].hex);
    }
    /* 1 MiB as 256 rows of 4096 one-byte elements: chunks of
     * lora_block_rows(4096) = 64 rows, the last one shorter */
    static unsigned char data[(1 << 20) - 4096];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 2654435761u >> 13);
    uint64_t cols = 4096, rows = sizeof data / cols, br = lora_block_rows(cols);
    ck_assert_uint_gt(rows, br); /* more than one chunk */
    int kinds[] = {LORA_TH_BLAKE3, LORA_TH_SHA256, LORA_TH_BLAKE2B};
    for (size_t k = 0; k < 3; k++) {
        unsigned char tree[32], want[32], cat[64 * 32];
        size_t nc = 0;
        for (uint64_t r = 0; r < rows; r += br, nc++) {
            uint64_t n = rows - r < br ? rows - r : br;
            ck_assert_int_eq(lora_th_chunk(kinds[k], data + r * cols, n * cols, cat + nc * 32),
                             0);
        }
        ck_assert_int_eq(lora_th_chunk(kinds[k], cat, nc * 32, want), 0);
        ck_assert_int_eq(lora_tree_hash_kind(kinds[k], data, rows, cols, 1, tree), 0);
        ck_assert(memcmp(tree, want, 32) == 0);
    }
}
END_TEST

START_TEST(test_roundtrip)
{
    char *d = tu_tmpdir();
    size_t len;
    lora_fixes fx;
    char *buf = make_receipt(d, &len, &fx);
    char *p = tu_path(d, "r.receipt");
    lora_receipt *r;
    lora_error err;
    ck_assert_int_eq(lora_receipt_open(p, &r, &err), LORA_OK);
    ck_assert_uint_eq(lora_receipt_bytes(r), len);
    ck_assert_uint_eq(lora_receipt_adapter_count(r), 2);
    ck_assert_str_eq(lora_receipt_adapter_at(r, 0)->path, "ad/one");
    ck_assert(lora_receipt_adapter_at(r, 0)->weight == 0.75);
    ck_assert(lora_receipt_adapter_at(r, 1)->weight == -1.0);
    ck_assert_uint_eq(lora_receipt_tensor_count(r), 3);
    const lora_receipt_tensor *t = lora_receipt_find(r, "model.layers.0.q_proj.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->rows, 300);
    ck_assert_uint_eq(t->nterms, 2);
    ck_assert(t->terms[1].scale == 0.125 && t->terms[1].transpose == 1);
    ck_assert_int_eq(t->base_dtype, LORA_DT_BF16);
    lora_fixes got = {0};
    ck_assert_int_eq(lora_receipt_fixes(r, 0, &got, &err), LORA_OK);
    ck_assert_uint_eq(got.n, fx.n);
    ck_assert(memcmp(got.index, fx.index, fx.n * 8) == 0);
    ck_assert(memcmp(got.step, fx.step, fx.n * 8) == 0);
    ck_assert_int_eq(lora_receipt_fixes(r, 1, &got, &err), LORA_OK);
    ck_assert_uint_eq(got.n, 0);
    ck_assert_int_eq(lora_receipt_tensor_at(r, 1)->dtype, LORA_DT_F32);
    ck_assert(!got.coded);
    /* version 3: coded corrections come back as written */
    lora_fixes want;
    make_coded(&want);
    ck_assert_int_eq(lora_receipt_fixes(r, 2, &got, &err), LORA_OK);
    ck_assert(got.coded);
    ck_assert_uint_eq(got.nblocks, 2);
    ck_assert(memcmp(got.bstart, want.bstart, 3 * 8) == 0);
    ck_assert_uint_eq(got.nbits, 20);
    ck_assert_uint_eq(got.nambig, 9);
    ck_assert_uint_eq(lora_receipt_tensor_at(r, 2)->ambiguous, 9);
    ck_assert(got.bits[0] == 0xa5 && got.bits[1] == 0x3c && got.bits[2] == 0x07);
    ck_assert_uint_eq(got.n, 2);
    ck_assert(got.index[1] == 299999 && got.step[1] == -2);
    lora_fixes_free(&want);
    /* and a plain tensor read after a coded one is plain again */
    ck_assert_int_eq(lora_receipt_fixes(r, 0, &got, &err), LORA_OK);
    ck_assert(!got.coded && got.n == fx.n);
    ck_assert_int_eq(lora_receipt_version(r), 6);
    /* version 2: the kept headers and index come back as written */
    ck_assert_uint_eq(lora_receipt_file_count(r), 2);
    const lora_receipt_file *f = lora_receipt_file_find(r, "a.safetensors");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(f->header_len, 42);
    ck_assert(memcmp(f->header, "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{}}   ", 42) == 0);
    ck_assert_int_eq(f->merged_header[0], 0x5c);
    f = lora_receipt_file_find(r, "b.safetensors");
    ck_assert(f && f->header_len == 2 && f->merged_header[0] == 1);
    ck_assert_ptr_null(lora_receipt_file_find(r, "c.safetensors"));
    uint64_t il;
    const unsigned char *ix = lora_receipt_index(r, &il);
    ck_assert(ix && il == 39 && memcmp(ix, "{\"weight_map\"", 13) == 0);
    ck_assert_uint_eq(lora_receipt_saved_count(r), 1);
    const lora_receipt_saved *sv = lora_receipt_saved_find(r, "score.weight");
    const void *sd;
    ck_assert(sv && sv->dtype == LORA_DT_F16 && sv->ndim == 2 && sv->shape[1] == 3);
    ck_assert_int_eq(lora_receipt_saved_data(r, sv, &sd, &err), LORA_OK);
    ck_assert(memcmp(sd, "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c", 12) == 0);
    ck_assert_ptr_null(lora_receipt_saved_find(r, "x"));
    /* compact: two varints of about a byte each per correction */
    ck_assert_uint_lt(t->length, fx.n * 3);
    lora_receipt_close(r);
    lora_fixes_free(&got);
    lora_fixes_free(&fx);
    free(buf);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* open, then decode every tensor's corrections; 0 if all fine */
static int try_all(const void *buf, size_t len, lora_error *err)
{
    lora_receipt *r;
    int rc = lora_receipt_open_memory(buf, len, "t", &r, err);
    if (rc)
        return rc;
    lora_fixes f = {0};
    for (size_t i = 0; i < lora_receipt_tensor_count(r) && !rc; i++)
        rc = lora_receipt_fixes(r, i, &f, err);
    for (size_t i = 0; i < lora_receipt_saved_count(r) && !rc; i++) {
        const char *names[] = {"score.weight", "s"};
        const void *d;
        for (size_t k = 0; k < 2 && !rc; k++) {
            const lora_receipt_saved *s = lora_receipt_saved_find(r, names[k]);
            if (s)
                rc = lora_receipt_saved_data(r, s, &d, err);
        }
    }
    lora_fixes_free(&f);
    lora_receipt_close(r);
    return rc;
}

START_TEST(test_truncated_corrupted)
{
    char *d = tu_tmpdir();
    size_t len;
    lora_fixes fx;
    char *buf = make_receipt(d, &len, &fx);
    lora_error err;
    ck_assert_int_eq(try_all(buf, len, &err), LORA_OK);
    /* every prefix fails cleanly */
    for (size_t n = 0; n < len; n += (n < 64 || n > len - 600) ? 1 : 97) {
        char *c = malloc(n ? n : 1);
        memcpy(c, buf, n);
        ck_assert_int_eq(try_all(c, n, &err), LORA_EINPUT);
        ck_assert(err.msg[0] != 0);
        free(c);
    }
    /* a flipped byte anywhere: refused (corrections are hashed, the
     * index is checked), or at worst a field that still parses */
    uint64_t st = 5, jlen = 0;
    int refused = 0;
    for (int i = 0; i < 8; i++)
        jlen |= (uint64_t)(unsigned char)buf[len - 16 + i] << (8 * i);
    for (int i = 0; i < 3000; i++) {
        char *c = malloc(len);
        memcpy(c, buf, len);
        size_t at = (size_t)(tu_rand(&st) % len);
        c[at] ^= (char)(1 + tu_rand(&st) % 255);
        int rc = try_all(c, len, &err);
        ck_assert(rc == LORA_OK || rc == LORA_EINPUT);
        refused += rc != LORA_OK;
        if (at < len - 16 - jlen) /* magic or corrections: always caught */
            ck_assert_int_eq(rc, LORA_EINPUT);
        free(c);
    }
    ck_assert_int_gt(refused, 2000);
    lora_fixes_free(&fx);
    free(buf);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* a receipt with a hand-written index over len bytes of block data */
static size_t forge(char *out, const char *json, const void *data, size_t dlen)
{
    size_t n = strlen(json), at = 0;
    memcpy(out, "LORARCP\x01", 8);
    at = 8;
    memcpy(out + at, data, dlen);
    at += dlen;
    memcpy(out + at, json, n);
    at += n;
    for (int i = 0; i < 8; i++)
        out[at + i] = (char)((uint64_t)n >> (8 * i));
    memcpy(out + at + 8, "LORARCP\x01", 8);
    return at + 16;
}

#define H64 "0000000000000000000000000000000000000000000000000000000000000000"
#define HEAD "{\"format\":\"lora-receipt\",\"version\":1,\"tool\":\"x\",\"rounding\":\"nearest\"," \
             "\"hash\":\"blake2b-256-tree\",\"adapters\":[{\"path\":\"a\",\"blake2b\":\"" H64 \
             "\",\"weight\":1}],\"tensors\":["
#define T1(shape, dt, terms, fixes, off, len) \
    "{\"name\":\"w\",\"base_dtype\":\"" dt "\",\"dtype\":\"BF16\",\"shape\":" shape \
    ",\"base\":\"" H64 "\",\"merged\":\"" H64 "\",\"terms\":" terms ",\"fixes\":" fixes \
    ",\"offset\":" off ",\"length\":" len ",\"fixes_blake2b\":\"" H64 "\"}"
#define TERM "[{\"adapter\":0,\"module\":\"m\",\"scale\":1.0,\"transpose\":false}]"
#define H32 "00000000000000000000000000000000"
#define HEAD5(mh) "{\"format\":\"lora-receipt\",\"version\":5,\"tool\":\"x\",\"rounding\":\"nearest\"," \
             "\"hash\":\"sha256-tree\"" mh ",\"files\":[],\"adapters\":[{\"path\":\"a\",\"blake2b\":\"" \
             H64 "\",\"weight\":1}],\"tensors\":["
/* version V with base digest scheme H (version 6: "blake3-tree") */
#define HEADV(v, h) "{\"format\":\"lora-receipt\",\"version\":" v ",\"tool\":\"x\"," \
             "\"rounding\":\"nearest\",\"hash\":\"" h "\",\"merged_hash\":\"xxh3-128-tree\"," \
             "\"files\":[],\"adapters\":[{\"path\":\"a\",\"blake2b\":\"" H64 "\",\"weight\":1}]," \
             "\"tensors\":["
/* a version 5 tensor with merged digest M, no corrections */
#define T1M(shape, M) \
    "{\"name\":\"w\",\"base_dtype\":\"BF16\",\"dtype\":\"BF16\",\"shape\":" shape \
    ",\"base\":\"" H64 "\",\"merged\":\"" M "\",\"terms\":" TERM ",\"fixes\":0,\"ambiguous\":0" \
    ",\"offset\":8,\"length\":1,\"fixes_blake2b\":\"" H64 "\"}"

START_TEST(test_hostile_index)
{
    static const char *bad[] = {
        "[]",
        "{\"format\":\"lora-receipt\",\"version\":2}",
        "{\"format\":\"safetensors\",\"version\":1}",
        HEAD "]}", /* fine: no tensors; checked separately below */
        HEAD T1("[2,3]", "I32", TERM, "0", "8", "0") "]}",
        HEAD T1("[2]", "BF16", TERM, "0", "8", "0") "]}",
        HEAD T1("[-2,3]", "BF16", TERM, "0", "8", "0") "]}",
        HEAD T1("[4294967296,4294967296]", "BF16", TERM, "0", "8", "0") "]}",
        HEAD T1("[18446744073709551615,2]", "BF16", TERM, "0", "8", "0") "]}",
        HEAD T1("[2,3]", "BF16", TERM, "0", "4", "0") "]}",
        HEAD T1("[2,3]", "BF16", TERM, "1", "8", "4000") "]}",
        HEAD T1("[2,3]", "BF16", TERM, "100", "8", "4") "]}",
        HEAD T1("[2,3]", "BF16", TERM, "0", "9223372036854775807", "9223372036854775807") "]}",
        HEAD T1("[2,3]", "BF16", "[]", "0", "8", "0") "]}",
        HEAD T1("[2,3]", "BF16", "[{\"adapter\":1,\"module\":\"m\",\"scale\":1,\"transpose\":false}]", "0", "8", "0") "]}",
        HEAD T1("[2,3]", "BF16", "[{\"adapter\":0,\"module\":7,\"scale\":1,\"transpose\":false}]", "0", "8", "0") "]}",
        HEAD T1("[2,3]", "BF16", "7", "0", "8", "0") "]}",
        HEAD T1("[2,3]", "BF16", TERM, "0", "8", "0") "," T1("[2,3]", "BF16", TERM, "0", "8", "0") "]}",
        HEAD "7]}",
        "{\"format\":\"lora-receipt\",\"version\":1,\"tool\":\"x\",\"rounding\":\"up\"}",
        /* version 5: merged digests are XXH3-128 (32 hex digits), said so */
        HEAD5("") T1M("[2,3]", H32) "]}",
        HEAD5(",\"merged_hash\":\"blake2b-256-tree\"") T1M("[2,3]", H32) "]}",
        HEAD5(",\"merged_hash\":\"xxh3-128-tree\"") T1M("[2,3]", H64) "]}",
        HEAD5(",\"merged_hash\":\"xxh3-128-tree\"") T1M("[2,3]", H32 "0") "]}",
        /* version 5's base digests are SHA-256 trees */
        "{\"format\":\"lora-receipt\",\"version\":5,\"tool\":\"x\",\"rounding\":\"nearest\","
        "\"hash\":\"blake2b-256-tree\",\"merged_hash\":\"xxh3-128-tree\",\"adapters\":[{\"path\":"
        "\"a\",\"blake2b\":\"" H64 "\",\"weight\":1}],\"tensors\":[]}",
        /* and a receipt of version 4 or older does not name one */
        "{\"format\":\"lora-receipt\",\"version\":3,\"tool\":\"x\",\"rounding\":\"nearest\","
        "\"hash\":\"blake2b-256-tree\",\"merged_hash\":\"xxh3-128-tree\",\"adapters\":[{\"path\":"
        "\"a\",\"blake2b\":\"" H64 "\",\"weight\":1}],\"tensors\":[]}",
        /* version 6's base digests are BLAKE3 trees, version 5's SHA-256
         * ones: each names its own, and a version from the future is
         * refused */
        HEADV("6", "sha256-tree") T1M("[2,3]", H32) "]}",
        HEADV("6", "blake2b-256-tree") T1M("[2,3]", H32) "]}",
        HEADV("5", "blake3-tree") T1M("[2,3]", H32) "]}",
        HEADV("7", "blake3-tree") T1M("[2,3]", H32) "]}",
        "{\"format\":\"lora-receipt\",\"format\":\"lora-receipt\"}",
        "not json at all",
    };
    char buf[8192];
    lora_error err;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t n = forge(buf, bad[i], "", 0);
        int rc = try_all(buf, n, &err);
        if (i == 3) {
            ck_assert_int_eq(rc, LORA_OK);
            continue;
        }
        ck_assert_msg(rc == LORA_EINPUT, "case %zu accepted", i);
        ck_assert(strlen(err.msg) > 0);
    }
    /* blocks that lie: right hash, wrong content */
    static const unsigned char blocks[][4] = {
        {0x05, 0x02, 0, 0},  /* index 5 of 6, step 1: fine */
        {0x06, 0x02, 0, 0},  /* index 6: outside a 2x3 tensor */
        {0x00, 0x00, 0, 0},  /* step 0 */
        {0x80, 0x80, 0, 0},  /* truncated varint */
    };
    for (size_t b = 0; b < 4; b++) {
        unsigned char h[32];
        crypto_generichash(h, 32, blocks[b], 2, NULL, 0);
        char hex[65], json[2048];
        sodium_bin2hex(hex, sizeof hex, h, 32);
        snprintf(json, sizeof json, HEAD T1("[2,3]", "BF16", TERM, "1", "8", "2") "]}");
        char *at = strstr(json, "\"fixes_blake2b\":\"") + strlen("\"fixes_blake2b\":\"");
        memcpy(at, hex, 64);
        size_t n = forge(buf, json, blocks[b], 2);
        ck_assert_int_eq(try_all(buf, n, &err), b == 0 ? LORA_OK : LORA_EINPUT);
    }
    /* version 5 as lora-merge writes it: read (the cases above fail for
     * what they change, not for something else) */
    {
        static const unsigned char blk[1] = {0}; /* no rank bits, no corrections */
        unsigned char h[32];
        crypto_generichash(h, 32, blk, 1, NULL, 0);
        char hex[65], json[2048];
        sodium_bin2hex(hex, sizeof hex, h, 32);
        snprintf(json, sizeof json, "%s",
                 HEAD5(",\"merged_hash\":\"xxh3-128-tree\"") T1M("[2,3]", H32) "]}");
        char *at = strstr(json, "\"fixes_blake2b\":\"") + strlen("\"fixes_blake2b\":\"");
        memcpy(at, hex, 64);
        ck_assert_int_eq(try_all(buf, forge(buf, json, blk, 1), &err), LORA_OK);
        /* and version 6, which only renames the base digests' scheme */
        snprintf(json, sizeof json, "%s", HEADV("6", "blake3-tree") T1M("[2,3]", H32) "]}");
        at = strstr(json, "\"fixes_blake2b\":\"") + strlen("\"fixes_blake2b\":\"");
        memcpy(at, hex, 64);
        ck_assert_int_eq(try_all(buf, forge(buf, json, blk, 1), &err), LORA_OK);
    }
    /* index length pointing before the start */
    size_t n = forge(buf, HEAD "]}", "", 0);
    buf[n - 16] = (char)0xff;
    buf[n - 9] = 0x7f;
    ck_assert_int_eq(try_all(buf, n, &err), LORA_EINPUT);
    /* the open call on a path: missing file, a folder */
    lora_receipt *r;
    ck_assert_int_eq(lora_receipt_open("/nonexistent/x.receipt", &r, &err), LORA_EINPUT);
    ck_assert_int_eq(lora_receipt_open("/", &r, &err), LORA_EINPUT);
}
END_TEST

/* Version 3 bit sections that lie, each with its hash right: a 2x3
 * tensor (one row block). */
#define HEAD3 "{\"format\":\"lora-receipt\",\"version\":3,\"tool\":\"x\",\"rounding\":\"nearest\"," \
             "\"hash\":\"blake2b-256-tree\",\"files\":[],\"adapters\":[{\"path\":\"a\",\"blake2b\":\"" H64 \
             "\",\"weight\":1}],\"tensors\":["
#define T3(amb, fixes, len) \
    "{\"name\":\"w\",\"base_dtype\":\"BF16\",\"dtype\":\"BF16\",\"shape\":[2,3]" \
    ",\"base\":\"" H64 "\",\"merged\":\"" H64 "\",\"terms\":" TERM ",\"fixes\":" fixes \
    ",\"ambiguous\":" amb ",\"offset\":8,\"length\":" len ",\"fixes_blake2b\":\"" H64 "\"}"

START_TEST(test_hostile_bits)
{
    static const struct {
        const char *json;
        unsigned char block[6];
        size_t len;
        int ok;
    } cases[] = {
        {HEAD3 T3("1", "0", "3") "]}", {0x01, 0x02, 0x01}, 3, 1},   /* 2 bits, one rank */
        {HEAD3 T3("0", "0", "1") "]}", {0x00}, 1, 1},               /* no bits */
        {HEAD3 T3("1", "1", "5") "]}", {0x01, 0x02, 0x01, 0x05, 0x02}, 5, 1}, /* and a fix */
        {HEAD3 T3("1", "0", "3") "]}", {0x02, 0x02, 0x01}, 3, 0},   /* 2 blocks for 1 */
        {HEAD3 T3("1", "0", "3") "]}", {0x01, 0x09, 0x01}, 3, 0},   /* 9 bits in 1 byte */
        {HEAD3 T3("1", "0", "3") "]}", {0x01, 0x02, 0x05}, 3, 0},   /* a stray bit */
        {HEAD3 T3("1", "0", "1") "]}", {0x00}, 1, 0},               /* ambiguous, no bits */
        {HEAD3 T3("3", "0", "3") "]}", {0x01, 0x02, 0x01}, 3, 0},   /* 3 ranks in 2 bits */
        {HEAD3 T3("0", "0", "4") "]}", {0x01, 0xc1, 0x01, 0x00}, 4, 0}, /* 193 bits > 6x32 */
        {HEAD3 T3("1", "0", "2") "]}", {0x01, 0x80}, 2, 0},         /* truncated varint */
        {HEAD3 T3("7", "0", "1") "]}", {0x00}, 1, 0},               /* more than the tensor */
        {HEAD3 T3("0", "0", "0") "]}", {0}, 0, 0},                  /* no block at all */
        {HEAD3 T3("0", "0", "2") "]}", {0x00, 0x00}, 2, 0},         /* trailing byte */
        {HEAD3 T3("\"1\"", "0", "3") "]}", {0x01, 0x02, 0x01}, 3, 0}, /* not a number */
    };
    char buf[8192];
    lora_error err;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        unsigned char h[32];
        crypto_generichash(h, 32, cases[i].block, cases[i].len, NULL, 0);
        char hex[65], json[4096];
        sodium_bin2hex(hex, sizeof hex, h, 32);
        snprintf(json, sizeof json, "%s", cases[i].json);
        char *at = strstr(json, "\"fixes_blake2b\":\"") + strlen("\"fixes_blake2b\":\"");
        memcpy(at, hex, 64);
        size_t n = forge(buf, json, cases[i].block, cases[i].len);
        int rc = try_all(buf, n, &err);
        ck_assert_msg(cases[i].ok ? rc == LORA_OK : rc == LORA_EINPUT, "case %zu: %d %s", i, rc,
                      err.msg);
    }
    /* a missing "ambiguous" in version 3 */
    char json[4096];
    snprintf(json, sizeof json, "%s", HEAD3 T3("0", "0", "1") "]}");
    char *a = strstr(json, "\"ambiguous\"");
    memcpy(a, "\"ambiguouz\"", 11);
    size_t n = forge(buf, json, "\0", 1);
    ck_assert_int_eq(try_all(buf, n, &err), LORA_EINPUT);
}
END_TEST

/* version 2 indexes whose files or index lie; the data is the two
 * bytes "{}" at offset 8 */
START_TEST(test_hostile_files)
{
    unsigned char h[32];
    char hex[65], good[160], json[8192], buf[16384];
    crypto_generichash(h, 32, (const unsigned char *)"{}", 2, NULL, 0);
    sodium_bin2hex(hex, sizeof hex, h, 32);
    snprintf(good, sizeof good, "{\"offset\":8,\"length\":2,\"blake2b\":\"%s\"}", hex);
#define V2 "{\"format\":\"lora-receipt\",\"version\":2,\"tool\":\"x\",\"rounding\":\"nearest\"," \
           "\"hash\":\"blake2b-256-tree\",\"adapters\":[{\"path\":\"a\",\"blake2b\":\"" H64 \
           "\",\"weight\":1}],\"tensors\":[]"
    const char *cases[][2] = {
        /* {files, index}; %s is the good block */
        {"[{\"name\":\"a\",\"header\":%s,\"merged_header\":\"" H64 "\"}]", NULL}, /* fine */
        {"[{\"name\":\"a\",\"header\":%s,\"merged_header\":\"" H64 "\"}]", "%s"}, /* fine */
        {NULL, NULL},                                     /* no files in a version 2 receipt */
        {"{}", NULL},
        {"[7]", NULL},
        {"[{\"header\":%s,\"merged_header\":\"" H64 "\"}]", NULL},
        {"[{\"name\":\"\",\"header\":%s,\"merged_header\":\"" H64 "\"}]", NULL},
        {"[{\"name\":\"a\",\"header\":%s,\"merged_header\":\"zz\"}]", NULL},
        {"[{\"name\":\"a\",\"header\":%s,\"merged_header\":\"" H64 "\"},"
         "{\"name\":\"a\",\"header\":%s,\"merged_header\":\"" H64 "\"}]", NULL},
        {"[{\"name\":\"a\",\"header\":{\"offset\":0,\"length\":2,\"blake2b\":\"" H64 "\"},"
         "\"merged_header\":\"" H64 "\"}]", NULL},
        {"[{\"name\":\"a\",\"header\":{\"offset\":8,\"length\":2,\"blake2b\":\"" H64 "\"},"
         "\"merged_header\":\"" H64 "\"}]", NULL},
        {"[{\"name\":\"a\",\"header\":{\"offset\":8,\"length\":0,\"blake2b\":\"" H64 "\"},"
         "\"merged_header\":\"" H64 "\"}]", NULL},
        {"[{\"name\":\"a\",\"header\":{\"offset\":9,\"length\":18446744073709551615,"
         "\"blake2b\":\"" H64 "\"},\"merged_header\":\"" H64 "\"}]", NULL},
        {"[{\"name\":\"a\",\"header\":{\"offset\":8,\"length\":3000,\"blake2b\":\"" H64 "\"},"
         "\"merged_header\":\"" H64 "\"}]", NULL},
        {"[{\"name\":\"a\",\"header\":\"x\",\"merged_header\":\"" H64 "\"}]", NULL},
        {"[]", "{\"offset\":8,\"length\":2,\"blake2b\":\"" H64 "\"}"},
        {"[]", "{\"offset\":8,\"length\":-2,\"blake2b\":\"" H64 "\"}"},
        {"[]", "[]"},
    };
    lora_error err;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char files[4096] = "", index[1024] = "";
        if (cases[i][0])
            snprintf(files, sizeof files, cases[i][0], good, good);
        if (cases[i][1])
            snprintf(index, sizeof index, cases[i][1], good);
        snprintf(json, sizeof json, V2 "%s%s%s%s%s}", cases[i][0] ? ",\"files\":" : "", files,
                 cases[i][1] ? ",\"index\":" : "", index, "");
        size_t n = forge(buf, json, "{}", 2);
        int rc = try_all(buf, n, &err);
        if (i < 2) {
            ck_assert_msg(rc == LORA_OK, "case %zu: %s", i, err.msg);
            continue;
        }
        ck_assert_msg(rc == LORA_EINPUT, "case %zu accepted", i);
        ck_assert(strlen(err.msg) > 0);
    }
    /* saved tensors: a block of exactly the tensor's bytes inside the
     * file, its hash checked when used */
    static const char *saved[] = {
        "[{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[1],\"data\":%s}]",  /* fine */
        "[{\"name\":\"s\",\"dtype\":\"F32\",\"shape\":[1],\"data\":%s}]",
        "[{\"name\":\"s\",\"dtype\":\"I9\",\"shape\":[1],\"data\":%s}]",
        "[{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data\":%s}]",
        "[{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[4294967296,4294967296,8],"
        "\"data\":%s}]",
        "[{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[-1],\"data\":%s}]",
        "[{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[1],\"data\":7}]",
        "[{\"dtype\":\"F16\",\"shape\":[1],\"data\":%s}]",
        "[{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[1],\"data\":%s},"
        "{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[1],\"data\":%s}]",
        "[{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[1],\"data\":{\"offset\":9,"
        "\"length\":2,\"blake2b\":\"" H64 "\"}}]",
        "[{\"name\":\"s\",\"dtype\":\"F16\",\"shape\":[1],\"data\":{\"offset\":8,"
        "\"length\":2,\"blake2b\":\"" H64 "\"}}]",                     /* wrong hash */
        "{}",
    };
    for (size_t i = 0; i < sizeof saved / sizeof *saved; i++) {
        char sv[2048];
        snprintf(sv, sizeof sv, saved[i], good, good);
        snprintf(json, sizeof json, V2 ",\"files\":[],\"saved\":%s}", sv);
        size_t n = forge(buf, json, "{}", 2);
        int rc = try_all(buf, n, &err);
        ck_assert_msg(rc == (i == 0 ? LORA_OK : LORA_EINPUT), "saved case %zu: %d", i, rc);
    }
    /* version 1 (no files) is still read; version 3 is not */
    size_t n = forge(buf, HEAD "]}", "", 0);
    lora_receipt *r;
    ck_assert_int_eq(lora_receipt_open_memory(buf, n, "v1", &r, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_version(r), 1);
    ck_assert_uint_eq(lora_receipt_file_count(r), 0);
    uint64_t il;
    ck_assert_ptr_null(lora_receipt_index(r, &il));
    lora_receipt_close(r);
    snprintf(json, sizeof json, "%s", HEAD "]}");
    json[strstr(json, "\"version\":1") - json + 10] = '3';
    n = forge(buf, json, "", 0);
    ck_assert_int_eq(try_all(buf, n, &err), LORA_EINPUT);
}
END_TEST

static int exists(const char *dir, const char *name)
{
    char *p = tu_path(dir, name);
    int e = access(p, F_OK) == 0;
    free(p);
    return e;
}

static lora_receipt *small_receipt(const char *p)
{
    lora_receipt *r;
    lora_error err;
    unsigned char h[32] = {0};
    ck_assert_int_eq(lora_receipt_create(p, LORA_ROUND_NEAREST, &r, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_add_adapter(r, "a", h, 1.0, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_add_file(r, "m.safetensors", "{}", 2, h, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_finish(r, &err), LORA_OK);
    return r;
}

/* a re-merge's receipt goes to PATH.new before OUT is renamed, then onto
 * PATH; an abort after staging removes PATH.new */
START_TEST(test_stage_install)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "x.receipt");
    lora_error err;
    lora_receipt *r = small_receipt(p);
    ck_assert_int_eq(lora_receipt_stage_new(r, &err), LORA_OK);
    ck_assert(exists(d, "x.receipt.new") && !exists(d, "x.receipt"));
    ck_assert_int_eq(lora_receipt_install(r, &err), LORA_OK);
    ck_assert(!exists(d, "x.receipt.new") && exists(d, "x.receipt"));
    r = small_receipt(p);
    ck_assert_int_eq(lora_receipt_stage_new(r, &err), LORA_OK);
    lora_receipt_abort(r);
    ck_assert(!exists(d, "x.receipt.new") && exists(d, "x.receipt"));
    /* unfinished: install refuses and leaves nothing */
    ck_assert_int_eq(lora_receipt_create(p, LORA_ROUND_NEAREST, &r, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_install(r, &err), LORA_EUSAGE);
    char *cmd;
    ck_assert_int_gt(asprintf(&cmd, "test \"$(ls -A '%s')\" = x.receipt", d), 0);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* signed receipts: verified over the bytes parsed; a changed byte,
 * another key, no signature are refused */
START_TEST(test_signed)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "s.receipt"), *sp = tu_path(d, "s.receipt.minisig");
    lora_error err;
    lora_seckey *sk, *sk2;
    lora_pubkey pk[2];
    ck_assert_int_eq(lora_init(&err), LORA_OK); /* libsodium's secure memory */
    ck_assert_int_eq(lora_keygen(&sk, &err), LORA_OK);
    ck_assert_int_eq(lora_keygen(&sk2, &err), LORA_OK);
    lora_seckey_pubkey(sk, &pk[0]);
    lora_seckey_pubkey(sk2, &pk[1]);
    lora_receipt *r = small_receipt(p);
    ck_assert_int_eq(lora_receipt_sign(r, sk, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_install(r, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_open_signed(p, pk, 2, &r, &err), LORA_OK);
    ck_assert_uint_eq(lora_receipt_file_count(r), 1);
    lora_receipt_close(r);
    ck_assert_int_eq(lora_receipt_open_signed(p, &pk[1], 1, &r, &err), LORA_ECHECK);
    size_t len;
    char *b = tu_read(p, &len);
    b[9] ^= 1; /* inside the kept header: the receipt itself would catch it too */
    FILE *f = fopen(p, "wb");
    ck_assert(f && fwrite(b, 1, len, f) == len && fclose(f) == 0);
    ck_assert_int_eq(lora_receipt_open_signed(p, pk, 2, &r, &err), LORA_ECHECK);
    ck_assert(strstr(err.msg, "signature") != NULL);
    unlink(sp);
    ck_assert_int_eq(lora_receipt_open_signed(p, pk, 2, &r, &err), LORA_EINPUT);
    ck_assert(strstr(err.msg, "minisig") != NULL);
    free(b);
    lora_seckey_free(sk);
    lora_seckey_free(sk2);
    free(p);
    free(sp);
    tu_rmtree(d);
    free(d);
}
END_TEST

START_TEST(test_abort_leaves_nothing)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "x.receipt");
    lora_receipt *r;
    lora_error err;
    ck_assert_int_eq(lora_receipt_create(p, LORA_ROUND_NEAREST, &r, &err), LORA_OK);
    lora_receipt_abort(r);
    char *cmd;
    ck_assert_int_gt(asprintf(&cmd, "test -z \"$(ls -A '%s')\"", d), 0);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("receipt");
    TCase *tc = tcase_create("receipt");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_digest_kinds);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_truncated_corrupted);
    tcase_add_test(tc, test_hostile_index);
    tcase_add_test(tc, test_hostile_bits);
    tcase_add_test(tc, test_abort_leaves_nothing);
    tcase_add_test(tc, test_hostile_files);
    tcase_add_test(tc, test_stage_install);
    tcase_add_test(tc, test_signed);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite(), 0);
}

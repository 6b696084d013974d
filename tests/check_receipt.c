/*
 * check_receipt.c - merge receipts (receipt.c): write and read back,
 * corrections round trip (varints, zigzag steps, gaps), and hostile
 * files: every truncation, corrupted bytes, and hand-made indexes that
 * lie about offsets, counts, types, dtypes and shapes.  Each must give
 * LORA_EINPUT with a message, never a crash.
 */
#include "testutil.h"
#include "internal.h"
#include "mergecore.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

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
    ck_assert_int_eq(lora_receipt_commit(r, &err), LORA_OK);
    char *buf = tu_read(p, len);
    free(p);
    return buf;
}

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
    ck_assert_uint_eq(lora_receipt_tensor_count(r), 2);
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
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_truncated_corrupted);
    tcase_add_test(tc, test_hostile_index);
    tcase_add_test(tc, test_abort_leaves_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite(), 0);
}

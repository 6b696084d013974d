/*
 * check_gguf.c - unit tests for the GGUF reader and writer (gguf.c,
 * gguf_write.c), GGUF models as base checkpoints (gguf_checkpoint.c),
 * llama.cpp's names and q/k permutation (gguf_names.c),
 * GGUF LoRA adapters (gguf_adapter.c) and the PEFT <-> GGUF conversions
 * (convert.c).
 *
 * Hostile files are built byte by byte here (not with our writer), then
 * truncated at every length and corrupted field by field; every one must
 * be refused with LORA_EINPUT.  Conversions are checked on deltas: ΔW
 * by plain loops from the PEFT factors with PEFT's scale, against the
 * GGUF factors with llama.cpp's scale (alpha / r in float), rows put
 * back in HF order by a plain loop of the permutation's definition.
 */
#include "testutil.h"
#include "internal.h"
#include "gguf_int.h"

#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- a byte builder for hand-made GGUF files ----------------------- */

typedef struct bb {
    unsigned char *p;
    size_t n, cap;
} bb;

static void put(bb *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void u32(bb *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    put(b, x, 4);
}
static void u64(bb *b, uint64_t v)
{
    u32(b, (uint32_t)v);
    u32(b, (uint32_t)(v >> 32));
}
static void str(bb *b, const char *s)
{
    u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void pad(bb *b, size_t a)
{
    static const unsigned char z[64];
    while (b->n % a)
        put(b, z, 1);
}
static void set_u64(bb *b, size_t off, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b->p[off + i] = (unsigned char)(v >> (8 * i));
}
static void set_u32(bb *b, size_t off, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b->p[off + i] = (unsigned char)(v >> (8 * i));
}

/* Field offsets of the sample file, for corrupting them. */
typedef struct sample {
    bb b;
    size_t n_tensors, n_kv, kv1_type, arr_len, str_len, align_val;
    size_t t0_ndims, t0_ne0, t0_type, t0_off, t1_off, t1_name_len;
    size_t data_end;
} sample;

/* v3, keys: general.architecture (string), an u32 array, general.alignment
 * (u32 = align), a string array; tensors: "a" F32 [8,2] and "b" F16 [4]. */
static void make_sample(sample *s, uint32_t align)
{
    memset(s, 0, sizeof *s);
    bb *b = &s->b;
    put(b, "GGUF", 4);
    u32(b, 3);
    s->n_tensors = b->n;
    u64(b, 2);
    s->n_kv = b->n;
    u64(b, 4);
    str(b, "general.architecture");
    s->kv1_type = b->n;
    u32(b, LORA_GGUF_STRING);
    s->str_len = b->n;
    str(b, "llama");
    str(b, "test.ids");
    u32(b, LORA_GGUF_ARRAY);
    u32(b, LORA_GGUF_U32);
    s->arr_len = b->n;
    u64(b, 3);
    u32(b, 7);
    u32(b, 8);
    u32(b, 9);
    str(b, "general.alignment");
    u32(b, LORA_GGUF_U32);
    s->align_val = b->n;
    u32(b, align);
    str(b, "test.words");
    u32(b, LORA_GGUF_ARRAY);
    u32(b, LORA_GGUF_STRING);
    u64(b, 2);
    str(b, "one");
    str(b, "two");
    /* tensor a: F32, ne [8, 2] = 64 bytes, offset 0 */
    str(b, "a");
    s->t0_ndims = b->n;
    u32(b, 2);
    s->t0_ne0 = b->n;
    u64(b, 8);
    u64(b, 2);
    s->t0_type = b->n;
    u32(b, LORA_GGML_F32);
    s->t0_off = b->n;
    u64(b, 0);
    /* tensor b: F16, ne [4] = 8 bytes, at the next aligned offset */
    s->t1_name_len = b->n;
    str(b, "b");
    u32(b, 1);
    u64(b, 4);
    u32(b, LORA_GGML_F16);
    s->t1_off = b->n;
    u64(b, 64 % align ? 64 + align - 64 % align : 64);
    pad(b, align);
    float fa[16];
    for (int i = 0; i < 16; i++)
        fa[i] = (float)i - 3.5f;
    put(b, fa, sizeof fa);
    pad(b, align);
    uint16_t hb[4] = {0x3c00, 0x4000, 0xc000, 0x0000};
    put(b, hb, sizeof hb);
    s->data_end = b->n;
    pad(b, align);
}

static int open_bytes(const bb *b, size_t len, lora_gguf **g, lora_error *e)
{
    /* an exact-size copy, so that reads past it are caught by ASan */
    unsigned char *copy = malloc(len ? len : 1);
    memcpy(copy, b->p, len);
    int rc = lora_gguf_open_memory(copy, len, "t.gguf", g, e);
    if (rc == LORA_OK) {
        /* keep copy alive with g: leak-free by closing here for the tests */
        const lora_gguf_tensor *t = lora_gguf_tensor_at(*g, 0);
        volatile unsigned sum = 0;
        for (size_t i = 0; i < lora_gguf_tensor_count(*g); i++) {
            t = lora_gguf_tensor_at(*g, i);
            for (uint64_t k = 0; k < t->nbytes; k++)
                sum += ((const unsigned char *)t->data)[k];
        }
        lora_gguf_close(*g);
        *g = NULL;
    }
    free(copy);
    return rc;
}

static void expect_refused(const bb *b, const char *needle)
{
    lora_gguf *g = NULL;
    lora_error e;
    lora_error_clear(&e);
    int rc = open_bytes(b, b->n, &g, &e);
    ck_assert_msg(rc == LORA_EINPUT, "accepted a file that should fail with \"%s\"", needle);
    ck_assert_msg(strstr(e.msg, needle) != NULL, "message \"%s\" lacks \"%s\"", e.msg, needle);
}

START_TEST(test_reader_sample)
{
    sample s;
    make_sample(&s, 32);
    unsigned char *copy = malloc(s.b.n);
    memcpy(copy, s.b.p, s.b.n);
    lora_gguf *g;
    lora_error e;
    ck_assert_msg(lora_gguf_open_memory(copy, s.b.n, "t", &g, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(lora_gguf_version(g), 3);
    ck_assert_uint_eq(lora_gguf_kv_count(g), 4);
    ck_assert_uint_eq(lora_gguf_tensor_count(g), 2);
    ck_assert_str_eq(lora_gguf_get_str(g, "general.architecture"), "llama");
    const lora_gguf_kv *ids = lora_gguf_find_kv(g, "test.ids");
    ck_assert_int_eq(ids->arr_type, LORA_GGUF_U32);
    ck_assert_uint_eq(ids->n, 3);
    ck_assert_uint_eq(((const unsigned char *)ids->data)[8], 9);
    const lora_gguf_kv *w = lora_gguf_find_kv(g, "test.words");
    const char *sp;
    uint64_t sl;
    ck_assert_int_eq(lora_gguf_kv_arr_str(g, w, 1, &sp, &sl), 0);
    ck_assert_uint_eq(sl, 3);
    ck_assert_int_eq(memcmp(sp, "two", 3), 0);
    ck_assert_int_eq(lora_gguf_kv_arr_str(g, w, 2, &sp, &sl), -1);
    const lora_gguf_tensor *a = lora_gguf_find_tensor(g, "a"), *b = lora_gguf_find_tensor(g, "b");
    ck_assert_uint_eq(a->numel, 16);
    ck_assert_uint_eq(a->nbytes, 64);
    ck_assert_int_eq(a->dtype, LORA_DT_F32);
    ck_assert_uint_eq(lora_gguf_data_offset(g) % 32, 0);
    float f;
    memcpy(&f, (const unsigned char *)a->data + 4 * 15, 4);
    ck_assert(f == 11.5f);
    ck_assert_uint_eq(b->offset, lora_gguf_data_offset(g) + 64);
    ck_assert_uint_eq(lora_f16_to_f32(((const uint16_t *)b->data)[1]) == 2.0f, 1);
    double num;
    ck_assert_int_eq(lora_gguf_get_num(g, "general.alignment", &num), 0);
    ck_assert(num == 32);
    ck_assert_int_eq(lora_gguf_get_num(g, "general.architecture", &num), -1);
    lora_gguf_close(g);
    free(copy);
    free(s.b.p);
}
END_TEST

/* Every truncation before the end of the last tensor is refused. */
START_TEST(test_reader_truncated)
{
    for (uint32_t align = 32; align <= 64; align *= 2) {
        sample s;
        make_sample(&s, align);
        for (size_t len = 0; len < s.data_end; len++) {
            lora_gguf *g = NULL;
            lora_error e;
            int rc = open_bytes(&s.b, len, &g, &e);
            ck_assert_msg(rc == LORA_EINPUT, "truncated to %zu of %zu bytes: accepted", len,
                          s.data_end);
            ck_assert(strstr(e.msg, "GGUF") != NULL);
        }
        lora_gguf *g = NULL;
        lora_error e;
        ck_assert_int_eq(open_bytes(&s.b, s.data_end, &g, &e), LORA_OK);
        free(s.b.p);
    }
}
END_TEST

START_TEST(test_reader_hostile)
{
    static const struct {
        int field;
        uint64_t value;
        const char *msg;
    } cases[] = {
        {0, UINT64_MAX, "tensors cannot fit"},
        {0, 1ULL << 40, "tensors cannot fit"},
        {1, UINT64_MAX / 2, "keys cannot fit"},
        {2, 13, "unknown value type 13"},
        {2, 0xFFFFFFFF, "unknown value type"},
        {3, UINT64_MAX, "runs past the end"},
        {3, (UINT64_MAX / 4) + 2, "runs past the end"},
        {4, UINT64_MAX, "exceeds the limit"},
        {4, 1000, "truncated"},
        {5, 48, "not a power of two"},
        {5, 0, "not a power of two"},
        {6, 5, "dimensions"},
        {7, 1ULL << 63, "negative"},
        {8, 4, "unknown ggml type 4"},
        {8, 200, "unknown ggml type"},
        {9, 1ULL << 40, "run past the end"},
        {9, UINT64_MAX - 31, "run past the end"},
        {9, 8, "not a multiple of the alignment"},
        {10, 0, "overlap"},
        {11, 2, "Q4_0's block"},
        {12, 0, "empty tensor name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sample s;
        make_sample(&s, 32);
        switch (cases[i].field) {
        case 0: set_u64(&s.b, s.n_tensors, cases[i].value); break;
        case 1: set_u64(&s.b, s.n_kv, cases[i].value); break;
        case 2: set_u32(&s.b, s.kv1_type, (uint32_t)cases[i].value); break;
        case 3: set_u64(&s.b, s.arr_len, cases[i].value); break;
        case 4: set_u64(&s.b, s.str_len, cases[i].value); break;
        case 5: set_u32(&s.b, s.align_val, (uint32_t)cases[i].value); break;
        case 6: set_u32(&s.b, s.t0_ndims, (uint32_t)cases[i].value); break;
        case 7: set_u64(&s.b, s.t0_ne0, cases[i].value); break;
        case 8: set_u32(&s.b, s.t0_type, (uint32_t)cases[i].value); break;
        case 9: set_u64(&s.b, s.t1_off, cases[i].value); break;
        case 10: set_u64(&s.b, s.t1_off, cases[i].value); break;
        case 11:
            set_u32(&s.b, s.t0_type, 2); /* Q4_0: 32-element blocks, ne[0] = 8 */
            break;
        case 12: set_u64(&s.b, s.t1_name_len, cases[i].value); break;
        }
        expect_refused(&s.b, cases[i].msg);
        free(s.b.p);
    }
}
END_TEST

START_TEST(test_reader_header_refusals)
{
    sample s;
    make_sample(&s, 32);
    set_u32(&s.b, 4, 0x03000000); /* version 3 written big-endian */
    expect_refused(&s.b, "big-endian");
    set_u32(&s.b, 4, 1);
    expect_refused(&s.b, "version 1");
    set_u32(&s.b, 4, 4);
    expect_refused(&s.b, "unknown GGUF version 4");
    set_u32(&s.b, 4, 2); /* v2 has v3's layout */
    lora_gguf *g;
    lora_error e;
    ck_assert_msg(open_bytes(&s.b, s.b.n, &g, &e) == LORA_OK, "%s", e.msg);
    memcpy(s.b.p, "GGUX", 4);
    expect_refused(&s.b, "no GGUF magic");
    free(s.b.p);

    /* duplicate key, duplicate tensor, nested array, NUL in a key,
     * alignment of the wrong type */
    const char *dups[] = {"dupkey", "duptensor", "nested", "nul", "alignu64"};
    const char *msgs[] = {"duplicate key", "duplicate tensor", "arrays of arrays", "NUL byte",
                          "not u32"};
    for (int k = 0; k < 5; k++) {
        bb b = {0};
        put(&b, "GGUF", 4);
        u32(&b, 3);
        int two_t = k == 1;
        u64(&b, two_t ? 2 : 0);
        u64(&b, 2);
        if (k == 3) {
            u64(&b, 3);
            put(&b, "a\0b", 3);
        } else {
            str(&b, k == 4 ? "general.alignment" : "x.k");
        }
        if (k == 2) {
            u32(&b, LORA_GGUF_ARRAY);
            u32(&b, LORA_GGUF_ARRAY);
            u64(&b, 0);
        } else if (k == 4) {
            u32(&b, LORA_GGUF_U64);
            u64(&b, 32);
        } else {
            u32(&b, LORA_GGUF_U8);
            put(&b, "\1", 1);
        }
        str(&b, k == 0 ? "x.k" : "x.other");
        u32(&b, LORA_GGUF_BOOL);
        put(&b, "\1", 1);
        for (int t = 0; t < (two_t ? 2 : 0); t++) {
            str(&b, "w");
            u32(&b, 1);
            u64(&b, 8);
            u32(&b, LORA_GGML_F32);
            u64(&b, (uint64_t)t * 32);
        }
        pad(&b, 32);
        static const unsigned char z[64];
        put(&b, z, 64);
        expect_refused(&b, msgs[k]);
        free(b.p);
        (void)dups;
    }
}
END_TEST

/* The writer's output reads back: keys in order, alignment honoured,
 * padding zero, each tensor at an aligned offset. */
START_TEST(test_writer_roundtrip)
{
    char *dir = tu_tmpdir(), *path = tu_path(dir, "w.gguf");
    for (uint32_t align = 0; align <= 64; align += 64) {
        lora_ggw *w;
        lora_error e;
        ck_assert_int_eq(lora_ggw_new(path, align, &w, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_kv_str(w, "general.architecture", "gpt2", &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_kv_f32(w, "adapter.lora.alpha", 16.0f, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_kv_str(w, "general.architecture", "x", &e), LORA_EINPUT);
        int32_t arr[3] = {-1, 2, 3};
        ck_assert_int_eq(lora_ggw_kv_num(w, "x.arr", LORA_GGUF_I32, 1, 3, arr, &e), LORA_OK);
        uint64_t ne1[2] = {3, 5}, ne2[1] = {7};
        ck_assert_int_eq(lora_ggw_declare(w, "t1", LORA_GGML_F32, 2, ne1, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_declare(w, "t2", LORA_GGML_BF16, 1, ne2, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_declare(w, "t1", LORA_GGML_F32, 1, ne2, &e), LORA_EINPUT);
        char longname[80];
        memset(longname, 'n', 70);
        longname[70] = 0;
        ck_assert_int_eq(lora_ggw_declare(w, longname, LORA_GGML_F32, 1, ne2, &e), LORA_EINPUT);
        ck_assert_int_eq(lora_ggw_start(w, &e), LORA_OK);
        float f[15];
        for (int i = 0; i < 15; i++)
            f[i] = (float)i;
        uint16_t h[7] = {1, 2, 3, 4, 5, 6, 7};
        ck_assert_int_eq(lora_ggw_write(w, "t1", 0, f, 32, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_write(w, "t1", 32, f + 8, 28, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_write(w, "t2", 0, h, 16, &e), LORA_EUSAGE);
        ck_assert_int_eq(lora_ggw_write(w, "t2", 0, h, 14, &e), LORA_OK);
        ck_assert_int_eq(access(path, F_OK), -1); /* nothing under the real name yet */
        ck_assert_msg(lora_ggw_commit(w, &e) == LORA_OK, "%s", e.msg);
        lora_gguf *g;
        ck_assert_msg(lora_gguf_open(path, &g, &e) == LORA_OK, "%s", e.msg);
        uint64_t a = align ? align : 32;
        ck_assert_uint_eq(lora_gguf_alignment(g), a);
        ck_assert_uint_eq(lora_gguf_kv_count(g), align ? 4 : 3);
        ck_assert_str_eq(lora_gguf_kv_at(g, align ? 1 : 0)->key, "general.architecture");
        const lora_gguf_tensor *t1 = lora_gguf_find_tensor(g, "t1"), *t2 = lora_gguf_find_tensor(g, "t2");
        ck_assert_uint_eq(t1->offset % a, 0);
        ck_assert_uint_eq(t2->offset % a, 0);
        ck_assert_int_eq(memcmp(t1->data, f, 60), 0);
        ck_assert_int_eq(memcmp(t2->data, h, 14), 0);
        ck_assert_uint_eq(lora_gguf_size(g), t2->offset + a);
        const unsigned char *bytes = (const unsigned char *)t1->data;
        for (uint64_t k = 60; k < t2->offset - t1->offset; k++)
            ck_assert_uint_eq(bytes[k], 0);
        /* copying every key gives the same key bytes */
        char *p2 = tu_path(dir, "copy.gguf");
        lora_ggw *w2;
        ck_assert_int_eq(lora_ggw_new(p2, 0, &w2, &e), LORA_OK);
        for (size_t i = 0; i < lora_gguf_kv_count(g); i++)
            ck_assert_int_eq(lora_ggw_kv_copy(w2, g, lora_gguf_kv_at(g, i), &e), LORA_OK);
        ck_assert_msg(lora_ggw_commit(w2, &e) == LORA_OK, "%s", e.msg);
        lora_gguf *g2;
        ck_assert_int_eq(lora_gguf_open(p2, &g2, &e), LORA_OK);
        ck_assert_uint_eq(lora_gguf_alignment(g2), a);
        const lora_gguf_kv *k1 = lora_gguf_find_kv(g, "x.arr"), *k2 = lora_gguf_find_kv(g2, "x.arr");
        ck_assert_int_eq(memcmp(k1->data, k2->data, 12), 0);
        lora_gguf_close(g2);
        lora_gguf_close(g);
        free(p2);
        /* an incomplete tensor: refused, nothing left behind */
        unlink(path);
        ck_assert_int_eq(lora_ggw_new(path, align, &w, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_declare(w, "t1", LORA_GGML_F32, 2, ne1, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_start(w, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_write(w, "t1", 0, f, 32, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_commit(w, &e), LORA_EIO);
        ck_assert_int_eq(access(path, F_OK), -1);
        ck_assert_int_eq(lora_ggw_new(path, 48, &w, &e), LORA_EUSAGE);
    }
    tu_rmtree(dir);
    free(dir);
    free(path);
}
END_TEST

/* ---- a GGUF model as a base checkpoint (gguf_checkpoint.c) ---------- */

/* A llama model: q [4 out, 4 in] permuted over 2 heads, k [2, 4] over 1
 * kv head, a Q8_0 token_embd [2, 32], and EXTRA (a tensor name) when given. */
static void write_model(const char *path, const char *extra, int heads)
{
    lora_ggw *w;
    lora_error e;
    ck_assert_int_eq(lora_ggw_new(path, 0, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_kv_str(w, "general.architecture", "llama", &e), LORA_OK);
    if (heads) {
        ck_assert_int_eq(lora_ggw_kv_u32(w, "llama.attention.head_count", 2, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_kv_u32(w, "llama.attention.head_count_kv", 1, &e), LORA_OK);
    }
    uint64_t q[2] = {4, 4}, k[2] = {4, 2}, emb[2] = {32, 2};
    ck_assert_int_eq(lora_ggw_declare(w, "blk.0.attn_q.weight", LORA_GGML_F32, 2, q, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_declare(w, "blk.0.attn_k.weight", LORA_GGML_F16, 2, k, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_declare(w, "token_embd.weight", 8, 2, emb, &e), LORA_OK);
    if (extra)
        ck_assert_int_eq(lora_ggw_declare(w, extra, LORA_GGML_F32, 2, q, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_start(w, &e), LORA_OK);
    float f[16];
    uint16_t h[8];
    unsigned char z[68] = {0};
    for (int i = 0; i < 16; i++)
        f[i] = (float)i;
    for (int i = 0; i < 8; i++)
        h[i] = lora_f32_to_f16((float)(100 + i));
    ck_assert_int_eq(lora_ggw_write(w, "blk.0.attn_q.weight", 0, f, sizeof f, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_write(w, "blk.0.attn_k.weight", 0, h, sizeof h, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_write(w, "token_embd.weight", 0, z, sizeof z, &e), LORA_OK);
    if (extra)
        ck_assert_int_eq(lora_ggw_write(w, extra, 0, f, sizeof f, &e), LORA_OK);
    ck_assert_msg(lora_ggw_commit(w, &e) == LORA_OK, "%s", e.msg);
}

START_TEST(test_base_view)
{
    char *dir = tu_tmpdir(), *path = tu_path(dir, "m.gguf");
    lora_error e;
    lora_ckpt *ck;
    write_model(path, NULL, 1);
    ck_assert_msg(lora_ckpt_open(path, &ck, &e) == LORA_OK, "%s", e.msg);
    ck_assert(lora_ckpt_is_gguf(ck));
    const lora_tensor *q = lora_ckpt_find(ck, "model.layers.0.self_attn.q_proj.weight", NULL);
    const lora_tensor *k = lora_ckpt_find(ck, "model.layers.0.self_attn.k_proj.weight", NULL);
    const lora_tensor *t = lora_ckpt_find(ck, "model.embed_tokens.weight", NULL);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_nonnull(k);
    ck_assert_ptr_nonnull(t);
    /* PyTorch order: [out, in] */
    ck_assert_uint_eq(k->shape[0], 2);
    ck_assert_uint_eq(k->shape[1], 4);
    ck_assert_int_eq(k->dtype, LORA_DT_F16);
    ck_assert_uint_eq(lora_ckpt_permuted_heads(ck, q), 2);
    ck_assert_uint_eq(lora_ckpt_permuted_heads(ck, k), 1);
    ck_assert_uint_eq(lora_ckpt_permuted_heads(ck, t), 0);
    ck_assert_int_eq(t->dtype, LORA_DT_INVALID);
    ck_assert_str_eq(lora_ckpt_type_name(ck, t), "Q8_0");
    ck_assert_uint_eq(t->nbytes, 68);
    ck_assert_uint_eq(lora_st_metadata_count(lora_ckpt_shard(ck, 0)), 0);
    /* the identity hashes permuted rows in Hugging Face order: with one
     * head of 4 rows, HF row h*hd + t*hd/2 + j is GGUF row h*hd + 2j + t,
     * so HF rows 0,1,2,3 are GGUF rows 0,2,1,3 (a plain loop below) */
    unsigned char h1[32], h2[32];
    float hf[16];
    const float *g = q->data;
    for (int r = 0; r < 4; r++) {
        int src = r == 1 ? 2 : r == 2 ? 1 : r; /* HF row r is GGUF row src */
        memcpy(hf + 4 * r, g + 4 * src, 16);
    }
    lora_hasher *hs;
    ck_assert_int_eq(lora_hasher_new(32, &hs, &e), LORA_OK);
    lora_base_hash_tensor_heads(hs, "x", LORA_DT_F32, 2, q->shape, q->data, 64, 1);
    lora_hasher_final(hs, h1);
    ck_assert_int_eq(lora_hasher_new(32, &hs, &e), LORA_OK);
    lora_base_hash_tensor(hs, "x", LORA_DT_F32, 2, q->shape, hf, 64);
    lora_hasher_final(hs, h2);
    ck_assert_int_eq(memcmp(h1, h2, 32), 0);
    lora_ckpt_close(ck);

    /* a GGUF name that maps onto another tensor's: refused */
    unlink(path);
    write_model(path, "model.layers.0.self_attn.q_proj.weight", 1);
    ck_assert_int_eq(lora_ckpt_open(path, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "two tensors are named"));
    /* one file of a split model: refused */
    unlink(path);
    {
        lora_ggw *w;
        uint64_t ne[1] = {8};
        float f[8] = {0};
        ck_assert_int_eq(lora_ggw_new(path, 0, &w, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_kv_str(w, "general.architecture", "llama", &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_kv_u32(w, "split.count", 2, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_declare(w, "output_norm.weight", LORA_GGML_F32, 1, ne, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_start(w, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_write(w, "output_norm.weight", 0, f, sizeof f, &e), LORA_OK);
        ck_assert_int_eq(lora_ggw_commit(w, &e), LORA_OK);
    }
    ck_assert_int_eq(lora_ckpt_open(path, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "split GGUF"));
    /* no head counts: the q/k tensors are not claimed to be in HF order */
    unlink(path);
    write_model(path, NULL, 0);
    ck_assert_int_eq(lora_ckpt_open(path, &ck, &e), LORA_OK);
    q = lora_ckpt_find(ck, "model.layers.0.self_attn.q_proj.weight", NULL);
    ck_assert_uint_eq(lora_ckpt_permuted_heads(ck, q), 0);
    lora_ckpt_close(ck);
    unlink(path);
    tu_rmtree(dir);
    free(dir);
    free(path);
}
END_TEST

START_TEST(test_writer_kept_layout)
{
    char *dir = tu_tmpdir(), *path = tu_path(dir, "k.gguf");
    lora_ggw *w;
    lora_error e;
    uint64_t ne[1] = {8};
    float f[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    /* a gap kept, a misaligned or overlapping offset refused */
    ck_assert_int_eq(lora_ggw_new(path, 0, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_declare_at(w, "a", LORA_GGML_F32, 1, ne, 0, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_declare_at(w, "b", LORA_GGML_F32, 1, ne, 96, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_kv_str(w, "lora_base", "0000", &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_start(w, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_write_at(w, 0, 0, f, 32, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_write_at(w, 1, 0, f, 32, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_write_at(w, 1, 4, f, 32, &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_ggw_patch_str(w, "lora_base", "abcd", &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_patch_str(w, "lora_base", "abc", &e), LORA_EUSAGE);
    ck_assert_msg(lora_ggw_commit(w, &e) == LORA_OK, "%s", e.msg);
    lora_gguf *g;
    ck_assert_int_eq(lora_gguf_open(path, &g, &e), LORA_OK);
    ck_assert_uint_eq(lora_gguf_find_tensor(g, "b")->offset - lora_gguf_data_offset(g), 96);
    ck_assert_str_eq(lora_gguf_get_str(g, "lora_base"), "abcd");
    lora_gguf_close(g);
    ck_assert_int_eq(lora_ggw_new(path, 0, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_declare_at(w, "a", LORA_GGML_F32, 1, ne, 0, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_declare_at(w, "b", LORA_GGML_F32, 1, ne, 16, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_start(w, &e), LORA_EINPUT);
    lora_ggw_abort(w);
    unlink(path);
    tu_rmtree(dir);
    free(dir);
    free(path);
}
END_TEST

/* ---- names and the permutation ------------------------------------- */

START_TEST(test_names)
{
    lora_gguf_arch a;
    lora_error e;
    const char *llama = "{\"model_type\":\"llama\",\"num_attention_heads\":8,"
                        "\"num_key_value_heads\":2}";
    ck_assert_int_eq(lora_gguf_arch_from_config(llama, strlen(llama), &a, &e), LORA_OK);
    ck_assert_str_eq(a.name, "llama");
    ck_assert_int_eq(a.permute_qk, 1);
    ck_assert_uint_eq(a.kv_heads, 2);
    char out[128], back[128];
    static const char *pairs[][2] = {
        {"model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight"},
        {"model.layers.12.self_attn.o_proj", "blk.12.attn_output.weight"},
        {"model.layers.3.mlp.gate_proj", "blk.3.ffn_gate.weight"},
        {"model.layers.3.mlp.down_proj", "blk.3.ffn_down.weight"},
        {"model.embed_tokens", "token_embd.weight"},
        {"lm_head", "output.weight"},
    };
    for (size_t i = 0; i < 6; i++) {
        ck_assert_int_eq(lora_gguf_name_from_hf(&a, pairs[i][0], out, sizeof out), 0);
        ck_assert_str_eq(out, pairs[i][1]);
        ck_assert_int_eq(lora_gguf_name_to_hf(&a, out, back, sizeof back), 0);
        ck_assert_str_eq(back, pairs[i][0]);
    }
    ck_assert_int_eq(lora_gguf_name_from_hf(&a, "model.layers.0.self_attn.qkv_proj", out, 128), -1);
    ck_assert_int_eq(lora_gguf_name_from_hf(&a, "model.layers.01.self_attn.q_proj", out, 128), -1);
    ck_assert_int_eq(lora_gguf_name_from_hf(&a, "model.language_model.layers.2.mlp.up_proj", out,
                                            128), 0);
    ck_assert_str_eq(out, "blk.2.ffn_up.weight");
    ck_assert_int_eq(lora_gguf_arch_from_name("phi3", &a, &e), LORA_OK);
    ck_assert_int_eq(lora_gguf_name_from_hf(&a, "model.layers.1.mlp.gate_up_proj", out, 128), 0);
    ck_assert_str_eq(out, "blk.1.ffn_up.weight");
    ck_assert_int_eq(lora_gguf_name_from_hf(&a, "model.layers.1.self_attn.qkv_proj", out, 128), 0);
    ck_assert_str_eq(out, "blk.1.attn_qkv.weight");
    ck_assert_int_eq(lora_gguf_arch_from_name("gpt2", &a, &e), LORA_OK);
    ck_assert_int_eq(lora_gguf_name_from_hf(&a, "transformer.h.11.mlp.c_proj", out, 128), 0);
    ck_assert_str_eq(out, "blk.11.ffn_down.weight");
    ck_assert_int_eq(lora_gguf_name_to_hf(&a, "blk.0.attn_qkv.weight", back, 128), 0);
    ck_assert_str_eq(back, "transformer.h.0.attn.c_attn");
    ck_assert_int_eq(lora_gguf_arch_from_name("falcon", &a, &e), LORA_EINPUT);
    const char *g3 = "{\"model_type\":\"gemma3\",\"text_config\":{\"num_attention_heads\":4}}";
    ck_assert_int_eq(lora_gguf_arch_from_config(g3, strlen(g3), &a, &e), LORA_OK);
    ck_assert_str_eq(a.name, "gemma3");
    ck_assert_int_eq(a.tied, 1);
    ck_assert_int_eq(a.permute_qk, 0);
}
END_TEST

/* llama.cpp's permute against numpy's definition: reshape(n, 2, hd/2, c),
 * swapaxes(1, 2), reshape back. */
START_TEST(test_permute)
{
    enum { N = 3, HD = 6, C = 2, ROWS = N * HD };
    int src[ROWS * C], dst[ROWS * C], inv[ROWS * C];
    for (int i = 0; i < ROWS * C; i++)
        src[i] = i;
    lora_error e;
    ck_assert_int_eq(lora_gguf_permute_rows(dst, src, ROWS, C, sizeof(int), N, 0, &e), LORA_OK);
    for (int h = 0; h < N; h++)
        for (int a = 0; a < HD / 2; a++)     /* new axis 1 (was axis 2) */
            for (int t = 0; t < 2; t++)      /* new axis 2 (was axis 1) */
                for (int c = 0; c < C; c++) {
                    int new_row = (h * (HD / 2) + a) * 2 + t;
                    int old_row = (h * 2 + t) * (HD / 2) + a;
                    ck_assert_int_eq(dst[new_row * C + c], src[old_row * C + c]);
                }
    ck_assert_int_eq(lora_gguf_permute_rows(inv, dst, ROWS, C, sizeof(int), N, 1, &e), LORA_OK);
    ck_assert_int_eq(memcmp(inv, src, sizeof src), 0);
    ck_assert_int_eq(lora_gguf_permute_rows(dst, src, ROWS, C, sizeof(int), 4, 0, &e), LORA_EINPUT);
}
END_TEST

/* ---- conversions ---------------------------------------------------- */

typedef struct mod {
    const char *name;
    uint64_t out, in, r;
    int emb;
} mod;

/* A PEFT folder with random factors (seeded), dtype dt. */
static void write_peft(const char *dir, const char *config, const mod *m, size_t n,
                       lora_dtype dt, uint64_t seed)
{
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    char *p = tu_path(dir, "adapter_config.json");
    tu_write(p, config, strlen(config));
    free(p);
    p = tu_path(dir, "adapter_model.safetensors");
    lora_stw *w;
    lora_error e;
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    char ka[256], kb[256];
    for (size_t i = 0; i < n; i++) {
        uint64_t sa[2] = {m[i].r, m[i].in}, sb[2] = {m[i].out, m[i].r};
        snprintf(ka, sizeof ka, m[i].emb ? "base_model.model.%s.lora_embedding_A"
                                         : "base_model.model.%s.lora_A.weight", m[i].name);
        snprintf(kb, sizeof kb, m[i].emb ? "base_model.model.%s.lora_embedding_B"
                                         : "base_model.model.%s.lora_B.weight", m[i].name);
        ck_assert_int_eq(lora_stw_declare(w, ka, dt, 2, sa, &e), LORA_OK);
        ck_assert_int_eq(lora_stw_declare(w, kb, dt, 2, sb, &e), LORA_OK);
    }
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++) {
        size_t na = m[i].r * m[i].in, nb = m[i].out * m[i].r, bs = lora_dtype_bits(dt) / 8;
        float *f = malloc((na > nb ? na : nb) * sizeof *f);
        void *buf = malloc((na > nb ? na : nb) * bs);
        for (int half = 0; half < 2; half++) {
            size_t cnt = half ? nb : na;
            for (size_t k = 0; k < cnt; k++)
                f[k] = (float)tu_randu(&st);
            lora_encode_f32(dt, f, buf, cnt);
            snprintf(ka, sizeof ka, m[i].emb ? "base_model.model.%s.lora_embedding_%c"
                                             : "base_model.model.%s.lora_%c.weight",
                     m[i].name, half ? 'B' : 'A');
            ck_assert_int_eq(lora_stw_write(w, ka, 0, buf, cnt * bs, &e), LORA_OK);
        }
        free(f);
        free(buf);
    }
    ck_assert_msg(lora_stw_commit(w, &e) == LORA_OK, "%s", e.msg);
    free(p);
}

static double *decode_t(const void *data, lora_dtype dt, uint64_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    ck_assert_int_eq(lora_decode_f64(dt, data, d, (size_t)n), 0);
    return d;
}

/* ΔW[i][j] (Linear layout out×in, or emb×vocab) of a PEFT module. */
static double *peft_delta(const lora_module *m)
{
    double *A = decode_t(m->A->data, m->A->dtype, m->A->numel);
    double *B = decode_t(m->B->data, m->B->dtype, m->B->numel);
    double *d = malloc(m->out * m->in * sizeof *d);
    for (uint64_t i = 0; i < m->out; i++)
        for (uint64_t j = 0; j < m->in; j++) {
            double s = 0;
            for (uint64_t k = 0; k < m->r; k++)
                s += B[i * m->r + k] * A[k * m->in + j];
            d[i * m->in + j] = m->scale * s;
        }
    free(A);
    free(B);
    return d;
}

/* The same from a GGUF pair with llama.cpp's scale, rows back in HF
 * order (heads: 0 for no permutation). */
static double *gguf_delta(const lora_gguf_adapter *ga, const lora_gguf_pair *p, uint64_t heads)
{
    double *A = decode_t(p->a->data, p->a->dtype, p->a->numel);
    double *B = decode_t(p->b->data, p->b->dtype, p->b->numel);
    double s = lora_gguf_pair_scale(ga, p), *d = malloc(p->out * p->in * sizeof *d);
    uint64_t hd = heads ? p->out / heads : 0;
    for (uint64_t i = 0; i < p->out; i++) {
        uint64_t row = i; /* HF row i sits at GGUF row `row` */
        if (heads) {
            uint64_t h = i / hd, t = (i % hd) / (hd / 2), j = i % (hd / 2);
            row = h * hd + 2 * j + t;
        }
        for (uint64_t j = 0; j < p->in; j++) {
            double acc = 0;
            for (uint64_t k = 0; k < p->r; k++) {
                double a = p->embedding ? A[j * p->r + k] : A[k * p->in + j];
                acc += B[row * p->r + k] * a;
            }
            d[i * p->in + j] = s * acc;
        }
    }
    free(A);
    free(B);
    return d;
}

/* max |x - y| / max |x| over n elements. */
static double rel_diff(const double *x, const double *y, uint64_t n)
{
    double num = 0, den = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (fabs(x[i] - y[i]) > num)
            num = fabs(x[i] - y[i]);
        if (fabs(x[i]) > den)
            den = fabs(x[i]);
    }
    return den ? num / den : num;
}

static const lora_module *find_mod(const lora_adapter *ad, const char *name)
{
    for (size_t i = 0; i < ad->n_modules; i++)
        if (strcmp(ad->modules[i].name, name) == 0)
            return &ad->modules[i];
    ck_abort_msg("module %s missing", name);
    return NULL;
}

/* Convert DIR to GGUF and back; check GGUF deltas against PEFT's within
 * tol_gguf and the round trip's deltas within tol_back. */
static void check_conversion(const char *dir, const char *base, lora_dtype outtype,
                             double tol_gguf, double tol_back, size_t expect_folded)
{
    char *tmp = tu_tmpdir(), *gg = tu_path(tmp, "a.gguf"), *back = tu_path(tmp, "back");
    lora_adapter *ad, *ad2;
    lora_error e;
    ck_assert_msg(lora_adapter_open(dir, &ad, &e) == LORA_OK, "%s", e.msg);
    lora_convert_opts o = {.base = base, .outtype = outtype};
    lora_convert_report rep;
    ck_assert_msg(lora_convert_to_gguf(ad, gg, &o, &rep, &e) == LORA_OK, "%s", e.msg);
    size_t folded = 0;
    for (size_t i = 0; i < rep.n_modules; i++)
        folded += rep.modules[i].fold != 1;
    ck_assert_uint_eq(folded, expect_folded);
    lora_gguf_arch arch;
    char *cfgp = tu_path(base, "config.json");
    size_t cl;
    char *cfg = tu_read(cfgp, &cl);
    ck_assert_int_eq(lora_gguf_arch_from_config(cfg, cl, &arch, &e), LORA_OK);
    free(cfg);
    free(cfgp);
    lora_gguf_adapter *ga;
    ck_assert_msg(lora_gguf_adapter_open(gg, &ga, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(ga->n, ad->n_modules);
    ck_assert_str_eq(ga->architecture, arch.name);
    for (size_t i = 0; i < rep.n_modules; i++) {
        const lora_module *m = find_mod(ad, rep.modules[i].from);
        const lora_gguf_pair *p = NULL;
        for (size_t k = 0; k < ga->n; k++)
            if (strcmp(ga->pairs[k].name, rep.modules[i].to) == 0)
                p = &ga->pairs[k];
        ck_assert_ptr_nonnull(p);
        uint64_t heads = !rep.modules[i].permuted ? 0
                         : strstr(m->name, "q_proj") ? arch.heads : arch.kv_heads;
        double *x = peft_delta(m), *y = gguf_delta(ga, p, heads);
        double rd = rel_diff(x, y, m->out * m->in);
        ck_assert_msg(rd <= tol_gguf, "%s: GGUF delta differs by %g (tolerance %g)", m->name, rd,
                      tol_gguf);
        free(x);
        free(y);
    }
    lora_gguf_adapter_free(ga);
    lora_convert_report_free(&rep);
    ck_assert_msg(lora_convert_to_peft(gg, back, &o, &rep, &e) == LORA_OK, "%s", e.msg);
    lora_convert_report_free(&rep);
    ck_assert_msg(lora_adapter_open(back, &ad2, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(ad2->n_modules, ad->n_modules);
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *m = &ad->modules[i], *m2 = find_mod(ad2, m->name);
        ck_assert_uint_eq(m2->embedding, m->embedding);
        double *x = peft_delta(m), *y = peft_delta(m2);
        double rd = rel_diff(x, y, m->out * m->in);
        if (tol_back == 0)
            ck_assert_msg(memcmp(x, y, m->out * m->in * sizeof *x) == 0,
                          "%s: round trip delta not identical (%g)", m->name, rd);
        else
            ck_assert_msg(rd <= tol_back, "%s: round trip delta differs by %g", m->name, rd);
        free(x);
        free(y);
    }
    lora_adapter_free(ad2);
    lora_adapter_free(ad);
    tu_rmtree(tmp);
    free(tmp);
    free(gg);
    free(back);
}

static char *write_config_dir(const char *tmp, const char *json)
{
    char *d = tu_path(tmp, "base");
    ck_assert_int_eq(mkdir(d, 0755), 0);
    char *p = tu_path(d, "config.json");
    tu_write(p, json, strlen(json));
    free(p);
    return d;
}

static const mod llama_mods[] = {
    {"model.layers.0.self_attn.q_proj", 32, 16, 4, 0},
    {"model.layers.0.self_attn.k_proj", 16, 16, 4, 0},
    {"model.layers.0.self_attn.v_proj", 16, 16, 4, 0},
    {"model.layers.1.mlp.down_proj", 16, 40, 4, 0},
    {"model.embed_tokens", 16, 50, 4, 1},
    {"lm_head", 50, 16, 4, 0},
};
static const char *llama_cfg = "{\"model_type\":\"llama\",\"num_attention_heads\":4,"
                               "\"num_key_value_heads\":2,\"tie_word_embeddings\":false}";

/* Plain adapter: exact bytes, exact round trip in F32. */
START_TEST(test_convert_plain_f32)
{
    char *tmp = tu_tmpdir(), *base = write_config_dir(tmp, llama_cfg), *ad = tu_path(tmp, "ad");
    write_peft(ad, "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8}", llama_mods, 6,
               LORA_DT_F32, 1);
    check_conversion(ad, base, LORA_DT_INVALID, 1e-15, 0, 0);
    tu_rmtree(tmp);
    free(tmp);
    free(base);
    free(ad);
}
END_TEST

/* rsLoRA, rank_pattern and alpha_pattern: the scale is folded where one
 * alpha cannot express it; deltas equal PEFT's within f32 rounding. */
START_TEST(test_convert_rslora_patterns)
{
    char *tmp = tu_tmpdir(), *base = write_config_dir(tmp, llama_cfg), *ad = tu_path(tmp, "ad");
    mod m[4] = {
        {"model.layers.0.self_attn.q_proj", 32, 16, 4, 0},
        {"model.layers.0.self_attn.k_proj", 16, 16, 2, 0},
        {"model.layers.0.self_attn.v_proj", 16, 16, 4, 0},
        {"model.layers.1.self_attn.v_proj", 16, 16, 4, 0},
    };
    write_peft(ad, "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"use_rslora\":true,"
                   "\"rank_pattern\":{\"k_proj\":2},"
                   "\"alpha_pattern\":{\"model.layers.1.self_attn.v_proj\":3}}",
               m, 4, LORA_DT_F32, 2);
    /* q and layer-0 v share alpha·r/sqrt(r) = 16; k (r 2) and layer-1 v
     * (alpha 3) are folded */
    check_conversion(ad, base, LORA_DT_INVALID, 4e-7, 4e-7, 2);
    tu_rmtree(tmp);
    free(tmp);
    free(base);
    free(ad);
}
END_TEST

/* F16 and BF16 output: one rounding of A and of (folded) B. */
START_TEST(test_convert_outtypes)
{
    char *tmp = tu_tmpdir(), *base = write_config_dir(tmp, llama_cfg), *ad = tu_path(tmp, "ad");
    write_peft(ad, "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"use_rslora\":true,"
                   "\"rank_pattern\":{\"k_proj\":4}}", llama_mods, 4, LORA_DT_F32, 3);
    check_conversion(ad, base, LORA_DT_F16, 2e-3, 2e-3, 0);
    check_conversion(ad, base, LORA_DT_BF16, 1.6e-2, 1.6e-2, 0);
    tu_rmtree(tmp);
    free(tmp);
    free(base);
    free(ad);
}
END_TEST

/* GPT-2: Conv1D modules go in unchanged (Linear layout in GGUF). */
START_TEST(test_convert_gpt2)
{
    char *tmp = tu_tmpdir(), *ad = tu_path(tmp, "ad");
    char *base = write_config_dir(tmp, "{\"model_type\":\"gpt2\",\"n_head\":2}");
    mod m[3] = {
        {"transformer.h.0.attn.c_attn", 48, 16, 2, 0},
        {"transformer.h.0.mlp.c_proj", 16, 64, 2, 0},
        {"transformer.h.1.attn.c_proj", 16, 16, 2, 0},
    };
    write_peft(ad, "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":16,\"fan_in_fan_out\":true}",
               m, 3, LORA_DT_BF16, 4);
    check_conversion(ad, base, LORA_DT_INVALID, 1e-15, 0, 0);
    tu_rmtree(tmp);
    free(tmp);
    free(base);
    free(ad);
}
END_TEST

START_TEST(test_convert_refusals)
{
    char *tmp = tu_tmpdir(), *ad = tu_path(tmp, "ad"), *out = tu_path(tmp, "o.gguf");
    /* tied embeddings: lm_head has no GGUF tensor */
    char *base = write_config_dir(tmp, "{\"model_type\":\"gemma2\",\"num_attention_heads\":4}");
    write_peft(ad, "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8}", llama_mods, 6,
               LORA_DT_F32, 5);
    lora_adapter *a;
    lora_error e;
    ck_assert_int_eq(lora_adapter_open(ad, &a, &e), LORA_OK);
    lora_convert_opts o = {.base = base};
    lora_convert_report rep;
    ck_assert_int_eq(lora_convert_to_gguf(a, out, &o, &rep, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "lm_head") && strstr(e.msg, "--skip-unsupported"), "%s", e.msg);
    ck_assert_int_eq(access(out, F_OK), -1);
    lora_convert_report_free(&rep);
    o.skip_unsupported = 1;
    ck_assert_msg(lora_convert_to_gguf(a, out, &o, &rep, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(rep.n_skipped, 1);
    ck_assert_uint_eq(rep.n_modules, 5);
    lora_convert_report_free(&rep);
    /* existing output */
    ck_assert_int_eq(lora_convert_to_gguf(a, out, &o, &rep, &e), LORA_EUSAGE);
    lora_convert_report_free(&rep);
    lora_adapter_free(a);
    /* a base architecture the converter does not know */
    char *p = tu_path(base, "config.json");
    tu_write(p, "{\"model_type\":\"opt\"}", 20);
    free(p);
    ck_assert_int_eq(lora_adapter_open(ad, &a, &e), LORA_OK);
    unlink(out);
    ck_assert_int_eq(lora_convert_to_gguf(a, out, &o, &rep, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "opt"), "%s", e.msg);
    lora_convert_report_free(&rep);
    lora_adapter_free(a);
    tu_rmtree(tmp);
    free(tmp);
    free(base);
    free(ad);
    free(out);
}
END_TEST

/* A GGUF file that is not the adapter llama.cpp would load is refused
 * with llama.cpp's reason. */
static void write_adapter_gguf(const char *path, const char *gtype, int alpha_u32,
                               const char *t1, const uint64_t *ne1, const char *t2,
                               const uint64_t *ne2)
{
    lora_ggw *w;
    lora_error e;
    unlink(path);
    ck_assert_int_eq(lora_ggw_new(path, 0, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_kv_str(w, "general.architecture", "llama", &e), LORA_OK);
    if (gtype)
        ck_assert_int_eq(lora_ggw_kv_str(w, "general.type", gtype, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_kv_str(w, "adapter.type", "lora", &e), LORA_OK);
    if (alpha_u32)
        ck_assert_int_eq(lora_ggw_kv_u32(w, "adapter.lora.alpha", 8, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_declare(w, t1, LORA_GGML_F32, 2, ne1, &e), LORA_OK);
    if (t2)
        ck_assert_int_eq(lora_ggw_declare(w, t2, LORA_GGML_F32, 2, ne2, &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_start(w, &e), LORA_OK);
    static const float z[64];
    ck_assert_int_eq(lora_ggw_write(w, t1, 0, z, (size_t)(ne1[0] * ne1[1] * 4), &e), LORA_OK);
    if (t2)
        ck_assert_int_eq(lora_ggw_write(w, t2, 0, z, (size_t)(ne2[0] * ne2[1] * 4), &e), LORA_OK);
    ck_assert_msg(lora_ggw_commit(w, &e) == LORA_OK, "%s", e.msg);
}

START_TEST(test_gguf_adapter_refusals)
{
    char *tmp = tu_tmpdir(), *p = tu_path(tmp, "a.gguf");
    uint64_t a[2] = {8, 2}, b[2] = {2, 4}, bad[2] = {3, 4};
    static const struct {
        const char *gtype;
        int alpha_u32;
        const char *t1, *t2;
        int bad_b;
        const char *msg;
    } cases[] = {
        {"adapter", 0, "blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", 0, NULL},
        {NULL, 0, "blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", 0,
         "not a LoRA adapter"},
        {"model", 0, "blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", 0,
         "general.type is \"model\""},
        {"adapter", 1, "blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", 0,
         "adapter.lora.alpha is of type u32"},
        {"adapter", 0, "blk.0.attn_q.weight.lora_a", NULL, 0, "no .lora_b"},
        {"adapter", 0, "blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", 1,
         "lora_a has rank 2, lora_b 3"},
        {"adapter", 0, "blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.extra", 0,
         "neither a .lora_a nor a .lora_b"},
        {"adapter", 0, "blk.0.attn_q.weight.lora_a", "blk.0.attn_norm.weight", 0, "no .lora_b"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_adapter_gguf(p, cases[i].gtype, cases[i].alpha_u32, cases[i].t1, a, cases[i].t2,
                           cases[i].bad_b ? bad : b);
        lora_gguf_adapter *ga = NULL;
        lora_error e;
        int rc = lora_gguf_adapter_open(p, &ga, &e);
        if (!cases[i].msg) {
            ck_assert_msg(rc == LORA_OK, "%s", e.msg);
            ck_assert_uint_eq(ga->n, 1);
            ck_assert_uint_eq(ga->pairs[0].r, 2);
            ck_assert_uint_eq(ga->pairs[0].in, 8);
            ck_assert_uint_eq(ga->pairs[0].out, 4);
            ck_assert(lora_gguf_pair_scale(ga, &ga->pairs[0]) == 1.0); /* no alpha: scale 1 */
            lora_gguf_adapter_free(ga);
        } else {
            ck_assert_int_eq(rc, LORA_EINPUT);
            ck_assert_msg(strstr(e.msg, cases[i].msg), "case %zu: \"%s\" lacks \"%s\"", i, e.msg,
                          cases[i].msg);
        }
    }
    tu_rmtree(tmp);
    free(tmp);
    free(p);
}
END_TEST

/* The real llama GGUF (F16 + F32, vocab 32000 tokens as a string array). */
START_TEST(test_real_gguf)
{
    char *p = tu_fixture("real/gguf-llama2-tiny-random/llama-2-tiny-random.gguf");
    lora_gguf *g;
    lora_error e;
    ck_assert_msg(lora_gguf_open(p, &g, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(lora_gguf_version(g), 3);
    ck_assert_uint_eq(lora_gguf_tensor_count(g), 12);
    ck_assert_str_eq(lora_gguf_get_str(g, "general.architecture"), "llama");
    const lora_gguf_kv *tok = lora_gguf_find_kv(g, "tokenizer.ggml.tokens");
    ck_assert_ptr_nonnull(tok);
    ck_assert_uint_eq(tok->n, 32000);
    const char *s;
    uint64_t len;
    ck_assert_int_eq(lora_gguf_kv_arr_str(g, tok, 31999, &s, &len), 0);
    size_t f16 = 0, f32 = 0;
    uint64_t end = 0;
    for (size_t i = 0; i < lora_gguf_tensor_count(g); i++) {
        const lora_gguf_tensor *t = lora_gguf_tensor_at(g, i);
        f16 += t->dtype == LORA_DT_F16;
        f32 += t->dtype == LORA_DT_F32;
        if (t->offset + t->nbytes > end)
            end = t->offset + t->nbytes;
    }
    ck_assert_uint_eq(f16 + f32, 12);
    ck_assert(f16 > 0 && f32 > 0);
    ck_assert_uint_le(end, lora_gguf_size(g));
    ck_assert_ptr_nonnull(lora_gguf_find_tensor(g, "token_embd.weight"));
    /* every key survives a copy through the writer */
    char *tmp = tu_tmpdir(), *out = tu_path(tmp, "k.gguf");
    lora_ggw *w;
    ck_assert_int_eq(lora_ggw_new(out, 0, &w, &e), LORA_OK);
    for (size_t i = 0; i < lora_gguf_kv_count(g); i++)
        ck_assert_int_eq(lora_ggw_kv_copy(w, g, lora_gguf_kv_at(g, i), &e), LORA_OK);
    ck_assert_int_eq(lora_ggw_commit(w, &e), LORA_OK);
    lora_gguf *g2;
    ck_assert_int_eq(lora_gguf_open(out, &g2, &e), LORA_OK);
    ck_assert_uint_eq(lora_gguf_kv_count(g2), lora_gguf_kv_count(g));
    for (size_t i = 0; i < lora_gguf_kv_count(g); i++) {
        const lora_gguf_kv *a = lora_gguf_kv_at(g, i), *b = lora_gguf_kv_at(g2, i);
        ck_assert_str_eq(a->key, b->key);
        ck_assert_uint_eq(a->raw_len, b->raw_len);
        ck_assert_int_eq(a->type, b->type);
        ck_assert_uint_eq(a->n, b->n);
        if (a->str)
            ck_assert_int_eq(memcmp(a->str, b->str, (size_t)a->len), 0);
        else if (a->data)
            ck_assert_int_eq(memcmp(a->data, b->data,
                                    (size_t)a->raw_len - (a->type == LORA_GGUF_ARRAY ? 12 : 0)),
                             0);
        else
            for (uint64_t k = 0; k < a->n; k += a->n - 1 > 0 ? a->n - 1 : 1) {
                const char *s1, *s2;
                uint64_t l1, l2;
                ck_assert_int_eq(lora_gguf_kv_arr_str(g, a, k, &s1, &l1), 0);
                ck_assert_int_eq(lora_gguf_kv_arr_str(g2, b, k, &s2, &l2), 0);
                ck_assert(l1 == l2 && memcmp(s1, s2, (size_t)l1) == 0);
            }
    }
    /* not an adapter: said so */
    lora_gguf_adapter *ga;
    ck_assert_int_eq(lora_gguf_adapter_open(p, &ga, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "not a LoRA adapter"), "%s", e.msg);
    lora_gguf_close(g2);
    lora_gguf_close(g);
    tu_rmtree(tmp);
    free(tmp);
    free(out);
    free(p);
}
END_TEST

/* A GGUF model as --base: architecture, head counts and tied embeddings
 * from the file, every module checked against the base tensor's shape. */
START_TEST(test_real_gguf_base)
{
    char *g = tu_fixture("real/gguf-llama2-tiny-random/llama-2-tiny-random.gguf");
    char *tmp = tu_tmpdir(), *ad = tu_path(tmp, "ad"), *out = tu_path(tmp, "o.gguf");
    /* the fixture: hidden 8, 2 heads (head_dim 4), ffn 32, vocab 32000 */
    mod m[5] = {
        {"model.layers.0.self_attn.q_proj", 8, 8, 2, 0},
        {"model.layers.0.self_attn.k_proj", 8, 8, 2, 0},
        {"model.layers.0.mlp.down_proj", 8, 32, 2, 0},
        {"model.embed_tokens", 8, 32000, 2, 1},
        {"lm_head", 32000, 8, 2, 0},
    };
    write_peft(ad, "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4}", m, 5, LORA_DT_F32, 9);
    lora_adapter *a;
    lora_error e;
    ck_assert_int_eq(lora_adapter_open(ad, &a, &e), LORA_OK);
    lora_convert_opts o = {.base = g};
    lora_convert_report rep;
    ck_assert_msg(lora_convert_to_gguf(a, out, &o, &rep, &e) == LORA_OK, "%s", e.msg);
    ck_assert_str_eq(rep.architecture, "llama");
    ck_assert_uint_eq(rep.n_modules, 5);
    lora_convert_report_free(&rep);
    lora_gguf_adapter *ga;
    ck_assert_int_eq(lora_gguf_adapter_open(out, &ga, &e), LORA_OK);
    for (size_t i = 0; i < ga->n; i++) {
        const lora_gguf_pair *p = &ga->pairs[i];
        const lora_module *pm = NULL;
        for (size_t k = 0; k < a->n_modules; k++) {
            char nm[128];
            lora_gguf_arch arch;
            lora_gguf_arch_from_name("llama", &arch, &e);
            lora_gguf_name_from_hf(&arch, a->modules[k].name, nm, sizeof nm);
            if (strcmp(nm, p->name) == 0)
                pm = &a->modules[k];
        }
        ck_assert_ptr_nonnull(pm);
        int qk = strstr(p->name, "attn_q") || strstr(p->name, "attn_k");
        double *x = peft_delta(pm), *y = gguf_delta(ga, p, qk ? 2 : 0);
        ck_assert_msg(rel_diff(x, y, pm->out * pm->in) <= 1e-15, "%s", p->name);
        free(x);
        free(y);
    }
    lora_gguf_adapter_free(ga);
    lora_adapter_free(a);
    /* the wrong base: a 16 x 8 update cannot fit attn_q [8, 8] */
    char *ad2 = tu_path(tmp, "ad2");
    mod wrong[1] = {{"model.layers.0.self_attn.q_proj", 16, 8, 2, 0}};
    write_peft(ad2, "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4}", wrong, 1,
               LORA_DT_F32, 10);
    ck_assert_int_eq(lora_adapter_open(ad2, &a, &e), LORA_OK);
    unlink(out);
    ck_assert_int_eq(lora_convert_to_gguf(a, out, &o, &rep, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "does not fit the base's blk.0.attn_q.weight"), "%s", e.msg);
    ck_assert_int_eq(access(out, F_OK), -1);
    lora_convert_report_free(&rep);
    lora_adapter_free(a);
    tu_rmtree(tmp);
    free(tmp);
    free(ad);
    free(ad2);
    free(out);
    free(g);
}
END_TEST

/* Real adapters: Qwen2.5 q/v (GQA) and GPT-2 Conv1D, exact round trips. */
START_TEST(test_real_adapters)
{
    char *tmp = tu_tmpdir();
    char *qb = write_config_dir(tmp, "{\"model_type\":\"qwen2\",\"num_attention_heads\":14,"
                                     "\"num_key_value_heads\":2}");
    char *q = tu_fixture("real/qwen2.5-0.5b-qv");
    check_conversion(q, qb, LORA_DT_INVALID, 1e-15, 0, 0);
    char *gp = tu_fixture("real/gpt2-tigrinya-lora");
    char *gb = tu_path(tmp, "gbase");
    ck_assert_int_eq(mkdir(gb, 0755), 0);
    char *gc = tu_path(gb, "config.json");
    tu_write(gc, "{\"model_type\":\"gpt2\",\"n_head\":12}", 33);
    check_conversion(gp, gb, LORA_DT_INVALID, 1e-15, 0, 0);
    tu_rmtree(tmp);
    free(tmp);
    free(qb);
    free(q);
    free(gp);
    free(gb);
    free(gc);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_reader_sample);
    tcase_add_test(tc, test_reader_truncated);
    tcase_add_test(tc, test_reader_hostile);
    tcase_add_test(tc, test_reader_header_refusals);
    tcase_add_test(tc, test_writer_roundtrip);
    tcase_add_test(tc, test_base_view);
    tcase_add_test(tc, test_writer_kept_layout);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_permute);
    tcase_add_test(tc, test_convert_plain_f32);
    tcase_add_test(tc, test_convert_rslora_patterns);
    tcase_add_test(tc, test_convert_outtypes);
    tcase_add_test(tc, test_convert_gpt2);
    tcase_add_test(tc, test_convert_refusals);
    tcase_add_test(tc, test_gguf_adapter_refusals);
    suite_add_tcase(s, tc);
    if (tu_fixtures()) {
        TCase *real = tcase_create("real");
        tcase_set_timeout(real, 120);
        tcase_add_test(real, test_real_gguf);
        tcase_add_test(real, test_real_adapters);
        tcase_add_test(real, test_real_gguf_base);
        suite_add_tcase(s, real);
    } else {
        printf("SKIP: real GGUF and adapters (FIXTURES not set)\n");
    }
    return tu_run(s, 0);
}

/*
 * check_safetensors.c - unit tests for safetensors.c: hostile and
 * malformed files (each refused with LORA_EINPUT and a message naming
 * the problem), valid corner cases (whitespace, unaligned N, empty and
 * zero-element tensors, scalars), and the writer: round trips, exact
 * bytes, determinism, alignment, parallel writes, copies, direct
 * (O_DIRECT) writes against cached ones, and that nothing stands under
 * the final name before commit or after a failure.
 */
#include "testutil.h"
#include "internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* A file image: 8-byte N, the header text, then datalen bytes of data
 * (0, 1, 2, ...).  hdrlen overrides N when not (uint64_t)-1. */
static unsigned char *image(const char *hdr, uint64_t hdrlen, size_t datalen, size_t *len)
{
    size_t hl = strlen(hdr);
    uint64_t n = hdrlen == (uint64_t)-1 ? hl : hdrlen;
    *len = 8 + hl + datalen;
    unsigned char *b = malloc(*len + 1);
    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, hdr, hl);
    for (size_t i = 0; i < datalen; i++)
        b[8 + hl + i] = (unsigned char)i;
    return b;
}

static int open_img(const char *hdr, uint64_t hdrlen, size_t datalen, lora_st **st,
                    lora_error *e)
{
    size_t len;
    unsigned char *b = image(hdr, hdrlen, datalen, &len);
    int rc = lora_st_open_memory(b, len, "t.safetensors", st, e);
    if (rc == LORA_OK) {
        /* touch every tensor's bytes: the validation said they are there */
        unsigned sum = 0;
        for (size_t i = 0; i < lora_st_count(*st); i++) {
            const lora_tensor *t = lora_st_tensor(*st, i);
            for (uint64_t k = 0; k < t->nbytes; k++)
                sum += ((const unsigned char *)t->data)[k];
        }
        (void)sum;
        lora_st_close(*st);
        *st = NULL;
    }
    free(b);
    return rc;
}

static const struct hostile {
    const char *what;
    const char *hdr;
    uint64_t n;       /* (uint64_t)-1: the header's length */
    size_t data;
    const char *msg;  /* fragment the message must hold */
} hostile[] = {
    {"truncated header", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 200,
     0, "runs past the end"},
    {"header length past EOF", "{}", 1ull << 40, 0, "exceeds the limit"},
    {"header length just past EOF", "{}", 3, 0, "runs past the end"},
    {"header length 2^63", "{}", 1ull << 63, 0, "exceeds the limit"},
    {"header length 0", "{}", 0, 0, "empty header"},
    {"overlapping offsets",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     (uint64_t)-1, 12, "overlap tensor \"a\""},
    {"hole between tensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
     (uint64_t)-1, 20, "leave a hole after tensor \"a\""},
    {"hole before the first", "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     (uint64_t)-1, 12, "must start at offset 0"},
    {"offsets past the end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
     (uint64_t)-1, 8, "describes 16 bytes of tensor data but the file holds only 8"},
    {"offsets far past the end",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1000000000000],\"data_offsets\":[0,1000000000000]}}",
     (uint64_t)-1, 8, "holds only 8"},
    {"end before begin", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}",
     (uint64_t)-1, 8, "end before they begin"},
    {"shape x dtype != length", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "give 12 bytes but data_offsets [0, 8] span 8"},
    {"trailing bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 12, "4 trailing bytes"},
    {"trailing bytes, no tensors", "{}", (uint64_t)-1, 1, "1 trailing bytes"},
    {"duplicate tensor",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
     (uint64_t)-1, 16, "duplicate key"},
    {"duplicate __metadata__", "{\"__metadata__\":{},\"__metadata__\":{\"a\":\"b\"}}",
     (uint64_t)-1, 0, "duplicate key"},
    {"duplicate metadata key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", (uint64_t)-1, 0,
     "duplicate key"},
    {"duplicate field", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[2],"
                        "\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "duplicate key"},
    {"invalid UTF-8 in a name", "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "not valid UTF-8"},
    {"invalid UTF-8 in metadata", "{\"__metadata__\":{\"k\":\"\xc3\x28\"}}", (uint64_t)-1, 0,
     "not valid UTF-8"},
    {"overlong UTF-8", "{\"__metadata__\":{\"k\":\"\xc0\xaf\"}}", (uint64_t)-1, 0,
     "not valid UTF-8"},
    {"invalid JSON", "{\"a\":", (uint64_t)-1, 0, "not valid JSON"},
    {"trailing garbage in header", "{} x", (uint64_t)-1, 0, "not valid JSON"},
    {"escaped NUL in key", "{\"a\\u0000b\":{}}", (uint64_t)-1, 0, "not valid JSON"},
    {"header is an array", "[]", (uint64_t)-1, 0, "not a JSON object"},
    {"non-string metadata", "{\"__metadata__\":{\"format\":1}}", (uint64_t)-1, 0,
     "__metadata__ value of \"format\" is not a string"},
    {"metadata not an object", "{\"__metadata__\":[\"pt\"]}", (uint64_t)-1, 0,
     "__metadata__ is not an object"},
    {"tensor named __metadata__",
     "{\"__metadata__\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", (uint64_t)-1,
     8, "may not be named __metadata__"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "unknown dtype \"F128\""},
    {"lower-case dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "unknown dtype"},
    {"missing dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", (uint64_t)-1, 8,
     "\"dtype\""},
    {"negative shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "shape[0] is not a non-negative integer"},
    {"float shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "shape[0] is not a non-negative integer"},
    {"string shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "\"shape\""},
    {"negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}",
     (uint64_t)-1, 8, "data_offsets is not two non-negative integers"},
    {"float offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}",
     (uint64_t)-1, 8, "data_offsets is not two non-negative integers"},
    {"three offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}",
     (uint64_t)-1, 8, "data_offsets is not two"},
    {"huge integer", "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
                     "\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "not valid JSON"},
    {"too many dimensions",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
     (uint64_t)-1, 1, "9 dimensions"},
    {"element count overflow",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}",
     (uint64_t)-1, 0, "element count overflows"},
    {"byte size overflow",
     "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}",
     (uint64_t)-1, 0, "byte size overflows"},
    {"misaligned F4", "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}",
     (uint64_t)-1, 1, "do not fill whole bytes"},
    {"control characters in a name",
     "{\"\\u001b[2J\\u009b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",
     (uint64_t)-1, 8, "tensor \"?[2J??\": shape"},
    {"entry not an object", "{\"a\":[1,2]}", (uint64_t)-1, 0, "entry is not an object"},
};

START_TEST(test_hostile)
{
    const struct hostile *h = &hostile[_i];
    lora_st *st = (lora_st *)1;
    lora_error e;
    lora_error_clear(&e);
    size_t len;
    unsigned char *b = image(h->hdr, h->n, h->data, &len);
    int rc = lora_st_open_memory(b, len, "t.safetensors", &st, &e);
    free(b);
    if (rc != LORA_EINPUT || !strstr(e.msg, h->msg))
        ck_abort_msg("%s: rc %d, message \"%s\", want \"%s\"", h->what, rc, e.msg, h->msg);
    ck_assert_int_eq(e.code, LORA_EINPUT);
    ck_assert_ptr_null(st);
    ck_assert_ptr_nonnull(strstr(e.msg, "t.safetensors"));
}
END_TEST

START_TEST(test_short_files)
{
    lora_st *st;
    lora_error e;
    ck_assert_int_eq(lora_st_open_memory("", 0, "e", &st, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "empty file"));
    ck_assert_int_eq(lora_st_open_memory("\x02\0\0\0", 4, "e", &st, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "too short"));
    /* a raw NUL byte inside the header */
    ck_assert_int_eq(lora_st_open_memory("\x03\0\0\0\0\0\0\0{}\0", 11, "e", &st, &e),
                     LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "not valid JSON"));
    /* deep nesting is refused by the JSON parser's depth limit, not the stack */
    {
        enum { DEPTH = 200000 };
        char *h = malloc(DEPTH + 16);
        ck_assert_ptr_nonnull(h);
        strcpy(h, "{\"a\":");
        memset(h + 5, '[', DEPTH);
        h[5 + DEPTH] = '\0';
        size_t len;
        unsigned char *b = image(h, (uint64_t)-1, 0, &len);
        ck_assert_int_eq(lora_st_open_memory(b, len, "deep", &st, &e), LORA_EINPUT);
        ck_assert_ptr_nonnull(strstr(e.msg, "not valid JSON"));
        free(b);
        free(h);
    }
    /* the same through the file reader, empty and short files */
    char *d = tu_tmpdir();
    char *p = tu_path(d, "empty.safetensors");
    tu_write(p, "", 0);
    ck_assert_int_eq(lora_st_open(p, &st, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "empty file"));
    ck_assert_ptr_nonnull(strstr(e.msg, p));
    tu_write(p, "\x08\0\0\0\0\0\0", 7);
    ck_assert_int_eq(lora_st_open(p, &st, &e), LORA_EINPUT);
    /* N = 2^63 in a real file */
    tu_write(p, "\0\0\0\0\0\0\0\x80{}", 10);
    ck_assert_int_eq(lora_st_open(p, &st, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "9223372036854775808"));
    /* a FIFO is refused, not waited on */
    char *fifo = tu_path(d, "fifo.safetensors");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ck_assert_int_eq(lora_st_open(fifo, &st, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "not a regular file"));
    free(fifo);
    /* missing files and folders */
    ck_assert_int_eq(lora_st_open(d, &st, &e), LORA_EINPUT);
    char *q = tu_path(d, "nope.safetensors");
    ck_assert_int_eq(lora_st_open(q, &st, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "nope.safetensors"));
    free(q);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

START_TEST(test_valid_corners)
{
    lora_st *st;
    lora_error e;
    /* zero tensors, metadata null, whitespace around the header, N not a
     * multiple of 8, unknown fields ignored */
    ck_assert_int_eq(open_img("{}", (uint64_t)-1, 0, &st, &e), LORA_OK);
    ck_assert_int_eq(open_img(" \t\r\n{ } \n ", (uint64_t)-1, 0, &st, &e), LORA_OK);
    ck_assert_int_eq(open_img("{\"__metadata__\":null}", (uint64_t)-1, 0, &st, &e), LORA_OK);
    ck_assert_int_eq(open_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],"
                              "\"extra\":[1]}}",
                              (uint64_t)-1, 8, &st, &e),
                     LORA_OK);
    /* every dtype name validates; F4 with an even count fills bytes */
    ck_assert_int_eq(open_img("{\"a\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]},"
                              "\"b\":{\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[2,5]},"
                              "\"c\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[5,13]},"
                              "\"d\":{\"dtype\":\"F8_E5M2FNUZ\",\"shape\":[],\"data_offsets\":[13,14]}}",
                              (uint64_t)-1, 14, &st, &e),
                     LORA_OK);

    /* zero-element tensors share an offset; a scalar has numel 1 */
    const char *hdr = "  {\"__metadata__\":{\"format\":\"pt\",\"x\":\"\xc3\xa9\"},"
                      "\"z2\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[4,4]},"
                      "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                      "\"z1\":{\"dtype\":\"BF16\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[1,2],\"data_offsets\":[4,8]}} ";
    size_t len;
    unsigned char *b = image(hdr, (uint64_t)-1, 8, &len);
    ck_assert_int_eq(lora_st_open_memory(b, len, "m", &st, &e), LORA_OK);
    ck_assert_uint_eq(lora_st_count(st), 4);
    ck_assert_uint_eq(lora_st_header_size(st), strlen(hdr));
    ck_assert_uint_eq(lora_st_size(st), len);
    ck_assert_int_eq(lora_st_fd(st), -1);
    ck_assert_str_eq(lora_st_path(st), "m");
    const lora_tensor *s = lora_st_find(st, "s");
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(s->ndim, 0);
    ck_assert_uint_eq(s->numel, 1);
    ck_assert_uint_eq(s->nbytes, 4);
    ck_assert_uint_eq(s->offset, 8 + strlen(hdr));
    ck_assert_ptr_eq(s->data, b + 8 + strlen(hdr));
    ck_assert_ptr_eq(lora_st_tensor(st, 0), s); /* offset order */
    const lora_tensor *z = lora_st_find(st, "z2");
    ck_assert_uint_eq(z->numel, 0);
    ck_assert_uint_eq(z->nbytes, 0);
    ck_assert_uint_eq(z->shape[0], 0);
    ck_assert_uint_eq(z->shape[1], 4);
    /* equal (begin, end) pairs come out by name, after s, before h */
    ck_assert_str_eq(lora_st_tensor(st, 1)->name, "z1");
    ck_assert_str_eq(lora_st_tensor(st, 2)->name, "z2");
    ck_assert_str_eq(lora_st_tensor(st, 3)->name, "h");
    ck_assert_int_eq(lora_st_find(st, "h")->dtype, LORA_DT_F16);
    ck_assert_ptr_null(lora_st_find(st, "nope"));
    ck_assert_ptr_null(lora_st_find(st, "__metadata__"));
    ck_assert_ptr_null(lora_st_tensor(st, 4));
    ck_assert_uint_eq(lora_st_metadata_count(st), 2);
    const char *k, *v;
    ck_assert_int_eq(lora_st_metadata_at(st, 1, &k, &v), LORA_OK);
    ck_assert_str_eq(k, "x");
    ck_assert_str_eq(v, "\xc3\xa9");
    ck_assert_str_eq(lora_st_metadata(st, "format"), "pt");
    ck_assert_ptr_null(lora_st_metadata(st, "y"));
    ck_assert_int_ne(lora_st_metadata_at(st, 2, &k, &v), LORA_OK);
    lora_st_close(st);
    free(b);
    lora_st_close(NULL);
}
END_TEST

/* ---- writer ---- */

static int dir_entries(const char *d)
{
    DIR *dir = opendir(d);
    ck_assert_ptr_nonnull(dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dir)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(dir);
    return n;
}

static int exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

typedef struct {
    const char *name;
    lora_dtype dt;
    int ndim;
    uint64_t shape[3];
} decl;

static const decl decls[] = {
    {"w.f32", LORA_DT_F32, 2, {2, 3}},  {"b.f16", LORA_DT_F16, 1, {5}},
    {"scalar.bf16", LORA_DT_BF16, 0, {0}}, {"m.f64", LORA_DT_F64, 2, {2, 2}},
    {"empty.f32", LORA_DT_F32, 2, {0, 4}}, {"a.u8", LORA_DT_U8, 1, {3}},
    {"a.f32", LORA_DT_F32, 1, {1}},
};
enum { NDECL = sizeof decls / sizeof *decls };

static uint64_t decl_bytes(const decl *d)
{
    uint64_t n = 1;
    for (int i = 0; i < d->ndim; i++)
        n *= d->shape[i];
    return n * lora_dtype_bits(d->dt) / 8;
}

/* Deterministic content for tensor i. */
static void content(int i, unsigned char *buf, uint64_t n)
{
    for (uint64_t k = 0; k < n; k++)
        buf[k] = (unsigned char)(i * 31 + k * 7 + 1);
}

/* Write the declarations in the order given by perm, data in reverse,
 * metadata set in the given order. */
static void write_file(const char *path, const int *perm, int meta_rev)
{
    lora_stw *w;
    lora_error e;
    ck_assert_int_eq(lora_stw_new(path, &w, &e), LORA_OK);
    if (meta_rev) {
        ck_assert_int_eq(lora_stw_set_metadata(w, "zeta", "1", &e), LORA_OK);
        ck_assert_int_eq(lora_stw_set_metadata(w, "alpha", "x\"y\\z\n", &e), LORA_OK);
    } else {
        ck_assert_int_eq(lora_stw_set_metadata(w, "alpha", "old", &e), LORA_OK);
        ck_assert_int_eq(lora_stw_set_metadata(w, "alpha", "x\"y\\z\n", &e), LORA_OK);
        ck_assert_int_eq(lora_stw_set_metadata(w, "zeta", "1", &e), LORA_OK);
    }
    for (int j = 0; j < NDECL; j++) {
        const decl *d = &decls[perm[j]];
        ck_assert_int_eq(lora_stw_declare(w, d->name, d->dt, d->ndim, d->shape, &e), LORA_OK);
    }
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    ck_assert(!exists(path));
    for (int j = NDECL - 1; j >= 0; j--) {
        const decl *d = &decls[perm[j]];
        uint64_t n = decl_bytes(d);
        unsigned char buf[64];
        content(perm[j], buf, n);
        /* in two parts, the second first */
        uint64_t h = n / 2;
        ck_assert_int_eq(lora_stw_write(w, d->name, h, buf + h, (size_t)(n - h), &e), LORA_OK);
        ck_assert_int_eq(lora_stw_write(w, d->name, 0, buf, (size_t)h, &e), LORA_OK);
    }
    ck_assert(!exists(path));
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
}

START_TEST(test_round_trip)
{
    char *d = tu_tmpdir();
    char *p1 = tu_path(d, "one.safetensors"), *p2 = tu_path(d, "two.safetensors");
    int fwd[NDECL], rev[NDECL];
    for (int i = 0; i < NDECL; i++) {
        fwd[i] = i;
        rev[i] = NDECL - 1 - i;
    }
    write_file(p1, fwd, 0);
    write_file(p2, rev, 1);
    ck_assert_int_eq(dir_entries(d), 2); /* no temporaries left behind */
    size_t n1, n2;
    char *b1 = tu_read(p1, &n1), *b2 = tu_read(p2, &n2);
    ck_assert_uint_eq(n1, n2);
    ck_assert(memcmp(b1, b2, n1) == 0); /* same bytes whatever the order */

    lora_st *st;
    lora_error e;
    ck_assert_int_eq(lora_st_open(p1, &st, &e), LORA_OK);
    ck_assert_uint_eq(lora_st_count(st), NDECL);
    ck_assert_uint_eq(lora_st_header_size(st) % 8, 0);
    ck_assert_int_ge(lora_st_fd(st), 0);
    /* the reference writer's order: widest dtype first, then name */
    const char *order[] = {"m.f64", "a.f32", "empty.f32", "w.f32", "scalar.bf16", "b.f16",
                           "a.u8"};
    for (int i = 0; i < NDECL; i++) {
        const lora_tensor *t = lora_st_tensor(st, (size_t)i);
        ck_assert_str_eq(t->name, order[i]);
        ck_assert_uint_eq(t->offset % (lora_dtype_bits(t->dtype) / 8), 0);
    }
    for (int i = 0; i < NDECL; i++) {
        const lora_tensor *t = lora_st_find(st, decls[i].name);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(t->dtype, decls[i].dt);
        ck_assert_int_eq(t->ndim, decls[i].ndim);
        for (int k = 0; k < t->ndim; k++)
            ck_assert_uint_eq(t->shape[k], decls[i].shape[k]);
        unsigned char want[64];
        content(i, want, t->nbytes);
        ck_assert_uint_eq(t->nbytes, decl_bytes(&decls[i]));
        ck_assert(memcmp(t->data, want, t->nbytes) == 0);
    }
    ck_assert_str_eq(lora_st_metadata(st, "format"), "pt");
    ck_assert_str_eq(lora_st_metadata(st, "alpha"), "x\"y\\z\n");
    /* metadata keys come out sorted */
    const char *k;
    lora_st_metadata_at(st, 0, &k, NULL);
    ck_assert_str_eq(k, "alpha");
    lora_st_metadata_at(st, 1, &k, NULL);
    ck_assert_str_eq(k, "format");
    /* the header text itself, serde-style compact JSON */
    const char *head = "{\"__metadata__\":{\"alpha\":\"x\\\"y\\\\z\\n\",\"format\":\"pt\","
                       "\"zeta\":\"1\"},\"m.f64\":{\"dtype\":\"F64\",\"shape\":[2,2],"
                       "\"data_offsets\":[0,32]},\"a.f32\":{\"dtype\":\"F32\",\"shape\":[1],"
                       "\"data_offsets\":[32,36]}";
    ck_assert(memcmp(b1 + 8, head, strlen(head)) == 0);
    lora_st_close(st);
    free(b1);
    free(b2);
    free(p1);
    free(p2);
    tu_rmtree(d);
    free(d);
}
END_TEST

START_TEST(test_exact_bytes)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "x.safetensors");
    lora_stw *w;
    lora_error e;
    /* no tensors: 32 bytes of header, already a multiple of 8 */
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
    size_t n;
    char *b = tu_read(p, &n);
    const char want0[] = "\x20\0\0\0\0\0\0\0{\"__metadata__\":{\"format\":\"pt\"}}";
    ck_assert_uint_eq(n, sizeof want0 - 1);
    ck_assert(memcmp(b, want0, n) == 0);
    free(b);
    /* one F32 tensor */
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    uint64_t sh[1] = {2};
    ck_assert_int_eq(lora_stw_declare(w, "a", LORA_DT_F32, 1, sh, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    float v[2] = {1.0f, -2.0f};
    ck_assert_int_eq(lora_stw_write(w, "a", 0, v, 8, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
    b = tu_read(p, &n);
    const char hdr[] = "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\","
                       "\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t hl = strlen(hdr), pad = (hl + 7) / 8 * 8;
    ck_assert_uint_eq(n, 8 + pad + 8);
    ck_assert_uint_eq((unsigned char)b[0], pad);
    ck_assert(memcmp(b + 8, hdr, hl) == 0);
    for (size_t i = hl; i < pad; i++)
        ck_assert_int_eq(b[8 + i], ' ');
    ck_assert(memcmp(b + 8 + pad, v, 8) == 0);
    free(b);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* lora_stw_set_layout: another writer's header kept byte for byte
 * (verbatim), or its order and offsets kept under new metadata; headers
 * that do not match the declarations refused at start; metadata patched
 * after start. */
static const char KEPT[] = "{\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [2, 6]},"
                           " \"__metadata__\": {\"z\": \"1\", \"a\": \"2\"}, \"a\": {\"dtype\": "
                           "\"F16\", \"shape\": [1], \"data_offsets\": [0, 2]}}     \n  ";

static lora_stw *kept_writer(const char *p, const char *hdr, int verbatim, lora_error *e)
{
    lora_stw *w;
    uint64_t sh[1] = {1};
    ck_assert_int_eq(lora_stw_new(p, &w, e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "b", LORA_DT_F32, 1, sh, e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "a", LORA_DT_F16, 1, sh, e), LORA_OK);
    ck_assert_int_eq(lora_stw_set_layout(w, hdr, strlen(hdr), verbatim, e), LORA_OK);
    return w;
}

static void kept_data(lora_stw *w, lora_error *e)
{
    const unsigned char a[2] = {0x11, 0x22}, b[4] = {1, 2, 3, 4};
    ck_assert_int_eq(lora_stw_write(w, "b", 0, b, 4, e), LORA_OK);
    ck_assert_int_eq(lora_stw_write(w, "a", 0, a, 2, e), LORA_OK);
}

START_TEST(test_kept_layout)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "x.safetensors");
    lora_error e;
    size_t n, hl = strlen(KEPT);
    /* verbatim: the very bytes, odd padding and all */
    lora_stw *w = kept_writer(p, KEPT, 1, &e);
    ck_assert_int_eq(lora_stw_set_metadata(w, "ignored", "x", &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    size_t got;
    ck_assert_ptr_nonnull(lora_stw_header(w, &got));
    ck_assert_uint_eq(got, 8 + hl);
    kept_data(w, &e);
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
    char *b = tu_read(p, &n);
    ck_assert_uint_eq(n, 8 + hl + 6);
    ck_assert_uint_eq((unsigned char)b[0], hl);
    ck_assert(memcmp(b + 8, KEPT, hl) == 0);
    ck_assert(memcmp(b + 8 + hl, "\x11\x22\x01\x02\x03\x04", 6) == 0);
    lora_st *st;
    ck_assert_int_eq(lora_st_open(p, &st, &e), LORA_OK);
    lora_st_close(st);
    free(b);
    /* kept order and offsets, new metadata where __metadata__ was, in the
     * order set, "format" only when set */
    w = kept_writer(p, KEPT, 0, &e);
    ck_assert_int_eq(lora_stw_set_metadata(w, "z", "1", &e), LORA_OK);
    ck_assert_int_eq(lora_stw_set_metadata(w, "a", "2", &e), LORA_OK);
    ck_assert_int_eq(lora_stw_set_metadata(w, "lora_base", "0000", &e), LORA_OK);
    ck_assert_int_eq(lora_stw_patch_metadata(w, "lora_base", "abcd", &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_patch_metadata(w, "lora_base", "abc", &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_patch_metadata(w, "lora_base", "ab\"d", &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_patch_metadata(w, "z", "1", &e), LORA_OK);
    ck_assert_int_eq(lora_stw_patch_metadata(w, "nope", "1234", &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_patch_metadata(w, "lora_base", "abcd", &e), LORA_OK);
    kept_data(w, &e);
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
    b = tu_read(p, &n);
    const char want[] = "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]},"
                        "\"__metadata__\":{\"z\":\"1\",\"a\":\"2\",\"lora_base\":\"abcd\"},"
                        "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}}";
    size_t wl = strlen(want), pad = (wl + 7) / 8 * 8;
    ck_assert_uint_eq(n, 8 + pad + 6);
    ck_assert(memcmp(b + 8, want, wl) == 0);
    ck_assert(memcmp(b + 8 + pad, "\x11\x22\x01\x02\x03\x04", 6) == 0);
    free(b);
    /* a header without __metadata__ gets it first, with "format":"pt"
     * (transformers refuses metadata without a format) */
    const char nometa[] = "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4,6]}}";
    w = kept_writer(p, nometa, 0, &e);
    ck_assert_int_eq(lora_stw_set_metadata(w, "k", "v", &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    kept_data(w, &e);
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
    b = tu_read(p, &n);
    ck_assert(memcmp(b + 8, "{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"},\"b\":", 43) == 0);
    ck_assert(memcmp(b + n - 6, "\x01\x02\x03\x04\x11\x22", 6) == 0);
    free(b);
    /* headers that do not fit the declarations: refused, nothing left */
    static const char *bad[] = {
        "{\"b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
        "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}}",        /* dtype */
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4,6]}}",        /* shape */
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",      /* a missing */
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4,6]},"
        "\"c\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[6,8]}}",        /* extra */
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[8,10]}}",       /* a hole */
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}}",        /* overlap */
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4]}}",          /* offsets */
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4,6]}}",
        "{\"b\":{},\"b\":{}}", "[1]", "{\"b\":", "null",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        w = kept_writer(p, bad[i], i % 2, &e);
        ck_assert_msg(lora_stw_start(w, &e) == LORA_EINPUT, "case %zu accepted", i);
        ck_assert(strlen(e.msg) > 0);
        lora_stw_abort(w);
    }
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_set_layout(w, "", 0, 1, &e), LORA_EINPUT);
    lora_stw_abort(w);
    unlink(p);
    char *cmd;
    ck_assert_int_gt(asprintf(&cmd, "test -z \"$(ls -A '%s')\"", d), 0);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

START_TEST(test_writer_failures)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "out.safetensors");
    lora_stw *w;
    lora_error e;
    uint64_t sh[2] = {4, 4};
    unsigned char buf[64] = {0};

    /* abort: nothing under the final name, no temporary */
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    ck_assert_int_eq(dir_entries(d), 1); /* the temporary */
    ck_assert_int_eq(lora_stw_declare(w, "t", LORA_DT_F32, 2, sh, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_write(w, "t", 0, buf, 64, &e), LORA_OK);
    ck_assert(!exists(p));
    lora_stw_abort(w);
    ck_assert(!exists(p));
    ck_assert_int_eq(dir_entries(d), 0);
    lora_stw_abort(NULL);

    /* an incomplete tensor: commit fails and leaves nothing */
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "t", LORA_DT_F32, 2, sh, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "u", LORA_DT_F16, 1, sh, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_write(w, "t", 0, buf, 64, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_write(w, "u", 0, buf, 4, &e), LORA_OK);
    /* misuse is refused without harm */
    ck_assert_int_eq(lora_stw_write(w, "u", 6, buf, 4, &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_write(w, "u", UINT64_MAX, buf, 4, &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_write(w, "v", 0, buf, 4, &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_declare(w, "late", LORA_DT_F32, 2, sh, &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_set_metadata(w, "k", "v", &e), LORA_EUSAGE);
    ck_assert_int_ne(lora_stw_commit(w, &e), LORA_OK);
    ck_assert_ptr_nonnull(strstr(e.msg, "\"u\": 4 of its 8 bytes"));
    ck_assert(!exists(p));
    ck_assert_int_eq(dir_entries(d), 0);

    /* bad declarations */
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "__metadata__", LORA_DT_F32, 2, sh, &e), LORA_EINPUT);
    ck_assert_int_eq(lora_stw_declare(w, "bad\xff", LORA_DT_F32, 2, sh, &e), LORA_EINPUT);
    ck_assert_int_eq(lora_stw_declare(w, "x", LORA_DT_INVALID, 2, sh, &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_stw_declare(w, "x", LORA_DT_F32, 9, sh, &e), LORA_EUSAGE);
    uint64_t big[2] = {1ull << 40, 1ull << 40};
    ck_assert_int_eq(lora_stw_declare(w, "x", LORA_DT_F32, 2, big, &e), LORA_EINPUT);
    uint64_t three[1] = {3};
    ck_assert_int_eq(lora_stw_declare(w, "x", LORA_DT_F4, 1, three, &e), LORA_EINPUT);
    ck_assert_int_eq(lora_stw_set_metadata(w, "k", "\xc3\x28", &e), LORA_EINPUT);
    ck_assert_int_eq(lora_stw_declare(w, "d", LORA_DT_F32, 2, sh, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "d", LORA_DT_F16, 2, sh, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_write(w, "d", 0, buf, 4, &e), LORA_EUSAGE); /* not started */
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_EUSAGE);
    ck_assert_ptr_nonnull(strstr(e.msg, "\"d\" declared twice"));
    lora_stw_abort(w);
    ck_assert_int_eq(dir_entries(d), 0);

    /* a folder that does not exist */
    char *q = tu_path(d, "no/out.safetensors");
    ck_assert_int_eq(lora_stw_new(q, &w, &e), LORA_EIO);
    ck_assert_ptr_null(w);
    free(q);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* Several threads write interleaved parts of the same tensors. */
enum { NT = 4, TN = 3, TBYTES = 1 << 16, PART = 1000 };

struct job {
    lora_stw *w;
    int id;
    int rc;
};

static void *writer_thread(void *arg)
{
    struct job *j = arg;
    unsigned char buf[PART];
    lora_error e;
    for (int t = 0; t < TN; t++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", t);
        for (uint64_t off = (uint64_t)j->id * PART; off < TBYTES; off += NT * PART) {
            size_t len = TBYTES - off < PART ? (size_t)(TBYTES - off) : PART;
            for (size_t k = 0; k < len; k++)
                buf[k] = (unsigned char)((off + k) * 13 + (uint64_t)t);
            if (lora_stw_write(j->w, name, off, buf, len, &e) != LORA_OK)
                j->rc = 1;
        }
    }
    return NULL;
}

START_TEST(test_parallel_and_copy)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "par.safetensors"), *p2 = tu_path(d, "copy.safetensors");
    lora_stw *w;
    lora_error e;
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    uint64_t sh[1] = {TBYTES / 2};
    for (int t = 0; t < TN; t++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", t);
        ck_assert_int_eq(lora_stw_declare(w, name, LORA_DT_BF16, 1, sh, &e), LORA_OK);
    }
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    pthread_t th[NT];
    struct job jobs[NT];
    for (int i = 0; i < NT; i++) {
        jobs[i] = (struct job){w, i, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, writer_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(jobs[i].rc, 0);
    }
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
    lora_st *st;
    ck_assert_int_eq(lora_st_open(p, &st, &e), LORA_OK);
    for (int t = 0; t < TN; t++) {
        const lora_tensor *x = lora_st_tensor(st, (size_t)t);
        const unsigned char *b = x->data;
        for (uint64_t k = 0; k < TBYTES; k++)
            ck_assert_uint_eq(b[k], (unsigned char)(k * 13 + (uint64_t)t));
    }
    /* copy every tensor into a new file under other names */
    ck_assert_int_eq(lora_stw_new(p2, &w, &e), LORA_OK);
    for (int t = 0; t < TN; t++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", t);
        ck_assert_int_eq(lora_stw_declare(w, name, LORA_DT_BF16, 1, sh, &e), LORA_OK);
    }
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    for (int t = 0; t < TN; t++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", t);
        const lora_tensor *x = lora_st_tensor(st, (size_t)t);
        ck_assert_int_eq(lora_stw_copy(w, name, lora_st_fd(st), x->offset, &e), LORA_OK);
    }
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
    lora_st *st2;
    ck_assert_int_eq(lora_st_open(p2, &st2, &e), LORA_OK);
    for (int t = 0; t < TN; t++)
        ck_assert(memcmp(lora_st_tensor(st, (size_t)t)->data, lora_st_tensor(st2, (size_t)t)->data,
                         TBYTES) == 0);
    /* a copy from past the end of the source fails */
    ck_assert_int_eq(lora_stw_new(p2, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "c", LORA_DT_BF16, 1, sh, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_copy(w, "c", lora_st_fd(st), lora_st_size(st) - 10, &e),
                     LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "ends early"));
    /* a descriptor copy_file_range refuses: the fallback reports the error */
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    ck_assert_int_ne(lora_stw_copy(w, "c", fds[0] + 1000, 0, &e), LORA_OK);
    close(fds[0]);
    close(fds[1]);
    lora_stw_abort(w);
    lora_st_close(st);
    lora_st_close(st2);
    free(p);
    free(p2);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* Direct writes (direct_io.c): what they write equals what the cache
 * path writes, whether the data starts page-aligned (lora_stw_set_align)
 * or not, for tensors whose sizes are not multiples of 512, written in
 * parts of assorted lengths from two threads, from lent buffers and
 * from the caller's own; LORA_NO_DIRECT turns them off. */
enum { DW_BIG = 9u << 20, DW_ODD = 3003, DW_MID = 175001 };
static const uint64_t dw_parts[] = {506368, 524288, 300001, 4096, 65536, 1048576, 77};

static unsigned char dw_byte(int t, uint64_t k)
{
    return (unsigned char)((k * 31 + (uint64_t)t * 7) ^ (k >> 9));
}

struct dw_job {
    lora_stw *w;
    int id, lend, rc, lent;
};

static void *dw_thread(void *arg)
{
    struct dw_job *j = arg;
    static const char *names[] = {"big", "odd", "mid"};
    const uint64_t size[] = {2ull * DW_BIG, 2ull * DW_ODD, 4ull * DW_MID};
    unsigned char *own = malloc(1 << 20);
    lora_error e;
    size_t np = 0;
    if (!own) {
        j->rc = 1;
        return NULL;
    }
    for (int t = 0; t < 3; t++)
        for (uint64_t off = 0; off < size[t]; np++) {
            uint64_t n = dw_parts[np % (sizeof dw_parts / sizeof *dw_parts)];
            if (n > size[t] - off)
                n = size[t] - off;
            if ((int)(np % 2) == j->id) {
                unsigned char *b = j->lend ? lora_stw_lend(j->w, (size_t)n) : NULL;
                j->lent += b != NULL;
                if (!b)
                    b = own;
                for (uint64_t k = 0; k < n; k++)
                    b[k] = dw_byte(t, off + k);
                if (lora_stw_write(j->w, names[t], off, b, (size_t)n, &e) != LORA_OK)
                    j->rc = 1;
            }
            off += n;
        }
    free(own);
    return NULL;
}

/* PATH written with the parts above; *LENT counts lent buffers. */
static void dw_write(const char *path, uint32_t align, int lend, int *lent)
{
    lora_stw *w;
    lora_error e;
    uint64_t big[2] = {DW_BIG / 1024, 1024}, odd[2] = {3, 1001}, mid[1] = {DW_MID};
    ck_assert_int_eq(lora_stw_new(path, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_set_metadata(w, "pad", "an odd length.", &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "big", LORA_DT_BF16, 2, big, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "odd", LORA_DT_BF16, 2, odd, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "mid", LORA_DT_F32, 1, mid, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_set_align(w, align, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    pthread_t th[2];
    struct dw_job jobs[2];
    for (int i = 0; i < 2; i++) {
        jobs[i] = (struct dw_job){w, i, lend, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, dw_thread, &jobs[i]), 0);
    }
    *lent = 0;
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(jobs[i].rc, 0);
        *lent += jobs[i].lent;
    }
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
}

START_TEST(test_direct_writes)
{
    uint32_t align = _i ? 4096 : 0;
    char *d = tu_tmpdir();
    char *pd = tu_path(d, "direct.safetensors"), *pc = tu_path(d, "cached.safetensors");
    char *pl = tu_path(d, "copied.safetensors");
    int lent_d, lent_c, lent_l;
    unsetenv("LORA_NO_DIRECT");
    dw_write(pd, align, 1, &lent_d);
    dw_write(pl, align, 0, &lent_l);
    setenv("LORA_NO_DIRECT", "1", 1);
    dw_write(pc, align, 1, &lent_c);
    unsetenv("LORA_NO_DIRECT");
    ck_assert_int_eq(lent_c, 0); /* the switch: no direct writes at all */
    ck_assert_int_eq(lent_l, 0);
    if (!lent_d)
        fprintf(stderr, "note: %s refuses direct writes: only the cache path was tested\n", d);
    size_t ld, lc, ll;
    char *bd = tu_read(pd, &ld), *bc = tu_read(pc, &lc), *bl = tu_read(pl, &ll);
    ck_assert_uint_eq(ld, lc);
    ck_assert_uint_eq(ll, lc);
    ck_assert(memcmp(bd, bc, lc) == 0);
    ck_assert(memcmp(bl, bc, lc) == 0);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)(unsigned char)bd[i] << (8 * i);
    ck_assert_int_eq((8 + n) % 4096 == 0, align == 4096);
    lora_st *st;
    lora_error e;
    ck_assert_int_eq(lora_st_open(pd, &st, &e), LORA_OK);
    static const char *names[] = {"big", "odd", "mid"};
    for (int t = 0; t < 3; t++) {
        const lora_tensor *x = lora_st_find(st, names[t]);
        ck_assert_ptr_nonnull(x);
        const unsigned char *b = x->data;
        for (uint64_t k = 0; k < x->nbytes; k++)
            if (b[k] != dw_byte(t, k))
                ck_abort_msg("%s byte %llu", names[t], (unsigned long long)k);
    }
    lora_st_close(st);
    free(bd);
    free(bc);
    free(bl);
    free(pd);
    free(pc);
    free(pl);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* A lent buffer comes back when its write is refused; a direct write
 * that fails (past RLIMIT_FSIZE: EFBIG) fails the commit, which leaves
 * nothing behind. */
START_TEST(test_direct_failures)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "fail.safetensors");
    lora_stw *w;
    lora_error e;
    uint64_t big[1] = {DW_BIG};
    unsetenv("LORA_NO_DIRECT");
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_declare(w, "big", LORA_DT_BF16, 1, big, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_set_align(w, 4096, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    void *b = lora_stw_lend(w, 1 << 19);
    if (!b) {
        fprintf(stderr, "note: %s refuses direct writes: failures not tested\n", d);
        lora_stw_abort(w);
    } else {
        lora_stw_unlend(w, b);
        for (int i = 0; i < 40; i++) { /* more than the writer has buffers */
            b = lora_stw_lend(w, 1 << 19);
            ck_assert_ptr_nonnull(b);
            ck_assert_int_eq(lora_stw_write(w, "nope", 0, b, 1 << 19, &e), LORA_EUSAGE);
            b = lora_stw_lend(w, 1 << 19);
            ck_assert_ptr_nonnull(b);
            ck_assert_int_eq(lora_stw_write(w, "big", 2ull * DW_BIG, b, 1 << 19, &e),
                             LORA_EUSAGE);
        }
        ck_assert_ptr_null(lora_stw_lend(w, (2 << 20) + 1)); /* longer than a buffer */
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl;
        ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &rl), 0);
        struct rlimit small = {1 << 20, rl.rlim_max};
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
        int failed = 0;
        for (uint64_t off = 4 << 20; off < (8 << 20) && !failed; off += 1 << 19) {
            b = lora_stw_lend(w, 1 << 19);
            if (!b) /* none lent once a direct write has failed */
                break;
            memset(b, 1, 1 << 19);
            failed = lora_stw_write(w, "big", off, b, 1 << 19, &e) != LORA_OK;
        }
        ck_assert_int_eq(lora_stw_commit(w, &e), LORA_EIO);
        ck_assert_ptr_nonnull(strstr(e.msg, "write"));
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    }
    ck_assert_int_eq(dir_entries(d), 0);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("reader");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_hostile, 0, (int)(sizeof hostile / sizeof *hostile));
    tcase_add_test(tc, test_short_files);
    tcase_add_test(tc, test_valid_corners);
    suite_add_tcase(s, tc);
    TCase *tw = tcase_create("writer");
    tcase_set_timeout(tw, 60);
    tcase_add_test(tw, test_round_trip);
    tcase_add_test(tw, test_exact_bytes);
    tcase_add_test(tw, test_writer_failures);
    tcase_add_test(tw, test_parallel_and_copy);
    tcase_add_test(tw, test_kept_layout);
    tcase_add_loop_test(tw, test_direct_writes, 0, 2);
    tcase_add_test(tw, test_direct_failures);
    suite_add_tcase(s, tw);
    return tu_run(s, 0);
}

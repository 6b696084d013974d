/*
 * gguf.c - the GGUF file (llama.cpp / ggml, formats.md §5): a validating
 * reader over a read-only mapping, or over bytes already in memory.
 *
 * Every number the file gives is checked against what is left of the
 * file before it is used: counts bound what is allocated (each key,
 * tensor or array element takes at least a known number of bytes, so a
 * count larger than the rest of the file could hold is refused before
 * any allocation), string and array lengths are checked before they
 * are stepped over, and tensor offsets and sizes (ggml's block sizes,
 * in checked arithmetic) must fall inside the data section, aligned
 * and without overlapping.  Big-endian files, GGUF v1, unknown value
 * or ggml types and nested arrays are refused with a message that says
 * which.  Values are not copied: numbers and string arrays are read in
 * place; keys, tensor names and string values are copied once so that
 * they are NUL-terminated.
 */
#include "gguf_int.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ggml types: (block size, bytes per block), from gguf-py's
 * GGML_QUANT_SIZES; 0 for numbers ggml never defined or removed. */
static const struct {
    const char *name;
    uint32_t blck, size;
} ggml_types[] = {
    [0] = {"F32", 1, 4},        [1] = {"F16", 1, 2},        [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},     [6] = {"Q5_0", 32, 22},     [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},     [9] = {"Q8_1", 32, 40},     [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110},  [12] = {"Q4_K", 256, 144},  [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},  [15] = {"Q8_K", 256, 292},  [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74}, [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},  [21] = {"IQ3_S", 256, 110}, [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},       [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},       [27] = {"I64", 1, 8},       [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56},  [30] = {"BF16", 1, 2},      [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},  [39] = {"MXFP4", 32, 17},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

static const char *const value_types[] = {"u8",  "i8",     "u16",   "i16", "u32",
                                          "i32", "f32",    "bool",  "string",
                                          "array", "u64",  "i64",   "f64"};
static const unsigned value_size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *lora_ggml_type_name(uint32_t type)
{
    return type < N_GGML_TYPES ? ggml_types[type].name : NULL;
}

const char *lora_gguf_type_name(int type)
{
    return type >= 0 && type <= LORA_GGUF_F64 ? value_types[type] : NULL;
}

int lora_ggml_nbytes(uint32_t type, int ndim, const uint64_t *ne, uint64_t *nbytes)
{
    if (type >= N_GGML_TYPES || ggml_types[type].blck == 0)
        return -1;
    uint64_t blck = ggml_types[type].blck, n = 1;
    if (ndim > 0 && ne[0] % blck != 0)
        return -2;
    for (int i = 0; i < ndim; i++)
        if (!lora_mul_ok(n, ne[i], &n))
            return -3;
    if (!lora_mul_ok(n / blck, ggml_types[type].size, nbytes))
        return -3;
    return 0;
}

int lora_gguf_magic(const void *buf, size_t len)
{
    return len >= 4 && memcmp(buf, "GGUF", 4) == 0;
}

int lora_gguf_is_file(const char *path)
{
    unsigned char m[4];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return 0;
    struct stat sb;
    ssize_t n = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) ? read(fd, m, 4) : 0;
    close(fd);
    return n == 4 && lora_gguf_magic(m, 4);
}

struct lora_gguf {
    char *name;
    const unsigned char *buf;
    uint64_t len;
    void *map;
    int fd;
    uint32_t version;
    uint64_t alignment, data_off;
    size_t nkv;
    lora_gguf_kv *kv;
    uint64_t **stroff;          /* per kv: offsets of a string array's elements */
    const lora_gguf_kv **kv_by_name;
    size_t nt;
    lora_gguf_tensor *t;
    const lora_gguf_tensor **t_by_name;
};

/* Reading cursor: every read checks what is left first. */
typedef struct cur {
    const lora_gguf *g;
    uint64_t pos;
    lora_error *err;
} cur;

static void defang(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
}

static int bad(cur *c, const char *fmt, ...) LORA_PRINTF(2, 3);
static int bad(cur *c, const char *fmt, ...)
{
    char msg[LORA_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lora_seterr(c->err, LORA_EINPUT, "%s: not a valid GGUF file: %s", c->g->name, msg);
    if (c->err)
        defang(c->err->msg);
    return LORA_EINPUT;
}

static uint64_t left(const cur *c)
{
    return c->g->len - c->pos;
}

static int need(cur *c, uint64_t n, const char *what)
{
    if (n > left(c))
        return bad(c, "truncated at byte %llu: %s needs %llu bytes, %llu left",
                   (unsigned long long)c->pos, what, (unsigned long long)n,
                   (unsigned long long)left(c));
    return LORA_OK;
}

static uint64_t le(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int rd(cur *c, unsigned n, uint64_t *v, const char *what)
{
    int rc = need(c, n, what);
    if (rc)
        return rc;
    *v = le(c->g->buf + c->pos, n);
    c->pos += n;
    return LORA_OK;
}

/* A gguf_string: u64 length, bytes.  *off receives where the bytes are. */
static int rd_str(cur *c, uint64_t max, uint64_t *off, uint64_t *len, const char *what)
{
    int rc = rd(c, 8, len, what);
    if (rc)
        return rc;
    if (*len > max)
        return bad(c, "%s: length %llu exceeds the limit of %llu bytes", what,
                   (unsigned long long)*len, (unsigned long long)max);
    if ((rc = need(c, *len, what)))
        return rc;
    *off = c->pos;
    c->pos += *len;
    return LORA_OK;
}

/* A NUL-terminated copy of a name (key or tensor), refusing NUL bytes inside. */
static int copy_name(cur *c, uint64_t off, uint64_t len, const char *what, char **out)
{
    if (memchr(c->g->buf + off, 0, (size_t)len))
        return bad(c, "%s at byte %llu holds a NUL byte", what, (unsigned long long)off);
    char *s = malloc((size_t)len + 1);
    if (!s)
        return lora_oom(c->err);
    memcpy(s, c->g->buf + off, (size_t)len);
    s[len] = '\0';
    *out = s;
    return LORA_OK;
}

static int read_value(cur *c, lora_gguf_kv *kv, uint64_t **stroff)
{
    lora_gguf *g = (lora_gguf *)c->g;
    uint64_t v;
    int rc;
    if (kv->type < 0 || kv->type > LORA_GGUF_F64)
        return bad(c, "key \"%s\": unknown value type %d", kv->key, kv->type);
    kv->arr_type = -1;
    kv->n = 1;
    kv->raw_off = c->pos;
    if (kv->type == LORA_GGUF_STRING) {
        uint64_t off, len;
        if ((rc = rd_str(c, LORA_GGUF_MAX_STRING, &off, &len, kv->key)))
            return rc;
        char *s = malloc((size_t)len + 1);
        if (!s)
            return lora_oom(c->err);
        memcpy(s, g->buf + off, (size_t)len);
        s[len] = '\0';
        kv->str = s;
        kv->len = len;
    } else if (kv->type == LORA_GGUF_ARRAY) {
        if ((rc = rd(c, 4, &v, "array type")))
            return rc;
        if (v > LORA_GGUF_F64)
            return bad(c, "key \"%s\": array of unknown value type %llu", kv->key,
                       (unsigned long long)v);
        if (v == LORA_GGUF_ARRAY)
            return bad(c, "key \"%s\": arrays of arrays are not supported", kv->key);
        kv->arr_type = (int)v;
        if ((rc = rd(c, 8, &kv->n, "array length")))
            return rc;
        if (v == LORA_GGUF_STRING) {
            /* each element takes at least its 8-byte length */
            if (kv->n > left(c) / 8)
                return bad(c, "key \"%s\": %llu strings cannot fit in the %llu bytes left",
                           kv->key, (unsigned long long)kv->n, (unsigned long long)left(c));
            uint64_t *offs = malloc((kv->n ? kv->n : 1) * sizeof *offs);
            if (!offs)
                return lora_oom(c->err);
            *stroff = offs;
            for (uint64_t i = 0; i < kv->n; i++) {
                uint64_t off, len;
                offs[i] = c->pos;
                if ((rc = rd_str(c, LORA_GGUF_MAX_STRING, &off, &len, kv->key)))
                    return rc;
            }
        } else {
            uint64_t bytes;
            if (!lora_mul_ok(kv->n, value_size[v], &bytes) || bytes > left(c))
                return bad(c, "key \"%s\": array of %llu %s values runs past the end of the file",
                           kv->key, (unsigned long long)kv->n, value_types[v]);
            kv->data = g->buf + c->pos;
            c->pos += bytes;
        }
    } else {
        if ((rc = need(c, value_size[kv->type], kv->key)))
            return rc;
        kv->data = g->buf + c->pos;
        c->pos += value_size[kv->type];
    }
    kv->raw_len = c->pos - kv->raw_off;
    return LORA_OK;
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp((*(const lora_gguf_kv *const *)a)->key, (*(const lora_gguf_kv *const *)b)->key);
}

static int cmp_tname(const void *a, const void *b)
{
    return strcmp((*(const lora_gguf_tensor *const *)a)->name,
                  (*(const lora_gguf_tensor *const *)b)->name);
}

static int cmp_toff(const void *a, const void *b)
{
    const lora_gguf_tensor *x = *(const lora_gguf_tensor *const *)a,
                           *y = *(const lora_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int read_header(cur *c, uint64_t *n_tensors, uint64_t *n_kv)
{
    lora_gguf *g = (lora_gguf *)c->g;
    uint64_t v;
    int rc;
    if (g->len < 4 || !lora_gguf_magic(g->buf, (size_t)g->len))
        return bad(c, "no GGUF magic");
    c->pos = 4;
    if ((rc = rd(c, 4, &v, "version")))
        return rc;
    uint32_t swapped = __builtin_bswap32((uint32_t)v);
    if (v > 3 && swapped >= 1 && swapped <= 3)
        return bad(c, "version %u in big-endian byte order: big-endian GGUF files are not "
                      "supported", swapped);
    if (v == 1)
        return bad(c, "GGUF version 1 is not supported (only versions 2 and 3)");
    if (v != 2 && v != 3)
        return bad(c, "unknown GGUF version %llu", (unsigned long long)v);
    g->version = (uint32_t)v;
    if ((rc = rd(c, 8, n_tensors, "tensor count")) || (rc = rd(c, 8, n_kv, "key count")))
        return rc;
    /* a key takes >= 13 bytes (8 length, 1 name byte, 4 type), a tensor >= 29 */
    if (*n_kv > left(c) / 13)
        return bad(c, "%llu keys cannot fit in the %llu bytes left", (unsigned long long)*n_kv,
                   (unsigned long long)left(c));
    if (*n_tensors > left(c) / 29)
        return bad(c, "%llu tensors cannot fit in the %llu bytes left",
                   (unsigned long long)*n_tensors, (unsigned long long)left(c));
    return LORA_OK;
}

static int read_kvs(cur *c, uint64_t n_kv)
{
    lora_gguf *g = (lora_gguf *)c->g;
    int rc;
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->stroff = calloc(n_kv ? n_kv : 1, sizeof *g->stroff);
    g->kv_by_name = malloc((n_kv ? n_kv : 1) * sizeof *g->kv_by_name);
    if (!g->kv || !g->stroff || !g->kv_by_name)
        return lora_oom(c->err);
    for (uint64_t i = 0; i < n_kv; i++) {
        lora_gguf_kv *kv = &g->kv[i];
        uint64_t off, len, type;
        if ((rc = rd_str(c, 65535, &off, &len, "key")))
            return rc;
        if (len == 0)
            return bad(c, "key %llu is empty", (unsigned long long)i);
        if ((rc = copy_name(c, off, len, "key", (char **)&kv->key)))
            return rc;
        g->nkv = i + 1;
        if ((rc = rd(c, 4, &type, kv->key)))
            return rc;
        kv->type = type > 1000 ? 1000 : (int)type;
        if ((rc = read_value(c, kv, &g->stroff[i])))
            return rc;
        g->kv_by_name[i] = kv;
    }
    qsort(g->kv_by_name, g->nkv, sizeof *g->kv_by_name, cmp_kv);
    for (size_t i = 1; i < g->nkv; i++)
        if (strcmp(g->kv_by_name[i - 1]->key, g->kv_by_name[i]->key) == 0)
            return bad(c, "duplicate key \"%s\"", g->kv_by_name[i]->key);
    const lora_gguf_kv *al = lora_gguf_find_kv(g, "general.alignment");
    g->alignment = LORA_GGUF_DEFAULT_ALIGNMENT;
    if (al) {
        if (al->type != LORA_GGUF_U32)
            return bad(c, "general.alignment is of type %s, not u32", value_types[al->type]);
        uint64_t a = le(al->data, 4);
        if (a == 0 || (a & (a - 1)) != 0)
            return bad(c, "general.alignment %llu is not a power of two", (unsigned long long)a);
        g->alignment = a;
    }
    return LORA_OK;
}

static int read_tensor_info(cur *c, lora_gguf_tensor *t)
{
    uint64_t off, len, v;
    int rc;
    if ((rc = rd_str(c, LORA_GGUF_MAX_NAME, &off, &len, "tensor name")))
        return rc;
    if (len == 0)
        return bad(c, "empty tensor name at byte %llu", (unsigned long long)off);
    if ((rc = copy_name(c, off, len, "tensor name", (char **)&t->name)))
        return rc;
    if ((rc = rd(c, 4, &v, t->name)))
        return rc;
    if (v > LORA_GGUF_MAX_DIMS)
        return bad(c, "tensor \"%s\": %llu dimensions (at most %d)", t->name,
                   (unsigned long long)v, LORA_GGUF_MAX_DIMS);
    t->ndim = (int)v;
    for (int d = 0; d < t->ndim; d++) {
        if ((rc = rd(c, 8, &t->ne[d], t->name)))
            return rc;
        if (t->ne[d] > (uint64_t)INT64_MAX)
            return bad(c, "tensor \"%s\": dimension %d is negative", t->name, d);
    }
    if ((rc = rd(c, 4, &v, t->name)))
        return rc;
    t->type = (uint32_t)v;
    if (v >= N_GGML_TYPES || ggml_types[v].blck == 0)
        return bad(c, "tensor \"%s\": unknown ggml type %llu", t->name, (unsigned long long)v);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++)
        if (!lora_mul_ok(t->numel, t->ne[d], &t->numel) || t->numel > (uint64_t)INT64_MAX)
            return bad(c, "tensor \"%s\": element count overflows", t->name);
    int e = lora_ggml_nbytes(t->type, t->ndim, t->ne, &t->nbytes);
    if (e == -2)
        return bad(c, "tensor \"%s\": innermost dimension %llu is not a multiple of %s's block "
                      "of %u", t->name, (unsigned long long)t->ne[0], ggml_types[v].name,
                   ggml_types[v].blck);
    if (e)
        return bad(c, "tensor \"%s\": size overflows", t->name);
    if ((rc = rd(c, 8, &t->offset, t->name)))
        return rc;
    t->dtype = t->type == LORA_GGML_F32    ? LORA_DT_F32
               : t->type == LORA_GGML_F16  ? LORA_DT_F16
               : t->type == LORA_GGML_BF16 ? LORA_DT_BF16
                                           : LORA_DT_INVALID;
    return LORA_OK;
}

/* Offsets: aligned, inside the file, no overlaps, unique names. */
static int check_tensors(cur *c)
{
    lora_gguf *g = (lora_gguf *)c->g;
    uint64_t data = c->pos;
    if (data % g->alignment)
        data += g->alignment - data % g->alignment;
    if (g->nt && data > g->len)
        return bad(c, "the data section would start at byte %llu, past the end (%llu bytes)",
                   (unsigned long long)data, (unsigned long long)g->len);
    g->data_off = data;
    const lora_gguf_tensor **byoff = malloc((g->nt ? g->nt : 1) * sizeof *byoff);
    if (!byoff)
        return lora_oom(c->err);
    int rc = LORA_OK;
    for (size_t i = 0; i < g->nt; i++) {
        lora_gguf_tensor *t = &g->t[i];
        uint64_t end;
        if (t->offset % g->alignment)
            rc = bad(c, "tensor \"%s\": offset %llu is not a multiple of the alignment %llu",
                     t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
        else if (!lora_add_ok(t->offset, t->nbytes, &end) || end > g->len - data)
            rc = bad(c, "tensor \"%s\": %llu bytes at data offset %llu run past the end of the "
                        "file (%llu bytes of data)", t->name, (unsigned long long)t->nbytes,
                     (unsigned long long)t->offset, (unsigned long long)(g->len - data));
        if (rc)
            break;
        byoff[i] = t;
        g->t_by_name[i] = t;
    }
    if (!rc) {
        qsort(byoff, g->nt, sizeof *byoff, cmp_toff);
        for (size_t i = 1; i < g->nt && !rc; i++)
            if (byoff[i - 1]->offset + byoff[i - 1]->nbytes > byoff[i]->offset)
                rc = bad(c, "tensors \"%s\" and \"%s\" overlap", byoff[i - 1]->name,
                         byoff[i]->name);
        qsort(g->t_by_name, g->nt, sizeof *g->t_by_name, cmp_tname);
        for (size_t i = 1; i < g->nt && !rc; i++)
            if (strcmp(g->t_by_name[i - 1]->name, g->t_by_name[i]->name) == 0)
                rc = bad(c, "duplicate tensor name \"%s\"", g->t_by_name[i]->name);
    }
    free(byoff);
    if (rc)
        return rc;
    for (size_t i = 0; i < g->nt; i++) {
        g->t[i].offset += data;
        g->t[i].data = g->buf + g->t[i].offset;
    }
    return LORA_OK;
}

static int parse(lora_gguf *g, lora_error *err)
{
    cur c = {g, 0, err};
    uint64_t n_tensors = 0, n_kv = 0;
    int rc = read_header(&c, &n_tensors, &n_kv);
    if (rc || (rc = read_kvs(&c, n_kv)))
        return rc;
    /* recheck against what is left after the keys */
    if (n_tensors > left(&c) / 29)
        return bad(&c, "%llu tensors cannot fit in the %llu bytes left",
                   (unsigned long long)n_tensors, (unsigned long long)left(&c));
    g->t = calloc(n_tensors ? n_tensors : 1, sizeof *g->t);
    g->t_by_name = malloc((n_tensors ? n_tensors : 1) * sizeof *g->t_by_name);
    if (!g->t || !g->t_by_name)
        return lora_oom(err);
    for (uint64_t i = 0; i < n_tensors; i++) {
        g->nt = i + 1;
        if ((rc = read_tensor_info(&c, &g->t[i])))
            return rc;
    }
    return check_tensors(&c);
}

void lora_gguf_close(lora_gguf *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->nkv; i++) {
        free((char *)g->kv[i].key);
        free((char *)g->kv[i].str);
        free(g->stroff[i]);
    }
    for (size_t i = 0; i < g->nt; i++)
        free((char *)g->t[i].name);
    free(g->kv);
    free(g->stroff);
    free(g->kv_by_name);
    free(g->t);
    free(g->t_by_name);
    if (g->map)
        munmap(g->map, (size_t)g->len);
    if (g->fd >= 0)
        close(g->fd);
    free(g->name);
    free(g);
}

static lora_gguf *gguf_new(const char *name, lora_error *err)
{
    lora_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->name = strdup(name ? name : "(memory)"))) {
        free(g);
        lora_oom(err);
        return NULL;
    }
    g->fd = -1;
    return g;
}

int lora_gguf_open_memory(const void *buf, size_t len, const char *name, lora_gguf **out,
                          lora_error *err)
{
    *out = NULL;
    lora_gguf *g = gguf_new(name, err);
    if (!g)
        return LORA_EIO;
    static const unsigned char none[1];
    g->buf = buf ? buf : none;
    g->len = len;
    int rc = parse(g, err);
    if (rc) {
        lora_gguf_close(g);
        return rc;
    }
    *out = g;
    return LORA_OK;
}

int lora_gguf_open(const char *path, lora_gguf **out, lora_error *err)
{
    *out = NULL;
    lora_gguf *g = gguf_new(path, err);
    if (!g)
        return LORA_EIO;
    int rc;
    struct stat sb;
    g->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (g->fd < 0) {
        int e = errno;
        rc = lora_seterr_path(err, e, LORA_PATH_EACCES_INPUT, path);
        goto fail;
    }
    if (fstat(g->fd, &sb) != 0) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s", path);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: not a regular file", path);
        goto fail;
    }
    g->len = (uint64_t)sb.st_size;
    if (g->len > SIZE_MAX) {
        rc = lora_seterr(err, LORA_EIO, "%s: too large to map", path);
        goto fail;
    }
    if (g->len > 0) {
        void *m = mmap(NULL, (size_t)g->len, PROT_READ, MAP_PRIVATE, g->fd, 0);
        if (m == MAP_FAILED) {
            rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: mmap", path);
            goto fail;
        }
        g->map = m;
        g->buf = m;
    } else {
        static const unsigned char none[1];
        g->buf = none;
    }
    if ((rc = parse(g, err)))
        goto fail;
    *out = g;
    return LORA_OK;
fail:
    lora_gguf_close(g);
    return rc;
}

const char *lora_gguf_path(const lora_gguf *g) { return g->name; }
uint32_t lora_gguf_version(const lora_gguf *g) { return g->version; }
uint64_t lora_gguf_size(const lora_gguf *g) { return g->len; }
uint64_t lora_gguf_alignment(const lora_gguf *g) { return g->alignment; }
uint64_t lora_gguf_data_offset(const lora_gguf *g) { return g->data_off; }
size_t lora_gguf_kv_count(const lora_gguf *g) { return g->nkv; }
size_t lora_gguf_tensor_count(const lora_gguf *g) { return g->nt; }

const lora_gguf_kv *lora_gguf_kv_at(const lora_gguf *g, size_t i)
{
    return i < g->nkv ? &g->kv[i] : NULL;
}

const lora_gguf_tensor *lora_gguf_tensor_at(const lora_gguf *g, size_t i)
{
    return i < g->nt ? &g->t[i] : NULL;
}

const lora_gguf_kv *lora_gguf_find_kv(const lora_gguf *g, const char *key)
{
    size_t lo = 0, hi = g->nkv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->kv_by_name[mid]->key, key);
        if (c == 0)
            return g->kv_by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const lora_gguf_tensor *lora_gguf_find_tensor(const lora_gguf *g, const char *name)
{
    size_t lo = 0, hi = g->nt;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->t_by_name[mid]->name, name);
        if (c == 0)
            return g->t_by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int lora_gguf_kv_arr_str(const lora_gguf *g, const lora_gguf_kv *kv, uint64_t i, const char **s,
                         uint64_t *len)
{
    size_t k = (size_t)(kv - g->kv);
    if (k >= g->nkv || kv->type != LORA_GGUF_ARRAY || kv->arr_type != LORA_GGUF_STRING ||
        i >= kv->n)
        return -1;
    uint64_t off = g->stroff[k][i];
    *len = le(g->buf + off, 8);
    *s = (const char *)g->buf + off + 8;
    return 0;
}

const char *lora_gguf_get_str(const lora_gguf *g, const char *key)
{
    const lora_gguf_kv *kv = lora_gguf_find_kv(g, key);
    return kv && kv->type == LORA_GGUF_STRING ? kv->str : NULL;
}

int lora_gguf_get_num(const lora_gguf *g, const char *key, double *out)
{
    const lora_gguf_kv *kv = lora_gguf_find_kv(g, key);
    if (!kv || kv->type == LORA_GGUF_STRING || kv->type == LORA_GGUF_ARRAY)
        return -1;
    const unsigned char *p = kv->data;
    uint64_t u = le(p, value_size[kv->type]);
    switch (kv->type) {
    case LORA_GGUF_U8: case LORA_GGUF_U16: case LORA_GGUF_U32: case LORA_GGUF_U64:
    case LORA_GGUF_BOOL:
        *out = (double)u;
        break;
    case LORA_GGUF_I8: *out = (int8_t)u; break;
    case LORA_GGUF_I16: *out = (int16_t)u; break;
    case LORA_GGUF_I32: *out = (int32_t)u; break;
    case LORA_GGUF_I64: *out = (double)(int64_t)u; break;
    case LORA_GGUF_F32: {
        uint32_t b = (uint32_t)u;
        float f;
        memcpy(&f, &b, 4);
        *out = f;
        break;
    }
    default: {
        double d;
        memcpy(&d, &u, 8);
        *out = d;
    }
    }
    return 0;
}

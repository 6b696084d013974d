/*
 * gguf_write.c - the GGUF writer: a GGUF v3 file built as a temporary
 * beside its destination and renamed onto it only when every tensor
 * was written in full (lora_tmpfile_beside / lora_commit_tmpfile, as
 * every writer here), so a failure never leaves a partial file under
 * the real name.
 *
 * Layout is what ggml's own writer produces: header, key/values in the
 * order given, tensor infos in declaration order, zero padding to the
 * alignment, then each tensor's bytes at an aligned offset followed by
 * zero padding to the alignment (also after the last one).
 */
#include "gguf_int.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

typedef struct ggw_kv {
    char *key;
    uint32_t type;
    unsigned char *raw;       /* the value's bytes after its type */
    size_t len;
    uint64_t at;              /* after start: where raw is in the file */
} ggw_kv;

typedef struct ggw_tensor {
    char *name;
    uint32_t type;
    int ndim;
    uint64_t ne[LORA_GGUF_MAX_DIMS];
    uint64_t nbytes, offset;  /* offset: absolute, after start */
    uint64_t fixed;           /* lora_ggw_declare_at: offset in the data section, else UINT64_MAX */
    _Atomic uint64_t written; /* from any thread */
} ggw_tensor;

struct lora_ggw {
    char *path, *tmp;
    int fd;
    int started;
    uint32_t version;
    uint64_t alignment, total;
    unsigned char *head;      /* after start: the bytes before the tensor data */
    size_t head_len;
    size_t nkv, kvcap, nt, tcap;
    ggw_kv *kv;
    ggw_tensor *t;
};

static void ggw_free(lora_ggw *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->nkv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].raw);
    }
    for (size_t i = 0; i < w->nt; i++)
        free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w->head);
    if (w->fd >= 0)
        close(w->fd);
    free(w->tmp);
    free(w->path);
    free(w);
}

void lora_ggw_abort(lora_ggw *w)
{
    if (!w)
        return;
    if (w->tmp)
        lora_tmp_unlink(w->tmp);
    ggw_free(w);
}

static void put_le(unsigned char *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Take ownership of raw (freed on failure too). */
static int add_kv(lora_ggw *w, const char *key, uint32_t type, unsigned char *raw, size_t len,
                  lora_error *err)
{
    if (w->started) {
        free(raw);
        return lora_seterr(err, LORA_EUSAGE, "%s: key \"%s\" added after the header was written",
                           w->path, key);
    }
    size_t klen = strlen(key);
    if (klen == 0 || klen > 65535) {
        free(raw);
        return lora_seterr(err, LORA_EINPUT, "%s: bad key length %zu", w->path, klen);
    }
    for (size_t i = 0; i < w->nkv; i++)
        if (strcmp(w->kv[i].key, key) == 0) {
            free(raw);
            return lora_seterr(err, LORA_EINPUT, "%s: duplicate key \"%s\"", w->path, key);
        }
    if (strcmp(key, "general.alignment") == 0) {
        uint64_t a = type == LORA_GGUF_U32 && len == 4 ? (uint64_t)raw[0] | (uint64_t)raw[1] << 8 |
                                                             (uint64_t)raw[2] << 16 |
                                                             (uint64_t)raw[3] << 24
                                                       : 0;
        if (a == 0 || (a & (a - 1)) != 0) {
            free(raw);
            return lora_seterr(err, LORA_EINPUT,
                               "%s: general.alignment must be a u32 power of two", w->path);
        }
        w->alignment = a;
    }
    if (w->nkv == w->kvcap) {
        size_t cap = w->kvcap ? 2 * w->kvcap : 16;
        ggw_kv *p = realloc(w->kv, cap * sizeof *p);
        if (!p) {
            free(raw);
            return lora_oom(err);
        }
        w->kv = p;
        w->kvcap = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(raw);
        return lora_oom(err);
    }
    w->kv[w->nkv++] = (ggw_kv){k, type, raw, len, 0};
    return LORA_OK;
}

int lora_ggw_kv_str(lora_ggw *w, const char *key, const char *value, lora_error *err)
{
    size_t n = strlen(value);
    unsigned char *raw = malloc(8 + n);
    if (!raw)
        return lora_oom(err);
    put_le(raw, n, 8);
    memcpy(raw + 8, value, n);
    return add_kv(w, key, LORA_GGUF_STRING, raw, 8 + n, err);
}

static const unsigned num_size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

int lora_ggw_kv_num(lora_ggw *w, const char *key, int type, int arr, uint64_t n,
                    const void *data, lora_error *err)
{
    if (type < 0 || type > LORA_GGUF_F64 || num_size[type] == 0)
        return lora_seterr(err, LORA_EUSAGE, "key \"%s\": type %d is not a number type", key,
                           type);
    if (!arr)
        n = 1;
    uint64_t bytes;
    if (!lora_mul_ok(n, num_size[type], &bytes) || bytes > SIZE_MAX - 12)
        return lora_seterr(err, LORA_EINPUT, "key \"%s\": array too large", key);
    size_t head = arr ? 12 : 0;
    unsigned char *raw = malloc(head + (size_t)bytes + 1);
    if (!raw)
        return lora_oom(err);
    if (arr) {
        put_le(raw, (uint64_t)type, 4);
        put_le(raw + 4, n, 8);
    }
    memcpy(raw + head, data, (size_t)bytes);
    return add_kv(w, key, arr ? LORA_GGUF_ARRAY : (uint32_t)type, raw, head + (size_t)bytes, err);
}

int lora_ggw_kv_u32(lora_ggw *w, const char *key, uint32_t v, lora_error *err)
{
    unsigned char b[4];
    put_le(b, v, 4);
    return lora_ggw_kv_num(w, key, LORA_GGUF_U32, 0, 1, b, err);
}

int lora_ggw_kv_f32(lora_ggw *w, const char *key, float v, lora_error *err)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    unsigned char b[4];
    put_le(b, u, 4);
    return lora_ggw_kv_num(w, key, LORA_GGUF_F32, 0, 1, b, err);
}

int lora_ggw_kv_copy(lora_ggw *w, const lora_gguf *g, const lora_gguf_kv *kv, lora_error *err)
{
    /* rebuilt from the parsed value, which the reader checked */
    size_t len = (size_t)kv->raw_len;
    unsigned char *raw = malloc(len ? len : 1);
    if (!raw)
        return lora_oom(err);
    if (kv->type == LORA_GGUF_STRING) {
        put_le(raw, kv->len, 8);
        memcpy(raw + 8, kv->str, (size_t)kv->len);
    } else if (kv->type == LORA_GGUF_ARRAY && kv->arr_type == LORA_GGUF_STRING) {
        put_le(raw, LORA_GGUF_STRING, 4);
        put_le(raw + 4, kv->n, 8);
        size_t o = 12;
        for (uint64_t i = 0; i < kv->n; i++) {
            const char *s;
            uint64_t n;
            if (lora_gguf_kv_arr_str(g, kv, i, &s, &n) != 0 || o + 8 + n > len) {
                free(raw);
                return lora_seterr(err, LORA_EINPUT, "key \"%s\": inconsistent string array",
                                   kv->key);
            }
            put_le(raw + o, n, 8);
            memcpy(raw + o + 8, s, (size_t)n);
            o += 8 + (size_t)n;
        }
    } else if (kv->type == LORA_GGUF_ARRAY) {
        put_le(raw, (uint64_t)kv->arr_type, 4);
        put_le(raw + 4, kv->n, 8);
        memcpy(raw + 12, kv->data, len - 12);
    } else {
        memcpy(raw, kv->data, len);
    }
    return add_kv(w, kv->key, (uint32_t)kv->type, raw, len, err);
}

int lora_ggw_new(const char *path, uint32_t alignment, lora_ggw **out, lora_error *err)
{
    *out = NULL;
    if (alignment && (alignment & (alignment - 1)) != 0)
        return lora_seterr(err, LORA_EUSAGE, "%s: alignment %u is not a power of two", path,
                           alignment);
    lora_ggw *w = calloc(1, sizeof *w);
    if (!w)
        return lora_oom(err);
    w->fd = -1;
    w->version = 3;
    w->alignment = LORA_GGUF_DEFAULT_ALIGNMENT;
    if (!(w->path = strdup(path))) {
        free(w);
        return lora_oom(err);
    }
    int rc = lora_tmpfile_beside(path, 0644, &w->fd, &w->tmp, err);
    if (rc) {
        w->fd = -1;
        ggw_free(w);
        return rc;
    }
    if (alignment && alignment != LORA_GGUF_DEFAULT_ALIGNMENT &&
        (rc = lora_ggw_kv_u32(w, "general.alignment", alignment, err))) {
        lora_ggw_abort(w);
        return rc;
    }
    *out = w;
    return LORA_OK;
}

int lora_ggw_declare(lora_ggw *w, const char *name, uint32_t type, int ndim, const uint64_t *ne,
                     lora_error *err)
{
    return lora_ggw_declare_at(w, name, type, ndim, ne, UINT64_MAX, err);
}

int lora_ggw_declare_at(lora_ggw *w, const char *name, uint32_t type, int ndim,
                        const uint64_t *ne, uint64_t offset, lora_error *err)
{
    size_t n = strlen(name);
    if (w->started)
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor \"%s\" declared after start", w->path,
                           name);
    if (n == 0 || n > LORA_GGUF_MAX_NAME)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: tensor name \"%s\" is %zu bytes long (1 to %d allowed)", w->path,
                           name, n, LORA_GGUF_MAX_NAME);
    if (ndim < 1 || ndim > LORA_GGUF_MAX_DIMS)
        return lora_seterr(err, LORA_EINPUT, "%s: tensor \"%s\": %d dimensions", w->path, name,
                           ndim);
    for (size_t i = 0; i < w->nt; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return lora_seterr(err, LORA_EINPUT, "%s: duplicate tensor \"%s\"", w->path, name);
    ggw_tensor t = {0};
    t.fixed = offset;
    t.type = type;
    t.ndim = ndim;
    memcpy(t.ne, ne, (size_t)ndim * sizeof *ne);
    if (lora_ggml_nbytes(type, ndim, ne, &t.nbytes) != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: tensor \"%s\": bad type %u or shape", w->path,
                           name, type);
    if (w->nt == w->tcap) {
        size_t cap = w->tcap ? 2 * w->tcap : 16;
        ggw_tensor *p = realloc(w->t, cap * sizeof *p);
        if (!p)
            return lora_oom(err);
        w->t = p;
        w->tcap = cap;
    }
    if (!(t.name = strdup(name)))
        return lora_oom(err);
    w->t[w->nt] = t;
    atomic_init(&w->t[w->nt].written, 0);
    w->nt++;
    return LORA_OK;
}

/* lora_pwrite_all with this writer's error: a write of 0 bytes (a full
 * device that does not say so) is EIO rather than a loop forever. */
static int pwrite_all(lora_ggw *w, const void *buf, size_t len, uint64_t off, lora_error *err)
{
    if (lora_pwrite_all(w->fd, buf, len, off) != 0)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s: write", w->path);
    return LORA_OK;
}

static uint64_t pad_to(uint64_t x, uint64_t a)
{
    return x % a ? x + (a - x % a) : x;
}

int lora_ggw_start(lora_ggw *w, lora_error *err)
{
    if (w->started)
        return LORA_OK;
    uint64_t size = 24;
    for (size_t i = 0; i < w->nkv; i++)
        size += 8 + strlen(w->kv[i].key) + 4 + w->kv[i].len;
    for (size_t i = 0; i < w->nt; i++)
        size += 8 + strlen(w->t[i].name) + 4 + 8 * (uint64_t)w->t[i].ndim + 4 + 8;
    uint64_t data = pad_to(size, w->alignment);
    if (data > SIZE_MAX)
        return lora_seterr(err, LORA_EIO, "%s: header too large", w->path);
    unsigned char *h = calloc(1, (size_t)data);
    if (!h)
        return lora_oom(err);
    unsigned char *p = h;
    memcpy(p, "GGUF", 4);
    put_le(p + 4, w->version, 4);
    put_le(p + 8, w->nt, 8);
    put_le(p + 16, w->nkv, 8);
    p += 24;
    for (size_t i = 0; i < w->nkv; i++) {
        size_t k = strlen(w->kv[i].key);
        put_le(p, k, 8);
        memcpy(p + 8, w->kv[i].key, k);
        put_le(p + 8 + k, w->kv[i].type, 4);
        memcpy(p + 12 + k, w->kv[i].raw, w->kv[i].len);
        w->kv[i].at = (uint64_t)(p + 12 + k - h);
        p += 12 + k + w->kv[i].len;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->nt; i++) {
        ggw_tensor *t = &w->t[i];
        size_t k = strlen(t->name);
        put_le(p, k, 8);
        memcpy(p + 8, t->name, k);
        p += 8 + k;
        put_le(p, (uint64_t)t->ndim, 4);
        p += 4;
        for (int d = 0; d < t->ndim; d++, p += 8)
            put_le(p, t->ne[d], 8);
        if (t->fixed != UINT64_MAX) { /* a kept layout: aligned, in order, no overlap */
            if (t->fixed % w->alignment || t->fixed < off) {
                free(h);
                return lora_seterr(err, LORA_EINPUT,
                                   "%s: tensor \"%s\": offset %llu is not aligned to %llu or "
                                   "overlaps the tensor before it", w->path, t->name,
                                   (unsigned long long)t->fixed,
                                   (unsigned long long)w->alignment);
            }
            off = t->fixed;
        }
        put_le(p, t->type, 4);
        put_le(p + 4, off, 8);
        p += 12;
        t->offset = data + off;
        off = pad_to(off + t->nbytes, w->alignment);
    }
    w->total = data + off;
    int rc = pwrite_all(w, h, (size_t)data, 0, err);
    if (rc) {
        free(h);
        return rc;
    }
    w->head = h;
    w->head_len = (size_t)data;
    w->started = 1;
    return LORA_OK;
}

int lora_ggw_write(lora_ggw *w, const char *name, uint64_t off, const void *buf, size_t len,
                   lora_error *err)
{
    if (!w->started)
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor bytes written before start", w->path);
    for (size_t i = 0; i < w->nt; i++) {
        ggw_tensor *t = &w->t[i];
        if (strcmp(t->name, name) != 0)
            continue;
        uint64_t end;
        if (!lora_add_ok(off, len, &end) || end > t->nbytes)
            return lora_seterr(err, LORA_EUSAGE, "%s: write past the end of tensor \"%s\"",
                               w->path, name);
        int rc = pwrite_all(w, buf, len, t->offset + off, err);
        if (rc == LORA_OK)
            atomic_fetch_add(&t->written, (uint64_t)len);
        return rc;
    }
    return lora_seterr(err, LORA_EUSAGE, "%s: no tensor \"%s\" was declared", w->path, name);
}

int lora_ggw_commit(lora_ggw *w, lora_error *err)
{
    static const unsigned char zeros[256];
    int rc = lora_ggw_start(w, err);
    for (size_t i = 0; !rc && i < w->nt; i++) {
        ggw_tensor *t = &w->t[i];
        if (atomic_load(&t->written) != t->nbytes) {
            rc = lora_seterr(err, LORA_EIO, "%s: tensor \"%s\": %llu of its %llu bytes were written",
                             w->path, t->name, (unsigned long long)atomic_load(&t->written),
                             (unsigned long long)t->nbytes);
            break;
        }
        uint64_t end = t->offset + t->nbytes, next = pad_to(end, w->alignment);
        while (!rc && end < next) {
            size_t n = next - end > sizeof zeros ? sizeof zeros : (size_t)(next - end);
            rc = pwrite_all(w, zeros, n, end, err);
            end += n;
        }
    }
    if (!rc && ftruncate(w->fd, (off_t)w->total) != 0)
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: truncate", w->path);
    if (rc) {
        lora_ggw_abort(w);
        return rc;
    }
    rc = lora_commit_tmpfile(w->fd, w->tmp, w->path, err);
    ggw_free(w);
    return rc;
}

/* ---- what a merge into a GGUF base needs (gguf_checkpoint.c) ---- */

void lora_ggw_set_version(lora_ggw *w, uint32_t version)
{
    w->version = version;
}

int lora_ggw_write_at(lora_ggw *w, size_t i, uint64_t off, const void *buf, size_t len,
                      lora_error *err)
{
    if (!w->started || i >= w->nt)
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor bytes written before start", w->path);
    ggw_tensor *t = &w->t[i];
    uint64_t end;
    if (!lora_add_ok(off, len, &end) || end > t->nbytes)
        return lora_seterr(err, LORA_EUSAGE, "%s: write past the end of tensor \"%s\"", w->path,
                           t->name);
    int rc = pwrite_all(w, buf, len, t->offset + off, err);
    if (rc == LORA_OK)
        atomic_fetch_add(&t->written, (uint64_t)len);
    return rc;
}

int lora_ggw_copy_at(lora_ggw *w, size_t i, int src_fd, uint64_t src_off, lora_error *err)
{
    if (!w->started || i >= w->nt)
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor bytes written before start", w->path);
    ggw_tensor *t = &w->t[i];
    int rc = lora_copy_range(src_fd, src_off, w->fd, t->offset, t->nbytes, w->path, t->name, err);
    if (rc)
        return rc;
    atomic_fetch_add(&t->written, t->nbytes);
    return LORA_OK;
}

const unsigned char *lora_ggw_header(const lora_ggw *w, size_t *len)
{
    *len = w->started ? w->head_len : 0;
    return w->started ? w->head : NULL;
}

int lora_ggw_patch_str(lora_ggw *w, const char *key, const char *value, lora_error *err)
{
    size_t vl = strlen(value);
    for (size_t i = 0; w->started && i < w->nkv; i++) {
        ggw_kv *k = &w->kv[i];
        if (strcmp(k->key, key) != 0 || k->type != LORA_GGUF_STRING || k->len != 8 + vl)
            continue;
        memcpy(w->head + k->at + 8, value, vl);
        memcpy(k->raw + 8, value, vl);
        return pwrite_all(w, value, vl, k->at + 8, err);
    }
    return lora_seterr(err, LORA_EUSAGE, "%s: no string \"%s\" of %zu bytes to patch", w->path,
                       key, vl);
}

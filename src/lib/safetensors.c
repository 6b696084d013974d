/*
 * safetensors.c - the safetensors tensor file: a validating reader over
 * a read-only mapping (or bytes already in memory), and a writer that
 * builds the file in a temporary beside its destination.
 *
 * The reader checks the whole header before any tensor byte is
 * touched, following the reference Rust reader's ten rules
 * (formats.md §1) and going further where it is lax: duplicate keys
 * (also a second __metadata__), a tensor named __metadata__, more than
 * LORA_MAX_DIMS dimensions, and a clear report of how much data a
 * truncated file lacks.  Limits are enforced before anything is
 * allocated for the header, and the JSON is parsed in place.
 *
 * The writer lays tensors out as the reference writer does (dtype in
 * descending enum order, i.e. widest element first, then name), so
 * every tensor is aligned to its element size and the same
 * declarations always give the same bytes; the compact header comes
 * first, __metadata__ first in it with sorted keys.  Or it keeps the
 * layout of another file's header (lora_stw_set_layout: a merge keeps
 * the base's key order and offsets, an unmerge writes the base's header
 * back byte for byte), and patches a metadata value of fixed length
 * after the header is written (a hash known only at the end).  Tensor
 * bytes may be written in any order, in parts, from several threads at
 * once.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct lora_st {
    char *name;                /* path, or the name given for memory */
    const unsigned char *buf;  /* whole file */
    uint64_t len;
    void *map;                 /* mapping to unmap, or NULL */
    int fd;                    /* -1 for memory */
    uint64_t hlen;             /* N */
    json_t *root;              /* owns the key strings the tensors point to */
    size_t n;
    lora_tensor *t;            /* data-offset order */
    const lora_tensor **by_name;
    size_t nmeta;
    const char **mkey, **mval;
    void *owner;               /* lora_st_view: the reader behind the view */
    void (*owner_free)(void *);
};

/* ------------------------------------------------------------------ */
/* reader                                                              */
/* ------------------------------------------------------------------ */

static int cmp_offsets(const void *a, const void *b)
{
    const lora_tensor *x = a, *y = b;
    uint64_t xb = x->offset, yb = y->offset;
    if (xb != yb)
        return xb < yb ? -1 : 1;
    if (x->nbytes != y->nbytes) /* here nbytes still holds END */
        return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name_ptr(const void *a, const void *b)
{
    const lora_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* A JSON value that must be a non-negative integer. */
static int get_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

/* Names in a hostile header may hold terminal control characters
 * (JSON escapes decode to raw bytes); they must not reach a terminal
 * through our messages, so C0 and C1 controls become '?'. */
static void defang(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
        else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            p[0] = '?', p[1] = '?';
    }
}

static int bad(lora_error *err, const char *name, const char *fmt, ...) LORA_PRINTF(3, 4);
static int bad(lora_error *err, const char *name, const char *fmt, ...)
{
    char msg[LORA_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lora_seterr(err, LORA_EINPUT, "%s: not a valid safetensors file: %s", name, msg);
    if (err)
        defang(err->msg);
    return LORA_EINPUT;
}

static int parse_metadata(lora_st *st, json_t *meta, lora_error *err)
{
    if (json_is_null(meta))
        return LORA_OK;
    if (!json_is_object(meta))
        return bad(err, st->name, "__metadata__ is not an object of strings");
    if (json_object_get(meta, "dtype") && json_object_get(meta, "data_offsets"))
        return bad(err, st->name, "a tensor may not be named __metadata__");
    size_t n = json_object_size(meta);
    st->mkey = calloc(n ? n : 1, sizeof *st->mkey);
    st->mval = calloc(n ? n : 1, sizeof *st->mval);
    if (!st->mkey || !st->mval)
        return lora_oom(err);
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v)
    {
        if (!json_is_string(v))
            return bad(err, st->name, "__metadata__ value of \"%s\" is not a string", k);
        st->mkey[st->nmeta] = k;
        st->mval[st->nmeta] = json_string_value(v);
        st->nmeta++;
    }
    return LORA_OK;
}

/* Rule 5 for one tensor entry: types, dtype name, shape and offsets as
 * non-negative integers.  nbytes temporarily holds END. */
static int parse_entry(lora_st *st, const char *key, json_t *v, lora_tensor *t, lora_error *err)
{
    if (!json_is_object(v))
        return bad(err, st->name, "tensor \"%s\": entry is not an object", key);
    json_t *dt = json_object_get(v, "dtype");
    json_t *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return bad(err, st->name, "tensor \"%s\": missing or non-string \"dtype\"", key);
    if (!json_is_array(shape))
        return bad(err, st->name, "tensor \"%s\": missing or non-array \"shape\"", key);
    if (!json_is_array(offs))
        return bad(err, st->name, "tensor \"%s\": missing or non-array \"data_offsets\"", key);
    t->name = key;
    t->dtype = lora_dtype_from_name(json_string_value(dt));
    if (t->dtype == LORA_DT_INVALID)
        return bad(err, st->name, "tensor \"%s\": unknown dtype \"%.40s\"", key,
                   json_string_value(dt));
    size_t nd = json_array_size(shape);
    if (nd > LORA_MAX_DIMS)
        return bad(err, st->name, "tensor \"%s\": %zu dimensions (at most %d supported)", key,
                   nd, LORA_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++)
        if (!get_uint(json_array_get(shape, i), &t->shape[i]))
            return bad(err, st->name,
                       "tensor \"%s\": shape[%zu] is not a non-negative integer", key, i);
    if (json_array_size(offs) != 2 || !get_uint(json_array_get(offs, 0), &t->offset) ||
        !get_uint(json_array_get(offs, 1), &t->nbytes))
        return bad(err, st->name,
                   "tensor \"%s\": data_offsets is not two non-negative integers [BEGIN, END]",
                   key);
    return LORA_OK;
}

/* Rules 6 to 9 over the tensors sorted by (BEGIN, END), then rule 10. */
static int check_layout(lora_st *st, lora_error *err)
{
    uint64_t prev_end = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < st->n; i++) {
        lora_tensor *t = &st->t[i];
        uint64_t begin = t->offset, end = t->nbytes;
        if (end < begin)
            return bad(err, st->name, "tensor \"%s\": data_offsets [%llu, %llu] end before "
                       "they begin", t->name, (unsigned long long)begin,
                       (unsigned long long)end);
        if (begin != prev_end) {
            if (!prev)
                return bad(err, st->name,
                           "tensor \"%s\": the first tensor's data must start at offset 0, "
                           "not %llu (hole before it)",
                           t->name, (unsigned long long)begin);
            if (begin < prev_end)
                return bad(err, st->name,
                           "tensor \"%s\": data_offsets [%llu, %llu] overlap tensor \"%s\", "
                           "which ends at %llu",
                           t->name, (unsigned long long)begin, (unsigned long long)end, prev,
                           (unsigned long long)prev_end);
            return bad(err, st->name,
                       "tensor \"%s\": data_offsets [%llu, %llu] leave a hole after tensor "
                       "\"%s\", which ends at %llu (data must be contiguous)",
                       t->name, (unsigned long long)begin, (unsigned long long)end, prev,
                       (unsigned long long)prev_end);
        }
        uint64_t numel = 1, bits;
        for (int d = 0; d < t->ndim; d++)
            if (!lora_mul_ok(numel, t->shape[d], &numel))
                return bad(err, st->name, "tensor \"%s\": element count overflows", t->name);
        if (!lora_mul_ok(numel, lora_dtype_bits(t->dtype), &bits))
            return bad(err, st->name, "tensor \"%s\": byte size overflows", t->name);
        if (bits % 8)
            return bad(err, st->name,
                       "tensor \"%s\": %llu elements of %s do not fill whole bytes", t->name,
                       (unsigned long long)numel, lora_dtype_name(t->dtype));
        if (end - begin != bits / 8)
            return bad(err, st->name,
                       "tensor \"%s\": shape and dtype %s give %llu bytes but data_offsets "
                       "[%llu, %llu] span %llu",
                       t->name, lora_dtype_name(t->dtype), (unsigned long long)(bits / 8),
                       (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)(end - begin));
        t->numel = numel;
        t->nbytes = end - begin;
        prev_end = end;
        prev = t->name;
    }
    uint64_t avail = st->len - 8 - st->hlen;
    if (prev_end > avail) {
        /* name the first tensor that is not all there */
        const char *first = "";
        for (size_t i = 0; i < st->n; i++)
            if (st->t[i].offset + st->t[i].nbytes > avail) {
                first = st->t[i].name;
                break;
            }
        return bad(err, st->name,
                   "truncated: the header describes %llu bytes of tensor data but the file "
                   "holds only %llu (tensor \"%s\" onwards is missing)",
                   (unsigned long long)prev_end, (unsigned long long)avail, first);
    }
    if (prev_end < avail)
        return bad(err, st->name,
                   "%llu trailing bytes after the tensor data (the header describes %llu "
                   "bytes; the file must end there)",
                   (unsigned long long)(avail - prev_end), (unsigned long long)prev_end);
    return LORA_OK;
}

static int parse_header(lora_st *st, lora_error *err)
{
    /* rule 1 */
    if (st->len < 8)
        return bad(err, st->name, "%llu bytes is too short for the 8-byte header length%s",
                   (unsigned long long)st->len, st->len ? "" : " (empty file)");
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | st->buf[i];
    /* rule 2, before anything is allocated */
    if (n > LORA_ST_MAX_HEADER)
        return bad(err, st->name, "header length %llu exceeds the limit of %llu bytes",
                   (unsigned long long)n, (unsigned long long)LORA_ST_MAX_HEADER);
    /* rule 3 */
    if (8 + n > st->len)
        return bad(err, st->name,
                   "header length %llu runs past the end of the file (%llu bytes)",
                   (unsigned long long)n, (unsigned long long)st->len);
    if (n == 0)
        return bad(err, st->name, "empty header (length 0)");
    st->hlen = n;
    /* rules 4 and 5: UTF-8 and JSON, duplicate keys refused */
    json_error_t je;
    st->root = json_loadb((const char *)st->buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!st->root) {
        switch (json_error_code(&je)) {
        case json_error_invalid_utf8:
            return bad(err, st->name, "header is not valid UTF-8 (byte %d)", je.position);
        case json_error_duplicate_key:
            return bad(err, st->name, "duplicate key in header: %s", je.text);
        case json_error_out_of_memory:
            return lora_oom(err);
        default:
            return bad(err, st->name, "header is not valid JSON: %s at byte %d", je.text,
                       je.position);
        }
    }
    if (!json_is_object(st->root))
        return bad(err, st->name, "header is not a JSON object");
    size_t count = json_object_size(st->root);
    st->t = calloc(count ? count : 1, sizeof *st->t);
    if (!st->t)
        return lora_oom(err);
    const char *key;
    json_t *v;
    json_object_foreach(st->root, key, v)
    {
        int rc;
        if (strcmp(key, "__metadata__") == 0)
            rc = parse_metadata(st, v, err);
        else
            rc = parse_entry(st, key, v, &st->t[st->n++], err);
        if (rc)
            return rc;
    }
    qsort(st->t, st->n, sizeof *st->t, cmp_offsets);
    int rc = check_layout(st, err);
    if (rc)
        return rc;
    /* only now is the data known to be there */
    const unsigned char *data = st->buf + 8 + st->hlen;
    st->by_name = malloc((st->n ? st->n : 1) * sizeof *st->by_name);
    if (!st->by_name)
        return lora_oom(err);
    for (size_t i = 0; i < st->n; i++) {
        st->t[i].data = data + st->t[i].offset;
        st->t[i].offset += 8 + st->hlen;
        st->by_name[i] = &st->t[i];
    }
    qsort(st->by_name, st->n, sizeof *st->by_name, cmp_name_ptr);
    return LORA_OK;
}

/* A file that fails as safetensors but is another known kind (GGUF,
 * PyTorch, NumPy, HTML, ...) is named as that kind: its "header length"
 * would mean nothing to the user.  A valid file is never renamed. */
static int parse(lora_st *st, lora_error *err)
{
    int rc = parse_header(st, err);
    if (rc != LORA_EINPUT)
        return rc;
    const char *kind = lora_foreign_kind(st->buf, (size_t)st->len);
    if (kind)
        lora_seterr(err, LORA_EINPUT, "%s: not a safetensors file: this is %s", st->name, kind);
    return rc;
}

void lora_st_close(lora_st *st)
{
    if (!st)
        return;
    json_decref(st->root);
    free(st->t);
    free(st->by_name);
    free(st->mkey);
    free(st->mval);
    if (st->owner_free)
        st->owner_free(st->owner);
    if (st->map)
        munmap(st->map, (size_t)st->len);
    if (st->fd >= 0)
        close(st->fd);
    free(st->name);
    free(st);
}

static lora_st *st_new(const char *name, lora_error *err)
{
    lora_st *st = calloc(1, sizeof *st);
    if (!st) {
        lora_oom(err);
        return NULL;
    }
    st->fd = -1;
    st->name = strdup(name ? name : "(memory)");
    if (!st->name) {
        free(st);
        lora_oom(err);
        return NULL;
    }
    return st;
}

int lora_st_open_memory(const void *buf, size_t len, const char *name, lora_st **out,
                        lora_error *err)
{
    *out = NULL;
    lora_st *st = st_new(name, err);
    if (!st)
        return LORA_EIO;
    st->buf = buf;
    st->len = len;
    int rc = parse(st, err);
    if (rc) {
        lora_st_close(st);
        return rc;
    }
    *out = st;
    return LORA_OK;
}

int lora_st_open(const char *path, lora_st **out, lora_error *err)
{
    *out = NULL;
    lora_st *st = st_new(path, err);
    if (!st)
        return LORA_EIO;
    int rc;
    /* O_NONBLOCK: a FIFO must not hang us before fstat refuses it */
    st->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (st->fd < 0) {
        int e = errno;
        rc = lora_seterr_path(err, e, LORA_PATH_EACCES_INPUT, path);
        goto fail;
    }
    struct stat sb;
    if (fstat(st->fd, &sb) != 0) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s", path);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: not a regular file", path);
        goto fail;
    }
    st->len = (uint64_t)sb.st_size;
    if (st->len >= 8) { /* shorter ones are refused by parse, without a mapping */
        if (st->len > SIZE_MAX) {
            rc = lora_seterr(err, LORA_EIO, "%s: too large to map", path);
            goto fail;
        }
        void *m = mmap(NULL, (size_t)st->len, PROT_READ, MAP_PRIVATE, st->fd, 0);
        if (m == MAP_FAILED) {
            rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: mmap", path);
            goto fail;
        }
        st->map = m;
        st->buf = m;
    } else {
        static const unsigned char none[1];
        st->buf = none;
    }
    rc = parse(st, err);
    if (rc)
        goto fail;
    *out = st;
    return LORA_OK;
fail:
    lora_st_close(st);
    return rc;
}

const char *lora_st_path(const lora_st *st)
{
    return st->name;
}
uint64_t lora_st_size(const lora_st *st)
{
    return st->len;
}
uint64_t lora_st_header_size(const lora_st *st)
{
    return st->hlen;
}
size_t lora_st_count(const lora_st *st)
{
    return st->n;
}
const lora_tensor *lora_st_tensor(const lora_st *st, size_t i)
{
    return i < st->n ? &st->t[i] : NULL;
}

const lora_tensor *lora_st_find(const lora_st *st, const char *name)
{
    size_t lo = 0, hi = st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->by_name[mid]->name, name);
        if (c == 0)
            return st->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t lora_st_metadata_count(const lora_st *st)
{
    return st->nmeta;
}

int lora_st_metadata_at(const lora_st *st, size_t i, const char **key, const char **value)
{
    if (i >= st->nmeta)
        return LORA_EUSAGE;
    if (key)
        *key = st->mkey[i];
    if (value)
        *value = st->mval[i];
    return LORA_OK;
}

const char *lora_st_metadata(const lora_st *st, const char *key)
{
    for (size_t i = 0; i < st->nmeta; i++)
        if (strcmp(st->mkey[i], key) == 0)
            return st->mval[i];
    return NULL;
}

int lora_st_fd(const lora_st *st)
{
    return st->fd;
}

int lora_st_view(const char *name, int fd, const void *buf, uint64_t len, uint64_t hlen,
                 lora_tensor *t, size_t n, const char **mkey, const char **mval, size_t nmeta,
                 void *owner, void (*owner_free)(void *), lora_st **out, lora_error *err)
{
    *out = NULL;
    lora_st *st = st_new(name, err);
    if (!st) {
        free(t);
        free(mkey);
        free(mval);
        owner_free(owner);
        if (fd >= 0)
            close(fd);
        return LORA_EIO;
    }
    st->fd = fd;
    st->buf = buf;
    st->len = len;
    st->hlen = hlen;
    st->t = t;
    st->n = n;
    st->mkey = mkey;
    st->mval = mval;
    st->nmeta = nmeta;
    st->owner = owner;
    st->owner_free = owner_free;
    st->by_name = malloc((n ? n : 1) * sizeof *st->by_name);
    if (!st->by_name) {
        lora_st_close(st);
        return lora_oom(err);
    }
    for (size_t i = 0; i < n; i++)
        st->by_name[i] = &t[i];
    qsort(st->by_name, n, sizeof *st->by_name, cmp_name_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(st->by_name[i - 1]->name, st->by_name[i]->name) == 0) {
            int rc = lora_seterr(err, LORA_EINPUT, "%s: two tensors are named \"%s\"", name,
                                 st->by_name[i]->name);
            lora_st_close(st);
            return rc;
        }
    *out = st;
    return LORA_OK;
}

void *lora_st_view_owner(const lora_st *st, void (*owner_free)(void *))
{
    return st && st->owner_free == owner_free ? st->owner : NULL;
}

/* ------------------------------------------------------------------ */
/* writer                                                              */
/* ------------------------------------------------------------------ */

typedef struct stw_tensor {
    char *name;
    lora_dtype dt;
    int ndim;
    uint64_t shape[LORA_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset;            /* absolute, in the file */
    _Atomic uint64_t written;   /* bytes written so far, from any thread */
} stw_tensor;

struct lora_stw {
    char *path;
    char *tmp;
    int fd;
    int started;
    size_t n, cap;
    stw_tensor **t;             /* after start: layout order */
    stw_tensor **by_name;       /* after start: name order */
    size_t nmeta, mcap;
    char **mkey, **mval;
    int fmt_default;            /* "format":"pt" is the writer's, not the caller's */
    char *layout;               /* lora_stw_set_layout: the header to follow */
    size_t layout_len;
    int verbatim;
    unsigned char *head;        /* after start: the header as written */
    size_t head_len;
    lora_gstw *gg;              /* a GGUF output (gguf_checkpoint.c): every call goes there */
    _Atomic uint64_t wbytes;    /* bytes through lora_stw_write, for the page cache drops */
    uint32_t align;             /* lora_stw_set_align, 0: none */
    lora_dio *dio;              /* after start: direct writes, if any (direct_io.c) */
};

/* Bytes written between two drops of the output's written-back pages
 * from the page cache (lora_stw_write). */
#define STW_DROP_EVERY (UINT64_C(8) << 20)
/* Outputs smaller than this are written through the cache only: the
 * second descriptor and the waits for the device are not worth it. */
#define STW_DIRECT_FROM (UINT64_C(16) << 20)

static void stw_free(lora_stw *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->t[i]->name);
        free(w->t[i]);
    }
    free(w->t);
    free(w->by_name);
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->mkey[i]);
        free(w->mval[i]);
    }
    free(w->mkey);
    free(w->mval);
    free(w->layout);
    free(w->head);
    lora_gstw_free(w->gg);
    (void)lora_dio_finish(w->dio);
    if (w->fd >= 0)
        close(w->fd);
    free(w->tmp);
    free(w->path);
    free(w);
}

void lora_stw_abort(lora_stw *w)
{
    if (!w)
        return;
    if (w->gg)
        lora_gstw_abort(w->gg);
    w->gg = NULL;
    if (w->tmp)
        lora_tmp_unlink(w->tmp);
    stw_free(w);
}

int lora_stw_new(const char *path, lora_stw **out, lora_error *err)
{
    *out = NULL;
    lora_stw *w = calloc(1, sizeof *w);
    if (!w)
        return lora_oom(err);
    w->fd = -1;
    atomic_init(&w->wbytes, 0);
    w->path = strdup(path);
    if (!w->path) {
        free(w);
        return lora_oom(err);
    }
    int rc = lora_tmpfile_beside(path, 0644, &w->fd, &w->tmp, err);
    if (rc) {
        w->fd = -1;
        stw_free(w);
        return rc;
    }
    rc = lora_stw_set_metadata(w, "format", "pt", err);
    if (rc) {
        lora_stw_abort(w);
        return rc;
    }
    w->fmt_default = 1;
    *out = w;
    return LORA_OK;
}

int lora_stw_new_gguf(lora_gstw *gg, lora_stw **out, lora_error *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out) {
        lora_gstw_abort(gg);
        return lora_oom(err);
    }
    (*out)->fd = -1;
    (*out)->gg = gg;
    return LORA_OK;
}

static int valid_utf8_json(const char *s)
{
    json_t *j = json_string(s);
    if (!j)
        return 0;
    json_decref(j);
    return 1;
}

int lora_stw_set_metadata(lora_stw *w, const char *key, const char *value, lora_error *err)
{
    if (w->gg)
        return lora_gstw_set_metadata(w->gg, key, value, err);
    if (w->started)
        return lora_seterr(err, LORA_EUSAGE, "%s: metadata set after the header was written",
                           w->path);
    if (!valid_utf8_json(key) || !valid_utf8_json(value))
        return lora_seterr(err, LORA_EINPUT, "%s: metadata \"%s\" is not valid UTF-8", w->path,
                           key);
    if (strcmp(key, "format") == 0)
        w->fmt_default = 0;
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->mkey[i], key) == 0) {
            char *v = strdup(value);
            if (!v)
                return lora_oom(err);
            free(w->mval[i]);
            w->mval[i] = v;
            return LORA_OK;
        }
    if (w->nmeta == w->mcap) {
        size_t c = w->mcap ? 2 * w->mcap : 8;
        char **k = realloc(w->mkey, c * sizeof *k);
        if (!k)
            return lora_oom(err);
        w->mkey = k;
        char **v = realloc(w->mval, c * sizeof *v);
        if (!v)
            return lora_oom(err);
        w->mval = v;
        w->mcap = c;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return lora_oom(err);
    }
    w->mkey[w->nmeta] = k;
    w->mval[w->nmeta] = v;
    w->nmeta++;
    return LORA_OK;
}

int lora_stw_declare(lora_stw *w, const char *name, lora_dtype dt, int ndim,
                     const uint64_t *shape, lora_error *err)
{
    if (w->gg)
        return lora_gstw_declare(w->gg, name, dt, ndim, shape, err);
    if (w->started)
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor \"%s\" declared after the header "
                           "was written", w->path, name);
    if (!lora_dtype_bits(dt))
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor \"%s\": invalid dtype", w->path, name);
    if (ndim < 0 || ndim > LORA_MAX_DIMS)
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor \"%s\": %d dimensions", w->path, name,
                           ndim);
    if (strcmp(name, "__metadata__") == 0 || !valid_utf8_json(name) || !*name)
        return lora_seterr(err, LORA_EINPUT, "%s: \"%s\" cannot be a tensor name", w->path,
                           name);
    uint64_t numel = 1, bits;
    for (int d = 0; d < ndim; d++)
        if (!lora_mul_ok(numel, shape[d], &numel) || shape[d] > INT64_MAX)
            return lora_seterr(err, LORA_EINPUT, "%s: tensor \"%s\": size overflows", w->path,
                               name);
    if (!lora_mul_ok(numel, lora_dtype_bits(dt), &bits) || bits / 8 > INT64_MAX)
        return lora_seterr(err, LORA_EINPUT, "%s: tensor \"%s\": size overflows", w->path,
                           name);
    if (bits % 8)
        return lora_seterr(err, LORA_EINPUT, "%s: tensor \"%s\": does not fill whole bytes",
                           w->path, name);
    if (w->n == w->cap) {
        size_t c = w->cap ? 2 * w->cap : 64;
        stw_tensor **t = realloc(w->t, c * sizeof *t);
        if (!t)
            return lora_oom(err);
        w->t = t;
        w->cap = c;
    }
    stw_tensor *t = calloc(1, sizeof *t);
    if (!t)
        return lora_oom(err);
    t->name = strdup(name);
    if (!t->name) {
        free(t);
        return lora_oom(err);
    }
    t->dt = dt;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->nbytes = bits / 8;
    atomic_init(&t->written, 0);
    w->t[w->n++] = t;
    return LORA_OK;
}

/* The reference writer's order: dtype in descending enum order (our
 * enum is the reference's), then name. */
static int cmp_layout(const void *a, const void *b)
{
    const stw_tensor *x = *(stw_tensor *const *)a, *y = *(stw_tensor *const *)b;
    if (x->dt != y->dt)
        return x->dt > y->dt ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_stw_name(const void *a, const void *b)
{
    const stw_tensor *x = *(stw_tensor *const *)a, *y = *(stw_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int lora_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const unsigned char *p = buf;
    while (len) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static const char *meta_value(const lora_stw *w, const char *key)
{
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->mkey[i], key) == 0)
            return w->mval[i];
    return NULL;
}

/* The header: compact JSON, __metadata__ first with sorted keys, then
 * the tensors in layout order. */
static char *build_header(lora_stw *w, lora_error *err)
{
    json_t *root = json_object(), *meta = json_object();
    char **keys = malloc((w->nmeta ? w->nmeta : 1) * sizeof *keys);
    char *text = NULL;
    if (!root || !meta || !keys)
        goto oom;
    for (size_t i = 0; i < w->nmeta; i++)
        keys[i] = w->mkey[i];
    qsort(keys, w->nmeta, sizeof *keys, cmp_cstr);
    for (size_t i = 0; i < w->nmeta; i++) {
        const char *v = meta_value(w, keys[i]);
        if (json_object_set_new(meta, keys[i], json_string(v)))
            goto oom;
    }
    if (json_object_set(root, "__metadata__", meta))
        goto oom;
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        stw_tensor *t = w->t[i];
        json_t *e = json_object(), *sh = json_array(), *of = json_array();
        if (!e || !sh || !of || json_object_set_new(root, t->name, e)) {
            json_decref(e);
            json_decref(sh);
            json_decref(of);
            goto oom;
        }
        for (int d = 0; d < t->ndim; d++)
            if (json_array_append_new(sh, json_integer((json_int_t)t->shape[d])))
                goto oom2;
        if (json_array_append_new(of, json_integer((json_int_t)off)) ||
            json_array_append_new(of, json_integer((json_int_t)(off + t->nbytes))))
            goto oom2;
        if (json_object_set_new(e, "dtype", json_string(lora_dtype_name(t->dt))) ||
            json_object_set_new(e, "shape", sh) || json_object_set_new(e, "data_offsets", of))
            goto oom;
        t->offset = off; /* relative for now */
        off += t->nbytes;
        continue;
oom2:
        json_decref(sh);
        json_decref(of);
        goto oom;
    }
    text = json_dumps(root, JSON_COMPACT);
    if (!text)
        goto oom;
    json_decref(root);
    json_decref(meta);
    free(keys);
    return text;
oom:
    json_decref(root);
    json_decref(meta);
    free(keys);
    lora_oom(err);
    return NULL;
}

int lora_stw_set_layout(lora_stw *w, const void *hdr, size_t len, int verbatim,
                        lora_error *err)
{
    if (w->gg)
        return lora_gstw_set_layout(w->gg, hdr, len, verbatim, err);
    if (w->started)
        return lora_seterr(err, LORA_EUSAGE, "%s: layout set after the header was written",
                           w->path);
    if (len == 0 || len > LORA_ST_MAX_HEADER)
        return lora_seterr(err, LORA_EINPUT, "%s: a header of %zu bytes cannot be kept", w->path,
                           len);
    char *c = malloc(len);
    if (!c)
        return lora_oom(err);
    memcpy(c, hdr, len);
    free(w->layout);
    w->layout = c;
    w->layout_len = len;
    w->verbatim = verbatim != 0;
    return LORA_OK;
}

int lora_stw_set_align(lora_stw *w, uint32_t align, lora_error *err)
{
    if (w->gg)
        return LORA_OK; /* GGUF keeps its own alignment */
    if (w->started)
        return lora_seterr(err, LORA_EUSAGE, "%s: alignment set after the header was written",
                           w->path);
    if (align & (align - 1) || align > (1u << 16))
        return lora_seterr(err, LORA_EUSAGE, "%s: data alignment %u is not a power of two "
                           "up to 65536", w->path, (unsigned)align);
    w->align = align;
    return LORA_OK;
}

static int cmp_stw_offset(const void *a, const void *b)
{
    const stw_tensor *x = *(stw_tensor *const *)a, *y = *(stw_tensor *const *)b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static stw_tensor *stw_find(const lora_stw *w, const char *name);

/* One entry of the header to follow against its declaration: same dtype
 * and shape, offsets spanning exactly its bytes. */
static int layout_entry(stw_tensor *t, json_t *v)
{
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape");
    json_t *of = json_object_get(v, "data_offsets");
    uint64_t b, e, d;
    if (!json_is_string(dt) || lora_dtype_from_name(json_string_value(dt)) != t->dt ||
        !json_is_array(sh) || json_array_size(sh) != (size_t)t->ndim || !json_is_array(of) ||
        json_array_size(of) != 2 || !get_uint(json_array_get(of, 0), &b) ||
        !get_uint(json_array_get(of, 1), &e) || e < b || e - b != t->nbytes)
        return -1;
    for (int k = 0; k < t->ndim; k++)
        if (!get_uint(json_array_get(sh, (size_t)k), &d) || d != t->shape[k])
            return -1;
    t->offset = b;
    return 0;
}

/* The kept layout's __metadata__: what was set, in the order set, where
 * the header had it (first when it had none). */
static json_t *layout_root(lora_stw *w, json_t *root)
{
    json_t *meta = json_object();
    /* a __metadata__ added where there was none carries "format":"pt":
     * transformers refuses metadata without a format */
    int had = json_object_get(root, "__metadata__") != NULL;
    if (!meta)
        return NULL;
    for (size_t i = 0; i < w->nmeta; i++) {
        if (had && w->fmt_default && strcmp(w->mkey[i], "format") == 0)
            continue;
        if (json_object_set_new(meta, w->mkey[i], json_string(w->mval[i]))) {
            json_decref(meta);
            return NULL;
        }
    }
    if (had || json_object_size(meta) == (w->fmt_default ? 1u : 0u)) {
        if (json_object_get(root, "__metadata__") && json_object_set(root, "__metadata__", meta)) {
            json_decref(meta);
            return NULL;
        }
        json_decref(meta);
        return json_incref(root);
    }
    json_t *n = json_object();
    const char *k;
    json_t *v;
    if (!n || json_object_set_new(n, "__metadata__", meta)) {
        json_decref(n);
        return NULL;
    }
    json_object_foreach(root, k, v)
        if (json_object_set(n, k, v)) {
            json_decref(n);
            return NULL;
        }
    return n;
}

/* Offsets from the header to follow (w->layout), checked against the
 * declarations; *text is the header to write (*hl bytes). */
static int layout_header(lora_stw *w, char **text, size_t *hl, lora_error *err)
{
    json_error_t je;
    json_t *root = json_loadb(w->layout, w->layout_len, JSON_REJECT_DUPLICATES, &je);
    *text = NULL;
    if (!json_is_object(root)) {
        json_decref(root);
        return lora_seterr(err, LORA_EINPUT, "%s: the layout to keep is not a safetensors header",
                           w->path);
    }
    size_t matched = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        stw_tensor *t = stw_find(w, key);
        if (!t || layout_entry(t, v)) {
            /* KEY lives in ROOT: format the message before letting go */
            int rc = lora_seterr(err, LORA_EINPUT, "%s: the layout to keep %s tensor \"%s\"%s",
                                 w->path, t ? "has another" : "has a", key,
                                 t ? " (dtype, shape or size)" : " that is not written");
            json_decref(root);
            return rc;
        }
        matched++;
    }
    if (matched != w->n) {
        json_decref(root);
        return lora_seterr(err, LORA_EINPUT, "%s: the layout to keep has %zu of the %zu tensors",
                           w->path, matched, w->n);
    }
    if (w->n)
        qsort(w->t, w->n, sizeof *w->t, cmp_stw_offset);
    for (size_t i = 0; i < w->n; i++) {
        uint64_t want = i ? w->t[i - 1]->offset + w->t[i - 1]->nbytes : 0;
        if (w->t[i]->offset != want) {
            json_decref(root);
            return lora_seterr(err, LORA_EINPUT, "%s: the layout to keep is not contiguous at "
                               "tensor \"%s\"", w->path, w->t[i]->name);
        }
    }
    if (w->verbatim) {
        json_decref(root);
        if (!(*text = malloc(w->layout_len)))
            return lora_oom(err);
        memcpy(*text, w->layout, w->layout_len);
        *hl = w->layout_len;
        return LORA_OK;
    }
    json_t *out = layout_root(w, root);
    json_decref(root);
    *text = out ? json_dumps(out, JSON_COMPACT) : NULL;
    json_decref(out);
    if (!*text)
        return lora_oom(err);
    *hl = strlen(*text);
    return LORA_OK;
}

int lora_stw_start(lora_stw *w, lora_error *err)
{
    if (w->gg)
        return lora_gstw_start(w->gg, err);
    if (w->started)
        return LORA_OK;
    w->by_name = malloc((w->n ? w->n : 1) * sizeof *w->by_name);
    if (!w->by_name)
        return lora_oom(err);
    if (w->n) { /* w->t is NULL for a file with no tensors: no qsort/memcpy of NULL */
        qsort(w->t, w->n, sizeof *w->t, cmp_layout);
        memcpy(w->by_name, w->t, w->n * sizeof *w->t);
        qsort(w->by_name, w->n, sizeof *w->by_name, cmp_stw_name);
    }
    for (size_t i = 1; i < w->n; i++)
        if (strcmp(w->by_name[i - 1]->name, w->by_name[i]->name) == 0)
            return lora_seterr(err, LORA_EUSAGE, "%s: tensor \"%s\" declared twice", w->path,
                               w->by_name[i]->name);
    uint64_t total = 0;
    for (size_t i = 0; i < w->n; i++)
        if (!lora_add_ok(total, w->t[i]->nbytes, &total) || total > INT64_MAX / 2)
            return lora_seterr(err, LORA_EINPUT, "%s: total size overflows", w->path);
    char *text;
    size_t hl;
    if (w->layout) {
        int rc = layout_header(w, &text, &hl, err);
        if (rc)
            return rc;
    } else {
        if (!(text = build_header(w, err)))
            return LORA_EIO;
        hl = strlen(text);
    }
    /* a kept header keeps its own padding; else spaces up to a multiple
     * of 8 (the reference writer's rule) or to lora_stw_set_align's
     * data alignment (direct writes of whole pages: direct_io.c) */
    uint64_t n = w->layout && w->verbatim ? (uint64_t)hl : ((uint64_t)hl + 7) & ~(uint64_t)7;
    if (!(w->layout && w->verbatim) && w->align > 8)
        n = ((8 + (uint64_t)hl + w->align - 1) & ~((uint64_t)w->align - 1)) - 8;
    unsigned char *head = malloc(8 + n);
    if (!head) {
        free(text);
        return lora_oom(err);
    }
    for (int i = 0; i < 8; i++)
        head[i] = (unsigned char)(n >> (8 * i));
    memcpy(head + 8, text, hl);
    memset(head + 8 + hl, ' ', n - hl);
    free(text);
    for (size_t i = 0; i < w->n; i++)
        w->t[i]->offset += 8 + n;
    int rc = LORA_OK;
    if (ftruncate(w->fd, (off_t)(8 + n + total)) != 0)
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: cannot size the temporary file",
                               w->path);
    else if (lora_pwrite_all(w->fd, head, 8 + n, 0) != 0)
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: write", w->path);
    if (!rc && total >= STW_DIRECT_FROM) {
        w->dio = lora_dio_open(w->fd, w->tmp);
        /* the blocks allocated now (unwritten) make the direct writes
         * overwrites, which ext4 runs under a shared lock, several at
         * once; into a hole each one holds the inode exclusively until
         * the device is done.  A failure only costs that. */
        if (w->dio)
            (void)fallocate(w->fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)(8 + n + total));
    }
    if (!rc) {
        w->started = 1;
        w->head = head;
        w->head_len = 8 + n;
    } else {
        free(head);
    }
    return rc;
}

const unsigned char *lora_stw_header(const lora_stw *w, size_t *len)
{
    if (w->gg)
        return lora_gstw_header(w->gg, len);
    *len = w->started ? w->head_len : 0;
    return w->started ? w->head : NULL;
}

int lora_stw_patch_metadata(lora_stw *w, const char *key, const char *value, lora_error *err)
{
    if (w->gg)
        return lora_gstw_patch_metadata(w->gg, key, value, err);
    size_t kl = strlen(key), vl = strlen(value);
    if (!w->started)
        return lora_seterr(err, LORA_EUSAGE, "%s: metadata patched before the header was written",
                           w->path);
    for (const char *c = value; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z')))
            return lora_seterr(err, LORA_EUSAGE, "%s: a patched value is letters and digits",
                               w->path);
    /* "KEY":" cannot occur inside a JSON string, where every quote is
     * escaped, so the first match is the key itself */
    char *pat = malloc(kl + 5);
    if (!pat)
        return lora_oom(err);
    snprintf(pat, kl + 5, "\"%s\":\"", key);
    unsigned char *h = w->head + 8, *at = NULL;
    size_t n = w->head_len - 8, pl = kl + 4;
    for (size_t i = 0; i + pl <= n && !at; i++)
        if (memcmp(h + i, pat, pl) == 0)
            at = h + i + pl;
    free(pat);
    size_t old = 0;
    while (at && at + old < h + n && at[old] != '"' && at[old] != '\\')
        old++;
    if (!at || at + old >= h + n || at[old] != '"' || old != vl)
        return lora_seterr(err, LORA_EUSAGE, "%s: no metadata \"%s\" of %zu characters to patch",
                           w->path, key, vl);
    memcpy(at, value, vl);
    if (lora_pwrite_all(w->fd, at, vl, (uint64_t)(at - w->head)) != 0)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s: write", w->path);
    return LORA_OK;
}

static stw_tensor *stw_find(const lora_stw *w, const char *name)
{
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(w->by_name[mid]->name, name);
        if (c == 0)
            return w->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int stw_target(lora_stw *w, const char *name, uint64_t off, uint64_t len,
                      stw_tensor **out, lora_error *err)
{
    if (!w->started)
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor data written before lora_stw_start",
                           w->path);
    stw_tensor *t = stw_find(w, name);
    if (!t)
        return lora_seterr(err, LORA_EUSAGE, "%s: tensor \"%s\" was not declared", w->path,
                           name);
    uint64_t end;
    if (!lora_add_ok(off, len, &end) || end > t->nbytes)
        return lora_seterr(err, LORA_EUSAGE,
                           "%s: tensor \"%s\": write of %llu bytes at %llu past its %llu bytes",
                           w->path, name, (unsigned long long)len, (unsigned long long)off,
                           (unsigned long long)t->nbytes);
    *out = t;
    return LORA_OK;
}

static int stw_write_cached(lora_stw *w, const unsigned char *buf, size_t len, uint64_t at,
                            lora_error *err);

/* The whole blocks inside the write go to the device directly when the
 * writer can (direct_io.c), the rest through the page cache. */
int lora_stw_write(lora_stw *w, const char *name, uint64_t off, const void *buf, size_t len,
                   lora_error *err)
{
    if (w->gg)
        return lora_gstw_write(w->gg, name, off, buf, len, err);
    stw_tensor *t;
    int rc = stw_target(w, name, off, len, &t, err);
    const unsigned char *b = buf;
    void *lent = lora_dio_lent(w->dio, buf) ? (void *)buf : NULL;
    uint64_t at = rc ? 0 : t->offset + off;
    size_t head = len, mid = 0;
    if (!rc)
        lora_dio_split(w->dio, len, at, &head, &mid);
    /* the ends first: a lent buffer is given away with the middle */
    if (!rc && head)
        rc = stw_write_cached(w, b, head, at, err);
    if (!rc && len - head - mid)
        rc = stw_write_cached(w, b + head + mid, len - head - mid, at + head + mid, err);
    int gave = !rc && mid; /* lora_dio_write takes LENT back, queued or not */
    int e = gave ? lora_dio_write(w->dio, b + head, mid, at + head, lent) : 0;
    if (e)
        rc = lora_seterr_errno(err, LORA_EIO, e, "%s: write", w->path);
    if (lent && !gave)
        lora_dio_unlend(w->dio, lent);
    if (rc)
        return rc;
    atomic_fetch_add(&t->written, (uint64_t)len);
    return LORA_OK;
}

void *lora_stw_lend(lora_stw *w, size_t len)
{
    return w->gg ? NULL : lora_dio_lend(w->dio, len);
}

void lora_stw_unlend(lora_stw *w, void *buf)
{
    if (!w->gg)
        lora_dio_unlend(w->dio, buf);
}

/* LEN bytes of BUF at file offset AT through the page cache. */
static int stw_write_cached(lora_stw *w, const unsigned char *buf, size_t len, uint64_t at,
                            lora_error *err)
{
    if (lora_pwrite_all(w->fd, buf, len, at) != 0)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s: write", w->path);
#ifdef SYNC_FILE_RANGE_WRITE
    /* start writing these pages back now, while the caller computes the
     * next ones, so that the commit's fsync finds little left to do (it
     * was a serial 0.37 s at the end of a 0.8 GB merge); only starts the
     * I/O: errors still come from that fsync */
    (void)sync_file_range(w->fd, (off_t)at, (off_t)len, SYNC_FILE_RANGE_WRITE);
#endif
#ifdef POSIX_FADV_DONTNEED
    /* every 8 MiB, drop the output's pages whose writeback has finished
     * (the kernel keeps dirty ones and those still being written; a clean
     * page is on the disk, so dropping it changes nothing the final fsync
     * makes durable).  The output then holds a few tens of MB of page
     * cache instead of its whole size, and the pages it writes into come
     * back from the free list where they were just used: on this VM
     * (free page reporting to the host) a page cache that grows by the
     * output's size cost 0.35-1.8 s of kernel time per GB written, the
     * more the colder the free memory, against 0.3 with the drops
     * (bench/README, "Session 5").  The price: whoever reads the merged
     * file next reads it from the disk. */
    uint64_t before = atomic_fetch_add(&w->wbytes, (uint64_t)len);
    if (before / STW_DROP_EVERY != (before + len) / STW_DROP_EVERY)
        (void)posix_fadvise(w->fd, 0, 0, POSIX_FADV_DONTNEED);
#endif
    return LORA_OK;
}

int lora_copy_range(int src_fd, uint64_t src_off, int dst_fd, uint64_t dst_off, uint64_t len,
                    const char *path, const char *name, lora_error *err)
{
    uint64_t left = len;
    loff_t in = (loff_t)src_off, out = (loff_t)dst_off;
    int fallback = 0;
    while (left && !fallback) {
        size_t chunk = left > (1u << 30) ? (1u << 30) : (size_t)left;
        ssize_t c = copy_file_range(src_fd, &in, dst_fd, &out, chunk, 0);
        if (c < 0 && errno == EINTR)
            continue;
        if (c < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
                      errno == EOPNOTSUPP || errno == EBADF)) {
            fallback = 1;
            break;
        }
        if (c < 0)
            return lora_seterr_errno(err, LORA_EIO, errno, "%s: copying tensor \"%s\"",
                                     path, name);
        if (c == 0)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: copying tensor \"%s\": the source ends early", path,
                               name);
        left -= (uint64_t)c;
    }
    if (fallback) {
        enum { BUF = 1 << 18 };
        unsigned char *b = malloc(BUF);
        if (!b)
            return lora_oom(err);
        while (left) {
            size_t chunk = left > BUF ? BUF : (size_t)left;
            ssize_t r = pread(src_fd, b, chunk, (off_t)in);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                int e = errno;
                free(b);
                if (r == 0)
                    return lora_seterr(err, LORA_EINPUT,
                                       "%s: copying tensor \"%s\": the source ends early",
                                       path, name);
                return lora_seterr_errno(err, LORA_EIO, e, "%s: copying tensor \"%s\"",
                                         path, name);
            }
            if (lora_pwrite_all(dst_fd, b, (size_t)r, (uint64_t)out) != 0) {
                int e = errno;
                free(b);
                return lora_seterr_errno(err, LORA_EIO, e, "%s: write", path);
            }
            in += r;
            out += r;
            left -= (uint64_t)r;
        }
        free(b);
    }
    return LORA_OK;
}

int lora_stw_copy(lora_stw *w, const char *name, int src_fd, uint64_t src_off, lora_error *err)
{
    if (w->gg)
        return lora_gstw_copy(w->gg, name, src_fd, src_off, err);
    stw_tensor *t;
    int rc = stw_target(w, name, 0, 0, &t, err);
    if (rc)
        return rc;
    rc = lora_copy_range(src_fd, src_off, w->fd, t->offset, t->nbytes, w->path, name, err);
    if (rc)
        return rc;
    atomic_fetch_add(&t->written, t->nbytes);
    return LORA_OK;
}

int lora_stw_commit(lora_stw *w, lora_error *err)
{
    if (w->gg) {
        lora_gstw *gg = w->gg;
        w->gg = NULL;
        stw_free(w);
        return lora_gstw_commit(gg, err);
    }
    int rc = lora_stw_start(w, err);
    int e = lora_dio_finish(w->dio); /* every queued write done before the count and fsync */
    w->dio = NULL;
    if (e && !rc)
        rc = lora_seterr_errno(err, LORA_EIO, e, "%s: write", w->path);
    for (size_t i = 0; !rc && i < w->n; i++) {
        uint64_t got = atomic_load(&w->t[i]->written);
        if (got != w->t[i]->nbytes)
            rc = lora_seterr(err, LORA_EIO,
                             "%s: tensor \"%s\": %llu of its %llu bytes were written", w->path,
                             w->t[i]->name, (unsigned long long)got,
                             (unsigned long long)w->t[i]->nbytes);
    }
    if (rc) {
        lora_stw_abort(w);
        return rc;
    }
    rc = lora_commit_tmpfile(w->fd, w->tmp, w->path, err);
    /* the temporary is gone either way: renamed, or unlinked on failure */
    stw_free(w);
    return rc;
}

/*
 * receipt.c - merge receipts (lora-receipt(5)): what a merge did, with
 * the hashes to check an unmerge against and the corrections that make
 * it exact.
 *
 * Layout: an 8-byte magic, the correction blocks of the tensors one
 * after the other, a JSON index, the index length (u64 little-endian)
 * and the magic again.  The index comes last so that the writer streams
 * blocks as tensors finish and never holds the corrections of the whole
 * model; the reader maps the file and decodes one tensor's block at a
 * time.  A block is, per correction, varint(index - previous index - 1)
 * then varint(zigzag(step)) (LEB128, at most 10 bytes each).
 *
 * Version 2 adds, per file of the merge, the base's header bytes as a
 * block (a byte-identical restore) and the hash of the merged file's
 * header (the receipt names its output, so a crash between the renames
 * of a re-merge cannot pair an output with another merge's receipt),
 * and the base's sharded index as a block.  Version 3 codes the
 * corrections as ranks among the ambiguous elements.  Version 4 adds,
 * for a tensor merged with a DoRA module, the row norms it divided by
 * (one little-endian double per output row, a block right after the
 * tensor's corrections).  Version 5 changes the digests of the tensors
 * (SHA-256 trees of the base, XXH3-128 trees of the merged), version 6
 * those of the base again (BLAKE3 trees: tensorhash.c says why).  Every
 * older version is still read.
 */
#include "internal.h"
#include "mergecore.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <sodium.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const unsigned char MAGIC[8] = {'L', 'O', 'R', 'A', 'R', 'C', 'P', 1};
/* 6: base tensors' digests BLAKE3 trees; 5: tensors' digests SHA-256
 * (base) and XXH3-128 (merged) trees; 4: DoRA row norms; 3: rank bits
 * (lora-receipt(5)) */
#define RECEIPT_VERSION 6
#define RECEIPT_MAX_FILES 65536

/* The name of a version's base digest scheme in the index. */
static const char *base_scheme(int version)
{
    return version >= 6 ? "blake3-tree" : version == 5 ? "sha256-tree" : "blake2b-256-tree";
}

struct lora_receipt {
    /* writer */
    char *path, *tmpname;
    int fd;
    uint64_t at;                /* bytes written so far */
    unsigned char *buf;         /* block encoding buffer */
    size_t bufcap;
    /* reader */
    const unsigned char *map;
    size_t maplen;
    int mapped;
    char *name;                 /* for messages */
    /* both */
    lora_rounding mode;
    char *tool;
    size_t nad, capad;
    lora_receipt_adapter *ad;
    size_t nt, capt;
    lora_receipt_tensor *t;
    uint64_t bytes;
    int version;
    size_t nf, capf;
    lora_receipt_file *f;
    size_t ns, caps;
    lora_receipt_saved *s;
    int has_index;
    uint64_t idx_off, idx_len;
    unsigned char idx_hash[32];
    int finished, staged;
    char *sig_text, *sig_path;  /* lora_receipt_sign: PATH.minisig to install */
    size_t sig_len;
    void *owned;                /* open_signed: the bytes read, freed with r */
};

static void free_tensor(lora_receipt_tensor *t)
{
    free(t->name);
    for (size_t i = 0; i < t->nterms; i++)
        free(t->terms[i].module);
    free(t->terms);
}

static void receipt_free(lora_receipt *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nad; i++)
        free(r->ad[i].path);
    free(r->ad);
    for (size_t i = 0; i < r->nt; i++)
        free_tensor(&r->t[i]);
    free(r->t);
    free(r->tool);
    for (size_t i = 0; i < r->nf; i++)
        free(r->f[i].name);
    free(r->f);
    for (size_t i = 0; i < r->ns; i++)
        free(r->s[i].name);
    free(r->s);
    free(r->sig_text);
    free(r->sig_path);
    free(r->owned);
    free(r->path);
    free(r->tmpname);
    free(r->buf);
    free(r->name);
    if (r->mapped && r->map)
        munmap((void *)r->map, r->maplen);
    free(r);
}

/* ---- writing ---------------------------------------------------------- */

static int write_all(lora_receipt *r, const void *buf, size_t len, lora_error *err)
{
    const unsigned char *p = buf;
    while (len) {
        ssize_t n = write(r->fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return lora_seterr_errno(err, LORA_EIO, errno, "%s: write", r->tmpname);
        }
        p += n;
        len -= (size_t)n;
        r->at += (uint64_t)n;
    }
    return LORA_OK;
}

int lora_receipt_create(const char *path, lora_rounding mode, lora_receipt **out,
                        lora_error *err)
{
    *out = NULL;
    lora_receipt *r = calloc(1, sizeof *r);
    if (!r)
        return lora_oom(err);
    r->fd = -1;
    r->mode = mode;
    r->version = RECEIPT_VERSION;
    if (!(r->path = lora_strdup(path, err))) {
        receipt_free(r);
        return LORA_EIO;
    }
    char tool[64];
    snprintf(tool, sizeof tool, "lora-tools %s", lora_version());
    if (!(r->tool = lora_strdup(tool, err))) {
        receipt_free(r);
        return LORA_EIO;
    }
    int rc = lora_tmpfile_beside(path, 0644, &r->fd, &r->tmpname, err);
    if (rc) {
        receipt_free(r);
        return rc;
    }
    if ((rc = write_all(r, MAGIC, sizeof MAGIC, err))) {
        lora_receipt_abort(r);
        return rc;
    }
    *out = r;
    return LORA_OK;
}

int lora_receipt_add_adapter(lora_receipt *r, const char *path, const unsigned char hash[32],
                             double weight, lora_error *err)
{
    if (r->nad == r->capad) {
        size_t cap = r->capad ? r->capad * 2 : 4;
        lora_receipt_adapter *n = realloc(r->ad, cap * sizeof *n);
        if (!n)
            return lora_oom(err);
        r->ad = n;
        r->capad = cap;
    }
    lora_receipt_adapter *a = &r->ad[r->nad];
    memset(a, 0, sizeof *a);
    if (!(a->path = lora_strdup(path, err)))
        return LORA_EIO;
    memcpy(a->hash, hash, 32);
    a->weight = weight;
    r->nad++;
    return LORA_OK;
}

static size_t put_varint(unsigned char *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

static uint64_t zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static int64_t unzigzag(uint64_t v)
{
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

static int copy_tensor(lora_receipt_tensor *d, const lora_receipt_tensor *s, lora_error *err)
{
    *d = *s;
    d->name = NULL;
    d->terms = NULL;
    d->nterms = 0;
    d->dora_norm = NULL; /* the writer's buffer, not kept */
    if (!(d->name = lora_strdup(s->name, err)))
        return LORA_EIO;
    if (s->nterms) {
        d->terms = calloc(s->nterms, sizeof *d->terms);
        if (!d->terms)
            return lora_oom(err);
        for (size_t i = 0; i < s->nterms; i++) {
            d->terms[i] = s->terms[i];
            d->terms[i].module = NULL;
            d->nterms = i + 1;
            if (!(d->terms[i].module = lora_strdup(s->terms[i].module, err)))
                return LORA_EIO;
        }
    }
    return LORA_OK;
}

static int write_all(lora_receipt *r, const void *buf, size_t len, lora_error *err);

/* Version 4: a DoRA tensor's row norms as little-endian doubles, hashed
 * and written in chunks through the encoding buffer. */
static int put_norms(lora_receipt *r, lora_receipt_tensor *d, const double *norm, uint64_t n,
                     lora_error *err)
{
    if (!norm || !n)
        return lora_seterr(err, LORA_EUSAGE, "%s: DoRA tensor without its norms", d->name);
    if (r->bufcap < 8 * 256) {
        unsigned char *b = realloc(r->buf, 8 * 256);
        if (!b)
            return lora_oom(err);
        r->buf = b;
        r->bufcap = 8 * 256;
    }
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    d->dora = 1;
    d->dora_offset = r->at;
    d->dora_length = 8 * n;
    for (uint64_t i = 0; i < n; i += 256) {
        size_t k = n - i < 256 ? (size_t)(n - i) : 256;
        for (size_t x = 0; x < k; x++) {
            uint64_t u;
            memcpy(&u, &norm[i + x], 8);
            for (int b = 0; b < 8; b++)
                r->buf[8 * x + (size_t)b] = (unsigned char)(u >> (8 * b));
        }
        crypto_generichash_update(&h, r->buf, 8 * k);
        int rc = write_all(r, r->buf, 8 * k, err);
        if (rc)
            return rc;
    }
    crypto_generichash_final(&h, d->dora_hash, 32);
    return LORA_OK;
}

int lora_receipt_add_tensor(lora_receipt *r, const lora_receipt_tensor *t,
                            const lora_fixes *fixes, lora_error *err)
{
    if (r->nt == r->capt) {
        size_t cap = r->capt ? r->capt * 2 : 64;
        lora_receipt_tensor *n = realloc(r->t, cap * sizeof *n);
        if (!n)
            return lora_oom(err);
        r->t = n;
        r->capt = cap;
    }
    lora_receipt_tensor *d = &r->t[r->nt];
    int rc = copy_tensor(d, t, err);
    r->nt++; /* counted even when incomplete, so that free finds it */
    if (rc)
        return rc;
    size_t n = fixes ? fixes->n : 0;
    uint64_t nb = fixes && fixes->coded ? fixes->nblocks : 0;
    size_t bitbytes = nb ? (size_t)((fixes->nbits + 7) / 8) : 0;
    size_t need = n * 20 + 11 + (size_t)nb * 10 + bitbytes;
    if (need > r->bufcap) {
        unsigned char *b = realloc(r->buf, need);
        if (!b)
            return lora_oom(err);
        r->buf = b;
        r->bufcap = need;
    }
    size_t len = 0;
    /* version 3: the rank bits first (block count 0: none, corrections as
     * in version 2) */
    len += put_varint(r->buf + len, nb);
    for (uint64_t b = 0; b < nb; b++)
        len += put_varint(r->buf + len, fixes->bstart[b + 1] - fixes->bstart[b]);
    if (bitbytes) {
        memcpy(r->buf + len, fixes->bits, bitbytes);
        if (fixes->nbits & 7) /* the last byte's unused bits are 0 */
            r->buf[len + bitbytes - 1] &= (unsigned char)((1u << (fixes->nbits & 7)) - 1);
    }
    len += bitbytes;
    d->ambiguous = nb ? fixes->nambig : 0;
    uint64_t prev = UINT64_MAX; /* so that the first gap is index - 0 */
    for (size_t i = 0; i < n; i++) {
        uint64_t gap = fixes->index[i] - (prev + 1);
        if (i && fixes->index[i] <= prev)
            return lora_seterr(err, LORA_EIO, "%s: corrections out of order", t->name);
        len += put_varint(r->buf + len, gap);
        len += put_varint(r->buf + len, zigzag(fixes->step[i]));
        prev = fixes->index[i];
    }
    d->nfixes = n;
    d->offset = r->at;
    d->length = len;
    crypto_generichash(d->fixes_hash, 32, r->buf, len, NULL, 0);
    rc = write_all(r, r->buf, len, err);
    if (rc || !t->dora)
        return rc;
    return put_norms(r, d, t->dora_norm, t->dora_length / 8, err);
}

/* A block of bytes kept as they are (a header, an index). */
static int put_block(lora_receipt *r, const void *buf, size_t len, uint64_t *off,
                     unsigned char hash[32], lora_error *err)
{
    *off = r->at;
    crypto_generichash(hash, 32, buf, len, NULL, 0);
    return write_all(r, buf, len, err);
}

int lora_receipt_add_file(lora_receipt *r, const char *name, const void *hdr, size_t len,
                          const unsigned char merged_header[32], lora_error *err)
{
    if (r->nf == RECEIPT_MAX_FILES)
        return lora_seterr(err, LORA_EUSAGE, "more than %d files in one receipt",
                           RECEIPT_MAX_FILES);
    if (r->nf == r->capf) {
        size_t cap = r->capf ? r->capf * 2 : 4;
        lora_receipt_file *n = realloc(r->f, cap * sizeof *n);
        if (!n)
            return lora_oom(err);
        r->f = n;
        r->capf = cap;
    }
    lora_receipt_file *f = &r->f[r->nf];
    memset(f, 0, sizeof *f);
    if (!(f->name = lora_strdup(name, err)))
        return LORA_EIO;
    r->nf++;
    f->header_len = len;
    memcpy(f->merged_header, merged_header, 32);
    return put_block(r, hdr, len, &f->offset, f->header_hash, err);
}

int lora_receipt_add_saved(lora_receipt *r, const char *name, lora_dtype dt, int ndim,
                           const uint64_t *shape, const void *data, uint64_t len,
                           unsigned char hash[32], lora_error *err)
{
    if (ndim < 0 || ndim > LORA_MAX_DIMS || !lora_dtype_bits(dt))
        return lora_seterr(err, LORA_EUSAGE, "%s: cannot keep this tensor", name);
    if (r->ns == r->caps) {
        size_t cap = r->caps ? r->caps * 2 : 4;
        lora_receipt_saved *n = realloc(r->s, cap * sizeof *n);
        if (!n)
            return lora_oom(err);
        r->s = n;
        r->caps = cap;
    }
    lora_receipt_saved *s = &r->s[r->ns];
    memset(s, 0, sizeof *s);
    if (!(s->name = lora_strdup(name, err)))
        return LORA_EIO;
    r->ns++;
    s->dtype = dt;
    s->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        s->shape[d] = shape[d];
    s->length = len;
    int rc = put_block(r, data, (size_t)len, &s->offset, s->hash, err);
    if (!rc && hash)
        memcpy(hash, s->hash, 32);
    return rc;
}

int lora_receipt_set_index(lora_receipt *r, const void *buf, size_t len, lora_error *err)
{
    r->has_index = 1;
    r->idx_len = len;
    return put_block(r, buf, len, &r->idx_off, r->idx_hash, err);
}

static json_t *hexj(const unsigned char h[32])
{
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, h, 32);
    return json_string(hex);
}

/* A merged tensor's digest: XXH3-128 since version 5 (tensorhash.c) */
static json_t *hexj_merged(const unsigned char h[32])
{
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, h, 16);
    return json_string(hex);
}

static json_t *index_json(const lora_receipt *r)
{
    json_t *root = json_object(), *ads = json_array(), *ts = json_array();
    if (!root || !ads || !ts) {
        json_decref(root);
        json_decref(ads);
        json_decref(ts);
        return NULL;
    }
    json_object_set_new(root, "format", json_string("lora-receipt"));
    json_object_set_new(root, "version", json_integer(r->version));
    json_object_set_new(root, "tool", json_string(r->tool));
    json_object_set_new(root, "rounding",
                        json_string(r->mode == LORA_ROUND_REVERSIBLE ? "reversible" : "nearest"));
    json_object_set_new(root, "hash", json_string(base_scheme(r->version)));
    json_object_set_new(root, "merged_hash", json_string("xxh3-128-tree"));
    for (size_t i = 0; i < r->nad; i++) {
        json_t *a = json_object();
        json_object_set_new(a, "path", json_string(r->ad[i].path));
        json_object_set_new(a, "blake2b", hexj(r->ad[i].hash));
        json_object_set_new(a, "weight", json_real(r->ad[i].weight));
        json_array_append_new(ads, a);
    }
    json_object_set_new(root, "adapters", ads);
    for (size_t i = 0; i < r->nt; i++) {
        const lora_receipt_tensor *t = &r->t[i];
        json_t *o = json_object(), *terms = json_array();
        json_object_set_new(o, "name", json_string(t->name));
        json_object_set_new(o, "base_dtype", json_string(lora_dtype_name(t->base_dtype)));
        json_object_set_new(o, "dtype", json_string(lora_dtype_name(t->dtype)));
        json_object_set_new(o, "shape", json_pack("[II]", (json_int_t)t->rows,
                                                  (json_int_t)t->cols));
        json_object_set_new(o, "base", hexj(t->base_hash));
        json_object_set_new(o, "merged", hexj_merged(t->merged_hash));
        for (size_t k = 0; k < t->nterms; k++)
            json_array_append_new(terms, json_pack("{sIsssfsb}", "adapter",
                                                   (json_int_t)t->terms[k].adapter, "module",
                                                   t->terms[k].module, "scale",
                                                   t->terms[k].scale, "transpose",
                                                   t->terms[k].transpose));
        json_object_set_new(o, "terms", terms);
        json_object_set_new(o, "fixes", json_integer((json_int_t)t->nfixes));
        json_object_set_new(o, "ambiguous", json_integer((json_int_t)t->ambiguous));
        json_object_set_new(o, "offset", json_integer((json_int_t)t->offset));
        json_object_set_new(o, "length", json_integer((json_int_t)t->length));
        json_object_set_new(o, "fixes_blake2b", hexj(t->fixes_hash));
        if (t->dora)
            json_object_set_new(o, "dora_norms", json_pack("{sIsIso}", "offset",
                                                           (json_int_t)t->dora_offset, "length",
                                                           (json_int_t)t->dora_length, "blake2b",
                                                           hexj(t->dora_hash)));
        json_array_append_new(ts, o);
    }
    json_object_set_new(root, "tensors", ts);
    json_t *fs = json_array();
    for (size_t i = 0; fs && i < r->nf; i++)
        json_array_append_new(fs, json_pack("{sss{sIsIso}so}", "name", r->f[i].name, "header",
                                            "offset", (json_int_t)r->f[i].offset, "length",
                                            (json_int_t)r->f[i].header_len, "blake2b",
                                            hexj(r->f[i].header_hash), "merged_header",
                                            hexj(r->f[i].merged_header)));
    json_object_set_new(root, "files", fs);
    json_t *ss = json_array();
    for (size_t i = 0; ss && i < r->ns; i++) {
        const lora_receipt_saved *s = &r->s[i];
        json_t *sh = json_array();
        for (int d = 0; sh && d < s->ndim; d++)
            json_array_append_new(sh, json_integer((json_int_t)s->shape[d]));
        json_array_append_new(ss, json_pack("{sssssos{sIsIso}}", "name", s->name, "dtype",
                                            lora_dtype_name(s->dtype), "shape", sh, "data",
                                            "offset", (json_int_t)s->offset, "length",
                                            (json_int_t)s->length, "blake2b", hexj(s->hash)));
    }
    json_object_set_new(root, "saved", ss);
    if (r->has_index)
        json_object_set_new(root, "index", json_pack("{sIsIso}", "offset",
                                                     (json_int_t)r->idx_off, "length",
                                                     (json_int_t)r->idx_len, "blake2b",
                                                     hexj(r->idx_hash)));
    return root;
}

int lora_receipt_finish(lora_receipt *r, lora_error *err)
{
    json_t *j = index_json(r);
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(j);
    if (!text)
        return lora_oom(err);
    size_t n = strlen(text);
    unsigned char trailer[16];
    for (int i = 0; i < 8; i++)
        trailer[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(trailer + 8, MAGIC, 8);
    int rc = write_all(r, text, n, err);
    free(text);
    if (!rc)
        rc = write_all(r, trailer, sizeof trailer, err);
    if (!rc && fsync(r->fd) != 0)
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: fsync", r->tmpname);
    if (!rc)
        r->finished = 1;
    return rc;
}

int lora_receipt_sign(lora_receipt *r, const lora_seckey *sk, lora_error *err)
{
    if (!r->finished)
        return lora_seterr(err, LORA_EUSAGE, "%s: signed before it was finished", r->path);
    unsigned char *buf = malloc(r->at ? (size_t)r->at : 1);
    if (!buf)
        return lora_oom(err);
    size_t got = 0;
    while (got < r->at) {
        ssize_t n = pread(r->fd, buf + got, (size_t)r->at - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            free(buf);
            return lora_seterr_errno(err, LORA_EIO, n ? errno : EIO, "%s: read back",
                                     r->tmpname);
        }
        got += (size_t)n;
    }
    const char *base = strrchr(r->path, '/') ? strrchr(r->path, '/') + 1 : r->path;
    char trusted[512];
    snprintf(trusted, sizeof trusted, "lora-receipt file:%.400s", base);
    for (char *c = trusted; *c; c++)
        if (*c < 0x20 || *c >= 0x7f)
            *c = '_';
    free(r->sig_text);
    r->sig_text = NULL;
    int rc = lora_sign(sk, buf, (size_t)r->at, trusted, "lora-tools receipt signature",
                       &r->sig_text, &r->sig_len, err);
    free(buf);
    if (!rc && !r->sig_path && asprintf(&r->sig_path, "%s.minisig", r->path) < 0) {
        r->sig_path = NULL;
        rc = lora_oom(err);
    }
    return rc;
}

int lora_receipt_install(lora_receipt *r, lora_error *err)
{
    int rc = r->finished ? LORA_OK
                         : lora_seterr(err, LORA_EUSAGE, "%s: installed before it was finished",
                                       r->path);
    /* the signature first: a crash between leaves the old receipt with a
     * signature that does not match it, refused, never a new receipt
     * passing under an old signature */
    if (!rc && r->sig_text)
        rc = lora_write_file_atomic(r->sig_path, r->sig_text, r->sig_len, 0644, err);
    if (!rc && r->staged) {
        /* PATH.new stays where it is on failure: it is the output's receipt */
        if (rename(r->tmpname, r->path) != 0)
            rc = lora_seterr_errno(err, LORA_EIO, errno, "cannot rename %s to %s", r->tmpname,
                                   r->path);
        else
            (void)lora_fsync_dir_of(r->path, NULL);
    } else if (!rc) {
        rc = lora_commit_tmpfile(r->fd, r->tmpname, r->path, err);
    } else if (!r->staged) {
        lora_tmp_unlink(r->tmpname);
    }
    close(r->fd);
    r->fd = -1;
    receipt_free(r);
    return rc;
}

int lora_receipt_stage_new(lora_receipt *r, lora_error *err)
{
    char *nw;
    if (!r->finished || r->staged)
        return lora_seterr(err, LORA_EUSAGE, "%s: staged twice or unfinished", r->path);
    if (asprintf(&nw, "%s.new", r->path) < 0)
        return lora_oom(err);
    if (rename(r->tmpname, nw) != 0) {
        int e = errno;
        free(nw);
        return lora_seterr_errno(err, LORA_EIO, e, "cannot rename %s to %s.new", r->tmpname,
                                 r->path);
    }
    lora_tmp_forget(r->tmpname);
    free(r->tmpname);
    r->tmpname = nw;
    r->staged = 1;
    (void)lora_fsync_dir_of(nw, NULL);
    return LORA_OK;
}

int lora_receipt_commit(lora_receipt *r, lora_error *err)
{
    int rc = lora_receipt_finish(r, err);
    if (rc) {
        lora_receipt_abort(r);
        return rc;
    }
    return lora_receipt_install(r, err);
}

void lora_receipt_abort(lora_receipt *r)
{
    if (!r)
        return;
    if (r->fd >= 0) {
        close(r->fd);
        lora_tmp_unlink(r->tmpname);
    }
    receipt_free(r);
}

/* ---- reading ---------------------------------------------------------- */

static int hex32(json_t *v, unsigned char out[32])
{
    const char *s = json_string_value(v);
    size_t bin = 0;
    if (!s || strlen(s) != 64)
        return -1;
    if (sodium_hex2bin(out, 32, s, 64, NULL, &bin, NULL) != 0 || bin != 32)
        return -1;
    return 0;
}

/* 32 hex digits into the first 16 bytes, the rest zero (XXH3-128) */
static int hex16(json_t *v, unsigned char out[32])
{
    const char *s = json_string_value(v);
    size_t bin = 0;
    memset(out, 0, 32);
    if (!s || strlen(s) != 32)
        return -1;
    if (sodium_hex2bin(out, 16, s, 32, NULL, &bin, NULL) != 0 || bin != 16)
        return -1;
    return 0;
}

static int get_u64(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* A kept block {offset, length, blake2b}: inside the data, at most MAX
 * bytes, its hash right (checked now: these blocks are small). */
static int parse_block(lora_receipt *r, json_t *o, uint64_t data_end, uint64_t max,
                       uint64_t *off, uint64_t *len, unsigned char hash[32])
{
    uint64_t end;
    unsigned char h[32];
    if (!json_is_object(o) || get_u64(json_object_get(o, "offset"), off) ||
        get_u64(json_object_get(o, "length"), len) ||
        hex32(json_object_get(o, "blake2b"), hash) || *off < sizeof MAGIC ||
        !lora_add_ok(*off, *len, &end) || end > data_end || *len > max)
        return -1;
    crypto_generichash(h, 32, r->map + *off, (size_t)*len, NULL, 0);
    return sodium_memcmp(h, hash, 32) == 0 ? 0 : -1;
}

/* Version 2: the tensors modules_to_save replaced, their base bytes kept
 * as blocks whose hash is checked when they are used (they may be large). */
static int parse_saved(lora_receipt *r, json_t *ss, uint64_t data_end, lora_error *err)
{
    if (!ss)
        return LORA_OK;
    if (!json_is_array(ss) || json_array_size(ss) > RECEIPT_MAX_FILES)
        return lora_seterr(err, LORA_EINPUT, "%s: saved must be an array of at most %d",
                           r->name, RECEIPT_MAX_FILES);
    size_t n = json_array_size(ss);
    if (n && !(r->s = calloc(n, sizeof *r->s)))
        return lora_oom(err);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(ss, i), *sh = json_object_get(o, "shape");
        json_t *b = json_object_get(o, "data");
        lora_receipt_saved *s = &r->s[i];
        const char *name = json_string_value(json_object_get(o, "name"));
        const char *dt = json_string_value(json_object_get(o, "dtype"));
        if (!name || !*name)
            return lora_seterr(err, LORA_EINPUT, "%s: saved tensor %zu has no name", r->name, i);
        if (!(s->name = lora_strdup(name, err)))
            return LORA_EIO;
        r->ns = i + 1;
        s->dtype = dt ? lora_dtype_from_name(dt) : LORA_DT_INVALID;
        uint64_t numel = 1, bits, end;
        int ok = lora_dtype_bits(s->dtype) && json_is_array(sh) &&
                 json_array_size(sh) <= LORA_MAX_DIMS;
        s->ndim = ok ? (int)json_array_size(sh) : 0;
        for (int d = 0; ok && d < s->ndim; d++)
            ok = !get_u64(json_array_get(sh, (size_t)d), &s->shape[d]) &&
                 lora_mul_ok(numel, s->shape[d], &numel);
        ok = ok && lora_mul_ok(numel, lora_dtype_bits(s->dtype), &bits) && bits % 8 == 0;
        if (!ok || !json_is_object(b) || get_u64(json_object_get(b, "offset"), &s->offset) ||
            get_u64(json_object_get(b, "length"), &s->length) ||
            hex32(json_object_get(b, "blake2b"), s->hash) || s->length != bits / 8 ||
            s->offset < sizeof MAGIC || !lora_add_ok(s->offset, s->length, &end) || end > data_end)
            return lora_seterr(err, LORA_EINPUT, "%s: saved tensor %s: needs a dtype, a shape and "
                               "a data block of that size inside the file", r->name, name);
        for (size_t q = 0; q < i; q++)
            if (strcmp(r->s[q].name, name) == 0)
                return lora_seterr(err, LORA_EINPUT, "%s: saved tensor %s listed twice", r->name,
                                   name);
    }
    return LORA_OK;
}

/* Version 2: files (the base's headers, the merged headers' hashes) and
 * the base's index. */
static int parse_files(lora_receipt *r, json_t *root, uint64_t data_end, lora_error *err)
{
    json_t *fs = json_object_get(root, "files"), *ix = json_object_get(root, "index");
    if (!json_is_array(fs) || json_array_size(fs) > RECEIPT_MAX_FILES)
        return lora_seterr(err, LORA_EINPUT, "%s: files must be an array of at most %d",
                           r->name, RECEIPT_MAX_FILES);
    size_t n = json_array_size(fs);
    if (n && !(r->f = calloc(n, sizeof *r->f)))
        return lora_oom(err);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(fs, i);
        lora_receipt_file *f = &r->f[i];
        const char *name = json_string_value(json_object_get(o, "name"));
        if (!name || !*name)
            return lora_seterr(err, LORA_EINPUT, "%s: file %zu has no name", r->name, i);
        if (!(f->name = lora_strdup(name, err)))
            return LORA_EIO;
        r->nf = i + 1;
        if (parse_block(r, json_object_get(o, "header"), data_end, LORA_ST_MAX_HEADER,
                        &f->offset, &f->header_len, f->header_hash) ||
            f->header_len == 0)
            return lora_seterr(err, LORA_EINPUT, "%s: file %s: the kept header is outside the "
                               "data, too long or corrupted (hash mismatch)", r->name, name);
        f->header = r->map + f->offset;
        if (hex32(json_object_get(o, "merged_header"), f->merged_header))
            return lora_seterr(err, LORA_EINPUT, "%s: file %s: merged_header must be 64 hex "
                               "digits", r->name, name);
        for (size_t q = 0; q < i; q++)
            if (strcmp(r->f[q].name, name) == 0)
                return lora_seterr(err, LORA_EINPUT, "%s: file %s listed twice", r->name, name);
    }
    int rc = parse_saved(r, json_object_get(root, "saved"), data_end, err);
    if (rc)
        return rc;
    if (ix) {
        if (parse_block(r, ix, data_end, LORA_RECEIPT_MAX_JSON, &r->idx_off, &r->idx_len,
                        r->idx_hash))
            return lora_seterr(err, LORA_EINPUT, "%s: the kept index is outside the data, too "
                               "long or corrupted (hash mismatch)", r->name);
        r->has_index = 1;
    }
    return LORA_OK;
}

/* In the index parsers below: refuse with a message, as bad input. */
#define BAD(...) return lora_seterr(err, LORA_EINPUT, __VA_ARGS__)

/* format, version, tool, rounding and the hash schemes. */
static int parse_header(lora_receipt *r, json_t *root, lora_error *err)
{
    if (!json_is_object(root))
        BAD("%s: index is not a JSON object", r->name);
    const char *fmt = json_string_value(json_object_get(root, "format"));
    if (!fmt || strcmp(fmt, "lora-receipt") != 0)
        BAD("%s: not a lora receipt (format field)", r->name);
    json_t *ver = json_object_get(root, "version");
    if (!json_is_integer(ver) || json_integer_value(ver) < 1 ||
        json_integer_value(ver) > RECEIPT_VERSION)
        BAD("%s: unsupported receipt version", r->name);
    r->version = (int)json_integer_value(ver);
    const char *tool = json_string_value(json_object_get(root, "tool"));
    if (!tool || !(r->tool = lora_strdup(tool, err)))
        BAD("%s: missing tool field", r->name);
    const char *rnd = json_string_value(json_object_get(root, "rounding"));
    if (!rnd || (strcmp(rnd, "nearest") && strcmp(rnd, "reversible")))
        BAD("%s: unknown rounding", r->name);
    r->mode = strcmp(rnd, "reversible") == 0 ? LORA_ROUND_REVERSIBLE : LORA_ROUND_NEAREST;
    const char *h = json_string_value(json_object_get(root, "hash"));
    /* base digests: BLAKE2b-256 trees up to version 4, SHA-256 in 5,
     * BLAKE3 from 6 */
    if (!h || strcmp(h, base_scheme(r->version)))
        BAD("%s: unknown hash scheme", r->name);
    /* version 5: merged tensors' digests are XXH3-128 trees */
    const char *mh = json_string_value(json_object_get(root, "merged_hash"));
    if (r->version >= 5 ? !mh || strcmp(mh, "xxh3-128-tree") : mh != NULL)
        BAD("%s: unknown merged_hash scheme", r->name);
    return LORA_OK;
}

/* The adapters merged: path, BLAKE2b, weight. */
static int parse_adapters(lora_receipt *r, json_t *ads, lora_error *err)
{
    size_t na = json_array_size(ads);
    for (size_t i = 0; i < na; i++) {
        json_t *a = json_array_get(ads, i);
        const char *p = json_string_value(json_object_get(a, "path"));
        json_t *w = json_object_get(a, "weight");
        if (!p || !json_is_number(w) || hex32(json_object_get(a, "blake2b"), r->ad[i].hash))
            BAD("%s: adapter %zu: needs path, blake2b (64 hex digits), weight", r->name, i);
        r->ad[i].weight = json_number_value(w);
        if (!(r->ad[i].path = lora_strdup(p, err)))
            return LORA_EIO;
        r->nad = i + 1;
    }
    return LORA_OK;
}

/* A tensor's terms: which adapter (an index below NA), module, scale,
 * transpose. */
static int parse_terms(lora_receipt *r, lora_receipt_tensor *t, json_t *terms, size_t na,
                       lora_error *err)
{
    if (!json_is_array(terms) || json_array_size(terms) == 0 || json_array_size(terms) > 64)
        BAD("%s: tensor %s: terms must be an array of 1 to 64", r->name, t->name);
    t->terms = calloc(json_array_size(terms), sizeof *t->terms);
    if (!t->terms)
        return lora_oom(err);
    for (size_t k = 0; k < json_array_size(terms); k++) {
        json_t *tm = json_array_get(terms, k);
        uint64_t ai;
        const char *mod = json_string_value(json_object_get(tm, "module"));
        json_t *sc = json_object_get(tm, "scale"), *tr = json_object_get(tm, "transpose");
        if (get_u64(json_object_get(tm, "adapter"), &ai) || ai >= na || !mod ||
            !json_is_number(sc) || !json_is_boolean(tr))
            BAD("%s: tensor %s: term %zu needs adapter (an index), module, scale, transpose",
                r->name, t->name, k);
        t->terms[k].adapter = (size_t)ai;
        t->terms[k].scale = json_number_value(sc);
        t->terms[k].transpose = json_is_true(tr);
        t->nterms = k + 1;
        if (!(t->terms[k].module = lora_strdup(mod, err)))
            return LORA_EIO;
    }
    return LORA_OK;
}

/* A DoRA tensor's norms: one term (a DoRA module is refused beside any
 * other), one double per output row, after *prev_end and inside the
 * data. */
static int parse_dora_norms(lora_receipt *r, lora_receipt_tensor *t, json_t *dn,
                            uint64_t *prev_end, uint64_t data_end, lora_error *err)
{
    uint64_t out = t->terms[0].transpose ? t->cols : t->rows, end;
    if (r->version < 4)
        BAD("%s: tensor %s: DoRA norms in a version %d receipt", r->name, t->name, r->version);
    if (!json_is_object(dn) || get_u64(json_object_get(dn, "offset"), &t->dora_offset) ||
        get_u64(json_object_get(dn, "length"), &t->dora_length) ||
        hex32(json_object_get(dn, "blake2b"), t->dora_hash) || t->nterms != 1 ||
        t->dora_length != 8 * out || t->dora_offset < *prev_end ||
        !lora_add_ok(t->dora_offset, t->dora_length, &end) || end > data_end)
        BAD("%s: tensor %s: dora_norms must be one term's %llu norms (offset, length, "
            "blake2b) inside the data", r->name, t->name, (unsigned long long)out);
    t->dora = 1;
    *prev_end = end;
    return LORA_OK;
}

/* A tensor's dtypes, shape and hashes. */
static int parse_tensor_kind(lora_receipt *r, lora_receipt_tensor *t, json_t *o, uint64_t *numel,
                             lora_error *err)
{
    const char *name = t->name;
    const char *bd = json_string_value(json_object_get(o, "base_dtype"));
    const char *dd = json_string_value(json_object_get(o, "dtype"));
    t->base_dtype = bd ? lora_dtype_from_name(bd) : LORA_DT_INVALID;
    t->dtype = dd ? lora_dtype_from_name(dd) : LORA_DT_INVALID;
    int k1, k2;
    size_t s1, s2;
    if (lora_fp_kind(t->base_dtype, &k1, &s1) || lora_fp_kind(t->dtype, &k2, &s2))
        BAD("%s: tensor %s: dtypes must be F32, F16 or BF16", r->name, name);
    json_t *sh = json_object_get(o, "shape");
    if (!json_is_array(sh) || json_array_size(sh) != 2 ||
        get_u64(json_array_get(sh, 0), &t->rows) || get_u64(json_array_get(sh, 1), &t->cols) ||
        !lora_mul_ok(t->rows, t->cols, numel) || *numel > (UINT64_C(1) << 48))
        BAD("%s: tensor %s: bad shape", r->name, name);
    if (hex32(json_object_get(o, "base"), t->base_hash) ||
        (r->version >= 5 ? hex16(json_object_get(o, "merged"), t->merged_hash)
                         : hex32(json_object_get(o, "merged"), t->merged_hash)) ||
        hex32(json_object_get(o, "fixes_blake2b"), t->fixes_hash))
        BAD("%s: tensor %s: hashes must be 64 hex digits (merged: 32 from version 5)", r->name,
            name);
    return LORA_OK;
}

/* Tensor I of the index: its kind, its corrections block (after
 * *prev_end, inside the data), its terms and DoRA norms, a name not
 * listed before. */
static int parse_tensor(lora_receipt *r, json_t *o, size_t i, size_t na, uint64_t *prev_end,
                        uint64_t data_end, lora_error *err)
{
    lora_receipt_tensor *t = &r->t[i];
    r->nt = i + 1;
    const char *name = json_string_value(json_object_get(o, "name"));
    if (!name || !*name)
        BAD("%s: tensor %zu has no name", r->name, i);
    if (!(t->name = lora_strdup(name, err)))
        return LORA_EIO;
    uint64_t numel = 0, end;
    int rc = parse_tensor_kind(r, t, o, &numel, err);
    if (rc)
        return rc;
    if (get_u64(json_object_get(o, "fixes"), &t->nfixes) ||
        get_u64(json_object_get(o, "offset"), &t->offset) ||
        get_u64(json_object_get(o, "length"), &t->length) ||
        !lora_add_ok(t->offset, t->length, &end) || t->offset < *prev_end || end > data_end)
        BAD("%s: tensor %s: corrections block outside the data", r->name, name);
    if (r->version >= 3 &&
        (get_u64(json_object_get(o, "ambiguous"), &t->ambiguous) || t->ambiguous > numel))
        BAD("%s: tensor %s: ambiguous must count elements of the tensor", r->name, name);
    if (t->nfixes > numel ||
        (r->version < 3 && (t->nfixes * 2 > t->length || (t->nfixes == 0 && t->length))) ||
        (r->version >= 3 && t->nfixes * 2 + 1 > t->length))
        BAD("%s: tensor %s: %llu corrections cannot fill %llu bytes", r->name, name,
            (unsigned long long)t->nfixes, (unsigned long long)t->length);
    *prev_end = end;
    if ((rc = parse_terms(r, t, json_object_get(o, "terms"), na, err)))
        return rc;
    json_t *dn = json_object_get(o, "dora_norms");
    if (dn && (rc = parse_dora_norms(r, t, dn, prev_end, data_end, err)))
        return rc;
    for (size_t q = 0; q < i; q++)
        if (strcmp(r->t[q].name, name) == 0)
            BAD("%s: tensor %s listed twice", r->name, name);
    return LORA_OK;
}

/* The adapters and tensors arrays, and (version 2 on) the files. */
static int parse_body(lora_receipt *r, json_t *root, uint64_t data_end, lora_error *err)
{
    json_t *ads = json_object_get(root, "adapters"), *ts = json_object_get(root, "tensors");
    if (!json_is_array(ads) || !json_is_array(ts))
        BAD("%s: adapters and tensors must be arrays", r->name);
    size_t na = json_array_size(ads), nt = json_array_size(ts);
    if (na == 0 || na > 64)
        BAD("%s: %zu adapters (1 to 64 allowed)", r->name, na);
    r->ad = calloc(na, sizeof *r->ad);
    r->t = nt ? calloc(nt, sizeof *r->t) : NULL;
    if (!r->ad || (nt && !r->t))
        return lora_oom(err);
    int rc = parse_adapters(r, ads, err);
    uint64_t prev_end = sizeof MAGIC;
    for (size_t i = 0; i < nt && !rc; i++)
        rc = parse_tensor(r, json_array_get(ts, i), i, na, &prev_end, data_end, err);
    if (!rc && r->version >= 2)
        rc = parse_files(r, root, data_end, err);
    return rc;
}
#undef BAD

static int parse_index(lora_receipt *r, const char *text, size_t len, uint64_t data_end,
                       lora_error *err)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return lora_seterr(err, LORA_EINPUT, "%s: index is not valid JSON: %s (line %d)", r->name,
                           je.text, je.line);
    int rc = parse_header(r, root, err);
    if (!rc)
        rc = parse_body(r, root, data_end, err);
    json_decref(root);
    return rc;
}

int lora_receipt_open_memory(const void *buf, size_t len, const char *name, lora_receipt **out,
                             lora_error *err)
{
    *out = NULL;
    lora_receipt *r = calloc(1, sizeof *r);
    if (!r)
        return lora_oom(err);
    r->fd = -1;
    r->map = buf;
    r->maplen = len;
    r->bytes = len;
    if (!(r->name = lora_strdup(name ? name : "receipt", err))) {
        receipt_free(r);
        return LORA_EIO;
    }
    const unsigned char *p = buf;
    if (len < 32 || memcmp(p, MAGIC, 8) != 0 || memcmp(p + len - 8, MAGIC, 8) != 0) {
        lora_seterr(err, LORA_EINPUT, "%s: not a lora receipt (bad magic or truncated)", r->name);
        receipt_free(r);
        return LORA_EINPUT;
    }
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)p[len - 16 + i] << (8 * i);
    if (n > LORA_RECEIPT_MAX_JSON || n > len - 24) {
        lora_seterr(err, LORA_EINPUT, "%s: index length %llu does not fit the file", r->name,
                    (unsigned long long)n);
        receipt_free(r);
        return LORA_EINPUT;
    }
    uint64_t data_end = len - 16 - n;
    int rc = parse_index(r, (const char *)p + data_end, (size_t)n, data_end, err);
    if (rc) {
        receipt_free(r);
        return rc;
    }
    *out = r;
    return LORA_OK;
}

int lora_receipt_open(const char *path, lora_receipt **out, lora_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lora_seterr_errno(err, errno == ENOENT ? LORA_EINPUT : LORA_EIO, errno, "%s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return lora_seterr_errno(err, LORA_EIO, e, "%s", path);
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size < 32) {
        close(fd);
        return lora_seterr(err, LORA_EINPUT, "%s: not a lora receipt (too short or not a file)",
                           path);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return lora_seterr_errno(err, LORA_EIO, e, "%s: mmap", path);
    int rc = lora_receipt_open_memory(m, (size_t)sb.st_size, path, out, err);
    if (rc) {
        munmap(m, (size_t)sb.st_size);
        return rc;
    }
    (*out)->mapped = 1;
    return LORA_OK;
}

void lora_receipt_close(lora_receipt *r)
{
    receipt_free(r);
}

lora_rounding lora_receipt_rounding(const lora_receipt *r) { return r->mode; }
int lora_receipt_version(const lora_receipt *r) { return r->version; }
size_t lora_receipt_file_count(const lora_receipt *r) { return r->nf; }
const lora_receipt_file *lora_receipt_file_at(const lora_receipt *r, size_t i)
{
    return i < r->nf ? &r->f[i] : NULL;
}
const lora_receipt_file *lora_receipt_file_find(const lora_receipt *r, const char *name)
{
    for (size_t i = 0; i < r->nf; i++)
        if (strcmp(r->f[i].name, name) == 0)
            return &r->f[i];
    return NULL;
}
size_t lora_receipt_saved_count(const lora_receipt *r) { return r->ns; }
const lora_receipt_saved *lora_receipt_saved_at(const lora_receipt *r, size_t i)
{
    return i < r->ns ? &r->s[i] : NULL;
}
const lora_receipt_saved *lora_receipt_saved_find(const lora_receipt *r, const char *name)
{
    for (size_t i = 0; i < r->ns; i++)
        if (strcmp(r->s[i].name, name) == 0)
            return &r->s[i];
    return NULL;
}
int lora_receipt_saved_data(const lora_receipt *r, const lora_receipt_saved *s,
                            const void **data, lora_error *err)
{
    unsigned char h[32];
    if (!r->map)
        return lora_seterr(err, LORA_EUSAGE, "%s: not an open receipt", r->name);
    crypto_generichash(h, 32, r->map + s->offset, (size_t)s->length, NULL, 0);
    if (sodium_memcmp(h, s->hash, 32) != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: the kept values of %s are corrupted (hash "
                           "mismatch)", r->name, s->name);
    *data = r->map + s->offset;
    return LORA_OK;
}

const unsigned char *lora_receipt_index(const lora_receipt *r, uint64_t *len)
{
    *len = r->has_index && r->map ? r->idx_len : 0;
    return r->has_index && r->map ? r->map + r->idx_off : NULL;
}
const char *lora_receipt_tool(const lora_receipt *r) { return r->tool; }
size_t lora_receipt_adapter_count(const lora_receipt *r) { return r->nad; }
const lora_receipt_adapter *lora_receipt_adapter_at(const lora_receipt *r, size_t i)
{
    return i < r->nad ? &r->ad[i] : NULL;
}
size_t lora_receipt_tensor_count(const lora_receipt *r) { return r->nt; }
const lora_receipt_tensor *lora_receipt_tensor_at(const lora_receipt *r, size_t i)
{
    return i < r->nt ? &r->t[i] : NULL;
}
const lora_receipt_tensor *lora_receipt_find(const lora_receipt *r, const char *name)
{
    for (size_t i = 0; i < r->nt; i++)
        if (strcmp(r->t[i].name, name) == 0)
            return &r->t[i];
    return NULL;
}
uint64_t lora_receipt_bytes(const lora_receipt *r) { return r->map ? r->bytes : r->at; }

static int get_varint(const unsigned char **p, const unsigned char *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return -1;
        unsigned char c = *(*p)++;
        if (shift == 63 && c > 1)
            return -1;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Version 3: the rank bits of tensor t (lora-receipt(5)): a block count
 * (0 or the tensor's row blocks), the bits of each block, the bits. */
static int read_bits(const lora_receipt *r, const lora_receipt_tensor *t,
                     const unsigned char **p, const unsigned char *end, lora_fixes *fixes,
                     lora_error *err)
{
    uint64_t nb, br = lora_block_rows(t->cols), want = (t->rows + br - 1) / br;
    if (get_varint(p, end, &nb))
        return lora_seterr(err, LORA_EINPUT, "%s: bits of %s are truncated", r->name, t->name);
    if (nb == 0) {
        if (t->ambiguous)
            return lora_seterr(err, LORA_EINPUT, "%s: %s counts %llu ambiguous elements but "
                               "holds no bits", r->name, t->name,
                               (unsigned long long)t->ambiguous);
        return LORA_OK;
    }
    if (nb != want)
        return lora_seterr(err, LORA_EINPUT, "%s: bits of %s are in %llu row blocks, the tensor "
                           "has %llu", r->name, t->name, (unsigned long long)nb,
                           (unsigned long long)want);
    uint64_t *bs = realloc(fixes->bstart, (size_t)(nb + 1) * sizeof *bs);
    if (!bs)
        return lora_oom(err);
    fixes->bstart = bs;
    fixes->nblocks = nb;
    bs[0] = 0;
    for (uint64_t b = 0; b < nb; b++) {
        uint64_t n, rows = t->rows - b * br < br ? t->rows - b * br : br;
        /* at most 32 bits per element (an F32 rank), and t->ambiguous ranks
         * of at least one bit each */
        if (get_varint(p, end, &n) || n > rows * t->cols * 32)
            return lora_seterr(err, LORA_EINPUT, "%s: bit counts of %s are truncated or too "
                               "large", r->name, t->name);
        bs[b + 1] = bs[b] + n;
    }
    uint64_t total = bs[nb], bytes = (total + 7) / 8;
    if (total < t->ambiguous || (uint64_t)(end - *p) < bytes)
        return lora_seterr(err, LORA_EINPUT, "%s: bits of %s are truncated (%llu bits for %llu "
                           "ambiguous elements)", r->name, t->name, (unsigned long long)total,
                           (unsigned long long)t->ambiguous);
    if ((total & 7) && ((*p)[bytes - 1] >> (total & 7)))
        return lora_seterr(err, LORA_EINPUT, "%s: bits of %s have stray bits", r->name, t->name);
    if (bytes > fixes->bitcap) {
        unsigned char *nbuf = realloc(fixes->bits, (size_t)bytes);
        if (!nbuf)
            return lora_oom(err);
        fixes->bits = nbuf;
        fixes->bitcap = bytes;
    }
    if (bytes)
        memcpy(fixes->bits, *p, (size_t)bytes);
    *p += bytes;
    fixes->nbits = total;
    fixes->nambig = t->ambiguous;
    fixes->coded = 1;
    return LORA_OK;
}

int lora_receipt_fixes(const lora_receipt *r, size_t i, lora_fixes *fixes, lora_error *err)
{
    fixes->n = 0;
    if (!r->map || i >= r->nt)
        return lora_seterr(err, LORA_EUSAGE, "no such receipt tensor");
    const lora_receipt_tensor *t = &r->t[i];
    const unsigned char *p = r->map + t->offset, *end = p + t->length;
    unsigned char h[32];
    crypto_generichash(h, 32, p, (size_t)t->length, NULL, 0);
    if (sodium_memcmp(h, t->fixes_hash, 32) != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: corrections of %s are corrupted (hash mismatch)",
                           r->name, t->name);
    uint64_t numel = t->rows * t->cols, prev = UINT64_MAX;
    fixes->coded = 0;
    fixes->nbits = fixes->nambig = 0;
    if (r->version >= 3) {
        int rc = read_bits(r, t, &p, end, fixes, err);
        if (rc)
            return rc;
    }
    for (uint64_t k = 0; k < t->nfixes; k++) {
        uint64_t gap, zz, idx;
        if (get_varint(&p, end, &gap) || get_varint(&p, end, &zz))
            return lora_seterr(err, LORA_EINPUT, "%s: corrections of %s are truncated", r->name,
                               t->name);
        if (!lora_add_ok(prev + 1, gap, &idx) || idx >= numel)
            return lora_seterr(err, LORA_EINPUT, "%s: a correction of %s lies outside the tensor",
                               r->name, t->name);
        int64_t step = unzigzag(zz);
        if (step == 0 || step > (INT64_C(1) << 33) || step < -(INT64_C(1) << 33))
            return lora_seterr(err, LORA_EINPUT, "%s: a correction of %s is out of range",
                               r->name, t->name);
        if (lora_fixes_push(fixes, idx, step))
            return lora_oom(err);
        prev = idx;
    }
    if (p != end)
        return lora_seterr(err, LORA_EINPUT, "%s: corrections of %s have trailing bytes", r->name,
                           t->name);
    return LORA_OK;
}

int lora_receipt_dora_norms(const lora_receipt *r, size_t i, double *norm, uint64_t n,
                            lora_error *err)
{
    if (!r->map || i >= r->nt)
        return lora_seterr(err, LORA_EUSAGE, "no such receipt tensor");
    const lora_receipt_tensor *t = &r->t[i];
    if (!t->dora || t->dora_length != 8 * n)
        return lora_seterr(err, LORA_EINPUT, "%s: %s: %s", r->name, t->name,
                           t->dora ? "the DoRA norms are for another number of rows"
                                   : "merged without DoRA norms (not a DoRA merge)");
    const unsigned char *p = r->map + t->dora_offset;
    unsigned char h[32];
    crypto_generichash(h, 32, p, (size_t)t->dora_length, NULL, 0);
    if (sodium_memcmp(h, t->dora_hash, 32) != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: DoRA norms of %s are corrupted (hash mismatch)",
                           r->name, t->name);
    for (uint64_t k = 0; k < n; k++) {
        uint64_t u = 0;
        for (int b = 0; b < 8; b++)
            u |= (uint64_t)p[8 * k + (uint64_t)b] << (8 * b);
        memcpy(&norm[k], &u, 8);
        if (!isfinite(norm[k]) || norm[k] <= 0)
            return lora_seterr(err, LORA_EINPUT, "%s: DoRA norm %llu of %s is %g (not a norm)",
                               r->name, (unsigned long long)k, t->name, norm[k]);
    }
    return LORA_OK;
}

int lora_receipt_open_signed(const char *path, const lora_pubkey *keys, size_t n,
                             lora_receipt **out, lora_error *err)
{
    *out = NULL;
    char *buf = NULL, *sig = NULL, *sp = NULL;
    size_t len = 0, slen = 0;
    lora_sig s;
    if (asprintf(&sp, "%s.minisig", path) < 0)
        return lora_oom(err);
    /* private bytes: what is verified is what is parsed and used */
    int rc = lora_read_file(path, (size_t)1 << 36, &buf, &len, err);
    if (!rc && (rc = lora_read_file(sp, LORA_MINISIG_MAX, &sig, &slen, err)))
        lora_err_prefix(err, "the receipt's signature");
    if (!rc)
        rc = lora_sig_parse(sig, slen, &s, err);
    if (!rc && (rc = lora_sig_verify_any(&s, keys, n, buf, len, NULL, err)))
        lora_err_prefix(err, "%s: the receipt's signature does not verify", path);
    if (!rc)
        rc = lora_receipt_open_memory(buf, len, path, out, err);
    free(sig);
    free(sp);
    if (rc) {
        free(buf);
        return rc;
    }
    (*out)->owned = buf;
    return LORA_OK;
}

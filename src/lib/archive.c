/*
 * archive.c - .lora archives (lora-archive(5)): write a signed pax tar
 * of an adapter; open one and verify everything in it before any byte
 * is used (signature, manifest, each member's size and BLAKE2b-256,
 * nothing missing, nothing extra, no hostile entry); extract; hand the
 * safetensors member to the adapter loader in place through mmap.
 *
 * Reading maps the whole file once: uncompressed members are then used
 * where they lie (their data offset is archive_filter_bytes(a, 0) right
 * after the header, formats.md section 3), and the whole-file hash the
 * registry keys blobs by costs one pass over the mapping.
 */
#include "internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MANIFEST_NAME "lora.json"
#define SIG_NAME "lora.json.minisig"
/* Room for tar headers (with pax records) around the members, when
 * bounding how far a zstd stream may expand. */
#define HEADER_SLACK (64 * 1024)

struct lora_archive_priv {
    void *map;
    size_t map_len;
    /* per payload member (manifest order): where its verified bytes are */
    const unsigned char **data;
    int64_t *offset;
    unsigned char **owned; /* decompressed copies (zstd) */
};

/* ------------------------------------------------------------------ */
/* writing                                                             */
/* ------------------------------------------------------------------ */

typedef struct srcfile {
    const char *name;  /* member name */
    char *path;
    const unsigned char *data;
    size_t len;
    void *map;         /* mmapped file, or NULL */
    unsigned char *heap;
} srcfile;

static void src_free(srcfile *s)
{
    if (s->map && s->len)
        munmap(s->map, s->len);
    free(s->heap);
    free(s->path);
}

static int src_load(srcfile *s, const char *name, const char *path, uint64_t limit, lora_error *err)
{
    memset(s, 0, sizeof *s);
    s->name = name;
    if (!(s->path = lora_strdup(path, err)))
        return LORA_EIO;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lora_seterr_errno(err, errno == ENOENT ? LORA_EINPUT : LORA_EIO, errno, "%s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return lora_seterr(err, LORA_EINPUT, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > limit) {
        close(fd);
        return lora_seterr(err, LORA_EINPUT, "%s: %lld bytes, more than the %llu an archive "
                                             "member %s may hold",
                           path, (long long)sb.st_size, (unsigned long long)limit, name);
    }
    s->len = (size_t)sb.st_size;
    if (s->len) {
        s->map = mmap(NULL, s->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (s->map == MAP_FAILED) {
            int e = errno;
            s->map = NULL;
            close(fd);
            return lora_seterr_errno(err, LORA_EIO, e, "%s: mmap", path);
        }
        s->data = s->map;
    }
    close(fd);
    return LORA_OK;
}

/* A write error of libarchive as "OUT: writing MEMBER: strerror": the
 * archive's own text alone ("Write error") names neither the file nor
 * the cause, and a full disk must say so. */
static int write_failed(struct archive *a, const char *out, const char *name, lora_error *err)
{
    int e = archive_errno(a);
    if (e > 0)
        return lora_seterr_errno(err, LORA_EIO, e, "%s: writing %s", out, name);
    return lora_seterr(err, LORA_EIO, "%s: writing %s: %s", out, name, archive_error_string(a));
}

static int write_member(struct archive *a, const char *out, const char *name, const void *data,
                        size_t len, lora_error *err)
{
    struct archive_entry *e = archive_entry_new();
    if (!e)
        return lora_oom(err);
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, (la_int64_t)len);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 0, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    int rc = LORA_OK;
    if (archive_write_header(a, e) != ARCHIVE_OK) {
        rc = write_failed(a, out, name, err);
        goto out;
    }
    const unsigned char *p = data;
    size_t done = 0;
    while (done < len) {
        size_t chunk = len - done > (1u << 20) ? (1u << 20) : len - done;
        la_ssize_t w = archive_write_data(a, p + done, chunk);
        if (w <= 0) {
            rc = write_failed(a, out, name, err);
            goto out;
        }
        done += (size_t)w;
    }
out:
    archive_entry_free(e);
    return rc;
}

/* r, lora_alpha, target_modules, base_model_name_or_path of the config */
static int read_config(const unsigned char *data, size_t len, lora_manifest *m, lora_error *err)
{
    json_error_t je;
    json_t *root = json_loadb((const char *)data, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return lora_seterr(err, LORA_EINPUT, "adapter_config.json: not valid JSON: %s (line %d)",
                           je.text, je.line);
    int rc = LORA_OK;
    json_t *v;
    if (!json_is_object(root)) {
        rc = lora_seterr(err, LORA_EINPUT, "adapter_config.json: not a JSON object");
        goto out;
    }
    v = json_object_get(root, "peft_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "LORA") != 0)) {
        rc = lora_seterr(err, LORA_EINPUT, "adapter_config.json: peft_type is not \"LORA\"");
        goto out;
    }
    v = json_object_get(root, "r");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1 << 20) {
        rc = lora_seterr(err, LORA_EINPUT, "adapter_config.json: \"r\" missing or not a positive "
                                           "integer");
        goto out;
    }
    m->r = (uint64_t)json_integer_value(v);
    v = json_object_get(root, "lora_alpha");
    m->alpha = json_is_number(v) ? json_number_value(v) : (double)m->r;
    v = json_object_get(root, "base_model_name_or_path");
    if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= 1024 &&
        strlen(json_string_value(v)) == json_string_length(v) &&
        !(m->base_model = lora_strdup(json_string_value(v), err))) {
        rc = LORA_EIO;
        goto out;
    }
    v = json_object_get(root, "target_modules");
    size_t n = json_is_array(v) ? json_array_size(v) : json_is_string(v) ? 1 : 0;
    if (n > LORA_ARCHIVE_MAX_TARGETS) {
        rc = lora_seterr(err, LORA_EINPUT, "adapter_config.json: too many target_modules");
        goto out;
    }
    m->targets = calloc(n + 1, sizeof *m->targets);
    if (!m->targets) {
        rc = lora_oom(err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(t) || json_string_length(t) == 0 || json_string_length(t) > 1024) {
            rc = lora_seterr(err, LORA_EINPUT, "adapter_config.json: target_modules must hold "
                                               "strings");
            goto out;
        }
        if (!(m->targets[i] = lora_strdup(json_string_value(t), err))) {
            rc = LORA_EIO;
            goto out;
        }
        m->n_targets = i + 1;
    }
out:
    json_decref(root);
    return rc;
}

static int name_field_ok(const char *what, const char *s, lora_error *err)
{
    size_t n = s ? strlen(s) : 0;
    int ok = n > 0 && n <= 128;
    for (size_t i = 0; ok && i < n; i++)
        ok = s[i] > 0x20 && s[i] < 0x7f;
    return ok ? LORA_OK
              : lora_seterr(err, LORA_EUSAGE, "--%s must be 1 to 128 printable ASCII characters "
                                              "without spaces",
                            what);
}

static char *path_join(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        return NULL;
    return p;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int lora_archive_create(const char *out_path, const lora_pack_opts *o, const lora_seckey *sk,
                        lora_error *err)
{
    int rc;
    if ((rc = name_field_ok("name", o->name, err)) || (rc = name_field_ok("task", o->task, err)) ||
        (rc = name_field_ok("version", o->version, err)))
        return rc;
    size_t nrec = 0;
    while (o->receipts && o->receipts[nrec])
        nrec++;
    size_t nsrc = 2 + (o->readme ? 1 : 0) + nrec;
    if (nsrc > LORA_ARCHIVE_MAX_MEMBERS)
        return lora_seterr(err, LORA_EUSAGE, "too many receipts (limit %d members)",
                           LORA_ARCHIVE_MAX_MEMBERS);
    srcfile *src = calloc(nsrc, sizeof *src);
    char **recnames = calloc(nrec + 1, sizeof *recnames);
    lora_manifest *m = calloc(1, sizeof *m);
    char *mtext = NULL, *sigtext = NULL, *tc = NULL, *tmp = NULL;
    size_t mlen = 0, siglen = 0;
    struct archive *a = NULL;
    int fd = -1;
    if (!src || !recnames || !m) {
        rc = lora_oom(err);
        goto out;
    }
    char *p;
    size_t k = 0;
    if (!(p = path_join(o->adapter_dir, "adapter_config.json"))) {
        rc = lora_oom(err);
        goto out;
    }
    rc = src_load(&src[k++], "adapter_config.json", p, LORA_ARCHIVE_TEXT_MAX, err);
    free(p);
    if (rc)
        goto out;
    if (!(p = path_join(o->adapter_dir, "adapter_model.safetensors"))) {
        rc = lora_oom(err);
        goto out;
    }
    rc = src_load(&src[k++], "adapter_model.safetensors", p, LORA_ARCHIVE_PAYLOAD_MAX, err);
    free(p);
    if (rc)
        goto out;
    if (o->readme && (rc = src_load(&src[k++], "README.md", o->readme, LORA_ARCHIVE_TEXT_MAX, err)))
        goto out;
    for (size_t i = 0; i < nrec; i++) {
        if (asprintf(&recnames[i], "receipts/%s", base_name(o->receipts[i])) < 0) {
            recnames[i] = NULL;
            rc = lora_oom(err);
            goto out;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(recnames[i], recnames[j]) == 0) {
                rc = lora_seterr(err, LORA_EUSAGE, "two receipts named %s", recnames[i] + 9);
                goto out;
            }
        if ((rc = src_load(&src[k++], recnames[i], o->receipts[i], LORA_ARCHIVE_RECEIPT_MAX, err)))
            goto out;
    }

    m->format_version = LORA_ARCHIVE_FORMAT_VERSION;
    if (!(m->name = lora_strdup(o->name, err)) || !(m->task = lora_strdup(o->task, err)) ||
        !(m->version = lora_strdup(o->version, err))) {
        rc = LORA_EIO;
        goto out;
    }
    if ((rc = read_config(src[0].data, src[0].len, m, err)))
        goto out;
    /* the adapter must load (the same checks every tool makes), and
     * with --base bind to that checkpoint */
    {
        lora_adapter *ad;
        if ((rc = lora_adapter_open(o->adapter_dir, &ad, err)))
            goto out;
        if (o->base) {
            lora_ckpt *ck;
            rc = lora_ckpt_open(o->base, &ck, err);
            if (!rc) {
                rc = lora_adapter_bind(ad, ck, err);
                if (!rc)
                    rc = lora_base_hash(ad, ck, m->base_hash, err);
                lora_ckpt_close(ck);
            }
            m->has_base_hash = rc == LORA_OK;
        }
        lora_adapter_free(ad);
        if (rc)
            goto out;
    }
    m->members = calloc(nsrc, sizeof *m->members);
    if (!m->members) {
        rc = lora_oom(err);
        goto out;
    }
    for (size_t i = 0; i < nsrc; i++) {
        if (!(m->members[i].name = lora_strdup(src[i].name, err))) {
            rc = LORA_EIO;
            goto out;
        }
        m->members[i].size = src[i].len;
        lora_hash(src[i].data, src[i].len, m->members[i].hash, LORA_HASH_BYTES);
        m->n_members = i + 1;
    }
    if ((rc = lora_manifest_format(m, &mtext, &mlen, err)))
        goto out;
    /* what we write must be what we read: a receipt name or a field the
     * reader would refuse stops here, not at the consumer */
    lora_manifest *check;
    if ((rc = lora_manifest_parse(mtext, mlen, &check, err))) {
        lora_err_prefix(err, "cannot pack");
        goto out;
    }
    lora_manifest_free(check);
    unsigned char mh[LORA_HASH_BYTES];
    lora_hash(mtext, mlen, mh, sizeof mh);
    if (!(tc = lora_manifest_trusted_comment(m, mh))) {
        rc = lora_oom(err);
        goto out;
    }
    char untrusted[128], id[LORA_KEYID_STR];
    lora_pubkey pk;
    lora_seckey_pubkey(sk, &pk);
    lora_keyid_str(pk.key_id, id);
    snprintf(untrusted, sizeof untrusted, "signature from lora-pack secret key %s", id);
    if ((rc = lora_sign(sk, mtext, mlen, tc, untrusted, &sigtext, &siglen, err)))
        goto out;

    if ((rc = lora_tmpfile_beside(out_path, 0644, &fd, &tmp, err)))
        goto out;
    a = archive_write_new();
    if (!a) {
        rc = lora_oom(err);
        goto out;
    }
    if ((o->compress ? archive_write_add_filter_zstd(a) : archive_write_add_filter_none(a)) !=
            ARCHIVE_OK ||
        archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
        archive_write_open_fd(a, fd) != ARCHIVE_OK) {
        rc = lora_seterr(err, LORA_EIO, "%s: %s", out_path, archive_error_string(a));
        goto out;
    }
    if ((rc = write_member(a, out_path, MANIFEST_NAME, mtext, mlen, err)) ||
        (rc = write_member(a, out_path, SIG_NAME, sigtext, siglen, err)))
        goto out;
    for (size_t i = 0; i < nsrc; i++)
        if ((rc = write_member(a, out_path, src[i].name, src[i].data, src[i].len, err)))
            goto out;
    if (archive_write_close(a) != ARCHIVE_OK) {
        rc = write_failed(a, out_path, "the end of the archive", err);
        goto out;
    }
    rc = lora_commit_tmpfile(fd, tmp, out_path, err);
    free(tmp);
    tmp = NULL;
out:
    if (a)
        archive_write_free(a);
    if (fd >= 0)
        close(fd);
    if (tmp) {
        lora_tmp_unlink(tmp);
        free(tmp);
    }
    for (size_t i = 0; src && i < nsrc; i++)
        src_free(&src[i]);
    free(src);
    for (size_t i = 0; recnames && i < nrec; i++)
        free(recnames[i]);
    free(recnames);
    lora_manifest_free(m);
    free(mtext);
    free(sigtext);
    free(tc);
    return rc;
}

/* ------------------------------------------------------------------ */
/* reading and verifying                                               */
/* ------------------------------------------------------------------ */

void lora_archive_close(lora_archive *ar)
{
    if (!ar)
        return;
    if (ar->priv) {
        lora_archive_priv *pv = ar->priv;
        for (size_t i = 0; ar->manifest && pv->owned && i < ar->manifest->n_members; i++)
            free(pv->owned[i]);
        free(pv->owned);
        free(pv->data);
        free(pv->offset);
        if (pv->map)
            munmap(pv->map, pv->map_len);
        free(pv);
    }
    lora_manifest_free(ar->manifest);
    free(ar->trusted_comment);
    free(ar->path);
    free(ar);
}

/* Names must be relative, without "." or ".." elements, before they are
 * even compared with the manifest, so the message says what is wrong. */
static int check_entry(struct archive_entry *e, const char *name, lora_error *err)
{
    if (name[0] == '/')
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": absolute path", name);
    for (const char *s = name; *s;) {
        size_t n = strcspn(s, "/");
        if ((n == 2 && strncmp(s, "..", 2) == 0))
            return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": path contains \"..\"", name);
        if (n == 0 || (n == 1 && s[0] == '.'))
            return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": not a plain relative path",
                               name);
        s += n;
        if (*s == '/')
            s++;
    }
    if (archive_entry_hardlink(e))
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": hard link (only regular files "
                                             "may be in an archive)",
                           name);
    switch (archive_entry_filetype(e)) {
    case AE_IFREG:
        break;
    case AE_IFLNK:
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": symbolic link (only regular "
                                             "files may be in an archive)",
                           name);
    case AE_IFCHR:
    case AE_IFBLK:
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": device (only regular files may "
                                             "be in an archive)",
                           name);
    case AE_IFDIR:
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": directory (only regular files "
                                             "may be in an archive)",
                           name);
    default:
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": not a regular file", name);
    }
    if (archive_entry_sparse_count(e) > 0)
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": sparse entry", name);
    if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0)
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": no size", name);
    return LORA_OK;
}

typedef struct rd {
    struct archive *a;
    lora_archive *ar;
    const unsigned char *map;
    size_t len;
    uint64_t bound;  /* most decompressed bytes the stream may yield */
} rd;

static int read_fail(rd *r, const char *what, lora_error *err)
{
    const char *msg = archive_error_string(r->a);
    return lora_seterr(err, LORA_EINPUT, "%s: %s", what, msg ? msg : "malformed archive");
}

static int next_header(rd *r, struct archive_entry **e, const char *expect, lora_error *err)
{
    int st = archive_read_next_header(r->a, e);
    if (st == ARCHIVE_EOF)
        return expect ? lora_seterr(err, LORA_EINPUT, "not a lora archive: %s missing", expect)
                      : ARCHIVE_EOF;
    if (st != ARCHIVE_OK)
        return read_fail(r, expect ? "not a lora archive" : "archive", err);
    if ((uint64_t)archive_filter_bytes(r->a, 0) > r->bound)
        return lora_seterr(err, LORA_EINPUT, "archive expands past its stated size (%llu bytes)",
                           (unsigned long long)r->bound);
    return LORA_OK;
}

/* Bytes of the current entry (size bytes): in place for uncompressed
 * archives (checked to lie inside the file), else decompressed into a
 * new buffer in *owned.  *off receives the data offset (or -1). */
static int entry_bytes(rd *r, const char *name, uint64_t size, const unsigned char **data,
                       unsigned char **owned, int64_t *off, lora_error *err)
{
    *owned = NULL;
    *off = -1;
    if (!r->ar->compressed) {
        uint64_t at = (uint64_t)archive_filter_bytes(r->a, 0), end;
        if (!lora_add_ok(at, size, &end) || end > r->len)
            return lora_seterr(err, LORA_EINPUT, "%s: truncated archive (member runs past the end "
                                                 "of the file)",
                               name);
        *data = r->map + at;
        *off = (int64_t)at;
        return LORA_OK;
    }
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf)
        return lora_oom(err);
    uint64_t got = 0;
    while (got < size) {
        la_ssize_t n = archive_read_data(r->a, buf + got, size - got);
        if (n < 0) {
            free(buf);
            return read_fail(r, name, err);
        }
        if (n == 0) {
            free(buf);
            return lora_seterr(err, LORA_EINPUT, "%s: truncated archive", name);
        }
        got += (uint64_t)n;
        if ((uint64_t)archive_filter_bytes(r->a, 0) > r->bound) {
            free(buf);
            return lora_seterr(err, LORA_EINPUT, "archive expands past its stated size");
        }
    }
    *data = buf;
    *owned = buf;
    return LORA_OK;
}

int lora_archive_open(const char *path, const lora_pubkey *keys, size_t nkeys, int flags,
                      lora_archive **out, lora_error *err)
{
    *out = NULL;
    int rc = LORA_OK;
    lora_archive *ar = calloc(1, sizeof *ar);
    lora_archive_priv *pv = calloc(1, sizeof *pv);
    struct archive *a = NULL;
    unsigned char *mown = NULL, *sown = NULL;
    lora_sig *sig = NULL;
    char *want_tc = NULL;
    char *seen = NULL;
    if (!ar || !pv) {
        free(ar);
        free(pv);
        return lora_oom(err);
    }
    ar->priv = pv;
    if (!(ar->path = lora_strdup(path, err))) {
        rc = LORA_EIO;
        goto out;
    }
    if (!(flags & LORA_ARCHIVE_NO_VERIFY) && nkeys == 0) {
        rc = lora_seterr(err, LORA_EUSAGE, "%s: no public key to verify the archive with", path);
        goto out;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = lora_seterr_errno(err, errno == ENOENT ? LORA_EINPUT : LORA_EIO, errno, "%s", path);
        goto out;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        rc = lora_seterr(err, LORA_EINPUT, "%s: not a regular file", path);
        goto out;
    }
    if (sb.st_size == 0) {
        close(fd);
        rc = lora_seterr(err, LORA_EINPUT, "%s: empty file", path);
        goto out;
    }
    pv->map_len = (size_t)sb.st_size;
    pv->map = mmap(NULL, pv->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (pv->map == MAP_FAILED) {
        pv->map = NULL;
        rc = lora_seterr_errno(err, LORA_EIO, e, "%s: mmap", path);
        goto out;
    }
    ar->file_size = pv->map_len;

    a = archive_read_new();
    if (!a) {
        rc = lora_oom(err);
        goto out;
    }
    archive_read_support_format_tar(a);
    archive_read_support_filter_none(a);
    archive_read_support_filter_zstd(a);
    if (archive_read_open_memory(a, pv->map, pv->map_len) != ARCHIVE_OK) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: not a lora archive: %s", path,
                         archive_error_string(a));
        goto out;
    }
    rd r = {a, ar, pv->map, pv->map_len, LORA_MANIFEST_MAX + LORA_MINISIG_MAX + HEADER_SLACK};
    struct archive_entry *ent;

    /* 1. the manifest */
    if ((rc = next_header(&r, &ent, MANIFEST_NAME, err)))
        goto out;
    ar->compressed = archive_filter_count(a) > 1;
    const char *name = archive_entry_pathname(ent);
    if (!name || strcmp(name, MANIFEST_NAME) != 0) {
        rc = lora_seterr(err, LORA_EINPUT, "not a lora archive: first member is \"%.200s\", not "
                                           "%s",
                         name ? name : "", MANIFEST_NAME);
        goto out;
    }
    if ((rc = check_entry(ent, name, err)))
        goto out;
    uint64_t mlen = (uint64_t)archive_entry_size(ent);
    if (mlen > LORA_MANIFEST_MAX) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: %llu bytes, limit %d (oversized manifest)",
                         MANIFEST_NAME, (unsigned long long)mlen, LORA_MANIFEST_MAX);
        goto out;
    }
    const unsigned char *mdata;
    int64_t off;
    if ((rc = entry_bytes(&r, MANIFEST_NAME, mlen, &mdata, &mown, &off, err)))
        goto out;

    /* 2. its signature */
    if ((rc = next_header(&r, &ent, SIG_NAME, err)))
        goto out;
    name = archive_entry_pathname(ent);
    if (!name || strcmp(name, SIG_NAME) != 0) {
        rc = lora_seterr(err, LORA_EINPUT, "not a lora archive: second member is \"%.200s\", not "
                                           "%s",
                         name ? name : "", SIG_NAME);
        goto out;
    }
    if ((rc = check_entry(ent, name, err)))
        goto out;
    uint64_t slen = (uint64_t)archive_entry_size(ent);
    if (slen > LORA_MINISIG_MAX) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: %llu bytes, limit %d", SIG_NAME,
                         (unsigned long long)slen, LORA_MINISIG_MAX);
        goto out;
    }
    const unsigned char *sdata;
    if ((rc = entry_bytes(&r, SIG_NAME, slen, &sdata, &sown, &off, err)))
        goto out;
    if (!(sig = malloc(sizeof *sig))) {
        rc = lora_oom(err);
        goto out;
    }
    if ((rc = lora_sig_parse((const char *)sdata, slen, sig, err))) {
        lora_err_prefix(err, "%s", SIG_NAME);
        goto out;
    }
    memcpy(ar->key_id, sig->key_id, LORA_KEYID_BYTES);
    if (!(ar->trusted_comment = lora_strdup(sig->trusted, err))) {
        rc = LORA_EIO;
        goto out;
    }
    /* the signature comes before the manifest is even parsed: a parser
     * bug cannot be reached by anyone without a trusted key */
    if (!(flags & LORA_ARCHIVE_NO_VERIFY)) {
        if ((rc = lora_sig_verify_any(sig, keys, nkeys, mdata, mlen, &ar->signer, err))) {
            lora_err_prefix(err, "%s", SIG_NAME);
            goto out;
        }
        ar->signature_checked = 1;
    }
    if ((rc = lora_manifest_parse((const char *)mdata, mlen, &ar->manifest, err)))
        goto out;
    unsigned char mh[LORA_HASH_BYTES];
    lora_hash(mdata, mlen, mh, sizeof mh);
    if (!(want_tc = lora_manifest_trusted_comment(ar->manifest, mh))) {
        rc = lora_oom(err);
        goto out;
    }
    if (ar->signature_checked && strcmp(want_tc, sig->trusted) != 0) {
        rc = lora_seterr(err, LORA_ECHECK, "%s: trusted comment \"%.300s\" does not name this "
                                           "manifest",
                         SIG_NAME, sig->trusted);
        goto out;
    }

    /* 3. the payload, every member exactly as the manifest says */
    lora_manifest *m = ar->manifest;
    pv->data = calloc(m->n_members + 1, sizeof *pv->data);
    pv->offset = calloc(m->n_members + 1, sizeof *pv->offset);
    pv->owned = calloc(m->n_members + 1, sizeof *pv->owned);
    seen = calloc(m->n_members + 1, 1);
    if (!pv->data || !pv->offset || !pv->owned || !seen) {
        rc = lora_oom(err);
        goto out;
    }
    r.bound = mlen + slen + HEADER_SLACK * (m->n_members + 3);
    for (size_t i = 0; i < m->n_members; i++) {
        r.bound += m->members[i].size;
        pv->offset[i] = -1;
    }
    for (;;) {
        rc = next_header(&r, &ent, NULL, err);
        if (rc == ARCHIVE_EOF) {
            rc = LORA_OK;
            break;
        }
        if (rc)
            goto out;
        name = archive_entry_pathname(ent);
        if (!name) {
            rc = lora_seterr(err, LORA_EINPUT, "member without a name");
            goto out;
        }
        if ((rc = check_entry(ent, name, err)))
            goto out;
        if (strcmp(name, MANIFEST_NAME) == 0 || strcmp(name, SIG_NAME) == 0) {
            rc = lora_seterr(err, LORA_EINPUT, "duplicate member %s", name);
            goto out;
        }
        const lora_manifest_member *mm = lora_manifest_find(m, name);
        if (!mm) {
            rc = lora_seterr(err, LORA_ECHECK, "member \"%.200s\" is not in the manifest", name);
            goto out;
        }
        size_t idx = (size_t)(mm - m->members);
        if (seen[idx]) {
            rc = lora_seterr(err, LORA_EINPUT, "duplicate member %s", name);
            goto out;
        }
        seen[idx] = 1;
        uint64_t size = (uint64_t)archive_entry_size(ent);
        if (size != mm->size) {
            rc = lora_seterr(err, LORA_ECHECK, "%s: %llu bytes in the archive, %llu in the manifest",
                             name, (unsigned long long)size, (unsigned long long)mm->size);
            goto out;
        }
        if ((rc = entry_bytes(&r, name, size, &pv->data[idx], &pv->owned[idx], &pv->offset[idx],
                              err)))
            goto out;
        unsigned char h[LORA_HASH_BYTES];
        lora_hash(pv->data[idx], size, h, sizeof h);
        if (memcmp(h, mm->hash, LORA_HASH_BYTES) != 0) {
            rc = lora_seterr(err, LORA_ECHECK, "%s: BLAKE2b-256 differs from the manifest (member "
                                               "altered)",
                             name);
            goto out;
        }
    }
    for (size_t i = 0; i < m->n_members; i++)
        if (!seen[i]) {
            rc = lora_seterr(err, LORA_ECHECK, "member %s of the manifest is missing",
                             m->members[i].name);
            goto out;
        }
out:
    if (a)
        archive_read_free(a);
    free(mown);
    free(sown);
    free(sig);
    free(want_tc);
    free(seen);
    if (rc) {
        if (!strstr(err ? err->msg : "", path))
            lora_err_prefix(err, "%s", path);
        lora_archive_close(ar);
        return rc;
    }
    *out = ar;
    return LORA_OK;
}

static const lora_manifest_member *find_idx(const lora_archive *ar, const char *name, size_t *idx)
{
    const lora_manifest_member *mm = lora_manifest_find(ar->manifest, name);
    if (mm)
        *idx = (size_t)(mm - ar->manifest->members);
    return mm;
}

const void *lora_archive_member(const lora_archive *ar, const char *name, uint64_t *size)
{
    size_t i;
    const lora_manifest_member *mm = find_idx(ar, name, &i);
    if (!mm)
        return NULL;
    if (size)
        *size = mm->size;
    return ar->priv->data[i] ? (const void *)ar->priv->data[i] : (const void *)"";
}

void lora_archive_file_hash(const lora_archive *ar, unsigned char out[LORA_HASH_BYTES])
{
    lora_hash(ar->priv->map, ar->priv->map_len, out, LORA_HASH_BYTES);
}

int64_t lora_archive_member_offset(const lora_archive *ar, const char *name)
{
    size_t i;
    return find_idx(ar, name, &i) ? ar->priv->offset[i] : -1;
}

int lora_archive_extract(const lora_archive *ar, const char *dir, int force, lora_error *err)
{
    const lora_manifest *m = ar->manifest;
    struct stat sb;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s", dir);
    if (lstat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return lora_seterr(err, LORA_EINPUT, "%s: not a folder", dir);
    int rc = LORA_OK;
    /* check everything first, so that a refusal writes nothing */
    for (size_t i = 0; i < m->n_members; i++) {
        const char *name = m->members[i].name;
        char *p = path_join(dir, name);
        if (!p)
            return lora_oom(err);
        if (strncmp(name, "receipts/", 9) == 0) {
            char *d = path_join(dir, "receipts");
            if (!d) {
                free(p);
                return lora_oom(err);
            }
            if (lstat(d, &sb) == 0 && !S_ISDIR(sb.st_mode))
                rc = lora_seterr(err, LORA_EINPUT, "%s: exists and is not a folder", d);
            free(d);
        }
        if (!rc && lstat(p, &sb) == 0) {
            if (!S_ISREG(sb.st_mode))
                rc = lora_seterr(err, LORA_EINPUT, "%s: exists and is not a regular file", p);
            else if (!force)
                rc = lora_seterr(err, LORA_EUSAGE, "%s: exists (use --force to overwrite)", p);
        }
        free(p);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < m->n_members && !rc; i++) {
        const char *name = m->members[i].name;
        if (strncmp(name, "receipts/", 9) == 0) {
            char *d = path_join(dir, "receipts");
            if (!d)
                return lora_oom(err);
            if (mkdir(d, 0755) != 0 && errno != EEXIST)
                rc = lora_seterr_errno(err, LORA_EIO, errno, "%s", d);
            free(d);
            if (rc)
                break;
        }
        char *p = path_join(dir, name);
        if (!p)
            return lora_oom(err);
        rc = lora_write_file_atomic(p, lora_archive_member(ar, name, NULL), m->members[i].size,
                                    0644, err);
        free(p);
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* the adapter inside, and the base it was made for                    */
/* ------------------------------------------------------------------ */

static void release_archive(void *arg)
{
    lora_archive_close(arg);
}

int lora_archive_open_adapter(const char *path, const lora_pubkey *keys, size_t n, int flags,
                              lora_adapter **out, lora_error *err)
{
    *out = NULL;
    lora_archive *ar;
    int rc = lora_archive_open(path, keys, n, flags, &ar, err);
    if (rc)
        return rc;
    uint64_t clen, slen;
    const char *cfg = lora_archive_member(ar, "adapter_config.json", &clen);
    const void *tensors = lora_archive_member(ar, "adapter_model.safetensors", &slen);
    char *label = NULL;
    if (asprintf(&label, "%s:adapter_model.safetensors", path) < 0) {
        lora_archive_close(ar);
        return lora_oom(err);
    }
    lora_st *st;
    /* the bytes were hashed against the signed manifest just now */
    rc = lora_st_open_memory(tensors, (size_t)slen, label, &st, err);
    free(label);
    if (rc) {
        lora_archive_close(ar);
        return rc;
    }
    lora_adapter *ad;
    rc = lora_adapter_open_parts(cfg, (size_t)clen, st, path, &ad, err); /* owns st */
    if (rc) {
        lora_archive_close(ar);
        return rc;
    }
    ad->release = release_archive;
    ad->release_arg = ar;
    ad->has_base_hash = ar->manifest->has_base_hash; /* the base identity (baseid.c) */
    memcpy(ad->base_hash, ar->manifest->base_hash, sizeof ad->base_hash);
    ad->recorded_base = ar->manifest->base_model;
    *out = ad;
    return LORA_OK;
}

/* lora_base_hash, what identifies a base for an adapter: baseid.c */

/*
 * archive.c - .lora archives (lora-archive(5)): write a signed pax tar
 * of an adapter; open one and verify everything in it before any byte
 * is used (signature, manifest, each member's size and BLAKE2b-256,
 * nothing missing, nothing extra, no hostile entry); extract into a
 * folder that appears whole; hand the safetensors member to the
 * adapter loader.
 *
 * Reading copies the whole file into private memory once (a zstd
 * archive is then decompressed, within a ratio bound): what is hashed
 * and verified is exactly what every consumer uses, whatever happens
 * to the file afterwards.  The tar stream is read twice, by libarchive
 * and by a strict walker (archive_tar.c), which must agree.
 */
#include "internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/file.h>
#include <dirent.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define MANIFEST_NAME "lora.json"
#define SIG_NAME "lora.json.minisig"
/* Room for tar headers (with pax records) around the members, when
 * bounding how far a zstd stream may expand. */
#define HEADER_SLACK (64 * 1024)


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
        return lora_seterr_path(err, errno, 0, path);
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

/* Remove a folder that holds files and folders of files (receipts/). */
static void remove_tree(const char *path, int depth)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            char *p = path_join(path, de->d_name);
            if (!p)
                break;
            struct stat sb;
            if (depth > 0 && lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
                remove_tree(p, depth - 1);
            else
                unlink(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(path);
}

/* Temporaries PATH<tag>XXXXXX beside PATH (folders when is_dir, else
 * files) that no running writer holds locked: what a killed run left. */
static void remove_stale(const char *path, const char *tag, int is_dir)
{
    char *parent = lora_strdup(path, NULL);
    if (!parent)
        return;
    char *slash = strrchr(parent, '/');
    const char *base = slash ? path + (slash - parent) + 1 : path;
    if (slash == parent)
        parent[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(parent, ".");
    size_t bl = strlen(base), tl = strlen(tag);
    DIR *d = opendir(parent);
    while (d) {
        struct dirent *de = readdir(d);
        if (!de)
            break;
        const char *nm = de->d_name;
        if (strlen(nm) != bl + tl + 6 || strncmp(nm, base, bl) != 0 || strncmp(nm + bl, tag, tl) != 0)
            continue;
        char *p = path_join(parent, nm);
        int fd = p ? open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (is_dir ? O_DIRECTORY : 0)) : -1;
        struct stat sb;
        if (fd >= 0 && fstat(fd, &sb) == 0 && (is_dir ? S_ISDIR(sb.st_mode) : S_ISREG(sb.st_mode)) &&
            flock(fd, LOCK_EX | LOCK_NB) == 0) {
            if (is_dir)
                remove_tree(p, 1);
            else
                unlink(p);
        }
        if (fd >= 0)
            close(fd);
        free(p);
    }
    if (d)
        closedir(d);
    free(parent);
}

/* The files to pack, in archive order: the config, the tensors, the
 * README, the receipts (named receipts/BASENAME, unique). */
static int load_sources(const lora_pack_opts *o, srcfile *src, char **recnames, size_t nrec,
                        lora_error *err)
{
    static const char *const parts[2] = {"adapter_config.json", "adapter_model.safetensors"};
    static const uint64_t limit[2] = {LORA_ARCHIVE_TEXT_MAX, LORA_ARCHIVE_PAYLOAD_MAX};
    size_t k = 0;
    int rc;
    for (int i = 0; i < 2; i++) {
        char *p = path_join(o->adapter_dir, parts[i]);
        if (!p)
            return lora_oom(err);
        rc = src_load(&src[k++], parts[i], p, limit[i], err);
        free(p);
        if (rc)
            return rc;
    }
    if (o->readme && (rc = src_load(&src[k++], "README.md", o->readme, LORA_ARCHIVE_TEXT_MAX, err)))
        return rc;
    for (size_t i = 0; i < nrec; i++) {
        if (asprintf(&recnames[i], "receipts/%s", base_name(o->receipts[i])) < 0) {
            recnames[i] = NULL;
            return lora_oom(err);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(recnames[i], recnames[j]) == 0)
                return lora_seterr(err, LORA_EUSAGE, "two receipts named %s", recnames[i] + 9);
        if ((rc = src_load(&src[k++], recnames[i], o->receipts[i], LORA_ARCHIVE_RECEIPT_MAX, err)))
            return rc;
    }
    return LORA_OK;
}

/* The adapter must load (the same checks every tool makes), and with
 * --base bind to that checkpoint, whose hash the manifest records. */
static int check_adapter(const lora_pack_opts *o, lora_manifest *m, lora_error *err)
{
    lora_adapter *ad;
    int rc = lora_adapter_open(o->adapter_dir, &ad, err);
    if (rc)
        return rc;
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
    return rc;
}

/* The manifest of the sources, as canonical text that the reader
 * accepts (what we write must be what we read: a receipt name or a
 * field the reader would refuse stops here, not at the consumer). */
static int build_manifest(const lora_pack_opts *o, const srcfile *src, size_t nsrc,
                          lora_manifest *m, char **mtext, size_t *mlen, lora_error *err)
{
    int rc;
    m->format_version = LORA_ARCHIVE_FORMAT_VERSION;
    if (!(m->name = lora_strdup(o->name, err)) || !(m->task = lora_strdup(o->task, err)) ||
        !(m->version = lora_strdup(o->version, err)))
        return LORA_EIO;
    if ((rc = read_config(src[0].data, src[0].len, m, err)) || (rc = check_adapter(o, m, err)))
        return rc;
    if (!(m->members = calloc(nsrc, sizeof *m->members)))
        return lora_oom(err);
    for (size_t i = 0; i < nsrc; i++) {
        if (!(m->members[i].name = lora_strdup(src[i].name, err)))
            return LORA_EIO;
        m->members[i].size = src[i].len;
        lora_hash(src[i].data, src[i].len, m->members[i].hash, LORA_HASH_BYTES);
        m->n_members = i + 1;
    }
    if ((rc = lora_manifest_format(m, mtext, mlen, err)))
        return rc;
    lora_manifest *check;
    if ((rc = lora_manifest_parse(*mtext, *mlen, &check, err))) {
        lora_err_prefix(err, "cannot pack");
        return rc;
    }
    lora_manifest_free(check);
    return LORA_OK;
}

/* The minisign signature of the manifest text, its trusted comment
 * naming the archive and the manifest's hash. */
static int sign_manifest(const lora_manifest *m, const char *mtext, size_t mlen,
                         const lora_seckey *sk, char **sigtext, size_t *siglen, lora_error *err)
{
    unsigned char mh[LORA_HASH_BYTES];
    lora_hash(mtext, mlen, mh, sizeof mh);
    char *tc = lora_manifest_trusted_comment(m, mh);
    if (!tc)
        return lora_oom(err);
    char untrusted[128], id[LORA_KEYID_STR];
    lora_pubkey pk;
    lora_seckey_pubkey(sk, &pk);
    lora_keyid_str(pk.key_id, id);
    snprintf(untrusted, sizeof untrusted, "signature from lora-pack secret key %s", id);
    int rc = lora_sign(sk, mtext, mlen, tc, untrusted, sigtext, siglen, err);
    free(tc);
    return rc;
}

/* The tar (temporary beside out_path, fsync, rename).  OUT.tmp-XXXXXX
 * of ours is flock()ed while written: those nobody holds were left by
 * a killed run (a 64 GiB adapter's, say) and are removed first. */
static int write_archive(const char *out_path, int compress, const char *mtext, size_t mlen,
                         const char *sigtext, size_t siglen, const srcfile *src, size_t nsrc,
                         lora_error *err)
{
    int fd = -1, rc;
    char *tmp = NULL;
    remove_stale(out_path, ".tmp-", 0);
    if ((rc = lora_tmpfile_beside(out_path, 0644, &fd, &tmp, err)))
        return rc;
    flock(fd, LOCK_EX);
    struct archive *a = archive_write_new();
    if (!a) {
        rc = lora_oom(err);
        goto out;
    }
    if ((compress ? archive_write_add_filter_zstd(a) : archive_write_add_filter_none(a)) !=
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
    close(fd);
    if (tmp) {
        lora_tmp_unlink(tmp);
        free(tmp);
    }
    return rc;
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
    char *mtext = NULL, *sigtext = NULL;
    size_t mlen = 0, siglen = 0;
    if (!src || !recnames || !m)
        rc = lora_oom(err);
    else if (!(rc = load_sources(o, src, recnames, nrec, err)) &&
             !(rc = build_manifest(o, src, nsrc, m, &mtext, &mlen, err)) &&
             !(rc = sign_manifest(m, mtext, mlen, sk, &sigtext, &siglen, err)))
        rc = write_archive(out_path, o->compress, mtext, mlen, sigtext, siglen, src, nsrc, err);
    for (size_t i = 0; src && i < nsrc; i++)
        src_free(&src[i]);
    free(src);
    for (size_t i = 0; recnames && i < nrec; i++)
        free(recnames[i]);
    free(recnames);
    lora_manifest_free(m);
    free(mtext);
    free(sigtext);
    return rc;
}

/* ------------------------------------------------------------------ */
/* reading and verifying                                               */
/* ------------------------------------------------------------------ */

/* Every consumer uses the bytes that were verified: the file is read
 * (pread, not mmap) into private memory once, and the hashes, the
 * signature check and every later use work on that copy.  A file
 * rewritten in place after the check, or truncated, changes nothing a
 * tool reads (issue 20 item 1). */

/* A zstd archive may expand at most EXPAND_RATIO times its size, and
 * always to EXPAND_FLOOR bytes: adapters compress 1.1 to 3 times, a
 * stream of zeros thousands of times (a decompression bomb). */
#define EXPAND_RATIO 256
#define EXPAND_FLOOR (16u << 20)
#define ARCHIVE_FILE_MAX                                                                           \
    (LORA_ARCHIVE_PAYLOAD_MAX + (uint64_t)LORA_ARCHIVE_MAX_MEMBERS *                               \
                                    (LORA_ARCHIVE_RECEIPT_MAX + HEADER_SLACK))

struct lora_archive_priv {
    unsigned char *file;  /* the file's bytes, read into private memory */
    size_t file_len;
    unsigned char *tar;   /* the tar stream: file, or its decompressed copy */
    size_t tar_len;
    lora_tar_ent *ents;   /* every entry, as the strict walker read it */
    size_t n_ents;
};

void lora_archive_close(lora_archive *ar)
{
    if (!ar)
        return;
    if (ar->priv) {
        lora_archive_priv *pv = ar->priv;
        if (pv->tar != pv->file)
            free(pv->tar);
        free(pv->file);
        lora_tar_ents_free(pv->ents, pv->n_ents);
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
    if (archive_entry_hardlink(e) || archive_entry_symlink(e) ||
        archive_entry_filetype(e) != AE_IFREG)
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": not a regular file", name);
    if (archive_entry_sparse_count(e) > 0)
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": sparse entry", name);
    if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0)
        return lora_seterr(err, LORA_EINPUT, "member \"%.200s\": no size", name);
    return LORA_OK;
}

/* The file's bytes into private memory, all of them: a file that
 * shrinks or grows while it is read is refused. */
int lora_archive_read_fd(int fd, const char *label, unsigned char **buf, size_t *len,
                         lora_error *err)
{
    *buf = NULL;
    *len = 0;
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s", label);
    if (!S_ISREG(sb.st_mode))
        return lora_seterr(err, LORA_EINPUT, "%s: not a regular file", label);
    if (sb.st_size == 0)
        return lora_seterr(err, LORA_EINPUT, "%s: empty file", label);
    if ((uint64_t)sb.st_size > ARCHIVE_FILE_MAX || (uint64_t)sb.st_size > SIZE_MAX)
        return lora_seterr(err, LORA_EINPUT, "%s: %lld bytes, more than any archive may hold",
                           label, (long long)sb.st_size);
    size_t n = (size_t)sb.st_size, got = 0;
    unsigned char *p = malloc(n);
    if (!p)
        return lora_oom(err);
    int rc = LORA_OK;
    while (!rc && got < n) {
        ssize_t r = pread(fd, p + got, n - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: read", label);
        else if (r == 0)
            rc = lora_seterr(err, LORA_EINPUT, "%s: the file shrank while it was read", label);
        else
            got += (size_t)r;
    }
    char c;
    if (!rc && pread(fd, &c, 1, (off_t)n) > 0)
        rc = lora_seterr(err, LORA_EINPUT, "%s: the file grew while it was read", label);
    if (rc) {
        free(p);
        return rc;
    }
    *buf = p;
    *len = n;
    return LORA_OK;
}

static int is_zstd(const unsigned char *p, size_t n)
{
    return n >= 4 && p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd;
}

/* The tar stream of a zstd archive, decompressed into private memory
 * that grows with what arrives, never past the ratio bound: a bomb is
 * refused within EXPAND_FLOOR (or RATIO x file) bytes, whatever sizes
 * its headers or its (unsigned) manifest state. */
static int inflate_zstd(lora_archive_priv *pv, lora_error *err)
{
    uint64_t cap = (uint64_t)pv->file_len * EXPAND_RATIO;
    if (cap < EXPAND_FLOOR)
        cap = EXPAND_FLOOR;
    if (cap > ARCHIVE_FILE_MAX)
        cap = ARCHIVE_FILE_MAX;
    struct archive *a = archive_read_new();
    if (!a)
        return lora_oom(err);
    int rc = LORA_OK;
    struct archive_entry *e;
    unsigned char *buf = NULL;
    size_t have = 0, got = 0;
    archive_read_support_filter_zstd(a);
    archive_read_support_format_raw(a);
    if (archive_read_open_memory(a, pv->file, pv->file_len) != ARCHIVE_OK ||
        archive_read_next_header(a, &e) != ARCHIVE_OK) {
        rc = lora_seterr(err, LORA_EINPUT, "not a lora archive: zstd: %s", archive_error_string(a));
        goto out;
    }
    for (;;) {
        if (got == have) {
            size_t want = have ? 2 * have : (1u << 20);
            if (want > cap)
                want = (size_t)cap + 1; /* room to see one byte too many */
            if (want <= have) {
                rc = lora_seterr(err, LORA_EINPUT, "decompresses past %llu bytes (%d times its "
                                                   "%zu bytes): refused as a decompression bomb",
                                 (unsigned long long)cap, EXPAND_RATIO, pv->file_len);
                goto out;
            }
            unsigned char *nb = realloc(buf, want);
            if (!nb) {
                rc = lora_oom(err);
                goto out;
            }
            buf = nb;
            have = want;
        }
        la_ssize_t n = archive_read_data(a, buf + got, have - got);
        if (n < 0) {
            rc = lora_seterr(err, LORA_EINPUT, "zstd: %s", archive_error_string(a));
            goto out;
        }
        if (n == 0)
            break;
        got += (size_t)n;
        if (got > cap) {
            rc = lora_seterr(err, LORA_EINPUT, "decompresses past %llu bytes (%d times its %zu "
                                               "bytes): refused as a decompression bomb",
                             (unsigned long long)cap, EXPAND_RATIO, pv->file_len);
            goto out;
        }
    }
    pv->tar = buf;
    pv->tar_len = got;
    buf = NULL;
out:
    free(buf);
    archive_read_free(a);
    return rc;
}

/* libarchive's reading of the headers must be the strict walker's,
 * entry for entry (name, size, data offset), and end where it ends:
 * bytes that two tar readers read differently are refused. */
static int check_headers(lora_archive_priv *pv, lora_error *err)
{
    struct archive *a = archive_read_new();
    if (!a)
        return lora_oom(err);
    int rc = LORA_OK;
    archive_read_support_format_tar(a);
    archive_read_support_filter_none(a);
    if (archive_read_open_memory(a, pv->tar, pv->tar_len) != ARCHIVE_OK) {
        rc = lora_seterr(err, LORA_EINPUT, "not a lora archive: %s", archive_error_string(a));
        goto out;
    }
    for (size_t i = 0; i <= pv->n_ents; i++) {
        struct archive_entry *e;
        int st = archive_read_next_header(a, &e);
        if (i == pv->n_ents && st == ARCHIVE_EOF)
            break;
        if (st != ARCHIVE_OK) {
            const char *msg = archive_error_string(a);
            rc = lora_seterr(err, LORA_EINPUT, "archive: %s", msg ? msg : "malformed header");
            goto out;
        }
        const char *name = archive_entry_pathname(e);
        if (!name) {
            rc = lora_seterr(err, LORA_EINPUT, "member without a name");
            goto out;
        }
        if ((rc = check_entry(e, name, err)))
            goto out;
        const lora_tar_ent *t = &pv->ents[i];
        if (i == pv->n_ents || strcmp(name, t->name) != 0 ||
            (uint64_t)archive_entry_size(e) != t->size ||
            (uint64_t)archive_filter_bytes(a, 0) != t->data_off) {
            rc = lora_seterr(err, LORA_EINPUT, "member %zu (\"%.200s\") reads differently to "
                                               "libarchive and to a strict tar reader (ambiguous "
                                               "archive)",
                             i + 1, name);
            goto out;
        }
    }
out:
    archive_read_free(a);
    return rc;
}

/* The first two entries, lora.json and its signature; the signature
 * is checked (unless NO_VERIFY) before the manifest is even parsed, so
 * a parser bug cannot be reached by anyone without a trusted key. */
static int open_manifest(lora_archive *ar, const lora_pubkey *keys, size_t nkeys, int flags,
                         lora_error *err)
{
    lora_archive_priv *pv = ar->priv;
    static const char *const want[2] = {MANIFEST_NAME, SIG_NAME};
    static const uint64_t max[2] = {LORA_MANIFEST_MAX, LORA_MINISIG_MAX};
    for (size_t i = 0; i < 2; i++) {
        if (pv->n_ents <= i)
            return lora_seterr(err, LORA_EINPUT, "not a lora archive: %s missing", want[i]);
        if (strcmp(pv->ents[i].name, want[i]) != 0)
            return lora_seterr(err, LORA_EINPUT, "not a lora archive: %s member is \"%.200s\", "
                                                 "not %s",
                               i ? "second" : "first", pv->ents[i].name, want[i]);
        if (pv->ents[i].size > max[i])
            return lora_seterr(err, LORA_EINPUT, "%s: %llu bytes, limit %llu%s", want[i],
                               (unsigned long long)pv->ents[i].size, (unsigned long long)max[i],
                               i ? "" : " (oversized manifest)");
    }
    const unsigned char *mdata = pv->tar + pv->ents[0].data_off;
    size_t mlen = (size_t)pv->ents[0].size;
    lora_sig *sig = malloc(sizeof *sig);
    char *want_tc = NULL;
    int rc = LORA_OK;
    if (!sig)
        return lora_oom(err);
    if ((rc = lora_sig_parse((const char *)pv->tar + pv->ents[1].data_off,
                             (size_t)pv->ents[1].size, sig, err))) {
        lora_err_prefix(err, "%s", SIG_NAME);
        goto out;
    }
    memcpy(ar->key_id, sig->key_id, LORA_KEYID_BYTES);
    if (!(ar->trusted_comment = lora_strdup(sig->trusted, err))) {
        rc = LORA_EIO;
        goto out;
    }
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
    if (ar->signature_checked && strcmp(want_tc, sig->trusted) != 0)
        rc = lora_seterr(err, LORA_ECHECK, "%s: trusted comment \"%.300s\" does not name this "
                                           "manifest",
                         SIG_NAME, sig->trusted);
out:
    free(sig);
    free(want_tc);
    return rc;
}

/* What a member's first bytes must be: the tensor file starts with a
 * safetensors header that fits in it. */
static int check_magic(const char *name, const unsigned char *p, uint64_t size, lora_error *err)
{
    if (strcmp(name, "adapter_model.safetensors") != 0)
        return LORA_OK;
    uint64_t hlen = 0;
    for (int i = 7; size >= 8 && i >= 0; i--)
        hlen = hlen << 8 | p[i];
    if (size < 10 || hlen < 2 || hlen > LORA_ST_MAX_HEADER || hlen > size - 8 || p[8] != '{')
        return lora_seterr(err, LORA_EINPUT, "%s: not a safetensors file (no header at its "
                                             "start)",
                           name);
    return LORA_OK;
}

/* Every entry after the signature is the manifest's next member, in
 * the manifest's order, with the size and BLAKE2b-256 it gives. */
static int check_payload(lora_archive *ar, lora_error *err)
{
    lora_archive_priv *pv = ar->priv;
    const lora_manifest *m = ar->manifest;
    for (size_t i = 2; i < pv->n_ents; i++) {
        const lora_tar_ent *t = &pv->ents[i];
        const char *name = t->name;
        if (strcmp(name, MANIFEST_NAME) == 0 || strcmp(name, SIG_NAME) == 0)
            return lora_seterr(err, LORA_EINPUT, "duplicate member %s", name);
        const lora_manifest_member *mm = lora_manifest_find(m, name);
        if (!mm)
            return lora_seterr(err, LORA_ECHECK, "member \"%.200s\" is not in the manifest", name);
        size_t idx = (size_t)(mm - m->members);
        if (idx < i - 2)
            return lora_seterr(err, LORA_EINPUT, "duplicate member %s", name);
        if (idx > i - 2)
            return lora_seterr(err, LORA_EINPUT, "member %s out of order (the manifest lists %s "
                                                 "there)",
                               name, m->members[i - 2].name);
        if (t->size != mm->size)
            return lora_seterr(err, LORA_ECHECK, "%s: %llu bytes in the archive, %llu in the "
                                                 "manifest",
                               name, (unsigned long long)t->size, (unsigned long long)mm->size);
        const unsigned char *data = pv->tar + t->data_off;
        unsigned char h[LORA_HASH_BYTES];
        lora_hash(data, (size_t)t->size, h, sizeof h);
        if (memcmp(h, mm->hash, LORA_HASH_BYTES) != 0)
            return lora_seterr(err, LORA_ECHECK, "%s: BLAKE2b-256 differs from the manifest "
                                                 "(member altered)",
                               name);
        int rc = check_magic(name, data, t->size, err);
        if (rc)
            return rc;
    }
    if (pv->n_ents - 2 < m->n_members)
        return lora_seterr(err, LORA_ECHECK, "member %s of the manifest is missing",
                           m->members[pv->n_ents - 2].name);
    return LORA_OK;
}

/* The steps of opening, on the file's bytes already in pv->file. */
static int verify_bytes(lora_archive *ar, const lora_pubkey *keys, size_t nkeys, int flags,
                        lora_error *err)
{
    lora_archive_priv *pv = ar->priv;
    int rc;
    ar->file_size = pv->file_len;
    if (is_zstd(pv->file, pv->file_len)) {
        ar->compressed = 1;
        if ((rc = inflate_zstd(pv, err)))
            return rc;
    } else {
        pv->tar = pv->file;
        pv->tar_len = pv->file_len;
    }
    if ((rc = lora_tar_walk(pv->tar, pv->tar_len, LORA_ARCHIVE_MAX_MEMBERS + 2, &pv->ents,
                            &pv->n_ents, err)) ||
        (rc = check_headers(pv, err)) || (rc = open_manifest(ar, keys, nkeys, flags, err)))
        return rc;
    return check_payload(ar, err);
}

/* A new archive object for label; the usage check comes before any
 * byte is read. */
static int archive_new(const char *label, size_t nkeys, int flags, lora_archive **out,
                       lora_error *err)
{
    *out = NULL;
    if (!(flags & LORA_ARCHIVE_NO_VERIFY) && nkeys == 0)
        return lora_seterr(err, LORA_EUSAGE, "%s: no public key to verify the archive with", label);
    lora_archive *ar = calloc(1, sizeof *ar);
    if (!ar || !(ar->priv = calloc(1, sizeof *ar->priv))) {
        free(ar);
        return lora_oom(err);
    }
    if (!(ar->path = lora_strdup(label, err))) {
        lora_archive_close(ar);
        return LORA_EIO;
    }
    *out = ar;
    return LORA_OK;
}

static int archive_done(lora_archive *ar, int rc, lora_archive **out, lora_error *err)
{
    if (rc) {
        if (!strstr(err ? err->msg : "", ar->path))
            lora_err_prefix(err, "%s", ar->path);
        lora_archive_close(ar);
        return rc;
    }
    *out = ar;
    return LORA_OK;
}

int lora_archive_open_owned(unsigned char **buf, size_t len, const char *label,
                            const lora_pubkey *keys, size_t nkeys, int flags, lora_archive **out,
                            lora_error *err)
{
    lora_archive *ar;
    int rc = archive_new(label, nkeys, flags, &ar, err);
    if (rc)
        return rc;
    lora_archive_priv *pv = ar->priv;
    pv->file = *buf;
    pv->file_len = len;
    rc = verify_bytes(ar, keys, nkeys, flags, err);
    if (rc) { /* the bytes stay the caller's */
        if (pv->tar == pv->file)
            pv->tar = NULL;
        pv->file = NULL;
    } else {
        *buf = NULL;
    }
    return archive_done(ar, rc, out, err);
}

int lora_archive_open_fd(int fd, const char *label, const lora_pubkey *keys, size_t nkeys,
                         int flags, lora_archive **out, lora_error *err)
{
    *out = NULL;
    if (!(flags & LORA_ARCHIVE_NO_VERIFY) && nkeys == 0)
        return lora_seterr(err, LORA_EUSAGE, "%s: no public key to verify the archive with", label);
    unsigned char *buf;
    size_t len;
    int rc = lora_archive_read_fd(fd, label, &buf, &len, err);
    if (!rc)
        rc = lora_archive_open_owned(&buf, len, label, keys, nkeys, flags, out, err);
    else if (!strstr(err ? err->msg : "", label))
        lora_err_prefix(err, "%s", label);
    free(buf);
    return rc;
}

int lora_archive_open_memory(const void *buf, size_t len, const char *label,
                             const lora_pubkey *keys, size_t nkeys, int flags, lora_archive **out,
                             lora_error *err)
{
    lora_archive *ar;
    int rc = archive_new(label, nkeys, flags, &ar, err);
    if (rc)
        return rc;
    lora_archive_priv *pv = ar->priv;
    if (len == 0)
        rc = lora_seterr(err, LORA_EINPUT, "%s: empty file", label);
    else if (!(pv->file = malloc(len)))
        rc = lora_oom(err);
    if (!rc) {
        memcpy(pv->file, buf, len);
        pv->file_len = len;
        rc = verify_bytes(ar, keys, nkeys, flags, err);
    }
    return archive_done(ar, rc, out, err);
}

int lora_archive_open(const char *path, const lora_pubkey *keys, size_t nkeys, int flags,
                      lora_archive **out, lora_error *err)
{
    *out = NULL;
    if (!(flags & LORA_ARCHIVE_NO_VERIFY) && nkeys == 0)
        return lora_seterr(err, LORA_EUSAGE, "%s: no public key to verify the archive with", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lora_seterr_path(err, errno, 0, path);
    int rc = lora_archive_open_fd(fd, path, keys, nkeys, flags, out, err);
    close(fd);
    return rc;
}

/* The entry of a payload member (manifest order i): entries 0 and 1
 * are the manifest and its signature. */
static const lora_tar_ent *member_ent(const lora_archive *ar, const char *name)
{
    const lora_manifest_member *mm = lora_manifest_find(ar->manifest, name);
    return mm ? &ar->priv->ents[2 + (size_t)(mm - ar->manifest->members)] : NULL;
}

const void *lora_archive_member(const lora_archive *ar, const char *name, uint64_t *size)
{
    const lora_tar_ent *t = member_ent(ar, name);
    if (!t)
        return NULL;
    if (size)
        *size = t->size;
    return ar->priv->tar + t->data_off;
}

void lora_archive_file_hash(const lora_archive *ar, unsigned char out[LORA_HASH_BYTES])
{
    lora_hash(ar->priv->file, ar->priv->file_len, out, LORA_HASH_BYTES);
}

int64_t lora_archive_member_offset(const lora_archive *ar, const char *name)
{
    const lora_tar_ent *t = member_ent(ar, name);
    return t && !ar->compressed ? (int64_t)t->data_off : -1;
}

/* ------------------------------------------------------------------ */
/* extraction: a folder that appears whole                             */
/* ------------------------------------------------------------------ */

/* The members are written into DIR.extract-XXXXXX beside DIR, which
 * then takes DIR's place in one rename (an exchange when DIR exists),
 * so that DIR holds one archive's members or the other's, never a mix
 * (issue 20 item 2).  While it is being filled the temporary folder is
 * flock()ed: a later extraction beside the same DIR removes the
 * temporaries nobody holds (left by kill -9). */
#define EXTRACT_TAG ".extract-"

/* receipts/ of an earlier extraction holds regular files only. */
static int receipts_only_files(const char *dir)
{
    char *p = path_join(dir, "receipts");
    struct stat sb;
    int ok = p && lstat(p, &sb) == 0;
    if (ok && S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(p);
        struct dirent *de;
        ok = d != NULL;
        while (ok && (de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            char *f = path_join(p, de->d_name);
            ok = f && lstat(f, &sb) == 0 && S_ISREG(sb.st_mode);
            free(f);
        }
        if (d)
            closedir(d);
    }
    free(p);
    return ok;
}

/* What may be replaced: a folder holding only what an extraction
 * writes (and per-file temporaries of older versions).  Anything else
 * is the user's and is not deleted along with the folder. */
static int replaceable(const char *dir, int force, int *empty, lora_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s", dir);
    int rc = LORA_OK;
    *empty = 1;
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        const char *nm = de->d_name;
        if (!strcmp(nm, ".") || !strcmp(nm, ".."))
            continue;
        *empty = 0;
        if (!force) {
            rc = lora_seterr(err, LORA_EUSAGE, "%s: exists and is not empty (use --force to "
                                               "replace it)",
                             dir);
            break;
        }
        static const char *const ours[] = {"adapter_config.json", "adapter_model.safetensors",
                                           "README.md", "receipts"};
        int ok = 0;
        for (size_t i = 0; i < 4 && !ok; i++) {
            size_t n = strlen(ours[i]);
            ok = !strncmp(nm, ours[i], n) && (!nm[n] || !strncmp(nm + n, ".tmp-", 5));
        }
        if (ok && !strcmp(nm, "receipts"))
            ok = receipts_only_files(dir);
        if (!ok)
            rc = lora_seterr(err, LORA_EUSAGE, "%s holds \"%.200s\", which an extraction does not "
                                               "write: not replacing the folder (move it away "
                                               "first)",
                             dir, nm);
    }
    closedir(d);
    return rc;
}

/* Every member into the (empty, private) folder tmp, each fsynced, and
 * the folders themselves. */
static int write_members(const lora_archive *ar, const char *tmp, lora_error *err)
{
    const lora_manifest *m = ar->manifest;
    int rc = LORA_OK, have_receipts = 0;
    for (size_t i = 0; i < m->n_members && !rc; i++) {
        const char *name = m->members[i].name;
        if (strncmp(name, "receipts/", 9) == 0 && !have_receipts) {
            char *d = path_join(tmp, "receipts");
            if (!d)
                return lora_oom(err);
            if (mkdir(d, 0755) != 0)
                rc = lora_seterr_errno(err, LORA_EIO, errno, "%s", d);
            free(d);
            have_receipts = 1;
            if (rc)
                break;
        }
        char *p = path_join(tmp, name);
        if (!p)
            return lora_oom(err);
        rc = lora_write_file_atomic(p, lora_archive_member(ar, name, NULL), m->members[i].size,
                                    0644, err);
        free(p);
    }
    char *p = path_join(tmp, ".");
    if (!rc && !p)
        rc = lora_oom(err);
    if (!rc)
        rc = lora_fsync_dir_of(p, err);
    free(p);
    return rc;
}

/* tmp (complete) takes dir's place.  exists: dir is a folder, replaced
 * by an exchange (the old one is then at tmp, for the caller to
 * remove); else tmp is renamed onto dir (absent, or empty). */
static int install(const char *tmp, const char *dir, int exists, int empty, lora_error *err)
{
    if (!exists || empty) {
        if (rename(tmp, dir) == 0)
            return LORA_OK;
        int e = errno;
        return lora_seterr_errno(err, e == EEXIST || e == ENOTEMPTY ? LORA_EUSAGE : LORA_EIO, e,
                                 "%s: cannot create", dir);
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) == 0)
        return LORA_OK;
    if (errno != EINVAL && errno != ENOSYS)
        return lora_seterr_errno(err, LORA_EIO, errno, "%s: cannot replace", dir);
    /* no atomic exchange here: old aside, new in, old back on failure */
    char *old = NULL;
    if (asprintf(&old, "%s.old-XXXXXX", dir) < 0)
        return lora_oom(err);
    int rc = LORA_OK;
    if (!mkdtemp(old) || rename(dir, old) != 0) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: cannot move the old folder aside", dir);
    } else if (rename(tmp, dir) != 0) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: cannot replace", dir);
        if (rename(old, dir) != 0)
            lora_err_prefix(err, "the old folder is at %s", old);
    } else {
        rename(old, tmp); /* the caller removes tmp, now the old folder */
    }
    rmdir(old);
    free(old);
    return rc;
}

int lora_archive_extract(const lora_archive *ar, const char *dir_arg, int force, lora_error *err)
{
    char *dir = lora_strdup(dir_arg, err);
    if (!dir)
        return LORA_EIO;
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--)
        dir[n - 1] = '\0';
    char *tmp = NULL;
    int rc = LORA_OK, empty = 1, lockfd = -1, exists = 0;
    struct stat sb;
    if (lstat(dir, &sb) == 0) {
        exists = 1;
        if (!S_ISDIR(sb.st_mode))
            rc = lora_seterr(err, LORA_EINPUT, "%s: not a folder", dir);
        else
            rc = replaceable(dir, force, &empty, err);
    } else if (errno != ENOENT) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s", dir);
    }
    if (rc)
        goto out;
    remove_stale(dir, EXTRACT_TAG, 1);
    if (asprintf(&tmp, "%s" EXTRACT_TAG "XXXXXX", dir) < 0) {
        tmp = NULL;
        rc = lora_oom(err);
        goto out;
    }
    if (!mkdtemp(tmp)) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: cannot create a temporary folder", dir);
        free(tmp);
        tmp = NULL;
        goto out;
    }
    lora_tmp_track(tmp, 1);
    chmod(tmp, 0755); /* mkdtemp makes it 0700; an adapter folder is for sharing */
    lockfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lockfd >= 0)
        flock(lockfd, LOCK_EX);
    if ((rc = write_members(ar, tmp, err)) || (rc = install(tmp, dir, exists, empty, err)))
        goto out;
    (void)lora_fsync_dir_of(dir, NULL);
out:
    if (tmp) {
        remove_tree(tmp, 1); /* what failed, or the old folder */
        lora_tmp_forget(tmp);
        free(tmp);
    }
    if (lockfd >= 0)
        close(lockfd);
    free(dir);
    return rc;
}

/* ------------------------------------------------------------------ */
/* the adapter inside, and the base it was made for                    */
/* ------------------------------------------------------------------ */

static void release_archive(void *arg)
{
    lora_archive_close(arg);
}

int lora_archive_adapter(lora_archive *ar, lora_adapter **out, lora_error *err)
{
    *out = NULL;
    uint64_t clen, slen;
    const char *cfg = lora_archive_member(ar, "adapter_config.json", &clen);
    const void *tensors = lora_archive_member(ar, "adapter_model.safetensors", &slen);
    char *label = NULL;
    if (asprintf(&label, "%s:adapter_model.safetensors", ar->path) < 0) {
        lora_archive_close(ar);
        return lora_oom(err);
    }
    lora_st *st;
    /* the archive's private bytes, hashed against the manifest */
    int rc = lora_st_open_memory(tensors, (size_t)slen, label, &st, err);
    free(label);
    if (rc) {
        lora_archive_close(ar);
        return rc;
    }
    lora_adapter *ad;
    rc = lora_adapter_open_parts(cfg, (size_t)clen, st, ar->path, &ad, err); /* owns st */
    if (rc) {
        lora_archive_close(ar);
        return rc;
    }
    ad->release = release_archive;
    ad->release_arg = ar;
    ad->has_base_hash = ar->manifest->has_base_hash; /* the base identity (baseid.c) */
    memcpy(ad->base_hash, ar->manifest->base_hash, sizeof ad->base_hash);
    ad->recorded_base = ar->manifest->base_model;
    ad->recorded_name = ar->manifest->name;
    ad->recorded_version = ar->manifest->version;
    *out = ad;
    return LORA_OK;
}

int lora_archive_open_adapter(const char *path, const lora_pubkey *keys, size_t n, int flags,
                              lora_adapter **out, lora_error *err)
{
    *out = NULL;
    lora_archive *ar;
    int rc = lora_archive_open(path, keys, n, flags, &ar, err);
    return rc ? rc : lora_archive_adapter(ar, out, err);
}

/* lora_base_hash, what identifies a base for an adapter: baseid.c */

/*
 * check_archive.c - .lora archives (archive.c, manifest.c): round trip,
 * determinism, data offsets for mmap, and every hostile archive of
 * issue 4 part 7 built here with libarchive or by editing bytes; each
 * must be refused with the right code and a message.
 */
#include "internal.h"
#include "testutil.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sodium.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *dir;         /* scratch folder */
static char *adir;        /* adapter folder */
static lora_seckey *sk, *sk2;
static lora_pubkey pk, pk2;

static const char CONFIG[] =
    "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"c_attn\"],\n"
    " \"base_model_name_or_path\": \"gpt2\", \"fan_in_fan_out\": true}\n";

/* A tiny PEFT adapter: one module, r=2, in=4, out=12, F32. */
static void write_adapter(const char *folder)
{
    char *p = tu_path(folder, "adapter_config.json");
    tu_write(p, CONFIG, strlen(CONFIG));
    free(p);
    p = tu_path(folder, "adapter_model.safetensors");
    lora_stw *w;
    lora_error err;
    ck_assert_int_eq(lora_stw_new(p, &w, &err), 0);
    uint64_t sa[2] = {2, 4}, sb[2] = {12, 2};
    const char *na = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight";
    const char *nb = "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight";
    ck_assert_int_eq(lora_stw_declare(w, na, LORA_DT_F32, 2, sa, &err), 0);
    ck_assert_int_eq(lora_stw_declare(w, nb, LORA_DT_F32, 2, sb, &err), 0);
    ck_assert_int_eq(lora_stw_start(w, &err), 0);
    float a[8], b[24];
    uint64_t st = 3;
    for (int i = 0; i < 8; i++)
        a[i] = (float)tu_randu(&st);
    for (int i = 0; i < 24; i++)
        b[i] = (float)tu_randu(&st);
    ck_assert_int_eq(lora_stw_write(w, na, 0, a, sizeof a, &err), 0);
    ck_assert_int_eq(lora_stw_write(w, nb, 0, b, sizeof b, &err), 0);
    ck_assert_msg(lora_stw_commit(w, &err) == 0, "%s", err.msg);
    free(p);
}

static void setup(void)
{
    lora_init(NULL);
    dir = tu_tmpdir();
    adir = tu_path(dir, "adapter");
    ck_assert_int_eq(mkdir(adir, 0755), 0);
    write_adapter(adir);
    ck_assert_int_eq(lora_keygen(&sk, NULL), 0);
    ck_assert_int_eq(lora_keygen(&sk2, NULL), 0);
    lora_seckey_pubkey(sk, &pk);
    lora_seckey_pubkey(sk2, &pk2);
}

static void teardown(void)
{
    lora_seckey_free(sk);
    lora_seckey_free(sk2);
    tu_rmtree(dir);
    free(adir);
    free(dir);
}

static char *make_archive(const char *name, const char *version, int compress, const lora_seckey *key)
{
    char *out = tu_path(dir, name);
    lora_pack_opts o = {.adapter_dir = adir, .name = "tiny", .task = "test",
                        .version = version, .compress = compress};
    lora_error err;
    ck_assert_msg(lora_archive_create(out, &o, key, &err) == 0, "%s", err.msg);
    return out;
}

static int open_rc(const char *path, lora_error *err)
{
    lora_archive *ar = NULL;
    int rc = lora_archive_open(path, &pk, 1, 0, &ar, err);
    if (rc == 0)
        ck_assert_ptr_nonnull(ar);
    else
        ck_assert_ptr_null(ar);
    lora_archive_close(ar);
    return rc;
}

START_TEST(test_roundtrip)
{
    lora_error err;
    for (int z = 0; z < 2; z++) {
        char *a = make_archive(z ? "z.lora" : "a.lora", "1.0", z, sk);
        lora_archive *ar;
        lora_pubkey keys[2] = {pk2, pk};
        ck_assert_msg(lora_archive_open(a, keys, 2, 0, &ar, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(ar->signature_checked, 1);
        ck_assert_uint_eq(ar->signer, 1);
        ck_assert_int_eq(ar->compressed, z);
        ck_assert_str_eq(ar->manifest->name, "tiny");
        ck_assert_str_eq(ar->manifest->base_model, "gpt2");
        ck_assert_uint_eq(ar->manifest->r, 2);
        ck_assert(ar->manifest->alpha == 4.0);
        ck_assert_uint_eq(ar->manifest->n_targets, 1);
        ck_assert_str_eq(ar->manifest->targets[0], "c_attn");
        ck_assert_uint_eq(ar->manifest->n_members, 2);
        /* the whole-file hash is the file's */
        unsigned char h[32];
        ck_assert_int_eq(lora_hash_file(a, 32, h, NULL, &err), 0);
        unsigned char fh[32];
        lora_archive_file_hash(ar, fh);
        ck_assert_mem_eq(h, fh, 32);
        /* members are the folder's bytes */
        size_t len;
        char *p = tu_path(adir, "adapter_model.safetensors");
        char *want = tu_read(p, &len);
        uint64_t size;
        const void *got = lora_archive_member(ar, "adapter_model.safetensors", &size);
        ck_assert_uint_eq(size, len);
        ck_assert_mem_eq(got, want, len);
        /* uncompressed: the offset is where the bytes are in the file */
        int64_t off = lora_archive_member_offset(ar, "adapter_model.safetensors");
        if (!z) {
            ck_assert_int_ge(off, 0);
            ck_assert_int_eq(off % 512, 0);
            size_t alen;
            char *whole = tu_read(a, &alen);
            ck_assert_mem_eq(whole + off, want, len);
            free(whole);
        } else {
            ck_assert_int_eq(off, -1);
        }
        free(want);
        free(p);
        /* extract: refuses to overwrite, then --force */
        char *x = tu_path(dir, z ? "xz" : "x");
        ck_assert_msg(lora_archive_extract(ar, x, 0, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(lora_archive_extract(ar, x, 0, &err), LORA_EUSAGE);
        ck_assert_int_eq(lora_archive_extract(ar, x, 1, &err), 0);
        char *xc = tu_path(x, "adapter_config.json");
        char *c = tu_read(xc, &len);
        ck_assert_str_eq(c, CONFIG);
        free(c);
        free(xc);
        free(x);
        lora_archive_close(ar);
        /* unknown key */
        ck_assert_int_eq(lora_archive_open(a, &pk2, 1, 0, &ar, &err), LORA_ECHECK);
        ck_assert_ptr_nonnull(strstr(err.msg, "unknown key"));
        /* no key at all unless asked not to verify */
        ck_assert_int_eq(lora_archive_open(a, NULL, 0, 0, &ar, &err), LORA_EUSAGE);
        ck_assert_int_eq(lora_archive_open(a, NULL, 0, LORA_ARCHIVE_NO_VERIFY, &ar, &err), 0);
        ck_assert_int_eq(ar->signature_checked, 0);
        lora_archive_close(ar);
        free(a);
    }
}
END_TEST

START_TEST(test_deterministic)
{
    char *a = make_archive("d1.lora", "1.0", 0, sk);
    char *b = make_archive("d2.lora", "1.0", 0, sk);
    char *c = make_archive("d3.lora", "1.0", 0, sk2);
    size_t la, lb, lc;
    char *A = tu_read(a, &la), *B = tu_read(b, &lb), *C = tu_read(c, &lc);
    ck_assert_uint_eq(la, lb);
    ck_assert_mem_eq(A, B, la);
    /* another key: only the signature member's bytes (and its header
     * checksum) differ, and the file has the same length */
    ck_assert_uint_eq(la, lc);
    lora_archive *ar;
    lora_error err;
    ck_assert_int_eq(lora_archive_open(a, NULL, 0, LORA_ARCHIVE_NO_VERIFY, &ar, &err), 0);
    int64_t off = lora_archive_member_offset(ar, "adapter_config.json");
    lora_archive_close(ar);
    ck_assert_int_gt(off, 0);
    ck_assert_mem_eq(A + off - 512, C + off - 512, la - (size_t)off + 512);
    ck_assert_int_ne(memcmp(A, C, la), 0);
    free(A);
    free(B);
    free(C);
    free(a);
    free(b);
    free(c);
}
END_TEST

/* ---- hostile archives ---- */

typedef struct tent {
    const char *name;
    int kind;               /* 'f' file, 'l' symlink, 'h' hardlink, 'c' char device, 'd' dir */
    const void *data;       /* NULL: zeros */
    size_t len;             /* bytes written and header size */
} tent;

static void build_tar(const char *path, const tent *e, size_t n, int zstd)
{
    struct archive *a = archive_write_new();
    if (zstd)
        ck_assert_int_eq(archive_write_add_filter_zstd(a), ARCHIVE_OK);
    ck_assert_int_eq(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    archive_write_set_bytes_in_last_block(a, 1);
    ck_assert_int_eq(archive_write_open_filename(a, path), ARCHIVE_OK);
    static unsigned char zeros[65536];
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *en = archive_entry_new();
        archive_entry_set_pathname(en, e[i].name);
        archive_entry_set_perm(en, 0644);
        switch (e[i].kind) {
        case 'l':
            archive_entry_set_filetype(en, AE_IFLNK);
            archive_entry_set_symlink(en, "/etc/passwd");
            break;
        case 'h':
            archive_entry_set_filetype(en, AE_IFREG);
            archive_entry_set_hardlink(en, "lora.json");
            break;
        case 'c':
            archive_entry_set_filetype(en, AE_IFCHR);
            archive_entry_set_rdev(en, 0x0103);
            break;
        case 'd':
            archive_entry_set_filetype(en, AE_IFDIR);
            break;
        default:
            archive_entry_set_filetype(en, AE_IFREG);
            archive_entry_set_size(en, (la_int64_t)e[i].len);
        }
        ck_assert_int_eq(archive_write_header(a, en), ARCHIVE_OK);
        if (e[i].kind == 'f') {
            size_t done = 0;
            while (done < e[i].len) {
                size_t c = e[i].len - done;
                if (!e[i].data && c > sizeof zeros)
                    c = sizeof zeros;
                const void *src = e[i].data ? (const void *)((const char *)e[i].data + done) : (const void *)zeros;
                ck_assert_int_gt(archive_write_data(a, src, c), 0);
                done += c;
            }
        }
        archive_entry_free(en);
    }
    ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

/* The good archive's pieces: manifest, signature, config, tensors. */
typedef struct pieces {
    char *m, *s, *c, *t;
    size_t ml, sl, cl, tl;
} pieces;

static void get_pieces(const char *archive, pieces *p)
{
    lora_archive *ar;
    lora_error err;
    ck_assert_int_eq(lora_archive_open(archive, &pk, 1, 0, &ar, &err), 0);
    uint64_t n;
    const void *d = lora_archive_member(ar, "adapter_config.json", &n);
    p->c = malloc(n + 1);
    memcpy(p->c, d, n);
    p->cl = n;
    d = lora_archive_member(ar, "adapter_model.safetensors", &n);
    p->t = malloc(n + 1);
    memcpy(p->t, d, n);
    p->tl = n;
    ck_assert_int_eq(lora_manifest_format(ar->manifest, &p->m, &p->ml, &err), 0);
    lora_archive_close(ar);
    /* the signature exactly as stored */
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    archive_read_support_filter_all(a);
    ck_assert_int_eq(archive_read_open_filename(a, archive, 10240), ARCHIVE_OK);
    struct archive_entry *e;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        if (strcmp(archive_entry_pathname(e), "lora.json.minisig") == 0) {
            p->sl = (size_t)archive_entry_size(e);
            p->s = malloc(p->sl + 1);
            ck_assert_int_eq(archive_read_data(a, p->s, p->sl), (la_ssize_t)p->sl);
        }
    }
    archive_read_free(a);
}

static void free_pieces(pieces *p)
{
    free(p->m);
    free(p->s);
    free(p->c);
    free(p->t);
}

/* Sign a manifest text with sk as the writer does. */
static char *sign_manifest(const char *m, size_t ml, size_t *sl)
{
    lora_manifest *man;
    lora_error err;
    ck_assert_msg(lora_manifest_parse(m, ml, &man, &err) == 0, "%s", err.msg);
    unsigned char h[32];
    lora_hash(m, ml, h, 32);
    char *tc = lora_manifest_trusted_comment(man, h);
    char *s;
    ck_assert_int_eq(lora_sign(sk, m, ml, tc, NULL, &s, sl, &err), 0);
    free(tc);
    lora_manifest_free(man);
    return s;
}

static void expect_refused(const char *what, const char *path, int code, const char *msg)
{
    lora_error err;
    lora_error_clear(&err);
    int rc = open_rc(path, &err);
    ck_assert_msg(rc == code, "%s: got %d (%s), want %d", what, rc, err.msg, code);
    ck_assert_msg(strstr(err.msg, msg) != NULL, "%s: message \"%s\" lacks \"%s\"", what, err.msg, msg);
}

START_TEST(test_hostile)
{
    char *good = make_archive("good.lora", "1.0", 0, sk);
    char *other = make_archive("other.lora", "2.0", 0, sk);
    pieces p, q;
    get_pieces(good, &p);
    get_pieces(other, &q);
    char *h = tu_path(dir, "h.lora");
    lora_error err;

    /* the builder itself makes an archive we accept */
    tent ok[] = {{"lora.json", 'f', p.m, p.ml}, {"lora.json.minisig", 'f', p.s, p.sl},
                 {"adapter_config.json", 'f', p.c, p.cl},
                 {"adapter_model.safetensors", 'f', p.t, p.tl}};
    build_tar(h, ok, 4, 0);
    ck_assert_int_eq(open_rc(h, &err), 0);

    /* tampered payload byte: flip one byte of the tensors in place */
    {
        size_t len;
        char *bytes = tu_read(good, &len);
        lora_archive *ar;
        ck_assert_int_eq(lora_archive_open(good, &pk, 1, 0, &ar, &err), 0);
        int64_t off = lora_archive_member_offset(ar, "adapter_model.safetensors");
        lora_archive_close(ar);
        bytes[off + (int64_t)p.tl - 3] ^= 0x01;
        tu_write(h, bytes, len);
        expect_refused("tampered payload", h, LORA_ECHECK, "BLAKE2b-256 differs");
        /* tampered manifest: change a digit of a size in lora.json */
        bytes[off + (int64_t)p.tl - 3] ^= 0x01;
        char *at = memmem(bytes, len, "\"r\": 2", 6);
        ck_assert_ptr_nonnull(at);
        at[5] = '3';
        tu_write(h, bytes, len);
        expect_refused("tampered manifest", h, LORA_ECHECK, "signature verification failed");
        at[5] = '2';
        /* truncated at many points before the end of the last member's
         * data: never accepted (a cut in the end-of-archive blocks loses
         * nothing and may be) */
        size_t end = (size_t)off + p.tl;
        for (size_t cut = 0; cut < end; cut += (cut < 4096 ? 97 : 1021)) {
            tu_write(h, bytes, cut);
            lora_error_clear(&err);
            int rc = open_rc(h, &err);
            ck_assert_msg(rc == LORA_EINPUT || rc == LORA_ECHECK, "cut at %zu: rc %d (%s)", cut, rc,
                          err.msg);
        }
        free(bytes);
    }

    /* another archive's signature swapped in */
    tent swapped[] = {{"lora.json", 'f', p.m, p.ml}, {"lora.json.minisig", 'f', q.s, q.sl},
                      {"adapter_config.json", 'f', p.c, p.cl},
                      {"adapter_model.safetensors", 'f', p.t, p.tl}};
    build_tar(h, swapped, 4, 0);
    expect_refused("swapped signature", h, LORA_ECHECK, "signature verification failed");

    /* extra member */
    tent extra[] = {{"lora.json", 'f', p.m, p.ml}, {"lora.json.minisig", 'f', p.s, p.sl},
                    {"adapter_config.json", 'f', p.c, p.cl},
                    {"adapter_model.safetensors", 'f', p.t, p.tl}, {"evil.sh", 'f', "x", 1}};
    build_tar(h, extra, 5, 0);
    expect_refused("extra member", h, LORA_ECHECK, "not in the manifest");

    /* duplicate member (same bytes twice) */
    tent dup[] = {{"lora.json", 'f', p.m, p.ml}, {"lora.json.minisig", 'f', p.s, p.sl},
                  {"adapter_config.json", 'f', p.c, p.cl}, {"adapter_config.json", 'f', p.c, p.cl},
                  {"adapter_model.safetensors", 'f', p.t, p.tl}};
    build_tar(h, dup, 5, 0);
    expect_refused("duplicate member", h, LORA_EINPUT, "duplicate");
    tent dup2[] = {{"lora.json", 'f', p.m, p.ml}, {"lora.json.minisig", 'f', p.s, p.sl},
                   {"lora.json", 'f', p.m, p.ml}, {"adapter_config.json", 'f', p.c, p.cl},
                   {"adapter_model.safetensors", 'f', p.t, p.tl}};
    build_tar(h, dup2, 5, 0);
    expect_refused("duplicate manifest", h, LORA_EINPUT, "duplicate");

    /* missing member */
    build_tar(h, ok, 3, 0);
    expect_refused("missing member", h, LORA_ECHECK, "missing");

    /* hostile names and types, each in place of a real member */
    struct {
        const char *name;
        int kind;
        const char *msg;
    } bad[] = {{"../x", 'f', "\"..\""},
               {"/etc/x", 'f', "absolute"},
               {"adapter/../../x", 'f', "\"..\""},
               {"./adapter_config.json", 'f', "plain relative"},
               {"adapter_config.json", 'l', "symbolic link"},
               {"adapter_config.json", 'h', "hard link"},
               {"adapter_config.json", 'c', "device"},
               {"receipts", 'd', "directory"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tent t[] = {{"lora.json", 'f', p.m, p.ml}, {"lora.json.minisig", 'f', p.s, p.sl},
                    {bad[i].name, bad[i].kind, p.c, p.cl},
                    {"adapter_model.safetensors", 'f', p.t, p.tl}};
        build_tar(h, t, 4, 0);
        expect_refused(bad[i].name, h, LORA_EINPUT, bad[i].msg);
    }

    /* a member longer than its manifest size */
    char *longer = malloc(p.cl + 10);
    memcpy(longer, p.c, p.cl);
    memset(longer + p.cl, ' ', 10);
    tent lng[] = {{"lora.json", 'f', p.m, p.ml}, {"lora.json.minisig", 'f', p.s, p.sl},
                  {"adapter_config.json", 'f', longer, p.cl + 10},
                  {"adapter_model.safetensors", 'f', p.t, p.tl}};
    build_tar(h, lng, 4, 0);
    expect_refused("longer member", h, LORA_ECHECK, "in the manifest");
    free(longer);

    /* zstd: a member whose header claims 256 MiB of zeros (a few KiB
     * compressed) where the signed manifest says 10 bytes of README */
    {
        lora_manifest *man;
        ck_assert_int_eq(lora_manifest_parse(p.m, p.ml, &man, &err), 0);
        lora_manifest_member *mm = realloc(man->members, 3 * sizeof *mm);
        man->members = mm;
        mm[2].name = strdup("README.md");
        mm[2].size = 10;
        lora_hash("0123456789", 10, mm[2].hash, 32);
        man->n_members = 3;
        char *m3;
        size_t m3l, s3l;
        ck_assert_int_eq(lora_manifest_format(man, &m3, &m3l, &err), 0);
        lora_manifest_free(man);
        char *s3 = sign_manifest(m3, m3l, &s3l);
        tent bomb[] = {{"lora.json", 'f', m3, m3l}, {"lora.json.minisig", 'f', s3, s3l},
                       {"adapter_config.json", 'f', p.c, p.cl},
                       {"adapter_model.safetensors", 'f', p.t, p.tl},
                       {"README.md", 'f', NULL, 256u << 20}};
        build_tar(h, bomb, 5, 1);
        struct stat sb;
        ck_assert_int_eq(stat(h, &sb), 0);
        ck_assert_int_lt(sb.st_size, 1 << 20);
        expect_refused("zstd bomb", h, LORA_EINPUT, "decompression bomb");
        /* the same signed manifest with the real 10 bytes is fine */
        tent fine[] = {{"lora.json", 'f', m3, m3l}, {"lora.json.minisig", 'f', s3, s3l},
                       {"adapter_config.json", 'f', p.c, p.cl},
                       {"adapter_model.safetensors", 'f', p.t, p.tl},
                       {"README.md", 'f', "0123456789", 10}};
        build_tar(h, fine, 5, 1);
        ck_assert_int_eq(open_rc(h, &err), 0);
        free(m3);
        free(s3);
    }

    /* oversized manifest, plain and as a zstd bomb: refused from the header */
    for (int z = 0; z < 2; z++) {
        tent big[] = {{"lora.json", 'f', NULL, LORA_MANIFEST_MAX + 1},
                      {"lora.json.minisig", 'f', p.s, p.sl}};
        build_tar(h, big, 2, z);
        expect_refused("oversized manifest", h, LORA_EINPUT, "oversized manifest");
    }

    /* not an archive, empty, wrong first member */
    tu_write(h, "hello", 5);
    expect_refused("not tar", h, LORA_EINPUT, "");
    tu_write(h, "", 0);
    expect_refused("empty", h, LORA_EINPUT, "empty");
    tent first[] = {{"adapter_config.json", 'f', p.c, p.cl}};
    build_tar(h, first, 1, 0);
    expect_refused("wrong first", h, LORA_EINPUT, "first member");

    free_pieces(&p);
    free_pieces(&q);
    free(h);
    free(good);
    free(other);
}
END_TEST

/* ---- raw tar, for layouts libarchive will not write ---- */

typedef struct rawtar {
    unsigned char *b;
    size_t n;
} rawtar;

static void raw_append(rawtar *t, const void *d, size_t n)
{
    t->b = realloc(t->b, t->n + n + 1);
    ck_assert_ptr_nonnull(t->b);
    if (d)
        memcpy(t->b + t->n, d, n);
    else
        memset(t->b + t->n, 0, n);
    t->n += n;
}

/* A ustar header: magic8 NULL for POSIX "ustar\0" "00". */
static void raw_header(rawtar *t, const char *name, uint64_t size, char type, const char *magic8)
{
    unsigned char h[512] = {0};
    snprintf((char *)h, 100, "%s", name);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)size);
    memcpy(h + 136, "00000000000", 12);
    h[156] = (unsigned char)type;
    memcpy(h + 257, magic8 ? magic8 : "ustar\0" "00", 8);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    h[155] = ' ';
    raw_append(t, h, 512);
}

static void raw_data(rawtar *t, const void *d, size_t n)
{
    raw_append(t, d, n);
    if (n % 512)
        raw_append(t, NULL, 512 - n % 512);
}

static void raw_file(rawtar *t, const char *name, const void *d, size_t n, char type)
{
    raw_header(t, name, n, type, NULL);
    raw_data(t, d, n);
}

static void raw_pax(rawtar *t, const char *records)
{
    raw_header(t, "PaxHeader/x", strlen(records), 'x', NULL);
    raw_data(t, records, strlen(records));
}

/* The good archive's four members, raw; type of the config's entry. */
static void raw_good(rawtar *t, const pieces *p, char cfg_type)
{
    raw_file(t, "lora.json", p->m, p->ml, '0');
    raw_file(t, "lora.json.minisig", p->s, p->sl, '0');
    raw_file(t, "adapter_config.json", p->c, p->cl, cfg_type);
    raw_file(t, "adapter_model.safetensors", p->t, p->tl, '0');
}

static void raw_expect(const char *what, rawtar *t, const char *path, int code, const char *msg)
{
    tu_write(path, t->b, t->n);
    if (code == 0) {
        lora_error err;
        ck_assert_msg(open_rc(path, &err) == 0, "%s: %s", what, err.msg);
    } else {
        expect_refused(what, path, code, msg);
        /* and without the signature check (lora-pack list, --no-verify) */
        lora_archive *ar;
        lora_error err;
        ck_assert_msg(lora_archive_open(path, NULL, 0, LORA_ARCHIVE_NO_VERIFY, &ar, &err) == code,
                      "%s: accepted without verification", what);
    }
    free(t->b);
    t->b = NULL;
    t->n = 0;
}

/* issue 20 item 10: only regular files, in the manifest's order, a
 * proper end-of-archive marker, nothing after it */
START_TEST(test_strict_tar)
{
    char *good = make_archive("sg.lora", "1.0", 0, sk);
    pieces p;
    get_pieces(good, &p);
    char *h = tu_path(dir, "s.lora");
    rawtar t = {NULL, 0};

    raw_good(&t, &p, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("raw builder", &t, h, 0, "");

    raw_good(&t, &p, 'Z');
    raw_append(&t, NULL, 1024);
    raw_expect("unknown typeflag", &t, h, LORA_EINPUT, "unknown tar typeflag");

    raw_good(&t, &p, 'S');
    raw_append(&t, NULL, 1024);
    raw_expect("GNU old sparse", &t, h, LORA_EINPUT, "GNU sparse entry");

    /* GNU old sparse with a whole tar entry hidden in its data, GNU
     * magic as GNU tar writes it */
    raw_file(&t, "lora.json", p.m, p.ml, '0');
    raw_file(&t, "lora.json.minisig", p.s, p.sl, '0');
    raw_header(&t, "adapter_config.json", 0, 'S', "ustar  \0");
    raw_file(&t, "adapter_config.json", p.c, p.cl, '0');
    raw_file(&t, "adapter_model.safetensors", p.t, p.tl, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("GNU old sparse, hidden entry", &t, h, LORA_EINPUT, "GNU sparse entry");

    raw_file(&t, "lora.json", p.m, p.ml, '0');
    raw_file(&t, "lora.json.minisig", p.s, p.sl, '0');
    raw_pax(&t, "22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n");
    raw_file(&t, "adapter_config.json", p.c, p.cl, '0');
    raw_file(&t, "adapter_model.safetensors", p.t, p.tl, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("pax sparse 1.0", &t, h, LORA_EINPUT, "pax sparse entry");

    raw_file(&t, "lora.json", p.m, p.ml, '0');
    raw_file(&t, "lora.json.minisig", p.s, p.sl, '0');
    raw_pax(&t, "28 SCHILY.xattr.user.x=abcd\n");
    raw_file(&t, "adapter_config.json", p.c, p.cl, '0');
    raw_file(&t, "adapter_model.safetensors", p.t, p.tl, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("unknown pax keyword", &t, h, LORA_EINPUT, "not allowed");

    /* a pax path we accept (long receipt names are written this way) */
    raw_file(&t, "lora.json", p.m, p.ml, '0');
    raw_file(&t, "lora.json.minisig", p.s, p.sl, '0');
    raw_pax(&t, "28 path=adapter_config.json\n11 mtime=0\n");
    raw_file(&t, "ignored-name", p.c, p.cl, '0');
    raw_file(&t, "adapter_model.safetensors", p.t, p.tl, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("pax path", &t, h, 0, "");

    raw_good(&t, &p, '0');
    raw_expect("no end marker", &t, h, LORA_EINPUT, "missing end-of-archive marker");

    raw_good(&t, &p, '0');
    raw_append(&t, NULL, 512);
    raw_expect("half an end marker", &t, h, LORA_EINPUT, "end-of-archive marker incomplete");

    raw_good(&t, &p, '0');
    raw_append(&t, NULL, 1024);
    raw_append(&t, "garbage", 7);
    raw_expect("trailing garbage", &t, h, LORA_EINPUT, "after the end-of-archive marker");

    raw_good(&t, &p, '0');
    raw_append(&t, NULL, 1024);
    raw_file(&t, "evil.sh", "x", 1, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("trailing member", &t, h, LORA_EINPUT, "after the end-of-archive marker");

    raw_good(&t, &p, '0');
    raw_append(&t, NULL, 10240 - t.n % 10240);
    raw_expect("record padding", &t, h, LORA_EINPUT, "after the end-of-archive marker");

    raw_good(&t, &p, '0');
    raw_append(&t, NULL, 512);
    raw_file(&t, "evil.sh", "x", 1, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("zero block then member", &t, h, LORA_EINPUT, "followed by data");

    raw_file(&t, "lora.json", p.m, p.ml, '0');
    raw_file(&t, "lora.json.minisig", p.s, p.sl, '0');
    raw_file(&t, "adapter_model.safetensors", p.t, p.tl, '0');
    raw_file(&t, "adapter_config.json", p.c, p.cl, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("out of order", &t, h, LORA_EINPUT, "out of order");

    raw_file(&t, "lora.json", p.m, p.ml, '0');
    raw_file(&t, "lora.json.minisig", p.s, p.sl, '0');
    raw_header(&t, "adapter_config.json", p.cl, '0', "ustar  \0");
    raw_data(&t, p.c, p.cl);
    raw_file(&t, "adapter_model.safetensors", p.t, p.tl, '0');
    raw_append(&t, NULL, 1024);
    raw_expect("GNU magic", &t, h, LORA_EINPUT, "not a POSIX tar header");

    raw_good(&t, &p, '0');
    raw_append(&t, NULL, 1024);
    t.b[512 + (p.ml + 511) / 512 * 512 + 3] ^= 1; /* the name in the signature's header */
    raw_expect("checksum", &t, h, LORA_EINPUT, "checksum");

    /* a size in the header larger than the stream */
    raw_file(&t, "lora.json", p.m, p.ml, '0');
    raw_file(&t, "lora.json.minisig", p.s, p.sl, '0');
    raw_header(&t, "adapter_config.json", 1u << 30, '0', NULL);
    raw_data(&t, p.c, p.cl);
    raw_append(&t, NULL, 1024);
    raw_expect("size past the end", &t, h, LORA_EINPUT, "truncated");

    free_pieces(&p);
    free(h);
    free(good);
}
END_TEST

/* issue 20 item 1: what was verified is what is used.  The archive is
 * opened (and an adapter loaded from it), then the file is rewritten
 * in place (same inode: the tensor bytes become 0xff, NaN) and cut to
 * nothing; the members and the adapter's tensors are still the
 * verified bytes, hashing to the manifest's BLAKE2b-256. */
START_TEST(test_verified_is_used)
{
    for (int z = 0; z < 2; z++) {
        char *a = make_archive(z ? "vz.lora" : "v.lora", "1.0", z, sk);
        lora_error err;
        lora_archive *ar;
        ck_assert_int_eq(lora_archive_open(a, &pk, 1, 0, &ar, &err), 0);
        lora_adapter *ad;
        ck_assert_msg(lora_archive_open_adapter(a, &pk, 1, 0, &ad, &err) == 0, "%s", err.msg);
        uint64_t n;
        const unsigned char *t = lora_archive_member(ar, "adapter_model.safetensors", &n);
        unsigned char *want = malloc(n);
        memcpy(want, t, n);
        size_t alen = ad->modules[0].A->nbytes;
        unsigned char *wantA = malloc(alen);
        memcpy(wantA, ad->modules[0].A->data, alen);

        struct stat sb;
        ck_assert_int_eq(stat(a, &sb), 0);
        unsigned char *ff = malloc((size_t)sb.st_size);
        memset(ff, 0xff, (size_t)sb.st_size);
        int fd = open(a, O_WRONLY);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pwrite(fd, ff, (size_t)sb.st_size, 0), sb.st_size);
        ck_assert_int_eq(fsync(fd), 0);
        /* the rewrite is real: the file no longer opens */
        lora_archive *again;
        ck_assert_int_ne(lora_archive_open(a, &pk, 1, 0, &again, &err), 0);

        ck_assert_mem_eq(lora_archive_member(ar, "adapter_model.safetensors", NULL), want, n);
        unsigned char hh[LORA_HASH_BYTES];
        lora_hash(lora_archive_member(ar, "adapter_model.safetensors", NULL), n, hh, sizeof hh);
        ck_assert_mem_eq(hh, lora_manifest_find(ar->manifest, "adapter_model.safetensors")->hash,
                         LORA_HASH_BYTES);
        ck_assert_mem_eq(ad->modules[0].A->data, wantA, alen);
        /* cut to nothing: no SIGBUS, the same bytes */
        ck_assert_int_eq(ftruncate(fd, 0), 0);
        close(fd);
        ck_assert_mem_eq(lora_archive_member(ar, "adapter_model.safetensors", NULL), want, n);
        ck_assert_mem_eq(ad->modules[0].A->data, wantA, alen);
        /* the whole-file hash is of the bytes read, not of the file now */
        unsigned char fh[LORA_HASH_BYTES], z0[LORA_HASH_BYTES];
        lora_archive_file_hash(ar, fh);
        lora_hash("", 0, z0, sizeof z0);
        ck_assert_mem_ne(fh, z0, LORA_HASH_BYTES);
        lora_adapter_free(ad);
        lora_archive_close(ar);
        free(ff);
        free(want);
        free(wantA);
        free(a);
    }
}
END_TEST

/* lora_archive_open_fd and _memory verify what they are given; the
 * fd is read from offset 0 whatever its position */
START_TEST(test_open_fd)
{
    char *a = make_archive("f.lora", "1.0", 0, sk);
    lora_error err;
    int fd = open(a, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(lseek(fd, 100, SEEK_SET), 100);
    lora_archive *ar;
    ck_assert_msg(lora_archive_open_fd(fd, "blob", &pk, 1, 0, &ar, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(ar->path, "blob");
    lora_adapter *ad;
    ck_assert_msg(lora_archive_adapter(ar, &ad, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(ad->r, 2);
    lora_adapter_free(ad);
    ck_assert_int_eq(lora_archive_open_fd(fd, "blob", &pk2, 1, 0, &ar, &err), LORA_ECHECK);
    ck_assert_ptr_nonnull(strstr(err.msg, "blob"));
    close(fd);
    size_t len;
    char *bytes = tu_read(a, &len);
    ck_assert_int_eq(lora_archive_open_memory(bytes, len, "mem", &pk, 1, 0, &ar, &err), 0);
    lora_archive_close(ar);
    bytes[len - 2000] ^= 1;
    ck_assert_int_ne(lora_archive_open_memory(bytes, len, "mem", &pk, 1, 0, &ar, &err), 0);
    ck_assert_int_eq(lora_archive_open_memory(bytes, 0, "mem", &pk, 1, 0, &ar, &err), LORA_EINPUT);
    free(bytes);
    free(a);
}
END_TEST

/* issue 20 item 5: a zstd archive of a few KiB whose (unsigned)
 * manifest and header state a 1 GiB member is refused within bounded
 * memory (the address space is capped at what a 1 GiB buffer needs
 * not) */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

START_TEST(test_bomb_bounded)
{
    char *good = make_archive("bg.lora", "1.0", 0, sk);
    pieces p;
    get_pieces(good, &p);
    lora_manifest *man;
    lora_error err;
    ck_assert_int_eq(lora_manifest_parse(p.m, p.ml, &man, &err), 0);
    man->members[1].size = 1ULL << 30;
    char *m3;
    size_t m3l;
    ck_assert_int_eq(lora_manifest_format(man, &m3, &m3l, &err), 0);
    lora_manifest_free(man);
    char *h = tu_path(dir, "bomb.lora");
    tent bomb[] = {{"lora.json", 'f', m3, m3l}, {"lora.json.minisig", 'f', p.s, p.sl},
                   {"adapter_config.json", 'f', p.c, p.cl},
                   {"adapter_model.safetensors", 'f', NULL, 1ULL << 30}};
    build_tar(h, bomb, 4, 1);
    struct stat sb;
    ck_assert_int_eq(stat(h, &sb), 0);
    ck_assert_int_lt(sb.st_size, 100 * 1024);
    /* in a child with 512 MiB of address space more than now */
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        FILE *f = fopen("/proc/self/statm", "r");
        unsigned long pages = 0;
        if (!f || fscanf(f, "%lu", &pages) != 1)
            _exit(10);
        fclose(f);
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max = pages * (unsigned long)sysconf(_SC_PAGESIZE) + (512ul << 20);
        /* AddressSanitizer maps its shadow as it goes: no cap there */
        if (!SANITIZED && setrlimit(RLIMIT_AS, &rl) != 0)
            _exit(11);
        lora_archive *ar;
        int rc = lora_archive_open(h, NULL, 0, LORA_ARCHIVE_NO_VERIFY, &ar, &err);
        int ok = rc == LORA_EINPUT && strstr(err.msg, "decompression bomb");
        /* memcheck follows fork: the child frees its copies */
        free(m3);
        free(h);
        free_pieces(&p);
        free(good);
        _exit(ok ? 0 : 12);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "bomb: child status %d", st);
    free(m3);
    free(h);
    free_pieces(&p);
    free(good);
}
END_TEST

START_TEST(test_manifest_parse)
{
    pieces p;
    char *good = make_archive("m.lora", "1.0", 0, sk);
    get_pieces(good, &p);
    lora_manifest *m;
    lora_error err;
    ck_assert_int_eq(lora_manifest_parse(p.m, p.ml, &m, &err), 0);
    /* format round trip is byte-identical */
    char *t;
    size_t tl;
    ck_assert_int_eq(lora_manifest_format(m, &t, &tl, &err), 0);
    ck_assert_uint_eq(tl, p.ml);
    ck_assert_mem_eq(t, p.m, tl);
    free(t);
    lora_manifest_free(m);
    struct {
        const char *from, *to;
    } cases[] = {
        {"\"format_version\": 1", "\"format_version\": 2"},
        {"\"format_version\": 1", "\"format_version\": \"1\""},
        {"\"format\": \"lora-archive\"", "\"format\": \"zip\""},
        {"\"name\": \"tiny\"", "\"name\": \"ti ny\""},
        {"\"name\": \"tiny\"", "\"name\": 7"},
        {"\"task\": \"test\"", "\"task\": \"\""},
        {"\"r\": 2", "\"r\": 0"},
        {"\"r\": 2", "\"r\": 2.5"},
        {"\"alpha\": 4.0", "\"alpha\": \"4\""},
        {"\"targets\": [", "\"targets\": [1, "},
        {"\"name\": \"adapter_config.json\"", "\"name\": \"../adapter_config.json\""},
        {"\"name\": \"adapter_config.json\"", "\"name\": \"adapter_model.safetensors\""},
        {"\"name\": \"adapter_config.json\"", "\"name\": \"receipts/.x\""},
        {"\"name\": \"adapter_config.json\"", "\"name\": \"README.md\""},
        {"\"size\": ", "\"size\": -"},
        {"\"blake2b-256\": \"", "\"blake2b-256\": \"X"},
        {"\"base_model\": {", "\"base_model\": {\"extra\": 1, "},
        {"\"r\": 2", "\"r\": 2, \"r\": 2"},
        {"\"r\": 2", "\"r\": 2, \"unknown\": 0"},
        {"\"hash\": null", "\"hash\": \"abc\""},
        {"{", "["},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *at = strstr(p.m, cases[i].from);
        ck_assert_msg(at != NULL, "case %zu: %s not in manifest", i, cases[i].from);
        size_t pre = (size_t)(at - p.m);
        char *x = malloc(p.ml + strlen(cases[i].to) + 1);
        memcpy(x, p.m, pre);
        strcpy(x + pre, cases[i].to);
        strcat(x, at + strlen(cases[i].from));
        ck_assert_msg(lora_manifest_parse(x, strlen(x), &m, &err) == LORA_EINPUT, "case %zu accepted",
                      i);
        ck_assert(err.msg[0]);
        free(x);
    }
    for (size_t cut = 0; cut < p.ml - 1; cut++)
        ck_assert_int_eq(lora_manifest_parse(p.m, cut, &m, &err), LORA_EINPUT);
    free_pieces(&p);
    free(good);
}
END_TEST

START_TEST(test_create_refusals)
{
    lora_error err;
    char *out = tu_path(dir, "r.lora");
    lora_pack_opts o = {.adapter_dir = adir, .name = "bad name", .task = "t", .version = "1"};
    ck_assert_int_eq(lora_archive_create(out, &o, sk, &err), LORA_EUSAGE);
    o.name = "ok";
    o.adapter_dir = dir; /* no adapter files there */
    ck_assert_int_eq(lora_archive_create(out, &o, sk, &err), LORA_EINPUT);
    /* a broken tensor file is not packed */
    char *bd = tu_path(dir, "broken");
    mkdir(bd, 0755);
    char *c = tu_path(bd, "adapter_config.json"), *t = tu_path(bd, "adapter_model.safetensors");
    tu_write(c, CONFIG, strlen(CONFIG));
    tu_write(t, "\x08\0\0\0\0\0\0\0{}", 10);
    o.adapter_dir = bd;
    ck_assert_int_eq(lora_archive_create(out, &o, sk, &err), LORA_EINPUT);
    /* receipt names a reader would refuse are refused when packing */
    char *good = tu_path(adir, "adapter_model.safetensors");
    size_t glen;
    char *gbytes = tu_read(good, &glen);
    tu_write(t, gbytes, glen);
    free(gbytes);
    free(good);
    char *rc = tu_path(dir, ".hidden");
    tu_write(rc, "r", 1);
    const char *recs[] = {rc, NULL};
    o.receipts = recs;
    ck_assert_int_eq(lora_archive_create(out, &o, sk, &err), LORA_EINPUT);
    o.receipts = NULL;
    ck_assert_msg(lora_archive_create(out, &o, sk, &err) == 0, "%s", err.msg);
    /* nothing but the archive in the folder: no temporary left behind */
    struct stat sb;
    ck_assert_int_eq(stat(out, &sb), 0);
    free(rc);
    free(c);
    free(t);
    free(bd);
    free(out);
}
END_TEST

START_TEST(test_open_adapter)
{
    lora_error err;
    char *pubp = tu_path(dir, "k.pub"), *pub2p = tu_path(dir, "o.pub");
    ck_assert_int_eq(lora_pubkey_write(pubp, &pk, &err), 0);
    ck_assert_int_eq(lora_pubkey_write(pub2p, &pk2, &err), 0);
    lora_adapter *folder;
    ck_assert_int_eq(lora_adapter_open(adir, &folder, &err), 0);
    for (int z = 0; z < 2; z++) {
        char *a = make_archive(z ? "oz.lora" : "o.lora", "1.0", z, sk);
        const char *keys[] = {pub2p, pubp, NULL};
        lora_source_opts o = {.pubkeys = keys};
        lora_adapter *ad;
        ck_assert_msg(lora_adapter_load(a, &o, &ad, &err) == 0, "%s", err.msg);
        ck_assert_ptr_nonnull(ad->release);
        ck_assert_uint_eq(ad->n_modules, folder->n_modules);
        ck_assert_uint_eq(ad->r, 2);
        for (size_t i = 0; i < ad->n_modules; i++) {
            ck_assert_str_eq(ad->modules[i].name, folder->modules[i].name);
            ck_assert_uint_eq(ad->modules[i].A->nbytes, folder->modules[i].A->nbytes);
            ck_assert_mem_eq(ad->modules[i].A->data, folder->modules[i].A->data,
                             ad->modules[i].A->nbytes);
            ck_assert_mem_eq(ad->modules[i].B->data, folder->modules[i].B->data,
                             ad->modules[i].B->nbytes);
        }
        /* private: the tensor bytes are in no mapping of the archive
         * file (a rewrite of the file after the check cannot reach them) */
        const void *d = ad->modules[0].A->data;
        FILE *maps = fopen("/proc/self/maps", "r");
        ck_assert_ptr_nonnull(maps);
        char line[4096];
        int inside = 0;
        while (fgets(line, sizeof line, maps)) {
            unsigned long lo, hi;
            if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && strstr(line, a) &&
                (unsigned long)d >= lo && (unsigned long)d < hi)
                inside = 1;
        }
        fclose(maps);
        ck_assert_msg(!inside, "tensor data is in a mapping of %s", a);
        lora_adapter_free(ad);
        /* wrong key, no key, unverified with a warning */
        const char *wrong[] = {pub2p, NULL};
        o.pubkeys = wrong;
        ck_assert_int_eq(lora_adapter_load(a, &o, &ad, &err), LORA_ECHECK);
        o.pubkeys = NULL;
        ck_assert_int_eq(lora_adapter_load(a, &o, &ad, &err), LORA_EUSAGE);
        char wbuf[512] = "";
        FILE *w = fmemopen(wbuf, sizeof wbuf, "w");
        o.no_verify = 1;
        o.warn = w;
        ck_assert_int_eq(lora_adapter_load(a, &o, &ad, &err), 0);
        fclose(w);
        ck_assert_ptr_nonnull(strstr(wbuf, "NOT verified"));
        lora_adapter_free(ad);
        free(a);
    }
    lora_adapter_free(folder);
    free(pubp);
    free(pub2p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("archive");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_hostile);
    tcase_add_test(tc, test_manifest_parse);
    tcase_add_test(tc, test_create_refusals);
    tcase_add_test(tc, test_open_adapter);
    tcase_add_test(tc, test_strict_tar);
    tcase_add_test(tc, test_verified_is_used);
    tcase_add_test(tc, test_open_fd);
    tcase_add_test(tc, test_bomb_bounded);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

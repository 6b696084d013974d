/*
 * sign.c - Ed25519 keys and signatures in minisign's formats, so that
 * `minisign -V` checks what we sign and keys made by `minisign -G` sign
 * for us (formats.md section 2, minisign 0.11).  Parsing follows
 * minisign 0.11's line rules exactly: fgets with its buffer sizes,
 * CR/LF trimmed, strict base64 of the exact struct size.  Secret key
 * material lives only in sodium_malloc'd memory and is wiped after use.
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <string.h>

#define COMMENT_PREFIX "untrusted comment: "
#define TRUSTED_PREFIX "trusted comment: "
#define PK_BYTES 42   /* "Ed" || key id || pk */
#define SIG_BYTES 74  /* alg || key id || sig */
#define SK_BYTES 158
#define KEYNUM_SK_BYTES 104
/* minisign's B64_MAX_LEN_FROM_BIN_LEN(X) + 2: the fgets buffer sizes */
#define B64_LINE(x) ((((x) + 2) / 3 * 4 + 1) + 2)

struct lora_seckey {
    unsigned char key_id[LORA_KEYID_BYTES];
    unsigned char sk[crypto_sign_SECRETKEYBYTES]; /* seed || pk */
};

static void le64_store(unsigned char *p, uint64_t x)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(x >> (8 * i));
}

static uint64_t le64_load(const unsigned char *p)
{
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    return x;
}

void lora_keyid_str(const unsigned char key_id[LORA_KEYID_BYTES], char buf[LORA_KEYID_STR])
{
    snprintf(buf, LORA_KEYID_STR, "%" PRIX64, le64_load(key_id));
}

static lora_seckey *seckey_alloc(lora_error *err)
{
    lora_seckey *sk = sodium_malloc(sizeof *sk);
    if (!sk)
        lora_oom(err);
    return sk;
}

void lora_seckey_free(lora_seckey *sk)
{
    if (sk)
        sodium_free(sk); /* wipes */
}

int lora_keygen(lora_seckey **out, lora_error *err)
{
    *out = NULL;
    lora_seckey *sk = seckey_alloc(err);
    if (!sk)
        return LORA_EIO;
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    randombytes_buf(sk->key_id, sizeof sk->key_id);
    if (crypto_sign_keypair(pk, sk->sk) != 0) {
        lora_seckey_free(sk);
        return lora_seterr(err, LORA_EIO, "cannot generate a key pair");
    }
    *out = sk;
    return LORA_OK;
}

void lora_seckey_pubkey(const lora_seckey *sk, lora_pubkey *pk)
{
    memcpy(pk->key_id, sk->key_id, sizeof pk->key_id);
    crypto_sign_ed25519_sk_to_pk(pk->pk, sk->sk);
}

/* ---- base64 and fgets, as minisign uses them ---- */

/* Strict standard base64 of exactly want bytes. */
static int b64_exact(const char *s, unsigned char *bin, size_t want)
{
    size_t n = strlen(s), got = 0;
    if (n % 4 != 0 || n != sodium_base64_ENCODED_LEN(want, sodium_base64_VARIANT_ORIGINAL) - 1)
        return -1;
    if (sodium_base642bin(bin, want, s, n, NULL, &got, NULL, sodium_base64_VARIANT_ORIGINAL) !=
            0 ||
        got != want)
        return -1;
    return 0;
}

typedef struct reader {
    const char *p;
    size_t left;
    size_t last; /* bytes of the last line read */
} reader;

/* fgets(buf, size, fp) over memory: at most size-1 bytes, stopping after
 * a newline; 0 at end of input.  NUL bytes end the C string early, as
 * they do for minisign. */
static int rd_fgets(reader *r, char *buf, size_t size)
{
    if (r->left == 0)
        return 0;
    size_t i = 0;
    while (i + 1 < size && r->left > 0) {
        char c = *r->p++;
        r->left--;
        buf[i++] = c;
        if (c == '\n')
            break;
    }
    buf[i] = '\0';
    r->last = i;
    return 1;
}

/* The line rd_fgets just read holds a NUL byte (which C strings, and
 * minisign's fgets, would silently cut it at). */
static int had_nul(const reader *r, const char *line)
{
    return strlen(line) != r->last;
}

/* minisign's trim(): cut at the first CR or LF; 1 if the line had its LF. */
static int trim(char *s)
{
    int had_lf = strchr(s, '\n') != NULL;
    s[strcspn(s, "\r\n")] = '\0';
    return had_lf;
}

/* ---- public keys ---- */

static void pubkey_bytes(const lora_pubkey *pk, unsigned char b[PK_BYTES])
{
    memcpy(b, "Ed", 2);
    memcpy(b + 2, pk->key_id, 8);
    memcpy(b + 10, pk->pk, 32);
}

void lora_pubkey_b64(const lora_pubkey *pk, char buf[57])
{
    unsigned char b[PK_BYTES];
    pubkey_bytes(pk, b);
    sodium_bin2base64(buf, 57, b, sizeof b, sodium_base64_VARIANT_ORIGINAL);
}

int lora_pubkey_from_string(const char *b64, lora_pubkey *pk, lora_error *err)
{
    unsigned char b[PK_BYTES];
    if (b64_exact(b64, b, sizeof b) != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "not a public key: expected %d base64 characters encoding %d bytes",
                           56, PK_BYTES);
    if (memcmp(b, "Ed", 2) != 0)
        return lora_seterr(err, LORA_EINPUT, "public key: unsupported signature algorithm");
    memcpy(pk->key_id, b + 2, 8);
    memcpy(pk->pk, b + 10, 32);
    return LORA_OK;
}

int lora_pubkey_parse(const char *text, size_t len, lora_pubkey *pk, lora_error *err)
{
    reader r = {text, len, 0};
    char comment[LORA_SIG_COMMENT_MAX], line[B64_LINE(PK_BYTES)];
    if (!rd_fgets(&r, comment, sizeof comment) || !rd_fgets(&r, line, sizeof line))
        return lora_seterr(err, LORA_EINPUT, "public key file: too short (want a comment line "
                                             "and a key line)");
    trim(line);
    return lora_pubkey_from_string(line, pk, err);
}

int lora_pubkey_load(const char *path, lora_pubkey *pk, lora_error *err)
{
    char *buf;
    size_t len;
    int rc = lora_read_file(path, 64 * 1024, &buf, &len, err);
    if (rc)
        return rc;
    rc = lora_pubkey_parse(buf, len, pk, err);
    free(buf);
    if (rc)
        lora_err_prefix(err, "%s", path);
    return rc;
}

int lora_pubkey_write(const char *path, const lora_pubkey *pk, lora_error *err)
{
    char id[LORA_KEYID_STR], b64[57], text[256];
    lora_keyid_str(pk->key_id, id);
    lora_pubkey_b64(pk, b64);
    int n = snprintf(text, sizeof text, COMMENT_PREFIX "minisign public key %s\n%s\n", id, b64);
    return lora_write_file_atomic(path, text, (size_t)n, 0644, err);
}

/* ---- secret keys ---- */

/* chk = BLAKE2b-256("Ed" || key id || sk) */
static void seckey_chk(const unsigned char *key_id, const unsigned char *sk, unsigned char *chk)
{
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, NULL, 0, crypto_generichash_BYTES);
    crypto_generichash_update(&hs, (const unsigned char *)"Ed", 2);
    crypto_generichash_update(&hs, key_id, LORA_KEYID_BYTES);
    crypto_generichash_update(&hs, sk, crypto_sign_SECRETKEYBYTES);
    crypto_generichash_final(&hs, chk, crypto_generichash_BYTES);
    sodium_memzero(&hs, sizeof hs);
}

/* Decode the key line into b (SK_BYTES, locked memory) and check the
 * fixed fields. */
static int seckey_decode(const char *text, size_t len, unsigned char *b, lora_error *err)
{
    reader r = {text, len, 0};
    char comment[LORA_SIG_COMMENT_MAX];
    char *line = sodium_malloc(B64_LINE(SK_BYTES));
    if (!line)
        return lora_oom(err);
    int rc = LORA_OK;
    if (!rd_fgets(&r, comment, sizeof comment) || !rd_fgets(&r, line, B64_LINE(SK_BYTES))) {
        rc = lora_seterr(err, LORA_EINPUT,
                         "secret key file: too short (want a comment line and a key line)");
        goto out;
    }
    trim(line);
    if (b64_exact(line, b, SK_BYTES) != 0) {
        rc = lora_seterr(err, LORA_EINPUT,
                         "not a secret key: expected %d base64 characters encoding %d bytes",
                         212, SK_BYTES);
        goto out;
    }
    if (memcmp(b, "Ed", 2) != 0)
        rc = lora_seterr(err, LORA_EINPUT, "secret key: unsupported signature algorithm");
    else if (memcmp(b + 2, "Sc", 2) != 0 && memcmp(b + 2, "\0\0", 2) != 0)
        rc = lora_seterr(err, LORA_EINPUT, "secret key: unsupported key derivation function");
    else if (memcmp(b + 4, "B2", 2) != 0)
        rc = lora_seterr(err, LORA_EINPUT, "secret key: unsupported checksum function");
out:
    sodium_free(line);
    return rc;
}

int lora_seckey_encrypted(const char *text, size_t len, int *encrypted, lora_error *err)
{
    unsigned char *b = sodium_malloc(SK_BYTES);
    if (!b)
        return lora_oom(err);
    int rc = seckey_decode(text, len, b, err);
    if (!rc)
        *encrypted = memcmp(b + 2, "Sc", 2) == 0;
    sodium_free(b);
    return rc;
}

int lora_seckey_parse(const char *text, size_t len, const char *password, lora_seckey **out,
                      lora_error *err)
{
    *out = NULL;
    unsigned char *b = sodium_malloc(SK_BYTES);
    unsigned char *stream = sodium_malloc(KEYNUM_SK_BYTES);
    lora_seckey *sk = seckey_alloc(err);
    int rc;
    if (!b || !stream || !sk) {
        rc = lora_oom(err);
        goto out;
    }
    rc = seckey_decode(text, len, b, err);
    if (rc)
        goto out;
    unsigned char *salt = b + 6, *keynum = b + 54;
    uint64_t ops = le64_load(b + 38), mem = le64_load(b + 46);
    int encrypted = memcmp(b + 2, "Sc", 2) == 0;
    unsigned char chk[crypto_generichash_BYTES];
    if (encrypted) {
        if (!password) {
            rc = lora_seterr(err, LORA_EUSAGE, "secret key is encrypted: a password is needed");
            goto out;
        }
        if (ops > LORA_SCRYPT_OPSLIMIT || mem > LORA_SCRYPT_MEMLIMIT) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "secret key: scrypt limits (opslimit %" PRIu64 ", memlimit %" PRIu64
                             ") above minisign's",
                             ops, mem);
            goto out;
        }
        if (crypto_pwhash_scryptsalsa208sha256(stream, KEYNUM_SK_BYTES, password,
                                               strlen(password), salt, ops, (size_t)mem) != 0) {
            rc = lora_seterr(err, LORA_EIO, "secret key: scrypt failed (out of memory?)");
            goto out;
        }
        for (size_t i = 0; i < KEYNUM_SK_BYTES; i++)
            keynum[i] ^= stream[i];
    }
    seckey_chk(keynum, keynum + 8, chk);
    int chk_ok = sodium_memcmp(chk, keynum + 72, sizeof chk) == 0;
    /* minisign 0.11 -G -W leaves chk all zero for unencrypted keys */
    if (!chk_ok && !(!encrypted && sodium_is_zero(keynum + 72, sizeof chk))) {
        rc = encrypted ? lora_seterr(err, LORA_ECHECK, "wrong password for that key")
                       : lora_seterr(err, LORA_EINPUT, "secret key: checksum mismatch");
        goto out;
    }
    memcpy(sk->key_id, keynum, 8);
    memcpy(sk->sk, keynum + 8, sizeof sk->sk);
    /* the sk's public half must be what its seed gives, or signatures
     * would not verify against the published key */
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk2[crypto_sign_SECRETKEYBYTES];
    crypto_sign_seed_keypair(pk, sk2, sk->sk);
    int same = sodium_memcmp(sk2, sk->sk, sizeof sk2) == 0;
    sodium_memzero(sk2, sizeof sk2);
    if (!same) {
        rc = lora_seterr(err, LORA_EINPUT, "secret key: public half does not match the seed");
        goto out;
    }
    *out = sk;
    sk = NULL;
out:
    sodium_free(b);
    sodium_free(stream);
    lora_seckey_free(sk);
    return rc;
}

int lora_seckey_load(const char *path, const char *password, lora_seckey **out,
                     lora_error *err)
{
    char *buf;
    size_t len;
    int rc = lora_read_file(path, 64 * 1024, &buf, &len, err);
    if (rc)
        return rc;
    rc = lora_seckey_parse(buf, len, password, out, err);
    sodium_memzero(buf, len);
    free(buf);
    if (rc)
        lora_err_prefix(err, "%s", path);
    return rc;
}

int lora_seckey_write(const char *path, const lora_seckey *sk, const char *password,
                      uint64_t opslimit, uint64_t memlimit, lora_error *err)
{
    unsigned char *b = sodium_malloc(SK_BYTES);
    unsigned char *stream = sodium_malloc(KEYNUM_SK_BYTES);
    char *text = sodium_malloc(512);
    int rc = LORA_OK;
    if (!b || !stream || !text) {
        rc = lora_oom(err);
        goto out;
    }
    memset(b, 0, SK_BYTES);
    memcpy(b, "Ed", 2);
    memcpy(b + 4, "B2", 2);
    unsigned char *keynum = b + 54;
    memcpy(keynum, sk->key_id, 8);
    memcpy(keynum + 8, sk->sk, sizeof sk->sk);
    seckey_chk(keynum, keynum + 8, keynum + 72); /* before encryption, as minisign */
    if (password) {
        if (!opslimit)
            opslimit = LORA_SCRYPT_OPSLIMIT;
        if (!memlimit)
            memlimit = LORA_SCRYPT_MEMLIMIT;
        memcpy(b + 2, "Sc", 2);
        randombytes_buf(b + 6, 32);
        /* as minisign -G: halve both while the KDF cannot get its memory */
        for (;;) {
            if (crypto_pwhash_scryptsalsa208sha256(stream, KEYNUM_SK_BYTES, password,
                                                   strlen(password), b + 6, opslimit,
                                                   (size_t)memlimit) == 0)
                break;
            if (memlimit < 16 * 1024 * 1024) {
                rc = lora_seterr(err, LORA_EIO, "scrypt failed: not enough memory");
                goto out;
            }
            opslimit /= 2;
            memlimit /= 2;
        }
        le64_store(b + 38, opslimit);
        le64_store(b + 46, memlimit);
        for (size_t i = 0; i < KEYNUM_SK_BYTES; i++)
            keynum[i] ^= stream[i];
    }
    int n = snprintf(text, 512, COMMENT_PREFIX "minisign %s secret key\n",
                     password ? "encrypted" : "unencrypted");
    sodium_bin2base64(text + n, 512 - (size_t)n, b, SK_BYTES, sodium_base64_VARIANT_ORIGINAL);
    n += (int)strlen(text + n);
    text[n++] = '\n';
    rc = lora_write_file_atomic(path, text, (size_t)n, 0600, err);
out:
    sodium_free(b);
    sodium_free(stream);
    sodium_free(text);
    return rc;
}

/* ---- signatures ---- */

int lora_sig_parse(const char *text, size_t len, lora_sig *sig, lora_error *err)
{
    memset(sig, 0, sizeof *sig);
    reader r = {text, len, 0};
    char line[LORA_SIG_TRUSTED_MAX];
    static const char *what = "signature";

    if (!rd_fgets(&r, line, LORA_SIG_COMMENT_MAX))
        return lora_seterr(err, LORA_EINPUT, "%s: empty file", what);
    if (had_nul(&r, line))
        return lora_seterr(err, LORA_EINPUT, "%s: untrusted comment contains a NUL byte", what);
    if (!trim(line))
        return lora_seterr(err, LORA_EINPUT, "%s: untrusted comment line too long (limit %d "
                                             "bytes with its newline)",
                           what, LORA_SIG_COMMENT_MAX - 1);
    if (strncmp(line, COMMENT_PREFIX, strlen(COMMENT_PREFIX)) != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: first line should start with \"%s\"", what,
                           COMMENT_PREFIX);
    snprintf(sig->untrusted, sizeof sig->untrusted, "%s", line + strlen(COMMENT_PREFIX));

    if (!rd_fgets(&r, line, B64_LINE(SIG_BYTES)))
        return lora_seterr(err, LORA_EINPUT, "%s: signature line missing", what);
    if (had_nul(&r, line))
        return lora_seterr(err, LORA_EINPUT, "%s: signature line contains a NUL byte", what);
    if (!trim(line))
        return lora_seterr(err, LORA_EINPUT, "%s: signature line too long", what);
    unsigned char b[SIG_BYTES];
    if (b64_exact(line, b, sizeof b) != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: signature line is not %d base64 characters encoding %d bytes",
                           what, 100, SIG_BYTES);
    if (memcmp(b, "ED", 2) == 0)
        sig->prehashed = 1;
    else if (memcmp(b, "Ed", 2) == 0)
        sig->prehashed = 0;
    else
        return lora_seterr(err, LORA_EINPUT, "%s: unsupported signature algorithm", what);
    memcpy(sig->key_id, b + 2, 8);
    memcpy(sig->sig, b + 10, 64);

    if (!rd_fgets(&r, line, LORA_SIG_TRUSTED_MAX))
        return lora_seterr(err, LORA_EINPUT, "%s: trusted comment missing", what);
    if (strncmp(line, TRUSTED_PREFIX, strlen(TRUSTED_PREFIX)) != 0)
        return lora_seterr(err, LORA_EINPUT, "%s: third line should start with \"%s\"", what,
                           TRUSTED_PREFIX);
    if (had_nul(&r, line))
        return lora_seterr(err, LORA_EINPUT, "%s: trusted comment contains a NUL byte", what);
    if (!trim(line))
        return lora_seterr(err, LORA_EINPUT, "%s: trusted comment line too long (limit %d "
                                             "bytes with its newline)",
                           what, LORA_SIG_TRUSTED_MAX - 1);
    snprintf(sig->trusted, sizeof sig->trusted, "%s", line + strlen(TRUSTED_PREFIX));

    /* minisign 0.11 does not insist on the global signature line's LF */
    if (!rd_fgets(&r, line, B64_LINE(64)))
        return lora_seterr(err, LORA_EINPUT, "%s: global signature line missing", what);
    if (had_nul(&r, line))
        return lora_seterr(err, LORA_EINPUT, "%s: global signature line contains a NUL byte", what);
    trim(line);
    if (b64_exact(line, sig->global_sig, 64) != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: global signature is not %d base64 characters encoding 64 bytes",
                           what, 88);
    return LORA_OK;
}

int lora_sign(const lora_seckey *sk, const void *msg, size_t msglen, const char *trusted,
              const char *untrusted, char **text, size_t *len, lora_error *err)
{
    *text = NULL;
    *len = 0;
    if (!untrusted)
        untrusted = "signature from minisign secret key";
    size_t tlen = strlen(trusted);
    if (tlen >= LORA_SIG_TRUSTED_MAX - sizeof TRUSTED_PREFIX)
        return lora_seterr(err, LORA_EUSAGE, "trusted comment too long (%zu bytes)", tlen);
    if (strlen(untrusted) >= LORA_SIG_COMMENT_MAX - sizeof COMMENT_PREFIX)
        return lora_seterr(err, LORA_EUSAGE, "untrusted comment too long");
    /* printable ASCII and tab only: what minisign 0.12 also accepts */
    for (const char *c = trusted; *c; c++)
        if (!(*c == '\t' || (*c >= 0x20 && *c < 0x7f)))
            return lora_seterr(err, LORA_EUSAGE, "trusted comment has a control character");
    for (const char *c = untrusted; *c; c++)
        if (!(*c == '\t' || (*c >= 0x20 && *c < 0x7f)))
            return lora_seterr(err, LORA_EUSAGE, "untrusted comment has a control character");

    unsigned char h[crypto_generichash_BYTES_MAX];
    lora_hash(msg, msglen, h, sizeof h);
    unsigned char sb[SIG_BYTES];
    memcpy(sb, "ED", 2);
    memcpy(sb + 2, sk->key_id, 8);
    crypto_sign_detached(sb + 10, NULL, h, sizeof h, sk->sk);

    unsigned char *gm = malloc(64 + tlen);
    if (!gm)
        return lora_oom(err);
    memcpy(gm, sb + 10, 64);
    memcpy(gm + 64, trusted, tlen);
    unsigned char gsig[64];
    crypto_sign_detached(gsig, NULL, gm, 64 + tlen, sk->sk);
    free(gm);

    char sig64[104], gsig64[92];
    sodium_bin2base64(sig64, sizeof sig64, sb, sizeof sb, sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2base64(gsig64, sizeof gsig64, gsig, sizeof gsig, sodium_base64_VARIANT_ORIGINAL);
    size_t cap = strlen(untrusted) + tlen + 512;
    char *t = malloc(cap);
    if (!t)
        return lora_oom(err);
    int n = snprintf(t, cap, COMMENT_PREFIX "%s\n%s\n" TRUSTED_PREFIX "%s\n%s\n", untrusted,
                     sig64, trusted, gsig64);
    *text = t;
    *len = (size_t)n;
    return LORA_OK;
}

int lora_sig_verify(const lora_sig *sig, const lora_pubkey *pk, const void *msg, size_t msglen,
                    lora_error *err)
{
    char a[LORA_KEYID_STR], b[LORA_KEYID_STR];
    if (memcmp(sig->key_id, pk->key_id, LORA_KEYID_BYTES) != 0) {
        lora_keyid_str(sig->key_id, a);
        lora_keyid_str(pk->key_id, b);
        return lora_seterr(err, LORA_ECHECK,
                           "signature key id is %s but the key id in the public key is %s", a,
                           b);
    }
    int bad;
    if (sig->prehashed) {
        unsigned char h[crypto_generichash_BYTES_MAX];
        lora_hash(msg, msglen, h, sizeof h);
        bad = crypto_sign_verify_detached(sig->sig, h, sizeof h, pk->pk);
    } else {
        bad = crypto_sign_verify_detached(sig->sig, msg, msglen, pk->pk);
    }
    if (bad)
        return lora_seterr(err, LORA_ECHECK, "signature verification failed");
    size_t tlen = strlen(sig->trusted);
    unsigned char *gm = malloc(64 + tlen);
    if (!gm)
        return lora_oom(err);
    memcpy(gm, sig->sig, 64);
    memcpy(gm + 64, sig->trusted, tlen);
    bad = crypto_sign_verify_detached(sig->global_sig, gm, 64 + tlen, pk->pk);
    free(gm);
    if (bad)
        return lora_seterr(err, LORA_ECHECK, "trusted comment signature verification failed");
    return LORA_OK;
}

int lora_sig_verify_any(const lora_sig *sig, const lora_pubkey *keys, size_t n,
                        const void *msg, size_t msglen, size_t *which, lora_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (memcmp(keys[i].key_id, sig->key_id, LORA_KEYID_BYTES) != 0)
            continue;
        int rc = lora_sig_verify(sig, &keys[i], msg, msglen, err);
        if (rc == LORA_OK && which)
            *which = i;
        return rc;
    }
    char id[LORA_KEYID_STR];
    lora_keyid_str(sig->key_id, id);
    return lora_seterr(err, LORA_ECHECK, "signed by unknown key %s (not among the %zu given)", id,
                       n);
}

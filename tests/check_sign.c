/*
 * check_sign.c - minisign-compatible keys and signatures (sign.c) and
 * the BLAKE2b helpers (hash.c): round trips, keys and signatures made
 * by minisign 0.11 itself, and malformed input of every kind.
 */
#include "internal.h"
#include "testutil.h"

#include <sodium.h>
#include <string.h>

/* Made by `minisign -G -W` (0.11): chk all zero, kdf 00 00. */
static const char MS_PUB[] = "untrusted comment: minisign public key 4E63B01230A8E4A9\n"
                             "RWSp5KgwErBjTlLzy44YMtJVJpGxsJQrMQJCgdfCZ5cLJA9MkEBCGn5+\n";
static const char MS_SEC[] =
    "untrusted comment: minisign encrypted secret key\n"
    "RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAqeSoMBKwY06xeXdOFNlO"
    "9jSFRi8/+nE8CMj+PAlHY6b69e3OikAK9lLzy44YMtJVJpGxsJQrMQJCgdfCZ5cLJA9MkEBCGn5+AAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
/* `minisign -S -s sec -m m -t "tc ED"` and `-l -t "tc legacy"` of "hello lora\n" */
static const char MS_MSG[] = "hello lora\n";
static const char MS_SIG_ED[] =
    "untrusted comment: signature from minisign secret key\n"
    "RUSp5KgwErBjTmFwSLS4I7NdstFlGhj3Oak8sLl6oXLpaOK2ZiRd2uW9zBK8x7BDzmqSyAxJ9On0E+LhzawqZi4pP3P"
    "POKFcSw4=\n"
    "trusted comment: tc ED\n"
    "nwHtimM0ZGoAmDz0g+3UnAPqEVJ3FOlSo32Nz6ke1+u7meRNcvZjq6dMP4Lp2avo0xDhQ4QaFcy/mtoblph2Bg==\n";
static const char MS_SIG_LEGACY[] =
    "untrusted comment: signature from minisign secret key\n"
    "RWSp5KgwErBjTlSs8jGQTIbgX3NCW7MhHplq6SKRQKsGBRNpdkVZx5rQhu7BeQGCIHyQY8+U/yGSAvRbU/0wh+OK9dK"
    "FipWnQwA=\n"
    "trusted comment: tc legacy\n"
    "/VNzPvOTvAun1GT71iA4cNv6yvtBoXhS2mTj/T1nFW/U1PecOekhSHwib1MEwi2A0qiIV6FKK1zSP4iJtzsBDQ==\n";

/* small scrypt limits keep the encrypted-key tests fast */
#define OPS 32768
#define MEM (8 * 1024 * 1024)

START_TEST(test_hash_known)
{
    /* BLAKE2b-256("") and BLAKE2b-512("abc") from RFC 7693 / reference */
    unsigned char h[64];
    char hex[129];
    lora_hash("", 0, h, 32);
    lora_hex(h, 32, hex);
    ck_assert_str_eq(hex, "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
    lora_hash("abc", 3, h, 64);
    lora_hex(h, 64, hex);
    ck_assert_str_eq(hex, "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1"
                          "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923");
    /* streaming in odd pieces equals one shot */
    unsigned char buf[3000], a[32], b[32];
    uint64_t st = 7;
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)tu_rand(&st);
    lora_hasher *hs;
    ck_assert_int_eq(lora_hasher_new(32, &hs, NULL), 0);
    for (size_t off = 0, step = 1; off < sizeof buf; off += step, step = step * 3 % 997 + 1)
        lora_hasher_update(hs, buf + off, off + step > sizeof buf ? sizeof buf - off : step);
    lora_hasher_final(hs, a);
    lora_hash(buf, sizeof buf, b, 32);
    ck_assert_mem_eq(a, b, 32);
    /* file */
    char *dir = tu_tmpdir(), *p = tu_path(dir, "f");
    tu_write(p, buf, sizeof buf);
    uint64_t size = 0;
    ck_assert_int_eq(lora_hash_file(p, 32, a, &size, NULL), 0);
    ck_assert_uint_eq(size, sizeof buf);
    ck_assert_mem_eq(a, b, 32);
    lora_error err;
    ck_assert_int_eq(lora_hash_file(dir, 32, a, NULL, &err), LORA_EINPUT);
    ck_assert_int_ne(lora_hasher_new(65, &hs, &err), 0);
    /* hex round trip and refusals */
    unsigned char back[32];
    lora_hex(b, 32, hex);
    ck_assert_int_eq(lora_unhex(hex, back, 32), 0);
    ck_assert_mem_eq(back, b, 32);
    hex[5] = 'G';
    ck_assert_int_eq(lora_unhex(hex, back, 32), -1);
    ck_assert_int_eq(lora_unhex("abc", back, 32), -1);
    tu_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

START_TEST(test_minisign_keys_and_sigs)
{
    lora_error err;
    lora_pubkey pk, pk2;
    ck_assert_int_eq(lora_pubkey_parse(MS_PUB, strlen(MS_PUB), &pk, &err), 0);
    char id[LORA_KEYID_STR];
    lora_keyid_str(pk.key_id, id);
    ck_assert_str_eq(id, "4E63B01230A8E4A9");
    ck_assert_int_eq(lora_pubkey_from_string("RWSp5KgwErBjTlLzy44YMtJVJpGxsJQrMQJCgdfCZ5cLJA9MkEBCGn5+",
                                             &pk2, &err),
                     0);
    ck_assert_mem_eq(&pk, &pk2, sizeof pk);

    int enc = -1;
    ck_assert_int_eq(lora_seckey_encrypted(MS_SEC, strlen(MS_SEC), &enc, &err), 0);
    ck_assert_int_eq(enc, 0);
    lora_seckey *sk;
    ck_assert_msg(lora_seckey_parse(MS_SEC, strlen(MS_SEC), NULL, &sk, &err) == 0, "%s", err.msg);
    lora_seckey_pubkey(sk, &pk2);
    ck_assert_mem_eq(&pk, &pk2, sizeof pk);

    lora_sig sig;
    ck_assert_msg(lora_sig_parse(MS_SIG_ED, strlen(MS_SIG_ED), &sig, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(sig.prehashed, 1);
    ck_assert_str_eq(sig.trusted, "tc ED");
    ck_assert_str_eq(sig.untrusted, "signature from minisign secret key");
    ck_assert_int_eq(lora_sig_verify(&sig, &pk, MS_MSG, strlen(MS_MSG), &err), 0);
    ck_assert_int_eq(lora_sig_verify(&sig, &pk, "hello lorA\n", 11, &err), LORA_ECHECK);

    ck_assert_int_eq(lora_sig_parse(MS_SIG_LEGACY, strlen(MS_SIG_LEGACY), &sig, &err), 0);
    ck_assert_int_eq(sig.prehashed, 0);
    ck_assert_int_eq(lora_sig_verify(&sig, &pk, MS_MSG, strlen(MS_MSG), &err), 0);

    /* our signature with minisign's key: same bytes as minisign makes
     * (Ed25519 is deterministic) for the same trusted comment */
    char *text;
    size_t len;
    ck_assert_int_eq(lora_sign(sk, MS_MSG, strlen(MS_MSG), "tc ED", NULL, &text, &len, &err), 0);
    ck_assert_uint_eq(len, strlen(MS_SIG_ED));
    ck_assert_mem_eq(text, MS_SIG_ED, len);
    free(text);
    lora_seckey_free(sk);
}
END_TEST

START_TEST(test_roundtrip)
{
    lora_error err;
    char *dir = tu_tmpdir();
    char *secp = tu_path(dir, "k.sec"), *pubp = tu_path(dir, "k.pub");
    for (int encrypted = 0; encrypted < 2; encrypted++) {
        lora_seckey *sk, *sk2;
        lora_pubkey pk, pk2;
        ck_assert_int_eq(lora_keygen(&sk, &err), 0);
        lora_seckey_pubkey(sk, &pk);
        ck_assert_int_eq(lora_seckey_write(secp, sk, encrypted ? "pass word" : NULL, OPS, MEM, &err),
                         0);
        ck_assert_int_eq(lora_pubkey_write(pubp, &pk, &err), 0);
        ck_assert_int_eq(lora_pubkey_load(pubp, &pk2, &err), 0);
        ck_assert_mem_eq(&pk, &pk2, sizeof pk);
        size_t len;
        char *text = tu_read(secp, &len);
        int enc = -1;
        ck_assert_int_eq(lora_seckey_encrypted(text, len, &enc, &err), 0);
        ck_assert_int_eq(enc, encrypted);
        if (encrypted) {
            ck_assert_int_eq(lora_seckey_load(secp, NULL, &sk2, &err), LORA_EUSAGE);
            ck_assert_int_eq(lora_seckey_load(secp, "wrong", &sk2, &err), LORA_ECHECK);
            ck_assert_ptr_nonnull(strstr(err.msg, "wrong password"));
        } else {
            /* written unencrypted keys carry a valid chk: flipping a sk
             * byte is caught */
            unsigned char raw[158];
            char *line = strchr(text, '\n') + 1;
            line[strcspn(line, "\n")] = '\0';
            ck_assert_int_eq(sodium_base642bin(raw, sizeof raw, line, strlen(line), NULL, NULL, NULL,
                                               sodium_base64_VARIANT_ORIGINAL),
                             0);
            ck_assert(!sodium_is_zero(raw + 54 + 72, 32));
        }
        free(text);
        ck_assert_msg(lora_seckey_load(secp, "pass word", &sk2, &err) == 0, "%s", err.msg);
        /* sign with the reloaded key, verify with the written public key */
        char *sigt;
        size_t sigl;
        ck_assert_int_eq(lora_sign(sk2, "data", 4, "name:x\tversion:1", "c", &sigt, &sigl, &err), 0);
        lora_sig sig;
        ck_assert_int_eq(lora_sig_parse(sigt, sigl, &sig, &err), 0);
        ck_assert_int_eq(lora_sig_verify(&sig, &pk2, "data", 4, &err), 0);
        size_t which = 99;
        lora_pubkey keys[2];
        lora_pubkey_parse(MS_PUB, strlen(MS_PUB), &keys[0], NULL);
        keys[1] = pk;
        ck_assert_int_eq(lora_sig_verify_any(&sig, keys, 2, "data", 4, &which, &err), 0);
        ck_assert_uint_eq(which, 1);
        ck_assert_int_eq(lora_sig_verify_any(&sig, keys, 1, "data", 4, &which, &err), LORA_ECHECK);
        ck_assert_ptr_nonnull(strstr(err.msg, "unknown key"));
        free(sigt);
        lora_seckey_free(sk);
        lora_seckey_free(sk2);
    }
    tu_rmtree(dir);
    free(secp);
    free(pubp);
    free(dir);
}
END_TEST

/* Replace the first occurrence of from by to in a copy of s. */
static char *subst(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    ck_assert_ptr_nonnull(at);
    char *r = malloc(strlen(s) + strlen(to) + 1);
    size_t pre = (size_t)(at - s);
    memcpy(r, s, pre);
    strcpy(r + pre, to);
    strcat(r, at + strlen(from));
    return r;
}

static int parse_sig(const char *text, lora_error *err)
{
    lora_sig sig;
    return lora_sig_parse(text, strlen(text), &sig, err);
}

static int verify_sig(const char *text, lora_error *err)
{
    lora_sig sig;
    lora_pubkey pk;
    ck_assert_int_eq(lora_pubkey_parse(MS_PUB, strlen(MS_PUB), &pk, NULL), 0);
    int rc = lora_sig_parse(text, strlen(text), &sig, err);
    if (rc)
        return rc;
    return lora_sig_verify(&sig, &pk, MS_MSG, strlen(MS_MSG), err);
}

START_TEST(test_malformed_sigs)
{
    lora_error err;
    char *t;
    /* each malformed signature: LORA_EINPUT with a message */
    const char *cases[][2] = {
        {"untrusted comment: signature", "untrusted commenT: signature"},   /* prefix */
        {"trusted comment: tc ED", "trusted-comment: tc ED"},               /* prefix */
        {"RUSp5Kgw", "RUSp5K*w"},                                           /* bad base64 */
        {"RUSp5Kgw", "RUSp5KgwAAAA"},                                       /* too long */
        {"POKFcSw4=\n", "POKFcSw\n"},                                       /* too short */
        {"RUSp5Kgw", "RXSp5Kgw"},                                           /* algorithm "E?" */
        {"nwHtimM0", "nwHtim!0"},                                           /* global b64 */
        {"mtoblph2Bg==\n", "mtoblph2Bg=\n"},                                /* bad padding */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        t = subst(MS_SIG_ED, cases[i][0], cases[i][1]);
        ck_assert_msg(parse_sig(t, &err) == LORA_EINPUT, "case %zu accepted", i);
        ck_assert(err.msg[0] != '\0');
        free(t);
    }
    /* truncated at every length: never accepted; missing final LF is fine */
    size_t n = strlen(MS_SIG_ED);
    for (size_t cut = 0; cut < n - 1; cut++) {
        char *c = strndup(MS_SIG_ED, cut);
        lora_sig sig;
        ck_assert_msg(lora_sig_parse(c, cut, &sig, &err) != LORA_OK, "cut at %zu accepted", cut);
        free(c);
    }
    ck_assert_int_eq(verify_sig(MS_SIG_ED, &err), 0);
    char *nolf = strndup(MS_SIG_ED, n - 1);
    ck_assert_int_eq(verify_sig(nolf, &err), 0);
    free(nolf);
    /* CRLF line endings are trimmed, as minisign does */
    char *crlf = subst(MS_SIG_ED, "tc ED\n", "tc ED\r\n");
    ck_assert_int_eq(verify_sig(crlf, &err), 0);
    free(crlf);

    /* well-formed but wrong: LORA_ECHECK */
    t = subst(MS_SIG_ED, "tc ED", "tc EE"); /* tampered trusted comment */
    ck_assert_int_eq(verify_sig(t, &err), LORA_ECHECK);
    ck_assert_ptr_nonnull(strstr(err.msg, "trusted comment"));
    free(t);
    t = subst(MS_SIG_ED, "nwHtimM0", "nwHtimM1"); /* tampered global signature */
    ck_assert_int_eq(verify_sig(t, &err), LORA_ECHECK);
    free(t);
    t = subst(MS_SIG_ED, "RUSp5Kgw", "RUSq5Kgw"); /* another key id */
    ck_assert_int_eq(verify_sig(t, &err), LORA_ECHECK);
    ck_assert_ptr_nonnull(strstr(err.msg, "key id"));
    free(t);
    t = subst(MS_SIG_ED, "RUSp", "RWSp"); /* ED signature relabelled legacy */
    ck_assert_int_eq(verify_sig(t, &err), LORA_ECHECK);
    free(t);

    /* over-long lines: untrusted comment of 1023 bytes with LF is the
     * limit; one more is refused; trusted comment line limit 8191 */
    char big[9000];
    memset(big, 'a', sizeof big);
    size_t pre = strlen("untrusted comment: ");
    big[1022 - pre] = '\0';
    char *ok = malloc(20000);
    snprintf(ok, 20000, "untrusted comment: %s%s", big, strchr(MS_SIG_ED, '\n'));
    ck_assert_int_eq(strchr(ok, '\n') - ok, 1022);
    ck_assert_int_eq(parse_sig(ok, &err), 0);
    big[1022 - pre] = 'a';
    big[1023 - pre] = '\0';
    snprintf(ok, 20000, "untrusted comment: %s%s", big, strchr(MS_SIG_ED, '\n'));
    ck_assert_int_eq(parse_sig(ok, &err), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(err.msg, "too long"));
    memset(big, 'a', sizeof big);
    big[8190 - strlen("trusted comment: ")] = '\0';
    char *tc = malloc(8192); /* room for the one byte too many below */
    ck_assert_ptr_nonnull(tc);
    strcpy(tc, big);
    t = subst(MS_SIG_ED, "tc ED", tc);
    ck_assert_int_eq(parse_sig(t, &err), 0);
    free(t);
    tc[strlen(tc)] = 'a';
    tc[8191 - strlen("trusted comment: ")] = '\0';
    t = subst(MS_SIG_ED, "tc ED", tc);
    ck_assert_int_eq(parse_sig(t, &err), LORA_EINPUT);
    free(t);
    free(tc);
    free(ok);
    /* a NUL byte in a line is named as such (issue 20 item 11), not
     * reported as a line too long: in each of the four lines */
    {
        const char *at[] = {"signature from", "RUSp5Kgw", "tc ED", "nwHtimM0"};
        const char *say[] = {"untrusted comment contains a NUL", "signature line contains a NUL",
                             "trusted comment contains a NUL",
                             "global signature line contains a NUL"};
        for (size_t i = 0; i < 4; i++) {
            size_t sl = strlen(MS_SIG_ED);
            char *x = malloc(sl + 1);
            memcpy(x, MS_SIG_ED, sl + 1);
            char *p = strstr(x, at[i]);
            ck_assert_ptr_nonnull(p);
            p[2] = '\0';
            lora_sig sig;
            ck_assert_int_eq(lora_sig_parse(x, sl, &sig, &err), LORA_EINPUT);
            ck_assert_msg(strstr(err.msg, say[i]) != NULL, "%zu: %s", i, err.msg);
            free(x);
        }
    }
    /* signing refuses what minisign could not read back */
    lora_seckey *sk;
    ck_assert_int_eq(lora_seckey_parse(MS_SEC, strlen(MS_SEC), NULL, &sk, &err), 0);
    size_t len;
    ck_assert_int_eq(lora_sign(sk, "x", 1, "a\nb", NULL, &t, &len, &err), LORA_EUSAGE);
    memset(big, 'a', sizeof big);
    big[8174] = '\0';
    ck_assert_int_eq(lora_sign(sk, "x", 1, big, NULL, &t, &len, &err), LORA_EUSAGE);
    big[8173] = '\0';
    ck_assert_int_eq(lora_sign(sk, "x", 1, big, NULL, &t, &len, &err), 0);
    ck_assert_int_eq(parse_sig(t, &err), 0);
    free(t);
    lora_seckey_free(sk);
}
END_TEST

START_TEST(test_malformed_keys)
{
    lora_error err;
    lora_pubkey pk;
    lora_seckey *sk;
    char *t;
    const char *pubcases[][2] = {
        {"RWSp5Kgw", "RWSp5K_w"},      /* bad base64 */
        {"RWSp5Kgw", "RWSp5KgwAAAA"},  /* too long */
        {"RWSp5Kgw", "RWSp5"},         /* wrong length */
        {"RWSp5Kgw", "RUSp5Kgw"},      /* algorithm "ED" is not a key algorithm */
    };
    for (size_t i = 0; i < sizeof pubcases / sizeof pubcases[0]; i++) {
        t = subst(MS_PUB, pubcases[i][0], pubcases[i][1]);
        ck_assert_msg(lora_pubkey_parse(t, strlen(t), &pk, &err) == LORA_EINPUT, "pub case %zu", i);
        free(t);
    }
    ck_assert_int_eq(lora_pubkey_parse(MS_PUB, 30, &pk, &err), LORA_EINPUT);
    ck_assert_int_eq(lora_pubkey_from_string("", &pk, &err), LORA_EINPUT);

    const char *seccases[][2] = {
        {"RWQAAEIy", "RWQAAEI*"},  /* bad base64 */
        {"RWQAAEIy", "RXQAAEIy"},  /* signature algorithm */
        {"RWQAAEIy", "RWQBAEIy"},  /* kdf algorithm */
        {"RWQAAEIy", "RWQAAEIz"},  /* checksum algorithm */
        {"RWQAAEIy", "RWQAAEIyAAAA"}, /* length */
    };
    for (size_t i = 0; i < sizeof seccases / sizeof seccases[0]; i++) {
        t = subst(MS_SEC, seccases[i][0], seccases[i][1]);
        ck_assert_msg(lora_seckey_parse(t, strlen(t), NULL, &sk, &err) == LORA_EINPUT, "sec case %zu",
                      i);
        free(t);
    }
    /* a changed public half of the sk is refused */
    t = subst(MS_SEC, "CGn5+AAAA", "CGn5/AAAA");
    ck_assert_int_eq(lora_seckey_parse(t, strlen(t), NULL, &sk, &err), LORA_EINPUT);
    free(t);
    ck_assert_int_eq(lora_seckey_parse(MS_SEC, 40, NULL, &sk, &err), LORA_EINPUT);

    /* an unencrypted key written by us has a chk; a changed seed byte is caught */
    ck_assert_int_eq(lora_seckey_parse(MS_SEC, strlen(MS_SEC), NULL, &sk, &err), 0);
    char *dir = tu_tmpdir(), *p = tu_path(dir, "k");
    ck_assert_int_eq(lora_seckey_write(p, sk, NULL, 0, 0, &err), 0);
    lora_seckey_free(sk);
    size_t len;
    char *text = tu_read(p, &len);
    char *line = strchr(text, '\n') + 1;
    unsigned char raw[158];
    line[212] = '\0';
    ck_assert_int_eq(sodium_base642bin(raw, sizeof raw, line, 212, NULL, NULL, NULL,
                                       sodium_base64_VARIANT_ORIGINAL),
                     0);
    raw[54 + 8] ^= 1;
    sodium_bin2base64(line, 213, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
    line[212] = '\n';
    ck_assert_int_eq(lora_seckey_parse(text, len, NULL, &sk, &err), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(err.msg, "checksum"));
    /* hostile scrypt limits are refused before any work */
    raw[54 + 8] ^= 1;
    memcpy(raw + 2, "Sc", 2);
    raw[46 + 5] = 1; /* memlimit 2^40 */
    sodium_bin2base64(line, 213, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
    line[212] = '\n';
    ck_assert_int_eq(lora_seckey_parse(text, len, "pw", &sk, &err), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(err.msg, "scrypt"));
    free(text);
    tu_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

int main(void)
{
    lora_init(NULL);
    Suite *s = suite_create("sign");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_hash_known);
    tcase_add_test(tc, test_minisign_keys_and_sigs);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_malformed_sigs);
    tcase_add_test(tc, test_malformed_keys);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

/*
 * minisign_fuzz.c - libFuzzer target for minisign key and signature
 * parsing (sign.c): the same input as a .minisig file, a public key
 * file, a public key string and an unencrypted secret key file.
 * Encrypted secret keys stop before scrypt (no password is given), so
 * each run stays fast.
 */
#include "lora.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        lora_init(NULL);
        init = 1;
    }
    const char *text = (const char *)data;
    lora_error err;
    lora_sig sig;
    lora_pubkey pk;
    if (lora_sig_parse(text, size, &sig, &err) == 0) {
        memset(&pk, 0, sizeof pk);
        memcpy(pk.key_id, sig.key_id, sizeof pk.key_id);
        lora_sig_verify(&sig, &pk, data, size, &err);
    }
    lora_pubkey_parse(text, size, &pk, &err);
    char *s = malloc(size + 1);
    if (s) {
        memcpy(s, data, size);
        s[size] = '\0';
        lora_pubkey_from_string(s, &pk, &err);
        free(s);
    }
    int enc;
    lora_seckey_encrypted(text, size, &enc, &err);
    lora_seckey *sk = NULL;
    if (lora_seckey_parse(text, size, NULL, &sk, &err) == 0) {
        char *out;
        size_t len;
        if (lora_sign(sk, "x", 1, "t", NULL, &out, &len, &err) == 0)
            free(out);
        lora_seckey_free(sk);
    }
    return 0;
}

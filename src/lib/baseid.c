/*
 * baseid.c - is this base the one the adapter was made for?
 *
 * A base of the right shapes but the wrong weights (an Instruct
 * checkpoint instead of the base, another fine-tune) binds without a
 * word and gives a wrong result.  What identifies a base for an adapter
 * is lora_base_hash: a hash over the base tensors the adapter changes
 * (cheap, and what matters), which `lora-pack create --base` records in
 * the archive manifest.  Wherever a base meets an adapter whose identity
 * is recorded, the two are compared: a mismatch is LORA_ECHECK naming
 * both identities and the adapter's base name, unless the caller
 * overrides it (then a loud warning).  A plain PEFT folder records only
 * base_model_name_or_path: compared with the checkpoint's config.json
 * (and, when that name is a local folder, its config's architecture and
 * sizes), a mismatch is a warning.
 */
#include "internal.h"

#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

static const char *last_part(const char *s)
{
    const char *p = strrchr(s, '/');
    return p && p[1] ? p + 1 : s;
}

/* A model name as a hub id or a path: trailing slashes dropped, and a
 * Hugging Face cache path ".../models--ORG--NAME/snapshots/REV" read
 * as ORG/NAME (what a checkpoint saved from the cache records). */
static void norm_name(const char *s, char *out, size_t n)
{
    snprintf(out, n, "%s", s);
    for (size_t k = strlen(out); k > 1 && out[k - 1] == '/'; k--)
        out[k - 1] = 0;
    char *snap = strstr(out, "/snapshots/");
    if (!snap)
        return;
    *snap = 0;
    const char *dir = last_part(out);
    if (strncmp(dir, "models--", 8) != 0)
        return;
    char tmp[1100];
    size_t o = 0;
    for (const char *p = dir + 8; *p && o + 1 < sizeof tmp; p++) {
        if (p[0] == '-' && p[1] == '-') {
            tmp[o++] = '/';
            p++;
        } else {
            tmp[o++] = *p;
        }
    }
    tmp[o] = 0;
    snprintf(out, n, "%s", tmp);
}

/* Names equal as a hub id or as the last part of a local path, ignoring
 * case ("meta-llama/Llama-2-7b-hf" and "/models/llama-2-7b-hf/"); an
 * Instruct or other variant is another name. */
static int same_name(const char *a, const char *b)
{
    char x[1100], y[1100];
    norm_name(a, x, sizeof x);
    norm_name(b, y, sizeof y);
    return strcasecmp(x, y) == 0 || strcasecmp(last_part(x), last_part(y)) == 0;
}

/* DIR/config.json when it is a regular file of sane size: the name
 * comes from the adapter's config, so it may point anywhere (a FIFO
 * would block, a device would never end). */
static json_t *load_config(const char *dir)
{
    char *p;
    if (!dir || asprintf(&p, "%s/config.json", dir) < 0)
        return NULL;
    struct stat sb;
    char *text = NULL;
    size_t len = 0;
    json_t *j = NULL;
    if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size < (16 << 20) &&
        lora_read_file(p, 16 << 20, &text, &len, NULL) == LORA_OK)
        j = json_loadb(text, len, 0, NULL);
    free(text);
    free(p);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* The first of architectures[0], vocab_size, hidden_size (or n_embd)
 * on which two configs disagree, into what; 0 when none. */
static int config_differs(json_t *a, json_t *b, char *what, size_t n)
{
    const char *aa = json_string_value(json_array_get(json_object_get(a, "architectures"), 0));
    const char *ba = json_string_value(json_array_get(json_object_get(b, "architectures"), 0));
    if (aa && ba && strcmp(aa, ba)) {
        snprintf(what, n, "architectures %s and %s", aa, ba);
        return 1;
    }
    static const char *const keys[][2] = {{"vocab_size", NULL}, {"hidden_size", "n_embd"}};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        json_t *x = json_object_get(a, keys[k][0]), *y = json_object_get(b, keys[k][0]);
        if (!x && keys[k][1])
            x = json_object_get(a, keys[k][1]);
        if (!y && keys[k][1])
            y = json_object_get(b, keys[k][1]);
        if (json_is_integer(x) && json_is_integer(y) &&
            json_integer_value(x) != json_integer_value(y)) {
            snprintf(what, n, "%s %lld and %lld", keys[k][0], (long long)json_integer_value(x),
                     (long long)json_integer_value(y));
            return 1;
        }
    }
    return 0;
}

int lora_base_name_mismatch(const lora_adapter *ad, const lora_ckpt *base, char *msg, size_t n)
{
    if (!ad->base_model || !*ad->base_model)
        return 0;
    json_t *cfg = load_config(lora_ckpt_dir(base));
    if (!cfg)
        return 0;
    const char *np = json_string_value(json_object_get(cfg, "_name_or_path"));
    char what[300] = "";
    int bad = 0;
    json_t *theirs = load_config(ad->base_model); /* a local folder */
    if (theirs && config_differs(theirs, cfg, what, sizeof what)) {
        snprintf(msg, n, "the adapter was trained on %s, whose config.json differs from the "
                         "base's (%s): probably the wrong base", ad->base_model, what);
        bad = 1;
    } else if (!theirs && np && *np && !same_name(np, ad->base_model)) {
        snprintf(msg, n, "the adapter was trained on %s, but the base's config.json names %s "
                         "(_name_or_path): check that this is the right base", ad->base_model, np);
        bad = 1;
    }
    json_decref(theirs);
    json_decref(cfg);
    return bad;
}

int lora_base_identity_mismatch(const lora_adapter *ad, const lora_ckpt *base, char *msg,
                                size_t n, lora_error *err)
{
    if (!ad->has_base_hash)
        return 0;
    unsigned char h[LORA_HASH_BYTES];
    int rc = lora_base_hash(ad, base, h, err);
    if (rc)
        return -rc;
    if (!memcmp(h, ad->base_hash, LORA_HASH_BYTES))
        return 0;
    char want[LORA_HASH_HEX], got[LORA_HASH_HEX];
    lora_hex(ad->base_hash, LORA_HASH_BYTES, want);
    lora_hex(h, LORA_HASH_BYTES, got);
    const char *name = ad->recorded_base ? ad->recorded_base
                     : ad->base_model   ? ad->base_model
                                        : "(unnamed)";
    snprintf(msg, n, "wrong base: the adapter was made for base %s (identity %s), this base's "
                     "identity is %s (the tensors it changes differ)", name, want, got);
    return 1;
}

int lora_base_check(const lora_adapter *ad, const lora_ckpt *base, int any_base, const char *who,
                    FILE *warn, lora_error *err)
{
    char msg[600];
    const char *path = ad->path ? ad->path : "adapter";
    if (!ad->has_base_hash) {
        if (warn && lora_base_name_mismatch(ad, base, msg, sizeof msg))
            fprintf(warn, "%s: warning: %s: %s\n", who, path, msg);
        return LORA_OK;
    }
    int r = lora_base_identity_mismatch(ad, base, msg, sizeof msg, err);
    if (r < 0)
        return lora_err_prefix(err, "%s: base identity", path);
    if (!r)
        return LORA_OK;
    if (any_base) {
        if (warn)
            fprintf(warn, "%s: WARNING: --any-base: %s: %s; using it anyway: the result is not "
                          "what the adapter was trained for\n", who, path, msg);
        return LORA_OK;
    }
    return lora_seterr(err, LORA_ECHECK, "%s: %s; nothing written (--any-base to use it anyway)",
                       path, msg);
}

void lora_base_check_several(const lora_adapter *const *ads, size_t n, const char *who, FILE *warn)
{
    if (!warn)
        return;
    for (size_t a = 1; a < n; a++)
        for (size_t b = 0; b < a; b++) {
            const char *xn = ads[a]->recorded_base ? ads[a]->recorded_base : ads[a]->base_model;
            const char *yn = ads[b]->recorded_base ? ads[b]->recorded_base : ads[b]->base_model;
            if (xn && yn && !same_name(xn, yn)) {
                fprintf(warn, "%s: warning: adapters made for different bases are combined: "
                              "%s (%s) and %s (%s)\n", who,
                        ads[b]->path ? ads[b]->path : "?", yn,
                        ads[a]->path ? ads[a]->path : "?", xn);
                return;
            }
        }
}

/* ---- the identity of a base held in pieces (a task switch) ----------- */

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int lora_base_targets(const lora_adapter *ad, const char ***out, size_t *n, lora_error *err)
{
    size_t k = 0, m = ad->n_modules + ad->n_saved;
    const char **names = calloc(m ? m : 1, sizeof *names);
    if (!names)
        return lora_oom(err);
    for (size_t i = 0; i < ad->n_modules; i++)
        names[k++] = ad->modules[i].target;
    for (size_t i = 0; i < ad->n_saved; i++)
        names[k++] = ad->saved[i].target;
    qsort(names, k, sizeof *names, cmp_name);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (!u || strcmp(names[i], names[u - 1]))
            names[u++] = names[i];
    *out = names;
    *n = u;
    return LORA_OK;
}

static void put_u64(lora_hasher *h, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    lora_hasher_update(h, b, 8);
}

void lora_base_hash_tensor(lora_hasher *h, const char *name, lora_dtype dt, int ndim,
                           const uint64_t *shape, const void *data, uint64_t nbytes)
{
    lora_base_hash_tensor_heads(h, name, dt, ndim, shape, data, nbytes, 0);
}

/* A GGUF base's q/k rows are in llama.cpp's order (gguf_checkpoint.c):
 * fed in Hugging Face order, so that the identity is the content's, not
 * the container's.  Hugging Face row h·hd + t·hd/2 + j is GGUF row
 * h·hd + 2j + t (lora_gguf_permute_rows). */
void lora_base_hash_tensor_heads(lora_hasher *h, const char *name, lora_dtype dt, int ndim,
                                 const uint64_t *shape, const void *data, uint64_t nbytes,
                                 uint64_t heads)
{
    const char *dn = lora_dtype_name(dt) ? lora_dtype_name(dt) : "?";
    put_u64(h, strlen(name));
    lora_hasher_update(h, name, strlen(name));
    put_u64(h, strlen(dn));
    lora_hasher_update(h, dn, strlen(dn));
    put_u64(h, (uint64_t)ndim);
    for (int d = 0; d < ndim; d++)
        put_u64(h, shape[d]);
    put_u64(h, nbytes);
    if (!heads || ndim != 2 || shape[0] % (2 * heads) || nbytes % shape[0]) {
        lora_hasher_update(h, data, (size_t)nbytes);
        return;
    }
    uint64_t hd = shape[0] / heads, half = hd / 2, row = nbytes / shape[0];
    const unsigned char *p = data;
    for (uint64_t r = 0; r < shape[0]; r++) {
        uint64_t hh = r / hd, t = (r % hd) / half, j = r % half;
        lora_hasher_update(h, p + (hh * hd + 2 * j + t) * row, (size_t)row);
    }
}

int lora_base_hash(const lora_adapter *ad, const lora_ckpt *base,
                   unsigned char out[LORA_HASH_BYTES], lora_error *err)
{
    const char **names;
    size_t n;
    int rc = lora_base_targets(ad, &names, &n, err);
    if (rc)
        return rc;
    lora_hasher *h;
    if ((rc = lora_hasher_new(LORA_HASH_BYTES, &h, err))) {
        free(names);
        return rc;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        const lora_tensor *t = lora_ckpt_find(base, names[i], NULL);
        if (!t)
            rc = lora_seterr(err, LORA_EINPUT, "base has no tensor %s", names[i]);
        else
            lora_base_hash_tensor_heads(h, names[i], t->dtype, t->ndim, t->shape, t->data,
                                        t->nbytes, lora_ckpt_permuted_heads(base, t));
    }
    free(names);
    if (!rc)
        lora_hasher_final(h, out); /* frees h */
    else
        lora_hasher_free(h);
    return rc;
}

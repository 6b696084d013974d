/*
 * tokenizer_decode.c - ids back to text as Hugging Face tokenizers'
 * Tokenizer::decode does it: ids to token strings (added tokens first,
 * special ones dropped on request), then the decoder chain (ByteLevel,
 * Metaspace, Replace, ByteFallback, Fuse, Strip, each over the list of
 * strings), then the strings joined.  Bytes that do not form UTF-8 come
 * out as U+FFFD exactly where Rust's from_utf8_lossy puts them.
 */
#include "tokenizer_int.h"

#include <string.h>

static const char repl_char[] = "\xEF\xBF\xBD";

/* Length of the well-formed sequence at S (1..4), or 0 with *bad the
 * length of its maximal ill-formed subpart (Unicode 3.9, as Rust). */
static size_t utf8_seq(const unsigned char *s, size_t len, size_t *bad)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t n = tk_utf8_len(c);
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    *bad = 1;
    if (n == 0)
        return 0;
    for (size_t k = 1; k < n; k++) {
        if (k >= len)
            return 0;
        unsigned char b = s[k];
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return 0;
        *bad = k + 1;
    }
    return n;
}

size_t tk_utf8_valid_prefix(const char *s, size_t len)
{
    size_t i = 0, bad;
    while (i < len) {
        if (!(s[i] & 0x80)) {
            i++;
            continue;
        }
        size_t n = utf8_seq((const unsigned char *)s + i, len - i, &bad);
        if (!n)
            return i;
        i += n;
    }
    return len;
}

int tk_utf8_lossy(tk_buf *out, const char *s, size_t len, lora_error *err)
{
    size_t i = 0, bad;
    int rc = LORA_OK;
    while (i < len && rc == LORA_OK) {
        size_t start = i;
        while (i < len && !(s[i] & 0x80))
            i++;
        size_t n;
        while (i < len && (n = utf8_seq((const unsigned char *)s + i, len - i, &bad)) != 0)
            i += n;
        if ((rc = tk_buf_add(out, s + start, i - start, err)) != LORA_OK || i >= len)
            break;
        utf8_seq((const unsigned char *)s + i, len - i, &bad);
        if (bad > len - i)
            bad = len - i;
        rc = tk_buf_add(out, repl_char, 3, err);
        i += bad;
    }
    return rc;
}

/* ---- parsing ---- */

void tk_decoder_free(tk_decoder *d)
{
    tk_pattern_free(&d->pat);
    free(d->content);
}

static int dec_one(json_t *j, lora_tokenizer *t, int depth, lora_error *err)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type)
        return lora_seterr(err, LORA_EINPUT, "a decoder without a type");
    if (depth > 8)
        return lora_seterr(err, LORA_EINPUT, "decoder Sequence nested too deeply");
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(j, "decoders");
        if (!json_is_array(list))
            return lora_seterr(err, LORA_EINPUT, "decoder Sequence: decoders is not a list");
        for (size_t i = 0; i < json_array_size(list); i++) {
            int rc = dec_one(json_array_get(list, i), t, depth + 1, err);
            if (rc != LORA_OK)
                return rc;
        }
        return LORA_OK;
    }
    if (t->n_dec == TK_MAX_STEPS)
        return lora_seterr(err, LORA_EINPUT, "more than %d decoders", TK_MAX_STEPS);
    tk_decoder *d = &t->dec[t->n_dec];
    memset(d, 0, sizeof *d);
    if (strcmp(type, "ByteLevel") == 0) {
        d->kind = TK_D_BYTELEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        d->kind = TK_D_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        d->kind = TK_D_FUSE;
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *r = json_string_value(json_object_get(j, "replacement"));
        if (!r || !*r || tk_utf8_len((unsigned char)r[0]) != strlen(r))
            return lora_seterr(err, LORA_EINPUT, "decoder Metaspace: replacement is not one character");
        d->kind = TK_D_METASPACE;
        d->repl_len = strlen(r);
        memcpy(d->repl, r, d->repl_len);
        const char *sch = json_string_value(json_object_get(j, "prepend_scheme"));
        json_t *aps = json_object_get(j, "add_prefix_space");
        d->prepend = sch ? strcmp(sch, "never") != 0 : (json_is_boolean(aps) ? json_is_true(aps) : 1);
    } else if (strcmp(type, "Replace") == 0) {
        json_t *c = json_object_get(j, "content");
        if (!json_is_string(c) || json_string_length(c) > TK_MAX_TOKEN)
            return lora_seterr(err, LORA_EINPUT, "decoder Replace: content is not a string");
        d->kind = TK_D_REPLACE;
        if (!(d->content = lora_strdup(json_string_value(c), err)))
            return LORA_EIO;
        t->n_dec++;
        return tk_pattern_parse(json_object_get(j, "pattern"), "decoder Replace", &d->pat, err);
    } else if (strcmp(type, "Strip") == 0) {
        json_t *c = json_object_get(j, "content"), *a = json_object_get(j, "start"),
               *b = json_object_get(j, "stop");
        if (!json_is_string(c) || json_string_length(c) == 0 ||
            tk_utf8_len((unsigned char)json_string_value(c)[0]) != json_string_length(c) ||
            !json_is_integer(a) || !json_is_integer(b) || json_integer_value(a) < 0 ||
            json_integer_value(b) < 0)
            return lora_seterr(err, LORA_EINPUT, "decoder Strip: content, start or stop is wrong");
        d->kind = TK_D_STRIP;
        if (!(d->content = lora_strdup(json_string_value(c), err)))
            return LORA_EIO;
        d->start = (size_t)json_integer_value(a);
        d->stop = (size_t)json_integer_value(b);
    } else {
        return lora_seterr(err, LORA_EINPUT, "decoder %s is not supported", type);
    }
    t->n_dec++;
    return LORA_OK;
}

int tk_decoder_parse(json_t *j, lora_tokenizer *t, lora_error *err)
{
    if (!j || json_is_null(j))
        return LORA_OK;
    t->has_decoder = 1;
    return dec_one(j, t, 0, err);
}

/* ---- decoding: each step maps a list of strings (pieces of a pool) ---- */

typedef struct dec_list {
    tk_buf pool;
    tk_pieces pcs;
} dec_list;

static int list_add(dec_list *l, const char *s, size_t n, lora_error *err)
{
    int rc = tk_pieces_add(&l->pcs, l->pool.len, n, 0, err);
    return rc == LORA_OK ? tk_buf_add(&l->pool, s, n, err) : rc;
}

/* Extend the last string of L by S. */
static int list_extend(dec_list *l, const char *s, size_t n, lora_error *err)
{
    l->pcs.v[l->pcs.n - 1].len += n;
    return tk_buf_add(&l->pool, s, n, err);
}

static int step_bytelevel(const dec_list *in, dec_list *out, lora_error *err)
{
    tk_buf raw = {0};
    int rc = LORA_OK;
    for (size_t i = 0; i < in->pcs.n && rc == LORA_OK; i++) {
        const char *s = in->pool.p + in->pcs.v[i].off;
        size_t len = in->pcs.v[i].len, start = raw.len;
        for (size_t k = 0; k < len && rc == LORA_OK;) {
            size_t adv;
            int b = tk_char_byte(tk_utf8_decode(s + k, len - k, &adv));
            if (b < 0) {   /* a character outside the alphabet: the token's own bytes */
                raw.len = start;
                rc = tk_buf_add(&raw, s, len, err);
                break;
            }
            char c = (char)b;
            rc = tk_buf_add(&raw, &c, 1, err);
            k += adv;
        }
    }
    tk_buf txt = {0};
    if (rc == LORA_OK)
        rc = tk_utf8_lossy(&txt, raw.p ? raw.p : "", raw.len, err);
    if (rc == LORA_OK)
        rc = list_add(out, txt.p ? txt.p : "", txt.len, err);
    free(raw.p);
    free(txt.p);
    return rc;
}

static int byte_token(const char *s, size_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static int flush_bytes(tk_buf *bytes, dec_list *out, lora_error *err)
{
    int rc = LORA_OK;
    if (!bytes->len)
        return rc;
    if (tk_utf8_valid_prefix(bytes->p, bytes->len) == bytes->len)
        rc = list_add(out, bytes->p, bytes->len, err);
    else   /* tokenizers: one U+FFFD per byte of an invalid run */
        for (size_t k = 0; k < bytes->len && rc == LORA_OK; k++)
            rc = list_add(out, repl_char, 3, err);
    bytes->len = 0;
    return rc;
}

static int step_bytefallback(const dec_list *in, dec_list *out, lora_error *err)
{
    tk_buf bytes = {0};
    int rc = LORA_OK;
    for (size_t i = 0; i < in->pcs.n && rc == LORA_OK; i++) {
        const char *s = in->pool.p + in->pcs.v[i].off;
        size_t len = in->pcs.v[i].len;
        int b = byte_token(s, len);
        if (b >= 0) {
            char c = (char)b;
            rc = tk_buf_add(&bytes, &c, 1, err);
        } else if ((rc = flush_bytes(&bytes, out, err)) == LORA_OK) {
            rc = list_add(out, s, len, err);
        }
    }
    if (rc == LORA_OK)
        rc = flush_bytes(&bytes, out, err);
    free(bytes.p);
    return rc;
}

static int step_metaspace(const tk_decoder *d, const dec_list *in, dec_list *out, lora_error *err)
{
    int rc = LORA_OK;
    for (size_t i = 0; i < in->pcs.n && rc == LORA_OK; i++) {
        const char *s = in->pool.p + in->pcs.v[i].off;
        size_t len = in->pcs.v[i].len;
        if ((rc = list_add(out, "", 0, err)) != LORA_OK)
            break;
        for (size_t k = 0; k < len && rc == LORA_OK;) {
            if (len - k >= d->repl_len && memcmp(s + k, d->repl, d->repl_len) == 0) {
                if (!(i == 0 && d->prepend))
                    rc = list_extend(out, " ", 1, err);
                k += d->repl_len;
            } else {
                rc = list_extend(out, s + k, 1, err);
                k++;
            }
        }
    }
    return rc;
}

static int step_strip(const tk_decoder *d, const dec_list *in, dec_list *out, lora_error *err)
{
    size_t cl = strlen(d->content);
    int rc = LORA_OK;
    for (size_t i = 0; i < in->pcs.n && rc == LORA_OK; i++) {
        const char *s = in->pool.p + in->pcs.v[i].off;
        size_t len = in->pcs.v[i].len, a = 0, b = len, cut_a = 0, cut_b = 0;
        while (cut_a < d->start && b - a >= cl && memcmp(s + a, d->content, cl) == 0)
            a += cl, cut_a++;
        /* counted on the whole token, as tokenizers does */
        for (size_t e = len; cut_b < d->stop && e >= cl && memcmp(s + e - cl, d->content, cl) == 0;
             e -= cl)
            cut_b++;
        /* tokenizers then takes (byte length - cuts) characters after the
         * start cut: the stop cut only bites when that count is short */
        size_t nchars = 0, take = len >= cut_a + cut_b ? len - cut_a - cut_b : SIZE_MAX;
        size_t k = a;
        while (k < len && nchars < take) {
            size_t n = tk_utf8_len((unsigned char)s[k]);
            k += n ? n : 1;
            nchars++;
        }
        b = k;
        rc = list_add(out, s + a, b - a, err);
    }
    return rc;
}

static int step_replace(tk_work *w, const tk_decoder *d, const dec_list *in, dec_list *out,
                        lora_error *err)
{
    int rc = LORA_OK;
    for (size_t i = 0; i < in->pcs.n && rc == LORA_OK; i++) {
        const char *s = in->pool.p + in->pcs.v[i].off;
        size_t len = in->pcs.v[i].len, pos = 0;
        if ((rc = list_add(out, "", 0, err)) != LORA_OK)
            break;
        for (;;) {
            size_t ms, me;
            int m = tk_pattern_next(&d->pat, w->md, s, len, pos, &ms, &me, err);
            if (m < 0)
                return -m;
            if (m == 0 || me == ms)
                break;
            if ((rc = list_extend(out, s + pos, ms - pos, err)) != LORA_OK ||
                (rc = list_extend(out, d->content, strlen(d->content), err)) != LORA_OK)
                return rc;
            pos = me;
        }
        rc = list_extend(out, s + pos, len - pos, err);
    }
    return rc;
}

static int step(tk_work *w, const tk_decoder *d, const dec_list *in, dec_list *out, lora_error *err)
{
    switch (d->kind) {
    case TK_D_BYTELEVEL: return step_bytelevel(in, out, err);
    case TK_D_BYTEFALLBACK: return step_bytefallback(in, out, err);
    case TK_D_METASPACE: return step_metaspace(d, in, out, err);
    case TK_D_STRIP: return step_strip(d, in, out, err);
    case TK_D_REPLACE: return step_replace(w, d, in, out, err);
    default: {  /* Fuse */
        int rc = list_add(out, "", 0, err);
        for (size_t i = 0; i < in->pcs.n && rc == LORA_OK; i++)
            rc = list_extend(out, in->pool.p + in->pcs.v[i].off, in->pcs.v[i].len, err);
        return rc;
    }
    }
}

int tk_decode(const lora_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
              size_t *len, lora_error *err)
{
    dec_list l[2] = {{{0}, {0}}, {{0}, {0}}};
    tk_work w = {0};
    int rc = LORA_OK;
    *text = NULL;
    for (size_t i = 0; i < n && rc == LORA_OK; i++) {
        size_t tl;
        const char *s = tk_token(t, ids[i], &tl);
        if (!s) {
            rc = lora_seterr(err, LORA_EINPUT, "id %ld (at %zu) is not in the tokenizer's vocabulary",
                             (long)ids[i], i);
            break;
        }
        if (skip_special && t->added_of_id[ids[i]] >= 0 && t->added[t->added_of_id[ids[i]]].special)
            continue;
        rc = list_add(&l[0], s, tl, err);
    }
    if (rc == LORA_OK && t->has_decoder) {
        if (!(w.md = pcre2_match_data_create(1, NULL)))
            rc = lora_oom(err);
        for (size_t k = 0; k < t->n_dec && rc == LORA_OK; k++) {
            l[1].pool.len = 0;
            l[1].pcs.n = 0;
            rc = step(&w, &t->dec[k], &l[0], &l[1], err);
            dec_list sw = l[0];
            l[0] = l[1];
            l[1] = sw;
        }
    }
    tk_buf out = {0};
    for (size_t i = 0; i < l[0].pcs.n && rc == LORA_OK; i++) {
        if (!t->has_decoder && i > 0)
            rc = tk_buf_add(&out, " ", 1, err);
        if (rc == LORA_OK)
            rc = tk_buf_add(&out, l[0].pool.p + l[0].pcs.v[i].off, l[0].pcs.v[i].len, err);
    }
    if (rc == LORA_OK)
        rc = tk_buf_add(&out, "", 1, err);
    for (int i = 0; i < 2; i++) {
        free(l[i].pool.p);
        free(l[i].pcs.v);
    }
    tk_work_free(&w);
    if (rc != LORA_OK) {
        free(out.p);
        return rc;
    }
    *text = out.p;
    if (len)
        *len = out.len - 1;
    return LORA_OK;
}

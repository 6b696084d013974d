/*
 * tokenizer.c - a Hugging Face tokenizer.json read into liblora, and the
 * encode pipeline of tokenizers' Tokenizer::encode for one sequence:
 * added tokens found on the raw text first (leftmost, longest, with
 * their lstrip / rstrip / single_word rules), the rest normalized,
 * normalized added tokens found again, pre-tokenized, cut by the BPE
 * model (tokenizer_bpe.c), then the post-processor's special tokens.
 *
 * tokenizer_config.json, when beside it, says which special tokens the
 * model wants: add_bos_token / add_eos_token override the template, as
 * transformers does for Llama-style tokenizers; and a tokenizer whose
 * bos_token is Llama 3's <|begin_of_text|> gets it even though the
 * first Llama 3 tokenizer.json forgot the TemplateProcessing that later
 * releases carry (transformers' Llama tokenizers and llama.cpp add it).
 */
#include "tokenizer_int.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

/* ---- added tokens: a byte trie, leftmost-longest ---- */

static int trie_insert(tk_trie *tr, const char *s, size_t len, int32_t added, lora_error *err)
{
    if (!tr->v) {
        tr->cap = 64;
        if (!(tr->v = calloc(tr->cap, sizeof *tr->v)))
            return lora_oom(err);
        tr->n = 1;
        tr->v[0].added = -1;
    }
    uint32_t node = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        uint32_t c = tr->v[node].child;
        while (c && tr->v[c].byte != b)
            c = tr->v[c].sibling;
        if (!c) {
            if (tr->n == tr->cap) {
                tk_trie_node *v = realloc(tr->v, 2 * tr->cap * sizeof *v);
                if (!v)
                    return lora_oom(err);
                tr->v = v;
                tr->cap *= 2;
            }
            c = tr->n++;
            tr->v[c] = (tk_trie_node){.child = 0, .sibling = tr->v[node].child, .added = -1, .byte = b};
            tr->v[node].child = c;
        }
        node = c;
    }
    tr->v[node].added = added;
    if (len)
        tr->first[(unsigned char)s[0]] = 1;
    return LORA_OK;
}

/* Longest token starting at S: its added[] index and length, or -1. */
static int32_t trie_longest(const tk_trie *tr, const char *s, size_t len, size_t *mlen)
{
    if (!tr->v || !len || !tr->first[(unsigned char)s[0]])
        return -1;
    int32_t best = -1;
    uint32_t node = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t c = tr->v[node].child;
        while (c && tr->v[c].byte != (unsigned char)s[i])
            c = tr->v[c].sibling;
        if (!c)
            break;
        node = c;
        if (tr->v[node].added >= 0) {
            best = tr->v[node].added;
            *mlen = i + 1;
        }
    }
    return best;
}

/* Rust regex \w at a code point: letters, numbers, marks, connectors. */
static int is_word_char(int32_t c)
{
    return c == '_' || tk_is_alnum(c);
}

static int ends_with_word(const char *s, size_t len)
{
    if (!len)
        return 0;
    size_t i = len - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    size_t adv;
    return is_word_char(tk_utf8_decode(s + i, len - i, &adv));
}

static int starts_with_word(const char *s, size_t len)
{
    size_t adv;
    return len && is_word_char(tk_utf8_decode(s, len, &adv));
}

/* Where the run of whitespace that ends S[0..len) starts. */
static size_t space_start_at_end(const char *s, size_t len)
{
    size_t i = len;
    while (i > 0) {
        size_t j = i - 1, adv;
        while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80)
            j--;
        if (!tk_is_whitespace(tk_utf8_decode(s + j, i - j, &adv)))
            break;
        i = j;
    }
    return i;
}

/* Bytes of whitespace at the start of S. */
static size_t space_len_at_start(const char *s, size_t len)
{
    size_t i = 0, adv;
    while (i < len && tk_is_whitespace(tk_utf8_decode(s + i, len - i, &adv)))
        i += adv;
    return i;
}

/* tokenizers' AddedVocabulary::find_matches: spans of S, .first = 1 +
 * added[] index for an added token, 0 for text. */
static int split_added(const lora_tokenizer *t, const tk_trie *tr, const char *s, size_t len,
                       tk_pieces *out, lora_error *err)
{
    out->n = 0;
    size_t done = 0, pos = 0;
    int rc;
    while (pos < len) {
        size_t mlen = 0;
        int32_t a = trie_longest(tr, s + pos, len - pos, &mlen);
        if (a < 0) {
            pos++;
            continue;
        }
        const tk_added *at = &t->added[a];
        size_t start = pos, stop = pos + mlen;
        pos = stop;
        if (at->single_word && (ends_with_word(s, start) || starts_with_word(s + stop, len - stop)))
            continue;
        if (at->lstrip) {
            size_t ns = space_start_at_end(s, start);
            start = ns > done ? ns : done;
        }
        if (at->rstrip)
            stop += space_len_at_start(s + stop, len - stop);
        if (done < start && (rc = tk_pieces_add(out, done, start - done, 0, err)) != LORA_OK)
            return rc;
        if ((rc = tk_pieces_add(out, start, stop - start, a + 1, err)) != LORA_OK)
            return rc;
        done = pos = stop;
    }
    if (done < len)
        return tk_pieces_add(out, done, len - done, 0, err);
    return LORA_OK;
}

/* ---- encode ---- */

static int encode_text(const lora_tokenizer *t, tk_work *w, const char *s, size_t len, int first,
                       tk_buf *norm, tk_pieces *sub, lora_error *err)
{
    int rc = tk_normalize(t, w, s, len, norm, err);
    if (rc == LORA_OK)
        rc = split_added(t, &t->trie_norm, norm->p, norm->len, sub, err);
    for (size_t i = 0; i < sub->n && rc == LORA_OK; i++) {
        tk_piece sp = sub->v[i];
        if (sp.first) {
            rc = tk_ids_add(w, t->added[sp.first - 1].id, err);
            continue;
        }
        w->pool[0].len = 0;
        w->pcs[0].n = 0;
        if ((rc = tk_buf_add(&w->pool[0], norm->p + sp.off, sp.len, err)) != LORA_OK ||
            (rc = tk_pieces_add(&w->pcs[0], 0, sp.len, first && sp.off == 0, err)) != LORA_OK ||
            (rc = tk_pretokenize(t, w, err)) != LORA_OK)
            break;
        for (size_t k = 0; k < w->pcs[0].n && rc == LORA_OK; k++)
            rc = tk_bpe_word(t, w, w->pool[0].p + w->pcs[0].v[k].off, w->pcs[0].v[k].len, err);
    }
    return rc;
}

int lora_tokenizer_encode(const lora_tokenizer *tok, const char *text, size_t len, int add_special,
                          int32_t **ids, size_t *n, lora_error *err)
{
    *ids = NULL;
    *n = 0;
    if (len > TK_MAX_TEXT)
        return lora_seterr(err, LORA_EINPUT, "text of %zu bytes is too long to tokenize (limit %llu)",
                           len, (unsigned long long)TK_MAX_TEXT);
    if (len && !text)
        return lora_seterr(err, LORA_EUSAGE, "tokenize: no text");
    size_t bad = len ? tk_utf8_valid_prefix(text, len) : 0;
    if (bad < len)
        return lora_seterr(err, LORA_EINPUT, "text is not valid UTF-8 (byte %zu)", bad);
    tk_work w = {0};
    tk_buf norm = {0};
    tk_pieces raw = {0}, sub = {0};
    int rc = LORA_OK;
    if (!(w.md = pcre2_match_data_create(1, NULL)))
        rc = lora_oom(err);
    for (size_t i = 0; add_special && i < tok->n_tpl_pre && rc == LORA_OK; i++)
        rc = tk_ids_add(&w, tok->tpl_pre[i], err);
    if (rc == LORA_OK && len)
        rc = split_added(tok, &tok->trie_raw, text, len, &raw, err);
    for (size_t i = 0; i < raw.n && rc == LORA_OK; i++) {
        tk_piece p = raw.v[i];
        rc = p.first ? tk_ids_add(&w, tok->added[p.first - 1].id, err)
                     : encode_text(tok, &w, text + p.off, p.len, p.off == 0, &norm, &sub, err);
    }
    for (size_t i = 0; add_special && i < tok->n_tpl_post && rc == LORA_OK; i++)
        rc = tk_ids_add(&w, tok->tpl_post[i], err);
    free(norm.p);
    free(raw.v);
    free(sub.v);
    if (rc == LORA_OK) {
        *n = w.n;
        *ids = w.ids ? w.ids : malloc(sizeof **ids);
        w.ids = NULL;
        if (!*ids)
            rc = lora_oom(err);
    }
    tk_work_free(&w);
    return rc;
}

int lora_tokenizer_decode(const lora_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                          char **text, lora_error *err)
{
    return tk_decode(tok, ids, n, skip_special, text, NULL, err);
}

int32_t lora_tokenizer_bos(const lora_tokenizer *tok)
{
    return tok->bos;
}

int32_t lora_tokenizer_eos(const lora_tokenizer *tok)
{
    return tok->eos;
}

size_t lora_tokenizer_vocab_size(const lora_tokenizer *tok)
{
    return tok->nids;
}

void lora_tokenizer_free(lora_tokenizer *t)
{
    if (!t)
        return;
    free(t->arena);
    free(t->tok_off);
    free(t->vhash);
    free(t->mkeys);
    free(t->mvals);
    free(t->cont_prefix);
    free(t->eow_suffix);
    for (size_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].str);
        tk_pattern_free(&t->norm[i].pat);
    }
    for (size_t i = 0; i < t->n_pre; i++)
        tk_pattern_free(&t->pre[i].pat);
    for (size_t i = 0; i < t->n_dec; i++)
        tk_decoder_free(&t->dec[i]);
    free(t->tpl_pre);
    free(t->tpl_post);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    free(t->added_of_id);
    free(t->trie_raw.v);
    free(t->trie_norm.v);
    tk_cache_free(t);
    free(t);
}

/* ---- reading tokenizer.json ---- */

static int opt_string(json_t *j, const char *key, char **out, lora_error *err)
{
    json_t *v = json_object_get(j, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return LORA_OK;
    if (!json_is_string(v) || json_string_length(v) > TK_MAX_TOKEN ||
        strlen(json_string_value(v)) != json_string_length(v))
        return lora_seterr(err, LORA_EINPUT, "model.%s is not a string", key);
    return (*out = lora_strdup(json_string_value(v), err)) ? LORA_OK : LORA_EIO;
}

static int parse_model(lora_tokenizer *t, json_t *model, json_t *added, lora_error *err)
{
    if (!json_is_object(model))
        return lora_seterr(err, LORA_EINPUT, "no model in tokenizer.json");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!type)
        return lora_seterr(err, LORA_EINPUT, "model has no type");
    if (strcmp(type, "BPE") != 0)
        return lora_seterr(err, LORA_EINPUT, "model %s is not supported (only BPE)", type);
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0))
        return lora_seterr(err, LORA_EINPUT, "model BPE: dropout is not supported (tokenization would be random)");
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    t->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    t->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    int rc;
    if ((rc = opt_string(model, "continuing_subword_prefix", &t->cont_prefix, err)) != LORA_OK ||
        (rc = opt_string(model, "end_of_word_suffix", &t->eow_suffix, err)) != LORA_OK)
        return rc;
    if ((rc = tk_vocab_build(t, json_object_get(model, "vocab"), added, err)) != LORA_OK)
        return rc;
    t->unk = -1;
    json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk)) {
        t->unk = tk_vocab_find(t, json_string_value(unk), json_string_length(unk));
        if (t->unk < 0)
            return lora_seterr(err, LORA_EINPUT, "model.unk_token is not in the vocabulary");
    }
    return tk_merges_build(t, json_object_get(model, "merges"), err);
}

static int flag(json_t *o, const char *key, int dflt, int *out, size_t i, lora_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        *out = dflt;
        return LORA_OK;
    }
    if (!json_is_boolean(v))
        return lora_seterr(err, LORA_EINPUT, "added_tokens[%zu].%s is not true or false", i, key);
    *out = json_is_true(v);
    return LORA_OK;
}

static int parse_added(lora_tokenizer *t, json_t *list, lora_error *err)
{
    t->added_of_id = malloc((t->nids ? t->nids : 1) * sizeof *t->added_of_id);
    if (!t->added_of_id)
        return lora_oom(err);
    memset(t->added_of_id, 0xff, t->nids * sizeof *t->added_of_id);
    if (!list || json_is_null(list))
        return LORA_OK;
    if (!json_is_array(list))
        return lora_seterr(err, LORA_EINPUT, "added_tokens is not a list");
    size_t n = json_array_size(list);
    if (n > TK_MAX_IDS)
        return lora_seterr(err, LORA_EINPUT, "too many added_tokens");
    if (n && !(t->added = calloc(n, sizeof *t->added)))
        return lora_oom(err);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(list, i), *c = json_object_get(o, "content"),
               *id = json_object_get(o, "id");
        if (!json_is_string(c) || json_string_length(c) == 0 || json_string_length(c) > TK_MAX_TOKEN ||
            strlen(json_string_value(c)) != json_string_length(c))
            return lora_seterr(err, LORA_EINPUT, "added_tokens[%zu].content is not a non-empty string", i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (json_int_t)t->nids)
            return lora_seterr(err, LORA_EINPUT, "added_tokens[%zu].id is not a token id", i);
        tk_added *a = &t->added[t->n_added];
        if (!(a->content = lora_strdup(json_string_value(c), err)))
            return LORA_EIO;
        t->n_added++;
        a->len = json_string_length(c);
        a->id = (int32_t)json_integer_value(id);
        int rc;
        if ((rc = flag(o, "special", 0, &a->special, i, err)) != LORA_OK ||
            (rc = flag(o, "normalized", !a->special, &a->normalized, i, err)) != LORA_OK ||
            (rc = flag(o, "lstrip", 0, &a->lstrip, i, err)) != LORA_OK ||
            (rc = flag(o, "rstrip", 0, &a->rstrip, i, err)) != LORA_OK ||
            (rc = flag(o, "single_word", 0, &a->single_word, i, err)) != LORA_OK)
            return rc;
        t->added_of_id[a->id] = (int32_t)i;
    }
    return LORA_OK;
}

/* The tries: normalized tokens by their normalized content. */
static int build_tries(lora_tokenizer *t, lora_error *err)
{
    tk_work w = {0};
    tk_buf nb = {0};
    int rc = LORA_OK;
    if (!(w.md = pcre2_match_data_create(1, NULL)))
        rc = lora_oom(err);
    for (size_t i = 0; i < t->n_added && rc == LORA_OK; i++) {
        tk_added *a = &t->added[i];
        if (!a->normalized) {
            rc = trie_insert(&t->trie_raw, a->content, a->len, (int32_t)i, err);
            continue;
        }
        if ((rc = tk_normalize(t, &w, a->content, a->len, &nb, err)) != LORA_OK)
            break;
        if (!(a->norm = malloc(nb.len + 1))) {
            rc = lora_oom(err);
            break;
        }
        memcpy(a->norm, nb.p, nb.len);
        a->norm[nb.len] = '\0';
        a->norm_len = nb.len;
        if (nb.len)
            rc = trie_insert(&t->trie_norm, a->norm, a->norm_len, (int32_t)i, err);
    }
    free(nb.p);
    tk_work_free(&w);
    return rc;
}

/* id of a token by its text: added tokens first, then the vocabulary. */
static int32_t token_id(const lora_tokenizer *t, const char *s, size_t len)
{
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(t->added[i].content, s, len) == 0)
            return t->added[i].id;
    return tk_vocab_find(t, s, len);
}

static int ids_append(int32_t **v, size_t *n, const int32_t *add, size_t k, int front, lora_error *err)
{
    if (*n + k > 1024)
        return lora_seterr(err, LORA_EINPUT, "post_processor: too many special tokens");
    int32_t *p = realloc(*v, (*n + k + 1) * sizeof *p);
    if (!p)
        return lora_oom(err);
    if (front) {
        memmove(p + k, p, *n * sizeof *p);
        memcpy(p, add, k * sizeof *p);
    } else {
        memcpy(p + *n, add, k * sizeof *p);
    }
    *v = p;
    *n += k;
    return LORA_OK;
}

/* TemplateProcessing "single": the special tokens around $A. */
static int parse_template(lora_tokenizer *t, json_t *j, lora_error *err)
{
    json_t *single = json_object_get(j, "single"), *specials = json_object_get(j, "special_tokens");
    if (!json_is_array(single))
        return lora_seterr(err, LORA_EINPUT, "post_processor TemplateProcessing: single is not a list");
    int32_t *pre = NULL, *post = NULL;
    size_t npre = 0, npost = 0;
    int seen = 0, rc = LORA_OK;
    for (size_t i = 0; i < json_array_size(single) && rc == LORA_OK; i++) {
        json_t *it = json_array_get(single, i), *sq = json_object_get(it, "Sequence"),
               *sp = json_object_get(it, "SpecialToken");
        if (sq) {
            const char *id = json_string_value(json_object_get(sq, "id"));
            if (!id || strcmp(id, "A") != 0 || seen)
                rc = lora_seterr(err, LORA_EINPUT, "post_processor TemplateProcessing: single must hold $A once");
            seen = 1;
            continue;
        }
        const char *name = json_string_value(json_object_get(sp, "id"));
        json_t *st = name ? json_object_get(specials, name) : NULL, *ids = json_object_get(st, "ids");
        if (!json_is_array(ids)) {
            rc = lora_seterr(err, LORA_EINPUT, "post_processor TemplateProcessing: special token %s has no ids",
                             name ? name : "(none)");
            break;
        }
        for (size_t k = 0; k < json_array_size(ids) && rc == LORA_OK; k++) {
            json_t *v = json_array_get(ids, k);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) >= (json_int_t)t->nids) {
                rc = lora_seterr(err, LORA_EINPUT, "post_processor TemplateProcessing: %s: id out of the vocabulary",
                                 name);
                break;
            }
            int32_t x = (int32_t)json_integer_value(v);
            rc = seen ? ids_append(&post, &npost, &x, 1, 0, err) : ids_append(&pre, &npre, &x, 1, 0, err);
        }
    }
    if (rc == LORA_OK && !seen)
        rc = lora_seterr(err, LORA_EINPUT, "post_processor TemplateProcessing: single has no $A");
    /* applied after what came before it: around the earlier template */
    if (rc == LORA_OK && npre)
        rc = ids_append(&t->tpl_pre, &t->n_tpl_pre, pre, npre, 1, err);
    if (rc == LORA_OK && npost)
        rc = ids_append(&t->tpl_post, &t->n_tpl_post, post, npost, 0, err);
    free(pre);
    free(post);
    return rc;
}

static int parse_post(lora_tokenizer *t, json_t *j, int depth, lora_error *err)
{
    if (!j || json_is_null(j))
        return LORA_OK;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type)
        return lora_seterr(err, LORA_EINPUT, "a post_processor without a type");
    if (depth > 8)
        return lora_seterr(err, LORA_EINPUT, "post_processor Sequence nested too deeply");
    if (strcmp(type, "ByteLevel") == 0)
        return LORA_OK;   /* offsets only */
    if (strcmp(type, "TemplateProcessing") == 0)
        return parse_template(t, j, err);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(j, "processors");
        if (!json_is_array(list))
            return lora_seterr(err, LORA_EINPUT, "post_processor Sequence: processors is not a list");
        for (size_t i = 0; i < json_array_size(list); i++) {
            int rc = parse_post(t, json_array_get(list, i), depth + 1, err);
            if (rc != LORA_OK)
                return rc;
        }
        return LORA_OK;
    }
    return lora_seterr(err, LORA_EINPUT, "post_processor %s is not supported", type);
}

/* "bos_token": "<s>" or {"content": "<s>", ...}; -1 when absent or null. */
static int config_token(const lora_tokenizer *t, json_t *cfg, const char *key, int32_t *id,
                        lora_error *err)
{
    json_t *v = json_object_get(cfg, key);
    *id = -1;
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!v || json_is_null(v))
        return LORA_OK;
    if (!json_is_string(v))
        return lora_seterr(err, LORA_EINPUT, "tokenizer_config.json: %s is not a string", key);
    *id = token_id(t, json_string_value(v), json_string_length(v));
    if (*id < 0)
        return lora_seterr(err, LORA_EINPUT, "tokenizer_config.json: %s \"%.64s\" is not a token", key,
                           json_string_value(v));
    return LORA_OK;
}

static void ids_remove(int32_t *v, size_t *n, int32_t id)
{
    size_t m = 0;
    for (size_t i = 0; i < *n; i++)
        if (v[i] != id)
            v[m++] = v[i];
    *n = m;
}

static int ids_has(const int32_t *v, size_t n, int32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == id)
            return 1;
    return 0;
}

/* BOS and EOS from tokenizer_config.json (CFG may be NULL). */
static int apply_config(lora_tokenizer *t, json_t *cfg, lora_error *err)
{
    int32_t bos = -1, eos = -1;
    int rc;
    if ((rc = config_token(t, cfg, "bos_token", &bos, err)) != LORA_OK ||
        (rc = config_token(t, cfg, "eos_token", &eos, err)) != LORA_OK)
        return rc;
    json_t *ab = json_object_get(cfg, "add_bos_token"), *ae = json_object_get(cfg, "add_eos_token");
    int32_t l3 = token_id(t, "<|begin_of_text|>", 17);
    int add_bos = json_is_boolean(ab) ? json_is_true(ab) : (bos >= 0 && bos == l3) ? 1 : -1;
    int add_eos = json_is_boolean(ae) ? json_is_true(ae) : -1;
    if (bos >= 0 && add_bos == 1 && !ids_has(t->tpl_pre, t->n_tpl_pre, bos) &&
        (rc = ids_append(&t->tpl_pre, &t->n_tpl_pre, &bos, 1, 1, err)) != LORA_OK)
        return rc;
    if (bos >= 0 && add_bos == 0)
        ids_remove(t->tpl_pre, &t->n_tpl_pre, bos);
    if (eos >= 0 && add_eos == 1 && !ids_has(t->tpl_post, t->n_tpl_post, eos) &&
        (rc = ids_append(&t->tpl_post, &t->n_tpl_post, &eos, 1, 0, err)) != LORA_OK)
        return rc;
    if (eos >= 0 && add_eos == 0)
        ids_remove(t->tpl_post, &t->n_tpl_post, eos);
    t->bos = bos >= 0 ? bos : t->n_tpl_pre ? t->tpl_pre[0] : -1;
    t->eos = eos >= 0 ? eos : t->n_tpl_post ? t->tpl_post[t->n_tpl_post - 1] : -1;
    return LORA_OK;
}

static int parse_all(lora_tokenizer *t, json_t *root, json_t *cfg, lora_error *err)
{
    if (!json_is_object(root))
        return lora_seterr(err, LORA_EINPUT, "not a tokenizer.json (not a JSON object)");
    json_t *added = json_object_get(root, "added_tokens");
    int rc;
    if ((rc = parse_model(t, json_object_get(root, "model"), added, err)) != LORA_OK ||
        (rc = parse_added(t, added, err)) != LORA_OK ||
        (rc = tk_norm_parse(json_object_get(root, "normalizer"), t, err)) != LORA_OK ||
        (rc = tk_pretok_parse(json_object_get(root, "pre_tokenizer"), t, err)) != LORA_OK ||
        (rc = parse_post(t, json_object_get(root, "post_processor"), 0, err)) != LORA_OK ||
        (rc = tk_decoder_parse(json_object_get(root, "decoder"), t, err)) != LORA_OK ||
        (rc = build_tries(t, err)) != LORA_OK || (rc = apply_config(t, cfg, err)) != LORA_OK)
        return rc;
    return tk_cache_new(t, err);
}

/* tokenizer.json (and tokenizer_config.json, may be NULL) held in memory. */
int tk_open_buffers(const char *json, size_t len, const char *cfg, size_t cfglen, const char *name,
                    lora_tokenizer **out, lora_error *err)
{
    *out = NULL;
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je), *cj = NULL;
    if (!root)
        return lora_seterr(err, LORA_EINPUT, "%s: line %d: %s", name, je.line, je.text);
    int rc = LORA_OK;
    /* tokenizer_config.json may hold model_max_length = 1e30 as an integer */
    if (cfg && !(cj = json_loadb(cfg, cfglen, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &je)))
        rc = lora_seterr(err, LORA_EINPUT, "tokenizer_config.json: line %d: %s", je.line, je.text);
    else if (cj && !json_is_object(cj))
        rc = lora_seterr(err, LORA_EINPUT, "tokenizer_config.json: not a JSON object");
    lora_tokenizer *t = NULL;
    if (rc == LORA_OK && !(t = calloc(1, sizeof *t)))
        rc = lora_oom(err);
    if (rc == LORA_OK && (rc = parse_all(t, root, cj, err)) != LORA_OK)
        lora_err_prefix(err, "%s", name);
    json_decref(root);
    json_decref(cj);
    if (rc != LORA_OK) {
        lora_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return LORA_OK;
}

int lora_tokenizer_open(const char *path, lora_tokenizer **out, lora_error *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return lora_seterr_path(err, errno, 0, path);
    size_t pl = strlen(path);
    char *file = malloc(pl + 32), *cfgpath = malloc(pl + 32);
    if (!file || !cfgpath) {
        free(file);
        free(cfgpath);
        return lora_oom(err);
    }
    if (S_ISDIR(sb.st_mode)) {
        snprintf(file, pl + 32, "%s/tokenizer.json", path);
        snprintf(cfgpath, pl + 32, "%s/tokenizer_config.json", path);
    } else {
        snprintf(file, pl + 32, "%s", path);
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        if (strcmp(base, "tokenizer.json") == 0)
            snprintf(cfgpath, pl + 32, "%.*stokenizer_config.json", (int)(base - path), path);
        else
            cfgpath[0] = '\0';
    }
    char *json = NULL, *cfg = NULL;
    size_t len = 0, cfglen = 0;
    int rc = lora_read_file(file, TK_MAX_FILE, &json, &len, err);
    if (rc == LORA_OK && cfgpath[0] && stat(cfgpath, &sb) == 0)
        rc = lora_read_file(cfgpath, TK_MAX_FILE, &cfg, &cfglen, err);
    if (rc == LORA_OK)
        rc = tk_open_buffers(json, len, cfg, cfglen, file, out, err);
    free(json);
    free(cfg);
    free(file);
    free(cfgpath);
    return rc;
}

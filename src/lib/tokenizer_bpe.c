/*
 * tokenizer_bpe.c - the BPE model of a Hugging Face tokenizer.json: the
 * vocabulary (bytes → id in an open-addressing hash table, id → bytes in
 * one arena), the merges ((left, right) → rank and merged id, also
 * hashed), and the tokenization of one pre-tokenized word exactly as
 * tokenizers' BPE::merge_word + Word::merge_all do it: characters to
 * ids (byte_fallback, unk), then the lowest-ranked adjacent pair merged
 * first (leftmost on ties) through a binary heap over a linked list of
 * symbols, O(n log n) in the word length.  A bounded word cache shared
 * by every caller keeps repeated words from being merged again.
 */
#include "tokenizer_int.h"

#include <string.h>

#define CACHE_SLOTS (1u << 16)   /* the cache fills to half of this */
#define CACHE_MAX_KEY 256        /* longer words are not cached */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t table_size(size_t n)
{
    size_t s = 1024;
    while (s < 2 * n)
        s <<= 1;
    return s;
}

const char *tk_token(const lora_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->nids)
        return NULL;
    if (t->added_of_id && t->added_of_id[id] >= 0) {
        const tk_added *a = &t->added[t->added_of_id[id]];
        *len = a->len;
        return a->content;
    }
    uint64_t o = t->tok_off[id];
    if (o == UINT64_MAX)
        return NULL;
    *len = (size_t)(o & 0xffff);
    return t->arena + (o >> 16);
}

/* Model vocabulary only (added tokens are matched before the model). */
int32_t tk_vocab_find(const lora_tokenizer *t, const char *s, size_t len)
{
    size_t i = (size_t)hash_bytes(s, len) & t->vhash_mask;
    for (;;) {
        uint32_t v = t->vhash[i];
        if (!v)
            return -1;
        uint64_t o = t->tok_off[v - 1];
        if ((o & 0xffff) == len && memcmp(t->arena + (o >> 16), s, len) == 0)
            return (int32_t)(v - 1);
        i = (i + 1) & t->vhash_mask;
    }
}

static int id_of(json_t *v, const char *what, const char *tok, int32_t *out, lora_error *err)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) >= (json_int_t)TK_MAX_IDS)
        return lora_seterr(err, LORA_EINPUT, "%s \"%.64s\": id is not an integer from 0 to %u", what,
                           tok, TK_MAX_IDS - 1);
    *out = (int32_t)json_integer_value(v);
    return LORA_OK;
}

/* model.vocab ({token: id}) and the ids of added_tokens: the id → bytes
 * table and the bytes → id hash (model vocabulary only). */
int tk_vocab_build(lora_tokenizer *t, json_t *vocab, json_t *added, lora_error *err)
{
    if (!json_is_object(vocab))
        return lora_seterr(err, LORA_EINPUT, "model.vocab is not an object");
    size_t maxid = 0, total = 0, n = json_object_size(vocab);
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        int32_t id = 0;
        if (id_of(v, "model.vocab", k, &id, err) != LORA_OK)
            return err ? err->code : LORA_EINPUT;
        size_t kl = strlen(k);
        if (kl == 0 || kl > TK_MAX_TOKEN)
            return lora_seterr(err, LORA_EINPUT, "model.vocab: a token of %zu bytes (1 to %d)", kl,
                               TK_MAX_TOKEN);
        if ((size_t)id + 1 > maxid)
            maxid = (size_t)id + 1;
        total += kl;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *id = json_object_get(json_array_get(added, i), "id");
        if (json_is_integer(id) && json_integer_value(id) >= 0 &&
            json_integer_value(id) < (json_int_t)TK_MAX_IDS &&
            (size_t)json_integer_value(id) + 1 > maxid)
            maxid = (size_t)json_integer_value(id) + 1;
    }
    if (total >= (1ull << 47))
        return lora_seterr(err, LORA_EINPUT, "model.vocab is too large");
    t->nids = maxid;
    t->model_vocab = n;
    t->tok_off = malloc((maxid ? maxid : 1) * sizeof *t->tok_off);
    t->arena = malloc(total ? total : 1);
    t->vhash_mask = table_size(n) - 1;
    t->vhash = calloc(t->vhash_mask + 1, sizeof *t->vhash);
    if (!t->tok_off || !t->arena || !t->vhash)
        return lora_oom(err);
    memset(t->tok_off, 0xff, maxid * sizeof *t->tok_off);
    size_t off = 0;
    json_object_foreach(vocab, k, v) {
        int32_t id = (int32_t)json_integer_value(v);
        size_t kl = strlen(k);
        if (t->tok_off[id] != UINT64_MAX)
            return lora_seterr(err, LORA_EINPUT, "model.vocab: id %d is given to two tokens", id);
        memcpy(t->arena + off, k, kl);
        t->tok_off[id] = (uint64_t)off << 16 | kl;
        size_t i = (size_t)hash_bytes(k, kl) & t->vhash_mask;
        while (t->vhash[i])
            i = (i + 1) & t->vhash_mask;
        t->vhash[i] = (uint32_t)id + 1;
        off += kl;
    }
    t->arena_len = off;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = tk_vocab_find(t, name, 6);
    }
    return LORA_OK;
}

static int merge_find(const lora_tokenizer *t, int32_t a, int32_t b, uint32_t *rank, int32_t *id)
{
    if (!t->mkeys)
        return 0;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = (size_t)hash_u64(key) & t->mhash_mask;
    for (;;) {
        uint64_t k = t->mkeys[i];
        if (k == UINT64_MAX)
            return 0;
        if (k == key) {
            *rank = (uint32_t)(t->mvals[i] >> 32);
            *id = (int32_t)(uint32_t)t->mvals[i];
            return 1;
        }
        i = (i + 1) & t->mhash_mask;
    }
}

/* One merge: its two halves from "a b" or ["a", "b"]. */
static int merge_parts(json_t *m, size_t i, const char **a, size_t *al, const char **b, size_t *bl,
                       int *skip, lora_error *err)
{
    *skip = 0;
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        if (n >= 8 && memcmp(s, "#version", 8) == 0) {
            *skip = 1;
            return LORA_OK;
        }
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
            return lora_seterr(err, LORA_EINPUT, "model.merges[%zu] is not two tokens split by one space",
                               i);
        *a = s, *al = (size_t)(sp - s), *b = sp + 1, *bl = n - *al - 1;
        return LORA_OK;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *al = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *bl = json_string_length(json_array_get(m, 1));
        return LORA_OK;
    }
    return lora_seterr(err, LORA_EINPUT, "model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", i);
}

int tk_merges_build(lora_tokenizer *t, json_t *merges, lora_error *err)
{
    if (!merges || json_is_null(merges))
        return LORA_OK;
    if (!json_is_array(merges))
        return lora_seterr(err, LORA_EINPUT, "model.merges is not a list");
    size_t n = json_array_size(merges);
    if (n == 0)
        return LORA_OK;
    t->mhash_mask = table_size(n) - 1;
    t->mkeys = malloc((t->mhash_mask + 1) * sizeof *t->mkeys);
    t->mvals = malloc((t->mhash_mask + 1) * sizeof *t->mvals);
    char *cat = malloc(2 * TK_MAX_TOKEN + 1);
    if (!t->mkeys || !t->mvals || !cat) {
        free(cat);
        return lora_oom(err);
    }
    memset(t->mkeys, 0xff, (t->mhash_mask + 1) * sizeof *t->mkeys);
    size_t plen = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    uint32_t rank = 0;
    int rc = LORA_OK;
    for (size_t i = 0; i < n && rc == LORA_OK; i++) {
        const char *a = NULL, *b = NULL;
        size_t al = 0, bl = 0;
        int skip = 0;
        if ((rc = merge_parts(json_array_get(merges, i), i, &a, &al, &b, &bl, &skip, err)) != LORA_OK)
            break;
        if (skip)
            continue;
        int32_t ia = tk_vocab_find(t, a, al), ib = tk_vocab_find(t, b, bl);
        if (ia < 0 || ib < 0) {
            rc = lora_seterr(err, LORA_EINPUT, "model.merges[%zu]: \"%.*s\" is not in the vocabulary",
                             i, (int)(ia < 0 ? (al > 64 ? 64 : al) : (bl > 64 ? 64 : bl)),
                             ia < 0 ? a : b);
            break;
        }
        if (bl < plen || (plen && memcmp(b, t->cont_prefix, plen) != 0) || al + bl - plen > 2 * TK_MAX_TOKEN) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "model.merges[%zu]: the right token lacks the continuing_subword_prefix", i);
            break;
        }
        memcpy(cat, a, al);
        memcpy(cat + al, b + plen, bl - plen);
        int32_t im = tk_vocab_find(t, cat, al + bl - plen);
        if (im < 0) {
            rc = lora_seterr(err, LORA_EINPUT, "model.merges[%zu]: the merged token is not in the vocabulary",
                             i);
            break;
        }
        /* a pair given twice keeps its last rank, as tokenizers' HashMap does */
        uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
        size_t h = (size_t)hash_u64(key) & t->mhash_mask;
        while (t->mkeys[h] != UINT64_MAX && t->mkeys[h] != key)
            h = (h + 1) & t->mhash_mask;
        t->mkeys[h] = key;
        t->mvals[h] = (uint64_t)rank << 32 | (uint32_t)im;
        rank++;
    }
    free(cat);
    return rc;
}

int tk_ids_add(tk_work *w, int32_t id, lora_error *err)
{
    if (w->n == w->cap) {
        size_t nc = w->cap ? 2 * w->cap : 256;
        int32_t *p = realloc(w->ids, nc * sizeof *p);
        if (!p)
            return lora_oom(err);
        w->ids = p;
        w->cap = nc;
    }
    w->ids[w->n++] = id;
    return LORA_OK;
}

/* ---- word cache ---- */

int tk_cache_new(lora_tokenizer *t, lora_error *err)
{
    t->cache = calloc(1, sizeof *t->cache);
    if (!t->cache)
        return lora_oom(err);
    t->cache->v = calloc(CACHE_SLOTS, sizeof *t->cache->v);
    if (!t->cache->v) {
        free(t->cache);
        t->cache = NULL;
        return lora_oom(err);
    }
    t->cache->mask = CACHE_SLOTS - 1;
    pthread_mutex_init(&t->cache->lock, NULL);
    return LORA_OK;
}

void tk_cache_free(lora_tokenizer *t)
{
    if (!t->cache)
        return;
    for (size_t i = 0; i <= t->cache->mask; i++) {
        free(t->cache->v[i].key);
        free(t->cache->v[i].ids);
    }
    free(t->cache->v);
    pthread_mutex_destroy(&t->cache->lock);
    free(t->cache);
}

/* 1 and the ids appended when S is cached. */
static int cache_get(const lora_tokenizer *t, tk_work *w, const char *s, size_t len, uint64_t h,
                     lora_error *err, int *rc)
{
    tk_cache *c = t->cache;
    int hit = 0;
    *rc = LORA_OK;
    pthread_mutex_lock(&c->lock);
    for (size_t i = (size_t)h & c->mask; c->v[i].key; i = (i + 1) & c->mask) {
        tk_cache_entry *e = &c->v[i];
        if (e->keylen == len && memcmp(e->key, s, len) == 0) {
            for (uint32_t k = 0; k < e->nids && *rc == LORA_OK; k++)
                *rc = tk_ids_add(w, e->ids[k], err);
            hit = 1;
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return hit;
}

/* Best effort: a word that cannot be cached (full, no memory) is not. */
static void cache_put(const lora_tokenizer *t, const char *s, size_t len, uint64_t h,
                      const int32_t *ids, size_t n)
{
    tk_cache *c = t->cache;
    pthread_mutex_lock(&c->lock);
    if (c->n < (c->mask + 1) / 2) {
        size_t i = (size_t)h & c->mask;
        int present = 0;
        for (; c->v[i].key; i = (i + 1) & c->mask)
            if (c->v[i].keylen == len && memcmp(c->v[i].key, s, len) == 0) {
                present = 1;
                break;
            }
        if (!present) {
            char *k = malloc(len ? len : 1);
            int32_t *v = malloc((n ? n : 1) * sizeof *v);
            if (k && v) {
                memcpy(k, s, len);
                memcpy(v, ids, n * sizeof *v);
                c->v[i] = (tk_cache_entry){.key = k, .keylen = (uint32_t)len, .nids = (uint32_t)n,
                                           .ids = v};
                c->n++;
            } else {
                free(k);
                free(v);
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
}

/* ---- one word ---- */

static int sym_reserve(tk_work *w, size_t n, lora_error *err)
{
    if (n <= w->sym_cap)
        return LORA_OK;
    size_t nc = w->sym_cap ? w->sym_cap : 64;
    while (nc < n)
        nc *= 2;
    int32_t *c = realloc(w->sym_c, nc * sizeof *c);
    if (c)
        w->sym_c = c;
    int32_t *p = realloc(w->sym_prev, nc * sizeof *p);
    if (p)
        w->sym_prev = p;
    int32_t *x = realloc(w->sym_next, nc * sizeof *x);
    if (x)
        w->sym_next = x;
    uint32_t *l = realloc(w->sym_len, nc * sizeof *l);
    if (l)
        w->sym_len = l;
    uint64_t *h = realloc(w->heap, 3 * nc * sizeof *h);
    if (h)
        w->heap = h;
    if (!c || !p || !x || !l || !h)
        return lora_oom(err);
    w->sym_cap = nc;
    w->heap_cap = 3 * nc;
    return LORA_OK;
}

static void heap_push(uint64_t *hp, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (hp[p] <= v)
            break;
        hp[i] = hp[p];
        i = p;
    }
    hp[i] = v;
}

static uint64_t heap_pop(uint64_t *hp, size_t *n)
{
    uint64_t top = hp[0], v = hp[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= m)
            break;
        if (l + 1 < m && hp[l + 1] < hp[l])
            l++;
        if (hp[l] >= v)
            break;
        hp[i] = hp[l];
        i = l;
    }
    if (m)
        hp[i] = v;
    return top;
}

static int push_sym(tk_work *w, size_t *ns, int32_t id, uint32_t len, lora_error *err)
{
    int rc = sym_reserve(w, *ns + 1, err);
    if (rc != LORA_OK)
        return rc;
    w->sym_c[*ns] = id;
    w->sym_len[*ns] = len;
    (*ns)++;
    return LORA_OK;
}

/* Characters → initial symbols (tokenizers' BPE::merge_word). */
static int initial_symbols(const lora_tokenizer *t, tk_work *w, const char *s, size_t len, size_t *ns,
                           lora_error *err)
{
    size_t plen = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    size_t slen = t->eow_suffix ? strlen(t->eow_suffix) : 0;
    int32_t unk = -1;
    uint32_t unk_len = 0;
    int rc;
    *ns = 0;
    for (size_t i = 0; i < len;) {
        size_t cl = tk_utf8_len((unsigned char)s[i]);
        if (cl == 0 || cl > len - i)
            cl = 1;
        int32_t id;
        if (plen == 0 && slen == 0) {
            id = tk_vocab_find(t, s + i, cl);
        } else {
            char tmp[3 * TK_MAX_TOKEN];
            size_t k = 0;
            if (i > 0 && plen && plen < TK_MAX_TOKEN)
                memcpy(tmp, t->cont_prefix, plen), k = plen;
            memcpy(tmp + k, s + i, cl);
            k += cl;
            if (i + cl == len && slen && slen < TK_MAX_TOKEN)
                memcpy(tmp + k, t->eow_suffix, slen), k += slen;
            id = tk_vocab_find(t, tmp, k);
        }
        if (id >= 0) {
            if (unk >= 0 && (rc = push_sym(w, ns, unk, unk_len, err)) != LORA_OK)
                return rc;
            unk = -1;
            if ((rc = push_sym(w, ns, id, (uint32_t)cl, err)) != LORA_OK)
                return rc;
            i += cl;
            continue;
        }
        int all = t->byte_fallback;
        for (size_t k = 0; all && k < cl; k++)
            all = t->byte_ids[(unsigned char)s[i + k]] >= 0;
        if (all) {
            /* tokenizers adds the bytes without flushing a pending unk first */
            for (size_t k = 0; k < cl; k++)
                if ((rc = push_sym(w, ns, t->byte_ids[(unsigned char)s[i + k]], 1, err)) != LORA_OK)
                    return rc;
            i += cl;
            continue;
        }
        if (t->unk < 0) {
            size_t adv;
            int32_t cp = tk_utf8_decode(s + i, len - i, &adv);
            return lora_seterr(err, LORA_EINPUT,
                               "character U+%04X is not in the vocabulary and the tokenizer has no "
                               "unk_token (tokenizers would drop it silently)",
                               (unsigned)(cp < 0 ? 0xFFFD : cp));
        }
        if (unk >= 0 && t->fuse_unk) {
            unk_len += (uint32_t)cl;
        } else {
            if (unk >= 0 && (rc = push_sym(w, ns, unk, unk_len, err)) != LORA_OK)
                return rc;
            unk = t->unk;
            unk_len = (uint32_t)cl;
        }
        i += cl;
    }
    if (unk >= 0)
        return push_sym(w, ns, unk, unk_len, err);
    return LORA_OK;
}

/* Word::merge_all: lowest rank first, then leftmost position. */
static void merge_all(const lora_tokenizer *t, tk_work *w, size_t ns)
{
    int32_t *c = w->sym_c, *prev = w->sym_prev, *next = w->sym_next;
    uint32_t *len = w->sym_len;
    uint64_t *hp = w->heap;
    size_t nh = 0;
    for (size_t i = 0; i < ns; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < ns; i++) {
        uint32_t r;
        int32_t id;
        if (merge_find(t, c[i], c[i + 1], &r, &id))
            heap_push(hp, &nh, (uint64_t)r << 32 | i);
    }
    while (nh) {
        uint64_t top = heap_pop(hp, &nh);
        uint32_t rank = (uint32_t)(top >> 32), r;
        size_t pos = (uint32_t)top;
        int32_t id;
        if (len[pos] == 0 || next[pos] < 0)
            continue;
        size_t nx = (size_t)next[pos];
        if (!merge_find(t, c[pos], c[nx], &r, &id) || r != rank)
            continue;   /* a stale entry: one side has merged since */
        c[pos] = id;
        len[pos] += len[nx];
        len[nx] = 0;
        next[pos] = next[nx];
        if (next[nx] >= 0)
            prev[next[nx]] = (int32_t)pos;
        if (prev[pos] >= 0 && merge_find(t, c[prev[pos]], c[pos], &r, &id))
            heap_push(hp, &nh, (uint64_t)r << 32 | (uint32_t)prev[pos]);
        if (next[pos] >= 0 && merge_find(t, c[pos], c[next[pos]], &r, &id))
            heap_push(hp, &nh, (uint64_t)r << 32 | pos);
    }
}

/* BPE::tokenize of one pre-tokenized word: ids appended to w->ids. */
int tk_bpe_word(const lora_tokenizer *t, tk_work *w, const char *s, size_t len, lora_error *err)
{
    if (len == 0)
        return LORA_OK;
    if (t->ignore_merges) {
        int32_t id = tk_vocab_find(t, s, len);
        if (id >= 0)
            return tk_ids_add(w, id, err);
    }
    int rc;
    uint64_t h = 0;
    int cacheable = len <= CACHE_MAX_KEY && t->cache;
    if (cacheable) {
        h = hash_bytes(s, len);
        if (cache_get(t, w, s, len, h, err, &rc))
            return rc;
    }
    size_t ns;
    if ((rc = initial_symbols(t, w, s, len, &ns, err)) != LORA_OK)
        return rc;
    if (ns == 0)
        return LORA_OK;
    merge_all(t, w, ns);
    size_t first = w->n;
    for (int32_t i = 0; i >= 0; i = w->sym_next[i])
        if ((rc = tk_ids_add(w, w->sym_c[i], err)) != LORA_OK)
            return rc;
    if (cacheable)
        cache_put(t, s, len, h, w->ids + first, w->n - first);
    return LORA_OK;
}

void tk_work_free(tk_work *w)
{
    for (int i = 0; i < 2; i++) {
        free(w->pool[i].p);
        free(w->pcs[i].v);
    }
    free(w->tmp.p);
    free(w->tmp2.p);
    free(w->spans.v);
    if (w->md)
        pcre2_match_data_free(w->md);
    free(w->sym_c);
    free(w->sym_prev);
    free(w->sym_next);
    free(w->sym_len);
    free(w->heap);
    free(w->ids);
    memset(w, 0, sizeof *w);
}

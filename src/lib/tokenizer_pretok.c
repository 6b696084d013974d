/*
 * tokenizer_pretok.c - the text side of a Hugging Face tokenizer.json
 * before the model: normalizers (NFC and friends through utf8proc,
 * Prepend, Replace) and pre-tokenizers (ByteLevel with the GPT-2 regex,
 * Split by a PCRE2 regex or a string with tokenizers' five behaviours,
 * Digits, Metaspace), each doing what the Rust implementation does to
 * the pieces of one text.  Regexes run with UTF and UCP on (\p{L},
 * \p{N}, \s as Unicode), JIT-compiled when PCRE2 can, and a match limit.
 */
#include "tokenizer_int.h"

#include <string.h>
#include <utf8proc.h>

/* tokenizers' ByteLevel regex (pre_tokenizers/byte_level.rs) */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- buffers ---- */

int tk_buf_reserve(tk_buf *b, size_t extra, lora_error *err)
{
    if (extra <= b->cap - b->len)
        return LORA_OK;
    if (extra > SIZE_MAX / 4 - b->len)
        return lora_oom(err);
    size_t nc = b->cap ? b->cap : 256;
    while (nc - b->len < extra)
        nc *= 2;
    char *p = realloc(b->p, nc);
    if (!p)
        return lora_oom(err);
    b->p = p;
    b->cap = nc;
    return LORA_OK;
}

int tk_buf_add(tk_buf *b, const void *p, size_t n, lora_error *err)
{
    int rc = tk_buf_reserve(b, n, err);
    if (rc != LORA_OK)
        return rc;
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    return LORA_OK;
}

int tk_pieces_add(tk_pieces *ps, size_t off, size_t len, int first, lora_error *err)
{
    if (ps->n == ps->cap) {
        size_t nc = ps->cap ? 2 * ps->cap : 64;
        tk_piece *v = realloc(ps->v, nc * sizeof *v);
        if (!v)
            return lora_oom(err);
        ps->v = v;
        ps->cap = nc;
    }
    ps->v[ps->n++] = (tk_piece){off, len, first};
    return LORA_OK;
}

/* ---- Unicode ---- */

size_t tk_utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
}

/* Code point at S (valid UTF-8 assumed, checked on entry), -1 if not. */
int32_t tk_utf8_decode(const char *s, size_t len, size_t *adv)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &cp);
    *adv = n > 0 ? (size_t)n : 1;
    return n > 0 ? cp : -1;
}

/* Rust's char::is_whitespace (the White_Space property). */
int tk_is_whitespace(int32_t c)
{
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int is_numeric(int32_t c)
{
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

/* Rust's char::is_alphanumeric, by general category (letters, numbers). */
int tk_is_alnum(int32_t c)
{
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
           (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes for U+0100.. in byte order. */
static int32_t byte_map[256];
static int16_t char_map[256 + 68];
static pthread_once_t byte_map_once = PTHREAD_ONCE_INIT;

static void byte_map_init(void)
{
    int32_t n = 0;
    for (int i = 0; i < 256 + 68; i++)
        char_map[i] = -1;
    for (int i = 0; i < 256; i++) {
        int keep = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
        byte_map[i] = keep ? i : 256 + n++;
        char_map[byte_map[i]] = (int16_t)i;
    }
}

int32_t tk_byte_char(unsigned char b)
{
    pthread_once(&byte_map_once, byte_map_init);
    return byte_map[b];
}

int tk_char_byte(int32_t c)
{
    if (c < 0 || c >= 256 + 68)
        return -1;
    pthread_once(&byte_map_once, byte_map_init);
    return char_map[c];
}

/* ---- patterns ---- */

static int regex_compile(const char *src, size_t len, const char *what, tk_pattern *out,
                         lora_error *err)
{
    if (len > TK_MAX_PATTERN)
        return lora_seterr(err, LORA_EINPUT, "%s: regex of %zu bytes (limit %d)", what, len,
                           TK_MAX_PATTERN);
    int ecode;
    PCRE2_SIZE eoff;
    out->re = pcre2_compile((PCRE2_SPTR)src, len, PCRE2_UTF | PCRE2_UCP, &ecode, &eoff, NULL);
    if (!out->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        return lora_seterr(err, LORA_EINPUT, "%s: bad regex at offset %zu: %s", what, (size_t)eoff,
                           (const char *)msg);
    }
    (void)pcre2_jit_compile(out->re, PCRE2_JIT_COMPLETE);  /* the interpreter otherwise */
    out->mc = pcre2_match_context_create(NULL);
    if (!out->mc)
        return lora_oom(err);
    pcre2_set_match_limit(out->mc, TK_MATCH_LIMIT);
    pcre2_set_depth_limit(out->mc, 100000);
    pcre2_set_heap_limit(out->mc, 64 * 1024);  /* KiB */
    return LORA_OK;
}

/* {"String": s} or {"Regex": r} (tokenizers' SplitPattern / ReplacePattern). */
int tk_pattern_parse(json_t *pat, const char *what, tk_pattern *out, lora_error *err)
{
    memset(out, 0, sizeof *out);
    json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    if (json_is_string(s) && !r) {
        out->litlen = json_string_length(s);
        if (out->litlen > TK_MAX_PATTERN)
            return lora_seterr(err, LORA_EINPUT, "%s: pattern too long", what);
        out->lit = malloc(out->litlen + 1);
        if (!out->lit)
            return lora_oom(err);
        memcpy(out->lit, json_string_value(s), out->litlen + 1);
        return LORA_OK;
    }
    if (json_is_string(r) && !s)
        return regex_compile(json_string_value(r), json_string_length(r), what, out, err);
    return lora_seterr(err, LORA_EINPUT, "%s: pattern is not {\"String\": ...} or {\"Regex\": ...}",
                       what);
}

void tk_pattern_free(tk_pattern *p)
{
    if (p->re)
        pcre2_code_free(p->re);
    if (p->mc)
        pcre2_match_context_free(p->mc);
    free(p->lit);
    memset(p, 0, sizeof *p);
}

int tk_pattern_next(const tk_pattern *p, pcre2_match_data *md, const char *s, size_t len,
                    size_t start, size_t *ms, size_t *me, lora_error *err)
{
    if (!p->re) {
        if (p->litlen == 0 || start >= len)
            return 0;
        const char *f = memmem(s + start, len - start, p->lit, p->litlen);
        if (!f)
            return 0;
        *ms = (size_t)(f - s);
        *me = *ms + p->litlen;
        return 1;
    }
    if (start > len)
        return 0;
    int rc = pcre2_match(p->re, (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK, md, p->mc);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)   /* the interpreter keeps its frames on the heap */
        rc = pcre2_match(p->re, (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, p->mc);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return -lora_seterr(err, LORA_EINPUT, "tokenizer regex: %s", (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

/* Matches of P in S as spans (.first = 1 for a match), tokenizers'
 * Pattern::find_matches.  Empty matches are skipped (they make empty
 * pieces, which tokenizers drops). */
static int find_matches(tk_work *w, const tk_pattern *p, const char *s, size_t len, lora_error *err)
{
    w->spans.n = 0;
    size_t prev = 0, pos = 0;
    int rc;
    for (;;) {
        size_t ms, me;
        int m = tk_pattern_next(p, w->md, s, len, pos, &ms, &me, err);
        if (m < 0)
            return -m;
        if (m == 0)
            break;
        if (me == ms) {
            if (ms >= len)
                break;
            size_t cl = tk_utf8_len((unsigned char)s[ms]);
            pos = ms + (cl ? cl : 1);
            continue;
        }
        if (ms > prev && (rc = tk_pieces_add(&w->spans, prev, ms - prev, 0, err)) != LORA_OK)
            return rc;
        if ((rc = tk_pieces_add(&w->spans, ms, me - ms, 1, err)) != LORA_OK)
            return rc;
        prev = pos = me;
    }
    if (prev < len)
        return tk_pieces_add(&w->spans, prev, len - prev, 0, err);
    return LORA_OK;
}

/* Each character for which PRED holds is a match of its own. */
static int find_chars(tk_work *w, const char *s, size_t len, int (*pred)(int32_t, const void *),
                      const void *arg, lora_error *err)
{
    w->spans.n = 0;
    size_t prev = 0;
    int rc;
    for (size_t i = 0; i < len;) {
        size_t adv;
        int32_t c = tk_utf8_decode(s + i, len - i, &adv);
        if (pred(c, arg)) {
            if (i > prev && (rc = tk_pieces_add(&w->spans, prev, i - prev, 0, err)) != LORA_OK)
                return rc;
            if ((rc = tk_pieces_add(&w->spans, i, adv, 1, err)) != LORA_OK)
                return rc;
            prev = i + adv;
        }
        i += adv;
    }
    if (prev < len)
        return tk_pieces_add(&w->spans, prev, len - prev, 0, err);
    return LORA_OK;
}

/* ---- normalizers ---- */

static int norm_one(json_t *j, lora_tokenizer *t, int depth, lora_error *err);

static int norm_seq(json_t *list, lora_tokenizer *t, int depth, lora_error *err)
{
    if (!json_is_array(list))
        return lora_seterr(err, LORA_EINPUT, "normalizer Sequence: normalizers is not a list");
    for (size_t i = 0; i < json_array_size(list); i++) {
        int rc = norm_one(json_array_get(list, i), t, depth + 1, err);
        if (rc != LORA_OK)
            return rc;
    }
    return LORA_OK;
}

static int norm_one(json_t *j, lora_tokenizer *t, int depth, lora_error *err)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type)
        return lora_seterr(err, LORA_EINPUT, "a normalizer without a type");
    if (depth > 8)
        return lora_seterr(err, LORA_EINPUT, "normalizer Sequence nested too deeply");
    if (strcmp(type, "Sequence") == 0)
        return norm_seq(json_object_get(j, "normalizers"), t, depth, err);
    if (t->n_norm == TK_MAX_STEPS)
        return lora_seterr(err, LORA_EINPUT, "more than %d normalizers", TK_MAX_STEPS);
    tk_norm *n = &t->norm[t->n_norm];
    memset(n, 0, sizeof *n);
    if (strcmp(type, "NFC") == 0)
        n->kind = TK_N_NFC;
    else if (strcmp(type, "NFD") == 0)
        n->kind = TK_N_NFD;
    else if (strcmp(type, "NFKC") == 0)
        n->kind = TK_N_NFKC;
    else if (strcmp(type, "NFKD") == 0)
        n->kind = TK_N_NFKD;
    else if (strcmp(type, "Prepend") == 0 || strcmp(type, "Replace") == 0) {
        int prep = type[0] == 'P';
        json_t *s = json_object_get(j, prep ? "prepend" : "content");
        if (!json_is_string(s) || json_string_length(s) > TK_MAX_TOKEN)
            return lora_seterr(err, LORA_EINPUT, "normalizer %s: %s is not a string", type,
                               prep ? "prepend" : "content");
        n->kind = prep ? TK_N_PREPEND : TK_N_REPLACE;
        if (!(n->str = lora_strdup(json_string_value(s), err)))
            return LORA_EIO;
        t->n_norm++;   /* counted now so that free() sees what is allocated */
        if (!prep)
            return tk_pattern_parse(json_object_get(j, "pattern"), "normalizer Replace", &n->pat, err);
        return LORA_OK;
    } else
        return lora_seterr(err, LORA_EINPUT, "normalizer %s is not supported", type);
    t->n_norm++;
    return LORA_OK;
}

int tk_norm_parse(json_t *j, lora_tokenizer *t, lora_error *err)
{
    if (!j || json_is_null(j))
        return LORA_OK;
    return norm_one(j, t, 0, err);
}

static int unicode_form_run(const char *s, size_t len, int kind, tk_buf *out, lora_error *err)
{
    int opt = UTF8PROC_STABLE;
    opt |= (kind == TK_N_NFC || kind == TK_N_NFKC) ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
    if (kind == TK_N_NFKC || kind == TK_N_NFKD)
        opt |= UTF8PROC_COMPAT;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &dst,
                                      (utf8proc_option_t)opt);
    if (n < 0) {
        free(dst);
        return n == UTF8PROC_ERROR_NOMEM ? lora_oom(err)
                                         : lora_seterr(err, LORA_EINPUT, "normalizer: %s",
                                                       utf8proc_errmsg(n));
    }
    int rc = tk_buf_add(out, dst, (size_t)n, err);
    free(dst);
    return rc;
}

/* ASCII is in every normal form, and no ASCII character composes with
 * what comes before it: only the runs of non-ASCII characters, each with
 * the one character before it (a starter they may compose with), go
 * through utf8proc. */
static int unicode_form(const char *s, size_t len, int kind, tk_buf *out, lora_error *err)
{
    size_t i = 0, done = 0;
    int rc = LORA_OK;
    while (rc == LORA_OK && i < len) {
        if (!(s[i] & 0x80)) {
            i++;
            continue;
        }
        size_t start = i > done ? i - 1 : i, end = i;
        while (end < len && (s[end] & 0x80))
            end++;
        rc = tk_buf_add(out, s + done, start - done, err);
        if (rc == LORA_OK)
            rc = unicode_form_run(s + start, end - start, kind, out, err);
        done = i = end;
    }
    if (rc == LORA_OK)
        rc = tk_buf_add(out, s + done, len - done, err);
    return rc;
}

static int replace_all(tk_work *w, const tk_pattern *p, const char *content, const char *s, size_t len,
                       tk_buf *out, lora_error *err)
{
    int rc = find_matches(w, p, s, len, err);
    for (size_t i = 0; rc == LORA_OK && i < w->spans.n; i++) {
        const tk_piece *sp = &w->spans.v[i];
        rc = sp->first ? tk_buf_add(out, content, strlen(content), err)
                       : tk_buf_add(out, s + sp->off, sp->len, err);
    }
    return rc;
}

int tk_normalize(const lora_tokenizer *t, tk_work *w, const char *s, size_t len, tk_buf *out,
                 lora_error *err)
{
    int rc;
    out->len = 0;
    if ((rc = tk_buf_add(out, s, len, err)) != LORA_OK)
        return rc;
    for (size_t k = 0; k < t->n_norm; k++) {
        const tk_norm *n = &t->norm[k];
        tk_buf *tmp = &w->tmp2;
        tmp->len = 0;
        switch (n->kind) {
        case TK_N_PREPEND:
            if (out->len == 0)
                continue;
            rc = tk_buf_add(tmp, n->str, strlen(n->str), err);
            if (rc == LORA_OK)
                rc = tk_buf_add(tmp, out->p, out->len, err);
            break;
        case TK_N_REPLACE:
            rc = replace_all(w, &n->pat, n->str, out->p, out->len, tmp, err);
            break;
        default:
            rc = unicode_form(out->p, out->len, n->kind, tmp, err);
        }
        if (rc != LORA_OK)
            return rc;
        tk_buf swap = *out;
        *out = *tmp;
        *tmp = swap;
    }
    return LORA_OK;
}

/* ---- pre-tokenizers ---- */

static int pre_one(json_t *j, lora_tokenizer *t, int depth, lora_error *err);

static int bool_of(json_t *j, const char *key, int dflt)
{
    json_t *v = json_object_get(j, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int parse_split(json_t *j, tk_pretok *p, lora_error *err)
{
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    const char *b = json_string_value(json_object_get(j, "behavior"));
    for (int i = 0; b && i < 5; i++)
        if (strcmp(b, names[i]) == 0)
            p->behavior = TK_SPLIT_REMOVED + i;
    if (!p->behavior)
        return lora_seterr(err, LORA_EINPUT, "pre-tokenizer Split: behavior %s is not supported",
                           b ? b : "(none)");
    p->invert = bool_of(j, "invert", 0);
    return tk_pattern_parse(json_object_get(j, "pattern"), "pre-tokenizer Split", &p->pat, err);
}

static int parse_metaspace(json_t *j, tk_pretok *p, lora_error *err)
{
    const char *r = json_string_value(json_object_get(j, "replacement"));
    if (!r || !*r || tk_utf8_len((unsigned char)r[0]) != strlen(r))
        return lora_seterr(err, LORA_EINPUT, "pre-tokenizer Metaspace: replacement is not one character");
    p->repl_len = strlen(r);
    memcpy(p->repl, r, p->repl_len);
    const char *sch = json_string_value(json_object_get(j, "prepend_scheme"));
    if (!sch)
        p->prepend = bool_of(j, "add_prefix_space", 1);
    else if (strcmp(sch, "always") == 0)
        p->prepend = 1;
    else if (strcmp(sch, "first") == 0)
        p->prepend = 2;
    else if (strcmp(sch, "never") == 0)
        p->prepend = 0;
    else
        return lora_seterr(err, LORA_EINPUT, "pre-tokenizer Metaspace: prepend_scheme %s", sch);
    p->split = bool_of(j, "split", 1);
    return LORA_OK;
}

static int pre_one(json_t *j, lora_tokenizer *t, int depth, lora_error *err)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type)
        return lora_seterr(err, LORA_EINPUT, "a pre-tokenizer without a type");
    if (depth > 8)
        return lora_seterr(err, LORA_EINPUT, "pre-tokenizer Sequence nested too deeply");
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(j, "pretokenizers");
        if (!json_is_array(list))
            return lora_seterr(err, LORA_EINPUT, "pre-tokenizer Sequence: pretokenizers is not a list");
        for (size_t i = 0; i < json_array_size(list); i++) {
            int rc = pre_one(json_array_get(list, i), t, depth + 1, err);
            if (rc != LORA_OK)
                return rc;
        }
        return LORA_OK;
    }
    if (t->n_pre == TK_MAX_STEPS)
        return lora_seterr(err, LORA_EINPUT, "more than %d pre-tokenizers", TK_MAX_STEPS);
    tk_pretok *p = &t->pre[t->n_pre];
    memset(p, 0, sizeof *p);
    if (strcmp(type, "ByteLevel") == 0) {
        p->kind = TK_P_BYTELEVEL;
        p->add_prefix_space = bool_of(j, "add_prefix_space", 1);
        p->use_regex = bool_of(j, "use_regex", 1);
        t->n_pre++;
        if (p->use_regex)
            return regex_compile(gpt2_regex, sizeof gpt2_regex - 1, "pre-tokenizer ByteLevel", &p->pat,
                                 err);
        return LORA_OK;
    }
    if (strcmp(type, "Split") == 0) {
        p->kind = TK_P_SPLIT;
        t->n_pre++;
        return parse_split(j, p, err);
    }
    if (strcmp(type, "Digits") == 0) {
        p->kind = TK_P_DIGITS;
        p->individual = bool_of(j, "individual_digits", 0);
        t->n_pre++;
        return LORA_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        p->kind = TK_P_METASPACE;
        t->n_pre++;
        return parse_metaspace(j, p, err);
    }
    return lora_seterr(err, LORA_EINPUT, "pre-tokenizer %s is not supported", type);
}

int tk_pretok_parse(json_t *j, lora_tokenizer *t, lora_error *err)
{
    if (!j || json_is_null(j))
        return LORA_OK;
    return pre_one(j, t, 0, err);
}

/* Append the spans of BASE to OUT under tokenizers' SplitDelimiterBehavior
 * (normalizer.rs NormalizedString::split), dropping empty pieces. */
static int emit_spans(tk_work *w, const char *base, int first, int behavior, int invert, tk_buf *pool,
                      tk_pieces *out, lora_error *err)
{
    tk_pieces *sp = &w->spans;
    if (invert)
        for (size_t i = 0; i < sp->n; i++)
            sp->v[i].first = !sp->v[i].first;
    /* merge in place: .first becomes "remove" */
    size_t m = 0;
    int prev_match = 0;
    if (behavior == TK_SPLIT_NEXT) {
        /* right to left, as tokenizers folds it */
        size_t k = sp->n;
        for (size_t i = sp->n; i-- > 0;) {
            tk_piece p = sp->v[i];
            if (p.first && !prev_match && k < sp->n) {
                sp->v[k].len += sp->v[k].off - p.off;
                sp->v[k].off = p.off;
            } else {
                sp->v[--k] = (tk_piece){p.off, p.len, 0};
            }
            prev_match = p.first;
        }
        memmove(sp->v, sp->v + k, (sp->n - k) * sizeof *sp->v);
        m = sp->n - k;
    } else {
        for (size_t i = 0; i < sp->n; i++) {
            tk_piece p = sp->v[i];
            int join = 0, remove = 0;
            if (behavior == TK_SPLIT_REMOVED)
                remove = p.first;
            else if (behavior == TK_SPLIT_CONTIG)
                join = p.first == prev_match && m > 0;
            else if (behavior == TK_SPLIT_PREV)
                join = p.first && !prev_match && m > 0;
            prev_match = p.first;
            if (join)
                sp->v[m - 1].len = p.off + p.len - sp->v[m - 1].off;
            else
                sp->v[m++] = (tk_piece){p.off, p.len, remove};
        }
    }
    for (size_t i = 0; i < m; i++) {
        tk_piece p = sp->v[i];
        if (p.first || p.len == 0)
            continue;
        int rc = tk_pieces_add(out, pool->len, p.len, first && p.off == 0, err);
        if (rc == LORA_OK)
            rc = tk_buf_add(pool, base + p.off, p.len, err);
        if (rc != LORA_OK)
            return rc;
    }
    return LORA_OK;
}

static int digit_pred(int32_t c, const void *arg)
{
    (void)arg;
    return is_numeric(c);
}

static int char_pred(int32_t c, const void *arg)
{
    return c == *(const int32_t *)arg;
}

/* Bytes of S as GPT-2's byte-level characters. */
static int bytes_to_chars(const char *s, size_t len, tk_buf *out, lora_error *err)
{
    int rc = tk_buf_reserve(out, 2 * len, err);
    if (rc != LORA_OK)
        return rc;
    char *o = out->p + out->len;
    for (size_t i = 0; i < len; i++) {
        int32_t c = tk_byte_char((unsigned char)s[i]);
        if (c < 0x80) {
            *o++ = (char)c;
        } else {
            *o++ = (char)(0xC0 | (c >> 6));
            *o++ = (char)(0x80 | (c & 0x3F));
        }
    }
    out->len = (size_t)(o - out->p);
    return LORA_OK;
}

static int pre_bytelevel(const tk_pretok *p, tk_work *w, const char *s, size_t len, int first,
                         tk_buf *pool, tk_pieces *out, lora_error *err)
{
    int rc;
    tk_buf *tmp = &w->tmp;
    tmp->len = 0;
    if (p->add_prefix_space && (len == 0 || s[0] != ' ') && (rc = tk_buf_add(tmp, " ", 1, err)))
        return rc;
    if ((rc = tk_buf_add(tmp, s, len, err)) != LORA_OK)
        return rc;
    if (p->use_regex) {
        if ((rc = find_matches(w, &p->pat, tmp->p, tmp->len, err)) != LORA_OK)
            return rc;
    } else {
        w->spans.n = 0;
        if ((rc = tk_pieces_add(&w->spans, 0, tmp->len, 0, err)) != LORA_OK)
            return rc;
    }
    for (size_t i = 0; i < w->spans.n; i++) {
        tk_piece sp = w->spans.v[i];
        if (sp.len == 0)
            continue;
        size_t start = pool->len;
        if ((rc = bytes_to_chars(tmp->p + sp.off, sp.len, pool, err)) != LORA_OK ||
            (rc = tk_pieces_add(out, start, pool->len - start, first && sp.off == 0, err)) != LORA_OK)
            return rc;
    }
    return LORA_OK;
}

static int pre_metaspace(const tk_pretok *p, tk_work *w, const char *s, size_t len, int first,
                         tk_buf *pool, tk_pieces *out, lora_error *err)
{
    int rc = LORA_OK;
    tk_buf *tmp = &w->tmp;
    tmp->len = 0;
    /* tokenizers replaces the spaces first, then looks at the start */
    int starts = (len && s[0] == ' ') || (len >= p->repl_len && memcmp(s, p->repl, p->repl_len) == 0);
    if ((p->prepend == 1 || (p->prepend == 2 && first)) && !starts)
        rc = tk_buf_add(tmp, p->repl, p->repl_len, err);
    for (size_t i = 0; i < len && rc == LORA_OK; i++)
        rc = s[i] == ' ' ? tk_buf_add(tmp, p->repl, p->repl_len, err) : tk_buf_add(tmp, s + i, 1, err);
    if (rc != LORA_OK)
        return rc;
    if (!p->split) {
        w->spans.n = 0;
        if ((rc = tk_pieces_add(&w->spans, 0, tmp->len, 0, err)) != LORA_OK)
            return rc;
        return emit_spans(w, tmp->p, first, TK_SPLIT_ISOLATED, 0, pool, out, err);
    }
    size_t adv;
    int32_t rc_cp = tk_utf8_decode(p->repl, p->repl_len, &adv);
    if ((rc = find_chars(w, tmp->p, tmp->len, char_pred, &rc_cp, err)) != LORA_OK)
        return rc;
    return emit_spans(w, tmp->p, first, TK_SPLIT_NEXT, 0, pool, out, err);
}

int tk_pretokenize(const lora_tokenizer *t, tk_work *w, lora_error *err)
{
    for (size_t k = 0; k < t->n_pre; k++) {
        const tk_pretok *p = &t->pre[k];
        tk_buf *src = &w->pool[0], *dst = &w->pool[1];
        tk_pieces *in = &w->pcs[0], *out = &w->pcs[1];
        dst->len = 0;
        out->n = 0;
        for (size_t i = 0; i < in->n; i++) {
            const char *s = src->p + in->v[i].off;
            size_t len = in->v[i].len;
            int first = in->v[i].first, rc;
            switch (p->kind) {
            case TK_P_BYTELEVEL:
                rc = pre_bytelevel(p, w, s, len, first, dst, out, err);
                break;
            case TK_P_METASPACE:
                rc = pre_metaspace(p, w, s, len, first, dst, out, err);
                break;
            case TK_P_DIGITS:
                rc = find_chars(w, s, len, digit_pred, NULL, err);
                if (rc == LORA_OK)
                    rc = emit_spans(w, s, first, p->individual ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIG, 0,
                                    dst, out, err);
                break;
            default:
                rc = find_matches(w, &p->pat, s, len, err);
                if (rc == LORA_OK)
                    rc = emit_spans(w, s, first, p->behavior, p->invert, dst, out, err);
            }
            if (rc != LORA_OK)
                return rc;
        }
        tk_buf sb = *src;
        *src = *dst;
        *dst = sb;
        tk_pieces sp = *in;
        *in = *out;
        *out = sp;
    }
    return LORA_OK;
}

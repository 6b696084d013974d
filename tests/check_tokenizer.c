/*
 * check_tokenizer.c - the Hugging Face tokenizer against the reference.
 *
 * Built twice: tests/check_tokenizer (committed synthetic tokenizers and
 * hostile inputs; needs nothing) and, with TOKENIZER_REAL, tests/
 * check_tokenizer_real (the real gpt2 / llama3 / qwen2 tokenizer.json of
 * $FIXTURES; SKIP when absent).  Reference ids and decodes come from
 * Hugging Face tokenizers itself (tests/fixtures/tokenizers/make-cases.js
 * and llama.cpp's vectors in $FIXTURES/tokenizers/NAME/cases.jsonl).
 */
#include "testutil.h"
#include "tokenizer_int.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *src_path(const char *rel)
{
    const char *top = getenv("TOP_SRCDIR");
    return tu_path(top ? top : ".", rel);
}

static void ids_eq(const int32_t *got, size_t n, json_t *want, const char *what, const char *text)
{
    ck_assert_msg(json_is_array(want), "%s: no ids for %s", what, text);
    int same = n == json_array_size(want);
    for (size_t i = 0; same && i < n; i++)
        same = got[i] == json_integer_value(json_array_get(want, i));
    ck_assert_msg(same, "%s: ids differ for \"%s\" (%zu ids, want %zu)", what, text, n,
                  json_array_size(want));
}

/* Every line of CASES: ids (no special tokens), and when present
 * ids_special (unless BOS_FIRST: then BOS + ids, our Llama 3 rule),
 * decoded and decoded_skip.  Returns the number of cases. */
static size_t run_cases(const lora_tokenizer *tok, const char *cases, int32_t bos_first)
{
    FILE *f = fopen(cases, "r");
    ck_assert_msg(f != NULL, "cannot open %s", cases);
    char *line = NULL;
    size_t cap = 0, count = 0;
    lora_error err;
    while (getline(&line, &cap, f) > 0) {
        json_error_t je;
        json_t *c = json_loads(line, JSON_ALLOW_NUL, &je);
        ck_assert_msg(c != NULL, "%s: %s", cases, je.text);
        json_t *jt = json_object_get(c, "text");
        const char *text = json_string_value(jt);
        size_t len = json_string_length(jt), n;
        int32_t *ids;
        lora_error_clear(&err);
        ck_assert_msg(lora_tokenizer_encode(tok, text, len, 0, &ids, &n, &err) == LORA_OK, "%s", err.msg);
        ids_eq(ids, n, json_object_get(c, "ids"), cases, text);
        json_t *dec = json_object_get(c, "decoded");
        if (dec) {
            char *out;
            size_t olen;
            ck_assert_int_eq(tk_decode(tok, ids, n, 0, &out, &olen, &err), LORA_OK);
            ck_assert_msg(olen == json_string_length(dec) && memcmp(out, json_string_value(dec), olen) == 0,
                          "%s: decode of \"%s\" gives \"%s\"", cases, text, out);
            /* round trip wherever the reference round-trips */
            if (json_string_length(dec) == len && memcmp(json_string_value(dec), text, len) == 0)
                ck_assert(olen == len && memcmp(out, text, len) == 0);
            free(out);
        }
        int32_t *sids;
        size_t sn;
        ck_assert_int_eq(lora_tokenizer_encode(tok, text, len, 1, &sids, &sn, &err), LORA_OK);
        if (bos_first >= 0) {
            ck_assert_msg(sn == n + 1 && sids[0] == bos_first && memcmp(sids + 1, ids, n * sizeof *ids) == 0,
                          "%s: add_special for \"%s\"", cases, text);
        } else if (json_object_get(c, "ids_special")) {
            ids_eq(sids, sn, json_object_get(c, "ids_special"), cases, text);
            json_t *skip = json_object_get(c, "decoded_skip");
            char *out;
            ck_assert_int_eq(lora_tokenizer_decode(tok, sids, sn, 1, &out, &err), LORA_OK);
            ck_assert_msg(strcmp(out, json_string_value(skip)) == 0, "%s: decode (skip) of \"%s\" gives \"%s\"",
                          cases, text, out);
            free(out);
        }
        free(sids);
        free(ids);
        json_decref(c);
        count++;
    }
    free(line);
    fclose(f);
    return count;
}

#ifdef TOKENIZER_REAL

static lora_tokenizer *open_fixture(const char *name)
{
    char rel[64];
    snprintf(rel, sizeof rel, "tokenizers/%s", name);
    char *dir = tu_fixture(rel);
    ck_assert_ptr_nonnull(dir);
    lora_tokenizer *tok = NULL;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_tokenizer_open(dir, &tok, &err) == LORA_OK, "%s", err.msg);
    free(dir);
    return tok;
}

static size_t fixture_cases(const lora_tokenizer *tok, const char *name)
{
    char rel[64];
    snprintf(rel, sizeof rel, "tokenizers/%s/cases.jsonl", name);
    char *p = tu_fixture(rel);
    ck_assert_ptr_nonnull(p);
    size_t n = run_cases(tok, p, -1);
    free(p);
    return n;
}

static size_t committed_cases(const lora_tokenizer *tok, const char *name, int32_t bos_first)
{
    char rel[96];
    snprintf(rel, sizeof rel, "tests/fixtures/tokenizers/%s-cases.jsonl", name);
    char *p = src_path(rel);
    size_t n = run_cases(tok, p, bos_first);
    free(p);
    return n;
}

START_TEST(gpt2)
{
    lora_tokenizer *tok = open_fixture("gpt2");
    ck_assert_uint_eq(fixture_cases(tok, "gpt2"), 46);
    ck_assert_uint_eq(committed_cases(tok, "gpt2", -1), 71);
    ck_assert_uint_eq(committed_cases(tok, "gpt2-random", -1), 400);
    ck_assert_uint_eq(lora_tokenizer_vocab_size(tok), 50257);
    ck_assert_int_eq(lora_tokenizer_bos(tok), 50256);
    ck_assert_int_eq(lora_tokenizer_eos(tok), 50256);
    lora_tokenizer_free(tok);
}
END_TEST

START_TEST(llama3)
{
    lora_tokenizer *tok = open_fixture("llama3");
    ck_assert_uint_eq(fixture_cases(tok, "llama3"), 46);
    /* add_special: <|begin_of_text|> first (tokenizers itself adds nothing
     * with this first-release tokenizer.json; see tokenizer.c) */
    ck_assert_uint_eq(committed_cases(tok, "llama3", 128000), 71);
    ck_assert_uint_eq(committed_cases(tok, "llama3-random", 128000), 400);
    ck_assert_uint_eq(lora_tokenizer_vocab_size(tok), 128256);
    ck_assert_int_eq(lora_tokenizer_bos(tok), 128000);
    ck_assert_int_eq(lora_tokenizer_eos(tok), 128001);
    lora_tokenizer_free(tok);
}
END_TEST

START_TEST(qwen2)
{
    lora_tokenizer *tok = open_fixture("qwen2");
    ck_assert_uint_eq(committed_cases(tok, "qwen2", -1), 71);
    ck_assert_uint_eq(committed_cases(tok, "qwen2-random", -1), 400);
    ck_assert_uint_eq(lora_tokenizer_vocab_size(tok), 151669);
    ck_assert_int_eq(lora_tokenizer_bos(tok), -1);
    ck_assert_int_eq(lora_tokenizer_eos(tok), 151645);
    /* NFC: decomposed and composed text give the same ids */
    int32_t *a, *b;
    size_t na, nb;
    lora_error err;
    ck_assert_int_eq(lora_tokenizer_encode(tok, "Cafe\xCC\x81", 6, 0, &a, &na, &err), LORA_OK);
    ck_assert_int_eq(lora_tokenizer_encode(tok, "Caf\xC3\xA9", 5, 0, &b, &nb, &err), LORA_OK);
    ck_assert(na == nb && memcmp(a, b, na * sizeof *a) == 0);
    free(a);
    free(b);
    lora_tokenizer_free(tok);
}
END_TEST

/* A long mixed text: same ids whether encoded whole or (at line breaks
 * that the regex always splits on) line by line, and it round-trips. */
START_TEST(long_text)
{
    lora_tokenizer *tok = open_fixture("llama3");
    tk_buf text = {0};
    lora_error err;
    uint64_t st = 42;
    static const char *words[] = {"the", " quick", " 123", " 日本語", " 😀", "\n", "  ", "don't", " Ünïcödé",
                                  ",", " fox", "\t"};
    while (text.len < (2u << 20)) {
        const char *w = words[tu_rand(&st) % 12];
        ck_assert_int_eq(tk_buf_add(&text, w, strlen(w), &err), LORA_OK);
    }
    int32_t *ids;
    size_t n;
    ck_assert_int_eq(lora_tokenizer_encode(tok, text.p, text.len, 0, &ids, &n, &err), LORA_OK);
    ck_assert_uint_gt(n, text.len / 8);
    char *back;
    size_t blen;
    ck_assert_int_eq(tk_decode(tok, ids, n, 0, &back, &blen, &err), LORA_OK);
    ck_assert(blen == text.len && memcmp(back, text.p, blen) == 0);
    free(back);
    free(ids);
    free(text.p);
    lora_tokenizer_free(tok);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer_real");
    TCase *tc = tcase_create("real");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, gpt2);
    tcase_add_test(tc, llama3);
    tcase_add_test(tc, qwen2);
    tcase_add_test(tc, long_text);
    suite_add_tcase(s, tc);
    return tu_run(s, 1);
}

#else /* the synthetic tokenizers and hostile inputs */

static lora_tokenizer *open_synth(const char *name)
{
    char rel[96];
    snprintf(rel, sizeof rel, "tests/fixtures/tokenizers/%s", name);
    char *dir = src_path(rel);
    lora_tokenizer *tok = NULL;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_tokenizer_open(dir, &tok, &err) == LORA_OK, "%s", err.msg);
    free(dir);
    return tok;
}

static size_t synth_cases(const char *name)
{
    lora_tokenizer *tok = open_synth(name);
    char rel[96];
    snprintf(rel, sizeof rel, "tests/fixtures/tokenizers/%s-cases.jsonl", name);
    char *p = src_path(rel);
    size_t n = run_cases(tok, p, -1);
    free(p);
    lora_tokenizer_free(tok);
    return n;
}

START_TEST(synth_sp)
{
    ck_assert_uint_eq(synth_cases("synth-sp"), 26);
    lora_tokenizer *tok = open_synth("synth-sp");
    ck_assert_int_eq(lora_tokenizer_bos(tok), 1);
    ck_assert_int_eq(lora_tokenizer_eos(tok), -1);
    ck_assert_uint_eq(lora_tokenizer_vocab_size(tok), 454);
    lora_tokenizer_free(tok);
}
END_TEST

START_TEST(synth_meta)
{
    ck_assert_uint_eq(synth_cases("synth-meta"), 26);
    lora_tokenizer *tok = open_synth("synth-meta");
    ck_assert_int_eq(lora_tokenizer_bos(tok), 1);
    ck_assert_int_eq(lora_tokenizer_eos(tok), 2);
    lora_tokenizer_free(tok);
}
END_TEST

START_TEST(synth_split)
{
    ck_assert_uint_eq(synth_cases("synth-split"), 26);
}
END_TEST

static char *synth_json(size_t *len)
{
    char *p = src_path("tests/fixtures/tokenizers/synth-sp/tokenizer.json");
    char *s = tu_read(p, len);
    free(p);
    return s;
}

/* Open JSON with the first FROM replaced by TO; the result code and message. */
static int open_edited(const char *from, const char *to, lora_error *err)
{
    size_t len;
    char *s = synth_json(&len);
    char *at = strstr(s, from);
    ck_assert_msg(at != NULL, "%s not in synth-sp", from);
    size_t fl = strlen(from), tl = strlen(to);
    char *e = malloc(len - fl + tl + 1);
    ck_assert_ptr_nonnull(e);
    size_t pre = (size_t)(at - s);
    memcpy(e, s, pre);
    memcpy(e + pre, to, tl);
    memcpy(e + pre + tl, at + fl, len - pre - fl + 1);
    lora_tokenizer *tok = NULL;
    lora_error_clear(err);
    int rc = tk_open_buffers(e, len - fl + tl, NULL, 0, "edited", &tok, err);
    ck_assert(rc == LORA_OK || tok == NULL);
    lora_tokenizer_free(tok);
    free(e);
    free(s);
    return rc;
}

START_TEST(refusals)
{
    static const struct { const char *from, *to, *msg; } cases[] = {
        {"\"type\": \"BPE\"", "\"type\": \"WordPiece\"", "model WordPiece is not supported"},
        {"\"type\": \"BPE\"", "\"type\": \"Unigram\"", "model Unigram is not supported"},
        {"\"type\": \"Prepend\"", "\"type\": \"Lowercase\"", "normalizer Lowercase is not supported"},
        {"\"pre_tokenizer\": null", "\"pre_tokenizer\": {\"type\": \"Whitespace\"}", "pre-tokenizer Whitespace"},
        {"\"pre_tokenizer\": null", "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"([\"}, \"behavior\": \"Isolated\"}",
         "bad regex"},
        {"\"pre_tokenizer\": null", "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Sideways\"}",
         "behavior Sideways"},
        {"\"type\": \"TemplateProcessing\"", "\"type\": \"RobertaProcessing\"", "post_processor RobertaProcessing"},
        {"\"type\": \"ByteFallback\"", "\"type\": \"WordPiece\"", "decoder WordPiece is not supported"},
        {"\"dropout\": null", "\"dropout\": 0.1", "dropout"},
        {"\"unk_token\": \"<unk>\"", "\"unk_token\": \"<nope>\"", "unk_token"},
        {"\"<0x00>\": 3", "\"<0x00>\": -3", "not an integer"},
        {"\"<0x00>\": 3", "\"<0x00>\": 99999999999", "not an integer"},
        {"\"<0x00>\": 3", "\"<0x00>\": 4", "given to two tokens"},
        {"\"merges\": [", "\"merges\": [\"zz qq\", ", "not in the vocabulary"},
        {"\"merges\": [", "\"merges\": [\"a b c\", ", "one space"},
        {"\"merges\": [", "\"merges\": [7, ", "neither"},
        {"\"id\": 0,", "\"id\": -1,", "added_tokens[0].id"},
        {"\"content\": \"<unk>\"", "\"content\": \"\"", "added_tokens[0].content"},
        {"\"ids\": [\n     1\n    ]", "\"ids\": [\n     100000\n    ]", "id out of the vocabulary"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lora_error err;
        int rc = open_edited(cases[i].from, cases[i].to, &err);
        ck_assert_msg(rc == LORA_EINPUT, "case %zu: rc %d (%s)", i, rc, err.msg);
        ck_assert_msg(strstr(err.msg, cases[i].msg) != NULL, "case %zu: %s", i, err.msg);
    }
}
END_TEST

START_TEST(truncated)
{
    size_t len;
    char *s = synth_json(&len);
    for (size_t cut = 0; cut < len; cut += 1 + cut / 16) {
        lora_tokenizer *tok = NULL;
        lora_error err;
        ck_assert_int_eq(tk_open_buffers(s, cut, NULL, 0, "cut", &tok, &err), LORA_EINPUT);
        ck_assert_ptr_null(tok);
    }
    /* a corrupted byte anywhere: refused or opened, never a crash */
    uint64_t st = 7;
    for (int k = 0; k < 300; k++) {
        size_t at = tu_rand(&st) % len;
        char old = s[at];
        s[at] = (char)(tu_rand(&st) & 0xff);
        lora_tokenizer *tok = NULL;
        lora_error err;
        int rc = tk_open_buffers(s, len, NULL, 0, "corrupt", &tok, &err);
        if (rc == LORA_OK) {
            int32_t *ids;
            size_t n;
            if (lora_tokenizer_encode(tok, "hello <mask> 12 ü", 19, 1, &ids, &n, &err) == LORA_OK)
                free(ids);
        }
        lora_tokenizer_free(tok);
        s[at] = old;
    }
    free(s);
}
END_TEST

START_TEST(bad_text)
{
    lora_tokenizer *tok = open_synth("synth-sp");
    int32_t *ids = NULL;
    size_t n;
    lora_error err;
    static const char *bad[] = {"ab\xff", "\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\xc0\xafz"};
    for (size_t i = 0; i < 5; i++) {
        ck_assert_int_eq(lora_tokenizer_encode(tok, bad[i], strlen(bad[i]), 0, &ids, &n, &err), LORA_EINPUT);
        ck_assert_msg(strstr(err.msg, "UTF-8") != NULL, "%s", err.msg);
        ck_assert_ptr_null(ids);
    }
    /* past the length limit: refused before the text is read */
    ck_assert_int_eq(lora_tokenizer_encode(tok, "x", TK_MAX_TEXT + 1, 0, &ids, &n, &err), LORA_EINPUT);
    /* empty text: no ids, or the template's */
    ck_assert_int_eq(lora_tokenizer_encode(tok, NULL, 0, 0, &ids, &n, &err), LORA_OK);
    ck_assert_uint_eq(n, 0);
    free(ids);
    ck_assert_int_eq(lora_tokenizer_encode(tok, "", 0, 1, &ids, &n, &err), LORA_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(ids[0], 1);
    free(ids);
    /* ids outside the vocabulary are refused on decode */
    int32_t out[] = {5, 454, 6};
    char *text = NULL;
    ck_assert_int_eq(lora_tokenizer_decode(tok, out, 3, 0, &text, &err), LORA_EINPUT);
    ck_assert_ptr_null(text);
    out[1] = -1;
    ck_assert_int_eq(lora_tokenizer_decode(tok, out, 3, 0, &text, &err), LORA_EINPUT);
    lora_tokenizer_free(tok);
}
END_TEST

/* Large and degenerate inputs: bounded, and every byte comes back. */
START_TEST(huge)
{
    lora_tokenizer *tok = open_synth("synth-sp");
    static const char *unit[] = {"a", " ", "\n", "ü", "😀", "the "};
    lora_error err;
    for (size_t u = 0; u < 6; u++) {
        tk_buf b = {0};
        while (b.len < (1u << 20))
            ck_assert_int_eq(tk_buf_add(&b, unit[u], strlen(unit[u]), &err), LORA_OK);
        int32_t *ids;
        size_t n;
        ck_assert_int_eq(lora_tokenizer_encode(tok, b.p, b.len, 0, &ids, &n, &err), LORA_OK);
        char *back;
        size_t blen;
        ck_assert_int_eq(tk_decode(tok, ids, n, 0, &back, &blen, &err), LORA_OK);
        /* the decoder strips the one space that the normalizer prepends */
        ck_assert_msg(blen == b.len && memcmp(back, b.p, blen) == 0, "unit %zu", u);
        free(back);
        free(ids);
        free(b.p);
    }
    lora_tokenizer_free(tok);
}
END_TEST

/* Rust's from_utf8_lossy: one U+FFFD per maximal ill-formed subpart. */
START_TEST(lossy)
{
    static const struct { const char *in, *out; } c[] = {
        {"ab", "ab"},
        {"a\xff" "b", "a\xEF\xBF\xBD" "b"},
        {"\xe2\x82", "\xEF\xBF\xBD"},
        {"\xe2\x82z", "\xEF\xBF\xBDz"},
        {"\xf0\x9f\x98", "\xEF\xBF\xBD"},
        {"\xed\xa0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\xc0\xaf", "\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\xf4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\xe2\x82\xac", "\xe2\x82\xac"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        tk_buf b = {0};
        lora_error err;
        ck_assert_int_eq(tk_utf8_lossy(&b, c[i].in, strlen(c[i].in), &err), LORA_OK);
        ck_assert_msg(b.len == strlen(c[i].out) && memcmp(b.p, c[i].out, b.len) == 0, "case %zu", i);
        free(b.p);
    }
}
END_TEST

static char *run_jsonl(const lora_tokenizer *tok, const char *input, int detok, int special, int *rc,
                       lora_error *err)
{
    FILE *in = fmemopen((void *)input, strlen(input), "r");
    char *out = NULL;
    size_t olen = 0;
    FILE *o = open_memstream(&out, &olen);
    ck_assert(in && o);
    *rc = lora_tokenize_jsonl(tok, in, "t.jsonl", o, detok, special, NULL, err);
    fclose(in);
    fclose(o);
    return out;
}

START_TEST(jsonl)
{
    lora_tokenizer *tok = open_synth("synth-meta");
    lora_error err;
    int rc;
    char *out = run_jsonl(tok, "{\"id\":\"a\",\"text\":\"the fox\",\"label\":[1]}\n\n{\"text\":\"\"}\n", 0, 1,
                          &rc, &err);
    ck_assert_int_eq(rc, LORA_OK);
    ck_assert_str_eq(out, "{\"ids\":[1,332,360,2],\"id\":\"a\",\"label\":[1]}\n{\"ids\":[1,2]}\n");
    free(out);
    out = run_jsonl(tok, "{\"ids\":[1,332,360,2],\"k\":true}\n", 1, 0, &rc, &err);
    ck_assert_int_eq(rc, LORA_OK);
    ck_assert_str_eq(out, "{\"text\":\"the fox\",\"k\":true}\n");
    free(out);
    /* a bad line: its number, and nothing written */
    static const struct { const char *in, *msg; int detok; } bad[] = {
        {"{\"text\":\"ok\"}\n{\"text\":5}\n", "t.jsonl:2: no \"text\" string", 0},
        {"{\"text\":\"ok\"}\nnot json\n", "t.jsonl:2: not a JSON object", 0},
        {"[1,2]\n", "t.jsonl:1: not a JSON object", 0},
        {"{\"text\":\"a\",\"text\":\"b\"}\n", "t.jsonl:1", 0},
        {"{\"ids\":[1,99999]}\n", "t.jsonl:1: ids[1]", 1},
        {"{\"ids\":\"1 2\"}\n", "t.jsonl:1: no \"ids\"", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        out = run_jsonl(tok, bad[i].in, bad[i].detok, 1, &rc, &err);
        ck_assert_int_eq(rc, LORA_EINPUT);
        ck_assert_msg(strstr(err.msg, bad[i].msg) != NULL, "case %zu: %s", i, err.msg);
        ck_assert_msg(!out || !*out, "case %zu wrote output", i);
        free(out);
    }
    lora_tokenizer_free(tok);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, synth_sp);
    tcase_add_test(tc, synth_meta);
    tcase_add_test(tc, synth_split);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, truncated);
    tcase_add_test(tc, bad_text);
    tcase_add_test(tc, huge);
    tcase_add_test(tc, lossy);
    tcase_add_test(tc, jsonl);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

#endif

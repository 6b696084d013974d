/*
 * check_dataset.c - the JSONL data-set parser (dataset.c): good items of
 * both kinds, text or ids, kept "id" and other keys, every kind of bad
 * line giving LORA_EINPUT with its line number and the problem, and the
 * tokenization of text (the continuation convention) through a toy codec
 * whose token boundaries are known.
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

static lora_dataset *parse_ok(const char *text, uint64_t vocab)
{
    lora_dataset *ds = NULL;
    lora_error err;
    lora_error_clear(&err);
    int rc = lora_dataset_parse(text, strlen(text), "t.jsonl", vocab, &ds, &err);
    ck_assert_msg(rc == LORA_OK, "parse failed: %s", err.msg);
    return ds;
}

/* The text must fail with LORA_EINPUT and a message containing want. */
static void parse_bad(const char *text, size_t len, uint64_t vocab, const char *want)
{
    lora_dataset *ds = NULL;
    lora_error err;
    lora_error_clear(&err);
    int rc = lora_dataset_parse(text, len, "t.jsonl", vocab, &ds, &err);
    ck_assert_msg(rc == LORA_EINPUT, "expected LORA_EINPUT for %.60s, got %d (%s)", text, rc, err.msg);
    ck_assert_ptr_null(ds);
    ck_assert_msg(strstr(err.msg, want) != NULL, "message \"%s\" lacks \"%s\"", err.msg, want);
}

START_TEST(good_items)
{
    const char *t = "{\"prompt\":[1,2,3],\"choices\":[[4],[5,6]],\"label\":1}\n"
                    "\n"
                    "  \r\n"
                    "{\"prompt\":[7],\"target\":[8,9]}\r\n"
                    "{\"target\":[0],\"prompt\":[31]}";
    lora_dataset *ds = parse_ok(t, 32);
    ck_assert_uint_eq(ds->n, 3);
    const lora_item *a = &ds->items[0], *b = &ds->items[1], *c = &ds->items[2];
    ck_assert_int_eq(a->kind, LORA_ITEM_CHOICE);
    ck_assert_uint_eq(a->line, 1);
    ck_assert_uint_eq(a->n_prompt, 3);
    ck_assert_int_eq(a->prompt[2], 3);
    ck_assert_uint_eq(a->n_choices, 2);
    ck_assert_uint_eq(a->choice_len[1], 2);
    ck_assert_int_eq(a->choices[1][1], 6);
    ck_assert_uint_eq(a->label, 1);
    ck_assert_int_eq(b->kind, LORA_ITEM_GENERATE);
    ck_assert_uint_eq(b->line, 4);   /* blank lines still count */
    ck_assert_uint_eq(b->n_target, 2);
    ck_assert_int_eq(b->target[1], 9);
    ck_assert_uint_eq(c->line, 5);
    ck_assert_int_eq(c->prompt[0], 31);
    ck_assert_uint_eq(ds->max_len, 5);  /* 3 + 2 */
    lora_dataset_free(ds);
    /* vocab 0: no vocabulary check */
    ds = parse_ok("{\"prompt\":[100000],\"target\":[2147483647]}\n", 0);
    ck_assert_int_eq(ds->items[0].target[0], 2147483647);
    lora_dataset_free(ds);
}
END_TEST

#define BAD(text, want) parse_bad(text, strlen(text), 32, want)

START_TEST(bad_lines)
{
    BAD("{\"prompt\":[1],\"target\":[2]}\n{\"prompt\":[1],", "t.jsonl:2: not JSON");
    BAD("[1,2,3]\n", "t.jsonl:1: an item must be a JSON object");
    BAD("{\"promt\":[1],\"target\":[2]}", "\"prompt\" is missing");
    BAD("{\"target\":[2]}", "t.jsonl:1: \"prompt\" is missing");
    BAD("{\"prompt\":[],\"target\":[2]}", "prompt is empty");
    BAD("{\"prompt\":7,\"target\":[2]}", "prompt is neither text nor a list of token ids");
    BAD("{\"prompt\":\"\",\"target\":[2]}", "t.jsonl:1: prompt is an empty string");
    BAD("{\"prompt\":\"a\\u0000b\",\"target\":[2]}", "t.jsonl:1: not JSON: \\u0000 is not allowed");
    BAD("{\"prompt\":\"a\",\"choices\":[\"x\",\"\"],\"label\":0}", "choices[1] is an empty string");
    BAD("{\"prompt\":\"a\",\"choices\":[\"x\",{}],\"label\":0}", "choices[1] is neither text");
    BAD("{\"prompt\":[1,\"2\"],\"target\":[2]}", "prompt[1] is not an integer token id");
    BAD("{\"prompt\":[1,2.5],\"target\":[2]}", "prompt[1] is not an integer token id");
    BAD("{\"prompt\":[-1],\"target\":[2]}", "prompt[0] = -1 is outside the vocabulary (0..31)");
    BAD("{\"prompt\":[1],\"target\":[32]}", "target[0] = 32 is outside the vocabulary");
    BAD("{\"prompt\":[1],\"target\":[99999999999999]}", "outside the vocabulary");
    BAD("{\"prompt\":[1],\"target\":[]}", "target is empty");
    BAD("{\"prompt\":[1],\"target\":null}", "target is neither text nor a list of token ids");
    BAD("{\"prompt\":[1]}", "needs \"target\", or \"choices\" and \"label\"");
    BAD("{\"prompt\":[1],\"choices\":[[1]]}", "needs \"target\", or \"choices\" and \"label\"");
    BAD("{\"prompt\":[1],\"target\":[1],\"choices\":[[1]],\"label\":0}", "not both");
    BAD("{\"prompt\":[1],\"choices\":[],\"label\":0}", "\"choices\" is not a non-empty list");
    BAD("{\"prompt\":[1],\"choices\":[1,2],\"label\":0}", "choices[0] is neither text nor a list");
    BAD("{\"prompt\":[1],\"choices\":[[1],[]],\"label\":0}", "choices[1] is empty");
    BAD("{\"prompt\":[1],\"choices\":[[1],[2]],\"label\":2}", "\"label\" 2 is not a choice index (0..1)");
    BAD("{\"prompt\":[1],\"choices\":[[1],[2]],\"label\":-1}", "is not a choice index");
    BAD("{\"prompt\":[1],\"choices\":[[1],[2]],\"label\":\"0\"}", "\"label\" is not an integer");
    BAD("{\"prompt\":[1],\"choices\":[[1],[2]],\"label\":true}", "\"label\" is not an integer");
    BAD("{\"prompt\":[1],\"prompt\":[2],\"target\":[2]}", "t.jsonl:1: not JSON");
    BAD("", "t.jsonl: no items");
    BAD("\n\n   \n", "no items");
    BAD("{\"prompt\":[1],\"target\":[2]}\n\n\n{}\n", "t.jsonl:4:");
    /* a NUL byte inside a line */
    parse_bad("{\"prompt\":[1],\0\"target\":[2]}\n", 30, 32, "t.jsonl:1: NUL byte");
}
END_TEST

/* Limits: too many tokens, too many choices, a line past the limit. */
START_TEST(limits)
{
    size_t n = LORA_DS_MAX_TOKENS + 1;
    char *buf = malloc(n * 2 + 64);
    ck_assert_ptr_nonnull(buf);
    size_t o = (size_t)sprintf(buf, "{\"prompt\":[");
    for (size_t i = 0; i < n; i++) {
        buf[o++] = '1';
        buf[o++] = i + 1 < n ? ',' : ']';
    }
    o += (size_t)sprintf(buf + o, ",\"target\":[1]}");
    parse_bad(buf, o, 32, "prompt has 65537 tokens, more than the limit 65536");
    free(buf);

    n = LORA_DS_MAX_CHOICES + 1;
    buf = malloc(n * 4 + 64);
    ck_assert_ptr_nonnull(buf);
    o = (size_t)sprintf(buf, "{\"prompt\":[1],\"label\":0,\"choices\":[");
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(buf + o, "[1]%s", i + 1 < n ? "," : "]}");
    parse_bad(buf, o, 32, "1025 choices, more than the limit 1024");
    free(buf);

    n = LORA_DS_MAX_LINE + 10;
    buf = malloc(n);
    ck_assert_ptr_nonnull(buf);
    memset(buf, ' ', n);
    memcpy(buf, "{\"prompt\":[1],\"target\":[2]}", 27);
    parse_bad(buf, n, 32, "t.jsonl:1: line longer than");
    free(buf);
}
END_TEST

/* "id" and other keys kept, text fields kept as text until tokenized. */
START_TEST(text_and_kept_keys)
{
    const char *t = "{\"id\":\"a-1\",\"prompt\":\"Q?\",\"choices\":[\" yes\",[5]],\"label\":0,"
                    "\"source\":{\"x\":1},\"b\":2}\n"
                    "{\"prompt\":[1],\"target\":[2],\"id\":7}\n"
                    "{\"prompt\":[3],\"target\":\"caf\\u00e9\"}\n";
    lora_dataset *ds = parse_ok(t, 32);
    ck_assert_uint_eq(ds->n, 3);
    ck_assert_uint_eq(ds->text_items, 2);
    ck_assert_uint_eq(ds->first_text_line, 1);
    ck_assert_int_eq(ds->tokenized, 0);
    const lora_item *a = &ds->items[0];
    ck_assert_str_eq(a->id, "\"a-1\"");
    ck_assert_str_eq(a->extra, "{\"b\":2,\"source\":{\"x\":1}}");
    ck_assert_str_eq(a->prompt_text, "Q?");
    ck_assert_ptr_null(a->prompt);
    ck_assert_str_eq(a->choice_text[0], " yes");
    ck_assert_ptr_null(a->choice_text[1]);
    ck_assert_int_eq(a->choices[1][0], 5);
    ck_assert_str_eq(ds->items[1].id, "7");
    ck_assert_ptr_null(ds->items[1].extra);
    ck_assert_str_eq(ds->items[2].target_text, "caf\xc3\xa9");
    ck_assert_ptr_null(ds->items[2].id);
    lora_dataset_free(ds);
}
END_TEST

/* A toy tokenizer: one token per byte (its value), except "ab", one
 * token 300; special tokens BOS 256 in front, EOS 257 behind, each when
 * the toy says so. */
typedef struct toy {
    int bos, eos;
} toy;

static int toy_encode(void *arg, const char *text, size_t len, int special, int32_t **ids,
                      size_t *n, lora_error *err)
{
    const toy *t = arg;
    (void)err;
    int32_t *p = malloc((len + 2) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    size_t k = 0;
    if (special && t->bos)
        p[k++] = 256;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == 'a' && i + 1 < len && text[i + 1] == 'b') {
            p[k++] = 300;
            i++;
        } else {
            p[k++] = (unsigned char)text[i];
        }
    }
    if (special && t->eos)
        p[k++] = 257;
    *ids = p;
    *n = k;
    return LORA_OK;
}

static lora_dataset *toy_tokenized(const char *text, toy *t)
{
    lora_dataset *ds = parse_ok(text, 0);
    lora_text_codec tc = {t, toy_encode, NULL, t->bos ? 256 : -1, 257};
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_dataset_tokenize(ds, &tc, &err) == LORA_OK, "%s", err.msg);
    ck_assert_int_eq(ds->tokenized, 1);
    return ds;
}

static void toy_bad(const char *text, toy *t, const char *want)
{
    lora_dataset *ds = parse_ok(text, 0);
    lora_text_codec tc = {t, toy_encode, NULL, t->bos ? 256 : -1, 257};
    lora_error err;
    lora_error_clear(&err);
    ck_assert_int_eq(lora_dataset_tokenize(ds, &tc, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, want) != NULL, "message \"%s\" lacks \"%s\"", err.msg, want);
    lora_dataset_free(ds);
}

static void ids_eq(const int32_t *got, size_t n, const int32_t *want, size_t m)
{
    ck_assert_uint_eq(n, m);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(got[i], want[i]);
}

START_TEST(tokenize_continuations)
{
    toy bos = {1, 0}, none = {0, 0}, both = {1, 1};
    /* trailing whitespace of the prompt moves to the choices */
    lora_dataset *ds = toy_tokenized("{\"prompt\":\"xy \",\"choices\":[\"z\",[9]],\"label\":0}", &bos);
    const lora_item *it = &ds->items[0];
    ids_eq(it->prompt, it->n_prompt, (int32_t[]){256, 'x', 'y'}, 3);
    ids_eq(it->choices[0], it->choice_len[0], (int32_t[]){' ', 'z'}, 2);
    ids_eq(it->choices[1], it->choice_len[1], (int32_t[]){9}, 1);
    ck_assert_uint_eq(it->choice_skip[0], 0);
    ck_assert_uint_eq(ds->max_len, 5);
    lora_dataset_free(ds);
    /* "a" | "bc": the whole is BOS q [ab] c, the prompt's own BOS q a;
     * they share 2 tokens, the prompt has 3: [ab] is context, c scored */
    ds = toy_tokenized("{\"prompt\":\"qa\",\"choices\":[\"bc\",\"x\"],\"label\":1}", &bos);
    it = &ds->items[0];
    ids_eq(it->prompt, it->n_prompt, (int32_t[]){256, 'q'}, 2);
    ids_eq(it->choices[0], it->choice_len[0], (int32_t[]){300, 'c'}, 2);
    ck_assert_uint_eq(it->choice_skip[0], 1);
    ids_eq(it->choices[1], it->choice_len[1], (int32_t[]){'a', 'x'}, 2);
    ck_assert_uint_eq(it->choice_skip[1], 1);
    lora_dataset_free(ds);
    /* a trailing EOS of the post-processor is not part of the target;
     * an ids prompt's text target is encoded alone, no special tokens */
    ds = toy_tokenized("{\"prompt\":\"x\",\"target\":\"yz\"}\n{\"prompt\":[1],\"target\":\"ab\"}", &both);
    it = &ds->items[0];
    ids_eq(it->prompt, it->n_prompt, (int32_t[]){256, 'x'}, 2);
    ids_eq(it->target, it->n_target, (int32_t[]){'y', 'z'}, 2);
    ck_assert_uint_eq(it->target_skip, 0);
    ids_eq(ds->items[1].target, ds->items[1].n_target, (int32_t[]){300}, 1);
    lora_dataset_free(ds);
    /* no BOS, and the prompt's only token merges with the choice */
    toy_bad("{\"prompt\":[1],\"target\":[2]}\n{\"prompt\":\"a\",\"choices\":[\"bc\"],\"label\":0}",
            &none, "line 2: the prompt's first token merges with its continuation");
    toy_bad("{\"prompt\":\"xa\",\"target\":\"b\"}", &none, "line 1: target adds no token after the prompt");
}
END_TEST

START_TEST(load_file)
{
    char *dir = tu_tmpdir();
    char *p = tu_path(dir, "d.jsonl");
    const char *t = "{\"prompt\":[1],\"target\":[2]}\n{\"prompt\":[1],\"target\":[40]}\n";
    tu_write(p, t, strlen(t));
    lora_dataset *ds = NULL;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_int_eq(lora_dataset_load(p, 32, &ds, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "d.jsonl:2: target[0] = 40") != NULL, "%s", err.msg);
    ck_assert_int_eq(lora_dataset_load(p, 64, &ds, &err), LORA_OK);
    ck_assert_uint_eq(ds->n, 2);
    lora_dataset_free(ds);
    char *missing = tu_path(dir, "missing.jsonl");
    ck_assert_int_ne(lora_dataset_load(missing, 32, &ds, &err), LORA_OK);
    ck_assert_ptr_null(ds);
    free(missing);
    free(p);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("dataset");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, good_items);
    tcase_add_test(tc, bad_lines);
    tcase_add_test(tc, limits);
    tcase_add_test(tc, load_file);
    tcase_add_test(tc, text_and_kept_keys);
    tcase_add_test(tc, tokenize_continuations);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

/*
 * check_dataset.c - the JSONL data-set parser (dataset.c): good items of
 * both kinds, and every kind of bad line giving LORA_EINPUT with its line
 * number and the problem.
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
    BAD("{\"prompt\":[1],\"target\":[2],\"extra\":1}", "unknown key \"extra\"");
    BAD("{\"promt\":[1],\"target\":[2]}", "unknown key \"promt\"");
    BAD("{\"target\":[2]}", "t.jsonl:1: \"prompt\" is missing");
    BAD("{\"prompt\":[],\"target\":[2]}", "prompt is empty");
    BAD("{\"prompt\":\"abc\",\"target\":[2]}", "prompt is not a list of token ids");
    BAD("{\"prompt\":[1,\"2\"],\"target\":[2]}", "prompt[1] is not an integer token id");
    BAD("{\"prompt\":[1,2.5],\"target\":[2]}", "prompt[1] is not an integer token id");
    BAD("{\"prompt\":[-1],\"target\":[2]}", "prompt[0] = -1 is outside the vocabulary (0..31)");
    BAD("{\"prompt\":[1],\"target\":[32]}", "target[0] = 32 is outside the vocabulary");
    BAD("{\"prompt\":[1],\"target\":[99999999999999]}", "outside the vocabulary");
    BAD("{\"prompt\":[1],\"target\":[]}", "target is empty");
    BAD("{\"prompt\":[1],\"target\":null}", "target is not a list");
    BAD("{\"prompt\":[1]}", "needs \"target\", or \"choices\" and \"label\"");
    BAD("{\"prompt\":[1],\"choices\":[[1]]}", "needs \"target\", or \"choices\" and \"label\"");
    BAD("{\"prompt\":[1],\"target\":[1],\"choices\":[[1]],\"label\":0}", "not both");
    BAD("{\"prompt\":[1],\"choices\":[],\"label\":0}", "\"choices\" is not a non-empty list");
    BAD("{\"prompt\":[1],\"choices\":[1,2],\"label\":0}", "choices[0] is not a list");
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
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

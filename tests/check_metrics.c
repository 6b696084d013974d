/*
 * check_metrics.c - the text metrics (metrics.c) against fixed values
 * made by independent implementations (tests/fixtures/metrics/cases.json:
 * NLTK's corpus_bleu, a Python ROUGE and exact match), against a plain
 * reference loop over the counts, and on hostile inputs.
 */
#include "testutil.h"

#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Same value to 1e-12 relative (NLTK sums the four logs with fsum). */
static int close(double a, double b)
{
    return fabs(a - b) <= 1e-12 * fmax(fabs(a), fabs(b));
}

START_TEST(against_reference)
{
    const char *top = getenv("TOP_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/metrics/cases.json", top ? top : ".");
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    ck_assert_msg(root != NULL, "%s: %s", path, je.text);
    json_t *cases = json_object_get(root, "cases");
    ck_assert_uint_ge(json_array_size(cases), 10);
    size_t i;
    json_t *c;
    lora_error err;
    lora_error_clear(&err);
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        json_t *hyps = json_object_get(c, "hyps"), *refs = json_object_get(c, "refs");
        json_t *rouge = json_object_get(c, "rouge"), *em = json_object_get(c, "exact_match");
        lora_bleu b;
        lora_bleu_init(&b);
        for (size_t k = 0; k < json_array_size(hyps); k++) {
            const char *h = json_string_value(json_array_get(hyps, k));
            const char *r = json_string_value(json_array_get(refs, k));
            ck_assert_int_eq(lora_bleu_add(&b, h, r, &err), LORA_OK);
            lora_rouge_f1 f;
            ck_assert_int_eq(lora_rouge(h, r, &f, &err), LORA_OK);
            json_t *want = json_array_get(rouge, k);
            ck_assert_msg(close(f.rouge1, json_real_value(json_array_get(want, 0))) &&
                              close(f.rouge2, json_real_value(json_array_get(want, 1))) &&
                              close(f.rougeL, json_real_value(json_array_get(want, 2))),
                          "%s[%zu]: rouge %.17g %.17g %.17g", name, k, f.rouge1, f.rouge2, f.rougeL);
            ck_assert_int_eq(lora_exact_match(h, r),
                             (int)json_integer_value(json_array_get(em, k)));
        }
        double want = json_number_value(json_object_get(c, "bleu"));
        double got = lora_bleu_score(&b);
        ck_assert_msg(close(got, want), "%s: bleu %.17g, NLTK %.17g", name, got, want);
    }
    json_decref(root);
}
END_TEST

/* The BLEU formula from the counts, written out once more. */
START_TEST(bleu_formula)
{
    lora_error err;
    lora_error_clear(&err);
    lora_bleu b;
    lora_bleu_init(&b);
    ck_assert(isnan(lora_bleu_score(&b)));  /* no items: no value, not 0 */
    ck_assert_int_eq(lora_bleu_add(&b, "a b c d e x", "a b c d e f g h", &err), LORA_OK);
    ck_assert_int_eq(lora_bleu_add(&b, "p q", "p q r", &err), LORA_OK);
    /* 1-grams 7/8, 2-grams 5/6 (4 + 1), 3-grams 3/5 (3 + 0 of 1),
     * 4-grams 2/4 (2 + 0 of 1); c = 8, r = 11 */
    ck_assert_uint_eq(b.match[0], 7);
    ck_assert_uint_eq(b.total[0], 8);
    ck_assert_uint_eq(b.match[1], 5);
    ck_assert_uint_eq(b.total[1], 6);
    ck_assert_uint_eq(b.match[2], 3);
    ck_assert_uint_eq(b.total[2], 5);
    ck_assert_uint_eq(b.match[3], 2);
    ck_assert_uint_eq(b.total[3], 4);
    double want = exp(1 - 11.0 / 8) * exp((log(7 / 8.) + log(5 / 6.) + log(3 / 5.) + log(2 / 4.)) / 4);
    ck_assert_msg(close(lora_bleu_score(&b), want), "%.17g against %.17g", lora_bleu_score(&b), want);
}
END_TEST

START_TEST(rouge_and_match_edges)
{
    lora_error err;
    lora_error_clear(&err);
    lora_rouge_f1 f;
    ck_assert_int_eq(lora_rouge("", "", &f, &err), LORA_OK);
    ck_assert(f.rouge1 == 0 && f.rouge2 == 0 && f.rougeL == 0);
    ck_assert_int_eq(lora_rouge("A b", "a B", &f, &err), LORA_OK);
    ck_assert(f.rouge1 == 1 && f.rouge2 == 1 && f.rougeL == 1);
    /* LCS 2 of 3 and 4: P 2/3, R 1/2 */
    ck_assert_int_eq(lora_rouge("a x b", "a b y z", &f, &err), LORA_OK);
    ck_assert(close(f.rougeL, 2 * (2 / 3.) * 0.5 / (2 / 3. + 0.5)));
    ck_assert_int_eq(lora_exact_match(" \tab\n", "ab"), 1);
    ck_assert_int_eq(lora_exact_match("a b", "a  b"), 0);
    ck_assert_int_eq(lora_exact_match("", "  "), 1);
}
END_TEST

START_TEST(hostile)
{
    lora_error err;
    lora_error_clear(&err);
    /* more words than the limit: refused, not quadratic for minutes */
    size_t n = 70000;
    char *s = malloc(2 * n + 1);
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < n; i++) {
        s[2 * i] = 'w';
        s[2 * i + 1] = ' ';
    }
    s[2 * n] = 0;
    lora_rouge_f1 f;
    ck_assert_int_eq(lora_rouge(s, "w", &f, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "more than the limit") != NULL, "%s", err.msg);
    lora_bleu b;
    lora_bleu_init(&b);
    ck_assert_int_eq(lora_bleu_add(&b, "w", s, &err), LORA_EINPUT);
    ck_assert_uint_eq(b.items, 0);
    free(s);
    /* bytes that are not UTF-8 are words like any other */
    ck_assert_int_eq(lora_rouge("\xff\xfe \x80", "\xff\xfe", &f, &err), LORA_OK);
    ck_assert(close(f.rouge1, 2 * 0.5 / 1.5));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, against_reference);
    tcase_add_test(tc, bleu_formula);
    tcase_add_test(tc, rouge_and_match_edges);
    tcase_add_test(tc, hostile);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

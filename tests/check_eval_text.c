/*
 * check_eval_text.c - a text data set (tests/fixtures/text-eval/data.jsonl:
 * multiple choice and generation, text and token ids, a trailing space,
 * a token straddling the prompt boundary, non-ASCII text) on the real
 * tiny GPT-2 ($FIXTURES/real/base-tiny-gpt2-e16) through the GPT-2
 * tokenizer, against reference.json made by an independent PyTorch
 * forward with its own Python BPE (make-reference.py): every choice's
 * summed log-probability, every target's NLL, the greedy generation;
 * and text.txt's perplexity by the Hugging Face sliding-window recipe
 * for several context / stride pairs; with a LoRA adapter (adapter/,
 * PEFT layout) unmerged and merged, the choices' log-probabilities and
 * the perplexity against the same PyTorch model with PEFT's LoRA.
 */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* F32 logits agree with PyTorch's to 1e-4 relative (DESIGN.md); summed
 * log-probabilities of a few tokens then agree to about 1e-5. */
static int close_lp(double a, double b)
{
    return fabs(a - b) <= 1e-4 * (1 + fabs(b));
}

static int enc(void *arg, const char *text, size_t len, int special, int32_t **ids, size_t *n,
               lora_error *err)
{
    return lora_tokenizer_encode(arg, text, len, special, ids, n, err);
}

static int dec(void *arg, const int32_t *ids, size_t n, int skip, char **text, lora_error *err)
{
    return lora_tokenizer_decode(arg, ids, n, skip, text, err);
}

START_TEST(against_torch)
{
    char *mdir = tu_fixture("real/base-tiny-gpt2-e16");
    char *tdir = tu_fixture("tokenizers/gpt2");
    if (!mdir || !tdir) {
        free(mdir);
        free(tdir);
        return;
    }
    const char *top = getenv("TOP_SRCDIR");
    char data[4096], refp[4096];
    snprintf(data, sizeof data, "%s/tests/fixtures/text-eval/data.jsonl", top ? top : ".");
    snprintf(refp, sizeof refp, "%s/tests/fixtures/text-eval/reference.json", top ? top : ".");
    lora_error err;
    lora_error_clear(&err);
    lora_model *m = NULL;
    lora_tokenizer *tok = NULL;
    lora_dataset *ds = NULL;
    ck_assert_msg(lora_model_open(mdir, &m, &err) == LORA_OK, "%s", err.msg);
    ck_assert_msg(lora_tokenizer_open(tdir, &tok, &err) == LORA_OK, "%s", err.msg);
    ck_assert_msg(lora_dataset_load(data, 50257, &ds, &err) == LORA_OK, "%s", err.msg);
    lora_text_codec tc = {tok, enc, dec, lora_tokenizer_bos(tok), lora_tokenizer_eos(tok)};
    ck_assert_msg(lora_dataset_tokenize(ds, &tc, &err) == LORA_OK, "%s", err.msg);
    lora_eval_opts eo = {.mode = LORA_MODE_BASE, .compare_mode = -1, .max_new_tokens = 32,
                         .codec = &tc, .keep_predictions = 1};
    lora_eval_result r;
    ck_assert_msg(lora_eval_run(m, ds, &eo, &r, &err) == LORA_OK, "%s", err.msg);

    json_error_t je;
    json_t *ref = json_load_file(refp, 0, &je);
    ck_assert_msg(ref != NULL, "%s: %s", refp, je.text);
    json_t *items = json_object_get(ref, "items");
    ck_assert_uint_eq(json_array_size(items), r.items);
    ck_assert_uint_eq(r.items, 12);
    size_t nchoice = 0, ngen = 0;
    for (size_t i = 0; i < r.items; i++) {
        json_t *want = json_array_get(items, i);
        const lora_prediction *p = &r.preds[i];
        const lora_item *it = &ds->items[i];
        char *id = json_dumps(json_object_get(want, "id"), JSON_ENCODE_ANY | JSON_COMPACT);
        ck_assert_str_eq(it->id, id);  /* "id" kept */
        json_t *lp = json_object_get(want, "logprobs");
        if (lp) {
            nchoice++;
            ck_assert_uint_eq(json_array_size(lp), it->n_choices);
            for (size_t c = 0; c < it->n_choices; c++) {
                double w = json_real_value(json_array_get(lp, c));
                ck_assert_msg(close_lp(p->logprobs[c], w), "%s choice %zu: %.10f, torch %.10f", id,
                              c, p->logprobs[c], w);
            }
            ck_assert_uint_eq(p->predicted,
                              (size_t)json_integer_value(json_object_get(want, "predicted")));
        } else {
            ngen++;
            double w = json_real_value(json_object_get(want, "nll"));
            ck_assert_msg(close_lp(p->nll, w), "%s: nll %.10f, torch %.10f", id, p->nll, w);
            ck_assert_uint_eq(p->nll_tokens,
                              (uint64_t)json_integer_value(json_object_get(want, "nll_tokens")));
            json_t *ids = json_object_get(want, "ids");
            ck_assert_msg(json_array_size(ids) == p->n_ids, "%s: %zu ids generated, torch %zu", id,
                          p->n_ids, json_array_size(ids));
            for (size_t k = 0; k < p->n_ids; k++)
                ck_assert_int_eq(p->ids[k], (int32_t)json_integer_value(json_array_get(ids, k)));
            ck_assert_str_eq(p->text, json_string_value(json_object_get(want, "text")));
        }
        free(id);
    }
    ck_assert_uint_eq(nchoice, 7);
    ck_assert_uint_eq(ngen, 5);
    /* the straddling choice: the prompt is 4 tokens (" tod" is two),
     * prompt + choice 5 (" today" is one): the encodings share "The
     * weather", and by lm-evaluation-harness's count the first 4 tokens
     * of the whole are context (" today is" fed, not scored), the 5th
     * (" sunny") is scored */
    ck_assert_uint_eq(ds->items[3].n_prompt, 2);
    ck_assert_uint_eq(ds->items[3].choice_skip[0], 2);
    ck_assert_uint_eq(ds->items[3].choice_len[0], 3);
    json_decref(ref);
    lora_eval_result_free(&r);
    lora_dataset_free(ds);
    lora_tokenizer_free(tok);
    lora_model_free(m);
    free(mdir);
    free(tdir);
}
END_TEST

START_TEST(perplexity_against_torch)
{
    char *mdir = tu_fixture("real/base-tiny-gpt2-e16");
    char *tdir = tu_fixture("tokenizers/gpt2");
    if (!mdir || !tdir) {
        free(mdir);
        free(tdir);
        return;
    }
    const char *top = getenv("TOP_SRCDIR");
    char txt[4096], refp[4096];
    snprintf(txt, sizeof txt, "%s/tests/fixtures/text-eval/text.txt", top ? top : ".");
    snprintf(refp, sizeof refp, "%s/tests/fixtures/text-eval/reference.json", top ? top : ".");
    lora_error err;
    lora_error_clear(&err);
    lora_model *m = NULL;
    lora_tokenizer *tok = NULL;
    ck_assert_msg(lora_model_open(mdir, &m, &err) == LORA_OK, "%s", err.msg);
    ck_assert_msg(lora_tokenizer_open(tdir, &tok, &err) == LORA_OK, "%s", err.msg);
    size_t len;
    char *text = tu_read(txt, &len);
    int32_t *ids = NULL;
    size_t n = 0;
    ck_assert_msg(lora_tokenizer_encode(tok, text, len, 1, &ids, &n, &err) == LORA_OK, "%s", err.msg);
    json_error_t je;
    json_t *ref = json_load_file(refp, 0, &je);
    ck_assert_msg(ref != NULL, "%s: %s", refp, je.text);
    ck_assert_uint_eq(n, (size_t)json_integer_value(json_object_get(ref, "text_tokens")));
    json_t *cases = json_object_get(ref, "perplexity"), *c;
    size_t i;
    ck_assert_uint_ge(json_array_size(cases), 4);
    json_array_foreach(cases, i, c) {
        size_t ctx = (size_t)json_integer_value(json_object_get(c, "context"));
        size_t st = (size_t)json_integer_value(json_object_get(c, "stride"));
        lora_ppl_result r;
        ck_assert_msg(lora_eval_perplexity(m, LORA_MODE_BASE, ids, n, ctx, st, &r, &err) == LORA_OK,
                      "%s", err.msg);
        ck_assert_uint_eq(r.tokens, (uint64_t)json_integer_value(json_object_get(c, "tokens")));
        double w = json_real_value(json_object_get(c, "nll"));
        ck_assert_msg(fabs(r.mean_nll - w) <= 1e-5 * w, "context %zu stride %zu: %.10f, torch %.10f",
                      ctx, st, r.mean_nll, w);
        ck_assert(fabs(r.perplexity - exp(w)) <= 1e-4 * exp(w));
    }
    /* bad windows and too little text are refused */
    lora_ppl_result r;
    ck_assert_int_eq(lora_eval_perplexity(m, LORA_MODE_BASE, ids, n, 64, 65, &r, &err), LORA_EUSAGE);
    ck_assert_int_eq(lora_eval_perplexity(m, LORA_MODE_BASE, ids, n, 257, 1, &r, &err), LORA_EUSAGE);
    ck_assert_int_eq(lora_eval_perplexity(m, LORA_MODE_BASE, ids, 1, 64, 16, &r, &err), LORA_EINPUT);
    int32_t bad[2] = {1, 50257};
    ck_assert_int_eq(lora_eval_perplexity(m, LORA_MODE_BASE, bad, 2, 64, 16, &r, &err), LORA_EINPUT);
    json_decref(ref);
    free(ids);
    free(text);
    lora_tokenizer_free(tok);
    lora_model_free(m);
    free(mdir);
    free(tdir);
}
END_TEST

START_TEST(adapted_against_torch)
{
    char *mdir = tu_fixture("real/base-tiny-gpt2-e16");
    char *tdir = tu_fixture("tokenizers/gpt2");
    if (!mdir || !tdir) {
        free(mdir);
        free(tdir);
        return;
    }
    const char *top = getenv("TOP_SRCDIR");
    char data[4096], refp[4096], adp[4096], txt[4096];
    snprintf(data, sizeof data, "%s/tests/fixtures/text-eval/data.jsonl", top ? top : ".");
    snprintf(refp, sizeof refp, "%s/tests/fixtures/text-eval/reference.json", top ? top : ".");
    snprintf(adp, sizeof adp, "%s/tests/fixtures/text-eval/adapter", top ? top : ".");
    snprintf(txt, sizeof txt, "%s/tests/fixtures/text-eval/text.txt", top ? top : ".");
    json_error_t je;
    json_t *ref = json_load_file(refp, 0, &je);
    ck_assert_msg(ref != NULL, "%s: %s", refp, je.text);
    json_t *want = json_object_get(ref, "adapted");
    lora_error err;
    lora_error_clear(&err);
    lora_tokenizer *tok = NULL;
    ck_assert_msg(lora_tokenizer_open(tdir, &tok, &err) == LORA_OK, "%s", err.msg);
    lora_text_codec tc = {tok, enc, dec, lora_tokenizer_bos(tok), lora_tokenizer_eos(tok)};
    for (int merged = 0; merged < 2; merged++) {
        lora_model *m = NULL;
        lora_adapter *ad = NULL;
        lora_dataset *ds = NULL;
        ck_assert_msg(lora_model_open(mdir, &m, &err) == LORA_OK, "%s", err.msg);
        lora_source_opts so = {0};
        ck_assert_msg(lora_adapter_load(adp, &so, &ad, &err) == LORA_OK, "%s", err.msg);
        ck_assert_msg(lora_model_attach(m, ad, merged, &err) == LORA_OK, "%s", err.msg);
        int mode = merged ? LORA_MODE_MERGED : LORA_MODE_UNMERGED;
        ck_assert_msg(lora_dataset_load(data, 50257, &ds, &err) == LORA_OK, "%s", err.msg);
        ck_assert_msg(lora_dataset_tokenize(ds, &tc, &err) == LORA_OK, "%s", err.msg);
        lora_eval_opts eo = {.mode = mode, .compare_mode = -1, .codec = &tc, .keep_predictions = 1};
        lora_eval_result r;
        ck_assert_msg(lora_eval_run(m, ds, &eo, &r, &err) == LORA_OK, "%s", err.msg);
        size_t k = 0;
        for (size_t i = 0; i < r.items; i++) {
            if (ds->items[i].kind != LORA_ITEM_CHOICE)
                continue;
            json_t *lp = json_array_get(json_object_get(want, "logprobs"), k++);
            for (size_t c = 0; c < ds->items[i].n_choices; c++) {
                double w = json_real_value(json_array_get(lp, c));
                ck_assert_msg(close_lp(r.preds[i].logprobs[c], w), "%s item %zu choice %zu: %.10f, torch %.10f",
                              merged ? "merged" : "unmerged", i, c, r.preds[i].logprobs[c], w);
            }
        }
        ck_assert_uint_eq(k, 7);
        size_t len, n = 0;
        char *text = tu_read(txt, &len);
        int32_t *ids = NULL;
        ck_assert_int_eq(lora_tokenizer_encode(tok, text, len, 1, &ids, &n, &err), LORA_OK);
        lora_ppl_result p;
        ck_assert_msg(lora_eval_perplexity(m, mode, ids, n, 64, 16, &p, &err) == LORA_OK, "%s", err.msg);
        double w = json_real_value(json_object_get(json_object_get(want, "perplexity"), "nll"));
        ck_assert_msg(fabs(p.mean_nll - w) <= 1e-5 * w, "%.10f, torch %.10f", p.mean_nll, w);
        free(ids);
        free(text);
        lora_eval_result_free(&r);
        lora_dataset_free(ds);
        lora_model_free(m);
        lora_adapter_free(ad);
    }
    lora_tokenizer_free(tok);
    json_decref(ref);
    free(mdir);
    free(tdir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("eval_text");
    TCase *tc = tcase_create("eval_text");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, against_torch);
    tcase_add_test(tc, perplexity_against_torch);
    tcase_add_test(tc, adapted_against_torch);
    suite_add_tcase(s, tc);
    return tu_run(s, 1);
}

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

/* What every test here opens: the real tiny GPT-2, its tokenizer, the
 * text-eval files and reference.json. */
typedef struct fix {
    char *mdir, *tdir;
    char data[4096], refp[4096], adp[4096], txt[4096];
    json_t *ref;
    lora_tokenizer *tok;
    lora_text_codec tc;
} fix;

/* 0 when the shared fixtures are absent (the test then passes nothing
 * and tu_fixture has said why), else 1 with everything open. */
static int fix_open(fix *f)
{
    memset(f, 0, sizeof *f);
    f->mdir = tu_fixture("real/base-tiny-gpt2-e16");
    f->tdir = tu_fixture("tokenizers/gpt2");
    if (!f->mdir || !f->tdir) {
        free(f->mdir);
        free(f->tdir);
        return 0;
    }
    const char *top = getenv("TOP_SRCDIR");
    top = top ? top : ".";
    snprintf(f->data, sizeof f->data, "%s/tests/fixtures/text-eval/data.jsonl", top);
    snprintf(f->refp, sizeof f->refp, "%s/tests/fixtures/text-eval/reference.json", top);
    snprintf(f->adp, sizeof f->adp, "%s/tests/fixtures/text-eval/adapter", top);
    snprintf(f->txt, sizeof f->txt, "%s/tests/fixtures/text-eval/text.txt", top);
    json_error_t je;
    f->ref = json_load_file(f->refp, 0, &je);
    ck_assert_msg(f->ref != NULL, "%s: %s", f->refp, je.text);
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_tokenizer_open(f->tdir, &f->tok, &err) == LORA_OK, "%s", err.msg);
    f->tc = (lora_text_codec){f->tok, enc, dec, lora_tokenizer_bos(f->tok),
                              lora_tokenizer_eos(f->tok)};
    return 1;
}

static void fix_close(fix *f)
{
    json_decref(f->ref);
    lora_tokenizer_free(f->tok);
    free(f->mdir);
    free(f->tdir);
}

static lora_model *open_model(const fix *f)
{
    lora_error err;
    lora_error_clear(&err);
    lora_model *m = NULL;
    ck_assert_msg(lora_model_open(f->mdir, &m, &err) == LORA_OK, "%s", err.msg);
    return m;
}

/* data.jsonl, tokenized with the GPT-2 tokenizer. */
static lora_dataset *open_data(fix *f)
{
    lora_error err;
    lora_error_clear(&err);
    lora_dataset *ds = NULL;
    ck_assert_msg(lora_dataset_load(f->data, 50257, &ds, &err) == LORA_OK, "%s", err.msg);
    ck_assert_msg(lora_dataset_tokenize(ds, &f->tc, &err) == LORA_OK, "%s", err.msg);
    return ds;
}

/* text.txt's token ids (malloc'd). */
static int32_t *text_ids(const fix *f, size_t *n)
{
    lora_error err;
    lora_error_clear(&err);
    size_t len;
    char *text = tu_read(f->txt, &len);
    int32_t *ids = NULL;
    *n = 0;
    ck_assert_msg(lora_tokenizer_encode(f->tok, text, len, 1, &ids, n, &err) == LORA_OK, "%s",
                  err.msg);
    free(text);
    return ids;
}

START_TEST(against_torch)
{
    fix f;
    if (!fix_open(&f))
        return;
    lora_error err;
    lora_error_clear(&err);
    lora_model *m = open_model(&f);
    lora_dataset *ds = open_data(&f);
    lora_eval_opts eo = {.mode = LORA_MODE_BASE, .compare_mode = -1, .max_new_tokens = 32,
                         .codec = &f.tc, .keep_predictions = 1};
    lora_eval_result r;
    ck_assert_msg(lora_eval_run(m, ds, &eo, &r, &err) == LORA_OK, "%s", err.msg);

    json_t *items = json_object_get(f.ref, "items");
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
    lora_eval_result_free(&r);
    lora_dataset_free(ds);
    lora_model_free(m);
    fix_close(&f);
}
END_TEST

START_TEST(perplexity_against_torch)
{
    fix f;
    if (!fix_open(&f))
        return;
    lora_error err;
    lora_error_clear(&err);
    lora_model *m = open_model(&f);
    size_t n;
    int32_t *ids = text_ids(&f, &n);
    ck_assert_uint_eq(n, (size_t)json_integer_value(json_object_get(f.ref, "text_tokens")));
    json_t *cases = json_object_get(f.ref, "perplexity"), *c;
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
    free(ids);
    lora_model_free(m);
    fix_close(&f);
}
END_TEST

START_TEST(adapted_against_torch)
{
    fix f;
    if (!fix_open(&f))
        return;
    json_t *want = json_object_get(f.ref, "adapted");
    lora_error err;
    lora_error_clear(&err);
    for (int merged = 0; merged < 2; merged++) {
        lora_model *m = open_model(&f);
        lora_adapter *ad = NULL;
        lora_source_opts so = {0};
        ck_assert_msg(lora_adapter_load(f.adp, &so, &ad, &err) == LORA_OK, "%s", err.msg);
        ck_assert_msg(lora_model_attach(m, ad, merged, &err) == LORA_OK, "%s", err.msg);
        int mode = merged ? LORA_MODE_MERGED : LORA_MODE_UNMERGED;
        lora_dataset *ds = open_data(&f);
        lora_eval_opts eo = {.mode = mode, .compare_mode = -1, .codec = &f.tc,
                             .keep_predictions = 1};
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
        size_t n;
        int32_t *ids = text_ids(&f, &n);
        lora_ppl_result p;
        ck_assert_msg(lora_eval_perplexity(m, mode, ids, n, 64, 16, &p, &err) == LORA_OK, "%s", err.msg);
        double w = json_real_value(json_object_get(json_object_get(want, "perplexity"), "nll"));
        ck_assert_msg(fabs(p.mean_nll - w) <= 1e-5 * w, "%.10f, torch %.10f", p.mean_nll, w);
        free(ids);
        lora_eval_result_free(&r);
        lora_dataset_free(ds);
        lora_model_free(m);
        lora_adapter_free(ad);
    }
    fix_close(&f);
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

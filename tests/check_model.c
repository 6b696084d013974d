/*
 * check_model.c - models and evaluation (model.c, eval.c) against the
 * committed fixtures of tests/fixtures/models (made by make-models.py in
 * PyTorch):
 *  - logits equal PyTorch's reference logits within 1e-4 of the largest
 *    |logit| of the sequence, GPT-2 and LLaMA (grouped KV heads), LLaMA
 *    with llama3 RoPE scaling and tied embeddings, Qwen2 (q/k/v biases,
 *    linear RoPE scaling), Mistral; with an adapter unmerged and merged;
 *  - BF16 copies of the weights: within 1e-4 of PyTorch on the same
 *    BF16-rounded weights, and within BF16_BOUND of the F32 model;
 *  - the KV cache: token-by-token logits equal the one-pass logits;
 *  - task accuracy: the bases are near chance, the adapters high, and
 *    our accuracy equals PyTorch's for every adapter; merged and
 *    unmerged agree on every prediction; recovery of W0 is exact;
 *  - hostile configs and model folders, out-of-range tokens.
 */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Relative bound of our F32 logits against PyTorch's (DESIGN.md). */
#define REF_BOUND 1e-4
/* BF16 weights against the F32 model: the weights move by up to 2^-9
 * relative; the logits of the fixture models move by 0.73 % (GPT-2) and
 * 0.34 % (LLaMA) of their largest magnitude.  2 % leaves room and still
 * catches a wrong decode, which moves them by the whole magnitude. */
#define BF16_BOUND 2e-2

static char *fx(const char *rel)
{
    const char *top = getenv("TOP_SRCDIR");
    char *p = malloc(strlen(top ? top : ".") + strlen(rel) + 32);
    ck_assert_ptr_nonnull(p);
    sprintf(p, "%s/tests/fixtures/models/%s", top ? top : ".", rel);
    return p;
}

static lora_model *open_model(const char *rel)
{
    char *p = fx(rel);
    lora_model *m = NULL;
    lora_error err;
    lora_error_clear(&err);
    int rc = lora_model_open(p, &m, &err);
    ck_assert_msg(rc == LORA_OK, "open %s: %s", p, err.msg);
    free(p);
    return m;
}

static lora_adapter *open_adapter(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "adapters/%s", name);
    char *p = fx(rel);
    lora_adapter *ad = NULL;
    lora_error err;
    lora_error_clear(&err);
    int rc = lora_adapter_open(p, &ad, &err);
    ck_assert_msg(rc == LORA_OK, "open %s: %s", p, err.msg);
    free(p);
    return ad;
}

static json_t *inputs_json(void)
{
    char *p = fx("reference/inputs.json");
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", p, je.text);
    free(p);
    return j;
}

/* Largest |ours - ref| over the largest |ref| of every reference
 * sequence, one forward pass per sequence. */
static double compare_ref(lora_model *m, int mode, const char *ref_file, const char *prefix)
{
    json_t *j = inputs_json(), *inputs = json_object_get(j, "inputs");
    char *p = fx(ref_file);
    lora_st *st = NULL;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_st_open(p, &st, &err) == LORA_OK, "%s: %s", p, err.msg);
    uint64_t V = lora_model_cfg(m)->vocab;
    double worst = 0;
    for (size_t i = 0; i < json_array_size(inputs); i++) {
        json_t *seq = json_array_get(inputs, i);
        size_t n = json_array_size(seq);
        int32_t *tok = malloc(n * sizeof *tok);
        float *lg = malloc(n * V * sizeof *lg);
        float *ref = malloc(n * V * sizeof *ref);
        for (size_t k = 0; k < n; k++)
            tok[k] = (int32_t)json_integer_value(json_array_get(seq, k));
        char name[64];
        snprintf(name, sizeof name, "%s.%zu", prefix, i);
        const lora_tensor *t = lora_st_find(st, name);
        ck_assert_msg(t != NULL, "%s lacks %s", p, name);
        ck_assert_uint_eq(t->numel, n * V);
        ck_assert_int_eq(lora_decode_f32(t->dtype, t->data, ref, n * V), LORA_OK);
        lora_run *r = NULL;
        ck_assert_msg(lora_run_new(m, mode, n, &r, &err) == LORA_OK, "%s", err.msg);
        ck_assert_msg(lora_run_forward(r, tok, n, lg, n, &err) == LORA_OK, "%s", err.msg);
        double d = 0, mx = 0;
        for (size_t k = 0; k < n * V; k++) {
            d = fmax(d, fabs((double)lg[k] - ref[k]));
            mx = fmax(mx, fabs((double)ref[k]));
            ck_assert(!isnan(lg[k]));
        }
        worst = fmax(worst, d / fmax(mx, 1.0));
        lora_run_free(r);
        free(tok);
        free(lg);
        free(ref);
    }
    lora_st_close(st);
    free(p);
    json_decref(j);
    return worst;
}

static const char *const REF_MODELS[] = {"gpt2-base", "llama-base", "llama3-random",
                                         "qwen2-random", "mistral-random"};

START_TEST(reference_logits)
{
    for (size_t i = 0; i < sizeof REF_MODELS / sizeof *REF_MODELS; i++) {
        lora_model *m = open_model(REF_MODELS[i]);
        char ref[128];
        snprintf(ref, sizeof ref, "reference/%s.safetensors", REF_MODELS[i]);
        double w = compare_ref(m, LORA_MODE_BASE, ref, "logits");
        printf("%-16s base: max |Δlogit| / max |logit| = %.3g\n", REF_MODELS[i], w);
        ck_assert_msg(w <= REF_BOUND, "%s: %g > %g", REF_MODELS[i], w, REF_BOUND);
        lora_model_free(m);
    }
}
END_TEST

START_TEST(reference_logits_adapter)
{
    json_t *j = inputs_json(), *models = json_object_get(j, "models");
    const char *bases[] = {"gpt2-base", "llama-base"};
    for (int b = 0; b < 2; b++) {
        const char *an = json_string_value(
            json_object_get(json_object_get(models, bases[b]), "adapter"));
        ck_assert_ptr_nonnull(an);
        lora_model *m = open_model(bases[b]);
        lora_adapter *ad = open_adapter(an);
        lora_error err;
        lora_error_clear(&err);
        ck_assert_msg(lora_model_attach(m, ad, 1, &err) == LORA_OK, "%s", err.msg);
        ck_assert_uint_gt(lora_model_adapted(m), 0);
        char ref[128];
        snprintf(ref, sizeof ref, "reference/%s.safetensors", bases[b]);
        double wu = compare_ref(m, LORA_MODE_UNMERGED, ref, "adapter_logits");
        double wm = compare_ref(m, LORA_MODE_MERGED, ref, "adapter_logits");
        /* the base logits are not the adapter's: the comparison can fail */
        double wb = compare_ref(m, LORA_MODE_BASE, ref, "adapter_logits");
        printf("%-16s + %s: unmerged %.3g, merged %.3g (base against them: %.3g)\n", bases[b], an,
               wu, wm, wb);
        ck_assert_msg(wu <= REF_BOUND, "unmerged %g", wu);
        ck_assert_msg(wm <= REF_BOUND, "merged %g", wm);
        ck_assert_msg(wb > 100 * REF_BOUND, "base logits too close to the adapter's: %g", wb);
        lora_model_free(m);
        lora_adapter_free(ad);
    }
    json_decref(j);
}
END_TEST

START_TEST(reference_logits_bf16)
{
    const char *bases[] = {"gpt2-base", "llama-base"};
    for (int b = 0; b < 2; b++) {
        char name[64], ref[128];
        snprintf(name, sizeof name, "%s-bf16", bases[b]);
        lora_model *m = open_model(name);
        snprintf(ref, sizeof ref, "reference/%s-bf16.safetensors", bases[b]);
        double same = compare_ref(m, LORA_MODE_BASE, ref, "logits");
        snprintf(ref, sizeof ref, "reference/%s.safetensors", bases[b]);
        double f32 = compare_ref(m, LORA_MODE_BASE, ref, "logits");
        printf("%-16s: against PyTorch on BF16 weights %.3g, against the F32 model %.3g\n", name,
               same, f32);
        ck_assert_msg(same <= REF_BOUND, "%s: %g", name, same);
        ck_assert_msg(f32 <= BF16_BOUND, "%s: %g", name, f32);
        lora_model_free(m);
    }
}
END_TEST

/* The same model split into two shards behind an index gives the same
 * logits bit for bit (the loader reads tensors by name across shards). */
START_TEST(sharded)
{
    const char *names[] = {"llama-base", "gpt2-base-bf16"};
    for (int k = 0; k < 2; k++) {
        char *src = fx(names[k]);
        char *dir = tu_tmpdir();
        char *cfg = tu_path(src, "config.json"), *cfgd = tu_path(dir, "config.json");
        size_t len;
        char *text = tu_read(cfg, &len);
        tu_write(cfgd, text, len);
        free(text);
        lora_ckpt *ck = NULL;
        lora_error err;
        lora_error_clear(&err);
        ck_assert_msg(lora_ckpt_open(src, &ck, &err) == LORA_OK, "%s", err.msg);
        const char *shard[2] = {"model-00001-of-00002.safetensors",
                                "model-00002-of-00002.safetensors"};
        json_t *wm = json_object();
        for (int sh = 0; sh < 2; sh++) {
            char *path = tu_path(dir, shard[sh]);
            lora_stw *w = NULL;
            ck_assert_int_eq(lora_stw_new(path, &w, &err), LORA_OK);
            size_t n = lora_ckpt_count(ck);
            for (size_t i = sh; i < n; i += 2) {
                const lora_tensor *t = lora_ckpt_tensor(ck, i, NULL);
                ck_assert_int_eq(lora_stw_declare(w, t->name, t->dtype, t->ndim, t->shape, &err),
                                 LORA_OK);
                json_object_set_new(wm, t->name, json_string(shard[sh]));
            }
            ck_assert_int_eq(lora_stw_start(w, &err), LORA_OK);
            for (size_t i = sh; i < n; i += 2) {
                const lora_tensor *t = lora_ckpt_tensor(ck, i, NULL);
                ck_assert_int_eq(lora_stw_write(w, t->name, 0, t->data, (size_t)t->nbytes, &err),
                                 LORA_OK);
            }
            ck_assert_msg(lora_stw_commit(w, &err) == LORA_OK, "%s", err.msg);
            free(path);
        }
        json_t *ix = json_object();
        json_object_set_new(ix, "metadata", json_object());
        json_object_set_new(ix, "weight_map", wm);
        char *ixs = json_dumps(ix, JSON_SORT_KEYS);
        char *ixp = tu_path(dir, "model.safetensors.index.json");
        tu_write(ixp, ixs, strlen(ixs));
        free(ixs);
        json_decref(ix);
        lora_model *a = NULL, *b = NULL;
        ck_assert_msg(lora_model_open(src, &a, &err) == LORA_OK, "%s", err.msg);
        ck_assert_msg(lora_model_open(dir, &b, &err) == LORA_OK, "%s", err.msg);
        ck_assert(lora_ckpt_is_sharded(lora_model_ckpt(b)));
        ck_assert_uint_eq(lora_model_params(a), lora_model_params(b));
        int32_t tok[] = {0, 3, 9, 14, 20, 11, 1, 9};
        uint64_t V = lora_model_cfg(a)->vocab;
        float *la = malloc(8 * V * sizeof *la), *lb = malloc(8 * V * sizeof *lb);
        lora_run *ra = NULL, *rb = NULL;
        ck_assert_int_eq(lora_run_new(a, LORA_MODE_BASE, 8, &ra, &err), LORA_OK);
        ck_assert_int_eq(lora_run_new(b, LORA_MODE_BASE, 8, &rb, &err), LORA_OK);
        ck_assert_int_eq(lora_run_forward(ra, tok, 8, la, 8, &err), LORA_OK);
        ck_assert_int_eq(lora_run_forward(rb, tok, 8, lb, 8, &err), LORA_OK);
        ck_assert(memcmp(la, lb, 8 * V * sizeof *la) == 0);
        lora_run_free(ra);
        lora_run_free(rb);
        free(la);
        free(lb);
        lora_model_free(a);
        lora_model_free(b);
        lora_ckpt_close(ck);
        free(ixp);
        free(cfg);
        free(cfgd);
        free(src);
        tu_rmtree(dir);
        free(dir);
    }
}
END_TEST

/* Token by token through the KV cache gives the one-pass logits. */
START_TEST(kv_cache)
{
    const char *names[] = {"gpt2-base", "llama-base", "qwen2-random"};
    int32_t tok[] = {0, 30, 3, 17, 25, 1, 9, 9, 31, 0, 2, 18};
    size_t n = sizeof tok / sizeof *tok;
    for (int k = 0; k < 3; k++) {
        lora_model *m = open_model(names[k]);
        uint64_t V = lora_model_cfg(m)->vocab;
        float *all = malloc(n * V * sizeof *all), *one = malloc(V * sizeof *one);
        lora_run *r = NULL;
        lora_error err;
        lora_error_clear(&err);
        ck_assert_int_eq(lora_run_new(m, LORA_MODE_BASE, n, &r, &err), LORA_OK);
        ck_assert_int_eq(lora_run_forward(r, tok, n, all, n, &err), LORA_OK);
        ck_assert_uint_eq(lora_run_pos(r), n);
        /* full cache: one more token does not fit */
        ck_assert_int_eq(lora_run_forward(r, tok, 1, one, 1, &err), LORA_EINPUT);
        lora_run_truncate(r, 0);
        double d = 0, mx = 0;
        for (size_t i = 0; i < n; i++) {
            ck_assert_int_eq(lora_run_forward(r, tok + i, 1, one, 1, &err), LORA_OK);
            for (uint64_t v = 0; v < V; v++) {
                d = fmax(d, fabs((double)one[v] - all[i * V + v]));
                mx = fmax(mx, fabs((double)all[i * V + v]));
            }
        }
        ck_assert_msg(d <= 1e-5 * fmax(mx, 1.0), "%s: %g", names[k], d);
        /* and again from a truncated cache, 5 tokens then the rest at once */
        lora_run_truncate(r, 5);
        ck_assert_int_eq(lora_run_forward(r, tok + 5, n - 5, all, 1, &err), LORA_OK);
        for (uint64_t v = 0; v < V; v++)
            ck_assert(fabs((double)all[v] - one[v]) <= 1e-5 * fmax(mx, 1.0));
        /* a token outside the vocabulary */
        int32_t bad = (int32_t)V;
        lora_run_truncate(r, 0);
        ck_assert_int_eq(lora_run_forward(r, &bad, 1, one, 1, &err), LORA_EINPUT);
        ck_assert_msg(strstr(err.msg, "outside the vocabulary") != NULL, "%s", err.msg);
        bad = -1;
        ck_assert_int_eq(lora_run_forward(r, &bad, 1, one, 1, &err), LORA_EINPUT);
        lora_run_free(r);
        /* more positions than the model has */
        ck_assert_int_eq(lora_run_new(m, LORA_MODE_BASE, lora_model_cfg(m)->max_positions + 1, &r,
                                      &err), LORA_EINPUT);
        /* no adapter attached: no unmerged run */
        ck_assert_int_eq(lora_run_new(m, LORA_MODE_UNMERGED, 4, &r, &err), LORA_EUSAGE);
        free(all);
        free(one);
        lora_model_free(m);
    }
}
END_TEST

static lora_dataset *load_data(const char *task, uint64_t vocab)
{
    char rel[64];
    snprintf(rel, sizeof rel, "data/%s.jsonl", task);
    char *p = fx(rel);
    lora_dataset *ds = NULL;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_dataset_load(p, vocab, &ds, &err) == LORA_OK, "%s", err.msg);
    free(p);
    return ds;
}

static lora_eval_result run_eval(lora_model *m, const lora_dataset *ds, int mode, int cmp)
{
    lora_eval_opts o = {.mode = mode, .compare_mode = cmp, .limit = 0};
    lora_eval_result r;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_eval_run(m, ds, &o, &r, &err) == LORA_OK, "%s", err.msg);
    ck_assert_uint_eq(r.items, ds->n);
    return r;
}

/* The comparison can fail: the adapter against the bare base disagrees
 * on every reversal (the base cannot reverse). */
START_TEST(compare_detects)
{
    lora_model *m = open_model("llama-base");
    lora_adapter *ad = open_adapter("llama-reverse-qv-r4");
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_model_attach(m, ad, 0, &err) == LORA_OK, "%s", err.msg);
    lora_dataset *rev = load_data("reverse", 32);
    lora_eval_opts o = {.mode = LORA_MODE_UNMERGED, .compare_mode = LORA_MODE_BASE, .limit = 10};
    lora_eval_result r;
    ck_assert_int_eq(lora_eval_run(m, rev, &o, &r, &err), LORA_OK);
    ck_assert_uint_eq(r.items, 10);
    ck_assert_uint_ge(r.disagreements, 9);
    ck_assert_uint_ge(r.first_disagreement, 1);
    ck_assert(r.max_abs_dlogit > 1.0);
    /* ids past the vocabulary in a data set parsed without one: refused,
     * also where they are only scored (the last choice token) */
    const char *t = "{\"prompt\":[0,5,8],\"choices\":[[8],[9,40]],\"label\":0}\n";
    lora_dataset *wide = NULL;
    ck_assert_int_eq(lora_dataset_parse(t, strlen(t), "w", 0, &wide, &err), LORA_OK);
    ck_assert_int_eq(lora_eval_run(m, wide, &o, &r, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "line 1: token id 40 is outside") != NULL, "%s", err.msg);
    lora_dataset_free(wide);
    /* without merged weights there is no merged mode */
    o.compare_mode = LORA_MODE_MERGED;
    ck_assert_int_eq(lora_eval_run(m, rev, &o, &r, &err), LORA_EUSAGE);
    lora_dataset_free(rev);
    lora_model_free(m);
    lora_adapter_free(ad);
}
END_TEST

/* Every adapter of the fixtures: base near chance, adapter high, our
 * accuracy the same as PyTorch's, merged and unmerged agreeing. */
START_TEST(task_accuracy)
{
    char *p = fx("torch-accuracy.json");
    json_error_t je;
    json_t *table = json_load_file(p, 0, &je);
    ck_assert_msg(table != NULL, "%s: %s", p, je.text);
    free(p);
    const char *archs[] = {"gpt2", "llama"};
    size_t adapters = 0;
    for (int a = 0; a < 2; a++) {
        char base[32];
        snprintf(base, sizeof base, "%s-base", archs[a]);
        lora_model *m = open_model(base);
        uint64_t V = lora_model_cfg(m)->vocab;
        lora_dataset *rev = load_data("reverse", V), *cls = load_data("classify", V);
        lora_eval_result r = run_eval(m, rev, LORA_MODE_BASE, -1);
        printf("%s base: reverse %.2f", base, r.accuracy);
        ck_assert_msg(r.accuracy <= 0.05, "%s base reverses %.2f", base, r.accuracy);
        ck_assert_uint_eq(r.gen_items, rev->n);
        ck_assert(r.mean_nll > 1.0);
        r = run_eval(m, cls, LORA_MODE_BASE, -1);
        printf(", classify %.2f\n", r.accuracy);
        ck_assert_msg(r.accuracy >= 0.3 && r.accuracy <= 0.7, "%s base classifies %.2f", base,
                      r.accuracy);
        ck_assert_uint_eq(r.choice_items, cls->n);
        for (size_t i = 0; i < json_array_size(table); i++) {
            json_t *row = json_array_get(table, i);
            const char *an = json_string_value(json_object_get(row, "adapter"));
            if (!an || strcmp(json_string_value(json_object_get(row, "model")), base) != 0)
                continue;
            const char *task = json_string_value(json_object_get(row, "task"));
            double torch_acc = json_number_value(json_object_get(row, "accuracy"));
            lora_adapter *ad = open_adapter(an);
            lora_error err;
            lora_error_clear(&err);
            ck_assert_msg(lora_model_attach(m, ad, 1, &err) == LORA_OK, "%s: %s", an, err.msg);
            const lora_dataset *ds = strcmp(task, "reverse") == 0 ? rev : cls;
            lora_eval_result u = run_eval(m, ds, LORA_MODE_UNMERGED, LORA_MODE_MERGED);
            printf("  %-28s %.2f (PyTorch %.2f) merged/unmerged max |Δlogit| %.2g\n", an,
                   u.accuracy, torch_acc, u.max_abs_dlogit);
            ck_assert_msg(fabs(u.accuracy - torch_acc) <= 0.02, "%s: %.2f, PyTorch %.2f", an,
                          u.accuracy, torch_acc);
            ck_assert_msg(u.disagreements == 0, "%s: merged and unmerged disagree at line %zu", an,
                          u.first_disagreement);
            ck_assert(u.max_abs_dlogit < 1e-3);
            /* the adapters of rank 4 and 8 all learned their task */
            if (strstr(an, "-r4") || strstr(an, "-r8"))
                ck_assert_msg(u.accuracy >= 0.9, "%s: %.2f", an, u.accuracy);
            lora_model_detach(m);
            lora_adapter_free(ad);
            adapters++;
        }
        lora_dataset_free(rev);
        lora_dataset_free(cls);
        lora_model_free(m);
    }
    ck_assert_uint_eq(adapters, 32);
    json_decref(table);
}
END_TEST

START_TEST(recovery)
{
    const char *cases[][2] = {{"gpt2-base", "gpt2-reverse-cattn-cproj-r8"},
                              {"gpt2-base-bf16", "gpt2-classify-cattn-r2"},
                              {"llama-base", "llama-reverse-qkvo-r8"},
                              {"llama-base-bf16", "llama-classify-qkvo-r4"}};
    for (int k = 0; k < 4; k++) {
        char *p = fx(cases[k][0]);
        lora_ckpt *ck = NULL;
        lora_error err;
        lora_error_clear(&err);
        ck_assert_msg(lora_ckpt_open(p, &ck, &err) == LORA_OK, "%s", err.msg);
        lora_adapter *ad = open_adapter(cases[k][1]);
        lora_recovery *rec = NULL;
        size_t n = 0;
        ck_assert_msg(lora_eval_check_recovery(ck, ad, 2, &rec, &n, &err) == LORA_OK, "%s", err.msg);
        ck_assert_uint_eq(n, ad->n_modules);
        uint64_t fixes = 0;
        for (size_t i = 0; i < n; i++) {
            ck_assert_uint_gt(rec[i].total, 0);
            ck_assert_msg(rec[i].exact == rec[i].total, "%s: %llu/%llu", rec[i].tensor,
                          (unsigned long long)rec[i].exact, (unsigned long long)rec[i].total);
            fixes += rec[i].fixes;
        }
        /* the merge did round bits of W0 away: recovery needed the corrections */
        ck_assert_uint_gt(fixes, 0);
        lora_recovery_free(rec, n);
        lora_adapter_free(ad);
        lora_ckpt_close(ck);
        free(p);
    }
}
END_TEST

/* An adapter for the other architecture does not bind. */
START_TEST(wrong_base)
{
    lora_model *m = open_model("gpt2-base");
    lora_adapter *ad = open_adapter("llama-reverse-qv-r2");
    lora_error err;
    lora_error_clear(&err);
    ck_assert_int_eq(lora_model_attach(m, ad, 0, &err), LORA_EINPUT);
    ck_assert_uint_eq(lora_model_adapted(m), 0);
    lora_run *r = NULL;
    ck_assert_int_eq(lora_run_new(m, LORA_MODE_UNMERGED, 4, &r, &err), LORA_EUSAGE);
    lora_adapter_free(ad);
    lora_model_free(m);
}
END_TEST

static void cfg_bad(const char *json, const char *want)
{
    lora_model_config c;
    lora_error err;
    lora_error_clear(&err);
    int rc = lora_model_config_parse(json, strlen(json), &c, &err);
    ck_assert_msg(rc == LORA_EINPUT, "expected LORA_EINPUT for %s, got %d", json, rc);
    ck_assert_msg(strstr(err.msg, want) != NULL, "message \"%s\" lacks \"%s\"", err.msg, want);
}

START_TEST(config_parse)
{
    lora_model_config c;
    lora_error err;
    lora_error_clear(&err);
    const char *g = "{\"architectures\":[\"GPT2LMHeadModel\"],\"n_embd\":16,\"n_head\":2}";
    ck_assert_int_eq(lora_model_config_parse(g, strlen(g), &c, &err), LORA_OK);
    ck_assert_int_eq(c.arch, LORA_ARCH_GPT2);
    ck_assert_uint_eq(c.vocab, 50257);
    ck_assert_uint_eq(c.inner, 64);
    ck_assert_uint_eq(c.head_dim, 8);
    ck_assert_uint_eq(c.max_positions, 1024);
    ck_assert_int_eq(c.tied, 1);
    const char *q = "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"num_attention_heads\":4,"
                    "\"num_key_value_heads\":2,\"rope_scaling\":{\"type\":\"linear\",\"factor\":4},"
                    "\"sliding_window\":128,\"use_sliding_window\":true,"
                    "\"max_position_embeddings\":1024}";
    ck_assert_int_eq(lora_model_config_parse(q, strlen(q), &c, &err), LORA_OK);
    ck_assert_str_eq(c.architecture, "Qwen2ForCausalLM");
    ck_assert_int_eq(c.qkv_bias, 1);
    ck_assert_int_eq(c.o_bias, 0);
    ck_assert_uint_eq(c.kv_heads, 2);
    ck_assert_uint_eq(c.head_dim, 16);
    ck_assert_int_eq(c.rope_type, LORA_ROPE_LINEAR);
    ck_assert(c.rope_factor == 4.0);
    ck_assert_uint_eq(c.max_positions, 128);  /* the window caps what we accept */
    const char *v5 = "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_parameters\":{"
                     "\"rope_type\":\"llama3\",\"rope_theta\":500000.0,\"factor\":32.0,"
                     "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                     "\"original_max_position_embeddings\":8192}}";
    ck_assert_int_eq(lora_model_config_parse(v5, strlen(v5), &c, &err), LORA_OK);
    ck_assert_int_eq(c.rope_type, LORA_ROPE_LLAMA3);
    ck_assert(c.rope_theta == 500000.0);
    ck_assert_uint_eq(c.rope_original_max, 8192);

    cfg_bad("{\"architectures\":[\"BertForMaskedLM\"]}", "architecture BertForMaskedLM is not supported");
    cfg_bad("{\"model_type\":\"opt\"}", "model_type \"opt\" is not supported");
    cfg_bad("{}", "neither \"architectures\" nor \"model_type\"");
    cfg_bad("[1]", "not a JSON object");
    cfg_bad("{\"architectures\":", "config.json: line 1");
    cfg_bad("{\"architectures\":[]}", "\"architectures\" is not a list of names");
    cfg_bad("{\"architectures\":[1]}", "\"architectures\" is not a list of names");
    cfg_bad("{\"model_type\":\"gpt2\",\"model_type\":\"gpt2\"}", "config.json: line 1");
    cfg_bad("{\"model_type\":\"gpt2\",\"vocab_size\":\"32\"}", "\"vocab_size\" is not an integer");
    cfg_bad("{\"model_type\":\"gpt2\",\"vocab_size\":1e9}", "\"vocab_size\" is not an integer");
    cfg_bad("{\"model_type\":\"gpt2\",\"vocab_size\":0}", "\"vocab_size\" = 0 is out of range");
    cfg_bad("{\"model_type\":\"gpt2\",\"vocab_size\":-5}", "\"vocab_size\" = -5 is out of range");
    cfg_bad("{\"model_type\":\"gpt2\",\"n_positions\":1000000000000}", "\"n_positions\"");
    cfg_bad("{\"model_type\":\"gpt2\",\"n_layer\":100000}", "\"n_layer\" = 100000 is out of range");
    cfg_bad("{\"model_type\":\"gpt2\",\"n_embd\":10,\"n_head\":3}", "is not a multiple of n_head");
    cfg_bad("{\"model_type\":\"gpt2\",\"activation_function\":\"relu\"}", "activation_function \"relu\"");
    cfg_bad("{\"model_type\":\"gpt2\",\"scale_attn_weights\":false}", "scale_attn_weights");
    cfg_bad("{\"model_type\":\"gpt2\",\"layer_norm_epsilon\":\"x\"}", "\"layer_norm_epsilon\" is not a number");
    cfg_bad("{\"model_type\":\"gpt2\",\"tie_word_embeddings\":1}", "\"tie_word_embeddings\" is not true or false");
    cfg_bad("{\"model_type\":\"llama\",\"num_attention_heads\":4,\"num_key_value_heads\":3}",
            "is not a multiple of num_key_value_heads 3");
    cfg_bad("{\"model_type\":\"llama\",\"num_attention_heads\":4,\"num_key_value_heads\":8}",
            "\"num_key_value_heads\" = 8 is out of range");
    cfg_bad("{\"model_type\":\"llama\",\"hidden_size\":12,\"num_attention_heads\":4}", "head_dim 3 is odd");
    cfg_bad("{\"model_type\":\"llama\",\"hidden_size\":10,\"num_attention_heads\":4}",
            "hidden_size 10 is not a multiple");
    cfg_bad("{\"model_type\":\"llama\",\"hidden_act\":\"gelu\"}", "hidden_act \"gelu\"");
    cfg_bad("{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
            "rope_scaling type \"yarn\" is not supported");
    cfg_bad("{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"linear\"}}", "lacks \"factor\"");
    cfg_bad("{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}",
            "\"original_max_position_embeddings\" is missing");
    cfg_bad("{\"model_type\":\"llama\",\"rope_scaling\":[1]}", "\"rope_scaling\" is not an object");
    cfg_bad("{\"model_type\":\"llama\",\"rope_theta\":-1}", "\"rope_theta\"");
}
END_TEST

/* ------------------------------------------------------------------ */
/* Adapters on the embedding and the head (issue 14.6)                 */
/* ------------------------------------------------------------------ */

/* An adapter folder (config text, F32 tensors of values amp·sin(...)) in
 * a fresh temporary folder. */
static char *write_adapter(const char *cfg, const char *const *names, const uint64_t (*shapes)[2],
                           size_t n, float amp)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "adapter_config.json");
    tu_write(p, cfg, strlen(cfg));
    free(p);
    p = tu_path(d, "adapter_model.safetensors");
    lora_stw *w;
    lora_error e;
    ck_assert_int_eq(lora_stw_new(p, &w, &e), 0);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(lora_stw_declare(w, names[i], LORA_DT_F32, 2, shapes[i], &e) == 0, "%s",
                      e.msg);
    ck_assert_msg(lora_stw_start(w, &e) == 0, "%s", e.msg);
    for (size_t i = 0; i < n; i++) {
        uint64_t cnt = shapes[i][0] * shapes[i][1];
        float *v = malloc(cnt * sizeof *v);
        ck_assert_ptr_nonnull(v);
        for (uint64_t k = 0; k < cnt; k++)
            v[k] = amp * sinf(0.7f * (float)k + (float)i);
        ck_assert_msg(lora_stw_write(w, names[i], 0, v, cnt * 4, &e) == 0, "%s", e.msg);
        free(v);
    }
    ck_assert_msg(lora_stw_commit(w, &e) == 0, "%s", e.msg);
    free(p);
    return d;
}

/* An embedding update (lora_embedding_A [r, V], B [E, r]) and an untied
 * lm_head update on the LLaMA fixture: at run time and merged in memory
 * the same predictions, and the NLL equal to that of the checkpoint
 * lora-merge writes (exactly for the in-memory merge, which is the same
 * computation; to 1e-5 relative at run time). */
START_TEST(embedding_and_head)
{
    static const char *const names[] = {
        "base_model.model.model.embed_tokens.lora_embedding_A",
        "base_model.model.model.embed_tokens.lora_embedding_B",
        "base_model.model.lm_head.lora_A.weight", "base_model.model.lm_head.lora_B.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"};
    static const uint64_t shapes[][2] = {{2, 32}, {64, 2}, {2, 64}, {32, 2}, {2, 64}, {64, 2}};
    char *ad_dir = write_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,"
                                 "\"target_modules\":[\"embed_tokens\",\"lm_head\",\"q_proj\"]}",
                                 names, shapes, 6, 0.5f);
    lora_adapter *ad = NULL;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_adapter_open(ad_dir, &ad, &err) == 0, "%s", err.msg);
    lora_model *m = open_model("llama-base");
    lora_dataset *ds = load_data("reverse", 32);
    lora_eval_result base = run_eval(m, ds, LORA_MODE_BASE, 0);
    ck_assert_msg(lora_model_attach(m, ad, 1, &err) == LORA_OK, "%s", err.msg);
    ck_assert_uint_eq(lora_model_adapted(m), 3);
    lora_eval_result run = run_eval(m, ds, LORA_MODE_UNMERGED, LORA_MODE_MERGED);
    ck_assert_uint_eq(run.disagreements, 0);
    lora_eval_result mem = run_eval(m, ds, LORA_MODE_MERGED, 0);
    ck_assert_msg(fabs(run.mean_nll - base.mean_nll) > 1e-3, "the adapter changes nothing: %g %g",
                  run.mean_nll, base.mean_nll);
    lora_model_free(m);

    char *tmp = tu_tmpdir(), *out = tu_path(tmp, "merged"), *in = fx("llama-base");
    lora_merge_adapter ma = {.ad = ad, .weight = 1, .spec = ad_dir};
    lora_merge_opts o = {.nthreads = 1, .rounding = LORA_ROUND_NEAREST};
    lora_merge_result res;
    ck_assert_msg(lora_merge_run(in, NULL, 0, &ma, 1, out, &o, &res, &err) == 0, "%s", err.msg);
    ck_assert_msg(lora_model_open(out, &m, &err) == 0, "%s", err.msg);
    lora_eval_result file = run_eval(m, ds, LORA_MODE_BASE, 0);
    lora_model_free(m);
    ck_assert_msg(file.mean_nll == mem.mean_nll, "merged file %.17g, merged in memory %.17g",
                  file.mean_nll, mem.mean_nll);
    ck_assert_msg(fabs(run.mean_nll - file.mean_nll) <= 1e-5 * fabs(file.mean_nll),
                  "run time %.17g, merged file %.17g", run.mean_nll, file.mean_nll);
    lora_dataset_free(ds);
    lora_adapter_free(ad);
    tu_rmtree(ad_dir);
    free(ad_dir);
    tu_rmtree(tmp);
    free(tmp);
    free(out);
    free(in);
}
END_TEST

/* An lm_head update on GPT-2 with tied embeddings (no lm_head.weight):
 * lora-eval applies it to the head alone, at run time and merged alike;
 * binding for a merge refuses it saying the head is tied; an embedding
 * update on a tied model is refused by evaluation, saying why. */
START_TEST(tied_head)
{
    static const char *const names[] = {"base_model.model.lm_head.lora_A.weight",
                                        "base_model.model.lm_head.lora_B.weight"};
    static const uint64_t shapes[][2] = {{2, 64}, {32, 2}};
    char *ad_dir = write_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,"
                                 "\"target_modules\":[\"lm_head\"]}", names, shapes, 2, 0.5f);
    lora_adapter *ad = NULL;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_msg(lora_adapter_open(ad_dir, &ad, &err) == 0, "%s", err.msg);
    lora_model *m = open_model("gpt2-base");
    ck_assert_int_eq(lora_adapter_bind(ad, lora_model_ckpt(m), &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "lm_head.weight") && strstr(err.msg, "tied"), "%s", err.msg);
    lora_dataset *ds = load_data("reverse", 32);
    lora_eval_result base = run_eval(m, ds, LORA_MODE_BASE, 0);
    ck_assert_msg(lora_model_attach(m, ad, 1, &err) == LORA_OK, "%s", err.msg);
    lora_eval_result run = run_eval(m, ds, LORA_MODE_UNMERGED, LORA_MODE_MERGED);
    ck_assert_uint_eq(run.disagreements, 0);
    lora_eval_result mem = run_eval(m, ds, LORA_MODE_MERGED, 0);
    ck_assert_msg(fabs(run.mean_nll - mem.mean_nll) <= 1e-5 * fabs(mem.mean_nll), "%.17g %.17g",
                  run.mean_nll, mem.mean_nll);
    ck_assert(fabs(run.mean_nll - base.mean_nll) > 1e-3);
    /* detached, the tied embedding is the base's again (the merged head
     * was a copy, never written into the shared embedding) */
    lora_model_detach(m);
    lora_eval_result again = run_eval(m, ds, LORA_MODE_BASE, 0);
    ck_assert(again.mean_nll == base.mean_nll);
    lora_adapter_free(ad);
    tu_rmtree(ad_dir);
    free(ad_dir);

    static const char *const en[] = {"base_model.model.transformer.wte.lora_embedding_A",
                                     "base_model.model.transformer.wte.lora_embedding_B"};
    static const uint64_t es[][2] = {{2, 32}, {64, 2}};
    ad_dir = write_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,"
                           "\"target_modules\":[\"wte\"]}", en, es, 2, 0.5f);
    ck_assert_msg(lora_adapter_open(ad_dir, &ad, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(lora_model_attach(m, ad, 0, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "tied to the embeddings"), "%s", err.msg);
    lora_adapter_free(ad);
    tu_rmtree(ad_dir);
    free(ad_dir);
    lora_dataset_free(ds);
    lora_model_free(m);
}
END_TEST

/* Model folders whose tensors do not fit their config. */
START_TEST(bad_folders)
{
    char *dir = tu_tmpdir();
    char *src = fx("gpt2-base/model.safetensors");
    size_t len;
    char *bytes = tu_read(src, &len);
    char *st = tu_path(dir, "model.safetensors"), *cfgp = tu_path(dir, "config.json");
    tu_write(st, bytes, len);
    struct {
        const char *cfg, *want;
    } cases[] = {
        {"{\"model_type\":\"gpt2\",\"vocab_size\":32,\"n_embd\":32,\"n_head\":4,\"n_layer\":2,"
         "\"n_positions\":32}", "tensor wte.weight has shape [32, 64], config.json says [32, 32]"},
        {"{\"model_type\":\"gpt2\",\"vocab_size\":32,\"n_embd\":64,\"n_head\":4,\"n_layer\":3,"
         "\"n_positions\":32}", "tensor h.2.ln_1.weight is missing"},
        {"{\"model_type\":\"gpt2\",\"vocab_size\":32,\"n_embd\":64,\"n_head\":4,\"n_layer\":2,"
         "\"n_positions\":32,\"tie_word_embeddings\":false}", "tensor lm_head.weight is missing"},
        {"{\"model_type\":\"llama\",\"vocab_size\":32,\"hidden_size\":64}",
         "tensor model.embed_tokens.weight is missing"},
        {"{\"architectures\":[\"T5ForConditionalGeneration\"]}", "architecture T5ForConditionalGeneration"},
        /* fewer layers than the checkpoint holds: never run truncated (issue 20.11) */
        {"{\"model_type\":\"gpt2\",\"vocab_size\":32,\"n_embd\":64,\"n_head\":4,\"n_layer\":1,"
         "\"n_positions\":32}", "declares 1 layers (n_layer) but the checkpoint holds 2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tu_write(cfgp, cases[i].cfg, strlen(cases[i].cfg));
        lora_model *m = NULL;
        lora_error err;
        lora_error_clear(&err);
        ck_assert_int_eq(lora_model_open(dir, &m, &err), LORA_EINPUT);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(err.msg, cases[i].want) != NULL, "\"%s\" lacks \"%s\"", err.msg,
                      cases[i].want);
    }
    /* a truncated safetensors file */
    tu_write(cfgp, "{\"model_type\":\"gpt2\",\"vocab_size\":32,\"n_embd\":64,\"n_head\":4,\"n_layer\":2,"
                   "\"n_positions\":32}", 85);
    tu_write(st, bytes, len / 2);
    lora_model *m = NULL;
    lora_error err;
    lora_error_clear(&err);
    ck_assert_int_eq(lora_model_open(dir, &m, &err), LORA_EINPUT);
    /* no config.json */
    unlink(cfgp);
    ck_assert_int_ne(lora_model_open(dir, &m, &err), LORA_OK);
    ck_assert_ptr_null(m);
    free(bytes);
    free(src);
    free(st);
    free(cfgp);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, config_parse);
    tcase_add_test(tc, reference_logits);
    tcase_add_test(tc, reference_logits_adapter);
    tcase_add_test(tc, reference_logits_bf16);
    tcase_add_test(tc, kv_cache);
    tcase_add_test(tc, sharded);
    tcase_add_test(tc, wrong_base);
    tcase_add_test(tc, bad_folders);
    tcase_add_test(tc, embedding_and_head);
    tcase_add_test(tc, tied_head);
    tcase_add_test(tc, recovery);
    tcase_add_test(tc, compare_detects);
    tcase_add_test(tc, task_accuracy);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

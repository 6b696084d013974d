/*
 * check_adapter.c - unit tests for adapter_config.c, adapter.c and
 * inspect.c: the real adapters of fixtures/real against INDEX.md, every
 * PEFT key form and config pattern on synthetic adapters written here,
 * every refusal, binding to bases (orientation, prefixes, shapes), and
 * the inspect report's problems.
 */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Writing small adapters and bases                                    */
/* ------------------------------------------------------------------ */

typedef struct tdef {
    const char *name;
    uint64_t s0, s1;   /* s1 == 0: a vector */
    float fill;        /* values fill * (1 + (i % 5)); NAN for NaN */
} tdef;

static void write_st(const char *path, const tdef *t, size_t n)
{
    lora_error e;
    lora_stw *w;
    ck_assert_int_eq(lora_stw_new(path, &w, &e), 0);
    for (size_t i = 0; i < n; i++) {
        uint64_t shape[2] = {t[i].s0, t[i].s1};
        ck_assert_msg(lora_stw_declare(w, t[i].name, LORA_DT_F32, t[i].s1 ? 2 : 1, shape, &e) == 0,
                      "%s", e.msg);
    }
    ck_assert_msg(lora_stw_start(w, &e) == 0, "%s", e.msg);
    for (size_t i = 0; i < n; i++) {
        uint64_t cnt = t[i].s0 * (t[i].s1 ? t[i].s1 : 1);
        float *v = malloc(cnt * sizeof *v);
        ck_assert_ptr_nonnull(v);
        for (uint64_t k = 0; k < cnt; k++)
            v[k] = t[i].fill * (float)(1 + k % 5);
        ck_assert_msg(lora_stw_write(w, t[i].name, 0, v, cnt * 4, &e) == 0, "%s", e.msg);
        free(v);
    }
    ck_assert_msg(lora_stw_commit(w, &e) == 0, "%s", e.msg);
}

/* An adapter folder under a fresh temporary folder. */
static char *mk_adapter(const char *config, const tdef *t, size_t n)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "adapter_config.json");
    tu_write(p, config, strlen(config));
    free(p);
    p = tu_path(d, "adapter_model.safetensors");
    write_st(p, t, n);
    free(p);
    return d;
}

static lora_ckpt *mk_base(char **dir, const tdef *t, size_t n)
{
    *dir = tu_tmpdir();
    char *p = tu_path(*dir, "model.safetensors");
    write_st(p, t, n);
    lora_ckpt *ck;
    lora_error e;
    ck_assert_msg(lora_ckpt_open(p, &ck, &e) == 0, "%s", e.msg);
    free(p);
    return ck;
}

static void rm(char *d)
{
    tu_rmtree(d);
    free(d);
}

#define CFG(extra) "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\",\"v_proj\"]" extra "}"
#define PFX "base_model.model."
#define L0 PFX "model.layers.0.self_attn."

static const lora_module *find_module(const lora_adapter *ad, const char *name)
{
    for (size_t i = 0; i < ad->n_modules; i++)
        if (strcmp(ad->modules[i].name, name) == 0)
            return &ad->modules[i];
    return NULL;
}

/* Open an adapter that must be refused; returns the message. */
static void expect_refused(const char *config, const tdef *t, size_t n, const char *needle)
{
    char *d = mk_adapter(config, t, n);
    lora_adapter *ad = NULL;
    lora_error e;
    lora_error_clear(&e);
    int rc = lora_adapter_open(d, &ad, &e);
    ck_assert_msg(rc == LORA_EINPUT, "expected refusal (%s), got %d: %s", needle, rc, e.msg);
    ck_assert_ptr_null(ad);
    ck_assert_msg(strstr(e.msg, needle) != NULL, "message \"%s\" lacks \"%s\"", e.msg, needle);
    rm(d);
}

/* ------------------------------------------------------------------ */
/* Config parsing and patterns                                         */
/* ------------------------------------------------------------------ */

START_TEST(test_config_fields)
{
    const char *j = "{\"peft_type\":\"LORA\",\"r\":16,\"lora_alpha\":32.5,\"use_rslora\":true,"
                    "\"fan_in_fan_out\":null,\"target_modules\":[\"q_proj\",\"attn.c_proj\"],"
                    "\"rank_pattern\":{\"q_proj\":4,\"layers.0.self_attn.q_proj\":6},"
                    "\"alpha_pattern\":{\"layers\\\\.1\\\\.self_attn\\\\.v_proj\":7},"
                    "\"modules_to_save\":[\"score\"],\"base_model_name_or_path\":null,"
                    "\"peft_version\":\"0.18.1\"}";
    lora_acfg *c;
    lora_error e;
    ck_assert_msg(lora_acfg_parse(j, strlen(j), &c, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(c->r, 16);
    ck_assert_double_eq(c->alpha, 32.5);
    ck_assert_int_eq(c->use_rslora, 1);
    ck_assert_int_eq(c->fan_in_fan_out, 0);
    ck_assert_ptr_null(c->base_model);
    ck_assert_str_eq(c->peft_version, "0.18.1");
    ck_assert_str_eq(c->target_modules_json, "[\"q_proj\",\"attn.c_proj\"]");
    uint64_t r;
    double a;
    /* first key in file order wins: q_proj (4), not layers.0.self_attn.q_proj (6) */
    ck_assert_int_eq(lora_acfg_module_rank(c, "model.layers.0.self_attn.q_proj", &r, &a, &e), 0);
    ck_assert_uint_eq(r, 4);
    ck_assert_double_eq(a, 32.5);
    /* (.*\.)?(k)$ : "proj" does not select "q_proj"; dots are regex dots */
    ck_assert_int_eq(lora_acfg_module_rank(c, "model.layers.1.self_attn.v_proj", &r, &a, &e), 0);
    ck_assert_uint_eq(r, 16);
    ck_assert_double_eq(a, 7);
    ck_assert_int_eq(lora_acfg_module_rank(c, "model.layers.11.self_attn.v_proj", &r, &a, &e), 0);
    ck_assert_double_eq(a, 32.5);
    /* targets: equal or ends with "." + entry */
    ck_assert_int_eq(lora_acfg_targets(c, "q_proj", &e), 1);
    ck_assert_int_eq(lora_acfg_targets(c, "model.layers.0.self_attn.q_proj", &e), 1);
    ck_assert_int_eq(lora_acfg_targets(c, "model.layers.0.self_attn.qq_proj", &e), 0);
    ck_assert_int_eq(lora_acfg_targets(c, "h.0.attn.c_proj", &e), 1);
    ck_assert_int_eq(lora_acfg_targets(c, "h.0.mlp.c_proj", &e), 0);
    ck_assert_int_eq(lora_acfg_saves(c, "score"), 1);
    ck_assert_int_eq(lora_acfg_saves(c, "classifier"), 0);
    lora_acfg_free(c);
}
END_TEST

START_TEST(test_config_pattern_order)
{
    /* the same two keys the other way round: the longer one comes first */
    const char *j = "{\"peft_type\":\"LORA\",\"r\":8,"
                    "\"rank_pattern\":{\"layers.0.self_attn.q_proj\":6,\"q_proj\":4}}";
    lora_acfg *c;
    lora_error e;
    ck_assert_int_eq(lora_acfg_parse(j, strlen(j), &c, &e), 0);
    uint64_t r;
    double a;
    ck_assert_int_eq(lora_acfg_module_rank(c, "model.layers.0.self_attn.q_proj", &r, &a, &e), 0);
    ck_assert_uint_eq(r, 6);
    ck_assert_int_eq(lora_acfg_module_rank(c, "model.layers.10.self_attn.q_proj", &r, &a, &e), 0);
    ck_assert_uint_eq(r, 4);
    ck_assert_double_eq(a, 8); /* lora_alpha defaults to 8 as in LoraConfig */
    lora_acfg_free(c);
}
END_TEST

/* Pattern keys of plain name characters skip PCRE2: the result must be
 * the one PCRE2 gives for re.match("(.*\.)?(KEY)$") on every pair. */
START_TEST(test_literal_keys)
{
    static const char *const keys[] = {"q_proj", "layers.0.q_proj", "0.self_attn.q_proj", "proj",
                                       "", "self_attn", "layers.1.self_attn.q_proj", "s.q_proj",
                                       "model.layers.0.self_attn.q_proj", "x", "q.proj"};
    static const char *const mods[] = {"model.layers.0.self_attn.q_proj", "q_proj", "xq_proj",
                                       "model.layers.1.self_attn.q_proj", "a.", "", "q_proj\n",
                                       "layers_0_q_proj", "model.layers.0.self_attn"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        for (size_t k = 0; k < sizeof mods / sizeof mods[0]; k++) {
            char j[256];
            snprintf(j, sizeof j, "{\"peft_type\":\"LORA\",\"r\":8,\"rank_pattern\":{\"%s\":3}}",
                     keys[i]);
            lora_acfg *c;
            lora_error e;
            ck_assert_int_eq(lora_acfg_parse(j, strlen(j), &c, &e), 0);
            uint64_t r;
            double a;
            ck_assert_int_eq(lora_acfg_module_rank(c, mods[k], &r, &a, &e), 0);
            int want = lora_regex_match(keys[i], mods[k], 0, &e);
            ck_assert_int_ge(want, 0);
            ck_assert_msg((r == 3) == want, "key \"%s\" on \"%s\": %d, PCRE2 says %d", keys[i],
                          mods[k], r == 3, want);
            lora_acfg_free(c);
        }
}
END_TEST

/* Many keys, long keys and costly patterns are refused, not run for
 * minutes: a cap on regex keys, on their length, and a budget of steps
 * over all matches of one config (hostile.sh has the 124 KB config). */
START_TEST(test_pattern_caps)
{
    lora_acfg *c;
    lora_error e;
    size_t cap = 1 << 20;
    char *j = malloc(cap);
    ck_assert_ptr_nonnull(j);
    /* 5000 regex keys */
    size_t o = (size_t)snprintf(j, cap, "{\"peft_type\":\"LORA\",\"rank_pattern\":{");
    for (int i = 0; i < 5000; i++)
        o += (size_t)snprintf(j + o, cap - o, "%s\"(?:.*){5}a(?#%d)\":8", i ? "," : "", i);
    o += (size_t)snprintf(j + o, cap - o, "}}");
    ck_assert_int_eq(lora_acfg_parse(j, o, &c, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "5000 regular-expression keys"), "%s", e.msg);
    /* 5000 literal keys (one per module, as per-module rank tools write) are fine */
    o = (size_t)snprintf(j, cap, "{\"peft_type\":\"LORA\",\"rank_pattern\":{");
    for (int i = 0; i < 5000; i++)
        o += (size_t)snprintf(j + o, cap - o, "%s\"layers.%d.q_proj\":%d", i ? "," : "", i,
                              1 + i % 7);
    o += (size_t)snprintf(j + o, cap - o, "}}");
    ck_assert_int_eq(lora_acfg_parse(j, o, &c, &e), 0);
    uint64_t r;
    double a;
    ck_assert_int_eq(lora_acfg_module_rank(c, "model.layers.4999.q_proj", &r, &a, &e), 0);
    ck_assert_uint_eq(r, 1 + 4999 % 7);
    lora_acfg_free(c);
    /* a key longer than the cap */
    o = (size_t)snprintf(j, cap, "{\"peft_type\":\"LORA\",\"alpha_pattern\":{\"");
    memset(j + o, 'a', 5000);
    o += 5000;
    o += (size_t)snprintf(j + o, cap - o, "\":8}}");
    ck_assert_int_eq(lora_acfg_parse(j, o, &c, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "alpha_pattern") && strstr(e.msg, "more than"), "%s", e.msg);
    /* under the key cap but over the budget: each key costs ~10^5 steps */
    o = (size_t)snprintf(j, cap, "{\"peft_type\":\"LORA\",\"rank_pattern\":{");
    for (int i = 0; i < 4000; i++)
        o += (size_t)snprintf(j + o, cap - o, "%s\"(?:.*){3}a(?#%d)\":8", i ? "," : "", i);
    o += (size_t)snprintf(j + o, cap - o, "}}");
    ck_assert_int_eq(lora_acfg_parse(j, o, &c, &e), 0);
    int rc = 0;
    for (int i = 0; i < 8 && !rc; i++)
        rc = lora_acfg_module_rank(c, "model.layers.0.self_attn.q_proj", &r, &a, &e);
    ck_assert_int_eq(rc, LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "steps in all"), "%s", e.msg);
    lora_acfg_free(c);
    free(j);
}
END_TEST

/* Files of other kinds handed over as safetensors are named. */
START_TEST(test_foreign_files)
{
    static const struct { const char *bytes; size_t len; const char *needle; } f[] = {
        {"GGUF\3\0\0\0\0\0\0\0\0\0\0\0", 16, "a GGUF file"},
        {"PK\3\4\24\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\20\0\0\0archive/data.pkl", 46,
         "PyTorch checkpoint"},
        {"PK\3\4\24\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\12\0\0\0lora_A.npy", 40,
         "NumPy .npz"},
        {"PK\3\4\24\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\5\0\0\0a.txt", 35, "a zip archive"},
        {"\200\2}q\0.\0\0\0\0", 10, "Python pickle"},
        {"\223NUMPY\1\0v\0{}", 12, "NumPy .npy"},
        {"\357\273\277  <!DOCTYPE HTML><html>", 30, "HTML"},
        {"<html><body>404</body></html>", 29, "HTML"},
        {"version https://git-lfs.github.com/spec/v1\n", 43, "Git LFS pointer"},
        {"\37\213\10\0\0\0\0\0\0\3", 10, "gzip"},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        lora_st *st = NULL;
        lora_error e;
        ck_assert_int_eq(lora_st_open_memory(f[i].bytes, f[i].len, "x.safetensors", &st, &e),
                         LORA_EINPUT);
        ck_assert_msg(strstr(e.msg, f[i].needle) && strstr(e.msg, "not a safetensors file"),
                      "%zu: %s", i, e.msg);
    }
    /* a valid file whose first bytes look like nothing else is read */
    char ok[64] = "\20\0\0\0\0\0\0\0{\"__metadata__\":{}}";
    ok[8 + 16] = '\0';
    memcpy(ok + 8, "{}              ", 16);
    lora_st *st = NULL;
    lora_error e;
    ck_assert_msg(lora_st_open_memory(ok, 24, "ok", &st, &e) == 0, "%s", e.msg);
    lora_st_close(st);
}
END_TEST

/* A SEQ_CLS adapter as older PEFT saves it (DistilBERT: modules_to_save
 * null in the config, the heads under their plain paths, pre_classifier
 * pulled in by PEFT's suffix rule), with the .base_layer. copy and LoRA
 * on a modules_to_save wrapper's copies: it opens, inspects without a
 * problem, and merges to W0 + ΔW with the heads replaced. */
START_TEST(test_seqcls_implicit)
{
    const char *cfg = "{\"peft_type\":\"LORA\",\"task_type\":\"SEQ_CLS\",\"r\":2,\"lora_alpha\":4,"
                      "\"target_modules\":[\"q_lin\"],\"modules_to_save\":null}";
#define DB PFX "distilbert.transformer.layer.0.attention."
    const tdef t[] = {{DB "q_lin.lora_A.weight", 2, 8, 0.25f},
                      {DB "q_lin.lora_B.weight", 8, 2, 0.5f},
                      {DB "q_lin.base_layer.weight", 8, 8, 1},
                      {PFX "pre_classifier.weight", 8, 8, 3},
                      {PFX "pre_classifier.bias", 8, 0, 3},
                      {PFX "classifier.weight", 3, 8, 5},
                      {PFX "classifier.bias", 3, 0, 5},
                      {PFX "classifier.original_module.lora_A.weight", 2, 8, 7},
                      {PFX "classifier.original_module.lora_B.weight", 3, 2, 7}};
#undef DB
    char *d = mk_adapter(cfg, t, sizeof t / sizeof t[0]);
    lora_adapter *ad = NULL;
    lora_error e;
    ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(ad->n_modules, 1);
    ck_assert_uint_eq(ad->n_saved, 4);
    ck_assert_str_eq(ad->saved[2].target, "pre_classifier.bias");
    char *bd;
    const tdef base[] = {{"distilbert.transformer.layer.0.attention.q_lin.weight", 8, 8, 1},
                         {"pre_classifier.weight", 8, 8, 2},
                         {"pre_classifier.bias", 8, 0, 2},
                         {"classifier.weight", 3, 8, 2},
                         {"classifier.bias", 3, 0, 2},
                         {"distilbert.embeddings.word_embeddings.weight", 16, 8, 1}};
    lora_ckpt *ck = mk_base(&bd, base, sizeof base / sizeof base[0]);
    lora_report *rep;
    lora_inspect_opts io = {.base = ck, .strict = 1};
    ck_assert_int_eq(lora_inspect(ad, &io, &rep, &e), 0);
    for (size_t i = 0; i < rep->n_problems; i++)
        ck_abort_msg("problem: %s", rep->problems[i].msg);
    lora_report_free(rep);
    lora_ckpt_close(ck);

    char *in = tu_path(bd, "model.safetensors"), *out = tu_path(bd, "merged.safetensors");
    lora_merge_adapter ma = {.ad = ad, .weight = 1, .spec = d};
    lora_merge_opts o = {.nthreads = 1, .rounding = LORA_ROUND_NEAREST};
    lora_merge_result res;
    ck_assert_msg(lora_merge_run(in, NULL, 0, &ma, 1, out, &o, &res, &e) == 0, "%s", e.msg);
    ck_assert_msg(lora_ckpt_open(out, &ck, &e) == 0, "%s", e.msg);
    /* the heads are the adapter's: fill 3 and 5, times (1 + k % 5) */
    const lora_tensor *pw = lora_ckpt_find(ck, "pre_classifier.bias", NULL);
    const lora_tensor *cw = lora_ckpt_find(ck, "classifier.weight", NULL);
    for (uint64_t k = 0; k < 8; k++)
        ck_assert_float_eq(((const float *)pw->data)[k], 3.0f * (float)(1 + k % 5));
    for (uint64_t k = 0; k < 24; k++)
        ck_assert_float_eq(((const float *)cw->data)[k], 5.0f * (float)(1 + k % 5));
    /* q_lin: W0 + (alpha/r)·B·A, a plain loop in double */
    const lora_tensor *q = lora_ckpt_find(ck, "distilbert.transformer.layer.0.attention.q_lin.weight",
                                          NULL);
    for (uint64_t i = 0; i < 8; i++)
        for (uint64_t j = 0; j < 8; j++) {
            double dw = 0;
            for (uint64_t k = 0; k < 2; k++)
                dw += 0.5 * (1 + (i * 2 + k) % 5) * 0.25 * (1 + (k * 8 + j) % 5);
            float want = (float)(1.0 * (1 + (i * 8 + j) % 5) + 2.0 * dw);
            ck_assert_float_eq(((const float *)q->data)[i * 8 + j], want);
        }
    lora_ckpt_close(ck);
    free(in);
    free(out);
    rm(bd);
    lora_adapter_free(ad);
    rm(d);

    /* classifier both targeted and a task head (PEFT wraps the LoRA layer
     * in a ModulesToSaveWrapper): its LoRA twice (X.lora_A and
     * X.modules_to_save.lora_A, the same bytes), LoRA on the frozen
     * original_module copy (inactive), and the trained copy's full
     * weight as X.base_layer.weight, which replaces the base's: read as
     * such, and a merge that would both replace and adapt it is refused
     * rather than dropping either */
    {
        const char *cc = "{\"peft_type\":\"LORA\",\"task_type\":\"SEQ_CLS\",\"r\":2,"
                         "\"lora_alpha\":4,\"target_modules\":[\"classifier\"]}";
        const tdef w[] = {{PFX "classifier.lora_A.weight", 2, 8, 0.25f},
                          {PFX "classifier.lora_B.weight", 3, 2, 0.5f},
                          {PFX "classifier.modules_to_save.lora_A.weight", 2, 8, 0.25f},
                          {PFX "classifier.modules_to_save.lora_B.weight", 3, 2, 0.5f},
                          {PFX "classifier.original_module.lora_A.weight", 2, 8, 9},
                          {PFX "classifier.original_module.lora_B.weight", 3, 2, 9},
                          {PFX "classifier.base_layer.weight", 3, 8, 5},
                          {PFX "classifier.base_layer.bias", 3, 0, 5},
                          {PFX "pre_classifier.weight", 8, 8, 3}};
        d = mk_adapter(cc, w, sizeof w / sizeof w[0]);
        ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
        ck_assert_uint_eq(ad->n_modules, 1);
        ck_assert_str_eq(ad->modules[0].name, "classifier");
        ck_assert_float_eq(((const float *)ad->modules[0].A->data)[0], 0.25f);
        ck_assert_uint_eq(ad->n_saved, 3);
        ck_assert_str_eq(ad->saved[1].target, "classifier.weight");
        const tdef cb[] = {{"classifier.weight", 3, 8, 1}, {"classifier.bias", 3, 0, 1},
                           {"pre_classifier.weight", 8, 8, 1}};
        ck = mk_base(&bd, cb, 3);
        lora_ckpt_close(ck);
        in = tu_path(bd, "model.safetensors");
        out = tu_path(bd, "merged.safetensors");
        ma.ad = ad;
        ma.spec = d;
        ck_assert_int_ne(lora_merge_run(in, NULL, 0, &ma, 1, out, &o, &res, &e), 0);
        ck_assert_msg(strstr(e.msg, "classifier.weight") && strstr(e.msg, "modules_to_save"), "%s",
                      e.msg);
        ck_assert_int_ne(access(out, F_OK), 0);
        free(in);
        free(out);
        rm(bd);
        lora_adapter_free(ad);
        rm(d);
    }
    /* without a task_type, pre_classifier is nobody's: refused as before */
    const char *plain = "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,"
                        "\"target_modules\":[\"q_lin\"]}";
    expect_refused(plain, t, sizeof t / sizeof t[0], "not in modules_to_save");
    /* QUESTION_ANS adds qa_outputs; a nested head parameter is saved too */
    const tdef qa[] = {{PFX "x.q_lin.lora_A.weight", 2, 8, 1}, {PFX "x.q_lin.lora_B.weight", 8, 2, 1},
                       {PFX "qa_outputs.weight", 2, 8, 1}, {PFX "qa_outputs.dense.weight", 2, 8, 1}};
    d = mk_adapter("{\"peft_type\":\"LORA\",\"task_type\":\"QUESTION_ANS\",\"r\":2,"
                   "\"target_modules\":[\"q_lin\"]}", qa, 4);
    ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(ad->n_saved, 2);
    lora_adapter_free(ad);
    rm(d);
}
END_TEST

/* --check names a target_modules entry or a pattern key that matches no
 * module (a typo changes nothing in PEFT, without a word). */
START_TEST(test_inspect_unmatched_keys)
{
    const tdef t[] = {{L0 "q_proj.lora_A.weight", 2, 4, 1}, {L0 "q_proj.lora_B.weight", 4, 2, 1}};
    char *d = mk_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,"
                         "\"target_modules\":[\"q_proj\",\"qproj\"],"
                         "\"rank_pattern\":{\"q_proj\":2,\"layers\\\\.9\\\\..*\":4},"
                         "\"alpha_pattern\":{\"v_proj\":1}}",
                         t, 2);
    lora_adapter *ad = NULL;
    lora_error e;
    ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
    lora_report *rep;
    ck_assert_int_eq(lora_inspect(ad, NULL, &rep, &e), 0);
    const char *want[] = {"target_modules entry \"qproj\" matches no module",
                          "rank_pattern key \"layers\\.9\\..*\" matches no module",
                          "alpha_pattern key \"v_proj\" matches no module"};
    ck_assert_uint_eq(rep->n_warnings, 3);
    for (size_t w = 0; w < 3; w++) {
        int found = 0;
        for (size_t i = 0; i < rep->n_problems; i++)
            found |= strstr(rep->problems[i].msg, want[w]) != NULL;
        ck_assert_msg(found, "no warning \"%s\"", want[w]);
    }
    lora_report_free(rep);
    lora_adapter_free(ad);
    rm(d);
}
END_TEST

/* every proper prefix of a real config is refused, the whole one accepted */
START_TEST(test_config_truncated)
{
    char *p = tu_fixture("real/gpt2-tigrinya-lora/adapter_config.json");
    size_t n;
    char *j = tu_read(p, &n);
    lora_acfg *c;
    lora_error e;
    for (size_t len = 0; len < n; len++) {
        /* a private copy of exactly len bytes, so that reads past it show */
        char *cut = malloc(len ? len : 1);
        memcpy(cut, j, len);
        int rc = lora_acfg_parse(cut, len, &c, &e);
        free(cut);
        if (rc == LORA_OK) { /* only when what was cut is trailing whitespace */
            ck_assert_msg(strspn(j + len, " \n\r\t") == n - len, "prefix %zu accepted", len);
            lora_acfg_free(c);
            continue;
        }
        ck_assert_int_eq(rc, LORA_EINPUT);
        ck_assert_ptr_nonnull(strstr(e.msg, "adapter_config.json"));
    }
    ck_assert_int_eq(lora_acfg_parse(j, n, &c, &e), 0);
    lora_acfg_free(c);
    free(j);
    free(p);
}
END_TEST

START_TEST(test_config_regex_targets)
{
    char *p = tu_fixture("real/x-qwen25vl-truncated/adapter_config.json");
    size_t n;
    char *j = tu_read(p, &n);
    lora_acfg *c;
    lora_error e;
    ck_assert_msg(lora_acfg_parse(j, n, &c, &e) == 0, "%s", e.msg);
    ck_assert_ptr_nonnull(c->target_regex);
    ck_assert_uint_eq(c->r, 16);
    ck_assert_int_eq(lora_acfg_targets(c, "model.language_model.layers.0.self_attn.q_proj", &e), 1);
    ck_assert_int_eq(lora_acfg_targets(c, "model.language_model.layers.27.mlp.down_proj", &e), 1);
    ck_assert_int_eq(lora_acfg_targets(c, "model.layers.3.mlp.down_proj", &e), 1);
    ck_assert_int_eq(lora_acfg_targets(c, "model.visual.blocks.0.attn.qkv", &e), 0);
    ck_assert_int_eq(lora_acfg_targets(c, "lm_head", &e), 0);
    lora_acfg_free(c);
    free(j);
    free(p);
}
END_TEST

START_TEST(test_config_refusals)
{
    static const struct { const char *json, *needle; } bad[] = {
        {"", "invalid JSON"},
        {"[1,2]", "not a JSON object"},
        {"{\"r\":8}", "peft_type"},
        {"{\"peft_type\":\"IA3\"}", "IA3"},
        {"{\"peft_type\":\"LOHA\",\"r\":8}", "LOHA"},
        {"{\"peft_type\":\"LORA\",\"lora_bias\":true}", "lora_bias"},
        {"{\"peft_type\":\"LORA\",\"r\":0}", "\"r\""},
        {"{\"peft_type\":\"LORA\",\"r\":-3}", "\"r\""},
        {"{\"peft_type\":\"LORA\",\"r\":\"8\"}", "\"r\""},
        {"{\"peft_type\":\"LORA\",\"r\":99999999999}", "\"r\""},
        {"{\"peft_type\":\"LORA\",\"lora_alpha\":\"x\"}", "lora_alpha"},
        {"{\"peft_type\":\"LORA\",\"use_rslora\":1}", "use_rslora"},
        {"{\"peft_type\":\"LORA\",\"target_modules\":5}", "target_modules"},
        {"{\"peft_type\":\"LORA\",\"target_modules\":[1]}", "target_modules"},
        {"{\"peft_type\":\"LORA\",\"rank_pattern\":[]}", "rank_pattern"},
        {"{\"peft_type\":\"LORA\",\"rank_pattern\":{\"q\":0}}", "rank_pattern"},
        {"{\"peft_type\":\"LORA\",\"alpha_pattern\":{\"q\":\"x\"}}", "alpha_pattern"},
        {"{\"peft_type\":\"LORA\",\"bias\":\"some\"}", "bias"},
        {"{\"peft_type\":\"LORA\",\"layer_replication\":[[0,2]]}", "layer_replication"},
        {"{\"peft_type\":\"LORA\",\"target_parameters\":[\"experts.w\"]}", "target_parameters"},
        {"{\"peft_type\":\"LORA\",\"r\":8,\"r\":4}", "duplicate"},
        {"{\"peft_type\":\"LORA\",\"modules_to_save\":\"score\"}", "modules_to_save"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lora_acfg *c = (lora_acfg *)1;
        lora_error e;
        lora_error_clear(&e);
        int rc = lora_acfg_parse(bad[i].json, strlen(bad[i].json), &c, &e);
        ck_assert_msg(rc == LORA_EINPUT, "%s: rc %d", bad[i].json, rc);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(e.msg, bad[i].needle), "%s: \"%s\" lacks \"%s\"", bad[i].json, e.msg,
                      bad[i].needle);
    }
    /* a bad regex is reported when it is used */
    const char *j = "{\"peft_type\":\"LORA\",\"rank_pattern\":{\"q_proj(\":4}}";
    lora_acfg *c;
    lora_error e;
    ck_assert_int_eq(lora_acfg_parse(j, strlen(j), &c, &e), 0);
    uint64_t r;
    double a;
    ck_assert_int_eq(lora_acfg_module_rank(c, "x.q_proj", &r, &a, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "regular expression"));
    lora_acfg_free(c);
    /* catastrophic backtracking stops at the match limit */
    ck_assert_int_eq(lora_regex_match("(\\w+\\s?)*$", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!",
                                      1, &e), -LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "limit"));
}
END_TEST

/* ------------------------------------------------------------------ */
/* Keys                                                                */
/* ------------------------------------------------------------------ */

START_TEST(test_key_forms)
{
    const char *j = "{\"peft_type\":\"LORA\",\"modules_to_save\":[\"score\"]}";
    lora_acfg *c;
    lora_error e;
    ck_assert_int_eq(lora_acfg_parse(j, strlen(j), &c, &e), 0);
    static const struct { const char *key; int kind; const char *name; } ok[] = {
        {PFX "model.layers.0.self_attn.q_proj.lora_A.weight", LORA_KEY_A, "model.layers.0.self_attn.q_proj"},
        {PFX "transformer.h.0.attn.c_attn.lora_B.weight", LORA_KEY_B, "transformer.h.0.attn.c_attn"},
        {PFX PFX "model.layers.0.q.lora_A.weight", LORA_KEY_A, "model.layers.0.q"},
        {PFX "m.q.lora_A.default.weight", LORA_KEY_A, "m.q"},
        {PFX "m.q.base_layer.lora_B.weight", LORA_KEY_B, "m.q"},
        {PFX "model.embed_tokens.lora_embedding_A", LORA_KEY_EMB_A, "model.embed_tokens"},
        {PFX "model.embed_tokens.lora_embedding_B.default", LORA_KEY_EMB_B, "model.embed_tokens"},
        {PFX "score.weight", LORA_KEY_SAVED, "score.weight"},
        {PFX "score.modules_to_save.default.weight", LORA_KEY_SAVED, "score.weight"},
        {PFX "score.modules_to_save.bias", LORA_KEY_SAVED, "score.bias"},
        {PFX "score.original_module.weight", LORA_KEY_COPY, "score.weight"},
        {PFX "m.q.base_layer.weight", LORA_KEY_COPY, "m.q.weight"},
        {PFX "m.q.lora_magnitude_vector", LORA_KEY_MAG, "m.q"},
        {PFX "m.q.lora_magnitude_vector.weight", LORA_KEY_MAG, "m.q"},
        {PFX "m.q.base_layer.lora_magnitude_vector.default.weight", LORA_KEY_MAG, "m.q"},
        {PFX "m.q.lora_magnitude_vector.default", LORA_KEY_MAG, "m.q"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int kind;
        char *name;
        ck_assert_msg(lora_adapter_classify_key(c, ok[i].key, &kind, &name, &e) == 0, "%s: %s",
                      ok[i].key, e.msg);
        ck_assert_msg(kind == ok[i].kind, "%s: kind %d", ok[i].key, kind);
        ck_assert_str_eq(name, ok[i].name);
        free(name);
    }
    static const struct { const char *key, *needle; } bad[] = {
        {"model.layers.0.q.lora_A.weight", "prefix"},
        {PFX "m.q.lora_magnitude_vector.weight.x", "lora_magnitude_vector[.default][.weight]"},
        {PFX "m.q.lora_B.bias", "lora_bias"},
        {PFX "m.q.lora_A.other.weight", "cannot classify"},
        {PFX "m.q.lora_A", "cannot classify"},
        {PFX "m.q.lora_embedding_A.weight", "cannot classify"},
        {PFX "m.q.lora_C.weight", "lora_C"},
        {PFX "lora_A.weight", "no module"},
        {PFX "m.q.weight", "modules_to_save"},
        {PFX "m.q.bias", "modules_to_save"},
        {PFX "m..q.lora_A.weight", "empty"},
        {PFX "m.trainable_tokens_delta", "cannot classify"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int kind;
        char *name;
        lora_error_clear(&e);
        ck_assert_msg(lora_adapter_classify_key(c, bad[i].key, &kind, &name, &e) == LORA_EINPUT,
                      "%s accepted", bad[i].key);
        ck_assert_msg(strstr(e.msg, bad[i].needle), "%s: \"%s\" lacks \"%s\"", bad[i].key, e.msg,
                      bad[i].needle);
        ck_assert_ptr_null(name);
    }
    lora_acfg_free(c);
    /* bias "all": a trained bias is a saved tensor */
    j = "{\"peft_type\":\"LORA\",\"bias\":\"all\"}";
    ck_assert_int_eq(lora_acfg_parse(j, strlen(j), &c, &e), 0);
    int kind;
    char *name;
    ck_assert_int_eq(lora_adapter_classify_key(c, PFX "m.q.bias", &kind, &name, &e), 0);
    ck_assert_int_eq(kind, LORA_KEY_SAVED);
    ck_assert_str_eq(name, "m.q.bias");
    free(name);
    lora_acfg_free(c);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Synthetic adapters                                                  */
/* ------------------------------------------------------------------ */

START_TEST(test_synthetic_forms)
{
    /* every key form in one adapter */
    const tdef t[] = {
        {L0 "q_proj.lora_A.weight", 2, 6, 0.1f},
        {L0 "q_proj.lora_B.weight", 4, 2, 0.01f},
        {PFX PFX "model.layers.1.self_attn.q_proj.lora_A.weight", 2, 6, 0.1f},
        {PFX PFX "model.layers.1.self_attn.q_proj.lora_B.weight", 4, 2, 0.01f},
        {L0 "v_proj.lora_A.default.weight", 2, 6, 0.1f},
        {L0 "v_proj.base_layer.lora_B.weight", 4, 2, 0.01f},
        {L0 "v_proj.base_layer.weight", 4, 6, 1.0f},
        {PFX "score.modules_to_save.default.weight", 3, 4, 0.5f},
        {PFX "score.original_module.weight", 3, 4, 0.5f},
        {PFX "lm_head.weight", 10, 4, 0.5f},
        {PFX "model.embed_tokens.lora_embedding_A", 2, 10, 0.1f},
        {PFX "model.embed_tokens.lora_embedding_B", 4, 2, 0.1f},
    };
    char *d = mk_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,"
                         "\"target_modules\":[\"q_proj\",\"v_proj\",\"embed_tokens\"],"
                         "\"modules_to_save\":[\"score\",\"lm_head\"]}",
                         t, sizeof t / sizeof t[0]);
    lora_adapter *ad;
    lora_error e;
    ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(ad->n_modules, 4);
    /* sorted by name */
    ck_assert_str_eq(ad->modules[0].name, "model.embed_tokens");
    ck_assert_str_eq(ad->modules[1].name, "model.layers.0.self_attn.q_proj");
    ck_assert_str_eq(ad->modules[2].name, "model.layers.0.self_attn.v_proj");
    ck_assert_str_eq(ad->modules[3].name, "model.layers.1.self_attn.q_proj");
    const lora_module *m = &ad->modules[1];
    ck_assert_str_eq(m->target, "model.layers.0.self_attn.q_proj.weight");
    ck_assert_uint_eq(m->r, 2);
    ck_assert_uint_eq(m->in, 6);
    ck_assert_uint_eq(m->out, 4);
    ck_assert_uint_eq(m->config_r, 2);
    ck_assert_double_eq(m->scale, 2.0);
    ck_assert_int_eq(m->embedding, 0);
    ck_assert_int_eq(m->transpose, 0);
    m = &ad->modules[0];
    ck_assert_int_eq(m->embedding, 1);
    ck_assert_int_eq(m->transpose, 1);
    ck_assert_uint_eq(m->in, 10);
    ck_assert_uint_eq(m->out, 4);
    ck_assert_uint_eq(ad->n_saved, 2);
    ck_assert_str_eq(ad->saved[0].target, "lm_head.weight");
    ck_assert_str_eq(ad->saved[1].target, "score.weight");
    ck_assert_str_eq(ad->saved[1].t->name, PFX "score.modules_to_save.default.weight");

    lora_report *rep;
    ck_assert_msg(lora_inspect(ad, NULL, &rep, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(rep->n_copies, 2);
    ck_assert_uint_eq(rep->lora_params, 3 * (12 + 8) + (20 + 8));
    ck_assert_uint_eq(rep->saved_params, 12 + 40);
    ck_assert_uint_eq(rep->n_untargeted, 0);
    ck_assert_uint_eq(rep->n_groups, 1);
    ck_assert_uint_eq(rep->n_problems, 0);
    lora_report_free(rep);

    /* bind: embeddings [num_embeddings, dim], Linear [out, in], saved same shape */
    char *bd;
    const tdef b[] = {
        {"model.embed_tokens.weight", 10, 4, 1},
        {"model.layers.0.self_attn.q_proj.weight", 4, 6, 1},
        {"model.layers.0.self_attn.v_proj.weight", 4, 6, 1},
        {"model.layers.1.self_attn.q_proj.weight", 4, 6, 1},
        {"score.weight", 3, 4, 1},
        {"lm_head.weight", 10, 4, 1},
    };
    lora_ckpt *ck = mk_base(&bd, b, sizeof b / sizeof b[0]);
    ck_assert_msg(lora_adapter_bind(ad, ck, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(ad->modules[0].transpose, 1);
    ck_assert_int_eq(ad->modules[1].transpose, 0);
    lora_ckpt_close(ck);
    rm(bd);
    lora_adapter_free(ad);
    rm(d);
}
END_TEST

START_TEST(test_scales)
{
    const tdef t[] = {
        {L0 "q_proj.lora_A.weight", 4, 6, 0.1f}, {L0 "q_proj.lora_B.weight", 8, 4, 0.01f},
        {L0 "v_proj.lora_A.weight", 2, 6, 0.1f}, {L0 "v_proj.lora_B.weight", 8, 2, 0.01f},
        {L0 "k_proj.lora_A.weight", 2, 6, 0.1f}, {L0 "k_proj.lora_B.weight", 8, 2, 0.01f},
    };
    lora_adapter *ad;
    lora_error e;
    /* rsLoRA: alpha / sqrt(r); rank_pattern and alpha_pattern per module */
    char *d = mk_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":8,\"use_rslora\":true,"
                         "\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\"],"
                         "\"rank_pattern\":{\"q_proj\":4},"
                         "\"alpha_pattern\":{\"model.layers.0.self_attn.v_proj\":32}}",
                         t, 6);
    ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
    const lora_module *q = find_module(ad, "model.layers.0.self_attn.q_proj");
    const lora_module *v = find_module(ad, "model.layers.0.self_attn.v_proj");
    const lora_module *k = find_module(ad, "model.layers.0.self_attn.k_proj");
    ck_assert_ptr_nonnull(q);
    ck_assert_uint_eq(q->r, 4);
    ck_assert_uint_eq(q->config_r, 4);
    ck_assert_double_eq(q->scale, 8.0 / 2.0);           /* 8 / sqrt(4) */
    ck_assert_double_eq(v->alpha, 32);
    ck_assert_double_eq(v->scale, 32.0 / sqrt(2.0));
    ck_assert_double_eq(k->scale, 8.0 / sqrt(2.0));
    lora_report *rep;
    ck_assert_int_eq(lora_inspect(ad, NULL, &rep, &e), 0);
    ck_assert_uint_eq(rep->n_groups, 3);
    ck_assert_uint_eq(rep->n_errors, 0);
    lora_report_free(rep);
    lora_adapter_free(ad);
    rm(d);

    /* plain alpha / r */
    d = mk_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":8,"
                   "\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\"],"
                   "\"rank_pattern\":{\"q_proj\":4}}", t, 6);
    ck_assert_int_eq(lora_adapter_open(d, &ad, &e), 0);
    ck_assert_double_eq(find_module(ad, "model.layers.0.self_attn.q_proj")->scale, 2.0);
    ck_assert_double_eq(find_module(ad, "model.layers.0.self_attn.k_proj")->scale, 4.0);
    lora_adapter_free(ad);
    rm(d);

    /* tensors of rank 4 where the config says 2: loads, inspect reports,
     * bind refuses */
    d = mk_adapter(CFG(""), t, 2);
    ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(ad->modules[0].r, 4);
    ck_assert_uint_eq(ad->modules[0].config_r, 2);
    ck_assert_int_eq(lora_inspect(ad, NULL, &rep, &e), 0);
    ck_assert_uint_eq(rep->n_errors, 1);
    ck_assert_ptr_nonnull(strstr(rep->problems[0].msg, "rank 4"));
    lora_report_free(rep);
    char *bd;
    const tdef b[] = {{"model.layers.0.self_attn.q_proj.weight", 8, 6, 1}};
    lora_ckpt *ck = mk_base(&bd, b, 1);
    ck_assert_int_eq(lora_adapter_bind(ad, ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "config gives r=2"));
    lora_ckpt_close(ck);
    rm(bd);
    lora_adapter_free(ad);
    rm(d);
}
END_TEST

START_TEST(test_refusals)
{
    const tdef ab[] = {{L0 "q_proj.lora_A.weight", 2, 6, 0.1f},
                       {L0 "q_proj.lora_B.weight", 4, 2, 0.1f}};
    expect_refused("{\"peft_type\":\"IA3\"}", ab, 2, "IA3");
    expect_refused(CFG(",\"use_dora\":true"), ab, 2, "DoRA");
    expect_refused(CFG(",\"lora_bias\":true"), ab, 2, "lora_bias");
    expect_refused("{not json", ab, 2, "invalid JSON");
    /* A without B, B without A: the message names the module */
    expect_refused(CFG(""), ab, 1, "model.layers.0.self_attn.q_proj: has lora_A but no lora_B");
    expect_refused(CFG(""), ab + 1, 1, "model.layers.0.self_attn.q_proj: has lora_B but no lora_A");
    const tdef dora[] = {ab[0], ab[1], {L0 "q_proj.lora_magnitude_vector", 4, 0, 1}};
    expect_refused(CFG(""), dora, 3, "DoRA");
    const tdef lb[] = {ab[0], ab[1], {L0 "q_proj.lora_B.bias", 4, 0, 1}};
    expect_refused(CFG(""), lb, 3, "lora_bias");
    const tdef unk[] = {ab[0], ab[1], {PFX "foo.weight", 4, 0, 1}};
    expect_refused(CFG(""), unk, 3, "cannot classify");
    const tdef rk[] = {{L0 "q_proj.lora_A.weight", 2, 6, 0.1f},
                       {L0 "q_proj.lora_B.weight", 4, 3, 0.1f}};
    expect_refused(CFG(""), rk, 2, "disagree on the rank");
    const tdef vec[] = {{L0 "q_proj.lora_A.weight", 2, 0, 0.1f},
                        {L0 "q_proj.lora_B.weight", 4, 2, 0.1f}};
    expect_refused(CFG(""), vec, 2, "matrices");
    const tdef dup[] = {ab[0], ab[1], {L0 "q_proj.lora_A.default.weight", 2, 6, 0.1f}};
    expect_refused(CFG(""), dup, 3, "two lora_A");
    const tdef mix[] = {ab[0], {L0 "q_proj.lora_embedding_B", 4, 2, 0.1f}};
    expect_refused(CFG(""), mix, 2, "both");
    expect_refused(CFG(",\"rank_pattern\":{\"(q\":4}"), ab, 2, "regular expression");
    const tdef copy_only[] = {{PFX "m.q.base_layer.weight", 4, 6, 1}};
    expect_refused(CFG(""), copy_only, 1, "no LoRA tensors");

    /* adapter_model.bin only */
    lora_adapter *ad = NULL;
    lora_error e;
    char *d = tu_tmpdir();
    char *p = tu_path(d, "adapter_config.json");
    tu_write(p, CFG(""), strlen(CFG("")));
    free(p);
    p = tu_path(d, "adapter_model.bin");
    tu_write(p, "PK\3\4", 4);
    free(p);
    ck_assert_int_eq(lora_adapter_open(d, &ad, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "convert it to safetensors"));
    /* not a folder; a folder without files */
    p = tu_path(d, "adapter_config.json");
    ck_assert_int_eq(lora_adapter_open(p, &ad, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "not an adapter folder"));
    free(p);
    p = tu_path(d, "nope");
    ck_assert_int_eq(lora_adapter_open(p, &ad, &e), LORA_EINPUT);
    free(p);
    rm(d);
    /* a safetensors file that is not one */
    d = tu_tmpdir();
    p = tu_path(d, "adapter_config.json");
    tu_write(p, CFG(""), strlen(CFG("")));
    free(p);
    p = tu_path(d, "adapter_model.safetensors");
    tu_write(p, "\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10);
    free(p);
    ck_assert_int_eq(lora_adapter_open(d, &ad, &e), LORA_EINPUT);
    ck_assert_ptr_null(ad);
    rm(d);
}
END_TEST

START_TEST(test_bind)
{
    /* GPT-2 style: Conv1D [in, out] bases, hub spelling without "transformer." */
    const tdef t[] = {
        {PFX "transformer.h.0.attn.c_attn.lora_A.weight", 2, 4, 0.1f},
        {PFX "transformer.h.0.attn.c_attn.lora_B.weight", 12, 2, 0.1f},
        {PFX "transformer.h.0.attn.c_proj.lora_A.weight", 2, 4, 0.1f},
        {PFX "transformer.h.0.attn.c_proj.lora_B.weight", 4, 2, 0.1f},
        {PFX "transformer.h.0.mlp.c_proj.lora_A.weight", 2, 16, 0.1f},
        {PFX "transformer.h.0.mlp.c_proj.lora_B.weight", 4, 2, 0.1f},
    };
    const char *cfg = "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,\"fan_in_fan_out\":false,"
                      "\"target_modules\":[\"c_attn\",\"c_proj\"]}";
    char *d = mk_adapter(cfg, t, 6);
    lora_adapter *ad;
    lora_error e;
    ck_assert_int_eq(lora_adapter_open(d, &ad, &e), 0);
    /* the config says false: the guess before binding follows it */
    ck_assert_int_eq(ad->modules[0].transpose, 0);
    char *bd;
    const tdef hub[] = {{"h.0.attn.c_attn.weight", 4, 12, 1},
                        {"h.0.attn.c_proj.weight", 4, 4, 1},
                        {"h.0.mlp.c_proj.weight", 16, 4, 1},
                        {"wte.weight", 8, 4, 1}};
    lora_ckpt *ck = mk_base(&bd, hub, 4);
    ck_assert_msg(lora_adapter_bind(ad, ck, &e) == 0, "%s", e.msg);
    for (size_t i = 0; i < 3; i++)
        ck_assert_msg(ad->modules[i].transpose == 1, "%s", ad->modules[i].name);
    ck_assert_str_eq(ad->modules[0].target, "h.0.attn.c_attn.weight");
    lora_ckpt_close(ck);
    rm(bd);

    /* a base in Linear layout: c_attn is [out, in]; shapes decide */
    const tdef lin[] = {{"transformer.h.0.attn.c_attn.weight", 12, 4, 1},
                        {"transformer.h.0.attn.c_proj.weight", 4, 4, 1},
                        {"transformer.h.0.mlp.c_proj.weight", 4, 16, 1}};
    ck = mk_base(&bd, lin, 3);
    ck_assert_msg(lora_adapter_bind(ad, ck, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(ad->modules[0].transpose, 0);
    ck_assert_int_eq(ad->modules[2].transpose, 0);
    ck_assert_str_eq(ad->modules[0].target, "transformer.h.0.attn.c_attn.weight");
    lora_ckpt_close(ck);
    rm(bd);

    /* shape mismatch: the message names the module and both shapes */
    const tdef wrong[] = {{"h.0.attn.c_attn.weight", 4, 9, 1},
                          {"h.0.attn.c_proj.weight", 4, 4, 1},
                          {"h.0.mlp.c_proj.weight", 16, 4, 1}};
    ck = mk_base(&bd, wrong, 3);
    ck_assert_int_eq(lora_adapter_bind(ad, ck, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "transformer.h.0.attn.c_attn") && strstr(e.msg, "[12, 4]") &&
                      strstr(e.msg, "[4, 9]"),
                  "%s", e.msg);
    lora_report *rep;
    lora_inspect_opts io = {.base = ck};
    ck_assert_int_eq(lora_inspect(ad, &io, &rep, &e), 0);
    ck_assert_uint_eq(rep->n_errors, 1);
    ck_assert_str_eq(rep->problems[0].where, "transformer.h.0.attn.c_attn");
    lora_report_free(rep);
    lora_ckpt_close(ck);
    rm(bd);

    /* missing module */
    const tdef miss[] = {{"h.0.attn.c_attn.weight", 4, 12, 1}};
    ck = mk_base(&bd, miss, 1);
    ck_assert_int_eq(lora_adapter_bind(ad, ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "base has no tensor"));
    io.base = ck;
    ck_assert_int_eq(lora_inspect(ad, &io, &rep, &e), 0);
    ck_assert_uint_eq(rep->n_errors, 2);
    lora_report_free(rep);
    lora_ckpt_close(ck);
    rm(bd);
    lora_adapter_free(ad);
    rm(d);

    /* square Linear module, not a Conv1D name: orientation from the other modules */
    const tdef sq[] = {{L0 "o_proj.lora_A.weight", 2, 4, 0.1f},
                       {L0 "o_proj.lora_B.weight", 4, 2, 0.1f},
                       {L0 "q_proj.lora_A.weight", 2, 4, 0.1f},
                       {L0 "q_proj.lora_B.weight", 8, 2, 0.1f}};
    d = mk_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,\"fan_in_fan_out\":true,"
                   "\"target_modules\":[\"q_proj\",\"o_proj\"]}", sq, 4);
    ck_assert_int_eq(lora_adapter_open(d, &ad, &e), 0);
    const tdef lb[] = {{"model.layers.0.self_attn.o_proj.weight", 4, 4, 1},
                       {"model.layers.0.self_attn.q_proj.weight", 8, 4, 1}};
    ck = mk_base(&bd, lb, 2);
    ck_assert_msg(lora_adapter_bind(ad, ck, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(find_module(ad, "model.layers.0.self_attn.o_proj")->transpose, 0);
    ck_assert_int_eq(find_module(ad, "model.layers.0.self_attn.q_proj")->transpose, 0);
    lora_ckpt_close(ck);
    rm(bd);
    /* the same modules under a "model."-less spelling */
    const tdef nb[] = {{"layers.0.self_attn.o_proj.weight", 4, 4, 1},
                       {"layers.0.self_attn.q_proj.weight", 4, 8, 1}};
    ck = mk_base(&bd, nb, 2);
    ck_assert_msg(lora_adapter_bind(ad, ck, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(find_module(ad, "model.layers.0.self_attn.q_proj")->target,
                     "layers.0.self_attn.q_proj.weight");
    ck_assert_int_eq(find_module(ad, "model.layers.0.self_attn.q_proj")->transpose, 1);
    ck_assert_int_eq(find_module(ad, "model.layers.0.self_attn.o_proj")->transpose, 1);
    lora_ckpt_close(ck);
    rm(bd);
    lora_adapter_free(ad);
    rm(d);
}
END_TEST

START_TEST(test_bind_saved_and_embedding)
{
    const tdef t[] = {{PFX "score.weight", 3, 4, 0.5f},
                      {PFX "model.embed_tokens.lora_embedding_A", 2, 10, 0.1f},
                      {PFX "model.embed_tokens.lora_embedding_B", 4, 2, 0.1f}};
    char *d = mk_adapter("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,"
                         "\"target_modules\":[\"embed_tokens\"],\"modules_to_save\":[\"score\"]}",
                         t, 3);
    lora_adapter *ad;
    lora_error e;
    ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
    char *bd;
    const tdef good[] = {{"model.embed_tokens.weight", 10, 4, 1}, {"score.weight", 3, 4, 1}};
    lora_ckpt *ck = mk_base(&bd, good, 2);
    ck_assert_msg(lora_adapter_bind(ad, ck, &e) == 0, "%s", e.msg);
    lora_ckpt_close(ck);
    rm(bd);
    const tdef emb_t[] = {{"model.embed_tokens.weight", 4, 10, 1}, {"score.weight", 3, 4, 1}};
    ck = mk_base(&bd, emb_t, 2);
    ck_assert_int_eq(lora_adapter_bind(ad, ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "embedding"));
    lora_ckpt_close(ck);
    rm(bd);
    const tdef bad_saved[] = {{"model.embed_tokens.weight", 10, 4, 1}, {"score.weight", 4, 3, 1}};
    ck = mk_base(&bd, bad_saved, 2);
    ck_assert_int_eq(lora_adapter_bind(ad, ck, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "score.weight") && strstr(e.msg, "[3, 4]") && strstr(e.msg, "[4, 3]"),
                  "%s", e.msg);
    lora_ckpt_close(ck);
    rm(bd);
    const tdef no_saved[] = {{"model.embed_tokens.weight", 10, 4, 1}};
    ck = mk_base(&bd, no_saved, 1);
    ck_assert_int_eq(lora_adapter_bind(ad, ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "no such tensor"));
    lora_ckpt_close(ck);
    rm(bd);
    lora_adapter_free(ad);
    rm(d);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Inspect problems                                                    */
/* ------------------------------------------------------------------ */

START_TEST(test_inspect_problems)
{
    const tdef t[] = {{L0 "q_proj.lora_A.weight", 2, 6, 0.1f},
                      {L0 "q_proj.lora_B.weight", 4, 2, NAN},
                      {L0 "v_proj.lora_A.weight", 2, 6, 0.1f},
                      {L0 "v_proj.lora_B.weight", 4, 2, 0.0f},
                      {L0 "k_proj.lora_A.weight", 2, 6, INFINITY},
                      {L0 "k_proj.lora_B.weight", 4, 2, 0.1f}};
    char *d = mk_adapter(CFG(""), t, 6);
    lora_adapter *ad;
    lora_error e;
    ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
    lora_report *rep;
    ck_assert_int_eq(lora_inspect(ad, NULL, &rep, &e), 0);
    /* k_proj not in target_modules (warning), Inf in k's A, NaN in q's B,
     * zero v B (warning) */
    ck_assert_uint_eq(rep->n_errors, 2);
    ck_assert_uint_eq(rep->n_warnings, 2);
    ck_assert_uint_eq(rep->n_untargeted, 1);
    int saw_zero = 0, saw_nan = 0;
    for (size_t i = 0; i < rep->n_problems; i++) {
        saw_zero |= strstr(rep->problems[i].msg, "all zeros") != NULL &&
                    rep->problems[i].severity == LORA_SEV_WARNING;
        saw_nan |= strstr(rep->problems[i].msg, "8 NaN/Inf") != NULL &&
                   strstr(rep->problems[i].msg, "q_proj.lora_B") != NULL;
    }
    ck_assert(saw_zero && saw_nan);
    char *js = lora_report_json(rep, 1, &e);
    ck_assert_ptr_nonnull(js);
    ck_assert_ptr_nonnull(strstr(js, "\"trainable_parameters\": 60"));
    ck_assert_ptr_nonnull(strstr(js, "\"severity\": \"warning\""));
    free(js);
    lora_report_free(rep);
    lora_inspect_opts io = {.strict = 1};
    ck_assert_int_eq(lora_inspect(ad, &io, &rep, &e), 0);
    ck_assert_uint_eq(rep->n_errors, 4);
    ck_assert_uint_eq(rep->n_warnings, 0);
    lora_report_free(rep);
    io.no_scan = 1;
    io.strict = 0;
    ck_assert_int_eq(lora_inspect(ad, &io, &rep, &e), 0);
    ck_assert_uint_eq(rep->n_errors, 0);
    lora_report_free(rep);
    lora_adapter_free(ad);
    rm(d);
}
END_TEST

START_TEST(test_inspect_targets)
{
    const tdef t[] = {{L0 "q_proj.lora_A.weight", 2, 6, 0.1f},
                      {L0 "q_proj.lora_B.weight", 4, 2, 0.1f},
                      {PFX "model.layers.1.mlp.down_proj.lora_A.weight", 2, 6, 0.1f},
                      {PFX "model.layers.1.mlp.down_proj.lora_B.weight", 4, 2, 0.1f}};
    static const struct { const char *cfg; size_t untargeted, n_targets, first; } cases[] = {
        /* null: PEFT's defaults, unknown here: nothing reported */
        {"{\"peft_type\":\"LORA\",\"r\":2}", 0, 0, 0},
        {"{\"peft_type\":\"LORA\",\"r\":2,\"target_modules\":[\"q_proj\"]}", 1, 1, 1},
        {"{\"peft_type\":\"LORA\",\"r\":2,\"target_modules\":\"all-linear\"}", 0, 1, 2},
        {"{\"peft_type\":\"LORA\",\"r\":2,\"target_modules\":\".*\\\\.(q|down)_proj\"}", 0, 1, 2},
        {"{\"peft_type\":\"LORA\",\"r\":2,\"target_modules\":\"q_proj\"}", 2, 1, 0},
        {"{\"peft_type\":\"LORA\",\"r\":2,\"target_modules\":[\"q_proj\",\"mlp.down_proj\"],"
         "\"exclude_modules\":[\"layers.1.mlp.down_proj\"]}", 1, 2, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *d = mk_adapter(cases[i].cfg, t, 4);
        lora_adapter *ad;
        lora_report *rep;
        lora_error e;
        ck_assert_msg(lora_adapter_open(d, &ad, &e) == 0, "%s", e.msg);
        ck_assert_int_eq(lora_inspect(ad, NULL, &rep, &e), 0);
        ck_assert_msg(rep->n_untargeted == cases[i].untargeted, "%s: %zu untargeted",
                      cases[i].cfg, rep->n_untargeted);
        /* and one for a target_modules regex that selects nothing */
        ck_assert_uint_eq(rep->n_warnings, cases[i].untargeted + (i == 4));
        ck_assert_uint_eq(rep->n_targets, cases[i].n_targets);
        if (rep->n_targets)
            ck_assert_uint_eq(rep->targets[0].modules, cases[i].first);
        lora_report_free(rep);
        lora_adapter_free(ad);
        rm(d);
    }
}
END_TEST

/* ------------------------------------------------------------------ */
/* tests/mkfixture: its documented contract                            */
/* ------------------------------------------------------------------ */

static double rms_f32(const lora_tensor *t)
{
    float *v = malloc(t->numel * sizeof *v);
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(lora_decode_f32(t->dtype, t->data, v, t->numel), 0);
    double s = 0;
    for (uint64_t i = 0; i < t->numel; i++)
        s += (double)v[i] * v[i];
    free(v);
    return sqrt(s / (double)t->numel);
}

START_TEST(test_mkfixture_contract)
{
    const char *top = getenv("TOP_BUILDDIR");
    if (!top) {
        fprintf(stderr, "note: TOP_BUILDDIR unset, mkfixture contract not checked\n");
        return;
    }
    char *d = tu_tmpdir();
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "'%s/tests/mkfixture' llama '%s/f' --hidden 128 --intermediate 344 --heads 4 "
             "--kv-heads 2 --rank 8 --alpha 32 --targets q_proj,k_proj,down_proj --seed 3",
             top, d);
    ck_assert_int_eq(system(cmd), 0);
    char *ap = tu_path(d, "f/adapter"), *bp = tu_path(d, "f/base");
    lora_adapter *ad;
    lora_ckpt *ck;
    lora_error e;
    ck_assert_msg(lora_adapter_open(ap, &ad, &e) == 0, "%s", e.msg);
    ck_assert_msg(lora_ckpt_open(bp, &ck, &e) == 0, "%s", e.msg);
    ck_assert_msg(lora_adapter_bind(ad, ck, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(ad->n_modules, 6);
    ck_assert_uint_eq(lora_ckpt_count(ck), 1 + 2 * (2 + 7) + 2);
    const lora_tensor *k = lora_ckpt_find(ck, "model.layers.1.self_attn.k_proj.weight", NULL);
    ck_assert_ptr_nonnull(k);
    ck_assert_uint_eq(k->shape[0], 64); /* kv_heads * head_dim */
    ck_assert_uint_eq(k->shape[1], 128);
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *m = &ad->modules[i];
        const lora_tensor *w = lora_ckpt_find(ck, m->target, NULL);
        ck_assert_ptr_nonnull(w);
        ck_assert_int_eq(m->transpose, 0);
        /* scale·B·A in double, plain loops */
        float *A = malloc(m->A->numel * 4), *B = malloc(m->B->numel * 4);
        lora_decode_f32(m->A->dtype, m->A->data, A, m->A->numel);
        lora_decode_f32(m->B->dtype, m->B->data, B, m->B->numel);
        double ss = 0, amax = 0;
        for (uint64_t a = 0; a < m->A->numel; a++)
            amax = fmax(amax, fabs(A[a]));
        for (uint64_t r = 0; r < m->out; r++)
            for (uint64_t c = 0; c < m->in; c++) {
                double v = 0;
                for (uint64_t q = 0; q < m->r; q++)
                    v += (double)B[r * m->r + q] * A[q * m->in + c];
                v *= m->scale;
                ss += v * v;
            }
        free(A);
        free(B);
        double ratio = sqrt(ss / (double)(m->out * m->in)) / rms_f32(w);
        ck_assert_msg(ratio > 0.008 && ratio < 0.012, "%s: rms(dW)/rms(W) = %g", m->name, ratio);
        ck_assert_msg(amax <= 1.0 / sqrt((double)m->in) && amax > 0.9 / sqrt((double)m->in),
                      "%s: max |A| = %g", m->name, amax);
        ck_assert_msg(fabs(rms_f32(w) - 0.02) < 0.001, "%s: rms(W) = %g", m->name, rms_f32(w));
    }
    lora_ckpt_close(ck);
    lora_adapter_free(ad);
    /* config.json names the architecture and its sizes */
    char *cp = tu_path(d, "f/base/config.json");
    size_t n;
    char *txt = tu_read(cp, &n);
    ck_assert_ptr_nonnull(strstr(txt, "\"model_type\": \"llama\""));
    ck_assert_ptr_nonnull(strstr(txt, "\"num_key_value_heads\": 2"));
    ck_assert_ptr_nonnull(strstr(txt, "\"intermediate_size\": 344"));
    free(txt);
    free(cp);
    free(ap);
    free(bp);
    rm(d);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Real adapters (fixtures/real/INDEX.md)                              */
/* ------------------------------------------------------------------ */

static lora_adapter *open_real(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "real/%s", name);
    char *p = tu_fixture(rel);
    ck_assert_ptr_nonnull(p);
    lora_adapter *ad;
    lora_error e;
    ck_assert_msg(lora_adapter_open(p, &ad, &e) == 0, "%s: %s", name, e.msg);
    free(p);
    return ad;
}

static int count_suffix(const lora_adapter *ad, const char *suf)
{
    int n = 0;
    size_t m = strlen(suf);
    for (size_t i = 0; i < ad->n_modules; i++) {
        size_t k = strlen(ad->modules[i].name);
        n += k >= m && strcmp(ad->modules[i].name + k - m, suf) == 0;
    }
    return n;
}

START_TEST(test_real_tigrinya)
{
    lora_adapter *ad = open_real("gpt2-tigrinya-lora");
    ck_assert_uint_eq(ad->r, 8);
    ck_assert_double_eq(ad->alpha, 32);
    ck_assert_int_eq(ad->fan_in_fan_out, 1);
    ck_assert_uint_eq(ad->n_modules, 36);
    ck_assert_uint_eq(lora_st_count(ad->st), 72);
    ck_assert_int_eq(count_suffix(ad, ".attn.c_attn"), 12);
    ck_assert_int_eq(count_suffix(ad, ".attn.c_proj"), 12);
    ck_assert_int_eq(count_suffix(ad, ".mlp.c_proj"), 12);
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *m = &ad->modules[i];
        ck_assert_uint_eq(m->r, 8);
        ck_assert_double_eq(m->scale, 4.0);
        ck_assert_int_eq(m->A->dtype, LORA_DT_F32);
        ck_assert(m->in == 768 || m->in == 3072);
        ck_assert(m->out == 2304 || m->out == 768);
    }
    lora_report *rep;
    lora_error e;
    ck_assert_int_eq(lora_inspect(ad, NULL, &rep, &e), 0);
    /* bare c_proj matches attn.c_proj and mlp.c_proj */
    ck_assert_uint_eq(rep->n_targets, 2);
    ck_assert_str_eq(rep->targets[1].entry, "c_proj");
    ck_assert_uint_eq(rep->targets[1].modules, 24);
    ck_assert_uint_eq(rep->targets[0].modules, 12);
    ck_assert_uint_eq(rep->n_problems, 0);
    ck_assert_uint_eq(rep->n_dtypes, 1);
    lora_report_free(rep);

    /* binds to a GPT-2 base of the hub's shapes and spelling, transposed */
    char *bd = tu_tmpdir();
    char *p = tu_path(bd, "model.safetensors");
    lora_stw *w;
    ck_assert_int_eq(lora_stw_new(p, &w, &e), 0);
    char nm[64];
    static const char *const mod[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
    const uint64_t shp[4][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};
    for (int l = 0; l < 12; l++)
        for (int k = 0; k < 4; k++) {
            snprintf(nm, sizeof nm, "h.%d.%s.weight", l, mod[k]);
            ck_assert_int_eq(lora_stw_declare(w, nm, LORA_DT_BF16, 2, shp[k], &e), 0);
        }
    ck_assert_int_eq(lora_stw_start(w, &e), 0);
    size_t zn = 1 << 20;
    void *zero = calloc(1, zn);
    for (int l = 0; l < 12; l++)
        for (int k = 0; k < 4; k++) {
            snprintf(nm, sizeof nm, "h.%d.%s.weight", l, mod[k]);
            uint64_t bytes = shp[k][0] * shp[k][1] * 2;
            for (uint64_t o = 0; o < bytes; o += zn)
                ck_assert_int_eq(lora_stw_write(w, nm, o, zero, bytes - o < zn ? bytes - o : zn, &e), 0);
        }
    free(zero);
    ck_assert_msg(lora_stw_commit(w, &e) == 0, "%s", e.msg);
    lora_ckpt *ck;
    ck_assert_int_eq(lora_ckpt_open(bd, &ck, &e), 0);
    ck_assert_msg(lora_adapter_bind(ad, ck, &e) == 0, "%s", e.msg);
    for (size_t i = 0; i < ad->n_modules; i++) {
        ck_assert_int_eq(ad->modules[i].transpose, 1);
        ck_assert(strncmp(ad->modules[i].target, "h.", 2) == 0);
    }
    lora_inspect_opts io = {.base = ck};
    ck_assert_int_eq(lora_inspect(ad, &io, &rep, &e), 0);
    ck_assert_uint_eq(rep->n_problems, 0);
    ck_assert_uint_eq(rep->adapted_params, 12 * (768 * 2304 + 768 * 768 + 3072 * 768));
    lora_report_free(rep);
    lora_ckpt_close(ck);
    free(p);
    rm(bd);
    lora_adapter_free(ad);
}
END_TEST

START_TEST(test_real_qwen)
{
    lora_adapter *ad = open_real("qwen2.5-0.5b-qv");
    ck_assert_str_eq(ad->base_model, "Qwen/Qwen2.5-0.5B-Instruct");
    ck_assert_uint_eq(ad->r, 8);
    ck_assert_double_eq(ad->alpha, 16);
    ck_assert_uint_eq(ad->n_modules, 48);
    ck_assert_int_eq(count_suffix(ad, ".q_proj"), 24);
    ck_assert_int_eq(count_suffix(ad, ".v_proj"), 24);
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *m = &ad->modules[i];
        int q = strstr(m->name, "q_proj") != NULL;
        ck_assert_uint_eq(m->B->shape[0], q ? 896 : 128);
        ck_assert_uint_eq(m->B->shape[1], 8);
        ck_assert_uint_eq(m->in, 896);
        ck_assert_double_eq(m->scale, 2.0);
        ck_assert_int_eq(m->transpose, 0);
    }
    ck_assert_ptr_nonnull(find_module(ad, "model.layers.23.self_attn.v_proj"));
    lora_adapter_free(ad);
}
END_TEST

START_TEST(test_real_opt)
{
    lora_adapter *ad = open_real("opt125m-bf16");
    ck_assert_str_eq(ad->peft_version, "0.18.1");
    ck_assert_uint_eq(ad->r, 16);
    ck_assert_double_eq(ad->alpha, 32);
    ck_assert_uint_eq(ad->n_modules, 24);
    for (size_t i = 0; i < ad->n_modules; i++) {
        ck_assert_int_eq(ad->modules[i].A->dtype, LORA_DT_BF16);
        ck_assert_int_eq(ad->modules[i].B->dtype, LORA_DT_BF16);
    }
    lora_adapter_free(ad);
}
END_TEST

START_TEST(test_real_seqcls)
{
    lora_adapter *ad = open_real("gpt2-seqcls-r2");
    ck_assert_uint_eq(ad->r, 2);
    ck_assert_double_eq(ad->alpha, 16);
    ck_assert_str_eq(ad->task_type, "SEQ_CLS");
    ck_assert_uint_eq(ad->n_modules, 12);
    ck_assert_uint_eq(ad->n_saved, 1);
    ck_assert_str_eq(ad->saved[0].target, "score.weight");
    ck_assert_int_eq(ad->saved[0].t->ndim, 2);
    ck_assert_uint_eq(ad->saved[0].t->shape[0], 4);
    ck_assert_uint_eq(ad->saved[0].t->shape[1], 768);
    ck_assert_double_eq(ad->modules[0].scale, 8.0);
    lora_adapter_free(ad);
}
END_TEST

START_TEST(test_real_truncated)
{
    char *p = tu_fixture("real/x-qwen25vl-truncated");
    lora_adapter *ad = NULL;
    lora_error e;
    ck_assert_int_eq(lora_adapter_open(p, &ad, &e), LORA_EINPUT);
    ck_assert_ptr_null(ad);
    ck_assert_msg(strstr(e.msg, "truncated") || strstr(e.msg, "past the end"), "%s", e.msg);
    free(p);
}
END_TEST

/* DoRA (issue 16.1): the magnitude vector in the form PEFT saves and in
 * the in-memory forms, attached to its module; refused when it does not
 * fit (shape, NaN, two of them, use_dora disagreeing, embeddings);
 * lora_adapter_bind accepts it (issue 16: dora.c merges it). */
START_TEST(test_dora)
{
    static const char *forms[] = {"lora_magnitude_vector", "lora_magnitude_vector.weight",
                                  "lora_magnitude_vector.default.weight",
                                  "lora_magnitude_vector.default"};
    char key[256];
    for (size_t f = 0; f < 4; f++) {
        snprintf(key, sizeof key, L0 "q_proj.%s", forms[f]);
        const tdef t[] = {{L0 "q_proj.lora_A.weight", 2, 6, 0.1f},
                          {L0 "q_proj.lora_B.weight", 4, 2, 0.1f},
                          {key, 4, 0, 0.5f}};
        char *d = mk_adapter(CFG(",\"use_dora\":true"), t, 3);
        lora_adapter *ad;
        lora_error e;
        ck_assert_msg(lora_adapter_open(d, &ad, &e) == LORA_OK, "%s: %s", forms[f], e.msg);
        ck_assert_int_eq(ad->use_dora, 1);
        ck_assert_uint_eq(ad->n_modules, 1);
        const lora_module *m = &ad->modules[0];
        ck_assert_str_eq(m->name, "model.layers.0.self_attn.q_proj");
        ck_assert_ptr_nonnull(m->magnitude);
        ck_assert_str_eq(m->magnitude->name, key);
        lora_report *rep;
        ck_assert_int_eq(lora_inspect(ad, NULL, &rep, &e), LORA_OK);
        ck_assert_uint_eq(rep->n_dora, 1);
        ck_assert_uint_eq(rep->dora_params, 4);
        ck_assert(rep->mag_min == 0.5 && rep->mag_max == 2.0); /* 0.5·(1..4) */
        lora_report_free(rep);
        /* bind accepts it (merging is dora.c's, tests/check_dora.c); the
         * magnitudes stay with the module, [out] in the Linear layout */
        const tdef bt[] = {{"model.layers.0.self_attn.q_proj.weight", 4, 6, 0.1f}};
        char *bd;
        lora_ckpt *ck = mk_base(&bd, bt, 1);
        ck_assert_msg(lora_adapter_bind(ad, ck, &e) == LORA_OK, "%s", e.msg);
        ck_assert_ptr_nonnull(m->magnitude);
        ck_assert_int_eq(m->transpose, 0);
        lora_ckpt_close(ck);
        rm(bd);
        lora_adapter_free(ad);
        rm(d);
    }
    const tdef ab[] = {{L0 "q_proj.lora_A.weight", 2, 6, 0.1f},
                       {L0 "q_proj.lora_B.weight", 4, 2, 0.1f}};
    const tdef shape3[] = {ab[0], ab[1], {L0 "q_proj.lora_magnitude_vector", 3, 0, 1}};
    expect_refused(CFG(",\"use_dora\":true"), shape3, 3, "is [3], expected [4]");
    const tdef shape2d[] = {ab[0], ab[1], {L0 "q_proj.lora_magnitude_vector", 1, 4, 1}};
    expect_refused(CFG(",\"use_dora\":true"), shape2d, 3, "expected [4]");
    const tdef nan[] = {ab[0], ab[1], {L0 "q_proj.lora_magnitude_vector", 4, 0, NAN}};
    expect_refused(CFG(",\"use_dora\":true"), nan, 3, "NaN");
    const tdef two[] = {ab[0], ab[1], {L0 "q_proj.lora_magnitude_vector", 4, 0, 1},
                        {L0 "q_proj.lora_magnitude_vector.default.weight", 4, 0, 1}};
    expect_refused(CFG(",\"use_dora\":true"), two, 4, "two lora_magnitude_vector");
    const tdef bad[] = {ab[0], ab[1], {L0 "q_proj.lora_magnitude_vector.foo", 4, 0, 1}};
    expect_refused(CFG(",\"use_dora\":true"), bad, 3, "cannot classify");
    const tdef alone[] = {{L0 "q_proj.lora_magnitude_vector", 4, 0, 1}};
    expect_refused(CFG(",\"use_dora\":true"), alone, 1, "without lora_A and lora_B");
    /* one module with DoRA, one without */
    const tdef half[] = {ab[0], ab[1], {L0 "q_proj.lora_magnitude_vector", 4, 0, 1},
                         {L0 "v_proj.lora_A.weight", 2, 6, 0.1f},
                         {L0 "v_proj.lora_B.weight", 4, 2, 0.1f}};
    expect_refused(CFG(",\"use_dora\":true"), half, 5, "v_proj: use_dora is true but");
    const tdef emb[] = {{PFX "model.embed_tokens.lora_embedding_A", 2, 10, 0.1f},
                        {PFX "model.embed_tokens.lora_embedding_B", 6, 2, 0.1f},
                        {PFX "model.embed_tokens.lora_magnitude_vector", 6, 0, 1}};
    expect_refused("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,\"use_dora\":true,"
                   "\"target_modules\":[\"embed_tokens\"]}", emb, 3, "DoRA on an embedding");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("adapter");
    TCase *tc = tcase_create("synthetic");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_config_fields);
    tcase_add_test(tc, test_config_pattern_order);
    tcase_add_test(tc, test_literal_keys);
    tcase_add_test(tc, test_pattern_caps);
    tcase_add_test(tc, test_foreign_files);
    tcase_add_test(tc, test_seqcls_implicit);
    tcase_add_test(tc, test_inspect_unmatched_keys);
    tcase_add_test(tc, test_config_refusals);
    tcase_add_test(tc, test_key_forms);
    tcase_add_test(tc, test_synthetic_forms);
    tcase_add_test(tc, test_scales);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_dora);
    tcase_add_test(tc, test_bind);
    tcase_add_test(tc, test_bind_saved_and_embedding);
    tcase_add_test(tc, test_inspect_problems);
    tcase_add_test(tc, test_inspect_targets);
    tcase_add_test(tc, test_mkfixture_contract);
    suite_add_tcase(s, tc);
    TCase *real = tcase_create("real");
    tcase_set_timeout(real, 120);
    tcase_add_test(real, test_config_regex_targets);
    tcase_add_test(real, test_config_truncated);
    tcase_add_test(real, test_real_tigrinya);
    tcase_add_test(real, test_real_qwen);
    tcase_add_test(real, test_real_opt);
    tcase_add_test(real, test_real_seqcls);
    tcase_add_test(real, test_real_truncated);
    /* the synthetic tests need no fixtures; the real ones run when present */
    if (tu_fixtures())
        suite_add_tcase(s, real);
    else
        fprintf(stderr, "note: shared fixtures absent, real-adapter tests not run\n");
    return tu_run(s, 0);
}

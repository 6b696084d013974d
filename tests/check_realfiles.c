/*
 * check_realfiles.c - the safetensors reader and checkpoint opener on
 * the real files other people made ($FIXTURES/real, INDEX.md): every
 * adapter opens with the tensor count INDEX.md gives, the truncated
 * one is refused with a message saying how much data is missing, and
 * the Llama-3.2 index without its shards names the missing shard.
 * Skips (exit 77) when the fixtures are absent.
 */
#include "testutil.h"
#include "internal.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

static const struct {
    const char *file;
    size_t tensors;
    lora_dtype dtype;
} real[] = {
    {"real/gpt2-tigrinya-lora/adapter_model.safetensors", 72, LORA_DT_F32},
    {"real/qwen2.5-0.5b-qv/adapter_model.safetensors", 96, LORA_DT_F32},
    {"real/opt125m-bf16/adapter_model.safetensors", 48, LORA_DT_BF16},
    {"real/gpt2-seqcls-r2/adapter_model.safetensors", 25, LORA_DT_F32},
    {"real/base-tiny-gpt2-e16/model.safetensors", 16, LORA_DT_F32},
};

START_TEST(test_real)
{
    char *p = tu_fixture(real[_i].file);
    ck_assert_ptr_nonnull(p);
    lora_st *st;
    lora_error e;
    if (lora_st_open(p, &st, &e) != LORA_OK)
        ck_abort_msg("%s: %s", p, e.msg);
    ck_assert_uint_eq(lora_st_count(st), real[_i].tensors);
    uint64_t data = 0;
    for (size_t i = 0; i < lora_st_count(st); i++) {
        const lora_tensor *t = lora_st_tensor(st, i);
        ck_assert_int_eq(t->dtype, real[_i].dtype);
        ck_assert_ptr_eq(lora_st_find(st, t->name), t);
        data += t->nbytes;
        /* decode the whole tensor: every value is finite in these files */
        float *v = malloc((size_t)t->numel * sizeof *v + 1);
        ck_assert_ptr_nonnull(v);
        ck_assert_int_eq(lora_decode_f32(t->dtype, t->data, v, (size_t)t->numel), LORA_OK);
        for (uint64_t k = 0; k < t->numel; k++)
            ck_assert(v[k] - v[k] == 0.0f);
        free(v);
    }
    ck_assert_uint_eq(8 + lora_st_header_size(st) + data, lora_st_size(st));
    ck_assert_str_eq(lora_st_metadata(st, "format"), "pt");
    lora_st_close(st);
    free(p);
}
END_TEST

START_TEST(test_truncated)
{
    char *p = tu_fixture("real/x-qwen25vl-truncated/adapter_model.safetensors");
    lora_st *st;
    lora_error e;
    ck_assert_int_eq(lora_st_open(p, &st, &e), LORA_EINPUT);
    ck_assert_ptr_null(st);
    ck_assert_ptr_nonnull(strstr(e.msg, "header describes 161480704 bytes of tensor data but "
                                        "the file holds only"));
    ck_assert_ptr_nonnull(strstr(e.msg, p));
    free(p);
    /* the folder holds no model.safetensors; the file itself as a checkpoint */
    p = tu_fixture("real/x-qwen25vl-truncated/adapter_model.safetensors");
    lora_ckpt *ck;
    ck_assert_int_eq(lora_ckpt_open(p, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "161480704"));
    free(p);
}
END_TEST

START_TEST(test_llama_index)
{
    char *d = tu_fixture("real/index-llama3.2-3b-instruct");
    lora_ckpt *ck;
    lora_error e;
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "shard model-00001-of-00002.safetensors is missing"));
    free(d);
    /* the index itself parses: 254 tensors in 2 shards */
    char *ip = tu_fixture("real/index-llama3.2-3b-instruct/model.safetensors.index.json");
    size_t n;
    char *text = tu_read(ip, &n);
    lora_index *ix;
    ck_assert_int_eq(lora_index_parse(text, n, ip, &ix, &e), LORA_OK);
    ck_assert_uint_eq(ix->n, 254);
    ck_assert_uint_eq(ix->nshards, 2);
    ck_assert_str_eq(ix->shard[1], "model-00002-of-00002.safetensors");
    lora_index_free(ix);
    free(text);
    free(ip);
}
END_TEST

START_TEST(test_base_checkpoint)
{
    char *d = tu_fixture("real/base-tiny-gpt2-e16");
    lora_ckpt *ck;
    lora_error e;
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_OK);
    ck_assert_uint_eq(lora_ckpt_count(ck), 16);
    const lora_tensor *t = lora_ckpt_find(ck, "transformer.h.0.attn.c_attn.weight", NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_uint_eq(t->shape[0], 16); /* Conv1D: [in, out] */
    ck_assert_uint_eq(t->shape[1], 48);
    lora_ckpt_close(ck);
    free(d);
}
END_TEST

/* Every folder of fixtures/real, whatever INDEX.md says today: an
 * adapter folder opens and inspects without an error (a negative one,
 * x-*, is refused cleanly); a model folder opens as a checkpoint or is
 * refused naming what is missing or what it holds (GGUF). */
START_TEST(test_every_fixture)
{
    char *root = tu_fixture("real");
    DIR *d = opendir(root);
    ck_assert_ptr_nonnull(d);
    struct dirent *de;
    size_t seen = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char *dir = tu_path(root, de->d_name), *cfg = tu_path(dir, "adapter_config.json");
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            free(dir);
            free(cfg);
            continue;
        }
        seen++;
        lora_error e;
        lora_error_clear(&e);
        int negative = strncmp(de->d_name, "x-", 2) == 0;
        if (stat(cfg, &sb) == 0) {
            lora_adapter *ad = NULL;
            int rc = lora_adapter_open(dir, &ad, &e);
            if (negative) {
                ck_assert_msg(rc == LORA_EINPUT && e.msg[0], "%s: rc %d", de->d_name, rc);
            } else {
                ck_assert_msg(rc == LORA_OK, "%s: %s", de->d_name, e.msg);
                lora_report *rep;
                ck_assert_int_eq(lora_inspect(ad, NULL, &rep, &e), LORA_OK);
                for (size_t i = 0; i < rep->n_problems; i++)
                    ck_abort_msg("%s: %s", de->d_name, rep->problems[i].msg);
                lora_report_free(rep);
                lora_adapter_free(ad);
            }
        } else {
            lora_ckpt *ck = NULL;
            int rc = lora_ckpt_open(dir, &ck, &e);
            if (rc == LORA_OK) {
                ck_assert_uint_gt(lora_ckpt_count(ck), 0);
                lora_ckpt_close(ck);
            } else {
                ck_assert_msg(rc == LORA_EINPUT && (strstr(e.msg, "missing") ||
                                                    strstr(e.msg, "GGUF")),
                              "%s: %s", de->d_name, e.msg);
            }
        }
        free(cfg);
        free(dir);
    }
    closedir(d);
    ck_assert_uint_ge(seen, 8);
    free(root);
}
END_TEST

/* A GGUF model is named as such, by the reader and by the folder opener. */
START_TEST(test_gguf_named)
{
    char *p = tu_fixture("real/gguf-llama2-tiny-random/llama-2-tiny-random.gguf");
    lora_st *st = NULL;
    lora_error e;
    ck_assert_int_eq(lora_st_open(p, &st, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "this is a GGUF file"), "%s", e.msg);
    free(p);
    p = tu_fixture("real/gguf-llama2-tiny-random");
    lora_ckpt *ck = NULL;
    ck_assert_int_eq(lora_ckpt_open(p, &ck, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "llama-2-tiny-random.gguf, a GGUF file"), "%s", e.msg);
    free(p);
}
END_TEST

/* The real SEQ_CLS adapter (GPT-2, LoRA on c_attn, a score head saved
 * whole) merged into a GPT-2-shaped base that has a score head: every
 * c_attn is W0 + s·(B·A)ᵀ (Conv1D) at sampled elements against a plain
 * loop in double, and score.weight is the adapter's, value for value. */
START_TEST(test_seqcls_merge)
{
    char *ap = tu_fixture("real/gpt2-seqcls-r2");
    lora_adapter *ad = NULL;
    lora_error e;
    ck_assert_msg(lora_adapter_open(ap, &ad, &e) == LORA_OK, "%s", e.msg);
    char *tmp = tu_tmpdir(), *in = tu_path(tmp, "base.safetensors"),
         *out = tu_path(tmp, "merged.safetensors");
    lora_stw *w;
    ck_assert_int_eq(lora_stw_new(in, &w, &e), 0);
    char name[64];
    uint64_t cs[2] = {768, 2304}, ss[2] = {4, 768};
    for (int l = 0; l < 12; l++) {
        snprintf(name, sizeof name, "h.%d.attn.c_attn.weight", l);
        ck_assert_int_eq(lora_stw_declare(w, name, LORA_DT_F32, 2, cs, &e), 0);
    }
    ck_assert_int_eq(lora_stw_declare(w, "score.weight", LORA_DT_F32, 2, ss, &e), 0);
    ck_assert_int_eq(lora_stw_start(w, &e), 0);
    float *v = malloc(768 * 2304 * sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (size_t k = 0; k < 768 * 2304; k++)
        v[k] = 0.01f * (float)(k % 97) - 0.5f;
    for (int l = 0; l < 12; l++) {
        snprintf(name, sizeof name, "h.%d.attn.c_attn.weight", l);
        ck_assert_int_eq(lora_stw_write(w, name, 0, v, 768 * 2304 * 4, &e), 0);
    }
    ck_assert_int_eq(lora_stw_write(w, "score.weight", 0, v, 4 * 768 * 4, &e), 0);
    ck_assert_msg(lora_stw_commit(w, &e) == 0, "%s", e.msg);

    lora_merge_adapter ma = {.ad = ad, .weight = 1, .spec = ap};
    lora_merge_opts o = {.nthreads = 2, .rounding = LORA_ROUND_NEAREST};
    lora_merge_result res;
    ck_assert_msg(lora_merge_run(in, NULL, 0, &ma, 1, out, &o, &res, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(res.changed_tensors, 13);
    lora_ckpt *ck;
    ck_assert_msg(lora_ckpt_open(out, &ck, &e) == 0, "%s", e.msg);
    const lora_tensor *sc = lora_ckpt_find(ck, "score.weight", NULL);
    ck_assert_int_eq(memcmp(sc->data, ad->saved[0].t->data, 4 * 768 * 4), 0);
    for (size_t mi = 0; mi < ad->n_modules; mi++) {
        const lora_module *m = &ad->modules[mi];
        const lora_tensor *t = lora_ckpt_find(ck, m->target, NULL);
        ck_assert_ptr_nonnull(t);
        const float *A = m->A->data, *B = m->B->data, *W = t->data;
        for (uint64_t i = 0; i < 768; i += 37)        /* in */
            for (uint64_t j = 0; j < 2304; j += 101) { /* out */
                double dw = 0;
                for (uint64_t k = 0; k < m->r; k++)
                    dw += (double)B[j * m->r + k] * (double)A[k * 768 + i];
                float want = (float)((double)v[i * 2304 + j] + dw * m->scale);
                ck_assert_msg(W[i * 2304 + j] == want, "%s [%llu, %llu]: %.9g, want %.9g",
                              m->target, (unsigned long long)i, (unsigned long long)j,
                              W[i * 2304 + j], want);
            }
    }
    lora_ckpt_close(ck);
    lora_adapter_free(ad);
    free(v);
    free(in);
    free(out);
    tu_rmtree(tmp);
    free(tmp);
    free(ap);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("realfiles");
    TCase *tc = tcase_create("real");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_real, 0, (int)(sizeof real / sizeof *real));
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_llama_index);
    tcase_add_test(tc, test_base_checkpoint);
    tcase_add_test(tc, test_every_fixture);
    tcase_add_test(tc, test_gguf_named);
    tcase_add_test(tc, test_seqcls_merge);
    suite_add_tcase(s, tc);
    return tu_run(s, 1);
}

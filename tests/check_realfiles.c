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

#include <string.h>

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

int main(void)
{
    Suite *s = suite_create("realfiles");
    TCase *tc = tcase_create("real");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_real, 0, (int)(sizeof real / sizeof *real));
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_llama_index);
    tcase_add_test(tc, test_base_checkpoint);
    suite_add_tcase(s, tc);
    return tu_run(s, 1);
}

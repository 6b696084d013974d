/*
 * check_merge_gpt2.c - a real adapter made by someone else: the GPT-2
 * Conv1D LoRA in $FIXTURES/real/gpt2-tigrinya-lora (fan_in_fan_out, r=8,
 * c_attn + c_proj) merged by lora_merge_run into a generated GPT-2 base
 * of matching shapes (n_embd 768, 12 layers) must equal, bit for bit, a
 * plain reference computation W + scale·(B·A)ᵀ rounded once, on F32 and
 * BF16 bases; and unmerge with the receipt gives the base back.
 * SKIPs (77) without the fixtures.
 */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <string.h>

static char *gen_base(const char *dir, const char *dtype)
{
    const char *b = getenv("TOP_BUILDDIR");
    char *cmd, *out = tu_path(dir, dtype);
    ck_assert_int_gt(asprintf(&cmd, "'%s/tests/mkfixture' gpt2 '%s' --dtype %s --layers 12 "
                                    "--hidden 768 --heads 12 --vocab 128 --positions 32 "
                                    "--no-adapter >/dev/null",
                              b ? b : ".", out, dtype), 0);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    char *base = tu_path(out, "base");
    free(out);
    return base;
}

static void check_dtype(const char *dtype)
{
    char *fx = tu_fixture("real/gpt2-tigrinya-lora");
    ck_assert_ptr_nonnull(fx);
    char *d = tu_tmpdir();
    char *base = gen_base(d, dtype);
    char *out = tu_path(d, "merged"), *rec = tu_path(d, "merged.receipt");
    char *back = tu_path(d, "back");
    lora_error err;
    lora_adapter *ad;
    ck_assert_int_eq(lora_adapter_open(fx, &ad, &err), LORA_OK);
    lora_merge_adapter ma = {ad, 1.0, 0, fx};
    lora_merge_opts o;
    memset(&o, 0, sizeof o);
    o.dtype = LORA_DT_INVALID;
    o.nthreads = 2;
    o.receipt_out = rec;
    lora_merge_result res;
    ck_assert_msg(lora_merge_run(base, NULL, 0, &ma, 1, out, &o, &res, &err) == LORA_OK, "%s",
                  err.msg);
    ck_assert_uint_eq(res.changed_tensors, ad->n_modules); /* 12 × c_attn, attn.c_proj, mlp.c_proj */
    ck_assert_uint_eq(ad->n_modules, 36);
    lora_ckpt *b0, *m;
    ck_assert_int_eq(lora_ckpt_open(base, &b0, &err), LORA_OK);
    ck_assert_int_eq(lora_ckpt_open(out, &m, &err), LORA_OK);
    size_t checked = 0;
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *mod = &ad->modules[i];
        /* the reference loop is slow: layers 0, 5 and 11 (all are merged) */
        if (!strstr(mod->name, "h.0.") && !strstr(mod->name, "h.5.") && !strstr(mod->name, "h.11."))
            continue;
        const lora_tensor *w = lora_ckpt_find(b0, mod->target, NULL);
        const lora_tensor *x = lora_ckpt_find(m, mod->target, NULL);
        ck_assert_ptr_nonnull(w);
        ck_assert_ptr_nonnull(x);
        ck_assert(mod->transpose); /* Conv1D stores [in, out] */
        ck_assert_uint_eq(w->shape[0], mod->in);
        ck_assert_uint_eq(w->shape[1], mod->out);
        uint64_t in = mod->in, outd = mod->out, r = mod->r;
        double *A = malloc(r * in * sizeof *A), *B = malloc(outd * r * sizeof *B);
        double *W = malloc(in * outd * sizeof *W);
        float *Xf = malloc(in * outd * sizeof *Xf);
        ck_assert_int_eq(lora_decode_f64(mod->A->dtype, mod->A->data, A, r * in), 0);
        ck_assert_int_eq(lora_decode_f64(mod->B->dtype, mod->B->data, B, outd * r), 0);
        ck_assert_int_eq(lora_decode_f64(w->dtype, w->data, W, in * outd), 0);
        double scale = 32.0 / 8.0;
        ck_assert(mod->scale == scale);
        uint64_t bad = 0;
        for (uint64_t p = 0; p < in; p++)
            for (uint64_t q = 0; q < outd; q++) {
                double acc = 0;
                for (uint64_t k = 0; k < r; k++)
                    acc += B[q * r + k] * A[k * in + p];
                double v = W[p * outd + q] + scale * acc;
                unsigned char want[4], got[4];
                size_t sz = x->dtype == LORA_DT_F32 ? 4 : 2;
                /* no ck_assert in this loop: each one writes to check's
                 * pipe, and there are millions of elements */
                memcpy(got, (const unsigned char *)x->data + (p * outd + q) * sz, sz);
                bad += lora_encode_f64(x->dtype, &v, want, 1) != 0 || memcmp(want, got, sz) != 0;
            }
        ck_assert_msg(bad == 0, "%s: %llu elements differ from W + s(BA)^T", mod->target,
                      (unsigned long long)bad);
        (void)Xf;
        free(A); free(B); free(W); free(Xf);
        checked++;
    }
    ck_assert_uint_eq(checked, 9);
    lora_ckpt_close(m);
    /* and back, bit for bit */
    lora_adapter *ad2;
    ck_assert_int_eq(lora_adapter_open(fx, &ad2, &err), LORA_OK);
    lora_merge_adapter ub = {ad2, 1.0, 0, fx};
    memset(&o, 0, sizeof o);
    o.dtype = LORA_DT_INVALID;
    o.nthreads = 2;
    o.receipt_in = rec;
    ck_assert_msg(lora_merge_run(out, &ub, 1, NULL, 0, back, &o, &res, &err) == LORA_OK, "%s",
                  err.msg);
    ck_assert_uint_eq(res.hash_mismatches, 0);
    char *cmd;
    ck_assert_int_gt(asprintf(&cmd, "cmp -s '%s/model.safetensors' '%s/model.safetensors'", base,
                              back), 0);
    ck_assert_msg(system(cmd) == 0, "unmerged checkpoint differs from the base");
    free(cmd);
    lora_ckpt_close(b0);
    lora_adapter_free(ad);
    lora_adapter_free(ad2);
    tu_rmtree(d);
    free(d); free(base); free(out); free(rec); free(back); free(fx);
}

START_TEST(test_gpt2_f32) { check_dtype("F32"); }
END_TEST
START_TEST(test_gpt2_bf16) { check_dtype("BF16"); }
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("merge_gpt2");
    TCase *tc = tcase_create("gpt2");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_gpt2_f32);
    tcase_add_test(tc, test_gpt2_bf16);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite(), 1);
}

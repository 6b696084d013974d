/*
 * check_dora.c - DoRA merge and exact unmerge (dora.c, merge.c, the
 * receipt's version 4 norms) against the independent reference of
 * tests/fixtures/dora (make-dora-ref.py: PEFT's formula in float64
 * through torch, rounded once), on a Linear and a GPT-2 Conv1D module,
 * F32, F16 and BF16 bases.  Contract checked: F16 and BF16 merged
 * values equal the reference bit for bit; F32 within 1 ulp (the norm is
 * summed in another order than torch's, a difference of about 1e-16
 * that can move a rounding only at a near-tie); unmerge with the
 * receipt gives the base back bit for bit, file and all.  Hostile
 * inputs are refused with the module and the row named.
 */
#include "testutil.h"
#include "internal.h"
#include "dora.h"
#include "fpbits.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *fx(const char *rel)
{
    const char *top = getenv("TOP_SRCDIR");
    char *p;
    ck_assert_int_gt(asprintf(&p, "%s/tests/fixtures/dora/%s", top ? top : ".", rel), 0);
    return p;
}

/* The largest distance in ulps between two tensors' elements. */
static uint64_t max_ulps(const lora_tensor *a, const lora_tensor *b)
{
    int k;
    size_t sz;
    ck_assert_int_eq(a->dtype, b->dtype);
    ck_assert_uint_eq(a->numel, b->numel);
    ck_assert_int_eq(lora_fp_kind(a->dtype, &k, &sz), 0);
    uint64_t worst = 0;
    for (uint64_t i = 0; i < a->numel; i++) {
        uint32_t x = 0, y = 0;
        memcpy(&x, (const unsigned char *)a->data + i * sz, sz);
        memcpy(&y, (const unsigned char *)b->data + i * sz, sz);
        uint64_t u = fp_ulps((enum fp_kind)k, x, y);
        if (u > worst)
            worst = u;
    }
    return worst;
}

/* lora_merge_run with a receipt, compared with the reference; then
 * lora_merge_run undoing it, compared with the base file byte for byte. */
static void check_case(const char *layout, const char *dt, lora_rounding mode)
{
    char rel[128];
    snprintf(rel, sizeof rel, "%s/base-%s.safetensors", layout, dt);
    char *base = fx(rel);
    snprintf(rel, sizeof rel, "%s/expected-%s.safetensors", layout, dt);
    char *want = fx(rel);
    snprintf(rel, sizeof rel, "%s/adapter", layout);
    char *adp = fx(rel);
    char *d = tu_tmpdir();
    char *out = tu_path(d, "merged.safetensors"), *rec = tu_path(d, "merged.receipt");
    char *back = tu_path(d, "back.safetensors");
    lora_error err;
    lora_adapter *ad;
    ck_assert_msg(lora_adapter_open(adp, &ad, &err) == LORA_OK, "%s", err.msg);
    lora_merge_adapter ma = {ad, 1.0, 0, adp};
    lora_merge_opts o;
    memset(&o, 0, sizeof o);
    o.dtype = LORA_DT_INVALID;
    o.nthreads = 2;
    o.rounding = mode;
    o.receipt_out = rec;
    lora_merge_result res;
    ck_assert_msg(lora_merge_run(base, NULL, 0, &ma, 1, out, &o, &res, &err) == LORA_OK, "%s",
                  err.msg);
    ck_assert_uint_eq(res.changed_tensors, 1);
    lora_ckpt *m, *w;
    ck_assert_int_eq(lora_ckpt_open(out, &m, &err), LORA_OK);
    ck_assert_int_eq(lora_ckpt_open(want, &w, &err), LORA_OK);
    const lora_tensor *x = lora_ckpt_find(m, ad->modules[0].target, NULL);
    const lora_tensor *y = lora_ckpt_find(w, ad->modules[0].target, NULL);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(y);
    uint64_t u = max_ulps(x, y);
    if (mode == LORA_ROUND_NEAREST) {
        /* the number the report quotes */
        fprintf(stderr, "check_dora: %s %s: at most %llu ulps from the reference\n", layout, dt,
                (unsigned long long)u);
        ck_assert_msg(u <= (strcmp(dt, "F32") == 0 ? 1u : 0u),
                      "%s %s: %llu ulps from the reference", layout, dt, (unsigned long long)u);
    } else {
        ck_assert_msg(u <= 1, "%s %s reversible: %llu ulps from the reference", layout, dt,
                      (unsigned long long)u);
    }
    /* the untouched tensor is copied */
    lora_ckpt *b0;
    ck_assert_int_eq(lora_ckpt_open(base, &b0, &err), LORA_OK);
    const lora_tensor *o0 = lora_ckpt_find(b0, "other.weight", NULL);
    const lora_tensor *o1 = lora_ckpt_find(m, "other.weight", NULL);
    ck_assert(o0 && o1 && o0->nbytes == o1->nbytes && !memcmp(o0->data, o1->data, o0->nbytes));
    lora_ckpt_close(b0);
    lora_ckpt_close(m);
    lora_ckpt_close(w);
    /* the receipt is version 4 or later (6: its digests) and keeps one norm per output row */
    lora_receipt *r;
    ck_assert_int_eq(lora_receipt_open(rec, &r, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_version(r), 6);
    const lora_receipt_tensor *rt = lora_receipt_find(r, ad->modules[0].target);
    ck_assert_ptr_nonnull(rt);
    ck_assert(rt->dora);
    ck_assert_uint_eq(rt->dora_length, 8 * ad->modules[0].out);
    lora_receipt_close(r);
    /* back, bit for bit */
    lora_adapter *ad2;
    ck_assert_int_eq(lora_adapter_open(adp, &ad2, &err), LORA_OK);
    lora_merge_adapter ub = {ad2, 1.0, 0, adp};
    memset(&o, 0, sizeof o);
    o.dtype = LORA_DT_INVALID;
    o.nthreads = 2;
    o.receipt_in = rec;
    ck_assert_msg(lora_merge_run(out, &ub, 1, NULL, 0, back, &o, &res, &err) == LORA_OK, "%s",
                  err.msg);
    ck_assert_uint_eq(res.hash_mismatches, 0);
    ck_assert_uint_eq(res.inexact, 0);
    size_t l0, l1;
    char *b0s = tu_read(base, &l0), *b1s = tu_read(back, &l1);
    ck_assert_msg(l0 == l1 && memcmp(b0s, b1s, l0) == 0, "%s %s: unmerged file differs from the base",
                  layout, dt);
    free(b0s);
    free(b1s);
    lora_adapter_free(ad);
    lora_adapter_free(ad2);
    tu_rmtree(d);
    free(d); free(base); free(want); free(adp); free(out); free(rec); free(back);
}

START_TEST(test_linear)
{
    const char *dts[] = {"F32", "F16", "BF16"};
    check_case("linear", dts[_i], LORA_ROUND_NEAREST);
    check_case("linear", dts[_i], LORA_ROUND_REVERSIBLE);
}
END_TEST

START_TEST(test_conv1d)
{
    const char *dts[] = {"F32", "F16", "BF16"};
    check_case("conv1d", dts[_i], LORA_ROUND_NEAREST);
    check_case("conv1d", dts[_i], LORA_ROUND_REVERSIBLE);
}
END_TEST

/* The library step on its own, against a plain loop written here: the
 * norms, and merge + unmerge through the corrections in memory. */
START_TEST(test_plain_loop)
{
    char *base = fx("conv1d/base-BF16.safetensors"), *adp = fx("conv1d/adapter");
    lora_error err;
    lora_adapter *ad;
    lora_ckpt *ck;
    ck_assert_int_eq(lora_adapter_open(adp, &ad, &err), LORA_OK);
    ck_assert_int_eq(lora_ckpt_open(base, &ck, &err), LORA_OK);
    ck_assert_msg(lora_adapter_bind(ad, ck, &err) == LORA_OK, "%s", err.msg);
    const lora_module *mod = &ad->modules[0];
    const lora_tensor *t = lora_ckpt_find(ck, mod->target, NULL);
    uint64_t in = mod->in, out = mod->out, r = mod->r;
    ck_assert(mod->transpose);
    double *A = malloc(r * in * sizeof *A), *B = malloc(out * r * sizeof *B);
    double *W = malloc(in * out * sizeof *W), *n = calloc(out, sizeof *n);
    double *got = malloc(out * sizeof *got);
    ck_assert_int_eq(lora_decode_f64(mod->A->dtype, mod->A->data, A, r * in), 0);
    ck_assert_int_eq(lora_decode_f64(mod->B->dtype, mod->B->data, B, out * r), 0);
    ck_assert_int_eq(lora_decode_f64(t->dtype, t->data, W, in * out), 0);
    for (uint64_t q = 0; q < out; q++) {
        double s = 0;
        for (uint64_t p = 0; p < in; p++) {
            double acc = 0;
            for (uint64_t k = 0; k < r; k++)
                acc += B[q * r + k] * A[k * in + p];
            double v = W[p * out + q] + mod->scale * acc;
            s += v * v;
        }
        n[q] = sqrt(s);
    }
    ck_assert_int_eq(lora_dora_norms(mod, t->dtype, in, out, t->data, got, 1, &err), LORA_OK);
    for (uint64_t q = 0; q < out; q++)
        ck_assert_msg(got[q] == n[q], "norm %llu: %.17g vs %.17g", (unsigned long long)q, got[q],
                      n[q]);
    unsigned char *mer = malloc(t->nbytes), *back = malloc(t->nbytes);
    lora_fixes fixes = {0};
    lora_merge_stats st = {0};
    lora_dora_job j = {0};
    j.name = t->name;
    j.in_dt = j.out_dt = t->dtype;
    j.rows = in;
    j.cols = out;
    j.src = t->data;
    j.dst = mer;
    j.m = mod;
    j.norm = got;
    j.out_fixes = &fixes;
    j.stats = &st;
    j.nthreads = 1;
    ck_assert_int_eq(lora_dora_merge(&j, &err), LORA_OK);
    ck_assert_uint_eq(st.fixes, fixes.n);
    j.src = mer;
    j.dst = back;
    j.out_fixes = NULL;
    j.fixes = &fixes;
    j.ref = t->data;
    memset(&st, 0, sizeof st);
    ck_assert_int_eq(lora_dora_unmerge(&j, &err), LORA_OK);
    ck_assert_uint_eq(st.inexact, 0);
    ck_assert(memcmp(back, t->data, t->nbytes) == 0);
    /* without the corrections, at most the ambiguous elements and the
     * exceptions differ, and some do */
    j.fixes = NULL;
    memset(&st, 0, sizeof st);
    ck_assert_int_eq(lora_dora_unmerge(&j, &err), LORA_OK);
    ck_assert_uint_le(st.inexact, fixes.n + fixes.nambig);
    ck_assert_uint_gt(st.inexact, 0);
    /* a rank bit flipped: a wrong W0 or a refusal, never silence about it */
    if (fixes.nbits) {
        fixes.bits[0] ^= 1;
        j.fixes = &fixes;
        memset(&st, 0, sizeof st);
        int rc = lora_dora_unmerge(&j, &err);
        ck_assert(rc != LORA_OK || st.inexact > 0);
        fixes.bits[0] ^= 1;
    }
    /* an extra bit in the last block: refused */
    fixes.bstart[fixes.nblocks] = fixes.nbits + 1;
    fixes.nbits++;
    j.fixes = &fixes;
    ck_assert_int_eq(lora_dora_unmerge(&j, &err), LORA_EINPUT);
    lora_fixes_free(&fixes);
    free(A); free(B); free(W); free(n); free(got); free(mer); free(back);
    lora_ckpt_close(ck);
    lora_adapter_free(ad);
    free(base);
    free(adp);
}
END_TEST

static void refused(const char *base_rel, const char *adp_rel, const char *what)
{
    char *base = fx(base_rel), *adp = fx(adp_rel);
    char *d = tu_tmpdir();
    char *out = tu_path(d, "m.safetensors");
    lora_error err = {0};
    lora_adapter *ad = NULL;
    int rc = lora_adapter_open(adp, &ad, &err);
    if (rc == LORA_OK) {
        lora_merge_adapter ma = {ad, 1.0, 0, adp};
        lora_merge_opts o;
        memset(&o, 0, sizeof o);
        o.dtype = LORA_DT_INVALID;
        o.nthreads = 1;
        lora_merge_result res;
        rc = lora_merge_run(base, NULL, 0, &ma, 1, out, &o, &res, &err);
    }
    ck_assert_int_eq(rc, LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, what) != NULL, "'%s' does not say '%s'", err.msg, what);
    ck_assert_msg(access(out, F_OK) != 0, "output written");
    lora_adapter_free(ad);
    tu_rmtree(d);
    free(d); free(out); free(base); free(adp);
}

START_TEST(test_hostile)
{
    refused("hostile/base-zero-row.safetensors", "hostile/adapter-zero-row",
            "output row 5: the norm of W0 + dW is 0");
    refused("hostile/base-inf.safetensors", "linear/adapter", "is not finite");
    refused("linear/base-F32.safetensors", "hostile/adapter-short-mag",
            "lora_magnitude_vector is [23], expected [24]");
    refused("linear/base-F32.safetensors", "hostile/adapter-zero-mag",
            "output row 2: DoRA's factor");
}
END_TEST

/* The same A and B with other magnitudes are another adapter: their
 * digest differs, and an unmerge with them is refused (the receipt
 * names the adapter merged), not done with the wrong factors. */
START_TEST(test_other_magnitudes)
{
    char *base = fx("linear/base-BF16.safetensors"), *adp = fx("linear/adapter");
    char *d = tu_tmpdir(), *ad2 = tu_path(d, "ad2"), *out = tu_path(d, "m.safetensors");
    char *rec = tu_path(d, "m.safetensors.receipt"), *back = tu_path(d, "b.safetensors");
    ck_assert_int_eq(mkdir(ad2, 0755), 0);
    char *src = tu_path(adp, "adapter_config.json"), *dst = tu_path(ad2, "adapter_config.json");
    size_t len;
    char *buf = tu_read(src, &len);
    tu_write(dst, buf, len);
    free(buf); free(src); free(dst);
    src = tu_path(adp, "adapter_model.safetensors");
    dst = tu_path(ad2, "adapter_model.safetensors");
    buf = tu_read(src, &len);
    buf[len - 10] ^= 0x10; /* the magnitude vector is the file's last tensor */
    tu_write(dst, buf, len);
    free(buf); free(src); free(dst);
    lora_error err;
    lora_adapter *a1, *a2;
    ck_assert_int_eq(lora_adapter_open(adp, &a1, &err), LORA_OK);
    ck_assert_msg(lora_adapter_open(ad2, &a2, &err) == LORA_OK, "%s", err.msg);
    unsigned char h1[32], h2[32];
    lora_adapter_digest(a1, h1);
    lora_adapter_digest(a2, h2);
    ck_assert(memcmp(h1, h2, 32) != 0);
    lora_merge_adapter ma = {a1, 1.0, 0, adp};
    lora_merge_opts o;
    memset(&o, 0, sizeof o);
    o.dtype = LORA_DT_INVALID;
    o.nthreads = 1;
    o.receipt_out = rec;
    lora_merge_result res;
    ck_assert_msg(lora_merge_run(base, NULL, 0, &ma, 1, out, &o, &res, &err) == LORA_OK, "%s",
                  err.msg);
    lora_merge_adapter ub = {a2, 1.0, 0, ad2};
    memset(&o, 0, sizeof o);
    o.dtype = LORA_DT_INVALID;
    o.nthreads = 1;
    o.receipt_in = rec;
    ck_assert_int_ne(lora_merge_run(out, &ub, 1, NULL, 0, back, &o, &res, &err), LORA_OK);
    ck_assert_msg(strstr(err.msg, "not among the adapters given"), "%s", err.msg);
    ck_assert(access(back, F_OK) != 0);
    lora_adapter_free(a1);
    lora_adapter_free(a2);
    tu_rmtree(d);
    free(d); free(ad2); free(out); free(rec); free(back); free(base); free(adp);
}
END_TEST

/* A hostile receipt: norms of the wrong count or corrupted are refused. */
/* The receipt in buf with its index rewritten as a version 3 index
 * (version 5 receipts name SHA-256 and XXH3-128 digests, which version 3
 * does not know): the blocks stay where they are. */
static char *as_version3(const char *buf, size_t len, size_t *outlen)
{
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)(unsigned char)buf[len - 16 + (size_t)i] << (8 * i);
    size_t data = len - 16 - (size_t)n;
    json_error_t je;
    json_t *j = json_loadb(buf + data, (size_t)n, 0, &je);
    ck_assert_ptr_nonnull(j);
    json_object_set_new(j, "version", json_integer(3));
    json_object_set_new(j, "hash", json_string("blake2b-256-tree"));
    json_object_del(j, "merged_hash");
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(j, "tensors"), i, t)
        json_object_set_new(t, "merged", json_string("0000000000000000000000000000000000000000000000000000000000000000"));
    char *js = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    ck_assert_ptr_nonnull(js);
    size_t jl = strlen(js);
    char *o = malloc(data + jl + 16);
    ck_assert_ptr_nonnull(o);
    memcpy(o, buf, data);
    memcpy(o + data, js, jl);
    for (int k = 0; k < 8; k++)
        o[data + jl + (size_t)k] = (char)((uint64_t)jl >> (8 * k));
    memcpy(o + data + jl + 8, buf + len - 8, 8);
    free(js);
    *outlen = data + jl + 16;
    return o;
}

START_TEST(test_receipt_norms)
{
    char *d = tu_tmpdir(), *p = tu_path(d, "r.receipt");
    lora_error err;
    lora_receipt *w;
    ck_assert_int_eq(lora_receipt_create(p, LORA_ROUND_NEAREST, &w, &err), LORA_OK);
    unsigned char h[32] = {0};
    ck_assert_int_eq(lora_receipt_add_adapter(w, "a", h, 1.0, &err), LORA_OK);
    double norm[3] = {1.5, 0x1p-1070, 3e300};
    lora_receipt_term term = {0, "m", 2.0, 0};
    lora_receipt_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "w";
    t.base_dtype = t.dtype = LORA_DT_F32;
    t.rows = 3;
    t.cols = 2;
    t.terms = &term;
    t.nterms = 1;
    t.dora = 1;
    t.dora_length = sizeof norm;
    t.dora_norm = norm;
    lora_fixes fx0 = {0};
    ck_assert_int_eq(lora_fixes_push(&fx0, 4, -3), 0);
    ck_assert_int_eq(lora_receipt_add_tensor(w, &t, &fx0, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_finish(w, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_install(w, &err), LORA_OK);
    lora_fixes_free(&fx0);
    lora_receipt *r;
    ck_assert_msg(lora_receipt_open(p, &r, &err) == LORA_OK, "%s", err.msg);
    ck_assert_int_eq(lora_receipt_version(r), 6);
    double back[3];
    ck_assert_int_eq(lora_receipt_dora_norms(r, 0, back, 3, &err), LORA_OK);
    ck_assert(memcmp(back, norm, sizeof norm) == 0);
    ck_assert_int_eq(lora_receipt_dora_norms(r, 0, back, 2, &err), LORA_EINPUT);
    lora_fixes f = {0};
    ck_assert_int_eq(lora_receipt_fixes(r, 0, &f, &err), LORA_OK);
    ck_assert_uint_eq(f.n, 1);
    ck_assert_uint_eq(f.index[0], 4);
    ck_assert_int_eq(f.step[0], -3);
    lora_fixes_free(&f);
    const lora_receipt_tensor *rt = lora_receipt_tensor_at(r, 0);
    uint64_t at = rt->dora_offset;
    lora_receipt_close(r);
    /* one byte of the norms changed: a hash mismatch, not a wrong norm */
    size_t len;
    char *buf = tu_read(p, &len);
    buf[at + 3] ^= 1;
    tu_write(p, buf, len);
    ck_assert_int_eq(lora_receipt_open(p, &r, &err), LORA_OK);
    ck_assert_int_eq(lora_receipt_dora_norms(r, 0, back, 3, &err), LORA_EINPUT);
    ck_assert(strstr(err.msg, "hash mismatch"));
    lora_receipt_close(r);
    /* a version 3 receipt must not carry norms (the index rewritten as
     * version 3's: BLAKE2b digests, 64 hex digits each) */
    buf[at + 3] ^= 1;
    size_t n3;
    char *b3 = as_version3(buf, len, &n3);
    tu_write(p, b3, n3);
    free(b3);
    ck_assert_int_eq(lora_receipt_open(p, &r, &err), LORA_EINPUT);
    ck_assert_msg(strstr(err.msg, "DoRA norms in a version 3 receipt"), "%s", err.msg);
    free(buf);
    tu_rmtree(d);
    free(d);
    free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("dora");
    TCase *tc = tcase_create("dora");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_linear, 0, 3);
    tcase_add_loop_test(tc, test_conv1d, 0, 3);
    tcase_add_test(tc, test_plain_loop);
    tcase_add_test(tc, test_hostile);
    tcase_add_test(tc, test_other_magnitudes);
    tcase_add_test(tc, test_receipt_norms);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    int rc = tu_run(suite(), 0);
    return rc;
}

/*
 * check_reduce.c - unit tests for reduce.c (lora_reduce): adapters are
 * written here as PEFT folders, reduced or combined, and the output is
 * opened again with lora_adapter_open; its ΔW (scale·B·A by a plain
 * loop, with the scale the loader derives from r, alpha and the
 * patterns) is compared with the expected ΔW computed by plain loops
 * from the inputs.
 */
#include "testutil.h"
#include "internal.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

typedef struct spec {
    const char *name;
    uint64_t out, in, r;
    const float *A, *B; /* r×in, out×r */
} spec;

/* Write a PEFT adapter folder DIR with CONFIG and the given modules in dtype dt. */
static void write_adapter(const char *dir, const char *config, const spec *m, size_t n,
                          lora_dtype dt)
{
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    char *p = tu_path(dir, "adapter_config.json");
    tu_write(p, config, strlen(config));
    free(p);
    p = tu_path(dir, "adapter_model.safetensors");
    lora_stw *w;
    lora_error e;
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    char key[512];
    for (size_t i = 0; i < n; i++) {
        uint64_t sa[2] = {m[i].r, m[i].in}, sb[2] = {m[i].out, m[i].r};
        snprintf(key, sizeof key, "base_model.model.%s.lora_A.weight", m[i].name);
        ck_assert_int_eq(lora_stw_declare(w, key, dt, 2, sa, &e), LORA_OK);
        snprintf(key, sizeof key, "base_model.model.%s.lora_B.weight", m[i].name);
        ck_assert_int_eq(lora_stw_declare(w, key, dt, 2, sb, &e), LORA_OK);
    }
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    for (size_t i = 0; i < n; i++) {
        size_t na = m[i].r * m[i].in, nb = m[i].out * m[i].r, bs = lora_dtype_bits(dt) / 8;
        void *buf = malloc((na > nb ? na : nb) * bs);
        ck_assert_int_eq(lora_encode_f32(dt, m[i].A, buf, na), 0);
        snprintf(key, sizeof key, "base_model.model.%s.lora_A.weight", m[i].name);
        ck_assert_int_eq(lora_stw_write(w, key, 0, buf, na * bs, &e), LORA_OK);
        ck_assert_int_eq(lora_encode_f32(dt, m[i].B, buf, nb), 0);
        snprintf(key, sizeof key, "base_model.model.%s.lora_B.weight", m[i].name);
        ck_assert_int_eq(lora_stw_write(w, key, 0, buf, nb * bs, &e), LORA_OK);
        free(buf);
    }
    ck_assert_msg(lora_stw_commit(w, &e) == LORA_OK, "%s", e.msg);
    free(p);
}

static float *frand(size_t n, uint64_t *st)
{
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)tu_randu(st);
    return x;
}

/* dst += f · B·A (row-major out×in), plain loop in double. */
static void add_delta(double *dst, const float *B, const float *A, uint64_t out, uint64_t r,
                      uint64_t in, double f)
{
    for (uint64_t i = 0; i < out; i++)
        for (uint64_t j = 0; j < in; j++) {
            double t = 0;
            for (uint64_t k = 0; k < r; k++)
                t += (double)B[i * r + k] * (double)A[k * in + j];
            dst[i * in + j] += f * t;
        }
}

/* ΔW of an opened module, by a plain loop. */
static double *module_delta(const lora_module *m)
{
    double *A = malloc(m->A->numel * sizeof(double)), *B = malloc(m->B->numel * sizeof(double));
    ck_assert_int_eq(lora_decode_f64(m->A->dtype, m->A->data, A, m->A->numel), 0);
    ck_assert_int_eq(lora_decode_f64(m->B->dtype, m->B->data, B, m->B->numel), 0);
    double *D = calloc(m->out * m->in, sizeof(double));
    for (uint64_t i = 0; i < m->out; i++)
        for (uint64_t j = 0; j < m->in; j++) {
            double t = 0;
            for (uint64_t k = 0; k < m->r; k++)
                t += B[i * m->r + k] * A[k * m->in + j];
            D[i * m->in + j] = m->scale * t;
        }
    free(A);
    free(B);
    return D;
}

static double rel_diff(const double *x, const double *y, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (x[i] - y[i]) * (x[i] - y[i]);
        den += y[i] * y[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static const lora_module *find(const lora_adapter *ad, const char *name)
{
    for (size_t i = 0; i < ad->n_modules; i++)
        if (strcmp(ad->modules[i].name, name) == 0)
            return &ad->modules[i];
    return NULL;
}

/* Nothing but the expected entries beside OUT (no temporaries left). */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static const char *CFG8 = "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":16,"
                          "\"target_modules\":[\"q_proj\",\"v_proj\"],"
                          "\"base_model_name_or_path\":\"test/base\",\"task_type\":\"CAUSAL_LM\"}";

/* An adapter whose true rank (3) is below r (8): reducing to 3 is exact. */
START_TEST(test_true_rank_exact)
{
    char *d = tu_tmpdir();
    uint64_t st = 1, out = 40, in = 30, r = 8, t = 3;
    float *A = frand(r * in, &st), *B = calloc(out * r, sizeof(float));
    float *B3 = frand(out * t, &st), *M = frand(t * r, &st);
    /* B = B3·M: rank 3 */
    for (uint64_t i = 0; i < out; i++)
        for (uint64_t k = 0; k < r; k++) {
            double s = 0;
            for (uint64_t l = 0; l < t; l++)
                s += (double)B3[i * t + l] * M[l * r + k];
            B[i * r + k] = (float)s;
        }
    spec m[2] = {{"model.layers.0.self_attn.q_proj", out, in, r, A, B},
                 {"model.layers.0.self_attn.v_proj", out, in, r, A, B}};
    char *src = tu_path(d, "src"), *dst = tu_path(d, "dst");
    write_adapter(src, CFG8, m, 2, LORA_DT_F32);
    lora_adapter *ad, *red;
    lora_error e;
    ck_assert_msg(lora_adapter_open(src, &ad, &e) == LORA_OK, "%s", e.msg);
    lora_weighted w = {ad, 1.0};
    lora_rank_rule rule = {.kind = LORA_RANK_FIXED, .rank = 3};
    lora_reduce_report rep;
    ck_assert_msg(lora_reduce(&w, 1, &rule, dst, 0, &rep, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(rep.n_modules, 2);
    for (int i = 0; i < 2; i++) {
        ck_assert_uint_eq(rep.modules[i].old_rank, 8);
        ck_assert_uint_eq(rep.modules[i].new_rank, 3);
        ck_assert(rep.modules[i].rel_error < 1e-6);
    }
    ck_assert_uint_eq(rep.old_params, 2 * 8 * 70);
    ck_assert_uint_eq(rep.new_params, 2 * 3 * 70);
    lora_reduce_report_free(&rep);
    ck_assert_msg(lora_adapter_open(dst, &red, &e) == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(red->n_modules, 2);
    ck_assert_uint_eq(red->r, 3);
    ck_assert(!red->use_rslora);
    ck_assert_str_eq(red->base_model, "test/base");
    double *want = calloc(out * in, sizeof(double));
    add_delta(want, B, A, out, r, in, 2.0);
    for (size_t i = 0; i < 2; i++) {
        const lora_module *rm = &red->modules[i];
        ck_assert_uint_eq(rm->r, 3);
        ck_assert_double_eq(rm->scale, 1.0);
        ck_assert(rm->A->dtype == LORA_DT_F32 && rm->B->dtype == LORA_DT_F32);
        double *got = module_delta(rm);
        double rd = rel_diff(got, want, out * in);
        ck_assert_msg(rd < 1e-6, "relative error %g", rd);
        free(got);
    }
    /* the output exists whole, nothing else beside it */
    ck_assert_int_eq(count_entries(d), 2);
    /* an existing OUT is refused and left alone */
    ck_assert_int_eq(lora_reduce(&w, 1, &rule, dst, 0, &rep, &e), LORA_EUSAGE);
    ck_assert(strstr(e.msg, "exists") != NULL);
    /* ... unless overwriting; same inputs give the same bytes */
    size_t n1, n2;
    char *p = tu_path(dst, "adapter_model.safetensors"), *q = tu_path(dst, "adapter_config.json");
    char *b1 = tu_read(p, &n1), *c1 = tu_read(q, &n2);
    lora_adapter_free(red);
    ck_assert_msg(lora_reduce(&w, 1, &rule, dst, 1, &rep, &e) == LORA_OK, "%s", e.msg);
    lora_reduce_report_free(&rep);
    size_t n3, n4;
    char *b2 = tu_read(p, &n3), *c2 = tu_read(q, &n4);
    ck_assert(n1 == n3 && memcmp(b1, b2, n1) == 0);
    ck_assert(n2 == n4 && memcmp(c1, c2, n2) == 0);
    ck_assert_int_eq(count_entries(d), 2);
    free(b1); free(b2); free(c1); free(c2); free(p); free(q);
    lora_adapter_free(ad);
    free(want); free(A); free(B); free(B3); free(M); free(src); free(dst);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* Energy and ratio rules on modules with constructed spectra: ranks
 * differ per module, so rank_pattern / alpha_pattern carry them, and
 * the loader (PEFT's pattern rules) finds them again. */
START_TEST(test_energy_patterns_bf16)
{
    char *d = tu_tmpdir();
    uint64_t out = 16, in = 12, r = 4;
    /* module a: σ ∝ 8,4,2,1 (energies 64,16,4,1 of 85); module b: 1,1,1,1 */
    float Aa[48] = {0}, Ba[64] = {0}, Ab[48] = {0}, Bb[64] = {0};
    float sa[4] = {8, 4, 2, 1};
    for (int k = 0; k < 4; k++) {
        Aa[k * 12 + k + 2] = 1;
        Ba[(k + 5) * 4 + k] = sa[k];
        Ab[k * 12 + 11 - k] = 1;
        Bb[k * 4 + k] = 1;
    }
    spec m[3] = {{"model.layers.0.mlp.a_proj", out, in, r, Aa, Ba},
                 {"model.layers.0.mlp.b_proj", out, in, r, Ab, Bb},
                 {"model.layers.1.mlp.a_proj", out, in, r, Aa, Ba}};
    char *src = tu_path(d, "src");
    write_adapter(src, "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":2,\"use_rslora\":true,"
                       "\"target_modules\":[\"a_proj\",\"b_proj\"]}",
                  m, 3, LORA_DT_BF16);
    lora_adapter *ad, *red;
    lora_error e;
    ck_assert_msg(lora_adapter_open(src, &ad, &e) == LORA_OK, "%s", e.msg);
    ck_assert_double_eq(ad->modules[0].scale, 1.0); /* 2 / sqrt 4 */
    lora_weighted w = {ad, 1.0};
    struct {
        lora_rank_rule rule;
        uint64_t ka, kb;
    } cases[] = {
        {{.kind = LORA_RANK_ENERGY, .energy = 0.9}, 2, 4},      /* 80/85 >= .9; b: 3/4 < .9 */
        {{.kind = LORA_RANK_ENERGY, .energy = 0.75}, 1, 3},     /* 64/85 = .753; b: .75 */
        {{.kind = LORA_RANK_RATIO, .ratio = 4}, 3, 4},          /* σ >= 2 */
        {{.kind = LORA_RANK_ENERGY, .energy = 1.0, .max_rank = 2}, 2, 2},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char name[32];
        snprintf(name, sizeof name, "out%zu", c);
        char *dst = tu_path(d, name);
        lora_reduce_report rep;
        ck_assert_msg(lora_reduce(&w, 1, &cases[c].rule, dst, 0, &rep, &e) == LORA_OK, "%s", e.msg);
        ck_assert_uint_eq(rep.modules[0].new_rank, cases[c].ka);
        ck_assert_uint_eq(rep.modules[1].new_rank, cases[c].kb);
        ck_assert_uint_eq(rep.modules[2].new_rank, cases[c].ka);
        /* the error of keeping ka of module a, from its spectrum */
        double tail = 0;
        for (uint64_t k = cases[c].ka; k < 4; k++)
            tail += sa[k] * sa[k];
        ck_assert_double_eq_tol(rep.modules[0].rel_error, sqrt(tail / 85.0), 1e-12);
        lora_reduce_report_free(&rep);
        ck_assert_msg(lora_adapter_open(dst, &red, &e) == LORA_OK, "%s", e.msg);
        ck_assert(!red->use_rslora);
        for (size_t i = 0; i < 3; i++) {
            const lora_module *rm = find(red, m[i].name);
            ck_assert_ptr_nonnull(rm);
            ck_assert_uint_eq(rm->r, i == 1 ? cases[c].kb : cases[c].ka);
            ck_assert_double_eq(rm->scale, 1.0);
            ck_assert(rm->A->dtype == LORA_DT_BF16 && rm->B->dtype == LORA_DT_BF16);
            /* the kept part: exact here (powers of two survive BF16) */
            double *got = module_delta(rm);
            double *want = calloc(out * in, sizeof(double));
            const float *Bs = m[i].B, *As = m[i].A;
            uint64_t keep = rm->r;
            for (uint64_t k = 0; k < keep; k++) /* columns/rows in σ order already */
                for (uint64_t x = 0; x < out; x++)
                    for (uint64_t y = 0; y < in; y++)
                        want[x * in + y] += (double)Bs[x * r + k] * As[k * in + y];
            if (i == 1 && keep < 4) {
                /* equal singular values: any 'keep' of them is a best
                 * approximation; check the norm instead */
                double g = 0;
                for (uint64_t x = 0; x < out * in; x++)
                    g += got[x] * got[x];
                ck_assert_double_eq_tol(g, (double)keep, 1e-2);
            } else {
                ck_assert_msg(rel_diff(got, want, out * in) < 1e-2, "module %zu case %zu: %g", i,
                              c, rel_diff(got, want, out * in));
            }
            free(got);
            free(want);
        }
        lora_adapter_free(red);
        free(dst);
    }
    lora_adapter_free(ad);
    free(src);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* Weighted concatenation with --rank 0 reproduces Σ w_i ΔW_i exactly
 * (up to F32 rounding of the factors); a module only one input adapts
 * is carried with that input's weight; truncation at the full rank
 * gives the same ΔW. */
START_TEST(test_combine)
{
    char *d = tu_tmpdir();
    uint64_t st = 42, out = 24, in = 20;
    float *A1 = frand(4 * in, &st), *B1 = frand(out * 4, &st);
    float *A2 = frand(6 * in, &st), *B2 = frand(out * 6, &st);
    float *A3 = frand(2 * in, &st), *B3 = frand(out * 2, &st);
    spec s1[1] = {{"model.layers.0.self_attn.q_proj", out, in, 4, A1, B1}};
    spec s2[2] = {{"model.layers.0.self_attn.q_proj", out, in, 6, A2, B2},
                  {"model.layers.0.self_attn.v_proj", out, in, 2, A3, B3}};
    char *p1 = tu_path(d, "one"), *p2 = tu_path(d, "two");
    write_adapter(p1, "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,"
                      "\"target_modules\":[\"q_proj\"]}", s1, 1, LORA_DT_F32);
    write_adapter(p2, "{\"peft_type\":\"LORA\",\"r\":6,\"lora_alpha\":3,\"use_rslora\":true,"
                      "\"rank_pattern\":{\"v_proj\":2},\"alpha_pattern\":{\"v_proj\":4},"
                      "\"target_modules\":[\"q_proj\",\"v_proj\"]}", s2, 2, LORA_DT_F32);
    lora_adapter *a1, *a2, *red;
    lora_error e;
    ck_assert_msg(lora_adapter_open(p1, &a1, &e) == LORA_OK, "%s", e.msg);
    ck_assert_msg(lora_adapter_open(p2, &a2, &e) == LORA_OK, "%s", e.msg);
    double w1 = 0.5, w2 = -2.0;
    /* the reference: Σ w_i s_i B_i A_i by plain loops, scales as PEFT */
    double s_1 = 8.0 / 4, s_2q = 3.0 / sqrt(6), s_2v = 4.0 / sqrt(2);
    double *wq = calloc(out * in, sizeof(double)), *wv = calloc(out * in, sizeof(double));
    add_delta(wq, B1, A1, out, 4, in, w1 * s_1);
    add_delta(wq, B2, A2, out, 6, in, w2 * s_2q);
    add_delta(wv, B3, A3, out, 2, in, w2 * s_2v);
    lora_weighted in2[2] = {{a1, w1}, {a2, w2}};
    lora_rank_rule full = {.kind = LORA_RANK_FIXED, .rank = 100};
    const lora_rank_rule *rules[2] = {NULL, &full};
    for (int c = 0; c < 2; c++) {
        char *dst = tu_path(d, c ? "full" : "cat");
        lora_reduce_report rep;
        ck_assert_msg(lora_reduce(in2, 2, rules[c], dst, 0, &rep, &e) == LORA_OK, "%s", e.msg);
        ck_assert_uint_eq(rep.n_modules, 2);
        ck_assert_str_eq(rep.modules[0].name, "model.layers.0.self_attn.q_proj");
        ck_assert_uint_eq(rep.modules[0].old_rank, 10);
        ck_assert_uint_eq(rep.modules[0].new_rank, 10);
        ck_assert_int_eq(rep.modules[0].n_sources, 2);
        ck_assert_uint_eq(rep.modules[1].old_rank, 2);
        ck_assert_int_eq(rep.modules[1].n_sources, 1);
        ck_assert(rep.modules[0].rel_error < 1e-12);
        double nq = 0;
        for (uint64_t i = 0; i < out * in; i++)
            nq += wq[i] * wq[i];
        ck_assert_double_eq_tol(rep.modules[0].norm, sqrt(nq), 1e-9 * sqrt(nq));
        lora_reduce_report_free(&rep);
        ck_assert_msg(lora_adapter_open(dst, &red, &e) == LORA_OK, "%s", e.msg);
        const lora_module *q = find(red, "model.layers.0.self_attn.q_proj");
        const lora_module *v = find(red, "model.layers.0.self_attn.v_proj");
        ck_assert(q && v);
        ck_assert_uint_eq(q->r, 10);
        ck_assert_uint_eq(v->r, 2);
        ck_assert_double_eq(q->scale, 1.0);
        ck_assert_double_eq(v->scale, 1.0);
        double *gq = module_delta(q), *gv = module_delta(v);
        ck_assert_msg(rel_diff(gq, wq, out * in) < 1e-6, "q: %g", rel_diff(gq, wq, out * in));
        ck_assert_msg(rel_diff(gv, wv, out * in) < 1e-6, "v: %g", rel_diff(gv, wv, out * in));
        free(gq);
        free(gv);
        lora_adapter_free(red);
        free(dst);
    }
    /* truncated combination: the error reported is the error found */
    lora_rank_rule three = {.kind = LORA_RANK_FIXED, .rank = 3};
    char *dst = tu_path(d, "three");
    lora_reduce_report rep;
    ck_assert_int_eq(lora_reduce(in2, 2, &three, dst, 0, &rep, &e), LORA_OK);
    double rerr = rep.modules[0].rel_error;
    ck_assert(rerr > 1e-3);
    lora_reduce_report_free(&rep);
    ck_assert_int_eq(lora_adapter_open(dst, &red, &e), LORA_OK);
    double *gq = module_delta(find(red, "model.layers.0.self_attn.q_proj"));
    ck_assert_double_eq_tol(rel_diff(gq, wq, out * in), rerr, 1e-5);
    free(gq);
    lora_adapter_free(red);
    free(dst);

    /* shapes that disagree: refused, nothing written */
    float *A4 = frand(2 * (in + 1), &st);
    spec s4[1] = {{"model.layers.0.self_attn.q_proj", out, in + 1, 2, A4, B3}};
    char *p4 = tu_path(d, "bad");
    write_adapter(p4, "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,"
                      "\"target_modules\":[\"q_proj\"]}", s4, 1, LORA_DT_F32);
    lora_adapter *a4;
    ck_assert_int_eq(lora_adapter_open(p4, &a4, &e), LORA_OK);
    lora_weighted bad[2] = {{a1, 1}, {a4, 1}};
    int before = count_entries(d);
    dst = tu_path(d, "never");
    ck_assert_int_eq(lora_reduce(bad, 2, NULL, dst, 0, &rep, &e), LORA_EINPUT);
    ck_assert(strstr(e.msg, "shape") != NULL);
    ck_assert_int_eq(count_entries(d), before);
    /* a weight that is not finite */
    lora_weighted nanw[1] = {{a1, NAN}};
    ck_assert_int_eq(lora_reduce(nanw, 1, NULL, dst, 0, &rep, &e), LORA_EUSAGE);
    ck_assert_int_eq(lora_reduce(nanw, 0, NULL, dst, 0, &rep, &e), LORA_EUSAGE);
    lora_rank_rule badrule = {.kind = LORA_RANK_ENERGY, .energy = 1.5};
    lora_weighted one[1] = {{a1, 1}};
    ck_assert_int_eq(lora_reduce(one, 1, &badrule, dst, 0, &rep, &e), LORA_EUSAGE);
    ck_assert_int_eq(count_entries(d), before);
    free(dst);
    lora_adapter_free(a4);
    free(A4);
    free(p4);

    lora_adapter_free(a1);
    lora_adapter_free(a2);
    free(wq); free(wv); free(A1); free(B1); free(A2); free(B2); free(A3); free(B3);
    free(p1); free(p2);
    tu_rmtree(d);
    free(d);
}
END_TEST

typedef struct dsrc {
    double **d;
    uint64_t N;
} dsrc;

static int from_dense(void *ctx, size_t i, double *dst, lora_error *err)
{
    (void)err;
    const dsrc *s = ctx;
    memcpy(dst, s->d[i], s->N * sizeof *dst);
    return LORA_OK;
}

/* The combination methods end to end: each input's delta with its own
 * scale once (plain loops here), combined by lora_combine_module with
 * the input's position as its DARE stream (a module the first input
 * lacks gets stream 1 from the second), is what the written adapter
 * holds at full rank (up to its F32 factors); a rank-K truncation is
 * off by the reported error (Eckart–Young). */
START_TEST(test_combine_methods)
{
    char *d = tu_tmpdir();
    uint64_t st = 5, out = 18, in = 14, N = out * in;
    float *A1 = frand(3 * in, &st), *B1 = frand(out * 3, &st);
    float *A2 = frand(5 * in, &st), *B2 = frand(out * 5, &st);
    float *A3 = frand(2 * in, &st), *B3 = frand(out * 2, &st);
    for (uint64_t i = 0; i < out * 5; i++)
        B2[i] -= 0.5f;                       /* signs disagree with input 1 */
    spec s1[1] = {{"model.layers.0.self_attn.q_proj", out, in, 3, A1, B1}};
    spec s2[2] = {{"model.layers.0.self_attn.q_proj", out, in, 5, A2, B2},
                  {"model.layers.0.self_attn.v_proj", out, in, 2, A3, B3}};
    char *p1 = tu_path(d, "one"), *p2 = tu_path(d, "two");
    write_adapter(p1, "{\"peft_type\":\"LORA\",\"r\":3,\"lora_alpha\":6,"
                      "\"target_modules\":[\"q_proj\"]}", s1, 1, LORA_DT_F32);
    write_adapter(p2, "{\"peft_type\":\"LORA\",\"r\":5,\"lora_alpha\":4,\"use_rslora\":true,"
                      "\"rank_pattern\":{\"v_proj\":2},\"alpha_pattern\":{\"v_proj\":1},"
                      "\"target_modules\":[\"q_proj\",\"v_proj\"]}", s2, 2, LORA_DT_F32);
    lora_adapter *a1, *a2, *red;
    lora_error e;
    ck_assert_msg(lora_adapter_open(p1, &a1, &e) == LORA_OK, "%s", e.msg);
    ck_assert_msg(lora_adapter_open(p2, &a2, &e) == LORA_OK, "%s", e.msg);
    double w[2] = {0.8, -1.5};
    double *d1q = calloc(N, sizeof(double)), *d2q = calloc(N, sizeof(double)),
           *d2v = calloc(N, sizeof(double));
    add_delta(d1q, B1, A1, out, 3, in, 6.0 / 3);
    add_delta(d2q, B2, A2, out, 5, in, 4.0 / sqrt(5));
    add_delta(d2v, B3, A3, out, 2, in, 1.0 / sqrt(2));
    lora_weighted in2[2] = {{a1, w[0]}, {a2, w[1]}};
    static const lora_combine_opts methods[] = {
        {LORA_COMBINE_TIES, 0.4, LORA_SIGN_TOTAL, 0},
        {LORA_COMBINE_DARE_TIES, 0.5, LORA_SIGN_FREQUENCY, 77},
        {LORA_COMBINE_DARE_LINEAR, 0.3, LORA_SIGN_TOTAL, 78},
        {LORA_COMBINE_MAGNITUDE_PRUNE, 0.25, LORA_SIGN_TOTAL, 0}};
    lora_combine_ws ws = {0};
    for (size_t c = 0; c < sizeof methods / sizeof *methods; c++) {
        double *wq = malloc(N * sizeof(double)), *wv = malloc(N * sizeof(double));
        double *qd[2] = {d1q, d2q}, *vd[1] = {d2v};
        dsrc sq = {qd, N}, sv = {vd, N};
        uint64_t sq_streams[2] = {0, 1}, sv_streams[1] = {1};
        ck_assert_int_eq(lora_combine_module(&methods[c], "model.layers.0.self_attn.q_proj", out,
                                             in, 2, w, sq_streams, from_dense, &sq, wq, &ws, &e),
                         LORA_OK);
        ck_assert_int_eq(lora_combine_module(&methods[c], "model.layers.0.self_attn.v_proj", out,
                                             in, 1, &w[1], sv_streams, from_dense, &sv, wv, &ws,
                                             &e), LORA_OK);
        for (int k = 0; k < 2; k++) {
            lora_rank_rule rule = {.kind = LORA_RANK_FIXED, .rank = k ? 4 : 100};
            char name[32];
            snprintf(name, sizeof name, "m%zu-%d", c, k);
            char *dst = tu_path(d, name);
            lora_reduce_report rep;
            ck_assert_msg(lora_reduce_combine(in2, 2, &rule, &methods[c], dst, 0, &rep, &e) ==
                              LORA_OK, "%s", e.msg);
            ck_assert_uint_eq(rep.n_modules, 2);
            ck_assert_uint_eq(rep.modules[0].new_rank, k ? 4 : 14);
            ck_assert_msg(lora_adapter_open(dst, &red, &e) == LORA_OK, "%s", e.msg);
            const double *want[2] = {wq, wv};
            const char *mn[2] = {"model.layers.0.self_attn.q_proj",
                                 "model.layers.0.self_attn.v_proj"};
            for (int m = 0; m < 2; m++) {
                const lora_module *rm = find(red, mn[m]);
                ck_assert_ptr_nonnull(rm);
                double *got = module_delta(rm), rd = rel_diff(got, want[m], N);
                double expect = k ? rep.modules[m].rel_error : 0;
                ck_assert_msg(fabs(rd - expect) < 1e-6,
                              "%s %s rank %d: relative difference %g, reported %g",
                              lora_combine_method_name(methods[c].method), mn[m], k ? 4 : 14, rd,
                              expect);
                if (k)
                    ck_assert(expect > 1e-3); /* the truncation did cut something */
                free(got);
            }
            lora_adapter_free(red);
            lora_reduce_report_free(&rep);
            free(dst);
        }
        free(wq);
        free(wv);
    }
    lora_combine_ws_free(&ws);
    /* Refused: density 0, with nothing written. */
    lora_combine_opts bad = {LORA_COMBINE_TIES, 0, LORA_SIGN_TOTAL, 0};
    char *dst = tu_path(d, "bad");
    lora_reduce_report rep;
    ck_assert_int_eq(lora_reduce_combine(in2, 2, NULL, &bad, dst, 0, &rep, &e), LORA_EUSAGE);
    struct stat sb;
    ck_assert_int_ne(stat(dst, &sb), 0);
    free(dst);
    lora_adapter_free(a1);
    lora_adapter_free(a2);
    free(d1q); free(d2q); free(d2v); free(A1); free(B1); free(A2); free(B2); free(A3); free(B3);
    free(p1); free(p2);
    tu_rmtree(d);
    free(d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reduce");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_true_rank_exact);
    tcase_add_test(tc, test_energy_patterns_bf16);
    tcase_add_test(tc, test_combine);
    tcase_add_test(tc, test_combine_methods);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

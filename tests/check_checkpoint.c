/*
 * check_checkpoint.c - unit tests for checkpoint.c: a generated
 * 3-shard checkpoint (written with the safetensors writer plus an
 * index) opened through its folder and its index, lookups across
 * shards, tensors the index omits, missing and corrupt shards, an
 * index that misplaces a tensor, and hostile index JSON.
 */
#include "testutil.h"
#include "internal.h"

#include <string.h>
#include <unistd.h>

/* Shard s holds tensors "s<s>.t<k>" for k < 2, F32 [2, k+1], value
 * s*100 + k*10 + element. */
static void write_shard(const char *dir, int s, const char *extra)
{
    char name[64];
    snprintf(name, sizeof name, "model-%05d-of-00003.safetensors", s);
    char *p = tu_path(dir, name);
    lora_stw *w;
    lora_error e;
    ck_assert_int_eq(lora_stw_new(p, &w, &e), LORA_OK);
    char tn[32];
    for (int k = 0; k < 2; k++) {
        uint64_t sh[2] = {2, (uint64_t)k + 1};
        snprintf(tn, sizeof tn, "s%d.t%d", s, k);
        ck_assert_int_eq(lora_stw_declare(w, tn, LORA_DT_F32, 2, sh, &e), LORA_OK);
    }
    uint64_t one[1] = {1};
    if (extra)
        ck_assert_int_eq(lora_stw_declare(w, extra, LORA_DT_F16, 1, one, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_start(w, &e), LORA_OK);
    for (int k = 0; k < 2; k++) {
        float v[4];
        for (int i = 0; i < 2 * (k + 1); i++)
            v[i] = (float)(s * 100 + k * 10 + i);
        snprintf(tn, sizeof tn, "s%d.t%d", s, k);
        ck_assert_int_eq(lora_stw_write(w, tn, 0, v, sizeof(float) * 2 * (size_t)(k + 1), &e),
                         LORA_OK);
    }
    if (extra)
        ck_assert_int_eq(lora_stw_write(w, extra, 0, "\0\x3c", 2, &e), LORA_OK);
    ck_assert_int_eq(lora_stw_commit(w, &e), LORA_OK);
    free(p);
}

static const char *good_index =
    "{\n  \"metadata\": {\"total_size\": 72},\n  \"weight_map\": {\n"
    "    \"s1.t0\": \"model-00001-of-00003.safetensors\",\n"
    "    \"s1.t1\": \"model-00001-of-00003.safetensors\",\n"
    "    \"s2.t0\": \"model-00002-of-00003.safetensors\",\n"
    "    \"s2.t1\": \"model-00002-of-00003.safetensors\",\n"
    "    \"s3.t1\": \"model-00003-of-00003.safetensors\",\n"
    "    \"s3.t0\": \"model-00003-of-00003.safetensors\"\n  }\n}\n";

static char *make_ckpt(const char *extra3)
{
    char *d = tu_tmpdir();
    write_shard(d, 1, NULL);
    write_shard(d, 2, NULL);
    write_shard(d, 3, extra3);
    char *ip = tu_path(d, "model.safetensors.index.json");
    tu_write(ip, good_index, strlen(good_index));
    free(ip);
    return d;
}

START_TEST(test_sharded)
{
    char *d = make_ckpt("lm_head.weight"); /* a tied weight the index omits */
    char *ip = tu_path(d, "model.safetensors.index.json");
    const char *paths[2] = {d, ip};
    for (int pi = 0; pi < 2; pi++) {
        lora_ckpt *ck;
        lora_error e;
        ck_assert_int_eq(lora_ckpt_open(paths[pi], &ck, &e), LORA_OK);
        ck_assert(lora_ckpt_is_sharded(ck));
        ck_assert_str_eq(lora_ckpt_dir(ck), d);
        ck_assert_uint_eq(lora_ckpt_shard_count(ck), 3);
        ck_assert_str_eq(lora_ckpt_shard_name(ck, 1), "model-00002-of-00003.safetensors");
        ck_assert_ptr_null(lora_ckpt_shard_name(ck, 3));
        ck_assert_ptr_null(lora_ckpt_shard(ck, 3));
        ck_assert_uint_eq(lora_ckpt_count(ck), 7);
        /* lookup across shards, values from the right file */
        for (int s = 1; s <= 3; s++)
            for (int k = 0; k < 2; k++) {
                char tn[32];
                snprintf(tn, sizeof tn, "s%d.t%d", s, k);
                size_t sh = 99;
                const lora_tensor *t = lora_ckpt_find(ck, tn, &sh);
                ck_assert_ptr_nonnull(t);
                ck_assert_uint_eq(sh, (size_t)s - 1);
                ck_assert_ptr_eq(lora_st_find(lora_ckpt_shard(ck, sh), tn), t);
                ck_assert_uint_eq(t->shape[1], (uint64_t)k + 1);
                float v;
                memcpy(&v, (const char *)t->data + 4, 4);
                ck_assert(v == (float)(s * 100 + k * 10 + 1));
            }
        size_t sh;
        const lora_tensor *lm = lora_ckpt_find(ck, "lm_head.weight", &sh);
        ck_assert_ptr_nonnull(lm);
        ck_assert_uint_eq(sh, 2);
        ck_assert_ptr_null(lora_ckpt_find(ck, "nope", NULL));
        /* all tensors, shard by shard in file order */
        size_t last = 0;
        for (size_t i = 0; i < lora_ckpt_count(ck); i++) {
            const lora_tensor *t = lora_ckpt_tensor(ck, i, &sh);
            ck_assert_ptr_nonnull(t);
            ck_assert_uint_ge(sh, last);
            last = sh;
            ck_assert_ptr_eq(lora_ckpt_find(ck, t->name, NULL), t);
        }
        ck_assert_ptr_null(lora_ckpt_tensor(ck, 7, NULL));
        lora_ckpt_close(ck);
    }
    lora_ckpt_close(NULL);
    free(ip);
    tu_rmtree(d);
    free(d);
}
END_TEST

START_TEST(test_single)
{
    char *d = tu_tmpdir();
    char *src = make_ckpt(NULL);
    /* a folder with model.safetensors (and an index: the single file wins) */
    char *from = tu_path(src, "model-00002-of-00003.safetensors");
    char *to = tu_path(d, "model.safetensors");
    size_t n;
    char *b = tu_read(from, &n);
    tu_write(to, b, n);
    free(b);
    char *ip = tu_path(d, "model.safetensors.index.json");
    tu_write(ip, good_index, strlen(good_index));
    lora_ckpt *ck;
    lora_error e;
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_OK);
    ck_assert(!lora_ckpt_is_sharded(ck));
    ck_assert_uint_eq(lora_ckpt_shard_count(ck), 1);
    ck_assert_str_eq(lora_ckpt_shard_name(ck, 0), "model.safetensors");
    ck_assert_uint_eq(lora_ckpt_count(ck), 2);
    ck_assert_ptr_nonnull(lora_ckpt_find(ck, "s2.t1", NULL));
    lora_ckpt_close(ck);
    /* the file itself */
    ck_assert_int_eq(lora_ckpt_open(from, &ck, &e), LORA_OK);
    ck_assert_str_eq(lora_ckpt_dir(ck), src);
    ck_assert_str_eq(lora_ckpt_shard_name(ck, 0), "model-00002-of-00003.safetensors");
    lora_ckpt_close(ck);
    /* a relative file name lives in "." */
    char cwd[4096];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(d), 0);
    ck_assert_int_eq(lora_ckpt_open("model.safetensors", &ck, &e), LORA_OK);
    ck_assert_str_eq(lora_ckpt_dir(ck), ".");
    lora_ckpt_close(ck);
    ck_assert_int_eq(chdir(cwd), 0);
    /* nothing there */
    unlink(to);
    unlink(ip);
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "no model.safetensors"));
    ck_assert_int_eq(lora_ckpt_open(to, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_null(ck);
    /* a corrupt single file */
    tu_write(to, "\x02\0\0\0\0\0\0\0{}x", 11);
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "trailing"));
    free(ip);
    free(from);
    free(to);
    tu_rmtree(src);
    free(src);
    tu_rmtree(d);
    free(d);
}
END_TEST

START_TEST(test_broken_shards)
{
    lora_ckpt *ck;
    lora_error e;
    /* a missing shard is named */
    char *d = make_ckpt(NULL);
    char *p2 = tu_path(d, "model-00002-of-00003.safetensors");
    unlink(p2);
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "shard model-00002-of-00003.safetensors is missing"));
    /* a corrupt shard is named, with the reason */
    tu_write(p2, "\x02\0\0\0\0\0\0\0{", 9);
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "shard model-00002-of-00003.safetensors"));
    ck_assert_ptr_nonnull(strstr(e.msg, "runs past the end"));
    free(p2);
    tu_rmtree(d);
    free(d);

    /* the index puts a tensor in the wrong shard */
    d = make_ckpt(NULL);
    char *ip = tu_path(d, "model.safetensors.index.json");
    const char *wrong = "{\"weight_map\":{\"s1.t0\":\"model-00001-of-00003.safetensors\","
                        "\"s2.t1\":\"model-00002-of-00003.safetensors\","
                        "\"s2.t0\":\"model-00003-of-00003.safetensors\"}}";
    tu_write(ip, wrong, strlen(wrong));
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "puts tensor \"s2.t0\" in shard "
                                        "model-00003-of-00003.safetensors, which does not hold "
                                        "it (it is in model-00002-of-00003.safetensors)"));
    /* ... or names one no shard holds */
    const char *ghost = "{\"weight_map\":{\"ghost\":\"model-00001-of-00003.safetensors\"}}";
    tu_write(ip, ghost, strlen(ghost));
    ck_assert_int_eq(lora_ckpt_open(ip, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "\"ghost\""));
    /* only the shards the index names are opened; what they hold beyond
     * the index is still listed */
    const char *only1 = "{\"weight_map\":{\"s1.t0\":\"model-00001-of-00003.safetensors\"}}";
    tu_write(ip, only1, strlen(only1));
    ck_assert_int_eq(lora_ckpt_open(ip, &ck, &e), LORA_OK);
    ck_assert_uint_eq(lora_ckpt_shard_count(ck), 1);
    ck_assert_uint_eq(lora_ckpt_count(ck), 2); /* s1.t1 listed though the index omits it */
    ck_assert_ptr_nonnull(lora_ckpt_find(ck, "s1.t1", NULL));
    lora_ckpt_close(ck);
    free(ip);
    tu_rmtree(d);
    free(d);

    /* the same tensor in two shards */
    d = tu_tmpdir();
    write_shard(d, 1, "dup");
    write_shard(d, 2, "dup");
    ip = tu_path(d, "model.safetensors.index.json");
    const char *two = "{\"weight_map\":{\"s1.t0\":\"model-00001-of-00003.safetensors\","
                      "\"s2.t0\":\"model-00002-of-00003.safetensors\"}}";
    tu_write(ip, two, strlen(two));
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "\"dup\" is in two shards"));
    free(ip);
    tu_rmtree(d);
    free(d);
}
END_TEST

static const struct {
    const char *json, *msg;
} bad_index[] = {
    {"", "not a valid index"},
    {"{\"weight_map\":", "not a valid index"},
    {"[1,2]", "not a JSON object"},
    {"{}", "no \"weight_map\" object"},
    {"{\"weight_map\":[]}", "no \"weight_map\" object"},
    {"{\"weight_map\":{}}", "names no tensors"},
    {"{\"weight_map\":{\"a\":1}}", "\"a\" is not a string"},
    {"{\"weight_map\":{\"a\":null}}", "\"a\" is not a string"},
    {"{\"weight_map\":{\"a\":\"../model.safetensors\"}}", "not a plain file name"},
    {"{\"weight_map\":{\"a\":\"..\"}}", "not a plain file name"},
    {"{\"weight_map\":{\"a\":\".\"}}", "not a plain file name"},
    {"{\"weight_map\":{\"a\":\"/etc/passwd\"}}", "not a plain file name"},
    {"{\"weight_map\":{\"a\":\"sub/x.safetensors\"}}", "not a plain file name"},
    {"{\"weight_map\":{\"a\":\"x\\\\y\"}}", "not a plain file name"},
    {"{\"weight_map\":{\"a\":\"\"}}", "not a plain file name"},
    {"{\"weight_map\":{\"a\\u001b\":\"x\\u001by\"}}", "tensor \"a?\" names shard \"x?y\""},
    {"{\"weight_map\":{\"a\":\"x\",\"a\":\"y\"}}", "duplicate"},
    {"{\"weight_map\":{\"a\":\"x\"},\"weight_map\":{\"b\":\"y\"}}", "duplicate"},
    {"{\"weight_map\":{\"a\":\"\xff\"}}", "not a valid index"},
    {"{\"weight_map\":{\"a\":\"x\\u0000y\"}}", "not a valid index"},
};

START_TEST(test_bad_index)
{
    lora_index *ix = (lora_index *)1;
    lora_error e;
    const char *j = bad_index[_i].json;
    int rc = lora_index_parse(j, strlen(j), "idx.json", &ix, &e);
    if (rc != LORA_EINPUT || !strstr(e.msg, bad_index[_i].msg) || !strstr(e.msg, "idx.json"))
        ck_abort_msg("%s: rc %d \"%s\"", j, rc, e.msg);
    ck_assert_ptr_null(ix);
}
END_TEST

START_TEST(test_index_parse)
{
    lora_index *ix;
    lora_error e;
    ck_assert_int_eq(lora_index_parse(good_index, strlen(good_index), "i", &ix, &e), LORA_OK);
    ck_assert_uint_eq(ix->n, 6);
    ck_assert_uint_eq(ix->nshards, 3);
    ck_assert_str_eq(ix->tensor[4], "s3.t0"); /* sorted */
    ck_assert_uint_eq(ix->shard_of[4], 2);
    ck_assert_str_eq(ix->shard[0], "model-00001-of-00003.safetensors");
    lora_index_free(ix);
    lora_index_free(NULL);
    /* through lora_ckpt_open too: a hostile index never opens anything */
    char *d = tu_tmpdir();
    char *ip = tu_path(d, "model.safetensors.index.json");
    const char *evil = "{\"weight_map\":{\"a\":\"../../etc/passwd\"}}";
    tu_write(ip, evil, strlen(evil));
    lora_ckpt *ck;
    ck_assert_int_eq(lora_ckpt_open(d, &ck, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "not a plain file name"));
    free(ip);
    tu_rmtree(d);
    free(d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sharded);
    tcase_add_test(tc, test_single);
    tcase_add_test(tc, test_broken_shards);
    tcase_add_loop_test(tc, test_bad_index, 0, (int)(sizeof bad_index / sizeof *bad_index));
    tcase_add_test(tc, test_index_parse);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

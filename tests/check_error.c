/*
 * check_error.c - unit tests for error.c: messages, prefixes, and the
 * atomic file writer (nothing under the real name until commit).
 */
#include "testutil.h"
#include "internal.h"
#include <jansson.h>
#include <stdlib.h>

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* lora_json_dumps: reals in their shortest round-trip form, each read
 * back to the same double (checked with strtod against the value put
 * in), integers and strings (with digits, escapes, "e") untouched. */
START_TEST(test_json_shortest)
{
    const double v[] = {0.05, 0.1, 1e-6, -0.0, 1.0, 16.0, 1e300, 2.2250738585072014e-308,
                        0.30000000000000004, 123456789.123456789, -7.5e-12, 5e-324};
    json_t *a = json_array();
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        json_array_append_new(a, json_real(v[i]));
    json_array_append_new(a, json_integer(-42));
    json_array_append_new(a, json_string("0.050000000000000003 \"1e5\" \\ 7"));
    char *s = lora_json_dumps(a, JSON_COMPACT);
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_null(strstr(s, "0.050000000000000003,"));
    ck_assert_ptr_nonnull(strstr(s, "[0.05,0.1,1e-06,"));
    json_error_t je;
    json_t *b = json_loads(s, 0, &je);
    ck_assert_msg(b != NULL, "not JSON: %s", s);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        json_t *x = json_array_get(b, i);
        ck_assert_msg(json_is_real(x), "element %zu not a real in %s", i, s);
        ck_assert_msg(json_real_value(x) == v[i], "element %zu: %.17g != %.17g", i,
                      json_real_value(x), v[i]);
    }
    ck_assert_int_eq(json_integer_value(json_array_get(b, sizeof v / sizeof v[0])), -42);
    ck_assert_str_eq(json_string_value(json_array_get(b, sizeof v / sizeof v[0] + 1)),
                     "0.050000000000000003 \"1e5\" \\ 7");
    json_decref(b);
    free(s);
    json_decref(a);
}
END_TEST

START_TEST(test_seterr)
{
    lora_error e;
    lora_error_clear(&e);
    ck_assert_int_eq(e.code, LORA_OK);
    ck_assert_int_eq(lora_seterr(&e, LORA_EINPUT, "bad %s", "thing"), LORA_EINPUT);
    ck_assert_str_eq(e.msg, "bad thing");
    lora_err_prefix(&e, "file %d", 3);
    ck_assert_str_eq(e.msg, "file 3: bad thing");
    ck_assert_int_eq(e.code, LORA_EINPUT);
    lora_seterr_errno(&e, LORA_EIO, ENOENT, "open x");
    ck_assert_str_eq(e.msg, "open x: No such file or directory");
    /* NULL error pointers are allowed everywhere */
    ck_assert_int_eq(lora_seterr(NULL, LORA_EIO, "x"), LORA_EIO);
}
END_TEST

/* A path that cannot be opened: missing or a file where a folder should
 * be is bad input (3), EACCES only where the caller says so, the rest I/O. */
START_TEST(test_seterr_path)
{
    static const struct { int e, flags, code; } cases[] = {
        {ENOENT, 0, LORA_EINPUT},
        {ENOTDIR, 0, LORA_EINPUT},
        {EACCES, 0, LORA_EIO},
        {EACCES, LORA_PATH_EACCES_INPUT, LORA_EINPUT},
        {EIO, LORA_PATH_EACCES_INPUT, LORA_EIO},
        {EMFILE, 0, LORA_EIO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lora_error err;
        lora_error_clear(&err);
        int rc = lora_seterr_path(&err, cases[i].e, cases[i].flags, "some/path");
        ck_assert_int_eq(rc, cases[i].code);
        ck_assert_int_eq(err.code, cases[i].code);
        char want[LORA_ERROR_MAX];
        snprintf(want, sizeof want, "some/path: %s", strerror(cases[i].e));
        ck_assert_str_eq(err.msg, want);
    }
    ck_assert_int_eq(lora_seterr_path(NULL, ENOENT, 0, "x"), LORA_EINPUT);
}
END_TEST

START_TEST(test_atomic_write)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "out.txt");
    lora_error e;
    ck_assert_int_eq(lora_write_file_atomic(p, "hello", 5, 0644, &e), LORA_OK);
    size_t n;
    char *s = tu_read(p, &n);
    ck_assert_uint_eq(n, 5);
    ck_assert_str_eq(s, "hello");
    free(s);
    /* a folder that does not exist: error, and nothing created */
    char *q = tu_path(d, "nope/out.txt");
    ck_assert_int_eq(lora_write_file_atomic(q, "x", 1, 0644, &e), LORA_EIO);
    struct stat sb;
    ck_assert_int_ne(stat(q, &sb), 0);
    free(q);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

START_TEST(test_read_limit)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "big");
    tu_write(p, "0123456789", 10);
    lora_error e;
    char *buf;
    size_t n;
    ck_assert_int_eq(lora_read_file(p, 9, &buf, &n, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "too large"));
    ck_assert_int_eq(lora_read_file(p, 10, &buf, &n, &e), LORA_OK);
    ck_assert_uint_eq(n, 10);
    free(buf);
    ck_assert_int_eq(lora_read_file(d, 10, &buf, &n, &e), LORA_EINPUT);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

/* The temporaries table behind lora_tmp_remove_all (the tools' SIGBUS
 * handler): what is live is removed, what was committed or forgotten is
 * not, a tracked folder goes with its files. */
START_TEST(test_tmp_remove_all)
{
    char *d = tu_tmpdir();
    char *p = tu_path(d, "out.bin"), *dir = tu_path(d, "out.tmp-folder");
    char *inner = tu_path(dir, "model.safetensors"), *kept = tu_path(d, "kept.tmp-x");
    lora_error e;
    struct stat sb;
    int fd;
    char *tmp;
    /* live temporary file: removed */
    ck_assert_int_eq(lora_tmpfile_beside(p, 0644, &fd, &tmp, &e), LORA_OK);
    close(fd);
    /* a committed one: its final name stays */
    char *done = tu_path(d, "done.bin"), *tmp2;
    int fd2;
    ck_assert_int_eq(lora_tmpfile_beside(done, 0644, &fd2, &tmp2, &e), LORA_OK);
    ck_assert_int_eq(lora_commit_tmpfile(fd2, tmp2, done, &e), LORA_OK);
    close(fd2);
    /* a tracked folder holding a file: removed with it */
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    tu_write(inner, "x", 1);
    lora_tmp_track(dir, 1);
    /* tracked, then forgotten: stays */
    tu_write(kept, "y", 1);
    lora_tmp_track(kept, 0);
    lora_tmp_forget(kept);

    lora_tmp_remove_all();
    ck_assert_int_ne(stat(tmp, &sb), 0);
    ck_assert_int_ne(stat(dir, &sb), 0);
    ck_assert_int_eq(stat(done, &sb), 0);
    ck_assert_int_eq(stat(kept, &sb), 0);
    lora_tmp_forget(tmp);
    lora_tmp_forget(dir);
    free(tmp);
    free(tmp2);
    free(done);
    free(kept);
    free(inner);
    free(dir);
    free(p);
    tu_rmtree(d);
    free(d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("error");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_seterr);
    tcase_add_test(tc, test_seterr_path);
    tcase_add_test(tc, test_atomic_write);
    tcase_add_test(tc, test_read_limit);
    tcase_add_test(tc, test_tmp_remove_all);
    tcase_add_test(tc, test_json_shortest);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

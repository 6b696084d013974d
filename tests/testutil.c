/*
 * testutil.c - the helpers declared in testutil.h.
 */
#include "testutil.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *tu_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    char *p = malloc(strlen(base) + 32);
    ck_assert_ptr_nonnull(p);
    sprintf(p, "%s/lora-test-XXXXXX", base);
    ck_assert_msg(mkdtemp(p) != NULL, "mkdtemp: %s", strerror(errno));
    return p;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tu_rmtree(const char *path)
{
    if (path && strstr(path, "lora-test-"))
        nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *tu_path(const char *dir, const char *name)
{
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    ck_assert_ptr_nonnull(p);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

void tu_write(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

char *tu_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    ck_assert_int_ge(n, 0);
    rewind(f);
    char *p = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    p[n] = '\0';
    if (len)
        *len = (size_t)n;
    return p;
}

const char *tu_fixtures(void)
{
    const char *f = getenv("FIXTURES");
    struct stat sb;
    if (!f || !*f || stat(f, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return NULL;
    return f;
}

char *tu_fixture(const char *rel)
{
    const char *f = tu_fixtures();
    if (!f)
        return NULL;
    char *p = tu_path(f, rel);
    struct stat sb;
    if (stat(p, &sb) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

uint64_t tu_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

double tu_randu(uint64_t *s)
{
    return (double)(tu_rand(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

int tu_run(Suite *s, int need_fixtures)
{
    if (need_fixtures && !tu_fixtures()) {
        fprintf(stderr, "SKIP: shared fixtures not found (FIXTURES=%s)\n",
                getenv("FIXTURES") ? getenv("FIXTURES") : "");
        return 77;
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

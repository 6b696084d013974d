/*
 * check_registry.c - unit tests of the adapter registry below archive
 * verification (rows come through lora_reg_add_meta with files of our
 * own), so that every rule is tested on its own: semantic version
 * order, schema versions, keys, resolve, blob corruption, gc, evals,
 * concurrent writers, and a writer killed midway.  tests/registry.sh
 * tests the same through lora-registry with real signed archives.
 */
#include "testutil.h"

#include "internal.h"
#include "registry_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static lora_error e;

static lora_registry *fresh(char **dir)
{
    *dir = tu_tmpdir();
    char *db = tu_path(*dir, "registry.db");
    lora_registry *reg;
    int rc = lora_registry_open(db, LORA_REG_CREATE, &reg, &e);
    ck_assert_msg(rc == 0, "%s", e.msg);
    free(db);
    return reg;
}

/* A file of n pseudo-random bytes from seed. */
static char *blob_file(const char *dir, const char *name, size_t n, uint64_t seed)
{
    char *p = tu_path(dir, name);
    unsigned char *b = malloc(n);
    ck_assert_ptr_nonnull(b);
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)tu_rand(&s);
    tu_write(p, b, n);
    free(b);
    return p;
}

static int add(lora_registry *reg, const char *dir, const char *name, const char *version,
               const char *task, const char *base, int trusted, uint64_t seed)
{
    char fname[256];
    snprintf(fname, sizeof fname, "src-%s-%s-%llu", name, version, (unsigned long long)seed);
    char *src = blob_file(dir, fname, 1000 + seed % 100, seed);
    lora_reg_meta m = {name, version, task, base, NULL, 8, 16.0, trusted ? "ABCDEF" : "123", trusted};
    int rc = lora_reg_add_meta(reg, src, &m, NULL, NULL, &e);
    free(src);
    return rc;
}

static void trust_test_key(lora_registry *reg)
{
    int added;
    ck_assert_int_eq(lora_registry_trust(reg, "ABCDEF",
                                         "RWQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                         "tests", &added, &e),
                     0);
}

/* ---- semantic versions ---- */

START_TEST(semver_order)
{
    /* Ascending precedence, semver.org 2.0.0 section 11 and more. */
    const char *v[] = {"0.0.1",        "0.9.0",      "1.0.0-alpha",  "1.0.0-alpha.1",
                       "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
                       "1.0.0-rc.1",   "1.0.0",      "1.2.0",        "1.9.0",
                       "1.10.0-rc.1",  "1.10.0",     "1.10.1",       "2.0.0",
                       "10.0.0",       "9223372036854775807.0.0"};
    size_t n = sizeof v / sizeof v[0];
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(lora_semver_valid(v[i]), "%s should be valid", v[i]);
        for (size_t j = 0; j < n; j++) {
            int c = lora_semver_cmp(v[i], v[j]);
            int want = i < j ? -1 : i > j;
            ck_assert_msg(c == want, "cmp(%s, %s) = %d, want %d", v[i], v[j], c, want);
        }
    }
    /* Build metadata: same precedence, still a total order by text. */
    lora_semver_parts a, b;
    ck_assert_int_eq(lora_semver_split("1.0.0+build.1", &a), 0);
    ck_assert_int_eq(lora_semver_split("1.0.0+build.2", &b), 0);
    ck_assert_int_eq(lora_semver_precedence(&a, &b), 0);
    ck_assert_int_lt(lora_semver_cmp("1.0.0+build.1", "1.0.0+build.2"), 0);
    ck_assert_int_gt(lora_semver_cmp("1.0.0", "not-a-version"), 0);

    const char *bad[] = {"", "1", "1.2", "1.2.3.4", "01.2.3", "1.02.3", "1.2.03", "1.2.3-",
                         "1.2.3-01", "1.2.3-a..b", "1.2.3+", "1.2.3-a_b", "v1.2.3", " 1.2.3",
                         "1.2.3 ", "-1.2.3", "9223372036854775808.0.0", "1.2.3-rc.1+",
                         "1.2.3+a+b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(!lora_semver_valid(bad[i]), "'%s' should be invalid", bad[i]);
    ck_assert(lora_semver_valid("1.2.3-0.a-b.0+001.x-y"));
}
END_TEST

/* ---- opening and schema ---- */

START_TEST(open_missing_and_default_path)
{
    char *dir = tu_tmpdir();
    char *db = tu_path(dir, "sub/dir/registry.db");
    lora_registry *reg;
    ck_assert_int_eq(lora_registry_open(db, 0, &reg, &e), LORA_EINPUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "no registry at"));
    ck_assert_int_eq(lora_registry_open(db, LORA_REG_CREATE, &reg, &e), 0);
    ck_assert_int_eq(lora_registry_schema_version(reg), lora_registry_schema_latest());
    char *blobs = tu_path(dir, "sub/dir/blobs");
    ck_assert_str_eq(lora_registry_blob_dir(reg), blobs);
    struct stat sb;
    ck_assert_int_eq(stat(blobs, &sb), 0);
    lora_registry_close(reg);
    /* A second open migrates nothing and works without CREATE. */
    ck_assert_int_eq(lora_registry_open(db, 0, &reg, &e), 0);
    lora_registry_close(reg);

    char *p;
    setenv("LORA_REGISTRY", "/x/y.db", 1);
    ck_assert_int_eq(lora_registry_default_path(&p, &e), 0);
    ck_assert_str_eq(p, "/x/y.db");
    free(p);
    unsetenv("LORA_REGISTRY");
    setenv("XDG_DATA_HOME", "/data", 1);
    ck_assert_int_eq(lora_registry_default_path(&p, &e), 0);
    ck_assert_str_eq(p, "/data/lora/registry.db");
    free(p);
    setenv("XDG_DATA_HOME", "relative", 1); /* ignored, as the XDG spec says */
    setenv("HOME", "/home/u", 1);
    ck_assert_int_eq(lora_registry_default_path(&p, &e), 0);
    ck_assert_str_eq(p, "/home/u/.local/share/lora/registry.db");
    free(p);
    free(blobs);
    free(db);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

static void set_user_version(const char *db, int v)
{
    sqlite3 *s;
    ck_assert_int_eq(sqlite3_open(db, &s), SQLITE_OK);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v);
    ck_assert_int_eq(sqlite3_exec(s, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(s);
}

START_TEST(newer_schema_refused)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    char *db = strdup(lora_registry_path(reg));
    lora_registry_close(reg);
    int newer = lora_registry_schema_latest() + 1;
    set_user_version(db, newer);
    ck_assert_int_eq(lora_registry_open(db, 0, &reg, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "newer lora-tools") && strstr(e.msg, "upgrade"), "%s", e.msg);
    char want[64];
    snprintf(want, sizeof want, "schema version %d", newer);
    ck_assert_msg(strstr(e.msg, want) != NULL, "%s", e.msg);
    /* Nothing was changed by the refusal. */
    sqlite3 *s;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open(db, &s), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(s, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), newer);
    sqlite3_finalize(st);
    sqlite3_close(s);
    free(db);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(not_a_registry)
{
    char *dir = tu_tmpdir();
    char *junk = tu_path(dir, "junk.db");
    tu_write(junk, "this is not sqlite at all, just some text that is long enough......", 68);
    lora_registry *reg;
    ck_assert_int_eq(lora_registry_open(junk, 0, &reg, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "not an SQLite database"), "%s", e.msg);

    char *other = tu_path(dir, "other.db");
    sqlite3 *s;
    ck_assert_int_eq(sqlite3_open(other, &s), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(s, "CREATE TABLE t (x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(s);
    ck_assert_int_eq(lora_registry_open(other, LORA_REG_CREATE, &reg, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "not a lora registry"), "%s", e.msg);

    char *folder = tu_path(dir, "folder.db");
    ck_assert_int_eq(mkdir(folder, 0755), 0);
    ck_assert_int_eq(lora_registry_open(folder, 0, &reg, &e), LORA_EINPUT);
    free(folder);
    free(junk);
    free(other);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(wal_and_foreign_keys)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    char *db = strdup(lora_registry_path(reg));
    lora_registry_close(reg);
    sqlite3 *s;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open(db, &s), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(s, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(s);
    free(db);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* ---- rows, resolve ---- */

START_TEST(resolve_newest_semver)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    const char *versions[] = {"1.9.0", "1.10.0-rc.1", "1.2.0", "1.10.0-beta.11", "1.10.0-beta.2"};
    for (size_t i = 0; i < 5; i++)
        ck_assert_msg(add(reg, dir, "sql-a", versions[i], "sql", "llama", 1, i) == 0, "%s", e.msg);
    lora_reg_adapter *a;
    ck_assert_int_eq(lora_registry_resolve(reg, "sql", NULL, NULL, &a, &e), 0);
    ck_assert_str_eq(a->version, "1.10.0-rc.1"); /* rc.1 > beta.11 > beta.2 > 1.9.0 */
    lora_reg_adapter_free(a);
    ck_assert_int_eq(add(reg, dir, "sql-a", "1.10.0", "sql", "llama", 1, 10), 0);
    ck_assert_int_eq(lora_registry_resolve(reg, "sql", NULL, NULL, &a, &e), 0);
    ck_assert_str_eq(a->version, "1.10.0");
    ck_assert_ptr_nonnull(strstr(a->path, a->hash));
    lora_reg_adapter_free(a);

    /* An untrusted newer one is never picked; another base is separate. */
    ck_assert_int_eq(add(reg, dir, "sql-b", "3.0.0", "sql", "llama", 0, 20), 0);
    ck_assert_int_eq(add(reg, dir, "sql-c", "2.0.0", "sql", "gpt2", 1, 21), 0);
    ck_assert_int_eq(lora_registry_resolve(reg, "sql", "llama", NULL, &a, &e), 0);
    ck_assert_str_eq(a->name, "sql-a");
    ck_assert_str_eq(a->version, "1.10.0");
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_registry_resolve(reg, "sql", NULL, NULL, &a, &e), 0);
    ck_assert_str_eq(a->name, "sql-c");
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_registry_resolve(reg, "sql", NULL, "1.9.0", &a, &e), 0);
    ck_assert_str_eq(a->version, "1.9.0");
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_registry_resolve(reg, "sql", NULL, "3.0.0", &a, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "untrusted"), "%s", e.msg);
    ck_assert_int_eq(lora_registry_resolve(reg, "nope", NULL, NULL, &a, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "no trusted adapter for task nope"), "%s", e.msg);

    /* ls: by name then semver; filters. */
    lora_reg_adapter *v;
    size_t n;
    ck_assert_int_eq(lora_registry_ls(reg, "sql", "llama", &v, &n, &e), 0);
    ck_assert_uint_eq(n, 7);
    const char *want[] = {"1.2.0", "1.9.0", "1.10.0-beta.2", "1.10.0-beta.11", "1.10.0-rc.1",
                          "1.10.0"};
    for (size_t i = 0; i < 6; i++) {
        ck_assert_str_eq(v[i].name, "sql-a");
        ck_assert_str_eq(v[i].version, want[i]);
    }
    ck_assert_str_eq(v[6].name, "sql-b");
    ck_assert_int_eq(v[6].trusted, 0);
    lora_reg_adapters_free(v, n);
    ck_assert_int_eq(lora_registry_ls(reg, NULL, "gpt2", &v, &n, &e), 0);
    ck_assert_uint_eq(n, 1);
    lora_reg_adapters_free(v, n);

    /* get: NAME (newest), NAME@VERSION, hash and hash prefix */
    ck_assert_int_eq(lora_registry_get(reg, "sql-a", 1, &a, &e), 0);
    ck_assert_str_eq(a->version, "1.10.0");
    char hash[65], prefix[13];
    memcpy(hash, a->hash, 65);
    snprintf(prefix, sizeof prefix, "%.12s", hash);
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_registry_get(reg, "reg:sql-a@1.9.0", 0, &a, &e), 0);
    ck_assert_str_eq(a->version, "1.9.0");
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_registry_get(reg, prefix, 0, &a, &e), 0);
    ck_assert_str_eq(a->hash, hash);
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_registry_get(reg, "sql-a@9.9.9", 0, &a, &e), LORA_EINPUT);
    lora_registry_close(reg);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(add_twice_and_conflicts)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    char *src = blob_file(dir, "a", 5000, 7);
    lora_reg_meta m = {"x", "1.0.0", "t", "base", "00ff", 4, 8, "ABCDEF", 1};
    int added = -1;
    lora_reg_adapter *a;
    ck_assert_int_eq(lora_reg_add_meta(reg, src, &m, &a, &added, &e), 0);
    ck_assert_int_eq(added, 1);
    ck_assert_uint_eq(a->size, 5000);
    ck_assert_str_eq(a->base_hash, "00ff");
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_reg_add_meta(reg, src, &m, NULL, &added, &e), 0);
    ck_assert_int_eq(added, 0);
    /* Same name and version, other bytes: refused. */
    char *other = blob_file(dir, "b", 5000, 8);
    ck_assert_int_eq(lora_reg_add_meta(reg, other, &m, NULL, &added, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "already registered with a different archive"), "%s", e.msg);
    /* Not semver, no name, no task. */
    lora_reg_meta bad = m;
    bad.version = "1.0";
    ck_assert_int_eq(lora_reg_add_meta(reg, other, &bad, NULL, NULL, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "not a semantic version"), "%s", e.msg);
    bad = m;
    bad.name = "a@b";
    ck_assert_int_eq(lora_reg_add_meta(reg, other, &bad, NULL, NULL, &e), LORA_EINPUT);
    bad = m;
    bad.task = "";
    ck_assert_int_eq(lora_reg_add_meta(reg, other, &bad, NULL, NULL, &e), LORA_EINPUT);
    /* A signer not (or no longer) trusted cannot add a trusted row. */
    bad = m;
    bad.version = "2.0.0";
    bad.signer = "99";
    ck_assert_int_eq(lora_reg_add_meta(reg, other, &bad, NULL, NULL, &e), LORA_ECHECK);
    /* Nothing of the refused adds is left in the blob folder. */
    lora_reg_adapter *v;
    size_t n;
    ck_assert_int_eq(lora_registry_ls(reg, NULL, NULL, &v, &n, &e), 0);
    ck_assert_uint_eq(n, 1);
    lora_reg_adapters_free(v, n);
    size_t gone;
    ck_assert_int_eq(lora_registry_gc(reg, &gone, NULL, &e), 0);
    ck_assert_uint_eq(gone, 0);
    free(src);
    free(other);
    lora_registry_close(reg);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(trust_untrust)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    const char *k1 = "RWQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const char *k2 = "RWQBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    int added;
    ck_assert_int_eq(lora_registry_trust(reg, "ABCDEF", k1, "alice", &added, &e), 0);
    ck_assert_int_eq(added, 1);
    ck_assert_int_eq(lora_registry_trust(reg, "ABCDEF", k1, "alice2", &added, &e), 0);
    ck_assert_int_eq(added, 0);
    ck_assert_int_eq(lora_registry_trust(reg, "ABCDEF", k2, NULL, &added, &e), LORA_EINPUT);
    ck_assert_int_eq(lora_registry_trust(reg, "FEDCBA", k1, NULL, &added, &e), LORA_EINPUT);
    ck_assert_int_eq(lora_registry_trust(reg, "1234", k2, NULL, &added, &e), 0);
    lora_reg_key *k;
    size_t n;
    ck_assert_int_eq(lora_registry_keys(reg, &k, &n, &e), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(k[1].key_id, "ABCDEF");
    ck_assert_str_eq(k[1].name, "alice2");
    ck_assert_ptr_null(k[0].name);
    lora_reg_keys_free(k, n);

    ck_assert_int_eq(add(reg, dir, "a", "1.0.0", "t", "b", 1, 1), 0);
    ck_assert_int_eq(add(reg, dir, "a", "1.1.0", "t", "b", 1, 2), 0);
    lora_reg_adapter *a;
    ck_assert_int_eq(lora_registry_resolve(reg, "t", NULL, NULL, &a, &e), 0);
    lora_reg_adapter_free(a);
    size_t demoted;
    ck_assert_int_eq(lora_registry_untrust(reg, "ABCDEF", &demoted, &e), 0);
    ck_assert_uint_eq(demoted, 2);
    ck_assert_int_eq(lora_registry_resolve(reg, "t", NULL, NULL, &a, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "only untrusted"), "%s", e.msg);
    ck_assert_int_eq(lora_registry_untrust(reg, "ABCDEF", &demoted, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "not trusted"), "%s", e.msg);
    lora_reg_adapter *ls;
    size_t nls;
    ck_assert_int_eq(lora_registry_ls(reg, NULL, NULL, &ls, &nls, &e), 0);
    ck_assert_uint_eq(nls, 2);
    ck_assert_int_eq(ls[0].trusted, 0);
    ck_assert_int_eq(ls[1].trusted, 0);
    lora_reg_adapters_free(ls, nls);
    /* Trust is derived from the keys table when asked: trusting the key
     * again makes its rows trusted again, without re-adding them. */
    ck_assert_int_eq(lora_registry_trust(reg, "ABCDEF", k1, NULL, &added, &e), 0);
    ck_assert_int_eq(lora_registry_resolve(reg, "t", NULL, NULL, &a, &e), 0);
    ck_assert_str_eq(a->version, "1.1.0");
    ck_assert_int_eq(a->trusted, 1);
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_registry_get(reg, "a@1.0.0", 0, &a, &e), 0);
    ck_assert_int_eq(a->trusted, 1);
    lora_reg_adapter_free(a);
    /* ...but never a row whose signature was not verified at add */
    ck_assert_int_eq(add(reg, dir, "u", "1.0.0", "t2", "b", 0, 9), 0);
    ck_assert_int_eq(lora_registry_trust(reg, "123",
                                         "RWQCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC",
                                         NULL, &added, &e),
                     0);
    ck_assert_int_eq(lora_registry_get(reg, "u", 0, &a, &e), 0);
    ck_assert_int_eq(a->trusted, 0);
    lora_reg_adapter_free(a);
    lora_registry_close(reg);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

static void corrupt(const char *path, long off)
{
    ck_assert_int_eq(chmod(path, 0644), 0);
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char c;
    ck_assert_int_eq(pread(fd, &c, 1, off), 1);
    c ^= 0x01;
    ck_assert_int_eq(pwrite(fd, &c, 1, off), 1);
    close(fd);
}

START_TEST(corrupted_blob)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    ck_assert_int_eq(add(reg, dir, "a", "1.0.0", "t", "b", 1, 1), 0);
    ck_assert_int_eq(add(reg, dir, "a", "2.0.0", "t", "b", 1, 2), 0);
    char **p;
    size_t n;
    ck_assert_int_eq(lora_registry_verify(reg, &p, &n, &e), 0);
    ck_assert_uint_eq(n, 0);
    lora_reg_adapter *a;
    ck_assert_int_eq(lora_registry_resolve(reg, "t", NULL, NULL, &a, &e), 0);
    char *path = strdup(a->path);
    lora_reg_adapter_free(a);
    corrupt(path, 500);
    ck_assert_int_eq(lora_registry_verify(reg, &p, &n, &e), LORA_ECHECK);
    ck_assert_uint_eq(n, 1);
    ck_assert_msg(strstr(p[0], "a@2.0.0") && strstr(p[0], "corrupted"), "%s", p[0]);
    lora_reg_problems_free(p, n);
    /* resolve refuses it rather than falling back to 1.0.0 */
    ck_assert_int_eq(lora_registry_resolve(reg, "t", NULL, NULL, &a, &e), LORA_ECHECK);
    ck_assert_msg(strstr(e.msg, "corrupted") && strstr(e.msg, path), "%s", e.msg);
    ck_assert_int_eq(lora_registry_get(reg, "a@2.0.0", 1, &a, &e), LORA_ECHECK);
    ck_assert_int_eq(lora_registry_get(reg, "a@2.0.0", 0, &a, &e), 0); /* show still works */
    lora_reg_adapter_free(a);
    /* missing */
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(lora_registry_resolve(reg, "t", NULL, NULL, &a, &e), LORA_ECHECK);
    ck_assert_msg(strstr(e.msg, "missing"), "%s", e.msg);
    ck_assert_int_eq(lora_registry_verify(reg, &p, &n, &e), LORA_ECHECK);
    ck_assert_msg(strstr(p[0], "missing"), "%s", p[0]);
    lora_reg_problems_free(p, n);
    /* adding the same archive again repairs the blob */
    ck_assert_int_eq(add(reg, dir, "a", "2.0.0", "t", "b", 1, 2), 0);
    ck_assert_int_eq(lora_registry_verify(reg, &p, &n, &e), 0);
    free(path);
    lora_registry_close(reg);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(rm_gc)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    ck_assert_int_eq(add(reg, dir, "a", "1.0.0", "t", "b", 1, 1), 0);
    ck_assert_int_eq(add(reg, dir, "a", "2.0.0", "t", "b", 1, 2), 0);
    lora_reg_adapter *a;
    ck_assert_int_eq(lora_registry_get(reg, "a@1.0.0", 0, &a, &e), 0);
    char *old = strdup(a->path);
    uint64_t size = a->size;
    lora_reg_adapter_free(a);
    /* A stale temporary from a killed add, a fresh one, a stranger. */
    char *stale = tu_path(lora_registry_blob_dir(reg), "incoming.tmp-AAAAAA");
    char *young = tu_path(lora_registry_blob_dir(reg), "incoming.tmp-BBBBBB");
    char *stranger = tu_path(lora_registry_blob_dir(reg), "README");
    tu_write(stale, "x", 1);
    tu_write(young, "yy", 2);
    tu_write(stranger, "z", 1);
    struct timespec ts[2] = {{time(NULL) - 7200, 0}, {time(NULL) - 7200, 0}};
    ck_assert_int_eq(utimensat(AT_FDCWD, stale, ts, 0), 0);

    ck_assert_int_eq(lora_registry_rm(reg, "a", "1.0.0", &e), 0);
    ck_assert_int_eq(lora_registry_rm(reg, "a", "1.0.0", &e), LORA_EINPUT);
    ck_assert_int_eq(access(old, F_OK), 0); /* blob stays until gc */
    size_t gone;
    uint64_t bytes;
    ck_assert_int_eq(lora_registry_gc(reg, &gone, &bytes, &e), 0);
    ck_assert_uint_eq(gone, 2);
    ck_assert_uint_eq(bytes, size + 1);
    ck_assert_int_ne(access(old, F_OK), 0);
    ck_assert_int_ne(access(stale, F_OK), 0);
    ck_assert_int_eq(access(young, F_OK), 0);
    ck_assert_int_eq(access(stranger, F_OK), 0);
    ck_assert_int_eq(lora_registry_resolve(reg, "t", NULL, NULL, &a, &e), 0);
    ck_assert_str_eq(a->version, "2.0.0");
    lora_reg_adapter_free(a);
    free(old);
    free(stale);
    free(young);
    free(stranger);
    lora_registry_close(reg);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(evals_record)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    ck_assert_int_eq(add(reg, dir, "a", "1.0.0", "t", "b", 1, 1), 0);
    ck_assert_int_eq(add(reg, dir, "a", "1.1.0", "t", "b", 1, 2), 0);
    lora_reg_eval ev = {"a@1.0.0", "bh", "dh", "mmlu", "accuracy", 0.5, 100, 1000, "0.1.0", NULL, NULL};
    ck_assert_int_eq(lora_registry_record_eval(reg, &ev, &e), 0);
    ev.adapter = "reg:a@1.1.0";
    ev.value = 0.625;
    ev.time = 2000;
    ck_assert_int_eq(lora_registry_record_eval(reg, &ev, &e), 0);
    lora_reg_adapter *a;
    ck_assert_int_eq(lora_registry_get(reg, "a@1.1.0", 0, &a, &e), 0);
    ev.adapter = a->hash; /* by archive hash */
    ev.metric = "nll";
    ev.value = 1.25;
    ev.time = 0; /* now */
    ev.tool_version = NULL;
    ck_assert_int_eq(lora_registry_record_eval(reg, &ev, &e), 0);
    lora_reg_adapter_free(a);
    ev.adapter = "zzz@1.0.0";
    ck_assert_int_eq(lora_registry_record_eval(reg, &ev, &e), LORA_EINPUT);
    ev.adapter = "a@1.0.0";
    ev.value = 0.0 / 0.0;
    ck_assert_int_eq(lora_registry_record_eval(reg, &ev, &e), LORA_EINPUT);
    ev.value = 1;
    ev.metric = NULL;
    ck_assert_int_eq(lora_registry_record_eval(reg, &ev, &e), LORA_EINPUT);

    lora_reg_eval *v;
    size_t n;
    ck_assert_int_eq(lora_registry_evals(reg, NULL, &v, &n, &e), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(v[0].adapter, "a@1.0.0");
    ck_assert_str_eq(v[1].adapter, "a@1.1.0");
    ck_assert(v[1].value == 0.625);
    ck_assert_uint_eq(v[1].items, 100);
    ck_assert_str_eq(v[1].dataset, "mmlu");
    ck_assert_str_eq(v[2].metric, "nll");
    ck_assert_str_eq(v[2].tool_version, lora_version());
    ck_assert_int_gt(v[2].time, 2000);
    lora_reg_evals_free(v, n);
    ck_assert_int_eq(lora_registry_evals(reg, "a@1.1.0", &v, &n, &e), 0);
    ck_assert_uint_eq(n, 2);
    lora_reg_evals_free(v, n);
    /* rm takes its results along (foreign key, ON DELETE CASCADE) */
    ck_assert_int_eq(lora_registry_rm(reg, "a", "1.1.0", &e), 0);
    ck_assert_int_eq(lora_registry_evals(reg, "a", &v, &n, &e), 0);
    ck_assert_uint_eq(n, 1);
    lora_reg_evals_free(v, n);
    lora_registry_close(reg);
    tu_rmtree(dir);
    free(dir);
}
END_TEST


/* ---- through lora_registry_add and lora_adapter_load (source.c) ---- */

/* A PEFT folder with one r=1 module (A: 1x2, B: 1x1, F32 zeros). */
static void tiny_adapter(const char *dir)
{
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    char *cfg = tu_path(dir, "adapter_config.json");
    const char *c = "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 2, "
                    "\"target_modules\": [\"q\"], \"base_model_name_or_path\": \"tiny-base\"}";
    tu_write(cfg, c, strlen(c));
    char h[256];
    int n = snprintf(h, sizeof h, "%s",
                     "{\"base_model.model.l.q.lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[1,2],"
                     "\"data_offsets\":[0,8]},\"base_model.model.l.q.lora_B.weight\":{\"dtype\":"
                     "\"F32\",\"shape\":[1,1],\"data_offsets\":[8,12]}}");
    while (n % 8)
        h[n++] = ' ';
    unsigned char buf[512] = {0};
    buf[0] = (unsigned char)n;
    memcpy(buf + 8, h, (size_t)n);
    char *st = tu_path(dir, "adapter_model.safetensors");
    tu_write(st, buf, 8 + (size_t)n + 12);
    free(cfg);
    free(st);
}

START_TEST(add_archives_and_load_by_task)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    char *ad = tu_path(dir, "ad");
    tiny_adapter(ad);
    lora_seckey *sk, *sk2;
    ck_assert_int_eq(lora_keygen(&sk, &e), 0);
    ck_assert_int_eq(lora_keygen(&sk2, &e), 0);
    lora_pubkey pk;
    lora_seckey_pubkey(sk, &pk);
    char id[LORA_KEYID_STR], b64[57];
    lora_keyid_str(pk.key_id, id);
    lora_pubkey_b64(&pk, b64);
    ck_assert_int_eq(lora_registry_trust(reg, id, b64, "me", NULL, &e), 0);

    lora_pack_opts po = {0};
    po.adapter_dir = ad;
    po.name = "tiny";
    po.task = "t";
    po.version = "1.0.0";
    char *good = tu_path(dir, "good.lora"), *other = tu_path(dir, "other.lora");
    ck_assert_msg(lora_archive_create(good, &po, sk, &e) == 0, "%s", e.msg);
    po.version = "2.0.0";
    ck_assert_int_eq(lora_archive_create(other, &po, sk2, &e), 0);

    lora_reg_adapter *a;
    int added;
    char why[LORA_ERROR_MAX];
    ck_assert_msg(lora_registry_add(reg, good, 0, &a, &added, why, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(added, 1);
    ck_assert_int_eq(a->trusted, 1);
    ck_assert_str_eq(a->signer, id);
    ck_assert_str_eq(a->base_model, "tiny-base");
    ck_assert_uint_eq(a->r, 1);
    lora_reg_adapter_free(a);
    /* signed by a key we do not trust */
    ck_assert_int_eq(lora_registry_add(reg, other, 0, &a, &added, why, &e), LORA_ECHECK);
    ck_assert_int_eq(lora_registry_add(reg, other, 1, &a, &added, why, &e), 0);
    ck_assert_int_eq(a->trusted, 0);
    ck_assert_msg(strstr(why, "other.lora: not signed by any of the registry's 1 trusted keys") &&
                      !strstr(why, "incoming"),
                  "%s", why);
    lora_reg_adapter_free(a);

    lora_source_opts so = {0};
    so.registry = lora_registry_path(reg);
    lora_adapter *la = NULL;
    int rc = lora_adapter_load("task:t", &so, &la, &e);
    ck_assert_msg(rc == LORA_OK, "%s", e.msg);
    ck_assert_uint_eq(la->n_modules, 1);
    ck_assert_uint_eq(la->r, 1);
    lora_adapter_free(la);
    ck_assert_int_eq(lora_adapter_load("reg:tiny@1.0.0", &so, &la, &e), 0);
    lora_adapter_free(la);
    ck_assert_int_eq(lora_adapter_load("reg:tiny@2.0.0", &so, &la, &e), LORA_ECHECK);
    ck_assert_msg(strstr(e.msg, "untrusted"), "%s", e.msg);
    so.no_verify = 1; /* the user's say-so: opened unverified */
    ck_assert_msg(lora_adapter_load("reg:tiny@2.0.0", &so, &la, &e) == 0, "%s", e.msg);
    lora_adapter_free(la);
    so.no_verify = 0;
    /* reg:NAME without @VERSION is NAME's newest version, as show takes it */
    ck_assert_int_eq(lora_adapter_load("reg:tiny", &so, &la, &e), LORA_ECHECK);
    ck_assert_msg(strstr(e.msg, "tiny@2.0.0") && strstr(e.msg, "untrusted"), "%s", e.msg);
    ck_assert_int_eq(lora_registry_rm(reg, "tiny", "2.0.0", &e), 0);
    ck_assert_msg(lora_adapter_load("reg:tiny", &so, &la, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(la->path, "reg:tiny@1.0.0"); /* named by the registry, not a path */
    lora_adapter_free(la);
    ck_assert_int_eq(lora_adapter_load("task:nope", &so, &la, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "task:nope") && strstr(e.msg, "no trusted adapter"), "%s", e.msg);
    so.registry = "/nonexistent/registry.db";
    ck_assert_int_eq(lora_adapter_load("task:t", &so, &la, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "no registry at"), "%s", e.msg);
    so.registry = lora_registry_path(reg);
    /* corrupted blob: refused by the loader too */
    ck_assert_int_eq(lora_registry_resolve(reg, "t", NULL, NULL, &a, &e), 0);
    corrupt(a->path, 100);
    lora_reg_adapter_free(a);
    ck_assert_int_eq(lora_adapter_load("task:t", &so, &la, &e), LORA_ECHECK);
    ck_assert_msg(strstr(e.msg, "corrupted"), "%s", e.msg);

    lora_seckey_free(sk);
    lora_seckey_free(sk2);
    free(good);
    free(other);
    free(ad);
    lora_registry_close(reg);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* ---- read-only use (issue 20.9) ---- */

/* What a reader does; returns 0 when every read worked and every write
 * was refused, else the number of the step that went wrong. */
static int reader_steps(const char *db)
{
    lora_registry *reg;
    lora_error le;
    if (lora_registry_open(db, LORA_REG_READONLY, &reg, &le) != 0) {
        fprintf(stderr, "read-only open: %s\n", le.msg);
        return 10;
    }
    int step = 0;
    lora_reg_adapter *v = NULL, *a = NULL;
    size_t n = 0;
    char **p = NULL;
    size_t np = 0;
    lora_reg_eval *ev = NULL;
    size_t nev = 0;
    if (lora_registry_ls(reg, NULL, NULL, &v, &n, &le) || n != 1)
        step = 11;
    else if (lora_registry_resolve(reg, "t", NULL, NULL, &a, &le))
        step = 12;
    else if (lora_registry_verify(reg, &p, &np, &le) || np)
        step = 13;
    else if (lora_registry_evals(reg, "a", &ev, &nev, &le))
        step = 14;
    else if (lora_registry_rm(reg, "a", "1.0.0", &le) == 0 || !strstr(le.msg, "readonly"))
        step = 15;
    if (step)
        fprintf(stderr, "step %d: %s\n", step, le.msg);
    lora_reg_adapters_free(v, n);
    lora_reg_adapter_free(a);
    lora_reg_problems_free(p, np);
    lora_reg_evals_free(ev, nev);
    lora_registry_close(reg);
    return step;
}

START_TEST(read_only_open)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    ck_assert_int_eq(add(reg, dir, "a", "1.0.0", "t", "b", 1, 1), 0);
    char *db = strdup(lora_registry_path(reg));
    lora_registry_close(reg);
    ck_assert_int_eq(reader_steps(db), 0);
    /* An empty file is no registry to read (nothing can create its tables). */
    char *empty = tu_path(dir, "empty.db");
    tu_write(empty, "", 0);
    ck_assert_int_eq(lora_registry_open(empty, LORA_REG_READONLY, &reg, &e), LORA_EINPUT);
    ck_assert_msg(strstr(e.msg, "empty registry"), "%s", e.msg);
    free(empty);

    /* A user who cannot write the folder: no -shm can be created, so the
     * WAL database is read as immutable.  Root passes every permission
     * check, so a child drops to nobody for this part. */
    if (geteuid() == 0) {
        char *blobs = tu_path(dir, "blobs");
        ck_assert_int_eq(chmod(dir, 0755), 0);
        ck_assert_int_eq(chmod(db, 0644), 0);
        ck_assert_int_eq(chmod(blobs, 0755), 0);
        free(blobs);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            int code = 77;
            if (setgid(65534) == 0 && setuid(65534) == 0)
                code = access(dir, W_OK) == 0 ? 9 : reader_steps(db);
            free(db);
            free(dir);
            _exit(code);
        }
        int status;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
        ck_assert_msg(WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 77,
                      "reader as nobody failed at step %d", WEXITSTATUS(status));
    }
    free(db);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* ---- a damaged database (issue 20.11) ---- */

START_TEST(verify_damaged_database)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    for (int i = 0; i < 40; i++) {
        char v[32];
        snprintf(v, sizeof v, "1.%d.0", i);
        ck_assert_int_eq(add(reg, dir, "a", v, "t", "b", 1, (uint64_t)i + 1), 0);
    }
    char *db = strdup(lora_registry_path(reg));
    lora_registry_close(reg);
    /* Damage the last page (an index or table page; page 1, the schema,
     * stays whole so that the database still opens). */
    struct stat sb;
    ck_assert_int_eq(stat(db, &sb), 0);
    ck_assert_int_gt(sb.st_size, 4 * 4096);
    int fd = open(db, O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char junk[512];
    memset(junk, 0xA5, sizeof junk);
    ck_assert_int_eq(pwrite(fd, junk, sizeof junk, sb.st_size - 4096 + 8), (ssize_t)sizeof junk);
    ck_assert_int_eq(pwrite(fd, junk, sizeof junk, sb.st_size - 2 * 4096 + 8), (ssize_t)sizeof junk);
    close(fd);
    ck_assert_int_eq(lora_registry_open(db, LORA_REG_READONLY, &reg, &e), 0);
    char **p;
    size_t n;
    int rc = lora_registry_verify(reg, &p, &n, &e);
    ck_assert_int_eq(rc, LORA_ECHECK);
    ck_assert_uint_ge(n, 1);
    ck_assert_msg(strstr(p[0], "database damaged"), "%s", p[0]);
    lora_reg_problems_free(p, n);
    lora_registry_close(reg);
    free(db);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* ---- serving what was checked (issue 20.7), the base (14.1) ---- */

/* A one-tensor base for tiny_adapter: l.q.weight, F32 [1, 2] = {w0, w1}. */
static char *tiny_base(const char *dir, const char *name, float w0, float w1)
{
    char h[128];
    int n = snprintf(h, sizeof h, "%s",
                     "{\"l.q.weight\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}}");
    while (n % 8)
        h[n++] = ' ';
    unsigned char buf[256] = {0};
    buf[0] = (unsigned char)n;
    memcpy(buf + 8, h, (size_t)n);
    memcpy(buf + 8 + n, &w0, 4);
    memcpy(buf + 8 + n + 4, &w1, 4);
    char *p = tu_path(dir, name);
    tu_write(p, buf, 8 + (size_t)n + 8);
    return p;
}

/* A registry trusting one fresh key, and archives of tiny_adapter
 * signed by it. */
struct signed_reg {
    char *dir, *ad;
    lora_registry *reg;
    lora_seckey *sk;
    lora_source_opts so;
};

static void signed_reg_init(struct signed_reg *r)
{
    r->reg = fresh(&r->dir);
    r->ad = tu_path(r->dir, "ad");
    tiny_adapter(r->ad);
    ck_assert_int_eq(lora_keygen(&r->sk, &e), 0);
    lora_pubkey pk;
    lora_seckey_pubkey(r->sk, &pk);
    char id[LORA_KEYID_STR], b64[57];
    lora_keyid_str(pk.key_id, id);
    lora_pubkey_b64(&pk, b64);
    ck_assert_int_eq(lora_registry_trust(r->reg, id, b64, "me", NULL, &e), 0);
    memset(&r->so, 0, sizeof r->so);
    r->so.registry = lora_registry_path(r->reg);
}

static lora_reg_adapter *signed_add(struct signed_reg *r, const char *name, const char *task,
                                    const char *version, const char *base)
{
    lora_pack_opts po = {0};
    po.adapter_dir = r->ad;
    po.name = name;
    po.task = task;
    po.version = version;
    po.base = base;
    char f[256];
    snprintf(f, sizeof f, "%s-%s.lora", name, version);
    char *path = tu_path(r->dir, f);
    ck_assert_msg(lora_archive_create(path, &po, r->sk, &e) == 0, "%s", e.msg);
    lora_reg_adapter *a;
    ck_assert_msg(lora_registry_add(r->reg, path, 0, &a, NULL, NULL, &e) == 0, "%s", e.msg);
    free(path);
    return a;
}

static void signed_reg_free(struct signed_reg *r)
{
    lora_seckey_free(r->sk);
    lora_registry_close(r->reg);
    free(r->ad);
    tu_rmtree(r->dir);
    free(r->dir);
}

START_TEST(swapped_blob_refused)
{
    struct signed_reg r;
    signed_reg_init(&r);
    lora_reg_adapter *mine = signed_add(&r, "mine", "t", "1.0.0", NULL);
    lora_reg_adapter *other = signed_add(&r, "other", "t2", "3.0.0", NULL);
    lora_adapter *ad = NULL;
    ck_assert_msg(lora_adapter_load("task:t", &r.so, &ad, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(ad->path, "reg:mine@1.0.0");
    lora_adapter_free(ad);
    /* Another archive signed by the same trusted key put in its place:
     * the signature alone would pass it; the row does not. */
    ck_assert_int_eq(rename(other->path, mine->path), 0);
    ck_assert_int_eq(lora_adapter_load("task:t", &r.so, &ad, &e), LORA_ECHECK);
    ck_assert_ptr_null(ad);
    ck_assert_msg(strstr(e.msg, "mine@1.0.0") && strstr(e.msg, "other@3.0.0") &&
                      strstr(e.msg, "swapped"),
                  "%s", e.msg);
    ck_assert_int_eq(lora_adapter_load("reg:mine@1.0.0", &r.so, &ad, &e), LORA_ECHECK);
    /* ...and one no trusted key signed: named too, not "bad signature" */
    lora_seckey *sk2;
    ck_assert_int_eq(lora_keygen(&sk2, &e), 0);
    lora_pack_opts po = {.adapter_dir = r.ad, .name = "stranger", .task = "t", .version = "9.0.0"};
    ck_assert_int_eq(lora_archive_create(mine->path, &po, sk2, &e), 0);
    lora_seckey_free(sk2);
    ck_assert_int_eq(lora_adapter_load("task:t", &r.so, &ad, &e), LORA_ECHECK);
    ck_assert_msg(strstr(e.msg, "mine@1.0.0") && strstr(e.msg, "stranger@9.0.0"), "%s", e.msg);
    /* A row whose hash matches but whose fields were changed in the
     * database: the manifest disagrees, and that is refused too. */
    lora_reg_adapter *again = signed_add(&r, "other", "t2", "3.0.0", NULL); /* restores its blob */
    lora_reg_adapter_free(again);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(lora_registry_path(r.reg), &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, "UPDATE adapters SET task = 't3' WHERE name = 'other'", NULL,
                                  NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    ck_assert_int_eq(lora_adapter_load("task:t3", &r.so, &ad, &e), LORA_ECHECK);
    ck_assert_msg(strstr(e.msg, "other@3.0.0") && strstr(e.msg, "task is not the registry row's"),
                  "%s", e.msg);
    lora_reg_adapter_free(mine);
    lora_reg_adapter_free(other);
    signed_reg_free(&r);
}
END_TEST

START_TEST(task_prefers_the_base)
{
    struct signed_reg r;
    signed_reg_init(&r);
    char *b1 = tiny_base(r.dir, "b1.safetensors", 1.0f, 2.0f);
    char *b2 = tiny_base(r.dir, "b2.safetensors", 3.0f, 4.0f);
    char *b3 = tiny_base(r.dir, "b3.safetensors", 5.0f, 6.0f);
    lora_reg_adapter_free(signed_add(&r, "for-b1", "t", "1.0.0", b1));
    lora_reg_adapter_free(signed_add(&r, "for-b2", "t", "2.0.0", b2));
    lora_adapter *ad = NULL;
    char *buf = NULL;
    size_t len = 0;
    r.so.warn = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(r.so.warn);
    /* no base given: the newest */
    ck_assert_msg(lora_adapter_load("task:t", &r.so, &ad, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(ad->path, "reg:for-b2@2.0.0");
    lora_adapter_free(ad);
    /* base b1: the one registered for it, though older, with a note */
    r.so.base = b1;
    ck_assert_msg(lora_adapter_load("task:t", &r.so, &ad, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(ad->path, "reg:for-b1@1.0.0");
    lora_adapter_free(ad);
    fflush(r.so.warn);
    ck_assert_msg(strstr(buf, "for-b1@1.0.0, the newest registered for base") &&
                      strstr(buf, "for-b2@2.0.0"),
                  "%s", buf);
    r.so.base = b2;
    ck_assert_msg(lora_adapter_load("task:t", &r.so, &ad, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(ad->path, "reg:for-b2@2.0.0");
    lora_adapter_free(ad);
    /* a base none was made for: the newest, with a warning naming it */
    r.so.base = b3;
    ck_assert_msg(lora_adapter_load("task:t", &r.so, &ad, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(ad->path, "reg:for-b2@2.0.0");
    lora_adapter_free(ad);
    fflush(r.so.warn);
    ck_assert_msg(strstr(buf, "no adapter registered for base") &&
                      strstr(buf, "using for-b2@2.0.0"),
                  "%s", buf);
    fclose(r.so.warn);
    free(buf);
    free(b1);
    free(b2);
    free(b3);
    signed_reg_free(&r);
}
END_TEST

/* ---- concurrency and crashes ---- */

START_TEST(concurrent_writers)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    char *db = strdup(lora_registry_path(reg));
    lora_registry_close(reg);
    enum { PROCS = 8, EACH = 50 };
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        ck_assert_int_ge(pids[p], 0);
        if (pids[p] == 0) {
            /* Each writer opens its own connection, as separate tools do. */
            lora_error ce;
            lora_registry *r;
            if (lora_registry_open(db, 0, &r, &ce)) {
                fprintf(stderr, "child %d: %s\n", p, ce.msg);
                _exit(1);
            }
            for (int i = 0; i < EACH; i++) {
                char name[32], fname[64];
                snprintf(name, sizeof name, "w%d", p);
                snprintf(fname, sizeof fname, "src-%d-%d", p, i);
                char version[32];
                snprintf(version, sizeof version, "1.%d.0", i);
                char *src = tu_path(dir, fname);
                char buf[256];
                int len = snprintf(buf, sizeof buf, "archive %d %d", p, i);
                int fd = open(src, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (fd < 0 || write(fd, buf, (size_t)len) != len)
                    _exit(3);
                close(fd);
                lora_reg_meta m = {name, version, "task", "base", NULL, 4, 4, "ABCDEF", 1};
                if (lora_reg_add_meta(r, src, &m, NULL, NULL, &ce)) {
                    fprintf(stderr, "child %d add %d: %s\n", p, i, ce.msg);
                    _exit(2);
                }
                free(src);
            }
            lora_registry_close(r);
            free(db); /* the child's copies: memcheck follows fork */
            free(dir);
            _exit(0);
        }
    }
    for (int p = 0; p < PROCS; p++) {
        int st;
        ck_assert_int_eq(waitpid(pids[p], &st, 0), pids[p]);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer %d failed (status %d)", p,
                      st);
    }
    ck_assert_int_eq(lora_registry_open(db, 0, &reg, &e), 0);
    lora_reg_adapter *v;
    size_t n;
    ck_assert_int_eq(lora_registry_ls(reg, "task", NULL, &v, &n, &e), 0);
    ck_assert_uint_eq(n, PROCS * EACH);
    lora_reg_adapters_free(v, n);
    char **p;
    ck_assert_int_eq(lora_registry_verify(reg, &p, &n, &e), 0);
    lora_registry_close(reg);
    free(db);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* Every file under a final blob name holds exactly the bytes its name
 * hashes, and every row has its blob. */
static void check_blob_invariants(lora_registry *reg)
{
    char **p;
    size_t n;
    int rc = lora_registry_verify(reg, &p, &n, &e);
    ck_assert_msg(rc == 0, "row without intact blob: %s", n ? p[0] : e.msg);
    lora_reg_problems_free(p, n);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "ls '%s'", lora_registry_blob_dir(reg));
    FILE *ls = popen(cmd, "r");
    ck_assert_ptr_nonnull(ls);
    char line[512];
    while (fgets(line, sizeof line, ls)) {
        line[strcspn(line, "\n")] = '\0';
        if (strlen(line) != 69 || strcmp(line + 64, ".lora") != 0)
            continue;
        char *path = tu_path(lora_registry_blob_dir(reg), line);
        unsigned char d[32];
        char hex[65];
        ck_assert_int_eq(lora_hash_file(path, 32, d, NULL, &e), 0);
        lora_hex(d, 32, hex);
        ck_assert_msg(strncmp(hex, line, 64) == 0, "partial blob under final name %s", line);
        free(path);
    }
    pclose(ls);
}

START_TEST(killed_writer)
{
    char *dir;
    lora_registry *reg = fresh(&dir);
    trust_test_key(reg);
    char *db = strdup(lora_registry_path(reg));
    /* Large enough that copying, hashing and fsync take a while. */
    char *src = blob_file(dir, "big", 24u << 20, 99);
    int killed_before_row = 0, finished = 0;
    for (int round = 0; round < 12; round++) {
        char version[16];
        snprintf(version, sizeof version, "1.0.%d", round);
        /* A different archive each round: append the round number. */
        int fd = open(src, O_WRONLY | O_APPEND);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, version, strlen(version)), (ssize_t)strlen(version));
        close(fd);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            lora_error ce;
            lora_registry *r;
            if (lora_registry_open(db, 0, &r, &ce))
                _exit(1);
            lora_reg_meta m = {"big", version, "t", "b", NULL, 4, 4, "ABCDEF", 1};
            _exit(lora_reg_add_meta(r, src, &m, NULL, NULL, &ce) ? 2 : 0);
        }
        struct timespec ts = {0, (long)(round * 15 + 1) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st;
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        if (WIFEXITED(st)) {
            ck_assert_int_eq(WEXITSTATUS(st), 0);
            finished++;
        } else {
            char spec[32];
            snprintf(spec, sizeof spec, "big@%s", version);
            lora_reg_adapter *a;
            if (lora_registry_get(reg, spec, 0, &a, &e) == LORA_EINPUT)
                killed_before_row++;
            else
                lora_reg_adapter_free(a);
        }
        check_blob_invariants(reg);
    }
    ck_assert_msg(killed_before_row > 0, "no add was killed midway (%d finished)", finished);
    /* And the registry is still usable for writes. */
    ck_assert_int_eq(add(reg, dir, "after", "1.0.0", "t", "b", 1, 5), 0);
    free(src);
    free(db);
    lora_registry_close(reg);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, semver_order);
    tcase_add_test(tc, open_missing_and_default_path);
    tcase_add_test(tc, newer_schema_refused);
    tcase_add_test(tc, not_a_registry);
    tcase_add_test(tc, wal_and_foreign_keys);
    tcase_add_test(tc, resolve_newest_semver);
    tcase_add_test(tc, add_twice_and_conflicts);
    tcase_add_test(tc, trust_untrust);
    tcase_add_test(tc, corrupted_blob);
    tcase_add_test(tc, rm_gc);
    tcase_add_test(tc, evals_record);
    tcase_add_test(tc, add_archives_and_load_by_task);
    tcase_add_test(tc, concurrent_writers);
    tcase_add_test(tc, killed_writer);
    tcase_add_test(tc, read_only_open);
    tcase_add_test(tc, verify_damaged_database);
    tcase_add_test(tc, swapped_blob_refused);
    tcase_add_test(tc, task_prefers_the_base);
    suite_add_tcase(s, tc);
    return tu_run(s, 0);
}

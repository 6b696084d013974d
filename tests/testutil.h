/*
 * testutil.h - support shared by the check unit tests: temporary
 * folders, small file writers, the shared fixtures path, and a main()
 * that runs a suite and maps "no fixtures" to SKIP (exit 77).
 */
#ifndef LORA_TESTUTIL_H
#define LORA_TESTUTIL_H

#include <check.h>

/* libcheck's ck_assert_msg calls _mark_point on every assertion that
 * holds, and that writes the location to the runner through a file:
 * the exhaustive loops here make millions of them (most of the two
 * minutes check_merge took).  Only a failure needs the call.  The cost:
 * after a crash, libcheck names the last explicit mark_point, not the
 * last assertion that held. */
#undef ck_assert_msg
#define ck_assert_msg(expr, ...)                                                              \
    ((expr) ? (void)0                                                                         \
            : _ck_assert_failed(__FILE__, __LINE__, "Assertion '" #expr "' failed", ##__VA_ARGS__))
#include <stddef.h>
#include <stdint.h>

#include "lora.h"

/* A fresh temporary folder (under $TMPDIR or /tmp), removed by tu_rmtree. */
char *tu_tmpdir(void);
/* rm -rf PATH (only under the temporary folders this file made). */
void tu_rmtree(const char *path);
/* PATH = DIR/NAME, malloc'd. */
char *tu_path(const char *dir, const char *name);
/* Write bytes to a file, abort the test on failure. */
void tu_write(const char *path, const void *buf, size_t len);
/* Read a whole file (malloc'd, NUL-terminated), abort the test on failure. */
char *tu_read(const char *path, size_t *len);
/* The shared fixtures folder ($FIXTURES), or NULL when it is absent. */
const char *tu_fixtures(void);
/* A fixture path under $FIXTURES, or NULL when absent. */
char *tu_fixture(const char *rel);
/* Deterministic pseudo-random numbers for test data (xorshift64*). */
uint64_t tu_rand(uint64_t *state);
/* Uniform in [-1, 1). */
double tu_randu(uint64_t *state);
/* Run the suite; returns the process exit status (0, 1, or 77 when
 * need_fixtures is set and the fixtures are absent). */
int tu_run(Suite *s, int need_fixtures);

#endif

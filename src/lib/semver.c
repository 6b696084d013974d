/*
 * semver.c - semantic versions (semver.org 2.0.0), so that the registry
 * resolves "the newest adapter for a task" the way people number
 * releases: 1.10.0 after 1.9.0, a release after its pre-releases.
 */
#include "internal.h"
#include "registry_int.h"

#include <string.h>

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int is_ident_char(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

/* A numeric field: digits, no leading zero, below 2^63 (SQLite's integers). */
static const char *parse_num(const char *p, int64_t *out)
{
    if (!is_digit(*p))
        return NULL;
    if (*p == '0' && is_digit(p[1]))
        return NULL;
    uint64_t v = 0;
    while (is_digit(*p)) {
        if (!lora_mul_ok(v, 10, &v) || !lora_add_ok(v, (uint64_t)(*p - '0'), &v) ||
            v > (uint64_t)INT64_MAX)
            return NULL;
        p++;
    }
    *out = (int64_t)v;
    return p;
}

/* Dot-separated non-empty identifiers; numeric ones without leading
 * zeros when numeric_rule is set (pre-release, not build). */
static const char *parse_idents(const char *p, int numeric_rule)
{
    for (;;) {
        const char *start = p;
        int all_digits = 1;
        while (is_ident_char(*p)) {
            if (!is_digit(*p))
                all_digits = 0;
            p++;
        }
        if (p == start)
            return NULL;
        if (numeric_rule && all_digits && *start == '0' && p - start > 1)
            return NULL;
        if (*p != '.')
            return p;
        p++;
    }
}

int lora_semver_split(const char *v, lora_semver_parts *out)
{
    lora_semver_parts s = {0};
    const char *p = v;
    if (!v || !(p = parse_num(p, &s.major)) || *p++ != '.' || !(p = parse_num(p, &s.minor)) ||
        *p++ != '.' || !(p = parse_num(p, &s.patch)))
        return -1;
    s.pre = NULL;
    s.pre_len = 0;
    if (*p == '-') {
        const char *start = ++p;
        if (!(p = parse_idents(p, 1)))
            return -1;
        s.pre = start;
        s.pre_len = (size_t)(p - start);
    }
    if (*p == '+' && !(p = parse_idents(p + 1, 0)))
        return -1;
    if (*p)
        return -1;
    if (out)
        *out = s;
    return 0;
}

int lora_semver_valid(const char *v)
{
    return lora_semver_split(v, NULL) == 0;
}

/* Compare one pre-release identifier each: numeric ones by value
 * (no leading zeros, so by length then digits), numeric below
 * alphanumeric, alphanumeric in ASCII order. */
static int ident_cmp(const char *a, size_t na, const char *b, size_t nb)
{
    int da = 1, db = 1;
    for (size_t i = 0; i < na; i++)
        da &= is_digit(a[i]);
    for (size_t i = 0; i < nb; i++)
        db &= is_digit(b[i]);
    if (da && db) {
        if (na != nb)
            return na < nb ? -1 : 1;
        int c = memcmp(a, b, na);
        return (c > 0) - (c < 0);
    }
    if (da != db)
        return da ? -1 : 1;
    size_t m = na < nb ? na : nb;
    int c = memcmp(a, b, m);
    if (c)
        return (c > 0) - (c < 0);
    return (na > nb) - (na < nb);
}

int lora_semver_precedence(const lora_semver_parts *a, const lora_semver_parts *b)
{
    if (a->major != b->major)
        return a->major < b->major ? -1 : 1;
    if (a->minor != b->minor)
        return a->minor < b->minor ? -1 : 1;
    if (a->patch != b->patch)
        return a->patch < b->patch ? -1 : 1;
    if (!a->pre || !b->pre)
        return (a->pre == NULL) - (b->pre == NULL); /* the release is higher */
    const char *pa = a->pre, *ea = a->pre + a->pre_len;
    const char *pb = b->pre, *eb = b->pre + b->pre_len;
    for (;;) {
        if (pa >= ea || pb >= eb)
            return (pa < ea) - (pb < eb); /* more identifiers is higher */
        const char *qa = memchr(pa, '.', (size_t)(ea - pa));
        const char *qb = memchr(pb, '.', (size_t)(eb - pb));
        if (!qa)
            qa = ea;
        if (!qb)
            qb = eb;
        int c = ident_cmp(pa, (size_t)(qa - pa), pb, (size_t)(qb - pb));
        if (c)
            return c;
        pa = qa + 1;
        pb = qb + 1;
    }
}

int lora_semver_cmp(const char *a, const char *b)
{
    lora_semver_parts sa, sb;
    int va = lora_semver_split(a, &sa) == 0, vb = lora_semver_split(b, &sb) == 0;
    if (va != vb)
        return va ? 1 : -1;
    if (va) {
        int c = lora_semver_precedence(&sa, &sb);
        if (c)
            return c;
    }
    int c = strcmp(a ? a : "", b ? b : "");
    return (c > 0) - (c < 0);
}

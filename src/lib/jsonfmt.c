/*
 * jsonfmt.c - JSON text with each real written in its shortest form
 * that reads back to the same double.  jansson offers a fixed number of
 * digits only: 17 round-trips but turns lora_dropout 0.05 into
 * 0.050000000000000003 in configs users read and diff; fewer loses
 * values.  So dump with 17 and shorten each real token afterwards.
 */
#include "internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The shortest "%.*g" of X that strtod reads back as X, kept a real
 * (".0" added to an integral value) so that its JSON type stays. */
static void shortest(double x, char *buf, size_t cap)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    if (!strpbrk(buf, ".eEn"))
        strncat(buf, ".0", cap - strlen(buf) - 1);
}

/* Rewrites TEXT in place: a token is only ever replaced by a shorter
 * or equal one.  Strings (and escapes in them) are copied untouched. */
static void shorten_reals(char *s)
{
    size_t r = 0, w = 0;
    int in_str = 0;
    while (s[r]) {
        char c = s[r];
        if (in_str) {
            s[w++] = s[r++];
            if (c == '\\' && s[r])
                s[w++] = s[r++];
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"') {
            in_str = 1;
            s[w++] = s[r++];
            continue;
        }
        if (c != '-' && (c < '0' || c > '9')) {
            s[w++] = s[r++];
            continue;
        }
        size_t st = r;
        while (s[r] && strchr("+-0123456789.eE", s[r]))
            r++;
        size_t len = r - st;
        char tok[64], best[64];
        if (len < sizeof tok && (memchr(s + st, '.', len) || memchr(s + st, 'e', len) ||
                                 memchr(s + st, 'E', len))) {
            memcpy(tok, s + st, len);
            tok[len] = '\0';
            shortest(strtod(tok, NULL), best, sizeof best);
            size_t bl = strlen(best);
            if (bl <= len) {
                memcpy(s + w, best, bl);
                w += bl;
                continue;
            }
        }
        memmove(s + w, s + st, len);
        w += len;
    }
    s[w] = '\0';
}

char *lora_json_dumps(const struct json_t *j, size_t flags)
{
    char *s = json_dumps(j, (flags & ~(size_t)JSON_REAL_PRECISION(31)) | JSON_REAL_PRECISION(17));
    if (s)
        shorten_reals(s);
    return s;
}

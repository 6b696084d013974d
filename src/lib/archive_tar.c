/*
 * archive_tar.c - the strict tar layout of a .lora archive
 * (lora-archive(5)): a second, independent reading of the tar stream
 * that accepts only what our writer makes.  libarchive is lenient on
 * purpose (it reads GNU sparse entries, unknown typeflags as regular
 * files, archives without an end marker, and ignores what follows the
 * end); an archive whose bytes mean one thing to libarchive and
 * another to GNU tar could hide an entry or change a member's size, so
 * archive.c reads every header with libarchive *and* with this walker
 * and refuses the archive unless both agree on every entry.
 *
 * Accepted: POSIX ustar headers ("ustar\0" "00", valid checksum) of
 * regular files (typeflag '0' or NUL), each optionally preceded by one
 * pax extended header ('x') whose keywords are in a short list
 * (path, size and informational ones); then exactly two zero blocks
 * and the end of the stream.
 */
#include "internal.h"

#include <string.h>

#define BLK 512
#define PAX_MAX (64 * 1024)

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* An octal field: optional leading spaces, at least one digit, then
 * only NUL or space to the end of the field. */
static int octal_field(const unsigned char *p, size_t n, uint64_t *out)
{
    size_t i = 0;
    while (i < n && p[i] == ' ')
        i++;
    uint64_t v = 0;
    size_t digits = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '7'; i++, digits++) {
        if (v >> 60)
            return -1;
        v = v * 8 + (uint64_t)(p[i] - '0');
    }
    for (; i < n; i++)
        if (p[i] != '\0' && p[i] != ' ')
            return -1;
    if (!digits)
        return -1;
    *out = v;
    return 0;
}

static int checksum_ok(const unsigned char *h)
{
    uint64_t want;
    if (octal_field(h + 148, 8, &want) != 0)
        return 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < BLK; i++)
        sum += (i >= 148 && i < 156) ? (unsigned char)' ' : h[i];
    return sum == want;
}

static const char *type_name(unsigned char t)
{
    switch (t) {
    case '1': return "hard link";
    case '2': return "symbolic link";
    case '3': case '4': return "device";
    case '5': return "directory";
    case '6': return "FIFO";
    case '7': return "contiguous file";
    case 'S': return "GNU sparse entry (old style)";
    case 'L': case 'K': return "GNU long name entry";
    case 'g': return "pax global header";
    case 'V': return "GNU volume header";
    case 'M': return "GNU multi-volume continuation";
    case 'D': return "GNU directory dump";
    default: return NULL;
    }
}

static int dec_value(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

typedef struct pax {
    int have;
    char *path;       /* or NULL */
    int have_size;
    uint64_t size;
} pax;

static int key_is(const char *k, size_t kn, const char *want)
{
    return kn == strlen(want) && memcmp(k, want, kn) == 0;
}

/* The records of a pax extended header: "LEN key=value\n" each, LEN
 * counting the whole record; they must fill the header's data exactly. */
static int parse_pax(const unsigned char *d, size_t n, size_t at, pax *px, lora_error *err)
{
    static const char *const info[] = {"mtime", "atime", "ctime", "uid", "gid", "uname",
                                       "gname", "hdrcharset", "charset", "comment"};
    const char *p = (const char *)d, *end = p + n;
    while (p < end) {
        size_t len = 0, i = 0;
        while (p + i < end && p[i] >= '0' && p[i] <= '9' && i < 8)
            len = len * 10 + (size_t)(p[i++] - '0');
        if (i == 0 || p + i >= end || p[i] != ' ' || len <= i + 1 || len > (size_t)(end - p) ||
            p[len - 1] != '\n')
            return lora_seterr(err, LORA_EINPUT, "malformed pax header at byte %zu", at);
        const char *k = p + i + 1, *eq = memchr(k, '=', (size_t)(p + len - 1 - k));
        if (!eq)
            return lora_seterr(err, LORA_EINPUT, "malformed pax record at byte %zu", at);
        size_t kn = (size_t)(eq - k), vn = (size_t)(p + len - 1 - (eq + 1));
        const char *v = eq + 1;
        if (kn >= 11 && memcmp(k, "GNU.sparse.", 11) == 0)
            return lora_seterr(err, LORA_EINPUT, "pax sparse entry (%.*s) at byte %zu: only "
                                                 "regular files may be in an archive",
                               (int)(kn > 40 ? 40 : kn), k, at);
        if (key_is(k, kn, "path")) {
            if (vn == 0 || memchr(v, '\0', vn))
                return lora_seterr(err, LORA_EINPUT, "pax path empty or with a NUL at byte %zu", at);
            free(px->path);
            if (!(px->path = strndup(v, vn)))
                return lora_oom(err);
        } else if (key_is(k, kn, "size")) {
            if (dec_value(v, vn, &px->size) != 0)
                return lora_seterr(err, LORA_EINPUT, "pax size \"%.*s\" is not a number at byte %zu",
                                   (int)(vn > 30 ? 30 : vn), v, at);
            px->have_size = 1;
        } else {
            size_t j = 0;
            while (j < sizeof info / sizeof info[0] && !key_is(k, kn, info[j]))
                j++;
            if (j == sizeof info / sizeof info[0])
                return lora_seterr(err, LORA_EINPUT, "pax keyword \"%.*s\" at byte %zu is not "
                                                     "allowed in a lora archive",
                                   (int)(kn > 40 ? 40 : kn), k, at);
        }
        p += len;
    }
    px->have = 1;
    return LORA_OK;
}

/* The ustar name of a header: prefix "/" name, each NUL-terminated or
 * filling its field. */
static char *ustar_name(const unsigned char *h)
{
    size_t nn = strnlen((const char *)h, 100), pn = strnlen((const char *)h + 345, 155);
    char *s = malloc(nn + pn + 2);
    if (!s)
        return NULL;
    size_t k = 0;
    if (pn) {
        memcpy(s, h + 345, pn);
        k = pn;
        s[k++] = '/';
    }
    memcpy(s + k, h, nn);
    s[k + nn] = '\0';
    return s;
}

/* The end: two zero blocks at pos, and nothing after them. */
static int check_end(const unsigned char *t, size_t len, size_t pos, lora_error *err)
{
    if (len - pos < 2 * BLK)
        return lora_seterr(err, LORA_EINPUT, "end-of-archive marker incomplete (%zu of %d zero "
                                             "bytes)",
                           len - pos, 2 * BLK);
    if (!all_zero(t + pos + BLK, BLK))
        return lora_seterr(err, LORA_EINPUT, "a zero block at byte %zu followed by data (not an "
                                             "end-of-archive marker)",
                           pos);
    if (len != pos + 2 * BLK)
        return lora_seterr(err, LORA_EINPUT, "%zu bytes after the end-of-archive marker (trailing "
                                             "data or member)",
                           len - pos - 2 * BLK);
    return LORA_OK;
}

void lora_tar_ents_free(lora_tar_ent *e, size_t n)
{
    for (size_t i = 0; e && i < n; i++)
        free(e[i].name);
    free(e);
}

/* One header block at pos (not all zeros): a pax header into px, or a
 * regular file appended to ents.  *next receives the following block. */
static int walk_header(const unsigned char *t, size_t len, size_t pos, pax *px, lora_tar_ent *ents,
                       size_t *n, size_t *next, lora_error *err)
{
    const unsigned char *h = t + pos;
    unsigned char type = h[156];
    const char *tn = type_name(type);
    if (tn)
        return lora_seterr(err, LORA_EINPUT, "%s at byte %zu: only regular files may be in an "
                                             "archive",
                           tn, pos);
    if (type != '0' && type != '\0' && type != 'x')
        return lora_seterr(err, LORA_EINPUT, "unknown tar typeflag 0x%02x at byte %zu", type, pos);
    if (memcmp(h + 257, "ustar\0" "00", 8) != 0)
        return lora_seterr(err, LORA_EINPUT, "not a POSIX tar header at byte %zu (lora archives "
                                             "are pax tar)",
                           pos);
    if (!checksum_ok(h))
        return lora_seterr(err, LORA_EINPUT, "tar header checksum wrong at byte %zu", pos);
    uint64_t size = 0;
    int size_field = (h[124] & 0x80) ? -1 : octal_field(h + 124, 12, &size);
    if (type == 'x') {
        if (px->have)
            return lora_seterr(err, LORA_EINPUT, "two pax headers in a row at byte %zu", pos);
        if (size_field != 0 || size > PAX_MAX || size > len - pos - BLK)
            return lora_seterr(err, LORA_EINPUT, "pax header at byte %zu: bad size", pos);
        int rc = parse_pax(h + BLK, (size_t)size, pos, px, err);
        if (rc)
            return rc;
        size_t padded = pos + BLK + (((size_t)size + BLK - 1) / BLK) * BLK;
        *next = padded > len ? len : padded;
        return LORA_OK;
    }
    if (px->have_size)
        size = px->size;
    else if (size_field != 0)
        return lora_seterr(err, LORA_EINPUT, "tar header at byte %zu: bad size field", pos);
    uint64_t end, padded;
    if (!lora_add_ok(pos + BLK, size, &end) || end > len)
        return lora_seterr(err, LORA_EINPUT, "truncated archive (member at byte %zu runs past the "
                                             "end of the stream)",
                           pos);
    padded = pos + BLK + ((size + BLK - 1) / BLK) * BLK;
    char *name = px->path ? px->path : ustar_name(h);
    px->path = NULL;
    if (!name)
        return lora_oom(err);
    ents[*n].name = name;
    ents[*n].data_off = pos + BLK;
    ents[*n].size = size;
    ents[*n].header_off = pos;
    (*n)++;
    memset(px, 0, sizeof *px);
    *next = padded > len ? len : (size_t)padded;
    return LORA_OK;
}

int lora_tar_walk(const unsigned char *t, size_t len, size_t max, lora_tar_ent **out, size_t *nout,
                  lora_error *err)
{
    *out = NULL;
    *nout = 0;
    lora_tar_ent *ents = calloc(max + 1, sizeof *ents);
    if (!ents)
        return lora_oom(err);
    size_t n = 0, pos = 0;
    pax px = {0};
    int rc = LORA_OK;
    for (;;) {
        if (pos == len) {
            rc = lora_seterr(err, LORA_EINPUT, "missing end-of-archive marker (truncated archive)");
            break;
        }
        if (len - pos < BLK) {
            rc = lora_seterr(err, LORA_EINPUT, "truncated archive (%zu bytes of a tar block)",
                             len - pos);
            break;
        }
        if (all_zero(t + pos, BLK)) {
            rc = px.have ? lora_seterr(err, LORA_EINPUT, "pax header without a member")
                         : check_end(t, len, pos, err);
            break;
        }
        if (n == max) {
            rc = lora_seterr(err, LORA_EINPUT, "more than %zu members", max);
            break;
        }
        if ((rc = walk_header(t, len, pos, &px, ents, &n, &pos, err)))
            break;
    }
    free(px.path);
    if (rc) {
        lora_tar_ents_free(ents, n);
        return rc;
    }
    *out = ents;
    *nout = n;
    return LORA_OK;
}

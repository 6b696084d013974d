/*
 * dataset.c - evaluation data sets: JSONL of token ids, one item a line,
 * either multiple choice {"prompt":[...],"choices":[[...],...],"label":i}
 * or generation {"prompt":[...],"target":[...]}.  Every line is parsed
 * with jansson and checked completely (types, sizes, ids against the
 * vocabulary) before anything is evaluated, so a bad file fails at once
 * with the line number and the problem.
 */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

/* Largest data-set file read (stdin included). */
#define DS_MAX_FILE (1ULL << 30)

static void item_free(lora_item *it)
{
    free(it->prompt);
    free(it->target);
    if (it->choices)
        for (size_t i = 0; i < it->n_choices; i++)
            free(it->choices[i]);
    free(it->choices);
    free(it->choice_len);
}

void lora_dataset_free(lora_dataset *ds)
{
    if (!ds)
        return;
    for (size_t i = 0; i < ds->n; i++)
        item_free(&ds->items[i]);
    free(ds->items);
    free(ds);
}

/* A non-empty JSON array of token ids → a new int32 array. */
static int ids(json_t *a, const char *what, uint64_t vocab, const char *name, size_t line,
               int32_t **out, size_t *n, lora_error *err)
{
    if (!json_is_array(a))
        return lora_seterr(err, LORA_EINPUT, "%s:%zu: %s is not a list of token ids", name, line, what);
    size_t k = json_array_size(a);
    if (k == 0)
        return lora_seterr(err, LORA_EINPUT, "%s:%zu: %s is empty", name, line, what);
    if (k > LORA_DS_MAX_TOKENS)
        return lora_seterr(err, LORA_EINPUT, "%s:%zu: %s has %zu tokens, more than the limit %u",
                           name, line, what, k, LORA_DS_MAX_TOKENS);
    int32_t *p = malloc(k * sizeof *p);
    if (!p)
        return lora_oom(err);
    for (size_t i = 0; i < k; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v)) {
            free(p);
            return lora_seterr(err, LORA_EINPUT, "%s:%zu: %s[%zu] is not an integer token id", name,
                               line, what, i);
        }
        json_int_t x = json_integer_value(v);
        if (x < 0 || x > INT32_MAX || (vocab && (uint64_t)x >= vocab)) {
            free(p);
            if (vocab)
                return lora_seterr(err, LORA_EINPUT,
                                   "%s:%zu: %s[%zu] = %lld is outside the vocabulary (0..%llu)",
                                   name, line, what, i, (long long)x, (unsigned long long)vocab - 1);
            return lora_seterr(err, LORA_EINPUT, "%s:%zu: %s[%zu] = %lld is not a token id", name,
                               line, what, i, (long long)x);
        }
        p[i] = (int32_t)x;
    }
    *out = p;
    *n = k;
    return LORA_OK;
}

static int parse_line(const char *s, size_t len, const char *name, size_t line, uint64_t vocab,
                      lora_item *it, lora_error *err)
{
    memset(it, 0, sizeof *it);
    it->line = line;
    json_error_t je;
    json_t *o = json_loadb(s, len, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        return lora_seterr(err, LORA_EINPUT, "%s:%zu: not JSON: %s (column %d)", name, line, je.text,
                           je.column);
    int rc = LORA_OK;
    if (!json_is_object(o)) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: an item must be a JSON object", name, line);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        if (strcmp(key, "prompt") && strcmp(key, "target") && strcmp(key, "choices") &&
            strcmp(key, "label")) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "%s:%zu: unknown key \"%.64s\" (prompt, choices, label, target are known)",
                             name, line, key);
            goto out;
        }
    }
    json_t *prompt = json_object_get(o, "prompt"), *target = json_object_get(o, "target"),
           *choices = json_object_get(o, "choices"), *label = json_object_get(o, "label");
    if (!prompt) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: \"prompt\" is missing", name, line);
        goto out;
    }
    if ((rc = ids(prompt, "prompt", vocab, name, line, &it->prompt, &it->n_prompt, err)) != LORA_OK)
        goto out;
    if (target && (choices || label)) {
        rc = lora_seterr(err, LORA_EINPUT,
                         "%s:%zu: an item has either \"target\" or \"choices\" and \"label\", not both",
                         name, line);
        goto out;
    }
    if (target) {
        it->kind = LORA_ITEM_GENERATE;
        rc = ids(target, "target", vocab, name, line, &it->target, &it->n_target, err);
        goto out;
    }
    if (!choices || !label) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: needs \"target\", or \"choices\" and \"label\"",
                         name, line);
        goto out;
    }
    it->kind = LORA_ITEM_CHOICE;
    if (!json_is_array(choices) || json_array_size(choices) == 0) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: \"choices\" is not a non-empty list of token lists",
                         name, line);
        goto out;
    }
    size_t nc = json_array_size(choices);
    if (nc > LORA_DS_MAX_CHOICES) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: %zu choices, more than the limit %u", name, line,
                         nc, LORA_DS_MAX_CHOICES);
        goto out;
    }
    it->choices = calloc(nc, sizeof *it->choices);
    it->choice_len = calloc(nc, sizeof *it->choice_len);
    if (!it->choices || !it->choice_len) {
        rc = lora_oom(err);
        goto out;
    }
    it->n_choices = nc;
    for (size_t i = 0; i < nc; i++) {
        char what[48];
        snprintf(what, sizeof what, "choices[%zu]", i);
        rc = ids(json_array_get(choices, i), what, vocab, name, line, &it->choices[i],
                 &it->choice_len[i], err);
        if (rc != LORA_OK)
            goto out;
    }
    if (!json_is_integer(label)) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: \"label\" is not an integer", name, line);
        goto out;
    }
    json_int_t lab = json_integer_value(label);
    if (lab < 0 || (uint64_t)lab >= nc) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: \"label\" %lld is not a choice index (0..%zu)",
                         name, line, (long long)lab, nc - 1);
        goto out;
    }
    it->label = (size_t)lab;
out:
    json_decref(o);
    return rc;
}

static size_t item_len(const lora_item *it)
{
    size_t m = 0;
    if (it->kind == LORA_ITEM_GENERATE)
        m = it->n_target;
    for (size_t i = 0; i < it->n_choices; i++)
        if (it->choice_len[i] > m)
            m = it->choice_len[i];
    return it->n_prompt + m;
}

int lora_dataset_parse(const char *buf, size_t len, const char *name, uint64_t vocab,
                       lora_dataset **out, lora_error *err)
{
    *out = NULL;
    lora_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return lora_oom(err);
    size_t cap = 0, line = 0, pos = 0;
    int rc = LORA_OK;
    while (pos < len) {
        line++;
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        if (n > LORA_DS_MAX_LINE) {
            rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: line longer than %u bytes", name, line,
                             LORA_DS_MAX_LINE);
            goto fail;
        }
        if (n > 0 && s[n - 1] == '\r')
            n--;
        size_t k = 0;
        while (k < n && (s[k] == ' ' || s[k] == '\t'))
            k++;
        if (k == n)
            continue;
        if (memchr(s, '\0', n)) {
            rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: NUL byte in the line", name, line);
            goto fail;
        }
        if (ds->n == LORA_DS_MAX_ITEMS) {
            rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: more than %u items", name, line,
                             LORA_DS_MAX_ITEMS);
            goto fail;
        }
        if (ds->n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            lora_item *p = realloc(ds->items, nc * sizeof *p);
            if (!p) {
                rc = lora_oom(err);
                goto fail;
            }
            ds->items = p;
            cap = nc;
        }
        rc = parse_line(s, n, name, line, vocab, &ds->items[ds->n], err);
        if (rc != LORA_OK) {
            item_free(&ds->items[ds->n]);
            goto fail;
        }
        size_t l = item_len(&ds->items[ds->n]);
        if (l > ds->max_len)
            ds->max_len = l;
        ds->n++;
    }
    if (ds->n == 0) {
        rc = lora_seterr(err, LORA_EINPUT, "%s: no items", name);
        goto fail;
    }
    *out = ds;
    return LORA_OK;
fail:
    lora_dataset_free(ds);
    return rc;
}

static int read_stdin(char **buf, size_t *len, lora_error *err)
{
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    if (!p)
        return lora_oom(err);
    for (;;) {
        if (n == cap) {
            if (cap >= DS_MAX_FILE) {
                free(p);
                return lora_seterr(err, LORA_EINPUT, "stdin: more than %llu bytes",
                                   (unsigned long long)DS_MAX_FILE);
            }
            char *q = realloc(p, cap * 2);
            if (!q) {
                free(p);
                return lora_oom(err);
            }
            p = q;
            cap *= 2;
        }
        ssize_t k = read(0, p + n, cap - n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(p);
            return lora_seterr_errno(err, LORA_EIO, e, "stdin");
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    *buf = p;
    *len = n;
    return LORA_OK;
}

int lora_dataset_load(const char *path, uint64_t vocab, lora_dataset **out, lora_error *err)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc = strcmp(path, "-") == 0 ? read_stdin(&buf, &len, err)
                                    : lora_read_file(path, DS_MAX_FILE, &buf, &len, err);
    if (rc != LORA_OK)
        return rc;
    rc = lora_dataset_parse(buf, len, strcmp(path, "-") == 0 ? "stdin" : path, vocab, out, err);
    free(buf);
    return rc;
}

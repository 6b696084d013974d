/*
 * dataset.c - evaluation data sets: JSONL, one item a line, either
 * multiple choice {"prompt":P,"choices":[C,...],"label":i} or generation
 * {"prompt":P,"target":T}, where each of P, C, T is text or a list of
 * token ids.  Every line is parsed with jansson and checked completely
 * (types, sizes, ids against the vocabulary) before anything is
 * evaluated, so a bad file fails at once with the line number and the
 * problem.  Text is turned into ids afterwards by lora_dataset_tokenize
 * (the lm-evaluation-harness continuation convention, see there).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sys/stat.h>
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
    if (it->choice_text)
        for (size_t i = 0; i < it->n_choices; i++)
            free(it->choice_text[i]);
    free(it->choices);
    free(it->choice_len);
    free(it->choice_text);
    free(it->choice_skip);
    free(it->prompt_text);
    free(it->target_text);
    free(it->id);
    free(it->extra);
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
        return lora_seterr(err, LORA_EINPUT, "%s:%zu: %s is neither text nor a list of token ids", name,
                           line, what);
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

/* A field that is a non-empty string (kept as text, tokenized later) or
 * a list of token ids. */
static int text_or_ids(json_t *a, const char *what, uint64_t vocab, const char *name, size_t line,
                       char **text, int32_t **out, size_t *n, lora_error *err)
{
    if (!json_is_string(a))
        return ids(a, what, vocab, name, line, out, n, err);
    size_t len = json_string_length(a);
    if (len == 0)
        return lora_seterr(err, LORA_EINPUT, "%s:%zu: %s is an empty string", name, line, what);
    /* no NUL inside: jansson refuses \u0000 unless JSON_ALLOW_NUL */
    if (!(*text = lora_strdup(json_string_value(a), err)))
        return LORA_EIO; /* lora_strdup said out of memory */
    return LORA_OK;
}

/* "id" (any JSON value) and the other unknown keys, kept as compact
 * JSON for the predictions file. */
static int keep_extra(json_t *o, const char *name, size_t line, lora_item *it, lora_error *err)
{
    json_t *id = json_object_get(o, "id");
    if (id && !(it->id = json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY)))
        return lora_oom(err);
    json_t *extra = json_object();
    if (!extra)
        return lora_oom(err);
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        if (strcmp(key, "prompt") && strcmp(key, "target") && strcmp(key, "choices") &&
            strcmp(key, "label") && strcmp(key, "id") && json_object_set(extra, key, val)) {
            json_decref(extra);
            return lora_oom(err);
        }
    }
    int rc = LORA_OK;
    if (json_object_size(extra) &&
        !(it->extra = json_dumps(extra, JSON_COMPACT | JSON_SORT_KEYS)))
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: the extra keys cannot be kept", name, line);
    json_decref(extra);
    return rc;
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
    if ((rc = keep_extra(o, name, line, it, err)) != LORA_OK)
        goto out;
    json_t *prompt = json_object_get(o, "prompt"), *target = json_object_get(o, "target"),
           *choices = json_object_get(o, "choices"), *label = json_object_get(o, "label");
    if (!prompt) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: \"prompt\" is missing", name, line);
        goto out;
    }
    if ((rc = text_or_ids(prompt, "prompt", vocab, name, line, &it->prompt_text, &it->prompt,
                          &it->n_prompt, err)) != LORA_OK)
        goto out;
    if (target && (choices || label)) {
        rc = lora_seterr(err, LORA_EINPUT,
                         "%s:%zu: an item has either \"target\" or \"choices\" and \"label\", not both",
                         name, line);
        goto out;
    }
    if (target) {
        it->kind = LORA_ITEM_GENERATE;
        rc = text_or_ids(target, "target", vocab, name, line, &it->target_text, &it->target,
                         &it->n_target, err);
        goto out;
    }
    if (!choices || !label) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: needs \"target\", or \"choices\" and \"label\"",
                         name, line);
        goto out;
    }
    it->kind = LORA_ITEM_CHOICE;
    if (!json_is_array(choices) || json_array_size(choices) == 0) {
        rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: \"choices\" is not a non-empty list (of strings or token lists)",
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
    it->choice_text = calloc(nc, sizeof *it->choice_text);
    it->choice_skip = calloc(nc, sizeof *it->choice_skip);
    if (!it->choices || !it->choice_len || !it->choice_text || !it->choice_skip) {
        rc = lora_oom(err);
        goto out;
    }
    it->n_choices = nc;
    for (size_t i = 0; i < nc; i++) {
        char what[48];
        snprintf(what, sizeof what, "choices[%zu]", i);
        rc = text_or_ids(json_array_get(choices, i), what, vocab, name, line, &it->choice_text[i],
                         &it->choices[i], &it->choice_len[i], err);
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

static int item_has_text(const lora_item *it)
{
    if (it->prompt_text || it->target_text)
        return 1;
    for (size_t i = 0; i < it->n_choices; i++)
        if (it->choice_text[i])
            return 1;
    return 0;
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
    lora_hash(buf, len, ds->hash, sizeof ds->hash);
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
        if (item_has_text(&ds->items[ds->n]) && !ds->text_items++)
            ds->first_text_line = line;
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

/* Everything readable from fd: standard input, a pipe or a process
 * substitution (/dev/fd/N), whose size is not known in advance. */
static int read_stream(int fd, const char *name, char **buf, size_t *len, lora_error *err)
{
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    if (!p)
        return lora_oom(err);
    for (;;) {
        if (n == cap) {
            if (cap >= DS_MAX_FILE) {
                free(p);
                return lora_seterr(err, LORA_EINPUT, "%s: more than %llu bytes", name,
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
        ssize_t k = read(fd, p + n, cap - n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(p);
            return lora_seterr_errno(err, LORA_EIO, e, "%s", name);
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    *buf = p;
    *len = n;
    return LORA_OK;
}

/* A regular file through lora_read_file (its size checked first), any
 * other readable file (FIFO, /dev/fd/N, character device) as a stream. */
static int read_any(const char *path, char **buf, size_t *len, lora_error *err)
{
    if (strcmp(path, "-") == 0)
        return read_stream(0, "stdin", buf, len, err);
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode)) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return lora_seterr_errno(err, LORA_EINPUT, errno, "%s", path);
        int rc = read_stream(fd, path, buf, len, err);
        close(fd);
        return rc;
    }
    return lora_read_file(path, DS_MAX_FILE, buf, len, err);
}

int lora_dataset_load(const char *path, uint64_t vocab, lora_dataset **out, lora_error *err)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc = read_any(path, &buf, &len, err);
    if (rc != LORA_OK)
        return rc;
    rc = lora_dataset_parse(buf, len, strcmp(path, "-") == 0 ? "stdin" : path, vocab, out, err);
    free(buf);
    return rc;
}

/* ---- text to token ids ---- */

/* Encode TEXT with the codec, without the end-of-sequence token a
 * post-processor may append (a scored continuation is not followed by
 * EOS; lm-evaluation-harness encodes without it). */
static int encode(const lora_text_codec *tc, int trail_eos, const char *text, size_t len,
                  int special, int32_t **ids, size_t *n, lora_error *err)
{
    int rc = tc->encode(tc->arg, text, len, special, ids, n, err);
    if (rc != LORA_OK)
        return rc;
    if (special && trail_eos && *n > 0 && (*ids)[*n - 1] == tc->eos)
        (*n)--;
    if (*n > LORA_DS_MAX_TOKENS)
        return lora_seterr(err, LORA_EINPUT, "%zu tokens, more than the limit %u", *n,
                           LORA_DS_MAX_TOKENS);
    return LORA_OK;
}

static int is_ws(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* One continuation (choice or target) of a text prompt: CTX (the whole
 * prompt text) + CONT encoded together; *whole receives the ids, *common how many leading ids agree
 * with the context's own ids CTX_IDS (N_CTX of them). */
static int encode_whole(const lora_text_codec *tc, int trail_eos, const char *ctx, const char *cont, const int32_t *ctx_ids, size_t n_ctx, int32_t **whole,
                        size_t *n, size_t *common, lora_error *err)
{
    size_t lc = strlen(ctx), lt = strlen(cont);
    char *s = malloc(lc + lt + 1);
    if (!s)
        return lora_oom(err);
    memcpy(s, ctx, lc);
    memcpy(s + lc, cont, lt + 1);
    int rc = encode(tc, trail_eos, s, lc + lt, 1, whole, n, err);
    free(s);
    if (rc != LORA_OK)
        return rc;
    size_t p = 0;
    while (p < n_ctx && p < *n && (*whole)[p] == ctx_ids[p])
        p++;
    *common = p;
    return LORA_OK;
}

/* Tokenize one item (see lora_dataset_tokenize). */
static int tokenize_item(lora_item *it, const lora_text_codec *tc, int trail_eos, lora_error *err)
{
    int rc = LORA_OK;
    size_t nc = it->kind == LORA_ITEM_GENERATE ? 1 : it->n_choices;
    /* continuation slots: the target, or every choice */
    char **text = it->kind == LORA_ITEM_GENERATE ? &it->target_text : it->choice_text;
    int32_t **cids = it->kind == LORA_ITEM_GENERATE ? &it->target : it->choices;
    size_t *clen = it->kind == LORA_ITEM_GENERATE ? &it->n_target : it->choice_len;
    size_t *skip = it->kind == LORA_ITEM_GENERATE ? &it->target_skip : it->choice_skip;
    if (!it->prompt_text) {
        /* ids prompt: a text continuation is encoded alone, no specials */
        for (size_t c = 0; c < nc && rc == LORA_OK; c++)
            if (text[c] && !cids[c])
                rc = encode(tc, trail_eos, text[c], strlen(text[c]), 0, &cids[c], &clen[c], err);
        for (size_t c = 0; c < nc && rc == LORA_OK; c++)
            if (clen[c] == 0)
                rc = lora_seterr(err, LORA_EINPUT, "the continuation encodes to no token");
        return rc;
    }
    int any_text = 0;
    for (size_t c = 0; c < nc; c++)
        any_text |= text[c] != NULL;
    /* lm-evaluation-harness: the prompt's trailing whitespace belongs to
     * a text continuation (" Paris" is one GPT-2 token, " " + "Paris" two) */
    size_t k = strlen(it->prompt_text);
    if (any_text)
        while (k > 0 && is_ws((unsigned char)it->prompt_text[k - 1]))
            k--;
    int32_t *ctx = NULL, **whole = calloc(nc, sizeof *whole);
    size_t n_ctx = 0, *nw = calloc(nc, sizeof *nw), *common = calloc(nc, sizeof *common);
    if (!whole || !nw || !common) {
        rc = lora_oom(err);
        goto out;
    }
    if ((rc = encode(tc, trail_eos, it->prompt_text, k, 1, &ctx, &n_ctx, err)) != LORA_OK)
        goto out;
    size_t pmin = n_ctx;
    for (size_t c = 0; c < nc; c++) {
        if (!text[c])
            continue;
        /* ctx text + whitespace + continuation = prompt_text + continuation */
        if ((rc = encode_whole(tc, trail_eos, it->prompt_text, text[c], ctx, n_ctx,
                               &whole[c], &nw[c], &common[c], err)) != LORA_OK)
            goto out;
        if (nw[c] <= n_ctx) {
            if (it->kind == LORA_ITEM_GENERATE)
                rc = lora_seterr(err, LORA_EINPUT, "target adds no token after the prompt");
            else
                rc = lora_seterr(err, LORA_EINPUT, "choices[%zu] adds no token after the prompt", c);
            goto out;
        }
        if (common[c] < pmin)
            pmin = common[c];
    }
    if (pmin == 0) {
        rc = lora_seterr(err, LORA_EINPUT,
                         "the prompt's first token merges with its continuation (no BOS token to "
                         "start from); give the prompt as token ids or end it at a word boundary");
        goto out;
    }
    /* the shared prompt is the agreed prefix; what each continuation
     * adds after the prompt's own n_ctx tokens is scored, tokens between
     * pmin and n_ctx are fed as context (skip) */
    for (size_t c = 0; c < nc; c++) {
        size_t base = text[c] ? nw[c] : n_ctx - pmin + clen[c];
        int32_t *ids = malloc(base * sizeof *ids);
        if (!ids) {
            rc = lora_oom(err);
            goto out;
        }
        if (text[c]) {
            memcpy(ids, whole[c] + pmin, (nw[c] - pmin) * sizeof *ids);
            clen[c] = nw[c] - pmin;
        } else {
            memcpy(ids, ctx + pmin, (n_ctx - pmin) * sizeof *ids);
            memcpy(ids + n_ctx - pmin, cids[c], clen[c] * sizeof *ids);
            clen[c] += n_ctx - pmin;
        }
        free(cids[c]);
        cids[c] = ids;
        skip[c] = n_ctx - pmin;
    }
    free(it->prompt);
    it->prompt = ctx;
    it->n_prompt = pmin;
    ctx = NULL;
out:
    free(ctx);
    if (whole)
        for (size_t c = 0; c < nc; c++)
            free(whole[c]);
    free(whole);
    free(nw);
    free(common);
    return rc;
}

int lora_dataset_tokenize(lora_dataset *ds, const lora_text_codec *tc, lora_error *err)
{
    if (!ds->text_items)
        return LORA_OK;
    /* does the post-processor append EOS?  Look at what it adds to "" */
    int32_t *sp = NULL;
    size_t nsp = 0;
    int rc = tc->encode(tc->arg, "", 0, 1, &sp, &nsp, err);
    if (rc != LORA_OK)
        return rc;
    int trail_eos = tc->eos >= 0 && nsp > 0 && sp[nsp - 1] == tc->eos &&
                    !(nsp == 1 && sp[0] == tc->bos);
    free(sp);
    ds->max_len = 0;
    for (size_t i = 0; i < ds->n; i++) {
        lora_item *it = &ds->items[i];
        if (item_has_text(it) && (rc = tokenize_item(it, tc, trail_eos, err)) != LORA_OK)
            return lora_err_prefix(err, "line %zu", it->line);
        size_t l = item_len(it);
        if (l > ds->max_len)
            ds->max_len = l;
    }
    ds->tokenized = 1;
    return LORA_OK;
}

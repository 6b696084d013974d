/*
 * tokenize_jsonl.c - lora-eval --tokenize / --detokenize: JSONL in, one
 * JSON line out per input line, "text" turned into "ids" (or back) and
 * every other key echoed in its order.  The whole output is built in
 * memory and written only when every line succeeded, so a bad line
 * leaves nothing half-written behind.
 */
#include "tokenizer_int.h"

#include <stdio.h>
#include <string.h>

#define JSONL_MAX_LINE (1ull << 30)

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

static int line_ids(const lora_tokenizer *tok, json_t *a, const char *name, size_t line, int32_t **ids,
                    size_t *n, lora_error *err)
{
    if (!json_is_array(a))
        return lora_seterr(err, LORA_EINPUT, "%s:%zu: no \"ids\" list of token ids", name, line);
    size_t k = json_array_size(a);
    *ids = malloc((k ? k : 1) * sizeof **ids);
    if (!*ids)
        return lora_oom(err);
    for (size_t i = 0; i < k; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            (size_t)json_integer_value(v) >= lora_tokenizer_vocab_size(tok)) {
            free(*ids);
            *ids = NULL;
            return lora_seterr(err, LORA_EINPUT, "%s:%zu: ids[%zu] is not a token id of this tokenizer (0..%zu)",
                               name, line, i, lora_tokenizer_vocab_size(tok) - 1);
        }
        (*ids)[i] = (int32_t)json_integer_value(v);
    }
    *n = k;
    return LORA_OK;
}

/* One line: the new object (the converted key first, the others after). */
static int convert(const lora_tokenizer *tok, json_t *in, const char *name, size_t line, int detok,
                   int special, json_t **out, lora_error *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc;
    json_t *val = NULL;
    if (!detok) {
        json_t *t = json_object_get(in, "text");
        if (!json_is_string(t))
            return lora_seterr(err, LORA_EINPUT, "%s:%zu: no \"text\" string", name, line);
        if ((rc = lora_tokenizer_encode(tok, json_string_value(t), json_string_length(t), special, &ids,
                                        &n, err)) != LORA_OK)
            return lora_err_prefix(err, "%s:%zu", name, line);
        val = json_array();
        for (size_t i = 0; val && i < n; i++)
            if (json_array_append_new(val, json_integer(ids[i])) != 0) {
                json_decref(val);
                val = NULL;
            }
    } else {
        char *text = NULL;
        size_t len = 0;
        if ((rc = line_ids(tok, json_object_get(in, "ids"), name, line, &ids, &n, err)) != LORA_OK)
            return rc;
        if ((rc = tk_decode(tok, ids, n, !special, &text, &len, err)) != LORA_OK) {
            free(ids);
            return lora_err_prefix(err, "%s:%zu", name, line);
        }
        val = json_stringn(text, len);
        free(text);
    }
    free(ids);
    json_t *o = json_object();
    if (!val || !o || json_object_set_new(o, detok ? "text" : "ids", val) != 0) {
        json_decref(o);
        return lora_oom(err);
    }
    const char *k;
    json_t *v;
    json_object_foreach(in, k, v) {
        if (strcmp(k, detok ? "ids" : "text") == 0 || strcmp(k, detok ? "text" : "ids") == 0)
            continue;
        if (json_object_set(o, k, v) != 0) {
            json_decref(o);
            return lora_oom(err);
        }
    }
    *out = o;
    return LORA_OK;
}

int lora_tokenize_jsonl(const lora_tokenizer *tok, FILE *in, const char *name, FILE *out, int detok,
                        int special, size_t *lines, lora_error *err)
{
    char *buf = NULL, *res = NULL;
    size_t cap = 0, rlen = 0, line = 0;
    ssize_t got;
    int rc = LORA_OK;
    FILE *mem = open_memstream(&res, &rlen);
    if (!mem)
        return lora_oom(err);
    if (lines)
        *lines = 0;
    while (rc == LORA_OK && (got = getline(&buf, &cap, in)) >= 0) {
        line++;
        if ((uint64_t)got > JSONL_MAX_LINE) {
            rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: line too long", name, line);
            break;
        }
        if (blank(buf, (size_t)got))
            continue;
        json_error_t je;
        json_t *j = json_loadb(buf, (size_t)got, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je), *o = NULL;
        if (!j || !json_is_object(j)) {
            rc = lora_seterr(err, LORA_EINPUT, "%s:%zu: not a JSON object%s%s", name, line, j ? "" : ": ",
                             j ? "" : je.text);
            json_decref(j);
            break;
        }
        rc = convert(tok, j, name, line, detok, special, &o, err);
        json_decref(j);
        if (rc == LORA_OK) {
            if (json_dumpf(o, mem, JSON_COMPACT) != 0 || fputc('\n', mem) == EOF)
                rc = lora_oom(err);
            json_decref(o);
            if (lines)
                (*lines)++;
        }
    }
    if (rc == LORA_OK && ferror(in))
        rc = lora_seterr(err, LORA_EIO, "%s: read error", name);
    free(buf);
    if (fclose(mem) != 0 && rc == LORA_OK)
        rc = lora_oom(err);
    if (rc == LORA_OK && rlen && (fwrite(res, 1, rlen, out) != rlen || fflush(out) != 0))
        rc = lora_seterr(err, LORA_EIO, "writing the output failed");
    free(res);
    return rc;
}

/*
 * adapter_config.c - PEFT's adapter_config.json: parsing, the refusals
 * (other PEFT methods, DoRA, lora_bias, ...), and the three ways PEFT
 * matches module names against patterns:
 *   - target_modules / exclude_modules: a list of names (the module name
 *     equals one, or ends with "." + one) or one regex string that must
 *     match the whole module name (Python re.fullmatch);
 *   - rank_pattern / alpha_pattern: the first key k, in the order the
 *     file gives them, for which re.match(r"(.*\.)?(k)$", module) holds;
 *   - modules_to_save: the module name ends with the entry.
 * Real configs carry Python regexes with (?:...), \d and \b, so the
 * patterns go through PCRE2 (whose syntax is a superset of what these
 * use), with match limits so that a hostile pattern cannot hang us.
 */
#include "internal.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <string.h>

/* Bounds on what a config may hold: far above any real one. */
#define ACFG_MAX_LIST 100000
#define ACFG_MAX_R (1u << 20)

struct lora_rx;
static void rx_free(struct lora_rx *rx);
static int check_patterns(lora_acfg *c, lora_error *err);

static void free_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void lora_acfg_free(lora_acfg *c)
{
    if (!c)
        return;
    free(c->peft_type);
    free(c->bias);
    free(c->base_model);
    free(c->peft_version);
    free(c->task_type);
    free(c->target_modules_json);
    free(c->target_regex);
    free_list(c->targets, c->n_targets);
    free(c->exclude_regex);
    free_list(c->exclude, c->n_exclude);
    free_list(c->rank_keys, c->n_rank);
    free(c->rank_vals);
    free_list(c->alpha_keys, c->n_alpha);
    free(c->alpha_vals);
    free_list(c->modules_to_save, c->n_save);
    rx_free(c->rx);
    free(c);
}

/* A string or null field; *out stays NULL for null/absent. */
static int get_str(json_t *root, const char *key, char **out, lora_error *err)
{
    json_t *v = json_object_get(root, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return LORA_OK;
    if (!json_is_string(v))
        return lora_seterr(err, LORA_EINPUT, "\"%s\" must be a string", key);
    *out = lora_strdup(json_string_value(v), err);
    return *out ? LORA_OK : LORA_EIO;
}

/* A boolean field; absent or null is false. */
static int get_bool(json_t *root, const char *key, int *out, lora_error *err)
{
    json_t *v = json_object_get(root, key);
    *out = 0;
    if (!v || json_is_null(v))
        return LORA_OK;
    if (!json_is_boolean(v))
        return lora_seterr(err, LORA_EINPUT, "\"%s\" must be true or false", key);
    *out = json_is_true(v);
    return LORA_OK;
}

/* A list of strings, or null/absent (n = 0, v = NULL). */
static int get_list(json_t *arr, const char *key, char ***out, size_t *n, lora_error *err)
{
    *out = NULL;
    *n = 0;
    if (!arr || json_is_null(arr))
        return LORA_OK;
    if (!json_is_array(arr))
        return lora_seterr(err, LORA_EINPUT, "\"%s\" must be a list of strings", key);
    size_t len = json_array_size(arr);
    if (len > ACFG_MAX_LIST)
        return lora_seterr(err, LORA_EINPUT, "\"%s\" has %zu entries, more than %d", key, len,
                           ACFG_MAX_LIST);
    char **v = calloc(len ? len : 1, sizeof *v);
    if (!v)
        return lora_oom(err);
    for (size_t i = 0; i < len; i++) {
        json_t *s = json_array_get(arr, i);
        if (!json_is_string(s)) {
            free_list(v, i);
            return lora_seterr(err, LORA_EINPUT, "\"%s\" must be a list of strings", key);
        }
        if (!(v[i] = lora_strdup(json_string_value(s), err))) {
            free_list(v, i);
            return LORA_EIO;
        }
    }
    *out = v;
    *n = len;
    return LORA_OK;
}

/* target_modules / exclude_modules: a list, a regex string, or null. */
static int get_targets(json_t *root, const char *key, char **regex, char ***list, size_t *n,
                       lora_error *err)
{
    json_t *v = json_object_get(root, key);
    *regex = NULL;
    if (v && json_is_string(v)) {
        *list = NULL;
        *n = 0;
        *regex = lora_strdup(json_string_value(v), err);
        return *regex ? LORA_OK : LORA_EIO;
    }
    return get_list(v, key, list, n, err);
}

static int get_pattern(json_t *root, const char *key, int integer, char ***keys, void **vals,
                       size_t *n, lora_error *err)
{
    json_t *obj = json_object_get(root, key);
    *keys = NULL;
    *vals = NULL;
    *n = 0;
    if (!obj || json_is_null(obj))
        return LORA_OK;
    if (!json_is_object(obj))
        return lora_seterr(err, LORA_EINPUT, "\"%s\" must be an object", key);
    size_t len = json_object_size(obj);
    if (len > ACFG_MAX_LIST)
        return lora_seterr(err, LORA_EINPUT, "\"%s\" has too many entries", key);
    char **k = calloc(len ? len : 1, sizeof *k);
    void *v = calloc(len ? len : 1, integer ? sizeof(uint64_t) : sizeof(double));
    if (!k || !v) {
        free(k);
        free(v);
        return lora_oom(err);
    }
    size_t i = 0;
    const char *name;
    json_t *val;
    /* jansson keeps the file's order, which PEFT's first-match rule needs */
    json_object_foreach(obj, name, val) {
        if (integer) {
            if (!json_is_integer(val) || json_integer_value(val) <= 0 ||
                json_integer_value(val) > (json_int_t)ACFG_MAX_R) {
                free_list(k, i);
                free(v);
                return lora_seterr(err, LORA_EINPUT, "\"%s\": \"%s\" must be a rank from 1 to %u",
                                   key, name, ACFG_MAX_R);
            }
            ((uint64_t *)v)[i] = (uint64_t)json_integer_value(val);
        } else {
            if (!json_is_number(val)) {
                free_list(k, i);
                free(v);
                return lora_seterr(err, LORA_EINPUT, "\"%s\": \"%s\" must be a number", key, name);
            }
            ((double *)v)[i] = json_number_value(val);
        }
        if (!(k[i] = lora_strdup(name, err))) {
            free_list(k, i);
            free(v);
            return LORA_EIO;
        }
        i++;
    }
    *keys = k;
    *vals = v;
    *n = len;
    return LORA_OK;
}

/* PEFT adds the task's head to modules_to_save whatever the config says
 * (PeftModelForSequenceClassification and ...ForTokenClassification:
 * "classifier" and "score"; ...ForQuestionAnswering: "qa_outputs"), and
 * configs saved by older PEFT versions do not list them: read such a
 * config as PEFT does. */
static int add_task_heads(lora_acfg *c, lora_error *err)
{
    static const char *const cls[] = {"classifier", "score", NULL};
    static const char *const qa[] = {"qa_outputs", NULL};
    const char *const *heads = NULL;
    if (c->task_type && (strcmp(c->task_type, "SEQ_CLS") == 0 ||
                         strcmp(c->task_type, "TOKEN_CLS") == 0))
        heads = cls;
    else if (c->task_type && strcmp(c->task_type, "QUESTION_ANS") == 0)
        heads = qa;
    for (size_t h = 0; heads && heads[h]; h++) {
        size_t i = 0;
        while (i < c->n_save && strcmp(c->modules_to_save[i], heads[h]) != 0)
            i++;
        if (i < c->n_save)
            continue;
        char **v = realloc(c->modules_to_save, (c->n_save + 1) * sizeof *v);
        if (!v)
            return lora_oom(err);
        c->modules_to_save = v;
        if (!(v[c->n_save] = lora_strdup(heads[h], err)))
            return LORA_EIO;
        c->n_save++;
    }
    return LORA_OK;
}

static int parse_fields(json_t *root, lora_acfg *c, lora_error *err)
{
    int rc;
    json_t *v;

    if ((rc = get_str(root, "peft_type", &c->peft_type, err)))
        return rc;
    if (!c->peft_type)
        return lora_seterr(err, LORA_EINPUT, "no \"peft_type\": not a PEFT adapter config");
    if (strcmp(c->peft_type, "LORA") != 0)
        return lora_seterr(err, LORA_EINPUT,
                           "peft_type \"%s\" is not supported (only LORA adapters are)",
                           c->peft_type);

    v = json_object_get(root, "r");
    c->r = 8; /* LoraConfig's default */
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0 ||
            json_integer_value(v) > (json_int_t)ACFG_MAX_R)
            return lora_seterr(err, LORA_EINPUT, "\"r\" must be an integer from 1 to %u",
                               ACFG_MAX_R);
        c->r = (uint64_t)json_integer_value(v);
    }
    v = json_object_get(root, "lora_alpha");
    c->alpha = 8;
    if (v && !json_is_null(v)) {
        if (!json_is_number(v))
            return lora_seterr(err, LORA_EINPUT, "\"lora_alpha\" must be a number");
        c->alpha = json_number_value(v);
    }

    if ((rc = get_bool(root, "use_rslora", &c->use_rslora, err)) ||
        (rc = get_bool(root, "use_dora", &c->use_dora, err)) ||
        (rc = get_bool(root, "fan_in_fan_out", &c->fan_in_fan_out, err)) ||
        (rc = get_bool(root, "lora_bias", &c->lora_bias, err)))
        return rc;
    if (c->lora_bias)
        return lora_seterr(err, LORA_EINPUT,
                           "lora_bias is true: adapters with a bias on lora_B are not supported");

    if ((rc = get_str(root, "bias", &c->bias, err)))
        return rc;
    if (c->bias && strcmp(c->bias, "none") && strcmp(c->bias, "all") &&
        strcmp(c->bias, "lora_only"))
        return lora_seterr(err, LORA_EINPUT, "bias \"%s\" is not one of none, all, lora_only",
                           c->bias);

    /* Fields that change which weights exist or how they are shaped, in
     * ways a plain B·A merge cannot honour. */
    v = json_object_get(root, "layer_replication");
    if (v && !json_is_null(v))
        return lora_seterr(err, LORA_EINPUT, "layer_replication is not supported");
    v = json_object_get(root, "target_parameters");
    if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
        return lora_seterr(err, LORA_EINPUT,
                           "target_parameters is not supported (LoRA on raw parameters)");

    if ((rc = get_str(root, "base_model_name_or_path", &c->base_model, err)) ||
        (rc = get_str(root, "peft_version", &c->peft_version, err)) ||
        (rc = get_str(root, "task_type", &c->task_type, err)))
        return rc;

    v = json_object_get(root, "target_modules");
    c->target_modules_json = json_dumps(v ? v : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    if (!c->target_modules_json)
        return lora_oom(err);
    if ((rc = get_targets(root, "target_modules", &c->target_regex, &c->targets, &c->n_targets,
                          err)) ||
        (rc = get_targets(root, "exclude_modules", &c->exclude_regex, &c->exclude, &c->n_exclude,
                          err)))
        return rc;
    if ((rc = get_pattern(root, "rank_pattern", 1, &c->rank_keys, (void **)&c->rank_vals,
                          &c->n_rank, err)) ||
        (rc = get_pattern(root, "alpha_pattern", 0, &c->alpha_keys, (void **)&c->alpha_vals,
                          &c->n_alpha, err)))
        return rc;
    if ((rc = get_list(json_object_get(root, "modules_to_save"), "modules_to_save",
                       &c->modules_to_save, &c->n_save, err)) ||
        (rc = add_task_heads(c, err)))
        return rc;
    return check_patterns(c, err);
}

int lora_acfg_parse(const char *text, size_t len, lora_acfg **out, lora_error *err)
{
    *out = NULL;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return lora_seterr(err, LORA_EINPUT, "adapter_config.json: invalid JSON at line %d: %s",
                           je.line, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return lora_seterr(err, LORA_EINPUT, "adapter_config.json: not a JSON object");
    }
    lora_acfg *c = calloc(1, sizeof *c);
    if (!c) {
        json_decref(root);
        return lora_oom(err);
    }
    int rc = parse_fields(root, c, err);
    json_decref(root);
    if (rc) {
        lora_acfg_free(c);
        return rc == LORA_EIO ? rc : lora_err_prefix(err, "adapter_config.json");
    }
    *out = c;
    return LORA_OK;
}

/* ------------------------------------------------------------------ */
/* Regular expressions, with the total work bounded                    */
/* ------------------------------------------------------------------ */

/* A config is hostile input: its patterns run against every module name
 * (and lora-inspect --check runs every pattern against every module).
 * A per-match limit alone does not bound that (5000 keys of
 * "(?:.*){5}a" took 36 s), so each config gets a budget of PCRE2 steps
 * for all its matches; each pattern is compiled once; keys are capped in
 * number and length.  A match first runs with a small limit (charged in
 * full, whatever it used) and only a pattern that needs more is retried
 * with the per-match limit (charged in full too), so an honest config
 * with thousands of modules costs a few steps per match and a hostile
 * one runs out of budget after a few thousand expensive matches. */
#define RX_MAX_KEYS 4096          /* regex keys in rank_pattern + alpha_pattern */
#define RX_MAX_KEY_LEN 4096       /* bytes in one pattern key */
#define RX_MAX_TARGET_LEN 65536   /* target_modules / exclude_modules as one regex */
#define RX_SMALL_LIMIT 1000
#define RX_MATCH_LIMIT 100000
#define RX_DEPTH_LIMIT 10000
#define RX_BUDGET 300000000ull

struct lora_rx {
    size_t n;                     /* slots: rank keys, alpha keys, target, exclude */
    pcre2_code **code;
    pcre2_match_data *md;
    pcre2_match_context *mc;
    uint64_t budget;              /* steps left */
};

static void rx_free(struct lora_rx *rx)
{
    if (!rx)
        return;
    for (size_t i = 0; i < rx->n; i++)
        pcre2_code_free(rx->code[i]);
    free(rx->code);
    pcre2_match_data_free(rx->md);
    pcre2_match_context_free(rx->mc);
    free(rx);
}

static struct lora_rx *rx_new(size_t n, lora_error *err)
{
    struct lora_rx *rx = calloc(1, sizeof *rx);
    if (rx && (rx->code = calloc(n ? n : 1, sizeof *rx->code)) &&
        (rx->md = pcre2_match_data_create(1, NULL)) && (rx->mc = pcre2_match_context_create(NULL))) {
        rx->n = n;
        rx->budget = RX_BUDGET;
        pcre2_set_depth_limit(rx->mc, RX_DEPTH_LIMIT);
        return rx;
    }
    if (rx) {
        rx->n = 0;
        rx_free(rx);
    }
    lora_oom(err);
    return NULL;
}

/* Compile PAT as Python would run it: mode 0 is re.match of
 * "(.*\.)?(PAT)$", mode 1 re.fullmatch(PAT). */
static pcre2_code *rx_compile(const char *pat, int mode, lora_error *err)
{
    char *full = NULL;
    const char *p = pat;
    uint32_t opts = PCRE2_UTF | PCRE2_ANCHORED;
    if (mode == 0) {
        size_t n = strlen(pat) + 16;
        if (!(full = malloc(n))) {
            lora_oom(err);
            return NULL;
        }
        snprintf(full, n, "(.*\\.)?(%s)$", pat);
        p = full;
    } else {
        opts |= PCRE2_ENDANCHORED;
    }
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED, opts, &ecode, &eoff, NULL);
    free(full);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        lora_seterr(err, LORA_EINPUT, "pattern \"%.200s\" is not a valid regular expression: %s",
                    pat, (const char *)msg);
    }
    return re;
}

static int rx_result(int m, const char *pat, const char *subject, lora_error *err)
{
    if (m >= 0)
        return 1;
    if (m == PCRE2_ERROR_NOMATCH)
        return 0;
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(m, msg, sizeof msg);
    return -lora_seterr(err, LORA_EINPUT, "pattern \"%.200s\" on \"%.200s\": %s", pat, subject,
                        (const char *)msg);
}

/* Python-style regex match of SUBJECT, compiled for this one call
 * (callers with many matches go through a config's cache below).
 * Returns 1 match, 0 no match, or -code with err filled. */
int lora_regex_match(const char *pat, const char *subject, int mode, lora_error *err)
{
    pcre2_code *re = rx_compile(pat, mode, err);
    if (!re)
        return -(err ? err->code : LORA_EINPUT);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    if (!md || !mc) {
        pcre2_match_data_free(md);
        pcre2_match_context_free(mc);
        pcre2_code_free(re);
        return -lora_oom(err);
    }
    pcre2_set_match_limit(mc, RX_MATCH_LIMIT);
    pcre2_set_depth_limit(mc, RX_DEPTH_LIMIT);
    int m = pcre2_match(re, (PCRE2_SPTR)subject, PCRE2_ZERO_TERMINATED, 0, 0, md, mc);
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_code_free(re);
    return rx_result(m, pat, subject, err);
}

/* A pattern key made of [A-Za-z0-9_.] only (module names, the usual
 * case): matched without PCRE2, exactly as re.match("(.*\.)?(K)$")
 * would: the last len(K) characters equal K, '.' in K matching any
 * character, preceded by nothing or a '.'. */
static int literal_key(const char *k)
{
    for (const unsigned char *p = (const unsigned char *)k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.'))
            return 0;
    return 1;
}

static int literal_match(const char *k, const char *module)
{
    size_t n = strlen(module), l = strlen(k);
    if (n && module[n - 1] == '\n') /* Python's $ also matches before a final newline */
        n--;
    if (n < l || (n > l && module[n - l - 1] != '.'))
        return 0;
    for (size_t i = 0; i < l; i++)
        if (k[i] != '.' && k[i] != module[n - l + i])
            return 0;
    return 1;
}

/* Match through the config's cache and budget: slot SLOT holds PAT. */
static int rx_match(const lora_acfg *c, size_t slot, const char *pat, int mode,
                    const char *module, lora_error *err)
{
    if (mode == 0 && literal_key(pat))
        return literal_match(pat, module);
    struct lora_rx *rx = c->rx;
    if (!rx->code[slot] && !(rx->code[slot] = rx_compile(pat, mode, err)))
        return -(err ? err->code : LORA_EINPUT);
    static const uint32_t limits[] = {RX_SMALL_LIMIT, RX_MATCH_LIMIT};
    int m = PCRE2_ERROR_MATCHLIMIT;
    for (size_t t = 0; t < 2 && m == PCRE2_ERROR_MATCHLIMIT; t++) {
        if (rx->budget < limits[t])
            return -lora_seterr(err, LORA_EINPUT,
                                "matching the config's patterns against module names needs more "
                                "than %llu steps in all (last \"%.200s\"): refused, a config "
                                "this costly is hostile or broken",
                                (unsigned long long)RX_BUDGET, pat);
        rx->budget -= limits[t];
        pcre2_set_match_limit(rx->mc, limits[t]);
        m = pcre2_match(rx->code[slot], (PCRE2_SPTR)module, PCRE2_ZERO_TERMINATED, 0, 0, rx->md,
                        rx->mc);
    }
    return rx_result(m, pat, module, err);
}

/* Slots of the cache. */
static size_t slot_target(const lora_acfg *c) { return c->n_rank + c->n_alpha; }
static size_t slot_exclude(const lora_acfg *c) { return c->n_rank + c->n_alpha + 1; }

/* The caps, checked once the config is parsed. */
static int check_patterns(lora_acfg *c, lora_error *err)
{
    size_t regex = 0;
    for (int w = 0; w < 2; w++) {
        char **k = w ? c->alpha_keys : c->rank_keys;
        size_t n = w ? c->n_alpha : c->n_rank;
        for (size_t i = 0; i < n; i++) {
            if (strlen(k[i]) > RX_MAX_KEY_LEN)
                return lora_seterr(err, LORA_EINPUT,
                                   "\"%s\": a key of %zu bytes, more than %d",
                                   w ? "alpha_pattern" : "rank_pattern", strlen(k[i]),
                                   RX_MAX_KEY_LEN);
            regex += !literal_key(k[i]);
        }
    }
    if (regex > RX_MAX_KEYS)
        return lora_seterr(err, LORA_EINPUT,
                           "rank_pattern and alpha_pattern hold %zu regular-expression keys, "
                           "more than %d",
                           regex, RX_MAX_KEYS);
    const char *rx[2] = {c->target_regex, c->exclude_regex};
    for (int i = 0; i < 2; i++)
        if (rx[i] && strlen(rx[i]) > RX_MAX_TARGET_LEN)
            return lora_seterr(err, LORA_EINPUT, "\"%s\": a regular expression of %zu bytes, more "
                               "than %d", i ? "exclude_modules" : "target_modules",
                               strlen(rx[i]), RX_MAX_TARGET_LEN);
    c->rx = rx_new(c->n_rank + c->n_alpha + 2, err);
    return c->rx ? LORA_OK : LORA_EIO;
}

static int name_matches(const char *module, const char *name)
{
    size_t n = strlen(module), m = strlen(name);
    if (n == m)
        return strcmp(module, name) == 0;
    return n > m && module[n - m - 1] == '.' && strcmp(module + n - m, name) == 0;
}

int lora_acfg_entry_matches(const char *entry, const char *module)
{
    if (strcmp(entry, "all-linear") == 0)
        return 1;
    return name_matches(module, entry);
}

int lora_acfg_targets(const lora_acfg *c, const char *module, lora_error *err)
{
    int hit = 0;
    if (c->target_regex) {
        hit = strcmp(c->target_regex, "all-linear") == 0
                  ? 1
                  : rx_match(c, slot_target(c), c->target_regex, 1, module, err);
        if (hit < 0)
            return hit;
    } else {
        for (size_t i = 0; i < c->n_targets && !hit; i++)
            hit = lora_acfg_entry_matches(c->targets[i], module);
    }
    if (!hit)
        return 0;
    if (c->exclude_regex) {
        int x = rx_match(c, slot_exclude(c), c->exclude_regex, 1, module, err);
        if (x)
            return x < 0 ? x : 0;
    }
    for (size_t i = 0; i < c->n_exclude; i++)
        if (name_matches(module, c->exclude[i]))
            return 0;
    return 1;
}

int lora_acfg_module_rank(const lora_acfg *c, const char *module, uint64_t *r, double *alpha,
                          lora_error *err)
{
    *r = c->r;
    *alpha = c->alpha;
    for (size_t i = 0; i < c->n_rank; i++) {
        int m = rx_match(c, i, c->rank_keys[i], 0, module, err);
        if (m < 0) {
            lora_err_prefix(err, "rank_pattern");
            return -m;
        }
        if (m) {
            *r = c->rank_vals[i];
            break;
        }
    }
    for (size_t i = 0; i < c->n_alpha; i++) {
        int m = rx_match(c, c->n_rank + i, c->alpha_keys[i], 0, module, err);
        if (m < 0) {
            lora_err_prefix(err, "alpha_pattern");
            return -m;
        }
        if (m) {
            *alpha = c->alpha_vals[i];
            break;
        }
    }
    return LORA_OK;
}

int lora_acfg_pattern_matches(const lora_acfg *c, int alpha, size_t i, const char *module,
                              lora_error *err)
{
    if (alpha)
        return i < c->n_alpha ? rx_match(c, c->n_rank + i, c->alpha_keys[i], 0, module, err) : 0;
    return i < c->n_rank ? rx_match(c, i, c->rank_keys[i], 0, module, err) : 0;
}

int lora_acfg_saves(const lora_acfg *c, const char *module)
{
    size_t n = strlen(module);
    for (size_t i = 0; i < c->n_save; i++) {
        size_t m = strlen(c->modules_to_save[i]);
        /* PEFT: key.endswith(target_key) */
        if (m && n >= m && strcmp(module + n - m, c->modules_to_save[i]) == 0)
            return 1;
    }
    return 0;
}

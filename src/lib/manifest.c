/*
 * manifest.c - lora.json, the signed manifest of a .lora archive
 * (lora-archive(5)): parsing with every type and limit checked, and the
 * canonical text the archive writer signs.
 */
#include "internal.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

#define FIELD_MAX 128

void lora_manifest_free(lora_manifest *m)
{
    if (!m)
        return;
    free(m->name);
    free(m->task);
    free(m->version);
    free(m->base_model);
    for (size_t i = 0; i < m->n_targets; i++)
        free(m->targets[i]);
    free(m->targets);
    for (size_t i = 0; i < m->n_members; i++)
        free(m->members[i].name);
    free(m->members);
    free(m);
}

const lora_manifest_member *lora_manifest_find(const lora_manifest *m, const char *name)
{
    for (size_t i = 0; i < m->n_members; i++)
        if (strcmp(m->members[i].name, name) == 0)
            return &m->members[i];
    return NULL;
}

/* name, task, version: printable ASCII without spaces, so that the
 * trusted comment stays one unambiguous line */
static int field_ok(const char *s, size_t len)
{
    if (len == 0 || len > FIELD_MAX || strlen(s) != len)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f)
            return 0;
    return 1;
}

/* Payload member names a manifest may list, and each one's limit. */
static uint64_t member_limit(const char *name)
{
    if (strcmp(name, "adapter_config.json") == 0 || strcmp(name, "README.md") == 0)
        return LORA_ARCHIVE_TEXT_MAX;
    if (strcmp(name, "adapter_model.safetensors") == 0)
        return LORA_ARCHIVE_PAYLOAD_MAX;
    if (strncmp(name, "receipts/", 9) == 0) {
        const char *b = name + 9;
        size_t n = strlen(b);
        if (n == 0 || n > FIELD_MAX || b[0] == '.' || b[0] == '-')
            return 0;
        for (size_t i = 0; i < n; i++) {
            char c = b[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-'))
                return 0;
        }
        return LORA_ARCHIVE_RECEIPT_MAX;
    }
    return 0;
}

static int get_str(json_t *o, const char *key, int nullable, char **out, lora_error *err)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v)
        return lora_seterr(err, LORA_EINPUT, "manifest: \"%s\" missing", key);
    if (nullable && json_is_null(v))
        return LORA_OK;
    if (!json_is_string(v) || !field_ok(json_string_value(v), json_string_length(v)))
        return lora_seterr(err, LORA_EINPUT,
                           "manifest: \"%s\" must be a string of 1 to %d printable ASCII "
                           "characters without spaces",
                           key, FIELD_MAX);
    *out = lora_strdup(json_string_value(v), err);
    return *out ? LORA_OK : LORA_EIO;
}

static int only_keys(json_t *o, const char *const *keys, const char *where, lora_error *err)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        int known = 0;
        for (size_t i = 0; keys[i]; i++)
            known |= strcmp(k, keys[i]) == 0;
        if (!known)
            return lora_seterr(err, LORA_EINPUT, "manifest: unknown field \"%s\" in %s", k, where);
    }
    return LORA_OK;
}

/* "format", "format_version", name, task and version. */
static int parse_identity(json_t *root, lora_manifest *m, lora_error *err)
{
    json_t *v = json_object_get(root, "format");
    if (!json_is_string(v) || strcmp(json_string_value(v), "lora-archive") != 0)
        return lora_seterr(err, LORA_EINPUT, "manifest: \"format\" is not \"lora-archive\"");
    v = json_object_get(root, "format_version");
    if (!json_is_integer(v))
        return lora_seterr(err, LORA_EINPUT, "manifest: \"format_version\" missing or not an integer");
    if (json_integer_value(v) != LORA_ARCHIVE_FORMAT_VERSION)
        return lora_seterr(err, LORA_EINPUT, "manifest: format version %lld not supported (this "
                                             "build reads version %d)",
                           (long long)json_integer_value(v), LORA_ARCHIVE_FORMAT_VERSION);
    m->format_version = LORA_ARCHIVE_FORMAT_VERSION;
    int rc;
    if ((rc = get_str(root, "name", 0, &m->name, err)) ||
        (rc = get_str(root, "task", 0, &m->task, err)) ||
        (rc = get_str(root, "version", 0, &m->version, err)))
        return rc;
    return LORA_OK;
}

/* A string of 1 to 1024 bytes with no NUL inside. */
static int short_string(json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= 1024 &&
           strlen(json_string_value(v)) == json_string_length(v);
}

/* "base_model": {"name", "hash"}, each may be null. */
static int parse_base(json_t *root, lora_manifest *m, lora_error *err)
{
    json_t *base = json_object_get(root, "base_model");
    static const char *const basekeys[] = {"name", "hash", NULL};
    if (!json_is_object(base))
        return lora_seterr(err, LORA_EINPUT, "manifest: \"base_model\" missing or not an object");
    int rc = only_keys(base, basekeys, "base_model", err);
    if (rc)
        return rc;
    json_t *v = json_object_get(base, "name");
    if (v && !json_is_null(v)) {
        if (!short_string(v))
            return lora_seterr(err, LORA_EINPUT, "manifest: base_model.name must be a string of 1 "
                                                 "to 1024 bytes or null");
        if (!(m->base_model = lora_strdup(json_string_value(v), err)))
            return LORA_EIO;
    }
    v = json_object_get(base, "hash");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || lora_unhex(json_string_value(v), m->base_hash, LORA_HASH_BYTES))
            return lora_seterr(err, LORA_EINPUT, "manifest: base_model.hash must be 64 lower-case "
                                                 "hex digits or null");
        m->has_base_hash = 1;
    }
    return LORA_OK;
}

/* "r", "alpha" and "targets". */
static int parse_shape(json_t *root, lora_manifest *m, lora_error *err)
{
    json_t *v = json_object_get(root, "r");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1 << 20)
        return lora_seterr(err, LORA_EINPUT, "manifest: \"r\" must be an integer in 1..1048576");
    m->r = (uint64_t)json_integer_value(v);
    v = json_object_get(root, "alpha");
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return lora_seterr(err, LORA_EINPUT, "manifest: \"alpha\" must be a finite number");
    m->alpha = json_number_value(v);
    json_t *tg = json_object_get(root, "targets");
    if (!json_is_array(tg) || json_array_size(tg) > LORA_ARCHIVE_MAX_TARGETS)
        return lora_seterr(err, LORA_EINPUT, "manifest: \"targets\" must be an array of at most %d "
                                             "strings",
                           LORA_ARCHIVE_MAX_TARGETS);
    m->targets = calloc(json_array_size(tg) + 1, sizeof *m->targets);
    if (!m->targets)
        return lora_oom(err);
    size_t i;
    json_array_foreach(tg, i, v)
    {
        if (!short_string(v))
            return lora_seterr(err, LORA_EINPUT, "manifest: targets[%zu] must be a string of 1 to "
                                                 "1024 bytes",
                               i);
        if (!(m->targets[i] = lora_strdup(json_string_value(v), err)))
            return LORA_EIO;
        m->n_targets = i + 1;
    }
    return LORA_OK;
}

/* members[i]: a name an archive may hold, listed once, a size within
 * that member's limit, its BLAKE2b-256. */
static int parse_member(json_t *v, size_t i, lora_manifest *m, lora_error *err)
{
    static const char *const memkeys[] = {"name", "size", "blake2b-256", NULL};
    json_t *n = json_object_get(v, "name"), *s = json_object_get(v, "size"),
           *h = json_object_get(v, "blake2b-256");
    if (!json_is_object(v) || !json_is_string(n) || !json_is_integer(s) || !json_is_string(h))
        return lora_seterr(err, LORA_EINPUT, "manifest: members[%zu] must be an object with "
                                             "name, size and blake2b-256",
                           i);
    int rc = only_keys(v, memkeys, "a member", err);
    if (rc)
        return rc;
    const char *name = json_string_value(n);
    uint64_t limit = strlen(name) == json_string_length(n) ? member_limit(name) : 0;
    if (!limit)
        return lora_seterr(err, LORA_EINPUT, "manifest: members[%zu]: \"%.200s\" is not a member "
                                             "name an archive may hold",
                           i, name);
    if (json_integer_value(s) < 0 || (uint64_t)json_integer_value(s) > limit)
        return lora_seterr(err, LORA_EINPUT, "manifest: %s: size %lld outside 0..%llu", name,
                           (long long)json_integer_value(s), (unsigned long long)limit);
    if (lora_manifest_find(m, name))
        return lora_seterr(err, LORA_EINPUT, "manifest: %s listed twice", name);
    lora_manifest_member *mm = &m->members[i];
    if (lora_unhex(json_string_value(h), mm->hash, LORA_HASH_BYTES))
        return lora_seterr(err, LORA_EINPUT, "manifest: %s: blake2b-256 must be 64 lower-case "
                                             "hex digits",
                           name);
    mm->size = (uint64_t)json_integer_value(s);
    if (!(mm->name = lora_strdup(name, err)))
        return LORA_EIO;
    m->n_members = i + 1;
    return LORA_OK;
}

static int parse_members(json_t *root, lora_manifest *m, lora_error *err)
{
    json_t *mem = json_object_get(root, "members"), *v;
    if (!json_is_array(mem) || json_array_size(mem) > LORA_ARCHIVE_MAX_MEMBERS)
        return lora_seterr(err, LORA_EINPUT, "manifest: \"members\" must be an array of at most %d "
                                             "objects",
                           LORA_ARCHIVE_MAX_MEMBERS);
    m->members = calloc(json_array_size(mem) + 1, sizeof *m->members);
    if (!m->members)
        return lora_oom(err);
    size_t i;
    json_array_foreach(mem, i, v)
    {
        int rc = parse_member(v, i, m, err);
        if (rc)
            return rc;
    }
    if (!lora_manifest_find(m, "adapter_config.json") ||
        !lora_manifest_find(m, "adapter_model.safetensors"))
        return lora_seterr(err, LORA_EINPUT, "manifest: adapter_config.json and "
                                             "adapter_model.safetensors must both be listed");
    return LORA_OK;
}

int lora_manifest_parse(const char *text, size_t len, lora_manifest **out, lora_error *err)
{
    *out = NULL;
    if (len > LORA_MANIFEST_MAX)
        return lora_seterr(err, LORA_EINPUT, "manifest: %zu bytes, limit %d", len,
                           LORA_MANIFEST_MAX);
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return lora_seterr(err, LORA_EINPUT, "manifest: not valid JSON: %s (line %d)", je.text,
                           je.line);
    static const char *const top[] = {"format",  "format_version", "name",    "task",
                                      "version", "base_model",     "r",       "alpha",
                                      "targets", "members",        NULL};
    lora_manifest *m = calloc(1, sizeof *m);
    int rc;
    if (!m)
        rc = lora_oom(err);
    else if (!json_is_object(root))
        rc = lora_seterr(err, LORA_EINPUT, "manifest: not a JSON object");
    else if (!(rc = only_keys(root, top, "the manifest", err)) &&
             !(rc = parse_identity(root, m, err)) && !(rc = parse_base(root, m, err)) &&
             !(rc = parse_shape(root, m, err)))
        rc = parse_members(root, m, err);
    json_decref(root);
    if (rc)
        lora_manifest_free(m);
    else
        *out = m;
    return rc;
}

int lora_manifest_format(const lora_manifest *m, char **text, size_t *len, lora_error *err)
{
    *text = NULL;
    char hex[LORA_HASH_HEX];
    json_t *root = json_object(), *base = json_object(), *tg = json_array(), *mem = json_array();
    int bad = !root || !base || !tg || !mem;
    bad |= json_object_set_new(root, "format", json_string("lora-archive"));
    bad |= json_object_set_new(root, "format_version", json_integer(m->format_version));
    bad |= json_object_set_new(root, "name", json_string(m->name));
    bad |= json_object_set_new(root, "task", json_string(m->task));
    bad |= json_object_set_new(root, "version", json_string(m->version));
    bad |= json_object_set_new(base, "name", m->base_model ? json_string(m->base_model) : json_null());
    lora_hex(m->base_hash, LORA_HASH_BYTES, hex);
    bad |= json_object_set_new(base, "hash", m->has_base_hash ? json_string(hex) : json_null());
    bad |= json_object_set(root, "base_model", base);
    bad |= json_object_set_new(root, "r", json_integer((json_int_t)m->r));
    bad |= json_object_set_new(root, "alpha", json_real(m->alpha));
    for (size_t i = 0; i < m->n_targets; i++)
        bad |= json_array_append_new(tg, json_string(m->targets[i]));
    bad |= json_object_set(root, "targets", tg);
    for (size_t i = 0; i < m->n_members; i++) {
        json_t *o = json_object();
        lora_hex(m->members[i].hash, LORA_HASH_BYTES, hex);
        bad |= !o;
        bad |= json_object_set_new(o, "name", json_string(m->members[i].name));
        bad |= json_object_set_new(o, "size", json_integer((json_int_t)m->members[i].size));
        bad |= json_object_set_new(o, "blake2b-256", json_string(hex));
        bad |= json_array_append_new(mem, o);
    }
    bad |= json_object_set(root, "members", mem);
    char *s = bad ? NULL : json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(base);
    json_decref(tg);
    json_decref(mem);
    json_decref(root);
    if (!s)
        return lora_seterr(err, LORA_EIO, "manifest: cannot build JSON (out of memory or a "
                                          "field is not UTF-8)");
    size_t n = strlen(s);
    char *t = malloc(n + 2);
    if (!t) {
        free(s);
        return lora_oom(err);
    }
    memcpy(t, s, n);
    t[n] = '\n';
    t[n + 1] = '\0';
    free(s);
    *text = t;
    *len = n + 1;
    return LORA_OK;
}

char *lora_manifest_trusted_comment(const lora_manifest *m, const unsigned char hash[LORA_HASH_BYTES])
{
    char hex[LORA_HASH_HEX];
    lora_hex(hash, LORA_HASH_BYTES, hex);
    char *t = NULL;
    if (asprintf(&t, "lora-archive\tname:%s\tversion:%s\tmanifest:%s", m->name, m->version, hex) < 0)
        return NULL;
    return t;
}

/*
 * config_edit.c - the few keys a merge changes in its output folder's
 * Hugging Face config.json: tie_word_embeddings when it unties a head
 * (untie.c), and the dtype when it converts the whole checkpoint
 * (lora-merge --convert-all), so that transformers loads what the files
 * hold.  The file is read, changed as JSON (jansson keeps the key order)
 * and written back atomically; every other key stays as it was.
 */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

static char *config_path(const char *dir, lora_error *err)
{
    size_t n = strlen(dir) + sizeof "/config.json";
    char *path = malloc(n);
    if (!path)
        lora_oom(err);
    else
        snprintf(path, n, "%s/config.json", dir);
    return path;
}

/* Apply EDIT to DIR/config.json.  A folder without one: LORA_OK untouched
 * when missing_ok, else the read's error. */
static int edit_config(const char *dir, void (*edit)(json_t *o, const void *arg), const void *arg,
                       int missing_ok, lora_error *err)
{
    char *path = config_path(dir, err);
    if (!path)
        return LORA_EIO;
    struct stat sb;
    if (missing_ok && lstat(path, &sb) != 0 && errno == ENOENT) {
        free(path);
        return LORA_OK;
    }
    char *text = NULL, *out = NULL;
    size_t len = 0;
    json_t *o = NULL;
    int rc = lora_read_file(path, LORA_MODEL_MAX_CONFIG, &text, &len, err);
    if (rc == LORA_OK) {
        json_error_t je;
        o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
        if (!o || !json_is_object(o))
            rc = lora_seterr(err, LORA_EINPUT, "%s: cannot rewrite it: not a JSON object", path);
    }
    if (rc == LORA_OK) {
        edit(o, arg);
        out = lora_json_dumps(o, JSON_INDENT(2));
        rc = out ? LORA_OK : lora_oom(err);
    }
    if (rc == LORA_OK) {
        size_t ol = strlen(out);
        char *nl = realloc(out, ol + 2);
        if (!nl) {
            rc = lora_oom(err);
        } else {
            out = nl;
            out[ol] = '\n';
            out[ol + 1] = '\0';
            rc = lora_write_file_atomic(path, out, ol + 1, 0644, err);
        }
    }
    json_decref(o);
    free(out);
    free(text);
    free(path);
    return rc;
}

static void set_untied(json_t *o, const void *arg)
{
    (void)arg;
    json_object_set_new(o, "tie_word_embeddings", json_false());
}

int lora_config_set_untied(const char *dir, lora_error *err)
{
    return edit_config(dir, set_untied, NULL, 0, err);
}

/* torch_dtype, and dtype where newer transformers writes that key
 * instead; torch_dtype added when the file has neither. */
static void set_dtype(json_t *o, const void *arg)
{
    const char *name = arg;
    int any = 0;
    static const char *const keys[] = {"torch_dtype", "dtype"};
    for (size_t i = 0; i < 2; i++)
        if (json_object_get(o, keys[i])) {
            json_object_set_new(o, keys[i], json_string(name));
            any = 1;
        }
    if (!any)
        json_object_set_new(o, "torch_dtype", json_string(name));
}

const char *lora_torch_dtype_name(lora_dtype dt)
{
    switch (dt) {
    case LORA_DT_F32: return "float32";
    case LORA_DT_F16: return "float16";
    case LORA_DT_BF16: return "bfloat16";
    default: return NULL;
    }
}

int lora_config_set_dtype(const char *dir, lora_dtype dt, lora_error *err)
{
    const char *name = lora_torch_dtype_name(dt);
    if (!name)
        return lora_seterr(err, LORA_EUSAGE, "config.json: no torch dtype for %s",
                           lora_dtype_name(dt));
    return edit_config(dir, set_dtype, name, 1, err);
}

int lora_config_read(const char *dir, char **text, lora_error *err)
{
    *text = NULL;
    char *path = config_path(dir, err);
    if (!path)
        return LORA_EIO;
    struct stat sb;
    int rc = lstat(path, &sb) != 0 && errno == ENOENT
                 ? LORA_OK
                 : lora_read_file(path, LORA_MODEL_MAX_CONFIG, text, NULL, err);
    free(path);
    return rc;
}

int lora_config_write(const char *dir, const char *text, lora_error *err)
{
    char *path = config_path(dir, err);
    if (!path)
        return LORA_EIO;
    int rc = lora_write_file_atomic(path, text, strlen(text), 0644, err);
    free(path);
    return rc;
}

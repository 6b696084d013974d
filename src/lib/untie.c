/*
 * untie.c - merging an lm_head update into a model whose head is tied to
 * its input embeddings (tie_word_embeddings, no lm_head.weight).  PEFT
 * applies such an update to the head alone; written into the shared
 * embedding it would change the input lookup too.  So a merge unties:
 * it writes lm_head.weight = embedding + ΔW beside the untouched
 * embedding and sets tie_word_embeddings false in the output's
 * config.json (without that, transformers would tie the head back to
 * the embedding on load and drop the update).  This file holds the
 * pieces; merge.c calls them at its few points (bind, declare, write,
 * config).
 */
#include "internal.h"

#include <jansson.h>
#include <string.h>

const lora_tensor *lora_untie_source(const lora_merge_adapter *add, size_t nadd,
                                     const lora_ckpt *ck)
{
    for (size_t a = 0; a < nadd; a++)
        for (size_t i = 0; i < add[a].ad->n_modules; i++) {
            const lora_module *m = &add[a].ad->modules[i];
            if (m->tied_head)
                return lora_tied_embedding(m, ck);
        }
    return NULL;
}

int lora_untie_bind(lora_merge_adapter *add, size_t nadd, const lora_ckpt *ck, int folder,
                    lora_error *err)
{
    for (size_t a = 0; a < nadd; a++) {
        int rc = lora_adapter_bind_tied(add[a].ad, ck, err);
        if (rc)
            return lora_err_prefix(err, "%s", add[a].spec);
    }
    const lora_tensor *src = lora_untie_source(add, nadd, ck);
    if (src && !folder)
        return lora_seterr(err, LORA_EINPUT,
                           "module lm_head: the base has no lm_head.weight: its head is tied to the "
                           "input embeddings (%s); merging the update unties the head, which "
                           "needs the model folder (its config.json must say "
                           "tie_word_embeddings false): give the folder as input",
                           src->name);
    return LORA_OK;
}

int lora_untie_config(const char *dir, lora_error *err)
{
    size_t n = strlen(dir) + sizeof "/config.json";
    char *path = malloc(n);
    if (!path)
        return lora_oom(err);
    snprintf(path, n, "%s/config.json", dir);
    char *text = NULL;
    size_t len = 0;
    int rc = lora_read_file(path, LORA_MODEL_MAX_CONFIG, &text, &len, err);
    json_t *o = NULL;
    if (rc == LORA_OK) {
        json_error_t je;
        o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
        if (!o || !json_is_object(o))
            rc = lora_seterr(err, LORA_EINPUT, "%s: cannot set tie_word_embeddings: not a JSON "
                             "object", path);
    }
    char *out = NULL;
    if (rc == LORA_OK) {
        /* jansson keeps the keys in the file's order */
        json_object_set_new(o, "tie_word_embeddings", json_false());
        out = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
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

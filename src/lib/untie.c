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
    return lora_config_set_untied(dir, err);
}

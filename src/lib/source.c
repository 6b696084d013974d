/*
 * source.c - where an adapter named on a command line comes from.
 * Every tool takes the same adapter arguments: a PEFT folder, a .lora
 * archive, "task:TASK" or "reg:NAME@VERSION"; this file turns such a
 * string into an opened lora_adapter, so that the tools never decide it
 * themselves and all of them accept the same things.
 */
#include "internal.h"

#include <string.h>

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

int lora_adapter_load(const char *spec, const lora_source_opts *opts, lora_adapter **out,
                      lora_error *err)
{
    *out = NULL;
    if (!spec || !*spec)
        return lora_seterr(err, LORA_EUSAGE, "empty adapter name");
    (void)opts;
    if (strncmp(spec, "task:", 5) == 0 || strncmp(spec, "reg:", 4) == 0)
        return lora_seterr(err, LORA_EUSAGE, "%s: registry adapters are not available in this build",
                           spec);
    if (has_suffix(spec, ".lora"))
        return lora_seterr(err, LORA_EUSAGE, "%s: .lora archives are not available in this build",
                           spec);
    return lora_adapter_open(spec, out, err);
}

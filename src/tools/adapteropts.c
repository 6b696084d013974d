/*
 * adapteropts.c - one parser for the adapter-opening options of every
 * tool, and for the options every tool shares (--json, -q, -h, -V,
 * -j); see adapteropts.h.
 */
#include "adapteropts.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int adapter_opt(adapter_opts *ao, int c, const char *arg, const char *prog)
{
    switch (c) {
    case 'p':
        if (ao->n_keys == ADAPTER_MAX_KEYS) {
            fprintf(stderr, "%s: too many -p keys (at most %d)\n", prog, ADAPTER_MAX_KEYS);
            return -1;
        }
        ao->keys[ao->n_keys++] = arg;
        ao->keys[ao->n_keys] = NULL;
        return 1;
    case ADAPTER_OPT_NOVERIFY:
        ao->no_verify = 1;
        return 1;
    case ADAPTER_OPT_REGISTRY:
        ao->registry = arg;
        return 1;
    default:
        return 0;
    }
}

lora_source_opts adapter_source(const adapter_opts *ao, const char *prog, const char *base)
{
    lora_source_opts so = {.pubkeys = ao->n_keys ? ao->keys : NULL,
                           .no_verify = ao->no_verify,
                           .registry = ao->registry,
                           .warn = stderr,
                           .base = base,
                           .prog = prog};
    return so;
}

/* Does S read as a number, finite or not?  strtod's own grammar, so
 * "1e400" (overflow) and "nan"/"inf" count, "chat" and "v2" do not. */
static int numberish(const char *s, double *x, int *range)
{
    char *end;
    errno = 0;
    *x = strtod(s, &end);
    *range = errno == ERANGE;
    return end != s && *end == '\0' && !isspace((unsigned char)*s);
}

int adapter_split_weight(char *arg, double *w, const char *prog)
{
    *w = 1.0;
    char *c = strrchr(arg, ':');
    double x;
    int range;
    if (!c || c == arg || !numberish(c + 1, &x, &range))
        return 0;
    if (range && fabs(x) > 1) {
        fprintf(stderr, "%s: %s: weight '%s' is out of range (not a finite number)\n", prog, arg,
                c + 1);
        return -1;
    }
    if (!isfinite(x)) {
        fprintf(stderr, "%s: %s: weight '%s' is not a finite number\n", prog, arg, c + 1);
        return -1;
    }
    *c = '\0';
    *w = x;
    return 0;
}

char *adapter_provenance(const lora_adapter *ad, const char *spec)
{
    char *s = NULL;
    if (ad && ad->recorded_name && ad->recorded_version) {
        if (asprintf(&s, "%s@%s", ad->recorded_name, ad->recorded_version) < 0)
            s = NULL;
        return s;
    }
    if (strncmp(spec, "reg:", 4) == 0 || strncmp(spec, "task:", 5) == 0)
        return strdup(ad && ad->path && strncmp(ad->path, "reg:", 4) == 0 ? ad->path : spec);
    size_t l = strlen(spec);
    while (l > 1 && spec[l - 1] == '/')
        l--;
    size_t b = l;
    while (b > 0 && spec[b - 1] != '/')
        b--;
    return strndup(spec + b, l - b);
}

/* What getopt_long refused: an unknown option, or one without its value. */
static int bad_option(const tool_opts *t, int c, char **argv)
{
    const char *word = argv[optind - 1];
    if (c == ':')
        fprintf(stderr, "%s: option '%s' needs a value\n", t->prog, word);
    else if (optopt > 0 && optopt < 128 && strncmp(word, "--", 2) != 0)
        fprintf(stderr, "%s: unknown option, or its value is missing: '-%c'\n", t->prog, optopt);
    else
        fprintf(stderr, "%s: unknown option, or its value is missing: '%s'\n", t->prog, word);
    fprintf(stderr, "Try '%s --help'.\n", t->prog);
    return LORA_EUSAGE;
}

int tool_opt(tool_opts *t, int c, const char *arg, char **argv)
{
    if (c == TOOL_OPT_JSON || (t->json_short && c == t->json_short)) {
        t->json = 1;
        return TOOL_OPT_NEXT;
    }
    switch (c) {
    case 'q':
        t->quiet = 1;
        return TOOL_OPT_NEXT;
    case 'h':
        t->usage(stdout);
        return 0;
    case 'V':
        printf("%s (lora-tools) %s\n", t->prog, lora_version());
        return 0;
    case 'j':
        if (t->threads_max) {
            char *end;
            errno = 0;
            long v = strtol(arg, &end, 10);
            if (errno || end == arg || *end || v < 1 || v > t->threads_max) {
                fprintf(stderr, "%s: --threads %s: must be an integer from 1 to %d\nTry '%s --help'.\n",
                        t->prog, arg, t->threads_max, t->prog);
                return LORA_EUSAGE;
            }
            t->threads = (int)v;
            return TOOL_OPT_NEXT;
        }
        break;
    default:
        break;
    }
    int r = adapter_opt(&t->ao, c, arg, t->prog);
    if (r > 0)
        return TOOL_OPT_NEXT;
    if (r < 0)
        return LORA_EUSAGE;
    return bad_option(t, c, argv);
}

int tool_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int tool_init_no_blas(const char *prog)
{
    lora_error err;
    lora_error_clear(&err);
    if (lora_init(&err)) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        return err.code;
    }
    lora_blas_idle(); /* no BLAS in these tools: both cores for the workers */
    return 0;
}

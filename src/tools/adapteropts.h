/*
 * adapteropts.h - the options every tool that opens an adapter takes
 * (-p/--pubkey, --no-verify, --registry) and the strict SPEC[:WEIGHT]
 * split, so that the tools cannot drift apart (issue 19.1).
 */
#ifndef LORA_TOOLS_ADAPTEROPTS_H
#define LORA_TOOLS_ADAPTEROPTS_H

#include "lora.h"

#include <getopt.h>
#include <stdio.h>

#define ADAPTER_MAX_KEYS 16
enum { ADAPTER_OPT_NOVERIFY = 0x1001, ADAPTER_OPT_REGISTRY };

/* Entries for a tool's struct option table, and the lines of its --help. */
#define ADAPTER_LONGOPTS                                                                       \
    {"pubkey", required_argument, NULL, 'p'},                                                  \
        {"no-verify", no_argument, NULL, ADAPTER_OPT_NOVERIFY},                                \
        {"registry", required_argument, NULL, ADAPTER_OPT_REGISTRY}
#define ADAPTER_HELP                                                                           \
    "  -p, --pubkey KEY.pub    minisign public key for .lora archives (repeatable;\n"         \
    "                          default: the keys the registry trusts)\n"                       \
    "      --no-verify         open archives without checking signatures\n"                   \
    "      --registry PATH     registry for task:T, reg:NAME[@VERSION] and trusted keys\n"    \
    "                          (default: $LORA_REGISTRY, else the per-user registry)\n"

typedef struct adapter_opts {
    const char *keys[ADAPTER_MAX_KEYS + 1]; /* NULL-terminated */
    size_t n_keys;
    int no_verify;
    const char *registry;
} adapter_opts;

/* Handle option C (from getopt_long) if it is one of ADAPTER_LONGOPTS:
 * 1 taken, 0 not an adapter option, -1 refused (message printed on
 * stderr; the tool exits 2). */
int adapter_opt(adapter_opts *ao, int c, const char *arg, const char *prog);

/* The lora_source_opts for lora_adapter_load. */
lora_source_opts adapter_source(const adapter_opts *ao, const char *prog, const char *base);

/* "SPEC[:WEIGHT]" split in place: a suffix that reads as a number must
 * be a finite one ("x:1e400", "x:nan" are refused: -1, message printed
 * on stderr, exit 2); a suffix that is not a number belongs to SPEC
 * (task:chat, paths with ':').  *w is 1 without a weight. */
int adapter_split_weight(char *arg, double *w, const char *prog);

/* What a merged file's metadata and a receipt record for an adapter:
 * NAME@VERSION from its archive or the registry, else the folder's own
 * name, never a local path (issue 19.5); malloc'd, NULL when out of
 * memory. */
char *adapter_provenance(const lora_adapter *ad, const char *spec);

/* ---- the options every tool takes, adapter or not ---- */

enum { TOOL_OPT_JSON = 0x1010 };
#define TOOL_OPT_NEXT (-1)

/* Entries for --json, --quiet, --help, --version (a tool whose -j means
 * --json lists {"json", no_argument, NULL, 'j'} itself instead). */
#define TOOL_LONGOPTS                                                                          \
    {"json", no_argument, NULL, TOOL_OPT_JSON}, {"quiet", no_argument, NULL, 'q'},             \
        {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'}

typedef struct tool_opts {
    const char *prog;
    void (*usage)(FILE *);
    char json_short;  /* 'j' where -j means --json (lora-inspect, lora-convert) */
    int threads_max;  /* -j/--threads N takes 1..threads_max; 0: no such option */
    int json, quiet;
    int threads;      /* the tool's default until -j */
    adapter_opts ao;
} tool_opts;

/* The default of a step of a tool's getopt_long loop (opterr = 0): C is
 * --json, -q, -h, -V, -j/--threads, an adapter option (ADAPTER_LONGOPTS),
 * or else an unknown option or a missing value, with one message and a
 * pointer to --help.  TOOL_OPT_NEXT: taken, keep parsing; otherwise the
 * status main returns (0 after --help or --version, 2 usage error). */
int tool_opt(tool_opts *t, int c, const char *arg, char **argv);

/* CPUs online (at least 1): the default of -j for the merge tools. */
int tool_cpus(void);

/* lora_init, its failure printed as "PROG: MSG", then lora_blas_idle:
 * for lora-merge and lora-unmerge, which make no BLAS call.  0, or the
 * status main returns. */
int tool_init_no_blas(const char *prog);

#endif

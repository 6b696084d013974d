/*
 * lora-pack - make minisign keys; build, sign, verify, list and extract
 * signed adapter archives (.lora).  Argument parsing and printing only:
 * the work is in liblora (sign.c, manifest.c, archive.c).
 */
#include "config.h"
#include "lora.h"
#include "seckey.h"
#include "jsonerr.h"
#include "outpath.h"
#include "sigbus.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#define PROG "lora-pack"

static int quiet;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " PROG " COMMAND [OPTION]...\n"
            "Build, sign, verify, list and extract signed LoRA adapter archives (.lora).\n"
            "\n"
            "Commands:\n"
            "  keygen [-W] [-f] [--kdf-memlimit BYTES] -s KEY.sec -p KEY.pub\n"
            "                     make a minisign-compatible Ed25519 key pair\n"
            "                     (-W: secret key unencrypted)\n"
            "  create ADAPTER_DIR -s KEY.sec --name NAME --task TASK --version VERSION\n"
            "         [--base CHECKPOINT] [--readme FILE] [--receipt FILE]... [--compress]\n"
            "         -o NAME.lora\n"
            "                     pack and sign a PEFT adapter folder\n"
            "  verify ARCHIVE -p KEY.pub [-p KEY.pub]... [-P BASE64] [--json]\n"
            "                     check signature, manifest and every member\n"
            "  list ARCHIVE [--json]\n"
            "                     show the manifest and members (signature not checked)\n"
            "  extract ARCHIVE -C DIR -p KEY.pub [--force]\n"
            "                     verify, then write the members into DIR\n"
            "\n"
            "Options:\n"
            "  -q, --quiet        no progress or verdict text\n"
            "  -h, --help         show this help and exit\n"
            "      --version      show the version and exit (before a command)\n"
            "\n"
            "The password of an encrypted secret key is read from the terminal, or from\n"
            "the file named by LORA_PASSWORD_FILE.\n"
            "Exit status: 0 success, 1 verification failed, 2 usage error,\n"
            "3 bad or malformed input, 4 I/O or system error.\n");
}

static int fail(const lora_error *err)
{
    fprintf(stderr, PROG ": %s\n", err->msg);
    return err->code ? err->code : LORA_EIO;
}

static int usage_err(const char *fmt, const char *arg)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry '" PROG " --help' for more information.\n");
    return LORA_EUSAGE;
}

/* ---- keygen ---- */

static int cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {{"unencrypted", no_argument, 0, 'W'},
                                         {"force", no_argument, 0, 'f'},
                                         {"secret-key", required_argument, 0, 's'},
                                         {"public-key", required_argument, 0, 'p'},
                                         {"kdf-memlimit", required_argument, 0, 'M'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *sec = NULL, *pub = NULL;
    unsigned long long memlimit = 0;
    int unencrypted = 0, force = 0, c;
    char *end;
    while ((c = getopt_long(argc, argv, "Wfs:p:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'W': unencrypted = 1; break;
        case 'f': force = 1; break;
        case 's': sec = optarg; break;
        case 'p': pub = optarg; break;
        case 'M':
            errno = 0;
            memlimit = strtoull(optarg, &end, 10);
            if (errno || *end || memlimit < (1ULL << 20) || memlimit > LORA_SCRYPT_MEMLIMIT)
                return usage_err("--kdf-memlimit wants bytes from 1048576 to 1073741824, not '%s'",
                                 optarg);
            break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); return 0;
        default: return usage_err("keygen: unknown option, or its value is missing: '%s'", argv[optind - 1]);
        }
    }
    if (!sec || !pub || optind != argc)
        return usage_err("%s", "keygen needs -s KEY.sec and -p KEY.pub");
    if (strcmp(sec, "-") == 0 || strcmp(pub, "-") == 0)
        return usage_err("%s", "keygen: keys are files written atomically, not streams; give paths");
    struct stat sb;
    if (!force && (stat(sec, &sb) == 0 || stat(pub, &sb) == 0)) {
        fprintf(stderr, PROG ": %s: key already exists (use -f to overwrite)\n",
                stat(sec, &sb) == 0 ? sec : pub);
        return LORA_EUSAGE;
    }
    lora_error err;
    lora_error_clear(&err);
    char pw[PASSWORD_MAX];
    if (!unencrypted && tool_get_password(1, pw, sizeof pw, &err))
        return fail(&err);
    lora_seckey *sk;
    lora_pubkey pk;
    int rc = lora_keygen(&sk, &err);
    if (!rc) {
        lora_seckey_pubkey(sk, &pk);
        /* progress: scrypt takes seconds; a terminal only, as every tool */
        if (!quiet && !unencrypted && isatty(2))
            fprintf(stderr, PROG ": deriving a key from the password (scrypt)...\n");
        /* minisign's ratio: opslimit = memlimit / 32 */
        rc = lora_seckey_write(sec, sk, unencrypted ? NULL : pw, memlimit / 32, memlimit, &err);
        if (!rc)
            rc = lora_pubkey_write(pub, &pk, &err);
        lora_seckey_free(sk);
    }
    explicit_bzero(pw, sizeof pw);
    if (rc)
        return fail(&err);
    if (!quiet) {
        char id[LORA_KEYID_STR], b64[57];
        lora_keyid_str(pk.key_id, id);
        lora_pubkey_b64(&pk, b64);
        printf("Key id %s\nSecret key: %s\nPublic key: %s\n%s\n", id, sec, pub, b64);
    }
    return 0;
}

/* ---- create ---- */

static int cmd_create(int argc, char **argv)
{
    enum { O_NAME = 256, O_TASK, O_VERSION, O_BASE, O_README, O_RECEIPT, O_COMPRESS };
    static const struct option opts[] = {{"secret-key", required_argument, 0, 's'},
                                         {"name", required_argument, 0, O_NAME},
                                         {"task", required_argument, 0, O_TASK},
                                         {"version", required_argument, 0, O_VERSION},
                                         {"base", required_argument, 0, O_BASE},
                                         {"readme", required_argument, 0, O_README},
                                         {"receipt", required_argument, 0, O_RECEIPT},
                                         {"compress", no_argument, 0, O_COMPRESS},
                                         {"output", required_argument, 0, 'o'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    lora_pack_opts po;
    memset(&po, 0, sizeof po);
    const char *sec = NULL, *outp = NULL;
    const char **receipts = calloc((size_t)argc + 1, sizeof *receipts);
    size_t nrec = 0;
    int c;
    if (!receipts)
        return LORA_EIO;
    while ((c = getopt_long(argc, argv, "s:o:qh", opts, NULL)) != -1) {
        switch (c) {
        case 's': sec = optarg; break;
        case 'o': outp = optarg; break;
        case O_NAME: po.name = optarg; break;
        case O_TASK: po.task = optarg; break;
        case O_VERSION: po.version = optarg; break;
        case O_BASE: po.base = optarg; break;
        case O_README: po.readme = optarg; break;
        case O_RECEIPT: receipts[nrec++] = optarg; break;
        case O_COMPRESS: po.compress = 1; break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); free(receipts); return 0;
        default: free(receipts); return usage_err("create: unknown option, or its value is missing: '%s'", argv[optind - 1]);
        }
    }
    if (outp && strcmp(outp, "-") == 0) {
        free(receipts);
        return usage_err("%s", "create: -o -: the archive is signed into a temporary file and "
                               "renamed, not streamed; give a path");
    }
    if (optind + 1 != argc || !sec || !outp || !po.name || !po.task || !po.version) {
        free(receipts);
        return usage_err("%s", "create needs ADAPTER_DIR, -s KEY.sec, --name, --task, --version "
                               "and -o ARCHIVE");
    }
    if (!lora_semver_valid(po.version)) { /* the registry would refuse it later */
        free(receipts);
        return usage_err("create: --version %s is not a semantic version (MAJOR.MINOR.PATCH, "
                         "e.g. 1.2.0 or 1.2.0-rc.1)", po.version);
    }
    po.adapter_dir = argv[optind];
    po.receipts = nrec ? receipts : NULL;
    /* -o DIR/ or an existing folder: DIR/NAME-VERSION.lora; an archive
     * that could not be committed is refused before the signing */
    char archive_name[512], *out_owned = NULL;
    snprintf(archive_name, sizeof archive_name, "%s-%s.lora", po.name, po.version);
    int orc = strchr(po.name, '/') ? 0 : outpath_file(&outp, &out_owned, 0, archive_name, PROG);
    if (orc) {
        free(receipts);
        return orc;
    }
    lora_error err;
    lora_error_clear(&err);
    lora_seckey *sk = NULL;
    int rc = tool_load_seckey(sec, &sk, &err);
    if (!rc)
        rc = lora_archive_create(outp, &po, sk, &err);
    lora_seckey_free(sk);
    free(receipts);
    if (rc) {
        free(out_owned);
        return fail(&err);
    }
    if (!quiet)
        fprintf(stderr, PROG ": wrote %s\n", outp);
    free(out_owned);
    return 0;
}

/* ---- verify, list, extract ---- */

typedef struct keyset {
    lora_pubkey *keys;
    size_t n;
} keyset;

static int add_key(keyset *ks, const char *arg, int is_string, lora_error *err)
{
    lora_pubkey *k = realloc(ks->keys, (ks->n + 1) * sizeof *k);
    if (!k) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return err->code = LORA_EIO;
    }
    ks->keys = k;
    int rc = is_string ? lora_pubkey_from_string(arg, &k[ks->n], err)
                       : lora_pubkey_load(arg, &k[ks->n], err);
    if (!rc)
        ks->n++;
    return rc;
}

static json_t *manifest_json(const lora_archive *ar)
{
    const lora_manifest *m = ar->manifest;
    char hex[LORA_HASH_HEX], id[LORA_KEYID_STR];
    json_t *o = json_object();
    unsigned char fh[LORA_HASH_BYTES];
    lora_archive_file_hash(ar, fh);
    lora_hex(fh, LORA_HASH_BYTES, hex);
    json_object_set_new(o, "archive", json_string(ar->path));
    json_object_set_new(o, "blake2b-256", json_string(hex));
    json_object_set_new(o, "size", json_integer((json_int_t)ar->file_size));
    json_object_set_new(o, "compressed", json_boolean(ar->compressed));
    lora_keyid_str(ar->key_id, id);
    json_object_set_new(o, "key_id", json_string(id));
    json_object_set_new(o, "signature_checked", json_boolean(ar->signature_checked));
    json_object_set_new(o, "trusted_comment", json_string(ar->trusted_comment));
    json_object_set_new(o, "name", json_string(m->name));
    json_object_set_new(o, "task", json_string(m->task));
    json_object_set_new(o, "version", json_string(m->version));
    json_object_set_new(o, "base_model", m->base_model ? json_string(m->base_model) : json_null());
    lora_hex(m->base_hash, LORA_HASH_BYTES, hex);
    json_object_set_new(o, "base_hash", m->has_base_hash ? json_string(hex) : json_null());
    json_object_set_new(o, "r", json_integer((json_int_t)m->r));
    json_object_set_new(o, "alpha", json_real(m->alpha));
    json_t *t = json_array();
    for (size_t i = 0; i < m->n_targets; i++)
        json_array_append_new(t, json_string(m->targets[i]));
    json_object_set_new(o, "targets", t);
    json_t *mem = json_array();
    for (size_t i = 0; i < m->n_members; i++) {
        json_t *x = json_object();
        lora_hex(m->members[i].hash, LORA_HASH_BYTES, hex);
        json_object_set_new(x, "name", json_string(m->members[i].name));
        json_object_set_new(x, "size", json_integer((json_int_t)m->members[i].size));
        json_object_set_new(x, "blake2b-256", json_string(hex));
        int64_t off = lora_archive_member_offset(ar, m->members[i].name);
        json_object_set_new(x, "offset", off >= 0 ? json_integer(off) : json_null());
        json_array_append_new(mem, x);
    }
    json_object_set_new(o, "members", mem);
    return o;
}

static void print_json(json_t *o)
{
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

enum { CMD_VERIFY, CMD_LIST, CMD_EXTRACT };

/* verify's report: JSON, or one line unless -q. */
static int report_verify(const char *path, lora_archive *ar, int json, int rc, lora_error *err)
{
    if (json) {
        json_t *o = rc ? json_object() : manifest_json(ar);
        if (rc)
            json_object_set_new(o, "archive", json_string(path));
        json_object_set_new(o, "ok", json_boolean(rc == 0));
        json_object_set_new(o, "error", rc ? json_string(err->msg) : json_null());
        print_json(o);
    } else if (!quiet) {
        if (rc) {
            printf("%s: FAILED\n", path);
        } else {
            char id[LORA_KEYID_STR];
            lora_keyid_str(ar->key_id, id);
            printf("%s: OK: %s %s (task %s), signed by key %s\n", path, ar->manifest->name,
                   ar->manifest->version, ar->manifest->task, id);
        }
    }
    if (rc)
        fail(err);
    lora_archive_close(ar);
    return rc;
}

/* list's report: the manifest, the archive's hash and its members. */
static void print_list(const lora_archive *ar)
{
    const lora_manifest *m = ar->manifest;
    char hex[LORA_HASH_HEX], id[LORA_KEYID_STR];
    lora_keyid_str(ar->key_id, id);
    printf("name:       %s\nversion:    %s\ntask:       %s\n", m->name, m->version, m->task);
    printf("base model: %s\n", m->base_model ? m->base_model : "(not recorded)");
    if (m->has_base_hash) {
        lora_hex(m->base_hash, LORA_HASH_BYTES, hex);
        printf("base hash:  %s\n", hex);
    }
    printf("r:          %llu\nalpha:      %g\ntargets:   ", (unsigned long long)m->r, m->alpha);
    for (size_t i = 0; i < m->n_targets; i++)
        printf(" %s", m->targets[i]);
    printf("%s\nsigned by:  key %s (signature not checked; use verify)\n",
           m->n_targets ? "" : " (none)", id);
    unsigned char fh[LORA_HASH_BYTES];
    lora_archive_file_hash(ar, fh);
    lora_hex(fh, LORA_HASH_BYTES, hex);
    printf("archive:    %llu bytes, %s, blake2b-256 %s\nmembers:\n",
           (unsigned long long)ar->file_size, ar->compressed ? "zstd" : "uncompressed", hex);
    for (size_t i = 0; i < m->n_members; i++) {
        lora_hex(m->members[i].hash, LORA_HASH_BYTES, hex);
        printf("  %12llu  %s  %s\n", (unsigned long long)m->members[i].size, hex,
               m->members[i].name);
    }
}

static int cmd_read(int cmd, int argc, char **argv)
{
    enum { O_JSON = 256, O_FORCE };
    static const struct option opts[] = {{"public-key", required_argument, 0, 'p'},
                                         {"public-key-string", required_argument, 0, 'P'},
                                         {"json", no_argument, 0, O_JSON},
                                         {"directory", required_argument, 0, 'C'},
                                         {"force", no_argument, 0, O_FORCE},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    keyset ks = {NULL, 0};
    lora_error err;
    lora_error_clear(&err);
    int json = 0, force = 0, c, rc = 0;
    const char *dir = NULL;
    while ((c = getopt_long(argc, argv, "p:P:C:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
        case 'P':
            if (cmd == CMD_LIST) {
                free(ks.keys);
                return usage_err("%s", "list takes no key");
            }
            if ((rc = add_key(&ks, optarg, c == 'P', &err))) {
                free(ks.keys);
                return fail(&err);
            }
            break;
        case 'C': dir = optarg; break;
        case O_JSON: json = 1; break;
        case O_FORCE: force = 1; break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); free(ks.keys); return 0;
        default: free(ks.keys); return usage_err("unknown option, or its value is missing: '%s'", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc || (cmd != CMD_LIST && ks.n == 0) || (cmd == CMD_EXTRACT && !dir) ||
        (cmd != CMD_EXTRACT && (dir || force)) || (cmd == CMD_EXTRACT && json)) {
        free(ks.keys);
        return usage_err("%s",
                         cmd == CMD_VERIFY ? "verify: usage: verify ARCHIVE -p KEY.pub [-p ...] [--json]"
                         : cmd == CMD_LIST ? "list: usage: list ARCHIVE [--json]"
                                           : "extract: usage: extract ARCHIVE -C DIR -p KEY.pub [--force]");
    }
    const char *path = argv[optind];
    lora_archive *ar = NULL;
    rc = lora_archive_open(path, ks.keys, ks.n, cmd == CMD_LIST ? LORA_ARCHIVE_NO_VERIFY : 0, &ar,
                           &err);
    free(ks.keys);
    if (cmd == CMD_VERIFY)
        return report_verify(path, ar, json, rc, &err);
    if (rc)
        return fail(&err);
    if (cmd == CMD_LIST) {
        if (json)
            print_json(manifest_json(ar));
        else
            print_list(ar);
        lora_archive_close(ar);
        return 0;
    }
    rc = lora_archive_extract(ar, dir, force, &err);
    if (!rc && !quiet)
        fprintf(stderr, PROG ": verified and extracted %zu members into %s\n",
                ar->manifest->n_members, dir);
    lora_archive_close(ar);
    return rc ? fail(&err) : 0;
}

int main(int argc, char **argv)
{
    lora_tool_json_errors(argc, argv, PROG, 0);
    lora_tool_sigbus(PROG);
    lora_error err;
    if (lora_init(&err))
        return fail(&err);
    if (argc < 2)
        return usage_err("%s", "no command (keygen, create, verify, list, extract)");
    opterr = 0; /* our own messages, prefixed with the tool's name */
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf(PROG " (lora-tools) %s\n", lora_version());
        return 0;
    }
    int i = 1;
    while (i < argc && (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet"))) {
        quiet = 1;
        i++;
    }
    if (i >= argc)
        return usage_err("%s", "no command");
    cmd = argv[i];
    argc -= i;
    argv += i;
    if (!strcmp(cmd, "keygen"))
        return cmd_keygen(argc, argv);
    if (!strcmp(cmd, "create"))
        return cmd_create(argc, argv);
    if (!strcmp(cmd, "verify"))
        return cmd_read(CMD_VERIFY, argc, argv);
    if (!strcmp(cmd, "list"))
        return cmd_read(CMD_LIST, argc, argv);
    if (!strcmp(cmd, "extract"))
        return cmd_read(CMD_EXTRACT, argc, argv);
    return usage_err("unknown command '%s'", cmd);
}

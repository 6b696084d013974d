/*
 * registry.c - the adapter registry: which archive serves which task,
 * signed by whom, and how well it scored.  One SQLite database (WAL so
 * readers never wait, a busy timeout and a retry around BEGIN IMMEDIATE
 * so concurrent writers queue instead of failing, foreign keys, one
 * transaction per change) and a content-addressed folder of archives
 * beside it.  The schema comes from registry/NNNN-*.sql, compiled in as
 * src/lib/registry_sql.inc.
 */
#include "internal.h"
#include "registry_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "src/lib/registry_sql.inc"

/* How long a writer waits for the lock in all, and inside SQLite's own
 * busy handler per attempt.  Adds hold the lock only for a rename and
 * an insert, so even a long queue of writers drains well within this. */
#define BUSY_TIMEOUT_MS 5000
#define BUSY_TOTAL_MS 120000
/* Temporaries older than this are left by an interrupted add. */
#define STALE_TMP_SECONDS 3600
/* get_one found no row (not an error code: callers replace it). */
#define NOT_FOUND 1000

struct lora_registry {
    sqlite3 *db;
    char *path;
    char *blobdir;
    int schema;
};

/* A row is trusted when its signature was verified at add (the trusted
 * column) by a key that is trusted now: derived at query time from the
 * keys table, so that untrusting a key and trusting it again takes
 * effect without re-adding its archives. */
#define TRUSTED_SQL "(trusted = 1 AND EXISTS (SELECT 1 FROM keys k WHERE k.key_id = signer))"
#define ADAPTER_COLS                                                                       \
    "id, name, version, task, base_model, base_hash, r, alpha, hash, size, signer, "     \
    TRUSTED_SQL ", added"

/* ---- small helpers ---- */

static int sql_code(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT:
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
        return LORA_EINPUT;
    case SQLITE_NOMEM:
    default:
        return LORA_EIO;
    }
}

static int sqlerr(lora_registry *reg, int rc, lora_error *err, const char *what)
{
    /* A full disk or an I/O error: SQLite's own text ("database or disk
     * is full") does not say which; the system's errno does.  SQLITE_FULL
     * keeps no errno (the unix VFS clears it) and means ENOSPC here: the
     * registry sets no max_page_count. */
    int prim = rc & 0xff, e = reg->db ? sqlite3_system_errno(reg->db) : 0;
    if (prim == SQLITE_FULL)
        e = ENOSPC;
    if (e > 0 && (prim == SQLITE_FULL || prim == SQLITE_IOERR || prim == SQLITE_CANTOPEN))
        return lora_seterr_errno(err, sql_code(rc), e, "%s: %s: %s", reg->path, what,
                                 sqlite3_errmsg(reg->db));
    return lora_seterr(err, sql_code(rc), "%s: %s: %s", reg->path, what,
                       reg->db ? sqlite3_errmsg(reg->db) : sqlite3_errstr(rc));
}

static int prep(lora_registry *reg, const char *sql, sqlite3_stmt **st, lora_error *err)
{
    int rc = sqlite3_prepare_v2(reg->db, sql, -1, st, NULL);
    if (rc != SQLITE_OK)
        return sqlerr(reg, rc, err, "query");
    return LORA_OK;
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

static char *col_dup(sqlite3_stmt *st, int i, int *oom)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    if (!t)
        return NULL;
    char *p = strdup((const char *)t);
    if (!p)
        *oom = 1;
    return p;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* BEGIN IMMEDIATE takes the write lock at once, so a transaction never
 * has to upgrade a read lock (the case where SQLite returns SQLITE_BUSY
 * without waiting).  SQLite's busy handler waits BUSY_TIMEOUT_MS; past
 * that, or when it returns BUSY at once (WAL recovery by another
 * process), retry with a short random sleep until BUSY_TOTAL_MS. */
static int begin(lora_registry *reg, lora_error *err)
{
    int64_t start = now_ms();
    for (;;) {
        int rc = sqlite3_exec(reg->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            return LORA_OK;
        if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED)
            return sqlerr(reg, rc, err, "begin transaction");
        if (now_ms() - start > BUSY_TOTAL_MS)
            return sqlerr(reg, rc, err, "waiting for the write lock");
        sleep_ms(1 + randombytes_uniform(20));
    }
}

static int commit(lora_registry *reg, lora_error *err)
{
    int64_t start = now_ms();
    for (;;) {
        int rc = sqlite3_exec(reg->db, "COMMIT", NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            return LORA_OK;
        if ((rc & 0xff) != SQLITE_BUSY || now_ms() - start > BUSY_TOTAL_MS) {
            int code = sqlerr(reg, rc, err, "commit");
            sqlite3_exec(reg->db, "ROLLBACK", NULL, NULL, NULL);
            return code;
        }
        sleep_ms(1 + randombytes_uniform(20));
    }
}

static void rollback(lora_registry *reg)
{
    if (!sqlite3_get_autocommit(reg->db))
        sqlite3_exec(reg->db, "ROLLBACK", NULL, NULL, NULL);
}

static int exec(lora_registry *reg, const char *sql, lora_error *err)
{
    char *msg = NULL;
    int rc = sqlite3_exec(reg->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        int code = lora_seterr(err, sql_code(rc), "%s: %s", reg->path,
                               msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return code;
    }
    return LORA_OK;
}

static int user_version(lora_registry *reg, int *v, lora_error *err)
{
    sqlite3_stmt *st;
    int rc = prep(reg, "PRAGMA user_version", &st, err);
    if (rc)
        return rc;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        int code = sqlerr(reg, rc, err, "reading the schema version");
        sqlite3_finalize(st);
        return code;
    }
    *v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return LORA_OK;
}

static int mkdir_p(char *path, lora_error *err)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int r = mkdir(path, 0755);
        int e = errno;
        *p = '/';
        if (r != 0 && e != EEXIST)
            return lora_seterr_errno(err, LORA_EIO, e, "cannot create folder %.*s",
                                     (int)(p - path), path);
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return lora_seterr_errno(err, LORA_EIO, errno, "cannot create folder %s", path);
    return LORA_OK;
}

static int hex_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static char *blob_path(const lora_registry *reg, const char *hex, lora_error *err)
{
    size_t n = strlen(reg->blobdir) + 1 + 64 + sizeof ".lora";
    char *p = malloc(n);
    if (!p) {
        lora_oom(err);
        return NULL;
    }
    snprintf(p, n, "%s/%s.lora", reg->blobdir, hex);
    return p;
}

/* BLAKE2b-256 of a file from its current offset (hash.c). */
static int hash_fd(int fd, const char *path, char hex[LORA_REG_HASH_HEX], uint64_t *size,
                   lora_error *err)
{
    unsigned char d[LORA_HASH_BYTES];
    int rc = lora_hash_fd(fd, LORA_HASH_BYTES, d, size, err);
    if (rc)
        return err ? lora_err_prefix(err, "%s", path) : rc;
    lora_hex(d, sizeof d, hex);
    return LORA_OK;
}

/* ---- opening, schema ---- */

int lora_registry_schema_latest(void)
{
    return REGISTRY_SCHEMA_VERSION;
}

int lora_registry_schema_version(const lora_registry *reg)
{
    return reg->schema;
}

const char *lora_registry_path(const lora_registry *reg)
{
    return reg->path;
}

const char *lora_registry_blob_dir(const lora_registry *reg)
{
    return reg->blobdir;
}

int lora_registry_default_path(char **path, lora_error *err)
{
    *path = NULL;
    const char *env = getenv("LORA_REGISTRY");
    const char *xdg = getenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    char *p;
    if (env && *env) {
        p = strdup(env);
    } else if (xdg && xdg[0] == '/') {
        if (asprintf(&p, "%s/lora/registry.db", xdg) < 0)
            p = NULL;
    } else if (home && *home) {
        if (asprintf(&p, "%s/.local/share/lora/registry.db", home) < 0)
            p = NULL;
    } else {
        return lora_seterr(err, LORA_EUSAGE,
                           "no registry location: set LORA_REGISTRY, XDG_DATA_HOME or HOME");
    }
    if (!p)
        return lora_oom(err);
    *path = p;
    return LORA_OK;
}

/* Apply the migrations the database lacks, each in its own
 * transaction, re-reading the version under the write lock so that two
 * processes opening a fresh registry at once do not both apply one. */
static int migrate(lora_registry *reg, lora_error *err)
{
    for (;;) {
        int v;
        int rc = user_version(reg, &v, err);
        if (rc)
            return rc;
        if (v >= REGISTRY_SCHEMA_VERSION) {
            reg->schema = v;
            return LORA_OK;
        }
        if ((rc = begin(reg, err)))
            return rc;
        if ((rc = user_version(reg, &v, err))) {
            rollback(reg);
            return rc;
        }
        if (v >= REGISTRY_SCHEMA_VERSION) {
            rollback(reg);
            continue;
        }
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
        if ((rc = exec(reg, registry_migrations[v], err)) || (rc = exec(reg, pragma, err))) {
            rollback(reg);
            return err ? lora_err_prefix(err, "applying schema migration %d", v + 1) : rc;
        }
        if ((rc = commit(reg, err)))
            return rc;
    }
}

static int check_schema(lora_registry *reg, lora_error *err)
{
    int v;
    int rc = user_version(reg, &v, err);
    if (rc)
        return rc;
    if (v > REGISTRY_SCHEMA_VERSION)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: made by a newer lora-tools (registry schema version %d; this "
                           "lora-registry %s knows versions up to %d): upgrade lora-tools "
                           "to use it",
                           reg->path, v, lora_version(), REGISTRY_SCHEMA_VERSION);
    if (v == 0) {
        /* A database that has tables but no version is someone else's. */
        sqlite3_stmt *st;
        if ((rc = prep(reg, "SELECT count(*) FROM sqlite_master", &st, err)))
            return rc;
        rc = sqlite3_step(st);
        int n = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
        sqlite3_finalize(st);
        if (n < 0)
            return sqlerr(reg, rc, err, "reading the schema");
        if (n > 0)
            return lora_seterr(err, LORA_EINPUT,
                               "%s: not a lora registry (an SQLite database with other tables)",
                               reg->path);
    }
    return LORA_OK;
}

static int set_wal(lora_registry *reg, lora_error *err)
{
    int64_t start = now_ms();
    for (;;) {
        sqlite3_stmt *st;
        int rc = prep(reg, "PRAGMA journal_mode = WAL", &st, err);
        if (rc)
            return rc;
        rc = sqlite3_step(st);
        int ok = rc == SQLITE_ROW &&
                 sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
        sqlite3_finalize(st);
        if (ok)
            return LORA_OK;
        if ((rc & 0xff) != SQLITE_BUSY || now_ms() - start > BUSY_TOTAL_MS)
            return rc == SQLITE_ROW ? lora_seterr(err, LORA_EIO, "%s: cannot use WAL mode",
                                                  reg->path)
                                    : sqlerr(reg, rc, err, "setting WAL mode");
        sleep_ms(1 + randombytes_uniform(20));
    }
}

/* "file:PATH?mode=ro&immutable=1", PATH percent-encoded where a URI
 * needs it. */
static char *immutable_uri(const char *path)
{
    size_t n = strlen(path);
    char *u = malloc(3 * n + 64);
    if (!u)
        return NULL;
    char *p = u + sprintf(u, "file:");
    for (const unsigned char *s = (const unsigned char *)path; *s; s++) {
        if (*s == '%' || *s == '?' || *s == '#' || *s <= ' ' || *s >= 0x7f)
            p += sprintf(p, "%%%02X", *s);
        else
            *p++ = (char)*s;
    }
    strcpy(p, "?mode=ro&immutable=1");
    return u;
}

/* The first read of a read-only connection: the schema version, which
 * also tells whether the database can be read at all. */
static int readonly_probe(lora_registry *reg, lora_error *err)
{
    int rc = check_schema(reg, err);
    if (rc)
        return rc;
    int v;
    if ((rc = user_version(reg, &v, err)))
        return rc;
    if (v == 0)
        return lora_seterr(err, LORA_EINPUT,
                           "%s: an empty registry (lora-registry init, by a user who can write "
                           "it, creates the tables)",
                           reg->path);
    reg->schema = v;
    return LORA_OK;
}

/* Read-only open.  A WAL database needs its -shm file, which a reader
 * creates if missing; in a folder the user cannot write (or on a full
 * disk) that fails.  When no -wal file holds pending transactions, the
 * database file alone is the whole registry, and SQLite may read it as
 * immutable (no -shm, no locks); with a pending -wal it may not, and
 * the message says so. */
static int open_readonly(lora_registry *reg, lora_error *err)
{
    int rc, src;
    /* A user who may write the registry reads through a read-write
     * connection that cannot write (query_only): a read-only connection
     * never removes the -wal and -shm files it makes, a read-write one
     * does when it closes.  If that fails (a full disk cannot take the
     * -shm file), read-only as below. */
    char *dir = strdup(reg->blobdir);
    if (!dir)
        return lora_oom(err);
    dir[strlen(dir) - strlen("/blobs")] = '\0';
    int writable = access(reg->path, W_OK) == 0 && access(dir, W_OK) == 0;
    free(dir);
    if (writable &&
        sqlite3_open_v2(reg->path, &reg->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) ==
            SQLITE_OK) {
        sqlite3_extended_result_codes(reg->db, 1);
        sqlite3_busy_timeout(reg->db, BUSY_TIMEOUT_MS);
        lora_error ignored;
        if (exec(reg, "PRAGMA query_only = 1", &ignored) == LORA_OK &&
            readonly_probe(reg, &ignored) == LORA_OK)
            return LORA_OK;
    }
    sqlite3_close_v2(reg->db);
    reg->db = NULL;
    src = sqlite3_open_v2(reg->path, &reg->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (src == SQLITE_OK) {
        sqlite3_extended_result_codes(reg->db, 1);
        sqlite3_busy_timeout(reg->db, BUSY_TIMEOUT_MS);
        lora_error first;
        lora_error_clear(&first);
        if ((rc = readonly_probe(reg, &first)) == LORA_OK)
            return exec(reg, "PRAGMA query_only = 1", err);
        if (rc == LORA_EINPUT && !strstr(first.msg, "file is not a database")) {
            if (err)
                *err = first;
            return rc;
        }
        char *wal;
        struct stat sb;
        if (asprintf(&wal, "%s-wal", reg->path) < 0)
            return lora_oom(err);
        int pending = stat(wal, &sb) == 0 && sb.st_size > 0;
        free(wal);
        if (pending || strstr(first.msg, "file is not a database")) {
            if (err) {
                *err = first;
                if (pending)
                    lora_err_prefix(err, "reading (a write is pending in its -wal file, and "
                                         "this user cannot open its -shm file)");
            }
            return rc;
        }
    } else {
        rc = sqlerr(reg, src, err, "cannot open");
    }
    sqlite3_close_v2(reg->db);
    reg->db = NULL;
    char *uri = immutable_uri(reg->path);
    if (!uri)
        return lora_oom(err);
    src = sqlite3_open_v2(uri, &reg->db,
                          SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI, NULL);
    free(uri);
    if (src != SQLITE_OK)
        return sqlerr(reg, src, err, "cannot open");
    sqlite3_extended_result_codes(reg->db, 1);
    if ((rc = readonly_probe(reg, err)))
        return rc;
    return exec(reg, "PRAGMA query_only = 1", err);
}

int lora_registry_open(const char *path, int flags, lora_registry **out, lora_error *err)
{
    *out = NULL;
    int rc = lora_init(err);
    if (rc)
        return rc;
    lora_registry *reg = calloc(1, sizeof *reg);
    if (!reg)
        return lora_oom(err);
    if (path && *path) {
        if (!(reg->path = lora_strdup(path, err))) {
            free(reg);
            return LORA_EIO;
        }
    } else if ((rc = lora_registry_default_path(&reg->path, err))) {
        free(reg);
        return rc;
    }
    char *slash = strrchr(reg->path, '/');
    size_t dlen = slash ? (size_t)(slash - reg->path) : 1;
    const char *dir = slash ? reg->path : ".";
    if (slash == reg->path)
        dlen = 1; /* "/registry.db" */
    if (asprintf(&reg->blobdir, "%.*s/blobs", (int)dlen, dir) < 0) {
        reg->blobdir = NULL;
        lora_registry_close(reg);
        return lora_oom(err);
    }

    struct stat sb;
    if (stat(reg->path, &sb) != 0) {
        if (errno != ENOENT || !(flags & LORA_REG_CREATE)) {
            rc = errno == ENOENT
                     ? lora_seterr(err, LORA_EINPUT,
                                   "no registry at %s (lora-registry init creates one)",
                                   reg->path)
                     : lora_seterr_errno(err, LORA_EIO, errno, "%s", reg->path);
            lora_registry_close(reg);
            return rc;
        }
        char *d = strndup(reg->path, dlen);
        if (!d) {
            lora_registry_close(reg);
            return lora_oom(err);
        }
        rc = slash ? mkdir_p(d, err) : LORA_OK;
        free(d);
        if (rc) {
            lora_registry_close(reg);
            return rc;
        }
    } else if (!S_ISREG(sb.st_mode)) {
        lora_seterr(err, LORA_EINPUT, "%s: not a regular file", reg->path);
        lora_registry_close(reg);
        return LORA_EINPUT;
    }
    if ((flags & LORA_REG_CREATE) && mkdir(reg->blobdir, 0755) != 0 && errno != EEXIST) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "cannot create folder %s", reg->blobdir);
        lora_registry_close(reg);
        return rc;
    }

    if (flags & LORA_REG_READONLY) {
        if ((rc = open_readonly(reg, err))) {
            if (err && strstr(err->msg, "file is not a database"))
                lora_seterr(err, LORA_EINPUT,
                            "%s: not a registry: file is not an SQLite database", reg->path);
            lora_registry_close(reg);
            return rc;
        }
        *out = reg;
        return LORA_OK;
    }
    int oflags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX |
                 ((flags & LORA_REG_CREATE) ? SQLITE_OPEN_CREATE : 0);
    int src = sqlite3_open_v2(reg->path, &reg->db, oflags, NULL);
    if (src != SQLITE_OK) {
        rc = sqlerr(reg, src, err, "cannot open");
        lora_registry_close(reg);
        return rc;
    }
    sqlite3_extended_result_codes(reg->db, 1);
    sqlite3_busy_timeout(reg->db, BUSY_TIMEOUT_MS);
    if ((rc = check_schema(reg, err)) || (rc = exec(reg, "PRAGMA foreign_keys = ON", err)) ||
        (rc = exec(reg, "PRAGMA synchronous = FULL", err)) || (rc = set_wal(reg, err)) ||
        (rc = migrate(reg, err))) {
        if (err && strstr(err->msg, "file is not a database"))
            lora_seterr(err, LORA_EINPUT, "%s: not a registry: file is not an SQLite database",
                        reg->path);
        lora_registry_close(reg);
        return rc;
    }
    *out = reg;
    return LORA_OK;
}

void lora_registry_close(lora_registry *reg)
{
    if (!reg)
        return;
    if (reg->db)
        sqlite3_close_v2(reg->db);
    free(reg->path);
    free(reg->blobdir);
    free(reg);
}

/* ---- keys ---- */

int lora_registry_trust(lora_registry *reg, const char *key_id, const char *pubkey_b64,
                        const char *name, int *added, lora_error *err)
{
    if (added)
        *added = 0;
    if (!key_id || !*key_id || !pubkey_b64 || strlen(pubkey_b64) != 56)
        return lora_seterr(err, LORA_EUSAGE, "trust: a key id and a 56-character key are needed");
    int rc = begin(reg, err);
    if (rc)
        return rc;
    sqlite3_stmt *st = NULL;
    if ((rc = prep(reg, "SELECT pubkey FROM keys WHERE key_id = ?1", &st, err)))
        goto fail;
    bind_text(st, 1, key_id);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        int same = strcmp((const char *)sqlite3_column_text(st, 0), pubkey_b64) == 0;
        sqlite3_finalize(st);
        st = NULL;
        if (!same) {
            rc = lora_seterr(err, LORA_EINPUT,
                             "key %s: a different key with this id is already trusted", key_id);
            goto fail;
        }
        if (name) {
            if ((rc = prep(reg, "UPDATE keys SET name = ?2 WHERE key_id = ?1", &st, err)))
                goto fail;
            bind_text(st, 1, key_id);
            bind_text(st, 2, name);
            if ((s = sqlite3_step(st)) != SQLITE_DONE) {
                rc = sqlerr(reg, s, err, "trust");
                goto fail;
            }
        }
    } else if (s == SQLITE_DONE) {
        sqlite3_finalize(st);
        st = NULL;
        if ((rc = prep(reg, "INSERT INTO keys (key_id, pubkey, name, added) VALUES (?1, ?2, ?3, ?4)",
                       &st, err)))
            goto fail;
        bind_text(st, 1, key_id);
        bind_text(st, 2, pubkey_b64);
        bind_text(st, 3, name);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)time(NULL));
        if ((s = sqlite3_step(st)) != SQLITE_DONE) {
            rc = s == SQLITE_CONSTRAINT_UNIQUE
                     ? lora_seterr(err, LORA_EINPUT, "this key is already trusted under another id")
                     : sqlerr(reg, s, err, "trust");
            goto fail;
        }
        if (added)
            *added = 1;
    } else {
        rc = sqlerr(reg, s, err, "trust");
        goto fail;
    }
    sqlite3_finalize(st);
    return commit(reg, err);
fail:
    sqlite3_finalize(st);
    rollback(reg);
    return rc;
}

int lora_registry_untrust(lora_registry *reg, const char *key_id, size_t *demoted,
                          lora_error *err)
{
    if (demoted)
        *demoted = 0;
    int rc = begin(reg, err);
    if (rc)
        return rc;
    sqlite3_stmt *st = NULL;
    if ((rc = prep(reg, "DELETE FROM keys WHERE key_id = ?1", &st, err)))
        goto fail;
    bind_text(st, 1, key_id);
    int s = sqlite3_step(st);
    if (s != SQLITE_DONE) {
        rc = sqlerr(reg, s, err, "untrust");
        goto fail;
    }
    if (sqlite3_changes(reg->db) == 0) {
        rc = lora_seterr(err, LORA_EINPUT, "key %s is not trusted", key_id);
        goto fail;
    }
    sqlite3_finalize(st);
    /* The rows keep their verified-at-add mark: trust is derived from
     * the keys table (TRUSTED_SQL), so trusting the key again restores
     * them.  Count the rows this key was vouching for. */
    if ((rc = prep(reg, "SELECT count(*) FROM adapters WHERE signer = ?1 AND trusted = 1", &st,
                   err)))
        goto fail;
    bind_text(st, 1, key_id);
    if ((s = sqlite3_step(st)) != SQLITE_ROW) {
        rc = sqlerr(reg, s, err, "untrust");
        goto fail;
    }
    if (demoted)
        *demoted = (size_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return commit(reg, err);
fail:
    sqlite3_finalize(st);
    rollback(reg);
    return rc;
}

void lora_reg_keys_free(lora_reg_key *keys, size_t n)
{
    if (!keys)
        return;
    for (size_t i = 0; i < n; i++) {
        free(keys[i].key_id);
        free(keys[i].pubkey);
        free(keys[i].name);
    }
    free(keys);
}

int lora_registry_keys(lora_registry *reg, lora_reg_key **keys, size_t *n, lora_error *err)
{
    *keys = NULL;
    *n = 0;
    sqlite3_stmt *st;
    int rc = prep(reg, "SELECT key_id, pubkey, name, added FROM keys ORDER BY key_id", &st, err);
    if (rc)
        return rc;
    lora_reg_key *v = NULL;
    size_t cnt = 0, cap = 0;
    int s, oom = 0;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            size_t nc = cap ? 2 * cap : 8;
            lora_reg_key *nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                oom = 1;
                break;
            }
            v = nv;
            cap = nc;
        }
        lora_reg_key *k = &v[cnt++];
        k->key_id = col_dup(st, 0, &oom);
        k->pubkey = col_dup(st, 1, &oom);
        k->name = col_dup(st, 2, &oom);
        k->added = sqlite3_column_int64(st, 3);
        if (oom)
            break;
    }
    sqlite3_finalize(st);
    if (oom) {
        lora_reg_keys_free(v, cnt);
        return lora_oom(err);
    }
    if (s != SQLITE_DONE) {
        lora_reg_keys_free(v, cnt);
        return sqlerr(reg, s, err, "keys");
    }
    *keys = v;
    *n = cnt;
    return LORA_OK;
}

/* ---- adapter rows ---- */

static void adapter_clear(lora_reg_adapter *a)
{
    free(a->name);
    free(a->version);
    free(a->task);
    free(a->base_model);
    free(a->base_hash);
    free(a->signer);
    free(a->path);
    memset(a, 0, sizeof *a);
}

void lora_reg_adapter_free(lora_reg_adapter *a)
{
    if (!a)
        return;
    adapter_clear(a);
    free(a);
}

void lora_reg_adapters_free(lora_reg_adapter *a, size_t n)
{
    if (!a)
        return;
    for (size_t i = 0; i < n; i++)
        adapter_clear(&a[i]);
    free(a);
}

/* A row selected with ADAPTER_COLS into *a. */
static int row_to_adapter(lora_registry *reg, sqlite3_stmt *st, lora_reg_adapter *a,
                          lora_error *err)
{
    int oom = 0;
    memset(a, 0, sizeof *a);
    a->id = sqlite3_column_int64(st, 0);
    a->name = col_dup(st, 1, &oom);
    a->version = col_dup(st, 2, &oom);
    a->task = col_dup(st, 3, &oom);
    a->base_model = col_dup(st, 4, &oom);
    a->base_hash = col_dup(st, 5, &oom);
    a->r = (uint64_t)sqlite3_column_int64(st, 6);
    a->alpha = sqlite3_column_double(st, 7);
    const char *h = (const char *)sqlite3_column_text(st, 8);
    snprintf(a->hash, sizeof a->hash, "%s", h ? h : "");
    a->size = (uint64_t)sqlite3_column_int64(st, 9);
    a->signer = col_dup(st, 10, &oom);
    a->trusted = sqlite3_column_int(st, 11);
    a->added = sqlite3_column_int64(st, 12);
    if (oom || !(a->path = blob_path(reg, a->hash, err))) {
        adapter_clear(a);
        return lora_oom(err);
    }
    return LORA_OK;
}

/* Run a prepared ADAPTER_COLS query, collecting every row. */
static int collect(lora_registry *reg, sqlite3_stmt *st, lora_reg_adapter **list, size_t *n,
                   lora_error *err)
{
    lora_reg_adapter *v = NULL;
    size_t cnt = 0, cap = 0;
    int s, rc = LORA_OK;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            size_t nc = cap ? 2 * cap : 16;
            lora_reg_adapter *nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                rc = lora_oom(err);
                break;
            }
            v = nv;
            cap = nc;
        }
        if ((rc = row_to_adapter(reg, st, &v[cnt], err)))
            break;
        cnt++;
    }
    if (!rc && s != SQLITE_DONE)
        rc = sqlerr(reg, s, err, "query");
    sqlite3_finalize(st);
    if (rc) {
        lora_reg_adapters_free(v, cnt);
        return rc;
    }
    *list = v;
    *n = cnt;
    return LORA_OK;
}

static int by_name_version(const void *pa, const void *pb)
{
    const lora_reg_adapter *a = pa, *b = pb;
    int c = strcmp(a->name, b->name);
    return c ? c : lora_semver_cmp(a->version, b->version);
}

/* The better of two candidates for one task: higher version, then
 * added later, then the name first in order (deterministic). */
static int better(const lora_reg_adapter *a, const lora_reg_adapter *b)
{
    int c = lora_semver_cmp(a->version, b->version);
    if (c)
        return c > 0;
    if (a->added != b->added)
        return a->added > b->added;
    return strcmp(a->name, b->name) < 0;
}

int lora_registry_ls(lora_registry *reg, const char *task, const char *base,
                     lora_reg_adapter **list, size_t *n, lora_error *err)
{
    *list = NULL;
    *n = 0;
    const char *sql =
        task && base
            ? "SELECT " ADAPTER_COLS " FROM adapters WHERE task = ?1 AND base_model = ?2 "
              "ORDER BY name, v_major, v_minor, v_patch"
        : task ? "SELECT " ADAPTER_COLS " FROM adapters WHERE task = ?1 "
                 "ORDER BY name, v_major, v_minor, v_patch"
        : base ? "SELECT " ADAPTER_COLS " FROM adapters WHERE base_model = ?2 "
                 "ORDER BY name, v_major, v_minor, v_patch"
               : "SELECT " ADAPTER_COLS " FROM adapters ORDER BY name, v_major, v_minor, v_patch";
    sqlite3_stmt *st;
    int rc = prep(reg, sql, &st, err);
    if (rc)
        return rc;
    if (task)
        bind_text(st, 1, task);
    if (base)
        bind_text(st, 2, base);
    if ((rc = collect(reg, st, list, n, err)))
        return rc;
    /* SQL ordered by the integer parts; pre-releases need the full rule. */
    if (*n > 1) /* qsort(NULL, 0, ...) is undefined */
        qsort(*list, *n, sizeof **list, by_name_version);
    return LORA_OK;
}

int lora_reg_check_blob(const lora_reg_adapter *a, lora_error *err)
{
    int fd = open(a->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT
                   ? lora_seterr(err, LORA_ECHECK, "%s@%s: blob %s is missing", a->name,
                                 a->version, a->path)
                   : lora_seterr_errno(err, LORA_EIO, errno, "%s", a->path);
    char hex[LORA_REG_HASH_HEX];
    uint64_t size = 0;
    int rc = hash_fd(fd, a->path, hex, &size, err);
    close(fd);
    if (rc)
        return rc;
    if (size != a->size || strcmp(hex, a->hash) != 0) {
        char what[600];
        lora_reg_describe_blob(a->path, a, what, sizeof what);
        return lora_reg_blob_mismatch(a, what, size, hex, err);
    }
    return LORA_OK;
}

int lora_reg_blob_mismatch(const lora_reg_adapter *a, const char *what, uint64_t size,
                           const char *hex, lora_error *err)
{
    return lora_seterr(err, LORA_ECHECK,
                       "%s@%s: blob %s %s (%llu bytes, BLAKE2b-256 %.16s..., "
                       "expected %llu bytes, %.16s...); refusing it",
                       a->name, a->version, a->path, what, (unsigned long long)size, hex,
                       (unsigned long long)a->size, a->hash);
}

static int get_one(lora_registry *reg, sqlite3_stmt *st, lora_reg_adapter **out,
                   lora_error *err)
{
    lora_reg_adapter *v;
    size_t n;
    int rc = collect(reg, st, &v, &n, err);
    if (rc)
        return rc;
    if (n == 0) {
        free(v);
        return NOT_FOUND; /* the caller words the message */
    }
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (better(&v[i], &v[best]))
            best = i;
    lora_reg_adapter *one = malloc(sizeof *one);
    if (!one) {
        lora_reg_adapters_free(v, n);
        return lora_oom(err);
    }
    *one = v[best];
    memset(&v[best], 0, sizeof v[best]);
    lora_reg_adapters_free(v, n);
    *out = one;
    return LORA_OK;
}

int lora_registry_get(lora_registry *reg, const char *spec, int check_blob_flag,
                      lora_reg_adapter **out, lora_error *err)
{
    *out = NULL;
    if (!spec || !*spec)
        return lora_seterr(err, LORA_EUSAGE, "empty adapter name");
    if (strncmp(spec, "reg:", 4) == 0)
        spec += 4;
    size_t len = strlen(spec);
    sqlite3_stmt *st;
    int rc;
    if (len >= 8 && len <= 64 && hex_ok(spec, len)) {
        /* A hash prefix: [spec, spec + 'g') covers every completion. */
        if ((rc = prep(reg, "SELECT " ADAPTER_COLS " FROM adapters WHERE hash >= ?1 AND "
                            "hash < ?1 || 'g' LIMIT 2",
                       &st, err)))
            return rc;
        bind_text(st, 1, spec);
        lora_reg_adapter *v;
        size_t n;
        if ((rc = collect(reg, st, &v, &n, err)))
            return rc;
        if (n > 1) {
            lora_reg_adapters_free(v, n);
            return lora_seterr(err, LORA_EUSAGE, "%s: ambiguous hash prefix", spec);
        }
        if (n == 1) {
            lora_reg_adapter *one = malloc(sizeof *one);
            if (!one) {
                lora_reg_adapters_free(v, n);
                return lora_oom(err);
            }
            *one = v[0];
            free(v);
            *out = one;
            goto found;
        }
        free(v);
        /* fall through: maybe a name that looks like hex */
    }
    const char *at = strrchr(spec, '@');
    if (at) {
        if ((rc = prep(reg, "SELECT " ADAPTER_COLS
                            " FROM adapters WHERE name = ?1 AND version = ?2",
                       &st, err)))
            return rc;
        sqlite3_bind_text(st, 1, spec, (int)(at - spec), SQLITE_TRANSIENT);
        bind_text(st, 2, at + 1);
    } else {
        /* Every row of the top (major, minor, patch, release) tuple; the
         * pre-release order among them is settled in C. */
        if ((rc = prep(reg, "SELECT " ADAPTER_COLS " FROM adapters a WHERE name = ?1 AND "
                            "(v_major, v_minor, v_patch, v_release) = (SELECT v_major, v_minor, "
                            "v_patch, v_release FROM adapters WHERE name = ?1 ORDER BY v_major "
                            "DESC, v_minor DESC, v_patch DESC, v_release DESC LIMIT 1)",
                       &st, err)))
            return rc;
        bind_text(st, 1, spec);
    }
    rc = get_one(reg, st, out, err);
    if (rc == NOT_FOUND)
        return lora_seterr(err, LORA_EINPUT, "no adapter %s in the registry %s", spec,
                           reg->path);
    if (rc)
        return rc;
found:
    if (check_blob_flag && (rc = lora_reg_check_blob(*out, err))) {
        lora_reg_adapter_free(*out);
        *out = NULL;
        return rc;
    }
    return LORA_OK;
}

int lora_registry_resolve(lora_registry *reg, const char *task, const char *base,
                          const char *version, lora_reg_adapter **out, lora_error *err)
{
    *out = NULL;
    if (!task || !*task)
        return lora_seterr(err, LORA_EUSAGE, "resolve: no task given");
    sqlite3_stmt *st;
    int rc;
    /* ?2 is NULL when no base is asked for; the two spellings let the
     * planner pick the index with or without base_model. */
    const char *where = base ? "task = ?1 AND base_model = ?2 AND " TRUSTED_SQL
                             : "task = ?1 AND " TRUSTED_SQL;
    char sql[2048];
    if (version)
        snprintf(sql, sizeof sql, "SELECT " ADAPTER_COLS " FROM adapters WHERE %s AND version = ?3",
                 where);
    else
        snprintf(sql, sizeof sql,
                 "SELECT " ADAPTER_COLS " FROM adapters WHERE %s AND (v_major, v_minor, v_patch, "
                 "v_release) = (SELECT v_major, v_minor, v_patch, v_release FROM adapters WHERE "
                 "%s ORDER BY v_major DESC, v_minor DESC, v_patch DESC, v_release DESC LIMIT 1)",
                 where, where);
    if ((rc = prep(reg, sql, &st, err)))
        return rc;
    bind_text(st, 1, task);
    if (base)
        bind_text(st, 2, base);
    if (version)
        bind_text(st, 3, version);
    rc = get_one(reg, st, out, err);
    if (rc == NOT_FOUND) {
        /* Say why: nothing at all, or only untrusted rows. */
        long untrusted = 0;
        if (prep(reg, "SELECT count(*) FROM adapters WHERE task = ?1 AND NOT " TRUSTED_SQL, &st,
                 NULL) == LORA_OK) {
            bind_text(st, 1, task);
            if (sqlite3_step(st) == SQLITE_ROW)
                untrusted = (long)sqlite3_column_int64(st, 0);
            sqlite3_finalize(st);
        }
        return lora_seterr(err, LORA_EINPUT, "no trusted adapter for task %s%s%s%s%s%s", task,
                           base ? " on base " : "", base ? base : "",
                           version ? " at version " : "", version ? version : "",
                           untrusted ? " (only untrusted ones: see lora-registry ls)" : "");
    }
    if (rc)
        return rc;
    if ((rc = lora_reg_check_blob(*out, err))) {
        lora_reg_adapter_free(*out);
        *out = NULL;
        return rc;
    }
    return LORA_OK;
}

static int best_first(const void *pa, const void *pb)
{
    const lora_reg_adapter *a = pa, *b = pb;
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

int lora_reg_task_candidates(lora_registry *reg, const char *task, lora_reg_adapter **list,
                             size_t *n, lora_error *err)
{
    *list = NULL;
    *n = 0;
    sqlite3_stmt *st;
    int rc = prep(reg, "SELECT " ADAPTER_COLS " FROM adapters WHERE task = ?1 AND " TRUSTED_SQL,
                  &st, err);
    if (rc)
        return rc;
    bind_text(st, 1, task);
    if ((rc = collect(reg, st, list, n, err)))
        return rc;
    if (*n > 1)
        qsort(*list, *n, sizeof **list, best_first);
    return LORA_OK;
}

int lora_registry_rm(lora_registry *reg, const char *name, const char *version,
                     lora_error *err)
{
    int rc = begin(reg, err);
    if (rc)
        return rc;
    sqlite3_stmt *st;
    if ((rc = prep(reg, "DELETE FROM adapters WHERE name = ?1 AND version = ?2", &st, err))) {
        rollback(reg);
        return rc;
    }
    bind_text(st, 1, name);
    bind_text(st, 2, version);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    if (s != SQLITE_DONE) {
        rc = sqlerr(reg, s, err, "rm");
        rollback(reg);
        return rc;
    }
    if (sqlite3_changes(reg->db) == 0) {
        rollback(reg);
        return lora_seterr(err, LORA_EINPUT, "no adapter %s@%s in the registry %s", name,
                           version, reg->path);
    }
    return commit(reg, err);
}

/* ---- adding ---- */

int lora_reg_stage(lora_registry *reg, const char *src, int *fd, char **tmpname,
                   char hex[LORA_REG_HASH_HEX], uint64_t *size, lora_error *err)
{
    *fd = -1;
    *tmpname = NULL;
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return lora_seterr_errno(err, errno == ENOENT ? LORA_EINPUT : LORA_EIO, errno, "%s", src);
    struct stat sb;
    if (fstat(in, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(in);
        return lora_seterr(err, LORA_EINPUT, "%s: not a regular file", src);
    }
    char *incoming;
    if (asprintf(&incoming, "%s/incoming", reg->blobdir) < 0) {
        close(in);
        return lora_oom(err);
    }
    int out;
    char *tmp;
    int rc = lora_tmpfile_beside(incoming, 0444, &out, &tmp, err);
    free(incoming);
    if (rc) {
        close(in);
        return rc;
    }
    lora_hasher *hs = NULL;
    size_t cap = 1 << 20;
    unsigned char *buf = malloc(cap);
    uint64_t total = 0;
    if (!buf) {
        rc = lora_oom(err);
        goto fail;
    }
    if ((rc = lora_hasher_new(LORA_HASH_BYTES, &hs, err)))
        goto fail;
    for (;;) {
        ssize_t r = read(in, buf, cap);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: read", src);
            goto fail;
        }
        if (r == 0)
            break;
        lora_hasher_update(hs, buf, (size_t)r);
        for (ssize_t done = 0; done < r;) {
            ssize_t w = write(out, buf + done, (size_t)(r - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: write", tmp);
                goto fail;
            }
            done += w;
        }
        total += (uint64_t)r;
    }
    if (fsync(out) != 0) {
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: fsync", tmp);
        goto fail;
    }
    free(buf);
    close(in);
    unsigned char d[LORA_HASH_BYTES];
    lora_hasher_final(hs, d);
    lora_hex(d, sizeof d, hex);
    *size = total;
    *fd = out;
    *tmpname = tmp;
    return LORA_OK;
fail:
    lora_hasher_free(hs);
    free(buf);
    close(in);
    lora_reg_unstage(out, tmp);
    return rc;
}

void lora_reg_unstage(int fd, char *tmpname)
{
    if (fd >= 0)
        close(fd);
    if (tmpname) {
        lora_tmp_unlink(tmpname);
        free(tmpname);
    }
}

static int meta_ok(const lora_reg_meta *m, lora_error *err)
{
    if (!m->name || !*m->name || strchr(m->name, '@') || strchr(m->name, '/') ||
        strchr(m->name, '\n'))
        return lora_seterr(err, LORA_EINPUT, "archive name %s%s%s: must be non-empty, without "
                           "'@', '/' or newlines", m->name ? "\"" : "", m->name ? m->name : "(none)",
                           m->name ? "\"" : "");
    if (!m->version || !lora_semver_valid(m->version))
        return lora_seterr(err, LORA_EINPUT,
                           "%s: version \"%s\" is not a semantic version (MAJOR.MINOR.PATCH, "
                           "e.g. 1.2.0 or 1.2.0-rc.1)",
                           m->name, m->version ? m->version : "");
    if (!m->task || !*m->task || strchr(m->task, '\n'))
        return lora_seterr(err, LORA_EINPUT, "%s@%s: the manifest names no task", m->name,
                           m->version);
    return LORA_OK;
}

/* The key that verified an archive may have been untrusted since the
 * keys were read: decided again inside the transaction. */
static int signer_still_trusted(lora_registry *reg, const lora_reg_meta *m, lora_error *err)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(reg, "SELECT 1 FROM keys WHERE key_id = ?1", &st, err);
    if (rc)
        return rc;
    bind_text(st, 1, m->signer);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    if (s == SQLITE_ROW)
        return LORA_OK;
    return s == SQLITE_DONE ? lora_seterr(err, LORA_ECHECK, "signing key %s is no longer trusted",
                                          m->signer ? m->signer : "(none)")
                            : sqlerr(reg, s, err, "add");
}

/* The same archive again: its blob replaced by the verified copy (the
 * blob may have been lost or damaged; same bytes, same name), and the
 * row upgraded to trusted when it now is. */
static int readd(lora_registry *reg, int fd, const char *tmpname, const char *final,
                 const char *hex, const lora_reg_meta *m, int was_trusted, lora_error *err)
{
    int rc = lora_commit_tmpfile(fd, tmpname, final, err);
    if (rc || !m->trusted || was_trusted)
        return rc;
    sqlite3_stmt *st = NULL;
    if ((rc = prep(reg, "UPDATE adapters SET trusted = 1, signer = ?2 WHERE hash = ?1", &st, err)))
        return rc;
    bind_text(st, 1, hex);
    bind_text(st, 2, m->signer);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    return s == SQLITE_DONE ? LORA_OK : sqlerr(reg, s, err, "add");
}

/* Same name and version with other bytes: refused, never replaced. */
static int version_free(lora_registry *reg, const lora_reg_meta *m, lora_error *err)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(reg, "SELECT hash FROM adapters WHERE name = ?1 AND version = ?2", &st, err);
    if (rc)
        return rc;
    bind_text(st, 1, m->name);
    bind_text(st, 2, m->version);
    if (sqlite3_step(st) == SQLITE_ROW)
        rc = lora_seterr(err, LORA_EINPUT,
                         "%s@%s is already registered with a different archive (%.16s...); "
                         "publish a new version or rm this one first",
                         m->name, m->version, (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return rc;
}

/* A new archive: blob first (fsync'ed, renamed, folder fsync'ed), then
 * the row: a crash in between leaves only an unreferenced blob. */
static int add_new(lora_registry *reg, int fd, const char *tmpname, const char *final,
                   const char *hex, uint64_t size, const lora_reg_meta *m, lora_error *err)
{
    lora_semver_parts sv;
    lora_semver_split(m->version, &sv);
    int rc = lora_commit_tmpfile(fd, tmpname, final, err);
    if (rc)
        return rc;
    sqlite3_stmt *st = NULL;
    if ((rc = prep(reg, "INSERT INTO adapters (name, version, v_major, v_minor, v_patch, "
                        "v_release, task, base_model, base_hash, r, alpha, hash, size, "
                        "signer, trusted, added) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
                        "?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                   &st, err)))
        return rc;
    bind_text(st, 1, m->name);
    bind_text(st, 2, m->version);
    sqlite3_bind_int64(st, 3, sv.major);
    sqlite3_bind_int64(st, 4, sv.minor);
    sqlite3_bind_int64(st, 5, sv.patch);
    sqlite3_bind_int(st, 6, sv.pre == NULL);
    bind_text(st, 7, m->task);
    bind_text(st, 8, m->base_model);
    bind_text(st, 9, m->base_hash);
    sqlite3_bind_int64(st, 10, (sqlite3_int64)m->r);
    sqlite3_bind_double(st, 11, m->alpha);
    bind_text(st, 12, hex);
    sqlite3_bind_int64(st, 13, (sqlite3_int64)size);
    bind_text(st, 14, m->signer);
    sqlite3_bind_int(st, 15, m->trusted ? 1 : 0);
    sqlite3_bind_int64(st, 16, (sqlite3_int64)time(NULL));
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    return s == SQLITE_DONE ? LORA_OK : sqlerr(reg, s, err, "add");
}

/* Inside the transaction: the archive re-added or added.  *renamed is
 * set once lora_commit_tmpfile has run (the temporary is gone either
 * way). */
static int commit_locked(lora_registry *reg, int fd, const char *tmpname, const char *final,
                         const char *hex, uint64_t size, const lora_reg_meta *m, int *added,
                         int *renamed, lora_error *err)
{
    int rc;
    if (m->trusted && (rc = signer_still_trusted(reg, m, err)))
        return rc;
    sqlite3_stmt *st = NULL;
    if ((rc = prep(reg, "SELECT trusted FROM adapters WHERE hash = ?1", &st, err)))
        return rc;
    bind_text(st, 1, hex);
    int s = sqlite3_step(st);
    int was_trusted = s == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_finalize(st);
    if (s == SQLITE_ROW) {
        *renamed = 1;
        return readd(reg, fd, tmpname, final, hex, m, was_trusted, err);
    }
    if (s != SQLITE_DONE)
        return sqlerr(reg, s, err, "add");
    if ((rc = version_free(reg, m, err)))
        return rc;
    *renamed = 1;
    if ((rc = add_new(reg, fd, tmpname, final, hex, size, m, err)))
        return rc;
    if (added)
        *added = 1;
    return LORA_OK;
}

int lora_reg_commit(lora_registry *reg, int fd, char *tmpname,
                    const char hex[LORA_REG_HASH_HEX], uint64_t size, const lora_reg_meta *m,
                    lora_reg_adapter **out, int *added, lora_error *err)
{
    if (out)
        *out = NULL;
    if (added)
        *added = 0;
    char *final = NULL;
    int rc = meta_ok(m, err);
    if (!rc && !(final = blob_path(reg, hex, err)))
        rc = LORA_EIO;
    if (!rc)
        rc = begin(reg, err);
    if (rc) {
        lora_reg_unstage(fd, tmpname);
        free(final);
        return rc;
    }
    int renamed = 0;
    rc = commit_locked(reg, fd, tmpname, final, hex, size, m, added, &renamed, err);
    if (rc) {
        rollback(reg);
        if (added)
            *added = 0;
    } else if (!(rc = commit(reg, err)) && out) {
        char spec[80];
        snprintf(spec, sizeof spec, "%s", hex);
        rc = lora_registry_get(reg, spec, 0, out, err);
    }
    close(fd);
    if (!renamed)
        lora_tmp_unlink(tmpname);
    free(tmpname);
    free(final);
    return rc;
}

int lora_reg_add_meta(lora_registry *reg, const char *src, const lora_reg_meta *m,
                      lora_reg_adapter **out, int *added, lora_error *err)
{
    int fd;
    char *tmp;
    char hex[LORA_REG_HASH_HEX];
    uint64_t size;
    int rc = lora_reg_stage(reg, src, &fd, &tmp, hex, &size, err);
    if (rc)
        return rc;
    return lora_reg_commit(reg, fd, tmp, hex, size, m, out, added, err);
}

/* ---- gc, verify ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The hashes of every row, sorted (for bsearch). */
struct hashlist {
    char **h;
    size_t n, cap;
};

static void hashlist_free(struct hashlist *L)
{
    for (size_t i = 0; i < L->n; i++)
        free(L->h[i]);
    free(L->h);
}

static int row_hashes(lora_registry *reg, struct hashlist *L, lora_error *err)
{
    sqlite3_stmt *st;
    int rc = prep(reg, "SELECT hash FROM adapters", &st, err), s;
    if (rc)
        return rc;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (L->n == L->cap) {
            size_t nc = L->cap ? 2 * L->cap : 64;
            char **nh = realloc(L->h, nc * sizeof *nh);
            if (!nh) {
                rc = lora_oom(err);
                break;
            }
            L->h = nh;
            L->cap = nc;
        }
        if (!(L->h[L->n] = strdup((const char *)sqlite3_column_text(st, 0)))) {
            rc = lora_oom(err);
            break;
        }
        L->n++;
    }
    if (!rc && s != SQLITE_DONE)
        rc = sqlerr(reg, s, err, "gc");
    sqlite3_finalize(st);
    if (!rc && L->n > 1)
        qsort(L->h, L->n, sizeof *L->h, cmp_str);
    return rc;
}

/* Whether blobs/NAME is garbage: a blob no row names, or a staging
 * temporary older than STALE_TMP_SECONDS.  *size its size. */
static int is_garbage(const char *path, const char *nm, const struct hashlist *L, time_t now,
                      uint64_t *size)
{
    size_t len = strlen(nm);
    int is_blob = len == 64 + 5 && hex_ok(nm, 64) && strcmp(nm + 64, ".lora") == 0;
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return 0;
    *size = (uint64_t)sb.st_size;
    if (!is_blob)
        return now - sb.st_mtime > STALE_TMP_SECONDS;
    char key[65];
    memcpy(key, nm, 64);
    key[64] = '\0';
    char *kp = key;
    return !bsearch(&kp, L->h, L->n, sizeof *L->h, cmp_str);
}

/* Remove the garbage in the blob folder, counted in *nb and *by. */
static int sweep_blobs(lora_registry *reg, const struct hashlist *L, size_t *nb, uint64_t *by,
                       lora_error *err)
{
    DIR *d = opendir(reg->blobdir);
    if (!d)
        return errno == ENOENT ? LORA_OK
                               : lora_seterr_errno(err, LORA_EIO, errno, "%s", reg->blobdir);
    struct dirent *de;
    time_t now = time(NULL);
    int rc = LORA_OK;
    while (!rc && (de = readdir(d))) {
        const char *nm = de->d_name;
        size_t len = strlen(nm);
        int is_blob = len == 64 + 5 && hex_ok(nm, 64) && strcmp(nm + 64, ".lora") == 0;
        if (!is_blob && strncmp(nm, "incoming.tmp-", 13) != 0)
            continue;
        char *p;
        if (asprintf(&p, "%s/%s", reg->blobdir, nm) < 0) {
            rc = lora_oom(err);
            break;
        }
        uint64_t size = 0;
        if (is_garbage(p, nm, L, now, &size)) {
            if (unlink(p) == 0) {
                (*nb)++;
                *by += size;
            } else if (errno != ENOENT) {
                rc = lora_seterr_errno(err, LORA_EIO, errno, "cannot remove %s", p);
            }
        }
        free(p);
    }
    closedir(d);
    return rc;
}

int lora_registry_gc(lora_registry *reg, size_t *blobs, uint64_t *bytes, lora_error *err)
{
    size_t nb = 0;
    uint64_t by = 0;
    if (blobs)
        *blobs = 0;
    if (bytes)
        *bytes = 0;
    /* Under the write lock no add can commit a row for a blob between
     * our listing of the rows and our unlinking of the blob. */
    int rc = begin(reg, err);
    if (rc)
        return rc;
    struct hashlist L = {NULL, 0, 0};
    rc = row_hashes(reg, &L, err);
    if (!rc)
        rc = sweep_blobs(reg, &L, &nb, &by, err);
    hashlist_free(&L);
    if (rc) {
        rollback(reg);
        return rc;
    }
    if (blobs)
        *blobs = nb;
    if (bytes)
        *bytes = by;
    return commit(reg, err);
}

void lora_reg_problems_free(char **problems, size_t n)
{
    if (!problems)
        return;
    for (size_t i = 0; i < n; i++)
        free(problems[i]);
    free(problems);
}

/* Append "PATH: database: what" to the problem list. */
static int add_problem(char ***p, size_t *np, const char *fmt, const char *a, const char *b,
                       lora_error *err)
{
    char **n2 = realloc(*p, (*np + 1) * sizeof **p);
    if (!n2)
        return lora_oom(err);
    *p = n2;
    if (asprintf(&n2[*np], fmt, a, b) < 0)
        return lora_oom(err);
    (*np)++;
    return LORA_OK;
}

/* PRAGMA integrity_check: SQLite's own check of every page, every
 * index against its table, every constraint.  Each line it reports
 * (at most 100) is a problem; an error running it (page 1 damaged,
 * say) is one too. */
static int check_database(lora_registry *reg, char ***p, size_t *np, lora_error *err)
{
    sqlite3_stmt *st;
    int s = sqlite3_prepare_v2(reg->db, "PRAGMA integrity_check(100)", -1, &st, NULL);
    int rc = LORA_OK;
    if (s == SQLITE_OK) {
        while ((s = sqlite3_step(st)) == SQLITE_ROW && !rc) {
            const char *line = (const char *)sqlite3_column_text(st, 0);
            if (line && strcmp(line, "ok") != 0)
                rc = add_problem(p, np, "%s: database damaged: %s", reg->path, line, err);
        }
        sqlite3_finalize(st);
    }
    if (!rc && s != SQLITE_DONE && s != SQLITE_ROW) {
        if ((s & 0xff) != SQLITE_CORRUPT && (s & 0xff) != SQLITE_NOTADB)
            return sqlerr(reg, s, err, "integrity check");
        rc = add_problem(p, np, "%s: database damaged: %s", reg->path, sqlite3_errmsg(reg->db),
                         err);
    }
    return rc;
}

int lora_registry_verify(lora_registry *reg, char ***problems, size_t *n, lora_error *err)
{
    *problems = NULL;
    *n = 0;
    char **p = NULL;
    size_t np = 0;
    int rc = check_database(reg, &p, &np, err);
    lora_reg_adapter *v = NULL;
    size_t cnt = 0;
    if (!rc) {
        lora_error le;
        lora_error_clear(&le);
        rc = lora_registry_ls(reg, NULL, NULL, &v, &cnt, &le);
        if (rc == LORA_EINPUT && np) /* the damage found above stops the listing */
            rc = LORA_OK;
        else if (rc && err)
            *err = le;
    }
    if (rc) {
        lora_reg_problems_free(p, np);
        return rc;
    }
    for (size_t i = 0; i < cnt; i++) {
        lora_error e;
        lora_error_clear(&e);
        int c = lora_reg_check_blob(&v[i], &e);
        if (c == LORA_OK)
            continue;
        if (c != LORA_ECHECK && c != LORA_EIO) {
            rc = c;
            if (err)
                *err = e;
            break;
        }
        char **np2 = realloc(p, (np + 1) * sizeof *p);
        if (!np2 || !(np2[np] = strdup(e.msg))) {
            if (np2)
                p = np2;
            rc = lora_oom(err);
            break;
        }
        p = np2;
        np++;
    }
    lora_reg_adapters_free(v, cnt);
    if (rc) {
        lora_reg_problems_free(p, np);
        return rc;
    }
    *problems = p;
    *n = np;
    return np ? LORA_ECHECK : LORA_OK;
}

/* ---- evals ---- */

void lora_reg_evals_free(lora_reg_eval *list, size_t n)
{
    if (!list)
        return;
    for (size_t i = 0; i < n; i++) {
        free(list[i].adapter);
        free(list[i].base_hash);
        free(list[i].dataset_hash);
        free(list[i].dataset);
        free(list[i].metric);
        free(list[i].tool_version);
        free(list[i].mode);
        free(list[i].base_name);
    }
    free(list);
}

int lora_registry_record_eval(lora_registry *reg, const lora_reg_eval *ev, lora_error *err)
{
    if (!ev->adapter || !*ev->adapter)
        return lora_seterr(err, LORA_EINPUT, "record eval: no adapter named");
    if (!ev->base_hash || !*ev->base_hash || !ev->dataset_hash || !*ev->dataset_hash ||
        !ev->metric || !*ev->metric)
        return lora_seterr(err, LORA_EINPUT,
                           "record eval: base hash, data set hash and metric are required");
    if (!isfinite(ev->value))
        return lora_seterr(err, LORA_EINPUT, "record eval: %s value is not finite", ev->metric);
    lora_reg_adapter *a;
    int rc = lora_registry_get(reg, ev->adapter, 0, &a, err);
    if (rc)
        return err ? lora_err_prefix(err, "record eval") : rc;
    if ((rc = begin(reg, err))) {
        lora_reg_adapter_free(a);
        return rc;
    }
    sqlite3_stmt *st;
    if ((rc = prep(reg, "INSERT INTO evals (adapter_id, base_hash, dataset_hash, dataset, metric, "
                        "value, items, time, tool_version, mode, base_name) VALUES (?1, ?2, ?3, ?4, "
                        "?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                   &st, err))) {
        rollback(reg);
        lora_reg_adapter_free(a);
        return rc;
    }
    sqlite3_bind_int64(st, 1, a->id);
    bind_text(st, 2, ev->base_hash);
    bind_text(st, 3, ev->dataset_hash);
    bind_text(st, 4, ev->dataset);
    bind_text(st, 5, ev->metric);
    sqlite3_bind_double(st, 6, ev->value);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)ev->items);
    sqlite3_bind_int64(st, 8, ev->time ? ev->time : (sqlite3_int64)time(NULL));
    bind_text(st, 9, ev->tool_version ? ev->tool_version : lora_version());
    bind_text(st, 10, ev->mode);
    bind_text(st, 11, ev->base_name);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    lora_reg_adapter_free(a);
    if (s != SQLITE_DONE) {
        rc = sqlerr(reg, s, err, "record eval");
        rollback(reg);
        return rc;
    }
    return commit(reg, err);
}

int lora_registry_evals(lora_registry *reg, const char *adapter, lora_reg_eval **list,
                        size_t *n, lora_error *err)
{
    *list = NULL;
    *n = 0;
    const char *at = adapter ? strrchr(adapter, '@') : NULL;
    const char *sql =
        "SELECT a.name || '@' || a.version, e.base_hash, e.dataset_hash, e.dataset, e.metric, "
        "e.value, e.items, e.time, e.tool_version, %s FROM evals e JOIN adapters a ON a.id = "
        "e.adapter_id %s ORDER BY e.time, e.id";
    char q[640];
    /* a read-only reader of a schema-1 database (no migration) has no
     * mode and base_name columns: NULL for both */
    snprintf(q, sizeof q, sql, reg->schema >= 2 ? "e.mode, e.base_name" : "NULL, NULL",
             !adapter ? "" : at ? "WHERE a.name = ?1 AND a.version = ?2" : "WHERE a.name = ?1");
    sqlite3_stmt *st;
    int rc = prep(reg, q, &st, err);
    if (rc)
        return rc;
    if (adapter) {
        if (strncmp(adapter, "reg:", 4) == 0)
            adapter += 4;
        sqlite3_bind_text(st, 1, adapter, at ? (int)(at - adapter) : -1, SQLITE_TRANSIENT);
        if (at)
            bind_text(st, 2, at + 1);
    }
    lora_reg_eval *v = NULL;
    size_t cnt = 0, cap = 0;
    int s, oom = 0;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            size_t nc = cap ? 2 * cap : 16;
            lora_reg_eval *nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                oom = 1;
                break;
            }
            v = nv;
            cap = nc;
        }
        lora_reg_eval *e = &v[cnt++];
        memset(e, 0, sizeof *e);
        e->adapter = col_dup(st, 0, &oom);
        e->base_hash = col_dup(st, 1, &oom);
        e->dataset_hash = col_dup(st, 2, &oom);
        e->dataset = col_dup(st, 3, &oom);
        e->metric = col_dup(st, 4, &oom);
        e->value = sqlite3_column_double(st, 5);
        e->items = (uint64_t)sqlite3_column_int64(st, 6);
        e->time = sqlite3_column_int64(st, 7);
        e->tool_version = col_dup(st, 8, &oom);
        e->mode = col_dup(st, 9, &oom);
        e->base_name = col_dup(st, 10, &oom);
        if (oom)
            break;
    }
    sqlite3_finalize(st);
    if (oom) {
        lora_reg_evals_free(v, cnt);
        return lora_oom(err);
    }
    if (s != SQLITE_DONE) {
        lora_reg_evals_free(v, cnt);
        return sqlerr(reg, s, err, "evals");
    }
    *list = v;
    *n = cnt;
    return LORA_OK;
}

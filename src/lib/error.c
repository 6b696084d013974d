/*
 * error.c - error reporting shared by all of liblora, plus the few
 * file helpers every writer needs: read a small file with a size
 * limit, and write through a temporary file and rename so that no
 * half-written file ever stands under its real name.
 *
 * It also keeps the one piece of process-wide state in liblora: the
 * list of temporary files and folders that exist right now, so that a
 * tool's fatal-signal handler (SIGBUS when an input shrinks under its
 * mapping) can remove them with lora_tmp_remove_all() before _exit.
 * The library itself installs no handler.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdatomic.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

void lora_error_clear(lora_error *err)
{
    if (!err)
        return;
    err->code = LORA_OK;
    err->msg[0] = '\0';
}

static int vseterr(lora_error *err, int code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return code;
}

int lora_seterr(lora_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vseterr(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int lora_seterr_errno(lora_error *err, int code, int errno_value, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vseterr(err, code, fmt, ap);
    va_end(ap);
    if (err) {
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, ": %s", strerror(errno_value));
    }
    return code;
}

int lora_seterr_path(lora_error *err, int errno_value, int flags, const char *path)
{
    int input = errno_value == ENOENT || errno_value == ENOTDIR ||
                (errno_value == EACCES && (flags & LORA_PATH_EACCES_INPUT));
    return lora_seterr_errno(err, input ? LORA_EINPUT : LORA_EIO, errno_value, "%s", path);
}

int lora_err_prefix(lora_error *err, const char *fmt, ...)
{
    if (!err)
        return LORA_EIO;
    char head[LORA_ERROR_MAX], old[LORA_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", head, old);
    return err->code;
}

int lora_oom(lora_error *err)
{
    return lora_seterr(err, LORA_EIO, "out of memory");
}

char *lora_strdup(const char *s, lora_error *err)
{
    char *p = strdup(s ? s : "");
    if (!p)
        lora_oom(err);
    return p;
}

int lora_init(lora_error *err)
{
    if (sodium_init() < 0)
        return lora_seterr(err, LORA_EIO, "cannot initialise libsodium");
    return LORA_OK;
}

const char *lora_version(void)
{
    return PACKAGE_VERSION;
}

int lora_read_file(const char *path, size_t max, char **buf, size_t *len, lora_error *err)
{
    *buf = NULL;
    if (len)
        *len = 0;
    /* O_NONBLOCK so that a FIFO given as a file fails the regular-file
     * check below instead of blocking the open. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return lora_seterr_path(err, errno, 0, path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return lora_seterr_errno(err, LORA_EIO, e, "%s", path);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return lora_seterr(err, LORA_EINPUT, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        return lora_seterr(err, LORA_EINPUT, "%s: too large (%lld bytes, limit %zu)", path,
                           (long long)sb.st_size, max);
    }
    size_t n = (size_t)sb.st_size;
    char *p = malloc(n + 1);
    if (!p) {
        close(fd);
        return lora_oom(err);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(p);
            close(fd);
            return lora_seterr_errno(err, LORA_EIO, e, "%s: read", path);
        }
        if (r == 0)
            break; /* shrank under us: take what is there */
        got += (size_t)r;
    }
    close(fd);
    p[got] = '\0';
    *buf = p;
    if (len)
        *len = got;
    return LORA_OK;
}

/* ---- temporaries a signal handler may remove ------------------------- */

/* Slots, not a list: claiming and releasing one is a single atomic
 * operation, so the handler sees either a complete path or no slot.
 * state: 0 free, 1 being filled, 2 live.  Temporaries beyond the slots
 * are simply not tracked (a handler then leaves them behind). */
#define TMP_SLOTS 64
static struct {
    atomic_int state;
    int dir;
    char path[PATH_MAX];
} tmp_slots[TMP_SLOTS];

void lora_tmp_track(const char *path, int is_dir)
{
    size_t n = strlen(path);
    if (n >= PATH_MAX)
        return;
    for (int i = 0; i < TMP_SLOTS; i++) {
        int want = 0;
        if (atomic_compare_exchange_strong(&tmp_slots[i].state, &want, 1)) {
            memcpy(tmp_slots[i].path, path, n + 1);
            tmp_slots[i].dir = is_dir;
            atomic_store(&tmp_slots[i].state, 2);
            return;
        }
    }
}

void lora_tmp_forget(const char *path)
{
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_slots[i].state) == 2 && strcmp(tmp_slots[i].path, path) == 0) {
            atomic_store(&tmp_slots[i].state, 0);
            return;
        }
}

void lora_tmp_unlink(const char *path)
{
    unlink(path);
    lora_tmp_forget(path);
}

/* Remove a flat folder with async-signal-safe calls only: no opendir
 * (it allocates); getdents64 through syscall(2) on Linux, where our
 * temporary folders live.  Elsewhere the folder is left. */
static void remove_dir_signal_safe(const char *path)
{
#ifdef __linux__
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[4096] __attribute__((aligned(8)));
    for (int pass = 0; pass < 64; pass++) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            /* struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name */
            unsigned short reclen;
            memcpy(&reclen, buf + off + 16, sizeof reclen);
            const char *name = buf + off + 19;
            if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0)
                unlinkat(fd, name, 0);
            if (reclen == 0)
                break;
            off += reclen;
        }
    }
    close(fd);
    rmdir(path);
#else
    (void)path;
#endif
}

void lora_tmp_remove_all(void)
{
    /* files first: a tracked file may sit in a tracked folder */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < TMP_SLOTS; i++) {
            if (atomic_load(&tmp_slots[i].state) != 2 || tmp_slots[i].dir != pass)
                continue;
            if (pass == 0)
                unlink(tmp_slots[i].path);
            else
                remove_dir_signal_safe(tmp_slots[i].path);
        }
}

int lora_tmpfile_beside(const char *path, int mode, int *fd, char **tmpname, lora_error *err)
{
    size_t n = strlen(path) + sizeof ".tmp-XXXXXX";
    char *t = malloc(n);
    if (!t)
        return lora_oom(err);
    snprintf(t, n, "%s.tmp-XXXXXX", path);
    int f = mkostemp(t, O_CLOEXEC);
    if (f < 0) {
        int e = errno;
        free(t);
        return lora_seterr_errno(err, LORA_EIO, e, "cannot create a temporary file beside %s",
                                 path);
    }
    if (fchmod(f, (mode_t)mode) != 0) {
        int e = errno;
        close(f);
        unlink(t);
        free(t);
        return lora_seterr_errno(err, LORA_EIO, e, "%s: chmod", path);
    }
    lora_tmp_track(t, 0);
    *fd = f;
    *tmpname = t;
    return LORA_OK;
}

int lora_fsync_dir_of(const char *path, lora_error *err)
{
    char *copy = strdup(path);
    if (!copy)
        return lora_oom(err);
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (dfd < 0)
        return LORA_OK; /* nothing more we can do; the rename itself happened */
    int rc = LORA_OK;
    if (fsync(dfd) != 0 && errno != EINVAL)
        rc = lora_seterr_errno(err, LORA_EIO, errno, "%s: fsync of folder", path);
    close(dfd);
    return rc;
}

int lora_commit_tmpfile(int fd, const char *tmpname, const char *path, lora_error *err)
{
    if (fsync(fd) != 0) {
        int e = errno;
        lora_tmp_unlink(tmpname);
        return lora_seterr_errno(err, LORA_EIO, e, "%s: fsync", path);
    }
    if (rename(tmpname, path) != 0) {
        int e = errno;
        lora_tmp_unlink(tmpname);
        return lora_seterr_errno(err, LORA_EIO, e, "cannot rename %s to %s", tmpname, path);
    }
    lora_tmp_forget(tmpname);
    return lora_fsync_dir_of(path, err);
}

int lora_write_file_atomic(const char *path, const void *buf, size_t len, int mode,
                           lora_error *err)
{
    int fd;
    char *tmp;
    int rc = lora_tmpfile_beside(path, mode, &fd, &tmp, err);
    if (rc)
        return rc;
    const unsigned char *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            close(fd);
            lora_tmp_unlink(tmp);
            free(tmp);
            return lora_seterr_errno(err, LORA_EIO, e, "%s: write", path);
        }
        done += (size_t)w;
    }
    rc = lora_commit_tmpfile(fd, tmp, path, err);
    close(fd);
    free(tmp);
    return rc;
}

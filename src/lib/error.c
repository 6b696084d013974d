/*
 * error.c - error reporting shared by all of liblora, plus the few
 * file helpers every writer needs: read a small file with a size
 * limit, and write through a temporary file and rename so that no
 * half-written file ever stands under its real name.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
        return lora_seterr_errno(err, errno == ENOENT ? LORA_EINPUT : LORA_EIO, errno,
                                 "%s", path);
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
    *fd = f;
    *tmpname = t;
    return LORA_OK;
}

static int fsync_dir_of(const char *path, lora_error *err)
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
        unlink(tmpname);
        return lora_seterr_errno(err, LORA_EIO, e, "%s: fsync", path);
    }
    if (rename(tmpname, path) != 0) {
        int e = errno;
        unlink(tmpname);
        return lora_seterr_errno(err, LORA_EIO, e, "cannot rename %s to %s", tmpname, path);
    }
    return fsync_dir_of(path, err);
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
            unlink(tmp);
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

/*
 * direct_io.c - O_DIRECT writes of a file being written, behind a small
 * queue, for the writers' large writes (lora_stw_write): two threads of
 * the writer send page-aligned buffers to the device with a second,
 * O_DIRECT descriptor of the same file.  The merge engine fills those
 * buffers itself (lora_dio_lend: no copy at all); other callers' bytes
 * are copied into one.  Against a write through the page cache this
 * saves the kernel's copy into fresh page-cache pages, ext4's per-page
 * delayed allocation and buffer heads, the writeback threads' work, and
 * the page cache's growth (on this project's VMs fresh page-cache pages
 * cost host faults); the queue keeps the caller from waiting for the
 * device, which an O_DIRECT write does until the data is there
 * (bench/README, "Session 6").
 *
 * Why mixing it with buffered writes of the same file is safe: a direct
 * write first writes back and drops the cached pages of its range, and
 * drops them again when done; what goes wrong is a page that one write
 * fills through the cache while another writes part of it directly (the
 * cached page, zeroed or read around the buffered bytes, is written back
 * whole over the direct bytes).  So lora_dio_split sends directly only
 * whole pages and file system blocks inside the caller's own range: no
 * other write touches them, as long as every byte of the file is written
 * once (lora_stw_commit checks that count), and the partial blocks at
 * either end, which a neighbouring range may share, go through the
 * cache.  Durability is the commit's one fsync, after lora_dio_finish
 * has waited for every queued write: it writes back the cached pages,
 * commits the journal (the extents the direct writes converted from
 * unwritten) and flushes the device's cache, which holds the direct
 * writes too.  A direct write's error comes back from the next
 * lora_dio_write and from lora_dio_finish.
 *
 * None (buffered writes only) when LORA_NO_DIRECT is set, when the file
 * system refuses O_DIRECT or statx does not report its alignment for the
 * file (tmpfs; kernels before 6.1), or when no thread can be started.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIO_THREADS 2
#define DIO_SLOTS 8
/* the queue's buffers; a longer write is queued in parts */
#define DIO_SLOT_BYTES (UINT64_C(1) << 20)
/* a shorter direct part goes through the cache: too little to save */
#define DIO_MIN (UINT64_C(64) << 10)

typedef struct dio_slot {
    unsigned char *buf;         /* DIO_SLOT_BYTES, aligned */
    const unsigned char *data;  /* queued: LEN bytes in BUF for file offset OFF */
    size_t len;
    uint64_t off;
} dio_slot;

struct lora_dio {
    int fd;                     /* O_DIRECT */
    int cfd;                    /* the caller's (cached) descriptor */
    uint64_t mem, blk;          /* the kernel's buffer alignment; offset and length unit */
    pthread_mutex_t mu;
    pthread_cond_t work, freed; /* a slot was queued; a slot came back */
    dio_slot slot[DIO_SLOTS];
    int free_[DIO_SLOTS], nfree;
    int queue[DIO_SLOTS], qhead, qn;
    int stop;
    int err;                    /* the first failed write's errno */
    pthread_t th[DIO_THREADS];
    int nth;
};

static int pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* lora_pwrite_all's result as an errno value, 0 when written */
static int pwrite_errno(int fd, const unsigned char *p, size_t len, uint64_t off)
{
    return lora_pwrite_all(fd, p, len, off) ? errno : 0;
}

/* One queued slot to the file: directly, or through the cache when the
 * file system refuses this one (an alignment rule statx did not tell). */
static int slot_write(lora_dio *d, const dio_slot *s)
{
    int e = pwrite_errno(d->fd, s->data, s->len, s->off);
    if (e == EINVAL) {
        e = pwrite_errno(d->cfd, s->data, s->len, s->off);
#ifdef SYNC_FILE_RANGE_WRITE
        if (!e)
            (void)sync_file_range(d->cfd, (off_t)s->off, (off_t)s->len, SYNC_FILE_RANGE_WRITE);
#endif
    }
    return e;
}

/* An I/O thread: queued slots to the file until stopped and drained. */
static void *dio_thread(void *arg)
{
    lora_dio *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->qn && !d->stop)
            pthread_cond_wait(&d->work, &d->mu);
        if (!d->qn)
            break;
        int i = d->queue[d->qhead];
        d->qhead = (d->qhead + 1) % DIO_SLOTS;
        d->qn--;
        int failed = d->err;
        pthread_mutex_unlock(&d->mu);
        int e = failed ? 0 : slot_write(d, &d->slot[i]); /* after a failure the file is lost */
        pthread_mutex_lock(&d->mu);
        if (e && !d->err)
            d->err = e;
        d->free_[d->nfree++] = i;
        pthread_cond_broadcast(&d->freed);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void dio_free(lora_dio *d)
{
    for (int i = 0; i < DIO_SLOTS; i++)
        free(d->slot[i].buf);
    if (d->fd >= 0)
        close(d->fd);
    pthread_cond_destroy(&d->work);
    pthread_cond_destroy(&d->freed);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* The O_DIRECT descriptor and its alignment; -1 when there is none. */
static int dio_fd(int fd, const char *path, uint64_t *mem, uint64_t *blk)
{
#if defined(O_DIRECT) && defined(STATX_DIOALIGN)
    const char *off = getenv("LORA_NO_DIRECT");
    if (off && *off)
        return -1;
    /* PATH names the temporary this process just created; the inode
     * comparison makes sure it still does */
    int dfd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    struct stat a, b;
    struct statx sx;
    long page = sysconf(_SC_PAGESIZE);
    if (fstat(fd, &a) != 0 || fstat(dfd, &b) != 0 || a.st_dev != b.st_dev ||
        a.st_ino != b.st_ino || page <= 0 ||
        statx(dfd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) != 0 ||
        !(sx.stx_mask & STATX_DIOALIGN) || !pow2(sx.stx_dio_mem_align) ||
        !pow2(sx.stx_dio_offset_align)) {
        close(dfd);
        return -1;
    }
    /* whole pages and whole file system blocks (see the top) */
    *blk = (uint64_t)page;
    if (sx.stx_dio_offset_align > *blk)
        *blk = sx.stx_dio_offset_align;
    if (pow2((uint64_t)a.st_blksize) && (uint64_t)a.st_blksize > *blk)
        *blk = (uint64_t)a.st_blksize;
    *mem = sx.stx_dio_mem_align;
    if (*blk > DIO_SLOT_BYTES || *mem > *blk) {
        close(dfd);
        return -1;
    }
    return dfd;
#else
    (void)fd;
    (void)path;
    (void)mem;
    (void)blk;
    return -1;
#endif
}

lora_dio *lora_dio_open(int fd, const char *path)
{
    uint64_t mem = 0, blk = 0;
    int dfd = dio_fd(fd, path, &mem, &blk);
    if (dfd < 0)
        return NULL;
    lora_dio *d = calloc(1, sizeof *d);
    if (!d) {
        close(dfd);
        return NULL;
    }
    d->fd = dfd;
    d->cfd = fd;
    d->mem = mem;
    d->blk = blk;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->work, NULL);
    pthread_cond_init(&d->freed, NULL);
    for (int i = 0; i < DIO_SLOTS; i++) {
        void *b = NULL;
        if (posix_memalign(&b, (size_t)blk, DIO_SLOT_BYTES) != 0) {
            dio_free(d);
            return NULL;
        }
        d->slot[i].buf = b;
        d->free_[d->nfree++] = i;
    }
    for (int t = 0; t < DIO_THREADS; t++)
        if (pthread_create(&d->th[d->nth], NULL, dio_thread, d) == 0)
            d->nth++;
    if (!d->nth) {
        dio_free(d);
        return NULL;
    }
    return d;
}

void lora_dio_split(const lora_dio *d, size_t len, uint64_t off, size_t *head, size_t *mid)
{
    *head = len;
    *mid = 0;
    if (!d || len < DIO_MIN)
        return;
    uint64_t a = (off + d->blk - 1) & ~(d->blk - 1), b = (off + len) & ~(d->blk - 1);
    if (b <= a || b - a < DIO_MIN)
        return;
    *head = (size_t)(a - off);
    *mid = (size_t)(b - a);
}

static void enqueue(lora_dio *d, int i, const unsigned char *data, size_t len, uint64_t off)
{
    d->slot[i].data = data;
    d->slot[i].len = len;
    d->slot[i].off = off;
    pthread_mutex_lock(&d->mu);
    d->queue[(d->qhead + d->qn) % DIO_SLOTS] = i;
    d->qn++;
    pthread_cond_signal(&d->work);
    pthread_mutex_unlock(&d->mu);
}

/* The slot lent as BUF, or -1.  A caller has a slot's address only
 * while it is lent to it, and the addresses never change: no lock. */
static int lent_slot(const lora_dio *d, const void *buf)
{
    for (int i = 0; d && buf && i < DIO_SLOTS; i++)
        if (d->slot[i].buf == buf)
            return i;
    return -1;
}

int lora_dio_lent(const lora_dio *d, const void *buf)
{
    return lent_slot(d, buf) >= 0;
}

void *lora_dio_lend(lora_dio *d, size_t len)
{
    if (!d || len > DIO_SLOT_BYTES)
        return NULL;
    pthread_mutex_lock(&d->mu);
    int i = d->nfree && !d->err ? d->free_[--d->nfree] : -1;
    pthread_mutex_unlock(&d->mu);
    return i >= 0 ? d->slot[i].buf : NULL;
}

void lora_dio_unlend(lora_dio *d, void *buf)
{
    int i = lent_slot(d, buf);
    if (i < 0)
        return;
    pthread_mutex_lock(&d->mu);
    d->free_[d->nfree++] = i;
    pthread_cond_broadcast(&d->freed);
    pthread_mutex_unlock(&d->mu);
}

int lora_dio_write(lora_dio *d, const void *buf, size_t len, uint64_t off, void *lent)
{
    const unsigned char *p = buf;
    int li = lent_slot(d, lent);
    if (li >= 0) {
        /* no copy: the lent buffer itself is queued, moved to its start
         * first where the part does not begin aligned */
        unsigned char *at = d->slot[li].buf;
        if ((uintptr_t)p & (d->mem - 1))
            memmove(at, p, len);
        else
            at = (unsigned char *)p;
        pthread_mutex_lock(&d->mu);
        int e = d->err;
        pthread_mutex_unlock(&d->mu);
        if (e) {
            lora_dio_unlend(d, lent);
            return e;
        }
        enqueue(d, li, at, len, off);
        return 0;
    }
    while (len) {
        size_t n = len > DIO_SLOT_BYTES ? (size_t)DIO_SLOT_BYTES : len;
        pthread_mutex_lock(&d->mu);
        while (!d->nfree && !d->err)
            pthread_cond_wait(&d->freed, &d->mu);
        int e = d->err, i = e ? -1 : d->free_[--d->nfree];
        pthread_mutex_unlock(&d->mu);
        if (e)
            return e;
        memcpy(d->slot[i].buf, p, n);
        enqueue(d, i, d->slot[i].buf, n, off);
        p += n;
        len -= n;
        off += n;
    }
    return 0;
}

int lora_dio_finish(lora_dio *d)
{
    if (!d)
        return 0;
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_broadcast(&d->work);
    pthread_mutex_unlock(&d->mu);
    for (int t = 0; t < d->nth; t++)
        pthread_join(d->th[t], NULL);
    int e = d->err;
    dio_free(d);
    return e;
}

/*
 * LD_PRELOAD shim that runs fsx (which has no O_DIRECT option) with
 * O_DIRECT: opens of the path in $PLYFS_ODIRECT_PATH get O_DIRECT added,
 * and pread/pwrite on O_DIRECT descriptors go through a page-aligned
 * bounce buffer (fsx's buffers are not aligned; offsets and lengths are,
 * through its `opsize.align` setting). Everything else is passed through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int wants_direct(const char *path)
{
    const char *want = getenv("PLYFS_ODIRECT_PATH");
    return want && path && strcmp(path, want) == 0;
}

#define OPEN_WRAPPER(name, ...)                                              \
    int name(__VA_ARGS__, int flags, ...)                                    \
    {                                                                        \
        static int (*real)() = 0;                                            \
        mode_t mode = 0;                                                     \
        if (flags & (O_CREAT | O_TMPFILE)) {                                 \
            va_list ap;                                                      \
            va_start(ap, flags);                                             \
            mode = va_arg(ap, mode_t);                                       \
            va_end(ap);                                                      \
        }                                                                    \
        if (!real)                                                           \
            real = (int (*)())dlsym(RTLD_NEXT, #name);

OPEN_WRAPPER(open, const char *path)
    if (wants_direct(path))
        flags |= O_DIRECT;
    return real(path, flags, mode);
}

OPEN_WRAPPER(open64, const char *path)
    if (wants_direct(path))
        flags |= O_DIRECT;
    return real(path, flags, mode);
}

OPEN_WRAPPER(openat, int dirfd, const char *path)
    if (wants_direct(path))
        flags |= O_DIRECT;
    return real(dirfd, path, flags, mode);
}

OPEN_WRAPPER(openat64, int dirfd, const char *path)
    if (wants_direct(path))
        flags |= O_DIRECT;
    return real(dirfd, path, flags, mode);
}

static int is_direct(int fd, const void *buf)
{
    if (((uintptr_t)buf & 4095) == 0)
        return 0;
    int fl = fcntl(fd, F_GETFL);
    return fl >= 0 && (fl & O_DIRECT);
}

static void *bounce(size_t n)
{
    void *p = 0;
    if (posix_memalign(&p, 4096, n ? n : 1) != 0)
        return 0;
    return p;
}

ssize_t pread64(int fd, void *buf, size_t n, off_t off)
{
    static ssize_t (*real)(int, void *, size_t, off_t) = 0;
    if (!real)
        real = (ssize_t (*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    if (!is_direct(fd, buf))
        return real(fd, buf, n, off);
    void *b = bounce(n);
    if (!b)
        return real(fd, buf, n, off);
    ssize_t r = real(fd, b, n, off);
    if (r > 0)
        memcpy(buf, b, (size_t)r);
    free(b);
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off_t) = 0;
    if (!real)
        real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    if (!is_direct(fd, buf))
        return real(fd, buf, n, off);
    void *b = bounce(n);
    if (!b)
        return real(fd, buf, n, off);
    memcpy(b, buf, n);
    ssize_t r = real(fd, b, n, off);
    free(b);
    return r;
}

ssize_t pread(int fd, void *buf, size_t n, off_t off) { return pread64(fd, buf, n, off); }
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return pwrite64(fd, buf, n, off); }

/* SPDX-License-Identifier: MIT */
/*
 * libfault.c: an LD_PRELOAD shim for tests/fault/run.sh that makes the Nth
 * I/O call of a class on a regular file fail (or come back short), so the real
 * `annann` tool, liblmdb included, meets the errors a failing disk gives. It
 * is a test hook, never linked into the library or the tool.
 *
 * Classes and the calls they cover (both the plain and the 64-bit names):
 *   write   write, pwrite, writev, pwritev (LMDB's page and meta writes, blocks.dat,
 *           spill runs, output files)
 *   fsync   fsync, fdatasync
 *   read    read, pread, readv, preadv (input files, blocks.dat by pread, headers)
 *   malloc  malloc, calloc, realloc, aligned_alloc, memalign, posix_memalign
 *           (the tool's, the library's, LMDB's, libc's own), counted from
 *           main on: what the loader and the libraries' constructors
 *           allocate before it is not the tool's to handle. ANNANN_FAULT_ERRNO
 *           does not apply (ENOMEM), nor SHORT.
 * io_uring reads do not pass through libc: the library's own hook covers them
 * (ANNANN_FAULT_OP=uring, src/storage/ioreader.c).
 * Calls on anything but a regular file (terminals, pipes, sockets) are passed
 * through uncounted, so the tool can still print its error.
 *
 * Environment (read once, at load):
 *   ANNANN_FAULT_OP     write | fsync | read (anything else: count only)
 *   ANNANN_FAULT_N      fail the Nth call of that class (1-based); 0: none
 *   ANNANN_FAULT_ERRNO  EIO (default), ENOSPC, EDQUOT, EFBIG, EINTR or a number
 *   ANNANN_FAULT_STICKY 1: every call from the Nth on fails (a full disk stays full)
 *   ANNANN_FAULT_SHORT  1: instead of failing, transfer about half the bytes
 *                       (a multiple of 4096 when the call asked for 8192 or more,
 *                       so O_DIRECT accepts it); calls of fewer than 2 bytes pass
 *   ANNANN_FAULT_COUNT  path: at exit, append "write W fsync F read R fired X"
 *                       (calls seen per class, and whether the fault fired)
 */
/* The shim defines both pread and pread64 (and so on): it must not see the
 * 64-bit renaming that -D_FILE_OFFSET_BITS=64 (meson's default) turns on. */
#undef _FILE_OFFSET_BITS
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

enum { C_WRITE, C_FSYNC, C_READ, C_MALLOC, C_N };
static const char *const cnames[C_N] = { "write", "fsync", "read", "malloc" };

static int f_class = -1;
static uint64_t f_n;
static int f_errno = EIO;
static bool f_sticky, f_short;
static const char *f_count;
static uint64_t f_calls[C_N];
static int f_fired;

__attribute__((constructor)) static void f_init(void)
{
	const char *op = getenv("ANNANN_FAULT_OP");
	for (int c = 0; op && c < C_N; c++)
		if (strcmp(op, cnames[c]) == 0)
			f_class = c;
	const char *s = getenv("ANNANN_FAULT_N");
	f_n = s ? strtoull(s, NULL, 10) : 0;
	s = getenv("ANNANN_FAULT_ERRNO");
	if (s) {
		static const struct { const char *n; int e; } names[] = {
			{ "EIO", EIO }, { "ENOSPC", ENOSPC }, { "EDQUOT", EDQUOT }, { "EFBIG", EFBIG }, { "EINTR", EINTR },
		};
		f_errno = atoi(s);
		for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
			if (strcmp(s, names[i].n) == 0)
				f_errno = names[i].e;
		if (f_errno <= 0)
			f_errno = EIO;
	}
	s = getenv("ANNANN_FAULT_STICKY");
	f_sticky = s && *s == '1';
	s = getenv("ANNANN_FAULT_SHORT");
	f_short = s && *s == '1';
	f_count = getenv("ANNANN_FAULT_COUNT");
}

__attribute__((destructor)) static void f_fini(void)
{
	if (!f_count)
		return;
	FILE *f = fopen(f_count, "a");
	if (!f)
		return;
	fprintf(f, "write %llu fsync %llu read %llu fired %d malloc %llu\n", (unsigned long long)f_calls[C_WRITE],
		(unsigned long long)f_calls[C_FSYNC], (unsigned long long)f_calls[C_READ], f_fired,
		(unsigned long long)f_calls[C_MALLOC]);
	fclose(f);
}

/* The next definition of name (libc's); memcpy because ISO C has no cast
 * from an object pointer to a function pointer. */
#define REAL(ret, name, ...)                                                 \
	static ret (*real_##name)(__VA_ARGS__);                              \
	if (!real_##name) {                                                  \
		void *p_ = dlsym(RTLD_NEXT, #name);                          \
		memcpy(&real_##name, &p_, sizeof p_);                        \
	}

/* The project builds with -fvisibility=hidden; interposers must be seen. */
#define EXPORT __attribute__((visibility("default")))

static bool regular(int fd)
{
	struct stat st;
	int saved = errno;
	bool r = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
	errno = saved;
	return r;
}

/* 0: pass the call through; 1: fail it with f_errno; 2: make it short. */
static int decide(int cls, int fd)
{
	if (!regular(fd))
		return 0;
	uint64_t k = __atomic_add_fetch(&f_calls[cls], 1, __ATOMIC_RELAXED);
	if (cls != f_class || f_n == 0 || k < f_n || (k > f_n && !f_sticky))
		return 0;
	__atomic_store_n(&f_fired, 1, __ATOMIC_RELAXED);
	return f_short ? 2 : 1;
}

static size_t short_len(size_t n)
{
	return n >= 8192 ? n / 2 / 4096 * 4096 : n / 2;
}

/* iov truncated to about half its bytes (into scratch); returns the new count. */
static int short_iov(const struct iovec *iov, int cnt, struct iovec *out)
{
	size_t total = 0;
	for (int i = 0; i < cnt; i++)
		total += iov[i].iov_len;
	size_t want = short_len(total);
	int n = 0;
	for (int i = 0; i < cnt && want > 0 && n < 64; i++) {
		out[n] = iov[i];
		if (out[n].iov_len > want)
			out[n].iov_len = want;
		want -= out[n].iov_len;
		n++;
	}
	return n;
}

static size_t iov_total(const struct iovec *iov, int cnt)
{
	size_t t = 0;
	for (int i = 0; i < cnt; i++)
		t += iov[i].iov_len;
	return t;
}

#define FAIL_OR(cls, fd, bytes, short_call, real_call)                     \
	do {                                                                \
		int d_ = decide(cls, fd);                                   \
		if (d_ == 1) {                                              \
			errno = f_errno;                                    \
			return -1;                                          \
		}                                                           \
		if (d_ == 2 && (bytes) >= 2)                                \
			return short_call;                                  \
		return real_call;                                           \
	} while (0)

EXPORT ssize_t write(int fd, const void *b, size_t n)
{
	REAL(ssize_t, write, int, const void *, size_t);
	FAIL_OR(C_WRITE, fd, n, real_write(fd, b, short_len(n)), real_write(fd, b, n));
}

EXPORT ssize_t pwrite(int fd, const void *b, size_t n, off_t off)
{
	REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
	FAIL_OR(C_WRITE, fd, n, real_pwrite(fd, b, short_len(n), off), real_pwrite(fd, b, n, off));
}

EXPORT ssize_t pwrite64(int fd, const void *b, size_t n, off_t off)
{
	REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
	FAIL_OR(C_WRITE, fd, n, real_pwrite64(fd, b, short_len(n), off), real_pwrite64(fd, b, n, off));
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	REAL(ssize_t, writev, int, const struct iovec *, int);
	struct iovec s[64];
	FAIL_OR(C_WRITE, fd, iov_total(iov, cnt), real_writev(fd, s, short_iov(iov, cnt, s)),
		real_writev(fd, iov, cnt));
}

EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t);
	struct iovec s[64];
	FAIL_OR(C_WRITE, fd, iov_total(iov, cnt), real_pwritev(fd, s, short_iov(iov, cnt, s), off),
		real_pwritev(fd, iov, cnt, off));
}

EXPORT ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
	REAL(ssize_t, pwritev64, int, const struct iovec *, int, off_t);
	struct iovec s[64];
	FAIL_OR(C_WRITE, fd, iov_total(iov, cnt), real_pwritev64(fd, s, short_iov(iov, cnt, s), off),
		real_pwritev64(fd, iov, cnt, off));
}

EXPORT int fsync(int fd)
{
	REAL(int, fsync, int);
	if (decide(C_FSYNC, fd)) {
		errno = f_errno;
		return -1;
	}
	return real_fsync(fd);
}

EXPORT int fdatasync(int fd)
{
	REAL(int, fdatasync, int);
	if (decide(C_FSYNC, fd)) {
		errno = f_errno;
		return -1;
	}
	return real_fdatasync(fd);
}

EXPORT ssize_t read(int fd, void *b, size_t n)
{
	REAL(ssize_t, read, int, void *, size_t);
	FAIL_OR(C_READ, fd, n, real_read(fd, b, short_len(n)), real_read(fd, b, n));
}

EXPORT ssize_t pread(int fd, void *b, size_t n, off_t off)
{
	REAL(ssize_t, pread, int, void *, size_t, off_t);
	FAIL_OR(C_READ, fd, n, real_pread(fd, b, short_len(n), off), real_pread(fd, b, n, off));
}

EXPORT ssize_t pread64(int fd, void *b, size_t n, off_t off)
{
	REAL(ssize_t, pread64, int, void *, size_t, off_t);
	FAIL_OR(C_READ, fd, n, real_pread64(fd, b, short_len(n), off), real_pread64(fd, b, n, off));
}

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
	REAL(ssize_t, readv, int, const struct iovec *, int);
	struct iovec s[64];
	FAIL_OR(C_READ, fd, iov_total(iov, cnt), real_readv(fd, s, short_iov(iov, cnt, s)),
		real_readv(fd, iov, cnt));
}

EXPORT ssize_t preadv(int fd, const struct iovec *iov, int cnt, off_t off)
{
	REAL(ssize_t, preadv, int, const struct iovec *, int, off_t);
	struct iovec s[64];
	FAIL_OR(C_READ, fd, iov_total(iov, cnt), real_preadv(fd, s, short_iov(iov, cnt, s), off),
		real_preadv(fd, iov, cnt, off));
}

EXPORT ssize_t preadv64(int fd, const struct iovec *iov, int cnt, off_t off)
{
	REAL(ssize_t, preadv64, int, const struct iovec *, int, off_t);
	struct iovec s[64];
	FAIL_OR(C_READ, fd, iov_total(iov, cnt), real_preadv64(fd, s, short_iov(iov, cnt, s), off),
		real_preadv64(fd, iov, cnt, off));
}

/* ---- allocations ----------------------------------------------------------
 * alloc_interpose.h's allocators, failing where alloc_fails says. Counting
 * starts when main does: __libc_start_main is interposed to wrap main. */
static int f_in_main;
static int (*real_main)(int, char **, char **);

static int wrapped_main(int argc, char **argv, char **envp)
{
	__atomic_store_n(&f_in_main, 1, __ATOMIC_RELAXED);
	return real_main(argc, argv, envp);
}

typedef int (*start_fn)(int (*)(int, char **, char **), int, char **, void (*)(void), void (*)(void),
			void (*)(void), void *);

EXPORT int __libc_start_main(int (*main_fn)(int, char **, char **), int argc, char **argv, void (*init)(void),
			     void (*fini)(void), void (*rtld_fini)(void), void *stack_end);
EXPORT int __libc_start_main(int (*main_fn)(int, char **, char **), int argc, char **argv, void (*init)(void),
			     void (*fini)(void), void (*rtld_fini)(void), void *stack_end)
{
	start_fn real;
	void *p = dlsym(RTLD_NEXT, "__libc_start_main");
	memcpy(&real, &p, sizeof p);
	real_main = main_fn;
	return real(wrapped_main, argc, argv, init, fini, rtld_fini, stack_end);
}

static bool alloc_fails(void)
{
	if (!__atomic_load_n(&f_in_main, __ATOMIC_RELAXED))
		return false;
	uint64_t k = __atomic_add_fetch(&f_calls[C_MALLOC], 1, __ATOMIC_RELAXED);
	if (f_class != C_MALLOC || f_n == 0 || k < f_n || (k > f_n && !f_sticky))
		return false;
	__atomic_store_n(&f_fired, 1, __ATOMIC_RELAXED);
	errno = ENOMEM;
	return true;
}

#define ALLOC_FAILS() alloc_fails()
#include "../alloc_interpose.h"

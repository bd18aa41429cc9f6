/* SPDX-License-Identifier: MIT */
/*
 * common.c: error formatting, counted allocation, the xoshiro256** generator,
 * the clock and small file helpers shared by every module (see common.h).
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- errors -------------------------------------------------------------- */

const char *ann_strerror(int code)
{
	switch (code) {
	case ANN_OK: return "success";
	case ANN_E_INVAL: return "invalid argument";
	case ANN_E_NOMEM: return "out of memory";
	case ANN_E_BUDGET: return "memory budget too small";
	case ANN_E_IO: return "I/O error";
	case ANN_E_CORRUPT: return "corrupt data";
	case ANN_E_FORMAT: return "unsupported format";
	case ANN_E_BADINPUT: return "malformed input";
	case ANN_E_NOTFOUND: return "not found";
	case ANN_E_UNSUPPORTED: return "unsupported";
	case ANN_E_STATE: return "handle in failed state";
	case ANN_E_EXISTS: return "already exists";
	case ANN_E_CANCELED: return "canceled";
	default: return "unknown error";
	}
}

const char *ann_version(void)
{
	return "0.1.0";
}

static void err_vset(ann_error *err, int code, int sys_errno, const char *fmt, va_list ap)
{
	if (!err)
		return;
	err->code = code;
	err->sys_errno = sys_errno;
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	if (sys_errno) {
		size_t len = strlen(err->msg);
		snprintf(err->msg + len, sizeof err->msg - len, ": %s", strerror(sys_errno));
	}
}

int ann_err(ann_error *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	err_vset(err, code, 0, fmt, ap);
	va_end(ap);
	return code;
}

int ann_err_sys(ann_error *err, int sys_errno, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	/* A system call that ran out of memory (ENOMEM: mmap, fopen, LMDB) is
	 * out of memory to the caller, as an allocation of our own would be. */
	int code = sys_errno == ENOMEM ? ANN_E_NOMEM : ANN_E_IO;
	err_vset(err, code, sys_errno, fmt, ap);
	va_end(ap);
	return code;
}

int ann_err_prefix(ann_error *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	char prefix[256], old[sizeof err->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	size_t plen = strlen(prefix);
	/* A message that names it already (a path inside it too) keeps its text. */
	if (plen && strncmp(err->msg, prefix, plen) == 0 && (err->msg[plen] == ':' || err->msg[plen] == '/')) {
		err->code = code;
		return code;
	}
	memcpy(old, err->msg, sizeof old);
	if (plen > sizeof err->msg - 3)
		plen = sizeof err->msg - 3;
	memcpy(err->msg, prefix, plen);
	memcpy(err->msg + plen, ": ", 2);
	size_t rest = sizeof err->msg - plen - 3;
	size_t olen = strnlen(old, rest);
	memcpy(err->msg + plen + 2, old, olen);
	err->msg[plen + 2 + olen] = '\0';
	err->code = code;
	return code;
}

/* ---- memory --------------------------------------------------------------
 * A 16-byte header before each block records its size so live bytes can be
 * counted; aligned blocks keep the size and the original pointer just below
 * the aligned address. */

static _Atomic int64_t mem_live;
static _Atomic int64_t mem_fail_countdown = -1;
static _Atomic bool mem_fail_sticky;
static _Atomic int64_t mem_failed; /* allocations failed by injection since the last arming */

int64_t ann_mem_live_bytes(void)
{
	return atomic_load(&mem_live);
}

static void mem_arm(int64_t n, bool sticky)
{
	atomic_store(&mem_fail_countdown, -1);
	atomic_store(&mem_failed, 0);
	atomic_store(&mem_fail_sticky, sticky);
	atomic_store(&mem_fail_countdown, n);
}

void ann_mem_fail_after(int64_t n)
{
	mem_arm(n, false);
}

void ann_mem_fail_from(int64_t n)
{
	mem_arm(n, true);
}

int64_t ann_mem_failed(void)
{
	return atomic_load(&mem_failed);
}

static bool mem_should_fail(void)
{
	int64_t c = atomic_load(&mem_fail_countdown);
	while (c >= 0) {
		if (c == 0 && atomic_load(&mem_fail_sticky)) {
			atomic_fetch_add(&mem_failed, 1);
			return true;
		}
		if (atomic_compare_exchange_weak(&mem_fail_countdown, &c, c - 1)) {
			if (c == 0)
				atomic_fetch_add(&mem_failed, 1);
			return c == 0;
		}
	}
	return false;
}

#define MEM_HDR 16u

void *ann_malloc(size_t n)
{
	if (mem_should_fail() || n > SIZE_MAX - MEM_HDR)
		return NULL;
	uint8_t *p = malloc(n + MEM_HDR);
	if (!p)
		return NULL;
	memcpy(p, &n, sizeof n);
	atomic_fetch_add(&mem_live, (int64_t)n);
	return p + MEM_HDR;
}

void *ann_calloc(size_t count, size_t size)
{
	size_t n;
	if (!ann_mul_ok(count, size, &n))
		return NULL;
	void *p = ann_malloc(n);
	if (p)
		memset(p, 0, n);
	return p;
}

void *ann_realloc(void *p, size_t n)
{
	if (!p)
		return ann_malloc(n);
	if (mem_should_fail() || n > SIZE_MAX - MEM_HDR)
		return NULL;
	uint8_t *base = (uint8_t *)p - MEM_HDR;
	size_t old;
	memcpy(&old, base, sizeof old);
	uint8_t *q = realloc(base, n + MEM_HDR);
	if (!q)
		return NULL;
	memcpy(q, &n, sizeof n);
	atomic_fetch_add(&mem_live, (int64_t)n - (int64_t)old);
	return q + MEM_HDR;
}

void ann_free(void *p)
{
	if (!p)
		return;
	uint8_t *base = (uint8_t *)p - MEM_HDR;
	size_t n;
	memcpy(&n, base, sizeof n);
	atomic_fetch_sub(&mem_live, (int64_t)n);
	free(base);
}

void *ann_aligned_alloc(size_t align, size_t n)
{
	if (align < MEM_HDR)
		align = MEM_HDR;
	if (mem_should_fail() || n > SIZE_MAX - 2 * align)
		return NULL;
	size_t rounded = ANN_ALIGN_UP(n, align);
	void *raw = NULL;
	/* The header sits in the alignment slack just before the returned block. */
	if (posix_memalign(&raw, align, rounded + align) != 0)
		return NULL;
	uint8_t *p = (uint8_t *)raw + align;
	memcpy(p - MEM_HDR, &rounded, sizeof rounded);
	memcpy(p - MEM_HDR + 8, &raw, sizeof raw);
	atomic_fetch_add(&mem_live, (int64_t)rounded);
	return p;
}

void ann_aligned_free(void *p)
{
	if (!p)
		return;
	size_t n;
	void *raw;
	memcpy(&n, (uint8_t *)p - MEM_HDR, sizeof n);
	memcpy(&raw, (uint8_t *)p - MEM_HDR + 8, sizeof raw);
	atomic_fetch_sub(&mem_live, (int64_t)n);
	free(raw);
}

/* ---- random numbers ------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void ann_rng_seed(ann_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t ann_rng_next(ann_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

double ann_rng_uniform(ann_rng *r)
{
	return (double)(ann_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t ann_rng_below(ann_rng *r, uint64_t n)
{
	/* Lemire's nearly-divisionless method with rejection. */
	__extension__ typedef unsigned __int128 u128;
	u128 m = (u128)ann_rng_next(r) * n;
	uint64_t low = (uint64_t)m;
	if (low < n) {
		uint64_t t = (0 - n) % n;
		while (low < t) {
			m = (u128)ann_rng_next(r) * n;
			low = (uint64_t)m;
		}
	}
	return (uint64_t)(m >> 64);
}

double ann_rng_normal(ann_rng *r)
{
	double u, v, s;
	do {
		u = 2.0 * ann_rng_uniform(r) - 1.0;
		v = 2.0 * ann_rng_uniform(r) - 1.0;
		s = u * u + v * v;
	} while (s >= 1.0 || s == 0.0);
	/* Only one of the pair is used, so the generator has no hidden state. */
	return u * sqrt(-2.0 * log(s) / s);
}

void ann_rng_fork(ann_rng *r, uint64_t stream, ann_rng *out)
{
	uint64_t x = ann_rng_next(r) ^ (stream * 0xd1b54a32d192ed03ull);
	for (int i = 0; i < 4; i++)
		out->s[i] = splitmix64(&x);
}

/* ---- time and files ------------------------------------------------------ */

uint64_t ann_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int ann_fsync_dir(const char *path, ann_error *err)
{
	struct stat st;
	char buf[4096];
	const char *dir = path;
	if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
		snprintf(buf, sizeof buf, "%s", path);
		dir = dirname(buf);
	}
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return ann_err_sys(err, errno, "%s: cannot open directory", dir);
	int rc = fsync(fd);
	int e = errno;
	close(fd);
	if (rc != 0)
		return ann_err_sys(err, e, "%s: fsync of directory failed", dir);
	return ANN_OK;
}

int ann_pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *what, ann_error *err)
{
	const uint8_t *p = buf;
	while (n > 0) {
		ssize_t w = pwrite(fd, p, n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return ann_err_sys(err, errno, "%s: write of %zu bytes at offset %llu failed", what, n,
					   (unsigned long long)off);
		}
		p += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return ANN_OK;
}

int ann_pread_all(int fd, void *buf, size_t n, uint64_t off, const char *what, ann_error *err)
{
	uint8_t *p = buf;
	while (n > 0) {
		ssize_t r = pread(fd, p, n, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return ann_err_sys(err, errno, "%s: read of %zu bytes at offset %llu failed", what, n,
					   (unsigned long long)off);
		}
		if (r == 0)
			return ann_err(err, ANN_E_BADINPUT, "%s: file ends at offset %llu, %zu more bytes expected",
				       what, (unsigned long long)off, n);
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return ANN_OK;
}

int ann_create_new(const char *path, ann_error *err)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd >= 0)
		return fd;
	if (errno == EEXIST)
		return ann_err(err, ANN_E_EXISTS, "%s: cannot create: something (a file or a link) is already there",
			       path);
	return ann_err_sys(err, errno, "%s: cannot create", path);
}

int ann_create_temp(const char *path, bool dir, char **tmp_out, ann_error *err)
{
	*tmp_out = NULL;
	size_t cap = strlen(path) + 64;
	char *tmp = ann_malloc(cap);
	if (!tmp)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", path);
	snprintf(tmp, cap, "%s.tmp.%ld", path, (long)getpid());
	for (int attempt = 0; attempt < 16; attempt++) {
		if (attempt > 0) {
			uint64_t r = 0;
			if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
				r = ann_now_ns() * 0x9e3779b97f4a7c15ull;
			snprintf(tmp, cap, "%s.tmp.%ld.%016llx", path, (long)getpid(), (unsigned long long)r);
		}
		int fd = dir ? mkdir(tmp, 0755) : open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (fd >= 0) {
			*tmp_out = tmp;
			return fd;
		}
		if (errno != EEXIST) {
			int rc = ann_err_sys(err, errno, "%s: cannot create", tmp);
			ann_free(tmp);
			return rc;
		}
	}
	int rc = ann_err(err, ANN_E_EXISTS, "%s: cannot create a temporary beside it: 16 names were taken", path);
	ann_free(tmp);
	return rc;
}

/* SPDX-License-Identifier: MIT */
/*
 * common.h: what every module of libannann shares and nothing more: error
 * reporting into ann_error, the allocation wrappers (counted, with failure
 * injection for tests), the seeded random generator, little-endian load and
 * store helpers, and a monotonic clock. No module-specific logic lives here.
 */
#ifndef ANN_COMMON_H
#define ANN_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "annann.h"

#if defined(__GNUC__)
#define ANN_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define ANN_LIKELY(x) __builtin_expect(!!(x), 1)
#define ANN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define ANN_INTERNAL __attribute__((visibility("hidden")))
#else
#define ANN_PRINTF(fmt, args)
#define ANN_LIKELY(x) (x)
#define ANN_UNLIKELY(x) (x)
#define ANN_INTERNAL
#endif

#define ANN_MIN(a, b) ((a) < (b) ? (a) : (b))
#define ANN_MAX(a, b) ((a) > (b) ? (a) : (b))
#define ANN_ALIGN_UP(x, a) ((((x) + (a)-1) / (a)) * (a))
#define ANN_PAGE 4096u

/* ---- errors --------------------------------------------------------------
 * ann_err() fills *err (if not NULL) with code, errno 0 and a formatted
 * message, and returns code, so `return ann_err(err, ANN_E_INVAL, "...")`.
 * ann_err_sys() also records errno and appends strerror(errno); its code is
 * ANN_E_IO, or ANN_E_NOMEM when errno is ENOMEM.
 * ann_err_prefix() prepends "prefix: " to an already-set message (used to add
 * the file name or partition number as an error travels up), unless the
 * message begins with prefix already, followed by ':' or '/' (a path under
 * it). */
int ann_err(ann_error *err, int code, const char *fmt, ...) ANN_PRINTF(3, 4);
int ann_err_sys(ann_error *err, int sys_errno, const char *fmt, ...) ANN_PRINTF(3, 4);
int ann_err_prefix(ann_error *err, int code, const char *fmt, ...) ANN_PRINTF(3, 4);

/* Forward a negative status from expr. */
#define ANN_TRY(expr)                                                          \
	do {                                                                   \
		int ann_try_rc_ = (expr);                                      \
		if (ann_try_rc_ < 0)                                           \
			return ann_try_rc_;                                    \
	} while (0)
/* Set rc from expr and jump to the function's `fail:` label when negative. */
#define ANN_CHECK(rc, expr)                                                    \
	do {                                                                   \
		(rc) = (expr);                                                 \
		if ((rc) < 0)                                                  \
			goto fail;                                             \
	} while (0)

/* ---- memory --------------------------------------------------------------
 * Every allocation of the library goes through these so that tests can count
 * live bytes and inject a failure at the N-th allocation. ann_malloc(0)
 * returns a unique non-NULL pointer. ann_aligned_alloc rounds n up to a
 * multiple of align (a power of two >= sizeof(void *)). */
void *ann_malloc(size_t n);
void *ann_calloc(size_t count, size_t size);
void *ann_realloc(void *p, size_t n);
void ann_free(void *p);
void *ann_aligned_alloc(size_t align, size_t n);
void ann_aligned_free(void *p);
/* Overflow-checked count*size; returns false on overflow. */
/* A spin-wait hint to the CPU (a busy-poll's loop body). */
static inline void ann_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Float vector components the index accepts: finite and within +-2^50
 * (1.1e15). Beyond it the squared distances of float arithmetic overflow
 * (k-means then puts every row in one partition, and distances compare as
 * infinities). Files (ann_vreader), inserts and queries are checked. */
#define ANN_F32_INPUT_MAX 0x1p50f
static inline bool ann_f32_input_ok(float v)
{
	return v >= -ANN_F32_INPUT_MAX && v <= ANN_F32_INPUT_MAX; /* false for NaN */
}

static inline bool ann_mul_ok(size_t a, size_t b, size_t *out)
{
	return !__builtin_mul_overflow(a, b, out);
}

/* Test hooks: live bytes allocated through the wrappers, and failure
 * injection: after ann_mem_fail_after(n), the (n+1)-th allocation from now
 * fails (returns NULL); n < 0 disables. Process-wide, for tests only. */
int64_t ann_mem_live_bytes(void);
void ann_mem_fail_after(int64_t n);
/* The same, but every allocation from the (n+1)-th on fails until the next
 * ann_mem_fail_after or ann_mem_fail_from (a memory that stays exhausted). */
void ann_mem_fail_from(int64_t n);
/* Allocations failed by injection since the last arming. */
int64_t ann_mem_failed(void);

/* ---- random numbers ------------------------------------------------------
 * xoshiro256** seeded through splitmix64 (Blackman & Vigna). Same seed, same
 * sequence on every machine. ann_rng_normal uses the Marsaglia polar method
 * with doubles only, so results are bit-identical across x86-64 builds. */
typedef struct ann_rng {
	uint64_t s[4];
} ann_rng;

void ann_rng_seed(ann_rng *r, uint64_t seed);
uint64_t ann_rng_next(ann_rng *r);
/* Uniform double in [0, 1) with 53 random bits. */
double ann_rng_uniform(ann_rng *r);
/* Uniform integer in [0, n), n > 0, without modulo bias. */
uint64_t ann_rng_below(ann_rng *r, uint64_t n);
/* Standard normal deviate. */
double ann_rng_normal(ann_rng *r);
/* Derive an independent stream (for per-thread or per-phase generators). */
void ann_rng_fork(ann_rng *r, uint64_t stream, ann_rng *out);

/* ---- little-endian encode and decode ------------------------------------ */
static inline void ann_st16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void ann_st32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void ann_st64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t ann_ld16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t ann_ld32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}
static inline uint64_t ann_ld64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}
static inline void ann_stf32(uint8_t *p, float f)
{
	uint32_t v;
	memcpy(&v, &f, 4);
	ann_st32(p, v);
}
static inline float ann_ldf32(const uint8_t *p)
{
	uint32_t v = ann_ld32(p);
	float f;
	memcpy(&f, &v, 4);
	return f;
}

/* ---- time ---------------------------------------------------------------- */
/* Monotonic clock in nanoseconds. */
uint64_t ann_now_ns(void);

/* ---- files --------------------------------------------------------------- */
/* fsync the directory containing path (or path itself if it is a directory),
 * so a rename inside it is durable. */
int ann_fsync_dir(const char *path, ann_error *err);
/* Write all n bytes at offset, retrying short writes and EINTR. */
int ann_pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *what, ann_error *err);
/* Read exactly n bytes at offset; a short read is ANN_E_BADINPUT naming what. */
int ann_pread_all(int fd, void *buf, size_t n, uint64_t off, const char *what, ann_error *err);
/* Creates a new temporary beside path, for writing then renaming over path:
 * "path.tmp.<pid>", or "path.tmp.<pid>.<random>" when that name is taken.
 * Never opens, follows or truncates anything already there (O_CREAT |
 * O_EXCL | O_NOFOLLOW; mkdir for a directory): a file or symbolic link
 * planted at the name is left alone (issue 13 D5). dir: make a directory
 * (mode 0755) and return 0, else open a file (mode 0644) and return its
 * descriptor. *tmp_out gets the name (ann_free). */
int ann_create_temp(const char *path, bool dir, char **tmp_out, ann_error *err);
/* Creates (O_CREAT | O_EXCL | O_NOFOLLOW) and opens the new file path for
 * reading and writing; a file or link already at path is ANN_E_EXISTS. */
int ann_create_new(const char *path, ann_error *err);

#endif /* ANN_COMMON_H */

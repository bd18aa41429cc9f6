/* SPDX-License-Identifier: MIT */
/*
 * testutil.h: assertion macros that print both sides and file:line, the
 * seeded generator every test uses (fixed seed, printed on failure,
 * overridable with ANNANN_TEST_SEED), and temporary-directory helpers.
 * Exit status: 0 pass, 1 fail, 77 skip (meson's convention).
 */
#ifndef ANN_TESTUTIL_H
#define ANN_TESTUTIL_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

#define T_EXIT_SKIP 77

extern uint64_t t_seed;
extern const char *t_current;

/* NULL needle: true; else whether msg contains it. */
bool t_contains(const char *msg, const char *needle);
/* Call first in main: reads ANNANN_TEST_SEED, prints the seed. */
void t_init(const char *name, ann_rng *rng);
void t_fail_exit(void) __attribute__((noreturn));

#define T_FAIL(...)                                                                      \
	do {                                                                             \
		fprintf(stderr, "%s:%d: FAIL in %s: ", __FILE__, __LINE__, t_current);   \
		fprintf(stderr, __VA_ARGS__);                                            \
		fprintf(stderr, "\n");                                                   \
		t_fail_exit();                                                           \
	} while (0)

#define ASSERT_TRUE(c)                                                                   \
	do {                                                                             \
		if (!(c))                                                                \
			T_FAIL("expected %s", #c);                                       \
	} while (0)
#define ASSERT_EQ(a, b)                                                                  \
	do {                                                                             \
		long long ta_ = (long long)(a), tb_ = (long long)(b);                    \
		if (ta_ != tb_)                                                          \
			T_FAIL("%s == %s: %lld != %lld", #a, #b, ta_, tb_);              \
	} while (0)
#define ASSERT_NE(a, b)                                                                  \
	do {                                                                             \
		long long ta_ = (long long)(a), tb_ = (long long)(b);                    \
		if (ta_ == tb_)                                                          \
			T_FAIL("%s != %s: both %lld", #a, #b, ta_);                      \
	} while (0)
#define ASSERT_LT(a, b)                                                                  \
	do {                                                                             \
		double ta_ = (double)(a), tb_ = (double)(b);                             \
		if (!(ta_ < tb_))                                                        \
			T_FAIL("%s < %s: %g >= %g", #a, #b, ta_, tb_);                   \
	} while (0)
#define ASSERT_LE(a, b)                                                                  \
	do {                                                                             \
		double ta_ = (double)(a), tb_ = (double)(b);                             \
		if (!(ta_ <= tb_))                                                       \
			T_FAIL("%s <= %s: %g > %g", #a, #b, ta_, tb_);                   \
	} while (0)
/* |a - b| <= tol * max(1, |b|) */
#define ASSERT_NEAR(a, b, tol)                                                           \
	do {                                                                             \
		double ta_ = (double)(a), tb_ = (double)(b), tt_ = (double)(tol);        \
		if (!(fabs(ta_ - tb_) <= tt_ * fmax(1.0, fabs(tb_))))                    \
			T_FAIL("%s ~= %s: %.9g vs %.9g (tol %g)", #a, #b, ta_, tb_, tt_); \
	} while (0)
/* An ann call must succeed; prints the error message otherwise. */
#define ASSERT_OK(expr)                                                                  \
	do {                                                                             \
		ann_error te_ = {0};                                                     \
		(void)te_;                                                               \
		int trc_ = (expr);                                                       \
		if (trc_ < 0)                                                            \
			T_FAIL("%s returned %d (%s)", #expr, trc_, ann_strerror(trc_));  \
	} while (0)
/* An ann call with &e as its error must fail with code; e.msg must contain needle. */
#define ASSERT_ERR(expr, e, code, needle)                                                \
	do {                                                                             \
		int trc_ = (expr);                                                       \
		if (trc_ != (code))                                                      \
			T_FAIL("%s returned %d (%s), expected %d; msg: %s", #expr, trc_, \
			       ann_strerror(trc_), (int)(code), (e).msg);                \
		if (!t_contains((e).msg, (needle)))                                      \
			T_FAIL("message of %s lacks \"%s\": %s", #expr, (const char *)(needle), (e).msg); \
	} while (0)

/* Creates a fresh temporary directory (removed by t_rmtree); returns a
 * static-lifetime malloc'd path. */
char *t_tmpdir(void);
/* Joins dir and name into a malloc'd path. */
char *t_path(const char *dir, const char *name);
/* rm -rf path. */
void t_rmtree(const char *path);
/* Writes n bytes to a new file. */
void t_write_file(const char *path, const void *data, size_t n);
/* Reads a whole file (malloc'd); *n gets its size. */
void *t_read_file(const char *path, size_t *n);
/* Fills x with n uniform floats in [lo, hi). */
void t_fill_uniform(ann_rng *r, float *x, size_t n, float lo, float hi);
/* A 4096-aligned buffer of len deterministic bytes of (pid, gen, salt),
 * starting with pid and gen as LE u32; NULL when out of memory (the
 * caller may run under allocation-failure injection). */
uint8_t *t_make_block(uint32_t pid, uint32_t gen, uint64_t salt, size_t len);
/* n base rows and nq query rows (dim floats each) of annann gen's SIKT-like
 * mixture with the given clusters and seed. */
void t_gen_mixture(float *base, size_t n, float *queries, size_t nq, uint32_t dim, uint32_t clusters, uint64_t seed);

#endif

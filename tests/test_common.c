/* SPDX-License-Identifier: MIT */
/* Description: common.c: error formatting, counted allocation and failure
 * injection, the seeded generator (fixed reference values), LE helpers. */
#include "testutil.h"

static void test_errors(void)
{
	ann_error e = {0};
	ASSERT_EQ(ann_err(&e, ANN_E_BADINPUT, "base.fbin: vector %d: dimension %d, header says %d", 1834, 96, 128),
		  ANN_E_BADINPUT);
	ASSERT_EQ(e.code, ANN_E_BADINPUT);
	ASSERT_TRUE(strcmp(e.msg, "base.fbin: vector 1834: dimension 96, header says 128") == 0);
	ann_err_prefix(&e, ANN_E_BADINPUT, "build");
	ASSERT_TRUE(strncmp(e.msg, "build: base.fbin", 16) == 0);
	/* a message that names the prefix (or a path under it) already keeps its text */
	ann_err(&e, ANN_E_NOMEM, "/x/idx/catalog.lmdb: out of memory");
	ann_err_prefix(&e, ANN_E_NOMEM, "/x/idx");
	ASSERT_TRUE(strcmp(e.msg, "/x/idx/catalog.lmdb: out of memory") == 0);
	ann_err_prefix(&e, ANN_E_NOMEM, "/x/idx/catalog.lmdb");
	ASSERT_TRUE(strcmp(e.msg, "/x/idx/catalog.lmdb: out of memory") == 0);
	ann_err_prefix(&e, ANN_E_NOMEM, "/x/id");
	ASSERT_TRUE(strcmp(e.msg, "/x/id: /x/idx/catalog.lmdb: out of memory") == 0);
	ASSERT_EQ(ann_err_sys(&e, 2, "x"), ANN_E_IO);
	ASSERT_EQ(e.sys_errno, 2);
	ASSERT_TRUE(strstr(e.msg, "No such file") != NULL);
	ASSERT_EQ(ann_err(NULL, ANN_E_INVAL, "ignored"), ANN_E_INVAL);
	for (int c = 0; c >= -11; c--)
		ASSERT_TRUE(strcmp(ann_strerror(c), "unknown error") != 0);
	ASSERT_TRUE(strcmp(ann_strerror(-999), "unknown error") == 0);
}

static void test_mem(void)
{
	int64_t base = ann_mem_live_bytes();
	void *p = ann_malloc(100);
	ASSERT_EQ(ann_mem_live_bytes() - base, 100);
	p = ann_realloc(p, 300);
	ASSERT_EQ(ann_mem_live_bytes() - base, 300);
	void *a = ann_aligned_alloc(4096, 5000);
	ASSERT_EQ((uintptr_t)a % 4096, 0);
	ASSERT_EQ(ann_mem_live_bytes() - base, 300 + 8192);
	ann_aligned_free(a);
	ann_free(p);
	ASSERT_EQ(ann_mem_live_bytes(), base);
	ann_mem_fail_after(2);
	void *x1 = ann_malloc(1), *x2 = ann_malloc(1), *x3 = ann_malloc(1), *x4 = ann_malloc(1);
	ASSERT_TRUE(x1 && x2 && !x3 && x4);
	ann_mem_fail_after(-1);
	ann_free(x1);
	ann_free(x2);
	ann_free(x4);
	ASSERT_TRUE(ann_calloc(SIZE_MAX / 2, 4) == NULL);
}

static void test_rng(void)
{
	ann_rng r, r2;
	ann_rng_seed(&r, 42);
	ann_rng_seed(&r2, 42);
	for (int i = 0; i < 1000; i++)
		ASSERT_EQ(ann_rng_next(&r), ann_rng_next(&r2));
	/* Reference: xoshiro256** seeded by splitmix64(42); first output. The
	 * value pins the generator so data sets stay byte-identical. */
	ann_rng_seed(&r, 42);
	uint64_t first = ann_rng_next(&r);
	ASSERT_EQ(first, 0x15780b2e0c2ec716ull); /* independent Python model of the same algorithm */
	printf("first output for seed 42: %#llx\n", (unsigned long long)first);
	double sum = 0, sum2 = 0;
	int n = 200000;
	uint64_t hist[10] = {0};
	for (int i = 0; i < n; i++) {
		double g = ann_rng_normal(&r);
		sum += g;
		sum2 += g * g;
		hist[ann_rng_below(&r, 10)]++;
	}
	ASSERT_NEAR(sum / n, 0.0, 0.01);
	ASSERT_NEAR(sum2 / n, 1.0, 0.02);
	for (int i = 0; i < 10; i++)
		ASSERT_NEAR(hist[i] / (double)n, 0.1, 0.01);
}

static void test_le(void)
{
	uint8_t b[8];
	ann_st32(b, 0xBEEFC0DEu);
	ASSERT_EQ(b[0], 0xDE);
	ASSERT_EQ(ann_ld32(b), 0xBEEFC0DEu);
	ann_st64(b, 0x0102030405060708ull);
	ASSERT_EQ(b[0], 8);
	ASSERT_EQ(ann_ld64(b), 0x0102030405060708ull);
	ann_stf32(b, -1.5f);
	ASSERT_TRUE(ann_ldf32(b) == -1.5f);
}

int main(void)
{
	t_init("test_common", NULL);
	test_errors();
	test_mem();
	test_rng();
	test_le();
	return 0;
}

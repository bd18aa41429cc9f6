/* SPDX-License-Identifier: MIT */
/* Description: spill.c: records bucketed through many small sorted runs come
 * back per partition, complete and in arrival order; budget errors. */
#include "spill.h"
#include "testutil.h"

#include <unistd.h>

static void test_roundtrip(ann_rng *rng, const char *dir)
{
	const uint32_t nparts = 37;
	const size_t rec = 13, n = 20000;
	char *path = t_path(dir, "spill.bin");
	ann_spill *s;
	ann_error e = {0};
	/* A budget of ~300 records forces ~70 runs. */
	ASSERT_OK(ann_spill_open(path, nparts, rec, 300 * (rec + 16), &s, &e));
	uint32_t *parts = malloc(n * sizeof *parts);
	uint8_t *pay = malloc(n * rec);
	for (size_t i = 0; i < n; i++) {
		/* skewed partition sizes, partition 5 stays empty */
		uint32_t p = (uint32_t)(ann_rng_below(rng, 4) ? ann_rng_below(rng, 8) : ann_rng_below(rng, nparts));
		if (p == 5)
			p = 6;
		parts[i] = p;
		for (size_t j = 0; j < rec; j++)
			pay[i * rec + j] = (uint8_t)ann_rng_next(rng);
		ASSERT_OK(ann_spill_add(s, p, (int64_t)i * 3 - 7, pay + i * rec, &e));
	}
	ASSERT_OK(ann_spill_finish(s, &e));
	ASSERT_EQ(ann_spill_total(s), n);
	ASSERT_EQ(ann_spill_count(s, 5), 0);
	uint64_t maxc = 0;
	for (uint32_t p = 0; p < nparts; p++) {
		uint64_t c = ann_spill_count(s, p);
		maxc = c > maxc ? c : maxc;
		int64_t *ids = malloc((c + 1) * sizeof *ids);
		uint8_t *got = malloc((c + 1) * rec);
		ASSERT_OK(ann_spill_read(s, p, ids, got, &e));
		size_t k = 0;
		for (size_t i = 0; i < n; i++) {
			if (parts[i] != p)
				continue;
			ASSERT_EQ(ids[k], (int64_t)i * 3 - 7);
			ASSERT_TRUE(memcmp(got + k * rec, pay + i * rec, rec) == 0);
			k++;
		}
		ASSERT_EQ(k, c);
		free(ids);
		free(got);
	}
	ASSERT_EQ(ann_spill_max_count(s), maxc);
	ann_spill_close(s);
	ASSERT_TRUE(access(path, F_OK) != 0); /* the spill file is removed */
	free(parts);
	free(pay);
	free(path);
}

static void test_errors(const char *dir)
{
	char *path = t_path(dir, "small.bin");
	ann_spill *s;
	ann_error e = {0};
	ASSERT_ERR(ann_spill_open(path, 4, 128, 1000, &s, &e), e, ANN_E_BUDGET, "at least");
	ASSERT_TRUE(s == NULL);
	ASSERT_OK(ann_spill_open(path, 4, 4, 1 << 16, &s, &e));
	uint8_t v[4] = {1, 2, 3, 4};
	ASSERT_ERR(ann_spill_add(s, 4, 1, v, &e), e, ANN_E_INVAL, "out of range");
	ASSERT_OK(ann_spill_add(s, 3, 1, v, &e));
	ASSERT_ERR(ann_spill_read(s, 3, NULL, NULL, &e), e, ANN_E_INVAL, "before finish");
	ann_spill_close(s);
	char *bad = t_path(dir, "no/such/dir/x");
	ASSERT_ERR(ann_spill_open(bad, 4, 4, 1 << 16, &s, &e), e, ANN_E_IO, "no/such/dir");
	free(bad);
	free(path);
}

int main(void)
{
	ann_rng rng;
	t_init("test_spill", &rng);
	char *dir = t_tmpdir();
	test_roundtrip(&rng, dir);
	test_errors(dir);
	t_rmtree(dir);
	free(dir);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/* Description: spill.c: records bucketed through many small sorted runs come
 * back per partition, complete and in arrival order; budget errors. */
#include "spill.h"
#include "testutil.h"

#include <sys/stat.h>
#include <unistd.h>

static void test_roundtrip(ann_rng *rng, const char *dir)
{
	const uint32_t nparts = 37;
	const size_t rec = 13, n = 20000;
	char *path = t_path(dir, "spill.bin");
	ann_spill *s;
	ann_error e = {0};
	/* A budget of ~300 records forces ~70 runs. */
	ASSERT_OK(ann_spill_open(path, nparts, rec, 300 * (rec + 16), 0, &s, &e));
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
	ASSERT_ERR(ann_spill_open(path, 4, 128, 1000, 0, &s, &e), e, ANN_E_BUDGET, "at least");
	ASSERT_TRUE(s == NULL);
	ASSERT_OK(ann_spill_open(path, 4, 4, 1 << 16, 0, &s, &e));
	uint8_t v[4] = {1, 2, 3, 4};
	ASSERT_ERR(ann_spill_add(s, 4, 1, v, &e), e, ANN_E_INVAL, "out of range");
	ASSERT_OK(ann_spill_add(s, 3, 1, v, &e));
	ASSERT_ERR(ann_spill_read(s, 3, NULL, NULL, &e), e, ANN_E_INVAL, "before finish");
	ann_spill_close(s);
	char *bad = t_path(dir, "no/such/dir/x");
	ASSERT_ERR(ann_spill_open(bad, 4, 4, 1 << 16, 0, &s, &e), e, ANN_E_IO, "no/such/dir");
	free(bad);
	free(path);
}

/* Issue 13 D10: the buffer is min(budget, data); D5: never through a link. */
static void test_hostile(const char *dir)
{
	char *path = t_path(dir, "big.bin");
	ann_spill *s;
	ann_error e = {0};
	int64_t live = ann_mem_live_bytes();
	/* 100 GiB of budget for 20,000 records of 128 bytes: ~3 MiB, not 100 GiB. */
	ASSERT_OK(ann_spill_open(path, 20, 128, (size_t)100 << 30, 20000, &s, &e));
	ASSERT_LT(ann_mem_live_bytes() - live, (int64_t)8 << 20);
	uint8_t v[128] = {7};
	for (int64_t i = 0; i < 20000; i++)
		ASSERT_OK(ann_spill_add(s, (uint32_t)(i % 20), i, v, &e));
	ASSERT_OK(ann_spill_finish(s, &e));
	ASSERT_EQ(ann_spill_total(s), 20000);
	ann_spill_close(s);
	/* Fewer records than the 64-record minimum: fine when that is all. */
	ASSERT_OK(ann_spill_open(path, 2, 16, 1 << 10, 5, &s, &e));
	for (int64_t i = 0; i < 5; i++)
		ASSERT_OK(ann_spill_add(s, 1, i, v, &e));
	ASSERT_OK(ann_spill_finish(s, &e));
	int64_t ids[5];
	uint8_t pay[5 * 16];
	ASSERT_OK(ann_spill_read(s, 1, ids, pay, &e));
	ASSERT_EQ(ids[4], 4);
	ann_spill_close(s);
	/* A file or a link already at the name is refused and left alone. */
	char *victim = t_path(dir, "victim");
	t_write_file(victim, "VICTIM", 6);
	ASSERT_TRUE(symlink(victim, path) == 0);
	ASSERT_ERR(ann_spill_open(path, 4, 4, 1 << 16, 0, &s, &e), e, ANN_E_EXISTS, "already there");
	size_t n;
	char *got = t_read_file(victim, &n);
	ASSERT_TRUE(n == 6 && memcmp(got, "VICTIM", 6) == 0);
	free(got);
	unlink(path);
	free(victim);
	free(path);
}

/* Checkpoints (the resumable build): a spill reopened at a checkpoint drops
 * the runs written after it, takes the rest of the records again, and gives
 * back every partition complete and in arrival order; a damaged checkpoint
 * is refused and the file left alone. */
static void test_checkpoint(ann_rng *rng, const char *dir)
{
	const uint32_t nparts = 11;
	const size_t rec = 6, n = 5000, cut = 2100;
	char *path = t_path(dir, "ckpt.bin");
	ann_spill *s;
	ann_error e = {0};
	uint32_t *parts = malloc(n * sizeof *parts);
	uint8_t *pay = malloc(n * rec);
	for (size_t i = 0; i < n; i++) {
		parts[i] = (uint32_t)ann_rng_below(rng, nparts);
		for (size_t j = 0; j < rec; j++)
			pay[i * rec + j] = (uint8_t)ann_rng_next(rng);
	}
	/* ~200 records per run: runs end mid-way, then a sync at record `cut` */
	ASSERT_OK(ann_spill_open(path, nparts, rec, 200 * (rec + 16), n, &s, &e));
	ann_spill_keep(s);
	size_t cap0 = ann_spill_room(s);
	ASSERT_OK(ann_spill_add(s, parts[0], 0, pay, &e));
	ASSERT_EQ(ann_spill_room(s), cap0 - 1);
	for (size_t i = 1; i < cut; i++)
		ASSERT_OK(ann_spill_add(s, parts[i], (int64_t)i, pay + i * rec, &e));
	ASSERT_OK(ann_spill_sync(s, &e));
	ASSERT_EQ(ann_spill_room(s), cap0); /* the buffer is empty after a sync */
	uint8_t *blob;
	size_t len;
	ASSERT_OK(ann_spill_checkpoint(s, &blob, &len, &e));
	/* more runs after the checkpoint, then the "kill" */
	for (size_t i = cut; i < cut + 700; i++)
		ASSERT_OK(ann_spill_add(s, parts[i], (int64_t)i, pay + i * rec, &e));
	ann_spill_close(s);
	ASSERT_TRUE(access(path, F_OK) == 0); /* kept */
	/* a damaged checkpoint: refused, nothing truncated or removed */
	struct stat before;
	ASSERT_TRUE(stat(path, &before) == 0);
	blob[len - 1] ^= 1; /* a run table entry */
	ASSERT_ERR(ann_spill_resume(path, nparts, rec, 1 << 16, n, blob, len, &s, &e), e, ANN_E_CORRUPT, "inconsistent");
	ASSERT_ERR(ann_spill_resume(path, nparts + 1, rec, 1 << 16, n, blob, len, &s, &e), e, ANN_E_CORRUPT,
		   "another layout");
	blob[len - 1] ^= 1;
	struct stat after;
	ASSERT_TRUE(stat(path, &after) == 0 && after.st_size == before.st_size);
	/* resume with another budget (the buffer is not part of a checkpoint) */
	ASSERT_OK(ann_spill_resume(path, nparts, rec, 1 << 16, n, blob, len, &s, &e));
	ann_free(blob);
	ASSERT_EQ(ann_spill_total(s), cut);
	for (size_t i = cut; i < n; i++)
		ASSERT_OK(ann_spill_add(s, parts[i], (int64_t)i, pay + i * rec, &e));
	ASSERT_OK(ann_spill_finish(s, &e));
	ASSERT_EQ(ann_spill_total(s), n);
	for (uint32_t p = 0; p < nparts; p++) {
		uint64_t c = ann_spill_count(s, p);
		int64_t *ids = malloc((c + 1) * sizeof *ids);
		uint8_t *got = malloc((c + 1) * rec);
		ASSERT_OK(ann_spill_read(s, p, ids, got, &e));
		size_t k = 0;
		for (size_t i = 0; i < n; i++) {
			if (parts[i] != p)
				continue;
			ASSERT_EQ(ids[k], (int64_t)i);
			ASSERT_TRUE(memcmp(got + k * rec, pay + i * rec, rec) == 0);
			k++;
		}
		ASSERT_EQ(k, c);
		free(ids);
		free(got);
	}
	ann_spill_close(s); /* resumed spills are not kept unless asked */
	ASSERT_TRUE(access(path, F_OK) != 0);
	free(parts);
	free(pay);
	free(path);
}

int main(void)
{
	ann_rng rng;
	t_init("test_spill", &rng);
	char *dir = t_tmpdir();
	test_roundtrip(&rng, dir);
	test_errors(dir);
	test_hostile(dir);
	test_checkpoint(&rng, dir);
	t_rmtree(dir);
	free(dir);
	return 0;
}

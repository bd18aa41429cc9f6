/* SPDX-License-Identifier: MIT */
/* testutil.c: see testutil.h. */
#define _XOPEN_SOURCE 700
#include "testutil.h"

#include "gen.h"

#include <ftw.h>
#include <string.h>
#include <unistd.h>

uint64_t t_seed = 20261123;
const char *t_current = "?";

void t_init(const char *name, ann_rng *rng)
{
	t_current = name;
	const char *s = getenv("ANNANN_TEST_SEED");
	if (s && *s)
		t_seed = strtoull(s, NULL, 0);
	printf("%s: seed = %" PRIu64 " (set ANNANN_TEST_SEED to replay)\n", name, t_seed);
	if (rng)
		ann_rng_seed(rng, t_seed);
}

bool t_contains(const char *msg, const char *needle)
{
	return !needle || strstr(msg, needle) != NULL;
}

void t_fail_exit(void)
{
	fprintf(stderr, "seed = %" PRIu64 "\n", t_seed);
	exit(1);
}

char *t_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	char tmpl[4096];
	snprintf(tmpl, sizeof tmpl, "%s/annann-test-XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(tmpl)) {
		perror("mkdtemp");
		exit(1);
	}
	return strdup(tmpl);
}

char *t_path(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);
	snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void t_rmtree(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void t_write_file(const char *path, const void *data, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

void *t_read_file(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(1);
	}
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	void *p = malloc((size_t)len + 1);
	if (len && fread(p, 1, (size_t)len, f) != (size_t)len) {
		perror(path);
		exit(1);
	}
	fclose(f);
	*n = (size_t)len;
	return p;
}

void t_fill_uniform(ann_rng *r, float *x, size_t n, float lo, float hi)
{
	for (size_t i = 0; i < n; i++)
		x[i] = lo + (hi - lo) * (float)ann_rng_uniform(r);
}

uint8_t *t_make_block(uint32_t pid, uint32_t gen, uint64_t salt, size_t len)
{
	uint8_t *b = ann_aligned_alloc(4096, len);
	if (!b)
		return NULL;
	ann_rng r;
	ann_rng_seed(&r, ((uint64_t)pid << 32) ^ gen ^ salt);
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = ann_rng_next(&r);
		memcpy(b + i, &v, ANN_MIN(8, len - i));
	}
	ann_st32(b, pid);
	ann_st32(b + 4, gen);
	return b;
}

void t_gen_mixture(float *base, size_t n, float *queries, size_t nq, uint32_t dim, uint32_t clusters, uint64_t seed)
{
	ann_gen_opts go;
	ann_gen_opts_init(&go);
	go.n = n;
	go.nq = nq;
	go.dim = dim;
	go.clusters = clusters;
	go.seed = seed;
	ann_gen_model *m;
	ASSERT_OK(ann_gen_model_new(&go, &m, NULL));
	ann_gen_rows(m, ANN_GEN_BASE, 0, n, base, NULL);
	ann_gen_rows(m, ANN_GEN_QUERY, 0, nq, queries, NULL);
	ann_gen_model_free(m);
}

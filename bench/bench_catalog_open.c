/* SPDX-License-Identifier: MIT */
/*
 * bench_catalog_open: what the catalog's page checks cost (docs/DESIGN.md,
 * Storage). Times ann_catalog_open (meta pre-check, full page walk, DBI
 * opens) and a write txn begin + abort (the cheap check) on an existing
 * catalog, against LMDB's own env open + DBI opens with no walk.
 * Usage: bench_catalog_open CATALOG_DIR [REPS]   (CATALOG_DIR = IDX/catalog.lmdb)
 */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "catalog.h"

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: bench_catalog_open CATALOG_DIR [REPS]\n");
		return 2;
	}
	int reps = argc > 2 ? atoi(argv[2]) : 20;
	if (reps < 1)
		reps = 1;
	static const char *const names[] = {"meta", "parts", "models", "idmap", "free", "tomb", "delta", "blocks"};
	double t0 = now_s();
	for (int r = 0; r < reps; r++) {
		MDB_env *e;
		MDB_txn *t;
		MDB_dbi d;
		mdb_env_create(&e);
		mdb_env_set_maxdbs(e, 16);
		mdb_env_set_mapsize(e, (size_t)16 << 30);
		if (mdb_env_open(e, argv[1], MDB_NOTLS | MDB_RDONLY, 0644) || mdb_txn_begin(e, NULL, MDB_RDONLY, &t)) {
			fprintf(stderr, "%s: LMDB cannot open it\n", argv[1]);
			return 1;
		}
		for (int i = 0; i < 8; i++)
			mdb_dbi_open(t, names[i], 0, &d);
		mdb_txn_abort(t);
		mdb_env_close(e);
	}
	double t1 = now_s();
	ann_error err = {0};
	for (int r = 0; r < reps; r++) {
		ann_catalog *c;
		if (ann_catalog_open(argv[1], NULL, &c, &err) < 0) {
			fprintf(stderr, "%s\n", err.msg);
			return 1;
		}
		ann_catalog_close(c);
	}
	double t2 = now_s();
	ann_catalog *c;
	if (ann_catalog_open(argv[1], NULL, &c, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	ann_catalog_space sp;
	ann_catalog_space_get(c, &sp, NULL);
	double t3 = now_s();
	for (int r = 0; r < reps * 10; r++) {
		ann_cat_txn *t;
		if (ann_catalog_write_begin(c, &t, &err) < 0) {
			fprintf(stderr, "%s\n", err.msg);
			return 1;
		}
		ann_catalog_abort(t);
	}
	double t4 = now_s();
	ann_catalog_close(c);
	printf("%s: %llu pages (%llu on the free list); mean of %d: LMDB open %.2f ms, ann_catalog_open %.2f ms; "
	       "write begin+abort %.3f ms (mean of %d)\n", argv[1], (unsigned long long)sp.last_page,
	       (unsigned long long)sp.free_pages, reps, (t1 - t0) / reps * 1e3, (t2 - t1) / reps * 1e3,
	       (t4 - t3) / (reps * 10) * 1e3, reps * 10);
	return 0;
}

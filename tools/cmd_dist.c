/* SPDX-License-Identifier: MIT */
/*
 * cmd_dist.c: `mpirun -np R annann build|search --distributed` (docs/CLI.md,
 * docs/DESIGN.md "Many machines"). The only file that speaks MPI; compiled
 * when meson finds Open MPI. The library does each rank's own work through
 * the hooks of src/index/dist.h.
 *
 * Build: rank r takes input vectors [n r / R, n (r + 1) / R).
 *   sample    each rank draws its share of the training sample from its slice
 *   k-means   rank 0 seeds (k-means++ on a subsample gathered from every
 *             rank), then every Lloyd step is a partial sum per rank and one
 *             MPI_Allreduce of the sums, counts and inertia: every rank
 *             computes the same centroids from the same sums
 *   router    rank 0 builds the centroid graph, calibrates it on its sample
 *             and broadcasts the blob: every rank holds the same bytes
 *   shuffle   rounds of: read and route a chunk of the slice, MPI_Alltoallv
 *             each (id, partition, vector) to the partition's owner
 *             (partition mod R), add what arrives; chunk sized so that the
 *             send and the worst-case receive buffers fit a quarter of --mem
 *   pack      each rank packs its partitions into DIR.tmp/rank-<r>; rank 0
 *             writes the descriptor and renames DIR.tmp to DIR
 * Search: rank 0 reads the queries and broadcasts them; every rank routes
 * every query with the same router (no message between routing and
 * scanning), scans the partitions it owns (the others have no directory
 * entry: nothing is read), and rank 0 gathers and merges the top-k.
 *
 * Invariants: every rank runs the same sequence of collectives; a rank
 * whose step fails says why and the ranks agree (MPI_Allreduce) to stop, so
 * none waits for a partner that quit; a rank that dies is MPI's to report
 * (mpirun ends the job). Usage errors are found alike on every rank before
 * the first collective; only rank 0 prints them.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "common.h"
#include "dist.h"
#include "kmeans.h"
#include "vecio.h"

int cli_router_from(const char *dir, ann_router_kind *kind, uint8_t **blob, size_t *len, uint32_t *ef,
		    ann_error *err);

#define DIST_CHUNK 8192u     /* most vectors a rank routes per shuffle round */
#define REC_HEAD 16u         /* shuffle record: id (8), partition (4), primary flag (4), then the vector */
#define INIT_MIN 65536u      /* k-means++ seeding subsample, as ann_kmeans: max(65536, 16 k) */

static int g_rank, g_size;
static int g_failed = -1; /* the lowest rank that failed, as the last agree() found */

/* Every rank passes its status; returns the lowest failing rank, or -1
 * when all succeeded. A failing rank has already printed its message. */
static int agree(int rc)
{
	int mine[2] = {rc < 0 ? 1 : 0, rc < 0 ? g_size - g_rank : 0}, all[2];
	MPI_Allreduce(mine, all, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
	g_failed = all[0] ? g_size - all[1] : -1;
	return g_failed;
}

/* Inside a helper taking err: all ranks agree on rc; the ranks that did
 * not fail get ANN_E_STATE (the caller prints nothing for those). */
#define AGREE(what)                                                                                      \
	do {                                                                                             \
		if (agree(rc) >= 0) {                                                                    \
			if (rc >= 0)                                                                     \
				rc = ann_err(err, ANN_E_STATE, "rank %d failed %s", g_failed, what);     \
			goto out;                                                                        \
		}                                                                                        \
	} while (0)

/* A rank's failure message, prefixed with the rank. */
static void rank_fail(const cli_cmd *c, const ann_error *err)
{
	fprintf(stderr, "annann %s: rank %d of %d: %s\n", c->name, g_rank, g_size,
		err->msg[0] ? err->msg : ann_strerror(err->code));
}

/* After agree() found a failure: rank 0 says the job stops. */
static int stop(const cli_cmd *c, int failed, const char *what)
{
	if (g_rank == 0 && failed != 0)
		fprintf(stderr, "annann %s: stopping: rank %d failed %s (its message above)\n", c->name, failed, what);
	MPI_Finalize();
	return CLI_EXIT_FAIL;
}

static int init_mpi(void)
{
	int provided;
	MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
	MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
	MPI_Comm_size(MPI_COMM_WORLD, &g_size);
	return 0;
}

/* Usage errors: every rank finds the same one; rank 0 prints it. */
static int usage(cli_cmd *c, const char *msg)
{
	if (g_rank == 0)
		cli_usage_error(c, "%s", msg);
	MPI_Finalize();
	return CLI_EXIT_USAGE;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Broadcasts a buffer of any length from rank 0 in pieces of at most 1 GiB. */
static void bcast_bytes(void *p, size_t n)
{
	for (size_t off = 0; off < n;) {
		size_t m = ANN_MIN(n - off, (size_t)1 << 30);
		MPI_Bcast((uint8_t *)p + off, (int)m, MPI_BYTE, 0, MPI_COMM_WORLD);
		off += m;
	}
}

/* ---- build --------------------------------------------------------------- */

typedef struct dist_times {
	double sample, kmeans, router, shuffle, pack, total;
	double comm;             /* seconds inside MPI collectives of the shuffle and k-means */
	uint64_t sent_remote;    /* shuffle bytes this rank sent to other ranks */
	uint64_t sent_local;     /* shuffle bytes it kept (its own partitions) */
	uint32_t rounds, iters;
	uint64_t repaired;
} dist_times;

/* The distributed k-means (see the top of the file). sample: this rank's
 * share (n_mine x d). Leaves the router blob on every rank. */
static int dist_kmeans(const ann_build_opts *o, ann_encoding enc, const float *sample, size_t n_mine, size_t d,
		       uint32_t k, uint8_t **blob, size_t *blen, uint32_t *ef, dist_times *tm, ann_error *err)
{
	uint64_t total = 0, mine = n_mine;
	MPI_Allreduce(&mine, &total, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
	int rc = ANN_OK;
	float *cent = NULL, *init = NULL;
	double *sums = NULL;
	uint64_t *counts = NULL;
	int *rcounts = NULL, *displs = NULL;
	if (total < k) {
		rc = ann_err(err, ANN_E_BUDGET, "%u partitions need a sample of at least %u vectors; the ranks drew %llu",
			     k, k, (unsigned long long)total);
		goto out;
	}
	size_t kd = (size_t)k * d;
	if (kd > INT_MAX) {
		rc = ann_err(err, ANN_E_UNSUPPORTED, "%u centroids of dimension %zu: more than 2^31 numbers in one "
			     "reduction", k, d);
		goto out;
	}
	cent = ann_malloc(kd * sizeof(float));
	sums = ann_malloc(kd * sizeof(double));
	counts = ann_malloc((size_t)k * sizeof(uint64_t));
	rcounts = ann_malloc((size_t)g_size * sizeof(int));
	displs = ann_malloc((size_t)g_size * sizeof(int));
	if (!cent || !sums || !counts || !rcounts || !displs)
		rc = ann_err(err, ANN_E_NOMEM, "out of memory for %u centroids", k);
	AGREE("to allocate the k-means sums");
	/* Seeding: rank 0 runs k-means++ on a subsample gathered from every
	 * rank's first rows (each share is already a uniform sample). */
	uint64_t init_n = ANN_MIN(total, ANN_MAX((uint64_t)INIT_MIN, (uint64_t)16 * k));
	uint64_t cap = (o->mem_bytes / 4) / (d * sizeof(float));
	init_n = ANN_MAX(ANN_MIN(init_n, cap), (uint64_t)k);
	if (init_n * d > INT_MAX) {
		rc = ann_err(err, ANN_E_UNSUPPORTED, "a seeding subsample of %llu vectors of dimension %zu: more than 2^31 "
			     "numbers in one gather", (unsigned long long)init_n, d);
		goto out;
	}
	uint64_t before = 0;
	MPI_Exscan(&mine, &before, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
	if (g_rank == 0)
		before = 0;
	/* rows [before, before + mine) of the whole sample; take the share of
	 * the first init_n that falls here, proportionally */
	uint64_t lo = before * init_n / total, hi = (before + mine) * init_n / total;
	int my_rows = (int)((hi - lo) * d);
	MPI_Gather(&my_rows, 1, MPI_INT, rcounts, 1, MPI_INT, 0, MPI_COMM_WORLD);
	if (g_rank == 0) {
		init = ann_malloc(init_n * d * sizeof(float));
		int off = 0;
		for (int r = 0; r < g_size; r++) {
			displs[r] = off;
			off += rcounts[r];
		}
	}
	if (g_rank == 0 && !init)
		rc = ann_err(err, ANN_E_NOMEM, "out of memory for a seeding subsample of %llu vectors",
			     (unsigned long long)init_n);
	AGREE("to allocate the seeding subsample");
	uint64_t t0 = ann_now_ns();
	MPI_Gatherv(sample, my_rows, MPI_FLOAT, init, rcounts, displs, MPI_FLOAT, 0, MPI_COMM_WORLD);
	if (g_rank == 0) {
		ann_kmeans_opts ko;
		ann_kmeans_opts_init(&ko);
		ko.k = k;
		ko.max_iter = 1;
		ko.seed = o->seed;
		ko.metric = o->metric;
		ko.threads = o->threads > 0 ? o->threads : 1;
		rc = ann_kmeans(init, init_n, d, &ko, cent, NULL, NULL, err);
		if (rc < 0)
			ann_err_prefix(err, rc, "k-means seeding");
	}
	ann_free(init);
	init = NULL;
	AGREE("the k-means seeding");
	MPI_Bcast(cent, (int)kd, MPI_FLOAT, 0, MPI_COMM_WORLD);
	double prev = INFINITY;
	uint32_t iters = o->kmeans.kmeans_iters ? o->kmeans.kmeans_iters : 20;
	for (uint32_t it = 0; it < iters; it++) {
		memset(sums, 0, kd * sizeof(double));
		memset(counts, 0, (size_t)k * sizeof(uint64_t));
		double inertia = 0;
		rc = ann_dist_kmeans_partial(sample, n_mine, d, cent, k, o->metric, o->threads > 0 ? o->threads : 1, sums,
					     counts, &inertia, err);
		AGREE("a k-means step");
		uint64_t tc = ann_now_ns();
		MPI_Allreduce(MPI_IN_PLACE, sums, (int)kd, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
		MPI_Allreduce(MPI_IN_PLACE, counts, (int)k, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
		MPI_Allreduce(MPI_IN_PLACE, &inertia, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
		tm->comm += (double)(ann_now_ns() - tc) / 1e9;
		tm->repaired += ann_dist_kmeans_update(sums, counts, k, d, o->metric, cent);
		tm->iters = it + 1;
		if (o->progress && g_rank == 0)
			o->progress(o->progress_ctx, "kmeans", it + 1, iters);
		if (o->log && g_rank == 0) {
			char line[160];
			snprintf(line, sizeof line, "distributed kmeans: step %u inertia %.6g over %llu sample vectors on %d "
				 "ranks", it + 1, inertia, (unsigned long long)total, g_size);
			o->log(o->log_ctx, line);
		}
		/* the same inertia on every rank: the same decision */
		if (isfinite(prev) && prev > 0 && (prev - inertia) / prev < 1e-4)
			break;
		prev = inertia;
	}
	tm->kmeans = (double)(ann_now_ns() - t0) / 1e9;
	t0 = ann_now_ns();
	uint64_t len = 0;
	if (g_rank == 0) {
		rc = ann_dist_kmeans_router(o, enc, cent, k, d, sample, n_mine, blob, blen, ef, err);
		len = *blen;
	}
	AGREE("to build the router");
	MPI_Bcast(&len, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
	MPI_Bcast(ef, 1, MPI_UINT32_T, 0, MPI_COMM_WORLD);
	if (g_rank != 0) {
		*blen = (size_t)len;
		*blob = ann_malloc(len ? len : 1);
		if (!*blob)
			rc = ann_err(err, ANN_E_NOMEM, "out of memory for a router of %llu bytes", (unsigned long long)len);
	}
	AGREE("to receive the router");
	bcast_bytes(*blob, (size_t)len);
	tm->router = (double)(ann_now_ns() - t0) / 1e9;
out:
	ann_free(cent);
	ann_free(init);
	ann_free(sums);
	ann_free(counts);
	ann_free(rcounts);
	ann_free(displs);
	return rc;
}

/* The shuffle (see the top of the file): returns the primary copies this
 * rank received. */
static int dist_shuffle(ann_partbuild *pb, uint64_t first, uint64_t count, size_t chunk, uint64_t rounds, size_t d,
			size_t esz, uint32_t copies, uint64_t *primaries, dist_times *tm, ann_error *err)
{
	size_t vb = d * esz, rec = REC_HEAD + vb;
	size_t R = (size_t)g_size;
	uint8_t *raw = ann_malloc(chunk * vb);
	uint32_t *parts = ann_malloc(chunk * copies * sizeof(uint32_t));
	uint8_t *sendb = ann_malloc(chunk * copies * rec);
	uint8_t *recvb = ann_malloc(R * chunk * copies * rec);
	int *scount = ann_calloc(R, sizeof(int)), *sdisp = ann_calloc(R, sizeof(int));
	int *rcount = ann_calloc(R, sizeof(int)), *rdisp = ann_calloc(R, sizeof(int)), *fill = ann_calloc(R, sizeof(int));
	int rc = ANN_OK;
	if (!raw || !parts || !sendb || !recvb || !scount || !sdisp || !rcount || !rdisp || !fill)
		rc = ann_err(err, ANN_E_NOMEM, "out of memory for shuffle buffers of %zu vectors", chunk);
	AGREE("to allocate its shuffle buffers");
	uint64_t done = 0;
	for (uint64_t round = 0; round < rounds; round++) {
		size_t m = (size_t)ANN_MIN((uint64_t)chunk, count - done);
		memset(scount, 0, R * sizeof(int));
		if (m > 0)
			rc = ann_partbuild_read_route(pb, first + done, m, raw, parts, err);
		AGREE("to read and route its vectors");
		for (size_t j = 0; j < m; j++)
			for (uint32_t c = 0; c < copies && parts[j * copies + c] != UINT32_MAX; c++)
				scount[parts[j * copies + c] % R] += (int)rec;
		for (size_t r = 0, off = 0; r < R; r++) {
			sdisp[r] = (int)off;
			fill[r] = (int)off;
			off += (size_t)scount[r];
		}
		for (size_t j = 0; j < m; j++)
			for (uint32_t c = 0; c < copies && parts[j * copies + c] != UINT32_MAX; c++) {
				uint32_t p = parts[j * copies + c];
				uint8_t *o = sendb + fill[p % R];
				ann_st64(o, first + done + j);
				ann_st32(o + 8, p);
				ann_st32(o + 12, c == 0);
				memcpy(o + REC_HEAD, raw + j * vb, vb);
				fill[p % R] += (int)rec;
			}
		for (size_t r = 0; r < R; r++) {
			if (r == (size_t)g_rank)
				tm->sent_local += (uint64_t)scount[r];
			else
				tm->sent_remote += (uint64_t)scount[r];
		}
		uint64_t tc = ann_now_ns();
		MPI_Alltoall(scount, 1, MPI_INT, rcount, 1, MPI_INT, MPI_COMM_WORLD);
		size_t rtot = 0;
		for (size_t r = 0; r < R; r++) {
			rdisp[r] = (int)rtot;
			rtot += (size_t)rcount[r];
		}
		MPI_Alltoallv(sendb, scount, sdisp, MPI_BYTE, recvb, rcount, rdisp, MPI_BYTE, MPI_COMM_WORLD);
		tm->comm += (double)(ann_now_ns() - tc) / 1e9;
		for (size_t off = 0; rc >= 0 && off < rtot; off += rec) {
			const uint8_t *o = recvb + off;
			rc = ann_partbuild_add(pb, ann_ld32(o + 8), (int64_t)ann_ld64(o), o + REC_HEAD, err);
			*primaries += ann_ld32(o + 12) != 0;
		}
		AGREE("to store what it received");
		done += m;
		tm->rounds++;
	}
out:
	ann_free(raw);
	ann_free(parts);
	ann_free(sendb);
	ann_free(recvb);
	ann_free(scount);
	ann_free(sdisp);
	ann_free(rcount);
	ann_free(rdisp);
	ann_free(fill);
	return rc;
}

int cli_build_distributed(cli_cmd *c, const ann_build_opts *o0, const char *data, const char *index,
			  const char *router_from)
{
	init_mpi();
	uint64_t t_all = ann_now_ns();
	if (o0->router != ANN_ROUTER_KMEANS && !router_from)
		return usage(c, "--distributed trains the kmeans router (k-means with MPI reductions); for another "
			     "router build a single-node index and pass it as --router-from DIR");
	if (o0->kmeans.balance > 0)
		return usage(c, "--balance is not supported with --distributed (the cap needs every vector's ranking "
			     "in one place)");
	ann_build_opts o = *o0;
	cli_progress_state ps;
	cli_progress_init(&ps, cli_flag(c, "quiet") || g_rank != 0);
	o.progress = g_rank == 0 ? cli_progress : NULL;
	o.progress_ctx = &ps;
	o.log = g_rank == 0 ? cli_log : NULL;
	o.log_ctx = &ps;
	ann_error err = {0};
	dist_times tm;
	memset(&tm, 0, sizeof tm);
	int rc = ANN_OK, failed;
	char *tmp = NULL;
	char part[4300], tmpbuf[4200] = "";
	ann_partbuild *pb = NULL;
	uint8_t *blob = NULL;
	float *sample = NULL;
	size_t blen = 0;
	uint32_t ef = 0;
	ann_router_kind kind = ANN_ROUTER_KMEANS;
	/* Rank 0 makes DIR.tmp.<pid>, where every rank builds its part. */
	if (g_rank == 0) {
		struct stat st;
		if (stat(index, &st) == 0)
			rc = ann_err(&err, ANN_E_EXISTS, "%s: already exists; remove it or choose another directory", index);
		else
			rc = ann_create_temp(index, true, &tmp, &err);
		if (rc >= 0)
			snprintf(tmpbuf, sizeof tmpbuf, "%s", tmp);
		if (rc < 0)
			cli_fail(c, &err);
	}
	if ((failed = agree(rc)) >= 0)
		return stop(c, 0, "");
	bcast_bytes(tmpbuf, sizeof tmpbuf);
	snprintf(part, sizeof part, "%s/rank-%d", tmpbuf, g_rank);
	size_t mem = o.mem_bytes;
	rc = ann_partbuild_open(data, part, &o, (uint32_t)g_rank, (uint32_t)g_size, &pb, &err);
	if (rc < 0)
		rank_fail(c, &err);
	if ((failed = agree(rc)) >= 0)
		goto fail;
	uint64_t n;
	uint32_t d, nparts, copies;
	ann_dtype in_type;
	ann_encoding enc;
	ann_partbuild_shape(pb, &n, &d, &in_type, &nparts, &copies, &enc);
	uint64_t first = n * (uint64_t)g_rank / (uint64_t)g_size, count = n * (uint64_t)(g_rank + 1) / (uint64_t)g_size - first;
	/* 1-3. the router: from another index, or trained together */
	uint64_t t0 = ann_now_ns();
	if (router_from) {
		uint64_t len = 0;
		uint32_t k32 = 0;
		if (g_rank == 0) {
			rc = cli_router_from(router_from, &kind, &blob, &blen, &ef, &err);
			len = blen;
			k32 = (uint32_t)kind;
			if (rc < 0)
				rank_fail(c, &err);
		}
		if ((failed = agree(rc)) >= 0)
			goto fail;
		MPI_Bcast(&len, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
		MPI_Bcast(&k32, 1, MPI_UINT32_T, 0, MPI_COMM_WORLD);
		MPI_Bcast(&ef, 1, MPI_UINT32_T, 0, MPI_COMM_WORLD);
		kind = (ann_router_kind)k32;
		if (g_rank != 0) {
			blen = (size_t)len;
			blob = ann_malloc(blen ? blen : 1);
			if (!blob) {
				rc = ann_err(&err, ANN_E_NOMEM, "out of memory for a router of %zu bytes", blen);
				rank_fail(c, &err);
			}
		}
		if ((failed = agree(rc)) >= 0)
			goto fail;
		bcast_bytes(blob, blen);
		tm.router = (double)(ann_now_ns() - t0) / 1e9;
	} else {
		/* this rank's share of the sample: the whole sample is what a
		 * single-node build would draw, min(n, 256 partitions) or --sample */
		uint64_t want = o.sample ? ANN_MIN(o.sample, n) : ANN_MIN(n, (uint64_t)256 * nparts);
		uint64_t share = want * (first + count) / n - want * first / n;
		uint64_t fit = (mem / 2) / ((uint64_t)d * sizeof(float));
		if (share > fit) {
			if (o.sample) {
				rc = ann_err(&err, ANN_E_BUDGET, "rank %d's share of the sample, %llu vectors, needs %llu bytes, "
					     "more than half the budget (%zu bytes)", g_rank, (unsigned long long)share,
					     (unsigned long long)(share * d * sizeof(float)), mem);
				rank_fail(c, &err);
			}
			share = fit;
		}
		sample = rc >= 0 ? ann_malloc((share ? share : 1) * d * sizeof(float)) : NULL;
		if (rc >= 0 && !sample) {
			rc = ann_err(&err, ANN_E_NOMEM, "out of memory for a sample of %llu vectors", (unsigned long long)share);
			rank_fail(c, &err);
		}
		if (rc >= 0) {
			/* a seed per rank: the shares are independent samples */
			rc = ann_partbuild_sample(pb, first, count, share, (o.seed ^ 0x5a4d504c45ull) + (uint64_t)g_rank * 0x9e3779b97f4a7c15ull,
						  sample, &err);
			if (rc < 0)
				rank_fail(c, &err);
		}
		if ((failed = agree(rc)) >= 0)
			goto fail;
		tm.sample = (double)(ann_now_ns() - t0) / 1e9;
		rc = dist_kmeans(&o, enc, sample, (size_t)share, d, nparts, &blob, &blen, &ef, &tm, &err);
		if (rc < 0) {
			if (err.code != ANN_E_STATE)
				rank_fail(c, &err);
			goto fail_quiet;
		}
		ann_free(sample);
		sample = NULL;
	}
	/* 4. the shuffle, within a quarter of the budget: per round a chunk of
	 * raw vectors and their floats, the partitions, the send buffer and a
	 * receive buffer for the worst case (every rank sends everything here) */
	size_t esz = ann_dtype_size(in_type), rec = REC_HEAD + (size_t)d * esz;
	size_t per = (size_t)d * (esz + sizeof(float)) + copies * (sizeof(uint32_t) + rec * (size_t)(g_size + 1));
	size_t chunk = ANN_MIN((size_t)DIST_CHUNK, (mem / 4) / per);
	while (chunk > 1 && chunk * copies * rec * (size_t)g_size > INT_MAX)
		chunk /= 2;
	if (chunk < 64) {
		rc = ann_err(&err, ANN_E_BUDGET, "the shuffle needs %zu bytes per vector and round on %d ranks: a quarter "
			     "of the budget (%zu bytes) holds fewer than 64", per, g_size, mem);
		if (g_rank == 0)
			cli_fail(c, &err);
		goto fail_quiet;
	}
	rc = ann_partbuild_set_router(pb, kind, blob, blen, ef, chunk * per, &err);
	if (rc < 0)
		rank_fail(c, &err);
	if ((failed = agree(rc)) >= 0)
		goto fail;
	ann_partbuild_shape(pb, &n, &d, &in_type, &nparts, &copies, &enc);
	uint64_t slice_max = (n + (uint64_t)g_size - 1) / (uint64_t)g_size;
	uint64_t rounds = (slice_max + chunk - 1) / chunk, primaries = 0;
	t0 = ann_now_ns();
	double comm0 = tm.comm;
	rc = dist_shuffle(pb, first, count, chunk, rounds, d, esz, copies, &primaries, &tm, &err);
	if (rc < 0) {
		if (err.code != ANN_E_STATE)
			rank_fail(c, &err);
		goto fail_quiet;
	}
	tm.shuffle = (double)(ann_now_ns() - t0) / 1e9;
	(void)comm0;
	/* 5. pack and publish each part */
	t0 = ann_now_ns();
	rc = ann_partbuild_finish(pb, primaries, &err);
	pb = NULL;
	if (rc < 0)
		rank_fail(c, &err);
	if ((failed = agree(rc)) >= 0)
		goto fail;
	tm.pack = (double)(ann_now_ns() - t0) / 1e9;
	uint64_t total_primaries = 0;
	MPI_Allreduce(&primaries, &total_primaries, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
	if (g_rank == 0) {
		ann_dist_desc dd = {(uint32_t)g_size, nparts, d, total_primaries, ann_dist_hash(blob, blen)};
		if (total_primaries != n)
			rc = ann_err(&err, ANN_E_STATE, "the parts hold %llu vectors, the input %llu",
				     (unsigned long long)total_primaries, (unsigned long long)n);
		if (rc >= 0)
			rc = ann_dist_desc_write(tmpbuf, &dd, &err);
		if (rc >= 0 && renameat2(AT_FDCWD, tmpbuf, AT_FDCWD, index, RENAME_NOREPLACE) != 0)
			rc = ann_err_sys(&err, errno, "%s: cannot rename the finished index from %s", index, tmpbuf);
		if (rc >= 0) {
			char parent[4300];
			snprintf(parent, sizeof parent, "%s/..", index);
			rc = ann_fsync_dir(parent, &err);
		}
		if (rc < 0)
			cli_fail(c, &err);
	}
	if ((failed = agree(rc)) >= 0)
		goto fail_quiet;
	tm.total = (double)(ann_now_ns() - t_all) / 1e9;
	/* per-rank figures to rank 0: the slowest rank's phase times, sums of
	 * the shuffled bytes */
	double tmax[6] = {tm.sample, tm.kmeans, tm.router, tm.shuffle, tm.pack, tm.comm}, tx[6];
	uint64_t bytes[2] = {tm.sent_remote, tm.sent_local}, bx[2];
	MPI_Reduce(tmax, tx, 6, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
	MPI_Reduce(bytes, bx, 2, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
	cli_progress_end(&ps);
	if (g_rank == 0) {
		if (cli_flag(c, "json")) {
			cli_json j;
			cli_json_begin(&j, stdout);
			cli_json_str(&j, "index", index);
			cli_json_int(&j, "ranks", g_size);
			cli_json_num(&j, "seconds", tm.total);
			cli_json_obj(&j, "phase_seconds_max_over_ranks");
			cli_json_num(&j, "sample", tx[0]);
			cli_json_num(&j, "kmeans", tx[1]);
			cli_json_num(&j, "router", tx[2]);
			cli_json_num(&j, "shuffle", tx[3]);
			cli_json_num(&j, "pack", tx[4]);
			cli_json_num(&j, "in_mpi", tx[5]);
			cli_json_close_obj(&j);
			cli_json_int(&j, "kmeans_steps", tm.iters);
			cli_json_int(&j, "shuffle_rounds", tm.rounds);
			cli_json_int(&j, "shuffle_bytes_to_other_ranks", (long long)bx[0]);
			cli_json_int(&j, "shuffle_bytes_kept", (long long)bx[1]);
			cli_json_end(&j);
		} else {
			printf("built %s on %d ranks in %.1fs (slowest rank: sample %.1fs, kmeans %.1fs in %u steps, router "
			       "%.1fs, shuffle %.1fs in %u rounds, pack %.1fs; %.1f MiB shuffled to other ranks)\n",
			       index, g_size, tm.total, tx[0], tx[1], tm.iters, tx[2], tx[3], tm.rounds, tx[4],
			       (double)bx[0] / 1048576.0);
		}
	}
	ann_free(blob);
	ann_free(tmp);
	MPI_Finalize();
	return 0;
fail:
	/* the failing rank printed its message in rank_fail */
fail_quiet:
	cli_progress_end(&ps);
	ann_partbuild_abort(pb);
	ann_free(sample);
	ann_free(blob);
	MPI_Barrier(MPI_COMM_WORLD); /* every rank has removed its part's temporary */
	if (g_rank == 0 && tmpbuf[0]) {
		nftw(tmpbuf, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
		if (g_failed > 0)
			fprintf(stderr, "annann build: stopping: rank %d failed (its message above); removed %s\n",
				g_failed, tmpbuf);
	}
	ann_free(tmp);
	MPI_Finalize();
	return CLI_EXIT_FAIL;
}

/* ---- search -------------------------------------------------------------- */

int cli_search_distributed(cli_cmd *c)
{
	init_mpi();
	const char *dir = cli_get(c, "index"), *qpath = cli_get(c, "queries");
	if (!dir || !qpath)
		return usage(c, !dir ? "option '--index' is required" : "option '--queries' is required");
	if (cli_get(c, "threads") && strcmp(cli_get(c, "threads"), "1") != 0)
		return usage(c, "--threads: a distributed search runs one searcher per rank (start more ranks instead)");
	uint64_t k, cf, ef, batch, threads, cache, qd, limit, rerank, rphases, poll;
	uint64_t probes[64];
	size_t nprobes = 0;
	/* the same checks as the single-node search; only rank 0 prints */
	{
		int saved = -1;
		if (g_rank != 0) {
			fflush(stderr);
			saved = dup(2);
			int nul = open("/dev/null", O_WRONLY | O_CLOEXEC);
			if (nul >= 0) {
				dup2(nul, 2);
				close(nul);
			}
		}
		bool ok = cli_u64(c, "k", 10, 1, ANN_MAX_K, &k) &&
			  cli_u64(c, "candidates-factor", ANN_DEFAULT_CANDIDATES_FACTOR, 1, 1000, &cf) &&
			  cli_u64(c, "ef", 0, 0, ANN_MAX_EF, &ef) && cli_u64(c, "batch", 1, 1, UINT32_MAX, &batch) &&
			  cli_u64(c, "threads", 1, 1, 1, &threads) && cli_size(c, "cache", 0, 0, CLI_SIZE_MAX, &cache) &&
			  cli_u64(c, "queue-depth", 32, 1, 4096, &qd) && cli_u64(c, "limit", UINT64_MAX, 1, UINT64_MAX, &limit) &&
			  cli_u64(c, "rerank", 0, 1, 100000, &rerank) &&
			  cli_u64(c, "rerank-phases", ANN_DEFAULT_RERANK_PHASES, 1, 2, &rphases) &&
			  cli_search_poll(c, threads, true, &poll) &&
			  cli_u64_list(c, cli_get(c, "C") ? "C" : "nprobe", 1, ANN_MAX_NPROBE, probes, 64, &nprobes);
		double reps = 0;
		ok = ok && cli_double(c, "rerank-eps", 0, 0, 100, &reps);
		if (ok && cli_get(c, "probe-eps")) { /* not implemented across ranks: refused, never ignored */
			cli_usage_error(c, "--probe-eps does not apply to a distributed search: search without it");
			ok = false;
		}
		if (saved >= 0) {
			dup2(saved, 2);
			close(saved);
		}
		if (!ok) {
			MPI_Finalize();
			return CLI_EXIT_USAGE;
		}
	}
	double reps = 0;
	cli_double(c, "rerank-eps", 0, 0, 100, &reps);
	ann_error err = {0};
	ann_dist_desc dd;
	int rc = ann_dist_desc_read(dir, &dd, &err);
	if (rc == ANN_E_NOTFOUND) {
		if (g_rank == 0)
			fprintf(stderr, "annann search: %s is not a distributed index (it has no %s descriptor): search it "
				"without --distributed\n", dir, ANN_DIST_DESCRIPTOR);
		MPI_Finalize();
		return CLI_EXIT_FAIL;
	}
	if (rc < 0) {
		if (g_rank == 0)
			cli_fail(c, &err);
		MPI_Finalize();
		return CLI_EXIT_FAIL;
	}
	if (dd.ranks != (uint32_t)g_size) {
		char msg[256];
		snprintf(msg, sizeof msg, "%s was built on %u ranks and holds %u parts; run it with 'mpirun -np %u', not %d "
			 "ranks", dir, dd.ranks, dd.ranks, dd.ranks, g_size);
		return usage(c, msg);
	}
	/* every rank opens its part and checks that it holds the router the
	 * descriptor names */
	char part[4300];
	snprintf(part, sizeof part, "%s/rank-%d", dir, g_rank);
	ann_index *idx = NULL;
	uint32_t prank = 0, pranks = 0;
	ann_index_info info;
	memset(&info, 0, sizeof info);
	rc = ann_index_open_part(part, &idx, &prank, &pranks, &err);
	if (rc >= 0 && (prank != (uint32_t)g_rank || pranks != dd.ranks))
		rc = ann_err(&err, ANN_E_CORRUPT, "%s: the catalog says rank %u of %u, expected rank %d of %u", part, prank,
			     pranks, g_rank, dd.ranks);
	if (rc >= 0) {
		ann_router_kind kind;
		uint8_t *blob = NULL;
		size_t blen;
		uint32_t ref;
		rc = ann_index_router_blob(idx, &kind, &blob, &blen, &ref, &err);
		if (rc >= 0 && ann_dist_hash(blob, blen) != dd.router_hash)
			rc = ann_err(&err, ANN_E_CORRUPT, "%s: its router (XXH64 %016llx) is not the one of %s/%s (%016llx)",
				     part, (unsigned long long)ann_dist_hash(blob, blen), dir, ANN_DIST_DESCRIPTOR,
				     (unsigned long long)dd.router_hash);
		ann_free(blob);
	}
	if (rc >= 0)
		rc = ann_index_get_info(idx, &info, &err);
	if (rc < 0)
		rank_fail(c, &err);
	int failed = agree(rc);
	if (failed >= 0) {
		ann_index_close(idx);
		return stop(c, failed, "to open its part");
	}
	/* rank 0 reads the queries (and ground truth) and sends them */
	float *q = NULL, *dists = NULL, *gtd = NULL, *rd = NULL, *mdist = NULL, *ld = NULL;
	int32_t *gt = NULL;
	int64_t *ids = NULL, *rids = NULL, *mids = NULL, *li = NULL;
	ann_query_stats *st = NULL, *rst = NULL, *mst = NULL;
	uint64_t *lat = NULL;
	uint32_t gnq = 0, gk = 0;
	uint64_t nq64 = 0;
	int ret = CLI_EXIT_FAIL;
	const char *gtpath = cli_get(c, "gt");
	if (g_rank == 0) {
		ann_vreader *qr = NULL;
		rc = ann_vreader_open(qpath, &qr, &err);
		if (rc >= 0 && ann_vreader_dim(qr) != info.dim)
			rc = ann_err(&err, ANN_E_BADINPUT, "%s: queries have dimension %zu, the index %u", qpath,
				     (size_t)ann_vreader_dim(qr), info.dim);
		if (rc >= 0) {
			nq64 = ANN_MIN(ann_vreader_count(qr), limit);
			q = ann_malloc((nq64 ? nq64 : 1) * info.dim * sizeof(float));
			if (!q)
				rc = ann_err(&err, ANN_E_NOMEM, "out of memory for %llu queries", (unsigned long long)nq64);
		}
		if (rc >= 0) {
			int64_t got = ann_vreader_read_f32(qr, q, (size_t)nq64, &err);
			if (got < 0)
				rc = (int)got;
		}
		ann_vreader_close(qr);
		if (rc >= 0 && gtpath) {
			rc = ann_gt_read(gtpath, &gnq, &gk, &gt, &gtd, &err);
			if (rc >= 0 && (gnq < nq64 || gk < k))
				rc = ann_err(&err, ANN_E_BADINPUT, "%s: ground truth for %u queries x %u neighbours; need %llu x "
					     "%llu", gtpath, gnq, gk, (unsigned long long)nq64, (unsigned long long)k);
		}
		if (rc < 0)
			cli_fail(c, &err);
	}
	if ((failed = agree(rc)) >= 0)
		goto out;
	MPI_Bcast(&nq64, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
	size_t nq = (size_t)nq64, dim = info.dim;
	size_t mb = (size_t)ANN_MIN((uint64_t)batch, nq64 ? nq64 : 1); /* queries per batch */
	if (g_rank != 0)
		q = ann_malloc((nq ? nq : 1) * dim * sizeof(float));
	ids = ann_malloc(mb * k * sizeof(int64_t));
	dists = ann_malloc(mb * k * sizeof(float));
	st = ann_calloc(mb, sizeof *st);
	if (g_rank == 0) {
		/* rank 0 holds every rank's answers for one batch, and the merged
		 * answers and stats of the whole query set */
		rids = ann_malloc((size_t)g_size * mb * k * sizeof(int64_t));
		rd = ann_malloc((size_t)g_size * mb * k * sizeof(float));
		rst = ann_calloc((size_t)g_size * mb, sizeof *rst);
		mids = ann_malloc((nq ? nq : 1) * k * sizeof(int64_t));
		mdist = ann_malloc((nq ? nq : 1) * k * sizeof(float));
		mst = ann_calloc(nq ? nq : 1, sizeof *mst);
		lat = ann_malloc((nq ? nq : 1) * sizeof(uint64_t));
		li = ann_malloc((size_t)g_size * k * sizeof(int64_t));
		ld = ann_malloc((size_t)g_size * k * sizeof(float));
	}
	rc = ANN_OK;
	if (!q || !ids || !dists || !st || (g_rank == 0 && (!rids || !rd || !rst || !mids || !mdist || !mst || !lat || !li || !ld)))
		rc = ann_err(&err, ANN_E_NOMEM, "out of memory for %zu queries", nq);
	if (rc >= 0 && (uint64_t)mb * k * (uint64_t)g_size * sizeof(int64_t) > INT_MAX)
		rc = ann_err(&err, ANN_E_INVAL, "--batch %llu x --k %llu on %d ranks: the gathered answers pass 2 GiB",
			     (unsigned long long)batch, (unsigned long long)k, g_size);
	if (rc < 0)
		rank_fail(c, &err);
	if ((failed = agree(rc)) >= 0)
		goto out;
	bcast_bytes(q, nq * dim * sizeof(float));
	if (nprobes == 0) /* the index's default, from the router's partitions: the same on every rank */
		probes[nprobes++] = info.default_nprobe;
	bool json = cli_flag(c, "json");
	if (g_rank == 0 && !json)
		cli_search_header(gt != NULL, info.code_bits != 0);
	for (size_t pi = 0; pi < nprobes; pi++) {
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = (uint32_t)k;
		so.nprobe = (uint32_t)probes[pi];
		so.candidates_factor = (uint32_t)cf;
		so.hnsw_ef = (uint32_t)ef;
		so.cache_bytes = cache;
		so.queue_depth = (uint32_t)qd;
		so.force_pread = cli_flag(c, "pread");
		so.rerank = (uint32_t)rerank;
		so.rerank_eps = (float)reps;
		so.rerank_phases = (uint32_t)rphases;
		so.io_poll_us = (uint32_t)poll;
		ann_searcher *s = NULL;
		rc = ann_searcher_new(idx, &so, &s, &err);
		if (rc < 0)
			rank_fail(c, &err);
		if ((failed = agree(rc)) >= 0)
			goto out;
		const char *io_path = ann_searcher_io_path(s);
		double wall = 0;
		for (int pass = cli_flag(c, "warmup") ? 0 : 1; pass < 2; pass++) {
			MPI_Barrier(MPI_COMM_WORLD);
			uint64_t tw = ann_now_ns();
			for (size_t b0 = 0; b0 < nq; b0 += mb) {
				size_t nb = ANN_MIN(mb, nq - b0);
				uint64_t t0 = ann_now_ns();
				rc = ann_search(s, q + b0 * dim, nb, ids, dists, st, &err);
				if (rc < 0)
					rank_fail(c, &err);
				if ((failed = agree(rc)) >= 0) {
					ann_searcher_free(s);
					goto out;
				}
				MPI_Gather(ids, (int)(nb * k), MPI_INT64_T, rids, (int)(nb * k), MPI_INT64_T, 0, MPI_COMM_WORLD);
				MPI_Gather(dists, (int)(nb * k), MPI_FLOAT, rd, (int)(nb * k), MPI_FLOAT, 0, MPI_COMM_WORLD);
				MPI_Gather(st, (int)(nb * sizeof *st), MPI_BYTE, rst, (int)(nb * sizeof *st), MPI_BYTE, 0,
					   MPI_COMM_WORLD);
				if (g_rank != 0)
					continue;
				/* merge: answers by distance; bytes, reads and candidates
				 * summed over the ranks; stage times of the slowest rank */
				for (size_t i = 0; i < nb; i++) {
					ann_query_stats *m = &mst[b0 + i];
					memset(m, 0, sizeof *m);
					for (int r = 0; r < g_size; r++) {
						const ann_query_stats *x = &rst[(size_t)r * nb + i];
						m->partitions = ANN_MAX(m->partitions, x->partitions);
						m->candidates += x->candidates;
						m->bytes_read += x->bytes_read;
						m->io_requests += x->io_requests;
						m->route_ns = ANN_MAX(m->route_ns, x->route_ns);
						m->io_wait_ns = ANN_MAX(m->io_wait_ns, x->io_wait_ns);
						m->decode_ns = ANN_MAX(m->decode_ns, x->decode_ns);
						m->scan_ns = ANN_MAX(m->scan_ns, x->scan_ns);
						m->bytes_round1 += x->bytes_round1;
						m->bytes_round2 += x->bytes_round2;
						m->ios_round1 += x->ios_round1;
						m->ios_round2 += x->ios_round2;
						m->estimated += x->estimated;
						m->reranked += x->reranked;
						m->round1_wait_ns = ANN_MAX(m->round1_wait_ns, x->round1_wait_ns);
						m->estimate_ns = ANN_MAX(m->estimate_ns, x->estimate_ns);
						m->round2_wait_ns = ANN_MAX(m->round2_wait_ns, x->round2_wait_ns);
						m->rerank_ns = ANN_MAX(m->rerank_ns, x->rerank_ns);
						m->read_waves = ANN_MAX(m->read_waves, x->read_waves);
					}
				}
				/* per query: the R lists of k, rank-major in rids */
				for (size_t i = 0; rc >= 0 && i < nb; i++) {
					for (int r = 0; r < g_size; r++) {
						memcpy(li + (size_t)r * k, rids + ((size_t)r * nb + i) * k, k * sizeof(int64_t));
						memcpy(ld + (size_t)r * k, rd + ((size_t)r * nb + i) * k, k * sizeof(float));
					}
					rc = ann_topk_merge(li, ld, (size_t)g_size, k, mids + (b0 + i) * k, mdist + (b0 + i) * k, &err);
				}
				if (rc < 0) {
					/* rank 0 cannot merge: nothing else to agree on mid-batch */
					rank_fail(c, &err);
					MPI_Abort(MPI_COMM_WORLD, CLI_EXIT_FAIL);
				}
				uint64_t t1 = ann_now_ns();
				for (size_t i = 0; i < nb; i++)
					mst[b0 + i].latency_ns = t1 - t0;
			}
			wall = (double)(ann_now_ns() - tw) / 1e9;
		}
		ann_searcher_free(s);
		if (g_rank == 0)
			cli_search_report(&(cli_search_result){.k = (uint32_t)k, .nprobe = probes[pi], .nq = nq, .batch = batch,
				.threads = 1, .cache = cache, .rerank = rerank, .ids = mids, .st = mst, .gt = gt, .gk = gk,
				.wall = wall, .io_path = io_path, .json = json, .codes = info.code_bits != 0,
				.last = pi + 1 == nprobes, .ranks = g_size, .poll_us = (unsigned)poll}, lat);
	}
	rc = ANN_OK;
	const char *outp = cli_get(c, "out");
	if (g_rank == 0 && outp) {
		int32_t *oid = ann_malloc((nq ? nq : 1) * k * sizeof(int32_t));
		if (!oid)
			rc = ann_err(&err, ANN_E_NOMEM, "out of memory");
		for (size_t i = 0; oid && i < nq * k; i++)
			oid[i] = mids[i] > INT32_MAX ? -1 : (int32_t)mids[i];
		if (rc >= 0)
			rc = ann_gt_write(outp, (uint32_t)nq, (uint32_t)k, oid, mdist, &err);
		ann_free(oid);
		if (rc < 0)
			cli_fail(c, &err);
	}
	failed = agree(rc);
	ret = failed >= 0 ? CLI_EXIT_FAIL : 0;
	failed = -1;
out:
	if (failed > 0 && g_rank == 0)
		fprintf(stderr, "annann search: stopping: rank %d failed (its message above)\n", failed);
	ann_free(q);
	ann_free(ids);
	ann_free(dists);
	ann_free(st);
	ann_free(rids);
	ann_free(rd);
	ann_free(rst);
	ann_free(mids);
	ann_free(mdist);
	ann_free(mst);
	ann_free(lat);
	ann_free(li);
	ann_free(ld);
	ann_free(gt);
	ann_free(gtd);
	ann_index_close(idx);
	MPI_Finalize();
	return ret;
}

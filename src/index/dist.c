/* SPDX-License-Identifier: MIT */
/*
 * dist.c: what one rank of a distributed index does on its own (dist.h):
 * the steps of the distributed k-means, the router built from its
 * centroids, the descriptor DIR/annann-distributed, the router blob of an
 * open index, and the merge of per-rank answers. No MPI here: the tool
 * (tools/cmd_dist.c) moves the bytes between ranks.
 *
 * Invariants: the k-means update is a pure function of the reduced sums and
 * counts, so ranks that reduce the same partials hold the same centroids;
 * the descriptor is written whole (temporary file, rename) or not at all.
 */
#include "dist.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "index.h"
#include "kmeans.h"
#include "router.h"

#define PARTIAL_ROWS 4096u /* sample rows per nearest-centroid call */

int ann_dist_kmeans_partial(const float *x, size_t n, size_t d, const float *centroids, size_t k, ann_metric metric,
			    int threads, double *sums, uint64_t *counts, double *inertia, ann_error *err)
{
	uint32_t *ids = ann_malloc(PARTIAL_ROWS * sizeof(uint32_t));
	float *dist = ann_malloc(PARTIAL_ROWS * sizeof(float));
	int rc = ANN_OK;
	if (!ids || !dist) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans: out of memory");
		goto out;
	}
	for (size_t i0 = 0; i0 < n; i0 += PARTIAL_ROWS) {
		size_t m = ANN_MIN((size_t)PARTIAL_ROWS, n - i0);
		ANN_CHECK(rc, ann_nearest_centroids(x + i0 * d, m, d, centroids, k, 1, metric, threads, ids, dist, err));
		for (size_t i = 0; i < m; i++) {
			uint32_t c = ids[i];
			if (c >= k) {
				rc = ann_err(err, ANN_E_BADINPUT, "kmeans: sample vector %zu has no nearest centroid (a "
					     "component too large for float arithmetic)", i0 + i);
				goto out;
			}
			const float *v = x + (i0 + i) * d;
			double *s = sums + (size_t)c * d;
			for (size_t j = 0; j < d; j++)
				s[j] += v[j];
			counts[c]++;
			*inertia += dist[i];
		}
	}
fail:
out:
	ann_free(ids);
	ann_free(dist);
	return rc;
}

uint64_t ann_dist_kmeans_update(const double *sums, uint64_t *counts, size_t k, size_t d, ann_metric metric,
				float *centroids)
{
	for (size_t c = 0; c < k; c++) {
		if (!counts[c])
			continue; /* repaired below */
		float *out = centroids + c * d;
		double inv = 1.0 / (double)counts[c], n2 = 0;
		for (size_t j = 0; j < d; j++) {
			out[j] = (float)(sums[c * d + j] * inv);
			n2 += (double)out[j] * out[j];
		}
		if (metric != ANN_METRIC_L2 && n2 > 0)
			for (size_t j = 0; j < d; j++)
				out[j] = (float)(out[j] / sqrt(n2));
	}
	uint64_t repaired = 0;
	for (size_t c = 0; c < k; c++) {
		if (counts[c])
			continue;
		size_t big = 0;
		for (size_t b = 1; b < k; b++)
			if (counts[b] > counts[big])
				big = b;
		if (counts[big] < 2)
			break; /* nothing left to split */
		float *to = centroids + c * d, *from = centroids + big * d;
		for (size_t j = 0; j < d; j++) {
			float e = (float)(1.0 / 1024) * (fabsf(from[j]) > 1e-6f ? from[j] : 1e-3f);
			float s = (j & 1) ? 1.0f : -1.0f;
			to[j] = from[j] + s * e;
			from[j] = from[j] - s * e;
		}
		counts[c] = counts[big] / 2;
		counts[big] -= counts[c];
		repaired++;
	}
	return repaired;
}

int ann_dist_kmeans_router(const ann_build_opts *o, ann_encoding enc, const float *centroids, size_t k, size_t d,
			   const float *x, size_t n, uint8_t **blob, size_t *len, uint32_t *route_ef, ann_error *err)
{
	*blob = NULL;
	*len = 0;
	ann_router_env env;
	ann_router_env_from(o, &env);
	env.encoding = enc;
	float *c = ann_malloc(k * d * sizeof(float));
	if (!c)
		return ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory for %zu centroids", k);
	memcpy(c, centroids, k * d * sizeof(float));
	ann_router *r = NULL;
	int rc = ann_router_kmeans_from_centroids(&env, &o->kmeans, c, k, d, &r, err);
	ann_free(c);
	if (rc < 0)
		return rc;
	rc = r->ops->calibrate ? r->ops->calibrate(r, x, n, &env, err) : ANN_OK;
	if (rc >= 0) {
		*route_ef = ann_router_kmeans_ef(r);
		rc = r->ops->save(r, blob, len, err);
	}
	ann_router_free(r);
	return rc;
}

uint64_t ann_dist_hash(const void *p, size_t n)
{
	return XXH64(p, n, 0);
}

/* ---- the descriptor ------------------------------------------------------ */

int ann_dist_desc_write(const char *dir, const ann_dist_desc *d, ann_error *err)
{
	char path[4200], text[512];
	snprintf(path, sizeof path, "%s/%s", dir, ANN_DIST_DESCRIPTOR);
	int len = snprintf(text, sizeof text,
			   "annann distributed index 1\nranks %u\npartitions %u\ndim %u\nvectors %llu\n"
			   "owner partition mod ranks\nparts rank-<r>\nrouter_xxh64 %016llx\n",
			   d->ranks, d->partitions, d->dim, (unsigned long long)d->vectors,
			   (unsigned long long)d->router_hash);
	char *tmp;
	ANN_TRY(ann_create_temp(path, false, &tmp, err));
	int rc = ANN_OK;
	int fd = open(tmp, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = ann_err_sys(err, errno, "%s: cannot open", tmp);
		goto out;
	}
	rc = ann_pwrite_all(fd, text, (size_t)len, 0, tmp, err);
	if (rc >= 0 && fsync(fd) != 0)
		rc = ann_err_sys(err, errno, "%s: fsync", tmp);
	close(fd);
	if (rc >= 0 && rename(tmp, path) != 0)
		rc = ann_err_sys(err, errno, "%s: cannot rename from %s", path, tmp);
	if (rc >= 0)
		rc = ann_fsync_dir(dir, err);
out:
	if (rc < 0)
		unlink(tmp);
	ann_free(tmp);
	return rc;
}

int ann_dist_desc_read(const char *dir, ann_dist_desc *d, ann_error *err)
{
	char path[4200], line[256];
	snprintf(path, sizeof path, "%s/%s", dir, ANN_DIST_DESCRIPTOR);
	FILE *f = fopen(path, "re");
	if (!f) {
		if (errno == ENOENT || errno == ENOTDIR)
			return ann_err(err, ANN_E_NOTFOUND, "%s: no distributed index descriptor %s", dir,
				       ANN_DIST_DESCRIPTOR);
		return ann_err_sys(err, errno, "%s: cannot open", path);
	}
	memset(d, 0, sizeof *d);
	static const char *const expect[] = {"annann distributed index 1", "ranks %u%n", "partitions %u%n", "dim %u%n",
					     "vectors %llu%n", "owner partition mod ranks", "parts rank-<r>",
					     "router_xxh64 %llx%n"};
	int rc = ANN_OK;
	for (int ln = 0; ln < 8; ln++) {
		if (!fgets(line, sizeof line, f)) {
			rc = ann_err(err, ANN_E_BADINPUT, "%s: ends at line %d, expected \"%s\"", path, ln + 1, expect[ln]);
			break;
		}
		size_t l = strlen(line);
		if (l && line[l - 1] == '\n')
			line[--l] = 0;
		int used = -1;
		unsigned long long v = 0;
		unsigned u = 0;
		bool ok;
		switch (ln) {
		case 1: case 2: case 3:
			ok = sscanf(line, expect[ln], &u, &used) == 1 && (size_t)used == l && u > 0;
			if (ln == 1) d->ranks = u;
			else if (ln == 2) d->partitions = u;
			else d->dim = u;
			break;
		case 4: case 7:
			ok = sscanf(line, expect[ln], &v, &used) == 1 && (size_t)used == l;
			if (ln == 4) d->vectors = v;
			else d->router_hash = v;
			break;
		default:
			ok = strcmp(line, expect[ln]) == 0;
		}
		if (!ok) {
			rc = ann_err(err, ANN_E_BADINPUT, "%s: line %d is \"%.80s\", expected \"%s\"", path, ln + 1, line,
				     expect[ln]);
			break;
		}
	}
	fclose(f);
	return rc;
}

int ann_index_router_blob(const ann_index *idx, ann_router_kind *kind, uint8_t **blob, size_t *len,
			  uint32_t *route_ef, ann_error *err)
{
	*kind = idx->meta.router;
	*route_ef = ann_router_kmeans_ef(idx->router);
	return idx->router->ops->save(idx->router, blob, len, err);
}

/* ---- answers ------------------------------------------------------------- */

typedef struct cand {
	float d;
	int64_t id;
} cand;

static int by_id(const void *a, const void *b)
{
	const cand *x = a, *y = b;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return x->d < y->d ? -1 : x->d > y->d;
}

static int by_dist(const void *a, const void *b)
{
	const cand *x = a, *y = b;
	if (x->d != y->d)
		return x->d < y->d ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

int ann_topk_merge(const int64_t *ids, const float *dists, size_t m, size_t k, int64_t *out_ids, float *out_dists,
		   ann_error *err)
{
	size_t total;
	if (!ann_mul_ok(m, k, &total))
		return ann_err(err, ANN_E_INVAL, "merge: %zu lists of %zu", m, k);
	cand *c = ann_malloc((total ? total : 1) * sizeof *c);
	if (!c)
		return ann_err(err, ANN_E_NOMEM, "merge: out of memory for %zu candidates", total);
	size_t n = 0;
	for (size_t i = 0; i < total; i++)
		if (ids[i] >= 0)
			c[n++] = (cand){dists[i], ids[i]};
	qsort(c, n, sizeof *c, by_id);
	size_t u = 0;
	for (size_t i = 0; i < n; i++)
		if (u == 0 || c[u - 1].id != c[i].id)
			c[u++] = c[i];
	qsort(c, u, sizeof *c, by_dist);
	for (size_t i = 0; i < k; i++) {
		out_ids[i] = i < u ? c[i].id : -1;
		out_dists[i] = i < u ? c[i].d : INFINITY;
	}
	ann_free(c);
	return ANN_OK;
}

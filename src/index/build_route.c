/* SPDX-License-Identifier: MIT */
/*
 * build_route.c: the build's passes over the input (build.c's phases 1 and
 * 3): the training sample by selection sampling, and the routing of every
 * vector to its partitions' runs in the spill file, resumable at the
 * spill's checkpoints and the route log (build.c, invariant 5).
 *
 * Invariants:
 *  1. A chunk is routed once: its partition numbers reach the route log
 *     before they are used; a resumed build reads them back from there.
 *  2. Every vector before a spill checkpoint is in a run on disk.
 */
#include <math.h>
#include <unistd.h>

#include "build_int.h"

/* Converts n raw vectors of the input type to floats (and normalises them
 * for the cosine metric, whose blocks hold unit vectors). */
void build_to_float(const build *b, const void *raw, size_t n, float *out)
{
	size_t m = n * b->d;
	switch (b->in_type) {
	case ANN_DTYPE_U8:
		for (size_t i = 0; i < m; i++)
			out[i] = ((const uint8_t *)raw)[i];
		break;
	case ANN_DTYPE_I8:
		for (size_t i = 0; i < m; i++)
			out[i] = ((const int8_t *)raw)[i];
		break;
	default:
		memcpy(out, raw, m * sizeof(float));
		break;
	}
	if (b->o->metric == ANN_METRIC_COSINE) {
		for (size_t i = 0; i < n; i++) {
			float *v = out + i * b->d;
			double s = 0;
			for (uint32_t j = 0; j < b->d; j++)
				s += (double)v[j] * v[j];
			if (s > 0) {
				float inv = (float)(1.0 / sqrt(s));
				for (uint32_t j = 0; j < b->d; j++)
					v[j] *= inv;
			}
		}
	}
}

/* Reads the next chunk (up to `chunk` vectors, the input's position being
 * vector i) and converts it to floats in f. Returns the count read (> 0) or
 * an error: an input that ends before its header's count is ANN_E_BADINPUT. */
int64_t build_read_chunk(build *b, void *raw, size_t chunk, uint64_t i, float *f, ann_error *err)
{
	int64_t got = ann_vreader_read_raw(b->in, raw, chunk, err);
	if (got == 0)
		return ann_err(err, ANN_E_BADINPUT, "%s: ends at vector %llu, expected %llu", b->data_path,
			       (unsigned long long)i, (unsigned long long)b->n);
	if (got > 0)
		build_to_float(b, raw, (size_t)got, f);
	return got;
}

/* Selection sampling in one pass (Knuth, TAOCP 3.4.2, Algorithm S) over
 * vectors first..first+count-1: vector i is taken with probability
 * (want - taken) / (count - i). *taken gets how many were taken. Phase 1 of a
 * build samples the whole input; a distributed build's rank its slice. */
int build_sample_range(build *b, ann_rng *rng, uint64_t first, uint64_t count, uint64_t want, float *out,
			uint64_t *taken_out, ann_error *err)
{
	size_t chunk = ROUTE_CHUNK, esz = ann_dtype_size(b->in_type);
	uint8_t *raw = ann_malloc(chunk * b->d * esz);
	float *f = ann_malloc(chunk * b->d * sizeof(float));
	int rc = ANN_OK;
	uint64_t taken = 0, i = 0;
	if (!raw || !f) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for a read chunk");
		goto out;
	}
	ANN_CHECK(rc, ann_vreader_seek(b->in, first, err));
	while (i < count && taken < want) {
		int64_t got = build_read_chunk(b, raw, (size_t)ANN_MIN((uint64_t)chunk, count - i), first + i, f, err);
		if (got < 0) {
			rc = (int)got;
			goto out;
		}
		for (int64_t j = 0; j < got; j++, i++)
			if (ann_rng_below(rng, count - i) < want - taken)
				memcpy(out + (taken++) * b->d, f + (size_t)j * b->d, b->d * sizeof(float));
		ANN_CHECK(rc, build_progress(b, "sample", i, count, err));
	}
fail:
out:
	*taken_out = taken;
	ann_free(raw);
	ann_free(f);
	return rc;
}

/* Phase 1: the training sample, drawn from the whole input. */
int build_draw_sample(build *b, ann_rng *rng, float *sample, ann_error *err)
{
	uint64_t taken;
	int rc = build_sample_range(b, rng, 0, b->n, b->sample_n, sample, &taken, err);
	if (rc >= 0)
		b->sample_n = (size_t)taken;
	return rc;
}

/* Writes the spill's runs durably and records how far they reach: every
 * vector before `upto` is in a run on disk. */
static int spill_checkpoint(build *b, uint64_t upto, ann_error *err)
{
	uint8_t *blob = NULL;
	size_t len = 0;
	ANN_TRY(ann_spill_sync(b->spill, err));
	ANN_TRY(ann_spill_checkpoint(b->spill, &blob, &len, err));
	int rc = ann_bstate_unit_put(b->st, "spill.ckpt", blob, len, upto, 0, err);
	ann_free(blob);
	return rc;
}

/* Opens the spill: at its last checkpoint when there is one (*spilled gets
 * the vectors it covers), else new. */
int build_spill_start(build *b, size_t spill_mem, uint64_t *spilled, ann_error *err)
{
	void *blob;
	size_t len;
	uint64_t upto = 0;
	*spilled = 0;
	int got = ann_bstate_unit_get(b->st, "spill.ckpt", &blob, &len, &upto, NULL, err);
	ANN_TRY(got);
	if (got == 1) {
		int rc = upto > b->n ? ann_err(err, ANN_E_CORRUPT, "%s: the spill checkpoint covers %llu vectors of %llu",
					      b->spill_path, (unsigned long long)upto, (unsigned long long)b->n)
				     : ann_spill_resume(b->spill_path, b->nparts, b->pay_bytes, spill_mem, b->n * b->copies,
							blob, len, &b->spill, err);
		ann_free(blob);
		ANN_TRY(rc);
		*spilled = upto;
	} else {
		unlink(b->spill_path); /* a run written before any checkpoint: nothing in it counts */
		ANN_TRY(ann_spill_open(b->spill_path, b->nparts, b->pay_bytes, spill_mem, b->n * b->copies, &b->spill,
				       err));
	}
	ann_spill_keep(b->spill); /* close leaves it: the state is removed as a whole */
	return ANN_OK;
}

/* Phase 3: route every vector and spill it to its partitions. A chunk is
 * routed once: its partition numbers go to the route log before they are
 * used, and a resumed build reads them back from there. */
int build_route_all(build *b, ann_error *err)
{
	size_t chunk = ROUTE_CHUNK, esz = ann_dtype_size(b->in_type);
	/* Buffers of this function, the router's centroid copy or assignment
	 * tree (kmeans.h: k (d + 1) floats, k ids, the coarse centres and, per
	 * chunk, 16 bytes per vector and probe) and candidate lists, and per
	 * thread the assignment tiles of kmeans.h (1 MiB + up to 4096 rows of d
	 * floats). */
	size_t threads = (size_t)(b->o->threads > 0 ? b->o->threads : 1);
	size_t coarse = (size_t)ceil(sqrt((double)b->nparts)) + 1;
	size_t chunk_bytes = chunk * b->d * (esz + sizeof(float)) + chunk * b->copies * sizeof(uint32_t) +
			     ((size_t)b->nparts + coarse) * (b->d * sizeof(float) + 12) + chunk * 8 * 8 + chunk * 8 * 16 +
			     threads * (((size_t)1 << 20) + (size_t)4096 * b->d * sizeof(float));
	size_t router = b->router->ops->ram_bytes(b->router);
	if (b->o->mem_bytes < chunk_bytes + router + ((size_t)1 << 20))
		return ann_err(err, ANN_E_BUDGET, "routing needs %zu bytes (router %zu, buffers %zu) plus a spill "
			       "buffer; the budget is %zu", chunk_bytes + router + ((size_t)1 << 20), router,
			       chunk_bytes, b->o->mem_bytes);
	size_t spill_mem = b->o->mem_bytes - chunk_bytes - router;
	uint64_t spilled = 0, routed = 0;
	ANN_TRY(build_spill_start(b, spill_mem, &spilled, err));
	ANN_TRY(ann_bstate_log_open(b->st, &routed, err));
	if (routed < spilled)
		return ann_err(err, ANN_E_CORRUPT, "%s: the route log covers %llu vectors, the spill checkpoint %llu",
			       b->spill_path, (unsigned long long)routed, (unsigned long long)spilled);
	routed = ANN_MIN(routed, b->n);
	if (routed > 0)
		build_notice(b, "resuming: route %llu/%llu chunks done (%llu in spill runs)",
		       (unsigned long long)((routed + chunk - 1) / chunk), (unsigned long long)((b->n + chunk - 1) / chunk),
		       (unsigned long long)(spilled / chunk));
	uint8_t *raw = ann_malloc(chunk * b->d * esz);
	float *f = ann_malloc(chunk * b->d * sizeof(float));
	uint32_t *parts = ann_malloc(chunk * b->copies * sizeof(uint32_t));
	uint32_t *primary = ann_malloc(chunk * sizeof(uint32_t));
	int rc = ANN_OK;
	if (!raw || !f || !parts || !primary) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for routing buffers");
		goto out;
	}
	/* A router that observes the routed data (annann) sees every chunk
	 * again, in order; the others start after the checkpointed runs. */
	bool observe = b->router->ops->observe != NULL, small = build_small_units();
	uint64_t i = observe ? 0 : spilled;
	ANN_CHECK(rc, ann_vreader_seek(b->in, i, err));
	while (i < b->n) {
		if (i > spilled && (ann_spill_room(b->spill) < chunk * b->copies || small))
			ANN_CHECK(rc, spill_checkpoint(b, i, err));
		int64_t got = build_read_chunk(b, raw, chunk, i, f, err);
		if (got < 0) {
			rc = (int)got;
			goto out;
		}
		if (i < routed) {
			ANN_CHECK(rc, ann_bstate_log_read(b->st, i, (uint32_t)got, b->copies, parts, err));
		} else {
			const ann_assign_rule sp = {.copies = b->copies, .eps = b->o->replica_eps,
						    .soar_lambda = b->o->kmeans.soar_lambda};
			ANN_CHECK(rc, b->router->ops->assign(b->router, f, (size_t)got, &sp, b->o->threads, parts, err));
			ANN_CHECK(rc, ann_bstate_log_append(b->st, i, (uint32_t)got, b->copies, parts, err));
		}
		for (int64_t j = 0; j < got; j++) {
			const void *pay = b->pay_type == b->in_type && b->in_type != ANN_DTYPE_F32
						  ? (const void *)(raw + (size_t)j * b->d * esz)
						  : (const void *)(f + (size_t)j * b->d);
			primary[j] = parts[j * b->copies];
			for (uint32_t c = 0; c < b->copies; c++) {
				uint32_t p = parts[j * b->copies + c];
				if (p == UINT32_MAX)
					break;
				if (p >= b->nparts) {
					rc = ann_err(err, ANN_E_INVAL, "build: router returned partition %u of %u", p,
						     b->nparts);
					goto out;
				}
				if (i >= spilled)
					ANN_CHECK(rc, ann_spill_add(b->spill, p, (int64_t)(i + (uint64_t)j), pay, err));
			}
		}
		if (observe)
			ANN_CHECK(rc, b->router->ops->observe(b->router, f, (size_t)got, primary, err));
		i += (uint64_t)got;
		ANN_CHECK(rc, build_progress(b, "route", i, b->n, err));
	}
	ANN_CHECK(rc, ann_spill_finish(b->spill, err));
	ANN_CHECK(rc, spill_checkpoint(b, b->n, err));
	if (b->router->ops->finish)
		ANN_CHECK(rc, b->router->ops->finish(b->router, err));
fail:
out:
	ann_free(raw);
	ann_free(f);
	ann_free(parts);
	ann_free(primary);
	return rc;
}

/* SPDX-License-Identifier: MIT */
/*
 * api_data.c: the public face of internal modules that language bindings
 * and tools need: vector files (vecio), ground truth (gt) and an index's
 * facts as typed key/value fields (the list behind `annann info --json` and
 * the Python binding's Index.info()).
 *
 * Invariants:
 *  1. Thin: every function forwards to the module that owns the logic;
 *     nothing here parses a file or computes a distance.
 *  2. ann_index_info_fields is the only list of info keys; the CLI's JSON
 *     and the Python dict both come from it.
 */
#include "common.h"

#include <assert.h>

#include "gt.h"
#include "vecio.h"

/* ---- index facts --------------------------------------------------------- */

const char *ann_metric_name(ann_metric m)
{
	switch (m) {
	case ANN_METRIC_L2: return "l2";
	case ANN_METRIC_IP: return "ip";
	case ANN_METRIC_COSINE: return "cosine";
	default: return "?";
	}
}

static void f_int(ann_info_field *f, size_t *n, const char *key, uint64_t v)
{
	f[*n] = (ann_info_field){.key = key, .type = ANN_INFO_INT, .i = (int64_t)v};
	(*n)++;
}

static void f_num(ann_info_field *f, size_t *n, const char *key, double v)
{
	f[*n] = (ann_info_field){.key = key, .type = ANN_INFO_NUM, .num = v};
	(*n)++;
}

static void f_str(ann_info_field *f, size_t *n, const char *key, const char *v)
{
	f[*n] = (ann_info_field){.key = key, .type = ANN_INFO_STR, .str = v};
	(*n)++;
}

int ann_index_info_fields(const ann_index *idx, ann_info_field *out, size_t *n, ann_error *err)
{
	*n = 0;
	ann_index_info in;
	ANN_TRY(ann_index_get_info(idx, &in, err));
	double amp = in.vectors ? (double)in.stored_vectors / (double)in.vectors : 0;
	uint64_t esize = in.encoding == ANN_ENC_U8 || in.encoding == ANN_ENC_I8 ? 1 : 4;
	size_t k = 0;
	f_int(out, &k, "vectors", in.vectors);
	f_int(out, &k, "stored_vectors", in.stored_vectors);
	f_int(out, &k, "live_vectors", in.live_vectors);
	f_num(out, &k, "replication", amp);
	f_int(out, &k, "dim", in.dim);
	f_int(out, &k, "partitions", in.partitions);
	f_int(out, &k, "default_nprobe", in.default_nprobe);
	f_int(out, &k, "probe_p1", in.probe_p1);
	f_int(out, &k, "probe_fit_vectors", in.probe_fit_vectors);
	f_int(out, &k, "probe_fit_partitions", in.probe_fit_partitions);
	f_int(out, &k, "probe_fit_queries", in.probe_fit_queries);
	f_int(out, &k, "probe_stale", in.probe_stale);
	f_num(out, &k, "rerank_eps", in.rerank_eps);
	f_int(out, &k, "rerank_eps_tuned", in.rerank_eps_tuned);
	f_int(out, &k, "spread_partitions", in.spread_partitions);
	f_int(out, &k, "directions", in.directions);
	f_int(out, &k, "directions_partitions", in.directions_partitions);
	f_int(out, &k, "directions_stale", in.directions_stale);
	f_str(out, &k, "router", ann_router_name(in.router));
	f_str(out, &k, "store", in.store == ANN_STORE_LMDB ? "lmdb" : "file");
	f_str(out, &k, "encoding", ann_encoding_name(in.encoding));
	f_str(out, &k, "metric", ann_metric_name(in.metric));
	f_int(out, &k, "bytes_on_disk", in.bytes_on_disk);
	f_int(out, &k, "block_bytes", in.block_bytes);
	f_int(out, &k, "raw_bytes", in.vectors * in.dim * esize);
	f_int(out, &k, "router_ram_bytes", in.router_ram_bytes);
	f_int(out, &k, "route_ef", in.route_ef);
	f_int(out, &k, "router_bits", in.router_bits);
	f_num(out, &k, "router_bytes_per_vector", in.vectors ? (double)in.router_ram_bytes / (double)in.vectors : 0);
	f_int(out, &k, "code_bits", in.code_bits);
	f_int(out, &k, "code_factors", in.code_factors);
	f_int(out, &k, "code_order", in.code_order);
	f_int(out, &k, "head_bytes", in.head_bytes);
	f_int(out, &k, "largest_partition", in.largest_partition);
	f_int(out, &k, "smallest_partition", in.smallest_partition);
	assert(k <= ANN_INFO_MAX_FIELDS);
	*n = k;
	return ANN_OK;
}

void ann_index_size_histogram(const ann_index *idx, uint64_t hist[ANN_INFO_HIST_BINS])
{
	memset(hist, 0, ANN_INFO_HIST_BINS * sizeof hist[0]);
	ann_index_info in;
	if (ann_index_get_info(idx, &in, NULL) < 0)
		return;
	for (uint32_t p = 0; p < in.partitions; p++) {
		uint64_t s = ann_index_partition_size(idx, p);
		int b = 0;
		while (b < ANN_INFO_HIST_BINS - 1 && (1ull << (b + 1)) <= s)
			b++;
		hist[s ? ANN_MIN(b + 1, ANN_INFO_HIST_BINS - 1) : 0]++;
	}
}

/* ---- vector files ------------------------------------------------------- */

int ann_vector_reader_open(const char *path, ann_vector_reader **out, ann_error *err)
{
	return ann_vreader_open(path, out, err);
}

void ann_vector_reader_close(ann_vector_reader *r)
{
	ann_vreader_close(r);
}

void ann_vector_reader_shape(const ann_vector_reader *r, uint64_t *n, uint32_t *dim, ann_dtype *dtype)
{
	if (n)
		*n = ann_vreader_count(r);
	if (dim)
		*dim = ann_vreader_dim(r);
	if (dtype)
		*dtype = ann_vreader_dtype(r);
}

int64_t ann_vector_reader_read(ann_vector_reader *r, void *out, size_t max, ann_error *err)
{
	return ann_vreader_read_raw(r, out, max, err);
}

int64_t ann_vector_reader_read_f32(ann_vector_reader *r, float *out, size_t max, ann_error *err)
{
	return ann_vreader_read_f32(r, out, max, err);
}

int ann_vector_path_dtype(const char *path, ann_dtype *out, ann_error *err)
{
	ann_vfmt fmt;
	ANN_TRY(ann_vfmt_from_path(path, &fmt, err));
	*out = ann_vfmt_dtype(fmt);
	return ANN_OK;
}

int ann_vector_writer_open(const char *path, uint32_t dim, ann_vector_writer **out, ann_error *err)
{
	return ann_vwriter_open(path, dim, out, err);
}

int ann_vector_writer_write(ann_vector_writer *w, const void *v, size_t n, ann_error *err)
{
	return ann_vwriter_write_raw(w, v, n, err);
}

int ann_vector_writer_write_f32(ann_vector_writer *w, const float *v, size_t n, ann_error *err)
{
	return ann_vwriter_write_f32(w, v, n, err);
}

int ann_vector_writer_commit(ann_vector_writer *w, ann_error *err)
{
	return ann_vwriter_close(w, err);
}

void ann_vector_writer_abort(ann_vector_writer *w)
{
	ann_vwriter_abort(w);
}

int ann_vector_reader_seek(ann_vector_reader *r, uint64_t i, ann_error *err)
{
	return ann_vreader_seek(r, i, err);
}

int ann_vector_path_format(const char *path, const char **name, uint64_t *max_vectors, ann_error *err)
{
	ann_vfmt f;
	ANN_TRY(ann_vfmt_from_path(path, &f, err));
	if (name)
		*name = ann_vfmt_name(f);
	if (max_vectors)
		*max_vectors = ann_vfmt_max_vectors(f);
	return ANN_OK;
}

int ann_vector_path_check_size(const char *path, uint64_t n, uint32_t dim, ann_error *err)
{
	return ann_vfile_check_size(path, n, dim, err);
}

/* ---- ground truth --------------------------------------------------------- */

void ann_ground_truth_opts_init(ann_ground_truth_opts *o)
{
	ann_gt_opts g;
	ann_gt_opts_init(&g);
	memset(o, 0, sizeof *o);
	o->k = g.k;
	o->metric = g.metric;
	o->threads = g.threads;
	o->mem_bytes = g.mem_bytes;
}

static void gt_opts(const ann_ground_truth_opts *o, ann_gt_opts *g)
{
	ann_gt_opts_init(g);
	g->k = o->k;
	g->metric = o->metric;
	g->threads = o->threads > 0 ? o->threads : 1;
	g->mem_bytes = o->mem_bytes;
	g->progress = o->progress;
	g->progress_ctx = o->progress_ctx;
}

int ann_ground_truth(const char *base_path, const char *query_path, const ann_ground_truth_opts *o,
		     uint32_t *nq, int32_t **ids, float **dists, ann_error *err)
{
	ann_gt_opts g;
	gt_opts(o, &g);
	return ann_gt_compute(base_path, query_path, &g, nq, ids, dists, err);
}

int ann_ground_truth_mem(const float *base, size_t n, const float *queries, size_t nq, size_t dim,
			 const ann_ground_truth_opts *o, int32_t *ids, float *dists, ann_error *err)
{
	ann_gt_opts g;
	gt_opts(o, &g);
	return ann_gt_compute_mem(base, n, queries, nq, dim, &g, ids, dists, err);
}

int ann_ground_truth_read(const char *path, uint32_t *nq, uint32_t *k, int32_t **ids, float **dists,
			  ann_error *err)
{
	return ann_gt_read(path, nq, k, ids, dists, err);
}

int ann_ground_truth_write(const char *path, uint32_t nq, uint32_t k, const int32_t *ids, const float *dists,
			   ann_error *err)
{
	return ann_gt_write(path, nq, k, ids, dists, err);
}

void ann_buffer_free(void *p)
{
	ann_free(p);
}

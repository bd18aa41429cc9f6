/* SPDX-License-Identifier: MIT */
/*
 * index.c: opening an index read-only (meta, router, directory, dictionary),
 * the facts `annann info` prints, and ann_verify, which checks the catalog,
 * the store and then decodes every block.
 */
#include "index.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>

#include "build_defaults.h"
#include "dist.h"
#include "distance.h"

static int load_models(ann_index *x, ann_error *err)
{
	ann_cat_txn *t;
	ANN_TRY(ann_catalog_read_begin(ann_store_catalog(x->store), &t, err));
	const uint8_t *blob;
	size_t len;
	int rc;
	rc = ann_index_meta_read(t, &x->meta, err);
	if (rc < 0) {
		ann_err_prefix(err, rc, "%s", x->path);
		goto fail;
	}
	rc = ann_catalog_model_get(t, "router", &blob, &len, err);
	if (rc < 0) {
		ann_err_prefix(err, rc, "%s: router model", x->path);
		goto fail;
	}
	rc = ann_router_load(x->meta.router, blob, len, x->meta.dim, x->meta.metric, &x->router, err);
	if (rc < 0) {
		ann_err_prefix(err, rc, "%s: catalog", x->path);
		goto fail;
	}
	uint64_t ef = 0; /* indexes built before the router blob held the calibrated ef keep it here */
	rc = ann_catalog_meta_get_u64(t, "router.ef", &ef, err);
	if (rc < 0 && rc != ANN_E_NOTFOUND)
		goto fail;
	if (ef > ANN_MAX_EF) {
		rc = ann_err(err, ANN_E_CORRUPT, "%s: catalog meta router.ef is %llu, expected 1..%u", x->path,
			     (unsigned long long)ef, ANN_MAX_EF);
		goto fail;
	}
	if (!ann_router_kmeans_ef(x->router))
		ann_router_kmeans_set_legacy_ef(x->router, (uint32_t)ef);
	uint64_t rank = 0, ranks = 0; /* a part of a distributed index (dist.h) */
	rc = ann_catalog_meta_get_u64(t, "dist.ranks", &ranks, err);
	if (rc >= 0)
		rc = ann_catalog_meta_get_u64(t, "dist.rank", &rank, err);
	if (rc < 0 && rc != ANN_E_NOTFOUND)
		goto fail;
	if (rc >= 0 && (ranks < 1 || ranks > UINT32_MAX || rank >= ranks)) {
		rc = ann_err(err, ANN_E_CORRUPT, "%s: catalog meta dist.rank %llu of dist.ranks %llu, expected a rank "
			     "below ranks >= 1", x->path, (unsigned long long)rank, (unsigned long long)ranks);
		goto fail;
	}
	x->dist_rank = (uint32_t)rank;
	x->dist_ranks = (uint32_t)ranks;
	rc = ann_probe_model_load(t, &x->probe, err);
	if (rc < 0) {
		ann_err_prefix(err, rc, "%s", x->path);
		goto fail;
	}
	rc = ann_dirs_load(t, x->meta.dim, &x->dirs, err);
	if (rc < 0) {
		ann_err_prefix(err, rc, "%s", x->path);
		goto fail;
	}
	double reps = 0;
	rc = ann_catalog_meta_get_f64(t, ANN_RERANK_EPS_META, &reps, err);
	if (rc < 0 && rc != ANN_E_NOTFOUND)
		goto fail;
	if (rc >= 0 && !(reps > 0 && reps <= 100)) {
		rc = ann_err(err, ANN_E_CORRUPT, "%s: catalog meta %s is %g, expected a number in (0, 100]", x->path,
			     ANN_RERANK_EPS_META, reps);
		goto fail;
	}
	x->rerank_eps = rc >= 0 ? (float)reps : 0.0f;
	if (x->meta.dict_id) {
		char name[32];
		snprintf(name, sizeof name, "zstd_dict.%u", x->meta.dict_id);
		ANN_CHECK(rc, ann_catalog_model_get(t, name, &blob, &len, err));
		ANN_CHECK(rc, block_dict_new(x->meta.dict_id, blob, len, BLOCK_DICT_DECODE_ONLY, &x->dict, err));
	}
	if (x->meta.code_bits)
		ANN_CHECK(rc, ann_rbq_new(x->meta.dim, x->meta.code_bits, x->meta.code_seed, &x->rbq, err));
	rc = ANN_OK;
fail:
	ann_catalog_read_end(t);
	return rc;
}

/* The catalog's index facts against each other, the directory, the router
 * and the header of one block (read through the store, as search would):
 * search scans blocks with the catalog's dimension and element type, so an
 * index whose meta disagrees with its data must not open. */
static int check_meta(ann_index *x, ann_error *err)
{
	const ann_index_meta *m = &x->meta;
	if (m->vectors > INT32_MAX)
		return ann_err(err, ANN_E_CORRUPT, "%s: catalog meta index.vectors = %llu, at most %d (the largest input "
			       "file)", x->path, (unsigned long long)m->vectors, INT32_MAX);
	uint64_t sum = 0;
	uint32_t first = UINT32_MAX;
	for (uint32_t p = 0; p < x->dir.n; p++)
		if (x->dir.ents[p].kind != ANN_KIND_NONE) {
			sum += x->dir.ents[p].count;
			if (first == UINT32_MAX)
				first = p;
		}
	if (sum != m->stored_vectors)
		return ann_err(err, ANN_E_CORRUPT, "%s: catalog meta index.stored_vectors = %llu, but the directory's "
			       "blocks hold %llu vectors", x->path, (unsigned long long)m->stored_vectors,
			       (unsigned long long)sum);
	if (x->dir.n > x->router->nparts)
		return ann_err(err, ANN_E_CORRUPT, "%s: the directory holds partition %u, the router names 0..%u",
			       x->path, x->dir.n - 1, x->router->nparts - 1);
	if (first == UINT32_MAX)
		return ANN_OK;
	ann_store_reader_opts ro;
	ann_store_reader_opts_init(&ro);
	ro.io.queue_depth = 1;
	ann_store_reader *rd = NULL;
	int rc = ann_store_reader_new(x->store, &ro, &rd, err);
	if (rc == ANN_OK)
		rc = ann_store_reader_submit(rd, &first, NULL, 1, err);
	ann_block_read br;
	int got = 0;
	if (rc == ANN_OK) {
		got = ann_store_reader_next(rd, &br, err);
		if (got < 0)
			rc = got;
	}
	if (got > 0) {
		/* A block that does not read or whose header fails its checksum is
		 * left to search and verify, which name it; only a sound header
		 * that disagrees with the catalog refuses the open. */
		ann_block_info in;
		ann_cblock_info ci;
		if (br.status >= 0 && cblock_is(br.data, br.length)) {
			/* a codes block: the same facts from its own header */
			if (cblock_peek(br.data, br.length, &ci, NULL) == ANN_OK &&
			    (ci.dim != m->dim || ci.encoding != ann_encoding_block(m->encoding) || ci.partition != first ||
			     ci.count != br.ent.count || !m->code_bits))
				rc = ann_err(err, ANN_E_CORRUPT, "%s: partition %u: the codes block holds %u vectors of "
					     "partition %llu, dimension %u, block encoding %d; the catalog says %u vectors, "
					     "dimension %u, %s (block encoding %d)%s", x->path, first, ci.count,
					     (unsigned long long)ci.partition, ci.dim, (int)ci.encoding, br.ent.count, m->dim,
					     ann_encoding_name(m->encoding), (int)ann_encoding_block(m->encoding),
					     m->code_bits ? "" : ", without codes");
		} else if (br.status < 0 || block_peek(br.data, br.length, &in, NULL) < 0) {
			rc = ANN_OK;
		} else if (in.dim != m->dim || in.encoding != ann_encoding_block(m->encoding) || in.partition != first ||
			   in.count != br.ent.count) {
			rc = ann_err(err, ANN_E_CORRUPT, "%s: partition %u: the block holds %u vectors of partition %llu, "
				     "dimension %u, block encoding %d; the catalog says %u vectors, dimension %u, %s (block "
				     "encoding %d)", x->path, first, in.count, (unsigned long long)in.partition, in.dim,
				     (int)in.encoding, br.ent.count, m->dim, ann_encoding_name(m->encoding),
				     (int)ann_encoding_block(m->encoding));
		}
		ann_store_reader_release(rd, &br);
		while (ann_store_reader_next(rd, &br, NULL) > 0)
			ann_store_reader_release(rd, &br);
	}
	ann_store_reader_free(rd);
	return rc;
}

int ann_index_open(const char *index_dir, ann_index **out, ann_error *err)
{
	return ann_index_load(index_dir, false, out, err);
}

ann_dtype ann_index_delta_type(const ann_index *x)
{
	return x->meta.encoding == ANN_ENC_U8 ? ANN_DTYPE_U8 : x->meta.encoding == ANN_ENC_I8 ? ANN_DTYPE_I8 : ANN_DTYPE_F32;
}

size_t ann_index_delta_bytes(const ann_index *x)
{
	return (size_t)x->meta.dim * (ann_index_delta_type(x) == ANN_DTYPE_F32 ? 4 : 1);
}

int ann_index_reload(ann_index *x, ann_error *err)
{
	ann_router_free(x->router);
	x->router = NULL;
	block_dict_free(x->dict);
	x->dict = NULL;
	ann_rbq_free(x->rbq);
	x->rbq = NULL;
	ann_dirs_free(&x->dirs);
	ann_catalog_dir_free(&x->dir);
	ANN_TRY(load_models(x, err));
	return ann_store_dir_copy(x->store, &x->dir, err);
}

/* A distributed index's directory (its descriptor) or one of its parts
 * opened as a whole index would answer from a fraction of the data: both
 * are refused, saying what they are (dist.h). */
static int refuse_distributed(const char *dir, const ann_index *x, ann_error *err)
{
	ann_dist_desc dd;
	ann_error e2 = {0};
	if (!x && ann_dist_desc_read(dir, &dd, &e2) != ANN_E_NOTFOUND) {
		/* Not read (out of memory, a failing disk) is not "bad". */
		if (e2.code == ANN_E_NOMEM || e2.code == ANN_E_IO) {
			if (err)
				*err = e2;
			return e2.code;
		}
		if (e2.code)
			return ann_err(err, ANN_E_UNSUPPORTED, "%s: a distributed index whose descriptor is bad: %s", dir,
				       e2.msg);
		return ann_err(err, ANN_E_UNSUPPORTED, "%s: a distributed index of %u ranks (descriptor %s/%s), not a "
			       "single-node index: search it with 'mpirun -np %u annann search --distributed --index %s'",
			       dir, dd.ranks, dir, ANN_DIST_DESCRIPTOR, dd.ranks, dir);
	}
	if (x && x->dist_ranks)
		return ann_err(err, ANN_E_UNSUPPORTED, "%s: rank %u's part of a distributed index of %u ranks, holding "
			       "only its own partitions: search the whole index (the parent directory) with "
			       "'mpirun -np %u annann search --distributed'", dir, x->dist_rank, x->dist_ranks,
			       x->dist_ranks);
	return ANN_OK;
}

static int load(const char *index_dir, bool writable, bool allow_part, ann_index **out, ann_error *err);

int ann_index_load(const char *index_dir, bool writable, ann_index **out, ann_error *err)
{
	return load(index_dir, writable, false, out, err);
}

int ann_index_open_part(const char *dir, ann_index **out, uint32_t *rank, uint32_t *ranks, ann_error *err)
{
	ANN_TRY(load(dir, false, true, out, err));
	*rank = (*out)->dist_rank;
	*ranks = (*out)->dist_ranks;
	return ANN_OK;
}

static int load(const char *index_dir, bool writable, bool allow_part, ann_index **out, ann_error *err)
{
	ann_blas_single();
	*out = NULL;
	if (!allow_part)
		ANN_TRY(refuse_distributed(index_dir, NULL, err));
	ann_index *x = ann_calloc(1, sizeof *x);
	if (!x)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the index", index_dir);
	int rc;
	x->path = ann_malloc(strlen(index_dir) + 1);
	if (!x->path) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the index", index_dir);
		goto fail;
	}
	strcpy(x->path, index_dir);
	ann_store_opts so;
	ann_store_opts_init(&so);
	so.readonly = !writable;
	so.writable = writable;
	ANN_CHECK(rc, ann_store_open(index_dir, &so, &x->store, err));
	ANN_CHECK(rc, load_models(x, err));
	ANN_CHECK(rc, ann_store_dir_copy(x->store, &x->dir, err));
	ANN_CHECK(rc, check_meta(x, err));
	if (!allow_part)
		ANN_CHECK(rc, refuse_distributed(index_dir, x, err));
	*out = x;
	return ANN_OK;
fail:
	ann_index_close(x);
	return rc;
}

void ann_index_close(ann_index *x)
{
	if (!x)
		return;
	ann_router_free(x->router);
	ann_dirs_free(&x->dirs);
	block_dict_free(x->dict);
	ann_rbq_free(x->rbq);
	ann_catalog_dir_free(&x->dir);
	ann_store_close(x->store);
	ann_free(x->path);
	ann_free(x);
}

uint64_t ann_index_partition_size(const ann_index *x, uint32_t p)
{
	if (!x || p >= x->dir.n || x->dir.ents[p].kind == ANN_KIND_NONE)
		return 0;
	return x->dir.ents[p].count;
}

int ann_index_get_info(const ann_index *x, ann_index_info *info, ann_error *err)
{
	memset(info, 0, sizeof *info);
	info->vectors = x->meta.vectors;
	info->stored_vectors = x->meta.stored_vectors;
	info->live_vectors = x->meta.live_vectors;
	info->dim = x->meta.dim;
	info->partitions = x->dir.count;
	info->default_nprobe = ann_default_nprobe(x->router->nparts); /* all ranks' partitions */
	info->probe_p1 = x->probe.p1;
	info->probe_fit_vectors = x->probe.fit_vectors;
	info->probe_fit_partitions = x->probe.fit_parts;
	info->probe_fit_queries = x->probe.fit_queries;
	info->rerank_eps = x->rbq ? (x->rerank_eps > 0 ? x->rerank_eps : ANN_DEFAULT_RERANK_EPS) : 0.0f;
	info->rerank_eps_tuned = x->rbq && x->rerank_eps > 0;
	info->probe_stale = ann_probe_stale(&x->probe, x->meta.live_vectors, x->dir.count);
	info->router = x->meta.router;
	info->store = x->meta.store;
	info->encoding = x->meta.encoding;
	info->metric = x->meta.metric;
	info->router_ram_bytes = x->router->ops->ram_bytes(x->router) + (uint64_t)x->dir.n * sizeof(ann_dirent) +
				 ann_dirs_bytes(&x->dirs);
	info->directions = x->dirs.m;
	for (uint32_t p = 0; p < x->dir.n && p < x->dirs.nparts; p++) /* present ones: compared with partitions */
		info->directions_partitions += x->dir.ents[p].kind != ANN_KIND_NONE;
	info->directions_stale = x->dirs.stale;
	info->route_ef = ann_router_kmeans_ef(x->router);
	info->router_bits = ann_router_kcodes_bits(x->router);
	info->code_bits = x->meta.code_bits;
	info->code_factors = x->meta.code_bits ? (x->meta.code_f16 ? 16 : 32) : 0;
	info->code_order = x->meta.code_bits && x->meta.code_order;
	info->head_bytes = 0;
	for (uint32_t p = 0; p < x->dir.n; p++)
		info->spread_partitions += x->dir.ents[p].kind != ANN_KIND_NONE && x->dir.ents[p].spread > 0.0f;
	for (uint32_t p = 0; p < x->dir.n; p++)
		info->head_bytes += x->dir.ents[p].head;
	info->smallest_partition = UINT64_MAX;
	for (uint32_t p = 0; p < x->dir.n; p++) {
		const ann_dirent *e = &x->dir.ents[p];
		if (e->kind == ANN_KIND_NONE)
			continue;
		info->block_bytes += e->length;
		info->largest_partition = ANN_MAX(info->largest_partition, (uint64_t)e->count);
		info->smallest_partition = ANN_MIN(info->smallest_partition, (uint64_t)e->count);
	}
	if (info->smallest_partition == UINT64_MAX)
		info->smallest_partition = 0;
	ann_store_space sp;
	ANN_TRY(ann_store_space_get(x->store, &sp, err));
	info->bytes_on_disk = sp.disk_bytes;
	return ANN_OK;
}

/* ---- verify ---------------------------------------------------------------- */

typedef struct verify_ctx {
	ann_verify_fn fn;
	void *ctx;
	uint64_t problems;
	uint64_t next_id; /* ids in blocks are below it */
} verify_ctx;

static void verify_issue(void *ctx, const ann_issue *is)
{
	verify_ctx *v = ctx;
	if (is->warning)
		return;
	v->problems++;
	if (v->fn)
		v->fn(v->ctx, is->pid < 0 ? UINT32_MAX : (uint32_t)is->pid, is->msg);
}

static void verify_report(verify_ctx *v, uint32_t pid, const char *fmt, const char *msg)
{
	char buf[700];
	snprintf(buf, sizeof buf, fmt, msg);
	v->problems++;
	if (v->fn)
		v->fn(v->ctx, pid, buf);
}

/* A codes block (format 2): every checksum, the layout, the directory's head
 * length and count, and its codes against its exact rows (re-encoded). */
static void verify_codes_block(ann_index *x, verify_ctx *v, const ann_block_read *br, int64_t **ids, size_t *ids_cap,
			       uint8_t **rows, size_t *rows_cap)
{
	ann_error e = {0};
	ann_cblock_info in;
	if (!x->rbq) {
		verify_report(v, br->pid, "%s", "codes block in an index without codes (meta codes.kind missing)");
		return;
	}
	if (cblock_decode(br->data, br->length, &in, ids, ids_cap, rows, rows_cap, &e) < 0) {
		verify_report(v, br->pid, "codes block does not decode: %s", e.msg);
		return;
	}
	if (in.count != br->ent.count || in.partition != br->pid || in.dim != x->meta.dim ||
	    in.head_bytes != br->ent.head || in.encoding != ann_encoding_block(x->meta.encoding)) {
		char m[400];
		snprintf(m, sizeof m, "codes block holds %u vectors of partition %llu, dimension %u, head %u bytes, "
			 "encoding %u; the directory and meta say %u vectors of partition %u, dimension %u, head %u "
			 "bytes, encoding %u", in.count, (unsigned long long)in.partition, in.dim, in.head_bytes,
			 (unsigned)in.encoding, br->ent.count, br->pid, x->meta.dim, br->ent.head,
			 (unsigned)ann_encoding_block(x->meta.encoding));
		verify_report(v, br->pid, "%s", m);
		return;
	}
	for (uint32_t i = 0; i < in.count; i++)
		if ((*ids)[i] < 0) {
			verify_report(v, br->pid, "%s", "holds a negative id");
			return;
		}
	if (cblock_verify_codes(x->rbq, br->data, br->length, &e) < 0) {
		verify_report(v, br->pid, "%s", e.msg);
		return;
	}
	/* The probe order's spread (0: written before the directory kept it). */
	float sp = ann_catalog_spread_stored((float)cblock_spread(&in, br->data));
	if (br->ent.spread != 0.0f && br->ent.spread != sp) {
		char m[200];
		snprintf(m, sizeof m, "directory spread %g, the block's rows give %g", (double)br->ent.spread, (double)sp);
		verify_report(v, br->pid, "%s", m);
	}
}

/* Decodes every block: payload checksum, structure, count against the
 * directory, ids within the input's range. */
static int verify_blocks(ann_index *x, verify_ctx *v, ann_error *err)
{
	ann_store_reader_opts ro;
	ann_store_reader_opts_init(&ro);
	ro.verify = true;
	ann_store_reader *rd = NULL;
	ann_block_dec *dec = NULL;
	uint32_t *pids = NULL;
	int64_t *cids = NULL;
	uint8_t *crows = NULL;
	size_t cids_cap = 0, crows_cap = 0;
	int rc;
	ANN_CHECK(rc, ann_store_reader_new(x->store, &ro, &rd, err));
	ANN_CHECK(rc, block_dec_new(0, &dec, err));
	pids = ann_malloc((x->dir.count ? x->dir.count : 1) * sizeof(uint32_t));
	if (!pids) {
		rc = ann_err(err, ANN_E_NOMEM, "verify: out of memory");
		goto fail;
	}
	uint32_t np = 0;
	for (uint32_t p = 0; p < x->dir.n; p++)
		if (x->dir.ents[p].kind != ANN_KIND_NONE)
			pids[np++] = p;
	ANN_CHECK(rc, ann_store_reader_submit(rd, pids, NULL, np, err));
	for (;;) {
		ann_block_read br;
		ann_error e = {0};
		rc = ann_store_reader_next(rd, &br, &e);
		if (rc < 0) {
			if (err)
				*err = e;
			goto fail;
		}
		if (rc == 0)
			break;
		if (br.status < 0) {
			verify_report(v, br.pid, "%s", e.msg);
		} else if (br.ent.head || cblock_is(br.data, br.length)) {
			verify_codes_block(x, v, &br, &cids, &cids_cap, &crows, &crows_cap);
		} else {
			ann_block_view view;
			int drc = block_decode(dec, br.data, br.length, x->dict, &view, &e);
			if (drc < 0) {
				verify_report(v, br.pid, "block does not decode: %s", e.msg);
			} else if (view.info.count != br.ent.count || view.info.partition != br.pid ||
				   view.info.dim != x->meta.dim ||
				   view.info.encoding != ann_encoding_block(x->meta.encoding)) {
				char m[300];
				snprintf(m, sizeof m, "holds %u vectors of partition %llu, dimension %u, block encoding %d; "
					 "the catalog says %u vectors of partition %u, dimension %u, %s (block encoding %d)",
					 view.info.count, (unsigned long long)view.info.partition, view.info.dim,
					 (int)view.info.encoding, br.ent.count, br.pid, x->meta.dim,
					 ann_encoding_name(x->meta.encoding), (int)ann_encoding_block(x->meta.encoding));
				verify_report(v, br.pid, "%s", m);
			} else {
				for (uint32_t i = 0; i < view.info.count; i++)
					if (view.ids[i] < 0 || (uint64_t)view.ids[i] >= v->next_id) {
						char m[160];
						snprintf(m, sizeof m, "holds id %lld, outside 0..%llu (meta index.next_id, else "
							 "index.vectors)", (long long)view.ids[i],
							 (unsigned long long)(v->next_id - 1));
						verify_report(v, br.pid, "%s", m);
						break;
					}
			}
		}
		ann_store_reader_release(rd, &br);
	}
	rc = ANN_OK;
fail:
	ann_free(pids);
	ann_free(cids);
	ann_free(crows);
	block_dec_free(dec);
	ann_store_reader_free(rd);
	return rc;
}

int ann_verify(const char *index_dir, ann_verify_fn report, void *ctx, uint64_t *problems, ann_error *err)
{
	verify_ctx v = {report, ctx, 0, 0};
	ann_index *x = NULL;
	if (problems)
		*problems = 0;
	int rc = load(index_dir, false, true, &x, err); /* a distributed index's part is checked alone */
	if (rc == ANN_E_CORRUPT) {
		/* The catalog itself is damaged: report it as the problem. */
		verify_report(&v, UINT32_MAX, "%s", err ? err->msg : "catalog corrupt");
		if (problems)
			*problems = v.problems;
		return ANN_OK;
	}
	ANN_TRY(rc);
	ann_verify_stats st;
	rc = ann_store_verify(x->store, verify_issue, &v, &st, err);
	if (rc < 0 && rc != ANN_E_CORRUPT)
		goto out;
	if (x->dir.count != x->meta.partitions && !x->dist_ranks) /* a part holds only its own partitions */
		verify_report(&v, UINT32_MAX, "%s", "the directory and meta index.partitions disagree");
	v.next_id = x->meta.vectors;
	ann_cat_txn *t = NULL;
	rc = ann_catalog_read_begin(ann_store_catalog(x->store), &t, err);
	if (rc < 0)
		goto out;
	rc = ann_catalog_meta_get_u64(t, "index.next_id", &v.next_id, err);
	ann_catalog_read_end(t);
	if (rc == ANN_E_NOTFOUND)
		v.next_id = x->meta.vectors;
	else if (rc < 0)
		verify_report(&v, UINT32_MAX, "%s", err ? err->msg : "meta index.next_id is unreadable");
	if (v.next_id < x->meta.vectors || v.next_id > (uint64_t)INT64_MAX)
		verify_report(&v, UINT32_MAX, "%s", "meta index.next_id is below index.vectors or past 2^63");
	rc = verify_blocks(x, &v, err);
out:
	ann_index_close(x);
	if (problems)
		*problems = v.problems;
	return rc;
}

/* ---- repair ---------------------------------------------------------------- */

int ann_repair(const char *index_dir, int dry_run, ann_repair_result *res, ann_error *err)
{
	memset(res, 0, sizeof *res);
	int fd = open(index_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? ann_err(err, ANN_E_NOTFOUND, "%s: no such index directory", index_dir)
				       : ann_err_sys(err, errno, "%s: cannot open directory", index_dir);
	/* The writer lock of the store (store.c): no insert, delete or
	 * compact may run on the old catalog while it is replaced. */
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		int rc = errno == EWOULDBLOCK ? ann_err(err, ANN_E_STATE, "%s: another process has the index open for "
							"writing", index_dir)
					      : ann_err_sys(err, errno, "%s: cannot lock directory", index_dir);
		close(fd);
		return rc;
	}
	char path[4200];
	snprintf(path, sizeof path, "%s/catalog.lmdb", index_dir);
	ann_catalog_repair_opts o = { dry_run != 0 };
	ann_catalog_repair_result r;
	int rc = ann_catalog_repair(path, &o, &r, err);
	res->damaged = r.damaged;
	snprintf(res->damage, sizeof res->damage, "%s", r.damage);
	res->entries = r.entries;
	res->bad_values = r.bad_values;
	snprintf(res->backup, sizeof res->backup, "%s", r.backup);
	close(fd); /* releases the lock */
	return rc;
}

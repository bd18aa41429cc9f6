/* SPDX-License-Identifier: MIT */
/*
 * build_pack.c: the build's last phases (build.c's phases 4 and 5): each
 * partition is gathered from the spill's runs, encoded as one block (or a
 * codes block) and published to the store in batches of commits; then
 * meta, router and dictionary commit together.
 *
 * Invariants:
 *  1. Commits go in partition order: what a killed build committed is the
 *     prefix 0..p-1 of the store's directory, and a resumed pack starts at p.
 *  2. Memory: the largest partition three times over plus 8 MiB, checked
 *     against the budget before anything is allocated.
 */
#include "build_int.h"
#include "index_meta.h"

static void block_params(const build *b, ann_block_params *p, bool for_dict_sample)
{
	ann_index_block_params(b->enc, b->o->store, for_dict_sample ? 0 : b->o->zstd_level, b->o->shuffle, p);
	p->dict = for_dict_sample ? NULL : b->dict;
}

/* Trains a zstd dictionary on the first partitions (encoded uncompressed). */
static int train_dict(build *b, ann_block_enc *enc, int64_t *ids, void *vecs, ann_error *err)
{
	uint32_t m = ANN_MIN(DICT_SAMPLES, b->nparts);
	uint8_t **blocks = ann_calloc(m, sizeof(uint8_t *));
	size_t *lens = ann_calloc(m, sizeof(size_t));
	int rc = ANN_OK;
	if (!blocks || !lens) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for dictionary samples");
		goto out;
	}
	ann_block_params p;
	block_params(b, &p, true);
	uint32_t used = 0;
	for (uint32_t part = 0; part < m; part++) {
		uint64_t cnt = ann_spill_count(b->spill, part);
		if (cnt == 0)
			continue;
		ANN_CHECK(rc, ann_spill_read(b->spill, part, ids, vecs, err));
		ANN_CHECK(rc, block_encode(enc, &p, b->d, cnt, ids, vecs, b->pay_type, part, 0, &blocks[used],
					   &lens[used], err));
		used++;
	}
	ANN_CHECK(rc, block_dict_train((const uint8_t *const *)blocks, lens, used, DICT_BYTES, &b->dict_bytes,
				       &b->dict_len, err));
	ANN_CHECK(rc, block_dict_new(1, b->dict_bytes, b->dict_len, b->o->zstd_level, &b->dict, err));
fail:
out:
	for (uint32_t i = 0; blocks && i < m; i++)
		ann_aligned_free(blocks[i]);
	ann_free(blocks);
	ann_free(lens);
	return rc;
}

/* Phase 4: encode and publish every partition. */
int build_pack_all(build *b, ann_error *err)
{
	uint64_t maxc = ann_spill_max_count(b->spill);
	size_t need = (size_t)maxc * (8 + b->pay_bytes) * 3 + ((size_t)8 << 20);
	if (build_fit_applies(b)) /* the plan's rows, twice (candidates, then the plan), and the
				   * largest partition as floats with two partitions a row */
		need += 2 * build_fit_budget(b) + (size_t)maxc * (b->d * sizeof(float) + 8);
	if (need + b->router->ops->ram_bytes(b->router) > b->o->mem_bytes)
		return ann_err(err, ANN_E_BUDGET, "the largest partition holds %llu vectors and needs %zu bytes to "
			       "pack; the budget is %zu (use more partitions or --balance)",
			       (unsigned long long)maxc, need, b->o->mem_bytes);
	int64_t *ids = ann_malloc((maxc ? maxc : 1) * sizeof(int64_t));
	void *vecs = ann_malloc((maxc ? maxc : 1) * b->pay_bytes);
	ann_block_put *puts = ann_calloc(b->nparts, sizeof(ann_block_put));
	ann_block_enc *enc = NULL;
	ann_store_txn *txn = NULL;
	build_fit fit = {0};
	int64_t *sid = NULL;
	void *svec = NULL;
	size_t nput = 0, batch_bytes = 0;
	int rc = ANN_OK;
	if (!ids || !vecs || !puts) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for packing (%llu vectors)", (unsigned long long)maxc);
		goto out;
	}
	ANN_CHECK(rc, block_enc_new(&enc, err));
	if (b->o->code_bits) {
		ANN_CHECK(rc, ann_rbq_new(b->d, b->o->code_bits, b->o->seed, &b->rbq, err));
		/* Recomputed on a resume: it depends only on the spill and the
		 * saved router (build_fit.c invariant 2). */
		ANN_CHECK(rc, build_fit_plan(b, ids, vecs, &fit, err));
		b->fit_moved = fit.nmoved;
		if (fit.nmoved) {
			size_t rows = (size_t)(maxc + fit.max_in);
			int64_t *ni = ann_realloc(ids, rows * sizeof(int64_t));
			if (ni)
				ids = ni;
			void *nv = ni ? ann_realloc(vecs, rows * b->pay_bytes) : NULL;
			if (nv)
				vecs = nv;
			sid = ann_malloc(rows * sizeof(int64_t));
			svec = ann_malloc(rows * b->pay_bytes);
			if (!ni || !nv || !sid || !svec) {
				rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for packing (%zu vectors)", rows);
				goto fail;
			}
		}
	} else if (b->o->dictionary && b->o->zstd_level > 0) {
		void *dict;
		size_t dlen;
		/* a distributed rank's part (partbuild) keeps no state */
		int got = b->st ? ann_bstate_unit_get(b->st, "dict", &dict, &dlen, NULL, NULL, err) : 0;
		ANN_CHECK(rc, got);
		if (got == 1) {
			b->dict_bytes = dict;
			b->dict_len = dlen;
			ANN_CHECK(rc, block_dict_new(1, b->dict_bytes, b->dict_len, b->o->zstd_level, &b->dict, err));
		} else {
			ANN_CHECK(rc, train_dict(b, enc, ids, vecs, err));
			if (b->st)
				ANN_CHECK(rc, ann_bstate_unit_put(b->st, "dict", b->dict_bytes, b->dict_len, 0, 0, err));
		}
	}
	/* Commits go in partition order: what a killed build committed is the
	 * prefix 0..start-1 of the directory. */
	uint32_t start = 0;
	for (ann_dirent e; start < b->nparts; start++) {
		ann_error scratch = {0};
		if (ann_store_lookup(b->store, start, &e, &scratch) < 0)
			break;
		b->stored += e.count;
		b->block_bytes += e.length;
	}
	if (start > 0)
		build_notice(b, "resuming: pack %u/%u partitions done", start, b->nparts);
	ann_block_params p;
	block_params(b, &p, false);
	uint64_t last_commit = ann_now_ns();
	bool small = build_small_units();
	unsigned copts = cblock_opts(b->o->code_factors == 16, b->o->code_order != 0, cblock_head_page_default(),
				     cblock_cr_default(b->o->metric));
	for (uint32_t part = start; part < b->nparts; part++) {
		uint64_t cnt = ann_spill_count(b->spill, part);
		if (cnt == 0 && b->skip_empty)
			goto flush; /* another rank's partition: no directory entry, nothing to read */
		ANN_CHECK(rc, ann_spill_read(b->spill, part, ids, vecs, err));
		build_fit_apply(&fit, part, b->pay_bytes, ids, vecs, &cnt, sid, svec);
		uint8_t *blk = NULL;
		size_t len = 0;
		uint32_t head = 0;
		if (b->rbq)
			ANN_CHECK(rc, cblock_encode(b->rbq, p.encoding, p.pad, copts, b->d, cnt, ids, vecs, b->pay_type, part, 1,
						    &blk, &len, &head, err));
		else
			ANN_CHECK(rc, block_encode(enc, &p, b->d, cnt, ids, vecs, b->pay_type, part, 1, &blk, &len, err));
		puts[nput].head = head;
		puts[nput].pid = part;
		puts[nput].count = (uint32_t)cnt;
		puts[nput].data = blk;
		puts[nput].length = len;
		nput++;
		batch_bytes += len;
		b->stored += cnt;
		b->block_bytes += len;
	flush:
		/* Each commit is a completed unit of the resumable build. */
		if (batch_bytes >= COMMIT_BYTES || ann_now_ns() - last_commit >= COMMIT_NS || part + 1 == b->nparts ||
		    small) {
			ANN_CHECK(rc, ann_store_begin(b->store, &txn, err));
			rc = ann_store_put_blocks(txn, puts, nput, NULL, err);
			for (size_t i = 0; i < nput; i++)
				ann_aligned_free((void *)puts[i].data);
			nput = 0;
			if (rc < 0)
				goto fail;
			ann_store_txn *t = txn;
			txn = NULL;
			ANN_CHECK(rc, ann_store_commit(t, err));
			batch_bytes = 0;
			last_commit = ann_now_ns();
		}
		ANN_CHECK(rc, build_progress(b, "pack", part + 1, b->nparts, err));
	}
fail:
out:
	for (size_t i = 0; puts && i < nput; i++)
		ann_aligned_free((void *)puts[i].data);
	if (txn)
		ann_store_abort(txn);
	block_enc_free(enc);
	build_fit_free(&fit);
	ann_free(sid);
	ann_free(svec);
	ann_free(ids);
	ann_free(vecs);
	ann_free(puts);
	return rc;
}

/* Phase 5: meta, router and dictionary, in one commit. */
int build_publish_meta(build *b, double total_s, ann_error *err)
{
	ann_store_txn *txn;
	ANN_TRY(ann_store_begin(b->store, &txn, err));
	ann_cat_txn *t = ann_store_txn_catalog(txn);
	uint8_t *blob = NULL;
	size_t blen = 0;
	int rc;
	ANN_CHECK(rc, ann_index_meta_write(t, &(ann_index_meta){
		.dim = b->d,
		.metric = b->o->metric,
		.encoding = b->enc,
		.router = b->o->router,
		.store = b->o->store,
		.vectors = b->n,
		.stored_vectors = b->stored,
		.partitions = b->nparts,
		.replicas = b->copies,
		.dict_id = b->dict ? 1 : 0,
		.code_bits = b->o->code_bits,
		.code_f16 = b->o->code_bits && b->o->code_factors == 16,
		.code_order = b->o->code_bits && b->o->code_order,
		.code_seed = b->o->seed,
	}, err));
	const ann_build_opts *o = b->o;
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.seed", o->seed, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.sample", b->sample_n, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.mem_bytes", o->mem_bytes, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.page_fit_rows", b->fit_moved, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.zstd_level", (uint64_t)o->zstd_level, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.shuffle", ann_shuffle_to_meta(o->shuffle), err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.kmeans_iters", build_kmeans_iters(o), err));
	if (o->router == ANN_ROUTER_KMEANS)
		ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.kmeans_coarse",
						       ann_router_kmeans_coarse(o->kmeans.kmeans_coarse, b->nparts), err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.balance", build_balance(o), err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.replica_eps", o->replica_eps, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.soar_lambda", o->kmeans.soar_lambda, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.threads", (uint64_t)o->threads, err));
	ANN_CHECK(rc, ann_catalog_meta_put_str(t, "build.input", b->data_path, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.sample_s", b->t_sample, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.train_s", b->t_train, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.route_s", b->t_route, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.pack_s", b->t_pack, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.total_s", total_s, err));
	ANN_CHECK(rc, b->router->ops->save(b->router, &blob, &blen, err));
	ANN_CHECK(rc, ann_catalog_model_put(t, "router", blob, blen, err));
	if (b->dict)
		ANN_CHECK(rc, ann_catalog_model_put(t, "zstd_dict.1", b->dict_bytes, b->dict_len, err));
	ann_free(blob);
	return ann_store_commit(txn, err);
fail:
	ann_free(blob);
	ann_store_abort(txn);
	return rc;
}


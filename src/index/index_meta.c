/* SPDX-License-Identifier: MIT */
/* index_meta.c: index facts in the catalog's meta database (index_meta.h). */
#include "index_meta.h"

#include <string.h>

int ann_index_meta_write(ann_cat_txn *t, const ann_index_meta *m, ann_error *err)
{
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.format_major", ANN_INDEX_FORMAT_MAJOR, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.format_minor", ANN_INDEX_FORMAT_MINOR, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.dim", m->dim, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.metric", (uint64_t)m->metric, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.encoding", (uint64_t)m->encoding, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.router", (uint64_t)m->router, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.store", (uint64_t)m->store, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.vectors", m->vectors, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.stored_vectors", m->stored_vectors, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.partitions", m->partitions, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.replicas", m->replicas, err));
	ANN_TRY(ann_catalog_meta_put_u64(t, "index.dict_id", m->dict_id, err));
	if (m->code_bits) {
		ANN_TRY(ann_catalog_meta_put_str(t, "codes.kind", "rabitq", err));
		ANN_TRY(ann_catalog_meta_put_u64(t, "codes.bits", m->code_bits, err));
		ANN_TRY(ann_catalog_meta_put_u64(t, "codes.seed", m->code_seed, err));
		if (m->code_f16) /* absent = 32: indexes without it stay as older builds wrote them */
			ANN_TRY(ann_catalog_meta_put_u64(t, "codes.factors", 16, err));
		if (m->code_order) /* absent = id order, as older builds wrote */
			ANN_TRY(ann_catalog_meta_put_u64(t, "codes.order", 1, err));
	}
	return ANN_OK;
}

int ann_index_meta_read(ann_cat_txn *t, ann_index_meta *m, ann_error *err)
{
	uint64_t major, minor, v[10];
	static const char *const keys[10] = {"index.dim", "index.metric", "index.encoding", "index.router",
					     "index.store", "index.vectors", "index.stored_vectors",
					     "index.partitions", "index.replicas", "index.dict_id"};
	int rc = ann_catalog_meta_get_u64(t, "index.format_major", &major, err);
	if (rc == ANN_E_NOTFOUND)
		return ann_err(err, ANN_E_NOTFOUND, "%s: not an annann index (no index.format_major in meta); an "
			       "interrupted build leaves no index", "catalog");
	ANN_TRY(rc);
	ANN_TRY(ann_catalog_meta_get_u64(t, "index.format_minor", &minor, err));
	if (major != ANN_INDEX_FORMAT_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "index format %llu.%llu: this library reads format %d.x",
			       (unsigned long long)major, (unsigned long long)minor, ANN_INDEX_FORMAT_MAJOR);
	for (int i = 0; i < 10; i++)
		ANN_TRY(ann_catalog_meta_get_u64(t, keys[i], &v[i], err));
	if (v[0] == 0 || v[0] > 65536)
		return ann_err(err, ANN_E_CORRUPT, "meta index.dim = %llu: expected 1..65536", (unsigned long long)v[0]);
	if (v[1] > ANN_METRIC_COSINE || v[2] > ANN_ENC_SQ8 || v[3] > ANN_ROUTER_SOFT || v[4] > ANN_STORE_LMDB)
		return ann_err(err, ANN_E_FORMAT, "meta: metric %llu, encoding %llu, router %llu or store %llu is "
			       "unknown to this version", (unsigned long long)v[1], (unsigned long long)v[2],
			       (unsigned long long)v[3], (unsigned long long)v[4]);
	if (v[7] == 0 || v[7] > (1u << 30) || v[8] == 0 || v[8] > 8 || v[9] > UINT32_MAX)
		return ann_err(err, ANN_E_CORRUPT, "meta: partitions %llu or replicas %llu out of range",
			       (unsigned long long)v[7], (unsigned long long)v[8]);
	m->dim = (uint32_t)v[0];
	m->metric = (ann_metric)v[1];
	m->encoding = (ann_encoding)v[2];
	m->router = (ann_router_kind)v[3];
	m->store = (ann_store_kind)v[4];
	m->vectors = v[5];
	m->stored_vectors = v[6];
	m->partitions = (uint32_t)v[7];
	m->replicas = (uint32_t)v[8];
	m->dict_id = (uint32_t)v[9];
	/* Written by the first insert or delete (update.c). */
	int lr = ann_catalog_meta_get_u64(t, "index.live_vectors", &m->live_vectors, err);
	if (lr == ANN_E_NOTFOUND)
		m->live_vectors = m->vectors;
	else
		ANN_TRY(lr);
	/* Codes (issue 12): absent in indexes without them. */
	char kind[16];
	lr = ann_catalog_meta_get_str(t, "codes.kind", kind, sizeof kind, err);
	m->code_bits = 0;
	m->code_seed = 0;
	m->code_f16 = false;
	m->code_order = false;
	if (lr == ANN_E_NOTFOUND)
		return ANN_OK;
	ANN_TRY(lr);
	if (strcmp(kind, "rabitq") != 0)
		return ann_err(err, ANN_E_FORMAT, "meta codes.kind is '%s': this library knows 'rabitq'", kind);
	uint64_t bits = 0;
	ANN_TRY(ann_catalog_meta_get_u64(t, "codes.bits", &bits, err));
	ANN_TRY(ann_catalog_meta_get_u64(t, "codes.seed", &m->code_seed, err));
	if (bits < 1 || bits > 8)
		return ann_err(err, ANN_E_CORRUPT, "meta codes.bits = %llu: expected 1..8", (unsigned long long)bits);
	if (m->encoding != ANN_ENC_F32 && m->encoding != ANN_ENC_U8 && m->encoding != ANN_ENC_I8)
		return ann_err(err, ANN_E_CORRUPT, "meta: codes with encoding %s (codes need f32, u8 or i8)",
			       ann_encoding_name(m->encoding));
	m->code_bits = (uint32_t)bits;
	uint64_t fb = 32;
	lr = ann_catalog_meta_get_u64(t, "codes.factors", &fb, err);
	if (lr != ANN_E_NOTFOUND)
		ANN_TRY(lr);
	if (fb != 16 && fb != 32)
		return ann_err(err, ANN_E_CORRUPT, "meta codes.factors = %llu: expected 16 or 32",
			       (unsigned long long)fb);
	m->code_f16 = fb == 16;
	uint64_t ord = 0;
	lr = ann_catalog_meta_get_u64(t, "codes.order", &ord, err);
	if (lr != ANN_E_NOTFOUND)
		ANN_TRY(lr);
	if (ord > 1)
		return ann_err(err, ANN_E_CORRUPT, "meta codes.order = %llu: expected 0 (id order) or 1 (page-local)",
			       (unsigned long long)ord);
	m->code_order = ord == 1;
	return ANN_OK;
}

uint64_t ann_shuffle_to_meta(int shuffle)
{
	return shuffle < 0 ? 0 : shuffle == 0 ? 1 : 2;
}

int ann_shuffle_from_meta(uint64_t v)
{
	return v == 0 ? -1 : v == 2;
}

void ann_index_block_params(ann_encoding enc, ann_store_kind st, int level, int shuffle, ann_block_params *p)
{
	block_params_init(p);
	p->encoding = ann_encoding_block(enc);
	p->codec = level == 0 ? ANN_BLOCK_CODEC_NONE : ANN_BLOCK_CODEC_ZSTD;
	p->level = level;
	p->shuffle = shuffle < 0 ? (enc == ANN_ENC_F32 || enc == ANN_ENC_F16) : shuffle != 0;
	p->pad = st == ANN_STORE_LMDB ? ANN_BLOCK_PAD_LMDB : ANN_BLOCK_PAD_FILE;
	p->dict = NULL;
}

/* SPDX-License-Identifier: MIT */
/*
 * probe.c: the model of learned adaptive probing (probe.h): its features,
 * its prediction and its catalog record.
 */
#include <math.h>
#include <string.h>

#include "probe.h"

#define FEAT_CLIP 30.0
#define FLOOR_SHARE 1e-3 /* a distance below this share of the nearest centre's counts as this */

static double clip(double v)
{
	return v < -FEAT_CLIP ? -FEAT_CLIP : v > FEAT_CLIP ? FEAT_CLIP : v;
}

void ann_probe_features(const float *cd, uint32_t n, float ub_k, float best, double f[ANN_PROBE_FEATURES])
{
	/* the read centres' distances in routing order (skipping partitions without a head) */
	double c[ANN_PROBE_MAX_P1];
	uint32_t m = 0;
	for (uint32_t i = 0; i < n && i < ANN_PROBE_MAX_P1; i++)
		if (isfinite(cd[i]))
			c[m++] = cd[i] > 0 ? cd[i] : 0;
	memset(f, 0, ANN_PROBE_FEATURES * sizeof f[0]);
	f[0] = 1.0;
	if (m == 0)
		return;
	double c1 = c[0] > 1e-30 ? c[0] : 1e-30, lo = FLOOR_SHARE * c1;
	static const uint32_t at[4] = {2, 4, 8, 0}; /* 0: the last (rank P1) */
	f[1] = clip(log(c1));
	for (int j = 0; j < 4; j++) {
		uint32_t r = at[j] ? at[j] : m;
		double v = c[(r < m ? r : m) - 1];
		f[2 + j] = clip(log((v > lo ? v : lo) / c1));
	}
	double u = isfinite(ub_k) ? ub_k : c[m - 1];
	double b = isfinite(best) ? best : u;
	f[6] = clip(log((u > lo ? u : lo) / c1));
	f[7] = clip(log((b > lo ? b : lo) / c1));
}

uint32_t ann_probe_predict(const ann_probe_model *m, const double f[ANN_PROBE_FEATURES], uint32_t budget, uint32_t lo,
			   uint32_t hi)
{
	double z = -m->shift;
	for (uint32_t i = 0; i < ANN_PROBE_FEATURES; i++)
		z += m->w[i] * f[i];
	z = z > 20 ? 20 : z < -20 ? -20 : z;
	double p = ceil((double)budget * exp(z));
	uint32_t r = p >= (double)hi ? hi : (uint32_t)p;
	return r < lo ? lo : r > hi ? hi : r;
}

bool ann_probe_stale(const ann_probe_model *m, uint64_t live_vectors, uint32_t partitions)
{
	if (!m->p1 || !m->fit_parts)
		return false;
	uint64_t v = m->fit_vectors, off = live_vectors > v ? live_vectors - v : v - live_vectors;
	return partitions != m->fit_parts || off * 10 > v;
}

/* Blob: u32 version (1 or 2), u32 p1, u32 features, u32 0, f64 shift, f64
 * w[features]; version 2 then u64 fit_vectors, u32 fit_parts, u32
 * fit_queries (little-endian). */
int ann_probe_model_load(ann_cat_txn *t, ann_probe_model *m, ann_error *err)
{
	memset(m, 0, sizeof *m);
	const uint8_t *p;
	size_t n;
	int rc = ann_catalog_meta_get_blob(t, ANN_PROBE_META, &p, &n, err);
	if (rc == ANN_E_NOTFOUND)
		return ANN_OK;
	ANN_TRY(rc);
	uint32_t ver = n >= 4 ? ann_ld32(p) : 0;
	if (!((ver == 1 && n == ANN_PROBE_BLOB) || (ver == 2 && n == ANN_PROBE_BLOB2)) ||
	    ann_ld32(p + 8) != ANN_PROBE_FEATURES || ann_ld32(p + 12) != 0)
		return ann_err(err, ANN_E_CORRUPT, "catalog meta %s: %zu bytes, version %u, %u features; expected %u "
			       "bytes (version 1) or %u (version 2), %u features", ANN_PROBE_META, n, ver,
			       n >= 12 ? ann_ld32(p + 8) : 0, ANN_PROBE_BLOB, ANN_PROBE_BLOB2, ANN_PROBE_FEATURES);
	uint32_t p1 = ann_ld32(p + 4);
	ann_probe_model v = {.p1 = p1};
	uint64_t bits = ann_ld64(p + 16);
	memcpy(&v.shift, &bits, 8);
	bool ok = p1 >= 1 && p1 <= ANN_PROBE_MAX_P1 && isfinite(v.shift);
	for (uint32_t i = 0; i < ANN_PROBE_FEATURES; i++) {
		bits = ann_ld64(p + 24 + 8 * i);
		memcpy(&v.w[i], &bits, 8);
		ok = ok && isfinite(v.w[i]);
	}
	if (!ok)
		return ann_err(err, ANN_E_CORRUPT, "catalog meta %s: P1 %u (expected 1..%u) or a weight not finite",
			       ANN_PROBE_META, p1, ANN_PROBE_MAX_P1);
	if (ver == 2) {
		v.fit_vectors = ann_ld64(p + ANN_PROBE_BLOB);
		v.fit_parts = ann_ld32(p + ANN_PROBE_BLOB + 8);
		v.fit_queries = ann_ld32(p + ANN_PROBE_BLOB + 12);
	}
	*m = v;
	return ANN_OK;
}

int ann_probe_model_save(ann_cat_txn *t, const ann_probe_model *m, ann_error *err)
{
	uint8_t b[ANN_PROBE_BLOB2];
	ann_st32(b, 2);
	ann_st32(b + 4, m->p1);
	ann_st32(b + 8, ANN_PROBE_FEATURES);
	ann_st32(b + 12, 0);
	uint64_t bits;
	memcpy(&bits, &m->shift, 8);
	ann_st64(b + 16, bits);
	for (uint32_t i = 0; i < ANN_PROBE_FEATURES; i++) {
		memcpy(&bits, &m->w[i], 8);
		ann_st64(b + 24 + 8 * i, bits);
	}
	ann_st64(b + ANN_PROBE_BLOB, m->fit_vectors);
	ann_st32(b + ANN_PROBE_BLOB + 8, m->fit_parts);
	ann_st32(b + ANN_PROBE_BLOB + 12, m->fit_queries);
	return ann_catalog_meta_put_blob(t, ANN_PROBE_META, b, sizeof b, err);
}

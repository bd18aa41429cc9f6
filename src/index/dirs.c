/* SPDX-License-Identifier: MIT */
/*
 * dirs.c: the directional probe order (dirs.h; docs/DESIGN.md "Directional
 * probe order"): the catalog record, the discount a query applies, and the
 * fit over an index's exact rows.
 */
#include "dirs.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "annann.h"
#include "cblock.h"
#include "common.h"
#include "index.h"
#include "store.h"

#define FIT_ITERS 24u   /* subspace iterations */
#define FIT_MIN_ROWS 8u /* a partition with fewer rows gets no directions */

uint32_t ann_dirs_auto_m(const ann_index_info *in)
{
	uint64_t budget = (uint64_t)ANN_RAM_PER_VECTOR * in->vectors, per = 2 * (((uint64_t)in->dim + 7) / 8) + 8;
	uint64_t room = budget > in->router_ram_bytes ? budget - in->router_ram_bytes : 0;
	uint64_t esize = in->encoding == ANN_ENC_U8 || in->encoding == ANN_ENC_I8 ? 1 : 4;
	uint64_t disk = 3 * in->vectors * in->dim * esize / 2, fixed = (uint64_t)64 << 10;
	uint64_t droom = disk > in->bytes_on_disk + fixed ? (disk - in->bytes_on_disk - fixed) * 4 / 5 : 0;
	uint64_t pp = (uint64_t)in->partitions * per, cap = in->dim > 1 ? ANN_MIN((uint64_t)ANN_DIRS_AUTO_MAX, in->dim - 1) : 0;
	return (uint32_t)ANN_MIN(cap, pp ? ANN_MIN(room, droom) / pp : 0); /* fewer than dim (ann_dirs_fit) */
}

size_t ann_dirs_bytes(const ann_dirs *d)
{
	return d->m ? (size_t)d->nparts * d->stride : 0;
}

void ann_dirs_free(ann_dirs *d)
{
	ann_free(d->recs);
	memset(d, 0, sizeof *d);
}

static size_t blob_bytes(uint32_t m, uint32_t nparts, uint32_t cbytes)
{
	return ANN_DIRS_HEADER + (size_t)nparts * m * (2 * sizeof(float) + cbytes);
}

/* Blob: u32 version 1, u32 m, u32 dim, u32 nparts; f32 gain[nparts][m];
 * f32 off[nparts][m]; u8 codes[nparts][m][2 ceil(dim / 8)]: a direction's
 * level codes c = lo + 2 hi as two bit planes, lo then hi, bit r of a plane
 * in byte r / 8 at bit r % 8 (little-endian numbers). */
static int dirs_parse(const uint8_t *p, size_t n, uint32_t dim, ann_dirs *d, ann_error *err)
{
	memset(d, 0, sizeof *d);
	uint32_t ver = n >= ANN_DIRS_HEADER ? ann_ld32(p) : 0, m = ver ? ann_ld32(p + 4) : 0;
	uint32_t bdim = ver ? ann_ld32(p + 8) : 0, np = ver ? ann_ld32(p + 12) : 0, cb = 2 * ((dim + 7) / 8);
	if (ver != 1 || m < 1 || m > ANN_DIRS_MAX || bdim != dim || np < 1 || n != blob_bytes(m, np, cb))
		return ann_err(err, ANN_E_CORRUPT, "catalog meta %s: %zu bytes, version %u, %u directions of dimension %u "
			       "for %u partitions; expected version 1, 1..%u directions of dimension %u, and %zu bytes",
			       ANN_DIRS_META, n, ver, m, bdim, np, ANN_DIRS_MAX, dim, ver == 1 && m >= 1 && m <= ANN_DIRS_MAX
			       ? blob_bytes(m, np, cb) : (size_t)0);
	size_t nm = (size_t)np * m;
	ann_dirs v = {.m = m, .dim = dim, .nparts = np, .cbytes = cb, .stride = (size_t)m * (8 + cb)};
	if (!(v.recs = ann_malloc(np * v.stride)))
		return ann_err(err, ANN_E_NOMEM, "catalog meta %s: out of memory for %u partitions' directions",
			       ANN_DIRS_META, np);
	const uint8_t *g = p + ANN_DIRS_HEADER, *o = g + nm * sizeof(float), *c = o + nm * sizeof(float);
	for (size_t i = 0; i < nm; i++) {
		uint32_t a = ann_ld32(g + 4 * i), b = ann_ld32(o + 4 * i);
		float gv, ov;
		memcpy(&gv, &a, 4);
		memcpy(&ov, &b, 4);
		if (!(gv >= 0.0f && gv <= 1.0f) || !isfinite(ov)) {
			ann_dirs_free(&v);
			return ann_err(err, ANN_E_CORRUPT, "catalog meta %s: partition %zu direction %zu: gain or offset "
				       "out of range (gain 0..1, offset finite)", ANN_DIRS_META, i / m, i % m);
		}
		uint8_t *r = v.recs + (i / m) * v.stride;
		memcpy(r + 8 * (i % m), &gv, 4);
		memcpy(r + 8 * (i % m) + 4, &ov, 4);
		memcpy(r + 8 * (size_t)m + (i % m) * cb, c + i * cb, cb);
	}
	*d = v;
	return ANN_OK;
}

int ann_dirs_load(ann_cat_txn *t, uint32_t dim, ann_dirs *d, ann_error *err)
{
	memset(d, 0, sizeof *d);
	const uint8_t *p;
	size_t n;
	int rc = ann_catalog_meta_get_blob(t, ANN_DIRS_META, &p, &n, err);
	if (rc == ANN_E_NOTFOUND)
		return ANN_OK;
	ANN_TRY(rc);
	ANN_TRY(dirs_parse(p, n, dim, d, err));
	uint64_t stale = 0;
	rc = ann_catalog_meta_get_u64(t, ANN_DIRS_STALE_META, &stale, err);
	if (rc < 0 && rc != ANN_E_NOTFOUND) {
		ann_dirs_free(d);
		return rc;
	}
	d->stale = rc >= 0 && stale;
	return ANN_OK;
}

void ann_dirs_query_table(const ann_dirs *d, const float *q, float *tab)
{
	/* entry (p, b): the sum of q over the bits of byte b at plane byte p */
	uint32_t pb = d->cbytes / 2;
	float qsum = 0.0f;
	for (uint32_t p = 0; p < pb; p++) {
		float *t = tab + 256 * (size_t)p;
		t[0] = 0.0f;
		for (uint32_t b = 1; b < 256; b++) {
			uint32_t r = 8 * p + (uint32_t)__builtin_ctz(b);
			t[b] = t[b & (b - 1)] + (r < d->dim ? q[r] : 0.0f);
		}
		qsum += t[255];
	}
	tab[256 * (size_t)pb] = qsum;
}

void ann_dirs_prefetch(const ann_dirs *d, uint32_t pid)
{
	if (pid >= d->nparts)
		return;
	const uint8_t *r = d->recs + (size_t)pid * d->stride;
	for (size_t b = 0; b < d->stride; b += 64)
		__builtin_prefetch(r + b);
	__builtin_prefetch(r + d->stride - 1);
}

float ann_dirs_discount(const ann_dirs *d, uint32_t pid, const float *tab)
{
	if (pid >= d->nparts)
		return 0.0f;
	uint32_t pb = d->cbytes / 2;
	float qsum = tab[256 * (size_t)pb], sum = 0.0f;
	const uint8_t *rec = d->recs + (size_t)pid * d->stride, *codes = rec + 8 * (size_t)d->m;
	for (uint32_t j = 0; j < d->m; j++) {
		float g, o;
		memcpy(&g, rec + 8 * j, 4);
		memcpy(&o, rec + 8 * j + 4, 4);
		if (g == 0.0f)
			continue;
		const uint8_t *lo = codes + (size_t)j * d->cbytes, *hi = lo + pb;
		/* Four plane bytes a step, their tables at constant offsets from t:
		 * a load and an add a look-up, eight independent sums (the index
		 * arithmetic of a loop over single bytes made it 2x slower:
		 * bench/bench_route.c) */
		float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f;
		const float *t = tab;
		uint32_t p = 0;
		for (; p + 4 <= pb; p += 4, t += 1024) {
			a0 += t[lo[p]];
			a1 += t[256 + lo[p + 1]];
			a2 += t[512 + lo[p + 2]];
			a3 += t[768 + lo[p + 3]];
			b0 += t[hi[p]];
			b1 += t[256 + hi[p + 1]];
			b2 += t[512 + hi[p + 2]];
			b3 += t[768 + hi[p + 3]];
		}
		for (; p < pb; p++, t += 256) {
			a0 += t[lo[p]];
			b0 += t[hi[p]];
		}
		/* level 2c - 3 with c = lo + 2 hi */
		float proj = 2.0f * ((a0 + a1) + (a2 + a3)) + 4.0f * ((b0 + b1) + (b2 + b3)) - 3.0f * qsum - o;
		sum += (g * proj) * (g * proj);
	}
	return sum;
}

/* ---- the fit ------------------------------------------------------------- */

/* Eigenvalues (descending, in w) and vectors (columns of V, m x m row-major)
 * of the symmetric m x m matrix H (destroyed), by cyclic Jacobi. */
static void jacobi(double *H, size_t m, double *V, double *w)
{
	for (size_t i = 0; i < m * m; i++)
		V[i] = i % (m + 1) == 0 ? 1.0 : 0.0;
	for (int sweep = 0; sweep < 60; sweep++) {
		double off = 0;
		for (size_t i = 0; i < m; i++)
			for (size_t j = i + 1; j < m; j++)
				off += H[i * m + j] * H[i * m + j];
		if (off < 1e-22)
			break;
		for (size_t p = 0; p < m; p++)
			for (size_t q = p + 1; q < m; q++) {
				double apq = H[p * m + q];
				if (fabs(apq) < 1e-300)
					continue;
				double th = (H[q * m + q] - H[p * m + p]) / (2 * apq);
				double t = (th >= 0 ? 1.0 : -1.0) / (fabs(th) + sqrt(th * th + 1));
				double c = 1 / sqrt(t * t + 1), s = t * c;
				for (size_t r = 0; r < m; r++) { /* H <- J^T H J */
					double hp = H[r * m + p], hq = H[r * m + q];
					H[r * m + p] = c * hp - s * hq;
					H[r * m + q] = s * hp + c * hq;
				}
				for (size_t r = 0; r < m; r++) {
					double hp = H[p * m + r], hq = H[q * m + r];
					H[p * m + r] = c * hp - s * hq;
					H[q * m + r] = s * hp + c * hq;
				}
				for (size_t r = 0; r < m; r++) {
					double vp = V[r * m + p], vq = V[r * m + q];
					V[r * m + p] = c * vp - s * vq;
					V[r * m + q] = s * vp + c * vq;
				}
			}
	}
	for (size_t i = 0; i < m; i++)
		w[i] = H[i * m + i];
	for (size_t i = 0; i < m; i++) { /* selection sort, descending, columns along */
		size_t b = i;
		for (size_t j = i + 1; j < m; j++)
			if (w[j] > w[b])
				b = j;
		if (b != i) {
			double tw = w[i];
			w[i] = w[b];
			w[b] = tw;
			for (size_t r = 0; r < m; r++) {
				double tv = V[r * m + i];
				V[r * m + i] = V[r * m + b];
				V[r * m + b] = tv;
			}
		}
	}
}

/* Orthonormalises the m columns of U (d x m row-major) in place, modified
 * Gram-Schmidt; a column that vanishes becomes a unit vector not yet spanned. */
static void orthonormalise(float *U, size_t d, size_t m)
{
	size_t tries = 0, *next = &tries;
	for (size_t j = 0; j < m; j++) {
		for (size_t i = 0; i < j; i++) {
			double dot = 0;
			for (size_t r = 0; r < d; r++)
				dot += (double)U[r * m + i] * U[r * m + j];
			for (size_t r = 0; r < d; r++)
				U[r * m + j] -= (float)dot * U[r * m + i];
		}
		double nn = 0;
		for (size_t r = 0; r < d; r++)
			nn += (double)U[r * m + j] * U[r * m + j];
		if (nn < 1e-24) { /* a unit vector the others do not span yet (one of any m + 1 is not) */
			for (size_t r = 0; r < d; r++)
				U[r * m + j] = r == (*next % d) ? 1.0f : 0.0f;
			(*next)++;
			j--; /* wraps at 0 and comes back: the column again */
			continue;
		}
		float inv = (float)(1 / sqrt(nn));
		for (size_t r = 0; r < d; r++)
			U[r * m + j] *= inv;
	}
}

typedef struct fit_scratch {
	size_t d, m;
	float *X, *S, *U, *W;
	double *H, *E, *w;
} fit_scratch;

/* One partition's directions from its rows (count x d, the block's
 * encoding): gain, offset and level codes for its m slots. */
static void fit_one(fit_scratch *f, const uint8_t *rows, ann_block_encoding enc, uint32_t count, uint64_t seed,
		    float *gain, float *off, uint8_t *codes, uint32_t cbytes)
{
	size_t d = f->d, m = f->m;
	memset(gain, 0, m * sizeof(float));
	memset(off, 0, m * sizeof(float));
	memset(codes, 0, m * cbytes);
	if (count < FIT_MIN_ROWS || count <= m)
		return;
	double *mu = f->H + m * m; /* d doubles after H (sized in fit_new) */
	memset(mu, 0, d * sizeof(double));
	for (uint32_t i = 0; i < count; i++)
		for (size_t r = 0; r < d; r++) {
			float v = enc == ANN_BLOCK_U8   ? (float)rows[(size_t)i * d + r]
				  : enc == ANN_BLOCK_I8 ? (float)(int8_t)rows[(size_t)i * d + r]
							: ((const float *)rows)[(size_t)i * d + r];
			f->X[(size_t)i * d + r] = v;
			mu[r] += v;
		}
	for (size_t r = 0; r < d; r++)
		mu[r] /= count;
	for (uint32_t i = 0; i < count; i++)
		for (size_t r = 0; r < d; r++)
			f->X[(size_t)i * d + r] -= (float)mu[r];
	/* S = X^T X / count (upper triangle, then mirrored) */
	cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)d, (int)count, 1.0f / (float)count, f->X, (int)d, 0.0f,
		    f->S, (int)d);
	double trace = 0;
	for (size_t r = 0; r < d; r++) {
		trace += f->S[r * d + r];
		for (size_t c = r + 1; c < d; c++)
			f->S[c * d + r] = f->S[r * d + c];
	}
	if (!(trace > 0))
		return;
	/* subspace iteration from a seeded start */
	uint64_t st = seed * 0x9E3779B97F4A7C15ull + 1;
	for (size_t i = 0; i < d * m; i++) {
		st ^= st << 13;
		st ^= st >> 7;
		st ^= st << 17;
		f->U[i] = (float)((double)(st >> 11) / 9007199254740992.0 - 0.5);
	}
	orthonormalise(f->U, d, m);
	for (uint32_t it = 0; it < FIT_ITERS; it++) {
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d, (int)m, (int)d, 1.0f, f->S, (int)d, f->U,
			    (int)m, 0.0f, f->W, (int)m);
		memcpy(f->U, f->W, d * m * sizeof(float));
		orthonormalise(f->U, d, m);
	}
	/* Rayleigh-Ritz: H = U^T S U, its eigenvectors rotate U */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d, (int)m, (int)d, 1.0f, f->S, (int)d, f->U, (int)m,
		    0.0f, f->W, (int)m);
	for (size_t a = 0; a < m; a++)
		for (size_t b = 0; b < m; b++) {
			double s = 0;
			for (size_t r = 0; r < d; r++)
				s += (double)f->U[r * m + a] * f->W[r * m + b];
			f->H[a * m + b] = s;
		}
	for (size_t a = 0; a < m; a++) /* symmetrise against rounding */
		for (size_t b = a + 1; b < m; b++)
			f->H[a * m + b] = f->H[b * m + a] = 0.5 * (f->H[a * m + b] + f->H[b * m + a]);
	jacobi(f->H, m, f->E, f->w);
	double top = 0;
	for (size_t j = 0; j < m; j++)
		top += f->w[j] > 0 ? f->w[j] : 0;
	double rest = d > m ? (trace - top) / (double)(d - m) : 0;
	if (rest < 1e-12 * trace)
		rest = 1e-12 * trace;
	for (size_t j = 0; j < m; j++) {
		/* u = U E[:, j]; quantised to levels over +-max|u| */
		float mx = 0;
		for (size_t r = 0; r < d; r++) {
			double u = 0;
			for (size_t a = 0; a < m; a++)
				u += (double)f->U[r * m + a] * f->E[a * m + j];
			f->W[r] = (float)u;
			mx = fmaxf(mx, fabsf((float)u));
		}
		double l = f->w[j];
		if (!(mx > 0) || !(l > rest))
			continue; /* no stretch: no discount */
		double norm2 = 0, o = 0;
		uint8_t *cj = codes + j * cbytes;
		for (size_t r = 0; r < d; r++) {
			long c = lrint(((double)f->W[r] / mx + 1) * 1.5);
			c = c < 0 ? 0 : c > 3 ? 3 : c;
			double lv = 2.0 * (double)c - 3.0;
			norm2 += lv * lv;
			o += lv * mu[r];
			cj[r / 8] |= (uint8_t)((c & 1) << (r % 8));
			cj[cbytes / 2 + r / 8] |= (uint8_t)((c >> 1) << (r % 8));
		}
		gain[j] = (float)(sqrt(1 - rest / l) / sqrt(norm2));
		off[j] = (float)o;
	}
}

/* Stores the record (blob, n bytes) or, with blob NULL, removes it, in one
 * transaction that also clears the mark of a compaction whose refit did
 * not happen (ANN_DIRS_STALE_META): a fit and a removal both leave no
 * stale directions. */
static int commit_record(ann_catalog *c, const uint8_t *blob, size_t n, ann_error *err)
{
	ann_cat_txn *t;
	ANN_TRY(ann_catalog_write_begin(c, &t, err));
	int rc = blob ? ann_catalog_meta_put_blob(t, ANN_DIRS_META, blob, n, err)
		      : ann_catalog_meta_del(t, ANN_DIRS_META, err);
	if (rc == ANN_E_NOTFOUND)
		rc = ANN_OK;
	if (rc >= 0) {
		rc = ann_catalog_meta_del(t, ANN_DIRS_STALE_META, err);
		if (rc == ANN_E_NOTFOUND)
			rc = ANN_OK;
	}
	if (rc < 0) {
		ann_catalog_abort(t);
		return rc;
	}
	return ann_catalog_commit(t, err);
}

/* m 0: the record goes, through the catalog alone, so that a malformed one
 * (which fails the index's open) can be removed too. */
static int remove_dirs(const char *index_dir, ann_error *err)
{
	size_t n = strlen(index_dir) + sizeof "/catalog.lmdb";
	char *path = ann_malloc(n);
	if (!path)
		return ann_err(err, ANN_E_NOMEM, "directions: out of memory");
	snprintf(path, n, "%s/catalog.lmdb", index_dir);
	ann_catalog_opts co;
	ann_catalog_opts_init(&co);
	ann_catalog *c = NULL;
	int rc = ann_catalog_open(path, &co, &c, err);
	if (rc >= 0)
		rc = commit_record(c, NULL, 0, err);
	ann_catalog_close(c);
	ann_free(path);
	return rc < 0 ? ann_err_prefix(err, rc, "%s", index_dir) : ANN_OK;
}

int ann_tune_directions(const char *index_dir, uint32_t m, ann_progress_fn progress, void *progress_ctx,
			uint32_t *fitted, ann_error *err)
{
	if (fitted)
		*fitted = 0;
	if (!index_dir || m > ANN_DIRS_MAX)
		return ann_err(err, ANN_E_INVAL, "directions: %u per partition; expected 0..%u", m, ANN_DIRS_MAX);
	if (m == 0)
		return remove_dirs(index_dir, err);
	ann_index *x;
	ANN_TRY(ann_index_load(index_dir, true, &x, err));
	int rc = ann_dirs_fit(x, m, NULL, 0, progress, progress_ctx, fitted, err);
	ann_index_close(x);
	return rc < 0 ? ann_err_prefix(err, rc, "%s", index_dir) : ANN_OK;
}

/* Partition p keeps its record from x->dirs (same m and dim) unless refit
 * is NULL or says so, or the record has none for p. */
static bool keeps_old(const ann_dirs *od, uint32_t m, size_t d, const uint8_t *refit, uint32_t nrefit, uint32_t p)
{
	return refit && p < nrefit && !refit[p] && od->m == m && od->dim == d && p < od->nparts;
}

int ann_dirs_fit(ann_index *x, uint32_t m, const uint8_t *refit, uint32_t nrefit, ann_progress_fn progress,
		 void *progress_ctx, uint32_t *fitted, ann_error *err)
{
	if (fitted)
		*fitted = 0;
	int rc = ANN_OK;
	ann_store_reader *rd = NULL;
	uint32_t *pids = NULL;
	int64_t *ids = NULL;
	uint8_t *rows = NULL, *blob = NULL;
	size_t ids_cap = 0, rows_cap = 0;
	fit_scratch f = {0};
	size_t d = x->meta.dim;
	if (!x->rbq || !ann_metric_euclid(x->meta.metric) || x->meta.router != ANN_ROUTER_KMEANS || d <= m) {
		rc = ann_err(err, ANN_E_INVAL, "directions: not a k-means codes index under L2 or cosine of more than %u "
			     "dimensions: the directional order refines the spread order, which needs all three",
			     m);
		goto fail;
	}
	uint32_t np = x->dir.n, cb = 2 * (uint32_t)((d + 7) / 8), largest = 0, nblocks = 0;
	if (np == 0) {
		rc = ann_err(err, ANN_E_INVAL, "directions: no partitions");
		goto fail;
	}
	for (uint32_t p = 0; p < np; p++)
		if (x->dir.ents[p].kind != ANN_KIND_NONE) {
			largest = ANN_MAX(largest, x->dir.ents[p].count);
			nblocks++;
		}
	size_t bb = blob_bytes(m, np ? np : 1, cb);
	f.d = d;
	f.m = m;
	f.X = ann_malloc(((size_t)ANN_MAX(largest, 1u)) * d * sizeof(float));
	f.S = ann_malloc(d * d * sizeof(float));
	f.U = ann_malloc(d * m * sizeof(float));
	f.W = ann_malloc(d * ANN_MAX(m, 1u) * sizeof(float));
	f.H = ann_malloc((m * m + d) * sizeof(double));
	f.E = ann_malloc(m * m * sizeof(double));
	f.w = ann_malloc(m * sizeof(double));
	blob = ann_calloc(1, bb);
	pids = ann_malloc((np ? np : 1) * sizeof(uint32_t));
	if (!f.X || !f.S || !f.U || !f.W || !f.H || !f.E || !f.w || !blob || !pids) {
		rc = ann_err(err, ANN_E_NOMEM, "directions: out of memory (a partition of %u rows of %zu dimensions, "
			     "%zu bytes of directions)", largest, d, bb);
		goto fail;
	}
	ann_st32(blob, 1);
	ann_st32(blob + 4, m);
	ann_st32(blob + 8, (uint32_t)d);
	ann_st32(blob + 12, np);
	size_t nm = (size_t)np * m;
	float *gain = ann_calloc(nm ? nm : 1, sizeof(float)), *off = ann_calloc(nm ? nm : 1, sizeof(float));
	if (!gain || !off) {
		ann_free(gain);
		ann_free(off);
		rc = ann_err(err, ANN_E_NOMEM, "directions: out of memory");
		goto fail;
	}
	uint8_t *codes = blob + ANN_DIRS_HEADER + 2 * nm * sizeof(float);
	uint32_t n = 0;
	const ann_dirs *od = &x->dirs;
	for (uint32_t p = 0; p < np; p++) {
		if (keeps_old(od, m, d, refit, nrefit, p)) {
			for (uint32_t j = 0; j < m; j++) {
				gain[(size_t)p * m + j] = ann_dirs_gain(od, p, j);
				off[(size_t)p * m + j] = ann_dirs_off(od, p, j);
				memcpy(codes + ((size_t)p * m + j) * cb, ann_dirs_codes(od, p, j), cb);
			}
		} else if (x->dir.ents[p].kind != ANN_KIND_NONE) {
			pids[n++] = p;
		}
	}
	nblocks = n;
	ann_store_reader_opts ro;
	ann_store_reader_opts_init(&ro);
	rc = ann_store_reader_new(x->store, &ro, &rd, err);
	if (rc >= 0 && n)
		rc = ann_store_reader_submit(rd, pids, NULL, n, err);
	uint32_t done = 0;
	while (rc >= 0 && n) {
		ann_block_read br;
		rc = ann_store_reader_next(rd, &br, err);
		if (rc <= 0)
			break;
		ann_cblock_info in;
		if (br.status < 0) {
			rc = br.status;
		} else if (br.ent.head || cblock_is(br.data, br.length)) {
			rc = cblock_decode(br.data, br.length, &in, &ids, &ids_cap, &rows, &rows_cap, err);
			if (rc >= 0 && (in.dim != d || in.count > largest))
				rc = ann_err(err, ANN_E_CORRUPT, "partition %u: a block of %u rows of dimension %u; the "
					     "directory says at most %u of %zu", br.pid, in.count, in.dim, largest, d);
			if (rc >= 0)
				fit_one(&f, rows, in.encoding, in.count, br.pid, gain + (size_t)br.pid * m,
					off + (size_t)br.pid * m, codes + (size_t)br.pid * m * cb, cb);
		} /* a format 1 block: no directions (the spread order does not apply either) */
		ann_store_reader_release(rd, &br);
		if (rc >= 0 && progress && (++done % 256 == 0 || done == nblocks))
			progress(progress_ctx, "directions", done, nblocks);
	}
	if (rc >= 0) {
		uint32_t nf = 0;
		for (size_t i = 0; i < nm; i++) {
			/* Rows of extreme scale (f32 near its range) can give an offset
			 * or gain no float holds: that direction gets no discount,
			 * rather than a record the open refuses */
			if (!(gain[i] >= 0.0f && gain[i] <= 1.0f) || !isfinite(off[i])) {
				gain[i] = 0.0f;
				off[i] = 0.0f;
				memset(codes + i * cb, 0, cb);
			}
			uint32_t a, b;
			memcpy(&a, &gain[i], 4);
			memcpy(&b, &off[i], 4);
			ann_st32(blob + ANN_DIRS_HEADER + 4 * i, a);
			ann_st32(blob + ANN_DIRS_HEADER + nm * sizeof(float) + 4 * i, b);
			nf += gain[i] > 0.0f;
		}
		/* The searchers of x use the new record, parsed from the blob
		 * before it is committed: nothing can fail once it is, so an error
		 * always means that the index keeps its old directions. */
		ann_dirs nd;
		rc = dirs_parse(blob, bb, x->meta.dim, &nd, err);
		if (rc >= 0) {
			rc = commit_record(ann_store_catalog(x->store), blob, bb, err);
			if (rc >= 0) {
				ann_dirs_free(&x->dirs);
				x->dirs = nd;
				if (fitted)
					*fitted = nf;
			} else {
				ann_dirs_free(&nd);
			}
		}
	}
	ann_free(gain);
	ann_free(off);
fail:
	ann_store_reader_free(rd);
	ann_free(f.X);
	ann_free(f.S);
	ann_free(f.U);
	ann_free(f.W);
	ann_free(f.H);
	ann_free(f.E);
	ann_free(f.w);
	ann_free(blob);
	ann_free(pids);
	ann_free(ids);
	ann_free(rows);
	return rc;
}

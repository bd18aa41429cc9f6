/* SPDX-License-Identifier: MIT */
/*
 * Description: out of memory in the build, writer and search paths (common.h's
 * failure injection: ann_mem_fail_after, one allocation fails;
 * ann_mem_fail_from, every one from some point on, a memory that stays
 * exhausted), file store and LMDB store, on a k-means index with 2-bit codes,
 * directions, deltas and deleted ids. Allocation n = 0, 1, 2... by 1 + n / 6
 * until the fault no longer fires, then every n of the last gap (the commit
 * and what follows it); a new searcher's first search at every n
 * (ANNANN_OOM_DENSE=1: every n everywhere). After each fault:
 *  - every call that failed returned ANN_E_NOMEM with a message naming what
 *    ran out;
 *  - ann_insert (ids assigned, ids given, upsert of existing ids) and
 *    ann_delete: a failed call changed nothing; the writer works on (the
 *    same call succeeds next, assigning the same ids) or refuses every call
 *    with ANN_E_STATE; the index verifies, counts its live vectors right and
 *    answers exactly;
 *  - ann_writer_open: a failure leaves no handle and no lock (the next open
 *    succeeds), and the writer it opens works;
 *  - ann_index_open and ann_searcher_new: a failure leaves no handle; a
 *    searcher made answers exactly;
 *  - ann_search, a new searcher's first and one after earlier answers, with
 *    and without the cache: a failed search returns an error, never a wrong
 *    answer, and once memory is back the same searcher answers exactly;
 *  - ann_tune_directions: a failed fit leaves the old directions whole, one
 *    that succeeded the new ones; the index verifies and answers exactly and
 *    the next fit succeeds (the writer lock was released).
 * Every sweep runs twice: with the library's allocator failing (the hook
 * above), and with every allocation of the process failing (procfault.c:
 * malloc, calloc, realloc and the aligned ones over glibc's __libc_ entry
 * points), so that LMDB's, liburing's and libc's own allocations inside an
 * operation fail too (a system call's ENOMEM is ANN_E_NOMEM as well). Not
 * under ASan, which owns malloc.
 * Exact answers: every partition probed, a re-rank bound 4 x the default's
 * width, each answer a live id at its true distance and each rank's distance
 * the brute force's over the live set. Found: ann_tune_directions committed
 * the new directions and then failed on parsing them into RAM, reporting
 * an error for a fit that had happened; opening an index out of memory said
 * only "out of memory". Found by the process-wide sweeps: after LMDB's commit
 * ran out of memory the writer refused writes but still answered
 * ann_writer_get_info; libc out of memory opening a (missing) distributed
 * descriptor was reported as "a distributed index whose descriptor is bad"
 * (ANN_E_UNSUPPORTED); a system call's ENOMEM was ANN_E_IO.
 * ann_build (both stores, one allocation failing or all from one on): it
 * fails with ANN_E_NOMEM naming what ran out and leaves no index and nothing
 * but its resumable state, which the same build then resumes and removes;
 * or it succeeds (a directions fit that fails is logged) with a complete
 * index; either answers exactly. Found: the build allocated the parent's
 * name after renaming the finished index into place, so running out of
 * memory there reported a build that had happened as failed; and a
 * finished build left its state directory (the spill as large as the data
 * in it) when opendir ran out of memory removing it.
 */
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "dirs.h"
#include "index.h"
#include "procfault.h"
#include "testutil.h"
#include "vecio.h"

#define D 16
#define NB 2000 /* built: ids 0..NB-1 */
#define NI 40   /* rows inserted by the cases, near the queries */
#define NQ 12
#define K 10
#define PARTS 8
#define NALL (NB + 3 * NI)
/* Ids of the rows past the built ones: the setup inserts every other id of
 * NB .. NB + NI - 1 (so the next id to assign is NB + NI - 1), the cases
 * insert NI rows from ASSIGN0 (ids assigned) or GIVEN0 (ids given). */
#define ASSIGN0 (NB + NI - 1)
#define GIVEN0 (NB + 2 * NI)

static float rows[NALL * D]; /* row of id i (ids >= NB: what the cases insert) */
static float queries[NQ * D];

/* The live set the index must hold: vec[i] is id i's vector. */
typedef struct model {
	bool live[NALL];
	float vec[NALL * D];
} model;

static void make_data(ann_rng *rng)
{
	float centers[6 * D];
	t_fill_uniform(rng, centers, 6 * D, 30, 220);
	for (size_t i = 0; i < NB + NQ; i++) {
		float *v = i < NB ? rows + i * D : queries + (i - NB) * D;
		const float *c = centers + ann_rng_below(rng, 6) * D;
		for (size_t j = 0; j < D; j++) {
			float x = roundf(c[j] + 15.0f * (float)ann_rng_normal(rng));
			v[j] = x < 0 ? 0 : x > 255 ? 255 : x;
		}
	}
	/* Inserted rows sit next to a query each, so any one of them that is
	 * (or is not) in the index changes some answer. */
	for (size_t i = NB; i < NALL; i++)
		for (size_t j = 0; j < D; j++) {
			float x = queries[(i % NQ) * D + j] + (float)ann_rng_below(rng, 3) - 1.0f;
			rows[i * D + j] = x < 0 ? 0 : x > 255 ? 255 : x;
		}
}

static double dist2(const float *a, const float *b)
{
	double t = 0;
	for (size_t j = 0; j < D; j++) {
		double u = (double)a[j] - b[j];
		t += u * u;
	}
	return t;
}

static void model_init(model *m)
{
	memset(m->live, 0, sizeof m->live);
	for (size_t i = 0; i < NB; i++)
		m->live[i] = true;
	memcpy(m->vec, rows, sizeof rows);
}

static uint64_t model_count(const model *m)
{
	uint64_t n = 0;
	for (size_t i = 0; i < NALL; i++)
		n += m->live[i];
	return n;
}

/* Every partition probed and a re-rank bound 4 x the default's width (at
 * the default, 2, the answers of every seed tried are exact; at 1, of few):
 * the answers must be exact. */
static void search_opts(ann_search_opts *so, size_t cache_bytes)
{
	ann_search_opts_init(so);
	so->k = K;
	so->nprobe = 64;
	so->rerank = 200;
	so->rerank_eps = 8.0f;
	so->adaptive = -1;
	so->direction_weight = 1.0f;
	so->cache_bytes = cache_bytes;
	so->io_buffer_bytes = (size_t)64 << 10; /* raised to the largest block */
}

/* The K smallest distances of every query to the live set of m, ascending. */
static void brute_force(const model *m, double best[NQ][K])
{
	for (size_t q = 0; q < NQ; q++) {
		for (size_t r = 0; r < K; r++)
			best[q][r] = INFINITY;
		for (size_t i = 0; i < NALL; i++) {
			if (!m->live[i])
				continue;
			double t = dist2(queries + q * D, m->vec + i * D);
			if (t < best[q][K - 1]) {
				size_t a = K - 1;
				while (a > 0 && best[q][a - 1] > t) {
					best[q][a] = best[q][a - 1];
					a--;
				}
				best[q][a] = t;
			}
		}
	}
}

static model start;           /* the live set every case starts from */
static double start_best[NQ][K]; /* its brute force */

/* ids and dists are the answers of a search of all queries: each must be a
 * live id at its true distance, and the r-th distance the brute force's. */
static void check_answers(const model *m, const int64_t *ids, const float *dists, const char *when)
{
	static double other[NQ][K];
	double (*best)[K] = start_best;
	if (m != &start) {
		brute_force(m, other);
		best = other;
	}
	for (size_t q = 0; q < NQ; q++) {
		const float *qv = queries + q * D;
		for (size_t r = 0; r < K; r++) {
			int64_t id = ids[q * K + r];
			if (id < 0 || id >= NALL || !m->live[id])
				T_FAIL("%s: query %zu rank %zu: id %lld is not live", when, q, r, (long long)id);
			for (size_t r2 = 0; r2 < r; r2++)
				if (ids[q * K + r2] == id)
					T_FAIL("%s: query %zu: id %lld twice", when, q, (long long)id);
			double t = dist2(qv, m->vec + (size_t)id * D);
			if (fabs(dists[q * K + r] - t) > 1e-3 * fmax(1.0, t))
				T_FAIL("%s: query %zu rank %zu: id %lld at %g, its vector is at %g", when, q, r,
				       (long long)id, (double)dists[q * K + r], t);
			if (fabs(t - best[q][r]) > 1e-3 * fmax(1.0, t))
				T_FAIL("%s: query %zu rank %zu: distance %g, brute force %g", when, q, r, t, best[q][r]);
		}
	}
}

/* One search of all queries with a searcher: exact. */
static void search_exact(ann_searcher *s, const model *m, const char *when)
{
	int64_t ids[NQ * K];
	float dists[NQ * K];
	ann_error e = {0};
	if (ann_search(s, queries, NQ, ids, dists, NULL, &e) < 0)
		T_FAIL("%s: search: %s", when, e.msg);
	check_answers(m, ids, dists, when);
}

/* Opens the index and checks that it verifies (when asked), answers
 * exactly, and that its catalog counts the model's live vectors. */
static void print_problem(void *ctx, uint32_t partition, const char *problem)
{
	(void)ctx;
	printf("  verify: partition %d: %s\n", partition == UINT32_MAX ? -1 : (int)partition, problem);
}

static void check_index(const char *idx, const model *m, const char *when, bool verify)
{
	uint64_t problems = 0;
	ann_error e = {0};
	if (verify && ann_verify(idx, print_problem, NULL, &problems, &e) < 0)
		T_FAIL("%s: verify: %s", when, e.msg);
	if (problems)
		T_FAIL("%s: verify found %llu problems", when, (unsigned long long)problems);
	ann_index *x;
	if (ann_index_open(idx, &x, &e) < 0)
		T_FAIL("%s: open: %s", when, e.msg);
	ann_index_info in;
	ASSERT_OK(ann_index_get_info(x, &in, NULL));
	if (in.live_vectors != model_count(m))
		T_FAIL("%s: the catalog counts %llu live vectors, the model %llu", when,
		       (unsigned long long)in.live_vectors, (unsigned long long)model_count(m));
	ann_search_opts so;
	search_opts(&so, 0);
	ann_searcher *s;
	ASSERT_OK(ann_searcher_new(x, &so, &s, NULL));
	search_exact(s, m, when);
	ann_searcher_free(s);
	ann_index_close(x);
}

/* Copies the directory tree src to dst (files and directories only). */
static void copy_tree(const char *src, const char *dst)
{
	if (mkdir(dst, 0755) != 0)
		T_FAIL("mkdir %s", dst);
	DIR *dp = opendir(src);
	if (!dp)
		T_FAIL("opendir %s", src);
	struct dirent *de;
	while ((de = readdir(dp))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char *a = t_path(src, de->d_name), *b = t_path(dst, de->d_name);
		struct stat st;
		if (lstat(a, &st) != 0)
			T_FAIL("stat %s", a);
		if (S_ISDIR(st.st_mode)) {
			copy_tree(a, b);
		} else {
			size_t n;
			void *buf = t_read_file(a, &n);
			t_write_file(b, buf, n);
			free(buf);
		}
		free(a);
		free(b);
	}
	closedir(dp);
}

static const char *store_name(int store)
{
	return store ? "lmdb" : "file";
}

/* Per store: the index every case starts from (built, then setup_updates),
 * and the live set it holds (the same for both stores). */
static char *tmpl[2];
static char *case_idx; /* where a case's copy of the template goes */

static void setup_updates(const char *idx, model *m);

/* The templates' build: k-means, 2-bit codes, 2 directions, one thread (so
 * that allocations come in the same order every time). */
static void build_opts(ann_build_opts *o, int store)
{
	ann_build_opts_init(o);
	o->partitions = PARTS;
	o->mem_bytes = (size_t)32 << 20;
	o->threads = 1;
	o->store = store ? ANN_STORE_LMDB : ANN_STORE_FILE;
	o->router = ANN_ROUTER_KMEANS;
	o->code_bits = 2;
	o->tune = 0;
	o->directions = 2;
}

static void make_templates(const char *dir, const char *data)
{
	for (int store = 0; store < 2; store++) {
		ann_build_opts o;
		build_opts(&o, store);
		tmpl[store] = t_path(dir, store ? "tmpl_lmdb" : "tmpl_file");
		ann_error e = {0};
		if (ann_build(data, tmpl[store], &o, &e) < 0)
			T_FAIL("build: %s", e.msg);
		setup_updates(tmpl[store], &start);
		brute_force(&start, start_best);
		check_index(tmpl[store], &start, "template", true);
	}
	case_idx = t_path(dir, "case");
}

/* A fresh copy of the store's template at case_idx. */
static const char *fresh_index(int store)
{
	t_rmtree(case_idx);
	copy_tree(tmpl[store], case_idx);
	return case_idx;
}

/* One sweep: an operation under one kind of fault on one store, and what it
 * saw. */
typedef struct sweep {
	int store;
	bool sticky; /* ann_mem_fail_from, else ann_mem_fail_after */
	bool libc;   /* every allocation of the process, not the library's only */
	int mode;    /* the operation's variant */
	uint32_t cases, failed, refused, other;
	char when[256];
} sweep;

/* Runs a case with the (n+1)-th allocation failing; false when no fault
 * fired (the operation has fewer allocations). */
typedef bool (*case_fn)(sweep *sw, int64_t n);

/* n = 0, 1, 2, ... by 1 + n / 6 until the fault no longer fires, then every
 * n of the last gap: the last allocations (a commit and what follows it)
 * are where a failure is hardest to undo. dense (or ANNANN_OOM_DENSE=1):
 * every n. */
static void run_sweep(sweep *sw, case_fn fn, bool dense)
{
	const char *env = getenv("ANNANN_OOM_DENSE");
	int64_t last = -1, n = 0, step = dense || (env && *env == '1') ? 0 : 6;
	for (;; n += 1 + (step ? n / step : 0)) {
		if (!fn(sw, n))
			break;
		last = n;
	}
	for (int64_t t = last + 1; t < n; t++)
		if (!fn(sw, t))
			break;
}

static void arm(sweep *sw, int64_t n, const char *op)
{
	snprintf(sw->when, sizeof sw->when, "%s, %s store, %s%s %lld", op, store_name(sw->store),
		 sw->sticky ? "every allocation failing from" : "allocation", sw->libc ? " (process)" : "",
		 (long long)n);
	t_current = sw->when;
	if (sw->libc)
		t_proc_fail_arm(n, sw->sticky);
	else
		(sw->sticky ? ann_mem_fail_from : ann_mem_fail_after)(n);
}

/* Disarms; whether a fault fired. */
static bool disarm(void)
{
	int64_t fired = ann_mem_failed() + t_proc_failed();
	t_proc_fail_arm(-1, false);
	ann_mem_fail_after(-1);
	return fired > 0;
}

/* A call that failed: ANN_E_NOMEM, in the error too, with a message that
 * names what ran out ("what: ...", never a bare "out of memory"). */
static void check_failure(int rc, const ann_error *e, const char *when)
{
	if (rc >= 0)
		return;
	if (rc != ANN_E_NOMEM || e->code != rc || !strchr(e->msg, ':'))
		T_FAIL("%s: returned %d (%s), expected %d; the error says %d: %s", when, rc, ann_strerror(rc),
		       ANN_E_NOMEM, e->code, e->msg);
}

/* After a call that ran out of memory: the writer refuses every call with
 * ANN_E_STATE (then it is closed and NULL returned) or works on. */
static ann_writer *writer_after(ann_writer *w, sweep *sw)
{
	ann_index_info in;
	ann_error e = {0};
	int gi = ann_writer_get_info(w, &in, &e);
	if (gi == ANN_E_STATE) {
		sw->refused++;
		float v[D] = {0};
		int64_t id = 0;
		ASSERT_EQ(ann_insert(w, v, 1, D, NULL, 0, NULL, &e), ANN_E_STATE);
		ASSERT_EQ(ann_delete(w, &id, 1, NULL, &e), ANN_E_STATE);
		ASSERT_EQ(ann_compact(w, 0, NULL, &e), ANN_E_STATE);
		ann_writer_close(w);
		return NULL;
	}
	if (gi < 0)
		T_FAIL("%s: writer info: %s", sw->when, e.msg);
	return w;
}

/* ---- inserts ------------------------------------------------------------- */

enum { INS_ASSIGNED, INS_GIVEN, INS_UPSERT, INS_MODES };
static const char *ins_name[INS_MODES] = {"insert (ids assigned)", "insert (ids given)", "insert (upsert)"};

/* The insert a case runs: NI rows; ids assigned (ASSIGN0, ASSIGN0 + 1...),
 * given (GIVEN0...), or upsert: half of them replace built ids, half ids the
 * setup inserted, with the rows of GIVEN0... as their new vectors. */
static void ins_args(int mode, int64_t *ids, const float **vecs)
{
	if (mode == INS_ASSIGNED) {
		*vecs = rows + (size_t)ASSIGN0 * D;
		return;
	}
	for (size_t i = 0; i < NI; i++)
		ids[i] = mode == INS_GIVEN ? GIVEN0 + (int64_t)i : i % 2 ? (int64_t)(i * 97 % NB) : NB + (int64_t)i;
	*vecs = rows + (size_t)GIVEN0 * D;
}

static void model_insert(model *m, int mode, const int64_t *ids, const float *vecs)
{
	for (size_t i = 0; i < NI; i++) {
		int64_t id = mode == INS_ASSIGNED ? ASSIGN0 + (int64_t)i : ids[i];
		m->live[id] = true;
		memcpy(m->vec + (size_t)id * D, vecs + i * D, D * sizeof(float));
	}
}

/* The state every case starts from: the built index, then ids NB, NB + 2
 * ... NB + NI - 2 inserted and 30 built ids deleted, so that deltas and
 * tombs exist. */
static void setup_updates(const char *idx, model *m)
{
	model_init(m);
	ann_writer *w;
	ASSERT_OK(ann_writer_open(idx, &w, NULL));
	int64_t ids[NI];
	size_t n = 0;
	for (size_t i = 0; i < NI; i += 2)
		ids[n++] = NB + (int64_t)i;
	float v[NI * D];
	for (size_t i = 0; i < n; i++)
		memcpy(v + i * D, rows + (size_t)ids[i] * D, D * sizeof(float));
	ASSERT_OK(ann_insert(w, v, n, D, ids, 0, NULL, NULL));
	for (size_t i = 0; i < n; i++) {
		m->live[ids[i]] = true;
		memcpy(m->vec + (size_t)ids[i] * D, v + i * D, D * sizeof(float));
	}
	int64_t del[30];
	for (size_t i = 0; i < 30; i++) {
		del[i] = (int64_t)(i * 61 % NB) + 1;
		m->live[del[i]] = false;
	}
	ASSERT_OK(ann_delete(w, del, 30, NULL, NULL));
	ann_writer_close(w);
}

static bool insert_case(sweep *sw, int64_t n)
{
	static model m;
	m = start;
	const char *idx = fresh_index(sw->store);
	int mode = sw->mode;
	int64_t ids[NI], got[NI];
	const float *vecs;
	ins_args(mode, ids, &vecs);
	const int64_t *given = mode == INS_ASSIGNED ? NULL : ids;
	ann_writer *w;
	ann_error e = {0};
	ASSERT_OK(ann_writer_open(idx, &w, NULL));
	arm(sw, n, ins_name[mode]);
	int rc = ann_insert(w, vecs, NI, D, given, mode == INS_UPSERT, got, &e);
	if (!disarm()) {
		ASSERT_OK(rc);
		ann_writer_close(w);
		return false;
	}
	sw->cases++;
	check_failure(rc, &e, sw->when);
	if (rc >= 0) {
		sw->other++;
		if (mode == INS_ASSIGNED)
			for (size_t i = 0; i < NI; i++)
				ASSERT_EQ(got[i], ASSIGN0 + (int64_t)i);
		model_insert(&m, mode, ids, vecs);
	} else {
		sw->failed++;
	}
	w = writer_after(w, sw);
	/* none of a failed insert, all of one that succeeded */
	check_index(idx, &m, sw->when, true);
	if (rc < 0) {
		/* the same insert succeeds (ids assigned: the same ones) */
		if (!w)
			ASSERT_OK(ann_writer_open(idx, &w, NULL));
		if (ann_insert(w, vecs, NI, D, given, mode == INS_UPSERT, got, &e) < 0)
			T_FAIL("%s: the insert again: %s", sw->when, e.msg);
		if (mode == INS_ASSIGNED)
			for (size_t i = 0; i < NI; i++)
				ASSERT_EQ(got[i], ASSIGN0 + (int64_t)i);
		model_insert(&m, mode, ids, vecs);
		check_index(idx, &m, sw->when, false);
	}
	ann_writer_close(w);
	return true;
}

/* ---- deletes ------------------------------------------------------------- */

/* The delete a case runs: the nearest live built row of every query, the
 * ids the setup inserted, an id deleted already and one that never
 * existed. */
static size_t del_args(const model *m, int64_t *del)
{
	size_t n = 0;
	for (size_t q = 0; q < NQ; q++) {
		double best = INFINITY;
		int64_t bi = -1;
		for (size_t i = 0; i < NB; i++)
			if (m->live[i]) {
				double t = dist2(queries + q * D, rows + i * D);
				if (t < best) {
					best = t;
					bi = (int64_t)i;
				}
			}
		bool dup = false;
		for (size_t a = 0; a < n; a++)
			dup = dup || del[a] == bi;
		if (!dup)
			del[n++] = bi;
	}
	for (size_t i = 0; i < NI; i += 2)
		del[n++] = NB + (int64_t)i;
	del[n++] = 1;      /* deleted by the setup */
	del[n++] = 999999; /* never existed */
	return n;
}

static bool delete_case(sweep *sw, int64_t n)
{
	static model m;
	m = start;
	const char *idx = fresh_index(sw->store);
	int64_t del[NQ + NI + 2];
	size_t nd = del_args(&m, del);
	uint64_t want = 0;
	for (size_t i = 0; i < nd; i++)
		want += del[i] < NALL && m.live[del[i]];
	ann_writer *w;
	ann_error e = {0};
	ASSERT_OK(ann_writer_open(idx, &w, NULL));
	uint64_t deleted = 7;
	arm(sw, n, "delete");
	int rc = ann_delete(w, del, nd, &deleted, &e);
	if (!disarm()) {
		ASSERT_OK(rc);
		ASSERT_EQ(deleted, want);
		ann_writer_close(w);
		return false;
	}
	sw->cases++;
	check_failure(rc, &e, sw->when);
	if (rc >= 0) {
		sw->other++;
		ASSERT_EQ(deleted, want);
		for (size_t i = 0; i < nd; i++)
			if (del[i] < NALL)
				m.live[del[i]] = false;
	} else {
		sw->failed++;
		ASSERT_EQ(deleted, 0);
	}
	w = writer_after(w, sw);
	check_index(idx, &m, sw->when, true);
	if (rc < 0) {
		if (!w)
			ASSERT_OK(ann_writer_open(idx, &w, NULL));
		if (ann_delete(w, del, nd, &deleted, &e) < 0)
			T_FAIL("%s: the delete again: %s", sw->when, e.msg);
		ASSERT_EQ(deleted, want);
		for (size_t i = 0; i < nd; i++)
			if (del[i] < NALL)
				m.live[del[i]] = false;
		check_index(idx, &m, sw->when, false);
	}
	ann_writer_close(w);
	return true;
}

/* ---- opening a writer ---------------------------------------------------- */

static bool writer_open_case(sweep *sw, int64_t n)
{
	ann_writer *w = (ann_writer *)sw; /* must be NULL after a failure */
	ann_error e = {0};
	arm(sw, n, "writer open");
	int rc = ann_writer_open(case_idx, &w, &e);
	if (!disarm()) {
		ASSERT_OK(rc);
		ann_writer_close(w);
		return false;
	}
	sw->cases++;
	check_failure(rc, &e, sw->when);
	if (rc < 0) {
		sw->failed++;
		ASSERT_TRUE(w == NULL);
		/* no lock left behind */
		if (ann_writer_open(case_idx, &w, &e) < 0)
			T_FAIL("%s: a writer after the failed one: %s", sw->when, e.msg);
	} else {
		sw->other++;
	}
	/* the writer works: one row in and out again */
	int64_t id = GIVEN0 + 5;
	uint64_t deleted = 0;
	ASSERT_OK(ann_insert(w, rows + (size_t)id * D, 1, D, &id, 0, NULL, NULL));
	ASSERT_OK(ann_delete(w, &id, 1, &deleted, NULL));
	ASSERT_EQ(deleted, 1);
	ann_writer_close(w);
	return true;
}

/* ---- open, searcher, search ---------------------------------------------- */

/* Mode 0: no cache, the default re-rank phases; 1: a cache, 4 phases, and
 * per-query statistics. */
static void search_mode(ann_search_opts *so, int mode)
{
	search_opts(so, mode ? (size_t)1 << 20 : 0);
	if (mode)
		so->rerank_phases = ANN_MAX_RERANK_PHASES;
}

/* ann_index_open and ann_searcher_new run out of memory: a failure leaves
 * no handle; a searcher made (some failure absorbed) answers exactly, and
 * so does a new one once memory is back. */
static bool open_case(sweep *sw, int64_t n)
{
	ann_search_opts so;
	search_mode(&so, sw->mode);
	ann_index *x = (ann_index *)sw;       /* must be NULL after a failure */
	ann_searcher *s = (ann_searcher *)sw; /* likewise */
	ann_error e = {0};
	arm(sw, n, sw->mode ? "open and searcher (cache)" : "open and searcher");
	int rc = ann_index_open(case_idx, &x, &e);
	bool opened = rc >= 0;
	if (opened)
		rc = ann_searcher_new(x, &so, &s, &e);
	if (!disarm()) {
		ASSERT_OK(rc);
		ann_searcher_free(s);
		ann_index_close(x);
		return false;
	}
	sw->cases++;
	check_failure(rc, &e, sw->when);
	if (rc < 0) {
		sw->failed++;
		if (!opened)
			ASSERT_TRUE(x == NULL);
		else
			ASSERT_TRUE(s == NULL);
		s = NULL;
		if (!opened)
			ASSERT_OK(ann_index_open(case_idx, &x, NULL));
	} else {
		sw->other++;
		search_exact(s, &start, sw->when);
	}
	ann_searcher *s2;
	ASSERT_OK(ann_searcher_new(x, &so, &s2, NULL));
	search_exact(s2, &start, sw->when);
	ann_searcher_free(s2);
	ann_searcher_free(s);
	ann_index_close(x);
	return true;
}

/* A searcher runs out of memory in a search: its first (every allocation
 * is swept: a search allocates its buffers on first use, once for the
 * searcher's life), or, after warm, one that follows a search that answered
 * (its buffers grown, its cache filled). */
static bool search_case(sweep *sw, int64_t n, bool warm)
{
	ann_search_opts so;
	search_mode(&so, sw->mode);
	ann_index *x;
	ann_searcher *s;
	ann_error e = {0};
	ASSERT_OK(ann_index_open(case_idx, &x, NULL));
	ASSERT_OK(ann_searcher_new(x, &so, &s, NULL));
	int64_t ids[NQ * K];
	float dists[NQ * K];
	ann_query_stats stats[NQ];
	if (warm)
		ASSERT_OK(ann_search(s, queries, NQ / 2, ids, dists, NULL, NULL));
	arm(sw, n, warm ? (sw->mode ? "search again (cache)" : "search again")
			: (sw->mode ? "first search (cache)" : "first search"));
	int rc = ann_search(s, queries, NQ, ids, dists, sw->mode ? stats : NULL, &e);
	bool fired = disarm();
	if (fired) {
		sw->cases++;
		check_failure(rc, &e, sw->when);
		if (rc < 0)
			sw->failed++;
		else
			sw->other++;
	} else {
		ASSERT_OK(rc);
	}
	if (rc >= 0)
		check_answers(&start, ids, dists, sw->when);
	search_exact(s, &start, sw->when);
	ann_searcher_free(s);
	ann_index_close(x);
	return fired;
}

static bool first_search_case(sweep *sw, int64_t n)
{
	return search_case(sw, n, false);
}

static bool search_again_case(sweep *sw, int64_t n)
{
	return search_case(sw, n, true);
}

/* ---- ann_tune_directions ------------------------------------------------- */

/* The index's directions: m, stale, and a copy of the records (free). */
static uint8_t *dirs_record(const char *idx, uint32_t *m, size_t *bytes, bool *stale)
{
	ann_index *x;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	*m = x->dirs.m;
	*bytes = (size_t)x->dirs.nparts * x->dirs.stride;
	*stale = x->dirs.stale;
	uint8_t *r = malloc(*bytes ? *bytes : 1);
	ASSERT_TRUE(r != NULL);
	memcpy(r, x->dirs.recs, *bytes);
	ann_index_close(x);
	return r;
}

/* Per store: the directions before (2 a partition) and after a fit of 3. */
static uint8_t *dirs_before[2], *dirs_after[2];
static size_t dirs_before_n[2], dirs_after_n[2];

static bool tune_case(sweep *sw, int64_t n)
{
	const char *idx = fresh_index(sw->store);
	ann_error e = {0};
	uint32_t fitted = 0;
	arm(sw, n, "tune directions");
	int rc = ann_tune_directions(idx, 3, NULL, NULL, &fitted, &e);
	if (!disarm()) {
		ASSERT_OK(rc);
		return false;
	}
	sw->cases++;
	check_failure(rc, &e, sw->when);
	if (rc < 0)
		sw->failed++;
	else
		sw->other++;
	/* a fit that failed left the old directions whole; one that succeeded
	 * left the new ones */
	uint32_t m;
	size_t nb;
	bool stale;
	uint8_t *r = dirs_record(idx, &m, &nb, &stale);
	int s = sw->store;
	if (rc >= 0) {
		if (!(m == 3 && nb == dirs_after_n[s] && memcmp(r, dirs_after[s], nb) == 0))
			T_FAIL("%s: the fit succeeded, the index has %u directions a partition, not its 3", sw->when, m);
	} else {
		if (!(m == 2 && nb == dirs_before_n[s] && memcmp(r, dirs_before[s], nb) == 0))
			T_FAIL("%s: the fit failed (%s), but the index has %u directions a partition, not its old 2",
			       sw->when, e.msg, m);
	}
	ASSERT_TRUE(!stale);
	free(r);
	check_index(idx, &start, sw->when, true);
	/* the writer lock was released: the next fit succeeds */
	if (ann_tune_directions(idx, 3, NULL, NULL, NULL, &e) < 0)
		T_FAIL("%s: the fit again: %s", sw->when, e.msg);
	r = dirs_record(idx, &m, &nb, &stale);
	ASSERT_TRUE(m == 3 && nb == dirs_after_n[s] && memcmp(r, dirs_after[s], nb) == 0);
	free(r);
	return true;
}

static void report(const char *what, const sweep *sw)
{
	printf("  %-28s %-9s %4u cases: %4u failed, %3u succeeded, %3u writers left failed\n", what,
	       sw->libc ? "(process)" : "", sw->cases, sw->failed, sw->other, sw->refused);
}

/* Adds a sweep's counts to a total. */
static void add(sweep *tot, const sweep *sw)
{
	tot->cases += sw->cases;
	tot->failed += sw->failed;
	tot->other += sw->other;
	tot->refused += sw->refused;
	tot->libc = sw->libc;
}

static void test_writer(bool libc)
{
	sweep ins[INS_MODES] = {{0}}, del = {0}, open = {0};
	for (int store = 0; store < 2; store++)
		for (int sticky = 0; sticky < 2; sticky++) {
			for (int mode = 0; mode < INS_MODES; mode++) {
				sweep sw = {.store = store, .sticky = sticky, .libc = libc, .mode = mode};
				run_sweep(&sw, insert_case, false);
				add(&ins[mode], &sw);
			}
			sweep sd = {.store = store, .sticky = sticky, .libc = libc};
			run_sweep(&sd, delete_case, false);
			add(&del, &sd);
			sweep so = {.store = store, .sticky = sticky, .libc = libc};
			fresh_index(store);
			run_sweep(&so, writer_open_case, false);
			check_index(case_idx, &start, "writer open", true);
			add(&open, &so);
		}
	for (int mode = 0; mode < INS_MODES; mode++) {
		report(ins_name[mode], &ins[mode]);
		t_current = ins_name[mode];
		ASSERT_TRUE(ins[mode].failed >= 20);
	}
	report("delete", &del);
	report("writer open", &open);
	t_current = "writer";
	ASSERT_TRUE(del.failed >= 8);
	ASSERT_TRUE(open.failed >= 20);
}

static void test_search(bool libc)
{
	sweep opened = {0}, first = {0}, again = {0};
	for (int store = 0; store < 2; store++) {
		fresh_index(store);
		for (int sticky = 0; sticky < 2; sticky++)
			for (int mode = 0; mode < 2; mode++) {
				sweep so = {.store = store, .sticky = sticky, .libc = libc, .mode = mode};
				run_sweep(&so, open_case, false);
				add(&opened, &so);
				sweep s1 = {.store = store, .sticky = sticky, .libc = libc, .mode = mode};
				run_sweep(&s1, first_search_case, !sticky);
				add(&first, &s1);
				sweep s2 = {.store = store, .sticky = sticky, .libc = libc, .mode = mode};
				run_sweep(&s2, search_again_case, false);
				add(&again, &s2);
			}
	}
	report("open and searcher", &opened);
	report("first search", &first);
	report("search again", &again);
	t_current = "search";
	ASSERT_TRUE(opened.failed >= 20);
	ASSERT_TRUE(first.failed >= 100);
	ASSERT_TRUE(again.failed >= 8);
}

static void test_tune_directions(bool libc)
{
	sweep tot = {0};
	for (int store = 0; store < 2; store++) {
		uint32_t m;
		bool stale;
		const char *idx = fresh_index(store);
		dirs_before[store] = dirs_record(idx, &m, &dirs_before_n[store], &stale);
		ASSERT_EQ(m, 2);
		ASSERT_OK(ann_tune_directions(idx, 3, NULL, NULL, NULL, NULL));
		dirs_after[store] = dirs_record(idx, &m, &dirs_after_n[store], &stale);
		ASSERT_EQ(m, 3);
		for (int sticky = 0; sticky < 2; sticky++) {
			sweep sw = {.store = store, .sticky = sticky, .libc = libc};
			run_sweep(&sw, tune_case, false);
			add(&tot, &sw);
		}
		free(dirs_before[store]);
		free(dirs_after[store]);
	}
	report("tune directions", &tot);
	t_current = "tune directions";
	ASSERT_TRUE(tot.failed >= 20);
}

/* ---- the build ----------------------------------------------------------- */

static const char *build_data, *build_parent, *build_dir; /* the input; where a case builds */

static bool exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* Nothing named build_dir.* but the build's state, which may stay. */
static void check_no_leftovers(const char *when)
{
	DIR *dp = opendir(build_parent);
	ASSERT_TRUE(dp != NULL);
	const char *base = strrchr(build_dir, '/') + 1;
	size_t bl = strlen(base);
	struct dirent *de;
	while ((de = readdir(dp)))
		if (!strncmp(de->d_name, base, bl) && de->d_name[bl] == '.' && strcmp(de->d_name + bl, ".build-state"))
			T_FAIL("%s: the failed build left %s", when, de->d_name);
	closedir(dp);
}

/* ann_build runs out of memory: it fails naming what ran out, and leaves no
 * index and nothing but its resumable state; the same build without faults
 * then succeeds (resuming that state) and removes the state. A build that
 * succeeds (the failure absorbed: a directions fit that logs and skips)
 * gives a complete index. Either index answers exactly. */
static bool build_case(sweep *sw, int64_t n)
{
	static model m;
	model_init(&m);
	size_t bl = strlen(build_dir);
	char *state = malloc(bl + 16);
	ASSERT_TRUE(state != NULL);
	memcpy(state, build_dir, bl);
	strcpy(state + bl, ".build-state");
	t_rmtree(build_dir);
	t_rmtree(state);
	ann_build_opts o;
	build_opts(&o, sw->store);
	ann_error e = {0};
	arm(sw, n, "build");
	int rc = ann_build(build_data, build_dir, &o, &e);
	if (!disarm()) {
		ASSERT_OK(rc);
		free(state);
		return false;
	}
	sw->cases++;
	check_failure(rc, &e, sw->when);
	if (rc >= 0) {
		sw->other++;
	} else {
		sw->failed++;
		if (exists(build_dir))
			T_FAIL("%s: the build failed (%s) but left the index", sw->when, e.msg);
		check_no_leftovers(sw->when);
		sw->refused += exists(state); /* counted as "left its state" */
		if (ann_build(build_data, build_dir, &o, &e) < 0)
			T_FAIL("%s: the build again: %s", sw->when, e.msg);
	}
	if (exists(state))
		T_FAIL("%s: a finished build left its state", sw->when);
	check_index(build_dir, &m, sw->when, true);
	free(state);
	return true;
}

/* At growing strides (1 + n / 6; ANNANN_OOM_DENSE=1: every n), then one by
 * one where failures turn into successes (the publish) and the last 48
 * allocations: a build makes hundreds, and its end is where a failure is
 * hardest to undo. */
static void test_build(bool libc)
{
	sweep tot = {0};
	for (int store = 0; store < 2; store++)
		for (int sticky = 0; sticky < 2; sticky++) {
			sweep sw = {.store = store, .sticky = sticky, .libc = libc};
			const char *env = getenv("ANNANN_OOM_DENSE");
			int64_t n = 0, step = env && *env == '1' ? 0 : 6, lastfail = -1, firstok = -1;
			for (;; n += 1 + (step ? n / step : 0)) {
				uint32_t failed = sw.failed;
				if (!build_case(&sw, n))
					break;
				if (sw.failed > failed)
					lastfail = n, firstok = -1;
				else if (firstok < 0)
					firstok = n;
			}
			/* every point between the last failure and the first success
			 * after it (the publish: the rename, and what must not fail
			 * after it), and the last 48 */
			for (int64_t t = lastfail + 1; firstok > 0 && t < firstok; t++)
				build_case(&sw, t);
			int64_t next = 0;
			for (int64_t t = n > 48 ? n - 48 : 0; t < n; t++) {
				while (next < t)
					next += 1 + (step ? next / step : 0);
				if (next != t && !build_case(&sw, t))
					break;
			}
			add(&tot, &sw);
		}
	printf("  %-28s %-9s %4u cases: %4u failed (%u left their state), %3u succeeded\n", "build",
	       libc ? "(process)" : "", tot.cases, tot.failed, tot.refused, tot.other);
	t_current = "build";
	ASSERT_TRUE(tot.failed >= 40);
}

int main(void)
{
	ann_rng rng;
	t_init("test_oom", &rng);
	char *dir = t_tmpdir();
	make_data(&rng);
	char *data = t_path(dir, "base.u8bin");
	ann_vwriter *vw;
	ASSERT_OK(ann_vwriter_open(data, D, &vw, NULL));
	ASSERT_OK(ann_vwriter_write_f32(vw, rows, NB, NULL));
	ASSERT_OK(ann_vwriter_close(vw, NULL));
	make_templates(dir, data);
	build_data = data;
	build_parent = dir;
	build_dir = t_path(dir, "built");
	uint64_t tb = ann_now_ns();
	for (int libc = 0; libc <= T_PROC_FAULTS; libc++)
		test_build(libc);
	uint64_t t0 = ann_now_ns();
	for (int libc = 0; libc <= T_PROC_FAULTS; libc++)
		test_writer(libc);
	uint64_t t1 = ann_now_ns();
	for (int libc = 0; libc <= T_PROC_FAULTS; libc++)
		test_search(libc);
	uint64_t t2 = ann_now_ns();
	for (int libc = 0; libc <= T_PROC_FAULTS; libc++)
		test_tune_directions(libc);
	uint64_t t3 = ann_now_ns();
	printf("  seconds: build %.2f, writer %.2f, search %.2f, tune directions %.2f\n", (double)(t0 - tb) / 1e9,
	       (double)(t1 - t0) / 1e9, (double)(t2 - t1) / 1e9, (double)(t3 - t2) / 1e9);
	free((char *)build_dir);
	for (int store = 0; store < 2; store++)
		free(tmpl[store]);
	free(case_idx);
	free(data);
	t_rmtree(dir);
	free(dir);
	printf("test_oom: ok\n");
	return 0;
}

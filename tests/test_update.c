/* SPDX-License-Identifier: MIT */
/*
 * Description: inserts, deletes and compaction (update.c) through the public
 * API. Oracle: with every partition probed, a search must equal brute force
 * over exactly the live set, before and after compaction. Also: ids assigned
 * and unique, ANN_E_EXISTS and upsert, re-inserting a deleted id, value
 * checks; searches in another process see whole transactions only
 * (snapshot test); a writer killed with SIGKILL at random moments in
 * insert, delete and compact leaves an index that opens, verifies, and holds
 * every acknowledged change and nothing else (ANNANN_CRASH_ITERS, default 25;
 * bench/crash_updates.sh runs 200).
 */
#include <signal.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gt.h"
#include "testutil.h"
#include "update.h"
#include "vecio.h"

#define D 16
#define NB 2000   /* built */
#define NI 1000   /* inserted later */
#define NQ 25
#define K 10
#define PARTS 8

static float all[(NB + NI) * D], queries[NQ * D];

static void make_data(ann_rng *rng)
{
	float centers[6 * D];
	t_fill_uniform(rng, centers, 6 * D, 30, 220);
	for (size_t i = 0; i < NB + NI + NQ; i++) {
		float *v = i < NB + NI ? all + i * D : queries + (i - NB - NI) * D;
		const float *c = centers + ann_rng_below(rng, 6) * D;
		for (size_t j = 0; j < D; j++) {
			float x = roundf(c[j] + 15.0f * (float)ann_rng_normal(rng));
			v[j] = x < 0 ? 0 : x > 255 ? 255 : x;
		}
	}
}

static char *build_index_with(const char *dir, const char *name, ann_router_kind router)
{
	char *data = t_path(dir, "base.u8bin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(data, D, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, all, NB, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = PARTS;
	o.mem_bytes = (size_t)32 << 20;
	o.threads = 1;
	o.router = router;
	/* small training runs: the test is about storage, not routing quality */
	o.annann.ae_epochs = 3;
	o.annann.dec_epochs = 2;
	o.nlsh.nlsh_epochs = 5;
	o.nlsh.joint_rounds = 2;
	o.annann.hidden[0] = o.nlsh.hidden[0] = 32;
	o.annann.hidden[1] = o.nlsh.hidden[1] = 0;
	char *idx = t_path(dir, name);
	ann_error e = {0};
	if (ann_build(data, idx, &o, &e) < 0)
		T_FAIL("build: %s", e.msg);
	free(data);
	return idx;
}

static char *build_index(const char *dir, const char *name)
{
	return build_index_with(dir, name, ANN_ROUTER_KMEANS);
}

/* live[i]: vector i (ids 0..NB+NI-1, with vec[i]) is in the index. */
typedef struct model {
	bool live[NB + NI + 100];
	float vec[(NB + NI + 100) * D];
} model;

/* Exhaustive search must equal brute force over the live set. */
static void check_exact(const char *idx, const model *m, const char *when)
{
	size_t n = 0;
	static float base[(NB + NI + 100) * D];
	static int64_t map[NB + NI + 100];
	for (size_t i = 0; i < NB + NI + 100; i++)
		if (m->live[i]) {
			memcpy(base + n * D, m->vec + i * D, D * sizeof(float));
			map[n++] = (int64_t)i;
		}
	int32_t gid[NQ * K];
	float gd[NQ * K];
	ann_gt_opts go;
	ann_gt_opts_init(&go);
	go.k = K;
	go.threads = 1;
	ASSERT_OK(ann_gt_compute_mem(base, n, queries, NQ, D, &go, gid, gd, NULL));
	ann_index *x;
	ann_error e = {0};
	if (ann_index_open(idx, &x, &e) < 0)
		T_FAIL("%s: open: %s", when, e.msg);
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = 64;
	ann_searcher *s;
	ASSERT_OK(ann_searcher_new(x, &so, &s, NULL));
	int64_t ids[NQ * K];
	float dists[NQ * K];
	if (ann_search(s, queries, NQ, ids, dists, NULL, &e) < 0)
		T_FAIL("%s: search: %s", when, e.msg);
	for (size_t i = 0; i < NQ * K; i++) {
		if (ids[i] != map[gid[i]] && fabsf(dists[i] - gd[i]) > 1e-3f)
			T_FAIL("%s: query %zu rank %zu: id %lld (%g), expected %lld (%g)", when, i / K, i % K,
			       (long long)ids[i], (double)dists[i], (long long)map[gid[i]], (double)gd[i]);
		ASSERT_TRUE(ids[i] >= 0 && m->live[ids[i]]);
	}
	ann_searcher_free(s);
	ann_index_close(x);
}

static void test_model(const char *dir, ann_rng *rng)
{
	char *idx = build_index(dir, "model");
	static model m;
	memset(&m, 0, sizeof m);
	for (size_t i = 0; i < NB; i++)
		m.live[i] = true;
	memcpy(m.vec, all, sizeof all);
	check_exact(idx, &m, "after build");

	ann_writer *w;
	ann_error e = {0};
	ASSERT_OK(ann_writer_open(idx, &w, &e));
	/* A second writer is refused while the first is open. */
	ann_writer *w2;
	ASSERT_ERR(ann_writer_open(idx, &w2, &e), e, ANN_E_STATE, "another process");

	/* Inserts with assigned ids get NB, NB+1, ... */
	int64_t got[NI];
	ASSERT_OK(ann_insert(w, all + NB * D, NI / 2, D, NULL, 0, got, &e));
	for (size_t i = 0; i < NI / 2; i++) {
		ASSERT_EQ(got[i], NB + i);
		m.live[NB + i] = true;
	}
	/* Given ids; an existing one is refused (whole call), upsert replaces. */
	int64_t ids[NI / 2];
	for (size_t i = 0; i < NI / 2; i++)
		ids[i] = (int64_t)(NB + NI / 2 + i);
	ids[7] = 3; /* a built id */
	ASSERT_ERR(ann_insert(w, all + (NB + NI / 2) * D, NI / 2, D, ids, 0, NULL, &e), e, ANN_E_EXISTS, "id 3");
	ids[7] = (int64_t)(NB + NI / 2 + 7);
	ASSERT_OK(ann_insert(w, all + (NB + NI / 2) * D, NI / 2, D, ids, 0, NULL, &e));
	for (size_t i = NB + NI / 2; i < NB + NI; i++)
		m.live[i] = true;
	float moved[D];
	for (size_t j = 0; j < D; j++)
		moved[j] = queries[j]; /* id 5 becomes query 0 itself: must rank first */
	int64_t five = 5;
	ASSERT_OK(ann_insert(w, moved, 1, D, &five, 1, NULL, &e));
	memcpy(m.vec + 5 * D, moved, sizeof moved);
	/* u8 index: values must be integers in range. */
	float bad[D] = {0};
	bad[3] = 1.5f;
	ASSERT_ERR(ann_insert(w, bad, 1, D, NULL, 0, NULL, &e), e, ANN_E_INVAL, "component 3");
	/* Issue 13 D1: vectors of another dimension are refused before any is
	 * read (bad holds D floats: reading 2 * D of them would overflow it,
	 * which ASan reports) and the index is unchanged. */
	ann_index_info wi;
	ASSERT_OK(ann_writer_get_info(w, &wi, &e));
	ASSERT_EQ(wi.dim, D);
	ASSERT_ERR(ann_insert(w, bad, 1, 2 * D, NULL, 0, NULL, &e), e, ANN_E_INVAL, "dimension 32");
	ASSERT_ERR(ann_insert(w, bad, 2, D / 2, NULL, 0, NULL, &e), e, ANN_E_INVAL, "has 16");
	bool l2;
	ASSERT_OK(ann_writer_live(w, NB + NI, &l2, &e));
	ASSERT_TRUE(!l2);
	check_exact(idx, &m, "after inserts");

	/* Delete 20%: built, inserted, missing ids. */
	int64_t del[700];
	size_t nd = 0;
	for (size_t i = 0; i < NB + NI && nd < 600; i++)
		if (ann_rng_below(rng, 5) == 0)
			del[nd++] = (int64_t)i;
	del[nd++] = 999999; /* does not exist */
	uint64_t deleted = 0;
	ASSERT_OK(ann_delete(w, del, nd, &deleted, &e));
	ASSERT_EQ(deleted, nd - 1);
	for (size_t i = 0; i + 1 < nd; i++)
		m.live[del[i]] = false;
	ASSERT_OK(ann_delete(w, del, 1, &deleted, &e)); /* twice: nothing */
	ASSERT_EQ(deleted, 0);
	check_exact(idx, &m, "after deletes");

	/* Re-insert a deleted built id and a deleted inserted id. */
	int64_t back[2] = {del[0], del[nd - 2]};
	float bv[2 * D];
	memcpy(bv, all + del[0] * D, D * sizeof(float));
	memcpy(bv + D, all + del[nd - 2] * D, D * sizeof(float));
	ASSERT_OK(ann_insert(w, bv, 2, D, back, 0, NULL, &e));
	m.live[back[0]] = m.live[back[1]] = true;
	memcpy(m.vec + back[0] * D, bv, D * sizeof(float));
	memcpy(m.vec + back[1] * D, bv + D, D * sizeof(float));
	check_exact(idx, &m, "after re-inserts");

	ann_compact_stats st;
	ASSERT_OK(ann_compact(w, 0, &st, &e));
	ASSERT_TRUE(st.partitions_rewritten > 0);
	ASSERT_TRUE(st.deltas_merged >= NI / 2);
	ASSERT_TRUE(st.tombstones_applied > 0);
	check_exact(idx, &m, "after compaction");
	/* After compaction: delete an id that now lives in a block, and insert again. */
	ASSERT_OK(ann_delete(w, &got[0], 1, &deleted, &e));
	ASSERT_EQ(deleted, 1);
	m.live[got[0]] = false;
	check_exact(idx, &m, "delete after compaction");
	ASSERT_OK(ann_compact(w, 0, &st, &e));
	ASSERT_EQ(st.tombstones_applied, 1);
	check_exact(idx, &m, "second compaction");
	/* Partitions past the limit split in two; the router learns the new ones. */
	ASSERT_OK(ann_insert(w, all + 10 * D, 1, D, NULL, 0, NULL, &e)); /* something to compact */
	m.live[NB + NI] = true;
	memcpy(m.vec + (NB + NI) * D, all + 10 * D, D * sizeof(float));
	ASSERT_OK(ann_compact(w, 150, &st, &e));
	ASSERT_TRUE(st.partitions_split >= 1);
	check_exact(idx, &m, "after splits");
	ann_index *x;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ann_index_info in;
	ASSERT_OK(ann_index_get_info(x, &in, NULL));
	ASSERT_EQ(in.partitions, PARTS + st.partitions_split);
	ann_index_close(x);
	ann_writer_close(w);
	uint64_t problems = 9;
	ASSERT_OK(ann_verify(idx, NULL, NULL, &problems, NULL));
	ASSERT_EQ(problems, 0);
	free(idx);
}

/* Every learned router places inserted vectors with its own model (no
 * retraining); deletes and compaction are router-independent. Exhaustive
 * search must stay exact through each step, and verify must stay clean. */
static void test_routers(const char *dir, ann_rng *rng)
{
	static const struct {
		ann_router_kind kind;
		const char *name;
	} routers[] = {{ANN_ROUTER_ANNANN, "r-annann"},
		       {ANN_ROUTER_NLSH, "r-nlsh"},
		       {ANN_ROUTER_JOINT, "r-joint"},
		       {ANN_ROUTER_SOFT, "r-soft"}};
	for (size_t r = 0; r < sizeof routers / sizeof routers[0]; r++) {
		char *idx = build_index_with(dir, routers[r].name, routers[r].kind);
		static model m;
		memset(&m, 0, sizeof m);
		for (size_t i = 0; i < NB; i++)
			m.live[i] = true;
		memcpy(m.vec, all, sizeof all);
		ann_writer *w;
		ann_error e = {0};
		if (ann_writer_open(idx, &w, &e) < 0)
			T_FAIL("%s: writer: %s", routers[r].name, e.msg);
		int64_t got[NI];
		if (ann_insert(w, all + NB * D, NI, D, NULL, 0, got, &e) < 0)
			T_FAIL("%s: insert: %s", routers[r].name, e.msg);
		for (size_t i = 0; i < NI; i++) {
			ASSERT_EQ(got[i], NB + i);
			m.live[NB + i] = true;
		}
		check_exact(idx, &m, routers[r].name);
		int64_t del[NB / 5];
		size_t nd = 0;
		for (size_t i = 0; i < NB + NI && nd < NB / 5; i++)
			if (ann_rng_below(rng, 5) == 0)
				del[nd++] = (int64_t)i;
		uint64_t deleted = 0;
		ASSERT_OK(ann_delete(w, del, nd, &deleted, &e));
		ASSERT_EQ(deleted, nd);
		size_t nd_inserted = 0; /* a deleted delta is dropped, not tombstoned */
		for (size_t i = 0; i < nd; i++) {
			m.live[del[i]] = false;
			nd_inserted += del[i] >= NB;
		}
		check_exact(idx, &m, routers[r].name);
		ann_compact_stats st;
		if (ann_compact(w, 0, &st, &e) < 0)
			T_FAIL("%s: compact: %s", routers[r].name, e.msg);
		ASSERT_TRUE(st.partitions_rewritten > 0);
		ASSERT_EQ(st.deltas_merged, NI - nd_inserted);
		ASSERT_EQ(st.tombstones_applied, nd - nd_inserted);
		check_exact(idx, &m, routers[r].name);
		ann_writer_close(w);
		uint64_t problems = 9;
		ASSERT_OK(ann_verify(idx, NULL, NULL, &problems, NULL));
		ASSERT_EQ(problems, 0);
		free(idx);
	}
}

/* Snapshots: a child searches while the parent inserts and deletes a group
 * of G vectors that are the G nearest of query 0; every result must hold all
 * G of them or none. */
#define G 10
static void test_snapshots(const char *dir)
{
	char *idx = build_index(dir, "snap");
	float grp[G * D];
	int64_t gids[G];
	for (size_t i = 0; i < G; i++) {
		for (size_t j = 0; j < D; j++)
			grp[i * D + j] = queries[j] + (float)(i % 2); /* at distance 0 or D from query 0 */
		gids[i] = 100000 + (int64_t)i;
	}
	int pfd[2];
	ASSERT_TRUE(pipe(pfd) == 0);
	pid_t pid = fork();
	ASSERT_TRUE(pid >= 0);
	if (pid == 0) {
		close(pfd[1]);
		ann_index *x;
		if (ann_index_open(idx, &x, NULL) < 0)
			_exit(2);
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = K;
		so.nprobe = PARTS;
		ann_searcher *s;
		if (ann_searcher_new(x, &so, &s, NULL) < 0)
			_exit(2);
		int rounds = 0, bad = 0, seen_all = 0, seen_none = 0;
		for (;;) {
			int64_t ids[K];
			float dd[K];
			ann_error e = {0};
			if (ann_search(s, queries, 1, ids, dd, NULL, &e) < 0) {
				fprintf(stderr, "child search: %s\n", e.msg);
				_exit(3);
			}
			int in = 0;
			for (int j = 0; j < K; j++)
				in += ids[j] >= 100000;
			if (in != 0 && in != G)
				bad++;
			seen_all += in == G;
			seen_none += in == 0;
			rounds++;
			/* stop when the parent closes the pipe */
			fd_set fs;
			FD_ZERO(&fs);
			FD_SET(pfd[0], &fs);
			struct timeval tv = {0, 0};
			if (select(pfd[0] + 1, &fs, NULL, NULL, &tv) > 0)
				break;
		}
		ann_searcher_free(s);
		ann_index_close(x);
		fprintf(stderr, "snapshot child: %d searches, %d with the group, %d without, %d torn\n", rounds,
			seen_all, seen_none, bad);
		_exit(bad ? 1 : 0);
	}
	close(pfd[0]);
	ann_writer *w;
	ann_error e = {0};
	ASSERT_OK(ann_writer_open(idx, &w, &e));
	for (int r = 0; r < 30; r++) {
		ASSERT_OK(ann_insert(w, grp, G, D, gids, 0, NULL, &e));
		if (r % 10 == 3) {
			ann_compact_stats st;
			ASSERT_OK(ann_compact(w, 0, &st, &e));
		}
		uint64_t n;
		ASSERT_OK(ann_delete(w, gids, G, &n, &e));
		ASSERT_EQ(n, G);
		if (r % 10 == 7) {
			ann_compact_stats st;
			ASSERT_OK(ann_compact(w, 0, &st, &e));
		}
	}
	ann_writer_close(w);
	close(pfd[1]);
	int status;
	ASSERT_TRUE(waitpid(pid, &status, 0) == pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	free(idx);
}

/* Crash safety: the child loops over random inserts, deletes and
 * compactions; before each call it writes "B <kind> <id> <n>" to a pipe and
 * after the acknowledgement "A". The parent kills it at a random moment and
 * checks the index against the acknowledged history: exactly the ids of the
 * call in flight (a "B" without its "A") may go either way. */
static void op_ids(char kind, long long id, size_t i, int64_t *out)
{
	*out = kind == 'I' ? (int64_t)(id + (long long)i * 1000) : (int64_t)((id + (long long)i * 37) % NB);
}

static void crash_child(const char *idx, int fd, uint64_t seed)
{
	ann_rng r;
	ann_rng_seed(&r, seed);
	ann_writer *w;
	if (ann_writer_open(idx, &w, NULL) < 0)
		_exit(2);
	for (;;) {
		uint64_t kind = ann_rng_below(&r, 10);
		char line[64];
		int len;
		if (kind < 9) {
			char k = kind < 5 ? 'I' : 'D';
			size_t n = 1 + ann_rng_below(&r, 20);
			long long id = k == 'I' ? 200000 + (long long)ann_rng_below(&r, 500) : (long long)ann_rng_below(&r, NB);
			int64_t ids[20];
			float v[20 * D];
			for (size_t i = 0; i < n; i++) {
				op_ids(k, id, i, &ids[i]);
				memcpy(v + i * D, all + (size_t)(ids[i] % (NB + NI)) * D, D * sizeof(float));
			}
			len = snprintf(line, sizeof line, "B %c %lld %zu\n", k, id, n);
			if (write(fd, line, (size_t)len) < 0)
				_exit(4);
			int rc = k == 'I' ? ann_insert(w, v, n, D, ids, 1, NULL, NULL) : ann_delete(w, ids, n, NULL, NULL);
			if (rc < 0)
				_exit(3);
		} else {
			len = snprintf(line, sizeof line, "B C 0 0\n");
			if (write(fd, line, (size_t)len) < 0)
				_exit(4);
			if (ann_compact(w, 0, NULL, NULL) < 0)
				_exit(3);
		}
		if (write(fd, "A\n", 2) < 0)
			_exit(4);
	}
}

static void test_crash(const char *dir, ann_rng *rng)
{
	const char *it = getenv("ANNANN_CRASH_ITERS");
	int iters = it && *it ? atoi(it) : 25;
	char *idx = build_index(dir, "crash");
	static bool live_b[NB], live_i[500 + 20 * 1000];
	for (size_t i = 0; i < NB; i++)
		live_b[i] = true;
	int inflight_seen = 0, inflight_compact = 0;
	for (int round = 0; round < iters; round++) {
		int pfd[2];
		ASSERT_TRUE(pipe(pfd) == 0);
		pid_t pid = fork();
		ASSERT_TRUE(pid >= 0);
		if (pid == 0) {
			close(pfd[0]);
			crash_child(idx, pfd[1], ann_rng_next(rng) + (uint64_t)round);
		}
		close(pfd[1]);
		/* Kill after a random number of the child's lines (0: while it
		 * opens) plus 0-4 ms, so kills fall inside inserts, deletes and
		 * compactions however slow fsync is here. */
		static char buf[1 << 20];
		size_t n = 0, lines = 0, target = ann_rng_below(rng, 61);
		while (lines < target && n < sizeof buf - 1) {
			ssize_t r = read(pfd[0], buf + n, sizeof buf - 1 - n);
			if (r <= 0)
				break;
			for (ssize_t i = 0; i < r; i++)
				lines += buf[n + (size_t)i] == '\n';
			n += (size_t)r;
		}
		usleep((useconds_t)ann_rng_below(rng, 4000));
		kill(pid, SIGKILL);
		int status;
		waitpid(pid, &status, 0);
		if (WIFEXITED(status))
			T_FAIL("round %d: the writer exited with %d before the kill", round, WEXITSTATUS(status));
		for (ssize_t r; n < sizeof buf - 1 && (r = read(pfd[0], buf + n, sizeof buf - 1 - n)) > 0;)
			n += (size_t)r;
		buf[n] = '\0';
		close(pfd[0]);
		char pk = 0;
		long long pid_ = 0;
		size_t pn = 0;
		bool pending = false;
		char *save = NULL;
		for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			if (line[0] == 'B' && sscanf(line, "B %c %lld %zu", &pk, &pid_, &pn) == 3) {
				pending = true;
			} else if (line[0] == 'A' && pending) {
				for (size_t i = 0; i < pn; i++) {
					int64_t id;
					op_ids(pk, pid_, i, &id);
					if (pk == 'I')
						live_i[id - 200000] = true;
					else if (pk == 'D')
						live_b[id] = false;
				}
				pending = false;
			}
		}
		inflight_compact += pending && pk == 'C';
		uint64_t problems = 0;
		ann_error e = {0};
		if (ann_verify(idx, NULL, NULL, &problems, &e) < 0)
			T_FAIL("round %d: verify: %s", round, e.msg);
		if (problems)
			T_FAIL("round %d: verify found %llu problems", round, (unsigned long long)problems);
		ann_writer *w;
		if (ann_writer_open(idx, &w, &e) < 0)
			T_FAIL("round %d: writer reopen: %s", round, e.msg);
		int64_t inflight[20];
		size_t ninf = 0;
		if (pending && pk != 'C') {
			inflight_seen++;
			for (size_t i = 0; i < pn; i++)
				op_ids(pk, pid_, i, &inflight[ninf++]);
		}
		for (int64_t id = 0; id < NB + 500 + 20 * 1000; id++) {
			int64_t real = id < NB ? id : 200000 + (id - NB);
			bool want = id < NB ? live_b[id] : live_i[id - NB], have;
			ASSERT_OK(ann_writer_live(w, real, &have, &e));
			if (have == want)
				continue;
			bool excused = false;
			for (size_t i = 0; i < ninf; i++)
				excused |= inflight[i] == real;
			if (!excused)
				T_FAIL("round %d: id %lld is %s, the acknowledged history says %s", round, (long long)real,
				       have ? "live" : "gone", want ? "live" : "gone");
			/* The call in flight took effect for this id: adopt it. */
			if (id < NB)
				live_b[id] = have;
			else
				live_i[id - NB] = have;
		}
		ann_writer_close(w);
	}
	printf("crash: %d kills (%d during an insert or delete, %d during a compaction), index verified and "
	       "exact after each\n",
	       iters, inflight_seen, inflight_compact);
	free(idx);
}

int main(void)
{
	ann_rng rng;
	t_init("test_update", &rng);
	char *dir = t_tmpdir();
	make_data(&rng);
	test_model(dir, &rng);
	test_routers(dir, &rng);
	test_snapshots(dir);
	test_crash(dir, &rng);
	t_rmtree(dir);
	free(dir);
	return 0;
}

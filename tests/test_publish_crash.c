/* SPDX-License-Identifier: MIT */
/*
 * test_publish_crash: SIGKILL during publication. A child writes blocks
 * (random sizes, bytes derived from (partition, generation)) and commits
 * directory changes: new partitions, rewrites (which free old extents),
 * drops, some aborted txns. It reports each txn on a pipe before committing
 * ("P") and after ("C"). The parent kills it after a random number of those
 * lines plus up to 4 ms, reopens
 * the index as the writer, and checks: verify finds no problem and no
 * unaccounted space; the directory is exactly the acknowledged state, or
 * that plus the one in-flight txn; every block reads back with its bytes;
 * no two live extents overlap. Both store kinds, alternately.
 * ANNANN_CRASH_ITERS sets the number of kills (default 20).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "store.h"
#include "testutil.h"

#define MAXP 400    /* partition ids in use stay below this */
#define MAXOPS 5    /* operations per txn */

static ann_rng rng;

static size_t block_len(ann_store_kind k, uint32_t pid, uint32_t gen)
{
	uint64_t h = XXH64(&pid, 4, gen * 0x9e3779b97f4a7c15ull + 1);
	return ann_store_block_bytes(k, (size_t)(h % (64 << 10)) + 1);
}

static uint8_t *make_block(uint32_t pid, uint32_t gen, size_t len)
{
	return t_make_block(pid, gen, 0xc4a5ull, len);
}

static void say(int fd, const char *line)
{
	size_t n = strlen(line);
	/* Lines are shorter than PIPE_BUF, so each write is atomic. */
	if (write(fd, line, n) != (ssize_t)n)
		_exit(4);
}

static void child_fail(int fd, const ann_error *e)
{
	char buf[700];
	snprintf(buf, sizeof buf, "E %s\n", e->msg);
	say(fd, buf);
	_exit(3);
}

/* The writer: loops until killed. */
static void child_main(const char *dir, int fd, uint64_t seed)
{
	ann_rng r;
	ann_rng_seed(&r, seed);
	ann_error e = { 0 };
	ann_store_opts o;
	ann_store_opts_init(&o);
	o.writable = true;
	ann_store *s;
	if (ann_store_open(dir, &o, &s, &e) < 0)
		child_fail(fd, &e);
	ann_store_kind kind = ann_store_kind_of(s);
	uint32_t gens[MAXP] = { 0 };
	uint32_t next_pid = 0;
	ann_dir d;
	if (ann_store_dir_copy(s, &d, &e) < 0)
		child_fail(fd, &e);
	for (uint32_t p = 0; p < d.n && p < MAXP; p++)
		gens[p] = d.ents[p].kind ? d.ents[p].generation : 0;
	next_pid = d.n;
	ann_catalog_dir_free(&d);
	/* Ids once dropped are not reused: their generation restarts at 1 and
	 * would repeat bytes the parent already checked. */
	ann_cat_txn *rt;
	uint64_t np = 0;
	if (ann_catalog_read_begin(ann_store_catalog(s), &rt, &e) < 0)
		child_fail(fd, &e);
	if (ann_catalog_meta_get_u64(rt, "test.next_pid", &np, &e) == ANN_OK && np > next_pid)
		next_pid = (uint32_t)np;
	ann_catalog_read_end(rt);

	for (uint64_t seq = 1;; seq++) {
		ann_store_txn *t;
		if (ann_store_begin(s, &t, &e) < 0)
			child_fail(fd, &e);
		uint32_t nops = 1 + (uint32_t)ann_rng_below(&r, MAXOPS);
		uint32_t pids[MAXOPS], newgen[MAXOPS];
		ann_block_put puts[MAXOPS];
		size_t nput = 0, ndrop = 0;
		uint32_t drops[MAXOPS];
		char line[512];
		int len = snprintf(line, sizeof line, "P %llu", (unsigned long long)seq);
		for (uint32_t i = 0; i < nops; i++) {
			uint32_t pid;
			double u = ann_rng_uniform(&r);
			bool fresh = next_pid < MAXP && (next_pid < 8 || u < 0.3);
			if (fresh) {
				pid = next_pid++;
			} else {
				pid = (uint32_t)ann_rng_below(&r, next_pid ? next_pid : 1);
				if (!gens[pid])
					continue;
			}
			bool dup = false;
			for (size_t k = 0; k < nput; k++)
				dup |= pids[k] == pid;
			for (size_t k = 0; k < ndrop; k++)
				dup |= drops[k] == pid;
			if (dup)
				continue;
			if (!fresh && u > 0.93) {
				drops[ndrop++] = pid;
				len += snprintf(line + len, sizeof line - (size_t)len, " %u:0", pid);
				continue;
			}
			uint32_t g = gens[pid] + 1;
			size_t bl = block_len(kind, pid, g);
			uint8_t *b = make_block(pid, g, bl);
			if (!b)
				_exit(5);
			pids[nput] = pid;
			newgen[nput] = g;
			puts[nput] = (ann_block_put){ pid, g, b, bl };
			nput++;
			len += snprintf(line + len, sizeof line - (size_t)len, " %u:%u", pid, g);
		}
		snprintf(line + len, sizeof line - (size_t)len, "\n");
		/* Sometimes split the puts over two calls in the same txn. */
		size_t half = nput > 1 && ann_rng_below(&r, 2) ? nput / 2 : nput;
		if (ann_store_put_blocks(t, puts, half, NULL, &e) < 0 ||
		    ann_store_put_blocks(t, puts + half, nput - half, NULL, &e) < 0)
			child_fail(fd, &e);
		for (size_t k = 0; k < ndrop; k++)
			if (ann_store_drop(t, drops[k], &e) < 0)
				child_fail(fd, &e);
		if (ann_catalog_meta_put_u64(ann_store_txn_catalog(t), "test.next_pid", next_pid, &e) < 0)
			child_fail(fd, &e);
		for (size_t k = 0; k < nput; k++)
			ann_aligned_free((void *)puts[k].data);
		if (ann_rng_below(&r, 20) == 0) {
			ann_store_abort(t);
			continue; /* never announced */
		}
		say(fd, line);
		if (ann_store_commit(t, &e) < 0)
			child_fail(fd, &e);
		for (size_t k = 0; k < nput; k++)
			gens[pids[k]] = newgen[k];
		for (size_t k = 0; k < ndrop; k++)
			gens[drops[k]] = 0;
		snprintf(line, sizeof line, "C %llu\n", (unsigned long long)seq);
		say(fd, line);
	}
}

/* Applies a "P seq pid:gen ..." line to a generation array. */
static void apply_line(const char *line, uint32_t *gens)
{
	const char *p = strchr(line + 2, ' ');
	while (p && *p == ' ') {
		unsigned pid, gen;
		int used = 0;
		if (sscanf(p, " %u:%u%n", &pid, &gen, &used) != 2)
			break;
		ASSERT_LT(pid, MAXP);
		gens[pid] = gen;
		p += used;
	}
}

static bool dir_matches(const ann_dir *d, const uint32_t *gens)
{
	for (uint32_t p = 0; p < MAXP; p++) {
		uint32_t have = p < d->n && d->ents[p].kind ? d->ents[p].generation : 0;
		if (have != gens[p])
			return false;
	}
	return d->n <= MAXP;
}

struct ext {
	uint64_t off, len;
	uint32_t pid;
};

static int cmp_ext(const void *a, const void *b)
{
	const struct ext *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

struct issue_log {
	int problems, warnings;
};

static void on_issue(void *ctx, const ann_issue *is)
{
	struct issue_log *l = ctx;
	if (is->warning)
		l->warnings++;
	else
		l->problems++;
	fprintf(stderr, "  verify: %s%s\n", is->warning ? "warning: " : "", is->msg);
}

/* Reopens after a kill and checks everything; updates gens to the state found. */
static void check_index(const char *dir, uint32_t *gens, const uint32_t *pending_gens, bool have_pending,
			int *took_pending)
{
	ann_error e = { 0 };
	ann_store_opts o;
	ann_store_opts_init(&o);
	o.writable = true; /* the writer's open truncates an unfinished txn's bytes */
	ann_store *s;
	if (ann_store_open(dir, &o, &s, &e) < 0)
		T_FAIL("reopen after kill: %s", e.msg);
	ann_store_kind kind = ann_store_kind_of(s);
	struct issue_log log = { 0, 0 };
	ann_verify_stats vs;
	if (ann_store_verify(s, on_issue, &log, &vs, &e) < 0)
		T_FAIL("verify: %s", e.msg);
	ASSERT_EQ(log.problems, 0);
	ASSERT_EQ(log.warnings, 0);

	ann_dir d;
	ASSERT_OK(ann_store_dir_copy(s, &d, &e));
	if (dir_matches(&d, gens)) {
		*took_pending = 0;
	} else if (have_pending && dir_matches(&d, pending_gens)) {
		*took_pending = 1;
		memcpy(gens, pending_gens, MAXP * sizeof *gens);
	} else {
		for (uint32_t p = 0; p < MAXP; p++) {
			uint32_t have = p < d.n && d.ents[p].kind ? d.ents[p].generation : 0;
			if (have != gens[p] || (have_pending && have != pending_gens[p]))
				fprintf(stderr, "  partition %u: found gen %u, acknowledged %u, in flight %u\n", p, have,
					gens[p], have_pending ? pending_gens[p] : 0);
		}
		T_FAIL("directory is neither the acknowledged state nor that plus the in-flight txn");
	}

	/* Independent overlap check of live extents (file store). */
	if (kind == ANN_STORE_FILE) {
		struct ext *xs = calloc(d.count + 1, sizeof *xs);
		size_t n = 0;
		for (uint32_t p = 0; p < d.n; p++)
			if (d.ents[p].kind)
				xs[n++] = (struct ext){ d.ents[p].offset, d.ents[p].length, p };
		qsort(xs, n, sizeof *xs, cmp_ext);
		for (size_t i = 1; i < n; i++)
			if (xs[i - 1].off + xs[i - 1].len > xs[i].off)
				T_FAIL("partitions %u and %u overlap", xs[i - 1].pid, xs[i].pid);
		free(xs);
	}

	/* Every block reads back with the bytes of its (partition, generation). */
	ann_store_reader_opts ro;
	ann_store_reader_opts_init(&ro);
	ro.verify = true;
	ann_store_reader *r;
	ASSERT_OK(ann_store_reader_new(s, &ro, &r, &e));
	uint32_t pids[MAXP];
	size_t m = 0;
	for (uint32_t p = 0; p < d.n; p++)
		if (d.ents[p].kind)
			pids[m++] = p;
	ASSERT_OK(ann_store_reader_submit(r, pids, NULL, m, &e));
	ann_block_read b;
	size_t got = 0;
	int rc;
	while ((rc = ann_store_reader_next(r, &b, &e)) == 1) {
		if (b.status < 0)
			T_FAIL("partition %u: %s", b.pid, e.msg);
		uint32_t g = gens[b.pid];
		ASSERT_EQ(b.ent.generation, g);
		size_t len = block_len(kind, b.pid, g);
		ASSERT_EQ(b.length, len);
		ASSERT_EQ(b.ent.count, g);
		uint8_t *want = make_block(b.pid, g, len);
		if (memcmp(want, b.data, len) != 0)
			T_FAIL("partition %u generation %u: bytes differ", b.pid, g);
		ann_aligned_free(want);
		ann_store_reader_release(r, &b);
		got++;
	}
	ASSERT_EQ(rc, 0);
	ASSERT_EQ(got, m);
	ann_store_reader_free(r);
	ann_catalog_dir_free(&d);
	ann_store_close(s);
}

int main(void)
{
	t_init("test_publish_crash", &rng);
	signal(SIGPIPE, SIG_IGN);
	int iters = 20;
	const char *env = getenv("ANNANN_CRASH_ITERS");
	if (env && *env)
		iters = atoi(env);
	char *base = t_tmpdir();
	char *dirs[2] = { t_path(base, "file"), t_path(base, "lmdb") };
	static uint32_t gens[2][MAXP];
	uint64_t commits[2] = { 0, 0 }, in_flight_taken[2] = { 0, 0 }, in_flight_lost[2] = { 0, 0 };
	for (int k = 0; k < 2; k++) {
		ann_store_opts o;
		ann_store_opts_init(&o);
		o.create = true;
		o.kind = k ? ANN_STORE_LMDB : ANN_STORE_FILE;
		o.map_bytes = 1 << 20; /* small, so the map grows while killed */
		ann_store *s;
		ASSERT_OK(ann_store_open(dirs[k], &o, &s, NULL));
		ann_store_close(s);
	}
	uint64_t t_start = ann_now_ns();
	for (int it = 0; it < iters; it++) {
		int k = it % 2;
		int pfd[2];
		ASSERT_EQ(pipe(pfd), 0);
		pid_t child = fork();
		ASSERT_TRUE(child >= 0);
		if (child == 0) {
			close(pfd[0]);
			child_main(dirs[k], pfd[1], t_seed ^ ((uint64_t)it * 0x9e3779b97f4a7c15ull));
			_exit(0);
		}
		close(pfd[1]);
		/* Kill at a random instant: after a random number of the child's
		 * lines (0: during open), then 0-4 ms of jitter, so that kills fall
		 * in every phase of a txn however slow fsync is on this disk. */
		size_t cap = 1 << 16, n = 0, lines = 0, target = ann_rng_below(&rng, 41);
		char *buf = malloc(cap);
		ASSERT_TRUE(buf != NULL);
		while (lines < target) {
			if (n + 4096 > cap)
				ASSERT_TRUE((buf = realloc(buf, cap *= 2)) != NULL);
			ssize_t r = read(pfd[0], buf + n, cap - n - 1);
			if (r <= 0)
				break; /* the child ended: reported below */
			for (ssize_t i = 0; i < r; i++)
				lines += buf[n + (size_t)i] == '\n';
			n += (size_t)r;
		}
		uint64_t delay_us = ann_rng_below(&rng, 4000);
		struct timespec ts = { 0, (long)delay_us * 1000 };
		nanosleep(&ts, NULL);
		kill(child, SIGKILL);
		int status;
		ASSERT_EQ(waitpid(child, &status, 0), child);
		/* Collect the rest of what the child acknowledged. */
		for (;;) {
			if (n + 4096 > cap)
				ASSERT_TRUE((buf = realloc(buf, cap *= 2)) != NULL);
			ssize_t r = read(pfd[0], buf + n, cap - n - 1);
			if (r <= 0)
				break;
			n += (size_t)r;
		}
		buf[n] = '\0';
		close(pfd[0]);
		static uint32_t pending[MAXP];
		bool have_pending = false;
		char *save = NULL;
		for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			if (line[0] == 'E')
				T_FAIL("writer child failed: %s", line + 2);
			if (line[0] == 'P') {
				memcpy(pending, gens[k], sizeof pending);
				apply_line(line, pending);
				have_pending = true;
			} else if (line[0] == 'C') {
				ASSERT_TRUE(have_pending);
				memcpy(gens[k], pending, sizeof pending);
				have_pending = false;
				commits[k]++;
			}
		}
		free(buf);
		if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
			T_FAIL("writer child ended by itself (status %d)", status);
		int took = 0;
		check_index(dirs[k], gens[k], pending, have_pending, &took);
		if (have_pending) {
			if (took)
				in_flight_taken[k]++;
			else
				in_flight_lost[k]++;
		}
	}
	printf("test_publish_crash: %d kills in %.1f s; file: %llu acknowledged commits (in flight at kill: %llu "
	       "committed, %llu not); lmdb: %llu (%llu, %llu)\n",
	       iters, (double)(ann_now_ns() - t_start) / 1e9, (unsigned long long)commits[0],
	       (unsigned long long)in_flight_taken[0], (unsigned long long)in_flight_lost[0],
	       (unsigned long long)commits[1], (unsigned long long)in_flight_taken[1],
	       (unsigned long long)in_flight_lost[1]);
	t_rmtree(base);
	free(dirs[0]);
	free(dirs[1]);
	free(base);
	return 0;
}

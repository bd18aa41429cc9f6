/* SPDX-License-Identifier: MIT */
/*
 * bench_io: random whole-block reads through the library's io reader
 * (io_uring, O_DIRECT, registered buffers) and its pread path, at queue
 * depth Q and block size B, over a large file it creates once (default
 * 2 GiB; O_DIRECT makes the page cache irrelevant). Reports MB/s and IOPS,
 * median of --runs. bench/fio_compare.sh runs fio beside it.
 * Uses the internal store.h: the reader is not public API.
 *
 *   bench_io [--file PATH] [--size-gib G] [--bs BYTES] [--qd Q] [--seconds S]
 *            [--runs N] [--path uring|pread|both] [--seed N] [--json]
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "store.h"

struct opts {
	const char *file;
	double size_gib;
	uint32_t bs;
	unsigned qd;
	double seconds;
	int runs;
	int paths; /* 1 uring, 2 pread, 3 both */
	uint64_t seed;
	bool json;
};

struct result {
	double mbps, iops, wait_frac;
	const char *path;
	bool direct, registered;
};

static void usage(void)
{
	fprintf(stderr, "usage: bench_io [--file PATH] [--size-gib G] [--bs BYTES] [--qd Q] [--seconds S] "
			"[--runs N] [--path uring|pread|both] [--seed N] [--json]\n");
	exit(2);
}

/* Creates (or extends) the file with non-repeating bytes, written O_DIRECT. */
static int make_file(const char *path, uint64_t size)
{
	struct stat st;
	if (stat(path, &st) == 0 && (uint64_t)st.st_size >= size)
		return 0;
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		mkdir(dir, 0755);
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_DIRECT, 0644);
	bool direct = fd >= 0;
	if (fd < 0)
		fd = open(path, O_WRONLY | O_CREAT, 0644);
	if (fd < 0) {
		perror(path);
		return -1;
	}
	const size_t chunk = 4u << 20;
	uint8_t *buf = ann_aligned_alloc(4096, chunk);
	ann_rng r;
	ann_rng_seed(&r, 12345);
	fprintf(stderr, "bench_io: writing %.2f GiB to %s (%s)\n", (double)size / (1u << 30), path,
		direct ? "O_DIRECT" : "buffered");
	for (uint64_t off = 0; off < size; off += chunk) {
		for (size_t i = 0; i < chunk; i += 8) {
			uint64_t v = ann_rng_next(&r);
			memcpy(buf + i, &v, 8);
		}
		if (ann_pwrite_all(fd, buf, chunk, off, path, NULL) < 0) {
			perror(path);
			close(fd);
			ann_aligned_free(buf);
			return -1;
		}
	}
	fsync(fd);
	close(fd);
	ann_aligned_free(buf);
	return 0;
}

static int run_once(const struct opts *o, bool pread_path, uint64_t nblocks, ann_rng *r, struct result *res)
{
	ann_ioreader_opts io;
	ann_ioreader_opts_init(&io);
	io.queue_depth = o->qd;
	io.pool_bytes = (size_t)o->qd * o->bs;
	io.force_pread = pread_path;
	ann_ioreader *rd;
	ann_error e = { 0 };
	if (ann_ioreader_open(o->file, &io, &rd, &e) < 0) {
		fprintf(stderr, "bench_io: %s\n", e.msg);
		return -1;
	}
	/* pread is synchronous: one request queued at a time is its queue depth. */
	unsigned depth = pread_path ? 1 : o->qd;
	uint64_t t0 = ann_now_ns(), deadline = t0 + (uint64_t)(o->seconds * 1e9);
	uint64_t done = 0, bytes = 0;
	for (unsigned i = 0; i < depth; i++) {
		ann_ioreq q = { ann_rng_below(r, nblocks) * o->bs, o->bs, 0 };
		if (ann_ioreader_submit(rd, &q, 1, &e) < 0)
			goto fail;
	}
	bool stop = false;
	for (;;) {
		ann_iocomp c;
		int rc = ann_ioreader_next(rd, &c, &e);
		if (rc < 0)
			goto fail;
		if (rc == 0)
			break;
		if (c.status < 0)
			goto fail;
		bytes += c.length;
		done++;
		ann_ioreader_release(rd, &c);
		if (!stop && (done & 15) == 0 && ann_now_ns() >= deadline)
			stop = true;
		if (!stop) {
			ann_ioreq q = { ann_rng_below(r, nblocks) * o->bs, o->bs, done };
			if (ann_ioreader_submit(rd, &q, 1, &e) < 0)
				goto fail;
		}
	}
	double secs = (double)(ann_now_ns() - t0) / 1e9;
	ann_ioreader_stats st;
	ann_ioreader_get_stats(rd, &st);
	res->mbps = (double)bytes / secs / 1e6;
	res->iops = (double)done / secs;
	res->wait_frac = (double)st.wait_ns / 1e9 / secs;
	res->path = ann_ioreader_path(rd);
	res->direct = st.direct;
	res->registered = st.registered;
	ann_ioreader_free(rd);
	return 0;
fail:
	fprintf(stderr, "bench_io: %s\n", e.msg);
	ann_ioreader_free(rd);
	return -1;
}

static int cmp_res(const void *a, const void *b)
{
	const struct result *x = a, *y = b;
	return x->mbps < y->mbps ? -1 : x->mbps > y->mbps;
}

int main(int argc, char **argv)
{
	struct opts o = { "/tmp/annann-bench-io/blocks.bin", 2.0, 65536, 16, 5.0, 3, 3, 1, false };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--json")) {
			o.json = true;
			continue;
		}
		if (!v)
			usage();
		if (!strcmp(a, "--file"))
			o.file = v;
		else if (!strcmp(a, "--size-gib"))
			o.size_gib = atof(v);
		else if (!strcmp(a, "--bs"))
			o.bs = (uint32_t)strtoul(v, NULL, 0);
		else if (!strcmp(a, "--qd"))
			o.qd = (unsigned)strtoul(v, NULL, 0);
		else if (!strcmp(a, "--seconds"))
			o.seconds = atof(v);
		else if (!strcmp(a, "--runs"))
			o.runs = atoi(v);
		else if (!strcmp(a, "--seed"))
			o.seed = strtoull(v, NULL, 0);
		else if (!strcmp(a, "--path"))
			o.paths = !strcmp(v, "uring") ? 1 : !strcmp(v, "pread") ? 2 : !strcmp(v, "both") ? 3 : (usage(), 0);
		else
			usage();
		i++;
	}
	if (o.bs == 0 || o.bs % 4096 || o.qd == 0 || o.runs < 1 || o.runs > 99 || o.seconds <= 0)
		usage();
	uint64_t size = (uint64_t)(o.size_gib * (double)(1u << 30));
	size -= size % o.bs;
	if (size < o.bs || make_file(o.file, size) < 0)
		return 1;
	uint64_t nblocks = size / o.bs;
	ann_rng r;
	ann_rng_seed(&r, o.seed);
	struct utsname un;
	uname(&un);
	if (!o.json)
		printf("%-8s %8s %4s %10s %10s %7s  %s\n", "path", "bs", "qd", "MB/s", "IOPS", "wait%", "runs (MB/s)");
	else
		printf("{\"bench\":\"io\",\"file\":\"%s\",\"size\":%llu,\"kernel\":\"%s\",\"results\":[", o.file,
		       (unsigned long long)size, un.release);
	bool first = true;
	for (int p = 0; p < 2; p++) {
		if (!(o.paths & (1 << p)))
			continue;
		struct result res[99];
		for (int k = 0; k < o.runs; k++)
			if (run_once(&o, p == 1, nblocks, &r, &res[k]) < 0)
				return 1;
		struct result sorted[99];
		memcpy(sorted, res, sizeof(struct result) * (size_t)o.runs);
		qsort(sorted, (size_t)o.runs, sizeof *sorted, cmp_res);
		const struct result *med = &sorted[o.runs / 2];
		unsigned qd = p == 1 ? 1 : o.qd;
		if (o.json) {
			printf("%s{\"path\":\"%s\",\"bs\":%u,\"qd\":%u,\"mbps\":%.1f,\"iops\":%.0f,\"direct\":%d,"
			       "\"registered\":%d,\"runs_mbps\":[",
			       first ? "" : ",", med->path, o.bs, qd, med->mbps, med->iops, med->direct, med->registered);
			for (int k = 0; k < o.runs; k++)
				printf("%s%.1f", k ? "," : "", res[k].mbps);
			printf("]}");
		} else {
			printf("%-8s %8u %4u %10.1f %10.0f %6.1f%% ", med->path, o.bs, qd, med->mbps, med->iops,
			       100 * med->wait_frac);
			for (int k = 0; k < o.runs; k++)
				printf(" %.1f", res[k].mbps);
			printf("%s\n", med->direct ? "" : "  (not O_DIRECT)");
		}
		first = false;
	}
	if (o.json)
		printf("]}\n");
	return 0;
}

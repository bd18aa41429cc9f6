/* SPDX-License-Identifier: MIT */
/*
 * cmd_data.c: the data commands: gen (synthetic SIFT-like sets), gt (exact
 * ground truth) and convert (between vector formats, and from idx files).
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"

/* ---- gen ----------------------------------------------------------------- */

static cli_opt gen_opts[] = {
	{"n", "N", "base vectors to generate (required)", NULL},
	{"profile", "P", "easy (default: separable Gaussian mixture) or real (calibrated on real SIFT)", NULL},
	{"dim", "D", "dimension (default 128)", NULL},
	{"seed", "S", "generator seed (default 1)", NULL},
	{"clusters", "C", "mixture components (default easy: max(16, n/4000), at most 4096; real: 64)", NULL},
	{"drift", "X", "easy profile: shift every component mean by X times its scale (default 0)", NULL},
	{"out", "FILE", "base file (.fbin, .u8bin, .fvecs, .bvecs, ...) (required)", NULL},
	{"queries", "NQ", "also generate NQ query vectors", NULL},
	{"queries-out", "FILE", "query file (required with --queries)", NULL},
	{"quiet", NULL, "no progress line", NULL},
	{"json", NULL, "print a JSON summary", NULL},
	{NULL, NULL, NULL, NULL},
};

static int run_gen(cli_cmd *c)
{
	ann_gen_opts o;
	ann_gen_opts_init(&o);
	uint64_t dim, clusters;
	double drift;
	const char *out = cli_need(c, "out");
	if (!out || !cli_need(c, "n"))
		return CLI_EXIT_USAGE;
	if (!cli_u64(c, "n", 0, 1, UINT64_MAX, &o.n) || !cli_u64(c, "dim", 128, 1, 65536, &dim) ||
	    !cli_u64(c, "seed", 1, 0, UINT64_MAX, &o.seed) ||
	    !cli_u64(c, "clusters", 0, 0, ANN_GEN_MAX_CLUSTERS, &clusters) ||
	    !cli_u64(c, "queries", 0, 0, UINT64_MAX, &o.nq) || !cli_double(c, "drift", 0, 0, 1e6, &drift))
		return CLI_EXIT_USAGE;
	const char *qout = cli_get(c, "queries-out");
	if (o.nq && !qout)
		return cli_usage_error(c, "--queries needs --queries-out FILE");
	const char *prof = cli_get(c, "profile");
	int profile = prof ? ann_gen_profile_parse(prof) : ANN_GEN_EASY;
	if (profile < 0)
		return cli_usage_error(c, "--profile %s: expected easy or real", prof);
	if (profile == ANN_GEN_REAL && drift != 0)
		return cli_usage_error(c, "--drift applies to --profile easy only");
	o.profile = (ann_gen_profile)profile;
	o.dim = (uint32_t)dim;
	o.clusters = (uint32_t)clusters;
	/* The format's vector limit is a usage error, found before writing. */
	ann_error ferr = {0};
	const char *paths[2] = {out, o.nq ? qout : NULL};
	uint64_t counts[2] = {o.n, o.nq};
	for (int i = 0; i < 2; i++) {
		if (!paths[i])
			continue;
		const char *fname;
		uint64_t fmax;
		if (ann_vector_path_format(paths[i], &fname, &fmax, &ferr) < 0)
			return cli_usage_error(c, "%s", ferr.msg);
		if (counts[i] > fmax)
			return cli_usage_error(c, "option '--%s': %llu vectors, but the %s format of %s holds at most %llu",
					       i ? "queries" : "n", (unsigned long long)counts[i], fname, paths[i],
					       (unsigned long long)fmax);
	}
	o.drift = (float)drift;
	cli_progress_state ps;
	cli_progress_init(&ps, cli_flag(c, "quiet"));
	o.progress = cli_progress;
	o.progress_ctx = &ps;
	ann_error err = {0};
	uint64_t t0 = cli_now_ns();
	if (ann_gen_write(&o, out, o.nq ? qout : NULL, &err) < 0)
		return cli_fail(c, &err);
	cli_progress_end(&ps);
	double secs = (double)(cli_now_ns() - t0) / 1e9;
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_str(&j, "out", out);
		cli_json_str(&j, "profile", ann_gen_profile_name(o.profile));
		cli_json_int(&j, "n", (long long)o.n);
		cli_json_int(&j, "dim", (long long)o.dim);
		cli_json_int(&j, "queries", (long long)o.nq);
		cli_json_int(&j, "seed", (long long)o.seed);
		cli_json_num(&j, "seconds", secs);
		cli_json_end(&j);
	} else {
		printf("wrote %" PRIu64 " x %u vectors to %s", o.n, o.dim, out);
		if (o.nq)
			printf(" and %" PRIu64 " queries to %s", o.nq, qout);
		printf(" in %.1fs\n", secs);
	}
	return 0;
}

cli_cmd cmd_gen = {"gen", "generate a seeded SIFT-like data set (Gaussian mixture)",
		   "--n N --out FILE [--profile easy|real] [--dim D] [--seed S] [--queries NQ --queries-out FILE]", gen_opts, run_gen};

/* ---- gt ------------------------------------------------------------------ */

static cli_opt gt_opts[] = {
	{"base", "FILE", "base vectors (required)", NULL},
	{"queries", "FILE", "query vectors (required)", NULL},
	{"k", "K", "neighbours per query (default 100)", NULL},
	{"out", "FILE", "output: big-ann layout, or TEXMEX ids if it ends in .ivecs (required)", NULL},
	{"metric", "M", "l2 (default), ip or cosine", NULL},
	{"threads", "T", "worker threads (default 2)", NULL},
	{"mem", "BYTES", "memory budget for base chunks and tiles (default 512M)", NULL},
	{"quiet", NULL, "no progress line", NULL},
	{"json", NULL, "print a JSON summary", NULL},
	{NULL, NULL, NULL, NULL},
};

int cli_parse_metric(cli_cmd *c, const char *v, ann_metric *m);
int cli_parse_metric(cli_cmd *c, const char *v, ann_metric *m)
{
	if (!v || strcmp(v, "l2") == 0)
		*m = ANN_METRIC_L2;
	else if (strcmp(v, "ip") == 0)
		*m = ANN_METRIC_IP;
	else if (strcmp(v, "cosine") == 0)
		*m = ANN_METRIC_COSINE;
	else
		return cli_usage_error(c, "--metric: '%s' is not one of l2, ip, cosine", v);
	return 0;
}

static int write_ids_ivecs(const char *path, uint32_t nq, uint32_t k, const int32_t *ids, ann_error *err)
{
	ann_vector_writer *w;
	CLI_TRY(ann_vector_writer_open(path, k, &w, err));
	if (ann_vector_writer_write(w, ids, nq, err) < 0) {
		ann_vector_writer_abort(w);
		return err ? err->code : ANN_E_IO;
	}
	return ann_vector_writer_commit(w, err);
}

static bool ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && strcmp(s + a - b, suf) == 0;
}

static int run_gt(cli_cmd *c)
{
	ann_ground_truth_opts o;
	ann_ground_truth_opts_init(&o);
	const char *base = cli_need(c, "base");
	const char *queries = base ? cli_need(c, "queries") : NULL;
	const char *out = queries ? cli_need(c, "out") : NULL;
	if (!out)
		return CLI_EXIT_USAGE;
	uint64_t k, threads, mem;
	if (!cli_u64(c, "k", 100, 1, ANN_MAX_K, &k) || !cli_u64(c, "threads", 2, 1, 64, &threads) ||
	    !cli_size(c, "mem", (uint64_t)512 << 20, (uint64_t)1 << 20, CLI_SIZE_MAX, &mem))
		return CLI_EXIT_USAGE;
	if (cli_parse_metric(c, cli_get(c, "metric"), &o.metric))
		return CLI_EXIT_USAGE;
	o.k = (uint32_t)k;
	o.threads = (int)threads;
	o.mem_bytes = mem;
	cli_progress_state ps;
	cli_progress_init(&ps, cli_flag(c, "quiet"));
	o.progress = cli_progress;
	o.progress_ctx = &ps;
	ann_error err = {0};
	uint32_t nq = 0;
	int32_t *ids = NULL;
	float *dists = NULL;
	uint64_t t0 = cli_now_ns();
	int rc = ann_ground_truth(base, queries, &o, &nq, &ids, &dists, &err);
	if (rc < 0)
		return cli_fail(c, &err);
	cli_progress_end(&ps);
	double secs = (double)(cli_now_ns() - t0) / 1e9;
	if (ends_with(out, ".ivecs"))
		rc = write_ids_ivecs(out, nq, o.k, ids, &err);
	else
		rc = ann_ground_truth_write(out, nq, o.k, ids, dists, &err);
	ann_buffer_free(ids);
	ann_buffer_free(dists);
	if (rc < 0)
		return cli_fail(c, &err);
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_str(&j, "out", out);
		cli_json_int(&j, "queries", nq);
		cli_json_int(&j, "k", o.k);
		cli_json_num(&j, "seconds", secs);
		cli_json_int(&j, "threads", o.threads);
		cli_json_end(&j);
	} else {
		printf("ground truth: %u queries x %u neighbours in %.2fs -> %s\n", nq, o.k, secs, out);
	}
	return 0;
}

cli_cmd cmd_gt = {"gt", "exact k-nearest-neighbour ground truth (blocked BLAS, bounded memory)",
		  "--base FILE --queries FILE --out FILE [--k K] [--metric l2|ip|cosine] [--threads T] [--mem BYTES]",
		  gt_opts, run_gt};

/* ---- convert ------------------------------------------------------------- */

static cli_opt convert_opts[] = {
	{"in", "FILE", "input: fvecs bvecs ivecs fbin u8bin i8bin ibin, or an idx3-ubyte[.gz] file", NULL},
	{"out", "FILE", "output: fvecs bvecs ivecs fbin u8bin i8bin ibin", NULL},
	{"offset", "N", "start at vector N (default 0)", NULL},
	{"limit", "N", "convert at most N vectors", NULL},
	{"quiet", NULL, "no progress line", NULL},
	{NULL, NULL, NULL, NULL},
};

static int run_convert(cli_cmd *c)
{
	const char *in = cli_need(c, "in");
	const char *out = in ? cli_need(c, "out") : NULL;
	if (!out)
		return CLI_EXIT_USAGE;
	uint64_t limit, offset;
	/* --limit 0 would write a file without vectors, which no reader accepts. */
	if (!cli_u64(c, "limit", UINT64_MAX, 1, UINT64_MAX, &limit) || !cli_u64(c, "offset", 0, 0, UINT64_MAX, &offset))
		return CLI_EXIT_USAGE;
	ann_error err = {0};
	ann_vector_reader *r = NULL;
	ann_vector_writer *w = NULL;
	float *buf = NULL;
	cli_progress_state ps;
	cli_progress_init(&ps, cli_flag(c, "quiet"));
	if (ann_vector_reader_open(in, &r, &err) < 0)
		return cli_fail(c, &err);
	uint64_t total;
	uint32_t d;
	ann_dtype dt;
	ann_vector_reader_shape(r, &total, &d, &dt);
	if (offset > total) {
		ann_vector_reader_close(r);
		return cli_usage_error(c, "--offset %llu is past the %llu vectors of %s", (unsigned long long)offset,
				       (unsigned long long)total, in);
	}
	if (ann_vector_reader_seek(r, offset, &err) < 0) {
		ann_vector_reader_close(r);
		return cli_fail(c, &err);
	}
	uint64_t n = CLI_MIN(total - offset, limit), done = 0;
	if (n == 0) {
		ann_vector_reader_close(r);
		return cli_usage_error(c, "--offset %llu leaves no vector of the %llu in %s to convert",
				       (unsigned long long)offset, (unsigned long long)total, in);
	}
	const char *oname;
	uint64_t omax;
	if (ann_vector_path_format(out, &oname, &omax, &err) == 0 && n > omax) {
		ann_vector_reader_close(r);
		return cli_usage_error(c, "%s: %llu vectors, but the %s format holds at most %llu; use --limit", out,
				       (unsigned long long)n, oname, (unsigned long long)omax);
	}
	size_t chunk = CLI_MAX((size_t)1, ((size_t)4 << 20) / ((size_t)d * 4));
	/* Free space before a byte is written (issue 13 D11). */
	if (ann_vector_path_check_size(out, n, d, &err) < 0) {
		ann_vector_reader_close(r);
		return cli_fail(c, &err);
	}
	buf = malloc(chunk * d * sizeof(float));
	if (!buf) {
		ann_vector_reader_close(r);
		cli_err(&err, ANN_E_NOMEM, "out of memory");
		return cli_fail(c, &err);
	}
	if (ann_vector_writer_open(out, d, &w, &err) < 0)
		goto fail;
	while (done < n) {
		int64_t got = ann_vector_reader_read_f32(r, buf, (size_t)CLI_MIN((uint64_t)chunk, n - done), &err);
		if (got < 0)
			goto fail;
		if (got == 0)
			break;
		if (ann_vector_writer_write_f32(w, buf, (size_t)got, &err) < 0)
			goto fail;
		done += (uint64_t)got;
		cli_progress(&ps, "convert", done, n);
	}
	ann_vector_reader_close(r);
	free(buf);
	if (ann_vector_writer_commit(w, &err) < 0)
		return cli_fail(c, &err);
	cli_progress_end(&ps);
	printf("converted %" PRIu64 " x %u vectors: %s -> %s\n", done, d, in, out);
	return 0;
fail:
	if (w)
		ann_vector_writer_abort(w);
	ann_vector_reader_close(r);
	free(buf);
	return cli_fail(c, &err);
}

cli_cmd cmd_convert = {"convert", "convert between vector file formats (and from Fashion-MNIST idx files)",
		       "--in FILE --out FILE [--offset N] [--limit N]", convert_opts, run_convert};

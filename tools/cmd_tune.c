/* SPDX-License-Identifier: MIT */
/*
 * cmd_tune.c: `annann tune`, learned adaptive probing (ann_tune_probe;
 * docs/DESIGN.md "Learned adaptive probing"): fits the model on queries with
 * their ground truth and stores it in the index.
 */
#include <stdio.h>
#include <stdlib.h>

#include "commands.h"

static cli_opt tune_opts[] = {
	{"index", "DIR", "index directory (required; a codes index under L2 or cosine)", NULL},
	{"queries", "FILE", "tuning queries, from the distribution the index will serve (a query log; or --data)", NULL},
	{"gt", "FILE", "their ground truth, big-ann layout or ivecs (required with --queries; annann gt computes it)",
	 NULL},
	{"data", "FILE", "instead of --queries: synthetic queries, rows of FILE (the base) moved by noise, with their "
	 "ground truth from the index itself (what annann build does by default)", NULL},
	{"synthetic", "N", "with --data: how many synthetic queries (default 2000)", NULL},
	{"seed", "S", "with --data: random seed of the rows and the noise (default 1)", NULL},
	{"directions", "M", "fit the directional probe order: each partition's top M principal directions (1..16; 0 "
	 "removes them), alone or before the probe model; RAM M x (dim / 4 + 8) bytes per partition", NULL},
	{"k", "K", "neighbours per query the recall counts (default 10)", NULL},
	{"p1", "P", "partitions of the first stage (default: the index's default nprobe / 8, at least 1)", NULL},
	{"limit", "N", "use only the first N queries", NULL},
	{"json", NULL, "print the report as one JSON object", NULL},
	{"quiet", NULL, "no progress line", NULL},
	{NULL, NULL, NULL, NULL},
};

static int run_tune(cli_cmd *c)
{
	const char *dir = cli_need(c, "index");
	if (!dir)
		return CLI_EXIT_USAGE;
	const char *data = cli_get(c, "data"), *qpath = cli_get(c, "queries"), *gpath = cli_get(c, "gt");
	const char *dirs = cli_get(c, "directions");
	if (data && (qpath || gpath))
		return cli_usage_error(c, "--data makes synthetic queries: not with --queries or --gt");
	if (!data && (cli_get(c, "synthetic") || cli_get(c, "seed")))
		return cli_usage_error(c, "--synthetic and --seed go with --data");
	if (!data && !qpath && !dirs)
		return cli_usage_error(c, "--queries (with --gt), --data or --directions is required");
	if (qpath && !gpath)
		return cli_usage_error(c, "--queries needs --gt");
	uint64_t k, p1, limit, nsyn, seed, ndirs;
	if (!cli_u64(c, "k", 10, 1, ANN_MAX_K, &k) || !cli_u64(c, "p1", 0, 1, 256, &p1) ||
	    !cli_u64(c, "directions", 0, 0, 16, &ndirs) ||
	    !cli_u64(c, "limit", UINT64_MAX, 1, UINT64_MAX, &limit) ||
	    !cli_u64(c, "synthetic", ANN_TUNE_SYNTHETIC_QUERIES, 2 * 8, 1000000, &nsyn) ||
	    !cli_u64(c, "seed", 1, 0, UINT64_MAX, &seed))
		return CLI_EXIT_USAGE;
	if (data && cli_get(c, "limit"))
		return cli_usage_error(c, "--limit counts --queries; with --data say --synthetic N");
	ann_error err = {0};
	ann_vector_reader *qr = NULL;
	float *q = NULL, *gtd = NULL;
	int32_t *gt = NULL;
	uint32_t gnq = 0, gk = 0;
	int ret = CLI_EXIT_FAIL;
	cli_progress_state ps;
	cli_progress_init(&ps, cli_flag(c, "quiet"));
	ann_tune_opts o = {.k = (uint32_t)k, .p1 = (uint32_t)p1, .progress = cli_progress, .progress_ctx = &ps};
	ann_tune_report r;
	int rc;
	if (dirs) {
		uint32_t fitted = 0;
		rc = ann_tune_directions(dir, (uint32_t)ndirs, cli_progress, &ps, &fitted, &err);
		cli_progress_end(&ps);
		if (rc == ANN_E_INVAL)
			ret = CLI_EXIT_USAGE;
		if (rc < 0)
			goto fail;
		if (cli_flag(c, "json") && !data && !qpath) {
			cli_json j;
			cli_json_begin(&j, stdout);
			cli_json_int(&j, "directions", (long long)ndirs);
			cli_json_int(&j, "directions_stretched", fitted);
			cli_json_end(&j);
		} else if (ndirs) {
			fprintf(cli_flag(c, "json") ? stderr : stdout,
				"directional probe order stored in %s: %llu directions a partition, %u with a stretch\n", dir,
				(unsigned long long)ndirs, fitted);
		} else {
			fprintf(cli_flag(c, "json") ? stderr : stdout, "directional probe order removed from %s\n", dir);
		}
		if (!data && !qpath) {
			ret = 0;
			goto fail;
		}
		cli_progress_init(&ps, cli_flag(c, "quiet"));
	}
	if (data) {
		rc = ann_tune_synthetic(dir, data, (uint32_t)nsyn, seed, &o, &r, &err);
		cli_progress_end(&ps);
		goto report;
	}
	if (ann_vector_reader_open(qpath, &qr, &err) < 0)
		goto fail;
	uint64_t qn;
	uint32_t qdim;
	ann_dtype qt;
	ann_vector_reader_shape(qr, &qn, &qdim, &qt);
	size_t nq = (size_t)CLI_MIN(qn, limit);
	q = malloc((nq ? nq : 1) * qdim * sizeof(float));
	if (!q) {
		cli_err(&err, ANN_E_NOMEM, "out of memory for %zu queries", nq);
		goto fail;
	}
	if (ann_vector_reader_read_f32(qr, q, nq, &err) < 0)
		goto fail;
	if (ann_ground_truth_read(gpath, &gnq, &gk, &gt, &gtd, &err) < 0)
		goto fail;
	if (gnq < nq || gk < k) {
		cli_err(&err, ANN_E_BADINPUT, "%s: ground truth for %u queries x %u neighbours; need %zu x %llu", gpath,
			gnq, gk, nq, (unsigned long long)k);
		goto fail;
	}
	rc = ann_tune_probe(dir, q, nq, qdim, gt, gk, &o, &r, &err);
	cli_progress_end(&ps);
report:
	if (rc == ANN_E_INVAL) /* not a codes index, too few queries, a bad --p1: usage */
		ret = CLI_EXIT_USAGE;
	if (rc < 0)
		goto fail;
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_int(&j, "p1", r.p1);
		cli_json_int(&j, "queries", r.queries);
		cli_json_num(&j, "r2", r.r2);
		cli_json_arr(&j, "rows");
		for (uint32_t i = 0; i < r.rows; i++) {
			cli_json_obj(&j, NULL);
			cli_json_int(&j, "nprobe", r.budget[i]);
			cli_json_num(&j, "recall_fixed", r.recall_fixed[i]);
			cli_json_num(&j, "recall_adaptive", r.recall_adaptive[i]);
			cli_json_num(&j, "probed_adaptive", r.probed_adaptive[i]);
			cli_json_close_obj(&j);
		}
		cli_json_close_arr(&j);
		cli_json_num(&j, "rerank_eps", r.rerank_eps);
		if (r.eps_nprobe) {
			cli_json_int(&j, "eps_nprobe", r.eps_nprobe);
			cli_json_int(&j, "eps_nprobe_hi", r.eps_nprobe_hi);
			cli_json_num(&j, "eps_recall_hi", r.eps_recall_hi);
			cli_json_num(&j, "eps_bytes_hi", r.eps_bytes_hi);
			cli_json_arr(&j, "eps_rows");
			for (uint32_t i = 0; i < ANN_TUNE_EPS; i++) {
				cli_json_obj(&j, NULL);
				cli_json_num(&j, "eps", r.eps[i]);
				cli_json_num(&j, "recall", r.eps_recall[i]);
				cli_json_num(&j, "bytes", r.eps_bytes[i]);
				cli_json_close_obj(&j);
			}
			cli_json_close_arr(&j);
		}
		cli_json_end(&j);
	} else {
		printf("probe model stored in %s: first stage %u partitions, fit R^2 %.3f on %u %squeries\n", dir, r.p1,
		       r.r2, r.queries, data ? "synthetic " : "");
		printf("on these queries (in-sample; measure with annann search on others):\n");
		printf("%-8s %-14s %-17s %s\n", "nprobe", "fixed recall", "adaptive recall", "adaptive mean probed");
		for (uint32_t i = 0; i < r.rows; i++)
			printf("%-8u %-14.4f %-17.4f %.1f\n", r.budget[i], r.recall_fixed[i], r.recall_adaptive[i],
			       r.probed_adaptive[i]);
		if (r.eps_nprobe) {
			printf("re-rank bound eps0 %.2g stored (fixed nprobe %u; eps0 %.2g at nprobe %u: recall %.4f, %.1f KiB)\n",
			       r.rerank_eps, r.eps_nprobe, r.eps[0], r.eps_nprobe_hi, r.eps_recall_hi, r.eps_bytes_hi / 1024);
			printf("%-8s %-10s %s\n", "eps0", "recall", "KiB/query");
			for (uint32_t i = 0; i < ANN_TUNE_EPS; i++)
				printf("%-8.2g %-10.4f %.1f\n", r.eps[i], r.eps_recall[i], r.eps_bytes[i] / 1024);
		}
	}
	ret = 0;
fail:
	if (ret)
		cli_fail(c, &err);
	free(q);
	ann_buffer_free(gt);
	ann_buffer_free(gtd);
	ann_vector_reader_close(qr);
	return ret;
}

cli_cmd cmd_tune = {"tune", "fit learned adaptive probing on queries with ground truth, stored in the index",
		    "--index DIR (--queries FILE --gt FILE [--limit N] | --data FILE [--synthetic N]) [--k K] [--p1 P] [--json]", tune_opts, run_tune};

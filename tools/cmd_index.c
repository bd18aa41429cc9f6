/* SPDX-License-Identifier: MIT */
/*
 * cmd_index.c: the index commands: build, search, info, verify. They use
 * only the public API of annann.h.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"

int cli_parse_metric(cli_cmd *c, const char *v, ann_metric *m);

/* --poll-us US|auto. auto (the default) polls while the search threads leave
 * a core free (docs/DESIGN.md "Read waves", polled completions); under
 * --distributed it is 0, since the ranks on a machine share its cores. */
bool cli_search_poll(const cli_cmd *c, uint64_t threads, bool dist, uint64_t *poll)
{
	const char *v = cli_get(c, "poll-us");
	if (v && strcmp(v, "auto") != 0)
		return cli_u64(c, "poll-us", 0, 0, ANN_MAX_IO_POLL_US, poll);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	*poll = !dist && ncpu > 0 && threads < (uint64_t)ncpu ? CLI_AUTO_POLL_US : 0;
	return true;
}

/* ---- build ------------------------------------------------------------- */

static cli_opt build_opts[] = {
	{"data", "FILE", "input vectors (fbin, u8bin, i8bin, fvecs, bvecs) (required)", NULL},
	{"index", "DIR", "index directory to create; must not exist (required)", NULL},
	{"router", "R", "kmeans (default), annann, nlsh, joint or soft", NULL},
	{"partitions", "M", "number of partitions (default: auto, the most the RAM and disk budgets allow; "
	 "docs/DESIGN.md \"Defaults\")", NULL},
	{"store", "S", "file (default: blocks.dat read with io_uring) or lmdb", NULL},
	{"encoding", "E", "auto (default: the input's type), f32, f16, u8, i8 or sq8", NULL},
	{"metric", "M", "l2 (default), ip or cosine", NULL},
	{"zstd-level", "L", "zstd level 1..22, 0 = uncompressed (default 3)", NULL},
	{"shuffle", NULL, "byte-shuffle vectors before compression (default: for f32/f16 only)", NULL},
	{"no-shuffle", NULL, "never shuffle before compression", NULL},
	{"dict", NULL, "train a zstd dictionary on sample blocks", NULL},
	{"codes", "KIND", "rabitq (compact codes in the blocks, exact rows re-ranked by page) or none (format 1 "
	 "zstd blocks); default: rabitq for f32, u8 and i8 rows worth their code (docs/DESIGN.md \"Defaults\")", NULL},
	{"code-bits", "B", "bits per dimension of the codes, 1..8 (implies --codes rabitq; default 1 from 512 "
	 "dimensions on, else 2)", NULL},
	{"code-factors", "F", "bits of each code's factors: 16 (default; slim heads, codes block 2.1) or 32", NULL},
	{"row-order", "page|id", "order of a codes block's exact rows: page (default; page-local, codes block 2.2) or "
	 "id (blocks older builds read)", NULL},
	{"page-fit", "on|off", "move the rows of nearly empty last head pages to the next-nearest partition with room "
	 "(default on; codes blocks, k-means graph router, l2 or cosine, one copy)", NULL},
	{"tune", "auto|on|off", "after the build, fit learned adaptive probing on synthetic queries made from the "
	 "data (default auto: k-means router, codes, l2 or cosine, at least 128 partitions and 20000 vectors; annann tune "
	 "refits it on a query log)", NULL},
	{"directions", "auto|M", "after the build, the directional probe order: each partition's top M principal "
	 "directions (0..16; default auto: as many, up to 8, as the router's RAM leaves of 4 bytes per vector; "
	 "k-means router, codes, l2 or cosine)", NULL},
	{"mem", "BYTES", "memory budget (default 1G)", NULL},
	{"threads", "T", "worker threads (default 2)", NULL},
	{"seed", "S", "random seed (default 1)", NULL},
	{"sample", "N", "training sample size (default min(n, 256 * partitions); when --partitions is auto and k-means "
	 "trains one level, min(n, the larger of 64 * partitions and 1.5e11 / (partitions * dim)); within half of --mem)",
	 NULL},
	{"iters", "N", "k-means iterations (default 20)", NULL},
	{"kmeans-coarse", "C", "kmeans: two-level k-means with C coarse clusters; 1 = one level; default 0 = two levels with sqrt(partitions) above 4096 partitions", NULL},
	{"balance", "X", "cap partitions at X * n / partitions vectors (X >= 1, 0 = no cap; default 1.3 for kmeans, "
	 "else no cap)", NULL},
	{"replicas", "R", "store a vector in up to R partitions (SPANN closure; default 1)", NULL},
	{"replica-eps", "E", "extra copies go where the centroid is within (1+E) of the nearest (default 0.1)",
	 NULL},
	{"soar", "LAMBDA", "kmeans: pick extra copies' partitions by SOAR's loss with this lambda (0 = nearest; "
	 "default 0)", NULL},
	{"router-bits", "B", "kmeans, l2: keep the centroids as B-bit RaBitQ codes (1..8) scanned flat, no graph: "
	 "fewer router bytes per partition; 0 = uint8/float centroids in an HNSW graph (default: auto, the compact "
	 "router when it allows twice the partitions)", NULL},
	{"hnsw-m", "M", "degree of the centroid graph (2x at level 0; default 32, and for k-means 4 up to 8192 "
	 "centroids, which single queries scan whole)", NULL},
	{"hnsw-ef", "EF", "ef_construction of the centroid graph (default 200)", NULL},
	{"clusters", "K", "annann router: clusters (same as --partitions)", NULL},
	{"embed-dim", "E", "annann router: embedding dimension (default 64)", NULL},
	{"hidden", "H1[,H2..]", "annann: encoder hidden sizes; nlsh/joint/soft: classifier hidden sizes (default 256)",
	 NULL},
	{"ae-epochs", "N", "annann router: reconstruction epochs (default 10)", NULL},
	{"dec-epochs", "N", "annann router: Deep Embedded Clustering epochs (default 0: measured worse; the seed used 5)", NULL},
	{"dec-alpha", "A", "annann router: Student-t degrees of freedom (default 1)", NULL},
	{"recon-weight", "G", "annann router: reconstruction weight during DEC (default 1)", NULL},
	{"knn-k", "K", "nlsh/joint/soft: k of the k-NN graph (default 10)", NULL},
	{"imbalance", "X", "nlsh/joint/soft: METIS imbalance (default 0.03)", NULL},
	{"epochs", "N", "nlsh/joint/soft: classifier epochs (default 20)", NULL},
	{"hard-labels", NULL, "nlsh/joint/soft: train on hard part labels only (default: soft labels)", NULL},
	{"augment", "S", "nlsh/joint: half the training rows get Gaussian noise of S sample std devs (default 0: off)",
	 NULL},
	{"rounds", "N", "joint: alternating rounds (default 5)", NULL},
	{"lambda", "L", "joint: weight of the neighbour-share term (default 1)", NULL},
	{"router-from", "DIR", "take the router of index DIR (single-node or distributed) instead of training one", NULL},
	{"distributed", NULL, "under mpirun: build on every rank, each storing its own partitions (DIR/rank-<r>)",
	 NULL},
	{"restart", NULL, "throw away the saved state of an interrupted build of DIR and start over "
	 "(default: resume it)", NULL},
	{"quiet", NULL, "no progress lines (what a build resumes is still said)", NULL},
	{"json", NULL, "print a JSON summary", NULL},
	{NULL, NULL, NULL, NULL},
};

/* What a build resumed or why it started over: printed even under --quiet
 * (it explains why a run is shorter, or longer, than the last). */
static void build_notice(void *ctx, const char *line)
{
	cli_progress_state *p = ctx;
	bool q = p->quiet;
	p->quiet = false;
	cli_log(p, line);
	p->quiet = q;
}

static int parse_router(cli_cmd *c, const char *v, ann_router_kind *k)
{
	static const char *names[] = {"kmeans", "annann", "nlsh", "joint", "soft"};
	if (!v) {
		*k = ANN_ROUTER_KMEANS;
		return 0;
	}
	for (int i = 0; i < 5; i++)
		if (strcmp(v, names[i]) == 0) {
			*k = (ann_router_kind)i;
			return 0;
		}
	return cli_usage_error(c, "--router: '%s' is not one of kmeans, annann, nlsh, joint, soft", v);
}

static int parse_encoding(cli_cmd *c, const char *v, ann_encoding *e)
{
	static const struct {
		const char *n;
		ann_encoding e;
	} t[] = {{"auto", ANN_ENC_AUTO}, {"f32", ANN_ENC_F32}, {"f16", ANN_ENC_F16},
		 {"u8", ANN_ENC_U8},     {"i8", ANN_ENC_I8},   {"sq8", ANN_ENC_SQ8}};
	if (!v) {
		*e = ANN_ENC_AUTO;
		return 0;
	}
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (strcmp(v, t[i].n) == 0) {
			*e = t[i].e;
			return 0;
		}
	return cli_usage_error(c, "--encoding: '%s' is not one of auto, f32, f16, u8, i8, sq8", v);
}

static int run_build(cli_cmd *c)
{
	const char *data = cli_need(c, "data");
	const char *index = data ? cli_need(c, "index") : NULL;
	if (!index)
		return CLI_EXIT_USAGE;
	ann_build_opts o;
	ann_build_opts_init(&o); /* the defaults of every option below */
	uint64_t parts, level, mem, threads, seed, sample, iters, replicas, hm, hef;
	double balance, eps, soar;
	if (!cli_u64(c, "partitions", 0, 0, UINT32_MAX, &parts) ||
	    !cli_u64(c, "zstd-level", (uint64_t)o.zstd_level, 0, 22, &level) ||
	    !cli_size(c, "mem", o.mem_bytes, (uint64_t)16 << 20, CLI_SIZE_MAX, &mem) ||
	    !cli_u64(c, "threads", (uint64_t)o.threads, 1, 64, &threads) || !cli_u64(c, "seed", o.seed, 0, UINT64_MAX, &seed) ||
	    !cli_u64(c, "sample", 0, 0, UINT64_MAX, &sample) || !cli_u64(c, "iters", o.kmeans.kmeans_iters, 1, 1000, &iters) ||
	    !cli_u64(c, "replicas", o.replicas, 1, 8, &replicas) || !cli_u64(c, "hnsw-m", o.kmeans.hnsw_m, 2, 1024, &hm) ||
	    !cli_u64(c, "hnsw-ef", o.kmeans.hnsw_ef_construction, 1, 100000, &hef) ||
	    !cli_double(c, "balance", 0, 0, 1e9, &balance) || !cli_double(c, "replica-eps", o.replica_eps, 0, 1e9, &eps) ||
	    !cli_double(c, "soar", o.kmeans.soar_lambda, 0, 1e9, &soar))
		return CLI_EXIT_USAGE;
	if (parse_router(c, cli_get(c, "router"), &o.router) || parse_encoding(c, cli_get(c, "encoding"), &o.encoding) ||
	    cli_parse_metric(c, cli_get(c, "metric"), &o.metric))
		return CLI_EXIT_USAGE;
	const char *store = cli_get(c, "store");
	if (!store || strcmp(store, "file") == 0)
		o.store = ANN_STORE_FILE;
	else if (strcmp(store, "lmdb") == 0)
		o.store = ANN_STORE_LMDB;
	else
		return cli_usage_error(c, "--store: '%s' is not one of file, lmdb", store);
	o.partitions = (uint32_t)parts;
	o.zstd_level = (int)level;
	o.shuffle = cli_flag(c, "no-shuffle") ? 0 : cli_flag(c, "shuffle") ? 1 : -1;
	o.dictionary = cli_flag(c, "dict");
	o.mem_bytes = mem;
	o.threads = (int)threads;
	o.seed = seed;
	o.sample = sample;
	o.replicas = (uint32_t)replicas;
	o.replica_eps = eps;
	/* --iters, --balance, --hnsw-m and --hnsw-ef set the k-means settings of
	 * both routers that run k-means and an HNSW graph (kmeans, annann) */
	o.kmeans.kmeans_iters = o.annann.kmeans_iters = (uint32_t)iters;
	if (cli_get(c, "balance")) /* else the defaults: auto (kmeans), no cap (annann) */
		o.kmeans.balance = o.annann.balance = balance;
	o.kmeans.soar_lambda = soar;
	if (cli_get(c, "hnsw-m"))
		o.kmeans.hnsw_m = o.annann.hnsw_m = (uint32_t)hm;
	o.kmeans.hnsw_ef_construction = o.annann.hnsw_ef_construction = (uint32_t)hef;
	const char *codes = cli_get(c, "codes");
	uint64_t cbits;
	if (!cli_u64(c, "code-bits", 1, 1, 8, &cbits))
		return CLI_EXIT_USAGE;
	if (codes && strcmp(codes, "rabitq") != 0 && strcmp(codes, "none") != 0)
		return cli_usage_error(c, "--codes: '%s' is not one of none, rabitq", codes);
	bool none = codes && strcmp(codes, "none") == 0;
	if (cli_get(c, "code-bits") && none)
		return cli_usage_error(c, "--code-bits sets the bits of --codes rabitq, not of --codes none");
	if (none)
		o.code_bits = 0;
	else if (cli_get(c, "code-bits"))
		o.code_bits = (uint32_t)cbits;
	else if (codes) /* rabitq: the bits are left to the build */
		o.code_bits = ANN_AUTO_BITS;
	uint64_t cfac;
	if (!cli_u64(c, "code-factors", 16, 16, 32, &cfac))
		return CLI_EXIT_USAGE;
	if (cfac != 16 && cfac != 32)
		return cli_usage_error(c, "--code-factors: %llu is not 16 or 32", (unsigned long long)cfac);
	if (cli_get(c, "code-factors") && none)
		return cli_usage_error(c, "--code-factors sets the records of codes blocks, not of --codes none");
	o.code_factors = (uint32_t)cfac;
	const char *rord = cli_get(c, "row-order");
	if (rord && strcmp(rord, "page") != 0 && strcmp(rord, "id") != 0)
		return cli_usage_error(c, "--row-order: '%s' is not page or id", rord);
	if (rord && none)
		return cli_usage_error(c, "--row-order sets the rows of codes blocks, not of --codes none");
	if (rord)
		o.code_order = strcmp(rord, "page") == 0;
	const char *fit = cli_get(c, "page-fit");
	if (fit && strcmp(fit, "on") != 0 && strcmp(fit, "off") != 0)
		return cli_usage_error(c, "--page-fit: '%s' is not on or off", fit);
	if (fit && none)
		return cli_usage_error(c, "--page-fit moves rows between codes blocks' heads, not with --codes none");
	if (fit)
		o.page_fit = strcmp(fit, "on") == 0;
	const char *tune = cli_get(c, "tune");
	if (tune && strcmp(tune, "auto") != 0 && strcmp(tune, "on") != 0 && strcmp(tune, "off") != 0)
		return cli_usage_error(c, "--tune: '%s' is not auto, on or off", tune);
	if (tune && strcmp(tune, "on") == 0 && none)
		return cli_usage_error(c, "--tune on fits adaptive probing, which reads codes: not with --codes none");
	if (tune)
		o.tune = strcmp(tune, "auto") == 0 ? -1 : strcmp(tune, "on") == 0;
	const char *dv = cli_get(c, "directions");
	if (dv && strcmp(dv, "auto") != 0) {
		uint64_t nd;
		if (!cli_u64(c, "directions", 0, 0, 16, &nd))
			return CLI_EXIT_USAGE;
		o.directions = (int)nd;
	}
	uint64_t rbits;
	if (!cli_u64(c, "router-bits", 0, 0, 8, &rbits))
		return CLI_EXIT_USAGE;
	if (cli_get(c, "router-bits"))
		o.kmeans.router_bits = (uint32_t)rbits;
	uint64_t coarse;
	if (!cli_u64(c, "kmeans-coarse", 0, 0, UINT32_MAX, &coarse))
		return CLI_EXIT_USAGE;
	o.kmeans.kmeans_coarse = (uint32_t)coarse;
	uint64_t clusters, edim, aee, dece, knnk, ep, rounds, hidden[4];
	size_t nh = 0;
	double alpha, rw, imb, lambda, aug;
	if (!cli_u64(c, "clusters", 0, 0, UINT32_MAX, &clusters) || !cli_u64(c, "embed-dim", o.annann.embed_dim, 1, 4096, &edim) ||
	    !cli_u64(c, "ae-epochs", o.annann.ae_epochs, 0, 10000, &aee) || !cli_u64(c, "dec-epochs", o.annann.dec_epochs, 0, 10000, &dece) ||
	    !cli_u64(c, "knn-k", o.nlsh.knn_k, 1, 1000, &knnk) || !cli_u64(c, "epochs", o.nlsh.nlsh_epochs, 0, 10000, &ep) ||
	    !cli_u64(c, "rounds", o.nlsh.joint_rounds, 0, 1000, &rounds) || !cli_u64_list(c, "hidden", 1, 65536, hidden, 3, &nh) ||
	    !cli_double(c, "dec-alpha", o.annann.dec_alpha, 1e-9, 1e9, &alpha) ||
	    !cli_double(c, "recon-weight", o.annann.recon_weight, 0, 1e9, &rw) ||
	    !cli_double(c, "imbalance", o.nlsh.imbalance, 0, 1, &imb) || !cli_double(c, "augment", 0, 0, 100, &aug) || !cli_double(c, "lambda", o.nlsh.joint_lambda, -1e9, 1e9, &lambda))
		return CLI_EXIT_USAGE;
	if (clusters) {
		if (parts && parts != clusters)
			return cli_usage_error(c, "--clusters and --partitions disagree");
		o.partitions = (uint32_t)clusters;
	}
	o.annann.embed_dim = (uint32_t)edim;
	if (nh) { /* --hidden: the annann encoder's or the graph routers' classifier's layers */
		memset(o.annann.hidden, 0, sizeof o.annann.hidden);
		memset(o.nlsh.hidden, 0, sizeof o.nlsh.hidden);
		for (size_t i = 0; i < nh; i++)
			o.annann.hidden[i] = o.nlsh.hidden[i] = (uint32_t)hidden[i];
	}
	o.annann.ae_epochs = (uint32_t)aee;
	o.annann.dec_epochs = (uint32_t)dece;
	o.annann.dec_alpha = alpha;
	o.annann.recon_weight = rw;
	o.nlsh.knn_k = (uint32_t)knnk;
	o.nlsh.imbalance = imb;
	o.nlsh.nlsh_epochs = (uint32_t)ep;
	o.nlsh.soft_labels = !cli_flag(c, "hard-labels");
	o.nlsh.nlsh_augment = aug;
	o.nlsh.joint_rounds = (uint32_t)rounds;
	o.nlsh.joint_lambda = lambda;
	const char *router_from = cli_get(c, "router-from");
	if (tune && strcmp(tune, "off") != 0 && (router_from || cli_flag(c, "distributed")))
		return cli_usage_error(c, "--tune %s: builds with --router-from or --distributed do not fit adaptive probing; "
				       "run annann tune --data afterwards", tune);
	if (cli_flag(c, "distributed"))
		return cli_build_distributed(c, &o, data, index, router_from);
	if (router_from)
		return cli_build_with_router(c, &o, data, index, router_from);
	cli_progress_state ps;
	cli_progress_init(&ps, cli_flag(c, "quiet"));
	o.progress = cli_progress;
	o.progress_ctx = &ps;
	o.log = cli_log;
	o.log_ctx = &ps;
	o.notice = build_notice;
	o.notice_ctx = &ps;
	o.restart = cli_flag(c, "restart");
	ann_error err = {0};
	uint64_t t0 = cli_now_ns();
	if (ann_build(data, index, &o, &err) < 0) {
		cli_progress_end(&ps);
		return cli_fail(c, &err);
	}
	cli_progress_end(&ps);
	double secs = (double)(cli_now_ns() - t0) / 1e9;
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_str(&j, "index", index);
		cli_json_num(&j, "seconds", secs);
		cli_json_end(&j);
	} else {
		printf("built %s in %.1fs\n", index, secs);
	}
	return 0;
}

cli_cmd cmd_build = {"build", "build a disk-resident index from a vector file (out of core, memory-bounded)",
		     "--data FILE --index DIR [--router R] [--partitions M] [--store file|lmdb] [--encoding E] "
		     "[--mem BYTES] [--threads T] [--seed S]",
		     build_opts, run_build};

/* ---- info ---------------------------------------------------------------- */

static cli_opt info_opts[] = {
	{"index", "DIR", "index directory (required)", NULL},
	{"json", NULL, "print one JSON object", NULL},
	{NULL, NULL, NULL, NULL},
};

static int run_info(cli_cmd *c)
{
	const char *dir = cli_need(c, "index");
	if (!dir)
		return CLI_EXIT_USAGE;
	ann_error err = {0};
	ann_index *x;
	if (ann_index_open(dir, &x, &err) < 0)
		return cli_fail(c, &err);
	ann_index_info in;
	if (ann_index_get_info(x, &in, &err) < 0) {
		ann_index_close(x);
		return cli_fail(c, &err);
	}
	/* Histogram of partition sizes in powers of two. */
	uint64_t hist[ANN_INFO_HIST_BINS];
	ann_index_size_histogram(x, hist);
	double amp = in.vectors ? (double)in.stored_vectors / (double)in.vectors : 0;
	uint64_t raw = in.vectors * in.dim * (in.encoding == ANN_ENC_U8 || in.encoding == ANN_ENC_I8 ? 1 : 4);
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		/* The keys come from the library, the same list as Python's Index.info(). */
		ann_info_field fields[ANN_INFO_MAX_FIELDS];
		size_t nf = 0;
		if (ann_index_info_fields(x, fields, &nf, &err) < 0) {
			ann_index_close(x);
			return cli_fail(c, &err);
		}
		for (size_t f = 0; f < nf; f++) {
			if (fields[f].type == ANN_INFO_INT)
				cli_json_int(&j, fields[f].key, (long long)fields[f].i);
			else if (fields[f].type == ANN_INFO_NUM)
				cli_json_num_exact(&j, fields[f].key, fields[f].num);
			else
				cli_json_str(&j, fields[f].key, fields[f].str);
		}
		cli_json_arr(&j, "partition_size_histogram");
		for (int b = 0; b < ANN_INFO_HIST_BINS; b++) {
			if (!hist[b])
				continue;
			cli_json_obj(&j, NULL);
			cli_json_int(&j, "min", b ? (long long)(1ull << (b - 1)) : 0);
			cli_json_int(&j, "max", b ? (long long)((1ull << b) - 1) : 0);
			cli_json_int(&j, "partitions", (long long)hist[b]);
			cli_json_close_obj(&j);
		}
		cli_json_close_arr(&j);
		cli_json_end(&j);
	} else {
		printf("index          %s\n", dir);
		printf("vectors        %" PRIu64 " x %u (%s, metric %s)\n", in.vectors, in.dim,
		       ann_encoding_name(in.encoding), ann_metric_name(in.metric));
		printf("stored         %" PRIu64 " (replication %.3fx)\n", in.stored_vectors, amp);
		printf("live           %" PRIu64 " (built + inserted - deleted)\n", in.live_vectors);
		printf("partitions     %u (sizes %" PRIu64 "..%" PRIu64 "; default nprobe %u)\n", in.partitions,
		       in.smallest_partition, in.largest_partition, in.default_nprobe);
		if (in.probe_p1) {
			printf("probing        learned adaptive (annann tune): first stage %u partitions, nprobe is the mean budget\n",
			       in.probe_p1);
			if (in.probe_fit_partitions)
				printf("probe fit      %u queries at %" PRIu64 " live vectors in %u partitions%s\n",
				       in.probe_fit_queries, in.probe_fit_vectors, in.probe_fit_partitions,
				       in.probe_stale ? "; the index has changed since: refit with annann tune" : "");
		}
		if (in.code_bits && in.router == ANN_ROUTER_KMEANS &&
		    (in.metric == ANN_METRIC_L2 || in.metric == ANN_METRIC_COSINE)) {
			if (!in.spread_partitions)
				printf("probe order    centroid distance: no partition has a spread (blocks written before "
				       "2026-12-06; a rebuild gives every one)\n");
			else
				printf("probe order    centroid distance + 0.125 x spread (--spread-weight); %u of %u "
				       "partitions have a spread\n", in.spread_partitions, in.partitions);
			if (in.spread_partitions && in.directions)
				printf("directions     %u a partition (annann tune --directions): the probe order discounts "
				       "0.5 x the distance along them (--direction-weight)%s\n", in.directions,
				       in.directions_stale
					       ? "; a compaction since has not refitted them: the next one, or annann tune "
						 "--directions, refits"
				       : in.directions_partitions < in.partitions
					       ? "; partitions split off since the fit have none: annann tune --directions refits"
					       : "");
		}
		if (in.code_bits)
			printf("re-rank bound  eps0 %.2g (%s; --rerank-eps overrides)\n", in.rerank_eps,
			       in.rerank_eps_tuned ? "calibrated by annann tune" : "the default");
		printf("router         %s, %.2f MiB in RAM (%.2f bytes per vector)\n", ann_router_name(in.router),
		       (double)in.router_ram_bytes / 1048576.0,
		       in.vectors ? (double)in.router_ram_bytes / (double)in.vectors : 0.0);
		if (in.route_ef)
			printf("route ef       %u (calibrated by the build; --ef overrides)\n", in.route_ef);
		if (in.router_bits)
			printf("centroids      %u-bit RaBitQ codes, scanned flat (no graph)\n", in.router_bits);
		if (in.code_bits)
			printf("codes          rabitq, %u bit%s per dimension, %u-bit factors, %s row order; heads %.1f MiB "
			       "(%.1f bytes per vector)\n", in.code_bits, in.code_bits == 1 ? "" : "s", in.code_factors,
			       in.code_order ? "page-local" : "id",
			       (double)in.head_bytes / 1048576.0,
			       in.stored_vectors ? (double)in.head_bytes / (double)in.stored_vectors : 0.0);
		if (!in.code_bits)
			printf("blocks         format 1 (zstd)%s\n", in.encoding == ANN_ENC_F16 || in.encoding == ANN_ENC_SQ8 ?
			       ": codes take f32, u8 or i8 rows" : "");
		printf("store          %s\n", in.store == ANN_STORE_LMDB ? "lmdb" : "file");
		printf("on disk        %.1f MiB (blocks %.1f MiB; raw vectors %.1f MiB; ratio %.3f)\n",
		       (double)in.bytes_on_disk / 1048576.0, (double)in.block_bytes / 1048576.0,
		       (double)raw / 1048576.0, raw ? (double)in.bytes_on_disk / (double)raw : 0.0);
		printf("partition sizes:\n");
		for (int b = 0; b < ANN_INFO_HIST_BINS; b++)
			if (hist[b])
				printf("  %8llu..%-8llu %u\n", b ? 1ull << (b - 1) : 0ull, b ? (1ull << b) - 1 : 0ull,
				       (unsigned)hist[b]);
	}
	ann_index_close(x);
	return 0;
}

cli_cmd cmd_info = {"info", "describe an index: sizes on disk, partitions, router RAM", "--index DIR [--json]",
		    info_opts, run_info};

/* ---- verify -------------------------------------------------------------- */

static cli_opt verify_opts[] = {
	{"index", "DIR", "index directory (required)", NULL},
	{"json", NULL, "print a JSON summary", NULL},
	{NULL, NULL, NULL, NULL},
};

static void verify_print(void *ctx, uint32_t pid, const char *problem)
{
	(void)ctx;
	if (pid == UINT32_MAX)
		fprintf(stderr, "catalog: %s\n", problem);
	else
		fprintf(stderr, "partition %u: %s\n", pid, problem);
}

static int run_verify(cli_cmd *c)
{
	const char *dir = cli_need(c, "index");
	if (!dir)
		return CLI_EXIT_USAGE;
	ann_error err = {0};
	uint64_t problems = 0;
	if (ann_verify(dir, verify_print, NULL, &problems, &err) < 0)
		return cli_fail(c, &err);
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_str(&j, "index", dir);
		cli_json_int(&j, "problems", (long long)problems);
		cli_json_end(&j);
	} else {
		printf("%s: %" PRIu64 " problem%s\n", dir, problems, problems == 1 ? "" : "s");
	}
	return problems ? CLI_EXIT_FAIL : 0;
}

cli_cmd cmd_verify = {"verify", "read every block and check checksums and catalog consistency",
		      "--index DIR [--json]", verify_opts, run_verify};

/* ---- repair -------------------------------------------------------------- */

static cli_opt repair_opts[] = {
	{"index", "DIR", "index directory (required)", NULL},
	{"dry-run", NULL, "rebuild and check the catalog, then delete the copy (nothing changes)", NULL},
	{"json", NULL, "print a JSON summary", NULL},
	{NULL, NULL, NULL, NULL},
};

static int run_repair(cli_cmd *c)
{
	const char *dir = cli_need(c, "index");
	if (!dir)
		return CLI_EXIT_USAGE;
	bool dry = cli_flag(c, "dry-run");
	ann_error err = {0};
	ann_repair_result r;
	if (ann_repair(dir, dry, &r, &err) < 0)
		return cli_fail(c, &err);
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_str(&j, "index", dir);
		cli_json_bool(&j, "damaged", r.damaged != 0);
		cli_json_str(&j, "damage", r.damage);
		cli_json_int(&j, "entries", (long long)r.entries);
		cli_json_int(&j, "bad_values", (long long)r.bad_values);
		cli_json_bool(&j, "dry_run", dry);
		cli_json_str(&j, "backup", r.backup);
		cli_json_end(&j);
	} else {
		if (r.damaged)
			printf("%s: found %s\n", dir, r.damage);
		else
			printf("%s: no damage found in the catalog's pages\n", dir);
		if (dry)
			printf("%s: dry run: the rebuilt catalog (%" PRIu64 " entries) checks clean; nothing changed\n", dir,
			       r.entries);
		else
			printf("%s: catalog rebuilt (%" PRIu64 " entries); the old catalog is kept at %s\n", dir, r.entries,
			       r.backup);
	}
	if (r.bad_values) {
		fprintf(stderr, "annann repair: %s: %" PRIu64 " catalog value%s still fail%s its checksum (copied as "
			"%s): run 'annann verify --index %s'\n", dir, r.bad_values, r.bad_values == 1 ? "" : "s",
			r.bad_values == 1 ? "s" : "", r.bad_values == 1 ? "it was" : "they were", dir);
		return CLI_EXIT_FAIL;
	}
	return 0;
}

cli_cmd cmd_repair = {"repair", "rebuild a damaged catalog (LMDB free list, page accounting); keeps the old one",
		      "--index DIR [--dry-run] [--json]", repair_opts, run_repair};

/* ---- search -------------------------------------------------------------- */

static cli_opt search_opts[] = {
	{"index", "DIR", "index directory (required)", NULL},
	{"queries", "FILE", "query vectors (required)", NULL},
	{"gt", "FILE", "ground truth (big-ann layout or ivecs) for recall", NULL},
	{"k", "K", "neighbours per query (default 10)", NULL},
	{"nprobe", "P[,P...]", "partitions read per query; a list runs a sweep (default: the index's, 1 partition in "
	 "40, at least 16; annann info shows it)", NULL},
	{"C", "C[,C...]", "annann router: clusters scanned (same as --nprobe)", NULL},
	{"candidates-factor", "F", "annann router: HNSW returns F * C clusters (default 10)", NULL},
	{"ef", "EF", "ef of the centroid-graph search (k-means default: max(the build's calibrated ef, 2 * nprobe))", NULL},
	{"batch", "N", "queries per batch: 1 measures latency, more gives throughput (default 1)", NULL},
	{"threads", "T", "search threads, each with its own searcher (default 1)", NULL},
	{"cache", "BYTES", "decoded-block cache per thread: format 1 blocks, heads of codes blocks (default 0: every block from storage)",
	 NULL},
	{"rerank", "N", "codes: at most N exact re-ranks per query (default 6 k, at least 64, at most 100000)", NULL},
	{"rerank-phases", "N", "codes: 1 = one read of all re-rank pages; 2 = the k best first, then only what can "
	 "still beat them (default 2); 3, 4 = then the 2k, 4k best, each only what can still beat them, the rest last", NULL},
	{"rerank-eps", "E", "codes: eps0 of the error bound that selects re-ranks (default 0 = the index's, calibrated by "
	 "annann tune and the build's self-tuning, else 2.0; annann info shows it)", NULL},
	{"poll-us", "US|auto", "io_uring: poll for a read's completion up to US microseconds before sleeping; spends "
	 "the thread's CPU to save the wake-up (0 = sleep; at most 10000; default auto = 300 while --threads is below "
	 "the online CPUs, else 0, and 0 with --distributed)", NULL},
	{"probe-eps", "E", "kmeans: probe only partitions whose centroid is within (1 + E) x the nearest "
	 "centroid's distance, at most nprobe of them (default 0 = off, every one of the nprobe; inf = off)", NULL},
	{"direction-weight", "W", "kmeans, codes, l2 or cosine, with directions (annann tune --directions): the probe order "
	 "also discounts the distance along each partition's stretched directions, by W (default 0.5; 0 = off; at "
	 "most 1)", NULL},
	{"spread-weight", "W", "kmeans, codes, l2 or cosine: probe partitions in the order of the centroid distance + W x the "
	 "partition's spread (mean squared distance of its rows to their centre), tighter partitions first "
	 "(default 0.125; 0 = the centroid distances alone)", NULL},
	{"adaptive", "auto|on|off", "learned adaptive probing (annann tune): auto (default) uses the index's probe "
	 "model when it has one, and nprobe is then the mean budget (each query reads P1..2 nprobe partitions); off "
	 "reads nprobe for every query; on requires the model", NULL},
	{"queue-depth", "Q", "I/O requests in flight (default 32)", NULL},
	{"pread", NULL, "read with pread instead of io_uring", NULL},
	{"limit", "N", "use only the first N queries", NULL},
	{"warmup", NULL, "run the query set once before measuring (fills --cache)", NULL},
	{"out", "FILE", "write the result ids and distances (big-ann layout) of the last setting", NULL},
	{"json", NULL, "print one JSON object per setting", NULL},
	{"distributed", NULL, "under mpirun: search a distributed index, each rank scanning its own partitions", NULL},
	{NULL, NULL, NULL, NULL},
};

typedef struct search_job {
	ann_searcher *s; /* the thread's own, kept across the warm-up and measured passes */
	uint32_t k;
	const float *q;
	size_t nq, dim, batch;
	int64_t *ids;
	float *dists;
	ann_query_stats *st;
	size_t *next;              /* shared batch cursor */
	pthread_mutex_t *mu;
	const char *io_path;
	ann_error err;
	int rc;
} search_job;

static void *search_worker(void *arg)
{
	search_job *j = arg;
	ann_searcher *s = j->s;
	j->io_path = ann_searcher_io_path(s);
	for (;;) {
		pthread_mutex_lock(j->mu);
		size_t b0 = *j->next;
		*j->next += j->batch;
		pthread_mutex_unlock(j->mu);
		if (b0 >= j->nq)
			break;
		size_t nb = CLI_MIN(j->batch, j->nq - b0);
		j->rc = ann_search(s, j->q + b0 * j->dim, nb, j->ids + b0 * j->k, j->dists + b0 * j->k, j->st + b0,
				   &j->err);
		if (j->rc < 0)
			break;
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Runs the whole query set once with the searchers s[0..threads-1] (one
 * per thread; their caches carry over from one call to the next). */
static int run_setting(ann_searcher **s, uint32_t k, const float *q, size_t nq, size_t dim, size_t batch,
		       int threads, int64_t *ids, float *dists, ann_query_stats *st, const char **io_path,
		       double *wall_s, ann_error *err)
{
	size_t next = 0;
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	search_job jobs[64];
	pthread_t tid[64];
	bool started[64] = {false};
	uint64_t t0 = cli_now_ns();
	for (int t = 0; t < threads; t++) {
		jobs[t] = (search_job){s[t], k, q, nq, dim, batch, ids, dists, st, &next, &mu, NULL, {0}, 0};
		if (t > 0) {
			started[t] = pthread_create(&tid[t], NULL, search_worker, &jobs[t]) == 0;
			if (!started[t])
				jobs[t].rc = cli_err(&jobs[t].err, ANN_E_IO, "cannot start search thread %d", t);
		}
	}
	search_worker(&jobs[0]);
	/* Join every thread that started, whether its search failed or not. */
	for (int t = 1; t < threads; t++)
		if (started[t])
			pthread_join(tid[t], NULL);
	*wall_s = (double)(cli_now_ns() - t0) / 1e9;
	for (int t = 0; t < threads; t++)
		if (jobs[t].rc < 0) {
			*err = jobs[t].err;
			return jobs[t].rc;
		}
	*io_path = jobs[0].io_path;
	return ANN_OK;
}

void cli_search_header(bool gt, bool codes)
{
	printf("%-7s %-9s %-6s %-10s %-10s %-7s %-9s %-9s %-9s %-9s %s\n", "nprobe", gt ? "recall@k" : "-", "parts",
	       "cands", "KB/query", "IOs", "p50 ms", "p95 ms", "p99 ms", "QPS",
	       codes ? "route/read1/est/read2/rerank us" : "route/io/dec/scan us");
}

/* One setting's line of the search table, or its JSON object: shared by
 * the single-node search and the distributed one (cmd_dist.c, r->ranks > 0,
 * whose stats are already summed over the ranks). lat: nq entries of scratch. */
void cli_search_report(const cli_search_result *r, uint64_t *lat)
{
	size_t nq = r->nq, k = r->k, gk = r->gk;
	const int64_t *ids = r->ids;
	const int32_t *gt = r->gt;
	const ann_query_stats *st = r->st;
	bool json = r->json, codes = r->codes;
	double wall = r->wall;
	const char *io_path = r->io_path;
	unsigned long long batch = r->batch, threads = r->threads, cache = r->cache, rerank = r->rerank;
	double recall = NAN, parts = 0, cands = 0, bytes = 0, ios = 0, r_us = 0, w_us = 0, d_us = 0, s_us = 0;
	double b1 = 0, b2 = 0, io1 = 0, io2 = 0, nest = 0, nrr = 0, w1 = 0, e_us = 0, w2 = 0, rr_us = 0, waves = 0;
	uint64_t hits = 0, valid = 0; /* valid: ground-truth entries among each row's first k (a set smaller
				       * than k pads its rows with -1, and those cannot be found) */
	for (size_t i = 0; i < nq; i++) {
		if (gt) {
			for (size_t b = 0; b < k; b++)
				valid += gt[i * gk + b] >= 0;
			for (size_t a = 0; a < k; a++)
				for (size_t b = 0; b < k; b++)
					if (ids[i * k + a] >= 0 && ids[i * k + a] == gt[i * gk + b]) {
						hits++;
						break;
					}
		}
		parts += st[i].partitions;
		cands += (double)st[i].candidates;
		bytes += st[i].bytes_read;
		ios += st[i].io_requests;
		r_us += (double)st[i].route_ns / 1e3;
		w_us += (double)st[i].io_wait_ns / 1e3;
		d_us += (double)st[i].decode_ns / 1e3;
		s_us += (double)st[i].scan_ns / 1e3;
		b1 += st[i].bytes_round1;
		b2 += st[i].bytes_round2;
		io1 += st[i].ios_round1;
		io2 += st[i].ios_round2;
		nest += (double)st[i].estimated;
		nrr += (double)st[i].reranked;
		w1 += (double)st[i].round1_wait_ns / 1e3;
		e_us += (double)st[i].estimate_ns / 1e3;
		w2 += (double)st[i].round2_wait_ns / 1e3;
		rr_us += (double)st[i].rerank_ns / 1e3;
		waves += st[i].read_waves;
		lat[i] = st[i].latency_ns;
	}
	double dn = nq ? (double)nq : 1;
	if (gt)
		recall = valid ? (double)hits / (double)valid : 1.0;
	qsort(lat, nq, sizeof *lat, cmp_u64);
	double p50 = nq ? (double)lat[nq / 2] / 1e6 : 0, p95 = nq ? (double)lat[(nq * 95) / 100] / 1e6 : 0,
	       p99 = nq ? (double)lat[CLI_MIN(nq - 1, (nq * 99) / 100)] / 1e6 : 0;
	double qps = wall > 0 ? (double)nq / wall : 0;
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_num(&j, "recall_at_k", recall);
		cli_json_int(&j, "k", (long long)k);
		cli_json_int(&j, "nprobe", (long long)r->nprobe);
		cli_json_int(&j, "queries", (long long)nq);
		cli_json_int(&j, "batch", (long long)batch);
		cli_json_int(&j, "threads", (long long)threads);
		if (r->ranks)
			cli_json_int(&j, "ranks", (long long)r->ranks);
		cli_json_num(&j, "qps", qps);
		cli_json_obj(&j, "latency_us");
		cli_json_num(&j, "p50", p50 * 1e3);
		cli_json_num(&j, "p95", p95 * 1e3);
		cli_json_num(&j, "p99", p99 * 1e3);
		cli_json_close_obj(&j);
		cli_json_num(&j, "partitions_probed", parts / dn);
		cli_json_num(&j, "candidates", cands / dn);
		cli_json_num(&j, "bytes_read", bytes / dn);
		cli_json_num(&j, "io_requests", ios / dn);
		cli_json_obj(&j, "stage_us");
		cli_json_num(&j, "route", r_us / dn);
		cli_json_num(&j, "io_wait", w_us / dn);
		cli_json_num(&j, "decode", d_us / dn);
		cli_json_num(&j, "scan", s_us / dn);
		cli_json_num(&j, "round1_wait", w1 / dn);
		cli_json_num(&j, "estimate", e_us / dn);
		cli_json_num(&j, "round2_wait", w2 / dn);
		cli_json_num(&j, "rerank", rr_us / dn);
		cli_json_close_obj(&j);
		cli_json_obj(&j, "codes");
		cli_json_num(&j, "bytes_round1", b1 / dn);
		cli_json_num(&j, "bytes_round2", b2 / dn);
		cli_json_num(&j, "ios_round1", io1 / dn);
		cli_json_num(&j, "ios_round2", io2 / dn);
		cli_json_num(&j, "estimated", nest / dn);
		cli_json_num(&j, "reranked", nrr / dn);
		cli_json_num(&j, "read_waves", waves / dn);
		cli_json_int(&j, "rerank_budget", (long long)(rerank ? rerank : ann_default_rerank((uint32_t)r->k)));
		if (r->rerank_eps > 0)
			cli_json_num(&j, "rerank_eps", r->rerank_eps);
		cli_json_close_obj(&j);
		if (r->probe_eps > 0 && !isinf(r->probe_eps))
			cli_json_num(&j, "probe_eps", r->probe_eps);
		cli_json_str(&j, "io_path", io_path);
		cli_json_int(&j, "cache_bytes", (long long)cache);
		cli_json_int(&j, "poll_us", (long long)r->poll_us);
		cli_json_str(&j, "simd", ann_simd_name(ann_simd_active()));
		cli_json_end(&j);
	} else {
		char rec[16];
		snprintf(rec, sizeof rec, gt ? "%.4f" : "-", recall);
		printf("%-7llu %-9s %-6.1f %-10.0f %-10.1f %-7.1f %-9.3f %-9.3f %-9.3f %-9.0f ",
		       (unsigned long long)r->nprobe, rec, parts / dn, cands / dn, bytes / dn / 1024.0, ios / dn,
		       p50, p95, p99, qps);
		if (codes)
			printf("%.0f/%.0f/%.0f/%.0f/%.0f\n", r_us / dn, w1 / dn, e_us / dn, w2 / dn, rr_us / dn);
		else
			printf("%.0f/%.0f/%.0f/%.0f\n", r_us / dn, w_us / dn, d_us / dn, s_us / dn);
		if (r->last && r->ranks)
			printf("(%d ranks: bytes, IOs and candidates summed over ranks, latency end to end on rank 0; "
			       "io path %s, %s kernels, batch %llu, cache %llu bytes per rank)\n", r->ranks, io_path,
			       ann_simd_name(ann_simd_active()), (unsigned long long)batch, (unsigned long long)cache);
		else if (r->last)
			printf("(io path %s, %s kernels, batch %llu, %llu thread%s, cache %llu bytes%s%s)\n", io_path,
			       ann_simd_name(ann_simd_active()), (unsigned long long)batch,
			       (unsigned long long)threads, threads == 1 ? "" : "s", (unsigned long long)cache,
			       r->probe_eps > 0 && !isinf(r->probe_eps) ? ", adaptive probing: parts = mean probed" : "",
			       r->poll_us ? ", completions polled" : "");
	}
	fflush(stdout);
}

static int run_search(cli_cmd *c)
{
	if (cli_flag(c, "distributed"))
		return cli_search_distributed(c);
	const char *dir = cli_need(c, "index");
	const char *qpath = dir ? cli_need(c, "queries") : NULL;
	if (!qpath)
		return CLI_EXIT_USAGE;
	uint64_t k, cf, ef, batch, threads, cache, qd, limit, rerank, rphases, poll;
	uint64_t probes[64];
	size_t nprobes = 0;
	if (!cli_u64(c, "k", 10, 1, ANN_MAX_K, &k) || !cli_u64(c, "candidates-factor", ANN_DEFAULT_CANDIDATES_FACTOR, 1, 1000, &cf) ||
	    !cli_u64(c, "ef", 0, 0, ANN_MAX_EF, &ef) || !cli_u64(c, "batch", 1, 1, UINT32_MAX, &batch) ||
	    !cli_u64(c, "threads", 1, 1, 64, &threads) || !cli_size(c, "cache", 0, 0, CLI_SIZE_MAX, &cache) ||
	    !cli_u64(c, "queue-depth", 32, 1, 4096, &qd) || !cli_u64(c, "limit", UINT64_MAX, 1, UINT64_MAX, &limit) ||
	    !cli_u64(c, "rerank", 0, 1, 100000, &rerank) ||
	    !cli_u64(c, "rerank-phases", ANN_DEFAULT_RERANK_PHASES, 1, ANN_MAX_RERANK_PHASES, &rphases) ||
	    !cli_u64_list(c, cli_get(c, "C") ? "C" : "nprobe", 1, ANN_MAX_NPROBE, probes, 64, &nprobes))
		return CLI_EXIT_USAGE;
	if (!cli_search_poll(c, threads, false, &poll))
		return CLI_EXIT_USAGE;
	double reps, peps = INFINITY, sw, dw;
	if (!cli_double(c, "rerank-eps", 0, 0, 100, &reps) ||
	    !cli_double(c, "spread-weight", ANN_DEFAULT_SPREAD_WEIGHT, 0, 100, &sw) ||
	    !cli_double(c, "direction-weight", ANN_DEFAULT_DIRECTION_WEIGHT, 0, 1, &dw))
		return CLI_EXIT_USAGE;
	int adaptive = 0;
	const char *ad = cli_get(c, "adaptive");
	if (ad && strcmp(ad, "auto") != 0) {
		if (strcmp(ad, "on") == 0)
			adaptive = 1;
		else if (strcmp(ad, "off") == 0)
			adaptive = -1;
		else
			return cli_usage_error(c, "--adaptive must be auto, on or off, not '%s'", ad);
	}
	const char *pe = cli_get(c, "probe-eps");
	if ((!pe || strcmp(pe, "inf") != 0) && !cli_double(c, "probe-eps", 0, 0, 1e9, &peps))
		return CLI_EXIT_USAGE;
	ann_error err = {0};
	ann_index *idx = NULL;
	ann_vector_reader *qr = NULL;
	float *q = NULL, *dists = NULL, *gtd = NULL;
	int32_t *gt = NULL;
	int64_t *ids = NULL;
	ann_query_stats *st = NULL;
	uint64_t *lat = NULL;
	uint32_t gnq = 0, gk = 0;
	int ret = CLI_EXIT_FAIL;
	if (ann_index_open(dir, &idx, &err) < 0)
		goto fail;
	if (ann_vector_reader_open(qpath, &qr, &err) < 0)
		goto fail;
	ann_index_info info;
	if (ann_index_get_info(idx, &info, &err) < 0)
		goto fail;
	if (nprobes == 0) /* the index's default: docs/DESIGN.md "Defaults" */
		probes[nprobes++] = info.default_nprobe;
	uint64_t qn;
	uint32_t qdim;
	ann_dtype qt;
	ann_vector_reader_shape(qr, &qn, &qdim, &qt);
	size_t dim = qdim;
	if (dim != info.dim) {
		cli_err(&err, ANN_E_BADINPUT, "%s: queries have dimension %zu, the index %u", qpath, dim, info.dim);
		goto fail;
	}
	size_t nq = (size_t)CLI_MIN(qn, limit);
	q = malloc((nq ? nq : 1) * dim * sizeof(float));
	ids = malloc((nq ? nq : 1) * k * sizeof(int64_t));
	dists = malloc((nq ? nq : 1) * k * sizeof(float));
	st = calloc(nq ? nq : 1, sizeof *st);
	lat = malloc((nq ? nq : 1) * sizeof(uint64_t));
	if (!q || !ids || !dists || !st || !lat) {
		cli_err(&err, ANN_E_NOMEM, "out of memory for %zu queries", nq);
		goto fail;
	}
	int64_t got = ann_vector_reader_read_f32(qr, q, nq, &err);
	if (got < 0)
		goto fail;
	const char *gtpath = cli_get(c, "gt");
	if (gtpath) {
		if (ann_ground_truth_read(gtpath, &gnq, &gk, &gt, &gtd, &err) < 0)
			goto fail;
		if (gnq < nq || gk < k) {
			cli_err(&err, ANN_E_BADINPUT, "%s: ground truth for %u queries x %u neighbours; need %zu x %llu",
				gtpath, gnq, gk, nq, (unsigned long long)k);
			goto fail;
		}
	}
	bool json = cli_flag(c, "json");
	/* Codes blocks have other stages: round 1 wait, estimate, round 2 wait, re-rank. */
	bool codes = info.code_bits != 0;
	double idx_eps = info.rerank_eps;
	if (!json)
		cli_search_header(gt != NULL, codes);
	for (size_t pi = 0; pi < nprobes; pi++) {
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = (uint32_t)k;
		so.nprobe = (uint32_t)probes[pi];
		so.candidates_factor = (uint32_t)cf;
		so.hnsw_ef = (uint32_t)ef;
		so.cache_bytes = cache;
		so.queue_depth = (uint32_t)qd;
		so.force_pread = cli_flag(c, "pread");
		so.rerank = (uint32_t)rerank;
		so.rerank_eps = (float)reps;
		so.rerank_phases = (uint32_t)rphases;
		so.probe_eps = (float)peps;
		so.spread_weight = sw > 0 ? (float)sw : -1.0f; /* 0 turns it off */
		so.direction_weight = dw > 0 ? (float)dw : -1.0f;
		so.adaptive = adaptive;
		so.io_poll_us = (uint32_t)poll;
		const char *io_path = "?";
		double wall;
		ann_searcher *srch[64] = {0};
		int rs = ANN_OK;
		for (uint64_t t = 0; t < threads && rs >= 0; t++)
			rs = ann_searcher_new(idx, &so, &srch[t], &err);
		if (rs == ANN_E_INVAL) /* options the index cannot serve (--adaptive on without a model): usage */
			ret = CLI_EXIT_USAGE;
		if (rs >= 0 && cli_flag(c, "warmup"))
			rs = run_setting(srch, so.k, q, nq, dim, batch, (int)threads, ids, dists, st, &io_path, &wall,
					 &err);
		if (rs >= 0)
			rs = run_setting(srch, so.k, q, nq, dim, batch, (int)threads, ids, dists, st, &io_path, &wall,
					 &err);
		for (uint64_t t = 0; t < threads; t++)
			ann_searcher_free(srch[t]);
		if (rs < 0)
			goto fail;
		cli_search_report(&(cli_search_result){.k = (uint32_t)k, .nprobe = probes[pi], .nq = nq, .batch = batch,
			.threads = threads, .cache = cache, .rerank = rerank, .ids = ids, .st = st, .gt = gt, .gk = gk,
			.poll_us = (unsigned)poll, .rerank_eps = reps > 0 ? reps : idx_eps,
			.wall = wall, .io_path = io_path, .json = json, .codes = codes, .last = pi + 1 == nprobes,
			.probe_eps = peps}, lat);
	}
	const char *out = cli_get(c, "out");
	if (out) {
		int32_t *oid = malloc((nq ? nq : 1) * k * sizeof(int32_t));
		if (!oid) {
			cli_err(&err, ANN_E_NOMEM, "out of memory");
			goto fail;
		}
		for (size_t i = 0; i < nq * k; i++)
			oid[i] = ids[i] > INT32_MAX ? -1 : (int32_t)ids[i];
		int rc = ann_ground_truth_write(out, (uint32_t)nq, (uint32_t)k, oid, dists, &err);
		free(oid);
		if (rc < 0)
			goto fail;
	}
	ret = 0;
fail:
	if (ret)
		cli_fail(c, &err);
	free(q);
	free(ids);
	free(dists);
	free(st);
	free(lat);
	ann_buffer_free(gt);
	ann_buffer_free(gtd);
	ann_vector_reader_close(qr);
	ann_index_close(idx);
	return ret;
}

cli_cmd cmd_search = {"search", "search an index from disk; recall, I/O and latency figures",
		      "--index DIR --queries FILE [--gt FILE] [--k K] [--nprobe P[,P...]] [--batch N] [--threads T] "
		      "[--cache BYTES] [--out FILE] [--json]",
		      search_opts, run_search};

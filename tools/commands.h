/* SPDX-License-Identifier: MIT */
/* commands.h: the command table entries, one per cmd_*.c file. */
#ifndef ANN_COMMANDS_H
#define ANN_COMMANDS_H

#include "cli.h"

extern cli_cmd cmd_gen, cmd_gt, cmd_convert, cmd_build, cmd_search, cmd_info, cmd_verify, cmd_insert, cmd_delete,
	cmd_compact, cmd_repair, cmd_tune;

/* One setting of a search, as `annann search` prints it (cmd_index.c). */
typedef struct cli_search_result {
	uint32_t k;
	uint64_t nprobe;
	size_t nq;
	unsigned long long batch, threads, cache, rerank;
	const int64_t *ids;          /* nq * k */
	const ann_query_stats *st;   /* nq */
	const int32_t *gt;           /* nq * gk, or NULL */
	uint32_t gk;
	double wall;                 /* seconds for the whole query set */
	const char *io_path;
	bool json, codes, last;      /* last: the last setting (the table's footnote) */
	int ranks;                   /* distributed search: the ranks; 0 otherwise */
	double probe_eps;            /* adaptive probing's eps; 0 or inf: off */
	unsigned poll_us;            /* --poll-us (0: the searchers sleep for completions) */
	double rerank_eps;           /* codes: the re-rank bound's eps0 the search used */
} cli_search_result;

/* --poll-us auto: the poll bound while the search threads leave a core free
 * (docs/BENCHMARKS.md "Polled completions": 300 was as good as 1000) */
#define CLI_AUTO_POLL_US 300u

bool cli_search_poll(const cli_cmd *c, uint64_t threads, bool dist, uint64_t *poll);
void cli_search_header(bool gt, bool codes);
void cli_search_report(const cli_search_result *r, uint64_t *lat);

/* The distributed build and search (cmd_dist.c, with MPI), and a build with
 * a given router (--router-from): run_build and run_search hand over to
 * them once their options are parsed. */
int cli_build_distributed(cli_cmd *c, const ann_build_opts *o, const char *data, const char *index,
			  const char *router_from);
int cli_search_distributed(cli_cmd *c);
int cli_build_with_router(cli_cmd *c, const ann_build_opts *o, const char *data, const char *index,
			  const char *router_from);

#endif

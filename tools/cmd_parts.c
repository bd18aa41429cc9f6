/* SPDX-License-Identifier: MIT */
/*
 * cmd_parts.c: `annann build --router-from DIR`: a single-node build that
 * takes its router from another index (single-node or distributed) instead
 * of training one, through the library's partbuild hooks (src/index/dist.h).
 * Two indexes built from the same data with the same router hold the same
 * partitions: this is how a distributed index is compared with a
 * single-node one (tests/test_mpi.sh). Also the router loader the
 * distributed build (cmd_dist.c) uses for its own --router-from.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "common.h"
#include "dist.h"
#include "vecio.h"

#define PARTS_CHUNK 8192u /* vectors read and routed at a time */

int cli_router_from(const char *dir, ann_router_kind *kind, uint8_t **blob, size_t *len, uint32_t *ef,
		    ann_error *err);

/* The router blob of the index at dir: a single-node index, or a
 * distributed one (its rank 0 part: every part holds the same router). */
int cli_router_from(const char *dir, ann_router_kind *kind, uint8_t **blob, size_t *len, uint32_t *ef,
		    ann_error *err)
{
	ann_dist_desc dd;
	char path[4200];
	int rc = ann_dist_desc_read(dir, &dd, err);
	if (rc == ANN_E_NOTFOUND)
		snprintf(path, sizeof path, "%s", dir);
	else if (rc < 0)
		return rc;
	else
		snprintf(path, sizeof path, "%s/rank-0", dir);
	ann_index *x;
	uint32_t r, rs;
	ANN_TRY(ann_index_open_part(path, &x, &r, &rs, err));
	rc = ann_index_router_blob(x, kind, blob, len, ef, err);
	ann_index_close(x);
	return rc;
}

int cli_build_with_router(cli_cmd *c, const ann_build_opts *o0, const char *data, const char *index,
			  const char *router_from)
{
	ann_build_opts o = *o0;
	cli_progress_state ps;
	cli_progress_init(&ps, cli_flag(c, "quiet"));
	o.progress = cli_progress;
	o.progress_ctx = &ps;
	o.log = cli_log;
	o.log_ctx = &ps;
	ann_error err = {0};
	uint64_t t0 = cli_now_ns();
	ann_router_kind kind;
	uint8_t *blob = NULL, *raw = NULL;
	uint32_t *parts = NULL;
	size_t len = 0;
	uint32_t ef = 0;
	ann_partbuild *pb = NULL;
	int rc = cli_router_from(router_from, &kind, &blob, &len, &ef, &err);
	if (rc < 0)
		goto out;
	uint64_t n;
	uint32_t d, nparts, copies;
	ann_dtype in_type;
	ann_encoding enc;
	rc = ann_partbuild_open(data, index, &o, 0, 0, &pb, &err);
	if (rc < 0)
		goto out;
	ann_partbuild_shape(pb, &n, &d, &in_type, &nparts, &copies, &enc);
	/* This function's buffers: raw vectors, their floats (inside
	 * read_route) and the partitions, out of the budget. */
	size_t esz = ann_dtype_size(in_type);
	size_t bufs = (size_t)PARTS_CHUNK * ((size_t)d * (esz + sizeof(float)) + copies * sizeof(uint32_t));
	rc = ann_partbuild_set_router(pb, kind, blob, len, ef, bufs, &err);
	if (rc < 0)
		goto out;
	ann_partbuild_shape(pb, &n, &d, &in_type, &nparts, &copies, &enc);
	raw = ann_malloc((size_t)PARTS_CHUNK * d * esz);
	parts = ann_malloc((size_t)PARTS_CHUNK * copies * sizeof(uint32_t));
	if (!raw || !parts) {
		rc = ann_err(&err, ANN_E_NOMEM, "out of memory for routing buffers");
		goto out;
	}
	for (uint64_t i = 0; i < n;) {
		size_t m = (size_t)ANN_MIN((uint64_t)PARTS_CHUNK, n - i);
		rc = ann_partbuild_read_route(pb, i, m, raw, parts, &err);
		for (size_t j = 0; rc >= 0 && j < m; j++)
			for (uint32_t cp = 0; rc >= 0 && cp < copies && parts[j * copies + cp] != UINT32_MAX; cp++)
				rc = ann_partbuild_add(pb, parts[j * copies + cp], (int64_t)(i + j), raw + j * d * esz, &err);
		if (rc < 0)
			goto out;
		i += m;
	}
	rc = ann_partbuild_finish(pb, n, &err);
	pb = NULL;
out:
	cli_progress_end(&ps);
	ann_partbuild_abort(pb);
	ann_free(blob);
	ann_free(raw);
	ann_free(parts);
	if (rc < 0)
		return cli_fail(c, &err);
	double secs = (double)(cli_now_ns() - t0) / 1e9;
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_str(&j, "index", index);
		cli_json_str(&j, "router_from", router_from);
		cli_json_num(&j, "seconds", secs);
		cli_json_end(&j);
	} else {
		printf("built %s with the router of %s in %.1fs\n", index, router_from, secs);
	}
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * cmd_update.c: insert, delete and compact, over the writer API of
 * annann.h. Ids files are ivecs or ibin (int32): every value is an id.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"

/* Reads every int32 of an ivecs/ibin file as an id. */
static int read_ids(const char *path, int64_t **out, size_t *n, ann_error *err)
{
	ann_vector_reader *r;
	CLI_TRY(ann_vector_reader_open(path, &r, err));
	int rc = ANN_OK;
	uint64_t nv;
	uint32_t dim;
	ann_dtype dt;
	ann_vector_reader_shape(r, &nv, &dim, &dt);
	if (dt != ANN_DTYPE_I32) {
		rc = cli_err(err, ANN_E_BADINPUT, "%s: ids must be an ivecs or ibin file of int32", path);
		ann_vector_reader_close(r);
		return rc;
	}
	size_t d = dim, cnt = (size_t)nv;
	int32_t *buf = malloc((cnt ? cnt : 1) * d * sizeof(int32_t));
	int64_t *ids = malloc((cnt ? cnt : 1) * d * sizeof(int64_t));
	if (!buf || !ids) {
		rc = cli_err(err, ANN_E_NOMEM, "out of memory for %zu ids", cnt * d);
		goto out;
	}
	int64_t got = ann_vector_reader_read(r, buf, cnt, err);
	if (got < 0) {
		rc = (int)got;
		goto out;
	}
	for (size_t i = 0; i < cnt * d; i++)
		ids[i] = buf[i];
	*out = ids;
	*n = cnt * d;
	ids = NULL;
out:
	free(buf);
	free(ids);
	ann_vector_reader_close(r);
	return rc;
}

static const char *dtype_name(ann_dtype t)
{
	switch (t) {
	case ANN_DTYPE_F32: return "f32";
	case ANN_DTYPE_U8: return "u8";
	case ANN_DTYPE_I8: return "i8";
	case ANN_DTYPE_I32: return "int32";
	default: return "f16";
	}
}

/* Whether a file of element type t can be inserted into an index of
 * encoding e without changing a value: u8 and i8 indexes store their own
 * type only; float indexes take f32 and the small integer types (exact in
 * float). int32 files hold ids, never vectors. */
static bool insert_type_ok(ann_dtype t, ann_encoding e)
{
	if (e == ANN_ENC_U8)
		return t == ANN_DTYPE_U8;
	if (e == ANN_ENC_I8)
		return t == ANN_DTYPE_I8;
	return t == ANN_DTYPE_F32 || t == ANN_DTYPE_U8 || t == ANN_DTYPE_I8;
}

static cli_opt insert_opts[] = {
	{"index", "DIR", "index directory (required)", NULL},
	{"data", "FILE", "vectors to insert (required)", NULL},
	{"ids", "FILE", "their ids (ivecs or ibin); default: the next free ids", NULL},
	{"upsert", NULL, "replace vectors whose id exists (default: an existing id is an error)", NULL},
	{"batch", "N", "vectors per durable transaction (default 10000)", NULL},
	{"quiet", NULL, "no progress line", NULL},
	{"json", NULL, "print a JSON summary", NULL},
	{NULL, NULL, NULL, NULL},
};

static int run_insert(cli_cmd *c)
{
	const char *dir = cli_need(c, "index");
	const char *data = dir ? cli_need(c, "data") : NULL;
	if (!data)
		return CLI_EXIT_USAGE;
	uint64_t batch;
	if (!cli_u64(c, "batch", 10000, 1, 10000000, &batch))
		return CLI_EXIT_USAGE;
	ann_error err = {0};
	ann_writer *w = NULL;
	ann_vector_reader *r = NULL;
	int64_t *ids = NULL;
	size_t nids = 0;
	float *buf = NULL;
	int ret = CLI_EXIT_FAIL;
	cli_progress_state ps;
	cli_progress_init(&ps, cli_flag(c, "quiet"));
	if (ann_vector_reader_open(data, &r, &err) < 0)
		goto out;
	if (cli_get(c, "ids") && read_ids(cli_get(c, "ids"), &ids, &nids, &err) < 0)
		goto out;
	uint64_t n;
	uint32_t dim;
	ann_dtype dt;
	ann_vector_reader_shape(r, &n, &dim, &dt);
	if (ids && nids != n) {
		cli_err(&err, ANN_E_BADINPUT, "%s: %zu ids for %llu vectors of %s", cli_get(c, "ids"), nids,
			(unsigned long long)n, data);
		goto out;
	}
	if (ann_writer_open(dir, &w, &err) < 0)
		goto out;
	ann_index_info info;
	if (ann_writer_get_info(w, &info, &err) < 0)
		goto out;
	size_t d = dim;
	if (d != info.dim) {
		cli_err(&err, ANN_E_BADINPUT, "%s: vectors of dimension %zu, but the index %s has dimension %u", data,
			d, dir, info.dim);
		goto out;
	}
	if (!insert_type_ok(dt, info.encoding)) {
		cli_err(&err, ANN_E_BADINPUT, "%s: %s elements do not fit the %s index %s (it takes %s)", data,
			dtype_name(dt), ann_encoding_name(info.encoding), dir,
			info.encoding == ANN_ENC_U8   ? "u8 files: .u8bin, .bvecs"
			: info.encoding == ANN_ENC_I8 ? "i8 files: .i8bin"
						      : "f32, u8 or i8 files");
		goto out;
	}
	buf = malloc(batch * d * sizeof(float));
	if (!buf) {
		cli_err(&err, ANN_E_NOMEM, "out of memory for a batch of %llu", (unsigned long long)batch);
		goto out;
	}
	uint64_t done = 0, t0 = cli_now_ns();
	while (done < n) {
		int64_t got = ann_vector_reader_read_f32(r, buf, (size_t)CLI_MIN(batch, n - done), &err);
		if (got <= 0) {
			if (got == 0)
				cli_err(&err, ANN_E_BADINPUT, "%s: ends early", data);
			goto out;
		}
		if (ann_insert(w, buf, (size_t)got, (uint32_t)d, ids ? ids + done : NULL, cli_flag(c, "upsert"), NULL,
			       &err) < 0) {
			cli_err_prefix(&err, err.code, "after %llu committed vectors", (unsigned long long)done);
			goto out;
		}
		done += (uint64_t)got;
		cli_progress(&ps, "insert", done, n);
	}
	double secs = (double)(cli_now_ns() - t0) / 1e9;
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_int(&j, "inserted", (long long)done);
		cli_json_num(&j, "seconds", secs);
		cli_json_num(&j, "vectors_per_second", secs > 0 ? (double)done / secs : 0);
		cli_json_end(&j);
	} else {
		printf("inserted %llu vectors in %.2fs (%.0f/s)\n", (unsigned long long)done, secs,
		       secs > 0 ? (double)done / secs : 0);
	}
	ret = 0;
out:
	if (ret)
		cli_fail(c, &err);
	free(buf);
	free(ids);
	ann_vector_reader_close(r);
	ann_writer_close(w);
	return ret;
}

cli_cmd cmd_insert = {"insert", "insert vectors without rebuilding (visible once each batch commits)",
		      "--index DIR --data FILE [--ids FILE] [--upsert] [--batch N]", insert_opts, run_insert};

static cli_opt delete_opts[] = {
	{"index", "DIR", "index directory (required)", NULL},
	{"ids", "FILE", "ids to delete (ivecs or ibin) (required)", NULL},
	{"json", NULL, "print a JSON summary", NULL},
	{NULL, NULL, NULL, NULL},
};

static int run_delete(cli_cmd *c)
{
	const char *dir = cli_need(c, "index");
	const char *idp = dir ? cli_need(c, "ids") : NULL;
	if (!idp)
		return CLI_EXIT_USAGE;
	ann_error err = {0};
	int64_t *ids = NULL;
	size_t n = 0;
	ann_writer *w = NULL;
	uint64_t deleted = 0;
	int ret = CLI_EXIT_FAIL;
	if (read_ids(idp, &ids, &n, &err) < 0 || ann_writer_open(dir, &w, &err) < 0 ||
	    ann_delete(w, ids, n, &deleted, &err) < 0)
		goto out;
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_int(&j, "requested", (long long)n);
		cli_json_int(&j, "deleted", (long long)deleted);
		cli_json_end(&j);
	} else {
		printf("deleted %llu of %zu ids (the others did not exist)\n", (unsigned long long)deleted, n);
	}
	ret = 0;
out:
	if (ret)
		cli_fail(c, &err);
	free(ids);
	ann_writer_close(w);
	return ret;
}

cli_cmd cmd_delete = {"delete", "delete vectors by id (never returned once the delete commits)",
		      "--index DIR --ids FILE", delete_opts, run_delete};

static cli_opt compact_opts[] = {
	{"index", "DIR", "index directory (required)", NULL},
	{"split-limit", "N", "split partitions grown past N vectors (default 4x the mean)", NULL},
	{"json", NULL, "print a JSON summary", NULL},
	{NULL, NULL, NULL, NULL},
};

static int run_compact(cli_cmd *c)
{
	const char *dir = cli_need(c, "index");
	if (!dir)
		return CLI_EXIT_USAGE;
	uint64_t limit;
	if (!cli_u64(c, "split-limit", 0, 0, UINT64_MAX, &limit))
		return CLI_EXIT_USAGE;
	ann_error err = {0};
	ann_writer *w = NULL;
	ann_compact_stats st;
	if (ann_writer_open(dir, &w, &err) < 0 || ann_compact(w, limit, &st, &err) < 0) {
		ann_writer_close(w);
		return cli_fail(c, &err);
	}
	ann_writer_close(w);
	if (cli_flag(c, "json")) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_int(&j, "partitions_rewritten", st.partitions_rewritten);
		cli_json_int(&j, "partitions_split", st.partitions_split);
		cli_json_int(&j, "deltas_merged", (long long)st.deltas_merged);
		cli_json_int(&j, "tombstones_applied", (long long)st.tombstones_applied);
		cli_json_int(&j, "bytes_written", (long long)st.bytes_written);
		cli_json_int(&j, "bytes_freed", (long long)st.bytes_freed);
		cli_json_num(&j, "seconds", st.seconds);
		cli_json_int(&j, "directions_refit", st.directions_refit);
		cli_json_end(&j);
	} else {
		printf("compacted: %u partitions rewritten, %u split, %llu inserted vectors merged, %llu deleted "
		       "removed, %.1f MiB written, %.1f MiB freed, %.2fs\n",
		       st.partitions_rewritten, st.partitions_split, (unsigned long long)st.deltas_merged,
		       (unsigned long long)st.tombstones_applied, (double)st.bytes_written / 1048576.0,
		       (double)st.bytes_freed / 1048576.0, st.seconds);
		if (st.directions_refit)
			printf("directional probe order refitted for %u partitions\n", st.directions_refit);
	}
	return 0;
}

cli_cmd cmd_compact = {"compact", "merge inserts and deletes into rewritten blocks (copy-on-write)",
		       "--index DIR [--split-limit N]", compact_opts, run_compact};

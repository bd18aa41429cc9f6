/* SPDX-License-Identifier: MIT */
/*
 * build_part.c: partbuild (dist.h), the build pipeline with a given router
 * and vectors routed by the caller, which a rank of a distributed build
 * runs; and the DIR.tmp.* directories such a build works in (build.c,
 * invariant 4).
 *
 * Invariants:
 *  1. A part is built in DIR.tmp.<pid> holding BUILD_MARKER (pid and start
 *     time) and appears by a rename; a later build removes every such
 *     directory whose process is gone. Nothing without a marker is touched.
 *  2. Partitions that receive nothing get no directory entry.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "build_int.h"
#include "dist.h"
#include "distance.h"

int build_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Start time of process pid (clock ticks since boot, /proc/PID/stat field
 * 22), or 0 when unknown. */
static unsigned long long proc_start(long pid)
{
	char p[64], buf[1024];
	snprintf(p, sizeof p, "/proc/%ld/stat", pid);
	FILE *f = fopen(p, "re");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	char *s = strrchr(buf, ')'); /* the command name may hold spaces */
	if (!s)
		return 0;
	int field = 2;
	char *save = NULL;
	for (char *t = strtok_r(s + 1, " ", &save); t; t = strtok_r(NULL, " ", &save))
		if (++field == 22)
			return strtoull(t, NULL, 10);
	return 0;
}

/* The marker of a DIR.tmp.* directory (a distributed rank's part, built
 * without a resumable state): its pid and start time, so that a later build
 * removes it once that process is gone. */
static int write_marker(const char *tmpdir, ann_error *err)
{
	char p[4200], line[128];
	snprintf(p, sizeof p, "%s/%s", tmpdir, BUILD_MARKER);
	int fd = ann_create_new(p, err);
	if (fd < 0)
		return fd;
	long pid = (long)getpid();
	int len = snprintf(line, sizeof line, "annann build pid %ld start %llu\n", pid, proc_start(pid));
	int rc = ann_pwrite_all(fd, line, (size_t)len, 0, p, err);
	close(fd);
	return rc;
}

/* Removes what killed builds of index_dir left: every "index_dir.tmp.*"
 * directory (not a link) of ours holding a marker whose process is gone. */
void build_remove_stale_temps(const char *index_dir, const ann_build_opts *o)
{
	size_t len = strlen(index_dir) + 8;
	char *a = ann_malloc(len), *b = ann_malloc(len);
	if (!a || !b)
		goto out;
	snprintf(a, len, "%s.tmp.", index_dir);
	snprintf(b, len, "%s.tmp.", index_dir);
	const char *parent = dirname(a), *prefix = basename(b);
	size_t plen = strlen(prefix);
	DIR *d = opendir(parent);
	if (!d)
		goto out;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (strncmp(e->d_name, prefix, plen) != 0)
			continue;
		char *end;
		long pid = strtol(e->d_name + plen, &end, 10);
		if (pid <= 0 || (*end && *end != '.') || pid == (long)getpid())
			continue;
		char path[4200], mp[4300], line[128] = "";
		/* as the user named it: "idx.tmp.1234", not "./idx.tmp.1234" */
		if (strcmp(parent, ".") == 0 && strncmp(index_dir, "./", 2) != 0)
			snprintf(path, sizeof path, "%s", e->d_name);
		else
			snprintf(path, sizeof path, "%s/%s", parent, e->d_name);
		struct stat st;
		if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
			continue;
		snprintf(mp, sizeof mp, "%s/%s", path, BUILD_MARKER);
		int fd = open(mp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			continue; /* not an annann build temporary: never touched */
		ssize_t n = read(fd, line, sizeof line - 1);
		close(fd);
		line[n > 0 ? n : 0] = 0;
		long mpid;
		unsigned long long mstart;
		/* A build killed between creating the marker and writing it leaves it
		 * empty: the marker's name still says "ours", the directory's name
		 * gives the pid, and only the pid-reuse check is lost. */
		if (line[0] == 0) {
			mpid = pid;
			mstart = 0;
		} else if (sscanf(line, "annann build pid %ld start %llu", &mpid, &mstart) != 2 || mpid != pid) {
			continue;
		}
		bool gone = kill((pid_t)pid, 0) != 0 && errno == ESRCH;
		/* pid reuse: alive, but started at another time than the builder */
		if (!gone && mstart && proc_start(pid) && proc_start(pid) != mstart)
			gone = true;
		if (!gone)
			continue; /* a build still running */
		if (nftw(path, build_rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0)
			ann_router_log(o, "build: removed stale temporary %s from a killed build (process %ld is gone)",
				       path, pid);
	}
	closedir(d);
out:
	ann_free(a);
	ann_free(b);
}

/* ---- partbuild (dist.h): a build with a given router and routed vectors ---
 * The ann_build pipeline without its sample and train phases: the caller
 * gives the router and adds each vector to a partition it chose (a rank of
 * a distributed build adds what the shuffle brought it). pack_all skips the
 * partitions that received nothing, so they get no directory entry. */

struct ann_partbuild {
	build b;
	ann_build_opts o;   /* the caller's options, partitions resolved */
	char *index_dir;
	uint32_t rank, ranks;
	uint32_t user_parts; /* the caller's o->partitions (0: resolved from n or from the router) */
	uint8_t *conv;      /* one vector converted to floats (and back) */
	uint64_t t0;
};

void ann_partbuild_abort(ann_partbuild *pb)
{
	if (!pb)
		return;
	build *b = &pb->b;
	ann_spill_close(b->spill);
	ann_store_close(b->store);
	if (b->tmpdir)
		nftw(b->tmpdir, build_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	ann_router_free(b->router);
	block_dict_free(b->dict);
	ann_rbq_free(b->rbq);
	ann_free(b->dict_bytes);
	ann_vreader_close(b->in);
	ann_free(b->tmpdir);
	ann_free(b->spill_path);
	ann_free(pb->index_dir);
	ann_free(pb->conv);
	ann_free(pb);
}

int ann_partbuild_open(const char *data_path, const char *index_dir, const ann_build_opts *o, uint32_t rank,
		       uint32_t ranks, ann_partbuild **out, ann_error *err)
{
	*out = NULL;
	ann_blas_single();
	if (!data_path || !index_dir || !*index_dir || !o || (ranks ? rank >= ranks : rank != 0))
		return ann_err(err, ANN_E_INVAL, "partbuild: data path, index directory and rank < ranks are required");
	if (o->mem_bytes < ((size_t)16 << 20))
		return ann_err(err, ANN_E_BUDGET, "build: a memory budget of %zu bytes is below the 16 MiB minimum",
			       o->mem_bytes);
	struct stat st;
	if (stat(index_dir, &st) == 0)
		return ann_err(err, ANN_E_EXISTS, "%s: already exists; remove it or choose another directory", index_dir);
	ann_partbuild *pb = ann_calloc(1, sizeof *pb);
	if (!pb)
		return ann_err(err, ANN_E_NOMEM, "build: out of memory");
	build *b = &pb->b;
	pb->o = *o;
	pb->o.sample = 0;
	b->o = &pb->o;
	b->data_path = data_path;
	b->skip_empty = true;
	pb->rank = rank;
	pb->ranks = ranks;
	pb->user_parts = o->partitions;
	pb->t0 = ann_now_ns();
	int rc;
	pb->index_dir = ann_malloc(strlen(index_dir) + 1);
	if (!pb->index_dir) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	strcpy(pb->index_dir, index_dir);
	build_remove_stale_temps(index_dir, o);
	ANN_CHECK(rc, ann_vreader_open(data_path, &b->in, err));
	b->n = ann_vreader_count(b->in);
	b->d = ann_vreader_dim(b->in);
	b->in_type = ann_vreader_dtype(b->in);
	ANN_CHECK(rc, build_resolve_options(b, err));
	pb->o.partitions = b->nparts;
	pb->conv = ann_malloc((size_t)b->d * sizeof(float));
	if (!pb->conv) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	{
		char *tmp;
		ANN_CHECK(rc, ann_create_temp(index_dir, true, &tmp, err));
		b->tmpdir = tmp;
	}
	ANN_CHECK(rc, write_marker(b->tmpdir, err));
	size_t plen = strlen(b->tmpdir) + sizeof BUILD_MARKER + 16;
	b->spill_path = ann_malloc(plen);
	if (!b->spill_path) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	snprintf(b->spill_path, plen, "%s/spill.tmp", b->tmpdir);
	ann_store_opts so;
	ann_store_opts_init(&so);
	so.kind = o->store;
	so.create = true;
	so.writable = true;
	ANN_CHECK(rc, ann_store_open(b->tmpdir, &so, &b->store, err));
	*out = pb;
	return ANN_OK;
fail:
	ann_partbuild_abort(pb);
	return rc;
}

void ann_partbuild_shape(const ann_partbuild *pb, uint64_t *n, uint32_t *dim, ann_dtype *in_type, uint32_t *nparts,
			 uint32_t *copies, ann_encoding *enc)
{
	*n = pb->b.n;
	*dim = pb->b.d;
	*in_type = pb->b.in_type;
	*nparts = pb->b.nparts;
	*copies = pb->b.copies;
	*enc = pb->b.enc;
}

int ann_partbuild_sample(ann_partbuild *pb, uint64_t first, uint64_t count, uint64_t want, uint64_t seed,
			 float *out, ann_error *err)
{
	build *b = &pb->b;
	if (first > b->n || count > b->n - first || want > count)
		return ann_err(err, ANN_E_INVAL, "partbuild: sample of %llu among vectors %llu..+%llu of %llu",
			       (unsigned long long)want, (unsigned long long)first, (unsigned long long)count,
			       (unsigned long long)b->n);
	ann_rng rng;
	ann_rng_seed(&rng, seed);
	uint64_t taken;
	return build_sample_range(b, &rng, first, count, want, out, &taken, err);
}

int ann_partbuild_set_router(ann_partbuild *pb, ann_router_kind kind, const uint8_t *blob, size_t len,
			     uint32_t route_ef, size_t caller_bytes, ann_error *err)
{
	build *b = &pb->b;
	if (b->router)
		return ann_err(err, ANN_E_INVAL, "partbuild: the router is already set");
	ANN_TRY(ann_router_load(kind, blob, len, b->d, pb->o.metric, &b->router, err));
	b->router->route_ef = route_ef;
	pb->o.router = kind;
	if (b->router->ops->observe) {
		ann_router_free(b->router);
		b->router = NULL;
		return ann_err(err, ANN_E_UNSUPPORTED, "the %s router learns from the routed vectors during the build; "
			       "a build with a given router takes kmeans, nlsh, joint or soft", ann_router_name(kind));
	}
	if (b->router->nparts != b->nparts) {
		uint32_t rp = b->router->nparts;
		if (pb->user_parts || rp > b->n || rp < b->copies) {
			ann_router_free(b->router);
			b->router = NULL;
			if (pb->user_parts)
				return ann_err(err, ANN_E_INVAL, "the router names %u partitions, the options ask for %u", rp,
					       pb->user_parts);
			return ann_err(err, ANN_E_INVAL, "the router names %u partitions; %s holds %llu vectors and each is "
				       "stored %u times", rp, b->data_path, (unsigned long long)b->n, b->copies);
		}
		b->nparts = rp;
		pb->o.partitions = b->nparts;
	}
	size_t router = b->router->ops->ram_bytes(b->router), fixed = router + caller_bytes + ((size_t)2 << 20);
	if (pb->o.mem_bytes < fixed + ((size_t)1 << 20))
		return ann_err(err, ANN_E_BUDGET, "the router takes %zu bytes and the read and shuffle buffers %zu; "
			       "the budget of %zu leaves less than 1 MiB for the spill buffer", router, caller_bytes,
			       pb->o.mem_bytes);
	size_t spill_mem = pb->o.mem_bytes - fixed;
	return ann_spill_open(b->spill_path, b->nparts, b->pay_bytes, spill_mem, 0, &b->spill, err);
}

int ann_partbuild_read_route(ann_partbuild *pb, uint64_t first, size_t n, void *raw, uint32_t *parts,
			     ann_error *err)
{
	build *b = &pb->b;
	if (!b->router)
		return ann_err(err, ANN_E_INVAL, "partbuild: no router yet");
	if (first > b->n || n > b->n - first)
		return ann_err(err, ANN_E_INVAL, "partbuild: vectors %llu..+%zu of %llu", (unsigned long long)first, n,
			       (unsigned long long)b->n);
	float *f = ann_malloc((n ? n : 1) * b->d * sizeof(float));
	if (!f)
		return ann_err(err, ANN_E_NOMEM, "build: out of memory for %zu vectors", n);
	int rc = ANN_OK;
	ANN_CHECK(rc, ann_vreader_seek(b->in, first, err));
	for (size_t i = 0; i < n;) {
		int64_t got = build_read_chunk(b, (uint8_t *)raw + i * b->d * ann_dtype_size(b->in_type), n - i, first + i,
					 f + i * b->d, err);
		if (got < 0) {
			rc = (int)got;
			goto fail;
		}
		i += (size_t)got;
	}
	const ann_assign_rule sp = {.copies = b->copies, .eps = b->o->replica_eps, .soar_lambda = b->o->soar_lambda};
	ANN_CHECK(rc, b->router->ops->assign(b->router, f, n, &sp, b->o->threads, parts, err));
	for (size_t i = 0; i < n * b->copies; i++)
		if (parts[i] != UINT32_MAX && parts[i] >= b->nparts) {
			rc = ann_err(err, ANN_E_INVAL, "build: router returned partition %u of %u", parts[i], b->nparts);
			goto fail;
		}
	ANN_CHECK(rc, build_progress(b, "route", first + n, b->n, err));
fail:
	ann_free(f);
	return rc;
}

int ann_partbuild_add(ann_partbuild *pb, uint32_t part, int64_t id, const void *raw, ann_error *err)
{
	build *b = &pb->b;
	if (!b->spill)
		return ann_err(err, ANN_E_INVAL, "partbuild: no router yet");
	if (part >= b->nparts || id < 0 || (uint64_t)id >= b->n)
		return ann_err(err, ANN_E_INVAL, "partbuild: vector %lld to partition %u (the input has %llu vectors, "
			       "the router %u partitions)", (long long)id, part, (unsigned long long)b->n, b->nparts);
	const void *pay = raw;
	if (b->pay_type != b->in_type || b->o->metric == ANN_METRIC_COSINE) {
		build_to_float(b, raw, 1, (float *)pb->conv);
		pay = pb->conv;
	}
	return ann_spill_add(b->spill, part, id, pay, err);
}

int ann_partbuild_finish(ann_partbuild *pb, uint64_t vectors, ann_error *err)
{
	build *b = &pb->b;
	int rc;
	if (!b->spill) {
		rc = ann_err(err, ANN_E_INVAL, "partbuild: no router yet");
		goto fail;
	}
	ANN_CHECK(rc, ann_spill_finish(b->spill, err));
	uint64_t t0 = ann_now_ns();
	ANN_CHECK(rc, build_pack_all(b, err));
	b->t_pack = build_secs_since(t0);
	ann_spill_close(b->spill);
	b->spill = NULL;
	uint64_t input_n = b->n;
	b->n = vectors;
	ANN_CHECK(rc, build_publish_meta(b, build_secs_since(pb->t0), err));
	if (pb->ranks > 0) {
		ann_store_txn *txn;
		ANN_CHECK(rc, ann_store_begin(b->store, &txn, err));
		ann_cat_txn *t = ann_store_txn_catalog(txn);
		rc = ann_catalog_meta_put_u64(t, "dist.rank", pb->rank, err);
		if (rc >= 0)
			rc = ann_catalog_meta_put_u64(t, "dist.ranks", pb->ranks, err);
		/* ids are input positions: a part's run to the input's count, not to
		 * the vectors it holds (verify's bound) */
		if (rc >= 0)
			rc = ann_catalog_meta_put_u64(t, "index.next_id", input_n, err);
		if (rc < 0) {
			ann_store_abort(txn);
			goto fail;
		}
		ANN_CHECK(rc, ann_store_commit(txn, err));
	}
	ann_store_close(b->store);
	b->store = NULL;
	snprintf(b->spill_path, strlen(b->tmpdir) + sizeof BUILD_MARKER + 16, "%s/%s", b->tmpdir, BUILD_MARKER);
	if (unlink(b->spill_path) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot remove", b->spill_path);
		goto fail;
	}
	if (renameat2(AT_FDCWD, b->tmpdir, AT_FDCWD, pb->index_dir, RENAME_NOREPLACE) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot rename the finished index from %s", pb->index_dir, b->tmpdir);
		goto fail;
	}
	ann_free(b->tmpdir);
	b->tmpdir = NULL; /* renamed: nothing for abort to remove */
	{
		size_t len = strlen(pb->index_dir) + 8;
		char *parent = ann_malloc(len);
		if (!parent) {
			rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
			goto fail;
		}
		snprintf(parent, len, "%s/..", pb->index_dir);
		rc = ann_fsync_dir(parent, err);
		ann_free(parent);
	}
fail:
	ann_partbuild_abort(pb);
	return rc;
}

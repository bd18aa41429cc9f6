/* SPDX-License-Identifier: MIT */
/*
 * build_state.c: the saved state of a resumable build (see build_state.h;
 * layout in docs/FORMAT.md "build state").
 *
 * Invariants:
 *  1. One builder per state directory: the builder holds an flock on
 *     "lock" for its whole life; the kernel drops it when the process dies,
 *     however it dies, so a stale state is one whose lock nobody holds.
 *  2. A unit file exists whole or not at all: written under "name.tmp",
 *     fsynced, renamed, the directory fsynced; its XXH64 trailer catches a
 *     disk that lost it anyway (ANN_E_CORRUPT, never a silent wrong build).
 *  3. The route log only grows by whole records, each fdatasynced before the
 *     chunk counts as routed; reopening drops a torn tail (a record cut by a
 *     kill or a full disk) and anything after it.
 *  4. "state" (the fingerprint) is written before any unit, so a directory
 *     without it holds nothing worth keeping.
 *  5. Nothing outside the state directory is touched, nor anything inside a
 *     directory that is not a build state of this user (a link, another
 *     user's directory, or one without our lock file).
 */
#include "build_state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "index_meta.h"

#define BST_LOCK "lock"
#define BST_STATE "state"
#define BST_LOG "route.log"
#define BST_VERSION 1u               /* of the state directory's layout */
#define UNIT_MAGIC "ANNBSU01"
#define UNIT_HEAD 32u                /* magic, payload length, aux, secs */
#define LOG_HEAD 16u                 /* first, count, copies */
#define FP_FIXED 48u                 /* state payload before the options text */
#define FP_PAGES 16u

struct ann_bstate {
	char *dir;
	int lock_fd;
	int log_fd;
	uint64_t log_end;    /* bytes of valid records */
	uint64_t *log_first; /* per record: first vector */
	uint64_t *log_off;   /* per record: byte offset */
	size_t log_n, log_cap;
};

char *ann_bstate_dir_name(const char *index_dir)
{
	size_t n = strlen(index_dir) + 16;
	char *p = ann_malloc(n);
	if (p)
		snprintf(p, n, "%s.build-state", index_dir);
	return p;
}

char *ann_bstate_path(const ann_bstate *st, const char *name)
{
	size_t n = strlen(st->dir) + strlen(name) + 2;
	char *p = ann_malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", st->dir, name);
	return p;
}

int ann_bstate_fingerprint_data(const char *data_path, ann_bstate_fp *fp, ann_error *err)
{
	int fd = open(data_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ann_err_sys(err, errno, "%s: cannot open", data_path);
	struct stat sb;
	if (fstat(fd, &sb) != 0) {
		int rc = ann_err_sys(err, errno, "%s: cannot stat", data_path);
		close(fd);
		return rc;
	}
	fp->data_size = (uint64_t)sb.st_size;
	fp->data_mtime_s = (int64_t)sb.st_mtim.tv_sec;
	fp->data_mtime_ns = (uint32_t)sb.st_mtim.tv_nsec;
	/* The header and FP_PAGES pages spread evenly over the file: a rewrite
	 * that keeps size and mtime (cp -p of other data) still shows. */
	XXH64_state_t *h = XXH64_createState();
	uint8_t *page = ann_malloc(4096);
	int rc = ANN_OK;
	if (!h || !page) {
		rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
		goto out;
	}
	XXH64_reset(h, 0);
	for (uint32_t i = 0; i <= FP_PAGES; i++) {
		uint64_t off = fp->data_size / (FP_PAGES + 1) * i / 4096 * 4096;
		ssize_t got = pread(fd, page, 4096, (off_t)off);
		if (got < 0) {
			rc = ann_err_sys(err, errno, "%s: cannot read at byte %llu", data_path, (unsigned long long)off);
			goto out;
		}
		XXH64_update(h, &off, sizeof off);
		XXH64_update(h, page, (size_t)got);
	}
	fp->data_hash = XXH64_digest(h);
out:
	XXH64_freeState(h);
	ann_free(page);
	close(fd);
	return rc;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Removes everything in the state directory but the lock file. */
static int clear_dir(ann_bstate *st, ann_error *err)
{
	DIR *d = opendir(st->dir);
	if (!d)
		return ann_err_sys(err, errno, "%s: cannot list", st->dir);
	int rc = ANN_OK;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(e->d_name, BST_LOCK) == 0)
			continue;
		char *p = ann_bstate_path(st, e->d_name);
		if (!p) {
			rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
			break;
		}
		if (nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT) {
			rc = ann_err_sys(err, errno, "%s: cannot remove", p);
			ann_free(p);
			break;
		}
		ann_free(p);
	}
	closedir(d);
	return rc;
}

static int write_all_fd(int fd, const void *p, size_t n, uint64_t *off, XXH64_state_t *h, const char *what,
			ann_error *err)
{
	if (h)
		XXH64_update(h, p, n);
	ANN_TRY(ann_pwrite_all(fd, p, n, *off, what, err));
	*off += n;
	return ANN_OK;
}

int ann_bstate_unit_put(ann_bstate *st, const char *name, const void *payload, size_t len, uint64_t aux,
			double secs, ann_error *err)
{
	size_t tl = strlen(name) + 8;
	char *tname = ann_malloc(tl);
	char *path = ann_bstate_path(st, name), *tmp = NULL;
	XXH64_state_t *h = XXH64_createState();
	int rc = ANN_OK, fd = -1;
	if (!tname || !path || !h) {
		rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
		goto out;
	}
	snprintf(tname, tl, "%s.tmp", name);
	tmp = ann_bstate_path(st, tname);
	if (!tmp) {
		rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
		goto out;
	}
	/* Inside our locked directory a leftover "name.tmp" is our own. */
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = ann_err_sys(err, errno, "%s: cannot create", tmp);
		goto out;
	}
	uint8_t head[UNIT_HEAD], tail[8];
	memcpy(head, UNIT_MAGIC, 8);
	ann_st64(head + 8, len);
	ann_st64(head + 16, aux);
	uint64_t sb;
	memcpy(&sb, &secs, 8);
	ann_st64(head + 24, sb);
	XXH64_reset(h, 0);
	uint64_t off = 0;
	ANN_CHECK(rc, write_all_fd(fd, head, sizeof head, &off, h, tmp, err));
	for (size_t done = 0; done < len;) { /* in 64 MiB pieces: pwrite caps one call near 2 GiB */
		size_t m = ANN_MIN(len - done, (size_t)64 << 20);
		ANN_CHECK(rc, write_all_fd(fd, (const uint8_t *)payload + done, m, &off, h, tmp, err));
		done += m;
	}
	ann_st64(tail, XXH64_digest(h));
	ANN_CHECK(rc, write_all_fd(fd, tail, sizeof tail, &off, NULL, tmp, err));
	if (fsync(fd) != 0) {
		rc = ann_err_sys(err, errno, "%s: fsync", tmp);
		goto fail;
	}
	close(fd);
	fd = -1;
	if (rename(tmp, path) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot rename to %s", tmp, path);
		goto fail;
	}
	ANN_CHECK(rc, ann_fsync_dir(st->dir, err));
fail:
out:
	if (fd >= 0) {
		close(fd);
		unlink(tmp);
	}
	XXH64_freeState(h);
	ann_free(tname);
	ann_free(tmp);
	ann_free(path);
	return rc;
}

int ann_bstate_unit_get(ann_bstate *st, const char *name, void **payload, size_t *len, uint64_t *aux,
			double *secs, ann_error *err)
{
	*payload = NULL;
	*len = 0;
	char *path = ann_bstate_path(st, name);
	if (!path)
		return ann_err(err, ANN_E_NOMEM, "build state: out of memory");
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		ann_free(path);
		return e == ENOENT ? 0 : ann_err_sys(err, e, "%s/%s: cannot open", st->dir, name);
	}
	uint8_t head[UNIT_HEAD], tail[8];
	uint8_t *body = NULL;
	int rc = ANN_OK;
	struct stat sb;
	if (fstat(fd, &sb) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot stat", path);
		goto fail;
	}
	if ((uint64_t)sb.st_size < UNIT_HEAD + 8 || ann_pread_all(fd, head, sizeof head, 0, path, err) < 0 ||
	    memcmp(head, UNIT_MAGIC, 8) != 0) {
		rc = ann_err(err, ANN_E_FORMAT, "%s: not a unit file of this build-state version (magic %s)", path,
			     UNIT_MAGIC);
		goto fail;
	}
	uint64_t n = ann_ld64(head + 8);
	if (n != (uint64_t)sb.st_size - UNIT_HEAD - 8 || n > SIZE_MAX) {
		rc = ann_err(err, ANN_E_CORRUPT, "%s: holds %lld bytes, its header says %llu of payload", path,
			     (long long)sb.st_size, (unsigned long long)n);
		goto fail;
	}
	body = ann_malloc(n ? (size_t)n : 1);
	if (!body) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for %llu bytes", path, (unsigned long long)n);
		goto fail;
	}
	ANN_CHECK(rc, ann_pread_all(fd, body, (size_t)n, UNIT_HEAD, path, err));
	ANN_CHECK(rc, ann_pread_all(fd, tail, 8, UNIT_HEAD + n, path, err));
	XXH64_state_t *h = XXH64_createState();
	if (!h) {
		rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
		goto fail;
	}
	XXH64_reset(h, 0);
	XXH64_update(h, head, sizeof head);
	XXH64_update(h, body, (size_t)n);
	uint64_t sum = XXH64_digest(h);
	XXH64_freeState(h);
	if (sum != ann_ld64(tail)) {
		rc = ann_err(err, ANN_E_CORRUPT, "%s: checksum mismatch (the disk lost part of it): run the build "
			     "with --restart", path);
		goto fail;
	}
	*payload = body;
	*len = (size_t)n;
	if (aux)
		*aux = ann_ld64(head + 16);
	if (secs) {
		uint64_t b = ann_ld64(head + 24);
		memcpy(secs, &b, 8);
	}
	close(fd);
	ann_free(path);
	return 1;
fail:
	ann_free(body);
	close(fd);
	ann_free(path);
	return rc;
}

/* ---- fingerprint ---------------------------------------------------------- */

static uint8_t *fp_encode(const ann_bstate_fp *fp, size_t *len)
{
	size_t ol = strlen(fp->options);
	uint8_t *b = ann_malloc(FP_FIXED + ol);
	if (!b)
		return NULL;
	ann_st32(b, BST_VERSION);
	ann_st32(b + 4, ANN_INDEX_FORMAT_MAJOR);
	ann_st32(b + 8, ANN_INDEX_FORMAT_MINOR);
	ann_st32(b + 12, 0);
	ann_st64(b + 16, fp->data_size);
	ann_st64(b + 24, (uint64_t)fp->data_mtime_s);
	ann_st32(b + 32, fp->data_mtime_ns);
	ann_st32(b + 36, 0);
	ann_st64(b + 40, fp->data_hash);
	memcpy(b + FP_FIXED, fp->options, ol);
	*len = FP_FIXED + ol;
	return b;
}

/* Value of key in "key=value\n" lines, copied into v ("(none)" if absent). */
static void opt_value(const char *lines, size_t n, const char *key, size_t klen, char *v, size_t vcap)
{
	snprintf(v, vcap, "(none)");
	for (size_t i = 0; i < n;) {
		const char *e = memchr(lines + i, '\n', n - i);
		size_t l = e ? (size_t)(e - (lines + i)) : n - i;
		if (l > klen && memcmp(lines + i, key, klen) == 0 && lines[i + klen] == '=') {
			snprintf(v, vcap, "%.*s", (int)(l - klen - 1), lines + i + klen + 1);
			return;
		}
		i += l + 1;
	}
}

/* Names the first difference between the saved fingerprint and fp into why;
 * returns false when they agree. */
static bool fp_differs(const uint8_t *saved, size_t len, const ann_bstate_fp *fp, char *why, size_t wcap)
{
	if (ann_ld64(saved + 16) != fp->data_size) {
		snprintf(why, wcap, "the data file changed (size %llu -> %llu bytes)",
			 (unsigned long long)ann_ld64(saved + 16), (unsigned long long)fp->data_size);
		return true;
	}
	if ((int64_t)ann_ld64(saved + 24) != fp->data_mtime_s || ann_ld32(saved + 32) != fp->data_mtime_ns) {
		snprintf(why, wcap, "the data file changed (modification time)");
		return true;
	}
	if (ann_ld64(saved + 40) != fp->data_hash) {
		snprintf(why, wcap, "the data file changed (content of its sampled pages)");
		return true;
	}
	const char *old = (const char *)saved + FP_FIXED, *cur = fp->options;
	size_t on = len - FP_FIXED, cn = strlen(cur);
	if (on == cn && memcmp(old, cur, on) == 0)
		return false;
	/* The first key whose value differs, in either list. */
	for (int pass = 0; pass < 2; pass++) {
		const char *a = pass ? old : cur;
		size_t an = pass ? on : cn;
		for (size_t i = 0; i < an;) {
			const char *e = memchr(a + i, '\n', an - i);
			size_t l = e ? (size_t)(e - (a + i)) : an - i;
			const char *eq = memchr(a + i, '=', l);
			if (eq) {
				size_t kl = (size_t)(eq - (a + i));
				char vo[128], vc[128], key[64];
				opt_value(old, on, a + i, kl, vo, sizeof vo);
				opt_value(cur, cn, a + i, kl, vc, sizeof vc);
				if (strcmp(vo, vc) != 0) {
					snprintf(key, sizeof key, "%.*s", (int)ANN_MIN(kl, sizeof key - 1), a + i);
					snprintf(why, wcap, "option %s changed (%s -> %s)", key, vo, vc);
					return true;
				}
			}
			i += l + 1;
		}
	}
	snprintf(why, wcap, "the options changed");
	return true;
}

/* ---- open, close ------------------------------------------------------------ */

static void say(void (*notice)(void *, const char *), void *ctx, const char *fmt, ...) ANN_PRINTF(3, 4);
static void say(void (*notice)(void *, const char *), void *ctx, const char *fmt, ...)
{
	if (!notice)
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	notice(ctx, line);
}

int ann_bstate_open(const char *index_dir, const ann_bstate_fp *fp, bool restart,
		    void (*notice)(void *ctx, const char *line), void *notice_ctx, ann_bstate **out, bool *resumed,
		    ann_error *err)
{
	*out = NULL;
	*resumed = false;
	ann_bstate *st = ann_calloc(1, sizeof *st);
	if (!st)
		return ann_err(err, ANN_E_NOMEM, "build state: out of memory");
	st->lock_fd = -1;
	st->log_fd = -1;
	int rc = ANN_OK;
	uint8_t *saved = NULL, *mine = NULL;
	st->dir = ann_bstate_dir_name(index_dir);
	if (!st->dir) {
		rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
		goto fail;
	}
	bool fresh = false;
	struct stat sb;
	if (mkdir(st->dir, 0755) == 0) {
		fresh = true;
	} else if (errno != EEXIST) {
		rc = ann_err_sys(err, errno, "%s: cannot create", st->dir);
		goto fail;
	} else if (lstat(st->dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != geteuid()) {
		rc = ann_err(err, ANN_E_EXISTS, "%s: exists and is not a build state directory of this user; "
			     "remove it or choose another index directory", st->dir);
		goto fail;
	}
	char *lp = ann_bstate_path(st, BST_LOCK);
	if (!lp) {
		rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
		goto fail;
	}
	if (!fresh && access(lp, F_OK) != 0) {
		/* Ours always hold the lock file (created right after mkdir). An
		 * empty directory is what a build killed in between leaves. */
		DIR *d = opendir(st->dir);
		int entries = 0;
		for (struct dirent *e; d && (e = readdir(d)) != NULL;)
			entries += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
		if (d)
			closedir(d);
		if (entries) {
			ann_free(lp);
			rc = ann_err(err, ANN_E_EXISTS, "%s: exists without a lock file, so it is not an annann build "
				     "state; remove it or choose another index directory", st->dir);
			goto fail;
		}
	}
	st->lock_fd = open(lp, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (st->lock_fd < 0) {
		rc = ann_err_sys(err, errno, "%s: cannot open", lp);
		ann_free(lp);
		goto fail;
	}
	if (flock(st->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		char who[128] = "";
		ssize_t n = pread(st->lock_fd, who, sizeof who - 1, 0);
		who[n > 0 ? n : 0] = 0;
		who[strcspn(who, "\n")] = 0;
		rc = errno == EWOULDBLOCK
			     ? ann_err(err, ANN_E_STATE, "%s: another build of this index is running (%s)", st->dir,
				       who[0] ? who : "lock held")
			     : ann_err_sys(err, errno, "%s: cannot lock", lp);
		ann_free(lp);
		goto fail;
	}
	{
		char line[64];
		int ll = snprintf(line, sizeof line, "annann build pid %ld\n", (long)getpid());
		if (ftruncate(st->lock_fd, 0) != 0 || ann_pwrite_all(st->lock_fd, line, (size_t)ll, 0, lp, err) < 0) {
			rc = ann_err_sys(err, errno, "%s: cannot write", lp);
			ann_free(lp);
			goto fail;
		}
	}
	ann_free(lp);
	size_t slen = 0, mlen = 0;
	if (!fresh) {
		void *pl = NULL;
		int got = ann_bstate_unit_get(st, BST_STATE, &pl, &slen, NULL, NULL, err);
		saved = pl;
		char why[512];
		if (restart) {
			if (got != 0)
				say(notice, notice_ctx, "%s: --restart: the saved build state is thrown away", st->dir);
		} else if (got == ANN_E_FORMAT || (got == 1 && (slen < FP_FIXED || ann_ld32(saved) != BST_VERSION ||
								ann_ld32(saved + 4) != ANN_INDEX_FORMAT_MAJOR ||
								ann_ld32(saved + 8) != ANN_INDEX_FORMAT_MINOR))) {
			if (got == 1)
				rc = ann_err(err, ANN_E_FORMAT, "%s: saved by another annann version (build state %u, index "
					     "format %u.%u; this one writes %u, %u.%u): rerun with --restart to throw it away",
					     st->dir, ann_ld32(saved), ann_ld32(saved + 4), ann_ld32(saved + 8), BST_VERSION,
					     ANN_INDEX_FORMAT_MAJOR, ANN_INDEX_FORMAT_MINOR);
			else
				rc = ann_err(err, ANN_E_FORMAT, "%s: saved by another annann version (state file of another "
					     "layout): rerun with --restart to throw it away", st->dir);
			goto fail;
		} else if (got < 0) {
			goto fail;
		} else if (got == 1 && fp_differs(saved, slen, fp, why, sizeof why)) {
			say(notice, notice_ctx, "%s: %s: the saved state is invalid, starting over", st->dir, why);
		} else if (got == 1) {
			*resumed = true;
		}
		if (!*resumed)
			ANN_CHECK(rc, clear_dir(st, err));
	}
	if (!*resumed) {
		mine = fp_encode(fp, &mlen);
		if (!mine) {
			rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
			goto fail;
		}
		ANN_CHECK(rc, ann_bstate_unit_put(st, BST_STATE, mine, mlen, 0, 0, err));
	}
	ann_free(saved);
	ann_free(mine);
	*out = st;
	return ANN_OK;
fail:
	ann_free(saved);
	ann_free(mine);
	ann_bstate_close(st);
	return rc;
}

void ann_bstate_close(ann_bstate *st)
{
	if (!st)
		return;
	if (st->log_fd >= 0)
		close(st->log_fd);
	if (st->lock_fd >= 0)
		close(st->lock_fd); /* drops the flock */
	ann_free(st->log_first);
	ann_free(st->log_off);
	ann_free(st->dir);
	ann_free(st);
}

/* Removes dir and the entries in it without allocating (getdents64 into a
 * stack buffer, unlinkat, empty subdirectories with AT_REMOVEDIR): a build
 * that has published its index must not leave its state, the spill as
 * large as the data among it, because memory ran out (opendir and nftw
 * allocate). 0 when dir is gone, -1 when something stays (a subdirectory
 * with entries: nftw's job). */
static int rm_flat(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	char buf[4096] __attribute__((aligned(8)));
	for (bool removed = true; removed;) {
		removed = false;
		if (lseek(fd, 0, SEEK_SET) != 0)
			break;
		ssize_t n;
		while ((n = getdents64(fd, buf, sizeof buf)) > 0)
			for (ssize_t off = 0; off < n;) {
				const struct dirent64 *e = (const struct dirent64 *)(void *)(buf + off);
				off += e->d_reclen;
				if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, BST_LOCK))
					continue;
				if (unlinkat(fd, e->d_name, 0) == 0 ||
				    ((errno == EISDIR || errno == EPERM) && unlinkat(fd, e->d_name, AT_REMOVEDIR) == 0))
					removed = true;
			}
	}
	unlinkat(fd, BST_LOCK, 0); /* the lock last, with the directory */
	close(fd);
	return rmdir(dir) == 0 || errno == ENOENT ? 0 : -1;
}

void ann_bstate_remove(ann_bstate *st)
{
	if (!st)
		return;
	/* Still under the lock: the lock file goes last, with the directory. */
	if (rm_flat(st->dir) != 0)
		nftw(st->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	ann_error e = {0};
	ann_fsync_dir(st->dir, &e); /* its parent: the directory is gone */
	ann_bstate_close(st);
}

void ann_bstate_drop_published(const char *index_dir, void (*notice)(void *ctx, const char *line), void *notice_ctx)
{
	ann_bstate st = {.lock_fd = -1, .log_fd = -1, .dir = ann_bstate_dir_name(index_dir)};
	char *lp = st.dir ? ann_bstate_path(&st, BST_LOCK) : NULL;
	char *ip = st.dir ? ann_bstate_path(&st, "index") : NULL;
	struct stat sb;
	if (!lp || !ip || lstat(st.dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != geteuid() ||
	    lstat(ip, &sb) == 0)
		goto out;
	st.lock_fd = open(lp, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (st.lock_fd < 0 || flock(st.lock_fd, LOCK_EX | LOCK_NB) != 0)
		goto out;
	if (nftw(st.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0)
		say(notice, notice_ctx, "%s: removed the state of a build that had published %s", st.dir, index_dir);
out:
	if (st.lock_fd >= 0)
		close(st.lock_fd);
	ann_free(lp);
	ann_free(ip);
	ann_free(st.dir);
}

/* ---- route log ------------------------------------------------------------ */

static int log_push(ann_bstate *st, uint64_t first, uint64_t off, ann_error *err)
{
	if (st->log_n == st->log_cap) {
		size_t nc = st->log_cap ? 2 * st->log_cap : 256;
		uint64_t *f = ann_realloc(st->log_first, nc * sizeof *f);
		if (!f)
			return ann_err(err, ANN_E_NOMEM, "build state: out of memory for the route log index");
		st->log_first = f;
		uint64_t *o = ann_realloc(st->log_off, nc * sizeof *o);
		if (!o)
			return ann_err(err, ANN_E_NOMEM, "build state: out of memory for the route log index");
		st->log_off = o;
		st->log_cap = nc;
	}
	st->log_first[st->log_n] = first;
	st->log_off[st->log_n] = off;
	st->log_n++;
	return ANN_OK;
}

int ann_bstate_log_open(ann_bstate *st, uint64_t *routed, ann_error *err)
{
	*routed = 0;
	char *p = ann_bstate_path(st, BST_LOG);
	if (!p)
		return ann_err(err, ANN_E_NOMEM, "build state: out of memory");
	int rc = ANN_OK;
	uint8_t *buf = NULL;
	st->log_fd = open(p, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (st->log_fd < 0) {
		rc = ann_err_sys(err, errno, "%s: cannot open", p);
		goto out;
	}
	struct stat sb;
	if (fstat(st->log_fd, &sb) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot stat", p);
		goto out;
	}
	uint64_t size = (uint64_t)sb.st_size, off = 0, next = 0;
	size_t cap = 0;
	/* Whole records, consecutive from vector 0, each with a good checksum;
	 * the first that is not ends the log. */
	while (off + LOG_HEAD + 8 <= size) {
		uint8_t head[LOG_HEAD];
		ANN_CHECK(rc, ann_pread_all(st->log_fd, head, sizeof head, off, p, err));
		uint64_t first = ann_ld64(head);
		uint32_t count = ann_ld32(head + 8), copies = ann_ld32(head + 12);
		uint64_t body = (uint64_t)count * copies * 4;
		if (first != next || count == 0 || copies == 0 || copies > 8 || off + LOG_HEAD + body + 8 > size)
			break;
		if (body + LOG_HEAD > cap) {
			cap = (size_t)body + LOG_HEAD;
			uint8_t *nb = ann_realloc(buf, cap);
			if (!nb) {
				rc = ann_err(err, ANN_E_NOMEM, "build state: out of memory");
				goto out;
			}
			buf = nb;
		}
		uint8_t tail[8];
		ANN_CHECK(rc, ann_pread_all(st->log_fd, buf, LOG_HEAD + (size_t)body, off, p, err));
		ANN_CHECK(rc, ann_pread_all(st->log_fd, tail, 8, off + LOG_HEAD + body, p, err));
		if (XXH64(buf, LOG_HEAD + (size_t)body, 0) != ann_ld64(tail))
			break;
		ANN_CHECK(rc, log_push(st, first, off, err));
		off += LOG_HEAD + body + 8;
		next = first + count;
	}
	if (off != size && ftruncate(st->log_fd, (off_t)off) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot drop a torn record at byte %llu", p, (unsigned long long)off);
		goto out;
	}
	st->log_end = off;
	*routed = next;
fail:
out:
	ann_free(buf);
	ann_free(p);
	return rc;
}

int ann_bstate_log_append(ann_bstate *st, uint64_t first, uint32_t count, uint32_t copies, const uint32_t *parts,
			  ann_error *err)
{
	size_t body = (size_t)count * copies * 4, n = LOG_HEAD + body + 8;
	uint8_t *b = ann_malloc(n);
	if (!b)
		return ann_err(err, ANN_E_NOMEM, "build state: out of memory for a route log record");
	ann_st64(b, first);
	ann_st32(b + 8, count);
	ann_st32(b + 12, copies);
	for (size_t i = 0; i < (size_t)count * copies; i++)
		ann_st32(b + LOG_HEAD + i * 4, parts[i]);
	ann_st64(b + LOG_HEAD + body, XXH64(b, LOG_HEAD + body, 0));
	int rc = ann_pwrite_all(st->log_fd, b, n, st->log_end, "route log", err);
	ann_free(b);
	ANN_TRY(rc);
	if (fdatasync(st->log_fd) != 0)
		return ann_err_sys(err, errno, "%s/%s: fdatasync", st->dir, BST_LOG);
	ANN_TRY(log_push(st, first, st->log_end, err));
	st->log_end += n;
	return ANN_OK;
}

int ann_bstate_log_read(ann_bstate *st, uint64_t first, uint32_t count, uint32_t copies, uint32_t *parts,
			ann_error *err)
{
	/* Records are sorted by first vector: binary search. */
	size_t lo = 0, hi = st->log_n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (st->log_first[mid] < first)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == st->log_n || st->log_first[lo] != first)
		return ann_err(err, ANN_E_CORRUPT, "%s/%s: no record starts at vector %llu", st->dir, BST_LOG,
			       (unsigned long long)first);
	uint8_t head[LOG_HEAD];
	ANN_TRY(ann_pread_all(st->log_fd, head, sizeof head, st->log_off[lo], "route log", err));
	if (ann_ld32(head + 8) != count || ann_ld32(head + 12) != copies)
		return ann_err(err, ANN_E_CORRUPT, "%s/%s: the record at vector %llu holds %u x %u, expected %u x %u",
			       st->dir, BST_LOG, (unsigned long long)first, ann_ld32(head + 8), ann_ld32(head + 12), count,
			       copies);
	size_t body = (size_t)count * copies * 4;
	uint8_t *b = ann_malloc(body);
	if (!b)
		return ann_err(err, ANN_E_NOMEM, "build state: out of memory");
	int rc = ann_pread_all(st->log_fd, b, body, st->log_off[lo] + LOG_HEAD, "route log", err);
	for (size_t i = 0; rc == ANN_OK && i < (size_t)count * copies; i++)
		parts[i] = ann_ld32(b + i * 4);
	ann_free(b);
	return rc;
}

/* SPDX-License-Identifier: MIT */
/*
 * store_file.c: the raw-file block store, one back end of the store layer
 * (store.c, through the ops of store_impl.h): blocks.dat with its header,
 * the free-space allocator, O_DIRECT writes and fdatasync, and its part of
 * verify and the space figures. Readers read it through the io reader
 * (ioreader.c). store_lmdb.c is the other back end.
 * Format: docs/FORMAT.md "blocks.dat"; catalog side: catalog.c.
 *
 * Publication protocol, block side (catalog.c states the catalog side):
 *  (1) blocks.dat starts with a 4096-byte header carrying the index id that
 *      meta "store.uuid" repeats; blocks sit at 4096-aligned offsets with
 *      4096-multiple lengths, written with O_DIRECT (buffered + fdatasync
 *      where the file system refuses O_DIRECT, reported in the space stats).
 *  (2) A block is written where no committed directory entry points: at the
 *      committed end or inside a free extent that is reusable (4); never over
 *      live data. ann_store_put_blocks calls fdatasync before it returns the
 *      offsets, so every block is durable before the catalog txn that points
 *      at it commits (ann_store_commit syncs again if anything is unsynced).
 *  (3) A rewritten or dropped block keeps its bytes: its extent goes to the
 *      txn's freed list and into `free` (with the txn id) by the commit.
 *  (4) An extent is reusable once the commit that freed it is older than or
 *      equal to the snapshot of every live reader (catalog_oldest_reader at
 *      txn begin): readers look extents up inside a read txn and hold it until
 *      their reads complete, so they never see a reused extent.
 *  (5) The committed end (meta "store.file_end") and the free list change in
 *      the same txn as the entries; the writer truncates blocks.dat to the
 *      committed end when it opens, dropping bytes of an unfinished txn.
 *  (6) An fdatasync or write error fails the writer for good (ANN_E_STATE):
 *      after a failed fsync the page cache can no longer be trusted.
 */
#include "store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define BLOCKS_FILE "blocks.dat"

/* blocks.dat header (docs/FORMAT.md "blocks.dat header"). */
#define HDR_BYTES 4096u
#define HDR_MAJOR 1
#define HDR_MINOR 0
#define HDR_SUM_AT (HDR_BYTES - 8)
static const uint8_t hdr_magic[8] = { 0x8b, 'A', 'N', 'N', 'B', 'L', 'K', 0x1a };

struct file_store {
	char *path;            /* blocks.dat */
	int fd;                /* O_RDWR (writer) or O_RDONLY, O_DIRECT when direct */
	bool direct;           /* O_DIRECT writes */
	bool writer;
	uint8_t uuid[16];      /* index id, from the header */
	uint64_t file_end;     /* committed end */
	ann_extent *free;      /* committed free extents, sorted by offset */
	size_t nfree;
	/* txn state */
	uint64_t txn_end;      /* end including this txn's appends */
	uint64_t oldest;       /* oldest reader snapshot at begin */
	ann_extent *work;      /* committed free minus this txn's allocations */
	size_t nwork, capwork;
	ann_extent *freed;     /* extents freed by this txn */
	size_t nfreed, capfreed;
	ann_extent *next;      /* free list after the commit (from precommit) */
	size_t nnext;
	bool dirty;            /* written, not yet fdatasync'ed */
	uint8_t *bounce;       /* for unaligned caller buffers */
	size_t bounce_cap;
	struct iovec *iov;     /* pwritev scratch */
	size_t iov_cap;
	/* stats */
	uint64_t writes, write_bytes, syncs, sync_ns;
};

static void hdr_encode(uint8_t *h, const uint8_t uuid[16], uint64_t created)
{
	memset(h, 0, HDR_BYTES);
	memcpy(h, hdr_magic, 8);
	ann_st16(h + 8, HDR_MAJOR);
	ann_st16(h + 10, HDR_MINOR);
	ann_st32(h + 12, HDR_BYTES);
	ann_st32(h + 16, ANN_PAGE);
	ann_st32(h + 20, 0);
	memcpy(h + 24, uuid, 16);
	ann_st64(h + 40, created);
	ann_st64(h + HDR_SUM_AT, XXH64(h, HDR_SUM_AT, 0));
}

static int hdr_check(const char *path, const uint8_t *h, uint8_t uuid[16], ann_error *err)
{
	if (memcmp(h, hdr_magic, 8) != 0)
		return ann_err(err, ANN_E_FORMAT, "%s: bad magic (not a blocks.dat file)", path);
	unsigned major = ann_ld16(h + 8), minor = ann_ld16(h + 10);
	if (major != HDR_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "%s: format %u.%u, this build reads %d.x", path, major, minor, HDR_MAJOR);
	uint64_t want = ann_ld64(h + HDR_SUM_AT), got = XXH64(h, HDR_SUM_AT, 0);
	if (want != got)
		return ann_err(err, ANN_E_CORRUPT, "%s: header checksum %016llx, computed %016llx", path,
			       (unsigned long long)want, (unsigned long long)got);
	if (ann_ld32(h + 12) != HDR_BYTES || ann_ld32(h + 16) != ANN_PAGE)
		return ann_err(err, ANN_E_FORMAT, "%s: header of %u bytes, alignment %u; 4096 and 4096 expected", path,
			       ann_ld32(h + 12), ann_ld32(h + 16));
	memcpy(uuid, h + 24, 16);
	return ANN_OK;
}

static void random_id(uint8_t id[16])
{
	if (getrandom(id, 16, 0) == 16)
		return;
	/* No entropy source: mix time and pid (uniqueness, not secrecy, matters). */
	ann_rng r;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ann_rng_seed(&r, (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40));
	ann_st64(id, ann_rng_next(&r));
	ann_st64(id + 8, ann_rng_next(&r));
}

static void file_close(ann_store *s)
{
	struct file_store *f = ann_store_impl(s);
	if (!f)
		return;
	if (f->fd >= 0)
		close(f->fd);
	ann_free(f->path);
	ann_free(f->free);
	ann_free(f->work);
	ann_free(f->freed);
	ann_free(f->next);
	ann_aligned_free(f->bounce);
	ann_free(f->iov);
	ann_free(f);
	ann_store_set_impl(s, NULL);
}

static int file_create(ann_store *s, struct file_store *f, ann_cat_txn *t, ann_error *err)
{
	char *tmp = NULL;
	uint8_t *h = ann_aligned_alloc(ANN_PAGE, HDR_BYTES);
	if (!h)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for the header", f->path);
	uint8_t uuid[16];
	random_id(uuid);
	hdr_encode(h, uuid, (uint64_t)time(NULL));
	int rc;
	int fd = ann_create_temp(f->path, false, &tmp, err); /* exclusive, no links followed */
	if (fd < 0) {
		rc = fd;
		goto out;
	}
	rc = ann_pwrite_all(fd, h, HDR_BYTES, 0, tmp, err);
	if (rc == ANN_OK && fsync(fd) != 0)
		rc = ann_err_sys(err, errno, "%s: fsync failed", tmp);
	close(fd);
	if (rc == ANN_OK && rename(tmp, f->path) != 0)
		rc = ann_err_sys(err, errno, "%s: cannot rename to %s", tmp, f->path);
	if (rc < 0) {
		unlink(tmp);
		goto out;
	}
	ANN_CHECK(rc, ann_fsync_dir(ann_store_dir_path(s), err));
	ANN_CHECK(rc, ann_catalog_meta_put_blob(t, "store.uuid", uuid, 16, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "store.file_end", HDR_BYTES, err));
fail:
out:
	ann_free(tmp);
	ann_aligned_free(h);
	return rc;
}

static int file_open(ann_store *s, const ann_store_opts *o, ann_cat_txn *create_txn, ann_error *err)
{
	struct file_store *f = ann_calloc(1, sizeof *f);
	if (!f)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the file store", ann_store_dir_path(s));
	f->fd = -1;
	ann_store_set_impl(s, f);
	f->path = ann_store_path(s, BLOCKS_FILE);
	if (!f->path)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the file store", ann_store_dir_path(s));
	if (create_txn)
		return file_create(s, f, create_txn, err);

	int rc;
	uint8_t *h = NULL;
	ann_cat_txn *t = NULL;
	f->writer = ann_store_writable(s);
	rc = ann_open_maybe_direct(f->path, ann_store_writable(s) ? O_RDWR : O_RDONLY, !o->no_direct, &f->direct, err);
	if (rc < 0) {
		if (err && err->sys_errno == ENOENT)
			rc = ann_err(err, ANN_E_NOTFOUND, "%s: missing (the catalog says this is a file store)", f->path);
		return rc;
	}
	f->fd = rc;
	h = ann_aligned_alloc(ANN_PAGE, HDR_BYTES);
	if (!h)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for the header", f->path);
	ANN_CHECK(rc, ann_pread_all(f->fd, h, HDR_BYTES, 0, f->path, err));
	ANN_CHECK(rc, hdr_check(f->path, h, f->uuid, err));
	ANN_CHECK(rc, ann_catalog_read_begin(ann_store_catalog(s), &t, err));
	const uint8_t *id = NULL;
	size_t idn = 0;
	ANN_CHECK(rc, ann_catalog_meta_get_blob(t, "store.uuid", &id, &idn, err));
	if (idn != 16 || memcmp(id, f->uuid, 16) != 0) {
		rc = ann_err(err, ANN_E_CORRUPT, "%s: index id differs from the catalog's: the file belongs to another index",
			     f->path);
		goto fail;
	}
	ANN_CHECK(rc, ann_catalog_meta_get_u64(t, "store.file_end", &f->file_end, err));
	if (f->file_end < HDR_BYTES || f->file_end % ANN_PAGE) {
		rc = ann_err(err, ANN_E_CORRUPT, "%s: meta 'store.file_end' is %llu, a multiple of 4096 >= 4096 expected",
			     f->path, (unsigned long long)f->file_end);
		goto fail;
	}
	if (ann_store_writable(s)) {
		ANN_CHECK(rc, ann_catalog_free_load(t, &f->free, &f->nfree, err));
		struct stat st;
		if (fstat(f->fd, &st) != 0) {
			rc = ann_err_sys(err, errno, "%s: cannot stat", f->path);
			goto fail;
		}
		if ((uint64_t)st.st_size < f->file_end) {
			rc = ann_err(err, ANN_E_CORRUPT, "%s: %llu bytes, but committed blocks reach %llu", f->path,
				     (unsigned long long)st.st_size, (unsigned long long)f->file_end);
			goto fail;
		}
		/* Bytes past the committed end belong to a txn that never committed. */
		if ((uint64_t)st.st_size > f->file_end && ftruncate(f->fd, (off_t)f->file_end) != 0) {
			rc = ann_err_sys(err, errno, "%s: cannot truncate to the committed end %llu", f->path,
					 (unsigned long long)f->file_end);
			goto fail;
		}
	}
	f->txn_end = f->file_end;
	rc = ANN_OK;
fail:
	if (t)
		ann_catalog_read_end(t);
	ann_aligned_free(h);
	return rc;
}

static int ext_reserve(ann_extent **xs, size_t *cap, size_t need, ann_error *err)
{
	if (need <= *cap)
		return ANN_OK;
	size_t c = *cap ? *cap : 64;
	while (c < need)
		c *= 2;
	ann_extent *p = ann_realloc(*xs, c * sizeof *p);
	if (!p)
		return ann_err(err, ANN_E_NOMEM, "free list of %zu extents: out of memory", c);
	*xs = p;
	*cap = c;
	return ANN_OK;
}

static int file_begin(ann_store_txn *t, ann_error *err)
{
	ann_store *s = ann_store_txn_store(t);
	struct file_store *f = ann_store_impl(s);
	ANN_TRY(ann_catalog_oldest_reader(ann_store_catalog(s), &f->oldest, err));
	ANN_TRY(ext_reserve(&f->work, &f->capwork, f->nfree + 1, err));
	if (f->nfree)
		memcpy(f->work, f->free, f->nfree * sizeof *f->work);
	f->nwork = f->nfree;
	f->nfreed = 0;
	f->txn_end = f->file_end;
	return ANN_OK;
}

/* First fit among extents every live reader is done with, else the end. */
static int file_alloc(struct file_store *f, uint64_t len, uint64_t *off, ann_error *err)
{
	for (size_t i = 0; i < f->nwork; i++) {
		ann_extent *x = &f->work[i];
		if (x->length < len || x->freed_tx > f->oldest)
			continue;
		*off = x->offset;
		x->offset += len;
		x->length -= len;
		if (x->length == 0) {
			memmove(x, x + 1, (f->nwork - i - 1) * sizeof *x);
			f->nwork--;
		}
		return ANN_OK;
	}
	if (f->txn_end + len < f->txn_end)
		return ann_err(err, ANN_E_INVAL, "%s: file offset overflow", f->path);
	*off = f->txn_end;
	f->txn_end += len;
	return ANN_OK;
}

static int file_free_add(struct file_store *f, const ann_dirent *old, ann_error *err)
{
	ANN_TRY(ext_reserve(&f->freed, &f->capfreed, f->nfreed + 1, err));
	f->freed[f->nfreed++] = (ann_extent){ old->offset, old->length, 0 };
	return ANN_OK;
}

static int file_sync(ann_store *s, struct file_store *f, ann_error *err)
{
	if (!f->dirty)
		return ANN_OK;
	uint64_t t0 = ann_now_ns();
	int rc = fdatasync(f->fd);
	f->sync_ns += ann_now_ns() - t0;
	f->syncs++;
	if (rc != 0) {
		ann_store_fail(s);
		return ann_err_sys(err, errno, "%s: fdatasync failed", f->path);
	}
	f->dirty = false;
	return ANN_OK;
}

struct wr {
	uint64_t off;
	const uint8_t *data;
	size_t len;
};

static int cmp_wr(const void *a, const void *b)
{
	const struct wr *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* Writes one contiguous run of blocks with pwritev (O_DIRECT needs aligned
 * buffers: unaligned ones go through the bounce buffer one at a time). */
static int write_run(ann_store *s, struct file_store *f, const struct wr *w, size_t n, ann_error *err)
{
	size_t i = 0;
	while (i < n) {
		size_t k = 0, bytes = 0;
		if (f->iov_cap < n) {
			struct iovec *p = ann_realloc(f->iov, n * sizeof *p);
			if (!p)
				return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a write of %zu blocks", f->path,
					       n);
			f->iov = p;
			f->iov_cap = n;
		}
		while (i + k < n && k < 1024) {
			const struct wr *x = &w[i + k];
			bool aligned = ((uintptr_t)x->data % ANN_PAGE) == 0;
			if (!aligned && f->direct) {
				if (k > 0)
					break;
				if (f->bounce_cap < x->len) {
					ann_aligned_free(f->bounce);
					f->bounce = ann_aligned_alloc(ANN_PAGE, x->len);
					f->bounce_cap = f->bounce ? x->len : 0;
					if (!f->bounce)
						return ann_err(err, ANN_E_NOMEM, "%s: bounce buffer: out of memory", f->path);
				}
				memcpy(f->bounce, x->data, x->len);
				f->iov[k++] = (struct iovec){ f->bounce, x->len };
				bytes += x->len;
				break;
			}
			f->iov[k++] = (struct iovec){ (void *)x->data, x->len };
			bytes += x->len;
		}
		uint64_t off = w[i].off;
		struct iovec *iov = f->iov;
		int iovcnt = (int)k;
		size_t left = bytes;
		while (left > 0) {
			ssize_t m = pwritev(f->fd, iov, iovcnt, (off_t)off);
			f->writes++;
			if (m < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EINVAL && f->direct && left == bytes) {
					/* Accepted O_DIRECT at open, refuses it now: go buffered
					 * (fdatasync still precedes every commit). */
					int fd = open(f->path, O_RDWR | O_CLOEXEC);
					if (fd >= 0) {
						close(f->fd);
						f->fd = fd;
						f->direct = false;
						continue;
					}
				}
				int e = errno;
				ann_store_fail(s);
				return ann_err_sys(err, e, "%s: write of %zu bytes at offset %llu failed", f->path, left,
						   (unsigned long long)off);
			}
			if (m == 0) {
				ann_store_fail(s);
				return ann_err(err, ANN_E_IO, "%s: write at offset %llu wrote nothing", f->path,
					       (unsigned long long)off);
			}
			left -= (size_t)m;
			off += (uint64_t)m;
			size_t adv = (size_t)m;
			while (iovcnt > 0 && adv >= iov->iov_len) {
				adv -= iov->iov_len;
				iov++;
				iovcnt--;
			}
			if (iovcnt > 0) {
				iov->iov_base = (uint8_t *)iov->iov_base + adv;
				iov->iov_len -= adv;
			}
		}
		f->write_bytes += bytes;
		f->dirty = true;
		i += k;
	}
	return ANN_OK;
}

static int file_put(ann_store_txn *t, const ann_block_put *puts, size_t n, ann_dirent *ents,
		    const ann_dirent *olds, ann_error *err)
{
	ann_store *s = ann_store_txn_store(t);
	struct file_store *f = ann_store_impl(s);
	struct wr *w = ann_malloc(n * sizeof *w);
	if (!w)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a write of %zu blocks", f->path, n);
	int rc;
	for (size_t i = 0; i < n; i++) {
		ANN_CHECK(rc, file_alloc(f, puts[i].length, &ents[i].offset, err));
		w[i] = (struct wr){ ents[i].offset, puts[i].data, puts[i].length };
	}
	qsort(w, n, sizeof *w, cmp_wr);
	size_t run = 0;
	for (size_t i = 1; i <= n; i++) {
		if (i == n || w[i].off != w[i - 1].off + w[i - 1].len) {
			ANN_CHECK(rc, write_run(s, f, w + run, i - run, err));
			run = i;
		}
	}
	ANN_CHECK(rc, file_sync(s, f, err));
	for (size_t i = 0; i < n; i++)
		if (olds[i].kind)
			ANN_CHECK(rc, file_free_add(f, &olds[i], err));
	rc = ANN_OK;
fail:
	ann_free(w);
	return rc;
}

static int file_drop(ann_store_txn *t, uint32_t pid, const ann_dirent *old, ann_error *err)
{
	(void)pid;
	struct file_store *f = ann_store_impl(ann_store_txn_store(t));
	return file_free_add(f, old, err);
}

static int cmp_ext(const void *a, const void *b)
{
	const ann_extent *x = a, *y = b;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int file_precommit(ann_store_txn *t, ann_error *err)
{
	ann_store *s = ann_store_txn_store(t);
	struct file_store *f = ann_store_impl(s);
	ann_cat_txn *ct = ann_store_txn_catalog(t);
	uint64_t txid = ann_catalog_txn_id(ct);
	ANN_TRY(file_sync(s, f, err));

	/* New free list: what is left of the committed one plus this txn's
	 * frees, sorted, adjacent extents merged, a reusable tail given back to
	 * the end. */
	size_t n = f->nwork + f->nfreed;
	ann_extent *nx = ann_malloc((n ? n : 1) * sizeof *nx);
	if (!nx)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for %zu extents", f->path, n);
	memcpy(nx, f->work, f->nwork * sizeof *nx);
	for (size_t i = 0; i < f->nfreed; i++) {
		nx[f->nwork + i] = f->freed[i];
		nx[f->nwork + i].freed_tx = txid;
	}
	qsort(nx, n, sizeof *nx, cmp_ext);
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (m > 0 && nx[m - 1].offset + nx[m - 1].length > nx[i].offset) {
			ann_free(nx);
			ann_store_fail(s);
			return ann_err(err, ANN_E_CORRUPT, "%s: free extents at %llu and %llu overlap (allocator state)",
				       f->path, (unsigned long long)nx[m - 1].offset, (unsigned long long)nx[i].offset);
		}
		if (m > 0 && nx[m - 1].offset + nx[m - 1].length == nx[i].offset) {
			nx[m - 1].length += nx[i].length;
			nx[m - 1].freed_tx = ANN_MAX(nx[m - 1].freed_tx, nx[i].freed_tx);
		} else {
			nx[m++] = nx[i];
		}
	}
	/* Only extents no reader can still reach go back to the end (appends are
	 * not checked against readers): freed by an earlier commit that every
	 * reader alive at begin has passed (a reader starting later sees at
	 * least the last commit). Never this txn's frees: a reader may start on
	 * the previous snapshot before this commit. */
	while (m > 0 && nx[m - 1].offset + nx[m - 1].length == f->txn_end && nx[m - 1].freed_tx < txid &&
	       nx[m - 1].freed_tx <= f->oldest) {
		f->txn_end = nx[m - 1].offset;
		m--;
	}
	/* Write the difference against the committed list. */
	int rc = ANN_OK;
	size_t i = 0, j = 0;
	while (rc == ANN_OK && (i < f->nfree || j < m)) {
		if (j == m || (i < f->nfree && f->free[i].offset < nx[j].offset)) {
			rc = ann_catalog_free_del(ct, f->free[i].offset, err);
			i++;
		} else if (i == f->nfree || nx[j].offset < f->free[i].offset) {
			rc = ann_catalog_free_put(ct, &nx[j], err);
			j++;
		} else {
			if (nx[j].length != f->free[i].length || nx[j].freed_tx != f->free[i].freed_tx)
				rc = ann_catalog_free_put(ct, &nx[j], err);
			i++;
			j++;
		}
	}
	if (rc == ANN_OK && f->txn_end != f->file_end)
		rc = ann_catalog_meta_put_u64(ct, "store.file_end", f->txn_end, err);
	if (rc < 0) {
		ann_free(nx);
		return rc;
	}
	ann_free(f->next);
	f->next = nx;
	f->nnext = m;
	return ANN_OK;
}

static void file_postcommit(ann_store_txn *t, bool committed)
{
	struct file_store *f = ann_store_impl(ann_store_txn_store(t));
	if (committed && f->next) {
		ann_free(f->free);
		f->free = f->next;
		f->nfree = f->nnext;
		f->file_end = f->txn_end;
	} else {
		ann_free(f->next);
		f->txn_end = f->file_end;
	}
	f->next = NULL;
	f->nnext = 0;
	f->nwork = 0;
	f->nfreed = 0;
}

static int file_space(ann_store *s, ann_store_space *sp, ann_error *err)
{
	struct file_store *f = ann_store_impl(s);
	struct stat st;
	if (fstat(f->fd, &st) != 0)
		return ann_err_sys(err, errno, "%s: cannot stat", f->path);
	sp->file_bytes = (uint64_t)st.st_size;
	sp->disk_bytes = (uint64_t)st.st_blocks * 512 + sp->cat.disk_bytes;
	sp->direct_writes = f->direct;
	sp->writes = f->writes;
	sp->write_bytes = f->write_bytes;
	sp->syncs = f->syncs;
	sp->sync_ns = f->sync_ns;
	/* The committed free list as of the last snapshot. */
	ann_cat_txn *rt;
	ANN_TRY(ann_catalog_read_begin(ann_store_catalog(s), &rt, err));
	ann_extent *xs = NULL;
	size_t n = 0;
	int rc = ann_catalog_free_load(rt, &xs, &n, err);
	if (rc == ANN_OK)
		rc = ann_catalog_meta_get_u64(rt, "store.file_end", &sp->file_end, err);
	ann_catalog_read_end(rt);
	for (size_t i = 0; i < n; i++)
		sp->free_bytes += xs[i].length;
	sp->free_extents = n;
	ann_free(xs);
	return rc;
}

/* ---- file verification ---- */

struct vext {
	uint64_t off, len;
	int64_t pid; /* -1: free extent */
};

static int cmp_vext(const void *a, const void *b)
{
	const struct vext *x = a, *y = b;
	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->len < y->len ? -1 : x->len > y->len;
}

static void issue_at(ann_issue_fn fn, void *ctx, ann_issue_kind kind, bool warning, int64_t pid, const char *fmt,
		     ...) ANN_PRINTF(6, 7);

static void issue_at(ann_issue_fn fn, void *ctx, ann_issue_kind kind, bool warning, int64_t pid, const char *fmt,
		     ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	ann_issue is = { kind, warning, pid, NULL, msg };
	fn(ctx, &is);
}

static void ext_name(const struct vext *x, char *buf, size_t cap)
{
	if (x->pid >= 0)
		snprintf(buf, cap, "partition %lld [%llu, %llu)", (long long)x->pid, (unsigned long long)x->off,
			 (unsigned long long)(x->off + x->len));
	else
		snprintf(buf, cap, "free extent [%llu, %llu)", (unsigned long long)x->off,
			 (unsigned long long)(x->off + x->len));
}

static int file_verify(ann_store *s, ann_cat_txn *rt, const ann_dir *d, ann_issue_fn fn, void *ctx,
		       ann_verify_stats *st, ann_error *err)
{
	struct file_store *f = ann_store_impl(s);
	int rc = ANN_OK;
	struct vext *xs = NULL;
	ann_extent *fr = NULL;
	size_t nfr = 0, nx = 0;
	ann_ioreader *io = NULL;
	uint8_t *h = NULL;

	/* Header and its pairing with the catalog. */
	uint64_t file_end = 0;
	h = ann_aligned_alloc(ANN_PAGE, HDR_BYTES);
	if (!h)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for the header", f->path);
	uint8_t uuid[16];
	ann_error e2 = { 0 };
	if (ann_pread_all(f->fd, h, HDR_BYTES, 0, f->path, &e2) < 0 || hdr_check(f->path, h, uuid, &e2) < 0) {
		issue_at(fn, ctx, ANN_ISSUE_HEADER, false, -1, "%s", e2.msg);
	} else {
		const uint8_t *id = NULL;
		size_t idn = 0;
		if (ann_catalog_meta_get_blob(rt, "store.uuid", &id, &idn, &e2) < 0)
			issue_at(fn, ctx, ANN_ISSUE_HEADER, false, -1, "%s", e2.msg);
		else if (idn != 16 || memcmp(id, uuid, 16) != 0)
			issue_at(fn, ctx, ANN_ISSUE_HEADER, false, -1, "%s: index id differs from meta 'store.uuid'",
				 f->path);
	}
	if (ann_catalog_meta_get_u64(rt, "store.file_end", &file_end, &e2) < 0) {
		issue_at(fn, ctx, ANN_ISSUE_CATALOG, false, -1, "%s", e2.msg);
		file_end = 0;
	}
	struct stat sb;
	if (fstat(f->fd, &sb) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot stat", f->path);
		goto out;
	}
	uint64_t fsize = (uint64_t)sb.st_size;
	if (file_end == 0)
		file_end = fsize; /* unknown: check against the file itself */
	if (file_end > fsize)
		issue_at(fn, ctx, ANN_ISSUE_EXTENT, false, -1,
			 "%s: file is %llu bytes, committed blocks reach %llu (truncated?)", f->path,
			 (unsigned long long)fsize, (unsigned long long)file_end);
	else if (fsize > file_end)
		issue_at(fn, ctx, ANN_ISSUE_LEAK, true, -1,
			 "%s: %llu bytes past the committed end %llu (an unfinished txn; the next writer truncates them)",
			 f->path, (unsigned long long)(fsize - file_end), (unsigned long long)file_end);
	uint64_t limit = ANN_MIN(file_end, fsize);

	ANN_CHECK(rc, ann_catalog_free_load_valid(rt, &fr, &nfr, err));
	xs = ann_malloc(((size_t)d->count + nfr + 1) * sizeof *xs);
	if (!xs) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for %zu extents", f->path, (size_t)d->count + nfr + 1);
		goto out;
	}
	uint64_t maxlen = 0;
	for (uint32_t pid = 0; pid < d->n; pid++) {
		const ann_dirent *e = &d->ents[pid];
		if (!e->kind)
			continue;
		st->partitions++;
		if (e->kind != ANN_KIND_FILE) {
			issue_at(fn, ctx, ANN_ISSUE_EXTENT, false, pid, "parts partition %u: store kind %u in a file store",
				 pid, e->kind);
			continue;
		}
		if (e->offset < HDR_BYTES || e->offset % ANN_PAGE || e->length % ANN_PAGE ||
		    e->offset + e->length > limit) {
			issue_at(fn, ctx, ANN_ISSUE_EXTENT, false, pid,
				 "%s: partition %u: extent [%llu, %llu) not 4096-aligned or outside [4096, %llu)", f->path,
				 pid, (unsigned long long)e->offset, (unsigned long long)(e->offset + e->length),
				 (unsigned long long)limit);
			continue;
		}
		xs[nx++] = (struct vext){ e->offset, e->length, pid };
		maxlen = ANN_MAX(maxlen, e->length);
	}
	size_t nlive = nx;
	for (size_t i = 0; i < nfr; i++) {
		if (fr[i].offset + fr[i].length > limit) {
			issue_at(fn, ctx, ANN_ISSUE_EXTENT, false, -1, "%s: free extent [%llu, %llu) past the end %llu",
				 f->path, (unsigned long long)fr[i].offset,
				 (unsigned long long)(fr[i].offset + fr[i].length), (unsigned long long)limit);
			continue;
		}
		xs[nx++] = (struct vext){ fr[i].offset, fr[i].length, -1 };
	}

	/* Read every well-placed block and compare its checksum. */
	if (nlive > 0) {
		ann_ioreader_opts io_o;
		ann_ioreader_opts_init(&io_o);
		io_o.queue_depth = 16;
		io_o.pool_bytes = ANN_MAX((size_t)8 << 20, (size_t)maxlen * 2);
		ANN_CHECK(rc, ann_ioreader_open(f->path, &io_o, &io, err));
		size_t sub = 0, got = 0;
		while (got < nlive) {
			while (sub < nlive && ann_ioreader_outstanding(io) < 32) {
				ann_ioreq q = { xs[sub].off, (uint32_t)xs[sub].len, sub };
				ANN_CHECK(rc, ann_ioreader_submit(io, &q, 1, err));
				sub++;
			}
			ann_iocomp c;
			ann_error re = { 0 };
			rc = ann_ioreader_next(io, &c, &re);
			if (rc < 0) {
				if (err)
					*err = re;
				goto out;
			}
			if (rc == 0)
				break;
			const struct vext *x = &xs[c.tag];
			uint32_t pid = (uint32_t)x->pid;
			if (c.status < 0) {
				issue_at(fn, ctx, ANN_ISSUE_READ, false, pid, "partition %u: %s", pid, re.msg);
			} else {
				st->bytes += c.length;
				uint64_t sum = XXH64(c.data, c.length, 0);
				if (sum != d->ents[pid].checksum)
					issue_at(fn, ctx, ANN_ISSUE_CHECKSUM, false, pid,
						 "%s: partition %u at offset %llu (%u bytes): block checksum %016llx, "
						 "directory says %016llx",
						 f->path, pid, (unsigned long long)x->off, c.length,
						 (unsigned long long)sum, (unsigned long long)d->ents[pid].checksum);
			}
			ann_ioreader_release(io, &c);
			got++;
		}
		rc = ANN_OK;
	}

	/* Overlaps and unaccounted space in [4096, limit). */
	qsort(xs, nx, sizeof *xs, cmp_vext);
	uint64_t cursor = HDR_BYTES;
	size_t owner = SIZE_MAX; /* extent reaching furthest so far */
	for (size_t i = 0; i < nx; i++) {
		if (owner != SIZE_MAX && xs[i].off < xs[owner].off + xs[owner].len) {
			char a[96], b[96];
			ext_name(&xs[owner], a, sizeof a);
			ext_name(&xs[i], b, sizeof b);
			issue_at(fn, ctx, ANN_ISSUE_OVERLAP, false, xs[i].pid >= 0 ? xs[i].pid : xs[owner].pid,
				 "%s: %s overlaps %s", f->path, b, a);
		} else if (xs[i].off > cursor) {
			issue_at(fn, ctx, ANN_ISSUE_LEAK, true, -1, "%s: bytes [%llu, %llu) are neither live nor free",
				 f->path, (unsigned long long)cursor, (unsigned long long)xs[i].off);
		}
		if (owner == SIZE_MAX || xs[i].off + xs[i].len > xs[owner].off + xs[owner].len)
			owner = i;
		cursor = ANN_MAX(cursor, xs[i].off + xs[i].len);
	}
	if (cursor < limit)
		issue_at(fn, ctx, ANN_ISSUE_LEAK, true, -1, "%s: bytes [%llu, %llu) are neither live nor free", f->path,
			 (unsigned long long)cursor, (unsigned long long)limit);
fail:
out:
	ann_ioreader_free(io);
	ann_free(xs);
	ann_free(fr);
	ann_aligned_free(h);
	return rc;
}

const ann_store_ops ann_store_file_ops = {
	.kind = ANN_STORE_FILE,
	.name = "file",
	.data_file = BLOCKS_FILE,
	.open = file_open,
	.close = file_close,
	.begin = file_begin,
	.put = file_put,
	.drop = file_drop,
	.precommit = file_precommit,
	.postcommit = file_postcommit,
	.space = file_space,
	.verify = file_verify,
};

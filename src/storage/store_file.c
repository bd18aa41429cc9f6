/* SPDX-License-Identifier: MIT */
/*
 * store_file.c: the block store layer (store.h): opening an index directory,
 * store txns, the RAM directory, batched block readers, verification; the
 * raw-file store blocks.dat with its free-space allocator; and the per-thread
 * io_uring reader with its pread fallback. store_lmdb.c holds the LMDB store.
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
 *
 * Writer states:  idle --ann_store_begin--> in txn --ann_store_commit/abort--> idle
 *                 any --I/O error--> failed (only ann_store_close remains)
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

/* ======================================================================
 * io reader
 * ====================================================================== */

#define IO_MAX_DEPTH 4096u
#define IO_MAX_REG (1ull << 30) /* largest buffer io_uring registers */
#define NO_SLOT UINT32_MAX

/* Test hook (tests/fault/run.sh): io_uring reads bypass libc, so the LD_PRELOAD
 * shim tests/fault/libfault.c cannot fail them; this does, for the
 * completions of every reader of the process, when ANNANN_FAULT_OP=uring.
 * ANNANN_FAULT_N (1-based completion to fail), ANNANN_FAULT_ERRNO (EIO default,
 * or a number), ANNANN_FAULT_STICKY=1 (every completion from the Nth),
 * ANNANN_FAULT_SHORT=1 (about half the bytes instead of an error) and
 * ANNANN_FAULT_COUNT (file that gets "uring C fired F" when a reader is freed)
 * mean what they mean for the shim. The environment is read once per process;
 * when the hook is off the completion path pays one predictable branch. */
static struct {
	bool on, sticky, shortr;
	int err;
	uint64_t n;
	uint64_t seen; /* completions, atomic */
	int fired;
	const char *count;
} uring_fault;
static pthread_once_t uring_fault_once = PTHREAD_ONCE_INIT;

static void uring_fault_init(void)
{
	const char *op = getenv("ANNANN_FAULT_OP");
	if (!op || strcmp(op, "uring") != 0)
		return;
	const char *v = getenv("ANNANN_FAULT_N");
	uring_fault.n = v ? strtoull(v, NULL, 10) : 0;
	v = getenv("ANNANN_FAULT_ERRNO");
	uring_fault.err = !v ? EIO : strcmp(v, "EIO") == 0 ? EIO : strcmp(v, "ENOSPC") == 0 ? ENOSPC : atoi(v);
	if (uring_fault.err <= 0)
		uring_fault.err = EIO;
	v = getenv("ANNANN_FAULT_STICKY");
	uring_fault.sticky = v && *v == '1';
	v = getenv("ANNANN_FAULT_SHORT");
	uring_fault.shortr = v && *v == '1';
	uring_fault.count = getenv("ANNANN_FAULT_COUNT");
	uring_fault.on = true;
}

/* The completion result the reader sees for a real result res. */
static int uring_fault_apply(int res)
{
	uint64_t k = __atomic_add_fetch(&uring_fault.seen, 1, __ATOMIC_RELAXED);
	if (uring_fault.n == 0 || k < uring_fault.n || (k > uring_fault.n && !uring_fault.sticky))
		return res;
	if (uring_fault.shortr && res < 2)
		return res;
	__atomic_store_n(&uring_fault.fired, 1, __ATOMIC_RELAXED);
	if (!uring_fault.shortr)
		return -uring_fault.err;
	return res >= 8192 ? res / 2 / 4096 * 4096 : res / 2;
}

static void uring_fault_report(void)
{
	if (!uring_fault.on || !uring_fault.count)
		return;
	FILE *f = fopen(uring_fault.count, "a");
	if (!f)
		return;
	fprintf(f, "uring %llu fired %d\n", (unsigned long long)__atomic_load_n(&uring_fault.seen, __ATOMIC_RELAXED),
		__atomic_load_n(&uring_fault.fired, __ATOMIC_RELAXED));
	fclose(f);
}

struct io_slot {
	uint64_t tag;      /* request tag */
	uint64_t off;      /* start of the read (offset rounded down to 4096 when direct) */
	uint32_t alen;     /* bytes read into the buffer (multiple of 4096 when direct) */
	uint32_t need;     /* bytes from off that the request needs */
	uint32_t done;     /* bytes read so far */
	uint32_t data_off; /* request offset - off */
	uint32_t length;   /* request length */
	uint32_t page;     /* first pool page of the buffer */
	uint32_t npages;   /* pool pages of the buffer */
	uint32_t next;     /* free-list link */
};

struct ann_ioreader {
	char *path;
	int fd;          /* O_DIRECT when direct */
	int fd_buf;      /* buffered descriptor (== fd when !direct), for unaligned remainders */
	bool direct;
	bool uring;
	bool registered;      /* pool registered: READ_FIXED */
	bool file_registered; /* fd registered: IOSQE_FIXED_FILE index 0 */
	int uring_errno;
	struct io_uring ring;
	unsigned depth;       /* max in flight */
	uint8_t *pool;        /* npages * 4096 bytes, 4096-aligned */
	uint32_t npages;
	uint64_t *bitmap;     /* 1 bit per page, 1 = used */
	uint32_t nwords;
	uint32_t hint;        /* word where the last allocation ended */
	struct io_slot *slots; /* npages slots (a buffer takes >= 1 page) */
	uint32_t free_slot;
	ann_ioreq *pend;      /* FIFO ring of queued requests */
	size_t pend_head, pend_len, pend_cap;
	unsigned inflight;    /* slots with a read in the kernel */
	unsigned unsubmitted; /* SQEs prepared, not yet accepted by the kernel */
	size_t held;          /* completions delivered, not released */
	ann_ioreader_stats st;
};

void ann_ioreader_opts_init(ann_ioreader_opts *o)
{
	memset(o, 0, sizeof *o);
	o->queue_depth = 64;
}

const char *ann_ioreader_path(const ann_ioreader *r)
{
	return r->uring ? "io_uring" : "pread";
}

uint64_t ann_ioreader_max_request(const ann_ioreader *r)
{
	return (uint64_t)r->npages * ANN_PAGE;
}

size_t ann_ioreader_outstanding(const ann_ioreader *r)
{
	return r->pend_len + r->inflight;
}

void ann_ioreader_get_stats(const ann_ioreader *r, ann_ioreader_stats *st)
{
	*st = r->st;
	st->uring = r->uring;
	st->direct = r->direct;
	st->registered = r->registered;
	st->uring_errno = r->uring_errno;
}

/* Opens path for reading, O_DIRECT unless refused (EINVAL: tmpfs and others). */
static int open_maybe_direct(const char *path, int flags, bool want_direct, bool *direct, ann_error *err)
{
	int fd = -1;
	*direct = false;
	if (want_direct) {
		fd = open(path, flags | O_DIRECT | O_CLOEXEC);
		if (fd >= 0) {
			*direct = true;
			return fd;
		}
		if (errno != EINVAL)
			return ann_err_sys(err, errno, "%s: cannot open", path);
	}
	fd = open(path, flags | O_CLOEXEC);
	if (fd < 0)
		return ann_err_sys(err, errno, "%s: cannot open", path);
	return fd;
}

int ann_ioreader_open(const char *path, const ann_ioreader_opts *o, ann_ioreader **out, ann_error *err)
{
	ann_ioreader_opts defaults;
	if (!o) {
		ann_ioreader_opts_init(&defaults);
		o = &defaults;
	}
	*out = NULL;
	unsigned depth = o->queue_depth ? o->queue_depth : 64;
	if (depth > IO_MAX_DEPTH)
		return ann_err(err, ANN_E_INVAL, "%s: queue depth %u, at most %u", path, depth, IO_MAX_DEPTH);
	size_t pool = o->pool_bytes ? o->pool_bytes : (size_t)depth * (128u << 10);
	pool = ANN_ALIGN_UP(pool, ANN_PAGE);
	if (pool / ANN_PAGE > UINT32_MAX / 2)
		return ann_err(err, ANN_E_INVAL, "%s: buffer pool of %zu bytes is too large", path, pool);
	int rc;
	pthread_once(&uring_fault_once, uring_fault_init);
	ann_ioreader *r = ann_calloc(1, sizeof *r);
	if (!r)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", path);
	r->fd = r->fd_buf = -1;
	r->depth = depth;
	size_t plen = strlen(path);
	r->path = ann_malloc(plen + 1);
	if (!r->path) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory", path);
		goto fail;
	}
	memcpy(r->path, path, plen + 1);
	rc = open_maybe_direct(path, O_RDONLY, !o->no_direct, &r->direct, err);
	if (rc < 0)
		goto fail;
	r->fd = rc;
	if (r->direct) {
		r->fd_buf = open(path, O_RDONLY | O_CLOEXEC);
		if (r->fd_buf < 0) {
			rc = ann_err_sys(err, errno, "%s: cannot open", path);
			goto fail;
		}
	} else {
		r->fd_buf = r->fd;
	}
	r->npages = (uint32_t)(pool / ANN_PAGE);
	r->nwords = (r->npages + 63) / 64;
	r->pool = ann_aligned_alloc(ANN_PAGE, pool);
	r->bitmap = ann_calloc(r->nwords, sizeof *r->bitmap);
	r->slots = ann_calloc(r->npages, sizeof *r->slots);
	if (!r->pool || !r->bitmap || !r->slots) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: reader buffers of %zu bytes: out of memory", path, pool);
		goto fail;
	}
	if (r->npages % 64) /* pages past the end count as used */
		r->bitmap[r->nwords - 1] = ~0ull << (r->npages % 64);
	for (uint32_t i = 0; i < r->npages; i++)
		r->slots[i].next = i + 1 < r->npages ? i + 1 : NO_SLOT;
	r->free_slot = 0;

	if (!o->force_pread) {
		int urc = io_uring_queue_init(depth, &r->ring, 0);
		if (urc < 0) {
			r->uring_errno = -urc;
		} else {
			r->uring = true;
			if (!o->no_register) {
				struct iovec iov = { r->pool, pool };
				if (pool <= IO_MAX_REG && io_uring_register_buffers(&r->ring, &iov, 1) == 0)
					r->registered = true;
				if (io_uring_register_files(&r->ring, &r->fd, 1) == 0)
					r->file_registered = true;
			}
		}
	}
	*out = r;
	return ANN_OK;
fail:
	ann_ioreader_free(r);
	return rc;
}

void ann_ioreader_free(ann_ioreader *r)
{
	if (!r)
		return;
	if (r->uring) {
		io_uring_queue_exit(&r->ring);
		uring_fault_report();
	}
	if (r->fd_buf >= 0 && r->fd_buf != r->fd)
		close(r->fd_buf);
	if (r->fd >= 0)
		close(r->fd);
	ann_aligned_free(r->pool);
	ann_free(r->bitmap);
	ann_free(r->slots);
	ann_free(r->pend);
	ann_free(r->path);
	ann_free(r);
}

/* First fit of k contiguous free pages, scanning from the hint; returns the
 * first page or -1. */
static int64_t pool_alloc(ann_ioreader *r, uint32_t k)
{
	for (int pass = 0; pass < 2; pass++) {
		/* Pass 0 from the hint, pass 1 over everything: a free run may
		 * straddle the hint (a request nearly the size of the pool). */
		uint32_t w0 = pass == 0 ? r->hint : 0, w1 = r->nwords;
		uint32_t run = 0, start = 0;
		for (uint32_t w = w0; w < w1; w++) {
			uint64_t bits = r->bitmap[w];
			if (bits == ~0ull) {
				run = 0;
				continue;
			}
			if (bits == 0 && run + 64 < k) {
				if (run == 0)
					start = w * 64;
				run += 64;
				continue;
			}
			for (uint32_t b = 0; b < 64; b++) {
				if (bits >> b & 1) {
					run = 0;
					continue;
				}
				if (run == 0)
					start = w * 64 + b;
				if (++run == k)
					goto found;
			}
		}
		continue;
	found:
		for (uint32_t p = start; p < start + k; p++)
			r->bitmap[p / 64] |= 1ull << (p % 64);
		r->hint = (start + k - 1) / 64;
		return start;
	}
	return -1;
}

static void pool_release(ann_ioreader *r, uint32_t page, uint32_t k)
{
	for (uint32_t p = page; p < page + k; p++)
		r->bitmap[p / 64] &= ~(1ull << (p % 64));
}

/* Aligned read extent of a request. */
static void req_extent(const ann_ioreader *r, const ann_ioreq *q, uint64_t *off, uint64_t *alen)
{
	if (r->direct) {
		*off = q->offset & ~(uint64_t)(ANN_PAGE - 1);
		*alen = ANN_ALIGN_UP(q->offset + q->length, (uint64_t)ANN_PAGE) - *off;
	} else {
		*off = q->offset;
		*alen = q->length;
	}
}

static int pend_push(ann_ioreader *r, const ann_ioreq *reqs, size_t n, ann_error *err)
{
	if (r->pend_len + n > r->pend_cap) {
		size_t cap = r->pend_cap ? r->pend_cap : 64;
		while (cap < r->pend_len + n)
			cap *= 2;
		ann_ioreq *p = ann_malloc(cap * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: request queue of %zu: out of memory", r->path, cap);
		for (size_t i = 0; i < r->pend_len; i++)
			p[i] = r->pend[(r->pend_head + i) % r->pend_cap];
		ann_free(r->pend);
		r->pend = p;
		r->pend_cap = cap;
		r->pend_head = 0;
	}
	for (size_t i = 0; i < n; i++)
		r->pend[(r->pend_head + r->pend_len + i) % r->pend_cap] = reqs[i];
	r->pend_len += n;
	return ANN_OK;
}

static uint8_t *slot_buf(const ann_ioreader *r, const struct io_slot *s)
{
	return r->pool + (size_t)s->page * ANN_PAGE;
}

/* Prepares an SQE reading the rest of slot i. */
static bool issue(ann_ioreader *r, uint32_t i)
{
	struct io_slot *s = &r->slots[i];
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	if (!sqe) {
		io_uring_submit(&r->ring);
		r->st.syscalls++;
		r->unsubmitted = 0;
		sqe = io_uring_get_sqe(&r->ring);
		if (!sqe)
			return false;
	}
	int fd = r->file_registered ? 0 : r->fd;
	uint8_t *buf = slot_buf(r, s) + s->done;
	unsigned len = s->alen - s->done;
	uint64_t off = s->off + s->done;
	if (r->registered)
		io_uring_prep_read_fixed(sqe, fd, buf, len, off, 0);
	else
		io_uring_prep_read(sqe, fd, buf, len, off);
	if (r->file_registered)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, i);
	r->unsubmitted++;
	return true;
}

static int flush(ann_ioreader *r, ann_error *err)
{
	while (r->unsubmitted > 0) {
		int n = io_uring_submit(&r->ring);
		r->st.syscalls++;
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN || n == -EBUSY)
			return ANN_OK; /* retried after completions are reaped */
		if (n < 0)
			return ann_err_sys(err, -n, "%s: io_uring submit failed", r->path);
		if (n == 0)
			return ANN_OK;
		r->unsubmitted = (unsigned)n >= r->unsubmitted ? 0 : r->unsubmitted - (unsigned)n;
	}
	return ANN_OK;
}

/* Takes the queue head into a slot with a buffer; NO_SLOT when the pool has
 * no room for it now. */
static uint32_t start_head(ann_ioreader *r)
{
	const ann_ioreq *q = &r->pend[r->pend_head];
	uint64_t off, alen;
	req_extent(r, q, &off, &alen);
	uint32_t k = (uint32_t)((alen + ANN_PAGE - 1) / ANN_PAGE);
	if (r->free_slot == NO_SLOT)
		return NO_SLOT;
	int64_t page = pool_alloc(r, k);
	if (page < 0)
		return NO_SLOT;
	uint32_t i = r->free_slot;
	struct io_slot *s = &r->slots[i];
	r->free_slot = s->next;
	s->tag = q->tag;
	s->off = off;
	s->alen = (uint32_t)alen;
	s->data_off = (uint32_t)(q->offset - off);
	s->length = q->length;
	s->need = s->data_off + q->length;
	s->done = 0;
	s->page = (uint32_t)page;
	s->npages = k;
	r->pend_head = (r->pend_head + 1) % r->pend_cap;
	r->pend_len--;
	return i;
}

/* Starts queued requests that have a slot and a buffer, and submits once
 * at least flush_min are waiting: ann_ioreader_next passes a quarter of the
 * depth, so a consumer reaping completions one by one does not pay a
 * submit syscall per read; what is left goes with the next wait
 * (io_uring_submit_and_wait), one syscall for both. */
static int pump(ann_ioreader *r, unsigned flush_min, ann_error *err)
{
	while (r->pend_len > 0 && r->inflight < r->depth) {
		uint32_t i = start_head(r);
		if (i == NO_SLOT)
			break;
		if (!issue(r, i))
			return ann_err(err, ANN_E_IO, "%s: io_uring submission queue stays full", r->path);
		r->inflight++;
	}
	return r->unsubmitted >= flush_min ? flush(r, err) : ANN_OK;
}

int ann_ioreader_submit(ann_ioreader *r, const ann_ioreq *reqs, size_t n, ann_error *err)
{
	for (size_t i = 0; i < n; i++) {
		const ann_ioreq *q = &reqs[i];
		if (q->length == 0 || q->offset + q->length < q->offset)
			return ann_err(err, ANN_E_INVAL, "%s: request %zu: %u bytes at offset %llu", r->path, i,
				       q->length, (unsigned long long)q->offset);
		uint64_t off, alen;
		req_extent(r, q, &off, &alen);
		if (alen > (uint64_t)r->npages * ANN_PAGE)
			return ann_err(err, ANN_E_INVAL, "%s: request %zu of %u bytes exceeds the buffer pool of %llu bytes",
				       r->path, i, q->length, (unsigned long long)r->npages * ANN_PAGE);
	}
	ANN_TRY(pend_push(r, reqs, n, err));
	if (r->uring)
		return pump(r, 1, err);
	return ANN_OK;
}

static void deliver(ann_ioreader *r, uint32_t i, int status, int sys_errno, ann_iocomp *c)
{
	struct io_slot *s = &r->slots[i];
	c->tag = s->tag;
	c->data = slot_buf(r, s) + s->data_off;
	c->length = s->length;
	c->status = status;
	c->sys_errno = sys_errno;
	c->slot = i;
	r->held++;
	r->st.requests++;
	r->st.bytes += s->done;
	if (status < 0)
		r->st.errors++;
}

/* Reads the rest of slot i synchronously (pread path, unaligned remainders). */
static int read_sync(ann_ioreader *r, uint32_t i, int *sys_errno)
{
	struct io_slot *s = &r->slots[i];
	uint64_t t0 = ann_now_ns();
	int status = ANN_OK;
	while (s->done < s->need) {
		bool aligned = !r->direct || (s->done % 512 == 0);
		int fd = aligned ? r->fd : r->fd_buf;
		size_t len = aligned ? s->alen - s->done : s->need - s->done;
		ssize_t n = pread(fd, slot_buf(r, s) + s->done, len, (off_t)(s->off + s->done));
		r->st.syscalls++;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				r->st.resubmits++;
				continue;
			}
			*sys_errno = errno;
			status = ANN_E_IO;
			break;
		}
		if (n == 0) {
			status = ANN_E_CORRUPT;
			break;
		}
		if (s->done > 0)
			r->st.resubmits++;
		s->done += (uint32_t)n;
	}
	r->st.wait_ns += ann_now_ns() - t0;
	return status;
}

static void fail_msg(ann_ioreader *r, uint32_t i, int status, int sys_errno, ann_error *err)
{
	struct io_slot *s = &r->slots[i];
	unsigned long long off = (unsigned long long)(s->off + s->data_off);
	if (status == ANN_E_IO)
		ann_err_sys(err, sys_errno, "%s: read of %u bytes at offset %llu failed", r->path, s->length, off);
	else
		ann_err(err, ANN_E_CORRUPT, "%s: file ends at offset %llu, %u bytes at offset %llu expected", r->path,
			(unsigned long long)(s->off + s->done), s->length, off);
}

static int next_pread(ann_ioreader *r, ann_iocomp *c, ann_error *err)
{
	if (r->pend_len == 0)
		return 0;
	uint32_t i = start_head(r);
	if (i == NO_SLOT)
		return ann_err(err, ANN_E_BUDGET,
			       "%s: buffer pool of %u pages held by %zu unreleased completions; release them first",
			       r->path, r->npages, r->held);
	int sys_errno = 0;
	int status = read_sync(r, i, &sys_errno);
	if (status < 0)
		fail_msg(r, i, status, sys_errno, err);
	deliver(r, i, status, sys_errno, c);
	return 1;
}

int ann_ioreader_next(ann_ioreader *r, ann_iocomp *c, ann_error *err)
{
	if (!r->uring)
		return next_pread(r, c, err);
	for (;;) {
		ANN_TRY(pump(r, ANN_MAX(1u, r->depth / 4), err));
		if (r->inflight == 0) {
			if (r->pend_len == 0)
				return 0;
			return ann_err(err, ANN_E_BUDGET,
				       "%s: buffer pool of %u pages held by %zu unreleased completions; release them first",
				       r->path, r->npages, r->held);
		}
		struct io_uring_cqe *cqe = NULL;
		int rc = io_uring_peek_cqe(&r->ring, &cqe);
		if (rc == -EAGAIN || !cqe) {
			uint64_t t0 = ann_now_ns();
			if (r->unsubmitted) {
				rc = io_uring_submit_and_wait(&r->ring, 1);
				if (rc >= 0) {
					unsigned n = (unsigned)rc;
					r->unsubmitted = n >= r->unsubmitted ? 0 : r->unsubmitted - n;
				}
			} else {
				rc = io_uring_wait_cqe(&r->ring, &cqe);
			}
			r->st.wait_ns += ann_now_ns() - t0;
			r->st.syscalls++;
			if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME)
				return ann_err_sys(err, -rc, "%s: waiting for io_uring completions failed", r->path);
			continue;
		}
		if (rc < 0)
			return ann_err_sys(err, -rc, "%s: io_uring completion queue", r->path);
		uint64_t data = io_uring_cqe_get_data64(cqe);
		int res = cqe->res;
		io_uring_cqe_seen(&r->ring, cqe);
		if (__builtin_expect(uring_fault.on, 0))
			res = uring_fault_apply(res);
		if (data >= r->npages)
			return ann_err(err, ANN_E_IO, "%s: io_uring completion for unknown slot %llu", r->path,
				       (unsigned long long)data);
		uint32_t i = (uint32_t)data;
		struct io_slot *s = &r->slots[i];
		if (res == -EAGAIN || res == -EINTR) {
			r->st.resubmits++;
			if (!issue(r, i))
				return ann_err(err, ANN_E_IO, "%s: io_uring submission queue stays full", r->path);
			continue;
		}
		if (res < 0) {
			r->inflight--;
			fail_msg(r, i, ANN_E_IO, -res, err);
			deliver(r, i, ANN_E_IO, -res, c);
			return 1;
		}
		s->done += (uint32_t)res;
		if (s->done >= s->need) {
			r->inflight--;
			deliver(r, i, ANN_OK, 0, c);
			return 1;
		}
		if (res == 0) {
			r->inflight--;
			fail_msg(r, i, ANN_E_CORRUPT, 0, err);
			deliver(r, i, ANN_E_CORRUPT, 0, c);
			return 1;
		}
		r->st.resubmits++;
		if (r->direct && s->done % 512 != 0) {
			/* O_DIRECT cannot continue at an unaligned offset. */
			r->inflight--;
			int sys_errno = 0;
			int status = read_sync(r, i, &sys_errno);
			if (status < 0)
				fail_msg(r, i, status, sys_errno, err);
			deliver(r, i, status, sys_errno, c);
			return 1;
		}
		if (!issue(r, i))
			return ann_err(err, ANN_E_IO, "%s: io_uring submission queue stays full", r->path);
	}
}

void ann_ioreader_release(ann_ioreader *r, const ann_iocomp *c)
{
	if (c->slot >= r->npages)
		return;
	struct io_slot *s = &r->slots[c->slot];
	pool_release(r, s->page, s->npages);
	s->next = r->free_slot;
	r->free_slot = c->slot;
	r->held--;
}

/* ======================================================================
 * store layer
 * ====================================================================== */

struct dir_change {
	uint32_t pid;
	ann_dirent e; /* kind NONE: dropped */
};

struct ann_store {
	const ann_store_ops *ops;
	ann_catalog *cat;
	char *dir;          /* index directory */
	int lock_fd;        /* flock'd directory (writer), else -1 */
	bool writable;
	bool failed;        /* sticky writer failure */
	bool in_txn;
	ann_store_txn *cur; /* the running txn (aborted by close) */
	void *impl;         /* backend state */
	pthread_rwlock_t dir_lock; /* guards d and dir_cap */
	ann_dir d;          /* RAM directory */
	uint32_t dir_cap;   /* entries allocated in d.ents */
};

struct ann_store_txn {
	ann_store *s;
	ann_cat_txn *ct;
	bool failed;
	struct dir_change *ch; /* changes to apply to the RAM directory at commit */
	size_t nch, capch;
};

static const ann_store_ops file_ops;

ann_catalog *ann_store_catalog(ann_store *s)
{
	return s->cat;
}

ann_store_kind ann_store_kind_of(const ann_store *s)
{
	return s->ops->kind;
}

const char *ann_store_kind_name(ann_store_kind k)
{
	return k == ANN_STORE_LMDB ? "lmdb" : k == ANN_STORE_FILE ? "file" : "?";
}

const char *ann_store_dir_path(const ann_store *s)
{
	return s->dir;
}

ann_catalog *ann_store_txn_store_catalog(ann_store_txn *t)
{
	return t->s->cat;
}

ann_store *ann_store_txn_store(ann_store_txn *t)
{
	return t->s;
}

void *ann_store_impl(ann_store *s)
{
	return s->impl;
}

void ann_store_set_impl(ann_store *s, void *impl)
{
	s->impl = impl;
}

void ann_store_fail(ann_store *s)
{
	s->failed = true;
}

ann_cat_txn *ann_store_txn_catalog(ann_store_txn *t)
{
	return t->ct;
}

size_t ann_store_block_bytes(ann_store_kind k, size_t payload)
{
	if (k == ANN_STORE_LMDB)
		return ANN_ALIGN_UP(payload + 16, (size_t)ANN_PAGE) - 16;
	return ANN_ALIGN_UP(payload ? payload : 1, (size_t)ANN_PAGE);
}

bool ann_store_block_size_ok(ann_store_kind k, size_t n)
{
	if (n == 0 || n > UINT32_MAX - ANN_PAGE)
		return false;
	if (k == ANN_STORE_LMDB)
		return (n + 16) % ANN_PAGE == 0;
	return n % ANN_PAGE == 0;
}

void ann_store_opts_init(ann_store_opts *o)
{
	memset(o, 0, sizeof *o);
	o->kind = ANN_STORE_FILE;
}

static char *path_join(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);
	char *p = ann_malloc(na + nb + 2);
	if (!p)
		return NULL;
	memcpy(p, a, na);
	p[na] = '/';
	memcpy(p + na + 1, b, nb + 1);
	return p;
}

static int load_dir(ann_store *s, ann_error *err)
{
	ann_cat_txn *rt;
	ANN_TRY(ann_catalog_read_begin(s->cat, &rt, err));
	ann_dir d;
	int rc = ann_catalog_dir_load(rt, &d, err);
	ann_catalog_read_end(rt);
	if (rc < 0)
		return rc;
	pthread_rwlock_wrlock(&s->dir_lock);
	ann_catalog_dir_free(&s->d);
	s->d = d;
	s->dir_cap = d.n;
	pthread_rwlock_unlock(&s->dir_lock);
	return ANN_OK;
}

int ann_store_open(const char *dir, const ann_store_opts *o, ann_store **out, ann_error *err)
{
	ann_store_opts defaults;
	if (!o) {
		ann_store_opts_init(&defaults);
		o = &defaults;
	}
	*out = NULL;
	bool writable = o->writable || o->create;
	if (writable && o->readonly)
		return ann_err(err, ANN_E_INVAL, "%s: a read-only store cannot be writable", dir);
	if (o->create && o->kind != ANN_STORE_FILE && o->kind != ANN_STORE_LMDB)
		return ann_err(err, ANN_E_INVAL, "%s: unknown store kind %d", dir, (int)o->kind);
	int rc;
	char *catpath = NULL;
	ann_cat_txn *t = NULL;
	ann_store *s = ann_calloc(1, sizeof *s);
	if (!s)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", dir);
	s->lock_fd = -1;
	s->writable = writable;
	pthread_rwlock_init(&s->dir_lock, NULL);
	size_t dl = strlen(dir);
	s->dir = ann_malloc(dl + 1);
	catpath = path_join(dir, "catalog.lmdb");
	if (!s->dir || !catpath) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory", dir);
		goto fail;
	}
	memcpy(s->dir, dir, dl + 1);
	if (o->create && mkdir(dir, 0755) != 0 && errno != EEXIST) {
		rc = ann_err_sys(err, errno, "%s: cannot create directory", dir);
		goto fail;
	}
	if (writable) {
		s->lock_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (s->lock_fd < 0) {
			rc = errno == ENOENT ? ann_err(err, ANN_E_NOTFOUND, "%s: no such index directory", dir)
					     : ann_err_sys(err, errno, "%s: cannot open directory", dir);
			goto fail;
		}
		if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
			rc = errno == EWOULDBLOCK
				     ? ann_err(err, ANN_E_STATE, "%s: another process has the index open for writing", dir)
				     : ann_err_sys(err, errno, "%s: cannot lock directory", dir);
			goto fail;
		}
	}
	ann_catalog_opts co;
	ann_catalog_opts_init(&co);
	co.create = o->create;
	co.readonly = o->readonly;
	co.map_bytes = o->map_bytes;
	co.max_readers = o->max_readers;
	ANN_CHECK(rc, ann_catalog_open(catpath, &co, &s->cat, err));

	uint64_t kind_code = 0;
	ANN_CHECK(rc, ann_catalog_read_begin(s->cat, &t, err));
	rc = ann_catalog_meta_get_u64(t, "store.kind", &kind_code, err);
	ann_catalog_read_end(t);
	t = NULL;
	if (rc < 0 && rc != ANN_E_NOTFOUND)
		goto fail;
	bool exists = rc == ANN_OK;
	if (o->create && exists) {
		rc = ann_err(err, ANN_E_EXISTS, "%s: already holds a store", dir);
		goto fail;
	}
	if (!o->create && !exists) {
		rc = ann_err(err, ANN_E_FORMAT, "%s: catalog has no meta 'store.kind' (unfinished creation?)", dir);
		goto fail;
	}
	if (o->create)
		kind_code = ann_kind_code(o->kind);
	if (kind_code == ANN_KIND_FILE) {
		s->ops = &file_ops;
	} else if (kind_code == ANN_KIND_LMDB) {
		s->ops = &ann_store_lmdb_ops;
	} else {
		rc = ann_err(err, ANN_E_FORMAT, "%s: meta 'store.kind' is %llu, expected 1 (file) or 2 (lmdb)", dir,
			     (unsigned long long)kind_code);
		goto fail;
	}
	if (o->create) {
		ANN_CHECK(rc, ann_catalog_write_begin(s->cat, &t, err));
		ANN_CHECK(rc, s->ops->open(s, o, t, err));
		ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "store.kind", kind_code, err));
		rc = ann_catalog_commit(t, err);
		t = NULL;
		if (rc < 0)
			goto fail;
		/* Reopen through the ordinary path so a created store is in the
		 * same state as an opened one. */
		s->ops->close(s);
		s->impl = NULL;
	}
	ANN_CHECK(rc, s->ops->open(s, o, NULL, err));
	ANN_CHECK(rc, load_dir(s, err));
	ann_free(catpath);
	*out = s;
	return ANN_OK;
fail:
	if (t)
		ann_catalog_abort(t);
	ann_free(catpath);
	ann_store_close(s);
	return rc;
}

void ann_store_close(ann_store *s)
{
	if (!s)
		return;
	if (s->cur)
		ann_store_abort(s->cur);
	if (s->ops && s->impl)
		s->ops->close(s);
	ann_catalog_close(s->cat);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	ann_catalog_dir_free(&s->d);
	pthread_rwlock_destroy(&s->dir_lock);
	ann_free(s->dir);
	ann_free(s);
}

/* ---- txns ------------------------------------------------------------------- */

static int txn_check(ann_store_txn *t, ann_error *err)
{
	if (t->s->failed)
		return ann_err(err, ANN_E_STATE, "%s: the writer failed earlier; reopen the index", t->s->dir);
	if (t->failed)
		return ann_err(err, ANN_E_STATE, "%s: the txn failed earlier; only abort remains", t->s->dir);
	return ANN_OK;
}

int ann_store_begin(ann_store *s, ann_store_txn **out, ann_error *err)
{
	*out = NULL;
	if (!s->writable)
		return ann_err(err, ANN_E_INVAL, "%s: store not opened for writing", s->dir);
	if (s->failed)
		return ann_err(err, ANN_E_STATE, "%s: the writer failed earlier; reopen the index", s->dir);
	if (s->in_txn)
		return ann_err(err, ANN_E_INVAL, "%s: a store txn is already running", s->dir);
	ann_store_txn *t = ann_calloc(1, sizeof *t);
	if (!t)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", s->dir);
	t->s = s;
	int rc = ann_catalog_write_begin(s->cat, &t->ct, err);
	if (rc < 0) {
		ann_free(t);
		return rc;
	}
	rc = s->ops->begin(t, err);
	if (rc < 0) {
		ann_catalog_abort(t->ct);
		ann_free(t);
		return rc;
	}
	s->in_txn = true;
	s->cur = t;
	*out = t;
	return ANN_OK;
}

static int add_change(ann_store_txn *t, uint32_t pid, const ann_dirent *e, ann_error *err)
{
	if (t->nch == t->capch) {
		size_t cap = t->capch ? t->capch * 2 : 64;
		struct dir_change *p = ann_realloc(t->ch, cap * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: out of memory", t->s->dir);
		t->ch = p;
		t->capch = cap;
	}
	t->ch[t->nch].pid = pid;
	t->ch[t->nch].e = *e;
	t->nch++;
	return ANN_OK;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The current entry of pid inside the txn (kind NONE when absent). */
static int txn_entry(ann_store_txn *t, uint32_t pid, ann_dirent *e, ann_error *err)
{
	int rc = ann_catalog_part_get(t->ct, pid, e, err);
	if (rc == ANN_E_NOTFOUND) {
		memset(e, 0, sizeof *e);
		return ANN_OK;
	}
	if (rc == ANN_OK && e->kind != ann_kind_code(t->s->ops->kind))
		return ann_err(err, ANN_E_CORRUPT, "%s: partition %u: directory entry of store kind %u in a %s store",
			       t->s->dir, pid, e->kind, t->s->ops->name);
	return rc;
}

int ann_store_put_blocks(ann_store_txn *t, const ann_block_put *puts, size_t n, ann_dirent *out, ann_error *err)
{
	ANN_TRY(txn_check(t, err));
	if (n == 0)
		return ANN_OK;
	ann_store_kind kind = t->s->ops->kind;
	for (size_t i = 0; i < n; i++) {
		if (!puts[i].data || !ann_store_block_size_ok(kind, puts[i].length) || puts[i].head > puts[i].length)
			return ann_err(err, ANN_E_INVAL,
				       "%s: partition %u: block of %zu bytes; the %s store takes %s", t->s->dir,
				       puts[i].pid, puts[i].length, t->s->ops->name,
				       kind == ANN_STORE_LMDB ? "4096*k - 16 bytes" : "4096*k bytes");
	}
	int rc;
	uint32_t *pids = ann_malloc(n * sizeof *pids);
	ann_dirent *ents = ann_malloc(n * sizeof *ents);
	ann_dirent *olds = ann_malloc(n * sizeof *olds);
	if (!pids || !ents || !olds) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory", t->s->dir);
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		pids[i] = puts[i].pid;
	qsort(pids, n, sizeof *pids, cmp_u32);
	for (size_t i = 1; i < n; i++) {
		if (pids[i] == pids[i - 1]) {
			rc = ann_err(err, ANN_E_INVAL, "%s: partition %u twice in one put", t->s->dir, pids[i]);
			goto out;
		}
	}
	for (size_t i = 0; i < n; i++) {
		ANN_CHECK(rc, txn_entry(t, puts[i].pid, &olds[i], err));
		ann_dirent *e = &ents[i];
		memset(e, 0, sizeof *e);
		e->kind = ann_kind_code(kind);
		e->length = (uint32_t)puts[i].length;
		e->count = puts[i].count;
		e->checksum = XXH64(puts[i].data, puts[i].length, 0);
		e->head = puts[i].head;
		e->generation = olds[i].kind ? olds[i].generation + 1 : 1;
	}
	ANN_CHECK(rc, t->s->ops->put(t, puts, n, ents, olds, err));
	for (size_t i = 0; i < n; i++) {
		ANN_CHECK(rc, ann_catalog_part_put(t->ct, puts[i].pid, &ents[i], err));
		ANN_CHECK(rc, add_change(t, puts[i].pid, &ents[i], err));
	}
	if (out)
		memcpy(out, ents, n * sizeof *ents);
	rc = ANN_OK;
out:
fail:
	if (rc < 0)
		t->failed = true;
	ann_free(pids);
	ann_free(ents);
	ann_free(olds);
	return rc;
}

int ann_store_drop(ann_store_txn *t, uint32_t pid, ann_error *err)
{
	ANN_TRY(txn_check(t, err));
	ann_dirent old;
	int rc;
	ANN_CHECK(rc, txn_entry(t, pid, &old, err));
	if (!old.kind)
		return ann_err(err, ANN_E_NOTFOUND, "%s: no partition %u to drop", t->s->dir, pid);
	ANN_CHECK(rc, t->s->ops->drop(t, pid, &old, err));
	ANN_CHECK(rc, ann_catalog_part_del(t->ct, pid, err));
	memset(&old, 0, sizeof old);
	ANN_CHECK(rc, add_change(t, pid, &old, err));
	return ANN_OK;
fail:
	t->failed = true;
	return rc;
}

static void dir_apply(ann_store *s, const struct dir_change *ch, size_t n, uint64_t txnid)
{
	bool lost = false;
	pthread_rwlock_wrlock(&s->dir_lock);
	for (size_t i = 0; i < n; i++) {
		uint32_t pid = ch[i].pid;
		if (pid >= s->dir_cap) {
			if (!ch[i].e.kind)
				continue;
			uint64_t cap = s->dir_cap ? (uint64_t)s->dir_cap * 2 : 64;
			if (cap < (uint64_t)pid + 1)
				cap = (uint64_t)pid + 1;
			if (cap > UINT32_MAX)
				cap = UINT32_MAX;
			ann_dirent *p = ann_realloc(s->d.ents, (size_t)cap * sizeof *p);
			if (!p) {
				/* Keep serving what we have; ann_store_refresh reloads it. */
				lost = true;
				continue;
			}
			memset(p + s->dir_cap, 0, (size_t)(cap - s->dir_cap) * sizeof *p);
			s->d.ents = p;
			s->dir_cap = (uint32_t)cap;
		}
		bool had = pid < s->d.n && s->d.ents[pid].kind;
		s->d.ents[pid] = ch[i].e;
		if (ch[i].e.kind && pid >= s->d.n)
			s->d.n = pid + 1;
		s->d.count += (ch[i].e.kind ? 1u : 0u) - (had ? 1u : 0u);
	}
	while (s->d.n > 0 && !s->d.ents[s->d.n - 1].kind)
		s->d.n--;
	/* 0 marks a stale directory (sticky until ann_store_refresh reloads it). */
	s->d.txnid = (lost || s->d.txnid == 0) ? 0 : txnid;
	pthread_rwlock_unlock(&s->dir_lock);
}

int ann_store_commit(ann_store_txn *t, ann_error *err)
{
	ann_store *s = t->s;
	int rc = txn_check(t, err);
	if (rc < 0) {
		ann_store_abort(t);
		return rc;
	}
	uint64_t txnid = ann_catalog_txn_id(t->ct);
	rc = s->ops->precommit(t, err);
	if (rc < 0) {
		ann_store_abort(t);
		return rc;
	}
	rc = ann_catalog_commit(t->ct, err);
	t->ct = NULL;
	if (rc < 0) {
		/* Whether LMDB's commit reached the disk is unknown; stop writing. */
		s->failed = true;
		s->ops->postcommit(t, false);
		s->in_txn = false;
		s->cur = NULL;
		ann_free(t->ch);
		ann_free(t);
		return rc;
	}
	s->ops->postcommit(t, true);
	dir_apply(s, t->ch, t->nch, txnid);
	s->in_txn = false;
	s->cur = NULL;
	ann_free(t->ch);
	ann_free(t);
	return ANN_OK;
}

void ann_store_abort(ann_store_txn *t)
{
	if (!t)
		return;
	if (t->ct)
		ann_catalog_abort(t->ct);
	t->s->ops->postcommit(t, false);
	t->s->in_txn = false;
	t->s->cur = NULL;
	ann_free(t->ch);
	ann_free(t);
}

/* ---- RAM directory ------------------------------------------------------------ */

int ann_store_lookup(ann_store *s, uint32_t pid, ann_dirent *e, ann_error *err)
{
	pthread_rwlock_rdlock(&s->dir_lock);
	bool found = pid < s->d.n && s->d.ents[pid].kind;
	if (found)
		*e = s->d.ents[pid];
	pthread_rwlock_unlock(&s->dir_lock);
	if (!found)
		return ann_err(err, ANN_E_NOTFOUND, "%s: no partition %u", s->dir, pid);
	return ANN_OK;
}

int ann_store_dir_copy(ann_store *s, ann_dir *d, ann_error *err)
{
	memset(d, 0, sizeof *d);
	pthread_rwlock_rdlock(&s->dir_lock);
	d->ents = ann_malloc((size_t)(s->d.n ? s->d.n : 1) * sizeof *d->ents);
	if (d->ents) {
		if (s->d.n)
			memcpy(d->ents, s->d.ents, (size_t)s->d.n * sizeof *d->ents);
		d->n = s->d.n;
		d->count = s->d.count;
		d->txnid = s->d.txnid;
	}
	pthread_rwlock_unlock(&s->dir_lock);
	if (!d->ents)
		return ann_err(err, ANN_E_NOMEM, "%s: directory copy: out of memory", s->dir);
	return ANN_OK;
}

int ann_store_refresh(ann_store *s, bool *changed, ann_error *err)
{
	if (changed)
		*changed = false;
	pthread_rwlock_rdlock(&s->dir_lock);
	uint64_t have = s->d.txnid;
	pthread_rwlock_unlock(&s->dir_lock);
	if (have != 0 && have == ann_catalog_last_txnid(s->cat))
		return ANN_OK;
	ANN_TRY(load_dir(s, err));
	if (changed)
		*changed = true;
	return ANN_OK;
}

/* ---- batched block reader -------------------------------------------------------- */

struct rd_info {
	uint64_t tag;
	uint32_t pid;
	int status;       /* set when the lookup failed (completed without I/O) */
	bool bad_range;   /* the range does not lie within the block */
	uint64_t off;     /* range within the block */
	uint32_t len;     /* range length; 0 = the whole block */
	uint32_t io_slot; /* io reader slot while delivered, else NO_SLOT */
	uint32_t next;    /* free-list link */
	ann_dirent ent;
};

struct ann_store_reader {
	ann_store *s;
	ann_store_reader_opts o;
	ann_ioreader *io;     /* file store */
	ann_cat_txn *rt;      /* batch snapshot; reset between batches */
	ann_cat_txn *ext;     /* the caller's snapshot (ann_store_reader_use_txn), or NULL */
	bool io_direct;       /* reads are widened to pages (O_DIRECT) */
	bool in_batch;
	struct rd_info *info; /* per outstanding or held request */
	uint32_t ninfo, free_info;
	uint32_t *ready;      /* FIFO ring of info indices completed without I/O (or LMDB fetches) */
	size_t rhead, rlen, rcap;
	ann_ioreq *reqbuf;    /* scratch for submitting to io */
	size_t reqcap;
	size_t outstanding;   /* submitted, not yet returned */
	size_t held;          /* returned, not released */
	uint64_t requests, bytes;
};

void ann_store_reader_opts_init(ann_store_reader_opts *o)
{
	memset(o, 0, sizeof *o);
	ann_ioreader_opts_init(&o->io);
}

int ann_store_reader_new(ann_store *s, const ann_store_reader_opts *o, ann_store_reader **out, ann_error *err)
{
	ann_store_reader_opts defaults;
	if (!o) {
		ann_store_reader_opts_init(&defaults);
		o = &defaults;
	}
	*out = NULL;
	ann_store_reader *r = ann_calloc(1, sizeof *r);
	if (!r)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", s->dir);
	r->s = s;
	r->o = *o;
	r->free_info = NO_SLOT;
	int rc;
	if (s->ops->kind == ANN_STORE_FILE) {
		char *p = path_join(s->dir, "blocks.dat");
		if (!p) {
			rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory", s->dir);
			goto fail;
		}
		rc = ann_ioreader_open(p, &o->io, &r->io, err);
		ann_free(p);
		if (rc < 0)
			goto fail;
		ann_ioreader_stats st;
		ann_ioreader_get_stats(r->io, &st);
		r->io_direct = st.direct;
	}
	ANN_CHECK(rc, ann_catalog_read_begin(s->cat, &r->rt, err));
	ann_catalog_read_reset(r->rt);
	*out = r;
	return ANN_OK;
fail:
	ann_store_reader_free(r);
	return rc;
}

void ann_store_reader_free(ann_store_reader *r)
{
	if (!r)
		return;
	ann_ioreader_free(r->io);
	if (r->rt)
		ann_catalog_read_end(r->rt);
	ann_free(r->info);
	ann_free(r->ready);
	ann_free(r->reqbuf);
	ann_free(r);
}

const char *ann_store_reader_path(const ann_store_reader *r)
{
	return r->io ? ann_ioreader_path(r->io) : "lmdb";
}

void ann_store_reader_stats(const ann_store_reader *r, ann_ioreader_stats *st)
{
	if (r->io) {
		ann_ioreader_get_stats(r->io, st);
		return;
	}
	memset(st, 0, sizeof *st);
	st->requests = r->requests;
	st->bytes = r->bytes;
}

static int info_get(ann_store_reader *r, uint32_t *out, ann_error *err)
{
	if (r->free_info == NO_SLOT) {
		uint32_t cap = r->ninfo ? r->ninfo * 2 : 64;
		if (cap < r->ninfo || cap >= NO_SLOT)
			return ann_err(err, ANN_E_INVAL, "%s: too many outstanding block reads", r->s->dir);
		struct rd_info *p = ann_realloc(r->info, (size_t)cap * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: out of memory", r->s->dir);
		for (uint32_t i = r->ninfo; i < cap; i++)
			p[i].next = i + 1 < cap ? i + 1 : NO_SLOT;
		r->free_info = r->ninfo;
		r->info = p;
		r->ninfo = cap;
	}
	*out = r->free_info;
	r->free_info = r->info[*out].next;
	return ANN_OK;
}

static void info_put(ann_store_reader *r, uint32_t i)
{
	r->info[i].next = r->free_info;
	r->free_info = i;
}

static int ready_push(ann_store_reader *r, uint32_t i, ann_error *err)
{
	if (r->rlen == r->rcap) {
		size_t cap = r->rcap ? r->rcap * 2 : 64;
		uint32_t *p = ann_malloc(cap * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: out of memory", r->s->dir);
		for (size_t k = 0; k < r->rlen; k++)
			p[k] = r->ready[(r->rhead + k) % r->rcap];
		ann_free(r->ready);
		r->ready = p;
		r->rcap = cap;
		r->rhead = 0;
	}
	r->ready[(r->rhead + r->rlen) % r->rcap] = i;
	r->rlen++;
	return ANN_OK;
}

static void batch_maybe_end(ann_store_reader *r)
{
	if (r->in_batch && r->outstanding == 0 && r->held == 0) {
		if (!r->ext)
			ann_catalog_read_reset(r->rt);
		r->in_batch = false;
	}
}

int ann_store_reader_use_txn(ann_store_reader *r, ann_cat_txn *t, ann_error *err)
{
	if (r->in_batch)
		return ann_err(err, ANN_E_STATE, "%s: store reader: snapshot changed during a batch", r->s->dir);
	r->ext = t;
	return ANN_OK;
}

/* Bytes a read of [off, off + len) of blocks.dat costs: the io reader widens
 * O_DIRECT reads to whole pages. */
static uint64_t io_cost(const ann_store_reader *r, uint64_t off, uint64_t len)
{
	if (!r->io_direct)
		return len;
	return ANN_ALIGN_UP(off + len, (uint64_t)ANN_PAGE) - (off & ~(uint64_t)(ANN_PAGE - 1));
}

int ann_store_reader_submit(ann_store_reader *r, const uint32_t *pids, const uint64_t *tags, size_t n,
			    ann_error *err)
{
	if (n == 0)
		return ANN_OK;
	ann_block_range *rs = ann_malloc(n * sizeof *rs);
	if (!rs)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", r->s->dir);
	for (size_t i = 0; i < n; i++)
		rs[i] = (ann_block_range){ pids[i], 0, 0, tags ? tags[i] : i };
	int rc = ann_store_reader_submit_ranges(r, rs, n, err);
	ann_free(rs);
	return rc;
}

int ann_store_reader_submit_ranges(ann_store_reader *r, const ann_block_range *rs, size_t n, ann_error *err)
{
	if (n == 0)
		return ANN_OK;
	if (!r->in_batch) {
		if (!r->ext)
			ANN_TRY(ann_catalog_read_renew(r->rt, err));
		r->in_batch = true;
	}
	ann_cat_txn *tx = r->ext ? r->ext : r->rt;
	uint8_t want = ann_kind_code(r->s->ops->kind);
	size_t nreq = 0;
	if (r->io && r->reqcap < n) {
		ann_ioreq *p = ann_realloc(r->reqbuf, n * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: out of memory", r->s->dir);
		r->reqbuf = p;
		r->reqcap = n;
	}
	int rc = ANN_OK;
	size_t i;
	for (i = 0; i < n; i++) {
		uint32_t k = 0;
		rc = info_get(r, &k, err);
		if (rc < 0)
			break;
		struct rd_info *in = &r->info[k];
		in->tag = rs[i].tag;
		in->pid = rs[i].pid;
		in->off = rs[i].offset;
		in->len = rs[i].length;
		in->status = ANN_OK;
		in->bad_range = false;
		in->io_slot = NO_SLOT;
		ann_error e2;
		int lrc = ann_catalog_part_get(tx, rs[i].pid, &in->ent, &e2);
		if (lrc == ANN_OK && in->ent.kind != want)
			lrc = ANN_E_CORRUPT;
		if (lrc == ANN_OK && (in->len ? in->off + in->len > in->ent.length : in->off != 0)) {
			in->bad_range = true;
			lrc = ANN_E_CORRUPT;
		}
		uint64_t rlen = in->len ? in->len : in->ent.length;
		if (lrc == ANN_E_NOTFOUND || lrc == ANN_E_CORRUPT || lrc == ANN_E_FORMAT) {
			memset(&in->ent, 0, sizeof in->ent);
			in->status = lrc == ANN_E_NOTFOUND ? ANN_E_NOTFOUND : ANN_E_CORRUPT;
			if ((rc = ready_push(r, k, err)) < 0)
				info_put(r, k);
		} else if (lrc < 0) {
			info_put(r, k);
			if (err)
				*err = e2;
			rc = lrc;
		} else if (r->io && io_cost(r, in->ent.offset + in->off, rlen) > ann_ioreader_max_request(r->io)) {
			in->status = ANN_E_INVAL; /* completes alone; the others still read */
			if ((rc = ready_push(r, k, err)) < 0)
				info_put(r, k);
		} else if (r->io) {
			r->reqbuf[nreq++] = (ann_ioreq){ in->ent.offset + in->off, (uint32_t)rlen, k };
		} else if ((rc = ready_push(r, k, err)) < 0) {
			info_put(r, k);
		}
		if (rc < 0)
			break;
		r->outstanding++;
	}
	if (nreq > 0) {
		ann_error e2;
		int src = ann_ioreader_submit(r->io, r->reqbuf, nreq, &e2);
		/* Requests the io reader refused (a block larger than its pool,
		 * no memory) complete with that status, one by one. */
		for (size_t q = 0; src < 0 && q < nreq; q++) {
			uint32_t k = (uint32_t)r->reqbuf[q].tag;
			r->info[k].status = src;
			int prc = ready_push(r, k, err);
			if (prc < 0) {
				/* Not even that: forget them and fail the submit. */
				info_put(r, k);
				r->outstanding--;
				rc = prc;
			}
		}
	}
	return rc;
}

static void fill_read(ann_store_reader *r, uint32_t k, ann_block_read *b)
{
	struct rd_info *in = &r->info[k];
	memset(b, 0, sizeof *b);
	b->tag = in->tag;
	b->pid = in->pid;
	b->ent = in->ent;
	b->offset = in->off;
	b->slot = k;
	b->status = in->status;
}

static void check_block(ann_store_reader *r, ann_block_read *b, ann_error *err)
{
	if (b->status < 0 || !r->o.verify || r->info[b->slot].len)
		return; /* a range cannot be checked against the whole block's sum */
	uint64_t sum = XXH64(b->data, b->length, 0);
	if (sum != b->ent.checksum) {
		b->status = ann_err(err, ANN_E_CORRUPT,
				    "%s: partition %u (%s store, offset %llu, %zu bytes): block checksum %016llx, "
				    "directory says %016llx",
				    r->s->dir, b->pid, r->s->ops->name, (unsigned long long)b->ent.offset, b->length,
				    (unsigned long long)sum, (unsigned long long)b->ent.checksum);
	}
}

int ann_store_reader_next(ann_store_reader *r, ann_block_read *b, ann_error *err)
{
	if (r->rlen > 0) {
		uint32_t k = r->ready[r->rhead];
		r->rhead = (r->rhead + 1) % r->rcap;
		r->rlen--;
		r->outstanding--;
		r->held++;
		fill_read(r, k, b);
		struct rd_info *in = &r->info[k];
		if (b->status == ANN_E_NOTFOUND) {
			ann_err(err, ANN_E_NOTFOUND, "%s: no partition %u", r->s->dir, b->pid);
		} else if (in->bad_range) {
			ann_err(err, ANN_E_CORRUPT, "%s: partition %u: range %llu+%u lies outside its block of %u bytes",
				r->s->dir, b->pid, (unsigned long long)in->off, in->len, b->ent.length);
		} else if (b->status == ANN_E_CORRUPT) {
			ann_err(err, b->status, "%s: partition %u: directory entry unreadable or of the wrong store kind",
				r->s->dir, b->pid);
		} else if (b->status < 0) {
			ann_err(err, b->status, "%s: partition %u: block of %u bytes at offset %llu not read (%s; "
				"larger than the reader's buffer pool?)", r->s->dir, b->pid, b->ent.length,
				(unsigned long long)b->ent.offset, ann_strerror(b->status));
		} else {
			/* LMDB store: a pointer into the map, valid while the batch lasts. */
			const uint8_t *p = NULL;
			size_t len = 0;
			int rc = ann_catalog_block_get(r->ext ? r->ext : r->rt, b->pid, &p, &len, err);
			if (rc < 0) {
				b->status = rc == ANN_E_NOTFOUND ? ANN_E_CORRUPT : rc;
				if (rc == ANN_E_NOTFOUND)
					ann_err(err, ANN_E_CORRUPT, "%s: partition %u: directory entry without block",
						r->s->dir, b->pid);
			} else if (len != b->ent.length) {
				b->status = ann_err(err, ANN_E_CORRUPT,
						    "%s: partition %u: block of %zu bytes, directory says %u", r->s->dir,
						    b->pid, len, b->ent.length);
			} else if (in->len) {
				/* A range: the LMDB pages it touches count as read. */
				b->data = p + in->off;
				b->length = in->len;
				uintptr_t a = (uintptr_t)b->data;
				b->cost = ANN_ALIGN_UP(a + in->len, (uintptr_t)ANN_PAGE) - (a & ~(uintptr_t)(ANN_PAGE - 1));
				r->requests++;
				r->bytes += b->cost;
			} else {
				b->data = p;
				b->length = len;
				b->cost = len;
				r->requests++;
				r->bytes += len;
				check_block(r, b, err);
			}
		}
		return 1;
	}
	if (!r->io || ann_ioreader_outstanding(r->io) == 0) {
		batch_maybe_end(r);
		return 0;
	}
	ann_iocomp c;
	int rc = ann_ioreader_next(r->io, &c, err);
	if (rc <= 0)
		return rc;
	uint32_t k = (uint32_t)c.tag;
	r->info[k].io_slot = c.slot;
	r->outstanding--;
	r->held++;
	fill_read(r, k, b);
	b->status = c.status;
	if (c.status < 0)
		ann_err_prefix(err, c.status, "partition %u", b->pid);
	b->data = c.data;
	b->length = c.length;
	b->cost = io_cost(r, b->ent.offset + b->offset, c.length);
	check_block(r, b, err);
	return 1;
}

void ann_store_reader_release(ann_store_reader *r, const ann_block_read *b)
{
	if (b->slot >= r->ninfo)
		return;
	struct rd_info *in = &r->info[b->slot];
	if (in->io_slot != NO_SLOT) {
		ann_iocomp c = { .slot = in->io_slot };
		ann_ioreader_release(r->io, &c);
		in->io_slot = NO_SLOT;
	}
	info_put(r, b->slot);
	r->held--;
	batch_maybe_end(r);
}

/* ---- verification --------------------------------------------------------------- */

struct vctx {
	ann_issue_fn fn;
	void *ctx;
	ann_verify_stats *st;
};

static void vcount(void *ctx, const ann_issue *is)
{
	struct vctx *v = ctx;
	if (is->warning)
		v->st->warnings++;
	else
		v->st->problems++;
	if (v->fn)
		v->fn(v->ctx, is);
}

struct idmap_vctx {
	const ann_dir *d;
	struct vctx *v;
	uint64_t reported;
};

static int idmap_check(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	(void)err;
	struct idmap_vctx *ic = ctx;
	if (klen != 8 || vlen != 4)
		return 0; /* reported by the catalog pass */
	uint32_t pid = ann_ld32(val);
	if (pid < ic->d->n && ic->d->ents[pid].kind)
		return 0;
	char msg[200];
	snprintf(msg, sizeof msg, "idmap: id %llu maps to partition %u, which is not in the directory",
		 (unsigned long long)ann_ldbe64(key), pid);
	ann_issue is = { ANN_ISSUE_IDMAP, true, (int64_t)pid, "idmap", msg };
	vcount(ic->v, &is);
	return 0;
}

int ann_store_verify(ann_store *s, ann_issue_fn fn, void *ctx, ann_verify_stats *st, ann_error *err)
{
	ann_verify_stats local;
	if (!st)
		st = &local;
	memset(st, 0, sizeof *st);
	struct vctx v = { fn, ctx, st };
	ann_cat_txn *rt;
	ANN_TRY(ann_catalog_read_begin(s->cat, &rt, err));
	ann_dir d = { 0 };
	int rc;
	ANN_CHECK(rc, ann_catalog_verify(rt, vcount, &v, NULL, err));
	ANN_CHECK(rc, ann_catalog_dir_load_valid(rt, &d, err));
	ANN_CHECK(rc, s->ops->verify(s, rt, &d, vcount, &v, st, err));
	struct idmap_vctx ic = { &d, &v, 0 };
	ANN_CHECK(rc, ann_catalog_foreach_valid(rt, ANN_CAT_IDMAP, NULL, 0, idmap_check, &ic, err));
	if (st->problems > 0)
		rc = ann_err(err, ANN_E_CORRUPT, "%s: %llu problems found (%llu warnings)", s->dir,
			     (unsigned long long)st->problems, (unsigned long long)st->warnings);
	else
		rc = ANN_OK;
fail:
	ann_catalog_dir_free(&d);
	ann_catalog_read_end(rt);
	return rc;
}

int ann_store_space_get(ann_store *s, ann_store_space *sp, ann_error *err)
{
	memset(sp, 0, sizeof *sp);
	sp->kind = s->ops->kind;
	pthread_rwlock_rdlock(&s->dir_lock);
	sp->partitions = s->d.count;
	for (uint32_t i = 0; i < s->d.n; i++)
		if (s->d.ents[i].kind)
			sp->live_bytes += s->d.ents[i].length;
	pthread_rwlock_unlock(&s->dir_lock);
	ANN_TRY(ann_catalog_space_get(s->cat, &sp->cat, err));
	return s->ops->space(s, sp, err);
}

/* ======================================================================
 * the raw-file store
 * ====================================================================== */

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
	struct file_store *f = s->impl;
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
	s->impl = NULL;
}

static int file_create(ann_store *s, struct file_store *f, ann_cat_txn *t, ann_error *err)
{
	char *tmp = NULL;
	uint8_t *h = ann_aligned_alloc(ANN_PAGE, HDR_BYTES);
	if (!h)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", f->path);
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
	ANN_CHECK(rc, ann_fsync_dir(s->dir, err));
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
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", s->dir);
	f->fd = -1;
	s->impl = f;
	f->path = path_join(s->dir, "blocks.dat");
	if (!f->path)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", s->dir);
	if (create_txn)
		return file_create(s, f, create_txn, err);

	int rc;
	uint8_t *h = NULL;
	ann_cat_txn *t = NULL;
	f->writer = s->writable;
	rc = open_maybe_direct(f->path, s->writable ? O_RDWR : O_RDONLY, !o->no_direct, &f->direct, err);
	if (rc < 0) {
		if (err && err->sys_errno == ENOENT)
			rc = ann_err(err, ANN_E_NOTFOUND, "%s: missing (the catalog says this is a file store)", f->path);
		return rc;
	}
	f->fd = rc;
	h = ann_aligned_alloc(ANN_PAGE, HDR_BYTES);
	if (!h)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", f->path);
	ANN_CHECK(rc, ann_pread_all(f->fd, h, HDR_BYTES, 0, f->path, err));
	ANN_CHECK(rc, hdr_check(f->path, h, f->uuid, err));
	ANN_CHECK(rc, ann_catalog_read_begin(s->cat, &t, err));
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
	if (s->writable) {
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
	struct file_store *f = s->impl;
	ANN_TRY(ann_catalog_oldest_reader(s->cat, &f->oldest, err));
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
				return ann_err(err, ANN_E_NOMEM, "%s: out of memory", f->path);
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
	struct file_store *f = s->impl;
	struct wr *w = ann_malloc(n * sizeof *w);
	if (!w)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", f->path);
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
	struct file_store *f = s->impl;
	ann_cat_txn *ct = ann_store_txn_catalog(t);
	uint64_t txid = ann_catalog_txn_id(ct);
	ANN_TRY(file_sync(s, f, err));

	/* New free list: what is left of the committed one plus this txn's
	 * frees, sorted, adjacent extents merged, a reusable tail given back to
	 * the end. */
	size_t n = f->nwork + f->nfreed;
	ann_extent *nx = ann_malloc((n ? n : 1) * sizeof *nx);
	if (!nx)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", f->path);
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
	struct file_store *f = s->impl;
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
	ANN_TRY(ann_catalog_read_begin(s->cat, &rt, err));
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
	struct file_store *f = s->impl;
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
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", f->path);
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
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory", f->path);
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

static const ann_store_ops file_ops = {
	.kind = ANN_STORE_FILE,
	.name = "file",
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

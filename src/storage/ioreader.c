/* SPDX-License-Identifier: MIT */
/*
 * ioreader.c: the per-thread io_uring reader (ioreader.h) with its pread
 * fallback, and the io_uring fault hook of tests/fault.
 *
 * Invariants:
 *  - Pool pages are either free (bit 0) or owned by exactly one slot, from
 *    issue until ann_ioreader_release; pages past npages count as used.
 *  - Requests leave the pending FIFO in submission order; a request is
 *    issued only when a slot and a contiguous run of pages are free.
 *  - Under O_DIRECT a request is widened to whole 4096-byte pages (its bytes
 *    lie at data_off in the buffer); a remainder left at an offset O_DIRECT
 *    refuses is read with pread on the buffered descriptor.
 *  - Short reads and -EAGAIN/-EINTR are retried for the remainder; each
 *    request is delivered once, with all its bytes or a status < 0.
 */
#include "ioreader.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

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
	uint64_t poll_ns;     /* opts.poll_us, in ns */
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

int ann_open_maybe_direct(const char *path, int flags, bool want_direct, bool *direct, ann_error *err)
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
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a reader", path);
	r->fd = r->fd_buf = -1;
	r->depth = depth;
	r->poll_ns = (uint64_t)o->poll_us * 1000;
	size_t plen = strlen(path);
	r->path = ann_malloc(plen + 1);
	if (!r->path) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for a reader", path);
		goto fail;
	}
	memcpy(r->path, path, plen + 1);
	rc = ann_open_maybe_direct(path, O_RDONLY, !o->no_direct, &r->direct, err);
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
		if ((rc == -EAGAIN || !cqe) && r->poll_ns && !r->unsubmitted) {
			/* the completion lands in the ring without us: poll it before
			 * paying a sleep and a wake-up */
			uint64_t t0 = ann_now_ns();
			do {
				for (int spin = 0; spin < 32; spin++)
					ann_cpu_relax();
				rc = io_uring_peek_cqe(&r->ring, &cqe);
			} while ((rc == -EAGAIN || !cqe) && ann_now_ns() - t0 < r->poll_ns);
			r->st.wait_ns += ann_now_ns() - t0;
			r->st.polled += cqe != NULL;
		}
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

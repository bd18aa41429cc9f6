/* SPDX-License-Identifier: MIT */
/*
 * ioreader.h: the per-thread io_uring reader with its pread fallback: batched
 * (offset, length) reads of one file into a bounded buffer pool. The store
 * layer (store.h) reads blocks.dat through it; it knows nothing of blocks.
 */
#ifndef ANN_IOREADER_H
#define ANN_IOREADER_H

#include "common.h"

/* ===== io reader: one per thread =========================================
 * Reads (offset, length, tag) requests of one file into a bounded pool of
 * 4096-aligned buffers, io_uring with O_DIRECT and registered buffers when
 * the system allows, else pread (same buffers, same results). Requests are
 * issued in submission order as queue depth and pool space allow;
 * completions come back as they finish (any order). Not thread-safe: one
 * reader per thread. */
typedef struct ann_ioreader ann_ioreader;

typedef struct ann_ioreader_opts {
	unsigned queue_depth; /* requests in flight, 1..4096; 0 = 64 */
	size_t pool_bytes;    /* buffer pool, the reader's memory bound (rounded up to 4096); 0 = depth * 128 KiB */
	bool force_pread;     /* never use io_uring (tests, comparisons) */
	bool no_direct;       /* read through the page cache */
	bool no_register;     /* do not register buffers and file with the ring */
	unsigned poll_us;     /* io_uring: before sleeping for a completion, poll the completion queue for up
			       * to this many microseconds (CPU spent for the wake-up latency); 0 = sleep */
} ann_ioreader_opts;

typedef struct ann_ioreq {
	uint64_t offset; /* bytes; any value (aligned reads go straight to disk, others are widened) */
	uint32_t length; /* bytes, >= 1; with the widening to 4096 it must fit in the pool */
	uint64_t tag;    /* returned in the completion */
} ann_ioreq;

typedef struct ann_iocomp {
	uint64_t tag;        /* the request's tag */
	const uint8_t *data; /* length bytes, 4096-aligned when the offset is; valid until release */
	uint32_t length;     /* as requested */
	int status;          /* ANN_OK, ANN_E_IO (sys_errno set), or ANN_E_CORRUPT (file ends early) */
	int sys_errno;       /* errno of a failed read, else 0 */
	uint32_t slot;       /* internal: the buffer to release */
} ann_iocomp;

typedef struct ann_ioreader_stats {
	uint64_t requests;  /* completions delivered */
	uint64_t bytes;     /* bytes read from the file (after widening to 4096) */
	uint64_t wait_ns;   /* time blocked waiting for completions (pread: time in pread) */
	uint64_t resubmits; /* short reads and -EAGAIN/-EINTR retried */
	uint64_t errors;    /* completions with status < 0 */
	uint64_t syscalls;  /* io_uring_enter (submit/wait) or pread calls */
	uint64_t polled;    /* waits that polling (opts.poll_us) ended without a sleep */
	bool uring;         /* io_uring in use (ann_ioreader_path() == "io_uring") */
	bool direct;        /* O_DIRECT in use */
	bool registered;    /* buffers registered with the ring (READ_FIXED) */
	int uring_errno;    /* why io_uring is not used: errno of io_uring_queue_init; 0 when used or forced */
} ann_ioreader_stats;

void ann_ioreader_opts_init(ann_ioreader_opts *o);
/* Opens path read-only for this reader (own descriptors). Falls back to
 * buffered reads when the file system refuses O_DIRECT, and to pread when
 * io_uring_queue_init fails (ENOSYS, EPERM, seccomp): no message, the choice
 * shows in ann_ioreader_path() and the stats. */
int ann_ioreader_open(const char *path, const ann_ioreader_opts *o, ann_ioreader **out, ann_error *err);
void ann_ioreader_free(ann_ioreader *r);
/* "io_uring" or "pread". */
const char *ann_ioreader_path(const ann_ioreader *r);
/* Queues n requests (copied; 24 bytes each until issued) and issues as many
 * as fit. ANN_E_INVAL, nothing queued, if a request cannot fit the pool. */
int ann_ioreader_submit(ann_ioreader *r, const ann_ioreq *reqs, size_t n, ann_error *err);
/* Waits for the next completion: 1 and *c filled, or 0 when no request is
 * queued or in flight. A failed read is a completion with status < 0 (and
 * err filled with a message naming file, offset and length); the return is
 * < 0 only when the reader itself fails, e.g. ANN_E_BUDGET when the pool is
 * held by unreleased completions and the next request cannot start. */
int ann_ioreader_next(ann_ioreader *r, ann_iocomp *c, ann_error *err);
/* Returns the completion's buffer to the pool (also for failed ones). */
void ann_ioreader_release(ann_ioreader *r, const ann_iocomp *c);
/* The largest request (4096-aligned offset and length) the pool can take. */
uint64_t ann_ioreader_max_request(const ann_ioreader *r);
/* Requests queued or in flight, not yet returned by next. */
size_t ann_ioreader_outstanding(const ann_ioreader *r);
void ann_ioreader_get_stats(const ann_ioreader *r, ann_ioreader_stats *st);

/* Opens path with flags | O_CLOEXEC, adding O_DIRECT when want_direct unless
 * the file system refuses it (EINVAL: tmpfs and others); *direct tells which.
 * Returns the descriptor, or < 0 with err naming path. Shared by the reader
 * and the raw-file store's writer. */
int ann_open_maybe_direct(const char *path, int flags, bool want_direct, bool *direct, ann_error *err);

#endif /* ANN_IOREADER_H */

/* SPDX-License-Identifier: MIT */
/*
 * spill.c: partition bucketing through sorted runs on disk (see spill.h).
 * Run layout in the file: for each partition in order, its records, each
 * record = int64 id (little-endian) then rec_bytes of payload.
 */
#include "spill.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define SPILL_STAGE (1u << 20)

struct ann_spill {
	char *path;
	int fd;
	uint32_t nparts;
	size_t rec;          /* payload bytes */
	size_t slot;         /* 8 + rec: bytes of a record on disk */
	uint8_t *buf;        /* cap records: id + payload, arrival order */
	uint32_t *part;      /* cap partition numbers */
	uint32_t *order;     /* cap: sorted permutation */
	size_t cap, used;
	uint64_t *counts;    /* nparts totals */
	uint64_t *run_start; /* runs x (nparts + 1) record offsets within the run */
	uint64_t *run_base;  /* runs: byte offset of each run in the file */
	size_t runs, runs_cap;
	uint64_t file_end;
	uint8_t *stage;
	bool finished;
	bool keep;          /* close leaves the file (ann_spill_keep) */
};

/* Allocates the spill's buffers and tables (no file yet). */
static int spill_alloc(const char *path, uint32_t nparts, size_t rec_bytes, size_t mem_bytes, uint64_t max_records,
		       ann_spill **out, ann_error *err)
{
	*out = NULL;
	if (nparts == 0)
		return ann_err(err, ANN_E_INVAL, "spill: no partitions");
	ann_spill *s = ann_calloc(1, sizeof *s);
	if (!s)
		return ann_err(err, ANN_E_NOMEM, "spill: out of memory");
	s->fd = -1;
	s->nparts = nparts;
	s->rec = rec_bytes;
	s->slot = 8 + rec_bytes;
	s->cap = mem_bytes / (s->slot + 8);
	/* The buffer is sized to min(budget, data) (issue 13 D10: build --mem
	 * 100G on 20,000 vectors asked for 745,569,952 records), and record
	 * indices are uint32 (order[]). */
	uint64_t need = max_records ? ANN_MAX(max_records, (uint64_t)1) : UINT64_MAX;
	bool small = need < 64 && s->cap >= need;
	s->cap = (size_t)ANN_MIN((uint64_t)s->cap, ANN_MIN(need, (uint64_t)UINT32_MAX));
	if (s->cap < 64 && !small) {
		size_t slot = s->slot;
		ann_free(s);
		return ann_err(err, ANN_E_BUDGET, "spill: a budget of %zu bytes holds %zu records of %zu bytes; "
			       "at least %zu bytes needed", mem_bytes, mem_bytes / (slot + 8), slot, 64 * (slot + 8));
	}
	s->buf = ann_malloc(s->cap * s->slot);
	s->part = ann_malloc(s->cap * sizeof(uint32_t));
	s->order = ann_malloc(s->cap * sizeof(uint32_t));
	s->counts = ann_calloc(nparts, sizeof(uint64_t));
	s->stage = ann_malloc(SPILL_STAGE > s->slot ? SPILL_STAGE : s->slot);
	if (!s->buf || !s->part || !s->order || !s->counts || !s->stage) {
		size_t cap = s->cap; /* s is gone after the close */
		ann_spill_close(s);
		return ann_err(err, ANN_E_NOMEM, "spill: out of memory for a %zu-record buffer", cap);
	}
	(void)path;
	*out = s;
	return ANN_OK;
}

int ann_spill_open(const char *path, uint32_t nparts, size_t rec_bytes, size_t mem_bytes, uint64_t max_records,
		   ann_spill **out, ann_error *err)
{
	*out = NULL;
	ann_spill *s;
	ANN_TRY(spill_alloc(path, nparts, rec_bytes, mem_bytes, max_records, &s, err));
	/* A new file only: never one planted there, nor a link's target. */
	int fd = ann_create_new(path, err);
	if (fd < 0) {
		ann_spill_close(s); /* no path yet: close unlinks nothing */
		return fd;
	}
	s->path = ann_malloc(strlen(path) + 1);
	if (!s->path) {
		close(fd);
		unlink(path);
		ann_spill_close(s);
		return ann_err(err, ANN_E_NOMEM, "spill: out of memory");
	}
	strcpy(s->path, path);
	s->fd = fd;
	*out = s;
	return ANN_OK;
}

static int spill_flush(ann_spill *s, ann_error *err)
{
	if (s->used == 0)
		return ANN_OK;
	if (s->runs == s->runs_cap) {
		size_t nc = s->runs_cap ? 2 * s->runs_cap : 8;
		uint64_t *rs = ann_realloc(s->run_start, nc * (s->nparts + 1) * sizeof(uint64_t));
		if (!rs)
			return ann_err(err, ANN_E_NOMEM, "spill: out of memory for run tables");
		s->run_start = rs;
		uint64_t *rb = ann_realloc(s->run_base, nc * sizeof(uint64_t));
		if (!rb)
			return ann_err(err, ANN_E_NOMEM, "spill: out of memory for run tables");
		s->run_base = rb;
		s->runs_cap = nc;
	}
	uint64_t *start = s->run_start + s->runs * (s->nparts + 1);
	/* Counting sort of the buffer's records by partition (stable). */
	memset(start, 0, (s->nparts + 1) * sizeof(uint64_t));
	for (size_t i = 0; i < s->used; i++)
		start[s->part[i] + 1]++;
	for (uint32_t p = 0; p < s->nparts; p++)
		start[p + 1] += start[p];
	for (size_t i = 0; i < s->used; i++) {
		/* start[p] is used as a cursor here and restored below. */
		s->order[start[s->part[i]]++] = (uint32_t)i;
	}
	for (uint32_t p = s->nparts; p > 0; p--)
		start[p] = start[p - 1];
	start[0] = 0;
	/* Write records in sorted order through the staging buffer. */
	uint64_t off = s->file_end;
	size_t per_stage = SPILL_STAGE / s->slot;
	if (per_stage == 0)
		per_stage = 1;
	for (size_t i = 0; i < s->used;) {
		size_t n = ANN_MIN(per_stage, s->used - i);
		for (size_t j = 0; j < n; j++)
			memcpy(s->stage + j * s->slot, s->buf + (size_t)s->order[i + j] * s->slot, s->slot);
		ANN_TRY(ann_pwrite_all(s->fd, s->stage, n * s->slot, off, s->path, err));
		off += n * s->slot;
		i += n;
	}
	s->run_base[s->runs] = s->file_end;
	s->file_end = off;
	s->runs++;
	s->used = 0;
	return ANN_OK;
}

int ann_spill_add(ann_spill *s, uint32_t part, int64_t id, const void *payload, ann_error *err)
{
	if (s->finished || part >= s->nparts)
		return ann_err(err, ANN_E_INVAL, "spill: add after finish or partition %u out of range", part);
	if (s->used == s->cap)
		ANN_TRY(spill_flush(s, err));
	uint8_t *r = s->buf + s->used * s->slot;
	ann_st64(r, (uint64_t)id);
	memcpy(r + 8, payload, s->rec);
	s->part[s->used++] = part;
	s->counts[part]++;
	return ANN_OK;
}

int ann_spill_finish(ann_spill *s, ann_error *err)
{
	if (s->finished)
		return ANN_OK;
	ANN_TRY(spill_flush(s, err));
	s->finished = true;
	/* The record buffer is no longer needed; give its memory back. */
	ann_free(s->buf);
	ann_free(s->part);
	ann_free(s->order);
	s->buf = NULL;
	s->part = NULL;
	s->order = NULL;
	return ANN_OK;
}

uint64_t ann_spill_count(const ann_spill *s, uint32_t part)
{
	return part < s->nparts ? s->counts[part] : 0;
}

uint64_t ann_spill_total(const ann_spill *s)
{
	uint64_t t = 0;
	for (uint32_t p = 0; p < s->nparts; p++)
		t += s->counts[p];
	return t;
}

uint64_t ann_spill_max_count(const ann_spill *s)
{
	uint64_t m = 0;
	for (uint32_t p = 0; p < s->nparts; p++)
		m = ANN_MAX(m, s->counts[p]);
	return m;
}

int ann_spill_read(ann_spill *s, uint32_t part, int64_t *ids, void *payload, ann_error *err)
{
	if (!s->finished || part >= s->nparts)
		return ann_err(err, ANN_E_INVAL, "spill: read before finish or partition %u out of range", part);
	size_t got = 0;
	uint8_t *out = payload;
	size_t per_stage = ANN_MAX((size_t)1, SPILL_STAGE / s->slot);
	for (size_t r = 0; r < s->runs; r++) {
		const uint64_t *start = s->run_start + r * (s->nparts + 1);
		uint64_t n = start[part + 1] - start[part];
		uint64_t off = s->run_base[r] + start[part] * s->slot;
		while (n > 0) {
			size_t m = (size_t)ANN_MIN((uint64_t)per_stage, n);
			ANN_TRY(ann_pread_all(s->fd, s->stage, m * s->slot, off, s->path, err));
			for (size_t j = 0; j < m; j++) {
				const uint8_t *rec = s->stage + j * s->slot;
				ids[got] = (int64_t)ann_ld64(rec);
				memcpy(out + got * s->rec, rec + 8, s->rec);
				got++;
			}
			n -= m;
			off += m * s->slot;
		}
	}
	if (got != s->counts[part])
		return ann_err(err, ANN_E_CORRUPT, "%s: partition %u: %zu records read, %llu expected", s->path,
			       part, got, (unsigned long long)s->counts[part]);
	return ANN_OK;
}

void ann_spill_close(ann_spill *s)
{
	if (!s)
		return;
	if (s->fd >= 0) {
		close(s->fd);
		if (s->path && !s->keep)
			unlink(s->path);
	}
	ann_free(s->path);
	ann_free(s->buf);
	ann_free(s->part);
	ann_free(s->order);
	ann_free(s->counts);
	ann_free(s->run_start);
	ann_free(s->run_base);
	ann_free(s->stage);
	ann_free(s);
}

size_t ann_spill_room(const ann_spill *s)
{
	return s->finished ? 0 : s->cap - s->used;
}

int ann_spill_sync(ann_spill *s, ann_error *err)
{
	if (s->used)
		ANN_TRY(spill_flush(s, err));
	if (fdatasync(s->fd) != 0)
		return ann_err_sys(err, errno, "%s: fdatasync", s->path);
	return ANN_OK;
}

void ann_spill_keep(ann_spill *s)
{
	if (s)
		s->keep = true;
}

/* Checkpoint blob: u32 nparts, u32 0, u64 rec_bytes, u64 runs, u64 file_end,
 * then counts[nparts], run_base[runs], run_start[runs * (nparts + 1)], all
 * u64 little-endian. The counts are those of the records in the runs: the
 * buffer's records are not part of a checkpoint. */
int ann_spill_checkpoint(const ann_spill *s, uint8_t **blob, size_t *len, ann_error *err)
{
	size_t words = (size_t)s->nparts + s->runs + s->runs * ((size_t)s->nparts + 1);
	size_t n = 32 + words * 8;
	uint8_t *b = ann_malloc(n);
	if (!b)
		return ann_err(err, ANN_E_NOMEM, "spill: out of memory for a checkpoint of %zu bytes", n);
	ann_st32(b, s->nparts);
	ann_st32(b + 4, 0);
	ann_st64(b + 8, s->rec);
	ann_st64(b + 16, s->runs);
	ann_st64(b + 24, s->file_end);
	uint8_t *p = b + 32;
	/* counts minus the buffer's records */
	for (uint32_t q = 0; q < s->nparts; q++, p += 8)
		ann_st64(p, s->counts[q]);
	for (size_t i = 0; i < s->used; i++)
		ann_st64(b + 32 + (size_t)s->part[i] * 8, ann_ld64(b + 32 + (size_t)s->part[i] * 8) - 1);
	for (size_t r = 0; r < s->runs; r++, p += 8)
		ann_st64(p, s->run_base[r]);
	for (size_t i = 0; i < s->runs * ((size_t)s->nparts + 1); i++, p += 8)
		ann_st64(p, s->run_start[i]);
	*blob = b;
	*len = n;
	return ANN_OK;
}

int ann_spill_resume(const char *path, uint32_t nparts, size_t rec_bytes, size_t mem_bytes, uint64_t max_records,
		     const uint8_t *blob, size_t len, ann_spill **out, ann_error *err)
{
	*out = NULL;
	if (len < 32 || ann_ld32(blob) != nparts || ann_ld64(blob + 8) != rec_bytes)
		return ann_err(err, ANN_E_CORRUPT, "%s: the spill checkpoint is for another layout", path);
	uint64_t runs = ann_ld64(blob + 16), file_end = ann_ld64(blob + 24);
	if (runs > (len - 32) / 8 / ((uint64_t)nparts + 2) ||
	    len != 32 + 8 * ((uint64_t)nparts + runs + runs * ((uint64_t)nparts + 1)))
		return ann_err(err, ANN_E_CORRUPT, "%s: the spill checkpoint holds %zu bytes, not what %llu runs need",
			       path, len, (unsigned long long)runs);
	ann_spill *s;
	ANN_TRY(spill_alloc(path, nparts, rec_bytes, mem_bytes, max_records, &s, err));
	int rc = ANN_OK;
	s->runs_cap = runs ? (size_t)runs : 1;
	s->run_start = ann_malloc(s->runs_cap * ((size_t)nparts + 1) * sizeof(uint64_t));
	s->run_base = ann_malloc(s->runs_cap * sizeof(uint64_t));
	s->path = ann_malloc(strlen(path) + 1);
	if (!s->run_start || !s->run_base || !s->path) {
		rc = ann_err(err, ANN_E_NOMEM, "spill: out of memory for %llu run tables", (unsigned long long)runs);
		goto fail;
	}
	strcpy(s->path, path);
	const uint8_t *p = blob + 32;
	uint64_t total = 0, expect_end = 0;
	for (uint32_t q = 0; q < nparts; q++, p += 8) {
		s->counts[q] = ann_ld64(p);
		total += s->counts[q];
	}
	for (size_t r = 0; r < runs; r++, p += 8)
		s->run_base[r] = ann_ld64(p);
	for (size_t i = 0; i < runs * ((size_t)nparts + 1); i++, p += 8)
		s->run_start[i] = ann_ld64(p);
	/* The tables must describe runs laid end to end, each sorted. */
	uint64_t in_runs = 0;
	for (size_t r = 0; r < runs; r++) {
		const uint64_t *st = s->run_start + r * ((size_t)nparts + 1);
		if (s->run_base[r] != expect_end || st[0] != 0)
			goto bad;
		for (uint32_t q = 0; q < nparts; q++)
			if (st[q + 1] < st[q])
				goto bad;
		in_runs += st[nparts];
		expect_end += st[nparts] * s->slot;
	}
	if (expect_end != file_end || in_runs != total)
		goto bad;
	s->runs = (size_t)runs;
	s->file_end = file_end;
	s->fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (s->fd < 0) {
		rc = ann_err_sys(err, errno, "%s: cannot reopen the spill file", path);
		goto fail;
	}
	struct stat st;
	if (fstat(s->fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < file_end) {
		rc = ann_err(err, ANN_E_CORRUPT, "%s: holds %lld bytes, the checkpoint recorded %llu", path,
			     (long long)st.st_size, (unsigned long long)file_end);
		goto fail;
	}
	if (ftruncate(s->fd, (off_t)file_end) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot truncate to %llu bytes", path, (unsigned long long)file_end);
		goto fail;
	}
	*out = s;
	return ANN_OK;
bad:
	rc = ann_err(err, ANN_E_CORRUPT, "%s: the spill checkpoint's run tables are inconsistent", path);
fail:
	s->keep = true; /* never unlink what a failed resume could not use */
	ann_spill_close(s);
	return rc;
}

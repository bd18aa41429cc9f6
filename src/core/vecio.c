/* SPDX-License-Identifier: MIT */
/*
 * vecio.c: streamed readers and writers for TEXMEX (*vecs), big-ann (*bin)
 * and MNIST idx3-ubyte vector files, and the big-ann ground-truth layout
 * (see vecio.h and docs/FORMAT.md "Input files"). Readers hold at most one
 * bounded chunk (VECIO_BUF_BYTES, or one vector if larger) and validate every
 * vector they return; writers go through "path.tmp.<pid>", fsync and rename.
 * It owns no search logic: it only moves vectors between files and memory.
 */
#include "vecio.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <libgen.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <zlib.h>

/* Vector files are little-endian; bulk data move by memcpy on such hosts. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vecio.c assumes a little-endian host"
#endif

/* Bound of the reader's and writer's internal buffer (one record if larger). */
#define VECIO_BUF_BYTES ((size_t)4 << 20)
/* zlib's own input buffer for idx .gz files. */
#define VECIO_GZ_BUF (256u << 10)

/* ---- formats ------------------------------------------------------------- */

static bool ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && memcmp(s + a - b, suf, b) == 0;
}

static const struct {
	const char *suffix;
	ann_vfmt fmt;
} vfmt_suffixes[] = {
	{".fvecs", ANN_VFMT_FVECS},    {".bvecs", ANN_VFMT_BVECS},       {".ivecs", ANN_VFMT_IVECS},
	{".fbin", ANN_VFMT_FBIN},      {".u8bin", ANN_VFMT_U8BIN},       {".i8bin", ANN_VFMT_I8BIN},
	{".ibin", ANN_VFMT_IBIN},      {"-idx3-ubyte", ANN_VFMT_IDX},    {"-idx3-ubyte.gz", ANN_VFMT_IDX},
	{".idx3-ubyte", ANN_VFMT_IDX}, {".idx3-ubyte.gz", ANN_VFMT_IDX},
};

int ann_vfmt_from_path(const char *path, ann_vfmt *out, ann_error *err)
{
	if (!path)
		return ann_err(err, ANN_E_INVAL, "vector file path is NULL");
	for (size_t i = 0; i < sizeof vfmt_suffixes / sizeof vfmt_suffixes[0]; i++) {
		if (ends_with(path, vfmt_suffixes[i].suffix)) {
			*out = vfmt_suffixes[i].fmt;
			return ANN_OK;
		}
	}
	return ann_err(err, ANN_E_INVAL,
		       "%s: unknown vector file extension (expected .fvecs .bvecs .ivecs .fbin .u8bin .i8bin "
		       ".ibin or -idx3-ubyte[.gz])",
		       path);
}

ann_dtype ann_vfmt_dtype(ann_vfmt fmt)
{
	switch (fmt) {
	case ANN_VFMT_FVECS:
	case ANN_VFMT_FBIN: return ANN_DTYPE_F32;
	case ANN_VFMT_IVECS:
	case ANN_VFMT_IBIN: return ANN_DTYPE_I32;
	case ANN_VFMT_I8BIN: return ANN_DTYPE_I8;
	case ANN_VFMT_BVECS:
	case ANN_VFMT_U8BIN:
	case ANN_VFMT_IDX:
	default: return ANN_DTYPE_U8;
	}
}

const char *ann_vfmt_name(ann_vfmt fmt)
{
	switch (fmt) {
	case ANN_VFMT_FVECS: return "fvecs";
	case ANN_VFMT_BVECS: return "bvecs";
	case ANN_VFMT_IVECS: return "ivecs";
	case ANN_VFMT_FBIN: return "fbin";
	case ANN_VFMT_U8BIN: return "u8bin";
	case ANN_VFMT_I8BIN: return "i8bin";
	case ANN_VFMT_IBIN: return "ibin";
	case ANN_VFMT_IDX: return "idx3-ubyte";
	default: return "unknown";
	}
}

size_t ann_dtype_size(ann_dtype t)
{
	switch (t) {
	case ANN_DTYPE_F32:
	case ANN_DTYPE_I32: return 4;
	case ANN_DTYPE_F16: return 2;
	case ANN_DTYPE_U8:
	case ANN_DTYPE_I8:
	default: return 1;
	}
}

static bool fmt_is_vecs(ann_vfmt f)
{
	return f == ANN_VFMT_FVECS || f == ANN_VFMT_BVECS || f == ANN_VFMT_IVECS;
}

uint64_t ann_vfmt_max_vectors(ann_vfmt fmt)
{
	return fmt_is_vecs(fmt) ? UINT64_MAX : (uint64_t)INT32_MAX;
}

int ann_vfile_check_size(const char *path, uint64_t n, uint32_t dim, ann_error *err)
{
	ann_vfmt fmt;
	ANN_TRY(ann_vfmt_from_path(path, &fmt, err));
	if (n > ann_vfmt_max_vectors(fmt))
		return ann_err(err, ANN_E_INVAL, "%s: %llu vectors, but the %s format holds at most %llu", path,
			       (unsigned long long)n, ann_vfmt_name(fmt),
			       (unsigned long long)ann_vfmt_max_vectors(fmt));
	if (dim == 0 || dim > ANN_VEC_MAX_DIM)
		return ann_err(err, ANN_E_INVAL, "%s: dimension %u, expected 1..%u", path, dim, ANN_VEC_MAX_DIM);
	uint64_t rec = (fmt_is_vecs(fmt) ? 4 : 0) + (uint64_t)dim * ann_dtype_size(ann_vfmt_dtype(fmt));
	uint64_t bytes;
	if (__builtin_mul_overflow(n, rec, &bytes) || __builtin_add_overflow(bytes, (uint64_t)8, &bytes))
		return ann_err(err, ANN_E_INVAL, "%s: %llu vectors of dimension %u overflow a file size", path,
			       (unsigned long long)n, dim);
	size_t plen = strlen(path);
	char *copy = ann_malloc(plen + 1);
	if (!copy)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", path);
	memcpy(copy, path, plen + 1);
	struct statvfs sv;
	int rc = ANN_OK;
	/* A file system that cannot say (statvfs fails) is not refused here. */
	if (statvfs(dirname(copy), &sv) == 0) {
		uint64_t avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
		if (bytes > avail)
			rc = ann_err(err, ANN_E_IO,
				     "%s: %llu vectors of dimension %u need %llu bytes, but its file system has "
				     "%llu bytes free; nothing was written",
				     path, (unsigned long long)n, dim, (unsigned long long)bytes,
				     (unsigned long long)avail);
	}
	ann_free(copy);
	return rc;
}

/* ---- element kernels ------------------------------------------------------
 * Plain loops over restrict pointers so the compiler vectorises them. */

static void u8_to_f32(const uint8_t *restrict in, float *restrict out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (float)in[i];
}

static void i8_to_f32(const uint8_t *restrict in, float *restrict out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (float)(int8_t)in[i];
}

static void i32_to_f32(const uint8_t *restrict in, float *restrict out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int32_t v;
		memcpy(&v, in + 4 * i, 4);
		out[i] = (float)v;
	}
}

/* Index of the first float among n whose magnitude bits are at least
 * `limit` (0x7f800000: NaN or Inf; above 2^50: outside ann_f32_input_ok),
 * or n. */
static size_t first_above(const float *x, size_t n, uint32_t limit)
{
	const size_t blk = 1024;
	for (size_t b = 0; b < n; b += blk) {
		size_t e = ANN_MIN(n, b + blk);
		uint32_t bad = 0;
		for (size_t i = b; i < e; i++) {
			uint32_t u;
			memcpy(&u, x + i, 4);
			bad |= (uint32_t)((u & 0x7fffffffu) >= limit);
		}
		if (bad) {
			for (size_t i = b; i < e; i++) {
				uint32_t u;
				memcpy(&u, x + i, 4);
				if ((u & 0x7fffffffu) >= limit)
					return i;
			}
		}
	}
	return n;
}

static size_t first_nonfinite(const float *x, size_t n)
{
	return first_above(x, n, 0x7f800000u);
}

#define F32_INPUT_LIMIT 0x58800001u /* the bits of the next float above ANN_F32_INPUT_MAX, 2^50 */

/* Round half to even; exact for |x| < 2^51 (the magic constant is 1.5 * 2^52)
 * and returns something out of any int32 range (or NaN) otherwise. */
static inline double round_even(float x)
{
	return ((double)x + 0x1.8p52) - 0x1.8p52;
}

/* Index of the first element whose rounded value lies outside [lo, hi], or n. */
static size_t first_out_of_range(const float *x, size_t n, double lo, double hi)
{
	const size_t blk = 1024;
	for (size_t b = 0; b < n; b += blk) {
		size_t e = ANN_MIN(n, b + blk);
		int bad = 0;
		for (size_t i = b; i < e; i++) {
			double r = round_even(x[i]);
			bad |= !(r >= lo && r <= hi);
		}
		if (bad) {
			for (size_t i = b; i < e; i++) {
				double r = round_even(x[i]);
				if (!(r >= lo && r <= hi))
					return i;
			}
		}
	}
	return n;
}

/* Converts n in-range floats to the element type t at out (unaligned bytes). */
static void f32_to_elems(const float *restrict in, uint8_t *restrict out, size_t n, ann_dtype t)
{
	switch (t) {
	case ANN_DTYPE_F32: memcpy(out, in, n * 4); break;
	case ANN_DTYPE_U8:
		for (size_t i = 0; i < n; i++)
			out[i] = (uint8_t)(int32_t)round_even(in[i]);
		break;
	case ANN_DTYPE_I8:
		for (size_t i = 0; i < n; i++)
			out[i] = (uint8_t)(int8_t)(int32_t)round_even(in[i]);
		break;
	case ANN_DTYPE_I32:
	default:
		for (size_t i = 0; i < n; i++) {
			int32_t v = (int32_t)round_even(in[i]);
			memcpy(out + 4 * i, &v, 4);
		}
		break;
	}
}

/* ---- reader ---------------------------------------------------------------- */

struct ann_vreader {
	char *path; /* as given to open, for messages */
	ann_vfmt fmt;
	ann_dtype dtype;
	size_t esize;       /* bytes per element */
	uint32_t dim;       /* elements per vector */
	uint64_t count;     /* vectors in the file */
	uint64_t pos;       /* index of the next vector to return */
	uint64_t data_off;  /* byte offset of vector 0 (after the file header) */
	size_t hdr;         /* per-record prefix bytes: 4 for *vecs, else 0 */
	size_t rec;         /* bytes per vector on disk: hdr + dim * esize */
	int fd;             /* plain files; -1 when reading through gz */
	gzFile gz;          /* idx .gz files (owns the descriptor) */
	uint64_t gz_next;   /* vector index the gz stream is positioned at */
	uint8_t *buf;       /* internal chunk: buf_cap bytes, whole records */
	size_t buf_cap;     /* max(VECIO_BUF_BYTES rounded down to records, rec) */
	uint64_t buf_first; /* index of the first vector in buf */
	size_t buf_n;       /* vectors held in buf (0 = empty) */
};

static int open_fail(ann_error *err, int e, const char *path)
{
	int rc = ann_err_sys(err, e, "%s: cannot open", path);
	if (e == ENOENT) {
		rc = ANN_E_NOTFOUND;
		if (err)
			err->code = rc;
	}
	return rc;
}

/* Error path of open for a *vecs file whose size is not a whole number of
 * records: walks the record headers (bounded buffer) to report the first
 * dimension change, or else the partial last record. */
static int vecs_size_error(ann_vreader *r, uint64_t size, ann_error *err)
{
	size_t cap = r->buf_cap;
	uint64_t off = 0, idx = 0, loaded_off = 0;
	size_t loaded = 0;
	while (off + 4 <= size) {
		if (off < loaded_off || off + 4 > loaded_off + loaded) {
			size_t want = (size_t)ANN_MIN((uint64_t)cap, size - off);
			ANN_TRY(ann_pread_all(r->fd, r->buf, want, off, r->path, err));
			loaded_off = off;
			loaded = want;
		}
		int32_t d = (int32_t)ann_ld32(r->buf + (off - loaded_off));
		if (d != (int32_t)r->dim)
			return ann_err(err, ANN_E_BADINPUT, "%s: vector %llu: dimension %d, expected %u",
				       r->path, (unsigned long long)idx, d, r->dim);
		off += r->rec;
		idx++;
	}
	return ann_err(err, ANN_E_BADINPUT,
		       "%s: vector %llu: truncated: file size %llu is not a multiple of the record size %zu "
		       "(4 + %u * %zu bytes)",
		       r->path, (unsigned long long)(size / r->rec), (unsigned long long)size, r->rec, r->dim,
		       r->esize);
}

/* Reads exactly n bytes at the current gz position; names vector idx. */
static int gz_read_all(ann_vreader *r, void *dst, size_t n, uint64_t idx, ann_error *err)
{
	uint8_t *p = dst;
	size_t got = 0;
	while (got < n) {
		unsigned want = (unsigned)ANN_MIN(n - got, (size_t)1 << 30);
		int k = gzread(r->gz, p + got, want);
		if (k < 0) {
			int zerr;
			const char *msg = gzerror(r->gz, &zerr);
			return ann_err(err, ANN_E_BADINPUT, "%s: vector %llu: gzip data error: %s", r->path,
				       (unsigned long long)idx, msg ? msg : "unknown");
		}
		if (k == 0) {
			int zerr;
			const char *msg = gzerror(r->gz, &zerr);
			uint64_t bad = r->rec ? idx + got / r->rec : idx;
			return ann_err(
				err, ANN_E_BADINPUT,
				"%s: vector %llu: truncated: data end before the %llu vectors the header "
				"announces%s%s",
				r->path, (unsigned long long)bad, (unsigned long long)r->count,
				zerr ? ": " : "", zerr && msg ? msg : "");
		}
		got += (size_t)k;
	}
	return ANN_OK;
}

/* Reads records [i, i + n) into dst (n * rec bytes). */
static int read_records(ann_vreader *r, uint64_t i, size_t n, void *dst, ann_error *err)
{
	size_t bytes = n * r->rec;
	if (!r->gz) {
		char what[600];
		snprintf(what, sizeof what, "%s: vector %llu", r->path, (unsigned long long)i);
		return ann_pread_all(r->fd, dst, bytes, r->data_off + i * r->rec, what, err);
	}
	if (r->gz_next != i) {
		z_off_t want = (z_off_t)(r->data_off + i * r->rec);
		if (gzseek(r->gz, want, SEEK_SET) != want) {
			int zerr;
			const char *msg = gzerror(r->gz, &zerr);
			r->gz_next = UINT64_MAX;
			return ann_err(err, ANN_E_BADINPUT, "%s: vector %llu: cannot seek in gzip stream: %s",
				       r->path, (unsigned long long)i, msg ? msg : "unknown");
		}
	}
	r->gz_next = UINT64_MAX;
	ANN_TRY(gz_read_all(r, dst, bytes, i, err));
	r->gz_next = i + n;
	return ANN_OK;
}

static int fill_buffer(ann_vreader *r, uint64_t i, ann_error *err)
{
	size_t n = (size_t)ANN_MIN((uint64_t)(r->buf_cap / r->rec), r->count - i);
	r->buf_n = 0;
	ANN_TRY(read_records(r, i, n, r->buf, err));
	r->buf_first = i;
	r->buf_n = n;
	return ANN_OK;
}

static int open_bin_header(ann_vreader *r, uint64_t size, ann_error *err)
{
	uint8_t h[8];
	if (size < 8)
		return ann_err(err, ANN_E_BADINPUT,
			       "%s: truncated: %llu bytes, shorter than the 8-byte header", r->path,
			       (unsigned long long)size);
	ANN_TRY(ann_pread_all(r->fd, h, 8, 0, r->path, err));
	int32_t n = (int32_t)ann_ld32(h), d = (int32_t)ann_ld32(h + 4);
	if (n <= 0)
		return ann_err(err, ANN_E_BADINPUT, "%s: header says %d vectors, expected at least 1",
			       r->path, n);
	if (d <= 0 || (uint32_t)d > ANN_VEC_MAX_DIM)
		return ann_err(err, ANN_E_BADINPUT, "%s: header says dimension %d, expected 1..%u", r->path,
			       d, ANN_VEC_MAX_DIM);
	r->count = (uint64_t)n;
	r->dim = (uint32_t)d;
	r->data_off = 8;
	return ANN_OK;
}

static int open_idx_header(ann_vreader *r, uint64_t size, ann_error *err)
{
	uint8_t h[16];
	if (r->gz) {
		int k = gzread(r->gz, h, 16);
		if (k != 16) {
			int zerr;
			const char *msg = gzerror(r->gz, &zerr);
			return ann_err(err, ANN_E_BADINPUT, "%s: truncated or unreadable idx header%s%s",
				       r->path, zerr ? ": " : "", zerr && msg ? msg : "");
		}
	} else {
		if (size < 16)
			return ann_err(err, ANN_E_BADINPUT,
				       "%s: truncated: %llu bytes, shorter than the 16-byte idx header",
				       r->path, (unsigned long long)size);
		ANN_TRY(ann_pread_all(r->fd, h, 16, 0, r->path, err));
	}
	uint32_t v[4];
	for (int i = 0; i < 4; i++)
		v[i] = (uint32_t)h[4 * i] << 24 | (uint32_t)h[4 * i + 1] << 16 | (uint32_t)h[4 * i + 2] << 8 |
		       h[4 * i + 3];
	if (v[0] != 0x00000803u)
		return ann_err(err, ANN_E_BADINPUT,
			       "%s: magic 0x%08x, expected 0x00000803 (idx3, unsigned bytes, 3 dimensions)",
			       r->path, v[0]);
	if (v[1] == 0 || v[1] > INT32_MAX)
		return ann_err(err, ANN_E_BADINPUT, "%s: header says %u images, expected 1..%d", r->path,
			       v[1], INT32_MAX);
	if (v[2] == 0 || v[3] == 0 || (uint64_t)v[2] * v[3] > ANN_VEC_MAX_DIM)
		return ann_err(err, ANN_E_BADINPUT, "%s: header says %u x %u pixels, expected 1..%u in total",
			       r->path, v[2], v[3], ANN_VEC_MAX_DIM);
	r->count = v[1];
	r->dim = v[2] * v[3];
	r->data_off = 16;
	r->gz_next = 0;
	return ANN_OK;
}

int ann_vreader_open(const char *path, ann_vreader **out, ann_error *err)
{
	int rc;
	ann_vreader *r = NULL;
	ann_vfmt fmt;
	if (!out)
		return ann_err(err, ANN_E_INVAL, "ann_vreader_open: out is NULL");
	*out = NULL;
	ANN_TRY(ann_vfmt_from_path(path, &fmt, err));
	r = ann_calloc(1, sizeof *r);
	if (!r)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for reader", path);
	r->fd = -1;
	r->fmt = fmt;
	r->dtype = ann_vfmt_dtype(fmt);
	r->esize = ann_dtype_size(r->dtype);
	r->hdr = fmt_is_vecs(fmt) ? 4 : 0;
	size_t plen = strlen(path);
	r->path = ann_malloc(plen + 1);
	if (!r->path) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for reader", path);
		goto fail;
	}
	memcpy(r->path, path, plen + 1);

	r->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (r->fd < 0) {
		rc = open_fail(err, errno, path);
		goto fail;
	}
	struct stat st;
	if (fstat(r->fd, &st) != 0) {
		rc = ann_err_sys(err, errno, "%s: fstat failed", path);
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = ann_err(err, ANN_E_BADINPUT, "%s: not a regular file", path);
		goto fail;
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size == 0) {
		rc = ann_err(err, ANN_E_BADINPUT, "%s: empty file, expected at least one vector", path);
		goto fail;
	}
	(void)posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);

	if (fmt == ANN_VFMT_IDX && ends_with(path, ".gz")) {
		r->gz = gzdopen(r->fd, "rb");
		if (!r->gz) {
			rc = ann_err(err, ANN_E_NOMEM, "%s: cannot start gzip decoding", path);
			goto fail;
		}
		r->fd = -1; /* owned by gz now */
		gzbuffer(r->gz, VECIO_GZ_BUF);
	}

	if (fmt == ANN_VFMT_IDX) {
		ANN_CHECK(rc, open_idx_header(r, size, err));
	} else if (!fmt_is_vecs(fmt)) {
		ANN_CHECK(rc, open_bin_header(r, size, err));
	} else {
		uint8_t h[4];
		if (size < 4) {
			rc = ann_err(err, ANN_E_BADINPUT,
				     "%s: vector 0: truncated: %llu bytes, shorter than the "
				     "4-byte dimension",
				     path, (unsigned long long)size);
			goto fail;
		}
		ANN_CHECK(rc, ann_pread_all(r->fd, h, 4, 0, path, err));
		int32_t d = (int32_t)ann_ld32(h);
		if (d <= 0 || (uint32_t)d > ANN_VEC_MAX_DIM) {
			rc = ann_err(err, ANN_E_BADINPUT, "%s: vector 0: dimension %d, expected 1..%u", path,
				     d, ANN_VEC_MAX_DIM);
			goto fail;
		}
		r->dim = (uint32_t)d;
		r->data_off = 0;
	}
	r->rec = r->hdr + (size_t)r->dim * r->esize;
	r->buf_cap = ANN_MAX(VECIO_BUF_BYTES / r->rec, (size_t)1) * r->rec;
	r->buf = ann_malloc(r->buf_cap);
	if (!r->buf) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for a %zu-byte read buffer", path,
			     r->buf_cap);
		goto fail;
	}

	if (fmt_is_vecs(fmt)) {
		if (size % r->rec != 0) {
			rc = vecs_size_error(r, size, err);
			goto fail;
		}
		r->count = size / r->rec;
	} else if (!r->gz) {
		uint64_t expect = r->data_off + r->count * r->rec;
		if (size < expect) {
			rc = ann_err(
				err, ANN_E_BADINPUT,
				"%s: vector %llu: truncated: header says %llu vectors of dimension %u (%llu "
				"bytes) but the file has %llu bytes",
				path, (unsigned long long)((size - r->data_off) / r->rec),
				(unsigned long long)r->count, r->dim, (unsigned long long)expect,
				(unsigned long long)size);
			goto fail;
		}
		if (size > expect) {
			rc = ann_err(
				err, ANN_E_BADINPUT,
				"%s: %llu bytes after vector %llu: header says %llu vectors of dimension %u "
				"(%llu bytes) but the file has %llu bytes",
				path, (unsigned long long)(size - expect), (unsigned long long)(r->count - 1),
				(unsigned long long)r->count, r->dim, (unsigned long long)expect,
				(unsigned long long)size);
			goto fail;
		}
	}
	*out = r;
	return ANN_OK;
fail:
	ann_vreader_close(r);
	return rc;
}

void ann_vreader_close(ann_vreader *r)
{
	if (!r)
		return;
	if (r->gz)
		gzclose(r->gz);
	if (r->fd >= 0)
		close(r->fd);
	ann_free(r->buf);
	ann_free(r->path);
	ann_free(r);
}

uint64_t ann_vreader_count(const ann_vreader *r)
{
	return r->count;
}

uint32_t ann_vreader_dim(const ann_vreader *r)
{
	return r->dim;
}

ann_dtype ann_vreader_dtype(const ann_vreader *r)
{
	return r->dtype;
}

ann_vfmt ann_vreader_fmt(const ann_vreader *r)
{
	return r->fmt;
}

const char *ann_vreader_path(const ann_vreader *r)
{
	return r->path;
}

uint64_t ann_vreader_pos(const ann_vreader *r)
{
	return r->pos;
}

/* Copies k records starting at src (buffer layout) to dst, converting to
 * float32 when as_f32, else copying the elements; checks *vecs dimensions. */
static int unpack_records(ann_vreader *r, const uint8_t *src, size_t k, uint8_t *dst, bool as_f32,
			  uint64_t first, ann_error *err)
{
	size_t d = r->dim, ebytes = d * r->esize, obytes = as_f32 ? d * 4 : ebytes;
	if (r->hdr) {
		for (size_t j = 0; j < k; j++) {
			int32_t dd = (int32_t)ann_ld32(src + j * r->rec);
			if (dd != (int32_t)r->dim)
				return ann_err(err, ANN_E_BADINPUT,
					       "%s: vector %llu: dimension %d, expected %u", r->path,
					       (unsigned long long)(first + j), dd, r->dim);
		}
	}
	if (!r->hdr) {
		/* Contiguous elements: convert the whole run at once. */
		d *= k;
		ebytes *= k;
		k = 1;
	}
	for (size_t j = 0; j < k; j++) {
		const uint8_t *s = src + j * r->rec + r->hdr;
		uint8_t *o = dst + j * obytes;
		if (!as_f32 || r->dtype == ANN_DTYPE_F32) {
			memcpy(o, s, ebytes);
			continue;
		}
		float *of = (float *)(void *)o;
		switch (r->dtype) {
		case ANN_DTYPE_U8: u8_to_f32(s, of, d); break;
		case ANN_DTYPE_I8: i8_to_f32(s, of, d); break;
		default: i32_to_f32(s, of, d); break;
		}
	}
	return ANN_OK;
}

static int64_t vreader_read(ann_vreader *r, void *out, size_t max, bool as_f32, ann_error *err)
{
	if (!r || (!out && max))
		return ann_err(err, ANN_E_INVAL, "ann_vreader_read: NULL reader or output");
	if (max == 0 || r->pos >= r->count)
		return 0;
	size_t n = (size_t)ANN_MIN((uint64_t)max, r->count - r->pos);
	size_t obytes = (size_t)r->dim * (as_f32 ? 4 : r->esize);
	if (n > SIZE_MAX / obytes)
		return ann_err(err, ANN_E_INVAL, "%s: read of %zu vectors overflows", r->path, n);
	uint8_t *o = out;
	uint64_t cur = r->pos;
	if (!r->hdr && (!as_f32 || r->dtype == ANN_DTYPE_F32)) {
		/* On-disk layout equals the output: read straight into it. */
		ANN_TRY(read_records(r, cur, n, o, err));
		cur += n;
	} else {
		size_t done = 0;
		while (done < n) {
			if (cur < r->buf_first || cur >= r->buf_first + r->buf_n)
				ANN_TRY(fill_buffer(r, cur, err));
			size_t k = (size_t)ANN_MIN((uint64_t)(n - done), r->buf_first + r->buf_n - cur);
			const uint8_t *src = r->buf + (size_t)(cur - r->buf_first) * r->rec;
			ANN_TRY(unpack_records(r, src, k, o + done * obytes, as_f32, cur, err));
			done += k;
			cur += k;
		}
	}
	if (r->dtype == ANN_DTYPE_F32) {
		size_t total = n * r->dim;
		size_t bad = first_above((const float *)out, total, F32_INPUT_LIMIT);
		if (bad < total) {
			float v = ((const float *)out)[bad];
			if (isfinite(v))
				return ann_err(err, ANN_E_BADINPUT,
					       "%s: vector %llu: component %zu is %g, beyond +-2^50 (1.1e15), where "
					       "squared distances overflow float; rescale the data",
					       r->path, (unsigned long long)(r->pos + bad / r->dim), bad % r->dim,
					       (double)v);
			return ann_err(err, ANN_E_BADINPUT, "%s: vector %llu: component %zu is %s", r->path,
				       (unsigned long long)(r->pos + bad / r->dim), bad % r->dim,
				       isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"));
		}
	}
	r->pos = cur;
	return (int64_t)n;
}

int64_t ann_vreader_read_f32(ann_vreader *r, float *out, size_t max, ann_error *err)
{
	return vreader_read(r, out, max, true, err);
}

int64_t ann_vreader_read_raw(ann_vreader *r, void *out, size_t max, ann_error *err)
{
	return vreader_read(r, out, max, false, err);
}

int ann_vreader_seek(ann_vreader *r, uint64_t i, ann_error *err)
{
	if (!r)
		return ann_err(err, ANN_E_INVAL, "ann_vreader_seek: NULL reader");
	if (i > r->count)
		return ann_err(err, ANN_E_INVAL, "%s: seek to vector %llu, beyond the %llu vectors", r->path,
			       (unsigned long long)i, (unsigned long long)r->count);
	r->pos = i;
	return ANN_OK;
}

/* ---- buffered temporary-file writer (shared by vwriter and gt_write) ------ */

typedef struct fwriter {
	char *path; /* final name */
	char *tmp;  /* path.tmp.<pid>[.<random>] (ann_create_temp) */
	int fd;
	uint8_t *buf; /* cap bytes */
	size_t cap;
	size_t len;   /* bytes pending in buf */
	uint64_t off; /* file offset of buf[0] */
} fwriter;

static void fw_release(fwriter *f, bool unlink_tmp)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	if (unlink_tmp && f->tmp)
		unlink(f->tmp);
	ann_free(f->buf);
	ann_free(f->tmp);
	ann_free(f->path);
	f->buf = NULL;
	f->tmp = f->path = NULL;
}

static int fw_open(fwriter *f, const char *path, size_t cap, ann_error *err)
{
	memset(f, 0, sizeof *f);
	f->fd = -1;
	size_t plen = strlen(path);
	f->path = ann_malloc(plen + 1);
	f->buf = ann_malloc(cap);
	if (!f->path || !f->buf) {
		fw_release(f, false);
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a %zu-byte write buffer", path, cap);
	}
	memcpy(f->path, path, plen + 1);
	f->cap = cap;
	/* Exclusive and not following links: a link planted at the temporary
	 * name must not make us overwrite its target (issue 13 D5). */
	int fd = ann_create_temp(path, false, &f->tmp, err);
	if (fd < 0) {
		fw_release(f, false);
		return fd;
	}
	f->fd = fd;
	return ANN_OK;
}

static int fw_flush(fwriter *f, ann_error *err)
{
	if (f->len == 0)
		return ANN_OK;
	ANN_TRY(ann_pwrite_all(f->fd, f->buf, f->len, f->off, f->tmp, err));
	f->off += f->len;
	f->len = 0;
	return ANN_OK;
}

/* Appends n bytes through the buffer. */
static int fw_put(fwriter *f, const void *src, size_t n, ann_error *err)
{
	const uint8_t *s = src;
	while (n > 0) {
		if (f->len == f->cap)
			ANN_TRY(fw_flush(f, err));
		size_t k = ANN_MIN(n, f->cap - f->len);
		memcpy(f->buf + f->len, s, k);
		f->len += k;
		s += k;
		n -= k;
	}
	return ANN_OK;
}

/* Flushes, patches hdr_len bytes at offset 0 (if any), fsyncs, renames and
 * fsyncs the directory. Releases f in every case. */
static int fw_commit(fwriter *f, const uint8_t *hdr, size_t hdr_len, ann_error *err)
{
	int rc;
	ANN_CHECK(rc, fw_flush(f, err));
	if (hdr_len)
		ANN_CHECK(rc, ann_pwrite_all(f->fd, hdr, hdr_len, 0, f->tmp, err));
	if (fsync(f->fd) != 0) {
		rc = ann_err_sys(err, errno, "%s: fsync failed", f->tmp);
		goto fail;
	}
	rc = close(f->fd);
	f->fd = -1;
	if (rc != 0) {
		rc = ann_err_sys(err, errno, "%s: close failed", f->tmp);
		goto fail;
	}
	if (rename(f->tmp, f->path) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot rename to %s", f->tmp, f->path);
		goto fail;
	}
	rc = ann_fsync_dir(f->path, err);
	fw_release(f, false);
	return rc;
fail:
	fw_release(f, true);
	return rc;
}

/* ---- vector writer ------------------------------------------------------- */

struct ann_vwriter {
	fwriter f;
	ann_vfmt fmt;
	ann_dtype dtype;
	size_t esize; /* bytes per element */
	uint32_t dim;
	size_t hdr;     /* per-record prefix: 4 for *vecs, else 0 */
	size_t rec;     /* bytes per record on disk */
	uint64_t count; /* vectors appended so far */
	bool failed;    /* an I/O error happened: only close/abort remain */
};

int ann_vwriter_open(const char *path, uint32_t dim, ann_vwriter **out, ann_error *err)
{
	ann_vfmt fmt;
	if (!out)
		return ann_err(err, ANN_E_INVAL, "ann_vwriter_open: out is NULL");
	*out = NULL;
	ANN_TRY(ann_vfmt_from_path(path, &fmt, err));
	if (fmt == ANN_VFMT_IDX)
		return ann_err(err, ANN_E_UNSUPPORTED, "%s: idx3-ubyte files can be read but not written",
			       path);
	if (dim == 0 || dim > ANN_VEC_MAX_DIM)
		return ann_err(err, ANN_E_INVAL, "%s: dimension %u, expected 1..%u", path, dim,
			       ANN_VEC_MAX_DIM);
	ann_vwriter *w = ann_calloc(1, sizeof *w);
	if (!w)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for writer", path);
	w->fmt = fmt;
	w->dtype = ann_vfmt_dtype(fmt);
	w->esize = ann_dtype_size(w->dtype);
	w->dim = dim;
	w->hdr = fmt_is_vecs(fmt) ? 4 : 0;
	w->rec = w->hdr + (size_t)dim * w->esize;
	int rc = fw_open(&w->f, path, ANN_MAX(VECIO_BUF_BYTES, w->rec + 8), err);
	if (rc < 0) {
		ann_free(w);
		return rc;
	}
	if (!w->hdr) {
		/* Placeholder header, patched by close. */
		memset(w->f.buf, 0, 8);
		w->f.len = 8;
	}
	*out = w;
	return ANN_OK;
}

static int vwriter_check(ann_vwriter *w, const void *v, size_t n, ann_error *err)
{
	if (!w)
		return ann_err(err, ANN_E_INVAL, "ann_vwriter_write: NULL writer");
	if (w->failed)
		return ann_err(err, ANN_E_STATE, "%s: writer failed earlier; only close or abort remain",
			       w->f.path);
	if (!v && n)
		return ann_err(err, ANN_E_INVAL, "%s: NULL vectors", w->f.path);
	if (!w->hdr && (w->count + n > (uint64_t)INT32_MAX || n > (uint64_t)INT32_MAX))
		return ann_err(err, ANN_E_INVAL, "%s: vector %llu: the %s format holds at most %d vectors",
			       w->f.path, (unsigned long long)INT32_MAX, ann_vfmt_name(w->fmt), INT32_MAX);
	if (n > SIZE_MAX / w->rec)
		return ann_err(err, ANN_E_INVAL, "%s: write of %zu vectors overflows", w->f.path, n);
	return ANN_OK;
}

/* Validates float input for the file's type: finite for float files, and
 * rounding into range for integer files. */
static int vwriter_check_f32(ann_vwriter *w, const float *v, size_t n, ann_error *err)
{
	size_t total = n * w->dim, bad;
	double lo, hi;
	switch (w->dtype) {
	case ANN_DTYPE_F32:
		bad = first_nonfinite(v, total);
		if (bad < total)
			return ann_err(err, ANN_E_INVAL, "%s: vector %llu: component %zu is not finite",
				       w->f.path, (unsigned long long)(w->count + bad / w->dim),
				       bad % w->dim);
		return ANN_OK;
	case ANN_DTYPE_U8: lo = 0, hi = 255; break;
	case ANN_DTYPE_I8: lo = -128, hi = 127; break;
	default: lo = INT32_MIN, hi = INT32_MAX; break;
	}
	bad = first_out_of_range(v, total, lo, hi);
	if (bad < total)
		return ann_err(err, ANN_E_INVAL,
			       "%s: vector %llu: component %zu is %g, outside %.0f..%.0f for %s", w->f.path,
			       (unsigned long long)(w->count + bad / w->dim), bad % w->dim, (double)v[bad],
			       lo, hi, ann_vfmt_name(w->fmt));
	return ANN_OK;
}

/* Appends n records whose elements come from src (as_f32: floats already
 * validated, else elements in the file type). */
static int vwriter_append(ann_vwriter *w, const uint8_t *src, size_t n, bool as_f32, ann_error *err)
{
	fwriter *f = &w->f;
	size_t ebytes = (size_t)w->dim * w->esize, ibytes = as_f32 ? (size_t)w->dim * 4 : ebytes;
	size_t done = 0;
	while (done < n) {
		if (f->cap - f->len < w->rec && fw_flush(f, err) < 0)
			goto fail;
		size_t k = ANN_MIN(n - done, (f->cap - f->len) / w->rec);
		uint8_t *o = f->buf + f->len;
		const uint8_t *s = src + done * ibytes;
		if (!w->hdr) {
			if (as_f32)
				f32_to_elems((const float *)(const void *)s, o, k * w->dim, w->dtype);
			else
				memcpy(o, s, k * ebytes);
		} else {
			for (size_t j = 0; j < k; j++) {
				uint8_t *ro = o + j * w->rec;
				ann_st32(ro, w->dim);
				if (as_f32)
					f32_to_elems((const float *)(const void *)(s + j * ibytes), ro + 4,
						     w->dim, w->dtype);
				else
					memcpy(ro + 4, s + j * ibytes, ebytes);
			}
		}
		f->len += k * w->rec;
		done += k;
	}
	w->count += n;
	return ANN_OK;
fail:
	w->failed = true;
	return err ? err->code : ANN_E_IO;
}

int ann_vwriter_write_f32(ann_vwriter *w, const float *v, size_t n, ann_error *err)
{
	ANN_TRY(vwriter_check(w, v, n, err));
	if (n == 0)
		return ANN_OK;
	ANN_TRY(vwriter_check_f32(w, v, n, err));
	return vwriter_append(w, (const uint8_t *)v, n, true, err);
}

int ann_vwriter_write_raw(ann_vwriter *w, const void *v, size_t n, ann_error *err)
{
	ANN_TRY(vwriter_check(w, v, n, err));
	if (n == 0)
		return ANN_OK;
	if (w->dtype == ANN_DTYPE_F32) {
		size_t total = n * w->dim, bad = first_nonfinite(v, total);
		if (bad < total)
			return ann_err(err, ANN_E_INVAL, "%s: vector %llu: component %zu is not finite",
				       w->f.path, (unsigned long long)(w->count + bad / w->dim),
				       bad % w->dim);
	}
	return vwriter_append(w, v, n, false, err);
}

int ann_vwriter_close(ann_vwriter *w, ann_error *err)
{
	if (!w)
		return ann_err(err, ANN_E_INVAL, "ann_vwriter_close: NULL writer");
	if (w->failed) {
		int rc = ann_err(err, ANN_E_STATE, "%s: writer failed earlier; nothing was written",
				 w->f.path);
		ann_vwriter_abort(w);
		return rc;
	}
	if (w->count == 0) {
		int rc = ann_err(err, ANN_E_INVAL,
				 "%s: no vector was written; a vector file holds at least one, so nothing "
				 "was created", w->f.path);
		ann_vwriter_abort(w);
		return rc;
	}
	uint8_t h[8];
	size_t hlen = 0;
	if (!w->hdr) {
		ann_st32(h, (uint32_t)w->count);
		ann_st32(h + 4, w->dim);
		hlen = 8;
	}
	int rc = fw_commit(&w->f, h, hlen, err);
	ann_free(w);
	return rc;
}

void ann_vwriter_abort(ann_vwriter *w)
{
	if (!w)
		return;
	fw_release(&w->f, true);
	ann_free(w);
}

uint64_t ann_vwriter_count(const ann_vwriter *w)
{
	return w->count;
}

/* ---- ground truth -------------------------------------------------------- */

int ann_gt_write(const char *path, uint32_t nq, uint32_t k, const int32_t *ids, const float *dists,
		 ann_error *err)
{
	if (!path || !ids || !dists)
		return ann_err(err, ANN_E_INVAL, "ann_gt_write: NULL path, ids or distances");
	if (nq == 0 || k == 0 || nq > INT32_MAX || k > INT32_MAX)
		return ann_err(err, ANN_E_INVAL, "%s: %u queries x %u neighbours, expected 1..%d each", path,
			       nq, k, INT32_MAX);
	size_t total;
	if (!ann_mul_ok(nq, k, &total) || total > SIZE_MAX / 8)
		return ann_err(err, ANN_E_INVAL, "%s: %u x %u results overflow", path, nq, k);
	fwriter f;
	ANN_TRY(fw_open(&f, path, VECIO_BUF_BYTES, err));
	uint8_t h[8];
	ann_st32(h, nq);
	ann_st32(h + 4, k);
	int rc;
	ANN_CHECK(rc, fw_put(&f, h, 8, err));
	ANN_CHECK(rc, fw_put(&f, ids, total * 4, err));
	ANN_CHECK(rc, fw_put(&f, dists, total * 4, err));
	return fw_commit(&f, NULL, 0, err);
fail:
	fw_release(&f, true);
	return rc;
}

/* Ground truth stored as an .ivecs file of ids (one vector per query). */
/* Ground-truth ids are >= 0, or -1 where a query had fewer than k neighbours. */
static int gt_check_ids(const char *path, const int32_t *ids, uint64_t total, uint32_t k, ann_error *err)
{
	for (uint64_t i = 0; i < total; i++)
		if (ids[i] < -1)
			return ann_err(err, ANN_E_BADINPUT, "%s: query %llu: id %d at rank %llu is negative", path,
				       (unsigned long long)(i / k), ids[i], (unsigned long long)(i % k));
	return ANN_OK;
}

static int gt_read_ivecs(const char *path, uint32_t *nq, uint32_t *k, int32_t **ids, float **dists,
			 ann_error *err)
{
	ann_vreader *r;
	ANN_TRY(ann_vreader_open(path, &r, err));
	int rc;
	uint64_t n = ann_vreader_count(r);
	uint32_t d = ann_vreader_dim(r);
	size_t total;
	if (n > INT32_MAX || !ann_mul_ok((size_t)n, d, &total) || total > SIZE_MAX / 4) {
		rc = ann_err(err, ANN_E_BADINPUT, "%s: %llu queries x %u ids is too large", path,
			     (unsigned long long)n, d);
		goto fail;
	}
	*ids = ann_malloc(total * 4);
	if (dists)
		*dists = ann_malloc(total * 4);
	if (!*ids || (dists && !*dists)) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for %zu results", path, total);
		goto fail;
	}
	int64_t got = ann_vreader_read_raw(r, *ids, (size_t)n, err);
	if (got < 0) {
		rc = (int)got;
		goto fail;
	}
	ANN_CHECK(rc, gt_check_ids(path, *ids, total, d, err));
	if (dists)
		for (size_t i = 0; i < total; i++)
			(*dists)[i] = NAN;
	ann_vreader_close(r);
	*nq = (uint32_t)n;
	*k = d;
	return ANN_OK;
fail:
	ann_vreader_close(r);
	return rc;
}

int ann_gt_read(const char *path, uint32_t *nq, uint32_t *k, int32_t **ids, float **dists, ann_error *err)
{
	if (!path || !nq || !k || !ids)
		return ann_err(err, ANN_E_INVAL, "ann_gt_read: NULL argument");
	*ids = NULL;
	if (dists)
		*dists = NULL;
	int rc;
	if (ends_with(path, ".ivecs")) {
		rc = gt_read_ivecs(path, nq, k, ids, dists, err);
		goto done;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return open_fail(err, errno, path);
	struct stat st;
	if (fstat(fd, &st) != 0) {
		rc = ann_err_sys(err, errno, "%s: fstat failed", path);
		goto fail;
	}
	uint64_t size = (uint64_t)st.st_size;
	uint8_t h[8];
	if (size < 8) {
		rc = ann_err(err, ANN_E_BADINPUT, "%s: %s: %llu bytes, shorter than the 8-byte header", path,
			     size ? "truncated" : "empty file", (unsigned long long)size);
		goto fail;
	}
	ANN_CHECK(rc, ann_pread_all(fd, h, 8, 0, path, err));
	int32_t n = (int32_t)ann_ld32(h), kk = (int32_t)ann_ld32(h + 4);
	if (n <= 0 || kk <= 0) {
		rc = ann_err(err, ANN_E_BADINPUT,
			     "%s: header says %d queries x %d neighbours, expected positive", path, n, kk);
		goto fail;
	}
	/* n, kk < 2^31: total < 2^62, but total * 8 can wrap (issue 13 D6: a
	 * 537,560-byte file passed with n = 1073764994, k = 2147437309), so the
	 * body is divided, never the count multiplied. */
	uint64_t total = (uint64_t)n * (uint64_t)kk, body = size - 8;
	/* Full layout, or ids only (what some tools write as .ibin). */
	bool has_d = body % 8 == 0 && body / 8 == total;
	if (!has_d && !(body % 4 == 0 && body / 4 == total)) {
		rc = ann_err(err, ANN_E_BADINPUT,
			     "%s: header says %d queries x %d neighbours, i.e. 8 + %llu x 8 bytes with distances "
			     "(or 8 + %llu x 4 ids only), but the file has %llu bytes",
			     path, n, kk, (unsigned long long)total, (unsigned long long)total,
			     (unsigned long long)size);
		goto fail;
	}
	if (total > SIZE_MAX / 4) {
		rc = ann_err(err, ANN_E_BADINPUT, "%s: %llu results too large", path,
			     (unsigned long long)total);
		goto fail;
	}
	*ids = ann_malloc((size_t)total * 4);
	if (dists)
		*dists = ann_malloc((size_t)total * 4);
	if (!*ids || (dists && !*dists)) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for %llu results", path,
			     (unsigned long long)total);
		goto fail;
	}
	ANN_CHECK(rc, ann_pread_all(fd, *ids, (size_t)total * 4, 8, path, err));
	ANN_CHECK(rc, gt_check_ids(path, *ids, total, (uint32_t)kk, err));
	if (dists) {
		if (has_d) {
			ANN_CHECK(rc, ann_pread_all(fd, *dists, (size_t)total * 4, 8 + total * 4, path, err));
			for (uint64_t i = 0; i < total; i++) {
				if (isnan((*dists)[i])) {
					rc = ann_err(err, ANN_E_BADINPUT,
						     "%s: query %llu: distance at rank %llu is NaN", path,
						     (unsigned long long)(i / (uint64_t)kk),
						     (unsigned long long)(i % (uint64_t)kk));
					goto fail;
				}
			}
		} else {
			for (uint64_t i = 0; i < total; i++)
				(*dists)[i] = NAN;
		}
	}
	close(fd);
	*nq = (uint32_t)n;
	*k = (uint32_t)kk;
	return ANN_OK;
fail:
	close(fd);
done:
	if (rc < 0) {
		ann_free(*ids);
		*ids = NULL;
		if (dists) {
			ann_free(*dists);
			*dists = NULL;
		}
	}
	return rc;
}

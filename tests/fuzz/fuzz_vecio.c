/* SPDX-License-Identifier: MIT */
/*
 * fuzz_vecio: every vector-file reader of src/core/vecio.c. Byte 0 picks the
 * format (by the file name's extension, as the tool does); the rest is the
 * file. Selector 9 gzips the rest first, so the idx parser behind zlib is
 * reached; selector 8 hands raw bytes to the .gz reader (zlib's own checks).
 * The whole file is read twice (as float32 and in its own type) and once more
 * after a seek; a file that opens must yield exactly its announced count.
 */
#include <zlib.h>

#include "fuzz.h"
#include "vecio.h"

static const char *const names[10] = {
	"in.fvecs", "in.bvecs", "in.ivecs", "in.fbin", "in.u8bin", "in.i8bin", "in.ibin",
	"in-idx3-ubyte", "in-idx3-ubyte.gz", "in-idx3-ubyte.gz",
};

static const char *write_gz(const uint8_t *data, size_t size, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s/%s", fz_tmpdir(), names[9]);
	gzFile gz = gzopen(buf, "wb1");
	if (!gz || (size && gzwrite(gz, data, (unsigned)size) != (int)size) || gzclose(gz) != Z_OK) {
		fprintf(stderr, "fuzz: gzip write failed\n");
		abort();
	}
	return buf;
}

/* Reads everything from the current position; returns vectors read or -1. */
static int64_t drain(ann_vreader *r, bool raw, void *buf, size_t max, ann_error *e)
{
	int64_t total = 0;
	for (;;) {
		int64_t got = raw ? ann_vreader_read_raw(r, buf, max, e) : ann_vreader_read_f32(r, buf, max, e);
		FZ_CHECK(got, *e);
		if (got < 0)
			return -1;
		if (got == 0)
			return total;
		FZ_ASSERT((size_t)got <= max);
		total += got;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > (1u << 20))
		return 0;
	unsigned sel = data[0] % 10;
	char path[512];
	if (sel == 9)
		write_gz(data + 1, size - 1, path, sizeof path);
	else
		fz_write_file(names[sel], data + 1, size - 1, path, sizeof path);

	ann_error e = {0};
	ann_vreader *r = NULL;
	int rc = ann_vreader_open(path, &r, &e);
	FZ_CHECK(rc, e);
	if (rc < 0) {
		FZ_ASSERT(r == NULL);
		return 0;
	}
	uint64_t n = ann_vreader_count(r);
	uint32_t d = ann_vreader_dim(r);
	FZ_ASSERT(n >= 1 && d >= 1 && d <= ANN_VEC_MAX_DIM);
	/* A file that opens is no larger than what it holds: at least one byte
	 * per element for uncompressed formats. */
	if (sel < 8)
		FZ_ASSERT(n <= size && (uint64_t)d <= size);
	size_t max = 4096 / d ? 4096 / d : 1;
	float *buf = malloc(max * (size_t)d * sizeof(float));
	FZ_ASSERT(buf != NULL);
	int64_t got = drain(r, false, buf, max, &e);
	if (got >= 0) {
		FZ_ASSERT((uint64_t)got == n);
		FZ_ASSERT(ann_vreader_pos(r) == n);
		rc = ann_vreader_seek(r, n / 2, &e);
		FZ_CHECK(rc, e);
		if (rc == 0) {
			got = drain(r, true, buf, max, &e);
			if (got >= 0)
				FZ_ASSERT((uint64_t)got == n - n / 2);
		}
	}
	rc = ann_vreader_seek(r, n + 1, &e);
	FZ_ASSERT(rc < 0);
	FZ_CHECK(rc, e);
	free(buf);
	ann_vreader_close(r);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * fuzz_gt: the ground-truth reader ann_gt_read (src/core/vecio.c): the big-ann
 * layout (with or without distances) and .ivecs. Byte 0 picks the file name
 * (.bin, .ibin or .ivecs) and bit 7 whether distances are asked for; the
 * rest is the file. A file that loads holds nq * k ids, none below -1, and
 * no NaN distance unless the file has none.
 */
#include <math.h>

#include "fuzz.h"
#include "vecio.h"

static const char *const names[3] = { "gt.bin", "gt.ibin", "gt.ivecs" };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > (1u << 20))
		return 0;
	unsigned sel = (data[0] & 0x7f) % 3;
	bool want_d = data[0] & 0x80;
	char path[512];
	fz_write_file(names[sel], data + 1, size - 1, path, sizeof path);

	ann_error e = {0};
	uint32_t nq = 0, k = 0;
	int32_t *ids = NULL;
	float *dists = NULL;
	int rc = ann_gt_read(path, &nq, &k, &ids, want_d ? &dists : NULL, &e);
	FZ_CHECK(rc, e);
	if (rc < 0) {
		FZ_ASSERT(ids == NULL && dists == NULL);
		return 0;
	}
	FZ_ASSERT(nq >= 1 && k >= 1);
	uint64_t total = (uint64_t)nq * k;
	FZ_ASSERT(total * 4 <= size); /* every id came from the file */
	bool any_nan = false, all_nan = true;
	for (uint64_t i = 0; i < total; i++) {
		FZ_ASSERT(ids[i] >= -1);
		if (want_d) {
			bool nan = isnan(dists[i]);
			any_nan |= nan;
			all_nan &= nan;
		}
	}
	FZ_ASSERT(!any_nan || all_nan);
	ann_free(ids);
	ann_free(dists);
	return 0;
}

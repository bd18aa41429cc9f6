/* SPDX-License-Identifier: MIT */
/*
 * fuzz.h: helpers shared by the libFuzzer targets of tests/fuzz (built with
 * -Dfuzz=true, clang only; run by tests/fuzz/run.sh).
 *
 * Every target holds to the same contract as the tool: an input either loads
 * or is refused with a negative ann_status and a non-empty message. A crash, a
 * sanitizer report, a leak, or a refusal without a message is a finding
 * (FZ_CHECK aborts on the last, so libFuzzer records the input).
 *
 * Readers that take a path get the input written to a file in a private
 * directory under $ANNANN_FUZZ_TMP (run.sh points it at a directory it removes
 * at the end: libFuzzer's exits skip atexit handlers), else on tmpfs
 * (/dev/shm when it exists, else $TMPDIR or /tmp), created once per process
 * and removed at a normal exit. Readers of checksummed blobs get the
 * checksums recomputed by the target (see each target), so that the fuzzer
 * reaches the parser behind them instead of stopping at the checksum.
 */
#ifndef ANN_FUZZ_H
#define ANN_FUZZ_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A refusal must carry a status and a message. */
#define FZ_CHECK(rc, e)                                                                          \
	do {                                                                                     \
		if ((rc) < 0 && ((e).code != (rc) || (e).msg[0] == '\0')) {                      \
			dprintf(2, "%s:%d: status %d with error code %d and message '%s'\n", \
				__FILE__, __LINE__, (int)(rc), (e).code, (e).msg);               \
			abort();                                                                 \
		}                                                                                \
	} while (0)

#define FZ_ASSERT(c)                                                                       \
	do {                                                                               \
		if (!(c)) {                                                                \
			dprintf(2, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #c); \
			abort();                                                           \
		}                                                                          \
	} while (0)

static char fz_dir[256];

static void fz_cleanup(void)
{
	if (!fz_dir[0])
		return;
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "fuzz: could not remove %s\n", fz_dir);
}

/* The per-process scratch directory (created on first use). */
static inline const char *fz_tmpdir(void)
{
	if (fz_dir[0])
		return fz_dir;
	const char *base = getenv("ANNANN_FUZZ_TMP"); /* run.sh's, removed by it */
	if (!base || !*base)
		base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
	if (!base || !*base)
		base = "/tmp";
	snprintf(fz_dir, sizeof fz_dir, "%s/annann-fuzz.XXXXXX", base);
	if (!mkdtemp(fz_dir)) {
		perror("fuzz: mkdtemp");
		abort();
	}
	atexit(fz_cleanup);
	return fz_dir;
}

/* Writes data to <tmpdir>/<name> (replacing it) and returns the path in buf. */
static inline const char *fz_write_file(const char *name, const uint8_t *data, size_t size, char *buf,
					size_t cap)
{
	snprintf(buf, cap, "%s/%s", fz_tmpdir(), name);
	int fd = open(buf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		perror("fuzz: open");
		abort();
	}
	size_t off = 0;
	while (off < size) {
		ssize_t w = write(fd, data + off, size - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			perror("fuzz: write");
			abort();
		}
		off += (size_t)w;
	}
	close(fd);
	return buf;
}

#endif /* ANN_FUZZ_H */

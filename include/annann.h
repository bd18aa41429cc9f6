/* SPDX-License-Identifier: MIT */
/*
 * annann.h: the public interface of libannann, a disk-resident approximate
 * nearest-neighbour index. This header is the only one installed; every
 * exported symbol starts with ann_. docs/API.md is the narrative companion.
 *
 * Conventions that hold for every function below unless it says otherwise:
 *  - Fallible functions return int: ANN_OK (0) or a negative ann_status.
 *  - Their last parameter is an optional ann_error *err (NULL allowed); on
 *    failure it receives the same code, the errno if any, and a message that
 *    names the file, the position and what was expected.
 *  - Inputs are borrowed for the duration of the call.
 *  - Handles returned through a pointer-to-pointer are NULL after a failure,
 *    with nothing to free. Destructors accept NULL.
 *  - One environment variable is read: ANNANN_SIMD=scalar|avx2|avx512 forces
 *    the distance kernels (a level the CPU lacks falls back to the best one
 *    it has, with ann_simd_active() telling which ran).
 */
#ifndef ANNANN_H
#define ANNANN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define ANN_API __attribute__((visibility("default")))
#else
#define ANN_API
#endif

#define ANN_VERSION_MAJOR 0
#define ANN_VERSION_MINOR 1
#define ANN_VERSION_PATCH 0

/** Status codes. Values are stable forever; new codes are appended. */
typedef enum ann_status {
	ANN_OK = 0,
	ANN_E_INVAL = -1,       /**< misuse: a bad argument or option */
	ANN_E_NOMEM = -2,       /**< an allocation failed */
	ANN_E_BUDGET = -3,      /**< the memory budget is too small; the message names the shortfall */
	ANN_E_IO = -4,          /**< a system call failed; ann_error.sys_errno keeps errno */
	ANN_E_CORRUPT = -5,     /**< checksum or structure mismatch in stored data */
	ANN_E_FORMAT = -6,      /**< bad magic or unsupported format version */
	ANN_E_BADINPUT = -7,    /**< malformed input file (vectors, ids, ground truth) */
	ANN_E_NOTFOUND = -8,    /**< a file, key, or id does not exist */
	ANN_E_UNSUPPORTED = -9, /**< valid request this build or machine cannot serve */
	ANN_E_STATE = -10,      /**< the handle is in a failed state; only free/abort remain */
	ANN_E_EXISTS = -11,     /**< the id or file already exists */
} ann_status;

/** Detailed error, owned by the caller. */
typedef struct ann_error {
	int code;      /**< the ann_status returned */
	int sys_errno; /**< errno of the failing system call, or 0 */
	char msg[512]; /**< NUL-terminated message */
} ann_error;

/** @return a static, never-freed description of @p code ("unknown error" otherwise). */
ANN_API const char *ann_strerror(int code);

/** @return the library version as "MAJOR.MINOR.PATCH". */
ANN_API const char *ann_version(void);

/** Distance between vectors. Smaller is nearer for every metric:
 * L2 is the squared Euclidean distance, IP is the negated inner product,
 * COSINE is 1 - cos(a, b). */
typedef enum ann_metric {
	ANN_METRIC_L2 = 0,
	ANN_METRIC_IP = 1,
	ANN_METRIC_COSINE = 2,
} ann_metric;

/** Element type of vectors in files and blocks. */
typedef enum ann_dtype {
	ANN_DTYPE_F32 = 0,
	ANN_DTYPE_U8 = 1,
	ANN_DTYPE_I8 = 2,
	ANN_DTYPE_I32 = 3, /**< ids (ivecs, ground truth) */
	ANN_DTYPE_F16 = 4,
} ann_dtype;

/** Instruction-set level of the distance kernels. */
typedef enum ann_simd_level {
	ANN_SIMD_SCALAR = 0,
	ANN_SIMD_AVX2 = 1,
	ANN_SIMD_AVX512 = 2,
} ann_simd_level;

/** @return the level the library's kernels use in this process: the best the
 * CPU supports, or ANNANN_SIMD's choice when set and supported. Thread-safe;
 * computed once. */
ANN_API ann_simd_level ann_simd_active(void);

/** @return "scalar", "avx2" or "avx512". */
ANN_API const char *ann_simd_name(ann_simd_level level);

/** Progress callback for long work. @p phase is a static string naming the
 * phase ("sample", "kmeans", "route", "pack", ...), @p done and @p total are
 * in the phase's own unit (vectors, iterations); total is 0 when unknown.
 * Called from the thread doing the work, at most a few times per second. */
typedef void (*ann_progress_fn)(void *ctx, const char *phase, uint64_t done, uint64_t total);

#ifdef __cplusplus
}
#endif

#endif /* ANNANN_H */

/* SPDX-License-Identifier: MIT */
/*
 * procfault.h: out of memory for the whole test process. procfault.c
 * defines malloc, calloc, realloc, aligned_alloc, memalign and
 * posix_memalign over glibc's __libc_ entry points, so they take the place
 * of libc's for the test program and every library it loads (libannann,
 * LMDB, liburing, zstd, OpenBLAS, libc's own fopen and the like). Armed,
 * the (n+1)-th allocation from then on fails with ENOMEM, or (sticky) every
 * one from it on: what common.h's ann_mem_fail_after / ann_mem_fail_from do
 * for the library's allocator alone. Linked only into the tests that sweep
 * it (tests/meson.build). Under ASan, whose runtime owns malloc,
 * T_PROC_FAULTS is 0 and arming does nothing.
 */
#ifndef ANN_TEST_PROCFAULT_H
#define ANN_TEST_PROCFAULT_H

#include <stdbool.h>
#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#define T_PROC_FAULTS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) || __has_feature(thread_sanitizer)
#define T_PROC_FAULTS 0
#endif
#endif
#ifndef T_PROC_FAULTS
#define T_PROC_FAULTS 1
#endif

/* n >= 0: the (n+1)-th allocation from now fails (sticky: and every one
 * after it); n < 0: none. Resets the count of t_proc_failed. */
void t_proc_fail_arm(int64_t n, bool sticky);
/* Allocations failed since the last arming. */
int64_t t_proc_failed(void);

#endif

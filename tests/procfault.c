/* SPDX-License-Identifier: MIT */
/* procfault.c: see procfault.h. */
#include "procfault.h"

#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>

static _Atomic int64_t countdown = -1;
static _Atomic bool sticky_mode;
static _Atomic int64_t failed;

void t_proc_fail_arm(int64_t n, bool sticky)
{
	atomic_store(&countdown, -1);
	atomic_store(&failed, 0);
	atomic_store(&sticky_mode, sticky);
	atomic_store(&countdown, n);
}

int64_t t_proc_failed(void)
{
	return atomic_load(&failed);
}

#if T_PROC_FAULTS
/* Seen by the libraries: the build hides symbols by default. */
#define INTERPOSE __attribute__((visibility("default")))
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

static bool fail_now(void)
{
	int64_t c = atomic_load(&countdown);
	while (c >= 0) {
		if (c == 0 && atomic_load(&sticky_mode)) {
			atomic_fetch_add(&failed, 1);
			errno = ENOMEM;
			return true;
		}
		if (atomic_compare_exchange_weak(&countdown, &c, c - 1)) {
			if (c != 0)
				return false;
			atomic_fetch_add(&failed, 1);
			errno = ENOMEM;
			return true;
		}
	}
	return false;
}

INTERPOSE void *malloc(size_t n)
{
	return fail_now() ? NULL : __libc_malloc(n);
}

INTERPOSE void *calloc(size_t n, size_t size)
{
	return fail_now() ? NULL : __libc_calloc(n, size);
}

/* realloc(p, 0) frees: never a failure. */
INTERPOSE void *realloc(void *p, size_t n)
{
	return n && fail_now() ? NULL : __libc_realloc(p, n);
}

INTERPOSE void *aligned_alloc(size_t align, size_t n)
{
	return fail_now() ? NULL : __libc_memalign(align, n);
}

INTERPOSE void *memalign(size_t align, size_t n)
{
	return fail_now() ? NULL : __libc_memalign(align, n);
}

INTERPOSE int posix_memalign(void **out, size_t align, size_t n)
{
	if (align < sizeof(void *) || (align & (align - 1)))
		return EINVAL;
	if (fail_now())
		return ENOMEM;
	void *p = __libc_memalign(align, n);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}
#endif

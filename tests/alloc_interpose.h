/* SPDX-License-Identifier: MIT */
/*
 * alloc_interpose.h: malloc, calloc, realloc, aligned_alloc, memalign and
 * posix_memalign over glibc's __libc_ entry points (no dlsym, which
 * allocates), each failing with ENOMEM where ALLOC_FAILS() says so. Defined
 * in a test program (procfault.c) or an LD_PRELOAD shim (fault/libfault.c),
 * they take the place of libc's for the process: the program's, libannann's,
 * LMDB's and libc's own allocations. The includer defines ALLOC_FAILS()
 * (a bool expression, evaluated once an allocation) and includes this once.
 * Not under ASan, whose runtime owns these names.
 */
#ifndef ANN_TEST_ALLOC_INTERPOSE_H
#define ANN_TEST_ALLOC_INTERPOSE_H

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>

/* Seen by the libraries: the build hides symbols by default. */
#define INTERPOSE __attribute__((visibility("default")))

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

INTERPOSE void *malloc(size_t n)
{
	return ALLOC_FAILS() ? NULL : __libc_malloc(n);
}

INTERPOSE void *calloc(size_t n, size_t size)
{
	return ALLOC_FAILS() ? NULL : __libc_calloc(n, size);
}

/* realloc(p, 0) frees: never a failure. */
INTERPOSE void *realloc(void *p, size_t n)
{
	return n && ALLOC_FAILS() ? NULL : __libc_realloc(p, n);
}

INTERPOSE void *aligned_alloc(size_t align, size_t n)
{
	return ALLOC_FAILS() ? NULL : __libc_memalign(align, n);
}

INTERPOSE void *memalign(size_t align, size_t n)
{
	return ALLOC_FAILS() ? NULL : __libc_memalign(align, n);
}

INTERPOSE int posix_memalign(void **out, size_t align, size_t n)
{
	if (align < sizeof(void *) || (align & (align - 1)))
		return EINVAL;
	if (ALLOC_FAILS())
		return ENOMEM;
	void *p = __libc_memalign(align, n);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

#endif

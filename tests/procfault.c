/* SPDX-License-Identifier: MIT */
/* procfault.c: see procfault.h. */
#include "procfault.h"

#include <errno.h>
#include <stdatomic.h>

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

#define ALLOC_FAILS() fail_now()
#include "alloc_interpose.h"
#endif

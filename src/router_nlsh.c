/* SPDX-License-Identifier: MIT */
/* PLACEHOLDER: the Neural LSH routers is being written; until then it reports so. */
#include "router.h"

int ann_router_nlsh_train(const ann_build_opts *o, const float *sample, size_t n, size_t d, uint32_t nparts,
			    ann_router **out, ann_error *err)
{
	(void)o, (void)sample, (void)n, (void)d, (void)nparts;
	*out = NULL;
	return ann_err(err, ANN_E_UNSUPPORTED, "the nlsh routers is not available in this build");
}

int ann_router_nlsh_load(ann_router_kind kind, const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric, ann_router **out,
			   ann_error *err)
{
	(void)kind, (void)blob, (void)len, (void)dim, (void)metric;
	*out = NULL;
	return ann_err(err, ANN_E_UNSUPPORTED, "the nlsh routers is not available in this build");
}

/* SPDX-License-Identifier: MIT */
/* router.c: dispatch over router kinds and the shared closure rule. */
#include "router.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

const char *ann_router_name(ann_router_kind k)
{
	switch (k) {
	case ANN_ROUTER_KMEANS: return "kmeans";
	case ANN_ROUTER_ANNANN: return "annann";
	case ANN_ROUTER_NLSH: return "nlsh";
	case ANN_ROUTER_JOINT: return "joint";
	case ANN_ROUTER_SOFT: return "soft";
	default: return "?";
	}
}

void ann_router_log(const ann_build_opts *o, const char *fmt, ...)
{
	if (!o->log)
		return;
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	o->log(o->log_ctx, line);
}

int ann_router_train(const ann_build_opts *o, const float *sample, size_t n, size_t d, uint32_t nparts,
		     ann_router **out, ann_error *err)
{
	*out = NULL;
	switch (o->router) {
	case ANN_ROUTER_KMEANS:
		return ann_router_kmeans_train(o, sample, n, d, nparts, out, err);
	case ANN_ROUTER_ANNANN:
		return ann_router_annann_train(o, sample, n, d, nparts, out, err);
	case ANN_ROUTER_NLSH:
	case ANN_ROUTER_JOINT:
	case ANN_ROUTER_SOFT:
		return ann_router_nlsh_train(o, sample, n, d, nparts, out, err);
	default:
		return ann_err(err, ANN_E_UNSUPPORTED, "router '%s' is not available in this build",
			       ann_router_name(o->router));
	}
}

int ann_router_load(ann_router_kind kind, const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric,
		    ann_router **out, ann_error *err)
{
	*out = NULL;
	switch (kind) {
	case ANN_ROUTER_KMEANS:
		return ann_router_kmeans_load(blob, len, dim, metric, out, err);
	case ANN_ROUTER_ANNANN:
		return ann_router_annann_load(blob, len, dim, metric, out, err);
	case ANN_ROUTER_NLSH:
	case ANN_ROUTER_JOINT:
	case ANN_ROUTER_SOFT:
		return ann_router_nlsh_load(kind, blob, len, dim, metric, out, err);
	default:
		return ann_err(err, ANN_E_FORMAT, "router kind %d is unknown to this version", (int)kind);
	}
}

void ann_router_free(ann_router *r)
{
	if (r)
		r->ops->free(r);
}

uint32_t ann_router_closure(const uint32_t *ids, const float *dists, uint32_t m, uint32_t copies, double eps,
			    ann_metric metric, uint32_t *out)
{
	uint32_t c = 0;
	if (m == 0 || ids[0] == UINT32_MAX)
		goto pad;
	out[c++] = ids[0];
	double best = dists[0];
	/* L2 distances are squared: (1 + eps) on the distance is (1 + eps)^2 here. */
	double bound = metric == ANN_METRIC_L2 ? best * (1 + eps) * (1 + eps) : best + eps * fabs(best);
	for (uint32_t i = 1; i < m && c < copies; i++) {
		if (ids[i] == UINT32_MAX || dists[i] > bound)
			break;
		out[c++] = ids[i];
	}
pad:
	for (uint32_t i = c; i < copies; i++)
		out[i] = UINT32_MAX;
	return c;
}

int ann_router_closure_rows(const uint32_t *ids, const float *dists, size_t n, uint32_t m, uint32_t copies,
			    double eps, ann_metric metric, uint32_t *parts, const char *who, ann_error *err)
{
	for (size_t i = 0; i < n; i++) {
		ann_router_closure(ids + i * m, dists + i * m, m, copies, eps, metric, parts + i * copies);
		if (parts[i * copies] == UINT32_MAX)
			return ann_err(err, ANN_E_BADINPUT,
				       "%s router: vector %zu has no finite distance to any partition's centre "
				       "(a component too large for float arithmetic?)", who, i);
	}
	return ANN_OK;
}

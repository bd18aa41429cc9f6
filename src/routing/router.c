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

void ann_router_env_from(const ann_build_opts *o, ann_router_env *env)
{
	*env = (ann_router_env){
		.kind = o->router,
		.metric = o->metric,
		.encoding = o->encoding,
		.seed = o->seed,
		.threads = o->threads,
		.mem_bytes = o->mem_bytes,
		.progress = o->progress,
		.progress_ctx = o->progress_ctx,
		.log = o->log,
		.log_ctx = o->log_ctx,
		.cancel = o->cancel,
		.cancel_ctx = o->cancel_ctx,
	};
}

void ann_router_log(const ann_router_env *o, const char *fmt, ...)
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
	ann_router_env env;
	ann_router_env_from(o, &env);
	switch (o->router) {
	case ANN_ROUTER_KMEANS:
		return ann_router_kmeans_train(&env, &o->kmeans, sample, n, d, nparts, out, err);
	case ANN_ROUTER_ANNANN:
		return ann_router_annann_train(&env, &o->annann, sample, n, d, nparts, out, err);
	case ANN_ROUTER_NLSH:
	case ANN_ROUTER_JOINT:
	case ANN_ROUTER_SOFT:
		return ann_router_nlsh_train(&env, &o->nlsh, sample, n, d, nparts, out, err);
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

/* The closure rule's bound on a candidate's distance, given the nearest's. */
static double closure_bound(double best, double eps, ann_metric metric)
{
	/* L2 distances are squared: (1 + eps) on the distance is (1 + eps)^2 here. */
	return metric == ANN_METRIC_L2 ? best * (1 + eps) * (1 + eps) : best + eps * fabs(best);
}

static uint32_t pad_copies(uint32_t *out, uint32_t made, uint32_t copies)
{
	for (uint32_t i = made; i < copies; i++)
		out[i] = UINT32_MAX;
	return made;
}

uint32_t ann_router_closure(const uint32_t *ids, const float *dists, uint32_t m, uint32_t copies, double eps,
			    ann_metric metric, uint32_t *out)
{
	uint32_t c = 0;
	if (m == 0 || ids[0] == UINT32_MAX)
		return pad_copies(out, c, copies);
	out[c++] = ids[0];
	double bound = closure_bound(dists[0], eps, metric);
	for (uint32_t i = 1; i < m && c < copies; i++) {
		if (ids[i] == UINT32_MAX || dists[i] > bound)
			break;
		out[c++] = ids[i];
	}
	return pad_copies(out, c, copies);
}

uint32_t ann_router_soar(const float *x, size_t d, const uint32_t *ids, const float *dists, const float *cents,
			 uint32_t m, const ann_assign_rule *sp, ann_metric metric, float *scratch, uint32_t *out)
{
	uint32_t copies = sp->copies, c = 0;
	if (m == 0 || ids[0] == UINT32_MAX)
		return pad_copies(out, c, copies);
	out[c++] = ids[0];
	double bound = closure_bound(dists[0], sp->eps, metric);
	float *rn = scratch, *amp = scratch + m; /* |x - c_j|^2; the amplified projections so far */
	uint32_t avail = 0;
	for (uint32_t j = 0; j < m; j++) {
		if (ids[j] == UINT32_MAX || (j > 0 && dists[j] > bound))
			break;
		const float *cj = cents + (size_t)j * d;
		double s = 0;
		for (size_t i = 0; i < d; i++)
			s += ((double)x[i] - cj[i]) * ((double)x[i] - cj[i]);
		rn[j] = (float)s;
		amp[j] = 0.0f;
		avail = j + 1;
	}
	uint64_t taken = 1; /* candidate j chosen: bit j (m <= 64, asserted by the callers' bound) */
	uint32_t last = 0;
	while (c < copies) {
		const float *cl = cents + (size_t)last * d;
		if (rn[last] > 0.0f)
			for (uint32_t j = 1; j < avail; j++) {
				if (taken >> j & 1)
					continue;
				const float *cj = cents + (size_t)j * d;
				double dot = 0;
				for (size_t i = 0; i < d; i++)
					dot += ((double)x[i] - cl[i]) * ((double)x[i] - cj[i]);
				amp[j] += (float)(dot * dot / rn[last]);
			}
		uint32_t best = UINT32_MAX;
		double best_loss = INFINITY;
		for (uint32_t j = 1; j < avail; j++) {
			double loss = (double)rn[j] + sp->soar_lambda * amp[j];
			if (!(taken >> j & 1) && loss < best_loss) {
				best_loss = loss;
				best = j;
			}
		}
		if (best == UINT32_MAX)
			break;
		out[c++] = ids[best];
		taken |= (uint64_t)1 << best;
		last = best;
	}
	return pad_copies(out, c, copies);
}

size_t ann_router_probe_cut(const float *dists, size_t found, double eps, ann_metric metric)
{
	if (found == 0 || !(eps > 0) || isinf(eps))
		return found;
	double bound = closure_bound(dists[0], eps, metric);
	size_t c = 1;
	while (c < found && dists[c] <= bound)
		c++;
	return c;
}

int ann_router_closure_rows(const uint32_t *ids, const float *dists, size_t n, uint32_t m, uint32_t copies,
			    double eps, ann_metric metric, uint32_t *parts, const char *who, ann_error *err)
{
	for (size_t i = 0; i < n; i++)
		ann_router_closure(ids + i * m, dists + i * m, m, copies, eps, metric, parts + i * copies);
	return ann_router_check_primary(parts, n, copies, who, err);
}

int ann_router_check_primary(const uint32_t *parts, size_t n, uint32_t copies, const char *who, ann_error *err)
{
	for (size_t i = 0; i < n; i++)
		if (parts[i * copies] == UINT32_MAX)
			return ann_err(err, ANN_E_BADINPUT,
				       "%s router: vector %zu has no finite distance to any partition's centre "
				       "(a component too large for float arithmetic?)", who, i);
	return ANN_OK;
}

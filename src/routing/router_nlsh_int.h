/* SPDX-License-Identifier: MIT */
/*
 * router_nlsh_int.h: the graph router (nlsh, joint, soft) as its two files
 * see it: router_nlsh.c (the runtime: classifier inference, the router
 * operations, the blob) and router_nlsh_train.c (the training of the three
 * kinds). Internal to src/routing; the public face is router_nlsh.h.
 */
#ifndef ANN_ROUTER_NLSH_INT_H
#define ANN_ROUTER_NLSH_INT_H

#include "nn.h"
#include "router_nlsh.h"

#define NL_MAX_HIST 4096u
#define NL_MAX_PARTS (1u << 30)
#define CHUNK 512u            /* rows per batched inference call */

typedef struct nl {
	ann_router_kind kind;
	uint32_t d;		/* input dimension */
	uint32_t m;		/* parts */
	uint32_t G;		/* groups (0: flat classifier) */
	uint32_t m2;		/* parts per group, m / G (two-level) */
	float scale;		/* normalisation: (x - shift) * scale */
	float *shift;		/* d */
	ann_mlp *top;		/* d -> m (flat) or d -> G */
	ann_mlp **sub;		/* two-level: G networks d -> m2 */
	ann_nlsh_round *hist;	/* nhist entries */
	uint32_t nhist;
	size_t scratch1;	/* inference scratch (floats) for one row, any network */
} nl;

/* The normalised row: (x - shift) * scale. */
static inline void nl_norm(const nl *r, const float *x, float *y)
{
	for (uint32_t j = 0; j < r->d; j++)
		y[j] = (x[j] - r->shift[j]) * r->scale;
}

/* Frees the router's state (NULL-safe). */
void nl_free_impl(nl *r);
/* Sets r->scratch1 from the classifiers' shapes. */
void nl_update_scratch(nl *r);
/* Top `copies` parts of n rows, with the closure rule of router.h applied to
 * probabilities: extra copies only where p_j * (1 + eps) >= p_best. parts
 * gets n * copies entries, UINT32_MAX padded. */
int nl_classify(const nl *r, const float *x, size_t n, uint32_t copies, double eps, uint32_t *parts,
		ann_error *err);
/* Wraps r in a router of its kind (r is freed on failure). */
int nl_wrap(nl *r, ann_metric metric, ann_router **out, ann_error *err);

#endif

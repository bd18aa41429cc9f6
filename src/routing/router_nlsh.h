/* SPDX-License-Identifier: MIT */
/*
 * router_nlsh.h: what the graph routers of router_nlsh.c (nlsh, joint, soft)
 * expose beyond router.h: the training history kept in the router and its
 * blob (per round: cut, balance, classifier accuracy, labels changed), for
 * `annann info` and the tests, and a training entry point that fixes the
 * classifier's shape (flat or two-level). docs/ROUTER_NLSH.md explains both.
 */
#ifndef ANN_ROUTER_NLSH_H
#define ANN_ROUTER_NLSH_H

#include "router.h"

/* Parts from which the classifier is two-level by default (groups x parts
 * per group), when the part count has a suitable divisor. */
#define ANN_NLSH_TWO_LEVEL_MIN 1024u

/* Phase of a history entry. Stored in blobs: never renumber. */
typedef enum ann_nlsh_phase {
	ANN_NLSH_PHASE_PARTITION = 0, /* METIS labels and the first classifier (nlsh; joint's round 0) */
	ANN_NLSH_PHASE_JOINT = 1,     /* one joint round: relabel, then warm-started training */
	ANN_NLSH_PHASE_SOFT = 2,      /* one epoch of the relaxed partitioner, hardened by argmax */
} ann_nlsh_phase;

/* One training round, measured on the sample and its k-NN graph. */
typedef struct ann_nlsh_round {
	uint32_t phase;  /* ann_nlsh_phase */
	uint32_t round;  /* 0-based within its phase */
	double cut_frac; /* weight of cut graph edges / total weight, under the labels after the round */
	double balance;  /* largest part / (n / m) */
	double accuracy; /* share of sample points whose classifier argmax is their label */
	double changed;  /* share of sample labels the round changed (0 for the partition phase) */
	double loss;     /* mean training loss of the round's last epoch */
	double seconds;  /* wall time of the round */
} ann_nlsh_round;

/* The training history of a graph router: *rounds points into the router
 * (valid while it lives). Returns the entry count; 0 (and *rounds NULL) when
 * r is not an nlsh, joint or soft router. */
size_t ann_router_nlsh_history(const ann_router *r, const ann_nlsh_round **rounds);

/* Groups of r's classifier: 0 for a flat classifier (or another router),
 * G for a two-level one (G groups of nparts / G parts). */
uint32_t ann_router_nlsh_groups(const ann_router *r);

/* ann_router_nlsh_train with the classifier's shape chosen: groups 0 picks
 * it automatically (two-level from ANN_NLSH_TWO_LEVEL_MIN parts, see
 * docs/ROUTER_NLSH.md), 1 forces a flat classifier, G >= 2 a two-level one
 * with G groups (G must divide nparts with at least 2 parts per group; soft
 * is always flat). */
int ann_router_nlsh_train_shape(const ann_router_env *env, const ann_nlsh_router_opts *o, const float *sample,
				size_t n, size_t d, uint32_t nparts, uint32_t groups, ann_router **out, ann_error *err);

#endif /* ANN_ROUTER_NLSH_H */

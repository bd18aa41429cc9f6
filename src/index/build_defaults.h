/* SPDX-License-Identifier: MIT */
/*
 * build_defaults.h: what a build picks for the options left to it ("auto":
 * partitions 0, code_bits and router_bits ANN_AUTO, balance < 0), and the
 * search's default nprobe. One rule, measured on Fashion-MNIST and the 1M
 * --profile real set (docs/DESIGN.md "Defaults"); every constant of it is in
 * build_defaults.c.
 */
#ifndef ANN_BUILD_DEFAULTS_H
#define ANN_BUILD_DEFAULTS_H

#include "annann.h"
#include "common.h"

/* Resolves the auto fields of *o in place for n vectors of dimension dim
 * stored in encoding enc (resolved, not AUTO); fields the caller set are
 * left alone and the others are chosen around them. After it: code_bits,
 * router_bits within 0..8, balance >= 0, partitions >= 1 (at most n); with
 * partitions auto and sample 0, sample = min(n, 64 x partitions) where
 * k-means trains one level, and stays 0 (the build's 256 per partition)
 * where it trains two; the build shrinks either to half its memory budget. */
void ann_build_resolve_defaults(ann_build_opts *o, uint64_t n, uint32_t dim, ann_encoding enc);

/* Default nprobe of an index with this many partitions (ann_search_opts
 * nprobe 0). */
uint32_t ann_default_nprobe(uint32_t partitions);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * heap.h: the one binary heap of the library, as a template. Every heap
 * (the top-k of distance.c, HNSW's candidate and result heaps, nlsh's top-c,
 * the auction's price heaps in partition.c, the codes search's candidate and
 * upper-bound heaps) is an instance of ANN_HEAP_DEFINE, so the sift code is
 * written once; each instance says only how its entries are stored and
 * ordered, and stays inline in its hot loop.
 *
 *   ANN_HEAP_DEFINE(name, C, V, AT, SET, BEFORE)
 *
 * defines, for a heap reached through a handle c of type C whose entries are
 * values of type V:
 *   name_up(c, i, v):      puts v at slot i of the heap, moving it up;
 *   name_down(c, n, i, v): puts v at slot i of a heap of n entries, moving it
 *                          down (replace the root: name_down(c, n, 0, v)).
 * AT(c, i) reads slot i as a V and SET(c, i, v) writes it (a hook may record
 * where an entry went, as the auction does); BEFORE(a, b) is true when a
 * must sit above b (a max-heap on distance: a.d > b.d). Both walks move the
 * hole, not the value: one store per level. Ties: an entry does not pass an
 * equal one, and of two equal children the left one is taken.
 * Invariant: for every slot i > 0, !BEFORE(slot i, slot (i - 1) / 2).
 */
#ifndef ANN_HEAP_H
#define ANN_HEAP_H

#include <stddef.h>

#define ANN_HEAP_DEFINE(name, C, V, AT, SET, BEFORE)                                 \
	static inline void name##_up(C c, size_t i, V v)                             \
	{                                                                            \
		while (i > 0) {                                                      \
			size_t p_ = (i - 1) / 2;                                     \
			V pv_ = AT(c, p_);                                           \
			if (!BEFORE(v, pv_))                                         \
				break;                                               \
			SET(c, i, pv_);                                              \
			i = p_;                                                      \
		}                                                                    \
		SET(c, i, v);                                                        \
	}                                                                            \
	static inline void name##_down(C c, size_t n, size_t i, V v)                 \
	{                                                                            \
		for (;;) {                                                           \
			size_t l_ = 2 * i + 1;                                       \
			if (l_ >= n)                                                 \
				break;                                               \
			V lv_ = AT(c, l_);                                           \
			if (l_ + 1 < n) {                                            \
				V rv_ = AT(c, l_ + 1);                               \
				if (BEFORE(rv_, lv_)) {                              \
					l_++;                                        \
					lv_ = rv_;                                   \
				}                                                    \
			}                                                            \
			if (!BEFORE(lv_, v))                                         \
				break;                                               \
			SET(c, i, lv_);                                              \
			i = l_;                                                      \
		}                                                                    \
		SET(c, i, v);                                                        \
	}

/* AT and SET of a heap stored as a plain array of its entries. */
#define ANN_HEAP_ARRAY_AT(c, i) ((c)[i])
#define ANN_HEAP_ARRAY_SET(c, i, v) ((c)[i] = (v))

#endif /* ANN_HEAP_H */

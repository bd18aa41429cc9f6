/* SPDX-License-Identifier: MIT */
/*
 * vecio.h: streamed reading and writing of vector files. Formats are chosen by
 * file extension:
 *   .fvecs .bvecs .ivecs        TEXMEX: per vector int32 d, then d elements
 *   .fbin .u8bin .i8bin .ibin   big-ann: int32 n, int32 d, then n*d elements
 *   -idx3-ubyte[.gz]            MNIST/Fashion-MNIST idx (read only; .gz via zlib)
 * Readers never hold more than one bounded chunk of the file; every vector is
 * validated (dimension, truncation, header against file size, NaN/Inf) and a
 * problem is ANN_E_BADINPUT naming the file and the vector index.
 * The big-ann ground-truth layout (int32 n, int32 k, n*k int32 ids, n*k
 * float32 distances) has its own pair of functions. docs/FORMAT.md, "Input
 * files", describes all of them.
 */
#ifndef ANN_VECIO_H
#define ANN_VECIO_H

#include "common.h"

/* Largest dimension a vector file may declare (bounds every per-vector buffer). */
#define ANN_VEC_MAX_DIM (1u << 20)

typedef enum ann_vfmt {
	ANN_VFMT_FVECS,
	ANN_VFMT_BVECS,
	ANN_VFMT_IVECS,
	ANN_VFMT_FBIN,
	ANN_VFMT_U8BIN,
	ANN_VFMT_I8BIN,
	ANN_VFMT_IBIN,
	ANN_VFMT_IDX, /* read only */
} ann_vfmt;

/* Format from the path's extension; ANN_E_INVAL naming the path if unknown. */
int ann_vfmt_from_path(const char *path, ann_vfmt *out, ann_error *err);
/* Element type stored by a format (IDX: U8). */
ann_dtype ann_vfmt_dtype(ann_vfmt fmt);
const char *ann_vfmt_name(ann_vfmt fmt);
size_t ann_dtype_size(ann_dtype t);
/* The most vectors a file of this format can hold (INT32_MAX for the bin
 * formats, whose header count is an int32; UINT64_MAX for *vecs). */
uint64_t ann_vfmt_max_vectors(ann_vfmt fmt);
/* Checks, before anything is written, that n vectors of dimension dim fit
 * the format of path (ANN_E_INVAL naming the limit) and the free space of the
 * file system that will hold path (ANN_E_IO "needs N bytes, M free"). */
int ann_vfile_check_size(const char *path, uint64_t n, uint32_t dim, ann_error *err);

typedef struct ann_vreader ann_vreader;

/* Opens path and validates its header (or, for *vecs, the first vector's
 * dimension and that the file size is a whole number of records). */
int ann_vreader_open(const char *path, ann_vreader **out, ann_error *err);
void ann_vreader_close(ann_vreader *r);
uint64_t ann_vreader_count(const ann_vreader *r); /* vectors in the file */
uint32_t ann_vreader_dim(const ann_vreader *r);
ann_dtype ann_vreader_dtype(const ann_vreader *r);
ann_vfmt ann_vreader_fmt(const ann_vreader *r);
const char *ann_vreader_path(const ann_vreader *r);
uint64_t ann_vreader_pos(const ann_vreader *r); /* index of the next vector */

/* Reads up to max vectors from the current position, converted to float32,
 * into out (max * dim floats). Returns the number read (0 at the end) or a
 * negative status. Float input containing NaN or Inf is ANN_E_BADINPUT naming
 * the vector and the component. */
int64_t ann_vreader_read_f32(ann_vreader *r, float *out, size_t max, ann_error *err);
/* Same, in the file's own element type (max * dim * ann_dtype_size elems). */
int64_t ann_vreader_read_raw(ann_vreader *r, void *out, size_t max, ann_error *err);
/* Repositions to vector index i (0 <= i <= count). */
int ann_vreader_seek(ann_vreader *r, uint64_t i, ann_error *err);

typedef struct ann_vwriter ann_vwriter;

/* Creates path (format from extension) for vectors of dimension dim. Data go
 * to "path.tmp.<pid>" and appear under path only at ann_vwriter_close. */
int ann_vwriter_open(const char *path, uint32_t dim, ann_vwriter **out, ann_error *err);
/* Appends n vectors given as float32, converted to the file's type. For u8/i8
 * files values are rounded to nearest and must lie in range (0..255 or
 * -128..127), else ANN_E_INVAL naming the vector; ivecs/ibin likewise. */
int ann_vwriter_write_f32(ann_vwriter *w, const float *v, size_t n, ann_error *err);
/* Appends n vectors given in the file's own element type. */
int ann_vwriter_write_raw(ann_vwriter *w, const void *v, size_t n, ann_error *err);
/* Patches the header, fsyncs, renames to the final path, fsyncs the directory
 * and frees w (also on failure, after removing the temporary file). A writer
 * holding no vector fails with ANN_E_INVAL and writes nothing: readers
 * refuse such a file, and writer and reader agree on what is valid. */
int ann_vwriter_close(ann_vwriter *w, ann_error *err);
/* Removes the temporary file and frees w. */
void ann_vwriter_abort(ann_vwriter *w);
/* Vectors appended so far. */
uint64_t ann_vwriter_count(const ann_vwriter *w);
/* Notes on the functions above (additions to the contract):
 *  - Readers refuse files holding no vector (empty file, header n = 0) and
 *    dimensions outside 1..ANN_VEC_MAX_DIM; a writer closed after zero vectors
 *    fails and leaves no file (issue 13 D11: it used to write n = 0).
 *  - On a read error the position is unchanged; out may be partly written.
 *  - A write error from the file system makes the writer sticky-failed
 *    (ANN_E_STATE until abort/close); an input error (range, NaN) writes
 *    nothing and leaves the writer usable.
 *  - ann_gt_read also accepts the big-ann layout without distances (8 + n*k*4
 *    bytes; then *dists is NAN) and rejects ids below -1 and NaN distances.
 *  - The bin formats hold at most INT32_MAX vectors. */

/* Big-ann ground truth (also the layout of `annann search --out`). */
int ann_gt_write(const char *path, uint32_t nq, uint32_t k, const int32_t *ids, const float *dists,
		 ann_error *err);
/* Allocates *ids and *dists (nq * k each, free with ann_free); dists may be
 * NULL when the caller wants ids only. Also accepts an .ivecs file of ids
 * (then *dists, if asked, is filled with NAN). */
int ann_gt_read(const char *path, uint32_t *nq, uint32_t *k, int32_t **ids, float **dists, ann_error *err);

#endif /* ANN_VECIO_H */

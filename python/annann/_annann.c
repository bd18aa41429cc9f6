/* SPDX-License-Identifier: MIT */
/*
 * _annann.c: the CPython extension behind the `annann` package. It calls
 * libannann through include/annann.h only; every algorithm, file format and
 * check lives in the library, this file converts arrays and errors.
 *
 * Invariants:
 *  1. The GIL is released around every library call that can take long
 *     (build, search, insert, delete, compact, verify, file I/O), so Python
 *     threads run in parallel. No thread ever blocks on an Index lock while
 *     holding the GIL (the GIL is dropped first), so the two cannot deadlock.
 *  2. Index.lock (a read-write lock) guards the ann_index: searches and
 *     info() hold it shared; close() and the reopen after a write hold it
 *     exclusive. Index.mu guards the searcher pool; Index.wmu the writer.
 *  3. Ctrl-C: long work polls for a pending signal between chunks (build:
 *     the library's cancel callback; search: between batches; file I/O:
 *     between chunks) and stops; the Python exception (KeyboardInterrupt,
 *     or one raised by a progress callback) wins over the library's
 *     ANN_E_CANCELED. A canceled build leaves no directory behind.
 *  4. Memory: a search holds its queries as float32, the n x k results and
 *     n per-query stats; each pooled searcher holds its I/O buffers (16 MiB
 *     by default) and optional cache; at most POOL_MAX searchers are kept.
 *     Streaming an array to a vector file holds one chunk (CHUNK_BYTES).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "annann.h"

#define POOL_MAX 16                      /* searchers kept per Index */
#define MAX_THREADS 64                   /* search threads per call */
#define CHUNK_BYTES ((size_t)8 << 20)    /* array <-> file streaming chunk */
#define DEFAULT_BATCH 1000               /* queries per ann_search call */

static PyObject *AnnError;

/* ---- errors ------------------------------------------------------------- */

static const char *status_name(int code)
{
	switch (code) {
	case ANN_E_INVAL: return "INVAL";
	case ANN_E_NOMEM: return "NOMEM";
	case ANN_E_BUDGET: return "BUDGET";
	case ANN_E_IO: return "IO";
	case ANN_E_CORRUPT: return "CORRUPT";
	case ANN_E_FORMAT: return "FORMAT";
	case ANN_E_BADINPUT: return "BADINPUT";
	case ANN_E_NOTFOUND: return "NOTFOUND";
	case ANN_E_UNSUPPORTED: return "UNSUPPORTED";
	case ANN_E_STATE: return "STATE";
	case ANN_E_EXISTS: return "EXISTS";
	case ANN_E_CANCELED: return "CANCELED";
	default: return "BINDING";
	}
}

/* Raises annann.Error(msg) with .code (ann_status, 0 for the binding's own
 * checks), .status (its name) and .sys_errno. */
static PyObject *raise_code(int code, int sys_errno, const char *msg)
{
	PyObject *exc = PyObject_CallFunction(AnnError, "s", msg);
	if (!exc)
		return NULL;
	PyObject *c = PyLong_FromLong(code), *s = PyUnicode_FromString(status_name(code)),
		 *e = PyLong_FromLong(sys_errno);
	if (c && s && e && PyObject_SetAttrString(exc, "code", c) == 0 &&
	    PyObject_SetAttrString(exc, "status", s) == 0 && PyObject_SetAttrString(exc, "sys_errno", e) == 0)
		PyErr_SetObject(AnnError, exc);
	Py_XDECREF(c);
	Py_XDECREF(s);
	Py_XDECREF(e);
	Py_DECREF(exc);
	return NULL;
}

/* The library's error, unless a Python exception (a signal, a failing
 * progress callback) is already pending: that one explains the stop. */
static PyObject *raise_ann(const ann_error *err)
{
	if (PyErr_Occurred())
		return NULL;
	if (err->code == ANN_E_CANCELED && PyErr_CheckSignals() < 0)
		return NULL;
	return raise_code(err->code, err->sys_errno, err->msg[0] ? err->msg : ann_strerror(err->code));
}

static PyObject *raise_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static PyObject *raise_fmt(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return raise_code(0, 0, msg);
}

/* Polls for a pending signal from a thread that does not hold the GIL.
 * Returns non-zero (with the exception set) to stop. */
static int poll_signals(void)
{
	PyGILState_STATE g = PyGILState_Ensure();
	int stop = PyErr_Occurred() != NULL || PyErr_CheckSignals() < 0;
	PyGILState_Release(g);
	return stop;
}

/* ---- arguments ----------------------------------------------------------- */

/* Converts a path (str, bytes, os.PathLike) to bytes; *out borrows from it. */
static PyObject *path_bytes(PyObject *o, const char **out)
{
	PyObject *b = NULL;
	if (!PyUnicode_FSConverter(o, &b))
		return NULL;
	*out = PyBytes_AS_STRING(b);
	return b;
}

static int is_path(PyObject *o)
{
	return PyUnicode_Check(o) || PyBytes_Check(o) || PyObject_HasAttrString(o, "__fspath__");
}

/* Checks that @p o is a numeric numpy array of 1 (if allowed) or 2 axes. */
static int check_array(PyObject *o, const char *what, int allow_1d)
{
	if (!PyArray_Check(o)) {
		raise_fmt("%s: expected a numpy array, got %s", what, Py_TYPE(o)->tp_name);
		return -1;
	}
	PyArrayObject *a = (PyArrayObject *)o;
	char kind = PyArray_DESCR(a)->kind;
	if (kind != 'f' && kind != 'u' && kind != 'i') {
		raise_fmt("%s: unsupported dtype %c%d (expected float32, uint8 or int8; other floats and integers "
			  "are converted)", what, kind, (int)PyArray_DESCR(a)->elsize);
		return -1;
	}
	int nd = PyArray_NDIM(a);
	if (nd != 2 && !(allow_1d && nd == 1)) {
		raise_fmt("%s: expected %s, got an array of %d axes", what,
			  allow_1d ? "1 axis (one vector) or 2 axes (n x dim)" : "2 axes (n x dim)", nd);
		return -1;
	}
	return 0;
}

/* A C-contiguous float32 view or copy of a checked array. */
static PyArrayObject *as_f32(PyObject *o)
{
	return (PyArrayObject *)PyArray_FROMANY(o, NPY_FLOAT32, 0, 0,
						NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
}

/* ---- vector files -------------------------------------------------------- */

static int npy_of(ann_dtype t)
{
	switch (t) {
	case ANN_DTYPE_F32: return NPY_FLOAT32;
	case ANN_DTYPE_U8: return NPY_UINT8;
	case ANN_DTYPE_I8: return NPY_INT8;
	case ANN_DTYPE_I32: return NPY_INT32;
	default: return -1;
	}
}

static PyObject *py_read_vectors(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *po;
	if (!PyArg_ParseTuple(args, "O:read_vectors", &po))
		return NULL;
	const char *path;
	PyObject *pb = path_bytes(po, &path);
	if (!pb)
		return NULL;
	ann_error err = {0};
	ann_vector_reader *r = NULL;
	PyObject *res = NULL;
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = ann_vector_reader_open(path, &r, &err);
	Py_END_ALLOW_THREADS
	if (rc < 0) {
		raise_ann(&err);
		goto out;
	}
	uint64_t n;
	uint32_t d;
	ann_dtype t;
	ann_vector_reader_shape(r, &n, &d, &t);
	npy_intp dims[2] = {(npy_intp)n, (npy_intp)d};
	int npt = npy_of(t);
	if (npt < 0) {
		raise_fmt("%s: element type %d has no numpy equivalent", path, (int)t);
		goto out;
	}
	res = PyArray_SimpleNew(2, dims, npt);
	if (!res)
		goto out;
	char *data = PyArray_BYTES((PyArrayObject *)res);
	size_t row = (size_t)d * (size_t)PyArray_ITEMSIZE((PyArrayObject *)res);
	size_t chunk = CHUNK_BYTES / row ? CHUNK_BYTES / row : 1;
	for (uint64_t i = 0; i < n;) {
		int64_t got;
		size_t want = (size_t)(n - i < chunk ? n - i : chunk);
		Py_BEGIN_ALLOW_THREADS
		got = ann_vector_reader_read(r, data + i * row, want, &err);
		Py_END_ALLOW_THREADS
		if (got <= 0) {
			if (got == 0)
				raise_fmt("%s: ended after %llu of %llu vectors", path, (unsigned long long)i,
					  (unsigned long long)n);
			else
				raise_ann(&err);
			Py_CLEAR(res);
			goto out;
		}
		i += (uint64_t)got;
		if (PyErr_CheckSignals() < 0) {
			Py_CLEAR(res);
			goto out;
		}
	}
out:
	Py_BEGIN_ALLOW_THREADS
	ann_vector_reader_close(r);
	Py_END_ALLOW_THREADS
	Py_DECREF(pb);
	return res;
}

/* Streams the rows of a checked 2-D array into an open writer whose file
 * stores @p ft, one chunk at a time: rows already of the file's type and
 * contiguous go straight from the array's memory; other rows are converted
 * chunk by chunk (to int32 with a range check for id files, else to
 * float32, which the library rounds and range-checks for integer files). */
static int stream_rows(PyArrayObject *a, ann_vector_writer *w, ann_dtype ft, const char *path)
{
	npy_intp n = PyArray_DIM(a, 0), d = PyArray_DIM(a, 1);
	int ft_npy = npy_of(ft);
	int direct = PyArray_TYPE(a) == ft_npy && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISALIGNED(a) &&
		     PyArray_ISNOTSWAPPED(a);
	size_t row = (size_t)d * 8;
	npy_intp chunk = (npy_intp)(CHUNK_BYTES / row ? CHUNK_BYTES / row : 1);
	ann_error err = {0};
	for (npy_intp i = 0; i < n; i += chunk) {
		npy_intp m = n - i < chunk ? n - i : chunk;
		int rc;
		if (direct) {
			const char *p = PyArray_BYTES(a) + (size_t)i * (size_t)PyArray_STRIDE(a, 0);
			Py_BEGIN_ALLOW_THREADS
			rc = ann_vector_writer_write(w, p, (size_t)m, &err);
			Py_END_ALLOW_THREADS
		} else {
			PyObject *slice = PySequence_GetSlice((PyObject *)a, i, i + m);
			if (!slice)
				return -1;
			PyArrayObject *c;
			if (ft == ANN_DTYPE_I32 && PyArray_DESCR(a)->kind != 'f') {
				c = (PyArrayObject *)PyArray_FROMANY(slice, NPY_INT64, 0, 0,
								     NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED |
									     NPY_ARRAY_FORCECAST);
				Py_DECREF(slice);
				if (!c)
					return -1;
				const int64_t *v = PyArray_DATA(c);
				size_t cnt = (size_t)m * (size_t)d;
				int32_t *buf = PyMem_Malloc(cnt ? cnt * sizeof(int32_t) : 1);
				if (!buf) {
					Py_DECREF(c);
					PyErr_NoMemory();
					return -1;
				}
				for (size_t j = 0; j < cnt; j++) {
					if (v[j] < INT32_MIN || v[j] > INT32_MAX) {
						raise_fmt("%s: vector %lld, component %lld: %lld does not fit int32", path,
							  (long long)(i + (npy_intp)(j / (size_t)d)),
							  (long long)(j % (size_t)d), (long long)v[j]);
						PyMem_Free(buf);
						Py_DECREF(c);
						return -1;
					}
					buf[j] = (int32_t)v[j];
				}
				Py_BEGIN_ALLOW_THREADS
				rc = ann_vector_writer_write(w, buf, (size_t)m, &err);
				Py_END_ALLOW_THREADS
				PyMem_Free(buf);
			} else {
				c = as_f32(slice);
				Py_DECREF(slice);
				if (!c)
					return -1;
				const float *v = PyArray_DATA(c);
				Py_BEGIN_ALLOW_THREADS
				rc = ann_vector_writer_write_f32(w, v, (size_t)m, &err);
				Py_END_ALLOW_THREADS
			}
			Py_DECREF(c);
		}
		if (rc < 0) {
			/* The library counts vectors from the start of this call. */
			if (i > 0) {
				char m2[sizeof err.msg];
				memcpy(m2, err.msg, sizeof m2);
				snprintf(err.msg, sizeof err.msg, "%.400s (vectors counted from row %lld)", m2,
					 (long long)i);
			}
			raise_ann(&err);
			return -1;
		}
		if (PyErr_CheckSignals() < 0)
			return -1;
	}
	return 0;
}

/* Writes a checked 2-D array to @p path (format from the extension),
 * through a temporary file renamed at the end. */
static int write_array(PyArrayObject *a, const char *path)
{
	ann_error err = {0};
	ann_dtype ft;
	if (ann_vector_path_dtype(path, &ft, &err) < 0) {
		raise_ann(&err);
		return -1;
	}
	npy_intp d = PyArray_DIM(a, 1);
	if (PyArray_DIM(a, 0) == 0 || d == 0) {
		raise_fmt("%s: the array has shape (%lld, %lld); a vector file holds at least one vector of "
			  "dimension >= 1", path, (long long)PyArray_DIM(a, 0), (long long)d);
		return -1;
	}
	if (d > INT32_MAX) {
		raise_fmt("%s: dimension %lld is too large", path, (long long)d);
		return -1;
	}
	ann_vector_writer *w = NULL;
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = ann_vector_writer_open(path, (uint32_t)d, &w, &err);
	Py_END_ALLOW_THREADS
	if (rc < 0) {
		raise_ann(&err);
		return -1;
	}
	if (stream_rows(a, w, ft, path) < 0) {
		ann_vector_writer_abort(w);
		return -1;
	}
	Py_BEGIN_ALLOW_THREADS
	rc = ann_vector_writer_commit(w, &err);
	Py_END_ALLOW_THREADS
	if (rc < 0) {
		raise_ann(&err);
		return -1;
	}
	return 0;
}

static PyObject *py_write_vectors(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *po, *ao;
	if (!PyArg_ParseTuple(args, "OO:write_vectors", &po, &ao))
		return NULL;
	if (check_array(ao, "write_vectors", 0) < 0)
		return NULL;
	const char *path;
	PyObject *pb = path_bytes(po, &path);
	if (!pb)
		return NULL;
	int rc = write_array((PyArrayObject *)ao, path);
	Py_DECREF(pb);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
}

/* ---- ground truth --------------------------------------------------------- */

static int metric_from(PyObject *o, ann_metric *m)
{
	const char *s = PyUnicode_AsUTF8(o);
	if (!s)
		return -1;
	for (int i = ANN_METRIC_L2; i <= ANN_METRIC_COSINE; i++)
		if (strcmp(s, ann_metric_name((ann_metric)i)) == 0) {
			*m = (ann_metric)i;
			return 0;
		}
	raise_fmt("metric: unknown '%s' (expected l2, ip or cosine)", s);
	return -1;
}

static PyObject *gt_result(int32_t *ids, float *dists, npy_intp nq, npy_intp k)
{
	npy_intp dims[2] = {nq, k};
	PyObject *ia = PyArray_SimpleNew(2, dims, NPY_INT64), *da = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
	if (!ia || !da) {
		Py_XDECREF(ia);
		Py_XDECREF(da);
		return NULL;
	}
	int64_t *io = PyArray_DATA((PyArrayObject *)ia);
	for (npy_intp i = 0; i < nq * k; i++)
		io[i] = ids[i];
	if (nq * k > 0)
		memcpy(PyArray_DATA((PyArrayObject *)da), dists, (size_t)(nq * k) * sizeof(float));
	return Py_BuildValue("(NN)", ia, da);
}

static PyObject *py_tune(PyObject *self, PyObject *args, PyObject *kw)
{
	(void)self;
	static char *kwl[] = {"index_dir", "queries", "gt", "k", "p1", NULL};
	PyObject *po, *qo, *go;
	unsigned int k = 10, p1 = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$II:tune", kwl, &po, &qo, &go, &k, &p1))
		return NULL;
	const char *path;
	PyObject *pb = path_bytes(po, &path);
	if (!pb)
		return NULL;
	PyObject *res = NULL;
	PyArrayObject *q = NULL, *g = NULL;
	if (check_array(qo, "queries", 0) < 0 || !(q = as_f32(qo)))
		goto out;
	g = (PyArrayObject *)PyArray_FROMANY(go, NPY_INT32, 2, 2, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
	if (!g)
		goto out;
	if (PyArray_DIM(g, 0) < PyArray_DIM(q, 0)) {
		raise_fmt("tune: ground truth for %lld queries, %lld given", (long long)PyArray_DIM(g, 0),
			  (long long)PyArray_DIM(q, 0));
		goto out;
	}
	ann_tune_opts o = {.k = k, .p1 = p1};
	ann_tune_report r;
	ann_error err = {0};
	int rc;
	const float *qd = PyArray_DATA(q);
	const int32_t *gd = PyArray_DATA(g);
	size_t nq = (size_t)PyArray_DIM(q, 0);
	uint32_t gk = (uint32_t)PyArray_DIM(g, 1);
	Py_BEGIN_ALLOW_THREADS
	rc = ann_tune_probe(path, qd, nq, (size_t)PyArray_DIM(q, 1), gd, gk, &o, &r, &err);
	Py_END_ALLOW_THREADS
	if (rc < 0) {
		raise_ann(&err);
		goto out;
	}
	PyObject *rows = PyList_New(r.rows);
	for (uint32_t i = 0; rows && i < r.rows; i++) {
		PyObject *d = Py_BuildValue("{s:I,s:d,s:d,s:d}", "nprobe", r.budget[i], "recall_fixed",
					    r.recall_fixed[i], "recall_adaptive", r.recall_adaptive[i], "probed_adaptive",
					    r.probed_adaptive[i]);
		if (!d) {
			Py_CLEAR(rows);
			break;
		}
		PyList_SET_ITEM(rows, i, d);
	}
	if (rows)
		res = Py_BuildValue("{s:I,s:I,s:d,s:N,s:d}", "p1", r.p1, "queries", r.queries, "r2", r.r2, "rows", rows,
				    "rerank_eps", (double)r.rerank_eps);
out:
	Py_XDECREF(q);
	Py_XDECREF(g);
	Py_DECREF(pb);
	return res;
}

static PyObject *py_ground_truth(PyObject *self, PyObject *args, PyObject *kw)
{
	(void)self;
	static char *kwl[] = {"base", "queries", "k", "metric", "threads", "mem", NULL};
	PyObject *bo, *qo, *mo = NULL;
	unsigned int k = 100;
	int threads = 2;
	unsigned long long mem = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|I$OiK:ground_truth", kwl, &bo, &qo, &k, &mo, &threads, &mem))
		return NULL;
	ann_ground_truth_opts o;
	ann_ground_truth_opts_init(&o);
	if (k < 1)
		return raise_fmt("ground_truth: k must be >= 1");
	o.k = k;
	o.threads = threads > 0 ? threads : 1;
	if (mem)
		o.mem_bytes = (size_t)mem;
	if (mo && metric_from(mo, &o.metric) < 0)
		return NULL;
	ann_error err = {0};
	int rc;
	if (is_path(bo) && is_path(qo)) {
		const char *bp, *qp;
		PyObject *bb = path_bytes(bo, &bp);
		if (!bb)
			return NULL;
		PyObject *qb = path_bytes(qo, &qp);
		if (!qb) {
			Py_DECREF(bb);
			return NULL;
		}
		uint32_t nq = 0;
		int32_t *ids = NULL;
		float *dists = NULL;
		Py_BEGIN_ALLOW_THREADS
		rc = ann_ground_truth(bp, qp, &o, &nq, &ids, &dists, &err);
		Py_END_ALLOW_THREADS
		Py_DECREF(bb);
		Py_DECREF(qb);
		PyObject *res = rc < 0 ? raise_ann(&err) : gt_result(ids, dists, nq, k);
		ann_buffer_free(ids);
		ann_buffer_free(dists);
		return res;
	}
	if (is_path(bo) || is_path(qo))
		return raise_fmt("ground_truth: give base and queries both as paths or both as arrays");
	if (check_array(bo, "ground_truth base", 0) < 0 || check_array(qo, "ground_truth queries", 1) < 0)
		return NULL;
	PyArrayObject *b = as_f32(bo), *q = b ? as_f32(qo) : NULL;
	if (!b || !q) {
		Py_XDECREF(b);
		return NULL;
	}
	npy_intp n = PyArray_DIM(b, 0), d = PyArray_DIM(b, 1);
	npy_intp nq = PyArray_NDIM(q) == 1 ? 1 : PyArray_DIM(q, 0);
	npy_intp qd = PyArray_DIM(q, PyArray_NDIM(q) - 1);
	PyObject *res = NULL;
	if (qd != d) {
		raise_fmt("ground_truth: queries have dimension %lld, the base %lld", (long long)qd, (long long)d);
		goto out;
	}
	size_t cells = nq * (npy_intp)k > 0 ? (size_t)(nq * (npy_intp)k) : 1;
	int32_t *ids = PyMem_Malloc(cells * sizeof(int32_t));
	float *dists = PyMem_Malloc(cells * sizeof(float));
	if (!ids || !dists) {
		PyMem_Free(ids);
		PyMem_Free(dists);
		PyErr_NoMemory();
		goto out;
	}
	Py_BEGIN_ALLOW_THREADS
	rc = ann_ground_truth_mem(PyArray_DATA(b), (size_t)n, PyArray_DATA(q), (size_t)nq, (size_t)d, &o, ids, dists,
				  &err);
	Py_END_ALLOW_THREADS
	res = rc < 0 ? raise_ann(&err) : gt_result(ids, dists, nq, k);
	PyMem_Free(ids);
	PyMem_Free(dists);
out:
	Py_DECREF(b);
	Py_DECREF(q);
	return res;
}

static PyObject *py_read_ground_truth(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *po;
	if (!PyArg_ParseTuple(args, "O:read_ground_truth", &po))
		return NULL;
	const char *path;
	PyObject *pb = path_bytes(po, &path);
	if (!pb)
		return NULL;
	uint32_t nq = 0, k = 0;
	int32_t *ids = NULL;
	float *dists = NULL;
	ann_error err = {0};
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = ann_ground_truth_read(path, &nq, &k, &ids, &dists, &err);
	Py_END_ALLOW_THREADS
	Py_DECREF(pb);
	PyObject *res = rc < 0 ? raise_ann(&err) : gt_result(ids, dists, nq, k);
	ann_buffer_free(ids);
	ann_buffer_free(dists);
	return res;
}

/* ---- build --------------------------------------------------------------- */

typedef struct build_ctx {
	PyObject *progress; /* callable(phase, done, total) or NULL */
} build_ctx;

static void build_progress(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
	build_ctx *b = ctx;
	PyGILState_STATE g = PyGILState_Ensure();
	if (!PyErr_Occurred()) {
		PyObject *r = PyObject_CallFunction(b->progress, "sKK", phase, (unsigned long long)done,
						    (unsigned long long)total);
		Py_XDECREF(r); /* an exception stays set: build_cancel stops the build */
	}
	PyGILState_Release(g);
}

static int build_cancel(void *ctx)
{
	(void)ctx;
	return poll_signals();
}

static int opt_u32(PyObject *v, const char *key, uint32_t *out)
{
	unsigned long x = PyLong_AsUnsignedLong(v);
	if (PyErr_Occurred() || x > UINT32_MAX) {
		PyErr_Clear();
		raise_fmt("build option %s: expected an integer in 0..4294967295", key);
		return -1;
	}
	*out = (uint32_t)x;
	return 0;
}

static int opt_double(PyObject *v, const char *key, double *out)
{
	double x = PyFloat_AsDouble(v);
	if (PyErr_Occurred()) {
		PyErr_Clear();
		raise_fmt("build option %s: expected a number", key);
		return -1;
	}
	*out = x;
	return 0;
}

static int opt_name(PyObject *v, const char *key, const char *(*name)(int), int lo, int hi, int *out)
{
	const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
	if (!s) {
		PyErr_Clear();
		raise_fmt("build option %s: expected a string", key);
		return -1;
	}
	for (int i = lo; i <= hi; i++)
		if (strcmp(s, name(i)) == 0) {
			*out = i;
			return 0;
		}
	char names[256] = "";
	for (int i = lo; i <= hi; i++) {
		strncat(names, name(i), sizeof names - strlen(names) - 3);
		if (i < hi)
			strncat(names, ", ", sizeof names - strlen(names) - 1);
	}
	raise_fmt("build option %s: unknown '%s' (expected one of %s)", key, s, names);
	return -1;
}

static const char *router_name_i(int i) { return ann_router_name((ann_router_kind)i); }
static const char *encoding_name_i(int i) { return ann_encoding_name((ann_encoding)i); }
static const char *metric_name_i(int i) { return ann_metric_name((ann_metric)i); }
static const char *store_name_i(int i) { return i == ANN_STORE_LMDB ? "lmdb" : "file"; }

/* Applies one option of the Python build() call to ann_build_opts. */
static int apply_opt(ann_build_opts *o, const char *key, PyObject *v)
{
	int e;
	uint32_t u;
	double x;
#define U32(name, field)                                                 \
	if (strcmp(key, name) == 0) {                                    \
		if (opt_u32(v, key, &u) < 0)                             \
			return -1;                                       \
		o->field = u;                                            \
		return 0;                                                \
	}
#define DBL(name, field)                                                 \
	if (strcmp(key, name) == 0) {                                    \
		if (opt_double(v, key, &x) < 0)                          \
			return -1;                                       \
		o->field = x;                                            \
		return 0;                                                \
	}
	U32("partitions", partitions)
	U32("zstd_level", zstd_level)
	U32("threads", threads)
	U32("replicas", replicas)
	/* the routers' own parameters (ann_build_opts.kmeans, .annann, .nlsh):
	 * one keyword each; the k-means settings go to both routers that run
	 * k-means and an HNSW graph, as the tool's options do */
	U32("kmeans_iters", kmeans.kmeans_iters = o->annann.kmeans_iters)
	U32("hnsw_m", kmeans.hnsw_m = o->annann.hnsw_m)
	U32("hnsw_ef_construction", kmeans.hnsw_ef_construction = o->annann.hnsw_ef_construction)
	U32("embed_dim", annann.embed_dim)
	U32("ae_epochs", annann.ae_epochs)
	U32("dec_epochs", annann.dec_epochs)
	U32("knn_k", nlsh.knn_k)
	U32("nlsh_epochs", nlsh.nlsh_epochs)
	U32("joint_rounds", nlsh.joint_rounds)
	DBL("balance", kmeans.balance = o->annann.balance)
	U32("code_bits", code_bits)            /* 0: format 1 blocks; absent: auto (ann_build_opts_init) */
	U32("router_bits", kmeans.router_bits) /* 0: the centroid graph; absent: auto */
	U32("code_factors", code_factors)      /* 16 (default) or 32 */
	U32("code_order", code_order)          /* 1 (default) page-local rows, 0 id order */
	U32("page_fit", page_fit)              /* 1 (default) page-fitted heads, 0 off */
	DBL("replica_eps", replica_eps)
	DBL("soar_lambda", kmeans.soar_lambda)
	DBL("dec_alpha", annann.dec_alpha)
	DBL("recon_weight", annann.recon_weight)
	DBL("imbalance", nlsh.imbalance)
	DBL("joint_lambda", nlsh.joint_lambda)
	DBL("nlsh_augment", nlsh.nlsh_augment)
#undef U32
#undef DBL
	if (strcmp(key, "directions") == 0) { /* None / "auto": -1; 0..16 */
		const char *t = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
		if (v == Py_None || (t && strcmp(t, "auto") == 0)) {
			o->directions = -1;
			return 0;
		}
		long n = PyLong_Check(v) && !PyBool_Check(v) ? PyLong_AsLong(v) : -1;
		if (n < 0 || n > 16) {
			PyErr_Clear();
			raise_fmt("build option directions: expected None, \"auto\" or an integer 0..16");
			return -1;
		}
		o->directions = (int)n;
		return 0;
	}
	if (strcmp(key, "tune") == 0) { /* None / "auto": -1, True / "on": 1, False / "off": 0 */
		const char *t = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
		if (v == Py_None || (t && strcmp(t, "auto") == 0))
			o->tune = -1;
		else if (v == Py_True || (t && strcmp(t, "on") == 0))
			o->tune = 1;
		else if (v == Py_False || (t && strcmp(t, "off") == 0))
			o->tune = 0;
		else {
			PyErr_Clear();
			raise_fmt("build option tune: expected None, True, False, \"auto\", \"on\" or \"off\"");
			return -1;
		}
		return 0;
	}
	if (strcmp(key, "seed") == 0 || strcmp(key, "sample") == 0 || strcmp(key, "mem_bytes") == 0) {
		unsigned long long z = PyLong_AsUnsignedLongLong(v);
		if (PyErr_Occurred()) {
			PyErr_Clear();
			raise_fmt("build option %s: expected a non-negative integer", key);
			return -1;
		}
		if (key[0] == 's' && key[1] == 'e')
			o->seed = z;
		else if (key[0] == 's')
			o->sample = z;
		else
			o->mem_bytes = (size_t)z;
		return 0;
	}
	if (strcmp(key, "shuffle") == 0 || strcmp(key, "dictionary") == 0 || strcmp(key, "soft_labels") == 0) {
		int t = v == Py_None ? -1 : PyObject_IsTrue(v);
		if (t < 0 && v != Py_None)
			return -1;
		if (key[0] == 'd')
			o->dictionary = t > 0;
		else if (key[1] == 'o')
			o->nlsh.soft_labels = t > 0;
		else
			o->shuffle = t;
		return 0;
	}
	if (strcmp(key, "router") == 0) {
		if (opt_name(v, key, router_name_i, ANN_ROUTER_KMEANS, ANN_ROUTER_SOFT, &e) < 0)
			return -1;
		o->router = (ann_router_kind)e;
		return 0;
	}
	if (strcmp(key, "store") == 0) {
		if (opt_name(v, key, store_name_i, ANN_STORE_FILE, ANN_STORE_LMDB, &e) < 0)
			return -1;
		o->store = (ann_store_kind)e;
		return 0;
	}
	if (strcmp(key, "encoding") == 0) {
		if (opt_name(v, key, encoding_name_i, ANN_ENC_AUTO, ANN_ENC_SQ8, &e) < 0)
			return -1;
		o->encoding = (ann_encoding)e;
		return 0;
	}
	if (strcmp(key, "metric") == 0) {
		if (opt_name(v, key, metric_name_i, ANN_METRIC_L2, ANN_METRIC_COSINE, &e) < 0)
			return -1;
		o->metric = (ann_metric)e;
		return 0;
	}
	if (strcmp(key, "hidden") == 0) {
		PyObject *seq = PySequence_Fast(v, "build option hidden: expected a sequence of layer sizes");
		if (!seq)
			return -1;
		Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
		if (m < 1 || m > 3) {
			Py_DECREF(seq);
			raise_fmt("build option hidden: 1 to 3 layer sizes");
			return -1;
		}
		memset(o->annann.hidden, 0, sizeof o->annann.hidden);
		memset(o->nlsh.hidden, 0, sizeof o->nlsh.hidden);
		for (Py_ssize_t i = 0; i < m; i++) {
			if (opt_u32(PySequence_Fast_GET_ITEM(seq, i), key, &o->annann.hidden[i]) < 0) {
				Py_DECREF(seq);
				return -1;
			}
			o->nlsh.hidden[i] = o->annann.hidden[i]; /* the annann encoder's or the classifier's layers */
		}
		Py_DECREF(seq);
		return 0;
	}
	raise_fmt("build: unknown option '%s'", key);
	return -1;
}

/* _build(data, index_dir, options, progress): data is a path or a checked
 * 2-D array; an array is streamed to "index_dir.input.<pid>.<ext>" beside
 * the index (one chunk in memory at a time), built from and removed. */
static PyObject *py_build(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *data, *dir_o, *opts, *progress;
	if (!PyArg_ParseTuple(args, "OOO!O:_build", &data, &dir_o, &PyDict_Type, &opts, &progress))
		return NULL;
	ann_build_opts o;
	ann_build_opts_init(&o);
	PyObject *key, *val;
	Py_ssize_t pos = 0;
	while (PyDict_Next(opts, &pos, &key, &val)) {
		const char *k = PyUnicode_AsUTF8(key);
		if (!k || apply_opt(&o, k, val) < 0)
			return NULL;
	}
	const char *dir;
	PyObject *db = path_bytes(dir_o, &dir);
	if (!db)
		return NULL;
	PyObject *res = NULL, *pb = NULL;
	char *tmp = NULL;
	const char *data_path;
	if (is_path(data)) {
		pb = path_bytes(data, &data_path);
		if (!pb)
			goto out;
	} else {
		if (check_array(data, "build data", 0) < 0)
			goto out;
		PyArrayObject *a = (PyArrayObject *)data;
		int t = PyArray_TYPE(a);
		const char *ext = t == NPY_UINT8 ? "u8bin" : t == NPY_INT8 ? "i8bin" : "fbin";
		size_t len = strlen(dir) + 64;
		tmp = PyMem_Malloc(len);
		if (!tmp) {
			PyErr_NoMemory();
			goto out;
		}
		snprintf(tmp, len, "%s.input.%ld.%s", dir, (long)getpid(), ext);
		if (access(dir, F_OK) == 0) {
			raise_code(ANN_E_EXISTS, 0, "build: the index directory already exists");
			PyMem_Free(tmp);
			tmp = NULL;
			goto out;
		}
		if (write_array(a, tmp) < 0) {
			PyMem_Free(tmp);
			tmp = NULL;
			goto out;
		}
		data_path = tmp;
	}
	build_ctx bc = {progress != Py_None ? progress : NULL};
	if (bc.progress) {
		o.progress = build_progress;
		o.progress_ctx = &bc;
	}
	o.cancel = build_cancel;
	ann_error err = {0};
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = ann_build(data_path, dir, &o, &err);
	Py_END_ALLOW_THREADS
	if (rc < 0)
		raise_ann(&err);
	else if (PyErr_Occurred())
		; /* a progress callback failed at the very end: the index exists */
	else
		res = Py_NewRef(Py_None);
out:
	if (tmp) {
		unlink(tmp);
		PyMem_Free(tmp);
	}
	Py_XDECREF(pb);
	Py_DECREF(db);
	return res;
}

/* ---- Index ----------------------------------------------------------------- */

typedef struct pooled {
	ann_search_opts o;
	ann_searcher *s;
} pooled;

typedef struct IndexObject {
	PyObject_HEAD
	pthread_rwlock_t lock; /* the ann_index: shared for searches, exclusive to replace it */
	pthread_mutex_t mu;    /* the pool */
	pthread_mutex_t wmu;   /* the writer */
	ann_index *idx;        /* NULL once closed */
	ann_writer *w;         /* opened by the first write */
	atomic_int stale;      /* a write happened: reopen before reading */
	atomic_int closed;     /* close() was called */
	char *path;
	uint32_t dim;
	int threads;
	size_t cache;
	pooled pool[POOL_MAX];
	int npool;
	PyObject *last_stats;
} IndexObject;

static PyTypeObject IndexType;

static void pool_clear(IndexObject *x)
{
	for (int i = 0; i < x->npool; i++)
		ann_searcher_free(x->pool[i].s);
	x->npool = 0;
}

static int same_opts(const ann_search_opts *a, const ann_search_opts *b)
{
	return a->k == b->k && a->nprobe == b->nprobe && a->candidates_factor == b->candidates_factor &&
	       a->hnsw_ef == b->hnsw_ef && a->cache_bytes == b->cache_bytes && a->queue_depth == b->queue_depth &&
	       a->io_buffer_bytes == b->io_buffer_bytes && a->force_pread == b->force_pread &&
	       a->rerank == b->rerank && a->rerank_eps == b->rerank_eps && a->rerank_phases == b->rerank_phases &&
	       a->probe_eps == b->probe_eps && a->adaptive == b->adaptive && a->spread_weight == b->spread_weight &&
	       a->io_poll_us == b->io_poll_us && a->direction_weight == b->direction_weight;
}

/* Takes a searcher with options @p o from the pool or makes one. The
 * caller holds x->lock shared and not the GIL. */
static int pool_get(IndexObject *x, const ann_search_opts *o, ann_searcher **out, ann_error *err)
{
	pthread_mutex_lock(&x->mu);
	for (int i = x->npool - 1; i >= 0; i--)
		if (same_opts(&x->pool[i].o, o)) {
			*out = x->pool[i].s;
			x->pool[i] = x->pool[--x->npool];
			pthread_mutex_unlock(&x->mu);
			return ANN_OK;
		}
	pthread_mutex_unlock(&x->mu);
	return ann_searcher_new(x->idx, o, out, err);
}

static void pool_put(IndexObject *x, const ann_search_opts *o, ann_searcher *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&x->mu);
	if (x->npool == POOL_MAX) { /* drop the oldest */
		ann_searcher_free(x->pool[0].s);
		memmove(x->pool, x->pool + 1, (POOL_MAX - 1) * sizeof x->pool[0]);
		x->npool--;
	}
	x->pool[x->npool].o = *o;
	x->pool[x->npool].s = s;
	x->npool++;
	pthread_mutex_unlock(&x->mu);
}

/* Reopens the reader after a write (its partition directory, router and
 * live count are those of the moment it was opened). Called without the
 * GIL. */
static int refresh(IndexObject *x, ann_error *err)
{
	if (!atomic_load(&x->stale))
		return ANN_OK;
	pthread_rwlock_wrlock(&x->lock);
	int rc = ANN_OK;
	if (x->idx && atomic_exchange(&x->stale, 0)) {
		pthread_mutex_lock(&x->mu);
		pool_clear(x);
		pthread_mutex_unlock(&x->mu);
		ann_index *n = NULL;
		rc = ann_index_open(x->path, &n, err);
		if (rc >= 0) {
			ann_index_close(x->idx);
			x->idx = n;
		} else {
			atomic_store(&x->stale, 1);
		}
	}
	pthread_rwlock_unlock(&x->lock);
	return rc;
}

static PyObject *closed_error(void)
{
	return raise_code(ANN_E_STATE, 0, "the index is closed");
}

static PyObject *py_open(PyObject *self, PyObject *args, PyObject *kw)
{
	(void)self;
	static char *kwl[] = {"path", "cache", "threads", NULL};
	PyObject *po, *to = Py_None;
	unsigned long long cache = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$KO:open", kwl, &po, &cache, &to))
		return NULL;
	int threads = 1;
	if (to != Py_None) {
		long t = PyLong_AsLong(to);
		if (PyErr_Occurred())
			return NULL;
		if (t < 1 || t > MAX_THREADS)
			return raise_fmt("open: threads must be within 1..%d", MAX_THREADS);
		threads = (int)t;
	}
	const char *path;
	PyObject *pb = path_bytes(po, &path);
	if (!pb)
		return NULL;
	ann_error err = {0};
	ann_index *idx = NULL;
	ann_index_info info;
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = ann_index_open(path, &idx, &err);
	if (rc >= 0)
		rc = ann_index_get_info(idx, &info, &err);
	Py_END_ALLOW_THREADS
	if (rc < 0) {
		ann_index_close(idx);
		Py_DECREF(pb);
		return raise_ann(&err);
	}
	IndexObject *x = PyObject_New(IndexObject, &IndexType);
	char *p = x ? PyMem_RawMalloc(strlen(path) + 1) : NULL;
	if (!x || !p) {
		ann_index_close(idx);
		Py_DECREF(pb);
		if (x) {
			x->idx = NULL;
			x->path = NULL;
			x->npool = 0;
			x->w = NULL;
			x->last_stats = NULL;
			Py_DECREF(x);
		}
		return PyErr_NoMemory();
	}
	strcpy(p, path);
	Py_DECREF(pb);
	pthread_rwlock_init(&x->lock, NULL);
	pthread_mutex_init(&x->mu, NULL);
	pthread_mutex_init(&x->wmu, NULL);
	x->idx = idx;
	x->w = NULL;
	atomic_init(&x->stale, 0);
	atomic_init(&x->closed, 0);
	x->path = p;
	x->dim = info.dim;
	x->threads = threads;
	x->cache = (size_t)cache;
	x->npool = 0;
	x->last_stats = Py_NewRef(Py_None);
	return (PyObject *)x;
}

/* Closes everything; waits for searches in flight. Called without the GIL. */
static void index_close_nogil(IndexObject *x)
{
	pthread_rwlock_wrlock(&x->lock);
	pthread_mutex_lock(&x->mu);
	pool_clear(x);
	pthread_mutex_unlock(&x->mu);
	ann_index_close(x->idx);
	x->idx = NULL;
	atomic_store(&x->closed, 1);
	pthread_rwlock_unlock(&x->lock);
	pthread_mutex_lock(&x->wmu);
	ann_writer_close(x->w);
	x->w = NULL;
	pthread_mutex_unlock(&x->wmu);
}

static PyObject *Index_close(IndexObject *x, PyObject *unused)
{
	(void)unused;
	Py_BEGIN_ALLOW_THREADS
	index_close_nogil(x);
	Py_END_ALLOW_THREADS
	Py_RETURN_NONE;
}

static void Index_dealloc(IndexObject *x)
{
	if (x->path) {
		Py_BEGIN_ALLOW_THREADS
		index_close_nogil(x);
		Py_END_ALLOW_THREADS
		pthread_rwlock_destroy(&x->lock);
		pthread_mutex_destroy(&x->mu);
		pthread_mutex_destroy(&x->wmu);
		PyMem_RawFree(x->path);
	}
	Py_XDECREF(x->last_stats);
	PyObject_Free(x);
}

static PyObject *Index_enter(IndexObject *x, PyObject *unused)
{
	(void)unused;
	return Py_NewRef((PyObject *)x);
}

static PyObject *Index_exit(IndexObject *x, PyObject *args)
{
	(void)args;
	return Index_close(x, NULL);
}

/* -- search -- */

typedef struct search_run {
	IndexObject *x;
	const ann_search_opts *o;
	const float *q;
	size_t nq, dim, batch;
	int64_t *ids;
	float *dists;
	ann_query_stats *st;
	atomic_size_t next;  /* batch cursor */
	atomic_int stop;     /* a signal or an error: take no new batch */
	pthread_mutex_t mu;  /* guards done_threads, err */
	pthread_cond_t cv;
	int done_threads;
	int rc;
	ann_error err;
} search_run;

static void run_fail(search_run *r, int rc, const ann_error *err)
{
	pthread_mutex_lock(&r->mu);
	if (r->rc >= 0) {
		r->rc = rc;
		r->err = *err;
	}
	pthread_mutex_unlock(&r->mu);
	atomic_store(&r->stop, 1);
}

/* Searches batches until none is left or the run stops. @p poll: also
 * check for signals between batches (the calling thread). */
static void run_batches(search_run *r, int poll)
{
	ann_error err = {0};
	ann_searcher *s = NULL;
	int rc = pool_get(r->x, r->o, &s, &err);
	if (rc < 0) {
		run_fail(r, rc, &err);
		return;
	}
	while (!atomic_load(&r->stop)) {
		size_t b0 = atomic_fetch_add(&r->next, r->batch);
		if (b0 >= r->nq)
			break;
		size_t nb = r->nq - b0 < r->batch ? r->nq - b0 : r->batch;
		rc = ann_search(s, r->q + b0 * r->dim, nb, r->ids + b0 * r->o->k, r->dists + b0 * r->o->k,
				r->st + b0, &err);
		if (rc < 0) {
			run_fail(r, rc, &err);
			break;
		}
		if (poll && b0 + nb < r->nq && poll_signals())
			atomic_store(&r->stop, 1);
	}
	pool_put(r->x, r->o, s);
}

static void *search_thread(void *arg)
{
	search_run *r = arg;
	run_batches(r, 0);
	pthread_mutex_lock(&r->mu);
	r->done_threads++;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

/* Runs the search with @p threads threads; the caller (without the GIL)
 * polls for signals meanwhile. */
static void run_search(search_run *r, int threads)
{
	if (threads <= 1 || r->nq <= r->batch) {
		run_batches(r, 1);
		return;
	}
	pthread_t tid[MAX_THREADS];
	int started = 0;
	for (int t = 0; t < threads; t++) {
		if (pthread_create(&tid[t], NULL, search_thread, r) != 0)
			break;
		started++;
	}
	if (started == 0) {
		run_batches(r, 1);
		return;
	}
	pthread_mutex_lock(&r->mu);
	while (r->done_threads < started) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT) {
			pthread_mutex_unlock(&r->mu);
			if (!atomic_load(&r->stop) && poll_signals())
				atomic_store(&r->stop, 1);
			pthread_mutex_lock(&r->mu);
		}
	}
	pthread_mutex_unlock(&r->mu);
	for (int t = 0; t < started; t++)
		pthread_join(tid[t], NULL);
}

/* Every field of ann_query_stats, as last_stats' arrays. */
#define STAT(name, type) {#name, type, offsetof(ann_query_stats, name)}
static const struct {
	const char *name;
	int type; /* NPY_UINT32, NPY_UINT64 or NPY_FLOAT64, the field's C type */
	size_t off;
} stat_fields[] = {
	STAT(partitions, NPY_UINT32),     STAT(candidates, NPY_UINT64),     STAT(bytes_read, NPY_FLOAT64),
	STAT(io_requests, NPY_FLOAT64),   STAT(latency_ns, NPY_UINT64),     STAT(route_ns, NPY_UINT64),
	STAT(io_wait_ns, NPY_UINT64),     STAT(decode_ns, NPY_UINT64),      STAT(scan_ns, NPY_UINT64),
	STAT(bytes_round1, NPY_FLOAT64),  STAT(bytes_round2, NPY_FLOAT64),  STAT(ios_round1, NPY_FLOAT64),
	STAT(ios_round2, NPY_FLOAT64),    STAT(estimated, NPY_UINT64),      STAT(reranked, NPY_UINT64),
	STAT(round1_wait_ns, NPY_UINT64), STAT(estimate_ns, NPY_UINT64),    STAT(round2_wait_ns, NPY_UINT64),
	STAT(rerank_ns, NPY_UINT64),      STAT(read_waves, NPY_UINT32),
};
#undef STAT
#define SZ(name, bytes) _Static_assert(sizeof(((ann_query_stats *)0)->name) == (bytes), #name)
SZ(partitions, 4); SZ(candidates, 8); SZ(bytes_read, 8); SZ(io_requests, 8); SZ(latency_ns, 8);
SZ(route_ns, 8); SZ(io_wait_ns, 8); SZ(decode_ns, 8); SZ(scan_ns, 8); SZ(bytes_round1, 8);
SZ(bytes_round2, 8); SZ(ios_round1, 8); SZ(ios_round2, 8); SZ(estimated, 8); SZ(reranked, 8);
SZ(round1_wait_ns, 8); SZ(estimate_ns, 8); SZ(round2_wait_ns, 8); SZ(rerank_ns, 8); SZ(read_waves, 4);
#undef SZ

static PyObject *stats_dict(const ann_query_stats *st, npy_intp n)
{
	PyObject *d = PyDict_New();
	if (!d)
		return NULL;
	for (size_t f = 0; f < sizeof stat_fields / sizeof stat_fields[0]; f++) {
		int type = stat_fields[f].type;
		size_t w = type == NPY_UINT32 ? 4 : 8;
		PyObject *a = PyArray_SimpleNew(1, &n, type);
		if (!a) {
			Py_DECREF(d);
			return NULL;
		}
		char *p = PyArray_DATA((PyArrayObject *)a);
		for (npy_intp i = 0; i < n; i++)
			memcpy(p + (size_t)i * w, (const char *)&st[i] + stat_fields[f].off, w);
		if (PyDict_SetItemString(d, stat_fields[f].name, a) < 0) {
			Py_DECREF(a);
			Py_DECREF(d);
			return NULL;
		}
		Py_DECREF(a);
	}
	return d;
}

static int opt_uint(PyObject *v, const char *what, unsigned long lo, unsigned long hi, uint32_t *out)
{
	if (v == Py_None)
		return 0;
	unsigned long x = PyLong_AsUnsignedLong(v);
	if (PyErr_Occurred() || x < lo || x > hi) {
		PyErr_Clear();
		raise_fmt("search: %s must be an integer within %lu..%lu", what, lo, hi);
		return -1;
	}
	*out = (uint32_t)x;
	return 0;
}

/* A probe-order weight: None keeps the default (0 in the options), 0 turns it
 * off (-1 in the options), else a number within 0..hi. */
static int opt_weight(PyObject *v, const char *name, double hi, float *out)
{
	if (v == Py_None)
		return 0;
	double w = PyFloat_AsDouble(v);
	if (w == -1.0 && PyErr_Occurred())
		return -1;
	if (!(w >= 0 && w <= hi)) {
		raise_fmt("search: %s must be a number within 0..%g (0 = off), not %g", name, hi, w);
		return -1;
	}
	*out = w > 0 ? (float)w : -1.0f;
	return 0;
}

static PyObject *Index_search(IndexObject *x, PyObject *args, PyObject *kw)
{
	static char *kwl[] = {"queries", "k",     "nprobe",  "ef",           "candidates_factor", "threads",
			      "batch",   "adaptive", "spread_weight", "poll_us", "direction_weight", NULL};
	PyObject *qo, *ko = Py_None, *npo = Py_None, *efo = Py_None, *cfo = Py_None, *to = Py_None, *bo = Py_None,
		 *ao = Py_None, *swo = Py_None, *po = Py_None, *dwo = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O$OOOOOOOOO:search", kwl, &qo, &ko, &npo, &efo, &cfo, &to, &bo,
					 &ao, &swo, &po, &dwo))
		return NULL;
	ann_search_opts o;
	ann_search_opts_init(&o);
	if (opt_weight(swo, "spread_weight", 100, &o.spread_weight) < 0 ||
	    opt_weight(dwo, "direction_weight", 1, &o.direction_weight) < 0)
		return NULL;
	if (ao != Py_None) { /* None: the index's probe model when it has one; True: required; False: off */
		int on = PyObject_IsTrue(ao);
		if (on < 0)
			return NULL;
		o.adaptive = on ? 1 : -1;
	}
	o.cache_bytes = x->cache;
	uint32_t threads = (uint32_t)x->threads, batch = DEFAULT_BATCH;
	if (opt_uint(ko, "k", 1, 100000, &o.k) < 0 || opt_uint(npo, "nprobe", 1, 4096, &o.nprobe) < 0 ||
	    opt_uint(efo, "ef", 1, 1u << 20, &o.hnsw_ef) < 0 ||
	    opt_uint(cfo, "candidates_factor", 1, 1000, &o.candidates_factor) < 0 ||
	    opt_uint(to, "threads", 1, MAX_THREADS, &threads) < 0 || opt_uint(bo, "batch", 1, 1u << 24, &batch) < 0 ||
	    opt_uint(po, "poll_us", 0, ANN_MAX_IO_POLL_US, &o.io_poll_us) < 0)
		return NULL;
	if (atomic_load(&x->closed))
		return closed_error();
	if (check_array(qo, "queries", 1) < 0)
		return NULL;
	PyArrayObject *q = as_f32(qo);
	if (!q)
		return NULL;
	int one = PyArray_NDIM(q) == 1;
	npy_intp nq = one ? 1 : PyArray_DIM(q, 0), d = PyArray_DIM(q, PyArray_NDIM(q) - 1);
	if (d != (npy_intp)x->dim) {
		Py_DECREF(q);
		return raise_fmt("queries: dimension %lld, the index has %u", (long long)d, x->dim);
	}
	npy_intp dims[2] = {nq, (npy_intp)o.k};
	PyObject *ids = PyArray_SimpleNew(2, dims, NPY_INT64), *dists = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
	ann_query_stats *st = PyMem_RawMalloc((size_t)(nq ? nq : 1) * sizeof *st);
	PyObject *res = NULL;
	if (!ids || !dists || !st) {
		if (!PyErr_Occurred())
			PyErr_NoMemory();
		goto out;
	}
	search_run r;
	memset(&r, 0, sizeof r);
	r.x = x;
	r.o = &o;
	r.q = PyArray_DATA(q);
	r.nq = (size_t)nq;
	r.dim = (size_t)d;
	r.batch = batch;
	r.ids = PyArray_DATA((PyArrayObject *)ids);
	r.dists = PyArray_DATA((PyArrayObject *)dists);
	r.st = st;
	atomic_init(&r.next, 0);
	atomic_init(&r.stop, 0);
	pthread_mutex_init(&r.mu, NULL);
	pthread_cond_init(&r.cv, NULL);
	int closed = 0;
	Py_BEGIN_ALLOW_THREADS
	r.rc = refresh(x, &r.err);
	if (r.rc >= 0) {
		pthread_rwlock_rdlock(&x->lock);
		if (!x->idx)
			closed = 1;
		else if (nq > 0)
			run_search(&r, (int)threads);
		pthread_rwlock_unlock(&x->lock);
	}
	Py_END_ALLOW_THREADS
	pthread_mutex_destroy(&r.mu);
	pthread_cond_destroy(&r.cv);
	if (PyErr_Occurred())
		goto out; /* KeyboardInterrupt (or another signal handler's exception) */
	if (closed) {
		closed_error();
		goto out;
	}
	if (r.rc < 0) {
		raise_ann(&r.err);
		goto out;
	}
	PyObject *sd = stats_dict(st, nq);
	if (!sd)
		goto out;
	Py_SETREF(x->last_stats, sd);
	if (one) {
		npy_intp kd[1] = {(npy_intp)o.k};
		PyArray_Dims shape = {kd, 1};
		PyObject *i1 = PyArray_Newshape((PyArrayObject *)ids, &shape, NPY_CORDER);
		PyObject *d1 = i1 ? PyArray_Newshape((PyArrayObject *)dists, &shape, NPY_CORDER) : NULL;
		if (!d1) {
			Py_XDECREF(i1);
			goto out;
		}
		res = Py_BuildValue("(NN)", i1, d1);
	} else {
		res = Py_BuildValue("(OO)", ids, dists);
	}
out:
	Py_XDECREF(ids);
	Py_XDECREF(dists);
	PyMem_RawFree(st);
	Py_DECREF(q);
	return res;
}

/* -- updates -- */

/* Runs fn on the writer (opened on first use) without the GIL. */
static int with_writer(IndexObject *x, int (*fn)(ann_writer *, void *, ann_error *), void *arg, ann_error *err)
{
	int rc;
	pthread_mutex_lock(&x->wmu);
	if (atomic_load(&x->closed)) {
		pthread_mutex_unlock(&x->wmu);
		err->code = ANN_E_STATE;
		snprintf(err->msg, sizeof err->msg, "the index is closed");
		return ANN_E_STATE;
	}
	rc = x->w ? ANN_OK : ann_writer_open(x->path, &x->w, err);
	if (rc >= 0) {
		rc = fn(x->w, arg, err);
		atomic_store(&x->stale, 1);
	}
	pthread_mutex_unlock(&x->wmu);
	return rc;
}

typedef struct insert_arg {
	const float *v;
	size_t n;
	uint32_t dim;
	const int64_t *ids;
	int upsert;
	int64_t *out;
} insert_arg;

static int do_insert(ann_writer *w, void *arg, ann_error *err)
{
	insert_arg *a = arg;
	return ann_insert(w, a->v, a->n, a->dim, a->ids, a->upsert, a->out, err);
}

/* A C-contiguous int64 array of ids from any 1-D integer array or sequence. */
static PyArrayObject *as_ids(PyObject *o, const char *what)
{
	PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(o, NPY_INT64, 0, 1, NPY_ARRAY_C_CONTIGUOUS |
						     NPY_ARRAY_ALIGNED);
	if (!a) {
		PyErr_Clear();
		raise_fmt("%s: expected a 1-D array of integer ids", what);
		return NULL;
	}
	return a;
}

static PyObject *Index_insert(IndexObject *x, PyObject *args, PyObject *kw)
{
	static char *kwl[] = {"vectors", "ids", "upsert", NULL};
	PyObject *vo, *io = Py_None;
	int upsert = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$Op:insert", kwl, &vo, &io, &upsert))
		return NULL;
	if (atomic_load(&x->closed))
		return closed_error();
	if (check_array(vo, "vectors", 1) < 0)
		return NULL;
	PyArrayObject *v = as_f32(vo), *ia = NULL;
	if (!v)
		return NULL;
	npy_intp n = PyArray_NDIM(v) == 1 ? 1 : PyArray_DIM(v, 0), d = PyArray_DIM(v, PyArray_NDIM(v) - 1);
	PyObject *out = NULL, *res = NULL;
	if (d != (npy_intp)x->dim) {
		raise_fmt("vectors: dimension %lld, the index has %u", (long long)d, x->dim);
		goto done;
	}
	if (io != Py_None) {
		ia = as_ids(io, "ids");
		if (!ia)
			goto done;
		if (PyArray_SIZE(ia) != n) {
			raise_fmt("ids: %lld ids for %lld vectors", (long long)PyArray_SIZE(ia), (long long)n);
			goto done;
		}
	}
	out = PyArray_SimpleNew(1, &n, NPY_INT64);
	if (!out)
		goto done;
	insert_arg a = {PyArray_DATA(v), (size_t)n, (uint32_t)d, ia ? PyArray_DATA(ia) : NULL, upsert,
			PyArray_DATA((PyArrayObject *)out)};
	ann_error err = {0};
	int rc = ANN_OK;
	if (n > 0) {
		Py_BEGIN_ALLOW_THREADS
		rc = with_writer(x, do_insert, &a, &err);
		Py_END_ALLOW_THREADS
	}
	if (rc < 0)
		raise_ann(&err);
	else
		res = Py_NewRef(out);
done:
	Py_XDECREF(out);
	Py_XDECREF(ia);
	Py_DECREF(v);
	return res;
}

typedef struct delete_arg {
	const int64_t *ids;
	size_t n;
	uint64_t deleted;
} delete_arg;

static int do_delete(ann_writer *w, void *arg, ann_error *err)
{
	delete_arg *a = arg;
	return ann_delete(w, a->ids, a->n, &a->deleted, err);
}

static PyObject *Index_delete(IndexObject *x, PyObject *args)
{
	PyObject *io;
	if (!PyArg_ParseTuple(args, "O:delete", &io))
		return NULL;
	if (atomic_load(&x->closed))
		return closed_error();
	PyArrayObject *ia = as_ids(io, "ids");
	if (!ia)
		return NULL;
	delete_arg a = {PyArray_DATA(ia), (size_t)PyArray_SIZE(ia), 0};
	ann_error err = {0};
	int rc = ANN_OK;
	if (a.n > 0) {
		Py_BEGIN_ALLOW_THREADS
		rc = with_writer(x, do_delete, &a, &err);
		Py_END_ALLOW_THREADS
	}
	Py_DECREF(ia);
	if (rc < 0)
		return raise_ann(&err);
	return PyLong_FromUnsignedLongLong(a.deleted);
}

typedef struct compact_arg {
	uint64_t split_limit;
	ann_compact_stats st;
} compact_arg;

static int do_compact(ann_writer *w, void *arg, ann_error *err)
{
	compact_arg *a = arg;
	return ann_compact(w, a->split_limit, &a->st, err);
}

static PyObject *Index_compact(IndexObject *x, PyObject *args, PyObject *kw)
{
	static char *kwl[] = {"split_limit", NULL};
	unsigned long long split = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|$K:compact", kwl, &split))
		return NULL;
	if (atomic_load(&x->closed))
		return closed_error();
	compact_arg a;
	memset(&a, 0, sizeof a);
	a.split_limit = split;
	ann_error err = {0};
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = with_writer(x, do_compact, &a, &err);
	Py_END_ALLOW_THREADS
	if (rc < 0)
		return raise_ann(&err);
	return Py_BuildValue("{sIsIsKsKsKsKsdsI}", "partitions_rewritten", a.st.partitions_rewritten,
			     "partitions_split", a.st.partitions_split, "deltas_merged",
			     (unsigned long long)a.st.deltas_merged, "tombstones_applied",
			     (unsigned long long)a.st.tombstones_applied, "bytes_written",
			     (unsigned long long)a.st.bytes_written, "bytes_freed", (unsigned long long)a.st.bytes_freed,
			     "seconds", a.st.seconds, "directions_refit", a.st.directions_refit);
}

/* Problems found by ann_verify, kept in C until the GIL is back. */
typedef struct problems {
	char **msg;
	uint32_t *part;
	size_t n, cap;
	int oom;
} problems;

static void verify_report(void *ctx, uint32_t partition, const char *problem)
{
	problems *p = ctx;
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 16;
		char **m = PyMem_RawRealloc(p->msg, cap * sizeof *m);
		if (m)
			p->msg = m;
		uint32_t *q = m ? PyMem_RawRealloc(p->part, cap * sizeof *q) : NULL;
		if (q)
			p->part = q;
		if (!m || !q) {
			p->oom = 1;
			return;
		}
		p->cap = cap;
	}
	size_t len = strlen(problem) + 1;
	char *s = PyMem_RawMalloc(len);
	if (!s) {
		p->oom = 1;
		return;
	}
	memcpy(s, problem, len);
	p->msg[p->n] = s;
	p->part[p->n] = partition;
	p->n++;
}

static PyObject *Index_verify(IndexObject *x, PyObject *unused)
{
	(void)unused;
	if (atomic_load(&x->closed))
		return closed_error();
	problems p;
	memset(&p, 0, sizeof p);
	uint64_t count = 0;
	ann_error err = {0};
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = ann_verify(x->path, verify_report, &p, &count, &err);
	Py_END_ALLOW_THREADS
	PyObject *res = NULL;
	if (rc < 0) {
		raise_ann(&err);
	} else if (p.oom) {
		PyErr_NoMemory();
	} else {
		res = PyList_New((Py_ssize_t)p.n);
		for (size_t i = 0; res && i < p.n; i++) {
			PyObject *t = p.part[i] == UINT32_MAX ? Py_BuildValue("(Os)", Py_None, p.msg[i])
							      : Py_BuildValue("(Is)", p.part[i], p.msg[i]);
			if (!t) {
				Py_CLEAR(res);
				break;
			}
			PyList_SET_ITEM(res, (Py_ssize_t)i, t);
		}
	}
	for (size_t i = 0; i < p.n; i++)
		PyMem_RawFree(p.msg[i]);
	PyMem_RawFree(p.msg);
	PyMem_RawFree(p.part);
	return res;
}

static PyObject *Index_info(IndexObject *x, PyObject *unused)
{
	(void)unused;
	ann_info_field f[ANN_INFO_MAX_FIELDS];
	uint64_t hist[ANN_INFO_HIST_BINS];
	size_t nf = 0;
	ann_error err = {0};
	int rc, closed = 0;
	Py_BEGIN_ALLOW_THREADS
	rc = atomic_load(&x->closed) ? ANN_OK : refresh(x, &err);
	if (rc >= 0) {
		pthread_rwlock_rdlock(&x->lock);
		if (!x->idx) {
			closed = 1;
		} else {
			rc = ann_index_info_fields(x->idx, f, &nf, &err);
			ann_index_size_histogram(x->idx, hist);
		}
		pthread_rwlock_unlock(&x->lock);
	}
	Py_END_ALLOW_THREADS
	if (closed)
		return closed_error();
	if (rc < 0)
		return raise_ann(&err);
	PyObject *d = PyDict_New();
	if (!d)
		return NULL;
	for (size_t i = 0; i < nf; i++) {
		PyObject *v = f[i].type == ANN_INFO_INT ? PyLong_FromLongLong(f[i].i)
			      : f[i].type == ANN_INFO_NUM ? PyFloat_FromDouble(f[i].num)
							  : PyUnicode_FromString(f[i].str);
		if (!v || PyDict_SetItemString(d, f[i].key, v) < 0) {
			Py_XDECREF(v);
			Py_DECREF(d);
			return NULL;
		}
		Py_DECREF(v);
	}
	PyObject *h = PyList_New(0);
	if (!h) {
		Py_DECREF(d);
		return NULL;
	}
	for (int b = 0; b < ANN_INFO_HIST_BINS; b++) {
		if (!hist[b])
			continue;
		PyObject *e = Py_BuildValue("{sKsKsK}", "min", b ? 1ull << (b - 1) : 0ull, "max",
					    b ? (1ull << b) - 1 : 0ull, "partitions", (unsigned long long)hist[b]);
		if (!e || PyList_Append(h, e) < 0) {
			Py_XDECREF(e);
			Py_DECREF(h);
			Py_DECREF(d);
			return NULL;
		}
		Py_DECREF(e);
	}
	if (PyDict_SetItemString(d, "partition_size_histogram", h) < 0) {
		Py_DECREF(h);
		Py_DECREF(d);
		return NULL;
	}
	Py_DECREF(h);
	return d;
}

static PyObject *Index_get_last_stats(IndexObject *x, void *closure)
{
	(void)closure;
	return Py_NewRef(x->last_stats);
}

static PyObject *Index_get_closed(IndexObject *x, void *closure)
{
	(void)closure;
	return PyBool_FromLong(atomic_load(&x->closed));
}

static PyObject *Index_get_dim(IndexObject *x, void *closure)
{
	(void)closure;
	return PyLong_FromUnsignedLong(x->dim);
}

static PyObject *Index_get_path(IndexObject *x, void *closure)
{
	(void)closure;
	return PyUnicode_DecodeFSDefault(x->path);
}

static PyMethodDef Index_methods[] = {
	{"search", (PyCFunction)(void (*)(void))Index_search, METH_VARARGS | METH_KEYWORDS,
	 "search(queries, k=10, *, nprobe=None, ef=None, candidates_factor=None, threads=None, batch=None,\n"
	 "adaptive=None, spread_weight=None, poll_us=None, direction_weight=None) -> (ids int64, distances\n"
	 "float32), each (n, k), or\n"
	 "(k,) for one 1-D query. nprobe None: the index's default_nprobe (info(); 1 partition in 40, at least\n"
	 "16). adaptive None: the index's probe model (annann.tune) when it has one, nprobe then the mean budget;\n"
	 "True requires it; False off. poll_us: poll for read completions up to that many microseconds before\n"
	 "sleeping (0..10000; None or 0: sleep). direction_weight: the directional probe order's weight\n"
	 "(0..1; None: 0.5; 0: off), on an index with directions (info()['directions'])."},
	{"insert", (PyCFunction)(void (*)(void))Index_insert, METH_VARARGS | METH_KEYWORDS,
	 "insert(vectors, *, ids=None, upsert=False) -> ids (int64)"},
	{"delete", (PyCFunction)Index_delete, METH_VARARGS, "delete(ids) -> number deleted"},
	{"compact", (PyCFunction)(void (*)(void))Index_compact, METH_VARARGS | METH_KEYWORDS,
	 "compact(*, split_limit=0) -> dict of what the compaction did"},
	{"verify", (PyCFunction)Index_verify, METH_NOARGS,
	 "verify() -> list of (partition or None, problem); empty when healthy"},
	{"info", (PyCFunction)Index_info, METH_NOARGS, "info() -> dict with the keys of `annann info --json`"},
	{"close", (PyCFunction)Index_close, METH_NOARGS, "close(): waits for searches in flight"},
	{"__enter__", (PyCFunction)Index_enter, METH_NOARGS, NULL},
	{"__exit__", (PyCFunction)Index_exit, METH_VARARGS, NULL},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef Index_getset[] = {
	{"last_stats", (getter)Index_get_last_stats, NULL,
	 "per-query figures of the last search: dict of arrays, one per field of ann_query_stats (partitions, "
	 "candidates, bytes_read, io_requests, latency_ns, route_ns, io_wait_ns, decode_ns, scan_ns, bytes_round1, "
	 "bytes_round2, ios_round1, ios_round2, estimated, reranked, round1_wait_ns, estimate_ns, round2_wait_ns, "
	 "rerank_ns, read_waves)", NULL},
	{"closed", (getter)Index_get_closed, NULL, "True after close()", NULL},
	{"dim", (getter)Index_get_dim, NULL, "vector dimension", NULL},
	{"path", (getter)Index_get_path, NULL, "index directory", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject IndexType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "annann.Index",
	.tp_basicsize = sizeof(IndexObject),
	.tp_dealloc = (destructor)Index_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "An open annann index (annann.open or annann.build). A context manager.",
	.tp_methods = Index_methods,
	.tp_getset = Index_getset,
};

/* ---- module ---------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
	{"open", (PyCFunction)(void (*)(void))py_open, METH_VARARGS | METH_KEYWORDS,
	 "open(path, *, cache=0, threads=None) -> Index"},
	{"_build", py_build, METH_VARARGS, "_build(data, index_dir, options, progress): see annann.build"},
	{"read_vectors", py_read_vectors, METH_VARARGS, "read_vectors(path) -> ndarray (n, dim) of the file's type"},
	{"write_vectors", py_write_vectors, METH_VARARGS, "write_vectors(path, array): format from the extension"},
	{"ground_truth", (PyCFunction)(void (*)(void))py_ground_truth, METH_VARARGS | METH_KEYWORDS,
	 "ground_truth(base, queries, k=100, *, metric='l2', threads=2, mem=0) -> (ids int64, distances float32)"},
	{"tune", (PyCFunction)(void (*)(void))py_tune, METH_VARARGS | METH_KEYWORDS,
	 "tune(index_dir, queries, gt, *, k=10, p1=0) -> report dict: fits learned adaptive probing on queries\n"
	 "(n, dim) with ground truth ids (n, >= k) and stores it in the index. An Index of it opened before\n"
	 "keeps searching without the new model until it is reopened (docs/DESIGN.md \"Learned adaptive probing\")"},
	{"read_ground_truth", py_read_ground_truth, METH_VARARGS,
	 "read_ground_truth(path) -> (ids int64, distances float32), big-ann layout or .ivecs"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT, "annann._annann", "libannann through its public C API", -1, module_methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__annann(void);
PyMODINIT_FUNC PyInit__annann(void)
{
	import_array();
	if (PyType_Ready(&IndexType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module_def);
	if (!m)
		return NULL;
	PyObject *bases = PyTuple_Pack(2, PyExc_OSError, PyExc_ValueError);
	AnnError = bases ? PyErr_NewExceptionWithDoc("annann.Error",
						    "An error from libannann (or a bad argument): the message names "
						    "the file, the position and what was expected. Attributes: code "
						    "(ann_status, 0 for the binding's own checks), status, sys_errno.",
						    bases, NULL)
			 : NULL;
	Py_XDECREF(bases);
	if (!AnnError || PyModule_AddObjectRef(m, "Error", AnnError) < 0 ||
	    PyModule_AddObjectRef(m, "Index", (PyObject *)&IndexType) < 0 ||
	    PyModule_AddStringConstant(m, "library_version", ann_version()) < 0 ||
	    PyModule_AddIntConstant(m, "DEFAULT_BATCH", DEFAULT_BATCH) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}

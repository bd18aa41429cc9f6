/* SPDX-License-Identifier: MIT */
/*
 * nn.c: dense networks on OpenBLAS (see nn.h for the conventions): layers
 * and activations, mini-batch forward/backward with sgemm, the allocation-free
 * inference path, losses, the DEC helpers, Adam, shuffled mini-batches and
 * the model blob (docs/FORMAT.md, "Model blob: MLP"). No router logic, no
 * global state, no OpenBLAS thread-count changes.
 */
#include <cblas.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <xxhash.h>

#include "nn.h"

#define NN_ALIGN 64u
/* Workspace sub-buffers start on 64-byte boundaries: 16 floats. */
#define NN_PAD(nf) ANN_ALIGN_UP((nf), (size_t)16)

const char *ann_act_name(ann_act a)
{
	switch (a) {
	case ANN_ACT_LINEAR:
		return "linear";
	case ANN_ACT_RELU:
		return "relu";
	case ANN_ACT_TANH:
		return "tanh";
	case ANN_ACT_SOFTMAX:
		return "softmax";
	}
	return "?";
}

/* ---- construction ---------------------------------------------------------- */

/* Checks a layer stack. code is ANN_E_INVAL for a spec, ANN_E_CORRUPT for a
 * blob; what names the source in messages. On success *n_params gets the
 * parameter count. */
static int check_layout(uint32_t n_layers, uint32_t in_dim, const uint32_t *outs, const uint32_t *acts,
			int code, const char *what, size_t *n_params, ann_error *err)
{
	if (n_layers < 1 || n_layers > ANN_MLP_MAX_LAYERS)
		return ann_err(err, code, "%s: %u layers, expected 1..%u", what, n_layers,
			       ANN_MLP_MAX_LAYERS);
	if (in_dim < 1 || in_dim > ANN_MLP_MAX_DIM)
		return ann_err(err, code, "%s: input dimension %u, expected 1..%u", what, in_dim,
			       ANN_MLP_MAX_DIM);
	uint64_t np = 0;
	uint32_t in = in_dim;
	for (uint32_t l = 0; l < n_layers; l++) {
		if (outs[l] < 1 || outs[l] > ANN_MLP_MAX_DIM)
			return ann_err(err, code, "%s: layer %u has width %u, expected 1..%u", what, l,
				       outs[l], ANN_MLP_MAX_DIM);
		if (acts[l] > ANN_ACT_SOFTMAX)
			return ann_err(err, code, "%s: layer %u has activation %u, expected 0..%u", what, l,
				       acts[l], (unsigned)ANN_ACT_SOFTMAX);
		if (acts[l] == ANN_ACT_SOFTMAX && l + 1 != n_layers)
			return ann_err(err, code,
				       "%s: layer %u of %u is softmax; softmax is for the output layer only",
				       what, l, n_layers);
		np += (uint64_t)outs[l] * in + outs[l];
		if (np > ANN_MLP_MAX_PARAMS)
			return ann_err(err, code, "%s: more than %u parameters", what, ANN_MLP_MAX_PARAMS);
		in = outs[l];
	}
	*n_params = (size_t)np;
	return ANN_OK;
}

/* Allocates a network of a validated layout; parameters uninitialised. */
static int mlp_alloc(uint32_t n_layers, uint32_t in_dim, const uint32_t *outs, const uint32_t *acts,
		     size_t n_params, ann_mlp **out, ann_error *err)
{
	ann_mlp *m = ann_calloc(1, sizeof(*m));
	if (!m)
		return ann_err(err, ANN_E_NOMEM, "mlp: out of memory for the network");
	m->params = ann_aligned_alloc(NN_ALIGN, n_params * sizeof(float));
	if (!m->params) {
		ann_free(m);
		return ann_err(err, ANN_E_NOMEM, "mlp: out of memory for %zu parameters", n_params);
	}
	m->n_layers = n_layers;
	m->in_dim = in_dim;
	m->n_params = n_params;
	size_t off = 0;
	uint32_t in = in_dim;
	for (uint32_t l = 0; l < n_layers; l++) {
		ann_layer *L = &m->layers[l];
		L->in = in;
		L->out = outs[l];
		L->act = (ann_act)acts[l];
		L->off_w = off;
		off += (size_t)L->out * L->in;
		L->off_b = off;
		off += L->out;
		L->w = m->params + L->off_w;
		L->b = m->params + L->off_b;
		m->max_width = ANN_MAX(m->max_width, L->out);
		if (l + 1 < n_layers)
			m->max_hidden = ANN_MAX(m->max_hidden, L->out);
		in = L->out;
	}
	m->out_dim = in;
	*out = m;
	return ANN_OK;
}

void ann_mlp_spec_mirror(const ann_mlp_spec *enc, ann_act out_act, ann_mlp_spec *dec)
{
	ann_mlp_spec d;
	memset(&d, 0, sizeof(d));
	d.in_dim = enc->out_dim;
	d.out_dim = enc->in_dim;
	d.n_hidden = ANN_MIN(enc->n_hidden, ANN_MLP_MAX_LAYERS - 1);
	for (uint32_t i = 0; i < d.n_hidden; i++)
		d.hidden[i] = enc->hidden[d.n_hidden - 1 - i];
	d.hidden_act = enc->hidden_act;
	d.out_act = out_act;
	*dec = d;
}

int ann_mlp_new(const ann_mlp_spec *spec, ann_rng *rng, ann_mlp **out, ann_error *err)
{
	uint32_t outs[ANN_MLP_MAX_LAYERS], acts[ANN_MLP_MAX_LAYERS];
	size_t n_params;
	*out = NULL;
	if (spec->n_hidden > ANN_MLP_MAX_LAYERS - 1)
		return ann_err(err, ANN_E_INVAL, "mlp spec: %u hidden layers, at most %u", spec->n_hidden,
			       ANN_MLP_MAX_LAYERS - 1);
	if (spec->n_hidden > 0 && spec->hidden_act != ANN_ACT_LINEAR && spec->hidden_act != ANN_ACT_RELU &&
	    spec->hidden_act != ANN_ACT_TANH)
		return ann_err(err, ANN_E_INVAL,
			       "mlp spec: hidden activation %d, expected linear, relu or tanh",
			       (int)spec->hidden_act);
	if ((unsigned)spec->out_act > ANN_ACT_SOFTMAX)
		return ann_err(err, ANN_E_INVAL, "mlp spec: output activation %d unknown",
			       (int)spec->out_act);
	uint32_t L = spec->n_hidden + 1;
	for (uint32_t l = 0; l + 1 < L; l++) {
		outs[l] = spec->hidden[l];
		acts[l] = (uint32_t)spec->hidden_act;
	}
	outs[L - 1] = spec->out_dim;
	acts[L - 1] = (uint32_t)spec->out_act;
	ANN_TRY(check_layout(L, spec->in_dim, outs, acts, ANN_E_INVAL, "mlp spec", &n_params, err));
	ann_mlp *m;
	ANN_TRY(mlp_alloc(L, spec->in_dim, outs, acts, n_params, &m, err));
	for (uint32_t l = 0; l < L; l++) {
		ann_layer *ly = &m->layers[l];
		double var = ly->act == ANN_ACT_RELU ? 2.0 / ly->in : 2.0 / ((double)ly->in + ly->out);
		double sd = sqrt(var);
		size_t nw = (size_t)ly->out * ly->in;
		for (size_t i = 0; i < nw; i++)
			ly->w[i] = (float)(ann_rng_normal(rng) * sd);
		memset(ly->b, 0, ly->out * sizeof(float));
	}
	*out = m;
	return ANN_OK;
}

void ann_mlp_free(ann_mlp *m)
{
	if (!m)
		return;
	ann_aligned_free(m->params);
	ann_free(m);
}

size_t ann_mlp_bytes(const ann_mlp *m)
{
	return sizeof(*m) + m->n_params * sizeof(float);
}

/* ---- forward ----------------------------------------------------------------- */

/* y = act(y + b) for n rows of width out. */
static void bias_act(float *restrict y, size_t n, uint32_t out, const float *restrict b, ann_act act)
{
	switch (act) {
	case ANN_ACT_LINEAR:
		for (size_t i = 0; i < n; i++) {
			float *restrict r = y + i * out;
			for (uint32_t j = 0; j < out; j++)
				r[j] += b[j];
		}
		break;
	case ANN_ACT_RELU:
		for (size_t i = 0; i < n; i++) {
			float *restrict r = y + i * out;
			for (uint32_t j = 0; j < out; j++) {
				float v = r[j] + b[j];
				r[j] = v > 0.0f ? v : 0.0f;
			}
		}
		break;
	case ANN_ACT_TANH:
		for (size_t i = 0; i < n; i++) {
			float *restrict r = y + i * out;
			for (uint32_t j = 0; j < out; j++)
				r[j] = tanhf(r[j] + b[j]);
		}
		break;
	case ANN_ACT_SOFTMAX:
		for (size_t i = 0; i < n; i++) {
			float *restrict r = y + i * out;
			float mx = -INFINITY;
			for (uint32_t j = 0; j < out; j++) {
				r[j] += b[j];
				mx = r[j] > mx ? r[j] : mx;
			}
			float s = 0.0f;
			for (uint32_t j = 0; j < out; j++) {
				r[j] = expf(r[j] - mx);
				s += r[j];
			}
			float inv = 1.0f / s;
			for (uint32_t j = 0; j < out; j++)
				r[j] *= inv;
		}
		break;
	}
}

/* One dense layer: y (n x out) = act(x W^T + b). The same calls serve
 * training and inference so their outputs agree bit for bit. */
static void dense_forward(const ann_layer *L, const float *x, size_t n, float *y)
{
	if (n == 1)
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)L->out, (int)L->in, 1.0f, L->w, (int)L->in, x,
			    1, 0.0f, y, 1);
	else
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)L->out, (int)L->in, 1.0f, x,
			    (int)L->in, L->w, (int)L->in, 0.0f, y, (int)L->out);
	bias_act(y, n, L->out, L->b, L->act);
}

size_t ann_mlp_infer_scratch(const ann_mlp *m, size_t n)
{
	size_t bufs = m->n_layers >= 3 ? 2 : m->n_layers - 1;
	return bufs * n * m->max_hidden;
}

void ann_mlp_infer(const ann_mlp *m, const float *x, size_t n, float *out, float *scratch)
{
	const float *in = x;
	size_t stride = n * m->max_hidden;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		float *dst = l + 1 == m->n_layers ? out : scratch + (l & 1) * stride;
		dense_forward(&m->layers[l], in, n, dst);
		in = dst;
	}
}

/* ---- training workspace ----------------------------------------------------- */

struct ann_mlp_ws {
	uint32_t n_layers;
	uint32_t outs[ANN_MLP_MAX_LAYERS]; /* layer widths of the network it was made for */
	uint32_t in_dim;
	size_t n_params;
	size_t max_batch;		/* rows */
	size_t n;			/* rows of the last forward (0 before any) */
	const float *x;			/* borrowed input of the last forward */
	float *act[ANN_MLP_MAX_LAYERS]; /* layer outputs, max_batch x outs[l] */
	float *d0, *d1;			/* gradient ping-pong, max_batch x max_width each */
	float *grad;			/* n_params */
	float *mem;			/* the one allocation behind all of the above */
	size_t mem_floats;
};

int ann_mlp_ws_new(const ann_mlp *m, size_t max_batch, ann_mlp_ws **out, ann_error *err)
{
	*out = NULL;
	if (max_batch < 1 || max_batch > INT_MAX)
		return ann_err(err, ANN_E_INVAL, "mlp workspace: batch of %zu rows, expected 1..%d",
			       max_batch, INT_MAX);
	size_t total = NN_PAD(m->n_params), t;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		if (!ann_mul_ok(max_batch, m->layers[l].out, &t) ||
		    __builtin_add_overflow(total, NN_PAD(t), &total))
			goto too_big;
	}
	if (!ann_mul_ok(max_batch, m->max_width, &t) || !ann_mul_ok(NN_PAD(t), 2, &t) ||
	    __builtin_add_overflow(total, t, &total) || !ann_mul_ok(total, sizeof(float), &t))
		goto too_big;
	ann_mlp_ws *ws = ann_calloc(1, sizeof(*ws));
	if (!ws)
		return ann_err(err, ANN_E_NOMEM, "mlp workspace: out of memory");
	ws->mem = ann_aligned_alloc(NN_ALIGN, total * sizeof(float));
	if (!ws->mem) {
		ann_free(ws);
		return ann_err(err, ANN_E_NOMEM, "mlp workspace: out of memory for %zu floats", total);
	}
	memset(ws->mem, 0, total * sizeof(float));
	ws->mem_floats = total;
	ws->n_layers = m->n_layers;
	ws->in_dim = m->in_dim;
	ws->n_params = m->n_params;
	ws->max_batch = max_batch;
	float *p = ws->mem;
	ws->grad = p;
	p += NN_PAD(m->n_params);
	for (uint32_t l = 0; l < m->n_layers; l++) {
		ws->outs[l] = m->layers[l].out;
		ws->act[l] = p;
		p += NN_PAD(max_batch * m->layers[l].out);
	}
	ws->d0 = p;
	p += NN_PAD(max_batch * m->max_width);
	ws->d1 = p;
	*out = ws;
	return ANN_OK;
too_big:
	return ann_err(err, ANN_E_INVAL, "mlp workspace: %zu rows of this network overflow size_t",
		       max_batch);
}

void ann_mlp_ws_free(ann_mlp_ws *ws)
{
	if (!ws)
		return;
	ann_aligned_free(ws->mem);
	ann_free(ws);
}

size_t ann_mlp_ws_bytes(const ann_mlp_ws *ws)
{
	return sizeof(*ws) + ws->mem_floats * sizeof(float);
}

float *ann_mlp_ws_grad(ann_mlp_ws *ws)
{
	return ws->grad;
}

const float *ann_mlp_ws_layer(const ann_mlp_ws *ws, uint32_t l)
{
	return ws->act[l];
}

static bool ws_fits(const ann_mlp *m, const ann_mlp_ws *ws)
{
	if (ws->n_layers != m->n_layers || ws->in_dim != m->in_dim || ws->n_params != m->n_params)
		return false;
	for (uint32_t l = 0; l < m->n_layers; l++)
		if (ws->outs[l] != m->layers[l].out)
			return false;
	return true;
}

int ann_mlp_forward(const ann_mlp *m, ann_mlp_ws *ws, const float *x, size_t n, const float **y,
		    ann_error *err)
{
	if (n < 1 || n > ws->max_batch)
		return ann_err(err, ANN_E_INVAL, "mlp forward: batch of %zu rows, workspace holds 1..%zu", n,
			       ws->max_batch);
	if (!ws_fits(m, ws))
		return ann_err(err, ANN_E_INVAL, "mlp forward: workspace was made for another network shape");
	const float *in = x;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		dense_forward(&m->layers[l], in, n, ws->act[l]);
		in = ws->act[l];
	}
	ws->x = x;
	ws->n = n;
	if (y)
		*y = in;
	return ANN_OK;
}

/* d = g * act'(y) for n rows of width out, where y is the layer's output.
 * d may equal g. */
static void act_backward(const float *g, const float *y, size_t n, uint32_t out, ann_act act, float *d)
{
	size_t nn = n * out;
	switch (act) {
	case ANN_ACT_LINEAR:
		if (d != g)
			memcpy(d, g, nn * sizeof(float));
		break;
	case ANN_ACT_RELU:
		for (size_t i = 0; i < nn; i++)
			d[i] = y[i] > 0.0f ? g[i] : 0.0f;
		break;
	case ANN_ACT_TANH:
		for (size_t i = 0; i < nn; i++)
			d[i] = g[i] * (1.0f - y[i] * y[i]);
		break;
	case ANN_ACT_SOFTMAX:
		/* Jacobian of softmax: d_j = y_j (g_j - sum_k g_k y_k). */
		for (size_t i = 0; i < n; i++) {
			const float *gr = g + i * out, *yr = y + i * out;
			float *dr = d + i * out;
			float s = 0.0f;
			for (uint32_t j = 0; j < out; j++)
				s += gr[j] * yr[j];
			for (uint32_t j = 0; j < out; j++)
				dr[j] = yr[j] * (gr[j] - s);
		}
		break;
	}
}

void ann_mlp_backward(const ann_mlp *m, ann_mlp_ws *ws, const float *dy, float *dx, bool accumulate)
{
	size_t n = ws->n;
	float *cur = ws->d0, *other = ws->d1;
	const float beta = accumulate ? 1.0f : 0.0f;
	for (uint32_t l = m->n_layers; l-- > 0;) {
		const ann_layer *L = &m->layers[l];
		const float *xin = l ? ws->act[l - 1] : ws->x;
		const float *gin = l + 1 == m->n_layers ? dy : cur;
		/* dZ (n x out) = dA * act'(A), in place except for the caller's dy. */
		act_backward(gin, ws->act[l], n, L->out, L->act, cur);
		/* dW (out x in) = dZ^T X */
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)L->out, (int)L->in, (int)n, 1.0f,
			    cur, (int)L->out, xin, (int)L->in, beta, ws->grad + L->off_w, (int)L->in);
		/* db = column sums of dZ */
		float *restrict db = ws->grad + L->off_b;
		if (!accumulate)
			memset(db, 0, L->out * sizeof(float));
		for (size_t i = 0; i < n; i++) {
			const float *restrict r = cur + i * L->out;
			for (uint32_t j = 0; j < L->out; j++)
				db[j] += r[j];
		}
		/* dX (n x in) = dZ W */
		float *dst = l ? other : dx;
		if (dst)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)L->in,
				    (int)L->out, 1.0f, cur, (int)L->out, L->w, (int)L->in, 0.0f, dst,
				    (int)L->in);
		float *t = cur;
		cur = other;
		other = t;
	}
}

/* ---- losses ------------------------------------------------------------------ */

double ann_loss_mse(const float *y, const float *t, size_t n, size_t d, float *grad)
{
	size_t nn = n * d;
	double s = 0.0;
	float c = (float)(2.0 / (double)nn);
	for (size_t i = 0; i < nn; i++) {
		float e = y[i] - t[i];
		s += (double)e * e;
		if (grad)
			grad[i] = c * e;
	}
	return s / (double)nn;
}

double ann_loss_ce_hard(const float *y, const uint32_t *labels, size_t n, size_t m, float *grad)
{
	double s = 0.0;
	float inv_n = (float)(1.0 / (double)n);
	if (grad)
		memset(grad, 0, n * m * sizeof(float));
	for (size_t i = 0; i < n; i++) {
		float v = ANN_MAX(y[i * m + labels[i]], FLT_MIN);
		s -= log((double)v);
		if (grad)
			grad[i * m + labels[i]] = -inv_n / v;
	}
	return s / (double)n;
}

double ann_loss_ce_soft(const float *y, const float *t, size_t n, size_t m, float *grad)
{
	double s = 0.0;
	float inv_n = (float)(1.0 / (double)n);
	for (size_t i = 0; i < n * m; i++) {
		float v = ANN_MAX(y[i], FLT_MIN);
		if (t[i] != 0.0f)
			s -= (double)t[i] * log((double)v);
		if (grad)
			grad[i] = -inv_n * t[i] / v;
	}
	return s / (double)n;
}

double ann_loss_kl(const float *p, const float *q, size_t n, size_t m, float *grad)
{
	double s = 0.0;
	float inv_n = (float)(1.0 / (double)n);
	for (size_t i = 0; i < n * m; i++) {
		float v = ANN_MAX(q[i], FLT_MIN);
		if (p[i] > 0.0f)
			s += (double)p[i] * log((double)p[i] / (double)v);
		if (grad)
			grad[i] = -inv_n * p[i] / v;
	}
	return s / (double)n;
}

void ann_softmax_rows(float *x, size_t n, size_t m)
{
	for (size_t i = 0; i < n; i++) {
		float *r = x + i * m;
		float mx = -INFINITY, s = 0.0f;
		for (size_t j = 0; j < m; j++)
			mx = r[j] > mx ? r[j] : mx;
		for (size_t j = 0; j < m; j++) {
			r[j] = expf(r[j] - mx);
			s += r[j];
		}
		float inv = 1.0f / s;
		for (size_t j = 0; j < m; j++)
			r[j] *= inv;
	}
}

/* ---- DEC ----------------------------------------------------------------------- */

static float dot_f(const float *a, const float *b, size_t e)
{
	float s = 0.0f;
	for (size_t i = 0; i < e; i++)
		s += a[i] * b[i];
	return s;
}

/* D (n x k) = squared distances |z_i - mu_j|^2 via |mu|^2 + |z|^2 - 2 z.mu. */
static void dec_sqdist(const float *z, size_t n, size_t e, const float *mu, size_t k, float *D)
{
	for (size_t j = 0; j < k; j++)
		D[j] = dot_f(mu + j * e, mu + j * e, e);
	for (size_t i = 1; i < n; i++)
		memcpy(D + i * k, D, k * sizeof(float));
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)k, (int)e, -2.0f, z, (int)e, mu,
		    (int)e, 1.0f, D, (int)k);
	for (size_t i = 0; i < n; i++) {
		float zn = dot_f(z + i * e, z + i * e, e);
		float *r = D + i * k;
		for (size_t j = 0; j < k; j++) {
			float v = r[j] + zn;
			r[j] = v > 0.0f ? v : 0.0f;
		}
	}
}

/* Kernel K = (1 + d/alpha)^-1 and unnormalised assignment K^((alpha+1)/2). */
static inline float dec_kernel(float d, float inv_alpha)
{
	return 1.0f / (1.0f + d * inv_alpha);
}

static inline float dec_pow(float K, float alpha, float expo)
{
	return alpha == 1.0f ? K : powf(K, expo);
}

void ann_dec_soft_assign(const float *z, size_t n, size_t e, const float *mu, size_t k, float alpha, float *q)
{
	float inv_alpha = 1.0f / alpha, expo = (alpha + 1.0f) * 0.5f;
	dec_sqdist(z, n, e, mu, k, q);
	for (size_t i = 0; i < n; i++) {
		float *r = q + i * k;
		double s = 0.0;
		for (size_t j = 0; j < k; j++) {
			r[j] = dec_pow(dec_kernel(r[j], inv_alpha), alpha, expo);
			s += r[j];
		}
		float inv = (float)(1.0 / s);
		for (size_t j = 0; j < k; j++)
			r[j] *= inv;
	}
}

void ann_dec_freq_add(const float *q, size_t n, size_t k, double *f)
{
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < k; j++)
			f[j] += q[i * k + j];
}

void ann_dec_target_rows(const float *q, size_t n, size_t k, const double *f, float *p)
{
	for (size_t i = 0; i < n; i++) {
		const float *qr = q + i * k;
		float *pr = p + i * k;
		double s = 0.0;
		for (size_t j = 0; j < k; j++) {
			double v = f[j] > 0.0 ? (double)qr[j] * qr[j] / f[j] : 0.0;
			pr[j] = (float)v;
			s += v;
		}
		float inv = s > 0.0 ? (float)(1.0 / s) : 0.0f;
		for (size_t j = 0; j < k; j++)
			pr[j] *= inv;
	}
}

int ann_dec_target(const float *q, size_t n, size_t k, float *p, ann_error *err)
{
	double *f = ann_calloc(k, sizeof(double));
	if (!f)
		return ann_err(err, ANN_E_NOMEM, "dec target: out of memory for %zu cluster frequencies", k);
	ann_dec_freq_add(q, n, k, f);
	ann_dec_target_rows(q, n, k, f, p);
	ann_free(f);
	return ANN_OK;
}

int ann_dec_grad(const float *z, size_t n, size_t e, const float *mu, size_t k, float alpha, const float *p,
		 float *q, float *dz, float *dmu, double *loss, ann_error *err)
{
	size_t nk;
	if (!ann_mul_ok(n, k, &nk) || nk > SIZE_MAX / sizeof(float) - k)
		return ann_err(err, ANN_E_INVAL, "dec grad: %zu x %zu assignments overflow", n, k);
	/* G (n x k): squared distances, then c K_ij (p_ij - q_ij); colsum (k) after it. */
	float *G = ann_malloc((nk + k) * sizeof(float));
	if (!G)
		return ann_err(err, ANN_E_NOMEM, "dec grad: out of memory for %zu x %zu scratch", n, k);
	float *colsum = G + nk;
	float inv_alpha = 1.0f / alpha, expo = (alpha + 1.0f) * 0.5f;
	float c = (float)(((double)alpha + 1.0) / alpha / (double)n);
	double L = 0.0;
	dec_sqdist(z, n, e, mu, k, G);
	memset(colsum, 0, k * sizeof(float));
	for (size_t i = 0; i < n; i++) {
		float *g = G + i * k;
		const float *pr = p + i * k;
		double s = 0.0;
		/* first pass: t_ij into g, kernel recomputed in the second pass */
		for (size_t j = 0; j < k; j++) {
			float K = dec_kernel(g[j], inv_alpha);
			float t = dec_pow(K, alpha, expo);
			s += t;
			g[j] = K;
		}
		float inv = (float)(1.0 / s);
		float rowsum = 0.0f;
		for (size_t j = 0; j < k; j++) {
			float K = g[j];
			float qij = dec_pow(K, alpha, expo) * inv;
			if (q)
				q[i * k + j] = qij;
			if (pr[j] > 0.0f)
				L += (double)pr[j] * log((double)pr[j] / (double)ANN_MAX(qij, FLT_MIN));
			float gij = c * K * (pr[j] - qij);
			g[j] = gij;
			rowsum += gij;
			colsum[j] += gij;
		}
		/* dz_i = rowsum_i z_i - sum_j G_ij mu_j (the product added below) */
		if (dz)
			for (size_t t = 0; t < e; t++)
				dz[i * e + t] = rowsum * z[i * e + t];
	}
	if (dz)
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)e, (int)k, -1.0f, G,
			    (int)k, mu, (int)e, 1.0f, dz, (int)e);
	/* dmu_j = -sum_i G_ij (z_i - mu_j) = colsum_j mu_j - (G^T z)_j */
	if (dmu) {
		for (size_t j = 0; j < k; j++)
			for (size_t t = 0; t < e; t++)
				dmu[j * e + t] = colsum[j] * mu[j * e + t];
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k, (int)e, (int)n, -1.0f, G, (int)k,
			    z, (int)e, 1.0f, dmu, (int)e);
	}
	ann_free(G);
	if (loss)
		*loss = L / (double)n;
	return ANN_OK;
}

/* ---- Adam --------------------------------------------------------------------- */

struct ann_adam {
	size_t n;
	ann_adam_opts o;
	uint64_t t; /* steps taken */
	float *m;   /* first moments, n */
	float *v;   /* second moments, n */
};

void ann_adam_opts_init(ann_adam_opts *o)
{
	o->lr = 1e-3f;
	o->beta1 = 0.9f;
	o->beta2 = 0.999f;
	o->eps = 1e-8f;
	o->weight_decay = 0.0f;
}

int ann_adam_new(size_t n, const ann_adam_opts *o, ann_adam **out, ann_error *err)
{
	*out = NULL;
	if (!(o->lr > 0.0f) || !(o->beta1 >= 0.0f && o->beta1 < 1.0f) ||
	    !(o->beta2 >= 0.0f && o->beta2 < 1.0f) || !(o->eps > 0.0f) || !(o->weight_decay >= 0.0f))
		return ann_err(err, ANN_E_INVAL,
			       "adam: lr %g, beta1 %g, beta2 %g, eps %g, weight decay %g; expected lr > 0, "
			       "betas in [0, 1), eps > 0, decay >= 0",
			       (double)o->lr, (double)o->beta1, (double)o->beta2, (double)o->eps,
			       (double)o->weight_decay);
	size_t bytes;
	if (!ann_mul_ok(n, 2 * sizeof(float), &bytes))
		return ann_err(err, ANN_E_INVAL, "adam: %zu parameters overflow", n);
	ann_adam *a = ann_calloc(1, sizeof(*a));
	if (!a)
		return ann_err(err, ANN_E_NOMEM, "adam: out of memory");
	a->m = ann_aligned_alloc(NN_ALIGN, bytes);
	if (!a->m) {
		ann_free(a);
		return ann_err(err, ANN_E_NOMEM, "adam: out of memory for %zu parameters", n);
	}
	memset(a->m, 0, bytes);
	a->v = a->m + n;
	a->n = n;
	a->o = *o;
	*out = a;
	return ANN_OK;
}

void ann_adam_free(ann_adam *a)
{
	if (!a)
		return;
	ann_aligned_free(a->m);
	ann_free(a);
}

void ann_adam_set_lr(ann_adam *a, float lr)
{
	a->o.lr = lr;
}

uint64_t ann_adam_steps(const ann_adam *a)
{
	return a->t;
}

void ann_adam_step(ann_adam *a, float *restrict params, const float *restrict grads)
{
	a->t++;
	const float b1 = a->o.beta1, b2 = a->o.beta2, eps = a->o.eps;
	double bc1 = 1.0 - pow(b1, (double)a->t), bc2 = 1.0 - pow(b2, (double)a->t);
	/* PyTorch's form: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps) */
	const float step = (float)(a->o.lr / bc1);
	const float inv_sbc2 = (float)(1.0 / sqrt(bc2));
	const float decay = 1.0f - a->o.lr * a->o.weight_decay;
	float *restrict m = a->m, *restrict v = a->v;
	for (size_t i = 0; i < a->n; i++) {
		float g = grads[i];
		m[i] = b1 * m[i] + (1.0f - b1) * g;
		v[i] = b2 * v[i] + (1.0f - b2) * g * g;
		params[i] = params[i] * decay - step * m[i] / (sqrtf(v[i]) * inv_sbc2 + eps);
	}
}

/* ---- mini-batches ----------------------------------------------------------------- */

int ann_batcher_init(ann_batcher *b, size_t n, size_t batch, ann_error *err)
{
	memset(b, 0, sizeof(*b));
	if (n < 1 || n > UINT32_MAX || batch < 1)
		return ann_err(err, ANN_E_INVAL,
			       "batcher: %zu samples in batches of %zu; expected 1..%u samples, "
			       "batch >= 1",
			       n, batch, UINT32_MAX);
	b->perm = ann_malloc(n * sizeof(uint32_t));
	if (!b->perm)
		return ann_err(err, ANN_E_NOMEM, "batcher: out of memory for %zu indices", n);
	for (size_t i = 0; i < n; i++)
		b->perm[i] = (uint32_t)i;
	b->n = n;
	b->batch = batch;
	b->pos = n;
	return ANN_OK;
}

void ann_batcher_destroy(ann_batcher *b)
{
	ann_free(b->perm);
	memset(b, 0, sizeof(*b));
}

void ann_batcher_shuffle(ann_batcher *b, ann_rng *rng)
{
	for (size_t i = b->n - 1; i > 0; i--) {
		size_t j = (size_t)ann_rng_below(rng, i + 1);
		uint32_t t = b->perm[i];
		b->perm[i] = b->perm[j];
		b->perm[j] = t;
	}
	b->pos = 0;
}

size_t ann_batcher_next(ann_batcher *b, const uint32_t **idx)
{
	size_t c = ANN_MIN(b->batch, b->n - b->pos);
	*idx = b->perm + b->pos;
	b->pos += c;
	return c;
}

void ann_gather_rows(const float *src, size_t dim, const uint32_t *idx, size_t n, float *dst)
{
	for (size_t r = 0; r < n; r++)
		memcpy(dst + r * dim, src + (size_t)idx[r] * dim, dim * sizeof(float));
}

/* ---- model blob ---------------------------------------------------------------------- */

#define BLOB_HDR 24u  /* fixed header bytes before the layer table */
#define BLOB_LAYER 8u /* bytes per layer entry */
#define BLOB_TRAIL 8u /* XXH64 trailer */

size_t ann_mlp_blob_bytes(const ann_mlp *m)
{
	return BLOB_HDR + (size_t)BLOB_LAYER * m->n_layers + m->n_params * 4 + BLOB_TRAIL;
}

int ann_mlp_save(const ann_mlp *m, uint8_t **blob, size_t *len, ann_error *err)
{
	size_t n = ann_mlp_blob_bytes(m);
	*blob = NULL;
	*len = 0;
	uint8_t *b = ann_malloc(n);
	if (!b)
		return ann_err(err, ANN_E_NOMEM, "mlp save: out of memory for a %zu-byte blob", n);
	ann_st32(b, ANN_MLP_MAGIC);
	ann_st16(b + 4, ANN_MLP_FORMAT_MAJOR);
	ann_st16(b + 6, ANN_MLP_FORMAT_MINOR);
	ann_st32(b + 8, m->n_layers);
	ann_st32(b + 12, m->in_dim);
	ann_st64(b + 16, n);
	uint8_t *p = b + BLOB_HDR;
	for (uint32_t l = 0; l < m->n_layers; l++, p += BLOB_LAYER) {
		ann_st32(p, m->layers[l].out);
		ann_st32(p + 4, (uint32_t)m->layers[l].act);
	}
	for (size_t i = 0; i < m->n_params; i++, p += 4)
		ann_stf32(p, m->params[i]);
	ann_st64(p, XXH64(b, n - BLOB_TRAIL, 0));
	*blob = b;
	*len = n;
	return ANN_OK;
}

int ann_mlp_load(const uint8_t *blob, size_t len, ann_mlp **out, ann_error *err)
{
	uint32_t outs[ANN_MLP_MAX_LAYERS], acts[ANN_MLP_MAX_LAYERS];
	size_t n_params;
	*out = NULL;
	if (len < 4)
		return ann_err(err, ANN_E_CORRUPT, "mlp blob: %zu bytes, too short for the magic", len);
	uint32_t magic = ann_ld32(blob);
	if (magic != ANN_MLP_MAGIC)
		return ann_err(err, ANN_E_FORMAT, "mlp blob: magic 0x%08x at offset 0, expected 0x%08x",
			       magic, ANN_MLP_MAGIC);
	if (len < BLOB_HDR + BLOB_LAYER + BLOB_TRAIL)
		return ann_err(err, ANN_E_CORRUPT,
			       "mlp blob: truncated: %zu bytes, the smallest model has %u", len,
			       BLOB_HDR + BLOB_LAYER + BLOB_TRAIL);
	uint64_t total = ann_ld64(blob + 16);
	if (total != len)
		return ann_err(err, ANN_E_CORRUPT,
			       "mlp blob: header (offset 16) says %" PRIu64 " bytes, blob has %zu", total,
			       len);
	uint64_t want = ann_ld64(blob + len - BLOB_TRAIL), got = XXH64(blob, len - BLOB_TRAIL, 0);
	if (want != got)
		return ann_err(err, ANN_E_CORRUPT,
			       "mlp blob: checksum mismatch: trailer (offset %zu) 0x%016" PRIx64
			       ", data 0x%016" PRIx64,
			       len - BLOB_TRAIL, want, got);
	uint16_t major = ann_ld16(blob + 4), minor = ann_ld16(blob + 6);
	if (major != ANN_MLP_FORMAT_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "mlp blob: format version %u.%u, this build reads %u.x",
			       major, minor, ANN_MLP_FORMAT_MAJOR);
	uint32_t L = ann_ld32(blob + 8), in_dim = ann_ld32(blob + 12);
	if (L < 1 || L > ANN_MLP_MAX_LAYERS)
		return ann_err(err, ANN_E_CORRUPT, "mlp blob: %u layers at offset 8, expected 1..%u", L,
			       ANN_MLP_MAX_LAYERS);
	if (len < BLOB_HDR + (size_t)BLOB_LAYER * L + BLOB_TRAIL)
		return ann_err(err, ANN_E_CORRUPT, "mlp blob: %zu bytes cannot hold the table of %u layers",
			       len, L);
	for (uint32_t l = 0; l < L; l++) {
		outs[l] = ann_ld32(blob + BLOB_HDR + BLOB_LAYER * l);
		acts[l] = ann_ld32(blob + BLOB_HDR + BLOB_LAYER * l + 4);
	}
	ANN_TRY(check_layout(L, in_dim, outs, acts, ANN_E_CORRUPT, "mlp blob", &n_params, err));
	size_t expect = BLOB_HDR + (size_t)BLOB_LAYER * L + n_params * 4 + BLOB_TRAIL;
	if (expect != len)
		return ann_err(err, ANN_E_CORRUPT, "mlp blob: layers need %zu bytes in all, blob has %zu",
			       expect, len);
	ann_mlp *m;
	ANN_TRY(mlp_alloc(L, in_dim, outs, acts, n_params, &m, err));
	const uint8_t *p = blob + BLOB_HDR + (size_t)BLOB_LAYER * L;
	for (size_t i = 0; i < n_params; i++, p += 4) {
		float v = ann_ldf32(p);
		if (!isfinite(v)) {
			size_t off = (size_t)(p - blob);
			ann_mlp_free(m);
			return ann_err(err, ANN_E_CORRUPT,
				       "mlp blob: parameter %zu (offset %zu) is not finite", i, off);
		}
		m->params[i] = v;
	}
	*out = m;
	return ANN_OK;
}

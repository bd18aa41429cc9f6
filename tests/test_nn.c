/* SPDX-License-Identifier: MIT */
/*
 * test_nn.c: the nn module. Description: finite-difference gradient checks
 * (every activation, the input gradient, chained networks, every loss, the
 * DEC gradients against a double-precision reference), training that learns
 * (autoencoder on low-rank data, classifier on blobs), Adam, mini-batches,
 * inference against training forward and a naive reference, blob round trip
 * and corruption, allocation failure, and a throughput/latency printout.
 */
#include <cblas.h>
#include <float.h>
#include <xxhash.h>

#include "nn.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------ */

static ann_mlp_spec mkspec(uint32_t in, uint32_t out, uint32_t nh, const uint32_t *hidden, ann_act hact,
			   ann_act oact)
{
	ann_mlp_spec s;
	memset(&s, 0, sizeof(s));
	s.in_dim = in;
	s.out_dim = out;
	s.n_hidden = nh;
	for (uint32_t i = 0; i < nh; i++)
		s.hidden[i] = hidden[i];
	s.hidden_act = hact;
	s.out_act = oact;
	return s;
}

static ann_mlp *mk(const ann_mlp_spec *s, ann_rng *rng)
{
	ann_mlp *m = NULL;
	ann_error e = {0};
	int rc = ann_mlp_new(s, rng, &m, &e);
	if (rc < 0)
		T_FAIL("ann_mlp_new: %s", e.msg);
	return m;
}

static float *fmalloc(size_t n)
{
	float *p = malloc((n ? n : 1) * sizeof(float));
	if (!p)
		T_FAIL("out of memory");
	return p;
}

static void fill_normal(ann_rng *r, float *x, size_t n, double sd)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (float)(ann_rng_normal(r) * sd);
}

/* Naive double-precision forward, the oracle for inference. */
static void ref_forward(const ann_mlp *m, const float *x, size_t n, double *out)
{
	double *a = calloc((size_t)m->max_width + m->in_dim, sizeof(double));
	double *b = calloc((size_t)m->max_width + m->in_dim, sizeof(double));
	for (size_t i = 0; i < n; i++) {
		for (uint32_t t = 0; t < m->in_dim; t++)
			a[t] = x[i * m->in_dim + t];
		for (uint32_t l = 0; l < m->n_layers; l++) {
			const ann_layer *L = &m->layers[l];
			for (uint32_t o = 0; o < L->out; o++) {
				double s = L->b[o];
				for (uint32_t t = 0; t < L->in; t++)
					s += (double)L->w[(size_t)o * L->in + t] * a[t];
				b[o] = s;
			}
			if (L->act == ANN_ACT_RELU)
				for (uint32_t o = 0; o < L->out; o++)
					b[o] = b[o] > 0 ? b[o] : 0;
			else if (L->act == ANN_ACT_TANH)
				for (uint32_t o = 0; o < L->out; o++)
					b[o] = tanh(b[o]);
			else if (L->act == ANN_ACT_SOFTMAX) {
				double mx = -INFINITY, s = 0;
				for (uint32_t o = 0; o < L->out; o++)
					mx = fmax(mx, b[o]);
				for (uint32_t o = 0; o < L->out; o++)
					s += (b[o] = exp(b[o] - mx));
				for (uint32_t o = 0; o < L->out; o++)
					b[o] /= s;
			}
			double *t = a;
			a = b;
			b = t;
		}
		for (uint32_t o = 0; o < m->out_dim; o++)
			out[i * m->out_dim + o] = a[o];
	}
	free(a);
	free(b);
}

/* Compares analytic gradients with finite differences:
 * |an - fd| <= rtol |an| + atol * max|an|. Skipped entries are ignored. */
static void check_grad(const char *what, const double *an, const double *fd, const bool *skip, size_t n,
		       double rtol, double atol)
{
	double scale = 0, worst = 0;
	size_t nskip = 0;
	for (size_t i = 0; i < n; i++)
		scale = fmax(scale, fabs(an[i]));
	for (size_t i = 0; i < n; i++) {
		if (skip && skip[i]) {
			nskip++;
			continue;
		}
		double err = fabs(an[i] - fd[i]);
		worst = fmax(worst, err / (rtol * fabs(an[i]) + atol * scale + 1e-12));
		if (err > rtol * fabs(an[i]) + atol * scale + 1e-12)
			T_FAIL("%s: entry %zu: analytic %.8g, finite difference %.8g (max |g| %.4g)", what, i,
			       an[i], fd[i], scale);
	}
	if (nskip * 5 > n)
		T_FAIL("%s: %zu of %zu entries skipped at ReLU kinks", what, nskip, n);
	ASSERT_TRUE(scale > 0);
	printf("  %-44s %4zu entries, %2zu at kinks, worst err/tol %.3f\n", what, n, nskip, worst);
}

/* True when every ReLU pre-activation of x's forward is at least margin
 * away from 0 and every ReLU layer has a positive unit in every row. */
static bool relu_clear(const ann_mlp *m, const float *x, size_t n, double margin)
{
	bool ok = true;
	double *a = calloc((size_t)m->max_width + m->in_dim, sizeof(double));
	double *b = calloc((size_t)m->max_width + m->in_dim, sizeof(double));
	for (size_t i = 0; i < n && ok; i++) {
		for (uint32_t t = 0; t < m->in_dim; t++)
			a[t] = x[i * m->in_dim + t];
		for (uint32_t l = 0; l < m->n_layers && ok; l++) {
			const ann_layer *L = &m->layers[l];
			bool live = false;
			for (uint32_t o = 0; o < L->out; o++) {
				double z = L->b[o];
				for (uint32_t t = 0; t < L->in; t++)
					z += (double)L->w[(size_t)o * L->in + t] * a[t];
				if (L->act == ANN_ACT_RELU) {
					ok = ok && fabs(z) >= margin;
					live = live || z > 0;
					z = z > 0 ? z : 0;
				} else if (L->act == ANN_ACT_TANH) {
					z = tanh(z);
				}
				b[o] = z; /* softmax is last: its value is not needed */
			}
			ok = ok && (L->act != ANN_ACT_RELU || live);
			double *t = a;
			a = b;
			b = t;
		}
	}
	free(a);
	free(b);
	return ok;
}

/* ---- specification ------------------------------------------------------------------ */

static void test_spec(ann_rng *rng)
{
	ann_error e = {0};
	ann_mlp *m = NULL;
	uint32_t h[2] = {8, 4};
	ann_mlp_spec s = mkspec(0, 3, 2, h, ANN_ACT_RELU, ANN_ACT_LINEAR);
	ASSERT_ERR(ann_mlp_new(&s, rng, &m, &e), e, ANN_E_INVAL, "input dimension 0");
	ASSERT_TRUE(m == NULL);
	s = mkspec(5, 3, 2, h, ANN_ACT_SOFTMAX, ANN_ACT_LINEAR);
	ASSERT_ERR(ann_mlp_new(&s, rng, &m, &e), e, ANN_E_INVAL, "hidden activation");
	s = mkspec(5, 3, 2, h, ANN_ACT_RELU, ANN_ACT_LINEAR);
	s.n_hidden = 16;
	ASSERT_ERR(ann_mlp_new(&s, rng, &m, &e), e, ANN_E_INVAL, "hidden layers");
	s = mkspec(5, ANN_MLP_MAX_DIM + 1, 2, h, ANN_ACT_RELU, ANN_ACT_LINEAR);
	ASSERT_ERR(ann_mlp_new(&s, rng, &m, &e), e, ANN_E_INVAL, "layer 2 has width");
	uint32_t big[2] = {ANN_MLP_MAX_DIM, ANN_MLP_MAX_DIM};
	s = mkspec(5, 3, 2, big, ANN_ACT_RELU, ANN_ACT_LINEAR);
	ASSERT_ERR(ann_mlp_new(&s, rng, &m, &e), e, ANN_E_INVAL, "parameters");
	s = mkspec(5, 3, 2, h, ANN_ACT_RELU, (ann_act)9);
	ASSERT_ERR(ann_mlp_new(&s, rng, &m, &e), e, ANN_E_INVAL, "output activation");

	/* Shapes, offsets, mirror. */
	uint32_t h3[3] = {7, 6, 5};
	s = mkspec(9, 4, 3, h3, ANN_ACT_TANH, ANN_ACT_LINEAR);
	m = mk(&s, rng);
	ASSERT_EQ(m->n_layers, 4);
	ASSERT_EQ(m->n_params, 9 * 7 + 7 + 7 * 6 + 6 + 6 * 5 + 5 + 5 * 4 + 4);
	ASSERT_EQ(m->max_width, 7);
	ASSERT_EQ(m->max_hidden, 7);
	ASSERT_EQ(m->layers[2].in, 6);
	ASSERT_EQ(m->layers[3].off_b + 4, m->n_params);
	ASSERT_EQ(ann_mlp_bytes(m), sizeof(ann_mlp) + m->n_params * 4);
	ASSERT_EQ(ann_mlp_infer_scratch(m, 10), 2 * 10 * 7);
	ann_mlp_spec d;
	ann_mlp_spec_mirror(&s, ANN_ACT_LINEAR, &d);
	ASSERT_EQ(d.in_dim, 4);
	ASSERT_EQ(d.out_dim, 9);
	ASSERT_EQ(d.n_hidden, 3);
	ASSERT_EQ(d.hidden[0], 5);
	ASSERT_EQ(d.hidden[2], 7);
	/* Xavier for tanh layers: the sample variance of layer 0 is near 2/(9+7). */
	double v = 0;
	for (size_t i = 0; i < 63; i++)
		v += (double)m->layers[0].w[i] * m->layers[0].w[i];
	ASSERT_NEAR(v / 63, 2.0 / 16, 0.5);
	for (uint32_t i = 0; i < 7; i++)
		ASSERT_EQ(m->layers[0].b[i], 0);
	ann_mlp_free(m);

	/* Same seed, same weights; workspace of another shape refused. */
	ann_rng r1, r2;
	ann_rng_seed(&r1, 42);
	ann_rng_seed(&r2, 42);
	s = mkspec(9, 4, 2, h, ANN_ACT_RELU, ANN_ACT_SOFTMAX);
	ann_mlp *a = mk(&s, &r1), *b = mk(&s, &r2);
	ASSERT_TRUE(memcmp(a->params, b->params, a->n_params * 4) == 0);
	ann_mlp *c = mk(&d, rng);
	ann_mlp_ws *ws = NULL;
	ASSERT_OK(ann_mlp_ws_new(a, 4, &ws, &te_));
	float x[9 * 5] = {0};
	ASSERT_ERR(ann_mlp_forward(c, ws, x, 1, NULL, &e), e, ANN_E_INVAL, "another network");
	ASSERT_ERR(ann_mlp_forward(a, ws, x, 5, NULL, &e), e, ANN_E_INVAL, "5 rows");
	ann_mlp_ws_free(ws);
	ASSERT_ERR(ann_mlp_ws_new(a, 0, &ws, &e), e, ANN_E_INVAL, "batch of 0");
	ASSERT_TRUE(ws == NULL);
	ann_mlp_free(a);
	ann_mlp_free(b);
	ann_mlp_free(c);
}

/* ---- gradient checks: layers and activations ----------------------------------------- */

/* L = sum_ij c_ij y_ij, in double, from a fresh forward. */
static double lin_loss(const ann_mlp *m, ann_mlp_ws *ws, const float *x, size_t n, const float *c)
{
	const float *y;
	if (ann_mlp_forward(m, ws, x, n, &y, NULL) < 0)
		T_FAIL("forward failed");
	double s = 0;
	for (size_t i = 0; i < n * m->out_dim; i++)
		s += (double)c[i] * y[i];
	return s;
}

/* ReLU pattern of every ReLU layer of the last forward, into mask; returns its length. */
static size_t relu_mask(const ann_mlp *m, const ann_mlp_ws *ws, size_t n, unsigned char *mask)
{
	size_t k = 0;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		if (m->layers[l].act != ANN_ACT_RELU)
			continue;
		const float *a = ann_mlp_ws_layer(ws, l);
		for (size_t i = 0; i < n * m->layers[l].out; i++)
			mask[k++] = a[i] > 0;
	}
	return k;
}

static size_t mask_cap(const ann_mlp *m, size_t n)
{
	size_t k = 0;
	for (uint32_t l = 0; l < m->n_layers; l++)
		k += n * m->layers[l].out;
	return k;
}

/* Central difference of lin_loss in *v (a float inside params or x); sets
 * *kink when a ReLU changes state within [v - h, v + h]. */
static double fd_entry(const ann_mlp *m, ann_mlp_ws *ws, const float *x, size_t n, const float *c, float *v,
		       float h, const unsigned char *base, unsigned char *tmp, bool *kink)
{
	float v0 = *v;
	float vp = v0 + h, vm = v0 - h;
	size_t k;
	*v = vp;
	double lp = lin_loss(m, ws, x, n, c);
	k = relu_mask(m, ws, n, tmp);
	*kink = memcmp(base, tmp, k) != 0;
	*v = vm;
	double lm = lin_loss(m, ws, x, n, c);
	relu_mask(m, ws, n, tmp);
	*kink = *kink || memcmp(base, tmp, k) != 0;
	*v = v0;
	return (lp - lm) / ((double)vp - (double)vm);
}

static void grad_check_net(ann_rng *rng, const char *name, uint32_t in, uint32_t nh, const uint32_t *hidden,
			   ann_act hact, ann_act oact, uint32_t out)
{
	const size_t n = 3;
	const float h = 3e-3f;
	ann_mlp_spec s = mkspec(in, out, nh, hidden, hact, oact);
	ann_mlp *m = mk(&s, rng);
	ann_mlp_ws *ws;
	ASSERT_OK(ann_mlp_ws_new(m, n, &ws, &te_));
	float *x = fmalloc(n * in), *c = fmalloc(n * out), *dx = fmalloc(n * in);
	/* Draw biases (non-zero, so every bias path is exercised) and inputs
	 * until no ReLU sits within 0.02 of its kink and every ReLU layer has a
	 * live unit in every row; kinks met anyway by a perturbation are skipped. */
	int tries = 0;
	do {
		if (++tries > 1000)
			T_FAIL("%s: no input away from the ReLU kinks", name);
		for (uint32_t l = 0; l < m->n_layers; l++)
			fill_normal(rng, m->layers[l].b, m->layers[l].out, 0.3);
		fill_normal(rng, x, n * in, 1.0);
	} while (!relu_clear(m, x, n, 0.02));
	fill_normal(rng, c, n * out, 1.0);
	size_t cap = mask_cap(m, n);
	unsigned char *base = malloc(cap + 1), *tmp = malloc(cap + 1);

	lin_loss(m, ws, x, n, c);
	relu_mask(m, ws, n, base);
	ann_mlp_backward(m, ws, c, dx, false);
	size_t np = m->n_params;
	double *an = malloc(np * sizeof(double)), *fd = malloc(np * sizeof(double));
	bool *skip = calloc(np, sizeof(bool));
	const float *g = ann_mlp_ws_grad(ws);
	for (size_t i = 0; i < np; i++)
		an[i] = g[i];
	for (size_t i = 0; i < np; i++)
		fd[i] = fd_entry(m, ws, x, n, c, &m->params[i], h, base, tmp, &skip[i]);
	char what[96];
	snprintf(what, sizeof what, "%s: dL/dparams", name);
	check_grad(what, an, fd, skip, np, 1e-2, 2e-3);

	double *anx = malloc(n * in * sizeof(double)), *fdx = malloc(n * in * sizeof(double));
	bool *skipx = calloc(n * in, sizeof(bool));
	for (size_t i = 0; i < n * in; i++) {
		anx[i] = dx[i];
		fdx[i] = fd_entry(m, ws, x, n, c, &x[i], h, base, tmp, &skipx[i]);
	}
	snprintf(what, sizeof what, "%s: dL/dx", name);
	check_grad(what, anx, fdx, skipx, n * in, 1e-2, 2e-3);

	/* Gradients are linear in dy: g(c) + g(c2) = g(c + c2) through accumulate. */
	float *c2 = fmalloc(n * out), *c3 = fmalloc(n * out);
	fill_normal(rng, c2, n * out, 1.0);
	for (size_t i = 0; i < n * out; i++)
		c3[i] = c[i] + c2[i];
	float *gsum = fmalloc(np);
	ASSERT_OK(ann_mlp_forward(m, ws, x, n, NULL, &te_));
	ann_mlp_backward(m, ws, c3, NULL, false);
	memcpy(gsum, g, np * sizeof(float));
	ann_mlp_backward(m, ws, c, NULL, false);
	ann_mlp_backward(m, ws, c2, NULL, true);
	for (size_t i = 0; i < np; i++)
		ASSERT_NEAR(g[i], gsum[i], 1e-4);

	free(c2);
	free(c3);
	free(gsum);
	free(anx);
	free(fdx);
	free(skipx);
	free(an);
	free(fd);
	free(skip);
	free(base);
	free(tmp);
	free(x);
	free(c);
	free(dx);
	ann_mlp_ws_free(ws);
	ann_mlp_free(m);
}

static void test_grad_layers(ann_rng *rng)
{
	uint32_t h2[2] = {7, 6}, h3[3] = {6, 5, 4};
	grad_check_net(rng, "relu -> linear", 5, 2, h2, ANN_ACT_RELU, ANN_ACT_LINEAR, 4);
	grad_check_net(rng, "tanh -> tanh", 5, 2, h2, ANN_ACT_TANH, ANN_ACT_TANH, 4);
	grad_check_net(rng, "linear -> relu", 5, 2, h2, ANN_ACT_LINEAR, ANN_ACT_RELU, 4);
	grad_check_net(rng, "relu -> softmax", 5, 2, h2, ANN_ACT_RELU, ANN_ACT_SOFTMAX, 4);
	grad_check_net(rng, "tanh x3 -> linear", 4, 3, h3, ANN_ACT_TANH, ANN_ACT_LINEAR, 3);
	grad_check_net(rng, "single softmax layer", 6, 0, NULL, ANN_ACT_RELU, ANN_ACT_SOFTMAX, 5);
	grad_check_net(rng, "single linear layer", 6, 0, NULL, ANN_ACT_RELU, ANN_ACT_LINEAR, 2);
}

/* Encoder and decoder chained: L = MSE(dec(enc(x)), x), gradient of the
 * encoder's parameters through the decoder's dL/d(input). */
static double chain_loss(const ann_mlp *enc, ann_mlp_ws *we, const ann_mlp *dec, ann_mlp_ws *wd,
			 const float *x, size_t n, float *gy)
{
	const float *z, *y;
	ASSERT_OK(ann_mlp_forward(enc, we, x, n, &z, &te_));
	ASSERT_OK(ann_mlp_forward(dec, wd, z, n, &y, &te_));
	return ann_loss_mse(y, x, n, enc->in_dim, gy);
}

static void test_grad_chain(ann_rng *rng)
{
	const size_t n = 4, d = 6;
	uint32_t he[1] = {5}, hd[1] = {5};
	ann_mlp_spec se = mkspec(d, 3, 1, he, ANN_ACT_TANH, ANN_ACT_LINEAR);
	ann_mlp_spec sd = mkspec(3, d, 1, hd, ANN_ACT_TANH, ANN_ACT_LINEAR);
	ann_mlp *enc = mk(&se, rng), *dec = mk(&sd, rng);
	ann_mlp_ws *we, *wd;
	ASSERT_OK(ann_mlp_ws_new(enc, n, &we, &te_));
	ASSERT_OK(ann_mlp_ws_new(dec, n, &wd, &te_));
	float x[4 * 6], gy[4 * 6], dz[4 * 3];
	fill_normal(rng, x, n * d, 1.0);
	chain_loss(enc, we, dec, wd, x, n, gy);
	ann_mlp_backward(dec, wd, gy, dz, false);
	ann_mlp_backward(enc, we, dz, NULL, false);
	size_t np = enc->n_params;
	double *an = malloc(np * sizeof(double)), *fd = malloc(np * sizeof(double));
	const float *g = ann_mlp_ws_grad(we);
	for (size_t i = 0; i < np; i++)
		an[i] = g[i];
	for (size_t i = 0; i < np; i++) {
		float v0 = enc->params[i], vp = v0 + 3e-3f, vm = v0 - 3e-3f;
		enc->params[i] = vp;
		double lp = chain_loss(enc, we, dec, wd, x, n, NULL);
		enc->params[i] = vm;
		double lm = chain_loss(enc, we, dec, wd, x, n, NULL);
		enc->params[i] = v0;
		fd[i] = (lp - lm) / ((double)vp - vm);
	}
	check_grad("encoder through decoder (MSE)", an, fd, NULL, np, 1e-2, 2e-3);
	free(an);
	free(fd);
	ann_mlp_ws_free(we);
	ann_mlp_ws_free(wd);
	ann_mlp_free(enc);
	ann_mlp_free(dec);
}

/* ---- gradient checks: losses -------------------------------------------------------- */

enum { L_MSE, L_CE_HARD, L_CE_SOFT, L_KL };

static double eval_loss(int which, const float *y, const float *t, const uint32_t *lab, size_t n, size_t m,
			float *grad)
{
	switch (which) {
	case L_MSE:
		return ann_loss_mse(y, t, n, m, grad);
	case L_CE_HARD:
		return ann_loss_ce_hard(y, lab, n, m, grad);
	case L_CE_SOFT:
		return ann_loss_ce_soft(y, t, n, m, grad);
	default:
		return ann_loss_kl(t, y, n, m, grad);
	}
}

/* Random probability rows (n x m). */
static void rand_simplex(ann_rng *rng, float *p, size_t n, size_t m)
{
	for (size_t i = 0; i < n; i++) {
		double s = 0;
		for (size_t j = 0; j < m; j++)
			s += (p[i * m + j] = (float)(0.05 + ann_rng_uniform(rng)));
		for (size_t j = 0; j < m; j++)
			p[i * m + j] = (float)(p[i * m + j] / s);
	}
}

static void test_grad_losses(ann_rng *rng)
{
	const size_t n = 5, m = 4;
	static const char *names[] = {"MSE", "CE hard", "CE soft", "KL(P||Q)"};
	float y[5 * 4], t[5 * 4], grad[5 * 4];
	uint32_t lab[5];
	double an[5 * 4], fd[5 * 4];
	for (int which = L_MSE; which <= L_KL; which++) {
		if (which == L_MSE) {
			fill_normal(rng, y, n * m, 1.0);
			fill_normal(rng, t, n * m, 1.0);
		} else {
			rand_simplex(rng, y, n, m);
			rand_simplex(rng, t, n, m);
		}
		for (size_t i = 0; i < n; i++)
			lab[i] = (uint32_t)ann_rng_below(rng, m);
		double l0 = eval_loss(which, y, t, lab, n, m, grad);
		double l1 = eval_loss(which, y, t, lab, n, m, NULL);
		ASSERT_EQ(l0 == l1, 1);
		for (size_t i = 0; i < n * m; i++) {
			an[i] = grad[i];
			float v0 = y[i], vp = v0 + 1e-3f, vm = v0 - 1e-3f;
			y[i] = vp;
			double lp = eval_loss(which, y, t, lab, n, m, NULL);
			y[i] = vm;
			double lm = eval_loss(which, y, t, lab, n, m, NULL);
			y[i] = v0;
			fd[i] = (lp - lm) / ((double)vp - vm);
		}
		char what[64];
		snprintf(what, sizeof what, "loss %s", names[which]);
		check_grad(what, an, fd, NULL, n * m, 2e-3, 1e-4);
	}

	/* Oracle values: MSE and KL by hand on a tiny case; KL(P||P) = 0. */
	float a[2] = {1, 3}, b[2] = {2, 1};
	ASSERT_NEAR(ann_loss_mse(a, b, 1, 2, NULL), (1.0 + 4.0) / 2, 1e-12);
	float p[2] = {0.25f, 0.75f}, q[2] = {0.5f, 0.5f};
	ASSERT_NEAR(ann_loss_kl(p, q, 1, 2, NULL), 0.25 * log(0.5) + 0.75 * log(1.5), 1e-7);
	ASSERT_NEAR(ann_loss_kl(p, p, 1, 2, NULL), 0.0, 1e-12);
	uint32_t l1[1] = {1};
	ASSERT_NEAR(ann_loss_ce_hard(p, l1, 1, 2, NULL), -log(0.75), 1e-7);
	float z0[2] = {1.0f, 0.0f};
	uint32_t l0[1] = {1};
	ASSERT_TRUE(isfinite(ann_loss_ce_hard(z0, l0, 1, 2, grad)) && isfinite(grad[1]));

	/* Through a softmax layer the CE gradient is (y - target)/n: check db. */
	ann_mlp_spec s = mkspec(6, m, 0, NULL, ANN_ACT_RELU, ANN_ACT_SOFTMAX);
	ann_mlp *net = mk(&s, rng);
	ann_mlp_ws *ws;
	ASSERT_OK(ann_mlp_ws_new(net, n, &ws, &te_));
	float x[5 * 6];
	fill_normal(rng, x, n * 6, 1.0);
	const float *yy;
	for (int soft = 0; soft < 2; soft++) {
		ASSERT_OK(ann_mlp_forward(net, ws, x, n, &yy, &te_));
		rand_simplex(rng, t, n, m);
		if (soft)
			ann_loss_ce_soft(yy, t, n, m, grad);
		else
			ann_loss_ce_hard(yy, lab, n, m, grad);
		ann_mlp_backward(net, ws, grad, NULL, false);
		const float *g = ann_mlp_ws_grad(ws);
		for (size_t j = 0; j < m; j++) {
			double want = 0;
			for (size_t i = 0; i < n; i++)
				want += (yy[i * m + j] - (soft ? t[i * m + j] : (lab[i] == j ? 1.0 : 0.0))) /
					n;
			ASSERT_NEAR(g[net->layers[0].off_b + j], want, 1e-5);
		}
	}
	ann_mlp_ws_free(ws);
	ann_mlp_free(net);

	/* softmax rows: stable on large inputs, rows sum to 1. */
	float big[3] = {1000.0f, 1001.0f, 999.0f};
	ann_softmax_rows(big, 1, 3);
	ASSERT_NEAR(big[0] + big[1] + big[2], 1.0, 1e-6);
	ASSERT_NEAR(big[1], exp(1.0) / (1 + exp(1.0) + exp(-1.0)), 1e-6);
}

/* ---- DEC ----------------------------------------------------------------------------- */

/* Double reference: q (n x k) and the loss (1/n) sum p log(p/q). */
static double ref_dec(const double *z, const double *mu, const float *p, size_t n, size_t e, size_t k,
		      double alpha, double *q)
{
	double L = 0;
	double *row = malloc(k * sizeof(double));
	for (size_t i = 0; i < n; i++) {
		double s = 0;
		for (size_t j = 0; j < k; j++) {
			double d = 0;
			for (size_t t = 0; t < e; t++)
				d += (z[i * e + t] - mu[j * e + t]) * (z[i * e + t] - mu[j * e + t]);
			row[j] = pow(1 + d / alpha, -(alpha + 1) / 2);
			s += row[j];
		}
		for (size_t j = 0; j < k; j++) {
			row[j] /= s;
			if (q)
				q[i * k + j] = row[j];
			if (p && p[i * k + j] > 0)
				L += p[i * k + j] * log(p[i * k + j] / row[j]);
		}
	}
	free(row);
	return L / n;
}

static void test_dec(ann_rng *rng)
{
	const size_t n = 7, e = 3, k = 4;
	const float alphas[2] = {1.0f, 0.6f};
	for (int ai = 0; ai < 2; ai++) {
		float alpha = alphas[ai];
		float z[7 * 3], mu[4 * 3], q[7 * 4], q2[7 * 4], p[7 * 4], dz[7 * 3], dmu[4 * 3];
		double zd[7 * 3], mud[4 * 3], qref[7 * 4];
		fill_normal(rng, z, n * e, 1.0);
		fill_normal(rng, mu, k * e, 1.0);
		for (size_t i = 0; i < n * e; i++)
			zd[i] = z[i];
		for (size_t i = 0; i < k * e; i++)
			mud[i] = mu[i];

		/* q against the double reference; rows sum to 1. */
		ann_dec_soft_assign(z, n, e, mu, k, alpha, q);
		ref_dec(zd, mud, NULL, n, e, k, alpha, qref);
		for (size_t i = 0; i < n * k; i++)
			ASSERT_NEAR(q[i], qref[i], 1e-5);

		/* p = (q^2 / f) normalised, against a naive double computation; in place too. */
		ASSERT_OK(ann_dec_target(q, n, k, p, &te_));
		for (size_t i = 0; i < n; i++) {
			double s = 0, w[4];
			for (size_t j = 0; j < k; j++) {
				double f = 0;
				for (size_t r = 0; r < n; r++)
					f += q[r * k + j];
				s += (w[j] = (double)q[i * k + j] * q[i * k + j] / f);
			}
			for (size_t j = 0; j < k; j++)
				ASSERT_NEAR(p[i * k + j], w[j] / s, 1e-6);
		}
		memcpy(q2, q, sizeof q);
		ASSERT_OK(ann_dec_target(q2, n, k, q2, &te_));
		ASSERT_TRUE(memcmp(q2, p, sizeof p) == 0);
		/* streamed in two chunks of rows: the same target */
		double f[4] = {0};
		ann_dec_freq_add(q, 3, k, f);
		ann_dec_freq_add(q + 3 * k, n - 3, k, f);
		ann_dec_target_rows(q + 2 * k, n - 2, k, f, q2);
		for (size_t i = 0; i < (n - 2) * k; i++)
			ASSERT_NEAR(q2[i], p[2 * k + i], 1e-7);

		/* Gradients, loss and q from ann_dec_grad. */
		double loss;
		ASSERT_OK(ann_dec_grad(z, n, e, mu, k, alpha, p, q2, dz, dmu, &loss, &te_));
		for (size_t i = 0; i < n * k; i++)
			ASSERT_NEAR(q2[i], q[i], 1e-6);
		ASSERT_NEAR(loss, ref_dec(zd, mud, p, n, e, k, alpha, NULL), 1e-5);
		ASSERT_NEAR(loss, ann_loss_kl(p, q, n, k, NULL), 1e-5);

		/* (1) float32 finite differences of the library's own loss */
		double an[7 * 3 + 4 * 3], fd[7 * 3 + 4 * 3], fd2[7 * 3 + 4 * 3];
		size_t nz = n * e, nm = k * e;
		for (size_t i = 0; i < nz + nm; i++) {
			float *v = i < nz ? &z[i] : &mu[i - nz];
			an[i] = i < nz ? dz[i] : dmu[i - nz];
			float v0 = *v, vp = v0 + 1e-2f, vm = v0 - 1e-2f;
			double lp, lm;
			*v = vp;
			ASSERT_OK(ann_dec_grad(z, n, e, mu, k, alpha, p, NULL, NULL, NULL, &lp, &te_));
			*v = vm;
			ASSERT_OK(ann_dec_grad(z, n, e, mu, k, alpha, p, NULL, NULL, NULL, &lm, &te_));
			*v = v0;
			fd[i] = (lp - lm) / ((double)vp - vm);
			/* (2) double finite differences of the reference loss: tight */
			double *vd = i < nz ? &zd[i] : &mud[i - nz];
			double d0 = *vd;
			*vd = d0 + 1e-6;
			lp = ref_dec(zd, mud, p, n, e, k, alpha, NULL);
			*vd = d0 - 1e-6;
			lm = ref_dec(zd, mud, p, n, e, k, alpha, NULL);
			*vd = d0;
			fd2[i] = (lp - lm) / 2e-6;
		}
		char what[64];
		snprintf(what, sizeof what, "DEC alpha %.1f dz,dmu (float FD)", (double)alpha);
		check_grad(what, an, fd, NULL, nz + nm, 2e-2, 5e-3);
		snprintf(what, sizeof what, "DEC alpha %.1f dz,dmu (double reference FD)", (double)alpha);
		check_grad(what, an, fd2, NULL, nz + nm, 1e-3, 1e-4);
		/* The sum over i of dz_i plus the sum over j of dmu_j is 0 (translation invariance). */
		for (size_t t = 0; t < e; t++) {
			double s = 0;
			for (size_t i = 0; i < n; i++)
				s += dz[i * e + t];
			for (size_t j = 0; j < k; j++)
				s += dmu[j * e + t];
			ASSERT_NEAR(s, 0.0, 1e-5);
		}
	}
}

/* ---- Adam ------------------------------------------------------------------------------- */

static void test_adam(ann_rng *rng)
{
	ann_error e = {0};
	ann_adam_opts o;
	ann_adam_opts_init(&o);
	ann_adam *a = NULL;
	o.beta1 = 1.0f;
	ASSERT_ERR(ann_adam_new(4, &o, &a, &e), e, ANN_E_INVAL, "beta1 1");
	ASSERT_TRUE(a == NULL);

	/* First step: bias correction makes it p -= lr * g / (|g| + eps). */
	ann_adam_opts_init(&o);
	o.lr = 0.01f;
	float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.3f, -4.0f, 1e-3f};
	ASSERT_OK(ann_adam_new(3, &o, &a, &te_));
	ann_adam_step(a, p, g);
	ASSERT_NEAR(p[0], 1.0 - 0.01 * 0.3 / (0.3 + 1e-8), 1e-6);
	ASSERT_NEAR(p[1], -2.0 + 0.01, 1e-6);
	ASSERT_NEAR(p[2], 0.5 - 0.01, 1e-5);
	ASSERT_EQ(ann_adam_steps(a), 1);
	ann_adam_free(a);

	/* Decoupled weight decay with zero gradients: p *= (1 - lr wd) per step. */
	o.weight_decay = 0.5f;
	float q[2] = {2.0f, -1.0f}, z[2] = {0, 0};
	ASSERT_OK(ann_adam_new(2, &o, &a, &te_));
	for (int s = 0; s < 10; s++)
		ann_adam_step(a, q, z);
	ASSERT_NEAR(q[0], 2.0 * pow(1 - 0.005, 10), 1e-5);
	ASSERT_NEAR(q[1], -1.0 * pow(1 - 0.005, 10), 1e-5);
	ann_adam_free(a);

	/* Ill-conditioned quadratic f = sum a_i (x_i - c_i)^2: converges. */
	enum { N = 12 };
	float x[N], c[N], w[N], gr[N];
	for (int i = 0; i < N; i++) {
		x[i] = 0;
		c[i] = (float)(ann_rng_normal(rng) * 3);
		w[i] = (float)(0.05 + 20 * ann_rng_uniform(rng));
	}
	ann_adam_opts_init(&o);
	o.lr = 0.1f;
	ASSERT_OK(ann_adam_new(N, &o, &a, &te_));
	double f0 = 0, f1 = 0;
	for (int i = 0; i < N; i++)
		f0 += w[i] * (double)c[i] * c[i];
	for (int s = 0; s < 3000; s++) {
		if (s % 500 == 499)
			ann_adam_set_lr(a, o.lr *= 0.3f);
		for (int i = 0; i < N; i++)
			gr[i] = 2 * w[i] * (x[i] - c[i]);
		ann_adam_step(a, x, gr);
	}
	for (int i = 0; i < N; i++) {
		f1 += w[i] * (double)(x[i] - c[i]) * (x[i] - c[i]);
		ASSERT_NEAR(x[i], c[i], 1e-3);
	}
	printf("  adam on a quadratic: f %.4g -> %.3g in 3000 steps\n", f0, f1);
	ann_adam_free(a);

	/* Adam on an external array: DEC centroids with fixed embeddings and a
	 * fixed target P; the KL loss must fall. */
	enum { NZ = 60, E = 2, K = 3 };
	float zz[NZ * E], mu[K * E], qq[NZ * K], pp[NZ * K], dmu[K * E];
	for (int i = 0; i < NZ; i++)
		for (int t = 0; t < E; t++)
			zz[i * E + t] = (float)(4.0 * ((i % K) == t) + 0.5 * ann_rng_normal(rng));
	for (int j = 0; j < K * E; j++)
		mu[j] = (float)(1.3 + 0.5 * ann_rng_normal(rng));
	ann_dec_soft_assign(zz, NZ, E, mu, K, 1.0f, qq);
	ASSERT_OK(ann_dec_target(qq, NZ, K, pp, &te_));
	ann_adam_opts_init(&o);
	o.lr = 0.05f;
	ASSERT_OK(ann_adam_new(K * E, &o, &a, &te_));
	double l0 = 0, l1 = 0;
	for (int s = 0; s < 200; s++) {
		ASSERT_OK(ann_dec_grad(zz, NZ, E, mu, K, 1.0f, pp, NULL, NULL, dmu, &l1, &te_));
		if (s == 0)
			l0 = l1;
		ann_adam_step(a, mu, dmu);
	}
	printf("  adam on DEC centroids: KL %.4g -> %.4g\n", l0, l1);
	ASSERT_LT(l1, 0.5 * l0);
	ann_adam_free(a);
}

/* ---- mini-batches ------------------------------------------------------------------------- */

static void test_batcher(void)
{
	ann_error e = {0};
	ann_batcher b, b2;
	ASSERT_ERR(ann_batcher_init(&b, 10, 0, &e), e, ANN_E_INVAL, "batch");
	ASSERT_OK(ann_batcher_init(&b, 103, 10, &te_));
	ASSERT_OK(ann_batcher_init(&b2, 103, 10, &te_));
	ann_rng r1, r2;
	ann_rng_seed(&r1, 7);
	ann_rng_seed(&r2, 7);
	uint32_t prev[103];
	const uint32_t *idx, *idx2;
	for (int epoch = 0; epoch < 3; epoch++) {
		ann_batcher_shuffle(&b, &r1);
		ann_batcher_shuffle(&b2, &r2);
		int seen[103] = {0};
		size_t got, total = 0, nb = 0;
		while ((got = ann_batcher_next(&b, &idx)) > 0) {
			ASSERT_EQ(ann_batcher_next(&b2, &idx2), got);
			ASSERT_TRUE(memcmp(idx, idx2, got * 4) == 0);
			ASSERT_EQ(got, total + 10 <= 103 ? 10 : 3);
			for (size_t i = 0; i < got; i++)
				seen[idx[i]]++;
			total += got;
			nb++;
		}
		ASSERT_EQ(total, 103);
		ASSERT_EQ(nb, 11);
		for (int i = 0; i < 103; i++)
			ASSERT_EQ(seen[i], 1);
		if (epoch > 0)
			ASSERT_TRUE(memcmp(prev, b.perm, sizeof prev) != 0);
		memcpy(prev, b.perm, sizeof prev);
	}
	float src[5 * 2] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, dst[3 * 2];
	uint32_t sel[3] = {4, 0, 2};
	ann_gather_rows(src, 2, sel, 3, dst);
	ASSERT_EQ(dst[0], 8);
	ASSERT_EQ(dst[3], 1);
	ASSERT_EQ(dst[5], 5);
	ann_batcher_destroy(&b);
	ann_batcher_destroy(&b2);
}

/* ---- inference --------------------------------------------------------------------------- */

static void test_infer(ann_rng *rng)
{
	uint32_t h2[2] = {33, 17}, h1[1] = {19};
	ann_mlp_spec specs[4] = {
		mkspec(24, 9, 2, h2, ANN_ACT_RELU, ANN_ACT_SOFTMAX),
		mkspec(24, 9, 1, h1, ANN_ACT_TANH, ANN_ACT_LINEAR),
		mkspec(24, 9, 0, NULL, ANN_ACT_TANH, ANN_ACT_TANH),
		mkspec(24, 5, 2, h2, ANN_ACT_LINEAR, ANN_ACT_RELU),
	};
	const size_t ns[3] = {1, 5, 37};
	for (int si = 0; si < 4; si++) {
		ann_mlp *m = mk(&specs[si], rng);
		for (uint32_t l = 0; l < m->n_layers; l++)
			fill_normal(rng, m->layers[l].b, m->layers[l].out, 0.2);
		ann_mlp_ws *ws;
		ASSERT_OK(ann_mlp_ws_new(m, 37, &ws, &te_));
		for (int k = 0; k < 3; k++) {
			size_t n = ns[k];
			float *x = fmalloc(n * m->in_dim), *out = fmalloc(n * m->out_dim);
			double *ref = malloc(n * m->out_dim * sizeof(double));
			size_t sc = ann_mlp_infer_scratch(m, n);
			/* exactly sized, from ann_malloc, so ASan sees any overrun */
			float *scratch = sc ? ann_malloc(sc * sizeof(float)) : NULL;
			fill_normal(rng, x, n * m->in_dim, 1.0);
			const float *y;
			ASSERT_OK(ann_mlp_forward(m, ws, x, n, &y, &te_));
			ann_mlp_infer(m, x, n, out, scratch);
			ASSERT_TRUE(memcmp(out, y, n * m->out_dim * sizeof(float)) == 0);
			ASSERT_TRUE(y == ann_mlp_ws_layer(ws, m->n_layers - 1));
			ref_forward(m, x, n, ref);
			for (size_t i = 0; i < n * m->out_dim; i++)
				ASSERT_NEAR(out[i], ref[i], 2e-5);
			/* rows are independent: row 3 alone equals row 3 of the batch (to rounding) */
			if (n > 3) {
				float one[9];
				float *s1 = ann_malloc((ann_mlp_infer_scratch(m, 1) + 1) * sizeof(float));
				ann_mlp_infer(m, x + 3 * m->in_dim, 1, one, s1);
				for (uint32_t j = 0; j < m->out_dim; j++)
					ASSERT_NEAR(one[j], out[3 * m->out_dim + j], 1e-5);
				ann_free(s1);
			}
			ann_free(scratch);
			free(x);
			free(out);
			free(ref);
		}
		ann_mlp_ws_free(ws);
		ann_mlp_free(m);
	}
}

/* ---- training ------------------------------------------------------------------------------ */

/* Trains an autoencoder on rank-3 data in 32 dimensions; returns the final
 * full-data MSE, *first the initial one; params of the encoder to *enc_out. */
static double train_autoencoder(uint64_t seed, double *first, ann_mlp **enc_out)
{
	enum { N = 512, D = 32, R = 3, B = 32 };
	ann_rng rng;
	ann_rng_seed(&rng, seed);
	float *X = fmalloc(N * D), Z[N * R], A[R * D];
	fill_normal(&rng, Z, N * R, 1.0);
	fill_normal(&rng, A, R * D, 1.0 / sqrt(R));
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, R, 1.0f, Z, R, A, D, 0.0f, X, D);
	uint32_t h[1] = {32};
	ann_mlp_spec se = mkspec(D, 4, 1, h, ANN_ACT_TANH, ANN_ACT_LINEAR), sd;
	ann_mlp_spec_mirror(&se, ANN_ACT_LINEAR, &sd);
	ann_mlp *enc = mk(&se, &rng), *dec = mk(&sd, &rng);
	ann_mlp_ws *we, *wd;
	ASSERT_OK(ann_mlp_ws_new(enc, N, &we, &te_));
	ASSERT_OK(ann_mlp_ws_new(dec, N, &wd, &te_));
	ann_adam_opts o;
	ann_adam_opts_init(&o);
	o.lr = 3e-3f;
	ann_adam *ae, *ad;
	ASSERT_OK(ann_adam_new(enc->n_params, &o, &ae, &te_));
	ASSERT_OK(ann_adam_new(dec->n_params, &o, &ad, &te_));
	ann_batcher bt;
	ASSERT_OK(ann_batcher_init(&bt, N, B, &te_));
	float xb[B * D], gy[B * D], dz[B * 4];
	const float *z, *y;
	ASSERT_OK(ann_mlp_forward(enc, we, X, N, &z, &te_));
	ASSERT_OK(ann_mlp_forward(dec, wd, z, N, &y, &te_));
	*first = ann_loss_mse(y, X, N, D, NULL);
	for (int epoch = 0; epoch < 100; epoch++) {
		if (epoch == 70) {
			ann_adam_set_lr(ae, 1e-3f);
			ann_adam_set_lr(ad, 1e-3f);
		}
		ann_batcher_shuffle(&bt, &rng);
		const uint32_t *idx;
		size_t nb;
		while ((nb = ann_batcher_next(&bt, &idx)) > 0) {
			ann_gather_rows(X, D, idx, nb, xb);
			ASSERT_OK(ann_mlp_forward(enc, we, xb, nb, &z, &te_));
			ASSERT_OK(ann_mlp_forward(dec, wd, z, nb, &y, &te_));
			ann_loss_mse(y, xb, nb, D, gy);
			ann_mlp_backward(dec, wd, gy, dz, false);
			ann_mlp_backward(enc, we, dz, NULL, false);
			ann_adam_step(ad, dec->params, ann_mlp_ws_grad(wd));
			ann_adam_step(ae, enc->params, ann_mlp_ws_grad(we));
		}
	}
	ASSERT_OK(ann_mlp_forward(enc, we, X, N, &z, &te_));
	ASSERT_OK(ann_mlp_forward(dec, wd, z, N, &y, &te_));
	double last = ann_loss_mse(y, X, N, D, NULL);
	ann_batcher_destroy(&bt);
	ann_adam_free(ae);
	ann_adam_free(ad);
	ann_mlp_ws_free(we);
	ann_mlp_ws_free(wd);
	ann_mlp_free(dec);
	free(X);
	*enc_out = enc;
	return last;
}

static void test_train_autoencoder(void)
{
	double f1, f2;
	ann_mlp *e1, *e2;
	double l1 = train_autoencoder(t_seed, &f1, &e1);
	double l2 = train_autoencoder(t_seed, &f2, &e2);
	printf("  autoencoder 32-32-4-32-32 on rank-3 data: MSE %.4g -> %.4g (x%.0f)\n", f1, l1, f1 / l1);
	ASSERT_LT(l1 * 30, f1);
	/* determinism: same seed, same thread count, bit-identical weights */
	ASSERT_EQ(l1 == l2, 1);
	ASSERT_TRUE(memcmp(e1->params, e2->params, e1->n_params * 4) == 0);
	ann_mlp_free(e1);
	ann_mlp_free(e2);
}

/* Gaussian blobs: m classes in dim d around the given centres, unit noise. */
static void blobs(ann_rng *rng, const float *centres, size_t n, size_t d, size_t m, float *X, uint32_t *lab)
{
	for (size_t i = 0; i < n; i++) {
		lab[i] = (uint32_t)ann_rng_below(rng, m);
		for (size_t t = 0; t < d; t++)
			X[i * d + t] = centres[lab[i] * d + t] + (float)ann_rng_normal(rng);
	}
}

static void test_train_classifier(ann_rng *rng)
{
	enum { N = 800, NT = 400, D = 8, M = 4, B = 32 };
	float C[M * D], *X = fmalloc(N * D), *XT = fmalloc(NT * D);
	uint32_t lab[N], labt[NT];
	/* centres at least 7 noise deviations apart: separable up to ~1e-4 */
	for (bool close = true; close;) {
		fill_normal(rng, C, M * D, 2.5);
		close = false;
		for (size_t i = 0; i < M; i++)
			for (size_t j = 0; j < i; j++) {
				double d2 = 0;
				for (size_t t = 0; t < D; t++)
					d2 += (C[i * D + t] - C[j * D + t]) * (C[i * D + t] - C[j * D + t]);
				close = close || d2 < 49;
			}
	}
	blobs(rng, C, N, D, M, X, lab);
	blobs(rng, C, NT, D, M, XT, labt);
	for (int soft = 0; soft < 2; soft++) {
		uint32_t h[1] = {32};
		ann_mlp_spec s = mkspec(D, M, 1, h, ANN_ACT_RELU, ANN_ACT_SOFTMAX);
		ann_mlp *m = mk(&s, rng);
		ann_mlp_ws *ws;
		ASSERT_OK(ann_mlp_ws_new(m, B, &ws, &te_));
		ann_adam_opts o;
		ann_adam_opts_init(&o);
		o.lr = 1e-2f;
		o.weight_decay = soft ? 1e-4f : 0.0f;
		ann_adam *a;
		ASSERT_OK(ann_adam_new(m->n_params, &o, &a, &te_));
		ann_batcher bt;
		ASSERT_OK(ann_batcher_init(&bt, N, B, &te_));
		float xb[B * D], tb[B * M], g[B * M];
		uint32_t lb[B];
		double loss = 0;
		for (int epoch = 0; epoch < 20; epoch++) {
			ann_batcher_shuffle(&bt, rng);
			const uint32_t *idx;
			size_t nb;
			loss = 0;
			while ((nb = ann_batcher_next(&bt, &idx)) > 0) {
				ann_gather_rows(X, D, idx, nb, xb);
				const float *y;
				ASSERT_OK(ann_mlp_forward(m, ws, xb, nb, &y, &te_));
				for (size_t i = 0; i < nb; i++) {
					lb[i] = lab[idx[i]];
					for (size_t j = 0; j < M; j++)
						tb[i * M + j] = 0.1f / M + (j == lb[i] ? 0.9f : 0.0f);
				}
				loss += soft ? ann_loss_ce_soft(y, tb, nb, M, g)
					     : ann_loss_ce_hard(y, lb, nb, M, g);
				ann_mlp_backward(m, ws, g, NULL, false);
				ann_adam_step(a, m->params, ann_mlp_ws_grad(ws));
			}
		}
		float *out = fmalloc(NT * M), *scratch = fmalloc(ann_mlp_infer_scratch(m, NT));
		ann_mlp_infer(m, XT, NT, out, scratch);
		size_t ok = 0;
		for (size_t i = 0; i < NT; i++) {
			size_t best = 0;
			for (size_t j = 1; j < M; j++)
				if (out[i * M + j] > out[i * M + best])
					best = j;
			ok += best == labt[i];
		}
		double acc = (double)ok / NT;
		printf("  classifier 8-32-4 on blobs (%s labels): held-out accuracy %.3f, last epoch loss "
		       "%.4f\n",
		       soft ? "soft" : "hard", acc, loss / (N / B));
		ASSERT_LT(0.95, acc);
		free(out);
		free(scratch);
		ann_batcher_destroy(&bt);
		ann_adam_free(a);
		ann_mlp_ws_free(ws);
		ann_mlp_free(m);
	}
	free(X);
	free(XT);
}

/* ---- serialisation ------------------------------------------------------------------------ */

/* Recomputes the trailer after a deliberate edit. */
static void reseal(uint8_t *b, size_t len)
{
	ann_st64(b + len - 8, XXH64(b, len - 8, 0));
}

static void expect_reject(const uint8_t *b, size_t len, const char *what, const char *needle)
{
	ann_error e = {0};
	ann_mlp *m = (ann_mlp *)1;
	int rc = ann_mlp_load(b, len, &m, &e);
	if (rc != ANN_E_CORRUPT && rc != ANN_E_FORMAT)
		T_FAIL("%s: load returned %d (%s), expected CORRUPT or FORMAT", what, rc, ann_strerror(rc));
	if (e.code != rc || e.msg[0] == 0)
		T_FAIL("%s: error not filled", what);
	if (needle && !strstr(e.msg, needle))
		T_FAIL("%s: message lacks \"%s\": %s", what, needle, e.msg);
	ASSERT_TRUE(m == NULL);
}

static void test_serialise(ann_rng *rng)
{
	uint32_t h[2] = {6, 5};
	ann_mlp_spec s = mkspec(7, 3, 2, h, ANN_ACT_TANH, ANN_ACT_SOFTMAX);
	ann_mlp *m = mk(&s, rng), *m2 = NULL;
	for (uint32_t l = 0; l < m->n_layers; l++)
		fill_normal(rng, m->layers[l].b, m->layers[l].out, 0.2);
	uint8_t *blob;
	size_t len;
	ASSERT_OK(ann_mlp_save(m, &blob, &len, &te_));
	ASSERT_EQ(len, ann_mlp_blob_bytes(m));
	ASSERT_EQ(len, 24 + 8 * 3 + 4 * m->n_params + 8);
	ASSERT_EQ(ann_ld32(blob), ANN_MLP_MAGIC);
	ASSERT_EQ(blob[0], 0xA1);
	ASSERT_OK(ann_mlp_load(blob, len, &m2, &te_));
	ASSERT_EQ(m2->n_layers, m->n_layers);
	ASSERT_EQ(m2->in_dim, 7);
	ASSERT_EQ(m2->out_dim, 3);
	ASSERT_EQ(m2->n_params, m->n_params);
	for (uint32_t l = 0; l < m->n_layers; l++) {
		ASSERT_EQ(m2->layers[l].out, m->layers[l].out);
		ASSERT_EQ(m2->layers[l].act, m->layers[l].act);
	}
	ASSERT_TRUE(memcmp(m->params, m2->params, m->n_params * 4) == 0);
	float x[11 * 7], o1[11 * 3], o2[11 * 3], sc[2 * 11 * 6];
	fill_normal(rng, x, sizeof x / 4, 1.0);
	ann_mlp_infer(m, x, 11, o1, sc);
	ann_mlp_infer(m2, x, 11, o2, sc);
	ASSERT_TRUE(memcmp(o1, o2, sizeof o1) == 0);
	ann_mlp_infer(m, x, 1, o1, sc);
	ann_mlp_infer(m2, x, 1, o2, sc);
	ASSERT_TRUE(memcmp(o1, o2, 3 * 4) == 0);
	ann_mlp_free(m2);

	uint8_t *c = malloc(len);
	/* every bit of the header region (fixed header + layer table) */
	size_t hdr = 24 + 8 * m->n_layers;
	for (size_t bit = 0; bit < hdr * 8; bit++) {
		memcpy(c, blob, len);
		c[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		expect_reject(c, len, "header bit flip", NULL);
	}
	/* random bits of the rest, parameters and trailer */
	for (int t = 0; t < 400; t++) {
		memcpy(c, blob, len);
		size_t bit = hdr * 8 + ann_rng_below(rng, (len - hdr) * 8);
		c[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		expect_reject(c, len, "payload bit flip", "checksum");
	}
	/* every truncation, and one byte too many */
	for (size_t l = 0; l < len; l++)
		expect_reject(blob, l, "truncated", NULL);
	uint8_t *longer = calloc(len + 1, 1);
	memcpy(longer, blob, len);
	expect_reject(longer, len + 1, "one byte too many", "says");
	free(longer);
	expect_reject(NULL, 0, "empty", "too short");

	/* Structural errors under a valid checksum. */
	memcpy(c, blob, len);
	c[0] ^= 0x10;
	reseal(c, len);
	expect_reject(c, len, "magic", "magic");
	memcpy(c, blob, len);
	ann_st16(c + 4, 2);
	reseal(c, len);
	expect_reject(c, len, "major 2", "format version 2.0");
	memcpy(c, blob, len);
	ann_st32(c + 24 + 4, 7); /* layer 0 activation */
	reseal(c, len);
	expect_reject(c, len, "activation", "activation 7");
	memcpy(c, blob, len);
	ann_st32(c + 24 + 4, ANN_ACT_SOFTMAX);
	reseal(c, len);
	expect_reject(c, len, "hidden softmax", "softmax");
	memcpy(c, blob, len);
	ann_st32(c + 8, 0);
	reseal(c, len);
	expect_reject(c, len, "zero layers", "0 layers");
	memcpy(c, blob, len);
	ann_st32(c + 8, 1000);
	reseal(c, len);
	expect_reject(c, len, "1000 layers", "1000 layers");
	memcpy(c, blob, len);
	ann_st32(c + 24, 7); /* layer 0 width 6 -> 7 changes the size */
	reseal(c, len);
	expect_reject(c, len, "width", "need");
	memcpy(c, blob, len);
	ann_st32(c + 12, 0xFFFFFFFFu);
	reseal(c, len);
	expect_reject(c, len, "input dim", "input dimension");
	memcpy(c, blob, len);
	ann_stf32(c + hdr + 4 * 3, NAN);
	reseal(c, len);
	expect_reject(c, len, "NaN weight", "parameter 3");
	/* A newer minor version with the same layout still loads. */
	memcpy(c, blob, len);
	ann_st16(c + 6, 9);
	reseal(c, len);
	ASSERT_OK(ann_mlp_load(c, len, &m2, &te_));
	ann_mlp_free(m2);
	free(c);
	ann_free(blob);
	ann_mlp_free(m);
}

/* ---- allocation failure -------------------------------------------------------------------- */

static void test_alloc_failure(ann_rng *rng)
{
	uint32_t h[1] = {5};
	ann_mlp_spec s = mkspec(4, 3, 1, h, ANN_ACT_RELU, ANN_ACT_LINEAR);
	ann_mlp *ref = mk(&s, rng);
	uint8_t *blob;
	size_t len;
	ASSERT_OK(ann_mlp_save(ref, &blob, &len, &te_));
	float q[6 * 3], z[6 * 2] = {0}, mu[3 * 2] = {1, 0, 0, 1, 1, 1}, dz[6 * 2], dmu[3 * 2];
	for (int op = 0; op < 7; op++) {
		int nfail = 0;
		for (int64_t k = 0;; k++) {
			int64_t live = ann_mem_live_bytes();
			ann_error e = {0};
			ann_mem_fail_after(k);
			int rc;
			ann_mlp *m = NULL;
			ann_mlp_ws *ws = NULL;
			ann_adam *a = NULL;
			ann_batcher b;
			uint8_t *bl = NULL;
			size_t bl_len;
			ann_adam_opts o;
			ann_adam_opts_init(&o);
			ann_rng r;
			ann_rng_seed(&r, 1);
			switch (op) {
			case 0:
				rc = ann_mlp_new(&s, &r, &m, &e);
				break;
			case 1:
				rc = ann_mlp_ws_new(ref, 8, &ws, &e);
				break;
			case 2:
				rc = ann_mlp_load(blob, len, &m, &e);
				break;
			case 3:
				rc = ann_adam_new(10, &o, &a, &e);
				break;
			case 4:
				rc = ann_mlp_save(ref, &bl, &bl_len, &e);
				break;
			case 5:
				rc = ann_batcher_init(&b, 10, 3, &e);
				if (rc == 0)
					ann_batcher_destroy(&b);
				break;
			default:
				for (int i = 0; i < 18; i++)
					q[i] = 1.0f / 3;
				rc = ann_dec_target(q, 6, 3, q, &e);
				if (rc == 0)
					rc = ann_dec_grad(z, 6, 2, mu, 3, 1.0f, q, NULL, dz, dmu, NULL, &e);
				break;
			}
			ann_mem_fail_after(-1);
			ann_mlp_free(m);
			ann_mlp_ws_free(ws);
			ann_adam_free(a);
			ann_free(bl);
			if (rc == 0)
				break;
			ASSERT_EQ(rc, ANN_E_NOMEM);
			ASSERT_EQ(e.code, ANN_E_NOMEM);
			ASSERT_TRUE(m == NULL && ws == NULL && a == NULL && bl == NULL);
			ASSERT_EQ(ann_mem_live_bytes(), live);
			nfail++;
		}
		ASSERT_TRUE(nfail >= 1);
	}
	ann_free(blob);
	ann_mlp_free(ref);
}

/* ---- figures (printed, never asserted) ------------------------------------------------------- */

static void perf_report(ann_rng *rng)
{
	enum { N = 4096, D = 128, B = 256, EPOCHS = 3 };
	uint32_t h[2] = {256, 64};
	ann_mlp_spec se = mkspec(D, 16, 2, h, ANN_ACT_RELU, ANN_ACT_LINEAR), sd;
	ann_mlp_spec_mirror(&se, ANN_ACT_LINEAR, &sd);
	ann_mlp *enc = mk(&se, rng), *dec = mk(&sd, rng);
	ann_mlp_ws *we, *wd;
	ASSERT_OK(ann_mlp_ws_new(enc, B, &we, &te_));
	ASSERT_OK(ann_mlp_ws_new(dec, B, &wd, &te_));
	ann_adam_opts o;
	ann_adam_opts_init(&o);
	ann_adam *ae, *ad;
	ASSERT_OK(ann_adam_new(enc->n_params, &o, &ae, &te_));
	ASSERT_OK(ann_adam_new(dec->n_params, &o, &ad, &te_));
	ann_batcher bt;
	ASSERT_OK(ann_batcher_init(&bt, N, B, &te_));
	float *X = fmalloc((size_t)N * D), *xb = fmalloc(B * D), *gy = fmalloc(B * D), *dz = fmalloc(B * 16);
	fill_normal(rng, X, (size_t)N * D, 1.0);
	double best = 0;
	for (int epoch = 0; epoch < EPOCHS; epoch++) {
		uint64_t t0 = ann_now_ns();
		ann_batcher_shuffle(&bt, rng);
		const uint32_t *idx;
		size_t nb;
		while ((nb = ann_batcher_next(&bt, &idx)) > 0) {
			const float *z, *y;
			ann_gather_rows(X, D, idx, nb, xb);
			ASSERT_OK(ann_mlp_forward(enc, we, xb, nb, &z, &te_));
			ASSERT_OK(ann_mlp_forward(dec, wd, z, nb, &y, &te_));
			ann_loss_mse(y, xb, nb, D, gy);
			ann_mlp_backward(dec, wd, gy, dz, false);
			ann_mlp_backward(enc, we, dz, NULL, false);
			ann_adam_step(ad, dec->params, ann_mlp_ws_grad(wd));
			ann_adam_step(ae, enc->params, ann_mlp_ws_grad(we));
		}
		double sps = N / ((double)(ann_now_ns() - t0) * 1e-9);
		best = fmax(best, sps);
	}
	printf("  [figure] autoencoder 128-256-64-16 + mirror, batch %d: %.0f samples/s per epoch "
	       "(best of %d epochs of %d; OpenBLAS threads %d)\n",
	       B, best, EPOCHS, N, openblas_get_num_threads());
	printf("  [figure] RAM: encoder %zu bytes, decoder %zu bytes, training workspaces %zu bytes\n",
	       ann_mlp_bytes(enc), ann_mlp_bytes(dec), ann_mlp_ws_bytes(we) + ann_mlp_ws_bytes(wd));

	uint32_t h1[1] = {256};
	ann_mlp_spec sq = mkspec(D, 16, 1, h1, ANN_ACT_RELU, ANN_ACT_SOFTMAX);
	ann_mlp *q = mk(&sq, rng);
	float *scratch = fmalloc(ann_mlp_infer_scratch(q, B)), out[B * 16];
	enum { REPS = 20000 };
	float sink = 0;
	uint64_t t0 = ann_now_ns();
	for (int r = 0; r < REPS; r++) {
		ann_mlp_infer(q, X + (size_t)(r % N) * D, 1, out, scratch);
		sink += out[0];
	}
	double ns1 = (double)(ann_now_ns() - t0) / REPS;
	t0 = ann_now_ns();
	for (int r = 0; r < 200; r++) {
		ann_mlp_infer(q, X + (size_t)(r % 8) * B * D, B, out, scratch);
		sink += out[0];
	}
	double nsb = (double)(ann_now_ns() - t0) / (200.0 * B);
	printf("  [figure] inference 128-256-16 softmax: %.2f us per single query, %.2f us per query in "
	       "batches of %d (%zu bytes) [%g]\n",
	       ns1 * 1e-3, nsb * 1e-3, B, ann_mlp_bytes(q), (double)(sink > 0));
	free(scratch);
	ann_mlp_free(q);
	free(X);
	free(xb);
	free(gy);
	free(dz);
	ann_batcher_destroy(&bt);
	ann_adam_free(ae);
	ann_adam_free(ad);
	ann_mlp_ws_free(we);
	ann_mlp_ws_free(wd);
	ann_mlp_free(enc);
	ann_mlp_free(dec);
}

int main(void)
{
	ann_rng rng;
	t_init("test_nn", &rng);
	int64_t live0 = ann_mem_live_bytes();
	test_spec(&rng);
	test_grad_layers(&rng);
	test_grad_chain(&rng);
	test_grad_losses(&rng);
	test_dec(&rng);
	test_adam(&rng);
	test_batcher();
	test_infer(&rng);
	test_train_autoencoder();
	test_train_classifier(&rng);
	test_serialise(&rng);
	test_alloc_failure(&rng);
	perf_report(&rng);
	ASSERT_EQ(ann_mem_live_bytes(), live0);
	printf("test_nn: ok\n");
	return 0;
}

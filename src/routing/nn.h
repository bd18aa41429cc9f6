/* SPDX-License-Identifier: MIT */
/*
 * nn.h: small dense neural networks on OpenBLAS for the learned routers:
 * multi-layer perceptrons (dense layers, ReLU / tanh / linear / softmax),
 * mini-batch forward and backward with sgemm, a lean allocation-free
 * inference path, losses (MSE, cross-entropy, KL) and the DEC helpers
 * (Student-t soft assignment, sharpened target, gradients w.r.t. embeddings
 * and centroids), Adam, shuffled mini-batches, and the model blob format.
 * It owns no router logic and never sets OpenBLAS's thread count.
 *
 * Layout conventions: matrices are row-major float32. A batch is n x dim
 * (one row per sample). A layer maps x (n x in) to y = act(x W^T + b) with
 * W out x in and b of length out. All parameters of a network live in one
 * contiguous array (mlp->params, mlp->n_params floats); the training
 * workspace keeps gradients in an array of the same layout, so Adam runs on
 * flat arrays.
 *
 * Composition: ann_mlp_backward takes dL/d(output) and returns dL/d(input),
 * so an autoencoder is two networks (encoder, decoder) trained together: run
 * the decoder's backward with the reconstruction gradient, add any external
 * gradient on the embedding (DEC) to the dL/dz it returns, then run the
 * encoder's backward with the sum.
 *
 * Determinism: same seed, same inputs, same OpenBLAS thread count =>
 * bit-identical weights. Nothing here keeps global state.
 */
#ifndef ANN_NN_H
#define ANN_NN_H

#include "common.h"

#define ANN_MLP_MAX_LAYERS 16u       /* dense layers per network (hidden + output) */
#define ANN_MLP_MAX_DIM (1u << 20)   /* width bound for any layer, and for the input */
#define ANN_MLP_MAX_PARAMS (1u << 30) /* floats per network (4 GiB) */

/* Activation of a layer. The values are stored in model blobs: never renumber. */
typedef enum ann_act {
	ANN_ACT_LINEAR = 0,  /* identity */
	ANN_ACT_RELU = 1,    /* max(0, x); derivative taken as 0 at 0 */
	ANN_ACT_TANH = 2,
	ANN_ACT_SOFTMAX = 3, /* row-wise softmax; output layer only */
} ann_act;

/* Returns "linear", "relu", "tanh", "softmax" or "?". */
const char *ann_act_name(ann_act a);

/* ---- networks ------------------------------------------------------------ */

typedef struct ann_mlp_spec {
	uint32_t in_dim;                         /* input width, 1..ANN_MLP_MAX_DIM */
	uint32_t out_dim;                        /* output width, 1..ANN_MLP_MAX_DIM */
	uint32_t n_hidden;                       /* hidden layers, 0..ANN_MLP_MAX_LAYERS-1 */
	uint32_t hidden[ANN_MLP_MAX_LAYERS - 1]; /* their widths, in order from the input */
	ann_act hidden_act;                      /* RELU, TANH or LINEAR (ignored without hidden layers) */
	ann_act out_act;                         /* any, SOFTMAX included */
} ann_mlp_spec;

/* Fills the spec of the mirror-image decoder of encoder spec *enc: input
 * enc->out_dim, hidden widths reversed, output enc->in_dim, same hidden
 * activation, output activation out_act (LINEAR for reconstruction). */
void ann_mlp_spec_mirror(const ann_mlp_spec *enc, ann_act out_act, ann_mlp_spec *dec);

typedef struct ann_layer {
	uint32_t in;  /* input width */
	uint32_t out; /* output width */
	ann_act act;
	size_t off_w; /* offset in floats of W (out x in, row-major) in params and in gradients */
	size_t off_b; /* offset in floats of b (out), = off_w + out * in */
	float *w;     /* params + off_w */
	float *b;     /* params + off_b */
} ann_layer;

/* A network. Read-only after construction except through training (params
 * change under Adam). Concurrent ann_mlp_infer calls on one network are safe,
 * each with its own scratch. */
typedef struct ann_mlp {
	uint32_t n_layers;   /* 1..ANN_MLP_MAX_LAYERS */
	uint32_t in_dim;     /* = layers[0].in */
	uint32_t out_dim;    /* = layers[n_layers - 1].out */
	uint32_t max_width;  /* widest layer output */
	uint32_t max_hidden; /* widest output among layers 0..n_layers-2 (0 if one layer) */
	ann_layer layers[ANN_MLP_MAX_LAYERS];
	size_t n_params; /* floats in params */
	float *params;   /* every W then b, layer by layer, 64-byte aligned */
} ann_mlp;

/* Builds a network from *spec and initialises it from rng: weights of a
 * layer followed by ReLU are N(0, 2/in) (He), others N(0, 2/(in+out))
 * (Xavier/Glorot); biases are 0. Consumes a number of rng draws that depends
 * only on the spec. Returns ANN_OK, ANN_E_INVAL (bad spec, message names the
 * field) or ANN_E_NOMEM. *out is NULL on failure. */
int ann_mlp_new(const ann_mlp_spec *spec, ann_rng *rng, ann_mlp **out, ann_error *err);
void ann_mlp_free(ann_mlp *m);

/* RAM held by the network (struct + parameters), for router memory figures. */
size_t ann_mlp_bytes(const ann_mlp *m);

/* ---- inference ----------------------------------------------------------- */

/* Floats of scratch ann_mlp_infer needs for a batch of n rows
 * (n * max_hidden, twice when there are three or more layers). */
size_t ann_mlp_infer_scratch(const ann_mlp *m, size_t n);

/* Forward pass for n rows (1 <= n <= INT_MAX) of x (n x in_dim) into out
 * (n x out_dim), using scratch (ann_mlp_infer_scratch(m, n) floats, may be
 * NULL when that is 0). Allocates nothing; out must not alias x or scratch.
 * One sgemv per layer for n == 1, one sgemm otherwise: the calls
 * ann_mlp_forward makes, so the two agree bit for bit for the same n. */
void ann_mlp_infer(const ann_mlp *m, const float *x, size_t n, float *out, float *scratch);

/* ---- training -------------------------------------------------------------- */

/* Training workspace for batches of up to max_batch rows: every layer's
 * output (max_batch x sum of widths floats), two gradient buffers
 * (max_batch x max_width each) and the parameter gradients (n_params).
 * One workspace serves one network at a time; it is not thread-safe. */
typedef struct ann_mlp_ws ann_mlp_ws;

int ann_mlp_ws_new(const ann_mlp *m, size_t max_batch, ann_mlp_ws **out, ann_error *err);
void ann_mlp_ws_free(ann_mlp_ws *ws);
size_t ann_mlp_ws_bytes(const ann_mlp_ws *ws);

/* Forward pass of n rows (1..max_batch) of x, keeping every layer's output.
 * *y (if y is not NULL) receives the network output (n x out_dim), owned by
 * ws and valid until the next forward on ws. x is borrowed until the matching
 * ann_mlp_backward returns (the first layer's weight gradient needs it).
 * Returns ANN_OK or ANN_E_INVAL (n out of range). */
int ann_mlp_forward(const ann_mlp *m, ann_mlp_ws *ws, const float *x, size_t n, const float **y,
		    ann_error *err);

/* Output of layer l (0..n_layers-1) of the last forward: n x layers[l].out. */
const float *ann_mlp_ws_layer(const ann_mlp_ws *ws, uint32_t l);

/* Backward pass for the last forward on ws. dy is dL/d(output) (n x out_dim).
 * Writes the parameter gradients into ann_mlp_ws_grad(ws), replacing them, or
 * adding to them when accumulate is true. If dx is not NULL it receives
 * dL/d(input) (n x in_dim; it must not overlap dy or x); with dx NULL the
 * first layer's input-gradient product is skipped. For a softmax output
 * layer dy is the gradient with respect to the probabilities (as the
 * cross-entropy helpers below return). Allocates nothing. */
void ann_mlp_backward(const ann_mlp *m, ann_mlp_ws *ws, const float *dy, float *dx, bool accumulate);

/* Parameter gradients (n_params floats, the layout of m->params). */
float *ann_mlp_ws_grad(ann_mlp_ws *ws);

/* ---- losses ------------------------------------------------------------------
 * Each returns the loss (a mean over the batch, computed in double) and, when
 * grad is not NULL, writes dL/d(its first argument) with the same shape. */

/* MSE: mean over the n*d entries of (y - t)^2. */
double ann_loss_mse(const float *y, const float *t, size_t n, size_t d, float *grad);

/* Cross-entropy of probabilities y (n x m, rows from a softmax layer) against
 * hard labels (each in 0..m-1): -(1/n) sum_i log y[i][label_i]. Probabilities
 * are clamped below at FLT_MIN, so the loss and gradient stay finite; through
 * the softmax layer the gradient becomes (y - onehot) / n. */
double ann_loss_ce_hard(const float *y, const uint32_t *labels, size_t n, size_t m, float *grad);

/* Cross-entropy against soft targets t (n x m, rows summing to 1):
 * -(1/n) sum_ij t_ij log y_ij. Through the softmax layer: (y - t) / n. */
double ann_loss_ce_soft(const float *y, const float *t, size_t n, size_t m, float *grad);

/* KL(P || Q) averaged over rows: (1/n) sum_ij p_ij log(p_ij / q_ij), terms
 * with p_ij = 0 being 0; grad (w.r.t. Q) is -p / (n q), q clamped at FLT_MIN. */
double ann_loss_kl(const float *p, const float *q, size_t n, size_t m, float *grad);

/* Row-wise softmax in place (n x m), stable (max subtracted). */
void ann_softmax_rows(float *x, size_t n, size_t m);

/* ---- DEC (Deep Embedded Clustering, Xie et al. 2016) -------------------------
 * z: n embeddings (n x e), mu: k centroids (k x e), alpha > 0 (1 in DEC). */

/* Student-t soft assignment: q_ij = (1 + |z_i - mu_j|^2 / alpha)^(-(alpha+1)/2),
 * normalised so each row sums to 1. q is n x k. Squared distances come from
 * sgemm (|z|^2 + |mu|^2 - 2 z.mu, clamped at 0). Allocates nothing. */
void ann_dec_soft_assign(const float *z, size_t n, size_t e, const float *mu, size_t k, float alpha,
			 float *q);

/* Sharpened target: p_ij = (q_ij^2 / f_j) normalised over j, f_j = sum_i q_ij
 * over the n rows given (DEC computes it over the whole training sample).
 * p may alias q. Allocates k doubles: ANN_OK or ANN_E_NOMEM. */
int ann_dec_target(const float *q, size_t n, size_t k, float *p, ann_error *err);

/* The same in two passes, for a sample too large to hold Q whole: first
 * ann_dec_freq_add over every chunk of rows (f[j] += sum_i q_ij; f is k
 * doubles the caller zeroes), then ann_dec_target_rows for any rows (p from
 * q and the totals f; p may alias q). Allocate nothing. */
void ann_dec_freq_add(const float *q, size_t n, size_t k, double *f);
void ann_dec_target_rows(const float *q, size_t n, size_t k, const double *f, float *p);

/* L = (1/n) sum_i KL(P_i || Q_i) with P fixed (n x k, rows summing to 1) and
 * Q the soft assignment of z. Returns L through *loss (if not NULL), Q
 * through q (n x k, if not NULL), and the gradients, which are the DEC
 * formulas divided by n (the mean over the batch):
 *   dz_i  =  (alpha+1)/alpha / n * sum_j (1 + |z_i - mu_j|^2/alpha)^-1 (p_ij - q_ij)(z_i - mu_j)
 *   dmu_j = -(alpha+1)/alpha / n * sum_i (1 + |z_i - mu_j|^2/alpha)^-1 (p_ij - q_ij)(z_i - mu_j)
 * dz (n x e) and dmu (k x e) may each be NULL; they are overwritten. Allocates
 * n*k floats of scratch: ANN_OK or ANN_E_NOMEM. */
int ann_dec_grad(const float *z, size_t n, size_t e, const float *mu, size_t k, float alpha, const float *p,
		 float *q, float *dz, float *dmu, double *loss, ann_error *err);

/* ---- Adam ------------------------------------------------------------------ */

typedef struct ann_adam_opts {
	float lr;           /* step size (1e-3) */
	float beta1;        /* first-moment decay (0.9) */
	float beta2;        /* second-moment decay (0.999) */
	float eps;          /* denominator guard (1e-8) */
	float weight_decay; /* decoupled (AdamW): p -= lr * wd * p on every entry, biases included (0) */
} ann_adam_opts;

void ann_adam_opts_init(ann_adam_opts *o);

/* Adam state for a flat array of n parameters (2n floats of moments). The
 * network's parameters use one (n = m->n_params, grads from the workspace);
 * an external array such as the DEC centroids uses another. */
typedef struct ann_adam ann_adam;

int ann_adam_new(size_t n, const ann_adam_opts *o, ann_adam **out, ann_error *err);
void ann_adam_free(ann_adam *a);
/* One bias-corrected Adam step: params (n) updated from grads (n). */
void ann_adam_step(ann_adam *a, float *params, const float *grads);
void ann_adam_set_lr(ann_adam *a, float lr);
uint64_t ann_adam_steps(const ann_adam *a); /* steps taken */

/* ---- shuffled mini-batches --------------------------------------------------- */

/* Visits 0..n-1 in a fresh random order each epoch (Fisher-Yates from the
 * caller's rng, so the order is determined by the seed), in batches of up to
 * `batch` indices; the last batch of an epoch may be short. n <= UINT32_MAX. */
typedef struct ann_batcher {
	uint32_t *perm; /* n indices, reshuffled by ann_batcher_shuffle */
	size_t n;       /* sample size */
	size_t batch;   /* batch size, >= 1 */
	size_t pos;     /* next position in perm */
} ann_batcher;

int ann_batcher_init(ann_batcher *b, size_t n, size_t batch, ann_error *err);
void ann_batcher_destroy(ann_batcher *b);
/* Starts an epoch: reshuffles from rng and rewinds. */
void ann_batcher_shuffle(ann_batcher *b, ann_rng *rng);
/* Next batch of the epoch: returns its size (0 once the epoch is done) and
 * points *idx at its indices (valid until the next shuffle). */
size_t ann_batcher_next(ann_batcher *b, const uint32_t **idx);

/* dst[r] = src[idx[r]] for r < n, rows of dim floats. */
void ann_gather_rows(const float *src, size_t dim, const uint32_t *idx, size_t n, float *dst);

/* ---- model blob (docs/FORMAT.md, "Model blob: MLP") ---------------------------
 * All integers little-endian.
 *   offset      size  field
 *   0           4     magic 0xE44E4EA1 (bytes A1 4E 4E E4)
 *   4           2     format major (1); readers refuse other majors
 *   6           2     format minor (0)
 *   8           4     n_layers L (1..16)
 *   12          4     in_dim
 *   16          8     total blob length in bytes, trailer included
 *   24          8*L   per layer: u32 out, u32 activation (ann_act)
 *   24+8L       4*P   float32 parameters, layer by layer: W (out x in row-major), then b
 *   len-8       8     XXH64 (seed 0) of bytes [0, len-8)
 * The header is 24 + 8L bytes; P = n_params. */
#define ANN_MLP_MAGIC 0xE44E4EA1u
#define ANN_MLP_FORMAT_MAJOR 1u
#define ANN_MLP_FORMAT_MINOR 0u

/* Serialised size of m in bytes. */
size_t ann_mlp_blob_bytes(const ann_mlp *m);
/* Serialises m into a new buffer *blob (free with ann_free) of *len bytes. */
int ann_mlp_save(const ann_mlp *m, uint8_t **blob, size_t *len, ann_error *err);
/* Parses and validates a blob: ANN_E_FORMAT (bad magic, other major version),
 * ANN_E_CORRUPT (truncated, checksum mismatch, bad structure, non-finite
 * weight; the message names the offset), ANN_E_NOMEM. Never reads outside
 * [blob, blob + len). */
int ann_mlp_load(const uint8_t *blob, size_t len, ann_mlp **out, ann_error *err);

#endif /* ANN_NN_H */

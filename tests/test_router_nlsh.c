/* SPDX-License-Identifier: MIT */
/*
 * Description: the graph routers of router_nlsh.c (nlsh, joint, soft) on a
 * small synthetic Gaussian mixture (gen.h). Oracles: the nlsh partition is
 * recomputed here (k-NN graph + METIS with the router's seed) and the
 * classifier must reproduce it on the sample; routes equal the classifier's
 * probabilities ranked naively from the blob's own networks (flat, and the
 * full product p(g) p(l | g) for two-level); joint rounds keep every part
 * within the capacity and change fewer labels as they go; soft yields a
 * valid hard partition; save/load/save is byte-identical and routes the
 * same; every bit flip and truncation of the blob is refused; training-time
 * noise (nlsh_augment) changes the classifier, keeps it reproducing the
 * partition, and routes noisy points to their nearest sample point's part
 * at least as well as without it; indexes built
 * through the public API with nlsh and joint reach recall@10 >= 0.8 at a
 * quarter of the partitions against brute force.
 */
#include <xxhash.h>

#include "gen.h"
#include "gt.h"
#include "knngraph.h"
#include "nn.h"
#include "partition.h"
#include "router_nlsh.h"
#include "testutil.h"
#include "vecio.h"

#define N 3000
#define D 32
#define M 16 /* parts */
#define NQ 100

static float base[N * D], queries[NQ * D];

static void make_data(void)
{
	t_gen_mixture(base, N, queries, NQ, D, 12, t_seed);
}

static void opts(ann_build_opts *o, ann_router_kind kind)
{
	ann_build_opts_init(o);
	o->router = kind;
	memset(o->nlsh.hidden, 0, sizeof o->nlsh.hidden);
	o->nlsh.hidden[0] = 64;
	o->nlsh.nlsh_epochs = 40;
	o->nlsh.joint_rounds = 4;
	o->threads = 1;
	o->seed = t_seed;
}

/* ann_router_nlsh_train_shape with the environment and the nlsh parameters of o. */
static int train_shape(const ann_build_opts *o, const float *x, size_t n, size_t d, uint32_t m, uint32_t groups,
		       ann_router **r, ann_error *e)
{
	ann_router_env env;
	ann_router_env_from(o, &env);
	return ann_router_nlsh_train_shape(&env, &o->nlsh, x, n, d, m, groups, r, e);
}

static ann_router *train(const ann_build_opts *o, uint32_t m, uint32_t groups)
{
	ann_router *r;
	ann_error e = {0};
	if (train_shape(o, base, N, D, m, groups, &r, &e) < 0)
		T_FAIL("train: %s", e.msg);
	ASSERT_EQ(r->nparts, m);
	ASSERT_EQ(r->dim, D);
	ASSERT_EQ(r->ops->kind, o->router);
	return r;
}

static uint8_t *save(const ann_router *r, size_t *len)
{
	uint8_t *b;
	ASSERT_OK(r->ops->save(r, &b, len, NULL));
	return b;
}

static int load_rc(ann_router_kind k, const uint8_t *b, size_t len, uint32_t dim, ann_metric metric,
		   ann_error *e)
{
	ann_router *r = NULL;
	int rc = ann_router_load(k, b, len, dim, metric, &r, e);
	if (rc >= 0) {
		ASSERT_TRUE(r != NULL);
		ann_router_free(r);
	} else {
		ASSERT_TRUE(r == NULL);
	}
	return rc;
}

static void reseal(uint8_t *b, size_t len)
{
	ann_st64(b + len - 8, XXH64(b, len - 8, 0));
}

/* The blob's networks, per the layout at the top of router_nlsh.c. */
typedef struct parsed {
	uint32_t m, G;
	float shift[D], scale;
	ann_mlp *net[1 + M];
} parsed;

static void parse(const uint8_t *b, size_t len, parsed *p)
{
	memset(p, 0, sizeof *p);
	ASSERT_TRUE(len > 72 && memcmp(b, "\x89" "NLSH\r\n\x1a", 8) == 0);
	ASSERT_EQ(ann_ld64(b + len - 8), XXH64(b, len - 8, 0));
	ASSERT_EQ(ann_ld32(b + 20), D);
	p->m = ann_ld32(b + 24);
	p->G = ann_ld32(b + 32);
	p->scale = ann_ldf32(b + 40);
	uint32_t C = ann_ld32(b + 44);
	ASSERT_EQ(C, p->G ? p->G + 1 : 1);
	ASSERT_TRUE(C <= 1 + M);
	size_t off = 64;
	for (size_t j = 0; j < D; j++, off += 4)
		p->shift[j] = ann_ldf32(b + off);
	for (uint32_t i = 0; i < C; i++) {
		size_t l = ann_ld64(b + off);
		ASSERT_OK(ann_mlp_load(b + off + 8, l, &p->net[i], NULL));
		off += 8 + l;
	}
	ASSERT_EQ(off + 56 * (size_t)ann_ld32(b + 36) + 8, len);
}

static void parsed_free(parsed *p)
{
	for (int i = 0; i < 1 + M; i++)
		ann_mlp_free(p->net[i]);
}

/* Probability of every part for x, computed from the parsed networks. */
static void naive_probs(const parsed *p, const float *x, double *prob)
{
	float xn[D], y[M], scr[4096];
	for (size_t j = 0; j < D; j++)
		xn[j] = (x[j] - p->shift[j]) * p->scale;
	ASSERT_TRUE(ann_mlp_infer_scratch(p->net[0], 1) <= 4096);
	ann_mlp_infer(p->net[0], xn, 1, y, scr);
	if (!p->G) {
		for (uint32_t j = 0; j < p->m; j++)
			prob[j] = y[j];
		return;
	}
	uint32_t m2 = p->m / p->G;
	for (uint32_t g = 0; g < p->G; g++) {
		float z[M];
		ann_mlp_infer(p->net[1 + g], xn, 1, z, scr);
		for (uint32_t l = 0; l < m2; l++)
			prob[g * m2 + l] = (double)(float)(y[g] * z[l]);
	}
}

/* Checks route(q) against the naive ranking for every query and nprobe. */
static void check_routes(const ann_router *r, const parsed *p)
{
	ann_router_ctx *c;
	ASSERT_OK(r->ops->ctx_new(r, &c, NULL));
	static const uint32_t nps[] = {1, 3, M, M + 5};
	for (size_t q = 0; q < NQ; q++) {
		double prob[M];
		naive_probs(p, queries + q * D, prob);
		for (size_t t = 0; t < 4; t++) {
			ann_search_opts so;
			ann_search_opts_init(&so);
			so.nprobe = nps[t];
			uint32_t parts[M + 5];
			int got = r->ops->route(r, c, queries + q * D, &so, parts, NULL);
			ASSERT_EQ(got, nps[t] < M ? nps[t] : M);
			bool seen[M] = {0};
			for (int i = 0; i < got; i++) {
				ASSERT_TRUE(parts[i] < M);
				ASSERT_TRUE(!seen[parts[i]]);
				seen[parts[i]] = true;
				if (i > 0)
					ASSERT_TRUE(prob[parts[i - 1]] >= prob[parts[i]]);
			}
			/* nothing left out beats the last one returned */
			for (uint32_t j = 0; j < M; j++)
				if (!seen[j])
					ASSERT_TRUE(prob[j] <= prob[parts[got - 1]]);
		}
	}
	r->ops->ctx_free(c);
}

/* The nlsh labels recomputed here: the router's graph and METIS call. */
static void metis_labels(uint32_t m, uint32_t *labels)
{
	ann_knn_opts ko;
	ann_knn_opts_init(&ko);
	ko.k = 10;
	uint32_t *ids = malloc((size_t)N * 10 * sizeof(uint32_t));
	ASSERT_OK(ann_knn_graph(base, N, D, &ko, ids, NULL, NULL, NULL));
	ann_graph g;
	ASSERT_OK(ann_graph_from_knn(ids, N, 10, &g, NULL));
	ASSERT_OK(ann_partition_graph(&g, m, 0.03, t_seed, labels, NULL, NULL));
	ann_graph_free(&g);
	free(ids);
}

/* ---- tests --------------------------------------------------------------- */

static void test_bad_opts(void)
{
	t_current = "bad_opts";
	ann_build_opts o;
	ann_router *r = NULL;
	ann_error e = {0};
	opts(&o, ANN_ROUTER_NLSH);
	ASSERT_ERR(ann_router_train(&o, base, 20, D, 21, &r, &e), e, ANN_E_INVAL, "partitions");
	ASSERT_TRUE(r == NULL);
	o.nlsh.imbalance = 2;
	ASSERT_ERR(ann_router_train(&o, base, N, D, M, &r, &e), e, ANN_E_INVAL, "imbalance");
	opts(&o, ANN_ROUTER_NLSH);
	o.nlsh.nlsh_epochs = 0;
	ASSERT_ERR(ann_router_train(&o, base, N, D, M, &r, &e), e, ANN_E_INVAL, "epochs");
	opts(&o, ANN_ROUTER_JOINT);
	o.nlsh.joint_lambda = -1;
	ASSERT_ERR(ann_router_train(&o, base, N, D, M, &r, &e), e, ANN_E_INVAL, "lambda");
	opts(&o, ANN_ROUTER_NLSH);
	o.nlsh.knn_k = 5000;
	ASSERT_ERR(ann_router_train(&o, base, N, D, M, &r, &e), e, ANN_E_INVAL, "knn_k");
	opts(&o, ANN_ROUTER_NLSH);
	o.nlsh.nlsh_augment = -0.5;
	ASSERT_ERR(ann_router_train(&o, base, N, D, M, &r, &e), e, ANN_E_INVAL, "augment");
	o.nlsh.nlsh_augment = NAN;
	ASSERT_ERR(ann_router_train(&o, base, N, D, M, &r, &e), e, ANN_E_INVAL, "augment");
	o.nlsh.nlsh_augment = 1000;
	ASSERT_ERR(ann_router_train(&o, base, N, D, M, &r, &e), e, ANN_E_INVAL, "augment");
	opts(&o, ANN_ROUTER_NLSH);
	ASSERT_ERR(train_shape(&o, base, N, D, M, 3, &r, &e), e, ANN_E_INVAL, "groups");
	ASSERT_ERR(train_shape(&o, base, N, D, M, 16, &r, &e), e, ANN_E_INVAL, "groups");
	opts(&o, ANN_ROUTER_SOFT);
	ASSERT_ERR(train_shape(&o, base, N, D, M, 4, &r, &e), e, ANN_E_INVAL, "soft");
	ASSERT_TRUE(r == NULL);
}

/* nlsh: the classifier reproduces the METIS partition it was trained on,
 * and the history says so; routes rank the classifier's probabilities. */
static void test_nlsh(void)
{
	t_current = "nlsh";
	ann_build_opts o;
	opts(&o, ANN_ROUTER_NLSH);
	ann_router *r = train(&o, M, 0);
	ASSERT_EQ(ann_router_nlsh_groups(r), 0);
	uint32_t *labels = malloc(N * sizeof(uint32_t)), *pred = malloc(N * sizeof(uint32_t));
	metis_labels(M, labels);
	ASSERT_OK(r->ops->assign(r, base, N, &(ann_assign_rule){.copies = 1, .eps = 0.1}, 1, pred, NULL));
	size_t hit = 0;
	for (size_t i = 0; i < N; i++) {
		ASSERT_TRUE(pred[i] < M);
		hit += pred[i] == labels[i];
	}
	double acc = (double)hit / N;
	const ann_nlsh_round *h;
	ASSERT_EQ(ann_router_nlsh_history(r, &h), 1);
	printf("  nlsh: accuracy %.3f (history %.3f), cut %.3f, balance %.3f, loss %.3f\n", acc, h[0].accuracy,
	       h[0].cut_frac, h[0].balance, h[0].loss);
	ASSERT_EQ(h[0].phase, ANN_NLSH_PHASE_PARTITION);
	ASSERT_NEAR(h[0].accuracy, acc, 1e-12);
	ASSERT_TRUE(acc >= 0.88);
	ASSERT_TRUE(h[0].balance <= 1.03 + 1e-9);
	ASSERT_TRUE(h[0].cut_frac > 0 && h[0].cut_frac < 0.5);

	/* copies: the primary is the argmax, extras only within the factor */
	uint32_t *two = malloc(N * 2 * sizeof(uint32_t));
	ASSERT_OK(r->ops->assign(r, base, N, &(ann_assign_rule){.copies = 2, .eps = 1.0}, 1, two, NULL));
	size_t extra = 0;
	for (size_t i = 0; i < N; i++) {
		ASSERT_EQ(two[2 * i], pred[i]);
		ASSERT_TRUE(two[2 * i + 1] == UINT32_MAX || (two[2 * i + 1] < M && two[2 * i + 1] != pred[i]));
		extra += two[2 * i + 1] != UINT32_MAX;
	}
	ASSERT_OK(r->ops->assign(r, base, N, &(ann_assign_rule){.copies = 2, .eps = 0.0}, 1, two, NULL));
	for (size_t i = 0; i < N; i++)
		ASSERT_TRUE(two[2 * i + 1] == UINT32_MAX); /* ties aside, eps 0 keeps one copy */
	printf("  nlsh: %zu of %d points get a second copy at eps 1\n", extra, N);

	size_t len;
	uint8_t *b = save(r, &len);
	parsed p;
	parse(b, len, &p);
	ASSERT_EQ(p.G, 0);
	check_routes(r, &p);
	parsed_free(&p);
	ann_free(b);
	ann_router_free(r);
	free(labels);
	free(pred);
	free(two);
}

/* Two-level: routes are the exact top products p(g) p(l | g). */
static void test_two_level(void)
{
	t_current = "two_level";
	ann_build_opts o;
	opts(&o, ANN_ROUTER_NLSH);
	ann_router *r = train(&o, M, 4);
	ASSERT_EQ(ann_router_nlsh_groups(r), 4);
	const ann_nlsh_round *h;
	ASSERT_EQ(ann_router_nlsh_history(r, &h), 1);
	printf("  two-level: accuracy %.3f, cut %.3f, balance %.3f\n", h[0].accuracy, h[0].cut_frac, h[0].balance);
	ASSERT_TRUE(h[0].accuracy >= 0.7); /* the two-level partition cuts more (4 x 4 parts of 12 clusters) */
	ASSERT_TRUE(h[0].balance * N / M <= ceil(1.03 * N / M) + 1e-9);
	size_t len;
	uint8_t *b = save(r, &len);
	parsed p;
	parse(b, len, &p);
	ASSERT_EQ(p.G, 4);
	check_routes(r, &p);
	/* assign = the best product */
	uint32_t *pred = malloc(N * sizeof(uint32_t));
	ASSERT_OK(r->ops->assign(r, base, N, &(ann_assign_rule){.copies = 1, .eps = 0}, 1, pred, NULL));
	for (size_t i = 0; i < N; i += 7) {
		double prob[M];
		naive_probs(&p, base + i * D, prob);
		for (uint32_t j = 0; j < M; j++) /* the batched top network may differ in the last bits */
			ASSERT_TRUE(prob[j] <= prob[pred[i]] + 1e-5);
	}
	free(pred);
	parsed_free(&p);
	ann_free(b);
	ann_router_free(r);
}

/* joint: every round keeps the capacity; fewer labels change later on. */
static void check_joint(uint32_t groups)
{
	ann_build_opts o;
	opts(&o, ANN_ROUTER_JOINT);
	o.nlsh.joint_rounds = 5;
	ann_router *r = train(&o, M, groups);
	const ann_nlsh_round *h;
	size_t nh = ann_router_nlsh_history(r, &h);
	ASSERT_TRUE(nh >= 2 && nh <= 1 + o.nlsh.joint_rounds);
	ASSERT_EQ(h[0].phase, ANN_NLSH_PHASE_PARTITION);
	double cap = groups ? ceil(1.03 * N / M) : fmax(ceil((double)N / M), floor(1.03 * N / M));
	for (size_t i = 0; i < nh; i++) {
		printf("  joint G=%u round %u: cut %.4f balance %.3f accuracy %.3f changed %.4f loss %.3f\n", groups,
		       h[i].round, h[i].cut_frac, h[i].balance, h[i].accuracy, h[i].changed, h[i].loss);
		if (i > 0) {
			ASSERT_EQ(h[i].phase, ANN_NLSH_PHASE_JOINT);
			ASSERT_EQ(h[i].round, i);
		}
		ASSERT_TRUE(h[i].balance * N / M <= cap + 1e-6);
		ASSERT_TRUE(h[i].accuracy >= h[0].accuracy - 0.02);
	}
	ASSERT_TRUE(h[nh - 1].changed <= h[1].changed);
	ASSERT_TRUE(h[nh - 1].changed < 0.05);
	/* the partition moved toward what the classifier expresses */
	ASSERT_TRUE(h[nh - 1].accuracy > h[0].accuracy && h[nh - 1].accuracy >= 0.9);
	size_t len;
	uint8_t *b = save(r, &len);
	ASSERT_EQ(ann_ld32(b + 16), ANN_ROUTER_JOINT);
	parsed p;
	parse(b, len, &p);
	check_routes(r, &p);
	parsed_free(&p);
	ann_free(b);
	ann_router_free(r);
}

static void test_joint(void)
{
	t_current = "joint";
	check_joint(0);
	check_joint(4);
}

/* soft: a valid hard partition, routed like the others. */
static void test_soft(void)
{
	t_current = "soft";
	ann_build_opts o;
	opts(&o, ANN_ROUTER_SOFT);
	o.nlsh.nlsh_epochs = 15;
	ann_router *r = train(&o, M, 0);
	const ann_nlsh_round *h;
	size_t nh = ann_router_nlsh_history(r, &h);
	ASSERT_EQ(nh, o.nlsh.nlsh_epochs);
	for (size_t i = 0; i < nh; i += 7)
		printf("  soft epoch %u: cut %.4f balance %.3f changed %.4f loss %.4f\n", h[i].round, h[i].cut_frac,
		       h[i].balance, h[i].changed, h[i].loss);
	printf("  soft final: cut %.4f balance %.3f\n", h[nh - 1].cut_frac, h[nh - 1].balance);
	uint32_t *pred = malloc(N * sizeof(uint32_t));
	size_t count[M] = {0};
	ASSERT_OK(r->ops->assign(r, base, N, &(ann_assign_rule){.copies = 1, .eps = 0}, 1, pred, NULL));
	for (size_t i = 0; i < N; i++) {
		ASSERT_TRUE(pred[i] < M);
		count[pred[i]]++;
	}
	size_t mx = 0;
	for (size_t j = 0; j < M; j++)
		mx = count[j] > mx ? count[j] : mx;
	ASSERT_NEAR(h[nh - 1].balance, (double)mx / ((double)N / M), 1e-9);
	ASSERT_TRUE(h[nh - 1].accuracy == 1.0);
	ASSERT_TRUE(mx < N); /* not collapsed into one part */
	ASSERT_TRUE(h[nh - 1].cut_frac < 1.0 - 1.0 / M);
	size_t len;
	uint8_t *b = save(r, &len);
	parsed p;
	parse(b, len, &p);
	check_routes(r, &p);
	parsed_free(&p);
	ann_free(b);
	ann_router_free(r);
	free(pred);
}

/* Share of NOISY perturbed sample points (noise s sample standard deviations
 * per dimension) whose top-2 routes hold the part (labels) of their nearest
 * sample point, the part a query there needs. */
static double noisy_hits(const ann_router *r, const uint32_t *labels, double s)
{
	enum { NOISY = 600 };
	double mu[D] = {0}, var = 0;
	for (size_t i = 0; i < N; i++)
		for (size_t j = 0; j < D; j++)
			mu[j] += base[i * D + j] / N;
	for (size_t i = 0; i < N; i++)
		for (size_t j = 0; j < D; j++)
			var += (base[i * D + j] - mu[j]) * (base[i * D + j] - mu[j]) / ((double)N * D);
	ann_rng rng;
	ann_rng_seed(&rng, t_seed + 77);
	float *x = malloc((size_t)NOISY * D * sizeof(float));
	uint32_t *two = malloc((size_t)NOISY * 2 * sizeof(uint32_t));
	for (size_t q = 0; q < NOISY; q++) {
		size_t p = ann_rng_below(&rng, N);
		for (size_t j = 0; j < D; j++)
			x[q * D + j] = base[p * D + j] + (float)(s * sqrt(var) * ann_rng_normal(&rng));
	}
	ASSERT_OK(r->ops->assign(r, x, NOISY, &(ann_assign_rule){.copies = 2, .eps = 1e30}, 1, two, NULL));
	size_t hit = 0;
	for (size_t q = 0; q < NOISY; q++) {
		size_t best = 0;
		double bd = INFINITY;
		for (size_t i = 0; i < N; i++) {
			double dd = 0;
			for (size_t j = 0; j < D; j++)
				dd += (x[q * D + j] - base[i * D + j]) * (x[q * D + j] - base[i * D + j]);
			if (dd < bd) {
				bd = dd;
				best = i;
			}
		}
		hit += two[2 * q] == labels[best] || two[2 * q + 1] == labels[best];
	}
	free(x);
	free(two);
	return (double)hit / NOISY;
}

/* nlsh_augment: the noise reaches the training (the classifier differs from
 * the one trained without it, which is reproducible bit for bit), the
 * classifier still reproduces the partition on the clean sample, and noisy
 * points are routed to their nearest sample point's part at least as well. */
static void test_augment(void)
{
	t_current = "augment";
	uint32_t *labels = malloc(N * sizeof(uint32_t)), *pred = malloc(N * sizeof(uint32_t));
	metis_labels(M, labels);
	ann_build_opts o;
	opts(&o, ANN_ROUTER_NLSH);
	ann_router *plain = train(&o, M, 0), *again = train(&o, M, 0);
	o.nlsh.nlsh_augment = 0.5;
	ann_router *aug = train(&o, M, 0);
	size_t l1, l2, l3;
	uint8_t *b1 = save(plain, &l1), *b2 = save(again, &l2), *b3 = save(aug, &l3);
	/* the networks, up to the history (whose seconds differ run to run) */
	size_t nets = l1 - 8 - 56; /* one history entry */
	ASSERT_EQ(l1, l2);
	ASSERT_TRUE(memcmp(b1, b2, nets) == 0);
	ASSERT_EQ(l3, l1);
	ASSERT_TRUE(memcmp(b1, b3, nets) != 0);
	const ann_nlsh_round *h;
	ASSERT_EQ(ann_router_nlsh_history(aug, &h), 1);
	ASSERT_OK(aug->ops->assign(aug, base, N, &(ann_assign_rule){.copies = 1, .eps = 0}, 1, pred, NULL));
	size_t hit = 0;
	for (size_t i = 0; i < N; i++)
		hit += pred[i] == labels[i];
	double acc = (double)hit / N;
	ASSERT_NEAR(h[0].accuracy, acc, 1e-12);
	double np = noisy_hits(plain, labels, 1.0), na = noisy_hits(aug, labels, 1.0);
	printf("  augment 0.5: accuracy %.3f (plain %.3f); noisy points (1 sd) routed to their nearest point's "
	       "part in the top 2: %.3f (plain %.3f)\n", acc, ann_router_nlsh_history(plain, &h) ? h[0].accuracy : 0,
	       na, np);
	ASSERT_TRUE(acc >= 0.85);
	ASSERT_TRUE(na >= np - 0.01);
	ann_free(b1);
	ann_free(b2);
	ann_free(b3);
	ann_router_free(plain);
	ann_router_free(again);
	ann_router_free(aug);
	free(labels);
	free(pred);
}

/* save -> load -> save is byte-identical and routes identically. */
static void test_roundtrip(void)
{
	t_current = "roundtrip";
	static const uint32_t groups[] = {0, 4};
	for (int t = 0; t < 2; t++) {
		ann_build_opts o;
		opts(&o, ANN_ROUTER_NLSH);
		o.nlsh.nlsh_epochs = 3;
		ann_router *r = train(&o, M, groups[t]);
		size_t len, len2;
		uint8_t *b = save(r, &len);
		ann_router *l;
		ASSERT_OK(ann_router_load(ANN_ROUTER_NLSH, b, len, D, ANN_METRIC_L2, &l, NULL));
		ASSERT_EQ(l->nparts, M);
		ASSERT_EQ(ann_router_nlsh_groups(l), groups[t]);
		ASSERT_EQ(l->ops->ram_bytes(l), r->ops->ram_bytes(r));
		ASSERT_TRUE(r->ops->ram_bytes(r) > (size_t)D * 64 * 4);
		const ann_nlsh_round *h1, *h2;
		ASSERT_EQ(ann_router_nlsh_history(l, &h2), ann_router_nlsh_history(r, &h1));
		ASSERT_TRUE(memcmp(h1, h2, sizeof *h1) == 0);
		uint8_t *b2 = save(l, &len2);
		ASSERT_EQ(len2, len);
		ASSERT_TRUE(memcmp(b, b2, len) == 0);
		ann_router_ctx *c1, *c2;
		ASSERT_OK(r->ops->ctx_new(r, &c1, NULL));
		ASSERT_OK(l->ops->ctx_new(l, &c2, NULL));
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.nprobe = 5;
		for (size_t q = 0; q < NQ; q++) {
			uint32_t p1[5], p2[5];
			ASSERT_EQ(r->ops->route(r, c1, queries + q * D, &so, p1, NULL), 5);
			ASSERT_EQ(l->ops->route(l, c2, queries + q * D, &so, p2, NULL), 5);
			ASSERT_TRUE(memcmp(p1, p2, sizeof p1) == 0);
		}
		r->ops->ctx_free(c1);
		l->ops->ctx_free(c2);
		ann_router_free(r);
		ann_router_free(l);
		ann_free(b);
		ann_free(b2);
	}
}

static void test_corrupt(void)
{
	t_current = "corrupt";
	ann_build_opts o;
	opts(&o, ANN_ROUTER_JOINT);
	o.nlsh.nlsh_epochs = 1;
	o.nlsh.joint_rounds = 1;
	memset(o.nlsh.hidden, 0, sizeof o.nlsh.hidden);
	o.nlsh.hidden[0] = 8;
	ann_router *r = train(&o, M, 4);
	size_t len;
	uint8_t *b = save(r, &len);
	ann_router_free(r);
	uint8_t *c = malloc(len);
	ann_error e = {0};
	ASSERT_OK(load_rc(ANN_ROUTER_JOINT, b, len, D, ANN_METRIC_L2, &e));
	for (size_t i = 0; i < len; i++) {
		memcpy(c, b, len);
		c[i] ^= (uint8_t)(1u << (i % 8));
		int rc = load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e);
		if (!(rc == ANN_E_CORRUPT || (i < 10 && rc == ANN_E_FORMAT)))
			T_FAIL("bit flip at %zu: rc %d (%s)", i, rc, e.msg);
	}
	for (size_t n = 0; n < len; n++) {
		int rc = load_rc(ANN_ROUTER_JOINT, b, n, D, ANN_METRIC_L2, &e);
		if (rc != ANN_E_CORRUPT)
			T_FAIL("truncated to %zu: rc %d (%s)", n, rc, e.msg);
	}
	/* consistent checksum, wrong content */
	ASSERT_ERR(load_rc(ANN_ROUTER_NLSH, b, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "kind");
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, b, len, D + 1, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "dimension");
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, b, len, D, ANN_METRIC_IP, &e), e, ANN_E_CORRUPT, "metric");
	memcpy(c, b, len);
	ann_st16(c + 8, 2);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_FORMAT, "version");
	memcpy(c, b, len);
	ann_st32(c + 32, 3);
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "group");
	memcpy(c, b, len);
	ann_st32(c + 32, 8); /* divides 16, but the classifiers say 4 groups */
	ann_st32(c + 44, 9);
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "classifier");
	memcpy(c, b, len);
	ann_st32(c + 24, 32);
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "shape");
	memcpy(c, b, len);
	ann_st32(c + 36, 100000);
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "history");
	memcpy(c, b, len);
	ann_stf32(c + 40, -1.0f);
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "scale");
	memcpy(c, b, len);
	ann_stf32(c + 64 + 4, NAN);
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "shift");
	/* a nested classifier blob keeps its own checksum */
	memcpy(c, b, len);
	c[64 + 4 * D + 8 + 30] ^= 0x10;
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "classifier 0");
	/* history: a phase that does not exist, a value that is not finite */
	memcpy(c, b, len);
	ann_st32(c + len - 8 - 56, 7);
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "phase");
	memcpy(c, b, len);
	ann_st64(c + len - 8 - 56 + 16, 0x7ff8000000000000ull);
	reseal(c, len);
	ASSERT_ERR(load_rc(ANN_ROUTER_JOINT, c, len, D, ANN_METRIC_L2, &e), e, ANN_E_CORRUPT, "finite");
	free(c);
	ann_free(b);
}

/* Build, open and search through the public API. */
static void check_index(ann_router_kind kind)
{
	char *dir = t_tmpdir();
	char *data = t_path(dir, "base.fbin"), *path = t_path(dir, "idx");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(data, D, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, base, N, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	ann_build_opts o;
	opts(&o, kind);
	o.partitions = M;
	o.sample = N;
	o.nlsh.joint_rounds = 2;
	o.mem_bytes = (size_t)64 << 20;
	ann_error e = {0};
	if (ann_build(data, path, &o, &e) < 0)
		T_FAIL("build: %s", e.msg);
	ann_index *idx;
	if (ann_index_open(path, &idx, &e) < 0)
		T_FAIL("open: %s", e.msg);
	ann_index_info in;
	ASSERT_OK(ann_index_get_info(idx, &in, NULL));
	ASSERT_EQ(in.router, kind);
	ASSERT_EQ(in.partitions, M);
	ASSERT_EQ(in.vectors, N);
	ASSERT_TRUE(in.router_ram_bytes > 0);
	uint64_t total = 0;
	for (uint32_t p = 0; p < M; p++)
		total += ann_index_partition_size(idx, p);
	ASSERT_EQ(total, N);

	static int32_t gt[NQ * 10];
	static float gtd[NQ * 10];
	ann_gt_opts go;
	ann_gt_opts_init(&go);
	go.k = 10;
	go.threads = 1;
	ASSERT_OK(ann_gt_compute_mem(base, N, queries, NQ, D, &go, gt, gtd, NULL));
	static const uint32_t nps[] = {1, 4, M};
	for (size_t t = 0; t < 3; t++) {
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = 10;
		so.nprobe = nps[t];
		ann_searcher *s;
		if (ann_searcher_new(idx, &so, &s, &e) < 0)
			T_FAIL("searcher: %s", e.msg);
		static int64_t ids[NQ * 10];
		static float dists[NQ * 10];
		static ann_query_stats st[NQ];
		if (ann_search(s, queries, NQ, ids, dists, st, &e) < 0)
			T_FAIL("search: %s", e.msg);
		ann_searcher_free(s);
		size_t hits = 0;
		for (size_t q = 0; q < NQ; q++) {
			ASSERT_EQ(st[q].partitions, nps[t]);
			for (size_t a = 0; a < 10; a++)
				for (size_t b = 0; b < 10; b++)
					if (ids[q * 10 + a] == gt[q * 10 + b]) {
						hits++;
						break;
					}
		}
		double recall = (double)hits / (NQ * 10);
		printf("  %s nprobe=%u recall@10 %.3f\n", ann_router_name(kind), nps[t], recall);
		if (nps[t] == 4)
			ASSERT_TRUE(recall >= 0.8);
		if (nps[t] == M)
			ASSERT_TRUE(recall >= 0.999);
	}
	ann_index_close(idx);
	t_rmtree(dir);
	free(dir);
	free(data);
	free(path);
}

static void test_end_to_end(void)
{
	t_current = "end_to_end";
	check_index(ANN_ROUTER_NLSH);
	check_index(ANN_ROUTER_JOINT);
}

int main(void)
{
	ann_rng rng;
	t_init("test_router_nlsh", &rng);
	make_data();
	test_bad_opts();
	test_nlsh();
	test_two_level();
	test_joint();
	test_soft();
	test_augment();
	test_roundtrip();
	test_corrupt();
	test_end_to_end();
	return 0;
}

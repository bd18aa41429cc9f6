/* SPDX-License-Identifier: MIT */
/*
 * bench_distance.c: throughput of the distance kernels at every SIMD level
 * this CPU runs, against the scalar path: one float query against n float
 * rows and n u8 rows (the many-row forms), the pair kernels called in a loop,
 * and the BLAS batch form in GFLOP/s. Medians of --reps runs; a table, or
 * with --json one object per line with commit, CPU and SIMD level.
 *
 *   bench_distance [--json] [--n ROWS] [--d DIM] [--reps R] [--nq Q] [--nx X]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "distance.h"

typedef struct bench_opts {
	size_t n, d, nq, nx;
	int reps;
	bool json;
} bench_opts;

typedef struct bench_ctx {
	const bench_opts *o;
	const float *q;
	const float *x;
	const uint8_t *xu;
	const uint8_t *qu;
	float *out;
	char commit[64];
	char cpu[128];
	char cmd[512];
} bench_ctx;

/* What one kernel run computes, for the table. */
typedef enum kernel_id {
	K_L2_F32_MANY,
	K_IP_F32_MANY,
	K_L2_F32_U8_MANY,
	K_L2_F32_PAIRS,
	K_L2_U8_PAIRS,
	K_COUNT,
} kernel_id;

static const char *const kernel_names[K_COUNT] = {
	"l2_f32_many", "ip_f32_many", "l2_f32_u8_many", "l2_f32 pair loop", "l2_u8 pair loop",
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Copies s into buf of cap bytes, truncating. */
static void copy_str(char *buf, size_t cap, const char *s)
{
	size_t l = strlen(s);
	if (l >= cap)
		l = cap - 1;
	memcpy(buf, s, l);
	buf[l] = 0;
}

/* First line of a command's output into buf, or "unknown". */
static void run_line(const char *cmd, char *buf, size_t cap)
{
	snprintf(buf, cap, "unknown");
	FILE *p = popen(cmd, "r");
	if (!p)
		return;
	char line[256];
	if (fgets(line, sizeof line, p)) {
		line[strcspn(line, "\r\n")] = 0;
		if (line[0])
			copy_str(buf, cap, line);
	}
	pclose(p);
}

static void read_cpu_model(char *buf, size_t cap)
{
	snprintf(buf, cap, "unknown");
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (!f)
		return;
	char line[512];
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, "model name", 10) == 0) {
			char *c = strchr(line, ':');
			if (c) {
				c++;
				while (*c == ' ' || *c == '\t')
					c++;
				c[strcspn(c, "\r\n")] = 0;
				copy_str(buf, cap, c);
			}
			break;
		}
	}
	fclose(f);
}

/* The commit of the tree we run in, else of the source file's tree. */
static void read_commit(char *buf, size_t cap)
{
	run_line("git rev-parse --short HEAD 2>/dev/null", buf, cap);
	if (strcmp(buf, "unknown") != 0)
		return;
	char dir[400];
	copy_str(dir, sizeof dir, __FILE__);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return;
	*slash = 0;
	if (strchr(dir, '\'')) /* keep the shell command well-formed */
		return;
	char cmd[512];
	snprintf(cmd, sizeof cmd, "git -C '%s' rev-parse --short HEAD 2>/dev/null", dir);
	run_line(cmd, buf, cap);
}

static void run_kernel(const bench_ctx *c, const ann_kernels *k, kernel_id id)
{
	const bench_opts *o = c->o;
	size_t n = o->n, d = o->d;
	switch (id) {
	case K_L2_F32_MANY: k->l2_f32_many(c->q, c->x, n, d, c->out); break;
	case K_IP_F32_MANY: k->ip_f32_many(c->q, c->x, n, d, c->out); break;
	case K_L2_F32_U8_MANY: k->l2_f32_u8_many(c->q, c->xu, n, d, c->out); break;
	case K_L2_F32_PAIRS:
		for (size_t i = 0; i < n; i++)
			c->out[i] = k->l2_f32(c->q, c->x + i * d, d);
		break;
	case K_L2_U8_PAIRS:
		for (size_t i = 0; i < n; i++)
			c->out[i] = k->l2_u8(c->qu, c->xu + i * d, d);
		break;
	case K_COUNT: break;
	}
}

static size_t row_bytes(kernel_id id, size_t d)
{
	return id == K_L2_F32_U8_MANY || id == K_L2_U8_PAIRS ? d : d * sizeof(float);
}

static void emit(const bench_ctx *c, const char *level, const char *kernel, double secs, double mdist,
		 double gbs, double speedup, double gflops)
{
	const bench_opts *o = c->o;
	if (!o->json) {
		printf("%-8s %-22s %10.1f %8.2f %8.2fx", level, kernel, mdist, gbs, speedup);
		if (gflops > 0)
			printf(" %8.1f GFLOP/s", gflops);
		printf("\n");
		return;
	}
	printf("{\"bench\":\"distance\",\"level\":\"%s\",\"kernel\":\"%s\",\"n\":%zu,\"d\":%zu,"
	       "\"median_s\":%.6f,\"mdist_s\":%.2f,\"gb_s\":%.3f,\"speedup\":%.3f",
	       level, kernel, gflops > 0 ? o->nq * o->nx : o->n, o->d, secs, mdist, gbs, speedup);
	if (gflops > 0)
		printf(",\"nq\":%zu,\"nx\":%zu,\"gflop_s\":%.2f", o->nq, o->nx, gflops);
	printf(",\"reps\":%d,\"commit\":\"%s\",\"cpu\":\"%s\",\"simd_active\":\"%s\","
	       "\"build\":\"%s\",\"cmd\":\"%s\"}\n",
	       o->reps, c->commit, c->cpu, ann_simd_name(ann_simd_active()),
#ifdef __OPTIMIZE__
	       "optimized",
#else
	       "debug",
#endif
	       c->cmd);
}

static double time_kernel(const bench_ctx *c, const ann_kernels *k, kernel_id id)
{
	double t[64];
	int reps = c->o->reps;
	for (int r = 0; r < reps; r++) {
		double t0 = now_s();
		run_kernel(c, k, id);
		t[r] = now_s() - t0;
	}
	return median(t, reps);
}

static void bench_kernels(const bench_ctx *c)
{
	static const ann_simd_level levels[] = {ANN_SIMD_SCALAR, ANN_SIMD_AVX2, ANN_SIMD_AVX512};
	const bench_opts *o = c->o;
	double scalar_t[K_COUNT] = {0};
	for (int id = 0; id < K_COUNT; id++) {
		for (int li = 0; li < 3; li++) {
			const ann_kernels *k = ann_kernels_for(levels[li]);
			if (!k)
				continue;
			double t = time_kernel(c, k, (kernel_id)id);
			if (levels[li] == ANN_SIMD_SCALAR)
				scalar_t[id] = t;
			double mdist = (double)o->n / t / 1e6;
			double gbs = (double)o->n * (double)row_bytes((kernel_id)id, o->d) / t / 1e9;
			emit(c, ann_simd_name(levels[li]), kernel_names[id], t, mdist, gbs, scalar_t[id] / t,
			     0);
		}
	}
}

static void bench_batch(const bench_ctx *c, const float *bq, const float *bx, float *bout)
{
	const bench_opts *o = c->o;
	double flops = 2.0 * (double)o->nq * (double)o->nx * (double)o->d;
	double base = 0;
	static const int threads[] = {1, 2};
	for (int ti = 0; ti < 2; ti++) {
		ann_blas_threads(threads[ti]);
		double t[64];
		for (int r = 0; r < o->reps; r++) {
			double t0 = now_s();
			ann_dist_batch(ANN_METRIC_L2, bq, o->nq, NULL, bx, o->nx, NULL, o->d, bout);
			t[r] = now_s() - t0;
		}
		double m = median(t, o->reps);
		if (ti == 0)
			base = m;
		char name[64];
		snprintf(name, sizeof name, "dist_batch L2 %dt", threads[ti]);
		emit(c, "blas", name, m, (double)o->nq * (double)o->nx / m / 1e6,
		     (double)o->nx * (double)o->d * 4 / m / 1e9, base / m, flops / m / 1e9);
	}
	ann_blas_threads(1);
}

static void *xalloc(size_t n)
{
	void *p = aligned_alloc(64, ANN_ALIGN_UP(n ? n : 1, 64));
	if (!p) {
		fprintf(stderr, "bench_distance: cannot allocate %zu bytes\n", n);
		exit(1);
	}
	return p;
}

static size_t parse_size(const char *flag, const char *v)
{
	char *end;
	unsigned long long x = strtoull(v, &end, 10);
	if (!*v || *end || x == 0) {
		fprintf(stderr, "bench_distance: %s wants a positive integer, got \"%s\"\n", flag, v);
		exit(2);
	}
	return (size_t)x;
}

int main(int argc, char **argv)
{
	bench_opts o = {.n = 1000000, .d = 128, .nq = 1000, .nx = 100000, .reps = 5, .json = false};
	bench_ctx c = {.o = &o};
	size_t len = 0;
	for (int i = 0; i < argc && len + 2 < sizeof c.cmd; i++)
		len += (size_t)snprintf(c.cmd + len, sizeof c.cmd - len, "%s%s", i ? " " : "", argv[i]);
	for (char *p = c.cmd; *p; p++)
		if (*p == '"' || *p == '\\')
			*p = '\'';
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : "";
		if (!strcmp(a, "--json")) {
			o.json = true;
		} else if (!strcmp(a, "--n")) {
			o.n = parse_size(a, v), i++;
		} else if (!strcmp(a, "--d")) {
			o.d = parse_size(a, v), i++;
		} else if (!strcmp(a, "--nq")) {
			o.nq = parse_size(a, v), i++;
		} else if (!strcmp(a, "--nx")) {
			o.nx = parse_size(a, v), i++;
		} else if (!strcmp(a, "--reps")) {
			size_t r = parse_size(a, v);
			o.reps = r > 64 ? 64 : (int)r;
			i++;
		} else {
			fprintf(stderr,
				"usage: %s [--json] [--n ROWS] [--d DIM] [--reps R] [--nq Q] [--nx X]\n",
				argv[0]);
			return 2;
		}
	}
	read_commit(c.commit, sizeof c.commit);
	read_cpu_model(c.cpu, sizeof c.cpu);

	ann_rng rng;
	ann_rng_seed(&rng, 42);
	float *q = xalloc(o.d * sizeof(float));
	float *x = xalloc(o.n * o.d * sizeof(float));
	uint8_t *xu = xalloc(o.n * o.d), *qu = xalloc(o.d);
	c.out = xalloc(o.n * sizeof(float));
	for (size_t j = 0; j < o.d; j++) {
		q[j] = (float)(ann_rng_uniform(&rng) * 255);
		qu[j] = (uint8_t)ann_rng_below(&rng, 256);
	}
	for (size_t i = 0; i < o.n * o.d; i++) {
		uint64_t r = ann_rng_next(&rng);
		x[i] = (float)(r >> 40) * (1.0f / 65536.0f);
		xu[i] = (uint8_t)r;
	}
	c.q = q;
	c.x = x;
	c.xu = xu;
	c.qu = qu;

	if (!o.json) {
		printf("bench_distance: n=%zu d=%zu reps=%d (median), cpu %s, commit %s, active simd %s\n",
		       o.n, o.d, o.reps, c.cpu, c.commit, ann_simd_name(ann_simd_active()));
		printf("%-8s %-22s %10s %8s %9s\n", "level", "kernel", "Mdist/s", "GB/s", "speedup");
	}
	bench_kernels(&c);
	free(x);
	free(xu);

	float *bq = xalloc(o.nq * o.d * sizeof(float));
	float *bx = xalloc(o.nx * o.d * sizeof(float));
	float *bout = xalloc(o.nq * o.nx * sizeof(float));
	for (size_t i = 0; i < o.nq * o.d; i++)
		bq[i] = (float)ann_rng_uniform(&rng);
	for (size_t i = 0; i < o.nx * o.d; i++)
		bx[i] = (float)ann_rng_uniform(&rng);
	memset(bout, 0, o.nq * o.nx * sizeof(float));
	if (!o.json)
		printf("batch: nq=%zu nx=%zu d=%zu (speedup column: vs 1 thread; GB/s: rows read once)\n",
		       o.nq, o.nx, o.d);
	bench_batch(&c, bq, bx, bout);

	float sink = c.out[o.n - 1] + bout[o.nq * o.nx - 1];
	if (sink != sink)
		printf("(nan)\n");
	free(q);
	free(qu);
	free(c.out);
	free(bq);
	free(bx);
	free(bout);
	return 0;
}

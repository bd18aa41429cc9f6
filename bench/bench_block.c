/* SPDX-License-Identifier: MIT */
/*
 * bench_block.c: block codec figures: bytes per vector on disk and decode throughput (GB/s of
 * decoded vectors, M vectors/s) per encoding, with and without byte shuffle and a trained zstd
 * dictionary, on synthetic SIFT-like data (seeded Gaussian mixture, 128-d, integers 0..255,
 * one block per mixture component) and on Fashion-MNIST (60000 x 784 u8, one block per ~1000
 * images of one class; skipped with a message when the file is absent). Decode figures are
 * medians of --runs passes (default 5) over all blocks with one warm decoder.
 *
 * usage: bench_block [--json] [--quick] [--runs N] [--fmnist DIR]
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "block.h"

typedef struct dataset {
	const char *name;
	uint32_t dim;
	size_t n;     /* vectors */
	uint8_t *u8;  /* n * dim, block after block */
	float *f32;   /* the same values as floats */
	int64_t *ids; /* n, ascending inside each block */
	size_t nblocks;
	size_t *start; /* nblocks + 1 offsets (in vectors) */
} dataset;

typedef struct config {
	ann_block_encoding enc;
	bool shuffle;
	ann_block_codec codec;
	int level;
	bool dict;
	ann_block_center center;
} config;

typedef struct opts {
	bool json, quick;
	int runs;
	const char *fmnist_dir;
	char cmd[512];
	char commit[64];
	char cpu[128];
} opts;

static void die(const char *what, const ann_error *e)
{
	fprintf(stderr, "bench_block: %s: %s\n", what, e ? e->msg : "");
	exit(1);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* ---- data ---------------------------------------------------------------------------------- */

/* Reorders vectors so each block is contiguous: block[i] gives vector i's block; ids are the
 * original indices, so each block holds an ascending, scattered subset of 0..n-1. */
static void group_blocks(dataset *ds, const uint8_t *src, const uint32_t *block, size_t nblocks)
{
	size_t n = ds->n, dim = ds->dim;
	ds->nblocks = nblocks;
	ds->start = calloc(nblocks + 1, sizeof(size_t));
	for (size_t i = 0; i < n; i++)
		ds->start[block[i] + 1]++;
	for (size_t b = 0; b < nblocks; b++)
		ds->start[b + 1] += ds->start[b];
	size_t *fill = malloc(nblocks * sizeof(size_t));
	memcpy(fill, ds->start, nblocks * sizeof(size_t));
	ds->u8 = malloc(n * dim);
	ds->f32 = malloc(n * dim * sizeof(float));
	ds->ids = malloc(n * sizeof(int64_t));
	for (size_t i = 0; i < n; i++) {
		size_t at = fill[block[i]]++;
		memcpy(ds->u8 + at * dim, src + i * dim, dim);
		ds->ids[at] = (int64_t)i;
	}
	for (size_t i = 0; i < n * dim; i++)
		ds->f32[i] = ds->u8[i];
	free(fill);
}

/* SIFT-like: K components with exponential-ish centres (many small values, a long tail) and
 * per-component, per-dimension spreads; sizes vary around n / K. */
static void make_sift(dataset *ds, size_t nblocks, size_t per_block, uint64_t seed)
{
	ann_rng r;
	ann_rng_seed(&r, seed);
	uint32_t dim = 128;
	size_t n = nblocks * per_block;
	float *cent = malloc(sizeof(float) * nblocks * dim), *sig = malloc(sizeof(float) * nblocks * dim);
	double *w = malloc(sizeof(double) * nblocks), wsum = 0;
	for (size_t c = 0; c < nblocks; c++) {
		for (uint32_t j = 0; j < dim; j++) {
			cent[c * dim + j] = (float)fmin(200.0, -28.0 * log(1.0 - ann_rng_uniform(&r)));
			sig[c * dim + j] = (float)(3.0 + 15.0 * ann_rng_uniform(&r));
		}
		w[c] = 0.5 + ann_rng_uniform(&r);
		wsum += w[c];
	}
	uint8_t *x = malloc(n * dim);
	uint32_t *blk = malloc(n * sizeof(uint32_t));
	for (size_t i = 0; i < n; i++) {
		double u = ann_rng_uniform(&r) * wsum;
		size_t c = 0;
		while (c + 1 < nblocks && u >= w[c]) {
			u -= w[c];
			c++;
		}
		blk[i] = (uint32_t)c;
		for (uint32_t j = 0; j < dim; j++) {
			double v = floor(cent[c * dim + j] + sig[c * dim + j] * ann_rng_normal(&r) + 0.5);
			x[i * dim + j] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
		}
	}
	ds->name = "sift-like";
	ds->dim = dim;
	ds->n = n;
	group_blocks(ds, x, blk, nblocks);
	free(x);
	free(blk);
	free(cent);
	free(sig);
	free(w);
}

static uint8_t *gz_read_all(const char *path, size_t *len)
{
	gzFile f = gzopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 1 << 20, n = 0;
	uint8_t *buf = malloc(cap);
	for (;;) {
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
		int r = gzread(f, buf + n, (unsigned)(cap - n > (1u << 30) ? 1u << 30 : cap - n));
		if (r < 0) {
			gzclose(f);
			free(buf);
			return NULL;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	gzclose(f);
	*len = n;
	return buf;
}

/* Fashion-MNIST train images (idx3: magic 0x803, n, rows, cols, big-endian), grouped by class
 * label (a stand-in for a clustering) into blocks of at most 1000 images. */
static bool load_fmnist(dataset *ds, const char *dir)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/train-images-idx3-ubyte.gz", dir);
	size_t len, llen = 0;
	uint8_t *img = gz_read_all(path, &len);
	if (!img) {
		printf("fashion-mnist: %s not readable, skipped\n", path);
		return false;
	}
	uint32_t hdr[4];
	for (int i = 0; i < 4 && len >= 16; i++)
		hdr[i] = (uint32_t)img[4 * i] << 24 | (uint32_t)img[4 * i + 1] << 16 |
		         (uint32_t)img[4 * i + 2] << 8 | img[4 * i + 3];
	if (len < 16 || hdr[0] != 0x803 || (uint64_t)hdr[1] * hdr[2] * hdr[3] + 16 != len) {
		printf("fashion-mnist: %s is not an idx3 image file, skipped\n", path);
		free(img);
		return false;
	}
	size_t n = hdr[1];
	uint32_t dim = hdr[2] * hdr[3];
	snprintf(path, sizeof path, "%s/train-labels-idx1-ubyte.gz", dir);
	uint8_t *lab = gz_read_all(path, &llen);
	uint32_t *blk = malloc(n * sizeof(uint32_t));
	size_t nblocks;
	if (lab && llen == n + 8) {
		size_t cnt[256] = { 0 }, base[257] = { 0 };
		for (size_t i = 0; i < n; i++)
			cnt[lab[8 + i]]++;
		for (int c = 0; c < 256; c++)
			base[c + 1] = base[c] + (cnt[c] + 999) / 1000;
		size_t seen[256] = { 0 };
		for (size_t i = 0; i < n; i++) {
			uint8_t c = lab[8 + i];
			size_t per = (cnt[c] + (base[c + 1] - base[c]) - 1) / (base[c + 1] - base[c]);
			blk[i] = (uint32_t)(base[c] + seen[c]++ / per);
		}
		nblocks = base[256];
	} else {
		printf("fashion-mnist: no labels, blocks are consecutive images\n");
		for (size_t i = 0; i < n; i++)
			blk[i] = (uint32_t)(i / 1000);
		nblocks = (n + 999) / 1000;
	}
	ds->name = "fashion-mnist";
	ds->dim = dim;
	ds->n = n;
	group_blocks(ds, img + 16, blk, nblocks);
	free(blk);
	free(img);
	free(lab);
	return true;
}

static void free_dataset(dataset *ds)
{
	free(ds->u8);
	free(ds->f32);
	free(ds->ids);
	free(ds->start);
}

/* ---- one configuration --------------------------------------------------------------------- */

static const char *enc_name(ann_block_encoding e)
{
	switch (e) {
	case ANN_BLOCK_F32: return "F32";
	case ANN_BLOCK_F16: return "F16";
	case ANN_BLOCK_U8: return "U8";
	case ANN_BLOCK_I8: return "I8";
	case ANN_BLOCK_SQ8: return "SQ8";
	}
	return "?";
}

static uint8_t *encode_block(ann_block_enc *enc, const ann_block_params *p, const dataset *ds, size_t b,
                             size_t *len)
{
	size_t s = ds->start[b], cnt = ds->start[b + 1] - s;
	bool u8 = p->encoding == ANN_BLOCK_U8;
	const void *v = u8 ? (const void *)(ds->u8 + s * ds->dim) : (const void *)(ds->f32 + s * ds->dim);
	uint8_t *out;
	ann_error e;
	if (block_encode(enc, p, ds->dim, cnt, ds->ids + s, v, u8 ? ANN_DTYPE_U8 : ANN_DTYPE_F32, b, 1, &out,
	                 len, &e) < 0)
		die("encode", &e);
	return out;
}

/* Trains a dictionary on the first blocks (codec NONE, same encoding and shuffle). */
static ann_block_dict *train_dict(ann_block_enc *enc, const ann_block_params *p, const dataset *ds,
                                  double *train_s, size_t *dict_bytes)
{
	enum { NSAMPLE = 64 }; /* the first blocks, at most this many */
	size_t ns = ds->nblocks < NSAMPLE ? ds->nblocks : NSAMPLE;
	uint8_t *bufs[NSAMPLE];
	size_t lens[NSAMPLE];
	ann_block_params sp = *p;
	sp.codec = ANN_BLOCK_CODEC_NONE;
	sp.dict = NULL;
	for (size_t b = 0; b < ns; b++)
		bufs[b] = encode_block(enc, &sp, ds, b, &lens[b]);
	uint8_t *d;
	size_t dlen;
	ann_error e;
	uint64_t t0 = ann_now_ns();
	int rc = block_dict_train((const uint8_t *const *)bufs, lens, ns, 112 << 10, &d, &dlen, &e);
	*train_s = (double)(ann_now_ns() - t0) * 1e-9;
	for (size_t b = 0; b < ns; b++)
		ann_aligned_free(bufs[b]);
	if (rc == ANN_E_UNSUPPORTED) {
		printf("  (%s: %s)\n", enc_name(p->encoding), e.msg);
		return NULL;
	}
	if (rc < 0)
		die("train", &e);
	ann_block_dict *dict;
	if (block_dict_new(1, d, dlen, p->level, &dict, &e) < 0)
		die("dict", &e);
	ann_free(d);
	*dict_bytes = dlen;
	return dict;
}

static void run_config(const opts *o, const dataset *ds, const config *c)
{
	ann_error e;
	ann_block_enc *enc;
	ann_block_dec *dec;
	if (block_enc_new(&enc, &e) < 0 || block_dec_new(0, &dec, &e) < 0)
		die("contexts", &e);
	ann_block_params p;
	block_params_init(&p);
	p.encoding = c->enc;
	p.shuffle = c->shuffle;
	p.codec = c->codec;
	p.level = c->level;
	p.center = c->center;
	double train_s = 0;
	size_t dict_bytes = 0;
	ann_block_dict *dict = NULL;
	if (c->dict) {
		dict = train_dict(enc, &p, ds, &train_s, &dict_bytes);
		if (!dict) {
			block_enc_free(enc);
			block_dec_free(dec);
			return;
		}
		p.dict = dict;
	}

	uint8_t **bufs = malloc(ds->nblocks * sizeof *bufs);
	size_t *lens = malloc(ds->nblocks * sizeof *lens);
	uint64_t stored = 0, disk = 0, ids_bytes = 0, centred = 0;
	uint64_t t0 = ann_now_ns();
	for (size_t b = 0; b < ds->nblocks; b++)
		bufs[b] = encode_block(enc, &p, ds, b, &lens[b]);
	double enc_s = (double)(ann_now_ns() - t0) * 1e-9;
	for (size_t b = 0; b < ds->nblocks; b++) {
		ann_block_info in;
		if (block_peek(bufs[b], lens[b], &in, &e) < 0)
			die("peek", &e);
		stored += in.header_bytes + in.stored_bytes;
		disk += lens[b];
		ids_bytes += in.ids_bytes;
		centred += (in.flags & BLOCK_FLAG_CENTER) != 0;
	}

	size_t out_esize = (c->enc == ANN_BLOCK_U8 || c->enc == ANN_BLOCK_I8) ? 1 : 4;
	double out_bytes = (double)ds->n * ds->dim * (double)out_esize;
	double *t = malloc(sizeof(double) * (size_t)o->runs);
	for (int run = -1; run < o->runs; run++) { /* run -1 warms the decoder's buffers */
		uint64_t a = ann_now_ns();
		size_t seen = 0;
		for (size_t b = 0; b < ds->nblocks; b++) {
			ann_block_view v;
			if (block_decode(dec, bufs[b], lens[b], dict, &v, &e) < 0)
				die("decode", &e);
			seen += v.info.count;
		}
		if (seen != ds->n)
			die("decoded count differs", NULL);
		if (run >= 0)
			t[run] = (double)(ann_now_ns() - a) * 1e-9;
	}
	qsort(t, (size_t)o->runs, sizeof(double), cmp_double);
	double med = o->runs % 2 ? t[o->runs / 2] : 0.5 * (t[o->runs / 2 - 1] + t[o->runs / 2]);
	double n = (double)ds->n;
	double f32_bytes = n * (ds->dim * 4.0 + 8.0);
	char codec[16];
	if (c->codec == ANN_BLOCK_CODEC_NONE)
		snprintf(codec, sizeof codec, "none");
	else
		snprintf(codec, sizeof codec, "zstd%d", c->level);
	static const char *cname[] = { "auto", "off", "on" };
	printf("%-13s %-4s %-5s %-7s %-5s %-4s %4.0f%% %9.1f %9.1f %7.2f %7.2f %8.2f %8.3f %8.1f\n", ds->name,
	       enc_name(c->enc), c->shuffle ? "yes" : "no", codec, c->dict ? "yes" : "no", cname[c->center],
	       100.0 * (double)centred / (double)ds->nblocks, (double)stored / n, (double)disk / n,
	       f32_bytes / (double)disk, (double)ids_bytes / n, out_bytes / med * 1e-9, n / med * 1e-6,
	       n * ds->dim * (c->enc == ANN_BLOCK_U8 ? 1.0 : 4.0) / enc_s * 1e-6);
	if (o->json)
		printf("{\"bench\":\"block\",\"dataset\":\"%s\",\"dim\":%u,\"vectors\":%zu,\"blocks\":%zu,"
		       "\"encoding\":\"%s\",\"shuffle\":%s,\"codec\":\"%s\",\"level\":%d,\"dict\":%s,"
		       "\"center\":\"%s\",\"centred_blocks\":%" PRIu64 ","
		       "\"dict_bytes\":%zu,\"dict_train_s\":%.3f,\"stored_bytes_per_vec\":%.2f,"
		       "\"disk_bytes_per_vec\":%.2f,\"ratio_vs_f32\":%.3f,\"id_varint_bytes_per_vec\":%.3f,"
		       "\"decode_gbps\":%.3f,\"decode_mvecps\":%.3f,\"decode_runs\":%d,\"decode_min_s\":%.6f,"
		       "\"decode_median_s\":%.6f,\"encode_mbps\":%.2f,\"commit\":\"%s\",\"build\":\"%s\","
		       "\"cpu\":\"%s\",\"simd\":\"scalar (block codec has no SIMD dispatch)\","
		       "\"cmd\":\"%s\"}\n",
		       ds->name, ds->dim, ds->n, ds->nblocks, enc_name(c->enc), c->shuffle ? "true" : "false",
		       c->codec == ANN_BLOCK_CODEC_NONE ? "none" : "zstd", c->level,
		       c->dict ? "true" : "false", cname[c->center], centred, dict_bytes, train_s,
		       (double)stored / n, (double)disk / n, f32_bytes / (double)disk, (double)ids_bytes / n,
		       out_bytes / med * 1e-9, n / med * 1e-6, o->runs, t[0], med,
		       n * ds->dim * (c->enc == ANN_BLOCK_U8 ? 1.0 : 4.0) / enc_s * 1e-6, o->commit,
#ifdef __OPTIMIZE__
		       "optimized",
#else
		       "debug",
#endif
		       o->cpu, o->cmd);
	fflush(stdout);
	free(t);
	for (size_t b = 0; b < ds->nblocks; b++)
		ann_aligned_free(bufs[b]);
	free(bufs);
	free(lens);
	block_dict_free(dict);
	block_enc_free(enc);
	block_dec_free(dec);
}

static void run_dataset(const opts *o, const dataset *ds)
{
	printf("\n%s: %zu vectors x %u dims in %zu blocks (%.0f vectors per block)\n", ds->name, ds->n,
	       ds->dim, ds->nblocks, (double)ds->n / (double)ds->nblocks);
	printf("%-13s %-4s %-5s %-7s %-5s %-4s %5s %9s %9s %7s %7s %8s %8s %8s\n", "dataset", "enc", "shuf",
	       "codec", "dict", "ctr", "ctr'd", "B/vec", "disk/vec", "x f32", "id B", "dec GB/s", "Mvec/s",
	       "enc MB/s");
	static const ann_block_encoding encs[] = { ANN_BLOCK_F32, ANN_BLOCK_F16, ANN_BLOCK_U8,
		                                   ANN_BLOCK_SQ8 };
	for (size_t k = 0; k < sizeof encs / sizeof encs[0]; k++) {
		bool one_byte = encs[k] == ANN_BLOCK_U8 || encs[k] == ANN_BLOCK_SQ8;
		config base = { .enc = encs[k], .codec = ANN_BLOCK_CODEC_NONE, .level = 3 };
		run_config(o, ds, &base);
		for (int dict = 0; dict < 2; dict++) {
			for (int shuf = 0; shuf < 2; shuf++) {
				config c = { .enc = encs[k],
					     .shuffle = shuf,
					     .codec = ANN_BLOCK_CODEC_ZSTD,
					     .level = 3,
					     .dict = dict };
				run_config(o, ds, &c);
				if (one_byte && !dict) {
					c.center = ANN_BLOCK_CENTER_OFF;
					run_config(o, ds, &c);
				}
			}
		}
	}
	/* zstd level sweep on U8 rows. */
	static const int levels[] = { -5, 1, 9, 19 };
	for (size_t k = 0; k < sizeof levels / sizeof levels[0]; k++) {
		if (o->quick && levels[k] == 19)
			continue;
		config c = { .enc = ANN_BLOCK_U8, .codec = ANN_BLOCK_CODEC_ZSTD, .level = levels[k] };
		run_config(o, ds, &c);
	}
}

static void run_small(const opts *o, const dataset *ds)
{
	printf("\n%s: %zu vectors x %u dims in %zu blocks (%.0f vectors per block)\n", ds->name, ds->n,
	       ds->dim, ds->nblocks, (double)ds->n / (double)ds->nblocks);
	printf("%-13s %-4s %-5s %-7s %-5s %-4s %5s %9s %9s %7s %7s %8s %8s %8s\n", "dataset", "enc", "shuf",
	       "codec", "dict", "ctr", "ctr'd", "B/vec", "disk/vec", "x f32", "id B", "dec GB/s", "Mvec/s",
	       "enc MB/s");
	static const config cs[] = {
		{ .enc = ANN_BLOCK_U8, .codec = ANN_BLOCK_CODEC_NONE, .level = 3 },
		{ .enc = ANN_BLOCK_U8, .codec = ANN_BLOCK_CODEC_ZSTD, .level = 3 },
		{ .enc = ANN_BLOCK_U8, .codec = ANN_BLOCK_CODEC_ZSTD, .level = 3, .dict = true },
		{ .enc = ANN_BLOCK_F32, .shuffle = true, .codec = ANN_BLOCK_CODEC_ZSTD, .level = 3 },
		{ .enc = ANN_BLOCK_F32,
		  .shuffle = true,
		  .codec = ANN_BLOCK_CODEC_ZSTD,
		  .level = 3,
		  .dict = true },
	};
	for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++)
		run_config(o, ds, &cs[k]);
}

static void probe_env(opts *o, int argc, char **argv)
{
	size_t at = 0;
	for (int i = 0; i < argc && at < sizeof o->cmd - 1; i++)
		at += (size_t)snprintf(o->cmd + at, sizeof o->cmd - at, "%s%s", i ? " " : "", argv[i]);
	/* The commit: $ANNANN_COMMIT, else git in the working directory, else "unknown". */
	const char *env = getenv("ANNANN_COMMIT");
	snprintf(o->commit, sizeof o->commit, "%s", env && *env ? env : "unknown");
	FILE *p = env && *env ? NULL : popen("git rev-parse --short HEAD 2>/dev/null", "r");
	if (p) {
		if (fgets(o->commit, sizeof o->commit, p))
			o->commit[strcspn(o->commit, "\n")] = 0;
		pclose(p);
	}
	snprintf(o->cpu, sizeof o->cpu, "unknown");
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[256];
	while (f && fgets(line, sizeof line, f)) {
		if (strncmp(line, "model name", 10) == 0) {
			char *c = strchr(line, ':');
			if (c) {
				snprintf(o->cpu, sizeof o->cpu, "%s", c + 2);
				o->cpu[strcspn(o->cpu, "\n")] = 0;
			}
			break;
		}
	}
	if (f)
		fclose(f);
}

int main(int argc, char **argv)
{
	opts o = { .runs = 5, .fmnist_dir = "/usr/share/datasets/fashion-mnist" };
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			o.json = true;
		else if (!strcmp(argv[i], "--quick"))
			o.quick = true;
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			o.runs = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--fmnist") && i + 1 < argc)
			o.fmnist_dir = argv[++i];
		else {
			fprintf(stderr, "usage: %s [--json] [--quick] [--runs N] [--fmnist DIR]\n", argv[0]);
			return 2;
		}
	}
	if (o.runs < 1)
		o.runs = 1;
	probe_env(&o, argc, argv);
	printf("bench_block: commit %s, %s, decode = median of %d runs over all blocks, one warm decoder\n",
	       o.commit, o.cpu, o.runs);
	printf("B/vec: header + stored payload per vector; disk/vec: with 4 KiB padding; "
	       "x f32: (dim*4 + 8) / "
	       "disk/vec;\nctr: centring mode asked, ctr'd: blocks centred; id B: varint id bytes per vector "
	       "before zstd;\ndec GB/s: decoded vector bytes (float rows for F32/F16/SQ8, u8 rows for U8); "
	       "enc MB/s: input bytes (u8 for U8, f32 otherwise)\n");

	dataset sift = { 0 };
	make_sift(&sift, o.quick ? 60 : 300, 1000, 20261123);
	run_dataset(&o, &sift);
	free_dataset(&sift);

	/* Small partitions (32 vectors, 4 KiB of u8): where a trained dictionary can pay. */
	dataset small = { 0 };
	make_sift(&small, o.quick ? 500 : 2000, 32, 20261124);
	small.name = "sift-small";
	run_small(&o, &small);
	free_dataset(&small);

	dataset fm = { 0 };
	if (load_fmnist(&fm, o.fmnist_dir)) {
		run_dataset(&o, &fm);
		free_dataset(&fm);
	}
	return 0;
}

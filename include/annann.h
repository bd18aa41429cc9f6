/* SPDX-License-Identifier: MIT */
/*
 * annann.h: the public interface of libannann, a disk-resident approximate
 * nearest-neighbour index. This header is the only one installed; every
 * exported symbol starts with ann_. docs/API.md is the narrative companion.
 *
 * Conventions that hold for every function below unless it says otherwise:
 *  - Fallible functions return int: ANN_OK (0) or a negative ann_status.
 *  - Their last parameter is an optional ann_error *err (NULL allowed); on
 *    failure it receives the same code, the errno if any, and a message that
 *    names the file, the position and what was expected.
 *  - Inputs are borrowed for the duration of the call.
 *  - Handles returned through a pointer-to-pointer are NULL after a failure,
 *    with nothing to free. Destructors accept NULL.
 *  - One environment variable is read: ANNANN_SIMD=scalar|avx2|avx512 forces
 *    the distance kernels (a level the CPU lacks falls back to the best one
 *    it has, with ann_simd_active() telling which ran). Tests only:
 *    ANNANN_FAULT_OP=uring (with ANNANN_FAULT_N ...) makes the block reader
 *    fail its Nth io_uring read (tests/fault/run.sh, docs/HOSTILE.md).
 */
#ifndef ANNANN_H
#define ANNANN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define ANN_API __attribute__((visibility("default")))
#else
#define ANN_API
#endif

#define ANN_VERSION_MAJOR 0
#define ANN_VERSION_MINOR 1
#define ANN_VERSION_PATCH 0

/** Status codes. Values are stable forever; new codes are appended. */
typedef enum ann_status {
	ANN_OK = 0,
	ANN_E_INVAL = -1,       /**< misuse: a bad argument or option */
	ANN_E_NOMEM = -2,       /**< an allocation failed (ours, a library's, or a system call's ENOMEM) */
	ANN_E_BUDGET = -3,      /**< the memory budget is too small; the message names the shortfall */
	ANN_E_IO = -4,          /**< a system call failed; ann_error.sys_errno keeps errno */
	ANN_E_CORRUPT = -5,     /**< checksum or structure mismatch in stored data */
	ANN_E_FORMAT = -6,      /**< bad magic or unsupported format version */
	ANN_E_BADINPUT = -7,    /**< malformed input file (vectors, ids, ground truth) */
	ANN_E_NOTFOUND = -8,    /**< a file, key, or id does not exist */
	ANN_E_UNSUPPORTED = -9, /**< valid request this build or machine cannot serve */
	ANN_E_STATE = -10,      /**< the handle is in a failed state; only free/abort remain */
	ANN_E_EXISTS = -11,     /**< the id or file already exists */
	ANN_E_CANCELED = -12,   /**< the caller's cancel callback asked to stop */
} ann_status;

/** Detailed error, owned by the caller. */
typedef struct ann_error {
	int code;      /**< the ann_status returned */
	int sys_errno; /**< errno of the failing system call, or 0 */
	char msg[512]; /**< NUL-terminated message */
} ann_error;

/** @return a static, never-freed description of @p code ("unknown error" otherwise). */
ANN_API const char *ann_strerror(int code);

/** @return the library version as "MAJOR.MINOR.PATCH". */
ANN_API const char *ann_version(void);

/** Distance between vectors. Smaller is nearer for every metric:
 * L2 is the squared Euclidean distance, IP is the negated inner product,
 * COSINE is 1 - cos(a, b). */
typedef enum ann_metric {
	ANN_METRIC_L2 = 0,
	ANN_METRIC_IP = 1,
	ANN_METRIC_COSINE = 2,
} ann_metric;

/** Element type of vectors in files and blocks. */
typedef enum ann_dtype {
	ANN_DTYPE_F32 = 0,
	ANN_DTYPE_U8 = 1,
	ANN_DTYPE_I8 = 2,
	ANN_DTYPE_I32 = 3, /**< ids (ivecs, ground truth) */
	ANN_DTYPE_F16 = 4,
} ann_dtype;

/** Instruction-set level of the distance kernels. */
typedef enum ann_simd_level {
	ANN_SIMD_SCALAR = 0,
	ANN_SIMD_AVX2 = 1,
	ANN_SIMD_AVX512 = 2,
} ann_simd_level;

/** @return the level the library's kernels use in this process: the best the
 * CPU supports, or ANNANN_SIMD's choice when set and supported. Thread-safe;
 * computed once. */
ANN_API ann_simd_level ann_simd_active(void);

/** @return "scalar", "avx2" or "avx512". */
ANN_API const char *ann_simd_name(ann_simd_level level);

/** Progress callback for long work. @p phase is a static string naming the
 * phase ("sample", "kmeans", "route", "pack", ...), @p done and @p total are
 * in the phase's own unit (vectors, iterations); total is 0 when unknown.
 * Called from the thread doing the work, at most a few times per second. */
typedef void (*ann_progress_fn)(void *ctx, const char *phase, uint64_t done, uint64_t total);
/** One line of a build's training history (no newline): a router's loss per
 * epoch, labels changed per round, cut and balance. */
typedef void (*ann_log_fn)(void *ctx, const char *line);
/** Cancellation poll for long work: return non-zero to stop. Called from the
 * thread doing the work between chunks (a few times per second or more);
 * the work then fails with ANN_E_CANCELED and undoes what it wrote. */
typedef int (*ann_cancel_fn)(void *ctx);


/* ======================================================================
 * Indexes
 * ====================================================================== */

/** Router: how vectors are assigned to partitions and queries to the
 * partitions worth reading. */
typedef enum ann_router_kind {
	ANN_ROUTER_KMEANS = 0, /**< k-means in the original space (static baseline) */
	ANN_ROUTER_ANNANN = 1, /**< autoencoder + DEC, HNSW over embedded centroids */
	ANN_ROUTER_NLSH = 2,   /**< k-NN graph, METIS partition, MLP classifier */
	ANN_ROUTER_JOINT = 3,  /**< nlsh refined by alternating hard labels */
	ANN_ROUTER_SOFT = 4,   /**< relaxed differentiable partitioner (negative result) */
} ann_router_kind;

/** Where blocks live. */
typedef enum ann_store_kind {
	ANN_STORE_FILE = 0, /**< blocks.dat, read with O_DIRECT through io_uring */
	ANN_STORE_LMDB = 1, /**< values of an LMDB database, read through its map */
} ann_store_kind;

/** How vectors are stored in blocks. AUTO keeps the input's type (u8 input
 * stays u8, float stays f32). */
typedef enum ann_encoding {
	ANN_ENC_AUTO = -1,
	ANN_ENC_F32 = 0,
	ANN_ENC_F16 = 1,
	ANN_ENC_U8 = 2,
	ANN_ENC_I8 = 3,
	ANN_ENC_SQ8 = 4,
} ann_encoding;

/** "Let the build choose" for ann_build_opts.code_bits and router_bits
 * (ann_build_opts_init's default; docs/DESIGN.md "Defaults"). */
#define ANN_AUTO 0xffffffffu
/** ann_build_opts.code_bits: codes blocks for certain, the build chooses the
 * bits (what `--codes rabitq` without `--code-bits` asks for). */
#define ANN_AUTO_BITS 0xfffffffeu

/** Parameters of the k-means router (ann_build_opts.kmeans): k-means on the sample, the
 * centroids in an HNSW graph or, with router_bits, as RaBitQ codes. */
typedef struct ann_kmeans_router_opts {
	uint32_t kmeans_iters;   /**< Lloyd iterations; default 20 */
	double balance;          /**< cap partition size at balance * n / partitions; 0 = no cap; default -1 =
	                              auto: 1.3 (docs/DESIGN.md "Defaults") */
	double soar_lambda;      /**< k-means router: 0 (default) picks the extra copies' partitions by distance;
	                              > 0 by SOAR's orthogonality-amplified residual loss with this lambda */
	uint32_t hnsw_m;         /**< HNSW degree over centroids; default 0 = 32, or 4 up to 8192 centroids (single queries scan them whole; docs/DESIGN.md "Directional probe order") */
	uint32_t hnsw_ef_construction; /**< default 200 */
	uint32_t router_bits;    /**< metric l2: 0 = the centroids in an HNSW graph;
	                              1..8 = the compact router: centroids as RaBitQ codes of this many bits per
	                              dimension, routed by a flat scan of the codes (docs/DESIGN.md "The compact
	                              centroid router"); default ANN_AUTO: the compact router (1 bit from 512
	                              dimensions on, else 4) when partitions is auto and it allows at least
	                              twice the graph's partitions within the budgets, else the graph */
	uint32_t kmeans_coarse;  /**< training: 0 (default) = two-level k-means with ceil(sqrt(partitions))
	                              coarse clusters when partitions > 4096, else one level; 1 = always one level
	                              (Lloyd over all partitions); C >= 2 = two levels with C coarse clusters
	                              (docs/DESIGN.md "Routing at scale") */
} ann_kmeans_router_opts;

/** Parameters of the annann router (ann_build_opts.annann): an autoencoder, k-means in its
 * embedding space (kmeans_iters, balance as for the k-means router) and an HNSW graph over the
 * embedded centroids (hnsw_m, hnsw_ef_construction). */
typedef struct ann_annann_router_opts {
	uint32_t embed_dim;      /**< default 64 (measured best of 16/32/64, docs/ROUTER_ANNANN.md) */
	uint32_t hidden[4];      /**< encoder hidden layer sizes, 0-terminated; default {256} */
	uint32_t ae_epochs;      /**< reconstruction epochs; default 10 */
	uint32_t dec_epochs;     /**< DEC epochs; default 0: DEC measured worse (docs/ROUTER_ANNANN.md); the seed used 5 */
	double dec_alpha;        /**< Student-t degrees of freedom; default 1 */
	double recon_weight;     /**< weight of reconstruction during DEC; default 1 */
	uint32_t kmeans_iters;   /**< Lloyd iterations in the embedding space; default 20 */
	double balance;          /**< cap embedded clusters at balance * n / partitions; 0 = no cap (default) */
	uint32_t hnsw_m;         /**< HNSW degree over the embedded centroids; default 32 */
	uint32_t hnsw_ef_construction; /**< default 200 */
} ann_annann_router_opts;

/** Parameters of the graph routers nlsh, joint and soft (ann_build_opts.nlsh). */
typedef struct ann_nlsh_router_opts {
	uint32_t hidden[4];      /**< classifier hidden layer sizes, 0-terminated; default {256} */
	uint32_t knn_k;          /**< k of the k-NN graph; default 10 */
	double imbalance;        /**< METIS imbalance; default 0.03 */
	uint32_t nlsh_epochs;    /**< classifier epochs; default 20 */
	int soft_labels;         /**< train on neighbours' part distribution; default 1 */
	double nlsh_augment;     /**< > 0: half the classifier's training rows get Gaussian noise of this many
	                              sample standard deviations per dimension (robustness to shifted
	                              queries, docs/ROUTER_NLSH.md); default 0 = off */
	uint32_t joint_rounds;   /**< alternating rounds; default 5 */
	double joint_lambda;     /**< weight of the neighbour-share term; default 1 */
} ann_nlsh_router_opts;

/** Build options; ann_build_opts_init() sets the defaults named below. The
 * fields marked auto are chosen by the build for the data's size, dimension
 * and encoding unless the caller sets them (docs/DESIGN.md "Defaults": codes
 * blocks, as many partitions as 3.5 B/vector of router RAM and 1.49x raw on
 * disk allow, the compact router when it allows twice the partitions). */
typedef struct ann_build_opts {
	ann_router_kind router;  /**< default KMEANS */
	uint32_t partitions;     /**< number of partitions (clusters); default 0 = auto: kmeans router, the
	                              largest count the RAM and disk budgets allow (at most n / 32); other
	                              routers n / 1000 */
	ann_store_kind store;    /**< default FILE */
	ann_encoding encoding;   /**< default AUTO */
	ann_metric metric;       /**< default L2 */
	int zstd_level;          /**< default 3; 0 stores blocks uncompressed */
	int shuffle;             /**< byte shuffle before zstd: 1 on, 0 off, -1 (default) on for f32/f16 only */
	int dictionary;          /**< train a zstd dictionary on sample blocks; default 0 */
	size_t mem_bytes;        /**< memory budget of the build; default 1 GiB */
	int threads;             /**< worker threads; default 2 */
	uint64_t seed;           /**< default 1 */
	uint64_t sample;         /**< training sample size; default 0 = min(n, 256 * partitions, budget), or
	                              min(n, 64 * partitions, budget) when partitions is auto */
	uint32_t replicas;       /**< R: copies per vector (SPANN closure); default 1 = none */
	double replica_eps;      /**< extra copies go to partitions within (1 + eps) of the nearest; default 0.1 */
	/* Each router kind's own parameters: a trainer sees only its kind's (docs/DESIGN.md "Shape") */
	ann_kmeans_router_opts kmeans; /**< ANN_ROUTER_KMEANS */
	ann_annann_router_opts annann; /**< ANN_ROUTER_ANNANN */
	ann_nlsh_router_opts nlsh;     /**< ANN_ROUTER_NLSH, JOINT and SOFT */
	/* Codes (issue 12; docs/DESIGN.md "Codes and re-ranking") */
	uint32_t code_bits;      /**< RaBitQ bits per dimension 1..8 in codes blocks (f32, u8, i8 encodings);
	                              0 = format 1 blocks without codes; default ANN_AUTO: 1 bit from 512
	                              dimensions on, else 2, when the encoding takes codes (f32, u8, i8) and
	                              the blocks fit 1.49x raw with one partition; otherwise 0. ANN_AUTO_BITS:
	                              codes whatever the disk, bits as for ANN_AUTO */
	uint32_t code_factors;   /**< codes: bits of a record's factors, 16 (default: slim records of 5 fewer
	                              bytes, codes block 2.1, docs/FORMAT.md "Codes block"; a block whose
	                              factors do not fit binary16 is written full) or 32 (0 means 32) */
	uint32_t code_order;     /**< codes: order of each block's exact rows, 1 (default) page-local so that a
	                              query's re-rank candidates share 4 KiB pages (codes block 2.2, docs/FORMAT.md
	                              "Page-local row order"), 0 id order (blocks every older build reads) */
	uint32_t page_fit;       /**< codes blocks, k-means graph router, l2, one copy: 1 (default) moves the rows
	                              of a nearly empty last head page to the next-nearest centroid's partition
	                              where its head has room, so queries read fewer head pages (docs/DESIGN.md
	                              "Page-fitted heads"); 0 keeps every row in its nearest partition */
	int tune;                /**< after the build, fit learned adaptive probing on synthetic queries
	                              (ann_tune_synthetic, ANN_TUNE_SYNTHETIC_QUERIES of them; docs/DESIGN.md
	                              "Self-tuned adaptive probing"): -1 (default) auto = when the index takes it
	                              and is large enough to gain (k-means router, codes, L2, at least
	                              ANN_TUNE_AUTO_MIN_PARTS partitions and ANN_TUNE_AUTO_MIN_VECTORS vectors);
	                              0 never; 1 whenever the index takes it. A failed fit leaves a complete
	                              index without a model and says why on the log */
	int directions;          /**< after the build, before the tuning: the directional probe order
	                              (ann_tune_directions; docs/DESIGN.md "Directional probe order"). -1
	                              (default) auto = as many directions a partition, up to
	                              ANN_DIRS_AUTO_MAX, as the router's RAM leaves of ANN_RAM_PER_VECTOR
	                              bytes per vector and the disk of 1.5 x the raw vectors (k-means
	                              router, codes, L2); 0 none; 1..16 that many */
	ann_progress_fn progress; /**< NULL: silent */
	void *progress_ctx;
	ann_log_fn log;           /**< training history lines; NULL: none */
	void *log_ctx;
	ann_cancel_fn cancel;     /**< polled at each progress report of the sample, route and
				       pack passes; NULL: never canceled. A canceled build removes its
				       saved state (a killed one keeps it) */
	void *cancel_ctx;
	/* Resumable build (docs/DESIGN.md "Resumable build") */
	int restart;              /**< non-zero: throw away the saved state of an interrupted build
				       of this index and start over; default 0 = resume it */
	ann_log_fn notice;        /**< what the build resumed, or why it started over ("resuming:
				       route 63/100 chunks done"); NULL: these lines go to log */
	void *notice_ctx;
} ann_build_opts;

/** Fills @p o with the defaults. */
ANN_API void ann_build_opts_init(ann_build_opts *o);

/** Builds an index from a vector file (any format vecio reads) into the
 * directory @p index_dir, which must not exist. The index is built in
 * "index_dir.build-state/index" and renamed when complete, so @p index_dir
 * either does not exist or holds a complete index. The build is resumable:
 * each completed unit of work (sample, router, routed chunk, committed
 * partitions) is saved durably in "index_dir.build-state/"; a build stopped
 * at any moment (killed, power cut, full disk, canceled) and called again
 * with the same data file and options continues from there, and gives the
 * same index an uninterrupted build gives. Changed data or options start
 * over (o->notice says what changed); o->restart throws the state away.
 * Failures that no rerun gets past (bad input or options, corrupt state)
 * and a cancel remove the state; I/O errors (a full disk), ANN_E_NOMEM and
 * ANN_E_BUDGET keep it (the budget is not part of what must match). Peak memory stays within
 * o->mem_bytes plus a fixed overhead of a few MiB plus the router.
 * I/O: reads the input twice (sample, route), writes spill runs and blocks;
 * with o->tune, then 2256 row reads and the searches of ann_tune_synthetic.
 * @return ANN_OK, or ANN_E_INVAL (bad option), ANN_E_EXISTS (index_dir
 * exists), ANN_E_BADINPUT (malformed input, message names the vector),
 * ANN_E_BUDGET (o->mem_bytes too small, message names the shortfall),
 * ANN_E_NOMEM, ANN_E_IO. */
ANN_API int ann_build(const char *data_path, const char *index_dir, const ann_build_opts *o, ann_error *err);

/** An open index: the router in RAM, the catalog, the block store. Safe to
 * share between threads; each thread searches through its own searcher. */
typedef struct ann_index ann_index;

/** Opens an index read-only. Loads the router and the partition directory.
 * @return ANN_OK, or ANN_E_NOTFOUND, ANN_E_FORMAT (unknown version),
 * ANN_E_CORRUPT, ANN_E_NOMEM, ANN_E_IO. */
ANN_API int ann_index_open(const char *index_dir, ann_index **out, ann_error *err);
/** Closes the index; every searcher of it must be freed first. NULL is a no-op. */
ANN_API void ann_index_close(ann_index *idx);

/** Facts about an open index. */
typedef struct ann_index_info {
	uint64_t vectors;          /**< stored vectors (without replicas) */
	uint64_t stored_vectors;   /**< vectors in blocks, replicas included */
	uint32_t dim;
	uint32_t partitions;
	ann_router_kind router;
	ann_store_kind store;
	ann_encoding encoding;
	ann_metric metric;
	uint64_t bytes_on_disk;    /**< blocks + catalog, as allocated on disk */
	uint64_t block_bytes;      /**< sum of block lengths */
	uint64_t router_ram_bytes; /**< RAM the router holds at query time */
	uint64_t largest_partition;
	uint64_t smallest_partition;
	uint64_t live_vectors;     /**< searchable now: built + inserted - deleted */
	uint32_t route_ef;         /**< k-means: the calibrated single-query ef of the centroid graph; 0 = none */
	uint32_t code_bits;        /**< codes blocks: RaBitQ bits per dimension; 0 = format 1 blocks */
	uint32_t code_factors;     /**< codes blocks: 32, or 16 when new blocks get slim (f16) factors */
	uint32_t code_order;       /**< codes blocks: 1 when new blocks get page-local row order, else 0 (id order) */
	uint64_t head_bytes;       /**< codes blocks: sum of the heads (what reading every partition's round 1 costs, unpadded) */
	uint32_t router_bits;      /**< k-means: bits per dimension of the compact router's centroid codes; 0 = the graph */
	uint32_t default_nprobe;   /**< the nprobe a search gets when ann_search_opts.nprobe is 0 (docs/DESIGN.md "Defaults") */
	uint32_t probe_p1;         /**< learned adaptive probing (ann_tune_probe): the model's first stage; 0 = no model */
	uint32_t spread_partitions; /**< codes blocks: partitions whose directory entry holds a spread, which the
	                                 spread-aware probe order uses (docs/DESIGN.md "Spread-aware probe order");
	                                 0 in indexes built before it */
	uint64_t probe_fit_vectors;   /**< the probe model's fit: live vectors then (0 = not known: fitted before
	                                   2026-12-06 evening, or no model) */
	uint32_t probe_fit_partitions; /**< the probe model's fit: partitions then */
	uint32_t probe_fit_queries;   /**< the probe model's fit: tuning queries */
	uint32_t probe_stale;         /**< 1 when the index changed since the fit (other partitions, or live vectors
	                                   more than 10% off): the model still applies, annann tune refits it */
	float rerank_eps;             /**< codes: the re-rank bound's eps0 of a search whose rerank_eps is 0: the
	                                   tuner's calibration (meta search.rerank_eps), else ANN_DEFAULT_RERANK_EPS */
	uint32_t rerank_eps_tuned;    /**< 1 when rerank_eps comes from the catalog */
	uint32_t directions;          /**< directions per partition of the directional probe order
	                                   (ann_tune_directions); 0 = none */
	uint32_t directions_partitions; /**< partitions they were fitted on; those split off since (ids past
	                                     the fit's) have none until a refit */
	uint32_t directions_stale;    /**< 1 when a compaction rewrote partitions and its refit of their
	                                   directions did not happen (ann_compact_stats.directions_refit 0):
	                                   the next compaction refits them all, or ann_tune_directions */
} ann_index_info;

ANN_API int ann_index_get_info(const ann_index *idx, ann_index_info *info, ann_error *err);
ANN_API const char *ann_router_name(ann_router_kind k);
ANN_API const char *ann_encoding_name(ann_encoding e);

/** Partition size of partition @p p in vectors (for histograms), or 0. */
ANN_API uint64_t ann_index_partition_size(const ann_index *idx, uint32_t p);

/** Largest k (neighbours per query) that ann_search, ann_gt_compute and the
 * annann tool accept. */
#define ANN_MAX_K 100000u
/** Largest nprobe (partitions read per query) the library and the tool accept. */
#define ANN_MAX_NPROBE 4096u
/** Largest ef of the centroid-graph search (ann_search_opts.hnsw_ef, and the
 * calibrated router.ef a catalog may hold). */
#define ANN_MAX_EF 4096u
/** annann router: clusters the graph returns per cluster scanned, when
 * ann_search_opts.candidates_factor is 0. */
#define ANN_DEFAULT_CANDIDATES_FACTOR 10u

/** Search options. */
typedef struct ann_search_opts {
	uint32_t k;            /**< neighbours per query; default 10 */
	uint32_t nprobe;       /**< partitions read per query (C for annann); default 0 = the index's default:
	                            1 partition in 40, at least 16 (ann_index_info.default_nprobe; docs/DESIGN.md
	                            "Defaults") */
	uint32_t candidates_factor; /**< annann: HNSW returns factor * C clusters; default 10 */
	uint32_t hnsw_ef;      /**< ef of the centroid graph search; default 0 = max(the build's calibrated ef, 2 * nprobe), 128 for indexes built before calibration (k-means router; docs/DESIGN.md); with at most 16384 centroids and at most 64 * ef of them a single query scans them all instead (exact, and cheaper) */
	size_t cache_bytes;    /**< decoded-block cache; default 0 = read every block from storage */
	uint32_t queue_depth;  /**< I/O requests in flight; default 32 */
	size_t io_buffer_bytes; /**< bound on raw block bytes in flight; default 16 MiB, raised to the largest block */
	int force_pread;       /**< use pread instead of io_uring; default 0 */
	uint32_t rerank;       /**< codes blocks: at most this many candidates per query get their exact
	                            vector read (best estimates first, only those whose lower bound beats the
	                            k-th upper bound); default 0 = ann_default_rerank(k) */
	float rerank_eps;      /**< codes: eps0 of the codes' error bound (width = eps0 x the estimator's
	                            standard error); smaller prunes more and risks more; default 0 = the
	                            index's calibration (ann_tune_probe, the build's self-tuning: meta
	                            search.rerank_eps), else ANN_DEFAULT_RERANK_EPS */
	uint32_t rerank_phases; /**< codes: 1 = read every selected candidate's page at once; 2 = first the
	                            pages of each query's k best estimates, then only the candidates whose
	                            lower bound beats the exact k-th distance found (one more round trip,
	                            fewer pages); 3, 4 = then the 2k, 4k best, each filtered the same way,
	                            the rest last (a round trip each); at most ANN_MAX_RERANK_PHASES;
	                            default 0 = ANN_DEFAULT_RERANK_PHASES */
	float probe_eps;       /**< k-means routers: adaptive probing (SPANN's rule): of the nprobe nearest
	                            centroids, probe only those whose distance to the query is within
	                            (1 + probe_eps) x the nearest one's, so nprobe is the upper bound; default
	                            0 = off (every one of the nprobe; INFINITY is off too). Other routers ignore it */
	int adaptive;          /**< learned adaptive probing (codes blocks, L2; docs/DESIGN.md "Learned adaptive
	                            probing"): 0 = use the index's probe model when it has one (`annann tune`,
	                            ann_tune_probe) and nprobe is at least its P1; then nprobe is the mean budget
	                            and each query reads between P1 and 2 nprobe partitions; -1 = off (every query
	                            reads nprobe); 1 = required (ANN_E_INVAL when the index has no model) */
	uint32_t io_poll_us;   /**< io_uring reads: before sleeping for a completion, the searcher polls its
	                            completion queue for up to this many microseconds. It spends its thread's
	                            CPU on the wait to save the wake-up (~50 us a wait on a VM, docs/DESIGN.md
	                            "Read waves"); use it with no more search threads than cores. Default 0 =
	                            sleep; at most ANN_MAX_IO_POLL_US */
	float spread_weight;   /**< k-means routers, codes blocks, L2: partitions are probed in the order of
	                            |q - c|^2 + spread_weight x spread, the spread being the mean |x - c|^2 of
	                            the partition's rows (kept in the directory): of two partitions at the same
	                            distance the tighter one first (docs/DESIGN.md "Spread-aware probe order");
	                            default 0 = ANN_DEFAULT_SPREAD_WEIGHT; a negative value turns it off (the
	                            order of the centroid distances); at most 100 */
	float direction_weight; /**< with the spread order and an index with directions (ann_tune_directions):
	                            the score also subtracts direction_weight x sum_j (g_j <q - c, L_j>)^2, a
	                            discount of the distance along each partition's stretched directions;
	                            default 0 = ANN_DEFAULT_DIRECTION_WEIGHT; negative turns it off; at most 1 */
} ann_search_opts;

/** Options of ann_tune_probe. */
typedef struct ann_tune_opts {
	uint32_t k;            /**< neighbours per query the recall counts; default 0 = 10 */
	uint32_t p1;           /**< partitions of the first stage; default 0 = the index's default nprobe / 8, at least 1 */
	uint32_t batch;        /**< queries per search batch while tuning; default 0 = 64 */
	ann_progress_fn progress; /**< optional: phase "tune", done/total in search passes */
	void *progress_ctx;
} ann_tune_opts;

/** Rows of ann_tune_report: fixed nprobe against the fitted model, on the tuning queries. */
#define ANN_TUNE_ROWS 16
/** Candidate eps0 values of the re-rank bound that ann_tune_probe compares. */
#define ANN_TUNE_EPS 4
/** What ann_tune_probe measured and fitted (recall@k on the tuning queries themselves). */
typedef struct ann_tune_report {
	uint32_t p1, queries;
	double r2;            /**< of the fit of log(partitions a query needs) */
	uint32_t rows;
	uint32_t budget[ANN_TUNE_ROWS];       /**< nprobe */
	double recall_fixed[ANN_TUNE_ROWS];   /**< measured at nprobe */
	double recall_adaptive[ANN_TUNE_ROWS]; /**< predicted with the model at budget nprobe (log-interpolated
	                                           between the measured nprobe values) */
	double probed_adaptive[ANN_TUNE_ROWS]; /**< mean partitions the model reads at that budget */
	/* The re-rank bound's calibration (docs/DESIGN.md "Calibrated re-rank bound"): each candidate
	 * eps0 at fixed nprobe eps_nprobe, the default's recall and bytes at eps_nprobe_hi too. */
	float rerank_eps;                  /**< chosen, stored in the catalog (meta search.rerank_eps) */
	uint32_t eps_nprobe, eps_nprobe_hi;
	float eps[ANN_TUNE_EPS];           /**< candidates; eps[0] = ANN_DEFAULT_RERANK_EPS */
	double eps_recall[ANN_TUNE_EPS];   /**< mean recall@k at eps_nprobe */
	double eps_bytes[ANN_TUNE_EPS];    /**< mean bytes read per query at eps_nprobe */
	double eps_recall_hi, eps_bytes_hi; /**< eps[0] at eps_nprobe_hi */
} ann_tune_report;

/** Learned adaptive probing (docs/DESIGN.md "Learned adaptive probing"): searches the
 * index at a range of nprobe for nq queries with their ground truth (gt: nq rows of
 * gt_k ids, the first k used), fits the model that predicts from a query's first
 * stage how many partitions it needs, and stores it in the catalog (meta
 * probe.model), replacing any earlier one; searchers opened afterwards use it.
 * Queries should come from the distribution the index will serve (a query log),
 * not from its base. dim is the queries' dimension (the index's, else ANN_E_INVAL).
 * Codes indexes under L2 only (ANN_E_INVAL otherwise); takes the writer lock. */
ANN_API int ann_tune_probe(const char *index_dir, const float *queries, size_t nq, size_t dim, const int32_t *gt,
			   uint32_t gt_k, const ann_tune_opts *o, ann_tune_report *rep, ann_error *err);

/** The build's automatic self-tuning (ann_build_opts.tune = -1) needs this many partitions and vectors. */
#define ANN_TUNE_AUTO_MIN_PARTS 128u
#define ANN_TUNE_AUTO_MIN_VECTORS 20000u
/** Default count of synthetic tuning queries (ann_tune_synthetic, the build's self-tuning). */
#define ANN_TUNE_SYNTHETIC_QUERIES 2000u
/** Rows ann_tune_synthetic reads besides its queries, to scale the noise. */
#define ANN_TUNE_SCALE_ROWS 256u

/** Learned adaptive probing without a query log (docs/DESIGN.md "Self-tuned adaptive
 * probing"): draws nq + 256 rows of @p data_path at seeded random positions, scales
 * Gaussian noise by the median squared distance of 256 of them to their nearest other
 * row (found by the index), moves the other nq rows by it (half that distance in all;
 * rounded and clipped for u8 and i8 data), takes their ground truth from the index
 * itself at 4 x its default nprobe with 256 re-ranks, and fits the model on them as
 * ann_tune_probe does (which it then calls: the same report, the same catalog write).
 * Costs no pass over the base: 256 + nq row reads and two searches besides the tuning.
 * The file must have the index's dimension (normally the one it was built from). Real
 * queries, when there is a log of them, remain the better choice: ann_tune_probe.
 * ANN_E_INVAL as ann_tune_probe, or when the file holds fewer than nq + 256 rows. */
ANN_API int ann_tune_synthetic(const char *index_dir, const char *data_path, uint32_t nq, uint64_t seed,
			       const ann_tune_opts *o, ann_tune_report *rep, ann_error *err);

/** The directional probe order (docs/DESIGN.md "Directional probe order"): reads every
 * partition's exact rows and keeps its top @p m principal directions (1..16, 2 bits a
 * component, with their gains) in the catalog (meta route.dirs, docs/FORMAT.md); searchers
 * of the index then discount each partition's probe score along them
 * (ann_search_opts.direction_weight). @p m 0 removes them. RAM: m x (ceil(dim / 4) + 8)
 * bytes per partition, counted in router_ram_bytes. A k-means codes index under L2 only
 * (else ANN_E_INVAL). One pass over the blocks; @p fitted (optional) gets the number of
 * directions with a non-zero gain. @p progress: phase "directions", partitions done. A call
 * that fails leaves the index with the directions it had. */
ANN_API int ann_tune_directions(const char *index_dir, uint32_t m, ann_progress_fn progress, void *progress_ctx,
				uint32_t *fitted, ann_error *err);

/** Default re-rank budget per query: ANN_RERANK_PER_K x k, at least ANN_RERANK_MIN
 * (docs/DESIGN.md "The re-rank budget"). */
#define ANN_RERANK_PER_K 6u
#define ANN_RERANK_MIN 64u
/** Largest re-rank budget (ann_search_opts.rerank); the default is capped at it (>= ANN_MAX_K). */
#define ANN_MAX_RERANK 100000u
/** Default eps0 of the re-rank bound (docs/DESIGN.md "The re-rank bound's width"). */
#define ANN_DEFAULT_RERANK_EPS 2.0f
/** Default re-rank phases (docs/BENCHMARKS.md "Codes and re-ranking"), and the most. */
#define ANN_DEFAULT_RERANK_PHASES 2
#define ANN_MAX_RERANK_PHASES 4u
/** Largest ann_search_opts.io_poll_us (10 ms). */
#define ANN_MAX_IO_POLL_US 10000u
/** Default weight of the spread-aware probe order (docs/DESIGN.md "Spread-aware probe order"). */
#define ANN_DEFAULT_SPREAD_WEIGHT 0.125f
/** The RAM budget the build's automatic choices keep the router within, bytes per vector. */
#define ANN_RAM_PER_VECTOR 4u
/** Most directions a partition the build picks by itself (ann_build_opts.directions -1). */
#define ANN_DIRS_AUTO_MAX 8u
/** Default ann_search_opts.direction_weight (bench/analysis/directional_probe.py: 0.5 best of 0.4-1). */
#define ANN_DEFAULT_DIRECTION_WEIGHT 0.5f

ANN_API void ann_search_opts_init(ann_search_opts *o);

/** Per-query statistics (batch searches share I/O: bytes and requests of a
 * block read once for several queries are divided among them). */
typedef struct ann_query_stats {
	uint32_t partitions;   /**< partitions probed */
	uint64_t candidates;   /**< vectors whose distance was computed */
	double bytes_read;     /**< bytes read from storage */
	double io_requests;    /**< read requests */
	uint64_t latency_ns;   /**< wall time of the query (of its batch in batch mode) */
	uint64_t route_ns, io_wait_ns, decode_ns, scan_ns; /**< time by stage */
	/* Two-round reads of codes blocks (zero for format 1 blocks): */
	double bytes_round1, bytes_round2; /**< heads; exact pages (bytes_read = their sum + format 1 blocks + deltas) */
	double ios_round1, ios_round2;     /**< read requests of each round */
	uint64_t estimated;    /**< candidates whose distance was estimated from codes */
	uint64_t reranked;     /**< candidates whose exact distance was computed from the exact section */
	uint64_t round1_wait_ns, estimate_ns, round2_wait_ns, rerank_ns; /**< stage times (batch / nq) */
	uint32_t read_waves;   /**< waits for storage one after another in the query's batch: the heads,
	                            the heads of adaptive probing's second stage (with the early re-rank
	                            pages), each re-rank phase that read; the latency floor is this many
	                            device round trips */
} ann_query_stats;

/** A per-thread search context: I/O ring, buffers, decoder, scratch. */
typedef struct ann_searcher ann_searcher;

/** The re-rank budget a search with k neighbours and rerank 0 uses. */
ANN_API uint32_t ann_default_rerank(uint32_t k);

ANN_API int ann_searcher_new(ann_index *idx, const ann_search_opts *o, ann_searcher **out, ann_error *err);
ANN_API void ann_searcher_free(ann_searcher *s);
/** "io_uring", "pread" or "lmdb": how this searcher reads blocks. */
ANN_API const char *ann_searcher_io_path(const ann_searcher *s);
/** Bytes and read requests this searcher's store reader has issued since it
 * was created (the sum of every query's bytes_round1 + bytes_round2 and format
 * 1 block bytes; deltas are read from the catalog and not counted here). */
ANN_API void ann_searcher_io_totals(const ann_searcher *s, uint64_t *bytes, uint64_t *requests);

/** Searches @p nq queries (row-major, nq * dim floats). Every block is read
 * once per call however many of the queries probe it.
 * @param[out] ids   nq * k ids, ascending distance, padded with -1
 * @param[out] dists nq * k distances, padded with +inf
 * @param[out] stats nq entries, or NULL
 * @return ANN_OK, or ANN_E_INVAL (a query component not finite or beyond
 * +-2^50, named), ANN_E_CORRUPT (a block failed its checksum; the message
 * names the partition), ANN_E_IO, ANN_E_NOMEM. */
ANN_API int ann_search(ann_searcher *s, const float *queries, size_t nq, int64_t *ids, float *dists,
		       ann_query_stats *stats, ann_error *err);

/** Problem report callback of ann_verify: @p partition is the partition
 * concerned or UINT32_MAX for the catalog as a whole. */
typedef void (*ann_verify_fn)(void *ctx, uint32_t partition, const char *problem);

/** Reads every block and checks checksums, decoding and catalog
 * consistency. @p problems receives the number found (0 = healthy). */
ANN_API int ann_verify(const char *index_dir, ann_verify_fn report, void *ctx, uint64_t *problems,
		       ann_error *err);

/** One fact of ann_index_info as a key and a typed value: the list behind
 * `annann info --json` and the Python binding's Index.info(), so both name
 * the same keys. */
typedef enum ann_info_type {
	ANN_INFO_INT = 0, /**< value in i */
	ANN_INFO_NUM = 1, /**< value in num */
	ANN_INFO_STR = 2, /**< value in str (static string) */
} ann_info_type;

typedef struct ann_info_field {
	const char *key; /**< static string */
	ann_info_type type;
	int64_t i;
	double num;
	const char *str;
} ann_info_field;

/** Upper bound on the number of fields ann_index_info_fields writes. */
#define ANN_INFO_MAX_FIELDS 40

/** Fills @p out (room for ANN_INFO_MAX_FIELDS) with the facts of
 * ann_index_get_info plus derived ones (replication, raw_bytes,
 * router_bytes_per_vector), in a fixed order; @p n gets the count. */
ANN_API int ann_index_info_fields(const ann_index *idx, ann_info_field *out, size_t *n, ann_error *err);

/** Partition sizes in powers of two: @p hist[0] counts empty partitions,
 * hist[b] (b >= 1) those of 2^(b-1) .. 2^b - 1 vectors. */
#define ANN_INFO_HIST_BINS 40
ANN_API void ann_index_size_histogram(const ann_index *idx, uint64_t hist[ANN_INFO_HIST_BINS]);

/** @return "l2", "ip" or "cosine". */
ANN_API const char *ann_metric_name(ann_metric m);

/* ======================================================================
 * Vector and ground-truth files (docs/FORMAT.md, "Input files")
 * ====================================================================== */

/** A streamed reader of a vector file; the format comes from the extension:
 * .fvecs .bvecs .ivecs (TEXMEX), .fbin .u8bin .i8bin .ibin (big-ann),
 * -idx3-ubyte[.gz] (MNIST idx, read only). Holds one bounded chunk, never
 * the whole file. Not thread-safe (one reader per thread). */
typedef struct ann_vreader ann_vector_reader;

/** Opens @p path and validates its header. @return ANN_OK, or ANN_E_INVAL
 * (unknown extension), ANN_E_NOTFOUND, ANN_E_BADINPUT (malformed header,
 * empty file), ANN_E_IO. */
ANN_API int ann_vector_reader_open(const char *path, ann_vector_reader **out, ann_error *err);
ANN_API void ann_vector_reader_close(ann_vector_reader *r);
/** The file's vector count, dimension and element type (F32, U8, I8 or I32). */
ANN_API void ann_vector_reader_shape(const ann_vector_reader *r, uint64_t *n, uint32_t *dim, ann_dtype *dtype);
/** Reads up to @p max vectors from the current position in the file's own
 * element type into @p out (max * dim elements). @return the number read (0
 * at the end) or a negative status; a malformed vector (dimension,
 * truncation, NaN/Inf in a float file, or a float component beyond +-2^50,
 * where squared distances overflow float) is ANN_E_BADINPUT naming it. */
ANN_API int64_t ann_vector_reader_read(ann_vector_reader *r, void *out, size_t max, ann_error *err);
/** The same, converted to float32. */
ANN_API int64_t ann_vector_reader_read_f32(ann_vector_reader *r, float *out, size_t max, ann_error *err);

/** A writer of a vector file. Data go to "path.tmp.<pid>", which becomes
 * @p path only at ann_vector_writer_commit: no half-written file appears. */
typedef struct ann_vwriter ann_vector_writer;

/** Creates @p path (format from the extension) for vectors of dimension
 * @p dim. @return ANN_OK, or ANN_E_INVAL (extension, dim), ANN_E_IO. */
ANN_API int ann_vector_writer_open(const char *path, uint32_t dim, ann_vector_writer **out, ann_error *err);
/** The element type a file named @p path stores (F32, U8, I8 or I32), from
 * its extension. @return ANN_OK or ANN_E_INVAL (unknown extension). */
ANN_API int ann_vector_path_dtype(const char *path, ann_dtype *out, ann_error *err);
/** Appends @p n vectors given in the file's own element type. */
ANN_API int ann_vector_writer_write(ann_vector_writer *w, const void *v, size_t n, ann_error *err);
/** Appends @p n float32 vectors, converted; for integer files each value is
 * rounded and must be in range, else ANN_E_INVAL naming the vector. */
ANN_API int ann_vector_writer_write_f32(ann_vector_writer *w, const float *v, size_t n, ann_error *err);
/** Fsyncs, renames to the final path and frees @p w (also on failure, after
 * removing the temporary file). */
ANN_API int ann_vector_writer_commit(ann_vector_writer *w, ann_error *err);
/** Removes the temporary file and frees @p w. NULL is a no-op. */
ANN_API void ann_vector_writer_abort(ann_vector_writer *w);
/** Repositions @p r at vector @p i (0 <= i <= count): the next read starts there.
 * @return ANN_OK, ANN_E_INVAL (i beyond the count), ANN_E_IO. */
ANN_API int ann_vector_reader_seek(ann_vector_reader *r, uint64_t i, ann_error *err);
/** The format @p path's extension names: its name ("fbin", "u8bin", "fvecs"...;
 * @p name may be NULL) and the most vectors a file of it holds (@p max_vectors
 * may be NULL: INT32_MAX for the bin formats, whose header count is an int32,
 * UINT64_MAX for *vecs). @return ANN_OK or ANN_E_INVAL naming the path. */
ANN_API int ann_vector_path_format(const char *path, const char **name, uint64_t *max_vectors, ann_error *err);
/** Checks, before anything is written, that @p n vectors of dimension @p dim
 * fit the format of @p path (ANN_E_INVAL naming the limit) and the free
 * space of the file system that will hold it (ANN_E_IO "needs N bytes, M free"). */
ANN_API int ann_vector_path_check_size(const char *path, uint64_t n, uint32_t dim, ann_error *err);

/** Exact ground truth options; ann_ground_truth_opts_init() sets the defaults. */
typedef struct ann_ground_truth_opts {
	uint32_t k;               /**< neighbours per query; default 100 */
	ann_metric metric;        /**< default L2 */
	int threads;              /**< default 2 */
	size_t mem_bytes;         /**< budget for base chunks and distance tiles; default 512 MiB */
	ann_progress_fn progress; /**< phase "gt", done/total in base vectors; NULL: silent */
	void *progress_ctx;
} ann_ground_truth_opts;

ANN_API void ann_ground_truth_opts_init(ann_ground_truth_opts *o);

/** Exact top-k of every query of @p query_path among the vectors of
 * @p base_path, streaming the base file in chunks within o->mem_bytes (the
 * queries and the nq * k results are held whole on top). Allocates *ids and
 * *dists (nq * k each, free with ann_buffer_free); rows with fewer than k
 * base vectors are padded with -1 / +inf; ties go to the smaller id. */
ANN_API int ann_ground_truth(const char *base_path, const char *query_path, const ann_ground_truth_opts *o,
			     uint32_t *nq, int32_t **ids, float **dists, ann_error *err);
/** The same over float32 arrays in memory (base n x dim, queries nq x dim),
 * into caller arrays of nq * k entries. */
ANN_API int ann_ground_truth_mem(const float *base, size_t n, const float *queries, size_t nq, size_t dim,
				 const ann_ground_truth_opts *o, int32_t *ids, float *dists, ann_error *err);
/** Reads a big-ann ground-truth file (int32 nq, int32 k, ids, distances) or
 * an .ivecs of ids (then the distances are NAN); allocates *ids and *dists
 * (@p dists may be NULL), free with ann_buffer_free. */
ANN_API int ann_ground_truth_read(const char *path, uint32_t *nq, uint32_t *k, int32_t **ids, float **dists,
				  ann_error *err);
/** Writes the big-ann ground-truth layout (temporary file, then rename). */
ANN_API int ann_ground_truth_write(const char *path, uint32_t nq, uint32_t k, const int32_t *ids,
				  const float *dists, ann_error *err);
/** Frees a buffer the library allocated for the caller. NULL is a no-op. */
ANN_API void ann_buffer_free(void *p);

/* ---- synthetic data (the generator of gen.c; its header comment is the
 * algorithm, enough to reimplement it bit for bit) ---------------------- */

/** Which model generates the rows. */
typedef enum ann_gen_profile {
	ANN_GEN_EASY = 0, /**< anisotropic Gaussian mixture: well separated, compressible, queries
			       from the base's own mixture (the historical generator) */
	ANN_GEN_REAL = 1, /**< calibrated against real SIFT descriptors: a low-dimensional latent
			       manifold mapped to non-negative, normalised, soft-capped values;
			       hard to partition, nearly incompressible, shifted queries */
} ann_gen_profile;

/** Generator options; ann_gen_opts_init() sets the defaults named below. */
typedef struct ann_gen_opts {
	ann_gen_profile profile;  /**< default ANN_GEN_EASY */
	uint64_t n;               /**< base vectors (>= 1) */
	uint64_t nq;              /**< query vectors (0 = none) */
	uint32_t dim;             /**< dimension, 1..2^20; default 128 */
	uint32_t clusters;        /**< mixture components, at most ANN_GEN_MAX_CLUSTERS; 0 = max(16, n / 4000)
				       (easy) or 64 (real) */
	uint64_t seed;            /**< same seed and options => same bytes on any machine; default 1 */
	float drift;              /**< >= 0: every component mean moves by drift * its radius (RMS distance
				       of its points from its mean) in a random direction; everything else
				       stays identical to drift 0. Easy profile only (real refuses drift > 0) */
	ann_progress_fn progress; /**< phases "gen" (base) and "gen-queries", unit vectors; NULL: silent */
	void *progress_ctx;
} ann_gen_opts;

#define ANN_GEN_MAX_CLUSTERS 4096u

/** Defaults: easy profile, n = nq = 0, dim 128, clusters 0 (automatic), seed 1, drift 0. */
ANN_API void ann_gen_opts_init(ann_gen_opts *o);
/** "easy" or "real" to a profile; -1 for any other name. */
ANN_API int ann_gen_profile_parse(const char *name);
/** The name of a profile ("easy", "real"). */
ANN_API const char *ann_gen_profile_name(ann_gen_profile p);
/** Writes o->n base vectors to @p base_path and o->nq queries to @p query_path,
 * in the formats their extensions name, each through "path.tmp.<pid>" then
 * renamed. Memory: the model (clusters * dim * 40 bytes) plus two 4 MiB
 * buffers, whatever n. @p query_path is ignored when o->nq == 0 and required
 * otherwise. Easy profile: queries come from the same mixture through an
 * independent random stream. Real profile: queries come from a shifted
 * distribution (other component weights, perturbed latent points), as real
 * queries do.
 * @return ANN_OK, ANN_E_INVAL (options, path), ANN_E_NOMEM, ANN_E_IO. */
ANN_API int ann_gen_write(const ann_gen_opts *o, const char *base_path, const char *query_path, ann_error *err);

/** What ann_repair found and did. */
typedef struct ann_repair_result {
	int damaged;         /**< 1: LMDB's free list or page accounting was damaged, and is rebuilt */
	char damage[512];    /**< what was damaged (when damaged) */
	uint64_t entries;    /**< catalog entries copied */
	uint64_t bad_values; /**< catalog values that still fail their checksum (copied as they were;
	                          ann_verify names them) */
	char backup[4300];   /**< the old catalog directory, kept beside the new one ("" for a dry run) */
} ann_repair_result;

/** Rebuilds the catalog (catalog.lmdb) of an index: copies every entry of
 * every database into a fresh LMDB environment, checks the copy (page
 * structure and accounting, value checksums), and swaps it in atomically.
 * The old catalog is kept as "catalog.lmdb.damaged.<UTC time>.<pid>"
 * (res->backup). This rebuilds LMDB's free list and page accounting, the
 * damage every write refuses with "run 'annann repair --index DIR'". It
 * cannot rebuild a database whose own pages are damaged (ANN_E_CORRUPT,
 * nothing changed): rebuild the index then. Takes the writer lock
 * (ANN_E_STATE while another writer runs); searches that already had the
 * index open go on reading the old catalog.
 * @param[in] index_dir the index directory
 * @param[in] dry_run nonzero: build and check the copy, then delete it
 * @param[out] res what was found and done
 * @return ANN_OK, or ANN_E_CORRUPT (not repairable), ANN_E_STATE,
 * ANN_E_NOTFOUND, ANN_E_FORMAT, ANN_E_IO, ANN_E_NOMEM. */
ANN_API int ann_repair(const char *index_dir, int dry_run, ann_repair_result *res, ann_error *err);

/* ======================================================================
 * Updates: inserts, deletes, compaction (docs/UPDATES.md)
 * ====================================================================== */

/** The single writer of an index (an exclusive lock on the directory; a
 * second writer gets ANN_E_STATE). Searches in any process go on meanwhile
 * and each batch sees one committed state. */
typedef struct ann_writer ann_writer;

/** @return ANN_OK, or ANN_E_STATE (another writer), ANN_E_NOTFOUND,
 * ANN_E_FORMAT, ANN_E_CORRUPT, ANN_E_NOMEM, ANN_E_IO. */
ANN_API int ann_writer_open(const char *index_dir, ann_writer **out, ann_error *err);
ANN_API void ann_writer_close(ann_writer *w);

/** Inserts @p n vectors of dimension @p dim (n * dim floats, row-major) in
 * one durable transaction: each
 * is routed by the index's own router (no retraining) and appended to its
 * partition's delta; all are searchable once the call returns ANN_OK, none
 * if it fails. @p ids gives the ids (NULL: assigned from the next free id,
 * written to @p ids_out if not NULL). An id that exists is ANN_E_EXISTS
 * naming it, unless @p upsert, which replaces it. For u8/i8 indexes the
 * values must be integers in range, and float values finite and within
 * +-2^50 (ANN_E_INVAL naming the vector).
 * @p dim must equal the index's dimension (ann_writer_get_info): anything
 * else is ANN_E_INVAL naming both, and nothing is read from @p vectors.
 * Memory: the transaction holds n * (dim element bytes + 40) bytes.
 * @return ANN_OK, or ANN_E_INVAL (dimension, value or negative id),
 * ANN_E_EXISTS, ANN_E_STATE (the writer failed earlier), ANN_E_NOMEM,
 * ANN_E_IO (the message names the file and says "no space left on device"
 * when the disk is full). */
ANN_API int ann_insert(ann_writer *w, const float *vectors, size_t n, uint32_t dim, const int64_t *ids,
		       int upsert, int64_t *ids_out, ann_error *err);

/** Facts about the index a writer holds (as ann_index_get_info), e.g. the
 * dimension and encoding that ann_insert's input must match. */
ANN_API int ann_writer_get_info(const ann_writer *w, ann_index_info *info, ann_error *err);

/** Deletes @p n ids in one durable transaction; an id deleted never appears
 * in a result of a search that starts after the call returns. Ids that do
 * not exist are skipped; @p deleted (may be NULL) gets the number deleted. */
ANN_API int ann_delete(ann_writer *w, const int64_t *ids, size_t n, uint64_t *deleted, ann_error *err);

/** What a compaction did (also recorded in the catalog's meta). */
typedef struct ann_compact_stats {
	uint32_t partitions_rewritten;
	uint32_t partitions_split;   /**< partitions grown past the limit, split in two */
	uint64_t deltas_merged;      /**< inserted vectors moved into blocks */
	uint64_t tombstones_applied; /**< deleted vectors removed from blocks */
	uint64_t bytes_written;
	uint64_t bytes_freed;
	double seconds;
	uint32_t directions_refit;   /**< partitions whose directional probe order the compaction refitted:
	                                  the rewritten ones and the new ones of splits; 0 without directions
	                                  or when the refit failed (ann_tune_directions; docs/DESIGN.md
	                                  "Directional probe order") */
} ann_compact_stats;

/** Rewrites every partition that has deltas or deleted vectors,
 * copy-on-write (new blocks are written and fsynced, then one transaction
 * switches the directory, clears the merged deltas and tombstones and frees
 * the old blocks' space for reuse). A partition that grows past
 * @p split_limit vectors (0: 4 x the mean partition size) is split in two
 * by 2-means and the router learns the new centroid (k-means router; other
 * routers keep the partition whole). I/O: reads every block when there are
 * deletes (to find the deleted vectors), else only the rewritten ones. */
ANN_API int ann_compact(ann_writer *w, uint64_t split_limit, ann_compact_stats *stats, ann_error *err);

#ifdef __cplusplus
}
#endif

#endif /* ANNANN_H */

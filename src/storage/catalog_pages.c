/* SPDX-License-Identifier: MIT */
/*
 * catalog_pages.c: reads an LMDB environment's data.mdb itself and checks
 * what LMDB would trust, before LMDB walks it (issue 13, D2-D4). Used by
 * catalog.c at open, before every write transaction, by verify and by
 * repair; the reasons and the rules are below.
 */
#include "catalog_pages.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- LMDB page structure and accounting --------------------------------------------
 * LMDB keeps no page checksums and trusts what it reads from the map: page
 * numbers, page headers, node offsets and value sizes. One flipped bit sends it
 * outside a page (SIGSEGV) and a truncated file faults on the first page past
 * the end (SIGBUS). So before LMDB walks a snapshot, pg_check reads that
 * snapshot's pages itself with pread (a short file is an error, not a fault)
 * and checks everything LMDB will trust:
 *  - the meta page of the snapshot: magic, version, page size, last page;
 *  - every page of every tree: its page number, its type for its level, its
 *    node table inside the page, each node inside the page, child and overflow
 *    page numbers within 2..last page, overflow runs inside the file;
 *  - the record of each database (pages and entries) against what was found;
 *  - the page accounting (LMDB's own mdb_audit rule): meta pages + the pages
 *    of every tree (free DB included) + the pages on the free list = last
 *    page + 1, and no page counted twice.
 * Full mode walks every tree (open, verify, repair: cost one pread per branch,
 * leaf and first overflow page, never the values). Cheap mode (every write
 * txn) walks only the main and free trees, takes the named databases' pages
 * from their records, and checks the free list: it catches a free list that
 * names a page out of range, twice, or in the main or free tree, and any
 * count that does not add up; a free page that is also a page of a named
 * database needs the full walk (verify).
 * Memory: one bit per page of the snapshot (last page + 1 bits, bounded by the
 * map size / page size / 8), one page buffer per tree level (<= 32).
 * Layout: LMDB 0.9 (MDB_DATA_VERSION 1) built for 64-bit, where page numbers,
 * sizes and txn ids are 8 bytes. */

#if SIZE_MAX != UINT64_MAX
#error "catalog_pages.c's LMDB page checks assume a 64-bit build (8-byte pgno_t)"
#endif

#define LM_MAGIC 0xBEEFC0DEu
#define LM_VERSION 1u
#define LM_PGHDR 16u      /* page header: pgno u64, pad u16, flags u16, lower u16, upper u16 */
#define LM_NODE 8u        /* node header: lo u16, hi u16, flags u16, ksize u16 */
#define LM_DBREC 48u      /* MDB_db: pad u32, flags u16, depth u16, branch, leaf, overflow, entries, root */
#define LM_META_DBS 40u   /* offset of mm_dbs[0] (free) in a meta page; mm_dbs[1] (main) follows */
#define LM_META_LAST 136u /* mm_last_pg */
#define LM_META_TXNID 144u
#define LM_P_BRANCH 0x01u
#define LM_P_LEAF 0x02u
#define LM_P_OVERFLOW 0x04u
#define LM_P_DIRTY 0x10u
#define LM_F_BIGDATA 0x01u
#define LM_F_SUBDATA 0x02u
#define LM_DUPSORT 0x04u
#define LM_MAXKEY 511u
#define LM_MAXDEPTH 32u /* LMDB's CURSOR_STACK */
#define LM_NONE UINT64_MAX
#define LM_MAXSUBS 16u

typedef struct lm_db {
	uint16_t flags, depth;
	uint64_t branch, leaf, overflow, entries, root;
} lm_db;

static void lm_db_load(const uint8_t *p, lm_db *d)
{
	d->flags = ann_ld16(p + 4);
	d->depth = ann_ld16(p + 6);
	d->branch = ann_ld64(p + 8);
	d->leaf = ann_ld64(p + 16);
	d->overflow = ann_ld64(p + 24);
	d->entries = ann_ld64(p + 32);
	d->root = ann_ld64(p + 40);
}

enum { TREE_DATA = 0, TREE_MAIN = 1, TREE_FREE = 2 };

typedef struct pg_counts {
	uint64_t branch, leaf, overflow, entries;
} pg_counts;

typedef struct pgw {
	int fd;
	const uint8_t *map;       /* the file mapped read-only (pg_check), or NULL: pread */
	uint64_t file_bytes;
	uint32_t psize;
	uint64_t last;            /* last page of the snapshot */
	uint8_t *seen;            /* bitmap: pages accounted for */
	uint64_t nseen;
	uint8_t *buf[LM_MAXDEPTH]; /* one page per tree level */
	uint8_t *val;             /* free-list values on overflow pages */
	size_t val_cap;
	bool full;
	bool in_free;     /* walking the free DB: damage there is repairable */
	bool repairable;  /* set with msg: the damage is LMDB's free list or accounting only */
	uint64_t sub_pages; /* cheap mode: named databases' pages, from their records */
	uint64_t free_listed;
	unsigned nsubs;
	struct {
		char name[32];
		lm_db db;
	} subs[LM_MAXSUBS];
	char msg[400];
} pgw;

static int pg_bad(pgw *w, const char *fmt, ...) ANN_PRINTF(2, 3);
static int pg_bad(pgw *w, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->msg, sizeof w->msg, fmt, ap);
	va_end(ap);
	w->repairable = w->in_free;
	return ANN_E_CORRUPT;
}

static int pg_pread(pgw *w, void *buf, size_t n, uint64_t off)
{
	if (w->map) {
		if (off > w->file_bytes || n > w->file_bytes - off)
			return pg_bad(w, "offset %llu is past the end of the file (%llu bytes): truncated",
				      (unsigned long long)(off + n), (unsigned long long)w->file_bytes);
		memcpy(buf, w->map + off, n);
		return ANN_OK;
	}
	size_t done = 0;
	while (done < n) {
		ssize_t r = pread(w->fd, (uint8_t *)buf + done, n - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return pg_bad(w, "read error at offset %llu: %s", (unsigned long long)(off + done),
				      strerror(errno));
		if (r == 0)
			return pg_bad(w, "offset %llu is past the end of the file (%llu bytes): truncated",
				      (unsigned long long)(off + done), (unsigned long long)w->file_bytes);
		done += (size_t)r;
	}
	return ANN_OK;
}

/* Checks that pages pgno..pgno+n-1 exist in the snapshot and in the file. */
static int pg_outside(pgw *w, uint64_t pgno, uint64_t n, const char *what)
{
	if (n > 1)
		return pg_bad(w, "%s names pages %llu..+%llu, outside the pages in use 2..%llu", what,
			      (unsigned long long)pgno, (unsigned long long)(n - 1), (unsigned long long)w->last);
	return pg_bad(w, "%s names page %llu, outside the pages in use 2..%llu", what, (unsigned long long)pgno,
		      (unsigned long long)w->last);
}

static int pg_range(pgw *w, uint64_t pgno, uint64_t n, const char *what)
{
	if (pgno < 2 || n == 0 || n > w->last || pgno > w->last - n + 1)
		return pg_outside(w, pgno, n, what);
	if ((pgno + n) * w->psize > w->file_bytes)
		return pg_bad(w, "%s: page %llu lies past the end of the file (%llu bytes, %llu pages): truncated",
			      what, (unsigned long long)(pgno + n - 1), (unsigned long long)w->file_bytes,
			      (unsigned long long)(w->file_bytes / w->psize));
	return ANN_OK;
}

static int pg_mark(pgw *w, uint64_t pgno, uint64_t n, const char *what)
{
	if (pgno < 2 || n == 0 || n > w->last || pgno > w->last - n + 1)
		return pg_outside(w, pgno, n, what);
	for (uint64_t p = pgno; p < pgno + n; p++) {
		uint8_t bit = (uint8_t)(1u << (p & 7));
		if (w->seen[p >> 3] & bit)
			return pg_bad(w, "page %llu is counted twice (again by %s)", (unsigned long long)p, what);
		w->seen[p >> 3] |= bit;
		w->nseen++;
	}
	return ANN_OK;
}

static int pg_read(pgw *w, uint64_t pgno, uint8_t *buf, const char *what)
{
	ANN_TRY(pg_range(w, pgno, 1, what));
	ANN_TRY(pg_pread(w, buf, w->psize, pgno * w->psize));
	if (ann_ld64(buf) != pgno)
		return pg_bad(w, "page %llu of %s says it is page %llu", (unsigned long long)pgno, what,
			      (unsigned long long)ann_ld64(buf));
	return ANN_OK;
}

/* A free-list value: [count][count page numbers], 8 bytes each. LMDB may
 * reserve more room than it fills (mdb_freelist_save: the rest is left
 * as is), so only the first count entries are pages, as LMDB reads them. */
static int pg_freelist(pgw *w, uint64_t txnid, const uint8_t *v, size_t n)
{
	char what[64];
	snprintf(what, sizeof what, "the free list (txn %llu)", (unsigned long long)txnid);
	uint64_t cnt = n >= 8 ? ann_ld64(v) : 0;
	if (n < 8 || n % 8 || cnt > n / 8 - 1)
		return pg_bad(w, "%s: %zu bytes announcing %llu pages", what, n, (unsigned long long)cnt);
	for (size_t i = 1; i <= cnt; i++)
		ANN_TRY(pg_mark(w, ann_ld64(v + 8 * i), 1, what));
	w->free_listed += cnt;
	return ANN_OK;
}

static int pg_walk_page(pgw *w, const char *name, int kind, uint64_t pgno, unsigned level, unsigned depth,
			pg_counts *cnt)
{
	if (!w->buf[level - 1] && !(w->buf[level - 1] = ann_malloc(w->psize)))
		return ANN_E_NOMEM;
	uint8_t *p = w->buf[level - 1];
	char what[64];
	snprintf(what, sizeof what, "database '%s'", name);
	ANN_TRY(pg_read(w, pgno, p, what));
	ANN_TRY(pg_mark(w, pgno, 1, what));
	unsigned flags = ann_ld16(p + 10) & ~LM_P_DIRTY, lower = ann_ld16(p + 12), upper = ann_ld16(p + 14);
	bool leaf = level == depth;
	if (flags != (leaf ? LM_P_LEAF : LM_P_BRANCH))
		return pg_bad(w, "page %llu of %s has flags 0x%x; a %s page was expected at level %u of %u",
			      (unsigned long long)pgno, what, flags, leaf ? "leaf" : "branch", level, depth);
	/* Only a root leaf may be empty (LMDB drops an emptied root; allowed anyway). */
	unsigned min_lower = LM_PGHDR + (leaf && level == 1 ? 0 : 2);
	if (lower < min_lower || (lower & 1) || lower > upper || upper > w->psize)
		return pg_bad(w, "page %llu of %s: node table bounds %u..%u, expected %u <= lower <= upper <= %u",
			      (unsigned long long)pgno, what, lower, upper, min_lower, w->psize);
	unsigned nkeys = (lower - LM_PGHDR) / 2;
	if (leaf)
		cnt->leaf++;
	else
		cnt->branch++;
	for (unsigned i = 0; i < nkeys; i++) {
		unsigned off = ann_ld16(p + LM_PGHDR + 2 * i);
		if (off < upper || off > w->psize - LM_NODE)
			return pg_bad(w, "page %llu of %s: node %u at offset %u, outside %u..%u", (unsigned long long)pgno,
				      what, i, off, upper, w->psize - LM_NODE);
		const uint8_t *nd = p + off;
		unsigned nflags = ann_ld16(nd + 4), ksize = ann_ld16(nd + 6);
		if (!leaf) {
			if (off + LM_NODE + ksize > w->psize)
				return pg_bad(w, "page %llu of %s: node %u key of %u bytes runs past the page",
					      (unsigned long long)pgno, what, i, ksize);
			uint64_t child = ann_ld16(nd) | (uint64_t)ann_ld16(nd + 2) << 16 | (uint64_t)nflags << 32;
			ANN_TRY(pg_walk_page(w, name, kind, child, level + 1, depth, cnt));
			continue;
		}
		uint64_t dsize = ann_ld16(nd) | (uint64_t)ann_ld16(nd + 2) << 16;
		uint64_t stored = (nflags & LM_F_BIGDATA) ? 8 : dsize;
		if (ksize == 0 || ksize > LM_MAXKEY || (nflags & ~(LM_F_BIGDATA | LM_F_SUBDATA)) ||
		    off + LM_NODE + ksize + stored > w->psize)
			return pg_bad(w, "page %llu of %s: node %u (flags 0x%x, %u-byte key, %llu-byte value) does not "
				      "fit its page", (unsigned long long)pgno, what, i, nflags, ksize,
				      (unsigned long long)dsize);
		const uint8_t *key = nd + LM_NODE, *data = key + ksize;
		cnt->entries++;
		if (kind == TREE_MAIN) {
			if (nflags != LM_F_SUBDATA || dsize != LM_DBREC || w->nsubs == LM_MAXSUBS)
				return pg_bad(w, "page %llu of the main database: entry %u (flags 0x%x, %llu bytes) is not a "
					      "database record", (unsigned long long)pgno, i, nflags, (unsigned long long)dsize);
			snprintf(w->subs[w->nsubs].name, sizeof w->subs[w->nsubs].name, "%.*s", (int)ANN_MIN(ksize, 31u),
				 (const char *)key);
			for (char *s = w->subs[w->nsubs].name; *s; s++)
				if (*s < 0x20 || *s > 0x7e)
					*s = '?';
			lm_db_load(data, &w->subs[w->nsubs].db);
			w->nsubs++;
			continue;
		}
		if (nflags & LM_F_SUBDATA)
			return pg_bad(w, "page %llu of %s: node %u is a nested database", (unsigned long long)pgno, what, i);
		const uint8_t *val = data;
		if (nflags & LM_F_BIGDATA) {
			uint64_t ov = ann_ld64(data), npg = (LM_PGHDR - 1 + dsize) / w->psize + 1;
			char ow[96];
			snprintf(ow, sizeof ow, "the overflow value of %s", what);
			ANN_TRY(pg_range(w, ov, npg, ow));
			uint8_t hdr[LM_PGHDR];
			ANN_TRY(pg_pread(w, hdr, sizeof hdr, ov * w->psize));
			if (ann_ld64(hdr) != ov || (ann_ld16(hdr + 10) & ~LM_P_DIRTY) != LM_P_OVERFLOW ||
			    ann_ld32(hdr + 12) != npg)
				return pg_bad(w, "page %llu, %s: header says page %llu, flags 0x%x, %u pages; expected an "
					      "overflow run of %llu pages", (unsigned long long)ov, ow,
					      (unsigned long long)ann_ld64(hdr), ann_ld16(hdr + 10), ann_ld32(hdr + 12),
					      (unsigned long long)npg);
			ANN_TRY(pg_mark(w, ov, npg, ow));
			cnt->overflow += npg;
			if (kind == TREE_FREE) {
				if (dsize > w->val_cap) {
					uint8_t *nv = ann_realloc(w->val, (size_t)dsize);
					if (!nv)
						return ANN_E_NOMEM;
					w->val = nv;
					w->val_cap = (size_t)dsize;
				}
				ANN_TRY(pg_pread(w, w->val, (size_t)dsize, ov * w->psize + LM_PGHDR));
				val = w->val;
			}
		}
		if (kind == TREE_FREE) {
			if (ksize != 8)
				return pg_bad(w, "page %llu of the free list: a %u-byte key, 8 expected",
					      (unsigned long long)pgno, ksize);
			uint64_t txnid;
			memcpy(&txnid, key, 8); /* LMDB integer key: native order */
			ANN_TRY(pg_freelist(w, txnid, val, (size_t)dsize));
		}
	}
	return ANN_OK;
}

static int pg_walk_tree(pgw *w, const char *name, int kind, const lm_db *d)
{
	if (d->root == LM_NONE) {
		if (d->depth || d->branch || d->leaf || d->overflow || d->entries)
			return pg_bad(w, "database '%s' has no root page but its record counts %llu entries in %u levels",
				      name, (unsigned long long)d->entries, d->depth);
		return ANN_OK;
	}
	if (d->depth == 0 || d->depth > LM_MAXDEPTH || (d->flags & LM_DUPSORT))
		return pg_bad(w, "database '%s': record says depth %u, flags 0x%x (expected depth 1..%u, no "
			      "duplicate keys)", name, d->depth, d->flags, LM_MAXDEPTH);
	pg_counts c = { 0 };
	ANN_TRY(pg_walk_page(w, name, kind, d->root, 1, d->depth, &c));
	if (c.branch != d->branch || c.leaf != d->leaf || c.overflow != d->overflow || c.entries != d->entries)
		return pg_bad(w, "database '%s': found %llu branch, %llu leaf, %llu overflow pages and %llu entries; "
			      "its record says %llu, %llu, %llu and %llu", name, (unsigned long long)c.branch,
			      (unsigned long long)c.leaf, (unsigned long long)c.overflow, (unsigned long long)c.entries,
			      (unsigned long long)d->branch, (unsigned long long)d->leaf,
			      (unsigned long long)d->overflow, (unsigned long long)d->entries);
	return ANN_OK;
}

/* Checks both meta pages of data.mdb with pread before LMDB opens the file:
 * LMDB takes the page size, and from it where the second meta page and
 * every page lie, from the newest meta page without checking it. A missing
 * or empty file is left to LMDB (a new environment). */
int ann_lmdb_meta_precheck(const char *path, ann_error *err)
{
	char file[4200];
	snprintf(file, sizeof file, "%s/data.mdb", path);
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ANN_OK;
	pgw w;
	memset(&w, 0, sizeof w);
	w.fd = fd;
	struct stat st;
	int rc = ANN_OK;
	if (fstat(fd, &st) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot stat", file);
		close(fd);
		return rc;
	}
	w.file_bytes = (uint64_t)st.st_size;
	uint8_t m[2][LM_META_TXNID + 8];
	uint32_t psize = 0;
	if (w.file_bytes == 0)
		goto done;
	for (int i = 0; i < 2 && rc == ANN_OK; i++) {
		if (w.file_bytes < (uint64_t)(i + 1) * (i ? psize : sizeof m[0])) {
			rc = pg_bad(&w, "%llu bytes: meta page %d is cut off: truncated", (unsigned long long)w.file_bytes, i);
			break;
		}
		if ((rc = pg_pread(&w, m[i], sizeof m[i], (uint64_t)i * psize)) < 0)
			break;
		uint32_t ps = ann_ld32(m[i] + LM_META_DBS);
		if ((ann_ld16(m[i] + 10) & 0x08) == 0 || ann_ld32(m[i] + LM_PGHDR) != LM_MAGIC ||
		    ann_ld32(m[i] + LM_PGHDR + 4) != LM_VERSION || ps < 512 || ps > 65536 || (ps & (ps - 1)) ||
		    (i == 1 && ps != psize))
			rc = pg_bad(&w, "meta page %d: flags 0x%x, magic 0x%08x, version %u, page size %u; expected a meta "
				    "page, 0x%08x, %u and a power of two 512..65536%s", i, ann_ld16(m[i] + 10),
				    ann_ld32(m[i] + LM_PGHDR), ann_ld32(m[i] + LM_PGHDR + 4), ps, LM_MAGIC, LM_VERSION,
				    i == 1 ? " equal to meta page 0's" : "");
		psize = ps;
	}
	if (rc == ANN_OK) {
		uint64_t t0 = ann_ld64(m[0] + LM_META_TXNID), t1 = ann_ld64(m[1] + LM_META_TXNID);
		const uint8_t *newest = t1 > t0 ? m[1] : m[0];
		uint64_t last = ann_ld64(newest + LM_META_LAST);
		if (w.file_bytes < 2ull * psize)
			rc = pg_bad(&w, "%llu bytes, shorter than its two %u-byte meta pages: truncated",
				    (unsigned long long)w.file_bytes, psize);
		else if ((t0 && t0 % 2 != 0) || (t1 && t1 % 2 != 1) || (t0 != t1 && (t0 > t1 ? t0 - t1 : t1 - t0) != 1) ||
			 (t0 == t1 && t0 != 0))
			rc = pg_bad(&w, "meta pages hold txns %llu and %llu; LMDB keeps the last two, in the pages of "
				    "their parity", (unsigned long long)t0, (unsigned long long)t1);
		else if (last < 1 || last > (1ull << 46) / psize)
			rc = pg_bad(&w, "meta page of txn %llu: last page %llu, expected 1..%llu",
				    (unsigned long long)(t1 > t0 ? t1 : t0), (unsigned long long)last,
				    (unsigned long long)((1ull << 46) / psize));
	}
done:
	close(fd);
	if (rc == ANN_E_CORRUPT)
		rc = ann_err(err, rc, "%s: damaged catalog: %s; rebuild the index (annann build)", file, w.msg);
	return rc;
}

/* Index directory of a catalog path ("<dir>/catalog.lmdb" -> "<dir>"). */
void ann_catalog_index_dir(const char *path, char *buf, size_t cap)
{
	size_t n = strlen(path);
	while (n > 1 && path[n - 1] == '/')
		n--;
	size_t base = n;
	while (base > 0 && path[base - 1] != '/')
		base--;
	if (base == 0)
		snprintf(buf, cap, ".");
	else
		snprintf(buf, cap, "%.*s", (int)(base > 1 ? base - 1 : 1), path);
}

/* Checks the snapshot of txn (its meta page has txn id `want`). full: walk
 * every tree; else the cheap check. *repairable (may be NULL) tells whether
 * the damage found is limited to LMDB's free list and accounting. A damage
 * report is ANN_E_CORRUPT naming data.mdb; ANN_E_STATE when the snapshot's meta
 * page was overwritten meanwhile by two newer commits (check again). */
int ann_lmdb_pages_check(const char *path, MDB_env *env, uint64_t want, bool full, bool *repairable, char *detail,
			 size_t dcap, ann_error *err)
{
	pgw w;
	memset(&w, 0, sizeof w);
	w.full = full;
	char file[4200], idir[4200];
	snprintf(file, sizeof file, "%s/data.mdb", path);
	ann_catalog_index_dir(path, idir, sizeof idir);
	if (repairable)
		*repairable = false;
	MDB_stat est;
	MDB_envinfo info;
	mdb_env_stat(env, &est);
	mdb_env_info(env, &info);
	w.psize = est.ms_psize;
	int rc = mdb_env_get_fd(env, &w.fd);
	struct stat st;
	if (rc || fstat(w.fd, &st) != 0)
		return ann_err_sys(err, rc ? rc : errno, "%s: cannot stat", file);
	w.file_bytes = (uint64_t)st.st_size;
	/* The full walk reads through a read-only map of the file's current
	 * size (a pread per page costs 20-30 us on a virtual machine); the cheap
	 * check reads its few pages with pread.
	 * Every access is bounds-checked against that size, so a short file
	 * is an error here; only a truncation while we walk could fault, as it
	 * would fault LMDB itself. */
	void *mp = full && w.file_bytes ? mmap(NULL, (size_t)w.file_bytes, PROT_READ, MAP_SHARED, w.fd, 0) : MAP_FAILED;
	if (mp != MAP_FAILED)
		w.map = mp;
	uint8_t m[2][LM_META_TXNID + 8];
	const uint8_t *meta = NULL;
	if (w.psize < 512 || w.file_bytes < 2ull * w.psize) {
		rc = pg_bad(&w, "%llu bytes, shorter than its two %u-byte meta pages: truncated",
			    (unsigned long long)w.file_bytes, w.psize);
		goto out;
	}
	for (int i = 0; i < 2; i++) {
		if ((rc = pg_pread(&w, m[i], sizeof m[i], (uint64_t)i * w.psize)) < 0)
			goto out;
		if (ann_ld64(m[i] + LM_META_TXNID) == want)
			meta = m[i];
	}
	if (!meta) {
		rc = ann_err(err, ANN_E_STATE, "%s: the catalog changed during its check (txn %llu is gone); try again",
			     file, (unsigned long long)want);
		goto free;
	}
	if (ann_ld32(meta + LM_PGHDR) != LM_MAGIC || ann_ld32(meta + LM_PGHDR + 4) != LM_VERSION ||
	    ann_ld32(meta + LM_META_DBS) != w.psize) {
		rc = pg_bad(&w, "meta page of txn %llu: magic 0x%08x, version %u, page size %u; expected 0x%08x, %u, %u",
			    (unsigned long long)want, ann_ld32(meta + LM_PGHDR), ann_ld32(meta + LM_PGHDR + 4),
			    ann_ld32(meta + LM_META_DBS), LM_MAGIC, LM_VERSION, w.psize);
		goto out;
	}
	w.last = ann_ld64(meta + LM_META_LAST);
	/* LMDB writes txn N's meta into page N % 2 and never lowers the last
	 * page: the two meta pages hold consecutive txns (both 0 when new), the
	 * newer with a last page at least the older's. A flipped txn id would
	 * otherwise make LMDB serve the older snapshot as the newest. */
	uint64_t t0 = ann_ld64(m[0] + LM_META_TXNID), t1 = ann_ld64(m[1] + LM_META_TXNID);
	if ((t0 && t0 % 2 != 0) || (t1 && t1 % 2 != 1) || (t0 != t1 && (t0 > t1 ? t0 - t1 : t1 - t0) != 1) ||
	    (t0 == t1 && t0 != 0)) {
		rc = pg_bad(&w, "meta pages hold txns %llu and %llu; LMDB keeps the last two, in the pages of their "
			    "parity", (unsigned long long)t0, (unsigned long long)t1);
		goto out;
	}
	const uint8_t *older = meta == m[0] ? m[1] : m[0];
	if (t0 != t1 && ann_ld64(older + LM_META_TXNID) < want && ann_ld64(older + LM_META_LAST) > w.last) {
		rc = pg_bad(&w, "meta page of txn %llu has last page %llu, below the %llu of the txn before it",
			    (unsigned long long)want, (unsigned long long)w.last,
			    (unsigned long long)ann_ld64(older + LM_META_LAST));
		goto out;
	}
	uint64_t maxpg = (uint64_t)info.me_mapsize / w.psize;
	if (w.last < 1 || w.last >= maxpg) {
		rc = pg_bad(&w, "meta page of txn %llu: last page %llu, expected 1..%llu (the map holds %llu pages)",
			    (unsigned long long)want, (unsigned long long)w.last, (unsigned long long)(maxpg - 1),
			    (unsigned long long)maxpg);
		goto out;
	}
	w.seen = ann_calloc((size_t)(w.last / 8 + 1), 1);
	if (!w.seen) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for a %llu-page bitmap", file,
			     (unsigned long long)(w.last + 1));
		goto free;
	}
	lm_db freedb, maindb;
	lm_db_load(meta + LM_META_DBS, &freedb);
	lm_db_load(meta + LM_META_DBS + LM_DBREC, &maindb);
	if ((rc = pg_walk_tree(&w, "main", TREE_MAIN, &maindb)) < 0)
			goto out;
	for (unsigned i = 0; i < w.nsubs; i++) {
		const lm_db *d = &w.subs[i].db;
		if (full) {
			if ((rc = pg_walk_tree(&w, w.subs[i].name, TREE_DATA, d)) < 0)
			goto out;
		} else {
			if (d->root != LM_NONE && (d->root < 2 || d->root > w.last)) {
				rc = pg_bad(&w, "database '%s': root page %llu, outside 2..%llu", w.subs[i].name,
					    (unsigned long long)d->root, (unsigned long long)w.last);
				goto out;
			}
			w.sub_pages += d->branch + d->leaf + d->overflow;
		}
	}
	w.in_free = true;
	if ((rc = pg_walk_tree(&w, "free", TREE_FREE, &freedb)) < 0)
			goto out;
	if (2 + w.nseen + w.sub_pages != w.last + 1) {
		uint64_t first = 0;
		for (uint64_t p = 2; full && p <= w.last && !first; p++)
			if (!(w.seen[p >> 3] & (1u << (p & 7))))
				first = p;
		char where[96] = "";
		if (first)
			snprintf(where, sizeof where, " (page %llu is in no database and not on the free list)",
				 (unsigned long long)first);
		rc = pg_bad(&w, "page accounting: 2 meta + %llu in databases + %llu on the free list = %llu pages, "
			    "but the last page is %llu%s", (unsigned long long)(w.nseen - w.free_listed + w.sub_pages),
			    (unsigned long long)w.free_listed, (unsigned long long)(2 + w.nseen + w.sub_pages),
			    (unsigned long long)w.last, where);
		goto out;
	}
	rc = ANN_OK;
out:
	if (rc == ANN_E_CORRUPT) {
		if (repairable)
			*repairable = w.repairable;
		if (detail)
			snprintf(detail, dcap, "%s", w.msg);
		if (w.repairable)
			rc = ann_err(err, ANN_E_CORRUPT, "%s: damaged catalog: %s; run 'annann repair --index %s'", file,
				     w.msg, idir);
		else
			rc = ann_err(err, ANN_E_CORRUPT, "%s: damaged catalog: %s; the damage is in the data, beyond "
				     "what 'annann repair' can rebuild: rebuild the index (annann build)", file, w.msg);
	} else if (rc == ANN_E_NOMEM) {
		rc = ann_err(err, rc, "%s: page check: out of memory", file);
	}
free:
	if (w.map)
		munmap((void *)w.map, (size_t)w.file_bytes);
	for (unsigned i = 0; i < LM_MAXDEPTH; i++)
		ann_free(w.buf[i]);
	ann_free(w.val);
	ann_free(w.seen);
	return rc;
}

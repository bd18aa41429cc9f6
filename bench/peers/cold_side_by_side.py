#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/cold_side_by_side.py: annann, SPANN and DiskANN from cold storage, interleaved in
# one run, so that all see the same machine. Every setting is its own process, started after the
# page cache is dropped (echo 3 > /proc/sys/vm/drop_caches: needs root); a repetition runs every
# setting once, in the order given, and the medians over the repetitions are reported.
# With --build it first builds whatever index is missing, one at a time (annann with the given
# build options, SPANN through spann.py, DiskANN through diskann.py), timing each build and its
# peak RSS, so that one command takes a data directory to the baseline table.
#
#   annann: `annann search --batch 1 --threads 1 --json` on the whole query file (io_uring,
#           O_DIRECT, no cache); bytes = its bytes_read per query; RAM = router_ram_bytes of
#           `annann info --json` and the search process's peak RSS.
#   SPANN:  sptag-ssdserving with the search file written by spann.py (O_DIRECT + AIO for the
#           postings; the head index in RAM); bytes = "Total Disk Page Access" mean x 4096.
#   DiskANN: search_disk_index, one search list size L per process (beam width 4, one thread, no
#           node cache, O_DIRECT + libaio); bytes = mean IOs x 4096. It prints the mean and the
#           99.9th percentile of latency, not p50/p99: those fields hold mean and p99.9 for it
#           (latency_kind says so).
#   recall@10 is strict (no tie credit) for all, from their result ids against gt100.bin.
#   Every row also carries index RAM per vector (annann: router_ram_bytes; SPANN: head index
#   files; DiskANN: PQ codes + pivots), disk/raw (the files the search opens against n * dim *
#   value bytes), build time and build peak RSS, and the search's peak RSS. A peer built by hand
#   (no build.json) gets its build figures from the `/usr/bin/time -v` log beside it (SPANN:
#   build-run.log, DiskANN: build-progress.log) and SPANN its PostingPageLimit from build.ini.
#
# Usage:
#   cold_side_by_side.py --dir DATA --annann BIN --index "NAME=DIR:P1,P2[|MORE ARGS]" [--index ...]
#   (in MORE ARGS, a word NAME=VALUE with an upper-case NAME is set in annann's environment
#   instead, e.g. "|ANNANN_EARLY_PAGES=0" for the hidden switches of docs/DESIGN.md)
#                        [--build --annann-build "NAME=BUILD ARGS" ...] [--spann-work W --spann-irn 6,8]
#                        [--diskann-work W --diskann-bin D --diskann-L 10,20] [--threads 2 --batch 16
#                        --queue-depth 32 --fio-work DIR] --reps 3 --out FILE.jsonl
#   With --build, an --index whose DIR does not exist is built with the --annann-build options of
#   the same NAME (annann build --data DATA/base.* --index DIR ARGS); SPANN and DiskANN are built
#   in their work directories when missing. --target 0.9 prints each variant's figures at that
#   recall, interpolated linearly between the two sweep points around it (bytes, I/Os, p50, mean, p99:
#   the mean is the one latency all three print, DiskANN having no p50).
#
# Throughput mode (issue 12's "from cold storage on 2 threads (batched)"): --threads T --batch B
# (defaults 1 and 1, the latency mode above) runs annann `search --threads T --batch B
# --queue-depth Q` (T searchers, each taking the next batch of B queries from a shared cursor,
# reading each batch's blocks once with up to Q requests in flight), SPANN with
# NumberOfThreads=T in [SearchSSDIndex] (T threads each taking the next single query: sptag has
# no batch) and DiskANN with -T T (an OpenMP loop over single queries). QPS is each tool's own
# figure for its search phase, loading excluded (QPS_KIND below says which; every row carries
# qps, qps_runs, qps_kind, threads, batch). With --fio-work DIR (on the index's file system), after
# every repetition fio reads a file there (io_uring, O_DIRECT, random, T jobs x QD Q) at the read
# sizes each annann setting issued in that repetition: on a codes index the head reads and the
# page reads in their shares of the requests, each as the mix of whole-page sizes that gives its
# mean (a bssplit), else the mean read's mix. annann's MB/s = bytes/query x QPS; share_of_fio = MB/s / fio's MB/s, per
# repetition, median. The at-target rows add qps, MBps, fio_bw_MBps and share_of_fio, and a last
# table gives each system's QPS at the target against the best peer's. On a loaded machine only
# those ratios within one run mean anything. Example (Fashion-MNIST, docs/BENCHMARKS.md):
#   cold_side_by_side.py --dir /work/data/peers/fmnist-q2k --annann build/tools/annann \
#     --index "annann-c1-256=W/p12-annann-c1-256:2,3,4" --spann-work W/spann --spann-irn 4,6,8 \
#     --diskann-work W/diskann --diskann-L 20,30,40 --threads 2 --batch 16 --fio-work W/../fio \
#     --reps 3 --out bench/results/sidebyside-fmnist-2t-DATE.jsonl
#   The output also gets a {"kind": "load"} record with `uptime` at the start and at the end.
#   annann's mean us (1 / QPS in the latency mode) is left empty here: with T threads or a batch
#   it is no latency.
import argparse
import json
import os
import re
import subprocess
import tempfile

import common  # noqa: E402  (LAST_CPU_SHARE, set by run)
from common import (bin_header, dataset_files, dir_bytes, drop_caches, emit, interp_at, log, median, parse_list,
		    read_gt, run, strict_recall)
import fio_limit
import numpy as np
import spann

QPS_KIND = {'annann': 'queries / wall time of the search (threads started to joined), the qps of search --json',
	    'spann': 'sptag-ssdserving "actuallQPS": queries / wall time of SearchSequential (threads started to joined)',
	    'diskann': 'search_disk_index QPS column: queries / wall time of its parallel loop over the queries'}
HERE = os.path.dirname(os.path.abspath(__file__))
DT = {'.u8bin': ('uint8', 1), '.i8bin': ('int8', 1), '.fbin': ('float', 4)}


ENV_WORD = re.compile(r'^[A-Z][A-Z0-9_]*=')


def split_extra(extra):
	"""An --index's |ARGS: (annann arguments, environment): NAME=VALUE words with an upper-case
	NAME are environment, the rest arguments in their order."""
	words = extra.split()
	return [w for w in words if not ENV_WORD.match(w)], dict(w.split('=', 1) for w in words if ENV_WORD.match(w))


def annann_once(a, idx, nprobe, extra, query, gtp, tmp, env=None):
	out = os.path.join(tmp, 'res.bin')
	o, _, rss, _ = run([a.annann, 'search', '--index', idx, '--queries', query, '--gt', gtp, '--k', '10',
			    '--nprobe', str(nprobe), '--batch', str(a.batch), '--threads', str(a.threads),
			    '--queue-depth', str(a.queue_depth), '--out', out, '--json'] + extra, timed=True,
			   env=dict(os.environ, **env) if env else None)
	j = json.loads(o.strip().splitlines()[-1])
	nres, kres = bin_header(out)
	ids = np.fromfile(out, dtype='<i4', count=nres * kres, offset=8).reshape(nres, kres)
	gt, _ = read_gt(gtp)
	return {'recall': strict_recall(ids, gt, 10), 'recall_reported': j['recall_at_k'],
		'bytes': j['bytes_read'], 'ios': j['io_requests'], 'cands': j['candidates'],
		'p50_us': j['latency_us']['p50'], 'p99_us': j['latency_us']['p99'],
		'mean_us': 1e6 / j['qps'] if a.threads == 1 and a.batch == 1 else None, 'qps': j['qps'],
		'threads': j['threads'], 'batch': j['batch'], 'codes': j.get('codes'), 'stage_us': j['stage_us'], 'io_path': j['io_path'], 'rss_kb': rss, 'cpu_share': common.LAST_CPU_SHARE}


def spann_once(a, irn, query, gtp, tmp):
	work = a.spann_work
	base_guess = query  # VectorPath is empty at search time; the base is not read
	ini = os.path.join(tmp, 'search_%d.ini' % irn)
	res = os.path.join(tmp, 'spann_res_%d.bin' % irn)
	n, dim = bin_header(query)
	vtype = spann.VTYPE[os.path.splitext(query)[1]][0]
	page_limit = spann_page_limit(work)
	with open(ini, 'w') as f:
		f.write(spann.config(base_guess, query, gtp, os.path.join(work, 'idx'), os.path.join(work, 'tmp') + '/',
				     dim, vtype, page_limit, False, irn, res, search_threads=a.threads))
	o, e, rss, _ = run(['sptag-ssdserving', ini], timed=True, cwd=work)
	text = o + e
	m = re.search(r'actuallQPS is ([\d.]+)', text)
	if m is None:
		raise RuntimeError('spann: no "actuallQPS" line in the output of %s' % ini)
	lat = spann.percentiles(text, 'Total Latency Distribution')
	pages = spann.percentiles(text, 'Total Disk Page Access Distribution')
	head = spann.percentiles(text, 'Head Latency Distribution')
	ios = spann.percentiles(text, 'Total Disk IO Distribution')
	elems = spann.percentiles(text, 'Ex Elements Count')
	nres, kres = bin_header(res)
	raw = np.fromfile(res, dtype='<i4', count=nres * kres * 2, offset=8).reshape(nres, kres, 2)
	gt, _ = read_gt(gtp)
	return {'recall': strict_recall(raw[:, :, 0], gt, 10), 'bytes': pages['avg'] * 4096,
		'ios': ios['avg'] if ios else None, 'cands': elems['avg'] if elems else None,
		'p50_us': lat['p50'] * 1e3, 'p99_us': lat['p99'] * 1e3, 'mean_us': lat['avg'] * 1e3,
		'head_us': head['avg'] * 1e3 if head else None, 'qps': float(m.group(1)), 'rss_kb': rss, 'cpu_share': common.LAST_CPU_SHARE}


def diskann_once(a, L, query, gtp, tmp):
	prefix = os.path.join(a.diskann_work, 'd')
	res = os.path.join(tmp, 'dres')
	dt = DT[os.path.splitext(query)[1]][0]
	o, e, rss, _ = run([os.path.join(a.diskann_bin, 'search_disk_index'), '--data_type', dt, '--dist_fn', 'l2',
			    '--index_path_prefix', prefix, '--query_file', query, '--gt_file', gtp, '-K', '10',
			    '-L', str(L), '-W', '4', '-T', str(a.threads), '--num_nodes_to_cache', '0', '--result_path', res],
			   timed=True)
	row = None
	for line in o.splitlines():
		f = line.split()
		if len(f) == 9 and f[0] == str(L) and f[1] == '4':
			row = f
	if row is None:
		raise RuntimeError('diskann: no result line for L=%d in:\n%s' % (L, o[-2000:]))
	rf = '%s_%d_idx_uint32.bin' % (res, L)
	nr, kr = bin_header(rf)
	ids = np.fromfile(rf, dtype='<u4', count=nr * kr, offset=8).reshape(nr, kr).astype(np.int64)
	gt, _ = read_gt(gtp)
	ios = float(row[5])
	return {'recall': strict_recall(ids, gt, 10), 'bytes': ios * 4096, 'ios': ios, 'cands': None,
		'p50_us': float(row[3]), 'p99_us': float(row[4]), 'mean_us': float(row[3]), 'qps': float(row[2]),
		'io_us': float(row[6]), 'rss_kb': rss, 'cpu_share': common.LAST_CPU_SHARE}


def spann_page_limit(work):
	"""PostingPageLimit the SPANN index was built with: from spann.py's build.json, else (an index
	built by hand from spann.py's build file) from WORK/build.ini; the search must use the same."""
	rec = os.path.join(work, 'build.json')
	if os.path.exists(rec):
		with open(rec) as f:
			return json.load(f).get('page_limit', 4)
	ini = os.path.join(work, 'build.ini')
	if os.path.exists(ini):
		with open(ini) as f:
			m = re.search(r'^PostingPageLimit=(\d+)\s*$', f.read(), re.M)
		if m:
			return int(m.group(1))
	raise SystemExit('cold_side_by_side: %s has neither build.json nor a build.ini with PostingPageLimit=N' % work)


def time_v_record(path):
	"""Build time and peak RSS of an index built by hand under `/usr/bin/time -v` (its log
	beside the index): the last "Elapsed (wall clock)" and "Maximum resident set size" of a
	run that ended with "Exit status: 0"; {} when there is none (the figures stay empty)."""
	if not os.path.exists(path):
		return {}
	with open(path, errors='replace') as f:
		text = f.read()
	rec = {}
	for block in re.findall(r'Command being timed: "([^"]*)"(.*?)Exit status: (\d+)', text, re.S):
		cmd, body, status = block
		w = re.search(r'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)', body)
		m = re.search(r'Maximum resident set size \(kbytes\): (\d+)', body)
		if status != '0' or not w or not m:
			continue
		secs = 0.0
		for part in w.group(1).split(':'):
			secs = secs * 60 + float(part)
		rec = {'build_s': secs, 'build_peak_rss_kb': int(m.group(1)), 'cmd': cmd, 'source': path}
	return rec


def page_mix(mean, share, mix):
	"""Adds reads of `mean` bytes on average, `share` of the requests, to mix (4 KiB pages ->
	share) as the two whole-page sizes around the mean in the proportions that give it (a 1.3-page
	mean read: 70% one page, 30% two), since every read is of whole pages."""
	p = max(mean / 4096.0, 1.0)
	lo = int(p)
	f = p - lo
	mix[lo] = mix.get(lo, 0.0) + share * (1.0 - f)
	if f > 0:
		mix[lo + 1] = mix.get(lo + 1, 0.0) + share * f


def read_sizes(r):
	"""The read sizes of one annann run as a fio bssplit: on a codes index the head reads (round
	1) and the page reads (round 2, adjacent 4 KiB pages coalesced) in their shares of the read
	requests, each as the mix of whole-page sizes that gives its mean (until 2026-12-06 each
	round's mean was rounded to the nearest 4 KiB, so 5.3 KiB heads were modelled as 4 KiB reads
	and the share of fio passed 100%); else the mean read's mix."""
	c = r.get('codes')
	mix = {}
	if c and c.get('ios_round1') and c.get('ios_round2'):
		n = c['ios_round1'] + c['ios_round2']
		page_mix(c['bytes_round1'] / c['ios_round1'], c['ios_round1'] / n, mix)
		page_mix(c['bytes_round2'] / c['ios_round2'], c['ios_round2'] / n, mix)
	else:
		page_mix(r['bytes'] / r['ios'], 1.0, mix)
	pct = {k: int(round(100 * v)) for k, v in mix.items() if int(round(100 * v)) > 0}
	if not pct:
		return '4k'
	top = max(pct, key=lambda k: pct[k])
	pct[top] += 100 - sum(pct.values())  # fio wants the shares to sum to 100
	if len(pct) == 1:
		return '%dk' % (4 * top)
	return ':'.join('%dk/%d' % (4 * k, pct[k]) for k in sorted(pct))


def uptime():
	return subprocess.run(['uptime'], stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()


def build_annann(a, name, d, args, base):
	"""Builds an annann index when DIR is missing; keeps its build record in DIR.build.json."""
	rec_path = d.rstrip('/') + '.build.json'
	if not os.path.exists(d):
		cmd = [a.annann, 'build', '--data', base, '--index', d, '--quiet', '--json'] + args.split()
		log('build annann %s: %s' % (name, ' '.join(cmd)))
		o, _, rss, wall = run(cmd, timed=True)
		with open(rec_path, 'w') as f:
			json.dump({'build_s': wall, 'build_peak_rss_kb': rss, 'cmd': ' '.join(cmd[1:]),
				   'summary': json.loads(o.strip().splitlines()[-1])}, f)
	if os.path.exists(rec_path):
		with open(rec_path) as f:
			return json.load(f)
	return {}


def build_peer(script, work, a, extra):
	"""Runs spann.py or diskann.py --build-only (it builds only when its index is missing) and
	returns its build record."""
	out = os.path.join(work, 'build-record.jsonl')
	cmd = ['/usr/bin/python3', os.path.join(HERE, script), '--dir', a.dir, '--work', os.path.dirname(work),
	       '--build-only', '--out', out] + extra
	log('build %s' % ' '.join(cmd))
	run(cmd, cwd=HERE)
	rec = os.path.join(work, 'build.json')
	if not os.path.exists(rec):
		# an index built by hand (real1m's DiskANN): searched, with no build figures
		log('%s: no build.json in %s, build time and peak RSS left empty' % (script, work))
		return {}
	with open(rec) as f:
		return json.load(f)


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--dir', required=True, help='dataset directory: query.u8bin (or .fbin), gt100.bin')
	ap.add_argument('--annann', required=True)
	ap.add_argument('--index', action='append', default=[],
			help='NAME=DIR:P1,P2,... (nprobe values), optionally followed by |ARGS: more search options')
	ap.add_argument('--spann-work', help='the spann directory of bench/peers/spann.py (holds idx and build.json, '
			'or build.ini and build-run.log for an index built by hand from spann.py\'s build file)')
	ap.add_argument('--spann-irn', default='6,8')
	ap.add_argument('--spann-build-maxcheck', type=int, default=2048)
	ap.add_argument('--diskann-work', help='the diskann directory of bench/peers/diskann.py (holds d_*)')
	ap.add_argument('--diskann-bin', default=next(
		(p for p in (os.path.join(HERE, '..', '..', '..', 'shared', 'peers', 'diskann'), '/work/shared/peers/diskann')
		 if os.path.exists(os.path.join(p, 'search_disk_index'))), None),
		help='directory of build_disk_index and search_disk_index (default: ../shared/peers/diskann)')
	ap.add_argument('--diskann-L', default='10,20,30')
	ap.add_argument('--diskann-R', type=int, default=64)
	ap.add_argument('--diskann-build-L', type=int, default=100)
	ap.add_argument('--build', action='store_true', help='build missing indexes first (one at a time)')
	ap.add_argument('--annann-build', action='append', default=[], help='NAME=BUILD ARGS for --build')
	ap.add_argument('--threads', type=int, default=1,
			help='search threads of every system (annann --threads, SPANN NumberOfThreads, DiskANN -T)')
	ap.add_argument('--batch', type=int, default=1, help='annann --batch (the peers have no batch)')
	ap.add_argument('--queue-depth', type=int, default=32, help='annann --queue-depth (per thread)')
	ap.add_argument('--fio-work', help='with --threads > 1: a directory on the index file system for the fio '
			'file; after each repetition fio reads it at every annann setting\'s read sizes')
	ap.add_argument('--fio-size', default='1G')
	ap.add_argument('--fio-runtime', type=int, default=5)
	ap.add_argument('--target', type=float, default=0.9)
	ap.add_argument('--reps', type=int, default=3)
	ap.add_argument('--out', required=True)
	a = ap.parse_args()
	query = next(os.path.join(a.dir, q) for q in ('query.u8bin', 'query.fbin', 'query.i8bin')
		     if os.path.exists(os.path.join(a.dir, q)))
	base, _ = dataset_files(a.dir)
	n, dim = bin_header(base)
	raw_bytes = n * dim * DT[os.path.splitext(base)[1]][1]
	gtp = os.path.join(a.dir, 'gt100.bin')
	builds = dict(spec.split('=', 1) for spec in a.annann_build)
	settings = []
	for spec in a.index:
		spec, _, extra = spec.partition('|')
		name, rest = spec.split('=', 1)
		d, probes = rest.rsplit(':', 1)
		brec = build_annann(a, name, d, builds.get(name, ''), base) if a.build else {}
		if not brec and os.path.exists(d.rstrip('/') + '.build.json'):
			# the record an earlier --build left beside the index (read only)
			with open(d.rstrip('/') + '.build.json') as f:
				brec = json.load(f)
		info = json.loads(run([a.annann, 'info', '--index', d, '--json'])[0])
		info['extra'], info['env'] = split_extra(extra)
		info['build'] = brec
		for p in parse_list(probes):
			settings.append(('annann', name, d, p, info))
	if a.spann_work:
		brec = build_peer('spann.py', a.spann_work, a, ['--build-maxcheck', str(a.spann_build_maxcheck)]) \
			if a.build else {}
		if not brec and os.path.exists(os.path.join(a.spann_work, 'build.json')):
			with open(os.path.join(a.spann_work, 'build.json')) as f:
				brec = json.load(f)
		if not brec:
			# built by hand from spann.py's build.ini under /usr/bin/time -v (real1m)
			brec = time_v_record(os.path.join(a.spann_work, 'build-run.log'))
		spann_page_limit(a.spann_work)  # refuse before the run, not in its middle
		hb = dir_bytes([os.path.join(a.spann_work, 'idx', 'HeadIndex')])
		sinfo = {'build': brec, 'index_ram_bytes': hb, 'bytes_on_disk': dir_bytes([os.path.join(a.spann_work, 'idx')])}
		for irn in parse_list(a.spann_irn):
			settings.append(('spann', 'spann', None, irn, sinfo))
	if a.diskann_work:
		if a.build:
			brec = build_peer('diskann.py', a.diskann_work, a, ['--bin', a.diskann_bin, '--R', str(a.diskann_R),
									   '--L', str(a.diskann_build_L)])
		elif os.path.exists(os.path.join(a.diskann_work, 'build.json')):
			with open(os.path.join(a.diskann_work, 'build.json')) as f:
				brec = json.load(f)
		else:
			# an index built outside diskann.py (by hand, under /usr/bin/time -v, its log beside it)
			brec = time_v_record(os.path.join(a.diskann_work, 'build-progress.log'))
			if not brec:
				log('diskann: no build.json in %s, build time and peak RSS left empty' % a.diskann_work)
		pre = os.path.join(a.diskann_work, 'd')
		dinfo = {'build': brec, 'index_ram_bytes': dir_bytes([pre + '_pq_compressed.bin', pre + '_pq_pivots.bin']),
			 'bytes_on_disk': dir_bytes([pre + '_disk.index', pre + '_pq_compressed.bin', pre + '_pq_pivots.bin'])}
		for L in parse_list(a.diskann_L):
			settings.append(('diskann', 'diskann', None, L, dinfo))
	runs = {i: [] for i in range(len(settings))}
	fio_target = None
	if a.fio_work:
		os.makedirs(a.fio_work, exist_ok=True)
		fio_target = os.path.join(a.fio_work, 'fio.test')
	emit(a.out, {'kind': 'load', 'when': 'start', 'uptime': uptime(), 'threads': a.threads, 'batch': a.batch})
	with tempfile.TemporaryDirectory() as tmp:
		try:
			for r in range(a.reps):
				run_rep(a, r, settings, runs, query, gtp, tmp, fio_target)
		finally:
			if fio_target and os.path.exists(fio_target):
				os.remove(fio_target)
	emit(a.out, {'kind': 'load', 'when': 'end', 'uptime': uptime(), 'threads': a.threads, 'batch': a.batch})
	report(a, settings, runs, n, dim, query, raw_bytes)


def run_rep(a, r, settings, runs, query, gtp, tmp, fio_target):
	"""One repetition: every setting once, in order, each after dropping the page cache; then fio
	at each annann setting's read sizes (same rep, so the same load), one run per distinct size mix."""
	for i, (system, name, d, p, info) in enumerate(settings):
		log('cold: rep %d/%d %s %s' % (r + 1, a.reps, name, p))
		if not drop_caches():
			raise SystemExit('cold_side_by_side: cannot drop the page cache (run as root)')
		if system == 'annann':
			runs[i].append(annann_once(a, d, p, info['extra'], query, gtp, tmp, info.get('env')))
		elif system == 'spann':
			runs[i].append(spann_once(a, p, query, gtp, tmp))
		else:
			runs[i].append(diskann_once(a, p, query, gtp, tmp))
	if fio_target is None:
		return
	done = {}
	for i, (system, name, d, p, info) in enumerate(settings):
		if system != 'annann':
			continue
		x = runs[i][-1]
		sizes = read_sizes(x)
		jobs = x.get('threads', a.threads)
		if (sizes, jobs) not in done:
			log('fio: rep %d/%d %s, %d jobs x QD %d' % (r + 1, a.reps, sizes, jobs, a.queue_depth))
			done[sizes, jobs] = fio_limit.randread(fio_target, a.fio_size, sizes, a.queue_depth, jobs, a.fio_runtime)
		iops, bw, _, _ = done[sizes, jobs]
		x['fio_bs'] = sizes
		x['fio_bw_MBps'] = bw / 1e6
		x['fio_iops'] = iops
		x['MBps'] = x['bytes'] * x['qps'] / 1e6
		x['share_of_fio'] = x['MBps'] / x['fio_bw_MBps']


def report(a, settings, runs, n, dim, query, raw_bytes):
	tp = a.threads > 1 or a.batch > 1
	print('| system | setting | recall@10 | KiB/query | p50 us (median; runs) | mean us | peak RSS MiB | index RAM |%s'
	      % (' QPS (median; runs) |' if tp else ''))
	print('|---|---|---|---|---|---|---|---|%s' % ('---|' if tp else ''))
	rows = []
	for i, (system, name, d, p, info) in enumerate(settings):
		rs = runs[i]
		rec = {'system': system, 'variant': name,
		       'param': {'annann': 'nprobe', 'spann': 'InternalResultNum', 'diskann': 'L'}[system],
		       'value': p, 'reps': len(rs), 'n': n, 'dim': dim, 'queries': bin_header(query)[0],
		       'recall_at_10': rs[0]['recall'],
		       'bytes_per_query': median([x['bytes'] for x in rs]),
		       'ios_per_query': median([x.get('ios') for x in rs]),
		       'candidates': median([x.get('cands') for x in rs]),
		       'latency_kind': 'mean and p99.9 (search_disk_index prints no p50)' if system == 'diskann'
		       else 'p50 and p99',
		       'p50_us': median([x['p50_us'] for x in rs]), 'p50_us_runs': [x['p50_us'] for x in rs],
		       'p99_us': median([x['p99_us'] for x in rs]), 'mean_us': median([x['mean_us'] for x in rs]),
		       'peak_rss_kb': max(x['rss_kb'] or 0 for x in rs), 'runs': rs,
		       'cpu_share': median([x.get('cpu_share') for x in rs]),
		       # annann's own report: an --index's |MORE ARGS may override --threads/--batch
		       'threads': rs[0].get('threads', a.threads), 'batch': rs[0].get('batch', 1),
		       'qps': median([x.get('qps') for x in rs]), 'qps_runs': [x.get('qps') for x in rs],
		       'qps_kind': QPS_KIND[system]}
		if system == 'annann':
			rec['queue_depth'] = a.queue_depth
			if rs[0].get('fio_bw_MBps') is not None:
				rec.update(MBps=median([x['MBps'] for x in rs]), fio_bw_MBps=median([x['fio_bw_MBps'] for x in rs]),
					   share_of_fio=median([x['share_of_fio'] for x in rs]), fio_bs=rs[-1]['fio_bs'],
					   fio_jobs=rec['threads'], fio_iodepth=a.queue_depth,
					   read_bytes_mean=rec['bytes_per_query'] / rec['ios_per_query'])
		if system == 'annann':
			rec['router_ram_bytes'] = info['router_ram_bytes']
			rec['index_ram_bytes'] = info['router_ram_bytes']
			rec['bytes_on_disk'] = info['bytes_on_disk']
			rec['search_args'] = info['extra']
			if info.get('env'):
				rec['search_env'] = info['env']
			ram = '%.2f MiB router' % (info['router_ram_bytes'] / 2**20)
		else:
			rec['index_ram_bytes'] = info['index_ram_bytes']
			rec['bytes_on_disk'] = info['bytes_on_disk']
			ram = '%.1f MiB %s' % (info['index_ram_bytes'] / 2**20,
					       'head index' if system == 'spann' else 'PQ codes')
		b = info.get('build') or {}
		rec['index_ram_bytes_per_vector'] = rec['index_ram_bytes'] / n
		rec['disk_over_raw'] = rec['bytes_on_disk'] / raw_bytes
		rec['build_s'] = b.get('build_s')
		rec['build_peak_rss_kb'] = b.get('build_peak_rss_kb')
		rec['build_cmd'] = b.get('cmd') or b.get('config')
		emit(a.out, rec)
		rows.append(rec)
		print('| %s | %s %s | %.4f | %.1f | %.0f (%s) | %s | %.1f | %s |%s' % (
			name, rec['param'], p, rec['recall_at_10'], rec['bytes_per_query'] / 1024, rec['p50_us'],
			', '.join('%.0f' % x for x in rec['p50_us_runs']),
			'-' if rec['mean_us'] is None else '%.0f' % rec['mean_us'], rec['peak_rss_kb'] / 1024, ram,
			' %.0f (%s) |' % (rec['qps'], ', '.join('%.0f' % x for x in rec['qps_runs'])) if tp else ''))
	print()
	print('At recall@10 = %g (linear interpolation between the two sweep points around it; - when the sweep '
	      'does not reach it):' % a.target)
	print('| system | KiB/query | I/Os | p50 us | mean us | p99 us | index RAM B/vector | disk/raw | build s | build peak RSS MiB |')
	print('|---|---|---|---|---|---|---|---|---|---|')
	tps = []
	for name in dict.fromkeys(r['variant'] for r in rows):
		pts = [r for r in rows if r['variant'] == name]
		at = {k: interp_at(pts, a.target, 'recall_at_10', k) for k in ('bytes_per_query', 'ios_per_query', 'p50_us',
										      'p99_us', 'mean_us', 'qps', 'MBps',
										      'fio_bw_MBps', 'share_of_fio')}
		r0 = pts[0]
		# QPS at the target in each repetition alone: the per-repetition ratios to the peers cancel
		# the load that a repetition shares (its settings ran back to back)
		at['qps_runs'] = [interp_at([dict(recall_at_10=x['recall_at_10'], qps=x['qps_runs'][r]) for x in pts
					     if r < len(x['qps_runs'])], a.target, 'recall_at_10', 'qps') for r in range(a.reps)]
		summary = dict(kind='at_target', variant=name, system=r0['system'], target_recall=a.target,
			       index_ram_bytes_per_vector=r0['index_ram_bytes_per_vector'], disk_over_raw=r0['disk_over_raw'],
			       build_s=r0['build_s'], build_peak_rss_kb=r0['build_peak_rss_kb'],
			       latency_kind=r0['latency_kind'], threads=r0['threads'], batch=r0['batch'], qps_kind=r0['qps_kind'],
			       **at)
		emit(a.out, summary)
		f = lambda v, s='%.0f': '-' if v is None else s % v
		print('| %s | %s | %s | %s | %s | %s | %.1f | %.2f | %s | %s |' % (
			name, f(at['bytes_per_query'] and at['bytes_per_query'] / 1024, '%.0f'), f(at['ios_per_query'], '%.1f'),
			f(at['p50_us']), f(at['mean_us']), f(at['p99_us']), r0['index_ram_bytes_per_vector'], r0['disk_over_raw'],
			f(r0['build_s']), f(r0['build_peak_rss_kb'] and r0['build_peak_rss_kb'] / 1024)))
		tps.append((name, r0, at))
	if not tp:
		return
	print()
	print('Throughput at recall@10 = %g, %d threads (annann batch %d, queue depth %d per thread); QPS as a ratio to '
	      'the best peer\'s; annann MB/s = bytes/query x QPS against fio (io_uring, O_DIRECT, %d jobs x QD %d) '
	      'at its read sizes in the same repetition:' % (a.target, a.threads, a.batch, a.queue_depth, a.threads,
							    a.queue_depth))
	bw = [r for r in rows if r.get('fio_bw_MBps') is not None]
	if bw:
		print('Each annann setting (medians over the repetitions; KiB/read = bytes / read requests):')
		print('| setting | QPS | MB/s | KiB/read | fio sizes | fio MB/s | share of fio |')
		print('|---|---|---|---|---|---|---|')
		for r in bw:
			print('| %s %s %d | %.0f | %.1f | %.1f | %s | %.0f | %.0f%% |' % (
				r['variant'], r['param'], r['value'], r['qps'], r['MBps'], r['read_bytes_mean'] / 1024,
				r['fio_bs'], r['fio_bw_MBps'], 100 * r['share_of_fio']))
		print()
		print('At recall@10 = %g:' % a.target)
	best = max([at['qps'] for name, r0, at in tps if r0['system'] != 'annann' and at['qps']] or [0])
	peers = [at for name, r0, at in tps if r0['system'] != 'annann']
	best_runs = [max([p['qps_runs'][r] for p in peers if p['qps_runs'][r]] or [None], key=lambda v: v or 0)
		     for r in range(a.reps)]
	print('| system | QPS | / best peer | / best peer, per repetition (median; runs) | KiB/query | MB/s | fio MB/s | '
	      'share of fio |')
	print('|---|---|---|---|---|---|---|---|')
	for name, r0, at in tps:
		f = lambda v, s='%.0f': '-' if v is None else s % v
		ratios = [q / b if q and b else None for q, b in zip(at['qps_runs'], best_runs)]
		emit(a.out, dict(kind='qps_ratio', variant=name, system=r0['system'], target_recall=a.target,
				 threads=a.threads, batch=r0['batch'], qps=at['qps'], over_best_peer=at['qps'] and best and
				 at['qps'] / best, over_best_peer_runs=ratios, over_best_peer_per_rep=median(ratios)))
		print('| %s | %s | %s | %s (%s) | %s | %s | %s | %s |' % (
			name, f(at['qps']), f(at['qps'] and best and at['qps'] / best, '%.2f'),
			f(median(ratios), '%.2f'), ', '.join(f(x, '%.2f') for x in ratios),
			f(at['bytes_per_query'] and at['bytes_per_query'] / 1024), f(at['MBps'], '%.1f'),
			f(at['fio_bw_MBps']),
			f(at['share_of_fio'] and 100 * at['share_of_fio'], '%.0f%%')))


if __name__ == '__main__':
	main()

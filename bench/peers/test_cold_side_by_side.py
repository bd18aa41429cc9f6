#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/test_cold_side_by_side.py: checks of the throughput mode of cold_side_by_side.py
# (tests/meson.build runs it as the unit test bench_peers; exit 77 = skipped when numpy or
# fio is missing): the fio size mix of an annann run, SPANN's search threads in its ini, the
# per-repetition QPS ratios and bandwidth shares of the report, and one real fio run.
import io
import json
import os
import shutil
import sys
import tempfile
import types
from contextlib import redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
	import numpy  # noqa: F401 (cold_side_by_side needs it)
except ImportError:
	print('numpy missing: skipped')
	sys.exit(77)
import cold_side_by_side as c  # noqa: E402
import fio_limit  # noqa: E402
import spann  # noqa: E402

fails = 0


def check(cond, what):
	global fails
	if not cond:
		fails += 1
		print('FAIL: %s' % what)


# An --index's |ARGS: upper-case NAME=VALUE words are annann's environment, the rest its arguments.
args, env = c.split_extra('--rerank 40 ANNANN_EARLY_PAGES=0 --adaptive off X2=a=b lower=1')
check(args == ['--rerank', '40', '--adaptive', 'off', 'lower=1'], 'split_extra args %s' % args)
check(env == {'ANNANN_EARLY_PAGES': '0', 'X2': 'a=b'}, 'split_extra env %s' % env)
check(c.split_extra('') == ([], {}), 'split_extra of nothing')

# Read sizes: 3 heads of 37.1 KiB (9.28 pages: 72% of 9, 28% of 10) and 23.7 reads of 4.6 KiB
# (1.15 pages: 85% of 1, 15% of 2) per query, 11.2% / 88.8% of the requests -> 4k 75.4% (+1 to
# sum to 100), 8k 13.4%, 36k 8.1%, 40k 3.2%.
run = {'bytes': 225618, 'ios': 26.668, 'codes': {'bytes_round1': 114070, 'ios_round1': 3, 'bytes_round2': 111548,
						 'ios_round2': 23.668}}
check(c.read_sizes(run) == '4k/76:8k/13:36k/8:40k/3', 'read_sizes codes: %s' % c.read_sizes(run))
check(c.read_sizes({'bytes': 485000, 'ios': 1.0, 'codes': None}) == '472k/59:476k/41', 'read_sizes format 1')
check(c.read_sizes({'bytes': 4096 * 10, 'ios': 10, 'codes': {'bytes_round1': 4096, 'ios_round1': 1,
							     'bytes_round2': 4096 * 9, 'ios_round2': 9}}) == '4k',
      'read_sizes one size')
check(c.read_sizes({'bytes': 100, 'ios': 1, 'codes': None}) == '4k', 'read_sizes under a page')

# SPANN: the search section carries the threads; the build file has no search section.
ini = spann.config('b', 'q', 'g', 'i', 't/', 8, 'UInt8', 4, False, 6, 'r', search_threads=2)
sec = ini[ini.index('[SearchSSDIndex]'):]
check('NumberOfThreads=2\n' in sec and 'InternalResultNum=6\n' in sec, 'spann search threads')
check('NumberOfThreads=1\n' in spann.config('b', 'q', 'g', 'i', 't/', 8, 'UInt8', 4, False, 6, 'r')[
	ini.index('[SearchSSDIndex]'):], 'spann default search threads')
check('[SearchSSDIndex]' not in spann.config('b', 'q', 'g', 'i', 't/', 8, 'UInt8', 4, True, 6, 'r', search_threads=2),
      'spann build file without search section')

# The report: two annann points around 0.9 and one SPANN point; repetition 2 is twice as slow
# for both, so the per-repetition ratio stays 2.0 while each system's median QPS moves.
tmp = tempfile.mkdtemp()
try:
	q = os.path.join(tmp, 'q.u8bin')
	with open(q, 'wb') as f:
		f.write(numpy.array([4, 2], dtype='<i4').tobytes() + bytes(8))

	def arun(recall, qps, share):
		return {'recall': recall, 'bytes': 100000, 'ios': 10, 'cands': 1, 'p50_us': 1, 'p99_us': 2, 'mean_us': None,
			'qps': qps, 'threads': 2, 'batch': 16, 'rss_kb': 1, 'MBps': 0.1 * qps, 'fio_bw_MBps': 0.1 * qps / share,
			'share_of_fio': share, 'fio_bs': '8k'}

	def srun(qps):
		return {'recall': 0.95, 'bytes': 50000, 'ios': 5, 'cands': 1, 'p50_us': 1, 'p99_us': 2, 'mean_us': 3,
			'qps': qps, 'rss_kb': 1}
	ainfo = {'router_ram_bytes': 400, 'bytes_on_disk': 1000, 'extra': [], 'build': {}}
	sinfo = {'index_ram_bytes': 800, 'bytes_on_disk': 3000, 'build': {}}
	settings = [('annann', 'ann', 'd', 2, ainfo), ('annann', 'ann', 'd', 4, ainfo), ('spann', 'spann', None, 6, sinfo)]
	runs = {0: [arun(0.8, 400, 0.5), arun(0.8, 200, 0.5), arun(0.8, 400, 0.5)],
		1: [arun(1.0, 200, 0.7), arun(1.0, 100, 0.7), arun(1.0, 200, 0.7)],
		2: [srun(150), srun(75), srun(150)]}
	out = os.path.join(tmp, 'out.jsonl')
	a = types.SimpleNamespace(threads=2, batch=16, queue_depth=32, reps=3, out=out, target=0.9)
	with redirect_stdout(io.StringIO()) as text:
		c.report(a, settings, runs, 4, 2, q, 8)
	recs = [json.loads(line) for line in open(out)]
	at = {r['variant']: r for r in recs if r.get('kind') == 'at_target'}
	ratio = {r['variant']: r for r in recs if r.get('kind') == 'qps_ratio'}
	check(abs(at['ann']['qps'] - 300) < 1e-6, 'annann QPS at 0.9: %s' % at['ann']['qps'])
	check(at['ann']['qps_runs'] == [300, 150, 300], 'annann QPS per repetition: %s' % at['ann']['qps_runs'])
	check(abs(at['ann']['share_of_fio'] - 0.6) < 1e-9, 'share of fio at 0.9: %s' % at['ann']['share_of_fio'])
	check(ratio['ann']['over_best_peer_runs'] == [2.0, 2.0, 2.0] and ratio['ann']['over_best_peer_per_rep'] == 2.0,
	      'per-repetition ratio: %s' % ratio['ann'])
	check(ratio['spann']['over_best_peer_per_rep'] == 1.0, 'peer ratio')
	rows = [r for r in recs if r.get('system') == 'annann' and 'runs' in r]
	check(all(r['threads'] == 2 and r['batch'] == 16 and r['qps_kind'].startswith('queries / wall') for r in rows),
	      'annann rows carry threads, batch, qps_kind')
	check('| ann | 300 | 2.00 | 2.00 (2.00, 2.00, 2.00) |' in text.getvalue(), 'throughput table')
finally:
	shutil.rmtree(tmp)

# A peer index built by hand (no build.json): the page limit comes from its build.ini, the build
# figures from the /usr/bin/time -v log beside it (the last run that exited 0), and a work
# directory with neither is refused rather than searched with a wrong page limit.
tmp = tempfile.mkdtemp()
try:
	with open(os.path.join(tmp, 'build.ini'), 'w') as f:
		f.write(spann.config('b', 'q', 'g', 'i', 't/', 128, 'UInt8', 7, True, 64, 'r'))
	check(c.spann_page_limit(tmp) == 7, 'spann page limit from build.ini')
	with open(os.path.join(tmp, 'build.json'), 'w') as f:
		json.dump({'page_limit': 19}, f)
	check(c.spann_page_limit(tmp) == 19, 'spann page limit from build.json first')
	os.remove(os.path.join(tmp, 'build.json'))
	os.remove(os.path.join(tmp, 'build.ini'))
	try:
		c.spann_page_limit(tmp)
		check(False, 'spann page limit without build.ini or build.json refused')
	except SystemExit as e:
		check('PostingPageLimit' in str(e), 'spann page limit refusal names the key: %s' % e)
	log = os.path.join(tmp, 'build-run.log')
	check(c.time_v_record(log) == {}, 'time -v record of a missing log')
	tv = ('\tCommand being timed: "%s"\n\tElapsed (wall clock) time (h:mm:ss or m:ss): %s\n'
	      '\tMaximum resident set size (kbytes): %d\n\tExit status: %d\n')
	with open(log, 'w') as f:
		f.write('noise\n' + tv % ('tool a', '20:37.16', 150320, 1) + tv % ('tool b', '2:11:35', 300480, 0))
	r = c.time_v_record(log)
	check(r.get('build_s') == 7895.0 and r.get('build_peak_rss_kb') == 300480 and r.get('cmd') == 'tool b',
	      'time -v record: %s' % r)
	with open(log, 'w') as f:
		f.write(tv % ('tool a', '20:37.16', 150320, 143))
	check(c.time_v_record(log) == {}, 'time -v record of a failed build is empty')
finally:
	shutil.rmtree(tmp)

# One real fio run (io_uring, O_DIRECT) at a size mix, 2 jobs: positive bandwidth and IOPS.
if shutil.which('fio') is None:
	print('fio missing: the fio check skipped')
	if fails:
		sys.exit(1)
	sys.exit(77)
d = tempfile.mkdtemp(dir=os.environ.get('ANN_TEST_DIR', '/var/tmp'))
try:
	iops, bw, p50, p99 = fio_limit.randread(os.path.join(d, 'f'), '16M', '12k/30:4k/70', 4, 2, 1)
	check(iops > 0 and bw > 0 and 4096 * iops * 0.99 <= bw <= 12288 * iops * 1.01, 'fio %s %s' % (iops, bw))
except RuntimeError as e:
	# O_DIRECT refused (tmpfs): the fio check cannot run here
	print('fio could not run with O_DIRECT in %s: %s' % (d, str(e).splitlines()[0]))
finally:
	shutil.rmtree(d)
if fails:
	sys.exit(1)
print('ok')

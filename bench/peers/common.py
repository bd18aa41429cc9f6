# SPDX-License-Identifier: MIT
# bench/peers/common.py: shared helpers of the peer benchmark (bench/peers.sh): vector and
# ground-truth files in the big-ann layout, strict recall@10, running a command under
# /usr/bin/time -v (peak RSS, wall time), medians, JSON lines, interpolation at a recall.
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

DTYPES = {'.fbin': np.float32, '.u8bin': np.uint8, '.i8bin': np.int8}


def log(msg):
	print('[peers %s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def bin_header(path):
	with open(path, 'rb') as f:
		n, d = np.frombuffer(f.read(8), dtype='<i4')
	return int(n), int(d)


def read_bin(path, limit=None):
	"""big-ann vector file: int32 n, int32 d, n*d values of the type named by the suffix."""
	ext = os.path.splitext(path)[1]
	dt = DTYPES[ext]
	n, d = bin_header(path)
	if limit is not None:
		n = min(n, limit)
	a = np.fromfile(path, dtype=dt, count=n * d, offset=8)
	return a.reshape(n, d)


def read_gt(path):
	"""big-ann ground truth: int32 n, int32 k, n*k int32 ids, n*k float32 distances."""
	n, k = bin_header(path)
	ids = np.fromfile(path, dtype='<i4', count=n * k, offset=8).reshape(n, k)
	dist = np.fromfile(path, dtype='<f4', count=n * k, offset=8 + 4 * n * k)
	dist = dist.reshape(n, k) if dist.size == n * k else None
	return ids, dist


def strict_recall(res_ids, gt_ids, k=10):
	"""|returned top-k ∩ true top-k| / k, averaged over the queries (no credit for ties)."""
	nq = min(len(res_ids), len(gt_ids))
	hits = 0
	for i in range(nq):
		hits += len(set(int(x) for x in res_ids[i][:k] if x >= 0) & set(int(x) for x in gt_ids[i][:k]))
	return hits / (nq * k)


def run(cmd, log_path=None, timed=False, cwd=None, env=None, check=True, stream=False):
	"""Runs cmd (a list). With timed, under /usr/bin/time -v: returns (stdout, stderr, rss_kb,
	wall_s); otherwise rss_kb is None and wall_s is measured here. With stream (needs log_path),
	stdout and stderr go to the log as the command writes them, so that a long build's progress
	can be followed with tail -f (a build killed half-way still leaves its progress there); the
	merged text is then returned as stdout and stderr is ''."""
	full = (['/usr/bin/time', '-v'] + cmd) if timed else cmd
	t0 = time.monotonic()
	if stream and log_path:
		with open(log_path, 'a') as f:
			f.write('$ %s\n' % ' '.join(cmd))
			f.flush()
			start = f.tell()
			p = subprocess.run(full, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
		wall = time.monotonic() - t0
		with open(log_path, 'rb') as f:
			f.seek(start)
			text = f.read().decode('utf-8', 'replace')
		with open(log_path, 'a') as f:
			f.write('# exit %d, %.2f s\n' % (p.returncode, wall))
		p = subprocess.CompletedProcess(full, p.returncode, text, '')
		errtext = text
	else:
		p = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
				   universal_newlines=True, errors='replace')
		wall = time.monotonic() - t0
		errtext = p.stderr
		if log_path:
			with open(log_path, 'a') as f:
				f.write('$ %s\n' % ' '.join(cmd))
				f.write(p.stdout)
				f.write(p.stderr)
				f.write('# exit %d, %.2f s\n' % (p.returncode, wall))
	if check and p.returncode != 0:
		tail = '\n'.join((p.stdout + p.stderr).splitlines()[-30:])
		raise RuntimeError('command failed (exit %d): %s\n%s' % (p.returncode, ' '.join(cmd), tail))
	rss = None
	if timed:
		m = re.search(r'Maximum resident set size \(kbytes\): (\d+)', errtext)
		rss = int(m.group(1)) if m else None
		m = re.search(r'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)', errtext)
		if m:
			parts = [float(x) for x in m.group(1).split(':')]
			w = 0.0
			for x in parts:
				w = w * 60 + x
			wall = w
		global LAST_CPU_SHARE
		u = re.search(r'User time \(seconds\): ([\d.]+)', errtext)
		s = re.search(r'System time \(seconds\): ([\d.]+)', errtext)
		LAST_CPU_SHARE = (float(u.group(1)) + float(s.group(1))) / wall if u and s and wall > 0 else None
	return p.stdout, p.stderr, rss, wall


# The CPU the last timed run() got, user + system over its wall time (the whole process, loading
# included), or None: what polling (annann --poll-us) or a peer's threads cost beside latency.
LAST_CPU_SHARE = None


def drop_caches():
	"""Drops the page cache (root only); returns whether it worked."""
	try:
		os.sync()
		with open('/proc/sys/vm/drop_caches', 'w') as f:
			f.write('3\n')
		return True
	except OSError:
		return False


def median(xs):
	xs = [x for x in xs if x is not None]
	return statistics.median(xs) if xs else None


def emit(path, obj):
	"""Appends one JSON object as a line to path and echoes it."""
	line = json.dumps(obj, sort_keys=False)
	with open(path, 'a') as f:
		f.write(line + '\n')
	print(line, flush=True)


def load_jsonl(path):
	out = []
	if os.path.exists(path):
		with open(path) as f:
			for line in f:
				line = line.strip()
				if line:
					out.append(json.loads(line))
	return out


def interp_at(points, target, xkey, ykey):
	"""Linear interpolation of ykey at xkey == target between the two sweep points that
	bracket it (points sorted by xkey); None when the sweep does not reach target."""
	pts = sorted([p for p in points if p.get(xkey) is not None and p.get(ykey) is not None],
		     key=lambda p: p[xkey])
	for a, b in zip(pts, pts[1:]):
		if a[xkey] <= target <= b[xkey]:
			if b[xkey] == a[xkey]:
				return min(a[ykey], b[ykey])
			t = (target - a[xkey]) / (b[xkey] - a[xkey])
			return a[ykey] + t * (b[ykey] - a[ykey])
	if pts and pts[0][xkey] >= target:
		return pts[0][ykey]   # the cheapest setting already reaches the target
	return None


def dir_bytes(paths):
	total = 0
	for p in paths:
		if os.path.isdir(p):
			for root, _, files in os.walk(p):
				for f in files:
					total += os.path.getsize(os.path.join(root, f))
		elif os.path.exists(p):
			total += os.path.getsize(p)
	return total


def dataset_files(d):
	"""The base and query files of a dataset dir, u8 preferred, and the float copies."""
	base = next((os.path.join(d, 'base' + e) for e in ('.u8bin', '.i8bin', '.fbin')
		     if os.path.exists(os.path.join(d, 'base' + e))), None)
	query = next((os.path.join(d, 'query' + e) for e in ('.u8bin', '.i8bin', '.fbin')
		      if os.path.exists(os.path.join(d, 'query' + e))), None)
	if base is None or query is None:
		raise SystemExit('%s: needs base.{u8bin,fbin} and query.{u8bin,fbin}' % d)
	return base, query


def parse_list(s):
	return [int(x) for x in s.split(',') if x.strip()]


def build_record(work, out, rec=None):
	"""Keeps a peer's build record in WORK/build.json: saves rec when a build just ran, else
	loads the one of an earlier run (a reused index); emits it to OUT when there is one."""
	path = os.path.join(work, 'build.json')
	if rec is not None:
		with open(path, 'w') as f:
			json.dump(rec, f)
	elif os.path.exists(path):
		with open(path) as f:
			rec = json.load(f)
	if rec:
		emit(out, rec)
	return rec

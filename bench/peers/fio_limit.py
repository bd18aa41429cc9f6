#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/fio_limit.py: the storage limit on the file system of the dataset, for
# bench/peers.sh: fio random reads with io_uring and O_DIRECT, 4 KiB at queue depth 64,
# 64 KiB at queue depth 16, and 4 KiB at queue depth 1 (the latency of one dependent read).
# randread() is also the ceiling cold_side_by_side.py holds annann's read bandwidth against.
import argparse
import json
import os

from common import emit, log, median, run

JOBS = [('4k', 64), ('64k', 16), ('4k', 1)]


def randread(target, size, bs, iodepth, numjobs=1, runtime=15, log_path=None):
	"""One fio random-read run of target (created at size if missing) with io_uring and O_DIRECT;
	bs is a block size ('4k') or a bssplit ('36k/10:4k/90', shares of the reads). numjobs jobs
	of iodepth each are reported as one group. Returns (iops, bw bytes/s, clat p50 us, p99 us)."""
	cmd = ['fio', '--name=peers', '--filename=' + target, '--size=' + size, '--rw=randread',
	       ('--bssplit=' if ':' in bs or '/' in bs else '--bs=') + bs, '--iodepth=%d' % iodepth,
	       '--numjobs=%d' % numjobs, '--group_reporting', '--ioengine=io_uring', '--direct=1',
	       '--runtime=%d' % runtime, '--time_based', '--randrepeat=0', '--norandommap', '--output-format=json']
	out, _, _, _ = run(cmd, log_path)
	j = json.loads(out[out.index('{'):])
	rd = j['jobs'][0]['read']
	return (rd['iops'], rd['bw_bytes'], rd['clat_ns']['percentile']['50.000000'] / 1e3,
		rd['clat_ns']['percentile']['99.000000'] / 1e3)


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--work', required=True)
	ap.add_argument('--size', default='2G')
	ap.add_argument('--runtime', type=int, default=15)
	ap.add_argument('--reps', type=int, default=1)
	ap.add_argument('--out', required=True)
	a = ap.parse_args()
	work = os.path.join(a.work, 'fio')
	os.makedirs(work, exist_ok=True)
	target = os.path.join(work, 'fio.test')
	fs = run(['stat', '-f', '-c', '%T', work])[0].strip()
	try:
		for bs, qd in JOBS:
			res = []
			for r in range(a.reps):
				log('fio %s QD%d %d/%d' % (bs, qd, r + 1, a.reps))
				res.append(randread(target, a.size, bs, qd, 1, a.runtime, os.path.join(work, 'log.txt')))
			emit(a.out, {'system': 'fio', 'kind': 'storage', 'bs': bs, 'iodepth': qd, 'engine': 'io_uring',
				     'direct': 1, 'fs': fs, 'iops': median([x[0] for x in res]),
				     'bw_MBps': median([x[1] for x in res]) / 1e6,
				     'clat_p50_us': median([x[2] for x in res]), 'clat_p99_us': median([x[3] for x in res]),
				     'file_size': a.size, 'runtime_s': a.runtime})
	finally:
		if os.path.exists(target):
			os.remove(target)


if __name__ == '__main__':
	main()

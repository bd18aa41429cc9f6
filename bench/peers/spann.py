#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/spann.py: the SPANN side of bench/peers.sh, with Debian's sptag-ssdserving.
# Writes the SPANN configuration (BKT head selection, in-memory head index, SSD posting lists;
# the SIFT1M settings of SPTAG's GettingStart), builds under /usr/bin/time -v, then searches
# once per value of the search parameter InternalResultNum (postings probed per query) from
# cold storage: sptag reads posting lists with O_DIRECT and kernel AIO, one thread, no cache.
# Figures: recall@10 recomputed strictly from its result file against our gt; bytes per query
# = its "Total Disk Page Access" mean x 4096 (pages it read); latency p50/p99 from its "Total
# Latency Distribution"; peak RSS of the search process (no base vectors loaded: VectorPath is
# empty at search time, so it cannot rerank or tie-credit).
import argparse
import json
import math
import os
import re
import shutil

from common import (bin_header, build_record, dataset_files, dir_bytes, emit, log, median, parse_list, read_gt,
		    run, strict_recall)
import numpy as np

VTYPE = {'.u8bin': ('UInt8', 1), '.i8bin': ('Int8', 1), '.fbin': ('Float', 4)}


def config(base, query, gt, idxdir, tmpdir, dim, vtype, page_limit, build, irn, result, bmc=8192, search_threads=1):
	"""search_threads: NumberOfThreads of [SearchSSDIndex], the threads that take queries one at a
	time from a shared counter (SSDServing's SearchSequential); sptag has no batch."""
	x = 'true' if build else 'false'
	text = '''[Base]
ValueType={vtype}
DistCalcMethod=L2
IndexAlgoType=BKT
Dim={dim}
VectorPath={vpath}
VectorType=DEFAULT
QueryPath={query}
QueryType=DEFAULT
WarmupPath=
TruthPath={gt}
TruthType=DEFAULT
IndexDirectory={idx}

[SelectHead]
isExecute={x}
TreeNumber=1
BKTKmeansK=32
BKTLeafSize=8
SamplesNumber=1000
SaveBKT=false
SelectThreshold=50
SplitFactor=6
SplitThreshold=100
Ratio=0.16
NumberOfThreads=2
BKTLambdaFactor=-1

[BuildHead]
isExecute={x}
NeighborhoodSize=32
TPTNumber=32
TPTLeafSize=2000
MaxCheck={bmc}
MaxCheckForRefineGraph={bmc}
RefineIterations=3
NumberOfThreads=2
BKTLambdaFactor=-1

[BuildSSDIndex]
isExecute={x}
BuildSsdIndex=true
InternalResultNum=64
ReplicaCount=8
PostingPageLimit={pl}
NumberOfThreads=2
MaxCheck={bmc}
TmpDir={tmp}

[SearchSSDIndex]
isExecute={s}
BuildSsdIndex=false
InternalResultNum={irn}
NumberOfThreads={st}
HashTableExponent=4
ResultNum=10
MaxCheck=2048
MaxDistRatio=8.0
SearchPostingPageLimit={pl}
SearchResult={res}
'''.format(vtype=vtype, dim=dim, vpath=base if build else '', query=query, gt=gt, idx=idxdir, x=x, pl=page_limit,
	   tmp=tmpdir, s='false' if build else 'true', irn=irn, res=result, bmc=bmc,
	   st=search_threads)
	# sptag-ssdserving merges [BuildSSDIndex] and [SearchSSDIndex] into one parameter set, the
	# later section winning: a build file that holds the search section builds the SSD index
	# with the search's NumberOfThreads=1. So the build file has no search section.
	if build:
		text = text[:text.index('[SearchSSDIndex]')]
	return text


def percentiles(text, title):
	"""The Avg/50/90/95/99/99.9/Max row printed under title."""
	m = re.search(re.escape(title) + r'[^\n]*\n[^\n]*Avg[^\n]*\n\[\d+\]\s*([^\n]+)', text)
	if not m:
		return None
	v = [float(x) for x in m.group(1).split()]
	return dict(zip(['avg', 'p50', 'p90', 'p95', 'p99', 'p999', 'max'], v))


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--dir', required=True)
	ap.add_argument('--work', required=True)
	ap.add_argument('--sweep', default='1,2,4,8,16,32,64')
	ap.add_argument('--reps', type=int, default=3)
	ap.add_argument('--out', required=True)
	ap.add_argument('--rebuild', action='store_true')
	ap.add_argument('--build-only', action='store_true')
	ap.add_argument('--build-maxcheck', type=int, default=8192,
			help='MaxCheck of the head-graph refine and of the SSD build (docs: 8192)')
	a = ap.parse_args()

	base, query = dataset_files(a.dir)
	gtp = os.path.join(a.dir, 'gt100.bin')
	n, dim = bin_header(base)
	ext = os.path.splitext(base)[1]
	vtype, vbytes = VTYPE[ext]
	# posting cap of ~96 vectors, as in the SIFT settings (12 pages of 128-d floats)
	page_limit = max(3, math.ceil(96 * (dim * vbytes + 4) / 4096))
	work = os.path.abspath(os.path.join(a.work, 'spann'))
	os.makedirs(work, exist_ok=True)
	logp = os.path.join(work, 'log.txt')
	idxdir = os.path.join(work, 'idx')
	tmpdir = os.path.join(work, 'tmp') + '/'
	common = {'system': 'spann', 'build': 'Debian sptag 0.0~git20230301 (sptag-ssdserving, generic build)',
		  'n': n, 'dim': dim}
	if a.rebuild and os.path.exists(idxdir):
		shutil.rmtree(idxdir)
	if not os.path.exists(os.path.join(idxdir, 'SPTAGFullList.bin')):
		os.makedirs(tmpdir, exist_ok=True)
		ini = os.path.join(work, 'build.ini')
		with open(ini, 'w') as f:
			f.write(config(os.path.abspath(base), os.path.abspath(query), os.path.abspath(gtp), idxdir, tmpdir,
				       dim, vtype, page_limit, True, 32, os.path.join(work, 'res.bin'), a.build_maxcheck))
		log('spann: build (%s)' % ini)
		out, err, rss, wall = run(['sptag-ssdserving', ini], logp, timed=True, cwd=work, stream=True)
		m = re.search(r'select head time: ([\d.]+)s build head time: ([\d.]+)s build ssd time: ([\d.]+)s', out + err)
		rec = dict(common, kind='build', build_s=wall, build_peak_rss_kb=rss, page_limit=page_limit,
			   phases_s=dict(zip(['select_head', 'build_head', 'build_ssd'],
					     [float(x) for x in m.groups()])) if m else None,
			   config=ini)
		build_record(work, a.out, rec)
	else:
		build_record(work, a.out)
	if a.build_only:
		return
	size = dir_bytes([idxdir])
	emit(a.out, dict(common, kind='info', bytes_on_disk=size,
			 posting_bytes=dir_bytes([os.path.join(idxdir, 'SPTAGFullList.bin')]),
			 head_bytes=dir_bytes([os.path.join(idxdir, 'HeadIndex')])))
	gt, _ = read_gt(gtp)
	for irn in parse_list(a.sweep):
		ini = os.path.join(work, 'search_%d.ini' % irn)
		res = os.path.join(work, 'res_%d.bin' % irn)
		with open(ini, 'w') as f:
			f.write(config(os.path.abspath(base), os.path.abspath(query), os.path.abspath(gtp), idxdir, tmpdir,
				       dim, vtype, page_limit, False, irn, res))
		reps = []
		for r in range(a.reps):
			log('spann: search InternalResultNum=%d %d/%d' % (irn, r + 1, a.reps))
			out, err, rss, wall = run(['sptag-ssdserving', ini], logp, timed=True, cwd=work)
			text = out + err
			m = re.search(r'actuallQPS is ([\d.]+)', text)
			reps.append({'qps': float(m.group(1)) if m else None,
				     'lat': percentiles(text, 'Total Latency Distribution'),
				     'head': percentiles(text, 'Head Latency Distribution'),
				     'pages': percentiles(text, 'Total Disk Page Access Distribution'),
				     'ios': percentiles(text, 'Total Disk IO Distribution'),
				     'elems': percentiles(text, 'Ex Elements Count'),
				     'rss': rss})
		nres, kres = bin_header(res)
		raw = np.fromfile(res, dtype='<i4', count=nres * kres * 2, offset=8).reshape(nres, kres, 2)
		ids = raw[:, :, 0]
		f = reps[0]
		emit(a.out, dict(common, kind='search', mode='cold', param='InternalResultNum', value=irn,
				 queries=int(nres), recall_at_10=strict_recall(ids, gt, 10),
				 bytes_per_query=f['pages']['avg'] * 4096 if f['pages'] else None,
				 pages_per_query=f['pages']['avg'] if f['pages'] else None,
				 ios_per_query=f['ios']['avg'] if f['ios'] else None,
				 candidates=f['elems']['avg'] if f['elems'] else None,
				 p50_us=median([x['lat']['p50'] * 1e3 for x in reps if x['lat']]),
				 p99_us=median([x['lat']['p99'] * 1e3 for x in reps if x['lat']]),
				 mean_us=median([x['lat']['avg'] * 1e3 for x in reps if x['lat']]),
				 head_mean_us=median([x['head']['avg'] * 1e3 for x in reps if x['head']]),
				 qps=median([x['qps'] for x in reps]), search_peak_rss_kb=max(x['rss'] or 0 for x in reps),
				 reps=len(reps), config=ini))


if __name__ == '__main__':
	main()

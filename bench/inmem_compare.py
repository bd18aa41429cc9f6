#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""In memory, one thread: annann (warm cache) against hnswlib's native build, in one run.

hnswlib: ../shared/peers/hnsw DIR M EFC EFS (builds on 2 threads, then for each ef the best of
3 passes over all queries, one query per call). annann: `annann search --cache C --warmup
--threads 1 --batch B --nprobe P,...` on an index of the same base, run REPS times right after
hnswlib; per nprobe the best QPS of the repetitions (hnswlib's rule) and the median. QPS at
the target recall is interpolated linearly between the two settings around it; a system whose
cheapest setting already exceeds the target gets ">=" that setting's QPS.

    /usr/bin/python3 bench/inmem_compare.py --set /work/data/fmnist --annann build/tools/annann \
        --index /work/data/peers/fmnist-work/annann-512b --nprobe 3,4,5,6 --efs 10,20,40 \
        --out bench/results/inmem-fmnist.jsonl

DIR holds base.fbin, query.fbin, gt100.ivecs (for hnswlib) and query.u8bin, gt100.bin (for
annann; --queries/--gt override).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def load():
    return open("/proc/loadavg").read().split()[:3]


def interp(points, target):
    """points: [(recall, qps)] -> (qps at target, note)."""
    pts = sorted(points)
    if not pts:
        return None, "no points"
    if pts[0][0] >= target:
        return pts[0][1], ">="
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            t = 0 if r1 == r0 else (target - r0) / (r1 - r0)
            return q0 + t * (q1 - q0), "interpolated"
    return None, "target not reached"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True)
    ap.add_argument("--annann", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--nprobe", required=True)
    ap.add_argument("--queries")
    ap.add_argument("--gt")
    ap.add_argument("--hnsw", default=os.path.join(os.path.dirname(__file__), "../../shared/peers/hnsw"))
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--efc", type=int, default=200)
    ap.add_argument("--efs", default="10,20,40,80")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10000)
    ap.add_argument("--cache", default="4G")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--skip-hnsw", action="store_true", help="annann only (e.g. to repeat it)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    queries = a.queries or os.path.join(a.set, "query.u8bin")
    gt = a.gt or os.path.join(a.set, "gt100.bin")
    out = open(a.out, "a")

    def emit(rec):
        rec["load"] = load()
        rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write(json.dumps(rec) + "\n")
        out.flush()
        print(json.dumps(rec), flush=True)

    hn = []
    if not a.skip_hnsw:
        t0 = time.time()
        p = subprocess.run([a.hnsw, a.set, str(a.M), str(a.efc), a.efs], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"hnsw failed ({p.returncode}): {p.stderr.strip()}")
        for line in p.stdout.splitlines():
            d = json.loads(line)
            hn.append((d["recall_at_10"], d["qps"]))
            emit({"system": "hnswlib-native", "M": a.M, "efc": a.efc, "ef": d["ef"],
                  "recall_at_10": d["recall_at_10"], "qps": d["qps"], "stderr": p.stderr.strip(),
                  "wall_s": round(time.time() - t0, 1)})

    per = {}
    for rep in range(a.reps):
        cmd = [a.annann, "search", "--index", a.index, "--queries", queries, "--gt", gt, "--k", "10",
               "--cache", a.cache, "--warmup", "--threads", "1", "--batch", str(a.batch),
               "--nprobe", a.nprobe, "--json"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"annann failed ({p.returncode}): {p.stderr.strip()}")
        for line in p.stdout.splitlines():
            d = json.loads(line)
            per.setdefault(d["nprobe"], []).append((d["recall_at_k"], d["qps"]))
    an = []
    for nprobe, runs in sorted(per.items()):
        qs = [q for _, q in runs]
        an.append((runs[0][0], max(qs)))
        emit({"system": "annann", "index": a.index, "nprobe": nprobe, "recall_at_10": runs[0][0],
              "qps_best": max(qs), "qps_median": statistics.median(qs), "qps_runs": qs})

    qa, na = interp(an, a.target)
    summary = {"summary": True, "target": a.target, "annann_qps": qa, "annann_note": na}
    if hn:
        qh, nh = interp(hn, a.target)
        summary.update({"hnswlib_qps": qh, "hnswlib_note": nh})
        if qa and qh:
            summary["annann_over_hnswlib"] = round(qa / qh, 3)
    emit(summary)


if __name__ == "__main__":
    main()

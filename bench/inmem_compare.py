#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""In memory, one thread: annann (warm cache) against hnswlib's native build, in one run.

hnswlib: ../shared/peers/hnsw DIR M EFC EFS (builds on 2 threads, then for each ef the best of
3 passes over all queries, one query per call). annann: `annann search --cache C --warmup
--threads 1 --batch B --nprobe P,...` on an index of the same base, run REPS times right after
hnswlib (--index and --nprobe repeat: several indexes, each repetition runs them in turn); per
nprobe the best QPS of the repetitions (hnswlib's rule) and the median. QPS at the target recall
is interpolated linearly between the two settings around it; a system whose cheapest setting
already exceeds the target gets ">=" that setting's QPS.

    /usr/bin/python3 bench/inmem_compare.py --set /work/data/fmnist --annann build/tools/annann \
        --index /work/data/peers/fmnist-work/annann-512b --nprobe 3,4,5,6 --efs 10,20,40 \
        --out bench/results/inmem-fmnist.jsonl

DIR holds base.fbin, query.fbin, gt100.ivecs (for hnswlib) and query.u8bin, gt100.bin (for
annann; --queries/--gt override).

On a shared machine wall-clock QPS depends on how much of a core each process got. Every row
therefore records cpu_share: the CPU seconds the process used divided by the wall seconds of
the interval that produced the row (hnswlib: one ef's 3 passes, from the end of its build or
the previous ef; annann: one nprobe's searcher setup, warm-up pass and measured pass, the first
one also the index open). 1.0 = a whole core. qps / cpu_share estimates the QPS on an idle core;
the summary gives the ratio both ways. hnswlib's build time and CPU seconds are recorded too.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time


def load():
    return open("/proc/loadavg").read().split()[:3]


def proc_cpu(pid):
    """(CPU seconds, threads) of a live or not yet reaped process, or None."""
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"), int(f[17])


def run_timed(cmd, build_phase=False):
    """Runs cmd; returns (returncode, [(line, wall_s, cpu_s) per stdout line], stderr, build)
    where each line's wall/CPU seconds cover the interval since the previous line, and build
    (with build_phase: a multi-threaded build) is (wall_s, cpu_s) up to the first moment the
    process is down to one thread again; the first line's interval then starts there."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    te = threading.Thread(target=lambda: err.append(p.stderr.read()))
    te.start()
    build = []
    mark = [t0, 0.0]

    def watch():
        multi = False
        while p.poll() is None and not build:
            c = proc_cpu(p.pid)
            if c:
                if c[1] > 1:
                    multi = True
                elif multi:
                    build.append((time.time() - t0, c[0]))
                    mark[:] = [time.time(), c[0]]
            time.sleep(0.05)

    tw = threading.Thread(target=watch if build_phase else lambda: None)
    tw.start()
    lines = []
    for line in p.stdout:
        c = proc_cpu(p.pid)
        now = time.time()
        cpu = c[0] if c else mark[1]
        lines.append((line, now - mark[0], cpu - mark[1]))
        mark[:] = [now, cpu]
    p.wait()
    tw.join()
    te.join()
    return p.returncode, lines, "".join(err), (build[0] if build else None)


def default_hnsw():
    """../shared/peers/hnsw next to the main checkout (also when run from a git worktree)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        common = subprocess.run(["git", "-C", here, "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, check=True).stdout.strip()
        return os.path.join(os.path.dirname(os.path.dirname(common)), "shared/peers/hnsw")
    except (OSError, subprocess.CalledProcessError):
        return os.path.join(here, "../../shared/peers/hnsw")


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
    ap.add_argument("--index", required=True, action="append", help="repeatable: several indexes in one run")
    ap.add_argument("--nprobe", required=True, action="append", help="one comma list per --index, in order")
    ap.add_argument("--queries")
    ap.add_argument("--gt")
    ap.add_argument("--hnsw", default=default_hnsw())
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
    if len(a.nprobe) != len(a.index):
        ap.error(f"{len(a.index)} --index but {len(a.nprobe)} --nprobe: give one --nprobe list per --index")
    queries = a.queries or os.path.join(a.set, "query.u8bin")
    gt = a.gt or os.path.join(a.set, "gt100.bin")
    out = open(a.out, "a")

    def emit(rec):
        rec["load"] = load()
        rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write(json.dumps(rec) + "\n")
        out.flush()
        print(json.dumps(rec), flush=True)

    hn, hn_share = [], []
    if not a.skip_hnsw:
        t0 = time.time()
        rc, lines, stderr, build = run_timed([a.hnsw, a.set, str(a.M), str(a.efc), a.efs], build_phase=True)
        if rc != 0:
            sys.exit(f"hnsw failed ({rc}): {stderr.strip()}")
        for line, wall, cpu in lines:
            d = json.loads(line)
            share = cpu / wall if wall > 0 else None
            hn.append((d["recall_at_10"], d["qps"]))
            hn_share.append((d["recall_at_10"], share))
            emit({"system": "hnswlib-native", "M": a.M, "efc": a.efc, "ef": d["ef"],
                  "recall_at_10": d["recall_at_10"], "qps": d["qps"], "cpu_share": share and round(share, 3),
                  "stderr": stderr.strip(), "build_wall_s": build and round(build[0], 1),
                  "build_cpu_s": build and round(build[1], 1), "wall_s": round(time.time() - t0, 1)})

    per = {ix: {} for ix in a.index}
    for rep in range(a.reps):
        for ix, nprobe in zip(a.index, a.nprobe):
            cmd = [a.annann, "search", "--index", ix, "--queries", queries, "--gt", gt, "--k", "10",
                   "--cache", a.cache, "--warmup", "--threads", "1", "--batch", str(a.batch),
                   "--nprobe", nprobe, "--json"]
            rc, lines, stderr, _ = run_timed(cmd)
            if rc != 0:
                sys.exit(f"annann failed ({rc}): {stderr.strip()}")
            for line, wall, cpu in lines:
                d = json.loads(line)
                per[ix].setdefault(d["nprobe"], []).append((d["recall_at_k"], d["qps"],
                                                            cpu / wall if wall > 0 else None))
    for ix in a.index:
        an, an_share = [], []
        for nprobe, runs in sorted(per[ix].items()):
            qs = [q for _, q, _ in runs]
            shares = [sh for _, _, sh in runs]
            best = qs.index(max(qs))
            an.append((runs[0][0], max(qs)))
            an_share.append((runs[0][0], shares[best]))
            emit({"system": "annann", "index": ix, "nprobe": nprobe, "recall_at_10": runs[0][0],
                  "qps_best": max(qs), "qps_median": statistics.median(qs), "qps_runs": qs,
                  "cpu_share_runs": [sh and round(sh, 3) for sh in shares]})

        qa, na = interp(an, a.target)
        summary = {"summary": True, "index": ix, "target": a.target, "annann_qps": qa, "annann_note": na}
        if hn:
            qh, nh = interp(hn, a.target)
            summary.update({"hnswlib_qps": qh, "hnswlib_note": nh})
            if qa and qh:
                summary["annann_over_hnswlib"] = round(qa / qh, 3)
            # The same with each QPS divided by its process's CPU share (an idle-core estimate).
            norm = lambda pts, sh: [(r, q / c) for (r, q), (_, c) in zip(pts, sh) if c]
            qa1, _ = interp(norm(an, an_share), a.target)
            qh1, _ = interp(norm(hn, hn_share), a.target)
            summary.update({"annann_qps_per_core": qa1, "hnswlib_qps_per_core": qh1})
            if qa1 and qh1:
                summary["annann_over_hnswlib_per_core"] = round(qa1 / qh1, 3)
        emit(summary)

if __name__ == "__main__":
    main()

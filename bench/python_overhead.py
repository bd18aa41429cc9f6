#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Python binding targets (issue 14), measured, never asserted in tests:

 1. overhead: batch search from Python (annann.Index.search) against the C
    tool (`annann search --batch B --threads T`) on the same index, same
    nprobe, batch and threads; target: Python's time under 1.05x the tool's.
    The tool's time is its reported QPS over the query set (search only,
    queries already in RAM); Python's is the wall time of search() (array
    conversion, result allocation and per-query stats included).
 2. threads: two Python threads, each calling search() on half the queries,
    against one thread doing all of them; target: >= 1.7x the QPS.

Runs are interleaved (tool, python, tool, python...) and the median of
--reps is reported, so a noisy shared machine hits both sides alike.

    bench/python_overhead.py --index DIR --queries Q [--tool build/tools/annann]
        [--nprobe 16] [--batch 1000] [--threads 1] [--reps 5] [--limit N] [--json]

Needs the annann package importable (PYTHONPATH=build/python or pip-installed).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import annann


def tool_seconds(tool, index, queries, nprobe, batch, threads, limit):
    cmd = [tool, "search", "--index", index, "--queries", queries, "--nprobe", str(nprobe), "--batch", str(batch),
           "--threads", str(threads), "--json"]
    if limit:
        cmd += ["--limit", str(limit)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["queries"] / r["qps"]


def py_seconds(idx, q, nprobe, batch, threads):
    t0 = time.perf_counter()
    idx.search(q, k=10, nprobe=nprobe, batch=batch, threads=threads)
    return time.perf_counter() - t0


def two_thread_qps(idx, q, nprobe, batch):
    halves = [q[: len(q) // 2], q[len(q) // 2:]]
    ts = [threading.Thread(target=idx.search, args=(h,), kwargs=dict(k=10, nprobe=nprobe, batch=batch))
          for h in halves]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return len(q) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--tool", default=os.path.join(os.path.dirname(__file__), "..", "build", "tools", "annann"))
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    q = annann.read_vectors(a.queries)
    if a.limit:
        q = q[: a.limit]
    tool_t, py_t, one_qps, two_qps = [], [], [], []
    with annann.open(a.index) as idx:
        idx.search(q[: a.batch], k=10, nprobe=a.nprobe, batch=a.batch, threads=a.threads)  # searcher pool warm
        for _ in range(a.reps):
            tool_t.append(tool_seconds(a.tool, a.index, a.queries, a.nprobe, a.batch, a.threads, len(q)))
            py_t.append(py_seconds(idx, q, a.nprobe, a.batch, a.threads))
            one_qps.append(len(q) / py_seconds(idx, q, a.nprobe, a.batch, 1))
            two_qps.append(two_thread_qps(idx, q, a.nprobe, a.batch))
    tm, pm = statistics.median(tool_t), statistics.median(py_t)
    o1, o2 = statistics.median(one_qps), statistics.median(two_qps)
    res = {"kind": "python_overhead", "index": a.index, "queries": len(q), "nprobe": a.nprobe, "batch": a.batch,
           "threads": a.threads, "reps": a.reps, "tool_s": tool_t, "python_s": py_t, "tool_median_s": tm,
           "python_median_s": pm, "overhead": pm / tm - 1, "overhead_target": 0.05,
           "one_thread_qps": o1, "two_thread_qps": two_qps and o2, "thread_speedup": o2 / o1,
           "thread_target": 1.7, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0],
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"batch search, nprobe {a.nprobe}, batch {a.batch}, threads {a.threads}, {len(q)} queries, "
              f"median of {a.reps} (load {res['load_avg']:.1f})")
        print(f"  C tool  {tm:8.3f} s   Python {pm:8.3f} s   overhead {100 * res['overhead']:+.1f}% (target < 5%)")
        print(f"  Python 1 thread {o1:8.0f} QPS, 2 threads {o2:8.0f} QPS: {res['thread_speedup']:.2f}x "
              f"(target >= 1.7x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

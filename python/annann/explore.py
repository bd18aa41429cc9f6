# SPDX-License-Identifier: MIT
"""The I/O-versus-recall explorer.

    python3 -m annann.explore --index DIR --queries Q --gt GT [--peers FILE.jsonl ...] --out curve.png

Sweeps nprobe (the partitions read per query) over the query set, one query
per search call, with no decoded-block cache: every block comes from storage
(O_DIRECT through io_uring, or pread), so the figures are those of a cold
read path. --drop-caches also drops the page cache before each setting (root
only; it covers the catalog, which is page-cached). For each setting it
records recall@k against the ground truth, the mean bytes read per query and
the latency percentiles, writes them as CSV (--csv, default: --out with
.csv), and draws recall@k against bytes/query and against p50 latency
(matplotlib). Peers' JSON lines (the ones bench/ writes for SPANN, DiskANN,
FAISS and annann runs: any line with recall_at_10, bytes_per_query and
p50_us) go on the same axes, one curve per system.

Exit status: 0, 1 for bad data or a failed search (one message naming the
file), 2 for bad usage.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np

import annann

FIELDS = ["system", "nprobe", "recall_at_k", "k", "queries", "bytes_per_query", "ios_per_query", "candidates",
          "p50_us", "p95_us", "p99_us", "mean_us", "qps", "page_cache_dropped"]


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def sweep(index, queries, gt, nprobes, k, drop, log=print):
    """One row per nprobe: the measured figures of a cold single-query pass."""
    rows = []
    with annann.open(index) as idx:
        name = f"annann ({idx.info()['router']}, {idx.info()['partitions']} partitions)"
        for p in nprobes:
            dropped = drop_caches() if drop else False
            t0 = time.perf_counter()
            ids, _ = idx.search(queries, k=k, nprobe=p, batch=1)
            wall = time.perf_counter() - t0
            st = idx.last_stats
            hits = [len(set(r[r >= 0]) & set(t[:k])) for r, t in zip(ids, gt)]
            valid = int(np.sum(np.asarray(gt)[:, :k] >= 0))  # a set smaller than k pads gt with -1
            lat = st["latency_ns"] / 1e3
            row = {"system": name, "nprobe": p, "recall_at_k": float(np.sum(hits)) / max(valid, 1),
                   "k": k, "queries": len(queries), "bytes_per_query": float(np.mean(st["bytes_read"])),
                   "ios_per_query": float(np.mean(st["io_requests"])),
                   "candidates": float(np.mean(st["candidates"])), "p50_us": float(np.percentile(lat, 50)),
                   "p95_us": float(np.percentile(lat, 95)), "p99_us": float(np.percentile(lat, 99)),
                   "mean_us": float(np.mean(lat)), "qps": len(queries) / wall, "page_cache_dropped": dropped}
            log(f"nprobe {p:5d}  recall@{k} {row['recall_at_k']:.4f}  {row['bytes_per_query'] / 1024:9.1f} KiB/query"
                f"  p50 {row['p50_us']:9.1f} us")
            rows.append(row)
    return rows


def read_peers(paths):
    """{system label: [(recall, bytes, p50_us), ...]} from JSON lines files."""
    curves = {}
    for path in paths:
        with open(path) as f:
            for no, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise annann.Error(f"{path}: line {no}: not JSON ({e.msg})") from None
                if not isinstance(r, dict) or not all(
                        isinstance(r.get(key), (int, float)) for key in ("recall_at_10", "bytes_per_query", "p50_us")):
                    continue
                label = r.get("variant") or r.get("system") or os.path.basename(path)
                if r.get("mode") and r["mode"] != "cold":
                    label += f" ({r['mode']})"
                curves.setdefault(label, []).append((r["recall_at_10"], r["bytes_per_query"], r["p50_us"]))
    return curves


def plot(rows, peers, out, k):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    own = sorted(rows, key=lambda r: r["nprobe"])
    label = own[0]["system"] if own else "annann"
    a.plot([r["bytes_per_query"] / 1024 for r in own], [r["recall_at_k"] for r in own], "o-", label=label, lw=2)
    b.plot([r["p50_us"] for r in own], [r["recall_at_k"] for r in own], "o-", label=label, lw=2)
    for r in own:
        a.annotate(str(r["nprobe"]), (r["bytes_per_query"] / 1024, r["recall_at_k"]), fontsize=7,
                   textcoords="offset points", xytext=(3, -9))
    for name, pts in sorted(peers.items()):
        pts = sorted(pts, key=lambda t: t[1])
        a.plot([p[1] / 1024 for p in pts], [p[0] for p in pts], ".--", label=name)
        pts = sorted(pts, key=lambda t: t[2])
        b.plot([p[2] for p in pts], [p[0] for p in pts], ".--", label=name)
    a.set_xscale("log")
    b.set_xscale("log")
    a.set_xlabel("KiB read per query (log)")
    b.set_xlabel("p50 latency, µs (log)")
    a.set_ylabel(f"recall@{k}" if k == 10 else f"recall@{k} (peers: recall@10)")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=7, loc="lower right")
    fig.suptitle("annann: recall against I/O and latency, cold storage (one query per call)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m annann.explore", description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="index directory")
    ap.add_argument("--queries", required=True, help="query vectors (fbin, u8bin, i8bin, fvecs, bvecs)")
    ap.add_argument("--gt", required=True, help="ground truth (big-ann layout or .ivecs)")
    ap.add_argument("--peers", nargs="*", default=[], help="JSON lines files of other systems (bench/results)")
    ap.add_argument("--out", required=True, help="the plot (.png, .svg, .pdf)")
    ap.add_argument("--csv", help="the table (default: --out with .csv)")
    ap.add_argument("--nprobe", default="1,2,4,8,16,32,64", help="settings to sweep (default 1,2,4,8,16,32,64)")
    ap.add_argument("--k", type=int, default=10, help="recall@k (default 10)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N queries")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before each setting (root)")
    args = ap.parse_args(argv)
    try:
        nprobes = [int(x) for x in args.nprobe.split(",") if x]
        if not nprobes or min(nprobes) < 1:
            raise ValueError
    except ValueError:
        ap.error("--nprobe: expected a comma-separated list of positive integers")
    if args.k < 1 or args.limit < 0:
        ap.error("--k must be >= 1 and --limit >= 0")
    csv_path = args.csv or os.path.splitext(args.out)[0] + ".csv"
    try:
        q = annann.read_vectors(args.queries)
        gt, _ = annann.read_ground_truth(args.gt)
        if args.limit:
            q = q[:args.limit]
        if len(gt) < len(q):
            raise annann.Error(f"{args.gt}: {len(gt)} rows of ground truth for {len(q)} queries in {args.queries}")
        if gt.shape[1] < args.k:
            raise annann.Error(f"{args.gt}: {gt.shape[1]} neighbours per query, recall@{args.k} needs {args.k}")
        peers = read_peers(args.peers)
        rows = sweep(args.index, q, gt[:len(q)], nprobes, args.k, args.drop_caches)
    except (annann.Error, OSError) as e:
        print(f"annann.explore: {e}", file=sys.stderr)
        return 1
    tmp = csv_path + f".tmp.{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    print(f"wrote {csv_path}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("annann.explore: matplotlib is not installed (Debian: python3-matplotlib); wrote the CSV only",
              file=sys.stderr)
        return 1
    ext = os.path.splitext(args.out)[1] or ".png"
    tmp = args.out + f".tmp.{os.getpid()}{ext}"
    plot(rows, peers, tmp, args.k)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

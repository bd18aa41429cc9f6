#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bytes_sweep.py: cold nprobe sweeps of codes indexes, bytes split by round (issue 12).

Every point is its own `annann search` process after `sync; echo 3 > /proc/sys/vm/drop_caches`
(O_DIRECT reads, batch 1, one thread); the settings are interleaved, one repetition runs each
(index, nprobe) once. Prints, per index, the sweep and the figures at the target recall
(linear interpolation between the two points around it): KiB per query, round 1 (heads) and
round 2 (exact pages) KiB and reads, rows estimated, re-ranks, the heads' page padding share
(round 1 bytes against the unpadded head bytes of the rows estimated, from `annann info`'s
heads figure), p50 (median over the repetitions).

  bytes_sweep.py --annann A --queries Q --gt G --index label=DIR:np1,np2,.. [--index ..]
                 [--reps 3] [--target 0.9] [--out results.jsonl]
"""
import argparse
import json
import re
import statistics
import subprocess
import time


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def head_bytes_per_vector(annann, idx):
    out = subprocess.run([annann, "info", "--index", idx], check=True, capture_output=True, text=True).stdout
    m = re.search(r"heads [0-9.]+ MiB \(([0-9.]+) bytes per vector\)", out)
    return float(m.group(1)) if m else float("nan")


def interp(pts, target, key):
    pts = sorted(pts, key=lambda p: p["recall"])
    for a, b in zip(pts, pts[1:]):
        if a["recall"] <= target <= b["recall"]:
            t = 0.0 if b["recall"] == a["recall"] else (target - a["recall"]) / (b["recall"] - a["recall"])
            return a[key] + t * (b[key] - a[key])
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--annann", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--index", action="append", required=True, help="label=DIR:np1,np2,...")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--extra", default="", help="extra search arguments for every run")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    specs = []
    for s in a.index:
        label, rest = s.split("=", 1)
        d, nps = rest.rsplit(":", 1)
        specs.append((label, d, [int(x) for x in nps.split(",")]))
    hb = {label: head_bytes_per_vector(a.annann, d) for label, d, _ in specs}
    runs = {}
    out = open(a.out, "a") if a.out else None
    for rep in range(a.reps):
        for label, d, nps in specs:
            for np_ in nps:
                drop_caches()
                load = open("/proc/loadavg").read().split()[:3]
                cmd = [a.annann, "search", "--index", d, "--queries", a.queries, "--gt", a.gt, "--k", "10",
                       "--batch", "1", "--nprobe", str(np_), "--json"] + a.extra.split()
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                rec = {"label": label, "index": d, "nprobe": np_, "rep": rep, "load": load,
                       "t": time.strftime("%H:%M:%S", time.gmtime()), "result": r}
                if out:
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
                runs.setdefault((label, np_), []).append(r)
    for label, d, nps in specs:
        pts = []
        print(f"\n{label} ({d}; heads {hb[label]:.1f} B/vector unpadded)")
        print("| nprobe | recall@10 | KiB/query | round 1 KiB | reads | round 2 KiB | reads | estimated | "
              "re-ranked | head padding | p50 us (runs) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for np_ in nps:
            rs = runs[(label, np_)]
            r = rs[0]
            c = r["codes"]
            p50s = [x["latency_us"]["p50"] for x in rs]
            pad = 1.0 - c["estimated"] * hb[label] / c["bytes_round1"] if c["bytes_round1"] else float("nan")
            p = {"recall": r["recall_at_k"], "kib": r["bytes_read"] / 1024, "r1": c["bytes_round1"] / 1024,
                 "io1": c["ios_round1"], "r2": c["bytes_round2"] / 1024, "io2": c["ios_round2"],
                 "est": c["estimated"], "rr": c["reranked"], "pad": pad, "p50": statistics.median(p50s)}
            pts.append(p)
            print(f"| {np_} | {p['recall']:.4f} | {p['kib']:.0f} | {p['r1']:.0f} | {p['io1']:.1f} | {p['r2']:.0f} | "
                  f"{p['io2']:.1f} | {p['est']:.0f} | {p['rr']:.1f} | {100 * pad:.1f}% | {p['p50']:.0f} "
                  f"({', '.join(f'{x:.0f}' for x in p50s)}) |")
        t = a.target
        print(f"at recall {t}: KiB {interp(pts, t, 'kib'):.0f} = round 1 {interp(pts, t, 'r1'):.0f} "
              f"({interp(pts, t, 'io1'):.1f} reads) + round 2 {interp(pts, t, 'r2'):.0f} "
              f"({interp(pts, t, 'io2'):.1f} reads); estimated {interp(pts, t, 'est'):.0f}, re-ranked "
              f"{interp(pts, t, 'rr'):.1f}, head padding {100 * interp(pts, t, 'pad'):.1f}%, "
              f"p50 {interp(pts, t, 'p50'):.0f} us, nprobe {interp([dict(q, n=n) for q, n in zip(pts, nps)], t, 'n'):.1f}")


if __name__ == "__main__":
    main()

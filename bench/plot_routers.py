#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/plot_routers.py: tables and plot of bench/routers_compare.sh, and the
training history of an nlsh/joint/soft index (docs/ROUTER_NLSH.md).

  plot_routers.py history INDEX [--jsonl --set S --parts M --router R]
      prints the per-round history (phase, round, cut, balance, accuracy,
      labels changed, loss, seconds) kept in the index's router blob. The
      blob is found in catalog.lmdb/data.mdb by its magic (LMDB keeps a
      large value contiguous in overflow pages); the newest copy whose
      layout checks out is used. The checksum is not verified (no xxhash).
  plot_routers.py table RESULTS.jsonl...
      markdown table: per set, parts and router, candidates and KB read per
      query at recall@10 0.85 / 0.90 / 0.95 (linear interpolation between
      sweep points; "<=x" when nprobe 1 already exceeds the target, "-" when
      the sweep never reaches it), build time and router RAM.
  plot_routers.py history-table RESULTS.jsonl...
      the history records of the results as markdown tables.
  plot_routers.py phases BUILD.log...
      seconds per build phase (sample, knn, partition, nlsh, joint, route,
      pack ...) from the build logs routers_compare.sh keeps.
  plot_routers.py plot OUT.png RESULTS.jsonl...
      recall@10 against candidates per query, one panel per (set, parts).
  plot_routers.py shift-table RESULTS.jsonl...
      issue 12 item 5: per set, parts, query set (the search records'
      "queries", "plain" when absent) and router: nprobe, partitions probed,
      candidates and KiB read per query at recall@10 0.9 (interpolated as in
      table), bytes against k-means' on the same queries (the router labelled
      kmeans13, i.e. --balance 1.3, else kmeans), router RAM in bytes
      per vector, build seconds and the router's training seconds (the build
      phases other than sample, route and pack).
  plot_routers.py shift-plot OUT.png RESULTS.jsonl...
      recall@10 against KiB read per query, one panel per (set, query set).
"""
import json
import math
import os
import struct
import sys

MAGIC = b"\x89NLSH\r\n\x1a"
PHASES = ["partition", "joint", "soft"]
ROUTERS = ["kmeans", "nlsh", "joint", "soft", "annann"]
TARGETS = [0.85, 0.90, 0.95]
SET_SIZE = {"syn1m": 1000000, "real1m": 1000000, "fmnist": 60000}
NOT_TRAINING = ("sample", "route", "pack")
REFS = ("kmeans13", "kmeans")  # shift-table's reference: k-means with --balance 1.3 (label kmeans13), else plain


def read_history(index):
    path = os.path.join(index, "catalog.lmdb", "data.mdb")
    with open(path, "rb") as f:
        data = f.read()
    best = None
    pos = data.find(MAGIC)
    while pos >= 0:
        try:
            h = parse_blob(data, pos)
            if h is not None:
                best = h
        except (struct.error, IndexError):
            pass
        pos = data.find(MAGIC, pos + 1)
    if best is None:
        raise SystemExit("%s: no nlsh router blob found" % path)
    return best


def parse_blob(data, pos):
    hdr = data[pos:pos + 64]
    if len(hdr) < 64 or struct.unpack_from("<I", hdr, 12)[0] != 64:
        return None
    kind, d, m, metric, G, H = struct.unpack_from("<6I", hdr, 16)
    total = struct.unpack_from("<Q", hdr, 48)[0]
    if H > 4096 or total > len(data) - pos or total < 64 + 4 * d + 56 * H + 8:
        return None
    blob = data[pos:pos + total]
    off = total - 8 - 56 * H
    rounds = []
    for i in range(H):
        ph, rd = struct.unpack_from("<II", blob, off + 56 * i)
        vals = struct.unpack_from("<6d", blob, off + 56 * i + 8)
        if ph > 2 or not all(math.isfinite(v) for v in vals):
            return None
        rounds.append(dict(zip(["phase", "round", "cut_frac", "balance", "accuracy", "changed", "loss",
                                "seconds"], [PHASES[ph], rd] + list(vals))))
    return {"kind_id": kind, "d": d, "parts": m, "groups": G, "rounds": rounds}


def cmd_history(args):
    index = args[0]
    opts = dict(zip(args[1::2], args[2::2])) if "--jsonl" not in args else {}
    h = read_history(index)
    if "--jsonl" in args:
        rest = [a for a in args[1:] if a != "--jsonl"]
        opts = dict(zip(rest[0::2], rest[1::2]))
        for r in h["rounds"]:
            o = {"kind": "history", "set": opts.get("--set"), "parts": int(opts.get("--parts", h["parts"])),
                 "router": opts.get("--router"), "groups": h["groups"]}
            o.update(r)
            print(json.dumps(o))
        return
    print("%s: %d parts, %s classifier" % (index, h["parts"],
                                          "flat" if not h["groups"] else "two-level, %d groups" % h["groups"]))
    print("%-10s %5s %8s %8s %9s %8s %7s %7s" % ("phase", "round", "cut", "balance", "accuracy", "changed",
                                               "loss", "secs"))
    for r in h["rounds"]:
        print("%-10s %5d %8.4f %8.3f %9.4f %8.4f %7.3f %7.1f" % (r["phase"], r["round"], r["cut_frac"],
                                                               r["balance"], r["accuracy"], r["changed"],
                                                               r["loss"], r["seconds"]))


def load(files):
    builds, sweeps, hist = {}, {}, {}
    for fn in files:
        with open(fn) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                o = json.loads(line)
                key = (o["set"], o["parts"], o["router"])
                if o["kind"] == "build":
                    builds[key] = o  # the last build of a key wins ...
                    sweeps[key] = []  # ... with its own sweep
                    hist[key] = []
                elif o["kind"] == "search":
                    sweeps.setdefault(key, []).append(o)
                elif o["kind"] == "history":
                    hist.setdefault(key, []).append(o)
    return builds, sweeps, hist


def at_recall(sweep, target, field):
    """(value, flag): field interpolated at recall target along the sweep
    (sorted by nprobe); flag "<=" when the first point already exceeds it,
    None when reached by interpolation, "-" when never reached."""
    pts = sorted(sweep, key=lambda o: o["nprobe"])
    if not pts:
        return None, "-"
    if pts[0]["recall_at_k"] >= target:
        return pts[0][field], "<="
    for a, b in zip(pts, pts[1:]):
        if a["recall_at_k"] < target <= b["recall_at_k"]:
            t = (target - a["recall_at_k"]) / (b["recall_at_k"] - a["recall_at_k"])
            return a[field] + t * (b[field] - a[field]), None
    return None, "-"


def fmt(v, flag, scale=1.0, nd=0):
    if v is None:
        return "-"
    s = ("%." + str(nd) + "f") % (v / scale)
    return ("<=" + s) if flag == "<=" else s


def cmd_table(files):
    builds, sweeps, _ = load(files)
    keys = sorted(builds, key=lambda k: (k[0], k[1], ROUTERS.index(k[2]) if k[2] in ROUTERS else 9))
    print("| set | parts | router | cand @0.85 | cand @0.90 | cand @0.95 | KB @0.85 | KB @0.90 | KB @0.95 | "
          "max recall (nprobe) | largest part / mean | build s | router RAM KiB | vs kmeans cand @0.90 / @0.95 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in keys:
        b, sw = builds[k], sweeps.get(k, [])
        c = [at_recall(sw, t, "candidates") for t in TARGETS]
        kb = [at_recall(sw, t, "bytes_read") for t in TARGETS]
        top = max(sw, key=lambda o: o["recall_at_k"]) if sw else None
        ref = sweeps.get((k[0], k[1], "kmeans"), [])
        ratios = []
        for t in TARGETS[1:]:
            v, f = at_recall(sw, t, "candidates")
            rv, rf = at_recall(ref, t, "candidates")
            ratios.append("%.2f" % (v / rv) if v is not None and rv is not None and f is None and rf is None
                          else "-")
        n = SET_SIZE.get(k[0])
        print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f | %.0f | %s |" % (
            k[0], k[1], k[2], *[fmt(v, f) for v, f in c], *[fmt(v, f, 1024.0) for v, f in kb],
            "%.4f (%d)" % (top["recall_at_k"], top["nprobe"]) if top else "-",
            "%.2f" % (b["largest_partition"] * k[1] / n) if n else "-", b["build_s"],
            b["router_ram_bytes"] / 1024.0, " / ".join(ratios)))


def cmd_history_table(files):
    _, _, hist = load(files)
    for k in sorted(hist):
        if not hist[k]:
            continue
        print("\n%s, %d parts, %s:\n" % k)
        print("| phase | round | cut | balance | accuracy | changed | loss | s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in hist[k]:
            print("| %s | %d | %.4f | %.3f | %.4f | %.4f | %.3f | %.1f |" % (
                r["phase"], r["round"], r["cut_frac"], r["balance"], r["accuracy"], r["changed"], r["loss"],
                r["seconds"]))


def cmd_phases(logs):
    """Seconds per build phase from `annann build` progress logs
    (routers_compare.sh keeps them as BENCH_DIR/SET_PARTS_ROUTER.build.log)."""
    print("| build log | phases (s) |")
    print("|---|---|")
    for fn in logs:
        ph = []
        with open(fn) as f:
            for line in f:
                if ": done in " in line:
                    name, t = line.strip().split(": done in ")
                    if "." in name or name in ("joint", "soft"):  # per-round records: see history
                        continue
                    ph.append("%s %s" % (name, t.rstrip("s")))
        print("| %s | %s |" % (os.path.basename(fn).replace(".build.log", ""), ", ".join(ph)))


def cmd_plot(out, files):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    _, sweeps, _ = load(files)
    panels = sorted({(k[0], k[1]) for k in sweeps if sweeps[k]})
    if not panels:
        raise SystemExit("no search results")
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    styles = {"kmeans": ("k", "o"), "nlsh": ("tab:blue", "s"), "joint": ("tab:green", "^"),
              "soft": ("tab:red", "v"), "annann": ("tab:purple", "D")}
    for ax, (s, m) in zip(axes.flat, panels):
        for r in ROUTERS:
            sw = sorted(sweeps.get((s, m, r), []), key=lambda o: o["nprobe"])
            if not sw:
                continue
            c, mk = styles[r]
            ax.plot([o["candidates"] for o in sw], [o["recall_at_k"] for o in sw], color=c, marker=mk,
                    markersize=3, linewidth=1.2, label=r)
        for t in TARGETS:
            ax.axhline(t, color="0.8", linewidth=0.6, zorder=0)
        ax.set_xscale("log")
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), 1.005)
        ax.set_title("%s, %d parts" % (s, m), fontsize=10)
        ax.set_xlabel("candidates scanned per query")
        ax.set_ylabel("recall@10")
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print("wrote %s (%d bytes)" % (out, os.path.getsize(out)))


def load_shift(files):
    builds, sweeps = {}, {}
    for fn in files:
        with open(fn) as f:
            for line in f:
                if not line.strip():
                    continue
                o = json.loads(line)
                if o["kind"] == "build":
                    builds[(o["set"], o["parts"], o["router"])] = o
                elif o["kind"] == "search":
                    key = (o["set"], o["parts"], o.get("queries", "plain"), o["router"])
                    sweeps.setdefault(key, []).append(o)
    return builds, sweeps


def router_order(r):
    base = r.rstrip("0123456789").split("+")[0]
    for i, name in enumerate(ROUTERS):
        if r.startswith(name):
            return (i, r)
    return (len(ROUTERS), base)


def cmd_shift_table(files):
    builds, sweeps = load_shift(files)
    t = 0.90
    print("| set | parts | queries | router | nprobe @0.9 | candidates @0.9 | KiB/query @0.9 | KiB vs kmeans | "
          "max recall (nprobe) | router RAM B/vector | build s | training s |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in sorted(sweeps, key=lambda k: (k[0], k[1], k[2], router_order(k[3]))):
        sw = sweeps[k]
        b = builds.get((k[0], k[1], k[3]), {})
        npb, fn = at_recall(sw, t, "nprobe")
        cand, fc = at_recall(sw, t, "candidates")
        kb, fk = at_recall(sw, t, "bytes_read")
        refk = next(((k[0], k[1], k[2], r) for r in REFS if (k[0], k[1], k[2], r) in sweeps), None)
        ref, fr = at_recall(sweeps.get(refk, []), t, "bytes_read")
        ratio = "%.2f" % (kb / ref) if kb is not None and ref is not None and fk is None and fr is None else "-"
        top = max(sw, key=lambda o: o["recall_at_k"])
        n = SET_SIZE.get(k[0])
        train = sum(v for ph, v in b.get("phases_s", {}).items() if ph not in NOT_TRAINING)
        print("| %s | %d | %s | %s | %s | %s | %s | %s | %.3f (%d) | %s | %s | %s |" % (
            k[0], k[1], k[2], k[3], fmt(npb, fn, 1.0, 1), fmt(cand, fc), fmt(kb, fk, 1024.0), ratio,
            top["recall_at_k"], top["nprobe"],
            "%.2f" % (b["router_ram_bytes"] / n) if b and n else "-",
            "%.0f" % b["build_s"] if b else "-", "%.0f" % train if b.get("phases_s") else "-"))


def cmd_shift_plot(out, files):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    _, sweeps = load_shift(files)
    panels = sorted({(k[0], k[1], k[2]) for k in sweeps})
    if not panels:
        raise SystemExit("no search results")
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    colors = {"kmeans": "k", "nlsh": "tab:blue", "joint": "tab:green", "soft": "tab:red", "annann": "tab:purple"}
    markers = "osD^v<>ph*"
    for ax, (s, m, q) in zip(axes.flat, panels):
        rs = sorted({k[3] for k in sweeps if k[:3] == (s, m, q)}, key=router_order)
        for i, r in enumerate(rs):
            sw = sorted(sweeps[(s, m, q, r)], key=lambda o: o["nprobe"])
            c = next((v for name, v in colors.items() if r.startswith(name)), "tab:orange")
            ls = "-" if r in colors else "--"
            ax.plot([o["bytes_read"] / 1024.0 for o in sw], [o["recall_at_k"] for o in sw], color=c, linestyle=ls,
                    marker=markers[i % len(markers)], markersize=3, linewidth=1.2, label=r)
        ax.axhline(0.9, color="0.7", linewidth=0.6, zorder=0)
        ax.set_xscale("log")
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), 1.005)
        ax.set_title("%s, %d parts, %s queries" % (s, m, q), fontsize=10)
        ax.set_xlabel("KiB read per query (batch 1)")
        ax.set_ylabel("recall@10")
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print("wrote %s (%d bytes)" % (out, os.path.getsize(out)))


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "history":
        cmd_history(args)
    elif cmd == "table":
        cmd_table(args)
    elif cmd == "history-table":
        cmd_history_table(args)
    elif cmd == "phases":
        cmd_phases(args)
    elif cmd == "plot":
        cmd_plot(args[0], args[1:])
    elif cmd == "shift-table":
        cmd_shift_table(args)
    elif cmd == "shift-plot":
        cmd_shift_plot(args[0], args[1:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

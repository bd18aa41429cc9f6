#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/plot_annann.py: plots and tabulates bench/annann_vs_static.sh output.
#   bench/plot_annann.py RESULTS.jsonl OUT.png
# Three panels, recall@10 against clusters read (C), candidates scanned and
# KiB read per query, one line per configuration (static; dynamic with F = 10
# and F = 1; variants). Prints markdown tables (builds, then the sweep) on
# stdout for docs/ROUTER_ANNANN.md: builds, then recall@10 / KiB read per
# query for each configuration and C.
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, png = sys.argv[1], sys.argv[2]
    builds, runs = [], {}
    for line in open(src):
        d = json.loads(line)
        if d["kind"] == "build":
            builds.append(d)
        else:
            name = d["label"] if d["label"] == "static" else "%s F=%d" % (d["label"], d["F"])
            runs.setdefault(name, []).append(d)
    set_ = builds[0]["set"] if builds else "?"

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    for name, rs in runs.items():
        rs.sort(key=lambda r: r["nprobe"])
        style = "-o" if name.startswith(("static", "dynamic")) else "--."
        rec = [r["recall_at_k"] for r in rs]
        ax[0].plot([r["nprobe"] for r in rs], rec, style, label=name)
        ax[1].plot([r["candidates"] for r in rs], rec, style, label=name)
        ax[2].plot([r["bytes_read"] / 1024 for r in rs], rec, style, label=name)
    for a, xl in zip(ax, ["clusters read C", "candidates scanned / query", "KiB read / query"]):
        a.set_xscale("log")
        a.set_xlabel(xl)
        a.set_ylabel("recall@10")
        a.grid(True, which="both", alpha=0.3)
    ax[0].legend(fontsize=8)
    k = builds[0]["partitions"] if builds else "?"
    fig.suptitle("%s: dynamic (annann router) vs static (kmeans router), K = %s" % (set_, k))
    fig.tight_layout()
    fig.savefig(png, dpi=90)

    print("| config | train s | build s | router RAM KiB | largest | empty | args |")
    print("|---|---|---|---|---|---|---|")
    for b in builds:
        print("| %s | %.1f | %.1f | %.0f | %d | %d | %s |" % (
            b["label"], b["train_s"], b["build_wall_s"] or 0, b["router_ram_bytes"] / 1024,
            b["largest_partition"], b["empty_partitions"], b["args"] or "defaults"))
    print()
    # recall@10 / KiB read per query, one row per configuration
    cs = sorted({r["nprobe"] for rs in runs.values() for r in rs})
    sizes = {b["label"]: "%d / %d" % (b["largest_partition"], b["empty_partitions"]) for b in builds}
    print("| config | largest / empty clusters | " + " | ".join("C=%d" % c for c in cs) + " |")
    print("|---|---|" + "---|" * len(cs))
    for n, rs in runs.items():
        cells = []
        for c in cs:
            r = next((r for r in rs if r["nprobe"] == c), None)
            cells.append("%.4f / %.0f" % (r["recall_at_k"], r["bytes_read"] / 1024) if r else "")
        print("| %s | %s | %s |" % (n, sizes.get(n.split(" F=")[0], ""), " | ".join(cells)))

if __name__ == "__main__":
    main()

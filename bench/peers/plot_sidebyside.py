#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/plot_sidebyside.py: one figure per data set from cold_side_by_side.py's JSONL,
# annann and both disk peers on the same axes.
#   plot_sidebyside.py --title "Fashion-MNIST" --out docs/plots/sidebyside_fmnist.png RUN.jsonl [RUN2.jsonl ...]
# Left: recall@10 against KiB read per query (log x). Right: recall@10 against latency (log x):
# p50 for annann and SPANN, the mean for DiskANN (search_disk_index prints no p50; its points are
# drawn hollow and the legend says "mean"). One line per variant (system + index), its points
# the sweep settings. A dotted horizontal line marks the target recall. Several files may be
# given (e.g. a run and its continuation); a variant present in two files keeps the last file's
# points.
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, ScalarFormatter  # noqa: E402

COLOURS = {"annann": "tab:blue", "spann": "tab:orange", "diskann": "tab:green"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def load(paths):
    variants = {}
    for path in paths:
        seen = {}
        for line in open(path):
            d = json.loads(line)
            if d.get("kind") == "at_target" or "recall_at_10" not in d:
                continue
            seen.setdefault(d["variant"], []).append(d)
        variants.update(seen)
    return variants


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--title", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    variants = load(a.runs)
    if not variants:
        raise SystemExit("%s: no sweep points (records with recall_at_10)" % ", ".join(a.runs))
    fig, (axb, axl) = plt.subplots(1, 2, figsize=(12, 4.8))
    nth = {}
    for name, pts in sorted(variants.items()):
        pts.sort(key=lambda d: d["recall_at_10"])
        system = pts[0]["system"]
        m = MARKERS[nth.get(system, 0) % len(MARKERS)]
        nth[system] = nth.get(system, 0) + 1
        c = COLOURS.get(system, "black")
        ram = pts[0].get("index_ram_bytes_per_vector")
        disk = pts[0].get("disk_over_raw")
        label = name
        if ram is not None and disk is not None:
            label += " (%.1f B/vec RAM, %.2fx disk)" % (ram, disk)
        rec = [d["recall_at_10"] for d in pts]
        kib = [d["bytes_per_query"] / 1024 for d in pts]
        mean_only = "no p50" in pts[0].get("latency_kind", "")
        lat = [d["mean_us"] if mean_only else d["p50_us"] for d in pts]
        axb.plot(kib, rec, marker=m, color=c, label=label)
        axl.plot(lat, rec, marker=m, color=c, mfc="none" if mean_only else c,
                 label=name + (" (mean)" if mean_only else " (p50)"))
    for ax, xl in ((axb, "KiB read per query (cold, O_DIRECT)"), (axl, "latency per query, us (batch 1, 1 thread)")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        # a range within one decade has one major tick or none: label the
        # minor ones too, at 2, 3, 5 (and 10, 20 ... in each decade)
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: "%g" % v))
        ax.axhline(a.target, ls=":", color="grey")
        ax.set_xlabel(xl)
        ax.set_ylabel("recall@10")
        ax.grid(True, which="both", alpha=0.3)
    axb.legend(fontsize=7, loc="best")
    axl.legend(fontsize=7, loc="best")
    fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("wrote %s (%d variants)" % (a.out, len(variants)))


if __name__ == "__main__":
    main()

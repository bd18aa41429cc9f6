#!/usr/bin/python3
"""scale_project.py: docs/SCALE.md's projections from the per-vector and per-distance costs
measured at 1M and 10M (docs/BENCHMARKS.md "Scale"). Every input below is a measurement on the
2-core VM of docs/BENCHMARKS.md "Machine" under the load of 2026-12-06 06:37-06:58 UTC (load
average 14-16, the build got 0.27 of a core on average); every output is a projection.

    /usr/bin/python3 bench/scale_project.py
"""
import math

# ---- measured: the 10M build (r10m, 10,000 partitions, sample 2.56M, C = 100, 20 iterations)
M = dict(
    sample_us=34.3e6 / 10e6,            # sample pass, wall us per input vector
    coarse_dps=2.56e6 * 100 * 20 / 154.8,  # k-means coarse level, 128-d distances per second
    fine_dps=2.56e6 * 100 * 20 / 252.6,    # fine level (100 fine per coarse on average)
    refine_dps=3 * 2.56e6 * 900 / 178.0,   # 3 refinement steps, 9 sqrt(K) per point (185 s - 7 s graph)
    route_dps=10e6 * 900 / 258.0,          # route: 9 sqrt(K) distances per vector
    pack_us=350.2e6 / 10e6,                # pack (RaBitQ 2-bit codes blocks), wall us per vector
    graph_s_10k=6.8,                       # HNSW over 10k centroids (bench_assign, 2 threads)
    router_b_per_part_u8=4.20 * 2**20 / 10000,  # info: 4.20 MiB for 10k partitions (u8 128-d + links)
    link_b=4.20 * 2**20 / 10000 - 128,     # graph links and header per centroid
    disk_ratio_u8=1.383,                   # info: on disk / raw, 2-bit codes, 128-d u8
    head_b=44.6,                           # codes head bytes per vector (128-d, 2 bits)
    cat_open_ms_10k=11.65,                 # bench_catalog_open, 10k partitions (1008 pages)
    cores=0.27,                            # /usr/bin/time -v: the 10M build got 27% of one core on average
)

def plan(n, d, elem, per_part=1000, sample_per_part=40, probes=8, iters=20):
    K = n // per_part
    C = math.ceil(math.sqrt(K))
    S = sample_per_part * K
    dscale = d / 128  # distance cost relative to 128-d
    t = {}
    t['sample'] = n * M['sample_us'] / 1e6 * max(1, elem * d / 128)  # conversion grows with bytes
    t['kmeans coarse'] = S * C * iters * dscale / M['coarse_dps']
    t['kmeans fine'] = S * (K / C) * iters * dscale / M['fine_dps']
    t['refine'] = 3 * S * (C + probes * K / C) * dscale / M['refine_dps']
    t['graph'] = M['graph_s_10k'] * (K / 1e4) * math.log(K) / math.log(1e4) * dscale
    t['route'] = n * (C + probes * K / C) * dscale / M['route_dps']
    t['pack'] = n * M['pack_us'] / 1e6 * max(1, elem * d / 128)
    vec_b = d * elem
    router_graph = K * (vec_b + M['link_b'])
    router_codes2 = K * (d * 2 / 8 + 10)
    rows = vec_b * (M['disk_ratio_u8'] - M['head_b'] / 128)  # page-aligned rows (3% padding at 128-d u8)
    head = M['head_b'] - 32 + d * 2 / 8
    disk = n * (rows + head)
    spill = n * (vec_b + 8)
    return dict(K=K, C=C, S=S, times=t, total=sum(t.values()), router_graph=router_graph,
                router_codes2=router_codes2, dir_ram=K * 40, disk=disk, raw=n * vec_b, spill=spill,
                sample_ram=S * d * 4, route_dist=C + probes * K / C)

def fmt_s(s):
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s:.0f} s"

for name, n, d, elem in (("100M x 128 u8", 10**8, 128, 1), ("1B x 128 u8", 10**9, 128, 1),
                         ("1B x 96 f32 (DEEP)", 10**9, 96, 4), ("10B x 128 u8", 10**10, 128, 1)):
    p = plan(n, d, elem)
    print(f"## {name}: {p['K']:,} partitions, C {p['C']}, sample {p['S']:,} ({p['sample_ram'] / 1e9:.1f} GB as floats), "
          f"{p['route_dist']:.0f} distances per routed vector")
    for k, v in p['times'].items():
        print(f"  {k:14s} {fmt_s(v):>10s}  {v * M['cores'] / 3600:8.2f} core-h")
    print(f"  {'total':14s} {fmt_s(p['total']):>10s}  {p['total'] * M['cores'] / 3600:8.2f} core-h"
          f"  (wall: this box at its measured load; core-h: wall x {M['cores']} cores)")
    print(f"  router RAM: graph {p['router_graph'] / 1e9:.2f} GB, 2-bit compact {p['router_codes2'] / 1e9:.3f} GB; "
          f"directory {p['dir_ram'] / 1e9:.2f} GB")
    print(f"  disk: raw {p['raw'] / 1e9:.0f} GB, index {p['disk'] / 1e9:.0f} GB ({p['disk'] / p['raw']:.2f}x), "
          f"spill {p['spill'] / 1e9:.0f} GB")

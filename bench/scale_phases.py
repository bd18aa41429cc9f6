#!/usr/bin/python3
"""bench/scale_phases.py PREFIX: per-phase seconds and bytes from mon.sh's PREFIX.err (timestamped progress
lines 'PHASE: done in Xs') and PREFIX.io (/proc/PID/io samples every 2 s). Bytes per phase are the
differences of the samples nearest to the phase's end and start (2 s resolution)."""
import re, sys, bisect
pre = sys.argv[1]
ends = []
for l in open(pre + '.err'):
    m = re.match(r'(\d+\.\d+) (\S+): done in ([\d.]+)s', l)
    if m:
        ends.append((m.group(2), float(m.group(1)), float(m.group(3))))
io = []
for l in open(pre + '.io'):
    p = l.split()
    t = int(p[0]); d = {}
    for kv in p[1:]:
        if '=' in kv:
            k, v = kv.split(':=')
            d[k] = int(v)
    m = re.search(r'VmRSS:\s+(\d+)', l)
    d['rss'] = int(m.group(1)) * 1024 if m else 0
    io.append((t, d))
ts = [t for t, _ in io]
def at(t):
    i = min(max(bisect.bisect_left(ts, t), 0), len(io) - 1)
    return io[i][1]
print('| phase | seconds | read (rchar) MB | of it from disk (read_bytes) MB | written (wchar) MB | to disk (write_bytes) MB | peak RSS MB |')
print('| --- | --- | --- | --- | --- | --- | --- |')
for name, end, dur in ends:
    a, b = at(end - dur), at(end)
    rss = max([d['rss'] for t, d in io if end - dur <= t <= end] or [0])
    print(f"| {name} | {dur:.1f} | {(b['rchar']-a['rchar'])/1e6:.0f} | {(b['read_bytes']-a['read_bytes'])/1e6:.0f} | "
          f"{(b['wchar']-a['wchar'])/1e6:.0f} | {(b['write_bytes']-a['write_bytes'])/1e6:.0f} | {rss/1e6:.0f} |")

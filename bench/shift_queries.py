#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/shift_queries.py: a shifted query set for image data (issue 12 item 5).

  shift_queries.py IN.u8bin OUT.u8bin [--side 28] [--max 2] [--seed 1] [--limit N]

Translates every query image (side x side, u8, row-major; Fashion-MNIST is
28 x 28) by (dx, dy), each drawn uniformly from {-max..-1, 1..max} with the
given seed, so every image moves by 1.4 to 2.8 pixels (max 2) and none stays
in place. Pixels shifted in are 0, Fashion-MNIST's background. The images
stay images of the same kind (a garment, centred a little off), but their
pixel vectors lie off the base's distribution: the base's images are all
centred the same way, so a router trained on the base has never seen the
query's position. Writes to OUT.tmp and renames. Exact ground truth comes
from `annann gt` afterwards.
"""
import argparse
import os
import struct
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--side", type=int, default=28)
    ap.add_argument("--max", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    with open(a.inp, "rb") as f:
        hdr = f.read(8)
        if len(hdr) != 8:
            sys.exit("%s: at byte 0: expected an 8-byte u8bin header" % a.inp)
        n, d = struct.unpack("<II", hdr)
        if d != a.side * a.side:
            sys.exit("%s: at byte 4: dimension %d, expected %d (--side %d)" % (a.inp, d, a.side * a.side, a.side))
        if a.limit:
            n = min(n, a.limit)
        x = np.frombuffer(f.read(n * d), dtype=np.uint8)
        if x.size != n * d:
            sys.exit("%s: at byte %d: file ends, expected %d rows of %d bytes" % (a.inp, 8 + x.size, n, d))
    if a.max < 1 or a.max >= a.side:
        sys.exit("--max must be in 1..side-1")
    x = x.reshape(n, a.side, a.side)
    rng = np.random.default_rng(a.seed)
    steps = np.array([s for s in range(-a.max, a.max + 1) if s != 0])
    shifts = rng.choice(steps, size=(n, 2))
    y = np.zeros_like(x)
    s = a.side
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        ys, yd = (slice(0, s - dy), slice(dy, s)) if dy > 0 else (slice(-dy, s), slice(0, s + dy))
        xs, xd = (slice(0, s - dx), slice(dx, s)) if dx > 0 else (slice(-dx, s), slice(0, s + dx))
        y[i, yd, xd] = x[i, ys, xs]
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<II", n, d))
        f.write(y.reshape(n, d).tobytes())
    os.rename(tmp, a.out)
    print("wrote %d shifted images to %s" % (n, a.out), file=sys.stderr)


if __name__ == "__main__":
    main()

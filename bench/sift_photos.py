#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/sift_photos.py: a real SIFT set from the photographs Debian ships as desktop backgrounds,
# the closest this project can get to issue 12's real set (347,255 x 128 u8 OpenCV descriptors,
# queries from other photographs than the base) without downloading anything.
#
#   apt-get install python3-opencv gnome-backgrounds plasma-workspace-wallpapers \
#       mate-backgrounds ukui-wallpapers lomiri-wallpapers-20.04
#   /usr/bin/python3 bench/sift_photos.py --out /work/data/sift-photos
#
# Images: every JPEG, PNG or WebP of at least --min-kib under the background directories. One
# image per theme (the largest file: Plasma ships each wallpaper at several resolutions, GNOME a
# light and a dark variant, MATE some at several sizes), so no two images of a group show the same picture. Themes are split
# by a hash of their name: --query-share of them give the queries, the rest the base, so every
# query comes from a photograph the base never saw. Descriptors: OpenCV SIFT (4.6, its defaults)
# on the grey image scaled to at most --max-side pixels, rounded to u8 as OpenCV's descriptors
# are (0..255). Exact duplicates are dropped. Writes base.u8bin and query.u8bin (annann's bin
# layout: u32 n, u32 dim, rows), then images.txt naming each image's split and descriptor count.
import argparse
import hashlib
import os
import re
import sys

import cv2
import numpy as np

ROOTS = ['/usr/share/backgrounds', '/usr/share/wallpapers']
EXTS = ('.jpg', '.jpeg', '.png', '.webp')


def theme_of(path):
	"""The picture an image file shows: Plasma's wallpaper directory, else the file name without
	GNOME's -l / -d (light, dark) or -day / -night suffixes."""
	parts = path.split('/')
	if '/usr/share/wallpapers/' in path and len(parts) > 4:
		return 'plasma:' + parts[4]
	stem = re.sub(r'_\d+x\d+$', '', os.path.splitext(parts[-1])[0])
	return re.sub(r'-(l|d|day|night|morning|light|dark)$', '', stem, flags=re.I)


def images(min_kib):
	best = {}
	for root in ROOTS:
		for dirpath, _, files in os.walk(root):
			for f in files:
				if not f.lower().endswith(EXTS):
					continue
				p = os.path.join(dirpath, f)
				size = os.path.getsize(p)
				if size < min_kib * 1024:
					continue
				t = theme_of(p)
				if t not in best or size > best[t][1]:
					best[t] = (p, size)
	return sorted((t, p) for t, (p, _) in best.items())


def write_bin(path, a):
	with open(path + '.tmp', 'wb') as f:
		np.array(a.shape, dtype='<u4').tofile(f)
		a.tofile(f)
	os.replace(path + '.tmp', path)


def main():
	ap = argparse.ArgumentParser(description=__doc__)
	ap.add_argument('--out', required=True)
	ap.add_argument('--min-kib', type=int, default=150)
	ap.add_argument("--max-side", type=int, default=4096)
	ap.add_argument('--query-share', type=float, default=0.15)
	ap.add_argument('--queries', type=int, default=10000)
	ap.add_argument('--seed', type=int, default=1)
	a = ap.parse_args()
	os.makedirs(a.out, exist_ok=True)
	sift = cv2.SIFT_create()
	base, query, lines = [], [], []
	for theme, path in images(a.min_kib):
		img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
		if img is None:
			print(f'{path}: cannot decode, skipped', file=sys.stderr)
			continue
		s = a.max_side / max(img.shape)
		if s < 1:
			img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
		_, d = sift.detectAndCompute(img, None)
		if d is None:
			continue
		d = np.clip(np.rint(d), 0, 255).astype(np.uint8)
		h = int(hashlib.sha1(theme.encode()).hexdigest()[:8], 16) / 2**32
		side = 'query' if h < a.query_share else 'base'
		(query if side == 'query' else base).append(d)
		lines.append(f'{side}\t{len(d)}\t{img.shape[1]}x{img.shape[0]}\t{path}')
		print(lines[-1], file=sys.stderr)
	b = np.unique(np.concatenate(base), axis=0)
	q = np.unique(np.concatenate(query), axis=0)
	rng = np.random.default_rng(a.seed)
	rng.shuffle(b)
	if len(q) > a.queries:
		q = q[rng.choice(len(q), a.queries, replace=False)]
	write_bin(os.path.join(a.out, 'base.u8bin'), np.ascontiguousarray(b))
	write_bin(os.path.join(a.out, 'query.u8bin'), np.ascontiguousarray(q))
	with open(os.path.join(a.out, 'images.txt'), 'w') as f:
		f.write('\n'.join(lines) + '\n')
	print(f'base {b.shape}, queries {q.shape} from {len(lines)} images', file=sys.stderr)


if __name__ == '__main__':
	main()

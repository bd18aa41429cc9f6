# SPDX-License-Identifier: MIT
"""annann for ann-benchmarks (https://github.com/erikbern/ann-benchmarks).

Drop-in: copy this directory to ann_benchmarks/algorithms/annann/ of an
ann-benchmarks checkout (with the annann Python package installed, e.g.
`pip install --no-build-isolation /path/to/annann`), then
`python run.py --local --algorithm annann --dataset sift-128-euclidean`.

The index is built from the training set into a temporary directory
(ANNANN_BENCH_DIR, default: the system's temporary directory) and read from
storage at query time like any annann index (O_DIRECT; no decoded-block
cache unless `cache` is given), so the figures are those of annann's
disk-resident design, not of an in-memory index.
"""
import os
import shutil
import tempfile

import numpy as np

import annann

from ..base.module import BaseANN

_METRICS = {"euclidean": "l2", "angular": "cosine", "ip": "ip", "dot": "ip"}


class Annann(BaseANN):
    def __init__(self, metric, partitions_per_1000=1.0, router="kmeans", cache=0, threads=1):
        if metric not in _METRICS:
            raise NotImplementedError(f"annann: metric {metric!r} (supported: {', '.join(_METRICS)})")
        self._metric = _METRICS[metric]
        self._per_1000 = float(partitions_per_1000)
        self._router = router
        self._cache = int(cache)
        self._threads = int(threads)
        self._nprobe = 16
        self._idx = None
        self._dir = None
        self._res = None
        self.name = f"annann(router={router}, partitions/1000={partitions_per_1000:g})"

    def fit(self, X):
        X = np.ascontiguousarray(X)
        if X.dtype != np.uint8 and X.dtype != np.int8:
            X = X.astype(np.float32, copy=False)
        self.done()
        self._dir = tempfile.mkdtemp(prefix="annann-", dir=os.environ.get("ANNANN_BENCH_DIR"))
        parts = max(1, int(round(len(X) * self._per_1000 / 1000)))
        path = os.path.join(self._dir, "index")
        self._idx = annann.build(path, X, partitions=parts, router=self._router, metric=self._metric,
                                 mem=os.environ.get("ANNANN_BENCH_MEM", "2G"), threads=os.cpu_count() or 1)
        self._idx.close()
        self._idx = annann.open(path, cache=self._cache, threads=self._threads)

    def set_query_arguments(self, nprobe):
        self._nprobe = int(nprobe)
        self.name = (f"annann(router={self._router}, partitions/1000={self._per_1000:g}, "
                     f"nprobe={self._nprobe})")

    def query(self, v, n):
        ids, _ = self._idx.search(v, k=n, nprobe=self._nprobe)
        return ids[ids >= 0]

    def batch_query(self, X, n):
        ids, _ = self._idx.search(X, k=n, nprobe=self._nprobe, threads=self._threads)
        self._res = ids

    def get_batch_results(self):
        return [row[row >= 0] for row in self._res]

    def get_memory_usage(self):
        """Resident set size of the process in KiB (what ann-benchmarks'
        psutil-based default reports), read from /proc."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1])
        return None

    def get_additional(self):
        st = self._idx.last_stats if self._idx is not None else None
        if not st:
            return {}
        return {"dist_comps": float(np.sum(st["candidates"])),
                "bytes_read_per_query": float(np.mean(st["bytes_read"]))}

    def done(self):
        if self._idx is not None:
            self._idx.close()
            self._idx = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __str__(self):
        return self.name

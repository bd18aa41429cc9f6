# SPDX-License-Identifier: MIT
"""annann: disk-resident approximate nearest-neighbour search for numpy.

A thin layer over libannann's C API (the extension module ``annann._annann``):

    import annann, numpy as np
    idx = annann.build("idx", data, partitions=1000, mem="1G")   # or annann.open("idx")
    ids, dists = idx.search(queries, k=10, nprobe=16)            # int64 / float32, (n, k)
    idx.last_stats["bytes_read"]                                 # per-query figures

Errors raise ``annann.Error`` (a subclass of both OSError and ValueError)
with the library's message. docs/API.md, "Python", is the reference.
"""
import os

from ._annann import (  # noqa: F401
    DEFAULT_BATCH,
    Error,
    Index,
    _build,
    ground_truth,
    library_version,
    open,
    read_ground_truth,
    read_vectors,
    tune,
    write_vectors,
)

__version__ = "0.1.0"
__all__ = ["Error", "Index", "build", "open", "read_vectors", "write_vectors", "ground_truth",
           "read_ground_truth", "parse_size", "tune"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(mem):
    """Bytes from an int or a string such as "512M", "1G", "1.5G" (powers of 1024)."""
    if isinstance(mem, int) and not isinstance(mem, bool):
        if mem < 0:
            raise Error(f"mem: {mem} is negative")
        return mem
    if isinstance(mem, str):
        s = mem.strip().upper().removesuffix("B").removesuffix("I")
        unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
        num = s[:-1] if unit else s
        try:
            v = float(num)
        except ValueError:
            v = -1.0
        if v >= 0:
            return int(v * _UNITS[unit])
    raise Error(f"mem: expected bytes as an int or a string like '512M' or '1G', got {mem!r}")


class _Bar:
    """Adapts a tqdm-style bar (update, total, set_description) to the
    library's progress callback (phase, done, total): one phase at a time."""

    def __init__(self, bar):
        self.bar, self.phase, self.done = bar, None, 0

    def __call__(self, phase, done, total):
        if phase != self.phase:
            self.phase, self.done = phase, 0
            if hasattr(self.bar, "reset"):
                self.bar.reset(total=total or None)
            elif hasattr(self.bar, "total"):
                self.bar.total = total or None
            if hasattr(self.bar, "set_description"):
                self.bar.set_description(phase)
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done


def build(path, data, *, partitions=None, router="kmeans", store="file", mem="1G", threads=None, seed=0,
          progress=None, **options):
    """Builds an index in the directory ``path`` (which must not exist) and opens it.

    ``data`` is a C-contiguous 2-D array (float32, uint8 or int8; other numeric
    types are converted to float32) or the path of a vector file (fvecs, bvecs,
    fbin, u8bin, i8bin). An array is streamed to a vector file beside the index
    ("path.input.<pid>.<ext>", removed afterwards) one 8 MiB chunk at a time, so
    an array larger than ``mem`` (a numpy memmap) is never copied whole in RAM.
    ``progress`` is a callable (phase, done, total) or a tqdm-style bar.
    ``options`` are the other fields of ann_build_opts by name, the routers'
    own parameters (ann_build_opts.kmeans, .annann, .nlsh) by their field
    names, set for every router kind that has the field (encoding,
    metric, zstd_level, shuffle, dictionary, sample, kmeans_iters, balance,
    replicas, replica_eps, soar_lambda, hnsw_m, hnsw_ef_construction, embed_dim, hidden,
    ae_epochs, dec_epochs, dec_alpha, recon_weight, knn_k, imbalance,
    nlsh_epochs, soft_labels, nlsh_augment, joint_rounds, joint_lambda, code_bits,
    router_bits, code_factors, code_order, page_fit, tune). Left out, partitions, code_bits, router_bits and balance are
    chosen by the library for the data's size and dimension, as ``annann build``
    does (docs/DESIGN.md "Defaults"): codes blocks, as many partitions as the
    RAM and disk budgets allow. ``code_bits=0`` writes format 1 (zstd) blocks.
    ``tune`` (None = auto, True, False) fits learned adaptive probing on synthetic
    queries after the build (docs/DESIGN.md "Self-tuned adaptive probing"); auto
    does it from 128 partitions and 20000 vectors, and ``nprobe`` is then the mean
    budget. ``annann.tune`` refits it on real queries.
    Ctrl-C stops the build (KeyboardInterrupt) and leaves no directory behind.
    """
    opts = dict(options)
    opts.update(router=router, store=store, mem_bytes=parse_size(mem), seed=seed)
    if partitions is not None:
        opts["partitions"] = partitions
    if threads is not None:
        opts["threads"] = threads
    cb = None
    if progress is not None:
        cb = _Bar(progress) if hasattr(progress, "update") else progress
        if not callable(cb):
            raise Error("progress: expected a callable (phase, done, total) or a tqdm-style bar")
    if not isinstance(data, (str, bytes, os.PathLike)) and not hasattr(data, "__array_interface__"):
        raise Error(f"build data: expected a numpy array or a path, got {type(data).__name__}")
    _build(data, path, opts, cb)
    return open(path, threads=threads)

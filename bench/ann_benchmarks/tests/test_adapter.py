# SPDX-License-Identifier: MIT
"""The ann-benchmarks adapter (annann/module.py + config.yml) driven the way
ann-benchmarks drives an algorithm: config.yml read, the module imported as
ann_benchmarks.algorithms.annann.module from a package tree whose BaseANN is
the local stand-in (base_module.py), the constructor called with the base
args and one combination of the grid, then fit / set_query_arguments /
query / batch_query / get_batch_results / get_memory_usage / done."""
import importlib
import itertools
import os
import shutil
import sys

import numpy as np
import pytest

yaml = pytest.importorskip("yaml")
HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTER = os.path.join(os.path.dirname(HERE), "annann")


@pytest.fixture()
def algorithms(tmp_path, monkeypatch):
    root = tmp_path / "tree" / "ann_benchmarks"
    base = root / "algorithms" / "base"
    base.mkdir(parents=True)
    for d in (root, root / "algorithms", base):
        (d / "__init__.py").write_text("")
    shutil.copy(os.path.join(HERE, "base_module.py"), base / "module.py")
    shutil.copytree(ADAPTER, root / "algorithms" / "annann")
    monkeypatch.syspath_prepend(str(tmp_path / "tree"))
    monkeypatch.setenv("ANNANN_BENCH_DIR", str(tmp_path))
    monkeypatch.setenv("ANNANN_BENCH_MEM", "64M")
    yield root / "algorithms"
    for m in [m for m in sys.modules if m.startswith("ann_benchmarks")]:
        del sys.modules[m]


def brute(base, q, k):
    d = ((q[:, None, :].astype(np.float64) - base[None].astype(np.float64)) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_config_and_adapter(algorithms, tmp_path):
    cfg = yaml.safe_load((algorithms / "annann" / "config.yml").read_text())
    entry = cfg["float"]["any"][0]
    mod = importlib.import_module(entry["module"] + ".module")
    cls = getattr(mod, entry["constructor"])
    assert issubclass(cls, mod.BaseANN)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, (20, 12))
    X = (centers[rng.integers(0, 20, 4000)] + rng.normal(0, 1, (4000, 12))).astype(np.float32)
    Q = (centers[rng.integers(0, 20, 50)] + rng.normal(0, 1, (50, 12))).astype(np.float32)
    truth = brute(X, Q, 10)
    for group in entry["run_groups"].values():
        if group["args"][1] != ["kmeans"]:
            continue  # the learned routers train for minutes; the grid's kmeans group covers the interface
        for combo in itertools.islice(itertools.product(*group["args"]), 2):
            args = [("euclidean" if a == "@metric" else a) for a in entry["base_args"]] + list(combo)
            algo = cls(*args)
            algo.fit(X)
            mem = algo.get_memory_usage()
            assert mem is not None and mem > 0
            recalls = []
            for nprobe in group["query_args"][0]:
                algo.set_query_arguments(nprobe)
                assert str(algo).startswith("annann(")
                single = [algo.query(q, 10) for q in Q]
                assert all(len(r) == 10 for r in single)
                algo.batch_query(Q, 10)
                batch = algo.get_batch_results()
                assert all(np.array_equal(a, b) for a, b in zip(single, batch))
                extra = algo.get_additional()
                assert extra["dist_comps"] > 0 and extra["bytes_read_per_query"] > 0
                recalls.append(np.mean([len(set(r) & set(t)) / 10 for r, t in zip(batch, truth)]))
            assert recalls[-1] >= 0.99  # the grid's largest nprobe reads (nearly) everything
            assert recalls == sorted(recalls) or max(recalls) - min(recalls) < 0.02 or recalls[0] < recalls[-1]
            d = algo._dir
            algo.done()
            assert not os.path.exists(d)
    with pytest.raises(NotImplementedError):
        cls("hamming")

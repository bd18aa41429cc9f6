# SPDX-License-Identifier: MIT
"""Tests of the annann Python package against the real library (real files,
real index directories, io_uring or its pread fallback), with recall checked
against a numpy brute force. Run by `meson test` (suite python) and by
tools/run.sh test against the pip-installed package."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import annann

DIM = 16


def clustered(n, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(20, 230, (32, DIM))
    x = centers[rng.integers(0, 32, n)] + rng.normal(0, 12, (n, DIM))
    x = np.clip(np.rint(x), 0, 255)
    return x.astype(dtype)


def brute(base, queries, k):
    b = base.astype(np.float64)
    q = queries.astype(np.float64)
    d = (q * q).sum(1)[:, None] - 2 * q @ b.T + (b * b).sum(1)[None, :]
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def recall(ids, truth):
    k = truth.shape[1]
    return np.mean([len(set(a[:k]) & set(t)) / k for a, t in zip(ids, truth)])


@pytest.fixture(scope="module")
def data():
    base = clustered(6000, 1)
    queries = clustered(200, 2) + 0.25
    return base, queries


@pytest.fixture(scope="module")
def index(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("idx") / "idx"
    with annann.build(d, data[0], partitions=24, mem="64M", threads=2) as idx:
        pass
    return d


def test_build_from_array_and_search_recall(index, data):
    base, queries = data
    truth = brute(base, queries, 10)
    with annann.open(index) as idx:
        ids, dists = idx.search(queries, k=10, nprobe=24)
        assert ids.dtype == np.int64 and dists.dtype == np.float32
        assert ids.shape == (200, 10) and dists.shape == (200, 10)
        assert recall(ids, truth) >= 0.999  # every partition probed: exact
        assert np.all(np.diff(dists, axis=1) >= 0)
        ids4, _ = idx.search(queries, k=10, nprobe=4)
        r4 = recall(ids4, truth)
        assert 0.5 < r4 <= recall(ids, truth)
        st = idx.last_stats
        assert st["partitions"].shape == (200,) and np.all(st["partitions"] == 4)
        assert np.all(st["candidates"] > 0) and np.all(st["bytes_read"] > 0)
        assert st["read_waves"].dtype == np.uint32 and np.all(st["read_waves"] >= 1)
        # distances are squared L2 of the vectors found
        q0 = queries[0].astype(np.float64)
        assert np.allclose(dists[0], ((base[ids[0]] - q0) ** 2).sum(1), rtol=1e-4)


def test_build_from_file_equals_array(tmp_path, data):
    base, queries = data
    f = tmp_path / "base.u8bin"
    annann.write_vectors(f, base.astype(np.uint8))
    back = annann.read_vectors(f)
    assert back.dtype == np.uint8 and np.array_equal(back, base.astype(np.uint8))
    a = annann.build(tmp_path / "a", base.astype(np.uint8), partitions=12, mem="64M", seed=3)
    b = annann.build(tmp_path / "b", str(f), partitions=12, mem="64M", seed=3)
    with a, b:
        assert a.info()["encoding"] == "u8"
        ia, da = a.search(queries, k=10, nprobe=3)
        ib, db = b.search(queries, k=10, nprobe=3)
        assert np.array_equal(ia, ib) and np.array_equal(da, db)
    assert not any(p.name.startswith("a.input") for p in tmp_path.iterdir())


def test_float64_noncontiguous_and_one_query(index, data):
    base, queries = data
    with annann.open(index) as idx:
        ref_ids, ref_d = idx.search(queries[:20], k=5, nprobe=6)
        wide = np.zeros((20, DIM * 2))
        wide[:, ::2] = queries[:20]
        view = wide[:, ::2]  # float64, not contiguous
        assert not view.flags.c_contiguous
        ids, d = idx.search(view, k=5, nprobe=6)
        assert np.array_equal(ids, ref_ids)
        one_ids, one_d = idx.search(queries[3], k=5, nprobe=6)
        assert one_ids.shape == (5,) and np.array_equal(one_ids, ref_ids[3])
        empty_ids, _ = idx.search(queries[:0], k=5)
        assert empty_ids.shape == (0, 5)


def test_ground_truth_matches_brute_force(tmp_path, data):
    base, queries = data
    ids, d = annann.ground_truth(base, queries, 10)
    truth = brute(base, queries, 10)
    assert recall(ids, truth) >= 0.999
    fb, fq, fg = tmp_path / "b.fbin", tmp_path / "q.fbin", tmp_path / "gt.bin"
    annann.write_vectors(fb, base)
    annann.write_vectors(fq, queries)
    ids2, d2 = annann.ground_truth(fb, fq, 10)
    assert np.array_equal(ids, ids2)
    tool = os.environ.get("ANNANN_TOOL")
    if tool:  # the CLI's ground-truth file reads back equal
        subprocess.run([tool, "gt", "--base", fb, "--queries", fq, "--k", "10", "--out", fg], check=True,
                       capture_output=True)
        gi, gd = annann.read_ground_truth(fg)
        assert np.array_equal(gi, ids2) and np.allclose(gd, d2)


def test_vector_file_formats_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    cases = {"fvecs": np.float32, "fbin": np.float32, "bvecs": np.uint8, "u8bin": np.uint8,
             "i8bin": np.int8, "ivecs": np.int32, "ibin": np.int32}
    for ext, t in cases.items():
        a = rng.integers(-100 if t in (np.int8, np.int32) else 0, 100, (37, 9)).astype(t)
        p = tmp_path / f"v.{ext}"
        annann.write_vectors(p, a)
        b = annann.read_vectors(p)
        assert b.dtype == t and np.array_equal(a, b), ext
    # converted input: int64 into ibin, float into u8bin (rounded, range-checked)
    annann.write_vectors(tmp_path / "ids.ibin", np.arange(12, dtype=np.int64).reshape(4, 3))
    assert annann.read_vectors(tmp_path / "ids.ibin").dtype == np.int32
    with pytest.raises(annann.Error, match="does not fit int32"):
        annann.write_vectors(tmp_path / "big.ibin", np.array([[1 << 40]]))
    with pytest.raises(annann.Error):
        annann.write_vectors(tmp_path / "x.u8bin", np.array([[300.0, 1.0]]))
    assert not (tmp_path / "x.u8bin").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]


def test_insert_delete_compact_round_trip(tmp_path, data):
    base, queries = data
    with annann.build(tmp_path / "u", base[:3000], partitions=8, mem="64M") as idx:
        assert idx.info()["live_vectors"] == 3000
        new = idx.insert(base[3000:3500])
        assert np.array_equal(new, np.arange(3000, 3500))
        assert idx.info()["live_vectors"] == 3500
        truth = brute(base[:3500], queries, 10)
        ids, _ = idx.search(queries, k=10, nprobe=8)
        assert recall(ids, truth) >= 0.999
        gone = ids[:, 0]
        deleted = idx.delete(np.unique(gone))
        assert deleted == len(np.unique(gone))
        ids2, _ = idx.search(queries, k=10, nprobe=8)
        assert not np.isin(ids2, gone).any()
        st = idx.compact()
        assert st["deltas_merged"] == 500 - np.isin(np.unique(gone), new).sum()
        assert st["deltas_merged"] + st["tombstones_applied"] >= 500
        ids3, _ = idx.search(queries, k=10, nprobe=8)
        assert np.array_equal(ids2, ids3)
        assert idx.verify() == []
        assert idx.info()["live_vectors"] == 3500 - deleted
        with pytest.raises(annann.Error, match="exist"):
            idx.insert(base[:1], ids=[int(ids3[0, 0])])
        idx.insert(base[:1], ids=[int(ids3[0, 0])], upsert=True)
    # reopened from disk: the same state
    with annann.open(tmp_path / "u") as idx:
        ids4, _ = idx.search(queries, k=10, nprobe=8)
        assert idx.info()["live_vectors"] == 3500 - deleted


def test_info_keys_equal_cli_json(index):
    tool = os.environ.get("ANNANN_TOOL")
    if not tool:
        pytest.skip("ANNANN_TOOL (the annann executable) not set")
    out = subprocess.run([tool, "info", "--index", index, "--json"], check=True, capture_output=True, text=True)
    cli = json.loads(out.stdout)
    with annann.open(index) as idx:
        py = idx.info()
    assert list(py.keys()) == list(cli.keys())
    assert py == cli


def test_errors(tmp_path, index, data):
    base, queries = data
    idx = annann.open(index)
    cases = [
        (lambda: idx.search(queries[:, :5]), "dimension 5"),
        (lambda: idx.search(queries[None]), "3 axes"),
        (lambda: idx.search(queries.astype(np.complex64)), "unsupported dtype"),
        (lambda: idx.search(queries.astype(object)), "unsupported dtype"),
        (lambda: idx.search(queries.tolist()), "numpy array"),
        (lambda: idx.search("queries"), "numpy array"),
        (lambda: idx.search(queries, k=0), "k must"),
        (lambda: idx.search(queries, nprobe=0), "nprobe"),
        (lambda: idx.insert(base[:2, :3]), "dimension 3"),
        (lambda: idx.delete("x"), "ids"),
        (lambda: annann.open(tmp_path / "missing"), "missing"),
        (lambda: annann.build(index, base), "exists"),
        (lambda: annann.build(tmp_path / "n", [[1.0]]), "numpy array"),
        (lambda: annann.build(tmp_path / "n", base, router="nope"), "unknown 'nope'"),
        (lambda: annann.build(tmp_path / "n", base, colour=3), "unknown option 'colour'"),
        (lambda: annann.build(tmp_path / "n", base, mem="lots"), "mem"),
        (lambda: annann.build(tmp_path / "n", base, mem="1M"), "budget"),
        (lambda: annann.read_vectors(tmp_path / "x.txt"), "x.txt"),
        (lambda: annann.ground_truth(base, queries[:, :3], 5), "dimension"),
    ]
    for fn, msg in cases:
        with pytest.raises(annann.Error, match=msg):
            fn()
    bad = tmp_path / "bad.fbin"
    bad.write_bytes(np.array([10, DIM], dtype=np.int32).tobytes() + b"\0" * 12)
    with pytest.raises(annann.Error, match="bad.fbin") as e:
        annann.build(tmp_path / "n", bad)
    assert e.value.status == "BADINPUT" and isinstance(e.value, ValueError) and isinstance(e.value, OSError)
    nan = base[:100].copy()
    nan[7, 3] = np.nan
    with pytest.raises(annann.Error, match="vector 7"):
        annann.build(tmp_path / "n", nan, mem="64M")
    assert not (tmp_path / "n").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("n.")]
    idx.close()
    idx.close()  # twice is fine
    for fn in (lambda: idx.search(queries), idx.info, lambda: idx.insert(base[:1]), idx.compact, idx.verify):
        with pytest.raises(annann.Error, match="closed"):
            fn()
    assert idx.closed


def test_two_threads_search_at_once(index, data):
    base, queries = data
    many = np.tile(queries, (10, 1))
    with annann.open(index) as idx:
        ref, _ = idx.search(many, k=10, nprobe=6)
        results, errors = [None, None], []

        def run(i):
            try:
                for _ in range(3):
                    results[i] = idx.search(many, k=10, nprobe=6, batch=100)[0]
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        assert np.array_equal(results[0], ref) and np.array_equal(results[1], ref)
        # threads inside one call give the same answer
        ids, _ = idx.search(many, k=10, nprobe=6, threads=2, batch=50)
        assert np.array_equal(ids, ref)


def test_close_waits_for_search_in_flight(index, data):
    base, queries = data
    many = np.tile(queries, (50, 1))
    idx = annann.open(index)
    out = {}

    def run():
        try:
            out["ids"] = idx.search(many, k=10, nprobe=24, batch=10)[0]
        except annann.Error as e:
            out["err"] = e

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.02)
    idx.close()
    t.join()
    assert "ids" in out or "closed" in str(out["err"])


def test_progress_callback_and_bar(tmp_path, data):
    base, _ = data
    seen = []
    annann.build(tmp_path / "p", base, partitions=8, mem="64M", progress=lambda p, d, t: seen.append(p)).close()
    assert {"sample", "route", "pack"} <= set(seen)

    class Bar:
        def __init__(self):
            self.n, self.total, self.desc = 0, None, []

        def update(self, k):
            self.n += k

        def set_description(self, d):
            self.desc.append(d)

    bar = Bar()
    annann.build(tmp_path / "q", base, partitions=8, mem="64M", progress=bar).close()
    assert "pack" in bar.desc and bar.n > 0

    def boom(p, d, t):
        if p == "route":
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        annann.build(tmp_path / "r", base, partitions=8, mem="64M", progress=boom)
    assert not (tmp_path / "r").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("r.")]


CHILD = r"""
import signal, sys, time, numpy as np, annann
# A job started in the background by a non-interactive shell inherits SIGINT ignored, and
# Python then installs no KeyboardInterrupt handler: install it, the test is about annann.
signal.signal(signal.SIGINT, signal.default_int_handler)
mode, path = sys.argv[1], sys.argv[2]
if mode == "build":
    x = np.random.default_rng(0).integers(0, 256, (300000, 32)).astype(np.uint8)
    def slow(p, d, t):
        if p == "route":
            print("ROUTE", flush=True)
            time.sleep(0.05)
    try:
        annann.build(path, x, partitions=64, mem="256M", progress=slow)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
else:
    idx = annann.open(path)
    q = np.random.default_rng(1).integers(0, 256, (200000, 16)).astype(np.float32)
    print("SEARCH", flush=True)
    try:
        idx.search(q, k=10, nprobe=24, batch=50, threads=int(mode[-1]))
        print("FINISHED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    idx.close()
"""


def interrupt(args, ready, tmp_path):
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, "-c", CHILD, *args],
                         stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    assert line.strip() == ready, line
    time.sleep(0.2)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    rest = p.stdout.read()
    p.wait(timeout=60)
    return rest, time.monotonic() - t0


def test_ctrl_c_build_leaves_nothing(tmp_path):
    target = tmp_path / "cidx"
    rest, secs = interrupt(["build", str(target)], "ROUTE", tmp_path)
    assert "INTERRUPTED" in rest
    assert secs < 10
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_search(index, tmp_path, threads):
    rest, secs = interrupt([f"search{threads}", str(index)], "SEARCH", tmp_path)
    assert "INTERRUPTED" in rest
    assert secs < 10
    with annann.open(index) as idx:
        assert idx.verify() == []


def test_search_releases_the_gil(index, data):
    """While one thread is inside a single long ann_search call (one batch),
    the main thread keeps running Python: the longest pause it sees is a
    small part of the search, where a held GIL would stall it throughout."""
    base, queries = data
    with annann.open(index) as idx:
        # Size the batch to take over half a second on this machine, timing
        # the very call the thread makes (one batch of every copy): a repeat
        # count taken from the default batches of one pass ran 0.27 s, since
        # a single batch reads each partition once for all its queries.
        reps = 20
        while True:
            many = np.tile(queries, (reps, 1))
            t0 = time.perf_counter()
            idx.search(many, k=10, nprobe=24, batch=len(many))
            took = time.perf_counter() - t0
            if took >= 0.6 or reps >= 2500:  # 2500 copies: 500,000 queries, ~70 MB of answers
                break
            reps = min(2500, int(reps * min(max(2.0, 1.0 / max(took, 1e-3)), 50.0)))
        t = threading.Thread(target=idx.search, args=(many,), kwargs=dict(k=10, nprobe=24, batch=len(many)))
        last = t0 = time.perf_counter()
        gap = 0.0
        t.start()
        while t.is_alive():
            now = time.perf_counter()
            gap = max(gap, now - last)
            last = now
        duration = time.perf_counter() - t0
        print(f"{len(many)} queries in {duration:.3f} s, longest pause {gap:.4f} s")
        assert duration > 0.3, "the search is too short to tell"
        assert gap < 0.5 * duration, (gap, duration)


def test_every_build_option_is_accepted(tmp_path, data):
    """Each ann_build_opts field by name reaches the library: a value out of
    the library's range must come back as the library's own INVAL/BUDGET
    error or build, never as the binding's 'unknown option'."""
    base, _ = data
    opts = dict(encoding="f16", metric="ip", zstd_level=1, shuffle=True, dictionary=False, sample=2000,
                kmeans_iters=3, balance=2.0, replicas=2, replica_eps=0.2, soar_lambda=1.0, hnsw_m=8,
                hnsw_ef_construction=40, page_fit=0)
    with annann.build(tmp_path / "o", base[:3000], partitions=6, mem="64M", **opts) as idx:
        info = idx.info()
        assert info["encoding"] == "f16" and info["metric"] == "ip" and info["replication"] > 1.0
    learned = dict(embed_dim=8, hidden=[16], ae_epochs=1, dec_epochs=0, dec_alpha=1.0, recon_weight=1.0,
                   knn_k=5, imbalance=0.05, nlsh_epochs=1, soft_labels=False, joint_rounds=1, joint_lambda=1.0)
    for key, value in learned.items():
        with pytest.raises(annann.Error) as e:
            annann.build(tmp_path / "x", base[:500], partitions=4, mem="1M", **{key: value})
        assert "unknown option" not in str(e.value) and e.value.status == "BUDGET", (key, e.value)


def test_build_defaults_follow_the_library(tmp_path):
    """With no options the binding builds what `annann build` builds
    (docs/DESIGN.md "Defaults"): codes blocks at 128 dimensions, more
    partitions than the old n/1000, search nprobe the index's default;
    code_bits=0 and router_bits are honoured."""
    rng = np.random.default_rng(7)
    centers = rng.uniform(20, 230, (40, 128))
    x = np.clip(np.rint(centers[rng.integers(0, 40, 20000)] + rng.normal(0, 12, (20000, 128))), 0, 255)
    x = x.astype(np.uint8)
    with annann.build(tmp_path / "d", x, mem="256M") as idx:
        info = idx.info()
        assert info["code_bits"] == 2 and info["router_bits"] == 0, info
        assert info["partitions"] > 2 * (20000 // 1000), info
        assert info["bytes_on_disk"] <= 1.5 * info["raw_bytes"], info
        idx.search(x[:5], k=10)
        # 20000 vectors in over 128 partitions: the build fitted adaptive probing on synthetic queries,
        # so nprobe is a mean budget; tune=False keeps fixed probing
        assert info["partitions"] < 128 or info["probe_fit_queries"] == 2000, info
    with annann.build(tmp_path / "n", x, mem="256M", tune=False) as idx:
        info = idx.info()
        assert info["probe_p1"] == 0, info
        idx.search(x[:5], k=10)
        assert np.all(idx.last_stats["partitions"] == min(info["default_nprobe"], info["partitions"]))
    with pytest.raises(annann.Error) as e:
        annann.build(tmp_path / "t", x, mem="256M", tune="sometimes")
    assert "tune" in str(e.value)
    with annann.build(tmp_path / "f", x, mem="256M", code_bits=0, router_bits=0) as idx:
        info = idx.info()
        assert info["code_bits"] == 0 and info["router_bits"] == 0, info


def test_tune_adaptive_probing(tmp_path):
    """annann.tune fits learned adaptive probing on queries with ground truth;
    search then reads a varying number of partitions per query (at least P1, at
    most 2 nprobe), answers exactly, and adaptive=False reads nprobe."""
    base = clustered(8000, 5)
    rng = np.random.default_rng(6)
    queries = (clustered(300, 7) + rng.normal(0, 10, (300, DIM))).clip(0, 255).astype(np.float32)
    truth = brute(base, queries, 10)
    d = tmp_path / "tuned"
    with annann.build(d, base, partitions=32, code_bits=2, mem="64M", threads=1) as idx:
        with pytest.raises(annann.Error, match="no probe model"):
            idx.search(queries[:4], k=10, nprobe=8, adaptive=True)
    with pytest.raises(annann.Error, match="dimension"):
        annann.tune(d, queries[:, :8], truth)
    # tuned while an Index of it is open in this process (they share one LMDB environment):
    # the open Index keeps working, without the model it loaded no copy of
    with annann.open(d) as early:
        early.search(queries[:4], k=10, nprobe=8)
        rep = annann.tune(d, queries[:200], truth[:200], k=10, p1=2)
        assert early.info()["probe_p1"] == 0
        early.search(queries[:4], k=10, nprobe=8)
        assert np.all(early.last_stats["partitions"] == 8)
    assert rep["p1"] == 2 and rep["queries"] == 200 and rep["rows"]
    assert all(r["probed_adaptive"] >= 2 for r in rep["rows"])
    assert rep["rerank_eps"] in (2.0, 1.600000023841858, 1.2000000476837158, 1.0)
    with annann.open(d) as idx:
        assert idx.info()["probe_p1"] == 2
        assert idx.info()["rerank_eps_tuned"] == 1
        assert abs(idx.info()["rerank_eps"] - rep["rerank_eps"]) < 1e-6
        ids, dists = idx.search(queries[200:], k=10, nprobe=8)
        parts = idx.last_stats["partitions"]
        assert parts.min() >= 2 and parts.max() <= 16 and len(set(parts.tolist())) > 1
        b = base.astype(np.float64)
        q = queries[200:].astype(np.float64)
        exact = ((q[:, None, :] - b[ids]) ** 2).sum(-1)
        assert np.allclose(dists, exact, rtol=1e-4)
        assert recall(ids, truth[200:]) > 0.6
        idx.search(queries[200:], k=10, nprobe=8, adaptive=False)
        assert np.all(idx.last_stats["partitions"] == 8)


def test_spread_weight(tmp_path):
    """search(spread_weight=) orders partitions by centroid distance + weight
    x spread (docs/DESIGN.md "Spread-aware probe order"): 0 is the distance
    order, a large weight reads other partitions; answers stay exact; a
    weight outside 0..100 is refused."""
    base = clustered(8000, 5)
    rng = np.random.default_rng(8)
    queries = (clustered(100, 9) + rng.normal(0, 10, (100, DIM))).clip(0, 255).astype(np.float32)
    with annann.build(tmp_path / "s", base, partitions=32, code_bits=2, mem="64M", threads=1) as idx:
        info = idx.info()
        assert info["spread_partitions"] == info["partitions"] > 0, info
        b = base.astype(np.float64)
        q = queries.astype(np.float64)
        got = {}
        for w in (None, 0, 10.0):
            ids, dists = idx.search(queries, k=10, nprobe=2, spread_weight=w)
            exact = ((q[:, None, :] - b[ids]) ** 2).sum(-1)
            assert np.allclose(dists, exact, rtol=1e-4)
            st = idx.last_stats
            assert np.all(st["partitions"] == 2)
            # the two rounds of a codes index: heads, then exact pages
            assert np.allclose(st["bytes_round1"] + st["bytes_round2"], st["bytes_read"], rtol=1e-9)
            assert np.all(st["bytes_round1"] > 0) and np.all(st["ios_round1"] > 0)  # shared reads are divided among a batch's queries
            assert np.all(st["reranked"] >= 10) and np.all(st["estimated"] >= st["reranked"])
            assert st["estimated"].dtype == np.uint64 and st["bytes_round2"].dtype == np.float64
            for f in ("round1_wait_ns", "estimate_ns", "round2_wait_ns", "rerank_ns"):
                assert st[f].shape == (100,), f
            got[w] = ids
        assert not np.array_equal(got[0], got[10.0])
        for bad in (-1, 101, float("nan")):
            with pytest.raises(ValueError, match="spread_weight"):
                idx.search(queries[:2], k=10, spread_weight=bad)


def test_directions(tmp_path):
    """build(directions=M) fits the directional probe order (docs/DESIGN.md
    "Directional probe order"); search(direction_weight=) weighs it: the
    answers are exact at any weight, and weights outside 0..1 are refused."""
    base = clustered(8000, 5)
    queries = clustered(50, 9).astype(np.float32)
    with pytest.raises(ValueError, match="directions"):
        annann.build(tmp_path / "bad", base, directions=17)
    with annann.build(tmp_path / "d", base, partitions=32, code_bits=2, mem="64M", threads=1, tune=False,
                      directions=2) as idx:
        assert idx.info()["directions"] == 2
        for w in (0, 0.5, 1):
            ids, d = idx.search(queries, k=10, nprobe=2, direction_weight=w)
            exact = ((queries[:, None, :] - base[ids]) ** 2).sum(-1)
            assert np.allclose(d, exact, rtol=1e-4, atol=1e-2)
        for bad in (-1, 1.5, float("nan")):
            with pytest.raises(ValueError, match="direction_weight"):
                idx.search(queries[:2], k=10, direction_weight=bad)
    with annann.build(tmp_path / "n", base, partitions=32, code_bits=2, mem="64M", threads=1, tune=False,
                      directions=0) as idx:
        assert idx.info()["directions"] == 0


def test_poll_us(tmp_path):
    """search(poll_us=) polls for read completions before sleeping
    (docs/DESIGN.md "Read waves"): the same answers; outside
    0..10000 it is refused."""
    base = clustered(8000, 5)
    queries = clustered(50, 9).astype(np.float32)
    with annann.build(tmp_path / "p", base, partitions=32, code_bits=2, mem="64M", threads=1) as idx:
        ids0, d0 = idx.search(queries, k=10, nprobe=4)
        ids1, d1 = idx.search(queries, k=10, nprobe=4, poll_us=500)
        assert np.array_equal(ids0, ids1) and np.array_equal(d0, d1)
        for bad in (-1, 10001):
            with pytest.raises(ValueError, match="poll_us"):
                idx.search(queries[:2], k=10, poll_us=bad)

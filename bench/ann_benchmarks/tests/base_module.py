# SPDX-License-Identifier: MIT
"""A minimal local stand-in for ann-benchmarks' BaseANN
(ann_benchmarks/algorithms/base/module.py), written from its documented
interface, so the adapter is tested without ann-benchmarks itself: the same
method names, arguments and defaults (batch_query maps query over a thread
pool and get_batch_results returns what it stored)."""
from multiprocessing.pool import ThreadPool


class BaseANN:
    def done(self):
        pass

    def get_memory_usage(self):
        return None

    def fit(self, X):
        pass

    def query(self, q, n):
        return []

    def batch_query(self, X, n):
        pool = ThreadPool()
        self.res = pool.map(lambda q: self.query(q, n), X)

    def get_batch_results(self):
        return self.res

    def get_additional(self):
        return {}

    def __str__(self):
        return self.name

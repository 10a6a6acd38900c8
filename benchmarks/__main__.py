"""``python -m benchmarks``: run every benchmark and rewrite RESULTS.md."""

from __future__ import annotations

import importlib

BENCHMARKS = [
    "benchmarks.protocol_codec",
    "benchmarks.edge_overhead",
    "benchmarks.hub_batching",
    "benchmarks.converter",
]

if __name__ == "__main__":
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        importlib.import_module(name).run()

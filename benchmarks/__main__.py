"""``python -m benchmarks [--only NAME ...]``: run the benchmarks and rewrite RESULTS.md."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = [
    "protocol_codec",
    "edge_overhead",
    "hub_batching",
    "hub_vs_triton",
    "fallback",
    "fleet",
    "converter",
    "quantum",
]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run just these")
    for name in parser.parse_args().only or BENCHMARKS:
        print(f"== benchmarks.{name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").run()

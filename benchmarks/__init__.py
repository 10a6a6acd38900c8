"""Benchmarks: each module measures a figure against its baseline, side by side in one run."""

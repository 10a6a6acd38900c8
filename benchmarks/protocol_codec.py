"""Encode + decode of a 1x224x224x3 tensor: JSON and binary against numpy's own floor.

The floor is ``numpy.tobytes`` then ``numpy.frombuffer``: one copy out, a view back. The goal is
binary within 3x of it; JSON is shown to say why large tensors must travel binary.

    python -m benchmarks.protocol_codec
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.results import median_seconds, write_section
from protocols import decode_mqtt_request, decode_request, encode_mqtt_request, encode_request

SHAPE = (1, 224, 224, 3)
GOAL_RATIO = 3.0
COMMAND = "python -m benchmarks.protocol_codec"


def _floor(x: np.ndarray) -> Callable[[], object]:
    return lambda: np.frombuffer(x.tobytes(), dtype=x.dtype).reshape(x.shape)


def _http(x: np.ndarray, binary: bool) -> Callable[[], object]:
    def run() -> object:
        body = encode_request({"input": x}, binary=binary)
        return decode_request(body.to_bytes(), body.header_length).tensors["input"]

    return run


def _mqtt(x: np.ndarray) -> Callable[[], object]:
    return lambda: decode_mqtt_request(encode_mqtt_request("m", {"input": x})).tensors["input"]


def run() -> str:
    rng = np.random.default_rng(0)
    rows = []
    verdicts = []
    for dtype in (np.float32, np.float16):
        x = rng.standard_normal(SHAPE).astype(dtype)
        for case in (_http(x, True), _http(x, False), _mqtt(x)):
            out = case()
            assert np.array_equal(out, x)  # a fast codec that is wrong counts for nothing
        floor = median_seconds(_floor(x))
        cases = [
            ("binary (HTTP body)", median_seconds(_http(x, True)), True),
            ("binary (MQTT HIB1 frame)", median_seconds(_mqtt(x)), True),
            ("JSON", median_seconds(_http(x, False), min_time_s=2.0, repeats=3), False),
        ]
        name = np.dtype(dtype).name
        rows.append(f"| {name} | numpy tobytes/frombuffer (floor) | {floor * 1e6:,.0f} | 1.0x | |")
        for label, seconds, judged in cases:
            ratio = seconds / floor
            verdict = ""
            if judged:
                ok = ratio <= GOAL_RATIO
                verdicts.append(ok)
                verdict = f"{'met' if ok else 'MISSED'} (<= {GOAL_RATIO:.0f}x)"
            rows.append(f"| {name} | {label} | {seconds * 1e6:,.0f} | {ratio:,.1f}x | {verdict} |")
    table = "\n".join(
        [
            "## Protocol codec: encode + decode of a 1x224x224x3 tensor",
            "",
            f"Reproduce: `{COMMAND}`. Goal: binary within {GOAL_RATIO:.0f}x of the floor.",
            "",
            "| dtype | path | µs per encode+decode | vs floor | goal |",
            "|---|---|---:|---:|---|",
            *rows,
        ]
    )
    write_section("protocol_codec", table)
    print(table)
    return table


if __name__ == "__main__":
    run()

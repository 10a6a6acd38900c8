"""``python -m demo`` (``make demo``) on a short stream: real processes (Mosquitto, hub, agent),
a report whose every number follows from the answers it recorded, and nothing left running,
whether the run ends or is interrupted.

The models come from ``.cache/demo`` (the demo's own cache); when it is empty the first run
trains and converts them (about half a minute; needs TensorFlow and scikit-learn).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.broker import require_mosquitto

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "demo"
STREAM = 60
THRESHOLD = 0.9
RUN_TIMEOUT_S = 300


def _require(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed ({why})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def requirements() -> None:
    require_mosquitto()
    _require("matplotlib", "the demo's plots")
    from demo.artifacts import training_recipe

    cached = (CACHE / "models" / "stamp.json").is_file() and training_recipe() in (
        CACHE / "models" / "stamp.json"
    ).read_text()
    if not cached:
        _require("tensorflow", "to train the demo's models")
        _require("sklearn", "for the digits")


def demo_command(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "demo",
        "--report-dir",
        str(tmp_path / "report"),
        "--work-dir",
        str(tmp_path / "work"),
        "--cache-dir",
        str(CACHE),
        *args,
    ]


def processes_under(folder: Path) -> list[str]:
    """Command lines of running processes that name ``folder`` (the demo passes its work
    folder to every server it starts)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(folder) in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture
def run_demo(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            demo_command(tmp_path, *args),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def read_answers(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_short_stream_writes_a_report_computed_from_its_answers(
    run_demo: Any, tmp_path: Path
) -> None:
    process = run_demo("--limit", str(STREAM), "--threshold", str(THRESHOLD))
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, output
    assert f"replay agrees on {STREAM}/{STREAM}" in output
    assert "quantum classifier through the hub: not there yet" in output
    assert processes_under(tmp_path / "work") == []

    report = tmp_path / "report"
    for name in ("report.md", "summary.json", "answers.csv"):
        assert (report / name).stat().st_size > 0
    for name in ("latency.png", "accuracy-vs-cloud-share.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = read_answers(report / "answers.csv")
    summary = json.loads((report / "summary.json").read_text())
    with np.load(CACHE / "models" / "digits.npz") as data:
        labels = data["y_test"][:STREAM].tolist()
    assert [int(r["index"]) for r in rows] == list(range(STREAM))
    assert [int(r["label"]) for r in rows] == labels

    # Where each digit was answered follows the rule, on the edge model's own confidence.
    at_cloud = [r for r in rows if r["served_by"] == "cloud"]
    at_edge = [r for r in rows if r["served_by"] == "edge"]
    assert len(at_cloud) + len(at_edge) == STREAM
    for r in at_edge:
        assert float(r["edge_confidence"]) >= THRESHOLD
        assert (r["fallback_reason"], r["hybrid_prediction"]) == ("", r["edge_prediction"])
    for r in at_cloud:
        assert float(r["edge_confidence"]) < THRESHOLD
        assert r["fallback_reason"] == "low_confidence"
        assert r["hybrid_prediction"] == r["cloud_prediction"]

    def accuracy(column: str) -> float:
        return sum(int(r[column]) == int(r["label"]) for r in rows) / STREAM

    assert summary["requests"] == STREAM
    assert (summary["edge_answers"], summary["cloud_answers"]) == (len(at_edge), len(at_cloud))
    assert summary["edge_share"] + summary["cloud_share"] == pytest.approx(1.0)
    assert summary["cloud_reasons"] == ({"low_confidence": len(at_cloud)} if at_cloud else {})
    assert summary["degraded"] == 0
    assert summary["replay_agrees"] == STREAM
    for key, column in (
        ("edge_only", "edge_prediction"),
        ("cloud_only", "cloud_prediction"),
        ("hybrid", "hybrid_prediction"),
    ):
        assert 0.0 <= summary["accuracy"][key] <= 1.0
        assert summary["accuracy"][key] == pytest.approx(accuracy(column))
    latency = summary["latency_ms"]
    assert (latency["local"]["count"], latency["fallback"]["count"]) == (
        len(at_edge),
        len(at_cloud),
    )
    local_ms = [float(r["hybrid_latency_ms"]) for r in at_edge]
    assert latency["local"]["p50_ms"] == pytest.approx(np.percentile(local_ms, 50), abs=1e-3)

    markdown = (report / "report.md").read_text()
    assert f"| total | {STREAM} | 100.0% |" in markdown
    hybrid_pct = f"{summary['accuracy']['hybrid'] * 100:.1f}%"
    assert hybrid_pct in markdown
    assert f"| at the edge | {len(at_edge)} | {summary['edge_share'] * 100:.1f}% |" in markdown
    assert "![latency](latency.png)" in markdown


def test_an_interrupt_mid_run_stops_every_process(run_demo: Any, tmp_path: Path) -> None:
    process = run_demo()
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for line in process.stdout:
        seen.append(line)
        if "starting edge-agent run" in line:  # the broker and the hub are up
            break
        assert time.monotonic() < deadline, "".join(seen)
    else:
        pytest.fail("the demo ended before starting the agent:\n" + "".join(seen))
    assert len(processes_under(tmp_path / "work")) >= 2  # mosquitto, cloud-hub (and the agent)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 130, "".join(seen) + rest
    assert "every process it started has stopped" in rest
    assert processes_under(tmp_path / "work") == []


def test_the_embedded_mqtt311_broker_serves_the_demo_too(run_demo: Any, tmp_path: Path) -> None:
    process = run_demo("--limit", "30", "--threshold", str(THRESHOLD), "--broker", "amqtt")
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, output
    assert "amqtt on 127.0.0.1:" in output
    assert "MQTT 3.1.1" in output
    assert "replay agrees on 30/30" in output
    assert processes_under(tmp_path / "work") == []

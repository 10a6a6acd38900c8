"""``python -m demo`` (``make demo``) on a short stream: real processes (Mosquitto, hub, agent),
a report whose every number follows from the answers it recorded, and nothing left running,
whether the run ends or is interrupted.

The models come from ``.cache/demo`` (the demo's own cache); when it is empty the first run
trains and converts them (about half a minute; needs TensorFlow and scikit-learn). The iris
quantum classifier is trained with a short budget (``QUANTUM_ITERATIONS``, a few seconds), cached
there beside the demo's own; it is not a model to use, only one to check the report against.
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
QUANTUM_ITERATIONS = 15


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
    _require("qiskit_machine_learning", "the demo's quantum classifier")
    _require("sklearn", "for iris")
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
        "--quantum-iterations",
        str(QUANTUM_ITERATIONS),
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
    assert "the quantum classifier on iris through the agent and the hub" in output
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

    check_quantum_section(report, summary["quantum"], markdown, output)
    check_second_round(summary, markdown, output)


def check_second_round(summary: dict[str, Any], markdown: str, output: str) -> None:
    """Release 2 came through distill, build, sign, publish and the agent's signed update, and
    its figures are consistent with release 1's, which are the first pass's own."""
    second = summary["second_round"]
    first, again = second["release_1"], second["release_2"]
    assert (first["requests"], again["requests"]) == (STREAM, STREAM)
    assert first["cloud_answers"] == summary["cloud_answers"]
    assert first["accuracy_hybrid"] == pytest.approx(summary["accuracy"]["hybrid"])
    assert second["fewer_to_cloud"] == pytest.approx(
        1 - again["cloud_answers"] / first["cloud_answers"]
    )
    assert second["accuracy_change_pts"] == pytest.approx(
        (again["accuracy_hybrid"] - first["accuracy_hybrid"]) * 100
    )
    assert second["distill"]["passed"] is True
    assert second["release_version"] == "2"
    assert 0 < second["captured_records"] == second["fleet_to_cloud"] <= second["fleet_digits"]
    assert second["recommendation"]["records"] == second["captured_records"]
    assert "the agent installs release 2 (signed update)" in output
    assert "## Second round: the fleet teaches the edge model" in markdown
    assert f"{second['fewer_to_cloud'] * 100:.1f}% fewer digits sent to the cloud" in markdown


def check_quantum_section(
    report: Path, quantum: dict[str, Any], markdown: str, output: str
) -> None:
    """The iris answers came from the hub's VQC through the agent, on the model's own held-out
    rows, and every quantum number of the report follows from them."""
    from quantum.data import load_dataset, split_dataset
    from quantum.inference import QuantumClassifier
    from quantum.schema import load_model_file

    model_path = CACHE / "quantum" / f"iris-vqc-{QUANTUM_ITERATIONS}it" / "model.qml.json"
    model = load_model_file(model_path)
    record = model.training
    assert (record.seed, record.max_iterations) == (0, QUANTUM_ITERATIONS)
    split = split_dataset(
        load_dataset("iris"), test_fraction=record.test_fraction, seed=record.seed
    )
    rows = read_answers(report / "iris-answers.csv")
    assert len(rows) == record.test_samples == len(split.y_test)
    assert [r["label"] for r in rows] == [str(v) for v in split.y_test]
    sent = np.asarray([[float(v) for v in r["features"].split()] for r in rows])
    np.testing.assert_allclose(sent, split.x_test, rtol=1e-6)
    assert {(r["served_by"], r["cloud_model"]) for r in rows} == {("cloud", "iris_vqc")}

    # The hub's answers are the model file's, computed here in-process on the same rows.
    expected = QuantumClassifier.load(model_path).predict_proba(sent.astype(np.float32))
    assert [r["prediction"] for r in rows] == [model.classes[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(
        [float(r["probability"]) for r in rows], expected.max(axis=1), atol=1e-5
    )

    correct = sum(r["prediction"] == r["label"] for r in rows)
    assert quantum["experimental"] is True
    assert (quantum["agent_model"], quantum["hub_model"]) == ("iris", "iris_vqc")
    assert (quantum["requests"], quantum["correct"]) == (len(rows), correct)
    assert quantum["cloud_answers"] == len(rows)
    assert quantum["accuracy"] == pytest.approx(correct / len(rows))
    assert quantum["test_accuracy_at_training"] == model.metrics.test_accuracy
    assert quantum["training"]["max_iterations"] == QUANTUM_ITERATIONS
    assert quantum["training"]["loss_evaluations"] == record.iterations
    latencies = [float(r["latency_ms"]) for r in rows]
    assert quantum["latency_ms"]["count"] == len(rows)
    assert quantum["latency_ms"]["p50_ms"] == pytest.approx(np.percentile(latencies, 50), abs=1e-3)
    assert quantum["latency_ms"]["p99_ms"] == pytest.approx(np.percentile(latencies, 99), abs=1e-3)

    pct = f"{correct / len(rows) * 100:.1f}%"
    assert "## The quantum classifier (experimental)" in markdown
    assert f"| `iris` on the agent | {len(rows)} | {correct} | {pct} | {len(rows)} |" in markdown
    assert f"{model.metrics.test_accuracy * 100:.1f}%" in markdown
    assert "simulator" in markdown
    assert f"{len(rows)} flowers, accuracy {correct / len(rows) * 100:.0f}%" in output
    assert f"accuracy {pct} ({correct}/{len(rows)})" in output


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

"""``python -m quantum``: train, predict and export through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from quantum.schema import load_model_file


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantum", "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_train_predict_export(tmp_path: Path) -> None:
    out = tmp_path / "model"
    trained = _run(
        "train", "--dataset", "iris", "--features", "2", "--out", str(out),
        "--feature-map", "zz_feature_map:reps=1,entanglement=linear",
        "--ansatz", "real_amplitudes:reps=1", "--max-iterations", "8", "--max-train", "30",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    model = load_model_file(out / "model.qml.json")
    assert summary["test_accuracy"] == model.metrics.test_accuracy
    assert model.circuit.feature_map == {
        "name": "zz_feature_map", "reps": 1, "entanglement": "linear",
    }  # fmt: skip
    assert model.preprocessing.components is not None  # 4 features onto 2 qubits: PCA
    assert model.training.train_samples == 30

    predicted = _run("predict", "--model", str(out), "5.1,3.5,1.4,0.2", "6.7,3.0,5.2,2.3")
    assert predicted.returncode == 0, predicted.stderr
    rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(rows) == 2
    assert all(r["label"] in model.classes for r in rows)
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-9

    bad = _run("predict", "--model", str(out), "5.1,3.5")
    assert bad.returncode == 2
    assert "the model takes [batch, 4]" in bad.stderr

    exported = _run(
        "export", "--model", str(out), "--repository", str(tmp_path / "repo"), "--name", "iris"
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "repo" / "iris" / "1" / "model.qml.json").is_file()
    config = yaml.safe_load((tmp_path / "repo" / "iris" / "config.yaml").read_text())
    assert config["backend"] == "quantum"


def test_bad_arguments_exit_2_with_a_message(tmp_path: Path) -> None:
    unknown = _run("train", "--dataset", "nope", "--features", "2", "--out", str(tmp_path))
    assert unknown.returncode == 2
    assert "unknown dataset 'nope'" in unknown.stderr
    missing = _run("predict", "--model", str(tmp_path / "absent.json"), "1,2,3,4")
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr

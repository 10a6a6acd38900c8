"""``model-convert distill`` on a tiny digits model: a candidate that learns the cloud's answers
passes the gates and is written; one that forgets the reference set beyond the margin is
refused (exit 8) and no model is written; bad inputs are usage errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.cli import main
from tests.support.models import require

pytest.importorskip("sklearn")


class Tiny:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "edge.keras"
        self.reference = root / "reference.npz"
        self.shard = root / "shard.npz"
        self.wrong_shard = root / "wrong.npz"


def _build(root: Path) -> Tiny:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from sklearn.datasets import load_digits

    keras = tf.keras
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    tiny = Tiny(root)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:150], y[:150], epochs=40, verbose=0)
    model.save(tiny.source)
    np.savez(tiny.reference, x=x[:150], y=y[:150])
    fleet_x, fleet_y = x[150:750], y[150:750]
    hard = model.predict(fleet_x, verbose=0).max(axis=1) < 0.9
    cloud = np.full((int(hard.sum()), 10), 0.01, np.float32)
    cloud[np.arange(len(cloud)), fleet_y[hard]] = 0.91  # a cloud model that is right
    np.savez(tiny.shard, **{"input.pixels": fleet_x[hard], "output.output_0": cloud})
    wrong = np.roll(cloud, 3, axis=1)  # and one that is always wrong
    np.savez(tiny.wrong_shard, **{"input.pixels": fleet_x[hard], "output.output_0": wrong})
    return tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    pytest.importorskip("tensorflow")
    return require(lambda: _build(tmp_path_factory.mktemp("tiny")))  # type: ignore[no-any-return]


def _run(tiny: Tiny, out: Path, shard: Path, *extra: str, capfd: Any) -> tuple[int, Any]:
    code = main(
        [
            "distill",
            str(tiny.source),
            "--captured",
            str(shard),
            "--reference",
            str(tiny.reference),
            "--out",
            str(out),
            "--json",
            *extra,
        ]
    )
    return code, json.loads(capfd.readouterr().out)


def test_a_candidate_that_learns_the_cloud_passes_and_is_written(
    tiny: Tiny, tmp_path: Path, capfd: Any
) -> None:
    code, report = _run(tiny, tmp_path / "out", tiny.shard, "--epochs", "40", capfd=capfd)
    assert code == 0, report
    assert report["passed"] is True
    assert report["gain"] > 0
    assert report["gain"] == pytest.approx(
        report["candidate"]["captured_agreement"] - report["current"]["captured_agreement"]
    )
    assert report["reference_drop"] <= 0.01
    assert Path(report["model"]) == tmp_path / "out" / "model.keras"
    assert (tmp_path / "out" / "model.keras").is_file()
    saved = json.loads((tmp_path / "out" / "distill-report.json").read_text())
    assert saved == report
    assert "passed" in (tmp_path / "out" / "distill-report.md").read_text()


def test_a_candidate_that_forgets_the_reference_set_is_refused(
    tiny: Tiny, tmp_path: Path, capfd: Any
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.keras").write_bytes(b"an older candidate")
    code, answer = _run(
        tiny,
        out,
        tiny.wrong_shard,
        "--capture-weight",
        "5",
        "--margin",
        "0.02",
        "--overwrite",
        capfd=capfd,
    )
    assert code == 8
    report = answer["error"]["report"]
    assert report["passed"] is False
    assert report["reference_drop"] > 0.02
    assert any("reference accuracy fell" in f for f in report["failures"])
    assert report["model"] is None
    assert not (out / "model.keras").exists()  # nothing that could be built and published
    assert "REFUSED" in (out / "distill-report.md").read_text()


def test_bad_inputs_are_usage_errors(tiny: Tiny, tmp_path: Path, capfd: Any) -> None:
    code, answer = _run(tiny, tmp_path / "o", tmp_path / "missing.npz", capfd=capfd)
    assert code == 2
    assert "does not exist" in answer["error"]["message"]
    code, answer = _run(tiny, tmp_path / "o", tiny.reference, capfd=capfd)
    assert code == 2
    assert "input." in answer["error"]["message"]

"""``model-convert distill``: the next edge model, fine-tuned on what the fleet handed over.

The hub's capture (docs/capture.md) keeps the requests devices sent to the cloud with the cloud
model's outputs. This fine-tunes the current edge model (a Keras file) on them, with the cloud's
outputs as soft targets, mixed with a labelled reference set so that it does not forget what it
knew, and then gates the result:

- on a held-out part of the captured records, the candidate must agree with the cloud's top
  class more often than the current model does, by at least ``min_gain``;
- on the reference set, its accuracy must not fall more than ``margin`` below the current
  model's. By default the whole reference set is both trained on and judged (the question is
  whether the model still knows what it knew, and more examples make a steadier gate);
  ``reference_holdout`` keeps a part out of training to judge on instead.

A candidate that passes is written as ``<out>/model.keras``, ready for ``model-convert build``;
one that fails is refused (:class:`DistillationRefusedError`, exit 8) and no model is written.
Either way ``<out>/distill-report.json`` and ``distill-report.md`` say by how much.

Only single-input classifiers are distilled. TensorFlow is imported when a distillation runs.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CalibrationError, ConversionError, SourceError
from .publish import PublishError, _base, _call

__all__ = [
    "DistillPlan",
    "DistillReport",
    "DistillationRefusedError",
    "distill",
    "download_shards",
    "load_captured",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
REPORT_JSON = "distill-report.json"
REPORT_MD = "distill-report.md"


class DistillationRefusedError(ConversionError):
    """The candidate missed a gate; nothing was written but the report."""

    exit_code = 8

    def __init__(self, message: str, *, report: DistillReport) -> None:
        super().__init__(message)
        self.report = report

    def as_json(self) -> dict[str, Any]:
        return {**super().as_json(), "report": self.report.as_json()}


@dataclass(frozen=True, kw_only=True)
class DistillPlan:
    source: Path
    """The current edge model (``.keras``)."""
    captured: Sequence[Path]
    """Capture shards (``.npz``) or folders of them."""
    reference: Path
    """``.npz`` with ``x`` (inputs) and ``y`` (integer labels)."""
    out_dir: Path
    input_name: str | None = None
    """The captured input to train on; default: the only one."""
    output_name: str | None = None
    """The captured cloud output to use as soft targets; default: the only one."""
    holdout: float = 0.2
    """Share of the captured records kept out of training, for the gate."""
    reference_holdout: float = 0.0
    """Share of the reference set kept out of training for its gate; 0: judge on all of it."""
    margin: float = 0.01
    """Largest drop in reference accuracy allowed (0.01: one point)."""
    min_gain: float = 0.0
    """How much the captured agreement must rise above the current model's (strictly)."""
    epochs: int = 30
    learning_rate: float = 1e-3
    batch_size: int = 32
    capture_weight: float = 1.0
    """Weight of a captured record against a reference one in the loss."""
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1:
            raise CalibrationError("--holdout must be in (0, 1)")
        if not 0 <= self.reference_holdout < 1:
            raise CalibrationError("--reference-holdout must be in [0, 1)")
        if self.margin < 0 or self.min_gain < 0:
            raise CalibrationError("--margin and --min-gain must be 0 or more")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise CalibrationError("--epochs, --batch-size and --learning-rate must be positive")
        if self.capture_weight <= 0:
            raise CalibrationError("--capture-weight must be above 0")


@dataclass(frozen=True, kw_only=True)
class Scores:
    captured_agreement: float
    """Top-1 agreement with the cloud on the held-out captured records."""
    reference_accuracy: float
    """Accuracy on the reference set (its held-out part with ``reference_holdout``)."""


@dataclass(frozen=True, kw_only=True)
class DistillReport:
    passed: bool
    failures: list[str]
    current: Scores
    candidate: Scores
    gain: float
    reference_drop: float
    margin: float
    min_gain: float
    captured_records: int
    captured_train: int
    captured_holdout: int
    reference_train: int
    reference_holdout: int
    epochs: int
    source: str
    model: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        verdict = "passed" if self.passed else "REFUSED: " + "; ".join(self.failures)
        return (
            "# Distillation report\n\n"
            f"Source `{self.source}`, {self.epochs} epochs on {self.captured_train} captured "
            f"records (cloud outputs as soft targets) and {self.reference_train} reference "
            f"examples. Gates on {self.captured_holdout} held-out captured records and "
            f"{self.reference_holdout} reference examples: **{verdict}**.\n\n"
            "| | current | candidate | change | gate |\n|---|---:|---:|---:|---|\n"
            f"| agreement with the cloud (held-out captured) | "
            f"{self.current.captured_agreement:.2%} | {self.candidate.captured_agreement:.2%} | "
            f"{self.gain * 100:+.2f} pts | above +{self.min_gain * 100:.2f} pts |\n"
            f"| accuracy (reference set) | {self.current.reference_accuracy:.2%} | "
            f"{self.candidate.reference_accuracy:.2%} | {-self.reference_drop * 100:+.2f} pts | "
            f"drop at most {self.margin * 100:.2f} pts |\n\n"
            + (f"Model: `{self.model}`\n" if self.model else "No model was written.\n")
        )


# -- data ------------------------------------------------------------------------------------


def _shard_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.npz") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise CalibrationError(f"{path} does not exist")
    if not files:
        raise CalibrationError("no capture shards (.npz) found in " + ", ".join(map(str, paths)))
    return files


def _only(keys: list[str], prefix: str, wanted: str | None, file: Path) -> str:
    names = [k.removeprefix(prefix) for k in keys if k.startswith(prefix)]
    if wanted is not None:
        if wanted not in names:
            raise CalibrationError(f"{file.name} has no {prefix}{wanted} (it has {names})")
        return prefix + wanted
    if len(names) != 1:
        raise CalibrationError(
            f"{file.name} has {len(names)} {prefix}* arrays ({names}); name one with "
            f"--{prefix.rstrip('.')}"
        )
    return prefix + names[0]


def load_captured(
    paths: Sequence[Path], input_name: str | None = None, output_name: str | None = None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Inputs and cloud outputs of every record in the shards (rows with non-finite values are
    left out)."""
    xs, ys = [], []
    for file in _shard_files(paths):
        try:
            with np.load(file, allow_pickle=False) as data:
                keys = list(data.files)
                x = np.asarray(data[_only(keys, "input.", input_name, file)], np.float32)
                y = np.asarray(data[_only(keys, "output.", output_name, file)], np.float32)
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{file} is not a capture shard: {exc}") from exc
        if len(x) != len(y):
            raise CalibrationError(f"{file}: {len(x)} inputs but {len(y)} outputs")
        xs.append(x)
        ys.append(y.reshape(len(y), -1))
    x, y = np.concatenate(xs), np.concatenate(ys)
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1) & np.isfinite(y).all(axis=1)
    return x[finite], y[finite]


def _load_reference(path: Path) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"]).astype(np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise CalibrationError(
            f"{path} must be an .npz with x (inputs) and y (integer labels): {exc}"
        ) from exc
    if len(x) != len(y) or len(x) < 2:
        raise CalibrationError(f"{path}: x and y need the same length, at least 2")
    return x, y


def _as_probabilities(scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Soft targets: the cloud's rows as they are when they are distributions, else softmax."""
    rows = scores.astype(np.float64)
    if np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1.0, atol=0.02):
        return np.asarray(rows / rows.sum(axis=1, keepdims=True))
    exp = np.exp(rows - rows.max(axis=1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def _split(n: int, holdout: float, rng: np.random.Generator) -> tuple[Any, Any]:
    order = rng.permutation(n)
    held = max(1, round(n * holdout))
    return order[held:], order[:held]


# -- hub -------------------------------------------------------------------------------------


def download_shards(hub: str, model: str, folder: Path, *, api_key: str | None = None) -> int:
    """Fetch every capture shard of ``model`` from a hub into ``folder``; how many."""
    base = _base(hub)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    quoted = urllib.parse.quote(model, safe="")
    listed = _call(
        urllib.request.Request(f"{base}/v1/capture/shards?model={quoted}", headers=headers)
    )
    folder.mkdir(parents=True, exist_ok=True)
    shards = listed.get("shards", [])
    for entry in shards:
        name = str(entry["shard"])
        url = f"{base}/v1/capture/shards/{quoted}/{urllib.parse.quote(name, safe='')}"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=60
            ) as reply:
                (folder / name).write_bytes(reply.read())
        except OSError as exc:
            raise PublishError(f"cannot download {url}: {exc}") from exc
    return len(shards)


# -- training --------------------------------------------------------------------------------


def _keras() -> Any:
    from ._libs import import_tensorflow

    return import_tensorflow().keras


def distill(plan: DistillPlan) -> DistillReport:
    """Fine-tune, gate, and write the candidate (and the report); raises
    :class:`DistillationRefusedError` when a gate fails."""
    target = plan.out_dir / MODEL_FILE
    if target.exists() and not plan.overwrite:
        raise CalibrationError(f"{target} exists; pass --overwrite to replace it")
    x_cap, y_cap = load_captured(plan.captured, plan.input_name, plan.output_name)
    if len(x_cap) < 2:
        raise CalibrationError(f"{len(x_cap)} usable captured records; at least 2 are needed")
    x_ref, y_ref = _load_reference(plan.reference)
    soft = _as_probabilities(y_cap)
    classes = soft.shape[1]
    if int(y_ref.max()) >= classes or int(y_ref.min()) < 0:
        raise CalibrationError(f"reference labels must be in [0, {classes}) like the cloud's")
    rng = np.random.default_rng(plan.seed)
    cap_train, cap_hold = _split(len(x_cap), plan.holdout, rng)
    if plan.reference_holdout > 0:
        ref_train, ref_hold = _split(len(x_ref), plan.reference_holdout, rng)
    else:
        ref_train = ref_hold = np.arange(len(x_ref))

    keras = _keras()
    try:
        current = keras.models.load_model(str(plan.source), compile=False)
    except Exception as exc:
        raise SourceError(f"{plan.source} cannot be loaded as a Keras model: {exc}") from exc
    if len(current.inputs) != 1 or len(current.outputs) != 1:
        raise SourceError(f"{plan.source.name}: only single-input, single-output models distil")
    if tuple(current.inputs[0].shape[1:]) != x_cap.shape[1:]:
        raise CalibrationError(
            f"captured inputs are {x_cap.shape[1:]}, the model takes "
            f"{tuple(current.inputs[0].shape[1:])}"
        )

    def scores(model: Any) -> Scores:
        cap = model.predict(x_cap[cap_hold], verbose=0).argmax(axis=1)
        ref = model.predict(x_ref[ref_hold], verbose=0).argmax(axis=1)
        return Scores(
            captured_agreement=float(np.mean(cap == soft[cap_hold].argmax(axis=1))),
            reference_accuracy=float(np.mean(ref == y_ref[ref_hold])),
        )

    before = scores(current)
    keras.utils.set_random_seed(plan.seed)
    candidate = keras.models.clone_model(current)
    candidate.set_weights(current.get_weights())
    probe = current.predict(x_ref[:8], verbose=0)
    from_logits = not (np.all(probe >= 0) and np.allclose(probe.sum(axis=1), 1.0, atol=1e-3))
    candidate.compile(
        keras.optimizers.Adam(plan.learning_rate),
        keras.losses.CategoricalCrossentropy(from_logits=from_logits),
    )
    x_train = np.concatenate([x_ref[ref_train], x_cap[cap_train]])
    y_train = np.concatenate(
        [np.eye(classes, dtype=np.float32)[y_ref[ref_train]], soft[cap_train].astype(np.float32)]
    )
    weights = np.concatenate(
        [
            np.ones(len(ref_train), np.float32),
            np.full(len(cap_train), plan.capture_weight, np.float32),
        ]
    )
    logger.info("distilling on %d captured and %d reference rows", len(cap_train), len(ref_train))
    candidate.fit(
        x_train,
        y_train,
        sample_weight=weights,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        shuffle=True,
        verbose=0,
    )
    after = scores(candidate)
    gain = after.captured_agreement - before.captured_agreement
    drop = before.reference_accuracy - after.reference_accuracy
    failures = []
    if not gain > plan.min_gain:
        failures.append(
            f"agreement with the cloud on held-out captured records went "
            f"{before.captured_agreement:.2%} -> {after.captured_agreement:.2%} "
            f"({gain * 100:+.2f} pts), needs more than +{plan.min_gain * 100:.2f}"
        )
    if drop > plan.margin + 1e-12:
        failures.append(
            f"reference accuracy fell {before.reference_accuracy:.2%} -> "
            f"{after.reference_accuracy:.2%} ({drop * 100:.2f} pts), more than the margin "
            f"of {plan.margin * 100:.2f}"
        )
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    report = DistillReport(
        passed=not failures,
        failures=failures,
        current=before,
        candidate=after,
        gain=gain,
        reference_drop=drop,
        margin=plan.margin,
        min_gain=plan.min_gain,
        captured_records=len(x_cap),
        captured_train=len(cap_train),
        captured_holdout=len(cap_hold),
        reference_train=len(ref_train),
        reference_holdout=len(ref_hold),
        epochs=plan.epochs,
        source=str(plan.source),
        model=None if failures else str(target),
    )
    if failures:
        target.unlink(missing_ok=True)
    else:
        candidate.save(str(target))
    (plan.out_dir / REPORT_JSON).write_text(json.dumps(report.as_json(), indent=2) + "\n")
    (plan.out_dir / REPORT_MD).write_text(report.markdown())
    if failures:
        raise DistillationRefusedError(
            "the distilled model is refused: " + "; ".join(failures), report=report
        )
    return report

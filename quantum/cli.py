"""``python -m quantum``: train, evaluate, predict, and add a model to a hub repository."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import QuantumError
from .schema import MODEL_FILE

__all__ = ["main", "parse_circuit"]

logger = logging.getLogger(__name__)


def parse_circuit(text: str) -> dict[str, Any]:
    """``zz_feature_map:reps=2,entanglement=linear`` -> ``{"name": ..., "reps": 2, ...}``."""
    name, _, rest = text.partition(":")
    spec: dict[str, Any] = {"name": name.strip()}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r}: expected key=value")
        spec[key.strip()] = yaml.safe_load(value)
    return spec


def parse_simulator(text: str) -> Any:
    """``statevector``, ``aer``, or either with ``:SHOTS``."""
    from .inference import SimulatorOptions

    name, _, shots = text.partition(":")
    try:
        return SimulatorOptions(simulator=name, shots=int(shots) if shots else None, seed=0)  # type: ignore[arg-type]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_path(path: Path) -> Path:
    return path / MODEL_FILE if path.is_dir() else path


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset,
        num_qubits=args.features,
        out_dir=args.out,
        label_column=args.label_column,
        feature_map=args.feature_map,
        ansatz=args.ansatz,
        optimizer=args.optimizer,
        max_iterations=args.max_iterations,
        seed=args.seed,
        test_fraction=args.test_fraction,
        max_train=args.max_train,
    )

    def progress(step: int, loss: float) -> None:
        if step % 10 == 0:
            logger.info("evaluation %d: loss %.4f", step, loss)

    result = train(config, progress=progress)
    print(
        json.dumps(
            {
                "model": str(result.path),
                "train_accuracy": result.model.metrics.train_accuracy,
                "test_accuracy": result.model.metrics.test_accuracy,
                "duration_s": round(result.model.training.duration_s, 2),
            }
        )
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    evaluation = evaluate(_model_path(args.model), simulators=args.simulator or None)
    print(format_table(evaluation))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference import QuantumClassifier, SimulatorOptions

    classifier = QuantumClassifier.load(
        _model_path(args.model), args.simulator or SimulatorOptions()
    )
    rows = [[float(v) for v in row.split(",")] for row in args.features]
    probabilities = classifier.predict_proba(rows)
    for row in probabilities:
        print(
            json.dumps(
                {
                    "label": classifier.classes[int(row.argmax())],
                    "probabilities": dict(zip(classifier.classes, map(float, row), strict=True)),
                }
            )
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from .schema import load_model_file

    source = _model_path(args.model)
    load_model_file(source)  # refuse to install a file the hub would not load
    folder = args.repository / args.name
    target = folder / str(args.version) / MODEL_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    config: dict[str, Any] = {
        "backend": "quantum",
        "max_batch_size": args.max_batch_size,
        "dynamic_batching": {"max_queue_delay_us": 1000},
    }
    if args.simulator is not None:
        config["parameters"] = {
            "simulator": args.simulator.simulator,
            **({"shots": args.simulator.shots} if args.simulator.shots else {}),
        }
    if not (folder / "config.yaml").exists() or args.overwrite_config:
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(target)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quantum", description=__doc__)
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VQC and write model.qml.json")
    t.add_argument("--dataset", required=True, help="iris, digits or a CSV file (header row)")
    t.add_argument("--features", type=int, required=True, help="qubits: features after PCA")
    t.add_argument("--out", type=Path, required=True, help="folder for model.qml.json")
    t.add_argument("--label-column", help="CSV column of the labels (default: the last)")
    t.add_argument(
        "--feature-map",
        type=parse_circuit,
        default=parse_circuit("z_feature_map:reps=2"),
        help="NAME[:key=value,...]: zz_feature_map, z_feature_map, pauli_feature_map",
    )
    t.add_argument(
        "--ansatz",
        type=parse_circuit,
        default=parse_circuit("real_amplitudes:reps=3,entanglement=full"),
        help="NAME[:key=value,...]: real_amplitudes, efficient_su2",
    )
    t.add_argument("--optimizer", default="cobyla", help="cobyla, spsa, nelder_mead, l_bfgs_b")
    t.add_argument("--max-iterations", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--test-fraction", type=float, default=0.3)
    t.add_argument("--max-train", type=int, help="train on at most this many rows (stratified)")
    t.set_defaults(run=_train)

    e = sub.add_parser("evaluate", help="test accuracy and time per sample beside baselines")
    e.add_argument("--model", type=Path, required=True, help="model.qml.json or its folder")
    e.add_argument(
        "--simulator",
        type=parse_simulator,
        action="append",
        help="statevector, aer, or NAME:SHOTS; repeat for several rows (default statevector)",
    )
    e.set_defaults(run=_evaluate)

    p = sub.add_parser("predict", help="classify feature rows given on the command line")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--simulator", type=parse_simulator)
    p.add_argument("features", nargs="+", help="comma-separated feature values, one row each")
    p.set_defaults(run=_predict)

    x = sub.add_parser("export", help="add the model to a hub model repository")
    x.add_argument("--model", type=Path, required=True)
    x.add_argument("--repository", type=Path, required=True)
    x.add_argument("--name", required=True)
    x.add_argument("--version", type=int, default=1)
    x.add_argument("--max-batch-size", type=int, default=64)
    x.add_argument("--simulator", type=parse_simulator)
    x.add_argument("--overwrite-config", action="store_true")
    x.set_defaults(run=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("qiskit").setLevel(logging.WARNING)
    try:
        code: int = args.run(args)
    except (QuantumError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code

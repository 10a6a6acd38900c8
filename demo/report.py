"""The summary table (printed) and ``report.md``, ``summary.json``, ``answers.csv`` (the digits)
and ``iris-answers.csv`` (the quantum classifier)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from protocols import ArtifactManifest

from .analysis import Latency, QuantumSummary, Summary
from .artifacts import DemoModels
from .loop import GOAL_ACCURACY_PTS, GOAL_FEWER_TO_CLOUD, SecondRound
from .quantum import QuantumPass
from .stream import Recording

REPORT = "report.md"
SUMMARY = "summary.json"
ANSWERS = "answers.csv"
IRIS_ANSWERS = "iris-answers.csv"
LATENCY_PLOT = "latency.png"
ACCURACY_PLOT = "accuracy-vs-cloud-share.png"


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What the report says about how the numbers were made."""

    models: DemoModels
    machine: str


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cloud_reasons(summary: Summary) -> str:
    return ", ".join(f"{name} {count}" for name, count in summary.cloud_reasons.items())


def _edge_reasons(summary: Summary) -> str:
    return f"degraded {summary.degraded} (cloud unavailable)" if summary.degraded else ""


def _table(rows: list[list[str]], *, right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def summary_text(summary: Summary) -> str:
    """The table printed at the end of a run."""
    served = _table(
        [
            ["", "requests", "share", "reasons"],
            [
                "answered at the edge",
                str(summary.edge_answers),
                _pct(summary.edge_share),
                _edge_reasons(summary),
            ],
            [
                "answered in the cloud",
                str(summary.cloud_answers),
                _pct(summary.cloud_share),
                _cloud_reasons(summary),
            ],
            ["total", str(summary.requests), "100.0%", ""],
        ],
        right={1, 2},
    )
    accuracy = _table(
        [
            ["accuracy", "edge only", "cloud only", "hybrid"],
            [
                "",
                _pct(summary.accuracy_edge_only),
                _pct(summary.accuracy_cloud_only),
                _pct(summary.accuracy_hybrid),
            ],
        ],
        right={1, 2, 3},
    )

    def row(name: str, value: Latency) -> list[str]:
        return [name, str(value.count), _ms(value.p50_ms), _ms(value.p99_ms)]

    latency = _table(
        [
            ["latency (ms)", "n", "p50", "p99"],
            row("local answers", summary.latency_local),
            row("fallback answers", summary.latency_fallback),
        ],
        right={1, 2, 3},
    )
    head = (
        f"digits through the edge agent, on_low_confidence at {summary.threshold:g} "
        f"(replay agrees on {summary.replay_agrees}/{summary.requests})"
    )
    return "\n".join([head, "", *served, "", *accuracy, "", *latency])


def _recommended(second: SecondRound) -> str:
    found = second.recommendation.get("recommended")
    if not found:
        return "none (no records with a device answer)"
    return (
        f"{found['threshold']:.3f} (keeps {second.recommendation['target_accuracy']:.0%} "
        f"agreement with the cloud on {second.recommendation['records']} captured digits "
        f"while sending {found['cloud_share']:.1%} of them to the cloud)"
    )


def second_round_text(second: SecondRound) -> str:
    """The second round's lines printed at the end of a run."""
    rows = _table(
        [
            ["held-out digits", "to the cloud", "share", "hybrid accuracy"],
            *(
                [
                    f"edge release {name}",
                    str(r.cloud_answers),
                    _pct(r.cloud_share),
                    _pct(r.accuracy),
                ]
                for name, r in (("1", second.first), (second.release_version, second.second))
            ),
        ],
        right={1, 2, 3},
    )
    verdict = "met" if second.goals_met else "NOT met"
    return "\n".join(
        [
            (
                f"second round at the same threshold {second.threshold:g}: the fleet handed over "
                f"{second.fleet_to_cloud} of {second.fleet_digits} digits, the hub captured "
                f"{second.captured_records}, distilled into release {second.release_version}"
            ),
            "",
            *rows,
            "",
            (
                f"{second.fewer_to_cloud:.1%} fewer held-out digits to the cloud "
                f"(goal {GOAL_FEWER_TO_CLOUD:.0%}), hybrid accuracy {second.accuracy_change_pts:+.2f} "
                f"points (goal {GOAL_ACCURACY_PTS:+.2f} or better): {verdict}"
            ),
            f"recommended threshold from the fleet's records: {_recommended(second)}",
        ]
    )


def second_round_markdown(second: SecondRound) -> str:
    d = second.distill
    table = _md_table(
        ["edge release", "sent to the cloud", "share", "hybrid accuracy"],
        [
            [
                f"{name} ({what})",
                str(r.cloud_answers),
                _pct(r.cloud_share),
                _pct(r.accuracy),
            ]
            for name, what, r in (
                ("1", "trained on 500 digits", second.first),
                (second.release_version, "distilled from the fleet", second.second),
            )
        ],
    )
    curve = _md_table(
        ["threshold", "handed-over digits still sent", "agreement with the cloud"],
        [
            [f"{p['threshold']:.3f}", _pct(p["cloud_share"]), _pct(p["accuracy"])]
            for p in second.recommendation.get("curve", [])[
                :: max(1, len(second.recommendation.get("curve", [])) // 8)
            ]
        ],
    )
    verdict = "met" if second.goals_met else "**not met**"
    return f"""## Second round: the fleet teaches the edge model

The first edge release learnt from 500 training digits. A second device streamed the other
{second.fleet_digits} training digits through the same release and rule; it handed
{second.fleet_to_cloud} to the cloud, and the hub captured {second.captured_records} of them
with its answers (`capture:` on `digits-cloud`; the measuring device opted out, so the held-out
digits were never captured). `model-convert distill` fine-tuned the edge model on those records
with the cloud's outputs as soft targets, mixed with the 500 digits as the reference set, and
gated it on held-out parts of both: agreement with the cloud
{d["current"]["captured_agreement"]:.1%} -> {d["candidate"]["captured_agreement"]:.1%}, reference
accuracy {d["current"]["reference_accuracy"]:.1%} -> {d["candidate"]["reference_accuracy"]:.1%}
(margin {d["margin"] * 100:.1f} points). `model-convert build` converted and validated it,
`sign` and `publish` released it as version {second.release_version}, and the agent installed it
through the signed update path (signature, sha256, smoke test, health window).

The same held-out digits, same threshold **{second.threshold:g}**:

{table}

{second.fewer_to_cloud:.1%} fewer digits sent to the cloud (goal at least
{GOAL_FEWER_TO_CLOUD:.0%}); hybrid accuracy {second.accuracy_change_pts:+.2f} points (goal
{GOAL_ACCURACY_PTS:+.2f} or better): {verdict}.

The hub's threshold recommendation for release 1 on `rpi4`, from the captured records alone
(the cloud's answer as the reference): {_recommended(second)}. Part of its curve:

{curve}
"""


def _at_training(quantum: QuantumSummary) -> str:
    value = quantum.test_accuracy_at_training
    return "not recorded" if value is None else _pct(value)


def _evaluations(quantum: QuantumSummary) -> str:
    return "" if quantum.evaluations is None else f" ({quantum.evaluations} loss evaluations)"


def quantum_text(quantum: QuantumSummary) -> str:
    """The quantum classifier's lines printed at the end of a run."""
    return (
        f"quantum classifier (experimental, a simulator in the hub): {quantum.requests} iris "
        f"rows through the agent, {quantum.cloud_answers} answered in the cloud\n"
        f"accuracy {_pct(quantum.accuracy)} ({quantum.correct}/{quantum.requests}), "
        f"{_at_training(quantum)} on the same rows at training "
        f"({quantum.max_iterations} COBYLA iterations)\n"
        f"latency p50 {_ms(quantum.latency.p50_ms)} ms, p99 {_ms(quantum.latency.p99_ms)} ms"
    )


def quantum_markdown(quantum: QuantumSummary) -> str:
    table = _md_table(
        ["", "rows", "correct", "accuracy", "answered in the cloud", "p50 (ms)", "p99 (ms)"],
        [
            [
                f"`{quantum.agent_model}` on the agent",
                str(quantum.requests),
                str(quantum.correct),
                _pct(quantum.accuracy),
                str(quantum.cloud_answers),
                _ms(quantum.latency.p50_ms),
                _ms(quantum.latency.p99_ms),
            ]
        ],
    )
    return f"""## The quantum classifier (experimental)

A variational quantum classifier on scikit-learn's iris: 4 qubits, qiskit-machine-learning's
VQC, {quantum.max_iterations} COBYLA iterations{_evaluations(quantum)} on
{quantum.train_samples} training rows ({quantum.training_s:.0f} s to train), served by the hub's `quantum` backend as
`{quantum.hub_model}`. The circuit runs on a classical statevector simulator in the hub, not on
quantum hardware. The agent has no iris model on the device: `{quantum.agent_model}` is a remote
model that it hands to the hub over MQTT. One request per held-out row (the test split the
model was trained beside):

{table}

Test accuracy recorded in the model file at training, on the same rows:
**{_at_training(quantum)}**. Experimental: on iris it trails simple classical models (see
`docs/quantum.md`), and a short training budget lowers it further. Every row's answer is in
`{IRIS_ANSWERS}`.
"""


def _md_table(header: list[str], rows: list[list[str]], *, numeric: int | None = None) -> str:
    """Columns 1 to ``numeric`` (all but the first by default) are right-aligned."""
    numeric = len(header) - 1 if numeric is None else numeric
    align = ["---"] + ["---:"] * numeric + ["---"] * (len(header) - 1 - numeric)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(summary: Summary, info: RunInfo, quantum: QuantumSummary, second: SecondRound) -> str:
    edge, cloud = info.models.edge.manifest, info.models.cloud.manifest
    training = info.models.training
    served = _md_table(
        ["answered", "requests", "share", "reasons"],
        [
            [
                "at the edge",
                str(summary.edge_answers),
                _pct(summary.edge_share),
                _edge_reasons(summary),
            ],
            [
                "in the cloud",
                str(summary.cloud_answers),
                _pct(summary.cloud_share),
                _cloud_reasons(summary),
            ],
            ["total", str(summary.requests), "100.0%", ""],
        ],
        numeric=2,
    )
    accuracy = _md_table(
        ["", "edge only", "cloud only", "hybrid"],
        [
            [
                "accuracy",
                _pct(summary.accuracy_edge_only),
                _pct(summary.accuracy_cloud_only),
                _pct(summary.accuracy_hybrid),
            ]
        ],
    )
    latency = _md_table(
        ["latency (ms, at the caller)", "n", "p50", "p99"],
        [
            [name, str(v.count), _ms(v.p50_ms), _ms(v.p99_ms)]
            for name, v in (
                ("hybrid: local answers", summary.latency_local),
                ("hybrid: fallback answers", summary.latency_fallback),
                ("edge only", summary.latency_edge_only),
                ("cloud only", summary.latency_cloud_only),
            )
        ],
    )
    replay = _md_table(
        ["threshold", "sent to the cloud", "accuracy"],
        [
            [
                f"**{p.threshold:g}**" if p.threshold == summary.threshold else f"{p.threshold:g}",
                _pct(p.cloud_share),
                _pct(p.accuracy),
            ]
            for p in summary.replay
        ],
    )

    def model_line(role: str, served_as: str, manifest: ArtifactManifest, key: str) -> str:
        top1 = manifest.validation.outputs[0].top1_agreement
        agreement = "" if top1 is None else f", top-1 agreement with Keras {_pct(top1)}"
        return (
            f"- {role}: `{served_as}`, {training[key]['parameters']:,} parameters, "
            f"profile `{manifest.profile}` ({manifest.format} {manifest.precision}, "
            f"{manifest.size_bytes / 1024:.1f} KiB{agreement} on "
            f"{manifest.validation.samples} digits)"
        )

    return f"""# Demo report

{summary.requests} digits from scikit-learn's test split, one request each, through the edge
agent's local API (`EdgeClient`). The agent answers with the edge model and hands a request to
the hub over MQTT when the edge model's top probability is under **{summary.threshold:g}**
(`on_low_confidence`). The same digits then went through the edge model alone and the cloud
model alone (a remote model on the agent, answered by the hub).

{model_line("edge model", "digits", edge, "edge")}
{model_line("cloud model", "digits-cloud", cloud, "cloud")}
- quantum classifier (experimental): `{quantum.agent_model}`, {quantum.requests} iris rows answered in the cloud by a simulator, accuracy {_pct(quantum.accuracy)} (see below)
- machine: {info.machine}

## Where requests were answered

{served}

## Accuracy

{accuracy}

## Latency

{latency}

Local answers run the fp16 TFLite model in the agent; fallback answers also go through
Mosquitto and the hub's ONNX Runtime backend, and include the local run that decided to hand
them over.

![latency]({LATENCY_PLOT})

## Accuracy against the share sent to the cloud

Replayed from the recorded answers: at a threshold t, a digit whose edge confidence is under t
takes the cloud model's answer. At the run's threshold the replay reproduces the agent's
routing and answer for {summary.replay_agrees} of {summary.requests} digits.

{replay}

![accuracy against cloud share]({ACCURACY_PLOT})

{second_round_markdown(second)}

{quantum_markdown(quantum)}

Every figure here is computed from `{ANSWERS}` (one row per digit: the label, where the hybrid
answer came from and why, and each pass's prediction, confidence and latency) and
`{IRIS_ANSWERS}`; `{SUMMARY}` holds the same numbers for programs.
"""


def write(
    report_dir: Path,
    summary: Summary,
    recording: Recording,
    info: RunInfo,
    quantum: QuantumSummary,
    iris: QuantumPass,
    second: SecondRound,
) -> list[Path]:
    from . import plots

    report_dir.mkdir(parents=True, exist_ok=True)
    recording.write_csv(report_dir / ANSWERS)
    iris.write_csv(report_dir / IRIS_ANSWERS)
    numbers = {
        **summary.as_dict(),
        "quantum": quantum.as_dict(),
        "second_round": second.as_dict(),
    }
    (report_dir / SUMMARY).write_text(json.dumps(numbers, indent=2) + "\n")
    plots.latency(recording, summary, report_dir / LATENCY_PLOT)
    plots.accuracy_vs_cloud_share(summary, report_dir / ACCURACY_PLOT)
    (report_dir / REPORT).write_text(markdown(summary, info, quantum, second))
    names = (REPORT, SUMMARY, ANSWERS, IRIS_ANSWERS, LATENCY_PLOT, ACCURACY_PLOT)
    return [report_dir / name for name in names]

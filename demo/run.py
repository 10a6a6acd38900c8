"""The whole run, one progress line per step; every process started is stopped on the way out,
whether the run succeeds, fails or is interrupted."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.client import EdgeClient
from edge_agent.errors import ClientError

from . import analysis, artifacts, loop, report, services
from . import quantum as quantum_demo
from .analysis import QuantumSummary, Summary
from .errors import DemoError
from .options import CLOUD_PROFILE, EDGE_PROFILE, DemoOptions
from .processes import Supervisor
from .progress import Progress
from .stream import Pass, Recording, stream

STEPS = 17


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    summary: Summary
    quantum: QuantumSummary
    second_round: loop.SecondRound
    files: list[Path]
    elapsed_s: float


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def check_requirements() -> None:
    """What the run needs beyond the project's own extras, checked before any work is done."""
    if importlib.util.find_spec("matplotlib") is None:
        raise DemoError(
            "matplotlib is not installed (the report's plots need it): "
            f"{sys.executable} -m pip install 'matplotlib>=3.8', or run `make demo`"
        )
    if services.find_mosquitto() is None and services.find_amqtt() is None:
        raise DemoError(services.NO_BROKER)
    for module, extra in (("qiskit_machine_learning", "quantum"), ("sklearn", "")):
        if importlib.util.find_spec(module) is None:
            what = f"'hybrid-inference[{extra}]'" if extra else "scikit-learn"
            raise DemoError(
                f"{module} is not installed (the quantum classifier on iris needs it): "
                f"{sys.executable} -m pip install {what}, or run `make demo`"
            )


def run(options: DemoOptions, progress: Progress | None = None) -> DemoResult:
    check_requirements()
    progress = progress or Progress(STEPS)
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="hybrid-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(work / "logs", stop_timeout_s=options.stop_timeout_s)
    outcome = "failed"
    try:
        result = _run(options, progress, work, supervisor)
        outcome = "succeeded"
        return result
    except KeyboardInterrupt:
        outcome = "interrupted"
        running = len(supervisor.children)
        if running:
            progress.line(f"stopping {running} process(es)")
        raise
    finally:
        supervisor.stop_all()
        if options.work_dir is None and outcome != "failed":
            shutil.rmtree(work, ignore_errors=True)
        elif outcome == "failed":
            progress.line(f"the processes' logs are kept in {work / 'logs'}")


def _run(options: DemoOptions, progress: Progress, work: Path, sup: Supervisor) -> DemoResult:
    with progress.step("training a small edge model and a larger cloud model on the digits"):
        models_dir, cached = artifacts.ensure_trained(options.cache_dir, sup)
        progress.note = "cached" if cached else f"saved in {models_dir}"
    with progress.step(f"model-convert: edge to {EDGE_PROFILE}, cloud to {CLOUD_PROFILE}"):
        artifacts_dir, cached = artifacts.ensure_converted(options.cache_dir, models_dir, sup)
        models = artifacts.load(models_dir, artifacts_dir)
        sizes = (
            f"{models.edge.manifest.size_bytes / 1024:.0f} KiB .tflite, "
            f"{models.cloud.manifest.size_bytes / 1024:.0f} KiB .onnx"
        )
        progress.note = f"cached, {sizes}" if cached else sizes
    iterations = options.quantum_iterations
    with progress.step(f"training the quantum classifier on iris (4 qubits, {iterations} its)"):
        quantum_dir, cached = artifacts.ensure_quantum(options.cache_dir, sup, iterations)
        vqc = quantum_demo.load(quantum_dir)
        at_training = "-" if vqc.test_accuracy is None else f"{vqc.test_accuracy * 100:.0f}%"
        trained = f"test accuracy at training {at_training}, {vqc.training_s:.0f} s to train"
        progress.note = f"cached, {trained}" if cached else trained
    limit = min(options.limit or len(models.y_test), len(models.y_test))
    x, labels = models.x_test[:limit], [int(v) for v in models.y_test[:limit]]

    with progress.step("starting the MQTT broker"):
        broker = services.start_broker(sup, work, options.start_timeout_s, options.broker)
        progress.note = str(broker)
    with progress.step("starting cloud-hub serve with its MQTT bridge"):
        repository = services.write_repository(work / "repository", models, vqc.path)
        hub = services.start_hub(sup, work, repository, broker, options.start_timeout_s)
        progress.note = f"http://{hub}, models {services.HUB_MODEL}, {services.QUANTUM_HUB_MODEL}"
    with progress.step(f"starting edge-agent run (on_low_confidence < {options.threshold:g})"):
        from converters.signing import generate_keypair

        keys = generate_keypair(work / "keys" / "release", overwrite=True)
        config = services.agent_config(
            work, models, broker, options.threshold, hub=hub, trusted_key=keys.public_base64
        )
        agent = services.start_agent(sup, work, config, options.start_timeout_s)
        fleet_config = services.fleet_agent_config(work, models, broker, options.threshold)
        fleet = services.start_agent(
            sup, work, fleet_config, options.start_timeout_s, name="edge-agent-fleet"
        )
        progress.note = f"http://{agent}, and the fleet's device on http://{fleet}"

    try:
        with EdgeClient(agent) as client:
            with progress.step(f"streaming {limit} digits through the agent"):
                hybrid = stream(client, services.HYBRID_MODEL, x, "hybrid")
                at_cloud = hybrid.served_by.count("cloud")
                progress.note = f"{limit - at_cloud} answered at the edge, {at_cloud} in the cloud"
            with progress.step("the same digits on the edge model alone"):
                edge = stream(client, services.EDGE_ONLY_MODEL, x, "edge")
            with progress.step("the same digits on the cloud model alone, through the hub"):
                cloud = stream(client, services.CLOUD_ONLY_MODEL, x, "cloud")
    except ClientError as exc:
        raise DemoError(f"the agent did not answer a digit: {exc}") from exc
    recording = Recording(labels=labels, hybrid=hybrid, edge=edge, cloud=cloud)
    try:
        with (
            EdgeClient(agent) as client,
            progress.step("the quantum classifier on iris through the agent and the hub"),
        ):
            iris = quantum_demo.stream(client, services.QUANTUM_MODEL, vqc)
            quantum = analysis.summarize_quantum(iris, vqc, services.QUANTUM_HUB_MODEL)
            progress.note = (
                f"{quantum.requests} flowers, accuracy {quantum.accuracy * 100:.0f}%, "
                f"p50 {quantum.latency.p50_ms:.1f} ms, {quantum.cloud_answers} in the cloud"
            )
    except ClientError as exc:
        raise DemoError(f"the agent did not answer an iris row: {exc}") from exc

    second_round = _second_round(
        options, progress, work, sup, models_dir, hub, fleet, agent, keys.private_path, hybrid
    )

    with progress.step("stopping the agents, the hub and the broker"):
        killed = sup.stop_all()
        progress.note = "all stopped cleanly"
        if killed:
            progress.note = f"killed after {options.stop_timeout_s:g} s: {', '.join(killed)}"
    with progress.step(f"writing the report to {options.report_dir}/"):
        summary = analysis.summarize(recording, options.threshold)
        info = report.RunInfo(models=models, machine=machine())
        files = report.write(
            options.report_dir, summary, recording, info, quantum, iris, second_round
        )
    progress.line("")
    progress.line(report.summary_text(summary))
    progress.line("")
    progress.line(report.second_round_text(second_round))
    progress.line("")
    progress.line(report.quantum_text(quantum))
    progress.line("")
    progress.line(f"report: {options.report_dir / report.REPORT} ({progress.elapsed_s:.0f} s)")
    return DemoResult(
        summary=summary,
        quantum=quantum,
        second_round=second_round,
        files=files,
        elapsed_s=progress.elapsed_s,
    )


def _second_round(
    options: DemoOptions,
    progress: Progress,
    work: Path,
    sup: Supervisor,
    models_dir: Path,
    hub: str,
    fleet: str,
    agent: str,
    key: Path,
    first: Pass,
) -> loop.SecondRound:
    """The fleet's fallbacks captured, distilled, built, signed, published and installed; the
    held-out digits through release 2 (see :mod:`demo.loop`)."""
    with np.load(models_dir / "digits.npz") as data:
        x_fleet, x_test = np.asarray(data["x_fleet"]), np.asarray(data["x_test"])
        y_test = [int(v) for v in data["y_test"]]
        np.savez(work / "reference.npz", x=data["x_reference"], y=data["y_reference"])
        np.savez(work / "samples.npz", pixels=x_test)
    limit = min(options.limit or len(y_test), len(y_test))
    x, labels = x_test[:limit], y_test[:limit]
    try:
        with (
            progress.step(
                f"the fleet's device streams {len(x_fleet)} training digits release 1 never saw"
            ),
            EdgeClient(fleet) as client,
        ):
            fleet_pass = stream(client, services.HYBRID_MODEL, x_fleet, "fleet", warmup=False)
            captured = loop.flush_capture(hub)
            recommendation = loop.recommend(hub, device_model_version="1")
            progress.note = (
                f"{fleet_pass.served_by.count('cloud')} handed over, {captured} captured by the hub"
            )
        with progress.step("model-convert distill on the captured fallbacks"):
            candidate, distilled = loop.distill(sup, work, models_dir, hub, work / "reference.npz")
            progress.note = (
                f"agreement with the cloud {distilled['current']['captured_agreement']:.1%} -> "
                f"{distilled['candidate']['captured_agreement']:.1%}, reference accuracy "
                f"{distilled['current']['reference_accuracy']:.1%} -> "
                f"{distilled['candidate']['reference_accuracy']:.1%}"
            )
        with progress.step(
            f"model-convert build, sign and publish edge release {loop.RELEASE_VERSION}"
        ):
            manifest = loop.build_sign_publish(sup, work, candidate, work / "samples.npz", key, hub)
            progress.note = f"{manifest['profile']}, {manifest['size_bytes'] / 1024:.0f} KiB"
        with progress.step(f"the agent installs release {loop.RELEASE_VERSION} (signed update)"):
            loop.wait_installed(agent, loop.RELEASE_VERSION)
            progress.note = "verified, smoke-tested, health window passed"
        with (
            progress.step(f"the same {limit} held-out digits through release 2"),
            EdgeClient(agent) as client,
        ):
            second = stream(client, services.HYBRID_MODEL, x, "round2")
            edge_versions = {
                v for v, at in zip(second.versions, second.served_by, strict=True) if at == "edge"
            }
            if edge_versions - {loop.RELEASE_VERSION}:
                raise DemoError(f"edge answers of round 2 came from versions {edge_versions}")
            at_cloud = second.served_by.count("cloud")
            progress.note = f"{limit - at_cloud} answered at the edge, {at_cloud} in the cloud"
    except ClientError as exc:
        raise DemoError(f"an agent did not answer a digit: {exc}") from exc
    return loop.SecondRound(
        threshold=options.threshold,
        fleet_digits=len(x_fleet),
        fleet_to_cloud=fleet_pass.served_by.count("cloud"),
        captured_records=captured,
        distill=distilled,
        release_version=loop.RELEASE_VERSION,
        first=loop.RoundFigures.of(first, labels),
        second=loop.RoundFigures.of(second, labels),
        recommendation=recommendation,
    )

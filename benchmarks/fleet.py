"""A fleet, simulated: 1,000 devices against Mosquitto and two hub replicas, one of them killed.

Everything runs on this machine: Mosquitto, two ``cloud-hub serve`` replicas sharing the request
topic through a shared subscription (``add_sub`` on ONNX Runtime, dynamic batching), and the
devices, each its own MQTT 5 client (client id ``sim-<device>``, username the device id,
password ``pw-<device>``), in a few processes (``tests/support/fleet.py``):

- well-behaved devices at ``rate_per_s`` each, unique ids;
- devices that reuse ids (``r0``, ``r1``, ``r2`` over and over, with new content each time);
- flooding devices at 20 times the hub's per-device rate limit, which do not retry refusals.

Every device checks each answer against its own request (wrong answers), retries what is not
final with the same id and bytes (429/503 after ``retry_after_s`` or a backoff with jitter, no
answer after ``resend_after_s``), and counts what never got a final answer (lost). Part way in,
one hub is SIGKILLed, and started again a few seconds later.

Figures: throughput, p50/p99 of the well-behaved devices (first send to answer, retries
included), wrong answers, lost requests, executions per answered request (the hubs'
``inference_count`` over the distinct requests answered; the killed replica's count is read just
before the kill), hub memory.

    python -m benchmarks.fleet [--devices 1000] [--duration-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.results import write_section
from tests.support import onnx_models
from tests.support.broker import Broker
from tests.support.fallback import start_mqtt_hub, wait_hub_connected
from tests.support.fleet import GroupResult, GroupSpec, Kind
from tests.support.hub import HubProcess, add_model

COMMAND = "python -m benchmarks.fleet"
ROOT = Path(__file__).resolve().parent.parent
GOAL_EXECUTIONS = 1.1


@dataclass(frozen=True, kw_only=True)
class FleetPlan:
    devices: int = 1000
    """All devices: well-behaved, reusing ids and flooding together."""
    reuse_devices: int = 100
    flood_devices: int = 5
    processes: int = 4
    """Processes of well-behaved devices; id reusers and flooders get one each."""
    rate_per_s: float = 0.2
    """Each well-behaved (and id-reusing) device's requests per second."""
    limit_per_s: float = 5.0
    """The hubs' ``mqtt.device_rate_per_s``; floods send 20 times that."""
    duration_s: float = 60.0
    kill_at_s: float = 20.0
    restart_after_s: float = 5.0
    resend_after_s: float = 2.0
    drain_s: float = 30.0


@dataclass
class FleetFigures:
    plan: FleetPlan
    normal: GroupResult
    reuse: GroupResult
    flood: GroupResult
    executions: int
    hub_rss_start_mb: list[float]
    hub_rss_peak_mb: list[float]
    killed_at_s: float
    load_average: float = 0.0
    """The machine's 1-minute load average at the end of the run (other work on it shows)."""

    @property
    def well_behaved(self) -> GroupResult:
        both = GroupResult()
        both.merge(self.normal)
        both.merge(self.reuse)
        return both

    @property
    def answered(self) -> int:
        return self.normal.answered + self.reuse.answered + self.flood.answered

    @property
    def executions_per_request(self) -> float:
        return self.executions / max(1, self.answered)

    @property
    def wrong(self) -> int:
        return self.normal.wrong + self.reuse.wrong + self.flood.wrong

    @property
    def lost(self) -> int:
        return self.normal.lost + self.reuse.lost

    @property
    def throughput_per_s(self) -> float:
        return self.answered / self.plan.duration_s

    def percentile_ms(self, q: float) -> float:
        latencies = self.well_behaved.latencies_s
        return float(np.percentile(latencies, q) * 1e3) if latencies else float("nan")


def fleet_repository(root: Path) -> Path:
    add_model(
        root,
        "add_sub",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_us": 500},
        },
        onnx_models.add_sub,
    )
    return root


def _inference_count(hub: HubProcess) -> int:
    with urllib.request.urlopen(f"http://{hub.url}/v2/models/add_sub/stats", timeout=5) as reply:
        return int(json.load(reply)["model_stats"][0]["inference_count"])


def _rss_mb(hub: HubProcess) -> float:
    if hub.process is None or hub.process.poll() is not None:
        return 0.0
    try:
        for line in Path(f"/proc/{hub.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _groups(plan: FleetPlan, broker: Broker, start_at_s: float) -> list[GroupSpec]:
    normal = plan.devices - plan.reuse_devices - plan.flood_devices
    if normal < plan.processes:
        raise ValueError("too few well-behaved devices for the processes")
    base = GroupSpec(
        host=broker.host,
        port=broker.port,
        devices=[],
        indexes=[],
        rate_per_s=plan.rate_per_s,
        duration_s=plan.duration_s,
        resend_after_s=plan.resend_after_s,
        drain_s=plan.drain_s,
        start_at_s=start_at_s,
    )

    def group(kind: Kind, first: int, count: int, **changes: float) -> GroupSpec:
        indexes = list(range(first, first + count))
        return replace(
            base,
            kind=kind,
            devices=[f"{kind}-{i:04d}" for i in indexes],
            indexes=indexes,
            **changes,
        )

    specs = []
    share, extra = divmod(normal, plan.processes)
    first = 0
    for p in range(plan.processes):
        count = share + (1 if p < extra else 0)
        specs.append(group("normal", first, count))
        first += count
    if plan.reuse_devices:
        specs.append(group("reuse", first, plan.reuse_devices))
        first += plan.reuse_devices
    if plan.flood_devices:
        specs.append(group("flood", first, plan.flood_devices, rate_per_s=20 * plan.limit_per_s))
    return specs


def run_fleet(plan: FleetPlan, workdir: Path) -> FleetFigures:
    broker = Broker(workdir=workdir / "broker")
    (workdir / "broker").mkdir(parents=True)
    broker.start()
    repository = fleet_repository(workdir / "repo")
    settings = {"device_rate_per_s": plan.limit_per_s, "device_burst": int(plan.limit_per_s)}
    hubs: list[HubProcess] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            hubs.append(start_mqtt_hub(repository, workdir / f"hub{i}", broker, **settings))
        rss_start = [_rss_mb(h) for h in hubs]
        peaks = list(rss_start)
        start_at_s = time.time() + 5 + plan.devices / 100
        specs = _groups(plan, broker, start_at_s)
        results: list[Path] = []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for n, spec in enumerate(specs):
            spec_path = workdir / f"group{n}.json"
            spec_path.write_text(json.dumps(asdict(spec)))
            results.append(workdir / f"result{n}.json")
            with (workdir / f"group{n}.log").open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tests.support.fleet",
                            str(spec_path),
                            str(results[n]),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                for i, hub in enumerate(hubs):
                    peaks[i] = max(peaks[i], _rss_mb(hub))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(max(0.0, start_at_s + plan.kill_at_s - time.time()))
        executions = _inference_count(hubs[0])
        hubs[0].stop(signal.SIGKILL)
        killed_at_s = time.time() - start_at_s
        time.sleep(plan.restart_after_s)
        hubs[0].start()
        wait_hub_connected(hubs[0])
        for process in processes:
            process.wait()
        stop.set()
        sampler.join()
        executions += sum(_inference_count(h) for h in hubs)
        by_kind = {"normal": GroupResult(), "reuse": GroupResult(), "flood": GroupResult()}
        for spec, path in zip(specs, results, strict=False):
            if not path.exists():
                raise RuntimeError(f"a device process failed: see {path.with_suffix('.log')}")
            by_kind[spec.kind].merge(GroupResult(**json.loads(path.read_text())))
        return FleetFigures(
            plan=plan,
            normal=by_kind["normal"],
            reuse=by_kind["reuse"],
            flood=by_kind["flood"],
            executions=executions,
            hub_rss_start_mb=rss_start,
            hub_rss_peak_mb=peaks,
            killed_at_s=killed_at_s,
            load_average=os.getloadavg()[0],
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for hub in hubs:
            hub.stop()
        broker.stop()


def report(figures: FleetFigures) -> str:
    plan = figures.plan
    well = figures.well_behaved
    normal_count = plan.devices - plan.reuse_devices - plan.flood_devices
    lines = [
        f"## Fleet: {plan.devices:,} simulated devices, two hub replicas, one SIGKILLed",
        "",
        (
            f"Reproduce: `{COMMAND}`. Mosquitto, two `cloud-hub serve` replicas (shared subscription, "
            f"`add_sub` on ONNX Runtime, per-device limit {plan.limit_per_s:g} requests/s) and the "
            f"devices (MQTT 5 clients, {plan.processes + 2} processes) on the same 2 cores. "
            f"{normal_count} well-behaved devices and {plan.reuse_devices} reusing ids (`r0`..`r2`, "
            f"new content each time) at {plan.rate_per_s:g} requests/s each; {plan.flood_devices} "
            f"flooding at {20 * plan.limit_per_s:g}/s (20x the limit). Sending for "
            f"{plan.duration_s:g} s; hub 0 SIGKILLed at {figures.killed_at_s:.1f} s and started again "
            f"{plan.restart_after_s:g} s later. Devices resend an unanswered request after "
            f"{plan.resend_after_s:g} s and retry 429/503 after the hub's `retry_after_s` or a "
            "backoff, always with the same id and bytes, until they get a final answer (the "
            "`queue` policy)."
        ),
        "",
        "| measure | value | goal | verdict |",
        "|---|---:|---|---|",
        f"| requests answered (all devices) | {figures.answered:,} | | |",
        f"| throughput | {figures.throughput_per_s:,.0f} answers/s | | |",
        (
            f"| well-behaved p50 (p99), first send to answer | {figures.percentile_ms(50):.2f} ms "
            f"({figures.percentile_ms(99):.1f}) | | |"
        ),
        f"| wrong answers | {figures.wrong} | 0 | {_verdict(figures.wrong == 0)} |",
        (
            f"| lost requests (well-behaved and id-reusing) | {figures.lost} of {well.requests:,} | 0 "
            f"| {_verdict(figures.lost == 0)} |"
        ),
        (
            f"| executions per answered request | {figures.executions_per_request:.3f} "
            f"({figures.executions:,} / {figures.answered:,}) | <= {GOAL_EXECUTIONS} | "
            f"{_verdict(figures.executions_per_request <= GOAL_EXECUTIONS)} |"
        ),
        (
            f"| well-behaved requests refused or failed (429/500/503 answers) | "
            f"{sum(well.transient.values())} | | |"
        ),
        (
            f"| flood: sent, refused 429, answered | {figures.flood.requests:,}, "
            f"{figures.flood.transient.get('429', 0):,}, {figures.flood.answered:,} | | |"
        ),
        (
            f"| sends per well-behaved request (retries included) | "
            f"{well.sends / max(1, well.requests):.3f} | | |"
        ),
        "| hub RSS at start -> peak | "
        + ", ".join(
            f"{a:.0f} -> {b:.0f} MB"
            for a, b in zip(figures.hub_rss_start_mb, figures.hub_rss_peak_mb, strict=False)
        )
        + " | | |",
        "",
        (
            "Each replica keeps its own token bucket per device, so a device spread over two "
            "replicas by the shared subscription gets up to twice the per-device limit through. "
            "The p99 includes the requests caught by the kill and the restarted replica's start "
            "(it loads its models on the same 2 cores). Latencies depend on what else runs: "
            f"the 1-minute load average at the end was {figures.load_average:.1f}."
        ),
        "",
        (
            "The killed replica's executions are read just before the kill; a batch running in the "
            "few milliseconds between that read and the kill is not counted. Requests it had taken "
            "and not answered get no answer; their devices resend them, and the broker hands them "
            "to the live replica."
        ),
    ]
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def run(plan: FleetPlan | None = None) -> FleetFigures:
    plan = plan or FleetPlan()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        figures = run_fleet(plan, Path(tmp))
    write_section("fleet", report(figures))
    print(report(figures))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=FleetPlan.devices)
    parser.add_argument("--duration-s", type=float, default=FleetPlan.duration_s)
    parser.add_argument("--rate-per-s", type=float, default=FleetPlan.rate_per_s)
    parser.add_argument("--kill-at-s", type=float, default=FleetPlan.kill_at_s)
    args = parser.parse_args()
    run(
        FleetPlan(
            devices=args.devices,
            duration_s=args.duration_s,
            rate_per_s=args.rate_per_s,
            kill_at_s=args.kill_at_s,
        )
    )


if __name__ == "__main__":
    main()

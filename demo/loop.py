"""The demo's second round: the fleet teaches the edge model.

A second device (``demo-fleet``) streams the training digits the first edge release never saw;
the hub captures the ones it hands over (``capture:`` on ``digits-cloud``). Then the real
commands close the loop: ``model-convert distill`` fine-tunes the edge model on those records
(the cloud's outputs as soft targets, the first release's training digits as the reference set,
gated), ``model-convert build`` converts it for the device profile and validates it, ``sign`` and
``publish`` hand it to the hub, and the measuring agent installs it through the signed update
path (verify, download, smoke test, health window). The held-out test digits, which that agent
never lets the hub capture (``capture_opt_out``), go through release 2 at the same threshold.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.client import EdgeClient

from .errors import DemoError
from .options import EDGE_PROFILE
from .processes import ChildError, Supervisor, executable
from .services import DEVICE_CLASS, HUB_MODEL, HYBRID_MODEL
from .stream import Pass

RELEASE_VERSION = "2"
TARGET_ACCURACY = 0.99
"""For the threshold recommendation: agreement with the cloud on the handed-over digits."""
DISTILL_TIMEOUT_S = 600.0
INSTALL_TIMEOUT_S = 120.0
GOAL_FEWER_TO_CLOUD = 0.25
GOAL_ACCURACY_PTS = -0.25


@dataclass(frozen=True, kw_only=True)
class RoundFigures:
    requests: int
    cloud_answers: int
    accuracy: float

    @property
    def cloud_share(self) -> float:
        return self.cloud_answers / self.requests

    @staticmethod
    def of(recorded: Pass, labels: list[int]) -> RoundFigures:
        right = np.asarray(recorded.predictions) == np.asarray(labels)
        return RoundFigures(
            requests=len(labels),
            cloud_answers=recorded.served_by.count("cloud"),
            accuracy=float(np.mean(right)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cloud_answers": self.cloud_answers,
            "cloud_share": self.cloud_share,
            "accuracy_hybrid": self.accuracy,
        }


@dataclass(frozen=True, kw_only=True)
class SecondRound:
    threshold: float
    fleet_digits: int
    fleet_to_cloud: int
    captured_records: int
    distill: dict[str, Any]
    """``model-convert distill``'s report."""
    release_version: str
    first: RoundFigures
    second: RoundFigures
    recommendation: dict[str, Any]
    """The hub's ``/v1/capture/thresholds`` answer for release 1 on this device class."""

    @property
    def fewer_to_cloud(self) -> float:
        """The share of cloud answers release 2 saves against release 1."""
        if self.first.cloud_answers == 0:
            return 0.0
        return 1.0 - self.second.cloud_answers / self.first.cloud_answers

    @property
    def accuracy_change_pts(self) -> float:
        return (self.second.accuracy - self.first.accuracy) * 100

    @property
    def goals_met(self) -> bool:
        return (
            self.fewer_to_cloud >= GOAL_FEWER_TO_CLOUD
            and self.accuracy_change_pts >= GOAL_ACCURACY_PTS - 1e-9
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "fleet_digits": self.fleet_digits,
            "fleet_to_cloud": self.fleet_to_cloud,
            "captured_records": self.captured_records,
            "distill": self.distill,
            "release_version": self.release_version,
            "release_1": self.first.as_dict(),
            "release_2": self.second.as_dict(),
            "fewer_to_cloud": self.fewer_to_cloud,
            "accuracy_change_pts": self.accuracy_change_pts,
            "goals": {
                "fewer_to_cloud_at_least": GOAL_FEWER_TO_CLOUD,
                "accuracy_change_pts_at_least": GOAL_ACCURACY_PTS,
                "met": self.goals_met,
            },
            "recommendation": self.recommendation,
        }


def _hub(hub: str, path: str, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(f"http://{hub}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as reply:
        data = json.loads(reply.read())
    assert isinstance(data, dict)
    return data


def flush_capture(hub: str) -> int:
    """Write the hub's buffered records now; how many records its shards hold."""
    _hub(hub, "/v1/capture/flush", method="POST")
    return int(_hub(hub, f"/v1/capture/shards?model={HUB_MODEL}")["records"])


def recommend(hub: str, *, device_model_version: str) -> dict[str, Any]:
    query = urllib.parse.urlencode(
        {
            "model": HUB_MODEL,
            "device_class": DEVICE_CLASS,
            "device_model_version": device_model_version,
            "target_accuracy": TARGET_ACCURACY,
        }
    )
    return _hub(hub, f"/v1/capture/thresholds?{query}")


def distill(
    supervisor: Supervisor, work: Path, models_dir: Path, hub: str, reference: Path
) -> tuple[Path, dict[str, Any]]:
    """``model-convert distill`` with the shards downloaded from the hub; the candidate and the
    report. A refused candidate stops the demo with the gate's reason."""
    out = work / "distill"
    try:
        supervisor.run(
            "distill",
            [
                executable("model-convert"),
                "distill",
                str(models_dir / "edge.keras"),
                "--hub",
                f"http://{hub}",
                "--capture-model",
                HUB_MODEL,
                "--reference",
                str(reference),
                "--out",
                str(out),
            ],
            timeout_s=DISTILL_TIMEOUT_S,
        )
    except ChildError as exc:
        report = out / "distill-report.json"
        if report.is_file():
            failures = json.loads(report.read_text()).get("failures", [])
            raise DemoError(
                "the distilled model was refused, nothing was published: " + "; ".join(failures)
            ) from exc
        raise
    return out / "model.keras", json.loads((out / "distill-report.json").read_text())


def build_sign_publish(
    supervisor: Supervisor, work: Path, model: Path, samples: Path, key: Path, hub: str
) -> dict[str, Any]:
    """The candidate through the same commands as any release; the hub's answer to publish."""
    convert = executable("model-convert")
    out = work / "release"
    supervisor.run(
        "build-release",
        [
            convert,
            "build",
            str(model),
            "--profile",
            EDGE_PROFILE,
            "--name",
            HYBRID_MODEL,
            "--version",
            RELEASE_VERSION,
            "--samples",
            str(samples),
            "--out",
            str(out),
        ],
        timeout_s=DISTILL_TIMEOUT_S,
    )
    folder = out / EDGE_PROFILE
    supervisor.run("sign-release", [convert, "sign", str(folder), "--key", str(key)], timeout_s=60)
    supervisor.run(
        "publish-release",
        [convert, "publish", str(folder), "--hub", f"http://{hub}", "--json"],
        timeout_s=120,
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert isinstance(manifest, dict)
    return manifest


def wait_installed(agent: str, version: str, timeout_s: float = INSTALL_TIMEOUT_S) -> None:
    """Until the agent serves ``version`` of the hybrid model and its health window passed."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    with EdgeClient(agent, timeout_s=5) as client:
        while time.monotonic() < deadline:
            last = client.status()["detail"].get("updates", {}).get(HYBRID_MODEL, {})
            if last.get("state") == "installed" and str(last.get("version")) == version:
                return
            if last.get("state") == "rolled_back" or (
                last.get("last_rejection") and str(last.get("target")) == version
            ):
                raise DemoError(f"the agent did not take release {version}: {last}")
            time.sleep(0.2)
    raise DemoError(
        f"the agent had not installed release {version} after {timeout_s:.0f} s: {last}"
    )

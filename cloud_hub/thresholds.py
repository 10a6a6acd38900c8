"""The confidence threshold a fleet should use, from the records capture kept.

Each captured record holds the device's confidence and answer and the cloud's answer. Taking
the cloud's answer as the reference, a threshold t sends the records whose confidence is under t
to the cloud (right, by that reference) and answers the others with the device's class. Over the
captured records, the cloud share and the accuracy both grow with t; the recommendation is the
lowest t whose accuracy reaches the target: the least cloud share that keeps it.

The records are the requests devices handed over, so shares are of that traffic and the
recommendation can only lower a threshold (a device's confident answers never reach the
cloud); records of one edge release (``device_model_version``) and one device class should be
judged together, which the filters allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BadRequestError

__all__ = ["Recommendation", "ThresholdPoint", "recommend"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ThresholdPoint:
    threshold: float
    cloud_share: float
    accuracy: float

    def as_json(self) -> dict[str, float]:
        return {
            "threshold": self.threshold,
            "cloud_share": self.cloud_share,
            "accuracy": self.accuracy,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Recommendation:
    records: int
    target_accuracy: float
    output: str | None
    recommended: ThresholdPoint | None
    curve: list[ThresholdPoint]

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "target_accuracy": self.target_accuracy,
            "output": self.output,
            "recommended": None if self.recommended is None else self.recommended.as_json(),
            "curve": [p.as_json() for p in self.curve],
        }


def _output_key(shard: Mapping[str, np.ndarray[Any, Any]], output: str | None) -> str | None:
    outputs = sorted(k for k in shard if k.startswith("output."))
    if output is not None:
        key = f"output.{output}"
        if key not in shard:
            names = ", ".join(k.removeprefix("output.") for k in outputs) or "none"
            raise BadRequestError(f"the captured records have no output {output!r} ({names})")
        return key
    return outputs[0] if outputs else None


def recommend(
    shards: Iterable[Mapping[str, np.ndarray[Any, Any]]],
    *,
    target_accuracy: float,
    output: str | None = None,
    device_class: str | None = None,
    device_model_version: str | None = None,
    points: int = 50,
) -> Recommendation:
    """The lowest threshold whose accuracy (against the cloud's answers) reaches
    ``target_accuracy``, and the curve: at most ``points`` thresholds, evenly spread."""
    if not 0.0 < target_accuracy <= 1.0:
        raise BadRequestError("target_accuracy must be in (0, 1]")
    confidences: list[np.ndarray[Any, Any]] = []
    agree: list[np.ndarray[Any, Any]] = []
    used: str | None = None
    for shard in shards:
        key = _output_key(shard, output)
        if key is None or "device_confidence" not in shard:
            continue
        used = key.removeprefix("output.")
        scores = np.asarray(shard[key], dtype=np.float64)
        if scores.ndim < 2:
            continue
        cloud = scores.reshape(scores.shape[0], -1).argmax(axis=1)
        conf = np.asarray(shard["device_confidence"], dtype=np.float64)
        top = np.asarray(shard["device_top_class"], dtype=np.int64)
        keep = np.isfinite(conf) & (top >= 0)
        if device_class is not None:
            keep &= np.asarray(shard["device_class"]) == device_class
        if device_model_version is not None:
            keep &= np.asarray(shard["device_model_version"]) == device_model_version
        confidences.append(conf[keep])
        agree.append(top[keep] == cloud[keep])
    conf = np.concatenate(confidences) if confidences else np.zeros(0)
    right = np.concatenate(agree) if agree else np.zeros(0, dtype=bool)
    if conf.size == 0:
        return Recommendation(
            records=0,
            target_accuracy=target_accuracy,
            output=used,
            recommended=None,
            curve=[],
        )
    order = np.argsort(conf, kind="stable")
    conf, right = conf[order], right[order]
    n = conf.size
    # A threshold just above the k-th lowest confidence sends the k lowest to the cloud.
    cuts = np.unique(conf)
    thresholds = np.concatenate([[0.0], np.nextafter(cuts, np.inf)])
    sent = np.searchsorted(conf, thresholds, side="left")
    wrong_kept = np.concatenate([[0], np.cumsum(~right)])  # wrong device answers among the first k
    total_wrong = int(wrong_kept[-1])
    accuracy = 1.0 - (total_wrong - wrong_kept[sent]) / n
    share = sent / n
    reaching = np.nonzero(accuracy >= target_accuracy - 1e-12)[0]
    best = None
    if reaching.size:
        i = int(reaching[0])
        best = ThresholdPoint(
            threshold=float(thresholds[i]), cloud_share=float(share[i]), accuracy=float(accuracy[i])
        )
    picks = np.unique(np.linspace(0, thresholds.size - 1, min(points, thresholds.size)).round())
    curve = [
        ThresholdPoint(
            threshold=float(thresholds[int(i)]),
            cloud_share=float(share[int(i)]),
            accuracy=float(accuracy[int(i)]),
        )
        for i in picks
    ]
    return Recommendation(
        records=n, target_accuracy=target_accuracy, output=used, recommended=best, curve=curve
    )

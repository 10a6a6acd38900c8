"""The manifest schema in protocols: validation, JSON round trip, canonical bytes for signing."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from protocols import ArtifactManifest, Datatype, canonical_json

SHA = "ab" * 32


def manifest_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "digits",
        "version": "3",
        "profile": "rpi4-litert-int8",
        "device_class": "rpi4",
        "format": "tflite",
        "precision": "int8",
        "file": "model.tflite",
        "sha256": SHA,
        "size_bytes": 162800,
        "inputs": [
            {
                "name": "pixels",
                "datatype": "INT8",
                "shape": [-1, 64],
                "quantization": {"scale": [0.0039], "zero_point": [-128]},
            }
        ],
        "outputs": [{"name": "output_0", "datatype": "INT8", "shape": [-1, 10]}],
        "threads": 4,
        "source": {"filename": "digits.keras", "format": "keras", "sha256": SHA},
        "calibration": {"origin": "file", "samples": 128, "sha256": SHA},
        "tools": {"tensorflow": "2.21.0", "hybrid-inference": "0.1.0"},
        "validation": {
            "passed": True,
            "samples": 397,
            "samples_origin": "file",
            "thresholds": {"min_cosine_similarity": 0.98, "min_top1_agreement": 0.93},
            "outputs": [
                {
                    "name": "output_0",
                    "max_abs_error": 0.03,
                    "mean_abs_error": 0.001,
                    "rmse": 0.004,
                    "cosine_similarity": 0.9999,
                    "cosine_similarity_min": 0.998,
                    "top1_agreement": 1.0,
                }
            ],
            "latency": {
                "runtime": "ai_edge_litert",
                "batch_size": 1,
                "threads": 4,
                "runs": 50,
                "p50_ms": 0.05,
                "p95_ms": 0.07,
            },
        },
        "created_at": "2026-11-26T10:00:00+01:00",
    }
    data.update(changes)
    return data


def test_a_manifest_round_trips_through_its_json_file() -> None:
    manifest = ArtifactManifest.model_validate(manifest_data())
    assert manifest.created_at == dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.timezone.utc)
    assert manifest.inputs[0].datatype is Datatype.INT8
    assert manifest.inputs[0].quantization is not None
    text = manifest.to_json()
    assert text.endswith("\n")
    again = ArtifactManifest.model_validate_json(text)
    assert again == manifest
    assert json.loads(text)["created_at"] == "2026-11-26T09:00:00Z"


def test_canonical_json_is_sorted_compact_and_stable() -> None:
    manifest = ArtifactManifest.model_validate(manifest_data())
    signed = manifest.signing_bytes()
    assert signed == canonical_json(manifest)
    assert b" " not in signed.replace(b"digits.keras", b"")  # no whitespace between tokens
    assert b"\n" not in signed
    decoded = json.loads(signed)
    assert list(decoded) == sorted(decoded)
    # the same manifest built from differently ordered input gives the same bytes
    shuffled = dict(reversed(list(manifest_data().items())))
    assert ArtifactManifest.model_validate(shuffled).signing_bytes() == signed
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sha256": "xyz"}, "sha256"),
        ({"format": "pt"}, "format"),
        ({"precision": "int4"}, "precision"),
        ({"device_class": "a/b"}, "device_class"),
        ({"file": "../model.tflite"}, "file"),
        ({"name": "../etc"}, "name"),
        ({"size_bytes": -1}, "size_bytes"),
        ({"created_at": "2026-11-26T10:00:00"}, "created_at"),
        ({"schema_version": 2}, "schema_version"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_manifests_are_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ArtifactManifest.model_validate(manifest_data(**changes))
    assert field in str(caught.value)


def test_metrics_must_be_finite() -> None:
    data = manifest_data()
    data["validation"]["outputs"][0]["rmse"] = float("inf")
    with pytest.raises(ValidationError, match="rmse"):
        ArtifactManifest.model_validate(data)

"""Importing the converter, its CLI and the hub does not import TensorFlow or the converters."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "tensorrt", "ai_edge_litert")


def loaded_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint('LOADED', *[m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    return set(out.stdout.strip().splitlines()[-1].split()[1:])


def test_converters_and_its_cli_import_no_ml_library() -> None:
    statement = (
        "import converters, converters.cli, converters.profiles, converters.build, "
        "converters.artifact, converters.jobs, converters.targets\n"
        "converters.cli.main(['profiles'])"
    )
    assert loaded_after(statement) == set()


def test_the_hub_app_imports_no_converter_library() -> None:
    statement = (
        "import cloud_hub.app, cloud_hub.conversions, cloud_hub.artifacts, sys\n"
        "assert 'converters.build' not in sys.modules"
    )
    loaded = loaded_after(statement)
    assert not loaded & {"tensorflow", "keras", "tf2onnx", "tensorrt"}

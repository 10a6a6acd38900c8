"""The arm64 lane's tests: collected only when ``HYBRID_ARM64_USERLAND`` names a userland built
by ``scripts/arm64/userland.sh`` (``make test-arm64`` sets it; ``tests/conftest.py`` leaves this
folder out otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.arm64.userland import USERLAND_ENV, Userland
from tests.support.models import DigitsModels, ensure_digits_models, require


@pytest.fixture(scope="session")
def userland() -> Userland:
    rootfs = Path(os.environ[USERLAND_ENV])
    if not (rootfs / "opt" / "edge-venv" / "bin" / "edge-agent").exists():
        pytest.fail(f"{rootfs} holds no edge venv; build it with scripts/arm64/userland.sh")
    if not (rootfs / "src" / "edge_agent").is_dir():
        pytest.fail(f"{rootfs}/src is not the working tree; run through scripts/arm64/lane.sh")
    return Userland(rootfs)


@pytest.fixture(scope="session")
def digits() -> DigitsModels:
    return require(ensure_digits_models)  # type: ignore[no-any-return]

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.secure_broker import SecureBroker, make_credentials

DEVICES = {"dev-a": "alpha", "dev-b": "beta"}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """The shipped secured broker with credentials for a hub, ``dev-a`` (class alpha) and
    ``dev-b`` (class beta)."""
    root: Path = tmp_path_factory.mktemp("secure-broker")
    broker = SecureBroker(
        workdir=root / "broker", credentials=make_credentials(root / "creds", DEVICES)
    )
    broker.start()
    yield broker
    broker.close()

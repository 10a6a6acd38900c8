from __future__ import annotations

import pytest

from tests.support import models
from tests.unit.converters.sources import DigitsSource, ensure_digits_source


@pytest.fixture(scope="session")
def digits_source() -> DigitsSource:
    return models.require(ensure_digits_source)  # type: ignore[no-any-return]

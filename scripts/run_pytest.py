"""Run pytest, and fail loudly when it collected no test (its exit code 5)."""

from __future__ import annotations

import sys

import pytest

NO_TESTS_COLLECTED = 5

if __name__ == "__main__":
    code = pytest.main(sys.argv[1:])
    if code == NO_TESTS_COLLECTED:
        print("error: pytest ran no test; that is a failure here, not a pass", file=sys.stderr)
        sys.exit(1)
    sys.exit(int(code))

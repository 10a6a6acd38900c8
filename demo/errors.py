"""The demo's errors: each message says what went wrong and what to do."""

from __future__ import annotations


class DemoError(Exception):
    """A step could not be done."""

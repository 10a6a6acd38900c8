"""The quantum classifier, to be served by the hub like any other model once it exists.

Today neither the hub's ``quantum`` backend (``cloud_hub/backends/quantum.py``) nor the
``quantum`` package's training exists, so the demo says so in one line. When both land, this is
where the demo trains a small classifier, adds it to the hub's repository and sends it a few
digits through the hub.
"""

from __future__ import annotations

import importlib
import importlib.util


def missing_reason() -> str | None:
    """Why the quantum classifier cannot be called yet; ``None`` once the parts exist."""
    if importlib.util.find_spec("cloud_hub.backends.quantum") is None:
        return "the hub has no quantum backend yet"
    if not hasattr(importlib.import_module("quantum"), "train"):
        return "the quantum package cannot train a classifier yet"
    return None

"""Signed model updates with rollback (docs/updates.md).

verify.py    trusted keys, signature threshold, and every check of a release
download.py  resumable downloads (HTTP Range), capped at the signed size, hashed
health.py    the smoke test before a swap and the health window after it
store.py     the crash-safe layout on disk: version folders, ``current``, ``state.json``
updater.py   Updater: the thread that takes announcements and installs, swaps, rolls back
"""

from .store import ModelStore, Pointer, Recovered, UpdateState
from .updater import KILL_ENV, Updater, baseline_version, recover_models
from .verify import Reason, RejectedError, TrustedKeys, check_release, verify_signatures

__all__ = [
    "KILL_ENV",
    "ModelStore",
    "Pointer",
    "Reason",
    "Recovered",
    "RejectedError",
    "TrustedKeys",
    "UpdateState",
    "Updater",
    "baseline_version",
    "check_release",
    "recover_models",
    "verify_signatures",
]

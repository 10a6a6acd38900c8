"""Every broker configuration the project ships or shows sets ``set_tcp_nodelay true`` (QoS 1
round trips otherwise wait on Nagle's algorithm, 44 ms instead of 2) and persists with an
``autosave_interval`` (a crash otherwise loses every session); no page runs a bare broker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "deploy").rglob("mosquitto*.conf"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "README.md"]


def _settings(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def test_there_are_broker_configs() -> None:
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_broker_config_sets_nodelay_and_persists(path: Path) -> None:
    settings = _settings(path)
    assert settings.get("set_tcp_nodelay") == "true"
    assert settings.get("persistence") == "true"
    assert int(settings["autosave_interval"]) > 0


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_no_page_runs_a_broker_without_a_config(path: Path) -> None:
    for line in path.read_text().splitlines():
        if re.search(r"(^|[\s`])mosquitto\s+-", line):
            assert re.search(r"mosquitto\s+-c\s+\S+\.conf", line), line

"""``benchmarks/fleet.py`` shortened: 80 devices, some flooding, some reusing ids, two hubs, one
SIGKILLed and restarted; every well-behaved request gets its own right answer, about once."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fleet import FleetPlan, run_fleet

pytestmark = pytest.mark.integration


def test_a_small_fleet_through_a_hub_kill(tmp_path: Path) -> None:
    plan = FleetPlan(
        devices=80,
        reuse_devices=10,
        flood_devices=2,
        processes=2,
        rate_per_s=2.0,
        duration_s=12.0,
        kill_at_s=5.0,
        restart_after_s=2.0,
        drain_s=20.0,
    )
    figures = run_fleet(plan, tmp_path)
    well = figures.well_behaved
    assert well.requests > 1_500
    assert figures.wrong == 0
    assert figures.lost == 0
    assert well.answered == well.requests
    assert well.final_errors == 0
    assert well.transient == {}, "a well-behaved device was refused"
    assert figures.executions_per_request <= 1.1, (figures.executions, figures.answered)
    assert figures.flood.transient.get("429", 0) > figures.flood.requests / 2

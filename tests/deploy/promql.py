"""The PromQL that deploy/ ships (alerts, dashboard, Prometheus Adapter rules), and a check of
each query's metrics and labels against real ``/metrics`` output."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OURS = ("hub_", "edge_agent_")
ADDED_BY_PROMETHEUS = {"instance", "job", "namespace", "pod", "le"}
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def queries() -> dict[str, str]:
    """Every PromQL expression deploy/ ships, by where it is."""
    out = {}
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            out[f"alert {rule['alert']}"] = rule["expr"]
    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out[f"{path.name} {panel['title']} {target['refId']}"] = target["expr"]
    adapter = yaml.safe_load(
        (DEPLOY / "k8s" / "monitoring" / "prometheus-adapter-values.yaml").read_text()
    )
    for rule in adapter["rules"]["custom"]:
        out[f"adapter {rule['name']['as']}"] = rule["seriesQuery"]
    return out


@dataclass
class Exposition:
    """Sample names and their label sets, from one or more ``/metrics`` pages."""

    series: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, pages: Iterable[str]) -> Exposition:
        out = cls()
        for page in pages:
            for family in text_string_to_metric_families(page):
                names = {
                    "counter": [f"{family.name}_total"],
                    "histogram": [f"{family.name}_{s}" for s in ("bucket", "sum", "count")],
                    "info": [f"{family.name}_info"],
                }.get(family.type, [family.name])
                for name in names:
                    out.series.setdefault(name, [])
                for sample in family.samples:
                    out.series.setdefault(sample.name, []).append(dict(sample.labels))
        return out

    def problems(self, expr: str) -> list[str]:
        """What in ``expr`` the exposition lacks: metric names, labels, label values."""
        found = []
        used = []
        for name, braces in _SELECTOR.findall(expr):
            if not name.startswith(OURS):
                continue
            used.append(name)
            if name not in self.series:
                found.append(f"no metric {name}")
                continue
            samples = self.series[name]
            for label, op, value in _MATCHER.findall(braces or ""):
                if label in ADDED_BY_PROMETHEUS:
                    continue
                if not samples:
                    found.append(f"{name} has no series to match {label}{op}{value!r}")
                elif not any(label in s for s in samples):
                    found.append(f"{name} has no label {label}")
                elif op == "=" and not any(s.get(label) == value for s in samples):
                    found.append(f"{name} has no series with {label}={value!r}")
                elif op == "=~" and not any(re.fullmatch(value, s.get(label, "")) for s in samples):
                    found.append(f"{name} has no series with {label}=~{value!r}")
        samples = [s for name in used for s in self.series.get(name, [])]
        for group in _GROUPING.findall(expr):
            for label in (part.strip() for part in group.split(",")):
                wanted = label and label not in ADDED_BY_PROMETHEUS and samples
                if wanted and not any(label in s for s in samples):
                    found.append(f"no metric of {used} has the label {label}")
        if not used:
            found.append("queries none of the hub's or agent's metrics")
        return found

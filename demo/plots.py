"""The report's figures (matplotlib, drawn off screen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .analysis import Summary
from .stream import Recording

EDGE_COLOR = "#2a9d8f"
CLOUD_COLOR = "#e76f51"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency(recording: Recording, summary: Summary, path: Path) -> None:
    """Histograms of the caller's latency: answers from the edge and from the cloud."""
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ms = np.asarray(recording.hybrid.latencies_s) * 1e3
    cloud = np.asarray([s == "cloud" for s in recording.hybrid.served_by])
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    low, high = max(float(ms.min()), 1e-3), float(ms.max())
    bins = np.geomspace(low * 0.9, high * 1.1, 50)
    for label, mask, color, stats in (
        ("local answers", ~cloud, EDGE_COLOR, summary.latency_local),
        ("fallback answers", cloud, CLOUD_COLOR, summary.latency_fallback),
    ):
        if not mask.any():
            continue
        ax.hist(ms[mask], bins=bins, color=color, alpha=0.75, label=f"{label} (n={mask.sum()})")
        if stats.p50_ms is not None:
            ax.axvline(stats.p50_ms, color=color, linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency at the caller (ms, log scale); dashed: p50")
    ax.set_ylabel("requests")
    ax.set_title("Where each digit was answered, and how long it took")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def accuracy_vs_cloud_share(summary: Summary, path: Path) -> None:
    """The replayed trade-off: accuracy against the share of digits sent to the cloud."""
    plt = _pyplot()
    share = np.asarray([p.cloud_share for p in summary.curve]) * 100
    accuracy = np.asarray([p.accuracy for p in summary.curve]) * 100
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.step(share, accuracy, where="post", color="#264653", label="on_low_confidence, replayed")
    ax.axhline(summary.accuracy_edge_only * 100, color=EDGE_COLOR, linestyle=":", label="edge only")
    ax.axhline(
        summary.accuracy_cloud_only * 100, color=CLOUD_COLOR, linestyle=":", label="cloud only"
    )
    ax.plot(
        [summary.cloud_share * 100],
        [summary.accuracy_hybrid * 100],
        "o",
        color=CLOUD_COLOR,
        markersize=8,
        label=f"this run (threshold {summary.threshold:g})",
    )
    for point in summary.replay:
        ax.annotate(
            f"{point.threshold:g}",
            (point.cloud_share * 100, point.accuracy * 100),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=7,
            color="#555555",
        )
    ax.set_xlabel("digits sent to the cloud (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(-2, 102)
    ax.set_title(f"Accuracy against share sent to the cloud ({summary.requests} digits)")
    ax.legend(loc="lower right", frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

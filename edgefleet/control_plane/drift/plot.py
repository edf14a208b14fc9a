"""Drift over time as a PNG: what ``edgefleet drift plot`` writes and the console shows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.drift import DEFAULT_PSI_THRESHOLD

BUCKETS = 60


def _bucketed(
    times: np.ndarray, values: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` (rows) per time bucket; empty buckets are left out."""
    index = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, len(edges) - 2)
    centres, means = [], []
    for bucket in np.unique(index):
        centres.append((edges[bucket] + edges[bucket + 1]) / 2)
        means.append(values[index == bucket].mean(axis=0))
    return np.array(centres), np.array(means)


def plot_drift(points: Sequence[dict[str, Any]], output: Path, *, top_features: int = 6) -> Path:
    """Two panels from drift series points (as the API returns them).

    Top: share of drifted features per window, a thin line per device and a thick
    one for each cohort's mean over time buckets. Bottom: the cohort-mean PSI of
    the features that drifted most, against the PSI threshold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    if not points:
        top.text(0.5, 0.5, "no drift windows reported yet", ha="center", va="center")
        fig.savefig(output, dpi=100)
        plt.close(fig)
        return output

    times_all = np.array([mdates.date2num(datetime.fromisoformat(p["ts"])) for p in points])
    edges = np.linspace(times_all.min(), times_all.max() + 1e-9, BUCKETS + 1)
    by_cohort: dict[str, list[int]] = defaultdict(list)
    for i, point in enumerate(points):
        by_cohort[f"{point['model']} v{point['model_version']} · {point['cohort']}"].append(i)

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, rows) in enumerate(sorted(by_cohort.items())):
        colour = colours[n % len(colours)]
        share = np.array([points[i]["share_drifted"] for i in rows])
        times = times_all[rows]
        devices = sorted({points[i]["device_id"] for i in rows})
        for device in devices:
            mine = [j for j, i in enumerate(rows) if points[i]["device_id"] == device]
            top.plot(times[mine], share[mine], color=colour, lw=0.6, alpha=0.35)
        centres, mean_share = _bucketed(times, share, edges)
        top.plot(
            centres, mean_share, color=colour, lw=2.2, label=f"{label} ({len(devices)} devices)"
        )

        with_psi = [i for i in rows if points[i]["psi"]]
        if not with_psi:
            continue
        psi = np.array([points[i]["psi"] for i in with_psi], dtype=float)
        centres, mean_psi = _bucketed(times_all[with_psi], psi, edges)
        for feature in np.argsort(psi.max(axis=0))[::-1][:top_features]:
            bottom.plot(centres, mean_psi[:, feature], lw=1.2, label=f"{label} · feature {feature}")

    bottom.axhline(DEFAULT_PSI_THRESHOLD, color="grey", ls="--", lw=1, label="PSI threshold")
    top.set_ylabel("share of features drifted")
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="upper left", fontsize=8)
    top.set_title("Input drift reported by the fleet")
    bottom.set_ylabel("PSI, cohort mean (most drifted features)")
    bottom.legend(loc="upper left", fontsize=7, ncol=2)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output

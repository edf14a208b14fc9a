"""Candidates built and measured in a child process: what comes back, and in what order."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytest

from edgefleet.control_plane.core.errors import BuildError
from edgefleet.control_plane.services.build_worker import BuildProcess
from edgefleet.converters.errors import ConversionError, GateError
from edgefleet.converters.pipeline import Holdout
from edgefleet.profile import default_profiles_dir, load_profiles
from edgefleet_demo.digits import DigitsModel

PROFILE = "x86-64-gateway-onnx"
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _profile() -> Any:
    return load_profiles(default_profiles_dir())[PROFILE]


def test_child_reports_each_candidate_as_measured_then_returns_the_outcome(
    digits: DigitsModel,
) -> None:
    events: list[tuple[str, Any]] = []
    peak_rss: list[int] = []
    outcome = BuildProcess().build(
        digits.onnx_bytes,
        _profile(),
        calibration=digits.samples,
        holdout=Holdout(x=digits.holdout_x, y=digits.holdout_y),
        progress=lambda text: events.append(("progress", text)),
        on_candidate=lambda row: events.append(("candidate", row)),
        on_rss=peak_rss.append,
    )

    rows = [payload for kind, payload in events if kind == "candidate"]
    assert [r["candidate"] for r in rows] == [r.candidate for r in outcome.table]
    assert [r["verdict"] for r in rows] == [r.verdict for r in outcome.table]
    # Each measured candidate was announced before its row arrived.
    for row in rows:
        if row["verdict"] in ("passed", "failed"):
            announced = events.index(("progress", f"measuring {row['candidate']}"))
            assert announced < events.index(("candidate", row))
    assert outcome.chosen_row.passed
    assert peak_rss and peak_rss[0] > 0  # the child's peak RSS came back with the outcome
    assert outcome.chosen.data  # the chosen artifact's bytes crossed the pipe


def test_gate_error_in_the_child_reaches_the_parent_with_every_candidate(
    digits: DigitsModel,
) -> None:
    # No candidate fits in one byte: every one is refused, and the parent gets the table.
    profile = _profile().model_copy(update={"max_model_bytes": 1})
    with pytest.raises(GateError) as caught:
        BuildProcess().build(
            digits.onnx_bytes,
            profile,
            calibration=digits.samples,
            holdout=Holdout(x=digits.holdout_x, y=digits.holdout_y),
        )
    assert caught.value.candidates
    assert str(caught.value).startswith(f"no candidate passed the gate for {PROFILE}")


def test_conversion_error_in_the_child_keeps_its_message(digits: DigitsModel) -> None:
    wrong_width = np.zeros((8, 3), dtype=np.float32)
    with pytest.raises(ConversionError, match="holdout shape"):
        BuildProcess().build(
            digits.onnx_bytes,
            _profile(),
            calibration=digits.samples,
            holdout=Holdout(x=wrong_width),
        )


def test_a_child_killed_mid_build_is_a_build_error_naming_the_signal(
    digits: DigitsModel,
) -> None:
    process = BuildProcess()

    def kill_the_child(text: str) -> None:
        if text.startswith("measuring"):
            for child in process._running:  # the one running child
                os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(BuildError, match="SIGKILL"):
        process.build(
            digits.onnx_bytes,
            _profile(),
            calibration=digits.samples,
            holdout=Holdout(x=digits.holdout_x, y=digits.holdout_y),
            progress=kill_the_child,
        )

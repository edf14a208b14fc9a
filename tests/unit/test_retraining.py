"""Retraining hooks run as documented, and the challenger must beat the champion."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from control_plane.digits import train_digits_model
from control_plane.retrain_digits import shift_digits, train_shift_aware
from control_plane.retraining import (
    HookError,
    RetrainContext,
    RetrainHook,
    compare_models,
    run_hook,
)


def context(tmp_path: Path) -> RetrainContext:
    return RetrainContext(
        request_id=7, model="digits", version="1", new_version="2", output_dir=tmp_path / "out"
    )


def test_command_hook_gets_the_request_and_returns_its_files(tmp_path: Path) -> None:
    script = (
        "import os, pathlib, numpy as np;"
        "out = pathlib.Path(os.environ['EDGEFLEET_OUTPUT_DIR']);"
        "(out / 'model.onnx').write_bytes(os.environ['EDGEFLEET_NEW_VERSION'].encode());"
        "np.save(out / 'samples.npy', np.zeros((2, 3), np.float32))"
    )
    result = run_hook(RetrainHook("command", [sys.executable, "-c", script]), context(tmp_path))
    assert result is not None
    assert result.model_path.read_bytes() == b"2"
    assert result.holdout_path is None


def test_failing_command_hook_reports_its_output(tmp_path: Path) -> None:
    script = "import sys; print('no training data today'); sys.exit(3)"
    with pytest.raises(HookError, match=r"exited 3: no training data today"):
        run_hook(RetrainHook("command", [sys.executable, "-c", script]), context(tmp_path))


def test_command_hook_that_writes_no_model_fails(tmp_path: Path) -> None:
    with pytest.raises(HookError, match=r"did not write model\.onnx"):
        run_hook(RetrainHook("command", [sys.executable, "-c", "pass"]), context(tmp_path))


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/retrain", received
    server.shutdown()


def test_webhook_hook_posts_the_request(
    tmp_path: Path, webhook_server: tuple[str, list[dict[str, str]]]
) -> None:
    url, received = webhook_server
    assert run_hook(RetrainHook("webhook", url), context(tmp_path)) is None
    assert received == [
        {
            "model": "digits",
            "version": "1",
            "new_version": "2",
            "output_dir": str(tmp_path / "out"),
            "request_id": "7",
        }
    ]


def test_unreachable_webhook_is_a_hook_error(tmp_path: Path) -> None:
    with pytest.raises(HookError, match="webhook"):
        run_hook(RetrainHook("webhook", "http://127.0.0.1:9/none"), context(tmp_path))


def test_retrained_model_beats_champion_on_shifted_inputs_only() -> None:
    champion = train_digits_model()
    challenger = train_shift_aware(6.0)
    shifted = compare_models(
        champion=champion.onnx_bytes,
        challenger=challenger.onnx_bytes,
        holdout_x=shift_digits(champion.holdout_x, 6.0),
        holdout_y=champion.holdout_y,
    )
    assert shifted.challenger_wins
    assert shifted.challenger_accuracy - shifted.champion_accuracy > 0.1
    strict = compare_models(
        champion=champion.onnx_bytes,
        challenger=champion.onnx_bytes,
        holdout_x=champion.holdout_x,
        holdout_y=champion.holdout_y,
        margin=0.01,
    )
    assert not strict.challenger_wins
    assert np.isclose(strict.champion_accuracy, strict.challenger_accuracy)

"""`edgefleet model register` against a served control plane: samples and holdout go as
the files are (.npy or .npz keyed by input name, labels in the holdout), the task is
stored with the version, and a refusal prints the input, dtype and shape literally."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.control_plane.cli.main import app as cli
from edgefleet.control_plane.core.netutil import free_port
from tests.support.polling import wait_until
from tests.support.signature_models import (
    binary_detector,
    int32_model,
    three_input_model,
    three_input_samples,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    command = [sys.executable, "-m", "edgefleet.control_plane", "serve", "--port", str(port)]
    command += ["--data-dir", str(tmp_path / "cp"), "--broker", f"mqtt://127.0.0.1:{free_port()}"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return httpx.get(f"{base}/api/v1/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, "the control plane to serve", timeout=120)
    yield base
    process.terminate()
    process.wait()


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs: kwargs
    path.write_bytes(buffer.getvalue())
    return path


def test_register_takes_npz_samples_holdout_labels_and_a_task(url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    model = tmp_path / "vad.onnx"
    model.write_bytes(three_input_model())
    samples = write_npz(tmp_path / "samples.npz", **three_input_samples(100))
    done = runner.invoke(
        cli,
        [
            "model",
            "register",
            "vad",
            "1",
            "--file",
            str(model),
            "--samples",
            str(samples),
            "--task",
            "score=regression,state_out=generic",
            "--api",
            url,
        ],
    )
    assert done.exit_code == 0, done.output
    assert "task score=regression,state_out=generic" in " ".join(done.output.split())

    detector = binary_detector()
    onnx_file = tmp_path / "detector.onnx"
    onnx_file.write_bytes(detector.onnx_bytes)
    npy = tmp_path / "samples.npy"
    np.save(npy, detector.samples)
    holdout = write_npz(
        tmp_path / "holdout.npz", features=detector.holdout_x, labels=detector.holdout_y
    )
    done = runner.invoke(
        cli,
        [
            "model",
            "register",
            "det",
            "1",
            "--file",
            str(onnx_file),
            "--samples",
            str(npy),
            "--holdout",
            str(holdout),
            "--task",
            "binary:0.5",
            "--api",
            url,
        ],
    )
    assert done.exit_code == 0, done.output
    listed = httpx.get(f"{url}/api/v1/models").json()
    assert {m["name"]: m["task"] for m in listed} == {
        "vad": "score=regression,state_out=generic",
        "det": "binary:0.5",
    }


def test_register_refusal_names_the_input_and_shows_brackets_literally(
    url: str, tmp_path: Path
) -> None:
    model = tmp_path / "ints.onnx"
    model.write_bytes(int32_model())
    samples = tmp_path / "samples.npy"
    np.save(samples, np.zeros((5, 8), np.float32))
    done = CliRunner().invoke(
        cli,
        [
            "model",
            "register",
            "ints",
            "1",
            "--file",
            str(model),
            "--samples",
            str(samples),
            "--api",
            url,
        ],
    )
    assert done.exit_code == 1
    assert "input 'tokens' expects INT32[-1, 8], given FP32[5, 8]" in " ".join(done.output.split())

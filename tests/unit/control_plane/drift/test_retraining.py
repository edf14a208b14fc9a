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
from pydantic import ValidationError

from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.drift.hook_config import RetrainHookSpec, load_hooks_file
from edgefleet.control_plane.drift.hook_runner import (
    HOOK_PATH,
    OUTPUT_LIMIT,
    HookError,
    RetrainContext,
    compare_models,
    run_hook,
)
from edgefleet_demo.digits import DigitsModel
from edgefleet_demo.retrain_digits import shift_digits, train_shift_aware
from tests.support.polling import wait_until


def context(tmp_path: Path) -> RetrainContext:
    return RetrainContext(
        request_id=7, model="digits", version="1", new_version="2", output_dir=tmp_path / "out"
    )


def python_hook(script: str, **options: object) -> RetrainHookSpec:
    return RetrainHookSpec.model_validate({"command": [sys.executable, "-c", script], **options})


def test_command_hook_gets_the_request_and_returns_its_files(tmp_path: Path) -> None:
    script = (
        "import os, pathlib, numpy as np;"
        "out = pathlib.Path(os.environ['EDGEFLEET_OUTPUT_DIR']);"
        "(out / 'model.onnx').write_bytes(os.environ['EDGEFLEET_NEW_VERSION'].encode());"
        "np.save(out / 'samples.npy', np.zeros((2, 3), np.float32))"
    )
    result = run_hook(python_hook(script), context(tmp_path), workspace=tmp_path)
    assert result.model_path is not None
    assert result.model_path.read_bytes() == b"2"
    assert result.holdout_path is None
    assert result.exit_code == 0


def test_command_hook_inherits_nothing_but_what_is_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_TOKEN", "eft_secret")
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    script = (
        "import os, json, pathlib;"
        "out = pathlib.Path(os.environ['EDGEFLEET_OUTPUT_DIR']);"
        "print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))"
    )
    spec = python_hook(script, env={"TRAINER_REGION": "eu"})
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with pytest.raises(HookError, match=r"did not write model\.onnx") as failure:
        run_hook(spec, context(workspace), workspace=workspace)
    seen = json.loads(failure.value.output)
    assert seen["cwd"] == str(workspace)
    assert seen["env"] == {
        "PATH": HOOK_PATH,
        "HOME": str(workspace),
        "TMPDIR": str(workspace),
        "LANG": "C.UTF-8",
        "TRAINER_REGION": "eu",
        "EDGEFLEET_MODEL": "digits",
        "EDGEFLEET_VERSION": "1",
        "EDGEFLEET_NEW_VERSION": "2",
        "EDGEFLEET_OUTPUT_DIR": str(workspace / "out"),
        "EDGEFLEET_REQUEST_ID": "7",
    }


def test_failing_command_hook_reports_its_output(tmp_path: Path) -> None:
    script = "import sys; print('no training data today'); sys.exit(3)"
    with pytest.raises(HookError, match=r"exited 3: no training data today") as failure:
        run_hook(python_hook(script), context(tmp_path), workspace=tmp_path)
    assert failure.value.exit_code == 3
    assert failure.value.output.strip() == "no training data today"


def test_command_hook_output_is_kept_to_its_last_part(tmp_path: Path) -> None:
    script = "import sys; sys.stdout.write('x' * 1_000_000); sys.stderr.write('the end')"
    with pytest.raises(HookError) as failure:
        run_hook(python_hook(script), context(tmp_path), workspace=tmp_path)
    output = failure.value.output
    assert output.startswith(f"[{1_000_000 + 7 - OUTPUT_LIMIT} earlier bytes dropped]")
    assert output.endswith("the end")
    assert len(output.encode()) < OUTPUT_LIMIT + 100


def test_command_hook_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid));"
        "print('training', flush=True); time.sleep(600)"
    )
    with pytest.raises(HookError, match="timed out after 1 s") as failure:
        run_hook(python_hook(script, timeout_s=1), context(tmp_path), workspace=tmp_path)
    assert "training" in failure.value.output
    status = Path(f"/proc/{int(pid_file.read_text())}/status")

    def child_gone() -> bool:  # reaped, or a zombie until init reaps it
        try:
            return "State:\tZ" in status.read_text()
        except FileNotFoundError:
            return True

    wait_until(child_gone, "the hook's own child to be killed with it")


def test_command_that_writes_no_model_fails(tmp_path: Path) -> None:
    with pytest.raises(HookError, match=r"did not write model\.onnx"):
        run_hook(python_hook("pass"), context(tmp_path), workspace=tmp_path)


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


def test_webhook_hook_posts_the_request_without_local_paths(
    tmp_path: Path, webhook_server: tuple[str, list[dict[str, str]]]
) -> None:
    url, received = webhook_server
    result = run_hook(RetrainHookSpec(webhook=url), context(tmp_path), workspace=tmp_path)
    assert result.model_path is None
    assert result.output.startswith("HTTP 202")
    assert received == [
        {
            "model": "digits",
            "version": "1",
            "new_version": "2",
            "request_id": "7",
            "field_data": "/api/v1/models/digits/field-data?version=1",
        }
    ]


def test_unreachable_webhook_is_a_hook_error(tmp_path: Path) -> None:
    spec = RetrainHookSpec.model_validate({"webhook": "http://127.0.0.1:9/none?key=s3cret"})
    with pytest.raises(HookError, match="webhook") as failure:
        run_hook(spec, context(tmp_path), workspace=tmp_path)
    assert "s3cret" not in str(failure.value)


@pytest.mark.parametrize(
    ("definition", "complaint"),
    [
        ({"command": ["python3", "-c", "pass"]}, "absolute path"),
        ({"command": []}, "at least 1 item"),
        ({}, "exactly one of command or webhook"),
        ({"command": ["/bin/true"], "webhook": "http://h/"}, "exactly one of command or webhook"),
        ({"webhook": "file:///etc/passwd"}, "URL scheme should be 'http' or 'https'"),
        ({"command": ["/bin/true"], "env": {"EDGEFLEET_OUTPUT_DIR": "/"}}, "cannot set"),
        ({"command": ["/bin/true"], "shell": True}, "Extra inputs are not permitted"),
    ],
)
def test_hook_definitions_are_checked(definition: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        RetrainHookSpec.model_validate(definition)


def test_hooks_come_from_a_toml_file_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "hooks.toml"
    path.write_text(
        '[hooks.nightly]\ncommand = ["/usr/bin/env", "true"]\ntimeout_s = 60\n'
        '[hooks.trainer]\nwebhook = "https://trainer.example/retrain"\n'
    )
    assert load_hooks_file(path)["nightly"].command == ["/usr/bin/env", "true"]
    settings = Settings(
        data_dir=tmp_path,
        retraining_hooks_file=path,
        retraining_hooks={"other": {"command": ["/bin/true"]}},  # type: ignore[dict-item]
    )
    assert sorted(settings.retraining_hooks) == ["nightly", "other", "trainer"]
    assert settings.retraining_hooks["trainer"].kind == "webhook"
    with pytest.raises(ValidationError, match="defined twice"):
        Settings(
            data_dir=tmp_path,
            retraining_hooks_file=path,
            retraining_hooks={"nightly": {"command": ["/bin/true"]}},  # type: ignore[dict-item]
        )
    with pytest.raises(ValidationError, match="names must match"):
        Settings(data_dir=tmp_path, retraining_hooks={"../x": {"command": ["/bin/true"]}})  # type: ignore[dict-item]


def test_retrained_model_beats_champion_on_shifted_inputs_only(digits: DigitsModel) -> None:
    champion = digits
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

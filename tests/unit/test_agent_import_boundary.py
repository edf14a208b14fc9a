"""What the long-lived agent process may import, checked in a fresh interpreter.

The agent must never pull in the control plane's stack. It keeps python-tuf and
``cryptography`` (about 12 MiB resident, never given back) out of its own memory, as
TUF verification runs in the short-lived ``agent.verify_worker`` child, and pydantic
too (about 10 MiB): the contract's records are msgspec structs (``edgefleet.schema``).
"""

from __future__ import annotations

import json
import subprocess
import sys

CONTROL_PLANE_STACK = {"control_plane", "converters", "fastapi", "sqlmodel", "apscheduler"}
VERIFICATION_STACK = {"tuf", "securesystemslib", "cryptography", "urllib3"}
PYDANTIC = {"pydantic", "pydantic_core"}


def top_level_modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in json.loads(out)}


def test_the_agent_daemon_imports_neither_the_control_plane_nor_tuf_nor_pydantic() -> None:
    loaded = top_level_modules_after("import agent.daemon, agent.cli")
    assert "agent" in loaded and "msgspec" in loaded
    assert not loaded & CONTROL_PLANE_STACK
    assert not loaded & VERIFICATION_STACK
    assert not loaded & PYDANTIC


def test_the_verify_worker_carries_the_tuf_stack_but_not_the_model_runtime() -> None:
    loaded = top_level_modules_after("import agent.verify_worker, agent.tuf_client")
    assert {"tuf", "cryptography"} <= loaded
    assert not loaded & ({"numpy", "onnxruntime"} | CONTROL_PLANE_STACK)

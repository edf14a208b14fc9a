"""What the long-lived agent process may import, checked in a fresh interpreter.

The agent must never pull in the control plane's stack. It keeps python-tuf and
``cryptography`` (about 12 MiB resident, never given back) out of its own memory, as
TUF verification runs in the short-lived ``edgefleet.agent.verification.verify_worker``
child, and pydantic
too (about 10 MiB): the contract's records are msgspec structs (``edgefleet.schema``).
"""

from __future__ import annotations

import json
import subprocess
import sys

CONTROL_PLANE_STACK = {
    "edgefleet.control_plane",
    "edgefleet.converters",
    "edgefleet_demo",
    "fastapi",
    "sqlmodel",
    "apscheduler",
}
VERIFICATION_STACK = {"tuf", "securesystemslib", "cryptography", "urllib3"}
PYDANTIC = {"pydantic", "pydantic_core"}


def top_level_modules_after(statement: str) -> set[str]:
    """Every top-level package loaded, plus ``edgefleet.<subpackage>`` for edgefleet's own."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    names = set()
    for name in json.loads(out):
        parts = name.split(".")
        names.add(parts[0])
        if parts[0] == "edgefleet" and len(parts) > 1:
            names.add(".".join(parts[:2]))
    return names


def test_the_agent_daemon_imports_neither_the_control_plane_nor_tuf_nor_pydantic() -> None:
    loaded = top_level_modules_after("import edgefleet.agent.daemon, edgefleet.agent.cli")
    assert "edgefleet.agent" in loaded and "msgspec" in loaded
    assert not loaded & CONTROL_PLANE_STACK
    assert not loaded & VERIFICATION_STACK
    assert not loaded & PYDANTIC


def test_the_verify_worker_carries_the_tuf_stack_but_not_the_model_runtime() -> None:
    loaded = top_level_modules_after(
        "import edgefleet.agent.verification.verify_worker, edgefleet.agent.verification.tuf_client"
    )
    assert {"tuf", "cryptography"} <= loaded
    assert not loaded & ({"numpy", "onnxruntime"} | CONTROL_PLANE_STACK)

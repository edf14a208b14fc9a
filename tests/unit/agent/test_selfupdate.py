"""Agent releases on the device side without a network: the bundle kind that admits
wheels, the wheel unpacking that keeps every file inside the version's directory, and
the signed kind that keeps an agent release out of the model slots."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.errors import InstallError
from edgefleet.agent.install.checks import TargetCustom, check_signed
from edgefleet.agent.install.selfupdate import unpack_wheel
from edgefleet.bundle import unpack_bundle, write_bundle
from edgefleet.errors import BundleError
from edgefleet.messages import BundleOffer

WHEEL_NAME = "edgefleet-0.2.0-py3-none-any.whl"


def wheel(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def agent_fields(kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "bundle_id": "agent-0.2.0-x86-64-gateway-onnx-r4",
        "model": {"name": "edgefleet-agent", "version": "0.2.0"},
        "release": 4,
        "profiles": ["x86-64-gateway-onnx"],
        "runtime": {"name": "python"},
        "artifact": WHEEL_NAME,
        "signature": {"inputs": [], "outputs": []},
    }


def test_agent_bundle_carries_wheels_and_unpacks_them_checked(tmp_path: Path) -> None:
    data = wheel({"edgefleet/agent/__init__.py": b'__version__ = "0.2.0"\n'})
    write_bundle(tmp_path / "a.tar", agent_fields("agent"), {WHEEL_NAME: (data, "agent_wheel")})

    manifest = unpack_bundle(tmp_path / "a.tar", tmp_path / "out")

    assert manifest.kind == "agent"
    assert (tmp_path / "out" / WHEEL_NAME).read_bytes() == data


def test_model_bundle_refuses_a_wheel(tmp_path: Path) -> None:
    data = wheel({"x.py": b""})
    with pytest.raises(BundleError, match="file type not allowed"):
        write_bundle(tmp_path / "m.tar", agent_fields("model"), {WHEEL_NAME: (data, "other")})


def test_wheel_member_leaving_the_site_dir_is_refused(tmp_path: Path) -> None:
    path = tmp_path / WHEEL_NAME
    path.write_bytes(wheel({"../escape.py": b"print('out')"}))

    with pytest.raises(BundleError, match="unsafe path"):
        unpack_wheel(path, tmp_path / "site")
    assert not (tmp_path / "escape.py").exists()


def test_platform_wheel_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numpy-2.0.0-cp311-cp311-linux_aarch64.whl"
    path.write_bytes(wheel({"numpy/__init__.py": b""}))

    with pytest.raises(BundleError, match="pure-Python"):
        unpack_wheel(path, tmp_path / "site")


def test_pure_wheel_unpacks_onto_the_site_dir(tmp_path: Path) -> None:
    path = tmp_path / WHEEL_NAME
    path.write_bytes(wheel({"edgefleet/agent/__init__.py": b"x = 1\n"}))

    unpack_wheel(path, tmp_path / "site")

    assert (tmp_path / "site" / "edgefleet" / "agent" / "__init__.py").read_bytes() == b"x = 1\n"


def test_agent_release_offered_as_a_model_is_refused() -> None:
    offer = BundleOffer(bundle_id="agent-0.2.0-r4", target="agent-0.2.0-r4.tar", release=4)
    custom = TargetCustom(bundle_id="agent-0.2.0-r4", release=4, kind="agent",
                          profiles=["x86-64-gateway-onnx"])  # fmt: skip

    with pytest.raises(InstallError, match="signed metadata says agent"):
        check_signed(offer, custom, None, serving=None, profile="x86-64-gateway-onnx",
                     machine="x86_64")  # fmt: skip

"""A metadata refresh broken off half-way goes on once the transfer resumes.

python-tuf allows one ``refresh()`` per ``Updater``. When the targets metadata
timed out after the timestamp and snapshot were loaded (seen in the fleet
benchmark with hundreds of devices fetching at once), the installer used to call
``refresh()`` again on the same Updater, which raised ``RuntimeError`` and crashed
the install job ("internal error in the agent"). Now a broken transfer is resumed
below TUF (``ResumingTransport``), so the refresh never sees it.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.errors import TransferError
from edgefleet.agent.inference.runtime import ModelHolder
from edgefleet.agent.install.updater import Installer
from edgefleet.agent.verification.verifier import InProcessVerifier, ResumingTransport
from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.messages import BundleOffer, InstallReport

PROFILE = "x86-64-gateway-onnx"
BUNDLE = "digits-1-x86-64-gateway-onnx-r1"


class FlakyTargetsTransport:
    """Serves the repository, but the first request for targets metadata times out."""

    def __init__(self, repository: SignedRepository) -> None:
        self.repository = repository
        self.asked: list[str] = []

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        self.asked.append(path)
        if path.endswith("targets.json") and self.asked.count(path) == 1:
            raise TransferError(f"fetch {path}: no answer after 4 attempts of 10.0s")
        try:
            data, _total = self.repository.read_chunk(path, 0, max_length + 1)
        except NotFoundError as e:
            raise TransferError(str(e), status=404) from e
        return iter([data])


def test_refresh_interrupted_after_the_timestamp_is_retried_and_the_install_goes_on(
    tmp_path: Path,
) -> None:
    repository = SignedRepository(tmp_path / "repository")
    repository.init_or_load()
    custom = {"bundle_id": BUNDLE, "release": 1, "model": "digits", "profiles": [PROFILE],
              "hardware": [platform.machine()]}  # fmt: skip
    repository.add_target(f"{BUNDLE}.tar", b"not a tar archive" * 64, custom)
    root = tmp_path / "root.json"
    root.write_bytes(repository.root_bytes())
    config = AgentConfig(
        device_id="dev-refreshretry01",
        profile=PROFILE,
        data_dir=tmp_path / "agent",
        trust_root=root,
    )
    transport = FlakyTargetsTransport(repository)
    waited: list[float] = []
    resuming = ResumingTransport(
        transport, link_ready=lambda wait: waited.append(wait) or True, attempts=2, wait_s=5.0
    )
    reports: list[InstallReport] = []
    installer = Installer(
        config=config,
        holder=ModelHolder(),
        verifier=InProcessVerifier(config.data_dir, resuming),
        report=reports.append,
    )

    final = installer.install(BundleOffer(bundle_id=BUNDLE, target=f"{BUNDLE}.tar", release=1))

    assert sum(p.endswith("targets.json") for p in transport.asked) == 2
    assert waited == [5.0]  # it waited for the link once, then resumed
    # The signed target was found and downloaded; only the (deliberately) bad archive fails.
    assert [r.state for r in reports] == ["downloading", "verified", "failed"]
    assert final.state == "failed" and "internal error" not in (final.reason or "")

"""A metadata refresh broken off half-way is retried on a fresh ngclient Updater.

python-tuf allows one ``refresh()`` per ``Updater``. When the targets metadata
times out after the timestamp and snapshot were loaded (seen in the fleet
benchmark with hundreds of devices fetching at once), the installer used to call
``refresh()`` again on the same Updater, which raised ``RuntimeError`` and crashed
the install job ("internal error in the agent").
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path

from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

from agent.config import AgentConfig, FetchConfig
from agent.runtime import ModelHolder
from agent.slots import SlotStore
from agent.updater import Installer
from control_plane.errors import NotFoundError
from control_plane.repository import SignedRepository
from edgefleet.messages import BundleOffer, InstallReport

PREFIX = "mqtt://repo/"
PROFILE = "x86-64-gateway-onnx"
BUNDLE = "digits-1-x86-64-gateway-onnx-r1"


class FlakyTargetsFetcher(FetcherInterface):
    """Serves the repository, but the first request for targets metadata times out."""

    def __init__(self, repository: SignedRepository) -> None:
        self.repository = repository
        self.asked: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = url.removeprefix(PREFIX)
        self.asked.append(path)
        if path.endswith("targets.json") and self.asked.count(path) == 1:
            raise DownloadError(f"fetch {path}: no answer after 4 attempts of 10.0s")
        try:
            data, _total = self.repository.read_chunk(path, 0, 1 << 30)
        except NotFoundError as e:
            raise DownloadHTTPError(str(e), 404) from e
        return iter([data])


def test_refresh_interrupted_after_the_timestamp_is_retried_and_the_install_goes_on(
    tmp_path: Path,
) -> None:
    repository = SignedRepository(tmp_path / "repository")
    repository.init_or_load()
    custom = {"bundle_id": BUNDLE, "release": 1, "profiles": [PROFILE],
              "hardware": [platform.machine()]}  # fmt: skip
    repository.add_target(f"{BUNDLE}.tar", b"not a tar archive" * 64, custom)
    root = tmp_path / "root.json"
    root.write_bytes(repository.root_bytes())
    config = AgentConfig(
        device_id="dev-refreshretry01",
        profile=PROFILE,
        data_dir=tmp_path / "agent",
        trust_root=root,
        fetch=FetchConfig(resume_attempts=2),
    )
    fetcher = FlakyTargetsFetcher(repository)
    reports: list[InstallReport] = []
    installer = Installer(
        config=config,
        slots=SlotStore(config.data_dir),
        holder=ModelHolder(),
        fetcher=fetcher,
        report=reports.append,
    )

    final = installer.install(BundleOffer(bundle_id=BUNDLE, target=f"{BUNDLE}.tar", release=1))

    assert sum(p.endswith("targets.json") for p in fetcher.asked) == 2
    # The signed target was found and downloaded; only the (deliberately) bad archive fails.
    assert [r.state for r in reports] == ["downloading", "verified", "failed"]
    assert final.state == "failed" and "internal error" not in (final.reason or "")

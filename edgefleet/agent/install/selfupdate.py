"""The agent updates itself: an agent release (a bundle of kind ``agent``) installed beside
the running agent, then handed over to through ``edgefleet-agent-launcher``.

An agent release comes through the same signed path as a model: the offer is a hint,
TUF verifies the target, the signed custom fields (bundle id, release counter, kind,
profile, hardware) decide, and the unpacked manifest must agree with them. What differs
is what is installed and how it takes over::

    downloading   TUF refresh; signed fields checked; disk budget
    verified      the bundle matched its signed length and SHA-256
    staged        wheels unpacked into agent-versions/<version>/site
    smoke_tested  a fresh interpreter imports the new agent from there and reports the
                  version the release claims
    (handover)    handover.json asks the launcher to stop this agent and start the new
                  one; the new one reports ``active`` once it is connected, or the
                  launcher goes back and this agent reports ``rolled_back`` with why

Why a set of pure-Python wheels, unpacked, rather than a packed virtualenv: the agent's
own code is pure Python, while what is costly to build for a small ARM board (numpy,
the model runtime, paho-mqtt's and cryptography's builds) comes with the device's image
and changes rarely. A pure wheel needs no compiler, no pip and no network to install: it
is a zip archive whose contents go on ``sys.path`` as they are. A wheel built for a
platform is refused here, since it could not be checked against this device's ABI
without pip's tag logic; such a dependency change is an image update.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent import __version__
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.errors import InstallError
from edgefleet.agent.install.checks import (
    REFUSALS,
    TargetCustom,
    ensure_trust_root,
    refusal_reason,
    signed_custom,
    unpack_checked,
)
from edgefleet.agent.install.disk import check_disk_budget
from edgefleet.agent.launcher import (
    LAUNCHER_ENV,
    TRIAL_ENV,
    HandoverOutcome,
    HandoverRequest,
    VersionStore,
)
from edgefleet.agent.verification.transport import Verifier
from edgefleet.bundle import Manifest
from edgefleet.errors import BundleError
from edgefleet.fileio import fsync_dir
from edgefleet.messages import BundleOffer, InstallReport
from edgefleet.states.install import InstallState

logger = logging.getLogger(__name__)

ReportSink = Callable[[InstallReport], None]

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
"""An agent version as it names a directory (PEP 440 without a ``+local`` part)."""
VERSION_RE = re.compile(VERSION_PATTERN)
PURE_WHEEL_RE = re.compile(
    r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-\d[^-]*)?-py[23.py]*-none-any\.whl\Z"
)
MAX_WHEEL_UNPACKED_BYTES = 256 * 1024 * 1024
SMOKE_TIMEOUT_S = 120.0
REASON_MAX_CHARS = 480
"""Reports' reasons are kept to what the control plane stores (500 characters)."""


def unpack_wheel(wheel: Path, site: Path, *, max_bytes: int = MAX_WHEEL_UNPACKED_BYTES) -> int:
    """Unpack a pure-Python wheel into ``site`` (a ``sys.path`` entry); bytes written.

    Raises:
        BundleError: naming the wheel: not pure Python, not a zip archive, a member
            whose path leaves ``site``, a link, or more than ``max_bytes`` unpacked.
    """
    name = wheel.name
    if not PURE_WHEEL_RE.fullmatch(name):
        raise BundleError("only pure-Python wheels (py3-none-any) are installed", file=name)
    try:
        with zipfile.ZipFile(wheel) as archive:
            infos = archive.infolist()
            total = 0
            for info in infos:
                parts = Path(info.filename).parts
                if info.filename.startswith(("/", "\\")) or ".." in parts or not parts:
                    raise BundleError(f"unsafe path {info.filename!r} in wheel", file=name)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise BundleError(f"link {info.filename!r} in wheel", file=name)
                total += info.file_size
                if total > max_bytes:
                    raise BundleError(f"wheel unpacks to more than {max_bytes} bytes", file=name)
            for info in infos:
                if info.is_dir():
                    continue
                target = site / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise BundleError(f"not a readable wheel: {e}", file=name) from e
    return total


def smoke_test(site: Path, version: str, *, python: str = sys.executable) -> None:
    """A fresh interpreter must import the new agent's daemon from ``site`` and say it
    is ``version``: a release that cannot even import never gets a handover.

    Raises:
        InstallError: the import failed, or the code says another version.
    """
    code = "import edgefleet.agent.daemon, edgefleet.agent as a; print(a.__version__)"
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop(TRIAL_ENV, None)
    try:
        done = subprocess.run(
            [python, "-P", "-c", code], env=env, capture_output=True, timeout=SMOKE_TIMEOUT_S,
            cwd=site, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"new agent's smoke test did not run: {e}") from e
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise InstallError(
            f"new agent does not import (code {done.returncode}): {' | '.join(tail)}"
        )
    said = done.stdout.decode("utf-8", "replace").strip()
    if said != version:
        raise InstallError(f"release says version {version}, its code says {said}")


class SelfUpdater:
    """Installs agent releases and carries the handover's outcome to the control plane.

    Runs offers on the ``OfferWorker`` thread like model installs; ``start`` runs once
    when the agent starts.
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        verifier: Verifier,
        report: ReportSink,
        machine: str | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.report = report
        self.machine = machine or platform.machine()
        self.python = python
        self.store = VersionStore(config.data_dir)
        self.trial = os.environ.get(TRIAL_ENV) == __version__
        self._confirmer: threading.Thread | None = None

    # -- start-up --------------------------------------------------------------------

    def start(self, wait_connected: Callable[[float], bool], deadline_s: float = 600.0) -> None:
        """Report a handover the launcher undid; on trial, confirm once connected."""
        outcome = self.store.outcome()
        if outcome is not None:
            self._report_outcome(outcome)
        if self.trial:
            self._confirmer = threading.Thread(
                target=self._confirm, args=(wait_connected, deadline_s),
                name="agent-handover", daemon=True,
            )  # fmt: skip
            self._confirmer.start()

    def _report_outcome(self, outcome: HandoverOutcome) -> None:
        reason = outcome.reason
        tail = [line for line in outcome.stderr_tail if line.strip()][-3:]
        if tail:
            reason += "; last stderr: " + " | ".join(tail)
        reason = reason[:REASON_MAX_CHARS]
        logger.error("agent self-update undone version=%s bundle_id=%s reason=%s",
                     outcome.version, outcome.bundle_id, reason)  # fmt: skip
        self.store.add_failed(outcome.bundle_id, reason)
        self.report(
            InstallReport(
                state="rolled_back",
                bundle_id=outcome.bundle_id,
                release=outcome.release,
                rollout_id=outcome.rollout_id,
                reason=reason,
            )
        )
        self.store.remove("outcome.json")  # reported: the spool keeps it until receipted

    def _confirm(self, wait_connected: Callable[[float], bool], deadline_s: float) -> None:
        """The new agent on trial: connected (its status says the new version), then
        ``active`` reported, then ``confirmed.json`` for the launcher."""
        request = self.store.request()
        if request is None or request.version != __version__:
            logger.error("on trial but no handover request names version=%s", __version__)
            return
        if not wait_connected(deadline_s):
            logger.error("on trial and not connected, the launcher will go back")
            return
        self.report(
            InstallReport(
                state="active",
                bundle_id=request.bundle_id,
                release=request.release,
                rollout_id=request.rollout_id,
            )
        )
        self.store.confirm(__version__)
        logger.info("agent self-update confirmed version=%s bundle_id=%s",
                    __version__, request.bundle_id)  # fmt: skip

    # -- install ---------------------------------------------------------------------

    def running_bundle(self) -> str | None:
        """The agent release this process is (None: the agent installed by hand): on
        trial, the one handed over to; once the launcher committed it, ``current.json``'s."""
        request = self.store.request() if self.trial else None
        if request is not None:
            return request.bundle_id
        bundle_id = self.store.current().get("bundle_id")
        return str(bundle_id) if bundle_id else None

    def install(self, offer: BundleOffer, *, received_at: float | None = None) -> InstallReport:
        """Install the agent release ``offer`` and ask for the handover; the last report.

        A refusal is reported (``failed``), never raised; this agent keeps running.
        """
        started = received_at if received_at is not None else time.monotonic()

        def send(state: InstallState, **extra: object) -> InstallReport:
            message = InstallReport(
                state=state, bundle_id=offer.bundle_id, release=offer.release,
                rollout_id=offer.rollout_id, **extra,  # type: ignore[arg-type]
            )  # fmt: skip
            self.report(message)
            return message

        if offer.bundle_id == self.running_bundle():
            return send("active", install_seconds=0.0)
        failed = self.store.failed().get(offer.bundle_id)
        if failed is not None:
            return send("rolled_back", reason=f"handover failed before: {failed}")
        try:
            return self._run(offer, send, started)
        except REFUSALS as e:
            reason = refusal_reason(e)[:REASON_MAX_CHARS]
            logger.warning("agent release refused bundle_id=%s reason=%s", offer.bundle_id, reason)
            return send("failed", reason=reason)

    def _run(
        self, offer: BundleOffer, send: Callable[..., InstallReport], started: float
    ) -> InstallReport:
        if not os.environ.get(LAUNCHER_ENV):
            raise InstallError("not started by edgefleet-agent-launcher: nothing would hand over")
        ensure_trust_root(self.config)
        send("downloading")
        staging = self.store.root / f".staging-{offer.bundle_id}"
        with self.verifier.open(offer.target) as signed:
            custom = signed_custom(signed)
            self.check_signed(offer, custom)
            check_disk_budget(self.config, signed.length, staging, use="agent_versions")
            path = signed.download()
        send("verified")
        shutil.rmtree(staging, ignore_errors=True)
        manifest = unpack_checked(path, staging / "bundle", custom, self.config.profile)
        version = self.check_manifest(manifest)
        site = staging / "site"
        site.mkdir()
        for entry in manifest.files:
            if entry.path.endswith(".whl"):
                unpack_wheel(staging / "bundle" / entry.path, site)
        send("staged")
        smoke_test(site, version, python=self.python)
        fsync_dir(site)
        final = self.store.root / version
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        fsync_dir(self.store.root)
        path.unlink(missing_ok=True)  # only a cache; TUF re-downloads
        report = send("smoke_tested", install_seconds=time.monotonic() - started)
        self.store.request_handover(
            HandoverRequest(
                version=version,
                bundle_id=offer.bundle_id,
                release=offer.release,
                rollout_id=offer.rollout_id,
            )
        )
        logger.info("agent release staged, handover requested version=%s bundle_id=%s",
                    version, offer.bundle_id)  # fmt: skip
        return report

    def check_signed(self, offer: BundleOffer, custom: TargetCustom) -> None:
        """Refuse what the signed fields rule out for an agent release here.

        Raises:
            InstallError: another bundle, release or kind than offered, not newer than
                the release running, or not for this profile or hardware.
        """
        if custom.bundle_id != offer.bundle_id or custom.release != offer.release:
            raise InstallError(
                f"signed target is {custom.bundle_id} r{custom.release}, "
                f"offer names {offer.bundle_id} r{offer.release}"
            )
        if custom.kind != "agent":
            raise InstallError(f"signed target is a {custom.kind} bundle, not an agent release")
        running = int(self.store.current().get("release") or 0)
        if custom.release <= running:
            raise InstallError(f"release {custom.release} is not newer than running {running}")
        if self.config.profile not in custom.profiles:
            raise InstallError(
                f"release is for profiles {custom.profiles}, not {self.config.profile}"
            )
        if custom.hardware and self.machine not in custom.hardware:
            raise InstallError(f"release is for hardware {custom.hardware}, not {self.machine}")

    def check_manifest(self, manifest: Manifest) -> str:
        """The release's version, from a manifest that says it is an agent release.

        Raises:
            InstallError: another kind of bundle, no wheel, or a version that cannot
                name a directory, or that is the version running now.
        """
        if manifest.kind != "agent":
            raise InstallError(f"manifest says a {manifest.kind} bundle, not an agent release")
        version = manifest.model.version
        if not VERSION_RE.fullmatch(version):
            raise InstallError(f"agent version {version!r} cannot name a directory")
        if version == __version__:
            raise InstallError(f"agent version {version} is the one running")
        if not any(entry.path.endswith(".whl") for entry in manifest.files):
            raise InstallError("agent release holds no wheel")
        return version

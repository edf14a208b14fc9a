"""Agent releases: the agent's own code, signed and recorded as a bundle of kind ``agent``.

An agent release is a set of pure-Python wheels (the ``edgefleet`` wheel, and any pure
dependency it needs that the device image lacks) for one firmware profile. It becomes a
bundle like a model's: the same release counter, the same TUF target signing, the same
``Bundle`` row, so ``edgefleet rollout create`` rolls it out through the same waves,
gates and deadlines. Only the manifest's ``kind`` (and the signed ``kind``) differ, and
the agent's install pipeline dispatches on it (``edgefleet.agent.install.selfupdate``).

What is checked here, before anything is signed: each wheel is a zip archive tagged
pure Python (``py3-none-any``), exactly one is the ``edgefleet`` wheel, and its
``edgefleet/agent/__init__.py`` says the version being released, so the version an
operator names is the version devices will report.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from edgefleet.bundle import FileRole
from edgefleet.control_plane.core.errors import InvalidRequestError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import Bundle
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.bundle_builder import (
    _build_lock,
    get_profile,
    next_release,
    store_signed_bundle,
)
from edgefleet.control_plane.trust.repository import SignedRepository

logger = logging.getLogger(__name__)

AGENT_MODEL_NAME = "edgefleet-agent"
"""What an agent release's bundle names as its ``model`` (the code it carries)."""
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
"""An agent version: PEP 440 without a ``+local`` part (it names a directory on devices)."""
WHEEL_NAME_RE = re.compile(
    r"^(?P<dist>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!]+)(-\d[^-]*)?-py[23.py]*-none-any\.whl\Z"
)
AGENT_INIT = "edgefleet/agent/__init__.py"
_VERSION_LINE = re.compile(rb"^__version__\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
MAX_WHEELS = 32


def wheel_agent_version(name: str, data: bytes) -> str | None:
    """The agent version a wheel's ``edgefleet/agent/__init__.py`` says; None when the
    wheel holds no agent.

    Raises:
        InvalidRequestError: not a pure-Python wheel, or not a readable zip archive.
    """
    if not WHEEL_NAME_RE.fullmatch(name):
        raise InvalidRequestError(f"{name}: not a pure-Python wheel name (…-py3-none-any.whl)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            try:
                init = archive.read(AGENT_INIT)
            except KeyError:
                return None
    except zipfile.BadZipFile as e:
        raise InvalidRequestError(f"{name}: not a readable wheel: {e}") from e
    match = _VERSION_LINE.search(init)
    if match is None:
        raise InvalidRequestError(f"{name}: {AGENT_INIT} names no __version__")
    return match.group(1).decode("ascii", "replace")


def add_agent_release(
    *,
    session: Session,
    repository: SignedRepository,
    settings: Settings,
    version: str,
    profile_name: str,
    wheels: Mapping[str, bytes],
    actor: str = "system",
) -> Bundle:
    """Sign and record ``wheels`` as agent release ``version`` for one profile.

    Args:
        session: committed here.
        repository: the signed repository the target is added to.
        settings: where bundles are written, and the profiles.
        version: the version the agent's code says (``edgefleet.agent.__version__``).
        profile_name: the firmware profile whose devices may install it.
        wheels: file name -> bytes, every one a pure-Python wheel.
        actor: who added it, for the audit entry (``agent_release.add``).

    Returns:
        The bundle, ready for ``rollout create``.

    Raises:
        InvalidRequestError: a bad version or wheel, no agent wheel, or one whose code
            says another version.
        NotFoundError: no such profile.
    """
    if not re.fullmatch(VERSION_PATTERN, version):
        raise InvalidRequestError(f"version {version!r} must match {VERSION_PATTERN}")
    if not wheels or len(wheels) > MAX_WHEELS:
        raise InvalidRequestError(f"an agent release holds 1 to {MAX_WHEELS} wheels")
    profile = get_profile(settings, profile_name)
    said = {name: wheel_agent_version(name, data) for name, data in wheels.items()}
    agents = [name for name, found in said.items() if found is not None]
    if len(agents) != 1:
        raise InvalidRequestError(f"exactly one wheel must hold {AGENT_INIT}; found {len(agents)}")
    artifact = agents[0]
    if said[artifact] != version:
        raise InvalidRequestError(f"{artifact} holds agent version {said[artifact]}, not {version}")
    files: dict[str, tuple[bytes, FileRole]] = {
        name: (data, "agent_wheel") for name, data in wheels.items()
    }
    with _build_lock:
        release = next_release(session)
        bundle_id = f"agent-{version}-{profile.name}-r{release}"
        fields: dict[str, Any] = {
            "kind": "agent",
            "bundle_id": bundle_id,
            "model": {"name": AGENT_MODEL_NAME, "version": version},
            "release": release,
            "profiles": [profile.name],
            "hardware": [],  # pure Python: any CPU the profile's image runs on
            "runtime": {"name": "python", "version": ">=3.11"},
            "artifact": artifact,
            "signature": {"inputs": [], "outputs": []},
            "lineage": {"built_at": datetime.now(UTC).isoformat(), "wheels": sorted(wheels)},
        }
        bundle, size = store_signed_bundle(
            session=session,
            repository=repository,
            settings=settings,
            fields=fields,
            files=files,
            custom={
                "kind": "agent",
                "model": AGENT_MODEL_NAME,
                "model_version": version,
                "profiles": [profile.name],
                "hardware": [],
            },
            what="agent release",
        )
        record_audit(
            session=session,
            actor=actor,
            action="agent_release.add",
            target=bundle_id,
            detail={"version": version, "profile": profile.name, "wheels": sorted(wheels)},
        )
        session.commit()
        session.refresh(bundle)
    logger.info("agent release added bundle_id=%s version=%s bytes=%d", bundle_id, version,
                size)  # fmt: skip
    return bundle

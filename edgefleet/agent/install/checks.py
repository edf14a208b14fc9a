"""What an offered bundle must prove before it is installed or shadowed.

The offer is a hint, never evidence: the signed target's custom fields (bundle id,
release counter, profiles, hardware) decide, and the unpacked manifest must agree
with them. TUF alone would accept an older bundle still listed in newer metadata, so
the release counter is checked here against the highest release ever installed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated

import msgspec

from edgefleet import schema
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.errors import AgentError, InstallError, TransferError
from edgefleet.agent.inference.runtime import ActiveModel
from edgefleet.agent.install.slots import ActiveRecord
from edgefleet.agent.verification.transport import SignedBundle, tuf_metadata_dir
from edgefleet.bundle import Manifest, unpack_bundle
from edgefleet.errors import BundleError
from edgefleet.messages import BundleOffer

logger = logging.getLogger(__name__)

REFUSALS = (AgentError, BundleError, OSError, ValueError)
"""What a bad bundle, bad metadata or a broken transfer raises: refused, never a crash."""


class TargetCustom(schema.Struct, frozen=True, kw_only=True):
    """The ``custom`` fields of a bundle's signed TUF target entry (others are ignored)."""

    bundle_id: str
    release: Annotated[int, msgspec.Meta(ge=1)]
    kind: str = "model"
    model: str | None = None
    model_version: str | None = None
    profiles: list[str] = msgspec.field(default_factory=list)
    hardware: list[str] = msgspec.field(default_factory=list)


def signed_custom(signed: SignedBundle) -> TargetCustom:
    """The signed target's custom fields, checked; ``InstallError`` names what is wrong."""
    try:
        return schema.convert(signed.custom, TargetCustom)
    except msgspec.ValidationError as e:
        raise InstallError(f"signed target has invalid custom fields: {schema.describe(e)}") from e


def ensure_trust_root(config: AgentConfig) -> Path:
    """Seed ngclient's metadata dir with the configured root, once.

    Afterwards ngclient keeps its own root chain there (``root.json`` becomes a
    symlink into ``root_history``), so the configured file is never read again.

    Returns:
        The metadata dir.

    Raises:
        AgentError: the configured root cannot be copied.
    """
    metadata_dir = tuf_metadata_dir(config.data_dir)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    root = metadata_dir / "root.json"
    if not root.exists() and not root.is_symlink():
        try:
            shutil.copyfile(config.trust_root, root)
        except OSError as e:
            raise AgentError(f"cannot install trust root {config.trust_root}: {e}") from e
        logger.info("trust root installed from=%s", config.trust_root)
    return metadata_dir


def refusal_reason(e: Exception) -> str:
    """One line saying why, for the report."""
    reason = e.reason if isinstance(e, InstallError | BundleError | TransferError) else str(e)
    if isinstance(e, BundleError) and e.file:
        reason = f"{e.file}: {e.reason}"
    return reason or type(e).__name__


def check_signed(
    offer: BundleOffer,
    custom: TargetCustom,
    active: ActiveRecord | None,
    *,
    serving: ActiveModel | None,
    profile: str,
    machine: str,
) -> bool:
    """Refuse what the signed fields rule out.

    Args:
        offer: what the control plane offered.
        custom: the signed target's custom fields.
        active: ``active.json``, if anything was installed.
        serving: the model being served now.
        profile: this device's profile.
        machine: this device's hardware (``platform.machine()``).

    Returns:
        True when this very bundle is already active and serving.

    Raises:
        InstallError: the signed fields do not match the offer, the release is older
            than one installed, or the bundle is not for this profile or hardware.
    """
    if custom.bundle_id != offer.bundle_id:
        raise InstallError(
            f"signed target is bundle {custom.bundle_id}, offer names {offer.bundle_id}"
        )
    if custom.release != offer.release:
        raise InstallError(
            f"offer says release {offer.release}, signed metadata says {custom.release}"
        )
    if custom.kind != offer.kind:
        raise InstallError(f"offer says a {offer.kind} bundle, signed metadata says {custom.kind}")
    if active is not None:
        installed = active.highest()
        if custom.release < installed:
            raise InstallError(f"release {custom.release} is older than installed {installed}")
        if (
            custom.release == active.release
            and custom.bundle_id == active.bundle_id
            and serving is not None
            and serving.bundle_id == active.bundle_id
        ):
            return True
    if profile not in custom.profiles:
        raise InstallError(f"bundle is for profiles {custom.profiles}, not {profile}")
    if custom.hardware and machine not in custom.hardware:
        raise InstallError(f"bundle is for hardware {custom.hardware}, not {machine}")
    return False


def unpack_checked(path: Path, directory: Path, custom: TargetCustom, profile: str) -> Manifest:
    """Unpack (every member re-checked) and hold the manifest to the signed fields.

    Raises:
        BundleError: a member does not match the bundle's manifest.
        InstallError: the manifest disagrees with the signed fields or the profile.
    """
    manifest = unpack_bundle(path, directory)
    if manifest.bundle_id != custom.bundle_id:
        raise InstallError(f"manifest bundle_id {manifest.bundle_id} != signed {custom.bundle_id}")
    if manifest.release != custom.release:
        raise InstallError(f"manifest release {manifest.release} != signed {custom.release}")
    if profile not in manifest.profiles:
        raise InstallError(f"manifest is not built for profile {profile}")
    return manifest

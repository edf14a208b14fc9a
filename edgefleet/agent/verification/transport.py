"""What the verification code shares: the transport, the signed bundle, the verifier's shape.

``verifier`` (where verification runs) and ``tuf_client`` (the python-tuf code it
runs) both speak these, and neither imports the other's module for them. Where TUF's
files live under the data dir is here too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "SignedBundle",
    "Transport",
    "Verifier",
    "downloads_dir",
    "trusted_versions",
    "tuf_metadata_dir",
]


def tuf_metadata_dir(data_dir: Path) -> Path:
    """ngclient's trusted metadata (its root chain, the last verified timestamp...)."""
    return Path(data_dir) / "tuf" / "metadata"


def trusted_versions(data_dir: Path) -> dict[str, int] | None:
    """Versions of the signed metadata this device trusts now, from ngclient's cache.

    Reported in the device's status so that a repository restored from an older
    backup knows what it must sign past. Only a verified refresh writes these files.
    """
    versions: dict[str, int] = {}
    for role in ("root", "timestamp", "snapshot", "targets"):
        try:
            version = json.loads((tuf_metadata_dir(data_dir) / f"{role}.json").read_bytes())[
                "signed"
            ]["version"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(version, int) and not isinstance(version, bool):
            versions[role] = version
    return versions or None


def downloads_dir(data_dir: Path) -> Path:
    """Where verified bundle files land (and ``parts/`` their resumable downloads)."""
    return Path(data_dir) / "downloads"


class Transport(Protocol):
    """Where repository files come from; ``TransferError`` when one cannot be had."""

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        """``path``'s bytes in order, stopping once more than ``max_length`` were given."""
        ...


@dataclass(frozen=True)
class SignedBundle:
    """The offered target as signed metadata describes it; ``download`` fetches and checks it."""

    name: str
    length: int
    custom: dict[str, Any]
    _download: Callable[[], Path]

    def download(self) -> Path:
        """Fetch the target and check its length and hashes; the verified file.

        Raises:
            VerificationError: the bytes are not as signed.
            TransferError: the file could not be fetched.
        """
        return self._download()


class Verifier(Protocol):
    """Where verification runs (``verifier.ProcessVerifier`` or ``InProcessVerifier``)."""

    def open(self, target: str) -> contextlib.AbstractContextManager[SignedBundle]:
        """Fresh signed metadata's description of ``target``, for the ``with`` block.

        Raises:
            InstallError: refused: the target is unknown, the clock is before the
                time floor, or TUF refused the metadata (``VerificationError``).
            TransferError: a repository file could not be fetched.
        """
        ...

"""TUF verification of one offered bundle: refresh, find the target, download, check.

The only agent module that imports python-tuf. ngclient's ``Updater`` trusts
nothing but signed metadata: the offer is a hint, never evidence. Its expiry checks
trust the device clock, so the clock is first checked against the time floor
(``edgefleet.agent.verification.timefloor``), and the floor is raised from the verified timestamp.

Bytes come from a ``Transport`` (``stream(path, max_length)``): the MQTT fetcher in
the same process, or the parent agent over a pipe when this runs in the child
process of ``edgefleet.agent.verification.verify_worker`` (the agent's normal mode, so that
python-tuf and
``cryptography`` never take up the long-lived agent's memory; see
``edgefleet.agent.verification.verifier``). TUF's exceptions do not leave this module: a refusal
becomes
``VerificationError`` (named after the TUF error), a broken transfer
``TransferError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    RepositoryError,
)
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from edgefleet.agent.errors import InstallError, TransferError, VerificationError
from edgefleet.agent.verification.timefloor import TimeFloor
from edgefleet.agent.verification.transport import (
    SignedBundle,
    Transport,
    downloads_dir,
    tuf_metadata_dir,
)

REPO_HOST = "repo"
METADATA_BASE_URL = f"mqtt://{REPO_HOST}/metadata/"
TARGET_BASE_URL = f"mqtt://{REPO_HOST}/targets/"


def repository_path(url: str) -> str:
    """``mqtt://repo/metadata/root.json`` -> ``metadata/root.json``; ``TransferError`` else."""
    parts = urlsplit(url)
    path = unquote(parts.path).lstrip("/")
    if parts.scheme != "mqtt" or parts.hostname != REPO_HOST or parts.query or parts.fragment:
        raise TransferError(f"not an mqtt://{REPO_HOST}/ URL: {url}", status=400)
    kind, _, name = path.partition("/")
    if kind not in ("metadata", "targets") or not name or "/" in name:
        raise TransferError(f"unsupported repository path {path!r} in {url}", status=400)
    return path


class TransportFetcher(FetcherInterface):
    """ngclient's fetcher over a ``Transport``, with ngclient's length bound passed on.

    ngclient stops reading once a file exceeds its allowed length; the bound is also
    handed to the transport so that, across a pipe, the sender stops too.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._max_length = 0

    def download_bytes(self, url: str, max_length: int) -> bytes:
        self._max_length = max_length
        return super().download_bytes(url, max_length)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        self._max_length = max_length
        with super().download_file(url, max_length) as handle:
            yield handle

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            path = repository_path(url)
            chunks = self.transport.stream(path, self._max_length)
        except TransferError as e:
            raise _download_error(e) from e
        return self._translated(chunks)

    @staticmethod
    def _translated(chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        except TransferError as e:
            raise _download_error(e) from e


def _download_error(e: TransferError) -> DownloadError:
    if e.status is not None:
        return DownloadHTTPError(e.reason, e.status)
    return DownloadError(e.reason)


@contextlib.contextmanager
def _tuf_errors() -> Iterator[None]:
    """TUF's exceptions as the agent's: refusals and broken transfers."""
    try:
        yield
    except DownloadLengthMismatchError as e:  # more bytes than signed: a refusal
        raise VerificationError(type(e).__name__, str(e)) from e
    except DownloadHTTPError as e:
        raise TransferError(str(e), status=e.status_code) from e
    except DownloadError as e:
        raise TransferError(str(e)) from e
    except RepositoryError as e:
        raise VerificationError(type(e).__name__, str(e)) from e


class TargetVerifier:
    """One verification: ``find`` the offered target in fresh metadata, then ``download``."""

    def __init__(self, data_dir: Path, transport: Transport) -> None:
        self.data_dir = Path(data_dir)
        self.fetcher = TransportFetcher(transport)
        self.time_floor = TimeFloor(self.data_dir)
        self._updater: Updater | None = None
        self._info: TargetFile | None = None

    def find(self, target: str) -> SignedBundle:
        """Refresh the signed metadata and look ``target`` up; ``InstallError`` if absent.

        Returns:
            The target's signed length and custom fields; its ``download`` is this
            verifier's.

        Raises:
            InstallError: the device clock is before the time floor, or ``target`` is
                not in the signed metadata.
            VerificationError: TUF refused the metadata.
            TransferError: a metadata file could not be fetched.
        """
        # The floor is checked before ngclient judges expiry, and again once a
        # verified refresh may have raised it.
        self.time_floor.check()
        metadata_dir = tuf_metadata_dir(self.data_dir)
        targets_dir = downloads_dir(self.data_dir)
        targets_dir.mkdir(parents=True, exist_ok=True)
        with _tuf_errors():
            updater = Updater(
                metadata_dir=str(metadata_dir),
                metadata_base_url=METADATA_BASE_URL,
                target_base_url=TARGET_BASE_URL,
                target_dir=str(targets_dir),
                fetcher=self.fetcher,
                bootstrap=None,
            )
            updater.refresh()
            self.time_floor.raise_to_signed(metadata_dir / "timestamp.json")
            self.time_floor.check()
            info = updater.get_targetinfo(target)
        if info is None:
            raise InstallError(f"target {target!r} not in signed metadata")
        self._updater, self._info = updater, info
        return SignedBundle(target, info.length, dict(info.custom or {}), self.download)

    def download(self) -> Path:
        """The target's file, its length and hashes checked against the signed ones.

        A file already in the downloads dir that matches is used without a fetch.

        Raises:
            VerificationError: the bytes are not as signed.
            TransferError: the file could not be fetched.
            RuntimeError: called before ``find``.
        """
        if self._updater is None or self._info is None:
            raise RuntimeError("download() before find()")
        updater, info = self._updater, self._info
        with _tuf_errors():
            return Path(updater.find_cached_target(info) or updater.download_target(info))

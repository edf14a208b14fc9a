"""Repository files from HTTP(S) mirrors of the signed repository, with range requests.

The control plane can export its TUF repository as a static tree
(``<base>/metadata/...``, ``<base>/targets/<sha256>.<name>``) that any web server,
CDN or S3-compatible store serves. An agent configured with ``mirrors = [...]``
fetches each file from the first mirror that has it, and only then from its
``fallback`` (MQTT). Nothing a mirror sends is trusted: TUF verifies metadata and
targets exactly as it does for bytes that came over MQTT, so a mirror can at worst
withhold or spoil a file, and a spoiled target is refused and its partial download
dropped (``discard_parts``).

Resume: a target's bytes are appended to the same ``.part`` file the MQTT paths
keep, so a download broken on any path continues on any other. A connection that
breaks mid-body is picked up with ``Range: bytes=<offset>-`` (up to ``attempts``
times per mirror); a server that ignores ranges (200 instead of 206) has the bytes
already held skipped.

urllib from the standard library: no new dependency on the device, and the agent
loads ``ssl`` for MQTT anyway. Mutable files (``timestamp.json``) are asked for with
``Cache-Control: no-cache``; a CDN should also be told not to cache them (see
docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from edgefleet.agent.errors import TransferError
from edgefleet.agent.verification.fetcher import FSYNC_EVERY, _bounded, part_file
from edgefleet.agent.verification.transport import Transport

logger = logging.getLogger(__name__)

BLOCK = 64 * 1024
CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
USER_AGENT = "edgefleet-agent"


class _Broken(Exception):
    """The connection broke mid-body; try again from the offset reached."""


class MirrorFetcher:
    """Repository files from HTTP(S) mirrors, then from ``fallback``.

    Args:
        mirrors: base URLs (``https://cdn.example/fleet``), tried in order.
        fallback: where a file no mirror serves comes from (the MQTT transport).
        part_dir: where partial target downloads are kept (shared with the MQTT paths).
        timeout: seconds a connect or a read may take before it counts as broken.
        attempts: connections per mirror and file (resuming with a range each time).
        retry_wait: seconds before the second connection, doubling for each further one
            (a mirror that restarts, or a link that flaps, gets time to come back).
    """

    def __init__(
        self,
        mirrors: Sequence[str],
        fallback: Transport,
        *,
        part_dir: Path | None = None,
        timeout: float = 30.0,
        attempts: int = 3,
        retry_wait: float = 1.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.mirrors = [m.rstrip("/") for m in mirrors]
        self.fallback = fallback
        self.part_dir = Path(part_dir) if part_dir is not None else None
        self.timeout = timeout
        self.attempts = attempts
        self.retry_wait = retry_wait
        self.bytes_from_mirrors = 0

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        """``path``'s bytes in order, bounded like ``MqttFetcher.stream``.

        Raises:
            TransferError: (while iterating) no mirror served it and the fallback failed.
        """
        return _bounded(self._stream(path), max_length)

    def discard_parts(self) -> None:
        """Forget every partial download (one failed its final hash check)."""
        discard = getattr(self.fallback, "discard_parts", None)
        if callable(discard):
            discard()
        elif self.part_dir is not None and self.part_dir.is_dir():
            for part in self.part_dir.glob("*.part"):
                with contextlib.suppress(OSError):
                    part.unlink()

    def _stream(self, path: str) -> Generator[bytes, None, None]:
        part = part_file(self.part_dir, path)
        given = 0
        if part is not None and part.exists():
            given = part.stat().st_size
            if given:
                logger.info("download resumed path=%s offset=%d", path, given)
                with part.open("rb") as existing:
                    while block := existing.read(1024 * 1024):
                        yield block
        sink: BinaryIO | None = None
        if part is not None:
            part.parent.mkdir(parents=True, exist_ok=True)
            sink = part.open("ab")
        complete = False
        try:
            for mirror in self.mirrors:
                try:
                    for block in self._from_mirror(mirror, path, given):
                        if sink is not None:
                            sink.write(block)
                            sink.flush()
                            if (given + len(block)) // FSYNC_EVERY != given // FSYNC_EVERY:
                                os.fsync(sink.fileno())
                        given += len(block)
                        self.bytes_from_mirrors += len(block)
                        yield block
                    complete = True
                    break
                except TransferError as e:
                    logger.warning(
                        "mirror failed, trying the next source mirror=%s path=%s offset=%d "
                        "reason=%s",
                        mirror,
                        path,
                        given,
                        e.reason,
                    )
        finally:
            if sink is not None:
                sink.close()
        if complete:
            if part is not None:
                with contextlib.suppress(OSError):
                    part.unlink()
            return
        # The fallback replays the .part (when it keeps one) and goes on from there.
        position = 0
        for block in self.fallback.stream(path, 2**63):
            end = position + len(block)
            if end > given:
                yield block[max(0, given - position) :]
                given = end
            position = end

    def _from_mirror(self, mirror: str, path: str, start: int) -> Iterator[bytes]:
        """The bytes of ``path`` from ``start`` on one mirror, resumed across broken reads."""
        offset = start
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                for block in self._request(f"{mirror}/{path}", offset):
                    offset += len(block)
                    yield block
                return
            except _Broken as e:
                last = e
                logger.info(
                    "mirror connection broke, resuming url=%s/%s offset=%d attempt=%d",
                    mirror,
                    path,
                    offset,
                    attempt + 1,
                )
                if attempt + 1 < self.attempts:
                    time.sleep(self.retry_wait * 2**attempt)
        raise TransferError(f"{mirror}/{path}: broke {self.attempts} times ({last})")

    def _request(self, url: str, offset: int) -> Iterator[bytes]:
        headers = {"User-Agent": USER_AGENT, "Cache-Control": "no-cache"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            with contextlib.suppress(OSError):
                e.close()
            if e.code == 416 and offset and _range_total(e.headers.get("Content-Range")) == offset:
                return  # the .part already held the whole file
            raise TransferError(f"{url}: HTTP {e.code}", status=e.code) from e
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            raise _Broken(str(e)) from e
        with response:
            skip = 0
            if offset:
                if response.status == 206:
                    match = CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
                    if match is None or int(match.group(1)) != offset:
                        raise TransferError(f"{url}: answered a range from another offset")
                else:
                    skip = offset  # the server ignored the range: the whole file again
            expected = response.length  # Content-Length; None when chunked
            got = 0
            try:
                while block := response.read(BLOCK):
                    got += len(block)
                    if skip:
                        cut = min(skip, len(block))
                        block, skip = block[cut:], skip - cut
                        if not block:
                            continue
                    yield block
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise _Broken(str(e)) from e
            if expected is not None and got < expected:
                # http.client ends a body cut short quietly (an empty read), not with an error
                raise _Broken(f"the body ended after {got} of {expected} bytes")
            if skip:
                raise _Broken("the body ended before the bytes already held")


def _range_total(content_range: str | None) -> int | None:
    """N in ``bytes */N`` (a 416's Content-Range), else None."""
    if content_range and content_range.startswith("bytes */"):
        with contextlib.suppress(ValueError):
            return int(content_range.removeprefix("bytes */"))
    return None

"""Deferral: the device's own work comes first. The update lock and the maintenance window.

An install downloads, verifies, stages and smoke-tests whenever the offer comes; only
the switch waits (``Installer``, state ``deferred``) while either says no:

* **The update lock.** An application on the device holds it through the local
  endpoint while it must not be disturbed (a job running, a line moving)::

      POST   /v2/agent/update-lock        {"holder": "robot-arm", "ttl_s": 300}
                                          -> {"lock_id": ..., "expires_at": ...}
      POST   /v2/agent/update-lock        the same holder again: renewed, same id
      GET    /v2/agent/update-lock        {"held": true, "locks": [...]}
      DELETE /v2/agent/update-lock/{id}   released

  Each holder has one lock; several holders may hold at once and the switch waits for
  all. Every lock expires ``ttl_s`` after it was last taken or renewed (at most
  ``MAX_TTL_S``), so an application that crashed cannot hold the device for ever.
  Locks are kept in ``update_lock.json`` (written atomically, expiry in wall-clock
  time), so an agent restart neither drops a lock nor lengthens one.
* **The maintenance window** (``edgefleet.maintenance``), sent with the offer: outside
  it the switch waits for the next opening, in the window's time zone.

Both are bounded by the rollout, not by the device: the control plane counts a
deferred device as still installing, so its install deadline keeps running and a
device deferred past it is timed out (``edgefleet.control_plane.services.rollouts
.deadlines``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from edgefleet import schema
from edgefleet.fileio import atomic_write
from edgefleet.maintenance import MaintenanceWindow, next_open, open_until

logger = logging.getLogger(__name__)

LOCK_FILE = "update_lock.json"
MAX_TTL_S = 86_400.0
"""Longest a lock may be taken for at once: a day (renew it to hold longer)."""
MAX_LOCKS = 32
"""Most holders at once; one more is refused (429), so no client can grow the file."""


class LockRequest(schema.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v2/agent/update-lock``."""

    holder: Annotated[str, Meta(min_length=1, max_length=100)]
    ttl_s: Annotated[float, Meta(gt=0, le=MAX_TTL_S)] = 300.0


class HeldLock(schema.Struct, frozen=True, kw_only=True):
    """One holder's lock as kept in ``update_lock.json`` and shown by ``GET``."""

    lock_id: str
    holder: str
    ttl_s: float
    expires_at: float  # wall clock (time.time)


class LockRefusal(Exception):
    """A lock request the endpoint refuses; ``status`` is its HTTP answer."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class UpdateLock:
    """The update locks applications hold; thread-safe (HTTP threads take, the worker reads)."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self.clock = clock
        self._mutex = threading.Lock()
        self._locks = self._load()

    def _load(self) -> dict[str, HeldLock]:
        try:
            raw = json.loads(self.path.read_bytes())
            locks = schema.convert(raw, list[HeldLock])
        except FileNotFoundError:
            return {}
        except (ValueError, msgspec.ValidationError) as e:
            logger.error("update lock file unreadable, ignoring it path=%s reason=%s", self.path, e)
            return {}
        return {lock.holder: lock for lock in locks}

    def _save(self) -> None:
        payload = json.dumps(schema.to_builtins(list(self._locks.values())), sort_keys=True)
        atomic_write(self.path, payload.encode() + b"\n")

    def _expire(self) -> None:
        now = self.clock()
        gone = [holder for holder, lock in self._locks.items() if lock.expires_at <= now]
        for holder in gone:
            logger.warning("update lock expired holder=%s", holder)
            del self._locks[holder]

    def acquire(self, holder: str, ttl_s: float) -> HeldLock:
        """Take the lock for ``holder``, or renew the one it holds (same id), for ``ttl_s``.

        Raises:
            LockRefusal: ``MAX_LOCKS`` other holders hold it already.
            OSError: the lock could not be recorded; it is not held.
        """
        with self._mutex:
            self._expire()
            current = self._locks.get(holder)
            if current is None and len(self._locks) >= MAX_LOCKS:
                raise LockRefusal(HTTPStatus.TOO_MANY_REQUESTS, f"{MAX_LOCKS} locks held already")
            lock = HeldLock(
                lock_id=current.lock_id if current else uuid.uuid4().hex,
                holder=holder,
                ttl_s=ttl_s,
                expires_at=self.clock() + ttl_s,
            )
            previous = dict(self._locks)
            self._locks[holder] = lock
            try:
                self._save()
            except OSError:
                self._locks = previous
                raise
        logger.info(
            "update lock %s holder=%s ttl_s=%g",
            "renewed" if current else "taken",
            holder,
            ttl_s,
        )
        return lock

    def release(self, lock_id: str) -> HeldLock | None:
        """Release the lock ``lock_id``; returns it, or None when no such lock is held."""
        with self._mutex:
            self._expire()
            found = next((lock for lock in self._locks.values() if lock.lock_id == lock_id), None)
            if found is None:
                return None
            del self._locks[found.holder]
            self._save()
        logger.info("update lock released holder=%s", found.holder)
        return found

    def held(self) -> list[HeldLock]:
        """The locks held now, soonest to expire first."""
        with self._mutex:
            self._expire()
            return sorted(self._locks.values(), key=lambda lock: lock.expires_at)

    # -- the local endpoint's routes (``InferenceServer`` hands them over) -------------

    def handle(self, method: str, parts: list[str], body: bytes) -> tuple[HTTPStatus, Any]:
        """Answer ``method`` on ``/v2/agent/update-lock[/{id}]`` (``parts`` after it);
        a refusal is an answer too (``{"error": reason}``), never an exception."""
        try:
            return self._handle(method, parts, body)
        except LockRefusal as e:
            return e.status, {"error": e.reason}

    def _handle(self, method: str, parts: list[str], body: bytes) -> tuple[HTTPStatus, Any]:
        if method == "GET" and not parts:
            locks = self.held()
            return HTTPStatus.OK, {"held": bool(locks), "locks": [_shown(x) for x in locks]}
        if method == "POST" and not parts:
            try:
                request = schema.decode_json(body or b"{}", LockRequest)
            except msgspec.DecodeError as e:
                raise LockRefusal(HTTPStatus.BAD_REQUEST, schema.describe(e)) from e
            try:
                lock = self.acquire(request.holder, request.ttl_s)
            except OSError as e:
                raise LockRefusal(HTTPStatus.INSUFFICIENT_STORAGE, f"lock not recorded: {e}") from e
            return HTTPStatus.OK, _shown(lock)
        if len(parts) == 1 and method in ("GET", "DELETE"):
            if method == "GET":
                found = next((x for x in self.held() if x.lock_id == parts[0]), None)
            else:
                found = self.release(parts[0])
            if found is None:
                raise LockRefusal(HTTPStatus.NOT_FOUND, "no such lock (released or expired)")
            return HTTPStatus.OK, _shown(found) | {"released": method == "DELETE"}
        raise LockRefusal(HTTPStatus.METHOD_NOT_ALLOWED, f"update-lock does not take {method}")


def _shown(lock: HeldLock) -> dict[str, Any]:
    return {
        "lock_id": lock.lock_id,
        "holder": lock.holder,
        "ttl_s": lock.ttl_s,
        "expires_at": datetime.fromtimestamp(lock.expires_at, UTC).isoformat(),
    }


class SwitchGate:
    """Whether a staged install may switch now: no update lock held, inside the window."""

    def __init__(
        self, lock: UpdateLock, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.lock = lock
        self.now = now

    def hold_reason(self, window: MaintenanceWindow | None) -> str | None:
        """Why the switch must wait, for the ``deferred`` report; None when it may go.

        The reason stays the same while the situation does (no expiry times in it), so
        a deferred install reports again only when the reason changes.
        """
        locks = self.lock.held()
        if locks:
            holders = ", ".join(sorted(lock.holder for lock in locks))
            return f"update lock held by {holders}"
        if window is not None:
            now = self.now()
            if open_until(window, now) is None:
                opens = next_open(window, now)
                when = opens.isoformat() if opens is not None else "never"
                return f"outside maintenance window, next opens at {when}"
        return None

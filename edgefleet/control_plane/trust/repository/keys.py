"""Key management of the signed repository: rotating, revoking and delegating keys.

Every key change publishes a new root signed by the old root's threshold and the
new root's, then re-signs what the changed role signs. These methods are mixed into
``SignedRepository`` and run inside its signing steps.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from securesystemslib.signer import Key, Signer
from sqlalchemy.engine import Engine
from sqlmodel import Session
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from edgefleet.control_plane.trust.keyring import KeyEntry, Keyring, SigningError
from edgefleet.control_plane.trust.repository.state import EXPIRY, _latest, _now, _Step

logger = logging.getLogger(__name__)


class _Repository(Protocol):
    """What key management uses of ``SignedRepository`` (the class it is mixed into)."""

    keyring: Keyring
    _engine: Engine
    _lock: threading.RLock

    def _step(self) -> AbstractContextManager[_Step]: ...
    @property
    def _root_md(self) -> Metadata[Root]: ...
    @property
    def _targets_md(self) -> Metadata[Targets]: ...
    def _signers(self, role: str) -> list[Signer]: ...
    def _write_root(self, extra: list[Signer] | None = None) -> None: ...
    def _write_targets(self) -> None: ...
    def _bump_snapshot_and_timestamp(self, now: datetime) -> None: ...
    def _bump_timestamp(self, now: datetime) -> None: ...
    def _change_root(
        self, *, add: list[tuple[str, Key]], revoke: list[tuple[str, str]]
    ) -> None: ...
    def _resign_after_key_change(self, role: str) -> None: ...


class _KeyManagement:
    """The key-management half of ``SignedRepository``."""

    def rotate_key(self: _Repository, role: str, keyid: str | None = None) -> KeyEntry:
        """Replace one key of ``role`` (the only one when ``keyid`` is None) with a new key."""
        with self._step():
            keyids = self._root_md.signed.roles[role].keyids
            if keyid is None:
                if len(keyids) != 1:
                    raise SigningError(f"{role} has {len(keyids)} keys: name the one to rotate")
                keyid = keyids[0]
            old = self.keyring.entry(keyid)
            if old.role != role or old.keyid not in keyids:
                raise SigningError(f"key {keyid[:12]} is not a {role} key of the current root")
            new = self.keyring.generate(role)
            try:
                self._change_root(add=[(role, new.public_key())], revoke=[(role, old.keyid)])
                self._resign_after_key_change(role)
            except SigningError:
                self.keyring.remove(new.keyid)
                raise
        # Only once the new root is committed (until then the old key still signs),
        # and under the lock, as every change to the shared keyring.
        with self._step():
            self.keyring.remove(old.keyid)
        logger.info("key rotated role=%s old=%s new=%s", role, old.keyid[:12], new.keyid[:12])
        return new

    def revoke_key(self: _Repository, keyid: str) -> KeyEntry:
        """Remove a key from its role; refused when the role would fall below its threshold."""
        with self._step():
            entry = self.keyring.entry(keyid)
            role_meta = self._root_md.signed.roles[entry.role]
            if len(role_meta.keyids) - 1 < role_meta.threshold:
                raise SigningError(
                    f"revoking would leave {entry.role} with fewer keys than its threshold "
                    f"({role_meta.threshold}); rotate the key instead"
                )
            self._change_root(add=[], revoke=[(entry.role, entry.keyid)])
            self._resign_after_key_change(entry.role)
        with self._step():  # once the root without it is committed
            self.keyring.remove(entry.keyid)
        logger.info("key revoked role=%s keyid=%s", entry.role, entry.keyid[:12])
        return entry

    def add_command_key(
        self: _Repository, role: str, command: list[str], public_key: Key
    ) -> KeyEntry:
        """Delegate signing for ``role`` to an external command holding ``public_key``'s pair."""
        with self._step():
            entry = self.keyring.add_command(role, command, public_key)
            try:
                self._change_root(add=[(role, public_key)], revoke=[])
            except SigningError:
                self.keyring.remove(entry.keyid)
                raise
            return entry

    def keys_summary(self: _Repository) -> list[dict[str, Any]]:
        """Per role: threshold, keys (id, kind, whether usable here) and metadata expiry."""
        with self._lock, Session(self._engine) as session:
            state = _latest(session)
            self.keyring.reload()
            if state.root is None or state.targets is None or state.snapshot is None:
                raise RuntimeError("repository not initialised: call init_or_load()")
            assert state.timestamp is not None
            root = state.root.signed
            usable = {s.public_key.keyid for role in root.roles for s in self.keyring.signers(role)}
            expiries = {
                Root.type: root.expires,
                Targets.type: state.targets.signed.expires,
                Snapshot.type: state.snapshot.signed.expires,
                Timestamp.type: state.timestamp.signed.expires,
            }
            summary = []
            for role in (Root.type, Targets.type, Snapshot.type, Timestamp.type):
                meta = root.roles[role]
                keys = []
                for keyid in meta.keyids:
                    entries = [e for e in self.keyring.entries(role) if e.keyid == keyid]
                    keys.append(
                        {
                            "keyid": keyid,
                            "kind": entries[0].kind if entries else "unknown",
                            "available": keyid in usable,
                        }
                    )
                summary.append(
                    {
                        "role": role,
                        "threshold": meta.threshold,
                        "keys": keys,
                        "expires": expiries[role].isoformat(),
                        "root_version": root.version,
                    }
                )
            return summary

    def _change_root(
        self: _Repository, *, add: list[tuple[str, Key]], revoke: list[tuple[str, str]]
    ) -> None:
        """Publish root N+1 with the key changes, signed by old and new root thresholds."""
        old_root = self._root_md.signed
        old_signers = self._signers(Root.type)
        if len(old_signers) < old_root.roles[Root.type].threshold:
            raise SigningError(
                f"changing keys needs {old_root.roles[Root.type].threshold} root signatures; "
                f"{len(old_signers)} root keys are available here"
            )
        # A failure leaves nothing behind: the step rolls back, the next reads again.
        for role, key in add:
            old_root.add_key(key, role)
        for role, keyid in revoke:
            old_root.revoke_key(keyid, role)
        old_root.version += 1
        old_root.expires = _now() + EXPIRY[Root.type]
        self._write_root(extra=old_signers)

    def _resign_after_key_change(self: _Repository, role: str) -> None:
        """New signatures from the new key on the role's metadata and what depends on it."""
        now = _now()
        if role == Targets.type:
            self._targets_md.signed.version += 1
            self._write_targets()
        if role in (Targets.type, Snapshot.type):
            self._bump_snapshot_and_timestamp(now)
        elif role == Timestamp.type:
            self._bump_timestamp(now)

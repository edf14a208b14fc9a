"""The signing keys of the TUF repository: one or more per role, kept apart.

``keys/keyring.json`` lists every key: its role, public key, and where its private
half is — a PEM file in ``keys/`` (PKCS#8, encrypted with the repository
passphrase when one is set), or an external signing command standing in for an
HSM or cloud KMS. Root keys are meant to be moved offline after ``keys init``:
a listed file that is absent is simply not available for signing, and an
operation that needs more signatures than are available fails, naming the role.

A signing command gets the bytes to sign on stdin and prints the signature in
hex; its answer is verified against the listed public key before use.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import CryptoSigner, Key, SecretsHandler, Signature, Signer

from edgefleet.control_plane.core.errors import ControlPlaneError
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp")
SIGN_TIMEOUT_S = 30.0


class SigningError(ControlPlaneError):
    """A role could not be signed: too few keys available, a bad key, a failed signer."""


@dataclass
class KeyEntry:
    keyid: str
    role: str
    kind: Literal["file", "command"]
    public: dict[str, Any]
    path: str | None = None
    command: list[str] | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def public_key(self) -> Key:
        return Key.from_dict(self.keyid, dict(self.public))


class CommandSigner(Signer):
    """Signs by running an external command (an HSM or KMS front end)."""

    def __init__(self, command: list[str], public_key: Key) -> None:
        self._command = command
        self._public_key = public_key

    @property
    def public_key(self) -> Key:
        return self._public_key

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> Signer:
        raise NotImplementedError("command signers are configured in keys/keyring.json")

    def sign(self, payload: bytes) -> Signature:
        try:
            completed = subprocess.run(
                self._command, input=payload, capture_output=True, timeout=SIGN_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SigningError(f"signing command {self._command[0]} failed: {e}") from e
        if completed.returncode != 0:
            raise SigningError(
                f"signing command exited {completed.returncode}: "
                + completed.stderr.decode(errors="replace").strip()[-300:]
            )
        signature = Signature(self._public_key.keyid, completed.stdout.decode().strip())
        try:
            self._public_key.verify_signature(signature, payload)
        except UnverifiedSignatureError as e:
            raise SigningError(
                f"signing command returned a signature that does not verify for key "
                f"{self._public_key.keyid[:12]}"
            ) from e
        return signature


class Keyring:
    """Private keys by role under ``keys_dir``; every write atomic, key files mode 0600."""

    def __init__(self, keys_dir: Path, *, passphrase: bytes | None = None) -> None:
        self.keys_dir = Path(keys_dir)
        self.index_path = self.keys_dir / "keyring.json"
        self._passphrase = passphrase
        self._entries: list[KeyEntry] = []
        self.reload()

    def reload(self) -> None:
        """Read ``keyring.json`` again: another replica sharing ``keys/`` may have changed it."""
        if self.index_path.exists():
            raw = json.loads(self.index_path.read_text())
            self._entries = [KeyEntry(**entry) for entry in raw["keys"]]
        else:
            self._entries = []

    @property
    def exists(self) -> bool:
        return self.index_path.exists()

    def entries(self, role: str | None = None) -> list[KeyEntry]:
        return [e for e in self._entries if role is None or e.role == role]

    def entry(self, keyid: str) -> KeyEntry:
        matches = [e for e in self._entries if e.keyid == keyid or e.keyid.startswith(keyid)]
        if len(matches) != 1:
            raise SigningError(f"no single key matches {keyid!r}")
        return matches[0]

    def _save(self) -> None:
        data = {"keys": [asdict(e) for e in self._entries]}
        atomic_write(self.index_path, json.dumps(data, indent=2).encode(), mode=0o600)

    def generate(self, role: str) -> KeyEntry:
        """A new Ed25519 key for ``role``, its private half encrypted when a passphrase is set."""
        if role not in ROLES:
            raise SigningError(f"unknown role {role!r}")
        signer = CryptoSigner.generate_ed25519()
        public = signer.public_key
        name = f"{role}-{public.keyid[:16]}.pem"
        private_key = load_pem_private_key(signer.private_bytes, password=None)
        encryption = (
            BestAvailableEncryption(self._passphrase) if self._passphrase else NoEncryption()
        )
        pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
        atomic_write(self.keys_dir / name, pem, mode=0o600)
        entry = KeyEntry(
            keyid=public.keyid, role=role, kind="file", public=public.to_dict(), path=name
        )
        self._entries.append(entry)
        self._save()
        logger.info("signing key generated role=%s keyid=%s", role, public.keyid[:16])
        return entry

    def add_command(self, role: str, command: list[str], public_key: Key) -> KeyEntry:
        """Register an external signer for ``role`` by its command and public key."""
        if role not in ROLES:
            raise SigningError(f"unknown role {role!r}")
        entry = KeyEntry(
            keyid=public_key.keyid,
            role=role,
            kind="command",
            public=public_key.to_dict(),
            command=list(command),
        )
        self._entries.append(entry)
        self._save()
        return entry

    def remove(self, keyid: str) -> KeyEntry:
        """Forget a key and delete its private file, if it is here."""
        entry = self.entry(keyid)
        self._entries.remove(entry)
        self._save()
        if entry.path:
            (self.keys_dir / entry.path).unlink(missing_ok=True)
        return entry

    def signers(self, role: str) -> list[Signer]:
        """Every usable signer of ``role``: files present here, and commands."""
        signers: list[Signer] = []
        for entry in self.entries(role):
            if entry.kind == "command" and entry.command:
                signers.append(CommandSigner(entry.command, entry.public_key()))
                continue
            path = self.keys_dir / (entry.path or "")
            if not path.is_file():
                continue  # moved offline
            try:
                private_key = load_pem_private_key(path.read_bytes(), password=self._passphrase)
            except (ValueError, TypeError) as e:
                raise SigningError(
                    f"cannot open {role} key {entry.keyid[:12]}: wrong or missing passphrase"
                ) from e
            if not isinstance(private_key, Ed25519PrivateKey):
                raise SigningError(f"{path.name} does not hold an Ed25519 key")
            signers.append(CryptoSigner(private_key, entry.public_key()))  # type: ignore[arg-type]
        return signers

"""Broker passwords in Mosquitto's ``$7$`` format and the password files that hold them.

The format is PBKDF2-HMAC-SHA512 with a 12-byte salt, what ``mosquitto_passwd``
writes and what the dynamic-security plugin stores (salt, hash and iterations as
separate fields), so a hash moves from one to the other unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PBKDF2_ITERATIONS = 1000  # passwords are 256-bit random tokens; the hash only hides them
SALT_BYTES = 12  # what mosquitto_passwd and the dynamic-security plugin use
_HASH_RE = re.compile(r"^\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """``password`` in Mosquitto's ``$7$`` PBKDF2-SHA512 format (as ``mosquitto_passwd``)."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    salt_b64, digest_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${iterations}${salt_b64}${digest_b64}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (what the broker checks on connect)."""
    match = _HASH_RE.fullmatch(encoded)
    if match is None:
        return False
    iterations, salt, expected = match.groups()
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations)
    )
    return hmac.compare_digest(digest, base64.b64decode(expected))


def new_password() -> str:
    """A random broker password (256 bits, URL-safe, no ``:`` so the file stays parseable)."""
    return secrets.token_urlsafe(32)


def render_password_file(entries: Mapping[str, str]) -> str:
    """``username:hash`` lines, sorted so a rewrite with the same users is byte-identical."""
    for username, encoded in entries.items():
        if ":" in username or "\n" in username or not _HASH_RE.fullmatch(encoded):
            raise ValueError(f"refusing a malformed password entry for {username!r}")
    return "".join(f"{user}:{entries[user]}\n" for user in sorted(entries))


def read_password_file(path: Path) -> dict[str, str]:
    """``username -> hash`` from a Mosquitto password file (missing file: empty)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        user, sep, encoded = line.strip().partition(":")
        if sep and user:
            entries[user] = encoded
    return entries


def _password_fields(encoded: str) -> dict[str, Any]:
    """A ``$7$`` hash as the plugin stores it."""
    match = _HASH_RE.fullmatch(encoded)
    if match is None:
        raise ValueError("not a $7$ password hash")
    iterations, salt, digest = match.groups()
    return {"password": digest, "salt": salt, "iterations": int(iterations)}

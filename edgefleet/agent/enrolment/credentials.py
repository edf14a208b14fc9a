"""The broker login that ``edgefleet-agent enrol`` saved: read by the daemon at start-up.

Apart from ``edgefleet.agent.enrolment.enrol`` so that the daemon reads it without importing
``cryptography`` (enrolment makes keys and CSRs; the daemon only connects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.errors import ConfigError

CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class Credentials:
    """The device's broker login; ``repr`` never shows the password."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


def credentials_path(data_dir: Path) -> Path:
    return Path(data_dir) / CREDENTIALS_FILE


def load_credentials(data_dir: Path) -> Credentials | None:
    """The saved credentials, or None before enrolment (an anonymous broker needs none)."""
    path = credentials_path(data_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Credentials(username=str(raw["username"]), password=str(raw["password"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read {path}: {e}", field="credentials") from e

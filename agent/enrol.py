"""Device side of enrolment: trade a one-time token for broker credentials.

``edgefleet-agent enrol --config agent.toml --api URL --token T`` sends the device id
and profile from the config with the token to the control plane and writes the
username and password it gets back to ``<data_dir>/credentials.json`` (mode 0600,
atomically). The daemon reads that file at start-up and connects with it. Uses the
standard library's HTTP client so the agent stays free of extra dependencies.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import AgentError
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"
TIMEOUT_S = 30.0


class EnrolmentError(AgentError):
    """The control plane refused the enrolment, or could not be reached."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"enrolment failed ({status}): {reason}" if status else reason)
        self.reason = reason
        self.status = status


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
        raise EnrolmentError(f"cannot read {path}: {e}") from e


def enrol(config: AgentConfig, *, api_url: str, token: str) -> Credentials:
    """Enrol ``config.device_id`` with ``token`` and save the credentials it is given."""
    body = json.dumps(
        {"token": token, "device_id": config.device_id, "profile": config.profile}
    ).encode()
    request = urllib.request.Request(
        api_url.rstrip("/") + "/api/v1/enrol",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise EnrolmentError(_detail(e), status=e.code) from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise EnrolmentError(f"cannot reach {api_url}: {e}") from e
    credentials = Credentials(username=answer["username"], password=answer["password"])
    if credentials.username != config.device_id:
        raise EnrolmentError(f"control plane issued credentials for {credentials.username!r}")
    payload = {"username": credentials.username, "password": credentials.password}
    atomic_write(credentials_path(config.data_dir), json.dumps(payload).encode(), mode=0o600)
    logger.info("device enrolled device_id=%s", config.device_id)
    return credentials


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read()).get("detail", error.reason))
    except (ValueError, AttributeError, OSError):
        return str(error.reason)

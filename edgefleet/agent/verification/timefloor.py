"""The device's time floor: the newest signed time it has verified, kept across restarts.

TUF judges metadata expiry by the device clock. A clock set back (a dead RTC battery,
or an attacker) makes expired metadata look valid, so before trusting any metadata
the agent checks that its clock is not earlier than the floor, and after each
verified refresh it raises the floor to the control plane's signed signing time
(``edgefleet.trust``). The floor comes only from signed metadata, never from the
device clock, so a clock that once ran ahead cannot lock the device out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgefleet.agent.errors import InstallError
from edgefleet.fileio import atomic_write
from edgefleet.trust import issued_at

logger = logging.getLogger(__name__)

FLOOR_FILE = "time_floor.json"
ALLOWED_SKEW = timedelta(minutes=5)
"""How far the device clock may lag the control plane's before it counts as set back."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TimeFloor:
    """``<data_dir>/time_floor.json``: written atomically, only ever raised."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.path = Path(data_dir) / FLOOR_FILE
        self.clock = clock

    def read(self) -> datetime | None:
        """The floor, or None when none was recorded or its file is damaged."""
        try:
            raw = json.loads(self.path.read_bytes())
            floor = datetime.fromisoformat(raw["floor"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            # A damaged floor file must not brick updates; the next refresh rewrites it.
            logger.warning("time floor unreadable, ignored path=%s error=%s", self.path, e)
            return None
        return floor if floor.tzinfo is not None else floor.replace(tzinfo=UTC)

    def check(self) -> None:
        """Refuse (``InstallError``) when the device clock is before the floor."""
        floor = self.read()
        now = self.clock()
        if floor is not None and now < floor - ALLOWED_SKEW:
            raise InstallError(
                f"device clock {now.isoformat(timespec='seconds')} is before the time floor "
                f"{floor.isoformat(timespec='seconds')} (newest signed metadata time seen); "
                "metadata expiry cannot be judged until the clock is fixed"
            )

    def raise_to_signed(self, timestamp_path: Path) -> None:
        """Raise the floor to the signing time in the verified ``timestamp.json``."""
        try:
            issued = issued_at(Path(timestamp_path).read_bytes())
        except OSError:
            return
        floor = self.read()
        if issued is None or (floor is not None and issued <= floor):
            return
        atomic_write(self.path, json.dumps({"floor": issued.isoformat()}).encode())

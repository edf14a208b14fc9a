"""What the signed TUF metadata carries beyond the specification, shared by both sides.

The control plane stamps every timestamp metadata it signs with the time it signed
it (``x-edgefleet-issued``, an unrecognized field that python-tuf keeps inside the
signed part). A device that has verified that metadata knows, from a source it
trusts, that the real time is no earlier than this: its *time floor*. A device
clock set back before the floor would make expired metadata look valid, so the
agent refuses to judge metadata until the clock is fixed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

ISSUED_FIELD = "x-edgefleet-issued"


def issued_at(timestamp_json: bytes) -> datetime | None:
    """The signing time stamped into a timestamp metadata file; None when absent or malformed."""
    try:
        value = json.loads(timestamp_json)["signed"][ISSUED_FIELD]
        issued = datetime.fromisoformat(value)
    except (ValueError, KeyError, TypeError):
        return None
    return issued if issued.tzinfo is not None else issued.replace(tzinfo=UTC)

"""Reading built bundles (building is in ``edgefleet.control_plane.services.bundle_builder``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.core.tables import Bundle


def list_bundles(*, session: Session) -> Sequence[Bundle]:
    """Every built bundle, oldest release first."""
    return session.exec(select(Bundle).order_by(col(Bundle.release))).all()


def get_bundle(*, session: Session, bundle_id: str) -> Bundle:
    """The bundle ``bundle_id``.

    Raises:
        NotFoundError: no such bundle.
    """
    bundle = session.get(Bundle, bundle_id)
    if bundle is None:
        raise NotFoundError(f"bundle {bundle_id} not found")
    return bundle

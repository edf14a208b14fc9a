from __future__ import annotations

import numpy as np
from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from edgefleet.control_plane.api.deps import RepositoryDep, SessionDep, SettingsDep
from edgefleet.control_plane.core.errors import InvalidRequestError
from edgefleet.control_plane.core.tables import BundleCreate, BundlePublic
from edgefleet.control_plane.services import bundles as service
from edgefleet.control_plane.services.bundle_builder import build_bundle
from edgefleet.converters.pipeline import Holdout

router = APIRouter(prefix="/bundles", tags=["bundles"])

MAX_HOLDOUT_ROWS = 100_000


class HoldoutIn(BaseModel):
    """Gate inputs (and labels) sent with the build; overrides the registered holdout."""

    x: list[list[float]] = Field(min_length=1, max_length=MAX_HOLDOUT_ROWS)
    y: list[int] | None = None


class BundleBuild(BundleCreate):
    """``{model, version, profile}`` plus optional gate settings."""

    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    holdout: HoldoutIn | None = None


def _holdout(body: HoldoutIn | None) -> Holdout | None:
    if body is None:
        return None
    try:
        x = np.asarray(body.x, dtype=np.float32)
    except ValueError as e:
        raise InvalidRequestError("holdout.x must be a list of equally long rows") from e
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidRequestError("holdout.x must be a list of equally long, non-empty rows")
    if not np.all(np.isfinite(x)):
        raise InvalidRequestError("holdout.x must be finite in float32")
    y = None if body.y is None else np.asarray(body.y, dtype=np.int64)
    if y is not None and y.shape != (x.shape[0],):
        raise InvalidRequestError("holdout.y must have one label per row of holdout.x")
    return Holdout(x=x, y=y, source="holdout given with the build")


@router.post("", status_code=status.HTTP_201_CREATED)
def create_bundle(
    session: SessionDep,
    settings: SettingsDep,
    repository: RepositoryDep,
    bundle_in: BundleBuild,
) -> BundlePublic:
    """Build, gate and sign; ``manifest.candidates`` is the table of every candidate."""
    bundle = build_bundle(
        session=session,
        repository=repository,
        settings=settings,
        model_name=bundle_in.model,
        model_version=bundle_in.version,
        profile_name=bundle_in.profile,
        max_accuracy_drop=bundle_in.max_accuracy_drop,
        holdout=_holdout(bundle_in.holdout),
    )
    return BundlePublic.model_validate(bundle)


@router.get("")
def list_bundles(session: SessionDep) -> list[BundlePublic]:
    return [BundlePublic.model_validate(b) for b in service.list_bundles(session=session)]


@router.get("/{bundle_id}")
def read_bundle(session: SessionDep, bundle_id: str) -> BundlePublic:
    return BundlePublic.model_validate(service.get_bundle(session=session, bundle_id=bundle_id))

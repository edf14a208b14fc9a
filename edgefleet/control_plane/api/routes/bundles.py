from __future__ import annotations

import numpy as np
from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from edgefleet.control_plane.api.deps import ActorDep, BuildsDep, SessionDep
from edgefleet.control_plane.core.errors import InvalidRequestError
from edgefleet.control_plane.core.tables import BundleCreate, BundlePublic
from edgefleet.control_plane.services import bundles as service
from edgefleet.control_plane.services.build_jobs import BuildRequest
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


def build_request(body: BundleBuild) -> BuildRequest:
    """What the service builds for ``body``; ``InvalidRequestError`` for a bad holdout."""
    return BuildRequest(
        model=body.model,
        version=body.version,
        profile=body.profile,
        max_accuracy_drop=body.max_accuracy_drop,
        holdout=_holdout(body.holdout),
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_bundle(
    session: SessionDep, builds: BuildsDep, actor: ActorDep, bundle_in: BundleBuild
) -> BundlePublic:
    """Build, gate and sign, answering when done; ``manifest.candidates`` lists every candidate.

    The build is a job like ``POST /builds`` starts (listed under ``/builds``); this
    waits for it and answers with its bundle, or with its error.
    """
    _job, future = builds.start(session=session, request=build_request(bundle_in), actor=actor)
    bundle_id = future.result()
    return BundlePublic.model_validate(service.get_bundle(session=session, bundle_id=bundle_id))


@router.get("")
def list_bundles(session: SessionDep) -> list[BundlePublic]:
    return [BundlePublic.model_validate(b) for b in service.list_bundles(session=session)]


@router.get("/{bundle_id}")
def read_bundle(session: SessionDep, bundle_id: str) -> BundlePublic:
    return BundlePublic.model_validate(service.get_bundle(session=session, bundle_id=bundle_id))

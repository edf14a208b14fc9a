"""Bundle builds as jobs: ``POST /builds`` answers at once; ``GET /builds/{id}`` follows it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from edgefleet.control_plane.api.deps import ActorDep, BuildsDep, DbId, SessionDep
from edgefleet.control_plane.api.routes.bundles import BundleBuild, build_request
from edgefleet.control_plane.core.tables import BuildJobPublic
from edgefleet.control_plane.services import build_jobs as service

router = APIRouter(prefix="/builds", tags=["builds"])


@router.post("", status_code=status.HTTP_202_ACCEPTED)
def start_build(
    session: SessionDep, builds: BuildsDep, actor: ActorDep, build_in: BundleBuild
) -> BuildJobPublic:
    """Queue a build (same body as ``POST /bundles``); the job, to follow by its id.

    An unknown model or profile is refused here (404); everything the build itself
    finds wrong ends the job ``failed`` with ``error`` and ``error_status``.
    """
    job, _future = builds.start(session=session, request=build_request(build_in), actor=actor)
    return BuildJobPublic.model_validate(job)


@router.get("")
def list_builds(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[BuildJobPublic]:
    """The newest build jobs first."""
    return [
        BuildJobPublic.model_validate(j) for j in service.list_builds(session=session, limit=limit)
    ]


@router.get("/{build_id}")
def read_build(session: SessionDep, build_id: DbId) -> BuildJobPublic:
    """One build job: state, stage, each candidate measured so far, bundle or error."""
    return BuildJobPublic.model_validate(service.get_build(session=session, build_id=build_id))

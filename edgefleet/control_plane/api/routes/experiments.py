"""A/B experiments: create one over a cohort, read its numbers, stop it."""

from __future__ import annotations

from fastapi import APIRouter, status

from edgefleet.control_plane.api.deps import ActorDep, DbId, LinkDep, SessionDep
from edgefleet.control_plane.core.tables import ExperimentCreate, ExperimentPublic, ExperimentStop
from edgefleet.control_plane.services.experiments import lifecycle, views

router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_experiment(
    session: SessionDep, link: LinkDep, actor: ActorDep, experiment_in: ExperimentCreate
) -> ExperimentPublic:
    """Split the cohort between the two bundles; each arm goes out as a rollout."""
    experiment = lifecycle.create_experiment(
        session=session, publisher=link, experiment_in=experiment_in, actor=actor
    )
    return views.experiment_public(experiment)


@router.get("")
def list_experiments(session: SessionDep) -> list[ExperimentPublic]:
    return [views.experiment_public(e) for e in views.list_experiments(session=session)]


@router.get("/{experiment_id}")
def read_experiment(session: SessionDep, experiment_id: DbId) -> ExperimentPublic:
    return views.experiment_public(
        views.get_experiment(session=session, experiment_id=experiment_id)
    )


@router.post("/{experiment_id}/stop")
def stop_experiment(
    session: SessionDep,
    link: LinkDep,
    actor: ActorDep,
    experiment_id: DbId,
    body: ExperimentStop | None = None,
) -> ExperimentPublic:
    """End the experiment without a decision: each device keeps the arm it runs (in
    requests mode, arm A: the challenger is discarded)."""
    experiment = lifecycle.stop_experiment(
        session=session,
        experiment_id=experiment_id,
        actor=actor,
        reason=body.reason if body else None,
        publisher=link,
    )
    return views.experiment_public(experiment)

"""Field data of a model: what devices saw in drifted windows, and the labels they learnt."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.control_plane.api.deps import SessionDep
from edgefleet.control_plane.core.tables import FieldDataPublic, FieldSamplePublic
from edgefleet.control_plane.services.field_data import list_samples, summarize

router = APIRouter(prefix="/models", tags=["field-data"])


@router.get("/{name}/field-data")
def read_field_data(
    session: SessionDep,
    name: str,
    version: Annotated[str | None, Query(max_length=64)] = None,
    labelled: bool = False,
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> FieldDataPublic:
    """Counts over every kept sample of model ``name`` (one ``version``, or all), and
    the newest ``limit`` samples (only those with labelled rows when ``labelled``).
    A model with no field data has an empty listing, not a 404: devices may not have
    sent any yet."""
    samples = list_samples(
        session=session, model=name, version=version, labelled=labelled, limit=limit
    )
    return FieldDataPublic(
        summary=summarize(session=session, model=name, version=version),
        samples=[FieldSamplePublic.model_validate(s) for s in samples],
    )

"""FastAPI dependencies, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlmodel import Session

from edgefleet.control_plane.broker.link import FleetLink
from edgefleet.control_plane.core.auth import Principal
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.services.build_jobs import BuildRunner
from edgefleet.control_plane.trust.repository import SignedRepository


def get_session(request: Request) -> Iterator[Session]:
    """One session per request on the app's engine, carrying who calls.

    ``authorize`` (a router dependency, so resolved first) has set the principal;
    ``record_audit`` reads it from ``session.info`` to log the token's id beside
    its name, whichever service writes the entry.
    """
    with Session(request.app.state.engine) as session:
        principal = getattr(request.state, "principal", None)
        if principal is not None:
            session.info["principal"] = principal
        yield session


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_repository(request: Request) -> SignedRepository:
    repository: SignedRepository = request.app.state.repository
    return repository


def get_link(request: Request) -> FleetLink:
    link: FleetLink = request.app.state.link
    return link


def get_builds(request: Request) -> BuildRunner:
    runner: BuildRunner = request.app.state.builds
    return runner


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RepositoryDep = Annotated[SignedRepository, Depends(get_repository)]
LinkDep = Annotated[FleetLink, Depends(get_link)]
BuildsDep = Annotated[BuildRunner, Depends(get_builds)]


DbId = Annotated[int, Path(ge=1, le=2**63 - 1, description="a database id")]
"""Integer ids in paths: bounded so an absurd id is a 422, not a database overflow."""


def get_principal(request: Request) -> Principal:
    """The caller, as ``authorize`` found it."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else Principal("anonymous", "viewer")


def get_actor(request: Request) -> str:
    """Who the audit log names: the caller's API token, set by ``authorize``."""
    return get_principal(request).name


PrincipalDep = Annotated[Principal, Depends(get_principal)]
ActorDep = Annotated[str, Depends(get_actor)]

"""FastAPI dependencies, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from sqlmodel import Session

from control_plane.db import get_session
from control_plane.link import FleetLink
from control_plane.repository import SignedRepository
from control_plane.settings import Settings


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_repository(request: Request) -> SignedRepository:
    repository: SignedRepository = request.app.state.repository
    return repository


def get_link(request: Request) -> FleetLink:
    link: FleetLink = request.app.state.link
    return link


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RepositoryDep = Annotated[SignedRepository, Depends(get_repository)]
LinkDep = Annotated[FleetLink, Depends(get_link)]


DbId = Annotated[int, Path(ge=1, le=2**63 - 1, description="a database id")]
"""Integer ids in paths: bounded so an absurd id is a 422, not a database overflow."""


def get_actor(request: Request) -> str:
    """Who the audit log names: the caller's API token, set by ``authorize``."""
    principal = getattr(request.state, "principal", None)
    return str(principal.name) if principal is not None else "anonymous"


ActorDep = Annotated[str, Depends(get_actor)]

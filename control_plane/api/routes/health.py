from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from control_plane.api.deps import LinkDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    broker_connected: bool


@router.get("/health")
def read_health(link: LinkDep) -> Health:
    return Health(status="ok", broker_connected=link.connected)

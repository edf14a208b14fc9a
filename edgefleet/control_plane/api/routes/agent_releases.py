"""``/agent-releases``: the agent's own code as a signed bundle of kind ``agent``; roll it
out with ``POST /rollouts`` like any bundle."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from edgefleet.control_plane.api.deps import ActorDep, RepositoryDep, SessionDep, SettingsDep
from edgefleet.control_plane.core.errors import InvalidRequestError
from edgefleet.control_plane.core.tables import BundlePublic
from edgefleet.control_plane.services import agent_releases as service

router = APIRouter(prefix="/agent-releases", tags=["agent-releases"])

MAX_WHEEL_BYTES = 64 * 1024 * 1024


def _read(upload: UploadFile) -> tuple[str, bytes]:
    data = upload.file.read(MAX_WHEEL_BYTES + 1)
    if len(data) > MAX_WHEEL_BYTES:
        raise InvalidRequestError(f"{upload.filename}: larger than {MAX_WHEEL_BYTES} bytes")
    return str(upload.filename or ""), data


@router.post("", status_code=status.HTTP_201_CREATED)
def add_agent_release(
    session: SessionDep,
    settings: SettingsDep,
    repository: RepositoryDep,
    actor: ActorDep,
    version: Annotated[str, Form(pattern=service.VERSION_PATTERN.replace("\\Z", "$"))],
    profile: Annotated[str, Form(min_length=1, max_length=64)],
    wheels: Annotated[list[UploadFile], File(description="pure-Python wheels (.whl)")],
) -> BundlePublic:
    """Sign and record an agent release; answers with its bundle (``manifest.kind`` agent)."""
    if len(wheels) > service.MAX_WHEELS:
        raise InvalidRequestError(f"an agent release holds at most {service.MAX_WHEELS} wheels")
    files = dict(_read(upload) for upload in wheels)
    if len(files) != len(wheels):
        raise InvalidRequestError("two wheels share a file name")
    bundle = service.add_agent_release(
        session=session,
        repository=repository,
        settings=settings,
        version=version,
        profile_name=profile,
        wheels=files,
        actor=actor,
    )
    return BundlePublic.model_validate(bundle)

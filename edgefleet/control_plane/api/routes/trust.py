from __future__ import annotations

from fastapi import APIRouter, Response

from edgefleet.control_plane.api.deps import RepositoryDep

router = APIRouter(prefix="/trust", tags=["trust"])


@router.get("/root", response_class=Response)
def read_root_metadata(repository: RepositoryDep) -> Response:
    """The current signed TUF root: the trust anchor a device is given at enrolment."""
    return Response(content=repository.root_bytes(), media_type="application/json")

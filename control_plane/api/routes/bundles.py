from __future__ import annotations

from fastapi import APIRouter, status

from control_plane.api.deps import RepositoryDep, SessionDep, SettingsDep
from control_plane.bundle_builder import build_bundle
from control_plane.models import BundleCreate, BundlePublic
from control_plane.services import bundles as service

router = APIRouter(prefix="/bundles", tags=["bundles"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_bundle(
    session: SessionDep,
    settings: SettingsDep,
    repository: RepositoryDep,
    bundle_in: BundleCreate,
) -> BundlePublic:
    bundle = build_bundle(
        session=session,
        repository=repository,
        settings=settings,
        model_name=bundle_in.model,
        model_version=bundle_in.version,
        profile_name=bundle_in.profile,
    )
    return BundlePublic.model_validate(bundle)


@router.get("")
def list_bundles(session: SessionDep) -> list[BundlePublic]:
    return [BundlePublic.model_validate(b) for b in service.list_bundles(session=session)]


@router.get("/{bundle_id}")
def read_bundle(session: SessionDep, bundle_id: str) -> BundlePublic:
    return BundlePublic.model_validate(service.get_bundle(session=session, bundle_id=bundle_id))

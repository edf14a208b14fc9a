from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edgefleet.control_plane.api.deps import SettingsDep
from edgefleet.control_plane.core.errors import BuildError
from edgefleet.control_plane.core.settings import profile_source
from edgefleet.errors import ProfileError
from edgefleet.profile import load_profiles

router = APIRouter(prefix="/profiles", tags=["profiles"])


@router.get("")
def list_profiles(settings: SettingsDep) -> list[dict[str, Any]]:
    try:
        profiles = load_profiles(profile_source(settings))
    except ProfileError as e:
        raise BuildError(f"firmware profiles are invalid: {e}") from e
    return [p.model_dump(mode="json") for p in profiles.values()]

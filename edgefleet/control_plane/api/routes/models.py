from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from edgefleet.control_plane.api.deps import SessionDep, SettingsDep
from edgefleet.control_plane.core.tables import MODEL_NAME_PATTERN, ModelPublic
from edgefleet.control_plane.services import model_registry as service

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=status.HTTP_201_CREATED)
def register_model(
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[str, Form(pattern=MODEL_NAME_PATTERN)],
    version: Annotated[str, Form(min_length=1, max_length=64)],
    model: Annotated[UploadFile, File(description="model: .onnx or .tflite, told by content")],
    samples: Annotated[UploadFile, File(description="representative inputs, float32 2-D .npy")],
    holdout: Annotated[
        UploadFile | None,
        File(description="optional gate holdout: .npz with x (float32 [n, features]) and y"),
    ] = None,
    companion: Annotated[
        UploadFile | None,
        File(description="the same model in the other format (.tflite beside .onnx, or reverse)"),
    ] = None,
) -> ModelPublic:
    registered = service.register_model(
        session=session,
        settings=settings,
        name=name,
        version=version,
        model_bytes=model.file.read(),
        samples_bytes=samples.file.read(),
        holdout_bytes=holdout.file.read() if holdout is not None else None,
        companion_bytes=companion.file.read() if companion is not None else None,
    )
    return ModelPublic.model_validate(registered)


@router.get("")
def list_models(session: SessionDep) -> list[ModelPublic]:
    return [ModelPublic.model_validate(m) for m in service.list_models(session=session)]

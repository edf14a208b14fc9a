"""Registering .tflite and classic-ML ONNX models, and building bundles from them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sqlmodel import Session

from edgefleet.bundle import unpack_bundle
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.errors import BuildError, InvalidRequestError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.services.bundle_builder import build_bundle
from edgefleet.control_plane.services.model_registry import register_model
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.converters.runner import TfliteRunner
from edgefleet.converters.tflite_build import onnx_to_float_tflite
from edgefleet_demo.digits import DigitsModel

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning", "ignore::UserWarning"
)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "cp", broker_url="mqtt://127.0.0.1:1")


@pytest.fixture
def repository(settings: Settings) -> SignedRepository:
    repo = SignedRepository(settings.repository_dir)
    repo.init_or_load()
    return repo


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings)
    create_db_and_tables(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def test_registered_tflite_builds_an_int8_bundle_for_a_litert_profile(
    session: Session,
    repository: SignedRepository,
    settings: Settings,
    digits: DigitsModel,
    tmp_path: Path,
) -> None:
    tflite = onnx_to_float_tflite(digits.onnx_bytes)[0]
    model = register_model(
        session=session,
        settings=settings,
        name="digits-tfl",
        version="1",
        model_bytes=tflite,
        samples_bytes=npy(digits.samples),
        holdout_bytes=npz(x=digits.holdout_x, y=digits.holdout_y),
    )
    assert model.format == "tflite" and model.path.endswith("model.tflite")
    assert Path(model.path).read_bytes() == tflite
    assert model.signature["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]

    bundle = build_bundle(
        session=session,
        repository=repository,
        settings=settings,
        model_name="digits-tfl",
        model_version="1",
        profile_name="x86-64-ipc-litert-int8",
    )
    manifest = unpack_bundle(Path(bundle.path), tmp_path / "unpacked")
    rows = {r["candidate"]: r for r in bundle.manifest["candidates"]}
    assert rows["tflite-int8-static-a8w8"]["agreement"] is not None
    assert bundle.manifest["format"] == "tflite" and manifest.artifact == "model.tflite"
    assert manifest.lineage["source_sha256"] == model.sha256
    assert manifest.metrics["verified"] is True
    # The smoke test the device repeats reproduces in LiteRT from the bundle's own files.
    assert manifest.smoke_test is not None
    unpacked = tmp_path / "unpacked"
    runner = TfliteRunner((unpacked / manifest.artifact).read_bytes(), {})
    inputs = np.load(unpacked / manifest.smoke_test.inputs["input"])
    expected = np.load(unpacked / manifest.smoke_test.expected["label"])
    got = np.concatenate([runner.run({"input": row[None]})["label"] for row in inputs])
    assert np.mean(got == expected) >= manifest.smoke_test.min_agreement


def test_onnx_profile_build_of_a_tflite_only_model_is_a_build_error_naming_the_format(
    session: Session, repository: SignedRepository, settings: Settings, digits: DigitsModel
) -> None:
    register_model(
        session=session,
        settings=settings,
        name="digits-tfl",
        version="1",
        model_bytes=onnx_to_float_tflite(digits.onnx_bytes)[0],
        samples_bytes=npy(digits.samples),
    )
    with pytest.raises(BuildError, match="format mismatch: the model is TFLite"):
        build_bundle(
            session=session,
            repository=repository,
            settings=settings,
            model_name="digits-tfl",
            model_version="1",
            profile_name="x86-64-gateway-onnx",
        )


def test_registration_refuses_bytes_that_are_no_model_saying_what_they_are(
    session: Session, settings: Settings, digits: DigitsModel
) -> None:
    noise = np.random.default_rng(7).bytes(2048)  # no magic number, not text
    for data, what in [(noise, "unknown binary data"), (npy(digits.samples), "NumPy")]:
        with pytest.raises(InvalidRequestError, match="not an ONNX or TFLite model") as refused:
            register_model(
                session=session,
                settings=settings,
                name="junk",
                version="1",
                model_bytes=data,
                samples_bytes=npy(digits.samples),
            )
        assert what in str(refused.value)


def test_zipmap_classifier_registers_and_its_bundle_records_the_labels(
    session: Session, repository: SignedRepository, settings: Settings
) -> None:
    x, y = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        x.astype(np.float32), y, test_size=0.4, random_state=0
    )
    classifier = LogisticRegression(max_iter=300).fit(train_x / 16, train_y)
    classifier.coef_ /= 16
    model = register_model(
        session=session,
        settings=settings,
        name="logistic",
        version="1",
        model_bytes=to_onnx(classifier, train_x[:1]).SerializeToString(),  # ZipMap included
        samples_bytes=npy(train_x[:200]),
        holdout_bytes=npz(x=test_x, y=test_y),
    )
    assert model.format == "onnx"
    assert model.labels == {"output_probability": list(range(10))}
    bundle = build_bundle(
        session=session,
        repository=repository,
        settings=settings,
        model_name="logistic",
        model_version="1",
        profile_name="x86-64-gateway-onnx",
    )
    assert bundle.manifest["labels"] == {"output_probability": list(range(10))}
    rows = {r["candidate"]: r for r in bundle.manifest["candidates"]}
    assert rows["int8"]["verdict"] == "skipped"
    assert "LinearClassifier" in rows["int8"]["reasons"][0]
    assert bundle.manifest["lineage"]["candidate"] == "fp32"


def test_a_version_with_both_exports_builds_each_profile_from_its_own_format(
    session: Session, repository: SignedRepository, settings: Settings, digits: DigitsModel
) -> None:
    tflite = onnx_to_float_tflite(digits.onnx_bytes)[0]
    model = register_model(
        session=session,
        settings=settings,
        name="digits-both",
        version="1",
        model_bytes=tflite,  # the .tflite first: ONNX profiles use the companion
        samples_bytes=npy(digits.samples),
        holdout_bytes=npz(x=digits.holdout_x, y=digits.holdout_y),
        companion_bytes=digits.onnx_bytes,
    )
    assert (model.format, model.formats) == ("tflite", ["tflite", "onnx"])
    assert model.artifact_check is not None
    assert model.artifact_check["outputs"]["label"] == {"agreement": 1.0}

    def build(profile: str) -> dict[str, Any]:
        bundle = build_bundle(
            session=session,
            repository=repository,
            settings=settings,
            model_name="digits-both",
            model_version="1",
            profile_name=profile,
        )
        return bundle.manifest

    onnx_manifest = build("x86-64-gateway-onnx")  # no format mismatch: it has an ONNX file
    assert onnx_manifest["format"] == "onnx"
    assert onnx_manifest["lineage"]["source_format"] == "onnx"
    assert onnx_manifest["lineage"]["artifact_check"] == model.artifact_check
    litert_manifest = build("x86-64-ipc-litert-int8")
    assert litert_manifest["lineage"]["source_format"] == "tflite"
    assert litert_manifest["lineage"]["source_sha256"] == model.sha256
    recipes = [c for c in litert_manifest["candidates"] if c["candidate"].startswith("tflite-")]
    assert recipes and litert_manifest["lineage"]["recipe"].get("source", "").startswith(
        "registered .tflite"
    )


def test_a_companion_that_is_another_model_is_refused_at_registration(
    session: Session, settings: Settings, digits: DigitsModel
) -> None:
    from edgefleet_demo.digits import train_digits_model

    other = train_digits_model(seed=1, hidden=(16,), max_iter=20)
    with pytest.raises(InvalidRequestError, match=r"companion: .*not the same model"):
        register_model(
            session=session,
            settings=settings,
            name="digits-both",
            version="1",
            model_bytes=digits.onnx_bytes,
            samples_bytes=npy(digits.samples),
            companion_bytes=onnx_to_float_tflite(other.onnx_bytes)[0],
        )
    assert not (settings.models_dir / "digits-both").exists()

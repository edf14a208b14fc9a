"""Building a bundle from a registered model: manifest, smoke test, stats, signing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sqlmodel import Session

from edgefleet.agent.telemetry.drift import scored_outputs
from edgefleet.bundle import unpack_bundle
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.errors import BuildError, NotFoundError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import Bundle
from edgefleet.control_plane.services.bundle_builder import (
    CATEGORICAL_METADATA_KEY,
    build_bundle,
    declared_categorical,
    reference_statistics,
)
from edgefleet.control_plane.services.model_registry import register_model
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.drift import DriftDetector, DriftThresholds, Reference
from edgefleet.profile import default_profiles_dir
from edgefleet_demo.digits import DigitsModel

PROFILE = "x86-64-gateway-onnx"
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "cp", broker_url="mqtt://127.0.0.1:1")


@pytest.fixture
def repository(settings: Settings) -> SignedRepository:
    repo = SignedRepository(settings.repository_dir)
    repo.init_or_load()
    return repo


@pytest.fixture
def session(settings: Settings, digits: DigitsModel) -> Session:
    engine = make_engine(settings)
    create_db_and_tables(engine)
    with Session(engine) as session:
        buffer = io.BytesIO()
        np.save(buffer, digits.samples)
        register_model(
            session=session,
            settings=settings,
            name="digits",
            version="1",
            model_bytes=digits.onnx_bytes,
            samples_bytes=buffer.getvalue(),
        )
        yield session
    engine.dispose()


def build(session: Session, repository: SignedRepository, settings: Settings, **kw: str) -> Bundle:
    args = {"model_name": "digits", "model_version": "1", "profile_name": PROFILE, **kw}
    return build_bundle(session=session, repository=repository, settings=settings, **args)


def test_bundle_holds_verified_files_and_smoke_test_reproduces_on_onnxruntime(
    session: Session, repository: SignedRepository, settings: Settings, tmp_path: Path
) -> None:
    bundle = build(session, repository, settings)

    assert bundle.id == f"digits-1-{PROFILE}-r1"
    assert bundle.target == f"{bundle.id}.tar"
    manifest = unpack_bundle(Path(bundle.path), tmp_path / "unpacked")
    assert manifest.release == 1
    assert manifest.profiles == [PROFILE]
    assert manifest.hardware == ["x86_64"]
    assert manifest.runtime.name == "onnxruntime"
    # Which candidate wins depends on the installed onnxruntime's int8 kernels; whichever
    # it is, it is one the profile allows and it agreed with the float model on the holdout.
    assert manifest.metrics["precision"] in {"fp32", "int8"}
    assert manifest.metrics["agreement"] >= 0.9
    assert "built_at" in manifest.lineage
    assert manifest.smoke_test is not None
    unpacked = tmp_path / "unpacked"
    inputs = np.load(unpacked / manifest.smoke_test.inputs["input"])
    assert inputs.shape == (16, 64)
    runtime = ort.InferenceSession(str(unpacked / manifest.artifact))
    label, probabilities = runtime.run(["label", "probabilities"], {"input": inputs})
    agreement = np.mean(label == np.load(unpacked / manifest.smoke_test.expected["label"]))
    assert agreement >= manifest.smoke_test.min_agreement
    np.testing.assert_allclose(
        probabilities,
        np.load(unpacked / manifest.smoke_test.expected["probabilities"]),
        atol=manifest.smoke_test.atol,
        rtol=manifest.smoke_test.rtol,
    )


def test_bundle_is_a_signed_target_with_device_checkable_custom_fields(
    session: Session, repository: SignedRepository, settings: Settings
) -> None:
    bundle = build(session, repository, settings)
    data, total = repository.read_chunk(f"targets/{bundle.sha256}.{bundle.target}", 0, 1 << 30)
    assert total == bundle.length
    assert data == Path(bundle.path).read_bytes()
    targets = json.loads(
        (repository.metadata_dir / f"{repository.targets_version}.targets.json").read_bytes()
    )
    custom = targets["signed"]["targets"][bundle.target]["custom"]
    assert custom == {
        "bundle_id": bundle.id,
        "release": 1,
        "model": "digits",
        "model_version": "1",
        "profiles": [PROFILE],
        "hardware": ["x86_64"],
    }


def test_release_counter_increases_across_builds(
    session: Session, repository: SignedRepository, settings: Settings
) -> None:
    first = build(session, repository, settings)
    second = build(session, repository, settings)
    assert (first.release, second.release) == (1, 2)
    assert second.id.endswith("-r2")


def test_reference_stats_cover_every_feature_with_proportions_summing_to_one(
    session: Session, repository: SignedRepository, settings: Settings
) -> None:
    bundle = build(session, repository, settings)
    with tarfile.open(bundle.path) as tar:
        handle = tar.extractfile("reference_stats.json")
        assert handle is not None
        stats = json.load(handle)
    assert stats["n_samples"] == 359
    assert len(stats["features"]) == 64
    for feature in stats["features"]:
        assert len(feature["edges"]) == len(feature["proportions"]) + 1
        assert sum(feature["proportions"]) == pytest.approx(1.0)


def test_reference_statistics_give_constant_feature_one_bin() -> None:
    samples = np.zeros((20, 2), dtype=np.float32)
    samples[:, 1] = np.arange(20)
    stats = reference_statistics(samples, input_name="x")
    assert stats["features"][0]["proportions"] == [1.0]
    assert len(stats["features"][1]["proportions"]) == 10


def test_unknown_profile_or_model_is_not_found(
    session: Session, repository: SignedRepository, settings: Settings
) -> None:
    with pytest.raises(NotFoundError, match="profile"):
        build(session, repository, settings, profile_name="no-such-profile")
    with pytest.raises(NotFoundError, match="model"):
        build(session, repository, settings, model_version="9")


def test_profile_that_cannot_run_the_model_is_a_build_error(
    session: Session, repository: SignedRepository, settings: Settings, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    source = (default_profiles_dir() / f"{PROFILE}.toml").read_text()
    (profiles / "tiny-onnx.toml").write_text(
        source.replace(f'name = "{PROFILE}"', 'name = "tiny-onnx"').replace(
            "max_model_bytes = 67108864", "max_model_bytes = 100"
        )
    )
    tiny = settings.model_copy(update={"profiles_dir": profiles})
    # Every candidate is measured, then refused by the size budget, and the error says so.
    with pytest.raises(BuildError, match=r"> 100 bytes"):
        build(session, repository, tiny, profile_name="tiny-onnx")


def test_built_reference_carries_float_output_reference_and_categorical_bins(
    session: Session,
    repository: SignedRepository,
    settings: Settings,
    digits: DigitsModel,
    tmp_path: Path,
) -> None:
    bundle = build(session, repository, settings)
    manifest = unpack_bundle(Path(bundle.path), tmp_path / "unpacked")
    assert manifest.reference_stats is not None
    stats = json.loads((tmp_path / "unpacked" / manifest.reference_stats).read_text())
    outputs = stats["outputs"]
    assert outputs["kind"] == "classes"
    assert outputs["categories"] == [float(c) for c in range(10)]
    assert abs(sum(outputs["proportions"]) - 1.0) < 1e-9
    kinds = {f["kind"] for f in stats["features"]}
    assert "categorical" in kinds  # integer pixel codes get a bin per value

    # The agent's own window over the model's answers: all one class is output drift,
    # the float model's answers on familiar rows are not.
    reference = Reference.from_json(stats)
    detector = DriftDetector(reference, DriftThresholds(window=300))
    rows = digits.holdout_x[:300]
    familiar = scored_outputs({"probabilities": np.eye(10)[digits.holdout_y[:300]]}, "classes")
    (clean,) = detector.observe(rows, familiar)
    assert clean.output is not None and not clean.output.drifted
    stuck = scored_outputs({"probabilities": np.eye(10)[np.zeros(300, int)]}, "classes")
    (shifted,) = detector.observe(rows, stuck)
    assert shifted.output is not None and shifted.output.drifted
    assert not shifted.drifted  # the inputs did not move: output drift is told apart


def test_categorical_features_are_read_from_the_model_metadata(digits: DigitsModel) -> None:
    model = onnx.load_from_string(digits.onnx_bytes)
    entry = model.metadata_props.add()
    entry.key = CATEGORICAL_METADATA_KEY
    entry.value = json.dumps({"input": [3, 7]})
    declared = model.SerializeToString()
    assert declared_categorical(declared, "input") == [3, 7]
    assert declared_categorical(declared, "other") is None
    assert declared_categorical(digits.onnx_bytes, "input") is None
    entry.value = '{"input": ["x"]}'
    assert declared_categorical(model.SerializeToString(), "input") is None  # ignored, logged

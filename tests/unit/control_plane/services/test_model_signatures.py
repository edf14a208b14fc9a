"""Models as users bring them: several inputs of different dtypes, integer inputs, a
fixed batch, one sigmoid score. Registration keeps the signature exactly and refuses
samples that do not fit it (never casting them); the bundle carries the signature and a
smoke feed per input, and the agent's runtime reproduces the smoke test on it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session

from edgefleet.agent.inference.runtime import load_runtime
from edgefleet.agent.install.smoke import run_smoke_test
from edgefleet.bundle import unpack_bundle
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.errors import BuildError, InvalidRequestError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import Bundle
from edgefleet.control_plane.services.bundle_builder import build_bundle
from edgefleet.control_plane.services.model_registry import register_model
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.tensors import ModelSignature
from tests.support.signature_models import (
    binary_detector,
    fixed_batch_model,
    int32_model,
    three_input_model,
    three_input_samples,
)

PROFILE = "x86-64-gateway-onnx"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "cp", broker_url="mqtt://127.0.0.1:1")


@pytest.fixture
def repository(settings: Settings) -> SignedRepository:
    repo = SignedRepository(settings.repository_dir)
    repo.init_or_load()
    return repo


@pytest.fixture
def session(settings: Settings) -> Session:
    engine = make_engine(settings)
    create_db_and_tables(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs: kwargs
    return buffer.getvalue()


def register(
    session: Session, settings: Settings, model: bytes, samples: bytes, **kw: object
) -> object:
    return register_model(
        session=session,
        settings=settings,
        name=str(kw.pop("name", "m")),
        version=str(kw.pop("version", "1")),
        model_bytes=model,
        samples_bytes=samples,
        **kw,  # type: ignore[arg-type]
    )


def build(session: Session, repository: SignedRepository, settings: Settings) -> Bundle:
    return build_bundle(
        session=session,
        repository=repository,
        settings=settings,
        model_name="m",
        model_version="1",
        profile_name=PROFILE,
    )


def installed_smoke(bundle: Bundle, tmp_path: Path) -> ModelSignature:
    """Unpack the bundle as a device does, load its runtime and run its smoke test."""
    slot = tmp_path / "slot"
    manifest = unpack_bundle(Path(bundle.path), slot)
    runtime = load_runtime(manifest, slot)
    run_smoke_test(runtime, manifest, slot)
    return manifest.signature


def test_three_input_model_registers_builds_and_passes_its_smoke_test_on_the_agent_runtime(
    session: Session, repository: SignedRepository, settings: Settings, tmp_path: Path
) -> None:
    model = register(
        session,
        settings,
        three_input_model(),
        npz(**three_input_samples(200)),
        holdout_bytes=npz(**three_input_samples(300, seed=5)),
    )
    signature = model.signature  # type: ignore[attr-defined]
    assert [(i["name"], i["datatype"], i["shape"]) for i in signature["inputs"]] == [
        ("audio", "FP32", [-1, 16]),
        ("state", "FP32", [-1, 8]),
        ("sr", "INT64", []),
    ]
    assert signature["inputs"][0]["dim_names"] == ["batch", ""]
    bundle = build(session, repository, settings)
    manifest = bundle.manifest
    assert manifest["signature"] == signature  # kept exactly, registration to bundle
    assert set(manifest["smoke_test"]["inputs"]) == {"audio", "state", "sr"}
    assert manifest["metrics"]["tasks"] == {"score": "generic", "state_out": "generic"}
    installed = installed_smoke(bundle, tmp_path)
    assert installed.inputs[2].datatype == "INT64" and installed.inputs[2].shape == []


def test_int32_model_samples_cast_to_float_are_refused_naming_the_input(
    session: Session, settings: Settings
) -> None:
    tokens = np.random.default_rng(0).integers(0, 9, size=(50, 8))
    with pytest.raises(InvalidRequestError) as refused:
        register(session, settings, int32_model(), npy(tokens.astype(np.float32)))
    assert str(refused.value) == (
        "samples: input 'tokens' expects INT32[-1, 8], given FP32[50, 8]: "
        "dtype float32 is not int32 (samples are never cast)"
    )


def test_int32_model_with_int32_samples_builds_and_runs_on_the_agent(
    session: Session, repository: SignedRepository, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    register(
        session,
        settings,
        int32_model(),
        npy(rng.integers(0, 9, size=(200, 8)).astype(np.int32)),
    )
    bundle = build(session, repository, settings)
    assert installed_smoke(bundle, tmp_path).inputs[0].datatype == "INT32"


def test_fixed_batch_model_is_gated_and_served_in_batches_of_its_size(
    session: Session, repository: SignedRepository, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    register(
        session, settings, fixed_batch_model(4), npy(rng.normal(size=(203, 10)).astype(np.float32))
    )
    bundle = build(session, repository, settings)
    assert bundle.manifest["signature"]["batch"] == 4
    slot = tmp_path / "slot"
    manifest = unpack_bundle(Path(bundle.path), slot)
    runtime = load_runtime(manifest, slot)
    run_smoke_test(runtime, manifest, slot)  # 16 rows, four batches of 4
    rows = rng.normal(size=(7, 10)).astype(np.float32)  # padded to 8, cut back to 7
    out = runtime.infer({"x": rows})["y"]
    assert out.shape == (7, 3)
    one_by_one = np.concatenate(
        [runtime.infer({"x": np.repeat(r[None], 4, 0)})["y"][:1] for r in rows]
    )
    np.testing.assert_allclose(out, one_by_one, rtol=1e-5, atol=1e-6)


def test_inputs_with_different_row_counts_or_a_wrong_scalar_dtype_are_refused(
    session: Session, settings: Settings
) -> None:
    samples = {**three_input_samples(20), "sr": np.full(3, 16000, np.int64)}
    with pytest.raises(InvalidRequestError, match="inputs give different numbers of rows"):
        register(session, settings, three_input_model(), npz(**samples))
    bad = {**three_input_samples(20), "sr": np.full(20, 16000, np.int32)}
    with pytest.raises(InvalidRequestError) as refused:
        register(session, settings, three_input_model(), npz(**bad))
    assert str(refused.value).startswith("samples: input 'sr' expects INT64[], given INT32[20]")
    missing = {k: v for k, v in three_input_samples(20).items() if k != "state"}
    with pytest.raises(InvalidRequestError, match="input 'state' has no samples"):
        register(session, settings, three_input_model(), npz(**missing))
    with pytest.raises(InvalidRequestError, match=r"a single \.npy array cannot feed 3 inputs"):
        register(session, settings, three_input_model(), npy(three_input_samples(20)["audio"]))


def test_a_fixed_leading_dim_that_is_not_a_batch_of_rows_is_refused_naming_it(
    session: Session, settings: Settings
) -> None:
    # x [4, 10] and s [2, 3]: no common batch, so x's 4 is a fixed dim, not rows.
    model = fixed_batch_model(4, extra_input=(2, 3))
    rng = np.random.default_rng(2)
    rows = {"x": rng.normal(size=(8, 10)).astype(np.float32), "s": np.zeros((8, 2, 3), np.float32)}
    with pytest.raises(InvalidRequestError) as refused:
        register(session, settings, model, npz(**rows))
    assert str(refused.value) == (
        "samples: input 'x' has fixed leading dim 4 that is not a batch of rows "
        "(FP32[4, 10]); give whole feeds of shape [n, 4, 10], given FP32[8, 10]"
    )
    whole = {"x": rng.normal(size=(8, 4, 10)).astype(np.float32), "s": rows["s"]}
    assert register(session, settings, model, npz(**whole))


def test_binary_task_on_a_sigmoid_detector_ships_only_what_keeps_its_decisions(
    session: Session, repository: SignedRepository, settings: Settings, tmp_path: Path
) -> None:
    detector = binary_detector()
    register(
        session,
        settings,
        detector.onnx_bytes,
        npy(detector.samples),
        holdout_bytes=npz(features=detector.holdout_x, labels=detector.holdout_y),
        task="binary:0.5",
    )
    bundle = build(session, repository, settings)
    manifest = bundle.manifest
    assert manifest["metrics"]["tasks"] == {"speech": "binary:0.5"}
    assert manifest["metrics"]["precision"] == "fp32"
    refused = [c for c in manifest["candidates"] if c["precision"] == "int8"]
    assert refused and all(c["verdict"] == "refused" for c in refused)
    installed_smoke(bundle, tmp_path)


def test_classification_declared_on_one_sigmoid_column_is_refused_at_registration(
    session: Session, settings: Settings
) -> None:
    detector = binary_detector()
    with pytest.raises(InvalidRequestError, match="argmax over 1 column"):
        register(
            session, settings, detector.onnx_bytes, npy(detector.samples), task="classification"
        )


def test_a_holdout_whose_float_decisions_never_change_fails_the_build_with_a_reason(
    session: Session, repository: SignedRepository, settings: Settings
) -> None:
    detector = binary_detector()
    register(
        session,
        settings,
        detector.onnx_bytes,
        npy(detector.samples),
        holdout_bytes=npy(detector.holdout_x),
        task="binary:0.99",
    )
    with pytest.raises(BuildError, match=r"every float score is below the threshold 0\.99"):
        build(session, repository, settings)


def test_labels_without_a_task_on_one_sigmoid_column_are_refused_asking_for_binary(
    session: Session, settings: Settings
) -> None:
    # Labels imply classification; argmax over the one column would pass anything.
    detector = binary_detector()
    with pytest.raises(InvalidRequestError, match=r"argmax over 1 column.*binary:THRESHOLD"):
        register(
            session,
            settings,
            detector.onnx_bytes,
            npy(detector.samples),
            holdout_bytes=npz(features=detector.holdout_x, labels=detector.holdout_y),
        )

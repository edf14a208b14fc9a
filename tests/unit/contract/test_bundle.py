"""The bundle format: round trip, tamper detection naming the file, unsafe archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.bundle import (
    MANIFEST_NAME,
    read_manifest,
    unpack_bundle,
    verify_directory,
    write_bundle,
)
from edgefleet.errors import BundleError


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


FILES: dict[str, tuple[bytes, Any]] = {
    "model.onnx": (b"\x08\x07fake-onnx-bytes" * 100, "model"),
    "smoke_input_input.npy": (npy(np.ones((2, 64), np.float32)), "smoke_input"),
    "smoke_expected_label.npy": (npy(np.array([1, 2])), "smoke_output"),
    "reference_stats.json": (b'{"features": []}', "reference_stats"),
}


def manifest_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "bundle_id": "digits-1-x86-64-gateway-onnx-r1",
        "model": {"name": "digits", "version": "1"},
        "release": 1,
        "profiles": ["x86-64-gateway-onnx"],
        "hardware": ["x86_64"],
        "runtime": {"name": "onnxruntime", "version": ">=1.17,<2"},
        "artifact": "model.onnx",
        "signature": {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        },
        "smoke_test": {
            "inputs": {"input": "smoke_input_input.npy"},
            "expected": {"label": "smoke_expected_label.npy"},
        },
        "reference_stats": "reference_stats.json",
    }
    fields.update(overrides)
    return fields


def rewrite_member(bundle: Path, name: str, transform: Any) -> None:
    """Rewrite one member of a bundle archive in place, keeping the others."""
    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, data in members:
            if member.name == name:
                data = transform(data)
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    bundle.write_bytes(buffer.getvalue())


def test_bundle_round_trip_keeps_manifest_and_files(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    written = write_bundle(bundle, manifest_fields(), FILES)
    manifest = unpack_bundle(bundle, tmp_path / "out")
    assert manifest == written == read_manifest(bundle)
    for name, (data, _role) in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert {f.path for f in manifest.files} == set(FILES)
    assert manifest.file("model.onnx").length == len(FILES["model.onnx"][0])


def test_same_inputs_give_byte_identical_bundles(tmp_path: Path) -> None:
    write_bundle(tmp_path / "a.tar", manifest_fields(), FILES)
    write_bundle(tmp_path / "b.tar", manifest_fields(), FILES)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_one_tampered_byte_fails_verification_naming_the_file(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    write_bundle(bundle, manifest_fields(), FILES)
    rewrite_member(bundle, "model.onnx", lambda d: d[:10] + bytes([d[10] ^ 0x01]) + d[11:])
    with pytest.raises(BundleError) as caught:
        unpack_bundle(bundle, tmp_path / "out")
    assert caught.value.file == "model.onnx"
    assert "sha256" in caught.value.reason


def test_truncated_file_fails_with_length_mismatch(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    write_bundle(bundle, manifest_fields(), FILES)
    rewrite_member(bundle, "model.onnx", lambda d: d[:-1])
    with pytest.raises(BundleError) as caught:
        unpack_bundle(bundle, tmp_path / "out")
    assert caught.value.file == "model.onnx"
    assert "length" in caught.value.reason


def test_installed_directory_is_rechecked_against_manifest(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    write_bundle(bundle, manifest_fields(), FILES)
    manifest = unpack_bundle(bundle, tmp_path / "slot")
    verify_directory(tmp_path / "slot", manifest)
    (tmp_path / "slot" / "smoke_input_input.npy").write_bytes(npy(np.zeros((2, 64), np.float32)))
    with pytest.raises(BundleError, match=r"smoke_input_input\.npy"):
        verify_directory(tmp_path / "slot", manifest)


def _archive_with(tmp_path: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    bundle = tmp_path / "b.tar"
    write_bundle(bundle, manifest_fields(), FILES)
    with tarfile.open(bundle, "a") as tar:
        tar.addfile(extra, io.BytesIO(data) if data else None)
    return bundle


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../escape.onnx", tarfile.REGTYPE),
        ("/etc/passwd", tarfile.REGTYPE),
        ("sub/dir.npy", tarfile.REGTYPE),
        ("link.onnx", tarfile.SYMTYPE),
        ("dev.onnx", tarfile.CHRTYPE),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, name: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    data = b""
    if kind == tarfile.REGTYPE:
        data = b"x"
        info.size = 1
    else:
        info.linkname = "/etc/passwd"
    bundle = _archive_with(tmp_path, info, data)
    with pytest.raises(BundleError) as caught:
        unpack_bundle(bundle, tmp_path / "out")
    assert caught.value.file == name
    assert not (tmp_path / "escape.onnx").exists()


def test_member_not_in_manifest_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("extra.json")
    info.size = 2
    bundle = _archive_with(tmp_path, info, b"{}")
    with pytest.raises(BundleError, match="not listed") as caught:
        unpack_bundle(bundle, tmp_path / "out")
    assert caught.value.file == "extra.json"


@pytest.mark.parametrize(
    ("name", "data", "mode", "fragment"),
    [
        ("payload.sh", b"#!/bin/sh\nrm -rf /", 0o644, "file type not allowed"),
        ("model.pkl", b"\x80\x04\x95", 0o644, "file type not allowed"),
        ("evil.onnx", b"\x80\x04\x95\x10\x00cos\nsystem", 0o644, "pickle"),
        ("elf.onnx", b"\x7fELF\x02\x01\x01", 0o644, "executable"),
        ("model.onnx2.json", b"{not json", 0o644, "not valid JSON"),
        ("run.onnx", b"\x08\x07abcdefgh", 0o755, "executable members"),
        ("fake.tflite", b"\x00" * 16, 0o644, "not a TFLite"),
    ],
)
def test_member_types_the_runtimes_do_not_load_are_refused(
    tmp_path: Path, name: str, data: bytes, mode: int, fragment: str
) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    bundle = _archive_with(tmp_path, info, data)
    with pytest.raises(BundleError, match=fragment) as caught:
        unpack_bundle(bundle, tmp_path / "out")
    assert caught.value.file == name


def test_numpy_array_of_python_objects_is_refused_as_a_pickle(tmp_path: Path) -> None:
    pickled = npy(np.array([{"__reduce__": "os.system"}], dtype=object))
    files = {**FILES, "smoke_input_input.npy": (pickled, "smoke_input")}
    bundle = tmp_path / "b.tar"
    write_bundle(bundle, manifest_fields(), files)
    with pytest.raises(BundleError, match="pickle") as caught:
        unpack_bundle(bundle, tmp_path / "out")
    assert caught.value.file == "smoke_input_input.npy"
    assert not (tmp_path / "out" / "smoke_input_input.npy").exists()


def test_writer_refuses_a_file_type_the_runtimes_do_not_load(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="file type") as caught:
        write_bundle(tmp_path / "b.tar", manifest_fields(), {**FILES, "x.pkl": (b"", "other")})
    assert caught.value.file == "x.pkl"


def test_unpacked_size_over_the_bound_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    write_bundle(bundle, manifest_fields(), FILES)
    with pytest.raises(BundleError, match="unpacked size"):
        unpack_bundle(bundle, tmp_path / "out", max_unpacked_bytes=1000)


def test_manifest_referring_to_unlisted_file_is_refused(tmp_path: Path) -> None:
    files = {k: v for k, v in FILES.items() if k != "reference_stats.json"}
    with pytest.raises(BundleError) as caught:
        write_bundle(tmp_path / "b.tar", manifest_fields(), files)
    assert caught.value.file == "reference_stats.json"


def test_garbage_instead_of_archive_is_a_bundle_error(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(b"not a tar file at all" * 50)
    with pytest.raises(BundleError, match="unreadable"):
        unpack_bundle(bundle, tmp_path / "out")


def test_unknown_manifest_fields_survive_round_trip(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    write_bundle(bundle, manifest_fields(future_field={"x": 1}), FILES)
    manifest = read_manifest(bundle)
    assert manifest.unrecognized_fields == {"future_field": {"x": 1}}
    assert b"future_field" in manifest.to_bytes()


def test_manifest_member_name_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as caught:
        write_bundle(
            tmp_path / "b.tar", manifest_fields(), {**FILES, MANIFEST_NAME: (b"", "other")}
        )
    assert caught.value.file == MANIFEST_NAME

"""The bundle: one tar file holding a manifest and the files it names.

A bundle is what a device installs: the model artifact, smoke-test vectors (inputs,
expected outputs, tolerance), reference statistics for drift detection, and
``manifest.json``, which lists every other member with its length and SHA-256 and
says what the bundle is for (model, version, release counter, firmware profiles,
hardware, runtime, signature, lineage, metrics).

The bundle file as a whole is a TUF target, so its hash is signed; the manifest's
per-file hashes let the device name the exact member that is wrong, and let it
re-check an installed slot at any time without the archive.

Reading a bundle refuses anything but flat regular members (no directories, links,
device nodes, absolute paths or ``..``), members the manifest does not name,
archives whose unpacked size exceeds a bound, and any member that is not one of the
file types the runtimes load: ONNX, ORT format, TFLite, numpy arrays without
Python objects (a pickled array would run code on ``np.load``), and JSON. Members
with execute bits, or that start like an executable or a pickle, are refused.

A bundle has a ``kind``: ``model`` (all of the above) or ``agent``, the agent's own
code as a set of pure-Python wheels (``.whl``, zip archives) beside JSON, which the
agent installs beside the running one (``edgefleet.agent.install.selfupdate``). The
wheels are code: what makes them safe to run is the TUF signature over the bundle,
not their file type, so an agent bundle admits them and nothing else executable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import UNSET, Meta, UnsetType, field

from edgefleet import schema
from edgefleet.errors import BundleError
from edgefleet.fileio import atomic_write, fsync_dir
from edgefleet.tensors import ModelSignature

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
MEMBER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z"
MEMBER_NAME_RE = re.compile(MEMBER_NAME_PATTERN)
DEFAULT_MAX_UNPACKED_BYTES = 512 * 1024 * 1024

FileRole = Literal[
    "model", "smoke_input", "smoke_output", "reference_stats", "agent_wheel", "other"
]
BundleKind = Literal["model", "agent"]
"""What a bundle installs: a model into the slots, or a release of the agent itself."""


class FileEntry(schema.Open, frozen=True, kw_only=True):
    path: Annotated[str, Meta(pattern=MEMBER_NAME_PATTERN)]
    length: Annotated[int, Meta(ge=0)]
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]
    role: FileRole = "other"


class ModelRef(schema.Open, frozen=True, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}\Z")]
    version: Annotated[str, Meta(min_length=1, max_length=64)]


class RuntimeRequirement(schema.Open, frozen=True, kw_only=True):
    name: str  # e.g. "onnxruntime"
    version: str = ""  # PEP 440 specifier, e.g. ">=1.17,<2"


class SmokeTest(schema.Open, frozen=True, kw_only=True):
    """Inputs to run after install and the outputs they must give.

    ``inputs`` and ``expected`` map tensor names to member files (``.npy``). Float
    outputs must agree within ``atol``/``rtol``; integer outputs must agree at least
    in ``min_agreement`` of the elements.
    """

    inputs: dict[str, str]
    expected: dict[str, str]
    atol: float = 1e-4
    rtol: float = 1e-3
    min_agreement: float = 1.0


class Manifest(schema.Open, frozen=True, kw_only=True):
    """What a bundle contains and what it is for.

    Fields it does not declare (the control plane adds the artifact's ``format``, the
    ``candidates`` table and the build ``objective``) are kept and written back.
    """

    schema_version: int = MANIFEST_SCHEMA_VERSION
    kind: BundleKind | UnsetType = UNSET
    """Absent on model bundles (so a manifest written before kinds reads and writes back
    byte for byte); see :attr:`bundle_kind`."""
    bundle_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")]
    model: ModelRef
    release: Annotated[int, Meta(ge=1)]
    profiles: Annotated[list[str], Meta(min_length=1)]
    hardware: list[str] = field(default_factory=list)  # CPU architectures, e.g. ["x86_64"]
    runtime: RuntimeRequirement
    artifact: str  # the member holding the model
    signature: ModelSignature
    smoke_test: SmokeTest | None = None
    reference_stats: str | None = None
    files: list[FileEntry]
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    """Integer model boundaries: input/output name -> ``{dtype, scale, zero_point}``."""

    @property
    def bundle_kind(self) -> BundleKind:
        """``model`` unless the manifest says otherwise."""
        return "model" if isinstance(self.kind, UnsetType) else self.kind

    def file(self, path: str) -> FileEntry:
        """The entry for member ``path``; ``BundleError`` when the manifest lacks it."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise BundleError("not listed in the manifest", file=path)

    def check_consistency(self) -> None:
        """Every member the manifest refers to must be listed exactly once."""
        names = [f.path for f in self.files]
        if len(names) != len(set(names)):
            raise BundleError("manifest lists a file twice", file=MANIFEST_NAME)
        if MANIFEST_NAME in names:
            raise BundleError("manifest must not list itself", file=MANIFEST_NAME)
        referenced = [self.artifact]
        if self.smoke_test:
            referenced += [*self.smoke_test.inputs.values(), *self.smoke_test.expected.values()]
        if self.reference_stats:
            referenced.append(self.reference_stats)
        for path in referenced:
            self.file(path)

    def to_bytes(self) -> bytes:
        return json.dumps(
            schema.to_builtins(self, omit_none=True), indent=2, sort_keys=True
        ).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_manifest(
    fields: Mapping[str, Any], files: Mapping[str, tuple[bytes, FileRole]]
) -> Manifest:
    """A validated manifest for ``files`` plus the descriptive ``fields``.

    Args:
        fields: Every manifest field except ``files`` (model, version, release counter,
            profiles, artifact, smoke test, ...), as plain data.
        files: Member name -> (content, role); each gets its length and SHA-256.

    Returns:
        The manifest, checked against its schema and for consistency.

    Raises:
        BundleError: A field is invalid, or the manifest names a member it does not list.
    """
    entries = [
        {"path": name, "length": len(data), "sha256": sha256_hex(data), "role": role}
        for name, (data, role) in sorted(files.items())
    ]
    try:
        manifest = schema.convert({**fields, "files": entries}, Manifest)
    except msgspec.ValidationError as e:
        raise BundleError(f"invalid manifest: {schema.describe(e)}", file=MANIFEST_NAME) from e
    manifest.check_consistency()
    return manifest


def write_bundle(
    path: Path, fields: Mapping[str, Any], files: Mapping[str, tuple[bytes, FileRole]]
) -> Manifest:
    """Write a bundle holding ``files`` and a manifest built from ``fields``.

    Members are written in a fixed order with zeroed ownership and times, so the
    same inputs give byte-identical bundles.

    Args:
        path: The bundle file to write (atomically: a crash leaves no torn bundle).
        fields: The manifest's fields except ``files`` (see ``build_manifest``).
        files: Member name -> (content, role).

    Returns:
        The manifest written into the bundle.

    Raises:
        BundleError: A member name or file type is not allowed, or the manifest is invalid.
    """
    for name, (data, _role) in files.items():
        if not MEMBER_NAME_RE.fullmatch(name) or name == MANIFEST_NAME:
            raise BundleError("invalid member name", file=name)
        check_member_type(name, data[:16], kind=fields.get("kind", "model"))
    manifest = build_manifest(fields, files)
    members = [(MANIFEST_NAME, manifest.to_bytes())] + [
        (name, files[name][0]) for name in sorted(files)
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    atomic_write(Path(path), buffer.getvalue())
    return manifest


ALLOWED_SUFFIXES = (".onnx", ".ort", ".tflite", ".npy", ".json")
AGENT_SUFFIXES = (".whl", ".json")
_ZIP_MAGIC = b"PK\x03\x04"
_EXECUTABLE_MAGIC = (b"\x7fELF", b"#!", b"MZ", b"\xcf\xfa\xed\xfe", b"PK\x03\x04")
_PICKLE_PROTOCOLS = {bytes([0x80, p]) for p in range(2, 6)}


def check_member_type(
    name: str, head: bytes, mode: int = 0o644, *, kind: BundleKind = "model"
) -> None:
    """Refuse a member that is not a file type the runtimes load.

    Args:
        name: The member's name; its suffix must be one of ``ALLOWED_SUFFIXES``
            (``AGENT_SUFFIXES`` in an agent bundle).
        head: The member's first bytes (16 are enough), checked for executable, archive
            and pickle signatures and for the TFLite and ORT magic numbers.
        mode: The member's permission bits; any execute bit is refused.
        kind: The bundle's kind, from its manifest: an agent bundle carries wheels.

    Raises:
        BundleError: Naming the member and why it was refused.
    """
    if kind == "agent" and name.endswith(".whl"):
        if mode & 0o111:
            raise BundleError("executable members are not allowed", file=name)
        if not head.startswith(_ZIP_MAGIC):
            raise BundleError("a wheel must be a zip archive", file=name)
        return
    if kind == "agent" and not name.endswith(AGENT_SUFFIXES):
        raise BundleError(f"file type not allowed (only {', '.join(AGENT_SUFFIXES)})", file=name)
    if not name.endswith(ALLOWED_SUFFIXES):
        raise BundleError(f"file type not allowed (only {', '.join(ALLOWED_SUFFIXES)})", file=name)
    if mode & 0o111:
        raise BundleError("executable members are not allowed", file=name)
    if head.startswith(_EXECUTABLE_MAGIC):
        raise BundleError("looks like an executable or archive", file=name)
    if head[:2] in _PICKLE_PROTOCOLS:
        raise BundleError("looks like a Python pickle", file=name)
    if name.endswith(".tflite") and head[4:8] != b"TFL3":
        raise BundleError("not a TFLite flatbuffer", file=name)
    if name.endswith(".ort") and head[4:8] != b"ORTM":
        raise BundleError("not an ORT-format model", file=name)


NPY_HEADER_LIMIT = 64 * 1024


def check_npy(name: str, handle: Any) -> None:
    """Refuse a ``.npy`` member whose array holds Python objects (loaded by unpickling).

    Only the header is parsed, from a bounded in-memory copy of the member's head.

    Args:
        name: The member's name, for the error.
        handle: A binary file object positioned at the member's start.

    Raises:
        BundleError: The header is not a numpy array header, or its dtype holds objects.
    """
    handle = io.BytesIO(handle.read(NPY_HEADER_LIMIT))
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            _shape, _order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            _shape, _order, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, OSError) as e:
        raise BundleError(f"not a valid numpy array file: {e}", file=name) from e
    if dtype.hasobject:
        raise BundleError("numpy array of Python objects (a pickle) is not allowed", file=name)


def _parse_manifest(data: bytes) -> Manifest:
    try:
        manifest = schema.decode_json(data, Manifest)
    except msgspec.DecodeError as e:
        raise BundleError(f"invalid manifest: {schema.describe(e)}", file=MANIFEST_NAME) from e
    if manifest.schema_version > MANIFEST_SCHEMA_VERSION:
        raise BundleError(
            f"unsupported manifest schema version {manifest.schema_version}", file=MANIFEST_NAME
        )
    manifest.check_consistency()
    return manifest


def read_manifest(bundle_path: Path) -> Manifest:
    """Read and validate only the manifest of a bundle (no member is extracted).

    Args:
        bundle_path: The bundle file.

    Returns:
        The validated manifest.

    Raises:
        BundleError: The archive is unreadable, has no manifest, or the manifest is
            invalid, inconsistent or of a newer schema version.
    """
    try:
        with tarfile.open(bundle_path, mode="r:") as tar:
            member = tar.getmember(MANIFEST_NAME)
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None:
                raise BundleError("not a regular file", file=MANIFEST_NAME)
            return _parse_manifest(handle.read())
    except KeyError as e:
        raise BundleError("bundle has no manifest", file=MANIFEST_NAME) from e
    except (OSError, tarfile.TarError) as e:
        raise BundleError(f"unreadable bundle archive: {e}") from e


def verify_file(path: Path, entry: FileEntry) -> None:
    """Check one file's length and SHA-256 against its manifest entry.

    Raises:
        BundleError: The file is missing, or its length or SHA-256 differs (naming it).
    """
    try:
        size = path.stat().st_size
        if size != entry.length:
            raise BundleError(
                f"length mismatch: manifest says {entry.length} bytes, file has {size}",
                file=entry.path,
            )
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as e:
        raise BundleError("missing", file=entry.path) from e
    if digest.hexdigest() != entry.sha256:
        raise BundleError("sha256 mismatch", file=entry.path)


def verify_directory(directory: Path, manifest: Manifest) -> None:
    """Check every file the manifest lists, as unpacked in ``directory``."""
    for entry in manifest.files:
        verify_file(Path(directory) / entry.path, entry)


def unpack_bundle(
    bundle_path: Path, dest: Path, *, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
) -> Manifest:
    """Safely extract a bundle into the empty directory ``dest`` and verify every file.

    Args:
        bundle_path: The bundle file, as downloaded.
        dest: An empty (or not yet existing) directory; files are fsynced into it.
        max_unpacked_bytes: The bound on the members' total size, checked before any
            member is written.

    Returns:
        The bundle's manifest.

    Raises:
        BundleError: Naming the member at fault: an unsafe or unlisted member, an
            archive larger than ``max_unpacked_bytes``, a file type the runtimes do not
            load, or a file whose length or SHA-256 differs from the manifest; also a
            ``dest`` that is not empty or an unreadable archive.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise BundleError(f"destination {dest} is not empty")
    try:
        with tarfile.open(bundle_path, mode="r:") as tar:
            members = tar.getmembers()
            total = 0
            seen: set[str] = set()
            for member in members:
                if not member.isreg():
                    raise BundleError("only regular files are allowed", file=member.name)
                if not MEMBER_NAME_RE.fullmatch(member.name):
                    raise BundleError("unsafe member name", file=member.name)
                if member.name in seen:
                    raise BundleError("duplicate member", file=member.name)
                seen.add(member.name)
                total += member.size
                if total > max_unpacked_bytes:
                    raise BundleError(
                        f"unpacked size exceeds the bound of {max_unpacked_bytes} bytes",
                        file=member.name,
                    )
            if MANIFEST_NAME not in seen:
                raise BundleError("bundle has no manifest", file=MANIFEST_NAME)
            manifest_handle = tar.extractfile(MANIFEST_NAME)
            assert manifest_handle is not None
            manifest = _parse_manifest(manifest_handle.read())
            for member in members:
                handle = tar.extractfile(member)
                assert handle is not None
                check_member_type(
                    member.name, handle.read(16), member.mode, kind=manifest.bundle_kind
                )
                if member.name.endswith(".npy"):
                    handle.seek(0)
                    check_npy(member.name, handle)
                elif member.name.endswith(".json") and member.name != MANIFEST_NAME:
                    handle.seek(0)
                    try:
                        json.loads(handle.read())
                    except (ValueError, UnicodeDecodeError) as e:
                        raise BundleError("not valid JSON", file=member.name) from e
            listed = {f.path for f in manifest.files}
            for name in sorted(seen - listed - {MANIFEST_NAME}):
                raise BundleError("member not listed in the manifest", file=name)
            for name in sorted(listed - seen):
                raise BundleError("listed in the manifest but missing", file=name)
            for member in members:
                handle = tar.extractfile(member)
                assert handle is not None
                with (dest / member.name).open("wb") as out:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):  # type: ignore[misc]
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
    except (OSError, tarfile.TarError) as e:
        raise BundleError(f"unreadable bundle archive: {e}") from e
    fsync_dir(dest)
    verify_directory(dest, manifest)
    return manifest

"""Contract records on msgspec: checked when built, open to newer peers, and compatible
with the files the pydantic-based agent and control plane wrote before them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet import schema
from edgefleet.agent.config import AgentConfig, ProbationConfig
from edgefleet.agent.install.journal import Journal
from edgefleet.agent.install.slots import SlotStore, read_slot_manifest
from edgefleet.errors import FieldError, MessageError
from edgefleet.messages import BundleOffer, TelemetryEvent, decode_message
from edgefleet.tensors import ModelSignature, TensorSpec

# Written by the pydantic-based versions (before the move to msgspec): devices in the field
# have these files, so they must read back and be written again byte for byte.
PYDANTIC_MANIFEST = (
    '{"artifact":"model.tflite","bundle_id":"digits-1-r3","candidates":[{"candidate":"int8",'
    '"reasons":null}],"files":[{"length":1,"path":"in.npy","role":"smoke_input","sha256":'
    '"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"},{"length":8,"path":'
    '"model.tflite","role":"model","sha256":'
    '"0906e1333356b93a0a172343169b397faf912d15ea1485bd360ca20d53781a4d"},{"length":1,"path":'
    '"out.npy","role":"smoke_output","sha256":'
    '"3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"}],"format":"tflite",'
    '"hardware":[],"lineage":{"calibration_sha256":null,"recipe":{"a":[1,2.5,null]}},'
    '"metrics":{"accuracy":0.9712,"tiny":1e-07},"model":{"name":"digits","version":"1"},'
    '"objective":"smallest","profiles":["p"],"quantization":{"input":{"dtype":"int8",'
    '"scale":0.5,"zero_point":-3}},"release":3,"runtime":{"name":"ai-edge-litert","version":""},'
    '"schema_version":1,"signature":{"inputs":[{"datatype":"FP32","name":"input","shape":'
    '[-1,64]}],"outputs":[{"datatype":"INT64","name":"label","shape":[-1]}]},"smoke_test":'
    '{"atol":0.02,"expected":{"label":"out.npy"},"inputs":{"input":"in.npy"},'
    '"min_agreement":1.0,"rtol":0.001}}'
)
PYDANTIC_ACTIVE = (
    b'{\n  "bundle_id": "digits-1-x86-r3",\n  "highest_release": 3,\n'
    b'  "installed_at": 1700000000.25,\n  "model": "digits",\n  "model_version": "1",\n'
    b'  "release": 3,\n  "slot": "b"\n}\n'
)
PYDANTIC_JOURNAL = (
    b'{"bundle_id": "b-2", "history": ["offered", "downloading", "verified", "staged", '
    b'"smoke_tested", "active"], "previous": {"bundle_id": "digits-1-x86-r3", '
    b'"highest_release": 3, "installed_at": 1700000000.25, "model": "digits", '
    b'"model_version": "1", "release": 3, "slot": "b"}, "reason": null, "release": 2, '
    b'"restarts": 0, "rollout_id": 7, "saves": 6, "slot": "a", "state": "active", '
    b'"target": "b-2.tar", "updated_at": 1700000001.5}\n'
)


def test_a_record_built_with_a_bad_value_raises_field_error_naming_the_field() -> None:
    with pytest.raises(FieldError) as caught:
        BundleOffer(bundle_id="b", target="b.tar", release=0)
    assert caught.value.field == "release"
    assert isinstance(caught.value, ValueError)
    with pytest.raises(FieldError) as nested:
        TensorSpec(name="x", datatype="FP32", shape=[1, "2"])  # type: ignore[list-item]
    assert nested.value.field == "shape.1"


def test_a_record_built_in_code_stores_converted_values() -> None:
    assert type(ProbationConfig(max_p95_ms=100).max_p95_ms) is float
    config = AgentConfig(
        device_id="dev-abc12345",
        profile="p",
        data_dir="/var/lib/edgefleet-agent",  # type: ignore[arg-type]
        trust_root=Path("/etc/edgefleet/root.json"),
    )
    assert config.data_dir == Path("/var/lib/edgefleet-agent")


def test_patterns_refuse_a_trailing_newline() -> None:
    payload = b'{"type": "fetch", "path": "targets/x.tar\\n", "offset": 0, "length": 10}'
    with pytest.raises(MessageError, match="path"):
        decode_message(payload)


def test_none_fields_are_left_off_the_wire_but_none_inside_data_is_kept() -> None:
    event = TelemetryEvent(kind="error", data={"where": None})
    wire = json.loads(event.to_bytes())
    assert wire["v"] == 1 and wire["type"] == "telemetry"
    assert "bundle_id" not in wire
    assert wire["data"] == {"where": None}


def test_unknown_fields_are_kept_at_every_level_and_through_replace() -> None:
    data = {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "layout": "NCHW"}],
        "outputs": [],
        "batching": {"max": 8},
    }
    signature = schema.convert(data, ModelSignature)
    assert signature.unrecognized_fields == {"batching": {"max": 8}}
    assert signature.inputs[0].unrecognized_fields == {"layout": "NCHW"}
    changed = schema.replace(signature, outputs=[signature.inputs[0]])
    assert changed.unrecognized_fields == {"batching": {"max": 8}}
    assert schema.to_builtins(changed)["outputs"][0]["layout"] == "NCHW"


def test_manifest_written_by_the_pydantic_version_reads_and_writes_back_unchanged(
    tmp_path: Path,
) -> None:
    written = json.dumps(json.loads(PYDANTIC_MANIFEST), indent=2, sort_keys=True).encode()
    (tmp_path / "manifest.json").write_bytes(written)
    manifest = read_slot_manifest(tmp_path)
    assert manifest.quantization == {"input": {"dtype": "int8", "scale": 0.5, "zero_point": -3}}
    assert manifest.unrecognized_fields["format"] == "tflite"
    assert manifest.to_bytes() == written


def test_active_record_written_by_the_pydantic_version_is_written_back_unchanged(
    tmp_path: Path,
) -> None:
    store = SlotStore(tmp_path)
    store.active_path.write_bytes(PYDANTIC_ACTIVE)
    record = store.read_active()
    assert record is not None and record.highest() == 3
    store.write_active(record)
    assert store.active_path.read_bytes() == PYDANTIC_ACTIVE


def test_journal_written_by_the_pydantic_version_reads_back_field_for_field(
    tmp_path: Path,
) -> None:
    (tmp_path / "journal.json").write_bytes(PYDANTIC_JOURNAL)
    record = Journal(tmp_path).read()
    assert record is not None
    assert (record.state, record.slot, record.previous and record.previous["slot"]) == (
        "active", "a", "b",
    )  # fmt: skip
    written = schema.to_builtins(record)
    # Declared since (deferral, atomic switch): written as null / false when the offer had
    # none; nothing else moves.
    assert written.pop("maintenance_window") is None
    assert written.pop("atomic") is False
    assert json.dumps(written, sort_keys=True).encode() + b"\n" == PYDANTIC_JOURNAL


def test_journal_keeps_fields_a_newer_agent_wrote_across_saves(tmp_path: Path) -> None:
    newer = json.loads(PYDANTIC_JOURNAL)
    newer["attempt_id"] = "x-1"
    (tmp_path / "journal.json").write_text(json.dumps(newer))
    journal = Journal(tmp_path)
    record = journal.read()
    assert record is not None
    journal.fire(record, "probation_passed")
    assert json.loads((tmp_path / "journal.json").read_text())["attempt_id"] == "x-1"


FIRST_USE_IN_MANY_THREADS = """
import sys, threading, msgspec
from typing import Annotated, Literal
from edgefleet import schema
sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
for round in range(200):
    fields = [(f"f{i}", Annotated[int, msgspec.Meta(ge=0)] | None, None) for i in range(40)]
    fields += [(f"l{i}", list[dict[str, Literal["a", "b"]]], msgspec.field(default_factory=list))
               for i in range(20)]
    Record = msgspec.defstruct(f"Record{round}", fields, bases=(schema.Struct,), kw_only=True,
                               frozen=True)
    start = threading.Barrier(16)
    def use():
        start.wait()
        schema.convert({"f1": 1}, Record)
        Record(f2=3)
    threads = [threading.Thread(target=use) for _ in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
print("survived")
"""


def test_a_record_type_first_used_by_many_threads_at_once_does_not_crash_the_process() -> None:
    # The same script with msgspec.convert in place of schema.convert dies with SIGSEGV
    # within a second here (msgspec 0.22.0): msgspec publishes a type's field types
    # half-built on first use. A worker of the fleet benchmark died of it.
    result = subprocess.run(
        [sys.executable, "-c", FIRST_USE_IN_MANY_THREADS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "survived"

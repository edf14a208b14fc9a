"""The request split of an A/B experiment, over the real endpoint on a loopback port.

Arm A is the active digits model; arm B, the challenger, is the same ONNX session under
another bundle id (what differs between the arms here is which bundle is counted, and
that is what the split must get right). Requests, outcomes and the shadow runner's
``split`` command run through the real server, recorder and stats.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet import schema
from edgefleet.agent.inference.outcomes import OutcomeRecorder
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder, OnnxRuntime
from edgefleet.agent.inference.server import InferenceServer
from edgefleet.agent.inference.split import RequestSplit, check_share, request_fraction
from edgefleet.agent.install.commands import split_of
from edgefleet.agent.install.shadow import ShadowRunner
from edgefleet.agent.telemetry.counters import InferenceStats
from edgefleet.messages import DeviceCommand, TelemetryEvent
from edgefleet.tensors import ModelSignature, encode_tensor
from edgefleet_demo.digits import DigitsModel

SIGNATURE = schema.convert(
    {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    },
    ModelSignature,
)
EXPERIMENT = 7


@dataclasses.dataclass
class Rig:
    server: InferenceServer
    split: RequestSplit
    shadow: ShadowRunner
    stats: InferenceStats
    outcomes: OutcomeRecorder
    arm_a: ActiveModel
    arm_b: ActiveModel
    body: dict[str, Any]
    events: list[TelemetryEvent]


@pytest.fixture(scope="module")
def rig(digits: DigitsModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("split")
    (tmp / "model.onnx").write_bytes(digits.onnx_bytes)
    runtime = OnnxRuntime(tmp / "model.onnx", SIGNATURE)
    arm_a = ActiveModel("digits", "1", "onnxruntime_onnx", runtime, "digits-1", 1)
    arm_b = ActiveModel("digits", "2", "onnxruntime_onnx", runtime, "digits-2", 2)
    split = RequestSplit()
    events: list[TelemetryEvent] = []
    shadow = ShadowRunner(tmp / "data", events.append, split=split)
    stats = InferenceStats()
    outcomes = OutcomeRecorder(resolve=split.served_by)
    server = InferenceServer(
        ModelHolder(arm_a),
        host="127.0.0.1",
        port=0,
        observer=stats.record,
        outcome_route=outcomes.handle,
    )
    server.choose_arm = split.serve
    server.start()
    body = {"inputs": [encode_tensor("input", digits.holdout_x[:1].astype(np.float32))]}
    try:
        yield Rig(server, split, shadow, stats, outcomes, arm_a, arm_b, body, events)
    finally:
        server.stop()
        shadow.close()


def post(rig: Rig, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", rig.server.port, timeout=10)
    try:
        connection.request("POST", path, body=json.dumps(body).encode())
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def infer(rig: Rig, request_id: str) -> dict[str, Any]:
    status, answer = post(rig, "/v2/models/digits/infer", {**rig.body, "id": request_id})
    assert status == 200, answer
    return answer


@pytest.fixture
def challenger(rig: Rig) -> Iterator[Rig]:
    """Arm B delivered as a shadow, then made the challenger by a split command."""
    rig.shadow.start(rig.arm_b, rollout_id=5)
    rig.shadow.set_split(EXPERIMENT, 0.3)
    rig.stats.take_windows()
    rig.outcomes.take_events()
    try:
        yield rig
    finally:
        rig.shadow.stop("test over")


def test_a_share_of_requests_is_answered_by_the_challenger_and_each_answer_names_its_arm(
    challenger: Rig,
) -> None:
    rig = challenger
    answers = {f"req-{i}": infer(rig, f"req-{i}") for i in range(300)}

    arms = {rid: a["parameters"]["arm"] for rid, a in answers.items()}
    for rid, answer in answers.items():
        expected = "B" if request_fraction(EXPERIMENT, rid) < 0.3 else "A"
        assert arms[rid] == expected
        bundle = rig.arm_b.bundle_id if expected == "B" else rig.arm_a.bundle_id
        assert answer["parameters"] == {
            "arm": expected,
            "bundle_id": bundle,
            "experiment_id": EXPERIMENT,
        }
        assert answer["model_version"] == ("2" if expected == "B" else "1")
    on_b = sum(arm == "B" for arm in arms.values())
    assert 0.2 * 300 < on_b < 0.4 * 300  # the hash spreads ids evenly: about 30 %
    # The same id always lands on the same arm (a retry is answered by the same model).
    assert infer(rig, "req-0")["parameters"]["arm"] == arms["req-0"]
    # Each arm's requests are counted under its own bundle.
    windows = rig.stats.take_windows()
    assert windows[rig.arm_b.bundle_id].count == on_b
    assert windows[rig.arm_a.bundle_id].count == 300 - on_b + 1


def test_an_outcome_posted_with_the_answers_id_counts_for_the_arm_that_served_it(
    challenger: Rig,
) -> None:
    rig = challenger
    ids = [f"out-{i}" for i in range(40)]
    served = {rid: infer(rig, rid)["parameters"]["bundle_id"] for rid in ids}
    for rid in ids:
        value = 1.0 if served[rid] == rig.arm_a.bundle_id else 0.0
        status, answer = post(rig, "/v2/models/digits/outcome", {"value": value, "id": rid})
        assert status == 200 and answer["bundle_id"] == served[rid]
    status, answer = post(rig, "/v2/models/digits/outcome", {"value": 5.0})
    assert status == 200 and answer["bundle_id"] == rig.arm_a.bundle_id  # no id: the active
    status, answer = post(rig, "/v2/models/digits/outcome", {"value": 1.0, "id": 3})
    assert status == 400 and "id" in answer["error"]

    sums = {e.bundle_id: e.data for e in rig.outcomes.take_events()}
    on_b = sum(b == rig.arm_b.bundle_id for b in served.values())
    assert sums[rig.arm_b.bundle_id] == {"model": "digits", "count": on_b, "sum": 0.0,
                                         "sum_sq": 0.0}  # fmt: skip
    assert sums[rig.arm_a.bundle_id]["count"] == len(ids) - on_b + 1
    assert sums[rig.arm_a.bundle_id]["sum"] == len(ids) - on_b + 5.0


def test_bandit_moves_the_share_and_a_stop_leaves_every_request_to_the_active_model(
    challenger: Rig,
) -> None:
    rig = challenger
    rig.shadow.set_split(EXPERIMENT, 1.0)  # a later split command for the same bundle
    assert all(infer(rig, f"all-{i}")["parameters"]["arm"] == "B" for i in range(20))
    rig.shadow.set_split(EXPERIMENT, 0.0)
    assert all(infer(rig, f"none-{i}")["parameters"]["arm"] == "A" for i in range(20))

    rig.shadow.stop("experiment decided")
    assert rig.split.challenger() is None and not rig.shadow.challenger
    answer = infer(rig, "after")
    assert "parameters" not in answer and answer["model_version"] == "1"
    # As a challenger it was never compared off the request path: no shadow windows.
    assert [e for e in rig.events if e.kind == "shadow" and e.data["count"]] == []


def test_a_challenger_whose_inputs_differ_from_the_active_models_never_answers(
    rig: Rig, digits: DigitsModel, tmp_path: Path
) -> None:
    (tmp_path / "model.onnx").write_bytes(digits.onnx_bytes)
    other = schema.convert(
        {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        },
        ModelSignature,
    )
    odd = ActiveModel(
        "digits", "9", "onnxruntime_onnx", OnnxRuntime(tmp_path / "model.onnx", other), "d-9", 9
    )
    rig.split.start(odd, share=1.0, experiment_id=EXPERIMENT)
    try:
        answer = infer(rig, "odd")
        assert "parameters" not in answer and answer["model_version"] == "1"
    finally:
        rig.split.stop()


@pytest.mark.parametrize(
    ("split", "reason"),
    [
        ("half", "must be an object"),
        ({"experiment_id": "7", "share": 0.5}, "experiment_id"),
        ({"experiment_id": True, "share": 0.5}, "experiment_id"),
        ({"experiment_id": 7, "share": 1.5}, "within [0, 1]"),
        ({"experiment_id": 7, "share": float("nan")}, "within [0, 1]"),
        ({"experiment_id": 7, "share": True}, "must be a number"),
        ({"experiment_id": 7}, "must be a number"),
        ({"experiment_id": 7, "share": [[[[0.5]]]]}, "must be a number"),
    ],
)
def test_a_malformed_split_is_refused_with_its_reason(split: Any, reason: str) -> None:
    command = DeviceCommand(command="shadow_start", bundle_id="b", args={"split": split})
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        split_of(command)


def test_a_well_formed_split_is_read_and_a_plain_shadow_start_has_none() -> None:
    split = {"experiment_id": 3, "share": 0.25}
    assert split_of(DeviceCommand(command="shadow_start", args={"split": split})) == (3, 0.25)
    assert split_of(DeviceCommand(command="shadow_start", args={})) is None
    assert check_share(1) == 1.0

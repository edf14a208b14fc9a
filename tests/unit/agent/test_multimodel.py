"""Several models per device: per-model state dirs, the move from the one-model layout,
the allow-list and memory budget, per-bundle probation, and the RCU-like model swap."""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from pathlib import Path

import pytest

from edgefleet.agent.config import AgentConfig, parse_config
from edgefleet.agent.daemon import load_hosted_models
from edgefleet.agent.errors import ConfigError, InstallError
from edgefleet.agent.inference.protocol import RequestError
from edgefleet.agent.inference.routes import Request, RouteTable
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder, ModelTable
from edgefleet.agent.install.layout import hosted_models, migrate_single_model, model_dir
from edgefleet.agent.install.memory import check_memory_budget, check_model_allowed
from edgefleet.agent.install.slots import ActiveRecord, SlotStore
from edgefleet.agent.telemetry.counters import InferenceStats
from edgefleet_demo.digits import DigitsModel
from tests.unit.agent.test_smoke import make_bundle

BASE = """
device_id = "dev-abc12345"
profile = "x86-64-gateway-onnx"
data_dir = "/tmp/agent"
trust_root = "/tmp/root.json"
memory_budget_mb = 100
"""
MIB = 2**20


def config(extra: str = "") -> AgentConfig:
    return parse_config(BASE + extra)


def model(name: str, bundle_id: str) -> ActiveModel:
    return ActiveModel(name=name, version="1", platform="x", runtime=None, bundle_id=bundle_id)  # type: ignore[arg-type]


# -- config, allow-list and memory budget -----------------------------------------------


def test_models_table_gives_each_model_a_share_and_refuses_bad_names_and_keys() -> None:
    shared = config("[models.digits]\nmemory_share = 0.5\n[models.detector]\n")
    assert shared.models["digits"].memory_share == 0.5
    assert shared.models["detector"].memory_share == 1.0
    with pytest.raises(ConfigError, match="memory_share"):
        config("[models.a]\nmemory_share = 1.5\n")
    with pytest.raises(ConfigError, match="models"):
        config('[models."../x"]\nmemory_share = 0.1\n')
    with pytest.raises(ConfigError, match="memory_shares"):
        config("[models.a]\nmemory_shares = 0.1\n")


def test_a_model_not_on_the_allow_list_is_refused_naming_the_allowed_ones() -> None:
    check_model_allowed(config(), "anything")  # no table: any model
    allowed = config("[models.digits]\n[models.detector]\n")
    check_model_allowed(allowed, "digits")
    with pytest.raises(InstallError, match=r"'intruder' is not allowed.*detector, digits"):
        check_model_allowed(allowed, "intruder")


def test_a_bundle_over_its_models_memory_share_or_the_whole_budget_is_refused_naming_it() -> None:
    shared = config(
        "[models.digits]\nmemory_share = 0.25\n[models.detector]\nmemory_share = 0.75\n"
    )
    check_memory_budget(shared, "digits", 20 * MIB, {"detector": 70 * MIB})
    with pytest.raises(InstallError, match=r"memory_share 0.25 of memory_budget_mb 100"):
        check_memory_budget(shared, "digits", 30 * MIB, {})
    with pytest.raises(InstallError, match=r"other models hold 90.0 MiB of memory_budget_mb 100"):
        check_memory_budget(config(), "digits", 20 * MIB, {"detector": 90 * MIB, "digits": 5})


# -- the state layout --------------------------------------------------------------------


def test_a_one_model_state_dir_moves_under_models_and_keeps_its_model(tmp_path: Path) -> None:
    (tmp_path / "slots" / "a").mkdir(parents=True)
    (tmp_path / "slots" / "a" / "model.onnx").write_bytes(b"weights")
    active = {"slot": "a", "bundle_id": "digits-1", "release": 4, "model": "digits",
              "model_version": "1", "highest_release": 7}  # fmt: skip
    (tmp_path / "active.json").write_text(json.dumps(active))
    (tmp_path / "journal.json").write_text('{"bundle_id": "digits-1", "target": "t", "release": 4}')

    assert migrate_single_model(tmp_path) == "digits"

    moved = model_dir(tmp_path, "digits")
    assert json.loads((moved / "active.json").read_text())["highest_release"] == 7
    assert (moved / "slots" / "a" / "model.onnx").read_bytes() == b"weights"
    assert (moved / "journal.json").exists()
    assert not any((tmp_path / name).exists() for name in ("active.json", "journal.json", "slots"))
    assert hosted_models(tmp_path) == ["digits"]
    assert migrate_single_model(tmp_path) is None  # done once


def test_a_move_cut_short_by_a_power_cut_is_finished_on_the_next_start(tmp_path: Path) -> None:
    moved = model_dir(tmp_path, "digits")
    (moved / "slots" / "b").mkdir(parents=True)  # slots moved before the cut
    active = {"slot": "b", "bundle_id": "d", "release": 1, "model": "digits", "model_version": "1"}
    (tmp_path / "active.json").write_text(json.dumps(active))
    assert migrate_single_model(tmp_path) == "digits"
    assert (moved / "active.json").exists() and (moved / "slots" / "b").is_dir()


def test_a_model_name_that_is_not_a_plain_directory_name_is_refused(tmp_path: Path) -> None:
    for name in ("..", "a/b", "", ".hidden"):
        with pytest.raises(InstallError, match="not usable"):
            model_dir(tmp_path, name)


# -- per-bundle probation and telemetry --------------------------------------------------


def test_two_models_on_probation_are_judged_on_their_own_requests() -> None:
    stats = InferenceStats()
    stats.start_probation("a-2")
    stats.start_probation("b-2")
    for bundle, ok in [("a-2", True), ("a-2", True), ("b-2", False), ("old", True)]:
        stats.record((bundle, 1.0, ok))
    assert (stats.probation_window("a-2").count, stats.probation_window("a-2").errors) == (2, 0)
    assert (stats.probation_window("b-2").count, stats.probation_window("b-2").errors) == (1, 1)
    stats.end_probation("a-2")
    assert stats.probation_window("a-2").count == 0
    windows = stats.take_windows()
    assert {k: w.count for k, w in windows.items()} == {"a-2": 2, "b-2": 1, "old": 1}


# -- the model table and its swap ----------------------------------------------------------


def test_swap_lets_requests_in_flight_finish_on_the_old_model_and_drain_waits_for_them() -> None:
    holder = ModelHolder(model("digits", "v1"))
    entered, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def request() -> None:
        with holder.serve() as served:
            assert served is not None
            entered.set()
            release.wait(10)
            seen.append(served.bundle_id)

    thread = threading.Thread(target=request)
    thread.start()
    assert entered.wait(10)
    old = holder.swap(model("digits", "v2"))
    assert old is not None and holder.inflight(old) == 1
    with holder.serve() as served:  # a new request gets the new model at once
        assert served is not None and served.bundle_id == "v2"
    assert not holder.drain(old, timeout=0.05)  # still one request on it
    release.set()
    assert holder.drain(old, timeout=10)
    thread.join(10)
    assert seen == ["v1"] and holder.inflight(old) == 0


def test_model_table_finds_each_model_by_name_and_lists_them_in_order() -> None:
    table = ModelTable()
    table.holder("digits").swap(model("digits", "d1"))
    table.holder("detector").swap(model("detector", "x1"))
    assert [m.name for m in table.models()] == ["detector", "digits"]
    found = table.find("digits")
    assert found is not None and found is table.holder("digits")
    assert table.find("nothing") is None
    single = ModelTable.single(ModelHolder(model("digits", "d1")))
    assert single.find("digits") is not None


# -- the route table -------------------------------------------------------------------------


def test_route_table_matches_params_and_rest_and_answers_404_and_405() -> None:
    routes = RouteTable()
    routes.add("POST", "/v2/models/{name}/feedback", lambda r: (HTTPStatus.OK, r.params))
    routes.add("DELETE", "/v2/agent/flags/*", lambda r: (HTTPStatus.OK, {"rest": r.rest}))
    assert routes.dispatch("POST", "/v2/models/digits/feedback?x=1") == (
        HTTPStatus.OK,
        {"name": "digits"},
    )
    assert routes.dispatch("DELETE", "/v2/agent/flags/a/b")[1] == {"rest": ["a", "b"]}
    with pytest.raises(RequestError) as refused:
        routes.dispatch("GET", "/v2/models/digits/feedback")
    assert refused.value.status == HTTPStatus.METHOD_NOT_ALLOWED and "POST" in refused.value.reason
    with pytest.raises(RequestError) as missing:
        routes.dispatch("POST", "/v2/models/digits/feedback/more")
    assert missing.value.status == HTTPStatus.NOT_FOUND
    assert isinstance(Request("GET", "/"), Request)


def test_an_agent_updated_in_the_field_starts_serving_the_model_its_old_layout_held(
    tmp_path: Path, digits: DigitsModel
) -> None:
    manifest, built = make_bundle(tmp_path / "build", digits)
    data_dir = tmp_path / "data"
    (data_dir / "slots").mkdir(parents=True)
    built.rename(data_dir / "slots" / "b")
    SlotStore(data_dir).write_active(
        ActiveRecord(slot="b", bundle_id=manifest.bundle_id, release=manifest.release,
                     model="digits", model_version="1")
    )  # fmt: skip

    table = ModelTable()
    load_hosted_models(data_dir, table)

    served = table.find("digits")
    assert served is not None
    current = served.current()
    assert current is not None and current.bundle_id == manifest.bundle_id
    outputs = current.runtime.infer({"input": digits.samples[:2]})
    assert outputs["label"].shape == (2,)
    assert (data_dir / "models" / "digits" / "slots" / "b" / "model.onnx").exists()

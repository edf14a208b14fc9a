"""Bundle builds as jobs: started at once, followed by id, and honest about how they ended."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import BuildJob
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import ControlPlane
from tests.support.harness import register_model
from tests.support.polling import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

PROFILE = "x86-64-gateway-onnx"
REPLICA = "cp-builds"
BUILD = {"model": "digits", "version": "1", "profile": PROFILE}


def finished(client: TestClient, build_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/api/v1/builds/{build_id}").json()
        return job if job["state"] in ("succeeded", "failed") else None

    return wait_until(done, f"build {build_id} to finish", timeout=300)


def test_build_job_answers_at_once_and_records_each_candidate_and_its_bundle(
    control_plane: ControlPlane, digits: DigitsModel
) -> None:
    client = control_plane(client_id=REPLICA)
    register_model(client, digits.onnx_bytes, digits.samples, version="1")

    started = client.post("/api/v1/builds", json=BUILD)

    assert started.status_code == 202, started.text
    job = started.json()
    assert job["state"] in ("queued", "running")
    assert (job["model"], job["model_version"], job["profile"]) == ("digits", "1", PROFILE)
    assert job["owner"] == REPLICA
    done = finished(client, job["id"])
    assert done["state"] == "succeeded", done
    assert done["error"] is None and done["stage"] is None
    bundle = client.get(f"/api/v1/bundles/{done['bundle_id']}").json()
    table = bundle["manifest"]["candidates"]
    assert [c["candidate"] for c in done["candidates"]] == [c["candidate"] for c in table]
    assert [c["verdict"] for c in done["candidates"]] == [c["verdict"] for c in table]
    assert all(c["agreement"] is not None for c in done["candidates"] if c["verdict"] == "passed")
    assert done["worker_max_rss_bytes"] > 0
    assert [j["id"] for j in client.get("/api/v1/builds").json()] == [job["id"]]


def test_failed_build_job_records_the_reason_the_synchronous_build_answers(
    control_plane: ControlPlane, digits: DigitsModel
) -> None:
    client = control_plane(client_id=REPLICA)
    register_model(client, digits.onnx_bytes, digits.samples, version="1")
    narrow = {**BUILD, "holdout": {"x": [[0.0, 1.0, 2.0]] * 4}}

    job = finished(client, client.post("/api/v1/builds", json=narrow).json()["id"])
    synchronous = client.post("/api/v1/bundles", json=narrow)

    assert job["state"] == "failed"
    assert synchronous.status_code == 422
    assert job["error_status"] == 422
    assert "expects FP32[-1, 64], given FP32[4, 3]" in job["error"]
    assert job["error"] == synchronous.json()["detail"]
    assert job["bundle_id"] is None


def test_unknown_model_or_profile_is_refused_before_any_job(
    control_plane: ControlPlane, digits: DigitsModel
) -> None:
    client = control_plane(client_id=REPLICA)
    register_model(client, digits.onnx_bytes, digits.samples, version="1")

    no_profile = client.post("/api/v1/builds", json={**BUILD, "profile": "no-such-profile"})
    no_model = client.post("/api/v1/builds", json={**BUILD, "version": "9"})

    assert (no_profile.status_code, no_model.status_code) == (404, 404)
    assert "no-such-profile" in no_profile.json()["detail"]
    assert client.get("/api/v1/builds").json() == []
    assert client.get("/api/v1/builds/12345").status_code == 404


def test_control_plane_stopped_mid_build_marks_the_job_interrupted(
    control_plane: ControlPlane, digits: DigitsModel
) -> None:
    client = control_plane(client_id=REPLICA)
    register_model(client, digits.onnx_bytes, digits.samples, version="1")
    build_id = client.post("/api/v1/builds", json=BUILD).json()["id"]
    wait_until(
        lambda: (client.get(f"/api/v1/builds/{build_id}").json()["stage"] or "").startswith(
            "measuring"
        ),
        "the build to measure",
        timeout=120,
    )

    # Held still, the build cannot finish before the stop: only the stop can end it.
    (child,) = [
        p for p in multiprocessing.active_children() if p.name.startswith("edgefleet-build")
    ]
    assert child.pid is not None
    os.kill(child.pid, signal.SIGSTOP)

    client.__exit__(None, None, None)  # the lifespan stops: the child is ended

    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        job = session.get(BuildJob, build_id)
        assert job is not None
        assert (job.state, job.error_status) == ("failed", 503)
        assert job.error == "interrupted: the control plane stopped during the build"


def test_restarted_control_plane_fails_its_own_unfinished_jobs_only(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    # What a control plane killed mid-build leaves behind in its database.
    engine = make_engine(Settings(data_dir=tmp_path / "cp", broker_url="mqtt://127.0.0.1:1"))
    create_db_and_tables(engine)
    with Session(engine) as session:
        for owner, state in ((REPLICA, "running"), (REPLICA, "queued"), ("cp-other", "running")):
            session.add(
                BuildJob(
                    model="digits", model_version="1", profile=PROFILE, owner=owner, state=state
                )
            )
        session.commit()
    engine.dispose()

    restarted = control_plane(client_id=REPLICA)

    jobs = {j["id"]: j for j in restarted.get("/api/v1/builds").json()}
    assert [jobs[i]["state"] for i in (1, 2, 3)] == ["failed", "failed", "running"]
    assert jobs[1]["error"] == "interrupted: the control plane restarted during the build"
    assert jobs[2]["error"] == jobs[1]["error"]
    assert jobs[1]["error_status"] == 503

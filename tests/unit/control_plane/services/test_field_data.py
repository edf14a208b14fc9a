"""Field samples on the control plane: stored once per event, bounded per model version,
refused with a reason when they do not hold together, and written out for a hook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session

from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.services import field_data
from edgefleet.control_plane.services.events import ingest_events
from edgefleet.control_plane.services.field_data import (
    list_samples,
    summarize,
    write_field_data,
)
from edgefleet.messages import TelemetryEvent

DEVICE = "dev-fielddata01"


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(Settings(data_dir=tmp_path / "cp", broker_url="mqtt://127.0.0.1:1"))
    create_db_and_tables(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def sample(
    rows: int, *, labels: list[Any] | None = None, version: str = "1", **data: Any
) -> TelemetryEvent:
    fields: dict[str, Any] = {
        "model": "digits",
        "model_version": version,
        "input": "input",
        "inputs": [[float(i), 1.0] for i in range(rows)],
        "outputs": [1] * rows,
        "labels": labels if labels is not None else [None] * rows,
        "drifted": True,
        **data,
    }
    return TelemetryEvent(kind="sample", priority=3, bundle_id="digits-1-p-r1", data=fields)


def test_a_sample_is_stored_once_and_listed_with_its_labelled_rows(session: Session) -> None:
    event = sample(3, labels=[4, None, 5])
    assert ingest_events(session=session, batch=[(DEVICE, event), (DEVICE, event)]) == 1
    assert ingest_events(session=session, batch=[(DEVICE, event)]) == 0  # a redelivery
    (stored,) = list_samples(session=session, model="digits")
    assert stored.rows == 3 and stored.labelled_rows == 2 and stored.device_id == DEVICE
    assert summarize(session=session, model="digits")["labelled_rows"] == 2
    assert len(list_samples(session=session, model="digits", labelled=True)) == 1


@pytest.mark.parametrize(
    "data",
    [
        {"inputs": "rows"},
        {"inputs": [[1.0, 2.0], [1.0]]},
        {"inputs": [[1.0, "x"]]},
        {"inputs": [[1.0, True]]},
        {"inputs": [[1.0, float("nan")]]},
        {"inputs": [[[[1.0]]]]},
        {"labels": [1]},
        {"labels": [-3, 1]},
        {"outputs": {"a": 1}},
        {"model": 5},
        {"model_version": "v" * 100},
        {"inputs": [[1.0]] * (field_data.MAX_ROWS_PER_SAMPLE + 1)},
    ],
)
def test_a_sample_that_does_not_hold_together_is_skipped_but_its_event_stored(
    session: Session, data: dict[str, Any]
) -> None:
    event = sample(2, **data)
    assert ingest_events(session=session, batch=[(DEVICE, event)]) == 1
    assert list_samples(session=session, model="digits") == []


def test_oldest_samples_go_first_past_the_rows_kept_per_version(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(field_data, "MAX_ROWS_PER_VERSION", 10)
    for _ in range(4):
        ingest_events(session=session, batch=[(DEVICE, sample(4))])
    ingest_events(session=session, batch=[(DEVICE, sample(4, version="2"))])
    assert summarize(session=session, model="digits", version="1")["rows"] == 8
    assert summarize(session=session, model="digits", version="2")["rows"] == 4


def test_field_data_is_written_for_a_hook_as_arrays_and_a_manifest(
    session: Session, tmp_path: Path
) -> None:
    ingest_events(session=session, batch=[(DEVICE, sample(3, labels=[7, None, 8]))])
    ingest_events(session=session, batch=[(DEVICE, sample(2, version="2"))])
    manifest = write_field_data(
        session=session, model="digits", version="1", directory=tmp_path / "fd"
    )
    assert json.loads((tmp_path / "fd" / "manifest.json").read_text()) == manifest
    assert manifest["rows"] == 3 and manifest["labelled_rows"] == 2
    assert manifest["devices"] == [DEVICE] and manifest["width"] == 2
    x = np.load(tmp_path / "fd" / "inputs.npy")
    assert x.dtype == np.float32 and x.shape == (3, 2)
    assert np.load(tmp_path / "fd" / "labels.npy").tolist() == [7, -1, 8]
    empty = write_field_data(session=session, model="other", version=None, directory=tmp_path / "e")
    assert empty["rows"] == 0 and np.load(tmp_path / "e" / "inputs.npy").shape == (0, 0)

"""Field data: the inputs devices saw and the labels they learnt, kept for retraining.

A device sends a ``sample`` event (``edgefleet.agent.telemetry.drift``) with input rows
from a drifted window and rows whose true label it learnt (``labels``, None where
unknown). Ingest stores each sample once (``store_samples``, called from
``edgefleet.control_plane.services.events`` in the ingest transaction) and keeps at most
``MAX_ROWS_PER_VERSION`` rows per model version, dropping the oldest samples first, so
a chatty fleet cannot fill the database.

A sample whose data does not hold together (rows of mixed widths, non-numbers,
lists of different lengths, too many rows) is skipped with a logged reason: the event
itself is still stored, and nothing a device sends stops ingest.

``field_data`` lists them (``GET /api/v1/models/{name}/field-data``), and
``write_field_data`` writes them for a retraining hook as ``.npy`` files with a
``manifest.json`` (see ``edgefleet.control_plane.drift.hook_runner``).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from edgefleet.control_plane.core.tables import FieldSample
from edgefleet.fileio import atomic_write
from edgefleet.messages import TelemetryEvent

logger = logging.getLogger(__name__)

MAX_ROWS_PER_VERSION = 20_000
"""Rows kept per model version; the oldest samples go first past it."""
MAX_ROWS_PER_SAMPLE = 1_000
MAX_WIDTH = 4096
MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
UNKNOWN = -1
"""How ``outputs.npy`` and ``labels.npy`` spell an answer or a label that is not known."""


class SampleRefused(ValueError):
    """A sample's data does not hold together; the reason says what."""


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _column(data: dict[str, Any], key: str, rows: int) -> list[int | None]:
    values = data.get(key)
    if values is None:
        return [None] * rows
    if not isinstance(values, list) or len(values) != rows:
        raise SampleRefused(f"{key} must be a list of {rows} values")
    if not all(v is None or _is_index(v) for v in values):
        raise SampleRefused(f"{key} must hold class indices or nulls")
    return values


def parse_sample(data: Any) -> dict[str, Any]:
    """The fields of a ``sample`` event's data, checked; ``SampleRefused`` says why not."""
    if not isinstance(data, dict):
        raise SampleRefused("data is not an object")
    model, version = data.get("model"), data.get("model_version")
    if not isinstance(model, str) or not isinstance(version, str) or not model or not version:
        raise SampleRefused("model and model_version must be non-empty strings")
    if len(model) > 64 or len(version) > 64:
        raise SampleRefused("model or model_version longer than 64 characters")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise SampleRefused("inputs must be a non-empty list of rows")
    if len(inputs) > MAX_ROWS_PER_SAMPLE:
        raise SampleRefused(f"{len(inputs)} rows exceed {MAX_ROWS_PER_SAMPLE} per sample")
    first = inputs[0]
    width = len(first) if isinstance(first, list) else 0
    if not 0 < width <= MAX_WIDTH:
        raise SampleRefused(f"each row must be a list of 1 to {MAX_WIDTH} numbers")
    for row in inputs:
        if not isinstance(row, list) or len(row) != width:
            raise SampleRefused("rows must all be lists of the same width")
        for v in row:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise SampleRefused("rows must hold finite numbers only")
    rows = len(inputs)
    labels = _column(data, "labels", rows)
    reasons = data.get("reasons")
    input_name = data.get("input")
    withheld = data.get("withheld_rows")
    return {
        "model": model,
        "model_version": version,
        "input_name": input_name[:255] if isinstance(input_name, str) else "",
        "inputs": inputs,
        "outputs": _column(data, "outputs", rows),
        "labels": labels,
        "rows": rows,
        "width": width,
        "labelled_rows": sum(label is not None for label in labels),
        "drifted": data.get("drifted") is True,
        "reasons": [r for r in reasons if isinstance(r, str)][:8]
        if isinstance(reasons, list)
        else [],
        "withheld_rows": withheld if _is_index(withheld) else 0,
    }


def store_samples(*, session: Session, batch: Sequence[tuple[str, TelemetryEvent]]) -> int:
    """Add the ``sample`` events of ``batch`` (fresh ones: the caller has checked that
    they are new) to ``session`` without committing; how many were kept."""
    kept = 0
    pending: dict[tuple[str, str], int] = {}
    for device_id, event in batch:
        if event.kind != "sample":
            continue
        if isinstance(event.data, dict) and event.data.get("inputs") == []:
            continue  # a sample cut to nothing at the device's budget: only counts
        try:
            fields = parse_sample(event.data)
        except SampleRefused as e:
            logger.warning(
                "field sample skipped event_id=%s device_id=%s reason=%s",
                event.event_id,
                device_id,
                e,
            )
            continue
        session.add(
            FieldSample(
                event_id=event.event_id,
                device_id=device_id,
                bundle_id=event.bundle_id,
                ts=datetime.fromtimestamp(event.ts, UTC),
                **fields,
            )
        )
        key = (fields["model"], fields["model_version"])
        pending[key] = pending.get(key, 0) + fields["rows"]
        kept += 1
    # No flush here: a duplicate event must fail at the caller's commit, where it is
    # caught, and not in the middle of this function.
    with session.no_autoflush:
        for (model, version), rows in sorted(pending.items()):
            _trim(session, model, version, rows)
    return kept


def _trim(session: Session, model: str, version: str, pending: int) -> None:
    """Drop a version's oldest stored samples until they and ``pending`` new rows fit
    ``MAX_ROWS_PER_VERSION``."""
    where = (col(FieldSample.model) == model, col(FieldSample.model_version) == version)
    total = session.exec(select(func.coalesce(func.sum(FieldSample.rows), 0)).where(*where)).one()
    excess = int(total) + pending - MAX_ROWS_PER_VERSION
    if excess <= 0:
        return
    oldest = session.exec(
        select(FieldSample.id, FieldSample.rows).where(*where).order_by(col(FieldSample.id))
    ).all()
    drop: list[int] = []
    for sample_id, rows in oldest:
        if excess <= 0:
            break
        assert sample_id is not None
        drop.append(sample_id)
        excess -= rows
    session.execute(delete(FieldSample).where(col(FieldSample.id).in_(drop)))
    logger.info("field samples trimmed model=%s version=%s samples=%d", model, version, len(drop))


def _query(model: str, version: str | None, labelled: bool) -> Any:
    query = select(FieldSample).where(FieldSample.model == model)
    if version is not None:
        query = query.where(FieldSample.model_version == version)
    if labelled:
        query = query.where(col(FieldSample.labelled_rows) > 0)
    return query


def list_samples(
    *,
    session: Session,
    model: str,
    version: str | None = None,
    labelled: bool = False,
    limit: int = 100,
) -> Sequence[FieldSample]:
    """The newest ``limit`` samples of ``model`` (one version, or all; only those with
    labelled rows when ``labelled``), newest first."""
    query = _query(model, version, labelled).order_by(col(FieldSample.id).desc()).limit(limit)
    return session.exec(query).all()


def summarize(*, session: Session, model: str, version: str | None = None) -> dict[str, Any]:
    """Counts over every kept sample of ``model`` (or one version)."""
    query = sa_select(
        func.count(),
        func.coalesce(func.sum(FieldSample.rows), 0),
        func.coalesce(func.sum(FieldSample.labelled_rows), 0),
        func.count(func.distinct(FieldSample.device_id)),
        func.coalesce(func.sum(FieldSample.withheld_rows), 0),
    ).where(col(FieldSample.model) == model)
    if version is not None:
        query = query.where(col(FieldSample.model_version) == version)
    samples, rows, labelled, devices, withheld = session.execute(query).one()
    return {
        "model": model,
        "version": version,
        "samples": int(samples),
        "rows": int(rows),
        "labelled_rows": int(labelled),
        "devices": int(devices),
        "withheld_rows": int(withheld),
        "max_rows_per_version": MAX_ROWS_PER_VERSION,
    }


def field_arrays(
    samples: Sequence[FieldSample],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Inputs [n, width] float32, answers and labels [n] int64 (``UNKNOWN`` where not
    known), of the samples of the most common width (a model version has one input
    width; rows of another are counted as left out)."""
    widths: dict[int, int] = {}
    for s in samples:
        widths[s.width] = widths.get(s.width, 0) + s.rows
    width = max(widths, key=lambda w: widths[w]) if widths else 0
    chosen = [s for s in samples if s.width == width]
    inputs = [row for s in chosen for row in s.inputs]
    outputs = [UNKNOWN if v is None else v for s in chosen for v in s.outputs]
    labels = [UNKNOWN if v is None else v for s in chosen for v in s.labels]
    x = np.asarray(inputs, dtype=np.float32).reshape(len(inputs), width)
    info = {
        "rows": len(inputs),
        "width": width,
        "left_out_rows": sum(rows for w, rows in widths.items() if w != width),
        "labelled_rows": sum(label != UNKNOWN for label in labels),
        "devices": sorted({s.device_id for s in chosen}),
        "versions": sorted({s.model_version for s in chosen}),
        "input": next((s.input_name for s in chosen if s.input_name), ""),
    }
    return x, np.asarray(outputs, np.int64), np.asarray(labels, np.int64), info


def write_field_data(
    *, session: Session, model: str, version: str | None, directory: Path
) -> dict[str, Any]:
    """Write the field data of ``model`` (one version, or all) into ``directory``.

    Files: ``inputs.npy`` (float32 [n, features]), ``outputs.npy`` (the device's answer,
    int64 [n]), ``labels.npy`` (the true label, int64 [n]), ``UNKNOWN`` (-1) where not
    known, and ``manifest.json`` saying what they hold. Returns the manifest.
    """
    samples = session.exec(_query(model, version, False).order_by(col(FieldSample.id))).all()
    x, outputs, labels, info = field_arrays(samples)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"inputs": "inputs.npy", "outputs": "outputs.npy", "labels": "labels.npy"}
    for name, array in (("inputs", x), ("outputs", outputs), ("labels", labels)):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        atomic_write(directory / files[name], buffer.getvalue())
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "version": version,
        **info,
        "unknown": UNKNOWN,
        "files": files,
    }
    atomic_write(directory / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
    return manifest

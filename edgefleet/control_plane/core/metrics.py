"""Prometheus metrics for the control plane, computed from the database on each scrape.

A custom collector rather than counters threaded through the services: the database
is already the source of truth (and shared by every replica), so any replica
answers a scrape with the same fleet-wide figures, nothing is lost on restart, and
no other module has to know that metrics exist. Ingest *rate* is Prometheus's job:
``rate(edgefleet_telemetry_events_total[5m])`` over the stored-event counter.

Two families are the answering replica's own rather than the database's: whether its
MQTT link is up, and its supervised worker threads (``edgefleet_worker_restarts_total``,
``edgefleet_worker_up``), since a worker dies and restarts inside one process.

``/metrics`` needs a ``viewer`` token when API auth is on, like every read of the API
(Prometheus: ``authorization: {credentials_file: ...}`` in the scrape config).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import timedelta

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from edgefleet.control_plane.core.auth import authorize
from edgefleet.control_plane.core.tables import (
    Device,
    Event,
    MessageRejection,
    RetrainingRequest,
    Rollout,
    RolloutDevice,
    utcnow,
)
from edgefleet.control_plane.drift.reports import DriftPoint, drift_series
from edgefleet.supervisor import WorkerState

logger = logging.getLogger(__name__)

DRIFT_LOOKBACK = timedelta(hours=24)
"""Only windows this recent count as a device's 'latest' drift score."""
DRIFT_SCRAPE_LIMIT = 20_000
MAX_FEATURES = 256
"""Per-feature PSI series per cohort are capped so a wide model cannot flood Prometheus."""

router = APIRouter(tags=["metrics"])


def _latest_per_device(
    points: Iterable[DriftPoint],
) -> dict[tuple[str, str, str], list[DriftPoint]]:
    """The newest window of each device, grouped by (model, model_version, cohort)."""
    latest: dict[tuple[str, str, str, str], DriftPoint] = {}
    for point in points:  # oldest first, so later ones win
        latest[(point.model, point.model_version, point.cohort, point.device_id)] = point
    groups: dict[tuple[str, str, str], list[DriftPoint]] = defaultdict(list)
    for (model, version, cohort, _device), point in sorted(latest.items()):
        groups[(model, version, cohort)].append(point)
    return groups


class FleetCollector(Collector):
    """Reads the fleet, rollouts, telemetry and drift tables when Prometheus scrapes."""

    def __init__(
        self,
        engine: Engine,
        *,
        broker_connected: bool | None = None,
        workers: list[WorkerState] | None = None,
        delivery: dict[str, int] | None = None,
    ) -> None:
        self._engine = engine
        self._broker_connected = broker_connected
        self._workers = workers
        self._delivery = delivery

    def collect(self) -> Iterator[Metric]:
        with Session(self._engine) as session:
            yield from self._fleet(session)
            yield from self._rollouts(session)
            yield from self._telemetry(session)
            yield from self._rejections(session)
            yield from self._drift(session)
            yield from self._retraining(session)
        if self._broker_connected is not None:
            up = GaugeMetricFamily(
                "edgefleet_broker_connected", "1 when the control plane's MQTT link is up"
            )
            up.add_metric([], 1.0 if self._broker_connected else 0.0)
            yield up
        if self._workers is not None:
            yield from self._worker_metrics(self._workers)
        if self._delivery is not None:
            sent = CounterMetricFamily(
                "edgefleet_delivery_bytes",
                "Payload bytes this replica sent devices: fetch answers (metadata, targets) "
                "and retained blob chunks, published once per target",
                labels=["path"],
            )
            for path, count in sorted(self._delivery.items()):
                sent.add_metric([path], count)
            yield sent

    def _fleet(self, session: Session) -> Iterator[Metric]:
        devices = GaugeMetricFamily(
            "edgefleet_devices", "Devices known to the control plane", labels=["profile"]
        )
        online = GaugeMetricFamily(
            "edgefleet_devices_online", "Devices whose last status says online", labels=["profile"]
        )
        rows = session.exec(
            select(Device.profile, Device.online, func.count()).group_by(
                col(Device.profile), col(Device.online)
            )
        ).all()
        totals: dict[str, int] = defaultdict(int)
        up: dict[str, int] = defaultdict(int)
        for profile, is_online, count in rows:
            key = profile or "unknown"
            totals[key] += int(count)
            up[key] += int(count) if is_online else 0
        for profile in sorted(totals):
            devices.add_metric([profile], totals[profile])
            online.add_metric([profile], up[profile])
        yield devices
        yield online

    def _rollouts(self, session: Session) -> Iterator[Metric]:
        rollouts = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
        for state, count in session.exec(
            select(Rollout.state, func.count()).group_by(col(Rollout.state))
        ).all():
            rollouts.add_metric([state], int(count))
        yield rollouts
        in_flight = GaugeMetricFamily(
            "edgefleet_rollout_devices",
            "Per-device install states within rollouts still in progress",
            labels=["state"],
        )
        for state, count in session.exec(
            select(RolloutDevice.state, func.count())
            .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
            .where(Rollout.state == "in_progress")
            .group_by(col(RolloutDevice.state))
        ).all():
            in_flight.add_metric([state], int(count))
        yield in_flight

    def _telemetry(self, session: Session) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "edgefleet_telemetry_events",
            "Telemetry events stored (each once, whatever the redeliveries), by kind",
            labels=["kind"],
        )
        for kind, count in session.exec(
            select(Event.kind, func.count()).group_by(col(Event.kind))
        ).all():
            events.add_metric([kind], int(count))
        yield events

    def _rejections(self, session: Session) -> Iterator[Metric]:
        rejected = CounterMetricFamily(
            "edgefleet_messages_rejected",
            "Device messages refused (undecodable, or failing when handled), acknowledged "
            "and dropped, by channel and reason; per device on /api/v1/devices/<id>",
            labels=["channel", "reason"],
        )
        for channel, reason, count in session.exec(
            select(
                MessageRejection.channel, MessageRejection.reason, func.sum(MessageRejection.count)
            )
            .group_by(col(MessageRejection.channel), col(MessageRejection.reason))
            .order_by(col(MessageRejection.channel), col(MessageRejection.reason))
        ).all():
            rejected.add_metric([channel, reason], int(count))
        yield rejected

    @staticmethod
    def _worker_metrics(workers: list[WorkerState]) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "edgefleet_worker_restarts",
            "Times this replica restarted a worker thread that died",
            labels=["worker"],
        )
        up = GaugeMetricFamily(
            "edgefleet_worker_up", "1 while this replica's worker thread runs", labels=["worker"]
        )
        for worker in workers:
            restarts.add_metric([worker.name], worker.restarts)
            up.add_metric([worker.name], 1.0 if worker.running else 0.0)
        yield restarts
        yield up

    def _drift(self, session: Session) -> Iterator[Metric]:
        labels = ["model", "model_version", "cohort"]
        reporting = GaugeMetricFamily(
            "edgefleet_drift_devices_reporting",
            "Devices with a drift window in the lookback (24 h)",
            labels=labels,
        )
        drifted = GaugeMetricFamily(
            "edgefleet_drift_devices_drifted",
            "Devices whose latest drift window was flagged drifted",
            labels=labels,
        )
        share = GaugeMetricFamily(
            "edgefleet_drift_share_drifted",
            "Mean over devices of the share of features drifted in their latest window",
            labels=labels,
        )
        psi_max = GaugeMetricFamily(
            "edgefleet_drift_psi_max",
            "Highest per-feature PSI in any device's latest window",
            labels=labels,
        )
        psi = GaugeMetricFamily(
            "edgefleet_drift_feature_psi",
            "Per-feature PSI, mean over devices' latest windows",
            labels=[*labels, "feature"],
        )
        points = drift_series(
            session=session, since=utcnow() - DRIFT_LOOKBACK, limit=DRIFT_SCRAPE_LIMIT
        )
        for key, latest in _latest_per_device(points).items():
            values = list(key)
            reporting.add_metric(values, len(latest))
            drifted.add_metric(values, sum(p.drifted for p in latest))
            share.add_metric(values, sum(p.share_drifted for p in latest) / len(latest))
            psi_max.add_metric(values, max((max(p.psi, default=0.0) for p in latest), default=0.0))
            width = min(MAX_FEATURES, max(len(p.psi) for p in latest))
            for feature in range(width):
                scores = [p.psi[feature] for p in latest if feature < len(p.psi)]
                psi.add_metric([*values, str(feature)], sum(scores) / len(scores))
        yield from (reporting, drifted, share, psi_max, psi)

    def _retraining(self, session: Session) -> Iterator[Metric]:
        requests = GaugeMetricFamily(
            "edgefleet_retraining_requests", "Retraining requests by state", labels=["state"]
        )
        for state, count in session.exec(
            select(RetrainingRequest.state, func.count()).group_by(col(RetrainingRequest.state))
        ).all():
            requests.add_metric([state], int(count))
        yield requests


def render_metrics(
    engine: Engine,
    *,
    broker_connected: bool | None = None,
    workers: list[WorkerState] | None = None,
    delivery: dict[str, int] | None = None,
) -> bytes:
    """The Prometheus text exposition of the fleet as the database has it now.

    A fresh registry per scrape keeps several apps in one process (tests) apart and
    leaves the process-global registry to whoever embeds the control plane.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        FleetCollector(
            engine, broker_connected=broker_connected, workers=workers, delivery=delivery
        )
    )
    return bytes(generate_latest(registry))


def _authorize_scrape(request: Request) -> None:
    """Check the scrape's token with the API's own rule, as a read of ``/api/v1/metrics``.

    ``authorize`` derives the role a request needs from its path; ``/metrics`` sits
    outside the API prefix, so it is judged under the API's path for a read, which
    makes it need a ``viewer`` token exactly when the rest of the API needs one.
    """
    authorize(Request({**request.scope, "path": "/api/v1/metrics"}, request.receive))


@router.get("/metrics", include_in_schema=False)
def read_metrics(request: Request) -> Response:
    _authorize_scrape(request)
    link = getattr(request.app.state, "link", None)
    body = render_metrics(
        request.app.state.engine,
        broker_connected=None if link is None else bool(link.connected),
        workers=None if link is None else link.workers(),
        delivery=None if link is None else link.delivery_bytes(),
    )
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
